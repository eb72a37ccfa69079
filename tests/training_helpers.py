"""Helpers of the training tests (tests/nir/training/) and of the tests that train or need a
tiny synthetic data set (tests/nir/test_continuation.py, tests/nir/data/test_pack.py): data,
configurations, log and checkpoint readers, and recorders of what a run does."""

import dataclasses
import json
import types
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from pyg_lecc.nir.config import NIRGNNConfig
from pyg_lecc.nir.data import RandomPatchSampler
from pyg_lecc.nir.training import TrainConfig, averaging, loop

TINY_ARCH = NIRGNNConfig(features=6, rank=2, k=4, layers_per_block=1)
TINY = dict(arch=TINY_ARCH, patch=12, batch_size=2)


MODELS = ("cnn", "nir-gnn")


def _write_split(base: Path, n: int, seed: int, easy: bool) -> None:
    rng = np.random.default_rng(seed)
    (base / "nir").mkdir(parents=True)
    (base / "rgb").mkdir(parents=True)
    for i in range(n):
        # Smooth random images: a low-resolution pattern upsampled, plus a little noise.
        low = rng.uniform(0.1, 0.9, size=(6, 6))
        nir = np.kron(low, np.ones((4, 4))) + rng.normal(0.0, 0.03, size=(24, 24))
        nir = np.clip(nir, 0.0, 1.0)
        if easy:  # the RGB image is the NIR image on three channels
            rgb = np.stack([nir] * 3, axis=-1)
        else:  # colours correlated with NIR
            rgb = np.stack([0.8 * nir + 0.1, nir**2, 1.0 - 0.7 * nir], axis=-1)
        iio.imwrite(base / "nir" / f"img{i}.png", np.round(nir * 255).astype(np.uint8))
        iio.imwrite(base / "rgb" / f"img{i}.png", np.round(rgb * 255).astype(np.uint8))


def _make_data(root: Path, easy: bool = False, validation: bool = True) -> Path:
    _write_split(root / "train", 3, seed=0, easy=easy)
    if validation:
        _write_split(root / "validation", 2, seed=1, easy=easy)
    return root


def _config(data: Path, out: Path, **kwargs) -> TrainConfig:
    """A tiny run; architecture fields among ``kwargs`` (``features=9``) replace TINY_ARCH's."""
    arch = {name: kwargs.pop(name) for name in TINY_ARCH.to_dict() if name in kwargs}
    settings = dict(TINY, iters=6, ckpt_every=3, val_every=2, lr=1e-2, lr_end=1e-3)
    settings.update(kwargs, arch=dataclasses.replace(TINY_ARCH, **arch))
    return TrainConfig(data=data, out=out, progress=False, **settings)


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _without_times(entries: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in ("time", "timestamp")} for e in entries]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


class _Killed(BaseException):
    """Stands for the process being killed (not caught by training's interrupt handling)."""


def _kill_on_sample(monkeypatch, call: int) -> None:
    """Makes the ``call``-th drawn batch kill the run (1-based)."""
    original = RandomPatchSampler.sample
    calls = [0]

    def sample(self):
        calls[0] += 1
        if calls[0] == call:
            raise _Killed
        return original(self)

    monkeypatch.setattr(RandomPatchSampler, "sample", sample)


def _fake_clock(monkeypatch, seconds_per_batch: float) -> None:
    """Training's clock advances ``seconds_per_batch`` per drawn batch, nothing else."""
    batches = [0]
    original = RandomPatchSampler.sample

    def sample(self):
        batches[0] += 1
        return original(self)

    def monotonic() -> float:
        return batches[0] * seconds_per_batch

    fake = types.SimpleNamespace(monotonic=monotonic, perf_counter=monotonic, time=monotonic)
    monkeypatch.setattr(RandomPatchSampler, "sample", sample)
    monkeypatch.setattr(loop, "time", fake)


def _record_ema_updates(monkeypatch) -> list[dict]:
    """The state dicts the weight average is updated with, in order, for the runs that follow."""
    snapshots = []

    class Recording(averaging.AveragedModel):
        def update_parameters(self, model):
            snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            super().update_parameters(model)

    monkeypatch.setattr(averaging, "AveragedModel", Recording)
    return snapshots
