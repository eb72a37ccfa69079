r"""Tests of the Triton edge kernels in :mod:`pyg_lecc.ops.cuda` against a plain per-edge
autograd implementation.

The kernels run on a GPU (``cuda`` cases, skipped without CUDA) or, on CPU, under Triton's
interpreter (``interpret`` cases, only when ``PYG_LECC_TRITON_INTERPRET=1``)::

    TRITON_INTERPRET=1 PYG_LECC_TRITON_INTERPRET=1 pytest tests/ops/test_cuda_kernels.py

The plain-torch fallback (float64) is tested everywhere.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

_INTERPRET_REQUESTED = os.environ.get("PYG_LECC_TRITON_INTERPRET") == "1"
if _INTERPRET_REQUESTED:
    # Triton picks the interpreter when a kernel is decorated, i.e. when the module below is
    # first imported: the variable must be set before that.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pyg_lecc.ops import cuda as kernels  # noqa: E402

# Triton's interpreter converts 1-element arrays to scalars, deprecated in NumPy.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Conversion of an array with ndim:DeprecationWarning"
)

DELTA, SLOPE = 10.0, 0.2
NAMES = ("x_src", "x_dst", "y_src", "y_dst", "b0", "V", "c", "w_omega", "b_omega")


def _interpreted() -> bool:
    return kernels.AVAILABLE and type(kernels._forward_kernel).__name__ == "InterpretedFunction"


BACKENDS = [
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(
            not (torch.cuda.is_available() and kernels.AVAILABLE), reason="needs CUDA"
        ),
    ),
    pytest.param(
        "interpret",
        marks=pytest.mark.skipif(
            not (_INTERPRET_REQUESTED and _interpreted()),
            reason="needs PYG_LECC_TRITON_INTERPRET=1, Triton, and the kernels not yet compiled",
        ),
    ),
]


def _device(backend: str) -> torch.device:
    return torch.device("cuda" if backend == "cuda" else "cpu")


# ------------------------------------------------------------------------------------------
# Ground truth: the formulas written per edge, gradients by autograd.
# ------------------------------------------------------------------------------------------


def reference(x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega, rowptr, col):
    num_dst, r, Fh = x_dst.size(0), V.size(1), V.size(2)
    dst = torch.repeat_interleave(torch.arange(num_dst, device=col.device), rowptr.diff())
    diff = x_src[col] - x_dst[dst]
    gamma = torch.exp(-diff.pow(2).sum(-1) / DELTA)
    z = F.leaky_relu(y_src[col] - y_dst[dst] + b0, SLOPE)
    omega = F.linear(z, w_omega, b_omega)
    u = torch.einsum("etg,eg->et", V[col], z) + c[col]
    a = gamma[:, None] * omega * u
    Q = torch.zeros(num_dst, r, Fh, dtype=z.dtype, device=z.device)
    Q = Q.index_add(0, dst, torch.einsum("et,eg->etg", a, z))
    P = torch.zeros(num_dst, r, dtype=z.dtype, device=z.device).index_add(0, dst, a)
    return Q, P


def reference_with_grads(inputs, rowptr, col, grad_Q, grad_P):
    leaves = [t.detach().double().requires_grad_(True) for t in inputs]
    Q, P = reference(*leaves, rowptr, col)
    loss = (Q * grad_Q.double()).sum() + (P * grad_P.double()).sum()
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads, strict=True)]
    return Q.detach(), P.detach(), grads


# ------------------------------------------------------------------------------------------
# Graphs and inputs
# ------------------------------------------------------------------------------------------


def _csr_from_counts(counts: torch.Tensor, num_src: int, gen: torch.Generator):
    rowptr = torch.zeros(counts.numel() + 1, dtype=torch.long)
    rowptr[1:] = counts.cumsum(0)
    col = torch.randint(0, max(1, num_src), (int(rowptr[-1]),), generator=gen)
    return rowptr, col


def make_graph(kind: str, num_src: int, num_dst: int, gen: torch.Generator):
    if kind == "regular8":
        counts = torch.full((num_dst,), 8, dtype=torch.long)
    elif kind == "varying":
        # Degrees 0..12, and the first and last targets isolated.
        counts = torch.randint(0, 13, (num_dst,), generator=gen)
        counts[0] = counts[-1] = 0
    elif kind == "empty":
        counts = torch.zeros(num_dst, dtype=torch.long)
    else:
        raise ValueError(kind)
    return _csr_from_counts(counts, num_src, gen)


def make_inputs(num_src, num_dst, Fin, Fh, r, gen, dtype, device):
    def rnd(*shape, scale):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)

    # Scales put gamma well inside (0, 1) and z on both sides of the LeakyReLU kink.
    xs = 0.8 / Fin**0.5
    return [
        rnd(num_src, Fin, scale=xs),
        rnd(num_dst, Fin, scale=xs),
        rnd(num_src, Fh, scale=0.5),
        rnd(num_dst, Fh, scale=0.5),
        rnd(Fh, scale=0.1),
        rnd(num_src, r, Fh, scale=Fh**-0.5),
        rnd(num_src, r, scale=0.3),
        rnd(r, Fh, scale=Fh**-0.5),
        rnd(r, scale=0.3),
    ]


# Max |error| allowed, relative to the largest |value| of the reference output. float32: each
# output is a sum of at most a few hundred float32 products (error ~ 1e-7 * sqrt(terms) in
# practice, measured ~3e-7), so 1e-5 leaves a wide margin. bfloat16: both sides see the same
# bf16 inputs, the kernel accumulates in float32 and rounds once to bf16 (2^-9 relative).
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1.5e-2, torch.float64: 1e-12}


def assert_close_scaled(out: torch.Tensor, ref: torch.Tensor, tol: float, name: str) -> None:
    assert out.shape == ref.shape, name
    if ref.numel() == 0:
        return
    scale = max(ref.abs().max().item(), 1e-6)
    err = (out.double().cpu() - ref.double().cpu()).abs().max().item()
    assert err <= tol * scale, f"{name}: max error {err:.3e} > {tol:.0e} * {scale:.3e}"


def run_and_compare(device, dtype, kind, num_src, num_dst, Fin, Fh, r, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rowptr, col = make_graph(kind, num_src, num_dst, gen)
    inputs = make_inputs(num_src, num_dst, Fin, Fh, r, gen, dtype, device)
    grad_Q = torch.randn(num_dst, r, Fh, generator=gen).to(device=device, dtype=dtype)
    grad_P = torch.randn(num_dst, r, generator=gen).to(device=device, dtype=dtype)
    rowptr, col = rowptr.to(device), col.to(device)

    Q, P = kernels.edge_aggregate_forward(*inputs, rowptr, col, DELTA, SLOPE)
    grads = kernels.edge_aggregate_backward(grad_Q, grad_P, *inputs, rowptr, col, DELTA, SLOPE)
    ref_Q, ref_P, ref_grads = reference_with_grads(inputs, rowptr, col, grad_Q, grad_P)

    tol = TOLERANCE[dtype]
    assert Q.dtype == P.dtype == dtype
    assert Q.device == P.device == inputs[0].device
    assert_close_scaled(Q, ref_Q, tol, "Q")
    assert_close_scaled(P, ref_P, tol, "P")
    assert len(grads) == len(NAMES)
    for name, inp, g, ref in zip(NAMES, inputs, grads, ref_grads, strict=True):
        assert g.dtype == dtype and g.shape == inp.shape, name
        assert_close_scaled(g, ref, tol, "grad_" + name)
    return rowptr, Q, P, grads


# (graph, num_src, num_dst, Fin, Fh, r): kept small, the interpreter runs one program at a time.
CASES = {
    "varying_r4": ("varying", 23, 23, 24, 24, 4),
    "regular8_r11": ("regular8", 17, 17, 33, 33, 11),
    "bipartite_fin_ne_fh": ("varying", 19, 11, 24, 33, 4),
    "bipartite_more_dst": ("regular8", 6, 14, 12, 20, 11),
    "empty_graph": ("empty", 9, 7, 24, 24, 4),
    "no_targets": ("regular8", 9, 0, 24, 24, 4),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_float32_matches_reference(one_thread, backend, case):
    kind, num_src, num_dst, Fin, Fh, r = CASES[case]
    rowptr, Q, P, _ = run_and_compare(
        _device(backend), torch.float32, kind, num_src, num_dst, Fin, Fh, r
    )
    isolated = (rowptr.diff() == 0).cpu()
    assert (Q.cpu()[isolated] == 0).all() and (P.cpu()[isolated] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_paper_width(one_thread, backend):
    # F_in = F_h = 99 (non-power-of-two tiles of 128), r = 11, degree 8.
    run_and_compare(_device(backend), torch.float32, "regular8", 10, 10, 99, 99, 11, seed=3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["varying_r4", "regular8_r11"])
def test_bfloat16_matches_reference(one_thread, backend, case):
    kind, num_src, num_dst, Fin, Fh, r = CASES[case]
    run_and_compare(_device(backend), torch.bfloat16, kind, num_src, num_dst, Fin, Fh, r)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(one_thread, backend):
    device = _device(backend)
    gen = torch.Generator().manual_seed(5)
    rowptr, col = make_graph("varying", 8, 8, gen)
    rowptr, col = rowptr.to(device), col.to(device)
    inputs = make_inputs(8, 8, 16, 16, 4, gen, torch.float32, device)
    # The same values through transposed storage.
    strided = [t.t().contiguous().t() if t.dim() == 2 else t for t in inputs]
    assert not strided[0].is_contiguous()
    Q, P = kernels.edge_aggregate_forward(*strided, rowptr, col, DELTA, SLOPE)
    ref_Q, ref_P = reference(*[t.double() for t in inputs], rowptr, col)
    assert_close_scaled(Q, ref_Q, TOLERANCE[torch.float32], "Q")
    assert_close_scaled(P, ref_P, TOLERANCE[torch.float32], "P")


@pytest.mark.parametrize("case", ["varying_r4", "bipartite_fin_ne_fh", "empty_graph"])
def test_float64_torch_path(one_thread, case):
    # float64 is served by the plain-torch path, on every device.
    kind, num_src, num_dst, Fin, Fh, r = CASES[case]
    run_and_compare(torch.device("cpu"), torch.float64, kind, num_src, num_dst, Fin, Fh, r)


def test_module_interface():
    assert isinstance(kernels.AVAILABLE, bool)
    assert set(kernels.__all__) == {
        "AVAILABLE",
        "edge_aggregate_backward",
        "edge_aggregate_forward",
        "edge_label_aggregate_backward",
        "edge_label_aggregate_forward",
    }


# ------------------------------------------------------------------------------------------
# edge_label_aggregate (the edge_dim mode's op; its kernels are opt-in on CUDA)
# ------------------------------------------------------------------------------------------


def label_reference(pre, gamma, V, c, w_omega, b_omega, rowptr, col):
    num_dst, r, Fh = rowptr.numel() - 1, V.size(1), V.size(2)
    dst = torch.repeat_interleave(torch.arange(num_dst, device=col.device), rowptr.diff())
    z = F.leaky_relu(pre, SLOPE)
    a = F.linear(z, w_omega, b_omega) * (torch.einsum("etg,eg->et", V[col], z) + c[col])
    if gamma is not None:
        a = gamma[:, None] * a
    Q = torch.zeros(num_dst, r, Fh, dtype=z.dtype, device=z.device)
    Q = Q.index_add(0, dst, torch.einsum("et,eg->etg", a, z))
    P = torch.zeros(num_dst, r, dtype=z.dtype, device=z.device).index_add(0, dst, a)
    return Q, P


def run_and_compare_label(device, dtype, kind, num_src, num_dst, Fh, r, attention, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rowptr, col = make_graph(kind, num_src, num_dst, gen)
    E = col.numel()

    def rnd(*shape, scale):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)

    inputs = [
        rnd(E, Fh, scale=0.5),
        rnd(E, scale=1.0).abs() if attention else None,
        rnd(num_src, r, Fh, scale=Fh**-0.5),
        rnd(num_src, r, scale=0.3),
        rnd(r, Fh, scale=Fh**-0.5),
        rnd(r, scale=0.3),
    ]
    grad_Q = rnd(num_dst, r, Fh, scale=1.0)
    grad_P = rnd(num_dst, r, scale=1.0)
    rowptr, col = rowptr.to(device), col.to(device)
    Q, P = kernels.edge_label_aggregate_forward(*inputs, rowptr, col, SLOPE)
    grads = kernels.edge_label_aggregate_backward(grad_Q, grad_P, *inputs, rowptr, col, SLOPE)

    leaves = [None if t is None else t.detach().double().requires_grad_() for t in inputs]
    ref_Q, ref_P = label_reference(*leaves, rowptr, col)
    used = [t for t in leaves if t is not None]
    loss = (ref_Q * grad_Q.double()).sum() + (ref_P * grad_P.double()).sum()
    ref_grads = iter(torch.autograd.grad(loss, used, allow_unused=True))
    tol = TOLERANCE[dtype]
    assert Q.dtype == P.dtype == dtype
    assert_close_scaled(Q, ref_Q.detach(), tol, "Q")
    assert_close_scaled(P, ref_P.detach(), tol, "P")
    names = ("pre", "gamma", "V", "c", "w_omega", "b_omega")
    for name, inp, g in zip(names, inputs, grads, strict=True):
        if inp is None:
            assert g.numel() == 0, name
            continue
        ref = next(ref_grads)
        ref = torch.zeros_like(inp, dtype=torch.float64) if ref is None else ref
        assert g.dtype == dtype and g.shape == inp.shape, name
        assert_close_scaled(g, ref, tol, "grad_" + name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("attention", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_label_float32_matches_reference(one_thread, backend, case, attention):
    kind, num_src, num_dst, _, Fh, r = CASES[case]
    run_and_compare_label(_device(backend), torch.float32, kind, num_src, num_dst, Fh, r, attention)


@pytest.mark.parametrize("backend", BACKENDS)
def test_label_paper_width_bfloat16(one_thread, backend):
    run_and_compare_label(_device(backend), torch.bfloat16, "regular8", 10, 10, 99, 11, True)


def test_label_float64_takes_reference(one_thread):
    run_and_compare_label(torch.device("cpu"), torch.float64, "varying", 19, 11, 33, 4, True)
