r"""Plain PyTorch implementations of :func:`pyg_lecc.ops.edge_aggregate` and
:func:`pyg_lecc.ops.edge_label_aggregate`: the ground truth every kernel is tested against,
and the fallback on any device without one.

Edges are processed in chunks; each chunk gathers its node rows, recomputes the per-edge
quantities and adds its contributions with ``index_add_``, so no tensor larger than
``chunk x r x F_h`` exists and nothing per-edge is kept for backward. The chunk size is a
per-device budget (:func:`edge_chunks`): cache-sized blocks on CPU, a memory budget on CUDA
so that one layer is a handful of kernel launches rather than thousands.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pyg_lecc.ops.checks import check_edge_aggregate_inputs, check_edge_label_aggregate_inputs

# Elements of one temporary ``chunk x r x F_h`` block on CPU (256 Ki floats, 1 MB in
# float32): the gathered rows stay in the L2 cache between the gather and the contraction.
# Measured on the paper's training batch (141,120 edges, r * F_h = 1,089; 2-core CPU):
# forward+backward 1.07 s with 1 MB blocks, 1.5 s with 64 kB and 1.7 s with 64 MB blocks.
_CPU_CHUNK_ELEMENTS = 1 << 18
# Bytes of one temporary block on CUDA, capped by a fraction of the free memory (read once per
# device); backward keeps about four such blocks alive. At the paper's sizes (614 MB of
# E x r x F_h in float32) a layer is three chunks.
_CUDA_BLOCK_BYTES = 256 * 2**20
_CUDA_FREE_FRACTION = 16
# Fewest edges per chunk: guards very wide layers against thousands of tiny chunks.
_MIN_CHUNK_EDGES = 128

_cuda_block_bytes: dict[int, int] = {}


def _block_elements(device: torch.device, itemsize: int) -> int:
    if device.type != "cuda":
        return _CPU_CHUNK_ELEMENTS
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _cuda_block_bytes:  # once per device: no query on the hot path
        free, _ = torch.cuda.mem_get_info(index)
        _cuda_block_bytes[index] = min(_CUDA_BLOCK_BYTES, free // _CUDA_FREE_FRACTION)
    return _cuda_block_bytes[index] // itemsize


def edge_chunks(
    num_edges: int, width: int, device: torch.device, itemsize: int = 4
) -> list[tuple[int, int]]:
    r"""Edge ranges ``[lo, hi)`` whose ``chunk x width`` temporaries fit the device's block
    budget (:obj:`width` is the per-edge size of the largest temporary, e.g.
    :math:`r F_h`)."""
    step = max(_MIN_CHUNK_EDGES, _block_elements(device, itemsize) // max(1, width))
    return [(lo, min(lo + step, num_edges)) for lo in range(0, num_edges, step)]


def targets_of_edges(rowptr: Tensor, num_edges: int) -> Tensor:
    r"""The target node of every edge of a CSR index, i.e. the row index of its entries
    (no host synchronisation: the number of edges is passed in).

    Args:
        rowptr (torch.Tensor): CSR pointers by target :math:`(N_t + 1,)`, int64.
        num_edges (int): The number of edges :math:`E`, :obj:`rowptr[-1]`.

    Returns:
        torch.Tensor: The target of every edge, :math:`(E,)`, int64.

    Example:
        >>> from pyg_lecc.ops import targets_of_edges
        >>> targets_of_edges(torch.tensor([0, 2, 2, 3]), 3)
        tensor([0, 0, 2])
    """
    nodes = torch.arange(rowptr.numel() - 1, device=rowptr.device)
    return nodes.repeat_interleave(rowptr.diff(), output_size=num_edges)


def _edge_terms(x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega, src, dst, delta, slope):
    # The per-edge quantities of one chunk (see `pyg_lecc.ops.edge_aggregate`).
    d = x_src.index_select(0, src) - x_dst.index_select(0, dst)
    gamma = torch.exp(-d.pow(2).sum(-1) / delta)
    pre = y_src.index_select(0, src) - y_dst.index_select(0, dst) + b0
    z = F.leaky_relu(pre, slope)
    omega = F.linear(z, w_omega, b_omega)
    Vj = V.index_select(0, src)  # (chunk, r, F_h)
    u = torch.bmm(Vj, z.unsqueeze(-1)).squeeze(-1) + c.index_select(0, src)
    a = gamma.unsqueeze(-1) * omega * u
    return d, gamma, pre, z, omega, Vj, u, a


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
    r"""Forward of :func:`pyg_lecc.ops.edge_aggregate`: returns :math:`(\mathbf{Q},
    \mathbf{P})`."""
    # Malformed pointers would silently misassign edges: the same checks as the kernels.
    check_edge_aggregate_inputs(
        [x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega], rowptr, col
    )
    num_dst, r, Fh = rowptr.numel() - 1, V.size(1), V.size(2)
    Q = V.new_zeros(num_dst, r, Fh)
    P = V.new_zeros(num_dst, r)
    E = col.numel()
    dst = targets_of_edges(rowptr, E)
    for lo, hi in edge_chunks(E, r * Fh, V.device, V.element_size()):
        src_e, dst_e = col[lo:hi], dst[lo:hi]
        *_, z, _, _, _, a = _edge_terms(
            x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega, src_e, dst_e, delta, slope
        )
        Q.index_add_(0, dst_e, a.unsqueeze(-1) * z.unsqueeze(1))
        P.index_add_(0, dst_e, a)
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
    r"""Backward of :func:`pyg_lecc.ops.edge_aggregate`: the gradients of ``(x_src, x_dst,
    y_src, y_dst, b0, V, c, w_omega, b_omega)``, recomputing the per-edge quantities chunk
    by chunk."""
    check_edge_aggregate_inputs(
        [x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega], rowptr, col, [grad_Q, grad_P]
    )
    r, Fh = V.size(1), V.size(2)
    grads = [torch.zeros_like(t) for t in (x_src, x_dst, y_src, y_dst, b0, V, c, w_omega)]
    gx_src, gx_dst, gy_src, gy_dst, gb0, gV, gc, gw = grads
    gb_omega = torch.zeros_like(b_omega)
    E = col.numel()
    dst = targets_of_edges(rowptr, E)
    for lo, hi in edge_chunks(E, r * Fh, V.device, V.element_size()):
        src_e, dst_e = col[lo:hi], dst[lo:hi]
        d, gamma, pre, z, omega, Vj, u, a = _edge_terms(
            x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega, src_e, dst_e, delta, slope
        )
        GQ = grad_Q.index_select(0, dst_e)  # (chunk, r, F_h)
        g_a = torch.bmm(GQ, z.unsqueeze(-1)).squeeze(-1) + grad_P.index_select(0, dst_e)
        g_gamma = (g_a * omega * u).sum(-1)
        g_omega = g_a * gamma.unsqueeze(-1) * u
        g_u = g_a * gamma.unsqueeze(-1) * omega
        g_z = (
            torch.bmm(a.unsqueeze(1), GQ).squeeze(1)
            + torch.bmm(g_u.unsqueeze(1), Vj).squeeze(1)
            + g_omega @ w_omega
        )
        g_pre = torch.where(pre > 0, g_z, g_z * slope)
        g_d = (-2.0 / delta) * (gamma * g_gamma).unsqueeze(-1) * d
        gx_src.index_add_(0, src_e, g_d)
        gx_dst.index_add_(0, dst_e, g_d, alpha=-1)
        gy_src.index_add_(0, src_e, g_pre)
        gy_dst.index_add_(0, dst_e, g_pre, alpha=-1)
        gV.index_add_(0, src_e, g_u.unsqueeze(-1) * z.unsqueeze(1))
        gc.index_add_(0, src_e, g_u)
        gw += g_omega.t() @ z
        gb_omega += g_omega.sum(0)
        gb0 += g_pre.sum(0)
    return gx_src, gx_dst, gy_src, gy_dst, gb0, gV, gc, gw, gb_omega


def _label_terms(pre, gamma, V, c, w_omega, b_omega, src, slope):
    # The per-edge quantities of one chunk (see `pyg_lecc.ops.edge_label_aggregate`).
    z = F.leaky_relu(pre, slope)
    omega = F.linear(z, w_omega, b_omega)
    Vj = V.index_select(0, src)  # (chunk, r, F_h)
    u = torch.bmm(Vj, z.unsqueeze(-1)).squeeze(-1) + c.index_select(0, src)
    a = omega * u if gamma is None else gamma.unsqueeze(-1) * omega * u
    return z, omega, Vj, u, a


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
    r"""Forward of :func:`pyg_lecc.ops.edge_label_aggregate`: returns :math:`(\mathbf{Q},
    \mathbf{P})`."""
    check_edge_label_aggregate_inputs([pre, gamma, V, c, w_omega, b_omega], rowptr, col)
    num_dst, r, Fh = rowptr.numel() - 1, V.size(1), V.size(2)
    Q = V.new_zeros(num_dst, r, Fh)
    P = V.new_zeros(num_dst, r)
    E = col.numel()
    dst = targets_of_edges(rowptr, E)
    for lo, hi in edge_chunks(E, r * Fh, V.device, V.element_size()):
        gamma_e = None if gamma is None else gamma[lo:hi]
        z, *_, a = _label_terms(pre[lo:hi], gamma_e, V, c, w_omega, b_omega, col[lo:hi], slope)
        Q.index_add_(0, dst[lo:hi], a.unsqueeze(-1) * z.unsqueeze(1))
        P.index_add_(0, dst[lo:hi], a)
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
    r"""Backward of :func:`pyg_lecc.ops.edge_label_aggregate`: the gradients of ``(pre,
    gamma, V, c, w_omega, b_omega)`` (that of ``gamma`` empty when it is :obj:`None`),
    recomputing the per-edge quantities chunk by chunk."""
    floats = [pre, gamma, V, c, w_omega, b_omega]
    check_edge_label_aggregate_inputs(floats, rowptr, col, [grad_Q, grad_P])
    r, Fh = V.size(1), V.size(2)
    grad_pre = torch.empty_like(pre)
    grad_gamma = pre.new_empty(0) if gamma is None else torch.empty_like(gamma)
    gV, gc, gw, gb_omega = (torch.zeros_like(t) for t in (V, c, w_omega, b_omega))
    E = col.numel()
    dst = targets_of_edges(rowptr, E)
    for lo, hi in edge_chunks(E, r * Fh, V.device, V.element_size()):
        pre_e, src_e = pre[lo:hi], col[lo:hi]
        gamma_e = None if gamma is None else gamma[lo:hi]
        z, omega, Vj, u, a = _label_terms(pre_e, gamma_e, V, c, w_omega, b_omega, src_e, slope)
        GQ = grad_Q.index_select(0, dst[lo:hi])  # (chunk, r, F_h)
        g_a = torch.bmm(GQ, z.unsqueeze(-1)).squeeze(-1) + grad_P.index_select(0, dst[lo:hi])
        g_omega, g_u = g_a * u, g_a * omega
        if gamma_e is not None:
            grad_gamma[lo:hi] = (g_a * omega * u).sum(-1)
            g_omega, g_u = gamma_e.unsqueeze(-1) * g_omega, gamma_e.unsqueeze(-1) * g_u
        g_z = (
            torch.bmm(a.unsqueeze(1), GQ).squeeze(1)
            + torch.bmm(g_u.unsqueeze(1), Vj).squeeze(1)
            + g_omega @ w_omega
        )
        grad_pre[lo:hi] = torch.where(pre_e > 0, g_z, g_z * slope)
        gV.index_add_(0, src_e, g_u.unsqueeze(-1) * z.unsqueeze(1))
        gc.index_add_(0, src_e, g_u)
        gw += g_omega.t() @ z
        gb_omega += g_omega.sum(0)
    return grad_pre, grad_gamma, gV, gc, gw, gb_omega
