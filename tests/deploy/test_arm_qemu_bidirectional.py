"""Aarch64 *Bidirectional* artifacts run under qemu-aarch64 with an arm64 Python and only numpy + apache-tvm-ffi.

Same emulation kit and skip rule as test_arm_qemu.py (``.ci/setup_qemu.sh``; skipped without it, failed under
CI). The wrappers are cross-compiled here; every call runs in ONE emulated Python process through the runtime
bundled in each artifact; the host compares the results with the in-process wrapper (the x86 kernels, same
weights) within the float32 kernel tolerance.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import qemu_kit, run_emulated, tolerance

from tvm_gru import GRU, Bidirectional
from tvm_gru.runtime.artifact import ArtifactError, load

EMULATED = r"""
import json, pickle, sys
cases = json.load(open(sys.argv[1]))
sys.path.insert(0, cases[0]["artifact"] + "/python/tvm_gru_runtime.zip")
import numpy as np
import tvm_gru_runtime
results = {}
for case in cases:
    wrapper = tvm_gru_runtime.load(case["artifact"])
    assert type(wrapper).__name__ == "DeployedBidirectional", type(wrapper)
    data = np.load(case["inputs"])
    for i, call in enumerate(case["calls"]):
        key = f"{case['name']}/{i}"
        if wrapper.stateful:
            wrapper.reset_states()
        if "chunks" in call:
            x, axis = data[call["x"]], 0 if wrapper.time_major else 1
            edges = np.cumsum([0] + call["chunks"])
            outs = [wrapper(np.take(x, range(a, b), axis=axis)) for a, b in zip(edges[:-1], edges[1:])]
            results[key + "/0"] = outs[-1]
            results[key + "/1"], results[key + "/2"] = wrapper.states
            continue
        kwargs = {}
        if "mask" in call:
            kwargs["mask"] = data[call["mask"]]
        if "h0" in call:
            kwargs["initial_state"] = [data[k] for k in call["h0"]]
        out = wrapper(data[call["x"]], **kwargs)
        for j, array in enumerate(out if isinstance(out, list) else [out]):
            results[f"{key}/{j}"] = array
    try:
        pickle.dumps(wrapper)
        results[case["name"] + "/pickled"] = np.array("yes")
    except TypeError as err:
        results[case["name"] + "/pickled"] = np.array(str(err))
