"""x86 (AVX2 / AVX-512) schedules for the GRU step.

The step is the shared CPU rule of :mod:`.base` (register-tiled product with the gate math in its
epilogue); x86 only decides its knobs: 12 of the 16 ymm registers (AVX2) hold accumulators (a 4-row x 3-gate
tile at batch >= 4, 4 unit blocks x 3 gates at batch 1), and a second core is used only when each step
streams enough weights to pay for a parallel launch (~1.5 us here; reset_after=False adds a barrier, not a
second launch). Tiles that read a single weight stream from L3 prefetch the next tile's weights.
"""

from __future__ import annotations

from .base import CPUStepRule


class X86StepRule(CPUStepRule):
    """The x86 rule (AVX2 has 16 vector registers; AVX-512 has 32 but we keep the same tile)."""

    max_accumulators = 12
    prefetch_min_bytes = 2 * 1024 * 1024  # 4x a Zen 3 core's L2: the weights stream from L3 every step

    def is_target(self, target) -> bool:
        from tvm_gru.targets import family  # noqa: PLC0415

        return target.kind.name == "llvm" and family(target) == "x86"


RULES = (X86StepRule(),)
