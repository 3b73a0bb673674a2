"""Deployable artifacts: a GRU cell or GRU layer compiled for a target, in one folder that runs without the
TVM compiler.

>>> cell = tvm_gru.GRUCell(256); cell.build((1, 128))                      # doctest: +SKIP
>>> export_cell(cell, "gru_arm", target={"name": "aarch64", "mcpu": "cortex-a72"})  # doctest: +SKIP
>>> layer = tvm_gru.GRU(256, return_sequences=True); layer.build((1, None, 128))     # doctest: +SKIP
>>> export_layer(layer, "gru_layer_arm", target="aarch64", batch=[1, 8])   # doctest: +SKIP

then, on the board (``pip install apache-tvm-ffi numpy``)::

    import sys; sys.path.insert(0, "gru_arm/python/tvm_gru_runtime.zip")   # the bundled loader (no bytecode)
    import tvm_gru_runtime
    cell = tvm_gru_runtime.load("gru_arm")
    out, [h] = cell(x, [h])
    layer = tvm_gru_runtime.load("gru_layer_arm")   # a DeployedGRU: layer(inputs, mask=..., initial_state=...)
    seq = layer(x_btI)

The folder layout and the loader are in :mod:`tvm_gru.runtime.artifact`. What goes in ``lib/``:

* CPU kernels that call into the TVM runtime (parallel loops, workspaces) get ``libtvm_runtime.so`` for the
  target's architecture: this machine's copy from the apache-tvm wheel, or, for aarch64 on an x86 host, the
  one in the apache-tvm aarch64 wheel (downloaded once with pip into ``$TVM_GRU_RUNTIME_LIBS``).
* CUDA kernels get ``libtvm_runtime.so`` + ``libtvm_runtime_cuda.so`` (the module loader for the embedded
  fatbin/cubin) and ``libcudart`` when found; the driver (``libcuda.so.1``) is the device's own.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import logging
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import __version__, targets
from .runtime import artifact
from .runtime.verified_files import read_regular_file

__all__ = ["export_cell", "export_layer", "register_cli"]

log = logging.getLogger(__name__)

_TVM_WHEEL = "0.27.0.post1"
_X86_FEATURES = {"haswell": ["avx2", "fma"], "skylake-avx512": ["avx2", "fma", "avx512f"]}


def _runtime_cache() -> Path:
    return Path(os.environ.get("TVM_GRU_RUNTIME_LIBS", Path.home() / ".cache" / "tvm_gru_runtime_libs"))


def _tvm_lib_dir() -> Path:
    import tvm  # noqa: PLC0415

    return Path(tvm.__file__).resolve().parent / "lib"


def _host_arch() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def aarch64_runtime_lib() -> Path:
    """The aarch64 ``libtvm_runtime.so`` of apache-tvm, from the cache or the aarch64 wheel (pip, 94 MB once)."""
    path = _runtime_cache() / _TVM_WHEEL / "aarch64" / "libtvm_runtime.so"
    if path.is_file():
        return path
    if _host_arch() == "aarch64":
        return _tvm_lib_dir() / "libtvm_runtime.so"
    import zipfile  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--platform",
               "manylinux_2_28_aarch64", "--python-version", "3.11", "--no-deps", "-d", tmp,
               f"apache-tvm=={_TVM_WHEEL}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"could not download the apache-tvm aarch64 wheel for its libtvm_runtime.so "
                               f"({proc.stderr.strip()[-500:]}); run .ci/setup_qemu.sh or set "
                               f"TVM_GRU_RUNTIME_LIBS to a folder holding {_TVM_WHEEL}/aarch64/libtvm_runtime.so")
        wheel = next(Path(tmp).glob("apache_tvm-*.whl"))
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as z:
            name = next(n for n in z.namelist() if n.endswith("tvm/lib/libtvm_runtime.so"))
            tmp_lib = path.with_suffix(".tmp")
            tmp_lib.write_bytes(z.read(name))
            os.replace(tmp_lib, path)
    return path


# ---------------------------------------------------------------------------------------- compile
def _kernel_specs(cell, batches, lanes, weight_dtype=None):
    from .config import StepSpec  # noqa: PLC0415

    return {b: StepSpec(cell.config, batch=b, input_dim=cell.input_dim, lanes=lanes, weight_dtype=weight_dtype)
            for b in batches}


def compile_kernels(specs: dict, target):
    """Compile one step function per batch size into one module: ``step_b{B}``. Returns (executable, names)."""
    import tvm  # noqa: PLC0415

    from .build import scheduled_module  # noqa: PLC0415

    funcs = {}
    for batch, spec in specs.items():
        name = f"step_b{batch}"
        funcs[name] = scheduled_module(spec, target)["main"].with_attr("global_symbol", name)
    mod = tvm.IRModule(funcs)
    if target.kind.name == "cuda":
        from .cuda_toolchain import cuda_compile_env  # noqa: PLC0415

        with cuda_compile_env(), target:
            return tvm.compile(mod, target=target), list(funcs)
    with target:
        return tvm.compile(mod, target=target), list(funcs)


def _export_library(executable, path: Path, family: str) -> None:
    if family == "aarch64" and _host_arch() != "aarch64":
        from tvm.support import cc  # noqa: PLC0415

        if shutil.which("aarch64-linux-gnu-g++") is None:
            raise RuntimeError("exporting for aarch64 needs the cross compiler aarch64-linux-gnu-g++ "
                               "(Debian: apt-get install g++-aarch64-linux-gnu; or run .ci/setup_qemu.sh)")
        executable.export_library(str(path), fcompile=cc.cross_compiler("aarch64-linux-gnu-g++"))
        strip = shutil.which("aarch64-linux-gnu-strip")
    else:
        executable.export_library(str(path))
        strip = shutil.which("strip") if _host_arch() == ("aarch64" if family == "aarch64" else "x86_64") else None
    if strip:  # debug info is most of an exported library; the dynamic symbols the loader needs stay
        subprocess.run([strip, "--strip-debug", str(path)], check=True)


def _needs_tvm_runtime(library: Path) -> bool:
    # apache-tvm-ffi exports no TVMBackend* symbols: parallel launch and workspaces live in libtvm_runtime.
    return b"TVMBackend" in library.read_bytes()


def _runtime_libs(family: str, kernel: Path) -> list:
    """[(source path, a global function it registers)] in load order; the loader skips a library whose function
    is already registered (a TVM runtime already in the process)."""
    provides = "runtime.TVMTensorAllocWithScope"
    if family == "cuda":
        libs = [(_tvm_lib_dir() / "libtvm_runtime.so", provides),
                (_tvm_lib_dir() / "libtvm_runtime_cuda.so", "ffi.Module.load_from_bytes.cuda")]
        from .cuda_toolchain import find_cudart  # noqa: PLC0415

        cudart = find_cudart()
        if cudart is not None:  # skipped at load when a CUDA-enabled TVM runtime is already in the process
            libs.insert(0, (cudart, "ffi.Module.load_from_bytes.cuda"))
        return libs
    if not _needs_tvm_runtime(kernel):
        return []
    if family == "aarch64":
        return [(aarch64_runtime_lib(), provides)]
    if _host_arch() != "x86_64":
        raise RuntimeError("exporting parallel x86 kernels from a non-x86 host is not supported")
    return [(_tvm_lib_dir() / "libtvm_runtime.so", provides)]


def _plain(obj):
    """TVM FFI containers (Map, Array, String) -> JSON-ready dict/list/str."""
    if isinstance(obj, (bool, int, float)) or obj is None:
        return obj
    if isinstance(obj, str):
        return str(obj)
    if hasattr(obj, "items"):
        return {str(k): _plain(v) for k, v in obj.items()}
    if hasattr(obj, "__iter__"):
        return [_plain(v) for v in obj]
    return str(obj)


def _target_meta(target, family: str, weight_dtype: str = "float32") -> dict:
    attrs = target.attrs
    meta = {"family": family, "tvm": _plain(target.export()),
            "host_arch": "aarch64" if family == "aarch64" else "x86_64", "cpu_features": []}
    if family == "aarch64":
        mattr = [str(a) for a in attrs["mattr"]] if "mattr" in attrs else []
        meta["cpu_features"] = ["asimd"] + (["asimddp"] if "+dotprod" in mattr else [])
    elif family == "x86":
        mcpu = str(attrs["mcpu"]) if "mcpu" in attrs else ""
        meta["cpu_features"] = list(_X86_FEATURES["skylake-avx512"] if mcpu in targets.AVX512_MCPUS
                                    else _X86_FEATURES["haswell"] if mcpu else [])
        if mcpu and weight_dtype == "float16":  # vcvtph2ps widens the half weights (every AVX2 CPU has it)
            meta["cpu_features"].append("f16c")
    else:
        meta["arch"] = str(attrs["arch"]) if "arch" in attrs else None
    return meta


def _versions() -> dict:
    from importlib import metadata as md  # noqa: PLC0415

    out = {"tvm_gru": __version__, "numpy": np.__version__, "python": platform.python_version()}
    for dist in ("apache-tvm", "apache-tvm-ffi"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


_RUNTIME_FILES = ("arrays.py", "artifact.py", "buffers.py", "deployed_layer.py", "ffi_args.py", "layer_calls.py",
                  "verified_files.py")
_RUNTIME_INIT = ('"""tvm_gru deployed cell/layer runtime (numpy + apache-tvm-ffi only). See artifact.py."""\n'
                 "from .artifact import ArtifactError, DeployedCell, load, verify\n"
                 "from .deployed_layer import DeployedGRU\n\n"
                 '__all__ = ["load", "verify", "DeployedCell", "DeployedGRU", "ArtifactError"]\n')


def _copy_runtime_package(dest: Path) -> list:
    """The runtime loader as a standalone package in one zip, ``python/tvm_gru_runtime.zip`` (numpy + tvm_ffi
    only), imported with ``sys.path.insert(0, "<artifact>/python/tvm_gru_runtime.zip")``.

    A zip rather than a folder of sources: Python imports it from the zip alone, so no ``__pycache__`` is read
    or written in the artifact, and no file planted next to it (a .pyc, an extension module) is imported. Sources
    only, with fixed timestamps, so the same runtime gives the same bytes.
    """
    import zipfile  # noqa: PLC0415

    src = Path(artifact.__file__).parent
    path = dest / "python" / "tvm_gru_runtime.zip"
    path.parent.mkdir(parents=True)
    sources = {"__init__.py": _RUNTIME_INIT.encode(), **{n: (src / n).read_bytes() for n in _RUNTIME_FILES}}
    with zipfile.ZipFile(path, "x", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in sources.items():
            info = zipfile.ZipInfo(f"tvm_gru_runtime/{name}", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            z.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    return [path]


def _batch_list(batch) -> list:
    batches = sorted({int(batch)} if np.isscalar(batch) else {int(b) for b in batch})
    if not batches or batches[0] < 1:
        raise ValueError(f"`batch` must be a positive int or a non-empty sequence of them; received {batch!r}")
    return batches


# ---------------------------------------------------------------------------------------- destination
# Only a tvm_gru artifact (or an empty folder) is ever replaced, checked before compiling and again at the swap.
_METADATA_LIMIT = 16 << 20  # an artifact's metadata is a few kB
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2  # linux/fs.h


def check_destination(path, overwrite: bool, arg: str = "`path`", flag: str = "overwrite=True") -> Path:
    """``path`` as a folder an artifact may be written to, or an error saying why it may not.

    Parameters
    ----------
    path : str or os.PathLike
        A new path; with ``overwrite``, also an empty folder or a tvm_gru artifact folder (its metadata names
        the artifact format and a kind).
    overwrite : bool
    arg, flag : str
        How the path and the overwrite switch are named in messages (the CLI says ``--out``, ``--overwrite``).

    Raises
    ------
    ValueError
        An empty path, or one that resolves to the filesystem root, the home folder, the working folder or a
        folder above it: never a destination, whatever ``overwrite`` says.
    FileExistsError
        Something is at ``path`` that is not replaced: anything without ``overwrite``; a symbolic link, a file
        or a non-empty folder that is not an artifact with it.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{arg} must be a str or os.PathLike naming the artifact folder; received "
                        f"{type(path).__name__}")
    raw = os.fsdecode(os.fspath(path))
    if not raw.strip():
        raise ValueError(f"{arg} must name the artifact folder; received {raw!r} (an unset variable?)")
    dest = Path(raw)
    _refuse_shared_folder(dest, arg)
    _destination_state(dest, overwrite, arg, flag)
    return dest


