"""From images to graphs: non-local k-nearest-neighbour graphs over pixel features.

Every pixel of a ``(B, C, H, W)`` feature map is a node (flat index ``b*H*W + y*W + x``);
each takes as neighbours the ``k`` pixels of its own image whose feature vectors are
closest in Euclidean distance, excluding itself and its spatial neighbourhood (which a
local 3x3 convolution already covers), optionally within a search window around it.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric import EdgeIndex

from pyg_lecc.ops.checks import fewest_candidates
from pyg_lecc.typing import WITH_NUMBA, WITH_TORCH_CLUSTER, require

BACKENDS = ("auto", "torch", "torch_cluster", "numba")
# Feature types the Numba kernel compiles for (NumPy has no bfloat16).
_NUMBA_DTYPES = (torch.float32, torch.float64)
# Elements of one query-by-candidate distance block of the torch backend (64 MB in
# float32): bounds its memory whatever the image size.
_BLOCK_ELEMENTS = 1 << 24


def image_to_nodes(x: Tensor) -> Tensor:
    r"""Flattens a batch of feature maps into node features.

    Args:
        x (torch.Tensor): Feature maps :math:`(B, C, H, W)`.

    Returns:
        torch.Tensor: Node features :math:`(B \cdot H \cdot W, C)`; node
        ``b*H*W + y*W + x`` is pixel ``(y, x)`` of image ``b``.

    Example:
        >>> image_to_nodes(torch.zeros(2, 3, 4, 5)).shape
        torch.Size([40, 3])
    """
    _check_image_batch(x, "x")
    return x.permute(0, 2, 3, 1).reshape(-1, x.size(1))


def nodes_to_image(x: Tensor, batch_size: int, height: int, width: int) -> Tensor:
    r"""Inverse of :func:`image_to_nodes`.

    Args:
        x (torch.Tensor): Node features :math:`(B \cdot H \cdot W, C)`.
        batch_size (int): :math:`B`.
        height (int): :math:`H`.
        width (int): :math:`W`.

    Returns:
        torch.Tensor: Feature maps :math:`(B, C, H, W)`.

    Example:
        >>> x = torch.randn(2, 3, 4, 5)
        >>> torch.equal(nodes_to_image(image_to_nodes(x), 2, 4, 5), x)
        True
    """
    if x.dim() != 2 or x.size(0) != batch_size * height * width:
        raise ValueError(
            f"expected node features of shape ({batch_size * height * width}, C) for "
            f"{batch_size} images of {height}x{width}, got {tuple(x.shape)}"
        )
    return x.view(batch_size, height, width, -1).permute(0, 3, 1, 2)


def _check_image_batch(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"'{name}' must be a tensor of shape (B, C, H, W), got {shape}")


def _window_start(pos: Tensor, window: int, extent: int) -> Tensor:
    # First row (or column) of the window of each position, shifted to stay in the image.
    return (pos - window // 2).clamp(0, extent - window)


def _select_k(dist: Tensor, k: int) -> Tensor:
    """Column indices of the k smallest entries of every row, ordered by (distance, column)."""
    if dist.device.type != "cpu":
        # The tie repair below reads a flag on the host; a stable sort orders by (distance,
        # column) outright, so the device never waits for the host.
        return dist.sort(dim=1, stable=True)[1][:, :k]
    num_cols = dist.size(1)
    K = min(num_cols, k + 1)  # one more than needed tells whether a tie runs past the k-th
    values, idx = dist.topk(K, dim=1, largest=False, sorted=True)
    # Order by (distance, column): sort by column, then stably by distance.
    idx, order = idx.sort(dim=1)
    values, order = values.gather(1, order).sort(dim=1, stable=True)
    idx = idx.gather(1, order)[:, :k]
    if k < K:
        # topk chooses arbitrarily among equal values: where the k-th distance equals the
        # next one, a stable sort of the whole row decides by column instead.
        ambiguous = values[:, k - 1] == values[:, k]
        if bool(ambiguous.any()):
            rows = ambiguous.nonzero().view(-1)
            idx[rows] = dist[rows].sort(dim=1, stable=True)[1][:, :k]
    return idx


def _block_elements(device: torch.device) -> int:
    # CPU: the fixed budget. CUDA: a share of the free memory (the block, its sort's values
    # and int64 indices and the mask: about 20 bytes per element), so that a big image
    # needs few launches.
    if device.type != "cuda":
        return _BLOCK_ELEMENTS
    free, _ = torch.cuda.mem_get_info(device)
    return max(_BLOCK_ELEMENTS, min(1 << 28, free // 8 // 20))


def _tile_shape(H: int, W: int, Sh: int, Sw: int, budget: int) -> tuple[int, int]:
    # Query tiles: rectangles whose candidate region (the union of their windows) keeps the
    # distance block within the budget. With a window, tiles a third of its side keep that
    # union under twice the window itself, so little distance work is wasted.
    th = H if Sh == H else min(H, max(8, Sh // 3))
    tw = W if Sw == W else min(W, max(8, Sw // 3))
    while th * tw * min(H, th + Sh - 1) * min(W, tw + Sw - 1) > budget and th * tw > 1:
        if th >= tw:
            th = (th + 1) // 2
        else:
            tw = (tw + 1) // 2
    return th, tw


def _relative(q0: int, q1: int, r0: int, window: int, extent: int) -> tuple:
    # Positions of the queries q0..q1-1 and of their window starts, relative to the region.
    starts = (min(max(q - window // 2, 0), extent - window) for q in range(q0, q1))
    return tuple(range(q0 - r0, q1 - r0)), tuple(s - r0 for s in starts)


def _window_mask(
    q0: int, q1: int, r0: int, r1: int, window: int, extent: int, radius: int, device
) -> tuple[Tensor, Tensor]:
    # Along one axis: (candidate outside the query's window, candidate within the radius).
    q = torch.arange(q0, q1, device=device)[:, None]
    r = torch.arange(r0, r1, device=device)
    start = _window_start(q, window, extent)
    return (r < start) | (r >= start + window), (r - q).abs() <= radius


def _knn_torch(feats: Tensor, k: int, exclude_radius: int, window: tuple[int, int]) -> Tensor:
    B, C, H, W = feats.shape
    Sh, Sw = window
    device = feats.device
    nodes = feats.permute(0, 2, 3, 1)
    # ||q - c||^2 ranks like ||c||^2 - 2 q.c within a row; one matrix product gives it:
    # [-2q, 1] . [c, ||c||^2].
    queries = torch.cat([-2 * nodes, torch.ones_like(nodes[..., :1])], dim=-1)
    candidates = torch.cat([nodes, nodes.pow(2).sum(-1, keepdim=True)], dim=-1)
    neighbours = torch.empty(B, H, W, k, dtype=torch.long, device=device)
    budget = _block_elements(device)
    th, tw = _tile_shape(H, W, Sh, Sw, budget)

    # Tile geometry in Python integers: nothing in the loop waits for the device. The mask
    # of a tile depends only on where its queries and windows sit relative to its
    # candidate region: interior tiles share one, so it is built once per pattern.
    masks: dict[tuple, Tensor] = {}
    for y0 in range(0, H, th):
        y1 = min(H, y0 + th)
        ry0 = min(max(y0 - Sh // 2, 0), H - Sh)
        ry1 = min(max(y1 - 1 - Sh // 2, 0), H - Sh) + Sh
        for x0 in range(0, W, tw):
            x1 = min(W, x0 + tw)
            rx0 = min(max(x0 - Sw // 2, 0), W - Sw)
            rx1 = min(max(x1 - 1 - Sw // 2, 0), W - Sw) + Sw
            Q, M = (y1 - y0) * (x1 - x0), (ry1 - ry0) * (rx1 - rx0)
            key = (
                _relative(y0, y1, ry0, Sh, H),
                _relative(x0, x1, rx0, Sw, W),
                ry1 - ry0,
                rx1 - rx0,
            )
            blocked = masks.get(key)
            if blocked is None:
                # Candidates outside the pixel's window, or in its excluded neighbourhood.
                row_out, row_near = _window_mask(y0, y1, ry0, ry1, Sh, H, exclude_radius, device)
                col_out, col_near = _window_mask(x0, x1, rx0, rx1, Sw, W, exclude_radius, device)
                blocked = (row_out[:, None, :, None] | col_out[None, :, None, :]) | (
                    row_near[:, None, :, None] & col_near[None, :, None, :]
                )
                blocked = masks[key] = blocked.view(Q, M)
            # Several images per block when tiles are small (patch batches).
            per_block = max(1, budget // (Q * M))
            for b0 in range(0, B, per_block):
                b1 = min(B, b0 + per_block)
                q = queries[b0:b1, y0:y1, x0:x1].reshape(b1 - b0, Q, C + 1)
                c = candidates[b0:b1, ry0:ry1, rx0:rx1].reshape(b1 - b0, M, C + 1)
                dist = torch.bmm(q, c.transpose(1, 2))
                dist.masked_fill_(blocked, float("inf"))
                col = _select_k(dist.view(-1, M), k)
                # Region column -> image-local node index.
                chosen = (col // (rx1 - rx0) + ry0) * W + col % (rx1 - rx0) + rx0
                neighbours[b0:b1, y0:y1, x0:x1] = chosen.view(b1 - b0, y1 - y0, x1 - x0, k)

    offsets = torch.arange(B, device=device).view(B, 1, 1, 1) * (H * W)
    return (neighbours + offsets).view(-1, k)


def _knn_torch_cluster(feats: Tensor, k: int, exclude_radius: int) -> Tensor:
    import torch_cluster

    B, _, H, W = feats.shape
    nodes = image_to_nodes(feats)
    # The k nearest outside the exclusion zone are among the k + |zone| nearest overall; one
    # more tells whether a tie runs past the list.
    num_candidates = min(H * W, k + (2 * exclude_radius + 1) ** 2 + 1)
    batch = torch.arange(B, device=feats.device).repeat_interleave(H * W)
    centre, cand = torch_cluster.knn(nodes, nodes, num_candidates, batch, batch)
    if centre.numel() != B * H * W * num_candidates:
        raise RuntimeError("torch_cluster.knn returned an unexpected number of neighbours")
    order = centre.argsort(stable=True)
    cand = cand[order].view(-1, num_candidates)
    centre = centre[order].view(-1, num_candidates)

    local_c, local_q = cand % (H * W), centre % (H * W)
    near = ((local_c // W - local_q // W).abs() <= exclude_radius) & (
        (local_c % W - local_q % W).abs() <= exclude_radius
    )
    raw = (nodes[cand] - nodes[centre]).pow(2).sum(-1)
    dist = raw.masked_fill(near, float("inf"))
    pos = _select_k_by_index(dist, cand, k)
    neighbours = cand.gather(1, pos)
    # torch_cluster orders equal distances arbitrarily: where the k-th distance kept equals the
    # farthest candidate returned, an unlisted pixel may tie with it. Such images (flat
    # regions) are redone by the torch backend, which breaks ties by index.
    if num_candidates < H * W:
        tied = dist.gather(1, pos[:, -1:]).squeeze(1) >= raw.max(dim=1).values
        for b in tied.view(B, H * W).any(dim=1).nonzero().view(-1).tolist():
            redo = _knn_torch(feats[b : b + 1], k, exclude_radius, (H, W)) + b * H * W
            neighbours.view(B, H * W, k)[b] = redo
    return neighbours


def _select_k_by_index(dist: Tensor, index: Tensor, k: int) -> Tensor:
    # Positions of the k best candidates of every row, ordered by (distance, node index).
    by_index = index.argsort(dim=1)
    by_dist = dist.gather(1, by_index).sort(dim=1, stable=True)[1]
    return by_index.gather(1, by_dist)[:, :k]


def _numba_applies(feats: Tensor) -> bool:
    # Where "auto" takes the fused kernel instead of the plain torch backend.
    return WITH_NUMBA and feats.device.type == "cpu" and feats.dtype in _NUMBA_DTYPES


def _resolve_backend(backend: str, feats: Tensor, search_window: int | None) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"'backend' must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        # Measured (docs/benchmarks): torch_cluster's KD-tree wins only on low-dimensional
        # features; dense torch is 5-9x faster on 33-99-dimensional pixel features.
        use_cluster = WITH_TORCH_CLUSTER and search_window is None and feats.size(1) <= 3
        return "torch_cluster" if use_cluster else "torch"
    if backend == "numba":
        if not WITH_NUMBA:
            raise ImportError("backend='numba' needs Numba: `pip install numba`")
        if feats.device.type != "cpu" or feats.dtype not in _NUMBA_DTYPES:
            raise ValueError(
                "backend='numba' runs on float32 or float64 CPU features, got "
                f"{feats.dtype} on {feats.device}"
            )
    if backend == "torch_cluster":
        require("torch_cluster", WITH_TORCH_CLUSTER, "cluster")
        if search_window is not None:
            raise ValueError(
                "backend='torch_cluster' searches whole images; use backend='torch' "
                "for a 'search_window'"
            )
    return backend


@torch.no_grad()
@torch.compiler.disable
def image_knn_graph(
    features: Tensor,
    k: int = 8,
    exclude_radius: int = 1,
    search_window: int | None = None,
    backend: str = "auto",
) -> EdgeIndex:
    r"""Builds the non-local k-nearest-neighbour graph of a batch of feature maps.

    Pixel :math:`i` of image :math:`b` gets the :math:`k` pixels :math:`j` of the same image
    with the smallest :math:`\|\mathbf{f}_j - \mathbf{f}_i\|_2` among its candidates: all
    pixels of the image (or of its search window) except those with
    :math:`\max(|y_j - y_i|, |x_j - x_i|) \le` :obj:`exclude_radius` (itself and its
    spatial neighbourhood, excluded by coordinates, so exact at image borders). Ties are
    broken by the smaller node index. The graph is built without gradients and outside any
    :func:`torch.compile` region.

    Args:
        features (torch.Tensor): Feature maps :math:`(B, C, H, W)`.
        k (int, optional): Neighbours per pixel. (default: :obj:`8`)
        exclude_radius (int, optional): Chebyshev radius of the excluded spatial
            neighbourhood; :obj:`0` excludes only the pixel itself. (default: :obj:`1`)
        search_window (int, optional): If set to :math:`S`, candidates are restricted to
            the :math:`S \times S` window centred on the pixel, shifted inwards near borders
            so that every pixel keeps :math:`S \times S` candidates (or the whole image
            when it is smaller). :obj:`None` searches the whole image.
            (default: :obj:`None`)
        backend (str, optional): :obj:`"torch"` (dense blocked distances, bounded memory,
            any device), :obj:`"numba"` (the same distances, one matrix product per tile,
            with the window, exclusion and top-:math:`k` selection fused into one Numba
            pass over it; float32/float64 CPU features), :obj:`"torch_cluster"`
            (:func:`torch_cluster.knn`, whole-image search only) or :obj:`"auto"`
            (:obj:`"torch_cluster"` when installed and the features have at most 3
            channels with no search window; else :obj:`"numba"` for float32/float64 CPU
            features when Numba is installed; else :obj:`"torch"`). All backends return
            the same graph. (default: :obj:`"auto"`)

    Returns:
        torch_geometric.EdgeIndex: :obj:`edge_index` of shape :math:`(2, B H W k)`, int64,
        rows ``[neighbour, centre]``, sorted by centre, each centre's neighbours by
        distance. It is an :class:`~torch_geometric.EdgeIndex` (a :class:`torch.Tensor`
        everywhere a plain :obj:`edge_index` is expected) that carries this layout:
        :obj:`sort_order="col"`, :obj:`sparse_size=(B H W, B H W)` and its CSC pointers
        (:math:`k` edges per centre) already cached, so that layers such as
        :class:`~pyg_lecc.LightweightECC` group the edges by target without reading the
        indices, also under :func:`torch.compile`. :meth:`~torch_geometric.EdgeIndex.as_tensor`
        gives the plain tensor.

    Example:
        >>> feats = torch.randn(2, 16, 12, 12)
        >>> edge_index = image_knn_graph(feats, k=8)
        >>> edge_index.shape
        torch.Size([2, 2304])
    """
    _check_image_batch(features, "features")
    if not features.is_floating_point():
        raise ValueError(f"'features' must be a floating-point tensor, got {features.dtype}")
    # NaN / inf distances make the search return excluded pixels (self-loops) without error;
    # one pass over the features, the per-pixel count only on failure.
    if not bool(torch.isfinite(features).all()):
        bad = int((~torch.isfinite(features)).any(dim=1).sum())
        total = features.size(0) * features.size(2) * features.size(3)
        raise ValueError(
            f"'features' contain NaN or infinite values at {bad} of {total} pixels (a model "
            "whose activations diverged, or non-finite input)"
        )
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"'k' must be a positive integer, got {k!r}")
    if not isinstance(exclude_radius, int) or exclude_radius < 0:
        raise ValueError(f"'exclude_radius' must be an integer >= 0, got {exclude_radius!r}")
    if search_window is not None and (not isinstance(search_window, int) or search_window < 1):
        raise ValueError(
            f"'search_window' must be a positive integer or None, got {search_window!r}"
        )
    B, _, H, W = features.shape
    Sh, Sw = (H, W) if search_window is None else (min(search_window, H), min(search_window, W))
    # Fewest candidates any pixel has: the whole exclusion zone fits in its window.
    fewest = fewest_candidates((Sh, Sw), exclude_radius)
    if fewest < k:
        raise ValueError(
            f"cannot choose k={k} neighbours: a {H}x{W} image with search_window="
            f"{search_window} and exclude_radius={exclude_radius} leaves some pixels only "
            f"{max(fewest, 0)} candidates"
        )

    resolved = _resolve_backend(backend, features, search_window)
    if resolved == "torch" and backend == "auto" and _numba_applies(features):
        resolved = "numba"  # the same graph, several times faster
    if resolved == "torch_cluster":
        neighbours = _knn_torch_cluster(features, k, exclude_radius)
    elif resolved == "numba":
        from pyg_lecc.ops.knn import knn_in_windows  # Numba's import costs about a second

        neighbours = knn_in_windows(features, k, exclude_radius, (Sh, Sw))
    else:
        neighbours = _knn_torch(features, k, exclude_radius, (Sh, Sw))
    num_nodes = B * H * W
    centres = torch.arange(num_nodes, device=features.device).repeat_interleave(k)
    edge_index = EdgeIndex(
        torch.stack([neighbours.reshape(-1), centres]),
        sparse_size=(num_nodes, num_nodes),
        sort_order="col",
    )
    # The CSC pointers (k per target), computed here once, outside any compiled region:
    # every layer that shares the graph reads them as they are, and a compiled layer has
    # no cache to fill (Dynamo cannot trace a cache fill on a tensor subclass input).
    return edge_index.fill_cache_(no_transpose=True)


class ImageKNNGraph:
    r"""A reusable image-graph builder: models build the graph once per block with it and
    share the resulting :obj:`edge_index` across the block's graph layers.

    Args:
        k (int, optional): Neighbours per pixel. (default: :obj:`8`)
        exclude_radius (int, optional): Radius of the excluded spatial neighbourhood.
            (default: :obj:`1`)
        search_window (int, optional): Side of the search window, :obj:`None` for whole
            images. (default: :obj:`None`)
        backend (str, optional): See :func:`image_knn_graph`. (default: :obj:`"auto"`)

    Example:
        >>> builder = ImageKNNGraph(k=4, search_window=9)
        >>> builder
        ImageKNNGraph(k=4, exclude_radius=1, search_window=9, backend='auto')
        >>> builder(torch.randn(1, 8, 16, 16)).shape
        torch.Size([2, 1024])
    """

    def __init__(
        self,
        k: int = 8,
        exclude_radius: int = 1,
        search_window: int | None = None,
        backend: str = "auto",
    ) -> None:
        self.k = k
        self.exclude_radius = exclude_radius
        self.search_window = search_window
        self.backend = backend

    def __call__(self, features: Tensor) -> EdgeIndex:
        return image_knn_graph(
            features, self.k, self.exclude_radius, self.search_window, self.backend
        )

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(k={self.k}, exclude_radius={self.exclude_radius}, "
            f"search_window={self.search_window}, backend={self.backend!r})"
        )
