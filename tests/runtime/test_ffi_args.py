"""Reused kernel outputs (``tvm_gru.runtime.ffi_args``): an array is recycled only when nobody else can see it.

Cells and layers hand out output arrays from small pools so that a streamed frame pays no allocation or DLPack
export for them. These tests pin the contract: outputs (and views of them) the caller keeps are never
overwritten by later calls, and an output the caller dropped is recycled (the speed-up is real).
"""

from __future__ import annotations

import weakref

import numpy as np
import pytest
from conftest import tolerance

import tvm_gru
from tvm_gru.ops import reference
from tvm_gru.runtime.ffi_args import OutputPool, SequenceOutputs


def test_pool_recycles_only_dropped_arrays():
    pool = OutputPool((2, 3), np.float32, size=4)
    a, a_t = pool.take()
    assert a.shape == (2, 3) and a.dtype == np.float32 and a_t.shape == (2, 3)
    b, _ = pool.take()
    assert b is not a  # a is still held
    view = b[1]
    del b
    c, _ = pool.take()
    assert c is not view.base and c is not a  # a view keeps its base out of the pool
    dropped = weakref.ref(a)
    del a, a_t
    d, _ = pool.take()
    assert d is dropped()  # nobody held it: recycled, with its tensor
    assert pool.tensor_of(d) is not None and pool.tensor_of(np.empty((2, 3), np.float32)) is None


def test_pool_over_capacity_keeps_held_arrays_valid():
    pool = OutputPool((4,), np.float64, size=2)
    held = []
    for i in range(5):  # every array stays held: the pool replaces its oldest entry, the caller keeps it
        out, _ = pool.take()
        out[:] = i
        held.append(out)
    assert [float(h[0]) for h in held] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert len({id(h) for h in held}) == 5


@pytest.mark.parametrize("kwargs", [{}, {"return_sequences": True}, {"return_state": True}])
def test_streamed_outputs_kept_by_the_caller_stay_intact(kwargs):
    units, dim, frames = 12, 5, 9
    layer = tvm_gru.GRU(units, stateful=True, seed=3, bias_initializer="random_uniform", **kwargs)
    xs = np.random.default_rng(0).uniform(-1, 1, (1, frames, dim)).astype(np.float32)
    kept = [layer(xs[:, t:t + 1]) for t in range(frames)]
    lasts = [np.asarray(k[0] if isinstance(k, list) else k).reshape(1, units) for k in kept]
    ref = reference.sequence(layer.cell.config, xs.transpose(1, 0, 2), np.zeros((1, units)), *layer.get_weights())
    for t in range(frames):
        np.testing.assert_allclose(lasts[t], ref[t], rtol=0, atol=tolerance("float32", ref), err_msg=f"frame {t}")
        if "return_state" in kwargs:
            np.testing.assert_array_equal(kept[t][1], lasts[t])
    assert len({id(k[0] if isinstance(k, list) else k) for k in kept}) == frames
    # Only a view of each output kept: its base is still seen, so it must not be recycled either.
    layer.reset_states()
    views = []
    for t in range(frames):
        out = layer(xs[:, t:t + 1])
        views.append((out[0] if isinstance(out, list) else out)[..., :4])
        del out
    for t in range(frames):
        np.testing.assert_array_equal(views[t].reshape(1, 4), lasts[t][:, :4], err_msg=f"frame {t}")


@pytest.mark.parametrize("kwargs", [{}, {"return_sequences": True}, {"return_state": True}])
def test_streamed_outputs_dropped_are_recycled(kwargs):
    """Streaming allocates nothing per frame: with the outputs dropped, every frame's output is one of a few
    pooled arrays (a fresh array per frame would die with the caller's last reference)."""
    layer = tvm_gru.GRU(8, stateful=True, seed=0, **kwargs)
    frame = np.ones((1, 1, 4), np.float32)
    layer(frame)
    refs = []
    for _ in range(20):
        out = layer(frame)
        refs.append(weakref.ref(out[0] if isinstance(out, list) else out))
        del out
    alive = [r() for r in refs]
    assert all(a is not None for a in alive) and len({id(a) for a in alive}) <= 4


def test_cell_step_outputs_kept_stay_intact():
    cell = tvm_gru.GRUCell(16, seed=1, bias_initializer="random_uniform")
    xs = np.random.default_rng(2).uniform(-1, 1, (7, 2, 6)).astype(np.float32)
    state, kept = [np.zeros((2, 16), np.float32)], []
    for x in xs:
        out, state = cell(x, state)
        kept.append(out)
    ref = reference.sequence(cell.config, xs, np.zeros((2, 16)), *cell.get_weights())
    for t, out in enumerate(kept):
        np.testing.assert_allclose(out, ref[t], rtol=0, atol=tolerance("float32", ref), err_msg=f"step {t}")


