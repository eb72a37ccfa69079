"""Settings of a training run: :class:`TrainConfig`, its validation, and the constants of a
run folder and of resuming."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from pyg_lecc.nir.config import NIRGNNConfig
from pyg_lecc.nir.hub import list_models

__all__ = [
    "AMP_MODES",
    "BEST_NAME",
    "CHECKPOINT_NAME",
    "COMPILE_MODES",
    "LEGACY_VALUES",
    "LOG_NAME",
    "RESUME_FIELDS",
    "SCHEDULES",
    "VAL_SEARCH_WINDOW",
    "WEIGHTS_NAME",
    "TrainConfig",
    "stored_settings",
]

CHECKPOINT_NAME = "checkpoint.pt"
"""File name of the training checkpoint in ``config.out``."""
WEIGHTS_NAME = "weights.safetensors"
"""File name of the final weights in ``config.out``."""
LOG_NAME = "log.jsonl"
"""File name of the JSON-lines training log in ``config.out``."""

VAL_SEARCH_WINDOW = 49
"""kNN search window of NIR-GNN on full validation images (training patches are searched
whole, as in the paper; full images use a 49x49 window as :mod:`pyg_lecc.nir.inference` does)."""

RESUME_FIELDS: tuple[str, ...] = (
    "data",
    "model",
    "arch",
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
    "register",
)
"""Fields of :class:`TrainConfig` (architecture, data, schedule) that must be equal to resume.
The others (device, output and logging intervals, threads, progress bar, time budget, mixed
precision) may change."""

LEGACY_VALUES: dict[str, Any] = {"register": False}
"""Values of :data:`RESUME_FIELDS` that a checkpoint written before the field existed ran
with, where they differ from today's default (other missing fields read as the default): runs
before ``register`` trained on the pairs as stored. Applied by :func:`stored_settings`."""

SCHEDULES: tuple[str, ...] = ("exp", "cosine")
"""Learning-rate decays after the warm-up: exponential (the paper's) or cosine."""
AMP_MODES: tuple[str, ...] = ("none", "bf16")
"""Mixed-precision modes of the training forward pass."""
COMPILE_MODES: tuple[str, ...] = ("none", "default", "reduce-overhead")
"""``torch.compile`` modes of the training model (``"none"``: eager; ``"reduce-overhead"``:
with CUDA graphs)."""
BEST_NAME = "best.safetensors"
"""File name of the best weights by selection score (runs with ``holdout``)."""


@dataclass
class TrainConfig:
    """Settings of a training run (defaults: the paper's recipe for NIR-GNN).

    Args:
        data (Path): Data set folder, any layout accepted by :func:`pyg_lecc.nir.data.find_pairs`;
            the ``"train"`` split is used for training.
        out (Path): Output folder (created if needed) for the log, checkpoint and weights.
        model (str, optional): ``"nir-gnn"`` or ``"cnn"`` (the CNN baseline of the paper). (default:
            :obj:`"nir-gnn"`)
        arch (NIRGNNConfig, optional): The architecture of NIR-GNN
            (:class:`~pyg_lecc.nir.config.NIRGNNConfig`, its ``non_local`` left :obj:`True`). For
            ``"cnn"``, the NIR-GNN whose parameter count the CNN matches
            (``cnn_baseline(match_features=arch.features, ...)``). (default: :obj:`NIRGNNConfig()`)
        iters (int, optional): Number of training iterations (optimizer steps). (default:
            :obj:`300000`)
        batch_size (int, optional): Patches per batch and per process: with ``N`` processes
            (``torchrun``), an iteration averages the gradients of ``N * batch_size`` patches.
            (default: :obj:`10`)
        patch (int, optional): Side of the square training patches. (default: :obj:`42`)
        lr (float, optional): Initial learning rate. (default: :obj:`1e-4`)
        lr_end (float, optional): Learning rate reached at the end (exponential decay; ``lr_end ==
            lr`` keeps it constant). (default: :obj:`1e-5`)
        seed (int, optional): Seeds the model initialisation and the patch sampler (process ``r`` of
            a distributed run samples with ``seed + r``). (default: :obj:`0`)
        device (str, optional): ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``... Under ``torchrun``
            a CUDA device index is replaced by ``LOCAL_RANK``. (default: :obj:`"cpu"`)
        resume (bool, optional): Continue the run whose ``checkpoint.pt`` is in ``out``. (default:
            :obj:`False`)
        val_every (int, optional): Validate every this many iterations (and always at the end).
            (default: :obj:`1000`)
        ckpt_every (int, optional): Write a checkpoint and a ``"train"`` log line every this many
            iterations (and at the end). (default: :obj:`200`)
        val_split (str, optional): Split of ``data`` to validate on (``"validation"``, ``"val"`` or
            ``"train"``), or ``"none"``: no split is scored during training (the held-out pairs
            still are), as in continuations, whose ``finish`` scores the validation images once. If
            the split does not exist, validation is skipped with a warning. (default:
            :obj:`"validation"`)
        threads (int, optional): ``torch.set_num_threads(threads)`` for the process; ``None`` uses
            every core the process may run on. (default: :obj:`None`)
        progress (bool, optional): Show a progress bar (rank 0 only). (default: :obj:`True`)
        schedule (str, optional): Decay after the warm-up, ``"exp"`` (the paper's, from ``lr`` to
            ``lr_end``) or ``"cosine"`` (half a cosine from ``lr`` to ``lr_end``). (default:
            :obj:`"exp"`)
        warmup (int, optional): Iterations of linear warm-up from ``lr / warmup`` to ``lr`` (0:
            none). (default: :obj:`0`)
        time_budget (float, optional): Seconds of training after which this session stops cleanly
            (checkpoint, final validation and weights, a ``"stop"`` log line); the decay then
            follows whichever of iterations and time is further along, so a budgeted run still ends
            at ``lr_end``. ``None``: no limit. (default: :obj:`None`)
        init_from (Path, optional): Weights file (:func:`pyg_lecc.nir.hub.save_weights`) to start a
            new run from, with a fresh optimiser; its architecture must match this configuration.
            (default: :obj:`None`)
        amp (str, optional): ``"bf16"`` runs the training forward pass under bfloat16 autocast
            (parameters, optimiser and validation stay float32), ``"none"`` does not. (default:
            :obj:`"none"`)
        ema (float, optional): Decay of an exponential moving average of the weights (e.g.
            ``0.999``), used for validation, selection and the exported weights; ``None``: no
            average. Before each validation the BatchNorm statistics of the averaged weights are
            recomputed on ``bn_batches`` fixed training batches (averaged statistics do not belong
            to averaged weights: NIR-GNN's edge attention makes it very sensitive to that).
            (default: :obj:`None`)
        bn_batches (int, optional): Training batches of that recomputation (with ``ema``). (default:
            :obj:`16`)
        holdout (int, optional): Training pairs set aside (chosen by ``seed``) to select the
            exported weights by PSNR at every validation; 0 exports the last weights. The
            ``val_split`` pairs are only reported, never used to select. (default: :obj:`0`)
        holdout_pairs (str, optional): Instead of ``holdout``, the training pairs to set aside by
            name: a file of pair names (:func:`read_holdout_pairs`), or ``"default"`` for
            :data:`DEFAULT_HOLDOUT_PAIRS`. The same pairs whatever the seed, so that runs that
            continue each other select on pairs none of them trained on. (default: :obj:`None`)
        ema_bias_correction (bool, optional): Correct the bias of the moving average towards its
            first value, as Adam corrects its moments: the average of ``t`` updates weighs them ``(1
            - ema) * ema ** (t - i) / (1 - ema ** t)``. Early on it is close to the plain mean of
            the weights so far, and ``ema`` is reached after about ``1 / (1 - ema)`` updates.
            Without it, the starting weights keep ``ema ** t`` of the average (55 % after 600
            updates at 0.999), which a short continuation of trained weights mostly validates
            instead of its own progress. (default: :obj:`False`)
        compile (str, optional): ``torch.compile`` the training model (forward and backward;
            validation, checkpoints and exported weights use the plain module): ``"none"`` (eager),
            ``"default"`` or ``"reduce-overhead"`` (CUDA graphs). Compilation takes tens of seconds
            at the start of each session. (default: :obj:`"none"`)
        register (bool, optional): Train on pairs shifted into register
            (:mod:`pyg_lecc.nir.registration`): each training pair's RGB image is moved onto its NIR
            image by its estimated sub-pixel shift and both are cropped to the valid overlap; pairs
            whose estimate is unreliable stay as they are. The held-out pairs (``holdout``,
            ``holdout_pairs``) are registered the same way; the ``val_split`` pairs are never
            changed (also with ``val_split="train"``). A run started before this option existed
            resumes with ``register=False``. (default: :obj:`True`)

    Raises:
        ValueError: A value is out of range, the model is unknown, or the device is not
            available.
    """

    data: Path
    out: Path
    model: str = "nir-gnn"
    arch: NIRGNNConfig = field(default_factory=NIRGNNConfig)
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
    compile: str = "none"
    register: bool = True

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
        self._validate_architecture()
        self._validate_schedule()
        self._validate_options()
        _check_device(self.device)

    def _validate_architecture(self) -> None:
        """The model, its sizes and the integer settings."""
        if self.model not in list_models():
            raise ValueError(f"unknown model {self.model!r}; available: {list_models()}")
        if not isinstance(self.arch, NIRGNNConfig):
            raise ValueError(f"arch must be a NIRGNNConfig, got {type(self.arch).__name__}")
        if not self.arch.non_local:
            raise ValueError(
                "arch describes NIR-GNN (non_local=True): model='cnn' trains its CNN baseline"
            )
        for name, low in (
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
        if self.model == "nir-gnn" and self.patch * self.patch - 9 < self.arch.k:
            raise ValueError(
                f"patch {self.patch} is too small for k={self.arch.k} neighbours: a pixel of a "
                f"{self.patch}x{self.patch} patch has only {max(self.patch**2 - 9, 0)} "
                "non-local candidates"
            )

    def _validate_schedule(self) -> None:
        """Learning rates, validation split, warm-up, schedule and precision."""
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
        if self.val_split not in ("validation", "val", "train", "none"):
            raise ValueError(
                f"val_split must be 'validation', 'val', 'train' or 'none', got {self.val_split!r}"
            )
        if self.warmup >= self.iters:
            raise ValueError(f"warmup ({self.warmup}) must be below iters ({self.iters})")
        for name, choices in (
            ("schedule", SCHEDULES),
            ("amp", AMP_MODES),
            ("compile", COMPILE_MODES),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")

    def _validate_options(self) -> None:
        """Time budget, weight average, hold-out, starting weights and the flags."""
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
        for name in ("resume", "progress", "ema_bias_correction", "register"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a plain dict (paths as ``str``, ``arch`` as a dict), as
        stored in checkpoints and ``--config`` files; :meth:`from_dict` reads it back."""
        out = asdict(self)
        out["data"], out["out"] = str(self.data), str(self.out)
        if self.init_from is not None:
            out["init_from"] = str(self.init_from)
        return out

    @classmethod
    def from_dict(
        cls, stored: Mapping[str, Any], source: str | Path, **changes: Any
    ) -> TrainConfig:
        r"""The configuration a checkpoint stores (:meth:`to_dict`, of today or of an older
        version), with ``changes``.

        Args:
            stored (dict): The stored configuration (see :func:`stored_settings`).
            source (str or Path): Where it was read, named in errors.
            **changes (optional): Fields that replace the stored ones.

        Raises:
            ValueError: An unknown or invalid value.

        Example:
            >>> from pyg_lecc.nir.config import NIRGNNConfig
            >>> config = TrainConfig(data="d", out="o", arch=NIRGNNConfig(rank=4))
            >>> TrainConfig.from_dict(config.to_dict(), "ckpt", iters=10).arch.rank
            4
        """
        return cls(**{**stored_settings(stored, source), **changes})


def stored_settings(
    stored: Mapping[str, Any], source: str | Path, *, legacy: bool = True
) -> dict[str, Any]:
    r"""The fields of :class:`TrainConfig` that a stored configuration holds, in today's form
    and not yet validated: the one reader of checkpoints' ``config`` (resuming, ``finish`` of
    a continuation) and of ``pyg-lecc train --config`` files.

    Older forms are read as what they meant: architecture fields written at the top level
    (checkpoints from before :attr:`TrainConfig.arch`) are gathered into ``arch``, and a field
    that the writer predates reads as its :data:`LEGACY_VALUES` value (with ``legacy``) or
    its default.

    Args:
        stored (dict): A dict of :meth:`TrainConfig.to_dict`'s form, possibly partial.
        source (str or Path): Where it was read, named in errors.
        legacy (bool, optional): Whether missing fields read as :data:`LEGACY_VALUES`: true of
            checkpoints, which older versions wrote, not of a file written by hand.
            (default: :obj:`True`)

    Returns:
        The fields, ``arch`` as a :class:`~pyg_lecc.nir.config.NIRGNNConfig`; ``data`` and
        ``out`` only if stored (they have no default).

    Raises:
        ValueError: A key that is no field, or an invalid architecture.

    Example:
        >>> from pyg_lecc.nir.training.config import stored_settings
        >>> old = {"data": "d", "out": "o", "features": 24, "rank": 4}  # before arch
        >>> settings = stored_settings(old, "checkpoint.pt")
        >>> settings["arch"].rank, settings["register"]
        (4, False)
    """
    names = {f.name for f in fields(TrainConfig)}
    arch_names = {f.name for f in fields(NIRGNNConfig)}
    unknown = sorted(map(str, stored.keys() - names - arch_names))
    if unknown:
        raise ValueError(f"{source}: unknown training setting(s) {unknown}")
    settings = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    if legacy:
        settings |= LEGACY_VALUES
    settings |= {name: value for name, value in stored.items() if name in names}
    arch = stored.get("arch", {})
    if not isinstance(arch, Mapping):
        raise ValueError(f"{source}: arch must be a dict, got {arch!r}")
    arch = {**arch, **{name: value for name, value in stored.items() if name in arch_names}}
    try:
        settings["arch"] = NIRGNNConfig(**arch)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: invalid arch: {err}") from err
    return settings


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
