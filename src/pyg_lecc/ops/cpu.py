r"""CPU kernel of :func:`pyg_lecc.ops.edge_aggregate`, compiled with Numba.

Why Numba. The README's run command installs with build isolation, so a C++ extension built
at install time would pull its own (CUDA, multi-GB) torch into the build environment, and a
C++ extension compiled at first use (``torch.utils.cpp_extension.load``) needs a compiler on
the user's machine. Numba is a wheel (``numba`` + ``llvmlite``, about 40 MB, seconds to
install) and compiles the loops below with LLVM at first use, caching the machine code next
to this file (``cache=True``), so later processes start in about a second. The loops are
plain scalar code that LLVM vectorises over the contiguous ``F_h`` axis (``fastmath``
allows it to reassociate the dot products), one vector per loop step
(:func:`_one_vector_per_loop_step`). With rows indexed in place rather than through views,
that made the forward 0.84x and the backward 0.77x as long as before at F=24, r=4 (141,120
edges, one thread, old and new alternating 15 times in one process), 0.86x and 0.67x at
F=16, 0.78x and 0.72x at F=48, and left F=99, r=11 unchanged (1.03x, 1.00x).

Forward: ``prange`` over target nodes; each target walks its incoming edges (CSR), computes
the per-edge quantities in registers and small scratch vectors, and adds ``a z^T`` to its
own row of ``Q``, which stays in cache for all of its ``k`` edges. No atomics, nothing of
size ``E x F_h`` is written.

Backward, one pass (the default): one block of targets per thread walks its edges (CSR),
recomputes each edge's quantities, writes the target-side gradients (``x_dst``, ``y_dst``) of
its own nodes and adds the source-side ones (``x_src``, ``y_src``, ``V``, ``c``) into a
buffer of its own, which on one thread is the output itself; the buffers of several threads
are summed afterwards, and so are the per-block partials of the parameter gradients. Those
buffers cost ``(threads - 1) x N_src x (F_in + F_h + r F_h + r)`` numbers; where that exceeds
:data:`ONE_PASS_BUFFER_BYTES`, the backward takes two passes instead: the same target pass
stores ``3r + 1`` numbers per edge (``a``, ``g_u``, ``g_omega`` and the scalar factor of
``g_d``) and a source pass (CSC, a counting sort of ``col``) walks each source's outgoing
edges, recomputes ``z`` and ``g_z`` from those numbers and writes the source-side gradients
of its own node: no buffer larger than ``E x 3r``, about ``4 r F_h`` more multiply-adds per
edge. On one thread at F=24, r=4 (NIR-GNN's CPU width) the one-pass backward takes about
0.65x the time of the two passes (``python -m benchmarks.profile``).

Measured on the paper's layer (141,120 edges, F=99, r=11, float32, 2 threads on the idle
2-core development machine): forward 65 ms in the kernel (plus about 20 ms to fault in the
77 MB of a fresh ``Q``), two-pass backward 130 ms (target pass) + 115-123 ms (source
pass; measured before the one-pass backward, not re-measured at this size). Each
multiply-add loop over ``F_h`` touches one output array: fused into one loop with several
outputs, LLVM could not rule out overlaps and left the target pass scalar (260 ms). The
whole ``LightweightECC(99, 99, rank=11, circulant_stride=33)`` forward+backward takes about
0.9 s, of which about 0.43 s are its six dense node-level products (benchmarks). The first
call in a fresh environment compiles the float32 kernels (about 20 s on that machine); later
processes load them from the cache in about a second.
"""

from __future__ import annotations

import functools
import math

import llvmlite.binding as llvm
import numba
import numpy as np
import torch
from numba import njit, prange
from numba.core.compiler_lock import global_compiler_lock
from numba.core.dispatcher import Dispatcher
from torch import Tensor

from pyg_lecc.ops.checks import check_edge_aggregate_inputs, check_edge_label_aggregate_inputs