def test_sequence_outputs_route_states():
    outs = SequenceOutputs(2, 3, np.float32, return_sequences=True, time_major=False, return_state=False,
                           short_steps=2)
    states = [np.zeros((2, 3), np.float32), np.ones((2, 3), np.float32)]
    (seq, last, state), h0, tensors = outs.take(2, states)
    assert seq.shape == (2, 2, 3) and state is states[1] and len(tensors) == 3
    assert h0 is outs.state_pair(states)[0]
    states.reverse()
    (_, _, state), h0_next, _ = outs.take(5, states)  # longer than short_steps: a fresh sequence array
    assert state is states[1] and h0_next is tensors[2]  # the spare written last call is now the carried state
    (seq, last, state), h0, tensors = SequenceOutputs(2, 3, np.float32, False, False, True).take(1)
    assert seq is None and last.shape == state.shape == (2, 3) and last is not state and len(tensors) == 2


def test_deployed_cell_and_layer_outputs_kept_stay_intact(tmp_path):
    """The same contract through artifacts (``tvm_gru.load``), whose host calls use the same pools."""
    cell = tvm_gru.GRUCell(8, seed=4, bias_initializer="random_uniform")
    cell.build((1, 3))
    deployed = tvm_gru.load(cell.export(tmp_path / "cell", batch=1))
    layer = tvm_gru.GRU(8, stateful=True, seed=4, bias_initializer="random_uniform")
    layer.build((1, 1, 3))
    layer.set_weights(cell.get_weights())
    streamed = tvm_gru.load(layer.export(tmp_path / "layer", batch=1))
    xs = np.random.default_rng(5).uniform(-1, 1, (6, 1, 3)).astype(np.float32)
    ref = reference.sequence(cell.config, xs, np.zeros((1, 8)), *cell.get_weights())
    state, steps, frames = [np.zeros((1, 8), np.float32)], [], []
    for x in xs:
        out, state = deployed(x, state)
        steps.append(out)
        frames.append(streamed(x[:, None, :]))
    for t in range(len(xs)):
        np.testing.assert_allclose(steps[t], ref[t], rtol=0, atol=tolerance("float32", ref), err_msg=f"cell {t}")
        np.testing.assert_allclose(frames[t], ref[t], rtol=0, atol=tolerance("float32", ref), err_msg=f"layer {t}")
    dropped = [weakref.ref(s) for s in steps]
    state = [steps[-1].copy()]
    del steps, out
    recycled = deployed(xs[0], state)[0]
    assert any(ref() is recycled for ref in dropped)  # an earlier output nobody holds any more, not a new one


@pytest.mark.parametrize("time_major", [False, True])
def test_deployed_streaming_fast_path_matches_the_layer(tmp_path, time_major):
    """Frames the deployed layer's fast path takes (float32 numpy) and ones it hands to the checked path
    (float64, a list initial state, a read-only frame, a two-frame chunk) give the in-process layer's results."""
    layer = tvm_gru.GRU(8, stateful=True, time_major=time_major, seed=6, bias_initializer="random_uniform")
    layer.build((1, 1, 3))
    deployed = tvm_gru.load(layer.export(tmp_path / "layer", batch=1))
    rng = np.random.default_rng(7)
    frames = [rng.uniform(-1, 1, (1, 1, 3)).astype(np.float32) for _ in range(6)]
    frames[4] = np.concatenate([frames[4], frames[5]], axis=1)  # a chunk of two frames
    readonly = frames[3].copy()
    readonly.flags.writeable = False
    frames[3] = readonly
    h0 = rng.uniform(-1, 1, (1, 8)).astype(np.float32)
    calls = [(frames[0], {}), (frames[1].astype(np.float64), {}), (frames[2], {"initial_state": [h0]}),
             (frames[3], {}), (frames[4], {}), (frames[0], {"initial_state": h0})]
    for i, (frame, kwargs) in enumerate(calls):
        if time_major:
            frame = frame.transpose(1, 0, 2)
        np.testing.assert_allclose(deployed(frame, **kwargs), layer(frame, **kwargs), rtol=0, atol=1e-6,
                                   err_msg=f"call {i}")
        np.testing.assert_allclose(deployed.states[0], layer.states[0], rtol=0, atol=1e-6, err_msg=f"call {i}")
