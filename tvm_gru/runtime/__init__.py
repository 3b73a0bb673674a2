"""The deployable part of tvm_gru: imports numpy and apache-tvm-ffi only, never the TVM compiler."""

from .buffers import aligned_copy, aligned_empty, is_aligned
from .step import StepRunner

__all__ = ["StepRunner", "aligned_empty", "aligned_copy", "is_aligned"]
