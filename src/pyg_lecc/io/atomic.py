"""Durable atomic file writes: a reader, or a crash, sees the old file or the complete new one.

The one helper, :func:`write_atomically`, behind the files that training writes (checkpoints,
weights, logs), that the continuation scripts replace and that the commands write (colorized
images, reports): the content goes to a hidden temporary file in the same folder (same file
system, so the rename is atomic), which is flushed to disk (``fsync``) and then renamed over
the destination with :func:`os.replace` or, where an existing file must not be replaced,
hard-linked to it, which fails if the destination exists. The folder is synced too, so that
the new name itself survives a power cut where the platform allows it.
:func:`write_file_atomic` is its form for bytes, exclusive unless told to overwrite, and
:func:`atomic_copy` its form for copies.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "atomic_copy",
    "file_exists_error",
    "temporary_path",
    "write_atomically",
    "write_file_atomic",
]


def temporary_path(path: Path) -> Path:
    """A hidden, unique name next to ``path`` (same folder, so same file system).

    A name rather than a file (unlike :func:`tempfile.mkstemp`, whose ``0600`` mode would
    stick to the final file): the caller creates it.
    """
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def file_exists_error(path: Path) -> FileExistsError:
    """The error for an existing ``path`` that may not be replaced, saying how to replace it."""
    return FileExistsError(
        f"{path} already exists (pass overwrite=True, or --overwrite, to replace it)"
    )


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:  # makes the new name durable on POSIX; not possible on every platform
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _link_new(tmp: Path, path: Path) -> None:
    """Give the complete file ``tmp`` the name ``path`` too, failing if ``path`` exists."""
    try:
        # Exclusive and atomic: fails if path exists, even if another process created it a
        # moment ago.
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (FAT, some network shares): create path with O_EXCL
        with open(tmp, "rb") as source, open(path, "xb") as f:
            try:
                shutil.copyfileobj(source, f)
                f.flush()
                os.fsync(f.fileno())
            except BaseException:
                path.unlink(missing_ok=True)
                raise


def write_atomically(path: Path, write: Callable[[Path], object], overwrite: bool = True) -> None:
    r"""Write a file through a temporary file: readers, and a crash, see the old file (or none)
    or the complete new one, never a partial one.

    ``write(tmp)`` creates a temporary file in the same folder, which is synced to disk and
    then renamed over ``path`` (``overwrite``) or hard-linked to it, which fails if ``path``
    exists. Where the file system has no hard links, ``path`` is created with ``O_EXCL`` and
    the content copied into it instead (exclusive still, but not atomic). The folder is
    synced afterwards. On any error the temporary file is removed and ``path`` is untouched.

    Args:
        path: Destination file; its folder must exist.
        write: Writes the content to the file it is given (a path that does not exist yet).
        overwrite: Replace an existing ``path``; otherwise refuse it. Default: ``True``.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
        OSError: The file cannot be written, or whatever ``write`` raises.

    Example:
        >>> write_atomically(Path("log.txt"), lambda tmp: tmp.write_text("x"))  # doctest: +SKIP
    """
    tmp = temporary_path(path)
    try:
        write(tmp)
        _fsync_file(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
    finally:  # after a link, the temporary name is left over
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def write_file_atomic(path: str | os.PathLike[str], data: bytes, overwrite: bool = False) -> None:
    r"""Write ``data`` to a new file ``path`` with :func:`write_atomically`: atomically, durably
    and, without ``overwrite``, exclusively.

    Without ``overwrite`` an existing ``path`` is not replaced, even if another process
    created it a moment ago. On any error nothing is left behind. Missing parent folders are
    created.

    Args:
        path: Destination file.
        data: File contents.
        overwrite: Replace an existing file instead of raising. Default: ``False``.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
        OSError: The file cannot be written; the error names ``path``.

    Example:
        >>> write_file_atomic("out/result.json", b"{}\n")  # doctest: +SKIP
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "xb") as f:
            f.write(data)

    try:
        write_atomically(path, write, overwrite)
    except FileExistsError as err:
        raise file_exists_error(path) from err
    except OSError as err:
        # Name the destination, not the temporary file.
        raise type(err)(err.errno, err.strerror, str(path)) from err


def atomic_copy(source: Path, path: Path) -> None:
    """Copies ``source`` to ``path`` with :func:`write_atomically`."""
    write_atomically(path, lambda tmp: shutil.copyfile(source, tmp))
