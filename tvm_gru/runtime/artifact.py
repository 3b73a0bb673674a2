"""Loading a deployed GRU cell or layer: numpy + apache-tvm-ffi only, never the TVM compiler.

An artifact is a folder written by :func:`tvm_gru.export.export_cell` or :func:`tvm_gru.export.export_layer`::

    tvm_gru_artifact.json        metadata: format version, kind, config, shapes, dtype, target, versions, SHA-256
                                 per file
    kernel.so                    the compiled kernels for the target: a cell's step kernel per batch size, or a
                                 layer's whole-sequence kernels per batch size (see :mod:`.deployed_layer`)
    weights.npz                  the packed weights, by kernel parameter name (uncompressed .npy members)
    lib/                         the TVM runtime libraries the kernels need on that architecture (may be empty)
    python/tvm_gru_runtime.zip   a copy of this package, so the folder runs with ``pip install apache-tvm-ffi
                                 numpy``: ``sys.path.insert(0, "<folder>/python/tvm_gru_runtime.zip")``; Python
                                 imports it from the zip, so no bytecode is read from or written to the folder

What :func:`load` trusts, and in which order (nothing native is opened before all of it holds):

1. The metadata (a regular file of at most 4 MiB, JSON nested at most 64 deep) passes one schema: required
   keys, types and ranges, each refusal an :class:`ArtifactError` naming the key.
2. Every path in it (``files``, ``kernel.library``, ``weights``, ``runtime_libs[].path``) is relative and plain
   (no ``..``, ``.``, empty part, backslash or leading ``/``) and listed in ``files`` with a SHA-256.
3. The folder holds exactly the listed files plus the metadata: any other file (``__pycache__`` included), any
   symbolic link (wherever it points), any FIFO, socket or device refuses the folder; nothing but regular files
   is opened, each through the folder's own descriptors without following links.
4. Each file is read once and its SHA-256 checked; what is loaded is those bytes: the libraries from a private
   copy (:func:`.verified_files.load_library_bytes`), the weights parsed from memory, after each ``.npy``
   member's size, shape and dtype in the zip directory and header matched what the config implies.
5. The kernels' TVM runtime symbols (parallel launch, workspaces) resolve in the process once the listed
   runtime libraries are loaded (or a TVM runtime already is); otherwise the load is refused.

``kind`` is "cell" (a :class:`DeployedCell`; artifacts written before the field existed are cells) or
"layer" (a :class:`~.deployed_layer.DeployedGRU`). ``format_version`` is the oldest loader format that reads
the artifact: cells are written as version 1 (any tvm_gru loader reads them), layers as version 2, so an
older loader refuses a layer artifact with "upgrade tvm_gru" instead of misreading it as a cell.

A bundled loader cannot check itself: whoever can change ``tvm_gru_runtime.zip`` runs code when it is imported.
Copy the folder from a trusted source, or load it with an installed tvm_gru.

>>> cell = load("gru_arm")                                  # doctest: +SKIP
>>> out, [h] = cell(x, [h])                                 # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import json
import math
import os
import platform
import re
import stat
import zipfile
from pathlib import Path

import numpy as np
import tvm_ffi

from .arrays import as_array
from .ffi_args import OutputPool
from .layer_calls import NotCopyable, check_inference_training
from .verified_files import load_library_bytes, read_regular_file

__all__ = ["load", "DeployedCell", "ArtifactError", "FORMAT", "FORMAT_VERSION", "KIND_VERSIONS", "METADATA",
           "verify"]

FORMAT = "tvm_gru.artifact"
FORMAT_VERSION = 2  # the newest format this loader reads
KIND_VERSIONS = {"cell": 1, "layer": 2}  # the format version each kind is written with (the oldest that reads it)
METADATA = "tvm_gru_artifact.json"
_MACHINES = {"x86_64": ("x86_64", "amd64"), "aarch64": ("aarch64", "arm64")}
_HWCAP = {"asimd": 1 << 1, "asimddp": 1 << 20}  # AArch64 AT_HWCAP bits (what qemu-user reports too)

# Bounds on what a folder may make the loader read or hold (an artifact's metadata is a few kB, a layer's
# largest library the few-MB TVM runtime).
_METADATA_LIMIT = 4 << 20
_JSON_DEPTH = 64
_FILE_LIMIT = 1 << 30
_TREE_DEPTH = 16
_TREE_ENTRIES = 10_000
_NPY_HEADER_LIMIT = 10_000  # numpy's own default cap on a .npy header


class ArtifactError(ValueError):
    """The folder is not a loadable artifact for this machine (damaged, foreign, too new, wrong target)."""


def _sha256(path: Path) -> str:
    """SHA-256 of a file the exporter just wrote (the loader hashes what it read: :func:`_read_listed`)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _artifact_root(path) -> Path:
    """``path`` as an existing folder, or an error naming ``path`` (wrong type, missing, a file)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or os.PathLike naming an artifact folder; received "
                        f"{type(path).__name__}")
    root = Path(path).resolve()
    if not root.exists():
        raise ArtifactError(f"`path` {root} does not exist; expected an artifact folder written by export_cell")
    if not root.is_dir():
        raise ArtifactError(f"`path` {root} is a file, not an artifact folder; expected the folder holding "
                            f"{METADATA}")
    return root


# ---------------------------------------------------------------------------------------- the folder
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


class _Folder:
    """The artifact folder, held open: every file is reached from this descriptor, one path part at a time,
    never through a symbolic link, so what is checked and what is read are the same files."""

    def __init__(self, root: Path):
        self.root = root
        self.fd = os.open(root, _DIR_FLAGS & ~getattr(os, "O_NOFOLLOW", 0))  # the user's own path may hold links

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        os.close(self.fd)

    def read(self, rel: str, limit: int) -> bytes:
        """The bytes of the regular file ``rel`` (a checked relative path), or an ArtifactError saying why not."""
        *dirs, name = rel.split("/")
        fd = self.fd
        try:
            for part in dirs:  # each folder opened from the one above, refusing links (O_NOFOLLOW)
                sub = os.open(part, _DIR_FLAGS, dir_fd=fd)
                if fd != self.fd:
                    os.close(fd)
                fd = sub
            return read_regular_file(name, limit, dir_fd=fd)
        except FileNotFoundError as err:
            raise ArtifactError(f"artifact file {rel} is missing from {self.root}") from err
        except OSError as err:  # ELOOP: a link where a file was listed
            raise ArtifactError(f"artifact file {rel!r} of {self.root} cannot be read as a regular file without "
                                f"following links ({err.strerror or err})") from err
        except ValueError as err:  # not a regular file, or too big
            raise ArtifactError(f"artifact file {rel!r} of {self.root}: {err}") from err
        finally:
            if fd != self.fd:
                os.close(fd)

    def files(self) -> set:
        """Every file's relative path; refuses links, FIFOs, sockets and devices without opening them."""
        found: set = set()
        self._walk(self.fd, "", found, 0)
        return found

    def _walk(self, fd: int, prefix: str, found: set, depth: int) -> None:
        if depth > _TREE_DEPTH:
            raise ArtifactError(f"artifact {self.root} nests folders deeper than {_TREE_DEPTH} ({prefix!r})")
        with os.scandir(fd) as entries:
            for entry in entries:
                rel = prefix + entry.name
                mode = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISLNK(mode):
                    raise ArtifactError(f"artifact path {rel!r} of {self.root} is a symbolic link to "
                                        f"{os.readlink(entry.name, dir_fd=fd)!r}; an artifact holds regular files "
                                        "and folders only (links are refused wherever they point)")
                if stat.S_ISDIR(mode):
                    sub = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
                    try:
                        self._walk(sub, rel + "/", found, depth + 1)
                    finally:
                        os.close(sub)
                elif stat.S_ISREG(mode):
                    found.add(rel)
                else:
                    raise ArtifactError(f"artifact path {rel!r} of {self.root} is not a regular file or folder "
                                        f"(mode {stat.filemode(mode)}: a FIFO, socket or device); refused")
                if len(found) > _TREE_ENTRIES:
                    raise ArtifactError(f"artifact {self.root} holds more than {_TREE_ENTRIES} files")


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
_LAYER_FLAGS = ("return_sequences", "return_state", "go_backwards", "stateful", "time_major",
                "zero_output_for_mask", "masking")


