"""One process of :mod:`benchmarks.commits`: times NIR-GNN training iterations with whatever
``pyg_lecc`` is first on ``PYTHONPATH`` (one revision's ``src``) and prints the seconds of
each timed iteration as one JSON line.

Run by path (``python benchmarks/commit_worker.py ...``), not as part of the ``benchmarks``
package, so that it imports nothing of this checkout but what it is pointed at, and only
what every revision since the start of the F=24 work provides: ``nir_gnn`` (from
``pyg_lecc.nir.hub``, or ``pyg_lecc.models`` before the package split).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F

try:
    from pyg_lecc.nir.hub import nir_gnn
except ImportError:  # revisions before the package split
    from pyg_lecc.models import nir_gnn


def _patch_source(data: Path | None, patch: int, rng: np.random.Generator):
    # Random patches of the training NIR images (every tenth), or uniform noise without them.
    files = sorted(data.glob("*_nir.png"))[::10] if data is not None else []
    images = [iio.imread(f).astype(np.float32) / 255 for f in files]

    def crop() -> np.ndarray:
        if not images:
            return rng.random((patch, patch), dtype=np.float32)
        img = images[rng.integers(len(images))]
        y, x = rng.integers(0, img.shape[0] - patch), rng.integers(0, img.shape[1] - patch)
        return img[y : y + patch, x : x + patch]

    return crop


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--iterations", type=int, required=True)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--nir-dir", type=Path, default=None)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--patch", type=int, default=42)
    p.add_argument("--features", type=int, default=24)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--layers-per-block", type=int, default=3)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # the same initial weights in every revision and round
    model = nir_gnn(
        features=args.features, rank=args.rank, k=8, layers_per_block=args.layers_per_block
    ).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    crop = _patch_source(args.nir_dir, args.patch, np.random.default_rng(args.seed))
    times = []
    for i in range(args.warmup + args.iterations):
        nir = torch.from_numpy(np.stack([crop() for _ in range(args.batch)]))[:, None]
        target = nir.expand(-1, 3, -1, -1)
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.mse_loss(model(nir), target).backward()
        opt.step()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    print(json.dumps(times))


if __name__ == "__main__":
    main()
