r"""NIR-GNN: near-infrared image colorization with graph convolutions (Valsesia et al.,
VCIP 2020): the networks and their shipped weights, data, inference, metrics, training and
the ``pyg-lecc`` command."""

from pyg_lecc.nir.config import NIRGNNConfig
from pyg_lecc.nir.hub import cnn_baseline, get_model, list_models, nir_gnn
from pyg_lecc.nir.inference import colorize, colorize_file
from pyg_lecc.nir.models import NIRGNN, LocalNonLocalConv

__all__ = [
    "NIRGNN",
    "LocalNonLocalConv",
    "NIRGNNConfig",
    "cnn_baseline",
    "colorize",
    "colorize_file",
    "get_model",
    "list_models",
    "nir_gnn",
]
