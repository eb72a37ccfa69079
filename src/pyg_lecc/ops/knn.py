r"""CPU kernel of the windowed k-nearest-neighbour search of
:func:`pyg_lecc.image_knn_graph` (``backend="numba"``, what ``"auto"`` runs on CPU).

Where the plain torch path's time went (profile, 256x256, F=99, 49x49 window, 2 threads):
``bmm`` 35%, the ``index`` gathers of query and candidate rows 26%, ``topk`` 15%,
``masked_fill_`` 15%, mask building and sorts the rest: several passes over a 64 MB block
per tile, and a ``bmm`` of one ``256 x 100 x 4096`` product that ran at a third of the rate
of the same arithmetic split into one product per region row.

Here, per tile of 16x16 query pixels:

* the ranking distances ``||c||^2 - 2 q.c`` (the torch path's, as ``[-2q, 1] . [c,
  ||c||^2]``) come from one batched product over the region's rows, read in place from the
  strided node tensor (no gathered copy), giving a ``(region rows, queries, region
  columns)`` block of about 4 MB;
* one compiled pass over it then selects: each query reads only its own window, skips its
  excluded neighbourhood by coordinates and keeps a ``k``-long list sorted by (distance,
  node index) by insertion. No mask, no ``topk``, no sort is written.

Why BLAS keeps the distances: a Numba loop computing them itself (loop-vectorised and
register-blocked variants) reached 0.14-0.2x the BLAS rate on this CPU. The block of a tile
is therefore still written once, to the cache rather than to a 64 MB buffer.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from numba import njit
from torch import Tensor

from pyg_lecc.ops.checks import check_knn_window

# Side of the square query tiles (see knn_in_windows).
_TILE = 16


@njit(nogil=True, cache=True)
def _select_in_windows(dist, k, radius, qy0, qx0, ry0, rx0, height, width, sh, sw, out):
    # dist: (region rows, queries, region columns); out: (ny, nx, k), the tile's queries.
    ny, nx = out.shape[0], out.shape[1]
    for i in range(ny):
        y = qy0 + i
        wy = min(max(y - sh // 2, 0), height - sh)
        best = np.full((nx, k), np.inf, dist.dtype)
        chosen = np.full((nx, k), -1, np.int64)
        # Region row by region row: each step reads one contiguous (nx, columns) slab of the
        # block instead of hopping between rows a block row apart.
        for yy in range(wy, wy + sh):
            near = abs(yy - y) <= radius
            for j in range(nx):
                x = qx0 + j
                wx = min(max(x - sw // 2, 0), width - sw)
                row = dist[yy - ry0, i * nx + j, wx - rx0 : wx - rx0 + sw]
                bound = best[j, k - 1]
                for c in range(sw):
                    d = row[c]
                    # Candidates come in increasing node index and only a strictly smaller
                    # distance moves past an entry: ties stay in index order.
                    if d < bound:
                        if near and abs(wx + c - x) <= radius:
                            continue
                        p = k - 1
                        while p > 0 and d < best[j, p - 1]:
                            best[j, p] = best[j, p - 1]
                            chosen[j, p] = chosen[j, p - 1]
                            p -= 1
                        best[j, p] = d
                        chosen[j, p] = yy * width + wx + c
                        bound = best[j, k - 1]
        for j in range(nx):
            x = qx0 + j
            wx = min(max(x - sw // 2, 0), width - sw)
            # Fewer than k finite distances (features large enough to overflow): the
            # non-finite ones follow, in index order.
            n = 0
            while n < k and chosen[j, n] >= 0:
                n += 1
            if n < k:
                for yy in range(wy, wy + sh):
                    for c in range(sw):
                        d = dist[yy - ry0, i * nx + j, wx - rx0 + c]
                        far = max(abs(yy - y), abs(wx + c - x)) > radius
                        if n < k and far and not d < np.inf:
                            chosen[j, n] = yy * width + wx + c
                            n += 1
            for p in range(k):
                out[i, j, p] = chosen[j, p]


def knn_in_windows(
    feats: Tensor, k: int, radius: int, window: tuple[int, int], tile: int = _TILE
) -> Tensor:
    r"""The ``k`` nearest pixels of every pixel within its search window (CPU).

    Args:
        feats (torch.Tensor): Feature maps :math:`(B, C, H, W)` on the CPU.
        k (int): Neighbours per pixel.
        radius (int): Chebyshev radius of the excluded neighbourhood.
        window (tuple): Search-window height and width (at most the image's).
        tile (int): Side of the square query tiles.

    Returns:
        torch.Tensor: :math:`(B H W, k)` global node indices, each row ordered by (distance,
        index), as :func:`pyg_lecc.graph._knn_torch` returns them.
    """
    # The selection kernel does no bounds checking: a window outside the image or too few
    # candidates would read outside the distance block or leave unset neighbours.
    check_knn_window(tuple(feats.shape), k, radius, window, tile)
    B, C, H, W = feats.shape
    Sh, Sw = window
    # Detached: the worker threads do not inherit the caller's no_grad mode.
    nodes = feats.detach().permute(0, 2, 3, 1)
    # The torch path's ranking distance ||c||^2 - 2 q.c as [-2q, 1] . [c, ||c||^2]; the
    # query side per tile, so only the candidate side is a copy of the whole map.
    candidates = torch.cat([nodes, nodes.pow(2).sum(-1, keepdim=True)], dim=-1)
    neighbours = torch.empty(B, H, W, k, dtype=torch.long)
    out = neighbours.numpy()
    th, tw = min(H, tile), min(W, tile)

    def run_tile(b: int, y0: int, x0: int) -> None:
        y1, x1 = min(H, y0 + th), min(W, x0 + tw)
        ry0 = min(max(y0 - Sh // 2, 0), H - Sh)
        ry1 = min(max(y1 - 1 - Sh // 2, 0), H - Sh) + Sh
        rx0 = min(max(x0 - Sw // 2, 0), W - Sw)
        rx1 = min(max(x1 - 1 - Sw // 2, 0), W - Sw) + Sw
        q = nodes[b, y0:y1, x0:x1].reshape(-1, C)
        q = torch.cat([-2 * q, torch.ones_like(q[:, :1])], dim=1)
        # One product per region row, straight from the strided rows (no gathered copy):
        # (region rows, queries, region columns).
        dist = torch.matmul(q, candidates[b, ry0:ry1, rx0:rx1].transpose(1, 2)).numpy()
        _select_in_windows(dist, k, radius, y0, x0, ry0, rx0, H, W, Sh, Sw, out[b, y0:y1, x0:x1])

    # Whole tiles (product and selection) per thread, as many threads as torch uses: the
    # batched product of a tile runs on one core anyway, and the kernel releases the GIL.
    # Plain threads rather than a Numba parallel loop: Numba's OpenMP pool and torch's, each
    # spinning after its own regions, fought over the cores (a 5x slower selection), and
    # Numba's workqueue layer is not thread-safe.
    tiles = [(b, y0, x0) for y0 in range(0, H, th) for x0 in range(0, W, tw) for b in range(B)]
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        for done in [pool.submit(run_tile, *t) for t in tiles]:
            done.result()
    offsets = torch.arange(B).view(B, 1, 1, 1) * (H * W)
    return (neighbours + offsets).view(-1, k)
