"""CUDA: artifacts are produced here without a GPU (embedded fatbin, not source) and checked structurally;
the numeric tests run on a GPU machine and skip cleanly elsewhere.

On a GPU machine without the TVM compiler (only apache-tvm-ffi + numpy + torch), point
``TVM_GRU_CUDA_BUNDLE`` at a bundle made here with ``python tests/schedules/test_cuda.py --bundle DIR --arch sm_90``:
the GPU tests then load those artifacts with the minimal runtime.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from conftest import biased_cell, tolerance  # noqa: E402

CASES = [  # name, config, input_dim, batch sizes
    ("sigmoid_ra", dict(units=64, recurrent_activation="sigmoid", reset_after=True, implementation=2), 32, (1, 3)),
    ("v1_default", dict(units=64), 32, (1, 3)),
    ("ra_false_impl2", dict(units=20, recurrent_activation="sigmoid", implementation=2), 12, (1, 2)),
    ("ra_impl1_relu", dict(units=33, activation="relu", reset_after=True), 17, (1, 4)),
    ("float64_ra", dict(units=24, reset_after=True, dtype="float64"), 8, (1,)),
    ("bench_sigmoid_256", dict(units=256, recurrent_activation="sigmoid", reset_after=True, implementation=2),
     256, (1,)),
    ("bench_sigmoid_1024", dict(units=1024, recurrent_activation="sigmoid", reset_after=True, implementation=2),
     512, (1,)),
    ("bench_v1_256", dict(units=256), 256, (1,)),
    ("bench_v1_1024", dict(units=1024), 512, (1,)),
]


def has_gpu() -> bool:
    """A CUDA driver with at least one device (the build stub reports none)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    return cuda.cuInit(0) == 0 and cuda.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0


def build_cases(root: Path, arch: str = "sm_80", names=None) -> Path:
    """Export every case's CUDA artifact to ``root/<name>``."""
    from tvm_gru.deploy.export import export_cell  # noqa: PLC0415

    root.mkdir(parents=True, exist_ok=True)
    for i, (name, cfg, input_dim, batches) in enumerate(CASES):
        if names is not None and name not in names:
            continue
        cell = biased_cell(input_dim=input_dim, seed=i, **cfg)
        export_cell(cell, root / name, target={"name": "cuda", "arch": arch}, batch=batches, overwrite=True)
    return root


# ------------------------------------------------------------------------------------ structural (no GPU)
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    pytest.importorskip("tvm")
    import shutil  # noqa: PLC0415

    if shutil.which("nvcc") is None:
        try:
            import cuda.bindings.nvrtc  # noqa: F401, PLC0415
        except ImportError:
            pytest.skip("neither nvcc nor NVRTC (cuda-bindings) is available to compile CUDA kernels")
    return build_cases(tmp_path_factory.mktemp("cuda"), names={"sigmoid_ra", "v1_default"})


@pytest.mark.parametrize("name", ["sigmoid_ra", "v1_default"])
def test_cuda_artifact_embeds_a_binary_not_source(built, name):
    from tvm_gru.deploy.toolchains import embedded_binary_kind  # noqa: PLC0415

    art = built / name
    meta = json.loads((art / "tvm_gru_artifact.json").read_text())
    assert meta["target"]["family"] == "cuda" and meta["target"]["arch"] == "sm_80"
    kind = embedded_binary_kind((art / "kernel.so").read_bytes())
    assert kind in ("fatbin", "cubin"), kind
    libs = [Path(e["path"]).name for e in meta["runtime_libs"]]
    assert "libtvm_runtime.so" in libs and "libtvm_runtime_cuda.so" in libs


@pytest.mark.parametrize("reset_after,launches", [(True, 1), (False, 2)], ids=["reset_after", "reset_before"])
@pytest.mark.parametrize("implementation", [1, 2])
def test_cuda_kernel_structure(reset_after, launches, implementation):
    """One launch per step (two when the candidate needs r first), warp-shuffle reductions, no shared memory."""
    pytest.importorskip("tvm")
    import tvm  # noqa: PLC0415

    from tvm_gru import GRUConfig, StepSpec, targets  # noqa: PLC0415
    from tvm_gru.build.step import scheduled_module  # noqa: PLC0415
    from tvm_gru.deploy.toolchains import cuda_compile_env  # noqa: PLC0415

    target = targets.resolve({"name": "cuda", "arch": "sm_80"})
    cfg = GRUConfig(units=96, reset_after=reset_after, implementation=implementation)
    spec = StepSpec(cfg, batch=2, input_dim=40, lanes=targets.lanes(target, "float32"))
    with cuda_compile_env(), target:
        ex = tvm.compile(scheduled_module(spec, target), target=target)
    src = str(ex.mod.imports[0].inspect_source())
    kernels = [line for line in src.splitlines() if line.startswith('extern "C" __global__') and "{" in line]
    assert len(kernels) == launches, kernels
    assert "__shfl_down_sync" in src
    assert "__shared__" not in src


