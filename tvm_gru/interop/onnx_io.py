"""ONNX ``GRU`` nodes -> tvm_gru layers (the writer is :mod:`.onnx_export`), with the exact mapping between the two.

ONNX orders the gates z, r, h like Keras, so the weights only transpose:

    W = kernel.T[None]            (1, 3H, I)         R = recurrent_kernel.T[None]   (1, 3H, H)
    B = [bias[0] | bias[1]]       reset_after=True  (linear_before_reset=1)
    B = [bias | zeros(3H)]        reset_after=False (linear_before_reset=0)

Importing a ``linear_before_reset=0`` node folds its recurrent bias into the input bias: with the reset applied
before the product, every recurrent bias term is a plain sum (``Wb + Rb``), which Keras can hold.

A node's ``sequence_lens`` is a Keras mask (``t < len[b]``) with ``zero_output_for_mask`` (ONNX writes zeros
past each length); ``direction="reverse"`` is ``go_backwards`` (ONNX returns Y in input time order, Keras in
processing order: :func:`run_onnx` flips it back).

An ONNX graph is untrusted input. :func:`from_onnx` folds the node's ``W``, ``R`` and ``B`` through ``Constant``,
``Identity`` and ``Cast`` nodes to initializers and refuses, by name, anything else (a graph input, another op);
``sequence_lens`` and ``initial_h`` may instead be run-time inputs, which :func:`run_onnx` then requires. Values,
shapes, dtypes and the opset are checked at import, and external data is read only from regular files inside the
model file's folder, reached through no link.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np

from .onnx_mapping import GRU_VERSIONS, ONNX_PARAMS, keras_activation, opset_range

__all__ = ["from_onnx", "run_onnx", "lengths_to_mask", "load_model", "external_tensor"]

# ------------------------------------------------------------------------------------------------ import
# The GRU versions the importer implements. GRU-1 and GRU-3 (opsets 1 to 6) have other attributes
# (``output_sequence``); GRU-14 adds ``layout``; GRU-22 only admits bfloat16, which the dtype check refuses.
_SLOTS = ("X", "W", "R", "B", "sequence_lens", "initial_h")  # the GRU node's inputs, in order
_ONNX_DOMAINS = ("", "ai.onnx")


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


def load_model(model_or_path) -> tuple:
    """``(model, folder)``: the ``onnx.ModelProto`` and, for a model file, the folder its external data may be read
    from (None otherwise). A file is parsed without its external data: :func:`external_tensor` reads only the
    tensors the GRU node uses, after checking where they lie."""
    import onnx  # noqa: PLC0415

    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path, None
    if isinstance(model_or_path, (bytes, bytearray)):
        blob = bytes(model_or_path)
        return _parse(lambda: onnx.load_from_string(blob), f"{len(blob)} bytes", len(blob)), None
    if isinstance(model_or_path, (str, os.PathLike)):
        path = Path(model_or_path)
        if path.is_dir():
            raise ValueError(f"`model_or_path` must be an ONNX model file; received the directory {path}")
        if not path.is_file():
            raise FileNotFoundError(f"`model_or_path`: ONNX model file not found: {path}")
        model = _parse(lambda: onnx.load(str(path), load_external_data=False), f"file {path}", path.stat().st_size)
        return model, path.parent
    raise TypeError(f"`model_or_path` must be an onnx.ModelProto, bytes or a path; "
                    f"received {type(model_or_path).__name__}")


def _pick_node(graph, node):
    grus = [n for n in graph.node if n.op_type == "GRU" and n.domain in _ONNX_DOMAINS]
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


def _gru_opset(model, where: str) -> int:
    """The model's ai.onnx opset, or ValueError naming it when its GRU is not one the importer implements."""
    import onnx  # noqa: PLC0415

    versions = sorted({o.version for o in model.opset_import if o.domain in _ONNX_DOMAINS})
    supported = opset_range()
    expected = f"expected one ai.onnx opset in {supported.start}..{supported.stop - 1}"
    if len(versions) != 1:
        raise ValueError(f"{where}: the model imports the ai.onnx opset {versions or 'nowhere'}; {expected}")
    opset = versions[0]
    if opset >= supported.stop:
        raise ValueError(f"{where}: ai.onnx opset {opset} is newer than the installed onnx {onnx.__version__} knows; "
                         f"{expected}")
    since = onnx.defs.get_schema("GRU", max(opset, 1)).since_version
    if opset < supported.start or since not in GRU_VERSIONS:
        raise ValueError(f"{where}: ai.onnx opset {opset} means GRU-{since}, which tvm_gru does not implement "
                         f"(GRU-{', GRU-'.join(map(str, GRU_VERSIONS))}); {expected}")
    return opset


