r"""The fused op of the ``edge_dim`` mode, :func:`edge_label_aggregate`
(``pyg_lecc::edge_label_aggregate``): its schema, fake implementation, autograd and public
wrapper. The backend runs by device (:mod:`pyg_lecc.ops.backends`)."""

from __future__ import annotations

import torch
from torch import Tensor

from pyg_lecc.ops.backends import fallback_backend, register_kernels, run_kernel

__all__ = ["edge_label_aggregate"]


@torch.library.custom_op("pyg_lecc::edge_label_aggregate", mutates_args=())
def _edge_label_aggregate(
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
    # Devices without a kernel registered below.
    args = (pre, gamma, V, c, w_omega, b_omega, rowptr, col, slope)
    return run_kernel("edge_label_aggregate", "forward", fallback_backend, args)  # type: ignore[return-value]


@_edge_label_aggregate.register_fake
def _(pre, gamma, V, c, w_omega, b_omega, rowptr, col, slope):
    num_dst = rowptr.size(0) - 1
    return V.new_empty(num_dst, V.size(1), V.size(2)), V.new_empty(num_dst, V.size(1))


@torch.library.custom_op("pyg_lecc::edge_label_aggregate_backward", mutates_args=())
def _edge_label_aggregate_backward(
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
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    # The gradient of a missing gamma is an empty tensor (an op's outputs cannot be None).
    args = (grad_Q, grad_P, pre, gamma, V, c, w_omega, b_omega, rowptr, col, slope)
    return run_kernel("edge_label_aggregate", "backward", fallback_backend, args)  # type: ignore[return-value]


@_edge_label_aggregate_backward.register_fake
def _(grad_Q, grad_P, pre, gamma, V, c, w_omega, b_omega, rowptr, col, slope):
    grad_gamma = pre.new_empty(0) if gamma is None else torch.empty_like(gamma)
    params = (torch.empty_like(t) for t in (V, c, w_omega, b_omega))
    return torch.empty_like(pre), grad_gamma, *params


def _setup_context(ctx, inputs, output) -> None:
    *tensors, slope = inputs
    ctx.save_for_backward(*tensors)
    ctx.slope = slope


def _autograd_backward(ctx, grad_Q: Tensor, grad_P: Tensor):
    pre, gamma, V, c, w_omega, b_omega, rowptr, col = ctx.saved_tensors
    grad_pre, grad_gamma, *grads = _edge_label_aggregate_backward(
        grad_Q.contiguous(), grad_P.contiguous(), pre, gamma, V, c, w_omega, b_omega, rowptr,
        col, ctx.slope,
    )  # fmt: skip
    return grad_pre, None if gamma is None else grad_gamma, *grads, None, None, None


_edge_label_aggregate.register_autograd(_autograd_backward, setup_context=_setup_context)
# Registered on CUDA whatever PYG_LECC_CUDA_EDGE_LABEL_KERNELS says: `choose_backend`
# decides, and falls back to the reference (with GPU-sized chunks) unless the kernels are
# enabled.
register_kernels(
    "edge_label_aggregate", _edge_label_aggregate, _edge_label_aggregate_backward, cuda=True
)


def edge_label_aggregate(
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
    r"""The fused edge pipeline of the Lightweight ECC with a per-edge filter-network input
    (the :obj:`edge_dim` mode): for every edge :math:`j \to i` of a graph in CSR form by
    target, given the pre-activation :math:`\mathbf{h}` of its hidden layer (e.g.
    :math:`\mathbf{W}_0 \mathbf{e}_{j,i} + \mathbf{b}_0`) and its attention :math:`\gamma`,

    .. math::
        \mathbf{z} = \mathrm{LeakyReLU}(\mathbf{h}), \quad
        \mathbf{a} = \gamma\, (\mathbf{W}_\omega \mathbf{z} + \mathbf{b}_\omega) \odot
        (\mathbf{V}_j \mathbf{z} + \mathbf{c}_j),

    and the sums :math:`\mathbf{Q}_i = \sum_j \mathbf{a} \mathbf{z}^{\top}`,
    :math:`\mathbf{P}_i = \sum_j \mathbf{a}` over the incoming edges (no mean). The
    activation is fused so that neither :math:`\mathbf{z}` (:math:`|\mathcal{E}| \times F_h`)
    nor anything of size :math:`|\mathcal{E}| \times r \times F_h` is materialised or kept
    for backward, which recomputes the per-edge terms. The implementation is chosen by device
    (:func:`backend_for` with :obj:`op="edge_label_aggregate"`); on CUDA the Triton kernels
    are opt-in (``PYG_LECC_CUDA_EDGE_LABEL_KERNELS=1``), the reference runs otherwise.

    Args:
        pre (torch.Tensor): Pre-activation of every edge's hidden layer, edges grouped by
            target, :math:`(E, F_h)`.
        gamma (torch.Tensor, optional): Attention of every edge :math:`(E,)`, or
            :obj:`None` for :math:`\gamma = 1` (no per-edge work spent on it).
        V (torch.Tensor): Per-source matrices :math:`(N_s, r, F_h)`.
        c (torch.Tensor): Per-source offsets :math:`(N_s, r)`.
        w_omega (torch.Tensor): :math:`\mathbf{W}_\omega`, shape :math:`(r, F_h)`.
        b_omega (torch.Tensor): :math:`\mathbf{b}_\omega`, shape :math:`(r,)`.
        rowptr (torch.Tensor): CSR pointers by target :math:`(N_t + 1,)`, int64.
        col (torch.Tensor): Source of every edge, edges grouped by target, :math:`(E,)`,
            int64.
        slope (float): Negative slope of the leaky ReLU (:obj:`1.0`: no activation).

    Returns:
        (torch.Tensor, torch.Tensor): :math:`\mathbf{Q}` of shape :math:`(N_t, r, F_h)` and
        :math:`\mathbf{P}` of shape :math:`(N_t, r)`.

    Example:
        >>> rowptr, col = torch.tensor([0, 2, 3]), torch.tensor([1, 0, 1])
        >>> pre, V, c = torch.randn(3, 4), torch.randn(2, 2, 4), torch.randn(2, 2)
        >>> w_omega, b_omega = torch.randn(2, 4), torch.zeros(2)
        >>> Q, P = edge_label_aggregate(pre, None, V, c, w_omega, b_omega, rowptr, col, 0.2)
        >>> Q.shape, P.shape
        (torch.Size([2, 2, 4]), torch.Size([2, 2]))
    """
    floats = [t for t in (pre, gamma, V, c, w_omega, b_omega) if t is not None]
    # Under autocast the op casts its inputs to float32 itself; otherwise they must agree.
    autocast = torch.is_autocast_enabled(rowptr.device.type)
    if not autocast and len({t.dtype for t in floats}) != 1:
        raise ValueError(
            f"edge_label_aggregate expects floating inputs of one dtype, got "
            f"{[t.dtype for t in floats]}"
        )
    return _edge_label_aggregate(
        pre.contiguous(),
        None if gamma is None else gamma.contiguous(),
        *(t.contiguous() for t in (V, c, w_omega, b_omega, rowptr, col)),
        slope,
    )
