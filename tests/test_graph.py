import pytest
import torch
from torch_geometric import EdgeIndex

import pyg_lecc.graph as graph_module
from pyg_lecc import ImageKNNGraph, image_knn_graph, image_to_nodes, nodes_to_image
from pyg_lecc.typing import WITH_NUMBA, WITH_TORCH_CLUSTER


def _brute_force(feats: torch.Tensor, k: int, radius: int, window: int | None) -> torch.Tensor:
    """Neighbours of every pixel by an explicit loop: (distance, flat index) order."""
    B, _, H, W = feats.shape
    rows = []
    for b in range(B):
        for y in range(H):
            for x in range(W):
                if window is None:
                    ys, xs = range(H), range(W)
                else:
                    sh, sw = min(window, H), min(window, W)
                    y0 = min(max(y - window // 2, 0), H - sh)
                    x0 = min(max(x - window // 2, 0), W - sw)
                    ys, xs = range(y0, y0 + sh), range(x0, x0 + sw)
                cands = [
                    (float((feats[b, :, y, x] - feats[b, :, yy, xx]).pow(2).sum()), yy * W + xx)
                    for yy in ys
                    for xx in xs
                    if max(abs(yy - y), abs(xx - x)) > radius
                ]
                cands.sort()
                rows.append([b * H * W + i for _, i in cands[:k]])
    return torch.tensor(rows)


CASES = {
    "random": (lambda: torch.randn(2, 5, 9, 11, dtype=torch.float64), 4, 1, None),
    "planted_ties": (lambda: torch.randint(0, 2, (2, 3, 10, 7)).double(), 5, 1, None),
    "flat_image": (lambda: torch.zeros(1, 3, 8, 8), 6, 1, None),
    "window_ties": (lambda: torch.randint(0, 3, (1, 2, 13, 12)).double(), 6, 1, 5),
    "window_flat_radius0": (lambda: torch.zeros(1, 3, 8, 8), 3, 0, 4),
    "window_radius2": (lambda: torch.randn(1, 4, 20, 17, dtype=torch.float64), 8, 2, 9),
    "window_larger_than_image": (lambda: torch.randn(1, 3, 6, 30, dtype=torch.float64), 5, 1, 9),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("block_elements", [1 << 24, 300])  # one block, and many small tiles
def test_torch_backend_equals_brute_force(case, block_elements, monkeypatch):
    monkeypatch.setattr(graph_module, "_BLOCK_ELEMENTS", block_elements)
    make, k, radius, window = CASES[case]
    torch.manual_seed(0)
    feats = make()
    edge_index = image_knn_graph(feats, k, radius, window, backend="torch")
    B, _, H, W = feats.shape
    assert edge_index.dtype == torch.long and edge_index.shape == (2, B * H * W * k)
    assert torch.equal(edge_index[1], torch.arange(B * H * W).repeat_interleave(k))
    assert torch.equal(edge_index[0].view(-1, k), _brute_force(feats, k, radius, window))


def test_graph_properties_on_a_batch():
    torch.manual_seed(0)
    feats = torch.randn(3, 4, 12, 10)
    edge_index = image_knn_graph(feats, k=8)
    nbr, ctr = edge_index
    H, W = 12, 10
    assert torch.equal(nbr // (H * W), ctr // (H * W))  # never across images
    dy = (nbr % (H * W)) // W - (ctr % (H * W)) // W
    dx = (nbr % (H * W)) % W - (ctr % (H * W)) % W
    assert bool((torch.maximum(dy.abs(), dx.abs()) > 1).all())  # not self, not 8-neighbours
    assert nbr.view(-1, 8).unique(dim=1).size(1) == 8  # distinct neighbours per pixel


def test_window_restricts_candidates():
    torch.manual_seed(0)
    feats = torch.randn(1, 3, 30, 30)
    nbr, ctr = image_knn_graph(feats, k=4, search_window=7)
    y, x = ctr // 30, ctr % 30
    ny, nx = nbr // 30, nbr % 30
    y0, x0 = (y - 3).clamp(0, 23), (x - 3).clamp(0, 23)
    assert bool(((ny >= y0) & (ny < y0 + 7) & (nx >= x0) & (nx < x0 + 7)).all())
    whole = image_knn_graph(feats, k=4)
    assert not torch.equal(whole, torch.stack([nbr, ctr]))  # the window did change something


def test_no_gradient_and_deterministic():
    feats = torch.randn(1, 3, 8, 8, requires_grad=True)
    a = image_knn_graph(feats, k=3)
    assert not a.requires_grad
    assert torch.equal(a, image_knn_graph(feats.detach().clone(), k=3))


def test_large_image_with_window_bounded_blocks(monkeypatch):
    # Every distance block stays within the budget, so memory is bounded by construction.
    seen = []
    original = graph_module._select_k

    def spy(dist, k):
        seen.append(dist.numel())
        return original(dist, k)

    monkeypatch.setattr(graph_module, "_select_k", spy)
    monkeypatch.setattr(graph_module, "_BLOCK_ELEMENTS", 1 << 16)
    feats = torch.randn(1, 3, 100, 90)
    edge_index = image_knn_graph(feats, k=8, search_window=15, backend="torch")
    assert edge_index.shape == (2, 100 * 90 * 8)
    assert max(seen) <= 1 << 16


@pytest.mark.skipif(not WITH_TORCH_CLUSTER, reason="needs the [cluster] extra")
@pytest.mark.parametrize("channels", [2, 3, 16])
def test_torch_cluster_backend_matches_torch(channels):
    torch.manual_seed(channels)
    feats = torch.randn(3, channels, 14, 13, dtype=torch.float64)
    a = image_knn_graph(feats, k=8, backend="torch")
    b = image_knn_graph(feats, k=8, backend="torch_cluster")
    assert torch.equal(a, b)
    assert torch.equal(image_knn_graph(feats, k=8, backend="auto"), a)


def test_auto_backend_choice(monkeypatch):
    monkeypatch.setattr(graph_module, "WITH_TORCH_CLUSTER", True)
    low = torch.randn(1, 3, 8, 8)
    assert graph_module._resolve_backend("auto", low, None) == "torch_cluster"
    assert graph_module._resolve_backend("auto", low, 5) == "torch"
    assert graph_module._resolve_backend("auto", torch.randn(1, 33, 8, 8), None) == "torch"
    monkeypatch.setattr(graph_module, "WITH_TORCH_CLUSTER", False)
    assert graph_module._resolve_backend("auto", low, None) == "torch"
    with pytest.raises(ImportError, match="pip install pyg-lecc\\[cluster\\]"):
        graph_module._resolve_backend("torch_cluster", low, None)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(features=torch.randn(3, 8, 8)), r"\(B, C, H, W\)"),
        (dict(features=torch.zeros(1, 3, 8, 8, dtype=torch.long)), "floating-point"),
        (dict(k=0), "'k'"),
        (dict(exclude_radius=-1), "exclude_radius"),
        (dict(search_window=0), "search_window"),
        (dict(backend="faiss"), "backend"),
        (dict(features=torch.randn(1, 3, 3, 3), k=1), "cannot choose k=1"),
        (dict(k=17, search_window=5), "only 16 candidates"),
    ],
)
def test_errors(kwargs, match):
    args = dict(features=torch.randn(1, 3, 8, 8), k=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        image_knn_graph(**args)


@pytest.mark.skipif(not WITH_TORCH_CLUSTER, reason="needs the [cluster] extra")
def test_torch_cluster_refuses_window():
    with pytest.raises(ValueError, match="search_window"):
        image_knn_graph(torch.randn(1, 3, 8, 8), k=4, search_window=5, backend="torch_cluster")


def test_node_conversions_round_trip():
    x = torch.randn(2, 3, 4, 5)
    nodes = image_to_nodes(x)
    assert nodes.shape == (40, 3)
    assert torch.equal(nodes[1 * 20 + 2 * 5 + 3], x[1, :, 2, 3])  # node b*H*W + y*W + x
    assert torch.equal(nodes_to_image(nodes, 2, 4, 5), x)
    with pytest.raises(ValueError, match=r"\(40, C\)"):
        nodes_to_image(nodes[:-1], 2, 4, 5)
    with pytest.raises(ValueError, match="'x'"):
        image_to_nodes(torch.randn(3, 4, 5))


def test_builder_object():
    builder = ImageKNNGraph(k=4, search_window=9)
    assert repr(builder) == (
        "ImageKNNGraph(k=4, exclude_radius=1, search_window=9, backend='auto')"
    )
    feats = torch.randn(2, 5, 12, 12)
    assert torch.equal(builder(feats), image_knn_graph(feats, 4, 1, 9))


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_graph_carries_its_grouping(backend):
    # "Grouped by target, k each" travels with the graph: an EdgeIndex sorted by column with
    # its CSC pointers already cached, so that no layer reads the indices to find it out.
    torch.manual_seed(0)
    B, H, W, k = 2, 7, 6, 4
    feats = torch.randn(B, 5, H, W)
    edge_index = image_knn_graph(feats, k=k, backend=backend)
    num_nodes = B * H * W
    assert isinstance(edge_index, EdgeIndex)
    assert edge_index.sort_order == "col"
    assert edge_index.sparse_size() == (num_nodes, num_nodes)
    assert edge_index._indptr is not None  # filled by the builder, not by the first layer
    (colptr, row), perm = edge_index.get_csc()
    assert perm is None
    assert torch.equal(colptr, torch.arange(0, num_nodes * k + 1, k))
    assert torch.equal(row, edge_index[0])
    edge_index.validate()  # the metadata is true of the indices
    assert torch.equal(edge_index[1], torch.arange(num_nodes).repeat_interleave(k))


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_graph_building_inside_compiled_model(backend):
    # The builder is excluded from compilation; the model around it still compiles, with
    # the builder's EdgeIndex entering the compiled code after the break. Its pointer cache
    # is filled before that: filling it inside would make Dynamo fail (KeyError: '_indptr').
    from pyg_lecc import LightweightECC

    conv = LightweightECC(4, 4, rank=2)

    def model(img):
        return conv(image_to_nodes(img), image_knn_graph(img, k=3))

    compiled = torch.compile(model, backend=backend)
    for size in (6, 7):  # a second image size recompiles with the new sparse size
        img = torch.randn(1, 4, size, size)
        assert torch.allclose(compiled(img), model(img), atol=1e-6)


@pytest.mark.skipif(not WITH_TORCH_CLUSTER, reason="needs the [cluster] extra")
@pytest.mark.parametrize("case", ["flat", "quantised"])
def test_torch_cluster_backend_breaks_ties_like_torch(case):
    torch.manual_seed(0)
    if case == "flat":
        feats = torch.zeros(2, 3, 5, 5)
    else:
        feats = torch.randint(0, 3, (2, 2, 12, 12)).float()
        feats[1] = torch.randn(2, 12, 12)  # one image without ties
    a = image_knn_graph(feats, k=3, backend="torch")
    b = image_knn_graph(feats, k=3, backend="torch_cluster")
    assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_non_finite_features_are_refused(backend):
    # Before the check, an all-NaN map gave 256 self-loops without error.
    with pytest.raises(ValueError, match="at 256 of 256 pixels"):
        image_knn_graph(torch.full((1, 3, 16, 16), float("nan")), k=4, backend=backend)
    feats = torch.randn(2, 3, 8, 8)
    feats[0, 1, 2, 3] = float("inf")
    feats[0, 2, 2, 3] = float("nan")  # the same pixel again: counted once
    feats[1, 0, 7, 7] = -float("inf")
    with pytest.raises(ValueError, match="NaN or infinite values at 2 of 128 pixels"):
        image_knn_graph(feats, k=4, search_window=5, backend=backend)


def _smooth(feats: torch.Tensor) -> torch.Tensor:
    # Neighbouring pixels alike, as in a network's feature maps.
    for _ in range(3):
        feats = torch.nn.functional.avg_pool2d(feats, 3, 1, 1, count_include_pad=False)
    return feats


requires_numba = pytest.mark.skipif(not WITH_NUMBA, reason="numba is not installed")

# (features, k, exclude_radius, search_window): the fused kernel against the plain torch path.
FUSED_CASES = {
    "random_f32": (lambda: torch.randn(2, 7, 23, 19), 8, 1, None),
    "random_f32_window": (lambda: torch.randn(1, 16, 31, 40), 8, 1, 11),
    "flat_window": (lambda: torch.zeros(1, 3, 20, 21), 6, 1, 9),
    "flat_whole": (lambda: torch.zeros(2, 3, 9, 10), 5, 1, None),
    "quantised_window": (lambda: torch.randint(0, 3, (2, 2, 25, 18)).float(), 8, 1, 7),
    "quantised_whole": (lambda: torch.randint(0, 2, (3, 3, 12, 11)).float(), 8, 2, None),
    "window_at_borders": (lambda: torch.randn(1, 5, 13, 30, dtype=torch.float64), 4, 2, 12),
    "window_wider_than_image": (lambda: torch.randn(1, 4, 7, 26, dtype=torch.float64), 5, 0, 9),
    # Smooth maps: the probe square's bound is tight and most window rows are skipped.
    "smooth_window": (lambda: _smooth(torch.rand(1, 6, 40, 37)), 8, 1, 15),
    "smooth_quantised_whole": (lambda: (_smooth(torch.rand(2, 3, 21, 24)) * 8).round(), 8, 1, None),
    # An excluded zone wider than the probe square: no bound, every row is scanned.
    "exclusion_wider_than_probe": (lambda: torch.randn(1, 3, 20, 22), 5, 4, 13),
}


@requires_numba
@pytest.mark.parametrize("case", sorted(CASES))
def test_numba_backend_equals_brute_force(case):
    make, k, radius, window = CASES[case]
    torch.manual_seed(0)
    feats = make()
    edge_index = image_knn_graph(feats, k, radius, window, backend="numba")
    assert torch.equal(edge_index, image_knn_graph(feats, k, radius, window, backend="torch"))
    assert torch.equal(edge_index[0].view(-1, k), _brute_force(feats, k, radius, window))


@requires_numba
@pytest.mark.parametrize("case", sorted(FUSED_CASES))
# The default (one tile per image for whole-image windows), one tile per image, seams and
# partial tiles.
@pytest.mark.parametrize("tile", [None, 16, 4])
def test_numba_kernel_equals_torch_path(case, tile):
    from pyg_lecc.ops.knn import knn_in_windows

    make, k, radius, window = FUSED_CASES[case]
    torch.manual_seed(1)
    feats = make()
    _, _, H, W = feats.shape
    sizes = (H, W) if window is None else (min(window, H), min(window, W))
    expected = graph_module._knn_torch(feats, k, radius, sizes)
    assert torch.equal(knn_in_windows(feats, k, radius, sizes, tile=tile), expected)


@requires_numba
@pytest.mark.parametrize("threads", [1, 2])  # tiles in the calling thread; in a pool
def test_numba_kernel_on_threads(threads):
    from pyg_lecc.ops.knn import knn_in_windows

    torch.manual_seed(2)
    feats = _smooth(torch.rand(3, 5, 24, 20))
    expected = graph_module._knn_torch(feats, 6, 1, (9, 9))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert torch.equal(knn_in_windows(feats, 6, 1, (9, 9), tile=8), expected)
    finally:
        torch.set_num_threads(before)


@requires_numba
def test_auto_runs_the_numba_kernel(monkeypatch):
    import pyg_lecc.ops.knn as knn_module

    calls = []
    original = knn_module.knn_in_windows

    def spy(*args, **kwargs):
        calls.append(args[0].dtype)
        return original(*args, **kwargs)

    def no_torch_path(*args):
        raise AssertionError("the plain torch path ran")

    monkeypatch.setattr(knn_module, "knn_in_windows", spy)
    monkeypatch.setattr(graph_module, "_knn_torch", no_torch_path)
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        feats = torch.randn(1, 8, 16, 16, dtype=dtype, requires_grad=True)  # a model's output
        assert not image_knn_graph(feats, k=4, search_window=9).requires_grad
        ImageKNNGraph(k=4)(torch.randn(2, 33, 10, 10, dtype=dtype))
    assert calls == [torch.float32, torch.float32, torch.float64, torch.float64]


def test_auto_falls_back_to_torch_path(monkeypatch):
    feats = torch.randn(1, 8, 12, 12)
    expected = image_knn_graph(feats, k=4, backend="torch")
    monkeypatch.setattr(graph_module, "WITH_NUMBA", False)
    assert torch.equal(image_knn_graph(feats, k=4), expected)
    with pytest.raises(ImportError, match="pip install numba"):
        image_knn_graph(feats, k=4, backend="numba")
    monkeypatch.undo()
    # NumPy has no bfloat16: "auto" keeps such features on the torch path.
    half = feats.bfloat16()
    assert torch.equal(image_knn_graph(half, k=4), image_knn_graph(half, k=4, backend="torch"))
    if WITH_NUMBA:
        with pytest.raises(ValueError, match="float32 or float64 CPU"):
            image_knn_graph(half, k=4, backend="numba")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", ["window_ties", "window_radius2", "planted_ties"])
def test_torch_backend_on_cuda_equals_brute_force(case):
    make, k, radius, window = CASES[case]
    torch.manual_seed(0)
    feats = make()
    edge_index = image_knn_graph(feats.cuda(), k, radius, window, backend="torch")
    assert edge_index.is_cuda
    assert torch.equal(edge_index[0].view(-1, k).cpu(), _brute_force(feats, k, radius, window))


@requires_numba
def test_numba_kernel_with_overflowing_distances():
    # Finite features whose squares overflow float32: NaN / inf ranking distances must still
    # give k valid neighbours (in the window, outside the excluded zone, distinct).
    feats = torch.full((1, 2, 9, 11), 3e19)
    feats[0, :, 2:5, 3:6] = 1.0
    nbr, ctr = image_knn_graph(feats, k=6, search_window=5, backend="numba")
    y, x, ny, nx = ctr // 11, ctr % 11, nbr // 11, nbr % 11
    y0, x0 = (y - 2).clamp(0, 4), (x - 2).clamp(0, 6)
    assert bool(((ny >= y0) & (ny < y0 + 5) & (nx >= x0) & (nx < x0 + 5)).all())
    assert bool((torch.maximum((ny - y).abs(), (nx - x).abs()) > 1).all())
    assert nbr.view(-1, 6).sort(dim=1)[0].diff(dim=1).gt(0).all()
