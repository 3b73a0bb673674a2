"""Element-wise Keras activations, one table: name -> TE expression, numpy function, ONNX op.

Each activation is defined twice on purpose: once as a TVM tensor expression (what the compiled kernel
computes) and once in numpy float64 (what the reference oracle computes), so the two are independent.

Kernels use vectorisable polynomial ``exp``/``tanh`` (Eigen / Cephes, about 1 ulp in float32 and float64):
LLVM lowers TVM's ``exp``/``tanh`` intrinsics to one scalar libm call per element, which costs more than
the GEMV at batch 1 (float32) and 8-13 % of a float64 step.

Divisions go through :func:`divide`. Inside :func:`divide_free` (the aarch64 rules build their kernels there)
``a / b`` becomes ``a * (1/b)`` with the reciprocal of :func:`te_reciprocal_aarch64`, NEON's estimate refined by
Newton steps: a vector ``fdiv`` on Cortex-A72 blocks its FP pipe for up to 34 cycles per 4 lanes (llvm-mca's
model), which was most of the tanh blend's cost there; elsewhere the expressions are exactly as before.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["Activation", "get", "names", "canonical_name", "let", "divide", "divide_free", "te_reciprocal_aarch64"]


@dataclass(frozen=True)
class Activation:
    """One element-wise activation.

    Attributes
    ----------
    name : str
        Canonical Keras name (what ``get_config`` reports).
    te : callable
        ``te(expr) -> expr`` building the TVM expression of the same dtype.
    np : callable
        ``np(array) -> array``, the float64 numpy reference.
    onnx : tuple or None
        ``(op_name, alpha, beta)`` for the ONNX GRU ``activations`` attribute; None if ONNX has no equivalent.
    """

    name: str
    te: Callable
    np: Callable
    onnx: tuple | None


# ---------------------------------------------------------------------------------------------
# TE building blocks (imported lazily so the numpy half of this module works without TVM).
def _tvm():
    from tvm import te, tirx  # noqa: PLC0415

    return te, tirx


def _dtype(expr) -> str:
    return str(expr.ty)  # 0.27 PrimExprs carry their dtype as ``ty``


def _c(value, like):
    _, tirx = _tvm()
    return tirx.const(value, _dtype(like))


def _is_f32(expr) -> bool:
    return _dtype(expr) == "float32"


def let(value, body):
    """``body(v)`` with ``v`` bound once to ``value`` (TE does no CSE; this keeps kernels small)."""
    _, tirx = _tvm()
    var = tirx.Var("t", _dtype(value))
    return tirx.Let(var, value, body(var))


# ---------------------------------------------------------------------------------------------
# Division, and the divide-free variant of the aarch64 kernels.
_RECIPROCAL = contextvars.ContextVar("tvm_gru_reciprocal", default=None)
# Newton steps after NEON's 8-bit estimate: each doubles the correct bits (8 -> 16 -> 32: float32; -> 64: float64).
_NEWTON_STEPS = {"float32": 2, "float64": 3}


def divide(a, b):
    """``a / b``; inside :func:`divide_free`, ``a * r(b)`` with the reciprocal ``r`` it installed (``r(b)`` alone
    when ``a`` is the constant 1)."""
    reciprocal = _RECIPROCAL.get()
    if reciprocal is None:
        return a / b
    _, tirx = _tvm()
    inverse = reciprocal(b)
    return inverse if isinstance(a, tirx.FloatImm) and a.value == 1.0 else a * inverse


@contextlib.contextmanager
def divide_free(reciprocal=None):
    """Build activations (and anything else calling :func:`divide`) without division while the block runs.

    Parameters
    ----------
    reciprocal : callable, optional
        ``reciprocal(expr) -> expr``, 1/x of the same dtype; default :func:`te_reciprocal_aarch64`.
    """
    token = _RECIPROCAL.set(reciprocal or te_reciprocal_aarch64)
    try:
        yield
    finally:
        _RECIPROCAL.reset(token)


def te_reciprocal_aarch64(x):
    """1/x on aarch64: ``frecpe`` (8-bit estimate) then Newton steps ``e *= frecps(x, e)`` (= 2 - x*e).

    Two steps for float32, three for float64 (within 1-2 ulp of the quotient). The LLVM intrinsics are pure
    and overloaded on the type, so TVM's vectorizer turns them into the v4f32 / v2f64 instructions, and the
    scalar tails use the scalar forms. ``frecps`` defines inf * 0 as 2, so 1/inf = 0 and 1/0 = inf exactly
    as a division gives them (sigmoid of a large negative number relies on the first).
    """
    _, tirx = _tvm()
    dtype = _dtype(x)

    def newton(v):
        e = tirx.call_llvm_pure_intrin(dtype, "llvm.aarch64.neon.frecpe", v)
        for _ in range(_NEWTON_STEPS[dtype]):
            e = let(e, lambda ev: ev * tirx.call_llvm_pure_intrin(dtype, "llvm.aarch64.neon.frecps", v, ev))
        return e

    return let(x, newton)


def _isnan(x):
    """NaN test on the bits (exponent all ones, mantissa non-zero).

    Not ``x != x`` (the simplifier folds it to False) and not ``tirx.isnan`` (TVM's vectorizer does not
    know it and falls back to a scalar loop, which made every epilogue scalar).
    """
    _, tirx = _tvm()
    bits = 32 if _is_f32(x) else 64
    word = tirx.reinterpret(f"int{bits}", x)
    magnitude = word & tirx.const((1 << (bits - 1)) - 1, f"int{bits}")
    return magnitude > tirx.const(0x7F800000 if bits == 32 else 0x7FF0000000000000, f"int{bits}")


def _nan_safe(x, value):
    """Return ``x`` where it is NaN: min/max clamps would otherwise turn NaN into a number."""
    _, tirx = _tvm()
    return tirx.Select(_isnan(x), x, value)


def te_exp(x):
    """exp(x); Cephes range reduction + polynomial (float32, about 1 ulp) or Pade form (float64, about 1 ulp)."""
    return let(x, _exp_f32 if _is_f32(x) else _exp_f64)


def _exp_f32(x):
    te, tirx = _tvm()
    xc = te.max(te.min(x, _c(88.3762626647949, x)), _c(-87.3365447504019, x))
    fx = te.floor(xc * _c(1.44269504088896341, x) + _c(0.5, x))
    r = xc - fx * _c(0.693359375, x) - fx * _c(-2.12194440e-4, x)
    p = _c(1.9875691500e-4, x)
    for coef in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        p = p * r + _c(coef, x)
    y = p * r * r + r + _c(1.0, x)
    bits = tirx.shift_left(tirx.Cast("int32", fx) + tirx.const(127, "int32"), tirx.const(23, "int32"))
    scaled = y * tirx.reinterpret("float32", bits)
    # Beyond the clamps exp under/overflows exactly as libm does.
    scaled = tirx.Select(x > _c(88.72283935546875, x), _c(float("inf"), x), scaled)
    scaled = tirx.Select(x < _c(-103.97207708, x), _c(0.0, x), scaled)
    return _nan_safe(x, scaled)


_EXP64_P = (1.26177193074810590878e-4, 3.02994407707441961300e-2, 9.99999999999999999910e-1)
_EXP64_Q = (3.00198505138664455042e-6, 2.52448340349684104192e-3, 2.27265548208155028766e-1, 2.00000000000000000009e0)


def _poly(coefs, v, like):
    p = _c(coefs[0], like)
    for coef in coefs[1:]:
        p = p * v + _c(coef, like)
    return p


def _exp_f64(x):
    """Cephes ``exp`` (double): exp(r) = 1 + 2 r P(r^2) / (Q(r^2) - r P(r^2)) on |r| <= ln2/2, then * 2^n.

    2^n is applied in two halves so the whole range down to the smallest subnormal stays exact.
    """
    te, tirx = _tvm()
    xc = te.max(te.min(x, _c(709.782712893384, x)), _c(-745.2, x))
    fx = te.floor(xc * _c(1.4426950408889634073599, x) + _c(0.5, x))
    r = xc - fx * _c(6.93145751953125e-1, x) - fx * _c(1.42860682030941723212e-6, x)
    rr = r * r
    px = r * _poly(_EXP64_P, rr, x)
    y = _c(1.0, x) + _c(2.0, x) * divide(px, _poly(_EXP64_Q, rr, x) - px)
    n = tirx.Cast("int64", fx)
    half = tirx.shift_right(n, tirx.const(1, "int64"))

    def pow2(e):
        return tirx.reinterpret("float64", tirx.shift_left(e + tirx.const(1023, "int64"), tirx.const(52, "int64")))

    scaled = y * pow2(half) * pow2(n - half)
    scaled = tirx.Select(x > _c(709.782712893384, x), _c(float("inf"), x), scaled)
    scaled = tirx.Select(x < _c(-745.2, x), _c(0.0, x), scaled)
    return _nan_safe(x, scaled)


_TANH64_P = (-9.64399179425052238628e-1, -9.92877231001918586564e1, -1.61468768441708447952e3)
_TANH64_Q = (1.0, 1.12811678491632931402e2, 2.23548839060100448583e3, 4.84406305325125486048e3)


def _tanh_f64(x):
    """Cephes ``tanh`` (double): a rational form on |x| <= 0.625, 1 - 2 / (exp(2|x|) + 1) beyond."""
    te, tirx = _tvm()
    ax = te.min(te.abs(x), _c(22.0, x))  # tanh(22) rounds to 1
    big = _c(1.0, x) - divide(_c(2.0, x), let(ax + ax, _exp_f64) + _c(1.0, x))
    z = x * x
    small = x + divide(x * z * _poly(_TANH64_P, z, x), _poly(_TANH64_Q, z, x))
    return let(big, lambda b: _nan_safe(x, tirx.Select(te.abs(x) > _c(0.625, x),
                                                       tirx.Select(x < _c(0.0, x), -b, b), small)))


_TANH_P = (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
           1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03)
_TANH_Q = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03)


def te_tanh(x):
    """tanh(x); Eigen's 13/6 rational approximation for float32 (a few ulp), Cephes for float64 (about 1 ulp)."""
    return let(x, _tanh_f32 if _is_f32(x) else _tanh_f64)


