"""Side-by-side latency of the Keras v1 GRU step: tvm_gru against numpy, onnxruntime and torch.

One command::

    python benchmarks/bench.py --out bench_out          # full grid, a few minutes
    python benchmarks/bench.py --out bench_out --quick  # two shapes, < 1 minute

For every shape (batch, input_dim, units) it builds all peers, then times them *interleaved*: each round
runs every peer once (a warm-up, then a batch of calls), so machine noise hits all peers alike; the
reported figure is the median over rounds of the per-call time. Rows:

* ``step``: one Keras call ``cell(x, [h])`` on numpy arrays (tvm_gru), the same step in numpy float32,
  onnxruntime's ``GRU`` op with seq_length=1 (exact v1 math: HardSigmoid 0.2/0.5, linear_before_reset=0)
  and torch's ``GRUCell`` (only if torch is installed: sigmoid + reset_after=True, the FLOP-equivalent
  config torch has; tvm_gru is timed in that config too). ``tvm_gru kernel`` is the compiled kernel alone
  (preallocated tensors, no Python wrapper).
* ``seq``: 100 steps. tvm_gru loops the cell in Python (and runs ``tvm_gru.GRU`` when the package has it);
  numpy hoists the input projection out of the loop; onnxruntime runs seq_length=100; torch ``nn.GRU``.

Roofline: measured in the same run. Peak = numpy float32 matmul of large square matrices (all threads);
cache read bandwidth = a compiled TVM reduction reading an array of the given size over and over in one call
(best of 1 and all threads; the repeats keep the launch out of it). A step's roofline time is
max(FLOPs / peak, weight bytes / bandwidth). A sequence's is the floor of the fused kernel: the input
projection of all steps at the peak, then per step max(recurrent FLOPs / peak, recurrent weight bytes /
their own read bandwidth), which is L2's when a core's share fits there. Each tvm_gru figure is printed as
roofline / measured (1.0 = at the limit).

Outputs in ``--out``: ``results.csv`` (one row per peer, kind and shape), ``results.md`` (tables) and
``latency.png`` (plot).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHAPES = [(b, i, h) for b in (1, 8, 64) for (i, h) in ((64, 128), (256, 256), (512, 1024))]
QUICK_SHAPES = [(1, 64, 128), (1, 256, 256)]
SEQ_LEN = 100
V1 = dict(recurrent_activation="hard_sigmoid", reset_after=False, implementation=1)
TORCH_LIKE = dict(recurrent_activation="sigmoid", reset_after=True, implementation=2)


# ---------------------------------------------------------------------------------------------- data
@dataclass
class Case:
    batch: int
    input_dim: int
    units: int
    xs: np.ndarray  # (T, B, I) float32
    h0: np.ndarray  # (B, H)
    weights: dict  # config name -> [kernel, recurrent_kernel, bias] (Keras layout)

    @property
    def label(self) -> str:
        return f"{self.batch}x{self.input_dim}x{self.units}"

    @property
    def flops(self) -> float:
        """FLOPs of one step's products (the roofline's compute term)."""
        return 2.0 * self.batch * 3 * self.units * (self.input_dim + self.units)

    @property
    def weight_bytes(self) -> int:
        return 4 * 3 * self.units * (self.input_dim + self.units)

    @property
    def recurrent_bytes(self) -> int:
        """Bytes of the recurrent kernel: what a fused sequence kernel reads at every step."""
        return 4 * 3 * self.units * self.units

    def seq_roofline(self, peak: float, recurrent_bandwidth: float, steps: int) -> float:
        """Seconds for ``steps`` steps in one fused call: the input projection as one GEMM at the peak, then per
        step the recurrent product, bound by the peak or by reading the recurrent kernel."""
        gemm = 2.0 * self.batch * 3 * self.units * self.input_dim * steps / peak
        recurrent_flops = 2.0 * self.batch * 3 * self.units * self.units
        return gemm + steps * max(recurrent_flops / peak, self.recurrent_bytes / recurrent_bandwidth)


def make_case(batch, input_dim, units, seed=0) -> Case:
    rng = np.random.default_rng(seed)
    lim_k, lim_r = np.sqrt(6 / (input_dim + 3 * units)), np.sqrt(6 / (units + 3 * units))
    weights = {}
    for name, cfg in (("v1", V1), ("torch_like", TORCH_LIKE)):
        bias_shape = (2, 3 * units) if cfg["reset_after"] else (3 * units,)
        weights[name] = [rng.uniform(-lim_k, lim_k, (input_dim, 3 * units)).astype(np.float32),
                         rng.uniform(-lim_r, lim_r, (units, 3 * units)).astype(np.float32),
                         rng.uniform(-0.1, 0.1, bias_shape).astype(np.float32)]
    xs = rng.uniform(-1, 1, (SEQ_LEN, batch, input_dim)).astype(np.float32)
    h0 = rng.uniform(-1, 1, (batch, units)).astype(np.float32)
    return Case(batch, input_dim, units, xs, h0, weights)


# ---------------------------------------------------------------------------------------------- peers
# Each factory returns {row name: zero-argument callable} for one kind ("step" or "seq"), or {} to skip.
def tvm_gru_peers(case: Case, kind: str) -> dict:
    import tvm_gru  # noqa: PLC0415

    out = {}
    for tag, cfg in (("", V1), (" (reset_after, sigmoid)", TORCH_LIKE)):
        wname = "v1" if not tag else "torch_like"
        cell = tvm_gru.GRUCell(case.units, **cfg)
        cell.set_weights(case.weights[wname])
        out[f"tvm_gru{tag}"] = _cell_step(cell, case) if kind == "step" else _cell_loop(cell, case)
        if kind == "step":
            out[f"tvm_gru kernel{tag}"] = _bare_kernel(cell, case, cfg)
        if kind == "seq" and hasattr(tvm_gru, "GRU"):
            layer = _gru_layer(tvm_gru, case, cfg, case.weights[wname])
            if layer is not None:
                out[f"tvm_gru.GRU{tag}"] = layer
            if not tag:
                out[STREAM_PEER] = _gru_stream(tvm_gru, case, cfg, case.weights[wname])
    return out


STREAM_PEER = "tvm_gru.GRU streaming, 1 frame per call"
SEQ_PEER = "tvm_gru.GRU"


def _gru_stream(tvm_gru, case, cfg, weights):
    """A stateful layer fed the 100 steps one (B, 1, I) frame per call, as an audio front end would."""
    layer = tvm_gru.GRU(case.units, stateful=True, **cfg)
    layer.set_weights(weights)
    frames = [np.ascontiguousarray(case.xs[t][:, None, :]) for t in range(SEQ_LEN)]
    layer(frames[0])  # compiles

    def run():
        layer.reset_states()
        for frame in frames:
            layer(frame)
    return run


def _cell_step(cell, case):
    x, state = case.xs[0], [case.h0.copy()]
    cell(x, state)  # compiles the kernel for this batch size

    def run():
        out, new = cell(x, state)
        state[0] = new[0]
    return run


def _cell_loop(cell, case):
    xs, h0 = case.xs, case.h0

    def run():
        h = h0
        for x in xs:
            out, [h] = cell(x, [h])
    return run


def _bare_kernel(cell, case, cfg):
    """The compiled step kernel alone: preallocated tensors, no Python wrapper."""
    import tvm  # noqa: PLC0415

    from tvm_gru import StepSpec, build
    from tvm_gru.runtime import packing  # noqa: PLC0415

    spec = StepSpec(cell.config, batch=case.batch, input_dim=case.input_dim, lanes=cell.lanes)
    fn = build.compile_step(spec, cell.target)
    packed = packing.pack_weights(cell.config, *cell.get_weights(), cell.lanes)
    args = [tvm.runtime.tensor(a) for a in (case.xs[0], case.h0, *packed.values(),
                                            np.zeros((case.batch, case.units), np.float32))]
    return lambda: fn(*args)


def _gru_layer(tvm_gru, case, cfg, weights):
    """The fused sequence layer (Keras GRU API assumed: (B, T, I) in, last state out)."""
    try:
        layer = tvm_gru.GRU(case.units, **cfg)
        layer.set_weights(weights)
        x_bti = np.ascontiguousarray(case.xs.transpose(1, 0, 2))
        h0 = case.h0
        layer(x_bti, initial_state=[h0])
    except (TypeError, ValueError, AttributeError, NotImplementedError) as err:
        print(f"  tvm_gru.GRU skipped: {type(err).__name__}: {err}")
        return None
    return lambda: layer(x_bti, initial_state=[h0])


def numpy_peers(case: Case, kind: str) -> dict:
    """The v1 cell in numpy float32 (fused products, pre-split recurrent weights)."""
    kernel, recurrent, bias = case.weights["v1"]
    H = case.units
    r_zr, r_h = np.ascontiguousarray(recurrent[:, :2 * H]), np.ascontiguousarray(recurrent[:, 2 * H:])

    def hard_sigmoid(v):
        return np.clip(v * np.float32(0.2) + np.float32(0.5), 0, 1)

    def cell(xp, h):  # xp = x @ kernel + bias
        zr = hard_sigmoid(xp[:, :2 * H] + h @ r_zr)
        z, r = zr[:, :H], zr[:, H:]
        hh = np.tanh(xp[:, 2 * H:] + (r * h) @ r_h)
        return z * h + (1 - z) * hh

    if kind == "step":
        x, state = case.xs[0], [case.h0]

        def step():
            state[0] = cell(x @ kernel + bias, state[0])
        return {"numpy": step}

    xs2 = case.xs.reshape(-1, case.input_dim)

    def seq():
        xp = (xs2 @ kernel + bias).reshape(SEQ_LEN, case.batch, 3 * H)  # hoisted input projection
        h = case.h0
        for t in range(SEQ_LEN):
            h = cell(xp[t], h)
    return {"numpy (hoisted input proj)": seq}


def onnxruntime_peers(case: Case, kind: str, threads: int) -> dict:
    try:
        import onnxruntime as ort  # noqa: PLC0415
        from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415
    except ImportError:
        return {}
    kernel, recurrent, bias = case.weights["v1"]
    B, I, H = case.batch, case.input_dim, case.units
    T = 1 if kind == "step" else SEQ_LEN
    inits = [numpy_helper.from_array(kernel.T[None].copy(), "W"),
             numpy_helper.from_array(recurrent.T[None].copy(), "R"),
             numpy_helper.from_array(np.r_[bias, np.zeros(3 * H, np.float32)][None], "B")]
    node = helper.make_node("GRU", ["X", "W", "R", "B", "", "h0"], ["Y", "Y_h"], hidden_size=H,
                            activations=["HardSigmoid", "Tanh"], activation_alpha=[0.2], activation_beta=[0.5],
                            linear_before_reset=0)
    graph = helper.make_graph([node], "gru", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, B, I]),
                                              helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, B, H])],
                              [helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, B, H])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    if kind == "step":
        x, state = case.xs[:1], [case.h0[None]]

        def step():
            state[0] = sess.run(["Y_h"], {"X": x, "h0": state[0]})[0]
        return {"onnxruntime GRU seq_length=1": step}
    xs, h0 = case.xs, case.h0[None]
    return {"onnxruntime GRU seq_length=100": lambda: sess.run(["Y_h"], {"X": xs, "h0": h0})}


def torch_peers(case: Case, kind: str, threads: int) -> dict:
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return {}
    torch.set_num_threads(threads)
    kernel, recurrent, bias = case.weights["torch_like"]
    H = case.units
    perm = np.r_[H:2 * H, 0:H, 2 * H:3 * H]  # Keras [z|r|h] -> torch [r|z|n]
    params = {"weight_ih": kernel[:, perm].T, "weight_hh": recurrent[:, perm].T,
              "bias_ih": bias[0][perm], "bias_hh": bias[1][perm]}
    if kind == "step":
        mod = torch.nn.GRUCell(case.input_dim, H)
        names = {k: k for k in params}
    else:
        mod = torch.nn.GRU(case.input_dim, H)
        names = {k: f"{k}_l0" for k in params}
    with torch.no_grad():
        for k, v in params.items():
            getattr(mod, names[k]).copy_(torch.from_numpy(np.ascontiguousarray(v)))
    mod.eval()
    if kind == "step":
        x, state = torch.from_numpy(case.xs[0]), [torch.from_numpy(case.h0)]

        def step():
            with torch.inference_mode():
                state[0] = mod(x, state[0])
        return {"torch GRUCell (sigmoid, reset_after)": step}
    xs, h0 = torch.from_numpy(case.xs), torch.from_numpy(case.h0[None])

    def seq():
        with torch.inference_mode():
            mod(xs, h0)
    return {"torch nn.GRU (sigmoid, reset_after)": seq}


# ---------------------------------------------------------------------------------------------- timing
# Every peer brings a thread pool (TVM's, onnxruntime's, OpenBLAS's for numpy, torch's) whose workers spin for a
# while after a call before they sleep. On 2 cores, a peer timed while another pool still spins shares its cores
# with those threads, and a parallel kernel then waits for a descheduled worker at every barrier: measured here
# (8x256x256 step, blocks interleaved with no pause) tvm_gru 60 us alone but 3,600-4,000 us right after
# onnxruntime or numpy blocks, and numpy up to 24 ms right after tvm_gru. So each timed block starts only once
# every other thread of the process has gone idle (their CPU time in /proc/self/task stops growing), then warms
# up its own pool. ``--settle S`` adds a fixed pause on top.
SETTLE_S = 0.0
# After the quiet wait a parallel kernel runs ~2x slower for its first ~10 ms (measured, 8x256x256 step after
# onnxruntime and numpy blocks: 93-106 us in the first 100 calls, 52-55 us from then on): warm up that long.
WARMUP_S = 0.025
QUIET_WINDOW_S = 0.02  # no other thread ran for this long: their pools are parked
QUIET_MAX_S = 2.0


def _other_threads_cpu() -> int:
    """CPU ticks (user + system) used so far by the process's threads other than the calling one."""
    me, total = threading.get_native_id(), 0
    for tid in os.listdir("/proc/self/task"):
        if int(tid) == me:
            continue
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread exited
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total