def _refuse_shared_folder(dest: Path, arg: str) -> None:
    resolved, cwd = dest.resolve(), Path.cwd().resolve()
    try:
        home = Path.home().resolve()
    except RuntimeError:  # no HOME and no password entry
        home = None
    shared = [(resolved == Path(resolved.anchor), "the filesystem root"), (resolved == home, "the home folder"),
              (resolved == cwd, "the working folder"), (resolved in cwd.parents, "a folder above the working folder")]
    reason = next((reason for matches, reason in shared if matches), None)
    if reason is not None:
        raise ValueError(f"{arg} {str(dest)!r} is {reason} ({resolved}); expected a folder of its own for the "
                         "artifact (this one is never written or replaced)")


def _destination_state(dest: Path, overwrite: bool, arg: str, flag: str) -> str:
    """"absent", "empty" (a folder) or "artifact"; raises FileExistsError for anything that is not replaced."""
    try:
        info = os.lstat(dest)
    except FileNotFoundError:
        return "absent"
    if stat.S_ISLNK(info.st_mode):
        raise FileExistsError(f"{arg} {dest} is a symbolic link; expected a new path or a tvm_gru artifact folder "
                              "(links are neither followed nor replaced)")
    if not overwrite:
        raise FileExistsError(f"{arg} {dest} exists; pass {flag} to replace it (a tvm_gru artifact only)")
    if not stat.S_ISDIR(info.st_mode):
        raise FileExistsError(f"{arg} {dest} is a file; expected a new path or a tvm_gru artifact folder to replace "
                              "(files are never replaced)")
    problem = _not_an_artifact(dest)
    if problem is None:
        return "artifact"
    with os.scandir(dest) as entries:
        if next(entries, None) is None:
            return "empty"
    raise FileExistsError(f"{arg} {dest} is a folder that is not a tvm_gru artifact ({problem}); expected a new "
                          f"path, an empty folder or an artifact folder: {flag} replaces artifacts only")