# No "nnan"/"ninf": exp() of large negative distances must stay exact zeros, not UB.
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
# Target blocks per thread for the parameter-gradient partials (load balance vs. memory).
_BLOCKS_PER_THREAD = 4
ONE_PASS_BUFFER_BYTES = 256 * 2**20
"""Most bytes of per-thread source-side gradient buffers (beyond the first thread's, which
are the outputs) that the one-pass backward of :func:`pyg_lecc.ops.edge_aggregate` may
allocate; larger graphs take the two-pass backward, which needs none."""


def _one_vector_per_loop_step(kernel: Dispatcher) -> Dispatcher:
    # Compiles `kernel` (on a process's first call per signature, or from the disk cache)
    # with LLVM's loop vectoriser processing one vector per loop step. Left to its cost
    # model, it interleaves four vectors of 8 floats, so that a loop over F_h = 24 (NIR-GNN's
    # CPU width) or fewer never enters its vector body and runs whole in the scalar
    # remainder; one vector per step makes the forward and backward kernels about 0.8x as
    # long at F=24 (see the module docstring). The option is process-wide in LLVM: it is set
    # only while Numba's compiler lock is held for this kernel, then given back to LLVM's
    # default (0: the cost model decides), so no other compilation sees it.
    compile_ = kernel.compile

    @functools.wraps(compile_)
    def compile(sig):
        with global_compiler_lock:
            llvm.set_option("", "-force-vector-interleave=1")
            try:
                return compile_(sig)
            finally:
                llvm.set_option("", "-force-vector-interleave=0")

    kernel.compile = compile  # what the dispatcher calls for a signature it lacks
    return kernel


@_one_vector_per_loop_step
@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _forward(x_src, x_dst, y_src, y_dst, b0, V, c, w, bw, rowptr, col, inv_delta, slope, Q, P):
    zero = V.dtype.type(0)  # typed: an int literal would promote float32 to float64
    for i in prange(rowptr.shape[0] - 1):
        z = np.empty_like(b0)
        Q[i] = zero  # each output row is written by its own node's iteration only
        P[i] = zero
        for e in range(rowptr[i], rowptr[i + 1]):
            j = col[e]
            gamma = _edge_terms(x_src, x_dst, y_src, y_dst, j, i, b0, inv_delta, slope, z)
            _aggregate_edge(z, gamma, V, c, j, w, bw, Q, P, i)


# The helpers below take whole arrays and row indices rather than row views (V[j]): indexed
# in place, the loops compile to plain address arithmetic (views measured about 10 % slower
# in the backward).


@njit(inline="always", cache=True, fastmath=_FASTMATH)
def _edge_terms(x_src, x_dst, y_src, y_dst, j, i, b0, inv_delta, slope, z):
    # One edge's inputs to its rank terms (_aggregate_edge, _rank_gradients): the hidden
    # vector z (into a scratch vector, see _hidden); returns the attention gamma.
    dist = z.dtype.type(0)
    for f in range(x_src.shape[1]):
        t = x_src[j, f] - x_dst[i, f]
        dist += t * t
    _hidden(z, y_src, y_dst, j, i, b0, slope)
    return math.exp(-dist * inv_delta)


@njit(inline="always", cache=True, fastmath=_FASTMATH)
def _hidden(z, y_src, y_dst, j, i, b0, slope):
    # z = LeakyReLU(y_j - y_i + b0), one edge's hidden vector, into a private scratch vector.
    zero = z.dtype.type(0)
    for g in range(z.shape[0]):
        p = y_src[j, g] - y_dst[i, g] + b0[g]
        z[g] = p if p > zero else p * slope


