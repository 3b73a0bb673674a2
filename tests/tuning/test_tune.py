"""Tests for tvm_gru.tune and tvm_gru.build.records: when records apply, damaged logs, resume, RPC tuning.

Most tests write small databases directly (a hand-rule trace committed with a chosen time), which takes a second;
the real MetaSchedule runs use tiny workloads and trial counts, and the long ones are marked slow.
"""

from __future__ import annotations

import contextlib
import json
import logging
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

from tvm_gru import build, targets
from tvm_gru.build import records as tuning_db
from tvm_gru.ops import compute
from tvm_gru.ops.config import GRUConfig, StepSpec
from tvm_gru.tuning import measure as tune_measure
from tvm_gru.tuning import space as tune_space
from tvm_gru.tuning import tune  # the module (the attribute tvm_gru.tune is the function)

SMALL = {"units": 16, "input_dim": 8, "batch": 1}


def _spec(target, units=16, input_dim=8, batch=1, **config):
    cfg = GRUConfig(units, **config)
    return StepSpec(cfg, batch=batch, input_dim=input_dim, lanes=targets.lanes(target, cfg.dtype))


def _other_config(rule, spec, target):
    """A hand config other than the default, so an applied record is recognisable."""
    default = rule.default_config(spec, target)
    return next(c for c in tune_space.hand_configs(rule, spec, target) if c != default)


def _write_record(d: Path, spec, target, seconds, hand_seconds=None, config=None):
    """Commit the hand rule's schedule for ``config`` as a record taking ``seconds`` [and a hand baseline]."""
    from tvm.s_tir import meta_schedule as ms

    func = compute.step_primfunc(spec)
    mod = tuning_db.module(func)
    rule, _ = tune_space.hand_rule(func, spec, target)
    sch = rule.apply(func, spec, target, config)
    d.mkdir(parents=True, exist_ok=True)
    db = ms.database.JSONDatabase(work_dir=str(d))
    workload = db.commit_workload(mod)
    db.commit_tuning_record(ms.database.TuningRecord(sch.trace, workload, [seconds], target,
                                                     ms.arg_info.ArgInfo.from_prim_func(func)))
    if hand_seconds is not None:
        _baseline(d, mod, target, hand_seconds)
    return sch.mod


def _baseline(d, mod, target, seconds, hand_source=None, **named):
    """A baseline line as a person would write it (no ``record``), or naming a record (``record=``, ...)."""
    tuning_db.append_baseline(d, {"workload": tuning_db.workload_key(mod), "seconds": seconds,
                                  "target": tuning_db.target_key(target),
                                  "hand_source": hand_source or tuning_db.hand_fingerprint(target), **named})


def _equal(a, b) -> bool:
    import tvm_ffi

    return tvm_ffi.structural_equal(a, b)


def _hand(spec, target):
    func = compute.step_primfunc(spec)
    return tune_space.hand_rule(func, spec, target)


# ---------------------------------------------------------------- when a record is applied


def test_record_applied_only_when_it_beats_the_hand_schedule(logs):
    target = targets.resolve(None)
    spec = _spec(target)
    rule, hand = _hand(spec, target)
    d = tuning_db.db_dir(target)
    tuned = _write_record(d, spec, target, seconds=5e-6, hand_seconds=10e-6,
                          config=_other_config(rule, spec, target))
    assert _equal(build.scheduled_module(spec, target), tuned)

    _baseline(d, tuning_db.module(compute.step_primfunc(spec)), target, 4e-6)  # the newest baseline wins
    assert _equal(build.scheduled_module(spec, target), hand.mod)

    _baseline(d, tuning_db.module(compute.step_primfunc(spec)), target, 5.2e-6)  # within the noise margin
    assert _equal(build.scheduled_module(spec, target), hand.mod)


def test_the_record_named_by_the_baseline_is_the_one_applied(logs):
    """The end-of-run re-measurement decides, not the luckiest search-time measurement."""
    target = targets.resolve(None)
    spec = _spec(target, units=64, batch=4)
    rule, hand = _hand(spec, target)
    lucky, steady = tune_space.hand_configs(rule, spec, target)[1:3]
    d = tuning_db.db_dir(target)
    _write_record(d, spec, target, seconds=1e-7, config=lucky)
    tuned = _write_record(d, spec, target, seconds=5e-6, config=steady)
    mod = tuning_db.module(compute.step_primfunc(spec))
    named = next(r for r in tuning_db.records_for(d, mod, target)[1] if tuning_db.record_seconds(r) == 5e-6)
    _baseline(d, mod, target, 10e-6, record=tuning_db.digest(named), tuned_seconds=6e-6)
    assert _equal(build.scheduled_module(spec, target), tuned)
    _baseline(d, mod, target, 10e-6, record=tuning_db.digest(named), tuned_seconds=9.9e-6)
    assert _equal(build.scheduled_module(spec, target), hand.mod)


