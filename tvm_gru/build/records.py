"""Where tuning records live, how damaged files are handled, and when a record is applied.

Records are TVM MetaSchedule JSON databases under ``tuning_logs/<target-id>/`` (installed with the
package; ``$TVM_GRU_TUNING_LOGS`` overrides the root):

``database_workload.json``
    one line per workload: ``["<structural hash>", "<serialised IRModule>"]``.
``database_tuning_record.json``
    one line per measured candidate: ``[<workload line index>, [trace, run_secs, target, args_info]]``.
``hand_baseline.json``
    one JSON object per tuning run (tvm_gru's own file): ``workload`` (the structural hash), ``target``
    (:func:`target_key`), ``seconds`` (the hand schedule), ``tuned_seconds`` and ``record`` (the best record,
    re-measured interleaved with the hand schedule by the same runner, and its :func:`digest`), ``hand_source``
    (:func:`hand_fingerprint`), ``args`` (the ``tune`` arguments), and for people: ``spec``, ``hand_config``,
    ``best_config``, ``records``, ``runner``, ``load``, ``time``. The last line for a workload and target wins.

A record is applied at compile time (:func:`lookup`, from :func:`tvm_gru.build.scheduled_module`) only when its
workload (structural hash, then structural equality, of the exact PrimFunc: shapes, dtype, math) and its target
match, when the hand schedules for the target have not changed since the baseline was measured, and when the
record's time beats the hand schedule's by :data:`MARGIN`.

A trace is a program for TVM's scheduler, and some of what it can say reaches code generation (an ``Annotate``
with ``pragma_import_llvm`` links the text it carries into the kernel). So a record is data only within an
allow-list (:data:`INSTRUCTIONS`, :data:`ANNOTATIONS`, :data:`DECISIONS`: what tvm_gru's own design spaces and
MetaSchedule's postprocessors write); :func:`record_refusal` checks each record when it is read, and a record
outside the list is skipped with a warning naming the file and line, never replayed or compiled.

TVM's own JSON reader aborts on a single damaged line (e.g. the half-written last line of a killed run); here
damaged lines are skipped with a warning when reading, and dropped (the original kept as ``*.damaged``) before a
tuning run appends to the files.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import time
from pathlib import Path

from .. import schedules
from ..schedules.base import CPUStepConfig, one_region_error
from ..targets import family
from .allowlist import (
    ANNOTATIONS,
    CONFIG_ANNOTATION,
    DECISIONS,
    INSTRUCTIONS,
    UNROLL_STEPS,
    record_refusal,
    trace_json,
    trace_refusal,
)

log = logging.getLogger(__name__)

__all__ = ["root", "target_id", "db_dir", "lookup", "fingerprint", "target_key", "hand_fingerprint", "workload_key",
           "one_region_hazard",
           "read_workloads", "read_records", "repair", "append_baseline", "append_json_line", "records_for",
           "best_tuned_module",
           "apply_record", "baselines", "record_refusal", "trace_refusal", "trace_json", "INSTRUCTIONS", "ANNOTATIONS",
           "DECISIONS", "MARGIN", "FILES", "config_of", "CONFIG_ANNOTATION", "UNROLL_STEPS"]

WORKLOADS, RECORDS, BASELINE = "database_workload.json", "database_tuning_record.json", "hand_baseline.json"
FILES = (WORKLOADS, RECORDS, BASELINE)
FAILED = 1e9  # MetaSchedule stores failed candidates with a huge time; anything at or above this is a failure


def root() -> Path:
    env = os.environ.get("TVM_GRU_TUNING_LOGS")
    if env:
        return Path(env)
    from .. import tuning_logs  # noqa: PLC0415  (top-level tuning_logs/, installed as tvm_gru.tuning_logs)

    return Path(tuning_logs.__file__).resolve().parent


def target_id(target) -> str:
    """A short, stable folder name for a target, e.g. ``llvm-x86_64-znver3`` or ``cuda-sm_80``."""
    attrs = target.attrs
    if target.kind.name == "cuda":
        return f"cuda-{attrs['arch']}" if "arch" in attrs else "cuda"

    mcpu = str(attrs["mcpu"]) if "mcpu" in attrs else "generic"
    return f"llvm-{family(target)}-{mcpu}"


def db_dir(target) -> Path:
    return root() / target_id(target)


def fingerprint(target) -> str:
    """Changes whenever the records for ``target`` change (part of the compile-cache key)."""
    d = db_dir(target)
    h = hashlib.sha256()
    for name in FILES:
        p = d / name
        if p.exists():
            st = p.stat()
            h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


_TARGET_ATTRS = ("mtriple", "mcpu", "mattr", "arch", "num-cores")


def target_key(target) -> str:
    """What must be equal for a record to apply: kind, triple, CPU, features, arch and core count.

    The core count is part of it because a record (and the hand time it is compared with) was measured with
    that many threads.
    """
    attrs = target.attrs
    key = {"kind": target.kind.name}
    for name in _TARGET_ATTRS:
        if name in attrs:
            value = attrs[name]
            key[name] = sorted(str(v) for v in value) if name == "mattr" else str(value)
    return json.dumps(key, sort_keys=True)


def hand_fingerprint(target) -> str:
    """A hash of the source of the hand rules for ``target``: a baseline measured with other ones is stale.

    Only the modules defining those rules' classes (and their bases) under ``schedules/`` count, so a change to
    another target's schedules, or a new schedule file, does not invalidate the baselines.
    """
    files = {Path(inspect.getfile(cls)) for rule in schedules.step_rules(target) for cls in type(rule).__mro__
             if cls.__module__.startswith("tvm_gru.schedules")}
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def workload_key(mod) -> str:
    """The structural hash MetaSchedule's JSON database files a workload under."""
    import tvm_ffi  # noqa: PLC0415

    return str(tvm_ffi.structural_hash(mod))


