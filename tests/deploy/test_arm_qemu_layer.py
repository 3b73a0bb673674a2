"""Aarch64 GRU *layer* artifacts run under qemu-aarch64 with an arm64 Python and only numpy + apache-tvm-ffi.

Same emulation kit and skip rule as test_arm_qemu.py (``.ci/setup_qemu.sh``; skipped without it, failed under
CI). The layers are cross-compiled here, then every call runs in ONE emulated Python process through the
runtime bundled in each artifact; the host compares the results with the float64 Keras RNN oracle.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import qemu_kit, run_emulated, tolerance

import tvm_gru
from tvm_gru.ops.reference import keras_rnn
from tvm_gru.runtime.artifact import ArtifactError, load

# Runs inside the emulated arm64 Python. Each case lists calls: {"inputs", "mask"?, "h0"?} or a stream of chunks.
EMULATED = r"""
import json, sys
cases = json.load(open(sys.argv[1]))
sys.path.insert(0, cases[0]["artifact"] + "/python/tvm_gru_runtime.zip")
import numpy as np
import tvm_gru_runtime
results = {}
for case in cases:
    layer = tvm_gru_runtime.load(case["artifact"])
    assert type(layer).__name__ == "DeployedGRU", type(layer)
    data = np.load(case["inputs"])
    for i, call in enumerate(case["calls"]):
        key = f"{case['name']}/{i}"
        if layer.stateful:
            layer.reset_states()  # every call starts from zeros (a stream carries its state across its chunks)
        if "chunks" in call:
            x, axis = data[call["x"]], 0 if layer.time_major else 1
            edges = np.cumsum([0] + call["chunks"])
            outs = [layer(np.take(x, range(a, b), axis=axis)) for a, b in zip(edges[:-1], edges[1:])]
            results[key] = np.concatenate(outs, axis=axis)
            results[key + "/state"] = layer.states[0]
            continue
        kwargs = {}
        if "mask" in call:
            kwargs["mask"] = data[call["mask"]]
        if "h0" in call:
            kwargs["initial_state"] = [data[call["h0"]]]
        out = layer(data[call["x"]], **kwargs)
        if layer.return_state:
            out, state = out
            results[key + "/state"] = state
        results[key] = out
try:
    tvm_gru_runtime.load(sys.argv[3])
    results["tamper"] = np.array("not detected")
except tvm_gru_runtime.ArtifactError as err:
    results["tamper"] = np.array(str(err))
results["modules"] = np.array(sorted(m for m in sys.modules if m == "tvm" or m.startswith("tvm.")))
np.savez(sys.argv[2], **results)
"""

# name -> (layer kwargs, units, input_dim, batch sizes, target)
CONFIGS = {
    # big enough for the 4-part schedule (the kernel's aarch64 spin barrier, gate panels from 8 steps)
    "v1_default_128": (dict(return_sequences=True, return_state=True), 128, 64, (1, 3),
                       {"name": "aarch64", "mcpu": "cortex-a72"}),
    "sigmoid_ra_backwards_masked": (dict(reset_after=True, recurrent_activation="sigmoid", go_backwards=True,
                                         return_state=True), 20, 12, (2,), "aarch64"),
    "stateful_time_major": (dict(stateful=True, time_major=True, return_sequences=True), 24, 8, (2,), "aarch64"),
    "float64_masked_zero": (dict(dtype="float64", zero_output_for_mask=True, return_sequences=True), 9, 5, (2,),
                            "aarch64"),
}


def _layer(name, seed):
    kwargs, units, input_dim, _, _ = CONFIGS[name]
    layer = tvm_gru.GRU(units, seed=seed, **kwargs)
    rng = np.random.default_rng(seed)
    dt = layer.cell.dtype
    scale = min(0.6, 2.0 / np.sqrt(units + input_dim))
    shapes = [(input_dim, 3 * units), (units, 3 * units)] + ([layer.cell.config.bias_shape] if layer.use_bias else [])
    layer.set_weights([rng.uniform(-scale, scale, s).astype(dt) for s in shapes])
    return layer


def _oracle(layer, x, h0=None, mask=None):
    """(outputs as the layer returns them, final state), float64, for x / mask in the layer's layout."""
    tm = layer.time_major
    xs = np.asarray(x, np.float64) if tm else np.asarray(x, np.float64).transpose(1, 0, 2)
    h0 = np.zeros((xs.shape[1], layer.units)) if h0 is None else h0
    if mask is not None and not tm:
        mask = mask.T
    outs, state = keras_rnn(layer.cell.config, xs, h0, *layer.get_weights(), mask=mask,
                            zero_output_for_mask=layer.zero_output_for_mask, go_backwards=layer.go_backwards)
    if layer.return_sequences:
        return (outs if tm else outs.transpose(1, 0, 2)), state
    return outs[-1], state


