"""``Bidirectional.export`` and the deployed wrapper: the same numbers as the in-process ``tvm_gru.Bidirectional``.

Each exported wrapper is loaded back (one kernel library, one weights file) and called like the in-process one
on the same inputs: every merge mode, masks with holes and empty rows, initial states, return_state, backwards
layers, a backward layer of another config, time-major streaming, float64, each batch size the export was made
for. Outputs and states must be bit-identical (the same kernels run). Bad calls and bad exports are refused
naming the argument; ``tvm-gru export`` takes a Keras Bidirectional config.
"""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest

import tvm_gru
from tvm_gru import GRU, Bidirectional
from tvm_gru.deploy.export import export_bidirectional
from tvm_gru.runtime.artifact import METADATA, load
from tvm_gru.runtime.deployed_bidirectional import DeployedBidirectional

INPUT = 4

# name -> (GRU kwargs, Bidirectional kwargs (backward_layer: GRU kwargs), export kwargs)
CASES = {
    "concat_state": (dict(units=8, return_sequences=True, return_state=True), {}, dict(batch=[1, 2])),
    "sum": (dict(units=6, return_sequences=True), dict(merge_mode="sum"), dict(batch=2)),
    "ave_dropout": (dict(units=6, return_sequences=True, dropout=0.25), dict(merge_mode="ave"), dict(batch=2)),
    "mul_unmasked": (dict(units=5, return_sequences=True), dict(merge_mode="mul"), dict(batch=2, masking=False)),
    "none_state": (dict(units=7, return_sequences=True, return_state=True), dict(merge_mode=None), dict(batch=2)),
    "last_outputs": (dict(units=8, return_state=True, reset_after=True), {}, dict(batch=[2, 3])),
    "layer_backwards": (dict(units=6, return_sequences=True, go_backwards=True), {}, dict(batch=2)),
    "other_backward": (dict(units=8, return_sequences=True, return_state=True),
                       dict(backward_layer=dict(units=5, go_backwards=True, return_sequences=True, return_state=True,
                                                reset_after=True, recurrent_activation="sigmoid")),
                       dict(batch=2)),
    "stateful_time_major": (dict(units=8, return_sequences=True, stateful=True, time_major=True), {},
                            dict(batch=2)),
    "float64": (dict(units=6, dtype="float64", return_sequences=True, use_bias=False), dict(merge_mode="sum"),
                dict(batch=2)),
}


def _wrapper(name: str, seed: int) -> Bidirectional:
    layer_kwargs, wrapper_kwargs, _ = CASES[name]
    wrapper_kwargs = dict(wrapper_kwargs)
    if "backward_layer" in wrapper_kwargs:
        wrapper_kwargs["backward_layer"] = GRU(**wrapper_kwargs["backward_layer"])
    wrapper = Bidirectional(GRU(seed=seed, **layer_kwargs), **wrapper_kwargs)
    rng = np.random.default_rng(seed)
    weights = []
    for direction in (wrapper.forward_layer, wrapper.backward_layer):
        cfg = direction.cell.config
        shapes = [(INPUT, 3 * cfg.units), (cfg.units, 3 * cfg.units)] + ([cfg.bias_shape] if cfg.use_bias else [])
        weights += [rng.uniform(-0.6, 0.6, s).astype(cfg.dtype) for s in shapes]
    wrapper.set_weights(weights)
    return wrapper


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("bidirectional")
    out = {}
    for i, (name, (_, _, export_kwargs)) in enumerate(CASES.items()):
        wrapper = _wrapper(name, seed=i)
        out[name] = (wrapper, load(wrapper.export(root / name, **export_kwargs)), root / name)
    return out


def _flat(result) -> list:
    return list(result) if isinstance(result, list) else [result]


def _assert_same(got, expected, what: str) -> None:
    got, expected = _flat(got), _flat(expected)
    assert len(got) == len(expected), what
    for i, (a, b) in enumerate(zip(got, expected)):
        assert isinstance(a, np.ndarray) and a.shape == b.shape and a.dtype == b.dtype, f"{what}[{i}]"
        assert np.array_equal(a, b), f"{what}[{i}]: max |diff| {float(np.max(np.abs(a - b))):.3e}"


def _inputs(wrapper, batch, steps, rng):
    dt = wrapper.forward_layer.cell.dtype
    shape = (steps, batch, INPUT) if wrapper.time_major else (batch, steps, INPUT)
    return rng.uniform(-1.5, 1.5, shape).astype(dt)


def _mask(wrapper, batch, steps, rng):
    mask = np.arange(steps)[None, :] < rng.integers(1, steps + 1, batch)[:, None]
    mask[0, min(1, steps - 1)] = False  # a hole
    if batch > 1:
        mask[-1] = False  # an empty row
    return mask.T.copy() if wrapper.time_major else mask


