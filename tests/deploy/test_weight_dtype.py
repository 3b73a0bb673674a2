"""``weight_dtype="float16"``: the kernel and recurrent kernel stored as IEEE half, widened to float32 before each
multiply-add (inputs, states, bias, accumulation and gate math stay float32).

Numerics run on this CPU (x86 F16C ``vcvtph2ps``); the aarch64 artifact (NEON ``fcvtl``) runs under qemu when the
emulation kit is there; CUDA artifacts are built and read structurally here (PTX: 16-bit weight loads, f32 math)
and run on a GPU in the tests marked ``gpu``. The float32 default must keep its exact TE, and so the structural
hashes its tuning records are filed under.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import tvm_gru
from tvm_gru import GRUConfig, StepSpec, targets
from tvm_gru.build import records as tuning_db
from tvm_gru.deploy.export import export_cell
from tvm_gru.ops import compute, reference
from tvm_gru.runtime.artifact import METADATA, ArtifactError, load
from tvm_gru.runtime.packing import unpack_matrix

sys.path.insert(0, str(Path(__file__).parents[1]))
from conftest import biased_cell, tolerance  # noqa: E402

U16 = 2.0 ** -11  # unit roundoff of IEEE half (round to nearest)
CUDA_ARCH = os.environ.get("TVM_GRU_CUDA_ARCH", "sm_90")


def _cell(units=40, input_dim=24, seed=0, **kwargs):
    """A built cell with non-zero biases (so the float32 bias next to float16 matrices is exercised)."""
    return biased_cell(units, input_dim, seed, **kwargs)


def _rounded(weights):
    """Keras weights with the two matrices rounded to float16 (the values a float16-storage kernel multiplies)."""
    return [weights[0].astype(np.float16), weights[1].astype(np.float16), *weights[2:]]


def _inputs(cell, batch, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.uniform(-1, 1, (batch, cell.input_dim)).astype("float32"),
            rng.uniform(-1, 1, (batch, cell.units)).astype("float32"))


def _rounding_scale(weights, x, h) -> float:
    """a = max over units and gates of |x| @ |K| + |h| @ |R|: each pre-activation moves by at most u * a when the
    weights are rounded to half (u = 2**-11)."""
    k, r = (np.abs(np.asarray(w, np.float64)) for w in weights[:2])
    return float(np.max(np.abs(x) @ k + np.abs(h) @ r))


def _rounding_window(weights, x, h) -> tuple:
    """How far float16 weight rounding should move one step's output: (at least, at most).

    At most: z moves by <= L_f u a and multiplies |h - hh| <= 2; the candidate by <= L_g (u a + |dr| (|h| @ |R_h|))
    <= u a (1 + a) with the 1-Lipschitz-or-flatter activations used here. At least: a hundredth of one rounding
    step (the errors of the ~I + H rounded weights per output add up like a random walk, well above that).
    """
    a = _rounding_scale(weights, x, h)
    return 0.01 * U16 * a, U16 * a * (2 + a)


# ------------------------------------------------------------------------------------ float32 default unchanged
# Structural hashes of float32 step PrimFuncs computed at commit 967ccd6 (before weight_dtype existed); the last two
# are workloads the committed-to-be tuning run filed its records under (tuning_logs/llvm-x86-znver3/hand_baseline).
HEAD_HASHES = {
    "H256-I128-B1-float32-tanh-hard_sigmoid-bias1-ra0-impl1-mx0-mh0-V8": "5885424363648086029",
    "H256-I128-B1-float32-tanh-hard_sigmoid-bias1-ra1-impl2-mx0-mh0-V8": "5615404586101964433",
    "H256-I128-B4-float32-relu-hard_sigmoid-bias1-ra0-impl2-mx0-mh0-V4": "6206221820582134172",
    "H256-I128-B1-float32-tanh-hard_sigmoid-bias1-ra1-impl1-mx3-mh3-V8": "1965989008365351935",
    "H64-I128-B4-float32-tanh-hard_sigmoid-bias1-ra0-impl1-mx0-mh0-V1": "12466629551974107678",
    "H64-I128-B1-float32-tanh-hard_sigmoid-bias1-ra1-impl2-mx0-mh0-V1": "7668709021878812220",
    "H128-I64-B1-float32-tanh-hard_sigmoid-bias1-ra0-impl1-mx0-mh0-V8": "3689989305479284760",
    "H256-I256-B1-float32-tanh-hard_sigmoid-bias1-ra0-impl1-mx0-mh0-V8": "11223015464763111884",
}
_KEY = re.compile(r"H(\d+)-I(\d+)-B(\d+)-(\w+)-(\w+)-(\w+)-bias(\d)-ra(\d)-impl(\d)-mx(\d)-mh(\d)-V(\d+)$")


def _spec_of_key(key: str, weight_dtype=None) -> StepSpec:
    h, i, b, dt, act, ract, bias, ra, impl, mx, mh, v = _KEY.fullmatch(key).groups()
    cfg = GRUConfig(int(h), activation=act, recurrent_activation=ract, use_bias=bias == "1", reset_after=ra == "1",
                    implementation=int(impl), dtype=dt)
    return StepSpec(cfg, batch=int(b), input_dim=int(i), input_masks=int(mx), recurrent_masks=int(mh), lanes=int(v),
                    weight_dtype=weight_dtype)


def _workload(spec: StepSpec) -> str:
    return tuning_db.workload_key(tuning_db.module(compute.step_primfunc(spec)))


@pytest.mark.parametrize("key", sorted(HEAD_HASHES))
def test_float32_step_primfunc_hash_is_unchanged(key):
    spec = _spec_of_key(key)
    assert spec.key() == key  # the key tune.py files baselines under is unchanged too
    assert _workload(spec) == HEAD_HASHES[key]
    # spelling the default out is the same kernel
    spelled = _spec_of_key(key, weight_dtype="float32")
    assert spelled == spec and _workload(spelled) == HEAD_HASHES[key]


def test_float16_is_another_workload():
    key = "H256-I128-B1-float32-tanh-hard_sigmoid-bias1-ra0-impl1-mx0-mh0-V8"
    spec = _spec_of_key(key, weight_dtype="float16")
    assert spec.key() == key + "-wfloat16" and spec.storage_dtype == "float16"
    assert _workload(spec) != HEAD_HASHES[key]  # never matches a float32 tuning record
    params = {p.name: p for p in compute.step_tensors(spec)[:-1]}
    assert str(params["kernel_packed"].dtype) == "float16" and str(params["recurrent_packed"].dtype) == "float16"
    assert str(params["candidate_packed"].dtype) == "float16"
    assert {str(params[n].dtype) for n in ("x", "h", "bias_packed")} == {"float32"}
    assert str(compute.step_tensors(spec)[-1].dtype) == "float32"


def test_committed_tuning_baselines_still_match():
    """Every hand baseline of the tuning logs names a workload hash that today's float32 compute reproduces."""
    files = sorted(Path(__file__).parents[2].glob("tuning_logs/*/hand_baseline.json"))
    if not files:
        pytest.skip("no tuning_logs/*/hand_baseline.json in this checkout")
    lines = [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]
    checked = {e["spec"]: e["workload"] for e in lines if _KEY.fullmatch(e["spec"])}
    assert checked
    for key, workload in checked.items():
        assert _workload(_spec_of_key(key)) == workload, key
    # on the machine kind they were tuned on, the records still apply: same hand-schedule sources, and every
    # workload whose newest baseline says its record won is served the tuned module
    host = targets.resolve("host")
    mine = {e["spec"]: e for e in lines if e.get("target") == tuning_db.target_key(host)}  # newest per spec
    if not mine:
        return
    assert {e["hand_source"] for e in mine.values()} == {tuning_db.hand_fingerprint(host)}
    won = [k for k, e in mine.items()
           if e.get("record") and e["tuned_seconds"] < e["seconds"] * (1 - tuning_db.MARGIN)]
    assert won
    for key in won:
        assert tuning_db.lookup(compute.step_primfunc(_spec_of_key(key)), host) is not None, key


