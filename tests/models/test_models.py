"""tvm_gru.models.Model: whole ONNX models compiled by Relax, checked against onnxruntime; model artifacts
exported, verified and run by the deployed runtime (in-process, without tvm, and under qemu-aarch64)."""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from conftest import gru_gemm_softmax_onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from tvm_gru.models import Model, merge_batches  # noqa: E402
from tvm_gru.models import model as model_module  # noqa: E402
from tvm_gru.runtime.format import ArtifactError  # noqa: E402

TOL = 1e-5
ROOT = Path(__file__).resolve().parents[2]

# Loading a model artifact with the loader under test; ``pkg`` is "tvm_gru.runtime" or, from an artifact's bundled
# zip, "tvm_gru_runtime". Also run as source in the tvm-free and emulated processes.
LOAD_MODEL = r'''
def load_model(path, pkg="tvm_gru.runtime", verify_only=False):
    import importlib
    artifact = importlib.import_module(pkg + ".artifact")
    return artifact.verify(path) if verify_only else artifact.load(path)
'''
_NS: dict = {}
exec(LOAD_MODEL, _NS)  # noqa: S102
load_model = _NS["load_model"]


# ---------------------------------------------------------------------------------------- models
def _rng(seed=0):
    return np.random.default_rng(seed)


def _mlp(shape=("batch", "seq", 8), units=16, seed=0, second=False):
    """MatMul + Add + Relu + Softmax over the last axis; ``second``: a second input ``m`` (same leading dims)
    and a second output ``y * m``."""
    rng = _rng(seed)
    w = rng.standard_normal((shape[-1], units)).astype(np.float32)
    b = rng.standard_normal(units).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Softmax", ["r"], ["y"], axis=-1)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*shape[:-1], units])]
    if second:
        nodes.append(helper.make_node("Mul", ["y", "m"], ["z"]))
        inputs.append(helper.make_tensor_value_info("m", TensorProto.FLOAT, [*shape[:-1], units]))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [*shape[:-1], units]))
    graph = helper.make_graph(nodes, "mlp", inputs, outputs,
                              [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _ort(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.fixture(scope="module")
def mlp():
    return _mlp()


@pytest.fixture(scope="module")
def batched(mlp):
    return Model.from_onnx(mlp, batch=[1, 3])


@pytest.fixture(scope="module")
def two_io():
    onnx_model = _mlp(second=True)
    return onnx_model, Model.from_onnx(onnx_model)


# ---------------------------------------------------------------------------------------- in-process
def test_mlp_any_batch_matches_onnxruntime(mlp):
    model = Model.from_onnx(mlp)
    assert model.batch_sizes is None and model.batch_dim == "batch"
    assert model.inputs == [{"name": "x", "shape": ["batch", "seq", 8], "dtype": "float32"}]
    assert model.outputs == [{"name": "y", "shape": ["batch", "seq", 16], "dtype": "float32"}]
    rng = _rng(1)
    for b, t in ((1, 7), (4, 3), (2, 1)):
        x = rng.standard_normal((b, t, 8)).astype(np.float32)
        y = model(x)
        assert isinstance(y, np.ndarray) and y.shape == (b, t, 16)
        np.testing.assert_allclose(y, _ort(mlp, {"x": x})[0], rtol=0, atol=TOL)


def test_mlp_batch_sizes_match_onnxruntime(mlp, batched):
    assert batched.batch_sizes == [1, 3]
    rng = _rng(2)
    for b, t in ((1, 5), (3, 2), (3, 9)):
        x = rng.standard_normal((b, t, 8)).astype(np.float32)
        np.testing.assert_allclose(batched(x), _ort(mlp, {"x": x})[0], rtol=0, atol=TOL)


def test_two_inputs_two_outputs_by_position_and_name(two_io):
    onnx_model, model = two_io
    rng = _rng(3)
    x = rng.standard_normal((2, 4, 8)).astype(np.float32)
    m = rng.standard_normal((2, 4, 16)).astype(np.float32)
    expected = _ort(onnx_model, {"x": x, "m": m})
    for got in (model(x, m), model(m=m, x=x), model(x, m=m)):
        assert isinstance(got, list) and len(got) == 2
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=0, atol=TOL)
    assert model.output_names == ["y", "z"]


def test_dlpack_and_unaligned_inputs(mlp, batched):
    import tvm_ffi

    rng = _rng(4)
    raw = rng.standard_normal((3, 6, 9)).astype(np.float32)
    x = raw[:, :, 1:]  # not contiguous, not aligned
    expected = _ort(mlp, {"x": np.ascontiguousarray(x)})[0]
    np.testing.assert_allclose(batched(x), expected, rtol=0, atol=TOL)
    dense = np.ascontiguousarray(x)
    np.testing.assert_allclose(batched(tvm_ffi.from_dlpack(dense)), expected, rtol=0, atol=TOL)
    frozen = dense.copy()
    frozen.setflags(write=False)  # DLPack 0.x cannot export it: the call copies (raised BufferError before)
    np.testing.assert_allclose(batched(frozen), expected, rtol=0, atol=TOL)


def test_outputs_are_not_overwritten_by_later_calls(batched):
    # The VM's pooled allocator reuses a buffer once its tensor is dropped: outputs the caller keeps must not be
    # handed out again, while dropped ones are (same shapes, many calls).
    rng = _rng(5)
    kept = []
    for i in range(6):
        y = batched(rng.standard_normal((1, 4, 8)).astype(np.float32))
        if i % 2 == 0:
            kept.append((y, y.copy()))
    for y, kept_copy in kept:
        np.testing.assert_array_equal(y, kept_copy)
    assert len({y.ctypes.data for y, _ in kept}) == len(kept)


BAD_CALLS = [
    ("no input", lambda x: ((), {}), TypeError, r"takes 1 input \['x'\]; missing \['x'\]"),
    ("two inputs", lambda x: ((x, x), {}), TypeError, r"takes 1 input \['x'\]; received 2 positional"),
    ("unknown name", lambda x: ((), {"X": x}), TypeError, r"no input named 'X'; its inputs are \['x'\]"),
    ("twice", lambda x: ((x,), {"x": x}), TypeError, r"'x' was given both by position and by name"),
    ("rank", lambda x: ((x[0],), {}), ValueError, r"'x' must have rank 3, shape \(batch, seq, 8\); received rank 2"),
    ("dtype", lambda x: ((x.astype(np.float64),), {}), TypeError, r"'x' must be float32; received float64"),
    ("int dtype", lambda x: ((x.astype(np.int32),), {}), TypeError, r"'x' must be float32; received int32"),
    ("fixed dim", lambda x: ((x[:, :, :5],), {}), ValueError, r"axis 2 is 8; received shape \(1, 4, 5\)"),
    ("batch", lambda x: ((np.concatenate([x, x]),), {}), ValueError,
     r"compiled for batch sizes \[1, 3\] \(dimension 'batch'\); received batch 2 \(input 'x', axis 0\)"),
    ("list", lambda x: ((x.tolist(),), {}), TypeError, r"`x` must be a numpy array or a DLPack tensor"),
]


@pytest.mark.parametrize("make, error, match", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_inputs_raise_clear_errors(batched, make, error, match):
    x = np.ones((1, 4, 8), np.float32)
    args, kwargs = make(x)
    with pytest.raises(error, match=match):
        batched(*args, **kwargs)


def test_symbolic_dimension_must_agree_across_inputs(two_io):
    _, model = two_io
    with pytest.raises(ValueError, match=r"dimension 'seq' is 4 in input 'x' \(axis 1\) and 3 in input 'm'"):
        model(np.ones((2, 4, 8), np.float32), np.ones((2, 3, 16), np.float32))


def test_static_batch_and_input_shapes(mlp):
    static = _mlp(shape=(2, "seq", 8))
    with pytest.raises(ValueError, match=r"`batch=\[1, 2\]` needs a symbolic batch dimension"):
        Model.from_onnx(static, batch=[1, 2], batch_dim=None, input_shapes={"x": [2, 3, 8]})
    model = Model.from_onnx(static)  # a static batch (2) but a symbolic seq: axis 0 of x is not symbolic
    assert model.batch_dim is None and model.batch_sizes is None
    with pytest.raises(ValueError, match=r"axis 0 is 2"):
        model(np.ones((1, 3, 8), np.float32))
    fixed = Model.from_onnx(mlp, input_shapes={"x": [None, 4, 8]})  # None: a new symbolic dimension
    assert fixed.inputs[0]["shape"] == ["x_0", 4, 8] and fixed.batch_dim == "x_0"
    with pytest.raises(ValueError, match=r"axis 1 is 4"):
        fixed(np.ones((1, 5, 8), np.float32))
    with pytest.raises(ValueError, match=r"`input_shapes` names \['y'\], which are not inputs"):
        Model.from_onnx(mlp, input_shapes={"y": [1, 2, 8]})
    with pytest.raises(ValueError, match=r"`batch_dim` 'N' is not a symbolic dimension"):
        Model.from_onnx(mlp, batch=1, batch_dim="N")


def test_unshaped_input_needs_input_shapes(mlp):
    unshaped = copy.deepcopy(mlp)
    unshaped.graph.input[0].type.tensor_type.ClearField("shape")
    with pytest.raises(ValueError, match=r"graph input 'x' has no shape \(unknown rank\); pass input_shapes"):
        Model.from_onnx(unshaped)
    model = Model.from_onnx(unshaped, input_shapes={"x": ["n", "t", 8]}, batch=2)
    assert model.batch_dim == "n" and model.batch_sizes == [2]
    x = _rng(6).standard_normal((2, 3, 8)).astype(np.float32)
    np.testing.assert_allclose(model(x), _ort(mlp, {"x": x})[0], rtol=0, atol=TOL)


def test_model_file_path_and_cuda_refused(mlp, tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp, str(path))
    model = Model.from_onnx(path, batch=1)
    x = np.ones((1, 2, 8), np.float32)
    np.testing.assert_allclose(model(x), _ort(mlp, {"x": x})[0], rtol=0, atol=TOL)
    with pytest.raises(ValueError, match=r"cannot compile a model for target 'cuda'"):
        Model.from_onnx(mlp, target="cuda")
    with pytest.raises(TypeError, match="a Model cannot be pickled or copied"):
        copy.deepcopy(model)


def test_merge_batches_renames_colliding_functions(mlp):
    from tvm.relax.frontend.onnx import from_onnx

    modules = {}
    for b in (1, 3):
        mod = tvm.relax.transform.LegalizeOps()(from_onnx(model_module._bind_batch(mlp, "batch", b)))
        modules[b] = mod  # PrimFuncs named matmul, add, ... in both, of different shapes
    merged = merge_batches(modules)
    names = sorted(gv.name_hint for gv in merged.functions)
    assert "main_b1" in names and "main_b3" in names
    assert len([n for n in names if n.startswith("matmul")]) == 2  # one per shape: the second one renamed
    ex = tvm.compile(merged, target=tvm.target.Target({"kind": "llvm"}))
    vm = tvm.relax.VirtualMachine(ex, tvm.cpu())
    for b in (1, 3):
        x = _rng(b).standard_normal((b, 2, 8)).astype(np.float32)
        got = vm[f"main_b{b}"](tvm.runtime.tensor(x)).numpy()
        np.testing.assert_allclose(got, _ort(mlp, {"x": x})[0], rtol=0, atol=TOL)


def test_gru_gemm_softmax_matches_onnxruntime(tmp_path):
    onnx_model = gru_gemm_softmax_onnx()
    model = Model.from_onnx(onnx_model, batch=[1, 2])
    assert model.batch_dim == "batch"
    assert model.outputs[0] == {"name": "probs", "shape": ["batch", 4], "dtype": "float32"}
    assert model.outputs[1]["shape"][0] == "seq"
    rng = _rng(7)
    for t, b in ((5, 2), (1, 1), (9, 2)):
        x = rng.standard_normal((t, b, 5)).astype(np.float32)
        probs, y = model(x)
        e_probs, e_y = _ort(onnx_model, {"X": x})
        np.testing.assert_allclose(probs, e_probs, rtol=0, atol=TOL)
        np.testing.assert_allclose(y, e_y, rtol=0, atol=TOL)
    with pytest.raises(ValueError, match=r"compiled for batch sizes \[1, 2\]"):
        model(np.ones((3, 3, 5), np.float32))
    deployed = load_model(model.export(tmp_path / "gru_model"))
    x = rng.standard_normal((6, 2, 5)).astype(np.float32)
    for g, e in zip(deployed(x), model(x)):
        np.testing.assert_array_equal(g, e)


# ---------------------------------------------------------------------------------------- artifacts
@pytest.fixture(scope="module")
def exported(batched, tmp_path_factory):
    return batched.export(tmp_path_factory.mktemp("models") / "mlp")


def test_export_metadata(exported):
    meta = load_model(exported, verify_only=True)
    assert meta["format_version"] == 3 and meta["kind"] == "model"
    assert meta["inputs"] == [{"name": "x", "shape": ["batch", "seq", 8], "dtype": "float32"}]
    assert meta["outputs"] == [{"name": "y", "shape": ["batch", "seq", 16], "dtype": "float32"}]
    assert meta["batch_sizes"] == [1, 3] and meta["batch_dim"] == "batch"
    assert meta["kernel"] == {"library": "model.so", "functions": {"1": "main_b1", "3": "main_b3"}}
    assert sorted(meta["files"]) == ["lib/libtvm_runtime.so", "model.so", "python/tvm_gru_runtime.zip"]
    assert meta["target"]["family"] == "x86" if os.uname().machine == "x86_64" else "aarch64"
    assert {"apache-tvm", "apache-tvm-ffi", "tvm_gru"} <= set(meta["versions"])


def test_export_round_trip_same_numbers(batched, exported):
    deployed = load_model(exported)
    assert type(deployed).__name__ == "DeployedModel" and deployed.batch_sizes == [1, 3]
    rng = _rng(8)
    for b, t in ((1, 3), (3, 11)):
        x = rng.standard_normal((b, t, 8)).astype(np.float32)
        np.testing.assert_array_equal(deployed(x), batched(x))
    with pytest.raises(ValueError, match=r"compiled for batch sizes \[1, 3\]"):
        deployed(np.ones((2, 3, 8), np.float32))
    with pytest.raises(TypeError, match="cannot be pickled or copied"):
        pickle.dumps(deployed)
    with pytest.raises(TypeError, match="cannot be pickled or copied"):
        copy.deepcopy(deployed)


def test_export_runs_without_tvm(batched, exported, tmp_path):
    x = _rng(9).standard_normal((3, 5, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    script = LOAD_MODEL + (
        "import sys, numpy as np\n"
        f"sys.path.insert(0, {str(exported / 'python' / 'tvm_gru_runtime.zip')!r})\n"
        f"model = load_model({str(exported)!r}, 'tvm_gru_runtime')\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, model(np.load({str(tmp_path / 'x.npy')!r})))\n"
        "assert not any(m == 'tvm' or m.startswith('tvm.') for m in sys.modules), 'tvm was imported'\n")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), batched(x))


def test_export_tampered_or_extra_file_refused(exported, tmp_path):
    import shutil

    copy_ = tmp_path / "copy"
    shutil.copytree(exported, copy_)
    (copy_ / "extra.so").write_bytes(b"x")
    with pytest.raises(ArtifactError, match=r"files its metadata does not list: \['extra.so'\]"):
        load_model(copy_)
    (copy_ / "extra.so").unlink()
    blob = bytearray((copy_ / "model.so").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (copy_ / "model.so").write_bytes(blob)
    with pytest.raises(ArtifactError, match="model.so is damaged or was modified"):
        load_model(copy_)


def test_bad_model_metadata_refused(exported, tmp_path):
    from tvm_gru.runtime.format import FORMAT_VERSION, check_metadata

    meta = json.loads((exported / "tvm_gru_artifact.json").read_text())
    check_metadata(copy.deepcopy(meta), "m")
    cases = [
        (lambda m: m.update(format_version=2), "needs format version >= 3"),
        (lambda m: m.update(format_version=FORMAT_VERSION + 1), "newer than this runtime reads"),
        (lambda m: m["kernel"]["functions"].pop("3"), r"one function per batch size, keyed \['1', '3'\]"),
        (lambda m: m["inputs"][0].update(dtype="complex64"), r"inputs\[0\].dtype"),
        (lambda m: m["inputs"][0]["shape"].__setitem__(1, "s q"), r"inputs\[0\].shape\[1\]"),
        (lambda m: m["kernel"].update(library="other.so"), "which 'files' does not list"),
        (lambda m: m["target"].update(family="cuda"), "run on CPUs only"),
        (lambda m: m.update(batch_dim="time"), "batch_dim"),
        (lambda m: m["outputs"].clear(), "outputs"),
        (lambda m: m["inputs"][0].update(index_range=[5, 5]), r"inputs\[0\].index_range"),
        (lambda m: m["inputs"][0].update(index_range=[0, "9"]), r"inputs\[0\].index_range\[1\]"),
        (lambda m: m["inputs"][0].update(index_range=[0, 1, 2]), r"inputs\[0\].index_range"),
    ]
    for change, match in cases:
        bad = copy.deepcopy(meta)
        change(bad)
        with pytest.raises(ArtifactError, match=match):
            check_metadata(bad, "m")


def test_export_destination_and_target_checks(batched, exported, tmp_path):

    with pytest.raises(FileExistsError, match="exists; pass overwrite=True"):
        batched.export(exported)
    with pytest.raises(ValueError, match=r"cannot export a model for target 'cuda'"):
        batched.export(tmp_path / "cuda", target="cuda")
    assert not (tmp_path / "cuda").exists()
    again = batched.export(exported, overwrite=True)
    assert load_model(again, verify_only=True)["kind"] == "model"


ARM_SCRIPT = LOAD_MODEL + r'''
import json, sys
cases = json.load(open(sys.argv[1]))
sys.path.insert(0, cases[0]["artifact"] + "/python/tvm_gru_runtime.zip")
import numpy as np
results = {}
for case in cases:
    model = load_model(case["artifact"], "tvm_gru_runtime")
    results[case["name"]] = model(np.load(case["x"]))
results["modules"] = np.array(sorted(m for m in sys.modules if m == "tvm" or m.startswith("tvm.")))
np.savez(sys.argv[2], **results)
'''


def test_aarch64_export_runs_under_qemu(mlp, batched, tmp_path):
    from conftest import qemu_kit, run_emulated

    if os.uname().machine == "x86_64":  # compiled for another architecture: callable only once exported
        with pytest.raises(RuntimeError, match="cannot run on this machine; export it"):
            Model.from_onnx(mlp, target="aarch64")(np.ones((1, 2, 8), np.float32))
    kit = qemu_kit()
    path = batched.export(tmp_path / "mlp_arm", target={"name": "aarch64", "mcpu": "cortex-a72"})
    meta = load_model(path, verify_only=True)
    assert meta["target"]["family"] == "aarch64"
    assert (path / "model.so").read_bytes()[18] == 183  # ELF e_machine: EM_AARCH64
    x = _rng(10).standard_normal((3, 7, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    case = {"name": "mlp", "artifact": str(path), "x": str(tmp_path / "x.npy")}
    out = run_emulated(kit, tmp_path, ARM_SCRIPT, [case])
    assert out["modules"].size == 0
    np.testing.assert_allclose(out["mlp"], _ort(mlp, {"x": x})[0], rtol=0, atol=TOL)


def test_cli_exports_a_whole_onnx_model(tmp_path):
    """`tvm-gru export --onnx` on a graph with more than one GRU node writes a model artifact; on a single GRU
    node it still writes a layer artifact (the layer's own path)."""
    from tvm_gru import cli  # noqa: PLC0415

    onnx_model = gru_gemm_softmax_onnx()
    onnx.save(onnx_model, str(tmp_path / "model.onnx"))
    assert cli.main(["export", "--onnx", str(tmp_path / "model.onnx"), "--batches", "1,2",
                     "--out", str(tmp_path / "art")]) == 0
    deployed = load_model(tmp_path / "art")
    assert deployed.batch_sizes == [1, 2] and type(deployed).__name__ == "DeployedModel"
    x = _rng(3).standard_normal((4, 2, 5)).astype(np.float32)
    for got, want in zip(deployed(x), _ort(onnx_model, {"X": x})):
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
    with pytest.raises(SystemExit):  # argparse error: --model reads an ONNX file
        cli.main(["export", "--model", "--units", "8", "--out", str(tmp_path / "nothing")])
    assert not (tmp_path / "nothing").exists()


def test_onnx_models_need_no_torch(tmp_path):
    """torch is an optional extra: tvm_gru.relax and Model.from_onnx work in a process where it cannot be imported
    (TVM's torch frontend imports torch, so it is imported only by the torch path)."""
    onnx.save(gru_gemm_softmax_onnx(), str(tmp_path / "m.onnx"))
    script = (
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is not installed here')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "import numpy as np, tvm_gru\n"
        f"model = tvm_gru.Model.from_onnx({str(tmp_path / 'm.onnx')!r}, batch=[1])\n"
        "probs, y = model(np.zeros((3, 1, 5), np.float32))\n"
        "assert probs.shape == (1, 4) and 'torch' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
