"""Training of NIR-GNN and its CNN baseline with the recipe of the paper.

The recipe (Valsesia, Fracastoro, Magli, VCIP 2020): Adam, mean squared error only, random
``42x42`` training patches with flips and 90-degree rotations, batches of 10, and a learning
rate decayed exponentially from ``1e-4`` to ``1e-5`` over the whole run,
``lr_t = lr * (lr_end / lr) ** (t / iters)`` at iteration ``t = 0 .. iters - 1``.

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
  (load them with :func:`pyg_lecc.models.get_model`).

Resuming (``resume=True``) continues from ``checkpoint.pt`` and gives exactly the result of an
uninterrupted run with the same seed (bit for bit on CPU; CUDA kernels such as scatter-adds are
not deterministic). Log lines written after the checkpoint by the interrupted session are
dropped, so the log reads as one run.

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
import signal
import threading
import time
import uuid
import warnings
from dataclasses import asdict, dataclass
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
from tqdm.auto import tqdm

from pyg_lecc.data import (
    PairedImageDataset,
    PairingError,
    RandomPatchSampler,
    find_pairs,
    load_pair,
)
from pyg_lecc.metrics import evaluate_pair, summarize
from pyg_lecc.models import NIRGNN, cnn_baseline, list_models, nir_gnn, save_weights

__all__ = [
    "CHECKPOINT_NAME",
    "LOG_NAME",
    "PROCESS_GROUP_TIMEOUT",
    "RESUME_FIELDS",
    "VAL_SEARCH_WINDOW",
    "WEIGHTS_NAME",
    "TrainConfig",
    "lr_at",
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
)
"""Fields of :class:`TrainConfig` (architecture, data, schedule) that must be equal to resume.
The others (device, output and logging intervals, threads, progress bar) may change."""

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
        threads: ``torch.set_num_threads(threads)`` for the process, if given.
        progress: Show a progress bar (rank 0 only).

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

    def __post_init__(self) -> None:
        self.data = Path(self.data)
        self.out = Path(self.out)
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
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not (math.isfinite(value) and value > 0):
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
        for name in ("resume", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        _check_device(self.device)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a plain dict (paths as ``str``), as stored in checkpoints."""
        out = asdict(self)
        out["data"], out["out"] = str(self.data), str(self.out)
        return out


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


