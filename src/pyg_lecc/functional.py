"""Edge-chunked building blocks of the node-level Lightweight ECC formulation.

:class:`pyg_lecc.LightweightECC` runs its whole per-edge pipeline as one fused operator,
:func:`pyg_lecc.ops.edge_aggregate` (re-exported here), or
:func:`pyg_lecc.ops.edge_label_aggregate` in its ``edge_dim`` mode. The two per-edge
contractions they fuse remain available on their own, for formulations that need them
separately:

* :func:`gather_contract`: ``u[e, t] = sum_g z[e, g] * V[src[e], t, g]``
* :func:`scatter_outer`: ``Q[n, t, g] = sum_{e: dst[e] = n} a[e, t] * z[e, g]``

Written with plain autograd, both would keep an ``E x r x F_h`` tensor alive for backward
(the gathered ``V`` rows, the per-edge outer products). Here they are registered as
``torch.library`` custom operators with hand-written backward passes that recompute the
gathers chunk by chunk (the per-device chunk budget of :mod:`pyg_lecc.ops.reference`), so no
tensor larger than ``chunk x r x F_h`` ever exists, autograd saves only the small inputs, and
``torch.compile`` sees each one as a single opaque node (no graph breaks).
"""

from __future__ import annotations

import torch
from torch import Tensor

from pyg_lecc.ops import edge_aggregate
from pyg_lecc.ops.reference import edge_chunks

__all__ = ["edge_aggregate", "gather_contract", "scatter_outer"]


@torch.library.custom_op("pyg_lecc::gather_contract", mutates_args=())
def _gather_contract(z: Tensor, V: Tensor, src: Tensor) -> Tensor:
    E, r = z.size(0), V.size(1)
    out = z.new_empty(E, r)
    for lo, hi in edge_chunks(E, V.size(1) * V.size(2), V.device, V.element_size()):
        Vj = V.index_select(0, src[lo:hi])  # (chunk, r, F_h)
        out[lo:hi] = torch.bmm(Vj, z[lo:hi].unsqueeze(-1)).squeeze(-1)
    return out


@_gather_contract.register_fake
def _(z: Tensor, V: Tensor, src: Tensor) -> Tensor:
    return z.new_empty(z.size(0), V.size(1))


@torch.library.custom_op("pyg_lecc::gather_contract_backward", mutates_args=())
def _gather_contract_backward(
    grad: Tensor, z: Tensor, V: Tensor, src: Tensor
) -> tuple[Tensor, Tensor]:
    grad_z = torch.empty_like(z)
    grad_V = torch.zeros_like(V)
    for lo, hi in edge_chunks(z.size(0), V.size(1) * V.size(2), V.device, V.element_size()):
        g = grad[lo:hi]  # (chunk, r)
        idx = src[lo:hi]
        Vj = V.index_select(0, idx)
        grad_z[lo:hi] = torch.bmm(g.unsqueeze(1), Vj).squeeze(1)
        grad_V.index_add_(0, idx, g.unsqueeze(-1) * z[lo:hi].unsqueeze(1))
    return grad_z, grad_V


