"""Only artifacts are ever replaced: ``overwrite=True`` / ``--overwrite`` never remove the working folder, the home
folder, the root, a folder of documents, a link or a file; the destination is checked again at the moment of the
swap, and the swap is atomic (``renameat2`` where the platform has it, a rename-aside fallback otherwise)."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import tvm_gru
from tvm_gru import cli
from tvm_gru.deploy import destination, export
from tvm_gru.deploy.export import export_cell
from tvm_gru.ops import reference
from tvm_gru.runtime.artifact import METADATA, load

sys.path.insert(0, str(Path(__file__).parents[1]))
from conftest import tolerance  # noqa: E402

SENTINEL = "keep-me.txt"


@pytest.fixture(scope="module")
def cell():
    cell = tvm_gru.GRUCell(8, seed=0)
    cell.build((1, 4))
    return cell


@pytest.fixture
def places(tmp_path, monkeypatch):
    """A working folder, a home folder and a folder of documents, each holding a sentinel file; and a guard that
    fails the test instead of letting ``shutil.rmtree`` touch any of them or the root (old code removed them)."""
    root = tmp_path / "root"
    places = {name: root / name for name in ("work", "home", "docs")}
    places["cwd"] = places["work"] / "project"
    for folder in (places["cwd"], places["home"], places["docs"]):
        folder.mkdir(parents=True)
        (folder / SENTINEL).write_text("user data")
    monkeypatch.chdir(places["cwd"])
    monkeypatch.setenv("HOME", str(places["home"]))
    protected = {Path("/"), *(p.resolve() for p in places.values())}
    real_rmtree = shutil.rmtree

    def guarded_rmtree(path, *args, **kwargs):
        if Path(path).resolve() in protected:
            raise AssertionError(f"shutil.rmtree({path!r}) would remove a user folder")
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", guarded_rmtree)
    return places


def _sentinels_intact(places) -> None:
    for name in ("cwd", "home", "docs"):
        assert (places[name] / SENTINEL).read_text() == "user data"


def _no_leftovers(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no temporary folders left


@pytest.fixture(params=["renameat2", "rename-aside"])
def swap_mode(request, monkeypatch):
    """Run a test with the kernel's atomic rename and with the portable fallback."""
    if request.param == "rename-aside":
        monkeypatch.setattr(destination, "_libc_renameat2", lambda: None)
    return request.param


# ------------------------------------------------------------------------- folders that are never replaced
@pytest.mark.parametrize("where", ["dot", "empty", "root", "home", "cwd", "cwd-parent"])
def test_overwrite_never_replaces_shared_folders(cell, places, where):
    path = {"dot": ".", "empty": "", "root": "/", "home": str(places["home"]), "cwd": str(places["cwd"]),
            "cwd-parent": str(places["work"])}[where]
    expect = {"empty": "must name the artifact folder; received ''", "root": "is the filesystem root",
              "home": "is the home folder", "cwd-parent": "is a folder above the working folder"}
    with pytest.raises(ValueError, match=r"`path` .*" + expect.get(where, "is the working folder")):
        export_cell(cell, path, overwrite=True)
    _sentinels_intact(places)
    assert sorted(p.name for p in places["cwd"].iterdir()) == [SENTINEL]


@pytest.mark.parametrize("what", ["documents", "symlink", "file", "no-metadata", "metadata-not-json",
                                  "foreign-format", "no-kind", "metadata-symlink"])
def test_overwrite_refuses_what_is_not_an_artifact(cell, places, what):
    docs = places["docs"]
    dest = places["cwd"] / "out"
    if what == "documents":
        dest = docs
    elif what == "symlink":
        dest.symlink_to(docs, target_is_directory=True)
    elif what == "file":
        dest.write_text("user data")
    else:
        dest.mkdir()
        (dest / SENTINEL).write_text("user data")
        text = {"metadata-not-json": "{not json", "foreign-format": json.dumps({"format": "other", "kind": "cell"}),
                "no-kind": json.dumps({"format": "tvm_gru.artifact"})}.get(what)
        if text is not None:
            (dest / METADATA).write_text(text)
        elif what == "metadata-symlink":  # an artifact's metadata, reached through a link, does not count
            (places["cwd"] / "elsewhere.json").write_text(json.dumps({"format": "tvm_gru.artifact", "kind": "cell"}))
            (dest / METADATA).symlink_to(places["cwd"] / "elsewhere.json")
    found = {"symlink": "is a symbolic link", "file": "is a file"}.get(what, "is a folder that is not a tvm_gru "
                                                                            "artifact")
    with pytest.raises(FileExistsError, match=r"`path` .*" + found):
        export_cell(cell, dest, overwrite=True)
    _sentinels_intact(places)
    if what == "symlink":
        assert dest.is_symlink() and sorted(os.listdir(docs)) == [SENTINEL]
    elif what == "file":
        assert dest.read_text() == "user data"
    else:
        assert (dest / SENTINEL).read_text() == "user data"
        assert not (dest / "kernel.so").exists()


