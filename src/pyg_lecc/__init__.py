"""pyg_lecc: Lightweight Edge-Conditioned Convolution for PyTorch Geometric, image kNN
graphs, and NIR-GNN near-infrared colorization.

The top level is the operator library (:mod:`pyg_lecc.conv`, :mod:`pyg_lecc.functional`,
:mod:`pyg_lecc.graph`, :mod:`pyg_lecc.ops`). NIR-GNN lives in :mod:`pyg_lecc.nir` and the
molecule models in :mod:`pyg_lecc.chem`; the NIR-GNN names below are imported on first use,
so ``import pyg_lecc`` does not load the imaging stack.
"""

from __future__ import annotations

import importlib
from typing import Any

from pyg_lecc import _moved
from pyg_lecc.conv import LightweightECC
from pyg_lecc.graph import ImageKNNGraph, image_knn_graph, image_to_nodes, nodes_to_image

__version__ = "0.1.0"

# NIR-GNN names, imported on first use from the module that defines them.
_NIR_NAMES = {
    "NIRGNN": "pyg_lecc.nir.models",
    "LocalNonLocalConv": "pyg_lecc.nir.models",
    "cnn_baseline": "pyg_lecc.nir.hub",
    "get_model": "pyg_lecc.nir.hub",
    "list_models": "pyg_lecc.nir.hub",
    "nir_gnn": "pyg_lecc.nir.hub",
}

__all__ = [
    "NIRGNN",
    "ImageKNNGraph",
    "LightweightECC",
    "LocalNonLocalConv",
    "__version__",
    "cnn_baseline",
    "get_model",
    "image_knn_graph",
    "image_to_nodes",
    "list_models",
    "nir_gnn",
    "nodes_to_image",
]

_moved.install()


def __getattr__(name: str) -> Any:
    if name in _NIR_NAMES:
        return getattr(importlib.import_module(_NIR_NAMES[name]), name)
    raise AttributeError(f"module 'pyg_lecc' has no attribute '{name}'")
