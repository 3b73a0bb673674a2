"""``weight_dtype`` in the whole-sequence kernel: ``tvm_gru.GRU(..., weight_dtype="float16" / "int8")``,
``Bidirectional``, their artifacts, the CLI, and whole models (``Model.from_onnx/from_torch/from_keras(...,
weight_dtype=)``).

The yardsticks of the step kernel's tests (test_weight_dtype.py, test_weight_int8.py), per step of a sequence:

* against the float64 Keras RNN oracle on the weights the kernel multiplies by (float16-rounded, int8-dequantized),
  to float32 rounding;
* against float32 storage within the documented bound of one step (float16: 2^-11 (|x||K| + |h||R|); int8:
  :func:`tvm_gru.runtime.packing.int8_error_bound`), each step taken from the layer's own previous output, so
  the bound does not compound over time (the error itself may: README, "What is exact").
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import tvm_gru
from tvm_gru import GRUConfig
from tvm_gru.ops import reference
from tvm_gru.ops.reference import keras_rnn
from tvm_gru.ops.sequence import SequenceSpec, pack_sequence_weights
from tvm_gru.runtime.artifact import METADATA, ArtifactError, load
from tvm_gru.runtime.packing import dequantize_int8, pack_weights, quantize_int8

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parent))
from conftest import gru_gemm_softmax_onnx  # noqa: E402
from test_weight_dtype import _rounding_window  # noqa: E402  (float16: one step's window against float32 storage)
from test_weight_int8 import _output_bound  # noqa: E402  (int8: one step's bound against float32 storage)

NARROW = ("float16", "int8")


# ------------------------------------------------------------------------------------ helpers
def _weights(units, input_dim, seed, reset_after=False, use_bias=True):
    """Keras weights, scaled like glorot, with biases in [-0.5, 0.5] (the bound helpers assume |rb_h| <= 0.5)."""
    rng = np.random.default_rng(seed)
    scale = min(0.6, 2.0 / np.sqrt(units + input_dim))
    out = [rng.uniform(-scale, scale, (input_dim, 3 * units)).astype(np.float32),
           rng.uniform(-scale, scale, (units, 3 * units)).astype(np.float32)]
    if use_bias:
        out.append(rng.uniform(-0.5, 0.5, (2, 3 * units) if reset_after else (3 * units,)).astype(np.float32))
    return out


def _layer(units=40, input_dim=24, weight_dtype=None, seed=0, **kwargs):
    layer = tvm_gru.GRU(units, seed=seed, weight_dtype=weight_dtype, **kwargs)
    layer.set_weights(_weights(units, input_dim, seed, layer.reset_after, layer.use_bias))
    return layer


def _stored(weights, weight_dtype):
    """The Keras weights a kernel with ``weight_dtype`` storage multiplies by (float32 up to where int8 scales)."""
    if weight_dtype == "float16":
        return [w.astype(np.float16).astype(np.float32) for w in weights[:2]] + list(weights[2:])
    if weight_dtype == "int8":
        return [dequantize_int8(*quantize_int8(w)) for w in weights[:2]] + list(weights[2:])
    return list(weights)


def _oracle(layer, weights, x, h0=None, mask=None):
    """(outputs as the layer returns them, final state) in float64, for ``x`` / ``mask`` in the layer's layout."""
    tm = layer.time_major
    xs = np.asarray(x, np.float64) if tm else np.asarray(x, np.float64).transpose(1, 0, 2)
    h0 = np.zeros((xs.shape[1], layer.units)) if h0 is None else h0
    if mask is not None and not tm:
        mask = mask.T
    outs, state = keras_rnn(layer.cell.config, xs, h0, *weights, mask=mask,
                            zero_output_for_mask=layer.zero_output_for_mask, go_backwards=layer.go_backwards)
    if layer.return_sequences:
        return (outs if tm else outs.transpose(1, 0, 2)), state
    return outs[-1], state


def _rounding(ref) -> float:
    """float32 rounding of a few steps (the kernel scales int8 after the sum, the oracle before each product)."""
    return 1e-5 * max(1.0, float(np.max(np.abs(ref))))


def _inputs(batch, steps, input_dim, units, seed):
    rng = np.random.default_rng(seed)
    return (rng.uniform(-1, 1, (batch, steps, input_dim)).astype(np.float32),
            rng.uniform(-1, 1, (batch, units)).astype(np.float32))