def _attrs(node) -> dict:
    from onnx import helper  # noqa: PLC0415

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _decode(v):
    return v.decode() if isinstance(v, bytes) else v


def _node_label(node) -> str:
    return f"the {node.op_type} node {node.name or '(unnamed)'!r}"


# ------------------------------------------------------------------------------------------------ constant folding
class _Source(NamedTuple):
    """Where a GRU input comes from."""

    value: np.ndarray | None  # the folded constant; for an overridable initializer, its default
    runtime: str | None  # what supplies it at run time (a graph input, another op), or None for a constant
    node: object = None  # the node that computes it, when that is an op the importer does not fold


def _external_path(folder: Path, location: str, what: str) -> None:
    """ValueError unless ``location`` names a regular file inside ``folder``, reached through no link.

    ``location`` must be relative and without ``..``; every component below ``folder`` is checked with ``lstat``
    (a symbolic link anywhere is refused, as is a file with several hard links: it may be a file outside the
    folder). onnx 1.21 and later refuse the same links; checking here does not depend on the installed release.
    """
    parts = PurePosixPath(location).parts  # ONNX writes external-data locations with "/"
    if not location or "\x00" in location or "\\" in location or PurePosixPath(location).is_absolute() \
            or ".." in parts:
        raise ValueError(f"{what}: the location must be a relative path inside the model folder {folder} "
                         f"(no '..', not absolute); received {location!r}")
    path = folder
    for part in parts:
        path = path / part
        try:
            info = os.lstat(path)
        except OSError as err:
            raise ValueError(f"{what}: cannot read {path}: {err.strerror}") from err
        if stat.S_ISLNK(info.st_mode):
            raise ValueError(f"{what}: {path} is a symbolic link; external data must be a regular file inside the "
                             f"model folder {folder}, reached through no link")
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{what}: {path} is not a regular file")
    if info.st_nlink > 1:
        raise ValueError(f"{what}: {path} has {info.st_nlink} hard links (it may be a file outside the model "
                         f"folder {folder}); expected 1")


def external_tensor(tensor, folder: Path | None):
    """A copy of ``tensor`` with its external data read, only from a file :func:`_external_path` accepts."""
    from onnx import TensorProto, external_data_helper  # noqa: PLC0415

    location = next((e.value for e in tensor.external_data if e.key == "location"), "")
    what = f"tensor {tensor.name!r} keeps its data in the external file {location!r}"
    if folder is None:
        raise ValueError(f"{what}, but the model was not given as a path: external data is read only from the "
                         f"folder of a model file (pass its path)")
    _external_path(folder, location, what)
    copy = TensorProto()
    copy.CopyFrom(tensor)
    try:
        external_data_helper.load_external_data_for_tensor(copy, str(folder))
    except Exception as err:  # noqa: BLE001  (onnx raises ValueError, OSError or its own checker errors)
        raise ValueError(f"{what}: {type(err).__name__}: {err}") from err
    return copy


