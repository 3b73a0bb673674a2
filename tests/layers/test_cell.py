"""GRUCell API: Keras call conventions, configs, weights, initializers, regularizers, constraints, dropout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import GOLDENS

import tvm_gru
from tvm_gru.keras_objects import constraints, regularizers
from tvm_gru.ops import reference

KERAS_CONFIGS = {e["name"]: e for e in json.loads((GOLDENS / "keras_configs.json").read_text())}


def _data(batch=3, input_dim=5, units=7, dtype="float32", seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(-1, 1, (batch, input_dim)).astype(dtype), rng.uniform(-1, 1, (batch, units)).astype(dtype))


def _ref(cell, x, h, **masks):
    return reference.step(cell.config, x, h, *cell.get_weights(), **masks)


# ----------------------------------------------------------------------------- call conventions
def test_call_conventions_match_keras():
    cell = tvm_gru.GRUCell(7, seed=1)
    x, h = _data()
    out, new = cell(x, [h])
    assert isinstance(new, list) and len(new) == 1 and new[0] is out
    out_t, new_t = cell(x, (h,))
    assert isinstance(new_t, list)
    out_b, new_b = cell(x, h)
    assert new_b is out_b and isinstance(out_b, np.ndarray)
    out_j, _ = cell(x, [h, np.full((9, 9), np.nan)])  # only states[0] is read
    for o in (out_t, out_b, out_j):
        np.testing.assert_array_equal(o, out)
    np.testing.assert_allclose(out, _ref(cell, x, h), atol=2e-6)
    assert cell.state_size == 7 and cell.output_size == 7 and cell.built


def test_outputs_are_fresh_arrays():
    """Keras returns a new tensor per step: earlier states must survive later calls."""
    cell = tvm_gru.GRUCell(4, seed=0)
    x, h = _data(units=4)
    states = [h]
    for _ in range(3):
        out, [h] = cell(x, [h])
        states.append(h)
    assert len({id(s) for s in states}) == 4
    expect = states[0]
    for s in states[1:]:
        expect = _ref(cell, x, expect)
        np.testing.assert_allclose(s, expect, atol=3e-6)


def test_float_inputs_are_cast_and_noncontiguous_accepted():
    cell = tvm_gru.GRUCell(6, seed=2)
    x, h = _data(units=6)
    out32, _ = cell(x, [h])
    out64, _ = cell(x.astype(np.float64), [h.astype(np.float64)])
    assert out64.dtype == np.float32
    h16 = h.astype(np.float16)
    out16, _ = cell(x.astype(np.float16), [h16])
    np.testing.assert_allclose(out16, _ref(cell, x.astype(np.float16), h16), atol=2e-6)
    wide = np.zeros((3, 10), np.float32)
    wide[:, ::2] = x
    out_nc, _ = cell(wide[:, ::2], [np.asfortranarray(h)])
    np.testing.assert_array_equal(out_nc, out32)
    np.testing.assert_allclose(out64, out32, atol=1e-6)


def test_misaligned_numpy_arrays_do_not_crash():
    cell = tvm_gru.GRUCell(16, seed=3)
    x, h = _data(batch=2, input_dim=8, units=16)
    expect, _ = cell(x, [h])
    raw = np.zeros(2 * 8 + 3, np.float32)
    xm = raw[1:17].reshape(2, 8)  # 4-byte offset: not 16/32/64-byte aligned
    xm[...] = x
    rawh = np.zeros(2 * 16 + 5, np.float32)
    hm = rawh[3:35].reshape(2, 16)
    hm[...] = h
    assert xm.ctypes.data % 64 != 0 and hm.ctypes.data % 64 != 0
    out, _ = cell(xm, [hm])
    np.testing.assert_array_equal(out, expect)


def test_dlpack_tensor_input():
    import tvm_ffi

    cell = tvm_gru.GRUCell(5, seed=4)
    x, h = _data(units=5)
    out, _ = cell(tvm_ffi.from_dlpack(x), [tvm_ffi.from_dlpack(h)])
    np.testing.assert_allclose(out, _ref(cell, x, h), atol=2e-6)


def test_get_initial_state():
    cell = tvm_gru.GRUCell(5)
    x, _ = _data(batch=4, units=5)
    s = cell.get_initial_state(inputs=x)
    assert s.shape == (4, 5) and s.dtype == np.float32 and not s.any()
    s64 = cell.get_initial_state(batch_size=3, dtype=np.float64)
    assert s64.shape == (3, 5) and s64.dtype == np.float64
    with pytest.raises(ValueError, match="batch_size"):
        cell.get_initial_state()


def test_empty_batch():
    cell = tvm_gru.GRUCell(5, seed=0)
    out, [h] = cell(np.zeros((0, 3), np.float32), [np.zeros((0, 5), np.float32)])
    assert out.shape == (0, 5)


# ----------------------------------------------------------------------------- implementations, dtypes
@pytest.mark.parametrize("reset_after", [False, True], ids=["ra0", "ra1"])
@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "nobias"])
def test_implementation_1_and_2_agree(reset_after, use_bias):
    kw = dict(reset_after=reset_after, use_bias=use_bias, seed=5, bias_initializer="random_uniform")
    c1 = tvm_gru.GRUCell(9, implementation=1, **kw)
    c2 = tvm_gru.GRUCell(9, implementation=2, **kw)
    x, h = _data(batch=2, input_dim=4, units=9)
    c1.build(x.shape)
    c2.set_weights(c1.get_weights())
    o1, _ = c1(x, [h])
    o2, _ = c2(x, [h])
    assert c1.config.implementation == 1 and c2.config.implementation == 2
    np.testing.assert_allclose(o1, o2, atol=5e-7)
    np.testing.assert_allclose(o1, _ref(c1, x, h), atol=2e-6)


def test_implementation_3_behaves_as_2():
    assert tvm_gru.GRUCell(3, implementation=3).config.implementation == 2


def test_float64_cell_is_exact():
    cell = tvm_gru.GRUCell(11, dtype="float64", seed=6, bias_initializer="random_normal")
    x, h = _data(batch=2, input_dim=6, units=11, dtype="float64")
    out, _ = cell(x, [h])
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, _ref(cell, x, h), atol=1e-13)


# ----------------------------------------------------------------------------- configs
def test_get_config_has_keras_keys_and_round_trips():
    cell = tvm_gru.GRUCell(6, kernel_regularizer="l2", recurrent_constraint="max_norm", dropout=0.25, seed=3)
    cfg = cell.get_config()
    keras_keys = set(KERAS_CONFIGS["default"]["config"])
    assert keras_keys <= set(cfg)
    assert cfg["kernel_initializer"]["class_name"] == "GlorotUniform"
    assert cfg["recurrent_initializer"] == KERAS_CONFIGS["default"]["config"]["recurrent_initializer"]
    clone = tvm_gru.GRUCell.from_config(json.loads(json.dumps(cfg)))
    assert clone.get_config() == cfg
    assert isinstance(clone.kernel_regularizer, regularizers.L2)
    assert isinstance(clone.recurrent_constraint, constraints.MaxNorm)


@pytest.mark.parametrize("name", [n for n in KERAS_CONFIGS if n != "mixed_float16_policy"])
def test_from_real_keras_config(name):
    kcfg = KERAS_CONFIGS[name]["config"]
    cell = tvm_gru.GRUCell.from_config(kcfg)
    mine = cell.get_config()
    for key in ("units", "activation", "recurrent_activation", "use_bias", "dropout", "recurrent_dropout",
                "implementation", "reset_after", "dtype"):
        assert mine[key] == kcfg[key], key
    for key in ("kernel_initializer", "recurrent_initializer", "bias_initializer", "kernel_regularizer",
                "recurrent_regularizer", "bias_regularizer", "kernel_constraint", "recurrent_constraint",
                "bias_constraint"):
        want = kcfg[key]
        assert (mine[key] is None) == (want is None), key
        if want is not None:
            assert mine[key]["class_name"].lower().replace("_", "") == want["class_name"].lower().replace("_", "")
            assert mine[key]["config"] == want["config"], key


def test_mixed_precision_policy_is_refused_clearly():
    with pytest.raises(ValueError, match="dtype"):
        tvm_gru.GRUCell.from_config(KERAS_CONFIGS["mixed_float16_policy"]["config"])


def test_from_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unsupported keys"):
        tvm_gru.GRUCell.from_config({"units": 3, "bogus": 1})


# ----------------------------------------------------------------------------- weights
def test_weight_shapes_and_initializers():
    cell = tvm_gru.GRUCell(64, seed=7, reset_after=True)
    cell.build((None, 100))
    k, r, b = cell.get_weights()
    assert k.shape == (100, 192) and r.shape == (64, 192) and b.shape == (2, 192)
    limit = np.sqrt(6.0 / (100 + 192))  # glorot_uniform
    assert np.abs(k).max() <= limit and np.abs(k).max() > 0.95 * limit
    assert abs(k.std() - limit / np.sqrt(3)) < 0.05 * limit
    np.testing.assert_allclose(r @ r.T, np.eye(64), atol=1e-5)  # orthogonal rows of the (64, 192) matrix
    assert not b.any()
    again = tvm_gru.GRUCell(64, seed=7, reset_after=True)
    again.build((None, 100))
    for a, c in zip(cell.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, c)


def test_set_weights_validates_and_repacks():
    cell = tvm_gru.GRUCell(4, seed=0)
    x, h = _data(units=4)
    cell(x, [h])
    rng = np.random.default_rng(1)
    w = [rng.normal(size=(5, 12)), rng.normal(size=(4, 12)), rng.normal(size=12)]
    cell.set_weights(w)
    out, _ = cell(x, [h])
    np.testing.assert_allclose(out, reference.step(cell.config, x, h, *w), atol=5e-6)
    with pytest.raises(ValueError, match="recurrent_kernel"):
        cell.set_weights([w[0], w[1][:3], w[2]])
    with pytest.raises(ValueError, match="3 arrays"):
        cell.set_weights(w[:2])
    with pytest.raises(TypeError, match="kernel"):
        cell.set_weights([w[0].astype(str), w[1], w[2]])


def test_regularizer_losses_match_keras():
    for name in ("regularizers_l2_l1l2", "regularizers_reset_after", "regularizers_all_float64"):
        entry = KERAS_CONFIGS[name]
        cell = tvm_gru.GRUCell.from_config(entry["config"])
        cell.set_weights([np.array(w) for w in entry["weights"]])
        np.testing.assert_allclose(cell.losses, entry["losses"], rtol=1e-6)


def test_constraints_apply_on_set_weights():
    cell = tvm_gru.GRUCell(3, kernel_constraint=constraints.MaxNorm(1.0), recurrent_constraint="non_neg",
                           bias_constraint="unit_norm")
    rng = np.random.default_rng(2)
    cell.set_weights([rng.normal(size=(4, 9)) * 5, rng.normal(size=(3, 9)), rng.normal(size=9)])
    k, r, b = cell.get_weights()
    assert np.sqrt((k.astype(np.float64) ** 2).sum(axis=0)).max() <= 1.0 + 1e-5
    assert (r >= 0).all() and (r == 0).any()
    np.testing.assert_allclose(np.linalg.norm(b), 1.0, rtol=1e-5)


# ----------------------------------------------------------------------------- dropout
def _masks(cell):
    return cell._masks["input"], cell._masks["recurrent"]


@pytest.mark.parametrize("implementation", [1, 2])
def test_dropout_masks_follow_keras(implementation):
    cell = tvm_gru.GRUCell(8, dropout=0.5, implementation=implementation, seed=11)
    x, h = _data(batch=4, input_dim=6, units=8)
    infer, _ = cell(x, [h])
    train1, _ = cell(x, [h], training=True)
    mx, mh = _masks(cell)
    assert mh is None and mx.shape == ((3 if implementation == 1 else 1), 4, 6)
    assert set(np.unique(mx)) <= {0.0, 2.0}
    if implementation == 1:
        assert not np.array_equal(mx[0], mx[1])  # independent masks per gate
    np.testing.assert_allclose(train1, _ref(cell, x, h, input_masks=mx), atol=2e-6)
    assert not np.allclose(train1, infer)
    train2, _ = cell(x, [h], training=True)
    np.testing.assert_array_equal(train1, train2)  # cached until reset
    after, _ = cell(x, [h], training=False)
    np.testing.assert_array_equal(after, infer)  # unlike TF, inference never applies a cached mask
    cell.reset_dropout_mask()
    train3, _ = cell(x, [h], training=True)
    assert not np.array_equal(train3, train1)


def test_recurrent_dropout_forces_impl1_and_masks_h():
    cell = tvm_gru.GRUCell(8, recurrent_dropout=0.3, implementation=2, seed=12)
    assert cell.config.implementation == 1
    x, h = _data(batch=3, input_dim=4, units=8)
    out, _ = cell(x, [h], training=True)
    mx, mh = _masks(cell)
    assert mx is None and mh.shape == (3, 3, 8)
    np.testing.assert_allclose(out, _ref(cell, x, h, recurrent_masks=mh), atol=2e-6)


def test_dropout_statistics_and_seed():
    cell = tvm_gru.GRUCell(4, dropout=0.3, seed=21)
    x = np.ones((200, 50), np.float32)
    cell(x, [np.zeros((200, 4), np.float32)], training=True)
    mx = _masks(cell)[0]
    assert abs((mx == 0).mean() - 0.3) < 0.01
    np.testing.assert_allclose(mx[mx > 0], 1 / 0.7, rtol=1e-6)
    twin = tvm_gru.GRUCell(4, dropout=0.3, seed=21)
    twin(x, [np.zeros((200, 4), np.float32)], training=True)
    np.testing.assert_array_equal(_masks(twin)[0], mx)


def test_dropout_rate_clamped_and_one_fails_only_in_training():
    assert tvm_gru.GRUCell(3, dropout=1.5).config.dropout == 1.0
    assert tvm_gru.GRUCell(3, dropout=-0.5).config.dropout == 0.0
    cell = tvm_gru.GRUCell(3, dropout=1.0, seed=0)
    x, h = _data(units=3)
    out, _ = cell(x, [h], training=False)
    np.testing.assert_allclose(out, _ref(cell, x, h), atol=2e-6)
    with pytest.raises(ValueError, match="rate"):
        cell(x, [h], training=True)


# ----------------------------------------------------------------------------- compile cache
def test_second_process_loads_from_disk_cache(tmp_path):
    script = (
        "import numpy as np, tvm, tvm_gru\n"
        "cell = tvm_gru.GRUCell(13, seed=0)\n"
        "out, _ = cell(np.ones((2, 3), 'float32'), [np.zeros((2, 13), 'float32')])\n"
        "print(repr(out.sum()))\n"
    )
    forbid = "import tvm\ndef _no(*a, **k):\n    raise RuntimeError('recompiled')\ntvm.compile = _no\n"
    env = {**__import__("os").environ, "TVM_GRU_CACHE_DIR": str(tmp_path)}
    first = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert list(Path(tmp_path).glob("step-*.so"))
    second = subprocess.run([sys.executable, "-c", forbid + script], env=env, capture_output=True, text=True,
                            check=True)
    assert first.stdout == second.stdout


def test_damaged_cache_entry_is_rebuilt(tmp_path, monkeypatch):
    from tvm_gru import build

    monkeypatch.setenv("TVM_GRU_CACHE_DIR", str(tmp_path))
    build.clear_memory_cache()
    cell = tvm_gru.GRUCell(14, seed=0)
    x, h = _data(units=14)
    expect, _ = cell(x, [h])
    (entry,) = Path(tmp_path).glob("step-*.so")
    damaged = entry.read_bytes()[:100]
    entry.unlink()  # a new inode: the library mapped by this process must stay intact
    entry.write_bytes(damaged)  # a truncated entry, as a killed writer without atomic rename would leave
    build.clear_memory_cache()
    fresh = tvm_gru.GRUCell(14, seed=0)
    out, _ = fresh(x, [h])
    np.testing.assert_array_equal(out, expect)
    build.clear_memory_cache()
