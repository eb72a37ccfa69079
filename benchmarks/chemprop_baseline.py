"""chemprop (D-MPNN, the field's standard message-passing baseline) on exactly the splits of
:mod:`benchmarks.molecules`, through its own command line.

chemprop pins its own dependencies (lightning, a recent RDKit), so it runs from a separate
environment, e.g.::

    python3.11 -m venv ../venv-chemprop
    ../venv-chemprop/bin/pip install torch==2.13.0 chemprop
    python -m benchmarks.chemprop_baseline --chemprop ../venv-chemprop/bin/chemprop

For every split and seed this writes the train / validation / test molecules as CSV files
(SMILES and target, from :func:`pyg_lecc.chem.molecules.load_molecules`), runs ``chemprop train``
on the three files with its default model and schedule, the same number of epochs as the
MPNN runs and the seed as ``--pytorch-seed``, and computes the test RMSE from chemprop's
``test_predictions.csv`` (its model of best validation loss). Results go to
``chemprop.json``; ``molecules.md`` is re-rendered with a chemprop row when
``molecules.json`` is in the same folder.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks import molecules
from benchmarks.common import collect_metadata, log, write_json
from pyg_lecc.chem.molecules import SPLITS, load_split


def write_split_csvs(sets: Sequence[Sequence[Any]], folder: Path) -> list[Path]:
    """``train.csv``, ``val.csv`` and ``test.csv`` (columns ``smiles``, ``y``)."""
    paths = []
    for name, graphs in zip(("train", "val", "test"), sets, strict=True):
        path = folder / f"{name}.csv"
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["smiles", "y"])
            writer.writerows([g.smiles, repr(float(g.y))] for g in graphs)
        paths.append(path)
    return paths


def rmse_from_predictions(truth_csv: Path, predictions_csv: Path) -> float:
    """RMSE between the ``y`` columns of two CSV files with the same rows in the same order."""
    with truth_csv.open() as f:
        truth = [(row["smiles"], float(row["y"])) for row in csv.DictReader(f)]
    with predictions_csv.open() as f:
        preds = [(row["smiles"], float(row["y"])) for row in csv.DictReader(f)]
    if [s for s, _ in truth] != [s for s, _ in preds]:
        raise ValueError(f"{predictions_csv} does not list the molecules of {truth_csv} in order")
    errors = [(p - t) ** 2 for (_, t), (_, p) in zip(truth, preds, strict=True)]
    return math.sqrt(statistics.fmean(errors))


def run_chemprop(chemprop: str, csvs: list[Path], out: Path, epochs: int, seed: int) -> float:
    """One ``chemprop train`` run; returns the test RMSE."""
    command = [
        chemprop, "train", "--data-path", *map(str, csvs), "-s", "smiles",
        "--target-columns", "y", "--task-type", "regression", "--epochs", str(epochs),
        "--pytorch-seed", str(seed), "--accelerator", "cpu", "--devices", "1",
        "--num-workers", "0", "--output-dir", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"chemprop failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return rmse_from_predictions(csvs[2], out / "model_0" / "test_predictions.csv")


def run(cfg: molecules.Config, chemprop: str) -> dict[str, Any]:
    version = subprocess.run([chemprop, "--version"], capture_output=True, text=True)
    result: dict[str, Any] = {"chemprop": version.stdout.strip(), "splits": {}}
    for name in cfg.splits:
        seeds, epochs = cfg.schedule(name)
        rmse, times = [], []
        for seed in seeds:
            with tempfile.TemporaryDirectory() as tmp:
                csvs = write_split_csvs(load_split(name, seed, limit=cfg.max_molecules), Path(tmp))
                start = time.perf_counter()
                rmse.append(run_chemprop(chemprop, csvs, Path(tmp) / "out", epochs, seed))
                times.append(time.perf_counter() - start)
            log(f"  chemprop {name} seed {seed}: test RMSE {rmse[-1]:.3f} ({times[-1]:.0f} s)")
        result["splits"][name] = {
            "seeds": list(seeds),
            "epochs": epochs,
            "test_rmse": rmse,
            "test_rmse_mean": statistics.fmean(rmse),
            "test_rmse_std": statistics.stdev(rmse) if len(rmse) > 1 else 0.0,
            "run_time_s": times,
        }
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="chemprop on the molecule benchmark's splits")
    parser.add_argument("--chemprop", default="chemprop", help="the chemprop executable")
    parser.add_argument("--quick", action="store_true", help="smoke test (3 epochs)")
    parser.add_argument("--splits", default=",".join(SPLITS))
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results")
    args = parser.parse_args(argv)
    splits = tuple(args.splits.split(","))
    cfg = molecules.Config.quick(splits=splits) if args.quick else molecules.Config(splits=splits)
    out = args.out or (molecules.DEFAULT_OUT / "quick" if args.quick else molecules.DEFAULT_OUT)
    out.mkdir(parents=True, exist_ok=True)
    metadata = collect_metadata(
        quick=args.quick, device=torch.device("cpu"), seed=0,
        argv=sys.argv if argv is None else ["chemprop_baseline", *argv],
    )  # fmt: skip
    write_json(out / "chemprop.json", {"metadata": metadata, "chemprop": run(cfg, args.chemprop)})
    molecules.render(out)
    log(f"wrote {out / 'chemprop.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
