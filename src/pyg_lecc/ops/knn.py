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
  node index) by insertion. No mask, no ``topk``, no sort is written. The ``k``-th smallest
  distance over a 7x7 probe square around the pixel bounds the ``k``-th nearest: a
  candidate beyond it is not ranked, and a window row with no candidate within it (or
  within the list's last distance, once the list is full) is skipped after a vectorised
  count instead of a compare and branch per candidate. On NIR-GNN's own feature maps (the
  shipped weights, training images) about a quarter of the rows are then scanned.

Why BLAS keeps the distances: a Numba loop computing them itself (loop-vectorised and
register-blocked variants) reached 0.14-0.2x the BLAS rate on this CPU. The block of a tile
is therefore still written once, to the cache rather than to a 64 MB buffer.

The distance block of a tile is written into one buffer per worker thread: a new 1-4 MB
block per tile cost about as much in page faults as the product itself. When the window is
the whole image (training patches), each image is one tile, and on one thread the tiles
run in the calling thread. Together, on the seven graphs of one NIR-GNN F=24 forward (the
shipped weights' feature maps of training images, one thread, old and new code alternating
in one process, two runs): 0.74-0.76x for a batch of ten 42x42 patches (about 453 ms to
339 ms), 0.72-0.73x for a 256x256 image with 49x49 windows (about 2.21 s to 1.61 s). On
uniform noise, where the probe square bounds little, 0.88-0.97x.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from numba import njit
from torch import Tensor

from pyg_lecc.ops.checks import check_knn_window

# Side of the square query tiles (see knn_in_windows).
_TILE = 16
# Largest distance block (bytes) of a whole image taken as one tile when the window is the
# whole image (training patches): a 42x42 patch's is 12 MB.
_WHOLE_IMAGE_BLOCK = 16 * 2**20


# Side of the probe square around a pixel (see _probe_bound): even at an image corner, the
# part of it inside the window holds 12 candidates outside a radius-1 zone, more than
# NIR-GNN's k = 8.
_PROBE = 7


@njit(inline="always", cache=True)
def _any_at_most(row, bound):
    # Whether any entry of a window row is <= bound: a count without branches, which LLVM
    # vectorises (NaN compares false, as in the scan).
    n = 0
    for c in range(row.shape[0]):
        n += row[c] <= bound
    return n > 0


@njit(inline="always", cache=True)
def _probe_bound(dist, q, y, x, wy, wx, ry0, rx0, sh, sw, radius, low):
    # An upper bound of the k-th smallest distance of query q (k = low's length): the k-th
    # smallest over the candidates of the probe square around (y, x), +inf when it holds
    # fewer than k. Each value in low is a candidate's, so k candidates lie at most that far.
    k = low.shape[0]
    low[:] = np.inf
    half = _PROBE // 2
    for yy in range(max(wy, y - half), min(wy + sh, y + half + 1)):
        for xx in range(max(wx, x - half), min(wx + sw, x + half + 1)):
            v = dist[yy - ry0, q, xx - rx0]
            if max(abs(yy - y), abs(xx - x)) > radius and v < low[k - 1]:
                p = k - 1
                while p > 0 and v < low[p - 1]:
                    low[p] = low[p - 1]
                    p -= 1
                low[p] = v
    return low[k - 1]


