"""Gilmer's MPNN with swappable edge-conditioned layers, and its regression trainer, on small
random graphs (no RDKit needed)."""

from __future__ import annotations

import math

import pytest
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader
from torch_geometric.nn import GINEConv, NNConv

from pyg_lecc import LightweightECC
from pyg_lecc.chem.mpnn import LAYERS, MPNN, edge_conditioned_conv, evaluate_rmse, fit_regression

IN, EDGE = 7, 3


def _graph(gen: torch.Generator, y: float | None = None) -> Data:
    n = int(torch.randint(2, 9, (1,), generator=gen))
    src = torch.randint(0, n, (2 * n,), generator=gen)
    dst = torch.randint(0, n, (2 * n,), generator=gen)
    x = torch.randn(n, IN, generator=gen)
    target = float(x[:, 0].sum()) if y is None else y
    return Data(
        x=x,
        edge_index=torch.stack([src, dst]),
        edge_attr=torch.randn(2 * n, EDGE, generator=gen),
        y=torch.tensor([[target]]),
    )


def _graphs(num: int, seed: int = 0) -> list[Data]:
    gen = torch.Generator().manual_seed(seed)
    return [_graph(gen) for _ in range(num)]


@pytest.mark.parametrize(
    ("layer", "cls"), [("nnconv", NNConv), ("lecc", LightweightECC), ("gine", GINEConv)]
)
def test_layer_choice(layer, cls) -> None:
    conv = edge_conditioned_conv(layer, 16, EDGE)
    assert isinstance(conv, cls)
    x, edge_index = torch.randn(5, 16), torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])
    assert conv(x, edge_index, torch.randn(4, EDGE)).shape == (5, 16)


def test_lecc_layer_is_rank_limited_without_attention() -> None:
    conv = edge_conditioned_conv("lecc", 16, EDGE, rank=3)
    assert conv.rank == 3 and conv.attention is False and conv.edge_dim == EDGE


def test_unknown_layer() -> None:
    with pytest.raises(ValueError, match="unknown layer 'gat'"):
        edge_conditioned_conv("gat", 16, EDGE)
    with pytest.raises(ValueError, match="'steps'"):
        MPNN(IN, EDGE, steps=0)


@pytest.mark.parametrize("layer", LAYERS)
def test_forward_shapes_and_graph_independence(layer) -> None:
    torch.manual_seed(0)
    model = MPNN(IN, EDGE, layer=layer, hidden_channels=16).eval()
    graphs = _graphs(5)
    batch = Batch.from_data_list(graphs)
    out = model(batch)
    assert out.shape == (5, 1)
    # Each graph's prediction depends on that graph only: batching changes nothing.
    alone = torch.cat([model(Batch.from_data_list([g])) for g in graphs])
    torch.testing.assert_close(out, alone, rtol=1e-4, atol=1e-5)


def test_same_network_apart_from_the_convolution() -> None:
    models = {layer: MPNN(IN, EDGE, layer=layer, hidden_channels=16) for layer in LAYERS}
    shared = {
        layer: {k: v.shape for k, v in m.state_dict().items() if not k.startswith("conv.")}
        for layer, m in models.items()
    }
    assert shared["nnconv"] == shared["lecc"] == shared["gine"]


def test_evaluate_rmse_matches_a_plain_computation() -> None:
    torch.manual_seed(0)
    model = MPNN(IN, EDGE, layer="gine", hidden_channels=8)
    graphs = _graphs(9)
    mean, std = 0.5, 2.0
    with torch.no_grad():
        model.eval()
        preds = [float(model(Batch.from_data_list([g]))) * std + mean for g in graphs]
    errors = [(p - float(g.y)) ** 2 for p, g in zip(preds, graphs, strict=True)]
    expected = math.sqrt(sum(errors) / len(graphs))
    got = evaluate_rmse(model, DataLoader(graphs, batch_size=4), mean, std)
    assert got == pytest.approx(expected, rel=1e-5)


def test_fit_learns_and_keeps_the_best_validation_epoch() -> None:
    torch.manual_seed(0)
    train, val, test = _graphs(96, seed=1), _graphs(24, seed=2), _graphs(24, seed=3)
    model = MPNN(IN, EDGE, layer="lecc", hidden_channels=16, rank=2)
    result = fit_regression(model, train, val, test, epochs=12, batch_size=16, lr=3e-3)
    assert len(result["val_rmse"]) == len(result["epoch_time_s"]) == 12
    assert result["train_loss"][-1] < 0.5 * result["train_loss"][0]
    best = result["best_epoch"]
    assert result["val_rmse"][best - 1] == min(result["val_rmse"]) == result["val_rmse_best"]
    # The returned test RMSE is that of the restored best-validation weights.
    assert result["test_rmse"] == pytest.approx(result["test_rmse_curve"][best - 1], rel=1e-5)
    assert result["epoch_time_s_median"] > 0


def test_repr() -> None:
    assert repr(MPNN(IN, EDGE, layer="nnconv", hidden_channels=8, steps=2)) == (
        "MPNN(7, 1, layer=nnconv, hidden_channels=8, steps=2)"
    )


@pytest.mark.parametrize("split", ["train", "val", "test"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_fit_regression_refuses_non_finite_targets(split, bad) -> None:
    parts = {"train": _graphs(6, seed=1), "val": _graphs(3, seed=2), "test": _graphs(3, seed=3)}
    parts[split][1].y = torch.tensor([[bad]])
    model = MPNN(IN, EDGE, hidden_channels=8, steps=1)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=rf"{split}\[1\] .*{bad}"):
        fit_regression(model, **parts, epochs=1)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_fit_regression_refuses_empty_splits(split) -> None:
    parts = {"train": _graphs(6, seed=1), "val": _graphs(3, seed=2), "test": _graphs(3, seed=3)}
    parts[split] = []
    with pytest.raises(ValueError, match=f"'{split}' is empty"):
        fit_regression(MPNN(IN, EDGE, hidden_channels=8, steps=1), **parts, epochs=1)


def test_fit_regression_on_one_training_graph_has_finite_weights() -> None:
    # The standard deviation of one target is undefined (NaN): the targets are not scaled.
    model = MPNN(IN, EDGE, hidden_channels=8, steps=1)
    result = fit_regression(model, _graphs(1, seed=1), _graphs(2, seed=2), _graphs(2), epochs=2)
    assert math.isfinite(result["test_rmse"]) and result["best_epoch"] >= 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
