"""tvm_gru: the Keras v1 GRUCell, compiled by Apache TVM.

>>> import numpy as np, tvm_gru
>>> cell = tvm_gru.GRUCell(64)
>>> out, [h] = cell(np.ones((1, 32), "float32"), [np.zeros((1, 64), "float32")])
"""

import os as _os

__version__ = "0.1.0"

# TVM's CPU thread pool reads this once, at its first parallel launch. Without it the pool was measured
# to run parallel loops with ~11 us of launch overhead on this 2-core VM, against ~1.7 us with it set.
if "TVM_NUM_THREADS" not in _os.environ:
    try:
        _os.environ["TVM_NUM_THREADS"] = str(len(_os.sched_getaffinity(0)))
    except AttributeError:
        _os.environ["TVM_NUM_THREADS"] = str(_os.cpu_count() or 1)

from .api import irmodule, packed_weights, primfunc  # noqa: E402
from .bidirectional import Bidirectional  # noqa: E402
from .cell import GRUCell  # noqa: E402
from .config import GRUConfig, StepSpec  # noqa: E402
from .export import export_cell, export_layer  # noqa: E402
from .layer import GRU  # noqa: E402
from .onnx_io import from_onnx  # noqa: E402
from .runtime.artifact import ArtifactError, DeployedCell, load  # noqa: E402
from .runtime.deployed_layer import DeployedGRU  # noqa: E402
from .tune import tune  # noqa: E402  (MetaSchedule itself is imported only when tuning starts)

__all__ = ["GRUCell", "GRU", "Bidirectional", "from_onnx", "tune", "GRUConfig", "StepSpec", "__version__", "load",
           "DeployedCell", "DeployedGRU", "ArtifactError", "export_cell", "export_layer", "primfunc", "irmodule",
           "packed_weights"]
