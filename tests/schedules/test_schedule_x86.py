"""The x86 step rule: numerics of every knob against the float64 oracle, and the structure of the code it emits."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tvm

from tvm_gru import GRUConfig, StepSpec, targets
from tvm_gru.build import scheduled_module
from tvm_gru.ops import compute, reference
from tvm_gru.runtime import packing
from tvm_gru.schedules.base import CPUStepConfig
from tvm_gru.schedules.x86 import X86StepRule

TARGET = targets.resolve({"name": "x86", "num-cores": 2})
RULE = X86StepRule()


def _spec(batch, input_dim, units, dtype="float32", **config):
    cfg = GRUConfig(units, dtype=dtype, **config)
    return StepSpec(cfg, batch=batch, input_dim=input_dim, lanes=targets.lanes(TARGET, dtype))


def _run(spec, knobs=None, seed=0):
    """Compile ``spec`` with ``knobs`` (None = the rule's defaults), run it once; return (output, reference).

    With ``spec.weight_dtype`` float16 the weights are drawn as halves, so the reference sees the stored values.
    """
    c, dt = spec.config, spec.config.dtype
    rng = np.random.default_rng(seed)
    wdt = spec.weight_dtype or dt
    kernel = rng.uniform(-0.5, 0.5, (spec.input_dim, 3 * c.units)).astype(wdt).astype(dt)
    recurrent = rng.uniform(-0.5, 0.5, (c.units, 3 * c.units)).astype(wdt).astype(dt)
    bias = rng.uniform(-0.5, 0.5, c.bias_shape).astype(dt) if c.use_bias else None
    x = rng.uniform(-1, 1, (spec.batch, spec.input_dim)).astype(dt)
    h = rng.uniform(-1, 1, (spec.batch, c.units)).astype(dt)
    packed = packing.pack_weights(c, kernel, recurrent, bias, spec.lanes, spec.weight_dtype)
    fn = tvm.compile(scheduled_module(spec, TARGET, knobs), target=TARGET).jit()["main"]
    out = np.full((spec.batch, c.units), np.nan, dt)
    args = [tvm.runtime.tensor(a) for a in (x, h, *packed.values(), out)]
    fn(*args)
    return args[-1].numpy(), reference.step(c, x, h, kernel, recurrent, bias)


def _tol(dtype):
    return 2e-5 if dtype == "float32" else 1e-11


SHAPES = [(1, 64, 128), (3, 5, 7), (17, 33, 257), (8, 16, 64), (4, 9, 24)]


@pytest.mark.parametrize("reset_after", [False, True], ids=["ra0", "ra1"])
@pytest.mark.parametrize("implementation", [1, 2], ids=["impl1", "impl2"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_default_schedule_matches_reference(shape, dtype, implementation, reset_after):
    spec = _spec(*shape, dtype=dtype, implementation=implementation, reset_after=reset_after,
                 recurrent_activation="sigmoid" if reset_after else "hard_sigmoid")
    out, ref = _run(spec)
    np.testing.assert_allclose(out, ref, atol=_tol(dtype), rtol=0)


KNOBS = {
    "serial": dict(parallel=False),
    "parallel_one_region": dict(parallel=True, one_region=True),
    "parallel_two_launches": dict(parallel=True, one_region=False),
    "batch_inner": dict(parallel=True, batch_inner=True),
    "small_tiles": dict(unit_blocks=1, candidate_blocks=1, batch_tile=1, parallel=True),
    "prefetch_next": dict(prefetch_next=True),
    "prefetch_next_batch_inner": dict(prefetch_next=True, batch_inner=True, batch_tile=2, parallel=True),
}


@pytest.mark.parametrize("knobs", list(KNOBS.values()), ids=list(KNOBS))
@pytest.mark.parametrize("reset_after", [False, True], ids=["ra0", "ra1"])
@pytest.mark.parametrize("shape", [(1, 40, 64), (6, 24, 48), (2, 16, 33)], ids=lambda s: "x".join(map(str, s)))
def test_every_knob_matches_reference(shape, reset_after, knobs):
    spec = _spec(*shape, reset_after=reset_after)
    base = RULE.default_config(spec, TARGET)
    cfg = dataclasses.replace(base, **knobs)
    if spec.batch % cfg.batch_tile:
        cfg = dataclasses.replace(cfg, batch_tile=1)
    if cfg.parallel and spec.blocks // cfg.candidate_blocks < 2:  # one region needs 2 candidate tiles
        cfg = dataclasses.replace(cfg, candidate_blocks=spec.blocks // 2)
    out, ref = _run(spec, cfg)
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=0)


@pytest.mark.parametrize("shape", [(1, 64, 128), (1, 512, 1024), (8, 256, 256), (64, 256, 256), (3, 5, 7),
                                   (17, 33, 257)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_default_config_is_a_valid_register_tile(shape, dtype):
    spec = _spec(*shape, dtype=dtype)
    cfg = RULE.default_config(spec, TARGET)
    assert isinstance(cfg, CPUStepConfig)
    assert spec.blocks % cfg.unit_blocks == 0 and spec.blocks % cfg.candidate_blocks == 0
    assert spec.batch % cfg.batch_tile == 0
    assert 3 * cfg.unit_blocks * cfg.batch_tile <= RULE.max_accumulators or cfg.unit_blocks == 1
    assert cfg.candidate_blocks * cfg.batch_tile <= RULE.max_accumulators or cfg.candidate_blocks == 1


@pytest.mark.parametrize("reset_after", [False, True], ids=["ra0", "ra1"])
@pytest.mark.parametrize("dtype, weight_dtype", [("float32", "float16"), ("float64", None)], ids=["f16_weights", "f64"])
def test_prefetch_next_with_other_element_sizes(dtype, weight_dtype, reset_after):
    """Rows of 48 (or 16) bytes with half-precision weights, V = 4 lanes of 8 bytes in float64: the prefetch
    offsets are in elements of the stored dtype."""
    spec = StepSpec(GRUConfig(40, reset_after=reset_after, dtype=dtype), batch=4, input_dim=24,
                    lanes=targets.lanes(TARGET, dtype), weight_dtype=weight_dtype)
    cfg = dataclasses.replace(RULE.default_config(spec, TARGET), prefetch_next=True, batch_inner=True, batch_tile=2)
    out, ref = _run(spec, cfg)
    np.testing.assert_allclose(out, ref, atol=_tol(dtype), rtol=0)


@pytest.mark.parametrize("shape, expected", [((8, 512, 1024), True), ((4, 512, 1024), True), ((1, 512, 1024), False),
                                             ((2, 512, 1024), False), ((16, 512, 1024), False),
                                             ((8, 256, 256), False), ((64, 512, 1024), False)],
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_prefetch_next_only_for_single_stream_tiles_from_l3(shape, expected):
    """The measured policy: one weight stream per tile, weights beyond ~4x L2 per core, at most two batch tiles."""
    assert RULE.default_config(_spec(*shape), TARGET).prefetch_next is expected


def test_prefetches_next_tile_in_first_batch_tile_only():
    """Each product's k loop starts with prefetches of the next unit tile: two lines of a 96-byte row for the
    three-gate input product, one of the 64-byte z/r row, one per block of the two-block candidate tile (32-byte
    rows); each under ``b == 0`` (the batch tiles share the weights)."""
    spec = _spec(8, 64, 128)
    cfg = dataclasses.replace(RULE.default_config(spec, TARGET), prefetch_next=True, batch_inner=True)
    assert (cfg.batch_tile, cfg.unit_blocks, cfg.candidate_blocks) == (4, 1, 2)
    lines = [line.strip() for line in _lowered(spec, cfg).splitlines()]
    at = [i for i, line in enumerate(lines) if "llvm.prefetch" in line]
    assert len(at) == 2 + 1 + 2
    for i in at:
        guard = next(line for line in reversed(lines[:i]) if "llvm.prefetch" not in line and ": T.let" not in line)
        assert guard.startswith("if ") and guard.endswith("== 0:"), guard
    without = _lowered(spec, dataclasses.replace(cfg, prefetch_next=False))
    assert "llvm.prefetch" not in without


def test_one_core_target_never_goes_parallel():
    target = targets.resolve({"name": "x86", "num-cores": 1})
    assert not RULE.default_config(_spec(64, 512, 1024), target).parallel


def _lowered(spec, knobs=None) -> str:
    from tvm.s_tir.pipeline import default_s_tir_pipeline

    mod = tvm.tirx.transform.BindTarget(TARGET.with_host(TARGET))(scheduled_module(spec, TARGET, knobs))
    pipeline, host_passes, _ = default_s_tir_pipeline()
    with tvm.transform.PassContext():
        return host_passes()(pipeline(mod)).script()


@pytest.mark.parametrize("reset_after", [False, True], ids=["ra0", "ra1"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_epilogue_is_vectorized(dtype, reset_after):
    """Every loop of a V-aligned kernel is vectorized: a scalar fallback (``*_s`` loops) once cost 20 %."""
    text = _lowered(_spec(8, 64, 128, dtype=dtype, reset_after=reset_after))
    assert "_s in range" not in text and "_s in T.grid" not in text


def test_one_parallel_region_with_a_barrier():
    """reset_after=False: both phases share one parallel launch; the shared buffers live outside it."""
    spec = _spec(1, 256, 256)
    text = _lowered(spec, dataclasses.replace(RULE.default_config(spec, TARGET), parallel=True, one_region=True))
    assert text.count("pragma_parallel_launch_point") == 1
    assert text.count("pragma_parallel_barrier_when_finish") == 1
    launch = text.index("pragma_parallel_launch_point")
    for shared in ("gates = ", "rh = "):
        assert text.index(shared) < launch, f"{shared.strip(' =')} must be allocated outside the parallel region"


def test_accumulators_are_not_heap_workspace():
    """Register tiles live in stack buffers (TVM lowers "local" scope to a workspace call per tile)."""
    text = _lowered(_spec(4, 64, 64, reset_after=True))
    assert "TVMBackendAllocWorkspace" not in text


@pytest.mark.parametrize("name", ["unit_blocks", "candidate_blocks"])
def test_one_region_refuses_a_phase_of_one_tile(name):
    # Inside a parallel launch TVM drops a parallel loop of extent 1 and every task runs its body: both threads
    # computed that phase into the same buffers (wrong outputs in ~1 of 5,000 calls, 1x40x64).
    spec = _spec(1, 40, 64)
    cfg = dataclasses.replace(RULE.default_config(spec, TARGET), parallel=True, one_region=True,
                              **{name: spec.blocks})
    func = compute.step_primfunc(spec)
    with pytest.raises(ValueError, match=f"{name}={spec.blocks} gives 1 tile.*one_region=False"):
        RULE.apply(func, spec, TARGET, cfg)
    RULE.apply(func, spec, TARGET, dataclasses.replace(cfg, one_region=False))  # two launches: no shared region
    ra = _spec(1, 40, 64, reset_after=True, recurrent_activation="sigmoid")  # one phase, no region
    RULE.apply(compute.step_primfunc(ra), ra, TARGET, dataclasses.replace(cfg, unit_blocks=ra.blocks))


@pytest.mark.parametrize("shape", [(1, 1024, 64), (1, 512, 96), (2, 1024, 48)],
                         ids=lambda s: "x".join(map(str, s)))
def test_default_parallel_step_gives_the_same_output_every_call(shape):
    # These defaults had a single candidate tile in one parallel region (see check_one_region): the output was
    # wrong in about 1 call of 10,000. 20,000 calls into separate outputs, each compared with the first.
    spec = _spec(*shape)
    cfg = RULE.default_config(spec, TARGET)
    assert cfg.parallel and cfg.one_region and spec.blocks // cfg.candidate_blocks >= 2
    out, ref = _run(spec)
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=0)
    c, rng = spec.config, np.random.default_rng(1)
    weights = [rng.uniform(-0.5, 0.5, s).astype("float32") for s in
               ((spec.input_dim, 3 * c.units), (c.units, 3 * c.units), c.bias_shape)]
    packed = packing.pack_weights(c, *weights, spec.lanes)
    fn = tvm.compile(scheduled_module(spec, TARGET, None), target=TARGET).jit()["main"]
    x = rng.uniform(-1, 1, (spec.batch, spec.input_dim)).astype("float32")
    h = rng.uniform(-1, 1, (spec.batch, c.units)).astype("float32")
    head = [tvm.runtime.tensor(a) for a in (x, h, *packed.values())]
    outs = [tvm.runtime.tensor(np.full((spec.batch, c.units), np.nan, "float32")) for _ in range(2000)]
    first = None
    for _ in range(10):
        for o in outs:
            fn(*head, o)
        got = np.stack([o.numpy() for o in outs])
        first = got[0] if first is None else first
        assert np.array_equal(got, np.broadcast_to(first, got.shape)), "a parallel step call gave another output"


def test_tuning_records_with_a_one_tile_region_are_not_applied():
    # Records tuned before check_one_region existed replay their trace without it: lookup leaves them out.
    from tvm_gru.build.records import one_region_hazard

    knobs = ("unit_blocks=4, candidate_blocks={}, batch_tile=1, parallel=True, one_region={}, batch_inner=False, "
             "unroll=16")
    func = compute.step_primfunc(_spec(1, 40, 64))  # 8 unit blocks
    assert one_region_hazard(knobs.format(8, True), func)
    assert not one_region_hazard(knobs.format(4, True), func)
    assert not one_region_hazard(knobs.format(8, False), func)  # two launches
    ra = _spec(1, 40, 64, reset_after=True, recurrent_activation="sigmoid")  # one phase: no region
    assert not one_region_hazard(knobs.format(8, True), compute.step_primfunc(ra))
    assert not one_region_hazard("generic MetaSchedule rules", func) and not one_region_hazard(None, func)
