"""Train PyG's NNConv and LightweightECC(edge_dim=...) on the same edge-conditioned task.

A synthetic task (random graphs, not real molecules): every node's target is the mean over its
incoming edges of ``tanh(e_ji . w) * (A x_j)``, a message gated by the edge features through a
fixed random ``w`` and a fixed random rank-4 matrix ``A`` (LightweightECC's per-edge matrices
have rank at most ``rank``; NNConv's are dense). Both layers learn it from the same data with
the same optimiser; the script prints both loss curves and the size of the per-edge tensors
each layer materialises (NNConv: one ``F x F`` matrix per edge; LightweightECC: a hidden
vector of ``F`` numbers per edge), then writes ``replace_nnconv.png`` if matplotlib is
installed. Measured peak memory on larger graphs: ``python -m benchmarks.nnconv`` and the
"Replacing NNConv" documentation page.

Run from anywhere::

    python examples/replace_nnconv.py [--steps 300] [--channels 32]
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn
from torch_geometric.nn import NNConv

from pyg_lecc import LightweightECC

EDGE_DIM = 5
RANK = 4


def random_graphs(
    num_graphs: int, nodes: int, edges: int, channels: int, gen: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    offsets = torch.arange(num_graphs).repeat_interleave(edges) * nodes
    edge_index = torch.randint(0, nodes, (2, num_graphs * edges), generator=gen) + offsets
    x = torch.randn(num_graphs * nodes, channels, generator=gen)
    edge_attr = torch.randn(num_graphs * edges, EDGE_DIM, generator=gen)
    return x, edge_index, edge_attr


def teacher(x: Tensor, edge_index: Tensor, edge_attr: Tensor, gen: torch.Generator) -> Tensor:
    """The target: a mean of edge-gated linear messages with fixed random weights."""
    w = torch.randn(EDGE_DIM, generator=gen)
    U, V = (torch.randn(x.size(1), RANK, generator=gen) for _ in range(2))
    A = U @ V.t() / x.size(1) ** 0.5
    src, dst = edge_index
    messages = torch.tanh(edge_attr @ w).unsqueeze(-1) * (x[src] @ A.t())
    out = torch.zeros_like(x).index_add_(0, dst, messages)
    degree = torch.zeros(x.size(0)).index_add_(0, dst, torch.ones(dst.numel()))
    return out / degree.clamp(min=1).unsqueeze(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    gen = torch.Generator().manual_seed(args.seed)
    F = args.channels
    data = random_graphs(num_graphs=64, nodes=30, edges=60, channels=F, gen=gen)
    target = teacher(*data, gen=gen)
    layers = {
        "NNConv": NNConv(F, F, nn.Linear(EDGE_DIM, F * F), aggr="mean"),
        "LightweightECC": LightweightECC(F, F, rank=RANK, edge_dim=EDGE_DIM, attention=False),
    }
    num_edges = data[1].size(1)
    per_edge_mb = {"NNConv": num_edges * F * F * 4 / 1e6, "LightweightECC": num_edges * F * 4 / 1e6}
    curves: dict[str, list[float]] = {}
    for name, layer in layers.items():
        torch.manual_seed(args.seed)
        layer.reset_parameters()
        opt = torch.optim.Adam(layer.parameters(), lr=3e-3)

        def step(layer: nn.Module = layer, opt: torch.optim.Optimizer = opt) -> float:
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.mse_loss(layer(*data), target)
            loss.backward()
            opt.step()
            return loss.item()

        curves[name] = [step() for _ in range(args.steps)]
        params = sum(p.numel() for p in layer.parameters())
        shown = ", ".join(f"{curves[name][i]:.4f}" for i in range(0, args.steps, args.steps // 6))
        print(
            f"{name:15s} {params:6d} parameters, per-edge tensors {per_edge_mb[name]:6.2f} MB; "
            f"loss every {args.steps // 6} steps: {shown}; final {curves[name][-1]:.4f}"
        )

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, curve in curves.items():
        ax.semilogy(curve, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("training MSE")
    ax.legend()
    fig.tight_layout()
    fig.savefig("replace_nnconv.png", dpi=120)
    print("wrote replace_nnconv.png")


if __name__ == "__main__":
    main()
