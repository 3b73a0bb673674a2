"""A saved Keras model (:class:`tvm_gru.interop.keras_file.KerasModelFile`) as a Relax module, without TensorFlow.

:class:`KerasGraph` reads the model's graph (Sequential or Functional), builds a :class:`tvm_gru.GRU` /
:class:`tvm_gru.Bidirectional` with the file's weights for every GRU-family layer (``GRU``, ``RNN`` around a
``GRUCell``, ``Bidirectional`` of those) and refuses anything else it cannot express before any Relax is built.
:meth:`KerasGraph.module` emits one Relax ``main`` for a static batch size: GRU directions as ``call_tir`` of the
scheduled sequence kernels (:func:`.lowering.emit_direction`), the other layers (:mod:`.keras_layers`) as plain
``relax.op`` calls. Keras masks (``Masking``, ``Embedding(mask_zero=True)``) flow as Keras propagates them and feed
the recurrent layers. Dropout and noise layers are the identity (inference).
"""

from __future__ import annotations

import contextlib
import re

import tvm
from tvm import relax, tirx

from ..layers.bidirectional import Bidirectional
from ..layers.gru import GRU
from . import keras_layers
from .lowering import SequenceKernels

__all__ = ["KerasGraph", "SUPPORTED_LAYERS"]

_GRU_FAMILY = ("GRU", "RNN", "Bidirectional")
SUPPORTED_LAYERS = tuple(sorted({"InputLayer", *_GRU_FAMILY, *keras_layers.CONVERTERS}))
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,127}")
_INPUT_DTYPES = ("float32", "int32", "int64")
_MAX_PASSES = 100_000


def _clean(name: str) -> str:
    """A Keras name as a dimension / signature name (``[A-Za-z_][A-Za-z0-9_.]*``)."""
    out = re.sub(r"[^A-Za-z0-9_.]", "_", name)[:120]
    return out if _NAME.fullmatch(out) else f"t_{out}"[:128]


def _layer_name(entry: dict) -> str:
    return entry["config"].get("name", entry.get("name"))


def _refs(node, layer: str) -> list:
    """``[(layer, node index, tensor index)]`` of one inbound node of a tf_keras 2.x functional config."""
    if not isinstance(node, list) or not node:
        raise ValueError(f"layer {layer!r}: an inbound node must be a list of [layer, node, tensor, kwargs]; "
                         f"received {str(node)[:200]} (a Keras 3 config is not supported: save with tf_keras)")
    refs = []
    for ref in node:
        if not isinstance(ref, list) or len(ref) not in (3, 4) or not isinstance(ref[0], str) \
                or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ref[1:3]):
            raise ValueError(f"layer {layer!r}: inbound reference {str(ref)[:200]} is not [layer, node, tensor, "
                             "kwargs]")
        kwargs = ref[3] if len(ref) == 4 else {}
        extra = {k: v for k, v in (kwargs or {}).items() if not (k in ("training", "mask") and v is None)}
        if extra:
            raise ValueError(f"layer {layer!r} is called with keyword arguments {sorted(extra)}; only plain calls "
                             "are supported (pass initial states as inputs: layer([x, h0]))")
        refs.append((ref[0], ref[1], ref[2]))
    return refs


@contextlib.contextmanager
def _about(entry: dict):
    """Errors of a converter on a malformed config (a missing key, a value of the wrong type, one TVM refuses) as
    ValueError naming the layer and its class."""
    try:
        yield
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, tvm.error.InternalError,
            tvm.error.DiagnosticError) as err:
        if isinstance(err, ValueError) and repr(_layer_name(entry)) in str(err):
            raise  # a converter's own error: names the layer already
        raise ValueError(f"layer {_layer_name(entry)!r} ({entry['class_name']}): its config cannot be converted "
                         f"({type(err).__name__}: {str(err).strip().splitlines()[-1][:300] if str(err) else ''})"
                         ) from None


