"""Generate ONNX goldens written by ``torch.onnx.export`` from ``torch.nn.GRU``.

tests/interop/test_onnx.py::test_torch_exported_goldens imports these models with ``tvm_gru.from_onnx`` and compares
against torch's own outputs, so the torch exporter's GRU (gate order, ``linear_before_reset=1``, bias layout,
computed ``initial_h``, Transpose/Squeeze around the node) is covered in CI, where torch is not installed.
torch is NOT a dependency of tvm_gru; it is only needed to regenerate these files, so install it in a
separate virtual environment:

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch==2.13.0 onnx numpy

Regenerate from the repository root with:

    /tmp/torchvenv/bin/python tests/goldens/make_torch_onnx.py

Outputs (in ``torch_onnx/`` next to this script):

* ``<case>.onnx`` for every case below: ``torch.onnx.export(gru, args, path, opset_version=14,
  dynamo=False)`` (the TorchScript exporter) with graph inputs ``X`` (and ``h0``) and outputs ``Y``, ``Y_h``.
* ``cases.npz`` (np.savez_compressed, float32).  For every case ``N``: ``N/x`` (the input, batch-major
  (batch, steps, input_size) when ``batch_first`` else (steps, batch, input_size)), ``N/h0`` (only when the
  case passes an initial state: (num_layers * num_directions, batch, hidden)), ``N/Y`` and ``N/Y_h`` = torch's
  ``gru(x[, h0])`` outputs (the graph's ``Y`` and ``Y_h``).
* ``cases.json``: ``{"torch", "onnx", "numpy", "opset", "cases": {N: {"kwargs", "inputs", "seed", "note"}}}``
  where ``kwargs`` are the ``torch.nn.GRU`` arguments and ``inputs`` the graph input names.

Weights come from ``torch.manual_seed(seed)`` (torch's default GRU init, U(+-1/sqrt(hidden)), biases
included); inputs come from ``np.random.default_rng(seed)``, so they do not depend on torch's RNG.  Every
golden is checked against an independent float64 NumPy GRU (torch's r, z, n equations from its weights)
before anything is written.
"""

import json
import os
import warnings

import numpy as np
import onnx
import torch

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_onnx")
OPSET = 14
INPUT_SIZE, HIDDEN, STEPS, BATCH = 5, 8, 7, 2

# name -> (torch.nn.GRU kwargs beyond input_size/hidden_size, pass h0?, note)
CASES = {
    "plain": ({}, False, "unidirectional, no initial state: the exporter feeds initial_h from an Expand of zeros"),
    "h0": ({}, True, "initial state h0 as a second graph input, wired straight into the node's initial_h"),
    "bidirectional": ({"bidirectional": True}, False,
                      "one GRU node with direction='bidirectional' (from_onnx imports it as a Bidirectional wrapper)"),
    "no_bias": ({"bias": False}, False, "bias=False: the node has no B input"),
    "two_layers": ({"num_layers": 2}, True,
                   "two GRU nodes; layer 2 reads layer 1's squeezed Y; Y_h = Concat of both; h0 sliced per layer"),
    "batch_first": ({"batch_first": True}, False,
                    "one time-major GRU node (layout 0) between Transpose nodes on X and Y"),
}


