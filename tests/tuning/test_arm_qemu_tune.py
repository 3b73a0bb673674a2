"""Tuning for aarch64 through TVM's RPC: a tracker on this host, TVM's own RPC server under qemu-aarch64.

The server is ``python -m tvm.exec.rpc_server --tracker 127.0.0.1:PORT --key KEY`` run by the arm64 Python of the
emulation kit with an aarch64 TVM (runtime only), both from ``.ci/setup_qemu.sh``. ``tvm-gru tune --target
aarch64 --rpc-tracker ... --rpc-key ...`` compiles every candidate here, cross-links it into an aarch64 ``.so``,
and the server loads and times it under emulation. Emulated times say nothing about an ARM board's speed: what
is checked is the pipeline (records, trials, the hand baseline measured over RPC) and that a record it wrote,
applied at compile time, still computes the Keras v1 step on aarch64 (run under qemu with the minimal runtime).

Without the kit the test skips, except under CI, where it fails (as tests/deploy/test_arm_qemu.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port, registered_servers, tolerance

import tvm_gru
from tvm_gru import build, cli, targets
from tvm_gru.build import records as tuning_db
from tvm_gru.deploy.export import export_cell
from tvm_gru.ops import compute, reference
from tvm_gru.ops.config import GRUConfig, StepSpec
from tvm_gru.tuning import space as tune_space

CACHE = Path(os.environ.get("TVM_GRU_QEMU_CACHE", Path.home() / ".cache" / "tvm_gru_qemu"))
TVM_VERSION = "0.27.0.post1"
RPC_SITE = CACHE / f"tvm-rpc-{TVM_VERSION}" / "site"
PYTHON = CACHE / "bin" / "python3.11"  # the arm64 Python under qemu-aarch64, also its own sys.executable
KEY = "gru-arm-test"
TRIALS = 4
SHAPE = {"units": 16, "input_dim": 8, "batch": 1}

# Runs in the emulated arm64 Python with numpy + apache-tvm-ffi only: load the artifact, one step, save it.
EMULATED = r"""
import sys
sys.path.insert(0, sys.argv[1] + "/python/tvm_gru_runtime.zip")
import numpy as np
import tvm_gru_runtime
cell = tvm_gru_runtime.load(sys.argv[1])
data = np.load(sys.argv[2])
out, _ = cell(data["x"], [data["h"]])
np.save(sys.argv[3], out)
print("modules:", sorted(m for m in sys.modules if m == "tvm" or m.startswith("tvm.")))
"""


def rpc_kit():
    missing = [str(p) for p in (CACHE / ".complete-v1", RPC_SITE.parent / ".complete-v1", PYTHON) if not p.exists()]
    missing += [tool for tool in ("qemu-aarch64", "aarch64-linux-gnu-g++") if shutil.which(tool) is None]
    if missing:
        msg = (f"aarch64 emulation kit with TVM's RPC server missing ({', '.join(missing)}): "
               "run `bash .ci/setup_qemu.sh`")
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


@contextlib.contextmanager
def tracker_and_emulated_server(tmp_path):
    """Yield ``(port, server_log, seconds until the server registered)``; every process is killed afterwards."""
    from tvm.s_tir import meta_schedule as ms

    port = free_port()
    server_log = tmp_path / "rpc_server.log"
    procs = []
    try:
        # Own process groups: the server runs each session in a forked worker that killing it alone would orphan.
        procs.append(subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                                       "--port", str(port), "--port-end", str(port + 1)], start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        p = free_port()
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(Path.home()), "PYTHONNOUSERSITE": "1",
               "PYTHONPATH": f"{RPC_SITE}{os.pathsep}{CACHE / 'site'}", "TVM_NUM_THREADS": "2"}
        with open(server_log, "w") as log:
            procs.append(subprocess.Popen(
                [str(PYTHON), "-m", "tvm.exec.rpc_server", "--tracker", f"127.0.0.1:{port}", "--key", KEY,
                 "--host", "127.0.0.1", "--port", str(p), "--port-end", str(p + 50),
                 # the random fill MetaSchedule's runner asks for lives there (runtime-only TVM does not load it)
                 "--load-library", str(RPC_SITE / "tvm" / "lib" / "libtvm_runtime_extra.so")],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        config = ms.runner.RPCConfig("127.0.0.1", port, KEY, session_timeout_sec=10)
        t0 = time.perf_counter()
        while registered_servers(config) < 1:
            assert procs[-1].poll() is None, f"the emulated RPC server exited:\n{server_log.read_text()[-4000:]}"
            assert time.perf_counter() - t0 < 300, f"no server registered:\n{server_log.read_text()[-4000:]}"
            time.sleep(1)
        yield port, server_log, time.perf_counter() - t0
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_tune_aarch64_over_rpc_with_an_emulated_server(tmp_path, capsys, monkeypatch):
    rpc_kit()
    target = targets.resolve("aarch64")
    log_dir = tmp_path / "logs"
    argv = ["tune", "--target", "aarch64", "--units", str(SHAPE["units"]), "--input-dim", str(SHAPE["input_dim"]),
            "--batch", str(SHAPE["batch"]), "--trials", str(TRIALS), "--trials-per-batch", str(TRIALS),
            "--log-dir", str(log_dir), "--seed", "0"]
    with tracker_and_emulated_server(tmp_path) as (port, server_log, registered_s):
        t0 = time.perf_counter()
        code = cli.main([*argv, "--rpc-tracker", f"127.0.0.1:{port}", "--rpc-key", KEY])
        tune_s = time.perf_counter() - t0
    out = capsys.readouterr()
    assert code == 0, out.err
    with capsys.disabled():
        print(f"\nemulated RPC server registered {registered_s:.1f} s after its start (qemu import of tvm); "
              f"tvm-gru tune --target aarch64 ({TRIALS} trials over RPC): {tune_s:.1f} s")

    # the trials: all measured on the server, none failed, in TVM's database under <log-dir>/<target-id>/
    d = log_dir / tuning_db.target_id(target)
    assert d.name.startswith("llvm-aarch64")
    assert f"{TRIALS} trials this run, {TRIALS} records in all" in out.out
    assert f"{TRIALS}/{TRIALS} trials" in out.err  # the progress bar
    assert len((d / tuning_db.WORKLOADS).read_text().splitlines()) == 1
    assert len((d / tuning_db.RECORDS).read_text().splitlines()) == TRIALS
    spec = StepSpec(GRUConfig(SHAPE["units"]), batch=SHAPE["batch"], input_dim=SHAPE["input_dim"],
                    lanes=targets.lanes(target, "float32"))
    func = compute.step_primfunc(spec)
    mod = tuning_db.module(func)
    records = tuning_db.records_for(d, mod, target)[1]
    assert len(records) == TRIALS  # records_for leaves failed candidates out
    assert all(0 < tuning_db.record_seconds(r) < tuning_db.FAILED for r in records)
    assert all("unit_blocks=" in tune_space.config_of(r) for r in records)  # the hand space's configs

    # the hand baseline, measured by the same server, beside the re-measured best record
    [baseline] = [json.loads(line) for line in (d / tuning_db.BASELINE).read_text().splitlines()]
    assert baseline["runner"] == f"rpc 127.0.0.1:{port} key={KEY} (1 servers)"
    assert baseline["seconds"] > 0 and baseline["tuned_seconds"] > 0 and baseline["records"] == TRIALS
    assert baseline["target"] == tuning_db.target_key(target) and "aarch64" in baseline["target"]
    assert baseline["workload"] == tuning_db.workload_key(mod) and baseline["spec"] == spec.key()
    named = [r for r in records if tuning_db.digest(r) == baseline["record"]]
    assert len(named) == 1
    server_text = server_log.read_text()
    assert "load_module" in server_text and ".so" in server_text  # the cross-linked libraries, loaded there

    # the record round-trips: applied at compile time (forced by a baseline line where the emulated timings did
    # not favour it), exported for aarch64, run under qemu with numpy + apache-tvm-ffi only, equal to the reference
    monkeypatch.setenv("TVM_GRU_TUNING_LOGS", str(log_dir))
    monkeypatch.setenv("TVM_GRU_CACHE_DIR", str(tmp_path / "cache"))
    build.clear_memory_cache()
    tuned = tuning_db.apply_record(named[0], mod).mod
    _, hand = tune_space.hand_rule(func, spec, target)
    applied_by_the_run = tuning_db.lookup(func, target) is not None
    if not applied_by_the_run:
        tuning_db.append_baseline(d, {**baseline, "seconds": 1.0, "tuned_seconds": 1e-9})
    scheduled = build.scheduled_module(spec, target)
    import tvm_ffi

    assert tvm_ffi.structural_equal(scheduled, tuned) and not tvm_ffi.structural_equal(scheduled, hand.mod)

    cell = tvm_gru.GRUCell(SHAPE["units"], seed=3)
    cell.build((1, SHAPE["input_dim"]))
    weights = cell.get_weights()
    weights[2] = np.random.default_rng(3).uniform(-0.5, 0.5, weights[2].shape).astype("float32")
    cell.set_weights(weights)
    art = export_cell(cell, tmp_path / "gru_arm", target="aarch64", batch=SHAPE["batch"])
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (SHAPE["batch"], SHAPE["input_dim"])).astype("float32")
    h = rng.uniform(-1, 1, (SHAPE["batch"], SHAPE["units"])).astype("float32")
    np.savez(tmp_path / "in.npz", x=x, h=h)
    (tmp_path / "emulated.py").write_text(EMULATED)
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(CACHE / "site"), "PYTHONNOUSERSITE": "1",
           "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([str(PYTHON), str(tmp_path / "emulated.py"), str(art), str(tmp_path / "in.npz"),
                           str(tmp_path / "out.npy")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "modules: []" in proc.stdout  # the deployed loader imported no TVM
    ref = reference.step(cell.config, x, h, *cell.get_weights())
    got = np.load(tmp_path / "out.npy")
    np.testing.assert_allclose(got, ref, atol=tolerance("float32", ref), rtol=0)
    with capsys.disabled():
        print(f"record {baseline['best_config']} ({'applied by the run' if applied_by_the_run else 'forced'}): "
              f"max err {float(np.max(np.abs(got - ref))):.1e} under qemu")
