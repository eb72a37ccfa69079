"""Image IO and paired NIR/RGB datasets for NIR colorization.

Images are handled as ``float32`` arrays in ``[0, 1]``: NIR images have shape ``(H, W)`` and
colour images ``(H, W, 3)``. :func:`find_pairs` understands the official VCIP 2020 challenge
layout as distributed, a plain ``nir/`` + ``rgb/`` layout, and folders holding
``<name>_nir.*`` / ``<name>_rgb*.*`` files side by side. :class:`PairedImageDataset` loads the
pairs and :class:`RandomPatchSampler` draws reproducible batches of augmented training patches.

Example:
    >>> ds = PairedImageDataset("../shared/data/vcip2020", split="train")  # doctest: +SKIP
    >>> sampler = RandomPatchSampler(ds, patch_size=42, batch_size=10,
    ...                              generator=torch.Generator().manual_seed(0))  # doctest: +SKIP
    >>> nir, rgb = sampler.sample()  # (10, 1, 42, 42), (10, 3, 42, 42)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import tifffile
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from pyg_lecc.io.atomic import temporary_path
from pyg_lecc.nir.registration import (
    MIN_PEAK_RATIO,
    UPSAMPLE_FACTOR,
    Registration,
    estimate_shift,
    register_pair,
    summarize_registrations,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "PACK_MANIFEST",
    "ImagePair",
    "ImageReadError",
    "PairedImageDataset",
    "PairingError",
    "RandomPatchSampler",
    "find_pairs",
    "load_pair",
    "pack_dataset",
    "read_image",
    "read_nir",
    "read_rgb",
    "refuse_existing_outputs",
    "write_file_atomic",
    "write_rgb_png",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")
"""File extensions (lower case) that :func:`find_pairs` considers images."""

PACK_MANIFEST = "pyg_lecc_pack.json"
"""Manifest of a data pack written by :func:`pack_dataset` (checksums of the decoded images)."""
_PACK_FORMAT = "pyg_lecc.pack/1"

# Stem suffixes of the colour partner in side-by-side folders: VCIP "_rgb_reg", EPFL "_rgb".
_RGB_SUFFIXES = ("_rgb_reg", "_rgb")
_NIR_SUFFIX = "_nir"


class ImageReadError(ValueError):
    """An image file is missing, unreadable, or not of the expected kind (grey / colour)."""


class PairingError(ValueError):
    """NIR and RGB images cannot be paired one to one (missing folder, partner or size match)."""


# --------------------------------------------------------------------------------------------
# Reading and writing single images
# --------------------------------------------------------------------------------------------


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
    and written with :func:`write_file_atomic`: readers never see a partial file, and without
    ``overwrite`` a file that another process created meanwhile is not replaced. Missing
    parent folders are created.

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


def write_file_atomic(path: str | os.PathLike[str], data: bytes, overwrite: bool = False) -> None:
    """Write ``data`` to a new file ``path`` atomically and, without ``overwrite``, exclusively.

    The bytes go to a temporary file in the same folder, which is then renamed over ``path``
    (``overwrite``) or hard-linked to it, which fails if ``path`` exists, even if another
    process created it a moment ago. Where the file system has no hard links, ``path`` is
    created with ``O_EXCL`` instead. On any error nothing is left behind. Missing parent
    folders are created.

    Args:
        path: Destination file.
        data: File contents.
        overwrite: Replace an existing file instead of raising.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
        OSError: The file cannot be written; the error names ``path``.

    Example:
        >>> write_file_atomic("out/result.json", b"{}\\n")  # doctest: +SKIP
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp, whose 0600 mode would stick to the final file.
    tmp = temporary_path(path)
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path, data)
    except FileExistsError as err:
        raise FileExistsError(_exists_message(path)) from err
    except OSError as err:
        # Name the destination, not the temporary file.
        raise type(err)(err.errno, err.strerror, str(path)) from err
    finally:
        tmp.unlink(missing_ok=True)


