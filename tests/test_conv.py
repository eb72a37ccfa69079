import numpy as np
import pytest
import torch
from torch_geometric import EdgeIndex
from torch_geometric.testing import assert_module

from pyg_lecc import LightweightECC, image_knn_graph, image_to_nodes


def _randomise(conv: LightweightECC, std: float = 0.3) -> LightweightECC:
    # The reference initialisation zeroes every bias; random values exercise them too.
    with torch.no_grad():
        for p in conv.parameters():
            p.normal_(std=std)
    return conv


def _random_graph(num_src: int, num_dst: int, num_edges: int) -> torch.Tensor:
    return torch.stack(
        [torch.randint(0, num_src, (num_edges,)), torch.randint(0, num_dst, (num_edges,))]
    )


def _plain_lightweight_ecc(conv: LightweightECC, x: np.ndarray, edge_index: np.ndarray):
    """Equation (1), non-local term, written from the formula with explicit indices."""
    W0 = conv.lin0_weight.detach().numpy()
    b0 = conv.lin0_bias.detach().numpy()
    W1, B1 = conv.psi_weight.detach().numpy(), conv.psi_bias.detach().numpy()
    W2, B2 = conv.phi_weight.detach().numpy(), conv.phi_bias.detach().numpy()
    Wl, bl = conv.omega_weight.detach().numpy(), conv.omega_bias.detach().numpy()
    Fh, r = W0.shape[0], conv.rank

    def circulant(z, W, width):  # z: (E, Fh) -> (E, r, width)
        s = W.shape[2]
        out = np.zeros((z.shape[0], r, width))
        g = np.arange(Fh)
        for b in range(width // s):
            rolled = z[:, (g - b * s) % Fh]  # z rolled by b*s positions
            for c in range(s):
                out[:, :, b * s + c] = rolled @ W[:, :, c]
        return out

    src, dst = edge_index
    label = x[src] - x[dst]
    pre = label @ W0.T + b0
    z = np.where(pre > 0, pre, 0.2 * pre)
    psi = circulant(z, W1, x.shape[1]) + B1
    phi = circulant(z, W2, conv.out_channels) + B2
    omega = z @ Wl.T + bl
    gamma = np.exp(-(label**2).sum(1) / conv.delta)
    weight = np.einsum("et,eto,etf->eof", omega, phi, psi)  # per-edge Fout x Fin matrix
    msg = gamma[:, None] * np.einsum("eof,ef->eo", weight, x[src])
    out = np.zeros((x.shape[0], conv.out_channels))
    np.add.at(out, dst, msg)
    deg = np.bincount(dst, minlength=x.shape[0])
    return out / np.maximum(deg, 1)[:, None]


def test_repr_and_stored_arguments():
    conv = LightweightECC(99, 99, circulant_stride=33)
    assert str(conv) == "LightweightECC(99, 99, rank=11)"
    assert (conv.in_channels, conv.out_channels, conv.rank, conv.delta) == (99, 99, 11, 10.0)
    assert conv.circulant_stride == 33 and conv.aggr == "mean"
    assert str(LightweightECC(8, 3, rank=2, circulant_stride=(4, 3))) == (
        "LightweightECC(8, 3, rank=2)"
    )


def test_parameter_count_circulant():
    dense = LightweightECC(99, 99, circulant_stride=None)
    circ = LightweightECC(99, 99, circulant_stride=33)
    # The second layer (psi and phi weights) shrinks by F / s = 3; the rest is unchanged.
    assert dense.psi_weight.numel() == 3 * circ.psi_weight.numel() == 99 * 11 * 99
    assert dense.phi_weight.numel() == 3 * circ.phi_weight.numel()
    assert circ.lin0_weight.shape == (99, 99)


def test_initialisation_statistics():
    torch.manual_seed(0)
    conv = LightweightECC(99, 99, circulant_stride=33)
    assert conv.psi_weight.std().item() == pytest.approx(1 / 99, rel=0.05)
    assert conv.omega_weight.std().item() == pytest.approx(1 / 11**0.5, rel=0.2)
    assert conv.lin0_weight.std().item() == pytest.approx((2 / (99 + 99)) ** 0.5, rel=0.05)
    for b in (conv.lin0_bias, conv.psi_bias, conv.phi_bias, conv.omega_bias, conv.bias):
        assert torch.count_nonzero(b) == 0


@pytest.mark.parametrize("implementation", ["node", "edge"])
def test_shapes_and_layouts(implementation):
    torch.manual_seed(0)
    conv = _randomise(LightweightECC(8, 5, rank=3, implementation=implementation))
    x = torch.randn(6, 8)
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 5, 2], [1, 0, 0, 4, 3, 3, 5]])
    assert_module(conv, x, edge_index, expected_size=(6, 5))
    out = conv(x, edge_index)
    assert torch.allclose(conv(x, edge_index, size=(6, 6)), out)


