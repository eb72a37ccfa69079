"""Tests of pyg_lecc.nir.data.datasets (PairedImageDataset) on small synthetic images, plus
one optional real-data check; registered pairs are tested in tests/nir/test_registered_data.py."""

from pathlib import Path

import numpy as np
import pytest
import torch
from image_helpers import _colour, _grey, _make_vcip

from pyg_lecc.nir.data import PairedImageDataset

VCIP_ROOT = Path(__file__).resolve().parents[4] / "shared" / "data" / "vcip2020"


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
