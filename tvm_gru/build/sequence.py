"""The whole-sequence kernels: (SequenceSpec, target, schedule) -> scheduled IRModule -> compiled function,
through the one compile cache (:mod:`.cache`). What they compute is :mod:`tvm_gru.ops.sequence`; how they are
scheduled, :mod:`tvm_gru.schedules`."""

from __future__ import annotations

import tvm

from .. import schedules, targets
from ..ops import activations, config, sequence
from ..ops.sequence import SequenceSpec
from ..runtime import packing
from . import sequence_records
from .cache import cached_kernel, source_hash
from .tvm_workarounds import sequence_pass_config, vectorizable_isnan

__all__ = ["sequence_rule", "chosen_schedule", "scheduled_sequence", "compile_sequence", "compile_short_sequence",
           "frames_on_step_kernel", "compile_sequence_module"]


def _key(spec: SequenceSpec, target, schedule) -> dict:
    return {"spec": spec.key(), "target": str(target.export()),
            "src": source_hash(sequence, activations, packing, config, schedules), "schedule": repr(schedule),
            "records": sequence_records.fingerprint(target)}


def sequence_rule(target):
    """The sequence rule for ``target``; ValueError naming the target when no rule builds sequence kernels for it."""
    rule = schedules.sequence_rule(target)
    if rule is None:
        raise ValueError(f"no sequence schedule rule for target {target} (the whole-sequence kernel has CPU "
                         "schedules only: x86, aarch64)")
    return rule


def chosen_schedule(spec: SequenceSpec, target):
    """The knobs the kernel of ``spec`` on ``target`` is built with: a tuning record's where one applies
    (:func:`tvm_gru.build.sequence_records.tuned_schedule`: the exact workload and target, and it beat the hand
    rule in its run), else the sequence rule's."""
    return sequence_records.tuned_schedule(spec, target) or sequence_rule(target).default_schedule(spec, target)


def scheduled_sequence(spec: SequenceSpec, target, schedule=None):
    """The sequence kernel as an IRModule, built by the sequence rule for ``target`` with ``schedule`` (None: the
    knobs of :func:`chosen_schedule`)."""
    return sequence_rule(target).apply(spec, target, schedule or chosen_schedule(spec, target))


def compile_short_sequence(spec: SequenceSpec, target=None):
    """``(max_steps, kernel)`` for calls of at most ``max_steps`` steps (streaming), or None if the kernel
    of :func:`compile_sequence` is already the best choice for them."""
    target = targets.resolve(target)
    plan = sequence_rule(target).short_schedule(spec, target)
    if plan is None:
        return None
    return plan[0], compile_sequence(spec, target, plan[1])


def frames_on_step_kernel(spec: SequenceSpec, target=None) -> bool:
    """Whether single streamed frames of ``spec`` run faster on the step kernel (see the sequence rule's
    ``frames_on_step_kernel``)."""
    target = targets.resolve(target)
    return sequence_rule(target).frames_on_step_kernel(spec, target)


def compile_sequence(spec: SequenceSpec, target=None, schedule=None):
    """Return the compiled sequence kernel (cached in memory and on disk, :mod:`.cache`).

    Parameters
    ----------
    spec : SequenceSpec
    target : None, str, dict or tvm.target.Target
    schedule : optional
        Knobs for the rule (``tvm_gru.schedules`` ``SequenceSchedule``); None = :func:`chosen_schedule` (a
        tuning record's where one applies, else the rule's).
    """
    target = targets.resolve(target)
    if schedule is None:
        schedule = chosen_schedule(spec, target)
    return cached_kernel("seq", _key(spec, target, schedule),
                         lambda: compile_sequence_module(scheduled_sequence(spec, target, schedule), target))


def compile_sequence_module(mod, target):
    """``tvm.compile`` for sequence kernels: the vectorisable NaN test, no storage rewrite
    (:mod:`.tvm_workarounds`)."""
    with vectorizable_isnan(), tvm.transform.PassContext(config=sequence_pass_config()):
        return tvm.compile(mod, target=target)
