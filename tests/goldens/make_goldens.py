"""Generate golden data for tvm_gru from the REAL TF v1 Keras GRUCell.

The reference cell is ``tf_keras.src.layers.rnn.gru_v1.GRUCell`` (what
``tf.compat.v1.keras.layers.GRUCell`` resolves to when ``TF_USE_LEGACY_KERAS=1``
is set before TensorFlow is imported).  TensorFlow is NOT a dependency of
tvm_gru; it is only needed to regenerate these files, so install it in a
separate virtual environment:

    python3 -m venv /opt/tfenv
    /opt/tfenv/bin/pip install tensorflow-cpu==2.21.0 tf_keras==2.21.0 numpy

(tf_keras declares a dependency on ``tensorflow``, so pip also installs the
``tensorflow==2.21.0`` wheel next to ``tensorflow-cpu``; that is fine.)

Regenerate from the repository root with:

    /opt/tfenv/bin/python tests/goldens/make_goldens.py

Outputs (next to this script):

* ``goldens.npz`` (np.savez_compressed).  For every case ``N``:
  ``N/kernel`` (input_dim, 3*units), ``N/recurrent_kernel`` (units, 3*units),
  ``N/bias`` (only when use_bias: (3*units,), or (2, 3*units) when
  reset_after), ``N/x`` (steps, batch, input_dim), ``N/h0`` (batch, units),
  ``N/out`` (steps, batch, units) = the state after each step, produced by
  calling the real cell step by step: ``out, [h] = cell(x[t], [h],
  training=False)``.  All arrays have the case's dtype.
* ``cases.json``: ``{"tensorflow", "tf_keras", "cases": [{"name", "config",
  "dtype", "batch", "input_dim", "units", "steps", "use_bias", "note"}]}``
  where ``config`` is the real ``cell.get_config()`` made JSON-safe.
* ``keras_configs.json``: a list of ``{"name", "config"}`` entries holding real
  ``get_config()`` dicts of cells built with non-default arguments; the
  entries with regularizers also hold ``"input_dim"``, ``"weights"`` (nested
  lists, in ``get_weights()`` order), ``"losses"`` (one float per entry of
  ``cell.losses`` after building and setting those weights) and
  ``"loss_sources"`` (which weight each loss belongs to).

Weights are set explicitly with ``cell.set_weights`` from
``np.random.default_rng(seed)`` (uniform in +-scale, scales chosen per case),
so the files are reproducible.  Every golden is checked against an independent
float64 NumPy re-implementation before anything is written.
"""

import json
import math
import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from tf_keras.src.layers.rnn import gru_v1  # noqa: E402

assert tf.compat.v1.keras.layers.GRUCell is gru_v1.GRUCell, (
    "tf.compat.v1.keras.layers.GRUCell is not the tf_keras v1 cell; "
    "TF_USE_LEGACY_KERAS=1 must be set before importing tensorflow"
)

OUT_DIR = os.path.dirname(os.path.abspath(__file__))
GRUCell = gru_v1.GRUCell

# Element-wise activations that tf_keras 2.21 ``activations.get`` resolves.
# ('silu' resolves to tf.nn.silu and serializes as 'swish'; 'relu6' and
# 'leaky_relu' resolve to tf.nn.relu6 / tf.nn.leaky_relu(alpha=0.2).)
# 'softmax' and 'log_softmax' also resolve but are not element-wise.
ELEMENTWISE = [
    "tanh", "sigmoid", "hard_sigmoid", "relu", "linear", "elu", "selu",
    "softplus", "softsign", "swish", "silu", "gelu", "exponential", "mish",
    "relu6", "leaky_relu",
]
# Activations that are unbounded above / grow fast: keep these at small scale.
SMALL_SCALE = {"exponential", "softplus", "linear"}


