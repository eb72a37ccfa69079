"""Tests of pyg_lecc.nir.training.threads: the thread pools of a training process."""

import os
import subprocess
import sys

import pytest
from training_helpers import (
    _make_data,
)


def test_cli_threads_size_numba_s_pool_before_it_starts(tmp_path):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core: Numba's pool has one worker anyway")
    script = (
        "import sys, torch\n"
        "from pyg_lecc.nir.cli import main\n"
        "import numba\n"
        "from numba.np.ufunc import parallel\n"
        "code = main(sys.argv[1:])\n"
        "print(code, parallel._is_initialized, parallel.NUM_THREADS, numba.get_num_threads())\n"
    )
    data = _make_data(tmp_path / "data")
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--iters", "1"]
    argv += ["--features", "6", "--rank", "2", "--k", "4", "--layers-per-block", "1"]
    argv += ["--patch", "12", "--batch-size", "2", "--threads", "1", "--no-progress"]
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_NUM_THREADS"}
    done = subprocess.run(
        [sys.executable, "-c", script, *argv], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-4:] == ["0", "True", "1", "1"]
