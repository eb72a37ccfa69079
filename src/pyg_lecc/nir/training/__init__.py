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
  since the previous val line and the metrics of :data:`pyg_lecc.nir.metrics.METRIC_KEYS`,
  averaged over the validation pairs).
- ``checkpoint.pt``: everything needed for an exact resume, rewritten atomically every
  ``ckpt_every`` iterations, at the end and on Ctrl-C. It holds only tensors and Python
  literals, so ``torch.load(path, weights_only=True)`` reads it. Keys: ``format``,
  ``iteration``, ``model`` (state dict, BatchNorm buffers included), ``optimizer`` (Adam
  state dict), ``config`` (:meth:`TrainConfig.to_dict` with absolute paths, read back by
  :meth:`TrainConfig.from_dict`, also in the forms older versions wrote),
  ``model_name``, ``world_size``, ``elapsed`` (seconds of training so far, over all
  sessions), ``last_val`` (metrics of the last validation or ``None``), ``sampler_state``
  (rank 0's patch sampler generator state, a ``uint8`` tensor) and ``rank_states`` (one dict
  per process: ``sampler``, ``torch_rng``, ``cuda_rng``, and the running loss sums of the
  log lines).
- ``weights.safetensors``: the final weights, written with :func:`pyg_lecc.nir.hub.save_weights`
  (load them with :func:`pyg_lecc.nir.hub.get_model`): the moving average with ``ema``, and the
  weights of the best selection score with ``holdout``.
- ``best.safetensors`` (with ``holdout`` only): the weights of the best selection score so far.

With ``holdout``, ``{"kind": "select", ...}`` lines hold the metrics on the held-out training
pairs at every validation; a ``{"kind": "stop", ...}`` line records a ``time_budget`` stop.

Resuming (``resume=True``) continues from ``checkpoint.pt`` and gives exactly the result of an
uninterrupted run with the same seed (bit for bit on CPU; CUDA kernels such as scatter-adds are
not deterministic, and a ``time_budget`` run ends wherever the clock says). Log lines written
after the checkpoint by the interrupted session are dropped, so the log reads as one run.

The package holds one concept per module: ``config`` (the settings and the names of a run's
files), ``schedule`` (learning rates), ``holdout`` (selection pairs), ``averaging`` (weight
average and BatchNorm recalibration), ``checkpoint`` (atomic writes of a run's files, resume
checks), ``distributed``, ``signals`` (Ctrl-C), ``validation``, ``model``, ``threads`` and
``loop`` (:func:`train`). Everything public is importable from ``pyg_lecc.nir.training``.

Example:
    >>> from pyg_lecc.nir.training import TrainConfig, train
    >>> summary = train(TrainConfig(data="../shared/data/vcip2020", out="runs/nir-gnn",
    ...                             iters=300_000))  # doctest: +SKIP
    >>> summary["val"]["psnr"]  # doctest: +SKIP
"""

from __future__ import annotations

from pyg_lecc.nir.training.averaging import bn_recalibration_batches
from pyg_lecc.nir.training.checkpoint import load_checkpoint
from pyg_lecc.nir.training.config import (
    AMP_MODES,
    BEST_NAME,
    CHECKPOINT_NAME,
    COMPILE_MODES,
    LOG_NAME,
    RESUME_FIELDS,
    SCHEDULES,
    VAL_SEARCH_WINDOW,
    WEIGHTS_NAME,
    TrainConfig,
    stored_settings,
)
from pyg_lecc.nir.training.distributed import PROCESS_GROUP_TIMEOUT
from pyg_lecc.nir.training.holdout import DEFAULT_HOLDOUT_PAIRS, holdout_indices, read_holdout_pairs
from pyg_lecc.nir.training.loop import train
from pyg_lecc.nir.training.model import build_model
from pyg_lecc.nir.training.schedule import lr_at
from pyg_lecc.nir.training.signals import honour_sigint
from pyg_lecc.nir.training.threads import limit_numba_threads

__all__ = [
    "AMP_MODES",
    "BEST_NAME",
    "CHECKPOINT_NAME",
    "COMPILE_MODES",
    "DEFAULT_HOLDOUT_PAIRS",
    "LOG_NAME",
    "PROCESS_GROUP_TIMEOUT",
    "RESUME_FIELDS",
    "SCHEDULES",
    "VAL_SEARCH_WINDOW",
    "WEIGHTS_NAME",
    "TrainConfig",
    "bn_recalibration_batches",
    "build_model",
    "holdout_indices",
    "honour_sigint",
    "limit_numba_threads",
    "load_checkpoint",
    "lr_at",
    "read_holdout_pairs",
    "stored_settings",
    "train",
]
