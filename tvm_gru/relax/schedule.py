"""CPU schedules for the legalized, fused non-GRU ops of a whole model (matmul/dense, element-wise, softmax-like
reductions), applied after ``FuseTIR`` in :func:`tvm_gru.relax.relax_pipeline`.

TVM's default Relax CPU pipeline leaves these PrimFuncs as naive single-thread loops. :func:`schedule_cpu` gives
each unscheduled PrimFunc (tvm_gru's own kernels carry ``tirx.is_scheduled`` and are skipped) one of three
hand-written schedules:

* **GEMM** (one block with 2+ spatial axes and a reduction, e.g. ``fused_matmul_add_relu``): the leading spatial
  axes are fused into rows M, the last one is the columns N; an ``MR x NR`` register tile (NR up to
  :data:`NR_VECTORS` SIMD vectors, a divisor of N where one fits; MR = :data:`MR` when it divides a static M,
  1 for a symbolic M) accumulates in a ``local`` buffer with k outside the tile, the inner column axis
  vectorized, the rows unrolled, the element-wise epilogue (add, relu, ...) computed per tile, and the outer
  tiles run in parallel when M is symbolic or M*N*K reaches :data:`PARALLEL_FLOPS`.
* **element-wise** (only spatial blocks): producers are inlined into the output block, whose loops are fused,
  split by the SIMD width, vectorized inside and parallel outside when large.
* **row reductions** (softmax, layer-norm-like: every reduction block has the same leading spatial axes as the
  output): all blocks are computed under the output's row loop, which runs in parallel when large.

A function that fits no rule, or whose schedule raises, is left as it was (logged at debug level): compilation
never fails because of this pass. Scheduled functions get ``tirx.is_scheduled`` so later rules (dlight) skip them.
"""

from __future__ import annotations

import logging

import tvm
from tvm import tirx
from tvm.relax.backend.cpu_generic import pipeline as cpu

from .. import targets

log = logging.getLogger(__name__)

#: Multiply-adds (M*N*K) from which a GEMM with static shapes runs its outer tiles on the thread pool (a symbolic
#: M always does). An estimate, not tuned: the pool's wake-up costs microseconds, ~2.6e5 multiply-adds take
#: ~10 us on one AVX-512 core.
PARALLEL_FLOPS = 1 << 18
#: Elements from which an element-wise / row-reduction function runs in parallel.
PARALLEL_ELEMS = 1 << 15
#: Register tile rows of the GEMM.
MR = 4
#: SIMD vectors per register-tile row (at most).
NR_VECTORS = 4
#: Bytes from which TVM allocates a buffer through the workspace instead of the stack (runtime::kMaxStackAlloca).
STACK_BYTES = 1024

__all__ = ["schedule_cpu", "schedule_prim_func", "cpu_schedule_pass", "legalized_module", "PARALLEL_FLOPS",
           "PARALLEL_ELEMS"]


def _const(expr):
    return int(expr) if isinstance(expr, (tirx.IntImm, int)) else None


def _iter_kinds(block):
    return ["S" if iv.iter_type == tirx.IterVar.DataPar else
            "R" if iv.iter_type == tirx.IterVar.CommReduce else "O" for iv in block.iter_vars]


def _extent_product(sch, loops):
    """Product of the loops' extents, or None when one is symbolic."""
    prod = 1
    for lp in loops:
        ext = _const(sch.get(lp).extent)
        if ext is None:
            return None
        prod *= ext
    return prod


def _region_dtype(region):
    buf = getattr(region, "buffer", None) or region.source  # TVM 0.27: TensorRegion(source=buffer var)
    return str(buf.dtype)


def _blocks(sch):
    return sch.get_child_blocks(sch.get_sblock("root"))


def _is_gemm_block(block):
    kinds = _iter_kinds(block)
    return ("O" not in kinds and kinds.count("R") >= 1 and kinds.count("S") >= 2
            and kinds == sorted(kinds, key=lambda c: c == "R") and len(block.reads) >= 2)


