r"""The message-passing network of Gilmer et al., `"Neural Message Passing for Quantum
Chemistry" <https://arxiv.org/abs/1704.01212>`_, with a choice of edge-conditioned layer,
and a small trainer for graph regression (molecular properties).

The network follows PyG's ``examples/qm9_nn_conv.py``: a linear embedding of the atom
features, :obj:`steps` rounds of one shared edge-conditioned convolution followed by a
shared GRU, a :class:`~torch_geometric.nn.aggr.Set2Set` readout and a two-layer head. Only
the convolution changes between :data:`LAYERS`:

* ``"nnconv"``: PyG's :class:`~torch_geometric.nn.conv.NNConv` (Gilmer's edge network: an
  MLP maps each edge's features to a dense :math:`F \times F` matrix);
* ``"lecc"``: :class:`~pyg_lecc.LightweightECC` with :obj:`edge_dim` (a rank-:math:`r`
  per-edge matrix, never materialised), without the distance attention (bond features are
  categories, not distances);
* ``"gine"``: PyG's :class:`~torch_geometric.nn.conv.GINEConv`, a cheap edge-aware
  reference (edge features added to the messages).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader
from torch_geometric.nn import GINEConv, NNConv, Set2Set

from pyg_lecc.conv import LightweightECC

__all__ = ["LAYERS", "MPNN", "edge_conditioned_conv", "evaluate_rmse", "fit_regression"]

LAYERS = ("nnconv", "lecc", "gine")
"""Edge-conditioned layers :class:`MPNN` can use."""


def edge_conditioned_conv(
    layer: str, channels: int, edge_dim: int, rank: int = 4, edge_hidden: int = 128
) -> nn.Module:
    r"""A :obj:`channels`-to-:obj:`channels` convolution conditioned on :obj:`edge_dim`
    edge features, with mean aggregation where the layer has a choice.

    Args:
        layer (str): One of :data:`LAYERS`.
        channels (int): Node feature width :math:`F`.
        edge_dim (int): Edge feature width :math:`D`.
        rank (int, optional): Rank of LightweightECC's per-edge matrices. (default: :obj:`4`)
        edge_hidden (int, optional): Hidden width of NNConv's edge network (PyG's QM9
            example: 128). (default: :obj:`128`)
    """
    if layer == "nnconv":
        edge_net = nn.Sequential(
            nn.Linear(edge_dim, edge_hidden), nn.ReLU(), nn.Linear(edge_hidden, channels**2)
        )
        return NNConv(channels, channels, edge_net, aggr="mean")
    if layer == "lecc":
        return LightweightECC(
            channels, channels, rank=rank, edge_dim=edge_dim, attention=False, aggr="mean"
        )
    if layer == "gine":
        mlp = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(), nn.Linear(channels, channels))
        return GINEConv(mlp, edge_dim=edge_dim)
    raise ValueError(f"unknown layer {layer!r}; choose one of {LAYERS}")


class MPNN(nn.Module):
    r"""Gilmer et al.'s message-passing network for graph-level regression.

    .. math::
        \mathbf{h}^{0} = \mathrm{ReLU}(\mathbf{W}\mathbf{x}), \quad
        \mathbf{h}^{t+1} = \mathrm{GRU}\big(\mathrm{ReLU}(\mathrm{conv}(\mathbf{h}^{t},
        \mathbf{e})), \mathbf{h}^{t}\big), \quad
        \hat{y} = \mathrm{MLP}\big(\mathrm{Set2Set}(\mathbf{h}^{T})\big),

    with one convolution and one GRU shared by the :math:`T` steps.

    Args:
        in_channels (int): Atom feature width.
        edge_dim (int): Bond feature width.
        layer (str, optional): The convolution, one of :data:`LAYERS`.
            (default: :obj:`"lecc"`)
        hidden_channels (int, optional): Width :math:`F` of the node states.
            (default: :obj:`64`)
        steps (int, optional): Message-passing steps :math:`T`. (default: :obj:`3`)
        rank (int, optional): Rank of LightweightECC. (default: :obj:`4`)
        out_channels (int, optional): Targets per graph. (default: :obj:`1`)

    Shapes:
        - **input:** a :class:`~torch_geometric.data.Batch` with :obj:`x`
          :math:`(|\mathcal{V}|, F_{in})`, :obj:`edge_index` :math:`(2, |\mathcal{E}|)`,
          :obj:`edge_attr` :math:`(|\mathcal{E}|, D)` and :obj:`batch`
          :math:`(|\mathcal{V}|)`
        - **output:** :math:`(B, \text{out\_channels})`

    Example:
        >>> model = MPNN(in_channels=5, edge_dim=3, layer="lecc", hidden_channels=16)
        >>> model
        MPNN(5, 1, layer=lecc, hidden_channels=16, steps=3)
    """

    def __init__(
        self,
        in_channels: int,
        edge_dim: int,
        layer: str = "lecc",
        hidden_channels: int = 64,
        steps: int = 3,
        rank: int = 4,
        out_channels: int = 1,
    ) -> None:
        super().__init__()
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"'steps' must be a positive integer, got {steps!r}")
        self.in_channels = in_channels
        self.edge_dim = edge_dim
        self.layer = layer
        self.hidden_channels = hidden_channels
        self.steps = steps
        self.out_channels = out_channels
        self.embed = nn.Linear(in_channels, hidden_channels)
        self.conv = edge_conditioned_conv(layer, hidden_channels, edge_dim, rank=rank)
        self.gru = nn.GRU(hidden_channels, hidden_channels)
        self.readout = Set2Set(hidden_channels, processing_steps=3)
        self.head = nn.Sequential(
            nn.Linear(2 * hidden_channels, hidden_channels),
            nn.ReLU(),
            nn.Linear(hidden_channels, out_channels),
        )

    def forward(self, data: Data) -> Tensor:
        out = F.relu(self.embed(data.x))
        h = out.unsqueeze(0)
        for _ in range(self.steps):
            m = F.relu(self.conv(out, data.edge_index, data.edge_attr))
            out, h = self.gru(m.unsqueeze(0), h)
            out = out.squeeze(0)
        return self.head(self.readout(out, data.batch))

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
            f"layer={self.layer}, hidden_channels={self.hidden_channels}, steps={self.steps})"
        )


@torch.no_grad()
def evaluate_rmse(model: nn.Module, loader: DataLoader, mean: float, std: float) -> float:
    """Root-mean-square error of a model trained on standardised targets, in target units."""
    model.eval()
    squared, count = 0.0, 0
    for batch in loader:
        pred = model(batch) * std + mean
        squared += float((pred - batch.y).pow(2).sum())
        count += batch.y.numel()
    return math.sqrt(squared / max(count, 1))


def _train_epoch(
    model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, mean: float, std: float
) -> float:
    model.train()
    total, count = 0.0, 0
    for batch in loader:
        optimizer.zero_grad()
        loss = F.mse_loss(model(batch), (batch.y - mean) / std)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * batch.num_graphs
        count += batch.num_graphs
    return total / max(count, 1)


def _check_targets(name: str, graphs: Sequence[Data]) -> None:
    # A NaN target makes NaN weights, and an empty split an RMSE of 0: both pass silently.
    if len(graphs) == 0:
        raise ValueError(f"the split {name!r} is empty: every split needs at least one graph")
    for index, graph in enumerate(graphs):
        finite = torch.isfinite(graph.y)
        if not finite.all():
            raise ValueError(
                f"{name}[{index}] has the target {graph.y[~finite][0].item()}: targets must be "
                "finite numbers"
            )


def fit_regression(
    model: nn.Module,
    train: Sequence[Data],
    val: Sequence[Data],
    test: Sequence[Data],
    epochs: int = 100,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
) -> dict[str, Any]:
    r"""Trains :obj:`model` by MSE on standardised targets (mean and standard deviation of
    :obj:`train`) with Adam and PyG's QM9 schedule (learning rate times 0.7 after 5 epochs
    without a better validation RMSE), keeps the weights of the best validation epoch and
    reports the test RMSE of those.

    Args:
        model (torch.nn.Module): Maps a batch to :math:`(B, 1)` predictions.
        train, val, test (sequence of Data): Graphs with :obj:`y` of shape :math:`(1, 1)`.
        epochs (int, optional): Training epochs. (default: :obj:`100`)
        batch_size (int, optional): Graphs per batch. (default: :obj:`32`)
        lr (float, optional): Initial learning rate. (default: :obj:`1e-3`)
        seed (int, optional): Seeds the batch order. (default: :obj:`0`)

    Returns:
        dict: ``test_rmse``, ``val_rmse_best`` and ``best_epoch`` (1-based), per-epoch lists
        ``train_loss``,
        ``val_rmse``, ``test_rmse_curve`` and ``epoch_time_s``, and the median
        ``epoch_time_s_median`` over all epochs but the first (which includes one-off
        compilation).

    Raises:
        ValueError: A split is empty, or a target is NaN or infinite (the message names the
            split and the graph's index); checked before any training.
    """
    for name, split in (("train", train), ("val", val), ("test", test)):
        _check_targets(name, split)
    y = torch.cat([g.y for g in train])
    # One target has no standard deviation (NaN): such targets are centred, not scaled.
    mean, std = float(y.mean()), (float(y.std()) if y.numel() > 1 else 0.0) or 1.0
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(list(train), batch_size=batch_size, shuffle=True, generator=gen)
    val_loader = DataLoader(list(val), batch_size=256)
    test_loader = DataLoader(list(test), batch_size=256)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=0.7, patience=5, min_lr=1e-5
    )
    history: dict[str, list[float]] = {
        "train_loss": [],
        "val_rmse": [],
        "test_rmse_curve": [],
        "epoch_time_s": [],
    }
    best_val, best_state, best_epoch = math.inf, None, 0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        history["train_loss"].append(_train_epoch(model, loader, optimizer, mean, std))
        history["epoch_time_s"].append(time.perf_counter() - start)
        val_rmse = evaluate_rmse(model, val_loader, mean, std)
        scheduler.step(val_rmse)
        history["val_rmse"].append(val_rmse)
        history["test_rmse_curve"].append(evaluate_rmse(model, test_loader, mean, std))
        if val_rmse < best_val:
            best_val, best_epoch = val_rmse, epoch
            best_state = copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    times = sorted(history["epoch_time_s"][1:] or history["epoch_time_s"])
    return {
        "test_rmse": evaluate_rmse(model, test_loader, mean, std),
        "val_rmse_best": best_val,
        "best_epoch": best_epoch,
        "epoch_time_s_median": times[len(times) // 2],
        **history,
    }
