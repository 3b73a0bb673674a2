"""Friendly target names and dicts -> TVM targets; clear errors listing what exists."""

from __future__ import annotations

import pytest

from tvm_gru import targets


@pytest.mark.parametrize("spec,family,lanes32,lanes64", [
    (None, None, None, None),
    ("host", None, None, None),
    ("x86", "x86", 8, 4),
    ({"name": "x86", "mcpu": "skylake-avx512"}, "x86", 16, 8),
    ({"name": "x86", "mcpu": "znver3", "num-cores": 8}, "x86", 8, 4),
    ("aarch64", "aarch64", 4, 2),
    ("arm", "aarch64", 4, 2),
    ({"name": "aarch64", "mcpu": "cortex-a72"}, "aarch64", 4, 2),
    ("cuda", "cuda", 1, 1),
    ({"name": "cuda", "arch": "sm_90"}, "cuda", 1, 1),
    ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "num-cores": 2}, "aarch64", 4, 2),
    ({"kind": "cuda", "arch": "sm_75", "max_threads_per_block": 1024}, "cuda", 1, 1),
], ids=["none", "host", "x86", "x86-avx512", "x86-znver3", "aarch64", "arm", "a72", "cuda", "cuda-sm90",
        "tvm-dict-arm", "tvm-dict-cuda"])
def test_resolve(spec, family, lanes32, lanes64):
    t = targets.resolve(spec)
    assert targets.resolve(t) is t  # a Target passes through
    if family is None:  # the host
        assert t.kind.name == "llvm" and int(t.attrs["num-cores"]) == targets.host_cores()
        return
    assert targets.family(t) == family
    assert targets.lanes(t, "float32") == lanes32 and targets.lanes(t, "float64") == lanes64


def test_aarch64_flags():
    a76 = targets.resolve({"name": "aarch64", "mcpu": "cortex-a76"})
    assert list(a76.attrs["mattr"]) == ["+neon", "+dotprod"]
    a53 = targets.resolve({"name": "arm", "mcpu": "cortex-a53", "num-cores": 4})
    assert list(a53.attrs["mattr"]) == ["+neon"] and int(a53.attrs["num-cores"]) == 4
    assert str(a53.attrs["mtriple"]) == "aarch64-linux-gnu"


def test_cuda_defaults():
    t = targets.resolve("cuda")
    assert str(t.attrs["arch"]) == "sm_80" and int(t.attrs["max_threads_per_block"]) == 1024


@pytest.mark.parametrize("spec,match", [
    ("rocm", r"Unknown target 'rocm'; expected one of \('host', 'x86', 'aarch64', 'arm', 'cuda'\)"),
    ({"name": "tpu"}, "Unknown target 'tpu'"),
    ({"name": "aarch64", "mcpu": "apple-m1"}, r"unsupported mcpu 'apple-m1'; expected one of \('generic'"),
    ({"name": "x86", "mcpu": "pentium"}, "unsupported mcpu 'pentium'"),
    ({"name": "cuda", "arch": "sm_60"}, r"unsupported arch 'sm_60'; expected one of \('sm_75'"),
    ({"name": "cuda", "mcpu": "znver3"}, r"target 'cuda' does not take \['mcpu'\]; its options are"),
    ({"name": "x86", "arch": "sm_80"}, r"target 'x86' does not take \['arch'\]"),
    ("llvm -mcpu=znver3", "target strings like"),
    ({"kind": "c"}, "target kind 'c' has no GRU schedule"),
    ({"mcpu": "znver3"}, "target dict needs a 'kind'"),
], ids=["name", "dict-name", "arm-mcpu", "x86-mcpu", "cuda-arch", "cuda-mcpu", "x86-arch", "string", "kind",
        "no-kind"])
def test_errors_list_what_exists(spec, match):
    with pytest.raises(ValueError, match=match):
        targets.resolve(spec)


def test_type_error():
    with pytest.raises(TypeError, match="target must be None, a str, a dict or a tvm.target.Target"):
        targets.resolve(42)


@pytest.mark.parametrize("target, match", [
    ({"kind": "llvm", "mcpu": "pentium"}, "'pentium' is a 32-bit x86 CPU"),
    ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "i686"}, "'i686' is a 32-bit x86 CPU"),
    ({"kind": "llvm", "mcpu": "no-such-cpu"}, "'no-such-cpu' is not a CPU LLVM knows"),
    ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "znver3"},
     "'znver3' is not a CPU LLVM knows for aarch64"),
], ids=["pentium", "i686", "unknown", "x86-cpu-on-arm"])
def test_raw_llvm_targets_with_a_cpu_llvm_would_abort_on_are_refused(target, match):
    """LLVM aborts the whole process when it compiles for these; resolve() refuses them by name first."""
    with pytest.raises(ValueError, match=match):
        targets.resolve(target)
    assert targets.resolve({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver3"}).attrs["mcpu"] == "znver3"
