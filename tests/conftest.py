"""Shared fixtures: golden data from the real TF v1 cell, and an isolated compile cache per session."""

from __future__ import annotations

import json
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
