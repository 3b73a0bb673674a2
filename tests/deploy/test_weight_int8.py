"""``weight_dtype="int8"``: the kernel and recurrent kernel quantized per Keras column (symmetric, one float32 scale
per output unit and gate), widened to float32 in the product's inner loop and scaled once per product.

Two yardsticks: against a numpy reference that multiplies the same dequantized weights the kernel must agree to
float32 rounding; against float32 storage it must stay within the documented bound
(:func:`tvm_gru.runtime.packing.int8_error_bound` per pre-activation). x86 numerics run here (AVX2/AVX-512
``vpmovsxbd`` + ``vcvtdq2ps``); the aarch64 artifact (NEON) runs under qemu when the emulation kit is there.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import tvm_gru
from tvm_gru import GRUConfig, StepSpec, targets
from tvm_gru.ops import compute, reference
from tvm_gru.runtime.artifact import METADATA, ArtifactError, load
from tvm_gru.runtime.packing import INT8_LEVELS, dequantize_int8, int8_error_bound, quantize_int8

sys.path.insert(0, str(Path(__file__).parents[1]))
from conftest import biased_cell  # noqa: E402


def _cell(units=40, input_dim=24, seed=0, **kwargs):
    return biased_cell(units, input_dim, seed, **kwargs)


def _dequantized(weights):
    """Keras weights with the two matrices replaced by what an int8-storage kernel multiplies by."""
    return [dequantize_int8(*quantize_int8(weights[0])), dequantize_int8(*quantize_int8(weights[1])), *weights[2:]]


def _inputs(cell, batch, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.uniform(-1, 1, (batch, cell.input_dim)).astype("float32"),
            rng.uniform(-1, 1, (batch, cell.units)).astype("float32"))


def _rounding(ref) -> float:
    """float32 rounding of a step: the kernel scales after the sum, the reference before each product."""
    return 1e-5 * max(1.0, float(np.max(np.abs(ref))))


def _output_bound(weights, x, h, ref) -> float:
    """How far int8 storage may move one step's output, from the per-pre-activation bound d (max over columns).

    z moves by <= d (activations used here are 1-Lipschitz or flatter) and multiplies |h - hh|; the candidate moves
    by <= d + |dr| * max(|h| @ |R_h|) (reset_after=False reads r * h; reset_after=True multiplies r by h R_h).
    """
    d = float(np.max(int8_error_bound(weights[0], weights[1], x, h)))
    units = h.shape[1]
    a = float(np.max(np.abs(h) @ np.abs(weights[1][:, 2 * units:]))) + 1.0  # + |rb_h| <= 0.5 here
    return d * (np.max(np.abs(h)) + np.max(np.abs(ref)) + 1.0 + a)


# ------------------------------------------------------------------------------------ quantization
def test_quantize_int8_is_symmetric_per_column():
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.3, (50, 12)).astype(np.float32)
    w[:, 3] = 0.0  # an all-zero column: scale 0, q 0 (no division by zero)
    w[7, 5] = -2.5  # a column whose peak is negative
    q, scale = quantize_int8(w)
    assert q.dtype == np.int8 and scale.dtype == np.float32 and q.shape == w.shape and scale.shape == (12,)
    np.testing.assert_allclose(scale, np.max(np.abs(w), axis=0) / INT8_LEVELS, rtol=1e-7)
    assert int(np.abs(q.astype(int)).max()) == INT8_LEVELS and q[7, 5] == -INT8_LEVELS and int(q.min()) >= -127
    assert scale[3] == 0 and not q[:, 3].any()
    err = np.abs(dequantize_int8(q, scale) - w)
    assert np.all(err <= scale / 2 * (1 + 1e-6) + 1e-12)  # at most half a step per weight
    assert float(err.max()) > 0.3 * float(scale.max()) / 2  # and round to nearest actually uses that half step


def test_int8_error_bound_is_attained_in_sign():
    """The bound is a worst case: x aligned with each column's rounding error reaches it."""
    rng = np.random.default_rng(1)
    k, r = rng.normal(0, 0.2, (16, 9)), rng.normal(0, 0.2, (3, 9))
    deq_k, deq_r = dequantize_int8(*quantize_int8(k), "float64"), dequantize_int8(*quantize_int8(r), "float64")
    x, h = np.sign(deq_k - k)[:, :1].T, np.sign(deq_r - r)[:, :1].T  # worst case for column 0
    moved = (x @ (deq_k - k) + h @ (deq_r - r))[0, 0]
    bound = int8_error_bound(k, r, x, h)
    assert bound.shape == (1, 9) and 0.4 * bound[0, 0] < moved <= bound[0, 0] * (1 + 1e-6)