# ------------------------------------------------------------------------------------ API
def test_weight_dtype_argument_and_config():
    default = tvm_gru.GRUCell(8)
    assert default.weight_dtype == "float32" and "weight_dtype" not in default.get_config()  # Keras keys only
    half = tvm_gru.GRUCell(8, weight_dtype="float16")
    cfg = half.get_config()
    assert cfg["weight_dtype"] == "float16" and cfg["dtype"] == "float32"
    assert tvm_gru.GRUCell.from_config(cfg).weight_dtype == "float16"
    assert tvm_gru.GRUCell(8, weight_dtype=np.float16).weight_dtype == "float16"
    assert "weight_dtype='float16'" in repr(half) and "weight_dtype" not in repr(default)
    for bad, dtype in (("bfloat16", "float32"), ("float64", "float32"), ("float16", "float64"), (True, "float32")):
        with pytest.raises(ValueError, match="`weight_dtype` must be"):
            tvm_gru.GRUCell(8, dtype=dtype, weight_dtype=bad)
    with pytest.raises(ValueError, match="`weight_dtype` must be"):
        StepSpec(GRUConfig(8, dtype="float64"), batch=1, input_dim=4, weight_dtype="float16")


def test_get_weights_keep_float32_and_packed_weights_are_half():
    cell = _cell(weight_dtype="float16")
    kernel = np.random.default_rng(3).uniform(-1, 1, (24, 120)).astype("float32")
    weights = cell.get_weights()
    cell.set_weights([kernel, *weights[1:]])
    got = cell.get_weights()
    assert got[0].dtype == np.float32
    np.testing.assert_array_equal(got[0], kernel)  # Keras weights as set, not rounded
    packed = tvm_gru.packed_weights(cell)
    assert {n: str(a.dtype) for n, a in packed.items()} == {
        "kernel_packed": "float16", "recurrent_packed": "float16", "candidate_packed": "float16",
        "bias_packed": "float32"}
    assert np.count_nonzero(packed["kernel_packed"].astype(np.float32) != 0) == np.count_nonzero(kernel)
    func = tvm_gru.primfunc(cell, batch=2)  # the IRModule API hands out the float16-storage kernel too
    params = dict(re.findall(r'(\w+): T\.Buffer\(\([^)]*\), "(\w+)"', func.script()))
    assert {n: params[n] for n in packed} == {n: str(a.dtype) for n, a in packed.items()}
    assert params["x"] == params["h"] == params["h_new"] == "float32"


