"""ONNX import/export against onnxruntime's GRU (and torch.onnx.export when torch is installed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import tolerance
from onnx import TensorProto, helper, numpy_helper

from tvm_gru.interop.onnx_export import cell_to_onnx
from tvm_gru.interop.onnx_io import from_onnx, lengths_to_mask, run_onnx
from tvm_gru.layers.bidirectional import Bidirectional
from tvm_gru.layers.cell import GRUCell
from tvm_gru.layers.gru import GRU

ort = pytest.importorskip("onnxruntime")

# Every Keras activation with an ONNX equivalent; each appears once as f and once as g.
ACTS = ["sigmoid", "tanh", "relu", "hard_sigmoid", "linear", "elu", "softsign", "softplus", "leaky_relu"]
PAIRS = [(f, g, i % 2 == 1) for i, (f, g) in enumerate(zip(ACTS, ACTS[1:] + ACTS[:1]))]
PAIRS.append(("hard_sigmoid", "tanh", True))
PAIRS.append(("hard_sigmoid", "tanh", False))
ATOL = 2e-6


def _session(model):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _random_layer(units, input_dim, seed=0, **kwargs):
    layer = GRU(units, return_sequences=True, return_state=True, time_major=True, **kwargs)
    rng = np.random.default_rng(seed)
    cfg = layer.cell.config
    weights = [rng.uniform(-0.5, 0.5, (input_dim, 3 * units)), rng.uniform(-0.5, 0.5, (units, 3 * units))]
    if cfg.use_bias:
        weights.append(rng.uniform(-0.5, 0.5, cfg.bias_shape))
    layer.set_weights([w.astype(cfg.dtype) for w in weights])
    return layer


@pytest.mark.parametrize("f, g, reset_after", PAIRS, ids=[f"{f}-{g}-ra{int(ra)}" for f, g, ra in PAIRS])
def test_export_runs_in_onnxruntime_both_directions(f, g, reset_after, tmp_path):
    x = np.random.default_rng(1).uniform(-1.5, 1.5, (6, 3, 4)).astype("float32")
    for backwards in (False, True):
        layer = _random_layer(5, 4, recurrent_activation=f, activation=g, reset_after=reset_after,
                              go_backwards=backwards)
        path = tmp_path / "gru.onnx"
        layer.to_onnx(path, opset=14)
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        node = model.graph.node[0]
        assert node.op_type == "GRU" and len(model.graph.node) == 1
        Y, Y_h = _session(model).run(None, {"X": x})
        seq, state = layer(x)
        atol = tolerance("float32", Y)  # relu / linear candidates grow: the tolerance scales with |Y|
        np.testing.assert_allclose(Y[:, 0], seq[::-1] if backwards else seq, rtol=0, atol=atol)
        np.testing.assert_allclose(Y_h[0], state, rtol=0, atol=atol)
        # and back: the imported layer reproduces onnxruntime
        Y2, Y_h2 = run_onnx(from_onnx(path), x)
        np.testing.assert_allclose(Y2, Y, rtol=0, atol=atol)
        np.testing.assert_allclose(Y_h2, Y_h, rtol=0, atol=atol)


def test_exact_mapping_of_the_v1_default():
    layer = _random_layer(3, 2)
    model = layer.to_onnx()
    attrs = {a.name: helper.get_attribute_value(a) for a in model.graph.node[0].attribute}
    assert attrs["activations"] == [b"HardSigmoid", b"Tanh"]
    assert attrs["activation_alpha"] == [pytest.approx(0.2)] and attrs["activation_beta"] == [pytest.approx(0.5)]
    assert attrs["linear_before_reset"] == 0 and attrs["hidden_size"] == 3
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    kernel, recurrent_kernel, bias = layer.get_weights()
    np.testing.assert_array_equal(inits["W"], kernel.T[None])
    np.testing.assert_array_equal(inits["R"], recurrent_kernel.T[None])
    np.testing.assert_array_equal(inits["B"], np.r_[bias, np.zeros(9, "float32")][None])


@pytest.mark.parametrize("name", ["selu", "swish", "gelu", "exponential", "mish", "relu6"])
def test_unrepresentable_activation_is_named(name):
    layer = _random_layer(3, 2, activation=name)
    with pytest.raises(ValueError, match=f"activation.*{name}"):
        layer.to_onnx()


def test_cell_to_onnx_one_step():
    cell = GRUCell(6, reset_after=True, recurrent_activation="sigmoid")
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (3, 4)).astype("float32")
    h = rng.uniform(-1, 1, (3, 6)).astype("float32")
    out, _ = cell(x, [h])
    model = cell_to_onnx(cell, opset=14)
    (Y_h,) = _session(model).run(None, {"X": x[None], "initial_h": h[None]})
    np.testing.assert_allclose(Y_h[0], out, rtol=0, atol=ATOL)


def _gru_model(W, R, B=None, *, initial_h=None, lens_input=False, opset=14, **attrs):
    T, batch = 5, 3
    inputs = ["X", "W", "R", "B" if B is not None else "", "sequence_lens" if lens_input else "",
              "initial_h" if initial_h is not None else ""]
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R")]
    if B is not None:
        inits.append(numpy_helper.from_array(B, "B"))
    if initial_h is not None:
        inits.append(numpy_helper.from_array(initial_h, "initial_h"))
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, batch, W.shape[2]])]
    if lens_input:
        graph_inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, [batch]))
    node = helper.make_node("GRU", inputs, ["Y", "Y_h"], name="g", hidden_size=R.shape[2], **attrs)
    outs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None)]
    graph = helper.make_graph([node], "g", graph_inputs, outs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _weights(units=4, input_dim=3, seed=3):
    rng = np.random.default_rng(seed)
    W = rng.uniform(-0.6, 0.6, (1, 3 * units, input_dim)).astype("float32")
    R = rng.uniform(-0.6, 0.6, (1, 3 * units, units)).astype("float32")
    B = rng.uniform(-0.5, 0.5, (1, 6 * units)).astype("float32")
    return W, R, B


@pytest.mark.parametrize("lbr", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_import_foreign_node_with_lengths_and_initial_h(lbr, direction):
    W, R, B = _weights()
    h0 = np.random.default_rng(4).uniform(-1, 1, (1, 3, 4)).astype("float32")
    # Default activations (Sigmoid, Tanh); a recurrent bias on every gate, also with lbr=0 (folded on import).
    model = _gru_model(W, R, B, initial_h=h0, lens_input=True, linear_before_reset=lbr, direction=direction)
    x = np.random.default_rng(5).uniform(-1, 1, (5, 3, 3)).astype("float32")
    lens = np.array([5, 2, 0], np.int32)
    Y, Y_h = _session(model).run(None, {"X": x, "sequence_lens": lens})
    layer = from_onnx(model)
    assert layer.cell.config.reset_after == bool(lbr) and layer.go_backwards == (direction == "reverse")
    assert layer.cell.config.recurrent_activation == "sigmoid" and layer.cell.config.activation == "tanh"
    Y2, Y_h2 = run_onnx(layer, x, sequence_lens=lens)  # initial_h: the node's constant
    np.testing.assert_allclose(Y2, Y, rtol=0, atol=ATOL)
    np.testing.assert_allclose(Y_h2, Y_h, rtol=0, atol=ATOL)
    np.testing.assert_array_equal(Y2[2:, 0, 1], 0.0)  # past the length: zeros, as ONNX
    _, state = layer(x, mask=lengths_to_mask(lens, 5), initial_state=h0[0])
    np.testing.assert_array_equal(state[2], h0[0, 2])  # the layer itself: length 0 keeps the initial state


def test_import_without_bias_and_batch_major_layout():
    W, R, _ = _weights(seed=6)
    act = dict(activations=["HardSigmoid", "Relu"], activation_alpha=[0.2], activation_beta=[0.5])
    ref = _gru_model(W, R, **act)
    x = np.random.default_rng(7).uniform(-1, 1, (5, 3, 3)).astype("float32")
    Y, Y_h = _session(ref).run(None, {"X": x})
    layer = from_onnx(ref)
    assert layer.cell.config.use_bias is False and layer.cell.config.recurrent_activation == "hard_sigmoid"
    batch_major = from_onnx(_gru_model(W, R, layout=1, **act))  # onnxruntime refuses layout=1; tvm_gru runs it
    assert batch_major.time_major is False
    Y2, Y_h2 = run_onnx(batch_major, np.ascontiguousarray(x.transpose(1, 0, 2)))
    np.testing.assert_allclose(Y2.transpose(1, 2, 0, 3), Y, rtol=0, atol=ATOL)
    np.testing.assert_allclose(Y_h2.transpose(1, 0, 2), Y_h, rtol=0, atol=ATOL)


@pytest.mark.parametrize("attrs, match", [
    (dict(activations=["HardSigmoid", "Tanh"], activation_alpha=[0.3], activation_beta=[0.5]), "activation_alpha"),
    (dict(activations=["Affine", "Tanh"], activation_alpha=[2.0], activation_beta=[0.0]), "Affine"),
    (dict(clip=3.0), "clip"),
    (dict(direction="bidirectional", activations=["Sigmoid", "Tanh"]), "bidirectional GRU needs exactly 4"),
    (dict(activations=["Sigmoid", "Gelu"]), "activations"),
], ids=["hardsigmoid_alpha", "affine_alpha", "clip", "bidirectional", "unknown"])
def test_import_refuses_what_keras_cannot_express(attrs, match):
    W, R, B = _weights()
    if attrs.get("direction") == "bidirectional":
        W, R, B = (np.concatenate([a, a]) for a in (W, R, B))
    with pytest.raises(ValueError, match=match):
        from_onnx(_gru_model(W, R, B, **attrs))


def test_import_node_selection_and_non_constant_weights(tmp_path):
    W, R, B = _weights()
    model = _gru_model(W, R, B)
    assert from_onnx(model, node="g").name == "g" and from_onnx(model, node=0).units == 4
    with pytest.raises(ValueError, match="no GRU node named"):
        from_onnx(model, node="other")
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    assert from_onnx(str(path)).units == 4
    model.graph.initializer.pop(0)  # W becomes a dangling name
    model.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, list(W.shape)))
    with pytest.raises(ValueError, match="'W'.*constant"):
        from_onnx(model)


def test_opset_7_and_lengths_helper():
    layer = _random_layer(4, 3, reset_after=True)
    model = layer.to_onnx(opset=7)
    assert model.opset_import[0].version == 7
    x = np.random.default_rng(8).uniform(-1, 1, (4, 2, 3)).astype("float32")
    Y, _ = _session(model).run(None, {"X": x})
    np.testing.assert_allclose(Y[:, 0], layer(x)[0], rtol=0, atol=ATOL)
    np.testing.assert_array_equal(lengths_to_mask([2, 0], 3), [[True, False], [True, False], [False, False]])
    with pytest.raises(ValueError, match="opset"):
        layer.to_onnx(opset=5)


@pytest.mark.filterwarnings("ignore")  # the TorchScript exporter's deprecation and tracer warnings
def test_torch_exported_gru(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    gru = torch.nn.GRU(input_size=5, hidden_size=8)
    x = torch.rand(7, 2, 5)
    path = tmp_path / "torch_gru.onnx"
    try:
        torch.onnx.export(gru, (x,), str(path), input_names=["X"], output_names=["Y", "Y_h"], opset_version=14,
                          dynamo=False)
    except (ImportError, ModuleNotFoundError) as err:  # exporter extras (onnxscript) missing
        pytest.skip(f"torch.onnx.export unavailable: {err}")
    expected, h_n = gru(x)
    layer = from_onnx(path)
    assert layer.cell.config.reset_after is True and layer.cell.config.recurrent_activation == "sigmoid"
    Y, Y_h = run_onnx(layer, x.numpy())
    np.testing.assert_allclose(Y[:, 0], expected.detach().numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(Y_h, h_n.detach().numpy(), rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------------ torch goldens
# Models written by torch.onnx.export (TorchScript exporter, opset 14) from torch.nn.GRU, with torch's outputs,
# committed by tests/goldens/make_torch_onnx.py: the torch exporter's graphs are covered where torch is absent.
TORCH_DIR = Path(__file__).parents[1] / "goldens" / "torch_onnx"
TORCH_CASES = ["plain", "h0", "bidirectional", "no_bias", "two_layers", "batch_first"]
TORCH_ATOL = 1e-5


def _torch_goldens(name):
    """(metadata, arrays, onnx path) of one case from tests/goldens/torch_onnx."""
    meta = json.loads((TORCH_DIR / "cases.json").read_text())
    assert sorted(meta["cases"]) == sorted(TORCH_CASES)  # a case added to the generator must be tested here
    with np.load(TORCH_DIR / "cases.npz") as data:
        arrays = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith(name + "/")}
    return meta["cases"][name], arrays, TORCH_DIR / f"{name}.onnx"


def _one_direction(model, d):
    """Direction ``d`` (0 forward, 1 reverse) of the model's bidirectional GRU node as a one-node model.

    from_onnx imports the node whole as a Bidirectional; this split checks the directions one by one: ONNX stacks
    the directions on axis 0 of W, R, B and initial_h.
    """
    (node,) = [n for n in model.graph.node if n.op_type == "GRU"]
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    W, R, B = (consts[node.input[i]][d:d + 1] for i in (1, 2, 3))
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    attrs["direction"] = "reverse" if d else "forward"
    inits = [numpy_helper.from_array(a, n) for a, n in ((W, "W"), (R, "R"), (B, "B"))]
    one = helper.make_node("GRU", ["X", "W", "R", "B"], ["Y", "Y_h"], name=f"{node.name}_{attrs['direction']}",
                           **attrs)
    graph = helper.make_graph([one], "split", [model.graph.input[0]],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("Y", "Y_h")],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=model.opset_import)


@pytest.mark.parametrize("name", TORCH_CASES)
def test_torch_exported_goldens(name):
    meta, g, path = _torch_goldens(name)
    kwargs = meta["kwargs"]
    x, h0, Y_ref, Y_h_ref = g["x"], g.get("h0"), g["Y"], g["Y_h"]
    model = onnx.load(str(path))

    # The golden itself: onnxruntime runs the whole exported graph and agrees with torch's stored outputs.
    feeds = {"X": x} if h0 is None else {"X": x, "h0": h0}
    Y_ort, Y_h_ort = _session(model).run(["Y", "Y_h"], feeds)
    np.testing.assert_allclose(Y_ort, Y_ref, rtol=0, atol=TORCH_ATOL)
    np.testing.assert_allclose(Y_h_ort, Y_h_ref, rtol=0, atol=TORCH_ATOL)

    # torch's exporter writes linear_before_reset=1 and the default (Sigmoid, Tanh): reset_after, not the v1
    # default hard_sigmoid; a time-major node (layout 0) even for batch_first, which Transposes around it.
    def check_mapping(layer, go_backwards=False):
        cfg = layer.cell.config
        assert cfg.reset_after is True and cfg.recurrent_activation == "sigmoid" and cfg.activation == "tanh"
        assert cfg.use_bias is kwargs.get("bias", True)
        assert layer.time_major is True and layer.go_backwards is go_backwards and layer.units == Y_h_ref.shape[-1]

    if kwargs.get("bidirectional"):  # one node -> Bidirectional(merge_mode=None)
        wrapper = from_onnx(path)
        assert isinstance(wrapper, Bidirectional) and wrapper.merge_mode is None
        check_mapping(wrapper.forward_layer)
        check_mapping(wrapper.backward_layer, go_backwards=True)
        Y, Y_h = run_onnx(wrapper, x)  # Y (T, 2, B, H); torch's output (T, B, 2H) is the exporter's reshape of it
        T, _, batch, H = Y.shape
        np.testing.assert_allclose(Y.transpose(0, 2, 1, 3).reshape(T, batch, 2 * H), Y_ref, rtol=0, atol=TORCH_ATOL)
        np.testing.assert_allclose(Y_h, Y_h_ref, rtol=0, atol=TORCH_ATOL)
        for d in (0, 1):  # each direction alone, split by hand, gives its half
            layer = from_onnx(_one_direction(model, d))
            check_mapping(layer, go_backwards=bool(d))
            Y, Y_h = run_onnx(layer, x)
            np.testing.assert_allclose(Y[:, 0], Y_ref[..., d * H:(d + 1) * H], rtol=0, atol=TORCH_ATOL)
            np.testing.assert_allclose(Y_h[0], Y_h_ref[d], rtol=0, atol=TORCH_ATOL)
        return

    # Stacked layers are one GRU node each (picked with node=): layer l reads layer l-1's Y with the direction
    # axis squeezed (the exporter's Squeeze), starts from h0[l] (its Slice), and Y_h concatenates the layers.
    seq = x.transpose(1, 0, 2) if kwargs.get("batch_first") else x  # the exporter's Transpose in front of X
    states = []
    for index in range(kwargs.get("num_layers", 1)):
        layer = from_onnx(path, node=index)
        check_mapping(layer)
        assert layer.onnx_inputs["initial_h"] is None  # computed (Expand of zeros / graph input h0), not constant
        Y, Y_h = run_onnx(layer, seq, initial_h=None if h0 is None else h0[index:index + 1])
        seq = Y[:, 0]
        states.append(Y_h)
    if kwargs.get("batch_first"):
        seq = seq.transpose(1, 0, 2)  # the exporter's Transpose after the Squeeze
    np.testing.assert_allclose(seq, Y_ref, rtol=0, atol=TORCH_ATOL)
    np.testing.assert_allclose(np.concatenate(states), Y_h_ref, rtol=0, atol=TORCH_ATOL)


def _random_bidirectional(units, input_dim, seed=0, backward_kwargs=None, **kwargs):
    """A time-major Bidirectional(merge_mode=None) returning sequences and states, random weights."""
    layer = GRU(units, return_sequences=True, return_state=True, time_major=True, **kwargs)
    backward = None
    if backward_kwargs is not None:
        backward = GRU(units, return_sequences=True, return_state=True, time_major=True, go_backwards=True,
                       **backward_kwargs)
    wrapper = Bidirectional(layer, merge_mode=None, backward_layer=backward)
    rng = np.random.default_rng(seed)
    weights = []
    for direction in (wrapper.forward_layer, wrapper.backward_layer):
        cfg = direction.cell.config
        weights += [rng.uniform(-0.5, 0.5, (input_dim, 3 * units)), rng.uniform(-0.5, 0.5, (units, 3 * units))]
        if cfg.use_bias:
            weights.append(rng.uniform(-0.5, 0.5, cfg.bias_shape))
    wrapper.set_weights([w.astype("float32") for w in weights])
    return wrapper


@pytest.mark.parametrize("reset_after", [False, True])
def test_bidirectional_export_runs_in_onnxruntime(reset_after):
    # Different activations per direction (4 in the node), one direction without bias (zeros in B).
    f = "sigmoid" if reset_after else "hard_sigmoid"
    wrapper = _random_bidirectional(5, 4, reset_after=reset_after, recurrent_activation=f,
                                    backward_kwargs=dict(reset_after=reset_after, recurrent_activation="sigmoid",
                                                         activation="softsign", use_bias=False))
    model = wrapper.to_onnx(opset=14)
    onnx.checker.check_model(model, full_check=True)
    (node,) = model.graph.node
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["direction"] == b"bidirectional" and len(attrs["activations"]) == 4
    assert attrs["activations"][2:] == [b"Sigmoid", b"Softsign"]
    x = np.random.default_rng(1).uniform(-1.5, 1.5, (6, 3, 4)).astype("float32")
    Y, Y_h = _session(model).run(None, {"X": x})
    assert Y.shape == (6, 2, 3, 5) and Y_h.shape == (2, 3, 5)
    y, y_rev, h_fw, h_bw = wrapper(x)
    np.testing.assert_allclose(Y[:, 0], y, rtol=0, atol=ATOL)
    np.testing.assert_allclose(Y[:, 1], y_rev, rtol=0, atol=ATOL)  # input time order, as the wrapper returns it
    np.testing.assert_allclose(Y_h, np.stack([h_fw, h_bw]), rtol=0, atol=ATOL)
    # and back: the imported wrapper reproduces onnxruntime
    imported = from_onnx(model)
    assert isinstance(imported, Bidirectional)
    assert imported.backward_layer.cell.config.activation == "softsign"
    assert imported.backward_layer.cell.config.use_bias is True  # the node's B row of zeros
    Y2, Y_h2 = run_onnx(imported, x)
    np.testing.assert_allclose(Y2, Y, rtol=0, atol=ATOL)
    np.testing.assert_allclose(Y_h2, Y_h, rtol=0, atol=ATOL)


@pytest.mark.parametrize("lbr", [0, 1])
def test_import_foreign_bidirectional_node_with_lengths_and_initial_h(lbr):
    W, R, B = (np.concatenate([a, b]) for a, b in zip(_weights(seed=3), _weights(seed=9)))
    h0 = np.random.default_rng(4).uniform(-1, 1, (2, 3, 4)).astype("float32")
    model = _gru_model(W, R, B, initial_h=h0, lens_input=True, linear_before_reset=lbr, direction="bidirectional")
    x = np.random.default_rng(5).uniform(-1, 1, (5, 3, 3)).astype("float32")
    lens = np.array([5, 2, 0], np.int32)
    Y, Y_h = _session(model).run(None, {"X": x, "sequence_lens": lens})
    wrapper = from_onnx(model)
    assert wrapper.forward_layer.go_backwards is False and wrapper.backward_layer.go_backwards is True
    Y2, Y_h2 = run_onnx(wrapper, x, sequence_lens=lens)  # initial_h: the node's constant, one per direction
    np.testing.assert_allclose(Y2, Y, rtol=0, atol=ATOL)
    np.testing.assert_allclose(Y_h2, Y_h, rtol=0, atol=ATOL)
    np.testing.assert_array_equal(Y2[2:, :, 1], 0.0)  # past the length: zeros in both directions, as ONNX


def test_bidirectional_export_refuses_what_one_node_cannot_hold():
    backwards_first = _random_bidirectional(3, 2, go_backwards=True)
    with pytest.raises(ValueError, match="go_backwards=True"):
        backwards_first.to_onnx()
    mixed = Bidirectional(GRU(3, return_sequences=True), backward_layer=GRU(3, return_sequences=True,
                                                                             go_backwards=True, reset_after=True))
    mixed.build((2, 4, 2))
    with pytest.raises(ValueError, match="reset_after"):
        mixed.to_onnx()
    with pytest.raises(ValueError, match="built"):
        Bidirectional(GRU(3)).to_onnx()
