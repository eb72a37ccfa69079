"""Tests of the short-budget training options of pyg_lecc.training: warm-up and cosine
schedules, time budget, init_from, bfloat16 autocast, weight EMA and held-out selection."""

import math
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from test_training import _config, _load, _log, _make_data
from torch.optim.swa_utils import update_bn

from pyg_lecc import training
from pyg_lecc.data import PairedImageDataset, RandomPatchSampler
from pyg_lecc.models import get_model, load_weights
from pyg_lecc.training import TrainConfig, lr_at, train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _make_data(tmp_path_factory.mktemp("data"))


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
    monkeypatch.setattr(training, "time", fake)


# --------------------------------------------------------------------------------------------
# Learning-rate schedules
# --------------------------------------------------------------------------------------------


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


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(schedule="linear"), "schedule must be one of"),
        (dict(warmup=6), "warmup"),
        (dict(amp="fp8"), "amp must be one of"),
        (dict(ema=1.0), "ema"),
        (dict(ema=0), "ema"),
        (dict(time_budget=0), "time_budget"),
        (dict(time_budget=float("nan")), "time_budget"),
        (dict(holdout=-1), "holdout"),
        (dict(init_from="w.pt", resume=True), "init_from"),
    ],
)
def test_invalid_options_are_refused(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(data=tmp_path, out=tmp_path, iters=6, **changes)


# --------------------------------------------------------------------------------------------
# Time budget
# --------------------------------------------------------------------------------------------


def test_time_budget_stops_cleanly_and_the_run_can_resume(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _fake_clock(monkeypatch, seconds_per_batch=10.0)
    # The clock reads 10 s per batch drawn: the check before the 5th batch sees 40 s >= 35 s.
    summary = train(_config(data, out, iters=20, time_budget=35.0))
    assert summary["stopped"] == "time_budget"
    assert summary["iterations"] == summary["iterations_this_run"] == 4
    log = _log(out / "log.jsonl")
    assert [(e["kind"], e["iteration"]) for e in log] == [
        ("val", 2),
        ("train", 3),
        ("val", 4),
        ("train", 4),  # written at the stop: iteration 4 is not a checkpoint interval
        ("stop", 4),
    ]
    assert log[-1]["reason"] == "time_budget" and log[-1]["iters"] == 20
    assert _load(out / "checkpoint.pt")["iteration"] == 4
    assert load_weights(out / "weights.pt")[0]["model"] == "nir-gnn"
    # The time-driven schedule reached lr_end by the budget's end.
    assert log[3]["lr"] == pytest.approx(lr_at(3, _config(data, out, iters=20), 30 / 35))

    monkeypatch.undo()
    resumed = train(_config(data, out, iters=20, resume=True))
    assert resumed["stopped"] is None and resumed["iterations"] == 20
    assert resumed["iterations_this_run"] == 16


# --------------------------------------------------------------------------------------------
# init_from
# --------------------------------------------------------------------------------------------


def test_init_from_starts_from_the_weights_with_a_fresh_optimizer(data, tmp_path, monkeypatch):
    first = tmp_path / "first"
    train(_config(data, first, model="nir-gnn", iters=2))
    _, expected = load_weights(first / "weights.pt")

    started = {}
    build = training._build_model

    def recording_build(config):
        net = build(config)
        started.update({k: v.clone() for k, v in net.state_dict().items()})
        return net

    monkeypatch.setattr(training, "_build_model", recording_build)
    second = tmp_path / "second"
    summary = train(_config(data, second, model="nir-gnn", iters=3, init_from=first / "weights.pt"))
    assert summary["iterations"] == 3
    assert started.keys() == expected.keys()
    for key in expected:
        assert torch.equal(started[key], expected[key]), key
    ckpt = _load(second / "checkpoint.pt")
    assert ckpt["config"]["init_from"] == str(first / "weights.pt")
    # Fresh Adam: three steps from the start, not five.
    assert all(int(s["step"]) == 3 for s in ckpt["optimizer"]["state"].values())


def test_init_from_refuses_another_architecture_or_model(data, tmp_path):
    first = tmp_path / "first"
    train(_config(data, first, model="nir-gnn", iters=1))
    weights = first / "weights.pt"
    with pytest.raises(ValueError, match=r"does not match.*features \(weights: 6, run: 9\)"):
        train(_config(data, tmp_path / "a", model="nir-gnn", features=9, init_from=weights))
    with pytest.raises(ValueError, match="holds model 'nir-gnn', not 'cnn'"):
        train(_config(data, tmp_path / "b", model="cnn", init_from=weights))
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        train(_config(data, tmp_path / "c", init_from=tmp_path / "missing.pt"))
    # Same config, but one tensor gone: named in the short summary, nothing trained.
    damaged = torch.load(weights, weights_only=True)
    name = sorted(damaged["state_dict"])[0]
    del damaged["state_dict"][name]
    torch.save(damaged, tmp_path / "damaged.pt")
    with pytest.raises(ValueError, match=rf"do not fit the model: missing tensors \(1\): {name}"):
        train(_config(data, tmp_path / "d", model="nir-gnn", init_from=tmp_path / "damaged.pt"))
    assert not (tmp_path / "d" / "weights.pt").exists()


def test_resume_with_more_iterations_points_to_init_from(data, tmp_path):
    out = tmp_path / "run"
    train(_config(data, out, iters=2))
    with pytest.raises(ValueError, match=r"init_from=.*weights\.pt"):
        train(_config(data, out, iters=4, resume=True))


# --------------------------------------------------------------------------------------------
# EMA, selection, mixed precision
# --------------------------------------------------------------------------------------------


def test_ema_weights_are_the_moving_average_of_the_trained_ones(data, tmp_path, monkeypatch):
    snapshots = []

    class Recording(training.AveragedModel):
        def update_parameters(self, model):
            snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            super().update_parameters(model)

    monkeypatch.setattr(training, "AveragedModel", Recording)
    out = tmp_path / "run"
    decay = 0.6
    train(_config(data, out, model="nir-gnn", iters=4, ema=decay))
    assert len(snapshots) == 4

    # Plain EMA of the parameters: the first update copies, then
    # avg <- decay * avg + (1 - decay) * new.
    _, exported = load_weights(out / "weights.pt")
    model = get_model("nir-gnn", weights=out / "weights.pt")
    params = {name for name, _ in model.named_parameters()}
    for key in params:
        expected = snapshots[0][key].double()
        for snap in snapshots[1:]:
            expected = decay * expected + (1 - decay) * snap[key].double()
        torch.testing.assert_close(exported[key].double(), expected, rtol=1e-5, atol=1e-6, msg=key)
    # BatchNorm statistics recomputed for the averaged weights on the fixed batches.
    config = _config(data, out, model="nir-gnn", iters=4, ema=decay)
    batches = training._bn_batches(PairedImageDataset(data, "train"), config)
    assert len(batches) == config.bn_batches
    update_bn(batches, model)
    stats = [k for k in exported if k.endswith(("running_mean", "running_var"))]
    assert stats
    for key in stats:
        torch.testing.assert_close(exported[key], model.state_dict()[key], msg=key)
    # Training went on with the raw weights, which differ from their average.
    raw = _load(out / "checkpoint.pt")["model"]
    assert any(not torch.equal(raw[k], exported[k]) for k in params)


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
    assert (out / "best.pt").read_bytes() == (out / "weights.pt").read_bytes()
    assert len(drawn) == 2  # one of the three training pairs was held out


def test_holdout_must_leave_training_pairs(data, tmp_path):
    with pytest.raises(ValueError, match="holdout"):
        train(_config(data, tmp_path / "run", holdout=3))


def test_bf16_autocast_trains(data, tmp_path):
    summary = train(_config(data, tmp_path / "run", model="nir-gnn", iters=3, amp="bf16"))
    assert summary["iterations"] == 3
    log = _log(tmp_path / "run" / "log.jsonl")
    assert all(math.isfinite(e["loss"]) for e in log if e["kind"] == "train")


# --------------------------------------------------------------------------------------------
# Selection pairs by name, bias-corrected EMA, Numba's pool
# --------------------------------------------------------------------------------------------


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
    vcip = Path(__file__).resolve().parents[2] / "shared" / "data" / "vcip2020"
    if not vcip.is_dir():
        pytest.skip(f"the VCIP 2020 data is not at {vcip}")
    pairs = PairedImageDataset(vcip, "train", preload=False)
    config = TrainConfig(data=vcip, out=vcip / "unused", holdout=12, seed=1)
    assert [pairs.pairs[i].name for i in training._holdout_indices(pairs, config)] == names


def test_bias_corrected_ema_weighs_only_the_run_s_updates(data, tmp_path, monkeypatch):
    snapshots = []

    class Recording(training.AveragedModel):
        def update_parameters(self, model):
            snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            super().update_parameters(model)

    monkeypatch.setattr(training, "AveragedModel", Recording)
    out, decay = tmp_path / "run", 0.9
    train(_config(data, out, iters=5, val_every=5, ema=decay, ema_bias_correction=True))
    ema = _load(out / "checkpoint.pt")["ema"]
    t = len(snapshots)
    assert t == 5 and int(ema["n_averaged"]) == t
    # Adam's bias correction of an average started at zero: sum_i (1-d) d^(t-i) x_i / (1-d^t)
    # (the parameters: validation recomputed the BatchNorm statistics).
    model = get_model("nir-gnn", weights=out / "weights.pt")
    params = [name for name, _ in model.named_parameters()]
    for key in params:
        expected = sum(
            (1 - decay) * decay ** (t - i) * snap[key].double()
            for i, snap in enumerate(snapshots, start=1)
        ) / (1 - decay**t)
        torch.testing.assert_close(ema[f"module.{key}"].double(), expected, msg=key)
    with pytest.raises(ValueError, match="set ema too"):
        _config(data, out, ema_bias_correction=True)


def test_cli_threads_size_numba_s_pool_before_it_starts(tmp_path):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core: Numba's pool has one worker anyway")
    script = (
        "import sys, torch\n"
        "from pyg_lecc.cli import main\n"
        "import numba\n"
        "from numba.np.ufunc import parallel\n"
        "code = main(sys.argv[1:])\n"
        "print(code, parallel._is_initialized, parallel.NUM_THREADS, numba.get_num_threads())\n"
    )
    data = _make_data(tmp_path / "data")
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--iters", "1"]
    argv += ["--features", "6", "--rank", "2", "--k", "4", "--layers-per-block", "1"]
    argv += ["--patch", "12", "--batch-size", "2", "--threads", "1", "--no-progress"]
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_NUM_THREADS"}
    done = subprocess.run(
        [sys.executable, "-c", script, *argv], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-4:] == ["0", "True", "1", "1"]
