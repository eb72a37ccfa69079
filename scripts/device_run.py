"""The device runbook: one call on a lent GPU machine that checks, measures and trains NIR-GNN.

A session may be lent a GPU machine for a few minutes in all, one prepared command at a time
(see "Training on a lent GPU" in ``docs/nir_colorization.rst``). The GPU carries the paper's
width (F=99, r=11, k=8, 3 graph layers per block); the CPU carries the F=24 lineage. Within
``--deadline`` seconds this script

1. records the machine (torch, CUDA device, Triton);
2. runs the CUDA tests (with pytest, if pytest imports) and the standalone kernel check
   ``scripts/check_cuda_kernels.py``, for each fused op on its own: ``edge_aggregate``
   (``tests/ops/test_cuda_kernels.py`` and ``tests/ops/test_edge_aggregate.py``, whose
   kernels the stages below use when they pass) and ``edge_label_aggregate`` (the
   ``edge_dim`` mode: its tests in
   ``tests/ops/test_edge_label_aggregate.py`` and ``tests/ops/test_cuda_kernels.py``, run with
   ``PYG_LECC_CUDA_EDGE_LABEL_KERNELS=1``; recorded, never used for training, and a failure
   there does not hold back ``edge_aggregate``'s kernels);
3. times the operators on the paper's graph (``benchmarks.operators``), with the reference
   path and, if the kernel checks passed, with the CUDA kernels;
4. probes, in at most 60 s in all, the fastest training setting in patches per second: batch
   10, 16 and 32, eager and ``torch.compile`` (mode ``reduce-overhead``, CUDA graphs, with
   ``default`` as fallback), per implementation; it records the batch-10 iteration time (the
   paper's batch; target at most 60 ms);
5. trains NIR-GNN F=99 with the chosen setting, from ``nir-gnn-f99.safetensors`` when that
   exists (``--init-from``, bias-corrected EMA), selecting on the committed held-out pairs;
   the CNN baseline trains beside it only while its cumulative iterations (``cnn.json``) are
   behind F=99's (``nir-gnn-f99.json``), up to F=99's count, so that Table I compares equal
   budgets;
6. scores the trained F=99, the shipped default NIR-GNN (F=24) and a trained CNN on the
   held-out pairs and the validation split, and says which NIR-GNN is better on the held-out
   pairs (it never replaces the shipped default itself);

and writes at most 8 files into ``--out``: ``device_run.log``, ``metrics.json`` (operator
timings included), ``nir-gnn-f99.safetensors``, ``nir-gnn-f99.log.jsonl``,
``nir-gnn-f99.json`` (its metadata, cumulative iterations), and when the CNN trained,
``cnn.safetensors``, ``cnn.log.jsonl``, ``cnn.json``. Every stage runs in its own process with
a timeout, so a failing stage is logged and the next one still runs.

``--rehearsal`` runs every stage on the CPU with tiny sizes (eager probe only), so that a lent
GPU minute is never spent on a typo (``tests/nir/test_device_run.py`` does this in CI).

Usage on the device machine (from the repository root; ``.device/`` is prepared by
``scripts/prepare_device.sh`` and carried)::

    PYTHONPATH=src:.device/site python3 scripts/device_run.py run \\
        --pack .device/pack --out "$OUT" --deadline 520
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WEIGHTS_DIR = REPO / "src" / "pyg_lecc" / "weights"
KERNEL_ENV = "PYG_LECC_CUDA_KERNELS"
# The opt-in of edge_label_aggregate's Triton kernels (pyg_lecc.ops), set for its tests.
LABEL_KERNEL_ENV = "PYG_LECC_CUDA_EDGE_LABEL_KERNELS"
# pytest -k selections: the tests of edge_label_aggregate are those whose name or module
# name says "label" (tests/ops/test_edge_label_aggregate.py and the label tests of
# tests/ops/test_cuda_kernels.py).
_LABEL_TESTS = "label"
# What `pyg-lecc train` exports into its run folder (pyg_lecc.nir.training.WEIGHTS_NAME; this
# script imports nothing of the package, so that it runs before any install).
TRAINED_WEIGHTS = "weights.safetensors"
F99 = "nir-gnn-f99"  # the GPU lineage's file stem (weights, log, metadata)
PAPER_BATCH = 10
TARGET_BATCH10_S = 0.060  # the aim for one F=99 iteration at the paper's batch
# Seconds kept after training for the final validation inside `train`, the scoring and the
# copies (measured on CPU rehearsal; generous for a GPU).
_RESERVE_S = 90.0
# A compile probe is not started with less than this left of the probe's budget.
_MIN_COMPILE_PROBE_S = 15.0


# --------------------------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------------------------

# The paper's NIR-GNN (F=99, r=11, k=8, 3 graph layers per block) with a short-budget recipe:
# warm-up then cosine decay from 2e-4 to 1e-5, bias-corrected EMA of the weights; the batch
# size comes from the probe.
FULL = {
    "device": "cuda",
    "model": {"features": 99, "rank": 11, "k": 8, "layers_per_block": 3},
    "train": {
        "patch": 42,
        "lr": 2e-4,
        "lr_end": 1e-5,
        "schedule": "cosine",
        "warmup": 100,
        "ema": 0.998,
        "iters": 300_000,
        "ckpt_every": 500,
    },
    "probe": {"batches": [10, 16, 32], "iters": 5, "warmup": 2, "budget_s": 60.0},
    "probe_compile": True,
    # bfloat16 autocast would also build the kNN graphs from bfloat16 features: not probed.
    "probe_bf16": False,
    "bench": {"features": 99, "num_patches": 10, "patch_size": 42, "k": 8, "max_gb": 40.0},
    "bench_operators": "lecc_node,gcn,gat",
    # kernel_check: 22 s for edge_aggregate on an H200 (2026-11); edge_label_aggregate's
    # cases and timings come on top.
    "timeouts": {"tests": 75, "tests_edge_label": 60, "check": 75, "bench": 50, "score": 90},
}

# Every stage on the CPU with tiny sizes (the CI rehearsal); inductor on CPU would need a C
# compiler and minutes: the probe stays eager.
REHEARSAL = {
    "device": "cpu",
    "model": {"features": 6, "rank": 2, "k": 4, "layers_per_block": 1},
    "train": {
        "patch": 12,
        "lr": 1e-3,
        "lr_end": 1e-4,
        "schedule": "cosine",
        "warmup": 2,
        "ema": 0.9,
        "iters": 100_000,
        "ckpt_every": 5,
    },
    "probe": {"batches": [PAPER_BATCH, 2, 4], "iters": 2, "warmup": 1, "budget_s": 60.0},
    "probe_compile": False,
    "max_train_s": 8.0,
    "probe_bf16": True,
    "bench": {"features": 9, "num_patches": 1, "patch_size": 12, "k": 4, "max_gb": 1.0},
    "bench_operators": "lecc_node,lecc_edge,gcn,gat,edgeconv,nnconv",
    "timeouts": {"tests": 120, "tests_edge_label": 120, "check": 60, "bench": 120, "score": 120},
}


# --------------------------------------------------------------------------------------------
# Decisions (pure functions, unit-tested)
# --------------------------------------------------------------------------------------------


def read_iterations(meta_path: Path) -> int:
    """Cumulative training iterations recorded in a weights' metadata JSON (0 if absent)."""
    if not meta_path.is_file():
        return 0
    return int(json.loads(meta_path.read_text()).get("iterations", 0))


