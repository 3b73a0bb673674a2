"""The ONNX GRU <-> Keras GRU mapping shared by the importer (:mod:`.onnx_io`) and the exporter
(:mod:`.onnx_export`): activations and their parameters, and the opsets whose GRU both implement."""

from __future__ import annotations

import numpy as np

from ..ops import activations

__all__ = ["ONNX_PARAMS", "keras_activation", "onnx_activation", "opset_range", "GRU_VERSIONS", "FIRST_OPSET"]

GRU_VERSIONS = (7, 14, 22)
FIRST_OPSET = 7


# ONNX activation (lower-cased) -> (takes alpha, takes beta, default alpha, default beta), as onnxruntime reads
# the activation_alpha / activation_beta lists: consumed in order by the activations that take them.
ONNX_PARAMS = {
    "affine": (True, True, 1.0, 0.0), "leakyrelu": (True, False, 0.01, None),
    "thresholdedrelu": (True, False, 1.0, None), "scaledtanh": (True, True, 1.0, 1.0),
    "hardsigmoid": (True, True, 0.2, 0.5), "elu": (True, False, 1.0, None),
    "relu": (False, False, None, None), "tanh": (False, False, None, None), "sigmoid": (False, False, None, None),
    "softsign": (False, False, None, None), "softplus": (False, False, None, None),
}


def keras_activation(name: str, alpha, beta) -> str | None:
    """The Keras activation equal to ONNX ``name(alpha, beta)``, or None."""
    f32 = np.float32
    same = (lambda a, b: a is not None and f32(a) == f32(b))  # noqa: E731
    table = {
        "sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu", "softsign": "softsign", "softplus": "softplus",
    }
    if name in table:
        return table[name]
    if name == "hardsigmoid" and same(alpha, 0.2) and same(beta, 0.5):
        return "hard_sigmoid"  # the tf_keras formula clip(0.2 x + 0.5, 0, 1)
    if name == "affine" and same(alpha, 1.0) and same(beta, 0.0):
        return "linear"
    if name == "elu" and same(alpha, 1.0):
        return "elu"
    if name == "leakyrelu" and same(alpha, activations.LEAKY_ALPHA):
        return "leaky_relu"
    if name == "scaledtanh" and same(alpha, 1.0) and same(beta, 1.0):
        return "tanh"
    if name == "thresholdedrelu" and same(alpha, 0.0):
        return "relu"
    return None


def onnx_activation(name: str, role: str) -> tuple:
    """Keras activation -> ONNX (op, alpha, beta); ValueError naming it when ONNX has no equal."""
    spec = activations.get(name).onnx
    if spec is None:
        representable = sorted(n for n in activations.names() if activations.get(n).onnx is not None)
        raise ValueError(f"`{role}`={name!r} has no ONNX GRU equivalent; representable activations are "
                         f"{representable}")
    return spec


def opset_range() -> range:
    """The ai.onnx opsets whose GRU the importer and exporter implement: from GRU-7 up to the newest opset the
    installed ``onnx`` knows (a newer one may bring a GRU version the importer was never checked against)."""
    from onnx import defs  # noqa: PLC0415

    return range(FIRST_OPSET, defs.onnx_opset_version() + 1)
