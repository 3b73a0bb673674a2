"""Host arrays from what users pass: numpy arrays and DLPack tensors, with errors that name the argument.

Shared by the in-process cell and layer (:mod:`tvm_gru.inputs`) and the deployed runtime (numpy only).
"""

from __future__ import annotations

import numpy as np

__all__ = ["as_array", "device_name"]

# DLPack device types (dlpack.h DLDeviceType) that numpy cannot read in place.
_DEVICE_NAMES = {1: "cpu", 2: "cuda", 3: "cuda_host", 4: "opencl", 7: "vulkan", 8: "metal", 9: "vpi", 10: "rocm",
                 11: "rocm_host", 12: "ext_dev", 13: "cuda_managed", 14: "oneapi", 15: "webgpu", 16: "hexagon",
                 17: "maia"}


def device_name(device) -> str:
    """``(device_type, device_id)`` of ``__dlpack_device__`` as text, e.g. ``cuda:0``."""
    try:
        kind, index = int(device[0]), int(device[1])
    except (TypeError, ValueError, IndexError):
        return repr(device)
    return f"{_DEVICE_NAMES.get(kind, f'device type {kind}')}:{index}"


def as_array(name: str, value) -> np.ndarray:
    """``value`` as a numpy array: numpy arrays pass through, host DLPack tensors are viewed zero-copy.

    Raises
    ------
    TypeError
        For lists, scalars and other objects that are not tensors, and for tensors on another device (numpy
        would read their pointer as host memory), naming ``name``.
    """
    if type(value) is np.ndarray:
        return value
    if isinstance(value, np.ndarray):
        return np.asarray(value)
    if hasattr(value, "__dlpack__"):
        device = getattr(value, "__dlpack_device__", None)
        if device is not None:
            try:
                where = device()
            except Exception as err:  # noqa: BLE001  (a broken producer: say which argument)
                raise TypeError(f"`{name}`: __dlpack_device__() of {type(value).__name__} failed ({err})") from err
            try:
                kind = int(where[0])
            except (TypeError, ValueError, IndexError):
                kind = None
            if kind != 1:
                raise TypeError(f"`{name}` must be a host (CPU) tensor; received a {type(value).__name__} on "
                                f"{device_name(where)}: copy it to the CPU first (e.g. tensor.cpu())")
        try:
            return np.from_dlpack(value)
        except Exception as err:  # noqa: BLE001  (RuntimeError, BufferError, TypeError, ...: name the argument)
            raise TypeError(f"`{name}` must be a host (CPU) tensor readable through DLPack; "
                            f"received {type(value).__name__} ({err})") from err
    raise TypeError(f"`{name}` must be a numpy array or a DLPack tensor of shape (batch, features); "
                    f"received {type(value).__name__}")
