"""Generate golden data for ``tvm_gru.Bidirectional`` from the REAL tf_keras
``Bidirectional`` wrapper around the TF v1 Keras GRU layer.

The reference layer is ``tf_keras.layers.Bidirectional(layer, merge_mode=...,
backward_layer=...)`` with ``layer = tf_keras.src.layers.rnn.gru_v1.GRU(...)``
(what ``tf.compat.v1.keras.layers.GRU`` resolves to when
``TF_USE_LEGACY_KERAS=1`` is set before TensorFlow is imported; the script
asserts it).  v1 defaults: ``activation="tanh"``,
``recurrent_activation="hard_sigmoid"``, ``reset_after=False``.  TensorFlow is
NOT a dependency of tvm_gru; it is only needed to regenerate these files (see
``make_goldens.py`` for the ``/opt/tfenv`` virtual environment).  Regenerate
from the repository root with:

    /opt/tfenv/bin/python tests/goldens/make_bidirectional_goldens.py

Outputs (in ``bidirectional/`` next to this script), all arrays float32:

* ``cases.npz`` (np.savez_compressed).  For every case ``N``:

  - ``N/x``: the call input, (batch, steps, input_dim), or (steps, batch,
    input_dim) when ``time_major``.
  - ``N/x2``: (stateful case only) the second chunk, same shape as ``N/x``.
  - ``N/mask``: (only when a mask is passed) uint8 0/1 of shape (batch, steps),
    or (steps, batch) when ``time_major`` (see the rules below); it is passed
    to the call as ``mask=tf.constant(mask.astype(bool))``.
  - ``N/h_fw``, ``N/h_bw``: (only when ``initial_state`` is passed) (batch,
    units) each; the call gets ``initial_state=[h_fw, h_bw]``.
  - ``N/weights_i`` for i in range(n_weights): ``bidir.get_weights()[i]``,
    i.e. the forward layer's kernel (input_dim, 3*units), recurrent_kernel
    (units, 3*units), bias ((3*units,), or (2, 3*units) when reset_after),
    then the same three for the backward layer.  Set with
    ``bidir.set_weights`` from the seeded rng (uniform +-0.5).
  - ``N/out_j`` for j in range(n_outputs): the j-th output tensor of the call
    (a single tensor gives ``out_0`` only).
  - ``N/out2_j``, ``N/out3_j``: (stateful case only) the outputs of the second
    call (on ``x2``, continuing from the states left by the first call) and of
    a third call on ``x`` again after ``bidir.reset_states()``.

* ``cases.json``: ``{"tensorflow", "tf_keras", "rules", "cases": [...]}``;
  each case holds, in this order: ``name``, ``config`` (the real
  ``Bidirectional.get_config()`` made JSON-safe), ``merge_mode``, the flags
  (``return_sequences``, ``return_state``, ``time_major``, ``stateful``,
  ``go_backwards`` of the wrapped layer, ``reset_after``,
  ``custom_backward_layer``, ``uses_mask``, ``uses_initial_state``,
  ``forward_zero_output_for_mask`` / ``backward_zero_output_for_mask`` as
  actually set on the inner layers, ``forward_go_backwards`` /
  ``backward_go_backwards``), the shapes (``batch``, ``steps``,
  ``input_dim``, ``units``, ``x_shape``), ``layer_kwargs`` (the GRU
  constructor arguments, besides ``units``), ``backward_layer_kwargs`` (or
  null), ``n_weights``, ``weight_names``, ``weight_shapes``, ``n_outputs``,
  ``output_shapes``, ``call`` (the exact call arguments, array arguments named
  by their npz key), ``calls`` (stateful only: the call sequence), ``note``.

Weights, inputs, masks and initial states come from
``np.random.default_rng(seed)`` with a fixed seed per case, so the files are
reproducible.  Every golden is checked against an independent float64 NumPy
re-implementation (``np_bidirectional`` below) before anything is written.

Keras rules the reference has to follow (all verified by these goldens, read
from tf_keras/src/layers/rnn/bidirectional.py, base_rnn.py and backend.rnn):

1. The wrapper never runs ``layer`` itself: it builds ``forward_layer`` from
   ``layer.get_config()`` and, unless ``backward_layer`` is given, a backward
   layer from the same config with ``go_backwards`` flipped.  Inner names get
   the prefixes ``forward_`` / ``backward_``.  A user ``backward_layer`` must
   have a different ``go_backwards`` and the same ``stateful``,
   ``return_sequences``, ``return_state`` (ValueError otherwise); anything
   else (activation, units, reset_after...) may differ.
2. ``zero_output_for_mask``: the constructor forces
   ``inner.zero_output_for_mask = inner.return_sequences`` on BOTH inner
   layers (also on a user ``backward_layer``).  So with return_sequences a
   masked step outputs zeros; without it a masked step repeats the previous
   step's output (zeros before the first unmasked step) and the returned last
   output is the output of the last unmasked step in processing order.
3. Masking in backend.rnn (non-unrolled path): at a masked step the state is
   NOT updated (``h = where(m, h_new, h)``) and the output is zeros
   (zero_output_for_mask) or the previous output, which starts at ZEROS, not at
   the initial state.  Hence a row whose steps are all masked returns output
   0 but state ``h0`` (see case ``mask_sum_last_initstate``).
4. The same mask goes to both inner layers; ``go_backwards`` reverses the
   time axis of inputs AND mask, so the backward layer skips exactly the same
   time positions.  With right padding the backward layer therefore starts on
   the padding (state held at h0), then runs over the valid steps from last to
   first.
5. ``go_backwards`` layers emit their output sequence in processing order;
   the wrapper reverses the backward layer's sequence along time (axis 1, or
   axis 0 when time_major) before merging -- it ALWAYS reverses the second
   layer's sequence, whatever the go_backwards values are.  So when the
   wrapped layer itself has ``go_backwards=True`` (its "forward" copy runs
   backwards and the "backward" copy runs forwards), BOTH halves of a
   return_sequences output come out time-reversed (case
   ``go_backwards_layer``).
6. Merge: concat = ``concatenate([y_fw, y_bw], axis=-1)`` (forward first),
   sum = ``y_fw + y_bw``, mul = ``y_fw * y_bw``, ave = ``(y_fw + y_bw) / 2``,
   None = the list ``[y_fw, y_bw]``.
7. Output list: no return_state -> ``merged`` (one tensor) or ``[y_fw,
   y_bw]`` for merge_mode None; with return_state -> ``[merged, h_fw, h_bw]``
   or ``[y_fw, y_bw, h_fw, h_bw]`` for merge_mode None.  ``h_bw`` is the
   backward layer's final state, i.e. after it has processed time step 0.
   The states are never merged.
8. ``initial_state`` (a list) is split in half: first half to the forward
   layer, second half to the backward layer (for GRU: ``[h_fw, h_bw]``).  An
   odd length raises ValueError.
9. ``time_major=True`` (on the wrapped GRU): inputs and outputs are (steps,
   batch, ...), and a mask is used AS GIVEN by backend.rnn, which expects it
   time-major too: (steps, batch).  States stay (batch, units).
10. Weights: ``bidir.get_weights()`` / ``bidir.weights`` = forward layer's
    [kernel, recurrent_kernel, bias] then the backward layer's
    (``weight_names`` in the JSON: ``forward_gru/gru_cell/kernel:0`` ...
    ``backward_gru/gru_cell/bias:0``; the script builds with
    ``bidir.build(shape)``, a build inside ``bidir(x)`` would prefix them
    with ``bidirectional/``).  Gate order inside each (I, 3H)/(H, 3H)/(3H,)
    array is z, r, h; reset_after bias is (2, 3H) = [input bias, recurrent
    bias].
11. ``get_config()`` = ``{"name", "trainable", "dtype", "layer": serialized
    ORIGINAL wrapped layer (its own name, e.g. "gru", no forward_ prefix, and
    without the forced zero_output_for_mask), "merge_mode"}`` plus
    ``"backward_layer"`` (serialized before the ``backward_`` rename and
    before zero_output_for_mask is forced) only when a backward_layer was
    given.  The v1 GRU serializes with ``class_name "GRU"`` (module
    "keras.layers"), the same name as the v2 GRU, and
    ``Bidirectional.from_config`` rebuilds both inner layers as the v2
    ``tf_keras.src.layers.rnn.gru.GRU``; that computes the same thing because
    the config holds recurrent_activation and reset_after explicitly.  The
    inner layers' own configs would contain
    ``"zero_output_for_mask": true`` when return_sequences (base_rnn adds
    the key only when true).
12. stateful=True: each inner layer keeps its own state variable (batch fixed
    by the first call) and, after each call, stores its final state.  The
    next call starts the forward layer from the forward state left by the
    previous chunk AND the backward layer from the backward state left by the
    previous chunk -- i.e. the state it had after processing the PREVIOUS
    chunk's first time step is fed in at the NEW chunk's last time step.
    (This is what Keras does; it is not a true bidirectional pass over the
    concatenated sequence.)  ``reset_states()`` zeroes both.  If
    ``initial_state`` is passed to a stateful layer, Keras uses the recorded
    states instead whenever any of them is non-zero (not exercised here).
13. Dropout is only active with training=True (not covered: it is random);
    all calls here pass ``training=False``.
"""

