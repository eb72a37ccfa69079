"""Tests of pyg_lecc.nir.metrics against plain, independent computations."""

import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from pyg_lecc.nir.metrics import (
    METRIC_KEYS,
    angular_error_deg,
    angular_error_image_rad,
    evaluate_pair,
    psnr,
    ssim,
    summarize,
)


@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    target = rng.uniform(0.05, 1.0, size=(16, 12, 3))
    pred = np.clip(target + rng.normal(0.0, 0.1, size=target.shape), 0.0, 1.0)
    return pred, target


def test_psnr_matches_formula(pair):
    pred, target = pair
    mse = sum((float(p) - float(t)) ** 2 for p, t in zip(pred.ravel(), target.ravel(), strict=True))
    mse /= pred.size
    assert psnr(pred, target) == pytest.approx(10 * math.log10(1 / mse), rel=1e-12)


def test_psnr_known_value_and_identical():
    assert psnr(np.zeros((2, 2, 3)), np.full((2, 2, 3), 0.1)) == pytest.approx(20.0)
    img = np.full((4, 4, 3), 0.3)
    assert psnr(img, img) == math.inf


def test_ssim_identical_is_one_and_matches_skimage(pair):
    pred, target = pair
    assert ssim(target, target) == pytest.approx(1.0)
    expected = structural_similarity(pred, target, data_range=1.0, channel_axis=-1)
    assert ssim(pred, target) == pytest.approx(expected, rel=1e-12)
    assert ssim(pred, target) < 0.99


def test_ssim_accepts_float32(pair):
    pred, target = pair
    assert ssim(pred.astype(np.float32), target.astype(np.float32)) == pytest.approx(
        ssim(pred, target), abs=1e-5
    )


def test_angular_error_deg_matches_per_pixel_loop():
    rng = np.random.default_rng(1)
    pred = rng.uniform(0.0, 1.0, size=(3, 4, 3))
    target = rng.uniform(0.0, 1.0, size=(3, 4, 3))
    angles = []
    for i in range(3):
        for j in range(4):
            p, t = pred[i, j], target[i, j]
            cos = float(np.dot(p, t) / (np.linalg.norm(p) * np.linalg.norm(t)))
            angles.append(np.degrees(np.arccos(min(1.0, cos))))
    assert angular_error_deg(pred, target) == pytest.approx(np.mean(angles), rel=1e-12)


def test_angular_error_deg_known_angles():
    red = np.array([[[1.0, 0.0, 0.0]]])
    green = np.array([[[0.0, 1.0, 0.0]]])
    yellow = np.array([[[1.0, 1.0, 0.0]]])
    assert angular_error_deg(red, green) == pytest.approx(90.0)
    assert angular_error_deg(red, yellow) == pytest.approx(45.0)
    # Brightness does not change the hue angle.
    assert angular_error_deg(0.25 * yellow, yellow) == pytest.approx(0.0, abs=1e-5)
    # Mean over pixels: one 90-degree and one 0-degree pixel.
    assert angular_error_deg(
        np.concatenate([red, red], axis=1), np.concatenate([green, red], axis=1)
    ) == pytest.approx(45.0)


def test_angular_error_deg_black_pixel_counts_as_90_degrees():
    black = np.zeros((1, 1, 3))
    grey = np.full((1, 1, 3), 0.5)
    assert angular_error_deg(black, grey) == pytest.approx(90.0)
    assert angular_error_deg(black, black) == pytest.approx(90.0)


def test_angular_error_image_rad_matches_flattened_formula(pair):
    pred, target = pair
    p, t = pred.ravel(), target.ravel()
    expected = np.arccos(np.dot(p, t) / (np.linalg.norm(p) * np.linalg.norm(t)))
    assert angular_error_image_rad(pred, target) == pytest.approx(expected, rel=1e-9)
    # Whole-image angle differs from the per-pixel mean (different definitions).
    assert angular_error_image_rad(pred, target) != pytest.approx(
        np.radians(angular_error_deg(pred, target)), rel=1e-3
    )


def test_angular_error_image_rad_orthogonal_and_parallel():
    red = np.zeros((2, 2, 3))
    red[..., 0] = 1.0
    green = np.zeros((2, 2, 3))
    green[..., 1] = 1.0
    assert angular_error_image_rad(red, green) == pytest.approx(math.pi / 2)
    assert angular_error_image_rad(0.5 * red, red) == pytest.approx(0.0, abs=1e-6)


def test_evaluate_pair_and_summarize(pair):
    pred, target = pair
    m = evaluate_pair(pred, target)
    assert tuple(m) == METRIC_KEYS == ("psnr", "ssim", "ae_deg", "ae_img_rad")
    assert m["psnr"] == psnr(pred, target)
    assert m["ssim"] == ssim(pred, target)
    assert m["ae_deg"] == angular_error_deg(pred, target)
    assert m["ae_img_rad"] == angular_error_image_rad(pred, target)

    a = {"psnr": 10.0, "ssim": 0.5, "ae_deg": 4.0, "ae_img_rad": 0.2, "name": 0.0}
    b = {"psnr": 20.0, "ssim": 0.7, "ae_deg": 8.0, "ae_img_rad": 0.4}
    assert summarize([a, b]) == pytest.approx(
        {"psnr": 15.0, "ssim": 0.6, "ae_deg": 6.0, "ae_img_rad": 0.3}
    )


def test_summarize_errors():
    with pytest.raises(ValueError, match="empty"):
        summarize([])
    with pytest.raises(ValueError, match=r"entry 1 lacks keys \['ssim'\]"):
        summarize(
            [
                {"psnr": 1.0, "ssim": 1.0, "ae_deg": 1.0, "ae_img_rad": 1.0},
                {"psnr": 1.0, "ae_deg": 1.0, "ae_img_rad": 1.0},
            ]
        )


@pytest.mark.parametrize("metric", [psnr, ssim, angular_error_deg, angular_error_image_rad])
def test_input_checks(metric):
    good = np.full((8, 8, 3), 0.5)
    with pytest.raises(ValueError, match=r"\(8, 8, 3\) vs \(8, 9, 3\)"):
        metric(good, np.full((8, 9, 3), 0.5))
    with pytest.raises(ValueError, match=r"target must have shape \(H, W, 3\), got \(8, 8\)"):
        metric(good, np.full((8, 8), 0.5))
    with pytest.raises(ValueError, match=r"pred values must lie in \[0, 1\], got \[0.5, 2\]"):
        metric(np.where(np.eye(8, dtype=bool)[..., None], 2.0, good), good)
    with pytest.raises(ValueError, match="NaN"):
        metric(good, np.full((8, 8, 3), np.nan))
    with pytest.raises(ValueError, match="dtype uint8"):
        metric(np.zeros((8, 8, 3), np.uint8), good)
