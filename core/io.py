"""Atomic file writes: every output goes to a temporary sibling, then is renamed into place.

A run killed at any instant therefore leaves either the old file or the complete new one, never a
truncated file that a resumed run would mistake for finished work. A write the disk refuses (full,
over quota, read-only, not permitted) is a ``DiskError``: one line naming the path and the fix, and
no temporary file left; ``check_writable`` finds such a disk before any work.
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

_UMASK = os.umask(0)
os.umask(_UMASK)

FULL = frozenset({errno.ENOSPC, errno.EDQUOT})  # the disk has no room for the write
DISK_FAULTS = FULL | {errno.EROFS, errno.EACCES}  # the disk's fault, not the program's
ELSEWHERE = "put the output folder on another disk (--output-dir)"  # the other way out


class DiskError(OSError):
    """A write the disk refused; the message names the path (``filename``), why, and the fix."""

    def __init__(self, code: int, message: str, path: str | Path):
        super().__init__(code, message, str(path))

    def __str__(self) -> str:
        return self.strerror


def disk_error(
    error: OSError, path: str | Path, elsewhere: str | None = ELSEWHERE
) -> DiskError | None:
    """``error`` as a DiskError about writing ``path`` if it is a disk fault, else None."""
    if error.errno not in DISK_FAULTS:
        return None
    from core.config import show

    if error.errno in FULL:
        fix = "free space on that disk (most is in outputs/steps, the stored steps)"
    else:
        fix = "make it writable"
    fix += f" or {elsewhere}" if elsewhere else ""
    reason = os.strerror(error.errno).lower()
    return DiskError(error.errno, f"{show(path)}: {reason} — {fix}", path)


@contextmanager
def _writing(path: Path):
    """Raise a disk fault met while writing ``path`` as its DiskError; an error about another
    file (one a caller reads meanwhile) stays as it is."""
    try:
        yield
    except OSError as e:
        target = Path(os.path.abspath(path))
        where = None if e.filename is None else Path(os.path.abspath(e.filename))
        ours = where is None or where.parent == target.parent or target.is_relative_to(where)
        if not ours or (error := disk_error(e, path)) is None:
            raise
        raise error from None


# Glob patterns of the temporary files this module's writers make beside their targets (hidden,
# renamed or removed when the write ends): what a copy of a folder being written leaves out.
IN_FLIGHT = (".*.tmp*", ".*.link", ".write-check.*")


def check_writable(folder: str | Path, elsewhere: str | None = ELSEWHERE) -> None:
    """Write, sync and remove a small file in ``folder`` (or, before it exists, in the nearest
    folder above it, where it will be made): a read-only or full disk is a DiskError naming that
    folder before any work, not a traceback after it."""
    folder = Path(os.path.abspath(folder))
    there = next(p for p in (folder, *folder.parents) if p.is_dir())
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-check.", dir=there)
        try:
            os.write(fd, bytes(4096))  # a block: a full disk may still make an empty file
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(tmp)
    except OSError as e:
        if (error := disk_error(e, there, elsewhere)) is None:
            raise
        raise error from None


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; on success rename it over ``path``."""
    path = Path(path)
    tmp = None
    with _writing(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(
                prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent
            )
            os.close(fd)
            # mkstemp makes 0600; outputs should read like any other file
            os.chmod(tmp, 0o666 & ~_UMASK)
            yield Path(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)


def atomic_symlink(target: str | Path, path: str | Path) -> Path:
    """Make ``path`` a symlink to ``target`` at once (made beside it, then renamed over it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.link")
    with _writing(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if tmp.is_symlink():
                tmp.unlink()
            os.symlink(target, tmp)
            os.replace(tmp, path)
        finally:
            if tmp.is_symlink():
                tmp.unlink()
    return path


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, obj) -> Path:
    """Strict JSON, which other tools read: NaN and infinities (an undefined AUC, a blend's
    unset weight) are written as null."""
    text = json.dumps(
        _finite(obj), indent=2, ensure_ascii=False, allow_nan=False, default=_jsonable
    )
    return write_text(path, text + "\n")


def read_json(path: str | Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_csv(path: str | Path, frame: pd.DataFrame) -> Path:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.8g")
    return Path(path)


def save_weights(model, path: str | Path) -> Path:
    """Keras ``save_weights`` in HDF5 format, atomically."""
    with atomic_path(path) as tmp:
        model.save_weights(str(tmp), save_format="h5")
    return Path(path)


def _finite(value):
    """``value`` with every NaN or infinite float (numpy's too) as None."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return _finite(value.tolist())
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _jsonable(value):
    # numpy values are plain ones by now (_finite)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def examples(values, n: int = 5) -> str:
    """The first ``n`` of ``values`` for an error message, and how many there are in all."""
    values = list(values)
    more = f", … ({len(values)} in all)" if len(values) > n else ""
    return ", ".join(str(v) for v in values[:n]) + more
