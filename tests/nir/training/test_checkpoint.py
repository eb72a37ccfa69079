"""Tests of pyg_lecc.nir.training.checkpoint: checkpoint files, exact resume and the checks
before a run starts or resumes."""

import io
from pathlib import Path

import pytest
import torch
from training_helpers import (
    MODELS,
    _assert_states_equal,
    _config,
    _kill_on_sample,
    _Killed,
    _load,
    _log,
    _without_times,
)
from weights_helpers import flip_a_tensor_byte

from pyg_lecc.nir.hub import load_weights
from pyg_lecc.nir.metrics import METRIC_KEYS
from pyg_lecc.nir.training import loop, train
from pyg_lecc.nir.training.checkpoint import _CHECKPOINT_FORMAT, load_checkpoint


def test_checkpoint_loads_with_weights_only(data, tmp_path):
    out = tmp_path / "run"
    train(_config(data, out, model="cnn", iters=3))
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["iteration"] == 3 and ckpt["world_size"] == 1
    expected = _config(data, out, model="cnn", iters=3).to_dict()
    assert ckpt["config"] == {**expected, "data": str(data.resolve()), "out": str(out.resolve())}
    assert ckpt["sampler_state"].dtype == torch.uint8
    assert torch.equal(ckpt["rank_states"][0]["sampler"], ckpt["sampler_state"])
    assert ckpt["rank_states"][0]["torch_rng"].dtype == torch.uint8
    assert ckpt["elapsed"] > 0
    assert set(ckpt["last_val"]) == set(METRIC_KEYS)
    assert any(k.endswith("running_mean") for k in ckpt["model"])
    assert ckpt["optimizer"]["state"], "Adam state missing"


def test_checkpoint_write_is_atomic(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_save = torch.save
    saves = [0]

    def save(obj, f, *args, **kwargs):
        saves[0] += 1
        if saves[0] == 2:  # the second checkpoint: write half of it, then fail
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            raise OSError("disk full")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError, match="disk full"):
        train(_config(data, out, model="cnn", iters=6, ckpt_every=2))
    monkeypatch.undo()

    assert saves[0] == 2
    ckpt = _load(out / "checkpoint.pt")
    assert ckpt["iteration"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "log.jsonl"]


@pytest.mark.parametrize("model", MODELS)
def test_resume_is_exact(data, tmp_path, monkeypatch, model):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(_config(data, straight, model=model))

    # Killed while drawing the 5th batch: checkpoint at 3, log lines up to 4.
    _kill_on_sample(monkeypatch, 5)
    with pytest.raises(_Killed):
        train(_config(data, resumed, model=model))
    monkeypatch.undo()
    killed = _load(resumed / "checkpoint.pt")
    assert killed["iteration"] == 3
    assert _log(resumed / "log.jsonl")[-1]["iteration"] == 4

    summary = train(_config(data, resumed, model=model, resume=True))
    assert summary["iterations"] == 6 and summary["iterations_this_run"] == 3

    a, b = _load(straight / "checkpoint.pt"), _load(resumed / "checkpoint.pt")
    assert any("running_var" in k for k in a["model"])
    _assert_states_equal(a["model"], b["model"])
    for p, q in zip(
        a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True
    ):
        _assert_states_equal(p, q)
    assert torch.equal(a["sampler_state"], b["sampler_state"])
    _assert_states_equal(load_weights(straight / "weights.safetensors")[1], b["model"])
    # The log reads as one run: same entries, none repeated.
    assert _without_times(_log(straight / "log.jsonl")) == _without_times(
        _log(resumed / "log.jsonl")
    )
    assert b["elapsed"] > killed["elapsed"] > 0  # training time adds up over sessions


def test_refuses_to_overwrite_a_run(data, tmp_path):
    out = tmp_path / "run"
    train(_config(data, out, model="cnn", iters=3))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(FileExistsError, match="--resume"):
        train(_config(data, out, model="cnn", iters=3))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    (out / "checkpoint.pt").unlink()  # weights and log of a run, but no checkpoint
    with pytest.raises(FileExistsError, match="another --out"):
        train(_config(data, out, model="cnn", iters=3))


