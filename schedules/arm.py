"""AArch64 NEON schedules for the GRU step.

NEON has 32 128-bit registers, so the tile can hold more accumulators than on AVX2; the packed block
width V is 4 float32 (2 float64), so each accumulator covers fewer units and more of them are needed to
hide the FMA latency (4 cycles on Cortex-A72/A76, two FMA pipes). The gate math has no divisions here (see
:func:`.sequence_rules.gate_math`).
"""

from __future__ import annotations

import tvm_ffi

from tvm_gru.ops import compute

from .base import CPUStepRule
from .sequence_rules import gate_math


class ARMStepRule(CPUStepRule):
    """The AArch64 rule: the shared CPU schedule of the step rebuilt with divide-free gate math."""

    max_accumulators = 24

    def is_target(self, target) -> bool:
        from tvm_gru.targets import family  # noqa: PLC0415

        return target.kind.name == "llvm" and family(target) == "aarch64"

    def apply(self, func, spec, target, config=None):
        """Schedule the step of ``spec``; when ``func`` is the standard step PrimFunc of ``spec`` it is first
        rebuilt divide-free (:func:`.sequence_rules.gate_math`), any other ``func`` is scheduled as given."""
        if tvm_ffi.structural_equal(func, compute.step_primfunc(spec)):
            with gate_math(target):
                func = compute.step_primfunc(spec)
        return super().apply(func, spec, target, config)


RULES = (ARMStepRule(),)
