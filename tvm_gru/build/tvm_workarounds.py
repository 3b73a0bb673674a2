"""Workarounds for Apache TVM 0.27, in one place (each says what it works around and how it is undone)."""

from __future__ import annotations

from contextlib import contextmanager

import tvm

__all__ = ["vectorizable_isnan", "sequence_pass_config"]


@contextmanager
def vectorizable_isnan():
    """Let TVM's loop vectorizer vectorize ``tirx.isnan`` (used by the NaN-safe activations) while compiling.

    TVM 0.27 does not mark ``tirx.isnan`` as vectorizable, so ``VectorizeLoop`` silently scalarises every
    loop whose body calls it (measured: the whole gate epilogue ran as scalar code). The LLVM lowering of
    isnan on vectors is fine (``fcmp uno``), so the op only needs the ``TVectorizable`` attribute. It is set
    for the duration of a CPU compile and restored after, so other targets' codegen is untouched.
    """
    op = tvm.ir.Op.get("tirx.isnan")
    if op.get_attr("TVectorizable"):
        yield
        return
    op.set_attr("TVectorizable", True)
    try:
        yield
    finally:
        op.reset_attr("TVectorizable")


def sequence_pass_config() -> dict:
    """PassContext options for sequence kernels: no StorageRewrite.

    StorageRewrite would merge the register-tile accumulators into the big workspaces, turning them into
    memory that LLVM cannot promote to registers (measured: the GEMM tile then stores all 12 accumulators
    every k). Every allocation in a sequence kernel is already sized and placed by the schedule.
    """
    return {"tirx.disable_storage_rewrite": True}
