"""Stateful layers shared between threads, copies and pickles of cells and layers, and the deployed objects'
``training`` argument.

The thread tests use a GRU that counts: with a linear activation, z = 0 and r = 1 (hard_sigmoid of -10 and
+10) and R_h = I, b_h = 1, every step computes h_new = h + 1 exactly in float32, whatever the input. After
``T`` frames from any threads, in any order, the state is exactly ``T`` unless an update was lost.
"""

from __future__ import annotations

import copy
import pickle
import sys
import threading

import numpy as np
import pytest

import tvm_gru
from tvm_gru.keras_objects import initializers
from tvm_gru.runtime.artifact import load

UNITS, INPUT = 8, 4
THREADS, CALLS = 8, 2500  # a lost update shows within a few hundred calls with fast switching


def _pickled(obj):
    return pickle.loads(pickle.dumps(obj))


COPIES = {"deepcopy": copy.deepcopy, "pickle": _pickled}


# ------------------------------------------------------------------------------------ threads
def _counter_weights():
    kernel = np.zeros((INPUT, 3 * UNITS), np.float32)
    recurrent = np.zeros((UNITS, 3 * UNITS), np.float32)
    recurrent[:, 2 * UNITS:] = np.eye(UNITS, dtype=np.float32)
    bias = np.concatenate([np.full(UNITS, -10.0), np.full(UNITS, 10.0), np.ones(UNITS)]).astype(np.float32)
    return [kernel, recurrent, bias]


def _counter(**kwargs) -> tvm_gru.GRU:
    layer = tvm_gru.GRU(UNITS, activation=None, stateful=True, **kwargs)
    layer.set_weights(_counter_weights())
    return layer


@pytest.fixture
def fast_switching():
    """Switch threads every microsecond (not every 5 ms), so a race between threads shows in a short test."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


def _hammer(layer, steps, masked=False, threads=THREADS, calls=CALLS):
    """``threads`` threads each make ``calls`` calls of ``steps`` frames while another reads ``layer.states``;
    returns the frames run, the final states and what the reader saw wrong."""
    x = np.ones((1, steps, INPUT), np.float32)
    kwargs = {"mask": np.ones((1, steps), bool)} if masked else {}
    layer(x, **kwargs)  # compile, and let the fast path settle, before counting
    layer.reset_states()
    start, done, bad = threading.Barrier(threads + 1), threading.Event(), []

    def work():
        start.wait()
        for _ in range(calls):
            layer(x, **kwargs)

    def read():  # every state read is one moment's state: all units equal, never decreasing
        start.wait()
        last = 0.0
        while not done.is_set():
            states = layer.states
            values = {float(v) for s in states for v in s.ravel()}
            if len(values) != 1 or min(values) < last:
                bad.append(values)
                return
            last = values.pop()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    reader = threading.Thread(target=read)
    for t in (*workers, reader):
        t.start()
    for t in workers:
        t.join()
    done.set()
    reader.join()
    return threads * calls * steps, layer.states, bad


def _assert_counted(total, states, bad):
    assert bad == [], f"a concurrent `states` read saw a state between updates: {bad}"
    for state in states:
        lost = total - state
        assert np.all(lost == 0), f"{int(lost.max())} of {total} state updates were lost"


PATHS = {  # name: (frames per call, layer options, masked, the step kernel for single frames)
    "frames_on_step_kernel": (1, {}, False, True),
    "frames": (1, {}, False, False),
    "chunks": (3, {}, False, False),
    "return_state": (2, {"return_state": True}, False, False),
    "masked": (2, {}, True, False),
}


def _force_frame_kernel(monkeypatch):
    """Run (and export) single streamed frames on the step kernel, the path large layers take."""
    from tvm_gru.schedules.sequence_rules import CPUSequenceRule  # noqa: PLC0415

    monkeypatch.setattr(CPUSequenceRule, "frames_on_step_kernel", lambda self, spec, target: not spec.masked)


@pytest.mark.parametrize("path", list(PATHS))
def test_stateful_layer_loses_no_update_across_threads(path, fast_switching, monkeypatch):
    steps, options, masked, frame_kernel = PATHS[path]
    if frame_kernel:
        _force_frame_kernel(monkeypatch)
    layer = _counter(**options)
    _assert_counted(*_hammer(layer, steps, masked))


@pytest.fixture(scope="module")
def deployed_counter(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        _force_frame_kernel(patch)
        path = _counter().export(tmp_path_factory.mktemp("counter") / "layer")
    return path


@pytest.mark.parametrize("path", ["frames", "chunks", "masked"])
def test_deployed_stateful_layer_loses_no_update_across_threads(path, deployed_counter, fast_switching):
    steps, _, masked, _ = PATHS[path]
    layer = load(deployed_counter)
    assert "frame" in layer.metadata["kernel"]["functions"]["1"]  # single frames run the step kernel
    _assert_counted(*_hammer(layer, steps, masked))


def test_stateful_bidirectional_states_advance_together(fast_switching):
    """Both directions count every call, and no reader sees one direction's update without the other's."""
    bidi = tvm_gru.Bidirectional(_counter())
    bidi.set_weights(_counter_weights() * 2)
    total, states, bad = _hammer(bidi, 2, calls=CALLS // 2)
    _assert_counted(total, states, bad)


def test_shared_layer_that_is_not_stateful_gives_each_thread_its_result(fast_switching):
    """No lock is needed (or taken) without a state: every caller gets its own correct output."""
    layer = tvm_gru.GRU(UNITS, return_sequences=True, seed=0, bias_initializer="random_uniform")
    rng = np.random.default_rng(0)
    xs = [rng.uniform(-1, 1, (1, 3, INPUT)).astype(np.float32) for _ in range(THREADS)]
    expect = [layer(x).copy() for x in xs]
    errors, start = [], threading.Barrier(THREADS)

    def work(i):
        start.wait()
        for _ in range(CALLS):
            if not np.array_equal(layer(xs[i]), expect[i]):
                errors.append(i)
                return

    workers = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert errors == []


def test_output_pool_shared_by_threads_holding_their_outputs(fast_switching):
    """The pool behind every unlocked call (cells, layers that are not stateful): while all its arrays are
    held, each take evicts one; threads doing so at once must neither fail (a KeyError once escaped) nor hand
    out an array a caller still holds."""
    from tvm_gru.runtime.ffi_args import OutputPool  # noqa: PLC0415

    for _ in range(4):  # the race needs an unlucky switch between two statements: give it several rounds
        pool, errors, start = OutputPool((1, 2), np.float32), [], threading.Barrier(THREADS)

        def work(tag):
            start.wait()
            held = []
            try:
                for _ in range(20_000):
                    out, _ = pool.take()
                    out[0, 0] = tag
                    held = [*held[-5:], out]  # more held arrays than the pool keeps
                    if any(a[0, 0] != tag for a in held):
                        errors.append(f"thread {tag}: an array it holds was handed to another caller")
                        return
            except Exception as err:  # noqa: BLE001  (report whatever escapes a take)
                errors.append(repr(err))

        workers = [threading.Thread(target=work, args=(tag,)) for tag in range(THREADS)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        assert errors == []


# ------------------------------------------------------------------------------------ copies
class Halves(initializers.Initializer):
    """A user's own initializer (its config alone could not rebuild it)."""

    def __call__(self, shape, dtype=None, **kwargs):
        return np.full(shape, 0.5, dtype or "float32")


