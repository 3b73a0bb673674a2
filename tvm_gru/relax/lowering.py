"""tvm_gru layers -> Relax: one ``call_tir`` of the fused whole-sequence kernel per direction (shared by the
Relax frontends: :mod:`.onnx_frontend`, later torch).

:class:`SequenceKernels` adds each scheduled kernel (:func:`tvm_gru.build.sequence.scheduled_sequence`) to a
``relax.BlockBuilder`` once per spec (``reverse`` is passed as a ``relax.prim_value``);
:func:`emit_direction` calls it on Relax tensors (the packed weights are Relax constants) and
:func:`emit_onnx_gru` composes the directions into an ONNX ``GRU`` node's ``Y`` and ``Y_h``.

The batch and input sizes are static (the kernel is specialised on them); the sequence length may be symbolic:
the kernel reads ``T`` from ``x``, and the outputs' ``T`` is the same expression as the input's.
"""

from __future__ import annotations

import numpy as np
from tvm import relax, te, tirx

from .. import targets
from ..build.sequence import scheduled_sequence
from ..layers.bidirectional import Bidirectional
from ..ops.config import check_weight_dtype
from ..ops.sequence import SequenceSpec, pack_sequence_weights

__all__ = ["SequenceKernels", "emit_direction", "emit_lengths_mask", "emit_onnx_gru", "static_dim",
           "check_gru_weight_dtype"]


def check_gru_weight_dtype(weight_dtype) -> str | None:
    """A module-wide GRU ``weight_dtype``, checked before anything is imported: None, or a storage dtype of a float32
    GRU (ValueError naming the argument otherwise; a float64 GRU refuses a narrow one when it is emitted)."""
    return None if weight_dtype is None else check_weight_dtype("float32", weight_dtype)


def static_dim(shape, axis: int, what: str) -> int:
    """``shape[axis]`` as an int, or ValueError naming ``what`` when it is symbolic."""
    dim = shape[axis]
    if not isinstance(dim, tirx.IntImm):
        raise ValueError(f"{what} is {dim} (symbolic); the GRU kernel is specialised on it: give a static value "
                         f"(e.g. in `shape_dict`)")
    return int(dim)


def tensor_shape(expr, what: str, ndim: int):
    """The shape (a list of PrimExprs) of the Relax tensor ``expr``, or ValueError naming ``what``."""
    tinfo = expr.ty
    if not isinstance(tinfo, relax.TensorType) or tinfo.shape is None \
            or not isinstance(tinfo.shape, relax.ShapeExpr) or tinfo.ndim != ndim:
        raise ValueError(f"{what} must be a tensor of known rank {ndim} and known shape; its type is {tinfo}")
    return list(tinfo.shape.values)


def _reverse_before_outputs(func, spec):
    """``func`` (a sequence kernel: inputs, outputs, ``reverse``) with ``reverse`` moved before the outputs, the
    order ``call_tir`` passes them in. Only the parameter list changes: the body refers to the parameters
    themselves."""
    params = list(func.params)
    outputs = 2 + int(spec.return_sequences)
    params = params[:-1 - outputs] + [params[-1]] + params[-1 - outputs:-1]
    return tirx.PrimFunc(params, func.body, func.ret_type, func.attrs)


