"""The ``tvm-gru`` command line: all argparse code (``main`` is the console script)."""

from .main import build_parser, main

__all__ = ["main", "build_parser"]
