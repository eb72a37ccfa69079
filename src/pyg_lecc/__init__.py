"""pyg_lecc: Lightweight Edge-Conditioned Convolution for PyTorch Geometric, image kNN
graphs, and NIR-GNN near-infrared colorization."""

from pyg_lecc.conv import LightweightECC
from pyg_lecc.graph import ImageKNNGraph, image_knn_graph, image_to_nodes, nodes_to_image
from pyg_lecc.models import (
    NIRGNN,
    LocalNonLocalConv,
    cnn_baseline,
    get_model,
    list_models,
    nir_gnn,
)

__version__ = "0.1.0"

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