def lr_at(t: int, config: TrainConfig) -> float:
    """Learning rate of iteration ``t`` (0-based): ``lr * (lr_end / lr) ** (t / iters)``.

    Example:
        >>> cfg = TrainConfig(data=".", out="run", iters=10, lr=1e-2, lr_end=1e-3)
        >>> round(lr_at(0, cfg), 6), round(lr_at(5, cfg), 6), round(lr_at(10, cfg), 6)
        (0.01, 0.003162, 0.001)
    """
    return config.lr * (config.lr_end / config.lr) ** (t / config.iters)


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


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace``:
    readers (and a crash) see the old file or the complete new one, never a partial one."""
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _atomic_save_weights(model: NIRGNN, name: str, path: Path) -> None:
    tmp = _tmp_path(path)
    try:
        save_weights(model, name, tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


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
    leftovers = [n for n in (WEIGHTS_NAME, LOG_NAME) if (out / n).exists()]
    if leftovers:
        raise FileExistsError(
            f"{out} already holds {', '.join(leftovers)} of another run (and no checkpoint to "
            "resume): choose another --out, or move those files away"
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
    diffs = []
    for name in RESUME_FIELDS:
        old, new = stored.get(name), current[name]
        if name == "data":
            same = old is not None and Path(old).resolve() == Path(new).resolve()
        else:
            same = old == new
        if not same:
            diffs.append(f"{name} (checkpoint: {old!r}, now: {new!r})")
    if diffs:
        raise ValueError(
            f"cannot resume from {path}: the configuration differs in " + "; ".join(diffs)
        )


# --------------------------------------------------------------------------------------------
# Model, validation, interrupts
# --------------------------------------------------------------------------------------------


def _build_model(config: TrainConfig) -> NIRGNN:
    arch = {"rank": config.rank, "k": config.k, "layers_per_block": config.layers_per_block}
    if config.model == "cnn":
        return cnn_baseline(match_features=config.features, **arch)
    return nir_gnn(features=config.features, **arch)


def _load_validation(config: TrainConfig) -> list[tuple[str, Tensor, np.ndarray]] | None:
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
    data = []
    for pair in pairs:
        nir, rgb = load_pair(pair)
        data.append((pair.name, torch.from_numpy(nir)[None, None], rgb))
    return data


@torch.no_grad()
def _validate(
    net: NIRGNN, data: list[tuple[str, Tensor, np.ndarray]], device: torch.device
) -> dict[str, float]:
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
    arriving together with it, does not)."""

    def __init__(self) -> None:
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
        ``wall_time`` (seconds of training over all sessions), ``seconds_per_iteration``
        (mean time of a training step in this session, ``None`` if none was done), ``val``
        (final validation metrics, ``None`` without validation or on ranks other than 0),
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
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    info, device = _setup_distributed(config)
    try:
        return _train(config, info, device)
    finally:
        if info.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(config: TrainConfig, info: _Dist, device: torch.device) -> dict[str, Any]:
    out = Path(config.out)
    ckpt_path, weights_path, log_path = out / CHECKPOINT_NAME, out / WEIGHTS_NAME, out / LOG_NAME
    ckpt: dict[str, Any] | None = None
    if config.resume:
        ckpt = _load_checkpoint(ckpt_path)
        _check_resume_config(ckpt["config"], config, ckpt_path)
        if ckpt["world_size"] != info.world_size:
            raise ValueError(
                f"cannot resume from {ckpt_path}: it was written by {ckpt['world_size']} "
                f"process(es), this run has {info.world_size}"
            )
    else:
        _check_fresh_out(out)

    train_set = PairedImageDataset(config.data, "train")
    val_data = _load_validation(config) if info.is_main else None

    torch.manual_seed(config.seed)
    net = _build_model(config).to(device)
    net.train()
    sampler = RandomPatchSampler(
        train_set,
        patch_size=config.patch,
        batch_size=config.batch_size,
        generator=torch.Generator().manual_seed(config.seed + info.rank),
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)

    # Loss sums of this process since the last "train" and "val" log lines.
    acc = {"train_sum": 0.0, "train_count": 0, "val_sum": 0.0, "val_count": 0}
    start_iter, elapsed_before, last_val = 0, 0.0, None
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
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

    state = {"iteration": start_iter, "last_val": last_val}
    # Absolute paths: a resume from another working directory compares the same folders.
    stored_config = {
        **config.to_dict(),
        "data": str(Path(config.data).resolve()),
        "out": str(out.resolve()),
    }
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

    def stop_requested(local: bool) -> bool:
        if not info.enabled:
            return local
        flag = torch.tensor([float(local)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    step_time, steps = 0.0, 0
    in_step = stopped = False
    bar = tqdm(
        total=config.iters,
        initial=start_iter,
        desc=f"train {config.model}",
        unit="it",
        dynamic_ncols=True,
        disable=not (config.progress and info.is_main),
    )
    try:
        with _DeferredSigint() as sigint:
            while state["iteration"] < config.iters:
                if stop_requested(sigint.requested):
                    write_checkpoint()
                    if info.enabled:
                        dist.barrier()  # rank 0 has written it before any process exits
                    stopped = True
                    raise KeyboardInterrupt
                in_step = True
                t0 = time.perf_counter()
                it = state["iteration"]
                nir, rgb = sampler.sample()
                nir, rgb = nir.to(device), rgb.to(device)
                lr = lr_at(it, config)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                loss = F.mse_loss(model(nir), rgb)
                loss.backward()
                optimizer.step()
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
                if it % config.ckpt_every == 0 or last:
                    mean = reduced_mean("train")
                    if info.is_main:
                        entry = {"kind": "train", "iteration": it, "time": elapsed()}
                        log({**entry, "loss": mean, "lr": lr, "timestamp": time.time()})
                if it % config.val_every == 0 or last:
                    mean = reduced_mean("val")
                    if info.is_main and val_data is not None:
                        metrics = _validate(net, val_data, device)
                        state["last_val"] = metrics
                        entry = {"kind": "val", "iteration": it, "time": elapsed()}
                        entry.update(train_loss=mean, lr=lr, timestamp=time.time())
                        log({**entry, **metrics})
                if it % config.ckpt_every == 0 or last:
                    write_checkpoint()
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
        _atomic_save_weights(net, config.model, weights_path)
    if info.enabled:
        dist.barrier()
    return {
        "iterations": state["iteration"],
        "iterations_this_run": steps,
        "wall_time": elapsed() if steps else elapsed_before,
        "seconds_per_iteration": step_time / steps if steps else None,
        "val": state["last_val"] if info.is_main else None,
        "world_size": info.world_size,
        "checkpoint": str(ckpt_path),
        "weights": str(weights_path),
        "log": str(log_path),
    }
