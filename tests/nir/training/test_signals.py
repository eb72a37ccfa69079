"""Tests of pyg_lecc.nir.training.signals: Ctrl-C during training."""

import os
import signal

import pytest
from training_helpers import (
    _assert_states_equal,
    _config,
    _load,
    _log,
    _without_times,
)

from pyg_lecc.nir.data import RandomPatchSampler
from pyg_lecc.nir.training import loop, train


def test_ctrl_c_writes_checkpoint_and_resumes_exactly(data, tmp_path, monkeypatch):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(_config(data, straight, model="cnn"))

    original = RandomPatchSampler.sample
    calls = [0]

    def sample(self):
        calls[0] += 1
        if calls[0] == 2:  # Ctrl-C while iteration 2 runs: it completes, then training stops
            os.kill(os.getpid(), signal.SIGINT)
        return original(self)

    monkeypatch.setattr(RandomPatchSampler, "sample", sample)
    # The handler in force before training, whatever it is: a background job of a
    # non-interactive shell starts with SIGINT ignored, not with default_int_handler.
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train(_config(data, resumed, model="cnn"))
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is before  # restored, not left to training's
    ckpt = _load(resumed / "checkpoint.pt")
    assert ckpt["iteration"] == 2  # not a multiple of ckpt_every: written on interruption
    assert not (resumed / "weights.safetensors").exists()

    train(_config(data, resumed, model="cnn", resume=True))
    a, b = _load(straight / "checkpoint.pt"), _load(resumed / "checkpoint.pt")
    _assert_states_equal(a["model"], b["model"])
    assert _without_times(_log(straight / "log.jsonl")) == _without_times(
        _log(resumed / "log.jsonl")
    )


def test_ctrl_c_during_validation_says_it_waits_for_it(data, tmp_path, monkeypatch, capfd):
    validate = loop._validate

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return validate(*args, **kwargs)

    monkeypatch.setattr(loop, "_validate", interrupted)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(_config(data, out, model="cnn"))
    assert "stops after the validation in progress" in capfd.readouterr().err
    assert _load(out / "checkpoint.pt")["iteration"] == 2  # the first validation's iteration