def cnn_iterations_due(cnn_iterations: int, f99_iterations: int) -> int:
    """CNN iterations to train so that it catches up with NIR-GNN F=99 (0: it is level or
    ahead, and the whole budget goes to NIR-GNN)."""
    return max(0, f99_iterations - cnn_iterations)


def choose_setting(entries: list[dict[str, Any]], budget_s: float) -> dict[str, Any] | None:
    """The probed setting that trains the most patches in ``budget_s`` seconds.

    A compiled setting pays its compilation again when the trainer starts (its warm-up
    ``compile_s``). bfloat16 costs precision: taken only if it trains a third more patches
    than the best float32 setting."""

    def patches(entry: dict[str, Any]) -> float:
        left = max(0.0, budget_s - entry.get("compile_s", 0.0))
        return left / entry["s_per_iter"] * entry["batch"]

    usable = [e for e in entries if e.get("s_per_iter")]
    best: dict[str, dict[str, Any]] = {}
    for amp in ("none", "bf16"):
        same = [e for e in usable if e["amp"] == amp]
        if same:
            best[amp] = max(same, key=patches)
    choice = best.get("none") or best.get("bf16")
    if "none" in best and "bf16" in best and patches(best["bf16"]) > patches(best["none"]) / 0.75:
        choice = best["bf16"]
    return choice


def batch10_time(entries: list[dict[str, Any]]) -> float | None:
    """The fastest float32 iteration time at the paper's batch, eager or compiled."""
    times = [
        e["s_per_iter"]
        for e in entries
        if e.get("s_per_iter") and e["batch"] == PAPER_BATCH and e["amp"] == "none"
    ]
    return min(times) if times else None


