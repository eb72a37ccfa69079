"""Tests of data packs (pyg_lecc.data.pack_dataset and the pack-data command)."""

import json

import imageio.v3 as iio
import numpy as np
import pytest
from test_training import _make_data

from pyg_lecc.cli import main
from pyg_lecc.data import (
    PACK_MANIFEST,
    ImageReadError,
    PairingError,
    find_pairs,
    load_pair,
    pack_dataset,
)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return _make_data(tmp_path_factory.mktemp("source"))


@pytest.fixture(scope="module")
def pack(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("packs") / "pack"
    result = pack_dataset(source, out)
    assert result["pairs"] == {"train": 3, "validation": 2}
    return out


@pytest.mark.parametrize("split", ["train", "validation"])
def test_pack_decodes_to_the_original_pixels(source, pack, split):
    original = find_pairs(source, split)
    packed = find_pairs(pack, split)
    assert [p.name for p in packed] == [p.name for p in original]
    for a, b in zip(original, packed, strict=True):
        assert b.nir_path.suffix == b.rgb_path.suffix == ".webp"
        assert b.checksums is not None and a.checksums is None
        for x, y in zip(load_pair(a), load_pair(b), strict=True):
            np.testing.assert_array_equal(x, y)


def test_a_damaged_pack_image_is_detected(source, pack, tmp_path):
    import shutil

    copy = tmp_path / "pack"
    shutil.copytree(pack, copy)
    pair = find_pairs(copy, "train")[1]
    pixels = np.asarray(iio.imread(pair.rgb_path))
    pixels[0, 0] ^= 1  # one bit of one pixel
    iio.imwrite(pair.rgb_path, pixels, extension=".webp", lossless=True)
    with pytest.raises(ImageReadError, match=f"{pair.rgb_path}.*checksum mismatch"):
        load_pair(find_pairs(copy, "train")[1])


def test_a_pack_file_missing_from_the_manifest_is_refused(pack, tmp_path):
    import shutil

    copy = tmp_path / "pack"
    shutil.copytree(pack, copy)
    manifest = json.loads((copy / PACK_MANIFEST).read_text())
    del manifest["files"]["train/nir/img0.webp"]
    (copy / PACK_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PairingError, match=r"img0\.webp is not listed in the pack manifest"):
        find_pairs(copy, "train")
    (copy / PACK_MANIFEST).write_text("{not json")
    with pytest.raises(PairingError, match="cannot read data pack manifest"):
        find_pairs(copy, "train")


def test_pack_refuses_a_non_empty_folder_and_16_bit_images(source, pack, tmp_path):
    with pytest.raises(FileExistsError, match="not an empty folder"):
        pack_dataset(source, pack)
    deep = _make_data(tmp_path / "deep", validation=False)
    nir = deep / "train" / "nir" / "img0.png"
    iio.imwrite(nir, (iio.imread(nir).astype(np.uint16) * 257))
    with pytest.raises(ImageReadError, match="8-bit images only"):
        pack_dataset(deep, tmp_path / "pack16")


def test_pack_data_command(source, tmp_path, capsys):
    assert main(["pack-data", "--data", str(source), "--out", str(tmp_path / "p")]) == 0
    assert "packed 3 train, 2 validation pairs" in capsys.readouterr().out
    assert main(["pack-data", "--data", str(source), "--out", str(tmp_path / "p")]) == 2
    assert "pyg-lecc: error:" in capsys.readouterr().err
