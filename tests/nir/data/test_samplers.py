"""Tests of pyg_lecc.nir.data.samplers (RandomPatchSampler) on small synthetic images."""

from pathlib import Path

import numpy as np
import pytest
import torch
from image_helpers import _write

from pyg_lecc.nir.data import PairedImageDataset, RandomPatchSampler


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
