"""Aligned numpy buffers (no TVM import).

Compiled kernels assume 64-byte aligned data and do not check it: a misaligned numpy array passed to an
exported kernel was seen to segfault. Every buffer handed to a kernel comes from here.
"""

from __future__ import annotations

import math

import numpy as np

ALIGN = 64


def aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a 64-byte boundary."""
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in np.atleast_1d(shape)) if not isinstance(shape, tuple) else shape
    nbytes = math.prod(shape) * dtype.itemsize  # math.prod: ~0.1 µs, np.prod ~3 µs (model calls copy inputs)
    raw = np.empty(nbytes + ALIGN, dtype=np.uint8)
    offset = (-raw.ctypes.data) % ALIGN
    return raw[offset:offset + nbytes].view(dtype).reshape(shape)


def aligned_copy(array: np.ndarray, dtype=None) -> np.ndarray:
    """A 64-byte aligned C-contiguous copy of ``array`` (cast to ``dtype`` if given)."""
    out = aligned_empty(np.shape(array), dtype or np.asarray(array).dtype)
    np.copyto(out, array, casting="unsafe" if dtype else "no")
    return out


def is_aligned(array: np.ndarray) -> bool:
    return array.flags.c_contiguous and array.ctypes.data % ALIGN == 0


def as_aligned(array: np.ndarray) -> np.ndarray:
    """``array`` itself when it is C-contiguous and 64-byte aligned, else an aligned copy."""
    return array if is_aligned(array) else aligned_copy(array)
