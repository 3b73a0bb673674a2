"""The compile cache proves what an entry is: a library is loaded only when the record beside it holds this
kernel's full key and the library's SHA-256; anything else (a foreign, truncated or linked entry) is rebuilt,
never mapped. The folder is private (0700; one that other users can write is not used), writes are flushed
before they are published, a rebuilt entry is loaded afresh, and a cache that cannot be written falls back to
the kernel compiled in memory."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tvm

import tvm_gru
from tvm_gru import build
from tvm_gru.ops import reference

sys.path.insert(0, str(Path(__file__).parents[1]))
from conftest import tolerance  # noqa: E402

UNITS, INPUT = 8, 4
X = np.linspace(-2, 2, 2 * INPUT, dtype="float32").reshape(2, INPUT)
H = np.linspace(-1, 1, 2 * UNITS, dtype="float32").reshape(2, UNITS)

# Computes a cell per (cache folder, activation) in a fresh process (so no library of this process is reused,
# and a fault on a mapped page kills only the child) and prints each one's largest error against the reference.
_CHILD = f"""
import json, os, sys
import numpy as np
import tvm_gru
from tvm_gru import build
from tvm_gru.ops import reference
x = np.linspace(-2, 2, {2 * INPUT}, dtype="float32").reshape(2, {INPUT})
h = np.linspace(-1, 1, {2 * UNITS}, dtype="float32").reshape(2, {UNITS})
errors = []
for folder, activation in json.loads(sys.argv[1]):
    os.environ["TVM_GRU_CACHE_DIR"] = folder
    build.clear_memory_cache()
    cell = tvm_gru.GRUCell({UNITS}, activation=activation, seed=0)
    out, _ = cell(x, [h])
    errors.append(float(np.max(np.abs(out - reference.step(cell.config, x, h, *cell.get_weights())))))
