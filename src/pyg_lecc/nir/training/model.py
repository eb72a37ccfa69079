"""The model of a run: built from the configuration, optionally from a weights file."""

from __future__ import annotations

from pathlib import Path

from pyg_lecc.nir.hub import get_model, load_weights, state_mismatch
from pyg_lecc.nir.models import NIRGNN
from pyg_lecc.nir.training.config import TrainConfig

__all__ = ["build_model"]


def build_model(config: TrainConfig) -> NIRGNN:
    r"""The model a run trains: ``config.model`` of architecture ``config.arch``, initialised
    randomly (from ``torch``'s generator) or from ``config.init_from``.

    Args:
        config (TrainConfig): The run's configuration.

    Returns:
        The model, in training mode.

    Raises:
        ValueError: The ``init_from`` weights are of another model or architecture, or do not
            fit the model.

    Example:
        >>> from pyg_lecc.nir.config import NIRGNNConfig
        >>> from pyg_lecc.nir.training import TrainConfig, build_model
        >>> arch = NIRGNNConfig(features=12, rank=2)
        >>> build_model(TrainConfig(data="d", out="o", model="cnn", arch=arch)).config()["features"]
        12
    """
    arch = config.arch.to_dict()
    del arch["non_local"]  # the model's name decides it
    if config.model == "cnn":  # arch is the NIR-GNN whose parameter count the CNN matches
        arch["match_features"] = arch.pop("features")
    net = get_model(config.model, **arch)
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
    mismatch = state_mismatch(net.state_dict(), state)
    if mismatch:
        raise ValueError(f"init_from {path}: its tensors do not fit the model: {mismatch}")
    net.load_state_dict(state)
