"""The artifact format: its constants, the metadata schema and what the config implies for the weights.

Shared by the loader (:mod:`.artifact`), the deployed objects and the exporter; numpy + stdlib only.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np

from .bidirectional_calls import MERGE_MODES

__all__ = ["ArtifactError", "FORMAT", "FORMAT_VERSION", "KIND_VERSIONS", "METADATA", "artifact_kind", "weight_dtype",
           "check_declared", "file_sha256", "parse_metadata", "check_metadata", "cell_weight_specs", "weights_limit",
           "config_summary", "NPY_HEADER_LIMIT", "MAX_FILES", "ANY_BATCH", "LAYER_FLAGS", "DIRECTIONS",
           "direction_meta"]


FORMAT = "tvm_gru.artifact"
FORMAT_VERSION = 4  # the newest format this loader reads
# The format version each kind is written with (the oldest loader format that reads it).
KIND_VERSIONS = {"cell": 1, "layer": 2, "model": 3, "bidirectional": 4}
METADATA = "tvm_gru_artifact.json"

_JSON_DEPTH = 64
ANY_BATCH = "any"  # kernel.functions key of a model compiled with a symbolic batch
MAX_FILES = 10_000  # files an artifact may list (and its folder hold)
NPY_HEADER_LIMIT = 10_000  # numpy's own default cap on a .npy header


class ArtifactError(ValueError):
    """The folder is not a loadable artifact for this machine (damaged, foreign, too new, wrong target)."""


def file_sha256(path: Path) -> str:
    """SHA-256 of a file the exporter just wrote (the loader hashes what it read: :func:`_read_listed`)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------- metadata schema
class _Missing:
    def __repr__(self):
        return "nothing (missing)"


_MISSING = _Missing()


def _received(value) -> str:
    if value is _MISSING:
        return "nothing (missing)"
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def _fail(key: str, expected: str, value):
    raise ArtifactError(f"{METADATA}: entry {key!r} must be {expected}; received {_received(value)}")


def _int(lo: int, hi: int):
    def check(value, key):
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            _fail(key, f"an int in [{lo}, {hi}]", value)
    return check


def _rate(value, key):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        _fail(key, "a number in [0, 1]", value)


def _bool(value, key):
    if not isinstance(value, bool):
        _fail(key, "a bool", value)


def _anything(value, key):
    pass


def _str(*choices, pattern=None, limit=256):
    def check(value, key):
        if not isinstance(value, str) or not 0 < len(value) <= limit:
            _fail(key, f"a non-empty str of at most {limit} characters", value)
        if choices and value not in choices:
            _fail(key, f"one of {list(choices)}", value)
        if pattern is not None and not re.fullmatch(pattern, value):
            _fail(key, f"a str matching {pattern}", value)
    return check


def _optional(spec):
    def check(value, key):
        if value is not None:
            spec(value, key)
    return check


def _relpath(value, key):
    """A plain relative path inside the folder: names joined by "/", nothing that climbs out or aliases."""
    if (not isinstance(value, str) or not 0 < len(value) <= 1024 or value.startswith("/")
            or any(c in value for c in "\\\x00") or any(p in ("", ".", "..") for p in value.split("/"))):
        _fail(key, "a relative path inside the artifact folder (names joined by '/'; no '..', '.', empty part, "
                   "backslash or leading '/')", value)


_NAME = r"[A-Za-z_][A-Za-z0-9_.]{0,127}"
_SHA256 = r"[0-9a-f]{64}"
_BATCH = r"[1-9][0-9]{0,6}"


def _list(item, limit: int, min_len: int = 0, unique: bool = False):
    def check(value, key):
        if not isinstance(value, list) or not min_len <= len(value) <= limit:
            _fail(key, f"a list of {min_len} to {limit} entries", value)
        for i, v in enumerate(value):
            item(v, f"{key}[{i}]")
        if unique and len(set(value)) != len(value):
            _fail(key, "a list without repeated entries", value)
    return check


def _mapping(key_spec, value_spec, limit: int, min_len: int = 0):
    def check(value, key):
        if not isinstance(value, dict) or not min_len <= len(value) <= limit:
            _fail(key, f"a dict of {min_len} to {limit} entries", value)
        for k, v in value.items():
            key_spec(k, f"{key}[{k!r}] (its key)")
            value_spec(v, f"{key}.{k}")
    return check


def _record(**fields):
    """A dict with these fields (``name=(spec, required)``); other fields are allowed and not read."""
    def check(value, key):
        if not isinstance(value, dict):
            _fail(key, "a dict", value)
        for name, (spec, required) in fields.items():
            got = value.get(name, _MISSING)
            if got is not _MISSING or required:  # a missing entry fails its own check: "received nothing"
                spec(got, f"{key}.{name}" if key else name)
    return check


