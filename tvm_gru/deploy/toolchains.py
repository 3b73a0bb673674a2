"""Toolchains for artifacts: the TVM runtime library each target needs (the aarch64 one from the wheel), linking
a kernel library for its target, and compiling CUDA kernels to binaries on a machine with no GPU and no driver.

CUDA:

TVM embeds compiled device code in an exported library only when its CUDA runtime part
(``libtvm_runtime_cuda.so``) is loaded, and that library links ``libcuda.so.1``, the driver. Without a
driver TVM silently embeds CUDA *source*, which a device could only run with the full TVM and a CUDA
compiler. So, when no driver is present, a stub ``libcuda.so.1`` (every entry point reports "no device")
is built with the host C compiler and loaded first; the device code itself is compiled by nvcc (fatbin)
or NVRTC (cubin, when ``cuda-bindings`` is installed), chosen by ``TVM_CUDA_COMPILE_MODE``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import tvm
from tvm.support import cc

__all__ = ["cuda_compile_env", "ensure_cuda_runtime", "find_cudart", "embedded_binary_kind", "aarch64_runtime_lib",
           "export_library", "runtime_libs"]

# Driver entry points libtvm_runtime_cuda.so (0.27) imports, plus what libcudart probes first.
_STUB_SYMBOLS = ("cuInit", "cuDriverGetVersion", "cuDeviceGet", "cuDeviceGetCount", "cuDeviceGetName",
                 "cuFuncSetAttribute", "cuLaunchKernelEx", "cuLaunchKernel", "cuModuleGetFunction",
                 "cuModuleLoadData", "cuModuleUnload", "cuTensorMapEncodeTiled", "cuGetProcAddress",
                 "cuGetProcAddress_v2", "cuGetExportTable")
_NO_DEVICE = 100  # CUDA_ERROR_NO_DEVICE
_STATE: dict = {}


def _stub_source() -> str:
    lines = ["/* tvm_gru: a stand-in libcuda.so.1 for compiling CUDA kernels without a GPU driver. */"]
    lines += [f"int {name}() {{ return {_NO_DEVICE}; }}" for name in _STUB_SYMBOLS]
    lines += ['int cuGetErrorName(int e, const char** s) { *s = "CUDA_ERROR_NO_DEVICE (tvm_gru stub)"; return 0; }',
              'int cuGetErrorString(int e, const char** s) { *s = "no CUDA driver (tvm_gru build stub)"; return 0; }']
    return "\n".join(lines) + "\n"


def _stub_path() -> Path:
    cache = Path(os.environ.get("TVM_GRU_CACHE_DIR", Path.home() / ".cache" / "tvm_gru")) / "cuda_stub"
    lib = cache / "libcuda.so.1"
    if lib.is_file():
        return lib
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("compiling CUDA kernels without a GPU driver needs a C compiler for the libcuda stub")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "stub.c"
        src.write_text(_stub_source())
        out = Path(tmp) / "libcuda.so.1"
        subprocess.run([cc, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(out), str(src)], check=True)
        os.replace(out, lib)
    return lib


def ensure_cuda_runtime() -> str:
    """Make TVM's CUDA module loader available in this process; returns "driver" or "stub"."""
    if "mode" in _STATE:
        return _STATE["mode"]
    import tvm  # noqa: PLC0415
    import tvm_ffi  # noqa: PLC0415
    from tvm.base import _LOADED_LIBS  # noqa: PLC0415
    from tvm_ffi.libinfo import load_lib_ctypes  # noqa: PLC0415

    try:
        ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
        mode = "driver"
    except OSError:
        # Loaded under its soname first, the stub satisfies libtvm_runtime_cuda.so's dependency.
        _STATE["stub"] = ctypes.CDLL(str(_stub_path()), mode=ctypes.RTLD_GLOBAL)
        mode = "stub"
    if tvm_ffi.get_global_func("ffi.Module.load_from_bytes.cuda", allow_missing=True) is None:
        runtime_dir = Path(tvm.__file__).resolve().parent / "lib"
        _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(package="tvm", target_name="tvm_runtime_cuda",
                                                          extra_lib_paths=[runtime_dir], mode="RTLD_LOCAL")
    _STATE["mode"] = mode
    return mode


def _compile_mode() -> str:
    if "TVM_CUDA_COMPILE_MODE" in os.environ:
        return os.environ["TVM_CUDA_COMPILE_MODE"]
    try:
        import cuda.bindings.nvrtc  # noqa: F401, PLC0415

        return "nvrtc"
    except ImportError:
        pass
    if shutil.which("nvcc") is None:
        raise RuntimeError("compiling CUDA kernels needs nvcc on PATH or the cuda-bindings + nvidia-cuda-nvrtc "
                           "packages (NVRTC)")
    return "nvcc"


@contextlib.contextmanager
def cuda_compile_env():
    """Inside: ``tvm.compile`` for a CUDA target embeds a device binary (not source)."""
    ensure_cuda_runtime()
    old = os.environ.get("TVM_CUDA_COMPILE_MODE")
    os.environ["TVM_CUDA_COMPILE_MODE"] = _compile_mode()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TVM_CUDA_COMPILE_MODE", None)
        else:
            os.environ["TVM_CUDA_COMPILE_MODE"] = old


def find_cudart() -> Path | None:
    """The ``libcudart.so.13`` that libtvm_runtime_cuda.so links (bundled so the device needs only a driver)."""
    candidates = []
    for env in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(env):
            candidates += [Path(os.environ[env]) / d for d in ("lib64", "lib")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        root = Path(nvcc).resolve().parent.parent
        candidates += [root / "lib64", root / "lib", root / "targets" / "x86_64-linux" / "lib"]
    candidates += [Path("/usr/local/cuda/lib64"), Path("/usr/local/cuda/lib")]
    for folder in candidates:
        lib = folder / "libcudart.so.13"
        if lib.is_file():
            return lib
    return None


def embedded_binary_kind(library_bytes: bytes) -> str:
    """What device code an exported library embeds: "fatbin", "cubin", "ptx" or "source" (or "none")."""
    if b"\x50\xed\x55\xba" in library_bytes:  # fatbin magic 0xBA55ED50
        return "fatbin"
    if b"\x7fELF" in library_bytes[64:] and b".nv.info" in library_bytes:
        return "cubin"
    if b".visible .entry" in library_bytes:
        return "ptx"
    if b"__global__" in library_bytes:
        return "source"
    return "none"


# ---------------------------------------------------------------------------------------- TVM runtime libraries
_TVM_WHEEL = "0.27.0.post1"


def _runtime_cache() -> Path:
    return Path(os.environ.get("TVM_GRU_RUNTIME_LIBS", Path.home() / ".cache" / "tvm_gru_runtime_libs"))


def _tvm_lib_dir() -> Path:

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



def export_library(executable, path: Path, family: str) -> None:
    if family == "aarch64" and _host_arch() != "aarch64":

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


def runtime_libs(family: str, kernel: Path) -> list:
    """[(source path, a global function it registers)] in load order; the loader skips a library whose function
    is already registered (a TVM runtime already in the process)."""
    provides = "runtime.TVMTensorAllocWithScope"
    if family == "cuda":
        libs = [(_tvm_lib_dir() / "libtvm_runtime.so", provides),
                (_tvm_lib_dir() / "libtvm_runtime_cuda.so", "ffi.Module.load_from_bytes.cuda")]

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