@pytest.fixture(scope="module")
def emulated_run(tmp_path_factory):
    kit = qemu_kit()
    root = tmp_path_factory.mktemp("qemu_layer")
    rng = np.random.default_rng(0)
    cases, expected, layers = [], {}, {}
    for i, (name, (_, units, input_dim, batches, target)) in enumerate(CONFIGS.items()):
        layer = layers[name] = _layer(name, seed=i)
        art = layer.export(root / name, target=target, batch=batches)
        dt, tm = layer.cell.dtype, layer.time_major
        inputs, calls = {}, []

        def shaped(batch, steps):
            return (steps, batch, input_dim) if tm else (batch, steps, input_dim)

        for batch in batches:
            for steps in (1, 17):  # two lengths from one artifact
                key = f"x{batch}_{steps}"
                inputs[key] = rng.uniform(-1, 1, shaped(batch, steps)).astype(dt)
                calls.append({"x": key})
                expected[f"{name}/{len(calls) - 1}"] = _oracle(layer, inputs[key])
            if not layer.stateful:  # a mask (holes, an empty row) and an initial state
                steps = 9
                mask = np.arange(steps)[None, :] < rng.integers(0, steps + 1, batch)[:, None]
                mask[0, 1] = False
                inputs[f"m{batch}"] = mask.T.copy() if tm else mask
                inputs[f"x{batch}_m"] = rng.uniform(-1, 1, shaped(batch, steps)).astype(dt)
                inputs[f"h{batch}"] = rng.uniform(-1, 1, (batch, units)).astype(dt)
                calls.append({"x": f"x{batch}_m", "mask": f"m{batch}", "h0": f"h{batch}"})
                expected[f"{name}/{len(calls) - 1}"] = _oracle(layer, inputs[f"x{batch}_m"], inputs[f"h{batch}"],
                                                               inputs[f"m{batch}"])
            else:  # streaming, chunk by chunk, equals one call on the whole sequence
                calls.append({"x": f"x{batch}_17", "chunks": [1, 1, 4, 11]})
                expected[f"{name}/{len(calls) - 1}"] = _oracle(layer, inputs[f"x{batch}_17"])
        np.savez(root / f"{name}.npz", **inputs)
        cases.append({"name": name, "artifact": str(art), "inputs": str(root / f"{name}.npz"), "calls": calls})
    tampered = root / "tampered"
    shutil.copytree(cases[0]["artifact"], tampered)
    blob = bytearray((tampered / "kernel.so").read_bytes())
    blob[len(blob) // 3] ^= 0x01
    (tampered / "kernel.so").write_bytes(blob)
    return cases, expected, run_emulated(kit, root, EMULATED, cases, tampered), layers


def test_layer_artifacts_are_aarch64_with_their_runtime(emulated_run):
    cases, _, _, _ = emulated_run
    for case in cases:
        art = Path(case["artifact"])
        meta = json.loads((art / "tvm_gru_artifact.json").read_text())
        assert meta["kind"] == "layer" and meta["target"]["family"] == "aarch64"
        for lib in [art / "kernel.so", *(art / "lib").iterdir()]:
            head = lib.read_bytes()[:20]
            assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183, lib  # EM_AARCH64
        assert [e["path"] for e in meta["runtime_libs"]] == ["lib/libtvm_runtime.so"]
    big = json.loads((Path(cases[0]["artifact"]) / "tvm_gru_artifact.json").read_text())
    assert b"TVMBackendParallelLaunch" in (Path(cases[0]["artifact"]) / "kernel.so").read_bytes()
    assert big["target"]["tvm"]["mcpu"] == "cortex-a72"


def test_every_call_matches_the_oracle_under_emulation(emulated_run):
    _, expected, results, layers = emulated_run
    assert sorted(expected) == sorted(k for k in results if k.count("/") == 1)
    for key, (out, state) in expected.items():
        dt = layers[key.split("/")[0]].cell.dtype
        got = results[key]
        assert got.shape == out.shape and got.dtype == np.dtype(dt), key
        err = float(np.max(np.abs(got - out)))
        assert err <= tolerance(dt, out), f"{key}: max err {err:.3e}"
        if key + "/state" in results:
            err = float(np.max(np.abs(results[key + "/state"] - state)))
            assert err <= tolerance(dt, state), f"{key} state: max err {err:.3e}"


def test_emulated_runtime_imports_no_tvm_and_rejects_tampering(emulated_run):
    _, _, results, _ = emulated_run
    assert results["modules"].size == 0, results["modules"]
    assert "damaged or was modified" in str(results["tamper"])


def test_aarch64_layer_refused_on_this_host(emulated_run):
    import platform  # noqa: PLC0415

    if platform.machine() != "x86_64":
        pytest.skip("needs an x86_64 host")
    cases, _, _, _ = emulated_run
    with pytest.raises(ArtifactError, match="built for aarch64 .* cannot run on this x86_64 machine"):
        load(cases[1]["artifact"])


def test_layer_artifact_sizes(emulated_run):
    """Report what a layer artifact weighs on the board (kernel + runtime lib + weights + loader)."""
    cases, _, _, _ = emulated_run
    art = Path(cases[0]["artifact"])
    listed = json.loads((art / "tvm_gru_artifact.json").read_text())["files"]
    sizes = {rel: (art / rel).stat().st_size for rel in listed}
    total = sum(sizes.values())
    print(f"aarch64 layer artifact (128 units, 64 inputs, batch 1 and 3, masked + plain): "
          f"{total / 1e6:.2f} MB: " + ", ".join(f"{k} {v / 1e3:.0f} kB" for k, v in sizes.items() if v > 20e3))
    assert sizes["kernel.so"] < 2e6 and total < 8e6
