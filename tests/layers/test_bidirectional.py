"""tvm_gru.Bidirectional: the Keras wrapper's API (weights, config, states, errors) and its outputs.

The numbers are checked against the real tf_keras Bidirectional in test_bidirectional_goldens.py; here the
wrapper is checked against its two directions run as plain layers, and its API against Keras's rules.
"""

from __future__ import annotations

import numpy as np
import pytest

from tvm_gru import GRU, Bidirectional

ATOL = 2e-6


def _weights(wrapper, input_dim, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for layer in (wrapper.forward_layer, wrapper.backward_layer):
        cfg = layer.cell.config
        out += [rng.uniform(-0.5, 0.5, (input_dim, 3 * cfg.units)), rng.uniform(-0.5, 0.5, (cfg.units, 3 * cfg.units))]
        if cfg.use_bias:
            out.append(rng.uniform(-0.5, 0.5, cfg.bias_shape))
    return [w.astype("float32") for w in out]


def _plain(wrapper, which):
    """The wrapper's direction ``which`` as a separate GRU with its weights (``zero_output_for_mask`` included)."""
    src = getattr(wrapper, f"{which}_layer")
    layer = GRU.from_config(src.get_config())
    layer.zero_output_for_mask = src.zero_output_for_mask
    layer.set_weights(src.get_weights())
    return layer


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "ave", "mul", None])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_outputs_are_the_two_directions_merged(merge_mode, return_sequences):
    wrapper = Bidirectional(GRU(5, return_sequences=return_sequences, return_state=True), merge_mode=merge_mode)
    wrapper.set_weights(_weights(wrapper, 3))
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (2, 6, 3)).astype("float32")
    mask = np.ones((2, 6), bool)
    mask[1, 4:] = False  # right padding
    out = wrapper(x, mask=mask)
    y, h_fw = _plain(wrapper, "forward")(x, mask=mask)
    y_rev, h_bw = _plain(wrapper, "backward")(x, mask=mask)
    if return_sequences:
        y_rev = y_rev[:, ::-1]  # processing order -> input time order
        assert wrapper.forward_layer.zero_output_for_mask and wrapper.backward_layer.zero_output_for_mask
    expected = {"concat": lambda: np.concatenate([y, y_rev], -1), "sum": lambda: y + y_rev,
                "ave": lambda: (y + y_rev) / 2, "mul": lambda: y * y_rev, None: lambda: None}[merge_mode]()
    if merge_mode is None:
        assert len(out) == 4
        np.testing.assert_allclose(out[0], y, rtol=0, atol=ATOL)
        np.testing.assert_allclose(out[1], y_rev, rtol=0, atol=ATOL)
    else:
        assert len(out) == 3
        np.testing.assert_allclose(out[0], expected, rtol=0, atol=ATOL)
    np.testing.assert_allclose(out[-2], h_fw, rtol=0, atol=ATOL)
    np.testing.assert_allclose(out[-1], h_bw, rtol=0, atol=ATOL)
    shapes = wrapper.compute_output_shape(x.shape)
    got = out if isinstance(out, list) else [out]
    assert [tuple(s) for s in shapes] == [a.shape for a in got]


def test_initial_state_time_major_and_list_inputs():
    wrapper = Bidirectional(GRU(4, return_sequences=True, time_major=True))
    wrapper.set_weights(_weights(wrapper, 3, seed=2))
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (5, 2, 3)).astype("float32")  # (T, B, I)
    h_fw, h_bw = (rng.uniform(-1, 1, (2, 4)).astype("float32") for _ in range(2))
    out = wrapper(x, initial_state=[h_fw, h_bw])
    y = _plain(wrapper, "forward")(x, initial_state=h_fw)
    y_rev = _plain(wrapper, "backward")(x, initial_state=h_bw)[::-1]  # time axis 0
    np.testing.assert_allclose(out, np.concatenate([y, y_rev], -1), rtol=0, atol=ATOL)
    np.testing.assert_array_equal(wrapper([x, h_fw, h_bw]), out)  # Keras's [inputs, *initial_states]
    with pytest.raises(ValueError, match="list of 2 states"):
        wrapper(x, initial_state=[h_fw])
    with pytest.raises(ValueError, match="given twice"):
        wrapper([x, h_fw, h_bw], initial_state=[h_fw, h_bw])