def _schedule_gemm(sch, gemm, lanes):
    blocks = _blocks(sch)
    idx = next(i for i, b in enumerate(blocks) if sch.get(b).same_as(sch.get(gemm)))
    # Producers (transposes, casts) are read inside the k loop: inline them where possible.
    for b in blocks[:idx]:
        sch.compute_inline(b)
    # Epilogue: inline the chain into its first consumer (the one reading the GEMM's result).
    epilogue = list(_blocks(sch))
    epilogue = epilogue[[i for i, b in enumerate(epilogue) if sch.get(b).same_as(sch.get(gemm))][0] + 1:]
    for b in reversed(epilogue[1:]):
        sch.reverse_compute_inline(b)
    epi = epilogue[0] if epilogue else None

    loops = sch.get_loops(gemm)
    kinds = _iter_kinds(sch.get(gemm))
    n_spatial = kinds.count("S")
    spatial, reduce_ = loops[:n_spatial], loops[n_spatial:]
    n_ext = _const(sch.get(spatial[-1]).extent)
    k_ext = _extent_product(sch, reduce_)
    m_ext = _extent_product(sch, spatial[:-1])
    # A row tile must not straddle the innermost row axis: the accumulators' write-back region of a tile of the
    # fused rows is relaxed per original axis, so a straddling tile would copy rows it did not compute.
    inner_rows = _const(sch.get(spatial[-2]).extent) if m_ext is not None else None
    m = sch.fuse(*spatial[:-1]) if len(spatial) > 2 else spatial[0]
    k = sch.fuse(*reduce_) if len(reduce_) > 1 else reduce_[0]
    nr = _col_tile(n_ext, lanes)
    mr = _row_tile(inner_rows, nr * _itemsize(sch.get(gemm)))
    mo, mi = sch.split(m, [None, mr])
    no, ni = sch.split(spatial[-1], [None, nr])
    sch.reorder(mo, no, k, mi, ni)
    big = m_ext is None or (n_ext is not None and k_ext is not None and m_ext * n_ext * k_ext >= PARALLEL_FLOPS)
    if big:
        outer = sch.fuse(mo, no)
        sch.parallel(outer)
    else:
        outer = no
    # "global", not "local": TVM allocates a CPU "local" buffer through TVMBackendAllocWorkspace, whose pointer
    # LLVM cannot prove free of aliases, so every accumulator went back to memory after each FMA (measured:
    # 100x40 @ 40x128 + bias + relu, 25.6 -> 7.2 us static, 14.8 -> 6.7 us with a symbolic row count). A small
    # "global" one becomes a stack alloca (under TVM's 1 KB stack limit, see _row_tile) and SROA keeps it in
    # registers.
    acc = sch.cache_write(gemm, 0, "global")
    sch.reverse_compute_at(acc, outer)
    if epi is not None:
        sch.compute_inline(acc)
        sch.reverse_compute_at(epi, outer)
        acc = epi
    sch.unroll(mi)
    sch.vectorize(ni)
    sch.decompose_reduction(gemm, k)
    al = sch.get_loops(acc)
    inner = al[-1]
    sch.vectorize(inner)
    return True


def _col_tile(n_ext, lanes):
    """Register-tile width: a divisor of N up to NR_VECTORS vectors (so that no predicate
    lands in the vectorized loop), preferring multiples of the SIMD width."""
    limit = lanes * NR_VECTORS
    if n_ext is None:
        return limit
    if n_ext <= limit:
        return n_ext
    divisors = [d for d in range(limit, 0, -1) if n_ext % d == 0]
    for d in divisors:
        if d % lanes == 0:
            return d
    return divisors[0] if divisors[0] >= lanes // 2 else limit


def _row_tile(m_ext, row_bytes):
    """Register-tile rows: MR when it divides a static M (else 2 or 1), with the tile's accumulators (``row_bytes``
    per row) under TVM's stack allocation limit (:data:`STACK_BYTES`; a larger buffer is a workspace allocation,
    whose accumulators go back to memory on every k); 1 for a symbolic M, as schedule primitives cannot
    partition a symbolic loop and a row predicate inside the tile keeps the accumulators out of registers."""
    if m_ext is None:
        return 1
    for r in (MR, 2):
        if m_ext % r == 0 and r * row_bytes < STACK_BYTES:
            return r
    return 1


def _itemsize(block) -> int:
    return tvm.runtime.DataType(_region_dtype(block.writes[0])).bits // 8


def _blocks_named(sch, name):
    try:
        return sch.get_sblock(name)
    except Exception:  # noqa: BLE001
        return None


def _schedule_elementwise(sch, lanes):
    blocks = _blocks(sch)
    for b in blocks[:-1]:
        sch.compute_inline(b)
    (out,) = _blocks(sch)
    loops = sch.get_loops(out)
    total = _extent_product(sch, loops)
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    if total is not None and total < lanes:
        return True
    outer, inner = sch.split(fused, [None, lanes])
    sch.vectorize(inner)
    if total is None or total >= PARALLEL_ELEMS:
        sch.parallel(outer)
    return True


