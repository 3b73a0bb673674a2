"""A whole compiled model: a Relax VM executable called on numpy arrays. numpy + apache-tvm-ffi only.

A model artifact (``"kind": "model"``, written by :meth:`tvm_gru.models.Model.export`) holds one Relax VM
executable library (the graph's constants embedded in it), the TVM runtime library (which registers the VM
loader: without it ``tvm_ffi.load_module`` fails), the bundled loader zip and the metadata::

    "kind": "model", "format_version": 3,
    "inputs":  [{"name": "x", "shape": ["batch", "seq", 8], "dtype": "float32"}, ...]   # graph order
    "outputs": [{"name": "y", "shape": ["batch", "seq", 16], "dtype": "float32"}, ...]  # graph order
    "batch_dim": "batch" or null,   the symbolic dimension the batch sizes below bind
    "batch_sizes": [1, 8] or null,  null: any batch (the dimension stays symbolic)
    "kernel": {"library": "model.so", "functions": {"1": "main_b1", "8": "main_b8"}}   # or {"any": "main"}

Shapes hold ints (fixed) and names (symbolic: any size, the same size wherever the name repeats). The same
call code serves the in-process :class:`tvm_gru.models.Model` (which builds this metadata and hands its
executable's module here), so a deployed model checks and runs its inputs exactly as the model it came from.

The VM is created as ``module["vm_load_executable"]()`` and initialised with
``vm["vm_initialization"](1, 0, 2, 1, 0, 2)``: (device type kDLCPU, id 0, allocator kind 2 = pooled) for the
device and again for the host. The pooled allocator reuses a freed buffer of the same size instead of a
``malloc``/``free`` (``mmap``/``munmap`` and page faults for large ones) per intermediate per call: 5-15 µs of
a small model's call. A buffer goes back to the pool only when the last reference to its tensor is dropped, and
the numpy arrays returned are zero-copy views that hold that reference, so an output the caller keeps is never
reused by a later call (a test holds outputs over calls).

:func:`~.artifact.load` checks the metadata against the artifact schema (:func:`.format.check_metadata`), reads
the listed files and opens the executable from the checked bytes.
"""

from __future__ import annotations

import threading

import numpy as np
import tvm_ffi

from .arrays import as_array
from .buffers import ALIGN, aligned_copy
from .format import ANY_BATCH
from .layer_calls import NotCopyable

__all__ = ["DeployedModel", "ModelCalls", "ModelSignature", "create_vm", "VM_PROVIDES"]

VM_PROVIDES = "ffi.Module.load_from_bytes.relax.VMExecutable"  # what libtvm_runtime.so registers for the VM
_VM_INIT = (1, 0, 2, 1, 0, 2)  # (kDLCPU, 0, pooled allocator) for the device, then for the host


# ---------------------------------------------------------------------------------------- calls
def _kernel_tensor(array: np.ndarray):
    """``array`` as a tvm-ffi tensor (zero-copy; it keeps ``array`` alive), or over an aligned copy when it is
    not C-contiguous or not 64-byte aligned (the compiled functions assume both) or read-only (DLPack 0.x, which
    tvm-ffi asks numpy for, cannot export it). The pointer is read from the tensor (~50 ns) rather than
    ``array.ctypes`` (~1.7 µs)."""
    flags = array.flags
    if flags.c_contiguous and flags.writeable:
        tensor = tvm_ffi.from_dlpack(array)
        if tensor.data_ptr() % ALIGN == 0:
            return tensor
    return tvm_ffi.from_dlpack(aligned_copy(array))


def _check_indices(name: str, array: np.ndarray, bounds: tuple) -> None:
    """ValueError naming the input, the first id outside ``[low, high)`` and where it is (a float id counts as
    its integer part, as Keras casts it)."""
    if array.size == 0:
        return
    ids = np.trunc(array) if array.dtype.kind == "f" else array
    low, high = bounds
    bad = (ids < low) | (ids >= high) | (np.isnan(ids) if ids.dtype.kind == "f" else False)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"input {name!r} holds indices into a table of {high - low} rows, in [{low}, {high}); "
                         f"received {array[where]!r} at {where}")


