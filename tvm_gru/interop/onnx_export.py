"""tvm_gru cells, layers and Bidirectional wrappers -> one ONNX ``GRU`` node each (read back by :mod:`.onnx_io`,
run by onnxruntime); the weight mapping is described in :mod:`.onnx_io`."""

from __future__ import annotations

import numpy as np

from ..runtime.packing import computed_matrices
from .onnx_mapping import onnx_activation, opset_range

__all__ = ["layer_to_onnx", "bidirectional_to_onnx", "cell_to_onnx"]


def _gru_model(directions, *, opset, direction, batch, input_dim, step_input=False, graph_name="tvm_gru"):
    """One GRU node for ``directions`` = [(config, Keras weights)] (two for ``direction="bidirectional"``)."""
    import onnx  # noqa: PLC0415
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    supported = opset_range()  # the opsets from_onnx reads back
    if not isinstance(opset, int) or isinstance(opset, bool) or opset not in supported:
        raise ValueError(f"`opset` must be an int in {supported.start}..{supported.stop - 1} (GRU-7 and later); "
                         f"received {opset!r}")
    config = directions[0][0]
    units, dt, use_bias = config.units, config.dtype, any(c.use_bias for c, _ in directions)
    W, R, B, ops = [], [], [], []
    for cfg, weights in directions:
        ops += [onnx_activation(cfg.recurrent_activation, "recurrent_activation"),
                onnx_activation(cfg.activation, "activation")]
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


def _computed_weights(cell) -> list:
    """``cell.get_weights()`` with the kernel and recurrent kernel as the kernel multiplies by them: ONNX holds
    one weight dtype, so a float16 or int8 cell is written with its stored weights (rounded / dequantized) and
    the model computes what the cell computes, not the float32 weights as set."""
    kernel, recurrent, *rest = cell.get_weights()
    return [*computed_matrices(cell.config, kernel, recurrent, cell.weight_dtype), *rest]


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
    model = _gru_model([(layer.cell.config, _computed_weights(layer.cell))], opset=opset,
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
    directions = [(fw.cell.config, _computed_weights(fw.cell)), (bw.cell.config, _computed_weights(bw.cell))]
    model = _gru_model(directions, opset=opset,
                       direction="bidirectional", batch=batch, input_dim=fw.input_dim, graph_name=wrapper.name)
    return _save(model, path)


def cell_to_onnx(cell, path=None, opset: int = 14, batch=None):
    """Write one step of ``cell`` as an ONNX GRU node with ``seq_length`` 1.

    Inputs ``X`` (1, batch, input_dim) and ``initial_h`` (1, batch, units); output ``Y_h`` (1, batch, units)
    = the new state. Returns the ``onnx.ModelProto`` (saved to ``path`` if given).
    """
    if not cell.built:
        raise ValueError("`to_onnx` needs a built cell: call build(input_shape), set_weights or the cell first")
    model = _gru_model([(cell.config, _computed_weights(cell))], opset=opset, direction="forward", batch=batch,
                       input_dim=cell.input_dim, step_input=True, graph_name=cell.name)
    return _save(model, path)