def _states(wrapper, batch, rng):
    return [rng.uniform(-1, 1, (batch, d.units)).astype(d.cell.dtype)
            for d in (wrapper.forward_layer, wrapper.backward_layer)]


STATELESS = [name for name in CASES if not CASES[name][0].get("stateful")]


@pytest.mark.parametrize("name", STATELESS)
def test_deployed_outputs_equal_the_in_process_wrapper(exported, name):
    wrapper, deployed, _ = exported[name]
    masking = CASES[name][2].get("masking", True)
    rng = np.random.default_rng(7)
    for batch in deployed.batch_sizes:
        for steps in (1, 9, 40):
            x = _inputs(wrapper, batch, steps, rng)
            _assert_same(deployed(x), wrapper(x), f"{name} B={batch} T={steps}")
            h0 = _states(wrapper, batch, rng)
            _assert_same(deployed(x, initial_state=h0), wrapper(x, initial_state=h0), f"{name} initial_state")
            _assert_same(deployed([x, *h0]), wrapper([x, *h0]), f"{name} [inputs, *states]")
            if masking:
                mask = _mask(wrapper, batch, steps, rng)
                _assert_same(deployed(x, mask=mask, initial_state=h0, training=False),
                             wrapper(x, mask=mask, initial_state=h0, training=False), f"{name} masked")


def test_merge_modes_and_outputs_have_the_keras_shapes(exported):
    x = _inputs(exported["sum"][0], 2, 5, np.random.default_rng(0))
    shapes = {name: [a.shape for a in _flat(exported[name][1](x))] for name in
              ("concat_state", "sum", "ave_dropout", "mul_unmasked", "none_state", "last_outputs", "other_backward")}
    assert shapes == {"concat_state": [(2, 5, 16), (2, 8), (2, 8)], "sum": [(2, 5, 6)], "ave_dropout": [(2, 5, 6)],
                      "mul_unmasked": [(2, 5, 5)], "none_state": [(2, 5, 7), (2, 5, 7), (2, 7), (2, 7)],
                      "last_outputs": [(2, 16), (2, 8), (2, 8)], "other_backward": [(2, 5, 13), (2, 8), (2, 5)]}
    for name in shapes:
        wrapper, deployed, _ = exported[name]
        assert deployed.compute_output_shape((2, 5, INPUT)) == wrapper.compute_output_shape((2, 5, INPUT))


def test_stateful_time_major_streams_like_the_in_process_wrapper(exported):
    wrapper, deployed, _ = exported["stateful_time_major"]
    rng = np.random.default_rng(3)
    x = _inputs(wrapper, 2, 12, rng)
    for start, stop in ((0, 1), (1, 2), (2, 7), (7, 12)):  # chunks along time (axis 0: time-major)
        _assert_same(deployed(x[start:stop]), wrapper(x[start:stop]), f"chunk {start}:{stop}")
        _assert_same(deployed.states, wrapper.states, f"states after {stop}")
    assert deployed.states[0].shape == (2, 8) and np.abs(deployed.states[0]).max() > 0.05
    h = _states(wrapper, 2, rng)
    deployed.reset_states(h)
    wrapper.reset_states(h)
    _assert_same(deployed(x), wrapper(x), "after reset_states(values)")
    deployed.reset_states()
    wrapper.reset_states()
    assert all(np.array_equal(s, np.zeros((2, 8), "float32")) for s in deployed.states)
    _assert_same(deployed(x), wrapper(x), "after reset_states()")


def test_one_library_and_one_weights_file(exported):
    for name, (wrapper, deployed, path) in exported.items():
        meta = json.loads((path / METADATA).read_text())
        assert meta["kind"] == "bidirectional" and meta["format_version"] == 4
        assert meta["bidirectional"] == {"name": wrapper.name, "merge_mode": wrapper.merge_mode}
        libraries = [rel for rel in meta["files"] if rel.endswith(".so") and not rel.startswith("lib/")]
        assert libraries == ["kernel.so"], name
        with np.load(path / "weights.npz") as npz:
            assert sorted(npz.files) == sorted(f"{side}.{n}" for side in ("forward", "backward")
                                               for n in meta[side]["kernel"]["weights"])
        fw, bw = meta["forward"]["kernel"]["functions"], meta["backward"]["kernel"]["functions"]
        if name == "other_backward":  # another config: its own kernels, named apart
            assert all(v.startswith("backward_") for e in bw.values() for k, v in e.items() if k != "short_steps")
            assert not any(v.startswith("backward_") for e in fw.values() for v in e.values() if isinstance(v, str))
        else:  # the same kernels serve both directions (the direction is a kernel argument)
            assert fw == bw, name
        assert (meta["forward"]["layer"]["go_backwards"], meta["backward"]["layer"]["go_backwards"]) == (
            wrapper.forward_layer.go_backwards, wrapper.backward_layer.go_backwards)
        assert deployed.get_config() == json.loads(json.dumps(wrapper.get_config()))
        _assert_same(deployed.get_weights(), wrapper.get_weights(), f"{name} weights")
        assert deployed.batch_sizes == tuple(sorted(np.atleast_1d(CASES[name][2]["batch"]).tolist()))
    assert exported["layer_backwards"][1].forward_layer.go_backwards is True
    assert "DeployedBidirectional(" in repr(exported["sum"][1]) and "merge_mode='sum'" in repr(exported["sum"][1])


