"""A GRU layer loaded from an artifact: the Keras v1 ``GRU`` call on the exported whole-sequence kernels.

numpy + apache-tvm-ffi only, like :mod:`.artifact` (which loads the folder and hands the kernels here).
A layer artifact (``"kind": "layer"``, written by :func:`tvm_gru.deploy.export.export_layer`) holds, per batch size,
the fused whole-sequence kernel of :mod:`tvm_gru.ops.sequence` (the time extent is symbolic: one kernel serves
every sequence length), its masked variant, and, where the schedule has one, a serial variant for calls of a
few steps (streaming); a streaming layer with large weights also gets the step kernel for single frames
(``"frame"``). The layer's options are fixed at export, as they are at a Keras layer's construction.

Kernel arguments (see ``tvm_gru.ops.sequence.SequenceSpec``): ``x``, ``h0`` (B, H), [``mask`` uint8], the packed
weights in metadata order, [``sequence``], ``last`` (B, H), ``state`` (B, H), ``reverse`` (int). A frame
kernel takes ``x`` (B, I), ``h`` (B, H), the same weights but R_h block-major (see :func:`frame_weights`), and
``h_new`` (B, H).

>>> layer = tvm_gru_runtime.load("gru_layer")                       # doctest: +SKIP
>>> seq, h = layer(x_btI, mask=valid_bt)                            # doctest: +SKIP
"""

from __future__ import annotations

import threading

import numpy as np
import tvm_ffi

from .arrays import as_array
from .buffers import as_aligned
from .ffi_args import SequenceOutputs
from .format import LAYER_FLAGS, ArtifactError, check_declared, weight_dtype
from .layer_calls import NOT_PLAIN, NotCopyable, SequenceLayerCalls, check_inference_training, kernel_view, max_steps
from .packing import keras_matrices, unpack_bias, unpack_matrix

__all__ = ["DeployedGRU", "LAYER_FLAGS", "sequence_weight_shapes", "weight_specs", "frame_weights"]