@njit(inline="always", cache=True, fastmath=_FASTMATH)
def _aggregate_edge(z, gamma, V, c, j, w, bw, Q, P, i):
    # One edge's share of the forward: Q_i += a z^T, P_i += a with
    # a = gamma (W_omega z + b_omega) * (V_j z + c_j), z a scratch vector (no aliasing).
    for t in range(V.shape[1]):
        omega, u = bw[t], c[j, t]
        for g in range(z.shape[0]):
            omega += w[t, g] * z[g]
            u += V[j, t, g] * z[g]
        a = gamma * omega * u
        P[i, t] += a
        for g in range(z.shape[0]):
            Q[i, t, g] += a * z[g]


@njit(inline="always", cache=True, fastmath=_FASTMATH)
def _rank_gradients(z, gamma, V, c, j, w, bw, GQ, GP, i, a, g_u, g_om):
    # One edge's rank components, recomputed for backward: a, the gradients of u and omega
    # (into the scratch vectors a, g_u, g_om); returns the gradient of gamma.
    g_gamma = GP.dtype.type(0)
    for t in range(V.shape[1]):
        om, ut, ga = bw[t], c[j, t], GP[i, t]
        for g in range(z.shape[0]):
            om += w[t, g] * z[g]
            ut += V[j, t, g] * z[g]
            ga += GQ[i, t, g] * z[g]
        a[t] = gamma * om * ut
        g_gamma += ga * om * ut
        g_om[t] = ga * gamma * ut
        g_u[t] = ga * gamma * om
    return g_gamma


@njit(inline="always", cache=True, fastmath=_FASTMATH)
def _z_gradient(g_z, z, a, GQ, i, g_u, V, j, g_om, w, gw_part, gbw_part, b):
    # g_z = sum_t a_t GQ_i,t + g_u,t V_j,t + g_om,t w_t for one edge, and its share of the
    # omega layer's gradients (into block b's partials).
    for g in range(g_z.shape[0]):
        g_z[g] = g_z.dtype.type(0)
    for t in range(a.shape[0]):
        at, gut, gomt = a[t], g_u[t], g_om[t]
        for g in range(g_z.shape[0]):
            g_z[g] += at * GQ[i, t, g] + gut * V[j, t, g] + gomt * w[t, g]
        for g in range(z.shape[0]):
            gw_part[b, t, g] += gomt * z[g]
        gbw_part[b, t] += gomt


@njit(inline="always", cache=True, fastmath=_FASTMATH)
def _edge_terms_for_gradients(x_src, x_dst, y_src, y_dst, j, i, b0, inv_delta, slope, d, z, mask):
    # The terms of _edge_terms and what the gradients need besides: the label d = x_j - x_i
    # and the slope of the leaky ReLU at every entry (mask), into scratch vectors. Kept
    # apart from _edge_terms so that the forward stores neither.
    zero, one = z.dtype.type(0), z.dtype.type(1)
    dist = zero
    for f in range(d.shape[0]):
        t = x_src[j, f] - x_dst[i, f]
        d[f] = t
        dist += t * t
    for g in range(z.shape[0]):
        p = y_src[j, g] - y_dst[i, g] + b0[g]
        mask[g] = one if p > zero else slope
        z[g] = p * mask[g]
    return math.exp(-dist * inv_delta)


