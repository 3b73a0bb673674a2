"""Friendly target names -> TVM target dicts, host detection, SIMD widths.

TVM 0.27 rejects target strings ("llvm -mcpu=..."); targets are dicts. Accepted here:

* ``None`` / ``"host"``: this machine's CPU (detected ``mcpu``, core count).
* ``"x86"``, ``"aarch64"`` (alias ``"arm"``), ``"cuda"``; optionally as a dict with options,
  e.g. ``{"name": "aarch64", "mcpu": "cortex-a72"}`` or ``{"name": "cuda", "arch": "sm_80"}``.
* a full TVM target dict (``{"kind": "llvm", ...}``) or a ``tvm.target.Target``.
"""

from __future__ import annotations

import os

__all__ = ["resolve", "lanes", "family", "host_cores", "FRIENDLY", "X86_MCPUS", "ARM_MCPUS", "CUDA_ARCHS"]

FRIENDLY = ("host", "x86", "aarch64", "arm", "cuda")
_X86_DEFAULT_MCPU = "haswell"  # AVX2 + FMA: runs on any x86-64 server of the last decade
X86_MCPUS = ("haswell", "broadwell", "skylake", "skylake-avx512", "cascadelake", "cooperlake", "icelake-server",
             "sapphirerapids", "emeraldrapids", "graniterapids", "znver2", "znver3", "znver4", "znver5",
             "x86-64-v3", "x86-64-v4")
ARM_MCPUS = ("generic", "cortex-a53", "cortex-a55", "cortex-a72", "cortex-a76", "neoverse-n1", "neoverse-v1")
_DOTPROD = ("cortex-a55", "cortex-a76", "neoverse-n1", "neoverse-v1")
CUDA_ARCHS = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90")
# Options each friendly name takes (anything else is an unsupported combination, e.g. a CUDA arch on a CPU).
_OPTIONS = {"host": ("mcpu", "num-cores", "mattr"), "x86": ("mcpu", "num-cores", "mattr"),
            "aarch64": ("mcpu", "num-cores", "mattr"), "cuda": ("arch", "max_threads_per_block",
                                                                "max_shared_memory_per_block")}


