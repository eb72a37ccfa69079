"""Image IO and paired NIR/RGB datasets for NIR colorization.

Images are handled as ``float32`` arrays in ``[0, 1]``: NIR images have shape ``(H, W)`` and
colour images ``(H, W, 3)``. :func:`find_pairs` understands the official VCIP 2020 challenge
layout as distributed, a plain ``nir/`` + ``rgb/`` layout, and folders holding
``<name>_nir.*`` / ``<name>_rgb*.*`` files side by side. :class:`PairedImageDataset` loads the
pairs and :class:`RandomPatchSampler` draws reproducible batches of augmented training patches.

The package holds one concept per module: ``images`` (reading and writing single image
files), ``pairs`` (finding NIR/RGB pairs, data packs included, and loading them), ``pack``
(writing data packs), ``datasets`` (:class:`PairedImageDataset`) and ``samplers``
(:class:`RandomPatchSampler`); :func:`write_file_atomic` comes from :mod:`pyg_lecc.io.atomic`.
Everything public is importable from ``pyg_lecc.nir.data``.

Example:
    >>> ds = PairedImageDataset("../shared/data/vcip2020", split="train")  # doctest: +SKIP
    >>> sampler = RandomPatchSampler(ds, patch_size=42, batch_size=10,
    ...                              generator=torch.Generator().manual_seed(0))  # doctest: +SKIP
    >>> nir, rgb = sampler.sample()  # (10, 1, 42, 42), (10, 3, 42, 42)  # doctest: +SKIP
"""

from __future__ import annotations

from pyg_lecc.io.atomic import write_file_atomic
from pyg_lecc.nir.data.datasets import PairedImageDataset
from pyg_lecc.nir.data.images import (
    ImageReadError,
    read_image,
    read_nir,
    read_rgb,
    refuse_existing_outputs,
    write_rgb_png,
)
from pyg_lecc.nir.data.pack import pack_dataset
from pyg_lecc.nir.data.pairs import (
    IMAGE_EXTENSIONS,
    PACK_MANIFEST,
    ImagePair,
    PairingError,
    find_pairs,
    load_pair,
)
from pyg_lecc.nir.data.samplers import RandomPatchSampler

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
