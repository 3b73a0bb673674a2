"""CUDA schedules for the GRU step: warp-per-unit GEMV with the gate math in the reduction's epilogue.

At small batch a step is a weight-streaming GEMV, so the schedule maximises the number of warps streaming
weights and keeps everything else on chip. CUDA kernels use packed blocks of width V = 1
(:func:`tvm_gru.targets.lanes`), so a packed weight is ``(H, K, G, 1)`` (implementation 2: the z, r, h
columns of one unit interleaved along k) or ``(G, H, K, 1)`` (implementation 1: one contiguous row of K
values per gate and unit)::

    blockIdx.x  : groups of ``units_per_block`` (batch row, unit) pairs
    threadIdx.y : one (batch row, unit) pair per warp
    threadIdx.x : the 32 lanes split k; partial sums in registers, then a warp-shuffle all-reduce
    epilogue    : activations and blend in registers, written once per unit

reset_after=True is one launch per step. reset_after=False is two launches, because the candidate's
recurrent product needs r of *every* unit (a grid-wide dependency): launch 1 computes the ``gates``
(z, r, and the candidate's input part) and ``rh = r * h``; launch 2 computes ``rh @ R_h`` and ``h_new``.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx

from tvm_gru.ops.compute import ANCHORS
from tvm_gru.ops.config import StepSpec

__all__ = ["CUDAStepConfig", "CUDAStepRule", "RULES"]


@dataclass(frozen=True)
class CUDAStepConfig:
    """Schedule knobs of the CUDA step rule.

    Attributes
    ----------
    units_per_block : int
        Warps (one (batch row, unit) pair each) per thread block.
    reduce_threads : int
        Threads splitting the k loop of a product: 32 = one warp, reduced with shuffles.
    unroll : int
        Explicit unroll of each thread's k loop (independent loads in flight).
    """

    units_per_block: int = 4
    reduce_threads: int = 32
    unroll: int = 4


class CUDAStepRule:
    """Schedules a :func:`tvm_gru.ops.compute.step_primfunc` (V = 1 packing) for an NVIDIA GPU."""

    def is_target(self, target) -> bool:
        return target.kind.name == "cuda"

    def default_config(self, spec: StepSpec, target) -> CUDAStepConfig:
        pairs = spec.batch * spec.config.units
        # Enough blocks for every SM on small problems, 4 warps a block (128 threads) otherwise.
        per_block = 4 if pairs >= 512 else 2
        # float16 weights: each load brings half the bytes, so twice the loads in flight keep as many bytes in
        # flight (a batch-1 step is bound by weight reads). Not yet measured on a GPU.
        unroll = 8 if spec.storage_dtype == "float16" else 4
        return CUDAStepConfig(units_per_block=per_block, unroll=unroll)

    def apply(self, func: tirx.PrimFunc, spec: StepSpec, target, config: CUDAStepConfig | None = None):
        """Return the scheduled ``s_tir.Schedule``, or None when the packing is not the CUDA one (V != 1)."""
        if spec.lanes != 1:
            return None
        cfg = config or self.default_config(spec, target)
        sch = s_tir.Schedule(func)
        reset_after = spec.config.reset_after
        for anchor in ANCHORS[reset_after]:
            unit_loop = self._bind_units(sch, anchor, cfg)
            for producer in sch.get_producers(sch.get_sblock(anchor)):
                if _is_reduction(sch, producer):
                    self._warp_product(sch, producer, unit_loop, cfg)
            if anchor == "gates":
                sch.reverse_compute_at(sch.get_sblock("rh"), unit_loop, preserve_unit_loops=True)
        return sch

    # ------------------------------------------------------------------------------------------
    def _bind_units(self, sch, anchor, cfg):
        """Fuse (batch, unit) of ``anchor``, bind blocks and warps; returns the warp loop."""
        block = sch.get_sblock(anchor)
        loops = sch.get_loops(block)
        b, u, middle = loops[0], loops[-1], loops[1:-1]  # ``gates`` has its gate axis in the middle
        sch.reorder(b, u, *middle)
        pair = sch.fuse(b, u)
        bx, ty = sch.split(pair, [None, cfg.units_per_block])
        sch.bind(bx, "blockIdx.x")
        sch.bind(ty, "threadIdx.y")
        for loop in middle:
            sch.unroll(loop)
        return ty

    def _warp_product(self, sch, block, unit_loop, cfg):
        """One product under the warp of its unit: lanes split k, shuffles reduce."""
        sch.compute_at(block, unit_loop, preserve_unit_loops=True)
        sch.set_scope(block, 0, "local")
        loops = sch.get_loops(block)
        k = loops[-1]
        depth = int(sch.get(k).extent)
        if depth % cfg.reduce_threads == 0 and depth // cfg.reduce_threads % cfg.unroll == 0:
            k_o, k_u, tx = sch.split(k, [None, cfg.unroll, cfg.reduce_threads])
            sch.unroll(k_u)
        else:
            k_o, tx = sch.split(k, [None, cfg.reduce_threads])
        sch.bind(tx, "threadIdx.x")
        # The gate loop of a fused product stays a loop: unrolled, its all-reduces would share one
        # reduction buffer, which TVM's LowerThreadAllreduce rejects.
        return k_o


def _is_reduction(sch, block) -> bool:
    return any(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)


RULES = (CUDAStepRule(),)
