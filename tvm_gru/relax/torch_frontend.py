"""``torch.nn.GRU`` (``aten.gru.input``) in ``tvm.relax.frontend.torch.from_exported_program``, lowered to tvm_gru's
fused whole-sequence kernel.

TVM 0.27's own ``gru.input`` converter unrolls the time loop in Python, supports one layer only and returns the
sequence in place of ``(output, h_n)``. :func:`torch_convert_map` gives a ``custom_convert_map`` entry that emits
one ``call_tir`` of the scheduled sequence kernel per layer and direction (:func:`.lowering.emit_direction`), with
the weights packed into Relax constants.

Two things the caller must know (both handled by :func:`from_exported_program`):

* ``from_exported_program`` runs ``ExportedProgram.run_decompositions()`` by default, which decomposes
  ``aten.gru.input`` into per-step matmuls before any converter sees it. Decompose with
  :func:`decomposition_table` (the default table less ``aten.gru.input``) and pass
  ``run_ep_decomposition=False``.
* The importer hands the converter the parameters as Relax function parameters (bound to constants only after
  the graph is translated), so the converter reads their values from the ``ExportedProgram``: pass it as
  ``exported_program=``. Weights that arrive as Relax constants are read directly.

Mapping (torch -> Keras, see the project's semantics notes): torch's ``nn.GRU`` is a reset-after GRU with gate
order (r, z, n), ``weight_ih`` (3H, I), ``weight_hh`` (3H, H); tvm_gru's GRU takes ``kernel`` (I, 3H),
``recurrent_kernel`` (H, 3H), ``bias`` (2, 3H) in order (z, r, h), with ``activation="tanh"``,
``recurrent_activation="sigmoid"``, ``reset_after=True``. Torch's ``h' = (1 - z) * n + z * h`` is Keras's blend.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from .. import targets
from ..layers.gru import GRU
from .lowering import SequenceKernels, check_gru_weight_dtype, emit_direction, select, static_dim, tensor_shape

__all__ = ["torch_convert_map", "decomposition_table", "from_exported_program", "torch_gru_weights"]


def torch_gru_weights(w_ih, w_hh, b_ih=None, b_hh=None) -> list:
    """Keras weights ``[kernel (I, 3H), recurrent_kernel (H, 3H)(, bias (2, 3H))]`` (gate order z, r, h) of one
    torch GRU direction (``weight_ih`` (3H, I), ``weight_hh`` (3H, H), biases (3H,), gate order r, z, n)."""

    def keras_order(a):  # rows [r, z, n] -> [z, r, n] on axis 0
        r, z, n = np.split(np.asarray(a), 3, axis=0)
        return np.concatenate([z, r, n], axis=0)

    weights = [np.ascontiguousarray(keras_order(w_ih).T), np.ascontiguousarray(keras_order(w_hh).T)]
    if b_ih is not None or b_hh is not None:
        h3 = weights[0].shape[1]
        dtype = weights[0].dtype
        b_ih = np.zeros(h3, dtype) if b_ih is None else keras_order(b_ih)
        b_hh = np.zeros(h3, dtype) if b_hh is None else keras_order(b_hh)
        weights.append(np.stack([b_ih, b_hh]).astype(dtype))
    return weights


def decomposition_table():
    """``torch.export.default_decompositions()`` without ``aten.gru.input`` (so the GRU reaches the converter)."""
    import torch  # noqa: PLC0415

    table = torch.export.default_decompositions()
    for op in (torch.ops.aten.gru.input,):
        if op in table:
            del table[op]
    return table


def _ep_tensors(exported_program) -> dict:
    """{placeholder name: numpy array} for the parameters, buffers and constants of ``exported_program``."""
    import torch  # noqa: PLC0415

    kinds = torch.export.graph_signature.InputKind
    state = exported_program.state_dict
    constants = getattr(exported_program, "constants", {}) or {}
    out = {}
    for spec in exported_program.graph_signature.input_specs:
        if spec.kind in (kinds.PARAMETER, kinds.BUFFER):
            value = state.get(spec.target)
            if value is None:
                value = dict(exported_program.named_buffers()).get(spec.target)
        elif spec.kind is kinds.CONSTANT_TENSOR:
            value = constants.get(spec.target)
        else:
            continue
        if value is not None:
            out[spec.arg.name] = value.detach().cpu().numpy()
    return out


def torch_convert_map(target=None, exported_program=None, weight_dtype=None) -> dict:
    """``{"gru.input": converter}`` for ``tvm.relax.frontend.torch.from_exported_program(ep,
    custom_convert_map=..., run_ep_decomposition=False)`` (decompose ``ep`` with :func:`decomposition_table`
    first, or use :func:`from_exported_program`, which does both).

    Parameters
    ----------
    target : None, str, dict or tvm.target.Target
        The kernels are scheduled for it (:func:`tvm_gru.targets.resolve`); compile with
        :func:`tvm_gru.relax.compile` for the same target.
    exported_program : torch.export.ExportedProgram, optional
        The program being imported (after decomposition): the GRU weights are read from it. Needed when the
        weights are lifted parameters (the normal case with ``torch.export``); without it such a GRU is refused
        with a ValueError.
    weight_dtype : None, "float32", "float16" or "int8"
        Storage dtype of the GRU kernels' weight matrices (:class:`~.lowering.SequenceKernels`; None: float32).

    The converter handles any ``num_layers``, ``bidirectional``, ``batch_first``, ``bias=False`` and ``hx``;
    ``train=True`` with ``dropout > 0`` is refused (inference only). Batch and input sizes must be static.

    The map also has ``"select.int"``: TVM 0.27's converter emits ``take`` in its "fast" mode with the index as
    given, so a negative index (``y[:, -1]``, the usual way to take a GRU's last step; ``h_n[-1]``) reads out of
    bounds (seen: 9e34 where torch gives 0.06). This one counts a negative index from the end of a static axis
    and refuses one outside it.
    """

    target = targets.resolve(target)
    weight_dtype = check_gru_weight_dtype(weight_dtype)  # refused now, not at the first GRU
    tensors = None if exported_program is None else _ep_tensors(exported_program)
    state = {}  # one SequenceKernels per BlockBuilder

    def convert(node, importer):

        bb = importer.block_builder
        if state.get("bb") is not bb:
            state["bb"], state["kernels"] = bb, SequenceKernels(bb, target, weight_dtype)
        return _convert_gru(node, importer, state["kernels"], tensors)

    return {"gru.input": convert, "select.int": _convert_select}


def _convert_select(node, importer):
    """``aten.select.int(x, dim, index)``: ``x`` indexed at ``index`` on ``dim`` (that axis removed)."""
    x = importer.env[node.args[0]]
    ndim = x.ty.ndim
    dim, index = int(node.args[1]), int(node.args[2])
    if not -ndim <= dim < ndim:
        raise ValueError(f"aten.select.int: dim {dim} is out of range for a tensor of rank {ndim}")
    dim %= ndim
    size = x.ty.shape.values[dim] if isinstance(x.ty.shape, relax.ShapeExpr) else None
    bb = importer.block_builder
    if isinstance(size, tvm.tirx.IntImm):
        if not -int(size) <= index < int(size):
            raise ValueError(f"aten.select.int: index {index} is out of range for axis {dim} of size {int(size)}")
        return select(bb, x, dim, index % int(size))
    # a symbolic axis: strided_slice counts a negative begin from the end, as torch does
    end = index + 1 if index != -1 else (1 << 63) - 1
    part = bb.emit(relax.op.strided_slice(x, axes=[dim], begin=[index], end=[end]))
    return bb.emit(relax.op.squeeze(part, axis=[dim]))


def _weight_value(node, importer, tensors, what: str):
    """The numpy value of the fx node ``node`` (a GRU parameter)."""

    expr = importer.env.get(node)
    if isinstance(expr, tvm.ir.expr.Constant):
        return expr.data.numpy()
    name = getattr(node, "name", None)
    if tensors is not None and name in tensors:
        return tensors[name]
    if tensors is None:
        raise ValueError(f"the GRU {what} {name!r} is a parameter of the imported program, not a constant: pass the "
                         "ExportedProgram as torch_convert_map(exported_program=ep) (or use "
                         "tvm_gru.relax.from_exported_program); tvm_gru packs GRU weights into constants")
    raise ValueError(f"the GRU {what} {name!r} is computed in the graph, not a parameter, buffer or constant of the "
                     "ExportedProgram; tvm_gru needs constant GRU weights")


def _convert_gru(node, importer, kernels, tensors):

    args = list(node.args) + [None] * (9 - len(node.args))
    x_node, hx_node, params, has_biases, num_layers, dropout, train, bidirectional, batch_first = args[:9]
    has_biases = True if has_biases is None else bool(has_biases)
    num_layers = 1 if num_layers is None else int(num_layers)
    bidirectional, batch_first = bool(bidirectional), bool(batch_first)
    if train and dropout:
        raise ValueError(f"aten.gru.input with train=True and dropout={dropout}: tvm_gru lowers inference only")
    bb = kernels.bb
    x = importer.env[x_node]
    shape = tensor_shape(x, "the input of aten.gru.input", 3)
    directions = 2 if bidirectional else 1
    per_direction = 4 if has_biases else 2
    params = list(params or [])
    if len(params) != num_layers * directions * per_direction:
        raise ValueError(f"aten.gru.input has {len(params)} weights; expected {num_layers * directions * per_direction}"
                         f" for num_layers={num_layers}, bidirectional={bidirectional}, has_biases={has_biases}")
    hx = None if hx_node is None else importer.env[hx_node]
    if hx is not None:
        tensor_shape(hx, "the hx of aten.gru.input", 3)
    dtype = str(x.ty.dtype)
    static_dim(shape, 0 if batch_first else 1, "the batch size of the input of aten.gru.input")
    states, layer_in = [], x
    for layer_index in range(num_layers):
        outs = []
        for d in range(directions):
            k = (layer_index * directions + d) * per_direction
            what = f"weights of layer {layer_index}{' (reverse)' if d else ''}"
            values = [_weight_value(p, importer, tensors, what).astype(dtype) for p in params[k:k + per_direction]]
            weights = torch_gru_weights(*values)
            units = weights[1].shape[0]
            layer = GRU(units, activation="tanh", recurrent_activation="sigmoid", use_bias=has_biases,
                        reset_after=True, return_sequences=True, go_backwards=bool(d), time_major=not batch_first,
                        dtype=dtype, target=kernels.target, name=f"torch_gru_l{layer_index}{'_reverse' if d else ''}")
            layer.set_weights(weights)
            h0 = None if hx is None else select(bb, hx, 0, layer_index * directions + d)
            seq, _, h_n = emit_direction(kernels, layer, layer_in, h0)
            if d:  # the kernel returns the backward sequence in processing order; torch aligns it with the input
                seq = bb.emit(relax.op.flip(seq, axis=1 if batch_first else 0))
            outs.append(seq)
            states.append(h_n)
        layer_in = outs[0] if directions == 1 else bb.emit(relax.op.concat(outs, axis=2))
    h_n = bb.emit(relax.op.stack(states, axis=0))
    return (layer_in, h_n)


def from_exported_program(exported_program, *, target=None, decompose: bool = True, weight_dtype=None, **kwargs):
    """``tvm.relax.frontend.torch.from_exported_program`` with every ``nn.GRU`` (``aten.gru.input``) lowered to
    tvm_gru's kernel for ``target``: decomposes with :func:`decomposition_table` (when ``decompose``), then imports
    with ``run_ep_decomposition=False`` and :func:`torch_convert_map` (merged with a ``custom_convert_map`` given in
    ``kwargs``). Other keyword arguments go to TVM's function; ``keep_params_as_input`` does not apply to GRU
    weights (always packed constants). ``weight_dtype`` (None, "float32", "float16", "int8"): the storage dtype of
    the GRU kernels' weight matrices, as for :func:`tvm_gru.relax.from_onnx`.

    Returns
    -------
    tvm.IRModule
        Compile with :func:`tvm_gru.relax.compile` for the same ``target``.
    """

    if decompose:
        exported_program = exported_program.run_decompositions(decomposition_table())
    convert_map = dict(kwargs.pop("custom_convert_map", None) or {})
    convert_map.update(torch_convert_map(target, exported_program=exported_program, weight_dtype=weight_dtype))
    kwargs.pop("run_ep_decomposition", None)
    # TVM's torch frontend imports torch: only here, so tvm_gru.relax (and ONNX models) work without torch
    from tvm.relax.frontend.torch import from_exported_program as tvm_import  # noqa: PLC0415

    return tvm_import(exported_program, custom_convert_map=convert_map, run_ep_decomposition=False, **kwargs)


def export_torch(module_or_exported_program, example_inputs=None):
    """``(exported_program, inputs)``: ``torch.export.export(module, tuple(example_inputs))`` (static shapes:
    ``torch.export`` specialises the sequence length of ``nn.GRU`` to the example's) or the ExportedProgram as
    given, and ``[{"name", "shape", "dtype"}]`` of its user inputs (the Relax function's parameters, in order)."""
    import torch  # noqa: PLC0415

    if isinstance(module_or_exported_program, torch.export.ExportedProgram):
        ep = module_or_exported_program
    elif isinstance(module_or_exported_program, torch.nn.Module):
        if example_inputs is None:
            raise ValueError("`example_inputs` (a tuple of tensors) is needed to export a torch.nn.Module")
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        ep = torch.export.export(module_or_exported_program.eval(), tuple(example_inputs))
    else:
        raise TypeError(f"expected a torch.nn.Module or torch.export.ExportedProgram; received "
                        f"{type(module_or_exported_program).__name__}")
    kinds = torch.export.graph_signature.InputKind
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    inputs = []
    for spec in ep.graph_signature.input_specs:
        if spec.kind is not kinds.USER_INPUT:
            continue
        val = placeholders[spec.arg.name].meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise ValueError(f"input {spec.arg.name!r} is not a tensor; only tensor inputs are supported")
        shape = [int(d) if isinstance(d, int) else str(d) for d in val.shape]
        inputs.append({"name": spec.arg.name, "shape": shape, "dtype": str(val.dtype).replace("torch.", "")})
    return ep, inputs
