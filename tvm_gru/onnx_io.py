"""ONNX ``GRU`` <-> tvm_gru, with the exact mapping of the reference notes (semantics.md section 11).

ONNX orders the gates z, r, h like Keras, so the weights only transpose:

    W = kernel.T[None]            (1, 3H, I)         R = recurrent_kernel.T[None]   (1, 3H, H)
    B = [bias[0] | bias[1]]       reset_after=True  (linear_before_reset=1)
    B = [bias | zeros(3H)]        reset_after=False (linear_before_reset=0)

Importing a ``linear_before_reset=0`` node folds its recurrent bias into the input bias: with the reset applied
before the product, every recurrent bias term is a plain sum (``Wb + Rb``), which Keras can hold.

A node's ``sequence_lens`` is a Keras mask (``t < len[b]``) with ``zero_output_for_mask`` (ONNX writes zeros
past each length); ``direction="reverse"`` is ``go_backwards`` (ONNX returns Y in input time order, Keras in
processing order: :func:`run_onnx` flips it back).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import activations

__all__ = ["from_onnx", "layer_to_onnx", "bidirectional_to_onnx", "cell_to_onnx", "run_onnx", "lengths_to_mask"]

# ONNX activation (lower-cased) -> (takes alpha, takes beta, default alpha, default beta), as onnxruntime reads
# the activation_alpha / activation_beta lists: consumed in order by the activations that take them.
_ONNX_PARAMS = {
    "affine": (True, True, 1.0, 0.0), "leakyrelu": (True, False, 0.01, None),
    "thresholdedrelu": (True, False, 1.0, None), "scaledtanh": (True, True, 1.0, 1.0),
    "hardsigmoid": (True, True, 0.2, 0.5), "elu": (True, False, 1.0, None),
    "relu": (False, False, None, None), "tanh": (False, False, None, None), "sigmoid": (False, False, None, None),
    "softsign": (False, False, None, None), "softplus": (False, False, None, None),
}


def _keras_activation(name: str, alpha, beta) -> str | None:
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
    if name == "leakyrelu" and same(alpha, activations._LEAKY_ALPHA):  # noqa: SLF001
        return "leaky_relu"
    if name == "scaledtanh" and same(alpha, 1.0) and same(beta, 1.0):
        return "tanh"
    if name == "thresholdedrelu" and same(alpha, 0.0):
        return "relu"
    return None


def _onnx_activation(name: str, role: str) -> tuple:
    """Keras activation -> ONNX (op, alpha, beta); ValueError naming it when ONNX has no equal."""
    spec = activations.get(name).onnx
    if spec is None:
        representable = sorted(n for n in activations.names() if activations.get(n).onnx is not None)
        raise ValueError(f"`{role}`={name!r} has no ONNX GRU equivalent; representable activations are "
                         f"{representable}")
    return spec


# ------------------------------------------------------------------------------------------------ import
def _parse(read, what: str, size: int):
    """``read()`` (an ``onnx`` loader) as a checked ``onnx.ModelProto``, or ValueError naming ``what``: protobuf's
    DecodeError is not a ValueError, and empty or unrelated bytes may parse as an empty model."""
    try:
        model = read()
    except Exception as err:  # noqa: BLE001  (google.protobuf.message.DecodeError and friends)
        raise ValueError(f"`model_or_path` ({what}) is not an ONNX model: {type(err).__name__}: {err}") from err
    if not model.HasField("graph") or not model.opset_import:
        raise ValueError(f"`model_or_path` ({what}) is not an ONNX model: expected a serialized ModelProto with a "
                         f"graph and an opset; received {size} bytes without them")
    return model


def _load(model_or_path):
    import onnx  # noqa: PLC0415

    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    if isinstance(model_or_path, (bytes, bytearray)):
        blob = bytes(model_or_path)
        return _parse(lambda: onnx.load_from_string(blob), f"{len(blob)} bytes", len(blob))
    if isinstance(model_or_path, (str, os.PathLike)):
        path = Path(model_or_path)
        if path.is_dir():
            raise ValueError(f"`model_or_path` must be an ONNX model file; received the directory {path}")
        if not path.is_file():
            raise FileNotFoundError(f"`model_or_path`: ONNX model file not found: {path}")
        return _parse(lambda: onnx.load(str(path)), f"file {path}", path.stat().st_size)
    raise TypeError(f"`model_or_path` must be an onnx.ModelProto, bytes or a path; "
                    f"received {type(model_or_path).__name__}")


def _pick_node(graph, node):
    grus = [n for n in graph.node if n.op_type == "GRU" and n.domain in ("", "ai.onnx")]
    names = [n.name or f"#{i}" for i, n in enumerate(grus)]
    if node is None:
        if not grus:
            ops = sorted({n.op_type for n in graph.node})
            raise ValueError(f"`model_or_path` has no GRU node to import; expected one ONNX GRU node, the graph "
                             f"holds {ops or 'no nodes'}")
        if len(grus) != 1:
            raise ValueError(f"the model has {len(grus)} GRU nodes {names}; pass `node=` (a name or an index)")
        return grus[0]
    if isinstance(node, int) and not isinstance(node, bool):
        if not 0 <= node < len(grus):
            raise ValueError(f"`node`={node} is out of range: the model has {len(grus)} GRU nodes {names}")
        return grus[node]
    if isinstance(node, str):
        for n in grus:
            if n.name == node:
                return n
        raise ValueError(f"no GRU node named {node!r}; GRU nodes: {names}")
    if hasattr(node, "op_type"):
        if node.op_type != "GRU":
            raise ValueError(f"`node` is a {node.op_type} node, not GRU")
        return node
    raise TypeError(f"`node` must be None, an int, a str or a NodeProto; received {type(node).__name__}")


def _constants(graph) -> dict:
    from onnx import numpy_helper  # noqa: PLC0415

    out = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def _attrs(node) -> dict:
    from onnx import helper  # noqa: PLC0415

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _decode(v):
    return v.decode() if isinstance(v, bytes) else v


def _activation_pairs(attrs, directions: int) -> list:
    """[(recurrent_activation, activation)] in Keras names, one pair per direction, from the node's
    activations/alpha/beta (the alpha and beta lists are consumed in order by the activations that take them)."""
    default = [b"Sigmoid", b"Tanh"] * directions
    names = [_decode(a) for a in attrs.get("activations", default)]
    if len(names) != 2 * directions:
        raise ValueError(f"attribute 'activations'={names}: a {'bidirectional' if directions == 2 else 'one-way'} "
                         f"GRU needs exactly {2 * directions} (f for z and r, g for the candidate, per direction)")
    alphas, betas = list(attrs.get("activation_alpha", [])), list(attrs.get("activation_beta", []))
    out = []
    for name in names:
        key = name.lower()
        if key not in _ONNX_PARAMS:
            raise ValueError(f"attribute 'activations': {name!r} is not an ONNX RNN activation "
                             f"({sorted(_ONNX_PARAMS)})")
        takes_a, takes_b, default_a, default_b = _ONNX_PARAMS[key]
        alpha = (alphas.pop(0) if alphas else default_a) if takes_a else None
        beta = (betas.pop(0) if betas else default_b) if takes_b else None
        keras = _keras_activation(key, alpha, beta)
        if keras is None:
            raise ValueError(f"attributes 'activations'/'activation_alpha'/'activation_beta': {name}"
                             f"(alpha={alpha}, beta={beta}) cannot be represented by a Keras activation "
                             f"(supported with parameters: HardSigmoid(0.2, 0.5), Affine(1, 0), Elu(1), "
                             f"LeakyRelu(0.2), ScaledTanh(1, 1), ThresholdedRelu(0))")
        out.append(keras)
    return [(out[2 * d], out[2 * d + 1]) for d in range(directions)]


def from_onnx(model_or_path, node=None, target=None):
    """Build a :class:`tvm_gru.GRU` (or, for a bidirectional node, a :class:`tvm_gru.Bidirectional`) from an
    ONNX ``GRU`` node.

    Parameters
    ----------
    model_or_path : onnx.ModelProto, bytes, str or os.PathLike
    node : None, int, str or onnx.NodeProto
        Which GRU node: None = the only one; an index among the GRU nodes; a node name.
    target : optional
        Where the layer's kernels run (see :class:`tvm_gru.GRUCell`).

    Returns
    -------
    GRU or Bidirectional
        ``return_sequences=True, return_state=True, zero_output_for_mask=True``; ``time_major`` for
        ``layout=0``; ``go_backwards`` for ``direction="reverse"``. ``direction="bidirectional"`` gives a
        ``Bidirectional(merge_mode=None)`` whose backward layer is the node's reverse direction. Constant
        ``initial_h`` and ``sequence_lens`` inputs are kept in ``layer.onnx_inputs`` and used by
        :func:`run_onnx`.

    Raises
    ------
    ValueError
        Naming the attribute or input that tvm_gru cannot represent (``clip``, activations with other
        parameters, non-constant weights).
    """
    from .bidirectional import Bidirectional  # noqa: PLC0415

    model = _load(model_or_path)
    gru = _pick_node(model.graph, node)
    attrs = _attrs(gru)
    where = f"GRU node {gru.name or '(unnamed)'}"
    if "clip" in attrs:
        raise ValueError(f"{where}: attribute 'clip'={attrs['clip']} is not supported (Keras GRU has no cell clip)")
    direction = _decode(attrs.get("direction", "forward"))
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ValueError(f"{where}: attribute 'direction'={direction!r}; expected 'forward', 'reverse' or "
                         f"'bidirectional'")
    dirs = 2 if direction == "bidirectional" else 1
    layout = int(attrs.get("layout", 0))
    if layout not in (0, 1):
        raise ValueError(f"{where}: attribute 'layout'={layout}; expected 0 or 1")
    pairs = _activation_pairs(attrs, dirs)

    consts = _constants(model.graph)
    inputs = list(gru.input) + [""] * (6 - len(gru.input))

    def const(i, label, required=False):
        name = inputs[i]
        if not name:
            if required:
                raise ValueError(f"{where}: input {label!r} is missing")
            return None
        if name not in consts:
            if required:
                raise ValueError(f"{where}: input {label!r} ({name}) must be a constant initializer to build weights")
            return None
        return consts[name]

    W, R, B = const(1, "W", True), const(2, "R", True), const(3, "B")
    if W.ndim != 3 or W.shape[0] != dirs:
        raise ValueError(f"{where}: input 'W' has shape {W.shape}; expected ({dirs}, 3*hidden_size, input_size) "
                         f"for direction={direction!r}")
    units = W.shape[1] // 3
    hidden = int(attrs.get("hidden_size", units))
    if hidden <= 0:
        raise ValueError(f"{where}: attribute 'hidden_size'={hidden} (W {W.shape}); expected a positive hidden size")
    if W.shape[1] != 3 * hidden or R.shape != (dirs, 3 * hidden, hidden):
        raise ValueError(f"{where}: W {W.shape} / R {R.shape} do not match hidden_size={hidden}")
    if B is not None and B.shape != (dirs, 6 * hidden):
        raise ValueError(f"{where}: input 'B' has shape {B.shape}; expected ({dirs}, {6 * hidden})")
    dtype = np.dtype(W.dtype).name
    if dtype not in ("float32", "float64"):
        raise ValueError(f"{where}: weights of dtype {dtype} are not supported (float32 or float64)")
    reset_after = bool(int(attrs.get("linear_before_reset", 0)))
    layers = [_direction_layer(pairs[d], W[d], R[d], None if B is None else B[d], reset_after,
                               go_backwards=direction == "reverse" or d == 1, time_major=layout == 0, dtype=dtype,
                               target=target, name=gru.name or None)
              for d in range(dirs)]
    onnx_inputs = {"sequence_lens": const(4, "sequence_lens"), "initial_h": const(5, "initial_h")}
    if dirs == 1:
        layers[0].onnx_inputs = onnx_inputs
        return layers[0]
    wrapper = Bidirectional(layers[0], merge_mode=None, backward_layer=layers[1], name=gru.name or None)
    wrapper.set_weights(layers[0].get_weights() + layers[1].get_weights())  # Keras rebuilds the forward copy
    wrapper.onnx_inputs = onnx_inputs
    return wrapper


def _direction_layer(activation_pair, W, R, B, reset_after, **kwargs):
    """One direction's GRU layer from its slices W (3H, I), R (3H, H) and B (6H,) or None."""
    from .layer import GRU  # noqa: PLC0415

    hidden, dtype = R.shape[1], kwargs["dtype"]
    weights = [W.T, R.T]
    if B is not None:
        wb, rb = B[:3 * hidden], B[3 * hidden:]
        # reset_after: the recurrent candidate bias is multiplied by r, Keras keeps it in row 1. Otherwise every
        # recurrent bias term adds straight to the input one.
        weights.append(np.stack([wb, rb]) if reset_after else wb + rb)
    recurrent_activation, activation = activation_pair
    layer = GRU(hidden, activation=activation, recurrent_activation=recurrent_activation, use_bias=B is not None,
                reset_after=reset_after, return_sequences=True, return_state=True, zero_output_for_mask=True,
                **kwargs)
    layer.set_weights([np.asarray(w, dtype) for w in weights])
    return layer