def _tanh_f32(x):
    te, tirx = _tvm()
    xc = te.max(te.min(x, _c(7.90531110763549805, x)), _c(-7.90531110763549805, x))
    x2 = xc * xc
    p = _c(_TANH_P[0], x)
    for coef in _TANH_P[1:]:
        p = p * x2 + _c(coef, x)
    q = _c(_TANH_Q[0], x)
    for coef in _TANH_Q[1:]:
        q = q * x2 + _c(coef, x)
    y = tirx.Select(te.abs(x) < _c(0.0004, x), x, divide(p * xc, q))
    return _nan_safe(x, y)


def te_sigmoid(x):
    return divide(_c(1.0, x), _c(1.0, x) + te_exp(-x))


def te_softplus(x):
    # log(1 + exp(x)) written as max(x, 0) + log1p(exp(-|x|)) so it never overflows.
    te, _ = _tvm()
    return te.max(x, _c(0.0, x)) + te.log(_c(1.0, x) + te_exp(-te.abs(x)))


def te_elu(x, alpha=1.0):
    _, tirx = _tvm()
    return tirx.Select(x > _c(0.0, x), x, _c(alpha, x) * (te_exp(x) - _c(1.0, x)))


_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def te_hard_sigmoid(x):
    # tf_keras backend.hard_sigmoid: clip(x * 0.2 + 0.5, 0, 1) in the input dtype (not Keras 3's relu6(x+3)/6).
    te, _ = _tvm()
    return let(x, lambda v: _nan_safe(v, te.max(te.min(v * _c(0.2, v) + _c(0.5, v), _c(1.0, v)), _c(0.0, v))))