class KerasGraph:
    """The graph of a saved Keras model and its tvm_gru layers.

    Parameters
    ----------
    model_file : tvm_gru.interop.keras_file.KerasModelFile
    target : tvm.target.Target, optional
        The target of the tvm_gru layers (:meth:`module` schedules the kernels for its own target).

    Attributes
    ----------
    layers : dict
        ``{layer name: tvm_gru.GRU or tvm_gru.Bidirectional}`` for the GRU-family layers, with the file's weights.
    inputs : list
        ``[{"name", "shape" (without the batch; str = symbolic), "dtype", "batch" (fixed size or None)}]``.
    outputs : list
        ``[(layer, node index, tensor index)]`` in the model's output order.

    Raises
    ------
    ValueError
        A layer class that is not supported (naming the layer, its class and the supported classes), a config
        tvm_gru cannot represent, weights whose count or shapes do not match the layer's config.
    """
    def __init__(self, model_file, target=None):
        self.file = model_file
        config = model_file.config
        self.class_name = config["class_name"]
        self.entries, self.inputs, self.outputs = self._graph(config["config"])
        self.layers = {}
        for entry, _ in self.entries.values():
            self._check_supported(entry)
            with _about(entry):
                if entry["class_name"] in _GRU_FAMILY:
                    self.layers[_layer_name(entry)] = self._gru_layer(entry, target)
                elif entry["class_name"] != "InputLayer":
                    keras_layers.check_weights(entry, model_file.weights.get(_layer_name(entry), []))
        self.index_ranges = self._index_ranges()

    def _index_ranges(self) -> dict:
        """``{input name: [0, rows]}`` for the model inputs an ``Embedding`` reads directly: its ids must be rows
        of the table (TF raises otherwise; the compiled lookup clamps, so the call checks them). An Embedding of a
        computed tensor (rare) clamps."""
        by_keras_name = {t["keras_name"]: t["name"] for t in self.inputs}
        out = {}
        for name, (entry, nodes) in self.entries.items():
            if entry["class_name"] != "Embedding":
                continue
            rows = int(self.file.weights[name][0].shape[0])
            for refs in nodes:
                for layer, _, _ in refs:
                    if layer in by_keras_name:
                        key = by_keras_name[layer]
                        out[key] = [0, min(rows, out.get(key, [0, rows])[1])]
        return out

    # ------------------------------------------------------------------ the graph
    def _graph(self, config: dict) -> tuple:
        """({layer name: (entry, [inbound refs per node])}, inputs, outputs)."""
        layers = config["layers"]
        entries, inputs = {}, []
        if self.class_name == "Sequential":
            previous = None
            for i, entry in enumerate(layers):
                name = _layer_name(entry)
                if entry["class_name"] == "InputLayer" or (i == 0 and previous is None):
                    source = entry["config"] if entry["class_name"] == "InputLayer" else {
                        **entry["config"], "name": f"{name}_input", "dtype": "float32"}
                    inputs.append(self._input(source))
                    previous = (inputs[-1]["keras_name"], 0, 0)
                    if entry["class_name"] == "InputLayer":
                        entries[name] = (entry, [])
                        continue
                entries[name] = (entry, [[previous]])
                previous = (name, 0, 0)
            return entries, inputs, [previous]
        for entry in layers:
            name = _layer_name(entry)
            if name in entries:
                raise ValueError(f"the model config has two layers named {name!r}")
            nodes = entry.get("inbound_nodes", [])
            if not isinstance(nodes, list):
                raise ValueError(f"layer {name!r}: 'inbound_nodes' must be a list")
            entries[name] = (entry, [_refs(node, name) for node in nodes])
        for ref in config.get("input_layers", []):
            name = ref[0] if isinstance(ref, list) and ref else None
            if name not in entries or entries[name][0]["class_name"] != "InputLayer":
                raise ValueError(f"the model's input {ref!r} is not an InputLayer of the config")
            inputs.append(self._input(entries[name][0]["config"]))
        outputs = config.get("output_layers", [])
        if outputs and isinstance(outputs[0], str):  # a single [layer, node, tensor] reference
            outputs = [outputs]
        outputs = [tuple(o[:3]) for o in outputs]
        for name, _, _ in outputs:
            if name not in entries:
                raise ValueError(f"the model's output layer {name!r} is not in the config")
        if not inputs or not outputs:
            raise ValueError("the model config names no input or no output layers")
        return entries, inputs, outputs

    @staticmethod
    def _input(config: dict) -> dict:
        name = config.get("name")
        shape = config.get("batch_input_shape", config.get("batch_shape"))
        if not isinstance(shape, list) or not shape:
            raise ValueError(f"input {name!r} has no batch_input_shape; expected a list like [null, null, 8]")
        dtype = config.get("dtype", "float32")
        if dtype not in _INPUT_DTYPES:
            raise ValueError(f"input {name!r} has dtype {dtype!r}; expected one of {_INPUT_DTYPES}")
        if config.get("sparse") or config.get("ragged"):
            raise ValueError(f"input {name!r} is sparse or ragged; only dense inputs are supported")
        clean = _clean(name)
        dims = []
        for axis, d in enumerate(shape[1:], start=1):
            if d is None:
                dims.append(f"{clean}_{axis}")
            elif isinstance(d, int) and not isinstance(d, bool) and d >= 1:
                dims.append(d)
            else:
                raise ValueError(f"input {name!r}: batch_input_shape[{axis}] is {d!r}; expected a positive int or "
                                 "null")
        batch = shape[0] if isinstance(shape[0], int) and not isinstance(shape[0], bool) and shape[0] >= 1 else None
        return {"name": clean, "keras_name": name, "shape": dims, "dtype": dtype, "batch": batch}

    def _check_supported(self, entry: dict) -> None:
        class_name = entry["class_name"]
        if class_name not in SUPPORTED_LAYERS:
            raise ValueError(f"layer {_layer_name(entry)!r} of class {class_name!r} is not supported; supported "
                             f"layer classes: {', '.join(SUPPORTED_LAYERS)}")
        config = entry["config"]
        dtype = config.get("dtype", "float32")
        if class_name != "InputLayer" and dtype not in ("float32", None):
            raise ValueError(f"layer {_layer_name(entry)!r} ({class_name}) has dtype {dtype!r}; whole Keras models "
                             "are imported in float32 only")
        if class_name == "TimeDistributed" and (not isinstance(config.get("layer"), dict)
                                                or config["layer"].get("class_name") != "Dense"):
            inner = config.get("layer", {}).get("class_name") if isinstance(config.get("layer"), dict) else None
            raise ValueError(f"layer {_layer_name(entry)!r} (TimeDistributed) wraps a {inner!r} layer; only "
                             "TimeDistributed(Dense) is supported")
        if class_name in ("GRU", "RNN") and (config.get("stateful") or config.get("time_major")):
            flag = "stateful" if config.get("stateful") else "time_major"
            raise ValueError(f"layer {_layer_name(entry)!r} ({class_name}) has {flag}=True; whole models take "
                             f"non-stateful, batch-major recurrent layers (use tvm_gru.GRU directly)")

    def _gru_layer(self, entry: dict, target):
        name = _layer_name(entry)
        weights = self.file.weights.get(name)
        cls = Bidirectional if entry["class_name"] == "Bidirectional" else GRU
        layer = cls.from_config(entry, target=target)
        if entry["class_name"] == "Bidirectional":
            inner = entry["config"]["layer"]["config"]
            if inner.get("stateful") or inner.get("time_major"):
                raise ValueError(f"layer {name!r} (Bidirectional) wraps a stateful or time_major layer; not supported")
        if weights is None:
            raise ValueError(f"layer {name!r} ({entry['class_name']}) has no weights in {self.file.path}")
        try:
            layer.set_weights([w.astype("float32", copy=False) for w in weights])
        except (ValueError, TypeError) as err:
            shapes = [tuple(w.shape) for w in weights]
            raise ValueError(f"layer {name!r} ({entry['class_name']}): the file's weights {shapes} do not match the "
                             f"layer's config ({err})") from None
        return layer

    # ------------------------------------------------------------------ Relax
    def module(self, batch: int, target, weight_dtype=None):
        """The Relax module (``main``) of the model for inputs of batch size ``batch``, its kernels scheduled for
        ``target``. ``main`` takes the inputs in model order and returns the output (a tuple for several).
        ``weight_dtype``: the storage dtype of the GRU kernels' weight matrices (None: each layer's own; see
        :class:`~.lowering.SequenceKernels`)."""
        bb = relax.BlockBuilder()
        ctx = keras_layers.Context(bb, SequenceKernels(bb, target, weight_dtype), self.file.weights, self.layers)
        params = []
        values = {}  # (layer, node index) -> (outputs, masks)
        for spec in self.inputs:
            shape = [batch] + [tirx.Var(d, "int64") if isinstance(d, str) else d for d in spec["shape"]]
            params.append(relax.Var(spec["name"], relax.TensorType(shape, spec["dtype"])))
        with bb.function("main", params):
            with bb.dataflow():
                for spec, param in zip(self.inputs, params):
                    values[(spec["keras_name"], 0)] = ([param], [None])
                self._evaluate(ctx, values)
                outs = []
                for name, node, tensor in self.outputs:
                    got = values[(name, node)][0]
                    if tensor >= len(got):
                        raise ValueError(f"the model's output ({name}, {node}, {tensor}) names tensor {tensor} of "
                                         f"a layer with {len(got)} outputs")
                    outs.append(got[tensor])
                result = bb.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
            bb.emit_func_output(result)
        return bb.get()

    def _evaluate(self, ctx, values: dict) -> None:
        """Fill ``values`` with every node whose inputs are known, until nothing is left (or ValueError for a
        node that can never run: a reference to a missing layer or node, a cycle)."""
        pending = [(name, i, refs) for name, (entry, nodes) in self.entries.items() for i, refs in enumerate(nodes)
                   if entry["class_name"] != "InputLayer"]
        for _ in range(_MAX_PASSES):
            if not pending:
                return
            left = []
            for name, index, refs in pending:
                if all((r[0], r[1]) in values for r in refs):
                    values[(name, index)] = self._call(ctx, name, refs, values)
                else:
                    left.append((name, index, refs))
            if len(left) == len(pending):
                missing = sorted({f"{r[0]}[{r[1]}]" for _, _, refs in left for r in refs
                                  if (r[0], r[1]) not in values})
                raise ValueError(f"layers {[n for n, _, _ in left][:10]} read {missing[:10]}, which no layer of the "
                                 "config produces (or the graph has a cycle)")
            pending = left
        raise ValueError("the model graph is too large to evaluate")

    def _call(self, ctx, name: str, refs: list, values: dict) -> tuple:
        entry = self.entries[name][0]
        xs, masks = [], []
        for layer, node, tensor in refs:
            outs, out_masks = values[(layer, node)]
            if tensor >= len(outs):
                raise ValueError(f"layer {name!r} reads output {tensor} of {layer!r}, which has {len(outs)}")
            xs.append(outs[tensor])
            masks.append(out_masks[tensor])
        class_name = entry["class_name"]
        with _about(entry):
            if class_name in _GRU_FAMILY:
                return keras_layers.recurrent(ctx, name, self.layers[name], xs, masks)
            return keras_layers.CONVERTERS[class_name](ctx, entry, xs, masks)
