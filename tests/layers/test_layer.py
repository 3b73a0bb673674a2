"""tvm_gru.GRU: the Keras v1 GRU layer on the whole-sequence kernel.

Numbers are checked against the TF goldens (12-step sequences of the real tf_keras v1 cell) and against the
float64 Keras RNN oracle of test_sequence_reference.py (masks, go_backwards, dropout).
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from conftest import tolerance

from tvm_gru.layers.cell import GRUCell
from tvm_gru.layers.gru import GRU
from tvm_gru.ops.reference import keras_rnn

SEQ_CASES = ["default_seq12", "seq12_ra1", "seq12_sigmoid_tanh_ra1_impl2", "seq12_relu", "seq12_nobias_impl2",
             "seq12_elu_softsign", "large_ra0_impl2_seq12", "large_ra1_impl2_seq12"]


def _close(got, expected, dtype="float32"):
    np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance(dtype, expected))


def _layer(units=7, input_dim=4, seed=0, **kwargs):
    layer = GRU(units, **kwargs)
    rng = np.random.default_rng(seed)
    dt = layer.cell.dtype
    shapes = [(input_dim, 3 * units), (units, 3 * units)]
    if layer.cell.config.use_bias:
        shapes.append(layer.cell.config.bias_shape)
    layer.set_weights([rng.uniform(-0.6, 0.6, s).astype(dt) for s in shapes])
    return layer


def _oracle(layer, x, h0=None, **kwargs):
    """keras_rnn on batch-major (or time-major) ``x`` with the layer's weights; time-major outputs."""
    xs = x if layer.time_major else x.transpose(1, 0, 2)
    h0 = np.zeros((xs.shape[1], layer.cell.units)) if h0 is None else h0
    return keras_rnn(layer.cell.config, xs, h0, *layer.get_weights(), go_backwards=layer.go_backwards, **kwargs)


@pytest.mark.parametrize("case", SEQ_CASES)
def test_tf_goldens_12_steps(goldens, case):
    meta, data = goldens
    info = next(c for c in meta["cases"] if c["name"] == case)
    cfg = {k: v for k, v in info["config"].items() if k not in ("name", "trainable")}
    layer = GRU.from_config({**cfg, "return_sequences": True, "return_state": True, "time_major": True})
    weights = [data[f"{case}/kernel"], data[f"{case}/recurrent_kernel"]]
    if info["use_bias"]:
        weights.append(data[f"{case}/bias"])
    layer.set_weights(weights)
    out, state = layer(data[f"{case}/x"], initial_state=[data[f"{case}/h0"]])
    _close(out, data[f"{case}/out"], info["dtype"])
    _close(state, data[f"{case}/out"][-1], info["dtype"])


@pytest.mark.parametrize("reset_after", [False, True], ids=["ra0", "ra1"])
def test_outputs_sequences_state_and_backwards(reset_after):
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (3, 6, 4)).astype("float32")
    h0 = rng.uniform(-1, 1, (3, 7)).astype("float32")
    for backwards in (False, True):
        seq_layer = _layer(reset_after=reset_after, return_sequences=True, return_state=True, go_backwards=backwards)
        outs, final = _oracle(seq_layer, x, h0)
        seq, state = seq_layer(x, initial_state=h0)
        assert seq.shape == (3, 6, 7) and state.shape == (3, 7)
        _close(seq, outs.transpose(1, 0, 2))
        _close(state, final)
        last_layer = _layer(reset_after=reset_after, go_backwards=backwards)
        last = last_layer([x, h0])  # Keras also takes [inputs, initial_state]
        assert last.shape == (3, 7)
        _close(last, outs[-1])


def test_time_major():
    rng = np.random.default_rng(2)
    layer = _layer(time_major=True, return_sequences=True)
    x = rng.uniform(-1, 1, (5, 2, 4)).astype("float32")
    outs, _ = _oracle(layer, x)
    out = layer(x)
    assert out.shape == (5, 2, 7)
    _close(out, outs)


