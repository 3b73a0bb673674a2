"""MetaSchedule tuning of a whole model's other functions (everything but tvm_gru's GRU kernels), and applying
the records at compile time.

>>> import tvm_gru, onnx                                                               # doctest: +SKIP
>>> mod = tvm_gru.relax.from_onnx(onnx.load("model.onnx"), shape_dict={"X": [100, 1, 40]})  # doctest: +SKIP
>>> for r in tvm_gru.relax.tune_model(mod, trials=64): print(r.summary())            # doctest: +SKIP

The tasks are the functions :func:`tvm_gru.relax.compile` would schedule with :mod:`tvm_gru.relax.schedule`'s
CPU rules: the module after library dispatch, legalization and ``FuseTIR``, less tvm_gru's own kernels (they carry
``tirx.is_scheduled``; MetaSchedule's task scheduler also aborts on them: ``EstimateTIRFlops`` has no rule for the
activations' ``Let``), and less functions with a symbolic dimension (a candidate is timed on concrete shapes:
bind them, e.g. ``shape_dict`` / ``Model.from_onnx(input_shapes=...)``, to tune them). Each task is searched
with MetaSchedule's generic CPU rules, timed here or on RPC servers, and re-measured against the hand schedule
(:func:`tvm_gru.relax.schedule.schedule_prim_func`) at the end, exactly as a step is
(:func:`tvm_gru.tuning.tune.tune_task`): the same files under ``tuning_logs/<target-id>/``, the same allow-list
checks on every record read, the same resumable runs.

At compile time :func:`apply_tuned` replaces a function by its record only when the workload (structural
equality of the exact function) and the target match, the baseline was measured against the current
``relax/schedule.py`` (:data:`HAND_SOURCE`), and the record beat that hand schedule by
:data:`tvm_gru.build.records.MARGIN` in the same run.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import tvm
from tvm import tirx

from .. import targets
from ..build import records as tuning_db
from ..ops.config import check_positive_int
from ..tuning import space as tune_space
from ..tuning.measure import Bench
from ..tuning.tune import Task, TextProgress, TuneResult, ctrl_c, locked, tune_task
from . import schedule as cpu_rules
from .schedule import legalized_module, schedule_prim_func

__all__ = ["model_tasks", "tune_model", "apply_tuned", "apply_tuned_pass", "HAND_SOURCE"]

log = logging.getLogger(__name__)

#: The hand schedules a model function's record is compared with: a baseline measured against another version
#: of ``relax/schedule.py`` is stale (its records are not applied).
HAND_SOURCE = "relax-schedule-" + hashlib.sha256(Path(cpu_rules.__file__).read_bytes()).hexdigest()[:16]


def _is_static(func: tirx.PrimFunc) -> bool:
    """Whether every buffer parameter has a static shape (TVM 0.27: the parameters are the buffers)."""
    return all(isinstance(d, tirx.IntImm) for buf in func.params for d in getattr(buf, "shape", ()))


def _workload(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` as it is tuned and filed: a legalized function is private (no ``global_symbol``), and a module
    built from it exports nothing to time; the same form is looked up at compile time."""
    return func.with_attr("global_symbol", "main")


def _unscheduled(func) -> bool:
    return isinstance(func, tirx.PrimFunc) and not (func.attrs is not None
                                                    and func.attrs.get("tirx.is_scheduled", False))


def model_tasks(mod: tvm.IRModule, target=None) -> list:
    """``[(name, PrimFunc)]``: the functions of ``mod`` (from :func:`tvm_gru.relax.from_onnx` or
    :func:`~tvm_gru.relax.from_exported_program`) that tuning can improve on ``target``: unscheduled after
    legalization and ``FuseTIR``, static shapes, one per distinct workload."""
    target = targets.resolve(target)
    out, seen = [], set()
    for gv, func in legalized_module(mod, target).functions.items():
        if not _unscheduled(func):
            continue
        if not _is_static(func):
            log.info("tvm_gru: %s has a symbolic dimension; not tuned (bind the shapes to tune it)", gv.name_hint)
            continue
        func = _workload(func)
        key = tuning_db.workload_key(tuning_db.module(func))
        if key not in seen:
            seen.add(key)
            out.append((gv.name_hint, func))
    return out


def _hand_module(func, target):
    """The hand schedule a record must beat: :mod:`tvm_gru.relax.schedule`'s rule, or the function as the
    pipeline leaves it when no rule applies."""
    try:
        scheduled = schedule_prim_func(func, lambda dtype: targets.lanes(target, dtype))
    except Exception as err:  # noqa: BLE001  (the pipeline keeps such a function unscheduled too)
        log.debug("tvm_gru: hand rule failed: %s", err)
        scheduled = None
    return tuning_db.module(scheduled if scheduled is not None else func)


