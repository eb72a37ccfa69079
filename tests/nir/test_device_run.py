"""The CPU rehearsal of the device runbook (scripts/device_run.py): every stage runs, with tiny
sizes, so that a lent GPU is never spent on a typo; and its decisions, unit by unit."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from training_helpers import _make_data

from pyg_lecc.nir.data import find_pairs, pack_dataset
from pyg_lecc.nir.hub import load_weights, nir_gnn, save_weights

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("device_run", REPO / "scripts" / "device_run.py")
device_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(device_run)


def test_cnn_trains_only_while_behind_f99(tmp_path):
    assert device_run.cnn_iterations_due(cnn_iterations=9190, f99_iterations=0) == 0
    assert device_run.cnn_iterations_due(cnn_iterations=9190, f99_iterations=9190) == 0
    assert device_run.cnn_iterations_due(cnn_iterations=9190, f99_iterations=12000) == 2810
    assert device_run.read_iterations(tmp_path / "absent.json") == 0
    (tmp_path / "cnn.json").write_text(json.dumps({"iterations": 9190}))
    assert device_run.read_iterations(tmp_path / "cnn.json") == 9190


def _entry(batch, s, amp="none", compile_s=None):
    entry = {"impl": "reference", "amp": amp, "batch": batch, "s_per_iter": s}
    if compile_s is not None:
        entry.update(compile="reduce-overhead", compile_s=compile_s)
    return entry


def test_choose_setting_counts_patches_and_compile_time():
    choose = device_run.choose_setting
    # Batch 32 at 0.1 s trains more patches per second than batch 10 at 0.05 s.
    assert choose([_entry(10, 0.05), _entry(32, 0.1)], 100)["batch"] == 32
    # A failed setting (no time) is never chosen; nothing usable gives None.
    assert (
        choose([_entry(10, 0.05), {"amp": "none", "batch": 32, "errors": ["x"]}], 100)["batch"]
        == 10
    )
    assert choose([], 100) is None
    # Compiling pays off over a long budget, not over a short one.
    faster = _entry(10, 0.03, compile_s=40)
    assert choose([_entry(10, 0.05), faster], 300) is faster
    assert "compile_s" not in choose([_entry(10, 0.05), faster], 60)
    # bfloat16 only for a clear gain.
    assert choose([_entry(10, 0.05), _entry(10, 0.045, "bf16")], 100)["amp"] == "none"
    assert choose([_entry(10, 0.05), _entry(10, 0.03, "bf16")], 100)["amp"] == "bf16"
    assert device_run.batch10_time([_entry(10, 0.05), faster, _entry(16, 0.01)]) == 0.03
    assert device_run.batch10_time([_entry(16, 0.01)]) is None


def _weights_dir(tmp_path: Path) -> Path:
    """A weights folder where F=99 (here the rehearsal's tiny width) is 3 iterations ahead
    of the CNN, so that both train and F=99 continues."""
    folder = tmp_path / "weights"
    folder.mkdir()
    arch = device_run.REHEARSAL["model"]
    save_weights(nir_gnn(**arch), "nir-gnn", folder / "nir-gnn-f99.safetensors")
    (folder / "nir-gnn-f99.json").write_text(json.dumps({"iterations": 3}))
    (folder / "cnn.json").write_text(json.dumps({"iterations": 0}))
    return folder


@pytest.mark.skipif(torch.cuda.is_available(), reason="the rehearsal is the CPU run")
def test_runbook_rehearsal_runs_every_stage(tmp_path):
    data = _make_data(tmp_path / "data")
    pack = tmp_path / "pack"
    pack_dataset(data, pack)
    holdout = tmp_path / "holdout.txt"
    holdout.write_text(find_pairs(data, "train")[0].name + "\n")
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "scripts" / "device_run.py"), "run", "--rehearsal"]
    cmd += ["--pack", str(pack), "--out", str(out), "--work", str(tmp_path / "work")]
    cmd += ["--deadline", "600", "--weights-dir", str(_weights_dir(tmp_path))]
    cmd += ["--holdout-pairs", str(holdout)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
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
        "cuda_tests",
        "cuda_tests_edge_label",
        "kernel_check",
        "bench_reference",
        "probe_reference_none",
        "probe_reference_bf16",
        "inspect_nir-gnn-f99",
        "train_nir-gnn-f99",
        "train_cnn",
        "score_nir-gnn-f99_trained",
        "score_cnn_trained",
        "score_nir-gnn_shipped",
    } <= set(metrics["stages"])
    assert metrics["cuda_kernels_passed"] is False
    assert metrics["cuda_edge_label_kernels_passed"] is False
    # edge_label_aggregate's tests ran with its Triton kernels requested, the others without
    # (-k selections of the same files).
    assert "-k label tests/ops/test_edge_label_aggregate.py tests/ops/test_cuda_kernels.py" in log
    assert "-k not label tests/ops/test_cuda_kernels.py" in log
    assert metrics["kernel_check"]["ok"] is False  # no CUDA here: a summary all the same
    assert {"lecc_node", "gat", "gcn"} <= {
        e["operator"] for e in metrics["bench_operators"]["reference"]["entries"]
    }
    _check_probe(metrics, log)
    assert metrics["iterations_before"] == {"nir-gnn-f99": 3, "cnn": 0, "cnn_due": 3}
    assert "--init-from" in log and "--ema-bias-correction" in log
    _check_scores(metrics, out)
    assert len(list(out.iterdir())) <= 8  # what a device call returns


def _check_probe(metrics: dict, log: str) -> None:
    probe = metrics["probe"]
    assert {(e["batch"], e["amp"]) for e in probe["entries"]} == {
        (b, amp) for b in (10, 2, 4) for amp in ("none", "bf16")
    }
    assert all(e["s_per_iter"] > 0 and "compile_s" not in e for e in probe["entries"])
    assert probe["batch10_s_per_iter"] > 0 and probe["seconds"] <= 60
    choice = metrics["training_choice"]
    assert f"--batch-size {choice['batch']}" in log  # the trainer uses the probe's choice
    assert "--compile none" in log and "--holdout-pairs" in log


def _check_scores(metrics: dict, out: Path) -> None:
    scores = metrics["scores"]
    assert set(scores) == {"nir-gnn-f99_trained", "cnn_trained", "nir-gnn_shipped"}
    assert all(s[split]["psnr"] > 0 for s in scores.values() for split in ("holdout", "validation"))
    assert all(
        s["holdout"]["pairs"] == 1 and s["validation"]["pairs"] == 2 for s in scores.values()
    )
    assert metrics["holdout_comparison"]["better"] in ("nir-gnn-f99", "nir-gnn (shipped default)")
    for stem, model, before in (("nir-gnn-f99", "nir-gnn", 3), ("cnn", "cnn", 0)):
        assert load_weights(out / f"{stem}.safetensors")[0]["model"] == model
        lines = [json.loads(x) for x in (out / f"{stem}.log.jsonl").read_text().splitlines()]
        meta = json.loads((out / f"{stem}.json").read_text())
        assert meta["iterations"] == before + max(e["iteration"] for e in lines)
        assert meta["lineage"][-1]["holdout"] == scores[f"{stem}_trained"]["holdout"]
    assert metrics["cumulative_iterations"]["cnn"] == 3  # caught up with F=99's 3, no further


def test_train_compile_option_is_checked():
    from pyg_lecc.nir.cli import build_parser
    from pyg_lecc.nir.training import TrainConfig

    args = build_parser().parse_args(
        ["train", "--data", "d", "--out", "o", "--compile", "reduce-overhead"]
    )
    assert args.compile == "reduce-overhead"
    with pytest.raises(ValueError, match="compile must be one of"):
        TrainConfig(data="d", out="o", compile="max-speed")


def test_label_tests_are_selected_by_name():
    # The runbook splits the CUDA tests by `-k label`: every test of edge_label_aggregate and
    # none of edge_aggregate's may be selected by it.
    cmd = [sys.executable, "-m", "pytest", "-q", "--collect-only", "-k", device_run._LABEL_TESTS]
    cmd += [
        "tests/ops/test_edge_label_aggregate.py",
        "tests/ops/test_cuda_kernels.py",
        "tests/ops/test_edge_aggregate.py",
    ]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300).stdout
    ids = [line for line in out.splitlines() if "::" in line]
    assert ids and all("label" in i for i in ids), out[-2000:]
    assert any(i.startswith("tests/ops/test_edge_label_aggregate.py::") for i in ids)
    assert any(i.startswith("tests/ops/test_cuda_kernels.py::test_label_") for i in ids)
    assert not any(i.startswith("tests/ops/test_edge_aggregate.py::") for i in ids)


def _check_script(*args: str, **env: str) -> tuple[subprocess.CompletedProcess, dict]:
    cmd = [sys.executable, str(REPO / "scripts" / "check_cuda_kernels.py"), *args]
    path = os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)
    environ = {**os.environ, "PYTHONPATH": path, **env}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=environ)
    return proc, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU answer of the kernel check")
def test_kernel_check_without_cuda_says_so():
    proc, summary = _check_script()
    assert proc.returncode == 1 and summary["ok"] is False and "setup" in summary["errors"]
    assert summary["ops"] == ["edge_aggregate", "edge_label_aggregate"]


_TRITON = importlib.util.find_spec("triton") is not None


@pytest.mark.skipif(
    not (_TRITON and os.environ.get("PYG_LECC_TRITON_INTERPRET") == "1"),
    reason="needs Triton and PYG_LECC_TRITON_INTERPRET=1 (about a minute in the interpreter)",
)
def test_kernel_check_of_edge_label_aggregate_in_the_interpreter():
    proc, summary = _check_script("--interpret", "--ops", "edge_label_aggregate")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    label = summary["edge_label_aggregate"]
    assert summary["ok"] and label["ok"] and not label["errors"]
    assert {"tiny_r4_bipartite_fh33_no_attention", "empty_graph", "no_targets"} <= set(
        label["checks"]
    )
    assert all(c["ok"] for c in label["checks"].values())
    timing = label["timings"]["tiny_knn8_fp32"]
    assert timing["kernel_fwd_bwd_ms"] > 0 and timing["reference_fwd_bwd_ms"] > 0