@pytest.mark.parametrize("zero_output", [False, True], ids=["repeat_output", "zero_output"])
def test_mask_keras_semantics(zero_output):
    rng = np.random.default_rng(3)
    layer = _layer(return_sequences=True, return_state=True, zero_output_for_mask=zero_output)
    x = rng.uniform(-1, 1, (3, 6, 4)).astype("float32")
    h0 = rng.uniform(-1, 1, (3, 7)).astype("float32")
    lengths = np.array([6, 3, 0])
    mask = np.arange(6)[None, :] < lengths[:, None]  # (B, T): right-padded variable-length sequences
    mask[0, 2] = False  # and a hole
    seq, state = layer(x, mask=mask, initial_state=h0)
    outs, final = _oracle(layer, x, h0, mask=mask.T, zero_output_for_mask=zero_output)
    _close(seq, outs.transpose(1, 0, 2))
    _close(state, final)
    np.testing.assert_array_equal(state[2], h0[2])  # an empty sequence keeps its initial state
    np.testing.assert_array_equal(seq[2], 0.0)  # ... and outputs zeros (Keras: previous output, from zeros)
    np.testing.assert_array_equal(seq[1, 3:], np.repeat(seq[1, 2:3], 3, axis=0) if not zero_output else 0.0)
    # int and float masks mean the same
    seq2, _ = layer(x, mask=mask.astype(np.float32), initial_state=h0)
    np.testing.assert_array_equal(seq2, seq)


def test_any_length_without_recompiling():
    rng = np.random.default_rng(4)
    layer = _layer(return_sequences=True)
    for steps in (1, 5, 40, 2):
        x = rng.uniform(-1, 1, (2, steps, 4)).astype("float32")
        outs, _ = _oracle(layer, x)
        _close(layer(x), outs.transpose(1, 0, 2))
    assert len(layer._runners) == 1  # one compiled kernel served every length


@pytest.mark.parametrize("reset_after", [False, True], ids=["ra0", "ra1"])
def test_stateful_streaming_equals_one_call(reset_after):
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, (2, 24, 4)).astype("float32")
    whole = _layer(reset_after=reset_after, return_sequences=True)(x)
    stream = _layer(reset_after=reset_after, return_sequences=True, stateful=True)
    chunks = [1, 1, 3, 1, 7, 11]
    pieces, start = [], 0
    for n in chunks:
        pieces.append(stream(x[:, start:start + n]))
        start += n
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), whole, rtol=0, atol=1e-6)
    np.testing.assert_allclose(stream.states[0], whole[:, -1], rtol=0, atol=1e-6)
    stream.reset_states()
    np.testing.assert_array_equal(stream.states[0], 0.0)
    np.testing.assert_allclose(stream(x[:, :5]), whole[:, :5], rtol=0, atol=1e-6)
    stream.reset_states(whole[:, 4])
    np.testing.assert_allclose(stream(x[:, 5:9]), whole[:, 5:9], rtol=0, atol=1e-6)
    fresh = _layer(reset_after=reset_after, return_sequences=True, stateful=True)
    np.testing.assert_allclose(fresh(x[:, 9:12], initial_state=whole[:, 8]), whole[:, 9:12], rtol=0, atol=1e-6)
    np.testing.assert_allclose(fresh(x[:, 12:]), whole[:, 12:], rtol=0, atol=1e-6)  # carried on from there