def tune_model(mod: tvm.IRModule, target=None, *, trials: int = 32, log_dir=None, rpc_tracker=None, rpc_key=None,
               trials_per_batch: int = 8, cost_model: str = "xgb", seed=None, verify_rounds: int = 3,
               wait_quiet: float = 0.0, progress=True) -> list:
    """Tune every task of :func:`model_tasks` with MetaSchedule and record them under ``<log_dir>/<target-id>/``.

    Parameters
    ----------
    mod : tvm.IRModule
        A model from :func:`tvm_gru.relax.from_onnx` / :func:`~tvm_gru.relax.from_exported_program` for
        ``target``.
    target, trials, log_dir, rpc_tracker, rpc_key, trials_per_batch, cost_model, seed, verify_rounds, wait_quiet,
    progress
        As in :func:`tvm_gru.tune` (``trials`` per task; a re-run measures only the missing ones).

    Returns
    -------
    list of tvm_gru.tuning.tune.TuneResult
        One per task (``name`` is the function's name in the module, ``spec`` None).
    """
    if cost_model not in ("xgb", "random"):
        raise ValueError(f"`cost_model` must be 'xgb' or 'random', received {cost_model!r}")
    if (rpc_tracker is None) != (rpc_key is None):
        raise ValueError("`rpc_tracker` and `rpc_key` go together: pass both or neither")
    if not isinstance(mod, tvm.IRModule):
        raise TypeError(f"`mod` must be a tvm.IRModule (from tvm_gru.relax.from_onnx); received {type(mod).__name__}")
    trials = check_positive_int("trials", trials)
    per_batch = check_positive_int("trials_per_batch", trials_per_batch)
    verify_rounds = check_positive_int("verify_rounds", verify_rounds)
    target = targets.resolve(target)
    report = TextProgress() if progress is True else (progress or (lambda *a: None))
    d = Path(log_dir) / tuning_db.target_id(target) if log_dir else tuning_db.db_dir(target)
    results = []
    with locked(d), ctrl_c():
        for name, func in model_tasks(mod, target):
            t0 = time.perf_counter()
            task = Task.open(d, func, target, name=f"model function {name}", hand_mod=_hand_module(func, target),
                             hand_config="tvm_gru.relax.schedule", hand_source=HAND_SOURCE, args={})
            bench = Bench(target, rpc_tracker, rpc_key, wait_quiet_s=float(wait_quiet))
            run, hand_s, tuned_s, best = tune_task(task, bench, lambda: tune_space.space("rules", None, None, target),
                                                   trials, per_batch, cost_model, seed, verify_rounds, report)
            results.append(TuneResult(
                spec=None, target_id=tuning_db.target_id(target), log_dir=d, trials_run=run, records=task.count(),
                hand_seconds=hand_s, tuned_seconds=tuned_s, best_config=tune_space.config_of(best),
                applied=tuned_s is not None and tuned_s < hand_s * (1 - tuning_db.MARGIN),
                elapsed_s=time.perf_counter() - t0, name=name))
    return results


def apply_tuned(mod: tvm.IRModule, target) -> tvm.IRModule:
    """``mod`` (legalized, fused) with every unscheduled function that has an applicable record (see the module
    docstring) replaced by the tuned one, marked ``tirx.is_scheduled`` (the hand rules then skip it)."""
    d = tuning_db.db_dir(target)
    if not (d / tuning_db.RECORDS).exists():
        return mod
    baselines = tuning_db.baselines(d)
    updates = {}
    for gv, func in mod.functions.items():
        if not _unscheduled(func) or not _is_static(func):
            continue
        try:
            tuned = tuning_db.best_tuned_module(_workload(func), target, d, baselines, HAND_SOURCE)
        except ValueError as err:  # a refused record: compile with the hand rule
            log.warning("tvm_gru: tuning record for %s not applied: %s", gv.name_hint, err)
            continue
        if tuned is not None:
            # private again, as the pipeline made it (the symbol was only for timing it alone)
            updates[gv] = tuned["main"].without_attr("global_symbol").with_attr("tirx.is_scheduled", True)
            log.info("tvm_gru: %s uses its tuning record", gv.name_hint)
    if not updates:
        return mod
    funcs = {gv: updates.get(gv, func) for gv, func in mod.functions.items()}
    return tvm.IRModule(funcs, attrs=mod.attrs, global_infos=mod.global_infos)


def apply_tuned_pass(target):
    """:func:`apply_tuned` as a module pass."""
    @tvm.transform.module_pass(opt_level=0, name="tvm_gru_apply_tuned")
    def _pass(mod, _ctx):
        return apply_tuned(mod, target)

    return _pass