def test_weights_beyond_float16_range_are_refused(tmp_path):
    cell = _cell(units=8, input_dim=4, weight_dtype="float16")
    before = cell.get_weights()
    big = [w.copy() for w in before]
    big[1][2, 5] = -7.0e4  # rounds to -inf in float16
    with pytest.raises(ValueError, match=r"recurrent_kernel holds 70000, beyond the largest float16 \(65504\)"):
        cell.set_weights(big)
    for got, want in zip(cell.get_weights(), before):  # nothing changed
        np.testing.assert_array_equal(got, want)
    edge = [w.copy() for w in before]
    edge[0][0, 0], edge[0][1, 1], edge[0][2, 2] = 65504.0, np.inf, 1e-9  # the largest half, inf stays inf, ->0
    cell.set_weights(edge)
    packed = tvm_gru.packed_weights(cell)["kernel_packed"]
    kernel = unpack_matrix(packed, 8, fused=cell.lanes > 1 or cell.config.implementation == 2)
    assert packed.dtype == np.float16 and kernel.shape == (4, 24)
    assert kernel[0, 0] == 65504.0 and np.isposinf(kernel[1, 1]) and kernel[2, 2] == 0.0
    np.testing.assert_array_equal(kernel[3], edge[0][3].astype(np.float16))
    full = _cell(units=8, input_dim=4)
    full.set_weights(big)  # float32 storage takes it
    with pytest.raises(ValueError, match="beyond the largest float16"):
        full.export(tmp_path / "big16", target="host", weight_dtype="float16")
    assert not (tmp_path / "big16").exists()


