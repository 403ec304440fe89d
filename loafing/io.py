"""Writing results safely: atomic writes (temp file + rename), output paths checked before any work, run folders
owned by one process at a time.

A temp file is named `.<target>.<pid>.<random>.tmp` beside its target, so one left behind by a process that
was killed is recognized (its process is gone) and removed by the next write of that target; a target whose
name leaves no room for that within the file system's 255 bytes lends it a cut of its name and a hash of the
whole. Files get the permissions the user's umask gives, as any file opened for writing would.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd

from loafing.errors import LoafingError

_UMASK = os.umask(0)
os.umask(_UMASK)
NAME_MAX = 255  # bytes in one file name, on every file system we write to
TEMP_EXTRA = 32  # bytes a temp name adds to its target's: dots, the pid, mkstemp's random part, ".tmp"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _temp_stem(name: str) -> str:
    """What stands for a target in its temp files' names: the name, or a cut of it and a hash of the whole."""
    encoded = os.fsencode(name)
    if len(encoded) <= NAME_MAX - TEMP_EXTRA:
        return name
    return f"{os.fsdecode(encoded[:NAME_MAX - TEMP_EXTRA - 13])}~{hashlib.sha1(encoded).hexdigest()[:12]}"


def remove_stale_temporaries(path: Path) -> None:
    """Delete the temp files of `path` whose writing process no longer exists (killed mid-write)."""
    prefix = f".{_temp_stem(path.name)}."
    for entry in os.scandir(path.parent):
        if not (entry.name.startswith(prefix) and entry.name.endswith(".tmp")):
            continue
        pid = entry.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success rename it onto `path`, on failure remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{_temp_stem(path.name)}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    """Write a DataFrame as CSV atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def write_json(obj: Any, path: str | Path) -> None:
    """Write JSON atomically (NaN and infinities are refused: they are not JSON)."""
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_torch(obj: Any, path: str | Path) -> None:
    """torch.save atomically; a failed write (a full disk) is an OSError naming the file, as for any other file."""
    import torch  # here, not at the top: the figures write files through this module and need no torch
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as handle:  # torch's own writer hides a failed write's errno in a RuntimeError
                torch.save(obj, handle)
        except (OSError, RuntimeError) as err:
            cause = err
            while cause is not None and not isinstance(cause, OSError):
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise
            raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from None


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path` (links followed) is `folder` or lies somewhere under it."""
    real, root = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return real == root or root in real.parents


def _check_inputs(path: Path, inputs: Sequence[str | Path], folders: Sequence[str | Path | None], flag: str) -> None:
    """`path` must be none of the input files and lie in none of the input folders (a data set's; None: none)."""
    for source in inputs:
        if _same(path, Path(source)):
            raise LoafingError(f"{flag} {str(path)!r} is one of the inputs; it would be overwritten")
    for folder in folders:
        if folder and Path(folder).is_dir() and _inside(path, Path(folder)):
            raise LoafingError(f"{flag} {str(path)!r} is inside the input folder {str(folder)!r}; writing there "
                               "would change the inputs")


def _check_names(path: Path, flag: str) -> None:
    """Every name in `path` must fit the file system's 255 bytes."""
    for part in path.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise LoafingError(f"{flag} '{str(path)[:60]}...': a name in it is {len(os.fsencode(part))} bytes long; "
                               f"a file name has at most {NAME_MAX}")


def _check_writable(path: Path, flag: str) -> None:
    """The nearest existing ancestor of `path` must be a folder this process may write into."""
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise LoafingError(f"{flag} {str(path)!r}: {str(ancestor)!r} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise LoafingError(f"{flag} {str(path)!r}: the folder {str(ancestor)!r} is not writable")


def check_output_file(path: str | Path, inputs: Sequence[str | Path] = (), flag: str = "--out",
                      folders: Sequence[str | Path | None] = ()) -> Path:
    """Reject, before any work, an output file that is empty, a folder, one of the input files, inside one of the
    input `folders` (a data set's; None: no such folder), or not writable."""
    if not str(path).strip():
        raise LoafingError(f"{flag} must name a file, got an empty path")
    path = Path(path)
    _check_names(path, flag)
    if path.is_dir():
        raise LoafingError(f"{flag} {str(path)!r} is a folder; name a file to write")
    _check_inputs(path, inputs, folders, flag)
    _check_writable(path, flag)
    return path


def check_output_folder(path: str | Path, flag: str = "--out", folders: Sequence[str | Path | None] = ()) -> Path:
    """Reject, before any work, an output folder that is empty, a file, inside one of the input `folders` (a data
    set's; None: no such folder), or not writable."""
    if not str(path).strip():
        raise LoafingError(f"{flag} must name a folder, got an empty path")
    path = Path(path)
    _check_names(path, flag)
    if path.exists() and not path.is_dir():
        raise LoafingError(f"{flag} {str(path)!r} is a file; name a folder to write into")
    _check_inputs(path, (), folders, flag)
    _check_writable(path / "file", flag)
    return path


@contextlib.contextmanager
def run_folder_lock(folder: str | Path) -> Iterator[None]:
    """Hold `folder/.lock` for the duration: a second process training into the same folder gets a one-line
    error instead of mixing its files with this one's. The lock is released when the process ends, however."""
    import fcntl

    folder = Path(folder)
    created = [f for f in (folder, *folder.parents) if not f.exists()]  # the run folder and new folders above it
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / ".lock", "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            raise LoafingError(f"run folder {str(folder)!r} is in use by {owner}; wait for it, or use another --out") \
                from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"loafing process {os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            # A run that failed before writing anything leaves no folder behind that looks like a started run; a
            # folder emptied or refilled meanwhile by someone else is theirs, and never hides the run's own error.
            with contextlib.suppress(OSError):
                if [p.name for p in folder.iterdir()] == [".lock"]:
                    (folder / ".lock").unlink()
                    for new in created:
                        new.rmdir()
    finally:
        handle.close()
