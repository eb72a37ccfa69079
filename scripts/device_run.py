"""The device runbook: one call on a lent GPU machine that checks, measures and trains.

A session may be lent a GPU machine for a few minutes in all, one prepared command at a time
(see ``docs/training_on_a_gpu.rst``). This script is that command. Within ``--deadline``
seconds it

1. records the machine (torch, CUDA device, Triton);
2. runs the CUDA tests (``tests/test_ops_cuda.py`` with pytest, if pytest imports) and the
   standalone kernel check ``scripts/check_cuda_kernels.py``;
3. times the operators on the paper's graph (``benchmarks.operators``), with the reference
   path and, if the kernel checks passed, with the CUDA kernels;
4. times NIR-GNN training iterations for each implementation and precision, and picks the
   fastest (bfloat16 only if it saves at least a quarter of the time);
5. trains NIR-GNN and the CNN baseline side by side under the same time budget (both from
   the shipped weights when these have the configured architecture);
6. evaluates both, and the shipped weights, on the validation split;

and writes at most 8 files into ``--out``: ``device_run.log``, ``metrics.json``,
``bench_operators.json``, ``nir-gnn.safetensors``, ``cnn.safetensors``, ``nir-gnn.log.jsonl``,
``cnn.log.jsonl``. Every stage runs in its own process with a timeout, so a failing stage is
logged and the next one still runs.

``--rehearsal`` runs every stage on the CPU with tiny sizes, so that a lent GPU minute is
never spent on a typo (``tests/test_device_run.py`` does this in CI).

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
KERNEL_ENV = "PYG_LECC_CUDA_KERNELS"
# What `pyg-lecc train` exports into its run folder (pyg_lecc.training.WEIGHTS_NAME; this
# script imports nothing of the package, so that it runs before any install).
TRAINED_WEIGHTS = "weights.safetensors"
# Seconds kept after training for the final validation inside `train`, the evaluations and
# the copies (measured on CPU rehearsal; generous for a GPU).
_RESERVE_S = 90.0


# --------------------------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------------------------

# The paper's NIR-GNN (F=99, r=11, k=8, 3 graph layers per block) with a short-budget recipe:
# batch 16, warm-up then cosine decay from 2e-4 to 1e-5, EMA of the weights, 12 training pairs
# held out for selection.
FULL = {
    "device": "cuda",
    "model": {"features": 99, "rank": 11, "k": 8, "layers_per_block": 3},
    "train": {
        "batch_size": 16,
        "patch": 42,
        "lr": 2e-4,
        "lr_end": 1e-5,
        "schedule": "cosine",
        "warmup": 100,
        "ema": 0.998,
        "holdout": 12,
        "iters": 300_000,
        "ckpt_every": 500,
    },
    "probe_iters": 12,
    # bfloat16 autocast would also build the kNN graphs from bfloat16 features: not probed.
    "probe_bf16": False,
    "bench": {"features": 99, "num_patches": 10, "patch_size": 42, "k": 8, "max_gb": 40.0},
    "bench_operators": "lecc_node,gcn,gat",
    "timeouts": {"tests": 75, "check": 45, "bench": 50, "probe": 35, "eval": 40},
}

# Every stage on the CPU with tiny sizes (the CI rehearsal).
REHEARSAL = {
    "device": "cpu",
    "model": {"features": 6, "rank": 2, "k": 4, "layers_per_block": 1},
    "train": {
        "batch_size": 2,
        "patch": 12,
        "lr": 1e-3,
        "lr_end": 1e-4,
        "schedule": "cosine",
        "warmup": 2,
        "ema": 0.9,
        "holdout": 1,
        "iters": 100_000,
        "ckpt_every": 5,
    },
    "probe_iters": 2,
    "max_train_s": 8.0,
    "probe_bf16": True,
    "bench": {"features": 9, "num_patches": 1, "patch_size": 12, "k": 4, "max_gb": 1.0},
    "bench_operators": "lecc_node,lecc_edge,gcn,gat,edgeconv,nnconv",
    "timeouts": {"tests": 120, "check": 60, "bench": 120, "probe": 60, "eval": 120},
}


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
    """Seconds per training iteration of NIR-GNN (median after warm-up; JSON on stdout)."""
    import statistics

    import torch

    from benchmarks.iteration import time_training_iterations
    from pyg_lecc.models import nir_gnn

    setting = json.loads(args.setting)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    torch.manual_seed(0)
    times = time_training_iterations(
        nir_gnn(**setting["model"]),
        batch_size=setting["train"]["batch_size"],
        patch_size=setting["train"]["patch"],
        iterations=setting["probe_iters"],
        warmup=3,
        device=device,
        amp=torch.bfloat16 if args.amp == "bf16" else None,
    )
    peak = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None
    print(json.dumps({"s_per_iter": statistics.median(times), "peak_gb": peak}))


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
        """CUDA tests and the standalone kernel check; True if the kernels may be used."""
        timeouts = self.setting["timeouts"]
        names = ["tests/test_ops_cuda.py"] + ([] if self.args.rehearsal else ["tests/test_ops.py"])
        tests = [p for p in names if (REPO / p).is_file() and not self.args.skip_tests]
        passed = not tests  # the kernel check below decides alone when the tests are skipped
        if tests:
            proc = self.call(
                "cuda_tests",
                [sys.executable, "-m", "pytest", "-q", "-x", *tests],
                timeouts["tests"],
                **{KERNEL_ENV: "1"},
            )
            passed = proc is not None and proc.returncode == 0
        check = REPO / "scripts" / "check_cuda_kernels.py"
        if check.is_file():
            proc = self.call("kernel_check", [sys.executable, str(check)], timeouts["check"])
            self.metrics["kernel_check"] = _last_json(proc)
            passed = passed and proc is not None and proc.returncode == 0
        else:
            passed = False
        on_gpu = self.setting["device"] == "cuda"
        self.metrics["cuda_kernels_passed"] = passed and on_gpu
        self.log(f"CUDA kernels usable: {passed and on_gpu}")
        return passed and on_gpu

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
            proc = self.call(
                f"bench_{label}",
                [*base, "--operators", names, "--json", str(target)],
                self.setting["timeouts"]["bench"],
                **{KERNEL_ENV: flag},
            )
            if proc is not None and proc.returncode == 0 and target.is_file():
                results[label] = json.loads(target.read_text())
        (self.out / "bench_operators.json").write_text(json.dumps(results, indent=1))

    def probe(self, kernels: bool) -> dict[str, str]:
        """Times training iterations per implementation and precision; returns the env and
        amp mode to train with."""
        amps = ("none", "bf16") if self.setting["probe_bf16"] else ("none",)
        candidates = [("reference", amp, "0") for amp in amps]
        if kernels:
            candidates += [("cuda_kernels", amp, "1") for amp in amps]
        timings = {}
        for impl, amp, flag in candidates:
            proc = self.call(
                f"probe_{impl}_{amp}",
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "probe",
                    "--device",
                    self.setting["device"],
                    "--amp",
                    amp,
                    "--setting",
                    json.dumps(self.setting),
                ],
                self.setting["timeouts"]["probe"],
                **{KERNEL_ENV: flag},
            )
            result = _last_json(proc)
            if result and proc is not None and proc.returncode == 0:
                timings[(impl, amp, flag)] = result["s_per_iter"]
        self.metrics["probe_s_per_iter"] = {f"{i}/{a}": t for (i, a, _), t in timings.items()}
        if not timings:
            return {"impl": "reference", "amp": "none", "flag": "0", "s_per_iter": 1.0}

        def best(amp: str) -> tuple[str, str, str] | None:
            same = [key for key in timings if key[1] == amp]
            return min(same, key=timings.__getitem__) if same else None

        choice = best("none") or best("bf16")
        bf16 = best("bf16")
        # bfloat16 costs some precision: take it only for a clear gain.
        if choice is not None and bf16 is not None and timings[bf16] < 0.75 * timings[choice]:
            choice = bf16
        impl, amp, flag = choice  # type: ignore[misc]
        self.log(f"training with {impl}, amp {amp} ({timings[choice]:.4f} s/iteration)")
        return {"impl": impl, "amp": amp, "flag": flag, "s_per_iter": timings[choice]}

    def _init_weights(self, name: str) -> str | None:
        """The shipped weights of ``name`` if they have the configured architecture."""
        path = REPO / "src" / "pyg_lecc" / "weights" / f"{name}.safetensors"
        if self.args.rehearsal or not path.is_file():
            return None
        arch = dict(self.setting["model"])
        build = "nir_gnn(**arch)"
        if name == "cnn":  # the CNN's width is matched to NIR-GNN's, as `train` does
            build = "cnn_baseline(match_features=arch.pop('features'), **arch)"
        code = (
            "import json\nfrom pyg_lecc.models import cnn_baseline, load_weights, nir_gnn\n"
            f"arch = {arch!r}\nmeta, _ = load_weights({str(path)!r})\n"
            f"print(json.dumps({{'same': meta['config'] == {build}.config()}}))\n"
        )
        result = _last_json(self.call(f"inspect_{name}", [sys.executable, "-c", code], 60))
        return str(path) if result and result.get("same") else None

    def train(self, choice: dict[str, Any]) -> dict[str, Path]:
        inits = {name: self._init_weights(name) for name in ("nir-gnn", "cnn")}
        budget = self.left() - _RESERVE_S
        runs = {}
        procs = {}
        if budget < 10:
            self.log(f"no time left to train ({budget:.0f}s)")
            return runs
        budget = min(budget, self.setting.get("max_train_s", math.inf))
        self.metrics["train_budget_s"] = round(budget, 1)
        model, train = self.setting["model"], self.setting["train"]
        # About four validations of NIR-GNN in the budget (the PSNR-versus-time curve); the
        # CNN runs several times more iterations in the same time.
        val_every = max(5, int(budget / choice["s_per_iter"] / 4))
        for name in ("nir-gnn", "cnn"):
            run_dir = self.work / f"run-{name}"
            shutil.rmtree(run_dir, ignore_errors=True)
            cmd = [
                sys.executable,
                "-m",
                "pyg_lecc.cli",
                "train",
                "--data",
                self.args.pack,
                "--out",
                str(run_dir),
                "--model",
                name,
                "--device",
                self.setting["device"],
                "--time-budget",
                f"{budget:.0f}",
                "--no-progress",
                "--amp",
                choice["amp"] if name == "nir-gnn" else "none",
                "--val-every",
                str(val_every if name == "nir-gnn" else 4 * val_every),
                "--threads",
                "2" if self.args.rehearsal else "6",
            ]
            for key, value in {**model, **train}.items():
                cmd += [f"--{key.replace('_', '-')}", str(value)]
            if inits[name] is not None:
                cmd += ["--init-from", inits[name]]
            env = self.env(**{KERNEL_ENV: choice["flag"] if name == "nir-gnn" else "0"})
            self.log(f"train {name}: {' '.join(cmd)}")
            log_file = open(self.work / f"train-{name}.out", "w")  # noqa: SIM115 (closed below)
            procs[name] = (
                subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT),
                log_file,
                run_dir,
            )
        for name, (proc, log_file, run_dir) in procs.items():
            try:
                code = proc.wait(timeout=max(1.0, self.left() - 30))
            except subprocess.TimeoutExpired:
                proc.terminate()
                code = proc.wait()
            log_file.close()
            self._log_output((self.work / f"train-{name}.out").read_text())
            status = "ok" if code == 0 else f"exit {code}"
            self.log(f"train {name}: {status}")
            self.metrics["stages"][f"train_{name}"] = {"status": status}
            weights = run_dir / TRAINED_WEIGHTS
            for src, dst in (
                (weights, f"{name}.safetensors"),
                (run_dir / "log.jsonl", f"{name}.log.jsonl"),
            ):
                if src.is_file():
                    shutil.copyfile(src, self.out / dst)
            if weights.is_file():
                runs[name] = weights
        return runs

    def evaluate(self, runs: dict[str, Path]) -> None:
        weights = {f"{name}_trained": str(path) for name, path in runs.items()}
        if not self.args.rehearsal:
            weights.update({"nir-gnn_shipped": "default"})
        results = {}
        for label, path in weights.items():
            target = self.work / f"eval-{label}.json"
            target.unlink(missing_ok=True)
            model = "cnn" if label.startswith("cnn") else "nir-gnn"
            proc = self.call(
                f"eval_{label}",
                [
                    sys.executable,
                    "-m",
                    "pyg_lecc.cli",
                    "evaluate",
                    "--data",
                    self.args.pack,
                    "--split",
                    "validation",
                    "--model",
                    model,
                    "--weights",
                    path,
                    "--device",
                    self.setting["device"],
                    "--json",
                    str(target),
                ],
                self.setting["timeouts"]["eval"],
            )
            if proc is not None and proc.returncode == 0 and target.is_file():
                payload = json.loads(target.read_text())
                keys = ("psnr", "ssim", "ae_deg", "ae_img_rad")
                results[label] = {k: payload.get(k) for k in keys}
        self.metrics["validation"] = results

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
            self.evaluate(runs)
        except Exception as err:  # keep whatever was measured
            self.log(f"runbook error: {err!r}")
            self.metrics["error"] = repr(err)
        self.save_metrics()
        self.log("done")
        return 0 if "error" not in self.metrics else 1


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
    p = sub.add_parser("bench", help="operator timings (one stage)")
    p.add_argument("--device", required=True)
    p.add_argument("--setting", required=True)
    p.add_argument("--operators", required=True)
    p.add_argument("--json", required=True)
    p = sub.add_parser("probe", help="training-iteration timing (one stage)")
    p.add_argument("--device", required=True)
    p.add_argument("--setting", required=True)
    p.add_argument("--amp", choices=("none", "bf16"), default="none")
    args = parser.parse_args(argv)
    if args.command == "bench":
        _bench(args)
        return 0
    if args.command == "probe":
        _probe(args)
        return 0
    return Runbook(args).run()


if __name__ == "__main__":
    raise SystemExit(main())
