"""The torch path: ``tvm_gru.Model.from_torch`` against TVM's own import of the same exported program (which
unrolls ``aten.gru.input`` step by step), against torch eager, and against onnxruntime on the ``torch.onnx``
export of the same module, in one process, interleaved.

    python benchmarks/torch_bench.py --out benchmarks/results/<machine>_<date>_torch    # writes results.md/csv

Models (``nn.Module``, float32, batch_first, seeded weights):

* ``gru_linear``: ``nn.GRU(64, 128)`` -> last step -> ``nn.Linear(128, 10)``.
* ``bigru_linear``: ``nn.GRU(64, 128, bidirectional=True)`` -> last step -> ``nn.Linear(256, 10)``.
* ``gru2_linear``: ``nn.GRU(64, 128, num_layers=2)`` -> last step -> ``nn.Linear(128, 10)``.

TVM's own import is compiled with ``tvm.compile`` (TVM's default CPU pipeline) and, as a second row, with
tvm_gru's pipeline (:func:`tvm_gru.relax.compile`: the same CPU schedules for its unrolled per-step ops), so the
speed-up is not only the default pipeline's unscheduled loops. Every output is checked against torch eager.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

TOL = 1e-4


def make_module(name: str):
    import torch  # noqa: PLC0415

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            bidir = name == "bigru_linear"
            self.gru = torch.nn.GRU(64, 128, num_layers=2 if name == "gru2_linear" else 1, batch_first=True,
                                    bidirectional=bidir)
            self.head = torch.nn.Linear(256 if bidir else 128, 10)

        def forward(self, x):
            y, _ = self.gru(x)
            # a non-negative index: TVM's own select converter reads out of bounds for -1 (tvm_gru's map fixes it)
            return self.head(y[:, y.shape[1] - 1])

    return Net().eval()


def tvm_unrolled(ep, pipeline: str):
    """TVM's own ``from_exported_program`` (GRU unrolled per step), compiled by TVM's default pipeline or by
    tvm_gru's (``pipeline`` "default" / "tvm_gru"); returns a callable on numpy inputs."""
    import tvm  # noqa: PLC0415
    from tvm.relax.frontend.torch import from_exported_program  # noqa: PLC0415

    import tvm_gru  # noqa: PLC0415

    mod = from_exported_program(ep)
    if pipeline == "default":
        ex = tvm.compile(mod, target=tvm_gru.targets.resolve("host"))
    else:
        ex = tvm_gru.relax.compile(mod, target="host")
    vm = tvm.relax.VirtualMachine(ex, tvm.cpu())
    fn = vm["main"]

    def run(x):
        out = fn(tvm.runtime.tensor(x))
        return (out[0] if not hasattr(out, "numpy") else out).numpy()

    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="/tmp/tvm_gru_torch_bench")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--only", nargs="*", default=None)
    p.add_argument("--configs", nargs="*", default=["1x100", "1x10"], help="BxT pairs")
    args = p.parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))

    import torch  # noqa: PLC0415
    from bench import time_interleaved  # noqa: PLC0415
    from models_bench import ort_session  # noqa: PLC0415

    import tvm_gru  # noqa: PLC0415

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, loads = [], [os.getloadavg()]
    names = args.only or ["gru_linear", "bigru_linear", "gru2_linear"]
    for name in names:
        net = make_module(name)
        for config in args.configs:
            batch, steps = (int(v) for v in config.split("x"))
            x = np.random.default_rng(1).standard_normal((batch, steps, 64)).astype(np.float32)
            xt = torch.from_numpy(x)
            with torch.no_grad():
                expected = net(xt).numpy()
            t0 = time.perf_counter()
            ep = torch.export.export(net, (xt,))
            model = tvm_gru.Model.from_torch(ep)
            t_model = time.perf_counter() - t0
            onnx_path = out / f"{name}_{config}.onnx"
            torch.onnx.export(net, (xt,), str(onnx_path), dynamo=False, input_names=["x"], output_names=["y"])
            sess = ort_session(str(onnx_path), args.threads)
            onnx_path.unlink()
            t0 = time.perf_counter()
            unrolled_default = tvm_unrolled(ep, "default")
            t_unrolled = time.perf_counter() - t0
            unrolled_ours = tvm_unrolled(ep, "tvm_gru")
            fns = {"tvm_gru.Model.from_torch": lambda: model(x),
                   "TVM from_exported_program (default pipeline)": lambda: unrolled_default(x),
                   "TVM from_exported_program (tvm_gru pipeline)": lambda: unrolled_ours(x),
                   "torch eager": lambda: net(xt),
                   "onnxruntime (torch.onnx export)": lambda: sess.run(["y"], {"x": x})}
            errs = {}
            with torch.no_grad():
                for label, fn in fns.items():
                    got = fn()
                    got = got[0] if isinstance(got, list) else got
                    got = got.numpy() if hasattr(got, "numpy") else np.asarray(got)
                    errs[label] = float(np.max(np.abs(got - expected)))
                bad = {k: v for k, v in errs.items() if not v < TOL}
                if bad:
                    raise SystemExit(f"{name} {config}: outputs differ from torch eager: {bad}")
                res = time_interleaved(fns, args.rounds, 0.05)
            ours = res["tvm_gru.Model.from_torch"][0]
            print(f"== {name} B={batch} T={steps} (compile: Model.from_torch {t_model:.1f} s, TVM unrolled "
                  f"{t_unrolled:.1f} s); max error vs torch {max(errs.values()):.2e}")
            for label, (med, mn, _n) in res.items():
                print(f"    {label:46s} {med:10.1f} us (min {mn:.1f})  tvm_gru is {med / ours:6.2f}x faster")
                rows.append({"model": name, "batch": batch, "steps": steps, "peer": label, "median_us": round(med, 2),
                             "min_us": round(mn, 2), "speedup_of_tvm_gru": round(med / ours, 3),
                             "max_abs_err": f"{errs[label]:.2e}"})
    loads.append(os.getloadavg())
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = ["# The torch path: tvm_gru.Model.from_torch against TVM's own unrolled import, torch and onnxruntime",
             "", f"{args.threads} threads; load average {loads[0][0]:.2f} before / {loads[1][0]:.2f} after; median "
             f"of {args.rounds} interleaved rounds, microseconds per call; speed-up = peer / tvm_gru.", "",
             "| model | B | T | peer | median us | speed-up of tvm_gru |", "|---|---:|---:|---|---:|---:|"]
    lines += [f"| {r['model']} | {r['batch']} | {r['steps']} | {r['peer']} | {r['median_us']:,.1f} | "
              f"**{r['speedup_of_tvm_gru']:.2f}x** |" for r in rows]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
