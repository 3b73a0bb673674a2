"""A float64 oracle of the Keras RNN loop around the v1 cell (mask, go_backwards, dropout), and its checks.

``keras_rnn`` follows tf_keras ``backend.rnn``: a masked step keeps the previous state and repeats the
previous *output* (zeros before the first valid step), or outputs zeros with ``zero_output_for_mask``;
``go_backwards`` reverses inputs and mask and returns outputs in processing order. Each step is
:func:`tvm_gru.reference.step`, so this file adds only the loop semantics.
"""

from __future__ import annotations

import numpy as np

from tvm_gru import reference
from tvm_gru.config import GRUConfig


def keras_rnn(config, xs, h0, kernel, recurrent_kernel, bias=None, mask=None, zero_output_for_mask=False,
              go_backwards=False, input_masks=None, recurrent_masks=None):
    """Run the v1 cell over time-major ``xs`` (T, B, I) from ``h0`` (B, H).

    ``mask`` is (T, B) bool. Returns ``(outputs (T, B, H) in processing order, final state (B, H))``.
    """
    xs = np.asarray(xs, np.float64)
    steps, batch = xs.shape[:2]
    h = np.asarray(h0, np.float64)
    valid = np.ones((steps, batch), bool) if mask is None else np.asarray(mask, bool)
    order = range(steps - 1, -1, -1) if go_backwards else range(steps)
    prev_out = np.zeros_like(h)
    outs = []
    for t in order:
        new = reference.step(config, xs[t], h, kernel, recurrent_kernel, bias, input_masks, recurrent_masks)
        keep = valid[t][:, None]
        h = np.where(keep, new, h)
        out = np.where(keep, new, 0.0 if zero_output_for_mask else prev_out)
        prev_out = out
        outs.append(out)
    return np.stack(outs), h


def random_weights(config, input_dim, rng, scale=0.5):
    dt = config.dtype
    k = rng.uniform(-scale, scale, (input_dim, 3 * config.units)).astype(dt)
    r = rng.uniform(-scale, scale, (config.units, 3 * config.units)).astype(dt)
    b = rng.uniform(-scale, scale, config.bias_shape).astype(dt) if config.use_bias else None
    return k, r, b


def test_unmasked_forward_is_the_reference_sequence():
    rng = np.random.default_rng(0)
    cfg = GRUConfig(units=5, reset_after=True)
    k, r, b = random_weights(cfg, 3, rng)
    xs, h0 = rng.normal(size=(6, 2, 3)), rng.normal(size=(2, 5))
    outs, state = keras_rnn(cfg, xs, h0, k, r, b)
    expected = reference.sequence(cfg, xs, h0, k, r, b)
    np.testing.assert_allclose(outs, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(state, expected[-1], rtol=0, atol=1e-12)


def test_masked_steps_keep_state_and_repeat_output():
    rng = np.random.default_rng(1)
    cfg = GRUConfig(units=4)
    k, r, b = random_weights(cfg, 3, rng)
    xs, h0 = rng.normal(size=(5, 2, 3)), rng.normal(size=(2, 4))
    mask = np.array([[0, 1], [1, 1], [0, 0], [1, 0], [1, 0]], bool)
    outs, state = keras_rnn(cfg, xs, h0, k, r, b, mask=mask)
    np.testing.assert_array_equal(outs[0, 0], 0.0)  # before the first valid step: zeros, not h0
    np.testing.assert_array_equal(outs[2], outs[1])  # fully masked step repeats
    np.testing.assert_array_equal(outs[4, 1], outs[1, 1])
    np.testing.assert_array_equal(state[1], outs[1, 1])
    zeros, _ = keras_rnn(cfg, xs, h0, k, r, b, mask=mask, zero_output_for_mask=True)
    np.testing.assert_array_equal(zeros[2], 0.0)
