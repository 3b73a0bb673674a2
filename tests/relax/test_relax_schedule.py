"""tvm_gru.relax.schedule: CPU schedules for the legalized non-GRU ops of a whole model, checked against
onnxruntime, and a check that the GEMMs are actually scheduled (parallel / vectorized loops, project kernels
untouched)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper

import tvm_gru.relax as tgr
from tvm_gru import targets
from tvm_gru.relax import schedule

pytestmark = pytest.mark.filterwarnings("ignore:Field 'shape' of 'type' is required:UserWarning")

TOL = 1e-5


def _model(nodes, inputs, outputs, inits):
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                                                   for o in outputs],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def _mlp_gru_head(b=2, i=40, f=128, h=32, classes=7):
    rng = np.random.default_rng(0)
    inits = {"W1": (rng.standard_normal((i, f)) * 0.2).astype(np.float32),
             "b1": (rng.standard_normal(f) * 0.1).astype(np.float32),
             "W": (rng.standard_normal((1, 3 * h, f)) * 0.1).astype(np.float32),
             "R": (rng.standard_normal((1, 3 * h, h)) * 0.2).astype(np.float32),
             "B": (rng.standard_normal((1, 6 * h)) * 0.1).astype(np.float32),
             "ax": np.array([0], dtype=np.int64),
             "Wg": (rng.standard_normal((h, classes)) * 0.3).astype(np.float32),
             "bg": (rng.standard_normal(classes) * 0.1).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["X", "W1"], ["m"]), helper.make_node("Add", ["m", "b1"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("GRU", ["r", "W", "R", "B"], ["Y", "Yh"], hidden_size=h),
             helper.make_node("Squeeze", ["Yh", "ax"], ["hs"]),
             helper.make_node("Gemm", ["hs", "Wg", "bg"], ["g"]),
             helper.make_node("Softmax", ["g"], ["P"], axis=-1)]
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", b, i])
    return _model(nodes, [x], ["Y", "P"], inits)


def _odd(m=37, k=53, n=29, classes=23):
    rng = np.random.default_rng(1)
    inits = {"W1": (rng.standard_normal((k, n)) * 0.2).astype(np.float32),
             "Wg": (rng.standard_normal((classes, n)) * 0.2).astype(np.float32),
             "bg": (rng.standard_normal(classes) * 0.1).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["X", "W1"], ["m"]),
             helper.make_node("Gemm", ["m", "Wg", "bg"], ["g"], transB=1),
             helper.make_node("Softmax", ["g"], ["P"], axis=-1)]
    return _model(nodes, [helper.make_tensor_value_info("X", TensorProto.FLOAT, [m, k])], ["P", "m"], inits)


def _compare(model, xs, **kwargs):
    target = targets.resolve(None)
    ex = tgr.compile(tgr.from_onnx(model, target=target), target, **kwargs)
    vm = tvm.relax.VirtualMachine(ex, tvm.cpu())
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for x in xs:
        want = sess.run(None, {"X": x})
        out = vm["main"](tvm.runtime.tensor(x))
        got = [out.numpy()] if hasattr(out, "numpy") else [o.numpy() for o in out]
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=TOL, atol=TOL)


def test_mlp_gru_gemm_softmax_symbolic_length_two_lengths():
    rng = np.random.default_rng(2)
    _compare(_mlp_gru_head(), [rng.standard_normal((t, 2, 40)).astype(np.float32) for t in (7, 13)])


def test_odd_sizes_matmul_gemm_softmax():
    _compare(_odd(), [np.random.default_rng(3).standard_normal((37, 53)).astype(np.float32)])


def test_odd_sizes_with_dlight_on_top():
    _compare(_odd(m=5, k=11, n=3, classes=2),
             [np.random.default_rng(4).standard_normal((5, 11)).astype(np.float32)], dlight=True)


def test_schedule_off_still_matches():
    _compare(_odd(m=6, k=9, n=40, classes=5),
             [np.random.default_rng(5).standard_normal((6, 9)).astype(np.float32)], schedule=False)


@pytest.mark.parametrize("x_shape, w_shape", [((2, 5, 32), (32, 4)), ((2, 5, 32), (2, 32, 4)),
                                              ((3, 7, 16), (16, 24)), ((3, 4, 5, 6), (6, 17))],
                         ids=["3d-dense-n4", "batched", "3d-dense", "4d-dense"])
def test_batched_and_multi_axis_matmuls(x_shape, w_shape):
    """Rows fused from several axes: a register tile of the fused rows must not straddle the innermost row axis
    (its write-back region would cover rows it did not compute: 1.4-3.3 off before the fix)."""
    rng = np.random.default_rng(11)
    model = _model([helper.make_node("MatMul", ["X", "W"], ["Y"]), helper.make_node("Relu", ["Y"], ["Z"])],
                   [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))], ["Z"],
                   {"W": rng.standard_normal(w_shape).astype(np.float32)})
    _compare(model, [rng.standard_normal(x_shape).astype(np.float32)])


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_softmax_over_each_axis(axis):
    rng = np.random.default_rng(12)
    model = _model([helper.make_node("Softmax", ["X"], ["Y"], axis=axis)],
                   [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 5, 7])], ["Y"], {})
    _compare(model, [rng.standard_normal((2, 5, 7)).astype(np.float32)])


def _loop_kinds(func):
    """The loop kinds in the function's TVMScript (T.parallel, T.vectorized, T.unroll)."""
    text = func.script()
    return {k for k in ("parallel", "vectorized", "unroll") if f"T.{k}(" in text}


