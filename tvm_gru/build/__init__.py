"""Compiling kernels: the step and sequence kernels for a target, the one compile cache, the tuned-records
database they consult, TVM 0.27 workarounds, and the kernels as IRModules for other TVM programs."""

from .cache import cache_dir, cached_kernel, clear_memory_cache
from .modules import irmodule, packed_weights, primfunc
from .sequence import compile_sequence, compile_short_sequence, frames_on_step_kernel, scheduled_sequence
from .step import compile_step, scheduled_module

__all__ = ["compile_step", "scheduled_module", "compile_sequence", "compile_short_sequence", "frames_on_step_kernel",
           "scheduled_sequence", "cache_dir", "cached_kernel", "clear_memory_cache", "irmodule", "primfunc",
           "packed_weights"]
