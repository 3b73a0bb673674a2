"""The one compile cache: compiled kernels in memory and on disk, each entry proving what it is.

The disk cache (``$TVM_GRU_CACHE_DIR``, default ``~/.cache/tvm_gru``) holds one shared library per kernel,
named by a hash of everything the code depends on (spec, target, TVM version, the source of the compute
and schedule modules), so a second process loads instead of recompiling and a changed schedule never
loads a stale kernel. The cache is not trusted by file name: each library has a record beside it with the full
key and the library's SHA-256, both checked before the library is mapped; anything else is rebuilt (see
:func:`load_or_compile`). The step kernels here and the sequence kernels of :mod:`tvm_gru.ops.sequence` share this
one cache (:func:`cached_kernel`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import tempfile
import threading
from pathlib import Path

import tvm

from .._version import __version__
from ..runtime.verified_files import fsync_path, load_library_bytes, read_regular_file, sha256_hex

__all__ = ["cache_dir", "cached_kernel", "load_or_compile", "clear_memory_cache", "source_hash"]

log = logging.getLogger(__name__)
_MEMORY: dict = {}  # full key -> compiled function, for step and sequence kernels alike
_LOCK = threading.RLock()
_RECORD_LIMIT = 1 << 20  # an entry's JSON record is a few kB
_LIBRARY_LIMIT = 1 << 30


def source_hash(*modules) -> str:
    """A short hash of the source files of ``modules`` (a package counts with every ``.py`` file in its folder).

    Part of every cache key, so an edited compute, packing or schedule module never loads a stale kernel.
    """
    h = hashlib.sha256()
    for module in modules:
        path = Path(module.__file__)
        files = sorted(path.parent.glob("*.py")) if path.name == "__init__.py" else [path]
        for file in files:
            h.update(file.name.encode())
            h.update(file.read_bytes())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    """The disk cache folder: ``$TVM_GRU_CACHE_DIR``, or ``~/.cache/tvm_gru`` when it is unset or empty (an empty
    value, as an unset shell variable expands to, must not make the working directory the cache)."""
    value = os.environ.get("TVM_GRU_CACHE_DIR", "")
    return Path(value) if value.strip() else Path.home() / ".cache" / "tvm_gru"


def cached_kernel(kind: str, fields: dict, build):
    """The ``main`` function of the kernel that ``fields`` describe: from memory, the disk cache, or ``build()``.

    Parameters
    ----------
    kind : str
        Prefix of the cache entry's file name ("step", "seq").
    fields : dict
        Everything the kernel's code depends on besides the TVM and tvm_gru versions (spec key, target,
        source hash, tuning records, schedule), JSON-serialisable (other values are written with ``str``).
    build : callable
        ``build()`` -> a TVM executable, called on a miss.
    """
    key = json.dumps({**fields, "tvm": tvm.__version__, "pkg": __version__}, sort_keys=True, default=str)
    with _LOCK:
        fn = _MEMORY.get(key)
        if fn is None:
            name = f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:24]}"
            fn = _MEMORY[key] = load_or_compile(name, key, build)
        return fn


def load_or_compile(name: str, key: str, build):
    """The ``main`` function of the cache entry ``name`` when it proves to be the kernel ``key`` describes, else
    of ``build()`` (a TVM executable), which is then stored under ``name``.

    An entry is the library ``<name>.so`` and the record ``<name>.json`` beside it: the full ``key`` and the
    library's size and SHA-256. The library is read with plain reads and checked against the record before
    anything is mapped, then loaded from a private copy of the checked bytes (:mod:`.runtime.verified_files`), so
    a foreign, truncated or swapped file is rebuilt, never loaded, and a rebuilt entry is loaded afresh. Writes
    go to temporary files that are flushed to disk and renamed (the library first): a reader never sees half a
    file, and a reader that sees a new library with the old record rebuilds. Without a private cache folder
    (see :func:`_private_cache_dir`), or when storing fails (disk full, linker error), the kernel is kept in
    memory only.

    Parameters
    ----------
    name : str
        The entry's file name without suffix (``<kind>-<hash of key>``).
    key : str
        The canonical JSON of everything the kernel depends on (see :func:`cached_kernel`).
    build : callable
        ``build()`` -> a TVM executable, called when no entry proves out.
    """
    folder = _private_cache_dir()
    if folder is not None:
        fn = _load_entry(folder, name, key)
        if fn is not None:
            return fn
    executable = build()
    if folder is not None:
        try:
            return _store_and_load(folder, name, key, executable)
        except Exception as err:  # noqa: BLE001  (disk full, linker or TVM error: the kernel itself is fine)
            log.warning("tvm_gru: could not write the compile cache entry %s (%s); using the kernel compiled in "
                        "memory", folder / f"{name}.so", err)
    return executable.jit()["main"]


def _private_cache_dir():
    """:func:`cache_dir`, created 0700, or None (with a warning) when it cannot be created or is not private.

    Like pip and ccache, native code is loaded only from a folder that no other user can write: one owned by
    another user, or writable by group or others, is not used.
    """
    folder = cache_dir()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.stat()
    except OSError as err:  # read-only home
        log.warning("tvm_gru: compile cache disabled (%s); compiling in memory", err)
        return None
    problem = None
    if not stat.S_ISDIR(info.st_mode):
        problem = "it is not a folder"
    elif hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        problem = f"it is owned by user id {info.st_uid}, not by this user ({os.geteuid()})"
    elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problem = f"group or other users can write it (mode {stat.S_IMODE(info.st_mode):o}; expected 700)"
    if problem is not None:
        log.warning("tvm_gru: not using the compile cache %s: %s; compiling in memory (set TVM_GRU_CACHE_DIR to a "
                    "folder only you can write)", folder, problem)
        return None
    return folder


def _entry_problem(record, key: str, data: bytes):
    """Why the library bytes ``data`` are not the kernel ``key`` describes, per its ``record``; None if they are."""
    if not isinstance(record, dict):
        return f"its record is a JSON {type(record).__name__}, expected an object"
    if json.dumps(record.get("key"), sort_keys=True) != key:
        return "its record names another kernel (a different key)"
    if record.get("size") != len(data) or record.get("sha256") != sha256_hex(data):
        return (f"the library ({len(data)} bytes) does not match its recorded size {record.get('size')!r} and "
                "SHA-256 (truncated, damaged or replaced)")
    return None


def _load_entry(folder: Path, name: str, key: str):
    """The verified entry's ``main``, or None (with a warning when an entry was there but did not prove out)."""
    library, record = folder / f"{name}.so", folder / f"{name}.json"
    if not os.path.lexists(library) and not os.path.lexists(record):
        return None
    try:
        data = read_regular_file(library, _LIBRARY_LIMIT)
        problem = _entry_problem(json.loads(read_regular_file(record, _RECORD_LIMIT)), key, data)
        if problem is None:
            return _load(data, folder)
    except Exception as err:  # noqa: BLE001  (unreadable, not JSON, or a verified library that does not load)
        problem = f"{type(err).__name__}: {err}"
    log.warning("tvm_gru: rebuilding compile cache entry %s: %s", library, problem)
    return None


def _load(data: bytes, folder: Path):
    return load_library_bytes(data, lambda path: tvm.runtime.load_module(path)["main"], folder=folder)


def _store_and_load(folder: Path, name: str, key: str, executable):
    """Export ``executable`` to a temporary library, load it, then publish it and its record under ``name``."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".so")
    os.close(fd)
    try:
        executable.export_library(tmp)
        data = read_regular_file(tmp, _LIBRARY_LIMIT)
        fn = _load(data, folder)  # an entry that does not load is never published
        fsync_path(tmp)
        os.replace(tmp, folder / f"{name}.so")
        record = json.dumps({"key": json.loads(key), "size": len(data), "sha256": sha256_hex(data)}, indent=1)
        _write_durably(folder / f"{name}.json", record.encode())
        fsync_path(folder)  # the renames themselves
        return fn
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _write_durably(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def clear_memory_cache() -> None:
    with _LOCK:
        _MEMORY.clear()
