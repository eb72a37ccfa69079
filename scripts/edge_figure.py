"""Before/after figure of two NIR-GNN weights on strong edges of the bundled samples.

Made for the registration of the training pairs (docs, "Registered training pairs"): weights
trained on misregistered targets learn to blur and to draw colour fringes at edges, so the
figure compares two weights files on the same crops. The crop of each sample is chosen by a
fixed rule, not by eye: the ``--crop`` x ``--crop`` window with the largest sum of the
ground-truth RGB gradient magnitude (Sobel, mean over channels). Besides the figure, the
script prints, per sample and model, the PSNR of the whole image and the PSNR over its edge
pixels (the top ``--edge-quantile`` of that gradient magnitude), where fringes cost most.

Run from the repository root (writes only ``--out``)::

    python scripts/edge_figure.py --before default --after runs/f24-s6/selected.safetensors \\
        --out docs/_static/registration_edges.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from skimage.filters import sobel

from pyg_lecc.nir.data import load_pair
from pyg_lecc.nir.inference import colorize, load_model, sample_pairs
from pyg_lecc.nir.metrics import psnr


def edge_strength(rgb: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude of an ``(H, W, 3)`` image, averaged over the channels."""
    return np.mean([sobel(rgb[..., c]) for c in range(rgb.shape[-1])], axis=0)


def strongest_window(strength: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner ``(y, x)`` of the ``size`` x ``size`` window with the largest sum of
    ``strength`` (the first one in row-major order on ties)."""
    height, width = strength.shape
    if size > min(height, width):
        raise ValueError(f"crop {size} is larger than the image ({height}x{width})")
    # Window sums from a summed-area table: one pass, no loop over windows.
    table = np.pad(strength, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    sums = table[size:, size:] - table[:-size, size:] - table[size:, :-size] + table[:-size, :-size]
    y, x = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(y), int(x)


def edge_psnr(pred: np.ndarray, target: np.ndarray, strength: np.ndarray, quantile: float) -> float:
    """PSNR over the pixels whose edge strength is at least its ``quantile``."""
    mask = strength >= np.quantile(strength, quantile)
    # The selected pixels as a 1-row image: the project's PSNR, with its checks.
    return psnr(pred[mask][None], target[mask][None])


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="default", help="weights file, or 'default'")
    parser.add_argument("--after", required=True, help="weights file")
    parser.add_argument("--out", type=Path, required=True, help="figure (PNG) to write")
    parser.add_argument("--crop", type=int, default=64, help="crop side in pixels")
    parser.add_argument("--edge-quantile", type=float, default=0.9)
    parser.add_argument("--labels", nargs=2, default=("before", "after"), metavar=("B", "A"))
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args = _parse(argv)
    if args.out.exists():
        raise FileExistsError(f"--out {args.out} exists; remove it or choose another name")
    torch.set_num_threads(args.threads)
    models = [load_model(w)[0] for w in (args.before, args.after)]
    pairs = sample_pairs()
    fig, axes = plt.subplots(len(pairs), 4, figsize=(8, 2.1 * len(pairs)), squeeze=False)
    print(f"{'sample':<18} {'model':<8} {'PSNR':>7} {'edge PSNR':>10}")
    for row, pair in zip(axes, pairs, strict=True):
        nir, rgb = load_pair(pair)
        strength = edge_strength(rgb)
        y, x = strongest_window(strength, args.crop)
        window = (slice(y, y + args.crop), slice(x, x + args.crop))
        panels = [(np.repeat(nir[..., None], 3, -1), f"{pair.name}\nNIR")]
        for label, model in zip(args.labels, models, strict=True):
            pred = colorize(model, nir)
            scores = psnr(pred, rgb), edge_psnr(pred, rgb, strength, args.edge_quantile)
            print(f"{pair.name:<18} {label:<8} {scores[0]:7.2f} {scores[1]:10.2f}")
            panels.append((pred, f"{label}\nedge PSNR {scores[1]:.2f} dB"))
        panels.append((rgb, "ground truth"))
        for ax, (image, title) in zip(row, panels, strict=True):
            ax.imshow(np.clip(image[window], 0.0, 1.0), interpolation="nearest")
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
