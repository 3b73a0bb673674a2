"""Loading a deployed GRU cell or layer: numpy + apache-tvm-ffi only, never the TVM compiler.

An artifact is a folder written by :func:`tvm_gru.export.export_cell` or :func:`tvm_gru.export.export_layer`::

    tvm_gru_artifact.json   metadata: format version, kind, config, shapes, dtype, target, versions, SHA-256 per file
    kernel.so               the compiled kernels for the target: a cell's step kernel per batch size, or a
                            layer's whole-sequence kernels per batch size (see :mod:`.deployed_layer`)
    weights.npz             the packed weights, by kernel parameter name
    lib/                    the TVM runtime libraries the kernels need on that architecture (may be empty)
    python/tvm_gru_runtime  a copy of this module, so the folder runs with ``pip install apache-tvm-ffi numpy``

:func:`load` checks the format version, that this machine can run the target, and every file's SHA-256
*before* any native library is opened; then it loads the runtime libraries, the kernels and the weights.

``kind`` is "cell" (a :class:`DeployedCell`; artifacts written before the field existed are cells) or
"layer" (a :class:`~.deployed_layer.DeployedGRU`). ``format_version`` is the oldest loader format that reads
the artifact: cells are written as version 1 (any tvm_gru loader reads them), layers as version 2, so an
older loader refuses a layer artifact with "upgrade tvm_gru" instead of misreading it as a cell.

>>> cell = load("gru_arm")                                  # doctest: +SKIP
>>> out, [h] = cell(x, [h])                                 # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
from pathlib import Path

import numpy as np
import tvm_ffi

from .arrays import as_array
from .ffi_args import OutputPool

__all__ = ["load", "DeployedCell", "ArtifactError", "FORMAT", "FORMAT_VERSION", "KIND_VERSIONS", "METADATA",
           "verify"]

FORMAT = "tvm_gru.artifact"
FORMAT_VERSION = 2  # the newest format this loader reads
KIND_VERSIONS = {"cell": 1, "layer": 2}  # the format version each kind is written with (the oldest that reads it)
METADATA = "tvm_gru_artifact.json"
_MACHINES = {"x86_64": ("x86_64", "amd64"), "aarch64": ("aarch64", "arm64")}
_HWCAP = {"asimd": 1 << 1, "asimddp": 1 << 20}  # AArch64 AT_HWCAP bits (what qemu-user reports too)


class ArtifactError(ValueError):
    """The folder is not a loadable artifact for this machine (damaged, foreign, too new, wrong target)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_REQUIRED = {"config": dict, "target": dict, "kernel": dict, "weights": str, "files": dict, "input_dim": int,
             "lanes": int, "shapes": dict}


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


def _read_metadata(root: Path) -> dict:
    meta_path = root / METADATA
    if not meta_path.is_file():
        raise ArtifactError(f"{root} is not a tvm_gru artifact: {METADATA} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{meta_path} is not readable JSON ({err})") from err
    found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
    if found != FORMAT:
        raise ArtifactError(f"{meta_path} is not tvm_gru artifact metadata (format {found!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ArtifactError(f"{meta_path}: invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"artifact format version {version} is newer than this runtime reads "
                            f"({FORMAT_VERSION}); upgrade tvm_gru on this machine")
    for key, kind_of in _REQUIRED.items():
        if not isinstance(meta.get(key), kind_of) or isinstance(meta.get(key), bool):
            raise ArtifactError(f"{meta_path}: entry {key!r} must be a {kind_of.__name__}; received "
                                f"{type(meta[key]).__name__ if key in meta else 'nothing (missing)'}")
    for key in ("host_arch", "family"):
        if not isinstance(meta["target"].get(key), str):
            raise ArtifactError(f"{meta_path}: entry 'target' lacks the string {key!r}")
    kind = meta.get("kind", "cell")
    if kind not in KIND_VERSIONS:
        raise ArtifactError(f"{meta_path}: unknown artifact kind {kind!r}; expected one of {sorted(KIND_VERSIONS)}")
    if version < KIND_VERSIONS[kind]:
        raise ArtifactError(f"{meta_path}: a {kind} artifact needs format version >= {KIND_VERSIONS[kind]}; "
                            f"the metadata says {version}")
    return meta


