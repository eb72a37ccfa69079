"""Tests of pyg_lecc.nir.training.schedule: the learning-rate schedules."""

import math

import pytest
from training_helpers import (
    _config,
)

from pyg_lecc.nir.training import TrainConfig, lr_at


def test_lr_schedule_is_exponential(tmp_path):
    config = _config(tmp_path, tmp_path / "run", iters=4, lr=1e-2, lr_end=1e-4)
    assert [round(lr_at(t, config), 12) for t in range(5)] == [
        1e-2,
        round(1e-2 * 0.01**0.25, 12),
        1e-3,
        round(1e-2 * 0.01**0.75, 12),
        1e-4,
    ]


def test_warmup_then_cosine_matches_the_formula(tmp_path):
    cfg = TrainConfig(
        data=tmp_path, out=tmp_path, iters=20, lr=1e-2, lr_end=1e-4, warmup=4, schedule="cosine"
    )
    for t in range(4):
        assert lr_at(t, cfg) == pytest.approx(1e-2 * (t + 1) / 4)
    for t in range(4, 21):
        p = (t - 4) / 16
        expected = 1e-4 + (1e-2 - 1e-4) * 0.5 * (1 + math.cos(math.pi * p))
        assert lr_at(t, cfg) == pytest.approx(expected)
    # A time budget that is further along than the iterations drives the decay.
    assert lr_at(5, cfg, time_fraction=1.0) == pytest.approx(1e-4)
    assert lr_at(5, cfg, time_fraction=5.0) == pytest.approx(1e-4)
