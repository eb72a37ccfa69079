"""Colorization quality metrics on float RGB images in ``[0, 1]``.

All functions take ``(H, W, 3)`` numpy arrays ``pred`` and ``target`` with values in ``[0, 1]``
and compute in float64. Two angular errors are offered because the NIR-GNN paper's "AE" is
ambiguous: :func:`angular_error_deg` is the usual per-pixel RGB angle in degrees, averaged over
pixels; :func:`angular_error_image_rad` is the angle in radians between the two whole images,
each flattened to one vector, which matches the paper's reported scale (about 0.32).

Example:
    >>> import numpy as np
    >>> target = np.full((8, 8, 3), 0.5)
    >>> m = evaluate_pair(np.clip(target + 0.1, 0, 1), target)
    >>> round(m["psnr"], 2)
    20.0
"""

from __future__ import annotations

import math

import numpy as np
from skimage.metrics import structural_similarity

__all__ = [
    "METRIC_KEYS",
    "angular_error_deg",
    "angular_error_image_rad",
    "evaluate_pair",
    "psnr",
    "ssim",
    "summarize",
]

METRIC_KEYS: tuple[str, ...] = ("psnr", "ssim", "ae_deg", "ae_img_rad")
"""Keys of the dictionaries returned by :func:`evaluate_pair` and :func:`summarize`."""

_EPS = 1e-8
"""Floor of the norm products in the angular errors, see :func:`angular_error_deg`."""


