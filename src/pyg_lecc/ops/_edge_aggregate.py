r"""The fused op of the default mode, :func:`edge_aggregate` (``pyg_lecc::edge_aggregate``):
its schema, fake implementation, autograd and public wrapper. The backend runs by device
(:mod:`pyg_lecc.ops.backends`)."""

from __future__ import annotations

import torch
from torch import Tensor

from pyg_lecc.ops.backends import CUDA_KERNELS, fallback_backend, register_kernels, run_kernel

__all__ = ["edge_aggregate"]


@torch.library.custom_op("pyg_lecc::edge_aggregate", mutates_args=())
def _edge_aggregate(
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
    # Devices without a kernel registered below.
    args = (x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega, rowptr, col, delta, slope)
    return run_kernel("edge_aggregate", "forward", fallback_backend, args)  # type: ignore[return-value]


@_edge_aggregate.register_fake
def _(x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega, rowptr, col, delta, slope):
    num_dst = rowptr.size(0) - 1
    return V.new_empty(num_dst, V.size(1), V.size(2)), V.new_empty(num_dst, V.size(1))


@torch.library.custom_op("pyg_lecc::edge_aggregate_backward", mutates_args=())
def _edge_aggregate_backward(
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
    floats = (grad_Q, grad_P, x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega)
    args = (*floats, rowptr, col, delta, slope)
    return run_kernel("edge_aggregate", "backward", fallback_backend, args)  # type: ignore[return-value]


@_edge_aggregate_backward.register_fake
def _(grad_Q, grad_P, x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega, *_):
    inputs = (x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega)
    return tuple(torch.empty_like(t) for t in inputs)


def _setup_context(ctx, inputs, output) -> None:
    *tensors, delta, slope = inputs
    ctx.save_for_backward(*tensors)
    ctx.delta, ctx.slope = delta, slope


def _autograd_backward(ctx, grad_Q: Tensor, grad_P: Tensor):
    *floats, rowptr, col = ctx.saved_tensors
    grads = _edge_aggregate_backward(
        grad_Q.contiguous(), grad_P.contiguous(), *floats, rowptr, col, ctx.delta, ctx.slope
    )
    return (*grads, None, None, None, None)


_edge_aggregate.register_autograd(_autograd_backward, setup_context=_setup_context)
register_kernels("edge_aggregate", _edge_aggregate, _edge_aggregate_backward, CUDA_KERNELS)


def edge_aggregate(
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
    r"""The fused edge pipeline of the node-level Lightweight ECC: for every edge
    :math:`j \to i` of a graph in CSR form by target,

    .. math::
        \mathbf{z} = \mathrm{LeakyReLU}(\mathbf{y}^{src}_j - \mathbf{y}^{dst}_i +
        \mathbf{b}_0), \quad
        \gamma = e^{-\|\mathbf{x}^{src}_j - \mathbf{x}^{dst}_i\|^2 / \delta}, \quad
        \mathbf{a} = \gamma\, (\mathbf{W}_\omega \mathbf{z} + \mathbf{b}_\omega) \odot
        (\mathbf{V}_j \mathbf{z} + \mathbf{c}_j),

    and the sums :math:`\mathbf{Q}_i = \sum_j \mathbf{a} \mathbf{z}^{\top}`,
    :math:`\mathbf{P}_i = \sum_j \mathbf{a}` over the incoming edges (no mean). Nothing of
    size :math:`|\mathcal{E}| \times F_h` is kept for backward, which recomputes the
    per-edge terms. The implementation is chosen by device (:func:`backend_for`).

    Args:
        x_src (torch.Tensor): Source node features :math:`(N_s, F_{in})`.
        x_dst (torch.Tensor): Target node features :math:`(N_t, F_{in})`.
        y_src (torch.Tensor): First filter layer of the sources, :math:`(N_s, F_h)`.
        y_dst (torch.Tensor): First filter layer of the targets, :math:`(N_t, F_h)`.
        b0 (torch.Tensor): First filter layer's bias :math:`(F_h,)`.
        V (torch.Tensor): Per-source matrices :math:`(N_s, r, F_h)`.
        c (torch.Tensor): Per-source offsets :math:`(N_s, r)`.
        w_omega (torch.Tensor): :math:`\mathbf{W}_\omega`, shape :math:`(r, F_h)`.
        b_omega (torch.Tensor): :math:`\mathbf{b}_\omega`, shape :math:`(r,)`.
        rowptr (torch.Tensor): CSR pointers by target :math:`(N_t + 1,)`, int64.
        col (torch.Tensor): Source of every edge, edges grouped by target, :math:`(E,)`,
            int64.
        delta (float): Decay :math:`\delta` of the edge attention.
        slope (float): Negative slope of the leaky ReLU.

    Returns:
        (torch.Tensor, torch.Tensor): :math:`\mathbf{Q}` of shape :math:`(N_t, r, F_h)` and
        :math:`\mathbf{P}` of shape :math:`(N_t, r)`.
    """
    floats = (x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega)
    # Under autocast the op casts its inputs to float32 itself; otherwise they must agree.
    autocast = torch.is_autocast_enabled(rowptr.device.type)
    if not autocast and len({t.dtype for t in floats}) != 1:
        raise ValueError(
            f"edge_aggregate expects floating inputs of one dtype, got {[t.dtype for t in floats]}"
        )
    return _edge_aggregate(
        *(t.contiguous() for t in floats), rowptr.contiguous(), col.contiguous(), delta, slope
    )