def _schema(kind: str):
    functions = _LAYER_FUNCTIONS if kind == "layer" else _str(pattern=_NAME)
    kernel = _record(library=(_relpath, True), functions=(_mapping(_str(pattern=_BATCH), functions, 64, 1), True),
                     weights=(_list(_str(pattern=_NAME), 8, 1, unique=True), True))
    fields = dict(config=(_CONFIG, True), target=(_TARGET, True), kernel=(kernel, True), weights=(_relpath, True),
                  files=(_mapping(_relpath, _str(pattern=_SHA256), _TREE_ENTRIES, 1), True),
                  input_dim=(_POSITIVE, True), lanes=(_int(1, 64), True), shapes=(_mapping(_str(), _SHAPE, 64), True),
                  runtime_libs=(_list(_RUNTIME_LIB, 16), False), weight_dtype=(_str(), False),  # see weight_dtype()
                  batch_sizes=(_list(_POSITIVE, 64), False))
    if kind == "layer":
        fields["layer"] = (_record(name=(_str(), False), **{f: (_bool, False) for f in _LAYER_FLAGS}), True)
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


def _parse_metadata(data: bytes, where) -> dict:
    try:
        meta = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as err:  # RecursionError: nested past the interpreter's limit
        raise ArtifactError(f"{where} is not readable JSON ({err})") from err
    if _depth(meta) > _JSON_DEPTH:
        raise ArtifactError(f"{where} nests JSON deeper than {_JSON_DEPTH} levels; artifact metadata nests a few")
    return meta


