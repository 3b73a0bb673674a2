"""tvm_gru.Bidirectional against the real tf_keras Bidirectional(gru_v1.GRU) (tests/goldens/bidirectional).

Every case is rebuilt from the real ``Bidirectional.get_config()`` dict, given the real weights, and called as
Keras was (``tests/goldens/make_bidirectional_goldens.py`` lists the cases and the Keras rules they pin down:
masked outputs, the backward layer's re-reversal, state order, stateful chunks, ...).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tvm_gru import Bidirectional

GOLDENS = Path(__file__).parents[1] / "goldens" / "bidirectional"
META = json.loads((GOLDENS / "cases.json").read_text())
CASES = {c["name"]: c for c in META["cases"]}
ATOL = 2e-6


@pytest.fixture(scope="module")
def arrays():
    with np.load(GOLDENS / "cases.npz") as data:
        return {k: data[k] for k in data.files}


def _outputs(arrays, name, prefix, count):
    return [arrays[f"{name}/{prefix}_{j}"] for j in range(count)]


def _check(got, want):
    got = got if isinstance(got, list) else [got]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", list(CASES))
def test_matches_tf_keras(name, arrays):
    case = CASES[name]
    wrapper = Bidirectional.from_config(case["config"])
    assert wrapper.forward_layer.zero_output_for_mask == case["forward_zero_output_for_mask"]
    assert wrapper.backward_layer.zero_output_for_mask == case["backward_zero_output_for_mask"]
    assert wrapper.forward_layer.go_backwards == case["forward_go_backwards"]
    assert wrapper.backward_layer.go_backwards == case["backward_go_backwards"]
    wrapper.set_weights([arrays[f"{name}/weights_{i}"] for i in range(case["n_weights"])])
    call = case["call"]
    kwargs = {}
    if "mask" in call:
        kwargs["mask"] = arrays[f"{name}/{call['mask']}"].astype(bool)
    if "initial_state" in call:
        kwargs["initial_state"] = [arrays[f"{name}/{k}"] for k in call["initial_state"]]
    x = arrays[f"{name}/{call['inputs']}"]
    _check(wrapper(x, training=False, **kwargs), _outputs(arrays, name, "out", case["n_outputs"]))
    if case["stateful"]:  # the next chunk starts from each direction's own final state; reset -> zeros again
        _check(wrapper(arrays[f"{name}/x2"], training=False), _outputs(arrays, name, "out2", case["n_outputs"]))
        wrapper.reset_states()
        _check(wrapper(x, training=False), _outputs(arrays, name, "out3", case["n_outputs"]))


def test_the_goldens_cover_the_keras_rules():
    covered = {key for c in META["cases"] for key in ("merge_mode", "stateful", "time_major", "uses_mask",
                                                      "uses_initial_state", "custom_backward_layer", "go_backwards",
                                                      "reset_after") if c[key]}
    assert covered >= {"merge_mode", "stateful", "time_major", "uses_mask", "uses_initial_state",
                       "custom_backward_layer", "go_backwards", "reset_after"}
    assert {c["merge_mode"] for c in META["cases"]} == {"concat", "sum", "ave", "mul", None}
