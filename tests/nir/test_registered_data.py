"""Tests of registered training pairs in the data pipeline: PairedImageDataset(register=True)
and the registrations recorded in data packs."""

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from test_registration import _shifted_pair

from pyg_lecc.nir.data import (
    PACK_MANIFEST,
    PairedImageDataset,
    datasets,
    find_pairs,
    load_pair,
    pack_dataset,
)
from pyg_lecc.nir.registration import estimate_shift, register_pair

SHIFT = (2.4, -1.3)


def _write_pair(base: Path, name: str, nir: np.ndarray, rgb: np.ndarray) -> None:
    for kind, img in (("nir", nir), ("rgb", rgb)):
        (base / kind).mkdir(parents=True, exist_ok=True)
        iio.imwrite(base / kind / f"{name}.png", np.round(img * 255).astype(np.uint8))


def _make_misregistered(root: Path) -> Path:
    """Training and validation pairs that are each off by SHIFT, plus a flat training pair."""
    # A clear sky: flat, with independent noise in the two images.
    rng = np.random.default_rng(0)
    flat_nir, flat_rgb = rng.normal(0.5, 0.02, (64, 64)), rng.normal(0.4, 0.02, (64, 64, 3))
    _write_pair(root / "train", "flat", flat_nir, flat_rgb)
    for split in ("train", "validation"):
        _write_pair(root / split, "shifted", *_shifted_pair(SHIFT, size=64))
    return root


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return _make_misregistered(tmp_path_factory.mktemp("misregistered"))


@pytest.mark.parametrize("preload", [True, False])
def test_training_pairs_are_shifted_into_register(source, preload):
    ds = PairedImageDataset(source, "train", preload=preload, register=True)
    assert [p.name for p in ds.pairs] == ["flat", "shifted"]
    flat, shifted = (p.registration for p in ds.pairs)
    assert not flat.reliable
    assert shifted.reliable
    np.testing.assert_allclose(shifted.shift, SHIFT, atol=0.15)
    # Each item is the pair as stored, moved by its own estimate (unreliable: unchanged).
    for i, pair in enumerate(ds.pairs):
        nir, rgb = load_pair(pair)
        expected = register_pair(nir, rgb, estimate_shift(nir, rgb))
        got_nir, got_rgb, name = ds[i]
        assert name == pair.name
        np.testing.assert_array_equal(got_nir[0].numpy(), expected[0])
        np.testing.assert_array_equal(got_rgb.permute(1, 2, 0).numpy(), expected[1])
    assert ds[0][0].shape == (1, 64, 64)  # the flat pair: not moved, not cropped
    assert ds[1][0].shape == (1, 61, 62)  # ceil(2.4) rows and ceil(1.3) columns cropped
    assert ds.subset([1])[0][1].shape == (3, 61, 62)


def test_pairs_are_as_stored_without_register(source):
    ds = PairedImageDataset(source, "train")
    assert all(p.registration is None for p in ds.pairs)
    np.testing.assert_array_equal(ds[1][1].permute(1, 2, 0).numpy(), load_pair(ds.pairs[1])[1])


def test_validation_pairs_are_never_registered(source):
    with pytest.raises(ValueError, match="only training pairs are registered"):
        PairedImageDataset(source, "validation", register=True)


def test_a_pack_records_the_registration_of_its_training_pairs(source, tmp_path, monkeypatch):
    result = pack_dataset(source, tmp_path / "pack")
    assert result["registration"]["pairs"] == 2 and result["registration"]["unreliable"] == 1
    manifest = json.loads((tmp_path / "pack" / PACK_MANIFEST).read_text())
    # Training pairs only: the validation pair is never even estimated.
    assert sorted(manifest["registration"]["pairs"]) == [
        "train/nir/flat.webp",
        "train/nir/shifted.webp",
    ]
    packed = find_pairs(tmp_path / "pack", "train")
    assert find_pairs(tmp_path / "pack", "validation")[0].registration is None
    for pair, original in zip(packed, find_pairs(source, "train"), strict=True):
        assert pair.registration == estimate_shift(*load_pair(original))
    # A registered dataset of the pack uses the recorded shifts: nothing is estimated again.
    monkeypatch.setattr(datasets, "estimate_shift", _no_estimate)
    on_pack = PairedImageDataset(tmp_path / "pack", register=True)
    monkeypatch.undo()
    on_source = PairedImageDataset(source, register=True)
    for i in range(len(on_source)):
        np.testing.assert_array_equal(on_pack[i][1].numpy(), on_source[i][1].numpy())


def _no_estimate(*args):
    raise AssertionError("the shift was estimated again")


def test_a_pack_without_registrations_is_registered_on_the_fly(source, tmp_path):
    # Packs written before registrations were recorded: read as unregistered pairs.
    pack = tmp_path / "pack"
    pack_dataset(source, pack)
    manifest = json.loads((pack / PACK_MANIFEST).read_text())
    del manifest["registration"]
    (pack / PACK_MANIFEST).write_text(json.dumps(manifest))
    assert all(p.registration is None for p in find_pairs(pack, "train"))
    ds = PairedImageDataset(pack, register=True)
    assert ds.pairs[1].registration == estimate_shift(*load_pair(find_pairs(source)[1]))
