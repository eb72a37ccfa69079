"""Learning-rate schedules: linear warm-up, then an exponential (the paper's) or cosine decay,
driven by iterations or by the time budget spent, whichever is further along."""

from __future__ import annotations

import math

from pyg_lecc.nir.training.config import TrainConfig

__all__ = ["lr_at"]


def lr_at(t: int, config: TrainConfig, time_fraction: float = 0.0) -> float:
    r"""Learning rate of iteration ``t`` (0-based).

    During the warm-up (``t < warmup``) it rises linearly, ``lr * (t + 1) / warmup``. After
    it, with progress ``p = (t - warmup) / (iters - warmup)`` (or ``time_fraction``, the
    fraction of a time budget spent, if that is further along, capped at 1), the ``"exp"``
    schedule gives ``lr * (lr_end / lr) ** p`` and ``"cosine"`` gives
    ``lr_end + (lr - lr_end) * (1 + cos(pi * p)) / 2``.

    Args:
        t (int): The iteration, from 0.
        config (TrainConfig): The run: ``lr``, ``lr_end``, ``iters``, ``warmup`` and
            ``schedule``.
        time_fraction (float, optional): The fraction of the time budget spent.
            (default: :obj:`0.0`)

    Returns:
        The learning rate.

    Example:
        >>> cfg = TrainConfig(data=".", out="run", iters=10, lr=1e-2, lr_end=1e-3)
        >>> round(lr_at(0, cfg), 6), round(lr_at(5, cfg), 6), round(lr_at(10, cfg), 6)
        (0.01, 0.003162, 0.001)
        >>> cfg = TrainConfig(data=".", out="run", iters=12, lr=1e-2, lr_end=1e-3,
        ...                   warmup=2, schedule="cosine")
        >>> [round(lr_at(t, cfg), 5) for t in (0, 1, 2, 7, 12)]
        [0.005, 0.01, 0.01, 0.0055, 0.001]
    """
    if t < config.warmup:
        return config.lr * (t + 1) / config.warmup
    p = max((t - config.warmup) / (config.iters - config.warmup), time_fraction)
    p = min(p, 1.0)
    if config.schedule == "cosine":
        return config.lr_end + (config.lr - config.lr_end) * 0.5 * (1.0 + math.cos(math.pi * p))
    return config.lr * (config.lr_end / config.lr) ** p
