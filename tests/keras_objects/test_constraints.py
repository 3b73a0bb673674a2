"""Tests for tvm_gru.constraints: Keras formulas, dtype, get/serialize."""

import json
import math

import numpy as np
import pytest

from tvm_gru.keras_objects import constraints as C

EPS = 1e-7


def example_array(dtype=np.float64):
    """The tf_keras constraints_test array: (100, 100) in [-50, 50), one exact 0."""
    a = np.random.default_rng(3537).random((100, 100)) * 100.0 - 50.0
    a[0, 0] = 0.0
    return a.astype(dtype)


# ---------------------------------------------------------------- MaxNorm


def test_max_norm_keras_explicit_example():
    # From tf_keras' own test: columns with norms 0, 1, 3, 3*sqrt(3), max 2.
    x = np.array([[0, 0, 0], [1.0, 0, 0], [3, 0, 0], [3, 3, 3]]).T
    target = np.array(
        [[0, 0, 0], [1.0, 0, 0], [2.0, 0, 0], [2 / np.sqrt(3)] * 3]
    ).T
    np.testing.assert_allclose(C.MaxNorm(2.0)(x), target, rtol=1e-5)


@pytest.mark.parametrize("m", [0.1, 0.5, 3, 8, 1e-7])
def test_max_norm_bounds_column_norms(m):
    out = C.MaxNorm(m)(example_array())
    assert np.all(np.linalg.norm(out, axis=0) < m)


def test_max_norm_exact_formula_and_axis():
    w = np.array([[3.0, 0.3], [4.0, 0.4]])  # column norms 5 and 0.5; row norms ~3.01, ~4.02
    out = C.MaxNorm(1.0)(w)
    np.testing.assert_array_equal(
        out, np.array([[3.0 / (5 + EPS), 0.3 * 0.5 / (0.5 + EPS)],
                       [4.0 / (5 + EPS), 0.4 * 0.5 / (0.5 + EPS)]])
    )
    rows = C.MaxNorm(1.0, axis=1)(w)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), [1.0, 1.0], rtol=1e-6)
    assert np.all(C.MaxNorm()(np.zeros((3, 2))) == 0)  # no NaN from 0/0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_constraints_keep_dtype_and_shape(dtype):
    w = example_array(dtype)[:10, :7]
    for c in (C.MaxNorm(), C.NonNeg(), C.UnitNorm(), C.MinMaxNorm(), C.MinMaxNorm(axis=[0, 1])):
        out = c(w)
        assert out.dtype == dtype and out.shape == w.shape


# ---------------------------------------------------------------- NonNeg / UnitNorm


def test_non_neg_zeroes_negatives_exactly():
    w = np.array([[-1.5, 0.0, 2.0], [3.0, -0.0, -1e-9]], dtype=np.float32)
    np.testing.assert_array_equal(C.NonNeg()(w), [[0.0, 0.0, 2.0], [3.0, 0.0, 0.0]])
    out = C.NonNeg()(example_array())
    assert np.all(out >= 0) and np.all(out.min(axis=1) == 0.0)
    a = example_array()
    np.testing.assert_array_equal(out[a > 0], a[a > 0])


def test_unit_norm_gives_unit_columns():
    out = C.UnitNorm()(example_array())
    np.testing.assert_allclose(np.linalg.norm(out, axis=0), 1.0, atol=1e-7)
    w = np.array([[3.0], [4.0]])
    np.testing.assert_array_equal(C.UnitNorm()(w), w / (EPS + 5.0))
    rows = C.UnitNorm(axis=1)(example_array(np.float32))
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)


def test_unit_norm_over_several_axes():
    w = np.random.default_rng(1).standard_normal((3, 3, 2, 4))
    out = C.UnitNorm(axis=[0, 1, 2])(w)
    np.testing.assert_allclose(np.sqrt((out**2).sum(axis=(0, 1, 2))), 1.0, atol=1e-7)


# ---------------------------------------------------------------- MinMaxNorm


@pytest.mark.parametrize("m", [0.1, 0.5, 3, 8])
def test_min_max_norm_bounds(m):
    out = C.MinMaxNorm(min_value=m, max_value=2 * m)(example_array())
    norms = np.linalg.norm(out, axis=0)
    assert np.all(norms >= m * (1 - 1e-6)) and np.all(norms <= 2 * m + 1e-5)


def test_min_max_norm_rate_formula():
    w = np.array([[3.0, 0.03], [4.0, 0.04]])  # column norms 5 and 0.05
    out = C.MinMaxNorm(min_value=0.1, max_value=1.0, rate=0.5)(w)
    desired = np.array([0.5 * 1.0 + 0.5 * 5.0, 0.5 * 0.1 + 0.5 * 0.05])
    expected = w * desired / (EPS + np.array([5.0, 0.05]))
    np.testing.assert_allclose(out, expected, rtol=1e-15)
    np.testing.assert_allclose(np.linalg.norm(out, axis=0), [3.0, 0.075], rtol=1e-5)