# --------------------------------------------------------------------------------------------
# Stages run in their own processes
# --------------------------------------------------------------------------------------------


def _bench(args: argparse.Namespace) -> None:
    """Operator timings on the paper's graph (JSON to ``args.json``)."""
    import torch

    from benchmarks import operators as ops_bench
    from benchmarks.common import collect_metadata

    setting = json.loads(args.setting)
    device = torch.device(args.device)
    cfg = ops_bench.Config(
        features=setting["features"],
        num_patches=setting["num_patches"],
        patch_size=setting["patch_size"],
        k=setting["k"],
        runs=1,
        min_run_time=0.2,
        max_gb=setting["max_gb"],
        device=str(device),
    )
    graphs = ops_bench.make_graphs(
        cfg.features, cfg.num_patches, cfg.patch_size, cfg.k, cfg.seed, device
    )
    names = args.operators.split(",")
    entries = [ops_bench.measure_operator(n, g, cfg, device) for g in graphs for n in names]
    meta = collect_metadata(quick=False, device=device, seed=cfg.seed, argv=sys.argv)
    Path(args.json).write_text(json.dumps({"meta": meta, "entries": entries}, default=str))


def _probe(args: argparse.Namespace) -> None:
    """Training-iteration times of NIR-GNN for each batch size of ``args.batches``, eager or
    compiled (the first mode of ``args.compile`` that works). Each result is appended to
    ``args.json`` as soon as it is measured, so that a timeout keeps those before it."""
    import statistics

    import torch

    from benchmarks.iteration import time_training_iterations
    from pyg_lecc.nir.hub import nir_gnn

    setting = json.loads(args.setting)
    probe = setting["probe"]
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    target = Path(args.json)
    for batch in (int(b) for b in args.batches.split(",")):
        entry: dict[str, Any] = {"impl": args.impl, "amp": args.amp, "batch": batch}
        for mode in args.compile.split(","):
            torch._dynamo.reset()  # each batch and mode compiles afresh
            torch.manual_seed(0)
            model = nir_gnn(**setting["model"])
            if mode != "none":
                model = torch.compile(model, mode=mode)
            entry["compile"] = mode
            try:
                # Untimed warm-up here: its time is the compilation's cost.
                times = time_training_iterations(
                    model,
                    batch_size=batch,
                    patch_size=setting["train"]["patch"],
                    iterations=probe["warmup"] + probe["iters"],
                    warmup=0,
                    device=device,
                    amp=torch.bfloat16 if args.amp == "bf16" else None,
                )
            except Exception as err:  # a compile failure: try the next mode
                entry.setdefault("errors", []).append(f"{mode}: {err!r}"[:300])
                continue
            timed = times[probe["warmup"] :]
            entry["s_per_iter"] = statistics.median(timed)
            entry["patches_per_s"] = batch / entry["s_per_iter"]
            if mode != "none":
                entry["compile_s"] = sum(times[: probe["warmup"]])
            break
        if device.type == "cuda":
            entry["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
            torch.cuda.reset_peak_memory_stats()
        done = json.loads(target.read_text()) if target.is_file() else []
        target.write_text(json.dumps([*done, entry]))
        print(json.dumps(entry), flush=True)


def _score(args: argparse.Namespace) -> None:
    """Metrics of a weights file on the held-out training pairs and the validation split,
    as ``pyg-lecc evaluate`` computes them (JSON to ``args.json``)."""
    from pyg_lecc.nir.data import find_pairs, load_pair
    from pyg_lecc.nir.hub import model_from_weights
    from pyg_lecc.nir.inference import DEFAULT_SEARCH_WINDOW, colorize, resolve_weights
    from pyg_lecc.nir.metrics import evaluate_pair, summarize
    from pyg_lecc.nir.training import read_holdout_pairs

    model, _ = model_from_weights(resolve_weights(args.weights, args.model))
    model = model.to(args.device)
    held = set(read_holdout_pairs(args.holdout_pairs))
    splits = {
        "holdout": [p for p in find_pairs(args.data, "train") if p.name in held],
        "validation": find_pairs(args.data, "validation"),
    }
    scores = {}
    for split, pairs in splits.items():
        per_image = []
        for pair in pairs:
            nir, rgb = load_pair(pair)
            # 256x256 VCIP images are run whole, as `pyg-lecc evaluate` does.
            pred = colorize(
                model, nir, tile=256, search_window=DEFAULT_SEARCH_WINDOW, device=args.device
            )
            per_image.append(evaluate_pair(pred, rgb))
        scores[split] = {k: round(float(v), 4) for k, v in summarize(per_image).items()}
        scores[split]["pairs"] = len(pairs)
    scores["config"] = model.config()
    scores["parameters"] = sum(p.numel() for p in model.parameters())
    Path(args.json).write_text(json.dumps(scores))


# --------------------------------------------------------------------------------------------
# The orchestrator
# --------------------------------------------------------------------------------------------


class Runbook:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.setting = REHEARSAL if args.rehearsal else FULL
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.t0 = time.monotonic()
        self.log_path = self.out / "device_run.log"
        self.metrics: dict[str, Any] = {"rehearsal": args.rehearsal, "stages": {}}

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.args.deadline - self.elapsed()

    def log(self, text: str) -> None:
        line = f"[{self.elapsed():7.1f}s] {text}"
        print(line, flush=True)
        with open(self.log_path, "a") as f:
            f.write(line + "\n")

    def save_metrics(self) -> None:
        self.metrics["elapsed_s"] = round(self.elapsed(), 1)
        (self.out / "metrics.json").write_text(json.dumps(self.metrics, indent=1, default=str))

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        paths = [str(REPO / "src"), str(REPO / ".device" / "site"), str(REPO)]
        env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")])
        env.update(extra)
        return env

    def call(
        self, name: str, cmd: list[str], timeout: float, **env: str
    ) -> subprocess.CompletedProcess | None:
        """Runs one stage command; its output goes to the log. ``None`` if it timed out."""
        timeout = max(1.0, min(timeout, self.left()))
        self.log(f"{name}: {' '.join(cmd)} (timeout {timeout:.0f}s)")
        start = time.monotonic()
        try:
            proc = subprocess.run(
                cmd,
                cwd=REPO,
                env=self.env(**env),
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as err:
            self._log_output(err.stdout, err.stderr)
            self.log(f"{name}: TIMEOUT after {timeout:.0f}s")
            self.metrics["stages"][name] = {"status": "timeout", "seconds": timeout}
            return None
        self._log_output(proc.stdout, proc.stderr)
        seconds = round(time.monotonic() - start, 1)
        status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
        self.log(f"{name}: {status} in {seconds}s")
        self.metrics["stages"][name] = {"status": status, "seconds": seconds}
        return proc

    def _log_output(self, *streams: str | bytes | None) -> None:
        for text in streams:
            if isinstance(text, bytes):
                text = text.decode(errors="replace")
            if text and text.strip():
                tail = text.strip().splitlines()[-60:]  # the log stays readable
                with open(self.log_path, "a") as f:
                    f.write("\n".join(f"    | {line}" for line in tail) + "\n")

    # -- stages ------------------------------------------------------------------------------
    def machine(self) -> None:
        code = (
            "import json, torch, platform\n"
            "info = {'python': platform.python_version(), 'torch': torch.__version__,\n"
            "        'cuda': torch.version.cuda, 'cuda_available': torch.cuda.is_available()}\n"
            "if torch.cuda.is_available():\n"
            "    info['gpu'] = torch.cuda.get_device_name(0)\n"
            "try:\n"
            "    import triton; info['triton'] = triton.__version__\n"
            "except Exception as err:\n"
            "    info['triton'] = repr(err)\n"
            "import torch_geometric; info['torch_geometric'] = torch_geometric.__version__\n"
            "print(json.dumps(info))\n"
        )
        proc = self.call("machine", [sys.executable, "-c", code], 60)
        self.metrics["machine"] = _last_json(proc)

    def cuda_checks(self) -> bool:
        """CUDA tests and the standalone kernel check, per fused op; True if
        ``edge_aggregate``'s kernels may be used (``edge_label_aggregate``'s verdict goes to
        ``cuda_edge_label_kernels_passed`` in the metrics: its kernels are never used here)."""
        timeouts = self.setting["timeouts"]
        names = ["tests/ops/test_cuda_kernels.py"] + (
            [] if self.args.rehearsal else ["tests/ops/test_edge_aggregate.py"]
        )
        passed = self._pytest(
            "cuda_tests", names, f"not {_LABEL_TESTS}", timeouts["tests"], {KERNEL_ENV: "1"}
        )
        label_passed = self._pytest(
            "cuda_tests_edge_label",
            ["tests/ops/test_edge_label_aggregate.py", "tests/ops/test_cuda_kernels.py"],
            _LABEL_TESTS,
            timeouts["tests_edge_label"],
            {KERNEL_ENV: "1", LABEL_KERNEL_ENV: "1"},
        )
        check = REPO / "scripts" / "check_cuda_kernels.py"
        if check.is_file():
            proc = self.call("kernel_check", [sys.executable, str(check)], timeouts["check"])
            summary = _last_json(proc) or {}
            self.metrics["kernel_check"] = summary
            ran = proc is not None and proc.returncode in (0, 1)
            # Each op by its own verdict (a summary without them: the exit code decides).
            whole = proc is not None and proc.returncode == 0
            passed = passed and ran and summary.get("edge_aggregate_ok", whole) is True
            label = summary.get("edge_label_aggregate") or {}
            label_passed = label_passed and ran and label.get("ok", whole) is True
        else:
            passed = label_passed = False
        on_gpu = self.setting["device"] == "cuda"
        self.metrics["cuda_kernels_passed"] = passed and on_gpu
        self.metrics["cuda_edge_label_kernels_passed"] = label_passed and on_gpu
        self.log(f"CUDA kernels usable: {passed and on_gpu}")
        self.log(
            f"edge_label_aggregate's CUDA kernels passed: {label_passed and on_gpu} "
            f"(opt-in, {LABEL_KERNEL_ENV}=1; not used by this runbook)"
        )
        return passed and on_gpu

    def _pytest(
        self, name: str, files: list[str], select: str, timeout: float, env: dict[str, str]
    ) -> bool:
        """One pytest stage over the existing ``files``, tests selected by ``-k select``;
        True if it passed or was skipped (``--skip-tests``: the kernel check decides)."""
        tests = [p for p in files if (REPO / p).is_file() and not self.args.skip_tests]
        if not tests:
            return True
        cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-k", select, *tests]
        proc = self.call(name, cmd, timeout, **env)
        return proc is not None and proc.returncode == 0

    def bench(self, kernels: bool) -> None:
        target = self.work / "bench_operators.json"
        base = [
            sys.executable,
            str(Path(__file__).resolve()),
            "bench",
            "--device",
            self.setting["device"],
            "--setting",
            json.dumps(self.setting["bench"]),
        ]
        results: dict[str, Any] = {}
        variants = [("reference", self.setting["bench_operators"], "0")]
        if kernels:
            variants.append(("cuda_kernels", "lecc_node", "1"))
        for label, names, flag in variants:
            target.unlink(missing_ok=True)
            proc = self.call(
                f"bench_{label}",
                [*base, "--operators", names, "--json", str(target)],
                self.setting["timeouts"]["bench"],
                **{KERNEL_ENV: flag},
            )
            if proc is not None and proc.returncode == 0 and target.is_file():
                results[label] = json.loads(target.read_text())
        # In metrics.json: $OUT's eight files go to the weights, logs and metadata.
        self.metrics["bench_operators"] = results

    def train_budget(self) -> float:
        return min(self.left() - _RESERVE_S, self.setting.get("max_train_s", math.inf))

    def probe(self, kernels: bool) -> dict[str, Any]:
        """Times training iterations per implementation, precision, batch size and compile
        mode within the probe's budget; returns the setting to train with."""
        probe = self.setting["probe"]
        end = time.monotonic() + probe["budget_s"]
        amps = ("none", "bf16") if self.setting["probe_bf16"] else ("none",)
        impls = ["reference", "cuda_kernels"] if kernels else ["reference"]
        entries: list[dict[str, Any]] = []
        for impl in impls:
            for amp in amps:
                entries += self._probe_call(impl, amp, "none", probe["batches"], end)
        eager = choose_setting(entries, self.train_budget())
        if self.setting["probe_compile"] and eager is not None:
            # The batch sizes in the order of their eager speed: the likeliest first.
            same = [e for e in entries if (e["impl"], e["amp"]) == (eager["impl"], eager["amp"])]
            order = [e["batch"] for e in sorted(same, key=lambda e: -e.get("patches_per_s", 0))]
            modes = "reduce-overhead,default"  # CUDA graphs where they work
            entries += self._probe_call(eager["impl"], eager["amp"], modes, order, end)
        fallback = {"impl": "reference", "amp": "none", "compile": "none", "s_per_iter": 1.0}
        choice = choose_setting(entries, self.train_budget()) or {**fallback, "batch": PAPER_BATCH}
        t10 = batch10_time(entries)
        self.metrics["probe"] = {
            "entries": entries,
            "batch10_s_per_iter": t10,
            "batch10_target_s": TARGET_BATCH10_S,
            "batch10_meets_target": None if t10 is None else t10 <= TARGET_BATCH10_S,
            "seconds": round(probe["budget_s"] - (end - time.monotonic()), 1),
        }
        self.log(
            f"training with {choice['impl']}, amp {choice['amp']}, batch {choice['batch']}, "
            f"compile {choice.get('compile', 'none')} ({choice['s_per_iter']:.4f} s/iteration)"
        )
        return choice

    def _probe_call(
        self, impl: str, amp: str, modes: str, batches: list[int], end: float
    ) -> list[dict[str, Any]]:
        """One probe process; its results so far, also after a timeout."""
        name = f"probe_{impl}_{amp}" + ("" if modes == "none" else "_compile")
        left = end - time.monotonic()
        if left < (3.0 if modes == "none" else _MIN_COMPILE_PROBE_S):
            self.log(f"{name}: skipped, {left:.0f}s left of the probe's budget")
            return []
        target = self.work / f"{name}.json"
        target.unlink(missing_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "probe", "--impl", impl]
        cmd += ["--device", self.setting["device"], "--amp", amp, "--compile", modes]
        cmd += ["--batches", ",".join(map(str, batches)), "--json", str(target)]
        cmd += ["--setting", json.dumps(self.setting)]
        flag = "1" if impl == "cuda_kernels" else "0"
        self.call(name, cmd, left, **{KERNEL_ENV: flag})
        return json.loads(target.read_text()) if target.is_file() else []

    def _init_weights(self, model: str, stem: str) -> str | None:
        """``stem``'s weights in the weights folder if they have the configured
        architecture (a continuation), else ``None`` (from scratch)."""
        path = Path(self.args.weights_dir) / f"{stem}.safetensors"
        if not path.is_file():
            return None
        arch = dict(self.setting["model"])
        build = "nir_gnn(**arch)"
        if model == "cnn":  # the CNN's width is matched to NIR-GNN's, as `train` does
            build = "cnn_baseline(match_features=arch.pop('features'), **arch)"
        code = (
            "import json\nfrom pyg_lecc.nir.hub import cnn_baseline, load_weights, nir_gnn\n"
            f"arch = {arch!r}\nmeta, _ = load_weights({str(path)!r})\n"
            f"print(json.dumps({{'same': meta['config'] == {build}.config()}}))\n"
        )
        result = _last_json(self.call(f"inspect_{stem}", [sys.executable, "-c", code], 60))
        if not (result and result.get("same")):
            self.log(f"{path} has another architecture: {stem} starts from scratch")
            return None
        return str(path)

    def _train_cmd(
        self, model: str, stem: str, budget: float, choice: dict[str, Any], iters: int | None
    ) -> list[str]:
        train = {**self.setting["train"], "batch_size": choice["batch"]}
        if iters is not None:  # a catch-up run: its schedule spans exactly these iterations
            train.update(iters=iters, warmup=min(train["warmup"], iters // 10))
        # About four validations of NIR-GNN in the budget (the PSNR-versus-time curve).
        val_every = max(5, int(budget / choice["s_per_iter"] / 4))
        gnn = model == "nir-gnn"
        cmd = [sys.executable, "-m", "pyg_lecc.nir.cli", "train", "--data", self.args.pack]
        cmd += ["--out", str(self.work / f"run-{stem}"), "--model", model]
        cmd += ["--device", self.setting["device"], "--time-budget", f"{budget:.0f}"]
        cmd += ["--no-progress", "--threads", "2" if self.args.rehearsal else "6"]
        cmd += ["--amp", choice["amp"] if gnn else "none"]
        cmd += ["--compile", choice.get("compile", "none") if gnn else "none"]
        cmd += ["--val-every", str(val_every if gnn else 4 * val_every)]
        cmd += ["--holdout-pairs", self.args.holdout_pairs]
        for key, value in {**self.setting["model"], **train}.items():
            cmd += [f"--{key.replace('_', '-')}", str(value)]
        init = self._init_weights(model, stem)
        if init is not None:
            # The average must not keep ema**t of the starting weights (issue 19).
            cmd += ["--init-from", init, "--ema-bias-correction"]
        return cmd

    def train(self, choice: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Trains F=99 and, while it lags, the CNN side by side; returns per stem the model
        name, command, run folder and iterations before."""
        budget = self.train_budget()
        if self.left() - _RESERVE_S < 10:
            self.log(f"no time left to train ({self.left() - _RESERVE_S:.0f}s)")
            return {}
        self.metrics["train_budget_s"] = round(budget, 1)
        weights_dir = Path(self.args.weights_dir)
        before = {s: read_iterations(weights_dir / f"{s}.json") for s in (F99, "cnn")}
        due = cnn_iterations_due(before["cnn"], before[F99])
        self.metrics["iterations_before"] = {**before, "cnn_due": due}
        jobs = {F99: ("nir-gnn", self._train_cmd("nir-gnn", F99, budget, choice, None))}
        if due:
            jobs["cnn"] = ("cnn", self._train_cmd("cnn", "cnn", budget, choice, due))
        self.log(f"CNN {before['cnn']} iterations, F=99 {before[F99]}: CNN trains {due}")
        procs = {}
        for stem, (model, cmd) in jobs.items():
            kernels = model == "nir-gnn" and choice["impl"] == "cuda_kernels"
            flag = "1" if kernels else "0"
            self.log(f"train {stem}: {' '.join(cmd)}")
            out = open(self.work / f"train-{stem}.out", "w")  # noqa: SIM115 (closed below)
            proc = subprocess.Popen(
                cmd, cwd=REPO, env=self.env(**{KERNEL_ENV: flag}), stdout=out, stderr=out
            )
            procs[stem] = (proc, out)
        runs = {}
        for stem, (proc, out) in procs.items():
            try:
                code = proc.wait(timeout=max(1.0, self.left() - 30))
            except subprocess.TimeoutExpired:
                proc.terminate()
                code = proc.wait()
            out.close()
            self._log_output((self.work / f"train-{stem}.out").read_text())
            status = "ok" if code == 0 else f"exit {code}"
            self.log(f"train {stem}: {status}")
            self.metrics["stages"][f"train_{stem}"] = {"status": status}
            run_dir = self.work / f"run-{stem}"
            for src, dst in ((TRAINED_WEIGHTS, ".safetensors"), ("log.jsonl", ".log.jsonl")):
                if (run_dir / src).is_file():
                    shutil.copyfile(run_dir / src, self.out / f"{stem}{dst}")
            if (run_dir / TRAINED_WEIGHTS).is_file():
                model, cmd = jobs[stem]
                runs[stem] = {"model": model, "cmd": cmd, "dir": run_dir, "before": before[stem]}
        return runs

    def score(self, runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Held-out and validation metrics of the trained weights and the shipped default
        NIR-GNN; says which NIR-GNN is better on the held-out pairs."""
        weights = {
            f"{s}_trained": (r["model"], str(r["dir"] / TRAINED_WEIGHTS)) for s, r in runs.items()
        }
        weights["nir-gnn_shipped"] = ("nir-gnn", "default")
        results = {}
        for label, (model, path) in weights.items():
            target = self.work / f"score-{label}.json"
            target.unlink(missing_ok=True)
            cmd = [sys.executable, str(Path(__file__).resolve()), "score", "--data", self.args.pack]
            cmd += ["--weights", path, "--model", model, "--device", self.setting["device"]]
            cmd += ["--holdout-pairs", self.args.holdout_pairs, "--json", str(target)]
            proc = self.call(f"score_{label}", cmd, self.setting["timeouts"]["score"])
            if proc is not None and proc.returncode == 0 and target.is_file():
                results[label] = json.loads(target.read_text())
        self.metrics["scores"] = results
        f99, shipped = results.get(f"{F99}_trained"), results.get("nir-gnn_shipped")
        if f99 and shipped:
            gain = f99["holdout"]["psnr"] - shipped["holdout"]["psnr"]
            better = F99 if gain > 0 else "nir-gnn (shipped default)"
            self.metrics["holdout_comparison"] = {"better": better, "f99_gain_db": round(gain, 4)}
            self.log(f"held-out pairs: {better} is better ({gain:+.3f} dB for F=99)")
        return results

    def write_metadata(
        self, runs: dict[str, dict[str, Any]], scores: dict[str, dict[str, Any]], choice: dict
    ) -> None:
        """``<stem>.json`` for each trained lineage, in the format of the shipped
        ``nir-gnn.json``: cumulative iterations and time, this run appended to ``lineage``."""
        gpu = (self.metrics.get("machine") or {}).get("gpu", "CPU rehearsal")
        for stem, run in runs.items():
            score = scores.get(f"{stem}_trained")
            if score is None:
                continue
            its, secs = _progress(run["dir"] / "log.jsonl")
            path = Path(self.args.weights_dir) / f"{stem}.json"
            prev = json.loads(path.read_text()) if path.is_file() else {}
            kept = ("command", "iterations", "training_time_s", "hardware", "validation")
            lineage = prev.get("lineage") or (
                [{k: prev[k] for k in kept if k in prev}] if prev else []
            )
            entry = {
                "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "hardware": f"{gpu} (lent device machine, scripts/device_run.py)",
                "iterations": its,
                "wall_time_s": round(secs, 1),
                "batch_size": choice["batch"],
                "compile": choice.get("compile", "none") if run["model"] == "nir-gnn" else "none",
                "command": " ".join(run["cmd"][2:]),
                "holdout": score["holdout"],
                "validation": score["validation"],
            }
            meta = {
                "model": run["model"],
                "config": score["config"],
                "parameters": score["parameters"],
                "command": entry["command"],
                "iterations": run["before"] + its,
                "batch_size": choice["batch"],
                "patch": self.setting["train"]["patch"],
                "training_time_s": round(float(prev.get("training_time_s", 0.0)) + secs, 1),
                "hardware": entry["hardware"],
                "validation": score["validation"],
                "holdout": {"pairs": self.args.holdout_pairs, **score["holdout"]},
                "lineage": [*lineage, entry],
            }
            if stem == F99:
                meta["status"] = (
                    "in progress: the default once it beats nir-gnn on the held-out pairs"
                )
            (self.out / f"{stem}.json").write_text(json.dumps(meta, indent=2) + "\n")
            self.metrics.setdefault("cumulative_iterations", {})[stem] = meta["iterations"]

    def run(self) -> int:
        self.log(
            f"device runbook, deadline {self.args.deadline:.0f}s, rehearsal={self.args.rehearsal}"
        )
        try:
            self.machine()
            self.save_metrics()
            kernels = self.cuda_checks()
            self.save_metrics()
            self.bench(kernels)
            self.save_metrics()
            choice = self.probe(kernels)
            self.metrics["training_choice"] = choice
            self.save_metrics()
            runs = self.train(choice)
            self.save_metrics()
            scores = self.score(runs)
            self.write_metadata(runs, scores, choice)
        except Exception as err:  # keep whatever was measured
            self.log(f"runbook error: {err!r}")
            self.metrics["error"] = repr(err)
        self.save_metrics()
        self.log("done")
        return 0 if "error" not in self.metrics else 1


def _progress(log: Path) -> tuple[int, float]:
    """Iterations and training seconds of a run, from its ``log.jsonl``."""
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return (
        max((int(e.get("iteration", 0)) for e in lines), default=0),
        max((float(e.get("time", 0.0)) for e in lines), default=0.0),
    )


def _last_json(proc: subprocess.CompletedProcess | None) -> dict[str, Any] | None:
    """The last stdout line of ``proc`` that parses as a JSON object."""
    if proc is None or not proc.stdout:
        return None
    for line in reversed(proc.stdout.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="the whole runbook")
    p.add_argument("--pack", required=True, help="data pack (pyg-lecc pack-data)")
    p.add_argument("--out", required=True, help="folder for the results (at most 8 files)")
    p.add_argument("--work", default=str(REPO / ".device" / "work"), help="scratch folder")
    p.add_argument("--deadline", type=float, default=520.0, help="seconds for everything")
    p.add_argument("--rehearsal", action="store_true", help="tiny sizes on the CPU")
    p.add_argument(
        "--skip-tests",
        action="store_true",
        help="skip the pytest stage (the kernel check still gates the CUDA kernels)",
    )
    p.add_argument(
        "--weights-dir",
        default=str(WEIGHTS_DIR),
        help="where nir-gnn-f99.safetensors/.json and cnn.safetensors/.json are read",
    )
    p.add_argument(
        "--holdout-pairs", default="default", help="selection pairs (pyg-lecc train's option)"
    )
    p = sub.add_parser("bench", help="operator timings (one stage)")
    p.add_argument("--device", required=True)
    p.add_argument("--setting", required=True)
    p.add_argument("--operators", required=True)
    p.add_argument("--json", required=True)
    p = sub.add_parser("probe", help="training-iteration timing (one stage)")
    p.add_argument("--device", required=True)
    p.add_argument("--setting", required=True)
    p.add_argument("--impl", required=True, help="label of the implementation (its env is set)")
    p.add_argument("--amp", choices=("none", "bf16"), default="none")
    p.add_argument("--compile", default="none", help="modes to try in order, comma-separated")
    p.add_argument("--batches", required=True, help="batch sizes, comma-separated")
    p.add_argument("--json", required=True)
    p = sub.add_parser("score", help="held-out and validation metrics (one stage)")
    p.add_argument("--data", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--holdout-pairs", required=True)
    p.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    stages = {"bench": _bench, "probe": _probe, "score": _score}
    if args.command in stages:
        stages[args.command](args)
        return 0
    return Runbook(args).run()


if __name__ == "__main__":
    raise SystemExit(main())
