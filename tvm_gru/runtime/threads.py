"""The TVM CPU thread pool's size, set once for the in-process package and the deployed loader alike."""

from __future__ import annotations

import os

__all__ = ["default_num_threads"]


def default_num_threads() -> None:
    """Set ``TVM_NUM_THREADS`` to the cores this process may run on, unless the user set it.

    TVM's CPU thread pool reads it once, at its first parallel launch; unset, its parallel launches were several
    times slower (the figures are in the commit history).
    """
    if "TVM_NUM_THREADS" in os.environ:
        return
    try:
        os.environ["TVM_NUM_THREADS"] = str(len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        os.environ["TVM_NUM_THREADS"] = str(os.cpu_count() or 1)