def lengths_to_mask(lengths, steps: int, time_major: bool = True) -> np.ndarray:
    """ONNX ``sequence_lens`` (B,) -> a Keras mask, (T, B) if ``time_major`` else (B, T)."""
    lengths = np.asarray(lengths).reshape(-1)
    mask = np.arange(steps)[:, None] < lengths[None, :]
    return mask if time_major else np.ascontiguousarray(mask.T)


def run_onnx(layer, X, sequence_lens=None, initial_h=None):
    """Run ``layer`` (from :func:`from_onnx`) on ONNX-shaped inputs; returns ``(Y, Y_h)`` as onnxruntime does.

    ``X`` is (T, B, I) for layout 0 (a time-major layer), (B, T, I) for layout 1. ``sequence_lens`` (B,)
    and ``initial_h`` (D, B, H) (D = 2 for a bidirectional layer, else 1) default to the node's constant
    inputs, if it had any. Y is (T, D, B, H) (layout 1: (B, T, D, H)), Y_h (D, B, H) (layout 1: (B, D, H)).
    Steps past a sequence's length output zeros; a sequence of length 0 gets a zero ``Y_h`` (onnxruntime's
    choice; the layer itself keeps the initial state, as Keras does).
    """
    from .bidirectional import Bidirectional  # noqa: PLC0415

    known = getattr(layer, "onnx_inputs", {})
    lens = sequence_lens if sequence_lens is not None else known.get("sequence_lens")
    h = initial_h if initial_h is not None else known.get("initial_h")
    X = np.asarray(X)
    steps = X.shape[0] if layer.time_major else X.shape[1]
    mask = None if lens is None else lengths_to_mask(lens, steps, layer.time_major)
    if isinstance(layer, Bidirectional):  # [y, y_rev (input time order), h_forward, h_backward]
        y, y_rev, *states = layer(X, mask=mask, initial_state=None if h is None else list(np.asarray(h)))
        outs = [y, y_rev]
    else:
        out, state = layer(X, mask=mask, initial_state=None if h is None else np.asarray(h)[0])
        if layer.go_backwards:  # Keras returns processing order, ONNX input order
            out = np.flip(out, axis=0 if layer.time_major else 1)
        outs, states = [out], [state]
    if lens is not None:  # onnxruntime gives an empty sequence a zero Y_h; Keras keeps its initial state
        empty = (np.asarray(lens).reshape(-1) == 0)[:, None]
        states = [np.where(empty, np.zeros((), s.dtype), s) for s in states]
    Y = np.stack(outs, axis=1 if layer.time_major else 2)
    Y_h = np.stack(states, axis=0 if layer.time_major else 1)
    return np.ascontiguousarray(Y), np.ascontiguousarray(Y_h)


