"""Colorize near-infrared images with NIR-GNN and the CNN baseline, side by side.

With no arguments, colorizes the four sample NIR images bundled with ``pyg_lecc`` (VCIP 2020
validation pairs 0000, 0004, 0013 and 0016; the last three are the paper's figures 2-4) with
the shipped default weights of both models, and writes into ``nir_colorize_out/``:

- ``nir-gnn/<name>.png`` and ``cnn/<name>.png``: the colorized images;
- ``comparison.png``: one row per image, columns NIR | CNN | NIR-GNN | ground truth.

It also prints PSNR, SSIM and the two angular errors of both models (per image and mean).

Usage::

    python examples/nir_colorize.py
    python examples/nir_colorize.py --data ../shared/data/vcip2020 --split validation \\
        --out vcip_val_out --overwrite

Needs matplotlib (``pip install pyg-lecc[plot]``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt
import numpy as np

from pyg_lecc.nir.data import ImagePair, find_pairs, load_pair, write_rgb_png
from pyg_lecc.nir.inference import colorize, load_model, sample_pairs
from pyg_lecc.nir.metrics import METRIC_KEYS, evaluate_pair, summarize

PROG = "nir_colorize.py"
MODELS = ("cnn", "nir-gnn")  # column order of the figure
TITLES = {"cnn": "CNN", "nir-gnn": "NIR-GNN"}
HEADERS = {"psnr": "PSNR [dB]", "ssim": "SSIM", "ae_deg": "AE [deg]", "ae_img_rad": "AE [rad]"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, metavar="DIR", help="evaluate this data set instead of the samples"
    )
    parser.add_argument("--split", default="validation", help="split of --data (validation)")
    parser.add_argument("--out", type=Path, default=Path("nir_colorize_out"), help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--gnn-weights", default="default", metavar="PATH|default")
    parser.add_argument("--cnn-weights", default="default", metavar="PATH|default")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def print_table(title: str, rows: list[dict[str, float | str]], mean: dict[str, float]) -> None:
    """Print per-image metrics and their mean as a fixed-width table."""
    width = max(4, *(len(str(r["name"])) for r in rows))
    print(f"\n{title}")
    print(f"{'image':<{width}}  " + "  ".join(f"{HEADERS[k]:>9}" for k in METRIC_KEYS))
    for row in [*rows, {"name": "mean", **mean}]:
        cells = "  ".join(f"{float(row[k]):>9.4f}" for k in METRIC_KEYS)
        print(f"{row['name']:<{width}}  {cells}")


def comparison_figure(
    path: Path,
    pairs: list[ImagePair],
    nirs: list[np.ndarray],
    truths: list[np.ndarray],
    preds: dict[str, list[np.ndarray]],
) -> None:
    """Save a grid: one row per image, columns NIR | CNN | NIR-GNN | ground truth."""
    columns = ["NIR", *(TITLES[m] for m in MODELS), "ground truth"]
    fig, axes = plt.subplots(
        len(pairs), len(columns), figsize=(3 * len(columns), 3 * len(pairs)), squeeze=False
    )
    for i, pair in enumerate(pairs):
        images = [nirs[i], *(preds[m][i] for m in MODELS), truths[i]]
        for j, (ax, img) in enumerate(zip(axes[i], images, strict=True)):
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(columns[j])
            if j == 0:
                ax.set_ylabel(pair.name)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace) -> None:
    pairs = sample_pairs() if args.data is None else find_pairs(args.data, args.split)
    out = args.out.resolve()
    figure = out / "comparison.png"
    outputs = {m: [out / m / f"{p.name}.png" for p in pairs] for m in MODELS}
    # Refuse before any work, so that nothing is half replaced.
    for path in [figure, *(p for paths in outputs.values() for p in paths)]:
        if path.exists() and not args.overwrite:
            raise FileExistsError(f"{path} already exists (pass --overwrite to replace it)")
    weights = {"nir-gnn": args.gnn_weights, "cnn": args.cnn_weights}
    models = {m: load_model(weights[m], m, args.device)[0] for m in MODELS}
    print(f"{len(pairs)} images; outputs in {out}")

    nirs, truths = [], []
    for pair in pairs:
        nir, rgb = load_pair(pair)
        nirs.append(nir)
        truths.append(rgb)
    preds: dict[str, list[np.ndarray]] = {m: [] for m in MODELS}
    rows: dict[str, list[dict[str, float | str]]] = {m: [] for m in MODELS}
    for m in MODELS:
        for pair, nir, rgb, dst in zip(pairs, nirs, truths, outputs[m], strict=True):
            start = time.perf_counter()
            # The default tiles run a 256x256 (VCIP-size) image whole; larger ones are tiled.
            pred = colorize(models[m], nir, device=args.device)
            seconds = time.perf_counter() - start
            write_rgb_png(dst, pred, overwrite=args.overwrite)
            preds[m].append(pred)
            rows[m].append({"name": pair.name, **evaluate_pair(pred, rgb)})
            print(f"  {TITLES[m]:<8} {pair.name}: {seconds:.1f} s", flush=True)

    for m in MODELS:
        print_table(f"{TITLES[m]} ({weights[m]})", rows[m], summarize(rows[m]))  # type: ignore[arg-type]
    comparison_figure(figure, pairs, nirs, truths, preds)
    print(f"\nwrote {figure} and the colorized images in {out}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (OSError, ValueError) as err:  # missing weights or data, existing outputs...
        print(f"{PROG}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
