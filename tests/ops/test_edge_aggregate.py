import inspect
import warnings

import pytest
import torch
import torch.nn.functional as F
from ops_helpers import GRAPHS, make_graph, requires_numba, run_fresh_process

import pyg_lecc.ops.backends as backends
import pyg_lecc.ops.reference as reference
from pyg_lecc.ops import backend_for, edge_aggregate, use_reference
from pyg_lecc.typing import WITH_NUMBA

SLOPE, DELTA = 0.2, 10.0
NAMES = ("x_src", "x_dst", "y_src", "y_dst", "b0", "V", "c", "w_omega", "b_omega")


def _case(kind: str, dtype=torch.float64, Fin=6, Fh=5, r=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    num_src, num_dst, src, dst = make_graph(kind, gen)
    dst, perm = torch.sort(dst, stable=True)
    rowptr = torch._convert_indices_from_coo_to_csr(dst, num_dst)
    shapes = {
        "x_src": (num_src, Fin),
        "x_dst": (num_dst, Fin),
        "y_src": (num_src, Fh),
        "y_dst": (num_dst, Fh),
        "b0": (Fh,),
        "V": (num_src, r, Fh),
        "c": (num_src, r),
        "w_omega": (r, Fh),
        "b_omega": (r,),
    }
    # Features scaled so that gamma is neither 0 nor 1 and both leaky-ReLU branches occur.
    floats = [0.5 * torch.randn(shapes[n], generator=gen, dtype=dtype) for n in NAMES]
    return floats, rowptr, src[perm]


def _plain(x_src, x_dst, y_src, y_dst, b0, V, c, w, bw, rowptr, col):
    """The definition, with autograd over full per-edge tensors."""
    num_dst = rowptr.numel() - 1
    dst = torch.arange(num_dst).repeat_interleave(rowptr.diff())
    d = x_src[col] - x_dst[dst]
    gamma = torch.exp(-(d**2).sum(-1) / DELTA)
    z = F.leaky_relu(y_src[col] - y_dst[dst] + b0, SLOPE)
    omega = z @ w.t() + bw
    u = torch.einsum("etg,eg->et", V[col], z) + c[col]
    a = gamma[:, None] * omega * u
    Q = torch.zeros(num_dst, *V.shape[1:], dtype=V.dtype).index_add(
        0, dst, a[:, :, None] * z[:, None, :]
    )
    P = torch.zeros(num_dst, V.size(1), dtype=V.dtype).index_add(0, dst, a)
    return Q, P


def _value_and_grads(fn, floats, rowptr, col):
    inputs = [t.detach().clone().requires_grad_() for t in floats]
    Q, P = fn(*inputs, rowptr, col)
    gen = torch.Generator().manual_seed(1)
    gQ = torch.randn(Q.shape, generator=gen, dtype=Q.dtype).to(Q.device)
    gP = torch.randn(P.shape, generator=gen, dtype=P.dtype).to(P.device)
    grads = torch.autograd.grad((Q * gQ).sum() + (P * gP).sum(), inputs, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads, strict=True)]
    return [Q.detach(), P.detach(), *grads]


def _op(*args):
    return edge_aggregate(*args, DELTA, SLOPE)


def _assert_close(got, expected, **tol):
    for name, g, e in zip(("Q", "P", *NAMES), got, expected, strict=True):
        assert g.dtype == e.dtype, name
        torch.testing.assert_close(g, e, msg=lambda m, name=name: f"{name}: {m}", **tol)


def _assert_close_to_scale(got, expected, tol):
    # Gradients such as b0's sum one term per edge, and their sums can cancel far below the
    # terms: both sides' rounding is relative to the terms, so the absolute tolerance of
    # each tensor is relative to its largest entry.
    for name, g, e in zip(("Q", "P", *NAMES), got, expected, strict=True):
        scale = e.abs().max().item() if e.numel() else 0.0
        atol = tol * max(1.0, scale)
        torch.testing.assert_close(
            g, e, rtol=tol, atol=atol, msg=lambda m, name=name: f"{name}: {m}"
        )


@pytest.fixture(params=["one_chunk", "many_chunks"])
def chunking(request, monkeypatch):
    if request.param == "many_chunks":  # chunk boundaries inside the edge list
        monkeypatch.setattr(reference, "_CPU_CHUNK_ELEMENTS", 40)
        monkeypatch.setattr(reference, "_MIN_CHUNK_EDGES", 3)
    return request.param


