"""A saved Keras model run by ``tvm_gru.Model.from_keras`` against TensorFlow (``model.predict`` and the eager
call ``model(x, training=False)``) and onnxruntime on the tf2onnx conversion of the same model.

    python benchmarks/keras_bench.py --tf-python /tmp/tfenv/bin/python --out bench_keras
    python benchmarks/keras_bench.py --tf-python /tmp/tfenv/bin/python --out bench_keras --quick

TensorFlow is not a dependency of tvm_gru: the TF side runs in another venv (``--tf-python``; see
tests/goldens/make_keras_models.py for how to make one, and ``pip install tf2onnx onnxruntime`` there for the
onnxruntime peer), as a worker process of this same script (``--worker``). The worker builds the model (a
keyword spotter: two v1 GRUs of 128 units on 40 features, Dense softmax over 12 classes, random weights), saves
it as ``.h5`` (and ``.onnx`` through tf2onnx when it is installed), times TF and writes the reference outputs.
This process then compiles the ``.h5`` with ``Model.from_keras(path, batch=[1, 8])``, checks its outputs against
TF's within 1e-4, and times it and onnxruntime. Configurations: batch 1 and 8, T=100 (``--quick``: batch 1).
The figure is the median per-call time over rounds of calls of about 50 ms each, after a warm-up. TF and the
others run in different processes, one after the other (not interleaved): run on quiet cores.

Outputs in ``--out``: ``results.md``, ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FEATURES, UNITS, CLASSES = 40, 128, 12
TOL = 1e-4


def timed(call, rounds: int, block_s: float = 0.05) -> float:
    """Median seconds per call of ``call()`` over ``rounds`` blocks of about ``block_s`` each (after a warm-up)."""
    for _ in range(3):
        call()
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < block_s:
        call()
        n += 1
    per_block = max(1, n)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(per_block):
            call()
        times.append((time.perf_counter() - start) / per_block)
    return float(np.median(times))


# ---------------------------------------------------------------------------------------- the TF worker
def worker(out: Path, configs: list, rounds: int) -> None:
    """Runs in the TF venv: build and save the model, time TF, write inputs and outputs."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf  # noqa: PLC0415
    import tf_keras as keras  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    v1 = tf.compat.v1.keras.layers
    model = keras.Sequential([keras.layers.InputLayer(input_shape=(None, FEATURES)),
                              v1.GRU(UNITS, return_sequences=True), v1.GRU(UNITS),
                              keras.layers.Dense(CLASSES, activation="softmax")])
    model.save(out / "model.h5")
    result = {"tf_version": tf.__version__, "rows": []}
    try:
        import tf2onnx  # noqa: PLC0415

        spec = [tf.TensorSpec((None, None, FEATURES), tf.float32, name="x")]
        tf2onnx.convert.from_keras(model, input_signature=spec, opset=15, output_path=str(out / "model.onnx"))
        result["onnx"] = f"tf2onnx {tf2onnx.__version__}"
    except Exception as err:  # noqa: BLE001  (any failure: the onnxruntime peer is left out, with the reason)
        result["onnx"] = f"no ONNX model: {type(err).__name__}: {str(err)[:300]}"
    arrays = {}
    rng = np.random.default_rng(0)
    for batch, steps in configs:
        x = rng.standard_normal((batch, steps, FEATURES)).astype(np.float32)
        key = f"b{batch}_t{steps}"
        arrays[f"x_{key}"] = x
        arrays[f"y_{key}"] = model.predict(x, verbose=0)
        tensor = tf.constant(x)
        result["rows"].append({"batch": batch, "steps": steps, "peer": "TF model.predict",
                               "seconds": timed(lambda: model.predict(x, verbose=0), rounds)})
        result["rows"].append({"batch": batch, "steps": steps, "peer": "TF eager model(x)",
                               "seconds": timed(lambda: model(tensor, training=False), rounds)})
    np.savez(out / "reference.npz", **arrays)
    (out / "tf.json").write_text(json.dumps(result, indent=1))


