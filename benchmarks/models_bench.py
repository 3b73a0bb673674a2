"""Whole ONNX models: ``tvm_gru.Model`` against onnxruntime running the same file, in one process, interleaved.

    python benchmarks/models_bench.py --out bench_models                 # B=1 T=100, B=1 T=10, B=8 T=100
    python benchmarks/models_bench.py --out bench_models --quick         # B=1 T=100 only, 3 rounds

The models come from ``make_models.py`` (written to ``<out>/models`` unless ``--models`` names a folder; they
are regenerable and not meant to be committed). For each model and (batch, T), after checking that tvm_gru's
outputs agree with onnxruntime's within 1e-4, these peers are timed with ``bench.py``'s harness (every peer once
per round, each block on quiet cores after a warm-up, median over rounds, ratios also paired by round):

* ``tvm_gru.Model``: ``Model.from_onnx(path, batch=[1, 8])`` called on numpy arrays (TVM's default Relax CPU
  pipeline for the non-GRU ops, via ``tvm_gru.relax.compile``).
* ``tvm_gru VM direct (default)`` / ``(dlight)``: the same module compiled by ``tvm_gru.relax.compile`` without /
  with ``dlight=True`` (dlight's CPU GEMV/Reduction rules on the non-GRU ops), called through the Relax VM on
  preallocated tvm tensors (no numpy conversion, no ``Model`` call path: that cost is the difference).
* ``onnxruntime``: ``InferenceSession`` on the same file, CPUExecutionProvider, intra_op threads = cores.
* ``tvm_gru GRU layers``: only the model's GRU node(s), as the ``tvm_gru.GRU`` / ``Bidirectional`` layers that
  ``tvm_gru.from_onnx`` builds from them (same weights; Keras calls on numpy arrays, the stacked GRUs chained,
  inputs that the graph computes before the GRU precomputed).
* ``onnxruntime GRU nodes``: the same GRU node(s) alone, extracted from the model (``onnx.utils.Extractor``).
* ``tvm_gru non-GRU part`` / ``onnxruntime non-GRU part``: the rest of the graph alone (the GRU outputs as graph
  inputs), compiled by ``Model.from_onnx`` / run by onnxruntime.

whole model = GRU part + non-GRU part + what neither contains (the VM's call and the glue between them). The
GRU floor printed beside it is bench.py's fused-kernel roofline summed over the model's GRU directions.

Outputs in ``--out``: ``results.csv``, ``results.md``.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

# GRU shapes of each model: (input_dim, units, directions) per GRU node, for the floor.
GRUS = {"gru_head": [(64, 128, 1)], "frontend_2gru": [(128, 256, 1), (256, 256, 1)],
        "bigru_lens": [(64, 128, 2)], "gru_head_sigmoid_lbr": [(64, 128, 1)]}
# (inputs, outputs) of the GRU-only and non-GRU-only subgraphs of each model.
GRU_PART = {"gru_head": (["X"], ["Y_h"]), "frontend_2gru": (["f"], ["Y_h2"]),
            "bigru_lens": (["X", "sequence_lens"], ["Y_h"]), "gru_head_sigmoid_lbr": (["X"], ["Y_h"])}
REST_PART = {"gru_head": (["Y_h"], ["probs"]), "frontend_2gru": (["X", "Y_h2"], ["f", "out"]),
             "bigru_lens": (["Y_h"], ["probs"]), "gru_head_sigmoid_lbr": (["Y_h"], ["probs"])}
CONFIGS = [(1, 100), (1, 10), (8, 100)]  # (batch, T)
TOL = 1e-4


def extract(model, inputs, outputs):
    import onnx  # noqa: PLC0415

    inferred = onnx.shape_inference.infer_shapes(model)
    sub = onnx.utils.Extractor(inferred).extract_model(inputs, outputs)
    del sub.graph.value_info[:]
    return sub


def ort_session(model, threads):
    import onnxruntime as ort  # noqa: PLC0415

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString() if hasattr(model, "SerializeToString") else str(model),
                                opts, providers=["CPUExecutionProvider"])


def ort_call(sess, feeds: dict):
    names = [o.name for o in sess.get_outputs()]
    return lambda: sess.run(names, feeds)


def dlight_vm(model, batch_sizes, dlight=True):
    """{batch: VM function} of the model compiled with (or without) dlight's rules, batch bound per size."""
    import tvm  # noqa: PLC0415

    import tvm_gru  # noqa: PLC0415
    from tvm_gru.models.model import _bind_batch  # noqa: PLC0415  (private: a benchmark, not an API)

    out = {}
    for b in batch_sizes:
        mod = tvm_gru.relax.from_onnx(_bind_batch(model, "batch", b))
        ex = tvm_gru.relax.compile(mod, dlight=dlight)
        out[b] = tvm.relax.VirtualMachine(ex, tvm.cpu())["main"]
    return out