def _per_step_against_float32(layer, weights, x, h0, seq, weight_dtype) -> tuple:
    """(largest move, largest allowed move) of each step's output against float32 storage, from the layer's own
    previous output: ``seq`` (B, T, H) the outputs of a return_sequences call on ``x`` (B, T, I) from ``h0``."""
    moved = allowed = low = 0.0
    prev = h0
    for t in range(x.shape[1]):
        ref32 = reference.step(layer.cell.config, x[:, t], prev, *weights)
        moved_t = float(np.max(np.abs(seq[:, t] - ref32)))
        if weight_dtype == "int8":
            high_t = _output_bound(weights, x[:, t], prev, ref32)
        else:
            low_t, high_t = _rounding_window(weights, x[:, t], prev)
            low = max(low, low_t)
        assert moved_t <= high_t + _rounding(ref32), f"step {t}: moved {moved_t:.3e} > bound {high_t:.3e}"
        moved, allowed, prev = max(moved, moved_t), max(allowed, high_t), seq[:, t]
    return moved, allowed, low


# ------------------------------------------------------------------------------------ the spec and its weights
def test_spec_key_and_parameters():
    cfg = GRUConfig(64)
    plain = SequenceSpec(cfg, batch=1, input_dim=32)
    # the float32 key is the one tuning records and compile caches were filed under before weight_dtype existed
    assert plain.key() == "seq-H64-I32-B1-float32-tanh-hard_sigmoid-bias1-ra0-V8-tm0-m00-rs1-mx0-mh0"
    spelled = SequenceSpec(cfg, batch=1, input_dim=32, weight_dtype="float32")
    assert spelled == plain and spelled.key() == plain.key() and plain.storage_dtype == "float32"
    for wdt in NARROW:
        spec = SequenceSpec(cfg, batch=1, input_dim=32, weight_dtype=np.dtype(wdt))
        assert spec.key() == plain.key() + f"-w{wdt}" and spec.storage_dtype == wdt
        specs = {name: (tuple(shape), dtype) for name, (shape, dtype) in spec.weight_specs().items()}
        assert specs == {"kernel_packed": ((8, 32, 3, 8), wdt), "recurrent_packed": ((8, 64, 2, 8), wdt),
                         "candidate_packed": ((64, 8, 8), wdt), "bias_packed": ((2, 3, 64), "float32"),
                         **({"weight_scale": ((2, 3, 64), "float32")} if wdt == "int8" else {})}
        assert list(spec.weight_shapes()) == list(specs)
    with pytest.raises(ValueError, match=r"`weight_dtype` must be None or one of \('float64',\) for a float64 cell, "
                                         r"received 'int8'"):
        SequenceSpec(GRUConfig(8, dtype="float64"), batch=1, input_dim=4, weight_dtype="int8")
    with pytest.raises(ValueError, match=r"`weight_dtype` must be None or one of .* received 'int4'"):
        SequenceSpec(cfg, batch=1, input_dim=4, weight_dtype="int4")


@pytest.mark.parametrize("reset_after", [False, True], ids=["ra0", "ra1"])
def test_packed_weights_reuse_the_step_quantization(reset_after):
    cfg = GRUConfig(12, reset_after=reset_after)
    weights = _weights(12, 5, seed=3, reset_after=reset_after)
    packed = pack_sequence_weights(cfg, *weights, lanes=8, weight_dtype="int8")
    names = ["kernel_packed", "recurrent_packed"] + ([] if reset_after else ["candidate_packed"])
    assert list(packed) == names + ["bias_packed", "weight_scale"]
    assert {n: str(packed[n].dtype) for n in packed} == {**dict.fromkeys(names, "int8"), "bias_packed": "float32",
                                                         "weight_scale": "float32"}
    # the same scales, in the same layout, as the step kernel's packer: one quantization for both kernels
    np.testing.assert_array_equal(packed["weight_scale"], pack_weights(cfg, *weights, 8, "int8")["weight_scale"])
    q_k, s_k = quantize_int8(weights[0])
    q_r, _ = quantize_int8(weights[1])
    np.testing.assert_array_equal(packed["weight_scale"][0, :, :12].reshape(-1), s_k)
    np.testing.assert_array_equal(packed["kernel_packed"][0, :, 0, :], q_k[:, :8])  # block 0, gate z
    if not reset_after:  # R_h rows, the candidate's quantized recurrent columns, zero-padded
        np.testing.assert_array_equal(packed["candidate_packed"].reshape(12, -1)[:, :12], q_r[:, 24:])
        assert not packed["candidate_packed"].reshape(12, -1)[:, 12:].any()
    half = pack_sequence_weights(cfg, *weights, lanes=8, weight_dtype="float16")
    assert "weight_scale" not in half and str(half["recurrent_packed"].dtype) == "float16"
    np.testing.assert_array_equal(half["kernel_packed"][1, :, 2, :4], weights[0][:, 32:36].astype(np.float16))


