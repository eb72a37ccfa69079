r"""Fused operators of :class:`~pyg_lecc.LightweightECC`, ``torch.library`` custom ops with
autograd and one implementation per device, organised like pyg-lib's kernels:

* :func:`edge_aggregate`: the default mode's per-edge pipeline (label
  :math:`\mathbf{x}_j - \mathbf{x}_i`, computed from node terms);
* :func:`edge_label_aggregate`: the ``edge_dim`` mode's (and ``attention=False``'s), from a
  per-edge hidden-layer pre-activation and attention computed outside.

Each op is a module of its own (``ops/_edge_aggregate.py``, ``ops/_edge_label_aggregate.py``:
schema, fake implementation, autograd, public function; private modules, as PyG's
``utils/_scatter.py``, so that the name ``pyg_lecc.ops.edge_aggregate`` is the function);
:mod:`pyg_lecc.ops.backends` chooses the implementation per call.

Implementations:

* :mod:`pyg_lecc.ops.reference`: plain PyTorch, edge-chunked (the ground truth, the default
  implementation and the fallback on every device);
* :mod:`pyg_lecc.ops.cpu`: Numba kernels, registered for CPU tensors when Numba imports
  (otherwise one warning, and the reference is used);
* :mod:`pyg_lecc.ops.cuda`: Triton kernels, used for CUDA tensors when Triton imports (it
  ships with CUDA builds of PyTorch). Those of :func:`edge_aggregate` passed
  ``tests/ops/test_cuda_kernels.py`` and ``scripts/check_cuda_kernels.py`` on an NVIDIA H200 (torch
  2.11, Triton 3.6); the environment variable ``PYG_LECC_CUDA_KERNELS=0`` makes CUDA inputs
  take the reference path (with GPU-sized chunks) instead. Those of
  :func:`edge_label_aggregate` have not run on a GPU yet: they are used only with
  ``PYG_LECC_CUDA_EDGE_LABEL_KERNELS=1`` (and without ``PYG_LECC_CUDA_KERNELS=0``).

:func:`backend_for` tells which implementation a device uses; :func:`use_reference` forces
the reference (tests, benchmarks); :func:`targets_of_edges` expands CSR pointers to the
target of every edge. ``torch.compile`` sees each op as one opaque node (a fake
implementation gives its output shapes); under autocast its inputs are cast to float32, and
float16 / bfloat16 inputs are accumulated in float32 in any case.
"""

from __future__ import annotations

from pyg_lecc.ops._edge_aggregate import edge_aggregate
from pyg_lecc.ops._edge_label_aggregate import edge_label_aggregate
from pyg_lecc.ops.backends import backend_for, use_reference
from pyg_lecc.ops.reference import targets_of_edges

__all__ = [
    "backend_for",
    "edge_aggregate",
    "edge_label_aggregate",
    "targets_of_edges",
    "use_reference",
]