# ------------------------------------------------------------------------------------ numerics on this CPU
ACTIVATIONS = [("tanh", "hard_sigmoid"), ("relu", "sigmoid")]


@pytest.mark.parametrize("activation,recurrent_activation", ACTIVATIONS, ids=["tanh-hard_sigmoid", "relu-sigmoid"])
@pytest.mark.parametrize("reset_after", [False, True], ids=["ra0", "ra1"])
@pytest.mark.parametrize("implementation", [1, 2], ids=["impl1", "impl2"])
def test_float16_storage_matches_rounded_reference(activation, recurrent_activation, reset_after, implementation):
    kwargs = dict(activation=activation, recurrent_activation=recurrent_activation, reset_after=reset_after,
                  implementation=implementation)
    half = _cell(units=40, input_dim=24, seed=implementation + 2 * reset_after, weight_dtype="float16", **kwargs)
    full = _cell(units=40, input_dim=24, seed=implementation + 2 * reset_after, **kwargs)
    for batch in (1, 3):
        x, h = _inputs(half, batch, seed=batch)
        out16, _ = half(x, [h])
        out32, _ = full(x, [h])
        ref16 = reference.step(half.config, x, h, *_rounded(half.get_weights()))
        assert out16.dtype == np.float32
        err = float(np.max(np.abs(out16 - ref16)))
        assert err <= 1e-5 * max(1.0, float(np.max(np.abs(ref16)))), f"batch {batch}: {err:.3e} vs rounded reference"
        moved = float(np.max(np.abs(out16 - out32)))
        low, high = _rounding_window(half.get_weights(), x, h)
        # it is the float16 weights (not a silent float32 copy) and they move the result by rounding only
        assert max(low, 20 * err) < moved <= high, \
            f"batch {batch}: |f16 - f32| = {moved:.3e}, expected ({low:.1e}, {high:.1e}], err {err:.3e}"


def test_float16_storage_no_bias_and_training_masks():
    """No bias (no float32 array beside the half ones) and the dropout kernels (float32 masks) also widen."""
    cell = _cell(units=16, input_dim=8, use_bias=False, weight_dtype="float16", seed=4)
    x, h = _inputs(cell, 2)
    out, _ = cell(x, [h])
    ref = reference.step(cell.config, x, h, *_rounded(cell.get_weights()))
    assert float(np.max(np.abs(out - ref))) <= 1e-5 * max(1.0, float(np.max(np.abs(ref))))
    drop = _cell(units=16, input_dim=8, dropout=0.3, recurrent_dropout=0.2, weight_dtype="float16", seed=5)
    out, _ = drop(x, [h], training=True)
    mx, mh = drop._masks["input"], drop._masks["recurrent"]  # noqa: SLF001  (the masks this call used)
    ref = reference.step(drop.config, x, h, *_rounded(drop.get_weights()), input_masks=mx, recurrent_masks=mh)
    assert float(np.max(np.abs(out - ref))) <= 1e-5 * max(1.0, float(np.max(np.abs(ref))))


def _asm(spec, target):
    import tvm  # noqa: PLC0415

    from tvm_gru.build.step import scheduled_module  # noqa: PLC0415

    with target:
        return tvm.compile(scheduled_module(spec, target), target=target).mod.inspect_source("asm")