def test_unstorable_weights_are_refused_naming_the_matrix(tmp_path):
    layer = _layer(8, 4, weight_dtype="int8", seed=1)
    before = layer.get_weights()
    bad = [w.copy() for w in before]
    bad[0][3, 7] = np.inf
    with pytest.raises(ValueError, match=r"int8'.*the kernel holds inf at \[3, 7\]; int8 storage needs finite"):
        layer.set_weights(bad)
    for got, want in zip(layer.get_weights(), before):  # nothing changed
        np.testing.assert_array_equal(got, want)
    full = _layer(8, 4, seed=1)
    bad[0][3, 7] = 1e6  # finite, but beyond float16
    full.set_weights(bad)
    with pytest.raises(ValueError, match=r"float16'.*kernel holds 1e\+06, beyond the largest float16"):
        full.export(tmp_path / "f16", weight_dtype="float16")
    assert not (tmp_path / "f16").exists()  # refused before anything was compiled or written
    bad[0][3, 7] = np.nan
    full.set_weights(bad)
    with pytest.raises(ValueError, match=r"kernel holds nan at \[3, 7\]"):
        tvm_gru.Bidirectional(tvm_gru.GRU(8, seed=1), weights=bad + bad).export(tmp_path / "bi", weight_dtype="int8")


# ------------------------------------------------------------------------------------ the layer API
def test_layer_argument_config_and_copies():
    layer = tvm_gru.GRU(8, weight_dtype="int8", return_sequences=True)
    assert layer.weight_dtype == "int8" and layer.cell.weight_dtype == "int8"
    cfg = layer.get_config()
    assert cfg["weight_dtype"] == "int8" and cfg["dtype"] == "float32"
    assert tvm_gru.GRU.from_config(cfg).weight_dtype == "int8"
    assert tvm_gru.GRU.from_config({"class_name": "GRU", "config": cfg}).weight_dtype == "int8"
    assert "weight_dtype='int8'" in repr(layer)
    assert "weight_dtype" not in tvm_gru.GRU(8).get_config() and "weight_dtype" not in repr(tvm_gru.GRU(8))
    assert tvm_gru.GRU(8, weight_dtype="float32").weight_dtype == "float32"
    layer.build((1, 3, 5))
    copy = pickle.loads(pickle.dumps(layer))
    assert copy.weight_dtype == "int8"
    wrapper = tvm_gru.Bidirectional(tvm_gru.GRU(8, weight_dtype="float16"))
    assert wrapper.forward_layer.weight_dtype == wrapper.backward_layer.weight_dtype == "float16"
    again = tvm_gru.Bidirectional.from_config(wrapper.get_config())
    assert again.forward_layer.weight_dtype == again.backward_layer.weight_dtype == "float16"
    for bad, dtype in (("int8", "float64"), ("uint8", "float32"), (8, "float32")):
        with pytest.raises(ValueError, match=rf"`weight_dtype` must be None or one of .* for a {dtype} cell, "
                                             rf"received {bad!r}"):
            tvm_gru.GRU(8, dtype=dtype, weight_dtype=bad)


# ------------------------------------------------------------------------------------ numerics on this CPU
@pytest.mark.parametrize("reset_after", [False, True], ids=["ra0", "ra1"])
@pytest.mark.parametrize("weight_dtype", NARROW)
def test_layer_matches_stored_weights_and_stays_near_float32(weight_dtype, reset_after):
    kwargs = dict(reset_after=reset_after, recurrent_activation="sigmoid" if reset_after else "hard_sigmoid",
                  return_sequences=True)
    layer = _layer(weight_dtype=weight_dtype, seed=2 + reset_after, **kwargs)
    weights = layer.get_weights()
    stored = _stored(weights, weight_dtype)
    assert not np.array_equal(stored[1], weights[1])  # get_weights keeps the float32 values as set

    x, h0 = _inputs(1, 12, 24, 40, seed=5)  # batch 1, an initial state
    seq = layer(x, initial_state=[h0])
    assert seq.dtype == np.float32 and seq.shape == (1, 12, 40)
    ref, _ = _oracle(layer, stored, x, h0)
    err = float(np.max(np.abs(seq - ref)))
    assert err <= _rounding(ref), f"{err:.3e} against the oracle on the stored weights"
    moved, allowed, low = _per_step_against_float32(layer, weights, x, h0, seq, weight_dtype)
    # the narrow weights (not a silent float32 copy), moving each step by rounding / quantization only
    assert max(low, 20 * err) < moved <= allowed, (moved, allowed, low, err)

    x, h0 = _inputs(3, 9, 24, 40, seed=6)  # batch 3, a mask with holes and an empty row
    mask = np.arange(9)[None, :] < np.array([9, 4, 0])[:, None]
    mask[0, 2] = False
    seq = layer(x, mask=mask, initial_state=[h0])
    ref, _ = _oracle(layer, stored, x, h0, mask)
    assert float(np.max(np.abs(seq - ref))) <= _rounding(ref)


