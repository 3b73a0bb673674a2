"""Bad inputs across the whole public API, in one table.

Every row of ``RAISES`` is one bad input: a callable that triggers it, the exception it must raise, and a regex
the message must match, naming the argument and what was expected or received. ``tests/test_bad_inputs.py``
holds the cell's own cases (units, constructor arguments, call shapes/dtypes); this file covers the rest of the
API: cell build/set_weights/from_config/call extras, the GRU layer, ONNX import, artifacts and the CLI.

After every row, the shared cell, layer, stateful layer and deployed artifact must still give the numpy
reference's results with the weights they had before (a failed call changes nothing).

``WORKS`` holds inputs that look bad but must work: NaN/Inf/huge values propagate like ``tvm_gru.ops.reference``;
non-contiguous, read-only, Fortran-ordered, reversed, byte-swapped, misaligned, broadcast and DLPack arrays give
the reference's numbers.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
from conftest import tolerance
from onnx import TensorProto, helper, numpy_helper

import tvm_gru
from tvm_gru import cli
from tvm_gru.deploy.export import export_cell
from tvm_gru.ops import reference
from tvm_gru.runtime.artifact import METADATA, ArtifactError

B, I, H = 4, 5, 7          # the shared cell
LB, LT, LI, LH = 2, 5, 4, 6  # the shared layers: batch, time, input_dim, units


# ------------------------------------------------------------------------------------------ shared objects
class FakeDevice:
    """A DLPack producer that reports a CUDA device (device type 2) while exporting host memory: what a GPU
    tensor looks like to code that trusts ``__dlpack_device__``. numpy alone would read it as a host array."""

    def __init__(self, array, device=(2, 0)):
        self.array, self.device = array, device
        self.shape = array.shape

    def __dlpack__(self, **kwargs):
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.device


class BrokenDLPack:
    def __dlpack__(self, **kwargs):
        raise RuntimeError("producer failed")

    def __dlpack_device__(self):
        return (1, 0)


@dataclass
class Env:
    cell: tvm_gru.GRUCell
    cell_weights: list
    x: np.ndarray
    h: np.ndarray
    layer: tvm_gru.GRU
    layer_weights: list
    xl: np.ndarray
    stateful: tvm_gru.GRU
    stateful_weights: list
    deployed: object
    deployed_weights: list
    deployed_config: tvm_gru.GRUConfig
    artifact: Path
    tmp: Path
    onnx_path: Path

    def copy_artifact(self, name: str) -> Path:
        dest = self.tmp / name
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(self.artifact, dest)
        return dest

    def write(self, name: str, data) -> Path:
        path = self.tmp / name
        path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)
        return path


def _with_random_bias(obj, seed):
    weights = obj.get_weights()
    rng = np.random.default_rng(seed)
    weights[-1] = rng.uniform(-0.5, 0.5, weights[-1].shape).astype(weights[-1].dtype)
    obj.set_weights(weights)
    return [w.copy() for w in obj.get_weights()]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_api")
    rng = np.random.default_rng(0)
    cell = tvm_gru.GRUCell(H, seed=0)
    cell.build((B, I))
    cell_weights = _with_random_bias(cell, 1)
    x = rng.uniform(-1, 1, (B, I)).astype("float32")
    h = rng.uniform(-1, 1, (B, H)).astype("float32")
    cell(x, [h])

    layer = tvm_gru.GRU(LH, return_sequences=True, return_state=True, seed=2)
    layer.build((LB, LT, LI))
    layer_weights = _with_random_bias(layer, 3)
    xl = rng.uniform(-1, 1, (LB, LT, LI)).astype("float32")
    layer(xl)

    stateful = tvm_gru.GRU(LH, stateful=True, seed=4)
    stateful.build((LB, LT, LI))
    stateful_weights = _with_random_bias(stateful, 5)
    stateful(xl)

    art_cell = tvm_gru.GRUCell(H, seed=6)
    art_cell.build((1, I))
    deployed_weights = _with_random_bias(art_cell, 7)
    artifact = export_cell(art_cell, tmp / "artifact", target="host", batch=(1, 2))
    deployed = tvm_gru.load(artifact)

    onnx_path = tmp / "gru.onnx"
    layer.to_onnx(onnx_path)
    return Env(cell, cell_weights, x, h, layer, layer_weights, xl, stateful, stateful_weights, deployed,
               deployed_weights, art_cell.config, artifact, tmp, onnx_path)


def _cell_ok(e: Env):
    out, [state] = e.cell(e.x, [e.h])
    ref = reference.step(e.cell.config, e.x, e.h, *e.cell_weights)
    np.testing.assert_allclose(out, ref, rtol=0, atol=tolerance("float32", ref))
    assert state is out


def _layer_ref(layer, weights, x, h0=None):
    h0 = np.zeros((x.shape[0], layer.cell.units)) if h0 is None else h0
    return reference.sequence(layer.cell.config, x.transpose(1, 0, 2), h0, *weights).transpose(1, 0, 2)


def _layer_ok(e: Env):
    seq, state = e.layer(e.xl)
    ref = _layer_ref(e.layer, e.layer_weights, e.xl)
    np.testing.assert_allclose(seq, ref, rtol=0, atol=tolerance("float32", ref))
    np.testing.assert_allclose(state, ref[:, -1], rtol=0, atol=tolerance("float32", ref))


def _stateful_ok(e: Env, before):
    np.testing.assert_array_equal(e.stateful.states[0], before)  # the failed call did not touch the state
    out = e.stateful(e.xl)
    ref = _layer_ref(e.stateful, e.stateful_weights, e.xl, before.astype(np.float64))[:, -1]
    np.testing.assert_allclose(out, ref, rtol=0, atol=tolerance("float32", ref))


def _deployed_ok(e: Env):
    x, h = e.x[:2], e.h[:2]
    out, [state] = e.deployed(x, [h])
    ref = reference.step(e.deployed_config, x, h, *e.deployed_weights)
    np.testing.assert_allclose(out, ref, rtol=0, atol=tolerance("float32", ref))


# ------------------------------------------------------------------------------------------ helpers for rows
def _gru_node_model(units=4, input_dim=3, *, W=None, R=None, B=None, extra_nodes=(), inputs=None, **attrs):
    rng = np.random.default_rng(11)
    W = rng.uniform(-0.5, 0.5, (1, 3 * units, input_dim)).astype("float32") if W is None else W
    R = rng.uniform(-0.5, 0.5, (1, 3 * units, units)).astype("float32") if R is None else R
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R")]
    if B is not None:
        inits.append(numpy_helper.from_array(B, "B"))
    node_inputs = inputs if inputs is not None else ["X", "W", "R"] + (["B"] if B is not None else [])
    attrs.setdefault("hidden_size", units)
    node = helper.make_node("GRU", node_inputs, ["Y", "Y_h"], name="g", **attrs)
    graph = helper.make_graph([node, *extra_nodes], "g",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 1, input_dim])],
                              [helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def _relu_model():
    X = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])
    Y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["X"], ["Y"], name="relu")], "relu", [X], [Y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def _edit_meta(path: Path, edit) -> Path:
    meta = json.loads((path / METADATA).read_text())
    edit(meta)
    (path / METADATA).write_text(json.dumps(meta))
    return path


def _flip_byte(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(blob)


def _unbuilt_cell():
    return tvm_gru.GRUCell(3)


def _export_argv(e: Env, *args):
    return ["export", "--units", "4", "--input-dim", "3", "--out", str(e.tmp / "cli_out"), *args]


def _cli_config(e: Env) -> Path:
    return e.write("cfg.json", json.dumps({"class_name": "GRUCell", "config": {"units": 4}}))


@dataclass
class Row:
    id: str
    trigger: Callable[[Env], object]
    exc: type
    match: str


def _demo(*args):
    return lambda e: cli.main(["demo", *args])


RAISES = [
    # ----------------------------------------------------------------------- GRUCell constructor
    Row("cell-units-huge", lambda e: tvm_gru.GRUCell(10**12), ValueError,
        r"`units`=1000000000000 is too large.*do not fit in this machine's .* GiB of memory"),
    Row("cell-units-1e6", lambda e: tvm_gru.GRUCell(10**6), ValueError, r"`units`=1000000 is too large"),
    Row("cell-seed-negative", lambda e: tvm_gru.GRUCell(3, seed=-1), ValueError,
        r"`seed` must be a non-negative int or None, received -1"),
    Row("cell-name-int", lambda e: tvm_gru.GRUCell(3, name=5), TypeError,
        r"`name` must be a str or None, received 5 of type int"),
    Row("cell-dtype-object", lambda e: tvm_gru.GRUCell(3, dtype=object), ValueError,
        r"`dtype` must be one of \('float32', 'float64'\), received <class 'object'>"),
    Row("cell-activation-callable", lambda e: tvm_gru.GRUCell(3, activation=np.tanh), TypeError,
        r"activation must be a str name or None, received <ufunc 'tanh'>"),
    Row("cell-initializer-int", lambda e: tvm_gru.GRUCell(3, kernel_initializer=5), TypeError,
        r"Could not interpret initializer identifier: 5 \(type int\)"),
    Row("cell-target-int", lambda e: tvm_gru.GRUCell(3, target=5), TypeError,
        r"target must be None, a str, a dict or a tvm.target.Target, received int"),
    Row("cell-target-host-mcpu", lambda e: tvm_gru.GRUCell(3, target={"name": "host", "mcpu": "pentium"}),
        ValueError, r"target host: unsupported mcpu 'pentium'; expected this machine's CPU"),
    Row("cell-target-cuda-arch", lambda e: tvm_gru.GRUCell(3, target={"name": "cuda", "arch": "sm_10"}),
        ValueError, r"target cuda: unsupported arch 'sm_10'; expected one of \('sm_75'"),
    Row("cell-unknown-kwarg", lambda e: tvm_gru.GRUCell(3, go_fast=True), TypeError,
        r"unexpected keyword argument 'go_fast'"),
    # ----------------------------------------------------------------------- build
    Row("build-negative-dim", lambda e: _unbuilt_cell().build((1, -1)), ValueError,
        r"argument `input_dim`, expected a positive integer, got -1"),
    Row("build-float-dim", lambda e: _unbuilt_cell().build((1, 2.5)), TypeError,
        r"argument `input_dim`, expected a positive integer, got 2.5 of type float"),
    Row("build-none-dim", lambda e: _unbuilt_cell().build((1, None)), TypeError,
        r"argument `input_dim`, expected a positive integer, got None"),
    Row("build-huge-dim", lambda e: _unbuilt_cell().build((1, 10**12)), ValueError,
        r"`units`=3 with `input_dim`=1000000000000 is too large"),
    Row("build-built-cell-bad-dim", lambda e: e.cell.build((B, 0)), ValueError,
        r"argument `input_dim`, expected a positive integer, got 0"),
    # ----------------------------------------------------------------------- set_weights (the shared cell)
    Row("set_weights-int", lambda e: e.cell.set_weights(5), TypeError,
        r"`weights` must be a list of 3 arrays \(kernel, recurrent_kernel, bias\); received int"),
    Row("set_weights-none", lambda e: e.cell.set_weights(None), TypeError,
        r"`weights` must be a list of 3 arrays .*received NoneType"),
    Row("set_weights-dict", lambda e: e.cell.set_weights(dict(enumerate(e.cell_weights))), TypeError,
        r"`weights` must be a list of 3 arrays .*received dict"),
    Row("set_weights-two", lambda e: e.cell.set_weights(e.cell_weights[:2]), ValueError,
        r"`weights` must be a list of 3 arrays .*received 2"),
    Row("set_weights-kernel-transposed", lambda e: e.cell.set_weights([e.cell_weights[0].T, *e.cell_weights[1:]]),
        ValueError, r"`kernel` \(weights\[0\]\) must have shape \(5, 21\); received \(21, 5\)"),
    Row("set_weights-bias-2d", lambda e: e.cell.set_weights([*e.cell_weights[:2], np.zeros((2, 21), "f4")]),
        ValueError, r"`bias` \(weights\[2\]\) must have shape \(21,\); received \(2, 21\)"),
    Row("set_weights-complex", lambda e: e.cell.set_weights([e.cell_weights[0].astype(complex),
                                                              *e.cell_weights[1:]]),
        TypeError, r"`kernel` \(weights\[0\]\) must be numeric \(float or int\); received dtype complex128"),
    Row("set_weights-nested-list", lambda e: e.cell.set_weights([e.cell_weights[0].tolist(), *e.cell_weights[1:]]),
        TypeError, r"`weights\[0\]` must be a numpy array or a DLPack tensor.*received list"),
    Row("set_weights-unbuilt-empty-kernel", lambda e: _unbuilt_cell().set_weights(
        [np.zeros((0, 9), "f4"), np.zeros((3, 9), "f4"), np.zeros(9, "f4")]), ValueError,
        r"`kernel` \(weights\[0\]\) must have shape \(input_dim, 9\) with input_dim > 0; received \(0, 9\)"),
    # ----------------------------------------------------------------------- from_config
    Row("from_config-list", lambda e: tvm_gru.GRUCell.from_config([("units", 3)]), TypeError,
        r"`config` must be a dict, received list"),
    Row("from_config-no-units", lambda e: tvm_gru.GRUCell.from_config({"activation": "tanh"}), ValueError,
        r"`config` has no 'units' entry"),
    Row("from_config-unknown-key", lambda e: tvm_gru.GRUCell.from_config({"units": 3, "cell_clip": 1.0}),
        ValueError, r"`config` has unsupported keys \['cell_clip'\]; expected a subset of"),
    Row("from_config-units-str", lambda e: tvm_gru.GRUCell.from_config({"units": "3"}), TypeError,
        r"argument `units`, expected a positive integer, got '3' of type str"),
    Row("gru-from_config-unknown-key", lambda e: tvm_gru.GRU.from_config({"units": 3, "merge_mode": "sum"}),
        ValueError, r"`config` has unsupported keys \['merge_mode'\]"),
    # ----------------------------------------------------------------------- cell call (beyond test_bad_inputs)
    Row("call-training-str", lambda e: e.cell(e.x, [e.h], training="yes"), TypeError,
        r"`training` must be None, True or False; received 'yes' of type str"),
    Row("call-training-array", lambda e: e.cell(e.x, [e.h], training=np.array([True, False])), TypeError,
        r"`training` must be None, True or False; received array\(\[ True, False\]\)"),
    Row("call-object-dtype", lambda e: e.cell(e.x.astype(object), [e.h]), TypeError,
        r"`inputs` must hold floating point values \(float16/32/64\); received dtype object"),
    Row("call-structured-dtype", lambda e: e.cell(np.zeros((B, I), [("a", "f4")]), [e.h]), TypeError,
        r"`inputs` must hold floating point values .*received dtype \[\('a', '<f4'\)\]"),
    Row("call-str-dtype", lambda e: e.cell(np.full((B, I), "1"), [e.h]), TypeError,
        r"`inputs` must hold floating point values .*received dtype <U1"),
    Row("call-0d-input", lambda e: e.cell(np.array(1.0, "f4"), [e.h]), ValueError,
        r"`inputs` must have rank 2 \(batch, 5\); received shape \(\)"),
    Row("call-zero-features", lambda e: e.cell(np.zeros((B, 0), "f4"), [e.h]), ValueError,
        r"`inputs` must have 5 features .*received shape \(4, 0\)"),
    Row("call-bare-state-none", lambda e: e.cell(e.x, None), TypeError,
        r"`states` must be a numpy array or a DLPack tensor .*received NoneType"),
    Row("call-state-bool", lambda e: e.cell(e.x, [e.h > 0]), TypeError,
        r"`states\[0\]` must hold floating point values .*received dtype bool"),
    Row("call-cuda-input", lambda e: e.cell(FakeDevice(e.x), [e.h]), TypeError,
        r"`inputs` must be a host \(CPU\) tensor; received a FakeDevice on cuda:0"),
    Row("call-cuda-state", lambda e: e.cell(e.x, [FakeDevice(e.h)]), TypeError,
        r"`states\[0\]` must be a host \(CPU\) tensor; received a FakeDevice on cuda:0"),
    Row("call-rocm-input", lambda e: e.cell(FakeDevice(e.x, (10, 1)), [e.h]), TypeError,
        r"`inputs` must be a host \(CPU\) tensor; received a FakeDevice on rocm:1"),
    Row("call-broken-dlpack", lambda e: e.cell(BrokenDLPack(), [e.h]), TypeError,
        r"`inputs` must be a host \(CPU\) tensor readable through DLPack; received BrokenDLPack \(producer failed\)"),
    # ----------------------------------------------------------------------- GRU layer: constructor, build
    Row("gru-units-huge", lambda e: tvm_gru.GRU(10**12), ValueError, r"`units`=1000000000000 is too large"),
    Row("gru-name-int", lambda e: tvm_gru.GRU(3, name=3), TypeError, r"`name` must be a str or None, received 3"),
    Row("gru-return_state-str", lambda e: tvm_gru.GRU(3, return_state="no"), TypeError,
        r"`return_state` must be a bool, received 'no'"),
    Row("gru-stateful-2", lambda e: tvm_gru.GRU(3, stateful=2), TypeError, r"`stateful` must be a bool, received 2"),
    Row("gru-activity-regularizer", lambda e: tvm_gru.GRU(3, activity_regularizer="l3"), ValueError,
        r"Unknown regularizer: 'l3'"),
    Row("gru-build-none", lambda e: tvm_gru.GRU(3).build(None), TypeError,
        r"`input_shape` must be a shape tuple like \(batch, time, input_dim\); received None"),
    Row("gru-compute_output_shape-int", lambda e: e.layer.compute_output_shape(5), TypeError,
        r"`input_shape` must be a shape tuple of rank 3; received 5"),
    Row("gru-compute_output_shape-rank2", lambda e: e.layer.compute_output_shape((2, 4)), ValueError,
        r"`input_shape` must have rank 3 \(batch, time, input_dim\); received \(2, 4\)"),
    Row("gru-get_initial_state-rank1", lambda e: e.layer.get_initial_state(np.ones(3, "f4")), ValueError,
        r"`inputs` must have rank 3 \(batch, time, input_dim\); received shape \(3,\)"),
    # ----------------------------------------------------------------------- GRU layer call
    Row("gru-empty-list", lambda e: e.layer([]), ValueError, r"`inputs` is an empty list"),
    Row("gru-state-twice", lambda e: e.layer([e.xl, np.zeros((LB, LH), "f4")], initial_state=np.zeros((LB, LH), "f4")),
        ValueError, r"initial states given twice: in `inputs` and as `initial_state`"),
    Row("gru-rank4", lambda e: e.layer(e.xl[None]), ValueError,
        r"`inputs` must have rank 3 \(batch, time, input_dim\); received shape \(1, 2, 5, 4\)"),
    Row("gru-complex", lambda e: e.layer(e.xl.astype(np.complex64)), TypeError,
        r"`inputs` must hold floating point values; received dtype complex64"),
    Row("gru-training-str", lambda e: e.layer(e.xl, training="no"), TypeError,
        r"`training` must be None, True or False; received 'no'"),
    Row("gru-cuda-input", lambda e: e.layer(FakeDevice(e.xl)), TypeError,
        r"`inputs` must be a host \(CPU\) tensor; received a FakeDevice on cuda:0"),
    Row("gru-mask-str", lambda e: e.layer(e.xl, mask=np.full((LB, LT), "1")), TypeError,
        r"`mask` must hold bools \(or 0/1 numbers\); received dtype <U1"),
    Row("gru-mask-nan", lambda e: e.layer(e.xl, mask=np.full((LB, LT), np.nan)), ValueError,
        r"`mask` holds NaN.*expected bools"),
    Row("gru-mask-broadcast", lambda e: e.layer(e.xl, mask=np.ones((1, LT), bool)), ValueError,
        r"`mask` must have shape \(batch, time\) = \(2, 5\); received \(1, 5\)"),
    Row("gru-mask-list", lambda e: e.layer(e.xl, mask=[[True] * LT] * LB), TypeError,
        r"`mask` must be a numpy array or a DLPack tensor.*received list"),
    Row("gru-initial-state-batch1", lambda e: e.layer(e.xl, initial_state=np.zeros((1, LH), "f4")), ValueError,
        r"`initial_state` must have shape \(2, 6\); received \(1, 6\)"),
    Row("gru-initial-state-int", lambda e: e.layer(e.xl, initial_state=np.zeros((LB, LH), "i4")), TypeError,
        r"`initial_state` must hold floating point values; received dtype int32"),
    Row("gru-initial-state-two", lambda e: e.layer(e.xl, initial_state=[np.zeros((LB, LH), "f4")] * 2),
        ValueError, r"expects 1 initial state, received 2"),
    Row("gru-initial-state-cuda", lambda e: e.layer(e.xl, initial_state=FakeDevice(np.zeros((LB, LH), "f4"))),
        TypeError, r"`initial_state` must be a host \(CPU\) tensor; received a FakeDevice on cuda:0"),
    Row("gru-reset_states-not-stateful", lambda e: e.layer.reset_states(), AttributeError,
        r"Layer must be stateful"),
    # ----------------------------------------------------------------------- stateful layer
    Row("stateful-batch-mismatch", lambda e: e.stateful(np.ones((LB + 1, LT, LI), "f4")), ValueError,
        r"stateful with batch size 2; received inputs with batch size 3"),
    Row("stateful-batch-mismatch-one-frame", lambda e: e.stateful(np.ones((1, 1, LI), "f4")), ValueError,
        r"stateful with batch size 2; received inputs with batch size 1"),
    Row("stateful-reset-wrong-batch", lambda e: e.stateful.reset_states(np.zeros((LB + 1, LH))), ValueError,
        r"State 0 \(`states`\) is incompatible with layer .*expected shape \(2, 6\) but found \(3, 6\)"),
    Row("stateful-reset-rank1", lambda e: e.stateful.reset_states(np.zeros(LH)), ValueError,
        r"`states` must have shape \(batch, 6\); received \(6,\)"),
    Row("stateful-reset-complex", lambda e: e.stateful.reset_states(np.zeros((LB, LH), complex)), TypeError,
        r"`states` must hold real numbers \(cast to float32\); received dtype complex128"),
    Row("stateful-reset-two", lambda e: e.stateful.reset_states([np.zeros((LB, LH))] * 2), ValueError,
        r"expects 1 state, but it received 2 state values"),
    # ----------------------------------------------------------------------- from_onnx
    Row("onnx-int", lambda e: tvm_gru.from_onnx(5), TypeError,
        r"`model_or_path` must be an onnx.ModelProto, bytes or a path; received int"),
    Row("onnx-graphproto", lambda e: tvm_gru.from_onnx(onnx.load(str(e.onnx_path)).graph), TypeError,
        r"`model_or_path` must be an onnx.ModelProto, bytes or a path; received GraphProto"),
    Row("onnx-missing-file", lambda e: tvm_gru.from_onnx(e.tmp / "missing.onnx"), FileNotFoundError,
        r"`model_or_path`: ONNX model file not found: .*missing.onnx"),
    Row("onnx-directory", lambda e: tvm_gru.from_onnx(e.tmp), ValueError,
        r"`model_or_path` must be an ONNX model file; received the directory"),
    Row("onnx-junk-file", lambda e: tvm_gru.from_onnx(e.write("junk.onnx", b"\x00\xffnot a protobuf\x12")),
        ValueError, r"`model_or_path` \(file .*junk.onnx\) is not an ONNX model: DecodeError"),
    Row("onnx-empty-file", lambda e: tvm_gru.from_onnx(e.write("empty.onnx", b"")), ValueError,
        r"`model_or_path` \(file .*empty.onnx\) is not an ONNX model: expected a serialized ModelProto .*0 bytes"),
    Row("onnx-text-file", lambda e: tvm_gru.from_onnx(e.write("model.txt", "GRU hidden_size=4")), ValueError,
        r"`model_or_path` \(file .*model.txt\) is not an ONNX model"),
    Row("onnx-junk-bytes", lambda e: tvm_gru.from_onnx(b"\x08\x07garbage\xff"), ValueError,
        r"`model_or_path` \(10 bytes\) is not an ONNX model"),
    Row("onnx-no-gru", lambda e: tvm_gru.from_onnx(_relu_model()), ValueError,
        r"`model_or_path` has no GRU node to import; expected one ONNX GRU node, the graph holds \['Relu'\]"),
    Row("onnx-two-grus", lambda e: tvm_gru.from_onnx(_gru_node_model(extra_nodes=[helper.make_node(
        "GRU", ["X", "W", "R"], ["Y2", "Yh2"], name="g2", hidden_size=4)])), ValueError,
        r"the model has 2 GRU nodes \['g', 'g2'\]; pass `node=`"),
    Row("onnx-node-out-of-range", lambda e: tvm_gru.from_onnx(_gru_node_model(), node=3), ValueError,
        r"`node`=3 is out of range: the model has 1 GRU nodes \['g'\]"),
    Row("onnx-node-bool", lambda e: tvm_gru.from_onnx(_gru_node_model(), node=True), TypeError,
        r"`node` must be None, an int, a str or a NodeProto; received bool"),
    Row("onnx-node-wrong-op", lambda e: tvm_gru.from_onnx(_gru_node_model(), node=_relu_model().graph.node[0]),
        ValueError, r"`node` is a Relu node, not GRU"),
    Row("onnx-node-wrong-name", lambda e: tvm_gru.from_onnx(_gru_node_model(), node="encoder"), ValueError,
        r"no GRU node named 'encoder'; GRU nodes: \['g'\]"),
    Row("onnx-clip", lambda e: tvm_gru.from_onnx(_gru_node_model(clip=50.0)), ValueError,
        r"GRU node g: attribute 'clip'=50.0 is not supported"),
    Row("onnx-bidirectional-one-direction-weights", lambda e: tvm_gru.from_onnx(_gru_node_model(
        direction="bidirectional")), ValueError,
        r"GRU node g: input 'W' has shape \(1, 12, 3\); expected \(2, 3\*hidden_size, input_size\) for "
        r"direction='bidirectional'"),
    Row("onnx-direction-unknown", lambda e: tvm_gru.from_onnx(_gru_node_model(direction="sideways")), ValueError,
        r"attribute 'direction'='sideways'; expected 'forward', 'reverse' or 'bidirectional'"),
    Row("onnx-layout-2", lambda e: tvm_gru.from_onnx(_gru_node_model(layout=2)), ValueError,
        r"attribute 'layout'=2; expected 0 or 1"),
    Row("onnx-leakyrelu-alpha", lambda e: tvm_gru.from_onnx(_gru_node_model(
        activations=["Sigmoid", "LeakyRelu"], activation_alpha=[0.5])), ValueError,
        r"LeakyRelu\(alpha=0.5, beta=None\) cannot be represented by a Keras activation"),
    Row("onnx-scaledtanh-alpha", lambda e: tvm_gru.from_onnx(_gru_node_model(
        activations=["Sigmoid", "ScaledTanh"], activation_alpha=[2.0], activation_beta=[1.0])), ValueError,
        r"ScaledTanh\(alpha=2.0, beta=1.0\) cannot be represented"),
    Row("onnx-three-activations", lambda e: tvm_gru.from_onnx(_gru_node_model(
        activations=["Sigmoid", "Tanh", "Tanh"])), ValueError,
        r"attribute 'activations'=\['Sigmoid', 'Tanh', 'Tanh'\]: a one-way GRU needs exactly 2"),
    Row("onnx-hidden-size-0", lambda e: tvm_gru.from_onnx(_gru_node_model(
        W=np.zeros((1, 0, 3), "f4"), R=np.zeros((1, 0, 0), "f4"), hidden_size=0)), ValueError,
        r"attribute 'hidden_size'=0 \(W \(1, 0, 3\)\); expected a positive hidden size"),
    Row("onnx-hidden-size-mismatch", lambda e: tvm_gru.from_onnx(_gru_node_model(hidden_size=5)), ValueError,
        r"W \(1, 12, 3\) / R \(1, 12, 4\) do not match hidden_size=5"),
    Row("onnx-int-weights", lambda e: tvm_gru.from_onnx(_gru_node_model(
        W=np.ones((1, 12, 3), "i4"), R=np.ones((1, 12, 4), "i4"))), ValueError,
        r"weights of dtype int32 are not supported \(float32 or float64\)"),
    Row("onnx-bias-shape", lambda e: tvm_gru.from_onnx(_gru_node_model(B=np.zeros((1, 12), "f4"))), ValueError,
        r"input 'B' has shape \(1, 12\); expected \(1, 24\)"),
    Row("onnx-missing-W", lambda e: tvm_gru.from_onnx(_gru_node_model(inputs=["X"])), ValueError,
        r"GRU node g: input 'W' is missing"),
    Row("onnx-bad-target", lambda e: tvm_gru.from_onnx(e.onnx_path, target="tpu"), ValueError,
        r"Unknown target 'tpu'; expected one of"),
    # ----------------------------------------------------------------------- load / artifacts
    Row("load-none", lambda e: tvm_gru.load(None), TypeError,
        r"`path` must be a str or os.PathLike naming an artifact folder; received NoneType"),
    Row("load-missing-dir", lambda e: tvm_gru.load(e.tmp / "no_such_artifact"), ArtifactError,
        r"`path` .*no_such_artifact does not exist; expected an artifact folder"),
    Row("load-a-file", lambda e: tvm_gru.load(e.artifact / METADATA), ArtifactError,
        r"`path` .*tvm_gru_artifact.json is a file, not an artifact folder"),
    Row("load-not-an-artifact", lambda e: tvm_gru.load(e.tmp), ArtifactError,
        r"is not a tvm_gru artifact: tvm_gru_artifact.json is missing"),
    Row("load-bad-json", lambda e: tvm_gru.load(_write_meta(e, "bad_json", "{not json")), ArtifactError,
        r"tvm_gru_artifact.json is not readable JSON \(Expecting property name"),
    Row("load-binary-json", lambda e: tvm_gru.load(_write_meta(e, "bin_json", b"\xff\xfe\x00")), ArtifactError,
        r"tvm_gru_artifact.json is not readable JSON \('utf-8' codec"),
    Row("load-json-list", lambda e: tvm_gru.load(_write_meta(e, "list_json", "[1, 2]")), ArtifactError,
        r"is not tvm_gru artifact metadata \(format 'list'\)"),
    Row("load-no-config", lambda e: tvm_gru.load(_edit_meta(e.copy_artifact("no_config"),
                                                              lambda m: m.pop("config"))), ArtifactError,
        r"entry 'config' must be a dict; received nothing \(missing\)"),
    Row("load-target-str", lambda e: tvm_gru.load(_edit_meta(e.copy_artifact("target_str"),
                                                               lambda m: m.update(target="x86"))), ArtifactError,
        r"entry 'target' must be a dict; received str"),
    Row("load-tampered-weights", lambda e: tvm_gru.load(_tamper(e, "tampered_w", "weights.npz")), ArtifactError,
        r"artifact file weights.npz is damaged or was modified: SHA-256 [0-9a-f]{64} != [0-9a-f]{64}"),
    Row("load-tampered-loader", lambda e: tvm_gru.load(_tamper(e, "tampered_py", "python/tvm_gru_runtime.zip")),
        ArtifactError, r"artifact file python/tvm_gru_runtime.zip is damaged or was modified"),
    Row("load-symlink-outside", lambda e: tvm_gru.load(_symlink_kernel(e)), ArtifactError,
        r"artifact path 'kernel.so' of .* is a symbolic link to '.*outside_kernel.so'; .*links are refused"),
    Row("load-device-id-str", lambda e: tvm_gru.load(e.artifact, device_id="0"), TypeError,
        r"`device_id` must be a non-negative int; received '0'"),
    Row("load-device-id-negative", lambda e: tvm_gru.load(e.artifact, device_id=-1), ValueError,
        r"`device_id` must be a non-negative int; received -1"),
    Row("deployed-cuda-input", lambda e: e.deployed(FakeDevice(e.x[:1]), [e.h[:1]]), TypeError,
        r"`inputs` must be a host \(CPU\) tensor; received a FakeDevice on cuda:0"),
    Row("deployed-batch-not-exported", lambda e: e.deployed(e.x[:3], [e.h[:3]]), ValueError,
        r"this artifact has kernels for batch sizes \[1, 2\]; received batch 3"),
    Row("deployed-batch-mismatch", lambda e: e.deployed(e.x[:2], [e.h[:1]]), ValueError,
        r"`inputs` and `states\[0\]` must have the same batch size; received 2 and 1"),
    Row("deployed-get_initial_state-list", lambda e: e.deployed.get_initial_state([1.0] * I), ValueError,
        r"`inputs` must be a \(batch, 5\) tensor; received list"),
    # ----------------------------------------------------------------------- CLI (argparse: SystemExit(2), stderr)
    Row("cli-no-command", lambda e: cli.main([]), SystemExit, r"the following arguments are required: command"),
    Row("cli-unknown-command", lambda e: cli.main(["frobnicate"]), SystemExit,
        r"argument command: invalid choice: 'frobnicate' \(choose from"),
    Row("cli-negative-units", _demo("--units", "-3"), SystemExit,
        r"tvm-gru demo: error: argument --units: expected a positive integer, got -3"),
    Row("cli-units-not-int", _demo("--units", "many"), SystemExit,
        r"argument --units: expected a positive integer, got 'many'"),
    Row("cli-zero-batch", _demo("--batch", "0"), SystemExit, r"argument --batch: expected a positive integer, got 0"),
    Row("cli-negative-seed", _demo("--seed", "-1"), SystemExit,
        r"argument --seed: expected a non-negative integer, got -1"),
    Row("cli-bad-target", _demo("--target", "tpu"), SystemExit,
        r"argument --target: expected one of host, x86, aarch64, arm, cuda, got 'tpu'"),
    Row("cli-bad-dtype", _demo("--dtype", "float16"), SystemExit, r"argument --dtype: invalid choice: 'float16'"),
    Row("cli-huge-units", _demo("--units", str(10**12)), SystemExit,
        r"tvm-gru demo: error: ValueError: `units`=1000000000000 is too large"),
    Row("cli-export-no-out", lambda e: cli.main(["export", "--units", "4"]), SystemExit,
        r"the following arguments are required: --out"),
    Row("cli-export-missing-config", lambda e: cli.main(_export_argv(e, "--config", str(e.tmp / "nope.json"))),
        SystemExit, r"argument --config: file not found: .*nope.json"),
    Row("cli-export-missing-weights", lambda e: cli.main(_export_argv(
        e, "--config", str(_cli_config(e)), "--weights", str(e.tmp / "nope.npz"))), SystemExit,
        r"argument --weights: file not found: .*nope.npz"),
    Row("cli-export-missing-onnx", lambda e: cli.main(_export_argv(e, "--onnx", str(e.tmp / "nope.onnx"))),
        SystemExit, r"argument --onnx: file not found: .*nope.onnx"),
    Row("cli-export-config-not-json", lambda e: cli.main(_export_argv(e, "--config", str(e.write("c.json", "{x")))),
        SystemExit, r"argument --config: .*c.json is not a JSON file"),
    Row("cli-export-config-list", lambda e: cli.main(_export_argv(e, "--config", str(e.write("l.json", "[4]")))),
        SystemExit, r"argument --config: expected a JSON object \(a Keras GRUCell config\), got list"),
    Row("cli-export-weights-not-npz", lambda e: cli.main(_export_argv(
        e, "--config", str(_cli_config(e)), "--weights", str(e.write("w.npz", b"not a zip")))), SystemExit,
        r"argument --weights: .*w.npz is not a .npz archive"),
    Row("cli-export-bad-batches", lambda e: cli.main(_export_argv(e, "--batches", "1,x")), SystemExit,
        r"argument --batches: expected comma-separated positive integers, got '1,x'"),
    Row("cli-export-out-exists", lambda e: cli.main(["export", "--out", str(e.artifact)]), SystemExit,
        r"argument --out: .*artifact exists; pass --overwrite to replace it"),
    Row("cli-export-bad-mcpu", lambda e: cli.main(_export_argv(e, "--mcpu", "pentium")), SystemExit,
        r"tvm-gru export: error: ValueError: target host: unsupported mcpu 'pentium'"),
    Row("cli-export-bad-onnx", lambda e: cli.main(_export_argv(e, "--onnx", str(e.write("x.onnx", b"\x00\xff")))),
        SystemExit, r"error: ValueError: `model_or_path` \(file .*x.onnx\) is not an ONNX model"),
]


def _write_meta(e: Env, name: str, data) -> Path:
    path = e.copy_artifact(name)
    (path / METADATA).write_bytes(data) if isinstance(data, bytes) else (path / METADATA).write_text(data)
    return path


def _tamper(e: Env, name: str, rel: str) -> Path:
    path = e.copy_artifact(name)
    _flip_byte(path / rel)
    return path


def _symlink_kernel(e: Env) -> Path:
    path = e.copy_artifact("symlinked")
    outside = e.tmp / "outside_kernel.so"
    shutil.copyfile(path / "kernel.so", outside)
    (path / "kernel.so").unlink()
    (path / "kernel.so").symlink_to(outside)
    return path


def test_the_table_is_big_and_unique():
    assert len(RAISES) >= 40
    assert len({r.id for r in RAISES}) == len(RAISES)


@pytest.mark.parametrize("row", RAISES, ids=[r.id for r in RAISES])
def test_bad_input_raises_a_clear_error_and_nothing_breaks(env, row, capsys):
    state_before = env.stateful.states[0]
    if row.exc is SystemExit:
        with pytest.raises(SystemExit) as info:
            row.trigger(env)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        last = err.strip().splitlines()[-1]  # argparse: usage lines, then "tvm-gru <command>: error: ..."
        assert last.startswith("tvm-gru") and ": error: " in last, err
        assert re.search(row.match, last), err
    else:
        with pytest.raises(row.exc, match=row.match):
            row.trigger(env)
    _cell_ok(env)
    _layer_ok(env)
    _stateful_ok(env, state_before)
    env.stateful.reset_states(state_before)  # rows run in any order: leave the state as found
    _deployed_ok(env)


# ------------------------------------------------------------------------------------------ inputs that work
def _noncontiguous(a):
    wide = np.repeat(a, 2, axis=-1)
    return wide[..., ::2]


def _readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _misaligned(a):
    raw = np.empty(a.size + 1, a.dtype)
    out = raw[1:].reshape(a.shape)
    out[...] = a
    assert out.ctypes.data % 8 != 0
    return out


def _broadcast(a):
    return np.broadcast_to(a[:1], a.shape)


def _tvm_ffi(a):
    import tvm_ffi  # noqa: PLC0415

    return tvm_ffi.from_dlpack(np.ascontiguousarray(a))


LAYOUTS = {
    "noncontiguous": _noncontiguous,
    "readonly": _readonly,
    "fortran": np.asfortranarray,
    "reversed": lambda a: a[::-1],
    "byteswapped": lambda a: a.astype(a.dtype.newbyteorder(">")),
    "misaligned": _misaligned,
    "broadcast": _broadcast,
    "float64": lambda a: a.astype(np.float64),
    "tvm_ffi_tensor": _tvm_ffi,
}


def _as_numpy(a):
    return np.from_dlpack(a) if not isinstance(a, np.ndarray) else a


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_unusual_layouts_work_in_the_cell(env, layout):
    make = LAYOUTS[layout]
    x, h = make(env.x), make(env.h)
    out, [state] = env.cell(x, [h])
    ref = reference.step(env.cell.config, _as_numpy(x), _as_numpy(h), *env.cell_weights)
    np.testing.assert_allclose(out, ref, rtol=0, atol=tolerance("float32", ref))
    if layout == "readonly":
        assert not x.flags.writeable and not h.flags.writeable  # the caller's arrays stay as they were
    _cell_ok(env)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_unusual_layouts_work_in_the_layer(env, layout):
    x = LAYOUTS[layout](env.xl)
    h0 = LAYOUTS[layout](np.full((LB, LH), 0.25, "float32"))
    seq, state = env.layer(x, initial_state=h0)
    ref = _layer_ref(env.layer, env.layer_weights, _as_numpy(x), _as_numpy(h0).astype(np.float64))
    np.testing.assert_allclose(seq, ref, rtol=0, atol=tolerance("float32", ref))
    np.testing.assert_allclose(state, ref[:, -1], rtol=0, atol=tolerance("float32", ref))
    mask = LAYOUTS[layout](np.ones((LB, LT), bool)) if layout not in ("float64", "byteswapped") else None
    if mask is not None:
        seq2, _ = env.layer(x, mask=mask, initial_state=h0)  # an all-true mask of the same layout: same numbers
        np.testing.assert_allclose(seq2, seq, rtol=0, atol=1e-6)
    _layer_ok(env)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_unusual_layouts_work_in_a_deployed_cell(env, layout):
    x, h = LAYOUTS[layout](env.x[:2]), LAYOUTS[layout](env.h[:2])
    out, [state] = env.deployed(x, [h])
    ref = reference.step(env.deployed_config, _as_numpy(x), _as_numpy(h), *env.deployed_weights)
    np.testing.assert_allclose(out, ref, rtol=0, atol=tolerance("float32", ref))
    _deployed_ok(env)


def _special(x, h):
    """Rows: 0 NaN input, 1 +Inf input, 2 -Inf input, 3 NaN state, 4 huge finite input (1e38), rest normal."""
    x, h = np.array(x, "float32"), np.array(h, "float32")
    x[0, 0], x[1, 1], x[2, 2], x[4] = np.nan, np.inf, -np.inf, 1e38
    h[3, 0] = np.nan
    return x, h


def _assert_like_reference(out, ref):
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))  # NaN where, and only where, the reference has it
    np.testing.assert_array_equal(np.isinf(out), np.isinf(ref))
    finite = np.isfinite(ref)
    np.testing.assert_allclose(out[finite], ref[finite], rtol=0, atol=tolerance("float32", ref[finite]))


def test_nan_inf_and_huge_values_propagate_like_the_reference_in_the_cell(env):
    rng = np.random.default_rng(9)
    x, h = _special(rng.uniform(-1, 1, (6, I)), rng.uniform(-1, 1, (6, H)))
    out, _ = env.cell(x, [h])
    with np.errstate(invalid="ignore", over="ignore"):
        ref = reference.step(env.cell.config, x, h, *env.cell_weights)
    assert np.isnan(ref[0]).all() and np.isnan(ref[3, 0]) and np.isfinite(ref[5]).all()
    _assert_like_reference(out, ref)
    _cell_ok(env)


def test_nan_inf_and_huge_values_propagate_like_the_reference_in_the_layer(env):
    rng = np.random.default_rng(10)
    x = rng.uniform(-1, 1, (6, LT, LI)).astype("float32")
    h0 = rng.uniform(-1, 1, (6, LH)).astype("float32")
    x[:, 2], h0 = _special(x[:, 2], h0)  # the special values arrive at step 2 (and the NaN state at step 0)
    layer = tvm_gru.GRU(LH, return_sequences=True, return_state=True)
    layer.set_weights(env.layer_weights)
    seq, state = layer(x, initial_state=h0)
    with np.errstate(invalid="ignore", over="ignore"):
        ref = _layer_ref(layer, env.layer_weights, x, h0.astype(np.float64))
    assert np.isnan(ref[0, 2:]).all() and np.isfinite(ref[0, :2]).all() and np.isfinite(ref[5]).all()
    _assert_like_reference(seq, ref)
    _assert_like_reference(state, ref[:, -1])


def test_nan_and_inf_propagate_like_the_reference_in_a_deployed_cell(env):
    x, h = _special(np.tile(env.x[:1], (6, 1)), np.tile(env.h[:1], (6, 1)))
    for rows in ((0, 1), (2, 3), (4, 5)):
        xs, hs = x[list(rows)], h[list(rows)]
        out, _ = env.deployed(xs, [hs])
        with np.errstate(invalid="ignore", over="ignore"):
            ref = reference.step(env.deployed_config, xs, hs, *env.deployed_weights)
        _assert_like_reference(out, ref)
    _deployed_ok(env)


def test_nan_state_in_a_stateful_layer_stays_until_reset(env):
    layer = tvm_gru.GRU(LH, stateful=True)
    layer.set_weights(env.stateful_weights)
    h0 = np.zeros((LB, LH), "float32")
    h0[1, 0] = np.nan
    layer.reset_states(h0)
    out = layer(env.xl)
    assert np.isfinite(out[0]).all() and np.isnan(out[1]).all()  # batch rows are independent
    layer.reset_states()
    ref = _layer_ref(layer, env.stateful_weights, env.xl)[:, -1]
    np.testing.assert_allclose(layer(env.xl), ref, rtol=0, atol=tolerance("float32", ref))
