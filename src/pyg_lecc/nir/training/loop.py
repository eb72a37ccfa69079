"""The training loop: :func:`train` and the state of one session, :class:`_Run`, whose methods
are the named steps of an iteration (draw, step, log, validate, checkpoint) and of a stop
(time budget, Ctrl-C)."""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from pyg_lecc.io.atomic import atomic_copy
from pyg_lecc.nir.data import PairedImageDataset, RandomPatchSampler
from pyg_lecc.nir.hub import save_weights
from pyg_lecc.nir.training.averaging import (
    _averaged_model,
    _recalibrate_bn,
    bn_recalibration_batches,
)
from pyg_lecc.nir.training.checkpoint import (
    _CHECKPOINT_FORMAT,
    _atomic_save,
    _check_fresh_out,
    _discard_unresumable,
    _load_resumable,
    _truncate_log,
)
from pyg_lecc.nir.training.config import (
    BEST_NAME,
    CHECKPOINT_NAME,
    LOG_NAME,
    WEIGHTS_NAME,
    TrainConfig,
)
from pyg_lecc.nir.training.distributed import _all_gather, _all_reduce, _Dist, _setup_distributed
from pyg_lecc.nir.training.holdout import _split_holdout
from pyg_lecc.nir.training.model import build_model
from pyg_lecc.nir.training.schedule import lr_at
from pyg_lecc.nir.training.signals import _DeferredSigint
from pyg_lecc.nir.training.validation import _load_validation, _validate

__all__ = ["train"]


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
        config (TrainConfig): The run settings.

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
        pyg_lecc.nir.data.PairingError: The training data cannot be found or paired.
        KeyboardInterrupt: Interrupted (after writing the checkpoint).

    Example:
        >>> from pyg_lecc.nir.config import NIRGNNConfig
        >>> arch = NIRGNNConfig(features=6, rank=2, k=4, layers_per_block=1)
        >>> cfg = TrainConfig(data="data", out="runs/tiny", model="cnn", arch=arch, iters=30,
        ...                   patch=12, batch_size=2, progress=False)  # doctest: +SKIP
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
    run = _Run(config, info, device)
    bar = tqdm(
        total=config.iters,
        initial=run.iteration,
        desc=f"train {config.model}",
        unit="it",
        dynamic_ncols=True,
        disable=not (config.progress and info.is_main),
    )
    try:
        with run.sigint:
            run.run_iterations(bar)
            if run.stop_reason == "time_budget":
                run.finish_time_budget()
    except KeyboardInterrupt:
        run.after_interrupt()
        raise
    finally:
        bar.close()
    run.export_weights()
    return run.summary()


def _stored_config(config: TrainConfig, out: Path) -> dict[str, Any]:
    """The configuration a checkpoint holds: absolute paths, so that a resume from another
    working directory compares the same folders."""
    stored = {
        **config.to_dict(),
        "data": str(Path(config.data).resolve()),
        "out": str(out.resolve()),
    }
    if config.holdout_pairs not in (None, "default"):
        stored["holdout_pairs"] = str(Path(config.holdout_pairs).resolve())
    return stored


