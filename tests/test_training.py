"""Tests of pyg_lecc.training on tiny synthetic data sets and tiny models (CPU only)."""

import io
import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from pyg_lecc import training
from pyg_lecc.data import RandomPatchSampler
from pyg_lecc.metrics import METRIC_KEYS
from pyg_lecc.models import get_model, load_weights
from pyg_lecc.training import TrainConfig, lr_at, train

TINY = dict(features=6, rank=2, k=4, layers_per_block=1, patch=12, batch_size=2)
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


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return _make_data(tmp_path_factory.mktemp("data"))


def _config(data: Path, out: Path, **kwargs) -> TrainConfig:
    settings = dict(TINY, iters=6, ckpt_every=3, val_every=2, lr=1e-2, lr_end=1e-3)
    settings.update(kwargs)
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


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(iters=0), "iters must be at least 1"),
        (dict(lr=1e-4, lr_end=1e-3), "lr_end"),
        (dict(lr=0.0), "lr must be a positive"),
        (dict(model="resnet"), "unknown model"),
        (dict(features=7), "multiple of 3"),
        (dict(batch_size=0), "batch_size"),
        (dict(ckpt_every=0), "ckpt_every"),
        (dict(threads=0), "threads"),
        (dict(val_split="test"), "val_split"),
        (dict(device="cuda:99"), "not available"),
        (dict(device="nonsense"), "device"),
        (dict(patch=3, k=8), "too small"),
    ],
)
def test_config_rejects_invalid_values(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        _config(tmp_path, tmp_path / "run", **changes)


def test_config_to_dict_is_plain(tmp_path):
    config = _config(tmp_path, tmp_path / "run")
    assert isinstance(config.data, Path)
    d = config.to_dict()
    assert d["data"] == str(tmp_path) and d["out"] == str(tmp_path / "run")
    assert all(isinstance(v, (str, int, float, bool, type(None))) for v in d.values())


def test_lr_schedule_is_exponential(tmp_path):
    config = _config(tmp_path, tmp_path / "run", iters=4, lr=1e-2, lr_end=1e-4)
    assert [round(lr_at(t, config), 12) for t in range(5)] == [
        1e-2,
        round(1e-2 * 0.01**0.25, 12),
        1e-3,
        round(1e-2 * 0.01**0.75, 12),
        1e-4,
    ]


# --------------------------------------------------------------------------------------------
# Training, logs, weights
# --------------------------------------------------------------------------------------------


def test_train_writes_log_checkpoint_and_weights(data, tmp_path, monkeypatch):
    trained = {}
    original = training.save_weights

    def save_weights(model, name, path):
        trained["model"], trained["name"] = model, name
        original(model, name, path)

    monkeypatch.setattr(training, "save_weights", save_weights)
    out = tmp_path / "run"
    summary = train(_config(data, out, model="nir-gnn", iters=5, ckpt_every=2, val_every=3))

    assert summary["iterations"] == 5 and summary["iterations_this_run"] == 5
    assert summary["seconds_per_iteration"] > 0 and summary["wall_time"] > 0
    assert summary["world_size"] == 1
    assert set(summary["val"]) == set(METRIC_KEYS)
    assert summary["weights"] == str(out / "weights.pt")

    log = _log(out / "log.jsonl")
    assert [(e["kind"], e["iteration"]) for e in log] == [
        ("train", 2),
        ("val", 3),
        ("train", 4),
        ("train", 5),
        ("val", 5),
    ]
    config = _config(data, out, iters=5)
    for entry in log:
        assert entry["lr"] == pytest.approx(lr_at(entry["iteration"] - 1, config))
        assert entry["time"] > 0
        if entry["kind"] == "train":
            assert np.isfinite(entry["loss"]) and entry["loss"] > 0
        else:
            assert set(METRIC_KEYS) <= entry.keys()
            assert all(np.isfinite(entry[k]) for k in METRIC_KEYS)
            assert entry["train_loss"] > 0
    assert log[-1]["psnr"] == summary["val"]["psnr"]

    # weights.pt rebuilds the trained model through the public model registry.
    assert trained["name"] == "nir-gnn"
    meta, _ = load_weights(out / "weights.pt")
    assert meta["model"] == "nir-gnn" and meta["config"]["features"] == 6
    loaded = get_model("nir-gnn", weights=out / "weights.pt")
    model = trained["model"].eval()
    x = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    _assert_states_equal(load_weights(out / "weights.pt")[1], _load(out / "checkpoint.pt")["model"])
    assert not list(out.glob(".*tmp")), "temporary files left behind"


def test_loss_decreases_on_an_easy_target(tmp_path):
    data = _make_data(tmp_path / "easy", easy=True)
    out = tmp_path / "run"
    train(_config(data, out, model="cnn", iters=30, ckpt_every=5, val_every=30))
    losses = [e["loss"] for e in _log(out / "log.jsonl") if e["kind"] == "train"]
    assert len(losses) == 6
    assert losses[-1] < 0.5 * losses[0], losses


def test_missing_validation_split_warns_once(tmp_path):
    data = _make_data(tmp_path / "data", validation=False)
    out = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train(_config(data, out, model="cnn", iters=4, val_every=1))
    skipped = [w for w in caught if "validation skipped" in str(w.message)]
    assert len(skipped) == 1
    assert summary["val"] is None
    assert {e["kind"] for e in _log(out / "log.jsonl")} == {"train"}
    assert (out / "weights.pt").is_file()


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


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
    _assert_states_equal(load_weights(straight / "weights.pt")[1], b["model"])
    # The log reads as one run: same entries, none repeated.
    assert _without_times(_log(straight / "log.jsonl")) == _without_times(
        _log(resumed / "log.jsonl")
    )
    assert b["elapsed"] > killed["elapsed"] > 0  # training time adds up over sessions


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
    assert not (resumed / "weights.pt").exists()

    train(_config(data, resumed, model="cnn", resume=True))
    a, b = _load(straight / "checkpoint.pt"), _load(resumed / "checkpoint.pt")
    _assert_states_equal(a["model"], b["model"])
    assert _without_times(_log(straight / "log.jsonl")) == _without_times(
        _log(resumed / "log.jsonl")
    )


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


# --------------------------------------------------------------------------------------------
# Distributed (two CPU processes, gloo)
# --------------------------------------------------------------------------------------------

_DDP_SCRIPT = """
import os, sys
from pathlib import Path
import torch
import torch.distributed as dist
torch.set_num_threads(1)
from pyg_lecc import training
from pyg_lecc.data import RandomPatchSampler

data, root, model, mode = sys.argv[1:5]
root, rank = Path(root), int(os.environ["RANK"])
captured = {}
build, original_sample = training._build_model, RandomPatchSampler.sample

def recording_build(config):
    captured["module"] = module = build(config)
    captured["init"] = {k: v.detach().clone() for k, v in module.state_dict().items()}
    return module

training._build_model = recording_build

def run(tag, out, resume=False, kill_at=0):
    calls = [0]
    def sample(self):
        calls[0] += 1
        if calls[0] == kill_at:
            raise SystemExit(3)  # both processes die before drawing this batch
        return original_sample(self)
    RandomPatchSampler.sample = sample
    config = training.TrainConfig(
        data=data, out=root / out, model=model, features=6, rank=2, k=4, layers_per_block=1,
        patch=12, batch_size=2, iters=4, ckpt_every=2, val_every=4, lr=1e-2, lr_end=1e-3,
        threads=1, progress=False, resume=resume,
    )
    try:
        summary = training.train(config)
    except SystemExit:
        summary = "killed"
    final = {k: v.detach().clone() for k, v in captured["module"].state_dict().items()}
    torch.save(
        {"init": captured["init"], "final": final, "summary": summary,
         "group_alive": dist.is_initialized()},
        root / f"{tag}_rank{rank}.pt",
    )

if mode == "own":  # train() initialises the process group from the torchrun environment
    run("straight", "straight")
else:  # a group initialised by the caller: train() uses it and leaves it alone
    dist.init_process_group("gloo")
    run("straight", "straight")
    run("killed", "resumed", kill_at=3)
    run("resumed", "resumed", resume=True)
    dist.destroy_process_group()
"""


def _torchrun(tmp_path: Path, data: Path, model: str, mode: str) -> None:
    script = tmp_path / "ddp_train.py"
    script.write_text(_DDP_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node=2", str(script), str(data), str(tmp_path), model, mode]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr


def _check_two_process_run(tmp_path: Path, out: Path, tag: str) -> dict:
    r0, r1 = _load(tmp_path / f"{tag}_rank0.pt"), _load(tmp_path / f"{tag}_rank1.pt")
    assert r0["summary"]["world_size"] == 2 and r0["summary"]["iterations"] == 4
    assert set(r0["summary"]["val"]) == set(METRIC_KEYS) and r1["summary"]["val"] is None
    params = [k for k in r0["final"] if "running" not in k and "num_batches" not in k]
    buffers = [k for k in r0["final"] if "running" in k]
    # Trained: the parameters moved away from their (common) initialisation...
    assert any(not torch.equal(r0["final"][k], r0["init"][k]) for k in params)
    # ...identically in both processes, although each drew its own patches: the per-process
    # BatchNorm statistics of the last batch differ, and so do the sampler states.
    for k in params:
        assert torch.equal(r0["final"][k], r1["final"][k]), k
    assert any(not torch.equal(r0["final"][k], r1["final"][k]) for k in buffers)
    ckpt = _load(out / "checkpoint.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rank_states"]) == 2
    s0, s1 = (s["sampler"] for s in ckpt["rank_states"])
    assert not torch.equal(s0, s1)
    # Rank 0 alone wrote the weights: the state it trained.
    _assert_states_equal(load_weights(out / "weights.pt")[1], r0["final"])
    log = _log(out / "log.jsonl")
    assert [(e["kind"], e["iteration"]) for e in log] == [("train", 2), ("train", 4), ("val", 4)]
    return r0


def test_two_process_training_stays_in_sync(data, tmp_path):
    _torchrun(tmp_path, data, "nir-gnn", "own")
    r0 = _check_two_process_run(tmp_path, tmp_path / "straight", "straight")
    assert not r0["group_alive"]  # train() destroyed the process group it created


def test_two_process_resume_is_exact(data, tmp_path):
    _torchrun(tmp_path, data, "cnn", "caller")
    straight = _check_two_process_run(tmp_path, tmp_path / "straight", "straight")
    assert straight["group_alive"]  # the caller's process group was left alone
    for rank in (0, 1):
        assert _load(tmp_path / f"killed_rank{rank}.pt")["summary"] == "killed"
    resumed = _check_two_process_run(tmp_path, tmp_path / "resumed", "resumed")
    assert resumed["summary"]["iterations_this_run"] == 2  # resumed from the checkpoint at 2
    a, b = (
        _load(tmp_path / "straight" / "checkpoint.pt"),
        _load(tmp_path / "resumed" / "checkpoint.pt"),
    )
    _assert_states_equal(a["model"], b["model"])
    for p, q in zip(a["rank_states"], b["rank_states"], strict=True):
        assert torch.equal(p["sampler"], q["sampler"])
    for rank in (0, 1):
        s = _load(tmp_path / f"straight_rank{rank}.pt")["final"]
        _assert_states_equal(s, _load(tmp_path / f"resumed_rank{rank}.pt")["final"])
    assert _without_times(_log(tmp_path / "straight" / "log.jsonl")) == _without_times(
        _log(tmp_path / "resumed" / "log.jsonl")
    )


# --------------------------------------------------------------------------------------------
# Runs that stop early stay restartable; Ctrl-C says what it waits for
# --------------------------------------------------------------------------------------------


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
    monkeypatch.setattr(training, "_atomic_save", full_disk)
    with (
        pytest.warns(UserWarning, match="before its first checkpoint: removed log.jsonl"),
        pytest.raises(OSError, match="No space"),
    ):
        train(_config(data, out, model="cnn"))
    monkeypatch.undo()
    assert list(out.iterdir()) == []
    assert train(_config(data, out, model="cnn"))["iterations"] == 6  # the same command


def test_ctrl_c_during_validation_says_it_waits_for_it(data, tmp_path, monkeypatch, capfd):
    validate = training._validate

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return validate(*args, **kwargs)

    monkeypatch.setattr(training, "_validate", interrupted)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(_config(data, out, model="cnn"))
    assert "stops after the validation in progress" in capfd.readouterr().err
    assert _load(out / "checkpoint.pt")["iteration"] == 2  # the first validation's iteration