@pytest.mark.parametrize("reset_after, time_major", [(False, False), (True, True)], ids=["ra0", "ra1_time_major"])
def test_frames_on_the_step_kernel(monkeypatch, reset_after, time_major):
    """Single frames of a streaming layer run the cell's step kernel where the rule says so (here forced at a
    small shape): the same numbers as one whole-sequence call, with the carried state, an initial_state
    override, strided frames (the checked path), reset_states and new weights."""
    from tvm_gru.runtime.step import StepRunner
    from tvm_gru.schedules.sequence_rules import CPUSequenceRule

    monkeypatch.setattr(CPUSequenceRule, "frame_step_min_bytes", 0)
    ran = []
    run_into = StepRunner.run_into
    monkeypatch.setattr(StepRunner, "run_into", lambda self, *a: (ran.append(1), run_into(self, *a)))
    rng = np.random.default_rng(8)
    x = rng.uniform(-1, 1, (3, 14, 4)).astype("float32")  # batch-major (B, T, I)
    kw = dict(reset_after=reset_after, time_major=time_major)

    def frame(t):  # (B, 1, I) or (1, B, I), contiguous
        return np.ascontiguousarray(x[:, t:t + 1] if not time_major else x[:, t][None])

    def as_batch_major(seq):
        return seq if not time_major else seq.transpose(1, 0, 2)

    whole = as_batch_major(_layer(return_sequences=True, **kw)(x if not time_major else x.transpose(1, 0, 2)))
    stream = _layer(stateful=True, **kw)
    outs = [stream(frame(t)) for t in range(6)]
    assert len(ran) >= 5  # the first call takes the checked path (the sequence kernel), then the step kernel
    for t, out in enumerate(outs):
        np.testing.assert_allclose(out, whole[:, t], rtol=0, atol=1e-6)
    assert not np.shares_memory(outs[-1], stream.states[0])
    np.testing.assert_allclose(stream.states[0], whole[:, 5], rtol=0, atol=1e-6)
    # a strided frame: the step kernel's binder refuses it and the checked path runs it
    strided = x[:, 6:7] if not time_major else x.transpose(1, 0, 2)[6:7]
    np.testing.assert_allclose(stream(strided), whole[:, 6], rtol=0, atol=1e-6)
    np.testing.assert_allclose(stream(frame(7), initial_state=whole[:, 6]), whole[:, 7], rtol=0, atol=1e-6)
    stream.reset_states(whole[:, 7])
    np.testing.assert_allclose(stream(frame(8)), whole[:, 8], rtol=0, atol=1e-6)
    before = len(ran)
    # new weights through the cell: the step kernel's weights follow
    weights = [w * 0.5 for w in stream.get_weights()]
    stream.cell.set_weights(weights)
    other = _layer(return_sequences=True, **kw)
    other.set_weights(weights)
    expected = as_batch_major(other(x[:, 9:11] if not time_major else x[:, 9:11].transpose(1, 0, 2),
                                    initial_state=stream.states[0]))
    np.testing.assert_allclose(np.stack([stream(frame(9)), stream(frame(10))], 1), expected, rtol=0, atol=1e-6)
    assert len(ran) == before + 2


def test_frames_on_the_step_kernel_only_where_the_weights_stream_from_l3():
    from tvm_gru import targets
    from tvm_gru.build.sequence import frames_on_step_kernel
    from tvm_gru.ops.config import GRUConfig
    from tvm_gru.ops.sequence import SequenceSpec

    x86 = targets.resolve({"name": "x86", "num-cores": 2})
    arm = targets.resolve({"name": "aarch64", "num-cores": 4})

    def spec(batch, input_dim, units, **kw):
        return SequenceSpec(GRUConfig(units), batch=batch, input_dim=input_dim, return_sequences=False, **kw)

    for shape, expected in [((1, 512, 1024), True), ((8, 512, 1024), True), ((64, 512, 1024), True),
                            ((1, 256, 256), False), ((64, 256, 256), False), ((8, 64, 128), False)]:
        assert frames_on_step_kernel(spec(*shape), x86) is expected, shape
    assert not frames_on_step_kernel(spec(8, 512, 1024, masked=True), x86)  # the step kernel has no mask
    assert not frames_on_step_kernel(spec(8, 512, 1024), arm)  # not measured there


def test_streaming_allocates_only_the_outputs():
    layer = _layer(units=32, input_dim=16, stateful=True, return_state=True)
    frame = np.ones((1, 1, 16), "float32")
    for _ in range(3):
        layer(frame)  # compile, first-call caches
    tracemalloc.start()
    try:
        kept = []
        before = tracemalloc.take_snapshot()
        for _ in range(200):
            kept.append(layer(frame))
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename") if s.size_diff > 0)
    returned = sum(o.nbytes + s.nbytes for o, s in kept)
    # Only the returned arrays (and the list holding them) may have grown.
    assert grown <= returned + 200 * 400, (grown, returned)
    del kept
    out, state = layer(frame)
    np.testing.assert_array_equal(out, state)
    assert not np.shares_memory(state, layer.states[0])


