"""Calling a compiled step kernel from numpy with the least Python in between.

The kernel's own argument binder checks every argument's rank, shape, dtype and compactness and raises
``TypeError``/``ValueError`` on a mismatch (it never reads out of bounds), and the user-facing arguments are
compiled without TVM's 64-byte alignment assumption (see ``compute.unaligned``). So numpy arrays go to the
kernel directly, with no staging copy; the weights are wrapped as FFI tensors once. Each call allocates the
output it returns: Keras returns a new tensor per call, and users keep old states around.
"""

from __future__ import annotations

import numpy as np
import tvm_ffi

__all__ = ["StepRunner"]


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
        self.set_weights(weights)

    def set_weights(self, weights) -> None:
        self.weights = list(weights)
        self._wargs = tuple(tvm_ffi.from_dlpack(w) for w in self.weights)

    def __call__(self, x: np.ndarray, h: np.ndarray, masks=()) -> np.ndarray:
        """Run one step on C-contiguous ``x`` (B, I) and ``h`` (B, H) of the kernel dtype; returns (B, H).

        Raises
        ------
        TypeError, ValueError
            From the kernel's argument checks, when an argument does not match its compiled signature.
        """
        out = np.empty(self.out_shape, self.dtype)
        self.fn(x, h, *self._wargs, *masks, out)
        return out
