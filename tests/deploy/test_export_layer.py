"""Deployable GRU *layer* artifacts on this machine: export, metadata, loading, the Keras layer call on the
deployed whole-sequence kernels (against the in-process ``tvm_gru.GRU`` and the float64 Keras RNN oracle),
integrity checks, backward compatibility with cell artifacts, and the CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_tampered_kernel_refused, tolerance

import tvm_gru
from tvm_gru.deploy.export import export_cell, export_layer
from tvm_gru.ops.reference import keras_rnn
from tvm_gru.runtime.artifact import FORMAT_VERSION, KIND_VERSIONS, METADATA, ArtifactError, load, verify
from tvm_gru.runtime.deployed_layer import DeployedGRU

# name -> (layer kwargs, units, input_dim, batch sizes)
CONFIGS = {
    "v1_default": (dict(), 16, 6, (1, 3)),
    "ra_sigmoid_seq_state": (dict(reset_after=True, recurrent_activation="sigmoid", return_sequences=True,
                                  return_state=True), 20, 5, (2,)),
    "backwards": (dict(go_backwards=True, return_sequences=True, return_state=True), 12, 7, (2,)),
    "time_major_zero_mask": (dict(time_major=True, zero_output_for_mask=True, return_sequences=True,
                                  reset_after=True), 10, 4, (3,)),
    # big enough for the two-core schedule and its serial kernel for short calls (streaming)
    "stateful_parallel": (dict(stateful=True, return_sequences=True, return_state=True), 128, 64, (1,)),
    "float64_nobias": (dict(dtype="float64", use_bias=False, return_sequences=True), 9, 3, (2,)),
}


def _layer(name, seed=0):
    kwargs, units, input_dim, _ = CONFIGS[name]
    layer = tvm_gru.GRU(units, seed=seed, **kwargs)
    rng = np.random.default_rng(seed)
    dt = layer.cell.dtype
    shapes = [(input_dim, 3 * units), (units, 3 * units)]
    if layer.cell.config.use_bias:
        shapes.append(layer.cell.config.bias_shape)
    # |w| <= 0.6 at small sizes; at 128 units that much makes the recurrence chaotic enough that float32 rounding
    # grows past the tolerance in 30 steps (in-process too), so scale like Glorot
    scale = min(0.6, 2.0 / np.sqrt(units + input_dim))
    layer.set_weights([rng.uniform(-scale, scale, s).astype(dt) for s in shapes])
    return layer


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """name -> (in-process layer, deployed layer, artifact path), one export per config."""
    root = tmp_path_factory.mktemp("layers")
    out = {}
    for i, name in enumerate(CONFIGS):
        layer = _layer(name, seed=i)
        path = layer.export(root / name, target="host", batch=CONFIGS[name][3])
        out[name] = (layer, load(path), path)
    return out


def _inputs(layer, batch, steps, seed):
    rng = np.random.default_rng(seed)
    shape = (steps, batch, layer.input_dim) if layer.time_major else (batch, steps, layer.input_dim)
    return rng.uniform(-1, 1, shape).astype(layer.cell.dtype)


def _oracle(layer, x, h0=None, mask=None):
    """(outputs in the layer's layout (B, T, H) or (T, B, H), final state) from the float64 Keras RNN oracle."""
    xs = x if layer.time_major else x.transpose(1, 0, 2)
    h0 = np.zeros((xs.shape[1], layer.units)) if h0 is None else h0
    if mask is not None and not layer.time_major:
        mask = mask.T
    outs, state = keras_rnn(layer.cell.config, xs, h0, *layer.get_weights(), mask=mask,
                            zero_output_for_mask=layer.zero_output_for_mask, go_backwards=layer.go_backwards)
    return (outs if layer.time_major else outs.transpose(1, 0, 2)), state


def _expected_output(layer, outs):
    """The oracle's outputs as the layer returns them (sequence or last step)."""
    if layer.return_sequences:
        return outs
    return outs[-1] if layer.time_major else outs[:, -1]


def _check(got, want, dtype):
    assert got.shape == want.shape and got.dtype == np.dtype(dtype)
    err = float(np.max(np.abs(got - want))) if want.size else 0.0
    assert err <= tolerance(dtype, want), f"max err {err:.3e}"


# ------------------------------------------------------------------------------------ numbers
@pytest.mark.parametrize("name", ["v1_default", "ra_sigmoid_seq_state", "backwards", "time_major_zero_mask",
                                  "float64_nobias"])
def test_deployed_equals_layer_and_oracle_at_several_lengths(artifacts, name):
    layer, deployed, _ = artifacts[name]
    assert isinstance(deployed, DeployedGRU)
    for flag in ("return_sequences", "return_state", "go_backwards", "stateful", "time_major"):
        assert getattr(deployed, flag) == getattr(layer, flag)
    dt = layer.cell.dtype
    for batch in CONFIGS[name][3]:
        for steps in (1, 9, 33):  # one artifact, symbolic T
            x = _inputs(layer, batch, steps, seed=steps)
            got, want = deployed(x), layer(x)
            outs, state = _oracle(layer, x.astype(np.float64))
            if layer.return_state:
                (got, got_state), (want, want_state) = got, want
                np.testing.assert_allclose(got_state, want_state, rtol=0, atol=1e-6)
                _check(got_state, state, dt)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
            _check(got, _expected_output(layer, outs), dt)


@pytest.mark.parametrize("name", ["ra_sigmoid_seq_state", "backwards", "time_major_zero_mask"])
def test_masking_and_initial_state(artifacts, name):
    layer, deployed, _ = artifacts[name]
    batch = CONFIGS[name][3][0]
    steps = 8
    x = _inputs(layer, batch, steps, seed=11)
    h0 = np.random.default_rng(12).uniform(-1, 1, (batch, layer.units)).astype(layer.cell.dtype)
    lengths = np.array([steps, 3, 0][:batch])
    mask = np.arange(steps)[None, :] < lengths[:, None]  # (B, T) right-padded sequences
    mask[0, 2] = False  # and a hole
    if layer.time_major:
        mask = np.ascontiguousarray(mask.T)
    got, want = deployed(x, mask=mask, initial_state=[h0]), layer(x, mask=mask, initial_state=[h0])
    outs, state = _oracle(layer, x.astype(np.float64), h0, mask=mask)  # mask in the layer's layout
    if layer.return_state:
        (got, got_state), (want, _) = got, want
        _check(got_state, state, layer.cell.dtype)
        np.testing.assert_array_equal(got_state[1], h0[1] if lengths[1] == 0 else got_state[1])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    _check(got, _expected_output(layer, outs), layer.cell.dtype)
    # the masked result differs from the unmasked one (the mask reached the kernel)
    plain = deployed(x, initial_state=h0)
    plain = plain[0] if layer.return_state else plain
    assert float(np.max(np.abs(plain - got))) > 1e-3
    # Keras also takes [inputs, initial_state]; float masks mean the same as bool masks
    again = deployed([x, h0], mask=mask.astype(np.float32))
    np.testing.assert_array_equal(again[0] if layer.return_state else again, got)


@pytest.mark.parametrize("reset_after", [False, True], ids=["ra0", "ra1"])
def test_deployed_frames_on_the_step_kernel(tmp_path, monkeypatch, reset_after):
    """A streaming layer's artifact carries the step kernel for single frames where the rule runs them on it
    (forced here at a small shape); the deployed layer runs frames on it, with R_h rebuilt block-major, to the
    numbers of one whole-sequence call."""
    from tvm_gru.schedules.sequence_rules import CPUSequenceRule

    monkeypatch.setattr(CPUSequenceRule, "frame_step_min_bytes", 0)
    ran = []
    frame_call = DeployedGRU._frame_call
    monkeypatch.setattr(DeployedGRU, "_frame_call", lambda self, *a: ran.append(frame_call(self, *a)) or ran[-1])
    rng = np.random.default_rng(3)
    layer = tvm_gru.GRU(20, stateful=True, reset_after=reset_after)
    layer.build((2, 1, 6))
    layer.set_weights([rng.uniform(-0.5, 0.5, w.shape).astype("float32") for w in layer.get_weights()])
    deployed = load(layer.export(tmp_path / "frames", batch=[2, 3], masking=False))
    functions = deployed.metadata["kernel"]["functions"]
    assert functions["2"]["frame"] == "frame_b2" and functions["3"]["frame"] == "frame_b3"
    x = rng.uniform(-1, 1, (2, 9, 6)).astype("float32")
    whole = tvm_gru.GRU(20, return_sequences=True, reset_after=reset_after)
    whole.build(x.shape)
    whole.set_weights(layer.get_weights())
    expected = whole(x)
    got = [deployed(np.ascontiguousarray(x[:, t:t + 1])) for t in range(4)]
    assert len(ran) == 3  # the first frame takes the checked path (it sets up the state), then the step kernel
    np.testing.assert_allclose(np.stack(got, 1), expected[:, :4], rtol=0, atol=1e-6)
    np.testing.assert_allclose(deployed(x[:, 4:6]), expected[:, 5], rtol=0, atol=1e-6)  # two steps: the sequence kernel
    np.testing.assert_allclose(deployed(np.ascontiguousarray(x[:, 6:7]), initial_state=expected[:, 5]),
                               expected[:, 6], rtol=0, atol=1e-6)
    np.testing.assert_allclose(deployed(x[:, 7:8]), expected[:, 7], rtol=0, atol=1e-6)  # strided: checked path
    np.testing.assert_allclose(deployed.states[0], expected[:, 7], rtol=0, atol=1e-6)
    # layers that return sequences or states do not stream frames: no frame kernel is exported for them
    plain = tvm_gru.GRU(20, return_sequences=True, stateful=True)
    plain.build((2, 1, 6))
    assert "frame" not in load(plain.export(tmp_path / "plain", batch=2)).metadata["kernel"]["functions"]["2"]


def test_stateful_streaming_chunk_by_chunk(artifacts):
    layer, deployed, path = artifacts["stateful_parallel"]
    entry = deployed.metadata["kernel"]["functions"]["1"]
    assert {"full", "masked", "short", "short_masked"} <= set(entry) and entry["short_steps"] >= 1
    x = _inputs(layer, 1, 30, seed=21)
    outs, final = _oracle(layer, x.astype(np.float64))
    tol = tolerance("float32", outs)
    pieces, start = [], 0
    for n in (1, 1, 3, 1, 7, 17):  # single frames and short chunks run the serial kernel, longer ones the parallel
        seq, state = deployed(x[:, start:start + n])
        np.testing.assert_array_equal(state, seq[:, -1])
        pieces.append(seq)
        start += n
    streamed = np.concatenate(pieces, axis=1)
    assert np.max(np.abs(streamed - outs)) <= tol
    assert np.max(np.abs(deployed.states[0] - final)) <= tol
    # the in-process stateful layer streams to the same numbers
    ref_pieces = [layer(x[:, a:b])[0] for a, b in ((0, 2), (2, 13), (13, 30))]
    np.testing.assert_allclose(np.concatenate(ref_pieces, axis=1), streamed, rtol=0, atol=1e-6)
    deployed.reset_states()
    np.testing.assert_array_equal(deployed.states[0], 0.0)
    np.testing.assert_allclose(deployed(x[:, :5])[0], streamed[:, :5], rtol=0, atol=1e-6)
    deployed.reset_states(streamed[:, 9])
    np.testing.assert_allclose(deployed(x[:, 10:14])[0], streamed[:, 10:14], rtol=0, atol=1e-6)
    fresh = load(path)  # initial_state overrides the carried state, which then carries on from there
    np.testing.assert_allclose(fresh(x[:, 20:23], initial_state=streamed[:, 19])[0], streamed[:, 20:23], rtol=0,
                               atol=1e-6)
    np.testing.assert_allclose(fresh(x[:, 23:])[0], streamed[:, 23:], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="kernels for batch sizes"):
        fresh(np.ones((2, 3, 64), "float32"))
    with pytest.raises(AttributeError, match="stateful"):
        artifacts["v1_default"][1].reset_states()


def test_weights_config_and_dlpack_inputs(artifacts):
    import tvm_ffi  # noqa: PLC0415

    for name in ("v1_default", "ra_sigmoid_seq_state", "float64_nobias"):
        layer, deployed, _ = artifacts[name]
        assert deployed.get_config() == layer.get_config()
        got = deployed.get_weights()
        assert len(got) == len(layer.get_weights())
        for a, b in zip(got, layer.get_weights()):
            np.testing.assert_array_equal(a, b)
    layer, deployed, _ = artifacts["v1_default"]
    x = _inputs(layer, 3, 4, seed=5)
    np.testing.assert_array_equal(deployed(tvm_ffi.from_dlpack(x)), deployed(x))
    np.testing.assert_array_equal(deployed(x.astype(np.float64)), deployed(x))  # float inputs are cast
    assert deployed.compute_output_shape((3, 4, 6)) == (3, 16)
    empty = artifacts["ra_sigmoid_seq_state"][1](np.zeros((2, 0, 5), "float32"))
    assert empty[0].shape == (2, 0, 20) and empty[1].shape == (2, 20)


def test_call_errors(artifacts):
    deployed = artifacts["v1_default"][1]
    with pytest.raises(ValueError, match=r"kernels for batch sizes \[1, 3\]; received batch 2"):
        deployed(np.zeros((2, 4, 6), "float32"))
    with pytest.raises(ValueError, match="rank 3"):
        deployed(np.zeros((3, 6), "float32"))
    with pytest.raises(ValueError, match="6 features"):
        deployed(np.zeros((3, 4, 5), "float32"))
    with pytest.raises(TypeError, match="floating point"):
        deployed(np.zeros((3, 4, 6), "int32"))
    with pytest.raises(ValueError, match="`mask` must have shape"):
        deployed(np.zeros((3, 4, 6), "float32"), mask=np.ones((4, 3), bool))
    with pytest.raises(ValueError, match="`initial_state` must have shape"):
        deployed(np.zeros((3, 4, 6), "float32"), initial_state=np.zeros((3, 5), "float32"))


def test_training_with_dropout_is_refused(tmp_path):
    """Deployed layers are inference-only: asking for training-time dropout raises instead of silently
    returning the no-dropout numbers; without dropout, training=True is the same call (as in Keras)."""
    layer = tvm_gru.GRU(8, dropout=0.3, recurrent_dropout=0.2, return_sequences=True, seed=1)
    layer.build((1, None, 4))
    deployed = load(layer.export(tmp_path / "drop", masking=False))
    x = _inputs(layer, 1, 5, seed=3)
    with pytest.raises(ValueError, match=r"inference-only: it was exported with dropout=0.3, recurrent_dropout=0.2"):
        deployed(x, training=True)
    infer = deployed(x, training=False)
    np.testing.assert_allclose(infer, layer(x, training=False), rtol=0, atol=1e-6)
    assert np.max(np.abs(layer(x, training=True) - infer)) > 1e-3  # the in-process layer does apply dropout
    with pytest.raises(ValueError, match="without masking support"):
        deployed(x, mask=np.ones((1, 5), bool))
    assert "masked" not in deployed.metadata["kernel"]["functions"]["1"]
    plain = tvm_gru.GRU(8, return_sequences=True, seed=1)
    plain.build((1, None, 4))
    no_dropout = load(export_layer(plain, tmp_path / "plain", masking=False))
    np.testing.assert_array_equal(no_dropout(x, training=True), no_dropout(x))


# ------------------------------------------------------------------------------------ format and integrity
def test_metadata(artifacts):
    layer, _, path = artifacts["backwards"]
    meta = json.loads((path / METADATA).read_text())
    assert meta["kind"] == "layer" and meta["format_version"] == KIND_VERSIONS["layer"] == 2 and FORMAT_VERSION == 4
    assert meta["layer"] == {"name": layer.name, "return_sequences": True, "return_state": True,
                             "go_backwards": True, "stateful": False, "time_major": False,
                             "zero_output_for_mask": False, "masking": True}
    assert meta["config"] == layer.cell.config.to_dict() and meta["keras_config"] == layer.get_config()
    assert meta["target"]["family"] == "x86" and meta["batch_sizes"] == [2]
    assert meta["kernel"]["weights"] == ["kernel_packed", "recurrent_packed", "candidate_packed", "bias_packed"]
    assert {"kernel.so", "weights.npz", "python/tvm_gru_runtime.zip"} <= set(meta["files"])
    for rel, digest in meta["files"].items():
        assert hashlib.sha256((path / rel).read_bytes()).hexdigest() == digest
    assert verify(path) == meta


def _copy(path, tmp_path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(path, dest)
    return dest


def _edit_meta(path, edit) -> None:
    meta = json.loads((path / METADATA).read_text())
    edit(meta)
    (path / METADATA).write_text(json.dumps(meta))


def test_tampered_kernel_is_refused_before_loading(artifacts, tmp_path):
    path = _copy(artifacts["v1_default"][2], tmp_path)
    assert_tampered_kernel_refused(path)


@pytest.mark.parametrize("damage, match", [
    (lambda p: (p / "weights.npz").unlink(), "weights.npz is missing"),
    (lambda p: (p / "python" / "tvm_gru_runtime.zip").unlink(), "tvm_gru_runtime.zip is missing"),
    (lambda p: (p / "lib" / "libevil.so").write_bytes(b"\x7fELF"), "does not list"),
    (lambda p: _edit_meta(p, lambda m: m.update(format_version=1)), "needs format version >= 2"),
    (lambda p: _edit_meta(p, lambda m: m.update(format_version=FORMAT_VERSION + 1)), "newer than this runtime"),
    (lambda p: _edit_meta(p, lambda m: m.update(kind="encoder")), "unknown artifact kind 'encoder'"),
    (lambda p: _edit_meta(p, lambda m: m["target"].update(host_arch="aarch64", family="aarch64")),
     "cannot run on this"),
], ids=["missing-weights", "missing-runtime", "extra-file", "old-version", "newer", "kind", "arch"])
def test_damaged_layer_artifacts_are_refused(artifacts, tmp_path, damage, match):
    path = _copy(artifacts["v1_default"][2], tmp_path)
    damage(path)
    with pytest.raises(ArtifactError, match=match):
        load(path)


def test_weights_not_matching_the_config_are_refused(artifacts, tmp_path):
    path = _copy(artifacts["backwards"][2], tmp_path)
    with np.load(path / "weights.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["candidate_packed"] = arrays["candidate_packed"][:-1]  # a row short
    np.savez(path / "weights.npz", **arrays)

    def edit(meta):
        meta["files"]["weights.npz"] = hashlib.sha256((path / "weights.npz").read_bytes()).hexdigest()
        meta["shapes"]["candidate_packed"] = list(arrays["candidate_packed"].shape)

    _edit_meta(path, edit)
    with pytest.raises(ArtifactError, match="candidate_packed"):
        load(path)


def test_cell_artifacts_still_load(tmp_path):
    """Cell artifacts are written as format 1 (readable by older loaders); metadata without "kind" is a cell."""
    cell = tvm_gru.GRUCell(8, seed=2)
    cell.build((1, 4))
    path = export_cell(cell, tmp_path / "cell")
    meta = json.loads((path / METADATA).read_text())
    assert meta["kind"] == "cell" and meta["format_version"] == KIND_VERSIONS["cell"] == 1
    _edit_meta(path, lambda m: m.pop("kind"))  # as written before layer artifacts existed
    deployed = load(path)
    x, h = np.ones((1, 4), "float32"), np.full((1, 8), 0.5, "float32")
    assert isinstance(deployed, tvm_gru.DeployedCell)
    np.testing.assert_allclose(deployed(x, [h])[0], cell(x, [h])[0], rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------ export errors and CLI
def test_export_errors(artifacts, tmp_path):
    layer = artifacts["v1_default"][0]
    with pytest.raises(ValueError, match="needs a built layer"):
        export_layer(tvm_gru.GRU(4), tmp_path / "a")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_layer(layer, artifacts["v1_default"][2])
    with pytest.raises(ValueError, match="`batch` must be a positive int"):
        export_layer(layer, tmp_path / "b", batch=[0])
    with pytest.raises(ValueError, match=r"cannot export a GRU layer for target 'cuda'.*CPU schedules only"):
        layer.export(tmp_path / "c", target={"name": "cuda", "arch": "sm_80"})
    assert not (tmp_path / "c").exists()


def test_cli_export_layer_from_keras_config(tmp_path, capsys):
    from tvm_gru import cli  # noqa: PLC0415

    layer = _layer("ra_sigmoid_seq_state", seed=4)
    (tmp_path / "cfg.json").write_text(json.dumps({"class_name": "GRU", "config": layer.get_config()}))
    np.savez(tmp_path / "w.npz", kernel=layer.cell.kernel, recurrent_kernel=layer.cell.recurrent_kernel,
             bias=layer.cell.bias)
    rc = cli.main(["export", "--config", str(tmp_path / "cfg.json"), "--weights", str(tmp_path / "w.npz"),
                   "--out", str(tmp_path / "art"), "--batches", "1,2"])
    assert rc == 0 and "layer" in capsys.readouterr().out
    deployed = load(tmp_path / "art")
    assert isinstance(deployed, DeployedGRU) and deployed.batch_sizes == (1, 2) and deployed.return_state
    x = _inputs(layer, 2, 6, seed=8)
    np.testing.assert_allclose(deployed(x)[0], layer(x)[0], rtol=0, atol=1e-6)


def test_cli_export_seeded_layer_flags(tmp_path):
    from tvm_gru import cli  # noqa: PLC0415

    rc = cli.main(["export", "--layer", "--units", "12", "--input-dim", "5", "--return-sequences",
                   "--go-backwards", "--time-major", "--no-masking", "--seed", "3", "--out", str(tmp_path / "art")])
    assert rc == 0
    deployed = load(tmp_path / "art")
    assert (deployed.return_sequences, deployed.go_backwards, deployed.time_major, deployed.stateful) == (
        True, True, True, False)
    assert deployed.metadata["layer"]["masking"] is False
    ref = tvm_gru.GRU(12, return_sequences=True, go_backwards=True, time_major=True, seed=3)
    ref.build((1, None, 5))
    for a, b in zip(deployed.get_weights(), ref.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).uniform(-1, 1, (7, 1, 5)).astype("float32")
    np.testing.assert_allclose(deployed(x), ref(x), rtol=0, atol=1e-6)


def test_cli_export_layer_from_onnx(tmp_path):
    from tvm_gru import cli  # noqa: PLC0415
    from tvm_gru.interop import onnx_io  # noqa: PLC0415

    layer = _layer("backwards", seed=6)
    layer.to_onnx(str(tmp_path / "gru.onnx"))
    assert cli.main(["export", "--onnx", str(tmp_path / "gru.onnx"), "--layer", "--batches", "2",
                     "--out", str(tmp_path / "art")]) == 0
    imported = onnx_io.from_onnx(str(tmp_path / "gru.onnx"))
    deployed = load(tmp_path / "art")
    for flag in ("return_sequences", "return_state", "go_backwards", "time_major", "zero_output_for_mask"):
        assert getattr(deployed, flag) == getattr(imported, flag), flag
    assert deployed.go_backwards  # the ONNX "reverse" direction survived
    x = _inputs(imported, 2, 5, seed=9)
    (seq, state), (want_seq, want_state) = deployed(x), imported(x)
    np.testing.assert_allclose(seq, want_seq, rtol=0, atol=1e-6)
    np.testing.assert_allclose(state, want_state, rtol=0, atol=1e-6)
    outs, final = _oracle(imported, x.astype(np.float64))
    _check(state, final, "float32")
