"""``tvm-gru``: the command line.

Subcommands
-----------
demo      compile a GRU cell for this machine, run it, check it against the numpy reference, print its speed
tune      MetaSchedule auto-tuning into tuning_logs/ (see ``tvm_gru.tune``)
export    write a deployable artifact (see ``tvm_gru.deploy.export``)
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from . import export_command, tune_command
from .args import add_shape_args, non_negative_int, positive_int

__all__ = ["main"]


def _demo(args) -> int:
    import tvm_gru  # noqa: PLC0415
    from tvm_gru.ops import reference  # noqa: PLC0415

    rng = np.random.default_rng(args.seed)
    cell = tvm_gru.GRUCell(args.units, reset_after=args.reset_after, implementation=args.implementation,
                           dtype=args.dtype, seed=args.seed, target=args.target)
    x = rng.uniform(-1, 1, (args.batch, args.input_dim)).astype(args.dtype)
    h = rng.uniform(-1, 1, (args.batch, args.units)).astype(args.dtype)
    t0 = time.perf_counter()
    out, [new_h] = cell(x, [h])
    compile_s = time.perf_counter() - t0
    ref = reference.step(cell.config, x, h, *cell.get_weights())
    err = float(np.max(np.abs(out - ref)))
    tol = (2e-5 if args.dtype == "float32" else 1e-11) * max(1.0, float(np.max(np.abs(ref))))
    calls = max(10, args.calls)
    for _ in range(10):
        cell(x, [h])
    times = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(calls):
            cell(x, [h])
        times.append((time.perf_counter() - t) / calls * 1e6)
    print(f"tvm_gru {tvm_gru.__version__}: {cell!r}")
    print(f"target: {cell.target.export()}")
    print(f"shape: batch={args.batch} input_dim={args.input_dim} units={args.units}")
    print(f"first call (build + compile or cache load): {compile_s:.2f} s")
    print(f"max |tvm - numpy float64 reference| = {err:.3e} (tolerance {tol:.1e}): {'OK' if err <= tol else 'FAIL'}")
    print(f"Keras call latency: median {sorted(times)[2]:.2f} us, best {min(times):.2f} us per step")
    return 0 if err <= tol else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tvm-gru", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="compile, run, check and time a GRU cell on this machine")
    add_shape_args(demo)
    demo.add_argument("--calls", type=positive_int, default=2000)
    demo.add_argument("--seed", type=non_negative_int, default=0)
    demo.set_defaults(func=_demo)
    for command in (tune_command, export_command):
        command.register(sub, add_shape_args)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    sub = parser._subparsers._group_actions[0].choices[args.command]  # noqa: SLF001  (its error names the command)
    if args.command == "export":
        export_command.check_files(args, sub.error)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as err:
        # library errors already name the argument; print them like argparse does, without a traceback
        sub.error(f"{type(err).__name__}: {err}")


if __name__ == "__main__":
    sys.exit(main())
