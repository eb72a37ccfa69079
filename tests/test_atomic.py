"""Tests of pyg_lecc.io.atomic: atomic, durable and, on request, exclusive file writes."""

import errno
import os
import re

import pytest

from pyg_lecc.io.atomic import write_atomically, write_file_atomic


@pytest.fixture
def synced(monkeypatch):
    """The inodes of the files and folders synced (``os.fsync``), in order."""
    calls = []
    real_fsync = os.fsync

    def fsync(fd):
        calls.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


@pytest.mark.parametrize("overwrite", [False, True])
def test_write_file_atomic_syncs_the_file_and_its_folder(tmp_path, synced, overwrite):
    path = tmp_path / "sub" / "dir" / "result.json"  # missing folders are created
    write_file_atomic(path, b"{}\n", overwrite)
    assert path.read_bytes() == b"{}\n"
    # The file, synced under its temporary name (the same inode), then the folder.
    assert synced == [path.stat().st_ino, path.parent.stat().st_ino]
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]


def test_write_file_atomic_refuses_an_existing_file(tmp_path):
    path = tmp_path / "result.json"
    path.write_bytes(b"old")
    with pytest.raises(FileExistsError, match=re.escape(str(path)) + ".*overwrite"):
        write_file_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary file left
    write_file_atomic(path, b"new", overwrite=True)
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_write_file_atomic_without_hard_links(tmp_path, monkeypatch, synced):
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted", str(src))

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "result.json"
    write_file_atomic(path, b"first")
    assert path.stat().st_ino in synced  # the file created in place of a link is synced too
    with pytest.raises(FileExistsError, match=re.escape(str(path))):
        write_file_atomic(path, b"second")
    assert path.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_write_file_atomic_names_the_destination_and_leaves_nothing(tmp_path, full_disk):
    out = tmp_path / "out"
    out.mkdir()
    full_disk(out)
    with pytest.raises(OSError, match="No space left") as info:
        write_file_atomic(out / "result.json", b"{}\n")
    assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(out / "result.json"))
    assert list(out.iterdir()) == []


def test_write_atomically_replaces_or_refuses_an_existing_file(tmp_path):
    path = tmp_path / "log.txt"
    path.write_text("old")
    with pytest.raises(FileExistsError):
        write_atomically(path, lambda tmp: tmp.write_text("new"), overwrite=False)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["log.txt"]
    write_atomically(path, lambda tmp: tmp.write_text("new"))
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["log.txt"]


def test_write_atomically_leaves_nothing_when_writing_fails(tmp_path):
    path = tmp_path / "log.txt"

    def fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, fail, overwrite=False)
    assert list(tmp_path.iterdir()) == []
