"""Read a file once, check what was read, and load exactly those bytes.

Checking a file by path and then opening it again by path leaves a window in which the file can be swapped;
and ``dlopen`` caches libraries by path, so a library rebuilt under the same name would not be reloaded.
These helpers close both gaps: :func:`read_regular_file` reads a regular file (no link, FIFO or device, size
capped) with plain reads, so a short or damaged file is a mismatch, never a fault on a mapped page; and
:func:`load_library_bytes` hands the checked bytes to the loader as a private copy, named by their SHA-256,
in a new 0700 folder. Standard library only (the deployed runtime uses it without numpy or TVM).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

__all__ = ["read_regular_file", "sha256_hex", "load_library_bytes", "fsync_path"]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_regular_file(path, limit: int, dir_fd=None) -> bytes:
    """The bytes of ``path``, read from one open file descriptor.

    Parameters
    ----------
    path : str or Path
    limit : int
        Largest size accepted, in bytes.
    dir_fd : int or None
        A folder's descriptor that a relative ``path`` is opened from (as for :func:`os.open`).

    Raises
    ------
    OSError
        ``path`` is missing, unreadable, or a symbolic link (``O_NOFOLLOW``).
    ValueError
        ``path`` is not a regular file (FIFO, device, folder), or is larger than ``limit``.
    """
    # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, dir_fd=dir_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path} is not a regular file (mode {stat.filemode(info.st_mode)})")
        if info.st_size > limit:
            raise ValueError(f"{path} holds {info.st_size} bytes; expected at most {limit}")
        chunks, left = [], limit + 1
        while left > 0:  # read to EOF, not to st_size: a file that grows while read is still capped
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise ValueError(f"{path} grew past {limit} bytes while it was read")
    return data


def load_library_bytes(data: bytes, loader, folder=None, suffix: str = ".so"):
    """``loader(path)`` on a private copy of ``data``; the copy is removed once the loader returns.

    The copy is named by the SHA-256 of ``data``: ``dlopen`` returns an already loaded library when a path
    repeats, and with the content in the name a repeated path can only mean the same bytes. ``folder`` (default
    the system temporary folder) receives a new 0700 subfolder for the copy; it must allow executable mappings.
    """
    private = tempfile.mkdtemp(prefix=".tvm_gru-load-", dir=folder)
    try:
        path = Path(private) / f"{sha256_hex(data)}{suffix}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o700)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return loader(str(path))  # the loader maps it now; the mapping outlives the file's name
    finally:
        shutil.rmtree(private, ignore_errors=True)


def fsync_path(path) -> None:
    """Flush a file's (or a folder's entries') data to the disk before it is published by a rename."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