@_one_vector_per_loop_step
@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _backward_targets(
    GQ, GP, x_src, x_dst, y_src, y_dst, b0, V, c, w, bw, rowptr, col, inv_delta, slope,
    blocks, gx_dst, gy_dst, gw_part, gbw_part, gb0_part,
    edge_a, edge_gu, edge_gom, edge_gd, gx_src, gy_src, gV, gc,
):  # fmt: skip
    # Walks every target's edges (CSR), recomputing each edge, and writes the target-side
    # gradients of its own nodes. The source side, either way: with per-edge arrays
    # (two passes), a, g_u, g_omega and the factor of g_d go there for _backward_sources;
    # without (empty arrays, one pass), block b adds the source-side gradients into its own
    # zeroed buffers gx_src[b], gy_src[b], gV[b], gc[b] (one block per thread).
    r, Fh, Fin = V.shape[1], V.shape[2], x_src.shape[1]
    zero = V.dtype.type(0)  # typed: int literals promote to float64
    two_pass = edge_gd.shape[0] > 0
    for b in prange(blocks.shape[0] - 1):
        z = np.empty_like(b0)
        mask = np.empty_like(b0)
        g_z = np.empty_like(b0)
        d = np.empty_like(x_src[0])
        a = np.empty_like(bw)
        g_u = np.empty_like(bw)
        g_om = np.empty_like(bw)
        for i in range(blocks[b], blocks[b + 1]):
            gx_dst[i] = zero
            gy_dst[i] = zero
            for e in range(rowptr[i], rowptr[i + 1]):
                j = col[e]
                gamma = _edge_terms_for_gradients(
                    x_src, x_dst, y_src, y_dst, j, i, b0, inv_delta, slope, d, z, mask
                )
                g_gamma = _rank_gradients(z, gamma, V, c, j, w, bw, GQ, GP, i, a, g_u, g_om)
                _z_gradient(g_z, z, a, GQ, i, g_u, V, j, g_om, w, gw_part, gbw_part, b)
                for g in range(Fh):
                    g_z[g] *= mask[g]  # now the gradient of the hidden pre-activation
                for g in range(Fh):
                    gy_dst[i, g] -= g_z[g]
                for g in range(Fh):
                    gb0_part[b, g] += g_z[g]
                coef = -(inv_delta + inv_delta) * gamma * g_gamma
                for f in range(Fin):
                    gx_dst[i, f] -= coef * d[f]
                if two_pass:
                    for t in range(r):
                        edge_a[e, t], edge_gu[e, t], edge_gom[e, t] = a[t], g_u[t], g_om[t]
                    edge_gd[e] = coef
                else:
                    _add_source_gradients(b, j, g_z, z, g_u, coef, d, gx_src, gy_src, gV, gc)


@njit(inline="always", cache=True, fastmath=_FASTMATH)
def _add_source_gradients(b, j, g_h, z, g_u, coef, d, gx_src, gy_src, gV, gc):
    # One edge's source-side gradients, into block b's buffers (one pass).
    for g in range(g_h.shape[0]):
        gy_src[b, j, g] += g_h[g]
    for t in range(g_u.shape[0]):
        gut = g_u[t]
        gc[b, j, t] += gut
        for g in range(z.shape[0]):
            gV[b, j, t, g] += gut * z[g]
    for f in range(d.shape[0]):
        gx_src[b, j, f] += coef * d[f]


@_one_vector_per_loop_step
@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _backward_sources(
    GQ, x_src, x_dst, y_src, y_dst, b0, V, w, slope, colptr, edges, dst,
    edge_a, edge_gu, edge_gom, edge_gd, gx_src, gy_src, gV, gc,
):  # fmt: skip
    num_src, Fin = colptr.shape[0] - 1, x_src.shape[1]
    r, Fh = V.shape[1], V.shape[2]
    zero = V.dtype.type(0)
    for j in prange(num_src):
        z = np.empty_like(b0)
        g_z = np.empty_like(b0)
        gx_src[j], gy_src[j], gV[j], gc[j] = zero, zero, zero, zero
        for n in range(colptr[j], colptr[j + 1]):
            e, i = edges[n], dst[edges[n]]
            _hidden(z, y_src, y_dst, j, i, b0, slope)
            for g in range(Fh):
                g_z[g] = zero
            for t in range(r):
                at, gut, gomt = edge_a[e, t], edge_gu[e, t], edge_gom[e, t]
                gc[j, t] += gut
                for g in range(Fh):
                    g_z[g] += at * GQ[i, t, g] + gut * V[j, t, g] + gomt * w[t, g]
                for g in range(Fh):
                    gV[j, t, g] += gut * z[g]
            for g in range(Fh):
                p = y_src[j, g] - y_dst[i, g] + b0[g]
                gy_src[j, g] += g_z[g] if p > zero else g_z[g] * slope
            coef = edge_gd[e]
            for f in range(Fin):
                gx_src[j, f] += coef * (x_src[j, f] - x_dst[i, f])


