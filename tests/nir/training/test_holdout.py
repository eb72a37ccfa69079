"""Tests of pyg_lecc.nir.training.holdout: held-out selection pairs, by seed and by name."""

from pathlib import Path

import pytest
from training_helpers import (
    _config,
    _load,
    _log,
)

from pyg_lecc.nir import training
from pyg_lecc.nir.data import PairedImageDataset, RandomPatchSampler
from pyg_lecc.nir.training import TrainConfig, holdout, train


def test_holdout_selects_the_exported_weights_on_training_pairs(data, tmp_path, monkeypatch):
    drawn = set()
    original = RandomPatchSampler.__init__

    def init(self, dataset, *args, **kwargs):
        drawn.update(pair.name for pair in dataset.pairs)
        original(self, dataset, *args, **kwargs)

    monkeypatch.setattr(RandomPatchSampler, "__init__", init)
    out = tmp_path / "run"
    summary = train(_config(data, out, iters=6, val_every=2, holdout=1))

    log = _log(out / "log.jsonl")
    select = [e for e in log if e["kind"] == "select"]
    val = [e for e in log if e["kind"] == "val"]
    assert [e["iteration"] for e in select] == [2, 4, 6] == [e["iteration"] for e in val]
    best = max(select, key=lambda e: e["psnr"])
    assert summary["selected_iteration"] == best["iteration"]
    # The reported validation metrics are those of the selected weights.
    chosen = next(e for e in val if e["iteration"] == best["iteration"])
    assert summary["val"]["psnr"] == chosen["psnr"]
    assert (out / "best.safetensors").read_bytes() == (out / "weights.safetensors").read_bytes()
    assert len(drawn) == 2  # one of the three training pairs was held out


def test_holdout_must_leave_training_pairs(data, tmp_path):
    with pytest.raises(ValueError, match="holdout"):
        train(_config(data, tmp_path / "run", holdout=3))


def _drawn_pairs(monkeypatch) -> set[str]:
    drawn: set[str] = set()
    original = RandomPatchSampler.__init__

    def init(self, dataset, *args, **kwargs):
        drawn.update(pair.name for pair in dataset.pairs)
        original(self, dataset, *args, **kwargs)

    monkeypatch.setattr(RandomPatchSampler, "__init__", init)
    return drawn


@pytest.mark.parametrize("seed", [0, 3])
def test_holdout_pairs_are_held_out_by_name_whatever_the_seed(data, tmp_path, monkeypatch, seed):
    names = tmp_path / "holdout.txt"
    names.write_text("# selection pairs\n\nimg1  # the middle one\n")
    drawn = _drawn_pairs(monkeypatch)
    out = tmp_path / "run"
    train(_config(data, out, iters=2, val_every=2, seed=seed, holdout_pairs=names))
    assert drawn == {"img0", "img2"}
    assert [e["kind"] for e in _log(out / "log.jsonl")].count("select") == 1
    # The checkpoint names the file by its absolute path: a resume from elsewhere compares it.
    assert _load(out / "checkpoint.pt")["config"]["holdout_pairs"] == str(names.resolve())


def test_holdout_pairs_must_exist_and_leave_training_pairs(data, tmp_path):
    names = tmp_path / "holdout.txt"
    names.write_text("img1\nimg7\nmountain_0011\n")
    with pytest.raises(ValueError, match=r"img7, mountain_0011 of .* not in the training split"):
        train(_config(data, tmp_path / "a", holdout_pairs=names))
    names.write_text("img0\nimg1\nimg2\n")
    with pytest.raises(ValueError, match="must leave training pairs"):
        train(_config(data, tmp_path / "b", holdout_pairs=names))
    with pytest.raises(ValueError, match="one or the other"):
        _config(data, tmp_path / "c", holdout=1, holdout_pairs="default")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("text", "message"), [("", "names no pair"), ("a\nb\na # again\n", "names a twice")]
)
def test_read_holdout_pairs_refuses_bad_files(tmp_path, text, message):
    path = tmp_path / "holdout.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        training.read_holdout_pairs(path)
    with pytest.raises(FileNotFoundError):
        training.read_holdout_pairs(tmp_path / "absent.txt")


def test_default_holdout_pairs_are_the_seed_1_split_of_the_vcip_data():
    names = training.read_holdout_pairs("default")
    assert training.DEFAULT_HOLDOUT_PAIRS.is_file() and len(names) == 12
    # ../shared/data/vcip2020 next to the repository, where the project keeps it.
    vcip = Path(__file__).resolve().parents[4] / "shared" / "data" / "vcip2020"
    if not vcip.is_dir():
        pytest.skip(f"the VCIP 2020 data is not at {vcip}")
    pairs = PairedImageDataset(vcip, "train", preload=False)
    config = TrainConfig(data=vcip, out=vcip / "unused", holdout=12, seed=1)
    assert [pairs.pairs[i].name for i in holdout.holdout_indices(pairs, config)] == names
