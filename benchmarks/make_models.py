"""The ONNX models of the whole-model benchmark (``models_bench.py``), built with ``onnx.helper`` (no torch).

    python benchmarks/make_models.py --out /tmp/tvm_gru_models     # writes <name>.onnx, prints sizes

All float32, layout 0 (X is (T, batch, I)), T and batch symbolic (``T``, ``batch``), weights from a seeded
generator (Keras-like Glorot-uniform ranges), so every run builds byte-identical files. The GRUs use the Keras
v1 default math in ONNX terms (activations HardSigmoid(alpha 0.2, beta 0.5) for f and Tanh for g,
linear_before_reset=0) unless the name says ``_sigmoid_lbr``:

* ``gru_head``: GRU(I=64, H=128) -> Y_h -> Squeeze -> Gemm(128 -> 10) -> Softmax.
* ``frontend_2gru``: a Linear front-end applied per time step (MatMul + Add + Relu, 40 -> 128), two stacked GRUs
  (128 -> 256 -> 256), a Linear head (Gemm 256 -> 10) on the last state of the second.
* ``bigru_lens``: a bidirectional GRU (I=64, H=128) with ``sequence_lens`` (int32, (batch,)) as a graph input,
  Y_h of both directions -> (batch, 256) -> Gemm(256 -> 10) -> Softmax.
* ``gru_head_sigmoid_lbr``: ``gru_head`` with ONNX's default activations (Sigmoid, Tanh) and
  linear_before_reset=1 (the torch / Keras ``reset_after=True`` math).

The files total ~4 MB (each under 2 MB): small, but binary and regenerable, so they are written outside the
repository by default and not committed.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from onnx import TensorProto, checker, helper, numpy_helper

OPSET = 14
V1_ACT = dict(activations=["HardSigmoid", "Tanh"], activation_alpha=[0.2], activation_beta=[0.5],
              linear_before_reset=0)
SIGMOID_LBR = dict(linear_before_reset=1)  # ONNX defaults: Sigmoid, Tanh


def _uniform(rng, lim, shape):
    return rng.uniform(-lim, lim, shape).astype(np.float32)


def _gru_weights(rng, prefix, input_dim, units, directions=1):
    """W (D, 3H, I), R (D, 3H, H), B (D, 6H) initializers, ONNX gate order [z, r, h]."""
    lim_w, lim_r = np.sqrt(6 / (input_dim + 3 * units)), np.sqrt(6 / (4 * units))
    return [numpy_helper.from_array(_uniform(rng, lim_w, (directions, 3 * units, input_dim)), f"{prefix}_W"),
            numpy_helper.from_array(_uniform(rng, lim_r, (directions, 3 * units, units)), f"{prefix}_R"),
            numpy_helper.from_array(_uniform(rng, 0.1, (directions, 6 * units)), f"{prefix}_B")]


def _dense(rng, prefix, n_in, n_out, gemm=True):
    """Gemm (B, n_in) x W^T: W stored (n_out, n_in) with transB=1; MatMul: W stored (n_in, n_out)."""
    lim = np.sqrt(6 / (n_in + n_out))
    w = _uniform(rng, lim, (n_out, n_in) if gemm else (n_in, n_out))
    return [numpy_helper.from_array(w, f"{prefix}_W"), numpy_helper.from_array(_uniform(rng, 0.1, (n_out,)),
                                                                               f"{prefix}_b")]


def _x(name, i):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["T", "batch", i])


def _model(nodes, name, inputs, outputs, inits):
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="tvm_gru benchmarks/make_models.py")
    checker.check_model(model)
    return model


def gru_head(seed=0, math=V1_ACT, name="gru_head"):
    rng = np.random.default_rng(seed)
    inits = _gru_weights(rng, "gru", 64, 128) + _dense(rng, "head", 128, 10)
    inits.append(numpy_helper.from_array(np.array([0], np.int64), "axes0"))
    nodes = [helper.make_node("GRU", ["X", "gru_W", "gru_R", "gru_B"], ["", "Y_h"], hidden_size=128, **math),
             helper.make_node("Squeeze", ["Y_h", "axes0"], ["h"]),
             helper.make_node("Gemm", ["h", "head_W", "head_b"], ["logits"], transB=1),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)]
    out = [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10])]
    return _model(nodes, name, [_x("X", 64)], out, inits)


def frontend_2gru(seed=1):
    rng = np.random.default_rng(seed)
    inits = (_dense(rng, "front", 40, 128, gemm=False) + _gru_weights(rng, "gru1", 128, 256)
             + _gru_weights(rng, "gru2", 256, 256) + _dense(rng, "head", 256, 10))
    inits += [numpy_helper.from_array(np.array([0], np.int64), "axes0"),
              numpy_helper.from_array(np.array([1], np.int64), "axes1")]
    nodes = [helper.make_node("MatMul", ["X", "front_W"], ["f0"]),  # (T, B, 40) x (40, 128): per time step
             helper.make_node("Add", ["f0", "front_b"], ["f1"]),
             helper.make_node("Relu", ["f1"], ["f"]),
             helper.make_node("GRU", ["f", "gru1_W", "gru1_R", "gru1_B"], ["Y1", ""], hidden_size=256, **V1_ACT),
             helper.make_node("Squeeze", ["Y1", "axes1"], ["s1"]),  # (T, 1, B, 256) -> (T, B, 256)
             helper.make_node("GRU", ["s1", "gru2_W", "gru2_R", "gru2_B"], ["", "Y_h2"], hidden_size=256, **V1_ACT),
             helper.make_node("Squeeze", ["Y_h2", "axes0"], ["h"]),
             helper.make_node("Gemm", ["h", "head_W", "head_b"], ["out"], transB=1)]
    out = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 10])]
    return _model(nodes, "frontend_2gru", [_x("X", 40)], out, inits)


def bigru_lens(seed=2):
    rng = np.random.default_rng(seed)
    inits = _gru_weights(rng, "gru", 64, 128, directions=2) + _dense(rng, "head", 256, 10)
    inits.append(numpy_helper.from_array(np.array([-1, 256], np.int64), "flat"))
    nodes = [helper.make_node("GRU", ["X", "gru_W", "gru_R", "gru_B", "sequence_lens"], ["", "Y_h"],
                              hidden_size=128, direction="bidirectional", activations=["HardSigmoid", "Tanh"] * 2,
                              activation_alpha=[0.2, 0.2], activation_beta=[0.5, 0.5], linear_before_reset=0),
             helper.make_node("Transpose", ["Y_h"], ["hb"], perm=[1, 0, 2]),  # (2, B, H) -> (B, 2, H)
             helper.make_node("Reshape", ["hb", "flat"], ["h"]),
             helper.make_node("Gemm", ["h", "head_W", "head_b"], ["logits"], transB=1),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)]
    lens = helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, ["batch"])
    out = [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10])]
    return _model(nodes, "bigru_lens", [_x("X", 64), lens], out, inits)


def gru_head_sigmoid_lbr(seed=3):
    return gru_head(seed, SIGMOID_LBR, "gru_head_sigmoid_lbr")


MODELS = {"gru_head": gru_head, "frontend_2gru": frontend_2gru, "bigru_lens": bigru_lens,
          "gru_head_sigmoid_lbr": gru_head_sigmoid_lbr}


def make_inputs(name, T, batch, seed=10):
    """Seeded inputs for model ``name``: X uniform in [-1, 1]; sequence_lens from T down (the full length
    first, so batch 1 runs all T steps; at batch > 1 the others are shorter, down to T // 2)."""
    rng = np.random.default_rng(seed)
    i = {"frontend_2gru": 40}.get(name, 64)
    x = rng.uniform(-1, 1, (T, batch, i)).astype(np.float32)
    if name != "bigru_lens":
        return [x]
    lens = np.linspace(T, max(1, T // 2), batch).round().astype(np.int32)
    return [x, lens]


def write_all(out_dir) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, make in MODELS.items():
        path = out_dir / f"{name}.onnx"
        path.write_bytes(make().SerializeToString())
        paths[name] = path
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "tvm_gru_models"),
                   help="folder for the .onnx files (default: a folder in the system temp dir)")
    args = p.parse_args(argv)
    for name, path in write_all(args.out).items():
        print(f"{path}  {path.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
