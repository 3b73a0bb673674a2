"""Compiling and timing tuning candidates: a persistent local build pool, MetaSchedule's local or RPC runner.

Candidates are always compiled on this machine (``tvm.tirx.build``, what ``tvm.compile`` does for TIR) and
timed where they will run: locally, or on servers registered with a TVM RPC tracker
(``python -m tvm.exec.rpc_tracker``, ``python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY``). Times are
the best of :data:`EVALUATOR` ``repeat`` runs, without cache flushing (a step is called with warm weights).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import shutil
import sys
import time
import types

__all__ = ["Bench", "EVALUATOR", "cpu_busy", "parse_tracker", "remove", "run_seconds", "wait_for_quiet",
           "without_tensor_intrinsics"]

log = logging.getLogger(__name__)

EVALUATOR = {"number": 1, "repeat": 5, "min_repeat_ms": 20}


@contextlib.contextmanager
def without_tensor_intrinsics(target=None):
    """Let ``TuneContext`` import ``tvm.s_tir.tensor_intrin`` as an empty package (see :mod:`tvm_gru.tune`).

    Its submodules stay importable; the stub is removed afterwards, so a later real import registers them. The
    target's own CPU intrinsics alone are registered (ARM about 2 s, x86 well under one): MetaSchedule's defaults
    for ARM and for x86 with AVX-512 or VNNI, which ``TuneContext`` builds whenever a space takes any of its parts
    "from-target", look them up by name and abort without them ("TensorIntrin 'dot_4x4_i8i8s32_neon' is not
    registered", "TensorIntrin 'dot_16x4_vnni' is not registered").
    """
    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        yield
        return
    stub = types.ModuleType(name)
    stub.__path__ = list(importlib.util.find_spec(name).submodule_search_locations)
    sys.modules[name] = stub
    try:
        intrinsics = _cpu_intrinsics(target)
        if intrinsics:
            importlib.import_module(f"{name}.{intrinsics}")  # stays registered (and in sys.modules) afterwards
        yield
    finally:
        if sys.modules.get(name) is stub:
            del sys.modules[name]


def _cpu_intrinsics(target) -> str | None:
    """The ``tvm.s_tir.tensor_intrin`` submodule MetaSchedule's defaults for ``target`` look up, if any."""
    from ..targets import family  # noqa: PLC0415

    if target is None or target.kind.name != "llvm":
        return None
    return {"aarch64": "arm_cpu", "x86": "x86"}.get(family(target))


def _build(mod, target):
    """What ``tvm.compile`` does for a TIR module, without importing the intrinsic tables."""
    import tvm  # noqa: PLC0415

    return tvm.tirx.build(mod, target)


def _export_tar(rt_mod) -> str:
    """MetaSchedule's default artifact: an object-file tar, linked by the runner's host."""
    import tempfile  # noqa: PLC0415

    from tvm.support.tar import tar  # noqa: PLC0415

    path = os.path.join(tempfile.mkdtemp(), "tvm_tmp_mod.tar")
    rt_mod.export_library(path, fcompile=tar)
    return path


def _export_aarch64(rt_mod) -> str:
    """A cross-linked shared library (an aarch64 RPC server cannot link the default tar)."""
    import tempfile  # noqa: PLC0415

    from tvm.support import cc  # noqa: PLC0415

    path = os.path.join(tempfile.mkdtemp(), "tvm_tmp_mod.so")
    rt_mod.export_library(path, fcompile=cc.cross_compiler("aarch64-linux-gnu-g++"))
    return path


def _build_in_worker(job) -> str:
    """Runs in a build-pool process: compile one candidate and export it; return the artifact's path."""
    mod, target, aarch64 = job
    return (_export_aarch64 if aarch64 else _export_tar)(_build(mod, target))


def parse_tracker(value) -> tuple[str, int]:
    """``"HOST:PORT"`` (or a pair) -> ``(host, port)``."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        host, port = value
    else:
        host, sep, port = str(value).rpartition(":")
        if not sep or not host:
            raise ValueError(f"`rpc_tracker` must be HOST:PORT, received {value!r}")
    try:
        return str(host), int(port)
    except ValueError:
        raise ValueError(f"`rpc_tracker` must be HOST:PORT with an integer port, received {value!r}") from None


class Bench:
    """Builds modules locally and times them with MetaSchedule's local or RPC runner."""

    def __init__(self, target, rpc_tracker=None, rpc_key=None, timeout_s: float = 120.0, wait_quiet_s: float = 0):
        from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415
        from tvm.support.popen_pool import PopenPoolExecutor  # noqa: PLC0415

        from ..targets import family, host_cores, resolve  # noqa: PLC0415

        self.ms, self.target, self.wait_quiet_s = ms, target, wait_quiet_s if rpc_tracker is None else 0
        foreign = target.kind.name == "llvm" and family(target) != family(resolve(None))
        if foreign and rpc_tracker is None:
            raise ValueError(f"target {target.export()} cannot run on this host: tune it through an RPC tracker "
                             "(rpc_tracker=HOST:PORT, rpc_key=KEY) with a server on such a machine")
        self.aarch64 = foreign and family(target) == "aarch64"
        # MetaSchedule's LocalBuilder starts a fresh process pool per batch (each worker re-imports TVM: 3-8 s
        # here); this pool persists, and its workers are recycled after some builds instead.
        self.pool = PopenPoolExecutor(max_workers=host_cores(), timeout=timeout_s, maximum_process_uses=64)
        evaluator = ms.runner.EvaluatorConfig(**EVALUATOR, enable_cpu_cache_flush=False)
        if rpc_tracker is None:
            self.runner = ms.runner.LocalRunner(timeout_sec=timeout_s, evaluator_config=evaluator)
            self.where = "local"
        else:
            host, port = parse_tracker(rpc_tracker)
            config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=rpc_key,
                                         session_timeout_sec=int(timeout_s))
            servers = config.count_num_servers(allow_missing=False)
            self.runner = ms.runner.RPCRunner(config, evaluator_config=evaluator, max_workers=servers)
            self.where = f"rpc {host}:{port} key={rpc_key} ({servers} servers)"
        self.device_type = "cpu" if target.kind.name == "llvm" else target.kind.name

    def build(self, mods):
        """Artifact paths (None where the build failed or timed out)."""
        from tvm.support.popen_pool import StatusKind  # noqa: PLC0415

        out = []
        for result in self.pool.map_with_error_catching(_build_in_worker, [(m, self.target, self.aarch64)
                                                                           for m in mods]):
            if result.status == StatusKind.COMPLETE:
                out.append(result.value)
            else:
                out.append(None)
                log.debug("tvm_gru: a candidate failed to build: %s", str(result.value).strip().splitlines()[-1:])
        return out

    def close(self) -> None:
        """Stop the build pool and the runner's workers (an RPC runner's workers would outlive this process)."""
        self.pool.shutdown()
        runner_pool = getattr(self.runner, "pool", None)
        if runner_pool is not None:
            runner_pool.shutdown()

    def run(self, artifacts, args_info):
        """RunnerResults for ``artifacts`` (None where the build failed)."""
        RunnerInput, RunnerResult = self.ms.runner.RunnerInput, self.ms.runner.RunnerResult  # noqa: N806
        todo = [i for i, a in enumerate(artifacts) if a is not None]
        if todo and self.wait_quiet_s:
            wait_for_quiet(self.wait_quiet_s)
        futures = self.runner.run([RunnerInput(artifacts[i], self.device_type, args_info[i]) for i in todo])
        results = [RunnerResult(None, "build failed") for _ in artifacts]
        for i, future in zip(todo, futures):
            results[i] = future.result()
            if results[i].error_msg:
                log.debug("tvm_gru: a candidate failed to run: %s", results[i].error_msg.strip().splitlines()[-1:])
        return results

    def measure(self, mods, args_info, rounds: int = 1):
        """Build ``mods`` once, then time them ``rounds`` times, interleaved: all run seconds per module."""
        artifacts = self.build(mods)
        times = [[] for _ in mods]
        try:
            for _ in range(rounds):
                for i, r in enumerate(self.run(artifacts, [args_info] * len(mods))):
                    times[i] += run_seconds(r)
        finally:
            remove(artifacts)
        return times