# TF passes these constants through float32 tensors even in a float64 cell (measured against TF goldens).
_GELU_C = float(np.float32(1.0 / math.sqrt(2.0)))
LEAKY_ALPHA = float(np.float32(0.2))


def te_gelu(x):
    te, _ = _tvm()
    return _c(0.5, x) * x * (_c(1.0, x) + te.erf(x * _c(_GELU_C, x)))


def te_leaky_relu(x):
    _, tirx = _tvm()
    return tirx.Select(x > _c(0.0, x), x, x * _c(LEAKY_ALPHA, x))


# ---------------------------------------------------------------------------------------------
# numpy float64 references.
def _np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _np_softplus(x):
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def _np_elu(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))


def _np_gelu(x):
    from math import erf  # noqa: PLC0415

    return 0.5 * x * (1.0 + np.vectorize(erf, otypes=[np.float64])(x * _GELU_C))


def _te_max0(x):
    # min/max compile to maxps, which drops NaN; TF and numpy propagate it.
    te, _ = _tvm()
    return let(x, lambda v: _nan_safe(v, te.max(v, _c(0.0, v))))


def _bind_input(a: Activation) -> Activation:
    """Bind the activation's input to one variable: several use it twice (elu, swish, clamps), and a
    duplicated input that itself holds a Let (e.g. ``r`` inside the candidate) would be ill-formed TIR."""
    return Activation(a.name, lambda x, fn=a.te: let(x, fn), a.np, a.onnx)


