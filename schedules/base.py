"""The CPU step rule shared by x86 and ARM: register-tiled GEMV/GEMM with the gate math in its epilogue.

Shape of the schedule (reset_after=False has two phases because the candidate's recurrent product needs r):

    phase 1, anchor ``gates`` (or ``h_new`` when reset_after):
      parallel for n_outer:                      # blocks of NI*V units, split across cores
        for b_outer:                             # tiles of BT batch rows
          acc[BT, NI, G, V] = 0                  # <= 12 SIMD registers
          for k: acc += x[b, k] * W[n, k, g, :]  # one contiguous 3*V run of packed weights per n
          epilogue on acc (activations, blend)   # no round trip through memory
    rh = r * h                                   # the phase boundary
    phase 2, anchor ``h_new``: the same tiling over ``hh_proj``.

The knobs live in :class:`CPUStepConfig`; targets pick them in ``x86.py`` / ``arm.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx

from tvm_gru.compute import ANCHORS
from tvm_gru.config import StepSpec

__all__ = ["CPUStepConfig", "CPUStepRule", "get_extent"]

# Products are computed under the anchor's second loop (n_outer, b_outer): their own loops start there.
_ANCHOR_DEPTH = 2


@dataclass(frozen=True)
class CPUStepConfig:
    """Schedule knobs of the CPU step rule.

    Attributes
    ----------
    unit_blocks : int
        NI, packed V-wide blocks per register tile (must divide NB).
    batch_tile : int
        BT, batch rows per register tile (must divide B).
    parallel : bool
        Split the outer unit blocks across the runtime's threads.
    """

    unit_blocks: int = 1
    batch_tile: int = 1
    parallel: bool = False


def get_extent(sch: s_tir.Schedule, loop) -> int:
    return int(sch.get(loop).extent)


def _largest_divisor(n: int, candidates) -> int:
    return next(c for c in candidates if n % c == 0)


class CPUStepRule:
    """Schedules a :func:`tvm_gru.compute.step_primfunc` for a CPU with SIMD width ``spec.lanes``."""

    max_accumulators = 12  # of 16 vector registers (AVX2): leave room for loads and broadcasts

    def is_target(self, target) -> bool:
        return target.kind.name == "llvm"

    def default_config(self, spec: StepSpec, target) -> CPUStepConfig:
        """Pick the register tile and threading from the shapes."""
        c = spec.config
        gates = 3 if c.implementation == 2 else 1  # impl 1 runs one product per gate, each with its own tile
        batch_tile = _largest_divisor(spec.batch, (4, 2, 1)) if spec.batch >= 4 else 1
        budget = max(1, self.max_accumulators // (gates * batch_tile))
        unit_blocks = _largest_divisor(spec.blocks, [d for d in (8, 4, 2, 1) if d <= budget])
        cores = int(target.attrs.get("num-cores", 1)) if "num-cores" in target.attrs else 1
        weight_bytes = (spec.input_dim + c.units) * 3 * spec.blocks * spec.lanes * (4 if c.dtype == "float32" else 8)
        work = weight_bytes * max(1, spec.batch // 4)
        # A parallel launch costs ~1.7 us per phase here; measured: 1x64x128 (295 KB) is faster on one core
        # (7.4 vs 11.8 us), 1x256x256 (1.5 MB) faster on two (24 vs 31 us).
        parallel = cores > 1 and work >= 512 * 1024 and spec.blocks // unit_blocks >= 2
        return CPUStepConfig(unit_blocks=unit_blocks, batch_tile=batch_tile, parallel=parallel)

    def apply(self, func: tirx.PrimFunc, spec: StepSpec, target, config: CPUStepConfig | None = None):
        """Return the scheduled ``s_tir.Schedule``."""
        cfg = config or self.default_config(spec, target)
        sch = s_tir.Schedule(func)
        pending = []
        anchors = ANCHORS[spec.config.reset_after]
        for name in anchors:
            pending += self._phase(sch, name, spec, cfg)
        if "rh" in {b.name_hint for b in _blocks(sch)}:
            self._elementwise(sch, "rh", spec)
        # Reductions are split into init + update last: vectorize/parallel need whole reduction blocks.
        for block, loop in pending:
            sch.decompose_reduction(block, loop)
        return sch

    # ------------------------------------------------------------------------------------------
    def _phase(self, sch, anchor, spec, cfg):
        """Tile ``anchor`` and hang its producer products under its batch-tile loop."""
        block = sch.get_sblock(anchor)
        loops = sch.get_loops(block)
        b, u = loops[0], loops[-1]
        middle = loops[1:-1]  # the gate axis of ``gates``
        n_o, n_i, v = sch.split(u, [None, cfg.unit_blocks, spec.lanes])
        b_o, b_i = sch.split(b, [None, cfg.batch_tile])
        sch.reorder(n_o, b_o, b_i, *middle, n_i, v)
        for loop in (b_i, *middle, n_i):
            sch.unroll(loop)
        if _divides(sch, block, spec):
            sch.vectorize(v)  # a ragged tail (H % V != 0) would be a predicated vector loop: keep it scalar
        pending = []
        for producer in sch.get_producers(block):
            if not _is_reduction(sch, producer):
                continue
            pending.append(self._product_at(sch, producer, b_o))
        if cfg.parallel:
            sch.parallel(n_o)
        return pending

    def _product_at(self, sch, block, loop):
        """Compute a product under ``loop`` with register accumulators; k outermost inside the tile."""
        sch.compute_at(block, loop, preserve_unit_loops=True)
        sch.cache_write(block, 0, "local")
        loops = sch.get_loops(block)
        tile, k = loops[_ANCHOR_DEPTH:-1], loops[-1]
        sch.reorder(k, *tile)
        for t in tile[:-1]:
            sch.unroll(t)
        sch.vectorize(tile[-1])
        return block, k

    def _elementwise(self, sch, name, spec):
        block = sch.get_sblock(name)
        loops = sch.get_loops(block)
        if spec.config.units % spec.lanes == 0:
            _, v = sch.split(loops[-1], [None, spec.lanes])
            sch.vectorize(v)


def _divides(sch, block, spec) -> bool:
    """True when the anchor's unit axis is a whole number of V-wide blocks."""
    extent = int(sch.get(block).iter_vars[-1].dom.extent)
    return extent % spec.lanes == 0


def _blocks(sch):
    return [sch.get(b) for b in sch.get_child_blocks(sch.get_sblock("root"))]


def _is_reduction(sch, block) -> bool:
    return any(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)