def _not_an_artifact(folder: Path):
    """Why ``folder`` is not a tvm_gru artifact (a real folder whose metadata names the format and a kind), or
    None when it is one."""
    if os.path.islink(folder) or not folder.is_dir():
        return "not a folder"
    try:
        meta = json.loads(read_regular_file(folder / artifact.METADATA, _METADATA_LIMIT))
    except FileNotFoundError:
        return f"it has no {artifact.METADATA}"
    except (OSError, ValueError, RecursionError) as err:
        return f"its {artifact.METADATA} is not readable JSON ({type(err).__name__}: {err})"
    found = meta.get("format") if isinstance(meta, dict) else None
    kind = meta.get("kind") if isinstance(meta, dict) else None
    if found != artifact.FORMAT or not isinstance(kind, str) or kind not in artifact.KIND_VERSIONS:
        return (f"its {artifact.METADATA} names format {found!r} and kind {kind!r}; expected format "
                f"{artifact.FORMAT!r} and a kind in {sorted(artifact.KIND_VERSIONS)}")
    return None


@functools.lru_cache(maxsize=1)
def _libc_renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc < 2.28, musl without the wrapper
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux ``renameat2``; False where it or the flag is not supported (then the caller falls back)."""
    fn = _libc_renameat2()
    if fn is None:
        return False
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # a filesystem without the flag
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


_CHANGED = (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR)


def _publish(new: Path, dest: Path, overwrite: bool) -> None:
    """Move the finished folder ``new`` (ours) to ``dest``, checking ``dest`` again at this moment.

    A new path is taken with ``RENAME_NOREPLACE`` (else a plain rename, which at worst replaces an empty
    folder); an empty folder is replaced by a rename, which fails if it has been filled meanwhile; an artifact
    is swapped out (:func:`_swap_artifact`) and only then removed. Whatever goes wrong, nothing at ``dest`` is
    removed, and neither is ``new`` unless it still holds an artifact (ours, or one that was swapped out).
    """
    try:
        state = _destination_state(dest, overwrite, "`path`", "overwrite=True")
        if state == "artifact":
            old = _swap_artifact(new, dest)
        else:
            old = None
            if state == "empty" or not _renameat2(new, dest, _RENAME_NOREPLACE):
                if state == "absent" and os.path.lexists(dest):
                    raise OSError(errno.EEXIST, "created meanwhile", str(dest))
                os.rename(new, dest)
    except OSError as err:
        _remove_artifact(new)
        if err.errno not in _CHANGED:  # also the FileExistsError of the check, which has its own message
            raise
        raise FileExistsError(f"`path` {dest} appeared or changed while the artifact was being written "
                              f"({err.strerror}); it was left as it is (only a new path, an empty folder or, with "
                              "overwrite=True, an artifact is replaced)") from err
    except BaseException:
        _remove_artifact(new)
        raise
    if old is not None:
        _remove_artifact(old)  # checked to be an artifact, and moved where only this call knows it


def _remove_artifact(folder: Path) -> None:
    problem = _not_an_artifact(folder)
    if problem is None:
        shutil.rmtree(folder, ignore_errors=True)
    elif os.path.lexists(folder):  # cannot happen unless a swap back failed: leave it for a person to look at
        log.warning("tvm_gru: left %s in place: %s", folder, problem)


def _swap_artifact(new: Path, dest: Path) -> Path:
    """Put ``new`` at ``dest`` in one step and return where the previous artifact now is.

    With ``RENAME_EXCHANGE`` the two trade places atomically; otherwise the old folder is renamed aside first.
    Either way what was taken out is checked again to be an artifact, and put back if it is not.
    """
    if _renameat2(new, dest, _RENAME_EXCHANGE):
        problem = _not_an_artifact(new)
        if problem is None:
            return new
        _renameat2(new, dest, _RENAME_EXCHANGE)  # not an artifact after all: put it back
        raise OSError(errno.EEXIST, f"it is no longer an artifact: {problem}", str(dest))
    aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
    try:
        os.rename(dest, aside)  # onto the empty folder made for it
    except OSError:
        aside.rmdir()
        raise
    problem = _not_an_artifact(aside)
    if problem is not None:
        try:
            os.rename(aside, dest)
        except OSError as err:  # the path was taken again meanwhile: say where the folder is
            raise OSError(errno.EEXIST, f"it is no longer an artifact ({problem}); that folder is now at {aside}",
                          str(dest)) from err
        raise OSError(errno.EEXIST, f"it is no longer an artifact: {problem}", str(dest))
    try:
        os.rename(new, dest)
    except OSError as err:  # something took the path meanwhile: keep the old artifact, tell where
        raise OSError(err.errno, f"{err.strerror}; the previous artifact is kept at {aside}", str(dest)) from err
    return aside


def _write_artifact(dest: Path, executable, family: str, packed: dict, meta: dict, overwrite: bool) -> Path:
    """Write kernel.so, weights.npz, lib/, python/ and the metadata (``meta`` + files, hashes) into a temporary
    folder next to ``dest``, then move it into place (:func:`_publish`: a reader never sees a half-written
    artifact, and only an artifact or an empty folder is ever replaced)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        files = [tmp / "kernel.so", tmp / "weights.npz"]
        _export_library(executable, files[0], family)
        np.savez(files[1], **packed)
        libs = []
        (tmp / "lib").mkdir()
        for src, provides in _runtime_libs(family, files[0]):
            dst = tmp / "lib" / Path(src).name
            shutil.copyfile(src, dst)
            files.append(dst)
            libs.append({"path": f"lib/{dst.name}", "provides": provides})
        files += _copy_runtime_package(tmp)
        meta = {**meta, "weights": "weights.npz", "runtime_libs": libs, "versions": _versions(),
                "files": {f.relative_to(tmp).as_posix(): artifact._sha256(f) for f in files}}
        (tmp / artifact.METADATA).write_text(json.dumps(meta, indent=2) + "\n")
        tmp.chmod(0o755)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish(tmp, dest, overwrite)
    return dest


