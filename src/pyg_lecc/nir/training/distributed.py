"""Distributed set-up: the ``torchrun`` environment, the process group and the device of each
process."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from pyg_lecc.nir.training.config import TrainConfig

__all__ = ["PROCESS_GROUP_TIMEOUT"]

PROCESS_GROUP_TIMEOUT = timedelta(hours=2)
"""Collective timeout of a process group initialised by :func:`train`: the other processes wait
in a collective while rank 0 validates (NIR-GNN on full 256x256 images takes about two minutes
per image on one CPU thread, far less on a GPU)."""


@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _setup_distributed(config: TrainConfig) -> tuple[_Dist, torch.device]:
    """Reads the ``torchrun`` environment, initialises the process group and picks the
    device of this process."""
    device = torch.device(config.device)
    if dist.is_available() and dist.is_initialized():
        info = _Dist(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))
    elif all(v in os.environ for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        info = _Dist(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))
    else:
        return _Dist(), device
    if info.world_size <= 1:
        return _Dist(), device
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this PyTorch build")
    if device.type == "cuda":
        if info.local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK {info.local_rank} has no GPU: {torch.cuda.device_count()} visible"
            )
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ValueError(f"distributed training supports 'cpu' and 'cuda', not {device.type!r}")
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo", timeout=PROCESS_GROUP_TIMEOUT
        )
        info.owns_group = True
    return info, device


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError as err:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from err


def _all_gather(info: _Dist, obj: Any) -> list[Any]:
    """``obj`` of every process, by rank (``[obj]`` in a single-process run)."""
    if not info.enabled:
        return [obj]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def _all_reduce(
    info: _Dist,
    values: list[float],
    device: torch.device,
    dtype: torch.dtype | None = None,
    op: str = "sum",
) -> list[float]:
    """The element-wise sum (``op="max"``: maximum) of ``values`` over the processes, as a
    ``dtype`` tensor on ``device``; ``values`` themselves in a single-process run."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=dtype, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.tolist()
