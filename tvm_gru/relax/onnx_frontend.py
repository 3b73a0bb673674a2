"""``tvm.relax.frontend.onnx.from_onnx`` with ONNX ``GRU`` nodes lowered to tvm_gru's whole-sequence kernel.

TVM 0.27's ONNX importer has no GRU converter and takes no custom converter map. :class:`GRUGraphImporter`
subclasses its importer class (private API: TVM is pinned) and overrides only the two methods that read the
converter map: every ``GRU`` node is imported by :func:`tvm_gru.interop.onnx_io.from_onnx` (the validated ONNX
mapping, with all its checks: a node it refuses raises its ValueError) and emitted by
:func:`.lowering.emit_onnx_gru`; every other op goes to TVM's converters.
"""

from __future__ import annotations

import warnings
from collections import deque

import onnx
import tvm
from onnx import AttributeProto
from tvm import relax
from tvm.relax.frontend.onnx.onnx_frontend import ONNXGraphImporter, _get_convert_map

from .. import targets
from ..interop.onnx_io import from_onnx as import_gru
from .lowering import SequenceKernels, emit_onnx_gru

__all__ = ["from_onnx", "GRUGraphImporter"]

_ONNX_DOMAINS = ("", "ai.onnx")


def _subgraphs(node):
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == AttributeProto.GRAPHS:
            yield from attr.graphs


def _has_gru(graph) -> bool:
    return any(n.op_type == "GRU" or any(_has_gru(s) for s in _subgraphs(n)) for n in graph.node)


def _names_read(graph, out: set) -> set:
    """Every tensor name a node of ``graph`` (or of its subgraphs) reads, and the graph outputs."""
    out.update(o.name for o in graph.output)
    for node in graph.node:
        out.update(node.input)
        for sub in _subgraphs(node):
            _names_read(sub, out)
    return out


class GRUGraphImporter(ONNXGraphImporter):
    """TVM's ``ONNXGraphImporter`` that lowers ``GRU`` nodes to tvm_gru kernels.

    Parameters
    ----------
    model : onnx.ModelProto
        The whole model (the GRU mapping checks its opset and folds the weights from its initializers).
    target : tvm.target.Target
        The target the kernels are scheduled for.
    shape_dict, dtype_dict, keep_params_in_input, sanitize
        As for ``ONNXGraphImporter``.
    weight_dtype : None, "float32", "float16" or "int8"
        Storage dtype of the GRU kernels' weight matrices (:class:`~.lowering.SequenceKernels`).
    """
    def __init__(self, model, target, shape_dict, dtype_dict, keep_params_in_input=False, sanitize=True,
                 weight_dtype=None):
        super().__init__(shape_dict, dtype_dict, keep_params_in_input=keep_params_in_input, sanitize=sanitize)
        self._model = model
        self._target = target
        self._kernels = SequenceKernels(self.bb, target, weight_dtype)
        self._pending = deque()  # (node, layer, want_y) for the graph's GRU nodes, in graph order

    def _check_for_unsupported_ops(self, graph):
        """TVM's check, less ``GRU``; every GRU node is imported here (its ValueError raised before any Relax is
        built), in graph order, for :meth:`_convert_operator`."""
        convert_map = _get_convert_map()
        unsupported = set()
        for node in graph.node:
            if node.op_type == "GRU":
                continue
            for sub in _subgraphs(node):
                if _has_gru(sub):
                    raise ValueError(f"a GRU node inside the subgraph of the {node.op_type} node "
                                     f"{node.name or '(unnamed)'!r} is not supported; only top-level GRU nodes are "
                                     f"lowered")
            if node.op_type not in convert_map and node.op_type not in ("If", "Constant"):
                unsupported.add(node.op_type)
        if unsupported:
            raise tvm.error.OpNotImplemented("The following operators are not supported for frontend ONNX: "
                                             + ", ".join(sorted(unsupported)))
        read = _names_read(graph, set())
        for node in graph.node:
            if node.op_type != "GRU":
                continue
            if node.domain not in _ONNX_DOMAINS:
                raise ValueError(f"GRU node {node.name or '(unnamed)'}: domain {node.domain!r} is not ai.onnx")
            layer = import_gru(self._model, node=node, target=self._target)
            want_y = len(node.output) > 0 and node.output[0] != "" and node.output[0] in read
            self._pending.append((node, layer, want_y))

    def _convert_operator(self, op_name, inputs, attrs, opset):
        if op_name != "GRU":
            return super()._convert_operator(op_name, inputs, attrs, opset)

        name = attrs.get("tvm_custom", {}).get("name")
        if not self._pending or self._pending[0][0].name != name:
            raise ValueError(f"GRU node {name!r} was not seen by the importer's check (a GRU inside a subgraph?); "
                             f"only top-level GRU nodes are lowered")
        node, layer, want_y = self._pending.popleft()
        slots = list(inputs) + [None] * (6 - len(inputs))
        x, lens, h = slots[0], slots[4], slots[5]
        known = getattr(layer, "onnx_inputs", {})
        required = getattr(layer, "onnx_required_inputs", {})
        # A zero-filled initial_h (Expand/ConstantOfShape of 0) is the default state: onnx_io drops it.
        if "initial_h" not in required and known.get("initial_h") is None:
            h = None
        if "sequence_lens" not in required and known.get("sequence_lens") is None:
            lens = None
        y, y_h = emit_onnx_gru(self._kernels, layer, x, lens, h, want_y=want_y)

        return relax.Tuple([y_h if y is None else y, y_h])  # Y's slot is never read when want_y is False