@njit(inline="always", cache=True, fastmath=_FASTMATH)
def _leaky_relu(z, pre, e, slope):
    # z = LeakyReLU(pre[e]) into a private scratch vector (LLVM then knows it aliases nothing).
    zero = z.dtype.type(0)
    for g in range(z.shape[0]):
        p = pre[e, g]
        z[g] = p if p > zero else p * slope


@_one_vector_per_loop_step
@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _label_forward(pre, gamma, V, c, w, bw, rowptr, col, slope, Q, P):
    # Forward of edge_label_aggregate; an empty `gamma` means no attention (gamma = 1).
    zero, one = V.dtype.type(0), V.dtype.type(1)
    weighted = gamma.shape[0] > 0
    for i in prange(rowptr.shape[0] - 1):
        z = np.empty_like(w[0])
        Q[i] = zero
        P[i] = zero
        for e in range(rowptr[i], rowptr[i + 1]):
            _leaky_relu(z, pre, e, slope)
            _aggregate_edge(z, gamma[e] if weighted else one, V, c, col[e], w, bw, Q, P, i)


@_one_vector_per_loop_step
@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _label_backward_targets(
    GQ, GP, pre, gamma, V, c, w, bw, rowptr, col, slope, blocks,
    grad_pre, grad_gamma, gw_part, gbw_part, edge_gu,
):  # fmt: skip
    # Target pass of edge_label_aggregate's backward: every edge's pre and gamma gradients,
    # the omega layer's partials per block, and g_u per edge for the source pass.
    zero, one = V.dtype.type(0), V.dtype.type(1)
    weighted = gamma.shape[0] > 0
    for b in prange(blocks.shape[0] - 1):
        z = np.empty_like(w[0])
        g_z = np.empty_like(w[0])
        a = np.empty_like(bw)
        g_u = np.empty_like(bw)
        g_om = np.empty_like(bw)
        for i in range(blocks[b], blocks[b + 1]):
            for e in range(rowptr[i], rowptr[i + 1]):
                j = col[e]
                _leaky_relu(z, pre, e, slope)
                gam = gamma[e] if weighted else one
                g_gamma = _rank_gradients(z, gam, V, c, j, w, bw, GQ, GP, i, a, g_u, g_om)
                if weighted:
                    grad_gamma[e] = g_gamma
                edge_gu[e] = g_u
                _z_gradient(g_z, z, a, GQ, i, g_u, V, j, g_om, w, gw_part, gbw_part, b)
                for g in range(g_z.shape[0]):
                    grad_pre[e, g] = g_z[g] if pre[e, g] > zero else g_z[g] * slope


@_one_vector_per_loop_step
@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _label_backward_sources(pre, slope, colptr, edges, edge_gu, gV, gc):
    # Source pass: V_j and c_j gradients from each source's outgoing edges (CSC).
    zero = gV.dtype.type(0)
    for j in prange(colptr.shape[0] - 1):
        z = np.empty_like(gV[0, 0])
        gV[j] = zero
        gc[j] = zero
        for n in range(colptr[j], colptr[j + 1]):
            e = edges[n]
            _leaky_relu(z, pre, e, slope)
            for t in range(gV.shape[1]):
                gut = edge_gu[e, t]
                gc[j, t] += gut
                for g in range(z.shape[0]):
                    gV[j, t, g] += gut * z[g]