# ------------------------------------------------------------------------------------ API
def test_weight_dtype_int8_argument_and_config():
    cell = tvm_gru.GRUCell(8, weight_dtype="int8")
    cfg = cell.get_config()
    assert cfg["weight_dtype"] == "int8" and cfg["dtype"] == "float32"
    assert tvm_gru.GRUCell.from_config(cfg).weight_dtype == "int8"
    assert tvm_gru.GRUCell(8, weight_dtype=np.int8).weight_dtype == "int8"
    assert "weight_dtype='int8'" in repr(cell)
    for bad, dtype in (("int8", "float64"), ("uint8", "float32"), ("int16", "float32")):
        with pytest.raises(ValueError, match=rf"`weight_dtype` must be None or one of .* for a {dtype} cell, "
                                             rf"received '{bad}'"):
            tvm_gru.GRUCell(8, dtype=dtype, weight_dtype=bad)


def test_int8_spec_params_and_workload():
    spec = StepSpec(GRUConfig(64), batch=1, input_dim=32, lanes=8, weight_dtype="int8")
    assert spec.key().endswith("-wint8") and spec.storage_dtype == "int8"
    params = {p.name: str(p.dtype) for p in compute.step_tensors(spec)[:-1]}
    assert list(params) == ["x", "h", "kernel_packed", "recurrent_packed", "candidate_packed", "bias_packed",
                            "weight_scale"]
    assert {params[n] for n in ("kernel_packed", "recurrent_packed", "candidate_packed")} == {"int8"}
    assert {params[n] for n in ("x", "h", "bias_packed", "weight_scale")} == {"float32"}