def from_onnx(model, shape_dict=None, dtype_dict="float32", opset=None, keep_params_in_input=False,
              sanitize_input_names=True, *, target=None, weight_dtype=None):
    """``tvm.relax.frontend.onnx.from_onnx`` (same parameters), with every ``GRU`` node lowered to tvm_gru's fused
    whole-sequence kernel for ``target``.

    Parameters
    ----------
    model : onnx.ModelProto
    shape_dict, dtype_dict, opset, keep_params_in_input, sanitize_input_names
        As for TVM's importer. A GRU's batch and input sizes must be static (in the graph or ``shape_dict``); its
        sequence length may be symbolic. A GRU's W, R and B are always embedded as packed constants, also with
        ``keep_params_in_input=True`` (their initializers then stay unused parameters).
    target : None, str, dict or tvm.target.Target
        Where the module will run (:func:`tvm_gru.targets.resolve`; None = this machine's CPU). The kernels are
        scheduled for it: compile with :func:`tvm_gru.relax.compile` for the same target.
    weight_dtype : None, "float32", "float16" or "int8"
        Storage dtype of every GRU's weight matrices (None: float32): "float16" halves the bytes the kernels
        stream, "int8" quarters them (symmetric per Keras column, one float32 scale each); both are widened to
        float32 in the kernels' inner loops. The graph's other ops and their constants are unchanged.

    Returns
    -------
    tvm.IRModule

    Raises
    ------
    ValueError
        For a ``weight_dtype`` that is not a storage dtype (or one a float64 GRU cannot use), for a GRU node
        tvm_gru cannot represent (the message of :func:`tvm_gru.interop.onnx_io.from_onnx`), a
        symbolic batch or input size, a GRU inside a subgraph.
    """
    if not isinstance(model, onnx.ModelProto):
        raise TypeError(f"`model` must be an onnx.ModelProto; received {type(model).__name__}")
    if model.ir_version < 3:
        raise ValueError(f"Model IR version {model.ir_version} not supported. Must be at least after 1.1.0.")
    try:
        onnx.checker.check_model(model)
    except Exception as exception:  # noqa: BLE001  (as TVM: the checker's complaints are warnings)
        warnings.warn(str(exception), stacklevel=2)
    target = targets.resolve(target)
    importer = GRUGraphImporter(model, target, shape_dict, dtype_dict, keep_params_in_input=keep_params_in_input,
                                sanitize=sanitize_input_names, weight_dtype=weight_dtype)
    opset_in_model = next((o.version for o in model.opset_import if o.domain in _ONNX_DOMAINS), 1)
    if opset is None:
        opset = opset_in_model
    elif opset < opset_in_model:
        warnings.warn(f"You are overwritting original opset ver = {opset_in_model} by lower ver = {opset}. "
                      f"That might cause model conversion errors.", stacklevel=2)
    return importer.from_onnx(model.graph, opset)
