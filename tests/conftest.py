import builtins
import errno
import io
import os
import sys
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    # The test machine is small and shared: intra-op threads only contend (several-fold
    # slower under load), so run single-threaded and restore the setting afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _FullDiskFile(io.FileIO):
    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk(folder)`` makes every file opened for writing in ``folder`` fail with
    ENOSPC, as on a full disk. It returns the list in which exceptions raised where Python
    cannot report them (``__del__``, "Exception ignored in ...") are collected."""
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    real_open = builtins.open

    def fill(folder: Path) -> list:
        def fake_open(file, mode="r", *args, **kwargs):
            writing = "w" in mode or "x" in mode
            if writing and isinstance(file, str | os.PathLike) and Path(file).parent == folder:
                return io.BufferedWriter(_FullDiskFile(file, mode.replace("b", "")))
            return real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", fake_open)
        return unraisable

    return fill
