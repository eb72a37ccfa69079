"""Full-resolution NIR colorization with bounded memory.

NIR-GNN is trained on 42x42 patches; at test time the reference implementation restricts each
pixel's kNN search to a 49x49 window around it and processes large images in overlapping
tiles with 24 pixels of context on each side, so that memory does not grow with the image.
:func:`colorize` does the same and cross-fades neighbouring tiles so that no seams show. Its
windows are 256 pixels wide, the size of the VCIP 2020 images, so that those run whole, as
``pyg-lecc evaluate`` scores them (the reference implementation's were 195: 147 kept).
:func:`load_model` loads a weights file (or the shipped default weights) and
:func:`sample_pairs` lists the sample images bundled with the package.

Example:
    >>> from pyg_lecc.nir.data import load_pair
    >>> from pyg_lecc.nir.inference import colorize, load_model, sample_pairs
    >>> model, name = load_model("default", "nir-gnn")  # doctest: +SKIP
    >>> nir, rgb = load_pair(sample_pairs()[0])  # doctest: +SKIP
    >>> colorize(model, nir).shape  # doctest: +SKIP
    (256, 256, 3)
"""

from __future__ import annotations

import itertools
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from pyg_lecc.nir.data import (
    ImagePair,
    find_pairs,
    read_nir,
    refuse_existing_outputs,
    write_rgb_png,
)
from pyg_lecc.nir.hub import default_weights_path, model_from_weights
from pyg_lecc.nir.models import NIRGNN

__all__ = [
    "DEFAULT_CONTEXT",
    "DEFAULT_SEARCH_WINDOW",
    "DEFAULT_TILE",
    "ENSEMBLES",
    "MIN_SIDE",
    "colorize",
    "colorize_file",
    "load_model",
    "refuse_inputs_as_outputs",
    "refuse_unwritable_folders",
    "resolve_weights",
    "sample_dir",
    "sample_pairs",
]

DEFAULT_TILE = 208
"""Side of the part of each tile that is kept: with :data:`DEFAULT_CONTEXT` on both sides, a
window of 256 pixels, so that a 256x256 image (the VCIP 2020 size) runs whole, as
``pyg-lecc evaluate`` runs it. The reference implementation kept 147 (``tile=147``): its
195-pixel windows cut a 256x256 image into four, 2.3x its pixels, for a result that only
approximates the whole-image one. On large images both cost about the same per pixel (1.88x
and 1.91x the pixels of a 1024x680 image)."""
DEFAULT_CONTEXT = 24
"""Pixels of context added on each side of a tile (reference implementation)."""
DEFAULT_SEARCH_WINDOW = 49
"""Side of the kNN search window at test time (reference implementation)."""
MIN_SIDE = 8
"""Smallest image (and tile window) side :func:`colorize` accepts."""
ENSEMBLES: tuple[str | None, ...] = (None, "flip")
"""Test-time ensembles of :func:`colorize`: none (the default) or ``"flip"``."""


# --------------------------------------------------------------------------------------------
# Tiling
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Span:
    """One tile along one axis: pixels ``[keep_start, keep_end)`` are its own, the model runs
    on ``[win_start, win_end)``."""

    keep_start: int
    keep_end: int
    win_start: int
    win_end: int


