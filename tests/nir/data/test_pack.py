"""Tests of data packs: writing them (pyg_lecc.nir.data.pack, and the pack-data command) and
reading them back (pyg_lecc.nir.data.pairs)."""

import json
import re
import shutil
import warnings

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from image_helpers import _png16
from training_helpers import _make_data, _write_split

from pyg_lecc.nir.cli import main
from pyg_lecc.nir.data import (
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
    copy = tmp_path / "pack"
    shutil.copytree(pack, copy)
    pair = find_pairs(copy, "train")[1]
    pixels = np.asarray(iio.imread(pair.rgb_path))
    pixels[0, 0] ^= 1  # one bit of one pixel
    iio.imwrite(pair.rgb_path, pixels, extension=".webp", lossless=True)
    with pytest.raises(ImageReadError, match=f"{pair.rgb_path}.*checksum mismatch"):
        load_pair(find_pairs(copy, "train")[1])


def test_a_pack_file_missing_from_the_manifest_is_refused(pack, tmp_path):
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


def test_a_truncated_pack_image_is_named_as_damaged(pack, tmp_path):
    copy = tmp_path / "pack"
    shutil.copytree(pack, copy)
    pair = find_pairs(copy, "train")[0]
    pair.nir_path.write_bytes(pair.nir_path.read_bytes()[:100])
    with pytest.raises(ImageReadError, match=re.escape(str(pair.nir_path)) + ".* damaged"):
        load_pair(pair)


def test_a_pack_with_a_pair_deleted_is_refused(pack, tmp_path):
    copy = tmp_path / "pack"
    shutil.copytree(pack, copy)
    for kind in ("nir", "rgb"):
        (copy / "train" / kind / "img1.webp").unlink()
    assert len(find_pairs(copy / "train")) == 2  # the folder alone still pairs
    for split in ("train", "validation"):
        with pytest.raises(PairingError, match=r"incomplete: 2 files .*missing "):
            find_pairs(copy, split)
    with pytest.raises(PairingError, match=r"train/nir/img1\.webp, train/rgb/img1\.webp"):
        find_pairs(copy, "train")


def test_a_pack_without_its_manifest_warns(source, pack, tmp_path):
    copy = tmp_path / "pack"
    shutil.copytree(pack, copy)
    (copy / PACK_MANIFEST).unlink()
    with pytest.warns(UserWarning, match=f"looks like a data pack .* no manifest {PACK_MANIFEST}"):
        pairs = find_pairs(copy, "train")
    assert [p.name for p in pairs] == ["img0", "img1", "img2"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        find_pairs(source, "train")  # PNG data: nothing to warn about


@pytest.mark.parametrize("failure", ["16_bit_last_pair", "size_mismatch", "interrupted"])
def test_a_failed_pack_leaves_nothing_behind(failure, tmp_path, monkeypatch):
    source = _make_data(tmp_path / "source")
    packs = tmp_path / "packs"
    packs.mkdir()
    if failure == "interrupted":
        encode, calls = iio.imwrite, []

        def interrupt_fourth_image(*args, **kwargs):
            calls.append(1)
            if len(calls) == 4:
                raise KeyboardInterrupt
            return encode(*args, **kwargs)

        monkeypatch.setattr(iio, "imwrite", interrupt_fourth_image)
        expected = KeyboardInterrupt
    else:
        broken = source / (
            "train/nir/img2.png" if failure == "16_bit_last_pair" else "validation/rgb/img1.png"
        )
        original = broken.read_bytes()
        if failure == "16_bit_last_pair":
            iio.imwrite(broken, iio.imread(broken).astype(np.uint16) * 257)
        else:
            iio.imwrite(broken, np.zeros((20, 20, 3), np.uint8))
        expected = ImageReadError if failure == "16_bit_last_pair" else PairingError
    with pytest.raises(expected):
        pack_dataset(source, packs / "pack")
    assert list(packs.iterdir()) == []  # no pack, no temporary folder

    if failure == "interrupted":
        monkeypatch.undo()
    else:
        broken.write_bytes(original)
    assert pack_dataset(source, packs / "pack")["pairs"] == {"train": 3, "validation": 2}
    assert sorted(p.name for p in packs.iterdir()) == ["pack"]


@pytest.mark.parametrize("where", ["subfolder", "itself", "dotdot", "symlink"])
def test_pack_refuses_an_output_inside_its_source(where, tmp_path, capsys):
    plain = tmp_path / "plain"
    _write_split(plain, 2, seed=0, easy=False)  # plain/nir + plain/rgb
    before = sorted(plain.rglob("*"))
    out = {
        "subfolder": plain / "train",
        "itself": plain,
        "dotdot": tmp_path / "elsewhere" / ".." / "plain" / "nir" / "pack",
        "symlink": tmp_path / "link" / "train",
    }[where]
    (tmp_path / "link").symlink_to(plain, target_is_directory=True)
    with pytest.raises(ValueError, match="inside the data set folder"):
        pack_dataset(plain, out)
    assert main(["pack-data", "--data", str(plain), "--out", str(out)]) == 2
    assert "inside the data set folder" in capsys.readouterr().err
    assert sorted(plain.rglob("*")) == before


@pytest.mark.parametrize("image", ["rgb_png_16", "rgb_tiff_16"])
def test_pack_refuses_16_bit_colour_images(image, tmp_path):
    deep = _make_data(tmp_path / "deep", validation=False)
    png = deep / "train" / "rgb" / "img1.png"
    rgb16 = iio.imread(png).astype(np.uint16) * 257
    png.unlink()
    if image == "rgb_png_16":
        path = _png16(png, rgb16)
    else:
        path = png.with_suffix(".tif")
        tifffile.imwrite(path, rgb16, photometric="rgb")
    with pytest.raises(ImageReadError, match=re.escape(str(path))):
        pack_dataset(deep, tmp_path / "pack16")
    assert not (tmp_path / "pack16").exists()
