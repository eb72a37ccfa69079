"""Shared by the tests of the fused operators (tests/ops/test_edge_aggregate.py,
tests/ops/test_edge_label_aggregate.py): the test graphs and the Numba marker."""

from __future__ import annotations

import pytest
import torch

from pyg_lecc.typing import WITH_NUMBA

GRAPHS = ("random", "knn", "bipartite", "zero_degree", "empty")

requires_numba = pytest.mark.skipif(not WITH_NUMBA, reason="numba is not installed")


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
