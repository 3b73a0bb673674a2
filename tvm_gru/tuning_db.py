"""Where tuning records live and when one is applied.

Records are TVM MetaSchedule JSON databases under ``tuning_logs/<target-id>/`` (installed with the
package; ``$TVM_GRU_TUNING_LOGS`` overrides the root). A record is applied at compile time only when its
workload (structural hash of the exact PrimFunc: shapes, dtype, math) and target match, and when its
measured time beats the hand schedule's time measured in the same tuning run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["root", "target_id", "db_dir", "lookup", "fingerprint"]


def root() -> Path:
    env = os.environ.get("TVM_GRU_TUNING_LOGS")
    if env:
        return Path(env)
    from . import tuning_logs  # noqa: PLC0415  (top-level tuning_logs/, installed as tvm_gru.tuning_logs)

    return Path(tuning_logs.__file__).resolve().parent


def target_id(target) -> str:
    """A short, stable folder name for a target, e.g. ``llvm-x86_64-znver3`` or ``cuda-sm_80``."""
    attrs = target.attrs
    if target.kind.name == "cuda":
        return f"cuda-{attrs['arch']}" if "arch" in attrs else "cuda"
    from .targets import family  # noqa: PLC0415

    mcpu = str(attrs["mcpu"]) if "mcpu" in attrs else "generic"
    return f"llvm-{family(target)}-{mcpu}"


def db_dir(target) -> Path:
    return root() / target_id(target)


def fingerprint(target) -> str:
    """Changes whenever the records for ``target`` change (part of the compile-cache key)."""
    d = db_dir(target)
    h = hashlib.sha256()
    for name in ("database_workload.json", "database_tuning_record.json", "hand_baseline.json"):
        p = d / name
        if p.exists():
            st = p.stat()
            h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def _baselines(d: Path) -> dict:
    p = d / "hand_baseline.json"
    if not p.exists():
        return {}
    out = {}
    for line in p.read_text().splitlines():
        try:
            rec = json.loads(line)
            out[rec["workload"]] = float(rec["seconds"])
        except (ValueError, KeyError, TypeError):
            log.warning("tvm_gru: skipping a damaged line in %s", p)
    return out


def lookup(func, target):
    """Return the tuned IRModule for ``func`` on ``target`` if a matching record beats the hand schedule."""
    d = db_dir(target)
    if not (d / "database_tuning_record.json").exists():
        return None
    from . import tune  # noqa: PLC0415  (imports MetaSchedule only when a database exists)

    return tune.best_tuned_module(func, target, d, _baselines(d))