@pytest.mark.parametrize("implementation", ["node", "edge"])
def test_bipartite(implementation):
    torch.manual_seed(0)
    conv = _randomise(LightweightECC(8, 5, rank=3, implementation=implementation))
    x_src, x_dst = torch.randn(7, 8), torch.randn(3, 8)
    edge_index = torch.tensor([[0, 6, 2, 3, 5], [0, 0, 1, 2, 2]])
    out = assert_module(conv, (x_src, x_dst), edge_index, expected_size=(3, 5))
    assert torch.allclose(conv((x_src, x_dst), edge_index, size=(7, 3)), out)


def test_equals_plain_formula_on_image_patch():
    torch.manual_seed(0)
    feats = torch.randn(1, 6, 42, 42, dtype=torch.float64)
    edge_index = image_knn_graph(feats, k=8)
    x = image_to_nodes(feats)
    conv = _randomise(LightweightECC(6, 9, rank=2, circulant_stride=(3, 3), hidden_channels=5))
    conv = conv.double()
    expected = _plain_lightweight_ecc(conv, x.numpy(), edge_index.numpy())
    expected = torch.from_numpy(expected) + conv.bias.detach()
    for implementation in ("node", "edge"):
        conv.implementation = implementation
        assert torch.allclose(conv(x, edge_index), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "dtype,rtol,atol", [(torch.float64, 1e-10, 1e-12), (torch.float32, 1e-5, 1e-5)]
)
@pytest.mark.parametrize("graph", ["random_degrees", "bipartite", "image"])
def test_node_level_equals_per_edge(dtype, rtol, atol, graph):
    torch.manual_seed(1)
    conv = _randomise(LightweightECC(12, 6, rank=3, circulant_stride=(4, 3))).to(dtype)
    if graph == "image":
        feats = torch.randn(2, 12, 9, 10, dtype=dtype)
        x, edge_index = image_to_nodes(feats), image_knn_graph(feats, k=6)
    elif graph == "bipartite":
        x = (torch.randn(30, 12, dtype=dtype), torch.randn(11, 12, dtype=dtype))
        edge_index = _random_graph(30, 11, 90)
    else:  # random in-degrees, some isolated target nodes
        x = torch.randn(40, 12, dtype=dtype)
        edge_index = _random_graph(40, 30, 150)
    x_in = [t.clone().requires_grad_() for t in (x if isinstance(x, tuple) else (x,))]
    outs, grads = [], []
    for implementation in ("node", "edge"):
        conv.implementation = implementation
        conv.zero_grad()
        for t in x_in:
            t.grad = None
        out = conv(tuple(x_in) if len(x_in) == 2 else x_in[0], edge_index)
        (out * torch.linspace(-1, 1, out.numel(), dtype=dtype).view_as(out)).sum().backward()
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in conv.parameters()] + [t.grad for t in x_in])
    assert torch.allclose(outs[0], outs[1], rtol=rtol, atol=atol)
    for g_node, g_edge in zip(grads[0], grads[1], strict=True):
        assert torch.allclose(g_node, g_edge, rtol=rtol * 10, atol=atol * 10)


@pytest.mark.parametrize("implementation", ["node", "edge"])
def test_empty_graph_and_isolated_nodes(implementation):
    conv = _randomise(LightweightECC(4, 3, rank=2, implementation=implementation))
    x = torch.randn(5, 4)
    out = conv(x, torch.empty(2, 0, dtype=torch.long))
    assert torch.allclose(out, conv.bias.expand(5, 3))
    out = conv(x, torch.tensor([[1], [0]]))
    assert torch.allclose(out[1:], conv.bias.expand(4, 3))
    assert not torch.allclose(out[0], conv.bias)


@pytest.mark.parametrize("implementation", ["node", "edge"])
def test_mean_invariant_to_duplicated_edges(implementation):
    torch.manual_seed(0)
    conv = _randomise(LightweightECC(6, 4, rank=2, implementation=implementation))
    x, edge_index = torch.randn(10, 6), _random_graph(10, 10, 25)
    doubled = torch.cat([edge_index, edge_index], dim=1)
    assert torch.allclose(conv(x, edge_index), conv(x, doubled), atol=1e-6)
    conv_sum = LightweightECC(6, 4, rank=2, aggr="add", implementation=implementation)
    conv_sum.load_state_dict(conv.state_dict())
    no_bias = conv_sum(x, edge_index) - conv_sum.bias
    assert torch.allclose(conv_sum(x, doubled) - conv_sum.bias, 2 * no_bias, atol=1e-5)


@pytest.mark.parametrize("implementation", ["node", "edge"])
def test_gradients_reach_every_parameter(implementation):
    torch.manual_seed(0)
    conv = _randomise(LightweightECC(6, 6, rank=2, circulant_stride=3))
    conv.implementation = implementation
    x = torch.randn(12, 6, requires_grad=True)
    conv(x, _random_graph(12, 12, 40)).pow(2).sum().backward()
    for name, p in conv.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_low_rank_message():
    # With the label x_j - x_i fixed (the same shift added to both endpoints), the output of
    # a node with one neighbour is linear in the shift, through a matrix of rank <= r.
    torch.manual_seed(0)
    rank = 3
    conv = _randomise(LightweightECC(8, 8, rank=rank)).double()
    x = torch.randn(2, 8, dtype=torch.float64)
    edge_index = torch.tensor([[1], [0]])

    def out_of_shift(shift):
        return conv(x + shift, edge_index)[0]

    jac = torch.autograd.functional.jacobian(out_of_shift, torch.zeros(8, dtype=torch.float64))
    assert torch.linalg.matrix_rank(jac).item() == rank
    # A second neighbour with another label adds up to r more dimensions: the bound is real.
    edge_index = torch.tensor([[1, 1], [0, 0]])
    x2 = torch.randn(2, 8, dtype=torch.float64)
    conv.implementation = "edge"

    def out_two(shift):
        return conv((torch.cat([x2[:1], x2[1:] * 2]) + shift, x2 + shift), edge_index)[0]

    assert (
        torch.linalg.matrix_rank(
            torch.autograd.functional.jacobian(out_two, torch.zeros(8, dtype=torch.float64))
        ).item()
        <= rank
    )


