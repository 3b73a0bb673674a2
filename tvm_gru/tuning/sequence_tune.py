"""A measured search over the knobs of the whole-sequence kernel (what ``GRU``, ``Bidirectional`` and models run).

>>> import tvm_gru
>>> result = tvm_gru.tune_sequence(units=256, input_dim=256, batch=1)   # doctest: +SKIP
>>> print(result.summary())                                           # doctest: +SKIP

The hand rule (:class:`tvm_gru.schedules.sequence_rules.CPUSequenceRule`) picks the knobs of
:class:`~tvm_gru.schedules.sequence_rules.SequenceSchedule` from thresholds measured on one machine; this
measures them on the machine the kernel runs on. The space (:func:`sequence_space`) is every valid combination of
the knobs; it is searched exhaustively when it holds no more than ``trials`` candidates, else by coordinate
descent from the hand rule's knobs and from each other thread count (each knob in turn over all its values, the
others at the best so far, until a whole pass changes nothing), the rest of the trials sampling the space at
random (a fixed order). Each candidate is compiled here, checked against the numpy
reference and timed here or on an RPC server (:mod:`.sequence_measure`); every measured candidate is appended
to ``sequence_trials.json`` at once, so an interrupted run resumes where it stopped (the search replays the
recorded times). At the end the fastest candidates and the hand rule are re-measured, interleaved, by the same
runner, and the result goes to ``sequence_records.json`` (:mod:`tvm_gru.build.sequence_records`), which applies
it only where it beat the hand rule by ``MARGIN``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from ..build import records as tuning_db
from ..build import sequence_records as seq_db
from ..ops.config import GRUConfig, check_positive_int
from ..schedules.sequence_rules import SequenceSchedule
from .tune import TextProgress, ctrl_c, locked

__all__ = ["tune_sequence", "SequenceTuneResult", "sequence_space", "DEFAULT_TRIALS"]

log = logging.getLogger(__name__)

DEFAULT_TRIALS = 64  # ~10 minutes of compiling and timing per shape on the 2-core VM
VERIFY_TOP = 3


@dataclass(frozen=True)
class SequenceTuneResult:
    """What one :func:`tune_sequence` call found; times are seconds per call of ``steps`` steps."""

    spec: object
    target_id: str
    log_dir: Path
    steps: int
    trials_run: int
    trials: int
    hand_schedule: object
    hand_seconds: float
    schedule: object | None
    tuned_seconds: float | None
    paired_ratio: float | None
    applied: bool
    elapsed_s: float

    @property
    def speedup(self) -> float | None:
        return self.hand_seconds / self.tuned_seconds if self.tuned_seconds else None

    def summary(self) -> str:
        lines = [f"{self.spec.key()} ({self.steps} steps) on {self.target_id}: {self.trials_run} candidates this "
                 f"run, {self.trials} in all, {self.elapsed_s:.0f} s",
                 f"  hand rule : {self.hand_seconds * 1e6:10.1f} us  ({_knobs(self.hand_schedule)})"]
        if self.tuned_seconds is None:
            lines.append("  best tuned:        n/a (no candidate built, matched the reference and ran)")
        else:
            lines.append(f"  best tuned: {self.tuned_seconds * 1e6:10.1f} us  ({self.speedup:.2f}x the hand rule by "
                         f"the fastest rounds, {1 / self.paired_ratio:.2f}x by the median of paired rounds; "
                         f"{_knobs(self.schedule)})")
        lines.append("  -> applied by layers, models and exports of this workload and target" if self.applied else
                     f"  -> not applied: it does not beat the hand rule by {tuning_db.MARGIN:.0%} both ways")
        lines.append(f"  log: {self.log_dir / seq_db.RECORDS}")
        return "\n".join(lines)


def _knobs(schedule) -> str:
    return ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(schedule).items()) if schedule else "n/a"


def tune_sequence(units, input_dim, batch, *, activation="tanh", recurrent_activation="hard_sigmoid",
                  reset_after=False, use_bias=True, dtype="float32", weight_dtype=None, return_sequences=False,
                  time_major=False,
                  steps=100, target=None, trials=None, log_dir=None, rpc_tracker=None, rpc_key=None,
                  verify_rounds=9, wait_quiet=0.0, progress=True) -> SequenceTuneResult:
    """Tune the whole-sequence kernel of one workload and record it under ``<log_dir>/<target-id>/``.

    Parameters
    ----------
    units, input_dim, batch : int
        H, I and B of the layer.
    activation, recurrent_activation, reset_after, use_bias, dtype
        As in :class:`tvm_gru.GRUConfig`.
    weight_dtype : None, "float32", "float16" or "int8"
        Storage of the weight matrices, as in :class:`tvm_gru.GRU` (a workload of its own: its records apply to
        layers with that storage only).
    return_sequences, time_major : bool
        As in :class:`tvm_gru.GRU` (the kernel differs with them, and so does the record's workload).
    steps : int
        T of the timed calls.
    target : None, str, dict or tvm.target.Target
        As in :func:`tvm_gru.targets.resolve`; None is this machine.
    trials : int, optional
        Candidates measured in all for this workload, target and hand kernel, counting earlier (interrupted)
        runs; None: :data:`DEFAULT_TRIALS`. The whole space is measured when it is no larger.
    log_dir : path, optional
        Root of the tuning logs (default: ``$TVM_GRU_TUNING_LOGS``, else the package's ``tuning_logs/``).
    rpc_tracker, rpc_key : str, optional
        ``"HOST:PORT"`` of a TVM RPC tracker and the key of its servers: candidates are timed there.
    verify_rounds : int
        Interleaved re-measurements of the best candidates and the hand rule at the end (the fastest counts).
    wait_quiet : float
        Before each local timing, wait up to this many seconds for the CPUs to be mostly idle.
    progress : bool or callable
        True prints a progress bar on stderr; a callable gets ``(done, total, best_s, hand_s)``.

    Returns
    -------
    SequenceTuneResult
    """
    from .. import targets  # noqa: PLC0415
    from ..build.sequence import sequence_rule  # noqa: PLC0415
    from ..ops.sequence import SequenceSpec  # noqa: PLC0415
    from .sequence_measure import SequenceBench  # noqa: PLC0415

    if (rpc_tracker is None) != (rpc_key is None):
        raise ValueError("`rpc_tracker` and `rpc_key` go together: pass both or neither")
    trials = DEFAULT_TRIALS if trials is None else check_positive_int("trials", trials)
    steps = check_positive_int("steps", steps)
    verify_rounds = check_positive_int("verify_rounds", verify_rounds)
    target = targets.resolve(target)
    cfg = GRUConfig(units, activation=activation, recurrent_activation=recurrent_activation, use_bias=use_bias,
                    reset_after=reset_after, dtype=dtype)
    spec = SequenceSpec(cfg, batch=check_positive_int("batch", batch),
                        input_dim=check_positive_int("input_dim", input_dim), lanes=targets.lanes(target, dtype),
                        time_major=bool(time_major), return_sequences=bool(return_sequences),
                        weight_dtype=weight_dtype)
    rule = sequence_rule(target)
    hand = rule.default_schedule(spec, target)
    report = TextProgress() if progress is True else (progress or (lambda *a: None))
    d = Path(log_dir) / tuning_db.target_id(target) if log_dir else tuning_db.db_dir(target)
    t0 = time.perf_counter()
    with locked(d, seq_db.TRIALS), ctrl_c():
        base = {"workload": spec.key(), "target": tuning_db.target_key(target),
                "hand_kernel": seq_db.kernel_hash(spec, target, hand), "steps": steps}
        bench = SequenceBench(spec, target, steps, rpc_tracker, rpc_key, wait_quiet_s=float(wait_quiet))
        try:
            search = _Search(d, base, bench, trials, report)
            search.run(hand, *sequence_space(spec, target, rule))
            top = search.fastest(VERIFY_TOP, exclude=hand)
            hand_s, timed = _verify(bench, hand, top, verify_rounds)
        finally:
            bench.close()
        tuned_s, paired, best = min(timed, key=lambda row: row[0]) if timed else (None, None, None)
        if best is not None:
            seq_db.append_line(d, seq_db.RECORDS, {
                **base, "seconds": hand_s, "tuned_seconds": tuned_s, "schedule": seq_db.schedule_to_json(best),
                "hand_schedule": seq_db.schedule_to_json(hand), "kernel": seq_db.kernel_hash(spec, target, best),
                "paired_ratio": paired, "trials": search.count(), "runner": bench.where,
                "load": round(os.getloadavg()[0], 2),
                "time": tuning_db.now()})
    return SequenceTuneResult(spec=spec, target_id=tuning_db.target_id(target), log_dir=d, steps=steps,
                              trials_run=search.measured, trials=search.count(), hand_schedule=hand,
                              hand_seconds=hand_s, schedule=best, tuned_seconds=tuned_s, paired_ratio=paired,
                              applied=tuned_s is not None and seq_db.wins(hand_s, tuned_s, paired),
                              elapsed_s=time.perf_counter() - t0)


class _Search:
    """The candidates measured so far (from ``sequence_trials.json``, then this run's), and the search."""

    def __init__(self, d: Path, base: dict, bench, trials: int, report):
        self.d, self.base, self.bench, self.trials, self.report = d, base, bench, trials, report
        self.seen = {}  # schedule -> seconds or None
        for line in seq_db.read_lines(d, seq_db.TRIALS):
            if all(line[k] == v for k, v in base.items()):
                self.seen[seq_db.schedule_from_json(line["schedule"])] = line["seconds"]
        self.measured = 0
        self.hand_s = None

    def count(self) -> int:
        return len(self.seen)

    def seconds(self, schedule):
        """The candidate's time (measured now unless recorded; None: failed); _BudgetSpent when ``trials``
        candidates have been measured."""
        if schedule in self.seen:
            return self.seen[schedule]
        if len(self.seen) >= self.trials:
            raise _BudgetSpent
        seconds, error = None, None
        try:
            module = self.bench.build(schedule)
            error = self.bench.check(module)
            if error is None:
                seconds = self.bench.time(module)
        except (ValueError, RuntimeError, OSError) as err:  # TVMError is a RuntimeError
            error = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[-1]}"[:200]
        if error is not None:
            log.info("tvm_gru: sequence candidate %s failed: %s", _knobs(schedule), error)
        line = {**self.base, "schedule": seq_db.schedule_to_json(schedule), "seconds": seconds,
                "time": tuning_db.now()}
        if error is not None:
            line["error"] = error
        seq_db.append_line(self.d, seq_db.TRIALS, line)
        self.seen[schedule] = seconds
        self.measured += 1
        self.report(len(self.seen), self.trials, self.best(), self.hand_s)
        return seconds

    def best(self):
        return min((s for s in self.seen.values() if s is not None), default=None)

    def run(self, hand, space: list, normalise) -> None:
        """Measure ``space`` (starting with ``hand``) whole if ``trials`` allow, else descend from ``hand``."""
        try:
            self.hand_s = self.seconds(hand)
            self.report(len(self.seen), self.trials, self.best(), self.hand_s)
            if len(space) <= self.trials:
                for schedule in space:
                    self.seconds(schedule)
                return
            # One descent per thread count: serial and parallel kernels are separate basins (a descent from two
            # threads would have to leave its tiles, tuned for two, in one step).
            starts = [hand] + [normalise(dataclasses.replace(hand, threads=nt))
                               for nt in sorted({s.threads for s in space} - {hand.threads}, reverse=True)]
            for start in starts:
                self._descend(start, space, normalise)
            # Descents stop at a local best (and trust single noisy timings); the rest of the budget samples the
            # space in a fixed random order (a resumed run replays the same order).
            for schedule in random.Random(len(space)).sample(space, len(space)):
                self.seconds(schedule)
        except _BudgetSpent:
            pass

    def _descend(self, start, space: list, normalise) -> None:
        """Coordinate descent over the knobs, from ``start``, within ``space`` (``normalise``: a schedule -> the
        knobs the kernel honours for it)."""
        valid = set(space)
        if start not in valid:
            return
        current, current_s = start, self.seconds(start)
        for _ in range(8):  # passes
            changed = False
            for knobs in _AXES:
                values = sorted({tuple(getattr(s, k) for k in knobs) for s in space}, key=str)
                for value in values:
                    candidate = normalise(dataclasses.replace(current, **dict(zip(knobs, value))))
                    if candidate not in valid or candidate == current:
                        continue
                    secs = self.seconds(candidate)
                    if secs is not None and (current_s is None or secs < current_s):
                        current, current_s, changed = candidate, secs, True
            if not changed:
                return

    def fastest(self, k: int, exclude) -> list:
        # Sorted by time alone (stable: equal times keep the order measured; schedules do not compare).
        ranked = sorted(((s, sch) for sch, s in self.seen.items() if s is not None and sch != exclude),
                        key=lambda pair: pair[0])
        return [sch for _, sch in ranked[:k]]


def _verify(bench, hand, top: list, rounds: int) -> tuple:
    """Hand rule and ``top`` re-measured, interleaved ``rounds`` times: ``(hand seconds, [(seconds, paired ratio,
    schedule)])``, seconds the fastest of its rounds, the paired ratio the median over rounds of the candidate's
    time over the hand rule's in the same round (candidates that fail now are dropped).

    The fastest, not the median: on a shared machine a parallel kernel's time follows its neighbours' load (seen
    here at load 6 on the 2 cores, one kernel's rounds: 164 us to 108 ms) while a serial one's barely moves, so
    medians would hand the busy machine's preference (serial kernels) to the quiet one. The rounds of all
    candidates alternate, so each gets the same chances of a quiet round. The paired ratio guards the fastest
    round against one lucky round: a record applies only when both say the candidate wins (a 64x64x128 record
    that won 1.57x by its fastest rounds under load 2.8 lost by 2 % when re-measured).
    """
    modules = []
    for schedule in [hand, *top]:
        try:
            module = bench.build(schedule)
            modules.append(module if bench.check(module) is None else None)
        except (ValueError, RuntimeError, OSError):
            modules.append(None)
    if modules[0] is None:
        raise RuntimeError(f"the hand rule's sequence kernel failed to build, run or match the reference "
                           f"({bench.where})")
    times = [[] for _ in modules]
    for _ in range(rounds):
        for i, module in enumerate(modules):
            if module is not None:
                times[i].append(bench.time(module))
    hand_times = times[0]
    out = []
    for cand_times, schedule in zip(times[1:], top):
        if cand_times:
            paired = statistics.median(c / h for c, h in zip(cand_times, hand_times))
            out.append((min(cand_times), paired, schedule))
    return min(hand_times), out


# The knobs varied together in one coordinate step: a register tile is one choice.
_AXES = (("threads",), ("batch_tile", "unit_blocks"), ("candidate_blocks",), ("gemm_rows",), ("spin_barrier",),
         ("gemm_in_barrier",), ("candidate_panels",), ("gate_panels",))


class _BudgetSpent(Exception):
    """``trials`` candidates have been measured."""


def sequence_space(spec, target, rule) -> list:
    """``(schedules, normalise)``: every distinct :class:`SequenceSchedule` for ``spec`` on ``target``, a
    deterministic list with the hand rule's knobs first, and the map of any schedule onto the space's form.

    Threads: 1, the powers of two and the core count up to ``num-cores`` and the unit blocks. Register tiles:
    up to 4 batch rows, gate accumulators up to the rule's budget (twice it where the target has 32 vector
    registers: AVX-512, aarch64). Flags only where the kernel honours them.
    """
    from ..targets import family, lanes  # noqa: PLC0415

    c, blocks, cores = spec.config, spec.blocks, _cores(target)
    wide = family(target) == "aarch64" or (family(target) == "x86" and lanes(target, "float32") == 16)
    budget = rule.max_accumulators * (2 if wide else 1)
    gates = 3 if c.reset_after else 2
    threads = sorted({t for t in [1, cores, *(2 ** p for p in range(11))] if t <= min(cores, blocks)})
    tiles = [(bt, ni) for bt in range(1, min(spec.batch, 4) + 1) for ni in range(1, blocks + 1)
             if bt * ni * gates <= budget]
    hand = rule.default_schedule(spec, target)
    cands = [hand.candidate_blocks] if c.reset_after else sorted(
        {cb for cb in (1, 2, 4, 6, 8, 12, 16, 24) if cb <= blocks} | {hand.candidate_blocks})
    normalise = _normaliser(spec, budget)
    out = {hand: None}
    for nt, (bt, ni), cb, mr, flags in itertools.product(threads, tiles, cands, sorted({2, 4, 8, hand.gemm_rows}),
                                                         itertools.product((True, False), repeat=4)):
        if cb * bt <= budget or cb == hand.candidate_blocks:
            knobs = dict(zip(("spin_barrier", "gemm_in_barrier", "candidate_panels", "gate_panels"), flags))
            out.setdefault(normalise(SequenceSchedule(threads=nt, gemm_rows=mr, batch_tile=bt, unit_blocks=ni,
                                                      candidate_blocks=cb, **knobs)), None)
    return list(out), normalise


def _normaliser(spec, budget: int):
    """A function mapping a schedule to the one the kernel builds the same code for: knobs it ignores there set
    as the hand rule sets them (spin barrier on and no projection in the barrier waits for serial code, etc.)."""
    c = spec.config

    def normalise(s: SequenceSchedule) -> SequenceSchedule:
        multi = s.threads > 1
        spin = s.spin_barrier or not multi
        return dataclasses.replace(
            s, spin_barrier=spin, gemm_in_barrier=s.gemm_in_barrier and spec.batch == 1 and not c.reset_after
            and multi and spin, candidate_panels=s.candidate_panels and not c.reset_after,
            gate_panels=s.gate_panels and s.unit_blocks > 1)

    return normalise


def _cores(target) -> int:
    return int(target.attrs["num-cores"]) if "num-cores" in target.attrs else 1