def _axis_tiles(extent: int, tile: int, context: int) -> list[_Span]:
    """Split ``range(extent)`` into kept segments of at most ``tile`` pixels, each with a
    window of ``tile + 2 * context`` pixels that contains it plus ``context`` pixels on both
    sides (fewer only at the image border, where the window is shifted inwards)."""
    size = tile + 2 * context
    if extent <= size:
        return [_Span(0, extent, 0, extent)]
    n = math.ceil(extent / tile)
    # Equal kept segments (rather than n-1 full ones and a sliver) balance the work per seam.
    bounds = [i * extent // n for i in range(n + 1)]
    spans = []
    for a, b in itertools.pairwise(bounds):
        start = min(max(a - context, 0), extent - size)
        spans.append(_Span(a, b, start, start + size))
    return spans


def _rise(pos: Tensor, seam: int, half: int) -> Tensor:
    """Smooth step from 0 to 1 across ``seam`` (the boundary between pixels ``seam - 1`` and
    ``seam``), over ``2 * half`` pixels: a raised-cosine ramp, a hard step if ``half`` is 0."""
    if half == 0:
        return (pos >= seam).float()
    t = ((pos + 0.5 - seam + half) / (2 * half)).clamp(0.0, 1.0)
    return 0.5 - 0.5 * torch.cos(math.pi * t)


def _axis_weights(span: _Span, extent: int, half: int) -> Tensor:
    """Blending weights of a tile over its window along one axis.

    The weight is ``rise(seam before) - rise(seam after)``: along the axis the weights of all
    tiles telescope to exactly 1, and a tile's weight is zero farther than ``half`` pixels
    outside its kept segment, so it only contributes pixels at least ``context - half`` away
    from its cut edges (image borders are not cuts: there the weight stays 1).
    """
    pos = torch.arange(span.win_start, span.win_end, dtype=torch.float32)
    up = torch.ones_like(pos) if span.keep_start == 0 else _rise(pos, span.keep_start, half)
    down = torch.zeros_like(pos) if span.keep_end == extent else _rise(pos, span.keep_end, half)
    return up - down


@contextmanager
def _graph_search_window(model: nn.Module, search_window: int | None) -> Iterator[None]:
    """Temporarily set the search window of the model's kNN graph builder, if it has one."""
    graph = getattr(model, "graph", None)
    if graph is None or not hasattr(graph, "search_window"):
        yield
        return
    previous = graph.search_window
    graph.search_window = search_window
    try:
        yield
    finally:
        graph.search_window = previous


def _as_nir_tensor(nir: np.ndarray | Tensor) -> Tensor:
    """Validate a NIR image and return it as a float32 CPU tensor ``(H, W)``."""
    img = nir.detach().cpu() if isinstance(nir, Tensor) else torch.from_numpy(np.asarray(nir))
    if img.dim() != 2:
        raise ValueError(f"expected a NIR image of shape (H, W), got {tuple(img.shape)}")
    if not img.is_floating_point():
        raise ValueError(f"expected a float NIR image in [0, 1], got dtype {img.dtype}")
    if img.numel() == 0:
        raise ValueError(f"the NIR image is empty: shape {tuple(img.shape)}")
    img = img.float()
    if not bool(torch.isfinite(img).all()):
        raise ValueError("the NIR image contains NaN or infinite values")
    lo, hi = float(img.min()), float(img.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"NIR values must lie in [0, 1], got [{lo:g}, {hi:g}]")
    return img.contiguous()


def _predict(model: nn.Module, x: Tensor, ensemble: str | None) -> Tensor:
    # One tile's prediction; "flip" averages it with that of the mirrored tile, mirrored back.
    pred = model(x)
    if ensemble == "flip":
        pred = (pred + model(x.flip(-1)).flip(-1)) / 2
    return pred


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"'{name}' must be an integer >= {minimum}, got {value!r}")


