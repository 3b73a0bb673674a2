"""Loading a deployed GRU cell or layer: numpy + apache-tvm-ffi only, never the TVM compiler.

An artifact is a folder written by :func:`tvm_gru.deploy.export.export_cell` or
:func:`tvm_gru.deploy.export.export_layer`::

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

``kind`` is "cell" (a :class:`DeployedCell`; artifacts written before the field existed are cells),
"layer" (a :class:`~.deployed_layer.DeployedGRU`), "bidirectional" (a
:class:`~.deployed_bidirectional.DeployedBidirectional`: one library, one weights file, two directions) or
"model" (a :class:`~.deployed_model.DeployedModel`). ``format_version`` is the oldest loader format that reads
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
import math
import os
import platform
import re
import stat
import zipfile
from pathlib import Path

import numpy as np
import tvm_ffi

from .deployed_bidirectional import DeployedBidirectional, bidirectional_weight_specs
from .deployed_cell import DeployedCell
from .deployed_layer import DeployedGRU, weight_specs
from .deployed_model import VM_PROVIDES, DeployedModel
from .format import (
    FORMAT,
    FORMAT_VERSION,
    KIND_VERSIONS,
    MAX_FILES,
    METADATA,
    NPY_HEADER_LIMIT,
    ArtifactError,
    artifact_kind,
    cell_weight_specs,
    check_metadata,
    config_summary,
    parse_metadata,
    weights_limit,
)
from .threads import default_num_threads
from .verified_files import load_library_bytes, read_regular_file

__all__ = ["load", "verify", "check_machine", "DeployedCell", "DeployedGRU", "DeployedBidirectional", "DeployedModel",
           "ArtifactError", "FORMAT", "FORMAT_VERSION", "KIND_VERSIONS", "METADATA"]

_MACHINES = {"x86_64": ("x86_64", "amd64"), "aarch64": ("aarch64", "arm64")}
_HWCAP = {"asimd": 1 << 1, "asimddp": 1 << 20}  # AArch64 AT_HWCAP bits (what qemu-user reports too)
# Bounds on what a folder may make the loader read or hold (an artifact's metadata is a few kB, a layer's
# largest library the few-MB TVM runtime).
_METADATA_LIMIT = 4 << 20
_FILE_LIMIT = 1 << 30
_TREE_DEPTH = 16


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
_MACHINES = {"x86_64": ("x86_64", "amd64"), "aarch64": ("aarch64", "arm64")}
_HWCAP = {"asimd": 1 << 1, "asimddp": 1 << 20}  # AArch64 AT_HWCAP bits (what qemu-user reports too)
_METADATA_LIMIT = 4 << 20
_FILE_LIMIT = 1 << 30
_TREE_DEPTH = 16



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
                if len(found) > MAX_FILES:
                    raise ArtifactError(f"artifact {self.root} holds more than {MAX_FILES} files")


def _read_listed(folder: _Folder, keep) -> tuple:
    """The checked metadata, and the checked bytes of the files named in ``keep(meta)`` ({rel: size limit}).

    The folder must hold exactly the listed files and the metadata (walked without following links), and each
    listed file's SHA-256 must be the recorded one, computed on the bytes read here, which are the ones used.
    """
    where = folder.root / METADATA
    if METADATA not in os.listdir(folder.fd):
        raise ArtifactError(f"{folder.root} is not a tvm_gru artifact: {METADATA} is missing")
    meta = check_metadata(parse_metadata(folder.read(METADATA, _METADATA_LIMIT), where), where)
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
            or info.file_size > nbytes + NPY_HEADER_LIMIT:  # exactly header + data: checked after the header
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
            got_shape, fortran, got_dtype = read_header(f, max_header_size=NPY_HEADER_LIMIT)
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
        return weight_specs(meta)
    if artifact_kind(meta) == "bidirectional":
        return bidirectional_weight_specs(meta)
    return cell_weight_specs(meta)


def load(path, device_id: int = 0):
    """Load an artifact folder written by :func:`tvm_gru.deploy.export.export_cell`,
    :func:`~tvm_gru.deploy.export.export_layer`, :func:`~tvm_gru.deploy.export.export_bidirectional` or
    ``Model.export``.

    Parameters
    ----------
    path : str or Path
        The artifact folder.
    device_id : int
        CUDA device ordinal (CUDA artifacts only).

    Returns
    -------
    DeployedCell, DeployedGRU, DeployedBidirectional or DeployedModel
        A cell artifact is called like the Keras cell: ``out, [h] = cell(x, [h])``; a layer artifact like the
        Keras GRU layer: ``layer(inputs, mask=None, training=None, initial_state=None)``; a bidirectional artifact
        like the Keras ``Bidirectional`` wrapper (the same arguments); a model artifact like
        :class:`tvm_gru.models.Model`: ``outputs = model(*inputs)``.

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
        if artifact_kind(meta) == "model":  # the VM executable holds its constants: no weights file
            return dict.fromkeys(libs, _FILE_LIMIT)
        return {**dict.fromkeys(libs, _FILE_LIMIT), meta["weights"]: weights_limit(_weight_specs(meta))}

    with _Folder(root) as folder:
        meta, blobs = _read_listed(folder, keep)
    kind = artifact_kind(meta)
    if kind in ("layer", "bidirectional") and meta["target"]["family"] == "cuda":
        raise ArtifactError(f"{kind} artifacts run on CPUs only (the whole-sequence kernel has no CUDA schedule)")
    check_machine(meta["target"])
    weights = None
    if kind != "model":
        weights = _read_weights(blobs[meta["weights"]], _weight_specs(meta), meta["weights"], config_summary(meta))
    if meta["target"]["family"] != "cuda":
        default_num_threads()
    _load_runtime_libs(meta, blobs)
    if kind == "model" and tvm_ffi.get_global_func(VM_PROVIDES, allow_missing=True) is None:
        raise ArtifactError(f"no TVM runtime with the Relax VM is loaded: the metadata's runtime_libs lists "
                            f"{[e['path'] for e in meta.get('runtime_libs', ())]}; export the model again (it "
                            "bundles lib/libtvm_runtime.so)")
    kernel = blobs[meta["kernel"]["library"]]
    _check_runtime_symbols(kernel, meta)
    if meta["target"]["family"] == "cuda":
        _check_cuda_device(device_id, meta["target"].get("arch"))
    try:
        module = load_library_bytes(kernel, tvm_ffi.load_module)
    except (OSError, RuntimeError) as err:  # e.g. a temporary folder mounted noexec (set TMPDIR elsewhere)
        raise ArtifactError(f"cannot load {meta['kernel']['library']} from its private copy in the temporary "
                            f"folder: {err}") from err
    if kind == "model":
        return DeployedModel(meta, module)
    if kind == "layer":
        return DeployedGRU(meta, module, weights)
    if kind == "bidirectional":
        return DeployedBidirectional(meta, module, weights)
    return DeployedCell(meta, module, weights, device_id)