def _cast(value: np.ndarray, node) -> np.ndarray:
    """``value`` through the ``Cast`` ``node``, as numpy computes it; ValueError for casts numpy would not compute
    exactly as ONNX does (floats to integers, integers out of range, non-numeric types)."""
    from onnx import TensorProto, helper  # noqa: PLC0415

    to = int(_attrs(node).get("to", TensorProto.UNDEFINED))
    names = {TensorProto.FLOAT16: "float16", TensorProto.FLOAT: "float32", TensorProto.DOUBLE: "float64",
             TensorProto.INT32: "int32", TensorProto.INT64: "int64"}
    if to not in names:
        kind = TensorProto.DataType.Name(to) if to in TensorProto.DataType.values() else to
        raise ValueError(f"{_node_label(node)} casts to {kind}; the importer folds casts to {sorted(names.values())}")
    target = np.dtype(helper.tensor_dtype_to_np_dtype(to))
    if value.dtype.kind not in "biuf":
        raise ValueError(f"{_node_label(node)} casts a {value.dtype} tensor; expected numbers")
    if target.kind == "i":
        if value.dtype.kind == "f":
            raise ValueError(f"{_node_label(node)} casts {value.dtype} to {target}: float-to-integer casts are not "
                             f"folded")
        bounds = np.iinfo(target)
        if value.size and (value.min() < bounds.min or value.max() > bounds.max):
            raise ValueError(f"{_node_label(node)} casts values outside the {target} range "
                             f"({value.min()}..{value.max()})")
    return value.astype(target)


class _Graph:
    """Where each tensor of a graph comes from: initializers, graph inputs and node outputs, indexed once.

    Parameters
    ----------
    model : onnx.ModelProto
    folder : Path or None
        Where external data may be read from (the model file's folder), or None to refuse external data.
    """

    def __init__(self, model, folder):
        graph = model.graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.inputs = {i.name for i in graph.input}
        self.producers = {}
        for node in graph.node:
            for name in node.output:
                if name:
                    self.producers.setdefault(name, []).append(node)
        # ONNX IR 4 and later: an initializer also listed as a graph input is only a default the caller may
        # override (onnxruntime does). IR 1 to 3 listed every initializer as an input: a constant. An unset
        # version gets the cautious reading.
        self.overridable = not 1 <= model.ir_version <= 3
        self.folder = folder

    def array(self, tensor) -> np.ndarray:
        """``tensor`` as a numpy array; external data only from inside the model folder."""
        from onnx import external_data_helper, numpy_helper  # noqa: PLC0415

        if external_data_helper.uses_external_data(tensor):
            tensor = external_tensor(tensor, self.folder)
        try:
            return numpy_helper.to_array(tensor)
        except Exception as err:  # noqa: BLE001  (malformed tensors raise ValueError, TypeError, KeyError...)
            raise ValueError(f"tensor {tensor.name!r} cannot be read: {type(err).__name__}: {err}") from err

    def _constant(self, node) -> np.ndarray:
        """The value of a ``Constant`` node (``value`` or one of the numeric ``value_*`` attributes)."""
        from onnx import helper  # noqa: PLC0415

        attrs = {a.name: a for a in node.attribute}
        numeric = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
                   "value_ints": np.int64}
        if len(attrs) != 1 or not attrs.keys() <= {"value", *numeric}:
            raise ValueError(f"{_node_label(node)} has the attributes {sorted(attrs)}; the importer folds one "
                             f"'value' tensor or one of {sorted(numeric)}")
        ((key, attr),) = attrs.items()
        if key == "value":
            return self.array(attr.t)
        return np.asarray(helper.get_attribute_value(attr), numeric[key])

    def resolve(self, name: str) -> _Source:
        """Follow ``name`` through ``Identity`` and ``Cast`` nodes to a constant (an initializer or a ``Constant``
        node, with the casts applied) or to what supplies it at run time."""
        casts, seen = [], set()
        while True:
            if name in seen:
                raise ValueError(f"tensor {name!r} depends on itself (a cycle of Identity/Cast nodes)")
            seen.add(name)
            producers = self.producers.get(name, [])
            if len(producers) + (name in self.initializers) > 1:
                raise ValueError(f"tensor {name!r} is defined more than once (by initializers or nodes "
                                 f"{[n.name for n in producers]})")
            node = producers[0] if producers else None
            if name in self.initializers:
                value = self.array(self.initializers[name])
                for cast in reversed(casts):
                    value = _cast(value, cast)
                if name in self.inputs and self.overridable:
                    return _Source(value, f"the graph input {name!r} (an initializer also listed as a graph input, "
                                          f"which a caller may override from ONNX IR version 4 on)")
                return _Source(value, None)
            if name in self.inputs:
                return _Source(None, f"the graph input {name!r}")
            if node is None:
                return _Source(None, f"{name!r}, which no initializer, graph input or node defines")
            if node.domain in _ONNX_DOMAINS and node.op_type in ("Identity", "Cast") and node.input:
                casts += [node] if node.op_type == "Cast" else []
                name = node.input[0]
                continue
            if node.domain in _ONNX_DOMAINS and node.op_type == "Constant":
                value = self._constant(node)
                for cast in reversed(casts):
                    value = _cast(value, cast)
                return _Source(value, None)
            return _Source(None, f"the output {name!r} of {_node_label(node)}", node)

    def is_zero_fill(self, source: _Source) -> bool:
        """Whether ``source`` is computed as zeros of whatever shape it is given: an ``Expand`` of a zero constant
        (how torch.onnx.export writes a default ``h0``) or a ``ConstantOfShape`` of zero."""
        node = source.node
        if node is None or node.domain not in _ONNX_DOMAINS:
            return False
        if node.op_type == "Expand" and node.input:
            data = self.resolve(node.input[0])
            return data.runtime is None and not np.any(data.value)
        if node.op_type == "ConstantOfShape":
            fill = [a.t for a in node.attribute if a.name == "value"]
            return not fill or not np.any(self.array(fill[0]))
        return False