class SequenceKernels:
    """The sequence kernels added to one Relax module, each once per spec.

    ``reverse`` (the kernel's last parameter) stays a parameter, passed by :func:`emit_direction` as a
    ``relax.prim_value``: binding it with ``PrimFunc.specialize`` makes the TIR pipeline fail in TVM 0.27
    ("variable cse_v10 has been used before definition"). ``call_tir`` appends the outputs after the arguments
    (0.27 has no ``tir_vars``), so the kernel added here takes ``reverse`` just before its outputs.

    Parameters
    ----------
    bb : relax.BlockBuilder
    target : tvm.target.Target
        The kernels' schedules are chosen for it (CPU targets: x86, aarch64); compile the module for it.
    weight_dtype : None, "float32", "float16" or "int8"
        The storage dtype of every GRU's weight matrices in this module (the packed constants and the kernels that
        widen them; see :class:`tvm_gru.ops.sequence.SequenceSpec`); None: each layer's own ``weight_dtype``. Only
        the GRU kernels change: the module's other ops keep their float32 constants.
    """
    def __init__(self, bb, target, weight_dtype=None):
        self.bb = bb
        self.target = target
        self.weight_dtype = check_gru_weight_dtype(weight_dtype)  # and against each layer's dtype when emitted
        self._added = {}

    def get(self, spec):
        """The GlobalVar of the kernel for ``spec``."""
        key = spec.key()
        if key not in self._added:
            func = _reverse_before_outputs(scheduled_sequence(spec, self.target)["main"], spec)
            name = f"tvm_gru_sequence_{len(self._added)}"
            func = func.with_attr("global_symbol", name).with_attr("tirx.is_scheduled", True)
            self._added[key] = self.bb.add_func(func, name)
        return self._added[key]


def emit_lengths_mask(bb, x, lengths, time_major: bool):
    """The uint8 Keras mask ``t < lengths[b]`` for ``x`` ((T, B, ...) if ``time_major`` else (B, T, ...)): (T, B)
    or (B, T), with the (possibly symbolic) T read from ``x``."""
    def mask(xt, lens):
        t_axis, b_axis = (0, 1) if time_major else (1, 0)
        shape = (xt.shape[t_axis], xt.shape[b_axis]) if time_major else (xt.shape[b_axis], xt.shape[t_axis])

        def body(i, j):
            t, b = (i, j) if time_major else (j, i)
            return (t.astype("int64") < lens[b].astype("int64")).astype("uint8")

        return te.compute(shape, body, name="gru_lengths_mask")

    return bb.emit_te(mask, x, lengths, primfunc_name_hint="gru_lengths_mask")


def emit_direction(kernels: SequenceKernels, layer, x, h0=None, mask=None, *, return_sequences=True,
                   zero_output_for_mask=True):
    """Emit one direction: ``(sequence or None, last, state)`` as Relax expressions.

    Parameters
    ----------
    kernels : SequenceKernels
    layer : tvm_gru.GRU
        Supplies the config, the weights, ``time_major`` and ``go_backwards`` (a backwards kernel; ``sequence``
        is in processing order, as Keras returns it).
    x : relax.Expr
        (T, B, I) if ``layer.time_major`` else (B, T, I), of the layer's dtype; B and I static.
    h0 : relax.Expr, optional
        (B, H); zeros when None.
    mask : relax.Expr, optional
        uint8 (T, B) if time_major else (B, T); nonzero = valid step.
    """
    bb, config, time_major = kernels.bb, layer.cell.config, bool(layer.time_major)
    what = f"the GRU input X of {layer.name or 'the GRU node'}"
    shape = tensor_shape(x, what, 3)
    dtype = x.ty.dtype
    if dtype != config.dtype:
        raise ValueError(f"{what} has dtype {dtype}; expected {config.dtype}, the dtype of the GRU weights")
    t_axis, b_axis = (0, 1) if time_major else (1, 0)
    batch = static_dim(shape, b_axis, f"the batch size of {what}")
    kernel, recurrent_kernel, *bias = layer.get_weights()
    input_dim = static_dim(shape, 2, f"the input size of {what}")
    if input_dim != kernel.shape[0]:
        raise ValueError(f"{what} has input size {input_dim}; the GRU weights expect {kernel.shape[0]}")
    units = config.units
    lanes = targets.lanes(kernels.target, config.dtype)
    wdt = layer.cell.storage_dtype(kernels.weight_dtype)
    spec = SequenceSpec(config, batch, input_dim, lanes, time_major=time_major, masked=mask is not None,
                        zero_output_for_mask=zero_output_for_mask, return_sequences=return_sequences,
                        weight_dtype=wdt)
    packed = pack_sequence_weights(config, kernel, recurrent_kernel, bias[0] if bias else None, lanes, wdt)
    weights = [relax.const(np.ascontiguousarray(packed[name])) for name in spec.weight_shapes()]
    if h0 is None:
        h0 = relax.const(np.zeros((batch, units), config.dtype))
    args = [x, h0] + ([mask] if mask is not None else []) + weights
    steps = shape[t_axis]
    seq_shape = (steps, batch, units) if time_major else (batch, steps, units)
    state = relax.TensorType((batch, units), config.dtype)
    outs = ([relax.TensorType(seq_shape, config.dtype)] if return_sequences else []) + [state, state]
    gv = kernels.get(spec)
    args.append(relax.prim_value(tirx.IntImm("int32", int(bool(layer.go_backwards)))))
    call = bb.emit(relax.call_tir(gv, args, outs))
    items = [bb.emit(relax.TupleGetItem(call, i)) for i in range(len(outs))]
    if not return_sequences:
        items.insert(0, None)
    return tuple(items)