# ------------------------------------------------------------------------- what is replaced, atomically
def test_overwrite_replaces_a_previous_artifact(cell, places, swap_mode):
    dest = places["cwd"] / "gru"
    export_cell(cell, dest)
    other = tvm_gru.GRUCell(8, seed=1)
    other.build((1, 4))
    assert export_cell(other, dest, overwrite=True) == dest
    x = np.linspace(-1, 1, 4, dtype="float32")[None]
    h = np.full((1, 8), 0.25, "float32")
    ref = reference.step(other.config, x, h, *other.get_weights())
    assert np.max(np.abs(load(dest)(x, [h])[0] - ref)) <= tolerance("float32", ref)
    _no_leftovers(dest.parent)
    _sentinels_intact(places)


def test_overwrite_fills_an_empty_folder(cell, places, swap_mode):
    dest = places["cwd"] / "empty"
    dest.mkdir()
    export_cell(cell, dest, overwrite=True)
    assert (dest / METADATA).is_file()
    _no_leftovers(dest.parent)


def _create_while_compiling(monkeypatch, make):
    """Run ``make()`` inside the compile step: the destination changes after the first check."""
    real = export.compile_kernels

    def compile_and_interfere(*args, **kwargs):
        out = real(*args, **kwargs)
        make()
        return out

    monkeypatch.setattr(export, "compile_kernels", compile_and_interfere)


def test_folder_created_while_compiling_is_not_removed(cell, places, monkeypatch, swap_mode):
    dest = places["cwd"] / "gru"

    def make():
        dest.mkdir()
        (dest / SENTINEL).write_text("user data")

    _create_while_compiling(monkeypatch, make)
    with pytest.raises(FileExistsError, match=r"`path` .*gru exists; pass overwrite=True"):
        export_cell(cell, dest, overwrite=False)
    assert sorted(os.listdir(dest)) == [SENTINEL] and (dest / SENTINEL).read_text() == "user data"
    _no_leftovers(dest.parent)


def test_artifact_replaced_by_documents_while_compiling_is_not_removed(cell, places, monkeypatch, swap_mode):
    dest = places["cwd"] / "gru"
    export_cell(cell, dest)

    def make():  # the artifact checked before compiling is gone; a folder of documents took its place
        shutil.rmtree(dest)
        dest.mkdir()
        (dest / SENTINEL).write_text("user data")

    _create_while_compiling(monkeypatch, make)
    with pytest.raises(FileExistsError, match="is a folder that is not a tvm_gru artifact"):
        export_cell(cell, dest, overwrite=True)
    assert sorted(os.listdir(dest)) == [SENTINEL]
    _no_leftovers(dest.parent)


def test_swap_puts_back_what_is_not_an_artifact(tmp_path, swap_mode):
    """The last line of defence: what the swap took out of ``dest`` is checked again, and put back if it is not
    an artifact (the folder changed between the check and the rename)."""
    new, dest = tmp_path / "new", tmp_path / "dest"
    for folder, text in ((new, "new"), (dest, "user data")):
        folder.mkdir()
        (folder / SENTINEL).write_text(text)
    with pytest.raises(OSError, match="no longer an artifact"):
        destination._swap_artifact(new, dest)
    assert (dest / SENTINEL).read_text() == "user data" and (new / SENTINEL).read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "new"]


# ------------------------------------------------------------------------- the CLI
_CLI = ["export", "--units", "8", "--input-dim", "4", "--overwrite", "--out"]


@pytest.mark.parametrize(("out", "message"), [
    ("", r"argument --out: must name the artifact folder; received ''"),
    (".", r"argument --out: '\.' is the working folder"),
    ("docs", r"argument --out: docs is a folder that is not a tvm_gru artifact .*--overwrite replaces artifacts "
             r"only"),
])
def test_cli_out_is_checked_before_anything_is_written(places, capsys, out, message):
    if out == "docs":
        os.chdir(places["docs"].parent)
    with pytest.raises(SystemExit) as info:
        cli.main([*_CLI, out])
    assert info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    _sentinels_intact(places)
    assert sorted(os.listdir(places["docs"])) == [SENTINEL]
