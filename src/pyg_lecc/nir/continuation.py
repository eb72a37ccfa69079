"""Training as a standing process: continue NIR-GNN's weights until a stop time, then finish.

Two steps, run from the command line by ``scripts/train_continue.py``:

- :func:`start` continues weights (by default the shipped ``nir-gnn.safetensors``) with
  ``pyg-lecc train --config train.json`` (a :class:`~pyg_lecc.nir.training.TrainConfig` with
  ``init_from``, :data:`TRAIN_CONFIG_NAME`) in a run folder outside the git work tree, on an
  explicit number of CPU threads, for a time budget that ends ``margin`` before a stop
  time: warm-up, cosine decay over the budget, a bias-corrected weight average (EMA) with
  recomputed BatchNorm statistics, and selection on the committed held-out training pairs
  (:data:`pyg_lecc.nir.training.DEFAULT_HOLDOUT_PAIRS`). It writes ``continue.json`` (what
  started, from which weights, on which machine) and then becomes the trainer (``exec``), so
  ``kill -INT <pid>`` reaches it directly: it checkpoints and stops. The trainer holds a lock
  on ``trainer.lock`` in the run folder (``flock``, taken by ``start`` and kept through the
  ``exec``) until it ends, however it ends: the operating system releases it with the
  process. The data set is checked before anything is announced or created.
- :func:`finish` turns a stopped run into its best weights: the raw and the averaged weights
  of its checkpoint are scored on the held-out pairs (registered as the trainer had them)
  and the better one by the rule the run declared at its start is kept
  (:func:`selection_score`: PSNR and SSIM, each in units of what a doubling of the
  iterations gains), next to the run as ``nir-gnn.safetensors`` (its metadata in the header)
  and ``nir-gnn.json``. It is scored on the validation images too, once (only reported,
  never used to choose; the trainer of a continuation scores only the held-out pairs, every
  ``Recipe.val_every`` iterations). If it beats the shipped weights on the held-out pairs by
  the same rule, it replaces them and their metadata, the
  shipped training log gets the run's lines, and the README figure is drawn again. Every
  finish appends a row to the training ledger of the model card, shipped or not: the
  compute spent is on record either way. A run whose trainer still holds its lock is
  refused, whatever path names the folder (a symbolic link, ``..``); a run folder of an older
  ``start`` without a lock file is checked by the recorded pid instead.

Each start is a new run from the latest weights: its learning-rate schedule starts again with
a warm-up (warm restarts), which also keeps the runs independent of each other's length. The
weights and ``.json`` a finish writes into the run folder can be the next start's
``weights``, on this machine or another one, whether or not they were shipped.

Example:
    .. code-block:: console

        $ python scripts/train_continue.py start --data ../shared/data/vcip2020 \\
              --out ../runs/f24-0612 --until 18:30 --threads 1
        $ kill -INT <pid>          # or wait for the stop time
        $ python scripts/train_continue.py finish ../runs/f24-0612
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import update_bn

from pyg_lecc.io.atomic import atomic_copy, write_atomically
from pyg_lecc.nir.config import NIRGNNConfig
from pyg_lecc.nir.data import PairedImageDataset, find_pairs, load_pair
from pyg_lecc.nir.hub import default_weights_path, load_weights, model_from_weights, save_weights
from pyg_lecc.nir.inference import colorize
from pyg_lecc.nir.metrics import METRIC_KEYS, evaluate_pair, summarize
from pyg_lecc.nir.models import NIRGNN
from pyg_lecc.nir.training import (
    CHECKPOINT_NAME,
    LOG_NAME,
    TrainConfig,
    bn_recalibration_batches,
    build_model,
    holdout_indices,
    limit_numba_threads,
    load_checkpoint,
)

__all__ = [
    "DEFAULT_MARGIN_S",
    "LEDGER_HEADING",
    "LOCK_NAME",
    "RECORD_NAME",
    "TRAIN_CONFIG_NAME",
    "Recipe",
    "finish",
    "main",
    "parse_deadline",
    "start",
]

MODEL = "nir-gnn"
RECORD_NAME = "continue.json"
"""What :func:`start` records in the run folder."""
TRAIN_CONFIG_NAME = "train.json"
"""The trainer's settings in the run folder (``pyg-lecc train --config``)."""
OUTPUT_LOG_NAME = "train.out"
"""The trainer's standard output and error, in the run folder."""
LOCK_NAME = "trainer.lock"
"""The run folder's lock file, locked (``flock``) by the trainer for as long as it lives."""
LEDGER_HEADING = "## Training ledger"
"""Heading of the model card's section to which :func:`finish` appends its row."""
DEFAULT_MARGIN_S = 1200.0
"""Seconds kept free before the stop time (the trainer's start, its final validation of 30
images, and :func:`finish`: about 20 minutes for F=24 on one thread of the 2-core machine)."""
_RECORD_FORMAT = "pyg_lecc.continuation/1"
# What finish reads from the record (runs of an older start lack only "lock").
_RECORD_KEYS = (
    "pid",
    "hardware",
    "threads",
    "weights_sha256",
    "iterations_before",
    "previous_metadata",
    "command",
)
PSNR_PER_DOUBLING = 0.30
"""Held-out PSNR (dB) gained per doubling of the iterations by the shipped lineage (16.63 dB
at 4,924 cumulative iterations, 17.06 dB at 13,083): the PSNR unit of :func:`selection_score`."""
SELECTION_RULE = "psnr+ssim per doubling"
"""The selection rule that :func:`start` records in ``continue.json``: :func:`selection_score`."""
SSIM_PER_DOUBLING = 0.015
"""Held-out SSIM gained per doubling over the same runs (0.493 to 0.513): the SSIM unit of
:func:`selection_score`."""


