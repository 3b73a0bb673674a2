"""Keras layers as Relax (inference), for :mod:`.keras_frontend`.

Each converter takes ``(ctx, entry, xs, masks)``: the layer's config entry ``{"class_name", "config"}``, its
input tensors and their Keras masks (bool (B, T) Relax tensors or None), and returns ``(outputs, masks)``, lists
of the same length. Masks follow Keras: layers that support masking pass the mask on; ``Masking`` and
``Embedding(mask_zero=True)`` create one; a layer that does not support masking refuses one (as Keras does).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from tvm import relax

from ..layers.bidirectional import Bidirectional
from .lowering import SequenceKernels, emit_direction

__all__ = ["Context", "CONVERTERS", "recurrent", "check_weights", "activation"]

F32 = "float32"


@dataclasses.dataclass
class Context:
    """What the converters share while one Relax function is built."""
    bb: relax.BlockBuilder
    kernels: SequenceKernels
    weights: dict  # {layer name: [arrays]}
    layers: dict  # {layer name: tvm_gru layer}


def _name(entry) -> str:
    return entry["config"].get("name", entry.get("name"))


def _const(array) -> relax.Constant:
    return relax.const(np.ascontiguousarray(np.asarray(array, F32)))


def _scalar(value, dtype=F32) -> relax.Constant:
    return relax.const(np.array(value, dtype))


def _ndim(x) -> int:
    return int(x.ty.ndim)


# ---------------------------------------------------------------------------------------- activations
def _hard_sigmoid(bb, x):  # tf_keras: clip(0.2 x + 0.5, 0, 1)
    y = bb.emit(relax.op.add(relax.op.multiply(x, _scalar(0.2)), _scalar(0.5)))
    return relax.op.minimum(relax.op.maximum(y, _scalar(0.0)), _scalar(1.0))


def _elu(bb, x):
    return relax.op.where(relax.op.greater(x, _scalar(0.0)), x, relax.op.subtract(relax.op.exp(x), _scalar(1.0)))


def _selu(bb, x):
    alpha, scale = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
    neg = relax.op.multiply(_scalar(alpha), relax.op.subtract(relax.op.exp(x), _scalar(1.0)))
    return relax.op.multiply(_scalar(scale), relax.op.where(relax.op.greater(x, _scalar(0.0)), x, neg))


def _gelu(bb, x):  # tf_keras default: approximate=False
    erf = relax.op.erf(relax.op.multiply(x, _scalar(1 / math.sqrt(2.0))))
    return relax.op.multiply(relax.op.multiply(x, _scalar(0.5)), relax.op.add(_scalar(1.0), erf))


_ACTIVATIONS = {
    "linear": lambda bb, x: x,
    "relu": lambda bb, x: relax.op.nn.relu(x),
    "sigmoid": lambda bb, x: relax.op.sigmoid(x),
    "tanh": lambda bb, x: relax.op.tanh(x),
    "softmax": lambda bb, x: relax.op.nn.softmax(x, axis=-1),
    "hard_sigmoid": _hard_sigmoid,
    "elu": _elu,
    "selu": _selu,
    "gelu": _gelu,
    "softplus": lambda bb, x: relax.op.log(relax.op.add(relax.op.exp(x), _scalar(1.0))),
    "softsign": lambda bb, x: relax.op.divide(x, relax.op.add(relax.op.abs(x), _scalar(1.0))),
    "swish": lambda bb, x: relax.op.multiply(x, relax.op.sigmoid(x)),
    "silu": lambda bb, x: relax.op.multiply(x, relax.op.sigmoid(x)),
    "exponential": lambda bb, x: relax.op.exp(x),
}


def activation(bb, x, name, layer: str):
    """``x`` through the Keras activation ``name`` (None = linear)."""
    if isinstance(name, dict):
        name = name.get("config", {}).get("name", name.get("class_name"))
    name = "linear" if name is None else name
    if name not in _ACTIVATIONS:
        raise ValueError(f"layer {layer!r}: activation {name!r} is not supported; expected one of "
                         f"{sorted(_ACTIVATIONS)}")
    return x if name == "linear" else bb.emit(_ACTIVATIONS[name](bb, x))


# ---------------------------------------------------------------------------------------- weights
def _expected_shapes(entry: dict) -> list | None:
    """The weight shapes a layer's config implies, with None for sizes only the input gives; None: unchecked."""
    c, cls = entry["config"], entry["class_name"]
    if cls == "TimeDistributed":
        return _expected_shapes(c["layer"])
    if cls == "Dense":
        return [(None, c["units"])] + ([(c["units"],)] if c.get("use_bias", True) else [])
    if cls == "Conv1D":
        k = c["kernel_size"][0] if isinstance(c["kernel_size"], list) else c["kernel_size"]
        return [(k, None, c["filters"])] + ([(c["filters"],)] if c.get("use_bias", True) else [])
    if cls == "Embedding":
        return [(c["input_dim"], c["output_dim"])]
    if cls == "BatchNormalization":
        count = 2 + bool(c.get("scale", True)) + bool(c.get("center", True))
        return [(None,)] * count
    return []


