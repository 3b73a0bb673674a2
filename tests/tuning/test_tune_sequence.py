"""Tests for tvm_gru.tune_sequence and tvm_gru.build.sequence_records: the search, resume, the record allow-list,
and when a record is applied by the layers.

The tuning runs use H=16 (one unit block on this host: six candidates in all) and a few steps; the records of the
other tests are written directly, with the real kernel hashes, and a chosen time.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest
from conftest import tolerance

import tvm_gru
from tvm_gru import cli, targets
from tvm_gru.build import records as tuning_db
from tvm_gru.build import sequence as build_sequence
from tvm_gru.build import sequence_records as seq_db
from tvm_gru.ops.config import GRUConfig
from tvm_gru.ops.reference import keras_rnn
from tvm_gru.ops.sequence import SequenceSpec
from tvm_gru.schedules.sequence_rules import CPUSequenceRule, SequenceSchedule
from tvm_gru.tuning import sequence_tune

TINY = {"units": 16, "input_dim": 8, "batch": 1}


def _spec(target, units=24, input_dim=8, batch=2):
    """The spec ``tvm_gru.GRU(units)`` compiles for (B, T, I) inputs, last output only."""
    return SequenceSpec(GRUConfig(units), batch=batch, input_dim=input_dim, lanes=targets.lanes(target, "float32"),
                        return_sequences=False)


def _other(spec, target) -> SequenceSchedule:
    """Valid knobs other than the hand rule's (a serial kernel with other tiles), so an applied record shows."""
    hand = CPUSequenceRule().default_schedule(spec, target)
    return dataclasses.replace(hand, threads=1 if hand.threads > 1 else min(2, spec.blocks), gemm_rows=2,
                               unit_blocks=1, gemm_in_barrier=False)


def _record(spec, target, schedule, seconds=1e-3, tuned_seconds=5e-4, **extra) -> dict:
    hand = CPUSequenceRule().default_schedule(spec, target)
    return {"workload": spec.key(), "target": tuning_db.target_key(target), "steps": 100,
            "hand_kernel": seq_db.kernel_hash(spec, target, hand), "kernel": seq_db.kernel_hash(spec, target, schedule),
            "schedule": dataclasses.asdict(schedule), "hand_schedule": dataclasses.asdict(hand), "seconds": seconds,
            "tuned_seconds": tuned_seconds, **extra}


def _write(logs, target, lines) -> None:
    d = logs / tuning_db.target_id(target)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / seq_db.RECORDS, "a") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")


def _applied(monkeypatch) -> list:
    """The schedules of the sequence kernels compiled (or loaded from the compile cache) from now on, as repr."""
    seen = []
    cached_kernel = build_sequence.cached_kernel

    def spy(kind, fields, build):
        seen.append(fields["schedule"])
        return cached_kernel(kind, fields, build)

    monkeypatch.setattr(build_sequence, "cached_kernel", spy)
    return seen


def _layer_matches_reference(units=24, input_dim=8, batch=2, steps=9):
    layer = tvm_gru.GRU(units, seed=1)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (batch, steps, input_dim)).astype("float32")
    h0 = rng.uniform(-1, 1, (batch, units)).astype("float32")
    got = np.asarray(layer(x, initial_state=[h0]))
    outs, _ = keras_rnn(layer.cell.config, x.transpose(1, 0, 2), h0, *layer.get_weights())
    np.testing.assert_allclose(got, outs[-1], atol=tolerance("float32", outs[-1]), rtol=0)


# ---------------------------------------------------------------- the search


def test_space_is_distinct_normalised_and_starts_with_the_hand_rule():
    target = targets.resolve(None)
    spec = _spec(target, units=40, batch=3)
    rule = CPUSequenceRule()
    space, normalise = sequence_tune.sequence_space(spec, target, rule)
    assert space[0] == rule.default_schedule(spec, target)
    assert len(space) == len(set(space)) > 50
    assert all(normalise(s) == s for s in space)
    assert all(s.threads <= spec.blocks and s.batch_tile <= spec.batch for s in space)
    assert not any(s.gemm_in_barrier for s in space)  # batch 3: the kernel ignores it, so the space holds none