def gru_layers(path, name, threads):
    """The model's GRU node(s) as tvm_gru layers, and a function (numpy inputs of the GRU part) -> callable."""
    import tvm_gru  # noqa: PLC0415
    from tvm_gru.interop.onnx_io import lengths_to_mask  # noqa: PLC0415

    n = len(GRUS[name])
    layers = [tvm_gru.from_onnx(str(path), node=i) for i in range(n)]
    for i, layer in enumerate(layers):  # only the last state is used, except the first of a stack
        seq = name == "frontend_2gru" and i == 0
        layer.return_sequences = seq
        for d in (getattr(layer, "forward_layer", None), getattr(layer, "backward_layer", None)):
            if d is not None:
                d.return_sequences = seq

    def make(ins):
        x = ins[0]
        if name == "frontend_2gru":
            def run():
                y, _ = layers[0](x)
                return layers[1](y)
            return run
        if name == "bigru_lens":
            mask = lengths_to_mask(ins[1], x.shape[0], True)
            return lambda: layers[0](x, mask=mask)
        return lambda: layers[0](x)

    return make


def gru_floor(name, batch, steps, peak, bandwidths):
    from bench import Case  # noqa: PLC0415

    total = 0.0
    for i, h, dirs in GRUS[name]:
        case = Case(batch, i, h, None, None, {})
        total += dirs * case.seq_roofline(peak, bandwidths[h], steps)
    return total * 1e6


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench_models")
    p.add_argument("--models", default=None, help="folder for the .onnx files (default <out>/models)")
    p.add_argument("--quick", action="store_true", help="batch 1, T=100 only; 3 rounds")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 7, quick 3)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--only", nargs="*", default=None, help="model names to run")
    p.add_argument("--no-dlight", action="store_true", help="skip the two VM-direct peers")
    p.add_argument("--configs", nargs="*", default=None, help="BxT pairs, e.g. 1x100 1x10 8x100 (the default)")
    args = p.parse_args(argv)
    threads = args.threads or len(os.sched_getaffinity(0))
    os.environ["TVM_NUM_THREADS"] = str(threads)
    import make_models  # noqa: PLC0415
    import onnx  # noqa: PLC0415
    import onnxruntime  # noqa: PLC0415
    import tvm  # noqa: PLC0415
    from bench import paired_ratio, read_bandwidth, sgemm_peak, time_interleaved  # noqa: PLC0415

    import tvm_gru  # noqa: PLC0415

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = make_models.write_all(args.models or out_dir / "models")
    names = args.only or list(make_models.MODELS)
    configs = CONFIGS[:1] if args.quick else CONFIGS
    if args.configs:
        configs = [tuple(int(v) for v in c.split("x")) for c in args.configs]
    rounds = args.rounds or (3 if args.quick else 7)
    batch_s = 0.02 if args.quick else 0.04
    load0 = os.getloadavg()
    print(f"tvm_gru {tvm_gru.__version__} | tvm {tvm.__version__} | onnxruntime {onnxruntime.__version__} | "
          f"{platform.processor() or platform.machine()} | {threads} threads | load average "
          f"{load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    if load0[0] > 0.5:
        print("  warning: the machine is busy; figures will be noisy")
    for n in names:
        print(f"  model {paths[n]}: {paths[n].stat().st_size / 1e6:.2f} MB")
    peak = sgemm_peak(threads)
    units = sorted({h for n in names for _, h, _ in GRUS[n]})
    bandwidths = {h: read_bandwidth(4 * 3 * h * h, threads) for h in units}
    print(f"roofline: SGEMM peak {peak / 1e9:.0f} GFLOP/s; recurrent-weight read bandwidth "
          + ", ".join(f"H={h}: {bw / 1e9:.0f} GB/s" for h, bw in bandwidths.items()))

    rows = []
    batches = sorted({b for b, _ in configs})
    for name in names:
        path = paths[name]
        model = onnx.load(str(path))
        t0 = time.perf_counter()
        whole = tvm_gru.Model.from_onnx(str(path), batch=batches)
        t_compile = time.perf_counter() - t0
        vms = {} if args.no_dlight else {"tvm_gru VM direct (dlight)": dlight_vm(model, batches),
                                         "tvm_gru VM direct (default)": dlight_vm(model, batches, False)}
        gru_sub, rest_sub = extract(model, *GRU_PART[name]), extract(model, *REST_PART[name])
        rest_tvm = tvm_gru.Model.from_onnx(rest_sub, batch=batches)
        sess, sess_gru, sess_rest = (ort_session(m, threads) for m in (path, gru_sub, rest_sub))
        make_layers = gru_layers(path, name, threads)
        print(f"\n== {name}: Model.from_onnx {t_compile:.1f} s")
        for batch, steps in configs:
            ins = make_models.make_inputs(name, steps, batch)
            feeds = dict(zip([i.name for i in sess.get_inputs()], ins))
            ref = sess.run(None, feeds)
            got = whole(*ins)
            got = got if isinstance(got, (list, tuple)) else [got]
            err = max(float(np.abs(np.asarray(g) - r).max()) for g, r in zip(got, ref))
            # the GRU part's and the rest's inputs, from onnxruntime's intermediate values
            gru_names, _ = GRU_PART[name]
            rest_names, _ = REST_PART[name]
            inter = extract(model, [i.name for i in sess.get_inputs()], sorted(set(gru_names + rest_names)
                                                                             - set(feeds)))
            extra = dict(zip([o.name for o in inter.graph.output],
                             ort_session(inter, threads).run(None, feeds))) if inter.graph.output else {}
            values = {**feeds, **extra}
            gru_feeds = {k: values[k] for k in gru_names}
            rest_feeds = {k: values[k] for k in rest_names}
            gru_ref = sess_gru.run(None, gru_feeds)[0]
            layer_run = make_layers([gru_feeds[k] for k in gru_names])
            out = layer_run()
            state = out[-1] if name != "bigru_lens" else np.stack(out[-2:])
            state = np.asarray(state).reshape(gru_ref.shape)
            err_gru = float(np.abs(state - gru_ref).max())
            rest_ref = sess_rest.run(None, rest_feeds)
            rest_got = rest_tvm(*[rest_feeds[k] for k in rest_names])
            rest_got = rest_got if isinstance(rest_got, (list, tuple)) else [rest_got]
            err_rest = max(float(np.abs(np.asarray(g) - r).max()) for g, r in zip(rest_got, rest_ref))
            fns = {"tvm_gru.Model": lambda ins=ins: whole(*ins)}
            for label, per_batch in vms.items():  # preallocated tvm tensors: no numpy conversion, no Model call path
                targs = [tvm.runtime.tensor(a) for a in ins]
                vm_fn = per_batch[batch]
                err = max(err, float(np.abs(vm_fn(*targs).numpy() - ref[0]).max()))
                fns[label] = lambda vm_fn=vm_fn, targs=targs: vm_fn(*targs)
            fns["onnxruntime"] = ort_call(sess, feeds)
            fns["tvm_gru GRU layers"] = layer_run
            fns["onnxruntime GRU nodes"] = ort_call(sess_gru, gru_feeds)
            rest_in = [rest_feeds[k] for k in rest_names]
            fns["tvm_gru non-GRU part"] = lambda rest_in=rest_in: rest_tvm(*rest_in)
            fns["onnxruntime non-GRU part"] = ort_call(sess_rest, rest_feeds)
            ok = max(err, err_gru, err_rest) <= TOL
            print(f"  B={batch} T={steps}: max |tvm_gru - onnxruntime| whole {err:.2e}, GRU part {err_gru:.2e}, "
                  f"non-GRU part {err_rest:.2e} -> {'ok' if ok else 'MISMATCH'}")
            if not ok:
                raise SystemExit(f"{name}: outputs differ from onnxruntime by more than {TOL}")
            samples = {}
            res = time_interleaved(fns, rounds, batch_s, samples=samples)
            floor = gru_floor(name, batch, steps, peak, bandwidths)
            ort = res["onnxruntime"][0]
            for peer, (med, best, n) in res.items():
                vs = "onnxruntime GRU nodes" if "GRU layers" in peer else (
                    "onnxruntime non-GRU part" if "non-GRU" in peer else "onnxruntime")
                ours = peer.startswith("tvm_gru")
                ratio = round(res[vs][0] / med, 2) if ours else ""
                paired = round(paired_ratio(samples[vs], samples[peer]), 2) if ours else ""
                rows.append({"model": name, "batch": batch, "T": steps, "peer": peer, "median_us": round(med, 2),
                             "min_us": round(best, 2), "rounds": n, "threads": threads,
                             "speedup_vs": vs if ours else "", "speedup": ratio, "speedup_paired": paired,
                             "gru_floor_us": round(floor, 1), "max_abs_err": f"{err:.1e}"})
                extra_s = f"  {ratio:.2f}x {vs} (paired {paired:.2f}x)" if ours else ""
                print(f"    {peer:28s} {med:10.1f} us (min {best:.1f}){extra_s}")
            tm, tg, tr = res["tvm_gru.Model"][0], res["tvm_gru GRU layers"][0], res["tvm_gru non-GRU part"][0]
            om, og, orr = ort, res["onnxruntime GRU nodes"][0], res["onnxruntime non-GRU part"][0]
            print(f"    split: tvm_gru {tg:.0f} GRU + {tr:.0f} rest + {tm - tg - tr:.0f} other = {tm:.0f}; onnxruntime "
                  f"{og:.0f} + {orr:.0f} + {om - og - orr:.0f} = {om:.0f}; GRU floor {floor:.0f} us "
                  f"(GRU layers at {floor / tg:.2f} of it)")
    load1 = os.getloadavg()
    print(f"\nload average after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    write_outputs(out_dir, rows, peak, bandwidths, threads, (load0, load1), rounds)
    return 0


def write_outputs(out_dir, rows, peak, bandwidths, threads, loads, rounds):
    with open(out_dir / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    get = {(r["model"], r["batch"], r["T"], r["peer"]): r for r in rows}
    keys = list(dict.fromkeys((r["model"], r["batch"], r["T"]) for r in rows))
    has_dlight = any(r["peer"] == "tvm_gru VM direct (dlight)" for r in rows)
    lines = ["# Whole ONNX models: tvm_gru.Model against onnxruntime\n",
             f"{platform.processor() or platform.machine()}, {threads} threads, SGEMM peak {peak / 1e9:.0f} GFLOP/s, "
             "recurrent-weight read bandwidth " + ", ".join(f"H={h} {bw / 1e9:.0f} GB/s" for h, bw in
                                                           bandwidths.items())
             + f"; load average {loads[0][0]:.2f} before / {loads[1][0]:.2f} after. Median of {rounds} interleaved "
             "rounds, microseconds per call; speed-up = onnxruntime / tvm_gru as the ratio of the medians (the "
             "median of the per-round ratios in parentheses).\n",
             "| model | B | T | tvm_gru.Model | onnxruntime | speed-up |"
             + (" VM direct, default / dlight (speed-ups) |" if has_dlight else "")
             + " GRU: tvm_gru / ort (x) | non-GRU: tvm_gru / ort (x) | tvm_gru other | GRU floor |",
             "|---|---:|---:|---:|---:|---:|" + ("---:|" if has_dlight else "") + "---:|---:|---:|---:|"]
    for k in keys:
        m, o, g, og, r, orr = (get[(*k, p)] for p in ("tvm_gru.Model", "onnxruntime", "tvm_gru GRU layers",
                                                     "onnxruntime GRU nodes", "tvm_gru non-GRU part",
                                                     "onnxruntime non-GRU part"))
        cells = [k[0], k[1], k[2], f"{m['median_us']:,.1f}", f"{o['median_us']:,.1f}",
                 f"**{m['speedup']:.2f}x** ({m['speedup_paired']:.2f}x)"]
        if has_dlight:
            v, d = get[(*k, "tvm_gru VM direct (default)")], get[(*k, "tvm_gru VM direct (dlight)")]
            cells += [f"{v['median_us']:,.1f} / {d['median_us']:,.1f} ({v['speedup']:.2f}x / {d['speedup']:.2f}x)"]
        cells += [f"{g['median_us']:,.1f} / {og['median_us']:,.1f} ({g['speedup']:.2f}x)",
                  f"{r['median_us']:,.1f} / {orr['median_us']:,.1f} ({r['speedup']:.2f}x)",
                  f"{m['median_us'] - g['median_us'] - r['median_us']:,.1f}", f"{m['gru_floor_us']:,.1f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "GRU = the model's GRU node(s) alone (tvm_gru: the `tvm_gru.GRU` layers with the same weights, "
              "Keras calls; onnxruntime: the nodes extracted into their own model); non-GRU = the rest of the graph "
              "alone; tvm_gru other = whole - GRU - non-GRU (VM call, glue, the layer calls' own Python overhead "
              "counted negative); GRU floor = the fused kernel's roofline summed over GRU directions."]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out_dir / 'results.csv'}, {out_dir / 'results.md'}")


if __name__ == "__main__":
    sys.exit(main())
