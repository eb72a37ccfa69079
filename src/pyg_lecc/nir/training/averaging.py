"""Averaged weights: the exponential moving average (optionally bias-corrected) and the
recomputation of its BatchNorm statistics on fixed training batches."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from pyg_lecc.nir.data import PairedImageDataset, RandomPatchSampler
from pyg_lecc.nir.training.config import TrainConfig

__all__ = ["bn_recalibration_batches"]


def bn_recalibration_batches(train_set: PairedImageDataset, config: TrainConfig) -> list[Tensor]:
    r"""The fixed NIR batches on which the BatchNorm statistics of averaged weights are
    recomputed before each validation (``config.ema``), also by
    :func:`pyg_lecc.nir.continuation.finish`.

    They are drawn by their own generator, seeded by ``config.seed``, so the training
    sampler's random stream is untouched and every call gives the same batches.

    Args:
        train_set (PairedImageDataset): The training pairs (without the held-out ones).
        config (TrainConfig): The run: ``patch``, ``batch_size``, ``seed`` and
            ``bn_batches`` (the number of batches).

    Returns:
        ``config.bn_batches`` NIR batches of shape ``(batch_size, 1, patch, patch)``.
    """
    sampler = RandomPatchSampler(
        train_set,
        patch_size=config.patch,
        batch_size=config.batch_size,
        generator=torch.Generator().manual_seed(config.seed + 10_000),
    )
    return [sampler.sample()[0] for _ in range(config.bn_batches)]


def _ema_update(decay: float, bias_correction: bool) -> Callable[..., None]:
    """The ``multi_avg_fn`` of the weight average (see ``TrainConfig.ema_bias_correction``)."""
    if not bias_correction:
        return get_ema_multi_avg_fn(decay)

    def update(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        # Update n + 1 of the bias-corrected average m_t / (1 - decay**t), written as a step
        # of the plain one: its weight on the previous average is
        # decay * (1 - decay**n) / (1 - decay**(n + 1)) (0 at n = 0: a copy).
        n = int(num_averaged)
        step = decay * (1.0 - decay**n) / (1.0 - decay ** (n + 1))
        get_ema_multi_avg_fn(step)(averaged, current, num_averaged)

    return update


def _averaged_model(net: nn.Module, config: TrainConfig) -> AveragedModel | None:
    """The moving average of ``net``'s weights and buffers (``None`` without ``ema``)."""
    if config.ema is None:
        return None
    return AveragedModel(
        net,
        multi_avg_fn=_ema_update(config.ema, config.ema_bias_correction),
        use_buffers=True,
    )


def _recalibrate_bn(batches: list[Tensor], model: nn.Module, device: torch.device) -> None:
    """Recomputes the BatchNorm statistics of averaged weights on the fixed ``batches``
    (none: nothing to do)."""
    if batches:
        update_bn(batches, model, device)