# ---------------------------------------------------------------------------------------- this process
def run_peers(out: Path, configs: list, rounds: int) -> list:
    from tvm_gru.models import Model  # noqa: PLC0415

    rows = []
    ref = np.load(out / "reference.npz")
    start = time.perf_counter()
    model = Model.from_keras(out / "model.h5", batch=sorted({b for b, _ in configs}))
    print(f"Model.from_keras: {time.perf_counter() - start:.1f} s")
    session = None
    if (out / "model.onnx").exists():
        import onnxruntime as ort  # noqa: PLC0415

        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        session = ort.InferenceSession(str(out / "model.onnx"), options, providers=["CPUExecutionProvider"])
    for batch, steps in configs:
        key = f"b{batch}_t{steps}"
        x, want = ref[f"x_{key}"], ref[f"y_{key}"]
        err = float(np.abs(model(x) - want).max())
        if err > TOL:
            raise SystemExit(f"tvm_gru differs from TF by {err} at batch {batch}, T {steps}")
        rows.append({"batch": batch, "steps": steps, "peer": "tvm_gru Model.from_keras", "max_err": err,
                     "seconds": timed(lambda: model(x), rounds)})
        if session is not None:
            name = session.get_inputs()[0].name
            got = session.run(None, {name: x})[0]
            rows.append({"batch": batch, "steps": steps, "peer": "onnxruntime (tf2onnx)",
                         "max_err": float(np.abs(got - want).max()),
                         "seconds": timed(lambda: session.run(None, {name: x}), rounds)})
    return rows


def write(out: Path, rows: list, tf_info: dict) -> None:
    lines = [f"# Keras model: 2 x v1 GRU({UNITS}) on {FEATURES} features + Dense({CLASSES}) softmax", "",
             f"TensorFlow {tf_info['tf_version']}; ONNX: {tf_info['onnx']}; {os.cpu_count()} cores; load average "
             f"{os.getloadavg()[0]:.2f}", "", "| batch | T | peer | ms per call | vs tvm_gru | max err vs TF |",
             "|---|---|---|---|---|---|"]
    for (batch, steps) in sorted({(r["batch"], r["steps"]) for r in rows}):
        group = [r for r in rows if (r["batch"], r["steps"]) == (batch, steps)]
        ours = next((r["seconds"] for r in group if r["peer"].startswith("tvm_gru")), None)
        for r in group:
            ratio = f"{r['seconds'] / ours:.2f}x" if ours else "-"
            err = f"{r['max_err']:.1e}" if "max_err" in r else "-"
            lines.append(f"| {batch} | {steps} | {r['peer']} | {r['seconds'] * 1e3:.3f} | {ratio} | {err} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"tf": tf_info, "rows": rows}, indent=1))
    print("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench_keras")
    p.add_argument("--tf-python", default=os.environ.get("TF_PYTHON", "/tmp/tfenv/bin/python"),
                   help="python of a venv with tensorflow-cpu and tf_keras (2.21)")
    p.add_argument("--quick", action="store_true", help="batch 1 only, 3 rounds")
    p.add_argument("--rounds", type=int, default=None, help="rounds per figure (default 7, quick 3)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    configs = [(1, 100)] if args.quick else [(1, 100), (8, 100)]
    rounds = args.rounds or (3 if args.quick else 7)
    if args.worker:
        worker(out, configs, rounds)
        return 0
    cmd = [args.tf_python, str(Path(__file__).resolve()), "--worker", "--out", str(out), "--rounds", str(rounds)]
    cmd += ["--quick"] if args.quick else []
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run(cmd, check=True, env=env)
    tf_info = json.loads((out / "tf.json").read_text())
    write(out, tf_info["rows"] + run_peers(out, configs, rounds), tf_info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