_POSITIVE = _int(1, 1 << 20)
_DIM = _int(0, 1 << 31)
_SHAPE = _list(lambda v, k: v if isinstance(v, str) else _DIM(v, k), 8)  # ints, or names such as "batch"
_CONFIG = _record(units=(_POSITIVE, True), dtype=(_str("float32", "float64"), True), use_bias=(_bool, True),
                  reset_after=(_bool, True), implementation=(_int(1, 2), True), activation=(_str(), True),
                  recurrent_activation=(_str(), True), dropout=(_rate, False), recurrent_dropout=(_rate, False))
_TARGET = _record(family=(_str("x86", "aarch64", "cuda"), True), host_arch=(_str(), True),
                  cpu_features=(_list(_str(limit=64), 64), False), arch=(_optional(_str(pattern=r"sm_\d{2,3}[a-z]?")),
                                                                          False), tvm=(_anything, False))
_RUNTIME_LIB = _record(path=(_relpath, True), provides=(_optional(_str()), False))
_LAYER_FUNCTIONS = _record(full=(_str(pattern=_NAME), True), masked=(_str(pattern=_NAME), False),
                           short=(_str(pattern=_NAME), False), short_masked=(_str(pattern=_NAME), False),
                           frame=(_str(pattern=_NAME), False), short_steps=(_int(0, 1 << 30), False))
# The Keras GRU layer options an artifact fixes at export (the one list: exporter, loader, CLI).
LAYER_FLAGS = ("return_sequences", "return_state", "go_backwards", "stateful", "time_major", "zero_output_for_mask")


def _merge_mode(value, key):
    if value is not None and value not in MERGE_MODES:
        _fail(key, f"one of {list(MERGE_MODES)}", value)


# A bidirectional artifact: one library and one weights file; per direction, what a layer artifact holds of its own.
DIRECTIONS = ("forward", "backward")
_DIRECTION_KERNEL = _record(functions=(_mapping(_str(pattern=_BATCH), _LAYER_FUNCTIONS, 64, 1), True),
                            weights=(_list(_str(pattern=_NAME), 8, 1, unique=True), True))
_DIRECTION = _record(config=(_CONFIG, True), input_dim=(_POSITIVE, True), lanes=(_int(1, 64), True),
                     weight_dtype=(_str(), False),  # checked against the config by weight_dtype()
                     shapes=(_mapping(_str(), _SHAPE, 64), True), kernel=(_DIRECTION_KERNEL, True),
                     layer=(_record(name=(_str(), False), **{f: (_bool, False) for f in (*LAYER_FLAGS, "masking")}),
                            True),
                     keras_config=(_mapping(_str(), _anything, 256), True))


def _bidirectional_schema():
    return _record(target=(_TARGET, True), kernel=(_record(library=(_relpath, True)), True), weights=(_relpath, True),
                   files=(_mapping(_relpath, _str(pattern=_SHA256), MAX_FILES, 1), True),
                   runtime_libs=(_list(_RUNTIME_LIB, 16), False), batch_sizes=(_list(_POSITIVE, 64), False),
                   bidirectional=(_record(name=(_str(), False), merge_mode=(_merge_mode, True)), True),
                   keras_config=(_mapping(_str(), _anything, 256), True),
                   **{side: (_DIRECTION, True) for side in DIRECTIONS})


def _schema(kind: str):
    functions = _LAYER_FUNCTIONS if kind == "layer" else _str(pattern=_NAME)
    kernel = _record(library=(_relpath, True), functions=(_mapping(_str(pattern=_BATCH), functions, 64, 1), True),
                     weights=(_list(_str(pattern=_NAME), 8, 1, unique=True), True))
    fields = dict(config=(_CONFIG, True), target=(_TARGET, True), kernel=(kernel, True), weights=(_relpath, True),
                  files=(_mapping(_relpath, _str(pattern=_SHA256), MAX_FILES, 1), True),
                  input_dim=(_POSITIVE, True), lanes=(_int(1, 64), True), shapes=(_mapping(_str(), _SHAPE, 64), True),
                  runtime_libs=(_list(_RUNTIME_LIB, 16), False), weight_dtype=(_str(), False),  # see weight_dtype()
                  batch_sizes=(_list(_POSITIVE, 64), False))
    if kind == "layer":
        flags = {f: (_bool, False) for f in (*LAYER_FLAGS, "masking")}
        fields["layer"] = (_record(name=(_str(), False), **flags), True)
        fields["keras_config"] = (_mapping(_str(), _anything, 256), True)
    return _record(**fields)


