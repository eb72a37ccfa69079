"""Reading and writing single image files.

Images are handled as ``float32`` arrays in ``[0, 1]``: NIR images have shape ``(H, W)`` and
colour images ``(H, W, 3)``. :func:`read_image` reads PNG, JPEG, TIFF and WebP files as image
viewers show them (EXIF orientation applied) and refuses what it cannot read exactly;
:func:`read_nir` and :func:`read_rgb` also check the kind of image. :func:`write_rgb_png`
writes a result atomically, after :func:`refuse_existing_outputs`, which commands also call
before any work.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile
from PIL import Image, ImageOps

from pyg_lecc.io.atomic import file_exists_error, write_file_atomic

__all__ = [
    "ImageReadError",
    "read_image",
    "read_nir",
    "read_rgb",
    "refuse_existing_outputs",
    "write_rgb_png",
]


class ImageReadError(ValueError):
    """An image file is missing, unreadable, or not of the expected kind (grey / colour)."""


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a PNG, JPEG, TIFF or WebP image as ``float32`` in ``[0, 1]``.

    8-bit images are divided by 255, 16-bit images by 65535; floating-point images are passed
    through after checking that they are finite and within ``[0, 1]``. An alpha channel is
    dropped (grey+alpha becomes grey, RGBA becomes RGB). CMYK and YCbCr JPEGs and palette
    images are converted to RGB by Pillow; TIFFs must be grey (black is zero) or RGB. An EXIF
    orientation (phone and camera JPEGs) is applied, as image viewers and Pillow's
    :func:`~PIL.ImageOps.exif_transpose` do, so the array has the shape the image is shown
    with. Animations (GIF, APNG, WebP with several frames) are refused rather than read as
    their first frame; of a multi-picture (MPO) JPEG the primary picture is read.

    Args:
        path: Image file.

    Returns:
        ``float32`` array of shape ``(H, W)`` for grey images or ``(H, W, 3)`` for colour ones.

    Raises:
        ImageReadError: The file is missing or a directory, unreadable, damaged, not an
            image, a 16-bit colour PNG (which Pillow would read at 8 bits: use TIFF), a TIFF
            in another colour space, an animation, has an unsupported dtype or shape, or
            holds float values outside ``[0, 1]``.

    Example:
        >>> img = read_image("photo.png")  # doctest: +SKIP
        >>> img.dtype, img.min() >= 0, img.max() <= 1  # doctest: +SKIP
        (dtype('float32'), True, True)
    """
    path = Path(path)
    raw = _decode(path)
    if raw.dtype == np.uint8:
        img = raw.astype(np.float32) / np.float32(255)
    elif raw.dtype == np.uint16:
        img = raw.astype(np.float32) / np.float32(65535)
    elif np.issubdtype(raw.dtype, np.floating):
        img = raw.astype(np.float32)
        if not np.isfinite(img).all():
            raise ImageReadError(f"float image {path} contains NaN or infinite values")
        if img.size and (img.min() < 0.0 or img.max() > 1.0):
            raise ImageReadError(
                f"float image {path} has values in [{img.min():g}, {img.max():g}], expected [0, 1]"
            )
    else:
        raise ImageReadError(
            f"unsupported pixel type {raw.dtype} in {path} (expected uint8, uint16 or float)"
        )

    if img.ndim == 3 and img.shape[-1] in (1, 2):  # grey, or grey + alpha
        img = img[..., 0]
    elif img.ndim == 3 and img.shape[-1] == 4:  # RGBA
        img = img[..., :3]
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[-1] == 3)):
        raise ImageReadError(
            f"unsupported image shape {raw.shape} in {path} (expected a single grey or colour "
            "image)"
        )
    return np.ascontiguousarray(img)


def _decode(path: Path) -> np.ndarray:
    """The pixels of an image file as stored (``uint8``, ``uint16``, float, ...)."""
    if path.is_dir():
        raise ImageReadError(f"{path} is a directory, not an image file")
    if not path.is_file():
        raise ImageReadError(f"image file not found: {path}")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            return _decode_tiff(path)
        return _decode_pillow(path)
    except ImageReadError:
        raise
    except Exception as err:  # PIL and tifffile raise OSError, ValueError, SyntaxError, ...
        raise ImageReadError(
            f"cannot read image {path}: the file is damaged, truncated or not an image "
            f"({type(err).__name__}: {err})"
        ) from err


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# IHDR bit depth 16 with colour type 2 (RGB), 4 (grey + alpha) or 6 (RGBA).
_PNG_16BIT_COLOUR = (b"\x10\x02", b"\x10\x04", b"\x10\x06")

# Modes whose stored channels are not grey or RGB: Pillow converts them (C, M, Y taken as
# R, G, B would give an inverted image).
_PILLOW_CONVERSIONS = {
    "1": "L",
    "PA": "RGBA",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "LAB": "RGB",
    "HSV": "RGB",
}


def _decode_pillow(path: Path) -> np.ndarray:
    with path.open("rb") as f:
        header = f.read(26)
    # Pillow keeps only the high byte of 16-bit colour PNGs: refuse rather than lose bits.
    if header[:8] == _PNG_SIGNATURE and header[24:26] in _PNG_16BIT_COLOUR:
        raise ImageReadError(
            f"{path} is a 16-bit colour or grey+alpha PNG, which cannot be read exactly: save "
            "it as a 16-bit TIFF (or a 16-bit greyscale PNG without alpha for NIR)"
        )
    with Image.open(path) as opened:
        # An MPO JPEG's first picture is its primary one; an animation's first frame is
        # not "the image", so it is refused.
        frames = getattr(opened, "n_frames", 1)
        if frames > 1 and opened.format != "MPO":
            raise ImageReadError(
                f"{path} is an animation of {frames} frames, not a single image: save the "
                "frame to colorize as a PNG"
            )
        im = ImageOps.exif_transpose(opened)  # the orientation viewers show
        if im.mode == "P":
            return np.asarray(im.convert(im.palette.mode))
        if im.mode in _PILLOW_CONVERSIONS:
            return np.asarray(im.convert(_PILLOW_CONVERSIONS[im.mode]))
        return np.asarray(im)