def test_exhaustive_run_records_every_candidate_and_the_verified_best(tmp_path, capsys):
    code = cli.main(["tune", "--sequence", "--units", "16", "--input-dim", "8", "--batch", "1", "--steps", "5",
                     "--trials", "20", "--log-dir", str(tmp_path)])
    out = capsys.readouterr()
    assert code == 0, out.err
    target = targets.resolve(None)
    d = tmp_path / tuning_db.target_id(target)
    spec = _spec(target, **TINY)
    space, _ = sequence_tune.sequence_space(spec, target, CPUSequenceRule())
    trials = seq_db.read_lines(d, seq_db.TRIALS)
    assert len(space) < 20 and len(trials) == len(space)  # exhaustive: the space is smaller than the budget
    assert {seq_db.schedule_from_json(t["schedule"]) for t in trials} == set(space)
    assert all(t["seconds"] is not None and 0 < t["seconds"] < 1e-2 for t in trials)  # all built, correct, ran
    assert f"{len(space)} candidates this run, {len(space)} in all" in out.out
    assert f"{len(space)}/20 trials" in out.err  # the progress bar
    [rec] = seq_db.read_lines(d, seq_db.RECORDS)
    assert rec["workload"] == spec.key() and rec["target"] == tuning_db.target_key(target)
    assert rec["runner"] == "local" and rec["steps"] == 5 and rec["trials"] == len(space)
    assert rec["seconds"] > 0 and rec["tuned_seconds"] > 0
    assert seq_db.schedule_from_json(rec["schedule"]) in space[1:]  # the best other than the hand rule
    assert 0 < rec["paired_ratio"] < 10
    applied = seq_db.wins(rec["seconds"], rec["tuned_seconds"], rec["paired_ratio"])
    assert ("-> applied" in out.out) == applied


@pytest.mark.parametrize("weight_dtype", ["float16", "int8"])
def test_narrow_weight_storage_is_a_workload_of_its_own(tmp_path, weight_dtype):
    """Candidates are checked against the reference on the weights as stored (every one passes), and the records
    carry the storage in their workload, so they never reach a float32 layer."""
    result = tvm_gru.tune_sequence(**TINY, weight_dtype=weight_dtype, steps=4, trials=4, log_dir=tmp_path,
                                   progress=False, verify_rounds=1)
    d = tmp_path / tuning_db.target_id(targets.resolve(None))
    trials = seq_db.read_lines(d, seq_db.TRIALS)
    assert len(trials) == 4 and all(t["seconds"] is not None and "error" not in t for t in trials)
    assert all(t["workload"].endswith(f"-w{weight_dtype}") for t in trials)
    assert result.spec.weight_dtype == weight_dtype and result.spec.key() == trials[0]["workload"]
    assert cli.main(["tune", "--units", "16", "--input-dim", "8", "--weight-dtype", weight_dtype,
                     "--log-dir", str(tmp_path)]) == 2  # the step tuning keeps float32 storage


def test_an_interrupted_run_resumes_without_measuring_again(tmp_path):
    calls = []

    def stop_after_three(done, total, best, hand):
        calls.append(done)
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tvm_gru.tune_sequence(**TINY, steps=4, trials=20, log_dir=tmp_path, progress=stop_after_three)
    d = tmp_path / tuning_db.target_id(targets.resolve(None))
    assert len(seq_db.read_lines(d, seq_db.TRIALS)) == 3
    assert not (d / seq_db.RECORDS).exists()

    result = tvm_gru.tune_sequence(**TINY, steps=4, trials=20, log_dir=tmp_path, progress=False)
    trials = seq_db.read_lines(d, seq_db.TRIALS)
    assert result.trials == len(trials) == 6 and result.trials_run == 3
    assert len({json.dumps(t["schedule"], sort_keys=True) for t in trials}) == 6  # none measured twice
    again = tvm_gru.tune_sequence(**TINY, steps=4, trials=20, log_dir=tmp_path, progress=False)
    assert again.trials_run == 0 and len(seq_db.read_lines(d, seq_db.RECORDS)) == 2  # re-measured only


def test_a_guided_search_stops_at_the_budget(tmp_path):
    result = tvm_gru.tune_sequence(24, 8, 2, steps=4, trials=5, log_dir=tmp_path, progress=False, verify_rounds=1)
    d = tmp_path / tuning_db.target_id(targets.resolve(None))
    assert result.trials_run == result.trials == 5 == len(seq_db.read_lines(d, seq_db.TRIALS))
    assert result.hand_seconds > 0 and result.schedule != result.hand_schedule


@pytest.mark.parametrize("bad, match", [({"trials": 0}, "trials"), ({"steps": -1}, "steps"),
                                        ({"rpc_tracker": "127.0.0.1:9190"}, "rpc_key")], ids=["trials", "steps", "rpc"])