# --------------------------------------------------------------------------
# JSON safety
# --------------------------------------------------------------------------
def json_safe(obj):
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, tf.DType):
        return obj.name
    if isinstance(obj, tf.TensorShape):
        return obj.as_list()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        if isinstance(obj, float) and not math.isfinite(obj):
            raise ValueError(f"non-finite float in JSON data: {obj}")
        return obj
    raise TypeError(f"cannot make {type(obj)} JSON-safe: {obj!r}")


# --------------------------------------------------------------------------
# Independent float64 NumPy reference
# --------------------------------------------------------------------------
_erfc = np.vectorize(math.erfc, otypes=[np.float64])
GELU_C = float(np.float32(0.7071067811865476))
LEAKY_ALPHA = float(np.float32(0.2))
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _softplus(x):
    return np.logaddexp(0.0, x)


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


NP_ACT = {
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "hard_sigmoid": lambda x: np.clip(0.2 * x + 0.5, 0.0, 1.0),
    "relu": lambda x: np.maximum(x, 0.0),
    "linear": lambda x: x,
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
    "selu": lambda x: SELU_SCALE * np.where(
        x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0.0))),
    "softplus": _softplus,
    "softsign": lambda x: x / (1.0 + np.abs(x)),
    "swish": lambda x: x * _sigmoid(x),
    "silu": lambda x: x * _sigmoid(x),
    # TF's gelu is 0.5*x*erfc(-x*c) with c = cast(0.7071067811865476, dtype);
    # the Python float goes through a float32 constant first, so even a
    # float64 cell uses float32(1/sqrt(2)) (an exact-1/sqrt(2) float64 GELU
    # differs from TF by up to ~5e-9).
    "gelu": lambda x: 0.5 * x * _erfc(-x * GELU_C),
    "exponential": np.exp,
    "mish": lambda x: x * np.tanh(_softplus(x)),
    "relu6": lambda x: np.clip(x, 0.0, 6.0),
    # tf.nn.leaky_relu's alpha is a float32 op attribute, so a float64 cell
    # uses float32(0.2) = 0.20000000298023224 (exact 0.2 differs by ~7e-10).
    "leaky_relu": lambda x: np.where(x > 0, x, LEAKY_ALPHA * x),
    None: lambda x: x,
}


def np_gru(kernel, rec, bias, x, h0, act, rec_act, reset_after):
    """Float64 reference. Returns (states (T,B,H), max |pre-activation|)."""
    g, f = NP_ACT[act], NP_ACT[rec_act]
    k = kernel.astype(np.float64)
    r_k = rec.astype(np.float64)
    H = r_k.shape[0]
    if bias is None:
        bi = np.zeros(3 * H)
        br = np.zeros(3 * H)
    elif reset_after:
        bi, br = bias.astype(np.float64)
    else:
        bi, br = bias.astype(np.float64), np.zeros(3 * H)
    h = h0.astype(np.float64)
    outs, maxpre = [], 0.0
    for xt in x.astype(np.float64):
        xi = xt @ k + bi
        if reset_after:
            hr = h @ r_k + br
            pz, pr = xi[:, :H] + hr[:, :H], xi[:, H:2 * H] + hr[:, H:2 * H]
            z, r = f(pz), f(pr)
            ph = xi[:, 2 * H:] + r * hr[:, 2 * H:]
        else:
            hr = h @ r_k[:, :2 * H]
            pz, pr = xi[:, :H] + hr[:, :H], xi[:, H:2 * H] + hr[:, H:2 * H]
            z, r = f(pz), f(pr)
            ph = xi[:, 2 * H:] + (r * h) @ r_k[:, 2 * H:]
        hh = g(ph)
        h = z * h + (1.0 - z) * hh
        maxpre = max(maxpre, float(np.abs(np.concatenate([pz, pr, ph])).max()))
        outs.append(h)
    return np.stack(outs), maxpre


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------
DEFAULTS = dict(batch=4, input_dim=5, units=6, steps=3, dtype="float32",
                w=0.6, b=0.5, xs=1.5, hs=1.0, kwargs=None, note="")