def check_weights(entry: dict, weights: list) -> None:
    """ValueError naming the layer when the file's weights do not match what its config implies."""
    want = _expected_shapes(entry)
    got = [tuple(w.shape) for w in weights]
    ok = len(want) == len(got) and all(len(w) == len(g) and all(a is None or a == b for a, b in zip(w, g))
                                       for w, g in zip(want, got))
    if entry["class_name"] == "BatchNormalization":  # gamma, beta, mean, variance: one size
        ok = ok and len(set(got)) == 1
    if not ok:
        shown = [tuple("?" if a is None else a for a in w) for w in want]
        raise ValueError(f"layer {_name(entry)!r} ({entry['class_name']}): the file holds weights of shapes {got}; "
                         f"its config implies {shown}")


# ---------------------------------------------------------------------------------------- masks
def _one(name, xs, masks, cls, mask_ok=True):
    if len(xs) != 1:
        raise ValueError(f"layer {name!r} ({cls}) takes one input; received {len(xs)}")
    if not mask_ok and masks[0] is not None:
        raise ValueError(f"layer {name!r} ({cls}) does not support masking, but receives a mask (Keras refuses "
                         "this model too)")
    return xs[0], masks[0]


def _and_masks(bb, masks):
    present = [m for m in masks if m is not None]
    if not present:
        return None
    out = present[0]
    for m in present[1:]:
        out = bb.emit(relax.op.logical_and(out, m))
    return out


# ---------------------------------------------------------------------------------------- layers
def _identity(ctx, entry, xs, masks):
    x, mask = _one(_name(entry), xs, masks, entry["class_name"])
    return [x], [mask]


def _activation_layer(ctx, entry, xs, masks):
    x, mask = _one(_name(entry), xs, masks, "Activation")
    return [activation(ctx.bb, x, entry["config"].get("activation"), _name(entry))], [mask]


def _dense_on(ctx, config, weights, x, name):
    bb = ctx.bb
    kernel = weights[0]
    features = x.ty.shape.values[-1] if x.ty.shape is not None else None
    if features is not None and int(features) != kernel.shape[0]:
        raise ValueError(f"layer {name!r} (Dense): its input has {int(features)} features; its kernel "
                         f"{kernel.shape} expects {kernel.shape[0]}")
    y = bb.emit(relax.op.matmul(x, _const(kernel)))
    if config.get("use_bias", True):
        y = bb.emit(relax.op.add(y, _const(weights[1])))
    return activation(bb, y, config.get("activation"), name)


def _dense(ctx, entry, xs, masks):
    x, mask = _one(_name(entry), xs, masks, "Dense")
    return [_dense_on(ctx, entry["config"], ctx.weights[_name(entry)], x, _name(entry))], [mask]


def _time_distributed(ctx, entry, xs, masks):
    name = _name(entry)
    inner = entry["config"].get("layer", {})
    if inner.get("class_name") != "Dense":
        raise ValueError(f"layer {name!r} (TimeDistributed) wraps a {inner.get('class_name')!r}; only "
                         "TimeDistributed(Dense) is supported")
    x, mask = _one(name, xs, masks, "TimeDistributed")
    return [_dense_on(ctx, inner["config"], ctx.weights[name], x, name)], [mask]


def _masking(ctx, entry, xs, masks):
    bb = ctx.bb
    x, _ = _one(_name(entry), xs, masks, "Masking")
    value = float(entry["config"].get("mask_value", 0.0))
    differs = bb.emit(relax.op.astype(relax.op.not_equal(x, _scalar(value)), F32))
    mask = bb.emit(relax.op.greater(relax.op.max(differs, axis=-1), _scalar(0.0)))
    keep = bb.emit(relax.op.expand_dims(relax.op.astype(mask, F32), axis=-1))
    return [bb.emit(relax.op.multiply(x, keep))], [mask]