@njit(cache=True)
def _by_source(col, num_src, rowptr):
    # Counting sort of the edges by source (CSC), and the target of every edge.
    colptr = np.zeros(num_src + 1, dtype=np.int64)
    for e in range(col.shape[0]):
        colptr[col[e] + 1] += 1
    for j in range(num_src):
        colptr[j + 1] += colptr[j]
    fill = colptr[:-1].copy()
    edges = np.empty(col.shape[0], dtype=np.int64)
    for e in range(col.shape[0]):
        edges[fill[col[e]]] = e
        fill[col[e]] += 1
    dst = np.empty(col.shape[0], dtype=np.int64)
    for i in range(rowptr.shape[0] - 1):
        for e in range(rowptr[i], rowptr[i + 1]):
            dst[e] = i
    return colptr, edges, dst


def _set_threads() -> None:
    # Follow torch's intra-op setting (tests and benchmarks pin it), within Numba's pool.
    threads = torch.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    # The first call starts Numba's pool; its OpenMP layer then sets the process's OpenMP
    # thread count, which torch shares, to NUMBA_NUM_THREADS: torch would silently run on
    # that many threads from then on (and a process's first results would differ in their
    # last bits from its later ones). Give torch its setting back.
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _target_blocks(num_dst: int) -> np.ndarray:
    # Bounds of the target blocks of a backward target pass, one parameter partial each.
    num_blocks = max(1, min(num_dst, _BLOCKS_PER_THREAD * numba.get_num_threads()))
    return np.linspace(0, num_dst, num_blocks + 1).astype(np.int64)


def _np_gamma(gamma: Tensor | None, like: Tensor) -> np.ndarray:
    # No attention: an empty array (one compiled kernel serves both cases, no E-sized ones).
    return np.empty(0, like.numpy().dtype) if gamma is None else _np(gamma)


def edge_aggregate_forward(
    x_src: Tensor,
    x_dst: Tensor,
    y_src: Tensor,
    y_dst: Tensor,
    b0: Tensor,
    V: Tensor,
    c: Tensor,
    w_omega: Tensor,
    b_omega: Tensor,
    rowptr: Tensor,
    col: Tensor,
    delta: float,
    slope: float,
) -> tuple[Tensor, Tensor]:
    r"""Forward of :func:`pyg_lecc.ops.edge_aggregate` (float32 or float64, CPU)."""
    # The kernel does no bounds checking: refuse inputs it would read outside of.
    check_edge_aggregate_inputs(
        [x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega], rowptr, col
    )
    num_dst, r, Fh = rowptr.numel() - 1, V.size(1), V.size(2)
    if col.numel() == 0:
        return V.new_zeros(num_dst, r, Fh), V.new_zeros(num_dst, r)
    Q, P = V.new_empty(num_dst, r, Fh), V.new_empty(num_dst, r)  # rows zeroed in the kernel
    scalar = V.numpy().dtype.type  # scalars in the data's precision: no float64 promotion
    _set_threads()
    _forward(
        *(_np(t) for t in (x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega, rowptr, col)),
        scalar(1.0 / delta),
        scalar(slope),
        Q.numpy(),
        P.numpy(),
    )
    return Q, P


def edge_aggregate_backward(
    grad_Q: Tensor,
    grad_P: Tensor,
    x_src: Tensor,
    x_dst: Tensor,
    y_src: Tensor,
    y_dst: Tensor,
    b0: Tensor,
    V: Tensor,
    c: Tensor,
    w_omega: Tensor,
    b_omega: Tensor,
    rowptr: Tensor,
    col: Tensor,
    delta: float,
    slope: float,
) -> tuple[Tensor, ...]:
    r"""Backward of :func:`pyg_lecc.ops.edge_aggregate` (float32 or float64, CPU)."""
    check_edge_aggregate_inputs(
        [x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega], rowptr, col, [grad_Q, grad_P]
    )
    inputs = (x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega)
    if col.numel() == 0:
        return tuple(torch.zeros_like(t) for t in inputs)
    grads = tuple(torch.empty_like(t) for t in inputs)  # node rows zeroed by the kernels
    _set_threads()
    arrays = [_np(t) for t in (grad_Q, grad_P, *inputs, rowptr, col)]
    dtype = arrays[0].dtype
    scalars = (dtype.type(1.0 / delta), dtype.type(slope))
    per_source = x_src.size(1) + V.size(2) + V.size(1) * V.size(2) + V.size(1)
    extra = (numba.get_num_threads() - 1) * x_src.size(0) * per_source * dtype.itemsize
    backward = _one_pass_backward if extra <= ONE_PASS_BUFFER_BYTES else _two_pass_backward
    backward(arrays, scalars, [g.numpy() for g in grads])
    return grads