def test_bad_arguments_are_refused(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        tvm_gru.tune_sequence(**TINY, log_dir=tmp_path, progress=False, **bad)


# ---------------------------------------------------------------- when records apply


def test_a_winning_record_is_applied_and_computes_the_reference(logs, monkeypatch):
    target = targets.resolve(None)
    spec = _spec(target)
    other = _other(spec, target)
    _write(logs, target, [_record(spec, target, other)])
    assert build_sequence.chosen_schedule(spec, target) == other
    seen = _applied(monkeypatch)
    _layer_matches_reference()
    assert seen == [repr(other)]


def test_a_losing_or_stale_record_is_not_applied(logs, monkeypatch):
    target = targets.resolve(None)
    spec = _spec(target)
    hand = CPUSequenceRule().default_schedule(spec, target)
    other = _other(spec, target)
    _write(logs, target, [_record(spec, target, other, tuned_seconds=0.96e-3)])  # 4 % faster: within the margin
    assert build_sequence.chosen_schedule(spec, target) == hand
    _write(logs, target, [_record(spec, target, other, paired_ratio=0.97)])  # fastest rounds win, paired ones not
    assert build_sequence.chosen_schedule(spec, target) == hand
    _write(logs, target, [_record(spec, target, other, paired_ratio=0.5)])
    assert build_sequence.chosen_schedule(spec, target) == other
    _write(logs, target, [_record(spec, target, other, hand_kernel="12345")])  # measured against another hand kernel
    assert build_sequence.chosen_schedule(spec, target) == hand
    _write(logs, target, [{**_record(spec, target, other), "target": tuning_db.target_key(targets.resolve("aarch64"))}])
    assert build_sequence.chosen_schedule(spec, target) == hand  # another target's record: the last line is not ours
    seen = _applied(monkeypatch)
    _layer_matches_reference()
    assert seen == [repr(hand)]


HOSTILE = {
    "extra_field": {"pragma_import_llvm": "define void @f() { ret void }"},
    "extra_knob": {"schedule": {"llvm_ir": "x"}},
    "threads_huge": {"schedule": {"threads": 10**9}},
    "threads_text": {"schedule": {"threads": "2"}},
    "flag_int": {"schedule": {"spin_barrier": 1}},
    "seconds_nan": {"tuned_seconds": float("nan")},
    "seconds_negative": {"tuned_seconds": -1.0},
    "paired_text": {"paired_ratio": "0.5"},
    "workload_path": {"workload": "../../etc/passwd"},
}


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_record_is_refused_with_its_file_and_line(logs, monkeypatch, caplog, name):
    target = targets.resolve(None)
    spec = _spec(target)
    hand = CPUSequenceRule().default_schedule(spec, target)
    good = _record(spec, target, _other(spec, target), seconds=1e-3, tuned_seconds=5e-4)
    change = HOSTILE[name]
    bad = {**good, **change}
    if "schedule" in change:
        bad["schedule"] = {**good["schedule"], **change["schedule"]}
    bad_json = json.dumps(bad)  # nan is written as NaN, which Python's reader takes: the range check refuses it
    # the hostile line last: were it read, it would be the newest line, and it claims to win
    _write(logs, target, [json.dumps({**good, "tuned_seconds": 2e-3}), "{damaged", bad_json])
    caplog.set_level(logging.WARNING, logger="tvm_gru")
    seen = _applied(monkeypatch)
    assert build_sequence.chosen_schedule(spec, target) == hand  # the newest valid line lost
    path = logs / tuning_db.target_id(target) / seq_db.RECORDS
    assert f"refusing the sequence tuning line at {path} line 3" in caplog.text
    assert f"skipping a damaged line in {path} (line 2)" in caplog.text
    _layer_matches_reference()
    assert seen == [repr(hand)]
    with pytest.raises(ValueError, match="refused"):
        seq_db.append_line(path.parent, seq_db.RECORDS, bad)  # the writer keeps to the same list


def test_a_new_record_is_picked_up_by_the_next_compile(logs, monkeypatch):
    target = targets.resolve(None)
    spec = _spec(target)
    hand = CPUSequenceRule().default_schedule(spec, target)
    seen = _applied(monkeypatch)
    _layer_matches_reference()
    other = _other(spec, target)
    _write(logs, target, [_record(spec, target, other)])
    _layer_matches_reference()
    assert seen == [repr(hand), repr(other)]


def test_models_build_the_recorded_knobs(logs):
    """Whole models (tvm_gru.relax.lowering) and exports take the kernel from scheduled_sequence(spec, target)."""
    import tvm_ffi

    target = targets.resolve(None)
    spec = _spec(target)
    rule = CPUSequenceRule()
    other = _other(spec, target)
    hand_mod = build_sequence.scheduled_sequence(spec, target)
    assert tvm_ffi.structural_equal(hand_mod, rule.apply(spec, target, rule.default_schedule(spec, target)))
    _write(logs, target, [_record(spec, target, other)])
    tuned_mod = build_sequence.scheduled_sequence(spec, target)
    assert tvm_ffi.structural_equal(tuned_mod, rule.apply(spec, target, other))
    assert not tvm_ffi.structural_equal(tuned_mod, hand_mod)
