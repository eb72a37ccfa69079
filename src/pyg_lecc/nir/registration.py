"""Sub-pixel registration of NIR/RGB training pairs.

The RGB image of a "registered" pair is not always on the NIR image: in the VCIP 2020
training split a sixth of the pairs are off by more than a pixel. A network trained on such
targets learns to blur and to draw colour fringes at edges. :func:`estimate_shift` measures
the translation of a pair by phase correlation of gradient magnitudes (grey levels differ
between NIR and RGB, edges largely do not), and :func:`register_pair` moves the RGB image
onto the NIR one and crops both to the region where the moved image has data, so that no
border is made up.

An estimate is *reliable* when its phase-correlation peak stands out: at least
:data:`MIN_PEAK_RATIO` times as high as any other peak of the correlation surface more than
:data:`PEAK_RADIUS` pixels away. Pairs with little texture, or whose NIR and RGB edges differ
too much, have no such peak (the highest is one of many noise peaks), and are left as they
are.

Example:
    >>> from pyg_lecc.nir.data import find_pairs, load_pair  # doctest: +SKIP
    >>> nir, rgb = load_pair(find_pairs("../shared/data/vcip2020")[0])  # doctest: +SKIP
    >>> reg = estimate_shift(nir, rgb)  # doctest: +SKIP
    >>> nir, rgb = register_pair(nir, rgb, reg)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.color import rgb2gray
from skimage.filters import sobel, window
from skimage.registration import phase_cross_correlation

__all__ = [
    "MIN_PEAK_RATIO",
    "PEAK_RADIUS",
    "UPSAMPLE_FACTOR",
    "Registration",
    "estimate_shift",
    "register_pair",
    "summarize_registrations",
]

UPSAMPLE_FACTOR = 20
"""Shifts are estimated to ``1 / UPSAMPLE_FACTOR`` of a pixel."""
MIN_PEAK_RATIO = 1.5
"""Least ratio of the phase-correlation peak to the highest peak elsewhere for a reliable
estimate (on the VCIP 2020 data, wrong estimates of the aligned validation pairs have about
1.0, the correct ones 1.8 and more)."""
PEAK_RADIUS = 3
"""Half-width in pixels of the square around the peak that belongs to it (a sub-pixel peak
spreads over its neighbours)."""


@dataclass(frozen=True)
class Registration:
    """The estimated translation of one NIR/RGB pair.

    Attributes:
        shift: ``(dy, dx)`` in pixels that moves the RGB image onto the NIR image (the RGB
            content at ``(y, x)`` belongs at ``(y + dy, x + dx)``).
        peak_ratio: Height of the phase-correlation peak over the highest value of the
            surface more than :data:`PEAK_RADIUS` pixels away from it (0 for images without
            any texture).
        reliable: ``peak_ratio`` is at least :data:`MIN_PEAK_RATIO`; unreliable pairs are
            not moved.
    """

    shift: tuple[float, float]
    peak_ratio: float
    reliable: bool

    @property
    def magnitude(self) -> float:
        """Length of ``shift`` in pixels."""
        return math.hypot(*self.shift)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, as stored in a data pack's manifest."""
        return {"shift": list(self.shift), "peak_ratio": self.peak_ratio, "reliable": self.reliable}

    @classmethod
    def from_dict(cls, info: Mapping[str, Any]) -> Registration:
        """The inverse of :meth:`to_dict`.

        Raises:
            KeyError: A field is missing.
            ValueError: ``shift`` is not two numbers.
        """
        dy, dx = (float(v) for v in info["shift"])
        return cls((dy, dx), float(info["peak_ratio"]), bool(info["reliable"]))


def _edges(img: np.ndarray) -> np.ndarray:
    """Gradient magnitude, centred and tapered to zero at the borders (a Hann window), so that
    neither the image frame nor the window itself correlates at zero shift."""
    grad = sobel(img if img.ndim == 2 else rgb2gray(img)).astype(np.float64)
    return (grad - grad.mean()) * window("hann", grad.shape)


