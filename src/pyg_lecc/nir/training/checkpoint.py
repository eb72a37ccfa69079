"""The files of a run folder: atomic checkpoint and weights writes, checkpoint loading and the
checks before a run starts or resumes."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from pyg_lecc.io.atomic import write_atomically
from pyg_lecc.io.weight_files import check_archive_checksums
from pyg_lecc.nir.config import NIRGNNConfig
from pyg_lecc.nir.training.config import (
    BEST_NAME,
    CHECKPOINT_NAME,
    LOG_NAME,
    RESUME_FIELDS,
    WEIGHTS_NAME,
    TrainConfig,
    stored_settings,
)
from pyg_lecc.nir.training.holdout import _holdout_pairs_path

__all__ = ["load_checkpoint"]

_CHECKPOINT_FORMAT = "pyg_lecc.training/1"


def _atomic_save(obj: Any, path: Path) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    write_atomically(path, write)


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
    write_atomically(path, lambda tmp: tmp.write_text("".join(f"{line}\n" for line in kept)))


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


def load_checkpoint(path: Path) -> dict[str, Any]:
    r"""Reads a run's ``checkpoint.pt`` (its keys are listed in :mod:`pyg_lecc.nir.training`)
    without running any code, after checking the archive's checksums.

    Args:
        path (Path): The checkpoint file.

    Returns:
        The checkpoint; its ``config`` as stored (read it with
        :meth:`TrainConfig.from_dict <pyg_lecc.nir.training.TrainConfig.from_dict>`).

    Raises:
        FileNotFoundError: There is no file at ``path``.
        ValueError: The file is damaged or not a training checkpoint of this package.
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"cannot resume: no checkpoint at {path} (start without --resume to begin a run)"
        )
    try:
        check_archive_checksums(path)  # torch.load would resume from flipped bits silently
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot load checkpoint {path}: {err}") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a pyg_lecc training checkpoint ({_CHECKPOINT_FORMAT})")
    return ckpt


def _check_resume_config(stored: dict[str, Any], config: TrainConfig, path: Path) -> None:
    before = stored_settings(stored, path)  # older checkpoints read as what they ran with
    diffs = []
    for name in RESUME_FIELDS:
        old, new = before[name], getattr(config, name)
        if name == "arch":  # named field by field, as the command line spells them
            diffs += [
                f"{f.name} (checkpoint: {getattr(old, f.name)!r}, now: {getattr(new, f.name)!r})"
                for f in fields(NIRGNNConfig)
                if getattr(old, f.name) != getattr(new, f.name)
            ]
            continue
        if name in ("data", "holdout_pairs") and old is not None and new is not None:
            as_path = _holdout_pairs_path if name == "holdout_pairs" else Path
            same = as_path(old).resolve() == as_path(new).resolve()
        else:
            same = old == new
        if not same:
            diffs.append(f"{name} (checkpoint: {_plain(old)!r}, now: {_plain(new)!r})")
    if diffs:
        hint = ""
        if any(d.startswith("iters ") for d in diffs):
            hint = (
                " (a run's schedule is fixed by iters: to train its weights further, start a "
                f"new run with init_from={path.parent / WEIGHTS_NAME}, --init-from on the "
                "command line)"
            )
        elif any(d.startswith("register ") for d in diffs):
            hint = " (--register / --no-register on the command line)"
        raise ValueError(
            f"cannot resume from {path}: the configuration differs in " + "; ".join(diffs) + hint
        )


def _plain(value: Any) -> Any:
    # Paths as the checkpoint stores them: 'runs/a', not PosixPath('runs/a').
    return str(value) if isinstance(value, Path) else value


def _load_resumable(path: Path, config: TrainConfig, world_size: int) -> dict[str, Any]:
    """The checkpoint at ``path``, checked against the run that resumes from it."""
    ckpt = load_checkpoint(path)
    _check_resume_config(ckpt["config"], config, path)
    if ckpt["world_size"] != world_size:
        raise ValueError(
            f"cannot resume from {path}: it was written by {ckpt['world_size']} "
            f"process(es), this run has {world_size}"
        )
    return ckpt
