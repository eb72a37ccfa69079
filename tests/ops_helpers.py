"""Shared by the tests of the fused operators (tests/ops/test_edge_aggregate.py,
tests/ops/test_edge_label_aggregate.py, tests/ops/test_cpu.py): the test graphs, the Numba
marker and a fresh Python process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from pyg_lecc.typing import WITH_NUMBA

GRAPHS = ("random", "knn", "bipartite", "zero_degree", "empty")

requires_numba = pytest.mark.skipif(not WITH_NUMBA, reason="numba is not installed")


def run_fresh_process(code: str, timeout: float = 600) -> list[str]:
    """What ``code`` prints, split into words, run in a new Python process with one OpenMP
    and one Numba thread (where no kernel has run or compiled yet); fails on its errors."""
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def make_graph(kind: str, gen: torch.Generator) -> tuple[int, int, torch.Tensor, torch.Tensor]:
    """``(num_src, num_dst, src, dst)`` of one test graph."""
    if kind == "random":  # varying in-degrees, some targets without edges
        src, dst = torch.randint(0, 23, (60,), generator=gen), torch.randint(0, 23, (60,))
        return 23, 23, src, dst
    if kind == "knn":  # grouped by target, k = 5 each (the image kNN layout)
        n, k = 17, 5
        src = torch.stack([torch.randperm(n, generator=gen)[:k] for _ in range(n)]).flatten()
        return n, n, src, torch.arange(n).repeat_interleave(k)
    if kind == "bipartite":
        src, dst = torch.randint(0, 19, (40,), generator=gen), torch.randint(0, 7, (40,))
        return 19, 7, src, dst
    if kind == "zero_degree":  # a hub and many isolated targets
        src = torch.randint(0, 12, (15,), generator=gen)
        return 12, 12, src, torch.full((15,), 4)
    if kind == "empty":
        return 6, 5, torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    raise ValueError(kind)