@njit(nogil=True, cache=True)
def _select_in_windows(dist, k, radius, qy0, qx0, ry0, rx0, height, width, sh, sw, out):
    # dist: (region rows, queries, region columns); out: (ny, nx, k), the tile's queries.
    # The probe square's bound (cap) and the list's last distance, once it is full, bound
    # what can still enter the list: a window row with nothing within them is skipped after
    # a vectorised test, instead of a compare and branch per candidate.
    ny, nx = out.shape[0], out.shape[1]
    cap = np.empty(nx, dist.dtype)
    starts = np.empty(nx, np.int64)  # each query's first window column
    low = np.empty(k, dist.dtype)
    for i in range(ny):
        y = qy0 + i
        wy = min(max(y - sh // 2, 0), height - sh)
        best = np.full((nx, k), np.inf, dist.dtype)
        chosen = np.full((nx, k), -1, np.int64)
        for j in range(nx):
            x = qx0 + j
            wx = starts[j] = min(max(x - sw // 2, 0), width - sw)
            cap[j] = _probe_bound(dist, i * nx + j, y, x, wy, wx, ry0, rx0, sh, sw, radius, low)
        # Region row by region row: each step reads one contiguous (nx, columns) slab of the
        # block instead of hopping between rows a block row apart.
        for yy in range(wy, wy + sh):
            near = abs(yy - y) <= radius
            slab = dist[yy - ry0]
            for j in range(nx):
                x, wx = qx0 + j, starts[j]
                row = slab[i * nx + j, wx - rx0 : wx - rx0 + sw]
                bound, limit = best[j, k - 1], cap[j]
                if not _any_at_most(row, min(limit, bound)):
                    continue
                for c in range(sw):
                    d = row[c]
                    # Candidates come in increasing node index and only a strictly smaller
                    # distance moves past an entry: ties stay in index order. One beyond the
                    # probe's bound cannot end in the list, so it is not ranked in meanwhile.
                    if d < bound and d <= limit:
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
            x, wx = qx0 + j, starts[j]
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
    feats: Tensor, k: int, radius: int, window: tuple[int, int], tile: int | None = None
) -> Tensor:
    r"""The ``k`` nearest pixels of every pixel within its search window (CPU).

    Args:
        feats (torch.Tensor): Feature maps :math:`(B, C, H, W)` on the CPU.
        k (int): Neighbours per pixel.
        radius (int): Chebyshev radius of the excluded neighbourhood.
        window (tuple): Search-window height and width (at most the image's).
        tile (int, optional): Side of the square query tiles (:obj:`None`: one tile per
            image when the window is the whole image and its distance block takes at most
            16 MiB, else 16).

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
    # The torch path's ranking distance ||c||^2 - 2 q.c as [-2q, 1] . [c, ||c||^2].
    norms = nodes.pow(2).sum(-1, keepdim=True)
    candidates = torch.cat([nodes, norms], dim=-1)
    queries = torch.cat([-2 * nodes, torch.ones_like(norms)], dim=-1)
    neighbours = torch.empty(B, H, W, k, dtype=torch.long)
    out = neighbours.numpy()
    if tile is None:
        whole = (Sh, Sw) == (H, W) and (H * W) ** 2 * feats.element_size() <= _WHOLE_IMAGE_BLOCK
        # The region of a whole-image window is the image whatever the tile, so one tile
        # per image computes no more distances and saves the per-tile calls (0.89x for the
        # seven graphs of a training batch).
        tile = max(H, W) if whole else _TILE
    th, tw = min(H, tile), min(W, tile)
    # One distance block per worker thread, reused by its tiles: a new block per tile cost
    # about as much in page faults as its product did.
    largest = min(H, th + Sh - 1) * th * tw * min(W, tw + Sw - 1)
    blocks = threading.local()

    def run_tile(b: int, y0: int, x0: int) -> None:
        y1, x1 = min(H, y0 + th), min(W, x0 + tw)
        ry0 = min(max(y0 - Sh // 2, 0), H - Sh)
        ry1 = min(max(y1 - 1 - Sh // 2, 0), H - Sh) + Sh
        rx0 = min(max(x0 - Sw // 2, 0), W - Sw)
        rx1 = min(max(x1 - 1 - Sw // 2, 0), W - Sw) + Sw
        if not hasattr(blocks, "storage"):
            blocks.storage = candidates.new_empty(largest)
        q = queries[b, y0:y1, x0:x1].reshape(-1, C + 1)
        shape = (ry1 - ry0, q.size(0), rx1 - rx0)
        dist = blocks.storage[: shape[0] * shape[1] * shape[2]].view(shape)
        # One product per region row, straight from the strided rows (no gathered copy):
        # (region rows, queries, region columns).
        torch.matmul(q, candidates[b, ry0:ry1, rx0:rx1].transpose(1, 2), out=dist)
        _select_in_windows(
            dist.numpy(), k, radius, y0, x0, ry0, rx0, H, W, Sh, Sw, out[b, y0:y1, x0:x1]
        )

    # Whole tiles (product and selection) per thread, as many threads as torch uses: the
    # batched product of a tile runs on one core anyway, and the kernel releases the GIL.
    # Plain threads rather than a Numba parallel loop: Numba's OpenMP pool and torch's, each
    # spinning after its own regions, fought over the cores (a 5x slower selection), and
    # Numba's workqueue layer is not thread-safe.
    tiles = [(b, y0, x0) for y0 in range(0, H, th) for x0 in range(0, W, tw) for b in range(B)]
    if torch.get_num_threads() == 1:  # no hand-over to a worker thread per tile
        for t in tiles:
            run_tile(*t)
    else:
        with ThreadPoolExecutor(torch.get_num_threads()) as pool:
            for done in [pool.submit(run_tile, *t) for t in tiles]:
                done.result()
    offsets = torch.arange(B).view(B, 1, 1, 1) * (H * W)
    return (neighbours + offsets).view(-1, k)
