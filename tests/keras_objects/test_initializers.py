"""Tests for tvm_gru.initializers: Keras formulas, seeding, get/serialize."""

import json
import math

import numpy as np
import pytest

from tvm_gru.keras_objects import initializers as I

SHAPE = (400, 600)  # fan_in=400, fan_out=600; 240k samples
N = SHAPE[0] * SHAPE[1]
TRUNC_STD = 0.87962566103423978  # std of N(0,1) truncated to [-2, 2]


def _check_uniform(x, limit):
    """Uniform(-limit, limit): bounds respected and reached, mean 0, std limit/sqrt(3)."""
    assert x.min() >= -limit and x.max() <= limit
    assert x.max() > 0.999 * limit and x.min() < -0.999 * limit
    std = limit / math.sqrt(3)
    assert abs(x.mean()) < 5 * std / math.sqrt(N)
    assert x.std() == pytest.approx(std, rel=0.01)


def _check_truncated(x, std_after):
    """Truncated normal with post-truncation std ``std_after``, cut at 2 pre-truncation stds."""
    bound = 2 * std_after / TRUNC_STD
    assert np.abs(x).max() <= bound * (1 + 1e-6)
    assert np.abs(x).max() > 0.99 * bound
    assert abs(x.mean()) < 5 * std_after / math.sqrt(N)
    assert x.std() == pytest.approx(std_after, rel=0.01)


# ---------------------------------------------------------------- statistics


def test_glorot_uniform_limit_and_std():
    x = I.GlorotUniform(seed=1)(SHAPE)
    assert x.shape == SHAPE and x.dtype == np.float32
    _check_uniform(x, math.sqrt(6 / (400 + 600)))


def test_glorot_normal_std():
    _check_truncated(I.GlorotNormal(seed=2)(SHAPE), math.sqrt(2 / (400 + 600)))


def test_he_normal_std_and_bounds():
    _check_truncated(I.HeNormal(seed=3)(SHAPE), math.sqrt(2 / 400))


def test_he_uniform_limit():
    _check_uniform(I.HeUniform(seed=4)(SHAPE), math.sqrt(6 / 400))


def test_lecun_normal_and_uniform():
    _check_truncated(I.LecunNormal(seed=5)(SHAPE), math.sqrt(1 / 400))
    _check_uniform(I.LecunUniform(seed=6)(SHAPE), math.sqrt(3 / 400))


@pytest.mark.parametrize(
    "mode, n", [("fan_in", 400), ("fan_out", 600), ("fan_avg", 500)]
)
def test_variance_scaling_modes(mode, n):
    scale = 3.0
    _check_uniform(
        I.VarianceScaling(scale, mode, "uniform", seed=7)(SHAPE), math.sqrt(3 * scale / n)
    )
    _check_truncated(
        I.VarianceScaling(scale, mode, "truncated_normal", seed=8)(SHAPE), math.sqrt(scale / n)
    )
    x = I.VarianceScaling(scale, mode, "untruncated_normal", seed=9)(SHAPE)
    assert x.std() == pytest.approx(math.sqrt(scale / n), rel=0.01)
    # Untruncated: some samples beyond 2 std (about 4.6% of them).
    assert np.mean(np.abs(x) > 2 * math.sqrt(scale / n)) == pytest.approx(0.0455, abs=0.003)


def test_variance_scaling_normal_means_truncated_and_validation():
    assert I.VarianceScaling(distribution="normal").distribution == "truncated_normal"
    assert I.VarianceScaling(distribution="Uniform").distribution == "uniform"
    with pytest.raises(ValueError, match="scale"):
        I.VarianceScaling(scale=0.0)
    with pytest.raises(ValueError, match="mode"):
        I.VarianceScaling(mode="fan_sum")
    with pytest.raises(ValueError, match="distribution"):
        I.VarianceScaling(distribution="cauchy")


def test_compute_fans_keras_rules():
    assert I.compute_fans(()) == (1, 1)
    assert I.compute_fans((7,)) == (7, 7)
    assert I.compute_fans((400, 600)) == (400, 600)
    # conv kernel (3, 4, in=5, out=6): receptive field 12.
    assert I.compute_fans((3, 4, 5, 6)) == (60, 72)


