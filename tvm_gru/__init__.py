"""tvm_gru: the Keras v1 GRUCell, compiled by Apache TVM.

>>> import numpy as np, tvm_gru
>>> cell = tvm_gru.GRUCell(64)
>>> out, [h] = cell(np.ones((1, 32), "float32"), [np.zeros((1, 64), "float32")])

The public face: everything a user needs is importable from here. The subpackages are layered (import-linter
checks it, see pyproject.toml): ``cli`` > ``models`` > ``relax`` > ``deploy`` | ``interop`` | ``tuning`` >
``layers`` > ``build`` > ``schedules`` > ``ops`` | ``targets`` | ``keras_objects`` > ``runtime`` (numpy +
apache-tvm-ffi only).
"""

import importlib

from ._version import __version__
from .runtime.threads import default_num_threads

default_num_threads()  # before anything can start TVM's thread pool

from .layers import hooks  # noqa: E402
from .layers.bidirectional import Bidirectional  # noqa: E402
from .layers.cell import GRUCell  # noqa: E402
from .layers.gru import GRU  # noqa: E402
from .ops.config import GRUConfig, StepSpec  # noqa: E402
from .runtime.artifact import ArtifactError, load, verify  # noqa: E402
from .runtime.deployed_bidirectional import DeployedBidirectional  # noqa: E402
from .runtime.deployed_cell import DeployedCell  # noqa: E402
from .runtime.deployed_layer import DeployedGRU  # noqa: E402
from .runtime.deployed_model import DeployedModel  # noqa: E402

# The compiler side (TVM, onnx, MetaSchedule) is imported on first use, so `import tvm_gru` and `tvm_gru.load` need
# only numpy and apache-tvm-ffi (a board that runs artifacts has no TVM compiler).
_LAZY = {"irmodule": "build.modules", "primfunc": "build.modules", "packed_weights": "build.modules",
         "export_cell": "deploy.export", "export_layer": "deploy.export",
         "export_bidirectional": "deploy.export", "from_onnx": "interop.onnx_io",
         "run_onnx": "interop.onnx_io", "cell_to_onnx": "interop.onnx_export", "layer_to_onnx": "interop.onnx_export",
         "bidirectional_to_onnx": "interop.onnx_export", "tune": "tuning.tune",
         "tune_sequence": "tuning.sequence_tune", "Model": "models.model"}


def __getattr__(name: str):
    """The lazily imported public functions of :data:`_LAZY` (PEP 562)."""
    if name == "relax":  # the Relax frontends, as a namespace: tvm_gru.relax.from_onnx(...)
        return importlib.import_module(f"{__name__}.relax")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tvm_gru' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def _deferred(name: str):
    def write(*args, **kwargs):
        return __getattr__(name)(*args, **kwargs)
    return write


# The layers' export / to_onnx methods call deploy/ and interop/ through the hooks (see tvm_gru.layers.hooks).
for _writer in ("export_cell", "export_layer", "export_bidirectional", "cell_to_onnx", "layer_to_onnx",
                "bidirectional_to_onnx"):
    hooks.register(_writer, _deferred(_writer))

__all__ = ["GRUCell", "GRU", "Bidirectional", "Model", "GRUConfig", "StepSpec", "from_onnx", "run_onnx", "tune",
           "tune_sequence", "load", "verify", "DeployedCell", "DeployedGRU", "DeployedBidirectional", "DeployedModel",
           "ArtifactError",
           "export_cell", "export_layer", "export_bidirectional", "primfunc", "irmodule", "packed_weights",
           "__version__"]
