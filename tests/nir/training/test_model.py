"""Tests of pyg_lecc.nir.training.model: starting a run from a weights file (init_from)."""

import pytest
import torch
from training_helpers import (
    _config,
    _load,
)

from pyg_lecc.io.weight_files import write_weights_file
from pyg_lecc.nir.hub import load_weights
from pyg_lecc.nir.training import loop, train


def test_init_from_starts_from_the_weights_with_a_fresh_optimizer(data, tmp_path, monkeypatch):
    first = tmp_path / "first"
    train(_config(data, first, model="nir-gnn", iters=2))
    _, expected = load_weights(first / "weights.safetensors")

    started = {}
    build = loop.build_model

    def recording_build(config):
        net = build(config)
        started.update({k: v.clone() for k, v in net.state_dict().items()})
        return net

    monkeypatch.setattr(loop, "build_model", recording_build)
    second = tmp_path / "second"
    init = first / "weights.safetensors"
    summary = train(_config(data, second, model="nir-gnn", iters=3, init_from=init))
    assert summary["iterations"] == 3
    assert started.keys() == expected.keys()
    for key in expected:
        assert torch.equal(started[key], expected[key]), key
    ckpt = _load(second / "checkpoint.pt")
    assert ckpt["config"]["init_from"] == str(first / "weights.safetensors")
    # Fresh Adam: three steps from the start, not five.
    assert all(int(s["step"]) == 3 for s in ckpt["optimizer"]["state"].values())


def test_init_from_refuses_another_architecture_or_model(data, tmp_path):
    first = tmp_path / "first"
    train(_config(data, first, model="nir-gnn", iters=1))
    weights = first / "weights.safetensors"
    with pytest.raises(ValueError, match=r"does not match.*features \(weights: 6, run: 9\)"):
        train(_config(data, tmp_path / "a", model="nir-gnn", features=9, init_from=weights))
    with pytest.raises(ValueError, match="holds model 'nir-gnn', not 'cnn'"):
        train(_config(data, tmp_path / "b", model="cnn", init_from=weights))
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        train(_config(data, tmp_path / "c", init_from=tmp_path / "missing.pt"))
    # Same config, but one tensor gone: named in the short summary, nothing trained.
    meta, state = load_weights(weights)
    name = sorted(state)[0]
    del state[name]
    write_weights_file(tmp_path / "damaged.safetensors", state, meta)
    damaged = tmp_path / "damaged.safetensors"
    with pytest.raises(ValueError, match=rf"do not fit the model: missing tensors \(1\): {name}"):
        train(_config(data, tmp_path / "d", model="nir-gnn", init_from=damaged))
    assert not (tmp_path / "d" / "weights.safetensors").exists()