@pytest.mark.parametrize("family,widen,fma", [
    ("x86", r"vcvtph2ps\s+[^\n]*%ymm", r"vfmadd\w+ps\s+[^\n]*%ymm"),  # 8 halves -> 8 floats
    ("aarch64", r"fcvtl2?\s+v\d+\.4s,\s*v\d+\.4h", r"fmla\s+v\d+\.4s"),
])
def test_vector_widening_instructions(family, widen, fma):
    """The half weights are widened by the SIMD conversion (F16C / NEON), not a scalar libcall per element."""
    target = targets.resolve({"name": "x86", "mcpu": "haswell"} if family == "x86" else {"name": "aarch64"})
    cfg = GRUConfig(256, reset_after=True, implementation=2)
    spec = StepSpec(cfg, batch=1, input_dim=256, lanes=targets.lanes(target, "float32"), weight_dtype="float16")
    asm = _asm(spec, target)
    assert len(re.findall(widen, asm)) >= 16, family
    assert len(re.findall(fma, asm)) >= 32, family
    plain = _asm(StepSpec(cfg, batch=1, input_dim=256, lanes=spec.lanes), target)
    assert not re.findall(widen, plain)


# ------------------------------------------------------------------------------------ artifacts
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cell = _cell(units=24, input_dim=10, reset_after=True, recurrent_activation="sigmoid", seed=7)
    path = cell.export(tmp_path_factory.mktemp("f16") / "gru", target="host", batch=(1, 4), weight_dtype="float16")
    return cell, path


def test_export_writes_half_weights(exported):
    cell, path = exported
    meta = json.loads((path / METADATA).read_text())
    assert meta["weight_dtype"] == "float16" and meta["dtype"] == "float32" and meta["config"]["dtype"] == "float32"
    if meta["target"]["cpu_features"]:
        assert "f16c" in meta["target"]["cpu_features"]
    with np.load(path / "weights.npz") as data:
        dtypes = {k: str(data[k].dtype) for k in data.files}
        kernel = data["kernel_packed"]
    assert dtypes == {"kernel_packed": "float16", "recurrent_packed": "float16", "bias_packed": "float32"}
    assert meta["shapes"]["kernel_packed"] == list(kernel.shape)
    assert cell.weight_dtype == "float32"  # exporting with float16 does not change the cell


def test_load_float16_artifact_matches(exported):
    cell, path = exported
    deployed = load(path)
    assert deployed.weight_dtype == np.float16 and deployed.dtype == np.float32
    assert "weight_dtype='float16'" in repr(deployed)
    half = tvm_gru.GRUCell.from_config({**cell.get_config(), "weight_dtype": "float16"})
    half.set_weights(cell.get_weights())
    rounded = _rounded(cell.get_weights())
    for got, want in zip(deployed.get_weights(), rounded):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want.astype(np.float32))
    for batch in (1, 4):
        x, h = _inputs(cell, batch, seed=batch)
        out, [h2] = deployed(x, [h])
        assert h2 is out and out.dtype == np.float32
        ref16 = reference.step(cell.config, x, h, *rounded)
        assert float(np.max(np.abs(out - ref16))) <= 1e-5 * max(1.0, float(np.max(np.abs(ref16))))
        np.testing.assert_allclose(out, half(x, [h])[0], rtol=0, atol=1e-6)
        assert float(np.max(np.abs(out - cell(x, [h])[0]))) > 1e-6  # not the float32 weights


def _rewrite_weights(path: Path, arrays: dict) -> None:
    np.savez(path / "weights.npz", **arrays)
    meta = json.loads((path / METADATA).read_text())
    meta["files"]["weights.npz"] = hashlib.sha256((path / "weights.npz").read_bytes()).hexdigest()
    (path / METADATA).write_text(json.dumps(meta))


def _edit(path: Path, **changes) -> None:
    meta = json.loads((path / METADATA).read_text())
    meta.update(changes)
    (path / METADATA).write_text(json.dumps(meta))