# ------------------------------------------------------------------------------------------------ export
def _gru_model(directions, *, opset, direction, batch, input_dim, step_input=False, graph_name="tvm_gru"):
    """One GRU node for ``directions`` = [(config, Keras weights)] (two for ``direction="bidirectional"``)."""
    import onnx  # noqa: PLC0415
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    if not isinstance(opset, int) or isinstance(opset, bool) or opset < 7:
        raise ValueError(f"`opset` must be an int >= 7 (GRU-7); received {opset!r}")
    config = directions[0][0]
    units, dt, use_bias = config.units, config.dtype, any(c.use_bias for c, _ in directions)
    W, R, B, ops = [], [], [], []
    for cfg, weights in directions:
        ops += [_onnx_activation(cfg.recurrent_activation, "recurrent_activation"),
                _onnx_activation(cfg.activation, "activation")]
        W.append(np.asarray(weights[0]).T)
        R.append(np.asarray(weights[1]).T)
        bias = weights[2] if cfg.use_bias else np.zeros((2, 3 * units) if cfg.reset_after else 3 * units, dt)
        B.append(np.reshape(bias, 6 * units) if cfg.reset_after else np.r_[bias, np.zeros(3 * units, dt)])
    inits = [numpy_helper.from_array(np.ascontiguousarray(np.stack(W), dt), "W"),
             numpy_helper.from_array(np.ascontiguousarray(np.stack(R), dt), "R")]
    if use_bias:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(np.stack(B), dt), "B"))
    attrs = dict(hidden_size=units, activations=[op[0] for op in ops], linear_before_reset=int(config.reset_after))
    alphas = [op[1] for op in ops if op[1] is not None]
    betas = [op[2] for op in ops if op[2] is not None]
    if alphas:
        attrs["activation_alpha"] = [float(a) for a in alphas]
    if betas:
        attrs["activation_beta"] = [float(b) for b in betas]
    if direction != "forward":
        attrs["direction"] = direction
    elem = TensorProto.FLOAT if dt == "float32" else TensorProto.DOUBLE
    batch_dim = batch if batch is not None else "batch"
    steps, dirs = (1 if step_input else "sequence"), len(directions)
    graph_inputs = [helper.make_tensor_value_info("X", elem, [steps, batch_dim, input_dim])]
    node_inputs = ["X", "W", "R", "B" if use_bias else ""]
    if step_input:
        graph_inputs.append(helper.make_tensor_value_info("initial_h", elem, [1, batch_dim, units]))
        node_inputs += ["", "initial_h"]
    outputs = [helper.make_tensor_value_info("Y_h", elem, [dirs, batch_dim, units])]
    node_outputs = ["", "Y_h"]
    if not step_input:
        outputs.insert(0, helper.make_tensor_value_info("Y", elem, [steps, dirs, batch_dim, units]))
        node_outputs[0] = "Y"
    node = helper.make_node("GRU", node_inputs, node_outputs, name="gru", **attrs)
    graph = helper.make_graph([node], graph_name, graph_inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tvm_gru")
    model.ir_version = min(model.ir_version, 10)  # readable by onnxruntime releases of the last years
    onnx.checker.check_model(model, full_check=True)
    return model


def _save(model, path):
    import onnx  # noqa: PLC0415

    if path is not None:
        onnx.save(model, str(path))
    return model


def layer_to_onnx(layer, path=None, opset: int = 14, batch=None):
    """Write ``layer`` as one ONNX GRU node; returns the ``onnx.ModelProto`` (saved to ``path`` if given).

    The model takes ``X`` (sequence, batch, input_dim) (ONNX layout 0, whatever the layer's ``time_major``)
    and returns ``Y`` (sequence, 1, batch, units) and ``Y_h`` (1, batch, units). A ``go_backwards`` layer
    becomes ``direction="reverse"``, whose ``Y`` is in input time order (the layer's is reversed).
    """
    if not layer.built:
        raise ValueError("`to_onnx` needs a built layer: call build(input_shape), set_weights or the layer first")
    model = _gru_model([(layer.cell.config, layer.get_weights())], opset=opset,
                       direction="reverse" if layer.go_backwards else "forward", batch=batch,
                       input_dim=layer.input_dim, graph_name=layer.name)
    return _save(model, path)


def bidirectional_to_onnx(wrapper, path=None, opset: int = 14, batch=None):
    """Write a :class:`tvm_gru.Bidirectional` as one GRU node with ``direction="bidirectional"``.

    Inputs and outputs as :func:`layer_to_onnx` with two directions: ``Y`` (sequence, 2, batch, units), ``Y_h``
    (2, batch, units); direction 0 is the forward layer, 1 the backward one. The node holds the two layers, not
    the wrapper's merge (apply it to ``Y``: concatenate, sum, average or multiply ``Y[:, 0]`` and ``Y[:, 1]``).

    Raises
    ------
    ValueError
        An unbuilt wrapper; a forward layer that runs backwards (ONNX's direction 0 runs forwards); two
        directions that differ in ``units``, ``reset_after`` (one ``linear_before_reset`` per node) or dtype.
    """
    fw, bw = wrapper.forward_layer, wrapper.backward_layer
    if not wrapper.built:
        raise ValueError("`to_onnx` needs a built layer: call build(input_shape), set_weights or the layer first")
    if fw.go_backwards:
        raise ValueError("`to_onnx`: the forward layer has go_backwards=True; an ONNX bidirectional GRU runs "
                         "direction 0 forwards (wrap a layer with go_backwards=False)")
    for key in ("units", "reset_after", "dtype"):
        a, b = getattr(fw.cell.config, key), getattr(bw.cell.config, key)
        if a != b:
            raise ValueError(f"`to_onnx`: the two directions differ in `{key}` ({a} forward, {b} backward); one "
                             f"ONNX GRU node has one")
    model = _gru_model([(fw.cell.config, fw.get_weights()), (bw.cell.config, bw.get_weights())], opset=opset,
                       direction="bidirectional", batch=batch, input_dim=fw.input_dim, graph_name=wrapper.name)
    return _save(model, path)


def cell_to_onnx(cell, path=None, opset: int = 14, batch=None):
    """Write one step of ``cell`` as an ONNX GRU node with ``seq_length`` 1.

    Inputs ``X`` (1, batch, input_dim) and ``initial_h`` (1, batch, units); output ``Y_h`` (1, batch, units)
    = the new state. Returns the ``onnx.ModelProto`` (saved to ``path`` if given).
    """
    if not cell.built:
        raise ValueError("`to_onnx` needs a built cell: call build(input_shape), set_weights or the cell first")
    model = _gru_model([(cell.config, cell.get_weights())], opset=opset, direction="forward", batch=batch,
                       input_dim=cell.input_dim, step_input=True, graph_name=cell.name)
    return _save(model, path)