@dataclass
class Recipe:
    """Training settings of a continuation (``pyg-lecc train`` options of the same names).

    ``iters`` is only a bound: the time budget ends the run and drives the cosine decay
    (:func:`pyg_lecc.nir.training.lr_at`), so the learning rate reaches ``lr_end`` at the budget's
    end whatever the speed of the machine.
    """

    # Continuations of trained weights restart gently (3e-4 to 2e-5 up to run f24-s6; see
    # "Which weights the next run continues" in the docs).
    lr: float = 1e-4
    lr_end: float = 1e-5
    warmup: int = 100
    ema: float = 0.999
    bn_batches: int = 16
    val_every: int = 2000
    ckpt_every: int = 100
    batch_size: int = 10
    patch: int = 42
    iters: int = 1_000_000
    holdout_pairs: str = "default"


# --------------------------------------------------------------------------------------------
# start
# --------------------------------------------------------------------------------------------


def parse_deadline(text: str, now: datetime | None = None) -> datetime:
    """The stop time ``text``: ``HH:MM`` (its next occurrence, local time) or an ISO 8601
    date and time (local time unless it names a zone).

    Example:
        >>> from datetime import datetime
        >>> from pyg_lecc.nir.continuation import parse_deadline
        >>> now = datetime(2026, 6, 12, 17, 0).astimezone()
        >>> parse_deadline("18:30", now).strftime("%d %H:%M")
        '12 18:30'
        >>> parse_deadline("16:00", now).strftime("%d %H:%M")  # tomorrow
        '13 16:00'
    """
    now = now or datetime.now().astimezone()
    clock = re.fullmatch(r"(\d{1,2}):(\d{2})", text.strip())
    try:
        if clock:
            hour, minute = int(clock[1]), int(clock[2])
            deadline = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
            return deadline if deadline > now else deadline + timedelta(days=1)
        return datetime.fromisoformat(text.strip()).astimezone()
    except ValueError as err:
        raise ValueError(f"stop time {text!r} is neither HH:MM nor an ISO date and time") from err