def _schedule_rows(sch, lanes):
    """Row reductions (softmax): every block under the output block's outer spatial loops."""
    blocks = _blocks(sch)
    out = blocks[-1]
    n_rows = min(_iter_kinds(sch.get(b)).index("R") if "R" in _iter_kinds(sch.get(b)) else len(sch.get_loops(b))
                 for b in blocks)
    if n_rows == 0:
        return False
    loops = sch.get_loops(out)
    row = sch.fuse(*loops[:n_rows]) if n_rows > 1 else loops[0]
    for b in reversed(blocks[:-1]):
        sch.compute_at(b, row)
    for b in blocks[:-1] + [out]:
        kinds = _iter_kinds(sch.get(b))
        if "R" not in kinds:
            bl = sch.get_loops(b)
            if len(bl) > 1:
                sch.vectorize(bl[-1]) if _const(sch.get(bl[-1]).extent) else None
    rows = _const(sch.get(row).extent)
    per_row = _extent_product(sch, sch.get_loops(out)[1:])
    if rows is None or per_row is None or rows * per_row >= PARALLEL_ELEMS:
        sch.parallel(row)
    return True


def schedule_prim_func(func: tirx.PrimFunc, lanes):
    """The scheduled function, or None when no rule applies (raises when scheduling fails). ``lanes(dtype)``
    gives the SIMD width in elements of ``dtype`` (float32/float64 only; other dtypes are left alone)."""
    sch = tvm.s_tir.Schedule(func)
    blocks = _blocks(sch)
    if not blocks:
        return None
    dtypes = {_region_dtype(r) for b in blocks for r in sch.get(b).writes}
    if len(dtypes) != 1 or next(iter(dtypes)) not in ("float32", "float64"):
        return None
    lanes = lanes(next(iter(dtypes)))
    kinds = [_iter_kinds(sch.get(b)) for b in blocks]
    if any("O" in k for k in kinds):
        return None
    gemms = [b for b, k in zip(blocks, kinds) if "R" in k]
    if len(gemms) == 1 and _is_gemm_block(sch.get(gemms[0])):
        ok = _schedule_gemm(sch, gemms[0], lanes)
    elif not gemms:
        ok = _schedule_elementwise(sch, lanes)
    else:
        ok = _schedule_rows(sch, lanes)
    return sch.mod["main"] if ok else None


def schedule_cpu(mod: tvm.IRModule, target) -> tvm.IRModule:
    """Schedule every unscheduled PrimFunc of ``mod`` for the CPU ``target`` (see the module docstring)."""
    updates = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc) or func.attrs is not None and func.attrs.get("tirx.is_scheduled",
                                                                                             False):
            continue
        try:
            new = schedule_prim_func(func, lambda dtype: targets.lanes(target, dtype))
        except Exception as err:  # noqa: BLE001  (any rule failure: keep the function as it was)
            log.debug("tvm_gru.relax.schedule: %s left unscheduled: %s", gv.name_hint, err)
            continue
        if new is None:
            log.debug("tvm_gru.relax.schedule: no rule for %s", gv.name_hint)
            continue
        updates[gv] = new.with_attr("tirx.is_scheduled", True)
    if not updates:
        return mod
    funcs = {gv: updates.get(gv, func) for gv, func in mod.functions.items()}
    return tvm.IRModule(funcs, attrs=mod.attrs, global_infos=mod.global_infos)


def legalized_module(mod: tvm.IRModule, target) -> tvm.IRModule:
    """``mod`` after the CPU pipeline's library dispatch and legalization passes (``LegalizeOps`` ...
    ``FuseTIR``): what :func:`schedule_cpu` receives inside :func:`tvm_gru.relax.compile` (for inspection and
    tests: ``schedule_cpu(legalized_module(mod, target), target)`` is the scheduled module)."""
    target = targets.resolve(target)
    with target:
        return tvm.transform.Sequential(cpu.library_dispatch_passes(target) + cpu.legalize_passes(target))(mod)


def cpu_schedule_pass(target):
    """:func:`schedule_cpu` as a module pass."""
    @tvm.transform.module_pass(opt_level=0, name="tvm_gru_cpu_schedule")
    def _pass(mod, _ctx):
        return schedule_cpu(mod, target)

    return _pass