def test_load_returns_a_deployed_bidirectional(exported):
    _, deployed, path = exported["sum"]
    assert isinstance(deployed, DeployedBidirectional) and tvm_gru.DeployedBidirectional is DeployedBidirectional
    assert tvm_gru.verify(path)["kind"] == "bidirectional"


@pytest.mark.parametrize("how", [pickle.dumps, copy.copy, copy.deepcopy], ids=["pickle", "copy", "deepcopy"])
def test_deployed_wrapper_refuses_copies(exported, how):
    with pytest.raises(TypeError, match="DeployedBidirectional cannot be pickled or copied.*tvm_gru.load"):
        how(exported["concat_state"][1])


BAD_CALLS = {
    "batch-not-exported": (lambda x: (x[:1].repeat(3, axis=0),), {}, ValueError,
                           r"kernels for batch sizes \[1, 2\]; received batch 3 \(export with batch=\[\.\.\., 3\]\)"),
    "one-initial-state": (lambda x: (x,), {"initial_state": [np.zeros((2, 8), "float32")]}, ValueError,
                          "`initial_state` of a Bidirectional GRU must be a list of 2 states.*received 1"),
    "initial-state-array": (lambda x: (x,), {"initial_state": np.zeros((2, 8), "float32")}, ValueError,
                            "list of 2 states.*received ndarray"),
    "initial-state-shape": (lambda x: (x,), {"initial_state": [np.zeros((2, 8), "float32"),
                                                               np.zeros((2, 9), "float32")]},
                            ValueError, r"`initial_state` must have shape \(2, 8\); received \(2, 9\)"),
    "training-str": (lambda x: (x,), {"training": "yes"}, TypeError, "`training` must be None, True or False"),
    "mask-shape": (lambda x: (x,), {"mask": np.ones((2, 4), bool)}, ValueError,
                   r"`mask` must have shape \(batch, time\) = \(2, 5\); received \(2, 4\)"),
    "rank-2": (lambda x: (x[:, 0],), {}, ValueError, r"`inputs` must have rank 3 .*received shape \(2, 4\)"),
    "features": (lambda x: (x[:, :, :3],), {}, ValueError, r"must have 4 features .*received shape \(2, 5, 3\)"),
    "int-inputs": (lambda x: (x.astype(np.int32),), {}, TypeError, "`inputs` must hold floating point values"),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_calls_are_refused_naming_the_argument(exported, case):
    make, kwargs, error, match = BAD_CALLS[case]
    wrapper, deployed, _ = exported["concat_state"]
    x = _inputs(wrapper, 2, 5, np.random.default_rng(1))
    with pytest.raises(error, match=match):
        deployed(*make(x), **kwargs)
    if case != "batch-not-exported":  # the in-process wrapper compiles any batch size
        with pytest.raises(error):
            wrapper(*make(x), **kwargs)


def test_deployed_specific_refusals(exported):
    x = _inputs(exported["sum"][0], 2, 5, np.random.default_rng(2))
    with pytest.raises(ValueError, match="exported without masking support"):
        exported["mul_unmasked"][1](x, mask=np.ones((2, 5), bool))
    with pytest.raises(ValueError, match=r"inference-only: it was exported with dropout=0\.25"):
        exported["ave_dropout"][1](x, training=True)
    _assert_same(exported["ave_dropout"][1](x, training=False), exported["ave_dropout"][0](x, training=False),
                 "dropout, inference")
    with pytest.raises(AttributeError, match="Layer must be stateful"):
        exported["sum"][1].reset_states()
    stateful = exported["stateful_time_major"][1]
    with pytest.raises(ValueError, match="`states` of a Bidirectional GRU must be a list of 2 states.*received 1"):
        stateful.reset_states([np.zeros((2, 8), "float32")])
    with pytest.raises(ValueError, match=r"expected shape \(2, 8\) but found \(2, 3\)"):
        stateful.reset_states([np.zeros((2, 8), "float32"), np.zeros((2, 3), "float32")])


def test_bad_exports_are_refused(tmp_path):
    wrapper = Bidirectional(GRU(4))
    with pytest.raises(ValueError, match="`export_bidirectional` needs a built wrapper"):
        wrapper.export(tmp_path / "a")
    wrapper.build((1, None, INPUT))
    with pytest.raises(TypeError, match="`wrapper` must be a tvm_gru.Bidirectional; received GRU"):
        export_bidirectional(GRU(4), tmp_path / "b")
    with pytest.raises(ValueError, match=r"`batch` must be a positive int .*received \[0\]"):
        wrapper.export(tmp_path / "c", batch=[0])
    with pytest.raises(ValueError, match=r"cannot export a Bidirectional GRU for target 'cuda'.*CPU schedules only"):
        wrapper.export(tmp_path / "d", target={"name": "cuda", "arch": "sm_80"})
    assert not any((tmp_path / n).exists() for n in "abcd")


# ------------------------------------------------------------------------------------ tvm-gru export
def _cli(*argv):
    from tvm_gru import cli  # noqa: PLC0415

    return cli.main(["export", *map(str, argv)])


def test_cli_exports_a_keras_bidirectional_config(exported, tmp_path, capsys):
    wrapper, _, _ = exported["concat_state"]
    (tmp_path / "cfg.json").write_text(json.dumps({"class_name": "Bidirectional", "config": wrapper.get_config()}))
    names = [f"{side}_{w}" for side in ("forward", "backward") for w in ("kernel", "recurrent_kernel", "bias")]
    np.savez(tmp_path / "w.npz", **dict(zip(names, wrapper.get_weights())))
    assert _cli("--config", tmp_path / "cfg.json", "--weights", tmp_path / "w.npz", "--batches", "2",
                "--out", tmp_path / "art") == 0
    assert "(bidirectional, " in capsys.readouterr().out
    deployed = load(tmp_path / "art")
    assert isinstance(deployed, DeployedBidirectional) and deployed.batch_sizes == (2,)
    x = _inputs(wrapper, 2, 6, np.random.default_rng(4))
    _assert_same(deployed(x), wrapper(x), "CLI artifact")


def test_cli_flat_config_with_flags_and_weights_in_order(exported, tmp_path):
    wrapper, _, _ = exported["sum"]
    (tmp_path / "cfg.json").write_text(json.dumps(wrapper.get_config()))
    np.savez(tmp_path / "w.npz", *wrapper.get_weights())  # arr_0 ... arr_5
    assert _cli("--config", tmp_path / "cfg.json", "--weights", tmp_path / "w.npz", "--return-state", "--no-masking",
                "--batch", "2", "--out", tmp_path / "art") == 0
    deployed = load(tmp_path / "art")
    assert deployed.return_state and deployed.merge_mode == "sum"
    assert deployed.metadata["forward"]["layer"]["masking"] is False
    ref = Bidirectional(GRU(6, return_sequences=True, return_state=True), merge_mode="sum")
    ref.set_weights(wrapper.get_weights())
    x = _inputs(wrapper, 2, 6, np.random.default_rng(5))
    _assert_same(deployed(x), ref(x), "flat config + --return-state")


@pytest.mark.parametrize("config, named", [
    ({"class_name": "LSTM", "config": {"units": 4}}, "'LSTM'"),
    ({"class_name": "Bidirectional", "config": {"layer": {"class_name": "LSTM", "config": {"units": 4}}}}, "LSTM"),
], ids=["lstm", "bidirectional-lstm"])
def test_cli_refuses_other_classes_naming_them(tmp_path, capsys, config, named):
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as info:
        _cli("--config", tmp_path / "cfg.json", "--input-dim", "3", "--out", tmp_path / "art")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--config" in err or "ValueError" in err
    assert named in err
    assert not (tmp_path / "art").exists()


def test_a_refused_backward_state_changes_no_state(exported):
    # The forward layer runs first: when the backward call then refuses its initial state, the forward layer's
    # carried state is put back (it had advanced before), in the deployed and the in-process wrapper alike.
    wrapper, deployed, _ = exported["stateful_time_major"]
    rng = np.random.default_rng(8)
    x = _inputs(wrapper, 2, 4, rng)
    for model in (wrapper, deployed):
        model.reset_states()
        model(x)
        before = model.states
        good = np.full((2, 8), 0.5, "float32")  # not the zeros the first call started from
        with pytest.raises(ValueError):
            model(x, initial_state=[good, np.zeros((2, 3), "float32")])
        _assert_same(model.states, before, f"{type(model).__name__} states after a refused call")
        with pytest.raises(ValueError):
            model.reset_states([good, np.zeros((2, 3), "float32")])
        _assert_same(model.states, before, f"{type(model).__name__} states after a refused reset_states")
    _assert_same(deployed(x), wrapper(x), "the next call")