def _depth(value) -> int:
    """Nesting depth of parsed JSON (iterative: a deep document must not exhaust the stack here either)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth > _JSON_DEPTH:
                break
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def parse_metadata(data: bytes, where) -> dict:
    try:
        meta = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as err:  # RecursionError: nested past the interpreter's limit
        raise ArtifactError(f"{where} is not readable JSON ({err})") from err
    if _depth(meta) > _JSON_DEPTH:
        raise ArtifactError(f"{where} nests JSON deeper than {_JSON_DEPTH} levels; artifact metadata nests a few")
    return meta


def check_metadata(meta, where) -> dict:
    """The one schema of the metadata, checked before anything else reads it."""
    found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
    if found != FORMAT:
        raise ArtifactError(f"{where} is not tvm_gru artifact metadata (format {found!r})")
    version = meta.get("format_version", _MISSING)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ArtifactError(f"{where}: invalid format_version: entry 'format_version' must be an int >= 1; "
                            f"received {_received(version)}")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"artifact format version {version} is newer than this runtime reads "
                            f"({FORMAT_VERSION}); upgrade tvm_gru on this machine")
    kind = meta.get("kind", "cell")
    if not isinstance(kind, str) or kind not in KIND_VERSIONS:
        raise ArtifactError(f"{where}: unknown artifact kind {kind!r}; expected one of {sorted(KIND_VERSIONS)}")
    if version < KIND_VERSIONS[kind]:
        raise ArtifactError(f"{where}: a {kind} artifact needs format version >= {KIND_VERSIONS[kind]}; "
                            f"the metadata says {version}")
    schemas = {"model": _model_schema, "bidirectional": _bidirectional_schema}
    schemas.get(kind, lambda: _schema(kind))()(meta, "")
    _check_listed(meta, where)
    if kind == "model":
        return _check_model(meta, where)
    if kind == "bidirectional":
        return _check_bidirectional(meta)
    _check_weight_shapes(meta, "")
    return meta


def _check_weight_shapes(meta: dict, prefix: str) -> None:
    """Each kernel weight has a shape of ints in ``shapes`` (``prefix`` names a direction's entry in messages)."""
    for name in meta["kernel"]["weights"]:
        if not isinstance(meta["shapes"].get(name), list) or not all(isinstance(d, int) for d in meta["shapes"][name]):
            _fail(f"{prefix}shapes.{name}", "the list of ints of the weight's shape",
                  meta["shapes"].get(name, _MISSING))
    weight_dtype(meta)


def direction_meta(meta: dict, side: str) -> dict:
    """The layer-artifact metadata of one direction (``side`` in :data:`DIRECTIONS`) of a bidirectional artifact:
    its own entries, with the artifact's target, library and files."""
    part = meta[side]
    shared = {k: meta[k] for k in ("format", "format_version", "target", "files", "runtime_libs", "batch_sizes",
                                   "weights", "created", "versions") if k in meta}
    return {**shared, **part, "kind": "layer", "kernel": {"library": meta["kernel"]["library"], **part["kernel"]}}


def _check_bidirectional(meta: dict) -> dict:
    """What a bidirectional artifact's metadata must hold beyond its schema: each direction's weight shapes, the
    same batch sizes and input width for both, and the directions' flags as ``tvm_gru.Bidirectional`` requires
    them (opposite ``go_backwards``; the same ``stateful``, ``return_sequences``, ``return_state``,
    ``time_major``). Raises :class:`ArtifactError` naming the key."""
    fw, bw = meta["forward"], meta["backward"]
    for side in DIRECTIONS:
        _check_weight_shapes(direction_meta(meta, side), f"{side}.")
    batches = sorted(fw["kernel"]["functions"], key=int)
    if sorted(bw["kernel"]["functions"], key=int) != batches:
        _fail("backward.kernel.functions", f"functions for the batch sizes of forward.kernel.functions {batches}",
              sorted(bw["kernel"]["functions"], key=int))
    if "batch_sizes" in meta and [str(b) for b in sorted(meta["batch_sizes"])] != batches:
        _fail("batch_sizes", f"the batch sizes of forward.kernel.functions {batches}", meta["batch_sizes"])
    if bw["input_dim"] != fw["input_dim"]:
        _fail("backward.input_dim", f"forward.input_dim ({fw['input_dim']}): both directions read the same inputs",
              bw["input_dim"])
    fw_flags, bw_flags = fw["layer"], bw["layer"]
    if bool(bw_flags.get("go_backwards")) == bool(fw_flags.get("go_backwards")):
        _fail("backward.layer.go_backwards", f"the opposite of forward.layer.go_backwards "
              f"({bool(fw_flags.get('go_backwards'))})", bw_flags.get("go_backwards", _MISSING))
    for flag in ("stateful", "return_sequences", "return_state", "time_major"):
        if bool(bw_flags.get(flag)) != bool(fw_flags.get(flag)):
            _fail(f"backward.layer.{flag}", f"forward.layer.{flag} ({bool(fw_flags.get(flag))})",
                  bw_flags.get(flag, _MISSING))
    return meta


def _check_listed(meta: dict, where) -> None:
    """Every path the loader opens (the kernel library, the weights of a cell or layer, the runtime libraries)
    is listed in ``files`` with a SHA-256, and the metadata itself is not."""
    named = [("kernel.library", meta["kernel"]["library"])]
    if artifact_kind(meta) != "model":  # a model's constants are in its library
        named.append(("weights", meta["weights"]))
    named += [(f"runtime_libs[{i}].path", e["path"]) for i, e in enumerate(meta.get("runtime_libs", ()))]
    for key, rel in named:
        if rel not in meta["files"]:
            raise ArtifactError(f"{where}: entry {key!r} names {rel!r}, which 'files' does not list with a SHA-256")
    if METADATA in meta["files"]:
        raise ArtifactError(f"{where}: 'files' lists the metadata itself")


def artifact_kind(meta: dict) -> str:
    """"cell", "layer", "model" or "bidirectional" (metadata without a ``kind`` field, written before layers
    existed, is a cell)."""
    return meta.get("kind", "cell")


# ---------------------------------------------------------------------------------------- weights
# Storage dtypes of the weight matrices a cell or layer artifact (or a bidirectional artifact's direction) may hold,
# per cell dtype (see tvm_gru.ops.config).
_WEIGHT_DTYPES = {"float32": ("float32", "float16", "int8"), "float64": ("float64",)}


def weight_dtype(meta: dict) -> str:
    """The storage dtype of the packed kernel/recurrent kernel (metadata without the entry: the cell dtype)."""
    cfg_dtype = str(meta["config"].get("dtype"))
    name = meta.get("weight_dtype", cfg_dtype)
    if name not in _WEIGHT_DTYPES.get(cfg_dtype, (cfg_dtype,)):
        raise ArtifactError(f"{METADATA}: weight_dtype {name!r} is not a storage dtype of a {cfg_dtype} cell; "
                            f"expected one of {_WEIGHT_DTYPES.get(cfg_dtype, (cfg_dtype,))}")
    return name


def cell_weight_specs(meta: dict) -> dict:
    """{name: (shape, dtype)} of a cell's packed weights, in kernel order, as the config implies them: the
    weight matrices in the metadata's ``weight_dtype``, the bias (and, for int8 matrices, their column scales
    ``weight_scale``) in the cell dtype (``tvm_gru.runtime.packing``)."""
    cfg = meta["config"]
    units, input_dim, lanes = cfg["units"], meta["input_dim"], meta["lanes"]
    nb = -(-units // lanes)
    fused = cfg["implementation"] == 2 or lanes > 1

    def matrix(depth, gates):
        return (nb, depth, gates, lanes) if fused else (gates, nb, depth, lanes)

    matrices, cell_dtype = np.dtype(weight_dtype(meta)), np.dtype(cfg["dtype"])
    expected = {"kernel_packed": (matrix(input_dim, 3), matrices)}
    if cfg["reset_after"]:
        expected["recurrent_packed"] = (matrix(units, 3), matrices)
    else:
        expected["recurrent_packed"] = (matrix(units, 2), matrices)
        expected["candidate_packed"] = (matrix(units, 1), matrices)
    if cfg["use_bias"]:
        expected["bias_packed"] = ((2, 3, nb * lanes), cell_dtype)
    if matrices == np.int8:
        expected["weight_scale"] = ((2, 3, nb * lanes), cell_dtype)
    check_declared(meta, expected)
    return expected


def check_declared(meta: dict, expected: dict) -> None:
    """The metadata's kernel weight list and shapes must be what the config implies (``expected``)."""
    cfg = meta["config"]
    if list(meta["kernel"]["weights"]) != list(expected):
        raise ArtifactError(f"the kernel weights are {list(meta['kernel']['weights'])}; the config "
                            f"(reset_after={cfg['reset_after']}, use_bias={cfg['use_bias']}, weight_dtype="
                            f"{weight_dtype(meta)}) implies {list(expected)}")
    for name, (shape, dtype) in expected.items():
        if tuple(meta["shapes"][name]) != tuple(shape):
            raise ArtifactError(f"weight {name} has shape {tuple(meta['shapes'][name])} in the metadata; the config "
                                f"(units={cfg['units']}, input_dim={meta['input_dim']}, lanes={meta['lanes']}, "
                                f"dtype={cfg['dtype']}) implies {tuple(shape)} ({dtype.name})")


def weights_limit(expected: dict) -> int:
    """The most bytes an uncompressed .npz of these arrays takes (data, .npy headers, zip records)."""
    return sum(math.prod(shape) * dtype.itemsize + NPY_HEADER_LIMIT + 1024 for shape, dtype in expected.values())


def config_summary(meta: dict) -> str:
    if artifact_kind(meta) == "bidirectional":
        return "; ".join(f"{side}: {config_summary(direction_meta(meta, side))}" for side in DIRECTIONS)
    cfg = meta["config"]
    return (f"units={cfg['units']}, input_dim={meta['input_dim']}, lanes={meta['lanes']}, dtype={cfg['dtype']}, "
            f"weight_dtype={weight_dtype(meta)}")


_TENSOR_DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
           "uint64", "bool")


# ---------------------------------------------------------------------------------------- model metadata
def _dim(value, key):
    if isinstance(value, str):
        if not re.fullmatch(_NAME, value):
            _fail(key, f"a dimension name matching {_NAME}", value)
    elif isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1 << 40:
        _fail(key, "an int in [0, 2**40] or a dimension name", value)


_TENSOR = _record(name=(_str(limit=1024), True), shape=(_list(_dim, 64), True), dtype=(_str(*_TENSOR_DTYPES), True))
# An input read as indices (a Keras Embedding's ids): [low, high), checked on every call (the compiled table
# lookup clamps instead of failing).
_INPUT = _record(name=(_str(limit=1024), True), shape=(_list(_dim, 64), True), dtype=(_str(*_TENSOR_DTYPES), True),
                 index_range=(_optional(_list(_int(-(1 << 62), 1 << 62), 2, 2)), False))


def _model_schema():
    kernel = _record(library=(_relpath, True),
                     functions=(_mapping(_str(pattern=rf"[1-9][0-9]{{0,6}}|{ANY_BATCH}"), _str(pattern=_NAME), 64, 1),
                                True))
    return _record(target=(_TARGET, True), kernel=(kernel, True),
                   inputs=(_list(_INPUT, 1024), True), outputs=(_list(_TENSOR, 1024, 1), True),
                   batch_dim=(_optional(_str(pattern=_NAME)), False),
                   batch_sizes=(_optional(_list(_int(1, 1 << 20), 64, 1, unique=True)), False),
                   files=(_mapping(_relpath, _str(pattern=_SHA256), MAX_FILES, 1), True),
                   runtime_libs=(_list(_RUNTIME_LIB, 16), False))


def _check_model(meta, where) -> dict:
    """What a model artifact's metadata must hold beyond its schema and listed files (see :func:`check_metadata`).

    Raises
    ------
    ArtifactError
        Naming the key: a missing or mistyped field, a path not listed in ``files``, repeated input or output
        names, batch sizes that do not match the kernel functions, a CUDA target (models run on CPUs).
    """
    if meta["target"]["family"] == "cuda":
        raise ArtifactError(f"{where}: model artifacts run on CPUs only (x86, aarch64); the target is CUDA")
    for side in ("inputs", "outputs"):
        names = [t["name"] for t in meta[side]]
        if len(set(names)) != len(names):
            _fail(side, "tensors with distinct names", names)
    for i, tensor in enumerate(meta["inputs"]):
        bounds = tensor.get("index_range")
        if bounds is not None and not bounds[0] < bounds[1]:
            _fail(f"inputs[{i}].index_range", "[low, high) with low < high", bounds)
    batches, functions = meta.get("batch_sizes"), meta["kernel"]["functions"]
    expected = sorted(str(b) for b in batches) if batches else [ANY_BATCH]
    if sorted(functions) != expected:
        _fail("kernel.functions", f"one function per batch size, keyed {expected}", functions)
    if batches and meta.get("batch_dim") is None:
        _fail("batch_dim", "the name of the batch dimension (batch_sizes is set)", None)
    dim = meta.get("batch_dim")
    if dim is not None and not any(dim in t["shape"] for t in meta["inputs"]):
        _fail("batch_dim", f"a dimension name of an input shape ({[t['shape'] for t in meta['inputs']]})", dim)
    return meta