def test_stateful_batch_is_fixed():
    layer = _layer(stateful=True)
    layer(np.ones((2, 3, 4), "float32"))
    with pytest.raises(ValueError, match="batch size 2"):
        layer(np.ones((3, 3, 4), "float32"))
    with pytest.raises(AttributeError, match="stateful"):
        _layer().reset_states()


@pytest.mark.parametrize("implementation", [1, 2])
def test_dropout_in_training_uses_the_cell_masks(implementation):
    rng = np.random.default_rng(6)
    layer = _layer(dropout=0.3, recurrent_dropout=0.2 if implementation == 1 else 0.0,
                   implementation=implementation, return_sequences=True, seed=7)
    x = rng.uniform(-1, 1, (2, 5, 4)).astype("float32")
    infer = layer(x)
    _close(infer, _oracle(layer, x)[0].transpose(1, 0, 2))  # inference: no dropout
    trained = layer(x, training=True)
    masks = layer.cell._masks
    outs, _ = _oracle(layer, x, input_masks=masks["input"], recurrent_masks=masks["recurrent"])
    _close(trained, outs.transpose(1, 0, 2))  # the same masks at every step
    assert np.abs(trained - infer).max() > 1e-3
    again = layer(x, training=True)
    assert np.abs(again - trained).max() > 1e-6  # new masks per call, as the Keras RNN layer draws them
    _close(layer(x), infer)


def test_weights_config_round_trip():
    layer = _layer(units=5, input_dim=3, reset_after=True, return_sequences=True, go_backwards=True,
                   kernel_regularizer="l2", activity_regularizer={"class_name": "L1", "config": {"l1": 0.5}},
                   name="encoder")
    cfg = layer.get_config()
    assert cfg["name"] == "encoder" and cfg["units"] == 5 and cfg["return_sequences"] is True
    assert cfg["go_backwards"] is True and cfg["stateful"] is False and cfg["time_major"] is False
    assert cfg["recurrent_activation"] == "hard_sigmoid" and cfg["reset_after"] is True
    assert cfg["activity_regularizer"]["class_name"] == "L1"
    assert "cell" not in cfg
    clone = GRU.from_config(cfg)
    clone.set_weights(layer.get_weights())
    assert clone.get_config() == cfg
    x = np.random.default_rng(8).uniform(-1, 1, (2, 4, 3)).astype("float32")
    np.testing.assert_array_equal(clone(x), layer(x))
    assert len(layer.losses) == 2 and layer.losses[1] == pytest.approx(0.5 * np.abs(layer(x)).sum() / 2, rel=1e-5)
    assert [w.shape for w in layer.get_weights()] == [(3, 15), (5, 15), (2, 15)]
    assert layer.units == 5 and layer.reset_after is True and layer.dropout == 0.0


def test_tf_keras_layer_config_loads():
    cfg = {"name": "gru", "trainable": True, "dtype": "float32", "return_sequences": False, "return_state": False,
           "go_backwards": False, "stateful": False, "unroll": False, "time_major": False, "units": 4,
           "activation": "tanh", "recurrent_activation": "hard_sigmoid", "use_bias": True,
           "kernel_initializer": {"module": "keras.initializers", "class_name": "GlorotUniform",
                                  "config": {"seed": None}, "registered_name": None},
           "recurrent_initializer": {"module": "keras.initializers", "class_name": "Orthogonal",
                                     "config": {"gain": 1.0, "seed": None}, "registered_name": None},
           "bias_initializer": {"module": "keras.initializers", "class_name": "Zeros", "config": {},
                                "registered_name": None},
           "kernel_regularizer": None, "recurrent_regularizer": None, "bias_regularizer": None,
           "activity_regularizer": None, "kernel_constraint": None, "recurrent_constraint": None,
           "bias_constraint": None, "dropout": 0.0, "recurrent_dropout": 0.0, "implementation": 1,
           "reset_after": False, "batch_input_shape": [None, None, 3]}
    layer = GRU.from_config(cfg)
    assert layer.cell.config.reset_after is False and layer.units == 4
    assert layer(np.zeros((2, 3, 3), "float32")).shape == (2, 4)