def test_resume_needs_a_checkpoint(data, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(_config(data, tmp_path / "run", model="cnn", resume=True))


def test_resume_with_another_config_names_the_fields(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(_config(data, out, model="cnn", iters=3))
    with pytest.raises(ValueError, match=r"features.*lr_end") as err:
        train(_config(data, out, model="cnn", iters=3, features=9, lr_end=2e-3, resume=True))
    assert "patch" not in str(err.value) and "val_every" not in str(err.value)
    with pytest.raises(ValueError, match="iters"):
        train(_config(data, out, model="cnn", iters=4, resume=True))
    # Logging intervals and the progress bar may change, and the data folder may be given
    # relative to another working directory; a finished run resumes to itself.
    monkeypatch.chdir(data.parent)
    config = _config(Path(data.name), out, model="cnn", iters=3, val_every=7, resume=True)
    summary = train(config)
    assert summary["iterations"] == 3 and summary["iterations_this_run"] == 0
    assert set(summary["val"]) == set(METRIC_KEYS)


def test_resume_with_more_iterations_points_to_init_from(data, tmp_path):
    out = tmp_path / "run"
    train(_config(data, out, iters=2))
    with pytest.raises(ValueError, match=r"init_from=.*weights\.safetensors"):
        train(_config(data, out, iters=4, resume=True))


def test_a_budget_spent_before_the_first_iteration_leaves_a_resumable_run(data, tmp_path):
    straight, out = tmp_path / "straight", tmp_path / "run"
    train(_config(data, straight, model="cnn"))
    summary = train(_config(data, out, model="cnn", time_budget=1e-9))
    assert summary["iterations"] == 0 and summary["stopped"] == "time_budget"
    assert _load(Path(summary["checkpoint"]))["iteration"] == 0  # the file it names exists
    summary = train(_config(data, out, model="cnn", resume=True))
    assert summary["iterations"] == 6
    a, b = _load(straight / "checkpoint.pt"), _load(out / "checkpoint.pt")
    _assert_states_equal(a["model"], b["model"])  # as if never stopped


def test_a_run_that_fails_before_its_first_checkpoint_starts_again(data, tmp_path, monkeypatch):
    def full_disk(obj, path):
        raise OSError(28, "No space left on device")

    out = tmp_path / "run"
    monkeypatch.setattr(loop, "_atomic_save", full_disk)
    with (
        pytest.warns(UserWarning, match="before its first checkpoint: removed log.jsonl"),
        pytest.raises(OSError, match="No space"),
    ):
        train(_config(data, out, model="cnn"))
    monkeypatch.undo()
    assert list(out.iterdir()) == []
    assert train(_config(data, out, model="cnn"))["iterations"] == 6  # the same command


def test_a_checkpoint_with_a_flipped_bit_is_refused(tmp_path):
    # torch.load would resume from the changed tensor without a word.
    path = tmp_path / "checkpoint.pt"
    buffer = io.BytesIO()
    torch.save({"format": _CHECKPOINT_FORMAT, "model": {"w": torch.randn(64)}}, buffer)
    path.write_bytes(buffer.getvalue())
    assert load_checkpoint(path)["format"] == _CHECKPOINT_FORMAT
    path.write_bytes(flip_a_tensor_byte(buffer.getvalue()))
    with pytest.raises(ValueError, match=r"cannot load checkpoint .*checksum of member"):
        load_checkpoint(path)


def _as_old_checkpoint(path: Path) -> None:
    """Rewrites a checkpoint's config in the form versions before TrainConfig.arch wrote: the
    architecture fields at the top level, without delta and non_local."""
    ckpt = _load(path)
    arch = ckpt["config"].pop("arch")
    ckpt["config"].update({k: arch[k] for k in ("features", "rank", "k", "layers_per_block")})
    torch.save(ckpt, path)


def test_a_checkpoint_of_the_old_form_resumes(data, tmp_path):
    straight, out = tmp_path / "straight", tmp_path / "run"
    train(_config(data, straight, model="cnn"))
    train(_config(data, out, model="cnn", iters=6, time_budget=1e-9))
    _as_old_checkpoint(out / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"rank \(checkpoint: 2, now: 3\)"):
        train(_config(data, out, model="cnn", rank=3, resume=True))
    assert train(_config(data, out, model="cnn", resume=True))["iterations"] == 6
    a, b = _load(straight / "checkpoint.pt"), _load(out / "checkpoint.pt")
    _assert_states_equal(a["model"], b["model"])
    assert b["config"]["arch"]["rank"] == 2  # rewritten in today's form
