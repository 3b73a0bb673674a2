"""Hand-written schedules for the GRU kernels, one module per target family, and the registry that picks them.

Installed as ``tvm_gru.schedules`` (see pyproject.toml). Two kinds of rule:

* :class:`StepRule` schedules the one-step PrimFunc of :func:`tvm_gru.ops.compute.step_primfunc`
  (:mod:`.x86`, :mod:`.arm` on the shared CPU rule of :mod:`.base`; :mod:`.cuda`).
* :class:`SequenceRule` writes the whole-sequence kernel of :mod:`tvm_gru.ops.sequence` (:mod:`.sequence_rules`,
  which has :mod:`.sequence_emitter` emit the TIR).

:func:`step_rules` and :func:`sequence_rule` say which rules serve a target. Importing this package imports
neither TVM nor the rule modules; the functions import them when called. (The sequence rule's module is
``sequence_rules``, not ``sequence_rule``: importing a submodule binds its name in this package, which would
replace the function.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from tvm import IRModule
    from tvm.s_tir import Schedule
    from tvm.target import Target
    from tvm.tirx import PrimFunc

__all__ = ["StepRule", "SequenceRule", "step_rules", "sequence_rule"]


@runtime_checkable
class StepRule(Protocol):
    """A hand schedule of the GRU step (``spec`` is a :class:`tvm_gru.ops.config.StepSpec`).

    The config types are the rule's own frozen dataclasses (:class:`.base.CPUStepConfig`,
    :class:`.cuda.CUDAStepConfig`); tuning reads their fields as the knob grid.
    """

    def is_target(self, target: Target) -> bool:
        """Whether this rule schedules kernels for ``target`` (:func:`step_rules` keeps only these)."""
        ...

    def default_config(self, spec: Any, target: Target) -> Any:
        """The knobs the rule picks for ``spec`` on ``target`` (what ``apply`` uses for ``config=None``)."""
        ...

    def apply(self, func: PrimFunc, spec: Any, target: Target, config: Any = None) -> Schedule | None:
        """Schedule ``func`` (the step PrimFunc of ``spec``) for ``target``; ``config=None`` = the defaults.

        Returns the ``s_tir.Schedule``, or None when the rule does not handle ``spec`` on a target it
        is for: only the CUDA rule does that (a packing other than V = 1); the CPU rules always schedule.
        Raises ValueError for a config it refuses (the CPU rules: one parallel region with a phase of a single
        unit tile, see :func:`.base.check_one_region`). Knobs outside their documented ranges (tiles that do
        not divide the shapes) are not checked here: TVM's scheduling may raise its own error.
        """
        ...


@runtime_checkable
class SequenceRule(Protocol):
    """A schedule of the whole-sequence kernel (``spec`` is a :class:`tvm_gru.ops.sequence.SequenceSpec`; the
    schedule type is the rule's knobs dataclass, :class:`.sequence_rules.SequenceSchedule` for the CPU rule)."""

    def is_target(self, target: Target) -> bool:
        """Whether this rule builds sequence kernels for ``target``."""
        ...

    def default_schedule(self, spec: Any, target: Target) -> Any:
        """The knobs the rule picks for ``spec`` on ``target`` (what ``apply`` uses for ``schedule=None``)."""
        ...

    def short_schedule(self, spec: Any, target: Target) -> tuple[int, Any] | None:
        """``(max_steps, schedule)`` for calls of at most ``max_steps`` steps (streaming), or None when the
        default schedule is already the best for them."""
        ...

    def frames_on_step_kernel(self, spec: Any, target: Target) -> bool:
        """Whether a stateful layer's single frames (T = 1) should run the cell's step kernel instead."""
        ...

    def apply(self, spec: Any, target: Target, schedule: Any = None) -> IRModule:
        """The kernel as an IRModule ``{"main": kernel}``; ``schedule=None`` = :meth:`default_schedule`.

        Never None (a rule is picked by :meth:`is_target` alone). Raises ValueError for knobs it cannot honour.
        """
        ...


def step_rules(target: Target) -> list:
    """The step rules (:class:`StepRule`) for ``target``, in the order to try them.

    A CUDA target gets the CUDA rules; any other the x86 and ARM rules whose ``is_target`` accepts it (empty
    when none does). Callers take the first rule whose ``apply`` returns a schedule.
    """
    from . import arm, x86  # noqa: PLC0415

    rules = [*x86.RULES, *arm.RULES]
    if target.kind.name == "cuda":
        from . import cuda  # noqa: PLC0415

        rules = list(cuda.RULES)
    return [r for r in rules if r.is_target(target)]


def sequence_rule(target: Target) -> SequenceRule | None:
    """The sequence rule (:class:`SequenceRule`) for ``target``, or None when no rule builds sequence
    kernels for it (today: any target but LLVM CPUs)."""
    from .sequence_rules import RULES  # noqa: PLC0415

    return next((r for r in RULES if r.is_target(target)), None)
