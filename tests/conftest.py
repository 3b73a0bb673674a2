"""Shared fixtures: golden data from the real TF v1 cell, and an isolated compile cache per session."""

from __future__ import annotations

import json
import socket
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
