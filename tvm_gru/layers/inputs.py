"""Checking what users pass to a cell call: clear errors instead of broadcasting or native crashes."""

from __future__ import annotations

import numpy as np

__all__ = ["as_array", "check_step_args", "check_training", "kernel_view", "device_name", "check_index_range",
           "INDEX_LIMIT"]

from ..runtime.arrays import as_array, device_name  # noqa: E402, F401  (shared with the deployed runtime)

# Compiled kernels index their buffers with 32-bit integers: no buffer may hold more elements, or an index would
# wrap around and read or write out of bounds.
from ..runtime.layer_calls import (
    INDEX_LIMIT,  # noqa: E402
    check_training,  # noqa: E402, F401  (one check, shared with the runtime)
)


def check_index_range(what: str, elements: int, hint: str = "") -> None:
    """Refuse a size whose largest kernel buffer has more than :data:`INDEX_LIMIT` elements (32-bit indices).

    ``what`` names the arguments and their values (e.g. "`units`=30000 with `input_dim`=40000").
    """
    if elements > INDEX_LIMIT:
        raise ValueError(f"{what} is too large: a kernel buffer would hold {elements:,} elements, and compiled "
                         f"kernels index with 32-bit integers (at most {INDEX_LIMIT:,}){hint}")


def kernel_view(array: np.ndarray, dtype) -> np.ndarray:
    """``array`` as a C-contiguous, writeable array of ``dtype`` in native byte order, copied only when needed.

    The compiled kernels take arrays through DLPack, which refuses read-only arrays; non-contiguous, strided,
    Fortran-ordered and byte-swapped arrays are copied too.
    """
    out = np.ascontiguousarray(array, dtype=dtype)
    return out if out.flags.writeable else out.copy()


def _check_float(name: str, array: np.ndarray) -> None:
    if array.dtype.kind != "f":
        raise TypeError(f"`{name}` must hold floating point values (float16/32/64); received dtype {array.dtype}")


def check_step_args(x: np.ndarray, h: np.ndarray, input_dim: int, units: int) -> None:
    """Validate ``x`` (B, I) and ``h`` (B, H) for one step (rank, feature sizes, batch, dtype)."""
    if x.ndim != 2:
        raise ValueError(f"`inputs` must have rank 2 (batch, {input_dim}); received shape {x.shape}")
    if x.shape[1] != input_dim:
        raise ValueError(f"`inputs` must have {input_dim} features (the cell was built for input_dim="
                         f"{input_dim}); received shape {x.shape}")
    if h.ndim != 2 or h.shape[1] != units:
        raise ValueError(f"`states[0]` must have shape (batch, {units}); received shape {h.shape}")
    if h.shape[0] != x.shape[0]:
        raise ValueError(f"`inputs` and `states[0]` must have the same batch size (no broadcasting); "
                         f"received {x.shape[0]} and {h.shape[0]}")
    _check_float("inputs", x)
    _check_float("states[0]", h)
