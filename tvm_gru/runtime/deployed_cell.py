"""A deployed GRU cell: the Keras cell call on an artifact's step kernels and weights (see :func:`.artifact.load`)."""

from __future__ import annotations

import numpy as np
import tvm_ffi

from .arrays import as_array
from .buffers import as_aligned
from .ffi_args import OutputPool
from .format import weight_dtype
from .layer_calls import NotCopyable, check_inference_training
from .packing import keras_matrices, unpack_bias, unpack_matrix

__all__ = ["DeployedCell"]


# ---------------------------------------------------------------------------------------- the cell
def _writeable(array: np.ndarray) -> np.ndarray:
    """DLPack (as tvm_ffi speaks it) refuses read-only arrays: hand the kernel a copy of those."""
    return array if array.flags.writeable else array.copy()


def _is_device_tensor(value) -> bool:
    if isinstance(value, np.ndarray) or not hasattr(value, "__dlpack_device__"):
        return False
    return int(value.__dlpack_device__()[0]) == 2  # kDLCUDA


class DeployedCell(NotCopyable):
    """A GRU cell loaded from an artifact: the Keras call on the exported kernels and weights.

    Calls from several threads need no lock: each returns its own output. ``pickle`` and ``copy`` raise
    ``TypeError`` (see :class:`~.layer_calls.NotCopyable`): load the artifact again for another cell.

    Attributes
    ----------
    config : dict
        The :class:`tvm_gru.GRUConfig` fields (units, activations, reset_after, implementation, dtype, ...).
    input_dim, units : int
    batch_sizes : tuple of int
        Batch sizes with a compiled kernel.
    target : dict
        ``family`` ("x86", "aarch64", "cuda") and the TVM target it was compiled for.
    metadata : dict
        The whole metadata file.
    """

    def __init__(self, meta, module, weights, device_id=0):
        self.metadata = meta
        self.config = dict(meta["config"])
        self.input_dim = int(meta["input_dim"])
        self.units = int(self.config["units"])
        self.dtype = np.dtype(self.config["dtype"])
        self.weight_dtype = np.dtype(weight_dtype(meta))  # weight matrix storage (float16, int8: widened in-kernel)
        self.target = meta["target"]
        self._functions = {int(b): module[name] for b, name in meta["kernel"]["functions"].items()}
        self.batch_sizes = tuple(sorted(self._functions))
        self._module = module  # keeps the library loaded
        self._cuda = self.target["family"] == "cuda"
        self._host_weights = [as_aligned(weights[n]) for n in meta["kernel"]["weights"]]
        if self._cuda:
            self._device = tvm_ffi.device("cuda", device_id)
            self._alloc = tvm_ffi.get_global_func("runtime.TVMTensorAllocWithScope")
            self._copy = tvm_ffi.get_global_func("runtime.TVMTensorCopyFromTo")
            self._weights = tuple(self._to_device(w) for w in self._host_weights)
            self._staging = {}
        else:
            self._weights = tuple(tvm_ffi.from_dlpack(w) for w in self._host_weights)
        self._host_calls = {}  # batch -> its kernel bound to its own OutputPool (_run_host)

    # ------------------------------------------------------------------ Keras-like properties
    @property
    def state_size(self) -> int:
        return self.units

    @property
    def output_size(self) -> int:
        return self.units

    def get_config(self) -> dict:
        return dict(self.config)

    def get_weights(self) -> list:
        """The Keras-layout weights ``[kernel (I, 3H), recurrent_kernel (H, 3H), bias]`` (unpacked copies, in the
        cell dtype: float16-stored matrices come back as the float16-rounded values the kernel uses, int8-stored ones
        dequantized, ``float(q) * scale`` per column)."""
        w = dict(zip(self.metadata["kernel"]["weights"], self._host_weights))
        # Gate-interleaved for implementation 2 and for every SIMD packing (V > 1); see tvm_gru.runtime.packing.layout.
        units, fused = self.units, self.config["implementation"] == 2 or w["kernel_packed"].shape[-1] > 1
        kernel = unpack_matrix(w["kernel_packed"], units, fused).copy()
        recurrent = unpack_matrix(w["recurrent_packed"], units, fused).copy()
        if "candidate_packed" in w:  # reset_after=False keeps the candidate's recurrent columns apart
            recurrent = np.concatenate([recurrent, unpack_matrix(w["candidate_packed"], units, fused).copy()], axis=1)
        out = keras_matrices(kernel, recurrent, w.get("weight_scale"), units, self.dtype)
        if "bias_packed" in w:
            out.append(unpack_bias(w["bias_packed"], units, self.config["reset_after"]))
        return out

    def get_initial_state(self, inputs=None, batch_size=None, dtype=None) -> np.ndarray:
        if inputs is not None:
            shape = getattr(inputs, "shape", None)
            if shape is None or len(shape) != 2:
                raise ValueError(f"`inputs` must be a (batch, {self.input_dim}) tensor; received "
                                 f"{type(inputs).__name__} of shape {shape}")
            batch_size = int(shape[0])
        if batch_size is None:
            raise ValueError("batch_size and dtype cannot be None while constructing initial state: "
                             "pass `inputs` or `batch_size`")
        return np.zeros((batch_size, self.units), dtype=np.dtype(dtype or self.dtype))

    # ------------------------------------------------------------------ call
    def __call__(self, inputs, states, training=None):
        """One step: ``output, [new_state] = cell(inputs, [state])`` (a bare state gives a bare state back).

        Parameters
        ----------
        inputs : (B, I) numpy array or DLPack tensor; B must be one of :attr:`batch_sizes`
        states : list/tuple holding a (B, H) array (only ``states[0]`` is read), or a bare (B, H) array
        training : bool or None
            Deployed cells are inference-only: ``training=True`` on a cell exported with ``dropout`` or
            ``recurrent_dropout`` > 0 raises ``ValueError`` (Keras would apply dropout, and the artifact has no
            dropout kernels); with both rates 0 it changes nothing, as in Keras. Anything but None or a bool
            raises ``TypeError``, as for :class:`tvm_gru.GRUCell`.

        Returns
        -------
        output : (B, H) array: numpy for host inputs. When a CUDA artifact receives GPU tensors, the output
            stays on the GPU: a tensor of the state's type when it has ``new_empty`` (torch), else a
            DLPack-exportable ``tvm_ffi.Tensor``
        new_states : ``[output]`` for list/tuple states, ``output`` for a bare state
        """
        if training is not None and training is not False:  # (the common values skip the call)
            check_inference_training(training, self.config, "cell", "tvm_gru.GRUCell")
        nested = isinstance(states, (list, tuple))
        if nested and not states:
            raise ValueError("`states` must hold one (batch, units) array; received an empty sequence")
        h = states[0] if nested else states
        if self._cuda:
            out = self._call_fast(inputs, h)
        elif type(inputs) is np.ndarray and type(h) is np.ndarray and (training is None or training is False):
            out = self._call_host_fast(inputs, h)
        else:
            out = None
        if out is None:
            if self._cuda and _is_device_tensor(inputs) and _is_device_tensor(h):
                out = self._call_device(inputs, h)
            else:
                out = self._call_host(inputs, h)
        return out, ([out] if nested else out)

    def _check(self, x_shape, h_shape, x_dtype, h_dtype) -> int:
        if len(x_shape) != 2 or x_shape[1] != self.input_dim:
            raise ValueError(f"`inputs` must have shape (batch, {self.input_dim}); received {tuple(x_shape)}")
        if len(h_shape) != 2 or h_shape[1] != self.units:
            raise ValueError(f"`states[0]` must have shape (batch, {self.units}); received {tuple(h_shape)}")
        if x_shape[0] != h_shape[0]:
            raise ValueError(f"`inputs` and `states[0]` must have the same batch size; received "
                             f"{x_shape[0]} and {h_shape[0]}")
        batch = int(x_shape[0])
        if batch not in self._functions:
            raise ValueError(f"this artifact has kernels for batch sizes {list(self.batch_sizes)}; received "
                             f"batch {batch} (export with batch=[..., {batch}])")
        for name, dt in (("inputs", x_dtype), ("states[0]", h_dtype)):
            if np.dtype(dt).kind != "f":
                raise TypeError(f"`{name}` must hold floating point values; received dtype {dt}")
        return batch

    def _call_host(self, inputs, h):
        x = as_array("inputs", inputs)
        h = as_array("states[0]", h)
        batch = self._check(x.shape, h.shape, x.dtype, h.dtype)
        x = _writeable(np.ascontiguousarray(x, dtype=self.dtype))
        h = _writeable(np.ascontiguousarray(h, dtype=self.dtype))
        if not self._cuda:
            return self._run_host(batch, x, h)
        out = np.empty((batch, self.units), self.dtype)
        dx, dh, dout = self._staging_buffers(batch)
        self._copy(tvm_ffi.from_dlpack(x), dx)
        self._copy(tvm_ffi.from_dlpack(h), dh)
        self._functions[batch](dx, dh, *self._weights, dout)
        self._copy(dout, tvm_ffi.from_dlpack(out))
        return out

    def step(self, x, h, out):
        """Destination passing, no checks beyond the kernel's own: writes the new state of ``x``, ``h`` into
        ``out`` (all C-contiguous tensors of the cell dtype on the artifact's device; any DLPack producer)."""
        self._functions[int(out.shape[0])](x, h, *self._weights, out)
        return out

    def _call_host_fast(self, inputs, h):
        """numpy arrays straight to the kernel, whose argument binder checks rank, shape, dtype and compactness
        (the user-facing arguments are compiled without an alignment assumption); output from the pool. Returns
        None when the binder refuses (or the batch has no kernel): the checked path converts or explains."""
        try:
            batch = inputs.shape[0]
            return self._run_host(batch, inputs, h) if batch in self._functions else None
        except (IndexError, TypeError, ValueError, BufferError):
            return None

    def _run_host(self, batch: int, x, h):
        """One host step into a pooled output: no allocation or DLPack export per step. Each batch size has its
        kernel bound to its own :class:`OutputPool` (:meth:`OutputPool.bind`), made on first use."""
        run = self._host_calls.get(batch)
        if run is None:
            run = self._host_calls[batch] = OutputPool((batch, self.units), self.dtype).bind(self._functions[batch],
                                                                                         self._weights)
        return run(x, h)

    def _call_fast(self, inputs, h):
        """GPU tensors with ``new_empty`` (torch): the output comes from the tensor library's own caching
        allocator and the kernel's argument binder does the checks (shape, dtype, device). Returns None when
        this does not apply or the binder refuses; the checked path then runs or explains the error."""
        new_empty = getattr(h, "new_empty", None)
        if new_empty is None or isinstance(inputs, np.ndarray):
            return None
        try:
            batch = int(inputs.shape[0])
            fn = self._functions[batch]
            out = new_empty((batch, self.units))
            fn(inputs, h, *self._weights, out)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            return None
        return out

    def _call_device(self, inputs, h):
        x, hh = tvm_ffi.from_dlpack(inputs), tvm_ffi.from_dlpack(h)
        batch = self._check(tuple(x.shape), tuple(hh.shape), str(x.dtype), str(hh.dtype))
        if str(x.dtype) != self.dtype.name or str(hh.dtype) != self.dtype.name:
            raise TypeError(f"GPU `inputs` and `states[0]` must be {self.dtype.name}; received {x.dtype}, "
                            f"{hh.dtype}")
        out = self._alloc(tvm_ffi.Shape([batch, self.units]), tvm_ffi.dtype(self.dtype.name), self._device, None)
        self._functions[batch](x, hh, *self._weights, out)
        return out

    # ------------------------------------------------------------------ CUDA buffers
    def _to_device(self, array: np.ndarray):
        out = self._alloc(tvm_ffi.Shape(list(array.shape)), tvm_ffi.dtype(array.dtype.name), self._device, None)
        self._copy(tvm_ffi.from_dlpack(array), out)
        return out

    def _staging_buffers(self, batch: int):
        if batch not in self._staging:
            dt, dev = tvm_ffi.dtype(self.dtype.name), self._device
            self._staging[batch] = tuple(self._alloc(tvm_ffi.Shape([batch, n]), dt, dev, None)
                                         for n in (self.input_dim, self.units, self.units))
        return self._staging[batch]

    def __repr__(self) -> str:
        c = self.config
        return (f"DeployedCell(units={c['units']}, input_dim={self.input_dim}, activation={c['activation']!r}, "
                f"recurrent_activation={c['recurrent_activation']!r}, reset_after={c['reset_after']}, "
                + (f"weight_dtype={self.weight_dtype.name!r}, " if self.weight_dtype != self.dtype else "")
                + f"target={self.target['family']}, batch_sizes={list(self.batch_sizes)})")
