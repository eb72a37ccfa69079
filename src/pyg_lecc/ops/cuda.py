r"""Triton kernels of the fused Lightweight ECC edge pipeline (CUDA, forward and backward).

For every edge :math:`e = (j \to i)` of a graph stored in CSR by target
(``rowptr``, ``col`` = source of each edge), with :math:`\mathrm{lrelu}` of slope ``slope``:

.. math::
    \mathbf{z} = \mathrm{lrelu}(\mathbf{y}^{src}_j - \mathbf{y}^{dst}_i + \mathbf{b}_0),
    \quad \gamma = e^{-\|\mathbf{x}^{src}_j - \mathbf{x}^{dst}_i\|^2 / \delta},
    \quad \boldsymbol{\omega} = \mathbf{W}_\omega \mathbf{z} + \mathbf{b}_\omega,
    \quad \mathbf{u} = \mathbf{V}_j \mathbf{z} + \mathbf{c}_j,
    \quad \mathbf{a} = \gamma\, \boldsymbol{\omega} \odot \mathbf{u},

and :math:`\mathbf{Q}_i = \sum_e \mathbf{a} \mathbf{z}^\top` (``r x F_h``),
:math:`\mathbf{P}_i = \sum_e \mathbf{a}` (sums, no mean).

Design:

* Forward: one program per target node loops over its incoming edges and keeps ``Q_i``
  (``r x F_h`` padded to powers of two) in registers: nothing per edge reaches memory.
* Backward, pass 1 (by target, CSR): a persistent grid recomputes the per-edge quantities,
  accumulates the target-side gradients (``x_dst``, ``y_dst``) per node and the parameter
  gradients (``b0``, ``w_omega``, ``b_omega``) per program (partials reduced by torch, so the
  result is deterministic), and writes three small per-edge tensors for pass 2:
  ``g_pre`` (``E x F_h``, float32), ``g_u`` (``E x r``) and the scalar ``g_gamma``-coefficient.
* Backward, pass 2 (by source, CSC via a stable ``argsort`` of ``col``): one program per
  source node sums those per-edge tensors (recomputing ``z`` and ``x_j - x_i``) into
  ``V``, ``c``, ``y_src`` and ``x_src`` gradients, written once per row.
  Why not atomics from pass 1: the ``V`` gradient alone would take ``E * r * F_h`` float32
  atomic adds (154 M at the paper's size), non-deterministic and needing a float32 buffer
  for half inputs; the ``E x F_h`` scratch tensor (56 MB at the paper's size) costs one
  write and one read instead.

Everything accumulates in float32; results are returned in the input dtype. Float64 inputs
(and any input when Triton is unavailable, or CPU tensors outside Triton's interpreter) take
an edge-chunked plain-torch path with the same formulas (no Triton fp64 kernels here).
No function synchronises with the host.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from pyg_lecc.ops import reference
from pyg_lecc.ops.checks import check_edge_aggregate_inputs, check_edge_label_aggregate_inputs

try:
    import triton
    import triton.language as tl

    AVAILABLE = True
except ImportError:  # pragma: no cover - depends on the machine
    triton = None
    tl = None
    AVAILABLE = False

__all__ = [
    "AVAILABLE",
    "edge_aggregate_backward",
    "edge_aggregate_forward",
    "edge_label_aggregate_backward",
    "edge_label_aggregate_forward",
]

_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _use_triton(t: Tensor) -> bool:
    if not AVAILABLE or t.dtype not in _TRITON_DTYPES:
        return False
    # Triton's interpreter (TRITON_INTERPRET=1, read when triton is imported) runs on CPU.
    return t.is_cuda or os.environ.get("TRITON_INTERPRET", "0") == "1"


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


if AVAILABLE:

    @triton.jit
    def _edge_terms(
        e,
        xi,
        base,
        W,
        bo,
        x_src,
        y_src,
        V,
        c,
        col,
        Fin,
        Fh,
        R,
        offs_f,
        mf,
        offs_h,
        mh,
        offs_r,
        mr,
        rh,
        m_rh,
        neg_inv_delta,
        slope,
    ):
        # Recomputes everything one edge needs (shared by the forward and backward pass 1).
        j = tl.load(col + e).to(tl.int64)
        xj = tl.load(x_src + j * Fin + offs_f, mask=mf, other=0.0).to(tl.float32)
        d = xj - xi
        gamma = tl.exp(tl.sum(d * d, axis=0) * neg_inv_delta)
        pre = tl.load(y_src + j * Fh + offs_h, mask=mh, other=0.0).to(tl.float32) + base
        z = tl.where(pre > 0, pre, pre * slope)  # padded lanes: pre = 0, z = 0
        omega = tl.sum(W * z[None, :], axis=1) + bo
        Vj = tl.load(V + j * R * Fh + rh, mask=m_rh, other=0.0).to(tl.float32)
        cj = tl.load(c + j * R + offs_r, mask=mr, other=0.0).to(tl.float32)
        u = tl.sum(Vj * z[None, :], axis=1) + cj
        a = gamma * omega * u
        return d, gamma, pre, z, omega, Vj, u, a

    @triton.jit
    def _forward_kernel(
        x_src,
        x_dst,
        y_src,
        y_dst,
        b0,
        V,
        c,
        w_omega,
        b_omega,
        rowptr,
        col,
        Q,
        P,
        Fin,
        Fh,
        R,
        neg_inv_delta,
        slope,
        BLOCK_FIN: tl.constexpr,
        BLOCK_FH: tl.constexpr,
        BLOCK_R: tl.constexpr,
    ):
        i = tl.program_id(0).to(tl.int64)
        offs_f = tl.arange(0, BLOCK_FIN)
        mf = offs_f < Fin
        offs_h = tl.arange(0, BLOCK_FH)
        mh = offs_h < Fh
        offs_r = tl.arange(0, BLOCK_R)
        mr = offs_r < R
        rh = offs_r[:, None] * Fh + offs_h[None, :]
        m_rh = mr[:, None] & mh[None, :]

        W = tl.load(w_omega + rh, mask=m_rh, other=0.0).to(tl.float32)
        bo = tl.load(b_omega + offs_r, mask=mr, other=0.0).to(tl.float32)
        xi = tl.load(x_dst + i * Fin + offs_f, mask=mf, other=0.0).to(tl.float32)
        yi = tl.load(y_dst + i * Fh + offs_h, mask=mh, other=0.0).to(tl.float32)
        base = tl.load(b0 + offs_h, mask=mh, other=0.0).to(tl.float32) - yi

        acc_q = tl.zeros((BLOCK_R, BLOCK_FH), dtype=tl.float32)
        acc_p = tl.zeros((BLOCK_R,), dtype=tl.float32)
        start = tl.load(rowptr + i)
        end = tl.load(rowptr + i + 1)
        for e in range(start, end):
            _, _, _, z, _, _, _, a = _edge_terms(
                e, xi, base, W, bo, x_src, y_src, V, c, col, Fin, Fh, R,
                offs_f, mf, offs_h, mh, offs_r, mr, rh, m_rh, neg_inv_delta, slope,
            )  # fmt: skip
            acc_q += a[:, None] * z[None, :]
            acc_p += a
        tl.store(Q + i * R * Fh + rh, acc_q.to(Q.dtype.element_ty), mask=m_rh)
        tl.store(P + i * R + offs_r, acc_p.to(P.dtype.element_ty), mask=mr)

    @triton.jit
    def _backward_dst_kernel(
        grad_Q,
        grad_P,
        x_src,
        x_dst,
        y_src,
        y_dst,
        b0,
        V,
        c,
        w_omega,
        b_omega,
        rowptr,
        col,
        grad_x_dst,
        grad_y_dst,
        part_w,
        part_bo,
        part_b0,
        edge_gpre,
        edge_gu,
        edge_coef,
        Nd,
        Fin,
        Fh,
        R,
        neg_inv_delta,
        slope,
        BLOCK_FIN: tl.constexpr,
        BLOCK_FH: tl.constexpr,
        BLOCK_R: tl.constexpr,
    ):
        pid = tl.program_id(0)
        num_programs = tl.num_programs(0)
        offs_f = tl.arange(0, BLOCK_FIN)
        mf = offs_f < Fin
        offs_h = tl.arange(0, BLOCK_FH)
        mh = offs_h < Fh
        offs_r = tl.arange(0, BLOCK_R)
        mr = offs_r < R
        rh = offs_r[:, None] * Fh + offs_h[None, :]
        m_rh = mr[:, None] & mh[None, :]

        W = tl.load(w_omega + rh, mask=m_rh, other=0.0).to(tl.float32)
        bo = tl.load(b_omega + offs_r, mask=mr, other=0.0).to(tl.float32)
        bias0 = tl.load(b0 + offs_h, mask=mh, other=0.0).to(tl.float32)
        # Parameter gradients of this program's targets; summed over programs by torch.
        acc_w = tl.zeros((BLOCK_R, BLOCK_FH), dtype=tl.float32)
        acc_bo = tl.zeros((BLOCK_R,), dtype=tl.float32)
        acc_b0 = tl.zeros((BLOCK_FH,), dtype=tl.float32)

        # int64 bounds make the loop index (and every offset built from it) int64.
        for i in range(pid.to(tl.int64), Nd, num_programs.to(tl.int64)):
            xi = tl.load(x_dst + i * Fin + offs_f, mask=mf, other=0.0).to(tl.float32)
            yi = tl.load(y_dst + i * Fh + offs_h, mask=mh, other=0.0).to(tl.float32)
            base = bias0 - yi
            gQ = tl.load(grad_Q + i * R * Fh + rh, mask=m_rh, other=0.0).to(tl.float32)
            gP = tl.load(grad_P + i * R + offs_r, mask=mr, other=0.0).to(tl.float32)
            acc_x = tl.zeros((BLOCK_FIN,), dtype=tl.float32)
            acc_y = tl.zeros((BLOCK_FH,), dtype=tl.float32)
            start = tl.load(rowptr + i)
            end = tl.load(rowptr + i + 1)
            for e in range(start, end):
                d, gamma, pre, z, omega, Vj, u, a = _edge_terms(
                    e, xi, base, W, bo, x_src, y_src, V, c, col, Fin, Fh, R,
                    offs_f, mf, offs_h, mh, offs_r, mr, rh, m_rh, neg_inv_delta, slope,
                )  # fmt: skip
                g_a = tl.sum(gQ * z[None, :], axis=1) + gP
                g_u = g_a * gamma * omega
                g_omega = g_a * gamma * u
                g_gamma = tl.sum(g_a * omega * u, axis=0)
                g_z = tl.sum(a[:, None] * gQ + g_u[:, None] * Vj + g_omega[:, None] * W, axis=0)
                g_pre = g_z * tl.where(pre > 0, 1.0, slope)
                # d gamma / d x_src[j] = gamma * (-2 / delta) * d; kept as one scalar per edge.
                coef = 2.0 * g_gamma * gamma * neg_inv_delta
                acc_x -= coef * d
                acc_y -= g_pre
                acc_b0 += g_pre
                acc_bo += g_omega
                acc_w += g_omega[:, None] * z[None, :]
                tl.store(edge_gpre + e * Fh + offs_h, g_pre, mask=mh)
                tl.store(edge_gu + e * R + offs_r, g_u, mask=mr)
                tl.store(edge_coef + e, coef)
            tl.store(grad_x_dst + i * Fin + offs_f, acc_x.to(grad_x_dst.dtype.element_ty), mask=mf)
            tl.store(grad_y_dst + i * Fh + offs_h, acc_y.to(grad_y_dst.dtype.element_ty), mask=mh)

        tl.store(part_w + pid * R * Fh + rh, acc_w, mask=m_rh)
        tl.store(part_bo + pid * R + offs_r, acc_bo, mask=mr)
        tl.store(part_b0 + pid * Fh + offs_h, acc_b0, mask=mh)

    @triton.jit
    def _backward_src_kernel(
        x_src,
        x_dst,
        y_src,
        y_dst,
        b0,
        colptr,
        perm,
        row_sorted,
        edge_gpre,
        edge_gu,
        edge_coef,
        grad_x_src,
        grad_y_src,
        grad_V,
        grad_c,
        Fin,
        Fh,
        R,
        slope,
        BLOCK_FIN: tl.constexpr,
        BLOCK_FH: tl.constexpr,
        BLOCK_R: tl.constexpr,
    ):
        j = tl.program_id(0).to(tl.int64)
        offs_f = tl.arange(0, BLOCK_FIN)
        mf = offs_f < Fin
        offs_h = tl.arange(0, BLOCK_FH)
        mh = offs_h < Fh
        offs_r = tl.arange(0, BLOCK_R)
        mr = offs_r < R
        rh = offs_r[:, None] * Fh + offs_h[None, :]
        m_rh = mr[:, None] & mh[None, :]

        xj = tl.load(x_src + j * Fin + offs_f, mask=mf, other=0.0).to(tl.float32)
        yj = tl.load(y_src + j * Fh + offs_h, mask=mh, other=0.0).to(tl.float32)
        base = yj + tl.load(b0 + offs_h, mask=mh, other=0.0).to(tl.float32)
        acc_v = tl.zeros((BLOCK_R, BLOCK_FH), dtype=tl.float32)
        acc_c = tl.zeros((BLOCK_R,), dtype=tl.float32)
        acc_x = tl.zeros((BLOCK_FIN,), dtype=tl.float32)
        acc_y = tl.zeros((BLOCK_FH,), dtype=tl.float32)
        start = tl.load(colptr + j)
        end = tl.load(colptr + j + 1)
        for k in range(start, end):
            e = tl.load(perm + k)
            i = tl.load(row_sorted + k)
            xi = tl.load(x_dst + i * Fin + offs_f, mask=mf, other=0.0).to(tl.float32)
            yi = tl.load(y_dst + i * Fh + offs_h, mask=mh, other=0.0).to(tl.float32)
            pre = base - yi
            z = tl.where(pre > 0, pre, pre * slope)
            g_u = tl.load(edge_gu + e * R + offs_r, mask=mr, other=0.0)
            acc_v += g_u[:, None] * z[None, :]
            acc_c += g_u
            acc_y += tl.load(edge_gpre + e * Fh + offs_h, mask=mh, other=0.0)
            acc_x += tl.load(edge_coef + e) * (xj - xi)
        tl.store(grad_V + j * R * Fh + rh, acc_v.to(grad_V.dtype.element_ty), mask=m_rh)
        tl.store(grad_c + j * R + offs_r, acc_c.to(grad_c.dtype.element_ty), mask=mr)
        tl.store(grad_x_src + j * Fin + offs_f, acc_x.to(grad_x_src.dtype.element_ty), mask=mf)
        tl.store(grad_y_src + j * Fh + offs_h, acc_y.to(grad_y_src.dtype.element_ty), mask=mh)

    # --- edge_label_aggregate (opt-in: PYG_LECC_CUDA_EDGE_LABEL_KERNELS=1) -------------------

    @triton.jit
    def _label_edge_terms(
        e, W, bo, pre, gamma, V, c, col, Fh, R, offs_h, mh, offs_r, mr, rh, m_rh, slope,
        HAS_GAMMA: tl.constexpr,
    ):  # fmt: skip
        # Recomputes one edge of edge_label_aggregate (shared by forward and backward).
        j = tl.load(col + e).to(tl.int64)
        p = tl.load(pre + e * Fh + offs_h, mask=mh, other=0.0).to(tl.float32)
        z = tl.where(p > 0, p, p * slope)  # padded lanes: p = 0, z = 0
        omega = tl.sum(W * z[None, :], axis=1) + bo
        Vj = tl.load(V + j * R * Fh + rh, mask=m_rh, other=0.0).to(tl.float32)
        u = tl.sum(Vj * z[None, :], axis=1) + tl.load(c + j * R + offs_r, mask=mr, other=0.0).to(
            tl.float32
        )
        g = tl.load(gamma + e).to(tl.float32) if HAS_GAMMA else 1.0  # constexpr: one branch
        a = g * omega * u
        return p, z, g, omega, Vj, u, a

    @triton.jit
    def _label_forward_kernel(
        pre, gamma, V, c, w_omega, b_omega, rowptr, col, Q, P, Fh, R, slope,
        HAS_GAMMA: tl.constexpr, BLOCK_FH: tl.constexpr, BLOCK_R: tl.constexpr,
    ):  # fmt: skip
        i = tl.program_id(0).to(tl.int64)
        offs_h = tl.arange(0, BLOCK_FH)
        mh = offs_h < Fh
        offs_r = tl.arange(0, BLOCK_R)
        mr = offs_r < R
        rh = offs_r[:, None] * Fh + offs_h[None, :]
        m_rh = mr[:, None] & mh[None, :]
        W = tl.load(w_omega + rh, mask=m_rh, other=0.0).to(tl.float32)
        bo = tl.load(b_omega + offs_r, mask=mr, other=0.0).to(tl.float32)
        acc_q = tl.zeros((BLOCK_R, BLOCK_FH), dtype=tl.float32)
        acc_p = tl.zeros((BLOCK_R,), dtype=tl.float32)
        for e in range(tl.load(rowptr + i), tl.load(rowptr + i + 1)):
            _, z, _, _, _, _, a = _label_edge_terms(
                e, W, bo, pre, gamma, V, c, col, Fh, R, offs_h, mh, offs_r, mr, rh, m_rh,
                slope, HAS_GAMMA,
            )  # fmt: skip
            acc_q += a[:, None] * z[None, :]
            acc_p += a
        tl.store(Q + i * R * Fh + rh, acc_q.to(Q.dtype.element_ty), mask=m_rh)
        tl.store(P + i * R + offs_r, acc_p.to(P.dtype.element_ty), mask=mr)

    @triton.jit
    def _label_backward_dst_kernel(
        grad_Q, grad_P, pre, gamma, V, c, w_omega, b_omega, rowptr, col,
        grad_pre, grad_gamma, part_w, part_bo, edge_gu, Nd, Fh, R, slope,
        HAS_GAMMA: tl.constexpr, BLOCK_FH: tl.constexpr, BLOCK_R: tl.constexpr,
    ):  # fmt: skip
        # Pass 1 (by target, persistent grid): pre and gamma gradients of every edge, omega
        # layer partials per program, g_u per edge for pass 2.
        pid = tl.program_id(0)
        offs_h = tl.arange(0, BLOCK_FH)
        mh = offs_h < Fh
        offs_r = tl.arange(0, BLOCK_R)
        mr = offs_r < R
        rh = offs_r[:, None] * Fh + offs_h[None, :]
        m_rh = mr[:, None] & mh[None, :]
        W = tl.load(w_omega + rh, mask=m_rh, other=0.0).to(tl.float32)
        bo = tl.load(b_omega + offs_r, mask=mr, other=0.0).to(tl.float32)
        acc_w = tl.zeros((BLOCK_R, BLOCK_FH), dtype=tl.float32)
        acc_bo = tl.zeros((BLOCK_R,), dtype=tl.float32)
        for i in range(pid.to(tl.int64), Nd, tl.num_programs(0).to(tl.int64)):
            gQ = tl.load(grad_Q + i * R * Fh + rh, mask=m_rh, other=0.0).to(tl.float32)
            gP = tl.load(grad_P + i * R + offs_r, mask=mr, other=0.0).to(tl.float32)
            for e in range(tl.load(rowptr + i), tl.load(rowptr + i + 1)):
                p, z, g, omega, Vj, u, a = _label_edge_terms(
                    e, W, bo, pre, gamma, V, c, col, Fh, R, offs_h, mh, offs_r, mr, rh, m_rh,
                    slope, HAS_GAMMA,
                )  # fmt: skip
                g_a = tl.sum(gQ * z[None, :], axis=1) + gP
                g_u = g_a * g * omega
                g_omega = g_a * g * u
                if HAS_GAMMA:
                    g_gamma = tl.sum(g_a * omega * u, axis=0)
                    tl.store(grad_gamma + e, g_gamma.to(grad_gamma.dtype.element_ty))
                g_z = tl.sum(a[:, None] * gQ + g_u[:, None] * Vj + g_omega[:, None] * W, axis=0)
                g_pre = g_z * tl.where(p > 0, 1.0, slope)
                tl.store(grad_pre + e * Fh + offs_h, g_pre.to(grad_pre.dtype.element_ty), mask=mh)
                tl.store(edge_gu + e * R + offs_r, g_u, mask=mr)
                acc_bo += g_omega
                acc_w += g_omega[:, None] * z[None, :]
        tl.store(part_w + pid * R * Fh + rh, acc_w, mask=m_rh)
        tl.store(part_bo + pid * R + offs_r, acc_bo, mask=mr)

    @triton.jit
    def _label_backward_src_kernel(
        pre, colptr, perm, edge_gu, grad_V, grad_c, Fh, R, slope,
        BLOCK_FH: tl.constexpr, BLOCK_R: tl.constexpr,
    ):  # fmt: skip
        # Pass 2 (by source, CSC): V and c gradients, each row written once.
        j = tl.program_id(0).to(tl.int64)
        offs_h = tl.arange(0, BLOCK_FH)
        mh = offs_h < Fh
        offs_r = tl.arange(0, BLOCK_R)
        mr = offs_r < R
        rh = offs_r[:, None] * Fh + offs_h[None, :]
        m_rh = mr[:, None] & mh[None, :]
        acc_v = tl.zeros((BLOCK_R, BLOCK_FH), dtype=tl.float32)
        acc_c = tl.zeros((BLOCK_R,), dtype=tl.float32)
        for k in range(tl.load(colptr + j), tl.load(colptr + j + 1)):
            e = tl.load(perm + k)
            p = tl.load(pre + e * Fh + offs_h, mask=mh, other=0.0).to(tl.float32)
            z = tl.where(p > 0, p, p * slope)
            g_u = tl.load(edge_gu + e * R + offs_r, mask=mr, other=0.0)
            acc_v += g_u[:, None] * z[None, :]
            acc_c += g_u
        tl.store(grad_V + j * R * Fh + rh, acc_v.to(grad_V.dtype.element_ty), mask=m_rh)
        tl.store(grad_c + j * R + offs_r, acc_c.to(grad_c.dtype.element_ty), mask=mr)


def _device_ctx(t: Tensor):
    # Triton launches on the current CUDA device: make it the tensors' one.
    return torch.cuda.device(t.device) if t.is_cuda else _NullCtx()


class _NullCtx:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# Launch settings (module level so that benchmarks can try others). Measured on an H200 at the
# paper's size (E = 141,120, r = 11, F_h = 99, fp32): the per-edge loops are bound by their
# chains of dependent reductions, so few warps per program win: forward 0.83 ms with 2 warps
# (1.56 ms with 4, 2.38 ms with 8; a variant taking 2-8 edges per step was 0.67-3.6 ms, no
# consistent gain); backward 2.02 ms with 2 warps and 8 programs per SM (2.35 ms with 4 warps
# and 4 per SM, 3.7 ms with 8 warps).
_FWD_WARPS = 2
_BWD_WARPS = 2
_BWD_PROGRAMS_PER_SM = 8


def _by_source(col: Tensor, num_src: int) -> tuple[Tensor, Tensor]:
    # CSC ordering for a backward pass by source: a stable sort by source, all on the device
    # (no host sync). Returns the edge order and the pointers into it.
    perm = torch.argsort(col, stable=True)
    arange = torch.arange(num_src + 1, device=col.device, dtype=col.dtype)
    return perm, torch.searchsorted(col[perm], arange)


def _backward_programs(t: Tensor, num_dst: int) -> int:
    # Persistent grid of a pass by target: a few programs per SM, so partials stay small.
    sms = torch.cuda.get_device_properties(t.device).multi_processor_count if t.is_cuda else 1
    return max(1, min(_BWD_PROGRAMS_PER_SM * sms, num_dst))


def _contig(*tensors: Tensor) -> list[Tensor]:
    return [t.contiguous() for t in tensors]


# ---------------------------------------------------------------------------------------------
# Plain torch path (float64, no Triton): the same formulas, a bounded number of edges at a time.
# ---------------------------------------------------------------------------------------------

_CHUNK_ELEMENTS = 1 << 20


def _chunks(num_edges: int, width: int) -> list[tuple[int, int]]:
    step = max(1, _CHUNK_ELEMENTS // max(1, width))
    return [(lo, min(lo + step, num_edges)) for lo in range(0, num_edges, step)]


def _torch_edge_terms(x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega, j, i, delta, slope):
    d = x_src[j] - x_dst[i]
    gamma = torch.exp(-(d * d).sum(-1) / delta)
    pre = y_src[j] - y_dst[i] + b0
    z = torch.where(pre > 0, pre, pre * slope)
    omega = z @ w_omega.t() + b_omega
    Vj = V[j]
    u = torch.einsum("etg,eg->et", Vj, z) + c[j]
    a = gamma.unsqueeze(-1) * omega * u
    return d, gamma, pre, z, omega, Vj, u, a


def _torch_forward(x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega, rowptr, col, delta,
                   slope):  # fmt: skip
    Nd, r, Fh = x_dst.size(0), V.size(1), V.size(2)
    E = col.numel()
    Q = y_dst.new_zeros(Nd, r, Fh)
    P = y_dst.new_zeros(Nd, r)
    rows = reference.targets_of_edges(rowptr, E)
    for lo, hi in _chunks(E, r * Fh):
        j, i = col[lo:hi], rows[lo:hi]
        *_, z, _, _, _, a = _torch_edge_terms(
            x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega, j, i, delta, slope
        )
        Q.index_add_(0, i, a.unsqueeze(-1) * z.unsqueeze(1))
        P.index_add_(0, i, a)
    return Q, P


def _torch_backward(grad_Q, grad_P, x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega,
                    rowptr, col, delta, slope):  # fmt: skip
    E = col.numel()
    r, Fh = V.size(1), V.size(2)
    grads = [torch.zeros_like(t) for t in (x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega)]
    gxs, gxd, gys, gyd, gb0, gV, gc, gw, gbo = grads
    rows = reference.targets_of_edges(rowptr, E)
    for lo, hi in _chunks(E, r * Fh):
        j, i = col[lo:hi], rows[lo:hi]
        d, gamma, pre, z, omega, Vj, u, a = _torch_edge_terms(
            x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega, j, i, delta, slope
        )
        gQ = grad_Q[i]
        g_a = torch.einsum("etg,eg->et", gQ, z) + grad_P[i]
        g = gamma.unsqueeze(-1)
        g_u, g_omega = g_a * g * omega, g_a * g * u
        g_gamma = (g_a * omega * u).sum(-1)
        g_z = (
            torch.einsum("et,etg->eg", a, gQ)
            + torch.einsum("et,etg->eg", g_u, Vj)
            + g_omega @ w_omega
        )
        g_pre = g_z * torch.full_like(pre, slope).masked_fill_(pre > 0, 1.0)
        g_d = (g_gamma * gamma * (-2.0 / delta)).unsqueeze(-1) * d
        gxs.index_add_(0, j, g_d)
        gxd.index_add_(0, i, -g_d)
        gys.index_add_(0, j, g_pre)
        gyd.index_add_(0, i, -g_pre)
        gb0 += g_pre.sum(0)
        gV.index_add_(0, j, g_u.unsqueeze(-1) * z.unsqueeze(1))
        gc.index_add_(0, j, g_u)
        gw += g_omega.t() @ z
        gbo += g_omega.sum(0)
    return tuple(grads)


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


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
    r"""Fused per-edge filter network and aggregation,
    :math:`\mathbf{Q}_i = \sum_{j \to i} \mathbf{a}_{ji} \mathbf{z}_{ji}^\top`,
    :math:`\mathbf{P}_i = \sum_{j \to i} \mathbf{a}_{ji}` (see the module docstring).

    Args:
        x_src (torch.Tensor): Source features :math:`(N_s, F_{in})`.
        x_dst (torch.Tensor): Target features :math:`(N_d, F_{in})`.
        y_src (torch.Tensor): :math:`\mathbf{W}_0 \mathbf{x}` of the sources, :math:`(N_s, F_h)`.
        y_dst (torch.Tensor): :math:`\mathbf{W}_0 \mathbf{x}` of the targets, :math:`(N_d, F_h)`.
        b0 (torch.Tensor): First-layer bias :math:`(F_h,)`.
        V (torch.Tensor): Source-node contraction tensor :math:`(N_s, r, F_h)`.
        c (torch.Tensor): Source-node offsets :math:`(N_s, r)`.
        w_omega (torch.Tensor): :math:`(r, F_h)`.
        b_omega (torch.Tensor): :math:`(r,)`.
        rowptr (torch.Tensor): CSR row pointer by target, :math:`(N_d + 1,)`, int64.
        col (torch.Tensor): Source node of every edge in CSR order, :math:`(E,)`, int64.
        delta (float): Attention decay :math:`\delta`.
        slope (float): LeakyReLU negative slope.

    Returns:
        (torch.Tensor, torch.Tensor): :math:`\mathbf{Q}` of shape :math:`(N_d, r, F_h)` and
        :math:`\mathbf{P}` of shape :math:`(N_d, r)`, in the input dtype.
    """
    # The kernel does no bounds checking: refuse inputs it would read outside of.
    check_edge_aggregate_inputs(
        [x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega], rowptr, col
    )
    Nd, r, Fh, Fin = x_dst.size(0), V.size(1), V.size(2), x_src.size(1)
    E = col.numel()
    if not _use_triton(V):
        return _torch_forward(x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega, rowptr,
                              col, float(delta), float(slope))  # fmt: skip
    if E == 0:
        # Also covers Nd = 0; no kernel launch with an empty grid.
        return V.new_zeros(Nd, r, Fh), V.new_zeros(Nd, r)
    x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega, rowptr, col = _contig(
        x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega, rowptr, col
    )
    Q = V.new_empty(Nd, r, Fh)
    P = V.new_empty(Nd, r)
    BR, BH, BF = _pow2(r), _pow2(Fh), _pow2(Fin)
    with _device_ctx(V):
        _forward_kernel[(Nd,)](
            x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega, rowptr, col, Q, P,
            Fin, Fh, r, -1.0 / float(delta), float(slope),
            BLOCK_FIN=BF, BLOCK_FH=BH, BLOCK_R=BR, num_warps=_FWD_WARPS,
        )  # fmt: skip
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
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    r"""Gradients of :func:`edge_aggregate_forward` given :math:`\partial L / \partial
    \mathbf{Q}` (:math:`(N_d, r, F_h)`) and :math:`\partial L / \partial \mathbf{P}`
    (:math:`(N_d, r)`); the other arguments are the forward's.

    Returns:
        tuple: Gradients of ``(x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega)``,
        each with its input's shape and dtype.
    """
    check_edge_aggregate_inputs(
        [x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega], rowptr, col, [grad_Q, grad_P]
    )
    Nd, Ns, r, Fh, Fin = x_dst.size(0), x_src.size(0), V.size(1), V.size(2), x_src.size(1)
    E = col.numel()
    if not _use_triton(V):
        return _torch_backward(grad_Q, grad_P, x_src, x_dst, y_src, y_dst, b0, V, c, w_omega,
                               b_omega, rowptr, col, float(delta), float(slope))  # fmt: skip
    if E == 0:
        return tuple(
            torch.zeros_like(t) for t in (x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega)
        )
    (grad_Q, grad_P, x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega, rowptr,
     col) = _contig(grad_Q, grad_P, x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega,
                    rowptr, col)  # fmt: skip
    dev = V.device
    BR, BH, BF = _pow2(r), _pow2(Fh), _pow2(Fin)
    warps = _BWD_WARPS
    neg_inv_delta, slope = -1.0 / float(delta), float(slope)

    programs = _backward_programs(V, Nd)

    grad_x_dst = torch.empty_like(x_dst)
    grad_y_dst = torch.empty_like(y_dst)
    part_w = torch.empty(programs, r, Fh, device=dev, dtype=torch.float32)
    part_bo = torch.empty(programs, r, device=dev, dtype=torch.float32)
    part_b0 = torch.empty(programs, Fh, device=dev, dtype=torch.float32)
    edge_gpre = torch.empty(E, Fh, device=dev, dtype=torch.float32)
    edge_gu = torch.empty(E, r, device=dev, dtype=torch.float32)
    edge_coef = torch.empty(E, device=dev, dtype=torch.float32)

    perm, colptr = _by_source(col, Ns)
    row_sorted = reference.targets_of_edges(rowptr, E)[perm]

    grad_x_src = torch.empty_like(x_src)
    grad_y_src = torch.empty_like(y_src)
    grad_V = torch.empty_like(V)
    grad_c = torch.empty_like(c)
    with _device_ctx(V):
        _backward_dst_kernel[(programs,)](
            grad_Q, grad_P, x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega, rowptr, col,
            grad_x_dst, grad_y_dst, part_w, part_bo, part_b0, edge_gpre, edge_gu, edge_coef,
            Nd, Fin, Fh, r, neg_inv_delta, slope,
            BLOCK_FIN=BF, BLOCK_FH=BH, BLOCK_R=BR, num_warps=warps,
        )  # fmt: skip
        _backward_src_kernel[(Ns,)](
            x_src, x_dst, y_src, y_dst, b0, colptr, perm, row_sorted, edge_gpre, edge_gu,
            edge_coef, grad_x_src, grad_y_src, grad_V, grad_c, Fin, Fh, r, slope,
            BLOCK_FIN=BF, BLOCK_FH=BH, BLOCK_R=BR, num_warps=warps,
        )  # fmt: skip
    grad_w = part_w.sum(0).to(w_omega.dtype)
    grad_bo = part_bo.sum(0).to(b_omega.dtype)
    grad_b0 = part_b0.sum(0).to(b0.dtype)
    return grad_x_src, grad_x_dst, grad_y_src, grad_y_dst, grad_b0, grad_V, grad_c, grad_w, grad_bo


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
    r"""Forward of :func:`pyg_lecc.ops.edge_label_aggregate`: one program per target keeps
    :math:`\mathbf{Q}_i` in registers (as :func:`edge_aggregate_forward`). Float64 inputs
    take the reference."""
    check_edge_label_aggregate_inputs([pre, gamma, V, c, w_omega, b_omega], rowptr, col)
    if not _use_triton(V):
        return reference.edge_label_aggregate_forward(
            pre, gamma, V, c, w_omega, b_omega, rowptr, col, slope
        )
    Nd, r, Fh = rowptr.numel() - 1, V.size(1), V.size(2)
    if col.numel() == 0:
        return V.new_zeros(Nd, r, Fh), V.new_zeros(Nd, r)
    pre, V, c, w_omega, b_omega, rowptr, col = _contig(pre, V, c, w_omega, b_omega, rowptr, col)
    Q, P = V.new_empty(Nd, r, Fh), V.new_empty(Nd, r)
    with _device_ctx(V):
        _label_forward_kernel[(Nd,)](
            pre, pre if gamma is None else gamma.contiguous(), V, c, w_omega, b_omega, rowptr,
            col, Q, P, Fh, r, float(slope),
            HAS_GAMMA=gamma is not None, BLOCK_FH=_pow2(Fh), BLOCK_R=_pow2(r),
            num_warps=_FWD_WARPS,
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
    r"""Backward of :func:`pyg_lecc.ops.edge_label_aggregate`: a pass by target (per-edge
    gradients, parameter partials reduced by torch) and a pass by source (``V``, ``c``).
    Returns the gradients of ``(pre, gamma, V, c, w_omega, b_omega)``, that of ``gamma``
    empty when it is :obj:`None`."""
    floats = [pre, gamma, V, c, w_omega, b_omega]
    check_edge_label_aggregate_inputs(floats, rowptr, col, [grad_Q, grad_P])
    if not _use_triton(V):
        return reference.edge_label_aggregate_backward(grad_Q, grad_P, *floats, rowptr, col, slope)
    E, Nd, Ns, r, Fh = col.numel(), rowptr.numel() - 1, V.size(0), V.size(1), V.size(2)
    grad_gamma = pre.new_empty(0) if gamma is None else torch.empty_like(gamma)
    if E == 0:
        params = (torch.zeros_like(t) for t in (V, c, w_omega, b_omega))
        return torch.empty_like(pre), grad_gamma, *params
    (grad_Q, grad_P, pre, V, c, w_omega, b_omega, rowptr, col) = _contig(
        grad_Q, grad_P, pre, V, c, w_omega, b_omega, rowptr, col
    )
    dev, programs = V.device, _backward_programs(V, Nd)
    part_w = torch.empty(programs, r, Fh, device=dev, dtype=torch.float32)
    part_bo = torch.empty(programs, r, device=dev, dtype=torch.float32)
    edge_gu = torch.empty(E, r, device=dev, dtype=torch.float32)
    grad_pre, grad_V, grad_c = torch.empty_like(pre), torch.empty_like(V), torch.empty_like(c)
    perm, colptr = _by_source(col, Ns)
    blocks = dict(BLOCK_FH=_pow2(Fh), BLOCK_R=_pow2(r), num_warps=_BWD_WARPS)
    with _device_ctx(V):
        _label_backward_dst_kernel[(programs,)](
            grad_Q, grad_P, pre, pre if gamma is None else gamma.contiguous(), V, c, w_omega,
            b_omega, rowptr, col, grad_pre, pre if gamma is None else grad_gamma, part_w,
            part_bo, edge_gu, Nd, Fh, r, float(slope), HAS_GAMMA=gamma is not None, **blocks,
        )  # fmt: skip
        _label_backward_src_kernel[(Ns,)](
            pre, colptr, perm, edge_gu, grad_V, grad_c, Fh, r, float(slope), **blocks
        )
    grad_w = part_w.sum(0).to(w_omega.dtype)
    grad_bo = part_bo.sum(0).to(b_omega.dtype)
    return grad_pre, grad_gamma, grad_V, grad_c, grad_w, grad_bo
