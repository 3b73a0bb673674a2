"""Sequence tuning for aarch64 through TVM's RPC: a tracker here, TVM's own RPC server under qemu-aarch64.

As for the step (tests/tuning/test_arm_qemu_tune.py, whose tracker and server this reuses): every candidate is
compiled here, cross-linked into an aarch64 ``.so``, uploaded, checked against the numpy reference on the server
and timed there. Emulated times say nothing about an ARM board; what is checked is the pipeline (trials and the
record written from server timings) and that the tuned knobs, applied by an aarch64 export of a ``GRU`` layer,
still compute the Keras v1 layer under qemu with the minimal runtime.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import qemu_kit, run_emulated, tolerance
from test_arm_qemu_tune import KEY, rpc_kit, tracker_and_emulated_server

import tvm_gru
from tvm_gru import build, targets
from tvm_gru.build import records as tuning_db
from tvm_gru.build import sequence as build_sequence
from tvm_gru.build import sequence_records as seq_db
from tvm_gru.ops.reference import keras_rnn
from tvm_gru.ops.sequence import SequenceSpec

SHAPE = {"units": 16, "input_dim": 8, "batch": 1}
TRIALS = 3

EMULATED = r"""
import json, sys
case = json.load(open(sys.argv[1]))
sys.path.insert(0, case["artifact"] + "/python/tvm_gru_runtime.zip")
import numpy as np
import tvm_gru_runtime
layer = tvm_gru_runtime.load(case["artifact"])
data = np.load(case["inputs"])
np.savez(sys.argv[2], out=layer(data["x"], initial_state=[data["h0"]]),
         modules=np.array(sorted(m for m in sys.modules if m == "tvm" or m.startswith("tvm."))))
"""


@pytest.mark.slow
def test_tune_sequence_aarch64_over_rpc_with_an_emulated_server(tmp_path, monkeypatch, capsys):
    rpc_kit()
    kit = qemu_kit()
    target = targets.resolve("aarch64")
    log_dir = tmp_path / "logs"
    with tracker_and_emulated_server(tmp_path) as (port, server_log, _):
        result = tvm_gru.tune_sequence(**SHAPE, target="aarch64", steps=4, trials=TRIALS, verify_rounds=1,
                                       log_dir=log_dir, rpc_tracker=f"127.0.0.1:{port}", rpc_key=KEY, progress=False)
    with capsys.disabled():
        print(f"\n{result.summary()}")
    d = log_dir / tuning_db.target_id(target)
    trials = seq_db.read_lines(d, seq_db.TRIALS)
    assert result.trials_run == len(trials) == TRIALS
    assert all(t["seconds"] is not None and t["seconds"] > 0 for t in trials)  # matched the reference, timed there
    [record] = seq_db.read_lines(d, seq_db.RECORDS)
    assert record["runner"] == f"rpc 127.0.0.1:{port} key={KEY}" and "aarch64" in record["target"]
    assert record["seconds"] > 0 and record["tuned_seconds"] > 0
    server_text = server_log.read_text()
    assert "load_module" in server_text and ".so" in server_text

    # the record applied (forced where the emulated timings did not favour it) by an aarch64 export of a layer
    monkeypatch.setenv("TVM_GRU_TUNING_LOGS", str(log_dir))
    monkeypatch.setenv("TVM_GRU_CACHE_DIR", str(tmp_path / "cache"))
    build.clear_memory_cache()
    if not result.applied:
        seq_db.append_line(d, seq_db.RECORDS, {**record, "seconds": 1.0, "tuned_seconds": 1e-9})
    layer = tvm_gru.GRU(SHAPE["units"], seed=3)
    layer.build((SHAPE["batch"], 5, SHAPE["input_dim"]))
    spec = SequenceSpec(layer.cell.config, batch=SHAPE["batch"], input_dim=SHAPE["input_dim"],
                        lanes=targets.lanes(target, "float32"), return_sequences=False)
    assert spec.key() == record["workload"]
    assert build_sequence.chosen_schedule(spec, target) == seq_db.schedule_from_json(record["schedule"])
    art = layer.export(tmp_path / "gru_arm", target="aarch64", batch=SHAPE["batch"])
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (SHAPE["batch"], 7, SHAPE["input_dim"])).astype("float32")
    h0 = rng.uniform(-1, 1, (SHAPE["batch"], SHAPE["units"])).astype("float32")
    np.savez(tmp_path / "in.npz", x=x, h0=h0)
    got = run_emulated(kit, tmp_path, EMULATED, {"artifact": str(art), "inputs": str(tmp_path / "in.npz")})
    assert got["modules"].size == 0  # the deployed loader imported no TVM
    outs, _ = keras_rnn(layer.cell.config, x.transpose(1, 0, 2), h0, *layer.get_weights())
    np.testing.assert_allclose(got["out"], outs[-1], atol=tolerance("float32", outs[-1]), rtol=0)
    with capsys.disabled():
        print(f"knobs {json.dumps(record['schedule'])}: max err {float(np.max(np.abs(got['out'] - outs[-1]))):.1e} "
              "under qemu")
