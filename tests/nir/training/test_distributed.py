"""Tests of pyg_lecc.nir.training.distributed: two CPU processes (gloo) under torchrun."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from training_helpers import (
    _assert_states_equal,
    _load,
    _log,
    _without_times,
)

from pyg_lecc.nir.hub import load_weights
from pyg_lecc.nir.metrics import METRIC_KEYS

_DDP_SCRIPT = """
import os, sys
from pathlib import Path
import torch
import torch.distributed as dist
torch.set_num_threads(1)
from pyg_lecc.nir import training
from pyg_lecc.nir.data import RandomPatchSampler
from pyg_lecc.nir.training import loop
from pyg_lecc.nir.config import NIRGNNConfig

data, root, model, mode = sys.argv[1:5]
root, rank = Path(root), int(os.environ["RANK"])
captured = {}
build, original_sample = loop.build_model, RandomPatchSampler.sample

def recording_build(config):
    captured["module"] = module = build(config)
    captured["init"] = {k: v.detach().clone() for k, v in module.state_dict().items()}
    return module

loop.build_model = recording_build

def run(tag, out, resume=False, kill_at=0):
    calls = [0]
    def sample(self):
        calls[0] += 1
        if calls[0] == kill_at:
            raise SystemExit(3)  # both processes die before drawing this batch
        return original_sample(self)
    RandomPatchSampler.sample = sample
    config = training.TrainConfig(
        data=data, out=root / out, model=model,
        arch=NIRGNNConfig(features=6, rank=2, k=4, layers_per_block=1),
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
    _assert_states_equal(load_weights(out / "weights.safetensors")[1], r0["final"])
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
