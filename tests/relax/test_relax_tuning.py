"""MetaSchedule tuning of a whole model's non-GRU functions (``tvm_gru.relax.tune_model``) and the records'
application at compile time, under the tuning-record trust rules."""

import json
import logging

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import tvm_gru.relax as gr  # noqa: E402
from tvm_gru import targets  # noqa: E402
from tvm_gru.build import records as tuning_db  # noqa: E402
from tvm_gru.relax import tuning as relax_tuning  # noqa: E402
from tvm_gru.relax.schedule import legalized_module  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


def _mlp(rows=64, cols=16, out=32, seed=0, symbolic=False):
    """MatMul + Add + Relu, x (rows, cols) or ("n", cols) when ``symbolic``."""
    rng = np.random.default_rng(seed)
    w, b = rng.standard_normal((cols, out)).astype(np.float32), rng.standard_normal(out).astype(np.float32)
    rows_dim = "n" if symbolic else rows
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
         helper.make_node("Relu", ["a"], ["y"])], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows_dim, cols])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows_dim, out])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), w, b


def _run(mod, x):
    vm = tvm.relax.VirtualMachine(gr.compile(mod), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def test_tasks_leave_out_gru_kernels_and_symbolic_functions():
    from conftest import gru_gemm_softmax_onnx

    model = gru_gemm_softmax_onnx()
    bound = gr.from_onnx(model, shape_dict={model.graph.input[0].name: [7, 1, 5]})
    names = [name for name, _ in gr.model_tasks(bound)]
    assert names and not any(n.startswith("tvm_gru_sequence") for n in names)
    assert any("matmul" in n for n in names)
    legal = legalized_module(bound, targets.resolve(None))
    gru = [gv.name_hint for gv in legal.functions if gv.name_hint.startswith("tvm_gru_sequence")]
    assert gru  # the GRU kernel is in the module, and not a task
    symbolic, _, _ = _mlp(symbolic=True)
    assert gr.model_tasks(gr.from_onnx(symbolic)) == []


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A 4-trial tuning run of the MLP into a fresh log root: (root, target folder, results)."""
    root = tmp_path_factory.mktemp("model_logs")
    model, _, _ = _mlp()
    results = gr.tune_model(gr.from_onnx(model), trials=4, trials_per_batch=4, log_dir=root, progress=False,
                            seed=1, cost_model="random")
    return root, root / tuning_db.target_id(targets.resolve(None)), results


def _baselines(d):
    return [json.loads(line) for line in (d / tuning_db.BASELINE).read_text().splitlines()]


def test_tune_model_records_and_baseline(tuned):
    _, d, results = tuned
    (result,) = results
    assert result.name == "fused_matmul_add_relu" and result.spec is None
    assert result.trials_run == 4 and result.records == 4
    assert result.hand_seconds > 0 and result.tuned_seconds is not None
    assert "fused_matmul_add_relu" in result.summary()
    (base,) = _baselines(d)
    assert base["hand_source"] == relax_tuning.HAND_SOURCE
    assert base["spec"] == "model function fused_matmul_add_relu"
    assert base["seconds"] == pytest.approx(result.hand_seconds)


def _with_baseline(tuned, tmp_path, **change):
    """A copy of the tuning logs whose last baseline is changed by ``change``."""
    _, d, _ = tuned
    copy = tmp_path / "logs" / d.name
    copy.mkdir(parents=True)
    for name in tuning_db.FILES:
        if (d / name).exists():
            (copy / name).write_text((d / name).read_text())
    base = _baselines(d)[-1]
    base.update(change)
    with open(copy / tuning_db.BASELINE, "a") as f:
        f.write(json.dumps(base) + "\n")
    return copy


def _applied(mod) -> dict:
    target = targets.resolve(None)
    legal = legalized_module(mod, target)
    out = relax_tuning.apply_tuned(legal, target)
    return {gv.name_hint: f for gv, f in out.functions.items()
            if isinstance(f, tvm.tirx.PrimFunc) and not legal[gv.name_hint].same_as(f)}


def test_a_record_that_beat_the_hand_schedule_is_applied(tuned, tmp_path, monkeypatch):
    # the measured record lost to the hand rule (4 random trials): a baseline in which it won is written by hand
    copy = _with_baseline(tuned, tmp_path, seconds=1.0)
    monkeypatch.setenv("TVM_GRU_TUNING_LOGS", str(copy.parent))
    model, w, b = _mlp()
    mod = gr.from_onnx(model)
    applied = _applied(mod)
    assert list(applied) == ["fused_matmul_add_relu"]
    func = applied["fused_matmul_add_relu"]
    assert func.attrs["tirx.is_scheduled"] and "global_symbol" not in func.attrs
    x = np.random.default_rng(3).standard_normal((64, 16)).astype(np.float32)
    np.testing.assert_allclose(_run(mod, x), np.maximum(x @ w + b, 0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change", [dict(), dict(seconds=1.0, hand_source="relax-schedule-0000"),
                                    dict(seconds=1.0, target='{"kind": "llvm", "mcpu": "other"}')],
                         ids=["lost_to_the_hand_rule", "stale_hand_rules", "other_target"])
def test_records_not_applied(tuned, tmp_path, monkeypatch, change):
    copy = _with_baseline(tuned, tmp_path, **change)
    monkeypatch.setenv("TVM_GRU_TUNING_LOGS", str(copy.parent))
    model, _, _ = _mlp()
    assert _applied(gr.from_onnx(model)) == {}
    other, _, _ = _mlp(rows=32)  # another workload: no record matches it
    monkeypatch.setenv("TVM_GRU_TUNING_LOGS", str(_with_baseline(tuned, tmp_path / "b", seconds=1.0).parent))
    assert _applied(gr.from_onnx(other)) == {}


def test_a_refused_record_is_never_applied(tuned, tmp_path, monkeypatch, caplog):
    copy = _with_baseline(tuned, tmp_path, seconds=1.0)
    lines = (copy / tuning_db.RECORDS).read_text().splitlines()
    bad = []
    for line in lines:  # every record carries the payload: none may be replayed
        rec = json.loads(line)
        trace = rec[1][0][0]
        block = [i for i in trace if i[0] == "GetSBlock"][-1][3][0]
        trace.append(["Annotate", [block, '"; payload"'], ["pragma_import_llvm"], []])
        bad.append(json.dumps(rec))
    (copy / tuning_db.RECORDS).write_text("\n".join(bad) + "\n")
    monkeypatch.setenv("TVM_GRU_TUNING_LOGS", str(copy.parent))
    caplog.set_level(logging.WARNING, logger="tvm_gru")
    model, w, b = _mlp()
    mod = gr.from_onnx(model)
    assert _applied(mod) == {}
    assert "pragma_import_llvm" in caplog.text
    x = np.ones((64, 16), np.float32)
    np.testing.assert_allclose(_run(mod, x), np.maximum(x @ w + b, 0), rtol=1e-5, atol=1e-5)


def test_bad_arguments():
    model, _, _ = _mlp()
    mod = gr.from_onnx(model)
    with pytest.raises(TypeError, match="must be a tvm.IRModule"):
        gr.tune_model(model)
    with pytest.raises(ValueError, match="argument `trials`, expected a positive integer, got 0"):
        gr.tune_model(mod, trials=0)
    with pytest.raises(ValueError, match="go together"):
        gr.tune_model(mod, rpc_tracker="127.0.0.1:9190")
    with pytest.raises(ValueError, match="cost_model"):
        gr.tune_model(mod, cost_model="best")
