r"""Argument checks at the entry of every kernel of :mod:`pyg_lecc.ops`.

The Numba and Triton kernels index node rows with the graph's indices and do no bounds
checking of their own, so a wrong index or a pointer array that does not match the node
tensors would read (or write) outside the arrays: a crash of the interpreter, or made-up
numbers. Every entry therefore checks what the kernels rely on, whatever the caller passed:

* shapes: host-side metadata, free on every device;
* index values: an exact check with a clear message on CPU (one pass over the indices);
  on CUDA an asynchronous device-side assertion (:func:`torch._assert_async`), the same
  guarantee PyTorch's own indexing gives there, without a host synchronisation.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "check_edge_aggregate_inputs",
    "check_edge_label_aggregate_inputs",
    "check_index_values",
    "check_knn_window",
    "fewest_candidates",
]

_NAMES = ("x_src", "x_dst", "y_src", "y_dst", "b0", "V", "c", "w_omega", "b_omega")
_GRAD_NAMES = ("grad_Q", "grad_P")


def _expected_shapes(floats: list[Tensor], num_dst: int) -> dict[str, tuple[int, ...]]:
    (num_src, Fin), (_, r, Fh) = floats[0].shape, floats[5].shape
    return {
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


# What the kernels compute in: float16 / bfloat16 are accumulated in float32 on CPU.
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_float_dtypes(names: tuple[str, ...], tensors: list[Tensor | None], op: str) -> None:
    # Integer (or complex) data would be refused by the reference deep inside PyTorch and
    # silently computed in integer arithmetic by the Numba kernels: one clear error instead.
    for name, tensor in zip(names, tensors, strict=True):
        if tensor is not None and tensor.dtype not in _FLOAT_DTYPES:
            raise ValueError(
                f"{op}: '{name}' must be a floating-point tensor (float16, bfloat16, float32 "
                f"or float64), got dtype {tensor.dtype}"
            )


def _check_index_shapes(rowptr: Tensor, col: Tensor, op: str) -> None:
    for name, index in (("rowptr", rowptr), ("col", col)):
        if index.dim() != 1 or index.dtype != torch.long:
            raise ValueError(
                f"{op}: '{name}' must be a 1-D int64 tensor, got shape "
                f"{tuple(index.shape)} and dtype {index.dtype}"
            )
    if rowptr.numel() == 0:
        raise ValueError(f"{op}: 'rowptr' needs num_dst + 1 >= 1 entries, got none")


def _check_shapes(floats: list[Tensor], rowptr: Tensor, col: Tensor) -> None:
    _check_index_shapes(rowptr, col, "edge_aggregate")
    num_dst = rowptr.numel() - 1
    if floats[0].dim() != 2 or floats[5].dim() != 3:
        raise ValueError(
            f"edge_aggregate: 'x_src' must be 2-D and 'V' 3-D, got shapes "
            f"{tuple(floats[0].shape)} and {tuple(floats[5].shape)}"
        )
    expected = _expected_shapes(floats, num_dst)
    for name, tensor in zip(_NAMES, floats, strict=True):
        if tuple(tensor.shape) != expected[name]:
            raise ValueError(
                f"edge_aggregate: '{name}' must have shape {expected[name]} (from x_src, V "
                f"and rowptr of {num_dst + 1} entries), got {tuple(tensor.shape)}"
            )


def check_index_values(
    rowptr: Tensor, col: Tensor, num_src: int, on_host: bool, op: str = "edge_aggregate"
) -> None:
    r"""Checks that a CSR index points into the node tensors: :obj:`rowptr` rises from 0 to
    the number of edges without decreasing, and every source in :obj:`col` lies in
    :math:`[0, N_s)`.

    Args:
        rowptr (torch.Tensor): CSR pointers by target :math:`(N_t + 1,)`, int64.
        col (torch.Tensor): Source of every edge :math:`(E,)`, int64.
        num_src (int): The number of source nodes :math:`N_s`.
        on_host (bool): :obj:`True`: an exact check with a clear message (one pass over
            the indices, synchronising); :obj:`False`: one asynchronous device-side
            assertion (:func:`torch._assert_async`), without a host synchronisation.
        op (str, optional): The op named in the messages. (default: :obj:`"edge_aggregate"`)
    """
    num_edges = col.numel()
    # Comparisons only: `rowptr.diff()` wraps around in int64, so pointers such as
    # [0, 2**63 - 1, -2**63, E] would pass a `diff() >= 0` test and send a kernel far outside
    # its arrays. Values within [0, E] and pairwise non-decreasing cannot overflow.
    ok = (
        (rowptr[0] == 0)
        & (rowptr[-1] == num_edges)
        & ((rowptr >= 0) & (rowptr <= num_edges)).all()
        & (rowptr[1:] >= rowptr[:-1]).all()
    )
    if not on_host:
        if num_edges > 0:
            ok = ok & (col.min() >= 0) & (col.max() < num_src)
        torch._assert_async(ok, f"{op}: rowptr/col do not index the node tensors")
        return
    if not bool(ok):
        first, last = int(rowptr[0]), int(rowptr[-1])
        lo, hi = int(rowptr.min()), int(rowptr.max())
        raise ValueError(
            f"{op}: 'rowptr' must rise from 0 to the number of edges ({num_edges}) without "
            f"decreasing, got first {first}, last {last} and values in [{lo}, {hi}]"
        )
    if num_edges > 0:
        lo, hi = int(col.min()), int(col.max())
        if lo < 0 or hi >= num_src:
            raise IndexError(
                f"{op}: source indices 'col' must lie in [0, {num_src - 1}], "
                f"found values in [{lo}, {hi}]"
            )


def check_edge_aggregate_inputs(
    floats: list[Tensor], rowptr: Tensor, col: Tensor, grads: list[Tensor] | None = None
) -> None:
    r"""Checks the inputs of :func:`pyg_lecc.ops.edge_aggregate` (and, with :obj:`grads`,
    the output gradients :math:`(\partial Q, \partial P)` of its backward) against each
    other: shapes, pointer consistency and index ranges.

    Args:
        floats (list[torch.Tensor]): ``x_src, x_dst, y_src, y_dst, b0, V, c, w_omega,
            b_omega``.
        rowptr (torch.Tensor): CSR pointers by target.
        col (torch.Tensor): Source of every edge.
        grads (list[torch.Tensor], optional): ``grad_Q, grad_P``. (default: :obj:`None`)
    """
    _check_float_dtypes(_NAMES + _GRAD_NAMES, [*floats, *(grads or [None, None])], "edge_aggregate")
    _check_shapes(floats, rowptr, col)
    if grads is not None:
        num_dst, (r, Fh) = rowptr.numel() - 1, floats[5].shape[1:]
        for name, grad, shape in zip(
            _GRAD_NAMES, grads, ((num_dst, r, Fh), (num_dst, r)), strict=True
        ):
            if tuple(grad.shape) != shape:
                raise ValueError(
                    f"edge_aggregate backward: '{name}' must have shape {shape}, "
                    f"got {tuple(grad.shape)}"
                )
    check_index_values(rowptr, col, floats[0].size(0), on_host=rowptr.device.type == "cpu")


_LABEL_NAMES = ("pre", "gamma", "V", "c", "w_omega", "b_omega")


def check_edge_label_aggregate_inputs(
    floats: list[Tensor | None], rowptr: Tensor, col: Tensor, grads: list[Tensor] | None = None
) -> None:
    r"""Checks the inputs of :func:`pyg_lecc.ops.edge_label_aggregate` (and, with
    :obj:`grads`, the output gradients :math:`(\partial Q, \partial P)` of its backward)
    against each other: shapes, pointer consistency and index ranges.

    Args:
        floats (list[torch.Tensor]): ``pre, gamma, V, c, w_omega, b_omega`` (``gamma`` may
            be :obj:`None`).
        rowptr (torch.Tensor): CSR pointers by target.
        col (torch.Tensor): Source of every edge.
        grads (list[torch.Tensor], optional): ``grad_Q, grad_P``. (default: :obj:`None`)
    """
    op = "edge_label_aggregate"
    _check_float_dtypes(_LABEL_NAMES + _GRAD_NAMES, [*floats, *(grads or [None, None])], op)
    _check_index_shapes(rowptr, col, op)
    pre, V = floats[0], floats[2]
    if pre is None or V is None or pre.dim() != 2 or V.dim() != 3:
        raise ValueError(
            f"{op}: 'pre' must be 2-D and 'V' 3-D, got shapes "
            f"{None if pre is None else tuple(pre.shape)} and "
            f"{None if V is None else tuple(V.shape)}"
        )
    num_edges, num_dst, (num_src, r, Fh) = col.numel(), rowptr.numel() - 1, V.shape
    expected = {
        "pre": (num_edges, Fh),
        "gamma": (num_edges,),
        "V": (num_src, r, Fh),
        "c": (num_src, r),
        "w_omega": (r, Fh),
        "b_omega": (r,),
    }
    for name, tensor in zip(_LABEL_NAMES, floats, strict=True):
        if tensor is None and name == "gamma":
            continue  # no attention
        if tensor is None or tuple(tensor.shape) != expected[name]:
            got = None if tensor is None else tuple(tensor.shape)
            raise ValueError(
                f"{op}: '{name}' must have shape {expected[name]} (from V and the "
                f"{num_edges} entries of col), got {got}"
            )
    if grads is not None:
        for name, grad, shape in zip(
            _GRAD_NAMES, grads, ((num_dst, r, Fh), (num_dst, r)), strict=True
        ):
            if tuple(grad.shape) != shape:
                raise ValueError(
                    f"{op} backward: '{name}' must have shape {shape}, got {tuple(grad.shape)}"
                )
    check_index_values(rowptr, col, num_src, rowptr.device.type == "cpu", op)


def fewest_candidates(window: tuple[int, int], exclude_radius: int) -> int:
    r"""The fewest kNN candidates any pixel has in an :math:`S_h \times S_w` search window
    once its :obj:`exclude_radius` neighbourhood is removed (the whole exclusion zone fits in
    the window)."""
    Sh, Sw = window
    side = 2 * exclude_radius + 1
    return Sh * Sw - min(Sh, side) * min(Sw, side)


def check_knn_window(
    shape: tuple[int, ...],
    k: int,
    exclude_radius: int,
    window: tuple[int, int],
    tile: int | None = None,
) -> None:
    r"""Checks the arguments of :func:`pyg_lecc.ops.knn.knn_in_windows`: a window inside the
    :math:`(B, C, H, W)` image, at least :obj:`k` candidates for every pixel and, unless
    :obj:`tile` is :obj:`None`, a positive integer tile side (a side below 1 leaves no tile
    to compute, and the output uninitialised)."""
    if len(shape) != 4:
        raise ValueError(f"knn_in_windows: 'feats' must be (B, C, H, W), got shape {shape}")
    if tile is not None and (not isinstance(tile, int) or isinstance(tile, bool) or tile < 1):
        raise ValueError(f"knn_in_windows: 'tile' must be a positive integer, got {tile!r}")
    H, W = shape[2], shape[3]
    Sh, Sw = window
    if not (1 <= Sh <= H and 1 <= Sw <= W):
        raise ValueError(
            f"knn_in_windows: 'window' {window} must lie inside the {H}x{W} image (each "
            f"side between 1 and the image's)"
        )
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"knn_in_windows: 'k' must be a positive integer, got {k!r}")
    if not isinstance(exclude_radius, int) or exclude_radius < 0:
        raise ValueError(
            f"knn_in_windows: 'radius' must be an integer >= 0, got {exclude_radius!r}"
        )
    fewest = fewest_candidates(window, exclude_radius)
    if fewest < k:
        raise ValueError(
            f"knn_in_windows: cannot choose k={k} neighbours: a {Sh}x{Sw} window with "
            f"exclude_radius={exclude_radius} leaves some pixels only {max(fewest, 0)} "
            f"candidates"
        )
