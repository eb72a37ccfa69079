"""Training of NIR-GNN and its CNN baseline with the recipe of the paper.

The recipe (Valsesia, Fracastoro, Magli, VCIP 2020): Adam, mean squared error only, random
``42x42`` training patches with flips and 90-degree rotations, batches of 10, and a learning
rate decayed exponentially from ``1e-4`` to ``1e-5`` over the whole run,
``lr_t = lr * (lr_end / lr) ** (t / iters)`` at iteration ``t = 0 .. iters - 1``.

Options for short, resumable budgets (a lent GPU for a few minutes, a laptop overnight):
``time_budget`` stops cleanly after so many seconds of training, ``init_from`` starts from a
weights file with a fresh optimiser, ``amp="bf16"`` runs the forward pass under bfloat16
autocast (TF32 matmuls are on by default on CUDA), ``ema`` keeps an exponential moving average
of the weights for validation and export, ``warmup`` and ``schedule="cosine"`` shape the
learning rate, and ``holdout`` (a number of pairs chosen by seed) or ``holdout_pairs`` (a list of
pair names, such as the committed :data:`DEFAULT_HOLDOUT_PAIRS`) sets aside training pairs for
model selection, so that the validation split stays a reporting set, as in the paper.

:func:`train` runs it from a :class:`TrainConfig` and writes to ``config.out``:

- ``log.jsonl``: one JSON object per line. ``{"kind": "train", ...}`` every
  ``ckpt_every`` iterations (mean training loss since the previous train line) and
  ``{"kind": "val", ...}`` every ``val_every`` iterations and at the end (mean training loss
  since the previous val line and the metrics of :data:`pyg_lecc.metrics.METRIC_KEYS`,
  averaged over the validation pairs).
- ``checkpoint.pt``: everything needed for an exact resume, rewritten atomically every
  ``ckpt_every`` iterations, at the end and on Ctrl-C. It holds only tensors and Python
  literals, so ``torch.load(path, weights_only=True)`` reads it. Keys: ``format``,
  ``iteration``, ``model`` (state dict, BatchNorm buffers included), ``optimizer`` (Adam
  state dict), ``config`` (:meth:`TrainConfig.to_dict` with absolute paths),
  ``model_name``, ``world_size``, ``elapsed`` (seconds of training so far, over all
  sessions), ``last_val`` (metrics of the last validation or ``None``), ``sampler_state``
  (rank 0's patch sampler generator state, a ``uint8`` tensor) and ``rank_states`` (one dict
  per process: ``sampler``, ``torch_rng``, ``cuda_rng``, and the running loss sums of the
  log lines).
- ``weights.pt``: the final weights, written with :func:`pyg_lecc.models.save_weights`
  (load them with :func:`pyg_lecc.models.get_model`): the moving average with ``ema``, and the
  weights of the best selection score with ``holdout``.
- ``best.pt`` (with ``holdout`` only): the weights of the best selection score so far.

With ``holdout``, ``{"kind": "select", ...}`` lines hold the metrics on the held-out training
pairs at every validation; a ``{"kind": "stop", ...}`` line records a ``time_budget`` stop.

Resuming (``resume=True``) continues from ``checkpoint.pt`` and gives exactly the result of an
uninterrupted run with the same seed (bit for bit on CPU; CUDA kernels such as scatter-adds are
not deterministic, and a ``time_budget`` run ends wherever the clock says). Log lines written
after the checkpoint by the interrupted session are dropped, so the log reads as one run.

Example:
    >>> from pyg_lecc.training import TrainConfig, train
    >>> summary = train(TrainConfig(data="../shared/data/vcip2020", out="runs/nir-gnn",
    ...                             iters=300_000))  # doctest: +SKIP
    >>> summary["val"]["psnr"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn
from tqdm.auto import tqdm

from pyg_lecc.data import (
    PairedImageDataset,
    PairingError,
    RandomPatchSampler,
    find_pairs,
    load_pair,
)
from pyg_lecc.metrics import evaluate_pair, summarize
from pyg_lecc.models import (
    NIRGNN,
    _state_mismatch,
    cnn_baseline,
    list_models,
    load_weights,
    nir_gnn,
    save_weights,
)

__all__ = [
    "AMP_MODES",
    "BEST_NAME",
    "CHECKPOINT_NAME",
    "DEFAULT_HOLDOUT_PAIRS",
    "LOG_NAME",
    "PROCESS_GROUP_TIMEOUT",
    "RESUME_FIELDS",
    "SCHEDULES",
    "VAL_SEARCH_WINDOW",
    "WEIGHTS_NAME",
    "TrainConfig",
    "limit_numba_threads",
    "lr_at",
    "read_holdout_pairs",
    "train",
]

CHECKPOINT_NAME = "checkpoint.pt"
"""File name of the training checkpoint in ``config.out``."""
WEIGHTS_NAME = "weights.pt"
"""File name of the final weights in ``config.out``."""
LOG_NAME = "log.jsonl"
"""File name of the JSON-lines training log in ``config.out``."""

VAL_SEARCH_WINDOW = 49
"""kNN search window of NIR-GNN on full validation images (training patches are searched
whole, as in the paper; full images use a 49x49 window as :mod:`pyg_lecc.inference` does)."""

RESUME_FIELDS: tuple[str, ...] = (
    "data",
    "model",
    "features",
    "rank",
    "k",
    "layers_per_block",
    "iters",
    "batch_size",
    "patch",
    "lr",
    "lr_end",
    "seed",
    "schedule",
    "warmup",
    "ema",
    "holdout",
    "bn_batches",
    "holdout_pairs",
    "ema_bias_correction",
)
"""Fields of :class:`TrainConfig` (architecture, data, schedule) that must be equal to resume.
The others (device, output and logging intervals, threads, progress bar, time budget, mixed
precision) may change."""

SCHEDULES: tuple[str, ...] = ("exp", "cosine")
"""Learning-rate decays after the warm-up: exponential (the paper's) or cosine."""
AMP_MODES: tuple[str, ...] = ("none", "bf16")
"""Mixed-precision modes of the training forward pass."""
BEST_NAME = "best.pt"
"""File name of the best weights by selection score (runs with ``holdout``)."""

DEFAULT_HOLDOUT_PAIRS = Path(__file__).with_name("holdout_pairs.txt")
"""The committed selection pairs of the VCIP 2020 training split (``holdout_pairs="default"``):
the 12 pairs that ``holdout=12, seed=1`` holds out, so that the weights lineage trained with
those settings never saw them."""

PROCESS_GROUP_TIMEOUT = timedelta(hours=2)
"""Collective timeout of a process group initialised by :func:`train`: the other processes wait
in a collective while rank 0 validates (NIR-GNN on full 256x256 images takes about two minutes
per image on one CPU thread, far less on a GPU)."""

_CHECKPOINT_FORMAT = "pyg_lecc.training/1"
_FORCE_INTERRUPT_AFTER_S = 1.0


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Settings of a training run (defaults: the paper's recipe for NIR-GNN).

    Attributes:
        data: Data set folder, any layout accepted by :func:`pyg_lecc.data.find_pairs`; the
            ``"train"`` split is used for training.
        out: Output folder (created if needed) for the log, checkpoint and weights.
        model: ``"nir-gnn"`` or ``"cnn"`` (the CNN baseline of the paper).
        features: Width ``F`` of NIR-GNN (a multiple of 3). For ``"cnn"``, the NIR-GNN width
            whose parameter count the CNN matches
            (``cnn_baseline(match_features=features, ...)``).
        rank: Rank of the lightweight edge-conditioned convolution.
        k: Non-local neighbours per pixel.
        layers_per_block: Graph layers per HPF/LPF block.
        iters: Number of training iterations (optimizer steps).
        batch_size: Patches per batch and per process: with ``N`` processes (``torchrun``),
            an iteration averages the gradients of ``N * batch_size`` patches.
        patch: Side of the square training patches.
        lr: Initial learning rate.
        lr_end: Learning rate reached at the end (exponential decay; ``lr_end == lr`` keeps
            it constant).
        seed: Seeds the model initialisation and the patch sampler (process ``r`` of a
            distributed run samples with ``seed + r``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``... Under ``torchrun`` a CUDA
            device index is replaced by ``LOCAL_RANK``.
        resume: Continue the run whose ``checkpoint.pt`` is in ``out``.
        val_every: Validate every this many iterations (and always at the end).
        ckpt_every: Write a checkpoint and a ``"train"`` log line every this many iterations
            (and at the end).
        val_split: Split of ``data`` to validate on (``"validation"``, ``"val"`` or
            ``"train"``). If it does not exist, validation is skipped with a warning.
        threads: ``torch.set_num_threads(threads)`` for the process; ``None`` uses every
            core the process may run on.
        progress: Show a progress bar (rank 0 only).
        schedule: Decay after the warm-up, ``"exp"`` (the paper's, from ``lr`` to ``lr_end``)
            or ``"cosine"`` (half a cosine from ``lr`` to ``lr_end``).
        warmup: Iterations of linear warm-up from ``lr / warmup`` to ``lr`` (0: none).
        time_budget: Seconds of training after which this session stops cleanly (checkpoint,
            final validation and weights, a ``"stop"`` log line); the decay then follows
            whichever of iterations and time is further along, so a budgeted run still ends
            at ``lr_end``. ``None``: no limit.
        init_from: Weights file (:func:`pyg_lecc.models.save_weights`) to start a new run
            from, with a fresh optimiser; its architecture must match this configuration.
        amp: ``"bf16"`` runs the training forward pass under bfloat16 autocast (parameters,
            optimiser and validation stay float32), ``"none"`` does not.
        ema: Decay of an exponential moving average of the weights (e.g. ``0.999``), used for
            validation, selection and the exported weights; ``None``: no average. Before each
            validation the BatchNorm statistics of the averaged weights are recomputed on
            ``bn_batches`` fixed training batches (averaged statistics do not belong to
            averaged weights: NIR-GNN's edge attention makes it very sensitive to that).
        bn_batches: Training batches of that recomputation (with ``ema``).
        holdout: Training pairs set aside (chosen by ``seed``) to select the exported weights
            by PSNR at every validation; 0 exports the last weights. The ``val_split`` pairs
            are only reported, never used to select.
        holdout_pairs: Instead of ``holdout``, the training pairs to set aside by name: a
            file of pair names (:func:`read_holdout_pairs`), or ``"default"`` for
            :data:`DEFAULT_HOLDOUT_PAIRS`. The same pairs whatever the seed, so that runs
            that continue each other select on pairs none of them trained on.
        ema_bias_correction: Correct the bias of the moving average towards its first
            value, as Adam corrects its moments: the average of ``t`` updates weighs them
            ``(1 - ema) * ema ** (t - i) / (1 - ema ** t)``. Early on it is close to the plain
            mean of the weights so far, and ``ema`` is reached after about ``1 / (1 - ema)``
            updates. Without it, the starting weights keep ``ema ** t`` of the average (55 %
            after 600 updates at 0.999), which a short continuation of trained weights
            mostly validates instead of its own progress.

    Raises:
        ValueError: A value is out of range, the model is unknown, or the device is not
            available.
    """

    data: Path
    out: Path
    model: str = "nir-gnn"
    features: int = 99
    rank: int = 11
    k: int = 8
    layers_per_block: int = 3
    iters: int = 300_000
    batch_size: int = 10
    patch: int = 42
    lr: float = 1e-4
    lr_end: float = 1e-5
    seed: int = 0
    device: str = "cpu"
    resume: bool = False
    val_every: int = 1000
    ckpt_every: int = 200
    val_split: str = "validation"
    threads: int | None = None
    progress: bool = True
    schedule: str = "exp"
    warmup: int = 0
    time_budget: float | None = None
    init_from: Path | None = None
    amp: str = "none"
    ema: float | None = None
    holdout: int = 0
    bn_batches: int = 16
    holdout_pairs: str | None = None
    ema_bias_correction: bool = False

    def __post_init__(self) -> None:
        self.data = Path(self.data)
        self.out = Path(self.out)
        if self.init_from is not None:
            self.init_from = Path(self.init_from)
        if self.holdout_pairs is not None:
            self.holdout_pairs = str(self.holdout_pairs)
        self.validate()

    def validate(self) -> None:
        """Check every value; called on construction and again by :func:`train`.

        Raises:
            ValueError: The first invalid value, with the expected range.
        """
        if self.model not in list_models():
            raise ValueError(f"unknown model {self.model!r}; available: {list_models()}")
        _check_int("features", self.features, 3)
        if self.features % 3:
            raise ValueError(f"features must be a multiple of 3, got {self.features}")
        for name, low in (
            ("rank", 1),
            ("k", 1),
            ("layers_per_block", 1),
            ("iters", 1),
            ("batch_size", 1),
            ("patch", 1),
            ("seed", 0),
            ("val_every", 1),
            ("ckpt_every", 1),
            ("warmup", 0),
            ("holdout", 0),
            ("bn_batches", 1),
        ):
            _check_int(name, getattr(self, name), low)
        if self.threads is not None:
            _check_int("threads", self.threads, 1)
        if self.model == "nir-gnn" and self.patch * self.patch - 9 < self.k:
            raise ValueError(
                f"patch {self.patch} is too small for k={self.k} neighbours: a pixel of a "
                f"{self.patch}x{self.patch} patch has only {max(self.patch**2 - 9, 0)} "
                "non-local candidates"
            )
        for name in ("lr", "lr_end"):
            value = getattr(self, name)
            if not _is_number(value):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not _positive_finite(value):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if self.lr_end > self.lr:
            raise ValueError(
                f"lr_end ({self.lr_end:g}) must not exceed lr ({self.lr:g}): the schedule "
                "decays the learning rate"
            )
        if self.val_split not in ("validation", "val", "train"):
            raise ValueError(
                f"val_split must be 'validation', 'val' or 'train', got {self.val_split!r}"
            )
        if self.warmup >= self.iters:
            raise ValueError(f"warmup ({self.warmup}) must be below iters ({self.iters})")
        for name, choices in (("schedule", SCHEDULES), ("amp", AMP_MODES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        if self.time_budget is not None and not _positive_finite(self.time_budget):
            raise ValueError(
                f"time_budget must be a positive number of seconds, got {self.time_budget!r}"
            )
        if self.ema is not None and not (_is_number(self.ema) and 0.0 < self.ema < 1.0):
            raise ValueError(f"ema must be a decay strictly between 0 and 1, got {self.ema!r}")
        if self.holdout_pairs is not None and self.holdout:
            raise ValueError(
                "holdout sets pairs aside by seed, holdout_pairs by name: use one or the other"
            )
        if self.ema_bias_correction and self.ema is None:
            raise ValueError("ema_bias_correction corrects the ema average: set ema too")
        if self.init_from is not None and self.resume:
            raise ValueError(
                "init_from starts a new run from a weights file; resume continues a run from "
                "its checkpoint: use one or the other"
            )
        for name in ("resume", "progress", "ema_bias_correction"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        _check_device(self.device)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a plain dict (paths as ``str``), as stored in checkpoints."""
        out = asdict(self)
        out["data"], out["out"] = str(self.data), str(self.out)
        if self.init_from is not None:
            out["init_from"] = str(self.init_from)
        return out


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _positive_finite(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value) and value > 0


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be at least {low}, got {value}")


def _check_device(device: str) -> None:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ValueError(f"invalid device {device!r}: {err}") from err
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} is not available: CUDA is not available")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {device!r} is not available: {count} CUDA device(s)")
        return
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {device!r} is not available: MPS is not available")
        return
    raise ValueError(f"unsupported device {device!r}; use 'cpu', 'cuda[:N]' or 'mps'")


def lr_at(t: int, config: TrainConfig, time_fraction: float = 0.0) -> float:
    """Learning rate of iteration ``t`` (0-based).

    During the warm-up (``t < warmup``) it rises linearly, ``lr * (t + 1) / warmup``. After
    it, with progress ``p = (t - warmup) / (iters - warmup)`` (or ``time_fraction``, the
    fraction of a time budget spent, if that is further along, capped at 1), the ``"exp"``
    schedule gives ``lr * (lr_end / lr) ** p`` and ``"cosine"`` gives
    ``lr_end + (lr - lr_end) * (1 + cos(pi * p)) / 2``.

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


def read_holdout_pairs(spec: str | os.PathLike[str]) -> list[str]:
    """The training-pair names of a selection-pairs file (``holdout_pairs``).

    One name per line (the pair names of :func:`pyg_lecc.data.find_pairs`); ``#`` starts a
    comment, blank lines are skipped.

    Args:
        spec: The file, or ``"default"`` for :data:`DEFAULT_HOLDOUT_PAIRS`.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: It names no pair, or a pair twice.

    Example:
        >>> from pyg_lecc.training import read_holdout_pairs
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


def limit_numba_threads(threads: int) -> None:
    """Sizes the thread pool of Numba (the CPU kernels) to ``threads`` for this process.

    Numba starts ``NUMBA_NUM_THREADS`` workers (one per core by default) at its first
    parallel kernel, whatever :func:`numba.set_num_threads` allows later, and with its OpenMP
    layer an idle worker spins at a barrier: with one training thread on two cores it took
    about 90 % of the second core. The variable is read when Numba is imported, and importing
    ``torch_geometric`` imports Numba, so a process that has imported this package lowers the
    value Numba read instead, which works until the pool starts. No effect once it runs.

    Args:
        threads: The pool size, at least 1 (at most Numba's own limit is used).
    """
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    if parallel is None:
        os.environ["NUMBA_NUM_THREADS"] = str(threads)
        return
    if not parallel._is_initialized:
        numba_config = sys.modules["numba"].config
        threads = min(threads, numba_config.NUMBA_NUM_THREADS)
        numba_config.NUMBA_NUM_THREADS = parallel.NUM_THREADS = threads


# --------------------------------------------------------------------------------------------
# Distributed setup
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _tmp_path(path: Path) -> Path:
    # Same folder (same file system, so os.replace is atomic); hidden, unique name.
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:  # makes the rename durable on POSIX; not possible on every platform
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` to a temporary file in the same folder, fsync, then ``os.replace``:
    readers (and a crash) see the old file or the complete new one, never a partial one."""
    tmp = _tmp_path(path)
    try:
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _atomic_save(obj: Any, path: Path) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    _write_atomically(path, write)


def _atomic_save_weights(model: NIRGNN, name: str, path: Path) -> None:
    _write_atomically(path, lambda tmp: save_weights(model, name, tmp))


def _atomic_copy(source: Path, path: Path) -> None:
    _write_atomically(path, lambda tmp: shutil.copyfile(source, tmp))


def _truncate_log(path: Path, iteration: int) -> None:
    """Drops log lines after ``iteration`` (and torn lines): they belong to iterations the
    resumed run repeats."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("iteration", math.inf) <= iteration:
            kept.append(line)
    tmp = _tmp_path(path)
    try:
        tmp.write_text("".join(f"{line}\n" for line in kept))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_fresh_out(out: Path) -> None:
    if (out / CHECKPOINT_NAME).exists():
        raise FileExistsError(
            f"{out / CHECKPOINT_NAME} already exists: pass --resume (resume=True) to continue "
            "that run, or choose another --out"
        )
    leftovers = [n for n in (WEIGHTS_NAME, LOG_NAME, BEST_NAME) if (out / n).exists()]
    if leftovers:
        raise FileExistsError(
            f"{out} already holds {', '.join(leftovers)} of another run (and no checkpoint to "
            "resume): choose another --out, or move those files away"
        )


def _discard_unresumable(out: Path) -> None:
    """After a fresh run failed: without a checkpoint nothing can resume, so the files of this
    session go and the same command can start the run again (a checkpoint keeps them all)."""
    if (out / CHECKPOINT_NAME).exists():
        return
    removed = [name for name in (LOG_NAME, BEST_NAME, WEIGHTS_NAME) if (out / name).exists()]
    for name in removed:
        (out / name).unlink()
    if removed:
        warnings.warn(
            f"the run stopped before its first checkpoint: removed {', '.join(removed)} from "
            f"{out}, so that the same command starts it again",
            stacklevel=4,
        )


def _load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"cannot resume: no checkpoint at {path} (start without --resume to begin a run)"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot load checkpoint {path}: {err}") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a pyg_lecc training checkpoint ({_CHECKPOINT_FORMAT})")
    return ckpt


def _check_resume_config(stored: dict[str, Any], config: TrainConfig, path: Path) -> None:
    current = config.to_dict()
    # Checkpoints older than a field hold that field's default.
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    diffs = []
    for name in RESUME_FIELDS:
        old, new = stored.get(name, defaults[name]), current[name]
        if name in ("data", "holdout_pairs") and old is not None and new is not None:
            as_path = _holdout_pairs_path if name == "holdout_pairs" else Path
            same = as_path(old).resolve() == as_path(new).resolve()
        else:
            same = old == new
        if not same:
            diffs.append(f"{name} (checkpoint: {old!r}, now: {new!r})")
    if diffs:
        hint = ""
        if any(d.startswith("iters ") for d in diffs):
            hint = (
                " (a run's schedule is fixed by iters: to train its weights further, start a "
                f"new run with init_from={path.parent / WEIGHTS_NAME}, --init-from on the "
                "command line)"
            )
        raise ValueError(
            f"cannot resume from {path}: the configuration differs in " + "; ".join(diffs) + hint
        )


# --------------------------------------------------------------------------------------------
# Model, validation, interrupts
# --------------------------------------------------------------------------------------------


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


_EvalData = list[tuple[str, Tensor, np.ndarray]]


def _load_validation(config: TrainConfig) -> _EvalData | None:
    try:
        pairs = find_pairs(config.data, config.val_split)
    except PairingError as err:
        if "folder not found" not in str(err):
            raise  # the split exists but is broken: do not hide it
        warnings.warn(
            f"no {config.val_split!r} split in {config.data} ({err}): validation skipped",
            stacklevel=3,
        )
        return None
    return [_eval_item(pair.name, *load_pair(pair)) for pair in pairs]


def _eval_item(name: str, nir: np.ndarray, rgb: np.ndarray) -> tuple[str, Tensor, np.ndarray]:
    return name, torch.from_numpy(nir)[None, None], rgb


def _holdout_indices(train_set: PairedImageDataset, config: TrainConfig) -> list[int]:
    """Indices of the training pairs set aside for selection, by name or by seed."""
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
    """Sets training pairs aside for model selection (``holdout`` or ``holdout_pairs``)."""
    if not config.holdout and config.holdout_pairs is None:
        return train_set, None
    held = _holdout_indices(train_set, config)
    kept = sorted(set(range(len(train_set))) - set(held))
    selection = []
    for i in held:
        nir, rgb, name = train_set[i]
        selection.append(_eval_item(name, nir[0].numpy(), rgb.permute(1, 2, 0).numpy()))
    return train_set.subset(kept), selection


def _bn_batches(train_set: PairedImageDataset, config: TrainConfig) -> list[Tensor]:
    """The fixed NIR batches on which BatchNorm statistics of averaged weights are recomputed
    (their own generator: the training sampler's random stream is untouched)."""
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


class _DeferredSigint:
    """Turns a first SIGINT (Ctrl-C) into a stop request honoured between iterations, so the
    checkpoint written on interruption is never torn. A second SIGINT more than a second
    later raises :class:`KeyboardInterrupt` at once (the launcher's copy of the same Ctrl-C,
    arriving together with it, does not). With ``announce``, the first one says on stderr
    what it waits for: ``busy`` names the work in progress (a validation takes minutes)."""

    def __init__(self, announce: bool = True) -> None:
        self.announce = announce
        self.busy: str | None = None
        self.requested = False
        self._first = 0.0
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> _DeferredSigint:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if not self.requested:
            self.requested, self._first = True, now
            if self.announce:
                what = f"the {self.busy} in progress" if self.busy else "this iteration"
                # os.write: print() could re-enter the stream the signal interrupted.
                os.write(
                    2,
                    f"\ninterrupt: training stops after {what} and writes a checkpoint "
                    "(Ctrl-C again to stop at once)\n".encode(),
                )
        elif now - self._first > _FORCE_INTERRUPT_AFTER_S:
            raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            previous = self._previous if self._previous is not None else signal.SIG_DFL
            signal.signal(signal.SIGINT, previous)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def train(config: TrainConfig) -> dict[str, Any]:
    """Trains a model with the paper's recipe (see the module docstring).

    Launched with ``torchrun`` (``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set, world size
    above 1), it trains with :class:`~torch.nn.parallel.DistributedDataParallel`: backend
    ``gloo`` on CPU, ``nccl`` on CUDA (one GPU per process, ``cuda:LOCAL_RANK``). Every process
    draws its own ``batch_size`` patches (sampler seeded with ``seed + rank``), so the global
    batch is ``world_size * batch_size`` patches. BatchNorm stays plain (statistics of each
    process's own batch; DDP copies rank 0's running statistics to all processes at every
    forward pass), as in single-process training with a per-process batch. Only rank 0
    validates and writes the log, checkpoints and weights; checkpoints hold the sampler and
    RNG states of every rank, so a resume is exact for the same world size (another world size
    is refused). A process group initialised by the caller is used and left alone; one
    initialised here is destroyed at the end, and ``torch.distributed`` cannot initialise a
    new one in the same ``torchrun`` processes (stale rendezvous keys): to call :func:`train`
    several times in one launch, initialise the process group yourself.

    Ctrl-C stops training after the current iteration, writes a checkpoint of it and
    re-raises :class:`KeyboardInterrupt` (pressing it again more than a second later
    interrupts at once; then a checkpoint is written only if no iteration was in progress
    and the run is single-process, otherwise the last regular checkpoint stays).

    Args:
        config: The run settings.

    Returns:
        A summary: ``iterations`` (the last iteration done), ``iterations_this_run``,
        ``stopped`` (``"time_budget"`` if the budget ended the session early, else
        ``None``), ``wall_time`` (seconds of training over all sessions),
        ``seconds_per_iteration`` (mean time of a training step in this session, ``None`` if
        none was done), ``val`` (validation metrics of the exported weights, ``None`` without
        validation or on ranks other than 0), ``selected_iteration`` (the iteration whose
        weights were exported with ``holdout``, else ``None``),
        ``world_size`` and the ``checkpoint``, ``weights`` and ``log`` paths (``str``).

    Raises:
        ValueError: Invalid configuration, or a checkpoint whose configuration differs in one
            of :data:`RESUME_FIELDS` (the message names them).
        FileExistsError: Not resuming, but ``out`` already holds a run.
        FileNotFoundError: Resuming, but ``out`` has no checkpoint.
        pyg_lecc.data.PairingError: The training data cannot be found or paired.
        KeyboardInterrupt: Interrupted (after writing the checkpoint).

    Example:
        >>> cfg = TrainConfig(data="data", out="runs/tiny", model="cnn", features=6, rank=2,
        ...                   k=4, layers_per_block=1, iters=30, patch=12, batch_size=2,
        ...                   progress=False)  # doctest: +SKIP
        >>> train(cfg)["iterations"]  # doctest: +SKIP
        30
    """
    config.validate()
    threads, precision = torch.get_num_threads(), torch.get_float32_matmul_precision()
    torch.set_num_threads(config.threads or len(os.sched_getaffinity(0)))
    info, device = _setup_distributed(config)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls and convolutions
    try:
        if config.resume:
            return _train(config, info, device)
        _check_fresh_out(Path(config.out))
        try:
            return _train(config, info, device)
        except BaseException:
            if info.is_main:
                _discard_unresumable(Path(config.out))
            raise
    finally:
        torch.set_num_threads(threads)
        torch.set_float32_matmul_precision(precision)
        if info.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(config: TrainConfig, info: _Dist, device: torch.device) -> dict[str, Any]:
    out = Path(config.out)
    ckpt_path, weights_path, log_path = out / CHECKPOINT_NAME, out / WEIGHTS_NAME, out / LOG_NAME
    best_path = out / BEST_NAME
    ckpt: dict[str, Any] | None = None
    if config.resume:
        ckpt = _load_checkpoint(ckpt_path)
        _check_resume_config(ckpt["config"], config, ckpt_path)
        if ckpt["world_size"] != info.world_size:
            raise ValueError(
                f"cannot resume from {ckpt_path}: it was written by {ckpt['world_size']} "
                f"process(es), this run has {info.world_size}"
            )

    train_set, select_data = _split_holdout(PairedImageDataset(config.data, "train"), config)
    val_data = _load_validation(config) if info.is_main else None

    torch.manual_seed(config.seed)
    net = _build_model(config).to(device)
    net.train()
    ema = None
    if config.ema is not None:
        ema = AveragedModel(
            net,
            multi_avg_fn=_ema_update(config.ema, config.ema_bias_correction),
            use_buffers=True,
        )
    judged = net if ema is None else ema.module  # validated, selected and exported
    bn_batches = _bn_batches(train_set, config) if ema is not None and info.is_main else []
    sampler = RandomPatchSampler(
        train_set,
        patch_size=config.patch,
        batch_size=config.batch_size,
        generator=torch.Generator().manual_seed(config.seed + info.rank),
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)

    # Loss sums of this process since the last "train" and "val" log lines.
    acc = {"train_sum": 0.0, "train_count": 0, "val_sum": 0.0, "val_count": 0}
    start_iter, elapsed_before, last_val, best = 0, 0.0, None, None
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        best = ckpt.get("best")
        mine = ckpt["rank_states"][info.rank]
        sampler.set_state(mine["sampler"])
        torch.set_rng_state(mine["torch_rng"])
        if device.type == "cuda" and mine.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(mine["cuda_rng"], device)
        acc.update(mine["loss"])
        start_iter, elapsed_before = int(ckpt["iteration"]), float(ckpt["elapsed"])
        last_val = ckpt.get("last_val")
        del ckpt
        if info.is_main:
            _truncate_log(log_path, start_iter)
    elif info.is_main:
        out.mkdir(parents=True, exist_ok=True)

    model: nn.Module = net
    if info.enabled:
        model = DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )

    state = {"iteration": start_iter, "last_val": last_val, "best": best}
    # Absolute paths: a resume from another working directory compares the same folders.
    stored_config = {
        **config.to_dict(),
        "data": str(Path(config.data).resolve()),
        "out": str(out.resolve()),
    }
    if config.holdout_pairs not in (None, "default"):
        stored_config["holdout_pairs"] = str(Path(config.holdout_pairs).resolve())
    session_start = time.monotonic()

    def elapsed() -> float:
        return elapsed_before + time.monotonic() - session_start

    def write_checkpoint() -> None:
        mine = {
            "sampler": sampler.get_state().clone(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "loss": dict(acc),
        }
        rank_states = [mine]
        if info.enabled:
            rank_states = [None] * info.world_size
            dist.all_gather_object(rank_states, mine)
        if info.is_main:
            payload = {
                "format": _CHECKPOINT_FORMAT,
                "iteration": state["iteration"],
                "model": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "config": stored_config,
                "model_name": config.model,
                "world_size": info.world_size,
                "elapsed": elapsed(),
                "last_val": state["last_val"],
                "ema": None if ema is None else ema.state_dict(),
                "best": state["best"],
                "sampler_state": rank_states[0]["sampler"],
                "rank_states": rank_states,
            }
            _atomic_save(payload, ckpt_path)

    def reduced_mean(prefix: str) -> float | None:
        sums = [acc[f"{prefix}_sum"], float(acc[f"{prefix}_count"])]
        if info.enabled:
            t = torch.tensor(sums, dtype=torch.float64, device=device)
            dist.all_reduce(t)
            sums = t.tolist()
        acc[f"{prefix}_sum"], acc[f"{prefix}_count"] = 0.0, 0
        return sums[0] / sums[1] if sums[1] else None

    def log(entry: dict[str, Any]) -> None:
        with open(log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def time_fraction() -> float:
        if config.time_budget is None:
            return 0.0
        return (time.monotonic() - session_start) / config.time_budget

    def stop_and_clock(interrupted: bool) -> tuple[str | None, float]:
        # One collective per iteration: every process stops together and uses rank 0's
        # clock for the time-driven schedule (the same learning rate everywhere).
        fraction = time_fraction()
        code = 2.0 if interrupted else 1.0 if fraction >= 1.0 else 0.0
        if info.enabled:
            t = torch.tensor([code, fraction if info.is_main else 0.0], device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            code, fraction = t.tolist()
        return {2.0: "interrupt", 1.0: "time_budget"}.get(code), fraction

    sigint = _DeferredSigint(announce=info.is_main)

    def evaluate(it: int, lr: float, train_loss: float | None) -> None:
        sigint.busy = "validation"  # a Ctrl-C now waits for it: say so
        try:
            _evaluate(it, lr, train_loss)
        finally:
            sigint.busy = None

    def _evaluate(it: int, lr: float, train_loss: float | None) -> None:
        if bn_batches:
            update_bn(bn_batches, judged, device)
        entry = {"iteration": it, "time": elapsed(), "train_loss": train_loss, "lr": lr}
        selection = None
        if select_data is not None:
            selection = _validate(judged, select_data, device)
            log({"kind": "select", **entry, "timestamp": time.time(), **selection})
        metrics = None
        if val_data is not None:
            metrics = _validate(judged, val_data, device)
            state["last_val"] = metrics
            log({"kind": "val", **entry, "timestamp": time.time(), **metrics})
        best = state["best"]
        if selection is not None and (best is None or selection["psnr"] > best["psnr"]):
            state["best"] = {"iteration": it, "psnr": selection["psnr"], "val": metrics}
            _atomic_save_weights(judged, config.model, best_path)

    def end_of_iteration(it: int, lr: float, train_line: bool, val: bool) -> None:
        if train_line:
            mean = reduced_mean("train")
            if info.is_main:
                entry = {"kind": "train", "iteration": it, "time": elapsed()}
                log({**entry, "loss": mean, "lr": lr, "timestamp": time.time()})
        if val:
            mean = reduced_mean("val")
            if info.is_main:
                evaluate(it, lr, mean)
        if train_line:
            write_checkpoint()

    step_time, steps, lr = 0.0, 0, lr_at(start_iter, config)
    in_step = stopped = False
    stop_reason = None
    bar = tqdm(
        total=config.iters,
        initial=start_iter,
        desc=f"train {config.model}",
        unit="it",
        dynamic_ncols=True,
        disable=not (config.progress and info.is_main),
    )
    try:
        with sigint:
            while state["iteration"] < config.iters:
                stop_reason, fraction = stop_and_clock(sigint.requested)
                if stop_reason == "interrupt":
                    write_checkpoint()
                    if info.enabled:
                        dist.barrier()  # rank 0 has written it before any process exits
                    stopped = True
                    raise KeyboardInterrupt
                if stop_reason == "time_budget":
                    break
                in_step = True
                t0 = time.perf_counter()
                it = state["iteration"]
                nir, rgb = sampler.sample()
                nir, rgb = nir.to(device), rgb.to(device)
                lr = lr_at(it, config, fraction)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, torch.bfloat16, enabled=config.amp == "bf16"):
                    loss = F.mse_loss(model(nir).float(), rgb)
                loss.backward()
                optimizer.step()
                if ema is not None:
                    ema.update_parameters(net)
                loss_value = loss.item()
                for prefix in ("train", "val"):
                    acc[f"{prefix}_sum"] += loss_value
                    acc[f"{prefix}_count"] += 1
                state["iteration"] = it = it + 1
                in_step = False
                step_time += time.perf_counter() - t0
                steps += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4g}", refresh=False)

                last = it == config.iters
                end_of_iteration(
                    it, lr, it % config.ckpt_every == 0 or last, it % config.val_every == 0 or last
                )
            if stop_reason == "time_budget":
                it = state["iteration"]
                if steps:  # finish what the regular intervals did not cover at this iteration
                    ckpt_missing, val_missing = it % config.ckpt_every, it % config.val_every
                    end_of_iteration(it, lr, ckpt_missing != 0, val_missing != 0)
                    if val_missing and not ckpt_missing:
                        write_checkpoint()  # it holds the final validation too
                elif not config.resume:
                    write_checkpoint()  # spent before the first iteration: still resumable
                if info.is_main:
                    entry = {"kind": "stop", "reason": "time_budget", "iteration": it}
                    log(
                        {
                            **entry,
                            "iters": config.iters,
                            "time": elapsed(),
                            "timestamp": time.time(),
                        }
                    )
    except KeyboardInterrupt:
        if stopped:
            raise
        if in_step or info.enabled:
            # A torn iteration, or ranks that may not all reach a collective checkpoint.
            if info.is_main:
                warnings.warn(
                    f"interrupted abruptly: {ckpt_path} keeps the last regular checkpoint",
                    stacklevel=2,
                )
        else:  # between iterations (e.g. in validation): the state is consistent
            write_checkpoint()
        raise
    finally:
        bar.close()

    if info.is_main:
        if state["best"] is not None:
            _atomic_copy(best_path, weights_path)
        else:
            _atomic_save_weights(judged, config.model, weights_path)
    if info.enabled:
        dist.barrier()
    selected = state["best"]
    return {
        "iterations": state["iteration"],
        "iterations_this_run": steps,
        "stopped": stop_reason,
        "wall_time": elapsed() if steps else elapsed_before,
        "seconds_per_iteration": step_time / steps if steps else None,
        "val": (state["last_val"] if selected is None else selected["val"])
        if info.is_main
        else None,
        "selected_iteration": None if selected is None else selected["iteration"],
        "world_size": info.world_size,
        "checkpoint": str(ckpt_path),
        "weights": str(weights_path),
        "log": str(log_path),
    }