def test_gradcheck_node_level():
    torch.manual_seed(0)
    conv = _randomise(LightweightECC(4, 3, rank=2, circulant_stride=(2, 3))).double()
    x = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    # A random graph (scatter path) and a regular one (grouped-by-target path).
    regular = image_knn_graph(x.detach().t().reshape(1, 4, 7, 1), k=3, exclude_radius=0)
    for edge_index in (_random_graph(7, 7, 15), regular):
        assert torch.autograd.gradcheck(lambda t, ei=edge_index: conv(t, ei), (x,))
    params = tuple(conv.parameters())

    def as_function_of_params(*ps):
        return torch.func.functional_call(
            conv,
            dict(zip([n for n, _ in conv.named_parameters()], ps, strict=True)),
            (x.detach(), edge_index),
        )

    assert torch.autograd.gradcheck(as_function_of_params, params)


def test_torch_compile_no_graph_breaks():
    torch.manual_seed(0)
    conv = _randomise(LightweightECC(8, 6, rank=3, circulant_stride=(4, 3)))
    x = torch.randn(20, 8)
    edge_index = _random_graph(20, 20, 60)
    explanation = torch._dynamo.explain(conv)(x, edge_index)
    assert explanation.graph_break_count == 0
    torch._dynamo.reset()
    compiled = torch.compile(conv, backend="aot_eager", fullgraph=True)
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    out_eager, out_compiled = conv(x1, edge_index), compiled(x2, edge_index)
    assert torch.allclose(out_eager, out_compiled, atol=1e-6)
    out_eager.sum().backward()
    out_compiled.sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(rank=0), "rank"),
        (dict(delta=0.0), "delta"),
        (dict(delta=-1.0), "delta"),
        (dict(circulant_stride=5), "circulant_stride.*divides in_channels=8"),
        (dict(circulant_stride=(4, 5)), "circulant_stride.*divides out_channels=6"),
        (dict(circulant_stride=(4, 3, 1)), "circulant_stride"),
        (dict(hidden_channels=0), "hidden_channels"),
        (dict(implementation="fast"), "implementation"),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LightweightECC(8, 6, **kwargs)


