"""Tests of pyg_lecc.nir.training.averaging: the weight EMA, its bias correction and the
BatchNorm recalibration."""

import pytest
import torch
from torch.optim.swa_utils import update_bn
from training_helpers import (
    _config,
    _load,
    _record_ema_updates,
)

from pyg_lecc.nir.data import PairedImageDataset
from pyg_lecc.nir.hub import get_model, load_weights
from pyg_lecc.nir.training import averaging, train


def test_ema_weights_are_the_moving_average_of_the_trained_ones(data, tmp_path, monkeypatch):
    snapshots = _record_ema_updates(monkeypatch)
    out = tmp_path / "run"
    decay = 0.6
    train(_config(data, out, model="nir-gnn", iters=4, ema=decay))
    assert len(snapshots) == 4

    # Plain EMA of the parameters: the first update copies, then
    # avg <- decay * avg + (1 - decay) * new.
    _, exported = load_weights(out / "weights.safetensors")
    model = get_model("nir-gnn", weights=out / "weights.safetensors")
    params = {name for name, _ in model.named_parameters()}
    for key in params:
        expected = snapshots[0][key].double()
        for snap in snapshots[1:]:
            expected = decay * expected + (1 - decay) * snap[key].double()
        torch.testing.assert_close(exported[key].double(), expected, rtol=1e-5, atol=1e-6, msg=key)
    # BatchNorm statistics recomputed for the averaged weights on the fixed batches.
    config = _config(data, out, model="nir-gnn", iters=4, ema=decay)
    # The trainer's own training set: registered as configured.
    train_set = PairedImageDataset(data, "train", register=config.register)
    batches = averaging.bn_recalibration_batches(train_set, config)
    assert len(batches) == config.bn_batches
    update_bn(batches, model)
    stats = [k for k in exported if k.endswith(("running_mean", "running_var"))]
    assert stats
    for key in stats:
        torch.testing.assert_close(exported[key], model.state_dict()[key], msg=key)
    # Training went on with the raw weights, which differ from their average.
    raw = _load(out / "checkpoint.pt")["model"]
    assert any(not torch.equal(raw[k], exported[k]) for k in params)


def test_bias_corrected_ema_weighs_only_the_run_s_updates(data, tmp_path, monkeypatch):
    snapshots = _record_ema_updates(monkeypatch)
    out, decay = tmp_path / "run", 0.9
    train(_config(data, out, iters=5, val_every=5, ema=decay, ema_bias_correction=True))
    ema = _load(out / "checkpoint.pt")["ema"]
    t = len(snapshots)
    assert t == 5 and int(ema["n_averaged"]) == t
    # Adam's bias correction of an average started at zero: sum_i (1-d) d^(t-i) x_i / (1-d^t)
    # (the parameters: validation recomputed the BatchNorm statistics).
    model = get_model("nir-gnn", weights=out / "weights.safetensors")
    params = [name for name, _ in model.named_parameters()]
    for key in params:
        expected = sum(
            (1 - decay) * decay ** (t - i) * snap[key].double()
            for i, snap in enumerate(snapshots, start=1)
        ) / (1 - decay**t)
        torch.testing.assert_close(ema[f"module.{key}"].double(), expected, msg=key)
    with pytest.raises(ValueError, match="set ema too"):
        _config(data, out, ema_bias_correction=True)