def _sources(graph: _Graph, gru, where: str) -> dict:
    """``{slot: _Source or None}`` for the node's inputs W, R, B, sequence_lens and initial_h (None: absent)."""
    names = list(gru.input) + [""] * (len(_SLOTS) - len(gru.input))
    out = {}
    for slot, name in zip(_SLOTS[1:], names[1:len(_SLOTS)]):
        try:
            out[slot] = graph.resolve(name) if name else None
        except ValueError as err:
            raise ValueError(f"{where}: input {slot!r} ({name!r}): {err}") from err
    return out


def _constant_input(sources: dict, slot: str, where: str, required: bool = False):
    """The constant value of a weight input (W, R, B), or ValueError naming the slot and what supplies it."""
    source = sources[slot]
    if source is None:
        if required:
            raise ValueError(f"{where}: input {slot!r} is missing")
        return None
    if source.runtime is not None:
        raise ValueError(f"{where}: input {slot!r} (input {_SLOTS.index(slot)} of the node) comes from "
                         f"{source.runtime}, not a constant; the layer's weights are built at import, from an "
                         f"initializer or a Constant, Identity or Cast of one")
    return source.value


def _check_lengths(lens, where: str, *, steps: int | None = None, batch: int | None = None) -> np.ndarray:
    """``sequence_lens`` as a (batch,) integer array, or ValueError naming ``where``.

    Lengths are integers in ``0..steps``, what onnxruntime accepts (a length 0 gives a zero ``Y_h``: see
    :func:`run_onnx`); ``steps`` and ``batch`` are checked when known (at run time).
    """
    arr = np.asarray(lens)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{where} must hold integers (ONNX: int32); received dtype {arr.dtype}")
    if arr.ndim != 1 or (batch is not None and arr.shape[0] != batch):
        raise ValueError(f"{where} must have shape (batch,) = ({batch if batch is not None else 'batch'},); "
                         f"received {arr.shape}")
    if arr.size and (arr.min() < 0 or (steps is not None and arr.max() > steps)):
        raise ValueError(f"{where} values must be in 0..{steps if steps is not None else 'sequence length'}; "
                         f"received {arr.tolist()}")
    return arr