@pytest.mark.parametrize("implementation", ["node", "edge"])
def test_forward_errors(implementation):
    conv = LightweightECC(4, 3, rank=2, implementation=implementation)
    x, edge_index = torch.randn(5, 4), torch.tensor([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match=r"source node features of shape \(num_nodes, 4\)"):
        conv(torch.randn(5, 3), edge_index)
    with pytest.raises(ValueError, match="target node features"):
        conv((x, torch.randn(2, 5)), edge_index)
    with pytest.raises(ValueError, match=r"shape \(2, num_edges\)"):
        conv(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"shape \(2, num_edges\)"):
        conv(x, torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"dtype torch\.long"):
        conv(x, edge_index.float())
    with pytest.raises(IndexError, match=r"source indices must lie in \[0, 4\]"):
        conv(x, torch.tensor([[0, 5], [1, 2]]))
    with pytest.raises(IndexError, match=r"target indices must lie in \[0, 1\]"):
        conv((x, torch.randn(2, 4)), torch.tensor([[0, 1], [1, 2]]))
    with pytest.raises(IndexError, match="source indices"):
        conv(x, torch.tensor([[-1, 0], [1, 2]]))


def test_edge_index_sorted_by_target_equals_plain_tensor():
    # A user's own EdgeIndex sorted by target, without cached pointers: the layer fills the
    # cache on first use, for the next layer that receives the same graph.
    torch.manual_seed(0)
    conv = _randomise(LightweightECC(6, 4, rank=2, circulant_stride=(3, 2)))
    feats = torch.randn(2, 6, 7, 8)
    x, plain = image_to_nodes(feats), image_knn_graph(feats, k=5).as_tensor()
    edge_index = EdgeIndex(plain, sparse_size=(x.size(0), x.size(0)), sort_order="col")
    assert edge_index._indptr is None
    out = conv(x, edge_index)
    assert edge_index._indptr is not None  # the pointers are cached for the next layer
    assert torch.allclose(out, conv(x, plain), atol=1e-6)
    shuffled = plain[:, torch.randperm(plain.size(1))]  # sorted inside the layer instead
    assert torch.allclose(conv(x, shuffled), out, atol=1e-6)


def _spy_on_edges(monkeypatch) -> list:
    # Records the (rowptr, col) that the node-level path hands to the fused operator.
    import pyg_lecc.conv as conv_module

    seen, real = [], conv_module.edge_aggregate

    def spy(*args):
        seen.append((args[9], args[10]))
        return real(*args)

    monkeypatch.setattr(conv_module, "edge_aggregate", spy)
    return seen


def test_builder_graph_is_taken_without_reading_its_indices(monkeypatch):
    # The builder's graph hands over its cached pointers and source row as they are (no
    # grouping check, no sort, no pointer computation); the result and gradients are those
    # of the same graph as a plain tensor.
    torch.manual_seed(0)
    conv = _randomise(LightweightECC(6, 4, rank=2, circulant_stride=(3, 2)))
    feats = torch.randn(2, 6, 7, 8)
    edge_index = image_knn_graph(feats, k=5)
    plain = edge_index.as_tensor().clone()
    x1, x2 = (image_to_nodes(feats).requires_grad_() for _ in range(2))
    seen = _spy_on_edges(monkeypatch)

    expected = conv(x1, plain)
    ((plain_ptr, plain_col),) = seen
    assert plain_ptr is not edge_index._indptr  # control: a plain tensor is converted

    def fail(*args, **kwargs):
        raise AssertionError("the builder's graph was sorted or converted")

    monkeypatch.setattr(torch, "sort", fail)
    monkeypatch.setattr(torch, "_convert_indices_from_coo_to_csr", fail)
    for _ in range(2):  # a second layer on the same graph finds the same pointers
        seen.clear()
        out = conv(x2, edge_index)
        ((rowptr, col),) = seen
        assert rowptr is edge_index._indptr
        assert col.data_ptr() == edge_index.as_tensor()[0].data_ptr()  # a view, no copy
    monkeypatch.undo()

    assert torch.equal(out, expected)
    assert torch.equal(rowptr, plain_ptr) and torch.equal(col, plain_col)
    expected.sum().backward()
    out.sum().backward()
    assert torch.equal(x1.grad, x2.grad)


@pytest.mark.parametrize(
    "kwargs", [dict(), dict(implementation="edge"), dict(edge_dim=3), dict(attention=False)]
)
def test_builder_graph_equals_plain_tensor(kwargs):
    torch.manual_seed(0)
    conv = _randomise(LightweightECC(6, 4, rank=2, circulant_stride=(3, 2), **kwargs))
    feats = torch.randn(2, 6, 7, 8)
    x, edge_index = image_to_nodes(feats), image_knn_graph(feats, k=5)
    args = (torch.randn(edge_index.size(1), 3),) if "edge_dim" in kwargs else ()
    out = conv(x, edge_index, *args)
    assert torch.allclose(out, conv(x, edge_index.as_tensor(), *args), atol=1e-6)


def _graph_recorder() -> tuple[list, object]:
    # A torch.compile backend that keeps the names of the ops Dynamo captured.
    ops: list[str] = []

    def backend(gm, example_inputs):
        ops.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    return ops, backend


@pytest.mark.parametrize("graph", ["builder", "own_edge_index"])
def test_torch_compile_takes_cached_pointers(graph):
    # Compiled, the builder's graph adds no sort and no pointer computation to the captured
    # graph (a plain tensor is always sorted under compile: the control); a user's EdgeIndex
    # without cached pointers gets them computed (filling its cache cannot be traced) but
    # not sorted.
    torch.manual_seed(0)
    conv = _randomise(LightweightECC(6, 4, rank=2, circulant_stride=(3, 2)))
    feats = torch.randn(2, 6, 7, 8)
    x, edge_index = image_to_nodes(feats), image_knn_graph(feats, k=5)
    plain = edge_index.as_tensor()
    if graph == "own_edge_index":
        edge_index = EdgeIndex(plain, sparse_size=edge_index.sparse_size(), sort_order="col")

    def captured(ei):
        torch._dynamo.reset()
        ops, backend = _graph_recorder()
        out = torch.compile(conv, backend=backend, fullgraph=True)(x, ei)
        assert torch.allclose(out, conv(x, plain), atol=1e-6)
        return " ".join(ops)

    assert "sort" in captured(plain)
    ops = captured(edge_index)
    assert "sort" not in ops
    assert ("coo_to_csr" in ops) == (graph == "own_edge_index")

    torch._dynamo.reset()
    compiled = torch.compile(conv, backend="aot_eager", fullgraph=True)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_eager, out_compiled = conv(x1, plain), compiled(x2, edge_index)
    assert torch.allclose(out_eager, out_compiled, atol=1e-6)
    out_eager.sum().backward()
    out_compiled.sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-5)


# --- Conditioning on edge features (edge_dim), the low-memory NNConv ----------------------


def _with_edge_dim(conv: LightweightECC, **kwargs) -> LightweightECC:
    """A layer with the same weights as :obj:`conv`, conditioned on ``edge_attr``."""
    out = LightweightECC(
        conv.in_channels,
        conv.out_channels,
        rank=conv.rank,
        delta=conv.delta,
        circulant_stride=conv.circulant_stride,
        hidden_channels=conv.hidden_channels,
        edge_dim=conv.lin0_weight.size(1),
        **kwargs,
    )
    out.load_state_dict(conv.state_dict())
    return out.to(conv.lin0_weight.dtype)