def _inputs(shape, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


@pytest.mark.parametrize("how", list(COPIES))
def test_cell_copy_has_same_numbers_and_is_independent(how):
    cell = tvm_gru.GRUCell(UNITS, seed=3, dropout=0.3, recurrent_dropout=0.2, kernel_regularizer="l2",
                           kernel_constraint={"class_name": "MaxNorm", "config": {"max_value": 0.5}},
                           bias_initializer="random_uniform", name="counted")
    x, h = _inputs((2, INPUT)), _inputs((2, UNITS), 1)
    cell(x, [h], training=True)  # compiled kernels and cached dropout masks exist
    weights = cell.get_weights()
    weights[0] *= 3  # the constraint rescales them once; a copy must not rescale them again
    cell.set_weights(weights)
    twin = COPIES[how](cell)
    assert twin.get_config() == cell.get_config() and twin.name == "counted"
    for mine, theirs in zip(twin.get_weights(), cell.get_weights()):
        np.testing.assert_array_equal(mine, theirs)
    assert twin.losses == cell.losses
    np.testing.assert_array_equal(twin(x, [h])[0], cell(x, [h])[0])
    np.testing.assert_array_equal(twin(x, [h], training=True)[0], cell(x, [h], training=True)[0])
    cell.reset_dropout_mask()
    twin.reset_dropout_mask()  # the next masks come from the same generator position
    np.testing.assert_array_equal(twin(x, [h], training=True)[0], cell(x, [h], training=True)[0])
    before = cell(x, [h])[0].copy()
    twin.set_weights([np.zeros_like(w) for w in twin.get_weights()])
    np.testing.assert_array_equal(cell(x, [h])[0], before)
    assert not np.array_equal(twin(x, [h])[0], before)


@pytest.mark.parametrize("how", list(COPIES))
def test_unbuilt_cell_copy_builds_the_same_weights(how):
    cell = tvm_gru.GRUCell(UNITS, seed=5, kernel_initializer=Halves())
    twin = COPIES[how](cell)
    assert not twin.built and isinstance(twin.kernel_initializer, Halves)
    x, h = _inputs((1, INPUT)), _inputs((1, UNITS), 1)
    np.testing.assert_array_equal(twin(x, [h])[0], cell(x, [h])[0])
    np.testing.assert_array_equal(twin.kernel, np.full((INPUT, 3 * UNITS), 0.5, np.float32))


@pytest.mark.parametrize("how", list(COPIES))
def test_stateful_layer_copy_keeps_its_state_and_is_independent(how):
    layer = tvm_gru.GRU(UNITS, stateful=True, seed=7, bias_initializer="random_uniform",
                        activity_regularizer="l1", name="streamer")
    x = _inputs((2, 3, INPUT))
    layer(x)
    twin = COPIES[how](layer)
    assert twin.name == "streamer" and twin.get_config() == layer.get_config()
    np.testing.assert_array_equal(twin.states[0], layer.states[0])
    assert twin.losses == layer.losses
    np.testing.assert_array_equal(twin(x), layer(x))  # both continue from the same state
    np.testing.assert_array_equal(twin.states[0], layer.states[0])
    twin.reset_states()
    assert np.any(layer.states[0] != 0)
    twin.set_weights([np.zeros_like(w) for w in twin.get_weights()])
    assert np.any(layer(x) != 0)


@pytest.mark.parametrize("how", list(COPIES))
def test_unbuilt_layer_copy(how):
    layer = tvm_gru.GRU(UNITS, seed=9, return_sequences=True, go_backwards=True)
    twin = COPIES[how](layer)
    assert not twin.built and twin.go_backwards and twin.units == UNITS
    x = _inputs((1, 4, INPUT))
    np.testing.assert_array_equal(twin(x), layer(x))


@pytest.mark.parametrize("how", list(COPIES))
def test_bidirectional_copy_keeps_weights_and_states(how):
    bidi = tvm_gru.Bidirectional(tvm_gru.GRU(UNITS, stateful=True, seed=11), merge_mode="ave")
    x = _inputs((1, 3, INPUT))
    bidi(x)
    twin = COPIES[how](bidi)
    assert twin.get_config() == bidi.get_config()
    for mine, theirs in zip(twin.states + twin.get_weights(), bidi.states + bidi.get_weights()):
        np.testing.assert_array_equal(mine, theirs)
    np.testing.assert_array_equal(twin(x), bidi(x))
    twin.reset_states()
    assert all(np.any(s != 0) for s in bidi.states)


def _deployed_cell(tmp_path):
    cell = tvm_gru.GRUCell(UNITS, seed=13)
    cell.build((1, INPUT))
    return load(cell.export(tmp_path / "cell"))


def test_deployed_objects_refuse_pickle_and_copy(tmp_path, deployed_counter):
    """They hold a verified, loaded library: a clear TypeError that says to load the path again."""
    for deployed in (_deployed_cell(tmp_path), load(deployed_counter)):
        for how in (pickle.dumps, copy.copy, copy.deepcopy):
            with pytest.raises(TypeError, match=r"cannot be pickled or copied.*tvm_gru\.load\(path\)"):
                how(deployed)


# ------------------------------------------------------------------------------------ training
BAD_TRAINING = ["yes", "", np.array([True, False]), np.array(1), 2, 0.5, [True]]


def test_deployed_cell_and_layer_check_training_like_in_process(tmp_path, deployed_counter):
    cell = _deployed_cell(tmp_path)
    layer = load(deployed_counter)
    x, h = np.ones((1, INPUT), np.float32), np.zeros((1, UNITS), np.float32)
    in_process, in_process_layer = tvm_gru.GRUCell(UNITS, seed=13), _counter()
    calls = {"deployed cell": lambda t: cell(x, [h], training=t),
             "deployed layer": lambda t: layer(x[:, None], training=t),
             "GRUCell": lambda t: in_process(x, [h], training=t),
             "GRU": lambda t: in_process_layer(x[:, None], training=t)}
    for value in BAD_TRAINING:
        messages = set()
        for name, call in calls.items():
            with pytest.raises(TypeError, match="`training` must be None, True or False") as err:
                call(value)
            messages.add(str(err.value))
        assert len(messages) == 1, f"{value!r}: {messages}"
    for value in (None, False, True, np.bool_(True), 0, 1):
        for call in calls.values():
            call(value)  # accepted: no dropout, so training changes nothing
