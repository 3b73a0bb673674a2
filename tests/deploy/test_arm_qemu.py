"""The aarch64 artifact runs under qemu-aarch64 with an arm64 Python and only numpy + apache-tvm-ffi.

Needs the emulation kit of ``.ci/setup_qemu.sh`` (qemu-user, the aarch64 cross compiler, an arm64 Python
sysroot and aarch64 wheels). Without it the tests skip, except under CI, where they fail. All artifacts
run in ONE emulated Python process (each emulated start costs ~6 s); the host compares the results with the
float64 numpy reference.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import qemu_kit, run_emulated, tolerance

import tvm_gru
from tvm_gru.deploy.export import export_cell
from tvm_gru.ops import activations, reference

ACTS = activations.names()
BATCHES = (1, 3)

# Runs inside the emulated arm64 Python: load every artifact with its bundled runtime, step, save outputs.
EMULATED = r"""
import json, sys, time
cases = json.load(open(sys.argv[1]))
sys.path.insert(0, cases[0]["artifact"] + "/python/tvm_gru_runtime.zip")
import numpy as np
import tvm_gru_runtime
results = {}
for case in cases:
    cell = tvm_gru_runtime.load(case["artifact"])
    data = np.load(case["inputs"])
    for b in cell.batch_sizes:
        x, h = data[f"x{b}"], data[f"h{b}"]
        out, new = cell(x, [h])
        assert new[0] is out and out.shape == (b, cell.units) and out.dtype == x.dtype
        results[f"{case['name']}/{b}"] = out
# a tampered artifact is refused before any library is opened
try:
    tvm_gru_runtime.load(sys.argv[3])
    results["tamper"] = np.array("not detected")
except tvm_gru_runtime.ArtifactError as err:
    results["tamper"] = np.array(str(err))