def test_int8_last_output_state_backwards_time_major():
    layer = _layer(20, 7, weight_dtype="int8", seed=7, return_state=True, go_backwards=True, time_major=True,
                   use_bias=False, zero_output_for_mask=True)
    stored = _stored(layer.get_weights(), "int8")
    rng = np.random.default_rng(8)
    x = rng.uniform(-1, 1, (10, 2, 7)).astype(np.float32)
    mask = np.ones((10, 2), bool)
    mask[6:, 1] = False
    for kwargs in ({}, {"mask": mask}):
        out, state = layer(x, **kwargs)
        ref, ref_state = _oracle(layer, stored, x, mask=kwargs.get("mask"))
        assert out.shape == (2, 20) and state.shape == (2, 20)
        assert float(np.max(np.abs(out - ref))) <= _rounding(ref)
        assert float(np.max(np.abs(state - ref_state))) <= _rounding(ref_state)


@pytest.fixture
def frames_on_step(monkeypatch):
    """Make every stateful layer run single streamed frames on the cell's step kernel (the rule does so from 2 MB
    of weights per core; tiny layers keep the tests fast)."""
    from tvm_gru.schedules.sequence_rules import CPUSequenceRule  # noqa: PLC0415

    monkeypatch.setattr(CPUSequenceRule, "frame_step_min_bytes", 0)


def test_int8_stateful_stream_and_frames(frames_on_step):
    """Chunks of a stream (the sequence kernel) and single frames (the cell's int8 step kernel, same weights and
    scales) continue each other's state and equal one call on the whole sequence."""
    layer = _layer(24, 8, weight_dtype="int8", seed=9, stateful=True)
    stored = _stored(layer.get_weights(), "int8")
    x = np.random.default_rng(10).uniform(-1, 1, (2, 14, 8)).astype(np.float32)
    outs = []
    edges = [0, 1, 2, 5, 6, 14]
    for a, b in zip(edges[:-1], edges[1:]):
        outs.append(layer(np.ascontiguousarray(x[:, a:b])))
    assert any(r.frames_on_step for r in layer._runners.values())  # noqa: SLF001  (frames ran the step kernel)
    ref, ref_state = _oracle(layer, stored, x)
    assert float(np.max(np.abs(outs[-1] - ref))) <= _rounding(ref)
    assert float(np.max(np.abs(layer.states[0] - ref_state))) <= _rounding(ref_state)


@pytest.mark.parametrize("mcpu", ["haswell", "znver4"], ids=["avx2", "avx512"])
def test_int8_layer_on_both_x86_vector_widths(mcpu):
    """AVX2 (V=8) and AVX-512 (V=16) kernels compute the same numbers (the AVX-512 one runs only on such a CPU)."""
    from tvm_gru import targets  # noqa: PLC0415

    target = targets.resolve({"name": "x86", "mcpu": mcpu})
    if mcpu == "znver4" and targets.lanes(targets.resolve(None), "float32") < 16:
        pytest.skip("this CPU has no AVX-512")
    layer = _layer(19, 6, weight_dtype="int8", seed=11, target=target, return_sequences=True, reset_after=True)
    assert layer.cell.lanes == (8 if mcpu == "haswell" else 16)
    x, h0 = _inputs(2, 7, 6, 19, seed=12)
    seq = layer(x, initial_state=[h0])
    ref, _ = _oracle(layer, _stored(layer.get_weights(), "int8"), x, h0)
    assert float(np.max(np.abs(seq - ref))) <= _rounding(ref)


def test_x86_sequence_kernel_widens_int8_vectors():
    """The GEMM and recurrent inner loops sign-extend and convert each int8 weight vector (vpmovsxbd + vcvtdq2ps)
    before its FMA; no scalar widening."""
    import re  # noqa: PLC0415

    import tvm  # noqa: PLC0415
    from test_weight_int8 import _loop_bodies  # noqa: PLC0415

    from tvm_gru import targets  # noqa: PLC0415
    from tvm_gru.build.sequence import compile_sequence_module, scheduled_sequence  # noqa: PLC0415

    target = targets.resolve({"name": "x86", "mcpu": "haswell"})
    spec = SequenceSpec(GRUConfig(64), batch=1, input_dim=32, lanes=8, weight_dtype="int8")
    with target:
        asm = compile_sequence_module(scheduled_sequence(spec, target), target).mod.inspect_source("asm")
    loops = [b for b in _loop_bodies(asm) if "vpmovsxbd" in b]
    assert len(loops) >= 2  # the input projection and the recurrent products
    for body in loops:
        widen = re.findall(r"vpmovsxbd\s+[^\n]*%ymm", body)
        convert = re.findall(r"vcvtdq2ps\s+%ymm\d+, %ymm", body)
        assert widen and len(widen) == len(convert), (len(widen), len(convert))
        assert not re.search(r"vcvtsi2ss|movsb[lqw]|vpinsrb", body)
    del tvm


