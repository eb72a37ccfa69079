"""Tests of pyg_lecc.nir.data.pairs (finding and loading NIR/RGB pairs) on small synthetic
images; data packs are tested in test_pack.py."""

import re

import numpy as np
import pytest
from image_helpers import _colour, _grey, _make_plain, _make_vcip, _write

from pyg_lecc.nir.data import ImagePair, PairingError, find_pairs, load_pair


def test_find_pairs_vcip_layout(tmp_path):
    root = _make_vcip(tmp_path / "vcip2020")
    train = find_pairs(root)
    assert [p.name for p in train] == ["country_0000", "field_0002", "forest_0001"]
    assert train[0] == ImagePair(
        "country_0000",
        root / "NIR" / "country_0000_nir.png",
        root / "RGB-Registered" / "country_0000_rgb_reg.png",
    )
    val = find_pairs(root, split="validation")
    assert [p.name for p in val] == ["validation_0000", "validation_0001"]
    assert val[1].rgb_path == root / "Validation" / "validation_0001_rgb_reg.png"
    # The Validation folder given directly is a side-by-side folder.
    assert find_pairs(root / "Validation") == val


def test_find_pairs_plain_layout_matches_by_stem(tmp_path):
    root = _make_plain(tmp_path)
    _write(root / "nir" / "c.jpg", _grey(seed=5))
    _write(root / "rgb" / "c.tif", _colour(seed=5))
    pairs = find_pairs(root)
    assert [p.name for p in pairs] == ["a", "b", "c"]
    assert pairs[2] == ImagePair("c", root / "nir" / "c.jpg", root / "rgb" / "c.tif")


def test_find_pairs_plain_layout_with_splits(tmp_path):
    _make_plain(tmp_path / "train", names=("t1", "t2"))
    _make_plain(tmp_path / "val", names=("v1",))
    assert [p.name for p in find_pairs(tmp_path)] == ["t1", "t2"]
    assert [p.name for p in find_pairs(tmp_path, "validation")] == ["v1"]
    with pytest.raises(PairingError, match=r"validation folder not found"):
        find_pairs(_make_plain(tmp_path / "flat"), "validation")
    with pytest.raises(ValueError, match="split"):
        find_pairs(tmp_path, "test")


def test_find_pairs_side_by_side_rgb_suffix(tmp_path):
    for i in range(3):
        _write(tmp_path / f"{i:04d}_nir.jpg", _grey(seed=i))
        _write(tmp_path / f"{i:04d}_rgb.jpg", _colour(seed=i))
    pairs = find_pairs(tmp_path)
    assert [p.name for p in pairs] == ["0000", "0001", "0002"]
    assert pairs[1].rgb_path == tmp_path / "0001_rgb.jpg"


def test_find_pairs_missing_partner(tmp_path):
    root = _make_vcip(tmp_path)
    (root / "RGB-Registered" / "forest_0001_rgb_reg.png").unlink()
    nir = root / "NIR" / "forest_0001_nir.png"
    partner = root / "RGB-Registered" / "forest_0001_rgb_reg.png"
    message = re.escape(f"{nir} has no RGB partner: expected {partner}")
    with pytest.raises(PairingError, match=message):
        find_pairs(root)


def test_find_pairs_missing_partner_plain(tmp_path):
    root = _make_plain(tmp_path)
    (root / "rgb" / "a.png").unlink()
    with pytest.raises(PairingError, match=re.escape(str(root / "nir" / "a.png"))):
        find_pairs(root)


def test_find_pairs_extra_rgb(tmp_path):
    root = _make_plain(tmp_path)
    extra = _write(root / "rgb" / "zz.png", _colour())
    with pytest.raises(PairingError, match=r"without a NIR partner.*" + re.escape(str(extra))):
        find_pairs(root)


def test_find_pairs_ambiguous_names(tmp_path):
    root = _make_plain(tmp_path)
    _write(root / "nir" / "a.jpg", _grey())
    with pytest.raises(PairingError, match=r"ambiguous image name 'a'"):
        find_pairs(root)


def test_find_pairs_empty_and_missing_folders(tmp_path):
    with pytest.raises(PairingError, match=r"no NIR images found in " + re.escape(str(tmp_path))):
        find_pairs(tmp_path)
    (tmp_path / "nir").mkdir()
    (tmp_path / "rgb").mkdir()
    with pytest.raises(PairingError, match=r"no NIR images .* found in .*nir"):
        find_pairs(tmp_path)
    missing = tmp_path / "does_not_exist"
    with pytest.raises(PairingError, match=r"data folder not found: " + re.escape(str(missing))):
        find_pairs(missing)
    vcip = tmp_path / "vcip"
    (vcip / "NIR").mkdir(parents=True)
    with pytest.raises(PairingError, match=r"folder not found: .*RGB-Registered"):
        find_pairs(vcip)


def test_load_pair_values_and_size_mismatch(tmp_path):
    nir = _write(tmp_path / "x_nir.png", _grey(8, 10))
    rgb = _write(tmp_path / "x_rgb.png", _colour(8, 10))
    got_nir, got_rgb = load_pair(ImagePair("x", nir, rgb))
    np.testing.assert_array_equal(got_nir, _grey(8, 10) / np.float32(255))
    np.testing.assert_array_equal(got_rgb, _colour(8, 10) / np.float32(255))

    small = _write(tmp_path / "y_rgb.png", _colour(8, 9))
    with pytest.raises(PairingError, match=r"x_nir\.png is 8x10 but RGB .*y_rgb\.png is 8x9"):
        load_pair(ImagePair("x", nir, small))
