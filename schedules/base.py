"""The CPU step rule shared by x86 and ARM: register-tiled GEMV/GEMM with the gate math in its epilogue.

Shape of the schedule (reset_after=False has two phases because the candidate's recurrent product needs r
of every unit)::

    [one parallel launch]                          # reset_after=False, parallel: one region, one barrier
      phase 1, anchor ``gates`` (or ``h_new`` when reset_after):
        parallel for n_outer:                      # tiles of NI*V units, contiguous ranges per core
          for b_outer:                             # tiles of BT batch rows
            acc[BT, NI, G, V] = 0                  # <= max_accumulators SIMD registers
            for k: acc += x[b, k] * W[n, k, g, :]  # G*V contiguous packed weights per unit block
            epilogue on acc                        # activations (and blend): no round trip through memory
          rh = r * h for the tile                  # reset_after=False
      [barrier]                                    # every r is known
      phase 2, anchor ``h_new``: the same tiling over ``hh_proj`` (one gate, NI2 blocks)

Products are computed into tile-sized buffers that LLVM keeps in registers (TVM's "local" scope would be
lowered to heap workspace calls, so the default scope is kept). The knobs live in :class:`CPUStepConfig`;
targets pick them in ``x86.py`` / ``arm.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx

from tvm_gru.config import StepSpec

__all__ = ["CPUStepConfig", "CPUStepRule", "get_extent"]


@dataclass(frozen=True)
class CPUStepConfig:
    """Schedule knobs of the CPU step rule.

    Attributes
    ----------
    unit_blocks : int
        NI, packed V-wide unit blocks per register tile of the three-gate phase (must divide NB).
    candidate_blocks : int
        NI of the candidate phase (reset_after=False only: one gate, so more blocks fit; must divide NB).
    batch_tile : int
        BT, batch rows per register tile (must divide B).
    parallel : bool
        Split the outer unit tiles across the runtime's threads.
    one_region : bool
        With ``parallel`` and reset_after=False: run both phases in one parallel launch separated by a
        barrier, instead of two launches.
    batch_inner : bool
        Run each product over all batch tiles of a unit tile before the epilogue (batch > BT): the unit
        tile's weight panel is then read from L1 by every batch tile, at the cost of spilling the
        accumulators once per batch tile.
    """

    unit_blocks: int = 1
    candidate_blocks: int = 1
    batch_tile: int = 1
    parallel: bool = False
    one_region: bool = True
    batch_inner: bool = False


def get_extent(sch: s_tir.Schedule, loop) -> int:
    return int(sch.get(loop).extent)


def _largest_divisor(n: int, candidates) -> int:
    return next(c for c in candidates if n % c == 0)


class CPUStepRule:
    """Schedules a :func:`tvm_gru.compute.step_primfunc` for a CPU with SIMD width ``spec.lanes``."""

    max_accumulators = 12  # of 16 vector registers (AVX2): leave room for loads and broadcasts
    # Weight bytes per phase under which one core beats two (a parallel launch costs ~1.7 us here).
    parallel_min_bytes = 512 * 1024

    def is_target(self, target) -> bool:
        return target.kind.name == "llvm"

    def default_config(self, spec: StepSpec, target) -> CPUStepConfig:
        """Pick the register tiles and threading from the shapes."""
        c = spec.config
        nb = spec.blocks
        batch_tile = _largest_divisor(spec.batch, (4, 2, 1)) if spec.batch >= 4 else spec.batch
        budget = max(1, self.max_accumulators // (3 * batch_tile))
        unit_blocks = _largest_divisor(nb, [d for d in (8, 4, 2, 1) if d <= budget])
        budget = max(1, self.max_accumulators // batch_tile)
        candidate_blocks = _largest_divisor(nb, [d for d in (12, 8, 6, 4, 3, 2, 1) if d <= budget])
        cores = int(target.attrs["num-cores"]) if "num-cores" in target.attrs else 1
        itemsize = 4 if c.dtype == "float32" else 8
        weight_bytes = (spec.input_dim + c.units) * 3 * nb * spec.lanes * itemsize
        work = weight_bytes * max(1, spec.batch // 4)
        parallel = cores > 1 and work >= self.parallel_min_bytes and nb // unit_blocks >= 2
        # Several batch tiles: products of all of them first. Besides reusing the unit tile's weights from L1,
        # this keeps LLVM from holding the input product's registers across the recurrent product's loop
        # (seen to spill accumulators inside that loop and cost ~20 % at batch 64).
        batch_inner = spec.batch > batch_tile
        return CPUStepConfig(unit_blocks=unit_blocks, candidate_blocks=candidate_blocks, batch_tile=batch_tile,
                             parallel=parallel, batch_inner=batch_inner)

    def apply(self, func: tirx.PrimFunc, spec: StepSpec, target, config: CPUStepConfig | None = None):
        """Return the scheduled ``s_tir.Schedule``."""
        cfg = config or self.default_config(spec, target)
        sch = s_tir.Schedule(func)
        pending = []
        if spec.config.reset_after:
            pending += self._phase(sch, "h_new", spec, cfg.unit_blocks, cfg)
        else:
            pending += self._two_phases(sch, spec, cfg)
        # Reductions are split into init + update last: vectorize/parallel need whole reduction blocks.
        for block, loop in pending:
            sch.decompose_reduction(block, loop)
        return sch

    # ------------------------------------------------------------------------------------------
    def _two_phases(self, sch, spec, cfg):
        """reset_after=False: ``gates`` (+ ``rh``) tiles, then ``h_new`` tiles over ``hh_proj``."""
        region = None
        if cfg.parallel and cfg.one_region:
            # A unit loop over everything: the parallel launch point; phase 1 moves under it.
            region, _ = sch.split(sch.get_loops(sch.get_sblock("h_new"))[0], [1, None])
        pending = self._phase(sch, "h_new", spec, cfg.candidate_blocks, cfg)
        if region is not None:
            sch.compute_at(sch.get_sblock("rh"), region, preserve_unit_loops=True)
            sch.compute_at(sch.get_sblock("gates"), region, preserve_unit_loops=True)
        pending += self._phase(sch, "gates", spec, cfg.unit_blocks, cfg)
        n_outer = sch.get_loops(sch.get_sblock("gates"))[1 if region is not None else 0]
        rh = sch.get_sblock("rh")
        sch.reverse_compute_at(rh, n_outer, preserve_unit_loops=True)
        self._vectorize_inner(sch, rh, spec)
        if region is not None:
            sch.annotate(n_outer, "pragma_parallel_barrier_when_finish", 1)
            sch.annotate(region, "pragma_parallel_launch_point", 1)
        return pending

    def _phase(self, sch, anchor, spec, unit_blocks, cfg):
        """Tile ``anchor`` and hang its producer products under its batch-tile (or, batch_inner, unit-tile) loop."""
        block = sch.get_sblock(anchor)
        loops = sch.get_loops(block)
        own = len(sch.get(block).iter_vars)  # (b, u) or (b, g, u); loops above them are the region's
        b, *middle, u = loops[-own:]
        n_o, n_i, v = sch.split(u, [None, unit_blocks, spec.lanes])
        b_o, b_i = sch.split(b, [None, cfg.batch_tile])
        sch.reorder(n_o, b_o, b_i, *middle, n_i, v)
        for loop in (b_i, *middle, n_i):
            sch.unroll(loop)
        if int(sch.get(block).iter_vars[-1].dom.extent) % spec.lanes == 0:
            sch.vectorize(v)  # a ragged tail (H % V != 0) would be a predicated vector loop: keep it scalar
        at, rows = (n_o, cfg.batch_tile) if cfg.batch_inner else (b_o, None)
        pending = [self._product_at(sch, p, at, rows) for p in sch.get_producers(block) if _is_reduction(sch, p)]
        if cfg.parallel:
            sch.parallel(n_o)
        return pending

    def _product_at(self, sch, block, loop, rows=None):
        """Compute a product under ``loop`` in a tile-sized buffer; k outermost inside the register tile.

        ``rows``: the product covers all batch rows under ``loop``; tile them by ``rows`` outside k.
        """
        sch.compute_at(block, loop, preserve_unit_loops=True)
        own = len(sch.get(block).iter_vars)
        loops = sch.get_loops(block)
        tile, k = loops[-own:-1], loops[-1]
        if rows is not None:
            b_o, b_i = sch.split(tile[0], [None, rows])
            tile = [b_i, *tile[1:]]
            sch.reorder(b_o, k, *tile)
        else:
            sch.reorder(k, *tile)
        for t in tile[:-1]:
            sch.unroll(t)
        sch.vectorize(tile[-1])
        return block, k

    def _vectorize_inner(self, sch, block, spec):
        loops = sch.get_loops(block)
        if spec.config.units % spec.lanes == 0:
            _, v = sch.split(loops[-1], [None, spec.lanes])
            sch.vectorize(v)


def _is_reduction(sch, block) -> bool:
    return any(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)