def np_torch_gru(gru, x, h0):
    """torch.nn.GRU's equations in float64 NumPy; returns (output, h_n) like ``gru(x, h0)``."""
    p = {k: v.detach().double().numpy() for k, v in gru.named_parameters()}
    dirs = 2 if gru.bidirectional else 1
    seq = x.astype(np.float64)
    if gru.batch_first:
        seq = seq.transpose(1, 0, 2)
    h_n = []
    for layer in range(gru.num_layers):
        outs = []
        for d in range(dirs):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w_ih, w_hh = p["weight_ih" + sfx], p["weight_hh" + sfx]
            b_ih = p.get("bias_ih" + sfx, np.zeros(3 * gru.hidden_size))
            b_hh = p.get("bias_hh" + sfx, np.zeros(3 * gru.hidden_size))
            h = h0[layer * dirs + d].astype(np.float64)
            ys = [None] * seq.shape[0]
            for t in (range(seq.shape[0] - 1, -1, -1) if d else range(seq.shape[0])):
                gi, gh = seq[t] @ w_ih.T + b_ih, h @ w_hh.T + b_hh
                i_r, i_z, i_n = np.split(gi, 3, axis=1)
                h_r, h_z, h_n_ = np.split(gh, 3, axis=1)
                r, z = 1 / (1 + np.exp(-(i_r + h_r))), 1 / (1 + np.exp(-(i_z + h_z)))
                n = np.tanh(i_n + r * h_n_)  # torch's reset is applied after the product (ONNX lbr=1)
                h = (1 - z) * n + z * h
                ys[t] = h
            outs.append(np.stack(ys))
            h_n.append(h)
        seq = np.concatenate(outs, axis=-1)
    if gru.batch_first:
        seq = seq.transpose(1, 0, 2)
    return seq, np.stack(h_n)


def build_case(name, seed):
    kwargs, with_h0, note = CASES[name]
    torch.manual_seed(seed)
    gru = torch.nn.GRU(INPUT_SIZE, HIDDEN, **kwargs).eval()
    rng = np.random.default_rng(seed)
    shape = (BATCH, STEPS, INPUT_SIZE) if kwargs.get("batch_first") else (STEPS, BATCH, INPUT_SIZE)
    x = rng.uniform(-1.5, 1.5, shape).astype(np.float32)
    n_states = gru.num_layers * (2 if gru.bidirectional else 1)
    h0 = rng.uniform(-1.0, 1.0, (n_states, BATCH, HIDDEN)).astype(np.float32) if with_h0 else None
    args = (torch.from_numpy(x),) if h0 is None else (torch.from_numpy(x), torch.from_numpy(h0))
    inputs = ["X"] if h0 is None else ["X", "h0"]
    path = os.path.join(OUT_DIR, f"{name}.onnx")
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer warnings
        warnings.simplefilter("ignore")
        torch.onnx.export(gru, args, path, opset_version=OPSET, dynamo=False, input_names=inputs,
                          output_names=["Y", "Y_h"])
    with torch.no_grad():
        Y, Y_h = (t.numpy().astype(np.float32) for t in gru(*args))

    # Sanity: the golden is torch's GRU (independent float64 re-implementation), and the model is valid.
    ref_Y, ref_Y_h = np_torch_gru(gru, x, h0 if h0 is not None else np.zeros((n_states, BATCH, HIDDEN)))
    np.testing.assert_allclose(Y, ref_Y, rtol=0, atol=1e-5)
    np.testing.assert_allclose(Y_h, ref_Y_h, rtol=0, atol=1e-5)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    n_gru = sum(n.op_type == "GRU" for n in model.graph.node)
    assert n_gru == gru.num_layers, (name, n_gru)

    arrays = {f"{name}/x": x, f"{name}/Y": Y, f"{name}/Y_h": Y_h}
    if h0 is not None:
        arrays[f"{name}/h0"] = h0
    meta = {"kwargs": kwargs, "inputs": inputs, "seed": seed, "gru_nodes": n_gru,
            "note": f"{note}; input_size={INPUT_SIZE}, hidden={HIDDEN}, x U(+-1.5)"
                    + (", h0 U(+-1)" if with_h0 else "")}
    return arrays, meta


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    torch.set_num_threads(1)  # same summation order on every machine
    arrays, cases = {}, {}
    for seed, name in enumerate(CASES):
        a, meta = build_case(name, seed)
        arrays.update(a)
        cases[name] = meta
    np.savez_compressed(os.path.join(OUT_DIR, "cases.npz"), **arrays)
    info = {"torch": torch.__version__, "onnx": onnx.__version__, "numpy": np.__version__, "opset": OPSET,
            "cases": cases}
    with open(os.path.join(OUT_DIR, "cases.json"), "w") as f:
        json.dump(info, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {OUT_DIR}")


if __name__ == "__main__":
    main()