def _plain_edge_conditioned(conv, x, edge_index, edge_attr, attention=True):
    """The edge-conditioned formula with explicit per-edge weight matrices, dense rolls."""
    W0, b0 = conv.lin0_weight.detach().numpy(), conv.lin0_bias.detach().numpy()
    Wl, bl = conv.omega_weight.detach().numpy(), conv.omega_bias.detach().numpy()
    r = conv.rank

    def rows(z, W, B, width):  # (E, r, width): row t, column b*s+c reads z rolled by b*s
        s = W.shape[2]
        out = np.empty((z.shape[0], r, width))
        for f in range(width):
            b, c = divmod(f, s)
            out[:, :, f] = np.roll(z, b * s, axis=1) @ W[:, :, c]
        return out + B

    src, dst = edge_index
    pre = edge_attr @ W0.T + b0
    z = np.maximum(pre, 0.2 * pre)
    psi = rows(z, conv.psi_weight.detach().numpy(), conv.psi_bias.detach().numpy(), x.shape[1])
    phi = rows(
        z, conv.phi_weight.detach().numpy(), conv.phi_bias.detach().numpy(), conv.out_channels
    )
    omega = z @ Wl.T + bl
    gamma = np.exp(-(edge_attr**2).sum(1) / conv.delta) if attention else np.ones(len(src))
    out = np.zeros((x.shape[0], conv.out_channels))
    count = np.zeros(x.shape[0])
    for e in range(len(src)):
        weight = sum(omega[e, t] * np.outer(phi[e, t], psi[e, t]) for t in range(r))
        out[dst[e]] += gamma[e] * weight @ x[src[e]]
        count[dst[e]] += 1
    return out / np.maximum(count, 1)[:, None]


