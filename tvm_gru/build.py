"""(StepSpec, target) -> scheduled IRModule -> compiled kernel, cached in memory and on disk.

The disk cache (``$TVM_GRU_CACHE_DIR``, default ``~/.cache/tvm_gru``) holds one shared library per kernel,
named by a hash of everything the code depends on (spec, target, TVM version, the source of the compute
and schedule modules), so a second process loads instead of recompiling and a changed schedule never
loads a stale kernel. Entries are written to a temporary file and renamed: a reader never sees half a file,
and a damaged entry is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path

import tvm

from . import __version__, compute, targets
from .config import StepSpec

__all__ = ["scheduled_module", "compile_step", "cache_dir", "clear_memory_cache"]

log = logging.getLogger(__name__)
_MEMORY: dict = {}
_LOCK = threading.Lock()
_SOURCES = ("compute.py", "activations.py", "packing.py", "config.py")


def cache_dir() -> Path:
    return Path(os.environ.get("TVM_GRU_CACHE_DIR", Path.home() / ".cache" / "tvm_gru"))


def _rules(target):
    from .schedules import arm, x86  # noqa: PLC0415

    rules = [*x86.RULES, *arm.RULES]
    if target.kind.name == "cuda":
        from .schedules import cuda  # noqa: PLC0415

        rules = list(cuda.RULES)
    return [r for r in rules if r.is_target(target)]


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
    from . import tuning_db  # noqa: PLC0415

    tuned = tuning_db.lookup(func, target)
    if tuned is not None:
        return tuned
    for rule in _rules(target):
        sch = rule.apply(func, spec, target, schedule_config)
        if sch is not None:
            return sch.mod
    raise ValueError(f"no schedule rule for target {target}")


def _source_hash() -> str:
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in _SOURCES:
        h.update((here / name).read_bytes())
    for path in sorted((here / "schedules").glob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _key(spec: StepSpec, target) -> str:
    from . import tuning_db  # noqa: PLC0415

    blob = json.dumps({"spec": spec.key(), "target": str(target.export()), "tvm": tvm.__version__,
                       "pkg": __version__, "src": _source_hash(), "db": tuning_db.fingerprint(target)},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def compile_step(spec: StepSpec, target=None):
    """Return the compiled step function ``f(x, h, *weights, [bias], [masks], out)`` for ``target``.

    Only host-runnable targets can be returned as a callable; other targets are exported by
    :mod:`tvm_gru.export`.
    """
    target = targets.resolve(target)
    key = _key(spec, target)
    with _LOCK:
        if key in _MEMORY:
            return _MEMORY[key]
        fn = _load_or_build(spec, target, key)
        _MEMORY[key] = fn
        return fn


def _load_or_build(spec, target, key):
    from .sequence import vectorizable_isnan  # noqa: PLC0415

    def build():
        with vectorizable_isnan():  # else the NaN-safe activations scalarise the whole epilogue
            return tvm.compile(scheduled_module(spec, target), target=target)
    return load_or_compile(cache_dir() / f"step-{key}.so", build)


def load_or_compile(path: Path, build):
    """The ``main`` function of the library cached at ``path``, or of ``build()`` (a TVM executable) saved there.

    An unreadable entry (truncated, foreign) is rebuilt. Writes are atomic: concurrent builders each write their
    own temporary file and the last rename wins. Without a writable cache the JIT module is kept in memory only.
    """
    if path.exists():
        try:
            return tvm.runtime.load_module(str(path))["main"]
        except Exception as err:  # a truncated or foreign file: rebuild it  # noqa: BLE001
            log.warning("tvm_gru: discarding unreadable cache entry %s (%s)", path, err)
    executable = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".so")
        os.close(fd)
        executable.export_library(tmp)
        os.replace(tmp, path)
        return tvm.runtime.load_module(str(path))["main"]
    except OSError as err:  # read-only home, no compiler: keep the JIT module in memory only
        log.warning("tvm_gru: compile cache disabled (%s)", err)
        return executable.jit()["main"]


def clear_memory_cache() -> None:
    with _LOCK:
        _MEMORY.clear()
