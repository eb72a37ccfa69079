"""Tests of pyg_lecc.nir.training.config: TrainConfig and its validation."""

from pathlib import Path

import pytest
from training_helpers import (
    _config,
)

from pyg_lecc.nir.training import TrainConfig


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(iters=0), "iters must be at least 1"),
        (dict(lr=1e-4, lr_end=1e-3), "lr_end"),
        (dict(lr=0.0), "lr must be a positive"),
        (dict(model="resnet"), "unknown model"),
        (dict(features=7), "multiple of 3"),
        (dict(batch_size=0), "batch_size"),
        (dict(ckpt_every=0), "ckpt_every"),
        (dict(threads=0), "threads"),
        (dict(val_split="test"), "val_split"),
        (dict(device="cuda:99"), "not available"),
        (dict(device="nonsense"), "device"),
        (dict(patch=3, k=8), "too small"),
    ],
)
def test_config_rejects_invalid_values(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        _config(tmp_path, tmp_path / "run", **changes)


def test_config_to_dict_is_plain(tmp_path):
    config = _config(tmp_path, tmp_path / "run")
    assert isinstance(config.data, Path)
    d = config.to_dict()
    assert d["data"] == str(tmp_path) and d["out"] == str(tmp_path / "run")
    assert all(isinstance(v, (str, int, float, bool, type(None))) for v in d.values())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(schedule="linear"), "schedule must be one of"),
        (dict(warmup=6), "warmup"),
        (dict(amp="fp8"), "amp must be one of"),
        (dict(ema=1.0), "ema"),
        (dict(ema=0), "ema"),
        (dict(time_budget=0), "time_budget"),
        (dict(time_budget=float("nan")), "time_budget"),
        (dict(holdout=-1), "holdout"),
        (dict(init_from="w.pt", resume=True), "init_from"),
    ],
)
def test_invalid_options_are_refused(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(data=tmp_path, out=tmp_path, iters=6, **changes)
