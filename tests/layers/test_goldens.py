"""Every golden case from the real TF v1 cell (tests/goldens, made by tests/goldens/make_goldens.py).

Each case is rebuilt from the real tf_keras ``get_config()`` dict, given the same weights, stepped
through its sequence with the Keras call, and compared step by step.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_goldens, tolerance

import tvm_gru
from tvm_gru.ops import reference

META, DATA = load_goldens()
CASES = META["cases"]


def _weights(case):
    n = case["name"]
    return [DATA[f"{n}/kernel"], DATA[f"{n}/recurrent_kernel"]] + ([DATA[f"{n}/bias"]] if case["use_bias"] else [])


def test_golden_set_is_broad():
    cfgs = [c["config"] for c in CASES]
    assert len(CASES) >= 40
    assert {c["activation"] for c in cfgs} >= {"tanh", "sigmoid", "hard_sigmoid", "relu", "linear", "elu", "selu",
                                               "softplus", "softsign", "swish", "gelu", "exponential", "mish"}
    assert {c["reset_after"] for c in cfgs} == {True, False}
    assert {c["implementation"] for c in cfgs} == {1, 2}
    assert {c["dtype"] for c in CASES} == {"float32", "float64"}
    assert {1, 7, 257} <= {c["units"] for c in CASES} and {1, 300} <= {c["input_dim"] for c in CASES}
    assert {1, 17} <= {c["batch"] for c in CASES} and max(c["steps"] for c in CASES) >= 12


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_matches_tf_v1_cell(case):
    n = case["name"]
    cell = tvm_gru.GRUCell.from_config(case["config"])
    cell.set_weights(_weights(case))
    h = DATA[f"{n}/h0"]
    outs = []
    for x in DATA[f"{n}/x"]:
        out, [h] = cell(x, [h])
        assert out.dtype == np.dtype(case["dtype"]) and out is h
        outs.append(out)
    ref = DATA[f"{n}/out"]
    np.testing.assert_allclose(np.stack(outs), ref, rtol=0, atol=tolerance(case["dtype"], ref))


@pytest.mark.parametrize("case", CASES[::5], ids=[c["name"] for c in CASES[::5]])
def test_numpy_reference_matches_tf(case):
    """The float64 oracle used by the other tests agrees with TF itself."""
    n = case["name"]
    cell = tvm_gru.GRUCell.from_config(case["config"])
    ref = reference.sequence(cell.config, DATA[f"{n}/x"], DATA[f"{n}/h0"], *_weights(case))
    gold = DATA[f"{n}/out"]
    np.testing.assert_allclose(ref, gold, rtol=0, atol=tolerance(case["dtype"], gold))
