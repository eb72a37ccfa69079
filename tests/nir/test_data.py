"""Tests of pyg_lecc.nir.data on small synthetic images (plus one optional real-data check)."""

import errno
import gc
import os
import re
import struct
import zlib
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image, ImageOps

from pyg_lecc.nir.data import (
    ImagePair,
    ImageReadError,
    PairedImageDataset,
    PairingError,
    RandomPatchSampler,
    find_pairs,
    load_pair,
    read_image,
    read_nir,
    read_rgb,
    refuse_existing_outputs,
    write_file_atomic,
    write_rgb_png,
)

VCIP_ROOT = Path(__file__).resolve().parents[3] / "shared" / "data" / "vcip2020"


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _write(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, arr)
    return path


def _grey(h: int = 12, w: int = 12, seed: int = 0) -> np.ndarray:
    return _rng(seed).integers(0, 256, size=(h, w), dtype=np.uint8)


def _colour(h: int = 12, w: int = 12, seed: int = 0) -> np.ndarray:
    return _rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _make_vcip(root: Path, names=("country_0000", "forest_0001", "field_0002"), n_val=2) -> Path:
    for i, name in enumerate(names):
        _write(root / "NIR" / f"{name}_nir.png", _grey(seed=i))
        _write(root / "RGB-Registered" / f"{name}_rgb_reg.png", _colour(seed=i))
    for i in range(n_val):
        _write(root / "Validation" / f"validation_{i:04d}_nir.png", _grey(seed=10 + i))
        _write(root / "Validation" / f"validation_{i:04d}_rgb_reg.png", _colour(seed=10 + i))
    return root


def _make_plain(base: Path, names=("b", "a")) -> Path:
    for i, name in enumerate(names):
        _write(base / "nir" / f"{name}.png", _grey(seed=i))
        _write(base / "rgb" / f"{name}.png", _colour(seed=i))
    return base


# ---------------------------------------------------------------------------------------------
# read_image / read_nir / read_rgb
# ---------------------------------------------------------------------------------------------


def test_read_image_8bit_roundtrip(tmp_path):
    rgb = _colour(5, 7)
    img = read_image(_write(tmp_path / "c.png", rgb))
    assert img.dtype == np.float32 and img.shape == (5, 7, 3)
    np.testing.assert_array_equal(img, rgb.astype(np.float32) / 255)
    grey = read_image(_write(tmp_path / "g.png", rgb[..., 0]))
    assert grey.shape == (5, 7)
    np.testing.assert_array_equal(grey, rgb[..., 0].astype(np.float32) / 255)


def test_read_image_16bit_png(tmp_path):
    raw = np.array([[0, 32768], [65535, 1]], dtype=np.uint16)
    img = read_image(_write(tmp_path / "g16.png", raw))
    assert img.dtype == np.float32
    assert img[1, 0] == 1.0
    assert img[0, 0] == 0.0
    assert img[0, 1] == pytest.approx(0.5000076, abs=1e-7)
    assert img[1, 1] == pytest.approx(1 / 65535)


def test_read_image_jpeg_and_tiff(tmp_path):
    jpg = read_image(_write(tmp_path / "c.jpg", _colour(16, 16)))
    assert jpg.shape == (16, 16, 3) and jpg.dtype == np.float32
    rgb16 = _rng().integers(0, 65536, size=(4, 5, 3), dtype=np.uint16)
    tif = read_image(_write(tmp_path / "c16.tif", rgb16))
    np.testing.assert_allclose(tif, rgb16 / 65535, rtol=1e-6)
    floats = _rng().uniform(0, 1, size=(4, 5)).astype(np.float32)
    np.testing.assert_array_equal(read_image(_write(tmp_path / "f.tiff", floats)), floats)


def test_read_image_rejects_float_out_of_range(tmp_path):
    path = _write(tmp_path / "bad.tif", np.full((3, 3), 1.5, dtype=np.float32))
    with pytest.raises(ImageReadError, match=r"bad\.tif.*expected \[0, 1\]"):
        read_image(path)


def test_read_image_drops_alpha(tmp_path):
    rgba = np.dstack([_colour(4, 4), np.full((4, 4), 7, np.uint8)])
    np.testing.assert_array_equal(
        read_image(_write(tmp_path / "rgba.png", rgba)), rgba[..., :3] / np.float32(255)
    )
    la = np.dstack([_grey(4, 4), np.full((4, 4), 7, np.uint8)])
    np.testing.assert_array_equal(
        read_image(_write(tmp_path / "la.png", la)), la[..., 0] / np.float32(255)
    )