def host_cores() -> int:
    """Cores this process may run on (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _host_dict() -> dict:
    import platform  # noqa: PLC0415

    from tvm.target import codegen  # noqa: PLC0415

    mcpu = codegen.llvm_get_system_cpu()
    out = {"kind": "llvm", "mcpu": mcpu, "num-cores": host_cores()}
    if platform.machine() in ("aarch64", "arm64"):
        out["mtriple"] = "aarch64-linux-gnu"
    return out


def _friendly_dict(name: str, options: dict) -> dict:
    if not isinstance(name, str) or name.lower() not in FRIENDLY:
        raise ValueError(f"Unknown target {name!r}; expected one of {FRIENDLY}, a TVM target dict "
                         f"({{'kind': 'llvm' | 'cuda', ...}}) or a tvm.target.Target")
    name = {"arm": "aarch64"}.get(name.lower(), name.lower())
    options = dict(options)
    unknown = sorted(set(options) - set(_OPTIONS[name]))
    if unknown:
        raise ValueError(f"target {name!r} does not take {unknown}; its options are {list(_OPTIONS[name])}")
    if name == "host":
        out = _host_dict()
        mcpu = options.get("mcpu", out["mcpu"])
        allowed = ARM_MCPUS if "mtriple" in out else X86_MCPUS
        if mcpu != out["mcpu"] and mcpu not in allowed:
            # LLVM aborts the whole process on some CPUs (e.g. 32-bit-only 'pentium' with a 64-bit triple)
            raise ValueError(f"target host: unsupported mcpu {mcpu!r}; expected this machine's CPU "
                             f"{out['mcpu']!r} or one of {allowed}")
        out.update(options)
        return out
    if name == "x86":
        mcpu = options.pop("mcpu", _X86_DEFAULT_MCPU)
        if mcpu not in X86_MCPUS:
            raise ValueError(f"target x86: unsupported mcpu {mcpu!r}; expected one of {X86_MCPUS}")
        return {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu,
                "num-cores": int(options.pop("num-cores", host_cores())), **options}
    if name == "aarch64":
        mcpu = options.pop("mcpu", "generic")
        if mcpu not in ARM_MCPUS:
            raise ValueError(f"target aarch64: unsupported mcpu {mcpu!r}; expected one of {ARM_MCPUS}")
        mattr = ["+neon"] + (["+dotprod"] if mcpu in _DOTPROD else [])
        mattr += [a for a in options.pop("mattr", []) if a not in mattr]
        return {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": mcpu, "mattr": mattr,
                "num-cores": int(options.pop("num-cores", 4)), **options}
    arch = options.pop("arch", "sm_80")
    if arch not in CUDA_ARCHS:
        raise ValueError(f"target cuda: unsupported arch {arch!r}; expected one of {CUDA_ARCHS}")
    return {"kind": "cuda", "arch": arch, "max_threads_per_block": 1024, "max_shared_memory_per_block": 49152,
            "thread_warp_size": 32, **options}


def resolve(target=None):
    """Return a ``tvm.target.Target`` for a friendly name, dict, Target or None (host)."""
    from tvm.target import Target  # noqa: PLC0415

    if target is None:
        target = "host"
    if isinstance(target, Target):
        out = target
    elif isinstance(target, str):
        if " " in target or target.startswith(("llvm", "nvptx")):
            raise ValueError(f"target strings like {target!r} are not accepted by TVM 0.27: use a friendly name "
                             f"{FRIENDLY} or a dict such as {{'kind': 'llvm', 'mcpu': 'znver3', 'num-cores': 4}}")
        out = Target(_friendly_dict(target, {}))
    elif isinstance(target, dict):
        if "kind" in target:
            out = Target(dict(target))
        elif "name" in target:
            options = {k: v for k, v in target.items() if k != "name"}
            out = Target(_friendly_dict(target["name"], options))
        else:
            raise ValueError(f"target dict needs a 'kind' (TVM) or 'name' (one of {FRIENDLY}), "
                             f"received {target!r}")
    else:
        raise TypeError(f"target must be None, a str, a dict or a tvm.target.Target, "
                        f"received {type(target).__name__}")
    if out.kind.name not in ("llvm", "cuda"):
        raise ValueError(f"target kind {out.kind.name!r} has no GRU schedule; supported kinds are 'llvm' "
                         f"(x86, aarch64) and 'cuda'")
    if out.kind.name == "llvm" and "mcpu" in out.attrs:
        _check_llvm_cpu(out)
    return out


def _check_llvm_cpu(target) -> None:
    """Refuse an ``mcpu`` LLVM does not know for the triple, or a 32-bit-only x86 CPU with a 64-bit triple:
    LLVM aborts the whole process on those at compile time (e.g. ``{"kind": "llvm", "mcpu": "pentium"}``)."""
    from tvm.target import codegen  # noqa: PLC0415

    mcpu = str(target.attrs["mcpu"])
    triple = str(target.attrs.get("mtriple", "")) or str(codegen.llvm_get_system_triple())
    if not codegen.llvm_is_valid_cpu(mcpu, triple):
        raise ValueError(f"target mcpu {mcpu!r} is not a CPU LLVM knows for {triple}; expected e.g. one of "
                         f"{ARM_MCPUS if triple.startswith('aarch64') else X86_MCPUS}")
    if triple.startswith("x86_64") and not codegen.llvm_cpu_has_features("64bit", target):
        raise ValueError(f"target mcpu {mcpu!r} is a 32-bit x86 CPU and cannot run {triple} code; expected a "
                         f"64-bit CPU such as {X86_MCPUS[:4]}")


def family(target) -> str:
    """'x86', 'aarch64' or 'cuda'."""
    if target.kind.name == "cuda":
        return "cuda"
    triple = str(target.attrs.get("mtriple", "")) if "mtriple" in target.attrs else ""
    if triple.startswith("aarch64") or triple.startswith("arm"):
        return "aarch64"
    return "x86"


AVX512_MCPUS = ("skylake-avx512", "cascadelake", "cooperlake", "icelake-server", "icelake-client", "tigerlake",
                "sapphirerapids", "znver4", "znver5", "graniterapids", "emeraldrapids", "x86-64-v4")


def lanes(target, dtype: str) -> int:
    """SIMD width in elements of ``dtype`` (the packed block width V)."""
    bits = 128
    fam = family(target)
    if fam == "x86":
        mcpu = str(target.attrs.get("mcpu", "")) if "mcpu" in target.attrs else ""
        bits = 512 if mcpu in AVX512_MCPUS else 256
    elif fam == "cuda":
        return 1  # one warp per unit reads a contiguous run of k (see schedules/cuda.py)
    return bits // (32 if dtype == "float32" else 64)


def _host_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith(("flags", "Features"))),
                        set())
    except OSError:
        return set()


def runs_here(target) -> bool:
    """Whether kernels compiled for ``target`` can be called in this process (same ISA, no missing AVX-512)."""
    import platform  # noqa: PLC0415

    machine = platform.machine()
    host = "aarch64" if machine in ("aarch64", "arm64") else ("x86" if machine in ("x86_64", "AMD64") else machine)
    fam = family(target)
    if fam != host:
        return False
    if fam == "x86" and "mcpu" in target.attrs and str(target.attrs["mcpu"]) in AVX512_MCPUS:
        return "avx512f" in _host_flags()
    return True