import json
import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from tf_keras.src.layers.rnn import gru_v1  # noqa: E402

assert tf.compat.v1.keras.layers.GRU is gru_v1.GRU, (
    "tf.compat.v1.keras.layers.GRU is not the tf_keras v1 layer; "
    "TF_USE_LEGACY_KERAS=1 must be set before importing tensorflow"
)

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       "bidirectional")
GRU = gru_v1.GRU
Bidirectional = tf_keras.layers.Bidirectional
MERGE_MODES = ("concat", "sum", "mul", "ave", None)

RULES = [
    "zero_output_for_mask is forced to return_sequences on both inner layers",
    "masked step: state kept; output zeros if zero_output_for_mask else "
    "previous output (initially zeros, not h0)",
    "go_backwards reverses inputs and mask; output sequence is in "
    "processing order",
    "the wrapper always reverses the backward layer's output sequence along "
    "time before merging",
    "merge: concat [fw, bw] / sum / mul / ave=(fw+bw)/2 / None -> "
    "[y_fw, y_bw]",
    "return_state outputs: [merged, h_fw, h_bw] or [y_fw, y_bw, h_fw, h_bw] "
    "for merge_mode None",
    "initial_state list split in half: [h_fw, h_bw]",
    "time_major: inputs/outputs (steps, batch, ...), mask (steps, batch)",
    "weights: forward kernel, recurrent_kernel, bias, then backward kernel, "
    "recurrent_kernel, bias",
    "stateful: each direction continues from its own final state of the "
    "previous call",
]


