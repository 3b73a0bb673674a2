"""The numpy float64 oracle of the Keras v1 GRU cell: independent of TVM, used by every test.

Weights are in Keras layout: ``kernel`` (I, 3H), ``recurrent_kernel`` (H, 3H), ``bias`` (3H,) or (2, 3H),
gate order z, r, h.
"""

from __future__ import annotations

import numpy as np

from . import activations
from .config import GRUConfig

__all__ = ["step", "sequence", "keras_rnn"]


def step(config: GRUConfig, x, h, kernel, recurrent_kernel, bias=None, input_masks=None, recurrent_masks=None):
    """One step in float64.

    Parameters
    ----------
    x : (B, I) array
    h : (B, H) array
    input_masks : (M, B, I) array, optional
        Dropout masks on ``x``: one per gate (implementation 1) or one shared (implementation 2).
    recurrent_masks : (3, B, H) array, optional
        Dropout masks on ``h`` in the z, r and candidate recurrent products (implementation 1 only).

    Returns
    -------
    (B, H) float64 array, the new state.
    """
    H = config.units
    f = activations.get(config.recurrent_activation).np
    g = activations.get(config.activation).np
    x, h = np.asarray(x, np.float64), np.asarray(h, np.float64)
    K, R = np.asarray(kernel, np.float64), np.asarray(recurrent_kernel, np.float64)
    b = np.zeros((2, 3 * H)) if bias is None else np.asarray(bias, np.float64).reshape(-1, 3 * H)
    b_in, b_rec = b[0], (b[1] if config.reset_after else np.zeros(3 * H))
    gate = [slice(0, H), slice(H, 2 * H), slice(2 * H, 3 * H)]
    xs = [x * input_masks[min(i, len(input_masks) - 1)] for i in range(3)] if input_masks is not None else [x] * 3
    hs = [h * recurrent_masks[i] for i in range(3)] if recurrent_masks is not None else [h] * 3
    x_pre = [xs[i] @ K[:, gate[i]] + b_in[gate[i]] for i in range(3)]
    h_pre = [hs[i] @ R[:, gate[i]] + b_rec[gate[i]] for i in range(3)]
    z = f(x_pre[0] + h_pre[0])
    r = f(x_pre[1] + h_pre[1])
    if config.reset_after:
        hh = g(x_pre[2] + r * h_pre[2])
    else:
        hh = g(x_pre[2] + (r * hs[2]) @ R[:, gate[2]])
    return z * h + (1.0 - z) * hh


def sequence(config: GRUConfig, xs, h0, kernel, recurrent_kernel, bias=None):
    """Run :func:`step` over ``xs`` (T, B, I) from ``h0`` (B, H); returns all states (T, B, H)."""
    out, h = [], h0
    for x in xs:
        h = step(config, x, h, kernel, recurrent_kernel, bias)
        out.append(h)
    return np.stack(out)


def keras_rnn(config, xs, h0, kernel, recurrent_kernel, bias=None, mask=None, zero_output_for_mask=False,
              go_backwards=False, input_masks=None, recurrent_masks=None):
    """Run the v1 cell over time-major ``xs`` (T, B, I) from ``h0`` (B, H) as Keras ``backend.rnn`` does, in float64.

    A masked step keeps the previous state; its output is the previous output (zeros before the first valid
    step), or zeros with ``zero_output_for_mask``.

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
        new = step(config, xs[t], h, kernel, recurrent_kernel, bias, input_masks, recurrent_masks)
        keep = valid[t][:, None]
        h = np.where(keep, new, h)
        out = np.where(keep, new, 0.0 if zero_output_for_mask else prev_out)
        prev_out = out
        outs.append(out)
    return np.stack(outs), h
