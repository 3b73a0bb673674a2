"""``tvm-gru``: the command line.

Subcommands
-----------
demo      compile a GRU cell for this machine, run it, check it against the numpy reference, print its speed
tune      MetaSchedule auto-tuning into tuning_logs/ (see ``tvm_gru.tune``)
export    write a deployable artifact (see ``tvm_gru.export``)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["main"]


def _demo(args) -> int:
    import tvm_gru  # noqa: PLC0415
    from tvm_gru import reference  # noqa: PLC0415

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


def positive_int(text: str) -> int:
    """argparse type: an int > 0 (argparse names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def target_name(text: str) -> str:
    from .targets import FRIENDLY  # noqa: PLC0415  (no TVM import)

    if text.lower() not in FRIENDLY:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(FRIENDLY)}, got {text!r}")
    return text.lower()


def _add_shape_args(p, batch=1, input_dim=256, units=256):
    p.add_argument("--units", type=positive_int, default=units)
    p.add_argument("--input-dim", type=positive_int, default=input_dim)
    p.add_argument("--batch", type=positive_int, default=batch)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--reset-after", action="store_true")
    p.add_argument("--implementation", type=int, default=1, choices=[1, 2])
    p.add_argument("--target", type=target_name, default=None, help="host (default), x86, aarch64, cuda")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tvm-gru", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="compile, run, check and time a GRU cell on this machine")
    _add_shape_args(demo)
    demo.add_argument("--calls", type=positive_int, default=2000)
    demo.add_argument("--seed", type=non_negative_int, default=0)
    demo.set_defaults(func=_demo)
    for register in _extensions():
        register(sub, _add_shape_args)
    return parser


def _extensions():
    """Subcommands defined next to the code they drive (tune, export, bench)."""
    out = []
    for module in ("tvm_gru.tune", "tvm_gru.export"):
        try:
            mod = __import__(module, fromlist=["register_cli"])
        except ImportError:
            continue
        if hasattr(mod, "register_cli"):
            out.append(mod.register_cli)
    return out


def _check_export_files(args, error) -> None:
    """Name the option whose file is missing or unreadable before anything is compiled."""
    if getattr(args, "config", None) and getattr(args, "onnx", None):
        error("argument --onnx: not allowed with argument --config (the model comes from one of them)")
    for option in ("config", "weights", "onnx"):
        value = getattr(args, option, None)
        if value and not Path(value).is_file():
            error(f"argument --{option}: file not found: {value}")
    if getattr(args, "weights", None) and not getattr(args, "config", None):
        error("argument --weights: needs --config (the weights fill the cell the config describes)")
    if getattr(args, "config", None):
        try:
            config = json.loads(Path(args.config).read_text())
        except (OSError, UnicodeDecodeError, ValueError) as err:
            error(f"argument --config: {args.config} is not a JSON file ({err})")
        if not isinstance(config, dict):
            error(f"argument --config: expected a JSON object (a Keras GRUCell config), got {type(config).__name__}")
    if getattr(args, "weights", None):
        try:
            with np.load(args.weights, allow_pickle=False) as data:
                if not hasattr(data, "files"):
                    error(f"argument --weights: {args.weights} is a single .npy array, expected a .npz archive")
        except (OSError, ValueError, EOFError) as err:
            error(f"argument --weights: {args.weights} is not a .npz archive ({err})")
    if getattr(args, "out", None) is not None:
        from .export import check_destination  # noqa: PLC0415  (an empty --out, ".", a non-artifact folder...)

        try:
            check_destination(args.out, getattr(args, "overwrite", False), "argument --out:", "--overwrite")
        except (ValueError, FileExistsError) as err:
            error(str(err))
    batches = getattr(args, "batches", None)
    if batches:
        try:
            args.batches = ",".join(str(positive_int(b.strip())) for b in batches.split(","))
        except argparse.ArgumentTypeError:
            error(f"argument --batches: expected comma-separated positive integers, got {batches!r}")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    sub = parser._subparsers._group_actions[0].choices[args.command]  # noqa: SLF001  (its error names the command)
    if args.command == "export":
        _check_export_files(args, sub.error)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as err:
        # library errors already name the argument; print them like argparse does, without a traceback
        sub.error(f"{type(err).__name__}: {err}")


if __name__ == "__main__":
    sys.exit(main())