# --------------------------------------------------------------------------
# JSON safety
# --------------------------------------------------------------------------
# JSON-safe configs: the cell goldens' helper (this folder's make_goldens.py).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_goldens import json_safe  # noqa: E402


# --------------------------------------------------------------------------
# Independent float64 NumPy reference
# --------------------------------------------------------------------------
def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


NP_ACT = {
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "hard_sigmoid": lambda x: np.clip(0.2 * x + 0.5, 0.0, 1.0),
    "relu": lambda x: np.maximum(x, 0.0),
    "linear": lambda x: x,
}


def np_gru_step(p, xt, h):
    """One v1 GRU step, float64. p: dict of the layer's params/config."""
    H = p["units"]
    g, f = NP_ACT[p["activation"]], NP_ACT[p["recurrent_activation"]]
    k, rk = p["kernel"], p["recurrent_kernel"]
    if p["bias"] is None:
        bi, br = np.zeros(3 * H), np.zeros(3 * H)
    elif p["reset_after"]:
        bi, br = p["bias"]
    else:
        bi, br = p["bias"], np.zeros(3 * H)
    xi = xt @ k + bi
    if p["reset_after"]:
        hr = h @ rk + br
        z = f(xi[:, :H] + hr[:, :H])
        r = f(xi[:, H:2 * H] + hr[:, H:2 * H])
        hh = g(xi[:, 2 * H:] + r * hr[:, 2 * H:])
    else:
        hr = h @ rk[:, :2 * H]
        z = f(xi[:, :H] + hr[:, :H])
        r = f(xi[:, H:2 * H] + hr[:, H:2 * H])
        hh = g(xi[:, 2 * H:] + (r * h) @ rk[:, 2 * H:])
    return z * h + (1.0 - z) * hh