def export_cell(cell, path, target=None, batch=1, overwrite: bool = False, weight_dtype=None) -> Path:
    """Write a deployable artifact of a built cell for ``target``.

    Parameters
    ----------
    cell : tvm_gru.GRUCell
        A built cell (its weights are exported; dropout does not apply to deployed cells).
    path : str or Path
        The artifact folder to create.
    target : None, str, dict or tvm.target.Target
        As for :func:`tvm_gru.targets.resolve`: "host" (default), "x86", "aarch64"/"arm", "cuda", or a dict
        such as ``{"name": "aarch64", "mcpu": "cortex-a72"}`` / ``{"name": "cuda", "arch": "sm_90"}``.
    batch : int or sequence of int
        Batch sizes to compile a kernel for (kernels are specialised on the batch size).
    overwrite : bool
        Replace an existing folder at ``path``.
    weight_dtype : None, "float32" or "float16"
        Storage dtype of the packed kernel and recurrent kernel in the artifact (None: the cell's
        ``weight_dtype``, float32 by default). "float16" (float32 cells only): half the weight bytes, each
        weight rounded to the nearest half and widened to float32 before its multiply-add; inputs, states, bias,
        accumulation and gate math stay float32.

    Returns
    -------
    Path
        The artifact folder. Load it with :func:`tvm_gru.load` (or the bundled ``python/tvm_gru_runtime.zip``).
    """
    if not getattr(cell, "built", False):
        raise ValueError("`export_cell` needs a built cell: call build(input_shape), set_weights or the cell first")
    from .config import check_weight_dtype  # noqa: PLC0415

    batches = _batch_list(batch)
    wdt = check_weight_dtype(cell.config.dtype, getattr(cell, "weight_dtype", None) if weight_dtype is None
                             else weight_dtype)
    dest = check_destination(path, overwrite)
    target = targets.resolve(target)
    family = targets.family(target)
    lanes = targets.lanes(target, cell.config.dtype)
    specs = _kernel_specs(cell, batches, lanes, wdt)
    executable, names = compile_kernels(specs, target)

    from .packing import pack_weights  # noqa: PLC0415

    weights = cell.get_weights()
    packed = pack_weights(cell.config, weights[0], weights[1], weights[2] if cell.config.use_bias else None, lanes,
                          wdt)
    meta = {
        "format": artifact.FORMAT, "format_version": artifact.KIND_VERSIONS["cell"], "kind": "cell",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": cell.config.to_dict(), "input_dim": cell.input_dim, "units": cell.config.units,
        "dtype": cell.config.dtype, "weight_dtype": wdt, "batch_sizes": batches, "lanes": lanes,
        "shapes": {"inputs": ["batch", cell.input_dim], "states": ["batch", cell.config.units],
                   **{n: list(a.shape) for n, a in packed.items()}},
        "target": _target_meta(target, family, wdt),
        "kernel": {"library": "kernel.so", "functions": {str(b): n for b, n in zip(batches, names)},
                   "weights": list(packed), "args": ["x", "h", *packed, "h_new"]},
    }
    return _write_artifact(dest, executable, family, packed, meta, overwrite)