def _run_kernel(spec, schedule, weight_dtype, steps, seed):
    """(sequence (T, B, H), final state) of the kernel compiled with ``schedule``, and of the oracle on the stored
    weights; a whole call in one (the time extent is symbolic, so one kernel serves every ``steps``)."""
    from tvm_gru.build.sequence import compile_sequence  # noqa: PLC0415

    cfg = spec.config
    weights = _weights(cfg.units, spec.input_dim, seed, cfg.reset_after)
    fn = compile_sequence(spec, schedule=schedule)
    packed = pack_sequence_weights(cfg, *weights, lanes=spec.lanes, weight_dtype=weight_dtype)
    out = []
    for t in steps:
        rng = np.random.default_rng(seed + t)
        xs = rng.uniform(-1, 1, (t, spec.batch, spec.input_dim)).astype(np.float32)
        h0 = rng.uniform(-1, 1, (spec.batch, cfg.units)).astype(np.float32)
        seq = np.full((spec.batch, t, cfg.units), np.nan, np.float32)
        last, state = (np.full((spec.batch, cfg.units), np.nan, np.float32) for _ in range(2))
        fn(np.ascontiguousarray(xs.transpose(1, 0, 2)), h0, *packed.values(), seq, last, state, 0)
        outs, final = keras_rnn(cfg, xs, h0, *_stored(weights, weight_dtype))
        out.append(((seq.transpose(1, 0, 2), state), (outs, final)))
    return out


@pytest.mark.parametrize("reset_after", [False, True], ids=["ra0", "ra1"])
@pytest.mark.parametrize("weight_dtype", NARROW)
def test_every_copy_of_the_weights_keeps_their_storage(weight_dtype, reset_after):
    """Two parts, batch tiles, the narrow gate panels (tile-major copies, the aarch64 default) and candidate panels
    (block-major R_h), read in place below 8 steps and from the copies above; units not a multiple of V."""
    from tvm_gru.schedules.sequence_rules import SequenceSchedule  # noqa: PLC0415

    spec = SequenceSpec(GRUConfig(units=44, reset_after=reset_after), batch=3, input_dim=7,
                        weight_dtype=weight_dtype)
    sched = SequenceSchedule(threads=2, gemm_rows=4, batch_tile=2, unit_blocks=2, candidate_blocks=2,
                             gate_panels=True, candidate_panels=not reset_after)
    for (seq, state), (outs, final) in _run_kernel(spec, sched, weight_dtype, (3, 11), seed=24):
        assert float(np.max(np.abs(seq - outs))) <= _rounding(outs)
        assert float(np.max(np.abs(state - final))) <= _rounding(final)


@pytest.mark.parametrize("weight_dtype", NARROW)
def test_input_projection_in_the_barrier_waits(weight_dtype):
    """Batch 1, reset_after=False, two parts: the GEMM deferred into the spin barrier's waits, a partial last group."""
    from tvm_gru.schedules.sequence_rules import SequenceSchedule  # noqa: PLC0415

    spec = SequenceSpec(GRUConfig(units=40), batch=1, input_dim=9, weight_dtype=weight_dtype)
    sched = SequenceSchedule(threads=2, gemm_rows=4, batch_tile=1, unit_blocks=2, candidate_blocks=4,
                             gemm_in_barrier=True)
    for (seq, state), (outs, final) in _run_kernel(spec, sched, weight_dtype, (2, 13), seed=25):
        assert float(np.max(np.abs(seq - outs))) <= _rounding(outs)
        assert float(np.max(np.abs(state - final))) <= _rounding(final)


# ------------------------------------------------------------------------------------ Bidirectional
def test_bidirectional_int8_in_process_and_deployed(tmp_path):
    wrapper = tvm_gru.Bidirectional(tvm_gru.GRU(12, return_sequences=True, reset_after=True, weight_dtype="int8",
                                                seed=13))
    weights = _weights(12, 5, 13, reset_after=True) + _weights(12, 5, 14, reset_after=True)
    wrapper.set_weights(weights)
    x = np.random.default_rng(15).uniform(-1, 1, (2, 8, 5)).astype(np.float32)
    y = wrapper(x)
    fw, _ = _oracle(wrapper.forward_layer, _stored(weights[:3], "int8"), x)
    bw, _ = _oracle(wrapper.backward_layer, _stored(weights[3:], "int8"), x)
    ref = np.concatenate([fw, bw[:, ::-1]], axis=-1)
    assert y.shape == (2, 8, 24) and float(np.max(np.abs(y - ref))) <= _rounding(ref)

    path = wrapper.export(tmp_path / "bi8", batch=2)
    meta = json.loads((path / METADATA).read_text())
    assert meta["forward"]["weight_dtype"] == meta["backward"]["weight_dtype"] == "int8"
    assert meta["forward"]["kernel"]["functions"] == meta["backward"]["kernel"]["functions"]  # one set of kernels
    assert meta["forward"]["keras_config"]["weight_dtype"] == "int8"
    with np.load(path / "weights.npz") as data:
        assert str(data["backward.recurrent_packed"].dtype) == "int8" and "backward.weight_scale" in data.files
    deployed = load(path)
    assert deployed.forward_layer.weight_dtype == np.int8
    np.testing.assert_allclose(deployed(x), y, rtol=0, atol=1e-6)
    for got, want in zip(deployed.get_weights(), _stored(weights[:3], "int8") + _stored(weights[3:], "int8")):
        np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------------------------ layer artifacts
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    layer = _layer(20, 9, weight_dtype="int8", seed=16, return_sequences=True)
    path = layer.export(tmp_path_factory.mktemp("seq8") / "gru", batch=(1, 3))
    return layer, path