def _link_new(tmp: Path, path: Path, data: bytes) -> None:
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (FAT, some network shares)
        with open(path, "xb") as f:
            try:
                f.write(data)
                f.flush()
            except BaseException:
                path.unlink(missing_ok=True)
                raise


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
            raise FileExistsError(_exists_message(path))


def _exists_message(path: Path) -> str:
    return f"{path} already exists (pass overwrite=True, or --overwrite, to replace it)"


# --------------------------------------------------------------------------------------------
# Pairing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImagePair:
    """A registered NIR/RGB image pair.

    Attributes:
        name: Pair name, e.g. ``"country_0000"`` for the VCIP file ``country_0000_nir.png``.
        nir_path: NIR image file.
        rgb_path: RGB image file.
        checksums: SHA-256 of the decoded NIR and RGB arrays, for pairs of a data pack.
        registration: The NIR-to-RGB shift recorded in a data pack's manifest (training
            pairs of packs written since it was added; see :mod:`pyg_lecc.nir.registration`).
    """

    name: str
    nir_path: Path
    rgb_path: Path
    checksums: tuple[str, str] | None = None
    registration: Registration | None = None


def _image_files(folder: Path) -> list[Path]:
    """Image files in ``folder``, skipping hidden files such as macOS ``._x.png`` shadows."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _key_files(files: list[Path], suffixes: tuple[str, ...] | None) -> dict[str, Path]:
    """Map pair name -> file, the name being the stem minus one of ``suffixes`` (or the stem).

    Files whose stem has none of the suffixes are ignored. Two files with the same name
    (``a.png`` and ``a.jpg``) are ambiguous and raise :class:`PairingError`.
    """
    keyed: dict[str, Path] = {}
    for f in files:
        if suffixes is None:
            key = f.stem
        else:
            suffix = next((s for s in suffixes if f.stem.endswith(s)), None)
            if suffix is None:
                continue
            key = f.stem[: -len(suffix)]
        if key in keyed:
            raise PairingError(f"ambiguous image name {key!r}: both {keyed[key]} and {f} exist")
        keyed[key] = f
    return keyed


def _match(
    nir_dir: Path,
    rgb_dir: Path,
    nir_suffixes: tuple[str, ...] | None,
    rgb_suffixes: tuple[str, ...] | None,
) -> list[ImagePair]:
    """Pair the NIR images of ``nir_dir`` with the RGB images of ``rgb_dir`` by name."""
    for folder in (nir_dir, rgb_dir):
        if not folder.is_dir():
            raise PairingError(f"folder not found: {folder}")
    nir = _key_files(_image_files(nir_dir), nir_suffixes)
    rgb = _key_files(_image_files(rgb_dir), rgb_suffixes)
    if not nir:
        pattern = f"*{_NIR_SUFFIX}.<ext>" if nir_suffixes else "<name>.<ext>"
        raise PairingError(
            f"no NIR images ({pattern}, ext one of {', '.join(IMAGE_EXTENSIONS)}) found in "
            f"{nir_dir}"
        )
    for name, nir_path in nir.items():
        if name not in rgb:
            partners = [f"{name}{s}" for s in rgb_suffixes] if rgb_suffixes else [name]
            expected = " or ".join(str(rgb_dir / f"{p}{nir_path.suffix}") for p in partners)
            raise PairingError(
                f"NIR image {nir_path} has no RGB partner: expected {expected} "
                "(any image extension)"
            )
    extra = sorted(str(rgb[name]) for name in rgb.keys() - nir.keys())
    if extra:
        raise PairingError(
            f"RGB images without a NIR partner (looked in {nir_dir}): {_first_few(extra)}"
        )
    return [ImagePair(name, nir[name], rgb[name]) for name in sorted(nir)]


def _first_few(names: list[str], count: int = 5) -> str:
    more = f" and {len(names) - count} more" if len(names) > count else ""
    return ", ".join(names[:count]) + more


def _has_side_by_side(folder: Path) -> bool:
    return folder.is_dir() and any(f.stem.endswith(_NIR_SUFFIX) for f in _image_files(folder))


def find_pairs(root: str | os.PathLike[str], split: str = "train") -> list[ImagePair]:
    """Find registered NIR/RGB image pairs under ``root``.

    A data pack written by :func:`pack_dataset` is a plain layout (2) with a manifest: its
    pairs carry the checksums that :func:`load_pair` checks.

    Accepted layouts, tried in this order:

    1. The official VCIP 2020 challenge layout, as distributed: ``split="train"`` pairs
       ``root/NIR/<name>_nir.png`` with ``root/RGB-Registered/<name>_rgb_reg.png``,
       ``split="validation"`` pairs the ``_nir`` / ``_rgb_reg`` files of ``root/Validation``.
    2. A plain layout: ``<base>/nir/<name>.<ext>`` with ``<base>/rgb/<name>.<ext>`` (matched by
       stem; ext among :data:`IMAGE_EXTENSIONS`). ``<base>`` is ``root/train`` if it exists, else
       ``root`` for ``split="train"``, and ``root/validation`` (or ``root/val``) for
       ``split="validation"``. A ``<base>`` holding side-by-side files (see 3) works too.
    3. ``root`` itself holding ``<name>_nir.<ext>`` next to ``<name>_rgb_reg.<ext>`` or
       ``<name>_rgb.<ext>`` (e.g. the VCIP ``Validation`` folder). The folder *is* the data
       set, so ``split`` is not used.

    Args:
        root: Data set folder.
        split: ``"train"`` or ``"validation"`` (``"val"`` is accepted as an alias).

    Returns:
        The pairs, sorted by name.

    Raises:
        ValueError: Unknown ``split``.
        PairingError: A folder is missing, no NIR image is found, a NIR image has no RGB
            partner, an RGB image has no NIR partner, two files share a name, or a file
            listed in a pack's manifest is missing or not listed there.

    Warns:
        UserWarning: ``root`` looks like a data pack (WebP images in the pack layout) but
            has no manifest, so nothing can be checked.

    Example:
        >>> pairs = find_pairs("../shared/data/vcip2020", split="validation")  # doctest: +SKIP
        >>> len(pairs), pairs[0].name  # doctest: +SKIP
        (18, 'validation_0000')
    """
    root = Path(root)
    if split == "val":
        split = "validation"
    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
    if not root.is_dir():
        raise PairingError(f"data folder not found: {root}")
    pairs = _find_pairs(root, split)
    manifest = root / PACK_MANIFEST
    if manifest.is_file():
        return _with_checksums(root, pairs, manifest)
    if all(_in_pack_layout(root, p.nir_path) and _in_pack_layout(root, p.rgb_path) for p in pairs):
        warnings.warn(
            f"{root} looks like a data pack (WebP images in train/ or validation/) but has no "
            f"manifest {PACK_MANIFEST}: its images are read without checking them or their "
            "number; write the pack again with pyg-lecc pack-data",
            stacklevel=2,
        )
    return pairs


def _in_pack_layout(root: Path, path: Path) -> bool:
    # Where pack_dataset puts its images: <root>/<split>/<nir|rgb>/<name>.webp
    return path.suffix == ".webp" and path.parent.parent.parent == root


def _find_pairs(root: Path, split: str) -> list[ImagePair]:
    side_by_side = (_NIR_SUFFIX,), _RGB_SUFFIXES
    # Exact, case-sensitive names: on case-insensitive file systems (root / "NIR").is_dir()
    # would also be true for a plain-layout "nir" folder.
    subdirs = {p.name for p in root.iterdir() if p.is_dir()}
    if subdirs & {"NIR", "RGB-Registered", "Validation"}:
        if split == "train":
            return _match(root / "NIR", root / "RGB-Registered", (_NIR_SUFFIX,), ("_rgb_reg",))
        return _match(root / "Validation", root / "Validation", (_NIR_SUFFIX,), ("_rgb_reg",))

    if subdirs & {"nir", "rgb", "train", "validation", "val"}:
        if split == "train":
            base = root / "train" if "train" in subdirs else root
        else:
            base = root / "validation" if "validation" in subdirs else root / "val"
            if base.name not in subdirs:
                raise PairingError(f"validation folder not found: {root / 'validation'}")
        if not (base / "nir").is_dir() and _has_side_by_side(base):
            return _match(base, base, *side_by_side)
        return _match(base / "nir", base / "rgb", None, None)

    if _has_side_by_side(root):
        return _match(root, root, *side_by_side)
    raise PairingError(
        f"no NIR images found in {root}: expected VCIP folders NIR/ + RGB-Registered/ or "
        "Validation/, plain folders nir/ + rgb/ (optionally under train/ and validation/), or "
        "<name>_nir.<ext> files next to <name>_rgb_reg.<ext> / <name>_rgb.<ext>"
    )


def load_pair(pair: ImagePair) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIR/RGB pair and check that both images have the same size.

    Args:
        pair: The pair to read.

    Returns:
        ``(nir, rgb)``: ``float32`` arrays of shapes ``(H, W)`` and ``(H, W, 3)`` in ``[0, 1]``.

    Raises:
        ImageReadError: Either file cannot be read as NIR / RGB respectively.
        PairingError: The two images differ in size.

    Example:
        >>> nir, rgb = load_pair(find_pairs("data")[0])  # doctest: +SKIP
    """
    nir = read_nir(pair.nir_path)
    rgb = read_rgb(pair.rgb_path)
    if pair.checksums is not None:
        for path, img, expected in zip(
            (pair.nir_path, pair.rgb_path), (nir, rgb), pair.checksums, strict=True
        ):
            if _array_sha256(img) != expected:
                raise ImageReadError(
                    f"{path} does not decode to the image it was packed from (checksum "
                    "mismatch): the pack is damaged, write it again with pyg-lecc pack-data"
                )
    if nir.shape != rgb.shape[:2]:
        raise PairingError(
            f"size mismatch (height x width): NIR {pair.nir_path} is {nir.shape[0]}x{nir.shape[1]}"
            f" but RGB {pair.rgb_path} is {rgb.shape[0]}x{rgb.shape[1]}"
        )
    return nir, rgb


