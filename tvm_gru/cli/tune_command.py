"""``tvm-gru tune``: MetaSchedule auto-tuning of one step workload (see :func:`tvm_gru.tuning.tune.tune`), or with
``--sequence`` a measured search over the whole-sequence kernel's knobs (:func:`tvm_gru.tuning.sequence_tune.
tune_sequence`)."""

from __future__ import annotations

import logging
import sys

from ..tuning.sequence_tune import tune_sequence
from ..tuning.space import SPACES
from ..tuning.tune import refresh, tune

__all__ = ["register"]



def _cli(args) -> int:
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    if args.rpc_tracker and not args.rpc_key:
        print("tvm-gru tune: --rpc-tracker needs --rpc-key", file=sys.stderr)
        return 2
    common = {"target": args.target, "log_dir": args.log_dir, "rpc_tracker": args.rpc_tracker,
              "rpc_key": args.rpc_key, "wait_quiet": args.wait_quiet}
    if args.sequence and (args.refresh or args.implementation != 1):
        print("tvm-gru tune: --sequence takes neither --refresh nor --implementation", file=sys.stderr)
        return 2
    if args.weight_dtype is not None and not args.sequence:
        print("tvm-gru tune: --weight-dtype goes with --sequence (the step tuning keeps float32 storage)",
              file=sys.stderr)
        return 2
    try:
        if args.sequence:
            results = [tune_sequence(args.units, args.input_dim, args.batch, activation=args.activation,
                                     recurrent_activation=args.recurrent_activation, reset_after=args.reset_after,
                                     use_bias=not args.no_bias, dtype=args.dtype,
                                     weight_dtype=args.weight_dtype, steps=args.steps,
                                     return_sequences=args.return_sequences, time_major=args.time_major,
                                     trials=args.trials, **common)]
        elif args.refresh:
            results = refresh(**common)
        else:
            results = [tune(args.units, args.input_dim, args.batch, activation=args.activation,
                            recurrent_activation=args.recurrent_activation, reset_after=args.reset_after,
                            implementation=args.implementation, use_bias=not args.no_bias, dtype=args.dtype,
                            trials=args.trials or 32, space=args.space, trials_per_batch=args.trials_per_batch,
                            cost_model=args.cost_model, seed=args.seed, **common)]
    except KeyboardInterrupt:
        print("\ntvm-gru tune: interrupted; every measured batch is kept in the database: re-run the same command "
              "to resume", file=sys.stderr)
        return 130
    print("\n".join(r.summary() for r in results) if results else "tvm-gru tune --refresh: no tuned workloads")
    return 0


def register(subparsers, add_shape_args) -> None:
    """Add ``tvm-gru tune``."""
    p = subparsers.add_parser("tune", help="auto-tune one step workload with MetaSchedule into tuning_logs/")
    add_shape_args(p)
    p.add_argument("--activation", default="tanh")
    p.add_argument("--recurrent-activation", default="hard_sigmoid")
    p.add_argument("--no-bias", action="store_true")
    p.add_argument("--trials", type=int, default=None,
                   help="measured candidates wanted in all (a re-run resumes); default 32, with --sequence 64 (the "
                        "whole space when it is smaller)")
    p.add_argument("--trials-per-batch", type=int, default=8)
    p.add_argument("--log-dir", default=None, help="root of the tuning logs (default: the package's tuning_logs/)")
    p.add_argument("--rpc-tracker", default=None, metavar="HOST:PORT", help="time candidates on RPC servers")
    p.add_argument("--rpc-key", default=None, help="the key the RPC servers registered with")
    p.add_argument("--space", default="hand", choices=SPACES)
    p.add_argument("--cost-model", default="xgb", choices=["xgb", "random"])
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--refresh", action="store_true",
                   help="re-measure every tuned workload of the target against the current hand schedules")
    p.add_argument("--sequence", action="store_true",
                   help="tune the whole-sequence kernel (tvm_gru.GRU, Bidirectional, models) instead of the step")
    p.add_argument("--steps", type=int, default=100, help="--sequence: T of the timed calls")
    p.add_argument("--return-sequences", action="store_true", help="--sequence: the layer returns every step")
    p.add_argument("--time-major", action="store_true", help="--sequence: (T, B, I) inputs")
    p.add_argument("--weight-dtype", choices=["float32", "float16", "int8"], default=None,
                   help="--sequence: storage of the weight matrices (as GRU(weight_dtype=...))")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each local timing, wait up to SECONDS for the CPUs to be mostly idle")
    p.set_defaults(func=_cli)