def _check_metadata(meta, where) -> dict:
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
    _schema(kind)(meta, "")
    files = meta["files"]
    named = [("kernel.library", meta["kernel"]["library"]), ("weights", meta["weights"])]
    named += [(f"runtime_libs[{i}].path", e["path"]) for i, e in enumerate(meta.get("runtime_libs", ()))]
    for key, rel in named:
        if rel not in files:
            raise ArtifactError(f"{where}: entry {key!r} names {rel!r}, which 'files' does not list with a SHA-256")
    if METADATA in files:
        raise ArtifactError(f"{where}: 'files' lists the metadata itself")
    for name in meta["kernel"]["weights"]:
        if not isinstance(meta["shapes"].get(name), list) or not all(isinstance(d, int) for d in meta["shapes"][name]):
            _fail(f"shapes.{name}", "the list of ints of the weight's shape", meta["shapes"].get(name, _MISSING))
    weight_dtype(meta)
    return meta


def artifact_kind(meta: dict) -> str:
    """"cell" or "layer" (metadata without a ``kind`` field, written before layers existed, is a cell)."""
    return meta.get("kind", "cell")


def _read_listed(folder: _Folder, keep) -> tuple:
    """The checked metadata, and the checked bytes of the files named in ``keep(meta)`` ({rel: size limit}).

    The folder must hold exactly the listed files and the metadata (walked without following links), and each
    listed file's SHA-256 must be the recorded one, computed on the bytes read here, which are the ones used.
    """
    where = folder.root / METADATA
    if METADATA not in os.listdir(folder.fd):
        raise ArtifactError(f"{folder.root} is not a tvm_gru artifact: {METADATA} is missing")
    meta = _check_metadata(_parse_metadata(folder.read(METADATA, _METADATA_LIMIT), where), where)
    present = folder.files()
    files = meta["files"]
    for rel in files:
        if rel not in present:
            raise ArtifactError(f"artifact file {rel} is missing from {folder.root}")
    extra = sorted(present - set(files) - {METADATA})
    if extra:
        # an added library could be picked up by the dynamic loader, a .pyc by an import: refuse, do not ignore
        hint = (" (a __pycache__ is written when an exported loader folder is imported with bytecode writing on: "
                "delete it, or export again; the loader now ships as python/tvm_gru_runtime.zip)"
                if any("__pycache__" in rel.split("/") for rel in extra) else "")
        raise ArtifactError(f"artifact {folder.root} holds files its metadata does not list: {extra}{hint}")
    limits = keep(meta)
    kept = {}
    for rel, digest in files.items():
        data = folder.read(rel, limits.get(rel, _FILE_LIMIT))
        h = hashlib.sha256()
        h.update(data)
        actual = h.hexdigest()
        if actual != digest:
            raise ArtifactError(f"artifact file {rel} is damaged or was modified: SHA-256 {actual} != {digest} "
                                f"recorded at export")
        if rel in limits:
            kept[rel] = data
    return meta, kept


def verify(path) -> dict:
    """Check the metadata, the folder's contents and every listed file's SHA-256; return the metadata. Opens no
    native library.

    Raises
    ------
    ArtifactError
        Missing, damaged or malformed metadata (the key is named), a newer format, a missing file, a path that
        is not plain and relative, a symbolic link, FIFO, socket or device anywhere in the folder, an unlisted
        file (``__pycache__`` included), or a hash mismatch.
    """
    with _Folder(_artifact_root(path)) as folder:
        return _read_listed(folder, lambda meta: {})[0]


# ---------------------------------------------------------------------------------------- weights
# Storage dtypes of the weight matrices a cell artifact may hold, per cell dtype (see tvm_gru.config).
_WEIGHT_DTYPES = {"float32": ("float32", "float16"), "float64": ("float64",)}


def weight_dtype(meta: dict) -> str:
    """The storage dtype of the packed kernel/recurrent kernel (metadata without the entry: the cell dtype)."""
    cfg_dtype = str(meta["config"].get("dtype"))
    name = meta.get("weight_dtype", cfg_dtype)
    if name not in _WEIGHT_DTYPES.get(cfg_dtype, (cfg_dtype,)):
        raise ArtifactError(f"{METADATA}: weight_dtype {name!r} is not a storage dtype of a {cfg_dtype} cell; "
                            f"expected one of {_WEIGHT_DTYPES.get(cfg_dtype, (cfg_dtype,))}")
    return name


def _cell_weight_specs(meta: dict) -> dict:
    """{name: (shape, dtype)} of a cell's packed weights, in kernel order, as the config implies them: the
    weight matrices in the metadata's ``weight_dtype``, the bias in the cell dtype (``tvm_gru.packing``)."""
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
    _check_declared(meta, expected)
    return expected