def sequence_weight_shapes(config: dict, input_dim: int, lanes: int, matrices: str | None = None) -> dict:
    """Packed weight shapes of the sequence kernel, in parameter order (``SequenceSpec.weight_shapes``; this
    runtime imports no compiler): ``weight_scale`` last when the ``matrices`` are stored as int8."""
    units = int(config["units"])
    nb = -(-units // lanes)
    out = {"kernel_packed": (nb, input_dim, 3, lanes)}
    if config["reset_after"]:
        out["recurrent_packed"] = (nb, units, 3, lanes)
    else:
        out["recurrent_packed"] = (nb, units, 2, lanes)
        out["candidate_packed"] = (units, nb, lanes)
    if config["use_bias"]:
        out["bias_packed"] = (2, 3, nb * lanes)
    if matrices == "int8":
        out["weight_scale"] = (2, 3, nb * lanes)
    return out


_MATRICES = ("kernel_packed", "recurrent_packed", "candidate_packed")


def weight_specs(meta: dict) -> dict:
    """{name: (shape, dtype)} of the packed weights the layer's config implies, in the kernel's order: the weight
    matrices in the metadata's ``weight_dtype`` (float32, float16 or int8 for a float32 layer; absent: the layer
    dtype), the bias and int8 column scales in the layer dtype. The metadata's weight list and shapes must say
    the same (checked before any weight is read)."""
    cfg = meta["config"]
    dtype, matrices = np.dtype(cfg["dtype"]), weight_dtype(meta)
    shapes = sequence_weight_shapes(cfg, meta["input_dim"], meta["lanes"], matrices)
    expected = {name: (shape, np.dtype(matrices) if name in _MATRICES else dtype) for name, shape in shapes.items()}
    check_declared(meta, expected)
    return expected


def frame_weights(names, arrays) -> list:
    """The step kernel's packed weights from the sequence kernel's (``names``/``arrays`` in kernel order).

    They are the same arrays but for the candidate's recurrent weights (reset_after=False): the sequence kernel
    takes them as rows, ``candidate_packed`` (H, NB, V), the step kernel block-major, (NB, H, 1, V)
    (``tvm_gru.runtime.packing``). Rebuilt here rather than stored twice in the artifact.
    """
    out = []
    for name, array in zip(names, arrays):
        if name == "candidate_packed":
            array = as_aligned(np.ascontiguousarray(array.transpose(1, 0, 2))[:, :, None, :])
        out.append(array)
    return out


class _Kernels:
    """The kernels of one batch size: full and serial-short, each plain and masked (masked may be absent)."""

    def __init__(self, module, entry: dict):
        def get(key):
            name = entry.get(key)
            if name is None:
                return None
            try:
                return module[name]
            except (AttributeError, KeyError, RuntimeError, ValueError) as err:
                raise ArtifactError(f"kernel library has no function {name!r} ({err})") from err

        self.full, self.masked = get("full"), get("masked")
        self.short, self.short_masked = get("short"), get("short_masked")
        self.short_steps = int(entry.get("short_steps", 0)) if self.short is not None else 0
        self.frame = get("frame")  # the step kernel for single streamed frames, or None
        if self.full is None:
            raise ArtifactError(f"layer kernel entry {entry} names no 'full' function")

    def pick(self, steps: int, masked: bool):
        if masked:
            if self.masked is None:
                raise ValueError("this artifact was exported without masking support (export_layer(..., "
                                 "masking=False)); call without `mask` or export again with masking=True")
            return self.short_masked if steps <= self.short_steps else self.masked
        return self.short if steps <= self.short_steps else self.full


class DeployedGRU(NotCopyable, SequenceLayerCalls):
    """A Keras v1 GRU layer loaded from an artifact: ``layer(inputs, mask=None, training=None, initial_state=None)``.

    Options (fixed at export, as at a Keras layer's construction): ``return_sequences``, ``return_state``,
    ``go_backwards``, ``stateful`` (with :meth:`reset_states` / :attr:`states`), ``time_major``,
    ``zero_output_for_mask``. Inputs are numpy arrays or host DLPack tensors; float inputs are cast to the
    layer dtype; outputs are numpy arrays.

    Inference only: ``training=True`` on a layer exported with ``dropout`` or ``recurrent_dropout`` > 0 raises
    ``ValueError`` (the artifact has no dropout kernels, and silently returning the no-dropout result would
    not be what was asked for); with both rates 0, ``training`` changes nothing, as in Keras. ``training``
    must be None or a bool (``TypeError`` otherwise), as for :class:`tvm_gru.GRU`.

    Threads: concurrent calls of a stateful layer are serialised by a lock held from reading the carried state
    to storing the new one (also by :meth:`reset_states` and :attr:`states`), so no update is lost. Calls of a
    layer that is not stateful take no lock.

    Copies: ``pickle`` and ``copy`` raise ``TypeError`` (see :class:`~.layer_calls.NotCopyable`): load the
    artifact again for another layer.

    Attributes
    ----------
    config : dict
        The :class:`tvm_gru.GRUConfig` fields (units, activations, reset_after, dropout, dtype, ...).
    input_dim, units : int
    batch_sizes : tuple of int
        Batch sizes with compiled kernels (any sequence length runs on them).
    target : dict
        ``family`` ("x86" or "aarch64") and the TVM target the kernels were compiled for.
    metadata : dict
        The whole metadata file.
    """

    def __init__(self, meta: dict, module, weights: dict):
        self.metadata = meta
        self.config = dict(meta["config"])
        flags = meta["layer"]
        for flag in LAYER_FLAGS:
            setattr(self, flag, bool(flags.get(flag, False)))
        self.name = str(flags.get("name", "gru"))
        self.input_dim = int(meta["input_dim"])
        self.units = int(self.config["units"])
        self.dtype = np.dtype(self.config["dtype"])
        self.weight_dtype = np.dtype(weight_dtype(meta))  # weight matrix storage (float16, int8: widened in-kernel)
        self.target = meta["target"]
        self._host_weights = [as_aligned(weights[n]) for n in meta["kernel"]["weights"]]
        self._wargs = tuple(tvm_ffi.from_dlpack(w) for w in self._host_weights)
        self._frame_runs = {}  # batch -> step(x, h, out) of the frame kernel, with its weights
        self._frame_weights = None  # (arrays, FFI tensors) of the frame kernels, built on the first frame
        self._kernels = {int(b): _Kernels(module, entry) for b, entry in meta["kernel"]["functions"].items()}
        self.batch_sizes = tuple(sorted(self._kernels))
        self._module = module  # keeps the library loaded
        self._outputs = {}  # batch -> SequenceOutputs
        self._states = None  # stateful: [current, spare] (B, H), swapped after each call
        self._lock = threading.Lock()  # stateful: held from reading _states to swapping in the new state

    _array = staticmethod(as_array)

    # ------------------------------------------------------------------ Keras-like properties
    @property
    def reverse(self) -> int:
        return int(self.go_backwards)

    def get_config(self) -> dict:
        """The tf_keras ``GRU.get_config()`` dict of the exported layer."""
        return dict(self.metadata["keras_config"])

    def get_weights(self) -> list:
        """The Keras-layout weights ``[kernel (I, 3H), recurrent_kernel (H, 3H)(, bias)]`` (unpacked copies, in the
        layer dtype: float16-stored matrices come back as the float16-rounded values the kernels use, int8-stored
        ones dequantized, ``float(q) * scale`` per column)."""
        w = dict(zip(self.metadata["kernel"]["weights"], self._host_weights))
        units = self.units
        kernel = unpack_matrix(w["kernel_packed"], units, True).copy()
        recurrent = unpack_matrix(w["recurrent_packed"], units, True).copy()
        if "candidate_packed" in w:  # reset_after=False: (H, NB, V), rows of the candidate's columns
            cand = w["candidate_packed"]
            recurrent = np.concatenate([recurrent, cand.reshape(cand.shape[0], -1)[:, :units]], axis=1)
        out = keras_matrices(kernel, recurrent, w.get("weight_scale"), units, self.dtype)
        if "bias_packed" in w:
            out.append(unpack_bias(w["bias_packed"], units, self.config["reset_after"]))
        return out

    # ------------------------------------------------------------------ call
    def __call__(self, inputs, mask=None, training=None, initial_state=None):
        """Run the whole sequence (any length) with the exported kernels.

        Parameters
        ----------
        inputs : (B, T, I) array or host DLPack tensor ((T, B, I) when ``time_major``); or a list
            ``[inputs, initial_state]`` as Keras accepts. B must be one of :attr:`batch_sizes`.
        mask : (B, T) bool array ((T, B) when ``time_major``), optional
            False = the step is padding: the state is kept and the previous output repeated (zeros with
            ``zero_output_for_mask``).
        training : bool or None
            Deployed layers are inference-only: True raises ``ValueError`` when the layer has dropout; anything
            but None or a bool raises ``TypeError``.
        initial_state : (B, H) array or a list of one, optional
            Overrides the zero (or, when stateful, the carried) initial state.

        Returns
        -------
        output : (B, T, H) if ``return_sequences`` else (B, H); with ``return_state``: ``[output, state]``
        """
        plain = type(inputs) is np.ndarray and (training is None or training is False)
        if self._streams_frames and mask is None and plain:
            out = self._try_stream(inputs, initial_state)
            if out is not None:
                return out
        check_inference_training(training, self.config, "GRU layer", "tvm_gru.GRU")
        if self.stateful:  # the state is read, run and replaced by one caller at a time
            with self._lock:
                return self._call_checked(inputs, mask, initial_state)
        return self._call_checked(inputs, mask, initial_state)

    def _call_checked(self, inputs, mask, initial_state):
        """The call with every argument checked and converted (``training`` already checked)."""
        inputs, initial_state = self._split_inputs(inputs, initial_state)
        x = self._sequence_input(inputs, self.input_dim)
        batch, steps = (x.shape[1], x.shape[0]) if self.time_major else (x.shape[0], x.shape[1])
        x = kernel_view(x, self.dtype)
        if batch:
            self._check_batch(batch)
        h0 = self._initial_state(initial_state, batch)
        valid = self._mask(mask, x.shape[:2]) if mask is not None else None
        if batch == 0 or steps == 0:
            return self._empty_call(x.shape, h0)
        fn = self._kernels[batch].pick(steps, valid is not None)
        outputs = self._outputs_for(batch)
        (seq, last, state), carried, out_args = outputs.take(steps, self._states if self.stateful else None)
        if h0 is None or (self.stateful and h0 is self._states[0]):
            h0 = carried  # zeros or the carried state, through their cached tensors
        head = [x, h0] + ([valid] if valid is not None else [])
        fn(*head, *self._wargs, *out_args, self.reverse)
        if self.stateful:  # the kernel wrote the new state into the spare buffer: it becomes current
            self._states.reverse()
        out = seq if seq is not None else last
        if self.return_state:
            return [out, state.copy() if self.stateful else state]
        return out

    def _outputs_for(self, batch: int) -> SequenceOutputs:
        outputs = self._outputs.get(batch)
        if outputs is None:
            outputs = self._outputs[batch] = SequenceOutputs(batch, self.units, self.dtype, self.return_sequences,
                                                             self.time_major, self.return_state and not self.stateful)
        return outputs

    def _try_stream(self, x, initial_state):
        """The streaming frame call with no checks but the kernel's binder; None when it does not apply (no
        state for this batch yet, an empty or over-long call, arguments the binder refuses): the checked path
        then converts or explains."""
        initial_state = self._plain_initial(initial_state)
        if initial_state is NOT_PLAIN:
            return None
        states = self._states
        try:
            batch, steps = (x.shape[1], x.shape[0]) if self.time_major else (x.shape[0], x.shape[1])
            kernels = self._kernels[batch]
        except (IndexError, KeyError):
            return None
        if states is None or states[0].shape[0] != batch or steps == 0 \
                or steps > max_steps(batch, self.input_dim, self.units):
            return None
        outputs, lock = self._outputs_for(batch), self._lock
        lock.acquire()  # held from reading the carried state to swapping in the new one (not `with`: ~70 ns less)
        try:
            if steps == 1 and kernels.frame is not None:
                return self._frame_call(x, initial_state, outputs, self._frame_run(batch, kernels.frame))
            return self._stream_call(x, initial_state, outputs, kernels.pick(steps, False), self._wargs)
        except (TypeError, ValueError, BufferError):
            return None
        finally:
            lock.release()

    def _frame_run(self, batch, fn):
        """``step(x, h, out)``: the frame kernel of ``batch`` bound to its weights (built on first use)."""
        run = self._frame_runs.get(batch)
        if run is None:
            if self._frame_weights is None:
                arrays = frame_weights(self.metadata["kernel"]["weights"], self._host_weights)
                self._frame_weights = (arrays, tuple(tvm_ffi.from_dlpack(w) for w in arrays))
            wargs = self._frame_weights[1]

            def run(x, h, out):
                fn(x, h, *wargs, out)

            self._frame_runs[batch] = run
        return run

    def _check_batch(self, batch: int) -> None:
        if batch not in self._kernels:
            raise ValueError(f"this artifact has kernels for batch sizes {list(self.batch_sizes)}; received "
                             f"batch {batch} (export with batch=[..., {batch}])")

    def __repr__(self) -> str:
        c = self.config
        return (f"DeployedGRU(units={self.units}, input_dim={self.input_dim}, activation={c['activation']!r}, "
                f"recurrent_activation={c['recurrent_activation']!r}, reset_after={c['reset_after']}, "
                f"return_sequences={self.return_sequences}, return_state={self.return_state}, "
                f"go_backwards={self.go_backwards}, stateful={self.stateful}, time_major={self.time_major}, "
                + (f"weight_dtype='{self.weight_dtype.name}', " if self.weight_dtype != self.dtype else "")
                + f"target={self.target['family']}, batch_sizes={list(self.batch_sizes)})")
