"""Shared fixtures: golden data from the real TF v1 cell, and an isolated compile cache per session."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

GOLDENS = Path(__file__).parent / "goldens"


def load_goldens():
    meta = json.loads((GOLDENS / "cases.json").read_text())
    data = np.load(GOLDENS / "goldens.npz")
    return meta, data


@pytest.fixture(scope="session")
def goldens():
    return load_goldens()


def tolerance(dtype, reference) -> float:
    """Absolute tolerance for comparing a kernel against a reference of magnitude ``|reference|``."""
    scale = max(1.0, float(np.max(np.abs(reference)))) if np.size(reference) else 1.0
    return (2e-5 if np.dtype(dtype) == np.float32 else 1e-11) * scale


def assert_tampered_kernel_refused(artifact: Path) -> None:
    """Flip a byte of ``artifact``'s kernel.so: ``load`` must refuse it before the library is ever mapped."""
    from tvm_gru.runtime.artifact import ArtifactError, load  # noqa: PLC0415

    blob = bytearray((artifact / "kernel.so").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (artifact / "kernel.so").write_bytes(blob)
    with pytest.raises(ArtifactError, match="kernel.so is damaged or was modified"):
        load(artifact)
    maps = Path("/proc/self/maps")
    if maps.exists():
        assert str(artifact / "kernel.so") not in maps.read_text()


def biased_cell(units: int, input_dim: int, seed: int = 0, **kwargs):
    """A built ``tvm_gru.GRUCell`` with non-zero biases (zeros would hide bias-handling bugs)."""
    import tvm_gru  # noqa: PLC0415

    cell = tvm_gru.GRUCell(units, seed=seed, **kwargs)
    cell.build((1, input_dim))
    weights = cell.get_weights()
    if cell.config.use_bias:
        weights[2] = np.random.default_rng(seed).uniform(-0.5, 0.5, weights[2].shape).astype(cell.dtype)
        cell.set_weights(weights)
    return cell


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for an RPC tracker or server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def registered_servers(config) -> int:
    """RPC servers registered with a tracker (``tvm.meta_schedule.runner.RPCConfig``); 0 while it starts."""
    try:
        return config.count_num_servers()
    except ValueError:  # the tracker is still starting (importing TVM takes a while on a loaded machine)
        return 0


@pytest.fixture
def logs(tmp_path, monkeypatch):
    """An empty tuning-log root (``$TVM_GRU_TUNING_LOGS``) used at compile time, and a private compile cache, so no
    kernel compiled from other records is served from memory or disk."""
    from tvm_gru import build  # noqa: PLC0415  (conftest imports no compiler at collection)

    root = tmp_path / "logs"
    monkeypatch.setenv("TVM_GRU_TUNING_LOGS", str(root))
    monkeypatch.setenv("TVM_GRU_CACHE_DIR", str(tmp_path / "cache"))
    build.clear_memory_cache()
    yield root
    build.clear_memory_cache()


def random_weights(config, input_dim, rng, scale=0.5):
    """Keras-layout weights ``(kernel, recurrent_kernel, bias or None)`` uniform in [-scale, scale]."""
    dt = config.dtype
    k = rng.uniform(-scale, scale, (input_dim, 3 * config.units)).astype(dt)
    r = rng.uniform(-scale, scale, (config.units, 3 * config.units)).astype(dt)
    b = rng.uniform(-scale, scale, config.bias_shape).astype(dt) if config.use_bias else None
    return k, r, b


QEMU_CACHE = Path(os.environ.get("TVM_GRU_QEMU_CACHE", Path.home() / ".cache" / "tvm_gru_qemu"))


def qemu_kit() -> Path:
    """The aarch64 emulation kit (qemu-user, cross compiler, arm64 Python) of `.ci/setup_qemu.sh`: skipped without
    it, failed in CI."""
    ready = (QEMU_CACHE / ".complete-v1").exists() and shutil.which("qemu-aarch64") and shutil.which(
        "aarch64-linux-gnu-g++")
    if not ready:
        msg = f"aarch64 emulation kit missing: run `bash .ci/setup_qemu.sh` (cache {QEMU_CACHE})"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return QEMU_CACHE


def run_emulated(kit: Path, root: Path, script: str, cases: list, *extra) -> dict:
    """Run ``script`` with the arm64 Python under qemu-aarch64 on ``cases`` (written to ``root/cases.json``);
    it writes its results to ``root/out.npz``, returned as a dict. ``extra`` paths follow on its command line."""
    (root / "cases.json").write_text(json.dumps(cases))
    (root / "emulated.py").write_text(script)
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(kit / "site"), "PYTHONDONTWRITEBYTECODE": "1",
           "TVM_NUM_THREADS": "2"}
    cmd = ["qemu-aarch64", "-L", str(kit / "sysroot"), str(kit / "sysroot/usr/bin/python3.11"),
           str(root / "emulated.py"), str(root / "cases.json"), str(root / "out.npz"), *map(str, extra)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, f"emulated run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
    with np.load(root / "out.npz") as data:
        return {k: data[k] for k in data.files}


def gru_gemm_softmax_onnx(inputs=5, hidden=6, classes=4, seed=0):
    """An ONNX model with one GRU node: X (seq, batch, I) -> GRU -> Y_h (1, B, H) -> Squeeze -> Gemm -> Softmax,
    and Y as a second output (seq and batch symbolic)."""
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415  (conftest stays light to import)

    rng = np.random.default_rng(seed)
    init = {"W": (rng.standard_normal((1, 3 * hidden, inputs)) * 0.4).astype(np.float32),
            "R": (rng.standard_normal((1, 3 * hidden, hidden)) * 0.4).astype(np.float32),
            "B": (rng.standard_normal((1, 6 * hidden)) * 0.3).astype(np.float32),
            "G": rng.standard_normal((hidden, classes)).astype(np.float32),
            "c": rng.standard_normal(classes).astype(np.float32),
            "axes": np.array([0], np.int64)}
    nodes = [helper.make_node("GRU", ["X", "W", "R", "B"], ["Y", "Y_h"], hidden_size=hidden),
             helper.make_node("Squeeze", ["Y_h", "axes"], ["h"]),
             helper.make_node("Gemm", ["h", "G", "c"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)]
    graph = helper.make_graph(
        nodes, "gru_gemm", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["seq", "batch", inputs])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", classes]),
         helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["seq", 1, "batch", hidden])],
        [numpy_helper.from_array(v, k) for k, v in init.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model
