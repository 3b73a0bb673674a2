"""Deployable artifacts: a GRU cell compiled for a target, in one folder that runs without the TVM compiler.

>>> cell = tvm_gru.GRUCell(256); cell.build((1, 128))                      # doctest: +SKIP
>>> export_cell(cell, "gru_arm", target={"name": "aarch64", "mcpu": "cortex-a72"})  # doctest: +SKIP

then, on the board (``pip install apache-tvm-ffi numpy``)::

    import sys; sys.path.insert(0, "gru_arm/python")
    import tvm_gru_runtime
    cell = tvm_gru_runtime.load("gru_arm")
    out, [h] = cell(x, [h])

The folder layout and the loader are in :mod:`tvm_gru.runtime.artifact`. What goes in ``lib/``:

* CPU kernels that call into the TVM runtime (parallel loops, workspaces) get ``libtvm_runtime.so`` for the
  target's architecture: this machine's copy from the apache-tvm wheel, or, for aarch64 on an x86 host, the
  one in the apache-tvm aarch64 wheel (downloaded once with pip into ``$TVM_GRU_RUNTIME_LIBS``).
* CUDA kernels get ``libtvm_runtime.so`` + ``libtvm_runtime_cuda.so`` (the module loader for the embedded
  fatbin/cubin) and ``libcudart`` when found; the driver (``libcuda.so.1``) is the device's own.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import __version__, targets
from .runtime import artifact

__all__ = ["export_cell", "register_cli"]

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
def _kernel_specs(cell, batches, lanes):
    from .config import StepSpec  # noqa: PLC0415

    return {b: StepSpec(cell.config, batch=b, input_dim=cell.input_dim, lanes=lanes) for b in batches}


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


def _target_meta(target, family: str) -> dict:
    attrs = target.attrs
    meta = {"family": family, "tvm": _plain(target.export()),
            "host_arch": "aarch64" if family == "aarch64" else "x86_64", "cpu_features": []}
    if family == "aarch64":
        mattr = [str(a) for a in attrs["mattr"]] if "mattr" in attrs else []
        meta["cpu_features"] = ["asimd"] + (["asimddp"] if "+dotprod" in mattr else [])
    elif family == "x86":
        mcpu = str(attrs["mcpu"]) if "mcpu" in attrs else ""
        meta["cpu_features"] = (_X86_FEATURES["skylake-avx512"] if mcpu in targets.AVX512_MCPUS
                                else _X86_FEATURES["haswell"] if mcpu else [])
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


def _copy_runtime_package(dest: Path) -> list:
    """The runtime loader as a standalone package ``python/tvm_gru_runtime`` (numpy + tvm_ffi only)."""
    src = Path(artifact.__file__).parent
    pkg = dest / "python" / "tvm_gru_runtime"
    pkg.mkdir(parents=True)
    for name in ("artifact.py", "buffers.py"):
        shutil.copyfile(src / name, pkg / name)
    (pkg / "__init__.py").write_text(
        '"""tvm_gru deployed-cell runtime (numpy + apache-tvm-ffi only). See artifact.py."""\n'
        "from .artifact import ArtifactError, DeployedCell, load, verify\n\n"
        '__all__ = ["load", "verify", "DeployedCell", "ArtifactError"]\n')
    return [pkg / n for n in ("__init__.py", "artifact.py", "buffers.py")]


def export_cell(cell, path, target=None, batch=1, overwrite: bool = False) -> Path:
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

    Returns
    -------
    Path
        The artifact folder. Load it with :func:`tvm_gru.load` (or the bundled ``python/tvm_gru_runtime``).
    """
    if not getattr(cell, "built", False):
        raise ValueError("`export_cell` needs a built cell: call build(input_shape), set_weights or the cell first")
    batches = sorted({int(batch)} if np.isscalar(batch) else {int(b) for b in batch})
    if not batches or batches[0] < 1:
        raise ValueError(f"`batch` must be a positive int or a non-empty sequence of them; received {batch!r}")
    dest = Path(path)
    if dest.exists() and not overwrite:
        raise FileExistsError(f"{dest} exists; pass overwrite=True to replace it")
    target = targets.resolve(target)
    family = targets.family(target)
    lanes = targets.lanes(target, cell.config.dtype)
    specs = _kernel_specs(cell, batches, lanes)
    executable, names = compile_kernels(specs, target)

    from .packing import pack_weights  # noqa: PLC0415

    weights = cell.get_weights()
    packed = pack_weights(cell.config, weights[0], weights[1], weights[2] if cell.config.use_bias else None, lanes)
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
        meta = {
            "format": artifact.FORMAT, "format_version": artifact.FORMAT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": cell.config.to_dict(), "input_dim": cell.input_dim, "units": cell.config.units,
            "dtype": cell.config.dtype, "batch_sizes": batches, "lanes": lanes,
            "shapes": {"inputs": ["batch", cell.input_dim], "states": ["batch", cell.config.units],
                       **{n: list(a.shape) for n, a in packed.items()}},
            "target": _target_meta(target, family),
            "kernel": {"library": "kernel.so", "functions": {str(b): n for b, n in zip(batches, names)},
                       "weights": list(packed), "args": ["x", "h", *packed, "h_new"]},
            "weights": "weights.npz", "runtime_libs": libs, "versions": _versions(),
            "files": {f.relative_to(tmp).as_posix(): artifact._sha256(f) for f in files},
        }
        (tmp / artifact.METADATA).write_text(json.dumps(meta, indent=2) + "\n")
        tmp.chmod(0o755)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


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


def _target_arg(args):
    options = {k: v for k, v in (("mcpu", args.mcpu), ("arch", args.arch)) if v}
    name = args.target or "host"
    return {"name": name, **options} if options else name


def _cli(args) -> int:
    cell = _cell_from_files(args)
    batches = [int(b) for b in args.batches.split(",")] if args.batches else [args.batch]
    out = export_cell(cell, args.out, target=_target_arg(args), batch=batches, overwrite=args.overwrite)
    meta = json.loads((out / artifact.METADATA).read_text())
    total = sum((out / f).stat().st_size for f in meta["files"])
    print(f"wrote {out} ({meta['target']['family']}, batch {meta['batch_sizes']}, {total / 1e6:.2f} MB)")
    for rel in meta["files"]:
        print(f"  {rel:40s} {(out / rel).stat().st_size / 1e3:10.1f} kB")
    return 0


def register_cli(subparsers, add_shape_args) -> None:
    """``tvm-gru export``: from a Keras config (+ weights .npz), an ONNX model, or a fresh seeded cell."""
    p = subparsers.add_parser("export", help="write a deployable artifact (kernel + weights + runtime libs)")
    add_shape_args(p)
    p.add_argument("--config", help="Keras GRUCell config JSON (get_config() output, or a layer dict)")
    p.add_argument("--weights", help=".npz with kernel, recurrent_kernel[, bias] (or arr_0, arr_1[, arr_2])")
    p.add_argument("--onnx", help="an ONNX model with one GRU node (instead of --config/--weights)")
    p.add_argument("--out", required=True, help="artifact folder to write")
    p.add_argument("--mcpu", help="CPU for x86/aarch64 targets, e.g. cortex-a72, znver3")
    p.add_argument("--arch", help="GPU architecture for cuda, e.g. sm_80")
    p.add_argument("--seed", type=int, default=0, help="weights seed when no --config/--onnx is given")
    p.add_argument("--batches", help="comma-separated batch sizes to compile (default: --batch)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cli)