def artifact_kind(meta: dict) -> str:
    """"cell" or "layer" (metadata without a ``kind`` field, written before layers existed, is a cell)."""
    return meta.get("kind", "cell")


def verify(path) -> dict:
    """Check metadata and every listed file's SHA-256; return the metadata. Opens no native library.

    Raises
    ------
    ArtifactError
        Missing or damaged metadata, a newer format, a missing file, a file outside the folder, or a hash
        mismatch.
    """
    root = _artifact_root(path)
    meta = _read_metadata(root)
    files = meta.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f"{root / METADATA} lists no files")
    for rel, digest in files.items():
        file = (root / rel).resolve()
        if root not in file.parents:
            raise ArtifactError(f"artifact file {rel!r} points outside {root}")
        if not file.is_file():
            raise ArtifactError(f"artifact file {rel} is missing from {root}")
        actual = _sha256(file)
        if actual != digest:
            raise ArtifactError(f"artifact file {rel} is damaged or was modified: SHA-256 {actual} != {digest} "
                                f"recorded at export")
    listed = {(root / rel).resolve() for rel in files} | {(root / METADATA).resolve()}
    extra = sorted(str(f.relative_to(root)) for f in root.rglob("*")
                   if f.is_file() and "__pycache__" not in f.parts and f.resolve() not in listed)
    if extra:
        # an added library next to the kernel could be picked up by the dynamic loader: refuse, do not ignore
        raise ArtifactError(f"artifact {root} holds files its metadata does not list: {extra}")
    return meta


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


def _check_weights(meta: dict, weights: dict) -> None:
    """The packed weights must have the shapes and dtypes the config implies (before any kernel sees them): the
    weight matrices in the metadata's ``weight_dtype``, the bias in the cell dtype."""
    cfg = meta["config"]
    units, input_dim, lanes = int(cfg["units"]), int(meta["input_dim"]), int(meta["lanes"])
    matrices = np.dtype(weight_dtype(meta))
    width = -(-units // lanes) * lanes
    gates = {"kernel_packed": (input_dim, 3), "recurrent_packed": (units, 3 if cfg["reset_after"] else 2),
             "candidate_packed": (units, 1), "bias_packed": (2, 3)}
    for name, array in weights.items():
        depth, count = gates.get(name, (None, None))
        expected = tuple(meta["shapes"].get(name, ()))
        want = np.dtype(cfg["dtype"]) if name == "bias_packed" else matrices
        if (array.shape != expected or depth is None or array.size != depth * count * width
                or array.dtype != want):
            raise ArtifactError(f"weight {name} has shape {array.shape} and dtype {array.dtype}; the config "
                                f"(units={units}, input_dim={input_dim}, dtype={cfg['dtype']}, weight_dtype="
                                f"{matrices.name}) implies {depth * count * width if depth else '?'} {want.name} "
                                f"values of shape {expected}")


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
                            f"(target {target['tvm']}); export for an older mcpu")


# ---------------------------------------------------------------------------------------- native libraries
_LOADED: dict = {}


def _load_runtime_libs(root: Path, meta: dict) -> None:
    """dlopen the bundled TVM runtime libraries (RTLD_GLOBAL), unless a TVM runtime is already in-process."""
    for entry in meta.get("runtime_libs", ()):
        provides = entry.get("provides")
        if provides and tvm_ffi.get_global_func(provides, allow_missing=True) is not None:
            continue  # e.g. `import tvm` already loaded its own copy: a second copy would register twice
        path = str((root / entry["path"]).resolve())
        if path in _LOADED:
            continue
        try:
            _LOADED[path] = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError as err:
            hint = " (CUDA artifacts need the NVIDIA driver, libcuda.so.1)" if "cuda" in entry["path"] else ""
            raise ArtifactError(f"cannot load {entry['path']} of {root}{hint}: {err}") from err


