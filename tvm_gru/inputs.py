"""Checking what users pass to a cell call: clear errors instead of broadcasting or native crashes."""

from __future__ import annotations

import numpy as np

__all__ = ["as_array", "check_step_args"]


def as_array(name: str, value) -> np.ndarray:
    """``value`` as a numpy array: numpy arrays pass through, DLPack tensors are viewed zero-copy.

    Raises
    ------
    TypeError
        For lists, scalars and other objects that are not tensors, naming ``name``.
    """
    if type(value) is np.ndarray:
        return value
    if isinstance(value, np.ndarray):
        return np.asarray(value)
    if hasattr(value, "__dlpack__"):
        try:
            return np.from_dlpack(value)
        except (RuntimeError, BufferError, TypeError) as err:
            # e.g. a CUDA tensor: numpy can only view host memory
            raise TypeError(f"`{name}` must be a host (CPU) tensor readable through DLPack; "
                            f"received {type(value).__name__} ({err})") from err
    raise TypeError(f"`{name}` must be a numpy array or a DLPack tensor of shape (batch, features); "
                    f"received {type(value).__name__}")


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
