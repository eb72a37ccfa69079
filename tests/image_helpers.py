"""Helpers of the data tests (tests/nir/data/): small synthetic images and data sets in the
layouts that pyg_lecc.nir.data.find_pairs reads, and a 16-bit colour PNG."""

import struct
import zlib
from pathlib import Path

import imageio.v3 as iio
import numpy as np


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
