"""LightweightECC conditioned on ``edge_attr`` against PyG's ``NNConv``: molecules and images.

Run with ``python -m benchmarks.nnconv`` (CPU, one thread; ``--only lecc`` or ``--only nnconv``
measures one operator). The molecule batch follows the sizes of
PyG's QM9 NNConv example: 128 random graphs of 30 nodes and 60 directed edges each, 64
channels, 5 edge features (random N(0, 1) values, not chemistry). The image graphs are the
paper's training graph (10 patches of 42x42, k=8) at F=64 and F=99 with 5 random edge
features; NNConv is not run where its per-edge matrices would exceed 6 GB. Both operators map
F to F channels with mean aggregation:

- ``nnconv``: ``NNConv(F, F, nn=Linear(5, F * F), aggr="mean")``;
- ``lecc``: ``LightweightECC(F, F, edge_dim=5)`` (node-level implementation, defaults).

For each, the time of forward + backward (to the parameters, the node and the edge features)
with :func:`benchmarks.common.time_function` and its peak tensor memory with
:func:`benchmarks.common.measure_peak_memory`.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn
from torch_geometric.nn import NNConv

from benchmarks.common import measure_peak_memory, time_function
from pyg_lecc import LightweightECC, image_knn_graph, image_to_nodes


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


def image_batch(
    channels: int, num_patches: int = 10, patch: int = 42, k: int = 8, edge_dim: int = 5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, edge_index, edge_attr)`` of the paper's training graph (kNN over random pixel
    features, 17,640 nodes and 141,120 edges at the defaults) with random edge features."""
    feats = torch.randn(num_patches, channels, patch, patch)
    edge_index = image_knn_graph(feats, k=k)
    return image_to_nodes(feats), edge_index, torch.randn(edge_index.size(1), edge_dim)


def nnconv_bytes(num_edges: int, channels: int) -> int:
    """NNConv's per-edge weight matrices, forward + backward (float32): the matrices and their
    gradient, ``2 E F_in F_out`` floats."""
    return 2 * num_edges * channels * channels * 4


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


OPERATORS = ("nnconv", "lecc")


def main(max_gb: float = 6.0, only: tuple[str, ...] = OPERATORS) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cases = [("molecules", 64, molecule_batch())]
    cases += [(f"image graph F={f}", f, image_batch(f)) for f in (64, 99)]
    for label, channels, batch in cases:
        print(f"{label}: {batch[0].size(0)} nodes, {batch[1].size(1)} edges, threads=1")
        for name in only:
            need = nnconv_bytes(batch[1].size(1), channels) / 1e9
            if name == "nnconv" and need > max_gb:
                print(f"  {name:7s} not run: needs about {need:.1f} GB > {max_gb:g} GB")
                continue
            r = measure(name, batch)
            print(f"  {name:7s} {r['time_s'] * 1e3:9.1f} ms  {r['peak_mb']:8.1f} MB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=OPERATORS, help="measure this operator alone")
    parser.add_argument(
        "--max-gb", type=float, default=6.0, help="NNConv is not run above this (default 6)"
    )
    args = parser.parse_args()
    main(args.max_gb, (args.only,) if args.only else OPERATORS)
