"""Tests for tvm_gru.regularizers: penalties, Keras defaults, get/serialize."""

import json
import math

import numpy as np
import pytest

from tvm_gru.keras_objects import regularizers as R

# sum(|W|) = 10, sum(W**2) = 30
W = np.array([[1.0, -2.0], [3.0, -4.0]], dtype=np.float32)
F32_001 = 0.009999999776482582  # float(np.float32(0.01)), what tf_keras stores and writes


def test_penalty_values_hand_computed():
    assert R.L1(0.5)(W) == pytest.approx(5.0, abs=0)
    assert R.L2(0.25)(W) == pytest.approx(7.5, abs=0)
    assert R.L1L2(l1=0.5, l2=0.25)(W) == pytest.approx(12.5, abs=0)
    assert R.L1L2(l2=0.25)(W) == pytest.approx(7.5, abs=0)
    assert R.L1L2()(W) == 0.0
    assert R.Regularizer()(W) == 0.0
    assert isinstance(R.L2(0.25)(W), float)


def test_default_factors_are_keras_float32_rounded():
    assert R.L1().l1 == F32_001
    assert R.L2().l2 == F32_001
    assert R.L2(0.01).get_config() == {"l2": F32_001}
    assert R.L2()(W) == pytest.approx(F32_001 * 30.0, rel=1e-12)
    assert R.L1()(W) == pytest.approx(F32_001 * 10.0, rel=1e-12)
    # L1L2 class defaults to 0 for both; the l1_l2 function to 0.01 for both.
    assert R.L1L2().get_config() == {"l1": 0.0, "l2": 0.0}
    assert R.l1_l2().get_config() == {"l1": F32_001, "l2": F32_001}


def test_penalty_on_random_array_float64():
    w = np.random.default_rng(0).standard_normal((30, 40))
    reg = R.L1L2(l1=0.125, l2=0.375)  # exact in float32
    expected = 0.125 * np.abs(w).sum() + 0.375 * (w**2).sum()
    assert reg(w) == pytest.approx(expected, rel=1e-12)


def test_none_factors_and_legacy_l_keyword():
    assert R.L1L2(l1=None, l2=0.5).get_config() == {"l1": 0.0, "l2": 0.5}
    assert R.L1(None).l1 == F32_001
    assert R.L1(l=0.5).l1 == 0.5
    assert R.L2(l=0.25).l2 == 0.25
    with pytest.raises(TypeError, match="not recognized"):
        R.L2(foo=1.0)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "0.1"])
def test_invalid_factors_raise_naming_argument(bad):
    with pytest.raises(ValueError, match="l1"):
        R.L1(bad)
    with pytest.raises(ValueError, match="l2"):
        R.L2(bad)
    with pytest.raises(ValueError, match="l2"):
        R.L1L2(l1=0.1, l2=bad)


@pytest.mark.parametrize(
    "name, cls, config",
    [
        ("l1", R.L1, {"l1": F32_001}),
        ("L1", R.L1, {"l1": F32_001}),
        ("l2", R.L2, {"l2": F32_001}),
        ("L2", R.L2, {"l2": F32_001}),
        ("l1_l2", R.L1L2, {"l1": F32_001, "l2": F32_001}),
        ("L1L2", R.L1L2, {"l1": 0.0, "l2": 0.0}),
    ],
)
def test_get_by_name(name, cls, config):
    reg = R.get(name)
    assert type(reg) is cls and reg.get_config() == config


def test_get_dicts_instances_callables():
    assert R.get({"class_name": "L2", "config": {"l2": 0.01}}).get_config() == {"l2": F32_001}
    modern = {"module": "keras.regularizers", "class_name": "L1L2",
              "config": {"l1": 0.5, "l2": 0.25}, "registered_name": None}
    assert R.get(modern)(W) == pytest.approx(12.5)
    assert R.get({"class_name": "l1_l2", "config": {"l1": 0.5}}).get_config() == {"l1": 0.5, "l2": F32_001}
    reg = R.L1(0.3)
    assert R.get(reg) is reg
    assert type(R.get(R.L2)) is R.L2

    def my_penalty(w):
        return 2.0 * float(np.sum(w))

    assert R.get(my_penalty) is my_penalty
    assert R.serialize(my_penalty) == "my_penalty"
    assert R.get(None) is None


def test_get_errors():
    with pytest.raises(ValueError, match="l3") as err:
        R.get("l3")
    assert "l1_l2" in str(err.value)
    with pytest.raises(ValueError, match="Orthogonal"):
        R.get({"class_name": "Orthogonal", "config": {}})
    with pytest.raises(TypeError):
        R.get(0.01)


def test_serialize_exact_keras_forms():
    assert R.serialize(R.L2(0.01)) == {"class_name": "L2", "config": {"l2": F32_001}}
    assert R.serialize(R.L1L2(0.01, 0.02)) == {
        "class_name": "L1L2", "config": {"l1": F32_001, "l2": 0.019999999552965164}}
    assert R.serialize(R.L1(), with_module=True) == {
        "module": "keras.regularizers", "class_name": "L1",
        "config": {"l1": F32_001}, "registered_name": None}
    assert R.serialize(None) is None


@pytest.mark.parametrize("reg", [R.L1(0.3), R.L2(0.07), R.L1L2(0.2, 0.001), R.l1_l2()])
def test_round_trip(reg):
    for with_module in (False, True):
        back = R.get(json.loads(json.dumps(R.serialize(reg, with_module=with_module))))
        assert type(back) is type(reg)
        assert back.get_config() == reg.get_config()
        assert back(W) == reg(W)
        assert math.isfinite(back(W))
