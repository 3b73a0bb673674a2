"""MetaSchedule auto-tuning of the GRU step, locally or on machines behind TVM's RPC tracker.

>>> import tvm_gru
>>> result = tvm_gru.tune(units=256, input_dim=256, batch=1, trials=32)   # doctest: +SKIP
>>> print(result.summary())                                              # doctest: +SKIP

The design space is the hand schedule's, over a grid of its knobs (:mod:`tvm_gru.tuning.space`); candidates are
compiled here and timed locally or on RPC servers (:mod:`tvm_gru.tuning.measure`); records go to TVM's JSON
database under ``tuning_logs/<target-id>/`` and are applied at compile time only when they beat the hand schedule
(:mod:`tvm_gru.build.records`).

The search loop is driven here (``TuneContext`` + builder + runner + database) rather than by ``ms.tune_tir``
because (measured here, TVM 0.27):

* the task scheduler first estimates FLOPs, and ``EstimateTIRFlops`` aborts on ``Let`` (the activations bind one);
* ``TuneContext`` and the default builder import ``tvm.s_tir.tensor_intrin`` (every tensor intrinsic of every
  target): 50-100 s on this loaded 2-core VM, again in every builder batch (the builder restarts its process
  pool per batch), which overran the builder's 30 s timeout. Nothing here needs those intrinsics.

Every candidate is committed to the database as soon as its batch is measured, so an interrupted run (Ctrl-C,
kill) keeps every finished batch, and a re-run measures only the trials still missing (``trials`` is a total per
workload and target). At the end the best records and the hand schedule are re-measured, interleaved, by the same
runner (the fastest three records, the fastest of them kept), and both times are appended to ``hand_baseline.json``.
One tuning process per target folder at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..build import records as tuning_db
from ..ops.config import GRUConfig, StepSpec, check_positive_int
from . import space as tune_space
from .space import SPACES

__all__ = ["tune", "refresh", "TuneResult", "SPACES", "Task", "step_task", "tune_task", "locked", "ctrl_c",
           "TextProgress"]

log = logging.getLogger(__name__)

# Re-measured beside the hand schedule at the end: the fastest record by its single search-time measurement is
# often just the luckiest one (seen here: 4.5 us in the search, 6.2 us re-measured, hand 5.4 us).
VERIFY_TOP = 3


@dataclass(frozen=True)
class TuneResult:
    """What one :func:`tune` call found. Times are the best of repeats, in seconds, measured at the end."""

    spec: StepSpec | None  # None: a model function (``name``)
    target_id: str
    log_dir: Path
    trials_run: int
    records: int
    hand_seconds: float
    tuned_seconds: float | None
    best_config: str | None
    applied: bool
    elapsed_s: float
    name: str = ""  # what was tuned, when it is not a step (a whole model's function)

    @property
    def speedup(self) -> float | None:
        return self.hand_seconds / self.tuned_seconds if self.tuned_seconds else None

    def summary(self) -> str:
        lines = [f"{self.name or self.spec.key()} on {self.target_id}: {self.trials_run} trials this run, "
                 f"{self.records} records in all, {self.elapsed_s:.0f} s",
                 f"  hand schedule : {self.hand_seconds * 1e6:10.2f} us"]
        if self.tuned_seconds is None:
            lines.append("  best tuned    :        n/a (no candidate compiled and ran)")
        else:
            lines.append(f"  best tuned    : {self.tuned_seconds * 1e6:10.2f} us  ({self.speedup:.2f}x the hand "
                         f"schedule; {self.best_config})")
        lines.append("  -> the tuned record is applied at compile time" if self.applied else
                     f"  -> not applied: it does not beat the hand schedule by {tuning_db.MARGIN:.0%}")
        lines.append(f"  log: {self.log_dir}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------


def tune(units, input_dim, batch, *, activation="tanh", recurrent_activation="hard_sigmoid", reset_after=False,
         implementation=1, use_bias=True, dtype="float32", target=None, trials=32, log_dir=None, rpc_tracker=None,
         rpc_key=None, space="hand", trials_per_batch=8, cost_model="xgb", seed=None, verify_rounds=3,
         wait_quiet=0.0, progress=True) -> TuneResult:
    """Tune one GRU step workload with MetaSchedule and record it under ``<log_dir>/<target-id>/``.

    Parameters
    ----------
    units, input_dim, batch : int
        H, I and B of the step (an inference kernel: no dropout masks).
    activation, recurrent_activation, reset_after, implementation, use_bias, dtype
        As in :class:`tvm_gru.GRUConfig`.
    target : None, str, dict or tvm.target.Target
        As in :func:`tvm_gru.targets.resolve`; None is this machine.
    trials : int
        Measured candidates wanted in the database for this workload and target, counting earlier runs: a re-run
        after an interruption measures only the missing ones (and, with none missing, only re-measures).
    log_dir : path, optional
        Root of the tuning logs (default: ``$TVM_GRU_TUNING_LOGS``, else the package's ``tuning_logs/``). Compile
        time reads the default: set ``TVM_GRU_TUNING_LOGS`` to use records written elsewhere.
    rpc_tracker, rpc_key : str, optional
        ``"HOST:PORT"`` of a TVM RPC tracker and the key its servers registered with: candidates are then timed
        on those servers, one session per server at a time; they are always compiled here.
    space : {"hand", "rules", "union"}
        The design space (:mod:`tvm_gru.tuning.space`).
    trials_per_batch : int
        Candidates per search iteration; a batch is committed as soon as it has been measured.
    cost_model : {"xgb", "random"}
    seed : int, optional
        Seed of the search; None picks one at random.
    verify_rounds : int
        Interleaved re-measurements of the best record and the hand schedule at the end.
    wait_quiet : float
        Before each local timing, wait up to this many seconds for the CPUs to be mostly idle (for shared
        machines: parallel kernels timed beside another busy process are not timed fairly). 0: never wait.
    progress : bool or callable
        True prints a text progress bar on stderr; a callable gets ``(done, total, best_s, hand_s)``.

    Returns
    -------
    TuneResult
    """
    from .. import targets  # noqa: PLC0415
    from .measure import Bench  # noqa: PLC0415

    if space not in SPACES:
        raise ValueError(f"`space` must be one of {SPACES}, received {space!r}")
    if cost_model not in ("xgb", "random"):
        raise ValueError(f"`cost_model` must be 'xgb' or 'random', received {cost_model!r}")
    if (rpc_tracker is None) != (rpc_key is None):
        raise ValueError("`rpc_tracker` and `rpc_key` go together: pass both or neither")
    trials = check_positive_int("trials", trials)
    per_batch = check_positive_int("trials_per_batch", trials_per_batch)
    verify_rounds = check_positive_int("verify_rounds", verify_rounds)
    target = targets.resolve(target)
    cfg = GRUConfig(units, activation=activation, recurrent_activation=recurrent_activation, use_bias=use_bias,
                    reset_after=reset_after, implementation=implementation, dtype=dtype)
    spec = StepSpec(cfg, batch=check_positive_int("batch", batch), input_dim=check_positive_int("input_dim", input_dim),
                    lanes=targets.lanes(target, cfg.dtype))
    report = TextProgress() if progress is True else (progress or (lambda *a: None))
    d = Path(log_dir) / tuning_db.target_id(target) if log_dir else tuning_db.db_dir(target)
    t0 = time.perf_counter()
    with locked(d), ctrl_c():
        task, func = step_task(d, spec, target)
        bench = Bench(target, rpc_tracker, rpc_key, wait_quiet_s=float(wait_quiet))
        run, hand_s, tuned_s, best = tune_task(task, bench, lambda: tune_space.space(space, func, spec, target),
                                               trials, per_batch, cost_model, seed, verify_rounds, report)
    return TuneResult(spec=spec, target_id=tuning_db.target_id(target), log_dir=d, trials_run=run,
                      records=task.count(), hand_seconds=hand_s, tuned_seconds=tuned_s,
                      best_config=tune_space.config_of(best),
                      applied=tuned_s is not None and tuned_s < hand_s * (1 - tuning_db.MARGIN),
                      elapsed_s=time.perf_counter() - t0)


@dataclass(frozen=True)
class Task:
    """One workload being tuned: its folder and database, the MetaSchedule workload, the module it is filed as,
    the arguments, and the hand schedule it must beat (module, description, source fingerprint).

    ``name`` labels it in the baseline and the search logs; ``args`` are stored with each baseline (for
    :func:`refresh`: the step's :func:`tune` arguments)."""

    d: Path
    db: object
    workload: object
    mod: object
    target: object
    args_info: list
    name: str
    hand_mod: object
    hand_config: str
    hand_source: str
    args: dict

    @classmethod
    def open(cls, d: Path, func, target, *, name: str, hand_mod, hand_config: str, hand_source: str,
             args: dict) -> "Task":
        """Repair ``d``'s files, open its database and file ``func`` (a PrimFunc) as a workload."""
        from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415

        tuning_db.repair(d)
        mod = tuning_db.module(func)
        db = ms.database.JSONDatabase(work_dir=str(d), module_equality="structural")
        return cls(d, db, db.commit_workload(mod), mod, target, ms.arg_info.ArgInfo.from_prim_func(func), name,
                   hand_mod, hand_config, hand_source, args)

    def records(self, failed=False):
        return tuning_db.records_for(self.d, self.mod, self.target, failed=failed)

    def count(self) -> int:
        """Trials recorded so far for this workload and target (failed candidates count too)."""
        return len(self.records(failed=True)[1])


def step_task(d: Path, spec, target) -> tuple:
    """``(Task, step PrimFunc)`` for the GRU step ``spec`` on ``target``."""
    from ..ops import compute  # noqa: PLC0415

    func = compute.step_primfunc(spec)
    rule, hand = tune_space.hand_rule(func, spec, target)
    default = rule.default_config(spec, target) if hasattr(rule, "default_config") else None
    task = Task.open(d, func, target, name=spec.key(), hand_mod=hand.mod, hand_config=tune_space.describe(default),
                     hand_source=tuning_db.hand_fingerprint(target), args=_tune_args(spec))
    return task, func


def tune_task(task: Task, bench, design, trials, per_batch, cost_model, seed, verify_rounds, report) -> tuple:
    """Search for the missing trials (``design()``: the space generator, made only when trials are missing),
    re-measure the best records against the hand schedule, append the baseline; ``(trials run, hand seconds,
    tuned seconds or None, best record or None)``."""
    try:
        before = task.count()
        run = 0
        if before < trials:
            run = _tune_missing(task, bench, design(), before, trials, per_batch, cost_model, seed, report)
        found = task.records()[1]
        top = _distinct_fastest(found, VERIFY_TOP)
        mods = [task.hand_mod] + [tuning_db.apply_record(r, task.mod).mod for r in top]
        times = [min(t, default=None) for t in bench.measure(mods, task.args_info, rounds=verify_rounds)]
    finally:
        bench.close()
    hand_s = times[0]
    if hand_s is None:
        raise RuntimeError(f"the hand schedule of {task.name} failed to build or run ({bench.where})")
    verified = [(t, r) for t, r in zip(times[1:], top) if t is not None]
    tuned_s, best = min(verified, key=lambda pair: pair[0]) if verified else (None, None)
    tuning_db.append_baseline(task.d, {
        "workload": tuning_db.workload_key(task.mod), "seconds": hand_s, "tuned_seconds": tuned_s,
        "record": tuning_db.digest(best) if best is not None else None, "spec": task.name,
        "target": tuning_db.target_key(task.target), "hand_source": task.hand_source,
        "hand_config": task.hand_config, "best_config": tune_space.config_of(best),
        "records": len(found), "runner": bench.where, "load": round(os.getloadavg()[0], 2), "time": tuning_db.now(),
        "args": task.args})
    return run, hand_s, tuned_s, best


def _distinct_fastest(records, k: int) -> list:
    """The ``k`` fastest records by their search-time measurement, one per schedule."""
    out, seen = [], set()
    for record in sorted(records, key=tuning_db.record_seconds):
        if tuning_db.digest(record) not in seen:
            seen.add(tuning_db.digest(record))
            out.append(record)
        if len(out) == k:
            break
    return out


def _tune_args(spec) -> dict:
    """The :func:`tune` arguments that give ``spec`` (stored with each baseline, for :func:`refresh`)."""
    c = spec.config
    return {"units": c.units, "input_dim": spec.input_dim, "batch": spec.batch, "activation": c.activation,
            "recurrent_activation": c.recurrent_activation, "reset_after": c.reset_after,
            "implementation": c.implementation, "use_bias": c.use_bias, "dtype": c.dtype}


def refresh(target=None, log_dir=None, **kwargs) -> list:
    """Re-measure every workload tuned for ``target`` under ``log_dir`` against the current hand schedules.

    A baseline measured with other hand schedules is stale and its records are not applied
    (:func:`tvm_gru.build.records.best_tuned_module`); this measures each tuned workload again (no new trials) and
    appends fresh baselines. ``kwargs`` go to :func:`tune` (e.g. ``wait_quiet``, ``rpc_tracker``, ``rpc_key``).
    """
    from .. import targets  # noqa: PLC0415

    target = targets.resolve(target)
    d = Path(log_dir) / tuning_db.target_id(target) if log_dir else tuning_db.db_dir(target)
    tkey = tuning_db.target_key(target)
    todo = {}
    for lines in tuning_db.baselines(d).values():
        for line in lines:
            if line.get("target") == tkey and isinstance(line.get("args"), dict):
                todo[json.dumps(line["args"], sort_keys=True)] = line["args"]
    return [tune(**args, target=target, log_dir=log_dir, trials=1, **kwargs) for args in todo.values()]


def _tune_missing(task, bench, design, before, trials, per_batch, cost_model, seed, report) -> int:
    """Search for the ``trials - before`` missing candidates, reporting progress; return how many were measured."""
    from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415

    from ..targets import host_cores  # noqa: PLC0415
    from .measure import without_tensor_intrinsics  # noqa: PLC0415

    hand_s = min(bench.measure([task.hand_mod], task.args_info)[0], default=None)  # for the progress line only

    def best_so_far():
        return min(map(tuning_db.record_seconds, task.records()[1]), default=None)

    with without_tensor_intrinsics(task.target):
        ctx = ms.TuneContext(task.mod, target=task.target, space_generator=design,
                             search_strategy=ms.search_strategy.EvolutionarySearch(
                                 population_size=128, init_min_unmeasured=16, genetic_num_iters=2),
                             task_name=task.name, rand_state=-1 if seed is None else int(seed),
                             num_threads=host_cores(), logger=logging.getLogger(f"{__name__}.search"))
    cost = ms.cost_model.CostModel.create(cost_model, **({"num_tuning_cores": host_cores()}
                                                         if cost_model == "xgb" else {}))
    report(before, trials, best_so_far(), hand_s)
    return _search(ctx, task, bench, cost, trials - before, per_batch,
                   lambda done: report(before + done, trials, best_so_far(), hand_s))


def _refused_candidates(candidates) -> set:
    """Indices of the candidates whose trace the allow-list refuses (:func:`tvm_gru.build.records.trace_refusal`).

    Candidates are generated from tvm_gru's spaces and from records already in the database (checked when read);
    this keeps the allow-list and the spaces honest: a refused candidate is neither built nor appended.
    """
    refused = set()
    for i, c in enumerate(candidates):
        reason = tuning_db.trace_refusal(tuning_db.trace_json(c.sch.trace))
        if reason is not None:
            log.warning("tvm_gru: a search candidate is outside the tuning-record allow-list, skipped: %s", reason)
            refused.add(i)
    return refused


def _search(ctx, task, bench, cost_model, trials, per_batch, report) -> int:
    """Measure up to ``trials`` candidates, committing each batch; return how many were measured."""
    from tvm.s_tir.meta_schedule.database import TuningRecord  # noqa: PLC0415

    from .measure import remove, run_seconds  # noqa: PLC0415

    ctx.pre_tuning(max_trials=trials, num_trials_per_iter=per_batch, design_spaces=ctx.generate_design_space(),
                   database=task.db, cost_model=cost_model)
    done = 0
    try:
        while done < trials:
            t0 = time.perf_counter()
            candidates = ctx.generate_measure_candidates()
            if not candidates:  # the space is exhausted
                break
            t1 = time.perf_counter()
            refused = _refused_candidates(candidates)
            built = iter(bench.build([c.sch.mod for i, c in enumerate(candidates) if i not in refused]))
            artifacts = [None if i in refused else next(built) for i in range(len(candidates))]
            t2 = time.perf_counter()
            try:
                results = bench.run(artifacts, [c.args_info for c in candidates])
            finally:
                remove(artifacts)
            log.debug("tvm_gru: batch of %d: search %.1f s, build %.1f s, run %.1f s", len(candidates), t1 - t0,
                      t2 - t1, time.perf_counter() - t2)
            for i, (c, r) in enumerate(zip(candidates, results)):
                if i in refused:
                    continue
                secs = run_seconds(r) or [1e10]  # failures are recorded too, as MetaSchedule does: 1e10 s
                task.db.commit_tuning_record(TuningRecord(c.sch.trace, task.workload, secs, task.target, c.args_info))
            cost_model.update(ctx, candidates, results)
            ctx.notify_runner_results(candidates, results)
            done += len(candidates)
            report(done)
    finally:
        ctx.post_tuning()
    return done


# ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def locked(d: Path, name: str = tuning_db.WORKLOADS):
    """Hold an exclusive lock on the target folder's file ``name``: two runs appending to one database would
    corrupt it."""
    d.mkdir(parents=True, exist_ok=True)
    with open(d / name, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another tuning run is writing to {d}; wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def ctrl_c():
    """Turn whatever a Ctrl-C became back into KeyboardInterrupt.

    A KeyboardInterrupt raised while TVM runs a Python callback (the cost model, the design space) comes out of
    the FFI call as another error (seen: RuntimeError); the handler remembers that the user asked to stop.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hit = []

    def handler(signum, frame):
        hit.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    except Exception as err:
        if hit:
            raise KeyboardInterrupt from err
        raise
    finally:
        signal.signal(signal.SIGINT, previous)


class TextProgress:
    """``[#####-----] 12/32 trials  best 6.65 us  hand 7.10 us  48 s`` on stderr (one line per batch off a tty)."""

    def __init__(self, stream=None, width: int = 24):
        self.stream, self.width, self.t0 = stream or sys.stderr, width, time.perf_counter()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __call__(self, done, total, best, hand):
        filled = int(self.width * done / max(total, 1))
        text = (f"[{'#' * filled}{'-' * (self.width - filled)}] {done}/{total} trials  best {_us(best)}  "
                f"hand {_us(hand)}  {time.perf_counter() - self.t0:.0f} s")
        self.stream.write(("\r" + text) if self.tty else text + "\n")
        if self.tty and done >= total:
            self.stream.write("\n")
        self.stream.flush()


def _us(seconds) -> str:
    return f"{seconds * 1e6:.2f} us" if seconds and seconds < tuning_db.FAILED else "n/a"
