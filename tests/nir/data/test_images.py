"""Tests of pyg_lecc.nir.data.images (reading and writing single image files) on small
synthetic images."""

import errno
import gc
import re

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from image_helpers import _colour, _grey, _png16, _rng, _write
from PIL import Image, ImageOps

from pyg_lecc.nir.data import (
    ImageReadError,
    read_image,
    read_nir,
    read_rgb,
    refuse_existing_outputs,
    write_rgb_png,
)
from pyg_lecc.nir.data.images import _to_uint8

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
# write_rgb_png / refuse_existing_outputs
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


def test_png_conversion_in_row_blocks_equals_one_pass():
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
