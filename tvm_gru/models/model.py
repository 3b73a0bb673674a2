"""A whole ONNX model compiled by TVM Relax into one VM executable, called on numpy arrays and exported as an
artifact of kind "model".

>>> model = Model.from_onnx("model.onnx", batch=[1, 8])          # doctest: +SKIP
>>> y = model(x)                                                   # any sequence length, batch 1 or 8
>>> model.export("model_arm", target="aarch64")                   # doctest: +SKIP

Import: ``tvm_gru.relax.from_onnx`` (GRU nodes lowered to tvm_gru's kernels) when that package is present,
otherwise TVM's own ONNX frontend, which has no GRU: a graph with a GRU node is then refused by name.
Symbolic dimensions (ONNX ``dim_param``) stay symbolic: one executable serves every sequence length. With
``batch=``, the batch dimension is bound to each size given and the executable holds one function per size
(``main_b{B}``: the graph's constants are stored once).

The call code (argument checks, batch dispatch, outputs) is the deployed runtime's
(:class:`tvm_gru.runtime.deployed_model.ModelCalls`), so an exported model behaves exactly as this one.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import tvm
from onnx import external_data_helper, helper
from tvm import relax

from .. import targets
from ..deploy.destination import check_destination
from ..deploy.export import batch_list, plain, target_meta, write_artifact
from ..deploy.toolchains import aarch64_runtime_lib, runtime_libs
from ..interop.keras_file import read_keras
from ..interop.onnx_io import external_tensor, load_model
from ..relax import compile as relax_compile
from ..relax import from_onnx as relax_from_onnx
from ..relax.keras_frontend import KerasGraph
from ..relax.lowering import check_gru_weight_dtype
from ..relax.torch_frontend import export_torch, from_exported_program
from ..runtime import artifact
from ..runtime.deployed_model import VM_PROVIDES, ModelCalls, ModelSignature, create_vm
from ..runtime.format import ANY_BATCH, KIND_VERSIONS

__all__ = ["Model"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,127}")
_BATCH_NAMES = ("batch", "batch_size", "batchsize", "n", "b", "bs")  # dim_param names read as the batch


# ---------------------------------------------------------------------------------------- the ONNX side
def _read_model(model_or_path):
    """A private copy of the ONNX model with its external data read (only from inside the model's folder, as
    for :func:`tvm_gru.from_onnx`)."""
    model, folder = load_model(model_or_path)
    own = onnx.ModelProto()
    own.CopyFrom(model)
    for tensor in own.graph.initializer:
        if external_data_helper.uses_external_data(tensor):
            tensor.CopyFrom(external_tensor(tensor, folder))
    return own


def _has_op(graph, op_type: str) -> bool:
    """Whether ``graph`` or any subgraph (If / Loop / Scan bodies) holds a node ``op_type``."""
    for node in graph.node:
        if node.op_type == op_type:
            return True
        for attr in node.attribute:
            subgraphs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
            if any(_has_op(g, op_type) for g in subgraphs):
                return True
    return False


def _dim_name(raw: str, taken: dict) -> str:
    """An ONNX ``dim_param`` as a dimension name the artifact schema accepts (the same raw name, the same one)."""
    if raw not in taken:
        name = raw if _NAME.fullmatch(raw) else re.sub(r"[^A-Za-z0-9_.]", "_", raw)[:120]
        if not _NAME.fullmatch(name):
            name = f"d_{name}"[:128]
        taken[raw] = name
    return taken[raw]


def _graph_inputs(model, input_shapes) -> list:
    """[{"name", "shape", "dtype"}] of the graph's run-time inputs (initializers excluded), in graph order, with
    ``input_shapes`` applied and every unnamed unknown dimension named ``{input}_{axis}``. The model's input
    types are rewritten to match (so every importer sees the same shapes)."""
    graph = model.graph
    constants = {t.name for t in graph.initializer}
    inputs = [vi for vi in graph.input if vi.name not in constants]
    names = [vi.name for vi in inputs]
    overrides = dict(input_shapes or {})
    if not isinstance(overrides, dict):
        raise TypeError(f"`input_shapes` must be a dict {{input name: shape}}; received {type(input_shapes).__name__}")
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ValueError(f"`input_shapes` names {unknown}, which are not inputs of the graph; its inputs are {names}")
    taken: dict = {}
    out = []
    for vi in inputs:
        tensor = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise ValueError(f"graph input {vi.name!r} is not a tensor ({vi.type.WhichOneof('value')}); Model takes "
                             "tensor inputs only")
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        if vi.name in overrides:
            given = overrides[vi.name]
            if isinstance(given, (str, bytes)) or not hasattr(given, "__iter__"):
                raise TypeError(f"`input_shapes[{vi.name!r}]` must be a sequence of ints, names or None; received "
                                f"{given!r}")
            dims = []
            for axis, d in enumerate(given):
                if d is None:
                    dims.append(None)
                elif isinstance(d, str):
                    dims.append(d)
                elif isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1:
                    dims.append(int(d))
                else:
                    raise ValueError(f"`input_shapes[{vi.name!r}]`[{axis}] must be a positive int, a dimension name "
                                     f"or None; received {d!r}")
        elif tensor.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]
        else:
            raise ValueError(f"graph input {vi.name!r} has no shape (unknown rank); pass input_shapes={{"
                             f"{vi.name!r}: [...]}} (ints, dimension names or None)")
        shape = []
        for axis, d in enumerate(dims):
            if isinstance(d, int):
                shape.append(d)
            else:
                shape.append(_dim_name(d if d is not None else f"{vi.name}_{axis}", taken))
        tensor.ClearField("shape")
        tensor.shape.SetInParent()
        for d in shape:
            dim = tensor.shape.dim.add()
            if isinstance(d, int):
                dim.dim_value = d
            else:
                dim.dim_param = d
        out.append({"name": vi.name, "shape": shape, "dtype": dtype})
    return out


def _batch_dim(inputs: list, batch_dim):
    """The symbolic dimension that ``batch`` binds: ``batch_dim`` if given, else a dimension named like a batch,
    else axis 0 of the first input when it is symbolic; None when there is none."""
    symbolic = [d for t in inputs for d in t["shape"] if isinstance(d, str)]
    if batch_dim is not None:
        if batch_dim not in symbolic:
            raise ValueError(f"`batch_dim` {batch_dim!r} is not a symbolic dimension of the inputs "
                             f"({[(t['name'], t['shape']) for t in inputs]})")
        return batch_dim
    named = [d for d in symbolic if d.lower() in _BATCH_NAMES or "batch" in d.lower()]
    if named:
        return named[0]
    if inputs and inputs[0]["shape"] and isinstance(inputs[0]["shape"][0], str):
        return inputs[0]["shape"][0]
    return None


def _bind_batch(model, name: str, size: int):
    """A copy of ``model`` with the dimension ``name`` fixed to ``size`` in its inputs, outputs and value infos."""
    bound = copy.deepcopy(model)
    graph = bound.graph
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            for dim in vi.type.tensor_type.shape.dim:
                if dim.HasField("dim_param") and dim.dim_param == name:
                    dim.dim_value = size
    return bound


# ---------------------------------------------------------------------------------------- the TVM side
def _import(model, target, weight_dtype=None):
    """The Relax IRModule of ``model`` (its ``main``), GRU nodes lowered to tvm_gru kernels whose weight matrices
    are stored as ``weight_dtype``."""
    return relax_from_onnx(model, target=target, weight_dtype=weight_dtype)


def _rename_globals(func, mapping: dict):
    """``func`` (a Relax function) with its references to the GlobalVars in ``mapping`` replaced."""
    @relax.expr_functor.mutator
    class _Rename(relax.expr_functor.PyExprMutator):
        def visit_global_var_(self, op):
            return mapping.get(op, op)

    return _Rename().visit_expr(func)


def merge_batches(modules: dict):
    """One IRModule from per-batch modules ({B: IRModule with a Relax ``main``}): ``main_b{B}`` per batch (``main``
    for the key :data:`ANY_BATCH`) and the other functions, each added once (a BlockBuilder shares structurally
    equal functions and gives a colliding name to a different one a new name, e.g. ``matmul1``)."""
    builder = relax.BlockBuilder()
    mains = {}
    for batch, mod in modules.items():
        mapping = {}
        for gv, func in mod.functions.items():
            if gv.name_hint == "main":
                continue
            if isinstance(func, relax.Function):
                raise NotImplementedError(f"the imported module holds a second Relax function {gv.name_hint!r}; "
                                          "Model merges per-batch modules with one Relax function (main) only")
            new = builder.add_func(func.without_attr("global_symbol") if "global_symbol" in (func.attrs or {})
                                   else func, gv.name_hint)
            if not new.same_as(gv):
                mapping[gv] = new
        main = mod["main"]
        mains[batch] = _rename_globals(main, mapping) if mapping else main
    for batch, main in mains.items():
        name = "main" if batch == ANY_BATCH else f"main_b{batch}"
        builder.add_func(main.with_attr("global_symbol", name), name)
    mod = builder.get()
    return relax.transform.AttachGlobalSymbol()(mod)


def _dim(value, fallback: str):
    if hasattr(value, "value") and not hasattr(value, "name"):  # IntImm
        return int(value.value)
    name = str(getattr(value, "name", value))
    return name if _NAME.fullmatch(name) else fallback


def _tensor_types(ty) -> list:
    fields = getattr(ty, "fields", None)
    if fields is None:
        return [ty]
    return [t for f in fields for t in _tensor_types(f)]


def _outputs(model, main, batch_dim, batch: int | None) -> list:
    """[{"name", "shape", "dtype"}] of the graph's outputs: the executable's types (symbolic dimensions as names),
    an axis of the bound batch size named ``batch_dim`` where the ONNX graph declares it so."""
    names = [o.name for o in model.graph.output]
    types = _tensor_types(main.ret_ty)
    if len(types) != len(names):
        raise ValueError(f"the imported model returns {len(types)} tensors; the ONNX graph declares {len(names)} "
                         f"outputs {names}")
    out = []
    for vi, ty in zip(model.graph.output, types):
        shape = [_dim(v, f"{vi.name}_{axis}") for axis, v in enumerate(ty.shape.values)]
        declared = vi.type.tensor_type.shape.dim if vi.type.tensor_type.HasField("shape") else []
        if batch is not None and len(declared) == len(shape):
            shape = [batch_dim if d.dim_param == batch_dim and s == batch else s for d, s in zip(declared, shape)]
        out.append({"name": vi.name, "shape": shape, "dtype": str(ty.dtype)})
    return out


def _check_params(main, inputs: list) -> None:
    params = list(main.params)
    if len(params) != len(inputs):
        raise ValueError(f"the imported model takes {len(params)} inputs; the ONNX graph has {len(inputs)} "
                         f"({[t['name'] for t in inputs]})")
    for param, spec in zip(params, inputs):
        if int(param.ty.ndim) != len(spec["shape"]) or str(param.ty.dtype) != spec["dtype"]:
            raise ValueError(f"input {spec['name']!r}: the imported model takes {param.ty}; the graph declares "
                             f"{spec['dtype']} {spec['shape']}")


def _target_key(target) -> str:
    return json.dumps(plain(target.export()), sort_keys=True)


def _cpu_family(target, action: str) -> str:
    family = targets.family(target)
    if family not in ("x86", "aarch64"):
        raise ValueError(f"cannot {action} a model for target {family!r} ({target.kind.name}): whole models run on "
                         "CPUs only for now (x86, aarch64: 'host', 'x86', 'aarch64' or a dict such as "
                         "{'name': 'aarch64', 'mcpu': 'cortex-a72'})")
    return family


# ---------------------------------------------------------------------------------------- Model
def _build_onnx(onnx_model, inputs: list, batch_dim, batch_sizes, weight_dtype, target) -> tuple:
    """(metadata signature, VM executable) of the model compiled for ``target``."""
    if batch_sizes is None:
        bound = {ANY_BATCH: onnx_model}
    else:
        bound = {b: _bind_batch(onnx_model, batch_dim, b) for b in batch_sizes}
    modules = {b: _import(m, target, weight_dtype) for b, m in bound.items()}
    first = next(iter(bound))
    for mod in modules.values():
        _check_params(mod["main"], inputs)
    outputs = _outputs(onnx_model, modules[first]["main"], batch_dim,
                       None if first == ANY_BATCH else first)
    functions = ({ANY_BATCH: "main"} if batch_sizes is None
                 else {str(b): f"main_b{b}" for b in batch_sizes})
    meta = {"inputs": inputs, "outputs": outputs, "batch_dim": batch_dim,
            "batch_sizes": batch_sizes, "kernel": {"library": "model.so", "functions": functions}}
    return meta, relax_compile(merge_batches(modules), target)


def _build_keras(graph, batch_sizes, weight_dtype, target) -> tuple:
    """(metadata signature, VM executable) of a Keras model (:class:`tvm_gru.relax.keras_frontend.KerasGraph`)
    compiled for ``target``, one function per batch size."""
    modules = {b: graph.module(b, target, weight_dtype) for b in batch_sizes}
    inputs = [{"name": t["name"], "shape": ["batch", *t["shape"]], "dtype": t["dtype"]} for t in graph.inputs]
    for spec in inputs:  # ids of an Embedding: checked by the call (ModelCalls), as TF checks them
        if spec["name"] in graph.index_ranges:
            spec["index_range"] = graph.index_ranges[spec["name"]]
    main = modules[batch_sizes[0]]["main"]
    _check_params(main, inputs)
    outputs = []
    for i, ((layer, _, tensor), ty) in enumerate(zip(graph.outputs, _tensor_types(main.ret_ty))):
        name = _dim_name(layer if tensor == 0 else f"{layer}_{tensor}", {})
        if name in [o["name"] for o in outputs]:
            name = f"{name}_{i}"
        shape = [_dim(v, f"{name}_{a}") for a, v in enumerate(ty.shape.values)]
        if shape and shape[0] == batch_sizes[0]:
            shape[0] = "batch"
        outputs.append({"name": name, "shape": shape, "dtype": str(ty.dtype)})
    meta = {"inputs": inputs, "outputs": outputs, "batch_dim": "batch", "batch_sizes": list(batch_sizes),
            "kernel": {"library": "model.so", "functions": {str(b): f"main_b{b}" for b in batch_sizes}}}
    return meta, relax_compile(merge_batches(modules), target)


def _keras_batches(graph, batch) -> list:
    """The batch sizes to compile a Keras model for: ``batch``, else the model's fixed batch size, else [1]."""
    fixed = sorted({t["batch"] for t in graph.inputs if t["batch"] is not None})
    if len(fixed) > 1:
        raise ValueError(f"the model's inputs fix different batch sizes {fixed}")
    if batch is None:
        return fixed or [1]
    batches = batch_list(batch)
    if fixed and batches != fixed:
        raise ValueError(f"`batch={batch!r}`: the model's inputs fix the batch size to {fixed[0]}")
    return batches


