"""Each bad input of the TF v1 cell's bad-input list gets a clear error naming the argument; the cell keeps working."""

from __future__ import annotations

import numpy as np
import pytest

import tvm_gru
from tvm_gru.ops import reference


@pytest.mark.parametrize("units, exc, match", [
    (0, ValueError, "units"), (-3, ValueError, "units"), (2.5, TypeError, "units"), ("4", TypeError, "units"),
    (True, TypeError, "units"), (None, TypeError, "units"),
], ids=["zero", "negative", "float", "str", "bool", "none"])
def test_bad_units(units, exc, match):
    with pytest.raises(exc, match=match):
        tvm_gru.GRUCell(units)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(dropout="a"), TypeError, "dropout"),
    (dict(recurrent_dropout=[0.1]), TypeError, "recurrent_dropout"),
    (dict(activation="foo"), ValueError, "Unknown activation"),
    (dict(recurrent_activation="softmax"), ValueError, "Unknown activation"),
    (dict(activation=3), TypeError, "activation"),
    (dict(implementation="1"), TypeError, "implementation"),
    (dict(dtype="int32"), ValueError, "dtype"),
    (dict(dtype="float16"), ValueError, "dtype"),
    (dict(kernel_initializer="nope"), ValueError, "nope"),
    (dict(kernel_regularizer="nope"), ValueError, "nope"),
    (dict(kernel_constraint="nope"), ValueError, "nope"),
    (dict(seed="1"), TypeError, "seed"),
    (dict(target="tpu"), ValueError, "target"),
    (dict(use_bias="yes"), TypeError, "use_bias"),
], ids=lambda v: str(v) if not isinstance(v, dict) else "-".join(v))
def test_bad_constructor_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        tvm_gru.GRUCell(4, **kwargs)


@pytest.fixture(scope="module")
def built():
    cell = tvm_gru.GRUCell(7, seed=0)
    x = np.ones((4, 5), np.float32)
    h = np.zeros((4, 7), np.float32)
    cell(x, [h])
    return cell, x, h


BAD_CALLS = [
    ("rank1", lambda x, h: (x[0], [h]), ValueError, "rank 2"),
    ("rank3", lambda x, h: (x[:, None, :], [h]), ValueError, "rank 2"),
    ("rank3_batch_first", lambda x, h: (np.stack([x, x]), [h]), ValueError, "rank 2"),
    ("feature_dim", lambda x, h: (np.ones((4, 6), np.float32), [h]), ValueError, "5 features"),
    ("batch_mismatch", lambda x, h: (x, [h[:3]]), ValueError, "same batch size"),
    ("batch_1_vs_4", lambda x, h: (x[:1], [h]), ValueError, "same batch size"),
    ("batch_4_vs_1", lambda x, h: (x, [h[:1]]), ValueError, "same batch size"),
    ("state_width", lambda x, h: (x, [np.zeros((4, 8), np.float32)]), ValueError, r"states\[0\]"),
    ("state_rank", lambda x, h: (x, [h[0]]), ValueError, r"states\[0\]"),
    ("int_input", lambda x, h: (x.astype(np.int32), [h]), TypeError, "inputs"),
    ("bool_input", lambda x, h: (x.astype(bool), [h]), TypeError, "inputs"),
    ("int_state", lambda x, h: (x, [h.astype(np.int64)]), TypeError, r"states\[0\]"),
    ("complex_input", lambda x, h: (x.astype(np.complex64), [h]), TypeError, "inputs"),
    ("list_input", lambda x, h: (x.tolist(), [h]), TypeError, "inputs"),
    ("none_input", lambda x, h: (None, [h]), TypeError, "inputs"),
    ("str_state", lambda x, h: (x, ["abc"]), TypeError, r"states\[0\]"),
    ("empty_states", lambda x, h: (x, []), ValueError, "states"),
]


@pytest.mark.parametrize("make, exc, match", [b[1:] for b in BAD_CALLS], ids=[b[0] for b in BAD_CALLS])
def test_bad_call_arguments_then_cell_still_works(built, make, exc, match):
    cell, x, h = built
    inputs, states = make(x, h)
    with pytest.raises(exc, match=match):
        cell(inputs, states)
    out, _ = cell(x, [h])
    np.testing.assert_allclose(out, reference.step(cell.config, x, h, *cell.get_weights()), atol=2e-6)


def test_first_call_with_bad_rank_does_not_build():
    cell = tvm_gru.GRUCell(3)
    with pytest.raises(ValueError, match="rank 2"):
        cell(np.ones(5, np.float32), [np.zeros((1, 3), np.float32)])
    assert not cell.built


def test_build_and_weights_errors():
    cell = tvm_gru.GRUCell(3)
    with pytest.raises(ValueError, match="input_dim"):
        cell.build((None, 0))
    with pytest.raises(TypeError, match="input_shape"):
        cell.build(object())
    with pytest.raises(ValueError, match="get_weights"):
        cell.get_weights()


def test_nan_and_inf_propagate_like_the_reference(built):
    cell, x, h = built
    xn = x.copy()
    xn[0, 0] = np.nan
    xn[1, 1] = np.inf
    out, _ = cell(xn, [h])
    with np.errstate(invalid="ignore", over="ignore"):
        ref = reference.step(cell.config, xn, h, *cell.get_weights())
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_allclose(out[2:], ref[2:], atol=2e-6)


# ------------------------------------------------------------------ 32-bit kernel indices
# Compiled kernels index their buffers with int32: sizes past 2**31 - 1 elements are refused by name, before any
# allocation (the inputs below are zero-stride views: no memory behind them).
def test_weights_past_32_bit_indexing_are_refused(monkeypatch):
    from tvm_gru.layers import cell as cell_module

    monkeypatch.setattr(cell_module, "_physical_memory", lambda: 1 << 50)  # a machine where they would fit
    cell = tvm_gru.GRUCell(30000)
    with pytest.raises(ValueError, match=r"`units`=30000 with `input_dim`=30000 is too large.*32-bit"):
        cell.build((1, 30000))
    assert not cell.built


def test_batch_past_32_bit_indexing_is_refused(built):
    cell, x, h = built
    batch = (2**31 - 1) // (3 * max(cell.input_dim, cell.units)) + 1
    big_x = np.broadcast_to(x[:1], (batch, x.shape[1]))
    big_h = np.broadcast_to(h[:1], (batch, h.shape[1]))
    with pytest.raises(ValueError, match=rf"`inputs` batch size {batch} .*32-bit.*split the batch"):
        cell(big_x, [big_h])
    np.testing.assert_allclose(cell(x, [h])[0], reference.step(cell.config, x, h, *cell.get_weights()), atol=2e-6)


def test_sequence_past_32_bit_indexing_is_refused(tmp_path):
    layer = tvm_gru.GRU(8, seed=0)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 5, 4)).astype(np.float32)
    expected = layer(x)
    limit = (2**31 - 1) // (2 * 24)  # batch * max(input_dim, 3 * padded units)
    long = np.broadcast_to(x[:, :1], (2, limit + 1, 4))
    with pytest.raises(ValueError, match=rf"`inputs` has {limit + 1:,} time steps; at batch 2 one call takes at "
                                         rf"most {limit:,}"):
        layer(long)
    np.testing.assert_array_equal(layer(x), expected)
    deployed = tvm_gru.load(layer.export(tmp_path / "seq", batch=2, masking=False))
    with pytest.raises(ValueError, match=rf"at most {limit:,}"):
        deployed(long)
    np.testing.assert_allclose(deployed(x), expected, atol=1e-6)
