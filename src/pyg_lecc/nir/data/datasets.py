"""The NIR/RGB pairs of a data set as a :class:`torch.utils.data.Dataset` of tensors,
optionally shifted into register (:mod:`pyg_lecc.nir.registration`)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from pyg_lecc.nir.data.pairs import ImagePair, find_pairs, load_pair
from pyg_lecc.nir.registration import estimate_shift, register_pair

__all__ = ["PairedImageDataset"]


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