class Model(ModelSignature):
    """A compiled ONNX model: ``outputs = model(*inputs)`` on numpy arrays (or host DLPack tensors).

    Build one with :meth:`from_onnx`, :meth:`from_torch` or :meth:`from_keras`. Inputs by position (graph order),
    as one list (as Keras's ``predict``) or by name; the outputs come back in
    graph order, the array itself when the graph has one output. Symbolic dimensions take any size (the same
    size wherever a name repeats); the batch takes the sizes compiled for (:attr:`batch_sizes`; None: any).
    """
    def __init__(self, build, target, weight_dtype=None):
        """Use :meth:`from_onnx` or :meth:`from_torch`. ``build(target)`` -> (the metadata signature: inputs,
        outputs, batch_dim, batch_sizes, kernel; the VM executable) of the model compiled for ``target``;
        ``weight_dtype`` the storage dtype its GRU kernels were built with (None: float32)."""
        self._build, self.target, self.weight_dtype = build, target, weight_dtype
        self._executables: dict = {}
        meta, executable = self._executable(target)
        super().__init__(meta)
        self._calls = ModelCalls(meta, create_vm(executable.mod)) if targets.runs_here(target) else None

    @classmethod
    def from_onnx(cls, model_or_path, target=None, batch=None, input_shapes=None, batch_dim=None,
                  weight_dtype=None) -> Model:
        """Import and compile an ONNX model.

        Parameters
        ----------
        model_or_path : onnx.ModelProto, bytes, str or Path
            The model (external data is read only from regular files inside a model file's folder).
        target : None, str, dict or tvm.target.Target
            "host" (default), "x86", "aarch64" (cross-compiled: callable after :meth:`export` on such a machine)
            or a target dict. CUDA is refused: whole models run on CPUs for now.
        batch : None, int or sequence of int
            None: the graph's shapes as they are (a symbolic batch stays symbolic: any batch). Otherwise the
            batch sizes to compile for: the batch dimension is bound to each (one function per size).
        input_shapes : dict, optional
            ``{input name: shape}`` overriding the graph's input shapes: ints, dimension names (symbolic) or
            None (a new symbolic dimension).
        batch_dim : str, optional
            The symbolic dimension that is the batch. Default: one named like a batch ("batch", "N", ...), else
            axis 0 of the first input when it is symbolic.
        weight_dtype : None, "float32", "float16" or "int8"
            Storage dtype of every GRU's weight matrices (None: float32): "float16" halves the bytes its kernels
            stream, "int8" quarters them (symmetric per Keras column, one float32 scale each); both are widened to
            float32 in the kernels' inner loops, states and gate math stay float32 (error bound:
            :func:`tvm_gru.runtime.packing.int8_error_bound`). The graph's other ops are unchanged.

        Raises
        ------
        ValueError
            A graph input without a shape and no ``input_shapes`` entry, ``input_shapes`` naming no input,
            ``batch`` given for a graph without a symbolic batch dimension, a CUDA target, a ``weight_dtype``
            that is not a storage dtype (or one a float64 GRU cannot use).
        NotImplementedError
            A GRU node while ``tvm_gru.relax`` is not available.
        """
        target = targets.resolve(target)
        _cpu_family(target, "compile")
        weight_dtype = check_gru_weight_dtype(weight_dtype)
        onnx_model = _read_model(model_or_path)
        inputs = _graph_inputs(onnx_model, input_shapes)
        dim = _batch_dim(inputs, batch_dim)
        batches = None
        if batch is not None:
            batches = batch_list(batch)
            if dim is None:
                raise ValueError(f"`batch={batch!r}` needs a symbolic batch dimension; the inputs are "
                                 f"{[(t['name'], t['shape']) for t in inputs]} (name one with batch_dim=, or make "
                                 "one symbolic with input_shapes=)")
        return cls(functools.partial(_build_onnx, onnx_model, inputs, dim, batches, weight_dtype), target,
                   weight_dtype)

    @classmethod
    def from_torch(cls, module_or_exported_program, example_inputs=None, target=None, weight_dtype=None) -> Model:
        """Import and compile a PyTorch model (``torch.nn.Module`` with ``example_inputs``, or a
        ``torch.export.ExportedProgram``) through ``torch.export`` and :func:`tvm_gru.relax.from_exported_program`
        (every ``nn.GRU`` lowered to tvm_gru's kernel). Shapes are static (the example's: ``torch.export``
        specialises the sequence length of ``nn.GRU``); outputs are named ``output_0``, ``output_1``, ...
        Called like a model from :meth:`from_onnx`; :meth:`export` works the same; ``weight_dtype`` as for
        :meth:`from_onnx`."""
        target = targets.resolve(target)
        _cpu_family(target, "compile")
        weight_dtype = check_gru_weight_dtype(weight_dtype)
        ep, inputs = export_torch(module_or_exported_program, example_inputs)
        def build(build_target):
            mod = from_exported_program(ep, target=build_target, weight_dtype=weight_dtype)
            main = mod["main"]
            _check_params(main, inputs)
            outputs = [{"name": f"output_{i}", "dtype": str(ty.dtype),
                        "shape": [_dim(v, f"output_{i}_{a}") for a, v in enumerate(ty.shape.values)]}
                       for i, ty in enumerate(_tensor_types(main.ret_ty))]
            meta = {"inputs": inputs, "outputs": outputs, "batch_dim": None, "batch_sizes": None,
                    "kernel": {"library": "model.so", "functions": {ANY_BATCH: "main"}}}
            return meta, relax_compile(merge_batches({ANY_BATCH: mod}), build_target)

        return cls(build, target, weight_dtype)

    @classmethod
    def from_keras(cls, path, target=None, batch=None, weight_dtype=None) -> Model:
        """Import and compile a saved Keras model (tf_keras 2.x ``.h5`` or ``.keras``), without TensorFlow.

        The model's graph (Sequential or Functional) becomes one Relax function: GRU-family layers (``GRU`` v1 and
        v2, ``RNN`` around a ``GRUCell``, ``Bidirectional`` of those) run tvm_gru's sequence kernels, the other
        supported layers (:data:`tvm_gru.relax.keras_frontend.SUPPORTED_LAYERS`) plain Relax ops; Keras masks
        flow to the recurrent layers as Keras propagates them. ``model(x)`` (or ``model([x1, x2])``) returns
        what ``keras_model.predict`` returns (a list for several outputs); :meth:`get_layer` gives the tvm_gru
        layers. Unknown input dimensions (the sequence length) stay symbolic.

        Parameters
        ----------
        path : str or Path
            The model file (read as untrusted: see :func:`tvm_gru.interop.keras_file.read_keras`).
        target : None, str, dict or tvm.target.Target
            As for :meth:`from_onnx` (CPU targets).
        batch : None, int or sequence of int
            The batch sizes to compile for (one function per size); None: the model's fixed batch size, else 1.
        weight_dtype : None, "float32", "float16" or "int8"
            Storage dtype of the GRU-family layers' weight matrices in the compiled model, as for
            :meth:`from_onnx` (:meth:`get_layer` returns the layers with the file's float32 weights).

        Raises
        ------
        ValueError
            An unreadable or hostile file, a layer that is not supported (naming the layer, its class and the
            supported classes), weights that do not match the config, a CUDA target.
        """
        target = targets.resolve(target)
        _cpu_family(target, "compile")
        weight_dtype = check_gru_weight_dtype(weight_dtype)
        graph = KerasGraph(read_keras(path), target=target)
        batches = _keras_batches(graph, batch)
        model = cls(functools.partial(_build_keras, graph, batches, weight_dtype), target, weight_dtype)
        model._keras_layers = graph.layers
        return model

    def get_layer(self, name: str):
        """The tvm_gru layer (:class:`tvm_gru.GRU` or :class:`tvm_gru.Bidirectional`, with the file's weights) of
        the Keras model's GRU-family layer ``name``."""
        layers = getattr(self, "_keras_layers", None)
        if layers is None:
            raise ValueError("get_layer: this model was not imported from Keras (Model.from_keras)")
        if name not in layers:
            raise ValueError(f"get_layer: the model has no GRU-family layer named {name!r}; its GRU-family layers "
                             f"are {sorted(layers)}")
        return layers[name]

    def _executable(self, target) -> tuple:
        key = _target_key(target)
        if key not in self._executables:
            self._executables[key] = self._build(target)
        return self._executables[key]

    # ------------------------------------------------------------------ the call
    def __call__(self, *inputs, **named):
        """The model on ``inputs`` (graph order) / ``named`` inputs; see
        :meth:`tvm_gru.runtime.deployed_model.ModelCalls.__call__` for the checks and errors."""
        if self._calls is None:
            raise RuntimeError(f"this model was compiled for {targets.family(self.target)} "
                               f"({self.target.kind.name}), which cannot run on this machine; export it "
                               "(model.export(path)) and load the folder on such a machine")
        return self._calls(*inputs, **named)

    def __reduce_ex__(self, protocol):
        raise TypeError("a Model cannot be pickled or copied: it holds compiled TVM executables. Build another with "
                        "Model.from_onnx, or export it (model.export(path)) and load the folder")

    def __repr__(self):
        sig = ", ".join(f"{t['name']}: {t['dtype']}{tuple(t['shape'])}" for t in self._inputs)
        batch = "any batch" if self._batch_sizes is None else f"batch {self._batch_sizes}"
        storage = "" if self.weight_dtype in (None, "float32") else f", GRU weights {self.weight_dtype}"
        return f"<Model ({sig}) -> {self.output_names}, {batch}, {targets.family(self.target)}{storage}>"

    # ------------------------------------------------------------------ export
    def export(self, path, target=None, overwrite: bool = False) -> Path:
        """Write a deployable artifact of kind "model": the VM executable library (constants embedded;
        cross-compiled for aarch64), the TVM runtime library for the target's architecture, the loader zip and
        the metadata (signature, batch sizes, target, versions, a SHA-256 per file).

        Parameters
        ----------
        path : str or Path
            The artifact folder to create (see :func:`tvm_gru.deploy.destination.check_destination`).
        target : None, str, dict or tvm.target.Target
            None: the target the model was compiled for. "host", "x86", "aarch64" or a target dict; CUDA is
            refused. Another target than the model's compiles the model again for it.
        overwrite : bool
            Replace an existing artifact folder at ``path``.

        Returns
        -------
        Path
            The artifact folder.
        """
        target = self.target if target is None else targets.resolve(target)
        family = _cpu_family(target, "export")
        dest = check_destination(path, overwrite)
        signature, executable = self._executable(target)
        wdt = self.weight_dtype or "float32"
        meta = {"format": artifact.FORMAT, "format_version": KIND_VERSIONS["model"], "kind": "model",
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **signature,
                "gru_weight_dtype": wdt,  # informative: the GRU kernels' storage (constants are in the library)
                "target": target_meta(target, family, wdt)}
        return write_artifact(dest, executable, family, meta, overwrite, runtime=_model_runtime_libs)


def _model_runtime_libs(family: str, library: Path) -> list:
    """[(source, provides)]: the TVM runtime library, always (it registers the Relax VM's loader)."""
    libs = runtime_libs(family, library)
    if libs:
        return libs
    source = aarch64_runtime_lib() if family == "aarch64" else Path(tvm.__file__).resolve().parent / "lib" / \
        "libtvm_runtime.so"
    return [(source, VM_PROVIDES)]