def _parameter_partials(num_blocks: int, arrays: list[np.ndarray]) -> list[np.ndarray]:
    # Zeroed per-block partials of the gradients of w_omega, b_omega and b0.
    b0, w, bw = arrays[6], arrays[9], arrays[10]
    return [np.zeros((num_blocks, *t.shape), t.dtype) for t in (w, bw, b0)]


def _one_pass_backward(arrays: list[np.ndarray], scalars: tuple, grads: list[np.ndarray]) -> None:
    # One block of targets per thread, each with its own source-side buffers (on one
    # thread: the outputs themselves).
    gx_src, gx_dst, gy_src, gy_dst, gb0, gV, gc, gw, gbw = grads
    rowptr = arrays[-2]
    threads = numba.get_num_threads()
    blocks = np.linspace(0, rowptr.size - 1, threads + 1).astype(np.int64)
    if threads == 1:
        sources = [t[None] for t in (gx_src, gy_src, gV, gc)]
    else:
        sources = [np.empty((threads, *t.shape), t.dtype) for t in (gx_src, gy_src, gV, gc)]
    for t in sources:
        t.fill(0)
    partials = _parameter_partials(threads, arrays)
    r = gc.shape[1]
    no_edges = [np.empty((0, *shape), gc.dtype) for shape in ((r,), (r,), (r,), ())]
    _backward_targets(*arrays, *scalars, blocks, gx_dst, gy_dst, *partials, *no_edges, *sources)
    if threads > 1:
        for out, buffer in zip((gx_src, gy_src, gV, gc), sources, strict=True):
            buffer.sum(0, out=out)
    for out, part in zip((gw, gbw, gb0), partials, strict=True):
        part.sum(0, out=out)


def _two_pass_backward(arrays: list[np.ndarray], scalars: tuple, grads: list[np.ndarray]) -> None:
    # The target pass stores 3r + 1 numbers per edge; the source pass (CSC) reads them back.
    gx_src, gx_dst, gy_src, gy_dst, gb0, gV, gc, gw, gbw = grads
    GQ, _, xs, xd, ys, yd, b0, V, _, w, _, rowptr, col = arrays
    E, r = col.size, V.shape[1]
    blocks = _target_blocks(rowptr.size - 1)
    partials = _parameter_partials(blocks.size - 1, arrays)
    edge_a, edge_gu, edge_gom = (np.empty((E, r), V.dtype) for _ in range(3))
    edge_gd = np.empty(E, V.dtype)
    no_sources = [np.empty((0, *t.shape), t.dtype) for t in (gx_src, gy_src, gV, gc)]
    _backward_targets(
        *arrays, *scalars, blocks, gx_dst, gy_dst, *partials,
        edge_a, edge_gu, edge_gom, edge_gd, *no_sources,
    )  # fmt: skip
    colptr, edges, dst = _by_source(col, xs.shape[0], rowptr)
    _backward_sources(
        GQ, xs, xd, ys, yd, b0, V, w, scalars[1], colptr, edges, dst,
        edge_a, edge_gu, edge_gom, edge_gd, gx_src, gy_src, gV, gc,
    )  # fmt: skip
    for out, part in zip((gw, gbw, gb0), partials, strict=True):
        part.sum(0, out=out)


