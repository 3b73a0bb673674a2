"""Late-bound writers behind the layers' ``export`` and ``to_onnx`` methods.

The layers sit below ``tvm_gru.deploy`` and ``tvm_gru.interop``, which import them (to read weights and build
layers), so the layers cannot import those back. The package's public face (``tvm_gru/__init__.py``) registers
the writers, importing their modules on first use, so ``import tvm_gru`` stays free of the TVM compiler.
"""

from __future__ import annotations

__all__ = ["register", "writer"]

_WRITERS: dict = {}


def register(name: str, function):
    """Make ``function`` the writer called ``name`` (``export_cell``, ``layer_to_onnx``, ...); returns it."""
    _WRITERS[name] = function
    return function


def writer(name: str):
    """The writer registered as ``name``."""
    try:
        return _WRITERS[name]
    except KeyError:
        raise RuntimeError(f"no writer {name!r} is registered: `import tvm_gru` registers them") from None