class _Run:
    """One training session: settings, model, optimiser, data and progress. Only rank 0
    validates and writes files; every collective is entered by all processes together."""

    def __init__(self, config: TrainConfig, info: _Dist, device: torch.device) -> None:
        self.config, self.info, self.device = config, info, device
        out = Path(config.out)
        self.ckpt_path, self.weights_path = out / CHECKPOINT_NAME, out / WEIGHTS_NAME
        self.log_path, self.best_path = out / LOG_NAME, out / BEST_NAME
        ckpt = None
        if config.resume:
            ckpt = _load_resumable(self.ckpt_path, config, info.world_size)
        train_set, self.select_data = _split_holdout(
            PairedImageDataset(config.data, "train", register=config.register), config
        )
        self.val_data = _load_validation(config) if info.is_main else None
        self._build(train_set)
        # Loss sums of this process since the last "train" and "val" log lines.
        self.acc = {"train_sum": 0.0, "train_count": 0, "val_sum": 0.0, "val_count": 0}
        self.iteration, self.elapsed_before = 0, 0.0
        self.last_val: dict[str, float] | None = None
        self.best: dict[str, Any] | None = None  # iteration, psnr, val of the best selection
        if ckpt is not None:
            self._restore(ckpt)
            del ckpt
        elif info.is_main:
            out.mkdir(parents=True, exist_ok=True)
        self.model: nn.Module = self.net
        if info.enabled:
            self.model = DistributedDataParallel(
                self.net, device_ids=[device.index] if device.type == "cuda" else None
            )
        if config.compile != "none":
            # Only the training steps run compiled: state dicts keep the plain module's keys.
            self.model = torch.compile(self.model, mode=config.compile)
        self.stored_config = _stored_config(config, out)
        self.session_start = time.monotonic()
        self.sigint = _DeferredSigint(announce=info.is_main)
        self.step_time, self.steps, self.lr = 0.0, 0, lr_at(self.iteration, config)
        self.in_step = self.stopped = False
        self.stop_reason: str | None = None

    # -- set-up --------------------------------------------------------------------------------

    def _build(self, train_set: PairedImageDataset) -> None:
        """Model (seeded), weight average, BatchNorm batches, patch sampler and optimiser."""
        config, info = self.config, self.info
        torch.manual_seed(config.seed)
        self.net = build_model(config).to(self.device)
        self.net.train()
        self.ema = _averaged_model(self.net, config)
        # Validated, selected and exported:
        self.judged = self.net if self.ema is None else self.ema.module
        recalibrated = self.ema is not None and info.is_main
        self.bn_batches = bn_recalibration_batches(train_set, config) if recalibrated else []
        self.sampler = RandomPatchSampler(
            train_set,
            patch_size=config.patch,
            batch_size=config.batch_size,
            generator=torch.Generator().manual_seed(config.seed + info.rank),
        )
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.lr)

    def _restore(self, ckpt: dict[str, Any]) -> None:
        """Continues from ``ckpt``: weights, optimiser, average, this process's random
        states and loss sums, progress; the log loses the lines written after it."""
        self.net.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.best = ckpt.get("best")
        mine = ckpt["rank_states"][self.info.rank]
        self.sampler.set_state(mine["sampler"])
        torch.set_rng_state(mine["torch_rng"])
        if self.device.type == "cuda" and mine.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(mine["cuda_rng"], self.device)
        self.acc.update(mine["loss"])
        self.iteration, self.elapsed_before = int(ckpt["iteration"]), float(ckpt["elapsed"])
        self.last_val = ckpt.get("last_val")
        if self.info.is_main:
            _truncate_log(self.log_path, self.iteration)

    # -- clock and log -------------------------------------------------------------------------

    def elapsed(self) -> float:
        """Seconds of training over all sessions."""
        return self.elapsed_before + time.monotonic() - self.session_start

    def time_fraction(self) -> float:
        """Fraction of the time budget spent in this session (0 without one)."""
        if self.config.time_budget is None:
            return 0.0
        return (time.monotonic() - self.session_start) / self.config.time_budget

    def log(self, entry: dict[str, Any]) -> None:
        with open(self.log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def reduced_mean(self, prefix: str) -> float | None:
        """Mean loss over all processes since the last ``prefix`` ("train" or "val") log
        line; the sums start again."""
        sums = [self.acc[f"{prefix}_sum"], float(self.acc[f"{prefix}_count"])]
        sums = _all_reduce(self.info, sums, self.device, torch.float64)
        self.acc[f"{prefix}_sum"], self.acc[f"{prefix}_count"] = 0.0, 0
        return sums[0] / sums[1] if sums[1] else None

    # -- the loop ------------------------------------------------------------------------------

    def run_iterations(self, bar: tqdm) -> None:
        """Trains until ``iters``, the time budget (``stop_reason``) or a Ctrl-C."""
        config = self.config
        while self.iteration < config.iters:
            self.stop_reason, fraction = self.stop_and_clock()
            if self.stop_reason == "interrupt":
                self.stop_on_interrupt()
            if self.stop_reason == "time_budget":
                break
            loss_value = self.step(fraction)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4g}", refresh=False)
            it = self.iteration
            last = it == config.iters
            self.end_of_iteration(
                it, self.lr, it % config.ckpt_every == 0 or last, it % config.val_every == 0 or last
            )

    def stop_and_clock(self) -> tuple[str | None, float]:
        """Whether to stop (``"interrupt"``, ``"time_budget"`` or ``None``) and the fraction
        of the time budget spent."""
        # One collective per iteration: every process stops together and uses rank 0's
        # clock for the time-driven schedule (the same learning rate everywhere).
        fraction = self.time_fraction()
        code = 2.0 if self.sigint.requested else 1.0 if fraction >= 1.0 else 0.0
        mine = [code, fraction if self.info.is_main else 0.0]
        code, fraction = _all_reduce(self.info, mine, self.device, op="max")
        return {2.0: "interrupt", 1.0: "time_budget"}.get(code), fraction

    def step(self, fraction: float) -> float:
        """One optimiser step on a drawn batch; returns its loss."""
        self.in_step = True
        t0 = time.perf_counter()
        it = self.iteration
        nir, rgb = self.sampler.sample()
        nir, rgb = nir.to(self.device), rgb.to(self.device)
        self.lr = lr_at(it, self.config, fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        self.optimizer.zero_grad(set_to_none=True)
        autocast = self.config.amp == "bf16"
        with torch.autocast(self.device.type, torch.bfloat16, enabled=autocast):
            loss = F.mse_loss(self.model(nir).float(), rgb)
        loss.backward()
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.net)
        loss_value = loss.item()
        for prefix in ("train", "val"):
            self.acc[f"{prefix}_sum"] += loss_value
            self.acc[f"{prefix}_count"] += 1
        self.iteration = it + 1
        self.in_step = False
        self.step_time += time.perf_counter() - t0
        self.steps += 1
        return loss_value

    def end_of_iteration(self, it: int, lr: float, train_line: bool, val: bool) -> None:
        """The "train" log line, the validation and the checkpoint due at iteration ``it``."""
        if train_line:
            mean = self.reduced_mean("train")
            if self.info.is_main:
                entry = {"kind": "train", "iteration": it, "time": self.elapsed()}
                self.log({**entry, "loss": mean, "lr": lr, "timestamp": time.time()})
        if val:
            mean = self.reduced_mean("val")
            if self.info.is_main:
                self.evaluate(it, lr, mean)
        if train_line:
            self.write_checkpoint()

    # -- validation and selection --------------------------------------------------------------

    def evaluate(self, it: int, lr: float, train_loss: float | None) -> None:
        """Validates (rank 0); a Ctrl-C meanwhile says that it waits for the validation."""
        self.sigint.busy = "validation"
        try:
            self._evaluate(it, lr, train_loss)
        finally:
            self.sigint.busy = None

    def _evaluate(self, it: int, lr: float, train_loss: float | None) -> None:
        _recalibrate_bn(self.bn_batches, self.judged, self.device)
        entry = {"iteration": it, "time": self.elapsed(), "train_loss": train_loss, "lr": lr}
        selection = None
        if self.select_data is not None:
            selection = _validate(self.judged, self.select_data, self.device)
            self.log({"kind": "select", **entry, "timestamp": time.time(), **selection})
        metrics = None
        if self.val_data is not None:
            metrics = _validate(self.judged, self.val_data, self.device)
            self.last_val = metrics
            self.log({"kind": "val", **entry, "timestamp": time.time(), **metrics})
        best = self.best
        if selection is not None and (best is None or selection["psnr"] > best["psnr"]):
            self.best = {"iteration": it, "psnr": selection["psnr"], "val": metrics}
            save_weights(self.judged, self.config.model, self.best_path)

    # -- checkpoint ----------------------------------------------------------------------------

    def write_checkpoint(self) -> None:
        """Gathers every process's state and writes the checkpoint (rank 0)."""
        rank_states = _all_gather(self.info, self._rank_state())
        if self.info.is_main:
            _atomic_save(self._checkpoint(rank_states), self.ckpt_path)

    def _rank_state(self) -> dict[str, Any]:
        cuda = self.device.type == "cuda"
        return {
            "sampler": self.sampler.get_state().clone(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if cuda else None,
            "loss": dict(self.acc),
        }

    def _checkpoint(self, rank_states: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "format": _CHECKPOINT_FORMAT,
            "iteration": self.iteration,
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "config": self.stored_config,
            "model_name": self.config.model,
            "world_size": self.info.world_size,
            "elapsed": self.elapsed(),
            "last_val": self.last_val,
            "ema": None if self.ema is None else self.ema.state_dict(),
            "best": self.best,
            "sampler_state": rank_states[0]["sampler"],
            "rank_states": rank_states,
        }

    # -- stops ---------------------------------------------------------------------------------

    def stop_on_interrupt(self) -> NoReturn:
        """A Ctrl-C between iterations: checkpoint, then :class:`KeyboardInterrupt`."""
        self.write_checkpoint()
        if self.info.enabled:
            dist.barrier()  # rank 0 has written it before any process exits
        self.stopped = True
        raise KeyboardInterrupt

    def finish_time_budget(self) -> None:
        """After a time-budget stop: the log line, validation and checkpoint still due, and
        a "stop" log line."""
        it, config = self.iteration, self.config
        if self.steps:  # finish what the regular intervals did not cover at this iteration
            ckpt_missing, val_missing = it % config.ckpt_every, it % config.val_every
            self.end_of_iteration(it, self.lr, ckpt_missing != 0, val_missing != 0)
            if val_missing and not ckpt_missing:
                self.write_checkpoint()  # it holds the final validation too
        elif not config.resume:
            self.write_checkpoint()  # spent before the first iteration: still resumable
        if self.info.is_main:
            entry = {"kind": "stop", "reason": "time_budget", "iteration": it}
            self.log(
                {**entry, "iters": config.iters, "time": self.elapsed(), "timestamp": time.time()}
            )

    def after_interrupt(self) -> None:
        """A :class:`KeyboardInterrupt` on its way out: checkpoint if the state is
        consistent, else say that the last regular checkpoint stays."""
        if self.stopped:
            return
        if self.in_step or self.info.enabled:
            # A torn iteration, or ranks that may not all reach a collective checkpoint.
            if self.info.is_main:
                warnings.warn(
                    f"interrupted abruptly: {self.ckpt_path} keeps the last regular checkpoint",
                    stacklevel=3,
                )
        else:  # between iterations (e.g. in validation): the state is consistent
            self.write_checkpoint()

    # -- the end -------------------------------------------------------------------------------

    def export_weights(self) -> None:
        """The final weights: the best selected ones with a hold-out, else the judged ones."""
        if self.info.is_main:
            if self.best is not None:
                atomic_copy(self.best_path, self.weights_path)
            else:
                save_weights(self.judged, self.config.model, self.weights_path)
        if self.info.enabled:
            dist.barrier()

    def summary(self) -> dict[str, Any]:
        selected, steps = self.best, self.steps
        val = self.last_val if selected is None else selected["val"]
        return {
            "iterations": self.iteration,
            "iterations_this_run": steps,
            "stopped": self.stop_reason,
            "wall_time": self.elapsed() if steps else self.elapsed_before,
            "seconds_per_iteration": self.step_time / steps if steps else None,
            "val": val if self.info.is_main else None,
            "selected_iteration": None if selected is None else selected["iteration"],
            "world_size": self.info.world_size,
            "checkpoint": str(self.ckpt_path),
            "weights": str(self.weights_path),
            "log": str(self.log_path),
        }
