"""Tuned knobs of the whole-sequence kernel: the record files, their allow-list, and when a record is applied.

:func:`tvm_gru.tuning.sequence_tune.tune_sequence` searches the knobs of
:class:`~tvm_gru.schedules.sequence_rules.SequenceSchedule` and writes two files under
``tuning_logs/<target-id>/`` (one JSON object per line, appended with a single ``write``):

``sequence_trials.json``
    one line per measured candidate (the search log, read to resume an interrupted run): ``workload`` (the
    :meth:`~tvm_gru.ops.sequence.SequenceSpec.key`), ``target`` (:func:`~.records.target_key`), ``hand_kernel``,
    ``steps``, ``schedule`` (the knobs), ``seconds`` (null: failed to build or run, or wrong numbers), ``time``.
``sequence_records.json``
    one line per tuning run: the best candidate and the hand rule re-measured interleaved by the same runner,
    ``seconds`` (the hand rule) and ``tuned_seconds`` (each the fastest of the interleaved rounds),
    ``paired_ratio`` (the median over rounds of tuned over hand in the same round), ``schedule`` and
    ``hand_schedule``, ``kernel`` and
    ``hand_kernel`` (structural hashes of the two scheduled kernels), ``steps``, ``trials``, ``runner``,
    ``time``. The last line for a workload and target wins.

A line may hold only the fields above, each of a bounded type and size, and a schedule only the knob names of
:class:`SequenceSchedule` with integers in :data:`KNOB_BOUNDS` or booleans: anything else refuses the line,
with a warning naming the file and line; a damaged line is skipped with a warning. A record is applied at
compile time (:func:`tuned_schedule`, called where the sequence rule picks the knobs) only when its workload
and target are the exact ones, the hand rule still schedules this workload into the kernel it was measured
against (``hand_kernel``), the recorded knobs still give the kernel that was timed (``kernel``), and it beat the
hand rule by :data:`~.records.MARGIN` in the same run, by its fastest round and by its paired ratio (:func:`wins`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
from pathlib import Path

from ..schedules.sequence_rules import SequenceSchedule
from .records import MARGIN, append_json_line, db_dir, target_key

log = logging.getLogger(__name__)

__all__ = ["TRIALS", "RECORDS", "KNOB_BOUNDS", "schedule_refusal", "line_refusal", "read_lines", "append_line",
           "schedule_to_json", "schedule_from_json", "kernel_hash", "chosen_record", "tuned_schedule", "wins",
           "fingerprint"]

TRIALS, RECORDS = "sequence_trials.json", "sequence_records.json"

KNOB_BOUNDS = {"threads": (1, 1024), "gemm_rows": (1, 16), "batch_tile": (1, 16), "unit_blocks": (1, 64),
               "candidate_blocks": (1, 64)}
_KNOBS = tuple(f.name for f in dataclasses.fields(SequenceSchedule))

_WORKLOAD = re.compile(r"seq-[A-Za-z0-9_.-]{1,200}")
_DIGITS = re.compile(r"[0-9]{1,24}")


def _seconds(value, *, optional=False) -> bool:
    if value is None:
        return optional
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and 0 < value < 1e4)


def _count(value, high=10**6) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= high


def _text(limit):
    return lambda value: isinstance(value, str) and len(value) <= limit


# Field -> check, per file. Every field of a line must be listed; the required ones must be there.
_COMMON = {"workload": lambda v: isinstance(v, str) and _WORKLOAD.fullmatch(v) is not None,
           "target": _text(400), "hand_kernel": lambda v: isinstance(v, str) and _DIGITS.fullmatch(v) is not None,
           "steps": lambda v: _count(v) and v >= 1, "schedule": lambda v: schedule_refusal(v) is None,
           "time": _text(40)}
FIELDS = {
    TRIALS: {**_COMMON, "seconds": lambda v: _seconds(v, optional=True), "error": _text(200)},
    RECORDS: {**_COMMON, "seconds": _seconds, "tuned_seconds": _seconds,
              "kernel": lambda v: isinstance(v, str) and _DIGITS.fullmatch(v) is not None,
              "hand_schedule": lambda v: schedule_refusal(v) is None, "paired_ratio": _seconds,
              "trials": _count, "runner": _text(200),
              "load": lambda v: _seconds(v, optional=True) or v == 0},
}
REQUIRED = {TRIALS: ("workload", "target", "hand_kernel", "steps", "schedule", "seconds"),
            RECORDS: ("workload", "target", "hand_kernel", "steps", "schedule", "seconds", "tuned_seconds",
                      "kernel")}


def schedule_refusal(obj) -> str | None:
    """Why ``obj`` is not a schedule a record may hold (None when it is): exactly the knob names of
    :class:`SequenceSchedule`, integers within :data:`KNOB_BOUNDS`, booleans for the others."""
    if not isinstance(obj, dict):
        return f"schedule is {type(obj).__name__}, not an object"
    if set(obj) != set(_KNOBS):
        return f"schedule knobs {sorted(map(str, obj))[:12]} are not {sorted(_KNOBS)}"
    for name, value in obj.items():
        if name in KNOB_BOUNDS:
            low, high = KNOB_BOUNDS[name]
            if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
                return f"schedule knob {name}={value!r:.40} is not an integer in [{low}, {high}]"
        elif not isinstance(value, bool):
            return f"schedule knob {name}={value!r:.40} is not a boolean"
    return None


def line_refusal(obj, name: str) -> str | None:
    """Why a parsed line of the file ``name`` (:data:`TRIALS` or :data:`RECORDS`) is refused, or None."""
    if not isinstance(obj, dict):
        return f"a line is a {type(obj).__name__}, not an object"
    fields = FIELDS[name]
    extra = sorted(str(k)[:40] for k in obj if k not in fields)
    if extra:
        return f"fields outside the allow-list: {extra[:5]}"
    missing = [k for k in REQUIRED[name] if k not in obj]
    if missing:
        return f"missing fields {missing}"
    for key, value in obj.items():
        if key == "schedule" or key == "hand_schedule":
            reason = schedule_refusal(value)
            if reason is not None:
                return f"{key}: {reason}"
        elif not fields[key](value):
            return f"field {key}={value!r:.60} is outside its allowed type or range"
    return None


def read_lines(d: Path, name: str) -> list:
    """The accepted lines of ``d/name``, oldest first; damaged and refused lines are skipped with a warning that
    names the file and line."""
    path = Path(d) / name
    if not path.exists():
        return []
    out = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (ValueError, UnicodeDecodeError, RecursionError):
                log.warning("tvm_gru: skipping a damaged line in %s (line %d)", path, number)
                continue
            reason = line_refusal(obj, name)
            if reason is not None:
                log.warning("tvm_gru: refusing the sequence tuning line at %s line %d (never applied): %s", path,
                            number, reason)
                continue
            out.append(obj)
    return out


def append_line(d: Path, name: str, entry: dict) -> None:
    """Append one line to ``d/name`` in a single ``write`` (a kill leaves no half line behind); ValueError when
    the entry is outside the allow-list (the writer is held to the reader's rules)."""
    reason = line_refusal(entry, name)
    if reason is not None:
        raise ValueError(f"sequence tuning line refused: {reason}")
    append_json_line(Path(d), name, entry)


def schedule_to_json(schedule: SequenceSchedule) -> dict:
    return dataclasses.asdict(schedule)


def schedule_from_json(obj) -> SequenceSchedule:
    """The schedule a checked line holds; ValueError for one :func:`schedule_refusal` refuses."""
    reason = schedule_refusal(obj)
    if reason is not None:
        raise ValueError(f"`schedule` refused: {reason}")
    return SequenceSchedule(**obj)


def kernel_hash(spec, target, schedule) -> str:
    """The structural hash of the kernel ``schedule`` gives for ``spec`` on ``target`` (decimal digits)."""
    import tvm_ffi  # noqa: PLC0415

    from .sequence import scheduled_sequence  # noqa: PLC0415

    return str(tvm_ffi.structural_hash(scheduled_sequence(spec, target, schedule)))


def chosen_record(spec, target, d: Path | None = None) -> dict | None:
    """The record applied to ``spec`` on ``target`` (see the module docstring), or None."""
    from .sequence import sequence_rule  # noqa: PLC0415

    d = Path(d) if d is not None else db_dir(target)
    if not (d / RECORDS).exists():
        return None
    key, tkey = spec.key(), target_key(target)
    lines = [r for r in read_lines(d, RECORDS) if r["workload"] == key and r["target"] == tkey]
    if not lines:
        return None
    rec = lines[-1]
    if not wins(rec["seconds"], rec["tuned_seconds"], rec.get("paired_ratio")):
        return None
    try:
        schedule = schedule_from_json(rec["schedule"])
        hand = sequence_rule(target).default_schedule(spec, target)
        if kernel_hash(spec, target, hand) != rec["hand_kernel"]:
            log.info("tvm_gru: the sequence tuning record for %s was measured against another hand kernel; run "
                     "`tvm-gru tune --sequence` again to re-measure it", key)
            return None
        if kernel_hash(spec, target, schedule) != rec["kernel"]:
            log.info("tvm_gru: the tuned knobs for %s now give another kernel than the one timed; not applied", key)
            return None
    except ValueError as err:  # knobs this spec cannot take (e.g. more threads than unit blocks)
        log.warning("tvm_gru: the sequence tuning record for %s in %s is not applicable: %s", key, d / RECORDS, err)
        return None
    return rec


def wins(hand_seconds: float, tuned_seconds: float, paired_ratio: float | None) -> bool:
    """Whether a record beats the hand rule by :data:`~.records.MARGIN`: by its fastest rounds and, where the
    record has it, by the median of its per-round ratios too."""
    paired_ok = paired_ratio is None or paired_ratio < 1 - MARGIN
    return tuned_seconds < hand_seconds * (1 - MARGIN) and paired_ok


_CHOSEN: dict = {}


def tuned_schedule(spec, target) -> SequenceSchedule | None:
    """The tuned knobs for ``spec`` on ``target`` from the default tuning logs, or None (use the hand rule).

    Memoised per records-file :func:`fingerprint`, so a new record is picked up by the next compile.
    """
    memo = (spec.key(), target_key(target), str(db_dir(target)), fingerprint(target))
    if memo not in _CHOSEN:
        rec = chosen_record(spec, target)
        _CHOSEN[memo] = schedule_from_json(rec["schedule"]) if rec is not None else None
    return _CHOSEN[memo]


def fingerprint(target) -> str:
    """Changes whenever ``sequence_records.json`` for ``target`` changes (part of the compile-cache key)."""
    p = db_dir(target) / RECORDS
    if not p.exists():
        return "none"
    st = p.stat()
    return hashlib.sha256(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