def test_cuda_load_without_gpu_is_a_clear_error(built):
    if has_gpu():
        pytest.skip("a GPU is present")
    from tvm_gru.runtime.artifact import ArtifactError, load  # noqa: PLC0415

    with pytest.raises(ArtifactError, match="no CUDA device"):
        load(built / "sigmoid_ra")


# ------------------------------------------------------------------------------------ numeric (GPU)
def gpu_bundle_or_skip(env_var: str, build) -> Path:
    """The artifacts a GPU test runs: skip without a GPU; else the folder named by ``env_var`` (built elsewhere,
    e.g. ``python tests/schedules/test_cuda.py --bundle DIR``), or ``build()`` here."""
    if not has_gpu():
        pytest.skip("no CUDA GPU on this machine")
    env = os.environ.get(env_var)
    if env:
        return Path(env)
    pytest.importorskip("tvm")
    return build()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return gpu_bundle_or_skip("TVM_GRU_CUDA_BUNDLE", lambda: build_cases(
        tmp_path_factory.mktemp("cuda_gpu"), arch=os.environ.get("TVM_GRU_CUDA_ARCH", "sm_90")))


def _reference(cell, x, h):
    from tvm_gru import GRUConfig
    from tvm_gru.ops import reference  # noqa: PLC0415

    return reference.step(GRUConfig(**cell.config), x, h, *cell.get_weights())


@pytest.mark.gpu
@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_cuda_matches_reference_numpy_io(bundle, name):
    from tvm_gru.runtime.artifact import load  # noqa: PLC0415

    cell = load(bundle / name)
    rng = np.random.default_rng(1)
    for b in cell.batch_sizes:
        x = rng.uniform(-1, 1, (b, cell.input_dim)).astype(cell.dtype)
        h = rng.uniform(-1, 1, (b, cell.units)).astype(cell.dtype)
        out, [h2] = cell(x, [h])
        ref = _reference(cell, x, h)
        assert isinstance(out, np.ndarray) and h2 is out
        err = float(np.max(np.abs(out - ref)))
        assert err <= tolerance(cell.dtype, ref), f"{name} batch {b}: max err {err:.3e}"


@pytest.mark.gpu
def test_cuda_device_tensors_stay_on_device(bundle):
    torch = pytest.importorskip("torch")
    from tvm_gru.runtime.artifact import load  # noqa: PLC0415

    cell = load(bundle / "sigmoid_ra")
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (3, cell.input_dim)).astype("float32")
    h = rng.uniform(-1, 1, (3, cell.units)).astype("float32")
    out, [h2] = cell(torch.from_numpy(x).cuda(), [torch.from_numpy(h).cuda()])
    assert out.__dlpack_device__()[0] == 2  # kDLCUDA: the result never left the GPU
    got = torch.from_dlpack(out).cpu().numpy()
    ref = _reference(cell, x, h)
    assert float(np.max(np.abs(got - ref))) <= tolerance("float32", ref)
    # a sequence: the returned state feeds the next step
    for _ in range(3):
        out, [h2] = cell(torch.from_numpy(x).cuda(), [h2])
    assert torch.from_dlpack(h2).isfinite().all()


@pytest.mark.gpu
def test_cuda_arch_mismatch_is_refused(bundle, tmp_path):
    import shutil  # noqa: PLC0415

    from tvm_gru.runtime.artifact import ArtifactError, load  # noqa: PLC0415

    art = tmp_path / "other_arch"
    shutil.copytree(bundle / "sigmoid_ra", art)
    meta = json.loads((art / "tvm_gru_artifact.json").read_text())
    meta["target"]["arch"] = "sm_75"  # metadata only: the check runs before the device code is loaded
    (art / "tvm_gru_artifact.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="holds device code for sm_75"):
        load(art)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="export the CUDA test/benchmark artifacts (no GPU needed)")
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--tar", help="also write this tar, with the runtime libraries stored once (hard links)")
    args = parser.parse_args()
    root = build_cases(Path(args.bundle), arch=args.arch)
    if args.tar:
        import hashlib  # noqa: PLC0415
        import subprocess  # noqa: PLC0415

        first = {}
        for lib in sorted(root.glob("*/lib/*")):
            digest = hashlib.sha256(lib.read_bytes()).hexdigest()
            if digest in first:
                lib.unlink()
                os.link(first[digest], lib)
            else:
                first[digest] = lib
        subprocess.run(["tar", "cf", args.tar, "-C", str(root), "."], check=True)
    print(root)