def wait_until_quiet(window_s: float = QUIET_WINDOW_S, max_s: float = QUIET_MAX_S) -> float:
    """Sleep until no other thread of this process used CPU for ``window_s`` (at most ``max_s``); the wait."""
    if not os.path.isdir("/proc/self/task"):
        time.sleep(window_s)
        return window_s
    t0 = time.perf_counter()
    before = _other_threads_cpu()
    while time.perf_counter() - t0 < max_s:
        time.sleep(window_s)
        now = _other_threads_cpu()
        if now == before:
            break
        before = now
    return time.perf_counter() - t0


def time_interleaved(fns: dict, rounds: int, batch_s: float, settle_s: float = SETTLE_S,
                     samples: dict | None = None) -> dict:
    """Median/min per-call time (us) of each callable, timed round-robin, each block on quiet cores.

    ``samples``, if given, receives each callable's per-round times (us), in round order, for ratios paired
    by round (see :func:`paired_ratio`).
    """
    calls = {}
    for name, fn in fns.items():
        fn()
        t0 = time.perf_counter()
        fn()
        one = time.perf_counter() - t0
        calls[name] = max(1, int(batch_s / max(one, 1e-7)))
    per_round = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            n = calls[name]
            time.sleep(settle_s)
            wait_until_quiet()  # the previous peer's spinning threads have parked
            warm_until = time.perf_counter() + WARMUP_S  # caches, this peer's own threads awake again
            for _ in range(max(1, n // 10)):
                fn()
            while time.perf_counter() < warm_until:
                fn()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            per_round[name].append((time.perf_counter() - t0) / n * 1e6)
    if samples is not None:
        samples.update(per_round)
    return {name: (statistics.median(s), min(s), len(s)) for name, s in per_round.items()}


def paired_ratio(numerator: list, denominator: list) -> float:
    """Median over rounds of ``numerator[r] / denominator[r]`` (two peers' times of the same round).

    The VM this runs on switches between a fast and a slow state (SGEMM peak 123-175 GFLOP/s between runs, and
    within a run); two peers timed within one round (a second or two apart) mostly share the state, so the
    median of per-round ratios is steadier than the ratio of the two medians, which may come from rounds in
    different states.
    """
    return statistics.median(a / b for a, b in zip(numerator, denominator))


# ---------------------------------------------------------------------------------------------- roofline
def sgemm_peak(threads: int) -> float:
    """FLOP/s of numpy float32 matmul (all BLAS threads), best of a few square sizes."""
    best = 0.0
    for n in (1024, 2048):
        a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        a @ a
        for _ in range(3):
            t0 = time.perf_counter()
            a @ a
            best = max(best, 2 * n ** 3 / (time.perf_counter() - t0))
    return best


def _reduction_kernel(nbytes: int, threads: int, streams: int = 4, repeats: int = 1):
    """sum over k of A[n, k, :] for A of ``nbytes`` float32 (NB, K, 24): the packed weights' access pattern,
    ``streams`` unit blocks read side by side per thread, the whole array ``repeats`` times per call."""
    import tvm  # noqa: PLC0415
    from tvm import s_tir, te  # noqa: PLC0415

    from tvm_gru import targets  # noqa: PLC0415

    width = 24
    nb = streams * threads * 2
    depth = max(1, nbytes // (4 * width * nb))
    a = te.placeholder((nb, depth, width), "float32", "A")
    k = te.reduce_axis((0, depth), "k")
    r = te.reduce_axis((0, repeats), "r")
    o = te.compute((nb, width), lambda n, w: te.sum(a[n, k, w], axis=[r, k]), name="O")
    sch = s_tir.Schedule(te.create_prim_func([a, o]))
    block = sch.get_sblock("O")
    n, w, rr, kk = sch.get_loops(block)
    n_o, n_i = sch.split(n, [None, streams])
    w_o, w_i = sch.split(w, [None, 8])
    sch.reorder(n_o, rr, kk, n_i, w_o, w_i)
    sch.unroll(n_i)
    sch.unroll(w_o)
    sch.vectorize(w_i)
    if threads > 1:
        sch.parallel(n_o)
    sch.decompose_reduction(block, rr)
    target = targets.resolve(None)
    fn = tvm.compile(sch.mod, target=target).jit()["main"]
    args = [tvm.runtime.tensor(np.ones((nb, depth, width), np.float32)),
            tvm.runtime.tensor(np.zeros((nb, width), np.float32))]
    return fn, args, nb * depth * width * 4 * repeats


def read_bandwidth(nbytes: int, threads: int) -> float:
    """Bytes/s reading an array of ``nbytes`` repeatedly (cache-resident when it fits), best of 1..threads.

    Each call reads the array enough times (up to 64) to read ~8 MB, so a parallel launch (~1.5 us) is not
    part of the figure."""
    best = 0.0
    repeats = max(1, min(64, (8 << 20) // max(1, nbytes)))
    for t in sorted({1, threads}):
        fn, args, real = _reduction_kernel(nbytes, t, repeats=repeats)
        n = max(3, int(2e-3 / max(real / 50e9, 1e-7)))
        for _ in range(n):
            fn(*args)
        for _ in range(7):
            t0 = time.perf_counter()
            for _ in range(n):
                fn(*args)
            best = max(best, real * n / (time.perf_counter() - t0))
    return best


# ---------------------------------------------------------------------------------------------- report
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench_out", help="output folder (CSV, Markdown, PNG)")
    p.add_argument("--quick", action="store_true", help="two shapes, few repeats (< 1 minute)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per shape (default 7, quick 3)")
    p.add_argument("--threads", type=int, default=None, help="threads for every peer (default: all cores)")
    p.add_argument("--settle", type=float, default=SETTLE_S,
                   help="idle seconds before each timed block, so other peers' spinning threads park (default 0)")
    args = p.parse_args(argv)
    threads = args.threads or len(os.sched_getaffinity(0))
    os.environ["TVM_NUM_THREADS"] = str(threads)  # before tvm_gru starts TVM's thread pool
    import tvm_gru  # noqa: PLC0415

    shapes = QUICK_SHAPES if args.quick else SHAPES
    rounds = args.rounds or (3 if args.quick else 7)
    batch_s = 0.01 if args.quick else 0.04
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    print(f"tvm_gru {tvm_gru.__version__} | {platform.processor() or platform.machine()} | {threads} threads | "
          f"load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    if load0[0] > 0.5:
        print("  warning: the machine is busy; figures will be noisy")
    peak = sgemm_peak(threads)
    print(f"roofline: numpy SGEMM peak {peak / 1e9:.0f} GFLOP/s")

    rows = []
    for shape in shapes:
        case = make_case(*shape)
        bw = read_bandwidth(case.weight_bytes, threads)
        bw_rec = read_bandwidth(case.recurrent_bytes, threads)
        roof_us = max(case.flops / peak, case.weight_bytes / bw) * 1e6
        roof_seq_us = case.seq_roofline(peak, bw_rec, SEQ_LEN) * 1e6
        print(f"\n== {case.label} (batch x input_dim x units): weights {case.weight_bytes / 1e6:.2f} MB read at "
              f"{bw / 1e9:.0f} GB/s, {case.flops / 1e6:.1f} MFLOP -> roofline {roof_us:.2f} us/step; recurrent "
              f"{case.recurrent_bytes / 1e6:.2f} MB read at {bw_rec / 1e9:.0f} GB/s -> {SEQ_LEN} steps fused "
              f"{roof_seq_us:.1f} us")
        for kind in ("step", "seq"):
            fns = {**tvm_gru_peers(case, kind), **numpy_peers(case, kind), **onnxruntime_peers(case, kind, threads),
                   **torch_peers(case, kind, threads)}
            samples = {}
            res = time_interleaved(fns, rounds, batch_s, args.settle, samples)
            roof = roof_us if kind == "step" else roof_seq_us
            ort_name = next((k for k in res if k.startswith("onnxruntime")), None)
            ort = res[ort_name][0] if ort_name else None
            for name, (med, best, n) in res.items():
                ours = name.startswith("tvm_gru")
                paired = round(paired_ratio(samples[ort_name], samples[name]), 2) if ort and ours else ""
                stream = ""
                if name == STREAM_PEER and SEQ_PEER in samples:  # both are calls of SEQ_LEN steps
                    stream = round(paired_ratio(samples[name], samples[SEQ_PEER]), 2)
                row = {"shape": case.label, "batch": case.batch, "input_dim": case.input_dim, "units": case.units,
                       "kind": kind, "peer": name, "median_us": round(med, 3), "min_us": round(best, 3),
                       "rounds": n, "threads": threads, "roofline_us": round(roof, 3),
                       "roofline_fraction": round(roof / med, 3) if ours else "",
                       "ort_speedup": round(ort / med, 2) if ort and ours else "",
                       "ort_speedup_paired": paired, "stream_over_sequence_paired": stream}
                rows.append(row)
                extra = ""
                if ours:
                    extra = f"  {roof / med:5.2f} of roofline"
                    if ort and "sigmoid" not in name:
                        extra += f", {ort / med:5.2f}x onnxruntime (paired by round {paired:.2f}x)"
                    if stream != "":
                        extra += f", {stream:.2f}x the whole-sequence call (paired by round)"
                print(f"  {kind:4s} {name:42s} {med:11.2f} us (min {best:.2f}){extra}")
    load1 = os.getloadavg()
    print(f"\nload average after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    write_outputs(out_dir, rows, peak, threads, (load0, load1))
    return 0


def write_outputs(out_dir: Path, rows: list, peak: float, threads: int, loads) -> None:
    with open(out_dir / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    lines = ["# tvm_gru benchmark\n",
             f"{platform.processor() or platform.machine()}, {threads} threads, numpy SGEMM peak "
             f"{peak / 1e9:.0f} GFLOP/s, load average {loads[0][0]:.2f} before / {loads[1][0]:.2f} after. "
             f"Median of interleaved rounds, microseconds; shapes are batch x input_dim x units.\n"]
    for kind, title in (("step", "One step (Keras call)"), ("seq", f"{SEQ_LEN}-step sequence")):
        peers = list(dict.fromkeys(r["peer"] for r in rows if r["kind"] == kind))
        lines += [f"\n## {title}\n", "| peer | " + " | ".join(shapes) + " |", "|---|" + "---:|" * len(shapes)]
        for peer in peers:
            cells = []
            for s in shapes:
                r = next((r for r in rows if r["kind"] == kind and r["peer"] == peer and r["shape"] == s), None)
                cells.append("" if r is None else f"{r['median_us']:,.1f}")
            lines.append(f"| {peer} | " + " | ".join(cells) + " |")
        lines.append("| roofline | " + " | ".join(
            f"{next(r['roofline_us'] for r in rows if r['kind'] == kind and r['shape'] == s):,.1f}"
            for s in shapes) + " |")
        lines += ["", f"tvm_gru as a fraction of the roofline / speed-up over onnxruntime, ratio of the medians "
                  f"(median of the per-round ratios) ({kind}):", "",
                  "| peer | " + " | ".join(shapes) + " |", "|---|" + "---:|" * len(shapes)]
        for peer in [p for p in peers if p.startswith("tvm_gru")]:
            cells = []
            for s in shapes:
                r = next((r for r in rows if r["kind"] == kind and r["peer"] == peer and r["shape"] == s), None)
                cells.append("" if r is None else f"{r['roofline_fraction']:.2f} / {r['ort_speedup'] or '-'}x "
                             f"({r['ort_speedup_paired'] or '-'}x)")
            lines.append(f"| {peer} | " + " | ".join(cells) + " |")
        streams = {r["shape"]: r for r in rows if r["kind"] == kind and r["stream_over_sequence_paired"] != ""}
        if streams:
            seq = {r["shape"]: r["median_us"] for r in rows if r["kind"] == kind and r["peer"] == SEQ_PEER}
            lines += ["", "Streamed frame per step over the whole-sequence call's per-step cost: ratio of the medians "
                      "(median of the per-round ratios):", "", "| " + " | ".join(shapes) + " |",
                      "|" + "---:|" * len(shapes),
                      "| " + " | ".join(_stream_cell(streams.get(s), seq.get(s)) for s in shapes) + " |"]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    plot(out_dir / "latency.png", rows, shapes)
    print(f"wrote {out_dir / 'results.csv'}, {out_dir / 'results.md'}, {out_dir / 'latency.png'}")


def _stream_cell(stream_row, seq_median) -> str:
    """"ratio of medians (paired ratio)" of a streaming row over the whole-sequence call, or "" if either is missing."""
    if stream_row is None or not seq_median:
        return ""
    return f"{stream_row['median_us'] / seq_median:.2f} ({stream_row['stream_over_sequence_paired']:.2f})"


def plot(path: Path, rows: list, shapes: list) -> None:
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): no plot")
        return
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 1.6 * len(shapes)), 9))
    for ax, kind in zip(axes, ("step", "seq")):
        peers = list(dict.fromkeys(r["peer"] for r in rows if r["kind"] == kind))
        width = 0.8 / (len(peers) + 1)
        for j, peer in enumerate(peers + ["roofline"]):
            ys = []
            for s in shapes:
                r = next((r for r in rows if r["kind"] == kind and r["shape"] == s
                          and (r["peer"] == peer or peer == "roofline")), None)
                ys.append(np.nan if r is None else (r["roofline_us"] if peer == "roofline" else r["median_us"]))
            xs = np.arange(len(shapes)) + (j - len(peers) / 2) * width
            ax.bar(xs, ys, width, label=peer, color="black" if peer == "roofline" else None,
                   alpha=0.35 if peer == "roofline" else 1.0)
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(shapes)), shapes)
        ax.set_ylabel("microseconds (log)")
        ax.set_title("one step (Keras call)" if kind == "step" else f"{SEQ_LEN}-step sequence")
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