def _check(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate a pair of ``(H, W, 3)`` images in ``[0, 1]`` and return them as float64."""
    arrays = []
    for label, img in (("pred", pred), ("target", target)):
        img = np.asarray(img)
        if img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError(f"{label} must have shape (H, W, 3), got {img.shape}")
        if not np.issubdtype(img.dtype, np.floating):
            raise ValueError(f"{label} must be a float array in [0, 1], got dtype {img.dtype}")
        if not np.isfinite(img).all():
            raise ValueError(f"{label} contains NaN or infinite values")
        if img.size and (img.min() < 0.0 or img.max() > 1.0):
            raise ValueError(
                f"{label} values must lie in [0, 1], got [{img.min():g}, {img.max():g}]"
            )
        arrays.append(img.astype(np.float64, copy=False))
    if arrays[0].shape != arrays[1].shape:
        raise ValueError(f"pred and target shapes differ: {arrays[0].shape} vs {arrays[1].shape}")
    if arrays[0].size == 0:
        raise ValueError(f"images are empty: shape {arrays[0].shape}")
    return arrays[0], arrays[1]


def psnr(pred: np.ndarray, target: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB with data range 1.

    Args:
        pred: Predicted image ``(H, W, 3)`` in ``[0, 1]``.
        target: Reference image of the same shape.

    Returns:
        ``10 * log10(1 / MSE)``; ``inf`` for identical images.

    Raises:
        ValueError: Shapes differ or are not ``(H, W, 3)``, or values are outside ``[0, 1]``.

    Example:
        >>> round(psnr(np.zeros((2, 2, 3)), np.full((2, 2, 3), 0.1)), 6)
        20.0
    """
    pred, target = _check(pred, target)
    mse = float(np.mean((pred - target) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def ssim(pred: np.ndarray, target: np.ndarray) -> float:
    """Structural similarity, as scikit-image computes it over the three channels.

    Calls ``skimage.metrics.structural_similarity(pred, target, data_range=1.0,
    channel_axis=-1)`` (7x7 uniform window, so images must be at least 7x7).

    Args:
        pred: Predicted image ``(H, W, 3)`` in ``[0, 1]``.
        target: Reference image of the same shape.

    Returns:
        Mean SSIM; 1.0 for identical images.

    Raises:
        ValueError: Shapes differ or are not ``(H, W, 3)``, values are outside ``[0, 1]``, or
            the images are smaller than 7x7.

    Example:
        >>> ssim(np.full((8, 8, 3), 0.5), np.full((8, 8, 3), 0.5))
        1.0
    """
    pred, target = _check(pred, target)
    return float(structural_similarity(pred, target, data_range=1.0, channel_axis=-1))


def angular_error_deg(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean per-pixel angle, in degrees, between the RGB vectors of ``pred`` and ``target``.

    At each pixel the angle is ``arccos(<p, t> / max(|p| |t|, eps))`` with ``eps = 1e-8`` and
    the cosine clipped to ``[-1, 1]``. Black pixels (zero norm) have no defined hue: there the
    cosine is 0, so such a pixel counts as 90 degrees (the worst match for non-negative
    images) rather than being skipped, and the mean is always over all ``H * W`` pixels.
    ``max`` rather than ``+ eps`` keeps every other pixel exact: adding eps would bias angles
    of nearly parallel dark vectors by about ``sqrt(2 eps / (|p| |t|))`` radians.

    Args:
        pred: Predicted image ``(H, W, 3)`` in ``[0, 1]``.
        target: Reference image of the same shape.

    Returns:
        Mean angle in degrees, in ``[0, 90]`` for non-negative images.

    Raises:
        ValueError: Shapes differ or are not ``(H, W, 3)``, or values are outside ``[0, 1]``.

    Example:
        >>> p = np.zeros((1, 1, 3)); p[..., 0] = 1.0
        >>> t = np.zeros((1, 1, 3)); t[..., 1] = 1.0
        >>> angular_error_deg(p, t)
        90.0
    """
    pred, target = _check(pred, target)
    dot = np.sum(pred * target, axis=-1)
    norms = np.linalg.norm(pred, axis=-1) * np.linalg.norm(target, axis=-1)
    cos = np.clip(dot / np.maximum(norms, _EPS), -1.0, 1.0)
    return float(np.degrees(np.arccos(cos)).mean())


def angular_error_image_rad(pred: np.ndarray, target: np.ndarray) -> float:
    """Angle, in radians, between the two images each flattened to one vector.

    ``arccos(<p, t> / max(|p| |t|, eps))`` over all ``3 * H * W`` values, with the same
    ``eps = 1e-8`` and clipping as :func:`angular_error_deg` (an all-black image gives pi/2).
    This is most likely the paper's "AE" (0.32 for NIR-GNN).

    Args:
        pred: Predicted image ``(H, W, 3)`` in ``[0, 1]``.
        target: Reference image of the same shape.

    Returns:
        Angle in radians, in ``[0, pi/2]`` for non-negative images.

    Raises:
        ValueError: Shapes differ or are not ``(H, W, 3)``, or values are outside ``[0, 1]``.

    Example:
        >>> round(angular_error_image_rad(np.full((2, 2, 3), 0.2), np.full((2, 2, 3), 0.7)), 6)
        0.0
    """
    pred, target = _check(pred, target)
    p, t = pred.ravel(), target.ravel()
    cos = float(p @ t) / max(float(np.linalg.norm(p)) * float(np.linalg.norm(t)), _EPS)
    return math.acos(min(1.0, max(-1.0, cos)))


def evaluate_pair(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """All metrics for one image pair.

    Args:
        pred: Predicted image ``(H, W, 3)`` in ``[0, 1]``, at least 7x7.
        target: Reference image of the same shape.

    Returns:
        ``{"psnr": dB, "ssim": ..., "ae_deg": degrees, "ae_img_rad": radians}``.

    Raises:
        ValueError: See :func:`psnr` and :func:`ssim`.

    Example:
        >>> sorted(evaluate_pair(np.full((8, 8, 3), 0.5), np.full((8, 8, 3), 0.4)))
        ['ae_deg', 'ae_img_rad', 'psnr', 'ssim']
    """
    return {
        "psnr": psnr(pred, target),
        "ssim": ssim(pred, target),
        "ae_deg": angular_error_deg(pred, target),
        "ae_img_rad": angular_error_image_rad(pred, target),
    }


def summarize(per_image: list[dict[str, float]]) -> dict[str, float]:
    """Average per-image metrics, as the paper reports them.

    Args:
        per_image: Dictionaries from :func:`evaluate_pair` (extra keys are ignored).

    Returns:
        The mean of each of :data:`METRIC_KEYS`. The PSNR mean is ``inf`` if any image was
        reproduced exactly.

    Raises:
        ValueError: ``per_image`` is empty or an entry lacks one of the keys.

    Example:
        >>> summarize([{"psnr": 10.0, "ssim": 0.5, "ae_deg": 4.0, "ae_img_rad": 0.2},
        ...            {"psnr": 20.0, "ssim": 0.7, "ae_deg": 6.0, "ae_img_rad": 0.4}])["psnr"]
        15.0
    """
    if not per_image:
        raise ValueError("cannot summarize an empty list of per-image metrics")
    for i, entry in enumerate(per_image):
        missing = [k for k in METRIC_KEYS if k not in entry]
        if missing:
            raise ValueError(f"per-image metrics entry {i} lacks keys {missing}")
    return {k: float(np.mean([entry[k] for entry in per_image])) for k in METRIC_KEYS}