def _shape_text(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


class ModelSignature:
    """A compiled model's signature from its metadata: inputs and outputs in graph order, the batch dimension
    and the batch sizes compiled for (shared by the in-process :class:`tvm_gru.models.Model` and the call)."""

    def __init__(self, meta: dict):
        self._inputs = [dict(t) for t in meta["inputs"]]
        self._outputs = [dict(t) for t in meta["outputs"]]
        self._batch_dim = meta.get("batch_dim")
        self._batch_sizes = list(meta["batch_sizes"]) if meta.get("batch_sizes") else None

    @property
    def input_names(self) -> list:
        return [t["name"] for t in self._inputs]

    @property
    def output_names(self) -> list:
        return [t["name"] for t in self._outputs]

    @property
    def inputs(self) -> list:
        """[{"name", "shape", "dtype"}] in graph order; a str in a shape is a symbolic dimension."""
        return [{**t, "shape": list(t["shape"])} for t in self._inputs]

    @property
    def outputs(self) -> list:
        return [{**t, "shape": list(t["shape"])} for t in self._outputs]

    @property
    def batch_sizes(self):
        """The batch sizes compiled for (a list), or None: any batch (the batch dimension is symbolic)."""
        return None if self._batch_sizes is None else list(self._batch_sizes)

    @property
    def batch_dim(self):
        return self._batch_dim


class ModelCalls(ModelSignature):
    """The call of a compiled model on its signature (the metadata's inputs, outputs, batch_dim, batch_sizes,
    kernel.functions) and a Relax VM: argument checks, the function for the batch size, outputs as numpy."""

    def __init__(self, meta: dict, vm):
        super().__init__(meta)
        self._functions = {key: vm[name] for key, name in meta["kernel"]["functions"].items()}
        self._vm = vm  # keeps the VM (and so the functions' frames) alive
        # (name, shape, dtype) per input, resolved once: the checks run on every call
        self._specs = [(t["name"], tuple(t["shape"]), np.dtype(t["dtype"])) for t in self._inputs]
        self._index_ranges = [(i, t["name"], tuple(t["index_range"])) for i, t in enumerate(self._inputs)
                              if t.get("index_range") is not None]
        self._lock = threading.Lock()  # one VM: its frames and registers are per instance, not per call

    # ------------------------------------------------------------------ call
    def _arguments(self, args: tuple, kwargs: dict) -> list:
        names = self.input_names
        if len(args) == 1 and len(names) > 1 and isinstance(args[0], (list, tuple)):  # model([x1, x2]), as Keras
            args = tuple(args[0])
        if len(args) > len(names):
            raise TypeError(f"the model takes {len(names)} input{'s' if len(names) != 1 else ''} {names}; received "
                            f"{len(args)} positional arguments")
        values = dict(zip(names, args))
        for name, value in kwargs.items():
            if name not in names:
                raise TypeError(f"the model has no input named {name!r}; its inputs are {names}")
            if name in values:
                raise TypeError(f"input {name!r} was given both by position and by name")
            values[name] = value
        missing = [n for n in names if n not in values]
        if missing:
            raise TypeError(f"the model takes {len(names)} input{'s' if len(names) != 1 else ''} {names}; missing "
                            f"{missing} (received {len(values)})")
        return [values[n] for n in names]

    def _check(self, values: list) -> tuple:
        """The inputs as tvm-ffi tensors over 64-byte aligned contiguous data (the caller's arrays themselves
        when they are, else aligned copies), checked against the signature, and the function key."""
        tensors, bound = [], {}
        for (name, shape, dtype), value in zip(self._specs, values):
            array = value if type(value) is np.ndarray else as_array(name, value)
            if array.dtype != dtype:
                raise TypeError(f"input {name!r} must be {dtype.name}; received {array.dtype.name} (cast it with "
                                f".astype({dtype.name!r}))")
            got_shape = array.shape
            if len(got_shape) != len(shape):
                raise ValueError(f"input {name!r} must have rank {len(shape)}, shape {_shape_text(shape)}; received "
                                 f"rank {array.ndim}, shape {_shape_text(got_shape)}")
            for axis, (want, got) in enumerate(zip(shape, got_shape)):
                if want.__class__ is int:
                    if got != want:
                        raise ValueError(f"input {name!r} must have shape {_shape_text(shape)}: axis {axis} is "
                                         f"{want}; received shape {_shape_text(got_shape)}")
                elif want in bound and bound[want][0] != got:
                    first = bound[want]
                    raise ValueError(f"dimension {want!r} is {first[0]} in input {first[1]!r} (axis {first[2]}) "
                                     f"and {got} in input {name!r} (axis {axis}); it must be the same size")
                else:
                    bound.setdefault(want, (got, name, axis))
            tensors.append(_kernel_tensor(array))
        for i, name, bounds in self._index_ranges:
            _check_indices(name, values[i] if type(values[i]) is np.ndarray else as_array(name, values[i]), bounds)
        if self._batch_sizes is None:
            return tensors, ANY_BATCH
        got, name, axis = bound[self._batch_dim]
        if got not in self._batch_sizes:
            raise ValueError(f"the model was compiled for batch sizes {self._batch_sizes} (dimension "
                             f"{self._batch_dim!r}); received batch {got} (input {name!r}, axis {axis}). Compile or "
                             f"export it with batch={sorted({*self._batch_sizes, got})}")
        return tensors, str(got)

    def __call__(self, *args, **kwargs):
        """Run the model: inputs by position (graph order), as one list or tuple (``model([x1, x2])``, as Keras's
        ``predict``; models of several inputs) or by name; returns the outputs in graph order as
        numpy arrays, the array itself when the graph has one output.

        Raises
        ------
        TypeError
            Wrong number of inputs, an unknown name, a wrong dtype, something that is not a host tensor.
        ValueError
            A wrong rank or fixed dimension, a symbolic dimension of different sizes in two inputs, a batch
            size the model was not compiled for (the message names those it was).
        """
        tensors, key = self._check(self._arguments(args, kwargs))
        with self._lock:
            result = self._functions[key](*tensors)
        outputs = self._flatten(result)
        if len(outputs) != len(self._outputs):
            raise RuntimeError(f"the compiled model returned {len(outputs)} outputs; its metadata lists "
                               f"{len(self._outputs)} ({self.output_names})")
        return outputs[0] if len(outputs) == 1 else outputs

    @staticmethod
    def _flatten(result) -> list:
        if hasattr(result, "__dlpack__"):
            return [np.from_dlpack(result)]
        out = []
        for item in result:  # a tuple of outputs (tvm_ffi Array); nested tuples flattened in order
            out.extend(ModelCalls._flatten(item))
        return out

    def __repr__(self):
        sig = ", ".join(f"{t['name']}: {t['dtype']}{_shape_text(t['shape'])}" for t in self._inputs)
        out = ", ".join(f"{t['name']}: {t['dtype']}{_shape_text(t['shape'])}" for t in self._outputs)
        batch = "any batch" if self._batch_sizes is None else f"batch {self._batch_sizes}"
        return f"<{type(self).__name__} ({sig}) -> ({out}), {batch}>"


def create_vm(module):
    """The Relax VM of an executable module (``vm_load_executable``), initialised for the CPU."""
    vm = module["vm_load_executable"]()
    vm["vm_initialization"](*_VM_INIT)
    return vm


class DeployedModel(NotCopyable, ModelCalls):
    """A model loaded from an artifact: ``outputs = model(*inputs)``, numpy + apache-tvm-ffi only.

    Parameters
    ----------
    meta : dict
        The artifact's checked metadata (:func:`.format.check_metadata`).
    module : tvm_ffi.Module
        The executable library, loaded from its checked bytes (:func:`.artifact.load`).
    """

    def __init__(self, meta: dict, module):
        self.meta = meta
        self._module = module
        super().__init__(meta, create_vm(module))
