"""Batch-1 weight storage: float32 against float16 and int8 (``weight_dtype``), with onnxruntime beside them.

One command::

    python benchmarks/int8_bench.py --out bench_int8            # 1x256x256 and 1x512x1024, 9 rounds
    python benchmarks/int8_bench.py --out bench_int8 --errors   # also the int8 error table (goldens + shapes)

For each shape one v1 cell's weights (``bench.make_case``) are stored three ways, and every peer of a kind is
timed interleaved in one process: each round runs every peer for ~50 ms, timing every call on its own
(:func:`time_calls`). The figures are the 10th percentile of single calls (the calls no other job on the shared
cores interrupted) and the median; ratios are medians over rounds of the two peers' per-round percentiles. Rows:

* ``step``: the compiled step kernel alone (preallocated tensors), per storage dtype; the int8 kernel again on
  one core (the default schedule without its parallel loop: the compute floor of the widening inner loop); and
  onnxruntime's GRU with seq_length=1 (``session.run``, exact v1 math).
* ``seq``: 100 steps, the same peers: the step kernel called 100 times from Python on preallocated tensors, the
  ``tvm_gru.GRU`` layer (one call of the whole-sequence kernel, ``layer(x, initial_state=[h0])`` on (1, 100, I),
  the last state out) per storage dtype, and onnxruntime seq_length=100. A layer row's ``f32/this`` is the float32
  *layer* over it (a kernel row's, the float32 step kernel's).

What bounds each figure: the weight bytes one step streams over the read bandwidth measured in the same run for
an array of that size (``bench.read_bandwidth``, best of three: cache-resident when it fits), printed beside each
time as ``bound / measured`` (1.0 = at the bandwidth limit). Where the widening of narrow weights costs more than
their bytes, the ``1 core`` row shows it: its time over the cores is the compute floor of the inner loop.

``--errors`` measures what int8 storage changes: outputs of a 100-step sequence against float32 storage (max and
mean absolute error), on the benchmark shapes and on every float32 golden config (tests/goldens; weights and
initial state of the golden, 100 steps of inputs U(-1, 1)), with the bound per pre-activation
(``tvm_gru.runtime.packing.int8_error_bound``) at the first step.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench import SEQ_LEN, V1, _gru_layer, make_case, onnxruntime_peers, read_bandwidth, wait_until_quiet  # noqa: E402

SHAPES = [(1, 256, 256), (1, 512, 1024)]
STORAGE = ("float32", "float16", "int8")
ITEMSIZE = {"float32": 4, "float16": 2, "int8": 1}
GOLDENS = Path(__file__).parents[1] / "tests" / "goldens"


def _kernel(case, weight_dtype, serial: bool = False):
    """(one step, 100 steps) of the compiled step kernel on preallocated tensors, for ``weight_dtype`` storage.

    ``serial``: the rule's default schedule without its parallel loop (one core: the kernel's compute floor)."""
    import dataclasses  # noqa: PLC0415

    import tvm  # noqa: PLC0415

    import tvm_gru  # noqa: PLC0415
    from tvm_gru import schedules  # noqa: PLC0415
    from tvm_gru.build import compile_step, scheduled_module  # noqa: PLC0415
    from tvm_gru.build.modules import step_spec  # noqa: PLC0415
    from tvm_gru.build.tvm_workarounds import vectorizable_isnan  # noqa: PLC0415

    cell = tvm_gru.GRUCell(case.units, weight_dtype=weight_dtype, **V1)
    cell.set_weights(case.weights["v1"])
    spec = step_spec(cell, batch=case.batch, target=cell.target)
    if serial:
        rule = schedules.step_rules(cell.target)[0]
        config = dataclasses.replace(rule.default_config(spec, cell.target), parallel=False)
        with vectorizable_isnan():
            fn = tvm.compile(scheduled_module(spec, cell.target, config), target=cell.target).jit()["main"]
    else:
        fn = compile_step(spec, cell.target)
    weights = [tvm.runtime.tensor(a) for a in tvm_gru.packed_weights(cell).values()]
    xs = [tvm.runtime.tensor(x) for x in case.xs]
    hs = [tvm.runtime.tensor(case.h0.copy()), tvm.runtime.tensor(np.zeros_like(case.h0))]
    h0 = tvm.runtime.tensor(case.h0.copy())

    def step():
        fn(xs[0], h0, *weights, hs[1])

    def seq():
        fn(xs[0], h0, *weights, hs[0])
        for t in range(1, SEQ_LEN):
            fn(xs[t], hs[(t - 1) % 2], *weights, hs[t % 2])
    return step, seq


def _layer(case, weight_dtype):
    """100 steps of ``tvm_gru.GRU(..., weight_dtype=...)``: one whole-sequence kernel call (bench's layer peer)."""
    import tvm_gru  # noqa: PLC0415

    layer = _gru_layer(tvm_gru, case, {**V1, "weight_dtype": weight_dtype}, case.weights["v1"])
    if layer is None:
        raise RuntimeError(f"the {weight_dtype} layer did not run (see above)")
    return layer


def weight_bytes(case, weight_dtype) -> int:
    """Bytes one step streams: both weight matrices in their storage dtype (+ the float32 scales of int8)."""
    n = 3 * case.units * (case.input_dim + case.units) * ITEMSIZE[weight_dtype]
    return n + (2 * 3 * case.units * 4 if weight_dtype == "int8" else 0)


def time_calls(fns: dict, rounds: int, round_s: float) -> dict:
    """Per-call times (us) of each callable, timed one call at a time, interleaved: each round runs every callable
    for ~``round_s`` seconds, once the other threads of the process are idle and after a short warm-up. Returns
    ``{name: [per-round arrays]}``.

    On a shared machine (other jobs on the same 2 cores) a block median moves by 2x between rounds; the low
    percentiles of single calls are the calls no other job interrupted, and they stay put."""
    one = {}
    for name, fn in fns.items():
        fn()
        t0 = time.perf_counter()
        fn()
        one[name] = time.perf_counter() - t0
    out = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            n = max(3, int(round_s / max(one[name], 1e-7)))
            wait_until_quiet()  # the previous peer's spinning pool threads have parked (see bench.py)
            for _ in range(max(2, n // 10)):
                fn()
            times = np.empty(n)
            for i in range(n):
                t0 = time.perf_counter_ns()
                fn()
                times[i] = time.perf_counter_ns() - t0
            out[name].append(times / 1e3)
    return out


def _ratio(samples: dict, num: str, den: str, q: float) -> float:
    """Median over rounds of the ratio of the two callables' per-round ``q`` percentiles."""
    return float(np.median([np.percentile(a, q) / np.percentile(b, q) for a, b in zip(samples[num], samples[den])]))


def timings(shapes, rounds: int, round_s: float, threads: int) -> list:
    rows = []
    for shape in shapes:
        case = make_case(*shape)
        # best of three probes: one probe of ~50 ms moved by 2x between runs on the shared cores
        bw = {w: max(read_bandwidth(weight_bytes(case, w), threads) for _ in range(3)) for w in STORAGE}
        print(f"\n== {case.label}: " + ", ".join(f"{w} {weight_bytes(case, w) / 1e6:.2f} MB at {bw[w] / 1e9:.0f} GB/s"
                                              for w in STORAGE))
        kernels = {w: _kernel(case, w) for w in STORAGE}
        serial = _kernel(case, "int8", serial=True)
        layers = {w: _layer(case, w) for w in STORAGE}
        for kind in ("step", "seq"):
            fns = {f"{w} kernel": kernels[w][0 if kind == "step" else 1] for w in STORAGE}
            fns["int8 kernel, 1 core"] = serial[0 if kind == "step" else 1]
            if kind == "seq":
                fns.update({f"{w} layer": layers[w] for w in STORAGE})
            fns.update(onnxruntime_peers(case, kind, threads))
            samples = time_calls(fns, rounds, round_s)
            ort = next(k for k in fns if k.startswith("onnxruntime"))
            steps = 1 if kind == "step" else SEQ_LEN
            for name, per_round in samples.items():
                every = np.concatenate(per_round)
                p10, med = float(np.percentile(every, 10)), float(np.median(every))
                wdt = name.split()[0] if name.split()[0] in STORAGE else None
                bound = steps * weight_bytes(case, wdt) / bw[wdt] * 1e6 if wdt else None
                f32 = "float32 layer" if name.endswith(" layer") else "float32 kernel"  # the same kind of peer
                row = {"shape": case.label, "kind": kind, "peer": name, "p10_us": round(p10, 2),
                       "median_us": round(med, 2), "calls": every.size, "rounds": rounds, "threads": threads,
                       "weight_bytes": weight_bytes(case, wdt) if wdt else "",
                       "read_GBps": round(bw[wdt] / 1e9, 1) if wdt else "",
                       "bound_us": round(bound, 2) if wdt else "",
                       "bound_over_p10": round(bound / p10, 2) if wdt else "",
                       "f32_over_this_p10": round(_ratio(samples, f32, name, 10), 2),
                       "f32_over_this_median": round(_ratio(samples, f32, name, 50), 2),
                       "ort_over_this_p10": round(_ratio(samples, ort, name, 10), 2),
                       "ort_over_this_median": round(_ratio(samples, ort, name, 50), 2)}
                rows.append(row)
                extra = f"  bound {bound:9.2f} us ({bound / p10:4.2f})" if wdt else " " * 27
                print(f"  {kind:4s} {name:34s} p10 {p10:10.2f} us (median {med:10.2f}){extra}  f32/this "
                      f"{row['f32_over_this_p10']:5.2f}x ({row['f32_over_this_median']:5.2f}x)  ort/this "
                      f"{row['ort_over_this_p10']:5.2f}x ({row['ort_over_this_median']:5.2f}x)")
    return rows


# ---------------------------------------------------------------------------------------------- errors
def _run_steps(cell, xs, h0) -> np.ndarray:
    h, outs = h0, []
    for x in xs:
        h, _ = cell(x, [h])
        outs.append(h)
    return np.stack(outs)


def sequence_error(config: dict, weights: list, xs: np.ndarray, h0: np.ndarray) -> dict:
    """int8 against float32 storage over the steps of ``xs`` (T, B, I): max/mean |output difference| and the
    first step's largest pre-activation bound."""
    import tvm_gru  # noqa: PLC0415
    from tvm_gru.runtime.packing import int8_error_bound  # noqa: PLC0415

    cells = {}
    for w in ("float32", "int8"):
        cells[w] = tvm_gru.GRUCell(**config, weight_dtype=w)
        cells[w].set_weights(weights)
    o32, o8 = _run_steps(cells["float32"], xs, h0), _run_steps(cells["int8"], xs, h0)
    with np.errstate(invalid="ignore"):  # inf - inf where float32 storage itself overflows
        diff = np.abs(o8.astype(np.float64) - o32)
    finite = bool(np.isfinite(o32).all())
    return {"max_abs": float(diff.max()) if finite else float("nan"), "mean_abs": float(diff.mean()) if finite else
            float("nan"), "max_abs_out": float(np.abs(o32).max()) if finite else float("nan"),
            "bound_step1": float(int8_error_bound(weights[0], weights[1], xs[0], h0).max()),
            "note": "" if finite else "float32 storage itself overflows (unbounded gate activation)"}


def golden_errors(steps: int = SEQ_LEN) -> list:
    meta = json.loads((GOLDENS / "cases.json").read_text())["cases"]
    rows = []
    with np.load(GOLDENS / "goldens.npz") as data:
        for case in meta:
            cfg = case["config"]
            if case["dtype"] != "float32" or cfg["recurrent_activation"] in (None, "linear"):
                continue  # float64 cells have no int8 storage; a linear gate diverges within 12 steps
            keys = ["kernel", "recurrent_kernel"] + (["bias"] if case["use_bias"] else [])
            weights = [data[f"{case['name']}/{k}"] for k in keys]
            config = {k: cfg[k] for k in ("units", "activation", "recurrent_activation", "use_bias", "reset_after",
                                          "implementation")}
            rng = np.random.default_rng(len(rows))
            xs = rng.uniform(-1, 1, (steps, case["batch"], case["input_dim"])).astype(np.float32)
            err = sequence_error(config, weights, xs, data[f"{case['name']}/h0"])
            rows.append({"case": case["name"], "shape": f"{case['batch']}x{case['input_dim']}x{case['units']}",
                         "activation": f"{cfg['activation']}/{cfg['recurrent_activation']}",
                         "reset_after": cfg["reset_after"], **_formatted(err)})
    return rows


def shape_errors(shapes) -> list:
    rows = []
    for shape in shapes:
        case = make_case(*shape)
        err = sequence_error(dict(units=case.units, **V1), case.weights["v1"], case.xs, case.h0)
        rows.append({"case": "benchmark v1", "shape": case.label, "activation": "tanh/hard_sigmoid",
                     "reset_after": False, **_formatted(err)})
    return rows


def _formatted(err: dict) -> dict:
    return {k: f"{v:.3g}" if isinstance(v, float) else v for k, v in err.items()}


def _write(path: Path, rows: list) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench_int8", help="output folder (CSV)")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--round-s", type=float, default=0.05, help="seconds of calls per peer per round")
    p.add_argument("--threads", type=int, default=None, help="threads for every peer (default: all cores)")
    p.add_argument("--errors", action="store_true", help="also measure int8 against float32 outputs")
    p.add_argument("--no-timing", action="store_true", help="only the error tables")
    args = p.parse_args(argv)
    threads = args.threads or len(os.sched_getaffinity(0))
    os.environ["TVM_NUM_THREADS"] = str(threads)  # before tvm_gru starts TVM's thread pool
    import tvm_gru  # noqa: PLC0415

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    print(f"tvm_gru {tvm_gru.__version__} | {platform.processor() or platform.machine()} | {threads} threads | "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if not args.no_timing:
        _write(out / "timings.csv", timings(SHAPES, args.rounds, args.round_s, threads))
    if args.errors:
        rows = shape_errors(SHAPES) + golden_errors()
        _write(out / "int8_errors.csv", rows)
        for r in rows:
            print(f"  {r['case']:28s} {r['shape']:>12s} {r['activation']:22s} max {r['max_abs']:>9s} "
                  f"mean {r['mean_abs']:>9s} (|out| <= {r['max_abs_out']}, bound step 1 {r['bound_step1']}) "
                  f"{r['note']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