def test_loader_refuses_weight_dtype_mismatches(exported, tmp_path):
    _, src = exported
    with np.load(src / "weights.npz") as data:
        arrays = {k: data[k] for k in data.files}

    widened = tmp_path / "widened"  # float32 matrices in an artifact whose metadata (and kernel) say float16
    shutil.copytree(src, widened)
    _rewrite_weights(widened, {**arrays, "kernel_packed": arrays["kernel_packed"].astype(np.float32)})
    with pytest.raises(ArtifactError, match=r"kernel_packed .* dtype float32.*weight_dtype=float16"):
        load(widened)

    relabelled = tmp_path / "relabelled"  # the metadata says float32 over half weights
    shutil.copytree(src, relabelled)
    _edit(relabelled, weight_dtype="float32")
    with pytest.raises(ArtifactError, match=r"kernel_packed .* dtype float16"):
        load(relabelled)

    half_bias = tmp_path / "half_bias"  # the bias must stay float32
    shutil.copytree(src, half_bias)
    _rewrite_weights(half_bias, {**arrays, "bias_packed": arrays["bias_packed"].astype(np.float16)})
    with pytest.raises(ArtifactError, match="bias_packed"):
        load(half_bias)

    unknown = tmp_path / "unknown"
    shutil.copytree(src, unknown)
    _edit(unknown, weight_dtype="bfloat16")
    with pytest.raises(ArtifactError, match="weight_dtype 'bfloat16'"):
        load(unknown)


def test_float32_export_is_unchanged(tmp_path):
    cell = _cell(units=16, input_dim=8, seed=9)
    path = export_cell(cell, tmp_path / "f32", target="host")
    meta = json.loads((path / METADATA).read_text())
    assert meta["weight_dtype"] == "float32" and "f16c" not in meta["target"]["cpu_features"]
    with np.load(path / "weights.npz") as data:
        assert {str(data[k].dtype) for k in data.files} == {"float32"}
    x, h = _inputs(cell, 1)
    np.testing.assert_array_equal(load(path)(x, [h])[0], cell(x, [h])[0])


def test_cli_weight_dtype(tmp_path, capsys):
    from tvm_gru import cli  # noqa: PLC0415

    out = tmp_path / "cli16"
    assert cli.main(["export", "--units", "16", "--input-dim", "8", "--weight-dtype", "float16",
                     "--out", str(out)]) == 0
    with np.load(out / "weights.npz") as data:
        assert str(data["kernel_packed"].dtype) == "float16"
    assert json.loads((out / METADATA).read_text())["weight_dtype"] == "float16"
    # layers store their weights as float16 too (the whole-sequence kernel: test_sequence_weight_dtype.py)
    assert cli.main(["export", "--layer", "--units", "16", "--input-dim", "8", "--weight-dtype", "float16",
                     "--out", str(tmp_path / "layer16")]) == 0
    assert json.loads((tmp_path / "layer16" / METADATA).read_text())["weight_dtype"] == "float16"
    with pytest.raises(SystemExit) as exc:
        cli.main(["export", "--units", "16", "--input-dim", "8", "--dtype", "float64", "--weight-dtype", "float16",
                  "--out", str(tmp_path / "f64")])
    assert exc.value.code == 2 and "`weight_dtype` must be" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ aarch64 under qemu
def test_aarch64_float16_artifact_under_qemu(tmp_path):
    from conftest import qemu_kit, run_emulated  # noqa: PLC0415
    from test_arm_qemu import EMULATED  # noqa: PLC0415  (the cell script the ARM tests run)

    kit = qemu_kit()
    cell = _cell(units=20, input_dim=12, seed=11, recurrent_activation="sigmoid")
    art = cell.export(tmp_path / "arm16", target={"name": "aarch64", "mcpu": "cortex-a72"}, batch=(1, 3),
                      weight_dtype="float16")
    inputs, expected = {}, {}
    for b in (1, 3):
        x, h = _inputs(cell, b, seed=b)
        inputs[f"x{b}"], inputs[f"h{b}"] = x, h
        expected[b] = reference.step(cell.config, x, h, *_rounded(cell.get_weights()))
    np.savez(tmp_path / "in.npz", **inputs)
    data = run_emulated(kit, tmp_path, EMULATED, [{"name": "arm16", "artifact": str(art),
                                                   "inputs": str(tmp_path / "in.npz")}], art)
    for b, ref in expected.items():
        got = data[f"arm16/{b}"]
        err = float(np.max(np.abs(got - ref)))
        assert err <= 1e-5 * max(1.0, float(np.max(np.abs(ref)))), f"batch {b}: {err:.3e}"
    assert data["modules"].size == 0  # numpy + apache-tvm-ffi only on the board