def test_random_normal_stats():
    x = I.RandomNormal(mean=1.5, stddev=0.2, seed=10)(SHAPE)
    assert x.mean() == pytest.approx(1.5, abs=5 * 0.2 / math.sqrt(N))
    assert x.std() == pytest.approx(0.2, rel=0.01)


def test_random_uniform_stats_and_int_dtype():
    x = I.RandomUniform(minval=2.0, maxval=4.0, seed=11)(SHAPE)
    assert x.min() >= 2.0 and x.max() < 4.0
    assert x.mean() == pytest.approx(3.0, abs=0.01)
    assert x.std() == pytest.approx(2 / math.sqrt(12), rel=0.01)
    xi = I.RandomUniform(minval=0, maxval=5, seed=11)((1000,), dtype="int32")
    assert xi.dtype == np.int32 and set(np.unique(xi)) == {0, 1, 2, 3, 4}


def test_truncated_normal_bounds_and_std():
    x = I.TruncatedNormal(mean=0.5, stddev=2.0, seed=12)(SHAPE)
    assert np.abs(x - 0.5).max() <= 4.0 * (1 + 1e-6)
    assert np.abs(x - 0.5).max() > 3.95
    assert x.mean() == pytest.approx(0.5, abs=0.01)
    assert x.std() == pytest.approx(2.0 * TRUNC_STD, rel=0.01)


def test_random_initializers_reject_int_dtype():
    for init in (I.RandomNormal(), I.TruncatedNormal(), I.GlorotUniform(), I.Orthogonal()):
        with pytest.raises(ValueError, match="floating"):
            init((3, 3), dtype="int32")


# ---------------------------------------------------------------- orthogonal


def test_orthogonal_tall_has_orthonormal_columns():
    q = I.Orthogonal(seed=13)((600, 400), dtype="float64")
    np.testing.assert_allclose(q.T @ q, np.eye(400), atol=1e-10)


def test_orthogonal_wide_has_orthonormal_rows():
    q = I.Orthogonal(seed=14)((400, 600), dtype="float64")
    np.testing.assert_allclose(q @ q.T, np.eye(400), atol=1e-10)


def test_orthogonal_square_float32_and_gain():
    q = I.Orthogonal(gain=2.5, seed=15)((64, 64))
    assert q.dtype == np.float32
    np.testing.assert_allclose(q.T @ q, 2.5**2 * np.eye(64), atol=1e-4)


def test_orthogonal_flattens_leading_dims():
    q = I.Orthogonal(seed=16)((3, 4, 5), dtype="float64")
    assert q.shape == (3, 4, 5)
    m = q.reshape(12, 5)
    np.testing.assert_allclose(m.T @ m, np.eye(5), atol=1e-10)


def test_orthogonal_follows_keras_qr_sign_algorithm():
    # Keras: QR of a (max, min) standard normal matrix, q *= sign(diag(r)),
    # transposed when rows < cols.
    rows, cols = 5, 8
    a = np.random.default_rng(17).standard_normal((cols, rows))
    q, r = np.linalg.qr(a)
    expected = (q * np.sign(np.diag(r))).T
    got = I.Orthogonal(seed=17)((rows, cols), dtype="float64")
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_orthogonal_rank1_raises():
    with pytest.raises(ValueError, match="two-dimensional"):
        I.Orthogonal()((5,))


# ---------------------------------------------------------------- deterministic


def test_identity_exact_and_rank_check():
    np.testing.assert_array_equal(I.Identity()((3, 3)), np.eye(3, dtype=np.float32))
    np.testing.assert_array_equal(
        I.Identity(gain=2.0)((2, 4), dtype="float64"),
        np.array([[2.0, 0, 0, 0], [0, 2.0, 0, 0]]),
    )
    with pytest.raises(ValueError, match="2D"):
        I.Identity()((2, 2, 2))