@pytest.mark.parametrize("graph", GRAPHS)
def test_reference_equals_definition(graph, chunking, one_thread):
    floats, rowptr, col = _case(graph)
    with use_reference():
        got = _value_and_grads(_op, floats, rowptr, col)
    _assert_close(got, _value_and_grads(_plain, floats, rowptr, col), rtol=1e-12, atol=1e-12)


@pytest.fixture(params=["one_pass", "two_pass"])
def backward_passes(request, monkeypatch):
    # The Numba backward takes two passes when its per-thread buffers would be too large.
    if request.param == "two_pass":
        import pyg_lecc.ops.cpu as cpu

        monkeypatch.setattr(cpu, "ONE_PASS_BUFFER_BYTES", -1)
    return request.param


@requires_numba
@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize(
    # float32: both sides sum the same products in different orders (the kernel's loops are
    # reassociated by fastmath); 1e-5 relative is ~100 float32 ulps.
    "dtype,tol",
    [(torch.float64, 1e-12), (torch.float32, 1e-5)],
)
# Widths below one vector (scalar loops), and F_h = 24 over an odd F_in (vector steps
# followed by a remainder, as in NIR-GNN's CPU layers).
@pytest.mark.parametrize("Fin,Fh,r", [(6, 5, 3), (13, 24, 4)])
def test_cpu_kernel_equals_reference(graph, dtype, tol, Fin, Fh, r, backward_passes, one_thread):
    floats, rowptr, col = _case(graph, dtype=dtype, Fin=Fin, Fh=Fh, r=r)
    assert backend_for("cpu") == "numba"
    got = _value_and_grads(_op, floats, rowptr, col)
    with use_reference():
        expected = _value_and_grads(_op, floats, rowptr, col)
    _assert_close_to_scale(got, expected, tol)


@requires_numba
def test_cpu_kernel_thread_count_does_not_change_result(backward_passes):
    floats, rowptr, col = _case("random", Fh=16, r=4)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _value_and_grads(_op, floats, rowptr, col)
        torch.set_num_threads(2)
        two = _value_and_grads(_op, floats, rowptr, col)
    finally:
        torch.set_num_threads(threads)
    _assert_close(two, one, rtol=1e-13, atol=1e-13)


@requires_numba
def test_starting_the_kernels_leaves_torchs_thread_count_alone():
    # A fresh process, where Numba's pool is not started yet: its OpenMP layer, once started,
    # set the OpenMP thread count that torch shares to NUMBA_NUM_THREADS.
    code = (
        "import torch\n"
        "from pyg_lecc.ops import edge_aggregate\n"
        "torch.set_num_threads(2)\n"
        "N, F, r = 6, 3, 2\n"
        "x, y, V = torch.rand(N, F), torch.rand(N, F), torch.rand(N, r, F)\n"
        "rowptr, col = torch.arange(N + 1), torch.arange(N).roll(1)\n"
        "edge_aggregate(x, x, y, y, torch.rand(F), V, torch.rand(N, r), torch.rand(r, F),\n"
        "               torch.rand(r), rowptr, col, 10.0, 0.2)\n"
        "print(torch.get_num_threads())\n"
    )
    assert run_fresh_process(code, timeout=300) == ["2"]


@pytest.mark.parametrize("backend", ["default", "reference"])
@pytest.mark.parametrize("graph", ["random", "bipartite"])
def test_gradcheck(backend, graph, one_thread):
    floats, rowptr, col = _case(graph, Fin=3, Fh=4, r=2)
    floats = [t.requires_grad_() for t in floats]
    with use_reference(backend == "reference"):
        assert torch.autograd.gradcheck(lambda *f: _op(*f, rowptr, col), floats)


@requires_numba
def test_cpu_kernel_really_runs(monkeypatch):
    floats, rowptr, col = _case("knn")

    def fail(*args):
        raise AssertionError("the reference ran")

    monkeypatch.setattr(reference, "edge_aggregate_forward", fail)
    monkeypatch.setattr(reference, "edge_aggregate_backward", fail)
    _value_and_grads(_op, floats, rowptr, col)  # the Numba kernel, forward and backward
    with use_reference(), pytest.raises(AssertionError, match="the reference ran"):
        _op(*floats, rowptr, col)