def np_rnn(p, x, mask, h0, go_backwards, zero_output_for_mask):
    """Keras RNN over batch-major x (B, T, I) with the backend.rnn masking.

    Returns (outputs (B, T, H) in processing order, last_output, final h).
    """
    x = x.astype(np.float64)
    B, T, _ = x.shape
    m = np.ones((B, T), bool) if mask is None else mask.astype(bool)
    if go_backwards:
        x, m = x[:, ::-1], m[:, ::-1]
    h = h0.astype(np.float64)
    prev = np.zeros((B, p["units"]))  # previous output starts at ZEROS
    outs = []
    for t in range(T):
        hn = np_gru_step(p, x[:, t], h)
        mt = m[:, t:t + 1]
        out = np.where(mt, hn, 0.0 if zero_output_for_mask else prev)
        h = np.where(mt, hn, h)
        prev = out
        outs.append(out)
    return np.stack(outs, axis=1), outs[-1], h


def np_bidirectional(fw, bw, merge_mode, return_sequences, return_state,
                     time_major, x, mask, h_fw, h_bw):
    """Float64 reference of tf_keras Bidirectional. Returns list of outputs
    (in the Keras output order) and the final states (h_fw, h_bw)."""
    if time_major:  # work batch-major internally
        x = np.swapaxes(x, 0, 1)
        mask = None if mask is None else np.swapaxes(mask, 0, 1)
    B = x.shape[0]
    res = []
    for p, h0 in ((fw, h_fw), (bw, h_bw)):
        h0 = np.zeros((B, p["units"])) if h0 is None else h0
        seq, last, h = np_rnn(p, x, mask, h0, p["go_backwards"],
                              zero_output_for_mask=return_sequences)
        res.append((seq if return_sequences else last, h))
    (y, hf), (y_rev, hb) = res
    if return_sequences:
        y_rev = y_rev[:, ::-1]  # always reverse the second layer's sequence
        if time_major:
            y, y_rev = np.swapaxes(y, 0, 1), np.swapaxes(y_rev, 0, 1)
    if merge_mode == "concat":
        outs = [np.concatenate([y, y_rev], axis=-1)]
    elif merge_mode == "sum":
        outs = [y + y_rev]
    elif merge_mode == "mul":
        outs = [y * y_rev]
    elif merge_mode == "ave":
        outs = [(y + y_rev) / 2]
    else:
        outs = [y, y_rev]
    if return_state:
        outs += [hf, hb]
    return outs, (hf, hb)


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------
DEFAULTS = dict(batch=2, steps=5, input_dim=3, units=4, merge_mode="concat",
                layer_kwargs=None, backward_kwargs=None, mask=None,
                initial_state=False, stateful=False, note="")
CASES = []


def case(name, **kw):
    assert all(k in DEFAULTS for k in kw), kw
    c = dict(DEFAULTS)
    c.update(kw)
    c["layer_kwargs"] = dict(c["layer_kwargs"] or {})
    c["name"] = name
    assert name not in [o["name"] for o in CASES], name
    CASES.append(c)


RS = dict(return_sequences=True)
RS_ST = dict(return_sequences=True, return_state=True)
ST = dict(return_state=True)

# Mask patterns, (batch, steps).  "pad_mid": row 0 full, row 1 right-padded
# (last 2 steps masked), row 2 has one masked step in the middle.
PAD_MID = {
    (2, 5): [[1, 1, 1, 1, 1], [1, 1, 0, 1, 1]],
    (3, 6): [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 0, 1, 1, 1]],
    (3, 5): [[1, 1, 1, 0, 0], [1, 1, 0, 1, 1], [1, 1, 1, 1, 1]],
}
# Row 0 right-padded, row 1 left-padded, row 2 all masked.
PAD_ALL = [[1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]]

# -- merge modes without mask -------------------------------------------------
case("concat_seq", layer_kwargs=RS,
     note="merge_mode concat (default), return_sequences")