def edge_label_aggregate_forward(
    pre: Tensor,
    gamma: Tensor | None,
    V: Tensor,
    c: Tensor,
    w_omega: Tensor,
    b_omega: Tensor,
    rowptr: Tensor,
    col: Tensor,
    slope: float,
) -> tuple[Tensor, Tensor]:
    r"""Forward of :func:`pyg_lecc.ops.edge_label_aggregate` (float32 or float64, CPU)."""
    # The kernel does no bounds checking: refuse inputs it would read outside of.
    check_edge_label_aggregate_inputs([pre, gamma, V, c, w_omega, b_omega], rowptr, col)
    num_dst, r, Fh = rowptr.numel() - 1, V.size(1), V.size(2)
    if col.numel() == 0:
        return V.new_zeros(num_dst, r, Fh), V.new_zeros(num_dst, r)
    Q, P = V.new_empty(num_dst, r, Fh), V.new_empty(num_dst, r)  # rows zeroed in the kernel
    scalar = V.numpy().dtype.type  # in the data's precision: no float64 promotion
    _set_threads()
    _label_forward(
        _np(pre), _np_gamma(gamma, V), *(_np(t) for t in (V, c, w_omega, b_omega, rowptr, col)),
        scalar(slope), Q.numpy(), P.numpy(),
    )  # fmt: skip
    return Q, P


def edge_label_aggregate_backward(
    grad_Q: Tensor,
    grad_P: Tensor,
    pre: Tensor,
    gamma: Tensor | None,
    V: Tensor,
    c: Tensor,
    w_omega: Tensor,
    b_omega: Tensor,
    rowptr: Tensor,
    col: Tensor,
    slope: float,
) -> tuple[Tensor, ...]:
    r"""Backward of :func:`pyg_lecc.ops.edge_label_aggregate` (float32 or float64, CPU): the
    gradients of ``(pre, gamma, V, c, w_omega, b_omega)``, that of ``gamma`` empty when it
    is :obj:`None`."""
    check_edge_label_aggregate_inputs(
        [pre, gamma, V, c, w_omega, b_omega], rowptr, col, [grad_Q, grad_P]
    )
    E, r = col.numel(), V.size(1)
    grad_gamma = pre.new_empty(0) if gamma is None else torch.empty_like(gamma)
    if E == 0:
        zeros = (torch.zeros_like(t) for t in (V, c, w_omega, b_omega))
        return torch.empty_like(pre), grad_gamma, *zeros
    # Every entry of grad_pre, grad_gamma, grad_V and grad_c is written by one of the passes.
    grad_pre, gV, gc = torch.empty_like(pre), torch.empty_like(V), torch.empty_like(c)
    _set_threads()
    dtype = V.numpy().dtype
    slope_ = dtype.type(slope)
    blocks = _target_blocks(rowptr.numel() - 1)
    gw_part = np.zeros((blocks.size - 1, *w_omega.shape), dtype)
    gbw_part = np.zeros((blocks.size - 1, r), dtype)
    edge_gu = np.empty((E, r), dtype)
    pre_np, rowptr_np, col_np = _np(pre), _np(rowptr), _np(col)
    _label_backward_targets(
        _np(grad_Q), _np(grad_P), pre_np, _np_gamma(gamma, V),
        *(_np(t) for t in (V, c, w_omega, b_omega)), rowptr_np, col_np, slope_, blocks,
        grad_pre.numpy(), grad_gamma.numpy(), gw_part, gbw_part, edge_gu,
    )  # fmt: skip
    colptr, edges, _ = _by_source(col_np, V.size(0), rowptr_np)
    _label_backward_sources(pre_np, slope_, colptr, edges, edge_gu, gV.numpy(), gc.numpy())
    gw = torch.from_numpy(gw_part.sum(0)).to(w_omega.dtype)
    gb_omega = torch.from_numpy(gbw_part.sum(0)).to(b_omega.dtype)
    return grad_pre, grad_gamma, gV, gc, gw, gb_omega