def run_seconds(result) -> list:
    """The times of a ``RunnerResult``, or ``[]`` for a failure.

    An RPC server is another machine: times that are not finite and positive (which would make its candidate
    win, or break the comparison with the hand schedule) count as a failure.
    """
    if result.error_msg or not result.run_secs:
        return []
    try:
        secs = [float(s) for s in result.run_secs]
    except (TypeError, ValueError):
        secs = []
    if not secs or not all(math.isfinite(s) and s > 0 for s in secs):
        log.warning("tvm_gru: a runner returned unusable times %r; counted as a failed candidate",
                    list(result.run_secs)[:5])
        return []
    return secs


def remove(artifacts) -> None:
    """Delete built artifacts (each lives in its own temporary folder)."""
    for a in artifacts:
        if a:
            shutil.rmtree(os.path.dirname(a), ignore_errors=True)


def cpu_busy(interval: float = 1.0) -> float | None:
    """The fraction of all CPUs' time spent busy over ``interval`` seconds (None where /proc/stat is missing)."""
    def sample():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:8]]
        return sum(values), values[3] + values[4]  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except OSError:
        return None
    return 1 - (idle1 - idle0) / max(total1 - total0, 1)


def wait_for_quiet(limit_s: float, busy: float = 0.25) -> float:
    """Wait (at most ``limit_s``) until other work leaves the CPUs mostly idle; return the seconds waited.

    Parallel candidates measured while another process holds a core stall in TVM's thread pool (seen here:
    milliseconds instead of microseconds), which would steer the search and the final comparison.
    """
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        load = cpu_busy()
        if load is None or load < busy:
            break
    waited = time.perf_counter() - t0
    if waited >= limit_s:
        log.info("tvm_gru: the CPUs stayed busy for %.0f s; timing anyway", waited)
    return waited
