"""tvm_gru.relax.from_onnx: whole ONNX models through Relax, GRU nodes on tvm_gru's sequence kernel, checked
against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import tvm_gru.relax as tgr  # noqa: E402
from tvm_gru.interop import onnx_io  # noqa: E402

# The graphs' outputs carry a dtype and no shape: the ONNX checker that from_onnx runs (as TVM's does) warns.
pytestmark = pytest.mark.filterwarnings("ignore:Field 'shape' of 'type' is required:UserWarning")

TOL = 1e-5
OPSET = 14
B, I = 2, 5


def _rng(seed=0):
    return np.random.default_rng(seed)


def _gru_weights(rng, hidden, inputs, dirs=1, bias=True):
    w = {"W": (rng.standard_normal((dirs, 3 * hidden, inputs)) * 0.4).astype(np.float32),
         "R": (rng.standard_normal((dirs, 3 * hidden, hidden)) * 0.4).astype(np.float32)}
    if bias:
        w["B"] = (rng.standard_normal((dirs, 6 * hidden)) * 0.3).astype(np.float32)
    return w


def _gru_node(prefix, x, weights, outputs, lens="", h0="", **attrs):
    hidden = weights[f"{prefix}R"].shape[-1] if f"{prefix}R" in weights else None
    ins = [x, f"{prefix}W", f"{prefix}R", f"{prefix}B" if f"{prefix}B" in weights else "", lens, h0]
    while ins and ins[-1] == "":
        ins.pop()
    return helper.make_node("GRU", ins, outputs, name=f"{prefix}gru", hidden_size=hidden, **attrs)


def _model(nodes, inputs, outputs, initializers, opset=OPSET):
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                                                   for o in outputs],
                              [numpy_helper.from_array(v, k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _x_info(shape, name="X"):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _run_tvm(model, feeds, target=None, **kwargs):
    mod = tgr.from_onnx(model, **kwargs)
    ex = tgr.compile(mod, target)
    vm = tvm.relax.VirtualMachine(ex, tvm.cpu())
    return vm, _call(vm, model, feeds)


def _call(vm, model, feeds):
    args = [tvm.runtime.tensor(feeds[i.name]) for i in model.graph.input if i.name in feeds]
    out = vm["main"](*args)
    return [out.numpy()] if hasattr(out, "numpy") else [o.numpy() for o in out]


def _ort(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _check(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=TOL, atol=TOL)


def _compare(model, feeds, **kwargs):
    vm, got = _run_tvm(model, feeds, **kwargs)
    _check(got, _ort(model, feeds))
    return vm


# ------------------------------------------------------------------------------------------------ one GRU node
@pytest.mark.parametrize("attrs", [
    {},
    {"direction": "reverse"},
    {"direction": "bidirectional"},
    {"linear_before_reset": 1},
    {"activations": ["HardSigmoid", "Relu"]},
    {"direction": "bidirectional", "linear_before_reset": 1,
     "activations": ["Sigmoid", "Tanh", "HardSigmoid", "Relu"]},
], ids=["forward", "reverse", "bidirectional", "linear_before_reset", "hardsigmoid_relu", "bidir_mixed"])
def test_gru_alone_y_and_yh(attrs):
    rng = _rng(1)
    hidden, dirs = 8, 2 if attrs.get("direction") == "bidirectional" else 1
    w = _gru_weights(rng, hidden, I, dirs)
    model = _model([_gru_node("", "X", w, ["Y", "Y_h"], **attrs)], [_x_info(["T", B, I])], ["Y", "Y_h"], w)
    _compare(model, {"X": rng.standard_normal((6, B, I)).astype(np.float32)})


def test_symbolic_sequence_length_two_lengths():
    rng = _rng(2)
    w = _gru_weights(rng, 12, I)
    model = _model([_gru_node("", "X", w, ["Y", "Y_h"])], [_x_info(["T", B, I])], ["Y", "Y_h"], w)
    mod = tgr.from_onnx(model)
    vm = tvm.relax.VirtualMachine(tgr.compile(mod), tvm.cpu())
    for steps in (3, 7):
        feeds = {"X": rng.standard_normal((steps, B, I)).astype(np.float32)}
        got = _call(vm, model, feeds)
        assert got[0].shape == (steps, 1, B, 12)
        _check(got, _ort(model, feeds))


def test_no_bias_static_length():
    rng = _rng(3)
    w = _gru_weights(rng, 8, I, bias=False)
    model = _model([_gru_node("", "X", w, ["Y", "Y_h"])], [_x_info([4, B, I])], ["Y", "Y_h"], w)
    _compare(model, {"X": rng.standard_normal((4, B, I)).astype(np.float32)})


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_sequence_lens_graph_input(direction):
    rng = _rng(4)
    hidden, dirs, batch = 8, 2 if direction == "bidirectional" else 1, 3
    w = _gru_weights(rng, hidden, I, dirs)
    model = _model([_gru_node("", "X", w, ["Y", "Y_h"], lens="L", direction=direction)],
                   [_x_info(["T", batch, I]), helper.make_tensor_value_info("L", TensorProto.INT32, [batch])],
                   ["Y", "Y_h"], w)
    feeds = {"X": rng.standard_normal((6, batch, I)).astype(np.float32), "L": np.array([6, 2, 4], np.int32)}
    _compare(model, feeds)


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_initial_h_graph_input(direction):
    rng = _rng(5)
    hidden, dirs = 8, 2 if direction == "bidirectional" else 1
    w = _gru_weights(rng, hidden, I, dirs)
    model = _model([_gru_node("", "X", w, ["Y", "Y_h"], h0="H0", direction=direction)],
                   [_x_info(["T", B, I]), _x_info([dirs, B, hidden], "H0")], ["Y", "Y_h"], w)
    feeds = {"X": rng.standard_normal((5, B, I)).astype(np.float32),
             "H0": rng.standard_normal((dirs, B, hidden)).astype(np.float32)}
    _compare(model, feeds)


def test_sequence_lens_and_initial_h_with_empty_sequence():
    """A length-0 sequence: Y zeros, Y_h zeros (onnxruntime), not the initial state."""
    rng = _rng(6)
    hidden, batch = 8, 3
    w = _gru_weights(rng, hidden, I, 2)
    model = _model([_gru_node("", "X", w, ["Y", "Y_h"], lens="L", h0="H0", direction="bidirectional")],
                   [_x_info(["T", batch, I]), helper.make_tensor_value_info("L", TensorProto.INT32, [batch]),
                    _x_info([2, batch, hidden], "H0")], ["Y", "Y_h"], w)
    feeds = {"X": rng.standard_normal((5, batch, I)).astype(np.float32), "L": np.array([5, 0, 3], np.int32),
             "H0": rng.standard_normal((2, batch, hidden)).astype(np.float32)}
    _compare(model, feeds)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_layout_1_with_lengths_and_constant_initial_h(direction):
    """onnxruntime has no layout=1 GRU: the reference is the same node with layout=0 on transposed tensors."""
    rng = _rng(7)
    hidden, dirs, batch = 8, 2 if direction == "bidirectional" else 1, 3
    w = _gru_weights(rng, hidden, I, dirs)
    h0 = rng.standard_normal((batch, dirs, hidden)).astype(np.float32)
    lens_info = helper.make_tensor_value_info("L", TensorProto.INT32, [batch])
    model = _model([_gru_node("", "X", w, ["Y", "Y_h"], lens="L", h0="H0", direction=direction, layout=1)],
                   [_x_info([batch, "T", I]), lens_info], ["Y", "Y_h"], {**w, "H0": h0})
    reference = _model([_gru_node("", "X", w, ["Y", "Y_h"], lens="L", h0="H0", direction=direction)],
                       [_x_info(["T", batch, I]), lens_info], ["Y", "Y_h"], {**w, "H0": h0.transpose(1, 0, 2)})
    vm = tvm.relax.VirtualMachine(tgr.compile(tgr.from_onnx(model)), tvm.cpu())
    for steps, lens in ((6, [6, 1, 4]), (4, [2, 4, 3])):
        x, lens = rng.standard_normal((batch, steps, I)).astype(np.float32), np.array(lens, np.int32)
        y, y_h = _ort(reference, {"X": x.transpose(1, 0, 2), "L": lens})
        _check(_call(vm, model, {"X": x, "L": lens}), [y.transpose(2, 0, 1, 3), y_h.transpose(1, 0, 2)])


# ------------------------------------------------------------------------------------------------ whole models
def test_gru_gemm_softmax_head_on_yh():
    rng = _rng(8)
    hidden, classes = 16, 4
    w = _gru_weights(rng, hidden, I)
    w["shape"] = np.array([B, hidden], np.int64)
    w["Wd"] = (rng.standard_normal((hidden, classes)) * 0.5).astype(np.float32)
    w["bd"] = (rng.standard_normal(classes) * 0.1).astype(np.float32)
    nodes = [_gru_node("", "X", w, ["Y", "Y_h"]),  # Y is not read: the kernel writes only the states
             helper.make_node("Reshape", ["Y_h", "shape"], ["h"]),
             helper.make_node("Gemm", ["h", "Wd", "bd"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)]
    model = _model(nodes, [_x_info(["T", B, I])], ["probs"], w)
    vm = _compare(model, {"X": rng.standard_normal((7, B, I)).astype(np.float32)})
    feeds = {"X": rng.standard_normal((3, B, I)).astype(np.float32)}
    _check(_call(vm, model, feeds), _ort(model, feeds))


def test_two_stacked_grus():
    rng = _rng(9)
    w1 = {f"a{k}": v for k, v in _gru_weights(rng, 8, I, 2).items()}
    w2 = {f"b{k}": v for k, v in _gru_weights(rng, 12, 16).items()}
    w = {**w1, **w2, "perm_shape": np.array([0, 0, 16], np.int64)}
    nodes = [_gru_node("a", "X", w, ["Y1"], direction="bidirectional"),  # (T, 2, B, 8)
             helper.make_node("Transpose", ["Y1"], ["Y1t"], perm=[0, 2, 1, 3]),  # (T, B, 2, 8)
             helper.make_node("Reshape", ["Y1t", "perm_shape"], ["X2"]),  # (T, B, 16)
             _gru_node("b", "X2", w, ["Y2", "Y2_h"], linear_before_reset=1)]
    model = _model(nodes, [_x_info(["T", B, I])], ["Y2", "Y2_h"], w)
    _compare(model, {"X": rng.standard_normal((5, B, I)).astype(np.float32)})


def test_only_y_h_output_listed():
    rng = _rng(10)
    w = _gru_weights(rng, 8, I, 2)
    model = _model([_gru_node("", "X", w, ["", "Y_h"], direction="bidirectional")], [_x_info(["T", B, I])],
                   ["Y_h"], w)
    _compare(model, {"X": rng.standard_normal((4, B, I)).astype(np.float32)})


def test_model_without_gru_matches_tvm_importer():
    from tvm.relax.frontend.onnx import from_onnx as tvm_from_onnx

    rng = _rng(11)
    w = {"W1": rng.standard_normal((I, 6)).astype(np.float32), "b1": rng.standard_normal(6).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["X", "W1"], ["m"]), helper.make_node("Add", ["m", "b1"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Softmax", ["r"], ["out"], axis=-1)]
    model = _model(nodes, [_x_info([3, I])], ["out"], w)
    ours, theirs = tgr.from_onnx(model), tvm_from_onnx(model)
    tvm.ir.assert_structural_equal(ours, theirs)
    feeds = {"X": rng.standard_normal((3, I)).astype(np.float32)}
    vm_ours = tvm.relax.VirtualMachine(tgr.compile(ours), tvm.cpu())
    vm_theirs = tvm.relax.VirtualMachine(tvm.compile(theirs, target="llvm"), tvm.cpu())
    got, want = _call(vm_ours, model, feeds), _call(vm_theirs, model, feeds)
    _check(got, want)
    _check(got, _ort(model, feeds))


def test_compile_with_dlight():
    rng = _rng(12)
    w = _gru_weights(rng, 8, I)
    w["Wd"] = rng.standard_normal((8, 3)).astype(np.float32)
    w["shape"] = np.array([B, 8], np.int64)
    nodes = [_gru_node("", "X", w, ["Y", "Y_h"]), helper.make_node("Reshape", ["Y_h", "shape"], ["h"]),
             helper.make_node("MatMul", ["h", "Wd"], ["out"])]
    model = _model(nodes, [_x_info(["T", B, I])], ["out"], w)
    vm = tvm.relax.VirtualMachine(tgr.compile(tgr.from_onnx(model), dlight=True), tvm.cpu())
    feeds = {"X": rng.standard_normal((4, B, I)).astype(np.float32)}
    _check(_call(vm, model, feeds), _ort(model, feeds))


def test_keep_params_in_input():
    """The non-GRU initializers become parameters; the GRU's weights stay embedded (its initializers are unused
    parameters)."""
    rng = _rng(16)
    w = _gru_weights(rng, 8, I)
    w["Wd"] = rng.standard_normal((8, 3)).astype(np.float32)
    w["shape"] = np.array([B, 8], np.int64)
    nodes = [_gru_node("", "X", w, ["Y", "Y_h"]), helper.make_node("Reshape", ["Y_h", "shape"], ["h"]),
             helper.make_node("MatMul", ["h", "Wd"], ["out"])]
    model = _model(nodes, [_x_info(["T", B, I])], ["out"], w)
    mod = tgr.from_onnx(model, keep_params_in_input=True)
    params = mod["main"].attrs["params"]
    vm = tvm.relax.VirtualMachine(tgr.compile(mod), tvm.cpu())
    feeds = {"X": rng.standard_normal((4, B, I)).astype(np.float32)}
    got = vm["main"](tvm.runtime.tensor(feeds["X"]), *params)
    _check([got.numpy()], _ort(model, feeds))


# ------------------------------------------------------------------------------------------------ refusals
def test_unsupported_gru_raises_tvm_grus_error():
    rng = _rng(13)
    w = _gru_weights(rng, 8, I)
    model = _model([_gru_node("", "X", w, ["Y", "Y_h"], clip=3.0)], [_x_info(["T", B, I])], ["Y", "Y_h"], w)
    with pytest.raises(ValueError) as expected:
        onnx_io.from_onnx(model)
    with pytest.raises(ValueError) as got:
        tgr.from_onnx(model)
    assert str(got.value) == str(expected.value)
    assert "clip" in str(got.value)


def test_symbolic_batch_raises():
    rng = _rng(14)
    w = _gru_weights(rng, 8, I)
    model = _model([_gru_node("", "X", w, ["Y", "Y_h"])], [_x_info(["T", "N", I])], ["Y", "Y_h"], w)
    with pytest.raises(ValueError, match="batch size.*symbolic"):
        tgr.from_onnx(model)
    # a static batch from shape_dict makes it importable
    feeds = {"X": rng.standard_normal((3, B, I)).astype(np.float32)}
    vm, got = _run_tvm(model, feeds, shape_dict={"X": [tvm.tirx.Var("T", "int64"), B, I]})
    _check(got, _ort(model, feeds))


def test_other_unsupported_ops_still_reported():
    rng = _rng(15)
    w = _gru_weights(rng, 8, I)
    nodes = [_gru_node("", "X", w, ["Y", "Y_h"]), helper.make_node("LSTM", ["X", "W", "R"], ["Z"], hidden_size=8)]
    graph = helper.make_graph(nodes, "g", [_x_info(["T", B, I])],
                              [helper.make_tensor_value_info("Z", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in w.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    with pytest.raises(tvm.error.OpNotImplemented, match="LSTM"):
        tgr.from_onnx(model)