@torch.no_grad()
def colorize(
    model: nn.Module,
    nir: np.ndarray | Tensor,
    tile: int = DEFAULT_TILE,
    context: int = DEFAULT_CONTEXT,
    search_window: int | None = DEFAULT_SEARCH_WINDOW,
    device: str | torch.device = "cpu",
    ensemble: str | None = None,
) -> np.ndarray:
    """Colorize a NIR image of any size, tile by tile.

    An image that fits in one window of ``tile + 2 * context`` pixels (in both directions) is
    run whole. A larger one is cut, along each too-large axis, into segments of at most
    ``tile`` pixels; the model runs on each segment plus ``context`` pixels on each side (at
    the image border the window is shifted inwards, so every window has the full size), one
    tile at a time, so memory is bounded by the tile size. Neighbouring tiles are cross-faded
    with raised-cosine weights over ``context`` pixels centred on their common edge (weights
    sum to 1), so each tile contributes only pixels at least ``context / 2`` away from its
    cut edges and no seams show. For a purely convolutional model, the result equals the
    whole-image result wherever ``ceil(context / 2)`` is at least the receptive radius.

    In every case, the model's kNN graph (``model.graph``) searches neighbours within
    ``search_window`` pixels; the previous setting is restored afterwards, also on error.
    The model is put in eval mode (its previous mode is restored) and moved to ``device``.

    Args:
        model: A :class:`~pyg_lecc.nir.models.NIRGNN` (or any module mapping ``(1, 1, h, w)``
            NIR to ``(1, 3, h, w)`` RGB).
        nir: NIR image ``(H, W)``, float in ``[0, 1]`` (numpy array or tensor).
        tile: Side of the kept part of each tile.
        context: Pixels of context on each side of a tile.
        search_window: Side of the kNN search window; ``None`` searches the whole tile.
        device: Device to run the model on.
        ensemble: :obj:`None`, or ``"flip"``: every tile is also run mirrored left to right
            and the two predictions (the mirrored one mirrored back) are averaged, at twice
            the time (a test-time ensemble; off by default, see :data:`ENSEMBLES`).

    Returns:
        The RGB image, ``float32`` array ``(H, W, 3)`` clamped to ``[0, 1]``.

    Raises:
        ValueError: ``nir`` is not a finite float ``(H, W)`` image in ``[0, 1]`` of at least
            :data:`MIN_SIDE` pixels per side, or ``tile``, ``context`` or ``search_window``
            is out of range, or ``ensemble`` is not one of :data:`ENSEMBLES`.

    Example:
        >>> from pyg_lecc.nir.hub import nir_gnn
        >>> model = nir_gnn(features=6, rank=2, k=4, layers_per_block=1)
        >>> nir = np.random.rand(64, 40).astype(np.float32)
        >>> colorize(model, nir, tile=24, context=8, search_window=9).shape  # 3 tiles
        (64, 40, 3)
    """
    _check_int("tile", tile, 1)
    _check_int("context", context, 0)
    if ensemble not in ENSEMBLES:
        raise ValueError(f"'ensemble' must be one of {ENSEMBLES}, got {ensemble!r}")
    if search_window is not None:
        _check_int("search_window", search_window, 1)
    img = _as_nir_tensor(nir)
    H, W = img.shape
    # Smaller inputs break the 7x7 reflect padding or leave too few kNN candidates.
    if min(H, W) < MIN_SIDE:
        raise ValueError(
            f"the NIR image is too small: height x width {H}x{W}, at least {MIN_SIDE}x{MIN_SIDE}"
        )
    if tile + 2 * context < MIN_SIDE:
        raise ValueError(
            f"tiles of {tile} + 2 x {context} context pixels are too small: 'tile + 2 * context' "
            f"must be at least {MIN_SIDE}"
        )
    device = torch.device(device)

    rows = _axis_tiles(H, tile, context)
    cols = _axis_tiles(W, tile, context)
    half = context // 2
    # Accumulated in the (H, W, 3) layout that is returned: no full-size copy at the end.
    out = torch.zeros(H, W, 3)
    total = torch.zeros(H, W)

    was_training = model.training
    model.to(device)
    model.eval()
    try:
        with _graph_search_window(model, search_window):
            for ry in rows:
                wy = _axis_weights(ry, H, half)
                for cx in cols:
                    wx = _axis_weights(cx, W, half)
                    window = (slice(ry.win_start, ry.win_end), slice(cx.win_start, cx.win_end))
                    x = img[window][None, None].to(device)
                    pred = _predict(model, x, ensemble)[0].float().cpu()
                    weight = wy[:, None] * wx[None, :]
                    out[window] += pred.permute(1, 2, 0) * weight[..., None]
                    total[window] += weight
    finally:
        model.train(was_training)
    # The weights form a partition of unity; dividing only removes rounding differences.
    out /= total[..., None]
    return out.clamp_(0.0, 1.0).numpy()


def colorize_file(
    model: nn.Module,
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    overwrite: bool = False,
    **kwargs: object,
) -> np.ndarray:
    """Colorize a NIR image file (PNG, JPEG or TIFF; 8 or 16 bit) into an 8-bit RGB PNG.

    Args:
        model: See :func:`colorize`.
        input_path: NIR image file, read with :func:`~pyg_lecc.nir.data.read_nir`.
        output_path: Destination PNG, written atomically with
            :func:`~pyg_lecc.nir.data.write_rgb_png`.
        overwrite: Replace an existing ``output_path`` instead of raising.
        **kwargs: Passed to :func:`colorize` (``tile``, ``context``, ``search_window``,
            ``device``).

    Returns:
        The colorized image, ``float32`` ``(H, W, 3)`` in ``[0, 1]``.

    Raises:
        FileExistsError: ``output_path`` exists and ``overwrite`` is false, also when another
            process creates it while the image is colorized (checked before any work is done,
            and again when the file is created).
        OSError: ``output_path`` cannot be written (see
            :func:`~pyg_lecc.nir.data.refuse_existing_outputs` and
            :func:`refuse_unwritable_folders`, checked before any work is done).
        ValueError: ``output_path`` is ``input_path`` (also through links), whatever
            ``overwrite`` says (checked before any work is done).
        ImageReadError: ``input_path`` is missing or not a readable NIR image.

    Example:
        >>> colorize_file(model, "scene_nir.tif", "out/scene.png")  # doctest: +SKIP
    """
    output_path = Path(output_path)
    refuse_inputs_as_outputs([output_path], [Path(input_path)])
    refuse_existing_outputs([output_path], overwrite)
    refuse_unwritable_folders([output_path])
    rgb = colorize(model, read_nir(input_path), **kwargs)  # type: ignore[arg-type]
    write_rgb_png(output_path, rgb, overwrite=overwrite)
    return rgb