def test_packed_weights_are_int8_with_scales():
    cell = _cell(units=12, input_dim=5, weight_dtype="int8")
    weights = cell.get_weights()
    packed = tvm_gru.packed_weights(cell)
    assert {n: str(a.dtype) for n, a in packed.items()} == {
        "kernel_packed": "int8", "recurrent_packed": "int8", "candidate_packed": "int8", "bias_packed": "float32",
        "weight_scale": "float32"}
    assert packed["weight_scale"].shape == (2, 3, -(-12 // cell.lanes) * cell.lanes)
    scales = packed["weight_scale"][:, :, :12].reshape(2, 36)
    np.testing.assert_array_equal(scales[0], quantize_int8(weights[0])[1])
    np.testing.assert_array_equal(scales[1], quantize_int8(weights[1])[1])
    assert not packed["weight_scale"][:, :, 12:].any()  # padding units: scale 0
    np.testing.assert_array_equal(cell.get_weights()[0], weights[0])  # Keras weights as set, not quantized
    func = tvm_gru.primfunc(cell, batch=1)  # the IRModule API hands out the int8 kernel and its scales
    params = dict(re.findall(r'(\w+): T\.Buffer\(\([^)]*\), "(\w+)"', func.script()))
    assert {n: params[n] for n in packed} == {n: str(a.dtype) for n, a in packed.items()}


def test_non_finite_weights_are_refused(tmp_path):
    cell = _cell(units=8, input_dim=4, weight_dtype="int8")
    before = cell.get_weights()
    bad = [w.copy() for w in before]
    bad[1][2, 5] = np.nan
    with pytest.raises(ValueError, match=r"int8'.*recurrent_kernel holds nan at \[2, 5\]; int8 storage needs finite"):
        cell.set_weights(bad)
    for got, want in zip(cell.get_weights(), before):  # nothing changed
        np.testing.assert_array_equal(got, want)
    full = _cell(units=8, input_dim=4)
    bad[1][2, 5] = np.inf
    full.set_weights(bad)  # float32 storage takes it
    with pytest.raises(ValueError, match="recurrent_kernel holds inf"):
        full.export(tmp_path / "inf8", target="host", weight_dtype="int8")
    assert not (tmp_path / "inf8").exists()


# ------------------------------------------------------------------------------------ numerics on this CPU
ACTIVATIONS = [("tanh", "hard_sigmoid"), ("relu", "sigmoid")]


@pytest.mark.parametrize("activation,recurrent_activation", ACTIVATIONS, ids=["tanh-hard_sigmoid", "relu-sigmoid"])
@pytest.mark.parametrize("reset_after", [False, True], ids=["ra0", "ra1"])
@pytest.mark.parametrize("implementation", [1, 2], ids=["impl1", "impl2"])
def test_int8_storage_matches_dequantized_reference(activation, recurrent_activation, reset_after, implementation):
    kwargs = dict(activation=activation, recurrent_activation=recurrent_activation, reset_after=reset_after,
                  implementation=implementation)
    seed = implementation + 2 * reset_after
    q8 = _cell(units=40, input_dim=24, seed=seed, weight_dtype="int8", **kwargs)
    full = _cell(units=40, input_dim=24, seed=seed, **kwargs)
    weights = q8.get_weights()
    for batch in (1, 3):
        x, h = _inputs(q8, batch, seed=batch)
        out8, _ = q8(x, [h])
        out32, _ = full(x, [h])
        ref8 = reference.step(q8.config, x, h, *_dequantized(weights))
        assert out8.dtype == np.float32
        err = float(np.max(np.abs(out8 - ref8)))
        assert err <= _rounding(ref8), f"batch {batch}: {err:.3e} vs dequantized reference"
        moved = float(np.max(np.abs(out8 - out32)))
        high = _output_bound(weights, x, h, ref8)
        # the int8 weights (not a silent float32 copy), moving the result by quantization only
        assert max(20 * err, 1e-5) < moved <= high, f"batch {batch}: |i8 - f32| = {moved:.3e} > bound {high:.3e}"


def test_int8_storage_no_bias_and_training_masks():
    cell = _cell(units=16, input_dim=8, use_bias=False, weight_dtype="int8", seed=4)
    x, h = _inputs(cell, 2)
    out, _ = cell(x, [h])
    ref = reference.step(cell.config, x, h, *_dequantized(cell.get_weights()))
    assert float(np.max(np.abs(out - ref))) <= _rounding(ref)
    drop = _cell(units=16, input_dim=8, dropout=0.3, recurrent_dropout=0.2, weight_dtype="int8", seed=5)
    out, _ = drop(x, [h], training=True)
    mx, mh = drop._masks["input"], drop._masks["recurrent"]  # noqa: SLF001  (the masks this call used)
    ref = reference.step(drop.config, x, h, *_dequantized(drop.get_weights()), input_masks=mx, recurrent_masks=mh)
    assert float(np.max(np.abs(out - ref))) <= _rounding(ref)


def test_int8_sequence_stays_near_float32():
    """100 steps of the v1 cell (the step loop): the int8 outputs track float32 storage (measured ~1e-3)."""
    q8 = _cell(units=64, input_dim=32, seed=8, weight_dtype="int8")
    full = _cell(units=64, input_dim=32, seed=8)
    xs = np.random.default_rng(2).uniform(-1, 1, (100, 1, 32)).astype("float32")
    h8 = h32 = np.zeros((1, 64), np.float32)
    worst = 0.0
    for x in xs:
        h8, _ = q8(x, [h8])
        h32, _ = full(x, [h32])
        worst = max(worst, float(np.max(np.abs(h8 - h32))))
    ref = reference.sequence(q8.config, xs, np.zeros((1, 64)), *_dequantized(q8.get_weights()))
    assert float(np.max(np.abs(h8 - ref[-1]))) <= 1e-4
    assert 1e-5 < worst < 2e-2, worst


def _asm(spec, target):
    import tvm  # noqa: PLC0415

    from tvm_gru.build.step import scheduled_module  # noqa: PLC0415

    with target:
        return tvm.compile(scheduled_module(spec, target), target=target).mod.inspect_source("asm")


def _loop_bodies(asm: str) -> list:
    """The instructions of every innermost loop in ``asm``: from a label to the branch back to it, with no other
    label in between."""
    lines = asm.splitlines()
    labels = {m[1]: i for i, line in enumerate(lines) if (m := re.match(r"^(\.LBB\w+):", line))}
    bodies = []
    for i, line in enumerate(lines):
        m = re.match(r"\s+(?:j\w+|b(?:\.\w+)?|cbn?z\s+\w+,|tbn?z\s+\w+,\s*#\d+,)\s+(\.LBB\w+)", line)
        if m and labels.get(m[1], i) < i and not any(re.match(r"^\.LBB\w+:", x) for x in lines[labels[m[1]] + 1:i]):
            bodies.append("\n".join(lines[labels[m[1]]:i + 1]))
    return bodies


@pytest.mark.parametrize("mcpu,lanes", [("haswell", 8), ("znver4", 16)], ids=["avx2", "avx512"])
def test_x86_inner_loop_widens_int8_vectors(mcpu, lanes):
    """Each k step loads V int8 weights, sign-extends them to int32 lanes and converts them (vpmovsxbd +
    vcvtdq2ps) before the FMA: one widening per weight vector, no scalar loop."""
    target = targets.resolve({"name": "x86", "mcpu": mcpu})
    spec = StepSpec(GRUConfig(256), batch=1, input_dim=256, lanes=targets.lanes(target, "float32"),
                    weight_dtype="int8")
    assert spec.lanes == lanes
    reg = "ymm" if lanes == 8 else "zmm"
    loops = [b for b in _loop_bodies(_asm(spec, target)) if "vpmovsxbd" in b]
    assert len(loops) >= 2  # the three-gate product and the candidate's
    for body in loops:
        widen = re.findall(rf"vpmovsxbd\s+[^\n]*%{reg}", body)
        convert = re.findall(rf"vcvtdq2ps\s+%{reg}\d+, %{reg}", body)
        fma = re.findall(rf"vfmadd\w+ps\s+[^\n]*%{reg}", body)
        assert len(widen) == len(convert) == len(fma) >= 4, (len(widen), len(convert), len(fma))
        assert not re.search(r"vcvtsi2ss|movsb[lqw]|vpinsrb", body)  # no scalar widening
    plain = _asm(StepSpec(GRUConfig(256), batch=1, input_dim=256, lanes=spec.lanes), target)
    assert "vpmovsxbd" not in plain


def test_aarch64_inner_loop_converts_int8_vectors():
    """NEON: the int8 weights become float32 lanes with vector instructions (LLVM: 4-byte load, ``tbl`` to the top
    byte of each lane and ``scvtf #24``, or ``sxtl`` + ``scvtf``), each feeding a 4-lane ``fmla``; no scalar
    conversion, and no spill (the rule caps the int8 tile at ``max_widened_accumulators``)."""
    target = targets.resolve({"name": "aarch64"})
    spec = StepSpec(GRUConfig(256, reset_after=True, implementation=2), batch=1, input_dim=256,
                    lanes=targets.lanes(target, "float32"), weight_dtype="int8")
    loops = [b for b in _loop_bodies(_asm(spec, target)) if re.search(r"scvtf\s+v", b)]
    assert loops
    for body in loops:
        convert = re.findall(r"scvtf\s+v\d+\.4s", body)
        fma = re.findall(r"fmla\s+v\d+\.4s", body)
        assert len(convert) >= 8 and len(fma) >= len(convert), (len(convert), len(fma))
        assert not re.search(r"scvtf\s+s\d+|ldrsb|smov", body)
        assert not re.search(r"\[sp", body)  # the tile fits the 32 registers: no spill inside the k loop


# ------------------------------------------------------------------------------------ artifacts
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cell = _cell(units=24, input_dim=10, reset_after=True, recurrent_activation="sigmoid", seed=7)
    path = cell.export(tmp_path_factory.mktemp("i8") / "gru", target="host", batch=(1, 4), weight_dtype="int8")
    return cell, path


def test_export_writes_int8_weights_and_scales(exported):
    cell, path = exported
    meta = json.loads((path / METADATA).read_text())
    assert meta["weight_dtype"] == "int8" and meta["dtype"] == "float32"
    assert meta["kernel"]["weights"][-1] == "weight_scale" and meta["kernel"]["args"][-2] == "weight_scale"
    with np.load(path / "weights.npz") as data:
        dtypes = {k: str(data[k].dtype) for k in data.files}
        scales = data["weight_scale"]
    assert dtypes == {"kernel_packed": "int8", "recurrent_packed": "int8", "bias_packed": "float32",
                      "weight_scale": "float32"}
    np.testing.assert_array_equal(scales[0, :, :24].reshape(-1), quantize_int8(cell.get_weights()[0])[1])
    assert cell.weight_dtype == "float32"  # exporting with int8 does not change the cell


def test_load_int8_artifact_matches(exported):
    cell, path = exported
    deployed = load(path)
    assert deployed.weight_dtype == np.int8 and deployed.dtype == np.float32
    assert "weight_dtype='int8'" in repr(deployed)
    q8 = tvm_gru.GRUCell.from_config({**cell.get_config(), "weight_dtype": "int8"})
    q8.set_weights(cell.get_weights())
    deq = _dequantized(cell.get_weights())
    for got, want in zip(deployed.get_weights(), deq):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
    for batch in (1, 4):
        x, h = _inputs(cell, batch, seed=batch)
        out, [h2] = deployed(x, [h])
        assert h2 is out and out.dtype == np.float32
        ref8 = reference.step(cell.config, x, h, *deq)
        assert float(np.max(np.abs(out - ref8))) <= _rounding(ref8)
        np.testing.assert_array_equal(out, q8(x, [h])[0])  # the same kernel in-process and deployed
        assert float(np.max(np.abs(out - cell(x, [h])[0]))) > 1e-5  # not the float32 weights


def _rewrite_weights(path: Path, arrays: dict) -> None:
    np.savez(path / "weights.npz", **arrays)
    meta = json.loads((path / METADATA).read_text())
    meta["files"]["weights.npz"] = hashlib.sha256((path / "weights.npz").read_bytes()).hexdigest()
    (path / METADATA).write_text(json.dumps(meta))


def test_loader_refuses_int8_mismatches(exported, tmp_path):
    _, src = exported
    with np.load(src / "weights.npz") as data:
        arrays = {k: data[k] for k in data.files}

    no_scales = tmp_path / "no_scales"  # int8 matrices without their scales
    shutil.copytree(src, no_scales)
    _rewrite_weights(no_scales, {k: v for k, v in arrays.items() if k != "weight_scale"})
    meta = json.loads((no_scales / METADATA).read_text())
    meta["kernel"]["weights"].remove("weight_scale")
    (no_scales / METADATA).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=r"the kernel weights are .*implies .*'weight_scale'"):
        load(no_scales)

    relabelled = tmp_path / "relabelled"  # the metadata says float16 over int8 weights
    shutil.copytree(src, relabelled)
    meta = json.loads((relabelled / METADATA).read_text())
    meta["weight_dtype"] = "float16"
    (relabelled / METADATA).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="weight_scale"):
        load(relabelled)

    uint = tmp_path / "uint"  # the matrices must be int8, not uint8 of the same bytes
    shutil.copytree(src, uint)
    _rewrite_weights(uint, {**arrays, "kernel_packed": arrays["kernel_packed"].view(np.uint8)})
    with pytest.raises(ArtifactError, match=r"kernel_packed .* dtype uint8"):
        load(uint)


