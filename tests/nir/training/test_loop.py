"""Tests of pyg_lecc.nir.training.loop: runs on tiny synthetic data sets and tiny models (CPU only):
logs, weights, time budget and mixed precision."""

import math
import warnings

import numpy as np
import pytest
import torch
from training_helpers import (
    _assert_states_equal,
    _config,
    _fake_clock,
    _load,
    _log,
    _make_data,
)

from pyg_lecc.nir.hub import get_model, load_weights
from pyg_lecc.nir.metrics import METRIC_KEYS
from pyg_lecc.nir.training import loop, lr_at, train


def test_train_writes_log_checkpoint_and_weights(data, tmp_path, monkeypatch):
    trained = {}
    original = loop.save_weights

    def save_weights(model, name, path):
        trained["model"], trained["name"] = model, name
        original(model, name, path)

    monkeypatch.setattr(loop, "save_weights", save_weights)
    out = tmp_path / "run"
    summary = train(_config(data, out, model="nir-gnn", iters=5, ckpt_every=2, val_every=3))

    assert summary["iterations"] == 5 and summary["iterations_this_run"] == 5
    assert summary["seconds_per_iteration"] > 0 and summary["wall_time"] > 0
    assert summary["world_size"] == 1
    assert set(summary["val"]) == set(METRIC_KEYS)
    assert summary["weights"] == str(out / "weights.safetensors")

    log = _log(out / "log.jsonl")
    assert [(e["kind"], e["iteration"]) for e in log] == [
        ("train", 2),
        ("val", 3),
        ("train", 4),
        ("train", 5),
        ("val", 5),
    ]
    config = _config(data, out, iters=5)
    for entry in log:
        assert entry["lr"] == pytest.approx(lr_at(entry["iteration"] - 1, config))
        assert entry["time"] > 0
        if entry["kind"] == "train":
            assert np.isfinite(entry["loss"]) and entry["loss"] > 0
        else:
            assert set(METRIC_KEYS) <= entry.keys()
            assert all(np.isfinite(entry[k]) for k in METRIC_KEYS)
            assert entry["train_loss"] > 0
    assert log[-1]["psnr"] == summary["val"]["psnr"]

    # weights.safetensors rebuilds the trained model through the public model registry.
    assert trained["name"] == "nir-gnn"
    meta, _ = load_weights(out / "weights.safetensors")
    assert meta["model"] == "nir-gnn" and meta["config"]["features"] == 6
    loaded = get_model("nir-gnn", weights=out / "weights.safetensors")
    model = trained["model"].eval()
    x = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    exported = load_weights(out / "weights.safetensors")[1]
    _assert_states_equal(exported, _load(out / "checkpoint.pt")["model"])
    assert not list(out.glob(".*tmp")), "temporary files left behind"


def test_loss_decreases_on_an_easy_target(tmp_path):
    data = _make_data(tmp_path / "easy", easy=True)
    out = tmp_path / "run"
    train(_config(data, out, model="cnn", iters=30, ckpt_every=5, val_every=30))
    losses = [e["loss"] for e in _log(out / "log.jsonl") if e["kind"] == "train"]
    assert len(losses) == 6
    assert losses[-1] < 0.5 * losses[0], losses


def test_missing_validation_split_warns_once(tmp_path):
    data = _make_data(tmp_path / "data", validation=False)
    out = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train(_config(data, out, model="cnn", iters=4, val_every=1))
    skipped = [w for w in caught if "validation skipped" in str(w.message)]
    assert len(skipped) == 1
    assert summary["val"] is None
    assert {e["kind"] for e in _log(out / "log.jsonl")} == {"train"}
    assert (out / "weights.safetensors").is_file()


def test_time_budget_stops_cleanly_and_the_run_can_resume(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _fake_clock(monkeypatch, seconds_per_batch=10.0)
    # The clock reads 10 s per batch drawn: the check before the 5th batch sees 40 s >= 35 s.
    summary = train(_config(data, out, iters=20, time_budget=35.0))
    assert summary["stopped"] == "time_budget"
    assert summary["iterations"] == summary["iterations_this_run"] == 4
    log = _log(out / "log.jsonl")
    assert [(e["kind"], e["iteration"]) for e in log] == [
        ("val", 2),
        ("train", 3),
        ("val", 4),
        ("train", 4),  # written at the stop: iteration 4 is not a checkpoint interval
        ("stop", 4),
    ]
    assert log[-1]["reason"] == "time_budget" and log[-1]["iters"] == 20
    assert _load(out / "checkpoint.pt")["iteration"] == 4
    assert load_weights(out / "weights.safetensors")[0]["model"] == "nir-gnn"
    # The time-driven schedule reached lr_end by the budget's end.
    assert log[3]["lr"] == pytest.approx(lr_at(3, _config(data, out, iters=20), 30 / 35))

    monkeypatch.undo()
    resumed = train(_config(data, out, iters=20, resume=True))
    assert resumed["stopped"] is None and resumed["iterations"] == 20
    assert resumed["iterations_this_run"] == 16


def test_bf16_autocast_trains(data, tmp_path):
    summary = train(_config(data, tmp_path / "run", model="nir-gnn", iters=3, amp="bf16"))
    assert summary["iterations"] == 3
    log = _log(tmp_path / "run" / "log.jsonl")
    assert all(math.isfinite(e["loss"]) for e in log if e["kind"] == "train")
