"""Tests of the pyg-lecc command line (and of examples/nir_colorize.py) on tiny synthetic data."""

import dataclasses
import gc
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from pyg_lecc.nir import cli, inference
from pyg_lecc.nir.cli import main
from pyg_lecc.nir.config import NIRGNNConfig, option_fields
from pyg_lecc.nir.data import read_nir, read_rgb
from pyg_lecc.nir.hub import save_weights
from pyg_lecc.nir.inference import colorize, load_model
from pyg_lecc.nir.metrics import METRIC_KEYS, evaluate_pair
from pyg_lecc.nir.models import NIRGNN
from pyg_lecc.nir.training import CHECKPOINT_NAME, WEIGHTS_NAME, TrainConfig, loop

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nir_colorize.py"
NAMES = ("scene_a", "scene_b")


pytestmark = pytest.mark.usefixtures("one_thread")


def _nir(h: int, w: int, seed: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = 0.5 + 0.3 * np.sin(5 * x + seed) * np.cos(4 * y)
    noise = 0.05 * np.random.default_rng(seed).standard_normal((h, w))
    return np.clip(base + noise, 0, 1)


def _write_split(base: Path, seed: int = 0) -> None:
    for i, name in enumerate(NAMES):
        nir = _nir(24, 24, seed + i)
        rgb = np.stack([nir * 0.9, nir**2, 1 - nir], axis=-1)
        (base / "nir").mkdir(parents=True, exist_ok=True)
        (base / "rgb").mkdir(parents=True, exist_ok=True)
        iio.imwrite(base / "nir" / f"{name}.png", (nir * 255).round().astype(np.uint8))
        iio.imwrite(base / "rgb" / f"{name}.png", (rgb * 255).round().astype(np.uint8))


@pytest.fixture
def data(tmp_path) -> Path:
    root = tmp_path / "data"
    _write_split(root / "train", seed=0)
    _write_split(root / "validation", seed=10)
    return root


def _tiny(non_local: bool) -> NIRGNN:
    torch.manual_seed(0)
    return NIRGNN(features=6, rank=2, k=4, layers_per_block=1, non_local=non_local).eval()


@pytest.fixture
def gnn_weights(tmp_path) -> Path:
    path = tmp_path / "tiny-gnn.pt"
    save_weights(_tiny(True), "nir-gnn", path)
    return path


@pytest.fixture
def cnn_weights(tmp_path) -> Path:
    path = tmp_path / "tiny-cnn.pt"
    save_weights(_tiny(False), "cnn", path)
    return path


def _nir_file(path: Path, h: int, w: int, seed: int = 0, bits: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    scale, dtype = (255, np.uint8) if bits == 8 else (65535, np.uint16)
    iio.imwrite(path, (_nir(h, w, seed) * scale).round().astype(dtype))
    return path


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pyg-lecc: error: ")
    return lines[0]


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------


def test_evaluate_json_matches_direct_metrics(tmp_path, data, gnn_weights, capsys):
    out = tmp_path / "res" / "val.json"
    save = tmp_path / "pngs"
    argv = ["evaluate", "--data", str(data), "--weights", str(gnn_weights), "--json", str(out)]
    assert main([*argv, "--save-dir", str(save)]) == 0
    stdout = capsys.readouterr().out
    assert "mean" in stdout and "PSNR" in stdout

    result = json.loads(out.read_text())
    assert result["model"] == "nir-gnn"
    assert result["weights"] == str(gnn_weights)
    assert result["split"] == "validation"
    assert [e["name"] for e in result["per_image"]] == sorted(NAMES)

    model, _ = load_model(gnn_weights)
    expected = []
    for name in sorted(NAMES):
        nir = read_nir(data / "validation" / "nir" / f"{name}.png")
        pred = colorize(model, nir)  # evaluate scores colorize's defaults
        expected.append(evaluate_pair(pred, read_rgb(data / "validation" / "rgb" / f"{name}.png")))
        assert iio.imread(save / f"{name}.png").shape == (24, 24, 3)
    for entry, exp in zip(result["per_image"], expected, strict=True):
        for key in METRIC_KEYS:
            assert entry[key] == pytest.approx(exp[key], rel=1e-6, abs=1e-9)
    for key in METRIC_KEYS:
        assert result[key] == pytest.approx(np.mean([e[key] for e in expected]), rel=1e-6)


def test_evaluate_refuses_to_overwrite_json(tmp_path, data, cnn_weights, capsys):
    out = tmp_path / "val.json"
    out.write_text("{}")
    argv = ["evaluate", "--data", str(data), "--weights", str(cnn_weights), "--json", str(out)]
    assert main(argv) == 2
    assert "val.json" in _error_line(capsys)
    assert out.read_text() == "{}"
    assert main([*argv, "--overwrite", "--model", "nir-gnn"]) == 0
    # The weights file, not --model, names the model.
    assert json.loads(out.read_text())["model"] == "cnn"


def test_evaluate_refuses_to_overwrite_png(tmp_path, data, cnn_weights, capsys):
    save = tmp_path / "pngs"
    save.mkdir()
    (save / "scene_b.png").write_bytes(b"old")
    argv = ["evaluate", "--data", str(data), "--weights", str(cnn_weights)]
    assert main([*argv, "--save-dir", str(save)]) == 2
    assert "scene_b.png" in _error_line(capsys)
    assert (save / "scene_b.png").read_bytes() == b"old"
    assert not (save / "scene_a.png").exists()


# --------------------------------------------------------------------------------------------
# colorize
# --------------------------------------------------------------------------------------------


def test_colorize_writes_pngs(tmp_path, gnn_weights, capsys):
    a = _nir_file(tmp_path / "in" / "a_nir.png", 24, 24)
    b = _nir_file(tmp_path / "in" / "b.tif", 30, 41, seed=1, bits=16)
    out = tmp_path / "out"
    argv = ["colorize", str(a), str(b), "-o", str(out), "--weights", str(gnn_weights)]
    assert main([*argv, "--tile", "16", "--context", "4", "--search-window", "9"]) == 0
    for name, shape in (("a_nir.png", (24, 24, 3)), ("b.png", (30, 41, 3))):
        img = iio.imread(out / name)
        assert img.shape == shape and img.dtype == np.uint8
    stdout = capsys.readouterr().out
    assert stdout.count(" s  peak ") == 2
    assert "30x41 (height x width)" in stdout  # the order of every size message


def test_colorize_refuses_overwrite(tmp_path, cnn_weights, capsys):
    a = _nir_file(tmp_path / "a.png", 20, 20)
    b = _nir_file(tmp_path / "b.png", 20, 20, seed=1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.png").write_bytes(b"precious")
    argv = ["colorize", str(a), str(b), "-o", str(out), "--weights", str(cnn_weights)]
    assert main(argv) == 2
    assert "b.png" in _error_line(capsys)
    assert (out / "b.png").read_bytes() == b"precious"
    assert not (out / "a.png").exists()  # nothing written at all

    assert main([*argv, "--overwrite"]) == 0
    assert iio.imread(out / "b.png").shape == (20, 20, 3)
    assert iio.imread(out / "a.png").shape == (20, 20, 3)


def test_colorize_demo(tmp_path, cnn_weights, capsys):
    out = tmp_path / "demo"
    argv = ["colorize", "--demo", "-o", str(out), "--weights", str(cnn_weights)]
    assert main([*argv, "--tile", "256"]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == [f"validation_{n}_nir.png" for n in ("0000", "0004", "0013", "0016")]
    assert iio.imread(out / written[0]).shape == (256, 256, 3)
    assert capsys.readouterr().out.count("PSNR") == 4


def test_colorize_does_not_replace_an_output_written_by_another_run(
    tmp_path, cnn_weights, capsys, monkeypatch
):
    a = _nir_file(tmp_path / "a.png", 20, 20)
    out = tmp_path / "out"
    out.mkdir()
    encode = iio.imwrite

    def other_run_finishes_first(*args, **kwargs):  # after every check, before our write
        (out / "a.png").write_bytes(b"other run")
        return encode(*args, **kwargs)

    monkeypatch.setattr(iio, "imwrite", other_run_finishes_first)
    argv = ["colorize", str(a), "-o", str(out), "--weights", str(cnn_weights)]
    assert main(argv) == 2
    assert f"{out / 'a.png'} already exists" in _error_line(capsys)
    assert (out / "a.png").read_bytes() == b"other run"
    assert main([*argv, "--overwrite"]) == 0
    assert iio.imread(out / "a.png").shape == (20, 20, 3)


def test_colorize_on_a_full_disk_reports_one_error(tmp_path, cnn_weights, capsys, full_disk):
    a = _nir_file(tmp_path / "a.png", 20, 20)
    out = tmp_path / "out"
    out.mkdir()
    unraisable = full_disk(out)
    assert main(["colorize", str(a), "-o", str(out), "--weights", str(cnn_weights)]) == 2
    gc.collect()  # the __del__ of anything the failed write left behind
    assert unraisable == []
    assert _error_line(capsys).endswith(f"No space left on device: {out / 'a.png'}")
    assert list(out.iterdir()) == []


def _writing_argv(command: str, tmp_path: Path, data: Path, weights: Path, out: Path) -> list:
    """A colorize or evaluate command line that writes into the folder ``out``."""
    weights_args = ["--weights", str(weights)]
    if command == "colorize":
        a = _nir_file(tmp_path / "a.png", 20, 20)
        return ["colorize", str(a), "-o", str(out), *weights_args]
    if command == "evaluate_save_dir":
        return ["evaluate", "--data", str(data), *weights_args, "--save-dir", str(out)]
    return ["evaluate", "--data", str(data), *weights_args, "--json", str(out / "v.json")]


@pytest.mark.parametrize("command", ["colorize", "evaluate_save_dir", "evaluate_json"])
def test_an_output_folder_that_is_a_file_is_refused_before_any_work(
    command, tmp_path, data, cnn_weights, capsys
):
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    argv = _writing_argv(command, tmp_path, data, cnn_weights, blocker)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no model loaded, nothing run
    assert f"{blocker} is a file, not a folder" in captured.err
    assert blocker.read_text() == "not a folder"


@pytest.fixture
def read_only(tmp_path):
    """A folder nobody may write in: mode 0555 and, for root (whom modes do not stop), the
    immutable attribute (``chattr +i``) where the file system has it."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    immutable = False
    if os.access(folder, os.W_OK) and shutil.which("chattr"):  # root
        done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
        immutable = done.returncode == 0
    try:
        probe = folder / "probe"
        try:
            probe.touch()
        except OSError:
            pass
        else:
            probe.unlink()
            pytest.skip("this user can write in any folder here (no chattr +i)")
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


@pytest.mark.parametrize("sub", ["", "new"])
@pytest.mark.parametrize("command", ["colorize", "evaluate_save_dir", "evaluate_json"])
def test_a_read_only_output_folder_is_refused_before_any_work(
    command, sub, tmp_path, data, cnn_weights, capsys, monkeypatch, read_only
):
    monkeypatch.setattr(cli, "colorize", lambda *a, **k: pytest.fail("an image was colorized"))
    out = read_only / sub
    argv = _writing_argv(command, tmp_path, data, cnn_weights, out)
    assert main(argv) == 2
    assert f"cannot write in the output folder {read_only}" in _error_line(capsys)
    assert list(read_only.iterdir()) == []


def test_colorize_file_refuses_a_read_only_folder_before_any_work(
    tmp_path, cnn_weights, monkeypatch, read_only
):
    monkeypatch.setattr(inference, "colorize", lambda *a, **k: pytest.fail("colorized"))
    a = _nir_file(tmp_path / "a.png", 20, 20)
    model, _ = load_model(cnn_weights)
    with pytest.raises(OSError, match=f"cannot write in the output folder {read_only}"):
        inference.colorize_file(model, a, read_only / "a.png")


@pytest.mark.parametrize("route", ["same_folder", "dotdot", "symlinked_folder", "hard_link"])
def test_colorize_never_writes_over_an_input(route, tmp_path, cnn_weights, capsys):
    scene = _nir_file(tmp_path / "in" / "scene.png", 16, 16)
    before = scene.read_bytes()
    out = tmp_path / "in"
    if route == "dotdot":
        out = tmp_path / "in" / ".." / "in"
    elif route == "symlinked_folder":
        out = tmp_path / "link"
        out.symlink_to(tmp_path / "in", target_is_directory=True)
    elif route == "hard_link":  # the same file under another name, as on case-insensitive disks
        out = tmp_path / "out"
        out.mkdir()
        (out / "scene.png").hardlink_to(scene)
    argv = ["colorize", str(scene), "-o", str(out), "--weights", str(cnn_weights), "--overwrite"]
    assert main(argv) == 2
    line = _error_line(capsys)
    assert f"input file {scene}" in line
    assert scene.read_bytes() == before


@pytest.mark.parametrize("target", ["save_dir", "json_on_weights", "json_on_image"])
def test_evaluate_never_writes_over_an_input(target, tmp_path, data, cnn_weights, capsys):
    nir_dir = data / "validation" / "nir"
    before = {p: p.read_bytes() for p in [cnn_weights, *nir_dir.iterdir()]}
    argv = ["evaluate", "--data", str(data), "--weights", str(cnn_weights), "--overwrite"]
    if target == "save_dir":  # plain layout: the PNGs would be named like the NIR inputs
        argv += ["--save-dir", str(nir_dir)]
        victim = nir_dir / "scene_a.png"
    elif target == "json_on_weights":
        argv += ["--json", str(cnn_weights)]
        victim = cnn_weights
    else:
        argv += ["--json", str(nir_dir / "scene_b.png")]
        victim = nir_dir / "scene_b.png"
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # refused before any work
    assert f"input file {victim}" in captured.err
    assert {p: p.read_bytes() for p in before} == before


def test_evaluate_finishes_good_pairs_and_reports_bad_ones(tmp_path, data, cnn_weights, capsys):
    val = data / "validation"
    _bad_png(val / "nir" / "scene_a.png")
    _nir_file(val / "nir" / "scene_c.png", 24, 24)  # its RGB partner is 20x20: size mismatch
    iio.imwrite(val / "rgb" / "scene_c.png", np.zeros((20, 20, 3), np.uint8))
    save, report = tmp_path / "pngs", tmp_path / "val.json"
    argv = ["evaluate", "--data", str(data), "--weights", str(cnn_weights)]
    assert main([*argv, "--save-dir", str(save), "--json", str(report)]) == 2
    line = _error_line(capsys)
    assert "2 of 3 pairs could not be evaluated" in line
    assert "scene_a (" in line and "scene_c (" in line and "scene_b (" not in line
    assert f"the other 1 were written to {save}" in line
    assert sorted(p.name for p in save.iterdir()) == ["scene_b.png"]
    assert not report.exists()


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("unknown_config_key", "unknown config key"),
        ("config_tensor_mismatch", "do not match its config"),
        ("missing_tensor", "missing tensors (1): last.bias"),
        ("unregistered_model", "unknown model 'resnet'"),
        ("random_binary", "not a safetensors file or a PyTorch weights archive"),
        ("truncated", "not a safetensors file or a PyTorch weights archive"),
    ],
)
def test_damaged_weights_exit_code_2(kind, needle, tmp_path, capsys):
    model = _tiny(True)
    blob = {"model": "nir-gnn", "config": model.config(), "state_dict": model.state_dict()}
    if kind == "unknown_config_key":
        blob["config"]["colour"] = 3
    elif kind == "config_tensor_mismatch":
        blob["config"]["features"] = 9
    elif kind == "missing_tensor":
        del blob["state_dict"]["last.bias"]
    elif kind == "unregistered_model":
        blob["model"] = "resnet"
    path = tmp_path / "damaged.pt"
    torch.save(blob, path)
    if kind == "random_binary":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    good = _nir_file(tmp_path / "good.png", 16, 16)
    argv = ["colorize", str(good), "-o", str(tmp_path / "out"), "--weights", str(path)]
    assert main(argv) == 2
    line = _error_line(capsys)
    assert str(path) in line and needle in line and "weights_only" not in line
    assert not (tmp_path / "out").exists()


def _bad_png(path: Path) -> Path:
    path.write_text("not an image")
    return path


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("missing_input", "nope_nir.png"),
        ("directory_input", "scene.png is a directory"),
        ("corrupt_input", "broken.png"),
        ("colour_input", "colour.png"),
        ("missing_weights", "absent.pt"),
        ("bad_weights", "garbage.pt"),
        ("missing_default_weights", "nir-gnn.pt"),
        ("missing_data", "no_such_dir"),
        ("unpaired_data", "scene_a"),
        ("bad_device", "bogus"),
        ("no_input", "INPUT"),
        ("demo_with_input", "--demo"),
        ("duplicate_output", "x.png"),
    ],
)
def test_bad_input_exit_code_2(case, needle, tmp_path, data, cnn_weights, capsys, monkeypatch):
    good = _nir_file(tmp_path / "good.png", 16, 16)
    out = ["-o", str(tmp_path / "out")]
    weights = ["--weights", str(cnn_weights)]
    if case == "missing_input":
        argv = ["colorize", str(tmp_path / "nope_nir.png"), *out, *weights]
    elif case == "directory_input":
        (tmp_path / "scene.png").mkdir()
        argv = ["colorize", str(tmp_path / "scene.png"), *out, *weights]
    elif case == "corrupt_input":
        argv = ["colorize", str(_bad_png(tmp_path / "broken.png")), *out, *weights]
    elif case == "colour_input":
        colour = tmp_path / "colour.png"
        iio.imwrite(colour, np.random.default_rng(0).integers(0, 256, (8, 8, 3), np.uint8))
        argv = ["colorize", str(colour), *out, *weights]
    elif case == "missing_weights":
        argv = ["colorize", str(good), *out, "--weights", str(tmp_path / "absent.pt")]
    elif case == "bad_weights":
        garbage = tmp_path / "garbage.pt"
        garbage.write_bytes(b"\x00" * 10)
        argv = ["evaluate", "--data", str(data), "--weights", str(garbage)]
    elif case == "missing_default_weights":
        missing = tmp_path / "weights" / "nir-gnn.pt"
        monkeypatch.setattr(inference, "default_weights_path", lambda name: missing)
        argv = ["colorize", str(good), *out, "--weights", "default"]
    elif case == "missing_data":
        argv = ["evaluate", "--data", str(tmp_path / "no_such_dir"), *weights]
    elif case == "unpaired_data":
        (data / "validation" / "rgb" / "scene_a.png").unlink()
        argv = ["evaluate", "--data", str(data), *weights]
    elif case == "bad_device":
        argv = ["colorize", str(good), *out, *weights, "--device", "bogus"]
    elif case == "no_input":
        argv = ["colorize", *out, *weights]
    elif case == "demo_with_input":
        argv = ["colorize", "--demo", str(good), *out, *weights]
    else:  # two inputs with the same stem
        x1 = _nir_file(tmp_path / "d1" / "x.png", 16, 16)
        x2 = _nir_file(tmp_path / "d2" / "x.png", 16, 16)
        argv = ["colorize", str(x1), str(x2), *out, *weights]
    assert main(argv) == 2
    assert needle in _error_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv",
    [[], ["colorize", "a.png", "--tile", "0"], ["evaluate", "--data", "x"], ["frobnicate"]],
)
def test_usage_errors(argv, capsys):
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_help_returns_0(capsys):
    assert main(["--help"]) == 0
    assert "colorize" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------


def _capture_train(monkeypatch) -> list:
    """Replaces training by a recorder of the configurations it is given."""
    seen = []

    def fake_train(config):
        seen.append(config)
        return {"iterations": 7, "weights": "w.pt", "val": None, "stopped": "time_budget"}

    monkeypatch.setattr(cli, "train", fake_train)
    return seen


def test_train_builds_config(tmp_path, monkeypatch, capsys):
    seen = _capture_train(monkeypatch)
    argv = ["train", "--data", "d", "--out", "o", "--model", "cnn", "--iters", "7"]
    argv += ["--lr", "2e-4", "--lr-end", "3e-5", "--threads", "1", "--no-progress", "--resume"]
    argv += ["--schedule", "cosine", "--warmup", "2", "--time-budget", "90", "--amp", "bf16"]
    argv += ["--ema", "0.99", "--holdout", "3", "--rank", "4"]
    assert main(argv) == 0
    assert seen == [
        TrainConfig(
            data=Path("d"),
            out=Path("o"),
            model="cnn",
            arch=NIRGNNConfig(rank=4),
            iters=7,
            lr=2e-4,
            lr_end=3e-5,
            threads=1,
            progress=False,
            resume=True,
            schedule="cosine",
            warmup=2,
            time_budget=90.0,
            amp="bf16",
            ema=0.99,
            holdout=3,
        )
    ]
    assert "7 of 7 iterations (time budget reached)" in capsys.readouterr().out
    # Without options, the defaults are TrainConfig's.
    assert main(["train", "--data", "d", "--out", "o"]) == 0
    assert seen[-1] == TrainConfig(data=Path("d"), out=Path("o"))
    assert main(["train", "--data", "d", "--out", "o", "--init-from", "w.pt"]) == 0
    assert seen[-1].init_from == Path("w.pt")


def test_every_training_setting_is_a_train_option():
    # _train_config maps the parsed options to TrainConfig by name.
    args = vars(cli.build_parser().parse_args(["train"]))
    names = {f.name for f in fields(TrainConfig)} - {"arch"}
    assert names <= args.keys()
    assert {f.name for f in option_fields()} <= args.keys()


def test_architecture_options_come_from_the_config_fields(monkeypatch, capsys):
    assert [f.name for f in option_fields()] == ["features", "rank", "k", "layers_per_block"]
    # A new field of NIRGNNConfig gives train a new option, with its type, check and help.
    extra = dataclasses.field(
        default=5, metadata={"help": "a new size", "check": lambda v: None if v > 0 else "> 0"}
    )
    extra.name, extra.type = "new_size", "int"
    monkeypatch.setattr(cli, "option_fields", lambda: [*option_fields(), extra])
    parser = cli.build_parser()
    assert parser.parse_args(["train", "--new-size", "7"]).new_size == 7
    assert parser.parse_args(["train"]).new_size == 5
    assert main(["train", "--new-size", "0"]) == 2
    assert "--new-size: must be > 0, got 0" in capsys.readouterr().err
    assert main(["train", "--help"]) == 0
    assert re.search(r"--new-size NEW_SIZE\s+a new size \(default: 5\)", capsys.readouterr().out)


@pytest.mark.parametrize(
    ("value", "error"),
    [("10", "must be a positive multiple of 3, got 10"), ("x", "expected an integer, got 'x'")],
)
def test_architecture_options_are_checked_by_the_config(value, error, capsys):
    assert main(["train", "--data", "d", "--out", "o", "--features", value]) == 2
    assert f"--features: {error}" in capsys.readouterr().err


def test_train_reads_a_config_file_that_options_override(tmp_path, monkeypatch):
    seen = _capture_train(monkeypatch)
    stored = TrainConfig(
        data=tmp_path / "d",
        out=tmp_path / "o",
        arch=NIRGNNConfig(features=24, rank=4, delta=5.0),
        iters=50,
        progress=False,
        ema=0.9,
        register=False,
    )
    path = tmp_path / "run.json"
    path.write_text(json.dumps(stored.to_dict()))
    assert main(["train", "--config", str(path)]) == 0
    assert seen[-1] == stored
    argv = ["train", "--config", str(path), "--iters", "60", "--rank", "2", "--register"]
    assert main([*argv, "--out", "elsewhere"]) == 0
    expected = dataclasses.replace(stored, iters=60, register=True, out=Path("elsewhere"))
    assert seen[-1] == dataclasses.replace(expected, arch=dataclasses.replace(stored.arch, rank=2))
    # A partial file: the other settings are the defaults (not the values of old checkpoints).
    path.write_text(json.dumps({"data": "d", "out": "o", "arch": {"rank": 3}}))
    assert main(["train", "--config", str(path)]) == 0
    assert seen[-1] == TrainConfig(data=Path("d"), out=Path("o"), arch=NIRGNNConfig(rank=3))


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("{", "is not valid JSON"),
        ("[1]", "does not hold a JSON object"),
        ('{"data": "d", "out": "o", "colour": 1}', r"unknown training setting\(s\) \['colour'\]"),
        ('{"data": "d", "out": "o", "arch": {"rank": 0}}', "invalid arch: NIRGNNConfig: rank must"),
        ('{"data": "d"}', "train needs --data and --out"),
    ],
)
def test_train_refuses_a_bad_config_file(tmp_path, capsys, text, error):
    path = tmp_path / "run.json"
    path.write_text(text)
    assert main(["train", "--config", str(path)]) == 2
    assert re.search(error, _error_line(capsys))
    assert main(["train", "--config", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in _error_line(capsys)


@pytest.mark.parametrize("value", ["1", "0", "1.5", "x"])
def test_train_refuses_an_ema_decay_outside_0_1(value, capsys):
    assert main(["train", "--data", "d", "--out", "o", "--ema", value]) == 2
    assert "--ema" in capsys.readouterr().err


def test_train_tiny_run(tmp_path, data, capsys):
    run = tmp_path / "run"
    argv = ["train", "--data", str(data), "--out", str(run), "--iters", "2", "--batch-size", "2"]
    argv += ["--patch", "12", "--features", "6", "--rank", "2", "--k", "4"]
    argv += ["--layers-per-block", "1", "--val-every", "2", "--ckpt-every", "1"]
    argv += ["--threads", "1", "--no-progress"]
    assert main(argv) == 0
    assert "2 iterations" in capsys.readouterr().out
    model, name = load_model(run / WEIGHTS_NAME)
    assert name == "nir-gnn" and model.arch.features == 6
    # An existing run is not silently overwritten.
    assert main(argv) == 2
    _error_line(capsys)


def test_train_honours_an_early_sigint_inherited_as_ignored(tmp_path, data, monkeypatch, capsys):
    # A background job of a script (`pyg-lecc train ... &`) starts with SIGINT ignored; a
    # kill -INT while the data loads, before training's own handler is in place, stops it.
    real = loop.PairedImageDataset

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "PairedImageDataset", interrupted)
    run = tmp_path / "run"
    argv = ["train", "--data", str(data), "--out", str(run), "--iters", "2", "--batch-size", "2"]
    argv += ["--patch", "12", "--features", "6", "--rank", "2", "--k", "4"]
    argv += ["--layers-per-block", "1", "--threads", "1", "--no-progress"]
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code = main(argv)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 130 and "interrupted" in capsys.readouterr().err
    assert not (run / CHECKPOINT_NAME).exists() and not (run / WEIGHTS_NAME).exists()


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def test_module_entry_point():
    done = subprocess.run(
        [sys.executable, "-m", "pyg_lecc.nir.cli", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    for command in ("train", "evaluate", "colorize"):
        assert command in done.stdout


def _load_example():
    spec = importlib.util.spec_from_file_location("nir_colorize", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_script_on_folder(tmp_path, data, gnn_weights, cnn_weights, capsys):
    example = _load_example()
    out = tmp_path / "example_out"
    argv = ["--data", str(data), "--out", str(out)]
    argv += ["--gnn-weights", str(gnn_weights), "--cnn-weights", str(cnn_weights)]
    assert example.main(argv) == 0
    stdout = capsys.readouterr().out
    assert str(out) in stdout
    assert stdout.count("mean") == 2  # one table per model
    figure = iio.imread(out / "comparison.png")
    assert figure.ndim == 3 and figure.shape[0] < figure.shape[1]  # 2 rows, 4 columns
    for model in ("nir-gnn", "cnn"):
        assert sorted(p.name for p in (out / model).iterdir()) == [f"{n}.png" for n in NAMES]
    # Outputs are not replaced without --overwrite.
    before = (out / "comparison.png").read_bytes()
    assert example.main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "comparison.png").read_bytes() == before
    assert example.main([*argv, "--overwrite"]) == 0


def test_example_script_missing_default_weights(tmp_path, monkeypatch, capsys):
    example = _load_example()
    missing = tmp_path / "weights" / "x.pt"
    monkeypatch.setattr(inference, "default_weights_path", lambda name: missing)
    assert example.main(["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "default weights" in err and str(missing) in err
    assert not (tmp_path / "o").exists()
