r"""The implementations (backends) of the fused ops and the choice between them.

Every backend is a module that defines the forward and backward of both ops with the
signatures of :class:`Kernels`: :mod:`pyg_lecc.ops.reference` (plain PyTorch),
:mod:`pyg_lecc.ops.cpu` (Numba) and :mod:`pyg_lecc.ops.cuda` (Triton). A :class:`Backend`
names one of them; :func:`choose_backend` picks one per call from the device, the
environment flags below and :func:`use_reference`, and :func:`backend_for` tells its name.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from pyg_lecc.ops import reference
from pyg_lecc.typing import WITH_NUMBA

__all__ = [
    "CUDA_EDGE_LABEL_KERNELS",
    "CUDA_KERNELS",
    "OPS",
    "Backend",
    "Kernels",
    "backend_for",
    "choose_backend",
    "fallback_backend",
    "register_kernels",
    "run_kernel",
    "use_reference",
]

CUDA_KERNELS = os.environ.get("PYG_LECC_CUDA_KERNELS", "1") != "0"
"""Whether CUDA inputs may take the Triton kernels (``PYG_LECC_CUDA_KERNELS=0``: never)."""
CUDA_EDGE_LABEL_KERNELS = (
    CUDA_KERNELS and os.environ.get("PYG_LECC_CUDA_EDGE_LABEL_KERNELS", "0") == "1"
)
"""Whether :func:`~pyg_lecc.ops.edge_label_aggregate` takes its Triton kernels on CUDA: they
have not run on a GPU yet, so only with ``PYG_LECC_CUDA_EDGE_LABEL_KERNELS=1``."""
OPS = {"edge_aggregate": 2, "edge_label_aggregate": 1}
"""The fused ops by name, as :func:`backend_for` takes them, each with the number of float
scalars that end its arguments (``delta`` and ``slope``; ``slope``)."""

_HALF = (torch.float16, torch.bfloat16)


class Kernels(Protocol):
    r"""What every backend module defines: the forward and backward of both fused ops.

    Each function checks its inputs (:mod:`pyg_lecc.ops.checks`) and takes them in the
    op's order. A backward takes the gradients of the op's outputs first, then the
    forward's arguments, and returns the gradients of the forward's floating inputs, in
    their order (that of a missing :obj:`gamma` is an empty tensor).
    """

    def edge_aggregate_forward(
        self,
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
    ) -> tuple[Tensor, Tensor]: ...

    def edge_aggregate_backward(
        self,
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
    ) -> tuple[Tensor, ...]: ...

    def edge_label_aggregate_forward(
        self,
        pre: Tensor,
        gamma: Tensor | None,
        V: Tensor,
        c: Tensor,
        w_omega: Tensor,
        b_omega: Tensor,
        rowptr: Tensor,
        col: Tensor,
        slope: float,
    ) -> tuple[Tensor, Tensor]: ...

    def edge_label_aggregate_backward(
        self,
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
    ) -> tuple[Tensor, ...]: ...


@dataclass(frozen=True)
class Backend:
    r"""One implementation of the fused ops.

    Args:
        name (str): What :func:`backend_for` returns for it.
        module (Kernels): The module that defines its functions.
        takes_half (bool, optional): Whether its functions take float16 / bfloat16 inputs
            as they are (accumulating in float32 themselves); otherwise they run on float32
            copies and the results are cast back. (default: :obj:`False`)
    """

    name: str
    module: Kernels
    takes_half: bool = False

    def call(
        self,
        kernel: Callable[..., tuple[Tensor, ...]],
        floats: Sequence[Tensor | None],
        rowptr: Tensor,
        col: Tensor,
        *scalars: float,
    ) -> tuple[Tensor, ...]:
        r"""Runs :obj:`kernel`, one of :obj:`module`'s functions, on the op's floating
        inputs :obj:`floats` (ending with :obj:`b_omega`, whose dtype is theirs; a missing
        :obj:`gamma` is :obj:`None`), the index and the scalars."""
        dtype = floats[-1].dtype  # type: ignore[union-attr]
        if dtype in _HALF and not self.takes_half:
            outs = kernel(*(t if t is None else t.float() for t in floats), rowptr, col, *scalars)
            return tuple(out.to(dtype) for out in outs)
        contiguous = (t if t is None else t.contiguous() for t in floats)
        return tuple(kernel(*contiguous, rowptr, col, *scalars))


_REFERENCE = Backend("reference", reference)

_force_reference = False
_numba_state: dict[str, Backend | None] = {}


def _numba() -> Backend | None:
    # Imported on first use: Numba's import costs about a second, and not every process
    # runs the operator on CPU. A missing or broken Numba warns once.
    if "backend" not in _numba_state:
        backend, problem = None, "it is not installed"
        if WITH_NUMBA:
            try:
                from pyg_lecc.ops import cpu
            except ImportError as error:  # e.g. a Numba built for another NumPy
                problem = f"it failed to import ({error})"
            else:
                backend = Backend("numba", cpu)
        if backend is None:
            warnings.warn(
                f"pyg_lecc: the Numba CPU kernel of LightweightECC is unavailable because "
                f"{problem}; using the plain PyTorch reference, several times slower. "
                f"Install it with `pip install numba`.",
                RuntimeWarning,
                stacklevel=3,
            )
        _numba_state["backend"] = backend
    return _numba_state["backend"]


@functools.cache
def _triton() -> Backend | None:
    # Imported on first use: only processes that run the ops on CUDA import Triton.
    from pyg_lecc.ops import cuda

    return Backend("triton", cuda, takes_half=True) if cuda.AVAILABLE else None


def choose_backend(device: torch.device, op: str) -> Backend:
    r"""The backend that runs the fused op :obj:`op` for tensors on :obj:`device` (the
    one :func:`backend_for` names)."""
    if not _force_reference:
        if device.type == "cpu" and (backend := _numba()) is not None:
            return backend
        enabled = CUDA_EDGE_LABEL_KERNELS if op == "edge_label_aggregate" else CUDA_KERNELS
        if device.type == "cuda" and enabled and (backend := _triton()) is not None:
            return backend
    return _REFERENCE


def fallback_backend(device: torch.device) -> Backend:
    r"""The backend of devices for which an op registers no kernel: the reference. On CPU,
    that is when Numba is missing, which warns once."""
    if device.type == "cpu":
        _numba()
    return _REFERENCE


def backend_for(device: torch.device | str, op: str = "edge_aggregate") -> str:
    r"""The implementation the fused op :obj:`op` (:obj:`"edge_aggregate"` or
    :obj:`"edge_label_aggregate"`) uses for tensors on :obj:`device`: :obj:`"numba"`,
    :obj:`"triton"` or :obj:`"reference"`.

    Example:
        >>> with use_reference():
        ...     backend_for("cpu")
        'reference'
    """
    if op not in OPS:
        raise ValueError(f"backend_for: 'op' must be one of {tuple(OPS)}, got {op!r}")
    return choose_backend(torch.device(device), op).name


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


def run_kernel(
    op: str, stage: str, backend_of: Callable[[torch.device], Backend], args: Sequence
) -> tuple[Tensor, ...]:
    r"""Runs the :obj:`stage` (:obj:`"forward"` or :obj:`"backward"`) of the fused op
    :obj:`op` on the backend :obj:`backend_of` picks for the index's device.

    Args:
        op (str): One of :data:`OPS`.
        stage (str): :obj:`"forward"` or :obj:`"backward"`.
        backend_of (Callable): :func:`fallback_backend`, or a choice by device.
        args (Sequence): The arguments of the op's stage, in its schema's order: floating
            tensors (or :obj:`None` for a missing :obj:`gamma`), :obj:`rowptr`, :obj:`col`,
            then the op's float scalars (:data:`OPS`).
    """
    num_scalars = OPS[op]
    *floats, rowptr, col = args[:-num_scalars]
    backend = backend_of(rowptr.device)
    kernel = getattr(backend.module, f"{op}_{stage}")
    return backend.call(kernel, floats, rowptr, col, *args[-num_scalars:])


def register_kernels(
    op: str, forward: torch.library.CustomOpDef, backward: torch.library.CustomOpDef, cuda: bool
) -> None:
    r"""Registers the device kernels of the fused op :obj:`op` (its custom ops
    :obj:`forward` and :obj:`backward`): on CPU when Numba imports, on CUDA when
    :obj:`cuda`, each call running the backend :func:`choose_backend` picks (which honours
    :func:`use_reference`). Other devices keep the ops' default implementations. Under
    autocast the op runs in float32 (low-precision inputs are cast up)."""

    def chosen(device: torch.device) -> Backend:
        return choose_backend(device, op)

    for device_type in ("cpu", "cuda"):
        torch.library.register_autocast(forward, device_type, torch.float32)
    for device_type, registered in (("cpu", WITH_NUMBA), ("cuda", cuda)):
        if registered:
            forward.register_kernel(device_type)(
                lambda *args: run_kernel(op, "forward", chosen, args)
            )
            backward.register_kernel(device_type)(
                lambda *args: run_kernel(op, "backward", chosen, args)
            )
