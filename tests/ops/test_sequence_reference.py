"""A float64 oracle of the Keras RNN loop around the v1 cell (mask, go_backwards, dropout), and its checks.

``keras_rnn`` follows tf_keras ``backend.rnn``: a masked step keeps the previous state and repeats the
previous *output* (zeros before the first valid step), or outputs zeros with ``zero_output_for_mask``;
``go_backwards`` reverses inputs and mask and returns outputs in processing order. Each step is
:func:`tvm_gru.ops.reference.step`, so this file adds only the loop semantics.
"""

from __future__ import annotations

import numpy as np
from conftest import random_weights

from tvm_gru.ops import reference
from tvm_gru.ops.config import GRUConfig
from tvm_gru.ops.reference import keras_rnn


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