case("concat_last", batch=3, steps=6, input_dim=4, units=5,
     note="merge_mode concat, v1 defaults (last output only)")
case("sum_seq_state", merge_mode="sum", layer_kwargs=RS_ST,
     note="merge_mode sum, return_sequences + return_state")
case("mul_last_state", merge_mode="mul", batch=3, layer_kwargs=ST,
     note="merge_mode mul, last output + return_state")
case("ave_seq", merge_mode="ave", steps=6, input_dim=4, layer_kwargs=RS,
     note="merge_mode ave, return_sequences")
case("none_seq", merge_mode=None, units=5, layer_kwargs=RS,
     note="merge_mode None -> [y_fw, y_bw] (y_bw re-reversed)")
case("none_last_state", merge_mode=None, batch=3, steps=6,
     layer_kwargs=ST,
     note="merge_mode None + return_state -> [y_fw, y_bw, h_fw, h_bw]")
# -- masks --------------------------------------------------------------------
case("mask_concat_seq_state", batch=3, steps=6, input_dim=4, units=5,
     layer_kwargs=RS_ST, mask=PAD_MID[(3, 6)],
     note="mask (right padding + a masked middle step), return_sequences "
          "(zero_output_for_mask forced True: masked steps output 0), "
          "return_state")
case("mask_sum_last_initstate", merge_mode="sum", batch=3, steps=6,
     layer_kwargs=ST, mask=PAD_ALL, initial_state=True,
     note="mask (right-padded, left-padded, ALL-masked row), last output "
          "(zero_output_for_mask False: a masked step repeats the previous "
          "output, which starts at zeros), initial_state, return_state; "
          "the all-masked row outputs 0 but returns h_fw/h_bw unchanged")
case("mask_none_seq_initstate", merge_mode=None, layer_kwargs=RS_ST,
     mask=PAD_MID[(2, 5)], initial_state=True,
     note="mask with a masked middle step, merge_mode None, initial_state, "
          "return_state")
# -- initial_state ------------------------------------------------------------
case("initstate_concat_last", batch=3, steps=6, input_dim=4, units=5,
     layer_kwargs=ST, initial_state=True,
     note="initial_state=[h_fw, h_bw], last output, return_state")
# -- time_major ---------------------------------------------------------------
case("time_major_ave_seq", merge_mode="ave", batch=3,
     layer_kwargs=dict(time_major=True, **RS_ST), mask=PAD_MID[(3, 5)],
     initial_state=True,
     note="time_major: x (steps, batch, input_dim), mask passed time-major "
          "(steps, batch), outputs (steps, batch, .), states (batch, units); "
          "initial_state, return_state")
# -- reset_after v2-like config -----------------------------------------------
case("reset_after_sigmoid", batch=3, steps=6, input_dim=4, units=5,
     layer_kwargs=dict(reset_after=True, recurrent_activation="sigmoid",
                       **RS_ST), mask=PAD_MID[(3, 6)],
     note="reset_after=True, recurrent_activation=sigmoid (v2-like "
          "config; bias (2, 3H)), mask, return_state")
# -- user backward layer ------------------------------------------------------
case("backward_layer_relu", batch=3, steps=6, input_dim=4, units=5,
     layer_kwargs=RS_ST,
     backward_kwargs=dict(activation="relu", go_backwards=True, **RS_ST),
     mask=PAD_MID[(3, 6)],
     note="user backward_layer=GRU(units, activation='relu', "
          "go_backwards=True, ...): get_config gains 'backward_layer'; "
          "zero_output_for_mask forced on it too; mask, return_state")
# -- wrapped layer with go_backwards=True -------------------------------------
case("go_backwards_layer", merge_mode=None, batch=3,
     layer_kwargs=dict(go_backwards=True, **RS_ST), mask=PAD_MID[(3, 5)],
     note="wrapped GRU has go_backwards=True: the 'forward' copy runs "
          "backwards (its sequence stays in processing order = reversed "
          "time) and the 'backward' copy runs forwards (its sequence is "
          "reversed by the wrapper): both halves come out time-reversed; "
          "merge_mode None to show both; mask, return_state")
