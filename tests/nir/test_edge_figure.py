import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from pyg_lecc.nir.hub import cnn_baseline, save_weights

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("edge_figure", REPO / "scripts" / "edge_figure.py")
edge_figure = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(edge_figure)


@pytest.mark.parametrize("size", [1, 3, 7])
def test_strongest_window_matches_a_scan_of_every_window(size):
    strength = np.random.default_rng(size).random((13, 17))
    sums = {
        (y, x): strength[y : y + size, x : x + size].sum()
        for y in range(13 - size + 1)
        for x in range(17 - size + 1)
    }
    best = max(sums.values())
    first = min(key for key, value in sums.items() if np.isclose(value, best))
    assert edge_figure.strongest_window(strength, size) == first


def test_strongest_window_refuses_a_crop_larger_than_the_image():
    with pytest.raises(ValueError, match="crop 9 is larger than the image"):
        edge_figure.strongest_window(np.zeros((8, 12)), 9)


def test_edge_psnr_scores_only_the_strongest_pixels():
    strength = np.arange(16.0).reshape(4, 4)
    target = np.zeros((4, 4, 3))
    pred = np.zeros((4, 4, 3))
    pred[0, 0] = 0.5  # a weak pixel: outside the top quarter, so it costs nothing
    assert edge_figure.edge_psnr(pred, target, strength, 0.75) == float("inf")
    pred[3, 3] = 0.1  # one of the 4 strongest pixels: MSE 0.01 / 4
    assert edge_figure.edge_psnr(pred, target, strength, 0.75) == pytest.approx(
        10 * np.log10(4 / 0.01)
    )


def test_figure_of_two_weights_files(tmp_path, capsys):
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = cnn_baseline(features=3, layers_per_block=1)
        paths.append(tmp_path / f"w{seed}.safetensors")
        save_weights(model, "cnn", paths[-1])
    out = tmp_path / "figure.png"
    argv = ["--before", str(paths[0]), "--after", str(paths[1]), "--out", str(out)]
    assert edge_figure.main([*argv, "--crop", "32"]) == 0
    assert out.stat().st_size > 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:-1]]
    assert [(row[0], row[1]) for row in rows] == [
        (name, label)
        for name in ("validation_0000", "validation_0004", "validation_0013", "validation_0016")
        for label in ("before", "after")
    ]
    with pytest.raises(FileExistsError, match="--out"):
        edge_figure.main(argv)
