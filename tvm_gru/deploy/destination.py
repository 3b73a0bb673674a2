"""Where an artifact is written: only a new path, an empty folder or a tvm_gru artifact is ever replaced, checked
before compiling and again at the atomic swap; nothing this module did not create or verify is deleted."""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import logging
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path

from ..runtime import artifact
from ..runtime.verified_files import read_regular_file

__all__ = ["check_destination", "publish"]

log = logging.getLogger(__name__)


# Only a tvm_gru artifact (or an empty folder) is ever replaced, checked before compiling and again at the swap.
_METADATA_LIMIT = 16 << 20  # an artifact's metadata is a few kB
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2  # linux/fs.h


def check_destination(path, overwrite: bool, arg: str = "`path`", flag: str = "overwrite=True") -> Path:
    """``path`` as a folder an artifact may be written to, or an error saying why it may not.

    Parameters
    ----------
    path : str or os.PathLike
        A new path; with ``overwrite``, also an empty folder or a tvm_gru artifact folder (its metadata names
        the artifact format and a kind).
    overwrite : bool
    arg, flag : str
        How the path and the overwrite switch are named in messages (the CLI says ``--out``, ``--overwrite``).

    Raises
    ------
    ValueError
        An empty path, or one that resolves to the filesystem root, the home folder, the working folder or a
        folder above it: never a destination, whatever ``overwrite`` says.
    FileExistsError
        Something is at ``path`` that is not replaced: anything without ``overwrite``; a symbolic link, a file
        or a non-empty folder that is not an artifact with it.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{arg} must be a str or os.PathLike naming the artifact folder; received "
                        f"{type(path).__name__}")
    raw = os.fsdecode(os.fspath(path))
    if not raw.strip():
        raise ValueError(f"{arg} must name the artifact folder; received {raw!r} (an unset variable?)")
    dest = Path(raw)
    _refuse_shared_folder(dest, arg)
    _destination_state(dest, overwrite, arg, flag)
    return dest


def _refuse_shared_folder(dest: Path, arg: str) -> None:
    resolved, cwd = dest.resolve(), Path.cwd().resolve()
    try:
        home = Path.home().resolve()
    except RuntimeError:  # no HOME and no password entry
        home = None
    shared = [(resolved == Path(resolved.anchor), "the filesystem root"), (resolved == home, "the home folder"),
              (resolved == cwd, "the working folder"), (resolved in cwd.parents, "a folder above the working folder")]
    reason = next((reason for matches, reason in shared if matches), None)
    if reason is not None:
        raise ValueError(f"{arg} {str(dest)!r} is {reason} ({resolved}); expected a folder of its own for the "
                         "artifact (this one is never written or replaced)")


def _destination_state(dest: Path, overwrite: bool, arg: str, flag: str) -> str:
    """"absent", "empty" (a folder) or "artifact"; raises FileExistsError for anything that is not replaced."""
    try:
        info = os.lstat(dest)
    except FileNotFoundError:
        return "absent"
    if stat.S_ISLNK(info.st_mode):
        raise FileExistsError(f"{arg} {dest} is a symbolic link; expected a new path or a tvm_gru artifact folder "
                              "(links are neither followed nor replaced)")
    if not overwrite:
        raise FileExistsError(f"{arg} {dest} exists; pass {flag} to replace it (a tvm_gru artifact only)")
    if not stat.S_ISDIR(info.st_mode):
        raise FileExistsError(f"{arg} {dest} is a file; expected a new path or a tvm_gru artifact folder to replace "
                              "(files are never replaced)")
    problem = _not_an_artifact(dest)
    if problem is None:
        return "artifact"
    with os.scandir(dest) as entries:
        if next(entries, None) is None:
            return "empty"
    raise FileExistsError(f"{arg} {dest} is a folder that is not a tvm_gru artifact ({problem}); expected a new "
                          f"path, an empty folder or an artifact folder: {flag} replaces artifacts only")


def _not_an_artifact(folder: Path):
    """Why ``folder`` is not a tvm_gru artifact (a real folder whose metadata names the format and a kind), or
    None when it is one."""
    if os.path.islink(folder) or not folder.is_dir():
        return "not a folder"
    try:
        meta = json.loads(read_regular_file(folder / artifact.METADATA, _METADATA_LIMIT))
    except FileNotFoundError:
        return f"it has no {artifact.METADATA}"
    except (OSError, ValueError, RecursionError) as err:
        return f"its {artifact.METADATA} is not readable JSON ({type(err).__name__}: {err})"
    found = meta.get("format") if isinstance(meta, dict) else None
    kind = meta.get("kind") if isinstance(meta, dict) else None
    if found != artifact.FORMAT or not isinstance(kind, str) or kind not in artifact.KIND_VERSIONS:
        return (f"its {artifact.METADATA} names format {found!r} and kind {kind!r}; expected format "
                f"{artifact.FORMAT!r} and a kind in {sorted(artifact.KIND_VERSIONS)}")
    return None


@functools.lru_cache(maxsize=1)
def _libc_renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc < 2.28, musl without the wrapper
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux ``renameat2``; False where it or the flag is not supported (then the caller falls back)."""
    fn = _libc_renameat2()
    if fn is None:
        return False
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # a filesystem without the flag
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


