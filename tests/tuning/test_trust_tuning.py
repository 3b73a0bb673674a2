"""Tuning records are data: only what tvm_gru's own search spaces write is replayed (tvm_gru.build.records).

The crafted records start from a real committed record (the smallest committed workload, H128-I64-B1 for
``znver3``) with one instruction, attribute, annotation or decision changed, as someone handing over a log could.
"""

from __future__ import annotations

import json
import logging
import math
import platform
from pathlib import Path

import numpy as np
import pytest
from conftest import tolerance

from tvm_gru import targets
from tvm_gru.build import records as tuning_db
from tvm_gru.ops import compute
from tvm_gru.ops.config import GRUConfig, StepSpec
from tvm_gru.tuning import measure as tune_measure
from tvm_gru.tuning import space as tune_space

COMMITTED = tuning_db.root()  # read at import time: the tests below point $TVM_GRU_TUNING_LOGS elsewhere
ZNVER3 = {"kind": "llvm", "mcpu": "znver3", "num-cores": 2}  # the committed records' target
MARKER = "tvm_gru_payload_marker"
PAYLOAD_IR = f'"@{MARKER} = global i32 1337"'  # LLVM IR: pragma_import_llvm links it into the kernel


def _committed_lines(workload: int = 0):
    """The committed workload line ``workload`` of ``llvm-x86-znver3`` and one of its records that samples an
    unroll depth other than 0 (so its trace holds every annotation the hand space writes)."""
    d = COMMITTED / "llvm-x86-znver3"
    with open(d / tuning_db.WORKLOADS) as f:
        workload_line = [line for _, line in zip(range(workload + 1), f)][-1]
    with open(d / tuning_db.RECORDS) as f:
        record_line = next(line for line in f
                           if line.startswith(f"[{workload},") and "pragma_auto_unroll_max_step" in line)
    return workload_line, json.loads(record_line)


def _spec(target, units=128, input_dim=64, batch=1):
    cfg = GRUConfig(units)
    return StepSpec(cfg, batch=batch, input_dim=input_dim, lanes=targets.lanes(target, cfg.dtype))


# ---------------------------------------------------------------- crafting records


def _trace(record):
    return record[1][0]


def _first(record, kind, key=None) -> list:
    """The first instruction of ``kind`` (an Annotate with ``key``) in ``record``'s trace."""
    return next(i for i in _trace(record)[0] if i[0] == kind and (key is None or i[2] == [key]))


def _inject(record, inst) -> None:
    """Append ``inst`` to the trace (after the postprocessors' part: the variables it names exist there)."""
    _trace(record)[0].append(inst)


def _last(record, kind) -> list:
    return [i for i in _trace(record)[0] if i[0] == kind][-1]


def _loop(record) -> str:
    """The outermost loop of the last block the trace looked up: a loop of the final kernel."""
    return _last(record, "GetLoops")[3][0]


def _block(record) -> str:
    return _last(record, "GetSBlock")[3][0]


def _annotate(key, value, on=_loop):
    return lambda r: _inject(r, ["Annotate", [on(r), value], [key], []])


def _set_annotation(key, value):
    def change(r):
        _first(r, "Annotate", key)[1][1] = value
    return change


def _set_attrs(kind, attrs):
    def change(r):
        _first(r, kind)[2] = attrs
    return change


def _set_decision(value):
    def change(r):
        _trace(r)[1][0][1] = value
    return change


def _set_split_factor(value):
    def change(r):
        split = next(i for i in _trace(r)[0] if i[0] == "Split" and any(type(v) is int for v in i[1][1:]))
        split[1] = [v if type(v) is not int else value for v in split[1]]
    return change


def _set_times(times):
    def change(r):
        r[1][1] = times
    return change


def _too_long(r):
    for n in range(5000):  # more than any trace the spaces write (tuning_db.MAX_INSTRUCTIONS)
        _inject(r, ["GetSBlock", [], ["root", "main"], [f"b{900000 + n}"]])