# ------------------------------------------------------------------------------------------------
# Reading: every line is checked on its own; a damaged or refused one is skipped with a warning.


def _lines(path: Path, wanted=None):
    """(line number, parsed JSON or None) for each non-empty line of ``path``.

    ``wanted(raw_line) -> bool`` skips the lines it refuses without parsing them (the files are megabytes).
    """
    if not path.exists():
        return
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip() or (wanted is not None and not wanted(raw)):
                continue
            try:
                yield number, json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                yield number, None


def _valid_workload(obj) -> bool:
    return isinstance(obj, list) and len(obj) == 2 and all(isinstance(x, str) for x in obj)


def _valid_record(obj, n_workloads: int) -> bool:
    return (isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], int) and 0 <= obj[0] < n_workloads
            and isinstance(obj[1], list) and len(obj[1]) >= 3 and isinstance(obj[1][1], list)
            and all(isinstance(t, (int, float)) for t in obj[1][1]))


def _warn_damaged(path: Path, numbers) -> None:
    if numbers:
        log.warning("tvm_gru: skipping %d damaged line(s) in %s (line %s)", len(numbers), path,
                    ", ".join(map(str, numbers[:5])) + (", ..." if len(numbers) > 5 else ""))


def _warn_refused(path: Path, refused) -> None:
    """One warning per refused record ``(line number, reason)``, the first few of them (a file may hold many)."""
    for number, reason in refused[:5]:
        log.warning("tvm_gru: refusing the tuning record at %s line %d (never compiled): %s", path, number, reason)
    if len(refused) > 5:
        log.warning("tvm_gru: refusing %d more tuning record(s) in %s", len(refused) - 5, path)


def read_workloads(d: Path) -> list:
    """The workload table as the database indexes it: ``[(hash, serialised module) or None, ...]``.

    A damaged line keeps its slot (None): record lines refer to workloads by position.
    """
    out, bad = [], []
    for number, obj in _lines(d / WORKLOADS):
        if _valid_workload(obj):
            out.append(tuple(obj))
        else:
            out.append(None)
            bad.append(number)
    _warn_damaged(d / WORKLOADS, bad)
    return out


def read_records(d: Path, n_workloads: int, indices=None) -> list:
    """The valid record lines ``[index, [trace, run_secs, target, args_info]]``: damaged ones and those
    :func:`record_refusal` refuses are skipped with a warning naming the line.

    With ``indices``, only the records of those workload lines are read.
    """
    wanted = None
    if indices is not None:
        prefixes = tuple(f"[{i},".encode() for i in indices)
        wanted = lambda raw: raw[:24].replace(b" ", b"").startswith(prefixes)  # noqa: E731
    out, bad, refused = [], [], []
    for number, obj in _lines(d / RECORDS, wanted):
        if not _valid_record(obj, n_workloads):
            bad.append(number)
        elif (reason := record_refusal(obj[1])) is not None:
            refused.append((number, reason))
        else:
            out.append(obj)
    _warn_damaged(d / RECORDS, bad)
    _warn_refused(d / RECORDS, refused)
    return out


def baselines(d: Path) -> dict:
    """``{workload hash: [baseline lines, oldest first]}`` from ``hand_baseline.json``."""
    out: dict = {}
    bad = []
    for number, rec in _lines(d / BASELINE):
        try:
            float(rec["seconds"])
            out.setdefault(str(rec["workload"]), []).append(rec)
        except (KeyError, TypeError, ValueError):
            bad.append(number)
    _warn_damaged(d / BASELINE, bad)
    return out