def test_weights_are_forward_then_backward_and_the_layer_is_copied():
    layer = GRU(3, seed=7)
    wrapper = Bidirectional(layer, weights=None)
    wrapper.build((2, 4, 5))
    assert layer.built is False  # Keras rebuilds the wrapped layer from its config: the original stays unused
    weights = wrapper.get_weights()
    assert [w.shape for w in weights] == [(5, 9), (3, 9), (9,)] * 2
    assert not np.array_equal(weights[0], weights[3])  # the backward copy has its own (next-seed) weights
    assert wrapper.forward_layer.name == f"forward_{layer.name}"
    assert wrapper.backward_layer.name == f"backward_{layer.name}" and wrapper.backward_layer.go_backwards
    new = _weights(wrapper, 5, seed=4)
    wrapper.set_weights(new)
    for got, want in zip(wrapper.get_weights(), new):
        np.testing.assert_array_equal(got, want)
    assert len(wrapper.weights) == 6
    with pytest.raises(ValueError, match="must hold 6 arrays"):
        wrapper.set_weights(new[:5])
    with pytest.raises(TypeError, match="list of arrays"):
        wrapper.set_weights(new[0])
    initial = Bidirectional(GRU(3), weights=new)  # the Keras `weights` argument
    np.testing.assert_array_equal(initial.backward_layer.get_weights()[1], new[4])


def test_config_round_trip():
    backward = GRU(4, activation="relu", go_backwards=True, return_sequences=True)
    wrapper = Bidirectional(GRU(4, return_sequences=True, reset_after=False), merge_mode="ave",
                            backward_layer=backward, name="bi")
    cfg = wrapper.get_config()
    assert cfg["merge_mode"] == "ave" and cfg["layer"]["class_name"] == "GRU" and "backward_layer" in cfg
    again = Bidirectional.from_config(cfg)
    assert again.name == "bi" and again.merge_mode == "ave"
    assert again.backward_layer.cell.config.activation == "relu" and again.backward_layer.go_backwards
    assert "backward_layer" not in Bidirectional(GRU(4)).get_config()  # as Keras: only a given one is saved
    with pytest.raises(ValueError, match="'layer'"):
        Bidirectional.from_config({"merge_mode": "sum"})


def test_stateful_streams_both_directions_and_resets():
    wrapper = Bidirectional(GRU(4, stateful=True, return_state=True), merge_mode="sum")
    wrapper.set_weights(_weights(wrapper, 3, seed=5))
    fw, bw = _plain(wrapper, "forward"), _plain(wrapper, "backward")
    rng = np.random.default_rng(6)
    chunks = [rng.uniform(-1, 1, (2, 3, 3)).astype("float32") for _ in range(2)]
    for chunk in chunks:  # each direction carries its own state from chunk to chunk
        out, h_fw, h_bw = wrapper(chunk)
        y, want_fw = fw(chunk)
        y_rev, want_bw = bw(chunk)
        np.testing.assert_allclose(out, y + y_rev, rtol=0, atol=ATOL)
        np.testing.assert_allclose(h_fw, want_fw, rtol=0, atol=ATOL)
        np.testing.assert_allclose(h_bw, want_bw, rtol=0, atol=ATOL)
    np.testing.assert_allclose(wrapper.states[1], want_bw, rtol=0, atol=ATOL)
    wrapper.reset_states()
    assert all(not s.any() for s in wrapper.states)
    start = [np.full((2, 4), 0.5, "float32"), np.full((2, 4), -0.5, "float32")]
    wrapper.reset_states(start)
    np.testing.assert_array_equal(wrapper.states[0], start[0])
    np.testing.assert_array_equal(wrapper.states[1], start[1])
    with pytest.raises(AttributeError, match="stateful"):
        Bidirectional(GRU(4)).reset_states()


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(merge_mode="max"), ValueError, "merge_mode"),
    (dict(backward_layer=GRU(3)), ValueError, "go_backwards"),
    (dict(backward_layer=GRU(3, go_backwards=True, return_sequences=True)), ValueError, "return_sequences"),
    (dict(backward_layer="gru"), TypeError, "backward_layer"),
    (dict(name=3), TypeError, "name"),
], ids=["merge_mode", "same_direction", "return_sequences", "backward_type", "name"])
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        Bidirectional(GRU(3), **kwargs)


def test_the_wrapped_layer_must_be_a_gru():
    with pytest.raises(TypeError, match="tvm_gru.GRU"):
        Bidirectional("gru")
