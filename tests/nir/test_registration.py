"""Tests of pyg_lecc.nir.registration: sub-pixel shift estimates, their reliability, and moving a
pair into register without making up a border."""

import numpy as np
import pytest
from scipy import ndimage

from pyg_lecc.nir.registration import (
    Registration,
    estimate_shift,
    register_pair,
    summarize_registrations,
)

# Colours as affine functions of the NIR texture: grey levels differ between the two images,
# edges do not (as for real NIR/RGB pairs).
_GAIN = np.array([0.6, -0.5, 0.3])
_OFFSET = np.array([0.2, 0.75, 0.35])


def _texture(size: int, seed: int = 0) -> np.ndarray:
    """Smooth random texture in [0, 1]."""
    noise = np.random.default_rng(seed).normal(size=(size, size))
    smooth = ndimage.gaussian_filter(noise, 2.0, mode="wrap")
    return (smooth - smooth.min()) / (smooth.max() - smooth.min())


def _fourier_shift(img: np.ndarray, shift: tuple[float, float]) -> np.ndarray:
    """``img`` moved by ``shift`` exactly (periodic): out(y, x) = img(y - dy, x - dx)."""
    moved = ndimage.fourier_shift(np.fft.fft2(img), shift)
    return np.fft.ifft2(moved).real


def _colour(grey: np.ndarray) -> np.ndarray:
    return grey[..., None] * _GAIN + _OFFSET


def _shifted_pair(shift: tuple[float, float], size: int = 128, seed: int = 0):
    """A NIR image and an RGB image whose content belongs ``shift`` further on the NIR one.

    Both are cut from the middle of a larger periodic texture, so that neither has the
    periodic borders that a Fourier shift assumes."""
    big = _texture(size + 64, seed)
    cut = np.s_[32 : 32 + size, 32 : 32 + size]
    nir = big[cut]
    rgb = _colour(_fourier_shift(big, (-shift[0], -shift[1]))[cut])
    return nir, rgb


@pytest.mark.parametrize(
    "shift", [(0.0, 0.0), (1.3, -2.7), (-0.45, 0.8), (4.25, 3.6), (-9.0, 6.15)]
)
def test_a_known_subpixel_shift_is_recovered(shift):
    reg = estimate_shift(*_shifted_pair(shift))
    np.testing.assert_allclose(reg.shift, shift, atol=0.1)
    assert reg.reliable and reg.peak_ratio > 3.0


def test_registering_brings_the_rgb_image_onto_the_nir_image():
    nir, rgb = _shifted_pair((2.35, -1.6), seed=1)
    before = np.abs(_colour(nir) - rgb).mean()
    nir_r, rgb_r = register_pair(nir, rgb, estimate_shift(nir, rgb))
    after = np.abs(_colour(nir_r) - rgb_r).mean()
    assert after < before / 10


def _analytic(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A smooth pattern in [0.1, 0.9] whose continuation beyond any border is not a mirror."""
    return 0.5 + 0.2 * np.sin(0.45 * y + 0.3 * x + 0.7) + 0.2 * np.cos(0.25 * y - 0.5 * x)


@pytest.mark.parametrize("shift", [(2.5, -1.25), (-3.0, 2.0), (0.4, 0.0), (-0.7, -4.9)])
def test_the_cropped_overlap_holds_no_made_up_border(shift):
    h, w = 40, 36
    dy, dx = shift
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    nir = _analytic(y, x)
    rgb = _colour(_analytic(y + dy, x + dx))  # its content belongs shift further on
    nir_r, rgb_r = register_pair(nir, rgb, Registration(shift, peak_ratio=10.0, reliable=True))
    # Independently: the output rows and columns whose source position lies in the image.
    rows = [r for r in range(h) if 0 <= r - dy <= h - 1]
    cols = [c for c in range(w) if 0 <= c - dx <= w - 1]
    assert nir_r.shape == (len(rows), len(cols)) and rgb_r.shape == (len(rows), len(cols), 3)
    np.testing.assert_array_equal(nir_r, nir[np.ix_(rows, cols)])
    # Every kept pixel, the first and last rows and columns included, is the true colour
    # there (up to the spline's interpolation error), not an extrapolated one.
    np.testing.assert_allclose(rgb_r, _colour(nir[np.ix_(rows, cols)]), atol=0.015)


def test_an_integer_shift_moves_pixels_exactly():
    rng = np.random.default_rng(3)
    nir, rgb = rng.random((20, 24)), rng.random((20, 24, 3))
    reg = Registration((-2.0, 3.0), peak_ratio=10.0, reliable=True)
    nir_r, rgb_r = register_pair(nir, rgb, reg)
    np.testing.assert_array_equal(nir_r, nir[:18, 3:])
    np.testing.assert_allclose(rgb_r, rgb[2:, :21], atol=1e-6)


def test_an_untextured_pair_is_flagged_unreliable_and_left_alone():
    # A clear sky: flat, with independent sensor noise in the two images.
    rng = np.random.default_rng(0)
    nir = np.clip(0.6 + rng.normal(0.0, 0.01, (128, 128)), 0.0, 1.0)
    rgb = np.clip(0.4 + rng.normal(0.0, 0.01, (128, 128, 3)), 0.0, 1.0)
    reg = estimate_shift(nir, rgb)
    assert not reg.reliable and reg.peak_ratio < 1.5
    nir_r, rgb_r = register_pair(nir, rgb, reg)
    assert nir_r is nir and rgb_r is rgb


def test_unrelated_images_are_flagged_unreliable():
    nir = _texture(128, seed=4)
    rgb = _colour(_texture(128, seed=5))
    assert not estimate_shift(nir, rgb).reliable


def test_estimate_refuses_mismatched_or_tiny_images():
    with pytest.raises(ValueError, match="expected"):
        estimate_shift(np.zeros((16, 16)), np.zeros((16, 15, 3)))
    with pytest.raises(ValueError, match="too small"):
        estimate_shift(np.zeros((6, 16)), np.zeros((6, 16, 3)))


def test_registration_round_trips_through_a_dict():
    reg = Registration((1.25, -0.5), peak_ratio=1.125, reliable=False)
    assert Registration.from_dict(reg.to_dict()) == reg


def test_summary_counts_the_applied_shifts_by_length():
    regs = [
        Registration((0.6, 0.8), 9.0, True),  # 1 px: not over 1
        Registration((3.0, 0.5), 9.0, True),
        Registration((0.0, -5.0), 1.1, False),  # not applied: not counted
    ]
    longest = np.hypot(3.0, 0.5)
    assert summarize_registrations(regs) == {
        "pairs": 3,
        "unreliable": 1,
        "median_px": round((1.0 + longest) / 2, 3),
        "max_px": round(longest, 3),
        "over_1px": 1,
        "over_3px": 1,
    }
    assert summarize_registrations([])["max_px"] is None