CASES = []


def case(name, **kw):
    assert all(k in DEFAULTS for k in kw), kw
    c = dict(DEFAULTS)
    c.update(kw)
    c["kwargs"] = dict(c["kwargs"] or {})
    c["name"] = name
    assert name not in [o["name"] for o in CASES], name
    CASES.append(c)


# -- the v1 default cell: GRUCell(units) and nothing else ---------------
case("default", kwargs={}, note="v1 defaults: GRUCell(units) with no other args")
case("default_seq12", steps=12, kwargs={}, note="v1 defaults, 12 steps")

# -- every element-wise activation as `activation` -----------------------
for i, a in enumerate(ELEMENTWISE):
    small = a in SMALL_SCALE
    case(f"act_{a}",
         w=0.3 if small else 0.6, xs=1.0 if small else 1.5,
         kwargs=dict(activation=a, reset_after=bool(i % 2),
                     implementation=1 + (i // 2) % 2),
         note=f"activation={a}, recurrent_activation v1 default hard_sigmoid")
# -- every element-wise activation as `recurrent_activation` -------------
for i, a in enumerate(ELEMENTWISE):
    small = a in SMALL_SCALE
    # exp as the update gate makes z > 1 and amplifies h: keep it tiny.
    case(f"recact_{a}",
         w=0.15 if a == "exponential" else 0.3 if small else 0.6,
         xs=1.0 if small else 1.5, hs=0.5 if a == "exponential" else 1.0,
         kwargs=dict(recurrent_activation=a, reset_after=not bool(i % 2),
                     implementation=2 - (i // 2) % 2),
         note=f"recurrent_activation={a}, activation tanh")
# -- None means linear ---------------------------------------------------
case("act_none", w=0.3, xs=1.0, kwargs=dict(activation=None),
     note="activation=None (config reports 'linear')")
case("recact_none", w=0.3, xs=1.0, kwargs=dict(recurrent_activation=None,
                                               reset_after=True),
     note="recurrent_activation=None (config reports 'linear')")
case("both_none", w=0.3, xs=1.0,
     kwargs=dict(activation=None, recurrent_activation=None),
     note="activation=None and recurrent_activation=None")
case("both_none_ra", w=0.3, xs=1.0, kwargs=dict(
    activation=None, recurrent_activation=None, reset_after=True,
    implementation=2), note="linear/linear, reset_after, impl 2")

# -- reset_after x implementation x use_bias grid ------------------------
for ra in (False, True):
    for impl in (1, 2):
        for ub in (True, False):
            case(f"grid_ra{int(ra)}_impl{impl}_bias{int(ub)}",
                 kwargs=dict(reset_after=ra, implementation=impl,
                             use_bias=ub),
                 note="reset_after/implementation/use_bias grid, "
                      "v1 default activations")
case("sigmoid_tanh_ra1", kwargs=dict(recurrent_activation="sigmoid",
                                     reset_after=True, implementation=2),
     note="cuDNN/torch-compatible config (v2 defaults)")

# -- odd shapes -----------------------------------------------------------
case("units1", units=1, kwargs={}, note="units=1")
case("units1_ra", units=1, input_dim=1, batch=1,
     kwargs=dict(reset_after=True), note="units=1, input_dim=1, batch=1")
case("units7_in1", units=7, input_dim=1, kwargs={}, note="input_dim=1")
case("batch1", batch=1, units=7, kwargs=dict(implementation=2),
     note="batch=1")
case("batch17", batch=17, units=7, input_dim=9, kwargs=dict(
    reset_after=True, recurrent_activation="sigmoid"), note="batch=17")
case("units257", units=257, input_dim=3, batch=2, steps=1, w=0.1,
     kwargs={}, note="units=257 (wide), steps=1")
case("units257_ra_impl2", units=257, input_dim=3, batch=2, steps=1, w=0.1,
     kwargs=dict(reset_after=True, implementation=2),
     note="units=257, reset_after, impl 2, steps=1")
case("in300", input_dim=300, units=7, batch=3, steps=1, w=0.1,
     kwargs={}, note="input_dim=300, steps=1")
case("in300_ra_nobias", input_dim=300, units=7, batch=3, steps=1, w=0.1,
     kwargs=dict(reset_after=True, use_bias=False, implementation=2),
     note="input_dim=300, reset_after, no bias, steps=1")

# -- float64 cells ---------------------------------------------------------
case("f64_default", dtype="float64", kwargs=dict(dtype="float64"),
     note="float64 cell, v1 defaults")
case("f64_ra_impl2", dtype="float64", kwargs=dict(
    dtype="float64", reset_after=True, implementation=2),
    note="float64 cell, reset_after, impl 2")
case("f64_gelu_sigmoid_nobias", dtype="float64", kwargs=dict(
    dtype="float64", activation="gelu", recurrent_activation="sigmoid",
    use_bias=False), note="float64 cell, gelu/sigmoid, no bias")
case("f64_seq12", dtype="float64", steps=12, kwargs=dict(dtype="float64"),
     note="float64 cell, v1 defaults, 12 steps")
case("f64_large_ra0", dtype="float64", batch=5, input_dim=8, units=8,
     w=2.0, b=1.0, xs=3.0, kwargs=dict(dtype="float64"),
     note="float64 cell, large pre-activations (hard_sigmoid clip)")
case("f64_softsign_swish_odd", dtype="float64", batch=1, input_dim=1,
     units=7, kwargs=dict(dtype="float64", activation="softsign",
                          recurrent_activation="swish", reset_after=True),
     note="float64 cell, odd shapes")

# -- every element-wise activation in a float64 cell ------------------------
for i, a in enumerate(ELEMENTWISE):
    small = a in SMALL_SCALE
    sc = dict(w=0.3 if small else 0.6, xs=1.0 if small else 1.5,
              dtype="float64", batch=2, input_dim=3, units=4, steps=2)
    case(f"f64_act_{a}", **sc, kwargs=dict(
        dtype="float64", activation=a, recurrent_activation="sigmoid",
        reset_after=bool(i % 2), implementation=1 + (i // 2) % 2),
        note=f"float64 cell, activation={a}")
    if a == "exponential":
        sc.update(w=0.15, hs=0.5)
    case(f"f64_recact_{a}", **sc, kwargs=dict(
        dtype="float64", recurrent_activation=a, reset_after=not (i % 2),
        implementation=2 - (i // 2) % 2),
        note=f"float64 cell, recurrent_activation={a}")

# -- 12-step sequences -----------------------------------------------------
case("seq12_ra1", steps=12, kwargs=dict(reset_after=True),
     note="12 steps, hard_sigmoid/tanh, reset_after")
case("seq12_sigmoid_tanh_ra1_impl2", steps=12, kwargs=dict(
    recurrent_activation="sigmoid", reset_after=True, implementation=2),
    note="12 steps, v2-style config")
case("seq12_relu", steps=12, w=0.4, kwargs=dict(activation="relu"),
     note="12 steps, relu/hard_sigmoid")
case("seq12_nobias_impl2", steps=12, kwargs=dict(use_bias=False,
                                                 implementation=2),
     note="12 steps, no bias, impl 2")
case("seq12_elu_softsign", steps=12, batch=3, input_dim=4, units=5,
     kwargs=dict(activation="elu", recurrent_activation="softsign",
                 reset_after=True), note="12 steps, elu/softsign")

# -- large pre-activations (|pre| up to ~10-18, hard_sigmoid clip) --------
for ra in (False, True):
    case(f"large_ra{int(ra)}", batch=5, input_dim=8, units=8, w=2.0, b=1.0,
         xs=3.0, kwargs=dict(reset_after=ra),
         note="large pre-activations, hard_sigmoid clip at |x|>=2.5")
    case(f"large_ra{int(ra)}_impl2_seq12", batch=5, input_dim=8, units=8,
         w=2.0, b=1.0, xs=3.0, steps=12,
         kwargs=dict(reset_after=ra, implementation=2),
         note="large pre-activations, 12 steps, impl 2")
    case(f"large_sigmoid_ra{int(ra)}", batch=5, input_dim=8, units=8,
         w=2.0, b=1.0, xs=3.0, kwargs=dict(
             reset_after=ra, recurrent_activation="sigmoid"),
         note="large pre-activations, sigmoid/tanh")
case("large_relu_hs_nobias", batch=5, input_dim=8, units=8, w=2.0,
     xs=3.0, kwargs=dict(activation="relu", use_bias=False),
     note="large pre-activations, relu/hard_sigmoid, no bias")


# --------------------------------------------------------------------------
def build_case(c, seed):
    tf_keras.backend.clear_session()  # deterministic layer names
    dt = np.dtype(c["dtype"])
    B, I, H, T = c["batch"], c["input_dim"], c["units"], c["steps"]
    cell = GRUCell(H, **c["kwargs"])
    cell.build((None, I))
    rng = np.random.default_rng(seed)
    kernel = rng.uniform(-c["w"], c["w"], (I, 3 * H)).astype(dt)
    rec = rng.uniform(-c["w"], c["w"], (H, 3 * H)).astype(dt)
    weights = [kernel, rec]
    bias = None
    if cell.use_bias:
        shape = (2, 3 * H) if cell.reset_after else (3 * H,)
        bias = rng.uniform(-c["b"], c["b"], shape).astype(dt)
        weights.append(bias)
    cell.set_weights(weights)
    got = cell.get_weights()
    assert len(got) == len(weights)
    for a, b in zip(got, weights):
        assert a.dtype == dt and a.shape == b.shape and np.array_equal(a, b)
    x = rng.uniform(-c["xs"], c["xs"], (T, B, I)).astype(dt)
    h0 = rng.uniform(-c["hs"], c["hs"], (B, H)).astype(dt)

    h = tf.constant(h0)
    outs = []
    for t in range(T):
        out, new = cell(tf.constant(x[t]), [h], training=False)
        assert isinstance(new, list) and len(new) == 1
        h = new[0]
        o = out.numpy()
        assert o.dtype == dt and o.shape == (B, H)
        assert np.array_equal(o, h.numpy())
        outs.append(o)
    out = np.stack(outs)
    assert np.all(np.isfinite(out)), c["name"]

    cfg = json_safe(cell.get_config())
    ref, maxpre = np_gru(kernel, rec, bias, x, h0, cfg["activation"],
                         cfg["recurrent_activation"], cfg["reset_after"])
    scale = max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(out.astype(np.float64) - ref).max())
    tol = (1e-12 if dt == np.float64 else 1e-5) * scale
    assert err <= tol, (c["name"], err, tol)
    arrays = {"kernel": kernel, "recurrent_kernel": rec, "x": x, "h0": h0,
              "out": out}
    if bias is not None:
        arrays["bias"] = bias
    meta = {
        "name": c["name"], "config": cfg, "dtype": c["dtype"],
        "batch": B, "input_dim": I, "units": H, "steps": T,
        "use_bias": bool(cfg["use_bias"]),
        "note": (f"{c['note']}; seed={seed}, weights U(+-{c['w']}), "
                 f"bias U(+-{c['b']}), x U(+-{c['xs']}), h0 U(+-{c['hs']}); "
                 f"max|pre-activation|={maxpre:.3g}, max|out|="
                 f"{float(np.abs(ref).max()):.3g}"),
    }
    return meta, arrays, err, scale, maxpre


# --------------------------------------------------------------------------
# keras_configs.json
# --------------------------------------------------------------------------
def keras_configs():
    K = tf_keras
    specs = [
        ("default", dict(units=3), None),
        ("initializers", dict(
            units=4,
            kernel_initializer=K.initializers.RandomNormal(stddev=0.3, seed=3),
            recurrent_initializer="identity",
            bias_initializer=K.initializers.Constant(0.1)), None),
        ("regularizers_l2_l1l2", dict(
            units=4, kernel_regularizer=K.regularizers.l2(0.01),
            recurrent_regularizer=K.regularizers.L1L2(l1=0.1, l2=0.2),
            bias_regularizer="l1"), 3),
        ("regularizers_reset_after", dict(
            units=3, reset_after=True, implementation=2,
            kernel_regularizer=K.regularizers.L1(0.05),
            bias_regularizer=K.regularizers.L2(0.3)), 2),
        ("regularizers_all_float64", dict(
            units=2, dtype="float64",
            kernel_regularizer=K.regularizers.L1L2(l1=0.01, l2=0.02),
            recurrent_regularizer="l2",
            bias_regularizer=K.regularizers.l1_l2(l1=0.5, l2=0.25)), 3),
        ("constraints", dict(
            units=4, kernel_constraint=K.constraints.MaxNorm(2.0),
            recurrent_constraint=K.constraints.UnitNorm(axis=0),
            bias_constraint=K.constraints.NonNeg()), None),
        ("minmaxnorm", dict(
            units=4, kernel_constraint=K.constraints.MinMaxNorm(
                min_value=0.5, max_value=1.5, rate=0.8, axis=0)), None),
        ("dropout", dict(units=4, dropout=0.3, recurrent_dropout=0.2), None),
        ("dropout_forces_impl1", dict(units=4, recurrent_dropout=0.2,
                                      implementation=2), None),
        ("dropout_clamped", dict(units=4, dropout=1.5,
                                 recurrent_dropout=-0.5), None),
        ("reset_after_impl2", dict(units=4, reset_after=True,
                                   implementation=2), None),
        ("float64", dict(units=4, dtype="float64"), None),
        ("activations", dict(units=4, activation="relu",
                             recurrent_activation="sigmoid",
                             use_bias=False), None),
        ("activation_none", dict(units=4, activation=None,
                                 recurrent_activation=None), None),
        ("silu_serializes_as_swish", dict(units=4, activation="silu"), None),
        ("mixed_float16_policy", dict(
            units=4, dtype=K.mixed_precision.Policy("mixed_float16")), None),
        ("everything", dict(
            units=4, activation="selu", recurrent_activation="sigmoid",
            kernel_initializer=K.initializers.RandomNormal(stddev=0.3, seed=3),
            recurrent_initializer="identity",
            bias_initializer=K.initializers.Constant(0.1),
            kernel_regularizer=K.regularizers.l2(0.01),
            recurrent_regularizer=K.regularizers.L1L2(l1=0.1, l2=0.2),
            kernel_constraint=K.constraints.MaxNorm(2.0),
            recurrent_constraint=K.constraints.UnitNorm(axis=0),
            bias_constraint=K.constraints.NonNeg(),
            dropout=0.3, recurrent_dropout=0.2, reset_after=True,
            implementation=2, dtype="float64"), None),
    ]
    entries = []
    for i, (name, kw, input_dim) in enumerate(specs):
        tf_keras.backend.clear_session()
        cell = GRUCell(**kw)
        entry = {"name": name, "config": json_safe(cell.get_config())}
        if input_dim is not None:
            cell.build((None, input_dim))
            rng = np.random.default_rng(1000 + i)
            dt = np.dtype(cell.dtype)
            ws = [rng.uniform(-1.0, 1.0, w.shape).astype(dt)
                  for w in cell.get_weights()]
            cell.set_weights(ws)
            losses = [float(v.numpy()) for v in cell.losses]
            # Independent check of the penalties: l1*sum|w| + l2*sum(w^2).
            sources, expect = [], []
            for wname, reg, w in zip(
                    ["kernel", "recurrent_kernel", "bias"],
                    [cell.kernel_regularizer, cell.recurrent_regularizer,
                     cell.bias_regularizer], ws):
                if reg is None:
                    continue
                rc = reg.get_config()
                w64 = w.astype(np.float64)
                expect.append(rc.get("l1", 0.0) * np.abs(w64).sum()
                              + rc.get("l2", 0.0) * np.square(w64).sum())
                sources.append(wname)
            assert len(losses) == len(expect), (name, losses, expect)
            rt = 1e-12 if dt == np.float64 else 1e-5
            for got, exp in zip(losses, expect):
                assert abs(got - exp) <= rt * max(1.0, abs(exp)), (name, got,
                                                                   exp)
            entry.update(input_dim=input_dim,
                         weights=json_safe([w.tolist() for w in ws]),
                         losses=losses, loss_sources=sources)
        entries.append(entry)
    return entries


def main():
    names = tf_keras.activations
    for a in ELEMENTWISE:
        names.get(a)  # raises if tf_keras does not know it
    print("tensorflow", tf.__version__, "tf_keras", tf_keras.__version__)

    arrays, metas = {}, []
    worst = {}
    for i, c in enumerate(CASES):
        meta, arrs, err, scale, maxpre = build_case(c, seed=20240 + i)
        metas.append(meta)
        for k, v in arrs.items():
            arrays[f"{c['name']}/{k}"] = v
        worst[c["dtype"]] = max(worst.get(c["dtype"], 0.0), err / scale)
        print(f"{c['name']:32s} {c['dtype']} B={c['batch']} I="
              f"{c['input_dim']} H={c['units']} T={c['steps']} "
              f"err={err:.2e} max|pre|={maxpre:.3g} "
              f"max|out|={float(np.abs(arrs['out']).max()):.3g}")
    print("worst relative error per dtype:", worst)
    assert len(metas) >= 44, len(metas)

    npz_path = os.path.join(OUT_DIR, "goldens.npz")
    np.savez_compressed(npz_path, **arrays)
    doc = {"tensorflow": tf.__version__, "tf_keras": tf_keras.__version__,
           "cases": metas}
    with open(os.path.join(OUT_DIR, "cases.json"), "w") as fh:
        json.dump(doc, fh, indent=1, sort_keys=False)
        fh.write("\n")
    kc = keras_configs()
    with open(os.path.join(OUT_DIR, "keras_configs.json"), "w") as fh:
        json.dump(kc, fh, indent=1)
        fh.write("\n")

    # Re-read what was written and re-check it against the reference.
    with np.load(npz_path) as z:
        for m in json.load(open(os.path.join(OUT_DIR, "cases.json")))["cases"]:
            n = m["name"]
            b = z[f"{n}/bias"] if m["use_bias"] else None
            assert (f"{n}/bias" in z.files) == m["use_bias"]
            ref, _ = np_gru(z[f"{n}/kernel"], z[f"{n}/recurrent_kernel"], b,
                            z[f"{n}/x"], z[f"{n}/h0"],
                            m["config"]["activation"],
                            m["config"]["recurrent_activation"],
                            m["config"]["reset_after"])
            out = z[f"{n}/out"]
            assert out.dtype == np.dtype(m["dtype"])
            assert out.shape == (m["steps"], m["batch"], m["units"])
            tol = (1e-12 if m["dtype"] == "float64" else 1e-5) * max(
                1.0, float(np.abs(ref).max()))
            assert float(np.abs(out - ref).max()) <= tol, n
    print(f"wrote {len(metas)} cases, {len(arrays)} arrays, "
          f"{len(kc)} keras configs")
    print("default get_config():")
    print(json.dumps(metas[0]["config"], indent=1))
    for f in ("goldens.npz", "cases.json", "keras_configs.json"):
        print(f, os.path.getsize(os.path.join(OUT_DIR, f)), "bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