# ------------------------------------------------------------------------------------ CUDA, structural (no GPU)
def _need_cuda_compiler():
    pytest.importorskip("tvm")
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is needed to compile CUDA kernels (and to read their PTX)")


@pytest.mark.parametrize("reset_after,implementation", [(False, 1), (True, 2)], ids=["ra0-impl1", "ra1-impl2"])
def test_cuda_ptx_reads_half_weights_and_accumulates_f32(reset_after, implementation):
    _need_cuda_compiler()
    import tvm  # noqa: PLC0415
    from tvm.support import nvcc  # noqa: PLC0415

    from tvm_gru.build.step import scheduled_module  # noqa: PLC0415
    from tvm_gru.deploy.toolchains import cuda_compile_env  # noqa: PLC0415
    from tvm_gru.schedules.cuda import CUDAStepRule  # noqa: PLC0415

    target = targets.resolve({"name": "cuda", "arch": "sm_80"})
    spec = StepSpec(GRUConfig(96, reset_after=reset_after, implementation=implementation), batch=1, input_dim=256,
                    lanes=1, weight_dtype="float16")
    assert CUDAStepRule().default_config(spec, target).unroll == 8  # twice the loads in flight of float32
    with cuda_compile_env(), target:
        src = str(tvm.compile(scheduled_module(spec, target), target=target).mod.imports[0].inspect_source())
        ptx = nvcc.compile_cuda(src, target_format="ptx", arch="sm_80", compiler="nvcc").decode()
    kernels = [line for line in src.splitlines() if line.startswith('extern "C" __global__') and "{" in line]
    assert kernels and all("half* __restrict__ kernel_packed" in k or "half* __restrict__ candidate_packed" in k
                           for k in kernels)
    assert all("half* __restrict__ x_ptr" not in k and "float* __restrict__ h_ptr" in k for k in kernels)
    loads16 = re.findall(r"ld\.global(?:\.nc)?\.(?:u16|b16|f16)\b", ptx)
    widen = re.findall(r"cvt\.f32\.f16\b", ptx)
    assert len(loads16) >= 8 and len(widen) >= len(loads16), (len(loads16), len(widen))
    assert re.findall(r"fma\.rn(?:\.ftz)?\.f32\b", ptx)
    assert not re.findall(r"\b(?:fma|add|mul|sub)(?:\.rn)?(?:\.ftz)?\.f16x?2?\b", ptx)  # no half arithmetic
    assert "__shfl_down_sync" in src and "__shared__" not in src


def test_cuda_float16_artifact_builds(tmp_path):
    _need_cuda_compiler()
    from tvm_gru.deploy.toolchains import embedded_binary_kind  # noqa: PLC0415

    cell = _cell(units=64, input_dim=32, seed=12)
    art = cell.export(tmp_path / "cuda16", target={"name": "cuda", "arch": "sm_80"}, batch=(1, 3),
                      weight_dtype="float16")
    meta = json.loads((art / METADATA).read_text())
    assert meta["weight_dtype"] == "float16" and meta["target"]["family"] == "cuda"
    assert embedded_binary_kind((art / "kernel.so").read_bytes()) in ("fatbin", "cubin")
    with np.load(art / "weights.npz") as data:
        assert str(data["kernel_packed"].dtype) == "float16" and str(data["bias_packed"].dtype) == "float32"
        assert data["kernel_packed"].shape == (3, 64, 32, 1)  # implementation 1, V = 1: gate-major rows