def test_layer_export_writes_int8_weights_and_scales(exported):
    layer, path = exported
    meta = json.loads((path / METADATA).read_text())
    assert meta["weight_dtype"] == "int8" and meta["dtype"] == "float32"
    assert meta["keras_config"]["weight_dtype"] == "int8"
    assert meta["kernel"]["weights"][-1] == "weight_scale" and meta["shapes"]["weight_scale"] == [2, 3, 24 if
                                                                                                  layer.cell.lanes == 8
                                                                                                  else 32]
    with np.load(path / "weights.npz") as data:
        dtypes = {k: str(data[k].dtype) for k in data.files}
    assert dtypes == {"kernel_packed": "int8", "recurrent_packed": "int8", "candidate_packed": "int8",
                      "bias_packed": "float32", "weight_scale": "float32"}


def test_load_int8_layer_matches_in_process(exported):
    layer, path = exported
    deployed = load(path)
    assert deployed.weight_dtype == np.int8 and deployed.dtype == np.float32
    assert "weight_dtype='int8'" in repr(deployed)
    stored = _stored(layer.get_weights(), "int8")
    for got, want in zip(deployed.get_weights(), stored):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
    for batch in (1, 3):
        x, h0 = _inputs(batch, 6, 9, 20, seed=batch)
        got = deployed(x, initial_state=[h0])
        np.testing.assert_allclose(got, layer(x, initial_state=[h0]), rtol=0, atol=1e-6)
        ref, _ = _oracle(layer, stored, x, h0)
        assert float(np.max(np.abs(got - ref))) <= _rounding(ref)
    mask = np.array([[True] * 4 + [False] * 2] * 3)
    np.testing.assert_allclose(deployed(x, mask=mask), layer(x, mask=mask), rtol=0, atol=1e-6)


def test_float16_export_of_a_float32_layer(tmp_path):
    layer = _layer(16, 6, seed=17, reset_after=True, return_state=True)
    path = layer.export(tmp_path / "f16", weight_dtype="float16")
    meta = json.loads((path / METADATA).read_text())
    assert meta["weight_dtype"] == "float16" and meta["keras_config"]["weight_dtype"] == "float16"
    assert layer.weight_dtype == "float32"  # exporting with float16 does not change the layer
    if meta["target"]["cpu_features"]:
        assert "f16c" in meta["target"]["cpu_features"]
    deployed = load(path)
    x, _ = _inputs(1, 5, 6, 16, seed=18)
    out, state = deployed(x)
    ref, ref_state = _oracle(layer, _stored(layer.get_weights(), "float16"), x)
    assert float(np.max(np.abs(out - ref))) <= _rounding(ref)
    assert float(np.max(np.abs(state - ref_state))) <= _rounding(ref_state)
    float32 = json.loads((layer.export(tmp_path / "f32") / METADATA).read_text())
    assert float32["weight_dtype"] == "float32" and "weight_dtype" not in float32["keras_config"]


def test_deployed_int8_frames_run_the_step_kernel(frames_on_step, tmp_path):
    layer = _layer(16, 5, weight_dtype="int8", seed=19, stateful=True)
    path = layer.export(tmp_path / "frames", batch=2)
    assert "frame" in json.loads((path / METADATA).read_text())["kernel"]["functions"]["2"]
    deployed = load(path)
    x = np.random.default_rng(20).uniform(-1, 1, (2, 6, 5)).astype(np.float32)
    for t in range(6):  # single frames: the step kernel, R_h block-major, the same scales
        out = deployed(np.ascontiguousarray(x[:, t:t + 1]))
    ref, _ = _oracle(layer, _stored(layer.get_weights(), "int8"), x)
    assert float(np.max(np.abs(out - ref))) <= _rounding(ref)


def _rewrite(path: Path, meta=None, arrays=None) -> None:
    if arrays is not None:
        np.savez(path / "weights.npz", **arrays)
    meta = meta or json.loads((path / METADATA).read_text())
    meta["files"]["weights.npz"] = hashlib.sha256((path / "weights.npz").read_bytes()).hexdigest()
    (path / METADATA).write_text(json.dumps(meta))