@pytest.mark.parametrize("graph", ["random_degrees", "bipartite"])
@pytest.mark.parametrize("implementation", ["node", "edge"])
def test_edge_attr_of_differences_equals_default_mode(implementation, graph):
    torch.manual_seed(2)
    conv = _randomise(LightweightECC(12, 6, rank=3, circulant_stride=(4, 3), hidden_channels=8))
    conv = conv.double()
    if graph == "bipartite":
        x = (torch.randn(30, 12, dtype=torch.float64), torch.randn(11, 12, dtype=torch.float64))
        edge_index = _random_graph(30, 11, 90)
    else:
        x = torch.randn(40, 12, dtype=torch.float64)
        edge_index = _random_graph(40, 30, 150)
    x_src, x_dst = x if isinstance(x, tuple) else (x, x)
    edge_attr = x_src[edge_index[0]] - x_dst[edge_index[1]]
    expected = conv(x, edge_index)  # the fused default path
    conv_attr = _with_edge_dim(conv, implementation=implementation)
    assert conv_attr.lin0_weight.shape == (8, 12)
    assert torch.allclose(conv_attr(x, edge_index, edge_attr), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("attention", [True, False])
@pytest.mark.parametrize("implementation", ["node", "edge"])
def test_edge_attr_equals_plain_formula(implementation, attention):
    torch.manual_seed(3)
    conv = LightweightECC(
        6, 9, rank=2, circulant_stride=(3, 3), hidden_channels=5, edge_dim=4,
        attention=attention, implementation=implementation,
    )  # fmt: skip
    conv = _randomise(conv).double()
    x = torch.randn(15, 6, dtype=torch.float64)
    edge_index = _random_graph(15, 12, 50)
    edge_attr = torch.randn(50, 4, dtype=torch.float64)
    expected = _plain_edge_conditioned(
        conv, x.numpy(), edge_index.numpy(), edge_attr.numpy(), attention
    )
    expected = torch.from_numpy(expected) + conv.bias.detach()
    out = conv(x, edge_index, edge_attr)
    assert torch.allclose(out[:12], expected[:12], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("implementation", ["node", "edge"])
def test_attention_off_without_edge_dim(implementation):
    # gamma = 1 on the label x_j - x_i: the same as edge_attr = x_j - x_i, attention off.
    torch.manual_seed(4)
    conv = LightweightECC(6, 4, rank=2, attention=False, implementation=implementation)
    conv = _randomise(conv).double()
    x = torch.randn(10, 6, dtype=torch.float64)
    edge_index = _random_graph(10, 10, 30)
    edge_attr = x[edge_index[0]] - x[edge_index[1]]
    expected = _plain_edge_conditioned(
        conv, x.numpy(), edge_index.numpy(), edge_attr.numpy(), False
    )
    expected = torch.from_numpy(expected) + conv.bias.detach()
    assert torch.allclose(conv(x, edge_index), expected, rtol=1e-10, atol=1e-12)
    with_attention = LightweightECC(6, 4, rank=2, implementation=implementation).double()
    with_attention.load_state_dict(conv.state_dict())
    assert not torch.allclose(with_attention(x, edge_index), expected)


@pytest.mark.parametrize("implementation", ["node", "edge"])
def test_edge_attr_edge_order_and_sparse_adjacency(implementation):
    from torch_geometric.utils import coalesce, to_torch_coo_tensor, to_torch_csr_tensor

    torch.manual_seed(5)
    conv = _randomise(LightweightECC(8, 5, rank=3, edge_dim=3, implementation=implementation))
    x = torch.randn(9, 8)
    edge_index = coalesce(_random_graph(9, 9, 30), num_nodes=9)  # no duplicates
    edge_attr = torch.randn(edge_index.size(1), 3)
    out = assert_module(
        conv, x, edge_index, edge_attr=edge_attr, expected_size=(9, 5), test_sparse_layouts=[],
        atol=1e-6,
    )  # fmt: skip
    # A sparse adjacency (targets as rows) carries the edge features as its values.
    adj_coo = to_torch_coo_tensor(edge_index, edge_attr, size=(9, 9)).transpose(0, 1).coalesce()
    adj_csr = to_torch_csr_tensor(edge_index.flip(0), edge_attr, size=(9, 9))
    for adj in (adj_coo, adj_csr):
        assert torch.allclose(conv(x, adj), out, atol=1e-6)
    # 1-D edge features for edge_dim=1.
    conv1 = _randomise(LightweightECC(8, 5, rank=3, edge_dim=1, implementation=implementation))
    assert torch.allclose(
        conv1(x, edge_index, edge_attr[:, 0]), conv1(x, edge_index, edge_attr[:, :1])
    )


@pytest.mark.parametrize("implementation", ["node", "edge"])
def test_edge_attr_gradcheck(implementation):
    torch.manual_seed(6)
    conv = LightweightECC(
        4, 3, rank=2, circulant_stride=(2, 3), edge_dim=2, implementation=implementation
    )
    conv = _randomise(conv).double()
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    edge_attr = torch.randn(14, 2, dtype=torch.float64, requires_grad=True)
    edge_index = _random_graph(6, 6, 14)
    assert torch.autograd.gradcheck(lambda a, b: conv(a, edge_index, b), (x, edge_attr))
    names = [n for n, _ in conv.named_parameters()]

    def as_function_of_params(*ps):
        params = dict(zip(names, ps, strict=True))
        return torch.func.functional_call(
            conv, params, (x.detach(), edge_index, edge_attr.detach())
        )

    assert torch.autograd.gradcheck(as_function_of_params, tuple(conv.parameters()))


def test_edge_attr_torch_compile_no_graph_breaks():
    torch.manual_seed(7)
    conv = _randomise(LightweightECC(8, 6, rank=3, circulant_stride=(4, 3), edge_dim=5))
    x, edge_index = torch.randn(20, 8), _random_graph(20, 20, 60)
    edge_attr = torch.randn(60, 5)
    explanation = torch._dynamo.explain(conv)(x, edge_index, edge_attr)
    assert explanation.graph_break_count == 0
    torch._dynamo.reset()
    compiled = torch.compile(conv, backend="aot_eager", fullgraph=True)
    a1, a2 = edge_attr.clone().requires_grad_(), edge_attr.clone().requires_grad_()
    out_eager, out_compiled = conv(x, edge_index, a1), compiled(x, edge_index, a2)
    assert torch.allclose(out_eager, out_compiled, atol=1e-6)
    out_eager.sum().backward()
    out_compiled.sum().backward()
    assert torch.allclose(a1.grad, a2.grad, atol=1e-5)


@pytest.mark.parametrize("implementation", ["node", "edge"])
def test_edge_attr_errors(implementation):
    x, edge_index = torch.randn(5, 4), torch.tensor([[0, 1, 3], [1, 2, 2]])
    conv = LightweightECC(4, 3, rank=2, edge_dim=2, implementation=implementation)
    with pytest.raises(ValueError, match=r"edge_dim=2 and needs 'edge_attr'"):
        conv(x, edge_index)
    with pytest.raises(ValueError, match=r"'edge_attr' of shape \(3, 2\).*got \(3, 5\)"):
        conv(x, edge_index, torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"'edge_attr' of shape \(3, 2\).*got \(4, 2\)"):
        conv(x, edge_index, torch.randn(4, 2))
    plain = LightweightECC(4, 3, rank=2, implementation=implementation)
    with pytest.raises(ValueError, match="without 'edge_dim'"):
        plain(x, edge_index, torch.randn(3, 2))
    with pytest.raises(ValueError, match="edge_dim"):
        LightweightECC(4, 3, edge_dim=0)


@pytest.mark.parametrize("implementation", ["node", "edge"])
@pytest.mark.parametrize(
    "size,target",
    # Both once read past the end of x (a segfault, or 8 rows of made-up values).
    [((6, 5_000_001), 5_000_000), ((6, 8), 7), ((9, 6), 0)],
)
def test_size_must_match_the_node_features(implementation, size, target):
    conv = LightweightECC(8, 8, rank=3, implementation=implementation)
    with pytest.raises(ValueError, match=r"'size' .* does not match the (source|target) node"):
        conv(torch.randn(6, 8), torch.tensor([[0], [target]]), size=size)


@pytest.mark.parametrize("implementation", ["node", "edge"])
def test_matching_size_is_accepted(implementation):
    conv = _randomise(LightweightECC(4, 3, rank=2, implementation=implementation))
    x_src, x_dst, edge_index = torch.randn(6, 4), torch.randn(2, 4), _random_graph(6, 2, 9)
    expected = conv((x_src, x_dst), edge_index)
    assert torch.allclose(conv((x_src, x_dst), edge_index, size=(6, 2)), expected)
    assert torch.allclose(conv((x_src, x_dst), edge_index, size=(None, 2)), expected)


@pytest.mark.parametrize("implementation", ["node", "edge"])
@pytest.mark.parametrize("edge_dim", [None, 2])
def test_graph_without_nodes(implementation, edge_dim):
    conv = LightweightECC(4, 3, rank=2, implementation=implementation, edge_dim=edge_dim)
    x = torch.randn(0, 4, requires_grad=True)
    edge_attr = None if edge_dim is None else torch.randn(0, edge_dim)
    out = conv(x, torch.empty(2, 0, dtype=torch.long), edge_attr)
    assert out.shape == (0, 3)
    out.sum().backward()
    assert x.grad.shape == (0, 4)


@pytest.mark.parametrize("implementation", ["node", "edge"])
def test_missing_target_features_with_edge_dim(implementation):
    # PyG's (x_src, None) convention: the edge_attr mode never reads the target features.
    torch.manual_seed(0)
    conv = _randomise(LightweightECC(4, 3, rank=2, edge_dim=2, implementation=implementation))
    x, edge_index = torch.randn(7, 4), _random_graph(7, 3, 12)
    edge_attr = torch.randn(12, 2)
    expected = conv((x, x[:3]), edge_index, edge_attr)
    assert torch.allclose(conv((x, None), edge_index, edge_attr, size=(7, 3)), expected)
    # No size: as many targets as sources, as in PyG.
    out = conv((x, None), edge_index, edge_attr)
    assert out.shape == (7, 3)
    assert torch.allclose(out[:3], expected)


@pytest.mark.parametrize("implementation", ["node", "edge"])
def test_missing_target_features_without_edge_dim_is_refused(implementation):
    conv = LightweightECC(4, 3, rank=2, implementation=implementation)
    with pytest.raises(ValueError, match=r"target node features None.*x_j - x_i"):
        conv((torch.randn(5, 4), None), torch.tensor([[0, 1], [1, 0]]))


@pytest.mark.parametrize("dtype", [torch.long, torch.float16, torch.float64])
def test_edge_attr_of_another_dtype_is_named(dtype):
    conv = LightweightECC(4, 3, rank=2, edge_dim=2)
    edge_attr = torch.ones(2, 2, dtype=dtype)
    with pytest.raises(ValueError, match=rf"'edge_attr' in the dtype .*got {dtype}"):
        conv(torch.randn(5, 4), torch.tensor([[0, 1], [1, 0]]), edge_attr)


def test_edge_index_falsely_sorted_is_caught_in_debug_mode():
    import torch_geometric

    conv = LightweightECC(4, 3, rank=2)
    edge_index = EdgeIndex(
        torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]]), sparse_size=(4, 4), sort_order="col"
    )
    with torch_geometric.debug(), pytest.raises(ValueError, match="not sorted by column"):
        conv(torch.randn(4, 4), edge_index)