def test_applied_record_computes_the_cell(logs):
    """A tuned record goes through the whole compile path and still computes the Keras v1 step."""
    from tvm_gru.ops import reference

    target = targets.resolve(None)
    spec = _spec(target, batch=2)
    rule, _ = _hand(spec, target)
    _write_record(tuning_db.db_dir(target), spec, target, seconds=1e-6, hand_seconds=1.0,
                  config=_other_config(rule, spec, target))
    assert tuning_db.lookup(compute.step_primfunc(spec), target) is not None
    import tvm_gru

    cell = tvm_gru.GRUCell(16, seed=1)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 8)).astype("float32")
    h = rng.uniform(-1, 1, (2, 16)).astype("float32")
    out, [new_h] = cell(x, [h])
    ref = reference.step(cell.config, x, h, *cell.get_weights())
    np.testing.assert_allclose(out, ref, atol=tolerance("float32", ref))


@pytest.mark.parametrize("change", [
    {"units": 24}, {"input_dim": 16}, {"batch": 2}, {"dtype": "float64"}, {"reset_after": True},
    {"recurrent_activation": "sigmoid"}, {"use_bias": False}, {"activation": "relu"},
], ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_record_for_another_workload_is_never_applied(logs, change):
    target = targets.resolve(None)
    _write_record(tuning_db.db_dir(target), _spec(target), target, seconds=1e-9, hand_seconds=1.0)
    shape = {k: change.pop(k) for k in ("units", "input_dim", "batch") if k in change}
    other = _spec(target, **{**SMALL, **shape}, **change)
    assert tuning_db.lookup(compute.step_primfunc(other), target) is None


def test_implementations_share_one_workload_on_simd_targets(logs):
    """Without dropout, implementation 1 and 2 are the same kernel on SIMD targets (one gate-interleaved
    packing; see tvm_gru.runtime.packing), so a record tuned for one serves the other."""
    target = targets.resolve(None)
    _write_record(tuning_db.db_dir(target), _spec(target), target, seconds=1e-9, hand_seconds=1.0)
    other = _spec(target, implementation=2)
    assert tuning_db.lookup(compute.step_primfunc(other), target) is not None


@pytest.mark.parametrize("other", [{"name": "host", "num-cores": 1}, "x86"], ids=["other-core-count", "haswell"])
def test_record_for_another_target_is_never_applied(logs, other):
    target = targets.resolve(None)
    spec = _spec(target)
    _write_record(tuning_db.db_dir(target), spec, target, seconds=1e-9, hand_seconds=1.0)
    other = targets.resolve(other)
    if tuning_db.db_dir(other) != tuning_db.db_dir(target):  # same files under the other target's folder
        shutil.copytree(tuning_db.db_dir(target), tuning_db.db_dir(other))
    assert tuning_db.lookup(compute.step_primfunc(spec), target) is not None
    assert tuning_db.lookup(compute.step_primfunc(spec), other) is None


def test_baseline_of_changed_hand_schedules_is_stale(logs):
    target = targets.resolve(None)
    spec = _spec(target)
    d = tuning_db.db_dir(target)
    _write_record(d, spec, target, seconds=1e-9, hand_seconds=1.0)
    _baseline(d, tuning_db.module(compute.step_primfunc(spec)), target, 1.0, hand_source="older-hand-schedules")
    assert tuning_db.lookup(compute.step_primfunc(spec), target) is None


def test_no_baseline_no_record_applied(logs):
    target = targets.resolve(None)
    spec = _spec(target)
    d = tuning_db.db_dir(target)
    _write_record(d, spec, target, seconds=1e-9, hand_seconds=1.0)
    (d / tuning_db.BASELINE).unlink()
    assert tuning_db.lookup(compute.step_primfunc(spec), target) is None


# ---------------------------------------------------------------- damaged logs


def test_damaged_lines_are_skipped_with_a_warning(logs, caplog):
    from tvm.s_tir import meta_schedule as ms

    target = targets.resolve(None)
    d = tuning_db.db_dir(target)
    first, second = _spec(target, units=8), _spec(target)
    _write_record(d, first, target, seconds=1e-9, hand_seconds=1.0)
    _write_record(d, second, target, seconds=1e-9, hand_seconds=1.0)
    # The first workload's line loses its end (the second keeps its slot), and the records file ends in a half line.
    lines = (d / tuning_db.WORKLOADS).read_text().splitlines()
    (d / tuning_db.WORKLOADS).write_text(lines[0][: len(lines[0]) // 2] + "\n" + lines[1] + "\n")
    with open(d / tuning_db.RECORDS, "a") as f:
        f.write('[1, [[["GetSBlock", [], ["x_pro')
    with open(d / tuning_db.BASELINE, "a") as f:
        f.write("not json\n")

    caplog.set_level(logging.WARNING, logger="tvm_gru")
    assert tuning_db.lookup(compute.step_primfunc(second), target) is not None
    assert tuning_db.lookup(compute.step_primfunc(first), target) is None
    assert "damaged line" in caplog.text

    with pytest.raises(Exception):  # what tvm_gru.build.records protects against: TVM's own reader aborts
        ms.database.JSONDatabase(work_dir=str(d))
    assert tuning_db.repair(d) == 3  # the damaged workload, its record, and the half record
    assert (d / (tuning_db.RECORDS + ".damaged")).exists()
    db = ms.database.JSONDatabase(work_dir=str(d))
    assert len(db.get_all_tuning_records()) == 1  # the second workload's record, renumbered
    assert tuning_db.lookup(compute.step_primfunc(second), target) is not None
    assert tuning_db.repair(d) == 0


# ---------------------------------------------------------------- the tuning driver


def test_hand_space_covers_the_default_config():
    target = targets.resolve(None)
    spec = _spec(target, units=64, batch=8)
    rule, _ = _hand(spec, target)
    configs = tune_space.hand_configs(rule, spec, target)
    assert configs[0] == rule.default_config(spec, target)
    assert len(configs) == len(set(configs)) > 4
    assert all(c.unit_blocks * c.batch_tile <= 16 for c in configs)


def test_tune_arguments_are_checked():
    with pytest.raises(ValueError, match="space"):
        tune.tune(**SMALL, space="everything")
    with pytest.raises(ValueError, match="rpc_key"):
        tune.tune(**SMALL, rpc_tracker="127.0.0.1:9190")
    with pytest.raises(TypeError, match="trials"):
        tune.tune(**SMALL, trials=2.5)


@pytest.mark.parametrize("text, expected", [("127.0.0.1:9190", ("127.0.0.1", 9190)),
                                            ("tracker.lan:1", ("tracker.lan", 1)), (("h", "5"), ("h", 5))])
def test_parse_tracker(text, expected):
    assert tune_measure.parse_tracker(text) == expected


@pytest.mark.parametrize("text", ["9190", "host:", ":9190", "host:port"])
def test_parse_tracker_rejects(text):
    with pytest.raises(ValueError, match="HOST:PORT"):
        tune_measure.parse_tracker(text)


def test_cli_registers_tune():
    from tvm_gru import cli
    from tvm_gru.cli import tune_command

    args = cli.build_parser().parse_args(["tune", "--units", "16", "--input-dim", "8", "--trials", "3",
                                          "--rpc-tracker", "h:1", "--rpc-key", "k"])
    assert args.func is tune_command._cli and args.trials == 3 and args.rpc_key == "k"


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None, reason="no aarch64 cross compiler")
def test_aarch64_candidates_export_as_shared_libraries():
    import tvm
    from tvm import te

    a = te.placeholder((8,), "float32", "a")
    b = te.compute((8,), lambda i: a[i] * 2, name="b")
    target = targets.resolve("aarch64")
    mod = tvm.IRModule({"main": te.create_prim_func([a, b])})
    path = tune_measure._export_aarch64(tune_measure._build(mod, target))
    try:
        header = Path(path).read_bytes()[:20]
        assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
    finally:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def test_tune_end_to_end_and_refresh(tmp_path, capsys):
    """A real (tiny) MetaSchedule run through the CLI, then a refresh that re-measures without new trials."""
    from tvm_gru import cli

    argv = ["tune", "--units", "16", "--input-dim", "8", "--batch", "1", "--trials", "2", "--trials-per-batch", "2",
            "--log-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    out = capsys.readouterr()
    assert "hand schedule" in out.out and "best tuned" in out.out
    assert "2/2 trials" in out.err  # the progress bar
    d = tmp_path / tuning_db.target_id(targets.resolve(None))
    assert len((d / tuning_db.RECORDS).read_text().splitlines()) == 2
    baseline = json.loads((d / tuning_db.BASELINE).read_text().splitlines()[-1])
    assert baseline["seconds"] > 0 and baseline["records"] == 2

    assert baseline["args"]["units"] == 16 and baseline["args"]["recurrent_activation"] == "hard_sigmoid"

    [again] = tune.refresh(log_dir=tmp_path, progress=False)  # re-measures, measures no new trials
    assert again.trials_run == 0 and again.records == 2 and again.spec.key() == baseline["spec"]
    assert len((d / tuning_db.BASELINE).read_text().splitlines()) == 2


# ---------------------------------------------------------------- interruption and RPC (slow)


def _tune_cmd(log_dir, trials, extra=()):
    return [sys.executable, "-m", "tvm_gru.cli", "tune", "--units", "16", "--input-dim", "8", "--batch", "1",
            "--trials", str(trials), "--trials-per-batch", "2", "--log-dir", str(log_dir), *extra]


def _wait_for_records(path: Path, n: int, proc, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.exists() and len(path.read_bytes().splitlines()) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise TimeoutError(f"fewer than {n} records in {path} after {timeout} s")


@pytest.mark.slow
def test_interrupted_run_keeps_its_records_and_resumes(tmp_path):
    from tvm.s_tir import meta_schedule as ms

    d = tmp_path / tuning_db.target_id(targets.resolve(None))
    records = d / tuning_db.RECORDS
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    proc = subprocess.Popen(_tune_cmd(tmp_path, 12), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for_records(records, 2, proc)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "re-run the same command to resume" in err
    kept = len(records.read_text().splitlines())
    assert 2 <= kept < 12

    proc = subprocess.Popen(_tune_cmd(tmp_path, 12), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    _wait_for_records(records, kept + 2, proc)
    proc.kill()  # SIGKILL: no clean-up at all
    proc.communicate()
    with contextlib.suppress(ProcessLookupError):  # its build and timing workers, orphaned by the kill
        os.killpg(proc.pid, signal.SIGKILL)
    tuning_db.repair(d)
    kept = len(ms.database.JSONDatabase(work_dir=str(d)).get_all_tuning_records())
    assert 4 <= kept < 12

    done = subprocess.run(_tune_cmd(tmp_path, 12), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"{12 - kept} trials this run, 12 records in all" in done.stdout
    assert len(ms.database.JSONDatabase(work_dir=str(d)).get_all_tuning_records()) == 12


@pytest.mark.slow
def test_rpc_tuning_with_a_tracker_and_two_servers(tmp_path):
    from tvm.s_tir import meta_schedule as ms

    port = free_port()
    # Own process groups: the servers run each session in a worker process that terminate() alone would orphan.
    procs = [subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                               "--port", str(port), "--port-end", str(port + 1)], start_new_session=True)]
    try:
        time.sleep(2)
        for _ in range(2):
            p = free_port()
            procs.append(subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--tracker",
                                           f"127.0.0.1:{port}", "--key", "gru-test", "--host", "127.0.0.1",
                                           "--port", str(p), "--port-end", str(p + 50)], start_new_session=True))
        config = ms.runner.RPCConfig("127.0.0.1", port, "gru-test", session_timeout_sec=10)
        t0 = time.time()
        while registered_servers(config) < 2:
            assert time.time() - t0 < 300, "the RPC servers did not register with the tracker"
            time.sleep(1)
        result = tune.tune(**SMALL, trials=4, trials_per_batch=4, log_dir=tmp_path, rpc_tracker=f"127.0.0.1:{port}",
                           rpc_key="gru-test", progress=False)
    finally:
        for p in reversed(procs):
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=30)
    assert result.trials_run == 4 and result.records == 4
    assert result.tuned_seconds is not None and result.hand_seconds > 0
    baseline = json.loads((result.log_dir / tuning_db.BASELINE).read_text().splitlines()[-1])
    assert baseline["runner"].startswith(f"rpc 127.0.0.1:{port} key=gru-test (2 servers)")


def test_a_second_run_on_the_same_folder_is_refused(tmp_path):
    d = tmp_path / tuning_db.target_id(targets.resolve(None))
    with tune.locked(d):
        with pytest.raises(RuntimeError, match="another tuning run"):
            tune.tune(**SMALL, trials=1, log_dir=tmp_path, progress=False)


@pytest.mark.parametrize("where", [None, "aarch64"], ids=["host", "aarch64"])
@pytest.mark.parametrize("name", tune_space.SPACES)
def test_design_spaces_generate(name, where):
    """Also for aarch64: MetaSchedule's ARM defaults, which TuneContext builds for any "from-target" part, look up
    the ARM tensor intrinsics by name (without them: "TensorIntrin 'dot_4x4_i8i8s32_neon' is not registered")."""
    from tvm.s_tir import meta_schedule as ms

    target = targets.resolve(where)
    spec = _spec(target)
    func = compute.step_primfunc(spec)
    with tune_measure.without_tensor_intrinsics(target):
        ctx = ms.TuneContext(tuning_db.module(func), target=target, space_generator=tune_space.space(
            name, func, spec, target), search_strategy="evolutionary", num_threads=1)
    spaces = ctx.generate_design_space()
    rule, _ = tune_space.hand_rule(func, spec, target)
    hand = len(tune_space.hand_configs(rule, spec, target))
    assert len(spaces) == {"hand": hand, "rules": 1, "union": hand + 1}[name]
    assert "tvm.s_tir.tensor_intrin" not in sys.modules or sys.modules["tvm.s_tir.tensor_intrin"].__file__
