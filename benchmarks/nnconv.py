"""LightweightECC conditioned on ``edge_attr`` against PyG's ``NNConv`` on a molecule-like batch.

Run with ``python -m benchmarks.nnconv`` (CPU, one thread). The batch follows the sizes of
PyG's QM9 NNConv example: 128 random graphs of 30 nodes and 60 directed edges each, 64
channels, 5 edge features (random N(0, 1) values, not chemistry). Both operators map 64 to 64
channels with mean aggregation:

- ``nnconv``: ``NNConv(64, 64, nn=Linear(5, 64 * 64), aggr="mean")``;
- ``lecc``: ``LightweightECC(64, 64, edge_dim=5)`` (node-level implementation, defaults).

For each, the time of forward + backward (to the parameters, the node and the edge features)
with :func:`benchmarks.common.time_function` and its peak tensor memory with
:func:`benchmarks.common.measure_peak_memory`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch_geometric.nn import NNConv

from benchmarks.common import measure_peak_memory, time_function
from pyg_lecc import LightweightECC


def molecule_batch(
    num_graphs: int = 128, nodes: int = 30, edges: int = 60, channels: int = 64, edge_dim: int = 5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, edge_index, edge_attr)`` of a batch of random graphs of equal size."""
    offsets = torch.arange(num_graphs).repeat_interleave(edges) * nodes
    edge_index = torch.randint(0, nodes, (2, num_graphs * edges)) + offsets
    return (
        torch.randn(num_graphs * nodes, channels),
        edge_index,
        torch.randn(num_graphs * edges, edge_dim),
    )


def build(name: str, channels: int = 64, edge_dim: int = 5) -> nn.Module:
    if name == "nnconv":
        return NNConv(channels, channels, nn.Linear(edge_dim, channels * channels), aggr="mean")
    return LightweightECC(channels, channels, edge_dim=edge_dim)


def measure(name: str, batch: tuple[torch.Tensor, ...], **kwargs: Any) -> dict[str, Any]:
    """Forward + backward time (median) and peak memory of one operator."""
    device = torch.device("cpu")
    op = build(name, batch[0].size(1), batch[2].size(1))
    x = batch[0].clone().requires_grad_()
    edge_attr = batch[2].clone().requires_grad_()

    def step() -> None:
        for t in (*op.parameters(), x, edge_attr):
            t.grad = None
        op(x, batch[1], edge_attr).sum().backward()

    timing = time_function(step, device=device, **kwargs)
    memory = measure_peak_memory(step, device)
    return {"operator": name, "time_s": timing["time_s"], "peak_mb": memory["peak_mb"]}


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    batch = molecule_batch()
    print(f"{batch[0].size(0)} nodes, {batch[1].size(1)} edges, threads=1")
    for name in ("nnconv", "lecc"):
        r = measure(name, batch)
        print(f"{name:7s} {r['time_s'] * 1e3:8.1f} ms  {r['peak_mb']:8.1f} MB")


if __name__ == "__main__":
    main()
