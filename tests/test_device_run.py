"""The CPU rehearsal of the device runbook (scripts/device_run.py): every stage runs, with tiny
sizes, so that a lent GPU is never spent on a typo."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from training_helpers import _make_data

from pyg_lecc.data import pack_dataset
from pyg_lecc.models import load_weights

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(torch.cuda.is_available(), reason="the rehearsal is the CPU run")
def test_runbook_rehearsal_runs_every_stage(tmp_path):
    pack = tmp_path / "pack"
    pack_dataset(_make_data(tmp_path / "data"), pack)
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "device_run.py"),
            "run",
            "--rehearsal",
            "--pack",
            str(pack),
            "--out",
            str(out),
            "--work",
            str(tmp_path / "work"),
            "--deadline",
            "600",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = (out / "device_run.log").read_text()
    assert proc.returncode == 0, log + proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    failed = {
        name: stage
        for name, stage in metrics["stages"].items()
        if stage["status"] != "ok" and name != "kernel_check"  # no CUDA here
    }
    assert not failed, log
    assert {
        "machine",
        "bench_reference",
        "probe_reference_none",
        "probe_reference_bf16",
        "train_nir-gnn",
        "train_cnn",
        "eval_nir-gnn_trained",
        "eval_cnn_trained",
    } <= set(metrics["stages"])
    assert metrics["cuda_kernels_passed"] is False
    assert set(metrics["validation"]) == {"nir-gnn_trained", "cnn_trained"}
    assert all(m["psnr"] > 0 for m in metrics["validation"].values())
    bench = json.loads((out / "bench_operators.json").read_text())
    ops = {e["operator"] for e in bench["reference"]["entries"]}
    assert {"lecc_node", "gat", "gcn"} <= ops
    for name in ("nir-gnn", "cnn"):
        assert load_weights(out / f"{name}.safetensors")[0]["model"] == name
        lines = (out / f"{name}.log.jsonl").read_text().splitlines()
        assert json.loads(lines[-1])["kind"] == "stop"
    assert len(list(out.iterdir())) <= 8  # what a device call returns
