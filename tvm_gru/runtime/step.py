"""Calling a compiled step kernel from numpy with the least Python in between.

The kernel's own argument binder checks every argument's rank, shape, dtype and compactness and raises
``TypeError``/``ValueError`` on a mismatch (it never reads out of bounds), and the user-facing arguments are
compiled without TVM's 64-byte alignment assumption (see ``compute.unaligned``). So numpy arrays go to the
kernel directly, with no staging copy; the weights are wrapped as FFI tensors once.

Handing a numpy array to the FFI costs a DLPack export per argument (~0.7 us, more than a small kernel).
Outputs therefore come from a small pool of arrays wrapped once: an array is reused only when nobody but
the pool references it any more (Keras returns a new tensor per call and users keep old states, so an array
the caller still holds, or a view of it, is never overwritten), and a state passed back in that is one of
the pool's arrays goes to the kernel through its existing wrapper.
"""

from __future__ import annotations

import sys

import numpy as np
import tvm_ffi

__all__ = ["StepRunner"]

_POOL_SIZE = 4


def _free_refs() -> int:
    """What ``sys.getrefcount`` reports in :meth:`StepRunner.__call__` for a pooled array nobody else holds."""
    pool = [(lambda a: (a, tvm_ffi.from_dlpack(a)))(np.empty(1))]
    for out, _ in pool:
        return sys.getrefcount(out)


_refcount = sys.getrefcount


class StepRunner:
    """One compiled step kernel bound to its packed weights.

    Parameters
    ----------
    fn : callable
        The kernel ``fn(x, h, *weights, *masks, out)``.
    batch, units : int
    dtype : str
    weights : list of np.ndarray
        Packed, 64-byte aligned weight arrays in kernel order (kept alive by the runner).
    """

    def __init__(self, fn, batch, units, dtype, weights):
        self.fn = fn
        self.out_shape = (batch, units)
        self.dtype = np.dtype(dtype)
        self._pool = []  # (array, its FFI tensor), oldest first
        self._wrapped = {}  # id(array) -> FFI tensor, for the arrays in the pool
        self._free = _free_refs()
        self.set_weights(weights)

    def set_weights(self, weights) -> None:
        self.weights = list(weights)
        self._wargs = tuple(tvm_ffi.from_dlpack(w) for w in self.weights)

    def _new_output(self):
        out = np.empty(self.out_shape, self.dtype)
        entry = (out, tvm_ffi.from_dlpack(out))
        if len(self._pool) == _POOL_SIZE:
            del self._wrapped[id(self._pool.pop(0)[0])]
        self._pool.append(entry)
        self._wrapped[id(out)] = entry[1]
        return entry

    def __call__(self, x: np.ndarray, h: np.ndarray, masks=()) -> np.ndarray:
        """Run one step on C-contiguous ``x`` (B, I) and ``h`` (B, H) of the kernel dtype; returns (B, H).

        Raises
        ------
        TypeError, ValueError
            From the kernel's argument checks, when an argument does not match its compiled signature.
        """
        for out, out_t in self._pool:
            if _refcount(out) == self._free:  # only the pool holds it: nobody can see it change
                break
        else:
            out, out_t = self._new_output()
        self.fn(x, self._wrapped.get(id(h), h), *self._wargs, *masks, out_t)
        return out