# ---------------------------------------------------------------------------------------- layers
_LAYER_FLAGS = ("return_sequences", "return_state", "go_backwards", "stateful", "time_major", "zero_output_for_mask")


def compile_sequence_kernels(layer, batches, target, lanes: int, masking: bool):
    """Compile the layer's whole-sequence kernels for every batch size into one module.

    Per batch B: ``seq_b{B}`` (the rule's default schedule), ``seq_b{B}_masked`` (with ``masking``), and, when
    the rule has a serial schedule for short calls (streaming), ``seq_b{B}_short`` / ``seq_b{B}_short_masked``.
    A streaming layer (stateful, last output only) also gets ``frame_b{B}``, the step kernel, where the rule runs
    single frames on it (``CPUSequenceRule.frames_on_step_kernel``).
    Returns ``(executable, {str(B): {"full": name, "masked": name, "short": name, "short_steps": n, ...}})``.
    """
    import tvm  # noqa: PLC0415

    from .build import scheduled_module  # noqa: PLC0415
    from .config import StepSpec  # noqa: PLC0415
    from .sequence import SequenceSpec, _rule, compile_sequence_module, scheduled_sequence  # noqa: PLC0415

    rule = _rule(target)
    funcs, table = {}, {}
    for batch in batches:
        entry = table[str(batch)] = {}
        for masked in (False, True) if masking else (False,):
            spec = SequenceSpec(layer.cell.config, batch=batch, input_dim=layer.input_dim, lanes=lanes,
                                time_major=layer.time_major, masked=masked,
                                zero_output_for_mask=layer.zero_output_for_mask,
                                return_sequences=layer.return_sequences)
            variants = [("full", rule.default_schedule(spec, target))]
            short = rule.short_schedule(spec, target)
            if short is not None:
                variants.append(("short", short[1]))
                entry["short_steps"] = int(short[0])
            for kind, schedule in variants:
                key = kind if not masked else ("masked" if kind == "full" else "short_masked")
                name = f"seq_b{batch}" + ("" if kind == "full" else "_short") + ("_masked" if masked else "")
                func = scheduled_sequence(spec, target, schedule)["main"]
                funcs[name] = func.with_attr("global_symbol", name)
                entry[key] = name
            streams = layer.stateful and not layer.return_sequences and not layer.return_state  # DeployedGRU's frames
            if not masked and streams and rule.frames_on_step_kernel(spec, target):
                step = StepSpec(layer.cell.config, batch=batch, input_dim=layer.input_dim, lanes=lanes)
                name = entry["frame"] = f"frame_b{batch}"
                funcs[name] = scheduled_module(step, target)["main"].with_attr("global_symbol", name)
    return compile_sequence_module(tvm.IRModule(funcs), target), table  # the in-process compile's passes