@pytest.mark.parametrize("edge_dim", [None, 3])
def test_lazy_in_channels_equals_eager(edge_dim):
    x, edge_index = torch.randn(9, 6), _random_graph(9, 9, 20)
    edge_attr = None if edge_dim is None else torch.randn(20, edge_dim)
    lazy = LightweightECC(-1, 4, rank=2, circulant_stride=(3, 2), edge_dim=edge_dim)
    assert "UninitializedParameter" in repr(lazy.psi_weight.__class__)
    torch.manual_seed(0)
    out = lazy(x, edge_index, edge_attr)
    eager = LightweightECC(6, 4, rank=2, circulant_stride=(3, 2), edge_dim=edge_dim)
    assert {k: v.shape for k, v in lazy.state_dict().items()} == {
        k: v.shape for k, v in eager.state_dict().items()
    }
    eager.load_state_dict(lazy.state_dict())
    assert torch.allclose(eager(x, edge_index, edge_attr), out)
    # Trained weights into a fresh lazy layer: the shapes give the widths.
    reloaded = LightweightECC(-1, 4, rank=2, circulant_stride=(3, 2), edge_dim=edge_dim)
    reloaded.load_state_dict(eager.state_dict())
    assert torch.allclose(reloaded(x, edge_index, edge_attr), out)
    with pytest.raises(ValueError, match=r"source node features of shape \(num_nodes, 6\)"):
        lazy(torch.randn(9, 5), edge_index, edge_attr)


def test_lazy_in_channels_checks_the_stride_at_the_first_input():
    conv = LightweightECC(-1, 4, rank=2, circulant_stride=4)
    with pytest.raises(ValueError, match="divides in_channels=6"):
        conv(torch.randn(5, 6), _random_graph(5, 5, 8))


