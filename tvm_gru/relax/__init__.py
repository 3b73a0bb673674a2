"""Whole models through Relax, with every GRU lowered to tvm_gru's fused whole-sequence kernel.

* :func:`from_onnx`: ``tvm.relax.frontend.onnx.from_onnx`` (same parameters, plus ``target``) with ONNX ``GRU``
  nodes lowered to ``call_tir`` of the scheduled kernel; other ops go to TVM's converters.
* :func:`compile`: ``tvm.compile`` with the PassContext the sequence kernels need (optionally dlight's CPU
  rules for the other, legalized ops).
* :func:`tune_model`: MetaSchedule tuning of the model's other functions (static shapes), records applied by
  :func:`compile` where they beat the hand rules.

Example::

    mod = tvm_gru.relax.from_onnx(onnx.load("model.onnx"), target="host")
    ex = tvm_gru.relax.compile(mod, target="host")
    vm = tvm.relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x))
"""

from __future__ import annotations

import tvm
from tvm.relax.backend.cpu_generic import pipeline as cpu
from tvm.s_tir import dlight as dl

from .. import targets
from ..build.tvm_workarounds import sequence_pass_config, vectorizable_isnan
from .lowering import SequenceKernels, emit_direction, emit_onnx_gru
from .onnx_frontend import GRUGraphImporter, from_onnx
from .schedule import cpu_schedule_pass
from .torch_frontend import from_exported_program, torch_convert_map
from .tuning import apply_tuned_pass, model_tasks, tune_model

__all__ = ["from_onnx", "from_exported_program", "torch_convert_map", "compile", "relax_pipeline", "tune_model",
           "model_tasks", "GRUGraphImporter", "SequenceKernels", "emit_direction", "emit_onnx_gru"]


def relax_pipeline(target, dlight: bool = False, schedule: bool = True):
    """TVM's default CPU Relax pipeline, with the legalized and fused ops that are not yet scheduled (tvm_gru's
    kernels carry ``tirx.is_scheduled`` and are left alone) scheduled right after ``FuseTIR``: by their tuning
    records where one beat the hand rule (:mod:`tvm_gru.relax.tuning`), then by :mod:`tvm_gru.relax.schedule`'s
    CPU rules (GEMM register tiles, vectorized element-wise ops, row-parallel softmax) when ``schedule``, then by
    dlight's CPU rules (GEMV, Reduction) for what is left when ``dlight``."""
    scheduling = []
    if schedule:
        scheduling.append(apply_tuned_pass(target))
        scheduling.append(cpu_schedule_pass(target))
    if dlight:

        scheduling.append(dl.ApplyDefaultSchedule(dl.cpu.GEMV(), dl.cpu.Reduction()))

    @tvm.transform.module_pass(opt_level=0, name="tvm_gru_relax_pipeline")
    def _pipeline(mod, _ctx):
        with target:
            seq = tvm.transform.Sequential(cpu.library_dispatch_passes(target) + cpu.legalize_passes(target)
                                           + scheduling + cpu.dataflow_lower_passes(target)
                                           + cpu.finalize_passes(target))
            return seq(mod)

    return _pipeline


def compile(mod, target=None, *, dlight: bool = False, schedule: bool = True):  # noqa: A001  (mirrors tvm.compile)
    """Compile a module from :func:`from_onnx` to a Relax VM executable for ``target`` (the one given to
    :func:`from_onnx`; None = this machine's CPU), with the sequence kernels' PassContext (no storage rewrite,
    vectorisable ``isnan``: :mod:`tvm_gru.build.tvm_workarounds`), which applies to the whole module.

    ``schedule=True`` (default) schedules the other (legalized, fused) ops with :mod:`tvm_gru.relax.schedule`'s
    CPU rules (GEMM register tiles, vectorized element-wise ops, row-parallel softmax); ``schedule=False`` gives
    TVM's default pipeline (naive single-thread loops). ``dlight=True`` adds dlight's CPU rules (GEMV, Reduction)
    for what is left unscheduled (alone, they were slower than these rules on every model tried; see
    benchmarks/README.md).
    """
    target = targets.resolve(target)
    if target.kind.name != "llvm":
        raise ValueError(f"tvm_gru.relax.compile builds CPU modules (llvm targets); received {target.kind.name}")
    with vectorizable_isnan(), tvm.transform.PassContext(opt_level=3, config=sequence_pass_config()):
        return tvm.compile(mod, target=target, relax_pipeline=relax_pipeline(target, dlight, schedule))