def _decode_tiff(path: Path) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        photometric = tif.pages[0].photometric
        # Other interpretations (white is zero, palette indices, CMYK, Lab) would be read as
        # grey or RGB values and give a wrong image.
        if photometric not in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB):
            raise ImageReadError(
                f"{path} stores its pixels as {photometric.name}, not as grey (black is zero) "
                "or RGB: convert it to a greyscale or RGB TIFF"
            )
        return tif.asarray()


def read_nir(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a near-infrared (single channel) image.

    A 3-channel file whose channels are all equal (grey saved as RGB) is accepted.

    Args:
        path: Image file.

    Returns:
        ``float32`` array of shape ``(H, W)`` in ``[0, 1]``.

    Raises:
        ImageReadError: The file cannot be read (see :func:`read_image`) or its channels differ,
            i.e. it looks like a colour image rather than NIR.

    Example:
        >>> nir = read_nir("country_0000_nir.png")  # doctest: +SKIP
        >>> nir.shape  # doctest: +SKIP
        (256, 256)
    """
    img = read_image(path)
    if img.ndim == 2:
        return img
    if np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2]):
        return np.ascontiguousarray(img[..., 0])
    raise ImageReadError(f"{path} looks like a colour image, not NIR: its three channels differ")


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a colour image.

    Args:
        path: Image file.

    Returns:
        ``float32`` array of shape ``(H, W, 3)`` in ``[0, 1]``.

    Raises:
        ImageReadError: The file cannot be read (see :func:`read_image`) or is single-channel.

    Example:
        >>> rgb = read_rgb("country_0000_rgb_reg.png")  # doctest: +SKIP
        >>> rgb.shape  # doctest: +SKIP
        (256, 256, 3)
    """
    img = read_image(path)
    if img.ndim != 3:
        raise ImageReadError(f"{path} is a single-channel image, expected a 3-channel RGB image")
    return img


def write_rgb_png(path: str | os.PathLike[str], rgb: np.ndarray, overwrite: bool = False) -> None:
    """Write a float RGB image as an 8-bit PNG, atomically.

    Values are clipped to ``[0, 1]`` and rounded to ``uint8``. The PNG is encoded in memory
    and written with :func:`~pyg_lecc.io.atomic.write_file_atomic`: readers never see a
    partial file, and without ``overwrite`` a file that another process created meanwhile is
    not replaced. Missing parent folders are created.

    Args:
        path: Destination ``.png`` file.
        rgb: Floating-point array of shape ``(H, W, 3)``, nominally in ``[0, 1]``.
        overwrite: Replace an existing file instead of raising.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
        OSError: The file cannot be written (e.g. the disk is full; nothing is left behind), or
            see :func:`refuse_existing_outputs`.
        ValueError: ``rgb`` is not a finite floating-point ``(H, W, 3)`` array.

    Example:
        >>> write_rgb_png("out/colorized.png", np.zeros((8, 8, 3)))  # doctest: +SKIP
    """
    path = Path(path)
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) array to write {path}, got shape {rgb.shape}")
    # Integer input would be silently clipped to {0, 1}: refuse it instead.
    if not np.issubdtype(rgb.dtype, np.floating):
        raise ValueError(f"expected a float array in [0, 1] to write {path}, got {rgb.dtype}")
    if not np.isfinite(rgb).all():
        raise ValueError(f"image to write to {path} contains NaN or infinite values")
    refuse_existing_outputs([path], overwrite)
    data = _to_uint8(rgb)
    # Encoded in memory: a failing disk then meets only our own file handling.
    write_file_atomic(path, iio.imwrite("<bytes>", data, extension=".png"), overwrite)


def _to_uint8(rgb: np.ndarray, rows: int = 256) -> np.ndarray:
    # In blocks of rows: the float temporaries of clip, scale and round stay small on
    # full-resolution photographs (three full-size float copies otherwise).
    data = np.empty(rgb.shape, np.uint8)
    for top in range(0, rgb.shape[0], rows):
        block = np.clip(rgb[top : top + rows], 0.0, 1.0) * 255.0
        data[top : top + rows] = np.round(block, out=block)
    return data


def refuse_existing_outputs(outputs: Iterable[Path], overwrite: bool = False) -> None:
    """Refuse, before any work, output files that could not be written.

    Args:
        outputs: Files about to be written.
        overwrite: Whether existing files may be replaced.

    Raises:
        FileExistsError: An output exists and ``overwrite`` is false.
        IsADirectoryError: An output is a folder.
        NotADirectoryError: A folder on an output's path is a file (e.g. an output folder
            argument that names an existing file).

    Example:
        >>> refuse_existing_outputs([Path("out/a.png")], overwrite=False)  # doctest: +SKIP
    """
    for path in outputs:
        existing = next((p for p in path.parents if p.exists()), None)
        if existing is not None and not existing.is_dir():
            raise NotADirectoryError(f"cannot write {path}: {existing} is a file, not a folder")
        if path.is_dir():
            raise IsADirectoryError(f"cannot write {path}: it is a folder")
        if path.exists() and not overwrite:
            raise file_exists_error(path)
