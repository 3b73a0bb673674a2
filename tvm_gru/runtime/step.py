"""Calling a compiled step kernel from numpy with the least Python in between.

The kernel's own argument binder checks every argument's rank, shape, dtype and compactness and raises
``TypeError``/``ValueError`` on a mismatch (it never reads out of bounds), and the user-facing arguments are
compiled without TVM's 64-byte alignment assumption (see ``compute.unaligned``). So numpy arrays go to the
kernel directly, with no staging copy; the weights are wrapped as FFI tensors once, and outputs come from an
:class:`~.ffi_args.OutputPool` (a state passed back in that is one of the pool's arrays goes to the kernel
through its existing wrapper).
"""

from __future__ import annotations

import numpy as np
import tvm_ffi

from .ffi_args import OutputPool

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
        self._outputs = OutputPool(self.out_shape, self.dtype)
        self.set_weights(weights)

    def set_weights(self, weights) -> None:
        self.weights = list(weights)
        self._wargs = tuple(tvm_ffi.from_dlpack(w) for w in self.weights)
        # fast(x, h): the call without masks as one closure (OutputPool.bind), bound to these weights
        self.fast = self._outputs.bind(self.fn, self._wargs)

    def __call__(self, x: np.ndarray, h: np.ndarray, masks=()) -> np.ndarray:
        """Run one step on C-contiguous ``x`` (B, I) and ``h`` (B, H) of the kernel dtype; returns (B, H).

        Raises
        ------
        TypeError, ValueError
            From the kernel's argument checks, when an argument does not match its compiled signature.
        """
        pool = self._outputs
        out, out_t = pool.take()
        self.fn(x, pool.tensor_of(h, h), *self._wargs, *masks, out_t)
        return out

    def run_into(self, x, h, out) -> None:
        """One step without masks into ``out`` (a (B, H) array or FFI tensor the caller owns); ``h`` may be an FFI
        tensor too. Raises as :meth:`__call__`."""
        self.fn(x, h, *self._wargs, out)