results["modules"] = np.array(sorted(m for m in sys.modules if m == "tvm" or m.startswith("tvm.")))
np.savez(sys.argv[2], **results)
"""


def _configs():
    """Every activation as the candidate and as the gate activation, both reset_after, both implementations."""
    out = []
    for i, act in enumerate(ACTS):
        out.append(dict(name=f"{act}", units=20, input_dim=12, activation=act,
                        recurrent_activation=ACTS[(i + 5) % len(ACTS)], reset_after=i % 2 == 0,
                        implementation=1 + (i // 2) % 2))
    # v1 default and the cuDNN-like config at a size whose kernels run on the parallel thread pool
    out.append(dict(name="v1_default_256", units=256, input_dim=128))
    out.append(dict(name="sigmoid_ra_256", units=256, input_dim=128, recurrent_activation="sigmoid",
                    reset_after=True, implementation=2))
    out.append(dict(name="float64_ra", units=9, input_dim=7, reset_after=True, dtype="float64"))
    out.append(dict(name="no_bias", units=16, input_dim=8, use_bias=False, recurrent_activation="sigmoid"))
    return out


def _make_cell(spec: dict, seed: int):
    kwargs = {k: v for k, v in spec.items() if k not in ("name", "input_dim")}
    cell = tvm_gru.GRUCell(seed=seed, **kwargs)
    cell.build((1, spec["input_dim"]))
    weights = cell.get_weights()
    if cell.config.use_bias:  # non-zero biases, so the bias packing is checked too
        weights[2] = np.random.default_rng(seed).uniform(-0.5, 0.5, weights[2].shape).astype(cell.dtype)
        cell.set_weights(weights)
    return cell


@pytest.fixture(scope="module")
def emulated_run(tmp_path_factory):
    kit = qemu_kit()
    root = tmp_path_factory.mktemp("qemu")
    cases, expected = [], {}
    rng = np.random.default_rng(0)
    for i, spec in enumerate(_configs()):
        cell = _make_cell(spec, seed=i)
        target = {"name": "aarch64", "mcpu": "cortex-a72"} if i % 3 == 0 else "aarch64"
        art = export_cell(cell, root / spec["name"], target=target, batch=BATCHES)
        inputs = {}
        for b in BATCHES:
            x = rng.uniform(-1, 1, (b, spec["input_dim"])).astype(cell.dtype)
            h = rng.uniform(-1, 1, (b, spec["units"])).astype(cell.dtype)
            inputs[f"x{b}"], inputs[f"h{b}"] = x, h
            expected[f"{spec['name']}/{b}"] = (reference.step(cell.config, x, h, *cell.get_weights()), cell.dtype)
        np.savez(root / f"{spec['name']}.npz", **inputs)
        cases.append({"name": spec["name"], "artifact": str(art), "inputs": str(root / f"{spec['name']}.npz")})
    tampered = root / "tampered"
    shutil.copytree(cases[0]["artifact"], tampered)
    blob = bytearray((tampered / "kernel.so").read_bytes())
    blob[-1] ^= 0xFF
    (tampered / "kernel.so").write_bytes(blob)
    return cases, expected, run_emulated(kit, root, EMULATED, cases, tampered)


def test_artifacts_are_aarch64(emulated_run):
    cases, _, _ = emulated_run
    for case in cases:
        head = (Path(case["artifact"]) / "kernel.so").read_bytes()[:20]
        assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64


def test_every_config_matches_reference_under_emulation(emulated_run):
    _, expected, results = emulated_run
    assert sorted(expected) == sorted(k for k in results if "/" in k)
    for key, (ref, dtype) in expected.items():
        got = results[key]
        err = float(np.max(np.abs(got - ref)))
        assert err <= tolerance(dtype, ref), f"{key}: max err {err:.3e}"


def test_every_activation_and_reset_after_covered():
    specs = _configs()
    assert {s.get("activation") for s in specs} >= set(ACTS)
    assert {s.get("recurrent_activation") for s in specs} >= set(ACTS)
    assert {bool(s.get("reset_after", False)) for s in specs} == {True, False}


def test_emulated_runtime_imports_no_tvm_and_rejects_tampering(emulated_run):
    _, _, results = emulated_run
    assert results["modules"].size == 0, results["modules"]
    assert "damaged or was modified" in str(results["tamper"])


def test_footprint_under_10_mb(emulated_run):
    """v1 default cell on the board: runtime lib + kernel + the apache-tvm-ffi wheel under 10 MB."""
    cases, _, _ = emulated_run
    art = Path(next(c["artifact"] for c in cases if c["name"] == "v1_default_256"))
    native = sum(f.stat().st_size for f in [art / "kernel.so", *(art / "lib").iterdir()])
    python = (art / "python" / "tvm_gru_runtime.zip").stat().st_size  # the bundled loader
    wheel = next((qemu_kit() / "wheels").glob("apache_tvm_ffi-*aarch64*.whl")).stat().st_size
    total = native + python + wheel
    print(f"aarch64 footprint: kernel+runtime libs {native / 1e6:.2f} MB, runtime loader zip {python / 1e3:.0f} kB, "
          f"apache-tvm-ffi wheel {wheel / 1e6:.2f} MB, total {total / 1e6:.2f} MB")
    assert total < 10e6


def test_neon_code_generated():
    """The ARM rule vectorises the products into 128-bit NEON FMAs (4 float32 lanes) and runs them in parallel."""
    import re  # noqa: PLC0415

    import tvm  # noqa: PLC0415

    from tvm_gru import GRUConfig, StepSpec, targets  # noqa: PLC0415
    from tvm_gru.build.step import scheduled_module  # noqa: PLC0415

    target = targets.resolve({"name": "aarch64", "mcpu": "cortex-a72"})
    for config in (GRUConfig(256), GRUConfig(256, reset_after=True, implementation=2)):
        spec = StepSpec(config, batch=1, input_dim=256, lanes=targets.lanes(target, "float32"))
        with target:
            asm = tvm.compile(scheduled_module(spec, target), target=target).mod.inspect_source("asm")
        assert len(re.findall(r"fmla\s+v\d+\.4s", asm)) >= 32, config
        assert "TVMBackendParallelLaunch" in asm