# name -> (how the committed record is changed, what the refusal must say)
CRAFTED = {
    # annotation keys that reach code generation, and their values
    "pragma_import_llvm": (_annotate("pragma_import_llvm", PAYLOAD_IR), 'key "pragma_import_llvm"'),
    "pragma_import_llvm_file": (_annotate("pragma_import_llvm", '"/tmp/payload.ll"'), 'key "pragma_import_llvm"'),
    "pragma_import_c": (_annotate("pragma_import_c", '"int payload(void) { return 1; }"'), 'key "pragma_import_c"'),
    "unknown_pragma": (_annotate("pragma_debug_skip_region", 1), 'key "pragma_debug_skip_region"'),
    "unknown_key_on_a_block": (_annotate("software_pipeline_stage", 1, on=_block), 'key "software_pipeline_stage"'),
    "unannotate_unknown_key": (lambda r: _inject(r, ["Unannotate", [_block(r)], ["pragma_import_llvm"], []]),
                               'key "pragma_import_llvm"'),
    "string_for_int": (_set_annotation("pragma_auto_unroll_max_step", '"64"'),
                       'pragma_auto_unroll_max_step value "\\"64\\""'),
    "float_for_int": (_set_annotation("pragma_auto_unroll_max_step", 64.0), "input 64.0"),
    "absurd_unroll": (_set_annotation("pragma_auto_unroll_max_step", 1 << 30),
                      "pragma_auto_unroll_max_step value 1073741824"),
    "negative_unroll": (_set_annotation("pragma_auto_unroll_max_step", -1), "pragma_auto_unroll_max_step value -1"),
    "unroll_explicit_2": (_set_annotation("pragma_unroll_explicit", 2), "pragma_unroll_explicit value 2"),
    "bool_for_int": (_set_annotation("pragma_unroll_explicit", True), "input true"),
    "launch_point_0": (_annotate("pragma_parallel_launch_point", 0), "pragma_parallel_launch_point value 0"),
    "hand_config_label": (_set_annotation(tune_space.CONFIG_ANNOTATION, '"unit_blocks=1; import os"'),
                          "tvm_gru.hand_config value"),
    # instruction kinds and attributes
    "unknown_instruction": (lambda r: _inject(r, ["UnsafeSetDType", [_block(r)], [0, '"float16"'], []]),
                            'kind "UnsafeSetDType"'),
    "tensorize": (lambda r: _inject(r, ["Tensorize", [_loop(r)], ['"dot_16x4_vnni"', 1], []]), 'kind "Tensorize"'),
    "split_without_predicate": (_set_attrs("Split", [1, 1]), "Split attribute 1 1"),
    "absurd_split_factor": (_set_split_factor(1 << 40), "Split factors [1099511627776"),
    "bind_other_thread_axis": (lambda r: _inject(r, ["Bind", [_loop(r)], ["vthread.x"], []]),
                               'Bind attribute 0 "vthread.x"'),
    "set_scope_global": (lambda r: _inject(r, ["SetScope", [_block(r)], [0, "global"], []]),
                         'SetScope attribute 1 "global"'),
    "other_function": (_set_attrs("GetSBlock", ["root", "other"]), 'GetSBlock attribute 1 "other"'),
    "undefined_variable": (_annotate("pragma_unroll_explicit", 1, on=lambda r: "l999999"), 'input "l999999"'),
    "too_many_instructions": (_too_long, "instructions, more than"),
    # decisions and times
    "decision_out_of_range": (_set_decision(7), "decision 7 for instruction"),
    "decision_string": (_set_decision('"3"'), 'decision "\\"3\\"" for instruction'),
    "nan_time": (_set_times([math.nan]), "run_secs [NaN]"),
    "negative_time": (_set_times([-1.0]), "run_secs [-1.0]"),
}