print(json.dumps(errors))
"""


@pytest.fixture(autouse=True)
def fresh_memory_cache():
    build.clear_memory_cache()  # the in-memory layer is keyed by kernel, not by folder
    yield
    build.clear_memory_cache()


def _cell(activation="tanh"):
    return tvm_gru.GRUCell(UNITS, activation=activation, seed=0)


def _assert_right(cell, out) -> None:
    ref = reference.step(cell.config, X, H, *cell.get_weights())
    assert np.max(np.abs(out - ref)) <= tolerance("float32", ref)


def _fill(folder: Path, monkeypatch, activation="tanh") -> Path:
    """Compute a cell with ``folder`` as the cache; return its one entry."""
    monkeypatch.setenv("TVM_GRU_CACHE_DIR", str(folder))
    build.clear_memory_cache()
    cell = _cell(activation)
    _assert_right(cell, cell(X, [H])[0])
    (entry,) = folder.glob("step-*.so")
    return entry


def _in_fresh_process(runs) -> list:
    arg = json.dumps([[str(folder), activation] for folder, activation in runs])
    proc = subprocess.run([sys.executable, "-c", _CHILD, arg], capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, f"child exited with {proc.returncode} (-7: SIGBUS)\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _proves_out(entry: Path) -> bool:
    record = json.loads(entry.with_suffix(".json").read_text())
    return hashlib.sha256(entry.read_bytes()).hexdigest() == record["sha256"]


# ------------------------------------------------------------------------- entries that are not this kernel
def test_foreign_entry_under_this_key_is_rebuilt(tmp_path, monkeypatch):
    entry = _fill(tmp_path / "mine", monkeypatch)  # a tanh cell
    foreign = _fill(tmp_path / "foreign", monkeypatch, activation="relu")
    planted = {}
    for plant in ("library", "library-and-record", "symlink"):
        folder = tmp_path / plant
        shutil.copytree(entry.parent, folder)
        planted[plant] = here = folder / entry.name
        here.unlink()
        if plant == "symlink":
            here.symlink_to(foreign)
        else:
            shutil.copyfile(foreign, here)
        if plant == "library-and-record" and foreign.with_suffix(".json").exists():  # a pair for another kernel
            shutil.copyfile(foreign.with_suffix(".json"), here.with_suffix(".json"))
    errors = _in_fresh_process([(here.parent, "tanh") for here in planted.values()])
    assert max(errors) <= 1e-5  # relu numbers are off by far more
    for here in planted.values():
        assert not here.is_symlink() and _proves_out(here) and here.read_bytes() != foreign.read_bytes()


def test_truncated_entries_are_rebuilt_not_mapped(tmp_path, monkeypatch):
    entry = _fill(tmp_path / "full", monkeypatch)
    full = entry.read_bytes()
    runs = []
    for percent in (2, 10, 50):
        folder = tmp_path / f"cut{percent}"
        shutil.copytree(tmp_path / "full", folder)
        (folder / entry.name).write_bytes(full[:len(full) * percent // 100])
        runs.append((folder, "tanh"))
    assert max(_in_fresh_process(runs)) <= 1e-5  # the old loader mapped the short file: SIGBUS
    for folder, _ in runs:
        assert _proves_out(folder / entry.name) and len((folder / entry.name).read_bytes()) > len(full) // 2


def test_library_swapped_after_its_check_is_not_loaded(tmp_path, monkeypatch):
    """What is hashed is what is loaded: a private copy of the bytes read, not the path again."""
    entry = _fill(tmp_path / "mine", monkeypatch)
    foreign = _fill(tmp_path / "foreign", monkeypatch, activation="relu")
    real_read = build.cache.read_regular_file

    def read_then_swap(path, limit):
        data = real_read(path, limit)
        if Path(path) == entry:
            entry.unlink()
            shutil.copyfile(foreign, entry)
        return data

    monkeypatch.setattr(build.cache, "read_regular_file", read_then_swap)
    monkeypatch.setenv("TVM_GRU_CACHE_DIR", str(entry.parent))
    build.clear_memory_cache()
    cell = _cell()
    _assert_right(cell, cell(X, [H])[0])


def test_rebuilt_entry_is_loaded_afresh_in_the_same_process(tmp_path, monkeypatch):
    """dlopen hands back a library already loaded from the same path: a rebuilt entry must not get the old one.

    The first build of this tanh cell's kernel is made wrong on purpose (relu), as a stale entry would be; once
    that entry is damaged, the rebuild must be the library that is called."""
    real = build.step.scheduled_module
    monkeypatch.setattr(build.step, "scheduled_module", lambda spec, target, *args: real(
        dataclasses.replace(spec, config=dataclasses.replace(spec.config, activation="relu")), target, *args))
    monkeypatch.setenv("TVM_GRU_CACHE_DIR", str(tmp_path))
    cell = _cell()
    wrong, _ = cell(X, [H])
    (entry,) = tmp_path.glob("step-*.so")
    monkeypatch.setattr(build.step, "scheduled_module", real)
    data = entry.read_bytes()
    entry.unlink()  # a new inode: what this process has mapped stays intact
    entry.write_bytes(data[:len(data) // 3])
    build.clear_memory_cache()
    out, _ = _cell()(X, [H])
    assert np.max(np.abs(out - wrong)) > 0.1
    _assert_right(cell, out)


# ------------------------------------------------------------------------- the folder
def test_empty_cache_variable_means_the_default_not_the_working_folder(tmp_path, monkeypatch):
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TVM_GRU_CACHE_DIR", "")
    cell = _cell()
    _assert_right(cell, cell(X, [H])[0])
    assert os.listdir(work) == []
    assert len(list((home / ".cache" / "tvm_gru").glob("step-*.so"))) == 1


def test_cache_folder_is_created_private(tmp_path, monkeypatch):
    folder = tmp_path / "a" / "cache"
    entry = _fill(folder, monkeypatch)
    assert folder.stat().st_mode & 0o777 == 0o700
    assert sorted(os.listdir(folder)) == [entry.stem + ".json", entry.name]  # no temporary files left


@pytest.mark.parametrize("how", ["group-writable", "other-writable", "other-owner"])
def test_cache_folder_others_can_write_is_not_used(tmp_path, monkeypatch, caplog, how):
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod({"group-writable": 0o770, "other-writable": 0o707}.get(how, 0o700))
    if how == "other-owner":
        uid = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: uid + 1)
    monkeypatch.setenv("TVM_GRU_CACHE_DIR", str(folder))
    cell = _cell()
    with caplog.at_level(logging.WARNING, logger="tvm_gru.build"):
        out, _ = cell(X, [H])
    _assert_right(cell, out)
    assert os.listdir(folder) == []
    found = "owned by user id" if how == "other-owner" else "group or other users can write it"
    assert f"not using the compile cache {folder}: " in caplog.text and found in caplog.text


# ------------------------------------------------------------------------- writing fails
@pytest.mark.parametrize("what", ["cell", "layer"])
def test_cache_write_failure_falls_back_to_memory(tmp_path, monkeypatch, caplog, what):
    def linker_fails(self, path, *args, **kwargs):
        Path(path).write_bytes(b"\x7fELF partial")  # what a linker leaves behind on a full disk
        raise RuntimeError("Compilation error: ld: final link failed: No space left on device")

    monkeypatch.setattr(tvm.runtime.Executable, "export_library", linker_fails)
    monkeypatch.setenv("TVM_GRU_CACHE_DIR", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="tvm_gru.build"):
        if what == "cell":
            cell = _cell()
            _assert_right(cell, cell(X, [H])[0])
        else:
            layer = tvm_gru.GRU(UNITS, seed=0)
            xs = np.stack([X, -X, 0.5 * X], axis=1)  # (B, T, I)
            out = layer(xs)
            ref = reference.sequence(layer.cell.config, xs.transpose(1, 0, 2), np.zeros((2, UNITS), "float32"),
                                     *layer.cell.get_weights())[-1]
            assert np.max(np.abs(out - ref)) <= tolerance("float32", ref)
    assert "No space left on device" in caplog.text and "using the kernel compiled in memory" in caplog.text
    assert os.listdir(tmp_path) == []  # no entry, no temporary file


def test_entry_is_flushed_to_disk_before_it_is_published(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, **kwargs):
        events.append(("replace", os.path.realpath(src), os.path.realpath(dst)))
        return real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    entry = _fill(tmp_path, monkeypatch)
    for published in (entry, entry.with_suffix(".json")):
        (at,) = [i for i, e in enumerate(events) if e[0] == "replace" and e[2] == os.path.realpath(published)]
        assert ("fsync", events[at][1]) in events[:at]  # the data, before the rename makes it visible
    assert ("fsync", os.path.realpath(tmp_path)) in events[at:]  # and the renames themselves