_CHANGED = (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR)


def publish(new: Path, dest: Path, overwrite: bool) -> None:
    """Move the finished folder ``new`` (ours) to ``dest``, checking ``dest`` again at this moment.

    A new path is taken with ``RENAME_NOREPLACE`` (else a plain rename, which at worst replaces an empty
    folder); an empty folder is replaced by a rename, which fails if it has been filled meanwhile; an artifact
    is swapped out (:func:`_swap_artifact`) and only then removed. Whatever goes wrong, nothing at ``dest`` is
    removed, and neither is ``new`` unless it still holds an artifact (ours, or one that was swapped out).
    """
    try:
        state = _destination_state(dest, overwrite, "`path`", "overwrite=True")
        if state == "artifact":
            old = _swap_artifact(new, dest)
        else:
            old = None
            if state == "empty" or not _renameat2(new, dest, _RENAME_NOREPLACE):
                if state == "absent" and os.path.lexists(dest):
                    raise OSError(errno.EEXIST, "created meanwhile", str(dest))
                os.rename(new, dest)
    except OSError as err:
        _remove_artifact(new)
        if err.errno not in _CHANGED:  # also the FileExistsError of the check, which has its own message
            raise
        raise FileExistsError(f"`path` {dest} appeared or changed while the artifact was being written "
                              f"({err.strerror}); it was left as it is (only a new path, an empty folder or, with "
                              "overwrite=True, an artifact is replaced)") from err
    except BaseException:
        _remove_artifact(new)
        raise
    if old is not None:
        _remove_artifact(old)  # checked to be an artifact, and moved where only this call knows it


def _remove_artifact(folder: Path) -> None:
    problem = _not_an_artifact(folder)
    if problem is None:
        shutil.rmtree(folder, ignore_errors=True)
    elif os.path.lexists(folder):  # cannot happen unless a swap back failed: leave it for a person to look at
        log.warning("tvm_gru: left %s in place: %s", folder, problem)


def _swap_artifact(new: Path, dest: Path) -> Path:
    """Put ``new`` at ``dest`` in one step and return where the previous artifact now is.

    With ``RENAME_EXCHANGE`` the two trade places atomically; otherwise the old folder is renamed aside first.
    Either way what was taken out is checked again to be an artifact, and put back if it is not.
    """
    if _renameat2(new, dest, _RENAME_EXCHANGE):
        problem = _not_an_artifact(new)
        if problem is None:
            return new
        _renameat2(new, dest, _RENAME_EXCHANGE)  # not an artifact after all: put it back
        raise OSError(errno.EEXIST, f"it is no longer an artifact: {problem}", str(dest))
    aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
    try:
        os.rename(dest, aside)  # onto the empty folder made for it
    except OSError:
        aside.rmdir()
        raise
    problem = _not_an_artifact(aside)
    if problem is not None:
        try:
            os.rename(aside, dest)
        except OSError as err:  # the path was taken again meanwhile: say where the folder is
            raise OSError(errno.EEXIST, f"it is no longer an artifact ({problem}); that folder is now at {aside}",
                          str(dest)) from err
        raise OSError(errno.EEXIST, f"it is no longer an artifact: {problem}", str(dest))
    try:
        os.rename(new, dest)
    except OSError as err:  # something took the path meanwhile: keep the old artifact, tell where
        raise OSError(err.errno, f"{err.strerror}; the previous artifact is kept at {aside}", str(dest)) from err
    return aside


