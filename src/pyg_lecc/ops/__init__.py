r"""Fused operators of :class:`~pyg_lecc.LightweightECC`, ``torch.library`` custom ops with
autograd and one implementation per device, organised like pyg-lib's kernels:

* :func:`edge_aggregate`: the default mode's per-edge pipeline (label
  :math:`\mathbf{x}_j - \mathbf{x}_i`, computed from node terms);
* :func:`edge_label_aggregate`: the ``edge_dim`` mode's (and ``attention=False``'s), from a
  per-edge hidden-layer pre-activation and attention computed outside.

Implementations:

* :mod:`pyg_lecc.ops.reference`: plain PyTorch, edge-chunked (the ground truth, the default
  implementation and the fallback on every device);
* :mod:`pyg_lecc.ops.cpu`: Numba kernels, registered for CPU tensors when Numba imports
  (otherwise one warning, and the reference is used);
* :mod:`pyg_lecc.ops.cuda`: Triton kernels, used for CUDA tensors when Triton imports (it
  ships with CUDA builds of PyTorch). Those of :func:`edge_aggregate` passed
  ``tests/test_ops_cuda.py`` and ``scripts/check_cuda_kernels.py`` on an NVIDIA H200 (torch
  2.11, Triton 3.6); the environment variable ``PYG_LECC_CUDA_KERNELS=0`` makes CUDA inputs
  take the reference path (with GPU-sized chunks) instead. Those of
  :func:`edge_label_aggregate` have not run on a GPU yet: they are used only with
  ``PYG_LECC_CUDA_EDGE_LABEL_KERNELS=1`` (and without ``PYG_LECC_CUDA_KERNELS=0``).

:func:`backend_for` tells which implementation a device uses; :func:`use_reference` forces
the reference (tests, benchmarks). ``torch.compile`` sees each op as one opaque node (a fake
implementation gives its output shapes); under autocast its inputs are cast to float32, and
float16 / bfloat16 inputs are accumulated in float32 in any case.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from types import ModuleType

import torch
from torch import Tensor

from pyg_lecc.ops import reference
from pyg_lecc.typing import WITH_NUMBA

__all__ = ["backend_for", "edge_aggregate", "edge_label_aggregate", "use_reference"]

_CUDA_KERNELS = os.environ.get("PYG_LECC_CUDA_KERNELS", "1") != "0"
# The Triton kernels of edge_label_aggregate have not run on a GPU yet: opt-in only.
_CUDA_EDGE_LABEL_KERNELS = (
    _CUDA_KERNELS and os.environ.get("PYG_LECC_CUDA_EDGE_LABEL_KERNELS", "0") == "1"
)
_OPS = ("edge_aggregate", "edge_label_aggregate")
_HALF = (torch.float16, torch.bfloat16)

_force_reference = False
_numba_state: dict[str, ModuleType | None] = {}


def _numba_kernels() -> ModuleType | None:
    # Imported on first use: Numba's import costs about a second, and not every process
    # runs the operator on CPU. A missing or broken Numba warns once.
    if "module" not in _numba_state:
        module, problem = None, "it is not installed"
        if WITH_NUMBA:
            try:
                from pyg_lecc.ops import cpu as module
            except ImportError as error:  # e.g. a Numba built for another NumPy
                problem = f"it failed to import ({error})"
        if module is None:
            warnings.warn(
                f"pyg_lecc: the Numba CPU kernel of LightweightECC is unavailable because "
                f"{problem}; using the plain PyTorch reference, several times slower. "
                f"Install it with `pip install numba`.",
                RuntimeWarning,
                stacklevel=3,
            )
        _numba_state["module"] = module
    return _numba_state["module"]


def _cuda_kernels() -> ModuleType | None:
    from pyg_lecc.ops import cuda

    return cuda if cuda.AVAILABLE else None


def _kernels(device: torch.device, op: str = "edge_aggregate") -> ModuleType:
    if not _force_reference:
        if device.type == "cpu" and (module := _numba_kernels()) is not None:
            return module
        cuda_enabled = _CUDA_EDGE_LABEL_KERNELS if op == "edge_label_aggregate" else _CUDA_KERNELS
        if device.type == "cuda" and cuda_enabled and (module := _cuda_kernels()) is not None:
            return module
    return reference


def backend_for(device: torch.device | str, op: str = "edge_aggregate") -> str:
    r"""The implementation the fused op :obj:`op` (:obj:`"edge_aggregate"` or
    :obj:`"edge_label_aggregate"`) uses for tensors on :obj:`device`: :obj:`"numba"`,
    :obj:`"triton"` or :obj:`"reference"`.

    Example:
        >>> with use_reference():
        ...     backend_for("cpu")
        'reference'
    """
    if op not in _OPS:
        raise ValueError(f"backend_for: 'op' must be one of {_OPS}, got {op!r}")
    module = _kernels(torch.device(device), op)
    return {reference: "reference", _numba_state.get("module"): "numba"}.get(module, "triton")


@contextlib.contextmanager
def use_reference(enabled: bool = True) -> Iterator[None]:
    r"""Context manager that makes :func:`edge_aggregate` use the plain PyTorch reference on
    every device (process-wide, so that backward passes run by autograd's device threads
    follow it too).

    Args:
        enabled (bool, optional): :obj:`False` leaves the choice by device unchanged.
            (default: :obj:`True`)
    """
    global _force_reference
    previous, _force_reference = _force_reference, enabled or _force_reference
    try:
        yield
    finally:
        _force_reference = previous


def _call(
    module: ModuleType,
    name: str,
    floats: list[Tensor | None],
    rowptr: Tensor,
    col: Tensor,
    *scalars,
) -> tuple[Tensor, ...]:
    # `floats` ends with b_omega in every direction: its dtype is the inputs' dtype. `None`
    # (edge_label_aggregate without attention) passes through.
    fn: Callable[..., tuple[Tensor, ...]] = getattr(module, name)
    dtype = floats[-1].dtype  # type: ignore[union-attr]
    if dtype in _HALF and module.__name__ != "pyg_lecc.ops.cuda":
        # Half inputs are accumulated in float32, then returned in their own precision
        # (the Triton kernels do the same internally).
        outs = fn(*(t if t is None else t.float() for t in floats), rowptr, col, *scalars)
        return tuple(out.to(dtype) for out in outs)
    return tuple(fn(*(t if t is None else t.contiguous() for t in floats), rowptr, col, *scalars))


def _default_module(device: torch.device) -> ModuleType:
    if device.type == "cpu":
        _numba_kernels()  # no CPU kernel registered: the one warning
    return reference


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
    floats = [x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega]
    module = _default_module(rowptr.device)
    Q, P = _call(module, "edge_aggregate_forward", floats, rowptr, col, delta, slope)
    return Q, P


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
    floats = [grad_Q, grad_P, x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega]
    module = _default_module(rowptr.device)
    return _call(module, "edge_aggregate_backward", floats, rowptr, col, delta, slope)  # type: ignore[return-value]


@_edge_aggregate_backward.register_fake
def _(grad_Q, grad_P, x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega, *_):
    inputs = (x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega)
    return tuple(torch.empty_like(t) for t in inputs)


def _forward_kernel(*args) -> tuple[Tensor, Tensor]:
    *floats, rowptr, col, delta, slope = args
    Q, P = _call(
        _kernels(rowptr.device), "edge_aggregate_forward", floats, rowptr, col, delta, slope
    )
    return Q, P


def _backward_kernel(*args) -> tuple[Tensor, ...]:
    *floats, rowptr, col, delta, slope = args
    return _call(
        _kernels(rowptr.device), "edge_aggregate_backward", floats, rowptr, col, delta, slope
    )


def _setup_context(ctx, inputs, output) -> None:
    *tensors, delta, slope = inputs
    ctx.save_for_backward(*tensors)
    ctx.delta, ctx.slope = delta, slope


def _backward(ctx, grad_Q: Tensor, grad_P: Tensor):
    *floats, rowptr, col = ctx.saved_tensors
    grads = _edge_aggregate_backward(
        grad_Q.contiguous(), grad_P.contiguous(), *floats, rowptr, col, ctx.delta, ctx.slope
    )
    return (*grads, None, None, None, None)


_edge_aggregate.register_autograd(_backward, setup_context=_setup_context)
for _device_type in ("cpu", "cuda"):
    # Under autocast the op runs in float32 (low-precision inputs are cast up).
    torch.library.register_autocast(_edge_aggregate, _device_type, torch.float32)
# Device kernels (which still honour `use_reference`); other devices take the default
# implementation above, the reference.
for _device_type, _registered in (("cpu", WITH_NUMBA), ("cuda", _CUDA_KERNELS)):
    if _registered:
        _edge_aggregate.register_kernel(_device_type)(_forward_kernel)
        _edge_aggregate_backward.register_kernel(_device_type)(_backward_kernel)


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
    floats = [pre, gamma, V, c, w_omega, b_omega]
    module = _default_module(rowptr.device)
    Q, P = _call(module, "edge_label_aggregate_forward", floats, rowptr, col, slope)
    return Q, P


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
    floats = [grad_Q, grad_P, pre, gamma, V, c, w_omega, b_omega]
    module = _default_module(rowptr.device)
    return _call(module, "edge_label_aggregate_backward", floats, rowptr, col, slope)  # type: ignore[return-value]


@_edge_label_aggregate_backward.register_fake
def _(grad_Q, grad_P, pre, gamma, V, c, w_omega, b_omega, rowptr, col, slope):
    grad_gamma = pre.new_empty(0) if gamma is None else torch.empty_like(gamma)
    params = (torch.empty_like(t) for t in (V, c, w_omega, b_omega))
    return torch.empty_like(pre), grad_gamma, *params


def _label_kernel(name: str) -> Callable[..., tuple[Tensor, ...]]:
    def kernel(*args) -> tuple[Tensor, ...]:
        *floats, rowptr, col, slope = args
        module = _kernels(rowptr.device, "edge_label_aggregate")
        return _call(module, name, floats, rowptr, col, slope)

    return kernel


def _label_setup_context(ctx, inputs, output) -> None:
    *tensors, slope = inputs
    ctx.save_for_backward(*tensors)
    ctx.slope = slope


def _label_backward(ctx, grad_Q: Tensor, grad_P: Tensor):
    pre, gamma, V, c, w_omega, b_omega, rowptr, col = ctx.saved_tensors
    grad_pre, grad_gamma, *grads = _edge_label_aggregate_backward(
        grad_Q.contiguous(), grad_P.contiguous(), pre, gamma, V, c, w_omega, b_omega, rowptr,
        col, ctx.slope,
    )  # fmt: skip
    return grad_pre, None if gamma is None else grad_gamma, *grads, None, None, None


_edge_label_aggregate.register_autograd(_label_backward, setup_context=_label_setup_context)
for _device_type in ("cpu", "cuda"):
    torch.library.register_autocast(_edge_label_aggregate, _device_type, torch.float32)
# Registered on CUDA whatever PYG_LECC_CUDA_EDGE_LABEL_KERNELS says: `_kernels` decides, and
# falls back to the reference (with GPU-sized chunks) unless the kernels are enabled.
for _device_type, _registered in (("cpu", WITH_NUMBA), ("cuda", True)):
    if _registered:
        _edge_label_aggregate.register_kernel(_device_type)(
            _label_kernel("edge_label_aggregate_forward")
        )
        _edge_label_aggregate_backward.register_kernel(_device_type)(
            _label_kernel("edge_label_aggregate_backward")
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