def refuse_inputs_as_outputs(outputs: Iterable[Path], inputs: Iterable[Path]) -> None:
    """Refuse to write over an input file, whatever ``overwrite`` says.

    Paths are compared after resolving symbolic links and ``..``, and existing files also by
    identity (device and inode), which catches hard links and case-insensitive file systems.

    Raises:
        ValueError: An output is one of the inputs (the message names both paths).

    Example:
        >>> refuse_inputs_as_outputs([Path("out/a.png")], [Path("in/a.png")])
    """
    known: dict[Path | tuple[int, int], Path] = {}
    for src in inputs:
        for key in _file_keys(src):
            known[key] = src
    for dst in outputs:
        for key in _file_keys(dst):
            if key in known:
                raise ValueError(
                    f"refusing to write {dst}: it is the input file {known[key]} (choose "
                    "another output path)"
                )


def refuse_unwritable_folders(outputs: Iterable[Path]) -> None:
    """Refuse, before any work, outputs in a folder that cannot be written (permissions, a
    read-only file system): a nameless file is created and dropped in the nearest existing
    folder of each output, which is the one an output or its missing folders go into.

    Raises:
        OSError: A folder cannot be written in (the message names it).

    Example:
        >>> refuse_unwritable_folders([Path("out/a.png")])  # doctest: +SKIP
    """
    probed: set[Path] = set()
    for path in outputs:
        folder = next((p for p in Path(path).absolute().parents if p.is_dir()), None)
        if folder is None or folder in probed:
            continue
        probed.add(folder)
        try:
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as err:
            raise type(err)(f"cannot write in the output folder {folder} ({err.strerror})") from err


def _file_keys(path: Path) -> list[Path | tuple[int, int]]:
    keys: list[Path | tuple[int, int]] = [path.resolve()]
    if path.exists():
        st = path.stat()
        if st.st_ino:  # 0 where the file system has no inode numbers
            keys.append((st.st_dev, st.st_ino))
    return keys


# --------------------------------------------------------------------------------------------
# Weights and sample images
# --------------------------------------------------------------------------------------------


def resolve_weights(weights: str | os.PathLike[str] = "default", model: str = "nir-gnn") -> Path:
    """Path of a weights file: ``weights`` itself, or for ``"default"`` the weights shipped
    for ``model``.

    Raises:
        FileNotFoundError: The file does not exist (the message names it).
        ValueError: ``model`` is not a registered model name, or ``weights`` is a directory.

    Example:
        >>> resolve_weights("default", "cnn").name  # doctest: +SKIP
        'cnn.safetensors'
    """
    if str(weights) == "default":
        path = default_weights_path(model)
        if not path.is_file():
            raise FileNotFoundError(
                f"the default weights of model {model!r} are missing: {path} does not exist "
                "(pass the path of a weights file instead)"
            )
        return path
    path = Path(weights)
    if path.is_dir():
        raise ValueError(f"the weights file {path} is a directory")
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    return path


def load_model(
    weights: str | os.PathLike[str] = "default",
    model: str = "nir-gnn",
    device: str | torch.device = "cpu",
) -> tuple[NIRGNN, str]:
    """Load a trained model from a weights file, in eval mode.

    The architecture and the model name come from the weights file; ``model`` only chooses
    which default weights ``weights="default"`` means.

    Args:
        weights: Path of a file written by :func:`~pyg_lecc.nir.hub.save_weights`, or
            ``"default"`` for the weights shipped with the package.
        model: ``"nir-gnn"`` or ``"cnn"``.
        device: Device to move the model to.

    Returns:
        The model and its name (``"nir-gnn"`` or ``"cnn"``).

    Raises:
        FileNotFoundError: The weights file does not exist.
        ValueError: The file is not a valid weights file, or ``model`` is unknown.

    Example:
        >>> net, name = load_model("runs/gnn/best.safetensors")  # doctest: +SKIP
    """
    net, name = model_from_weights(resolve_weights(weights, model))
    return net.to(device), name


def sample_dir() -> Path:
    """Folder of the sample NIR/RGB pairs bundled with the package (see its README.md)."""
    return Path(str(resources.files("pyg_lecc.nir") / "samples"))


def sample_pairs() -> list[ImagePair]:
    """The sample NIR/RGB pairs bundled with the package: four VCIP 2020 validation pairs
    (0000, and 0004, 0013, 0016 shown in the paper's figures), sorted by name.

    Example:
        >>> [p.name for p in sample_pairs()]
        ['validation_0000', 'validation_0004', 'validation_0013', 'validation_0016']
    """
    return find_pairs(sample_dir(), "validation")
