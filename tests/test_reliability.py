"""Concurrency, endurance and property-based checks of the compiled cell."""

from __future__ import annotations

import os
import threading

import numpy as np
from conftest import tolerance
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tvm_gru
from tvm_gru.ops import activations, reference


def test_one_cell_from_eight_threads():
    """No shared scratch or output buffer: every caller gets its own correct result."""
    cell = tvm_gru.GRUCell(32, seed=0, bias_initializer="random_uniform")
    rng = np.random.default_rng(0)
    xs = [rng.uniform(-1, 1, (2, 16)).astype(np.float32) for _ in range(8)]
    hs = [rng.uniform(-1, 1, (2, 32)).astype(np.float32) for _ in range(8)]
    cell(xs[0], [hs[0]])
    expect = [reference.step(cell.config, x, h, *cell.get_weights()) for x, h in zip(xs, hs)]
    errors = []
    barrier = threading.Barrier(8)

    def work(i):
        barrier.wait()
        for _ in range(300):
            out, _ = cell(xs[i], [hs[i]])
            if not np.allclose(out, expect[i], atol=2e-6):
                errors.append(i)
                return

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


def test_soak_million_steps_no_leak():
    cell = tvm_gru.GRUCell(8, seed=0)
    x = np.ones((1, 4), np.float32)
    h = np.zeros((1, 8), np.float32)
    for _ in range(10_000):  # warm up allocator pools and caches
        out, [h] = cell(x, [h])
    rss0, fds0 = _rss_kb(), len(os.listdir("/proc/self/fd"))
    for _ in range(1_000_000):
        out, [h] = cell(x, [h])
    growth_kb = _rss_kb() - rss0
    assert growth_kb < 5 * 1024, f"resident memory grew by {growth_kb} KB over a million steps"
    assert len(os.listdir("/proc/self/fd")) <= fds0
    assert np.isfinite(h).all()


def _stream_sizes(frames: int):
    """Call sizes of the streaming soak: one frame per call for the first half, then small chunks."""
    chunks = (1, 2, 3, 5, 8, 13, 4, 1, 1, 2)
    done, k = 0, 0
    while done < frames:
        n = 1 if done < frames // 2 else min(chunks[k % len(chunks)], frames - done)
        k += 1
        yield done, n
        done += n


def test_streaming_soak_stateful_layer_no_leak_and_same_state():
    """A million frames through a stateful GRU layer, one frame (then small chunks) per call: resident memory and
    open files stay flat, and the streamed states equal one whole-sequence call on the same frames."""
    import time

    import psutil

    units, dim, frames = 16, 8, 1_000_000
    layer = tvm_gru.GRU(units, stateful=True, return_sequences=True, seed=0, bias_initializer="random_uniform")
    xs = np.random.default_rng(1).uniform(-1, 1, (1, frames, dim)).astype(np.float32)
    for start, n in _stream_sizes(5_000):  # warm up: compile (one-frame and chunk kernels), allocator pools
        layer(xs[:, start:start + n])
    layer.reset_states()
    proc = psutil.Process()
    rss0, fds0 = proc.memory_info().rss, proc.num_fds()
    checkpoints, calls = {}, 0
    t0 = time.perf_counter()
    for start, n in _stream_sizes(frames):
        out = layer(xs[:, start:start + n])
        calls += 1
        if (start + n) // 100_000 != start // 100_000:  # a state every 100k frames, compared below
            checkpoints[start + n] = out[:, -1].copy()
    seconds = time.perf_counter() - t0
    growth = proc.memory_info().rss - rss0
    fds = proc.num_fds()
    final = layer.states[0]
    print(f"streaming soak: {frames} frames in {calls} calls, {seconds:.2f} s "
          f"({seconds / calls * 1e6:.1f} us/call), RSS growth {growth / 1024:.0f} KB, fds {fds0} -> {fds}")
    assert growth < 5 * 2**20, f"resident memory grew by {growth / 1024:.0f} KB over {frames} streamed frames"
    assert fds <= fds0
    assert np.isfinite(final).all() and np.abs(final).max() > 1e-3

    whole = tvm_gru.GRU(units, return_sequences=True)
    whole.set_weights(layer.get_weights())
    seq = whole(xs)  # one compiled call over all the frames
    np.testing.assert_allclose(final, seq[:, -1], rtol=0, atol=1e-6)
    for end, state in checkpoints.items():
        np.testing.assert_allclose(state, seq[:, end - 1], rtol=0, atol=1e-6, err_msg=f"frame {end}")
    assert len(checkpoints) == frames // 100_000

    # A short window exactly: 64 one-frame calls == one call on the 64-frame prefix == the numpy reference.
    layer.reset_states()
    streamed = np.concatenate([layer(xs[:, t:t + 1]) for t in range(64)], axis=1)
    np.testing.assert_array_equal(streamed, seq[:, :64])
    np.testing.assert_array_equal(layer.states[0], whole(xs[:, :64])[:, -1])
    ref = reference.sequence(layer.cell.config, xs[:, :64].transpose(1, 0, 2), np.zeros((1, units)),
                             *layer.get_weights())
    np.testing.assert_allclose(streamed[0], ref[:, 0], rtol=0, atol=tolerance("float32", ref))


# Keep the compiled-kernel count bounded: few distinct shapes, many configs.
_ACTS = activations.names()
_SAFE = [a for a in _ACTS if a not in ("exponential", "linear", "relu", "relu6", "leaky_relu", "elu", "selu",
                                       "softplus", "gelu", "swish", "silu", "mish")]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(activation=st.sampled_from(_ACTS), recurrent_activation=st.sampled_from(_SAFE),
       reset_after=st.booleans(), implementation=st.sampled_from([1, 2]), use_bias=st.booleans(),
       dtype=st.sampled_from(["float32", "float64"]), batch=st.sampled_from([1, 3]),
       input_dim=st.sampled_from([1, 5]), units=st.sampled_from([3, 8, 17]), seed=st.integers(0, 2**16))
def test_property_matches_reference(activation, recurrent_activation, reset_after, implementation, use_bias, dtype,
                                    batch, input_dim, units, seed):
    cell = tvm_gru.GRUCell(units, activation=activation, recurrent_activation=recurrent_activation,
                           reset_after=reset_after, implementation=implementation, use_bias=use_bias, dtype=dtype,
                           bias_initializer="random_uniform", seed=seed)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (batch, input_dim)).astype(dtype)
    h = rng.uniform(-1, 1, (batch, units)).astype(dtype)
    out, _ = cell(x, [h])
    ref = reference.step(cell.config, x, h, *cell.get_weights())
    np.testing.assert_allclose(out, ref, rtol=0, atol=tolerance(dtype, ref))


def test_two_processes_fill_the_compile_cache_at_once(tmp_path):
    import subprocess
    import sys

    script = ("import numpy as np, tvm_gru\n"
              "cell = tvm_gru.GRUCell(19, seed=0)\n"
              "out, _ = cell(np.ones((3, 2), 'float32'), [np.zeros((3, 19), 'float32')])\n"
              "print(repr(out.sum()))\n")
    env = {**os.environ, "TVM_GRU_CACHE_DIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs[0] == outs[1] and outs[0].strip()
    (entry,) = tmp_path.glob("step-*.so")  # one entry: the library and its record, no leftover temporary files
    assert sorted(p.name for p in tmp_path.iterdir()) == [entry.stem + ".json", entry.name]
