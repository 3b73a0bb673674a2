"""The whole-sequence kernel (tvm_gru.ops.sequence + schedules/sequence_rules.py and sequence_emitter.py) against
the float64 Keras RNN oracle.

Shapes are small but exercise every edge of the schedule: units not a multiple of the SIMD width (padded
lanes), unit and batch tails of the register tiles, one and two parts (the two-thread code path with its
per-step barrier), masks, go_backwards, time-major and batch-major layouts, dropout masks, float64.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_weights, tolerance

from tvm_gru import targets
from tvm_gru.build.sequence import compile_sequence
from tvm_gru.ops.config import GRUConfig
from tvm_gru.ops.reference import keras_rnn
from tvm_gru.ops.sequence import SequenceSpec, pack_sequence_weights, padded_recurrent_mask
from tvm_gru.schedules.sequence_rules import CPUSequenceRule, SequenceSchedule


def _run(spec, schedule, *, steps, reverse=False, seed=0, mask=None, input_masks=None, recurrent_masks=None):
    """Compile and run one kernel; returns (got sequence (T,B,H) or None, last, state, expected outs, state)."""
    rng = np.random.default_rng(seed)
    cfg = spec.config
    dt, B, I, H = cfg.dtype, spec.batch, spec.input_dim, cfg.units
    k, r, b = random_weights(cfg, I, rng)
    xs = rng.uniform(-1.5, 1.5, (steps, B, I)).astype(dt)
    h0 = rng.uniform(-1, 1, (B, H)).astype(dt)
    fn = compile_sequence(spec, schedule=schedule)
    packed = pack_sequence_weights(cfg, k, r, b, spec.lanes)
    x = xs if spec.time_major else np.ascontiguousarray(xs.transpose(1, 0, 2))
    args = [x, h0]
    if spec.masked:
        args.append(np.ascontiguousarray(mask if spec.time_major else mask.T).astype(np.uint8))
    args += list(packed.values())
    if spec.input_masks:
        args.append(input_masks)
    if spec.recurrent_masks:
        args.append(padded_recurrent_mask(recurrent_masks, spec.lanes))
    seq = np.full((steps, B, H) if spec.time_major else (B, steps, H), np.nan, dt) if spec.return_sequences else None
    last, state = np.full((B, H), np.nan, dt), np.full((B, H), np.nan, dt)
    fn(*args, *([seq] if seq is not None else []), last, state, int(reverse))
    outs, final = keras_rnn(cfg, xs, h0, k, r, b, mask=mask, zero_output_for_mask=spec.zero_output_for_mask,
                            go_backwards=reverse, input_masks=input_masks, recurrent_masks=recurrent_masks)
    if seq is not None and not spec.time_major:
        seq = seq.transpose(1, 0, 2)
    return seq, last, state, outs, final


def _check(got, expected, dtype):
    np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance(dtype, expected))


@pytest.mark.parametrize("reset_after", [False, True], ids=["ra0", "ra1"])
@pytest.mark.parametrize("threads, spin", [(1, True), (2, True), (2, False)],
                         ids=["serial", "two_parts", "two_parts_tvm_barrier"])
def test_matches_reference_with_tails(reset_after, threads, spin):
    # H=20: 3 blocks of 8 (4 padded lanes); unit_blocks=2 leaves a tail tile; batch 3 with batch_tile 2 too.
    spec = SequenceSpec(GRUConfig(units=20, reset_after=reset_after), batch=3, input_dim=5)
    sched = SequenceSchedule(threads=threads, gemm_rows=4, batch_tile=2, unit_blocks=2, candidate_blocks=2,
                             spin_barrier=spin)
    seq, last, state, outs, final = _run(spec, sched, steps=7)
    _check(seq, outs, "float32")
    _check(last, outs[-1], "float32")
    _check(state, final, "float32")


@pytest.mark.parametrize("steps", [1, 2, 9, 61])  # 61 x 3 rows: two GEMM row chunks and a row tail
def test_any_length_one_kernel(steps):
    spec = SequenceSpec(GRUConfig(units=20, reset_after=True), batch=3, input_dim=5)
    sched = SequenceSchedule(threads=2, gemm_rows=4, batch_tile=2, unit_blocks=2, candidate_blocks=2)
    seq, last, state, outs, final = _run(spec, sched, steps=steps, reverse=True, seed=steps)
    _check(seq, outs, "float32")
    _check(state, final, "float32")


@pytest.mark.parametrize("steps", [1, 3, 4, 5, 8, 11, 21])  # < MR, = MR, partial last group, several groups
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "go_backwards"])
def test_input_projection_in_barrier(steps, reverse):
    # Batch 1, two parts, the projection deferred into the barrier waits: only steps < MR up front, the rest
    # one group ahead (H=37: 5 blocks split 2/3, so the per-iteration block slices are uneven and some empty).
    spec = SequenceSpec(GRUConfig(units=37), batch=1, input_dim=6)
    sched = SequenceSchedule(threads=2, gemm_rows=4, batch_tile=1, unit_blocks=2, candidate_blocks=2,
                             gemm_in_barrier=True)
    seq, last, state, outs, final = _run(spec, sched, steps=steps, reverse=reverse, seed=steps)
    _check(seq, outs, "float32")
    _check(last, outs[-1], "float32")
    _check(state, final, "float32")


@pytest.mark.parametrize("time_major", [False, True], ids=["batch_major", "time_major"])
def test_input_projection_in_barrier_masked_dropout(time_major):
    rng = np.random.default_rng(11)
    mask = rng.random((9, 1)) > 0.3
    input_masks = (rng.random((3, 1, 5)) > 0.3).astype("float32") / 0.7
    spec = SequenceSpec(GRUConfig(units=20, dropout=0.3), batch=1, input_dim=5, time_major=time_major, masked=True,
                        input_masks=3)
    sched = SequenceSchedule(threads=2, gemm_rows=4, batch_tile=1, unit_blocks=2, candidate_blocks=2,
                             gemm_in_barrier=True)
    for reverse in (False, True):
        seq, last, state, outs, final = _run(spec, sched, steps=9, reverse=reverse, mask=mask,
                                             input_masks=input_masks)
        _check(seq, outs, "float32")
        _check(state, final, "float32")


@pytest.mark.parametrize("steps", [3, 7, 8, 13])  # in place below _PANEL_MIN_STEPS (8), block-major copies from it
@pytest.mark.parametrize("threads", [1, 2], ids=["serial", "two_parts"])
def test_candidate_panels(steps, threads):
    # H=44: 6 blocks (4 padded lanes), each part copying its own rows of R_h (24 and 20: the last block padded); batch 5
    # over tiles of 2 (a one-row tail); masks and go_backwards on the copied weights too.
    rng = np.random.default_rng(steps)
    mask = rng.random((steps, 5)) > 0.2
    spec = SequenceSpec(GRUConfig(units=44), batch=5, input_dim=5, masked=True)
    sched = SequenceSchedule(threads=threads, gemm_rows=4, batch_tile=2, unit_blocks=2, candidate_blocks=4,
                             candidate_panels=True)
    for reverse in (False, True):
        seq, last, state, outs, final = _run(spec, sched, steps=steps, reverse=reverse, seed=steps, mask=mask)
        _check(seq, outs, "float32")
        _check(last, outs[-1], "float32")
        _check(state, final, "float32")


@pytest.mark.parametrize("reset_after", [False, True], ids=["ra0", "ra1"])
@pytest.mark.parametrize("zero_output", [False, True], ids=["repeat_output", "zero_output"])
def test_mask_reverse_time_major(reset_after, zero_output):
    spec = SequenceSpec(GRUConfig(units=11, reset_after=reset_after), batch=3, input_dim=4, time_major=True,
                        masked=True, zero_output_for_mask=zero_output)
    sched = SequenceSchedule(threads=2, gemm_rows=4, batch_tile=2, unit_blocks=1, candidate_blocks=1)
    mask = np.array([[0, 1, 0], [1, 1, 0], [0, 1, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0]], bool)
    for reverse in (False, True):
        seq, last, state, outs, final = _run(spec, sched, steps=6, reverse=reverse, mask=mask)
        _check(seq, outs, "float32")
        _check(last, outs[-1], "float32")
        _check(state, final, "float32")  # batch row 2 is fully masked: h0 comes back


@pytest.mark.parametrize("reset_after", [False, True], ids=["ra0", "ra1"])
def test_dropout_masks(reset_after):
    rng = np.random.default_rng(5)
    B, I, H = 2, 5, 9
    input_masks = (rng.random((3, B, I)) > 0.3).astype("float32") / 0.7
    recurrent_masks = (rng.random((3, B, H)) > 0.4).astype("float32") / 0.6
    spec = SequenceSpec(GRUConfig(units=H, reset_after=reset_after, dropout=0.3, recurrent_dropout=0.4), batch=B,
                        input_dim=I, input_masks=3, recurrent_masks=3, return_sequences=False)
    sched = SequenceSchedule(threads=1, gemm_rows=4, batch_tile=2, unit_blocks=2, candidate_blocks=2)
    _, last, state, outs, final = _run(spec, sched, steps=5, input_masks=input_masks,
                                       recurrent_masks=recurrent_masks)
    _check(last, outs[-1], "float32")
    _check(state, final, "float32")


def test_float64():
    spec = SequenceSpec(GRUConfig(units=6, recurrent_activation="sigmoid", dtype="float64"), batch=2, input_dim=3,
                        lanes=targets.lanes(targets.resolve(None), "float64"))
    seq, last, state, outs, final = _run(spec, None, steps=4)
    _check(seq, outs, "float64")
    _check(state, final, "float64")


@pytest.mark.parametrize("shape", [(1, 64, 128), (1, 256, 256), (8, 256, 256), (64, 256, 256)],
                         ids=lambda s: "x".join(map(str, s)))
def test_default_schedule_fits_registers(shape):
    batch, input_dim, units = shape
    rule = CPUSequenceRule()
    target = targets.resolve({"name": "x86", "num-cores": 2})
    for reset_after in (False, True):
        spec = SequenceSpec(GRUConfig(units=units, reset_after=reset_after), batch=batch, input_dim=input_dim)
        sched = rule.default_schedule(spec, target)
        # accumulators + the vectors a tile keeps live (rows or weights, the fewer) + one operand <= 16 ymm
        for blocks, gates in ((sched.unit_blocks, 3 if reset_after else 2), (sched.candidate_blocks, 1)):
            accumulators = sched.batch_tile * blocks * gates
            assert accumulators <= rule.max_accumulators
            assert accumulators + min(sched.batch_tile, blocks * gates) + 1 <= 16
        assert 1 <= sched.threads <= 2
        # the projection moves into the barrier waits only at batch 1 with small input weights per core
        assert sched.gemm_in_barrier == (shape == (1, 64, 128) and not reset_after)
        # R_h is copied block-major when several batch tiles re-read it (reset_after=False only)
        assert sched.candidate_panels == (batch > sched.batch_tile and not reset_after)