def _peak_ratio(nir_freq: np.ndarray, rgb_freq: np.ndarray) -> float:
    """The phase-correlation peak over the highest value more than PEAK_RADIUS px away
    (scikit-image does not return the surface)."""
    product = nir_freq * rgb_freq.conj()
    magnitude = np.abs(product)
    if not magnitude.any():  # no texture at all: no peak
        return 0.0
    surface = np.abs(np.fft.ifft2(product / np.maximum(magnitude, 1e-12)))
    peak = np.unravel_index(surface.argmax(), surface.shape)
    # The peak moved to the centre, so that its neighbourhood does not wrap around.
    h, w = surface.shape
    centred = np.roll(surface, (h // 2 - peak[0], w // 2 - peak[1]), axis=(0, 1))
    r = PEAK_RADIUS
    centred[h // 2 - r : h // 2 + r + 1, w // 2 - r : w // 2 + r + 1] = 0.0
    return float(surface[peak] / max(centred.max(), 1e-12))


def estimate_shift(nir: np.ndarray, rgb: np.ndarray) -> Registration:
    """Estimate the translation of the RGB image of a pair against its NIR image.

    Phase correlation (:func:`skimage.registration.phase_cross_correlation`, to
    ``1 / UPSAMPLE_FACTOR`` px) of the Sobel gradient magnitudes of the NIR image and of the
    RGB image's luminance, centred and Hann-windowed; the estimate is reliable if its peak
    stands out (see :class:`Registration`).

    Args:
        nir: ``(H, W)`` NIR image.
        rgb: ``(H, W, 3)`` RGB image of the same size.

    Returns:
        The :class:`Registration` of the pair; shifts are rounded to 1/1000 px.

    Raises:
        ValueError: The images differ in size or are smaller than 12x12.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> nir = ndimage.gaussian_filter(rng.random((96, 96)), 2)
        >>> rgb = np.stack([ndimage.shift(nir, (2.0, -3.0))] * 3, axis=-1)
        >>> reg = estimate_shift(nir, rgb)
        >>> reg.shift, reg.reliable
        ((-2.0, 3.0), True)
    """
    if nir.shape != rgb.shape[:2] or rgb.ndim != 3:
        raise ValueError(f"expected (H, W) and (H, W, 3) images, got {nir.shape}, {rgb.shape}")
    h, w = nir.shape
    if min(h, w) < 4 * PEAK_RADIUS:
        raise ValueError(f"images of {h}x{w} pixels are too small to register")
    nir_freq, rgb_freq = np.fft.fft2(_edges(nir)), np.fft.fft2(_edges(rgb))
    shift, _, _ = phase_cross_correlation(
        nir_freq, rgb_freq, space="fourier", upsample_factor=UPSAMPLE_FACTOR
    )
    ratio = round(_peak_ratio(nir_freq, rgb_freq), 3)
    dy, dx = (round(float(v), 3) + 0.0 for v in shift)  # + 0.0: no -0.0 in manifests
    return Registration((dy, dx), ratio, ratio >= MIN_PEAK_RATIO)


def register_pair(
    nir: np.ndarray, rgb: np.ndarray, registration: Registration
) -> tuple[np.ndarray, np.ndarray]:
    """Move the RGB image of a pair onto its NIR image and crop both to the valid overlap.

    The RGB image is shifted by ``registration.shift`` with cubic spline interpolation
    (:func:`scipy.ndimage.shift`, clipped to ``[0, 1]``); rows and columns whose source
    position falls outside the original image are cropped from both images, so every kept
    pixel is interpolated from real pixels (``ceil(|dy|)`` rows and ``ceil(|dx|)`` columns
    go). An unreliable registration leaves the pair unchanged.

    Args:
        nir: ``(H, W)`` NIR image.
        rgb: ``(H, W, 3)`` RGB image of the same size.
        registration: The pair's :class:`Registration` (:func:`estimate_shift`).

    Returns:
        ``(nir, rgb)``, cropped to the same size.

    Example:
        >>> nir, rgb = np.zeros((16, 16)), np.zeros((16, 16, 3))
        >>> reg = Registration((2.5, -1.0), peak_ratio=10.0, reliable=True)
        >>> [a.shape for a in register_pair(nir, rgb, reg)]
        [(13, 15), (13, 15, 3)]
    """
    if not registration.reliable or registration.shift == (0.0, 0.0):
        return nir, rgb
    dy, dx = registration.shift
    # Channel by channel: a spline across the 3 channels would blend them slightly.
    moved = np.stack(
        [ndimage.shift(rgb[..., c], (dy, dx), order=3, mode="reflect") for c in range(3)],
        axis=-1,
    )
    np.clip(moved, 0.0, 1.0, out=moved)  # cubic splines overshoot at edges
    h, w = nir.shape
    # Output pixel y reads the source at y - dy, which must lie in [0, h - 1].
    rows = slice(max(0, math.ceil(dy)), h + min(0, math.floor(dy)))
    cols = slice(max(0, math.ceil(dx)), w + min(0, math.floor(dx)))
    return np.ascontiguousarray(nir[rows, cols]), np.ascontiguousarray(moved[rows, cols])


def summarize_registrations(registrations: Iterable[Registration]) -> dict[str, Any]:
    """The distribution of the shifts that are applied, for reports and the docs.

    Args:
        registrations: One :class:`Registration` per pair.

    Returns:
        ``{"pairs", "unreliable", "median_px", "max_px", "over_1px", "over_3px"}``: the
        number of pairs, of unreliable ones, and the median and largest shift length and the
        number of shifts longer than 1 and 3 pixels over the reliable pairs (``None`` for the
        median and largest if there are none).

    Example:
        >>> summarize_registrations([Registration((0.0, 1.5), 9.0, True)])["over_1px"]
        1
    """
    regs = list(registrations)
    sizes = np.array([r.magnitude for r in regs if r.reliable])
    return {
        "pairs": len(regs),
        "unreliable": len(regs) - len(sizes),
        "median_px": round(float(np.median(sizes)), 3) if len(sizes) else None,
        "max_px": round(float(sizes.max()), 3) if len(sizes) else None,
        "over_1px": int((sizes > 1.0).sum()),
        "over_3px": int((sizes > 3.0).sum()),
    }