def _check_declared(meta: dict, expected: dict) -> None:
    """The metadata's kernel weight list and shapes must be what the config implies (``expected``)."""
    cfg = meta["config"]
    if list(meta["kernel"]["weights"]) != list(expected):
        raise ArtifactError(f"the kernel weights are {list(meta['kernel']['weights'])}; the config "
                            f"(reset_after={cfg['reset_after']}, use_bias={cfg['use_bias']}) implies {list(expected)}")
    for name, (shape, dtype) in expected.items():
        if tuple(meta["shapes"][name]) != tuple(shape):
            raise ArtifactError(f"weight {name} has shape {tuple(meta['shapes'][name])} in the metadata; the config "
                                f"(units={cfg['units']}, input_dim={meta['input_dim']}, lanes={meta['lanes']}, "
                                f"dtype={cfg['dtype']}) implies {tuple(shape)} ({dtype.name})")


def _weights_limit(expected: dict) -> int:
    """The most bytes an uncompressed .npz of these arrays takes (data, .npy headers, zip records)."""
    return sum(math.prod(shape) * dtype.itemsize + _NPY_HEADER_LIMIT + 1024 for shape, dtype in expected.values())


def _config_summary(meta: dict) -> str:
    cfg = meta["config"]
    return (f"units={cfg['units']}, input_dim={meta['input_dim']}, lanes={meta['lanes']}, dtype={cfg['dtype']}, "
            f"weight_dtype={weight_dtype(meta)}")


