"""pyg_lecc: Lightweight Edge-Conditioned Convolution for PyTorch Geometric, image kNN
graphs, and NIR-GNN near-infrared colorization."""

from pyg_lecc.conv import LightweightECC

__version__ = "0.1.0"

__all__ = ["LightweightECC", "__version__"]