def _check_initial_h(h, where: str, *, dirs: int, units: int, time_major: bool, batch: int | None = None,
                     dtype=None) -> np.ndarray:
    """``initial_h`` as (dirs, batch, units), whatever the layout, or ValueError naming ``where``.

    Layout 0 (``time_major``) orders it (num_directions, batch, hidden_size), layout 1 (batch, num_directions,
    hidden_size). ``batch`` is checked when known (at run time), ``dtype`` when given (at import: ONNX types W and
    initial_h alike).
    """
    arr = np.asarray(h)
    order = "(num_directions, batch, hidden_size)" if time_major else "(batch, num_directions, hidden_size)"
    b = batch if batch is not None else "batch"
    expected = (dirs, b, units) if time_major else (b, dirs, units)
    if dtype is not None and arr.dtype != dtype:
        raise ValueError(f"{where} has dtype {arr.dtype}; expected {np.dtype(dtype).name}, the dtype of 'W'")
    direction_major = arr.transpose(1, 0, 2) if arr.ndim == 3 and not time_major else arr
    if arr.ndim != 3 or direction_major.shape[0] != dirs or direction_major.shape[2] != units \
            or (batch is not None and direction_major.shape[1] != batch):
        raise ValueError(f"{where} must have shape {order} = ({', '.join(map(str, expected))}) for layout "
                         f"{0 if time_major else 1} and {dirs} direction(s); received {arr.shape}")
    return direction_major


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
        if key not in ONNX_PARAMS:
            raise ValueError(f"attribute 'activations': {name!r} is not an ONNX RNN activation "
                             f"({sorted(ONNX_PARAMS)})")
        takes_a, takes_b, default_a, default_b = ONNX_PARAMS[key]
        alpha = (alphas.pop(0) if alphas else default_a) if takes_a else None
        beta = (betas.pop(0) if betas else default_b) if takes_b else None
        keras = keras_activation(key, alpha, beta)
        if keras is None:
            raise ValueError(f"attributes 'activations'/'activation_alpha'/'activation_beta': {name}"
                             f"(alpha={alpha}, beta={beta}) cannot be represented by a Keras activation "
                             f"(supported with parameters: HardSigmoid(0.2, 0.5), Affine(1, 0), Elu(1), "
                             f"LeakyRelu(0.2), ScaledTanh(1, 1), ThresholdedRelu(0))")
        out.append(keras)
    return [(out[2 * d], out[2 * d + 1]) for d in range(directions)]