def test_loader_refuses_weight_dtype_mismatches(exported, tmp_path):
    _, src = exported
    with np.load(src / "weights.npz") as data:
        arrays = {k: data[k] for k in data.files}

    def copy(name, edit_meta=None, edit_arrays=None):
        dst = tmp_path / name
        shutil.copytree(src, dst)
        meta = json.loads((dst / METADATA).read_text())
        if edit_meta:
            edit_meta(meta)
        _rewrite(dst, meta, edit_arrays(dict(arrays)) if edit_arrays else None)
        return dst

    def relabel(meta):  # float16 over int8 weights (and no scales expected)
        meta["weight_dtype"] = "float16"

    with pytest.raises(ArtifactError, match=r"the kernel weights are .*weight_scale.*weight_dtype=float16\) implies"):
        load(copy("relabelled", relabel))

    def unknown(meta):
        meta["weight_dtype"] = "int4"

    with pytest.raises(ArtifactError, match=r"weight_dtype 'int4' is not a storage dtype of a float32 .*'int8'"):
        load(copy("int4", unknown))

    def scale_shape(meta):
        meta["shapes"]["weight_scale"] = [2, 3, 8]

    with pytest.raises(ArtifactError, match=r"weight weight_scale has shape \(2, 3, 8\) in the metadata; the config"):
        load(copy("scale_shape", scale_shape))

    def scales_as_int8(values):
        values["weight_scale"] = values["weight_scale"].astype(np.int8)
        return values

    with pytest.raises(ArtifactError, match=r"weight_scale .* dtype int8"):
        load(copy("scale_dtype", edit_arrays=scales_as_int8))


def test_cli_layer_weight_dtype(tmp_path, capsys):
    from tvm_gru import cli  # noqa: PLC0415

    out = tmp_path / "cli8"
    assert cli.main(["export", "--layer", "--units", "16", "--input-dim", "8", "--weight-dtype", "int8",
                     "--out", str(out)]) == 0
    meta = json.loads((out / METADATA).read_text())
    assert meta["kind"] == "layer" and meta["weight_dtype"] == "int8"
    with np.load(out / "weights.npz") as data:
        assert str(data["recurrent_packed"].dtype) == "int8" and str(data["weight_scale"].dtype) == "float32"
    with pytest.raises(SystemExit) as exc:
        cli.main(["export", "--layer", "--units", "16", "--input-dim", "8", "--dtype", "float64", "--weight-dtype",
                  "int8", "--out", str(tmp_path / "f64")])
    assert exc.value.code == 2 and "`weight_dtype` must be" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ whole models