def test_constant_zeros_ones_exact():
    c = I.Constant(0.25)((3, 2))
    assert c.dtype == np.float32 and np.all(c == 0.25)
    np.testing.assert_array_equal(I.Constant([1, 2, 3, 4])((2, 2)), [[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="does not fit"):
        I.Constant([1, 2, 3])((2, 2))
    assert np.all(I.Zeros()((4,), dtype="float64") == 0) and I.Zeros()((4,), "float64").dtype == np.float64
    assert np.all(I.Ones()((2, 3)) == 1)
    assert I.Zeros()((2,), dtype="int32").dtype == np.int32


# ---------------------------------------------------------------- seeding & dtype


ALL_RANDOM = [
    I.RandomNormal, I.RandomUniform, I.TruncatedNormal, I.VarianceScaling,
    I.GlorotUniform, I.GlorotNormal, I.HeNormal, I.HeUniform,
    I.LecunNormal, I.LecunUniform, I.Orthogonal,
]


@pytest.mark.parametrize("cls", ALL_RANDOM)
def test_seed_reproducible_and_distinct(cls):
    a = cls(seed=42)((20, 30))
    np.testing.assert_array_equal(a, cls(seed=42)((20, 30)))
    init = cls(seed=42)
    np.testing.assert_array_equal(init((20, 30)), init((20, 30)))  # same instance, same values
    assert not np.array_equal(a, cls(seed=43)((20, 30)))


@pytest.mark.parametrize("cls", ALL_RANDOM)
def test_explicit_rng_and_float64(cls):
    # An explicit rng overrides the seed and gives the same stream as that seed.
    a = cls(seed=1)((20, 30), rng=np.random.default_rng(5))
    np.testing.assert_array_equal(a, cls(seed=5)((20, 30)))
    x64 = cls(seed=5)((20, 30), dtype="float64")
    assert x64.dtype == np.float64
    # The dtype only changes the rounding, not the draws.
    np.testing.assert_allclose(x64, a, rtol=1e-6, atol=1e-7)
    assert cls(seed=5)((20, 30), dtype=np.float16).dtype == np.float16


def test_unseeded_calls_differ():
    init = I.GlorotUniform()
    assert not np.array_equal(init((50, 50)), init((50, 50)))


def test_rng_type_checked():
    with pytest.raises(TypeError, match="rng"):
        I.GlorotUniform()((2, 2), rng="nope")


# ---------------------------------------------------------------- get / serialize


@pytest.mark.parametrize(
    "name, cls",
    [
        ("glorot_uniform", I.GlorotUniform), ("GlorotUniform", I.GlorotUniform),
        ("glorot_normal", I.GlorotNormal), ("orthogonal", I.Orthogonal),
        ("Orthogonal", I.Orthogonal), ("zeros", I.Zeros), ("Zeros", I.Zeros),
        ("ones", I.Ones), ("constant", I.Constant), ("random_normal", I.RandomNormal),
        ("random_uniform", I.RandomUniform), ("truncated_normal", I.TruncatedNormal),
        ("he_normal", I.HeNormal), ("he_uniform", I.HeUniform),
        ("lecun_normal", I.LecunNormal), ("lecun_uniform", I.LecunUniform),
        ("identity", I.Identity), ("variance_scaling", I.VarianceScaling),
        ("VarianceScaling", I.VarianceScaling), ("uniform", I.RandomUniform),
        ("normal", I.RandomNormal), ("one", I.Ones), ("zero", I.Zeros),
        ("GlorotUniformV2", I.GlorotUniform), ("he_normalV2", I.HeNormal),
    ],
)
def test_get_by_name(name, cls):
    obj = I.get(name)
    assert type(obj) is cls


def test_get_dict_legacy_and_module_forms():
    legacy = {"class_name": "GlorotUniform", "config": {"seed": 7}}
    modern = {
        "module": "keras.initializers",
        "class_name": "Orthogonal",
        "config": {"gain": 2.0, "seed": 3},
        "registered_name": None,
    }
    g = I.get(legacy)
    assert type(g) is I.GlorotUniform and g.seed == 7
    o = I.get(modern)
    assert type(o) is I.Orthogonal and o.gain == 2.0 and o.seed == 3
    assert modern["config"] == {"gain": 2.0, "seed": 3}  # input not mutated
    # Old standalone-Keras form of glorot_uniform.
    vs = I.get({"class_name": "VarianceScaling",
                "config": {"scale": 1.0, "mode": "fan_avg", "distribution": "uniform", "seed": None}})
    _check_uniform(vs(SHAPE, rng=np.random.default_rng(0)), math.sqrt(6 / 1000))
    # "dtype" in a config is ignored, as Keras does.
    assert I.get({"class_name": "Zeros", "config": {"dtype": "float32"}}).get_config() == {}


def test_get_instance_class_and_none():
    init = I.HeNormal(seed=1)
    assert I.get(init) is init
    assert type(I.get(I.Orthogonal)) is I.Orthogonal
    assert I.get(None) is None


def test_get_wraps_plain_callable():
    calls = []

    def halves(shape, dtype=None):
        calls.append((shape, dtype))
        return np.full(shape, 0.5)

    init = I.get(halves)
    assert isinstance(init, I.Initializer)
    x = init((2, 3), "float64", np.random.default_rng(0))
    assert x.dtype == np.float64 and np.all(x == 0.5)
    assert calls == [((2, 3), np.dtype("float64"))]
    assert I.serialize(init) == "halves"

    def with_rng(shape, dtype=None, rng=None):
        return rng.standard_normal(shape)

    np.testing.assert_array_equal(
        I.get(with_rng)((4,), rng=np.random.default_rng(3)),
        np.random.default_rng(3).standard_normal(4).astype(np.float32),
    )


def test_get_errors():
    with pytest.raises(ValueError, match="bogus_init") as err:
        I.get("bogus_init")
    assert "glorot_uniform" in str(err.value)  # lists known names
    with pytest.raises(ValueError, match="NotAnInit"):
        I.get({"class_name": "NotAnInit", "config": {}})
    with pytest.raises(ValueError, match="class_name"):
        I.get({"config": {}})
    with pytest.raises(TypeError):
        I.get(3)


def test_serialize_exact_keras_forms():
    assert I.serialize(I.GlorotUniform()) == {"class_name": "GlorotUniform", "config": {"seed": None}}
    assert I.serialize(I.Orthogonal(gain=2.0, seed=3)) == {
        "class_name": "Orthogonal", "config": {"gain": 2.0, "seed": 3}}
    assert I.serialize(I.Zeros()) == {"class_name": "Zeros", "config": {}}
    assert I.serialize(I.Constant(3)) == {"class_name": "Constant", "config": {"value": 3}}
    assert I.serialize(I.VarianceScaling()) == {
        "class_name": "VarianceScaling",
        "config": {"scale": 1.0, "mode": "fan_in", "distribution": "truncated_normal", "seed": None},
    }
    # tf_keras >= 2.13 form (what GRUCell.get_config() writes).
    assert I.serialize(I.Zeros(), with_module=True) == {
        "module": "keras.initializers", "class_name": "Zeros", "config": {}, "registered_name": None}
    assert I.serialize(None) is None
    assert I.serialize(I.Constant(np.float32(0.5)))["config"] == {"value": 0.5}


@pytest.mark.parametrize(
    "init",
    [
        I.Zeros(), I.Ones(), I.Constant(1.5), I.RandomNormal(0.1, 0.2, seed=1),
        I.RandomUniform(-1.0, 2.0, seed=2), I.TruncatedNormal(0.3, 0.4, seed=3),
        I.VarianceScaling(2.0, "fan_out", "uniform", seed=4), I.GlorotUniform(seed=5),
        I.GlorotNormal(seed=6), I.HeNormal(seed=7), I.HeUniform(seed=8),
        I.LecunNormal(seed=9), I.LecunUniform(seed=10), I.Orthogonal(1.3, seed=11),
        I.Identity(0.7),
    ],
)
def test_round_trip(init):
    for with_module in (False, True):
        cfg = json.loads(json.dumps(I.serialize(init, with_module=with_module)))
        back = I.get(cfg)
        assert type(back) is type(init)
        assert back.get_config() == init.get_config()
        np.testing.assert_array_equal(back((6, 4)), init((6, 4)))
    assert type(type(init).from_config(init.get_config())) is type(init)