_TABLE = {
    a.name: _bind_input(a)
    for a in [
        Activation("tanh", te_tanh, np.tanh, ("Tanh", None, None)),
        Activation("sigmoid", te_sigmoid, _np_sigmoid, ("Sigmoid", None, None)),
        Activation("hard_sigmoid", te_hard_sigmoid, lambda x: np.clip(0.2 * x + 0.5, 0.0, 1.0),
                   ("HardSigmoid", 0.2, 0.5)),
        Activation("relu", _te_max0, lambda x: np.maximum(x, 0.0), ("Relu", None, None)),
        Activation("linear", lambda x: x, lambda x: x, ("Affine", 1.0, 0.0)),
        Activation("elu", te_elu, _np_elu, ("Elu", 1.0, None)),
        Activation("selu", lambda x: _c(_SELU_SCALE, x) * te_elu(x, _SELU_ALPHA),
                   lambda x: _SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(np.minimum(x, 0.0))), None),
        Activation("softplus", te_softplus, _np_softplus, ("Softplus", None, None)),
        Activation("softsign", lambda x: divide(x, _tvm()[0].abs(x) + _c(1.0, x)), lambda x: x / (np.abs(x) + 1.0),
                   ("Softsign", None, None)),
        Activation("swish", lambda x: x * te_sigmoid(x), lambda x: x * _np_sigmoid(x), None),
        Activation("gelu", te_gelu, _np_gelu, None),
        Activation("exponential", te_exp, np.exp, None),
        Activation("mish", lambda x: x * te_tanh(te_softplus(x)), lambda x: x * np.tanh(_np_softplus(x)), None),
        Activation("leaky_relu", te_leaky_relu, lambda x: np.where(x > 0, x, LEAKY_ALPHA * x),
                   ("LeakyRelu", 0.2, None)),
        Activation("relu6", lambda x: _tvm()[0].min(_te_max0(x), _c(6.0, x)), lambda x: np.clip(x, 0.0, 6.0), None),
    ]
}
_ALIASES = {"silu": "swish", None: "linear", "None": "linear"}


def canonical_name(identifier) -> str:
    """Map a Keras activation identifier (name, None, or serialized dict) to its canonical name.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones).
    TypeError
        For anything that is not a str, None or a Keras-serialized dict.
    """
    if isinstance(identifier, dict) and "class_name" in identifier:
        # Keras may serialize a function activation as {"class_name": "function", "config": "tanh", ...}.
        identifier = identifier.get("config") if identifier["class_name"] == "function" else identifier["class_name"]
    if identifier is not None and not isinstance(identifier, str):
        raise TypeError(f"activation must be a str name or None, received {identifier!r} "
                        f"of type {type(identifier).__name__}")
    name = _ALIASES.get(identifier, identifier)
    if name not in _TABLE:
        raise ValueError(f"Unknown activation function {identifier!r}; expected one of {names()}")
    return name


def get(identifier) -> Activation:
    """Look an activation up by Keras identifier (see :func:`canonical_name`)."""
    return _TABLE[canonical_name(identifier)]


def names() -> list[str]:
    """All canonical names, plus accepted aliases."""
    return sorted(_TABLE) + ["silu"]