@_gather_contract_backward.register_fake
def _(grad: Tensor, z: Tensor, V: Tensor, src: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(z), torch.empty_like(V)


def _gather_contract_setup(ctx, inputs, output) -> None:
    z, V, src = inputs
    ctx.save_for_backward(z, V, src)


def _gather_contract_bwd(ctx, grad: Tensor):
    z, V, src = ctx.saved_tensors
    grad_z, grad_V = _gather_contract_backward(grad.contiguous(), z, V, src)
    return grad_z, grad_V, None


_gather_contract.register_autograd(_gather_contract_bwd, setup_context=_gather_contract_setup)


@torch.library.custom_op("pyg_lecc::scatter_outer", mutates_args=())
def _scatter_outer(a: Tensor, z: Tensor, dst: Tensor, num_nodes: int) -> Tensor:
    r, Fh = a.size(1), z.size(1)
    out = a.new_zeros(num_nodes, r, Fh)
    for lo, hi in edge_chunks(a.size(0), r * Fh, a.device, a.element_size()):
        out.index_add_(0, dst[lo:hi], a[lo:hi].unsqueeze(-1) * z[lo:hi].unsqueeze(1))
    return out


@_scatter_outer.register_fake
def _(a: Tensor, z: Tensor, dst: Tensor, num_nodes: int) -> Tensor:
    return a.new_empty(num_nodes, a.size(1), z.size(1))


@torch.library.custom_op("pyg_lecc::scatter_outer_backward", mutates_args=())
def _scatter_outer_backward(
    grad: Tensor, a: Tensor, z: Tensor, dst: Tensor
) -> tuple[Tensor, Tensor]:
    grad_a = torch.empty_like(a)
    grad_z = torch.empty_like(z)
    for lo, hi in edge_chunks(a.size(0), a.size(1) * z.size(1), a.device, a.element_size()):
        Gi = grad.index_select(0, dst[lo:hi])  # (chunk, r, F_h)
        grad_a[lo:hi] = torch.bmm(Gi, z[lo:hi].unsqueeze(-1)).squeeze(-1)
        grad_z[lo:hi] = torch.bmm(a[lo:hi].unsqueeze(1), Gi).squeeze(1)
    return grad_a, grad_z


@_scatter_outer_backward.register_fake
def _(grad: Tensor, a: Tensor, z: Tensor, dst: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(a), torch.empty_like(z)


def _scatter_outer_setup(ctx, inputs, output) -> None:
    a, z, dst, _ = inputs
    ctx.save_for_backward(a, z, dst)


def _scatter_outer_bwd(ctx, grad: Tensor):
    a, z, dst = ctx.saved_tensors
    grad_a, grad_z = _scatter_outer_backward(grad.contiguous(), a, z, dst)
    return grad_a, grad_z, None, None


_scatter_outer.register_autograd(_scatter_outer_bwd, setup_context=_scatter_outer_setup)


def gather_contract(z: Tensor, V: Tensor, src: Tensor) -> Tensor:
    r"""Per-edge contraction with a gathered node tensor,
    :math:`u_{e,t} = \sum_g z_{e,g} V_{\mathrm{src}(e),t,g}`.

    Args:
        z (torch.Tensor): Edge features of shape :math:`(E, F_h)`.
        V (torch.Tensor): Node tensor of shape :math:`(N, r, F_h)`.
        src (torch.Tensor): Source node of every edge, shape :math:`(E,)`, int64.

    Returns:
        torch.Tensor: :math:`(E, r)`.

    Example:
        >>> z, V = torch.randn(5, 4), torch.randn(3, 2, 4)
        >>> src = torch.tensor([0, 2, 1, 1, 0])
        >>> torch.allclose(gather_contract(z, V, src), torch.einsum('eg,etg->et', z, V[src]))
        True
    """
    return _gather_contract(z.contiguous(), V.contiguous(), src.contiguous())


def scatter_outer(a: Tensor, z: Tensor, dst: Tensor, num_nodes: int) -> Tensor:
    r"""Sum of per-edge outer products into the target nodes,
    :math:`Q_{n} = \sum_{e:\,\mathrm{dst}(e)=n} a_e z_e^\top`.

    Args:
        a (torch.Tensor): Edge coefficients of shape :math:`(E, r)`.
        z (torch.Tensor): Edge features of shape :math:`(E, F_h)`.
        dst (torch.Tensor): Target node of every edge, shape :math:`(E,)`, int64.
        num_nodes (int): Number of target nodes :math:`N`.

    Returns:
        torch.Tensor: :math:`(N, r, F_h)`.

    Example:
        >>> a, z = torch.randn(4, 2), torch.randn(4, 3)
        >>> Q = scatter_outer(a, z, torch.tensor([1, 1, 0, 1]), num_nodes=2)
        >>> torch.allclose(Q[0], torch.outer(a[2], z[2]))
        True
    """
    return _scatter_outer(a.contiguous(), z.contiguous(), dst.contiguous(), num_nodes)