def test_read_image_truncated_png(tmp_path):
    path = _write(tmp_path / "full.png", _colour(64, 64))
    data = path.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=re.escape(str(cut))):
        read_image(cut)


def test_read_image_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageReadError, match=re.escape(str(path))):
        read_image(path)


def test_read_image_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match=r"not found: .*nothing\.png"):
        read_image(tmp_path / "nothing.png")


def test_read_image_directory(tmp_path):
    folder = tmp_path / "scene.png"
    folder.mkdir()
    with pytest.raises(ImageReadError, match=r"scene\.png is a directory, not an image file"):
        read_image(folder)


def test_read_nir_accepts_grey_stored_as_rgb(tmp_path):
    grey = _grey()
    nir = read_nir(_write(tmp_path / "g3.png", np.dstack([grey] * 3)))
    assert nir.shape == grey.shape
    np.testing.assert_array_equal(nir, grey / np.float32(255))


def test_read_nir_rejects_colour(tmp_path):
    path = _write(tmp_path / "colour_nir.png", _colour())
    with pytest.raises(ImageReadError, match=r"colour_nir\.png looks like a colour image, not NIR"):
        read_nir(path)


def test_read_rgb_rejects_grey(tmp_path):
    path = _write(tmp_path / "grey_rgb.png", _grey())
    with pytest.raises(ImageReadError, match=r"grey_rgb\.png is a single-channel image"):
        read_rgb(path)