def export_layer(layer, path, target=None, batch=1, masking: bool = True, overwrite: bool = False) -> Path:
    """Write a deployable artifact of a built :class:`tvm_gru.GRU` layer for ``target``.

    The artifact holds the fused whole-sequence kernels (symbolic sequence length: any T runs without
    recompiling) for each batch size, the packed weights and the layer's options (return_sequences,
    return_state, go_backwards, stateful, time_major, zero_output_for_mask). :func:`tvm_gru.load` returns a
    :class:`~tvm_gru.runtime.deployed_layer.DeployedGRU`, called like the Keras layer.

    Parameters
    ----------
    layer : tvm_gru.GRU
        A built layer (its weights are exported; dropout does not apply to deployed layers).
    path : str or Path
        The artifact folder to create.
    target : None, str, dict or tvm.target.Target
        "host" (default), "x86", "aarch64"/"arm" (cross-compiled), or a dict such as
        ``{"name": "aarch64", "mcpu": "cortex-a72"}``. CUDA is refused: the sequence kernel has CPU schedules only.
    batch : int or sequence of int
        Batch sizes to compile kernels for (kernels are specialised on the batch size, not on the length).
    masking : bool
        Also compile the masked kernels, so the deployed layer takes ``mask=`` (default). False halves the
        kernel count; a ``mask`` passed to such a layer then raises.
    overwrite : bool
        Replace an existing folder at ``path``.

    Returns
    -------
    Path
        The artifact folder.
    """
    if not getattr(layer, "built", False):
        raise ValueError("`export_layer` needs a built layer: call build(input_shape), set_weights or the layer "
                         "first")
    batches = _batch_list(batch)
    dest = check_destination(path, overwrite)
    target = targets.resolve(target)
    family = targets.family(target)
    from .schedules.sequence import RULES  # noqa: PLC0415

    if family == "cuda" or not any(rule.is_target(target) for rule in RULES):
        raise ValueError(f"cannot export a GRU layer for target {family!r} ({target.kind.name}): the "
                         "whole-sequence kernel has CPU schedules only (x86, aarch64; see schedules/sequence.py) and "
                         "the deployed layer runs on CPUs. Export the cell for this target instead "
                         "(layer.cell.export(path, target=...)) and run the time loop around it, or export the "
                         "layer for 'host', 'x86' or 'aarch64'")
    cell = layer.cell
    config = cell.config
    lanes = targets.lanes(target, config.dtype)
    executable, table = compile_sequence_kernels(layer, batches, target, lanes, bool(masking))

    from .sequence import pack_sequence_weights  # noqa: PLC0415

    packed = pack_sequence_weights(config, cell.kernel, cell.recurrent_kernel, cell.bias if config.use_bias else None,
                                   lanes)
    steps_first = layer.time_major
    meta = {
        "format": artifact.FORMAT, "format_version": artifact.KIND_VERSIONS["layer"], "kind": "layer",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config.to_dict(), "input_dim": layer.input_dim, "units": config.units,
        "dtype": config.dtype, "batch_sizes": batches, "lanes": lanes,
        "layer": {"name": layer.name, **{flag: bool(getattr(layer, flag)) for flag in _LAYER_FLAGS},
                  "masking": bool(masking)},
        "keras_config": layer.get_config(),
        "shapes": {"inputs": ["time", "batch", layer.input_dim] if steps_first else ["batch", "time", layer.input_dim],
                   "mask": ["time", "batch"] if steps_first else ["batch", "time"],
                   "states": ["batch", config.units], **{n: list(a.shape) for n, a in packed.items()}},
        "target": _target_meta(target, family),
        "kernel": {"library": "kernel.so", "functions": table, "weights": list(packed),
                   "args": ["x", "h0", "[mask]", *packed, "[sequence]", "last", "state", "reverse"],
                   # the "frame" functions (single streamed frames): the step kernel, R_h block-major (NB, H, 1, V),
                   # rebuilt from candidate_packed at load time
                   "frame_args": ["x (B, I)", "h (B, H)", *packed, "h_new (B, H)"]},
    }
    return _write_artifact(dest, executable, family, packed, meta, overwrite)


