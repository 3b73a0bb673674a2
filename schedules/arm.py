"""AArch64 NEON schedules for the GRU step.

NEON has 32 128-bit registers, so the tile can hold more accumulators than on AVX2; the packed block
width V is 4 float32 (2 float64), so each accumulator covers fewer units and more of them are needed to
hide the FMA latency (4 cycles on Cortex-A72/A76, two FMA pipes).
"""

from __future__ import annotations

from .base import CPUStepRule


class ARMStepRule(CPUStepRule):
    """The AArch64 rule."""

    max_accumulators = 24

    def is_target(self, target) -> bool:
        from tvm_gru.targets import family  # noqa: PLC0415

        return target.kind.name == "llvm" and family(target) == "aarch64"


RULES = (ARMStepRule(),)
