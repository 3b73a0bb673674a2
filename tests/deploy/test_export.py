"""Deployable artifacts on this machine: layout, metadata, loading, integrity checks, the CLI, and the
IRModule API used from a Relax program."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import tvm_gru
from tvm_gru.build import modules as api
from tvm_gru.deploy.export import export_cell
from tvm_gru.ops import reference
from tvm_gru.runtime.artifact import FORMAT_VERSION, METADATA, ArtifactError, load, verify

sys.path.insert(0, str(Path(__file__).parents[1]))
from conftest import assert_tampered_kernel_refused, biased_cell, tolerance  # noqa: E402


def _cell(seed=0, units=24, input_dim=10, **kwargs):
    return biased_cell(units, input_dim, seed, **kwargs)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cell = _cell()
    path = export_cell(cell, tmp_path_factory.mktemp("art") / "gru", target="host", batch=(1, 4))
    return cell, path


def _copy(path: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(path, dest)
    return dest


def _edit_meta(path: Path, **changes) -> None:
    meta = json.loads((path / METADATA).read_text())
    for key, value in changes.items():
        target = meta
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    (path / METADATA).write_text(json.dumps(meta))


# ------------------------------------------------------------------------------------ layout and metadata
def test_layout_and_metadata(exported):
    cell, path = exported
    meta = json.loads((path / METADATA).read_text())
    # cells are written as format 1 (the loader reads up to FORMAT_VERSION; layers need 2)
    assert meta["format"] == "tvm_gru.artifact" and meta["format_version"] == 1 and meta["kind"] == "cell"
    assert meta["config"] == cell.config.to_dict() and meta["input_dim"] == 10 and meta["units"] == 24
    assert meta["dtype"] == "float32" and meta["batch_sizes"] == [1, 4]
    assert meta["target"]["family"] == "x86" and meta["target"]["tvm"]["kind"] == "llvm"
    assert {"tvm_gru", "apache-tvm", "apache-tvm-ffi", "numpy"} <= set(meta["versions"])
    assert meta["shapes"]["kernel_packed"] == list(np.load(path / "weights.npz")["kernel_packed"].shape)
    assert {"kernel.so", "weights.npz", "python/tvm_gru_runtime.zip"} <= set(meta["files"])
    for rel, digest in meta["files"].items():
        assert hashlib.sha256((path / rel).read_bytes()).hexdigest() == digest
    assert verify(path) == meta


def test_load_matches_cell_and_reference(exported):
    cell, path = exported
    deployed = load(path)
    assert deployed.batch_sizes == (1, 4) and deployed.units == 24 and deployed.input_dim == 10
    rng = np.random.default_rng(1)
    for batch in (1, 4):
        x = rng.uniform(-1, 1, (batch, 10)).astype("float32")
        h = rng.uniform(-1, 1, (batch, 24)).astype("float32")
        out, [h2] = deployed(x, [h])
        assert h2 is out and out.dtype == np.float32
        ref = reference.step(cell.config, x, h, *cell.get_weights())
        assert np.max(np.abs(out - ref)) <= tolerance("float32", ref)
        np.testing.assert_allclose(out, cell(x, [h])[0], rtol=0, atol=1e-6)
    bare_out, bare_state = deployed(x, h)
    assert bare_state is bare_out
    for got, want in zip(deployed.get_weights(), cell.get_weights()):
        np.testing.assert_array_equal(got, want)


def test_call_errors(exported):
    deployed = load(exported[1])
    x, h = np.zeros((2, 10), "float32"), np.zeros((2, 24), "float32")
    with pytest.raises(ValueError, match=r"kernels for batch sizes \[1, 4\]; received batch 2"):
        deployed(x, [h])
    with pytest.raises(ValueError, match=r"`inputs` must have shape \(batch, 10\)"):
        deployed(np.zeros((1, 9), "float32"), [np.zeros((1, 24), "float32")])
    with pytest.raises(TypeError, match="floating point"):
        deployed(np.zeros((1, 10), "int32"), [np.zeros((1, 24), "float32")])
    with pytest.raises(TypeError, match="numpy array or a DLPack tensor"):
        deployed([[0.0] * 10], [np.zeros((1, 24), "float32")])


# ------------------------------------------------------------------------------------ integrity
def test_tampered_file_is_refused_before_loading(exported, tmp_path):
    path = _copy(exported[1], tmp_path)
    assert_tampered_kernel_refused(path)


@pytest.mark.parametrize("change,match", [
    ({"format_version": FORMAT_VERSION + 1}, "newer than this runtime reads"),
    ({"format": "something"}, "not tvm_gru artifact metadata"),
    ({"target.host_arch": "aarch64", "target.family": "aarch64"}, "cannot run on this"),
    ({"target.cpu_features": ["avx2", "not_a_real_flag"]}, "lacks"),
], ids=["newer", "foreign", "arch", "cpu-features"])
def test_metadata_checks(exported, tmp_path, change, match):
    path = _copy(exported[1], tmp_path)
    _edit_meta(path, **change)
    with pytest.raises(ArtifactError, match=match):
        load(path)


def test_missing_file_and_not_an_artifact(exported, tmp_path):
    path = _copy(exported[1], tmp_path)
    (path / "weights.npz").unlink()
    with pytest.raises(ArtifactError, match="weights.npz is missing"):
        load(path)
    with pytest.raises(ArtifactError, match="not a tvm_gru artifact"):
        load(tmp_path)


def test_aarch64_artifact_refused_on_x86(tmp_path):
    import platform  # noqa: PLC0415

    if platform.machine() != "x86_64" or shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("needs an x86_64 host with the aarch64 cross compiler")
    path = export_cell(_cell(units=8, input_dim=4), tmp_path / "arm", target="aarch64")
    with pytest.raises(ArtifactError, match="built for aarch64 .* cannot run on this x86_64 machine"):
        load(path)


# ------------------------------------------------------------------------------------ export errors
def test_export_errors(exported, tmp_path):
    with pytest.raises(ValueError, match="needs a built cell"):
        export_cell(tvm_gru.GRUCell(4), tmp_path / "a")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_cell(exported[0], exported[1])
    with pytest.raises(ValueError, match="`batch` must be a positive int"):
        export_cell(exported[0], tmp_path / "b", batch=[0])
    with pytest.raises(ValueError, match="Unknown target"):
        export_cell(exported[0], tmp_path / "c", target="tpu")


def test_overwrite_and_float64_no_bias(tmp_path):
    cell = _cell(units=9, input_dim=5, dtype="float64", use_bias=False, reset_after=True, implementation=2)
    export_cell(cell, tmp_path / "g", batch=2)
    path = export_cell(cell, tmp_path / "g", batch=2, overwrite=True)
    deployed = load(path)
    x, h = np.ones((2, 5)), np.full((2, 9), 0.5)
    ref = reference.step(cell.config, x, h, *cell.get_weights())
    assert np.max(np.abs(deployed(x, [h])[0] - ref)) <= tolerance("float64", ref)


def test_cell_export_method(tmp_path):
    cell = _cell(units=8, input_dim=4)
    path = cell.export(tmp_path / "m", target="host")
    x, h = np.ones((1, 4), "float32"), np.zeros((1, 8), "float32")
    np.testing.assert_allclose(load(path)(x, [h])[0], cell(x, [h])[0], atol=1e-6)


def test_deployed_cell_with_dropout_is_inference_only(tmp_path):
    """Keras would apply dropout with training=True; the artifact has no dropout kernels, so it refuses."""
    cell = _cell(units=8, input_dim=4, dropout=0.3, recurrent_dropout=0.2)
    deployed = load(cell.export(tmp_path / "d", target="host"))
    x, h = np.ones((1, 4), "float32"), np.full((1, 8), 0.25, "float32")
    with pytest.raises(ValueError, match=r"`training`=True.*dropout=0\.3"):
        deployed(x, [h], training=True)
    ref = reference.step(cell.config, x, h, *cell.get_weights())
    for training in (None, False):
        assert np.max(np.abs(deployed(x, [h], training=training)[0] - ref)) <= tolerance("float32", ref)


# ------------------------------------------------------------------------------------ CLI
def test_cli_export_from_keras_config_and_weights(tmp_path):
    from tvm_gru import cli  # noqa: PLC0415

    cell = _cell(units=12, input_dim=6, recurrent_activation="sigmoid", reset_after=True)
    (tmp_path / "cfg.json").write_text(json.dumps({"class_name": "GRUCell", "config": cell.get_config()}))
    np.savez(tmp_path / "w.npz", kernel=cell.kernel, recurrent_kernel=cell.recurrent_kernel, bias=cell.bias)
    rc = cli.main(["export", "--config", str(tmp_path / "cfg.json"), "--weights", str(tmp_path / "w.npz"),
                   "--out", str(tmp_path / "art"), "--target", "host", "--batches", "1,3"])
    assert rc == 0
    deployed = load(tmp_path / "art")
    assert deployed.batch_sizes == (1, 3) and deployed.config["reset_after"] is True
    x, h = np.ones((3, 6), "float32"), np.full((3, 12), 0.25, "float32")
    np.testing.assert_allclose(deployed(x, [h])[0], cell(x, [h])[0], atol=1e-6)


def test_cli_export_aarch64_seeded_cell(tmp_path, capsys):
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("needs the aarch64 cross compiler")
    from tvm_gru import cli  # noqa: PLC0415

    rc = cli.main(["export", "--units", "32", "--input-dim", "16", "--target", "aarch64", "--mcpu", "cortex-a72",
                   "--out", str(tmp_path / "arm")])
    assert rc == 0 and "aarch64" in capsys.readouterr().out
    meta = json.loads((tmp_path / "arm" / METADATA).read_text())
    assert meta["target"]["tvm"]["mcpu"] == "cortex-a72"


def test_cli_export_from_onnx(tmp_path):
    from tvm_gru import cli  # noqa: PLC0415
    from tvm_gru.interop.onnx_export import cell_to_onnx  # noqa: PLC0415

    cell = _cell(units=10, input_dim=5)
    cell_to_onnx(cell, str(tmp_path / "gru.onnx"))
    assert cli.main(["export", "--onnx", str(tmp_path / "gru.onnx"), "--out", str(tmp_path / "art")]) == 0
    x, h = np.ones((1, 5), "float32"), np.zeros((1, 10), "float32")
    np.testing.assert_allclose(load(tmp_path / "art")(x, [h])[0], cell(x, [h])[0], atol=1e-5)


# ------------------------------------------------------------------------------------ IRModule API
def test_irmodule_api_targets():
    cell = _cell(units=16, input_dim=8)
    mod = api.irmodule(cell, batch=2, name="my_step")
    func = mod["my_step"]
    assert [p.name for p in func.params][:2] == ["x", "h"] and len(func.params) == 2 + 4 + 1
    assert api.primfunc(cell.config, input_dim=8, target="aarch64") is not None
    assert "threadIdx.x" in api.primfunc(cell, target="cuda").script()
    with pytest.raises(ValueError, match="`input_dim` is required"):
        api.primfunc(cell.config)


def test_relax_call_tir():
    """The example of tvm_gru/api.py: two GRU steps chained in a Relax function."""
    import tvm  # noqa: PLC0415
    from tvm import relax  # noqa: PLC0415

    cell = tvm_gru.GRUCell(64, reset_after=True, recurrent_activation="sigmoid", seed=0)
    cell.build((1, 32))
    step = api.primfunc(cell, batch=1)
    weights = api.packed_weights(cell)

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 32), "float32"))
    h = relax.Var("h", relax.TensorType((1, 64), "float32"))
    ws = [relax.Var(n, relax.TensorType(a.shape, "float32")) for n, a in weights.items()]
    with bb.function("main", [x, h, *ws]):
        gru = bb.add_func(step, "gru_step")
        with bb.dataflow():
            h1 = bb.emit(relax.call_tir(gru, [x, h, *ws], relax.TensorType((1, 64), "float32")))
            h2 = bb.emit(relax.call_tir(gru, [x, h1, *ws], relax.TensorType((1, 64), "float32")))
            out = bb.emit_output(h2)
        bb.emit_func_output(out)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target=cell.target), tvm.cpu())
    rng = np.random.default_rng(0)
    xv = rng.uniform(-1, 1, (1, 32)).astype("float32")
    hv = rng.uniform(-1, 1, (1, 64)).astype("float32")
    got = vm["main"](*[tvm.runtime.tensor(a) for a in (xv, hv, *weights.values())]).numpy()
    ref = reference.sequence(cell.config, np.stack([xv, xv]), hv, *cell.get_weights())[-1]
    assert np.max(np.abs(got - ref)) <= tolerance("float32", ref)


def test_extra_file_is_refused(exported, tmp_path):
    path = _copy(exported[1], tmp_path)
    (path / "lib" / "libevil.so").write_bytes(b"\x7fELF")
    with pytest.raises(ArtifactError, match="does not list"):
        load(path)


def test_weights_not_matching_the_config_are_refused(exported, tmp_path):
    import hashlib
    import json

    path = _copy(exported[1], tmp_path)
    with np.load(path / "weights.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["kernel_packed"] = arrays["kernel_packed"][..., :1, :]  # drop a row of the input dimension
    np.savez(path / "weights.npz", **arrays)
    meta_path = path / "tvm_gru_artifact.json"
    meta = json.loads(meta_path.read_text())
    meta["files"]["weights.npz"] = hashlib.sha256((path / "weights.npz").read_bytes()).hexdigest()
    meta["shapes"]["kernel_packed"] = list(arrays["kernel_packed"].shape)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="kernel_packed"):
        load(path)