def test_min_max_norm_max_below_min_uses_min():
    # backend.clip raises max_value to min_value when it is smaller.
    w = np.array([[3.0], [4.0]])
    out = C.MinMaxNorm(min_value=2.0, max_value=1.0)(w)
    np.testing.assert_allclose(np.linalg.norm(out), 2.0, rtol=1e-6)


# ---------------------------------------------------------------- RadialConstraint


def test_radial_constraint_matches_keras_code():
    # tf_keras' code (not its docstring): even size, 2x2 centre k[1, 1] = 5,
    # outer ring k[3, 3] = 15.
    k = np.arange(16, dtype=np.float32).reshape(4, 4, 1, 1)
    expected4 = np.array([[15, 15, 15, 15], [15, 5, 5, 15], [15, 5, 5, 15], [15, 15, 15, 15]])
    np.testing.assert_array_equal(C.RadialConstraint()(k)[..., 0, 0], expected4)
    k = np.arange(25, dtype=np.float32).reshape(5, 5, 1, 1)
    # Odd size: centre k[1, 1] = 6, rings k[2, 2] = 12 and k[3, 3] = 18.
    expected5 = np.full((5, 5), 18.0)
    expected5[1:4, 1:4] = 12.0
    expected5[2, 2] = 6.0
    np.testing.assert_array_equal(C.RadialConstraint()(k)[..., 0, 0], expected5)


@pytest.mark.parametrize("width", [3, 4, 5, 6])
def test_radial_constraint_ring_count(width):
    w = np.random.default_rng(3537).random((width, width, 2, 2))
    out = C.RadialConstraint()(w)
    assert out.shape == w.shape and out.dtype == w.dtype
    for c in range(2):
        for k in range(2):
            assert len(set(out[..., c, k].ravel())) == math.ceil(width / 2)


def test_radial_constraint_needs_rank4():
    with pytest.raises(ValueError, match="rank 4"):
        C.RadialConstraint()(np.zeros((3, 3)))


# ---------------------------------------------------------------- get / serialize


@pytest.mark.parametrize(
    "name, cls",
    [
        ("max_norm", C.MaxNorm), ("MaxNorm", C.MaxNorm), ("maxnorm", C.MaxNorm),
        ("non_neg", C.NonNeg), ("NonNeg", C.NonNeg), ("nonneg", C.NonNeg),
        ("unit_norm", C.UnitNorm), ("UnitNorm", C.UnitNorm), ("unitnorm", C.UnitNorm),
        ("min_max_norm", C.MinMaxNorm), ("MinMaxNorm", C.MinMaxNorm),
        ("radial_constraint", C.RadialConstraint), ("RadialConstraint", C.RadialConstraint),
    ],
)
def test_get_by_name(name, cls):
    assert type(C.get(name)) is cls


def test_get_dicts_instances_callables():
    c = C.get({"class_name": "MaxNorm", "config": {"max_value": 3, "axis": 1}})
    assert type(c) is C.MaxNorm and c.get_config() == {"max_value": 3, "axis": 1}
    modern = {"module": "keras.constraints", "class_name": "UnitNorm",
              "config": {"axis": [0, 1]}, "registered_name": None}
    assert C.get(modern).axis == [0, 1]
    inst = C.NonNeg()
    assert C.get(inst) is inst
    assert type(C.get(C.MaxNorm)) is C.MaxNorm

    def clip_one(w):
        return np.clip(w, -1, 1)

    assert C.get(clip_one) is clip_one
    assert C.serialize(clip_one) == "clip_one"
    assert C.get(None) is None


def test_get_errors():
    with pytest.raises(ValueError, match="max_nrom") as err:
        C.get("max_nrom")
    assert "max_norm" in str(err.value)
    with pytest.raises(TypeError):
        C.get(2.0)


def test_serialize_exact_keras_forms():
    assert C.serialize(C.MaxNorm()) == {"class_name": "MaxNorm", "config": {"max_value": 2, "axis": 0}}
    assert C.serialize(C.NonNeg()) == {"class_name": "NonNeg", "config": {}}
    assert C.serialize(C.MinMaxNorm()) == {
        "class_name": "MinMaxNorm",
        "config": {"min_value": 0.0, "max_value": 1.0, "rate": 1.0, "axis": 0}}
    assert C.serialize(C.UnitNorm(axis=(0, 1)), with_module=True) == {
        "module": "keras.constraints", "class_name": "UnitNorm",
        "config": {"axis": [0, 1]}, "registered_name": None}
    assert C.serialize(None) is None


@pytest.mark.parametrize(
    "con",
    [C.MaxNorm(1.5, axis=1), C.NonNeg(), C.UnitNorm(axis=[0, 1]),
     C.MinMaxNorm(0.2, 0.9, 0.5, axis=1), C.RadialConstraint()],
)
def test_round_trip(con):
    w = np.random.default_rng(2).standard_normal((3, 3, 2, 2))
    for with_module in (False, True):
        back = C.get(json.loads(json.dumps(C.serialize(con, with_module=with_module))))
        assert type(back) is type(con)
        assert back.get_config() == con.get_config()
        np.testing.assert_array_equal(back(w), con(w))
