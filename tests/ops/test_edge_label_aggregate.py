"""Tests of the fused op of the ``edge_dim`` mode, :func:`pyg_lecc.ops.edge_label_aggregate`:
the reference against the plain definition, the Numba kernel against the reference,
gradients, dispatch and input checks (the Triton kernels: ``tests/ops/test_cuda_kernels.py``)."""

import os

import pytest
import torch
import torch.nn.functional as F
from ops_helpers import GRAPHS, make_graph, requires_numba

import pyg_lecc.ops.backends as backends
import pyg_lecc.ops.reference as reference
from pyg_lecc.ops import backend_for, edge_label_aggregate, use_reference
from pyg_lecc.typing import WITH_NUMBA

SLOPE = 0.2
NAMES = ("pre", "gamma", "V", "c", "w_omega", "b_omega")


def _case(kind: str, dtype=torch.float64, Fh=5, r=3, attention=True, seed=0):
    """``(floats, rowptr, col)`` with ``floats = [pre, gamma, V, c, w_omega, b_omega]``."""
    gen = torch.Generator().manual_seed(seed)
    num_src, num_dst, src, dst = make_graph(kind, gen)
    dst, perm = torch.sort(dst, stable=True)
    rowptr = torch._convert_indices_from_coo_to_csr(dst, num_dst)
    E = src.numel()
    shapes = [(E, Fh), (E,), (num_src, r, Fh), (num_src, r), (r, Fh), (r,)]
    floats = [0.5 * torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    floats[1] = torch.rand(E, generator=gen, dtype=dtype) if attention else None
    return floats, rowptr, src[perm]


def _plain(pre, gamma, V, c, w, bw, rowptr, col):
    """The definition, with autograd over full gathered per-edge tensors."""
    z = F.leaky_relu(pre, SLOPE)
    num_dst = rowptr.numel() - 1
    dst = torch.arange(num_dst).repeat_interleave(rowptr.diff())
    omega = torch.einsum("tg,eg->et", w, z) + bw
    u = torch.einsum("etg,eg->et", V[col], z) + c[col]
    a = omega * u if gamma is None else gamma[:, None] * omega * u
    Q = torch.zeros(num_dst, *V.shape[1:], dtype=V.dtype).index_add(
        0, dst, torch.einsum("et,eg->etg", a, z)
    )
    P = torch.zeros(num_dst, V.size(1), dtype=V.dtype).index_add(0, dst, a)
    return Q, P


def _op(*args):
    return edge_label_aggregate(*args, SLOPE)


def _value_and_grads(fn, floats, rowptr, col):
    inputs = [None if t is None else t.detach().clone().requires_grad_() for t in floats]
    Q, P = fn(*inputs, rowptr, col)
    gen = torch.Generator().manual_seed(1)
    # Output gradients rounded to bfloat16 values: the same numbers in every dtype tested.
    gQ = torch.randn(Q.shape, generator=gen).bfloat16().to(device=Q.device, dtype=Q.dtype)
    gP = torch.randn(P.shape, generator=gen).bfloat16().to(device=P.device, dtype=P.dtype)
    leaves = [t for t in inputs if t is not None]
    grads = iter(torch.autograd.grad((Q * gQ).sum() + (P * gP).sum(), leaves, allow_unused=True))
    out = [Q.detach(), P.detach()]
    for t in inputs:
        g = None if t is None else next(grads)
        out.append(torch.zeros_like(t) if t is not None and g is None else g)
    return out


def _assert_close(got, expected, **tol):
    for name, g, e in zip(("Q", "P", *NAMES), got, expected, strict=True):
        if e is None:
            assert g is None, name
            continue
        assert g.dtype == e.dtype, name
        torch.testing.assert_close(g, e, msg=lambda m, name=name: f"{name}: {m}", **tol)


@pytest.fixture(params=["one_chunk", "many_chunks"])
def chunking(request, monkeypatch):
    if request.param == "many_chunks":  # chunk boundaries inside the edge list
        monkeypatch.setattr(reference, "_CPU_CHUNK_ELEMENTS", 40)
        monkeypatch.setattr(reference, "_MIN_CHUNK_EDGES", 3)
    return request.param


@pytest.mark.parametrize("attention", [True, False])
@pytest.mark.parametrize("graph", GRAPHS)
def test_reference_equals_definition(graph, attention, chunking, one_thread):
    floats, rowptr, col = _case(graph, attention=attention)
    with use_reference():
        got = _value_and_grads(_op, floats, rowptr, col)
    expected = _value_and_grads(_plain, floats, rowptr, col)
    _assert_close(got, expected, rtol=1e-12, atol=1e-12)


@requires_numba
@pytest.mark.parametrize("attention", [True, False])
@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize(
    # float32: both sides sum the same few products per entry in different orders (fastmath
    # reassociates the kernel's loops); 1e-5 relative is ~100 float32 ulps.
    "dtype,tol",
    [(torch.float64, dict(rtol=1e-12, atol=1e-12)), (torch.float32, dict(rtol=1e-5, atol=1e-5))],
)
def test_cpu_kernel_equals_reference(graph, attention, dtype, tol, one_thread):
    floats, rowptr, col = _case(graph, dtype=dtype, attention=attention)
    assert backend_for("cpu", "edge_label_aggregate") == "numba"
    got = _value_and_grads(_op, floats, rowptr, col)
    with use_reference():
        expected = _value_and_grads(_op, floats, rowptr, col)
    _assert_close(got, expected, **tol)


@requires_numba
def test_cpu_kernel_thread_count_does_not_change_result():
    floats, rowptr, col = _case("random", Fh=16, r=4)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _value_and_grads(_op, floats, rowptr, col)
        torch.set_num_threads(2)
        two = _value_and_grads(_op, floats, rowptr, col)
    finally:
        torch.set_num_threads(threads)
    # Q, P and every per-edge and per-node gradient: bitwise (each entry is summed by one
    # thread, in edge order); the omega layer's: per-block partials, summed in another order.
    for name, a, b in zip(("Q", "P", *NAMES), one, two, strict=True):
        if name in ("w_omega", "b_omega"):
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
        else:
            assert torch.equal(a, b), name


@pytest.mark.parametrize("backend", ["default", "reference"])
@pytest.mark.parametrize("attention", [True, False])
@pytest.mark.parametrize("graph", ["random", "bipartite"])
def test_gradcheck(backend, attention, graph, one_thread):
    floats, rowptr, col = _case(graph, Fh=4, r=2, attention=attention)
    leaves = [t.requires_grad_() for t in floats if t is not None]

    def fn(*leaves):
        pre, *rest = leaves
        gamma, rest = (rest[0], rest[1:]) if attention else (None, rest)
        return _op(pre, gamma, *rest, rowptr, col)

    with use_reference(backend == "reference"):
        assert torch.autograd.gradcheck(fn, leaves)


@requires_numba
def test_cpu_kernel_really_runs(monkeypatch):
    floats, rowptr, col = _case("knn")

    def fail(*args):
        raise AssertionError("the reference ran")

    monkeypatch.setattr(reference, "edge_label_aggregate_forward", fail)
    monkeypatch.setattr(reference, "edge_label_aggregate_backward", fail)
    _value_and_grads(_op, floats, rowptr, col)  # Numba, both directions
    with use_reference(), pytest.raises(AssertionError, match="the reference ran"):
        _op(*floats, rowptr, col)


def test_backend_for_edge_label_aggregate():
    assert backend_for("cpu", "edge_label_aggregate") == ("numba" if WITH_NUMBA else "reference")
    # The Triton kernels are opt-in (PYG_LECC_CUDA_EDGE_LABEL_KERNELS=1): reference by default.
    from pyg_lecc.ops import cuda

    enabled = backends.CUDA_EDGE_LABEL_KERNELS and cuda.AVAILABLE
    assert backend_for("cuda", "edge_label_aggregate") == ("triton" if enabled else "reference")
    with use_reference():
        assert backend_for("cpu", "edge_label_aggregate") == "reference"
    with pytest.raises(ValueError, match="'op' must be one of"):
        backend_for("cpu", "nonexistent")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("attention", [True, False])
@pytest.mark.parametrize("graph", GRAPHS)
def test_cuda_equals_cpu_reference(graph, attention, monkeypatch):
    # Through the dispatcher: the Triton kernels with PYG_LECC_CUDA_EDGE_LABEL_KERNELS=1 (the
    # device runbook's CUDA test stage sets it), the reference otherwise.
    floats, rowptr, col = _case(graph, dtype=torch.float32, attention=attention)
    with use_reference():
        expected = _value_and_grads(_op, floats, rowptr, col)
    requested = os.environ.get("PYG_LECC_CUDA_EDGE_LABEL_KERNELS") == "1"
    from pyg_lecc.ops import cuda

    if requested and backends.CUDA_KERNELS and cuda.AVAILABLE:
        assert backend_for("cuda", "edge_label_aggregate") == "triton"

        def fail(*args):
            raise AssertionError("the reference ran")

        monkeypatch.setattr(reference, "edge_label_aggregate_forward", fail)
        monkeypatch.setattr(reference, "edge_label_aggregate_backward", fail)
    on_gpu = [None if t is None else t.cuda() for t in floats]
    got = _value_and_grads(_op, on_gpu, rowptr.cuda(), col.cuda())
    got = [None if t is None else t.cpu() for t in got]
    _assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attention", [True, False])
def test_opcheck(attention):
    floats, rowptr, col = _case("random", dtype=torch.float32, attention=attention)
    floats = [None if t is None else t.requires_grad_() for t in floats]
    args = (*floats, rowptr, col, SLOPE)
    torch.library.opcheck(torch.ops.pyg_lecc.edge_label_aggregate.default, args)


def test_compiles_to_one_op():
    floats, rowptr, col = _case("knn", dtype=torch.float32)
    explanation = torch._dynamo.explain(_op)(*floats, rowptr, col)
    assert explanation.graph_break_count == 0
    torch._dynamo.reset()
    compiled = torch.compile(_op, backend="aot_eager", fullgraph=True)
    for got, expected in zip(
        compiled(*floats, rowptr, col), _op(*floats, rowptr, col), strict=True
    ):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("backend", ["default", "reference"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_accumulate_in_float32(backend, dtype):
    floats, rowptr, col = _case("knn", dtype=torch.float32)
    low = [t.to(dtype) for t in floats]
    with use_reference(backend == "reference"):
        got = _value_and_grads(_op, low, rowptr, col)
        # Same rounded inputs in float32: only the final rounding to `dtype` differs.
        high = _value_and_grads(_op, [t.float() for t in low], rowptr, col)
    for name, g, h in zip(("Q", "P", *NAMES), got, high, strict=True):
        assert g.dtype == dtype, name
        torch.testing.assert_close(g, h.to(dtype), rtol=0, atol=0)


def test_autocast_runs_in_float32():
    floats, rowptr, col = _case("knn", dtype=torch.float32)
    mixed = [t.bfloat16() if n in ("pre", "V") else t for n, t in zip(NAMES, floats, strict=True)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        Q, P = _op(*mixed, rowptr, col)
    assert Q.dtype == P.dtype == torch.float32
    expected = _op(*(t.float() for t in mixed), rowptr, col)
    torch.testing.assert_close((Q, P), expected)


def test_mixed_dtypes_error():
    floats, rowptr, col = _case("knn", dtype=torch.float32)
    floats[1] = floats[1].double()
    with pytest.raises(ValueError, match="one dtype"):
        _op(*floats, rowptr, col)


# ------------------------------------------------------------------------------------------
# Inputs a kernel would read outside of: every entry refuses them with a clear error.
# ------------------------------------------------------------------------------------------


def _small():
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 5), (4,), (6, 2, 5), (6, 2), (2, 5), (2,)]
    floats = [torch.randn(s, generator=gen) for s in shapes]
    return floats, torch.tensor([0, 1, 3, 4]), torch.tensor([0, 5, 2, 1])


# (description, what to change, exception, message)
BAD = [
    ("source index past the end", dict(col=torch.tensor([0, 5, 9, 1])), IndexError,
     r"edge_label_aggregate: source indices 'col' must lie in \[0, 5\], found .* \[0, 9\]"),
    ("huge source index", dict(col=torch.tensor([0, 5, 5_000_000, 1])), IndexError, "'col'"),
    ("negative source index", dict(col=torch.tensor([0, -1, 2, 1])), IndexError, "'col'"),
    ("pointers past the edges", dict(rowptr=torch.tensor([0, 1, 3, 40])), ValueError,
     "'rowptr' must rise from 0 to the number of edges"),
    ("decreasing pointers", dict(rowptr=torch.tensor([0, 3, 1, 4])), ValueError, "'rowptr'"),
    ("pointers not from 0", dict(rowptr=torch.tensor([1, 1, 3, 4])), ValueError, "'rowptr'"),
    ("empty rowptr", dict(rowptr=torch.tensor([], dtype=torch.long)), ValueError, "rowptr"),
    ("int32 indices", dict(col=torch.tensor([0, 5, 2, 1], dtype=torch.int32)), ValueError,
     "1-D int64"),
    ("pre of fewer edges", dict(pre=torch.randn(3, 5)), ValueError,
     r"'pre' must have shape \(4, 5\)"),
    ("pre of another width", dict(pre=torch.randn(4, 7)), ValueError, "'pre'"),
    ("gamma of fewer edges", dict(gamma=torch.randn(3)), ValueError,
     r"'gamma' must have shape \(4,\)"),
    ("c with fewer rows", dict(c=torch.randn(5, 2)), ValueError, r"'c' must have shape"),
    ("w_omega of another rank", dict(w_omega=torch.randn(3, 5)), ValueError, "'w_omega'"),
    ("V not 3-D", dict(V=torch.randn(6, 10)), ValueError, "'V' 3-D"),
]  # fmt: skip


def _bad(change: dict):
    floats, rowptr, col = _small()
    floats = [change.get(n, t) for n, t in zip(NAMES, floats, strict=True)]
    return floats, change.get("rowptr", rowptr), change.get("col", col)


def _entries(direction: str):
    entries = [("reference", getattr(reference, f"edge_label_aggregate_{direction}"))]
    if WITH_NUMBA:
        from pyg_lecc.ops import cpu

        entries.append(("numba", getattr(cpu, f"edge_label_aggregate_{direction}")))
    if direction == "forward":
        entries.append(("dispatcher", edge_label_aggregate))
    return entries


@pytest.mark.parametrize("entry", _entries("forward"), ids=lambda e: e[0])
@pytest.mark.parametrize("case", BAD, ids=lambda c: c[0])
def test_forward_entries_refuse_inputs_they_would_read_outside_of(entry, case):
    _, change, error, match = case
    floats, rowptr, col = _bad(change)
    with pytest.raises(error, match=match):
        entry[1](*floats, rowptr, col, SLOPE)


@pytest.mark.parametrize("entry", _entries("backward"), ids=lambda e: e[0])
@pytest.mark.parametrize("case", BAD, ids=lambda c: c[0])
def test_backward_entries_refuse_inputs_they_would_read_outside_of(entry, case):
    _, change, error, match = case
    floats, rowptr, col = _bad(change)
    with pytest.raises(error, match=match):
        entry[1](torch.randn(3, 2, 5), torch.randn(3, 2), *floats, rowptr, col, SLOPE)


@pytest.mark.parametrize("entry", _entries("backward"), ids=lambda e: e[0])
def test_backward_entries_refuse_output_gradients_of_another_shape(entry):
    floats, rowptr, col = _small()
    with pytest.raises(ValueError, match=r"'grad_Q' must have shape \(3, 2, 5\)"):
        entry[1](torch.randn(2, 2, 5), torch.randn(3, 2), *floats, rowptr, col, SLOPE)
    with pytest.raises(ValueError, match=r"'grad_P' must have shape \(3, 2\)"):
        entry[1](torch.randn(3, 2, 5), torch.randn(9, 2), *floats, rowptr, col, SLOPE)


@pytest.mark.parametrize("entry", _entries("forward"), ids=lambda e: e[0])
@pytest.mark.parametrize("attention", [True, False])
def test_valid_inputs_pass_every_entry(entry, attention):
    floats, rowptr, col = _small()
    if not attention:
        floats[1] = None
    Q, P = entry[1](*floats, rowptr, col, SLOPE)
    assert Q.shape == (3, 2, 5) and P.shape == (3, 2)


def test_reference_without_attention_equals_unit_attention():
    floats, rowptr, col = _case("random")
    ones = [floats[0], torch.ones_like(floats[1]), *floats[2:]]
    got = _value_and_grads(_op, [floats[0], None, *floats[2:]], rowptr, col)
    expected = _value_and_grads(_op, ones, rowptr, col)
    expected[3] = None  # no gradient for a missing gamma
    _assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_plain_definition_is_independent():
    # _plain (the ground truth above) against a per-edge loop, so that both are not wrong
    # the same way.
    floats, rowptr, col = _case("bipartite")
    pre, gamma, V, c, w, bw = floats
    z = torch.where(pre > 0, pre, SLOPE * pre)
    Q = torch.zeros(rowptr.numel() - 1, *V.shape[1:], dtype=V.dtype)
    for i in range(rowptr.numel() - 1):
        for e in range(int(rowptr[i]), int(rowptr[i + 1])):
            j = int(col[e])
            a = gamma[e] * (w @ z[e] + bw) * (V[j] @ z[e] + c[j])
            Q[i] += torch.outer(a, z[e])
    torch.testing.assert_close(_plain(*floats, rowptr, col)[0], Q)
