"""Training pairs set aside for model selection (``holdout`` by seed, ``holdout_pairs`` by
name) and the committed selection pairs of the VCIP 2020 data."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from pyg_lecc.nir.data import PairedImageDataset
from pyg_lecc.nir.training.config import TrainConfig
from pyg_lecc.nir.training.validation import _eval_item, _EvalData

__all__ = ["DEFAULT_HOLDOUT_PAIRS", "holdout_indices", "read_holdout_pairs"]

DEFAULT_HOLDOUT_PAIRS = Path(__file__).parent.parent / "holdout_pairs.txt"
"""The committed selection pairs of the VCIP 2020 training split (``holdout_pairs="default"``):
the 12 pairs that ``holdout=12, seed=1`` holds out, so that the weights lineage trained with
those settings never saw them."""


def read_holdout_pairs(spec: str | os.PathLike[str]) -> list[str]:
    r"""The training-pair names of a selection-pairs file (``holdout_pairs``).

    One name per line (the pair names of :func:`pyg_lecc.nir.data.find_pairs`); ``#`` starts a
    comment, blank lines are skipped.

    Args:
        spec (str or PathLike): The file, or ``"default"`` for :data:`DEFAULT_HOLDOUT_PAIRS`.

    Returns:
        The names, in the file's order.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: It names no pair, or a pair twice.

    Example:
        >>> from pyg_lecc.nir.training import read_holdout_pairs
        >>> read_holdout_pairs("default")[:2]
        ['country_0014', 'country_0042']
    """
    path = _holdout_pairs_path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"holdout pairs file not found: {path}")
    names = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    names = [name for name in names if name]
    if not names:
        raise ValueError(f"the holdout pairs file {path} names no pair")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"the holdout pairs file {path} names {', '.join(repeated)} twice")
    return names


def _holdout_pairs_path(spec: str | os.PathLike[str]) -> Path:
    return DEFAULT_HOLDOUT_PAIRS if str(spec) == "default" else Path(spec)


def holdout_indices(train_set: PairedImageDataset, config: TrainConfig) -> list[int]:
    r"""Indices of the training pairs set aside for selection: those named by
    ``config.holdout_pairs``, else ``config.holdout`` pairs drawn by ``config.seed``.

    Args:
        train_set (PairedImageDataset): The training split of ``config.data``.
        config (TrainConfig): The run.

    Returns:
        The sorted indices into ``train_set`` (empty without a hold-out).

    Raises:
        ValueError: A named pair is not in ``train_set``, or the hold-out would leave no
            training pair.
    """
    if config.holdout_pairs is not None:
        names = read_holdout_pairs(config.holdout_pairs)
        index = {pair.name: i for i, pair in enumerate(train_set.pairs)}
        missing = [name for name in names if name not in index]
        if missing:
            raise ValueError(
                f"the holdout pairs {', '.join(missing)} of "
                f"{_holdout_pairs_path(config.holdout_pairs)} are not in the training split of "
                f"{config.data} ({len(train_set)} pairs)"
            )
        held = sorted(index[name] for name in names)
    else:
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(config.seed))
        held = sorted(order[: config.holdout].tolist())
    if len(held) >= len(train_set):
        raise ValueError(
            f"holdout ({len(held)} pairs) must leave training pairs: the training split of "
            f"{config.data} has {len(train_set)}"
        )
    return held


def _split_holdout(
    train_set: PairedImageDataset, config: TrainConfig
) -> tuple[PairedImageDataset, _EvalData | None]:
    """Sets training pairs aside for model selection (``holdout`` or ``holdout_pairs``).

    The held-out images are ``train_set``'s: with ``register``, shifted into register like the
    pairs trained on (those with an unreliable estimate as stored), so that selection scores
    the same targets that training fits."""
    if not config.holdout and config.holdout_pairs is None:
        return train_set, None
    held = holdout_indices(train_set, config)
    kept = sorted(set(range(len(train_set))) - set(held))
    selection = []
    for i in held:
        nir, rgb, name = train_set[i]
        selection.append(_eval_item(name, nir[0].numpy(), rgb.permute(1, 2, 0).numpy()))
    return train_set.subset(kept), selection
