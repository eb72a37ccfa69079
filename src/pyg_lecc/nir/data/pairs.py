"""NIR/RGB image pairs: finding them in a data set folder and loading them.

:func:`find_pairs` understands the official VCIP 2020 challenge layout as distributed, a plain
``nir/`` + ``rgb/`` layout, and folders holding ``<name>_nir.*`` / ``<name>_rgb*.*`` files
side by side. A data pack (:func:`~pyg_lecc.nir.data.pack_dataset`) is a plain layout
with a manifest, :data:`PACK_MANIFEST`, which is read here: :func:`find_pairs` gives a pack's
pairs the checksums and registrations it records, and :func:`load_pair` checks the checksums.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pyg_lecc.nir.data.images import ImageReadError, read_nir, read_rgb
from pyg_lecc.nir.registration import Registration

__all__ = [
    "IMAGE_EXTENSIONS",
    "PACK_MANIFEST",
    "ImagePair",
    "PairingError",
    "find_pairs",
    "load_pair",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")
"""File extensions (lower case) that :func:`find_pairs` considers images."""

PACK_MANIFEST = "pyg_lecc_pack.json"
"""Manifest of a data pack written by :func:`pack_dataset` (checksums of the decoded images)."""
_PACK_FORMAT = "pyg_lecc.pack/1"

# Stem suffixes of the colour partner in side-by-side folders: VCIP "_rgb_reg", EPFL "_rgb".
_RGB_SUFFIXES = ("_rgb_reg", "_rgb")
_NIR_SUFFIX = "_nir"


class PairingError(ValueError):
    """NIR and RGB images cannot be paired one to one (missing folder, partner or size match)."""


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
       stem; ext among :data:`~pyg_lecc.nir.data.pairs.IMAGE_EXTENSIONS`). ``<base>`` is
       ``root/train`` if it exists, else ``root`` for ``split="train"``, and
       ``root/validation`` (or ``root/val``) for ``split="validation"``. A ``<base>`` holding
       side-by-side files (see 3) works too.
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
# Reading a data pack's manifest
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