# -- stateful -----------------------------------------------------------------
case("stateful_concat_seq", layer_kwargs=dict(stateful=True, **RS_ST),
     stateful=True,
     note="stateful=True: call(x) -> out, call(x2) -> out2 (each direction "
          "starts from its own final state of the first call), "
          "reset_states(), call(x) -> out3 (== out)")


# --------------------------------------------------------------------------
def layer_params(layer, weights):
    cfg = layer.get_config()
    k, rk = weights[0], weights[1]
    b = weights[2] if cfg["use_bias"] else None
    return {"units": cfg["units"], "activation": cfg["activation"],
            "recurrent_activation": cfg["recurrent_activation"],
            "reset_after": cfg["reset_after"],
            "go_backwards": cfg["go_backwards"],
            "kernel": k.astype(np.float64),
            "recurrent_kernel": rk.astype(np.float64),
            "bias": None if b is None else b.astype(np.float64)}


def to_list(y):
    return [t.numpy() for t in (y if isinstance(y, (list, tuple)) else [y])]


def check(name, tag, got, ref):
    assert len(got) == len(ref), (name, tag, len(got), len(ref))
    worst = 0.0
    for j, (g, r) in enumerate(zip(got, ref)):
        assert g.dtype == np.float32 and g.shape == r.shape, (
            name, tag, j, g.dtype, g.shape, r.shape)
        assert np.all(np.isfinite(g)), (name, tag, j)
        err = float(np.abs(g.astype(np.float64) - r).max())
        tol = 1e-5 * max(1.0, float(np.abs(r).max()))
        assert err <= tol, (name, tag, j, err, tol)
        worst = max(worst, err)
    return worst


