"""Keras model files are untrusted: hostile or unsupported files are refused with a ValueError that names what
was wrong (layer name and class, sizes, links, member names), before anything is compiled; and the layer-level
``from_config`` of GRU, GRUCell and Bidirectional accept the serialised forms and name the class they refuse."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from tvm_gru.interop import keras_file
from tvm_gru.interop.keras_file import read_keras
from tvm_gru.layers.bidirectional import Bidirectional
from tvm_gru.layers.cell import GRUCell
from tvm_gru.layers.gru import GRU
from tvm_gru.models import Model
from tvm_gru.relax.keras_frontend import SUPPORTED_LAYERS, KerasGraph

DATA = Path(__file__).resolve().parents[1] / "goldens" / "keras_models"


def _members(path) -> dict:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def _write_zip(path, members: dict, compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _with_config(tmp_path, change, name="kws") -> Path:
    """A copy of ``name``.keras whose config.json went through ``change(config)``."""
    members = _members(DATA / f"{name}.keras")
    config = json.loads(members["config.json"])
    change(config)
    members["config.json"] = json.dumps(config).encode()
    return _write_zip(tmp_path / f"{name}_changed.keras", members)


def _with_h5(tmp_path, change, name="kws") -> Path:
    path = tmp_path / f"{name}_changed.h5"
    shutil.copy(DATA / f"{name}.h5", path)
    with h5py.File(path, "r+") as f:
        change(f)
    return path


# ---------------------------------------------------------------------------------------- unsupported layers
def _replace_class(config, layer: str, class_name: str, **extra):
    for entry in config["config"]["layers"]:
        if entry["config"].get("name") == layer:
            entry["class_name"] = class_name
            entry["config"].update(extra)


def test_unknown_layer_is_named_with_its_class_and_the_supported_list(tmp_path):
    path = _with_config(tmp_path, lambda c: _replace_class(c, "gru_b", "LSTM"))
    with pytest.raises(ValueError, match=r"layer 'gru_b' of class 'LSTM' is not supported; supported layer "
                                         r"classes: .*Bidirectional.*Conv1D.*GRU.*TimeDistributed"):
        Model.from_keras(path)
    assert {"GRU", "RNN", "Bidirectional", "Masking", "Embedding", "Conv1D", "BatchNormalization", "Reshape",
            "Flatten", "Permute", "Concatenate", "Add", "Dropout", "SpatialDropout1D", "GaussianNoise",
            "TimeDistributed", "Dense", "Activation", "InputLayer"} <= set(SUPPORTED_LAYERS)


def test_lambda_layer_is_refused_never_evaluated(tmp_path):
    def add_lambda(config):
        layers = config["config"]["layers"]
        layers.insert(len(layers) - 1, {"class_name": "Lambda", "config": {
            "name": "evil", "function": ["__import__('os').system('touch /tmp/pwned')", None, None],
            "function_type": "lambda", "module": "builtins"}})

    path = _with_config(tmp_path, add_lambda)
    with pytest.raises(ValueError, match=r"layer 'evil' of class 'Lambda' is not supported; supported"):
        Model.from_keras(path)


def test_stateful_and_keras3_graphs_are_refused(tmp_path):
    path = _with_config(tmp_path, lambda c: _replace_class(c, "gru_a", "GRU", stateful=True))
    with pytest.raises(ValueError, match=r"layer 'gru_a' \(GRU\) has stateful=True"):
        Model.from_keras(path)

    def keras3_nodes(config):
        config["config"]["layers"][1]["inbound_nodes"] = [{"args": [], "kwargs": {}}]

    with pytest.raises(ValueError, match="a Keras 3 config is not supported"):
        Model.from_keras(_with_config(tmp_path, keras3_nodes, name="rnn_cell"))


def test_malformed_layer_configs_name_the_layer(tmp_path):
    def no_units(config):
        del config["config"]["layers"][-1]["config"]["units"]

    with pytest.raises(ValueError, match=r"layer 'dense' \(Dense\): its config cannot be converted \(KeyError"):
        Model.from_keras(_with_config(tmp_path, no_units))

    def bad_activation(config):
        config["config"]["layers"][1]["config"]["activation"] = "no_such_activation"

    with pytest.raises(ValueError, match=r"layer 'gru_a' \(GRU\): its config cannot be converted \(ValueError: "
                                         r".*no_such_activation"):
        Model.from_keras(_with_config(tmp_path, bad_activation))

    def bad_target(config):
        next(e for e in config["config"]["layers"] if e["class_name"] == "Reshape")["config"]["target_shape"] = [7, 7]

    with pytest.raises(ValueError, match=r"layer 'reshape' \(Reshape\): its config cannot be converted"):
        Model.from_keras(_with_config(tmp_path, bad_target, name="shapes"))

    def wrapped_lstm(config):
        entry = next(e for e in config["config"]["layers"] if e["class_name"] == "TimeDistributed")
        entry["config"]["layer"]["class_name"] = "LSTM"

    with pytest.raises(ValueError, match=r"layer 'time_distributed' \(TimeDistributed\) wraps a 'LSTM' layer"):
        Model.from_keras(_with_config(tmp_path, wrapped_lstm, name="masked"))


def test_initial_state_keyword_calls_are_refused(tmp_path):
    def kwargs(config):
        config["config"]["layers"][1]["inbound_nodes"][0][0][3] = {"initial_state": [["frames", 0, 0]]}

    with pytest.raises(ValueError, match=r"layer 'rnn' is called with keyword arguments \['initial_state'\]"):
        Model.from_keras(_with_config(tmp_path, kwargs, name="rnn_cell"))


# ---------------------------------------------------------------------------------------- weights
def _replace_dataset(f, path, shape):
    del f[path]
    f.create_dataset(path, data=np.zeros(shape, np.float32))


def test_weight_shapes_that_do_not_match_the_config_are_refused(tmp_path):
    path = _with_h5(tmp_path, lambda f: _replace_dataset(f, "model_weights/dense/dense/kernel:0", (5, 3)))
    with pytest.raises(ValueError, match=r"layer 'dense' \(Dense\): the file holds weights of shapes "
                                         r"\[\(5, 3\), \(4,\)\]; its config implies \[\('\?', 4\), \(4,\)\]"):
        Model.from_keras(path)
    path = _with_h5(tmp_path, lambda f: _replace_dataset(f, "model_weights/gru_b/gru_b/gru_cell/kernel:0", (6, 12)))
    with pytest.raises(ValueError, match=r"layer 'gru_b' \(GRU\): the file's weights \[\(6, 12\), \(5, 15\), "
                                         r"\(15,\)\] do not match the layer's config"):
        Model.from_keras(path)
    path = _with_h5(tmp_path, lambda f: _replace_dataset(f, "model_weights/dense/dense/kernel:0", (7, 4)))
    with pytest.raises(ValueError, match=r"layer 'dense' \(Dense\): its input has 5 features; its kernel \(7, 4\) "
                                         r"expects 7"):
        Model.from_keras(path)


def test_non_numeric_and_external_datasets_are_refused(tmp_path):
    def strings(f):
        del f["model_weights/dense/dense/bias:0"]
        f.create_dataset("model_weights/dense/dense/bias:0", data=np.array([b"a", b"b"]))

    with pytest.raises(ValueError, match="has dtype .*expected a numeric array"):
        read_keras(_with_h5(tmp_path, strings))

    def external_link(f):
        del f["model_weights/dense"]
        f["model_weights/dense"] = h5py.ExternalLink("/etc/passwd", "/")

    with pytest.raises(ValueError, match=r"model_weights/dense is a ExternalLink; only hard links are read"):
        read_keras(_with_h5(tmp_path, external_link))


def test_weights_only_h5_is_refused(tmp_path):
    path = _with_h5(tmp_path, lambda f: f.attrs.__delitem__("model_config"))
    with pytest.raises(ValueError, match="has no 'model_config' attribute: a weights-only file"):
        read_keras(path)


# ---------------------------------------------------------------------------------------- hostile files
def test_wrong_magic_and_truncated_files_are_refused(tmp_path):
    (tmp_path / "text.h5").write_bytes(b"just some text, not a model")
    with pytest.raises(ValueError, match=r"neither an HDF5 \(.h5\) file nor a zip \(.keras\) archive"):
        read_keras(tmp_path / "text.h5")
    raw = (DATA / "kws.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(raw[:len(raw) // 3])
    with pytest.raises(ValueError, match="cut.h5"):
        read_keras(tmp_path / "cut.h5")
    raw = (DATA / "kws.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(raw[:len(raw) // 2])
    with pytest.raises(ValueError, match="not a readable zip archive"):
        read_keras(tmp_path / "cut.keras")
    with pytest.raises(FileNotFoundError):
        read_keras(tmp_path / "missing.keras")


def test_keras3_files_are_refused(tmp_path):
    members = dict(_members(DATA / "kws.keras"), **{"metadata.json": b'{"keras_version": "3.15.1"}'})
    with pytest.raises(ValueError, match=r"was saved by Keras 3.15.1; tvm_gru reads tf_keras 2.x files"):
        read_keras(_write_zip(tmp_path / "k3.keras", members))
    path = _with_h5(tmp_path, lambda f: f.attrs.__setitem__("keras_version", "3.15.1"))
    with pytest.raises(ValueError, match=r"was saved by Keras 3.15.1"):
        read_keras(path)


def test_config_that_is_not_a_model_is_refused(tmp_path):
    members = _members(DATA / "kws.keras")
    members["config.json"] = b'{"class_name": "MyModel", "config": {}}'
    with pytest.raises(ValueError, match="the model's class is 'MyModel'"):
        read_keras(_write_zip(tmp_path / "sub.keras", members))
    members["config.json"] = b"[" * 100_000
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        read_keras(_write_zip(tmp_path / "deep.keras", members, zipfile.ZIP_STORED))


def test_size_limits(tmp_path, monkeypatch):
    monkeypatch.setitem(keras_file.LIMITS, "config_bytes", 1000)
    with pytest.raises(ValueError, match=r"zip member config.json is \d+ bytes; at most 1000 are read"):
        read_keras(DATA / "kws.keras")
    with pytest.raises(ValueError, match=r"the model_config attribute is \d+ bytes; at most 1000 are read"):
        read_keras(DATA / "kws.h5")
    monkeypatch.setitem(keras_file.LIMITS, "config_bytes", 16 << 20)
    monkeypatch.setitem(keras_file.LIMITS, "array_bytes", 100)
    with pytest.raises(ValueError, match=r"holds \d+ bytes; at most 100 are read"):
        read_keras(DATA / "kws.h5")


def test_zip_bombs_traversal_and_member_counts_are_refused(tmp_path):
    members = _members(DATA / "kws.keras")
    bomb = dict(members, **{"config.json": members["config.json"] + b" " * (8 << 20)})
    with pytest.raises(ValueError, match=r"zip member config.json expands \d+ times; refused"):
        read_keras(_write_zip(tmp_path / "bomb.keras", bomb))
    for evil in ("../../evil.txt", "/etc/evil", "assets/../../x"):
        with pytest.raises(ValueError, match="points outside the archive"):
            read_keras(_write_zip(tmp_path / "trav.keras", dict(members, **{evil: b"x"})))
    many = dict(members, **{f"assets/{i}": b"x" for i in range(100)})
    with pytest.raises(ValueError, match="the zip has 103 members; at most 64"):
        read_keras(_write_zip(tmp_path / "many.keras", many))
    without = {k: v for k, v in members.items() if k != "model.weights.h5"}
    with pytest.raises(ValueError, match=r"has no \['model.weights.h5'\]"):
        read_keras(_write_zip(tmp_path / "noweights.keras", without))


def test_weights_member_that_is_not_hdf5_is_refused(tmp_path):
    members = dict(_members(DATA / "kws.keras"), **{"model.weights.h5": b"PK\x03\x04 not hdf5"})
    with pytest.raises(ValueError, match="model.weights.h5 is not an HDF5 file"):
        read_keras(_write_zip(tmp_path / "bad.keras", members))
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.create_dataset("layers/gru/cell/vars/0", data=np.zeros((8, 18), np.float32))
        f.create_dataset("layers/gru/cell/vars/7", data=np.zeros((8, 18), np.float32))
    members["model.weights.h5"] = buffer.getvalue()
    with pytest.raises(ValueError, match=r"layers/gru/cell/vars holds \['0', '7'\]; expected variables 0..1"):
        read_keras(_write_zip(tmp_path / "gaps.keras", members))


def test_missing_weights_are_refused(tmp_path):
    members = _members(DATA / "kws.keras")
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.create_group("layers")
    members["model.weights.h5"] = buffer.getvalue()
    with pytest.raises(ValueError, match=r"layer 'gru_a' \(GRU\) has no weights in"):
        KerasGraph(read_keras(_write_zip(tmp_path / "empty.keras", members)))


# ---------------------------------------------------------------------------------------- from_config
def _entry(name: str, layer: str) -> dict:
    return next(e for e in read_keras(DATA / f"{name}.keras").layer_configs() if e["config"]["name"] == layer)


def test_from_config_accepts_serialised_and_rnn_forms():
    rnn = _entry("rnn_cell", "rnn")
    layer = GRU.from_config(rnn)
    assert (layer.units, layer.activation, layer.return_state) == (4, "relu", True)
    assert GRU.from_config(rnn["config"]).units == 4  # the flat RNN config, holding its cell
    assert GRUCell.from_config(rnn).units == 4  # an RNN config: its cell
    cell = GRUCell.from_config(rnn["config"]["cell"])
    assert (cell.units, cell.config.activation, cell.config.implementation) == (4, "relu", 2)
    bidir = Bidirectional.from_config(_entry("bidir", "bidirectional"))
    assert bidir.merge_mode == "sum" and bidir.forward_layer.units == 3
    wrapped = {"class_name": "Bidirectional", "config": {"layer": rnn, "merge_mode": "mul"}}
    assert Bidirectional.from_config(wrapped).forward_layer.activation == "relu"


def test_from_config_names_the_class_it_refuses():
    lstm = {"class_name": "LSTM", "config": {"units": 3}}
    with pytest.raises(ValueError, match=r"GRU.from_config received a config of class 'LSTM'"):
        GRU.from_config(lstm)
    with pytest.raises(ValueError, match=r"GRUCell.from_config received a config of class 'LSTMCell'"):
        GRUCell.from_config({"class_name": "LSTMCell", "config": {"units": 3}})
    with pytest.raises(ValueError, match=r"GRU.from_config received a config of class 'LSTMCell'"):
        GRU.from_config({"class_name": "RNN", "config": {"cell": {"class_name": "LSTMCell", "config": {}}}})
    with pytest.raises(ValueError, match=r"around several cells"):
        GRU.from_config({"class_name": "RNN", "config": {"cell": [{"class_name": "GRUCell", "config": {}}]}})
    with pytest.raises(ValueError, match=r"Bidirectional.from_config: `config\['layer'\]` must describe a GRU "
                                         r"layer or an RNN around a GRUCell; received class 'LSTM'"):
        Bidirectional.from_config({"layer": lstm})
    with pytest.raises(ValueError, match=r"Bidirectional.from_config received a config of class 'GRU'"):
        Bidirectional.from_config(_entry("kws", "gru_a"))