# --------------------------------------------------------------------------------------------
# Data packs
# --------------------------------------------------------------------------------------------


def _array_sha256(img: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest()


def _with_checksums(root: Path, pairs: list[ImagePair], manifest: Path) -> list[ImagePair]:
    """The pairs with their checksums and, where the manifest records one (training pairs of
    newer packs), their registration."""
    try:
        info = json.loads(manifest.read_text())
        files = info["files"] if info.get("format") == _PACK_FORMAT else None
        # Packs written before registration was added have none: estimated when needed.
        registrations = {
            key: Registration.from_dict(reg)
            for key, reg in info.get("registration", {}).get("pairs", {}).items()
        }
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as err:
        raise PairingError(f"cannot read data pack manifest {manifest}: {err}") from err
    if not isinstance(files, dict):
        raise PairingError(f"{manifest} is not a {_PACK_FORMAT} manifest")
    checked = []
    for pair in pairs:
        keys = [path.relative_to(root).as_posix() for path in (pair.nir_path, pair.rgb_path)]
        for path, key in zip((pair.nir_path, pair.rgb_path), keys, strict=True):
            if key not in files:
                raise PairingError(f"{path} is not listed in the pack manifest {manifest}")
        checked.append(
            dataclasses.replace(
                pair,
                checksums=(files[keys[0]], files[keys[1]]),
                registration=registrations.get(keys[0]),
            )
        )
    # A pair deleted whole leaves a pairable folder: only the manifest knows it existed.
    missing = sorted(key for key in files if not (root / key).is_file())
    if missing:
        raise PairingError(
            f"the data pack {root} is incomplete: {len(missing)} files listed in {manifest} are "
            f"missing ({_first_few(missing)}); write the pack again with pyg-lecc pack-data"
        )
    return checked


def pack_dataset(source: str | os.PathLike[str], out: str | os.PathLike[str]) -> dict[str, Any]:
    """Write a compact, exact copy of a data set: lossless WebP images in the plain layout
    (``train/`` and ``validation/``, each with ``nir/`` and ``rgb/``) and a manifest
    (:data:`PACK_MANIFEST`) with the SHA-256 of every image as decoded from the source and
    the registration of every training pair (:func:`pyg_lecc.nir.registration.estimate_shift`,
    under ``"registration"``; the validation pairs are not registered). The images are
    packed as they are: the shifts are applied when training on them.

    :func:`find_pairs` reads a pack like any data set and :func:`load_pair` checks each image
    against its checksum, so training on a pack is training on the original pixels. Lossless
    WebP is about a fifth smaller than PNG on the VCIP 2020 data (compact enough to travel to
    a remote machine with the code).

    The pack is built in a hidden temporary folder next to ``out`` and renamed to ``out``
    only when it is complete and has been read back: a failed or interrupted run leaves no
    partial pack behind (and ``out`` free for the next attempt).

    Args:
        source: A data set folder (any layout of :func:`find_pairs`) with 8-bit images; its
            ``"validation"`` split is packed if it has one.
        out: New folder for the pack (must not exist, or be empty), outside ``source``.

    Returns:
        ``{"pairs": {split: count}, "bytes": total size of the pack, "source_bytes": size of
        the source images, "registration": the training pairs' shifts summarised by
        :func:`~pyg_lecc.nir.registration.summarize_registrations`}``.

    Raises:
        FileExistsError: ``out`` exists and is not an empty folder.
        ValueError: ``out`` is ``source`` or inside it (after resolving links and ``..``).
        PairingError: The source cannot be paired, or a pair's images differ in size.
        ImageReadError: A source image is unreadable or not 8-bit.

    Example:
        >>> pack_dataset("../shared/data/vcip2020", "pack")  # doctest: +SKIP
        {'pairs': {'train': 372, 'validation': 18}, 'bytes': ..., 'source_bytes': ...}
    """
    source, out = Path(source), Path(out)
    # A pack inside its source would be found as part of the data set (and change it).
    if out.resolve().is_relative_to(source.resolve()):
        raise ValueError(
            f"the pack folder {out} is inside the data set folder {source}: choose a folder "
            "outside it"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not an empty folder")
    splits = {"train": find_pairs(source, "train")}
    try:
        splits["validation"] = find_pairs(source, "validation")
    except PairingError as err:
        if "not found" not in str(err):
            raise
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(out)
    try:
        result = _write_pack(source, splits, tmp)
        if out.is_dir():
            out.rmdir()  # the empty folder the pack takes the place of
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def _write_pack(source: Path, splits: dict[str, list[ImagePair]], out: Path) -> dict[str, Any]:
    files: dict[str, str] = {}
    registrations: dict[str, Registration] = {}  # by the key of the NIR image
    size = source_size = 0
    for split, pairs in splits.items():
        for pair in pairs:
            paths = (pair.nir_path, pair.rgb_path)
            for path in paths:
                dtype = _decode(path).dtype
                if dtype != np.uint8:
                    raise ImageReadError(f"{path} is {dtype}: data packs hold 8-bit images only")
            images = load_pair(pair)
            for kind, path, img in zip(("nir", "rgb"), paths, images, strict=True):
                key = f"{split}/{kind}/{pair.name}.webp"
                size += _write_webp(out / key, img)
                files[key] = _array_sha256(img)
                source_size += path.stat().st_size
            if split == "train":
                registrations[f"train/nir/{pair.name}.webp"] = estimate_shift(*images)
    manifest = {
        "format": _PACK_FORMAT,
        "source": str(source.resolve()),
        "files": files,
        "registration": {
            "method": "phase correlation of gradient magnitudes (pyg_lecc.nir.registration)",
            "upsample_factor": UPSAMPLE_FACTOR,
            "min_peak_ratio": MIN_PEAK_RATIO,
            "pairs": {key: reg.to_dict() for key, reg in registrations.items()},
        },
    }
    (out / PACK_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    # Read everything back once: a pack that does not decode exactly is never moved into place.
    for split in splits:
        for pair in find_pairs(out, split):
            load_pair(pair)
    counts = {split: len(pairs) for split, pairs in splits.items()}
    return {
        "pairs": counts,
        "bytes": size,
        "source_bytes": source_size,
        "registration": summarize_registrations(registrations.values()),
    }


def _write_webp(path: Path, img: np.ndarray) -> int:
    """Write an image in ``[0, 1]`` as 8-bit lossless WebP; returns the size of the file."""
    pixels = np.round(img * 255.0).astype(np.uint8)
    if pixels.ndim == 2:  # WebP has no grey mode
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    data = iio.imwrite("<bytes>", pixels, plugin="pillow", extension=".webp", lossless=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return len(data)


# --------------------------------------------------------------------------------------------
# Dataset and patch sampling
# --------------------------------------------------------------------------------------------


def _to_tensors(nir: np.ndarray, rgb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    rgb_chw = np.ascontiguousarray(rgb.transpose(2, 0, 1))
    return torch.from_numpy(nir[None]), torch.from_numpy(rgb_chw)


class PairedImageDataset(Dataset):
    """NIR/RGB pairs as tensors, optionally shifted into register.

    Items are ``(nir, rgb, name)`` with ``nir`` a ``float32`` tensor ``(1, H, W)`` and ``rgb``
    ``(3, H, W)``, both in ``[0, 1]``. Images may differ in size from pair to pair. With
    ``preload`` the items are the cached tensors themselves: do not modify them in place.

    With ``register`` (training pairs only), each RGB image is shifted onto its NIR image by
    its estimated sub-pixel translation and both are cropped to the valid overlap
    (:func:`pyg_lecc.nir.registration.register_pair`; pairs whose estimate is unreliable stay as
    they are). The translation comes from the pack manifest where :func:`pack_dataset`
    recorded it, and is otherwise estimated here, when the pair is first read (about
    0.05 s a pair on one thread).

    Args:
        root: Data set folder, any layout accepted by :func:`find_pairs`.
        split: ``"train"`` or ``"validation"``.
        preload: Read every pair once now and keep it in memory (the 372 VCIP training pairs
            take about 100 MB); otherwise images are read on each access. Default: ``True``.
        register: Shift the training pairs into register. Default: ``False`` (the pairs as
            stored); the trainer turns it on (``TrainConfig.register``).

    Attributes:
        pairs: The :class:`ImagePair` list, sorted by name; with ``register``, every pair's
            ``registration`` is set.

    Raises:
        ValueError: ``register`` with a split other than ``"train"``: validation pairs are
            never changed.
        PairingError: See :func:`find_pairs` and :func:`load_pair`.
        ImageReadError: With ``preload`` or ``register``, an image cannot be read.

    Example:
        >>> ds = PairedImageDataset("../shared/data/vcip2020", "validation")  # doctest: +SKIP
        >>> nir, rgb, name = ds[0]  # doctest: +SKIP
        >>> train = PairedImageDataset("../shared/data/vcip2020", register=True)  # doctest: +SKIP
        >>> train.pairs[0].registration.shift  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        preload: bool = True,
        register: bool = False,
    ) -> None:
        if register and split != "train":
            raise ValueError(
                f"only training pairs are registered, not the {split!r} split: the pairs that "
                "measure a model are never changed"
            )
        self.pairs: list[ImagePair] = find_pairs(root, split)
        self.register = register
        self._cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        if preload:
            self._cache = [self._load(i) for i in range(len(self.pairs))]
        elif register:  # estimate now, so that every pair's registration is known
            for i, pair in enumerate(self.pairs):
                if pair.registration is None:
                    self._load(i)

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Read pair ``index``, estimating its registration on first use if ``register``."""
        pair = self.pairs[index]
        nir, rgb = load_pair(pair)
        if self.register:
            if pair.registration is None:
                pair = dataclasses.replace(pair, registration=estimate_shift(nir, rgb))
                self.pairs[index] = pair
            nir, rgb = register_pair(nir, rgb, pair.registration)
        return _to_tensors(nir, rgb)

    def __len__(self) -> int:
        return len(self.pairs)

    def subset(self, indices: list[int]) -> PairedImageDataset:
        """The pairs at ``indices`` as a dataset of their own (sharing loaded images).

        Example:
            >>> held_in = ds.subset([0, 2, 3])  # doctest: +SKIP
        """
        sub = object.__new__(PairedImageDataset)
        sub.pairs = [self.pairs[i] for i in indices]
        sub.register = self.register
        sub._cache = None if self._cache is None else [self._cache[i] for i in indices]
        return sub

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        nir, rgb = self._cache[index] if self._cache is not None else self._load(index)
        return nir, rgb, self.pairs[index].name


class RandomPatchSampler:
    """Draws batches of random, optionally augmented, aligned NIR/RGB training patches.

    Each patch comes from a uniformly random image at a uniformly random position. With
    ``augment``, a random horizontal flip, vertical flip and rotation by ``k * 90`` degrees
    (``k`` in 0..3) are applied identically to the NIR and RGB patch. All randomness comes from
    ``generator``, so the same seed gives the same batches and :meth:`get_state` /
    :meth:`set_state` allow an exact resume.

    Args:
        dataset: Source images; preloading it is recommended (lazy datasets read each image
            once here to check sizes, then again on every draw).
        patch_size: Side length ``P`` of the square patches.
        batch_size: Number of patches ``B`` per batch.
        augment: Apply random flips and 90-degree rotations.
        generator: Source of randomness; ``None`` creates one seeded non-deterministically.

    Raises:
        ValueError: ``patch_size`` or ``batch_size`` is below 1, or ``patch_size`` exceeds the
            height or width of an image (the message names that image).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> sampler = RandomPatchSampler(ds, patch_size=42, generator=g)  # doctest: +SKIP
        >>> nir, rgb = sampler.sample()  # (10, 1, 42, 42), (10, 3, 42, 42)  # doctest: +SKIP
    """

    def __init__(
        self,
        dataset: PairedImageDataset,
        patch_size: int = 42,
        batch_size: int = 10,
        augment: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        if patch_size < 1:
            raise ValueError(f"patch_size must be at least 1, got {patch_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self._sizes: list[tuple[int, int]] = []
        for i in range(len(dataset)):
            nir, _, _ = dataset[i]
            h, w = nir.shape[-2:]
            if patch_size > min(h, w):
                raise ValueError(
                    f"patch_size {patch_size} is larger than image {dataset.pairs[i].nir_path} "
                    f"(height x width {h}x{w})"
                )
            self._sizes.append((h, w))
        self.dataset = dataset
        self.patch_size = patch_size
        self.batch_size = batch_size
        self.augment = augment
        if generator is None:
            generator = torch.Generator()
            generator.seed()
        self.generator = generator

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator).item())

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw one batch.

        Returns:
            ``(nir, rgb)``: ``float32`` tensors of shapes ``(B, 1, P, P)`` and ``(B, 3, P, P)``.
        """
        p = self.patch_size
        nir_patches, rgb_patches = [], []
        for _ in range(self.batch_size):
            i = self._randint(len(self._sizes))
            h, w = self._sizes[i]
            y, x = self._randint(h - p + 1), self._randint(w - p + 1)
            nir, rgb, _ = self.dataset[i]
            nir_p, rgb_p = nir[:, y : y + p, x : x + p], rgb[:, y : y + p, x : x + p]
            if self.augment:
                flip_h, flip_v, k = self._randint(2), self._randint(2), self._randint(4)
                dims = [d for d, flip in ((-1, flip_h), (-2, flip_v)) if flip]
                if dims:
                    nir_p, rgb_p = nir_p.flip(dims), rgb_p.flip(dims)
                if k:
                    nir_p, rgb_p = nir_p.rot90(k, (-2, -1)), rgb_p.rot90(k, (-2, -1))
            nir_patches.append(nir_p)
            rgb_patches.append(rgb_p)
        return torch.stack(nir_patches), torch.stack(rgb_patches)

    def get_state(self) -> torch.Tensor:
        """Return the generator state, to be saved in a training checkpoint."""
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        """Restore a state returned by :meth:`get_state`; the next batches then repeat."""
        self.generator.set_state(state)