def test_cli_weight_dtype_int8(tmp_path, capsys):
    from tvm_gru import cli  # noqa: PLC0415

    out = tmp_path / "cli8"
    assert cli.main(["export", "--units", "16", "--input-dim", "8", "--weight-dtype", "int8", "--out", str(out)]) == 0
    with np.load(out / "weights.npz") as data:
        assert str(data["kernel_packed"].dtype) == "int8" and str(data["weight_scale"].dtype) == "float32"
    assert json.loads((out / METADATA).read_text())["weight_dtype"] == "int8"
    with pytest.raises(SystemExit) as exc:
        cli.main(["export", "--units", "16", "--input-dim", "8", "--dtype", "float64", "--weight-dtype", "int8",
                  "--out", str(tmp_path / "f64")])
    assert exc.value.code == 2 and "`weight_dtype` must be" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ aarch64 under qemu
def test_aarch64_int8_artifact_under_qemu(tmp_path):
    from conftest import qemu_kit, run_emulated  # noqa: PLC0415
    from test_arm_qemu import EMULATED  # noqa: PLC0415  (the cell script the ARM tests run)

    kit = qemu_kit()
    cell = _cell(units=20, input_dim=12, seed=11)
    art = cell.export(tmp_path / "arm8", target={"name": "aarch64", "mcpu": "cortex-a72"}, batch=(1, 3),
                      weight_dtype="int8")
    inputs, expected = {}, {}
    for b in (1, 3):
        x, h = _inputs(cell, b, seed=b)
        inputs[f"x{b}"], inputs[f"h{b}"] = x, h
        expected[b] = reference.step(cell.config, x, h, *_dequantized(cell.get_weights()))
    np.savez(tmp_path / "in.npz", **inputs)
    data = run_emulated(kit, tmp_path, EMULATED, [{"name": "arm8", "artifact": str(art),
                                                   "inputs": str(tmp_path / "in.npz")}], art)
    for b, ref in expected.items():
        err = float(np.max(np.abs(data[f"arm8/{b}"] - ref)))
        assert err <= _rounding(ref), f"batch {b}: {err:.3e}"
    assert data["modules"].size == 0  # numpy + apache-tvm-ffi only on the board