def build_case(c, seed):
    tf_keras.backend.clear_session()  # deterministic layer names
    rng = np.random.default_rng(seed)
    B, T, I, H = c["batch"], c["steps"], c["input_dim"], c["units"]
    lk = c["layer_kwargs"]
    time_major = bool(lk.get("time_major", False))
    layer = GRU(H, **lk)
    assert type(layer) is gru_v1.GRU
    backward = None
    if c["backward_kwargs"] is not None:
        backward = GRU(H, **c["backward_kwargs"])
    bidir = Bidirectional(layer, merge_mode=c["merge_mode"],
                          backward_layer=backward)
    fl, bl = bidir.forward_layer, bidir.backward_layer
    rs = bool(lk.get("return_sequences", False))
    rst = bool(lk.get("return_state", False))
    assert fl.zero_output_for_mask == rs and bl.zero_output_for_mask == rs
    assert fl.go_backwards != bl.go_backwards

    xshape = (T, B, I) if time_major else (B, T, I)
    x = rng.uniform(-1.0, 1.0, xshape).astype(np.float32)
    arrays = {"x": x}
    call = {"inputs": "x"}
    mask = None
    if c["mask"] is not None:
        mask = np.asarray(c["mask"], np.uint8)
        assert mask.shape == (B, T)
        if time_major:
            mask = np.ascontiguousarray(mask.T)  # backend.rnn wants (T, B)
        arrays["mask"] = mask
        call["mask"] = "mask"
    h_fw = h_bw = None
    if c["initial_state"]:
        h_fw = rng.uniform(-0.5, 0.5, (B, H)).astype(np.float32)
        h_bw = rng.uniform(-0.5, 0.5, (B, H)).astype(np.float32)
        arrays.update(h_fw=h_fw, h_bw=h_bw)
        call["initial_state"] = ["h_fw", "h_bw"]
    call["training"] = False

    def kw():
        d = {"training": False}
        if mask is not None:
            d["mask"] = tf.constant(mask.astype(bool))
        if h_fw is not None:
            d["initial_state"] = [tf.constant(h_fw), tf.constant(h_bw)]
        return d

    bidir.build(xshape)
    ws = [rng.uniform(-0.5, 0.5, w.shape).astype(np.float32)
          for w in bidir.get_weights()]
    bidir.set_weights(ws)
    got_w = bidir.get_weights()
    nf = len(fl.get_weights())
    assert len(got_w) == len(ws) == nf + len(bl.get_weights())
    for a, b in zip(got_w, ws):
        assert a.dtype == np.float32 and np.array_equal(a, b)
    for a, b in zip(fl.get_weights() + bl.get_weights(), ws):
        assert np.array_equal(a, b)  # order: forward's, then backward's
    for i, w in enumerate(ws):
        arrays[f"weights_{i}"] = w
    fw_p, bw_p = layer_params(fl, ws[:nf]), layer_params(bl, ws[nf:])

    def ref(xx, h0f, h0b):
        return np_bidirectional(fw_p, bw_p, c["merge_mode"], rs, rst,
                                time_major, xx, mask, h0f, h0b)

    outs = to_list(bidir(tf.constant(x), **kw()))
    r_outs, r_states = ref(x, h_fw, h_bw)
    err = check(c["name"], "out", outs, r_outs)
    for j, o in enumerate(outs):
        arrays[f"out_{j}"] = o
    calls = None
    if c["stateful"]:
        x2 = rng.uniform(-1.0, 1.0, xshape).astype(np.float32)
        arrays["x2"] = x2
        outs2 = to_list(bidir(tf.constant(x2), **kw()))
        r_outs2, _ = ref(x2, *r_states)
        err = max(err, check(c["name"], "out2", outs2, r_outs2))
        bidir.reset_states()
        outs3 = to_list(bidir(tf.constant(x), **kw()))
        err = max(err, check(c["name"], "out3", outs3, r_outs))
        for j, o in enumerate(outs3):
            assert np.array_equal(o, outs[j]), (c["name"], j)
        for j, (o2, o3) in enumerate(zip(outs2, outs3)):
            arrays[f"out2_{j}"] = o2
            arrays[f"out3_{j}"] = o3
        calls = [
            {"call": "bidir(x, training=False)", "outputs": "out_j"},
            {"call": "bidir(x2, training=False)", "outputs": "out2_j",
             "starts_from": "final (h_fw, h_bw) of the previous call"},
            {"call": "bidir.reset_states()"},
            {"call": "bidir(x, training=False)", "outputs": "out3_j",
             "starts_from": "zeros (equals out_j)"},
        ]
    # An all-masked row keeps its initial states and outputs zeros.
    if mask is not None and rst and not time_major:
        for bi in np.where(~mask.astype(bool).any(axis=1))[0]:
            assert np.array_equal(outs[-2][bi], h_fw[bi])
            assert np.array_equal(outs[-1][bi], h_bw[bi])
            assert not np.any(outs[0][bi])

    cfg = json_safe(bidir.get_config())
    assert cfg["merge_mode"] == c["merge_mode"]
    assert ("backward_layer" in cfg) == (backward is not None)
    meta = {
        "name": c["name"],
        "config": cfg,
        "merge_mode": c["merge_mode"],
        "return_sequences": rs,
        "return_state": rst,
        "time_major": time_major,
        "stateful": bool(lk.get("stateful", False)),
        "go_backwards": bool(lk.get("go_backwards", False)),
        "reset_after": bool(lk.get("reset_after", False)),
        "custom_backward_layer": backward is not None,
        "uses_mask": mask is not None,
        "uses_initial_state": h_fw is not None,
        "forward_zero_output_for_mask": bool(fl.zero_output_for_mask),
        "backward_zero_output_for_mask": bool(bl.zero_output_for_mask),
        "forward_go_backwards": bool(fl.go_backwards),
        "backward_go_backwards": bool(bl.go_backwards),
        "batch": B, "steps": T, "input_dim": I, "units": H,
        "x_shape": list(xshape),
        "layer_kwargs": json_safe(lk),
        "backward_layer_kwargs": json_safe(c["backward_kwargs"]),
        "n_weights": len(ws),
        "weight_names": [w.name for w in bidir.weights],
        "weight_shapes": [list(w.shape) for w in ws],
        "n_outputs": len(outs),
        "output_shapes": [list(o.shape) for o in outs],
        "call": call,
        "calls": calls,
        "note": (f"{c['note']}; seed={seed}, weights U(+-0.5), x U(+-1), "
                 f"h0 U(+-0.5); max|out|="
                 f"{max(float(np.abs(o).max()) for o in outs):.3g}"),
    }
    return meta, arrays, err