def test_shares_the_cell_weights_and_detects_replacement():
    layer = _layer(return_sequences=True)
    x = np.random.default_rng(9).uniform(-1, 1, (2, 3, 4)).astype("float32")
    before = layer(x)
    cell = layer.cell
    assert isinstance(cell, GRUCell)
    cell.set_weights([w * 0.5 for w in cell.get_weights()])
    after = layer(x)  # fast path notices the new arrays
    _close(after, _oracle(layer, x)[0].transpose(1, 0, 2))
    assert np.abs(after - before).max() > 1e-3


@pytest.mark.parametrize("bad, error, match", [
    (np.ones((2, 4), "float32"), ValueError, "rank 3"),
    (np.ones((2, 3, 5), "float32"), ValueError, "4 features"),
    (np.ones((2, 3, 4), "int32"), TypeError, "floating point"),
    ([[1.0]], TypeError, "numpy array"),
], ids=["rank2", "features", "int", "list"])
def test_bad_inputs(bad, error, match):
    layer = _layer()
    with pytest.raises(error, match=match):
        layer(bad)


def test_bad_mask_and_state():
    layer = _layer()
    x = np.ones((2, 3, 4), "float32")
    with pytest.raises(ValueError, match="mask"):
        layer(x, mask=np.ones((3, 2), bool))
    with pytest.raises(ValueError, match="initial_state"):
        layer(x, initial_state=np.zeros((2, 8), "float32"))
    with pytest.raises(TypeError, match="return_sequences"):
        GRU(3, return_sequences="yes")


def test_float64_and_casting():
    layer = _layer(dtype="float64", return_sequences=True)
    x = np.random.default_rng(10).uniform(-1, 1, (2, 3, 4))
    out = layer(x.astype("float32"))  # inputs are cast to the layer dtype
    assert out.dtype == np.float64
    _close(out, _oracle(layer, x.astype("float32").astype("float64"))[0].transpose(1, 0, 2), "float64")


def test_empty_sequence_and_batch():
    layer = _layer(return_sequences=True, return_state=True)
    seq, state = layer(np.zeros((2, 0, 4), "float32"))
    assert seq.shape == (2, 0, 7) and state.shape == (2, 7)
    seq, state = layer(np.zeros((0, 3, 4), "float32"))
    assert seq.shape == (0, 3, 7)


def test_foreign_target_is_refused_clearly():
    layer = _layer(target="aarch64")
    with pytest.raises(RuntimeError, match="cannot run in this process"):
        layer(np.ones((1, 2, 4), "float32"))


@pytest.mark.parametrize("stateful", [False, True], ids=["plain", "stateful"])
def test_initial_state_on_the_fast_path(stateful):
    """Calls with ``initial_state`` (numpy, list of one or bare) take the streaming fast path once it exists,
    and give the reference's numbers; a state of another dtype or layout still works through the checked path."""
    rng = np.random.default_rng(11)
    layer = _layer(units=16, input_dim=5, return_state=True, stateful=stateful)
    x = rng.uniform(-1, 1, (3, 6, 5)).astype("float32")
    h0 = rng.uniform(-1, 1, (3, 16)).astype("float32")
    layer(x)  # builds the runner and the fast path
    assert layer._fast is not None
    checked = []
    slow = layer._call_checked
    layer._call_checked = lambda *a: checked.append(1) or slow(*a)
    outs, state = _oracle(layer, x, h0)
    for initial in ([h0], (h0,), h0, [h0.astype(np.float64)], [np.asfortranarray(h0)]):
        out, new_state = layer(x, initial_state=initial)
        _close(out, outs[-1])
        _close(new_state, state)
    assert len(checked) == 2  # float64 and Fortran-ordered states fall back to the checked path, which converts
    if stateful:  # the carried state is the last call's
        _close(layer.states[0], state)