def _crafted(name):
    workload_line, record = _committed_lines()
    CRAFTED[name][0](record)
    return workload_line, record


def _write_log(d: Path, workload_line: str, records) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / tuning_db.WORKLOADS).write_text(workload_line)
    (d / tuning_db.RECORDS).write_text("".join(json.dumps(r) + "\n" for r in records))


# ---------------------------------------------------------------- the allow-list


@pytest.mark.parametrize("name", CRAFTED)
def test_crafted_record_is_skipped_with_a_warning_naming_file_and_line(tmp_path, caplog, name):
    workload_line, bad = _crafted(name)
    _, good = _committed_lines()
    d = tmp_path / "llvm-x86-znver3"
    _write_log(d, workload_line, [good, bad])
    caplog.set_level(logging.WARNING, logger="tvm_gru")
    assert tuning_db.read_records(d, 1) == [good]
    assert f"{d / tuning_db.RECORDS} line 2" in caplog.text and "never compiled" in caplog.text
    assert CRAFTED[name][1] in caplog.text
    with pytest.raises(ValueError, match="tuning record refused"):
        tuning_db.apply_record(bad[1], None)  # refused before TVM sees it


def test_every_committed_record_passes_the_allow_list(caplog):
    caplog.set_level(logging.WARNING, logger="tvm_gru")
    folders = [p.parent for p in COMMITTED.glob(f"*/{tuning_db.RECORDS}")]
    assert folders
    for d in folders:
        lines = (d / tuning_db.RECORDS).read_text().splitlines()
        refused = {n: tuning_db.record_refusal(json.loads(line)[1]) for n, line in enumerate(lines, 1)}
        assert {n: r for n, r in refused.items() if r is not None} == {}
        assert len(tuning_db.read_records(d, len(tuning_db.read_workloads(d)))) == len(lines)
    assert "refusing" not in caplog.text


@pytest.mark.parametrize("where", [None, "aarch64"], ids=["host", "aarch64"])
def test_search_candidates_pass_the_allow_list(where):
    """What the hand and generic spaces generate, postprocessors and mutations included, is allowed (the
    allow-list follows the spaces; the search skips a candidate it refuses)."""
    from tvm.s_tir import meta_schedule as ms

    target = targets.resolve(where)
    for spec in (_spec(target, 16, 8, 1), _spec(target, 32, 8, 4)):
        func = compute.step_primfunc(spec)
        for name in ("hand", "rules"):
            with tune_measure.without_tensor_intrinsics(target):
                ctx = ms.TuneContext(tuning_db.module(func), target=target,
                                     space_generator=tune_space.space(name, func, spec, target),
                                     search_strategy=ms.search_strategy.EvolutionarySearch(
                                         population_size=16, init_min_unmeasured=8, genetic_num_iters=1),
                                     num_threads=1, rand_state=1)
            spaces = ctx.generate_design_space()
            ctx.pre_tuning(max_trials=8, num_trials_per_iter=8, design_spaces=spaces,
                           database=ms.database.MemoryDatabase(), cost_model=ms.cost_model.CostModel.create("random"))
            candidates = [c.sch for c in ctx.generate_measure_candidates()]
            ctx.post_tuning()
            assert candidates
            for sch in spaces + candidates:
                assert tuning_db.trace_refusal(tuning_db.trace_json(sch.trace)) is None


def test_cuda_hand_schedules_pass_the_allow_list():
    target = targets.resolve("cuda")
    spec = _spec(target, 32, 8, 4)
    func = compute.step_primfunc(spec)
    rule, _ = tune_space.hand_rule(func, spec, target)
    for cfg in tune_space.hand_configs(rule, spec, target):
        sch = rule.apply(func, spec, target, cfg)
        sch.annotate(sch.get_sblock("root"), tune_space.CONFIG_ANNOTATION, tune_space.describe(cfg))
        assert tuning_db.trace_refusal(tuning_db.trace_json(sch.trace)) is None