results["modules"] = np.array(sorted(m for m in sys.modules if m == "tvm" or m.startswith("tvm.")))
np.savez(sys.argv[2], **results)
"""

# name -> (GRU kwargs, Bidirectional kwargs (backward_layer: GRU kwargs), input_dim, batch sizes, target)
CONFIGS = {
    "concat_state_128": (dict(units=128, return_sequences=True, return_state=True), {}, 64, (1, 3),
                         {"name": "aarch64", "mcpu": "cortex-a72"}),
    "none_other_backward_time_major": (
        dict(units=20, return_sequences=True, time_major=True), dict(merge_mode=None, backward_layer=dict(
            units=12, reset_after=True, recurrent_activation="sigmoid", go_backwards=True, return_sequences=True,
            time_major=True)), 12, (2,), "aarch64"),
    "stateful_sum": (dict(units=24, stateful=True), dict(merge_mode="sum"), 8, (2,), "aarch64"),
}


def _wrapper(name, seed):
    layer_kwargs, wrapper_kwargs, input_dim, _, _ = CONFIGS[name]
    wrapper_kwargs = dict(wrapper_kwargs)
    if "backward_layer" in wrapper_kwargs:
        wrapper_kwargs["backward_layer"] = GRU(**wrapper_kwargs["backward_layer"])
    wrapper = Bidirectional(GRU(seed=seed, **layer_kwargs), **wrapper_kwargs)
    rng = np.random.default_rng(seed)
    weights = []
    for direction in (wrapper.forward_layer, wrapper.backward_layer):
        cfg = direction.cell.config
        scale = min(0.6, 2.0 / np.sqrt(cfg.units + input_dim))
        shapes = [(input_dim, 3 * cfg.units), (cfg.units, 3 * cfg.units), cfg.bias_shape]
        weights += [rng.uniform(-scale, scale, s).astype("float32") for s in shapes]
    wrapper.set_weights(weights)
    return wrapper


def _flat(out):
    return out if isinstance(out, list) else [out]


@pytest.fixture(scope="module")
def emulated_run(tmp_path_factory):
    kit = qemu_kit()
    root = tmp_path_factory.mktemp("qemu_bidirectional")
    rng = np.random.default_rng(0)
    cases, expected = [], {}
    for i, (name, (_, _, input_dim, batches, target)) in enumerate(CONFIGS.items()):
        wrapper = _wrapper(name, seed=i)
        art = wrapper.export(root / name, target=target, batch=batches)
        tm = wrapper.time_major
        inputs, calls = {}, []

        def shaped(batch, steps):
            return (steps, batch, input_dim) if tm else (batch, steps, input_dim)

        def expect(out):
            for j, array in enumerate(_flat(out)):
                expected[f"{name}/{len(calls) - 1}/{j}"] = array

        for batch in batches:
            for steps in (1, 17):
                key = f"x{batch}_{steps}"
                inputs[key] = rng.uniform(-1, 1, shaped(batch, steps)).astype("float32")
                calls.append({"x": key})
                if wrapper.stateful:
                    wrapper.reset_states()
                expect(wrapper(inputs[key]))
            if wrapper.stateful:  # streaming chunk by chunk (each chunk runs backwards in the backward layer)
                calls.append({"x": f"x{batch}_17", "chunks": [1, 1, 4, 11]})
                wrapper.reset_states()
                edges = np.cumsum([0, 1, 1, 4, 11])
                outs = [wrapper(inputs[f"x{batch}_17"][:, a:b]) for a, b in zip(edges[:-1], edges[1:])]
                expect([outs[-1], *wrapper.states])
                continue
            steps = 9
            mask = np.arange(steps)[None, :] < rng.integers(1, steps + 1, batch)[:, None]
            mask[0, 1] = False
            inputs[f"m{batch}"] = mask.T.copy() if tm else mask
            inputs[f"x{batch}_m"] = rng.uniform(-1, 1, shaped(batch, steps)).astype("float32")
            h0 = [rng.uniform(-1, 1, (batch, d.units)).astype("float32")
                  for d in (wrapper.forward_layer, wrapper.backward_layer)]
            inputs[f"hf{batch}"], inputs[f"hb{batch}"] = h0
            calls.append({"x": f"x{batch}_m", "mask": f"m{batch}", "h0": [f"hf{batch}", f"hb{batch}"]})
            expect(wrapper(inputs[f"x{batch}_m"], mask=inputs[f"m{batch}"], initial_state=h0))
        np.savez(root / f"{name}.npz", **inputs)
        cases.append({"name": name, "artifact": str(art), "inputs": str(root / f"{name}.npz"), "calls": calls})
    return cases, expected, run_emulated(kit, root, EMULATED, cases)


def test_bidirectional_artifacts_are_aarch64_with_one_library(emulated_run):
    cases, _, _ = emulated_run
    for case in cases:
        art = Path(case["artifact"])
        meta = json.loads((art / "tvm_gru_artifact.json").read_text())
        assert meta["kind"] == "bidirectional" and meta["target"]["family"] == "aarch64"
        assert [rel for rel in meta["files"] if rel.endswith(".so")] == ["kernel.so", "lib/libtvm_runtime.so"]
        head = (art / "kernel.so").read_bytes()[:20]
        assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64
    other = json.loads((Path(cases[1]["artifact"]) / "tvm_gru_artifact.json").read_text())
    assert other["backward"]["kernel"]["functions"]["2"]["full"] == "backward_seq_b2"


def test_every_call_matches_the_in_process_wrapper_under_emulation(emulated_run):
    _, expected, results = emulated_run
    assert sorted(expected) == sorted(k for k in results if k.count("/") == 2)
    for key, want in expected.items():
        got = results[key]
        assert got.shape == want.shape and got.dtype == want.dtype, key
        err = float(np.max(np.abs(got - want)))
        assert err <= tolerance("float32", want), f"{key}: max err {err:.3e}"
    assert float(np.abs(expected["concat_state_128/1/0"]).max()) > 0.05


def test_emulated_runtime_imports_no_tvm_and_refuses_copies(emulated_run):
    cases, _, results = emulated_run
    assert results["modules"].size == 0, results["modules"]
    for case in cases:
        assert "DeployedBidirectional cannot be pickled" in str(results[case["name"] + "/pickled"])


def test_aarch64_bidirectional_refused_on_this_host(emulated_run):
    import platform  # noqa: PLC0415

    if platform.machine() != "x86_64":
        pytest.skip("needs an x86_64 host")
    cases, _, _ = emulated_run
    with pytest.raises(ArtifactError, match="built for aarch64 .* cannot run on this x86_64 machine"):
        load(cases[0]["artifact"])