def _embedding(ctx, entry, xs, masks):
    bb, name, config = ctx.bb, _name(entry), entry["config"]
    x, _ = _one(name, xs, masks, "Embedding")
    indices = x if x.ty.dtype in ("int32", "int64") else bb.emit(relax.op.astype(x, "int32"))
    # Never read outside the table: ids of a model input are checked by the call (its metadata's index_range,
    # a ValueError as TF raises); computed ids out of range are clamped.
    y = bb.emit(relax.op.take(_const(ctx.weights[name][0]), indices, axis=0, mode="clip"))
    mask = None
    if config.get("mask_zero"):
        mask = bb.emit(relax.op.not_equal(indices, relax.const(0, indices.ty.dtype)))
    return [y], [mask]


def _single(value, what, name):
    value = value[0] if isinstance(value, list) and len(value) == 1 else value
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"layer {name!r} (Conv1D): {what} must be a positive int; received {value!r}")
    return value


def _conv1d(ctx, entry, xs, masks):
    bb, name, c = ctx.bb, _name(entry), entry["config"]
    x, _ = _one(name, xs, masks, "Conv1D", mask_ok=False)
    if c.get("data_format", "channels_last") != "channels_last":
        raise ValueError(f"layer {name!r} (Conv1D): data_format {c.get('data_format')!r}; only channels_last")
    kernel, *bias = ctx.weights[name]
    size, stride = _single(c["kernel_size"], "kernel_size", name), _single(c.get("strides", 1), "strides", name)
    dilation = _single(c.get("dilation_rate", 1), "dilation_rate", name)
    groups = int(c.get("groups", 1))
    span = (size - 1) * dilation
    padding = c.get("padding", "valid")
    if padding == "valid":
        pad = (0, 0)
    elif padding == "causal":
        pad = (span, 0)
    elif padding == "same":
        steps = x.ty.shape.values[1]
        if stride == 1:
            total = span
        elif hasattr(steps, "value") and not hasattr(steps, "name"):
            n = int(steps)
            total = max((-(-n // stride) - 1) * stride + span + 1 - n, 0)
        else:
            raise ValueError(f"layer {name!r} (Conv1D): padding 'same' with strides {stride} needs a fixed "
                             "sequence length")
        pad = (total // 2, total - total // 2)
    else:
        raise ValueError(f"layer {name!r} (Conv1D): padding {padding!r}; expected 'valid', 'same' or 'causal'")
    y = bb.emit(relax.op.nn.conv1d(x, _const(kernel), strides=stride, padding=pad, dilation=dilation, groups=groups,
                                   data_layout="NWC", kernel_layout="WIO", out_dtype=F32))
    if bias:
        y = bb.emit(relax.op.add(y, _const(bias[0])))
    return [activation(bb, y, c.get("activation"), name)], [None]


def _batch_norm(ctx, entry, xs, masks):
    bb, name, c = ctx.bb, _name(entry), entry["config"]
    x, mask = _one(name, xs, masks, "BatchNormalization")
    axis = c.get("axis", -1)
    axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
    if axis not in (-1, _ndim(x) - 1):
        raise ValueError(f"layer {name!r} (BatchNormalization): axis {c.get('axis')!r}; only the last axis")
    weights = list(ctx.weights[name])
    gamma = weights.pop(0) if c.get("scale", True) else None
    beta = weights.pop(0) if c.get("center", True) else None
    mean, variance = (np.asarray(w, F32) for w in weights)
    inv = (np.float32(1.0) / np.sqrt(variance + np.float32(c.get("epsilon", 1e-3)))).astype(F32)
    if gamma is not None:
        inv = inv * gamma.astype(F32)
    shift = (beta.astype(F32) if beta is not None else np.float32(0)) - mean * inv
    y = bb.emit(relax.op.add(relax.op.multiply(x, _const(inv)), _const(shift)))
    return [y], [mask]


def _reshape(ctx, entry, xs, masks):
    x, _ = _one(_name(entry), xs, masks, "Reshape", mask_ok=False)
    target = [int(d) for d in entry["config"]["target_shape"]]
    batch = x.ty.shape.values[0]
    return [ctx.bb.emit(relax.op.reshape(x, [batch, *target]))], [None]


def _flatten(ctx, entry, xs, masks):
    x, _ = _one(_name(entry), xs, masks, "Flatten", mask_ok=False)
    if entry["config"].get("data_format", "channels_last") != "channels_last":
        raise ValueError(f"layer {_name(entry)!r} (Flatten): only data_format channels_last")
    dims = x.ty.shape.values
    size = 1
    for d in dims[1:]:
        if not hasattr(d, "value") or hasattr(d, "name"):
            raise ValueError(f"layer {_name(entry)!r} (Flatten): its input shape {list(dims)} is not fixed; "
                             "Flatten needs a fixed sequence length")
        size *= int(d)
    return [ctx.bb.emit(relax.op.reshape(x, [dims[0], size]))], [None]


def _permute(ctx, entry, xs, masks):
    x, _ = _one(_name(entry), xs, masks, "Permute", mask_ok=False)
    dims = [int(d) for d in entry["config"]["dims"]]
    if sorted(dims) != list(range(1, _ndim(x))):
        raise ValueError(f"layer {_name(entry)!r} (Permute): dims {dims} is not a permutation of 1..{_ndim(x) - 1}")
    return [ctx.bb.emit(relax.op.permute_dims(x, [0, *dims]))], [None]


def _concatenate(ctx, entry, xs, masks):
    bb, name = ctx.bb, _name(entry)
    axis = int(entry["config"].get("axis", -1))
    if any(m is not None for m in masks) and axis not in (-1, _ndim(xs[0]) - 1):
        raise ValueError(f"layer {name!r} (Concatenate): masked inputs are supported on the last axis only")
    return [bb.emit(relax.op.concat(xs, axis=axis))], [_and_masks(bb, masks)]


def _merge(op):
    def convert(ctx, entry, xs, masks):
        bb = ctx.bb
        if len(xs) < 2:
            raise ValueError(f"layer {_name(entry)!r} ({entry['class_name']}) takes at least 2 inputs")
        out = xs[0]
        for x in xs[1:]:
            out = bb.emit(op(out, x))
        if entry["class_name"] == "Average":
            out = bb.emit(relax.op.divide(out, _scalar(len(xs))))
        return [out], [_and_masks(bb, masks)]
    return convert


CONVERTERS = {
    "Activation": _activation_layer, "Dense": _dense, "TimeDistributed": _time_distributed, "Masking": _masking,
    "Embedding": _embedding, "Conv1D": _conv1d, "BatchNormalization": _batch_norm, "Reshape": _reshape,
    "Flatten": _flatten, "Permute": _permute, "Concatenate": _concatenate,
    "Add": _merge(relax.op.add), "Subtract": _merge(relax.op.subtract), "Multiply": _merge(relax.op.multiply),
    "Average": _merge(relax.op.add), "Maximum": _merge(relax.op.maximum), "Minimum": _merge(relax.op.minimum),
    **{cls: _identity for cls in ("Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout",
                                  "AlphaDropout", "ActivityRegularization")},
}


# ---------------------------------------------------------------------------------------- recurrent layers
def _direction(ctx, layer, x, h0, mask):
    """(output, state) of one tvm_gru.GRU direction (output: the sequence, processing order, or the last)."""
    kernel_mask = None if mask is None else ctx.bb.emit(relax.op.astype(mask, "uint8"))
    seq, last, state = emit_direction(ctx.kernels, layer, x, h0, kernel_mask, return_sequences=layer.return_sequences,
                                      zero_output_for_mask=layer.zero_output_for_mask)
    return (seq if layer.return_sequences else last), state


def recurrent(ctx, name: str, layer, xs: list, masks: list) -> tuple:
    """A GRU / RNN(GRUCell) / Bidirectional layer: ``[output(s)..., states...]`` with Keras's output masks."""
    bb = ctx.bb
    directions = [layer.forward_layer, layer.backward_layer] if isinstance(layer, Bidirectional) else [layer]
    if len(xs) not in (1, 1 + len(directions)):
        raise ValueError(f"layer {name!r} takes its input and optionally {len(directions)} initial state(s); "
                         f"received {len(xs)} inputs")
    x, mask = xs[0], masks[0]
    h0s = xs[1:] if len(xs) > 1 else [None] * len(directions)
    results = [_direction(ctx, d, x, h0, mask) for d, h0 in zip(directions, h0s)]
    out_mask = mask if layer.return_sequences else None
    if not isinstance(layer, Bidirectional):
        (y, state), = results
        return ([y, state], [out_mask, None]) if layer.return_state else ([y], [out_mask])
    (y, h_fw), (y_rev, h_bw) = results
    if layer.return_sequences:  # the backward direction returns processing order: back to time order
        y_rev = bb.emit(relax.op.flip(y_rev, axis=1))
    mode = layer.merge_mode
    if mode is None:
        outs, out_masks = [y, y_rev], [out_mask, out_mask]
    else:
        if mode == "concat":
            merged = relax.op.concat([y, y_rev], axis=-1)
        elif mode == "sum":
            merged = relax.op.add(y, y_rev)
        elif mode == "mul":
            merged = relax.op.multiply(y, y_rev)
        else:  # ave
            merged = relax.op.divide(relax.op.add(y, y_rev), _scalar(2.0))
        outs, out_masks = [bb.emit(merged)], [out_mask]
    if layer.return_state:
        return outs + [h_fw, h_bw], out_masks + [None, None]
    return outs, out_masks