def test_unparsable_hand_config_label_is_a_hazard_not_a_crash():
    """The label is the file's text: ``unit_blocks=0`` divided by zero in the one-region check."""
    func = compute.step_primfunc(_spec(targets.resolve(None), 64, 8, 1))
    assert tuning_db.one_region_hazard("unit_blocks=0, candidate_blocks=0, parallel=True, one_region=True", func)


def test_runner_times_that_are_not_finite_and_positive_count_as_failures(caplog):
    from tvm.s_tir.meta_schedule.runner import RunnerResult

    assert tune_measure.run_seconds(RunnerResult([2e-6, 3e-6], None)) == [2e-6, 3e-6]
    assert tune_measure.run_seconds(RunnerResult(None, "timeout")) == []
    for times in ([math.nan], [-1e-6], [0.0], [math.inf], [1e-6, math.nan]):
        assert tune_measure.run_seconds(RunnerResult(times, None)) == []
    assert "unusable times" in caplog.text


# ---------------------------------------------------------------- end to end


def _files_holding(folder: Path, text: str) -> list:
    return [p for p in folder.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the committed records are for x86")
def test_payload_record_never_reaches_the_kernel_or_the_artifact(logs, tmp_path, caplog):
    """A record that would be applied (its baseline says it beats the hand schedule) but carries
    ``pragma_import_llvm``: the cell computes with the hand schedule, and no file it compiles or exports holds
    the payload."""
    import tvm_gru
    from tvm_gru.ops import reference

    target = targets.resolve(ZNVER3)
    spec = _spec(target)
    func = compute.step_primfunc(spec)
    d = logs / tuning_db.target_id(target)
    workload_line, clean = _committed_lines()
    _write_log(d, workload_line, [clean])
    tuning_db.append_baseline(d, {"workload": tuning_db.workload_key(tuning_db.module(func)), "seconds": 1.0,
                                  "target": tuning_db.target_key(target),
                                  "hand_source": tuning_db.hand_fingerprint(target)})
    assert tuning_db.lookup(func, target) is not None  # the clean record would be applied

    _, bad = _crafted("pragma_import_llvm")
    _write_log(d, workload_line, [bad])
    caplog.set_level(logging.WARNING, logger="tvm_gru")
    cell = tvm_gru.GRUCell(128, target=ZNVER3, seed=3)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (1, 64)).astype("float32")
    h = rng.uniform(-1, 1, (1, 128)).astype("float32")
    out, [new_h] = cell(x, [h])
    ref = reference.step(cell.config, x, h, *cell.get_weights())
    np.testing.assert_allclose(out, ref, atol=tolerance("float32", ref))
    assert _files_holding(tmp_path / "cache", MARKER) == []
    artifact = cell.export(tmp_path / "artifact")
    assert _files_holding(Path(artifact), MARKER) == []
    assert f"{d / tuning_db.RECORDS} line 1" in caplog.text


def test_tuning_run_drops_a_refused_record_before_tvm_reads_the_log(tmp_path, caplog):
    """A tuning run seeds its search with the database's best records (building them): a refused one is dropped
    from the log first (the original kept as ``*.damaged``), so TVM's database never holds it."""
    import importlib

    tune = importlib.import_module("tvm_gru.tuning.tune")
    target = targets.resolve(ZNVER3)
    workload_line, bad = _crafted("pragma_import_llvm")
    _, good = _committed_lines()
    d = tmp_path / tuning_db.target_id(target)
    _write_log(d, workload_line, [good, bad])
    caplog.set_level(logging.WARNING, logger="tvm_gru")
    task, _ = tune.step_task(d, _spec(target), target)
    assert len(task.db.get_all_tuning_records()) == 1
    assert MARKER not in (d / tuning_db.RECORDS).read_text()
    assert MARKER in (d / (tuning_db.RECORDS + ".damaged")).read_text()
    assert f"{d / tuning_db.RECORDS} line 2" in caplog.text
