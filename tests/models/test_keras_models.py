"""Model.from_keras: saved tf_keras models (.h5 and .keras, from tests/goldens/make_keras_models.py) compiled
without TensorFlow, checked against TF's ``predict`` outputs in-process, deployed (export -> tvm_gru.load), from
the CLI and under qemu-aarch64."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

import tvm_gru
from tvm_gru import cli
from tvm_gru.interop.keras_file import read_keras
from tvm_gru.layers.bidirectional import Bidirectional
from tvm_gru.layers.gru import GRU
from tvm_gru.models import Model
from tvm_gru.runtime.format import METADATA

TOL = 1e-5
DATA = Path(__file__).resolve().parents[1] / "goldens" / "keras_models"
MODELS = ["kws", "masked", "rnn_cell", "bidir", "bidir_lists", "conv", "shapes", "tokens"]


def _cases(name: str) -> dict:
    """{case: (inputs, TF predict outputs)} of a model's goldens."""
    with np.load(DATA / f"{name}.npz") as g:
        out = {}
        for case in g["cases"]:
            xs = [g[k] for k in sorted(k for k in g.files if k.startswith("x") and k.endswith(f"_{case}"))]
            ys = [g[k] for k in sorted(k for k in g.files if k.startswith("y") and k.endswith(f"_{case}"))]
            out[str(case)] = (xs, ys)
    return out


def _check(model, name: str) -> None:
    for case, (xs, ys) in _cases(name).items():
        got = model(xs if len(xs) > 1 else xs[0])
        got = got if isinstance(got, list) else [got]
        assert len(got) == len(ys), case
        for g, y in zip(got, ys):
            assert g.shape == y.shape, (case, g.shape, y.shape)
            np.testing.assert_allclose(g, y, rtol=0, atol=TOL, err_msg=f"{name} {case}")


def _batches(name: str) -> list:
    return sorted({xs[0].shape[0] for xs, _ in _cases(name).values()})


@pytest.mark.parametrize("fmt", ["h5", "keras"])
@pytest.mark.parametrize("name", MODELS)
def test_model_matches_tf_predict_in_process_and_deployed(name, fmt, tmp_path):
    model = Model.from_keras(DATA / f"{name}.{fmt}", batch=_batches(name))
    _check(model, name)
    if fmt == "h5":  # the deployed artifact runs the same executable: once per model is enough
        deployed = tvm_gru.load(model.export(tmp_path / "art"))
        assert type(deployed).__name__ == "DeployedModel"
        _check(deployed, name)


def test_keras_weight_paths_follow_classes_not_names():
    """In a .keras file gru_a is stored under layers/gru and gru_b under layers/gru_1: both formats agree."""
    h5, zipped = read_keras(DATA / "kws.h5"), read_keras(DATA / "kws.keras")
    assert set(h5.weights) == set(zipped.weights) == {"gru_a", "gru_b", "dense"}
    with h5py.File(DATA / "kws.h5", "r") as f:
        group = f["model_weights/gru_b"]
        names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
        want = [np.array(group[n]) for n in names]
    assert names[0].endswith("kernel:0") and "recurrent" in names[1]
    for w, a, b in zip(want, h5.weights["gru_b"], zipped.weights["gru_b"]):
        np.testing.assert_array_equal(a, w)
        np.testing.assert_array_equal(b, w)
    assert zipped.weights["gru_a"][0].shape == (8, 18) and zipped.weights["gru_b"][0].shape == (6, 15)


def test_get_layer_gives_tvm_gru_layers_with_the_file_weights():
    model = Model.from_keras(DATA / "bidir.keras", batch=1)
    layer = model.get_layer("bidirectional_2")
    assert isinstance(layer, Bidirectional) and layer.merge_mode == "ave" and layer.return_state
    assert not layer.forward_layer.use_bias
    weights = read_keras(DATA / "bidir.h5").weights["bidirectional_2"]
    for got, want in zip(layer.get_weights(), weights):
        np.testing.assert_array_equal(got, want)
    gru = Model.from_keras(DATA / "kws.h5").get_layer("gru_a")
    assert isinstance(gru, GRU) and gru.return_sequences and gru.units == 6
    # the layer runs on its own: its output feeds gru_b, whose last state feeds the Dense softmax
    xs, ys = _cases("kws")["b1_t10"]
    dense = read_keras(DATA / "kws.h5").weights["dense"]
    h = Model.from_keras(DATA / "kws.h5").get_layer("gru_b")(gru(xs[0]))
    logits = h @ dense[0] + dense[1]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(probs / probs.sum(-1, keepdims=True), ys[0], rtol=0, atol=TOL)
    with pytest.raises(ValueError, match=r"no GRU-family layer named 'dense'.*\['gru_a', 'gru_b'\]"):
        Model.from_keras(DATA / "kws.h5").get_layer("dense")


def test_rnn_cell_model_layer_is_a_gru_with_the_cell_options():
    layer = Model.from_keras(DATA / "rnn_cell.h5").get_layer("rnn")
    assert isinstance(layer, GRU)
    assert (layer.activation, layer.implementation, layer.return_state, layer.return_sequences) == \
        ("relu", 2, True, True)
    assert layer.dropout == pytest.approx(0.3)


