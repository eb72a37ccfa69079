import pytest
import torch

import pyg_lecc.ops.reference as reference
from pyg_lecc import LightweightECC, image_knn_graph, image_to_nodes
from pyg_lecc.functional import gather_contract, scatter_outer


@pytest.fixture(params=["one_chunk", "many_chunks"])
def chunking(request, monkeypatch):
    if request.param == "many_chunks":  # chunk boundaries inside the edge list
        monkeypatch.setattr(reference, "_CPU_CHUNK_ELEMENTS", 7)
        monkeypatch.setattr(reference, "_MIN_CHUNK_EDGES", 3)
    return request.param


def _inputs(E=11, N=5, r=3, Fh=4, dtype=torch.float64):
    torch.manual_seed(0)
    return (
        torch.randn(E, Fh, dtype=dtype),
        torch.randn(N, r, Fh, dtype=dtype),
        torch.randint(0, N, (E,)),
        torch.randn(E, r, dtype=dtype),
    )


def test_gather_contract_matches_plain(chunking):
    z, V, src, _ = _inputs()
    expected = torch.stack([V[s] @ z[e] for e, s in enumerate(src.tolist())])
    assert torch.allclose(gather_contract(z, V, src), expected)


def test_scatter_outer_matches_plain(chunking):
    z, _, dst, a = _inputs()
    expected = torch.zeros(6, 3, 4, dtype=torch.float64)
    for e, n in enumerate(dst.tolist()):
        expected[n] += torch.outer(a[e], z[e])
    assert torch.allclose(scatter_outer(a, z, dst, 6), expected)


def test_gradcheck(chunking):
    z, V, src, a = _inputs()
    for t in (z, V, a):
        t.requires_grad_()
    assert torch.autograd.gradcheck(lambda z, V: gather_contract(z, V, src), (z, V))
    assert torch.autograd.gradcheck(lambda a, z: scatter_outer(a, z, src, 7), (a, z))


def test_opcheck():
    z, V, src, a = _inputs(dtype=torch.float32)
    for t in (z, V, a):
        t.requires_grad_()
    torch.library.opcheck(torch.ops.pyg_lecc.gather_contract.default, (z, V, src))
    torch.library.opcheck(torch.ops.pyg_lecc.scatter_outer.default, (a, z, src, 6))


def test_empty_edges():
    z, V, _, a = _inputs(E=0)
    src = torch.empty(0, dtype=torch.long)
    assert gather_contract(z, V, src).shape == (0, 3)
    assert torch.count_nonzero(scatter_outer(a, z, src, 4)) == 0


@pytest.mark.parametrize("graph", ["image", "random"])
def test_node_level_keeps_no_edge_by_rank_by_width_tensor(graph):
    # Record every tensor autograd saves for backward: none may have E x r x F elements,
    # which is exactly what the per-edge formulation keeps (twice).
    torch.manual_seed(0)
    F, r, k = 12, 5, 6
    feats = torch.randn(2, F, 10, 10)
    x = image_to_nodes(feats).requires_grad_()
    edge_index = image_knn_graph(feats, k=k)
    if graph == "random":
        edge_index = edge_index[:, torch.randperm(edge_index.size(1))]
    E = edge_index.size(1)

    def largest_saved(implementation):
        sizes = []

        def pack(t):
            sizes.append(t.numel())
            return t

        conv = LightweightECC(F, F, rank=r, implementation=implementation)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            conv(x, edge_index).sum().backward()
        return max(sizes)

    assert largest_saved("edge") >= E * r * F
    assert largest_saved("node") < E * r * F / 4
