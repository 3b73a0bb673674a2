"""Friendly target names -> TVM target dicts, host detection, SIMD widths.

TVM 0.27 rejects target strings ("llvm -mcpu=..."); targets are dicts. Accepted here:

* ``None`` / ``"host"``: this machine's CPU (detected ``mcpu``, core count).
* ``"x86"``, ``"aarch64"`` (alias ``"arm"``), ``"cuda"``; optionally as a dict with options,
  e.g. ``{"name": "aarch64", "mcpu": "cortex-a72"}`` or ``{"name": "cuda", "arch": "sm_80"}``.
* a full TVM target dict (``{"kind": "llvm", ...}``) or a ``tvm.target.Target``.
"""

from __future__ import annotations

import os

__all__ = ["resolve", "lanes", "family", "host_cores", "FRIENDLY"]

FRIENDLY = ("host", "x86", "aarch64", "arm", "cuda")
_X86_DEFAULT_MCPU = "haswell"  # AVX2 + FMA: runs on any x86-64 server of the last decade
_ARM_MCPUS = ("cortex-a53", "cortex-a55", "cortex-a72", "cortex-a76", "neoverse-n1", "neoverse-v1", "generic")
_DOTPROD = ("cortex-a55", "cortex-a76", "neoverse-n1", "neoverse-v1")
_CUDA_ARCHS = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90")


def host_cores() -> int:
    """Cores this process may run on (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _host_dict() -> dict:
    from tvm.target import codegen  # noqa: PLC0415

    import platform  # noqa: PLC0415

    mcpu = codegen.llvm_get_system_cpu()
    out = {"kind": "llvm", "mcpu": mcpu, "num-cores": host_cores()}
    if platform.machine() in ("aarch64", "arm64"):
        out["mtriple"] = "aarch64-linux-gnu"
    return out


def _friendly_dict(name: str, options: dict) -> dict:
    options = dict(options)
    if name == "host":
        out = _host_dict()
        out.update(options)
        return out
    if name == "x86":
        return {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": options.pop("mcpu", _X86_DEFAULT_MCPU),
                "num-cores": int(options.pop("num-cores", host_cores())), **options}
    if name in ("aarch64", "arm"):
        mcpu = options.pop("mcpu", "generic")
        if mcpu not in _ARM_MCPUS:
            raise ValueError(f"target aarch64: unsupported mcpu {mcpu!r}; expected one of {_ARM_MCPUS}")
        mattr = ["+neon"] + (["+dotprod"] if mcpu in _DOTPROD else [])
        return {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": mcpu, "mattr": mattr,
                "num-cores": int(options.pop("num-cores", 4)), **options}
    if name == "cuda":
        arch = options.pop("arch", "sm_80")
        if arch not in _CUDA_ARCHS:
            raise ValueError(f"target cuda: unsupported arch {arch!r}; expected one of {_CUDA_ARCHS}")
        return {"kind": "cuda", "arch": arch, "max_threads_per_block": 1024, "max_shared_memory_per_block": 49152,
                "thread_warp_size": 32, **options}
    raise ValueError(f"Unknown target {name!r}; expected one of {FRIENDLY}, a TVM target dict or a tvm.target.Target")


def resolve(target=None):
    """Return a ``tvm.target.Target`` for a friendly name, dict, Target or None (host)."""
    from tvm.target import Target  # noqa: PLC0415

    if isinstance(target, Target):
        return target
    if target is None:
        target = "host"
    if isinstance(target, str):
        return Target(_friendly_dict(target, {}))
    if isinstance(target, dict):
        if "kind" in target:
            return Target(dict(target))
        if "name" in target:
            options = {k: v for k, v in target.items() if k != "name"}
            return Target(_friendly_dict(target["name"], options))
        raise ValueError(f"target dict needs a 'kind' (TVM) or 'name' (one of {FRIENDLY}), received {target!r}")
    raise TypeError(f"target must be None, a str, a dict or a tvm.target.Target, received {type(target).__name__}")


def family(target) -> str:
    """'x86', 'aarch64' or 'cuda'."""
    if target.kind.name == "cuda":
        return "cuda"
    triple = str(target.attrs.get("mtriple", "")) if "mtriple" in target.attrs else ""
    if triple.startswith("aarch64") or triple.startswith("arm"):
        return "aarch64"
    return "x86"


_AVX512 = ("skylake-avx512", "cascadelake", "cooperlake", "icelake-server", "icelake-client", "tigerlake",
           "sapphirerapids", "znver4", "znver5", "graniterapids", "emeraldrapids")


def lanes(target, dtype: str) -> int:
    """SIMD width in elements of ``dtype`` (the packed block width V)."""
    bits = 128
    fam = family(target)
    if fam == "x86":
        mcpu = str(target.attrs.get("mcpu", "")) if "mcpu" in target.attrs else ""
        bits = 512 if mcpu in _AVX512 else 256
    elif fam == "cuda":
        bits = 32 * 32  # one warp of float32: a block of 32 units per warp
    return bits // (32 if dtype == "float32" else 64)