def select(bb, expr, axis: int, index: int):
    """``expr`` indexed at ``index`` on ``axis`` (the axis removed)."""
    part = bb.emit(relax.op.strided_slice(expr, axes=[axis], begin=[index], end=[index + 1]))
    return bb.emit(relax.op.squeeze(part, axis=[axis]))


def emit_onnx_gru(kernels: SequenceKernels, layer, x, sequence_lens=None, initial_h=None, *, want_y=True):
    """An ONNX ``GRU`` node as Relax: ``(Y, Y_h)`` with the node's layout (see
    :func:`tvm_gru.interop.onnx_io.run_onnx`); ``Y`` is None when ``want_y`` is False (the kernel then writes
    only the final states).

    Parameters
    ----------
    layer : tvm_gru.GRU or tvm_gru.Bidirectional
        From :func:`tvm_gru.interop.onnx_io.from_onnx` (time_major for layout 0; go_backwards for reverse).
    x, sequence_lens, initial_h : relax.Expr (the last two optional)
        The node's inputs X, sequence_lens (B,) and initial_h ((D, B, H) for layout 0, (B, D, H) for layout 1).
    """
    bb = kernels.bb
    directions = [layer.forward_layer, layer.backward_layer] if isinstance(layer, Bidirectional) else [layer]
    time_major = bool(directions[0].time_major)
    dir_axis = 0 if time_major else 1  # of initial_h and Y_h
    mask = None
    if sequence_lens is not None:
        tensor_shape(sequence_lens, "the GRU input sequence_lens", 1)
        mask = emit_lengths_mask(bb, x, sequence_lens, time_major)
    if initial_h is not None:
        tensor_shape(initial_h, "the GRU input initial_h", 3)
    ys, states = [], []
    for d, direction in enumerate(directions):
        h0 = None if initial_h is None else select(bb, initial_h, dir_axis, d)
        seq, _, state = emit_direction(kernels, direction, x, h0, mask, return_sequences=want_y,
                                       zero_output_for_mask=True)
        if want_y:
            ys.append(bb.emit(relax.op.flip(seq, axis=0 if time_major else 1)) if direction.go_backwards else seq)
        if mask is not None and h0 is not None:  # onnxruntime gives an empty sequence a zero Y_h
            empty = bb.emit(relax.op.equal(sequence_lens, relax.const(0, sequence_lens.ty.dtype)))
            empty = bb.emit(relax.op.expand_dims(empty, axis=1))
            state = bb.emit(relax.op.where(empty, relax.const(0, state.ty.dtype), state))
        states.append(state)
    y = bb.emit(relax.op.stack(ys, axis=1 if time_major else 2)) if want_y else None
    y_h = bb.emit(relax.op.stack(states, axis=dir_axis))
    return y, y_h