# ---------------------------------------------------------------------------------------- CLI
def _cell_from_files(args):
    from .cell import GRUCell  # noqa: PLC0415

    if args.onnx:
        try:
            from .onnx_io import from_onnx  # noqa: PLC0415
        except ImportError as err:
            raise SystemExit(f"tvm-gru export --onnx needs tvm_gru.onnx_io ({err})") from err
        loaded = from_onnx(args.onnx)
        loaded = loaded[0] if isinstance(loaded, tuple) else loaded
        return getattr(loaded, "cell", loaded)  # a GRU layer holds its cell
    if args.config:
        config = json.loads(Path(args.config).read_text())
        config = config.get("config", config)  # a Keras layer dict {"class_name": ..., "config": {...}}
        cell = GRUCell.from_config(config)
        if args.weights:
            with np.load(args.weights) as data:
                keys = [k for k in ("kernel", "recurrent_kernel", "bias") if k in data.files] or data.files
                cell.set_weights([data[k] for k in keys])
        elif args.input_dim:
            cell.build((1, args.input_dim))
        return cell
    cell = GRUCell(args.units, reset_after=args.reset_after, implementation=args.implementation,
                   dtype=args.dtype, seed=args.seed)
    cell.build((1, args.input_dim))
    return cell


def _is_layer_request(args) -> bool:
    """--layer, or a --config holding a Keras GRU layer (class_name "GRU", or a flat config with layer flags)."""
    if args.layer:
        return True
    if args.config:
        config = json.loads(Path(args.config).read_text())
        if isinstance(config, dict) and "class_name" in config:
            return config["class_name"] in ("GRU", "GRUV1")
        return isinstance(config, dict) and "return_sequences" in config
    return False