def start(
    data: Path,
    out: Path,
    until: datetime,
    threads: int,
    *,
    weights: Path,
    margin_s: float = DEFAULT_MARGIN_S,
    recipe: Recipe | None = None,
    seed: int | None = None,
    iterations_before: int | None = None,
    replace_process: bool = True,
    now: datetime | None = None,
) -> int:
    r"""Starts a continuation of ``weights`` in ``out`` that trains until ``until - margin_s``.

    The trainer's :class:`~pyg_lecc.nir.training.TrainConfig` is written to
    :data:`TRAIN_CONFIG_NAME` in ``out`` and run as ``pyg-lecc train --config``.

    Args:
        data (Path): The data set (its train split trains, its held-out pairs select).
        out (Path): A new run folder, outside any git work tree.
        until (datetime): The stop time (aware, or naive local time).
        threads (int): CPU threads of the trainer (also its ``OMP_NUM_THREADS`` and
            ``NUMBA_NUM_THREADS``).
        weights (Path): NIR-GNN weights to continue; their cumulative iterations are read
            from the ``.json`` next to them (``iterations``) unless ``iterations_before`` is
            given.
        margin_s (float, optional): Seconds before ``until`` at which training stops, for
            the trainer's final validation and :func:`finish`.
            (default: :data:`DEFAULT_MARGIN_S`)
        recipe (Recipe, optional): Training settings (:obj:`None`: :class:`Recipe`).
            (default: :obj:`None`)
        seed (int, optional): Seed of the patch sampler (:obj:`None`:
            ``iterations_before``, so that successive continuations draw other patches).
            (default: :obj:`None`)
        iterations_before (int, optional): Cumulative training iterations of ``weights``.
            (default: :obj:`None`)
        replace_process (bool, optional): Become the trainer (``exec``); otherwise run it as
            a child process and wait for it. (default: :obj:`True`)
        now (datetime, optional): The current time (:obj:`None`: the clock's).
            (default: :obj:`None`)

    Returns:
        The trainer's exit code (only without ``replace_process``).

    Raises:
        ValueError: ``out`` is inside a git work tree or holds a run, the stop time leaves
            no time to train, the weights are not NIR-GNN weights, or the data set cannot be
            paired or lacks the held-out pairs (:class:`~pyg_lecc.nir.data.PairingError`);
            checked before ``out`` is created.
    """
    recipe = recipe or Recipe()
    now = now or datetime.now().astimezone()
    out = Path(out).absolute()
    refuse_inside_git(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"the run folder {out} is not empty: give a new one")
    budget = (until.astimezone() - now).total_seconds() - margin_s
    if budget < 60.0:
        raise ValueError(
            f"stop time {until:%Y-%m-%d %H:%M} leaves {budget:.0f} s of training after the "
            f"{margin_s:.0f} s margin: give a later stop time or a smaller --margin"
        )
    weights = Path(weights).absolute()
    meta, _ = load_weights(weights)
    if meta["model"] != MODEL:
        raise ValueError(f"{weights} holds {meta['model']!r} weights, not {MODEL!r}")
    previous = _previous_metadata(weights, meta)
    if iterations_before is None:
        iterations_before = previous.get("iterations")
        if not isinstance(iterations_before, int):
            raise ValueError(
                f"{weights} has no metadata ({weights.with_suffix('.json').name} with "
                "'iterations') next to it: give its cumulative iterations (--iterations-before)"
            )
    seed = iterations_before if seed is None else seed
    config = _train_config(data, out, weights, meta["config"], recipe, budget, threads, seed)
    _check_data(config)
    argv = [sys.executable, "-m", "pyg_lecc.nir.cli", "train"]
    argv += ["--config", str(out / TRAIN_CONFIG_NAME)]
    record = {
        "format": _RECORD_FORMAT,
        "started": now.isoformat(timespec="seconds"),
        "until": until.astimezone().isoformat(timespec="seconds"),
        "margin_s": margin_s,
        "time_budget_s": round(budget),
        "threads": threads,
        "hardware": describe_hardware(),
        "pid": os.getpid(),
        "weights": str(weights),
        "weights_sha256": _sha256(weights),
        "iterations_before": iterations_before,
        "previous_metadata": previous,
        "command": shlex.join(["pyg-lecc", *argv[3:]]),  # its settings: TRAIN_CONFIG_NAME
        "lock": LOCK_NAME,
        "selection": SELECTION_RULE,  # declared before the run, applied by finish
    }
    lock = _create_run(out, record, config)
    if replace_process:
        # An ignored SIGINT (a script's `start ... &`) would stay ignored through exec.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    print(
        f"training {weights} until {until:%Y-%m-%d %H:%M} ({budget / 60:.0f} min, "
        f"{threads} thread(s)) in {out} as pid {os.getpid()}; output in "
        f"{out / OUTPUT_LOG_NAME}. Stop early with: kill -INT {os.getpid()}; then run finish.",
        flush=True,
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "NUMBA_NUM_THREADS": str(threads)}
    with open(out / OUTPUT_LOG_NAME, "ab") as log:
        if not replace_process:
            try:
                done = subprocess.run(
                    argv, env=env, stdout=log, stderr=log, pass_fds=(lock,), check=False
                )
            finally:
                os.close(lock)
            return done.returncode
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        os.execve(argv[0], argv, env)  # the trainer takes this pid: SIGINT reaches it
    raise AssertionError("unreachable")  # pragma: no cover


def _check_data(config: TrainConfig) -> None:
    """Reads what the trainer reads first (the training pairs and the held-out ones), so that
    a bad ``--data`` fails here with its reason rather than in ``train.out``."""
    train_set = PairedImageDataset(config.data, "train", preload=False)
    holdout_indices(train_set, config)