def test_missing_numba_warns_once_and_uses_reference(monkeypatch):
    monkeypatch.setattr(backends, "WITH_NUMBA", False)
    monkeypatch.setattr(backends, "_numba_state", {})
    floats, rowptr, col = _case("random")
    with pytest.warns(RuntimeWarning, match="Numba CPU kernel .* not installed"):
        Q, _ = _op(*floats, rowptr, col)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backend_for("cpu") == "reference"
        _op(*floats, rowptr, col)
    torch.testing.assert_close(Q, _plain(*floats, rowptr, col)[0])


def test_backend_for_and_use_reference():
    assert backend_for("cpu") == ("numba" if WITH_NUMBA else "reference")
    # The CUDA kernels run when Triton imports, unless PYG_LECC_CUDA_KERNELS=0.
    from pyg_lecc.ops import cuda

    expected_cuda = "triton" if backends.CUDA_KERNELS and cuda.AVAILABLE else "reference"
    assert backend_for("cuda") == expected_cuda
    with use_reference():
        assert backend_for("cpu") == backend_for("cuda") == "reference"
        with use_reference(False):  # does not undo an outer context
            assert backend_for("cpu") == "reference"
    assert backend_for("cpu") == ("numba" if WITH_NUMBA else "reference")


def test_backend_modules_implement_the_kernels_protocol():
    # No type checker runs on the package: the backends' parameter lists are compared here.
    from pyg_lecc.ops import cuda

    modules = [reference, cuda]
    if WITH_NUMBA:
        from pyg_lecc.ops import cpu

        modules.append(cpu)
    for name in ("edge_aggregate", "edge_label_aggregate"):
        for direction in ("forward", "backward"):
            kernel = f"{name}_{direction}"
            _, *expected = inspect.signature(getattr(backends.Kernels, kernel)).parameters
            for module in modules:
                got = list(inspect.signature(getattr(module, kernel)).parameters)
                assert got == expected, (module.__name__, kernel)


def test_opcheck():
    floats, rowptr, col = _case("random", dtype=torch.float32)
    floats = [t.requires_grad_() for t in floats]
    torch.library.opcheck(
        torch.ops.pyg_lecc.edge_aggregate.default, (*floats, rowptr, col, DELTA, SLOPE)
    )


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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_accumulate_in_float32(dtype):
    floats, rowptr, col = _case("knn", dtype=torch.float32)
    low = [t.to(dtype) for t in floats]
    Q, P = _op(*low, rowptr, col)
    assert Q.dtype == P.dtype == dtype
    # Same rounded inputs in float32: only the final rounding to `dtype` differs.
    Q32, P32 = _op(*(t.float() for t in low), rowptr, col)
    torch.testing.assert_close(Q, Q32.to(dtype), rtol=0, atol=0)
    torch.testing.assert_close(P, P32.to(dtype), rtol=0, atol=0)


def test_autocast_runs_in_float32():
    floats, rowptr, col = _case("knn", dtype=torch.float32)
    mixed = [
        t.bfloat16() if n in ("x_src", "y_src", "V") else t
        for n, t in zip(NAMES, floats, strict=True)
    ]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        Q, P = _op(*mixed, rowptr, col)
    assert Q.dtype == P.dtype == torch.float32
    expected = _op(*(t.float() for t in mixed), rowptr, col)
    torch.testing.assert_close((Q, P), expected)


def test_mixed_dtypes_error():
    floats, rowptr, col = _case("knn", dtype=torch.float32)
    floats[2] = floats[2].double()
    with pytest.raises(ValueError, match="one dtype"):
        _op(*floats, rowptr, col)


def test_cuda_chunks_are_a_memory_budget():
    # CPU: cache-sized blocks; the paper's layer (141,120 edges, r * F_h = 1,089) is
    # hundreds of chunks there, a handful within the CUDA budget.
    E, width = 141_120, 11 * 99
    assert len(reference.edge_chunks(E, width, torch.device("cpu"))) > 500
    step = reference._CUDA_BLOCK_BYTES // 4 // width
    assert -(-E // step) <= 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("graph", GRAPHS)
def test_cuda_equals_cpu_reference(graph):
    floats, rowptr, col = _case(graph, dtype=torch.float32)
    with use_reference():
        expected = _value_and_grads(_op, floats, rowptr, col)
    on_gpu = [t.cuda() for t in floats]
    got = _value_and_grads(_op, on_gpu, rowptr.cuda(), col.cuda())
    _assert_close([t.cpu() for t in got], expected, rtol=1e-4, atol=1e-5)