def test_tuple_in_channels_needs_edge_dim_when_widths_differ():
    with pytest.raises(ValueError, match="source and target widths differ"):
        LightweightECC((5, 3), 4)
    with pytest.raises(ValueError, match="'in_channels' must be"):
        LightweightECC((5, 0), 4, edge_dim=2)
    conv = _randomise(LightweightECC((5, 3), 4, rank=2, edge_dim=2))
    x_src, x_dst, edge_index = torch.randn(7, 5), torch.randn(4, 3), _random_graph(7, 4, 10)
    edge_attr = torch.randn(10, 2)
    out = conv((x_src, x_dst), edge_index, edge_attr)
    # Only the source features enter the edge_attr mode: any target features of width 3 agree.
    assert torch.allclose(out, conv((x_src, torch.randn(4, 3)), edge_index, edge_attr))
    assert torch.allclose(out, conv((x_src, None), edge_index, edge_attr, size=(7, 4)))
    with pytest.raises(ValueError, match=r"target node features of shape \(num_nodes, 3\)"):
        conv((x_src, torch.randn(4, 5)), edge_index, edge_attr)


def test_to_hetero_with_node_types_of_different_widths():
    from torch_geometric.nn import to_hetero

    torch.manual_seed(0)
    x_dict = {"atom": torch.randn(6, 5), "ring": torch.randn(3, 2)}
    types = [("atom", "bond", "atom"), ("ring", "holds", "atom"), ("atom", "in", "ring")]
    sizes = {"atom": 6, "ring": 3}
    edge_index_dict = {t: _random_graph(sizes[t[0]], sizes[t[2]], 8) for t in types}
    edge_attr_dict = {t: torch.randn(8, 3) for t in types}

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = LightweightECC((-1, -1), 4, rank=2, edge_dim=3)

        def forward(self, x, edge_index, edge_attr):
            return self.conv(x, edge_index, edge_attr)

    model = to_hetero(Net(), (list(x_dict), types), aggr="sum")
    out = model(x_dict, edge_index_dict, edge_attr_dict)
    # Independently: each edge type's own layer on its bipartite pair, summed per target.
    expected = {"atom": 0, "ring": 0}
    for t in types:
        conv = model.conv["__".join(t)]
        pair = (x_dict[t[0]], x_dict[t[2]])
        expected[t[2]] = expected[t[2]] + conv(pair, edge_index_dict[t], edge_attr_dict[t])
    assert model.conv["ring__holds__atom"].psi_bias.shape == (2, 2)  # source width 2
    for node_type in x_dict:
        assert out[node_type].shape == (sizes[node_type], 4)
        assert torch.allclose(out[node_type], expected[node_type])


@pytest.mark.parametrize("edge_dim", [None, 2])
@pytest.mark.parametrize("implementation", ["node", "edge"])
def test_neighbor_loader_style_mini_batch(edge_dim, implementation):
    # What a NeighborLoader batch gives a layer (the loader itself needs pyg-lib): the seed
    # nodes first, their sampled neighbours after, the edges and their edge_attr sliced.
    torch.manual_seed(0)
    conv = _randomise(LightweightECC(4, 3, rank=2, edge_dim=edge_dim))
    conv.implementation = implementation
    x, edge_index = torch.randn(12, 4), _random_graph(12, 12, 40)
    edge_attr = None if edge_dim is None else torch.randn(40, 2)
    full = conv(x, edge_index, edge_attr)

    seeds = torch.tensor([7, 2, 9])
    e_id = torch.isin(edge_index[1], seeds).nonzero().view(-1)  # all neighbours sampled
    others = edge_index[0, e_id][~torch.isin(edge_index[0, e_id], seeds)].unique()
    n_id = torch.cat([seeds, others])
    relabel = torch.full((12,), -1).index_put_((n_id,), torch.arange(n_id.numel()))
    sub_edges = relabel[edge_index[:, e_id]]
    sub_attr = None if edge_attr is None else edge_attr[e_id]
    x_sub = x[n_id]
    out = conv((x_sub, x_sub[: seeds.numel()]), sub_edges, sub_attr, size=(n_id.numel(), 3))
    assert torch.allclose(out, full[seeds], atol=1e-6)


def test_explainer_masks_only_edges_of_the_explained_node():
    from torch_geometric.explain import Explainer, GNNExplainer

    torch.manual_seed(0)
    conv = _randomise(LightweightECC(4, 3, rank=2))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x, edge_index):
            return self.conv(x, edge_index)

    x, edge_index = torch.randn(10, 4), _random_graph(10, 10, 30)
    explainer = Explainer(
        Net(),
        algorithm=GNNExplainer(epochs=5),
        explanation_type="model",
        edge_mask_type="object",
        model_config=dict(mode="regression", task_level="node", return_type="raw"),
    )
    node = int(edge_index[1, 0])
    explanation = explainer(x, edge_index, index=node)
    assert explanation.edge_mask.shape == (30,)
    into_node = edge_index[1] == node
    assert bool((explanation.edge_mask[~into_node] == 0).all())
    assert bool((explanation.edge_mask[into_node] > 0).all())
    assert not conv.explain  # the explain path is switched off again
