"""Tests of TrainConfig.register: the trainer trains and selects on registered training pairs,
validates on the pairs as stored, and runs started before the option resume unregistered."""

from pathlib import Path

import numpy as np
import pytest
from test_registered_data import _make_misregistered
from training_helpers import _config

from pyg_lecc.nir.cli import build_parser
from pyg_lecc.nir.data import PairedImageDataset, find_pairs, load_pair
from pyg_lecc.nir.registration import estimate_shift, register_pair
from pyg_lecc.nir.training import loop, train
from pyg_lecc.nir.training.checkpoint import _check_resume_config
from pyg_lecc.nir.training.holdout import _split_holdout
from pyg_lecc.nir.training.validation import _load_validation


@pytest.fixture(scope="module")
def misregistered(tmp_path_factory) -> Path:
    return _make_misregistered(tmp_path_factory.mktemp("misregistered"))


@pytest.mark.parametrize("register", [True, False])
def test_the_trainer_builds_its_training_set_as_configured(data, tmp_path, monkeypatch, register):
    seen = []
    original = loop.PairedImageDataset

    def spy(*args, **kwargs):
        seen.append(kwargs.get("register"))
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "PairedImageDataset", spy)
    train(_config(data, tmp_path / "run", model="cnn", iters=1, register=register))
    assert seen == [register]


def test_held_out_pairs_are_registered_and_validation_pairs_are_not(misregistered, tmp_path):
    names = tmp_path / "held_out.txt"
    names.write_text("shifted\n")
    config = _config(misregistered, tmp_path / "run", holdout_pairs=str(names))
    kept, selection = _split_holdout(PairedImageDataset(misregistered, register=True), config)
    assert [p.name for p in kept.pairs] == ["flat"]
    # The held-out pair: moved into register like a training pair.
    name, nir, rgb = selection[0]
    stored = load_pair(find_pairs(misregistered)[1])
    expected = register_pair(*stored, estimate_shift(*stored))
    assert name == "shifted" and expected[0].shape != stored[0].shape
    np.testing.assert_array_equal(nir[0, 0].numpy(), expected[0])
    np.testing.assert_array_equal(rgb, expected[1])
    # The validation pair, misregistered the same way, stays exactly as stored.
    (val_name, val_nir, val_rgb), *_ = _load_validation(config)
    stored = load_pair(find_pairs(misregistered, "validation")[0])
    assert val_name == "shifted"
    np.testing.assert_array_equal(val_nir[0, 0].numpy(), stored[0])
    np.testing.assert_array_equal(val_rgb, stored[1])


def test_a_checkpoint_from_before_register_resumes_unregistered(data, tmp_path):
    path = tmp_path / "run" / "checkpoint.pt"
    stored = _config(data, path.parent).to_dict()
    del stored["register"]  # as written before the option existed
    _check_resume_config(stored, _config(data, path.parent, register=False), path)
    with pytest.raises(ValueError, match=r"register \(checkpoint: False, now: True\).*--no-reg"):
        _check_resume_config(stored, _config(data, path.parent), path)


def test_register_is_on_by_default_and_off_with_no_register():
    args = ["train", "--data", "d", "--out", "o"]
    assert build_parser().parse_args(args).register is True
    assert build_parser().parse_args([*args, "--no-register"]).register is False
    assert _config(Path("d"), Path("o")).register is True


@pytest.mark.parametrize("register", [True, False])
def test_finish_scores_the_held_out_pairs_as_the_trainer_had_them(
    misregistered, tmp_path, register
):
    from pyg_lecc.nir.continuation import _evaluation_data

    names = tmp_path / "held_out.txt"
    names.write_text("shifted\n")
    config = _config(misregistered, tmp_path / "run", holdout_pairs=str(names), register=register)
    held_out, validation, kept = _evaluation_data(config)
    _, selection = _split_holdout(PairedImageDataset(misregistered, register=register), config)
    assert [name for name, *_ in held_out] == [name for name, *_ in selection] == ["shifted"]
    np.testing.assert_array_equal(held_out[0][1], selection[0][1][0, 0].numpy())
    np.testing.assert_array_equal(held_out[0][2], selection[0][2])
    stored = load_pair(find_pairs(misregistered)[1])
    assert (held_out[0][1].shape != stored[0].shape) is register
    # The validation pairs are as stored either way.
    np.testing.assert_array_equal(
        validation[0][1], load_pair(find_pairs(misregistered, "validation")[0])[0]
    )
    assert [p.name for p in kept.pairs] == ["flat"]


def test_finish_reads_a_run_from_before_register_as_unregistered(data, tmp_path):
    from pyg_lecc.nir.continuation import _run_config

    config = _config(data, tmp_path / "run", model="nir-gnn", iters=1)
    stored = {k: v for k, v in config.to_dict().items() if k != "register"}
    assert _run_config({"config": stored}, tmp_path / "run", None).register is False
    stored["register"] = True
    assert _run_config({"config": stored}, tmp_path / "run", None).register is True