# ------------------------------------------------------------------------------------ CUDA numerics (GPU)
GPU_CASES = [  # name, config, input_dim, batch sizes
    ("v1_default", dict(units=64), 32, (1, 3)),
    ("sigmoid_ra_impl2", dict(units=64, recurrent_activation="sigmoid", reset_after=True, implementation=2), 32,
     (1, 3)),
    ("ra_impl1_relu", dict(units=33, activation="relu", reset_after=True), 17, (1, 4)),
    ("bench_sigmoid_256", dict(units=256, recurrent_activation="sigmoid", reset_after=True, implementation=2),
     256, (1,)),
    ("bench_v1_1024", dict(units=1024), 512, (1,)),
]


def build_gpu_cases(root: Path, arch: str = CUDA_ARCH) -> Path:
    """Each case as a float16 artifact ``<name>_f16`` and its float32 twin ``<name>_f32`` (same weights)."""
    root.mkdir(parents=True, exist_ok=True)
    for i, (name, cfg, input_dim, batches) in enumerate(GPU_CASES):
        cell = _cell(input_dim=input_dim, seed=100 + i, **cfg)
        for wdt, suffix in (("float16", "f16"), ("float32", "f32")):
            export_cell(cell, root / f"{name}_{suffix}", target={"name": "cuda", "arch": arch}, batch=batches,
                        overwrite=True, weight_dtype=wdt)
    return root


@pytest.fixture(scope="module")
def gpu_bundle(tmp_path_factory):
    sys.path.insert(0, str(Path(__file__).parents[1] / "schedules"))  # also when tests/schedules is not collected
    from test_cuda import gpu_bundle_or_skip  # noqa: PLC0415

    return gpu_bundle_or_skip("TVM_GRU_CUDA_F16_BUNDLE", lambda: build_gpu_cases(tmp_path_factory.mktemp("cuda_f16")))


@pytest.mark.gpu
@pytest.mark.parametrize("name", [c[0] for c in GPU_CASES])
def test_cuda_float16_matches_rounded_reference(gpu_bundle, name):
    half, full = load(gpu_bundle / f"{name}_f16"), load(gpu_bundle / f"{name}_f32")
    assert half.weight_dtype == np.float16 and full.weight_dtype == np.float32
    cfg = GRUConfig(**half.config)
    rounded = half.get_weights()  # the float16-rounded values, widened: what the kernel multiplies
    rng = np.random.default_rng(1)
    for b in half.batch_sizes:
        x = rng.uniform(-1, 1, (b, half.input_dim)).astype("float32")
        h = rng.uniform(-1, 1, (b, half.units)).astype("float32")
        out16, _ = half(x, [h])
        out32, _ = full(x, [h])
        ref16 = reference.step(cfg, x, h, *rounded)
        err = float(np.max(np.abs(out16 - ref16)))
        assert err <= tolerance("float32", ref16), f"{name} batch {b}: {err:.3e}"
        low, high = _rounding_window(full.get_weights(), x, h)
        moved = float(np.max(np.abs(out16 - out32)))
        assert low < moved <= high, f"{name} batch {b}: |f16 - f32| = {moved:.3e}, expected ({low:.1e}, {high:.1e}]"


@pytest.mark.gpu
def test_cuda_float16_device_tensors(gpu_bundle):
    torch = pytest.importorskip("torch")
    cell = load(gpu_bundle / "sigmoid_ra_impl2_f16")
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (3, cell.input_dim)).astype("float32")
    h = rng.uniform(-1, 1, (3, cell.units)).astype("float32")
    out, _ = cell(torch.from_numpy(x).cuda(), [torch.from_numpy(h).cuda()])
    got = torch.from_dlpack(out).cpu().numpy()
    ref = reference.step(GRUConfig(**cell.config), x, h, *cell.get_weights())
    assert float(np.max(np.abs(got - ref))) <= tolerance("float32", ref)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="export the float16/float32 CUDA test artifacts (no GPU needed)")
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--arch", default=CUDA_ARCH)
    args = parser.parse_args()
    print(build_gpu_cases(Path(args.bundle), arch=args.arch))
