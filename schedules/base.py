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

import tvm
from tvm import s_tir, tirx

from tvm_gru.ops.config import StepSpec

__all__ = ["CPUStepConfig", "CPUStepRule", "check_one_region", "one_region_error", "get_extent"]


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
        barrier, instead of two launches. Each phase must then have at least two unit tiles (see
        :func:`check_one_region`).
    batch_inner : bool
        Run each product over all batch tiles of a unit tile before the epilogue (batch > BT): the unit
        tile's weight panel is then read from L1 by every batch tile, at the cost of spilling the
        accumulators once per batch tile.
    prefetch_next : bool
        In each product's k loop, prefetch the next unit tile's weights at the same k. A tile streams its
        panels as one to NI sequential streams, and one stream from L3 runs at ~10-20 GB/s here (the core
        keeps few of its misses in flight): the prefetches are a second set of streams, and the next tile
        finds its panels in L2. Pays off when the weights do not fit L2.
    """

    unit_blocks: int = 1
    candidate_blocks: int = 1
    batch_tile: int = 1
    parallel: bool = False
    one_region: bool = True
    batch_inner: bool = False
    prefetch_next: bool = False


def get_extent(sch: s_tir.Schedule, loop) -> int:
    return int(sch.get(loop).extent)


def one_region_error(blocks: int, reset_after: bool, cfg: CPUStepConfig) -> str | None:
    """Why ``cfg`` cannot run one parallel region over ``blocks`` unit blocks, or None when it can.

    Inside a parallel launch TVM drops a parallel loop of extent 1 and every task runs its body: both threads
    then computed that phase at once, into the same scratch buffers and the same output. Measured before this
    check (1x40x64, a single candidate tile): 78 to 237 wrong outputs in ~700,000 calls, always in the units of
    the slower thread, which the other one's zeroing of the shared accumulators had overwritten. reset_after=True
    has one phase and no region.
    """
    if not (cfg.parallel and cfg.one_region) or reset_after:
        return None
    for name in ("unit_blocks", "candidate_blocks"):
        tiles = blocks // getattr(cfg, name)
        if tiles < 2:
            return (f"{name}={getattr(cfg, name)} gives {tiles} tile of {blocks} unit blocks: one parallel region "
                    f"(one_region=True) needs at least 2 tiles per phase; use smaller tiles or one_region=False")
    return None


def check_one_region(spec: StepSpec, cfg: CPUStepConfig) -> None:
    """Refuse one parallel region (reset_after=False) with a phase of a single unit tile (ValueError; see
    :func:`one_region_error`)."""
    error = one_region_error(spec.blocks, spec.config.reset_after, cfg)
    if error is not None:
        raise ValueError(error)


def _largest_divisor(n: int, candidates) -> int:
    return next(c for c in candidates if n % c == 0)


class CPUStepRule:
    """Schedules a :func:`tvm_gru.ops.compute.step_primfunc` for a CPU with SIMD width ``spec.lanes``."""

    max_accumulators = 12  # of 16 vector registers (AVX2): leave room for loads and broadcasts
    # int8 weights are widened in registers before their FMA: each in-flight weight vector holds a register for the
    # conversion. ARM's 24 accumulators then spilled inside the k loop (5-12 stack accesses per 24 fmla, 1x256x256,
    # LLVM 0.27 asm); 12 leave it spill-free. x86 keeps its 12.
    max_widened_accumulators = 12
    # Weight bytes per phase under which one core beats two (a parallel launch costs ~1.7 us here).
    parallel_min_bytes = 512 * 1024
    # Weight bytes per core from which single-stream tiles prefetch the next tile (None: never; measured on x86 only).
    prefetch_min_bytes = None

    def is_target(self, target) -> bool:
        return target.kind.name == "llvm"

    def default_config(self, spec: StepSpec, target) -> CPUStepConfig:
        """Pick the register tiles and threading from the shapes."""
        c = spec.config
        nb = spec.blocks
        batch_tile = _largest_divisor(spec.batch, (4, 2, 1)) if spec.batch >= 4 else spec.batch
        accumulators = self.max_accumulators
        if spec.storage_dtype == "int8":
            accumulators = min(accumulators, self.max_widened_accumulators)
        budget = max(1, accumulators // (3 * batch_tile))
        unit_blocks = _largest_divisor(nb, [d for d in (8, 4, 2, 1) if d <= budget])
        budget = max(1, accumulators // batch_tile)
        cores = int(target.attrs["num-cores"]) if "num-cores" in target.attrs else 1
        itemsize = 4 if c.dtype == "float32" else 8
        weight_bytes = (spec.input_dim + c.units) * 3 * nb * spec.lanes * itemsize
        work = weight_bytes * max(1, spec.batch // 4)
        parallel = cores > 1 and work >= self.parallel_min_bytes and nb // unit_blocks >= 2
        # In one parallel region the candidate phase needs two tiles or more too (check_one_region).
        tiles = 2 if parallel and not c.reset_after else 1
        candidate_blocks = _largest_divisor(nb, [d for d in (12, 8, 6, 4, 3, 2, 1)
                                                 if d <= budget and (nb // d >= tiles or d == 1)])
        # Several batch tiles: products of all of them first. Besides reusing the unit tile's weights from L1,
        # this keeps LLVM from holding the input product's registers across the recurrent product's loop
        # (seen to spill accumulators inside that loop and cost ~20 % at batch 64).
        batch_inner = spec.batch > batch_tile
        # One stream per product tile (unit_blocks == 1) whose weights come from L3 each step, read by at most two
        # batch tiles: prefetch the next tile. Measured (interleaved, same kernel with and without): 4x512x1024
        # 1.6-1.9x, 8x512x1024 1.4-1.9x (reset_after sigmoid 1.3x); 2x512x1024 (two streams) 0.97x, 8x256x256
        # (786 KB per core) 0.88x, 16/32x512x1024 1.0x, 64x512x1024 0.8-1.06x, batch 1 (four streams) 0.6-0.8x.
        prefetch_next = (self.prefetch_min_bytes is not None and unit_blocks == 1
                         and spec.batch <= 2 * batch_tile and weight_bytes // cores >= self.prefetch_min_bytes)
        return CPUStepConfig(unit_blocks=unit_blocks, candidate_blocks=candidate_blocks, batch_tile=batch_tile,
                             parallel=parallel, batch_inner=batch_inner, prefetch_next=prefetch_next)

    def apply(self, func: tirx.PrimFunc, spec: StepSpec, target, config: CPUStepConfig | None = None):
        """Return the scheduled ``s_tir.Schedule``."""
        cfg = config or self.default_config(spec, target)
        check_one_region(spec, cfg)
        sch = s_tir.Schedule(func)
        pending = []
        if spec.config.reset_after:
            pending += self._phase(sch, "h_new", spec, cfg.unit_blocks, cfg)
        else:
            pending += self._two_phases(sch, spec, cfg)
        # Reductions are split into init + update last: vectorize/parallel need whole reduction blocks.
        for block, loop, *_ in pending:
            sch.decompose_reduction(block, loop)
        if cfg.prefetch_next:
            for product in pending:
                _prefetch_next_tile(sch, *product)
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
        pending = []
        for producer in sch.get_producers(block):
            if _is_reduction(sch, producer):
                product, k, own_rows = self._product_at(sch, producer, at, rows)
                # (block, k loop, batch-tile loop, unit-tile loop, unit blocks per tile): see _prefetch_next_tile
                pending.append((product, k, own_rows if cfg.batch_inner else b_o, n_o, unit_blocks))
        if cfg.parallel:
            sch.parallel(n_o)
        return pending

    def _product_at(self, sch, block, loop, rows=None):
        """Compute a product under ``loop`` in a tile-sized buffer; k outermost inside the register tile.

        ``rows``: the product covers all batch rows under ``loop``; tile them by ``rows`` outside k.
        Returns the block, its k loop and (with ``rows``) its batch-tile loop.
        """
        sch.compute_at(block, loop, preserve_unit_loops=True)
        own = len(sch.get(block).iter_vars)
        loops = sch.get_loops(block)
        tile, k = loops[-own:-1], loops[-1]
        b_o = None
        if rows is not None:
            b_o, b_i = sch.split(tile[0], [None, rows])
            tile = [b_i, *tile[1:]]
            sch.reorder(b_o, k, *tile)
        else:
            sch.reorder(k, *tile)
        for t in tile[:-1]:
            sch.unroll(t)
        sch.vectorize(tile[-1])
        return block, k, b_o

    def _vectorize_inner(self, sch, block, spec):
        loops = sch.get_loops(block)
        if spec.config.units % spec.lanes == 0:
            _, v = sch.split(loops[-1], [None, spec.lanes])
            sch.vectorize(v)


def _prefetch_next_tile(sch, block, k, batch_tiles, n_outer, unit_blocks, line_bytes=64):
    """Start ``block``'s k loop body with prefetches of the next unit tile's weights at the same k.

    ``block`` reads a packed (NB, K, G, V) weight; the tile at ``n_outer`` covers unit blocks
    ``n_outer * unit_blocks ..``. One prefetch per cache line of each of the next tile's rows, in the first
    batch tile only (``batch_tiles``, the batch-tile loop around the product, may be None): the others read
    the same weights. The last tile prefetches its own last block again: harmless, and never past the array.
    The statements are spliced in with ``ScheduleState.replace``, which is not a traced schedule instruction.
    """
    weight = next(r.source for r in sch.get(block).reads if r.source.name.endswith("_packed"))
    nb, _, gates, lanes = (int(d) for d in weight.shape)
    itemsize = tvm.DataType(weight.dtype).bits // 8
    loop = sch.get(k)
    first = (sch.get(n_outer).loop_var + 1) * unit_blocks
    calls = []
    for j in range(unit_blocks):
        n = tirx.min(first + j, nb - 1)
        for offset in range(0, gates * lanes * itemsize, line_bytes):
            e = offset // itemsize
            address = tirx.address_of(tirx.BufferLoad(weight, [n, loop.loop_var, e // lanes, e % lanes]))
            # llvm.prefetch(address, read, locality 2 = into L2 (prefetcht1): the tile is read a panel later, by
            # when L1 would have dropped it; data cache)
            calls.append(tirx.Evaluate(tirx.call_llvm_intrin("void", "llvm.prefetch.p0", address, 0, 2, 1)))
    prefetch = tirx.SeqStmt(calls) if len(calls) > 1 else calls[0]
    if batch_tiles is not None and int(sch.get(batch_tiles).extent) > 1:
        prefetch = tirx.IfThenElse(sch.get(batch_tiles).loop_var == 0, prefetch, None)
    body = tirx.SeqStmt([prefetch, loop.body])
    sch.state.replace(sch.get_sref(k), tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind, body,
                                                loop.thread_binding, loop.annotations))


def _is_reduction(sch, block) -> bool:
    return any(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)