def _check_cuda_device(device_id: int, arch) -> None:
    attr = tvm_ffi.get_global_func("runtime.GetDeviceAttr", allow_missing=True)
    if attr is None or not attr(2, device_id, 0):  # (kDLCUDA, id, kExist)
        raise ArtifactError(f"this is a CUDA artifact and there is no CUDA device {device_id} here (or no driver)")
    if not arch:
        return
    # Device code is SASS for one architecture: it runs on the same major version, same or newer minor.
    want = (int(arch[3:-1]), int(arch[-1]))
    have = tuple(int(v) for v in str(attr(2, device_id, 4)).split("."))  # kComputeVersion, e.g. "9.0"
    if have[0] != want[0] or have[1] < want[1]:
        raise ArtifactError(f"this artifact holds device code for {arch}; CUDA device {device_id} is "
                            f"sm_{have[0]}{have[1]}: export it again with target={{'name': 'cuda', "
                            f"'arch': 'sm_{have[0]}{have[1]}'}}")


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
        See :func:`verify` and :func:`check_machine`; nothing native is opened before these checks pass.
    """
    root = _artifact_root(path)
    if isinstance(device_id, bool) or not isinstance(device_id, int):
        raise TypeError(f"`device_id` must be a non-negative int; received {device_id!r}")
    if device_id < 0:
        raise ValueError(f"`device_id` must be a non-negative int; received {device_id}")
    meta = verify(root)
    layer = artifact_kind(meta) == "layer"
    if layer and meta["target"].get("family") == "cuda":
        raise ArtifactError("layer artifacts run on CPUs only (the whole-sequence kernel has no CUDA schedule)")
    check_machine(meta["target"])
    with np.load(root / meta["weights"], allow_pickle=False) as data:
        try:
            weights = {name: data[name] for name in meta["kernel"]["weights"]}
        except KeyError as err:
            raise ArtifactError(f"{root / meta['weights']} lacks the weight {err}") from err
    if layer:
        from .deployed_layer import check_weights  # noqa: PLC0415

        check_weights(meta, weights)
    else:
        _check_weights(meta, weights)
    if meta["target"]["family"] != "cuda" and "TVM_NUM_THREADS" not in os.environ:
        # TVM's CPU thread pool reads it once, at its first parallel launch (unset, it was measured slow)
        try:
            os.environ["TVM_NUM_THREADS"] = str(len(os.sched_getaffinity(0)))
        except AttributeError:
            os.environ["TVM_NUM_THREADS"] = str(os.cpu_count() or 1)
    _load_runtime_libs(root, meta)
    if meta["target"]["family"] == "cuda":
        _check_cuda_device(device_id, meta["target"].get("arch"))
    module = tvm_ffi.load_module(str((root / meta["kernel"]["library"]).resolve()))
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


class DeployedCell:
    """A GRU cell loaded from an artifact: the Keras call on the exported kernels and weights.

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
            dropout kernels); with both rates 0 it changes nothing, as in Keras.

        Returns
        -------
        output : (B, H) array: numpy for host inputs. When a CUDA artifact receives GPU tensors, the output
            stays on the GPU: a tensor of the state's type when it has ``new_empty`` (torch), else a
            DLPack-exportable ``tvm_ffi.Tensor``
        new_states : ``[output]`` for list/tuple states, ``output`` for a bare state
        """
        if training and (self.config.get("dropout", 0.0) > 0 or self.config.get("recurrent_dropout", 0.0) > 0):
            raise ValueError(f"`training`={training!r}: this deployed cell was exported with dropout="
                             f"{self.config.get('dropout')} and recurrent_dropout={self.config.get('recurrent_dropout')}, "
                             "which apply only in training, and the artifact has no dropout kernels. Call it with "
                             "training=False or None (the Keras inference result), or train with tvm_gru.GRUCell")
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