def append_baseline(d: Path, entry: dict) -> None:
    """Append one baseline line (see :func:`append_json_line`)."""
    append_json_line(Path(d), BASELINE, entry)


def append_json_line(d: Path, name: str, entry: dict) -> None:
    """Append ``entry`` to ``d/name`` as one JSON line, in a single ``write`` of the whole line (a kill leaves no
    half line behind)."""
    d.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(entry, sort_keys=True) + "\n").encode()
    fd = os.open(d / name, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # never glue a line onto a damaged last one
            line = b"\n" + line
        os.write(fd, line)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------
# Repair before appending: TVM's reader would abort on a damaged line, and TVM's writer would glue the next
# record onto a half-written last line.


def repair(d: Path) -> int:
    """Rewrite the database files of ``d`` without damaged or refused lines; return how many lines were dropped.

    A tuning run opens the files with TVM's own database, which replays every record and seeds the search with
    the best ones (compiling them): a refused record must be gone before.

    Record lines are renumbered when a damaged workload line is dropped (records of a lost workload go too).
    The originals are kept as ``<name>.damaged``. Undamaged files are left untouched.
    """
    workloads = read_workloads(d)
    renumber = {old: new for new, old in enumerate(i for i, w in enumerate(workloads) if w is not None)}
    records = [[renumber[r[0]], r[1]] for r in read_records(d, len(workloads)) if r[0] in renumber]
    shifted = len(renumber) != len(workloads)
    dropped = 0
    for name, rows in ((WORKLOADS, [list(w) for w in workloads if w is not None]), (RECORDS, records)):
        path = d / name
        if not path.exists():
            continue
        raw = path.read_bytes()
        n_lines = sum(1 for line in raw.splitlines() if line.strip())
        intact = n_lines == len(rows) and (not raw or raw.endswith(b"\n"))
        if intact and not (shifted and name == RECORDS):
            continue
        dropped += n_lines - len(rows)
        os.replace(path, path.with_name(name + ".damaged"))
        tmp = path.with_name(f"{name}.tmp{os.getpid()}")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
        os.replace(tmp, path)
        log.warning("tvm_gru: repaired %s: %d line(s) dropped, the original is kept as %s.damaged",
                    path, n_lines - len(rows), name)
    return dropped


# ------------------------------------------------------------------------------------------------
# Selection: the records of one workload and target, and whether the best one is applied


def module(func):
    """The IRModule a workload is tuned and filed as: ``{"main": func}``."""
    import tvm  # noqa: PLC0415

    return tvm.IRModule({"main": func})


def record_seconds(record) -> float:
    """The time of a record ``[trace, run_secs, target, args_info]``: the best of its repeats."""
    return min((float(s) for s in record[1]), default=float("inf"))


def digest(record) -> str:
    """Identifies a record's schedule (its trace) in ``hand_baseline.json``."""
    return hashlib.sha1(json.dumps(record[0], sort_keys=True).encode()).hexdigest()[:16]


def _target_matcher(target):
    from tvm.target import Target  # noqa: PLC0415

    want, seen = target_key(target), {}

    def matches(record) -> bool:
        blob = json.dumps(record[2], sort_keys=True)
        if blob not in seen:
            try:
                seen[blob] = target_key(Target(record[2])) == want
            except (ValueError, TypeError, RuntimeError):  # a target this TVM cannot parse is not ours
                seen[blob] = False
        return seen[blob]

    return matches


def records_for(d: Path, mod, target, failed: bool = False):
    """``(workload line, [record ...])``: the records of ``mod`` on ``target`` in ``d``.

    Workloads match by structural hash, then structural equality; records by :func:`target_key`. Failed
    candidates are left out unless ``failed``. The file's module is deserialised only for that equality check:
    records are replayed on ``mod`` itself (:func:`apply_record`).
    """
    import tvm_ffi  # noqa: PLC0415
    from tvm.s_tir.meta_schedule.database import Workload  # noqa: PLC0415

    key = workload_key(mod)
    workloads = read_workloads(d)
    same = [i for i, w in enumerate(workloads) if w is not None and w[0] == key
            and tvm_ffi.structural_equal(Workload.from_json(list(w)).mod, mod)]
    if not same:
        return None, []
    matches = _target_matcher(target)
    out = [rec for index, rec in read_records(d, len(workloads), indices=same)
           if index in same and (failed or record_seconds(rec) < FAILED) and matches(rec)]
    return list(workloads[same[0]]), out


def apply_record(record, mod):
    """Replay a record's trace on ``mod`` (tvm_gru's own module, never the one in the file): the tuned
    ``s_tir.Schedule``. A record :func:`record_refusal` refuses raises ValueError."""
    from tvm import s_tir  # noqa: PLC0415
    from tvm.s_tir.schedule import Trace  # noqa: PLC0415

    reason = record_refusal(record)
    if reason is not None:
        raise ValueError(f"tuning record refused: {reason}")
    sch = s_tir.Schedule(mod)
    Trace.apply_json_to_schedule(record[0], sch)
    return sch


def one_region_hazard(config_text: str | None, func) -> bool:
    """Whether a hand config (as :func:`tvm_gru.tuning.space.config_of` writes it) puts a phase of one unit tile in
    one parallel region (``schedules.base.one_region_error``): records tuned before the rule refused that may;
    replaying them ran that phase on every thread at once (wrong outputs now and then). ``func``: the step
    PrimFunc."""
    import dataclasses  # noqa: PLC0415


    if not config_text or "=" not in config_text:
        return False  # the generic MetaSchedule rules: no region
    fields = {f.name for f in dataclasses.fields(CPUStepConfig)}
    knobs = dict(item.split("=", 1) for item in config_text.replace(" ", "").split(",") if "=" in item)
    buffers = {str(b.name): b for b in func.params}  # TVM 0.27: the parameters are the buffers
    blocks, reset_after = int(buffers["kernel_packed"].shape[0]), "candidate_packed" not in buffers
    try:
        cfg = CPUStepConfig(**{k: v == "True" if v in ("True", "False") else int(v) for k, v in knobs.items()
                               if k in fields})
        return one_region_error(blocks, reset_after, cfg) is not None
    except (TypeError, ValueError, ZeroDivisionError):  # a label no hand config writes (e.g. unit_blocks=0)
        return True


MARGIN = 0.05  # a record must beat the hand schedule by 5%: re-measuring the same pair moved it by up to ~5% here


def best_tuned_module(func, target, d: Path, baselines: dict, hand_source: str | None = None):
    """The IRModule of the chosen record for ``func`` on ``target`` in ``d``, or None.

    The newest baseline for this workload and target decides: it must have been measured with the current hand
    schedules (``hand_source``, default :func:`hand_fingerprint` of the step rules), and the record it names
    (``record``, re-measured as ``tuned_seconds`` beside the hand schedule) must beat the hand schedule's
    ``seconds`` by :data:`MARGIN`. Records measured after it (an interrupted run) wait for the next run's
    re-measurement. A baseline written by hand without a ``record`` compares the fastest record's own time
    instead. ``baselines`` is ``baselines(d)``.
    """
    mod = module(func)
    tkey = target_key(target)
    lines = [b for b in baselines.get(workload_key(mod), []) if b.get("target") == tkey]
    if not lines:
        return None
    base = lines[-1]
    if base.get("hand_source") != (hand_source or hand_fingerprint(target)):
        log.info("tvm_gru: tuning records for %s predate the current hand schedules; run `tvm-gru tune --refresh` "
                 "to re-measure them", base.get("spec"))
        return None
    records = records_for(Path(d), mod, target)[1]
    records = [r for r in records if not one_region_hazard(config_of(r), func)]
    if "record" in base:
        records = [r for r in records if digest(r) == base["record"]]
    if not records:
        return None
    best = min(records, key=record_seconds)
    tuned = float(base["tuned_seconds"]) if base.get("tuned_seconds") and "record" in base else record_seconds(best)
    if not tuned < float(base["seconds"]) * (1 - MARGIN):
        return None
    return apply_record(best, mod).mod


def lookup(func, target, hand_source: str | None = None):
    """Return the tuned IRModule for ``func`` on ``target`` if a matching record beats the hand schedule
    (``hand_source``: see :func:`best_tuned_module`)."""
    d = db_dir(target)
    if not (d / RECORDS).exists():
        return None
    return best_tuned_module(func, target, d, baselines(d), hand_source)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def config_of(record_json) -> str | None:
    """The hand config a record was scheduled from (its root-block annotation) and its sampled unroll depth."""
    if record_json is None:
        return None
    insts, decisions = record_json[0][0], dict((i, d) for i, d in record_json[0][1])
    config, unroll = None, None
    for i, (kind, inputs, attrs, _outputs) in enumerate(insts):
        if kind == "Annotate" and attrs == [CONFIG_ANNOTATION]:
            config = str(inputs[1]).strip('"')
        elif kind == "SampleCategorical" and list(attrs[0]) == list(UNROLL_STEPS) and i in decisions:
            unroll = UNROLL_STEPS[int(decisions[i])]
    if config is None:
        return "generic MetaSchedule rules"
    return config + (f", unroll={unroll}" if unroll is not None else "")
