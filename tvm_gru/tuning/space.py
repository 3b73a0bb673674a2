"""Design spaces for tuning the GRU step with MetaSchedule.

``"hand"``
    The hand rule of ``schedules/`` (the one :mod:`tvm_gru.build` uses for the target) over a grid of its knobs:
    unit blocks per register tile, batch tile and threads, each with a sampled auto-unroll depth that
    MetaSchedule's ``MutateUnroll`` can change. Each candidate carries its knobs as a root-block annotation, so
    a record says what it is (:func:`config_of`).
``"rules"``
    MetaSchedule's generic CPU rules with ``MultiLevelTiling(reuse_write=None)``: the default rules' write cache
    aborts the run on the step's two-product epilogue (``reverse-compute-at``).
``"union"``
    Both.

"hand" is the default: the generic "rules" space found kernels well behind the hand schedule at the same trial
count, and many of its candidates fail to compile (the vectorizer rejects the activations' ``Let`` once it is
inlined twice); the figures are in the commit history and ``benchmarks/``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging

from .. import schedules
from ..build.records import CONFIG_ANNOTATION, UNROLL_STEPS, config_of
from ..runtime import packing
from ..schedules.base import CPUStepConfig, one_region_error

__all__ = ["SPACES", "hand_rule", "hand_configs", "describe", "space", "config_of"]

log = logging.getLogger(__name__)

SPACES = ("hand", "rules", "union")
MAX_TILE = 16  # accumulator vectors per register tile beyond which a hand config only spills (16 ymm registers)


def hand_rule(func, spec, target):
    """The hand rule that schedules ``spec`` on ``target`` and its default schedule."""
    for rule in schedules.step_rules(target):
        sch = rule.apply(func, spec, target, None)
        if sch is not None:
            return rule, sch
    raise ValueError(f"no hand schedule rule for target {target.export()}")


def hand_configs(rule, spec, target) -> list:
    """The default config of ``rule`` first (less its prefetching, which a record's trace cannot replay), then a
    grid over the knobs it has (tiles, threading, phase layout).

    Knobs that cannot change the kernel of ``spec`` (the candidate phase's with reset_after, batch-inner products
    at batch 1) are left at their defaults, so no two configs give the same schedule.
    """
    base = rule.default_config(spec, target) if hasattr(rule, "default_config") else None
    if base is None or not dataclasses.is_dataclass(base):
        return [base]
    names = {f.name for f in dataclasses.fields(base)}
    if "prefetch_next" in names:  # spliced in outside the schedule's trace: a tuning record could not replay it
        base = dataclasses.replace(base, prefetch_next=False)
    cores = int(target.attrs["num-cores"]) if "num-cores" in target.attrs else 1
    two_phases = not spec.config.reset_after  # the candidate phase's knobs mean nothing otherwise
    axes = {"unit_blocks": [d for d in (1, 2, 4, 8) if spec.blocks % d == 0],
            "batch_tile": [d for d in (1, 2, 4, 8) if spec.batch % d == 0],
            "parallel": [False, True] if cores > 1 else [False],
            "candidate_blocks": [d for d in (2, 4, 8, 12) if spec.blocks % d == 0] if two_phases else [],
            "one_region": [True, False] if two_phases and cores > 1 else [],
            "batch_inner": [False, True] if spec.batch > 1 else []}
    axes = {k: v for k, v in axes.items() if v}
    axes = {k: v for k, v in axes.items() if k in names}
    gates = 3 if packing.layout(spec.config, spec.lanes)["kernel_packed"][2] else 1  # gate-interleaved tile
    out = [base]
    for combo in itertools.product(*axes.values()):
        cfg = dataclasses.replace(base, **dict(zip(axes, combo)))
        rows = getattr(cfg, "batch_tile", 1)
        fits = getattr(cfg, "unit_blocks", 1) * rows * gates <= MAX_TILE \
            and getattr(cfg, "candidate_blocks", 1) * rows <= MAX_TILE
        if fits and cfg not in out and _allowed(spec, cfg):
            out.append(cfg)
    return out


def _allowed(spec, cfg) -> bool:
    """Whether the CPU rule takes ``cfg`` (it refuses one parallel region with a phase of a single tile)."""
    return not isinstance(cfg, CPUStepConfig) or one_region_error(spec.blocks, spec.config.reset_after, cfg) is None


def describe(cfg) -> str:
    """``"unit_blocks=4, batch_tile=1, parallel=False"``: a hand config as text."""
    if cfg is None or not dataclasses.is_dataclass(cfg):
        return "default"
    return ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(cfg).items())


def _hand_space(func, spec, target):
    """One traced hand schedule per config of :func:`hand_configs`, each with a sampled unroll depth."""
    from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415

    rule, _ = hand_rule(func, spec, target)

    def schedules(_sch):
        out = []
        for cfg in hand_configs(rule, spec, target):
            try:
                sch = rule.apply(func, spec, target, cfg)
            except (RuntimeError, ValueError) as err:  # a knob combination the rule refuses
                log.debug("tvm_gru: hand config %s skipped: %s", cfg, err)
                continue
            if sch is None:
                continue
            root = sch.get_sblock("root")
            sch.annotate(root, CONFIG_ANNOTATION, describe(cfg))
            step = sch.sample_categorical(list(UNROLL_STEPS), [1 / len(UNROLL_STEPS)] * len(UNROLL_STEPS))
            sch.annotate(root, "meta_schedule.unroll_explicit", step)
            out.append(sch)
        return out

    return ms.space_generator.ScheduleFn(schedules, sch_rules=[], postprocs="from-target",
                                         mutator_probs={ms.mutator.MutateUnroll(): 1.0})


def _rules_space():
    """MetaSchedule's default CPU rules, less the write cache that aborts on the step's epilogue."""
    from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415

    rule = ms.schedule_rule
    rules = [
        rule.AutoInline(into_producer=False, into_consumer=True, inline_const_tensor=True, disallow_if_then_else=True,
                        require_injective=True, require_ordered=True, disallow_op=["tirx.exp"]),
        rule.MultiLevelTiling("SSRSRS", max_innermost_factor=64, reuse_write=None),
        rule.ParallelizeVectorizeUnroll(max_jobs_per_core=16, max_vectorize_extent=64,
                                        unroll_max_steps=list(UNROLL_STEPS)),
        rule.RandomComputeLocation(),
    ]
    return ms.space_generator.PostOrderApply(sch_rules=rules, postprocs="from-target", mutator_probs="from-target")


def space(name, func, spec, target):
    """The MetaSchedule space generator ``name`` (one of :data:`SPACES`) for the step ``func``."""
    from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415

    if name == "hand":
        return _hand_space(func, spec, target)
    if name == "rules":
        return _rules_space()
    return ms.space_generator.SpaceGeneratorUnion([_hand_space(func, spec, target), _rules_space()],
                                                  sch_rules=[], postprocs="from-target", mutator_probs="from-target")