def test_onnx_model_int8_gru_and_export(tmp_path):
    from tvm_gru.interop.onnx_io import from_onnx  # noqa: PLC0415
    from tvm_gru.models import Model  # noqa: PLC0415

    onnx_model = gru_gemm_softmax_onnx(inputs=5, hidden=6)
    with pytest.raises(ValueError, match=r"`weight_dtype` must be None or one of .* received 'int4'"):
        Model.from_onnx(onnx_model, batch=2, weight_dtype="int4")
    q8 = Model.from_onnx(onnx_model, batch=2, weight_dtype="int8")
    full = Model.from_onnx(onnx_model, batch=2)
    assert "GRU weights int8" in repr(q8)
    layer = from_onnx(onnx_model)  # the GRU node as a tvm_gru layer (time-major, Keras weights)
    layer = layer[0] if isinstance(layer, tuple) else layer
    x = np.random.default_rng(21).uniform(-1, 1, (7, 2, 5)).astype(np.float32)
    probs, y = q8(x)
    ref, _ = _oracle(layer, _stored(layer.get_weights(), "int8"), x)  # (T, B, H)
    assert float(np.max(np.abs(y[:, 0] - ref))) <= _rounding(ref)
    _, y32 = full(x)
    assert float(np.max(np.abs(y - y32))) > 1e-4  # the int8 weights, not the float32 ones
    deployed = tvm_gru.load(q8.export(tmp_path / "model8"))
    for got, want in zip(deployed(x), (probs, y)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert json.loads((tmp_path / "model8" / METADATA).read_text())["gru_weight_dtype"] == "int8"


def test_keras_model_float16_gru_layers():
    from tvm_gru.interop.keras_file import read_keras  # noqa: PLC0415
    from tvm_gru.models import Model  # noqa: PLC0415

    path = Path(__file__).parents[1] / "goldens" / "keras_models" / "kws.h5"
    model = Model.from_keras(path, batch=1, weight_dtype="float16")
    assert model.get_layer("gru_a").weight_dtype == "float32"  # the file's layers, as read
    x = np.random.default_rng(22).uniform(-1, 1, (1, 10, 8)).astype(np.float32)
    h = x
    for name in ("gru_a", "gru_b"):  # the same two layers, float16 storage, in process
        layer = model.get_layer(name)
        half = tvm_gru.GRU.from_config({**layer.get_config(), "weight_dtype": "float16"})
        half.set_weights(layer.get_weights())
        h = half(h)
    dense = read_keras(path).weights["dense"]
    logits = h @ dense[0] + dense[1]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(model(x), probs / probs.sum(-1, keepdims=True), rtol=0, atol=1e-5)


def test_torch_model_int8_gru():
    torch = pytest.importorskip("torch")
    from tvm_gru.models import Model  # noqa: PLC0415
    from tvm_gru.relax.torch_frontend import torch_gru_weights  # noqa: PLC0415

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(4, 6, batch_first=True)

        def forward(self, x):
            return self.gru(x)

    torch.manual_seed(0)
    net = Net().eval()
    gru = net.gru
    x = torch.rand(2, 5, 4) * 2 - 1
    model = Model.from_torch(net, (x,), weight_dtype="int8")
    y, h_n = model(x.numpy())
    weights = torch_gru_weights(*(p.detach().numpy() for p in (gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0,
                                                                 gru.bias_hh_l0)))
    layer = tvm_gru.GRU(6, recurrent_activation="sigmoid", reset_after=True, return_sequences=True)
    ref, state = _oracle(layer, _stored(weights, "int8"), x.numpy())
    assert float(np.max(np.abs(y - ref))) <= _rounding(ref)
    assert float(np.max(np.abs(h_n[0] - state))) <= _rounding(state)
    with torch.no_grad():
        assert float(np.max(np.abs(y - gru(x)[0].numpy()))) > 1e-5  # int8, not float32


# ------------------------------------------------------------------------------------ aarch64 under qemu
@pytest.mark.parametrize("units,input_dim", [(40, 12), pytest.param(128, 64, marks=pytest.mark.slow)],
                         ids=["serial", "four_parts"])  # four_parts: ~25 s (cross-compiling, emulated threads)
def test_aarch64_int8_layer_under_qemu(tmp_path, units, input_dim):
    """NEON kernels (int8 gate panels from 8 steps, in place below; the 128-unit layer on 4 parts and the aarch64
    spin barrier) give the oracle's numbers on the dequantized weights."""
    from conftest import qemu_kit, run_emulated  # noqa: PLC0415
    from test_arm_qemu_layer import EMULATED  # noqa: PLC0415  (the layer script the ARM tests run)

    kit = qemu_kit()
    layer = _layer(units, input_dim, weight_dtype="int8", seed=23, return_sequences=True)
    art = layer.export(tmp_path / "arm8", target={"name": "aarch64", "mcpu": "cortex-a72"}, batch=(1, 2))
    inputs, expected, calls = {}, {}, []
    for batch, steps in ((1, 11), (2, 11), (2, 3)):
        x, _ = _inputs(batch, steps, input_dim, units, seed=batch + steps)
        inputs[f"x{batch}_{steps}"] = x
        calls.append({"x": f"x{batch}_{steps}"})
        expected[f"arm8/{len(calls) - 1}"] = _oracle(layer, _stored(layer.get_weights(), "int8"), x)[0]
    np.savez(tmp_path / "in.npz", **inputs)
    data = run_emulated(kit, tmp_path, EMULATED, [{"name": "arm8", "artifact": str(art),
                                                   "inputs": str(tmp_path / "in.npz"), "calls": calls}], art)
    for key, ref in expected.items():
        err = float(np.max(np.abs(data[key] - ref)))
        assert err <= _rounding(ref), f"{key}: {err:.3e}"
    assert data["modules"].size == 0  # numpy + apache-tvm-ffi only on the board


@pytest.mark.parametrize("weight_dtype", NARROW)
def test_onnx_export_computes_what_the_narrow_layer_computes(weight_dtype):
    """ONNX has one weight dtype: the exported node holds the weights the kernel multiplies by (float16-rounded /
    int8-dequantized), so onnxruntime reproduces the narrow layer, not the float32 weights as set."""
    ort = pytest.importorskip("onnxruntime")
    layer = _layer(16, 8, weight_dtype=weight_dtype, return_sequences=True, return_state=True)
    x = np.random.default_rng(3).uniform(-1, 1, (2, 12, 8)).astype(np.float32)
    seq, state = layer(x)
    model = layer.to_onnx()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    Y, Y_h = session.run(None, {"X": np.ascontiguousarray(x.transpose(1, 0, 2))})
    np.testing.assert_allclose(Y[:, 0].transpose(1, 0, 2), seq, rtol=0, atol=2e-6)
    np.testing.assert_allclose(Y_h[0], state, rtol=0, atol=2e-6)
    exact = _layer(16, 8, return_sequences=True, return_state=True)(x)[0]
    assert np.max(np.abs(exact - seq)) > 1e-5  # the storage moved the outputs: the check above can tell