def _scheduled_module(model):
    target = targets.resolve(None)
    mod = schedule.legalized_module(tgr.from_onnx(model, target=target), target)
    return mod, schedule.schedule_cpu(mod, target)


def test_gemm_prim_funcs_are_scheduled_and_project_kernels_untouched():
    before, after = _scheduled_module(_mlp_gru_head())
    names = {gv.name_hint: gv for gv, f in after.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    matmuls = [n for n in names if "matmul" in n]
    assert matmuls
    for name in matmuls:
        func = after[names[name]]
        assert func.attrs["tirx.is_scheduled"]
        kinds = _loop_kinds(func)
        assert "vectorized" in kinds, (name, kinds)
    # The big per-step matmul (symbolic rows) runs in parallel.
    big = next(n for n in matmuls if "relu" in n)
    assert "parallel" in _loop_kinds(after[names[big]])
    # tvm_gru's own kernels are the very same functions.
    for gv, func in before.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc) and func.attrs is not None and func.attrs.get("tirx.is_scheduled"):
            assert after[gv].same_as(func)


def test_unschedulable_function_is_left_as_is():
    @tvm.script.ir_module
    class Mod:  # an opaque block (no iter vars to classify): no rule applies
        @tvm.script.tirx.prim_func(s_tir=True)
        def main(a: tvm.script.tirx.Buffer((4,), "int32"), b: tvm.script.tirx.Buffer((4,), "int32")):
            for i in range(4):
                with tvm.script.tirx.sblock("c"):
                    b[i] = a[i] + 1

    out = schedule.schedule_cpu(Mod, targets.resolve(None))
    assert out["main"].same_as(Mod["main"])


@pytest.mark.parametrize("rows", [["T", 1], [256]], ids=["symbolic-rows", "static-rows"])
def test_gemm_accumulators_live_on_the_stack(rows):
    """A GEMM's register tile is a stack buffer, never a TVMBackendAllocWorkspace one: LLVM cannot prove a
    workspace pointer free of aliases and wrote every accumulator back to memory after each FMA (14.8 -> 6.7 us
    for a 100x40 @ 40x128 + bias + relu). Static rows take a multi-row tile of 64 columns, kept under TVM's 1 KB
    stack limit."""
    rng = np.random.default_rng(13)
    model = _model([helper.make_node("MatMul", ["X", "W"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
                    helper.make_node("Relu", ["a"], ["Z"])],
                   [helper.make_tensor_value_info("X", TensorProto.FLOAT, [*rows, 40])], ["Z"],
                   {"W": rng.standard_normal((40, 128)).astype(np.float32),
                    "b": rng.standard_normal(128).astype(np.float32)})
    target = targets.resolve(None)
    _, after = _scheduled_module(model)
    (gv,) = [gv for gv, f in after.functions.items() if isinstance(f, tvm.tirx.PrimFunc) and "matmul" in gv.name_hint]
    with target:
        asm = tvm.compile(tvm.IRModule({"main": after[gv].with_attr("global_symbol", "main")}),
                          target=target).mod.inspect_source("asm")
    assert "vfmadd" in asm or "fmla" in asm
    assert "TVMBackendAllocWorkspace" not in asm
    x = rng.standard_normal([7 if r == "T" else r for r in rows] + [40]).astype(np.float32)
    _compare(model, [x])