def _read_weights(data: bytes, expected: dict, rel: str, context: str) -> dict:
    """The packed arrays of ``weights.npz`` (bytes already checked), each checked in the zip directory and its
    .npy header before its data is read: exactly the expected members, stored uncompressed (as the exporter
    writes them, so no member inflates past the file), with the expected shape, dtype and size. ``context``
    describes the config in messages."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError) as err:
        raise ArtifactError(f"{rel} is not a readable .npz (zip) file ({err})") from err
    with archive:
        members = [info.filename for info in archive.infolist()]
        if sorted(members) != sorted(f"{name}.npy" for name in expected):
            raise ArtifactError(f"{rel} holds the members {members}; the metadata implies exactly "
                                f"{[f'{name}.npy' for name in expected]}")
        return {name: _read_member(archive, name, shape, dtype, f"{rel}: weight {name} (member {name}.npy)",
                                   context)
                for name, (shape, dtype) in expected.items()}


def _read_member(archive, name: str, shape: tuple, dtype: np.dtype, where: str, context: str) -> np.ndarray:
    from .buffers import aligned_copy  # noqa: PLC0415

    info = archive.getinfo(f"{name}.npy")
    nbytes = math.prod(shape) * dtype.itemsize
    if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size \
            or info.file_size > nbytes + _NPY_HEADER_LIMIT:  # exactly header + data: checked after the header
        raise ArtifactError(f"{where} is {info.file_size} bytes ({info.compress_size} stored, compression "
                            f"{info.compress_type}); expected {nbytes} bytes of {dtype.name} {tuple(shape)} plus a "
                            f".npy header, stored uncompressed (the config: {context})")
    try:
        with archive.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"unsupported .npy version {version}")
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                else np.lib.format.read_array_header_2_0
            got_shape, fortran, got_dtype = read_header(f, max_header_size=_NPY_HEADER_LIMIT)
            header = f.tell()
            if tuple(got_shape) != tuple(shape) or got_dtype != dtype or fortran:
                raise ArtifactError(f"{where} has shape {tuple(got_shape)} and dtype {got_dtype}"
                                    f"{' (Fortran order)' if fortran else ''}; the config ({context}) implies "
                                    f"{dtype.name} values of shape {tuple(shape)}")
            if info.file_size != header + nbytes:
                raise ValueError(f"{info.file_size - header} data bytes; expected {nbytes}")
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise ValueError(f"{len(raw)} data bytes; expected {nbytes}")
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        if isinstance(err, ArtifactError):
            raise
        raise ArtifactError(f"{where} is not a valid .npy array ({err})") from err
    return aligned_copy(np.frombuffer(raw, dtype).reshape(shape))


# ---------------------------------------------------------------------------------------- machine checks
def _hwcaps() -> int:
    try:
        libc = ctypes.CDLL(None)
        libc.getauxval.restype = ctypes.c_ulong
        return int(libc.getauxval(16))  # AT_HWCAP
    except (OSError, AttributeError):
        return 0


def _x86_flags() -> set:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def check_machine(target: dict) -> None:
    """Raise :class:`ArtifactError` unless this machine can run kernels built for ``target`` (metadata)."""
    arch = target["host_arch"]
    machine = platform.machine().lower()
    if machine not in _MACHINES.get(arch, (arch,)):
        raise ArtifactError(f"this artifact was built for {target['family']} ({arch}) and cannot run on this "
                            f"{machine} machine; export it again with target='host' or the matching target")
    needed = list(target.get("cpu_features", ()))
    if not needed:
        return
    if arch == "aarch64":
        caps = _hwcaps()
        missing = [f for f in needed if f in _HWCAP and not caps & _HWCAP[f]]
    else:
        flags = _x86_flags()
        missing = [f for f in needed if flags and f not in flags]
    if missing:
        raise ArtifactError(f"this CPU lacks {missing}, which the kernels were compiled to use "
                            f"(target {target.get('tvm')}); export for an older mcpu")


# ---------------------------------------------------------------------------------------- native libraries
_LOADED: dict = {}  # SHA-256 -> runtime library loaded from its checked bytes (kept for the process's life)


def _load_runtime_libs(meta: dict, blobs: dict) -> None:
    """Load the bundled TVM runtime libraries (RTLD_GLOBAL) from their checked bytes, unless a TVM runtime is
    already in-process."""
    for entry in meta.get("runtime_libs", ()):
        provides = entry.get("provides")
        if provides and tvm_ffi.get_global_func(provides, allow_missing=True) is not None:
            continue  # e.g. `import tvm` already loaded its own copy: a second copy would register twice
        digest = meta["files"][entry["path"]]
        if digest in _LOADED:
            continue
        try:
            _LOADED[digest] = load_library_bytes(blobs[entry["path"]],
                                                 lambda p: ctypes.CDLL(p, mode=ctypes.RTLD_GLOBAL))
        except OSError as err:
            hint = " (CUDA artifacts need the NVIDIA driver, libcuda.so.1)" if "cuda" in entry["path"] else ""
            raise ArtifactError(f"cannot load {entry['path']}{hint}: {err}") from err


def _check_runtime_symbols(kernel: bytes, meta: dict) -> None:
    """Every TVM runtime function the kernels call through a context pointer (``__TVMBackend*``: parallel
    launch, workspaces) must be in the process before the kernels load: the pointer is otherwise left null and
    the first call crashes."""
    needed = sorted({m.decode() for m in re.findall(rb"__(TVMBackend[A-Za-z0-9_]+)", kernel)})
    process = ctypes.CDLL(None)
    missing = [name for name in needed if not hasattr(process, name)]
    if missing:
        listed = [e["path"] for e in meta.get("runtime_libs", ())]
        raise ArtifactError(f"{meta['kernel']['library']} calls the TVM runtime functions {missing}, which no "
                            f"loaded library provides: the metadata's runtime_libs lists {listed} and no TVM runtime "
                            "is loaded in this process; export the artifact again (it bundles lib/libtvm_runtime.so)")


def _check_cuda_device(device_id: int, arch) -> None:
    attr = tvm_ffi.get_global_func("runtime.GetDeviceAttr", allow_missing=True)
    if attr is None or not attr(2, device_id, 0):  # (kDLCUDA, id, kExist)
        raise ArtifactError(f"this is a CUDA artifact and there is no CUDA device {device_id} here (or no driver)")
    if not arch:
        return
    # Device code is SASS for one architecture: it runs on the same major version, same or newer minor.
    digits = re.fullmatch(r"sm_(\d+)(\d)[a-z]?", arch)
    want = (int(digits.group(1)), int(digits.group(2)))
    have = tuple(int(v) for v in str(attr(2, device_id, 4)).split("."))  # kComputeVersion, e.g. "9.0"
    if have[0] != want[0] or have[1] < want[1]:
        raise ArtifactError(f"this artifact holds device code for {arch}; CUDA device {device_id} is "
                            f"sm_{have[0]}{have[1]}: export it again with target={{'name': 'cuda', "
                            f"'arch': 'sm_{have[0]}{have[1]}'}}")


def _weight_specs(meta: dict) -> dict:
    if artifact_kind(meta) == "layer":
        from .deployed_layer import weight_specs  # noqa: PLC0415

        return weight_specs(meta)
    return _cell_weight_specs(meta)


def load(path, device_id: int = 0):
    """Load an artifact folder written by :func:`tvm_gru.export.export_cell` or :func:`~tvm_gru.export.export_layer`.

    Parameters
    ----------
    path : str or Path
        The artifact folder.
    device_id : int
        CUDA device ordinal (CUDA artifacts only).

    Returns
    -------
    DeployedCell or DeployedGRU
        A cell artifact is called like the Keras cell: ``out, [h] = cell(x, [h])``; a layer artifact like the
        Keras GRU layer: ``layer(inputs, mask=None, training=None, initial_state=None)``.

    Raises
    ------
    ArtifactError
        See :func:`verify` and :func:`check_machine`; also weights whose zip directory or .npy headers do not
        match the config, and kernels needing TVM runtime functions that no listed library provides. Nothing
        native is opened before these checks pass, and what is loaded is the bytes that were checked.
    """
    root = _artifact_root(path)
    if isinstance(device_id, bool) or not isinstance(device_id, int):
        raise TypeError(f"`device_id` must be a non-negative int; received {device_id!r}")
    if device_id < 0:
        raise ValueError(f"`device_id` must be a non-negative int; received {device_id}")

    def keep(meta):  # what is loaded, with a size limit each
        libs = [meta["kernel"]["library"]] + [e["path"] for e in meta.get("runtime_libs", ())]
        return {**dict.fromkeys(libs, _FILE_LIMIT), meta["weights"]: _weights_limit(_weight_specs(meta))}

    with _Folder(root) as folder:
        meta, blobs = _read_listed(folder, keep)
    layer = artifact_kind(meta) == "layer"
    if layer and meta["target"]["family"] == "cuda":
        raise ArtifactError("layer artifacts run on CPUs only (the whole-sequence kernel has no CUDA schedule)")
    check_machine(meta["target"])
    weights = _read_weights(blobs[meta["weights"]], _weight_specs(meta), meta["weights"], _config_summary(meta))
    if meta["target"]["family"] != "cuda" and "TVM_NUM_THREADS" not in os.environ:
        # TVM's CPU thread pool reads it once, at its first parallel launch (unset, it was measured slow)
        try:
            os.environ["TVM_NUM_THREADS"] = str(len(os.sched_getaffinity(0)))
        except AttributeError:
            os.environ["TVM_NUM_THREADS"] = str(os.cpu_count() or 1)
    _load_runtime_libs(meta, blobs)
    kernel = blobs[meta["kernel"]["library"]]
    _check_runtime_symbols(kernel, meta)
    if meta["target"]["family"] == "cuda":
        _check_cuda_device(device_id, meta["target"].get("arch"))
    try:
        module = load_library_bytes(kernel, tvm_ffi.load_module)
    except (OSError, RuntimeError) as err:  # e.g. a temporary folder mounted noexec (set TMPDIR elsewhere)
        raise ArtifactError(f"cannot load {meta['kernel']['library']} from its private copy in the temporary "
                            f"folder: {err}") from err
    if layer:
        from .deployed_layer import DeployedGRU  # noqa: PLC0415

        return DeployedGRU(meta, module, weights)
    return DeployedCell(meta, module, weights, device_id)


# ---------------------------------------------------------------------------------------- the cell
def _aligned(array: np.ndarray) -> np.ndarray:
    from .buffers import aligned_copy, is_aligned  # noqa: PLC0415

    return array if is_aligned(array) else aligned_copy(array)


def _writeable(array: np.ndarray) -> np.ndarray:
    """DLPack (as tvm_ffi speaks it) refuses read-only arrays: hand the kernel a copy of those."""
    return array if array.flags.writeable else array.copy()


def _is_device_tensor(value) -> bool:
    if isinstance(value, np.ndarray) or not hasattr(value, "__dlpack_device__"):
        return False
    return int(value.__dlpack_device__()[0]) == 2  # kDLCUDA


def _unpack(packed: np.ndarray, units: int, fused: bool) -> np.ndarray:
    """Packed (NB, K, G, V) (fused) or (G, NB, K, V) -> Keras (K, G*H); see tvm_gru.packing."""
    blocked = packed.transpose(1, 2, 0, 3) if fused else packed.transpose(2, 0, 1, 3)
    k, g, nb, lanes = blocked.shape
    return blocked.reshape(k, g, nb * lanes)[:, :, :units].reshape(k, g * units).copy()


class DeployedCell(NotCopyable):
    """A GRU cell loaded from an artifact: the Keras call on the exported kernels and weights.

    Calls from several threads need no lock: each returns its own output. ``pickle`` and ``copy`` raise
    ``TypeError`` (see :class:`~.layer_calls.NotCopyable`): load the artifact again for another cell.

    Attributes
    ----------
    config : dict
        The :class:`tvm_gru.GRUConfig` fields (units, activations, reset_after, implementation, dtype, ...).
    input_dim, units : int
    batch_sizes : tuple of int
        Batch sizes with a compiled kernel.
    target : dict
        ``family`` ("x86", "aarch64", "cuda") and the TVM target it was compiled for.
    metadata : dict
        The whole metadata file.
    """

    def __init__(self, meta, module, weights, device_id=0):
        self.metadata = meta
        self.config = dict(meta["config"])
        self.input_dim = int(meta["input_dim"])
        self.units = int(self.config["units"])
        self.dtype = np.dtype(self.config["dtype"])
        self.weight_dtype = np.dtype(weight_dtype(meta))  # storage of the weight matrices (float16: widened in-kernel)
        self.target = meta["target"]
        self._functions = {int(b): module[name] for b, name in meta["kernel"]["functions"].items()}
        self.batch_sizes = tuple(sorted(self._functions))
        self._module = module  # keeps the library loaded
        self._cuda = self.target["family"] == "cuda"
        self._host_weights = [_aligned(weights[n]) for n in meta["kernel"]["weights"]]
        if self._cuda:
            self._device = tvm_ffi.device("cuda", device_id)
            self._alloc = tvm_ffi.get_global_func("runtime.TVMTensorAllocWithScope")
            self._copy = tvm_ffi.get_global_func("runtime.TVMTensorCopyFromTo")
            self._weights = tuple(self._to_device(w) for w in self._host_weights)
            self._staging = {}
        else:
            self._weights = tuple(tvm_ffi.from_dlpack(w) for w in self._host_weights)
        self._host_calls = {}  # batch -> its kernel bound to its own OutputPool (_run_host)

    # ------------------------------------------------------------------ Keras-like properties
    @property
    def state_size(self) -> int:
        return self.units

    @property
    def output_size(self) -> int:
        return self.units

    def get_config(self) -> dict:
        return dict(self.config)

    def get_weights(self) -> list:
        """The Keras-layout weights ``[kernel (I, 3H), recurrent_kernel (H, 3H), bias]`` (unpacked copies, in the
        cell dtype: float16-stored matrices come back as the float16-rounded values the kernel uses)."""
        w = dict(zip(self.metadata["kernel"]["weights"], self._host_weights))
        # Gate-interleaved for implementation 2 and for every SIMD packing (V > 1); see tvm_gru.packing.layout.
        units, fused = self.units, self.config["implementation"] == 2 or w["kernel_packed"].shape[-1] > 1
        kernel = _unpack(w["kernel_packed"], units, fused)
        recurrent = _unpack(w["recurrent_packed"], units, fused)
        if "candidate_packed" in w:  # reset_after=False keeps the candidate's recurrent columns apart
            recurrent = np.concatenate([recurrent, _unpack(w["candidate_packed"], units, fused)], axis=1)
        out = [kernel.astype(self.dtype), recurrent.astype(self.dtype)]
        if "bias_packed" in w:
            rows = w["bias_packed"][:, :, :units].reshape(2, 3 * units)
            out.append(rows.copy() if self.config["reset_after"] else rows[0].copy())
        return out

    def get_initial_state(self, inputs=None, batch_size=None, dtype=None) -> np.ndarray:
        if inputs is not None:
            shape = getattr(inputs, "shape", None)
            if shape is None or len(shape) != 2:
                raise ValueError(f"`inputs` must be a (batch, {self.input_dim}) tensor; received "
                                 f"{type(inputs).__name__} of shape {shape}")
            batch_size = int(shape[0])
        if batch_size is None:
            raise ValueError("batch_size and dtype cannot be None while constructing initial state: "
                             "pass `inputs` or `batch_size`")
        return np.zeros((batch_size, self.units), dtype=np.dtype(dtype or self.dtype))

    # ------------------------------------------------------------------ call
    def __call__(self, inputs, states, training=None):
        """One step: ``output, [new_state] = cell(inputs, [state])`` (a bare state gives a bare state back).

        Parameters
        ----------
        inputs : (B, I) numpy array or DLPack tensor; B must be one of :attr:`batch_sizes`
        states : list/tuple holding a (B, H) array (only ``states[0]`` is read), or a bare (B, H) array
        training : bool or None
            Deployed cells are inference-only: ``training=True`` on a cell exported with ``dropout`` or
            ``recurrent_dropout`` > 0 raises ``ValueError`` (Keras would apply dropout, and the artifact has no
            dropout kernels); with both rates 0 it changes nothing, as in Keras. Anything but None or a bool
            raises ``TypeError``, as for :class:`tvm_gru.GRUCell`.

        Returns
        -------
        output : (B, H) array: numpy for host inputs. When a CUDA artifact receives GPU tensors, the output
            stays on the GPU: a tensor of the state's type when it has ``new_empty`` (torch), else a
            DLPack-exportable ``tvm_ffi.Tensor``
        new_states : ``[output]`` for list/tuple states, ``output`` for a bare state
        """
        if training is not None and training is not False:  # (the common values skip the call)
            check_inference_training(training, self.config, "cell", "tvm_gru.GRUCell")
        nested = isinstance(states, (list, tuple))
        if nested and not states:
            raise ValueError("`states` must hold one (batch, units) array; received an empty sequence")
        h = states[0] if nested else states
        if self._cuda:
            out = self._call_fast(inputs, h)
        elif type(inputs) is np.ndarray and type(h) is np.ndarray and (training is None or training is False):
            out = self._call_host_fast(inputs, h)
        else:
            out = None
        if out is None:
            if self._cuda and _is_device_tensor(inputs) and _is_device_tensor(h):
                out = self._call_device(inputs, h)
            else:
                out = self._call_host(inputs, h)
        return out, ([out] if nested else out)

    def _check(self, x_shape, h_shape, x_dtype, h_dtype) -> int:
        if len(x_shape) != 2 or x_shape[1] != self.input_dim:
            raise ValueError(f"`inputs` must have shape (batch, {self.input_dim}); received {tuple(x_shape)}")
        if len(h_shape) != 2 or h_shape[1] != self.units:
            raise ValueError(f"`states[0]` must have shape (batch, {self.units}); received {tuple(h_shape)}")
        if x_shape[0] != h_shape[0]:
            raise ValueError(f"`inputs` and `states[0]` must have the same batch size; received "
                             f"{x_shape[0]} and {h_shape[0]}")
        batch = int(x_shape[0])
        if batch not in self._functions:
            raise ValueError(f"this artifact has kernels for batch sizes {list(self.batch_sizes)}; received "
                             f"batch {batch} (export with batch=[..., {batch}])")
        for name, dt in (("inputs", x_dtype), ("states[0]", h_dtype)):
            if np.dtype(dt).kind != "f":
                raise TypeError(f"`{name}` must hold floating point values; received dtype {dt}")
        return batch

    def _call_host(self, inputs, h):
        x = as_array("inputs", inputs)
        h = as_array("states[0]", h)
        batch = self._check(x.shape, h.shape, x.dtype, h.dtype)
        x = _writeable(np.ascontiguousarray(x, dtype=self.dtype))
        h = _writeable(np.ascontiguousarray(h, dtype=self.dtype))
        if not self._cuda:
            return self._run_host(batch, x, h)
        out = np.empty((batch, self.units), self.dtype)
        dx, dh, dout = self._staging_buffers(batch)
        self._copy(tvm_ffi.from_dlpack(x), dx)
        self._copy(tvm_ffi.from_dlpack(h), dh)
        self._functions[batch](dx, dh, *self._weights, dout)
        self._copy(dout, tvm_ffi.from_dlpack(out))
        return out

    def step(self, x, h, out):
        """Destination passing, no checks beyond the kernel's own: writes the new state of ``x``, ``h`` into
        ``out`` (all C-contiguous tensors of the cell dtype on the artifact's device; any DLPack producer)."""
        self._functions[int(out.shape[0])](x, h, *self._weights, out)
        return out

    def _call_host_fast(self, inputs, h):
        """numpy arrays straight to the kernel, whose argument binder checks rank, shape, dtype and compactness
        (the user-facing arguments are compiled without an alignment assumption); output from the pool. Returns
        None when the binder refuses (or the batch has no kernel): the checked path converts or explains."""
        try:
            batch = inputs.shape[0]
            return self._run_host(batch, inputs, h) if batch in self._functions else None
        except (IndexError, TypeError, ValueError, BufferError):
            return None

    def _run_host(self, batch: int, x, h):
        """One host step into a pooled output: no allocation or DLPack export per step. Each batch size has its
        kernel bound to its own :class:`OutputPool` (:meth:`OutputPool.bind`), made on first use."""
        run = self._host_calls.get(batch)
        if run is None:
            run = self._host_calls[batch] = OutputPool((batch, self.units), self.dtype).bind(self._functions[batch],
                                                                                         self._weights)
        return run(x, h)

    def _call_fast(self, inputs, h):
        """GPU tensors with ``new_empty`` (torch): the output comes from the tensor library's own caching
        allocator and the kernel's argument binder does the checks (shape, dtype, device). Returns None when
        this does not apply or the binder refuses; the checked path then runs or explains the error."""
        new_empty = getattr(h, "new_empty", None)
        if new_empty is None or isinstance(inputs, np.ndarray):
            return None
        try:
            batch = int(inputs.shape[0])
            fn = self._functions[batch]
            out = new_empty((batch, self.units))
            fn(inputs, h, *self._weights, out)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            return None
        return out

    def _call_device(self, inputs, h):
        x, hh = tvm_ffi.from_dlpack(inputs), tvm_ffi.from_dlpack(h)
        batch = self._check(tuple(x.shape), tuple(hh.shape), str(x.dtype), str(hh.dtype))
        if str(x.dtype) != self.dtype.name or str(hh.dtype) != self.dtype.name:
            raise TypeError(f"GPU `inputs` and `states[0]` must be {self.dtype.name}; received {x.dtype}, "
                            f"{hh.dtype}")
        out = self._alloc(tvm_ffi.Shape([batch, self.units]), tvm_ffi.dtype(self.dtype.name), self._device, None)
        self._functions[batch](x, hh, *self._weights, out)
        return out

    # ------------------------------------------------------------------ CUDA buffers
    def _to_device(self, array: np.ndarray):
        out = self._alloc(tvm_ffi.Shape(list(array.shape)), tvm_ffi.dtype(array.dtype.name), self._device, None)
        self._copy(tvm_ffi.from_dlpack(array), out)
        return out

    def _staging_buffers(self, batch: int):
        if batch not in self._staging:
            dt, dev = tvm_ffi.dtype(self.dtype.name), self._device
            self._staging[batch] = tuple(self._alloc(tvm_ffi.Shape([batch, n]), dt, dev, None)
                                         for n in (self.input_dim, self.units, self.units))
        return self._staging[batch]

    def __repr__(self) -> str:
        c = self.config
        return (f"DeployedCell(units={c['units']}, input_dim={self.input_dim}, activation={c['activation']!r}, "
                f"recurrent_activation={c['recurrent_activation']!r}, reset_after={c['reset_after']}, "
                + (f"weight_dtype={self.weight_dtype.name!r}, " if self.weight_dtype != self.dtype else "")
                + f"target={self.target['family']}, batch_sizes={list(self.batch_sizes)})")