def _layer_flags(args) -> dict:
    return {flag: True for flag in _LAYER_FLAGS if getattr(args, flag, False)}


def _layer_from_files(args):
    from .layer import GRU  # noqa: PLC0415

    flags = _layer_flags(args)
    if args.onnx:
        from .onnx_io import from_onnx  # noqa: PLC0415

        loaded = from_onnx(args.onnx)
        layer = loaded[0] if isinstance(loaded, tuple) else loaded
        for flag, value in flags.items():
            setattr(layer, flag, value)
        return layer
    if args.config:
        config = json.loads(Path(args.config).read_text())
        config = {**config.get("config", config), **flags}
        layer = GRU.from_config(config)
        if args.weights:
            with np.load(args.weights) as data:
                keys = [k for k in ("kernel", "recurrent_kernel", "bias") if k in data.files] or data.files
                layer.set_weights([data[k] for k in keys])
        elif args.input_dim:
            layer.build((1, 1, args.input_dim))
        return layer
    layer = GRU(args.units, reset_after=args.reset_after, implementation=args.implementation, dtype=args.dtype,
                seed=args.seed, **flags)
    layer.build((1, 1, args.input_dim))
    return layer


def _target_arg(args):
    options = {k: v for k, v in (("mcpu", args.mcpu), ("arch", args.arch)) if v}
    name = args.target or "host"
    return {"name": name, **options} if options else name


def _cli(args) -> int:
    batches = [int(b) for b in args.batches.split(",")] if args.batches else [args.batch]
    if _is_layer_request(args):
        if args.weight_dtype not in (None, "float32"):
            raise ValueError(f"--weight-dtype {args.weight_dtype} applies to cell artifacts only; a layer artifact "
                             "stores its weights in the layer dtype")
        out = export_layer(_layer_from_files(args), args.out, target=_target_arg(args), batch=batches,
                           masking=not args.no_masking, overwrite=args.overwrite)
    else:
        out = export_cell(_cell_from_files(args), args.out, target=_target_arg(args), batch=batches,
                          overwrite=args.overwrite, weight_dtype=args.weight_dtype)
    meta = json.loads((out / artifact.METADATA).read_text())
    total = sum((out / f).stat().st_size for f in meta["files"])
    print(f"wrote {out} ({artifact.artifact_kind(meta)}, {meta['target']['family']}, batch {meta['batch_sizes']}, "
          f"{total / 1e6:.2f} MB)")
    for rel in meta["files"]:
        print(f"  {rel:40s} {(out / rel).stat().st_size / 1e3:10.1f} kB")
    return 0


def register_cli(subparsers, add_shape_args) -> None:
    """``tvm-gru export``: a cell or a layer, from a Keras config (+ weights .npz), an ONNX model, or fresh
    seeded weights."""
    p = subparsers.add_parser("export", help="write a deployable artifact (kernel + weights + runtime libs)")
    add_shape_args(p)
    p.add_argument("--config", help="Keras GRUCell or GRU config JSON (get_config() output, or a "
                                    "{'class_name': ..., 'config': ...} dict; class_name 'GRU' exports a layer)")
    p.add_argument("--weights", help=".npz with kernel, recurrent_kernel[, bias] (or arr_0, arr_1[, arr_2])")
    p.add_argument("--onnx", help="an ONNX model with one GRU node (instead of --config/--weights)")
    p.add_argument("--out", required=True, help="artifact folder to write")
    p.add_argument("--mcpu", help="CPU for x86/aarch64 targets, e.g. cortex-a72, znver3")
    p.add_argument("--arch", help="GPU architecture for cuda, e.g. sm_80")
    p.add_argument("--seed", type=int, default=0, help="weights seed when no --config/--onnx is given")
    p.add_argument("--batches", help="comma-separated batch sizes to compile (default: --batch)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--weight-dtype", choices=["float32", "float16"], default=None,
                   help="storage dtype of the cell's weight matrices (float16: half the bytes, float32 math; "
                        "default: the cell dtype)")
    layer = p.add_argument_group("layer", "export a GRU layer (whole-sequence kernels) instead of a cell")
    layer.add_argument("--layer", action="store_true", help="export a GRU layer (implied by a GRU --config)")
    for flag in _LAYER_FLAGS:
        layer.add_argument("--" + flag.replace("_", "-"), dest=flag, action="store_true",
                           help=f"layer option {flag}=True")
    layer.add_argument("--no-masking", action="store_true", help="skip the masked kernels (no `mask` argument)")
    p.set_defaults(func=_cli)