def _png16(path: Path, rgb16: np.ndarray) -> Path:
    """A 16-bit RGB PNG written from the specification (Pillow cannot write one)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    h, w, _ = rgb16.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in rgb16)  # filter 0: none
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # 16 bits, colour type 2: RGB
    png = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png)
    return path


def test_read_image_16bit_rgb_png_is_refused_not_truncated(tmp_path):
    rgb16 = _rng().integers(0, 65536, size=(4, 5, 3), dtype=np.uint16)
    tif = tmp_path / "c16.tif"
    tifffile.imwrite(tif, rgb16, photometric="rgb")
    np.testing.assert_array_equal(read_image(tif), rgb16.astype(np.float32) / np.float32(65535))
    png = _png16(tmp_path / "c16.png", rgb16)
    # The same data as PNG: Pillow decodes it, but keeps only the high byte of each value.
    with Image.open(png) as im:
        np.testing.assert_array_equal(np.asarray(im), (rgb16 >> 8).astype(np.uint8))
    with pytest.raises(ImageReadError, match=re.escape(str(png)) + ".*16-bit colour"):
        read_image(png)


@pytest.mark.parametrize("ink", ["cmy", "k"])
def test_read_nir_converts_cmyk_jpeg(ink, tmp_path):
    grey = np.tile(np.linspace(20, 235, 32).round().astype(np.uint8), (32, 1))
    cmyk = np.zeros((32, 32, 4), np.uint8)
    if ink == "cmy":  # grey as equal C, M and Y
        cmyk[..., :3] = 255 - grey[..., None]
    else:  # grey as black ink only
        cmyk[..., 3] = 255 - grey
    path = tmp_path / "scene_nir.jpg"
    Image.fromarray(cmyk, mode="CMYK").save(path, quality=100)
    with Image.open(path) as im:
        assert im.mode == "CMYK"
        c, m, y, k = np.moveaxis(np.asarray(im).astype(np.float64), -1, 0)
    # Grey from the decoded inks: (1 - ink) * (1 - black) per channel, all channels equal.
    expected = (255 - c) * (255 - k) / 255**2
    assert np.array_equal(c, m) and np.array_equal(c, y)
    nir = read_nir(path)
    np.testing.assert_allclose(nir, expected, atol=1 / 255)
    assert np.corrcoef(nir.ravel(), grey.ravel())[0, 1] > 0.99  # not inverted


@pytest.mark.parametrize("photometric", ["separated", "miniswhite", "palette"])
def test_read_image_refuses_tiffs_in_other_colour_spaces(photometric, tmp_path):
    path = tmp_path / f"{photometric}.tif"
    if photometric == "separated":  # CMYK
        tifffile.imwrite(path, _colour(8, 8).repeat(2, axis=-1)[..., :4], photometric=photometric)
    elif photometric == "palette":
        colormap = _rng().integers(0, 65536, size=(3, 256), dtype=np.uint16)
        tifffile.imwrite(path, _grey(8, 8), photometric=photometric, colormap=colormap)
    else:  # grey stored with white as zero
        tifffile.imwrite(path, _grey(8, 8), photometric=photometric)
    with pytest.raises(ImageReadError, match=re.escape(str(path)) + f".*{photometric.upper()}"):
        read_image(path)


def test_read_image_truncated_webp_says_damaged(tmp_path):
    path = tmp_path / "scene.webp"
    iio.imwrite(path, _colour(32, 32), extension=".webp", lossless=True)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ImageReadError, match=re.escape(str(path)) + ".* damaged") as info:
        read_image(path)
    assert "initializing plugin" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# write_rgb_png
# ---------------------------------------------------------------------------------------------


def test_write_rgb_png_roundtrip_clips_and_rounds(tmp_path):
    rgb = _rng().uniform(-0.2, 1.2, size=(6, 5, 3))
    path = tmp_path / "sub" / "dir" / "out.png"
    write_rgb_png(path, rgb)
    stored = iio.imread(path)
    assert stored.dtype == np.uint8
    np.testing.assert_array_equal(stored, np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8))
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.png"]  # no temp file left


def test_write_rgb_png_refuses_overwrite(tmp_path):
    path = tmp_path / "out.png"
    write_rgb_png(path, np.zeros((4, 4, 3)))
    old = path.read_bytes()
    with pytest.raises(FileExistsError, match=re.escape(str(path))):
        write_rgb_png(path, np.ones((4, 4, 3)))
    assert path.read_bytes() == old
    write_rgb_png(path, np.ones((4, 4, 3)), overwrite=True)
    assert (iio.imread(path) == 255).all()


def test_write_rgb_png_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"\(H, W, 3\).*\(4, 4\)"):
        write_rgb_png(tmp_path / "a.png", np.zeros((4, 4)))
    with pytest.raises(ValueError, match="float"):
        write_rgb_png(tmp_path / "b.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        write_rgb_png(tmp_path / "c.png", np.full((4, 4, 3), np.nan))
    assert list(tmp_path.iterdir()) == []


def test_write_rgb_png_does_not_replace_a_file_created_meanwhile(tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    encode = iio.imwrite

    def other_run_first(*args, **kwargs):  # another process writes path while we encode
        path.write_bytes(b"other run")
        return encode(*args, **kwargs)

    monkeypatch.setattr(iio, "imwrite", other_run_first)
    with pytest.raises(FileExistsError, match=re.escape(str(path))):
        write_rgb_png(path, np.zeros((4, 4, 3)))
    assert path.read_bytes() == b"other run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    write_rgb_png(path, np.ones((4, 4, 3)), overwrite=True)
    assert (iio.imread(path) == 255).all()


def test_write_file_atomic_without_hard_links(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted", str(src))

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "result.json"
    write_file_atomic(path, b"first")
    with pytest.raises(FileExistsError, match=re.escape(str(path))):
        write_file_atomic(path, b"second")
    assert path.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_write_rgb_png_on_a_full_disk(tmp_path, full_disk):
    out = tmp_path / "out"
    out.mkdir()
    unraisable = full_disk(out)
    with pytest.raises(OSError, match="No space left") as info:
        write_rgb_png(out / "a.png", np.zeros((4, 4, 3)))
    error = info.value.errno, info.value.filename
    del info  # its traceback keeps the failed writer alive: release it, run its __del__
    gc.collect()
    assert unraisable == []
    assert error == (errno.ENOSPC, str(out / "a.png"))
    assert list(out.iterdir()) == []


def test_refuse_existing_outputs(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder.png").mkdir()
    refuse_existing_outputs([tmp_path / "new" / "a.png"])
    with pytest.raises(NotADirectoryError, match=r"file[/\\]sub[/\\]a\.png: .*file is a file"):
        refuse_existing_outputs([tmp_path / "file" / "sub" / "a.png"])
    with pytest.raises(IsADirectoryError, match=r"folder\.png: it is a folder"):
        refuse_existing_outputs([tmp_path / "folder.png"], overwrite=True)
    with pytest.raises(FileExistsError, match="overwrite"):
        refuse_existing_outputs([tmp_path / "file"])
    refuse_existing_outputs([tmp_path / "file"], overwrite=True)


# ---------------------------------------------------------------------------------------------
# find_pairs / load_pair
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# PairedImageDataset / RandomPatchSampler
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preload", [True, False])
def test_paired_image_dataset(tmp_path, preload):
    root = _make_vcip(tmp_path)
    ds = PairedImageDataset(root, "train", preload=preload)
    assert len(ds) == 3 and [p.name for p in ds.pairs] == [
        "country_0000",
        "field_0002",
        "forest_0001",
    ]
    nir, rgb, name = ds[1]
    assert name == "field_0002"
    assert nir.shape == (1, 12, 12) and rgb.shape == (3, 12, 12)
    assert nir.dtype == rgb.dtype == torch.float32
    np.testing.assert_array_equal(nir[0].numpy(), _grey(seed=2) / np.float32(255))
    np.testing.assert_array_equal(rgb.permute(1, 2, 0).numpy(), _colour(seed=2) / np.float32(255))


def _ramp_dataset(tmp_path: Path, sizes=((12, 12), (10, 14))) -> PairedImageDataset:
    """Images with distinct pixel values; the RGB image is the NIR one in all three channels."""
    for i, (h, w) in enumerate(sizes):
        grey = (np.arange(h * w).reshape(h, w) * 7 + 31 * i) % 256
        _write(tmp_path / f"{i}_nir.png", grey.astype(np.uint8))
        _write(tmp_path / f"{i}_rgb.png", np.dstack([grey] * 3).astype(np.uint8))
    return PairedImageDataset(tmp_path)


def test_sampler_shapes(tmp_path):
    ds = _ramp_dataset(tmp_path)
    nir, rgb = RandomPatchSampler(
        ds, patch_size=5, batch_size=7, generator=torch.Generator().manual_seed(0)
    ).sample()
    assert nir.shape == (7, 1, 5, 5) and rgb.shape == (7, 3, 5, 5)
    assert nir.dtype == rgb.dtype == torch.float32


def test_sampler_is_deterministic_per_seed(tmp_path):
    ds = _ramp_dataset(tmp_path)

    def batches(seed):
        s = RandomPatchSampler(ds, patch_size=4, generator=torch.Generator().manual_seed(seed))
        return [s.sample() for _ in range(3)]

    a, b, c = batches(1), batches(1), batches(2)
    for (na, ra), (nb, rb) in zip(a, b, strict=True):
        assert torch.equal(na, nb) and torch.equal(ra, rb)
    assert not all(torch.equal(na, nc) for (na, _), (nc, _) in zip(a, c, strict=True))


def test_sampler_state_restore_repeats_next_batch(tmp_path):
    ds = _ramp_dataset(tmp_path)
    sampler = RandomPatchSampler(ds, patch_size=4, generator=torch.Generator().manual_seed(3))
    sampler.sample()
    state = sampler.get_state()
    nir1, rgb1 = sampler.sample()
    sampler.sample()
    fresh = RandomPatchSampler(ds, patch_size=4, generator=torch.Generator().manual_seed(99))
    fresh.set_state(state)
    nir2, rgb2 = fresh.sample()
    assert torch.equal(nir1, nir2) and torch.equal(rgb1, rgb2)


def _dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    return [t.rot90(k, (-2, -1)) for t in (x, x.flip(-1)) for k in range(4)]


def test_sampler_augmentation_keeps_alignment(tmp_path):
    ds = _ramp_dataset(tmp_path)
    p = 5
    sampler = RandomPatchSampler(
        ds, patch_size=p, batch_size=40, generator=torch.Generator().manual_seed(0)
    )
    nir, rgb = sampler.sample()
    # RGB is NIR in three channels, so aligned patches stay equal after augmentation.
    assert torch.equal(rgb, nir.expand(-1, 3, -1, -1))
    # Every patch is one of the 8 flips/rotations of a crop; together they use several of them.
    used = set()
    crops = []
    for img, _, _ in (ds[i] for i in range(len(ds))):
        h, w = img.shape[-2:]
        crops += [img[0, y : y + p, x : x + p] for y in range(h - p + 1) for x in range(w - p + 1)]
    for patch in nir[:, 0]:
        hits = [t for c in crops for t, cand in enumerate(_dihedral(c)) if torch.equal(cand, patch)]
        assert hits, "patch is not a flipped/rotated crop of any image"
        used.add(hits[0])
    assert len(used) >= 4


def test_sampler_without_augmentation_returns_plain_crops(tmp_path):
    ds = _ramp_dataset(tmp_path)
    nir, rgb = RandomPatchSampler(
        ds, patch_size=4, batch_size=20, augment=False, generator=torch.Generator().manual_seed(0)
    ).sample()
    images = [ds[i][0][0] for i in range(len(ds))]
    sources = set()
    for patch in nir[:, 0]:
        hits = [
            i
            for i, img in enumerate(images)
            for y in range(img.shape[0] - 3)
            for x in range(img.shape[1] - 3)
            if torch.equal(img[y : y + 4, x : x + 4], patch)
        ]
        assert hits, "patch is not a crop of any image"
        sources.update(hits)
    assert sources == {0, 1}  # patches come from every image
    assert torch.equal(rgb, nir.expand(-1, 3, -1, -1))


def test_sampler_patch_size_equal_to_image_and_too_large(tmp_path):
    ds = _ramp_dataset(tmp_path, sizes=((12, 12), (10, 14)))
    nir, _ = RandomPatchSampler(
        ds, patch_size=10, batch_size=4, augment=False, generator=torch.Generator().manual_seed(0)
    ).sample()
    assert nir.shape == (4, 1, 10, 10)
    with pytest.raises(ValueError, match=r"patch_size 11 .* image .*1_nir\.png .* 10x14\)"):
        RandomPatchSampler(ds, patch_size=11)


# ---------------------------------------------------------------------------------------------
# Optional real data
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not (VCIP_ROOT / "Validation").is_dir(),
    reason=f"optional real-data check: {VCIP_ROOT} not present",
)
def test_real_vcip2020_validation():
    from pyg_lecc.nir.metrics import psnr, ssim

    ds = PairedImageDataset(VCIP_ROOT, split="validation")
    assert [p.name for p in ds.pairs] == [f"validation_{i:04d}" for i in range(18)]
    scores = []
    for i in range(len(ds)):
        nir, rgb, _ = ds[i]
        assert nir.shape == (1, 256, 256) and rgb.shape == (3, 256, 256)
        target = rgb.permute(1, 2, 0).numpy()
        copy = nir.permute(1, 2, 0).expand(-1, -1, 3).numpy()
        scores.append((psnr(copy, target), ssim(copy, target)))
    # Reference values of the NIR-copied-into-three-channels baseline (data README).
    assert np.mean([s[0] for s in scores]) == pytest.approx(11.62, abs=0.01)
    assert np.mean([s[1] for s in scores]) == pytest.approx(0.495, abs=0.001)


def test_png_conversion_in_row_blocks_equals_one_pass():
    from pyg_lecc.nir.data import _to_uint8

    rgb = np.random.default_rng(0).uniform(-0.2, 1.2, (37, 5, 3)).astype(np.float32)
    rgb[0, 0] = [0.5 / 255, 1.5 / 255, 254.5 / 255]  # rounding halves
    expected = np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)
    np.testing.assert_array_equal(_to_uint8(rgb, rows=4), expected)


# ---------------------------------------------------------------------------------------------
# issue 24: EXIF orientation, animations
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", [2, 3, 5, 6, 7, 8])
@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp"])
def test_read_image_applies_the_exif_orientation(orientation, suffix, tmp_path):
    # A phone stores its sensor's pixels (here 48 wide, 80 high) and says in EXIF how to
    # turn them; viewers, and Pillow's exif_transpose, show the turned image.
    stored = _grey(80, 48)
    path = tmp_path / f"phone{suffix}"
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    options = {".jpg": {"quality": 100}, ".webp": {"lossless": True}}.get(suffix, {})
    Image.fromarray(stored).save(path, exif=exif, **options)
    with Image.open(path) as im:
        shown = np.asarray(ImageOps.exif_transpose(im)).astype(np.float32) / np.float32(255)
    assert shown.shape[:2] == ((80, 48) if orientation in (2, 3) else (48, 80))
    np.testing.assert_array_equal(read_image(path), shown)
    np.testing.assert_array_equal(read_nir(path), shown if shown.ndim == 2 else shown[..., 0])


def test_read_image_refuses_animations(tmp_path):
    frames = [Image.fromarray(_grey(16, 16, seed)) for seed in (0, 1)]
    for name in ("scene.gif", "scene.png", "scene.webp"):
        path = tmp_path / name
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
        with pytest.raises(ImageReadError, match=re.escape(str(path)) + ".* 2 frames"):
            read_image(path)
    still = tmp_path / "still.gif"
    frames[0].save(still)
    np.testing.assert_array_equal(read_nir(still), _grey(16, 16, 0) / np.float32(255))
