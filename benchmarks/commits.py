"""NIR-GNN training iterations of several revisions side by side, in one run.

Each revision's ``src`` is taken from git (``git archive``, into a temporary folder; ``.``
is the work tree's own ``src``) and timed in processes of its own
(``benchmarks/commit_worker.py``: a fresh model with the same seed, Adam, MSE, batches of
random patches of the training NIR images, or uniform noise without them). The revisions
alternate, one process each per round, so that a change in the machine's load between
rounds hits them all alike; one untimed round first compiles each revision's Numba kernels
into its folder. Each revision's median seconds per iteration is reported, with its ratio
to the first revision's.

Run: ``python -m benchmarks.commits 4477b52 HEAD [--rounds 4] [--iterations 6]
[--threads 1]`` (writes ``benchmarks/results/commits.json`` and ``commits.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    DEFAULT_DATA_ROOT,
    REPO_ROOT,
    collect_metadata,
    log,
    md_table,
    write_json,
)

WORKER = Path(__file__).resolve().parent / "commit_worker.py"
WORK_TREE = "."
"""The revision name that stands for the work tree's own ``src``, uncommitted changes too."""


@dataclasses.dataclass
class Config:
    """Settings of a side-by-side run (defaults: the F=24 training iteration)."""

    revisions: tuple[str, ...]
    rounds: int = 4
    iterations: int = 6
    threads: int = 1
    nir_dir: Path | None = DEFAULT_DATA_ROOT / "vcip2020" / "NIR"
    batch: int = 10
    patch: int = 42
    features: int = 24
    rank: int = 4
    layers_per_block: int = 3


def _extract_src(revision: str, dest: Path) -> Path:
    # The revision's src folder, from git; the work tree's own for WORK_TREE.
    if revision == WORK_TREE:
        return REPO_ROOT / "src"
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", "--format=tar", revision, "src"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        message = archive.stderr.decode(errors="replace").strip()
        raise ValueError(f"cannot read 'src' of revision {revision!r} from git: {message}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest / "src"


def _nir_dir(cfg: Config) -> Path | None:
    # The training NIR images when they are there; else the workers train on noise.
    return cfg.nir_dir if cfg.nir_dir is not None and cfg.nir_dir.is_dir() else None


def _worker_command(cfg: Config, iterations: int, seed: int) -> list[str]:
    options = {
        "--iterations": iterations,
        "--seed": seed,
        "--threads": cfg.threads,
        "--batch": cfg.batch,
        "--patch": cfg.patch,
        "--features": cfg.features,
        "--rank": cfg.rank,
        "--layers-per-block": cfg.layers_per_block,
    }
    if (nir_dir := _nir_dir(cfg)) is not None:
        options["--nir-dir"] = nir_dir
    # -P: the worker's own folder (this one, whose profile.py would shadow the standard
    # library's) is not put on sys.path; the revision's src is, through PYTHONPATH.
    return [sys.executable, "-P", str(WORKER), *(str(x) for kv in options.items() for x in kv)]


def _time_revision(src: Path, cfg: Config, iterations: int, seed: int) -> list[float]:
    # One process on one revision's src: its per-iteration seconds.
    threads = str(cfg.threads)
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS=threads, NUMBA_NUM_THREADS=threads)
    done = subprocess.run(
        _worker_command(cfg, iterations, seed), env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"the worker failed on {src}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(cfg: Config) -> dict[str, Any]:
    """Times the revisions alternately; returns per-revision times, medians and ratios."""
    if not cfg.revisions:
        raise ValueError("no revisions to compare")
    for name in ("rounds", "iterations", "threads"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"'{name}' must be at least 1, got {getattr(cfg, name)}")
    repeated = sorted({rev for rev in cfg.revisions if cfg.revisions.count(rev) > 1})
    if repeated:
        raise ValueError(f"revisions given more than once: {', '.join(repeated)}")
    times: dict[str, list[float]] = {rev: [] for rev in cfg.revisions}
    with tempfile.TemporaryDirectory(prefix="pyg_lecc_commits_") as tmp:
        srcs = {rev: _extract_src(rev, Path(tmp) / str(i)) for i, rev in enumerate(times)}
        for src in srcs.values():  # untimed: compiles the revision's kernels
            _time_revision(src, cfg, iterations=0, seed=0)
        for r in range(cfg.rounds):
            for rev, src in srcs.items():
                times[rev] += _time_revision(src, cfg, cfg.iterations, seed=r)
            log(
                f"round {r + 1}/{cfg.rounds}: "
                + ", ".join(f"{rev} {statistics.median(t):.3f} s" for rev, t in times.items())
            )
    base = statistics.median(times[cfg.revisions[0]])
    return {
        rev: {"times_s": t, "median_s": statistics.median(t), "ratio": statistics.median(t) / base}
        for rev, t in times.items()
    }


def render_markdown(cfg: Config, results: dict[str, Any], meta: dict[str, Any]) -> str:
    data = "noise" if _nir_dir(cfg) is None else "training NIR images"
    rows = [
        [f"`{rev}`", f"{r['median_s']:.3f} s", f"{r['ratio']:.2f}x", len(r["times_s"])]
        for rev, r in results.items()
    ]
    return (
        "## Training iterations side by side\n\n"
        f"NIR-GNN F={cfg.features}, rank {cfg.rank}, batches of {cfg.batch} "
        f"{cfg.patch}x{cfg.patch} patches of {data}, {cfg.threads} thread(s); {cfg.rounds} "
        f"rounds of {cfg.iterations} iterations per revision, alternating, one process each, "
        f"after one untimed round. Commit `{meta['git_commit']}`, {meta['date']}. Command: "
        f"`python -m benchmarks.commits {' '.join(cfg.revisions)}`.\n\n"
        + md_table(["revision", "time / iteration (median)", "ratio", "iterations"], rows)
        + "\n"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("revisions", nargs="+", help=f"git revisions ({WORK_TREE!r}: the work tree)")
    p.add_argument("--rounds", type=int, default=Config.rounds)
    p.add_argument("--iterations", type=int, default=Config.iterations)
    p.add_argument("--threads", type=int, default=Config.threads)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    cfg = Config(tuple(args.revisions), args.rounds, args.iterations, args.threads)
    results = run(cfg)
    meta = collect_metadata(quick=False, device=torch.device("cpu"), seed=0, argv=argv)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(
        args.out / "commits.json",
        {"metadata": meta, "config": dataclasses.asdict(cfg), "results": results},
    )
    (args.out / "commits.md").write_text(render_markdown(cfg, results, meta))
    log(f"wrote {args.out / 'commits.json'} and commits.md")


if __name__ == "__main__":
    main()
