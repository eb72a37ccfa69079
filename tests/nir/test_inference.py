"""Tests of pyg_lecc.nir.inference: tiled full-resolution colorization, files, weights, samples."""

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from pyg_lecc.nir import inference
from pyg_lecc.nir.data import ImageReadError, read_nir
from pyg_lecc.nir.hub import save_weights
from pyg_lecc.nir.inference import (
    _axis_tiles,
    colorize,
    colorize_file,
    load_model,
    resolve_weights,
    sample_pairs,
)
from pyg_lecc.nir.models import NIRGNN

# Receptive radius of the tiny models below (layers_per_block=1): three 7x7 convolutions in
# the widest branch (3 * 3) plus eight 3x3 layers (branch graph layer, HPF conv + layer, two
# LPF blocks of conv + layer, last layer).
TINY_RADIUS = 3 * 3 + 8


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(non_local: bool = True, seed: int = 0) -> NIRGNN:
    """A tiny model in eval mode whose BatchNorm statistics are random (not the identity)."""
    torch.manual_seed(seed)
    model = NIRGNN(features=6, rank=2, k=4, layers_per_block=1, non_local=non_local)
    g = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
            module.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
    return model.eval()


def smooth_nir(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A structured test image: smooth waves plus a little noise, in [0, 1]."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = 0.5 + 0.25 * np.sin(6 * x + 3 * y) * np.cos(5 * y)
    noise = 0.05 * np.random.default_rng(seed).standard_normal((h, w))
    return np.clip(base + noise, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def gnn() -> NIRGNN:
    return tiny_model(non_local=True)


@pytest.fixture(scope="module")
def cnn() -> NIRGNN:
    return tiny_model(non_local=False)


class ForwardSpy(torch.nn.Module):
    """Wraps a model, recording the input shape and graph search window of every call."""

    def __init__(self, model: NIRGNN, fail: bool = False) -> None:
        super().__init__()
        self.model = model
        self.graph = model.graph
        self.fail = fail
        self.calls: list[tuple[tuple[int, ...], int | None, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((tuple(x.shape), self.graph.search_window, torch.is_grad_enabled()))
        if self.fail:
            raise RuntimeError("boom")
        return self.model(x)


# --------------------------------------------------------------------------------------------
# colorize
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gnn", "cnn"])
def test_shape_range_dtype(kind, request):
    model = request.getfixturevalue(kind)
    out = colorize(model, smooth_nir(40, 30), tile=16, context=6, search_window=9)
    assert out.shape == (40, 30, 3)
    assert out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.std() > 0.01  # not a trivial constant image


def test_cnn_tiled_equals_whole(cnn):
    # ceil(context / 2) >= receptive radius: every pixel a tile contributes is exact.
    context = 2 * TINY_RADIUS
    nir = smooth_nir(130, 110)
    tiles = len(_axis_tiles(130, 20, context)) * len(_axis_tiles(110, 20, context))
    assert tiles > 20
    whole = colorize(cnn, nir, tile=1000, context=0)
    tiled = colorize(cnn, nir, tile=20, context=context)
    assert np.abs(tiled - whole).max() < 1e-5
    # Control: with too little context the tiles are visibly wrong, so the check has teeth.
    short = colorize(cnn, nir, tile=20, context=4)
    assert np.abs(short - whole).max() > 1e-3


def test_gnn_tiled_close_to_whole_without_seams(gnn):
    nir = smooth_nir(48, 44)
    whole = colorize(gnn, nir, tile=1000, context=0, search_window=9)
    tiled = colorize(gnn, nir, tile=16, context=8, search_window=9)
    diff = np.abs(tiled - whole)
    print(f"NIR-GNN tiled vs whole: max abs diff {diff.max():.3g}, mean {diff.mean():.3g}")
    assert diff.mean() < 0.02

    # No seam: the gradient across tile boundaries is like the gradient elsewhere.
    for axis, extent in ((0, 48), (1, 44)):
        seams = [s.keep_start for s in _axis_tiles(extent, 16, 8)[1:]]
        assert seams
        grad = np.abs(np.diff(tiled, axis=axis)).mean(axis=(1 - axis, 2))
        across = grad[[s - 1 for s in seams]].mean()
        assert across < 1.5 * grad.mean(), (axis, across, grad.mean())


def test_single_tile_equals_model(gnn):
    # Smaller than one 32x32 window: run whole, with the requested search window.
    nir = smooth_nir(20, 26)
    out = colorize(gnn, nir, tile=16, context=8, search_window=7)
    gnn.graph.search_window = 7
    try:
        with torch.no_grad():
            direct = gnn(torch.from_numpy(nir)[None, None])[0]
    finally:
        gnn.graph.search_window = None
    np.testing.assert_allclose(out, direct.clamp(0, 1).permute(1, 2, 0).numpy(), atol=1e-6)


def test_flip_ensemble_averages_the_mirrored_prediction(gnn):
    # One tile (the tiles of a mirrored image would be cut elsewhere).
    nir = smooth_nir(20, 26)
    kwargs = dict(tile=16, context=8, search_window=7)
    plain = colorize(gnn, nir, **kwargs)
    mirrored = colorize(gnn, np.ascontiguousarray(nir[:, ::-1]), **kwargs)[:, ::-1]
    both = colorize(gnn, nir, ensemble="flip", **kwargs)
    # Per pixel, the average of the two (before clamping: equal wherever neither clamps).
    inside = (plain > 0) & (plain < 1) & (mirrored > 0) & (mirrored < 1)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(both[inside], ((plain + mirrored) / 2)[inside], atol=1e-5)
    assert not np.allclose(plain, mirrored, atol=1e-3)  # the model is not symmetric itself


def test_odd_non_square_tiles_have_full_size(gnn):
    spy = ForwardSpy(gnn)
    out = colorize(spy, smooth_nir(37, 53), tile=16, context=4, search_window=9)
    assert out.shape == (37, 53, 3)
    assert out.min() >= 0.0 and out.max() <= 1.0
    # 3 x 4 tiles, each 24x24 (at the borders the window extends inwards), no gradients.
    assert len(spy.calls) == 3 * 4
    assert {c[0] for c in spy.calls} == {(1, 1, 24, 24)}
    assert all(c[1] == 9 and not c[2] for c in spy.calls)


def test_default_tiles_run_vcip_images_whole(cnn):
    # A 256x256 image (the VCIP 2020 size) runs whole, as `pyg-lecc evaluate` runs it; a
    # wider one is cut into 256-pixel windows.
    spy = ForwardSpy(cnn)
    colorize(spy, smooth_nir(256, 256))
    assert [c[0] for c in spy.calls] == [(1, 1, 256, 256)]
    spy = ForwardSpy(cnn)
    colorize(spy, smooth_nir(256, 300))
    assert [c[0] for c in spy.calls] == [(1, 1, 256, 256)] * 2


def test_one_axis_tiled_only(cnn):
    spy = ForwardSpy(cnn)
    colorize(spy, smooth_nir(20, 70), tile=16, context=4)
    assert {c[0] for c in spy.calls} == {(1, 1, 20, 24)}


def test_search_window_and_mode_restored(gnn):
    gnn.graph.search_window = 5
    gnn.train()
    try:
        spy = ForwardSpy(gnn)
        colorize(spy, smooth_nir(12, 12), search_window=11)
        assert spy.calls[0][1] == 11
        assert gnn.graph.search_window == 5
        assert gnn.training and spy.training

        failing = ForwardSpy(gnn, fail=True)
        with pytest.raises(RuntimeError, match="boom"):
            colorize(failing, smooth_nir(12, 12), search_window=11)
        assert failing.calls[0][1] == 11
        assert gnn.graph.search_window == 5
    finally:
        gnn.graph.search_window = None
        gnn.eval()


def test_tensor_input_matches_numpy(cnn):
    nir = smooth_nir(30, 20)
    a = colorize(cnn, nir, tile=12, context=4)
    b = colorize(cnn, torch.from_numpy(nir).double(), tile=12, context=4)
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize(
    ("nir", "kwargs", "match"),
    [
        (np.zeros((1, 8, 8), np.float32), {}, "shape"),
        (np.zeros((8, 8), np.uint8), {}, "float"),
        (np.full((8, 8), 1.5, np.float32), {}, r"\[0, 1\]"),
        (np.full((8, 8), np.nan, np.float32), {}, "NaN"),
        (np.zeros((8, 8), np.float32), {"tile": 0}, "tile"),
        (np.zeros((8, 8), np.float32), {"context": -1}, "context"),
        (np.zeros((8, 8), np.float32), {"search_window": 0}, "search_window"),
        (np.zeros((5, 30), np.float32), {}, "too small: height x width 5x30"),
        (np.zeros((30, 30), np.float32), {"tile": 2, "context": 2}, "too small"),
        (np.zeros((30, 30), np.float32), {"ensemble": "rotate"}, "'ensemble' must be one of"),
    ],
)
def test_invalid_arguments(cnn, nir, kwargs, match):
    with pytest.raises(ValueError, match=match):
        colorize(cnn, nir, **kwargs)


# --------------------------------------------------------------------------------------------
# Files, weights, samples
# --------------------------------------------------------------------------------------------


def test_colorize_file_16bit(tmp_path, cnn):
    raw = (smooth_nir(21, 27) * 65535).round().astype(np.uint16)
    src = tmp_path / "scene_nir.png"
    iio.imwrite(src, raw)
    assert iio.imread(src).dtype == np.uint16
    dst = tmp_path / "out" / "scene.png"
    rgb = colorize_file(cnn, src, dst, tile=16, context=4)
    written = iio.imread(dst)
    assert written.shape == (21, 27, 3) and written.dtype == np.uint8
    expected = colorize(cnn, raw.astype(np.float32) / 65535, tile=16, context=4)
    np.testing.assert_allclose(rgb, expected, atol=1e-6)
    np.testing.assert_array_equal(written, np.round(expected * 255).astype(np.uint8))


def test_colorize_file_refuses_overwrite(tmp_path, cnn):
    src = tmp_path / "a.png"
    iio.imwrite(src, (smooth_nir(12, 12) * 255).astype(np.uint8))
    dst = tmp_path / "a_rgb.png"
    dst.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match=r"a_rgb\.png"):
        colorize_file(cnn, src, dst)
    assert dst.read_bytes() == b"keep me"
    colorize_file(cnn, src, dst, overwrite=True)
    assert iio.imread(dst).shape == (12, 12, 3)
    with pytest.raises(ImageReadError, match=r"missing\.png"):
        colorize_file(cnn, tmp_path / "missing.png", tmp_path / "x.png")


def test_colorize_file_checks_the_output_folder_before_the_model_runs(tmp_path, cnn):
    src = tmp_path / "a.png"
    iio.imwrite(src, (smooth_nir(12, 12) * 255).astype(np.uint8))
    blocker = tmp_path / "out"
    blocker.write_bytes(b"a file")
    spy = ForwardSpy(cnn)
    with pytest.raises(NotADirectoryError, match=f"{blocker} is a file, not a folder"):
        colorize_file(spy, src, blocker / "a.png", overwrite=True)
    assert spy.calls == []
    assert blocker.read_bytes() == b"a file"


@pytest.mark.parametrize("route", ["same_path", "symlink", "dotdot"])
def test_colorize_file_never_writes_over_its_input(route, tmp_path, cnn):
    src = tmp_path / "scene.png"
    iio.imwrite(src, (smooth_nir(12, 12) * 255).astype(np.uint8))
    before = src.read_bytes()
    dst = src
    if route == "symlink":
        dst = tmp_path / "link.png"
        dst.symlink_to(src)
    elif route == "dotdot":
        (tmp_path / "sub").mkdir()
        dst = tmp_path / "sub" / ".." / "scene.png"
    with pytest.raises(ValueError, match=r"refusing to write .* input file .*scene\.png"):
        colorize_file(cnn, src, dst, overwrite=True)
    assert src.read_bytes() == before


def test_weights_path_is_a_directory(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        resolve_weights(tmp_path)


def test_load_model_roundtrip(tmp_path, gnn):
    path = tmp_path / "tiny.pt"
    save_weights(gnn, "nir-gnn", path)
    model, name = load_model(path, model="cnn")  # the file decides the model
    assert name == "nir-gnn" and not model.training
    nir = smooth_nir(16, 16)
    np.testing.assert_allclose(colorize(model, nir), colorize(gnn, nir), atol=1e-6)


def test_default_weights_missing_error(tmp_path, monkeypatch):
    missing = tmp_path / "weights" / "nir-gnn.pt"
    monkeypatch.setattr(inference, "default_weights_path", lambda name: missing)
    with pytest.raises(FileNotFoundError, match=r"default weights .*nir-gnn\.pt"):
        resolve_weights("default", "nir-gnn")
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        load_model(tmp_path / "nope.pt")


def test_sample_pairs():
    pairs = sample_pairs()
    names = [p.name for p in pairs]
    assert names == ["validation_0000", "validation_0004", "validation_0013", "validation_0016"]
    for pair in pairs:
        assert read_nir(pair.nir_path).shape == (256, 256)
        assert Path(pair.rgb_path).name == f"{pair.name}_rgb_reg.png"
    assert (pairs[0].nir_path.parent / "README.md").is_file()
