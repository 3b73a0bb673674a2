"""The step kernel: (StepSpec, target) -> scheduled IRModule (a tuned record when better, else the hand rule)
-> compiled function, through the one compile cache (:mod:`.cache`)."""

from __future__ import annotations

import tvm

from .. import schedules, targets
from ..ops import activations, compute, config
from ..ops.config import StepSpec
from ..runtime import packing
from . import records
from .cache import cached_kernel, source_hash
from .tvm_workarounds import vectorizable_isnan

__all__ = ["scheduled_module", "compile_step"]


def scheduled_module(spec: StepSpec, target, schedule_config=None) -> tvm.IRModule:
    """The step as an IRModule scheduled by the hand rule for ``target`` (or a tuned record, when better).

    Parameters
    ----------
    spec : StepSpec
    target : tvm.target.Target
    schedule_config : optional
        Knobs for the rule (e.g. :class:`schedules.base.CPUStepConfig`); None picks the defaults.
    """
    func = compute.step_primfunc(spec)
    tuned = records.lookup(func, target)
    if tuned is not None:
        return tuned
    for rule in schedules.step_rules(target):
        sch = rule.apply(func, spec, target, schedule_config)
        if sch is not None:
            return sch.mod
    raise ValueError(f"no schedule rule for target {target}")


def _key(spec: StepSpec, target) -> dict:
    return {"spec": spec.key(), "target": str(target.export()),
            "src": source_hash(compute, activations, packing, config, schedules), "db": records.fingerprint(target)}


def compile_step(spec: StepSpec, target=None):
    """Return the compiled step function ``f(x, h, *weights, [bias], [masks], out)`` for ``target``.

    Only host-runnable targets can be returned as a callable; other targets are exported by
    :mod:`tvm_gru.deploy.export`.
    """
    target = targets.resolve(target)

    def build():
        with vectorizable_isnan():  # else the NaN-safe activations scalarise the whole epilogue
            return tvm.compile(scheduled_module(spec, target), target=target)
    return cached_kernel("step", _key(spec, target), build)


