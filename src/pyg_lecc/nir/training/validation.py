"""Validation data and the metrics of a model on whole images."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor

from pyg_lecc.nir.data import PairingError, find_pairs, load_pair
from pyg_lecc.nir.metrics import evaluate_pair, summarize
from pyg_lecc.nir.models import NIRGNN
from pyg_lecc.nir.training.config import VAL_SEARCH_WINDOW, TrainConfig

_EvalData = list[tuple[str, Tensor, np.ndarray]]


def _load_validation(config: TrainConfig) -> _EvalData | None:
    if config.val_split == "none":
        return None
    try:
        pairs = find_pairs(config.data, config.val_split)
    except PairingError as err:
        if "folder not found" not in str(err):
            raise  # the split exists but is broken: do not hide it
        warnings.warn(
            f"no {config.val_split!r} split in {config.data} ({err}): validation skipped",
            stacklevel=4,
        )
        return None
    return [_eval_item(pair.name, *load_pair(pair)) for pair in pairs]


def _eval_item(name: str, nir: np.ndarray, rgb: np.ndarray) -> tuple[str, Tensor, np.ndarray]:
    return name, torch.from_numpy(nir)[None, None], rgb


@torch.no_grad()
def _validate(net: NIRGNN, data: _EvalData, device: torch.device) -> dict[str, float]:
    was_training = net.training
    window = net.graph.search_window
    net.eval()
    if window is None:
        net.graph.search_window = VAL_SEARCH_WINDOW
    try:
        per_image = []
        for _, nir, rgb in data:
            pred = net(nir.to(device)).clamp_(0.0, 1.0)[0].permute(1, 2, 0).cpu().numpy()
            per_image.append(evaluate_pair(pred, rgb))
    finally:
        net.graph.search_window = window
        net.train(was_training)
    return summarize(per_image)
