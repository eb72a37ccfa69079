"""The model of a run: built from the configuration, optionally from a weights file."""

from __future__ import annotations

from pathlib import Path

from pyg_lecc.nir.models import NIRGNN, _state_mismatch, cnn_baseline, load_weights, nir_gnn
from pyg_lecc.nir.training.config import TrainConfig


def _build_model(config: TrainConfig) -> NIRGNN:
    arch = {"rank": config.rank, "k": config.k, "layers_per_block": config.layers_per_block}
    if config.model == "cnn":
        net = cnn_baseline(match_features=config.features, **arch)
    else:
        net = nir_gnn(features=config.features, **arch)
    if config.init_from is not None:
        _init_from(net, config)
    return net


def _init_from(net: NIRGNN, config: TrainConfig) -> None:
    path = Path(config.init_from)  # type: ignore[arg-type]
    meta, state = load_weights(path)
    if meta["model"] != config.model:
        raise ValueError(f"init_from {path} holds model {meta['model']!r}, not {config.model!r}")
    diffs = [
        f"{key} (weights: {value!r}, run: {net.config()[key]!r})"
        for key, value in meta["config"].items()
        if key in net.config() and net.config()[key] != value
    ]
    if diffs:
        raise ValueError(
            f"init_from {path} does not match the run's architecture: " + "; ".join(diffs)
        )
    mismatch = _state_mismatch(net.state_dict(), state)
    if mismatch:
        raise ValueError(f"init_from {path}: its tensors do not fit the model: {mismatch}")
    net.load_state_dict(state)
