"""Per-step latency of deployed CUDA artifacts against torch's GRUCell and cuDNN GRU, batch 1.

Runs on a GPU machine with only apache-tvm-ffi + numpy + torch (the artifacts are made elsewhere with
``python tests/schedules/test_cuda.py --bundle DIR --arch sm_90``)::

    python benchmarks/cuda_bench.py DIR [--json out.json]

Two figures per implementation:
  step   a loop of steps feeding the state back (as an RNN does), one synchronize at the end: time per step
  sync   one step then ``torch.cuda.synchronize()``: the latency a caller waiting for each result sees
The TVM artifact is called with its Keras signature on torch CUDA tensors (DLPack, no copies).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from tvm_gru.runtime.artifact import load

PAIRS = [("256x256", "bench_sigmoid_256", "bench_v1_256"), ("512x1024", "bench_sigmoid_1024", "bench_v1_1024")]


def per_step(impls: dict, steps=1000, rounds=7) -> dict:
    """Median over interleaved rounds (the implementations take turns, so drift hits them alike)."""
    for fn in impls.values():
        for _ in range(200):
            fn()
    torch.cuda.synchronize()
    times = {k: [] for k in impls}
    for _ in range(rounds):
        for key, fn in impls.items():
            t = time.perf_counter()
            for _ in range(steps):
                fn()
            torch.cuda.synchronize()
            times[key].append((time.perf_counter() - t) / steps * 1e6)
    return {k: statistics.median(v) for k, v in times.items()}


def synced(fn, steps=1000) -> float:
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def torch_models(cell):
    """torch GRUCell and GRU (cuDNN) holding the artifact's weights (Keras z,r,h -> torch r,z,n)."""
    kernel, recurrent, bias = cell.get_weights()
    H = cell.units
    perm = np.r_[H:2 * H, 0:H, 2 * H:3 * H]
    w_ih, w_hh = torch.from_numpy(kernel[:, perm].T.copy()), torch.from_numpy(recurrent[:, perm].T.copy())
    b_ih, b_hh = torch.from_numpy(bias[0][perm].copy()), torch.from_numpy(bias[1][perm].copy())
    gru_cell = torch.nn.GRUCell(cell.input_dim, H).cuda().eval()
    gru = torch.nn.GRU(cell.input_dim, H).cuda().eval()
    with torch.no_grad():
        for m, sfx in ((gru_cell, ""), (gru, "_l0")):
            getattr(m, "weight_ih" + sfx).copy_(w_ih)
            getattr(m, "weight_hh" + sfx).copy_(w_hh)
            getattr(m, "bias_ih" + sfx).copy_(b_ih)
            getattr(m, "bias_hh" + sfx).copy_(b_hh)
    return gru_cell, gru


def tvm_step(cell, x, h0):
    state = [h0]

    def step():
        _, state[:] = cell(x, state)

    return step


def tvm_dps(cell, x, h0):
    """Destination passing with two preallocated state buffers (what a deployment loop would do)."""
    bufs = [h0.clone(), torch.empty_like(h0)]
    idx = [0]

    def step():
        i = idx[0]
        cell.step(x, bufs[i], bufs[1 - i])
        idx[0] = 1 - i

    return step


def graph(fn, tvm_launches: bool):
    """``fn`` captured in a CUDA graph (TVM launches go to torch's stream through tvm_ffi.use_torch_stream)."""
    import contextlib  # noqa: PLC0415

    import tvm_ffi  # noqa: PLC0415

    stream = torch.cuda.Stream()
    ctx = tvm_ffi.use_torch_stream if tvm_launches else contextlib.nullcontext
    with torch.cuda.stream(stream):
        with ctx():
            for _ in range(3):
                fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=stream):
        with ctx():
            fn()
    return g.replay


def gpu_time(fn, steps=200) -> float:
    """Device time per step (sum of kernel durations), from torch's profiler (CUPTI sees TVM's kernels too)."""
    try:
        from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                fn()
            torch.cuda.synchronize()
        total = 0.0
        for e in prof.key_averages():
            total += getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0)
        return total / steps
    except Exception as err:  # noqa: BLE001  (a profiler problem must not lose the other figures)
        print("profiler failed:", err)
        return float("nan")


def bench_pair(bundle: Path, shape: str, fast_name: str, v1_name: str) -> dict:
    cell = load(bundle / fast_name)
    v1 = load(bundle / v1_name)
    torch.manual_seed(0)
    x = torch.rand(1, cell.input_dim, device="cuda") * 2 - 1
    h0 = torch.rand(1, cell.units, device="cuda") * 2 - 1
    gru_cell, gru = torch_models(cell)
    with torch.no_grad():
        ref = gru_cell(x, h0)
        out, _ = cell(x, [h0])
        err = float((torch.from_dlpack(out) - ref).abs().max())
        state_c, state_g = [h0], [h0[None]]
        x3 = x[None]

        def step_cell():
            state_c[0] = gru_cell(x, state_c[0])

        def step_gru():
            _, state_g[0] = gru(x3, state_g[0])

        row = {"shape": shape, "max_err_vs_torch": err}
        impls = {"tvm_sigmoid_reset_after": tvm_step(cell, x, h0), "tvm_v1_default": tvm_step(v1, x, h0),
                 "tvm_sigmoid_dps": tvm_dps(cell, x, h0), "tvm_v1_dps": tvm_dps(v1, x, h0),
                 "torch_GRUCell": step_cell, "torch_GRU_cudnn": step_gru}
        steps = per_step(impls)
        for key, fn in impls.items():
            row[key] = {"step_us": steps[key], "sync_us": synced(fn), "gpu_us": gpu_time(fn)}
        # Last, so that a failed capture cannot spoil the figures above.
        graphs = {}
        for key, tvm_launch, fn in (("graph_tvm_sigmoid", True, impls["tvm_sigmoid_dps"]),
                                    ("graph_tvm_v1", True, impls["tvm_v1_dps"]),
                                    ("graph_torch_GRUCell", False, step_cell)):
            try:
                graphs[key] = graph(fn, tvm_launch)
            except Exception as err:  # noqa: BLE001
                print(f"{key}: CUDA graph capture failed: {err}")
        if graphs:
            steps = per_step(graphs)
            for key, fn in graphs.items():
                row[key] = {"step_us": steps[key], "sync_us": synced(fn), "gpu_us": float("nan")}
    best_torch = min(row["torch_GRUCell"]["step_us"], row["torch_GRU_cudnn"]["step_us"])
    row["speedup_vs_best_torch"] = best_torch / row["tvm_sigmoid_reset_after"]["step_us"]
    row["v1_over_sigmoid"] = row["tvm_v1_default"]["step_us"] / row["tvm_sigmoid_reset_after"]["step_us"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("bundle")
    parser.add_argument("--json")
    args = parser.parse_args()
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")
    rows = [bench_pair(Path(args.bundle), *pair) for pair in PAIRS]
    for r in rows:
        print(f"\n{r['shape']} batch 1 (max |tvm - torch| = {r['max_err_vs_torch']:.2e})")
        for key in [k for k in r if isinstance(r[k], dict)]:
            print(f"  {key:26s} step {r[key]['step_us']:8.2f} us   sync {r[key]['sync_us']:8.2f} us   "
                  f"gpu {r[key]['gpu_us']:8.2f} us")
        print(f"  speedup vs best torch: {r['speedup_vs_best_torch']:.2f}x; v1 default / sigmoid: "
              f"{r['v1_over_sigmoid']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