# ------------------------------------------------------------------------------------ CUDA, structural (no GPU)
def test_cuda_ptx_reads_int8_weights_and_accumulates_f32():
    """The CUDA rule takes the int8 TE as it is (one unit per warp): byte loads, each converted to f32 before an f32
    FMA; the activations stay float32. Not run on a GPU here."""
    pytest.importorskip("tvm")
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is needed to compile CUDA kernels (and to read their PTX)")
    import tvm  # noqa: PLC0415
    from tvm.support import nvcc  # noqa: PLC0415

    from tvm_gru.build.step import scheduled_module  # noqa: PLC0415
    from tvm_gru.deploy.toolchains import cuda_compile_env  # noqa: PLC0415

    target = targets.resolve({"name": "cuda", "arch": "sm_80"})
    spec = StepSpec(GRUConfig(96, reset_after=True, implementation=2), batch=1, input_dim=256, lanes=1,
                    weight_dtype="int8")
    with cuda_compile_env(), target:
        src = str(tvm.compile(scheduled_module(spec, target), target=target).mod.imports[0].inspect_source())
        ptx = nvcc.compile_cuda(src, target_format="ptx", arch="sm_80", compiler="nvcc").decode()
    kernels = [line for line in src.splitlines() if line.startswith('extern "C" __global__') and "{" in line]
    assert kernels and all("signed char* __restrict__ kernel_packed" in k and "float* __restrict__ weight_scale" in k
                           and "float* __restrict__ x_ptr" in k for k in kernels)
    assert re.findall(r"ld\.global(?:\.nc)?\.[us]8\b", ptx)
    assert re.findall(r"cvt\.rn\.f32\.s(?:8|16|32)\b", ptx) and re.findall(r"fma\.rn(?:\.ftz)?\.f32\b", ptx)