def _create_run(out: Path, record: dict[str, Any], config: TrainConfig) -> int:
    """Creates the run folder with its locked lock file, ``record`` and the trainer's
    ``config``; returns the lock's file descriptor, inheritable so that the trainer holds the
    lock until it ends. On error nothing is left behind."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new folder: nobody else holds it
        os.set_inheritable(lock, True)
        _write_text(out / TRAIN_CONFIG_NAME, json.dumps(config.to_dict(), indent=2) + "\n")
        _write_text(out / RECORD_NAME, json.dumps(record, indent=2) + "\n")
    except BaseException:
        os.close(lock)
        for name in (LOCK_NAME, TRAIN_CONFIG_NAME):
            (out / name).unlink(missing_ok=True)
        if created:
            out.rmdir()
        raise
    return lock


def _lock_held(path: Path) -> bool:
    """Whether a process holds the ``flock`` of ``path`` (a shared probe: two finishes that
    look at the same time do not see each other)."""
    with open(path, "rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False  # closing the file released the probe


def _train_config(
    data: Path,
    out: Path,
    weights: Path,
    arch: dict[str, Any],
    recipe: Recipe,
    budget: float,
    threads: int,
    seed: int,
) -> TrainConfig:
    """The trainer's settings: ``recipe`` from ``weights`` (of architecture ``arch``), for
    ``budget`` seconds with a cosine decay and a bias-corrected average."""
    return TrainConfig(
        data=Path(data).absolute(),
        out=out,
        model=MODEL,
        arch=NIRGNNConfig(**arch),
        init_from=weights,
        schedule="cosine",
        val_split="none",  # the validation images are scored once, by finish
        time_budget=float(round(budget)),
        threads=threads,
        seed=seed,
        progress=False,
        ema_bias_correction=True,
        **dataclasses.asdict(recipe),
    )


def refuse_inside_git(path: Path) -> None:
    """Raises :class:`ValueError` if ``path`` lies in a git work tree (runs stay out of git)."""
    resolved = Path(path).resolve()
    for folder in (resolved, *resolved.parents):
        if (folder / ".git").exists():
            raise ValueError(
                f"the run folder {path} is inside the git work tree {folder}: put runs outside "
                "the repository (e.g. ../runs/NAME), where they cannot be committed by accident"
            )


def describe_hardware() -> str:
    r"""This machine in a few words: CPU model and core count, and the GPUs torch sees.

    Returns:
        str: E.g. ``"2-core Intel(R) Xeon(R) Processor"``.
    """
    cpu = "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{os.cpu_count()}-core {cpu}"
    if torch.cuda.is_available():
        text += f", {torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    return text


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _previous_metadata(weights: Path, meta: dict[str, Any]) -> dict[str, Any]:
    # Kept in the run's record: finish extends it even if the file has changed since. The
    # .json next to the weights, else the training metadata of their header (``meta``).
    path = weights.with_suffix(".json")
    if path.is_file():
        return json.loads(path.read_text())
    return meta.get("training", {})


# --------------------------------------------------------------------------------------------
# finish
# --------------------------------------------------------------------------------------------

_Pairs = list[tuple[str, Any, Any]]  # (name, NIR image, RGB image)

LEDGER_COLUMNS = (
    "date (UTC)",
    "run",
    "hardware",
    "threads",
    "iterations",
    "cumulative iterations",
    "wall time",
    "held-out PSNR / SSIM (selected)",
    "held-out PSNR / SSIM (shipped before)",
    "validation PSNR / SSIM / AE deg / AE img rad",
    "shipped",
)


def finish(
    run: Path,
    weights_dir: Path,
    model_card: Path,
    *,
    figure: Path | None = None,
    figure_script: Path | None = None,
    data: Path | None = None,
    threads: int = 1,
    now: datetime | None = None,
) -> dict[str, Any]:
    r"""Picks a stopped run's weights, ships them if they beat ``weights_dir``'s, and records it.

    Run folders of older versions of :func:`start` (the trainer's options in the recorded
    command, a checkpoint of an older :class:`~pyg_lecc.nir.training.TrainConfig` form) are
    read as what they ran (:func:`~pyg_lecc.nir.training.stored_settings`).

    Args:
        run (Path): A run folder of :func:`start` whose trainer has stopped.
        weights_dir (Path): Folder of the shipped ``nir-gnn.safetensors``, ``nir-gnn.json``
            and ``nir-gnn.log.jsonl``.
        model_card (Path): The model card (Markdown) whose training ledger gets a row.
        figure (Path, optional): The README figure to draw again when the weights are
            replaced (:obj:`None`: not drawn). (default: :obj:`None`)
        figure_script (Path, optional): ``examples/nir_colorize.py``, which draws it.
            (default: :obj:`None`)
        data (Path, optional): The data set, if not where the run read it.
            (default: :obj:`None`)
        threads (int, optional): CPU threads of the evaluation (and of the figure's
            process). (default: :obj:`1`)
        now (datetime, optional): The current time (:obj:`None`: the clock's).
            (default: :obj:`None`)

    Returns:
        ``selected`` (``"raw"`` or ``"ema"``), ``holdout`` (held-out metrics of each
        candidate), ``shipped_holdout``, ``validation`` (of the selected weights),
        ``shipped`` (whether they replaced the shipped ones), ``iterations``,
        ``cumulative_iterations``, ``weights`` (their copy in the run folder) and ``row``
        (the ledger row).

    Raises:
        ValueError: The run folder is not a stopped run of :func:`start`, its trainer still
            runs, or it is finished already.
    """
    run = Path(run).resolve()  # one spelling of the folder, whatever link named it
    record = _read_record(run)
    weights = run / f"{MODEL}.safetensors"
    if weights.with_suffix(".json").exists():
        raise ValueError(
            f"{run} is finished already ({weights.with_suffix('.json').name}); delete it to "
            "finish it again (the ledger would get a second row)"
        )
    if not (run / CHECKPOINT_NAME).is_file():
        raise ValueError(
            f"{run} has no {CHECKPOINT_NAME}: its trainer stopped before its first checkpoint "
            f"(interrupted or failed, see {run / OUTPUT_LOG_NAME}), so there is nothing to "
            "finish; start a new run"
        )
    ckpt = load_checkpoint(run / CHECKPOINT_NAME)
    config = _run_config(ckpt, run, data)
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        held_out, validation, train_set = _evaluation_data(config)
        candidates = _candidates(ckpt, config, train_set)
        scores = {label: _score(model, held_out) for label, model in candidates.items()}
        rank = _selection_rule(record)
        label = max(scores, key=lambda name: rank(scores[name]))
        shipped_path = Path(weights_dir) / f"{MODEL}.safetensors"
        before = _score(model_from_weights(shipped_path)[0], held_out)
        val = _score(candidates[label], validation)
    finally:
        torch.set_num_threads(saved_threads)
    ship = rank(scores[label]) > rank(before)
    now = (now or datetime.now().astimezone()).astimezone()
    meta = _metadata(record, ckpt, config, candidates[label], label, scores[label], val, ship, now)
    save_weights(candidates[label], MODEL, weights, training=meta)
    _write_text(weights.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    if ship:
        atomic_copy(weights, shipped_path)
        _write_text(shipped_path.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
        _append_run_log(shipped_path.with_suffix(".log.jsonl"), run)
    row = _ledger_row(meta, scores[label], label, before, now, run.name, ship)
    append_ledger_row(Path(model_card), row)
    if ship and figure is not None:
        if figure_script is None:
            raise ValueError("drawing the figure needs figure_script (examples/nir_colorize.py)")
        cnn = Path(weights_dir) / "cnn.safetensors"
        regenerate_figure(figure, figure_script, shipped_path, cnn, threads)
    return {
        "selected": label,
        "holdout": scores,
        "shipped_holdout": before,
        "validation": val,
        "shipped": ship,
        "iterations": int(ckpt["iteration"]),
        "cumulative_iterations": meta["iterations"],
        "weights": str(weights),
        "row": row,
    }


def _read_record(run: Path) -> dict[str, Any]:
    path = run / RECORD_NAME
    if not path.is_file():
        raise ValueError(f"{run} is not a run folder of `start`: it has no {RECORD_NAME}")
    try:
        record = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a valid run record: {err}") from err
    if not isinstance(record, dict) or record.get("format") != _RECORD_FORMAT:
        raise ValueError(f"{path} is not a run record of `start` ({_RECORD_FORMAT})")
    missing = [key for key in _RECORD_KEYS if key not in record]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: it is not a complete run record")
    if _trainer_alive(run, record["pid"]):
        raise ValueError(
            f"the trainer of {run} still runs (pid {record['pid']}): stop it with "
            f"kill -INT {record['pid']}, wait until it has exited, then finish"
        )
    # The trainer's settings: runs of older starts have none (their options are in "command").
    settings = run / TRAIN_CONFIG_NAME
    return (
        {**record, "train_config": json.loads(settings.read_text())}
        if settings.is_file()
        else record
    )


def _trainer_alive(run: Path, pid: Any) -> bool:
    """Whether the trainer of ``run`` (resolved) still runs: its lock, else (a run folder of
    an older start) a live ``pid`` with the folder among its arguments (pids are reused)."""
    if (run / LOCK_NAME).is_file():
        return _lock_held(run / LOCK_NAME)
    try:  # Linux
        args = Path(f"/proc/{int(pid)}/cmdline").read_bytes().split(b"\0")
    except (OSError, TypeError, ValueError):
        return False
    paths = (Path(os.fsdecode(arg)) for arg in args)
    return any(path.is_absolute() and path.resolve() == run for path in paths)


def _run_config(ckpt: dict[str, Any], run: Path, data: Path | None) -> TrainConfig:
    """The configuration the run's trainer had (in whichever form its version stored it),
    evaluated here on the CPU; ``data`` if given replaces the stored folder."""
    changes: dict[str, Any] = dict(
        out=run, init_from=None, resume=False, device="cpu", threads=None
    )
    if data is not None:
        changes["data"] = data
    return TrainConfig.from_dict(ckpt["config"], run / CHECKPOINT_NAME, **changes)


def _evaluation_data(config: TrainConfig) -> tuple[_Pairs, _Pairs, PairedImageDataset]:
    """The held-out pairs, the validation pairs and the training pairs of the run; the
    training and held-out pairs registered as the run's trainer had them (``register``)."""
    every = PairedImageDataset(config.data, "train", preload=False, register=config.register)
    if not config.holdout and config.holdout_pairs is None:
        raise ValueError("the run held out no training pairs: nothing to select on")
    held = holdout_indices(every, config)
    kept = sorted(set(range(len(every))) - set(held))
    held_out = [_as_arrays(*every[i]) for i in held]
    validation = [(pair.name, *load_pair(pair)) for pair in find_pairs(config.data, "validation")]
    return held_out, validation, every.subset(kept)


def _as_arrays(nir: torch.Tensor, rgb: torch.Tensor, name: str) -> tuple[str, Any, Any]:
    # A dataset item as load_pair gives images: (H, W) NIR and (H, W, 3) RGB arrays.
    return name, nir[0].numpy(), rgb.permute(1, 2, 0).numpy()


def selection_score(metrics: dict[str, float]) -> float:
    r"""The held-out score by which :func:`finish` selects and ships weights: PSNR and SSIM,
    each in units of what one doubling of the training iterations gained on the held-out
    pairs of the shipped lineage (:data:`PSNR_PER_DOUBLING`, :data:`SSIM_PER_DOUBLING`).

    .. math::
        s = \frac{\mathrm{PSNR}}{0.30\ \mathrm{dB}} + \frac{\mathrm{SSIM}}{0.015}

    Declared before the runs it judges and applied to held-out scores only.

    Example:
        >>> round(selection_score({"psnr": 17.0, "ssim": 0.50}), 2)
        90.0
    """
    return metrics["psnr"] / PSNR_PER_DOUBLING + metrics["ssim"] / SSIM_PER_DOUBLING


def _selection_rule(record: dict[str, Any]) -> Callable[[dict[str, float]], float]:
    # The rule the run declared when it started; runs started before rules were recorded
    # were judged by held-out PSNR alone.
    rules = {"psnr": lambda metrics: metrics["psnr"], SELECTION_RULE: selection_score}
    return rules[record.get("selection", "psnr")]


def _candidates(
    ckpt: dict[str, Any], config: TrainConfig, train_set: PairedImageDataset
) -> dict[str, NIRGNN]:
    """The last raw weights and, with an average, the averaged ones with BatchNorm statistics
    recomputed on the trainer's own batches (what it exports)."""
    candidates = {"raw": _model(config, ckpt["model"])}
    if ckpt.get("ema") is not None:
        prefix = "module."
        state = {k[len(prefix) :]: v for k, v in ckpt["ema"].items() if k.startswith(prefix)}
        averaged = _model(config, state)
        update_bn(bn_recalibration_batches(train_set, config), averaged)
        candidates["ema"] = averaged
    return candidates


def _model(config: TrainConfig, state: dict[str, Any]) -> NIRGNN:
    net = build_model(config)
    net.load_state_dict(state)
    return net.eval()


def _score(model: NIRGNN, pairs: _Pairs) -> dict[str, float]:
    """Mean metrics as ``pyg-lecc evaluate`` computes them (``colorize``'s defaults: 256x256
    images whole, 49x49 window)."""
    per_image = [evaluate_pair(colorize(model, nir), rgb) for _, nir, rgb in pairs]
    return summarize(per_image)


def _rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {key: round(float(metrics[key]), 4) for key in METRIC_KEYS}


def _metadata(
    record: dict[str, Any],
    ckpt: dict[str, Any],
    config: TrainConfig,
    model: NIRGNN,
    label: str,
    held: dict[str, float],
    val: dict[str, float],
    shipped: bool,
    now: datetime,
) -> dict[str, Any]:
    """The weights' metadata, in the format of the shipped ``nir-gnn.json``, with this run
    appended to its ``lineage``."""
    previous = record["previous_metadata"]
    iterations, elapsed = int(ckpt["iteration"]), float(ckpt["elapsed"])
    entry = {
        "date": now.isoformat(timespec="seconds"),
        "run": str(Path(config.out)),
        "hardware": record["hardware"],
        "threads": record["threads"],
        "init_from_sha256": record["weights_sha256"],
        "iterations": iterations,
        "wall_time_s": round(elapsed, 1),
        "command": record["command"],
        # The trainer's settings (runs of an older start have their options in "command").
        **({"train_config": record["train_config"]} if "train_config" in record else {}),
        "selected": label,
        "holdout": _rounded(held),
        "validation": _rounded(val),
        "shipped": shipped,
    }
    return {
        **previous,
        "model": MODEL,
        "config": model.config(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "command": record["command"],
        "iterations": int(record["iterations_before"]) + iterations,
        "batch_size": config.batch_size,
        "patch": config.patch,
        "training_time_s": round(float(previous.get("training_time_s", 0.0)) + elapsed, 1),
        "hardware": record["hardware"],
        "validation": _rounded(val),
        "holdout": {"pairs": config.holdout_pairs or f"seed {config.seed}", **_rounded(held)},
        "lineage": [*previous.get("lineage", []), entry],
    }


def _write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(text))


def _append_run_log(path: Path, run: Path) -> None:
    """Appends the run's training log to the shipped one, each line tagged with the run."""
    lines = []
    for line in (run / LOG_NAME).read_text().splitlines():
        if line.strip():
            lines.append(json.dumps({**json.loads(line), "run": run.name}) + "\n")
    with open(path, "a") as f:
        f.writelines(lines)


def _ledger_row(
    meta: dict[str, Any],
    held: dict[str, float],
    label: str,
    before: dict[str, float],
    now: datetime,
    run_name: str,
    shipped: bool,
) -> str:
    entry = meta["lineage"][-1]
    val = meta["validation"]
    cells = [
        # timezone.utc: Python 3.10 (setup.cfg) has no datetime.UTC
        now.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M"),  # noqa: UP017
        run_name,
        entry["hardware"],
        str(entry["threads"]),
        f"{entry['iterations']:,}",
        f"{meta['iterations']:,}",
        f"{entry['wall_time_s'] / 60:.0f} min",
        f"{held['psnr']:.2f} / {held['ssim']:.3f} ({'EMA' if label == 'ema' else 'raw'})",
        f"{before['psnr']:.2f} / {before['ssim']:.3f}",
        f"{val['psnr']:.2f} / {val['ssim']:.3f} / {val['ae_deg']:.2f} / {val['ae_img_rad']:.3f}",
        "yes" if shipped else "no",
    ]
    return "| " + " | ".join(cells) + " |"


def append_ledger_row(model_card: Path, row: str) -> None:
    r"""Appends ``row`` to the table under :data:`LEDGER_HEADING` in ``model_card`` (the
    section and its table are added at the end if missing), atomically.

    Args:
        model_card (Path): The model card (Markdown).
        row (str): One Markdown table row, ``| ... |``.
    """
    lines = model_card.read_text().splitlines() if model_card.is_file() else []
    header = ["| " + " | ".join(LEDGER_COLUMNS) + " |", "|" + "---|" * len(LEDGER_COLUMNS)]
    if LEDGER_HEADING not in lines:
        lines += ["", LEDGER_HEADING, "", *header]
        at = len(lines)
    else:
        heading = lines.index(LEDGER_HEADING)
        section_end = next(
            (i for i in range(heading + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        table = [i for i in range(heading + 1, section_end) if lines[i].startswith("|")]
        if table:
            at = table[-1] + 1
        else:
            lines[heading + 1 : heading + 1] = ["", *header]
            at = heading + 1 + len(header) + 1
    lines.insert(at, row)
    _write_text(model_card, "\n".join(lines) + "\n")


def regenerate_figure(
    figure: Path, script: Path, gnn_weights: Path, cnn_weights: Path, threads: int
) -> None:
    r"""Draws the README figure again with ``script`` (``examples/nir_colorize.py``).

    Args:
        figure (Path): The figure to replace.
        script (Path): The example that draws it.
        gnn_weights (Path): NIR-GNN weights to show.
        cnn_weights (Path): CNN weights to show.
        threads (int): CPU threads of the script.

    Raises:
        ValueError: The script failed (its output went to this process's); the message
            says what was updated and what was not.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "NUMBA_NUM_THREADS": str(threads)}
    cnn = str(cnn_weights) if Path(cnn_weights).is_file() else "default"
    with tempfile.TemporaryDirectory() as tmp:
        argv = [sys.executable, str(script), "--out", tmp, "--gnn-weights", str(gnn_weights)]
        done = subprocess.run([*argv, "--cnn-weights", cnn], env=env, check=False)
        if done.returncode != 0:
            raise ValueError(
                f"{script} failed (exit {done.returncode}): the weights and the ledger are "
                f"updated, the figure {figure} is not; run it again by hand"
            )
        figure.parent.mkdir(parents=True, exist_ok=True)
        atomic_copy(Path(tmp) / "comparison.png", Path(figure))


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser(root: Path | None = None) -> argparse.ArgumentParser:
    r"""The parser of ``train_continue.py`` (sub-commands ``start`` and ``finish``).

    Args:
        root (Path, optional): The repository, whose README figure
            (``docs/_static/comparison.png``) is ``finish``'s default ``--figure``
            (:obj:`None`: no figure unless given). (default: :obj:`None`)
    """
    shipped = default_weights_path(MODEL)
    parser = argparse.ArgumentParser(
        prog="train_continue.py",
        description="Continue the training of NIR-GNN until a stop time (start), then pick, "
        "ship and record its weights (finish).",
    )
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("start", help="continue the latest weights until a stop time")
    p.add_argument("--data", type=Path, required=True, help="data set folder")
    p.add_argument("--out", type=Path, required=True, help="new run folder, outside git")
    p.add_argument("--until", required=True, help="stop time: HH:MM or an ISO date and time")
    p.add_argument("--threads", type=_positive_int, required=True, help="CPU threads")
    p.add_argument("--weights", type=Path, default=shipped, help=f"(default: {shipped})")
    p.add_argument("--iterations-before", type=int, help="cumulative iterations of --weights")
    p.add_argument(
        "--margin",
        type=float,
        default=DEFAULT_MARGIN_S / 60,
        help="minutes kept before the stop time for the final validation and finish "
        f"(default: {DEFAULT_MARGIN_S / 60:g})",
    )
    p.add_argument("--seed", type=int, help="patch sampler seed (default: --iterations-before)")
    for name, value in vars(Recipe()).items():
        if name != "holdout_pairs":
            flag = f"--{name.replace('_', '-')}"
            p.add_argument(flag, type=type(value), default=value, help=f"(default: {value:g})")
    p = sub.add_parser("finish", help="pick, ship if better, and record a stopped run")
    p.add_argument("run", type=Path, metavar="RUN_DIR")
    p.add_argument("--data", type=Path, help="data set folder (default: the run's)")
    p.add_argument("--weights-dir", type=Path, default=shipped.parent)
    p.add_argument("--model-card", type=Path, help="(default: WEIGHTS_DIR/MODEL_CARD.md)")
    figure = None if root is None else root / "docs" / "_static" / "comparison.png"
    p.add_argument("--figure", type=Path, default=figure, help=f"(default: {figure})")
    p.add_argument("--no-figure", action="store_true", help="do not draw the figure again")
    p.add_argument("--threads", type=_positive_int, default=1, help="(default: 1)")
    p.set_defaults(root=root)
    return parser


def main(argv: list[str] | None = None, root: Path | None = None) -> int:
    r"""Runs ``start`` or ``finish`` from the command line.

    Args:
        argv (list[str], optional): The arguments (:obj:`None`: :data:`sys.argv`).
            (default: :obj:`None`)
        root (Path, optional): The repository (see :func:`build_parser`).
            (default: :obj:`None`)

    Returns:
        int: 0 (``start`` returns only when it did not become the trainer), or 2 on bad
        input.
    """
    args = build_parser(root).parse_args(argv)
    if args.step == "finish":
        limit_numba_threads(args.threads)  # this process evaluates: no idle worker spinning
    try:
        if args.step == "start":
            recipe = Recipe(**{k: getattr(args, k) for k in vars(Recipe()) if hasattr(args, k)})
            start(
                args.data,
                args.out,
                parse_deadline(args.until),
                args.threads,
                weights=args.weights,
                margin_s=args.margin * 60,
                recipe=recipe,
                seed=args.seed,
                iterations_before=args.iterations_before,
            )
            return 0
        result = finish(
            args.run,
            args.weights_dir,
            args.model_card or args.weights_dir / "MODEL_CARD.md",
            figure=None if args.no_figure else args.figure,
            figure_script=None if root is None else root / "examples" / "nir_colorize.py",
            data=args.data,
            threads=args.threads,
        )
    except (OSError, ValueError) as err:
        print(f"train_continue.py: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(_report(result))
    return 0


def _psnr_ssim(metrics: dict[str, float]) -> str:
    return f"PSNR {metrics['psnr']:.3f} dB, SSIM {metrics['ssim']:.4f}"


def _report(result: dict[str, Any]) -> str:
    lines = [f"{label}: held-out {_psnr_ssim(m)}" for label, m in result["holdout"].items()]
    lines.append(f"shipped weights: held-out {_psnr_ssim(result['shipped_holdout'])}")
    val = result["validation"]
    lines.append(
        f"selected {result['selected']} ({result['weights']}): validation PSNR "
        f"{val['psnr']:.3f} dB, SSIM {val['ssim']:.4f}; "
        + ("shipped" if result["shipped"] else "not shipped (no better on the held-out pairs)")
    )
    lines.append(f"ledger row: {result['row']}")
    return "\n".join(lines)
