"""ONNX graphs are untrusted input: every GRU input is folded to a constant, kept as a run-time input, or refused.

Models are built with onnx.helper; where onnxruntime can run them, tvm_gru's numbers are compared with its.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, external_data_helper, helper, numpy_helper

import tvm_gru
from tvm_gru.interop.onnx_io import from_onnx, run_onnx
from tvm_gru.layers.bidirectional import Bidirectional

ort = pytest.importorskip("onnxruntime")

H, I, T, BATCH = 4, 3, 5, 3
ATOL = 2e-6
RNG = np.random.default_rng(21)
W0 = RNG.uniform(-0.6, 0.6, (1, 3 * H, I)).astype("float32")
R0 = RNG.uniform(-0.6, 0.6, (1, 3 * H, H)).astype("float32")
B0 = RNG.uniform(-0.5, 0.5, (1, 6 * H)).astype("float32")
H0 = RNG.uniform(-1, 1, (1, BATCH, H)).astype("float32")
X0 = RNG.uniform(-1, 1, (T, BATCH, I)).astype("float32")
LENS = np.array([5, 2, 0], np.int32)


def _model(gru_inputs, *, inits=(), nodes=(), graph_inputs=(), opset=14, ir=8, **attrs):
    """One GRU node ``g`` reading ``gru_inputs`` (after X); ``inits`` maps names to arrays, ``graph_inputs`` to
    (elem type, shape) beside ``X``."""
    attrs.setdefault("hidden_size", H)
    gru = helper.make_node("GRU", ["X", *gru_inputs], ["Y", "Y_h"], name="g", **attrs)
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(X0.shape))]
    inputs += [helper.make_tensor_value_info(n, t, s) for n, (t, s) in dict(graph_inputs).items()]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("Y", "Y_h")]
    graph = helper.make_graph([*nodes, gru], "g", inputs, outputs,
                              initializer=[numpy_helper.from_array(a, n) for n, a in dict(inits).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir
    return model


def _ort(model, **feeds):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # initializers listed as inputs make onnxruntime warn
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(["Y", "Y_h"], {"X": X0, **feeds})


def _assert_same(ours, theirs):
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=0, atol=ATOL)


def _const(name, array):
    return helper.make_node("Constant", [], [name], name=f"const_{name}",
                            value=numpy_helper.from_array(np.asarray(array), name))


# ------------------------------------------------------------------------------------------------ folding
# B through the chains exporters write: each must give the node's bias (the v1 defect: use_bias=False).
BIAS_CHAINS = {
    "identity-of-initializer": ([helper.make_node("Identity", ["B_init"], ["B"], name="id")], {"B_init": B0}),
    "cast-of-constant": ([_const("B64", B0.astype("float64")),
                          helper.make_node("Cast", ["B64"], ["B"], name="cast", to=TensorProto.FLOAT)], {}),
    "constant-identity-cast-identity": ([_const("Bc", B0.astype("float64")),
                                         helper.make_node("Identity", ["Bc"], ["B1"], name="id1"),
                                         helper.make_node("Cast", ["B1"], ["B2"], name="cast", to=TensorProto.FLOAT),
                                         helper.make_node("Identity", ["B2"], ["B"], name="id2")], {}),
}


@pytest.mark.parametrize("chain", list(BIAS_CHAINS))
def test_bias_through_constant_chains_matches_onnxruntime(chain):
    nodes, inits = BIAS_CHAINS[chain]
    model = _model(["W", "R", "B"], inits={"W": W0, "R": R0, **inits}, nodes=nodes)
    layer = from_onnx(model)
    assert layer.cell.config.use_bias is True
    _assert_same(run_onnx(layer, X0), _ort(model))


def test_every_input_folded_through_constant_nodes_matches_onnxruntime():
    # W: Identity of an initializer; R: Cast of a float64 initializer; B: Constant tensor; sequence_lens: Cast of a
    # Constant value_ints (int64 -> int32); initial_h: Identity of a Constant.
    nodes = [helper.make_node("Identity", ["W_init"], ["W"], name="idW"),
             helper.make_node("Cast", ["R64"], ["R"], name="castR", to=TensorProto.FLOAT),
             _const("B", B0),
             helper.make_node("Constant", [], ["lens64"], name="lens", value_ints=LENS.tolist()),
             helper.make_node("Cast", ["lens64"], ["L"], name="castL", to=TensorProto.INT32),
             _const("h_const", H0),
             helper.make_node("Identity", ["h_const"], ["h"], name="idh")]
    model = _model(["W", "R", "B", "L", "h"], inits={"W_init": W0, "R64": R0.astype("float64")}, nodes=nodes)
    layer = from_onnx(model)
    np.testing.assert_array_equal(layer.onnx_inputs["sequence_lens"], LENS)
    np.testing.assert_array_equal(layer.onnx_inputs["initial_h"], H0)
    assert layer.onnx_required_inputs == {}
    _assert_same(run_onnx(layer, X0), _ort(model))


# ------------------------------------------------------------------------------------------------ weights refused
WEIGHT_REFUSALS = {
    "B-graph-input": (dict(graph_inputs={"B": (TensorProto.FLOAT, [1, 6 * H])}, inits={"W": W0, "R": R0}),
                      r"GRU node g: input 'B' \(input 3 of the node\) comes from the graph input 'B', not a constant"),
    "B-identity-of-graph-input": (
        dict(graph_inputs={"B_in": (TensorProto.FLOAT, [1, 6 * H])}, inits={"W": W0, "R": R0},
             nodes=[helper.make_node("Identity", ["B_in"], ["B"], name="id")]),
        r"input 'B' \(input 3 of the node\) comes from the graph input 'B_in'"),
    "W-graph-input": (dict(graph_inputs={"W": (TensorProto.FLOAT, list(W0.shape))}, inits={"R": R0, "B": B0}),
                      r"input 'W' \(input 1 of the node\) comes from the graph input 'W', not a constant"),
    "R-computed": (dict(inits={"W": W0, "R1": R0, "R2": R0, "B": B0},
                        nodes=[helper.make_node("Add", ["R1", "R2"], ["R"], name="add")]),
                   r"input 'R' \(input 2 of the node\) comes from the output 'R' of the Add node 'add'"),
    "B-overridable-initializer": (
        dict(graph_inputs={"B": (TensorProto.FLOAT, [1, 6 * H])}, inits={"W": W0, "R": R0, "B": B0}),
        r"input 'B' .* comes from the graph input 'B' \(an initializer also listed as a graph input, which a "
        r"caller may override"),
    "B-undefined": (dict(inits={"W": W0, "R": R0}), r"input 'B' .* comes from 'B', which no initializer"),
    "B-cycle": (dict(inits={"W": W0, "R": R0}, nodes=[helper.make_node("Identity", ["B"], ["B1"], name="i1"),
                                                       helper.make_node("Identity", ["B1"], ["B"], name="i2")]),
                r"input 'B' \('B'\): tensor 'B' depends on itself"),
    "B-cast-to-int": (dict(inits={"W": W0, "R": R0, "Bf": B0},
                           nodes=[helper.make_node("Cast", ["Bf"], ["B"], name="toint", to=TensorProto.INT32)]),
                      r"input 'B' .*the Cast node 'toint' casts float32 to int32: float-to-integer casts are not"),
    "R-float64": (dict(inits={"W": W0, "R": R0.astype("float64"), "B": B0}),
                  r"input 'R' has dtype float64; expected float32, the dtype of 'W'"),
    "B-float64": (dict(inits={"W": W0, "R": R0, "B": B0.astype("float64")}),
                  r"input 'B' has dtype float64; expected float32"),
}


@pytest.mark.parametrize("case", list(WEIGHT_REFUSALS))
def test_weights_that_are_not_constants_are_refused_by_name(case):
    kwargs, match = WEIGHT_REFUSALS[case]
    with pytest.raises(ValueError, match=match):
        from_onnx(_model(["W", "R", "B"], **kwargs))


def test_overridable_initializer_semantics_follow_the_ir_version():
    """From IR 4 on, an initializer listed as a graph input is a default that onnxruntime lets a feed replace (so a
    fixed layer cannot stand for it: refused above); before IR 4 every initializer was listed so, as a constant."""
    kwargs = dict(graph_inputs={"B": (TensorProto.FLOAT, [1, 6 * H])}, inits={"W": W0, "R": R0, "B": B0}, opset=7)
    overridable = _model(["W", "R", "B"], ir=8, **kwargs)
    default, fed = _ort(overridable)[1], _ort(overridable, B=np.zeros_like(B0))[1]
    assert np.abs(default - fed).max() > 0.1  # the feed wins: B is not a constant
    legacy = _model(["W", "R", "B"], ir=3, **kwargs)
    layer = from_onnx(legacy)
    assert layer.cell.config.use_bias is True
    _assert_same(run_onnx(layer, X0), _ort(legacy))


# ------------------------------------------------------------------------------------------------ run-time inputs
def test_initial_h_graph_input_is_a_required_run_time_input():
    model = _model(["W", "R", "B", "", "h0"], inits={"W": W0, "R": R0, "B": B0},
                   graph_inputs={"h0": (TensorProto.FLOAT, [1, BATCH, H])})
    layer = from_onnx(model)
    assert layer.onnx_required_inputs == {"initial_h": "the graph input 'h0'"}
    with pytest.raises(ValueError, match=r"`initial_h` must be passed: the imported GRU node reads it from the graph "
                                         r"input 'h0'"):
        run_onnx(layer, X0)
    _assert_same(run_onnx(layer, X0, initial_h=H0), _ort(model, h0=H0))


def test_sequence_lens_graph_input_is_a_required_run_time_input():
    model = _model(["W", "R", "B", "L"], inits={"W": W0, "R": R0, "B": B0},
                   graph_inputs={"L": (TensorProto.INT32, [BATCH])})
    layer = from_onnx(model)
    with pytest.raises(ValueError, match=r"`sequence_lens` must be passed: .* the graph input 'L'"):
        run_onnx(layer, X0)
    _assert_same(run_onnx(layer, X0, sequence_lens=LENS), _ort(model, L=LENS))


def test_initial_h_initializer_listed_as_input_is_an_overridable_default():
    model = _model(["W", "R", "B", "", "h0"], inits={"W": W0, "R": R0, "B": B0, "h0": H0},
                   graph_inputs={"h0": (TensorProto.FLOAT, [1, BATCH, H])})
    layer = from_onnx(model)
    _assert_same(run_onnx(layer, X0), _ort(model))  # the default, as onnxruntime without a feed
    other = -H0
    _assert_same(run_onnx(layer, X0, initial_h=other), _ort(model, h0=other))


def test_initial_h_computed_by_another_op():
    """A zero fill of any shape (torch's Expand of a zero Constant, ConstantOfShape 0) is the default state; any
    other computed state must be passed at run time."""
    shape = [_const("shape", np.array([1, BATCH, H], np.int64))]
    zero_expand = shape + [_const("zero", np.zeros(1, "float32")),
                           helper.make_node("Expand", ["zero", "shape"], ["h"], name="expand")]
    zero_fill = shape + [helper.make_node("ConstantOfShape", ["shape"], ["h"], name="fill",
                                          value=numpy_helper.from_array(np.zeros(1, "float32")))]
    half_expand = shape + [_const("half", np.full(1, 0.5, "float32")),
                           helper.make_node("Expand", ["half", "shape"], ["h"], name="expand")]
    inits = {"W": W0, "R": R0, "B": B0}
    for nodes in (zero_expand, zero_fill):
        model = _model(["W", "R", "B", "", "h"], inits=inits, nodes=nodes)
        layer = from_onnx(model)
        assert layer.onnx_required_inputs == {} and layer.onnx_inputs["initial_h"] is None
        _assert_same(run_onnx(layer, X0), _ort(model))
    layer = from_onnx(_model(["W", "R", "B", "", "h"], inits=inits, nodes=half_expand))
    assert layer.onnx_required_inputs == {"initial_h": "the output 'h' of the Expand node 'expand'"}
    with pytest.raises(ValueError, match="`initial_h` must be passed"):
        run_onnx(layer, X0)


# ------------------------------------------------------------------------------------------------ values and shapes
STATE_REFUSALS = {
    "lens-negative": (dict(L=np.array([-1, 2, 3], np.int32)),
                      r"input 'sequence_lens' values must be in 0..sequence length; received \[-1, 2, 3\]"),
    "lens-float": (dict(L=np.array([5.0, 2.0, 1.0], np.float32)),
                   r"input 'sequence_lens' must hold integers \(ONNX: int32\); received dtype float32"),
    "lens-2d": (dict(L=np.array([[5, 2, 1]], np.int32)),
                r"input 'sequence_lens' must have shape \(batch,\) = \(batch,\); received \(1, 3\)"),
    "h-two-directions": (dict(h=np.zeros((2, BATCH, H), "float32")),
                         r"input 'initial_h' must have shape \(num_directions, batch, hidden_size\) = \(1, batch, 4\) "
                         r"for layout 0 and 1 direction\(s\); received \(2, 3, 4\)"),
    "h-hidden": (dict(h=np.zeros((1, BATCH, H + 1), "float32")), r"input 'initial_h' must have shape .* \(1, 3, 5\)"),
    "h-2d": (dict(h=np.zeros((BATCH, H), "float32")), r"input 'initial_h' must have shape .* received \(3, 4\)"),
    "h-float64": (dict(h=np.zeros((1, BATCH, H), "float64")),
                  r"input 'initial_h' has dtype float64; expected float32, the dtype of 'W'"),
}


@pytest.mark.parametrize("case", list(STATE_REFUSALS))
def test_constant_sequence_lens_and_initial_h_are_validated_at_import(case):
    values, match = STATE_REFUSALS[case]
    slots = ["W", "R", "B", "L" if "L" in values else "", "h" if "h" in values else ""]
    with pytest.raises(ValueError, match=r"GRU node g: " + match):
        from_onnx(_model(slots, inits={"W": W0, "R": R0, "B": B0, **values}))


def test_run_time_sequence_lens_and_initial_h_are_validated():
    layer = from_onnx(_model(["W", "R", "B"], inits={"W": W0, "R": R0, "B": B0}))
    refusals = [
        (dict(sequence_lens=[5, 6, 1]), r"`sequence_lens` values must be in 0..5; received \[5, 6, 1\]"),
        (dict(sequence_lens=[2, 1]), r"`sequence_lens` must have shape \(batch,\) = \(3,\); received \(2,\)"),
        (dict(sequence_lens=[2.5, 1.0, 1.0]), r"`sequence_lens` must hold integers"),
        (dict(initial_h=np.zeros((2, BATCH, H), "float32")), r"`initial_h` must have shape \(num_directions, batch, "
                                                              r"hidden_size\) = \(1, 3, 4\) .* received \(2, 3, 4\)"),
        (dict(initial_h=np.zeros((1, BATCH + 1, H), "float32")),
         r"`initial_h` must have shape .* received \(1, 4, 4\)"),
    ]
    for kwargs, match in refusals:
        with pytest.raises(ValueError, match=match):
            run_onnx(layer, X0, **kwargs)
    with pytest.raises(ValueError, match=r"`X` must have shape \(sequence, batch, input_size\) for layout 0"):
        run_onnx(layer, X0[0])


def test_bidirectional_initial_h_needs_both_directions():
    W2, R2, B2 = (np.concatenate([a, a[:, ::-1]]) for a in (W0, R0, B0))
    model = _model(["W", "R", "B", "", "h"], inits={"W": W2, "R": R2, "B": B2, "h": H0}, direction="bidirectional")
    with pytest.raises(ValueError, match=r"input 'initial_h' must have shape .* = \(2, batch, 4\) for layout 0 and 2 "
                                         r"direction\(s\); received \(1, 3, 4\)"):
        from_onnx(model)
    h2 = np.concatenate([H0, -H0])
    model = _model(["W", "R", "B", "", "h"], inits={"W": W2, "R": R2, "B": B2, "h": h2}, direction="bidirectional")
    wrapper = from_onnx(model)
    assert isinstance(wrapper, Bidirectional)
    _assert_same(run_onnx(wrapper, X0), _ort(model))
    with pytest.raises(ValueError, match=r"`initial_h` must have shape .* received \(1, 3, 4\)"):
        run_onnx(wrapper, X0, initial_h=H0)


def test_layout_1_initial_h_is_batch_major():
    """Layout 1 orders initial_h (batch, num_directions, hidden); onnxruntime runs only layout 0, so the reference is
    the layout-0 node on transposed inputs."""
    h_batch_major = np.ascontiguousarray(H0.transpose(1, 0, 2))
    inits = {"W": W0, "R": R0, "B": B0}
    reference = _model(["W", "R", "B", "L", "h"], inits={**inits, "L": LENS, "h": H0})
    Y, Y_h = _ort(reference)
    layer = from_onnx(_model(["W", "R", "B", "L", "h"], inits={**inits, "L": LENS, "h": h_batch_major}, layout=1))
    Y1, Y_h1 = run_onnx(layer, np.ascontiguousarray(X0.transpose(1, 0, 2)))
    np.testing.assert_allclose(Y1.transpose(1, 2, 0, 3), Y, rtol=0, atol=ATOL)
    np.testing.assert_allclose(Y_h1.transpose(1, 0, 2), Y_h, rtol=0, atol=ATOL)


# ------------------------------------------------------------------------------------------------ opsets
@pytest.mark.parametrize("opset", [7, 14, 22, onnx.defs.onnx_opset_version()])
def test_supported_opsets_match_onnxruntime(opset):
    model = _model(["W", "R", "B"], inits={"W": W0, "R": R0, "B": B0}, opset=opset, ir=10)
    _assert_same(run_onnx(from_onnx(model), X0), _ort(model))


def test_unsupported_opsets_are_refused_by_number():
    inits = {"W": W0, "R": R0, "B": B0}
    newest = onnx.defs.onnx_opset_version()
    with pytest.raises(ValueError, match=r"GRU node g: ai.onnx opset 6 means GRU-3, which tvm_gru does not implement"):
        from_onnx(_model(["W", "R", "B"], inits=inits, opset=6, ir=3))
    with pytest.raises(ValueError, match=rf"ai.onnx opset {newest + 1} is newer than the installed onnx"):
        from_onnx(_model(["W", "R", "B"], inits=inits, opset=newest + 1))
    with pytest.raises(ValueError, match=r"attribute 'layout' exists from GRU-14 \(opset 14\) on; the model's opset "
                                         r"is 7"):
        from_onnx(_model(["W", "R", "B"], inits=inits, opset=7, layout=0))
    with pytest.raises(ValueError, match=rf"`opset` must be an int in 7\.\.{newest} \(GRU-7 and later\); received "
                                         rf"{newest + 1}"):
        from_onnx(_model(["W", "R", "B"], inits=inits)).to_onnx(opset=newest + 1)  # nothing from_onnx would refuse
    model = _model(["W", "R", "B"], inits=inits)
    model.opset_import[0].domain = "com.example"
    with pytest.raises(ValueError, match=r"the model imports the ai.onnx opset nowhere; expected one ai.onnx opset "
                                         r"in 7\.\."):
        from_onnx(model)


# ------------------------------------------------------------------------------------------------ external data
def _external_model(folder, location, data=W0):
    """A model file in ``folder`` whose W lives in the external file ``location`` (written by the caller)."""
    model = _model(["W", "R", "B"], inits={"W": data, "R": R0, "B": B0})
    tensor = next(t for t in model.graph.initializer if t.name == "W")
    external_data_helper.set_external_data(tensor, location, offset=0, length=data.nbytes)
    tensor.ClearField("raw_data")
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path, model


def test_external_data_inside_the_model_folder_is_read(tmp_path):
    path, _ = _external_model(tmp_path, "weights/W.bin")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "W.bin").write_bytes(W0.tobytes())
    reference = _model(["W", "R", "B"], inits={"W": W0, "R": R0, "B": B0})
    _assert_same(run_onnx(from_onnx(path), X0), _ort(reference))


@pytest.mark.parametrize("how", ["parent", "absolute", "symlink", "symlinked-folder", "hardlink"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path, how):
    folder = tmp_path / "model"
    folder.mkdir()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(W0.tobytes())  # a file that would even parse as W
    location = {"parent": "../secret.bin", "absolute": str(secret), "symlink": "W.bin",
                "symlinked-folder": "data/W.bin", "hardlink": "W.bin"}[how]
    path, _ = _external_model(folder, location)
    if how == "symlink":
        (folder / "W.bin").symlink_to(secret)
    elif how == "symlinked-folder":
        (folder / "data").symlink_to(tmp_path)
        os.link(secret, tmp_path / "W.bin")
    elif how == "hardlink":
        os.link(secret, folder / "W.bin")
    match = {"parent": r"must be a relative path inside the model folder .* \(no '\.\.', not absolute\); received "
                       r"'\.\./secret\.bin'",
             "absolute": r"must be a relative path inside the model folder",
             "symlink": r"W\.bin is a symbolic link; external data must be a regular file inside the model folder",
             "symlinked-folder": r"data is a symbolic link",
             "hardlink": r"W\.bin has 2 hard links"}[how]
    with pytest.raises(ValueError, match=rf"GRU node g: input 'W' \('W'\): tensor 'W' keeps its data in the external "
                                         rf"file .*{match}"):
        from_onnx(path)


def test_external_data_of_an_in_memory_model_is_refused(tmp_path, monkeypatch):
    _, model = _external_model(tmp_path, "W.bin")
    (tmp_path / "W.bin").write_bytes(W0.tobytes())
    monkeypatch.chdir(tmp_path)  # not read relative to the working directory either
    for given in (model, model.SerializeToString()):
        with pytest.raises(ValueError, match=r"tensor 'W' keeps its data in the external file 'W.bin', but the model "
                                             r"was not given as a path"):
            from_onnx(given)


def _version(text: str) -> tuple:
    return tuple(int(part) for part in re.match(r"\d+(\.\d+)*", text).group(0).split("."))


def test_onnx_floor_refuses_external_data_links():
    """The onnx floor is the first release whose own loader refuses external data linked out of the model folder
    (1.21.0: CVE-2026-27489, CVE-2026-34446, CVE-2026-34447), and the installed onnx meets it."""
    pyproject = Path(tvm_gru.__file__).resolve().parents[1] / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("tvm_gru runs from an installed copy: no pyproject.toml beside it")
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    (floor,) = [d.split(">=", 1)[1] for d in deps if re.match(r"onnx\s*>=", d)]
    assert _version(floor) >= (1, 21, 0)
    assert _version(onnx.__version__) >= _version(floor)