def _check_weights(W, R, B, attrs, dirs: int, direction: str, where: str) -> int:
    """The hidden size, after checking the shapes and dtypes of W, R and B (ValueError naming the input)."""
    if W.ndim != 3 or W.shape[0] != dirs:
        raise ValueError(f"{where}: input 'W' has shape {W.shape}; expected ({dirs}, 3*hidden_size, input_size) "
                         f"for direction={direction!r}")
    hidden = int(attrs.get("hidden_size", W.shape[1] // 3))
    if hidden <= 0:
        raise ValueError(f"{where}: attribute 'hidden_size'={hidden} (W {W.shape}); expected a positive hidden size")
    if W.shape[1] != 3 * hidden or R.shape != (dirs, 3 * hidden, hidden):
        raise ValueError(f"{where}: W {W.shape} / R {R.shape} do not match hidden_size={hidden}")
    if B is not None and B.shape != (dirs, 6 * hidden):
        raise ValueError(f"{where}: input 'B' has shape {B.shape}; expected ({dirs}, {6 * hidden})")
    dtype = np.dtype(W.dtype).name
    if dtype not in ("float32", "float64"):
        raise ValueError(f"{where}: weights of dtype {dtype} are not supported (float32 or float64)")
    for label, value in (("R", R), ("B", B)):
        if value is not None and value.dtype != W.dtype:
            raise ValueError(f"{where}: input {label!r} has dtype {value.dtype}; expected {dtype}, the dtype of 'W' "
                             f"(an ONNX GRU takes one type)")
    return hidden


def _state_inputs(graph: _Graph, sources: dict, where: str, **shape) -> tuple:
    """``(constants, required)`` for sequence_lens and initial_h: the folded values (or defaults) that
    :func:`run_onnx` uses, and ``{slot: source}`` for those known only at run time, which it requires."""
    constants, required = {}, {}
    for slot in ("sequence_lens", "initial_h"):
        source = sources[slot]
        constants[slot] = None
        if source is None or (slot == "initial_h" and graph.is_zero_fill(source)):
            continue  # absent, or zeros however computed: the default state
        if source.value is None:
            required[slot] = source.runtime
        else:  # kept in the node's layout, as run_onnx takes it
            if slot == "sequence_lens":
                _check_lengths(source.value, f"{where}: input 'sequence_lens'")
            else:
                _check_initial_h(source.value, f"{where}: input 'initial_h'", **shape)
            constants[slot] = source.value
    return constants, required


def from_onnx(model_or_path, node=None, target=None):
    """Build a :class:`tvm_gru.GRU` (or, for a bidirectional node, a :class:`tvm_gru.Bidirectional`) from an
    ONNX ``GRU`` node.

    The node's inputs are resolved through ``Identity``, ``Cast`` and ``Constant`` nodes to initializers.
    ``W``, ``R`` and ``B`` must resolve to constants: a graph input or any other op is refused, naming the input
    and what supplies it. ``sequence_lens`` and ``initial_h`` may also come at run time (:func:`run_onnx` then
    requires them). An initializer that is also listed as a graph input is, from ONNX IR version 4 on, only a
    default the caller may override (onnxruntime lets a feed replace it): for ``W``, ``R`` and ``B`` it is
    refused, for ``sequence_lens`` and ``initial_h`` it is the default :func:`run_onnx` uses. Before IR version 4
    every initializer had to be listed as an input, and it is a constant. External data is read only for a model
    given as a path, from regular files inside its folder reached through no link.

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
        ``initial_h`` and ``sequence_lens`` are kept in ``layer.onnx_inputs``, those known only at run time in
        ``layer.onnx_required_inputs`` (input -> what supplies it); both are used by :func:`run_onnx`.

    Raises
    ------
    ValueError
        Naming the attribute or input that tvm_gru cannot represent (``clip``, activations with other
        parameters, non-constant weights, an opset outside GRU-7 to GRU-22, a ``sequence_lens`` or ``initial_h``
        of the wrong type or shape, external data outside the model folder).
    """
    from ..layers.bidirectional import Bidirectional  # noqa: PLC0415

    model, folder = load_model(model_or_path)
    gru = _pick_node(model.graph, node)
    attrs = _attrs(gru)
    where = f"GRU node {gru.name or '(unnamed)'}"
    opset = _gru_opset(model, where)
    if "clip" in attrs:
        raise ValueError(f"{where}: attribute 'clip'={attrs['clip']} is not supported (Keras GRU has no cell clip)")
    direction = _decode(attrs.get("direction", "forward"))
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ValueError(f"{where}: attribute 'direction'={direction!r}; expected 'forward', 'reverse' or "
                         f"'bidirectional'")
    dirs = 2 if direction == "bidirectional" else 1
    if "layout" in attrs and opset < 14:
        raise ValueError(f"{where}: attribute 'layout' exists from GRU-14 (opset 14) on; the model's opset is {opset}")
    layout = int(attrs.get("layout", 0))
    if layout not in (0, 1):
        raise ValueError(f"{where}: attribute 'layout'={layout}; expected 0 or 1")
    pairs = _activation_pairs(attrs, dirs)

    graph = _Graph(model, folder)
    sources = _sources(graph, gru, where)
    W, R, B = (_constant_input(sources, slot, where, required=slot != "B") for slot in ("W", "R", "B"))
    hidden = _check_weights(W, R, B, attrs, dirs, direction, where)
    onnx_inputs, required = _state_inputs(graph, sources, where, dirs=dirs, units=hidden, time_major=layout == 0,
                                          dtype=W.dtype)
    dtype = np.dtype(W.dtype).name
    reset_after = bool(int(attrs.get("linear_before_reset", 0)))
    layers = [_direction_layer(pairs[d], W[d], R[d], None if B is None else B[d], reset_after,
                               go_backwards=direction == "reverse" or d == 1, time_major=layout == 0, dtype=dtype,
                               target=target, name=gru.name or None)
              for d in range(dirs)]
    if dirs == 1:
        result = layers[0]
    else:
        result = Bidirectional(layers[0], merge_mode=None, backward_layer=layers[1], name=gru.name or None)
        result.set_weights(layers[0].get_weights() + layers[1].get_weights())  # Keras rebuilds the forward copy
    result.onnx_inputs, result.onnx_required_inputs = onnx_inputs, required
    return result


def _direction_layer(activation_pair, W, R, B, reset_after, **kwargs):
    """One direction's GRU layer from its slices W (3H, I), R (3H, H) and B (6H,) or None."""
    from ..layers.gru import GRU  # noqa: PLC0415

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
    (integers in 0..T) and ``initial_h`` ((D, B, H) for layout 0, (B, D, H) for layout 1; D = 2 for a
    bidirectional layer, else 1) default to the node's constant inputs, if it had any; an input the node reads
    from a graph input or another op must be passed. Y is (T, D, B, H) (layout 1: (B, T, D, H)), Y_h (D, B, H)
    (layout 1: (B, D, H)). Steps past a sequence's length output zeros; a sequence of length 0 gets a zero
    ``Y_h`` (onnxruntime's choice; the layer itself keeps the initial state, as Keras does).

    Raises
    ------
    ValueError
        Naming ``X``, ``sequence_lens`` or ``initial_h`` when its shape or values do not fit, or when the node
        needs a run-time input that was not passed.
    """
    from ..layers.bidirectional import Bidirectional  # noqa: PLC0415

    directions = [layer.forward_layer, layer.backward_layer] if isinstance(layer, Bidirectional) else [layer]
    given = {"sequence_lens": sequence_lens, "initial_h": initial_h}
    for slot, source in getattr(layer, "onnx_required_inputs", {}).items():
        if given[slot] is None:
            raise ValueError(f"`{slot}` must be passed: the imported GRU node reads it from {source}, which is "
                             f"known only at run time")
    known = getattr(layer, "onnx_inputs", {})
    lens = sequence_lens if sequence_lens is not None else known.get("sequence_lens")
    h = initial_h if initial_h is not None else known.get("initial_h")
    X = np.asarray(X)
    if X.ndim != 3:
        order = "(sequence, batch, input_size) for layout 0" if layer.time_major else \
            "(batch, sequence, input_size) for layout 1"
        raise ValueError(f"`X` must have shape {order}; received {X.shape}")
    steps, batch = X.shape[:2] if layer.time_major else X.shape[1::-1]
    mask = None
    if lens is not None:
        lens = _check_lengths(lens, "`sequence_lens`", steps=steps, batch=batch)
        mask = lengths_to_mask(lens, steps, layer.time_major)
    if h is not None:
        h = _check_initial_h(h, "`initial_h`", dirs=len(directions), units=directions[0].cell.config.units,
                             time_major=layer.time_major, batch=batch)
    if isinstance(layer, Bidirectional):  # [y, y_rev (input time order), h_forward, h_backward]
        y, y_rev, *states = layer(X, mask=mask, initial_state=None if h is None else list(h))
        outs = [y, y_rev]
    else:
        out, state = layer(X, mask=mask, initial_state=None if h is None else h[0])
        if layer.go_backwards:  # Keras returns processing order, ONNX input order
            out = np.flip(out, axis=0 if layer.time_major else 1)
        outs, states = [out], [state]
    if lens is not None:  # onnxruntime gives an empty sequence a zero Y_h; Keras keeps its initial state
        empty = (lens == 0)[:, None]
        states = [np.where(empty, np.zeros((), s.dtype), s) for s in states]
    Y = np.stack(outs, axis=1 if layer.time_major else 2)
    Y_h = np.stack(states, axis=0 if layer.time_major else 1)
    return np.ascontiguousarray(Y), np.ascontiguousarray(Y_h)