def reload_check(npz_path, json_path):
    """Re-read the written files and re-check them against the reference."""
    with open(json_path) as fh:
        doc = json.load(fh)
    with np.load(npz_path) as z:
        for m in doc["cases"]:
            n = m["name"]

            def g(k, n=n):
                return z[f"{n}/{k}"] if f"{n}/{k}" in z.files else None

            for k in z.files:
                if k.startswith(n + "/"):
                    assert z[k].dtype in (np.float32, np.uint8), k
            ws = [z[f"{n}/weights_{i}"] for i in range(m["n_weights"])]
            assert g(f"weights_{m['n_weights']}") is None
            half = m["n_weights"] // 2
            lk, bk = m["layer_kwargs"], m["backward_layer_kwargs"]
            fcfg = m["config"]["layer"]["config"]
            bcfg = (m["config"]["backward_layer"]["config"]
                    if m["custom_backward_layer"] else
                    dict(fcfg, go_backwards=not fcfg["go_backwards"]))
            assert bool(bk) == m["custom_backward_layer"] and lk is not None

            def p(cfg, w):
                return {"units": cfg["units"], "activation": cfg["activation"],
                        "recurrent_activation": cfg["recurrent_activation"],
                        "reset_after": cfg["reset_after"],
                        "go_backwards": cfg["go_backwards"],
                        "kernel": w[0].astype(np.float64),
                        "recurrent_kernel": w[1].astype(np.float64),
                        "bias": (w[2].astype(np.float64) if cfg["use_bias"]
                                 else None)}
            fw, bw = p(fcfg, ws[:half]), p(bcfg, ws[half:])
            mask = g("mask")
            outs_r, st = np_bidirectional(
                fw, bw, m["merge_mode"], m["return_sequences"],
                m["return_state"], m["time_major"], g("x"), mask,
                g("h_fw"), g("h_bw"))
            got = [z[f"{n}/out_{j}"] for j in range(m["n_outputs"])]
            check(n, "reload", got, outs_r)
            if m["stateful"]:
                o2, _ = np_bidirectional(
                    fw, bw, m["merge_mode"], m["return_sequences"],
                    m["return_state"], m["time_major"], g("x2"), mask, *st)
                check(n, "reload2", [z[f"{n}/out2_{j}"]
                                     for j in range(m["n_outputs"])], o2)
                check(n, "reload3", [z[f"{n}/out3_{j}"]
                                     for j in range(m["n_outputs"])], outs_r)
    return len(doc["cases"])


def main():
    print("tensorflow", tf.__version__, "tf_keras", tf_keras.__version__)
    covered = {c["merge_mode"] for c in CASES}
    assert covered == set(MERGE_MODES), covered
    arrays, metas, worst = {}, [], 0.0
    for i, c in enumerate(CASES):
        meta, arrs, err = build_case(c, seed=20250 + i)
        metas.append(meta)
        for k, v in arrs.items():
            arrays[f"{c['name']}/{k}"] = v
        worst = max(worst, err)
        print(f"{c['name']:26s} merge={str(c['merge_mode']):6s} "
              f"n_w={meta['n_weights']} n_out={meta['n_outputs']} "
              f"shapes={meta['output_shapes']} err={err:.2e}")
    print(f"worst abs error vs float64 reference: {worst:.2e}")
    assert 12 <= len(metas) <= 16, len(metas)

    os.makedirs(OUT_DIR, exist_ok=True)
    npz_path = os.path.join(OUT_DIR, "cases.npz")
    json_path = os.path.join(OUT_DIR, "cases.json")
    np.savez_compressed(npz_path, **arrays)
    doc = {"tensorflow": tf.__version__, "tf_keras": tf_keras.__version__,
           "rules": RULES, "cases": metas}
    with open(json_path, "w") as fh:
        json.dump(doc, fh, indent=1, sort_keys=False)
        fh.write("\n")
    n = reload_check(npz_path, json_path)
    print(f"wrote {n} cases, {len(arrays)} arrays")
    for f in (npz_path, json_path):
        print(os.path.relpath(f), os.path.getsize(f), "bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
