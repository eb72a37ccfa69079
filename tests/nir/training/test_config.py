"""Tests of pyg_lecc.nir.training.config: TrainConfig and its validation."""

import dataclasses
import json
from pathlib import Path

import pytest
from training_helpers import TINY_ARCH, _config

from pyg_lecc.nir.config import NIRGNNConfig
from pyg_lecc.nir.training import RESUME_FIELDS, TrainConfig, stored_settings
from pyg_lecc.nir.training.config import LEGACY_VALUES


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(iters=0), "iters must be at least 1"),
        (dict(lr=1e-4, lr_end=1e-3), "lr_end"),
        (dict(lr=0.0), "lr must be a positive"),
        (dict(model="resnet"), "unknown model"),
        (dict(features=7), "features must be a positive multiple of 3"),
        (dict(non_local=False), "model='cnn' trains its CNN baseline"),
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
    assert d["arch"] == TINY_ARCH.to_dict()
    values = [*(v for k, v in d.items() if k != "arch"), *d["arch"].values()]
    assert all(isinstance(v, (str, int, float, bool, type(None))) for v in values)
    assert json.loads(json.dumps(d)) == d
    assert TrainConfig.from_dict(d, "run.json") == config


def test_arch_is_a_nirgnn_config(tmp_path):
    assert TrainConfig(data=tmp_path, out=tmp_path).arch == NIRGNNConfig()
    with pytest.raises(ValueError, match="arch must be a NIRGNNConfig, got dict"):
        TrainConfig(data=tmp_path, out=tmp_path, arch={"rank": 2})
    assert "arch" in RESUME_FIELDS and not set(RESUME_FIELDS) & set(NIRGNNConfig().to_dict())


def test_stored_settings_read_the_old_form_of_a_checkpoint(tmp_path):
    # As written before TrainConfig.arch and before register: the architecture at the top level.
    config = _config(tmp_path, tmp_path / "run")
    old = {k: v for k, v in config.to_dict().items() if k not in ("arch", "register")}
    old.update(features=6, rank=2, k=4, layers_per_block=1)
    settings = stored_settings(old, "checkpoint.pt")
    assert settings["arch"] == TINY_ARCH  # delta and non_local: what every old run had
    assert settings["register"] is LEGACY_VALUES["register"] is False
    assert TrainConfig.from_dict(old, "c") == dataclasses.replace(config, register=False)
    # Without legacy values (a --config file), a missing field is the default.
    assert stored_settings({"data": "d"}, "run.json", legacy=False)["register"] is True
    assert stored_settings({"data": "d"}, "run.json", legacy=False)["arch"] == NIRGNNConfig()


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        ({"colour": 3}, r"c\.json: unknown training setting\(s\) \['colour'\]"),
        ({"arch": {"rank": 0}}, r"c\.json: invalid arch: NIRGNNConfig: rank must be"),
        ({"arch": {"colour": 3}}, r"c\.json: invalid arch: .*colour"),
        ({"arch": [1]}, r"c\.json: arch must be a dict"),
    ],
)
def test_stored_settings_refuse_unknown_and_invalid_values(stored, message):
    with pytest.raises(ValueError, match=message):
        stored_settings(stored, "c.json")


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
