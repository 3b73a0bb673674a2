"""``gate_panels``: the sequence kernel's tile-major copy of the recurrent weights (the aarch64 default), run here on
the host (the emitter is the same for every CPU) against the float64 Keras RNN oracle.

Units not a multiple of the SIMD width, a unit tail tile per part, one and two parts, both reset_after, and
calls below and above the copy's minimum length (in place, then from the panels).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_weights, tolerance

from tvm_gru.build.sequence import compile_sequence
from tvm_gru.ops.config import GRUConfig
from tvm_gru.ops.reference import keras_rnn
from tvm_gru.ops.sequence import SequenceSpec, pack_sequence_weights
from tvm_gru.schedules.sequence_rules import SequenceSchedule


def run(spec, schedule, steps, seed):
    """(sequence (T, B, H), final state) of the compiled kernel, and the oracle's."""
    rng = np.random.default_rng(seed)
    cfg = spec.config
    k, r, b = random_weights(cfg, spec.input_dim, rng)
    xs = rng.uniform(-1.5, 1.5, (steps, spec.batch, spec.input_dim)).astype(cfg.dtype)
    h0 = rng.uniform(-1, 1, (spec.batch, cfg.units)).astype(cfg.dtype)
    fn = compile_sequence(spec, schedule=schedule)
    seq = np.full((spec.batch, steps, cfg.units), np.nan, cfg.dtype)
    last, state = (np.full((spec.batch, cfg.units), np.nan, cfg.dtype) for _ in range(2))
    fn(np.ascontiguousarray(xs.transpose(1, 0, 2)), h0, *pack_sequence_weights(cfg, k, r, b, spec.lanes).values(),
       seq, last, state, 0)
    outs, final = keras_rnn(cfg, xs, h0, k, r, b)
    return (seq.transpose(1, 0, 2), state), (outs, final)


@pytest.mark.parametrize("reset_after", [False, True], ids=["ra0", "ra1"])
@pytest.mark.parametrize("threads", [1, 2], ids=["serial", "two_parts"])
@pytest.mark.parametrize("steps", [3, 11])  # in place below the minimum length (8), from the panels above it
def test_gate_panels_match_the_oracle(reset_after, threads, steps):
    # H=44: 6 blocks of 8 (4 padded lanes); 3 blocks per part with unit_blocks=2 leave a tail tile of one block
    spec = SequenceSpec(GRUConfig(units=44, reset_after=reset_after), batch=3, input_dim=7)
    sched = SequenceSchedule(threads=threads, gemm_rows=4, batch_tile=2, unit_blocks=2, candidate_blocks=2,
                             gate_panels=True)
    (seq, state), (outs, final) = run(spec, sched, steps, seed=steps + threads)
    np.testing.assert_allclose(seq, outs, rtol=0, atol=tolerance("float32", outs))
    np.testing.assert_allclose(state, final, rtol=0, atol=tolerance("float32", final))
