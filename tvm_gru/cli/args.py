"""argparse types and the shape options every subcommand shares (each error names its option)."""

from __future__ import annotations

import argparse

from ..targets import FRIENDLY

__all__ = ["positive_int", "non_negative_int", "target_name", "add_shape_args"]


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
    if text.lower() not in FRIENDLY:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(FRIENDLY)}, got {text!r}")
    return text.lower()


def add_shape_args(p, batch=1, input_dim=256, units=256):
    p.add_argument("--units", type=positive_int, default=units)
    p.add_argument("--input-dim", type=positive_int, default=input_dim)
    p.add_argument("--batch", type=positive_int, default=batch)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--reset-after", action="store_true")
    p.add_argument("--implementation", type=int, default=1, choices=[1, 2])
    p.add_argument("--target", type=target_name, default=None, help="host (default), x86, aarch64, cuda")
