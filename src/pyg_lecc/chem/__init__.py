r"""Molecules with :class:`~pyg_lecc.LightweightECC`: RDKit featurisation, scaffold splits and
the MoleculeNet files (:mod:`pyg_lecc.chem.molecules`, extra ``chem``), and a small
message-passing regressor that takes the layer by name, beside :class:`NNConv` and
:class:`GINEConv` (:mod:`pyg_lecc.chem.mpnn`)."""

from pyg_lecc.chem.molecules import load_molecules, load_split, mol_to_graph, smiles_to_graph
from pyg_lecc.chem.mpnn import MPNN, edge_conditioned_conv, evaluate_rmse, fit_regression

__all__ = [
    "MPNN",
    "edge_conditioned_conv",
    "evaluate_rmse",
    "fit_regression",
    "load_molecules",
    "load_split",
    "mol_to_graph",
    "smiles_to_graph",
]
