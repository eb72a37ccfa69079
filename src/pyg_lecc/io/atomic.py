"""Durable atomic file writes: a reader, or a crash, sees the old file or the complete new one.

The one helper behind every file that training writes (checkpoints, weights, logs) and that
the continuation scripts replace: the content goes to a hidden temporary file in the same
folder (same file system, so the rename is atomic), which is flushed to disk (``fsync``) and
then renamed over the destination with :func:`os.replace`; the folder is synced too, so that
the rename itself survives a power cut where the platform allows it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_copy", "temporary_path", "write_atomically"]


def temporary_path(path: Path) -> Path:
    """A hidden, unique name next to ``path`` (same folder, so same file system)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:  # makes the rename durable on POSIX; not possible on every platform
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` to a temporary file in the same folder, fsync, then ``os.replace``:
    readers (and a crash) see the old file or the complete new one, never a partial one.
    On any error the temporary file is removed and ``path`` is untouched."""
    tmp = temporary_path(path)
    try:
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_copy(source: Path, path: Path) -> None:
    """Copies ``source`` to ``path`` with :func:`write_atomically`."""
    write_atomically(path, lambda tmp: shutil.copyfile(source, tmp))
