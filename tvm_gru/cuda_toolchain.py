"""Compiling CUDA kernels to binaries (fatbin/cubin) on a machine with no GPU and no driver.

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
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["cuda_compile_env", "ensure_cuda_runtime", "find_cudart", "embedded_binary_kind"]

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
