"""The CPU schedule rule of the whole-sequence GRU kernel (:mod:`tvm_gru.ops.sequence`): knobs and their choice.

:class:`SequenceSchedule` holds the knobs of one kernel; :class:`CPUSequenceRule` picks them from the shapes
and the target (register tiles, cores, where the input projection runs, block-major candidate panels, tile-major
gate panels on aarch64) and has :class:`~.sequence_emitter.SequenceEmitter` write the kernel as TIR loops (see
:mod:`.sequence_emitter` for the shape of the generated code), its gate math built in :func:`gate_math`
(divide-free on aarch64). ``RULES`` lists the sequence rules; :func:`tvm_gru.schedules.sequence_rule` picks the
one for a target.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from tvm_gru.ops import activations

from .sequence_emitter import SPIN_BARRIERS, SequenceEmitter

__all__ = ["SequenceSchedule", "CPUSequenceRule", "RULES", "gate_math"]


@dataclass(frozen=True)
class SequenceSchedule:
    """Knobs of the CPU sequence schedule.

    Attributes
    ----------
    threads : int
        NT, parts the unit blocks are split into, one per core (1 = serial code, no parallel launch).
    gemm_rows : int
        MR, rows of the input-projection GEMM per register tile (the tile is MR x 3 vectors).
    batch_tile : int
        BT, batch rows per register tile of the recurrent products.
    unit_blocks : int
        NI, unit blocks per register tile of the gate products (BT*NI*gates <= the accumulator budget).
    candidate_blocks : int
        Output blocks per register tile of the candidate partial products (reset_after=False).
    spin_barrier : bool
        Synchronise the steps with the kernel's own spin barrier (x86 and aarch64, see
        :class:`~.sequence_emitter.SequenceEmitter`) instead of TVM's ``TVMBackendParallelBarrier``.
    gemm_in_barrier : bool
        Defer the input projection into the barrier waits (batch 1, reset_after=False, spin barrier, two or more
        parts; ignored otherwise): only the first MR steps' rows are projected up front; at iteration t each
        part, between arriving at the barrier and waiting on it, projects one MR-th of its blocks of the next
        MR-step row group. Pays off when a part's input weights are small (they share L2 with the recurrent
        ones and are no longer reused across row tiles).
    candidate_panels : bool
        reset_after=False: at the start of a call each part copies its rows of ``R_h`` (H, NB, V) into a
        block-major workspace (NB, H, V), so that a candidate tile's weights are contiguous rather than
        rows 4*Hp bytes apart (which map to the same few cache sets and are re-read from L3 by every batch
        tile).
    gate_panels : bool
        At the start of a call of 8 steps or more each part copies its blocks of the recurrent weights into a
        tile-major workspace: each gate-product register tile's weights become one contiguous run per k
        (NI*G*V floats) instead of NI streams H*G*V*4 bytes apart.
    """

    threads: int = 1
    gemm_rows: int = 4
    batch_tile: int = 1
    unit_blocks: int = 4
    candidate_blocks: int = 8
    spin_barrier: bool = True
    gemm_in_barrier: bool = False
    candidate_panels: bool = False
    gate_panels: bool = False


class CPUSequenceRule:
    """Builds the sequence kernel for an LLVM CPU target."""

    # Of the 16 ymm registers (AVX2): 12 accumulators, plus the vectors a tile keeps live across its k body
    # (min(rows, blocks * gates) <= 3 with these tiles, see SequenceEmitter.product_tile) and one operand.
    max_accumulators = 12

    def is_target(self, target) -> bool:
        return target.kind.name == "llvm"

    def register_tile(self, batch: int, gates: int) -> tuple:
        """(batch rows, unit blocks) of a product tile: the most accumulators that fit, then the fewest loads.

        A tile keeps ``rows * blocks * gates`` accumulators plus, across its k body, the smaller of the row
        broadcasts and the weight vectors, plus one operand: all within the 16 ymm registers. Measured
        (one core, 64x256x256, reset_after=False): 3 rows x 2 blocks 636 us/step, 4 x 1 (8 accumulators) 802.
        """
        best = None
        for rows in range(1, min(batch, 4) + 1):
            blocks = max(1, self.max_accumulators // (rows * gates))
            acc = rows * blocks * gates
            if acc > self.max_accumulators or acc + min(rows, blocks * gates) + 1 > 16:
                continue
            score = (acc, -(rows + blocks * gates))
            if best is None or score > best[0]:
                best = (score, rows, blocks)
        return best[1], best[2]

    def default_schedule(self, spec, target) -> SequenceSchedule:
        """Register tiles from the shapes; a second core only when a step streams enough weights.

        A barrier costs ~0.3-1 us per step on the 2-core VM, so threads pay off once a step's recurrent
        weights are large (1x64x128, 196 KB: 2.3 us/step on two cores against 3.3 on one) and the serial
        kernel is used below that.
        """
        c = spec.config
        batch_tile, unit_blocks = self.register_tile(spec.batch, 3 if c.reset_after else 2)
        unit_blocks = min(unit_blocks, spec.blocks)
        candidate_blocks = max(1, min(spec.blocks, self.max_accumulators // batch_tile))
        step_bytes = c.units * _row_bytes(spec) * max(1, spec.batch // 4)
        threads = max(1, min(_cores(target), spec.blocks) if step_bytes >= 96 * 1024 else 1)
        # Input weights per part small enough to stay in L2 next to the recurrent ones: project in the barrier
        # waits. Measured 1x64x128 (48 KB per part), 100 steps, old and new kernels interleaved in one process:
        # 3 % faster (median over 10 runs, each -1 .. +4.5 %); 1x256x256 (384 KB per part) got 5 % slower
        # (775 -> 812 us: the projection no longer reuses its weights from L1 and evicts recurrent ones).
        # aarch64 (spin barrier there too): the same rule. By the cycle model of benchmarks/arm_static.py the
        # deferred slice (1x64x128 on 4 cores: ~1,500 vector FMAs a step per core) fills the ~1,000-cycle wait of
        # each step on Cortex-A72 instead of adding all of it to the call up front; not measured on a board.
        input_bytes = spec.input_dim * _row_bytes(spec) // threads
        in_barrier = spec.batch == 1 and not c.reset_after and threads > 1 and input_bytes <= 64 * 1024
        # Several batch tiles re-read each candidate tile's weights: in place (rows 4*Hp bytes apart, all in
        # the same cache sets) every batch tile fetched them again from L3. Block-major copies, measured
        # 100 steps, old and new kernels interleaved in one process (medians of per-round ratios): 8x512x1024
        # 1.21x, 64x512x1024 1.12x, 8x256x256 / 64x256x256 / 8x64x128 1.02x. With a single batch tile
        # (batch 1) the weights are read once anyway and the copy only costs (1x256x256: 0.94x).
        panels = not c.reset_after and spec.batch > batch_tile
        # aarch64: Cortex-A72's L1 is 32 KB, 2-way. In place, a gate tile's NI weight streams lie H*G*V*4 bytes
        # apart (8 KB at H=256): they fall into two sets and evict each other's lines before the second half of
        # each is read (modelled by benchmarks/arm_static.py: each line fetched ~2x). Tile-major copies make one
        # stream per tile. x86 (8-way L1s) is left as measured.
        from tvm_gru.targets import family  # noqa: PLC0415

        gate_panels = family(target) == "aarch64" and unit_blocks > 1
        return SequenceSchedule(threads=threads, gemm_rows=4, batch_tile=batch_tile,
                                unit_blocks=unit_blocks, candidate_blocks=candidate_blocks,
                                gemm_in_barrier=in_barrier, candidate_panels=panels, gate_panels=gate_panels)

    def short_schedule(self, spec, target):
        """``(max_steps, serial schedule)`` for short calls (streaming), or None when the default is serial.

        A parallel launch plus a barrier per step costs a few microseconds; when one step's recurrent weights
        fit one core's L2 (<= 256 KB), a call of a few frames is faster on one core (measured 1x64x128, one
        frame: 5.6 us serial against 7.0 us on two threads).
        """
        default = self.default_schedule(spec, target)
        step_bytes = spec.config.units * _row_bytes(spec) * spec.batch
        if default.threads == 1 or step_bytes > 256 * 1024:
            return None
        return 4, SequenceSchedule(threads=1, gemm_rows=default.gemm_rows, batch_tile=default.batch_tile,
                                   unit_blocks=default.unit_blocks, candidate_blocks=default.candidate_blocks)

    # Weight bytes per core from which single streamed frames run the step kernel (see frames_on_step_kernel).
    frame_step_min_bytes = 2 * 1024 * 1024

    def frames_on_step_kernel(self, spec, target) -> bool:
        """Whether a stateful layer's single frames (T=1) should run the cell's step kernel instead of this one.

        With weights that stream from L3 every step, the step kernel is the faster single step: it reads R_h
        block-major and prefetches the next tile's weights, where this kernel, built to keep its weights in L2
        over many steps, reads R_h in place for short calls. Measured per frame, interleaved in one process
        (layer calls): 8x512x1024 847 against 1,339 us, 64x512x1024 6.5 against 7.5 ms, 1x512x1024 289 against
        331 us; at the smaller shapes the two were within noise of each other or the step kernel slower
        (64x64x128 132 against 104 us, 1x256x256 30 against 26). x86 only: measured there.
        """
        from tvm_gru.targets import family  # noqa: PLC0415

        if family(target) != "x86" or spec.masked or spec.input_masks or spec.recurrent_masks:
            return False
        weight_bytes = (spec.input_dim + spec.config.units) * _row_bytes(spec)
        return weight_bytes // _cores(target) >= self.frame_step_min_bytes

    def apply(self, spec, target, schedule: SequenceSchedule | None = None):
        """Return the IRModule ``{"main": kernel}`` (signature in :func:`tvm_gru.ops.sequence.SequenceSpec`).

        Never None: every spec on an LLVM target is this rule's. Raises ValueError when ``schedule`` asks for
        more threads than the spec has unit blocks. ``spin_barrier`` is honoured on x86 and aarch64 (the ISAs of
        :data:`~.sequence_emitter.SPIN_BARRIERS`; elsewhere the kernel uses TVM's barrier).
        """
        import tvm  # noqa: PLC0415

        sched = schedule or self.default_schedule(spec, target)
        if sched.threads > spec.blocks:
            raise ValueError(f"schedule threads={sched.threads} exceeds the {spec.blocks} unit blocks")
        from tvm_gru.targets import family  # noqa: PLC0415

        isa = family(target)
        spin = isa if sched.spin_barrier and isa in SPIN_BARRIERS else None
        emitter = SequenceEmitter(spec, sched, spin_barrier=spin, max_accumulators=self.max_accumulators)
        with gate_math(target):
            return tvm.IRModule({"main": emitter.build()})


RULES = (CPUSequenceRule(),)


def gate_math(target):
    """The context the rules build a kernel's gate math in for ``target``: divide-free on aarch64.

    A NEON ``fdiv`` (in tanh and sigmoid) costs up to 34 cycles per vector on Cortex-A72 (llvm-mca) and was
    ~70 % of the 1x256x256 layer's blend loop; the reciprocal estimate plus Newton steps of
    :func:`tvm_gru.ops.activations.te_reciprocal_aarch64` takes 5 pipelined instructions. x86 keeps its
    divisions (``vdivps`` is pipelined there and the kernels' tuning records hash the exact expressions).
    """
    from tvm_gru.targets import family  # noqa: PLC0415

    return activations.divide_free() if family(target) == "aarch64" else contextlib.nullcontext()


def _cores(target) -> int:
    """The target's ``num-cores`` (1 when it does not say)."""
    return int(target.attrs["num-cores"]) if "num-cores" in target.attrs else 1


def _row_bytes(spec) -> int:
    """Bytes of one row (one k) of a packed weight matrix: three gates of all padded units, in the cell dtype also
    for float16/int8 storage (the thresholds above were measured on float32 kernels; narrow storage streams fewer
    bytes but does the same FMAs plus a widening per weight vector, so it keeps the float32 choices)."""
    return 3 * spec.padded_units * (4 if spec.config.dtype == "float32" else 8)