def test_bidirectional_rnn_cell_with_an_explicit_backward_layer():
    model = Model.from_keras(DATA / "tokens.h5", batch=[1, 3])
    layer = model.get_layer("bidirectional_5")
    assert isinstance(layer, Bidirectional) and layer.merge_mode == "concat"
    assert (layer.forward_layer.reset_after, layer.forward_layer.go_backwards) == (True, False)
    assert (layer.backward_layer.activation, layer.backward_layer.go_backwards) == ("softsign", True)
    # the Embedding mask matters: the padded rows differ from what the unmasked ids give
    (ids, context), (want,) = _cases("tokens")["b3_t7"]
    assert (ids == 0).any()
    np.testing.assert_allclose(model(ids, context), want, rtol=0, atol=TOL)
    assert np.abs(model(np.where(ids == 0, 1, ids), context) - want).max() > 1e-2


def test_embedding_ids_out_of_the_table_are_refused(tmp_path):
    # TF raises for an id outside [0, input_dim); the compiled lookup would clamp, so the call checks the ids of
    # an input an Embedding reads (in-process and deployed: the range is in the metadata)
    model = Model.from_keras(DATA / "conv.h5", batch=[2])
    (tokens, extra), (want,) = _cases("conv")["b2_t7"]
    assert model.inputs[0]["index_range"] == [0, 12] and "index_range" not in model.inputs[1]
    deployed = tvm_gru.load(model.export(tmp_path / "conv"))
    for run in (model, deployed):
        np.testing.assert_allclose(run(tokens, extra), want, rtol=0, atol=TOL)
        for bad, shown in ((12, "12"), (-1, "-1")):
            ids = tokens.copy()
            ids[1, 3] = bad
            with pytest.raises(ValueError, match=rf"input 'tokens' holds indices into a table of 12 rows, in "
                                                 rf"\[0, 12\); received .*{shown}.* at \(1, 3\)"):
                run(ids, extra)


def test_batch_sizes_and_list_inputs(tmp_path):
    model = Model.from_keras(DATA / "conv.keras", batch=[1, 2])
    assert model.batch_sizes == [1, 2] and model.input_names == ["tokens", "extra"]
    xs, ys = _cases("conv")["b2_t7"]
    np.testing.assert_allclose(model(*xs), ys[0], rtol=0, atol=TOL)
    np.testing.assert_allclose(model(tokens=xs[0], extra=xs[1]), ys[0], rtol=0, atol=TOL)
    with pytest.raises(ValueError, match="compiled for batch sizes"):
        model([np.zeros((3, 4), np.int32), np.zeros((3, 3), np.float32)])


def test_cli_exports_a_keras_model(tmp_path):
    assert cli.main(["export", "--keras", str(DATA / "masked.keras"), "--batches", "1,3",
                     "--out", str(tmp_path / "art")]) == 0
    meta = json.loads((tmp_path / "art" / METADATA).read_text())
    assert meta["kind"] == "model" and meta["batch_sizes"] == [1, 3]
    _check(tvm_gru.load(tmp_path / "art"), "masked")


def test_cli_keras_argument_errors(tmp_path, capsys):
    for argv, match in ((["--keras", str(tmp_path / "missing.h5")], "argument --keras: file not found"),
                        (["--keras", str(DATA / "kws.h5"), "--onnx", str(DATA / "kws.h5")],
                         "argument --keras: not allowed with --config or --onnx")):
        with pytest.raises(SystemExit):
            cli.main(["export", *argv, "--out", str(tmp_path / "art")])
        assert match in capsys.readouterr().err
    assert not (tmp_path / "art").exists()


# ---------------------------------------------------------------------------------------- aarch64
ARM_SCRIPT = r'''
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[3])
import tvm_gru_runtime.artifact as artifact
cases = json.load(open(sys.argv[1]))
results = {}
for case in cases:
    model = artifact.load(case["artifact"])
    with np.load(case["inputs"]) as data:
        out = model(data["x"])
    out = out if isinstance(out, list) else [out]
    for j, y in enumerate(out):
        results[f"{case['name']}_{j}"] = y
np.savez(sys.argv[2], **results)
'''


def test_aarch64_export_runs_under_qemu(tmp_path):
    from conftest import qemu_kit, run_emulated

    kit = qemu_kit()
    cases, wants = [], {}
    for name, case in (("kws", "b3_t7"), ("masked", "b3_t6")):
        model = Model.from_keras(DATA / f"{name}.keras", target={"name": "aarch64", "mcpu": "cortex-a72"},
                                 batch=_batches(name))
        path = model.export(tmp_path / f"{name}_arm")
        assert (path / "model.so").read_bytes()[18] == 183  # ELF e_machine: EM_AARCH64
        xs, ys = _cases(name)[case]
        np.savez(tmp_path / f"{name}_x.npz", x=xs[0])
        cases.append({"name": name, "artifact": str(path), "inputs": str(tmp_path / f"{name}_x.npz")})
        wants.update({f"{name}_{j}": y for j, y in enumerate(ys)})
    zipped = tmp_path / "kws_arm" / "python" / "tvm_gru_runtime.zip"
    out = run_emulated(kit, tmp_path, ARM_SCRIPT, cases, zipped)
    for key, want in wants.items():
        np.testing.assert_allclose(out[key], want, rtol=0, atol=TOL, err_msg=key)


def test_aarch64_model_is_not_callable_here():
    if os.uname().machine != "x86_64":
        pytest.skip("runs on an x86 host")
    model = Model.from_keras(DATA / "rnn_cell.h5", target="aarch64")
    with pytest.raises(RuntimeError, match="cannot run on this machine; export it"):
        model(np.zeros((1, 3, 5), np.float32))
