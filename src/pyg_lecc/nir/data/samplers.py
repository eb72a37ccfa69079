"""Patch sampling for training: reproducible batches of random, augmented, aligned NIR/RGB
patches drawn from a :class:`~pyg_lecc.nir.data.PairedImageDataset`."""

from __future__ import annotations

import torch

from pyg_lecc.nir.data.datasets import PairedImageDataset

__all__ = ["RandomPatchSampler"]


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
