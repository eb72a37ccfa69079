"""Where one NIR-GNN training iteration spends its time, op by op, forward and backward.

The iteration is the trainer's: forward on a batch of random patches (the kNN graphs
included), MSE, backward, Adam step, at the shipped CPU width (F=24, rank 4, batches of 10
42x42 patches). ``torch.profiler`` records a few iterations after untimed warm-up ones; every
op's *self* time is attributed to the phase it ran in (``forward``, ``backward``, ``step``),
and forward ops also to the part of the model that called them (``knn_graph``: the
:class:`~pyg_lecc.ImageKNNGraph` builds; ``lightweight_ecc``: the non-local operator's node
products and fused op; ``rest``: convolutions, BatchNorm, activations). The Numba kernels of
the fused op run inside its custom op, so their time is that op's self time.

The same run times whole iterations without the profiler for each backward of the CPU
kernel (``one_pass``, the default; ``two_pass``, the fallback for graphs whose per-thread
buffers would be too large), so that their ratio comes from one run on one machine, and
splits their wall-clock time into forward, backward and step, and the forward's graph
builds. The profiler does not see the graph builds' selection, which runs in worker threads
(:func:`pyg_lecc.ops.knn.knn_in_windows`), so their self time in the op tables is only the
main thread's share; the wall-clock split gives their whole cost.

Run: ``python -m benchmarks.profile [--quick] [--threads 1]`` (writes
``benchmarks/results/profile.json`` and ``profile.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import (
    REPO_ROOT,
    collect_metadata,
    fmt_time,
    log,
    md_table,
    resolve_device,
    seed_everything,
    summarize_times,
    write_json,
)
from pyg_lecc import LightweightECC
from pyg_lecc.graph import ImageKNNGraph
from pyg_lecc.nir.hub import nir_gnn

PHASES: tuple[str, ...] = ("forward", "backward", "step")
PARTS: tuple[str, ...] = ("knn_graph", "lightweight_ecc")
BACKWARDS: tuple[str, ...] = ("one_pass", "two_pass")


@dataclasses.dataclass
class Config:
    """Settings of the iteration profile (defaults: full mode)."""

    features: int = 24
    rank: int = 4
    k: int = 8
    layers_per_block: int = 3
    batch_size: int = 10
    patch_size: int = 42
    warmup: int = 2
    iterations: int = 3
    timed_iterations: int = 5
    top: int = 12
    seed: int = 0
    device: str = "cpu"

    @classmethod
    def quick(cls, **overrides: Any) -> Config:
        """F=6 on batches of 2 patches of 16x16, one profiled and one timed iteration."""
        settings: dict[str, Any] = dict(
            features=6, rank=2, batch_size=2, patch_size=16, warmup=1, iterations=1,
            timed_iterations=1,
        )  # fmt: skip
        settings.update(overrides)
        return cls(**settings)


@contextlib.contextmanager
def _around(
    owner: type, name: str, context: Callable[[], contextlib.AbstractContextManager]
) -> Iterator[None]:
    # Runs every call of owner.name inside a fresh context() until the block ends
    # (benchmark only).
    original = getattr(owner, name)

    def wrapped(self, *args, **kwargs):
        with context():
            return original(self, *args, **kwargs)

    setattr(owner, name, wrapped)
    try:
        yield
    finally:
        setattr(owner, name, original)


@contextlib.contextmanager
def _labelled_parts() -> Iterator[None]:
    # Profiler ranges around the graph builds and the non-local operators (benchmark only).
    label = torch.profiler.record_function
    with (
        _around(ImageKNNGraph, "__call__", lambda: label("knn_graph")),
        _around(LightweightECC, "forward", lambda: label("lightweight_ecc")),
    ):
        yield


@contextlib.contextmanager
def _clock(seconds: dict[str, float], key: str) -> Iterator[None]:
    # Adds the block's wall-clock seconds to seconds[key].
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start


@contextlib.contextmanager
def _phase(name: str, seconds: dict[str, float]) -> Iterator[None]:
    # A phase of the iteration: a profiler range, and its wall clock in seconds[name].
    with torch.profiler.record_function(name), _clock(seconds, name):
        yield


@contextlib.contextmanager
def _backward(kind: str) -> Iterator[None]:
    # The CPU kernel's two-pass backward, forced by allowing no per-thread buffer.
    from pyg_lecc.ops import cpu

    limit = cpu.ONE_PASS_BUFFER_BYTES
    cpu.ONE_PASS_BUFFER_BYTES = limit if kind == "one_pass" else -1
    try:
        yield
    finally:
        cpu.ONE_PASS_BUFFER_BYTES = limit


def _iteration(
    model: nn.Module, optimizer: torch.optim.Optimizer, cfg: Config, gen
) -> dict[str, float]:
    # One training iteration; returns the wall-clock seconds of its phases.
    shape = (cfg.batch_size, 1, cfg.patch_size, cfg.patch_size)
    nir = torch.rand(shape, generator=gen)
    rgb = torch.rand(cfg.batch_size, 3, cfg.patch_size, cfg.patch_size, generator=gen)
    optimizer.zero_grad(set_to_none=True)
    seconds: dict[str, float] = {}
    with _phase("forward", seconds):
        loss = F.mse_loss(model(nir), rgb)
    with _phase("backward", seconds):
        loss.backward()
    with _phase("step", seconds):
        optimizer.step()
    return seconds


def _labels(event: Any) -> list[str]:
    labels = []
    while event is not None:
        labels.append(event.name)
        event = event.cpu_parent
    return labels


def _breakdown(prof: torch.profiler.profile, iterations: int) -> dict[str, Any]:
    # Self time (ms per iteration) of every op by phase, and of the forward by model part.
    ops: dict[str, dict[str, float]] = {p: defaultdict(float) for p in PHASES}
    parts: dict[str, float] = defaultdict(float)
    for event in prof.events():
        labels = _labels(event)
        phase = next((p for p in PHASES if p in labels), None)
        if phase is None or event.name in PHASES or event.name in PARTS:
            continue
        ms = event.self_cpu_time_total / 1e3 / iterations
        ops[phase][event.name] += ms
        if phase == "forward":
            parts[next((p for p in PARTS if p in labels), "rest")] += ms
    return {
        "phases_ms": {p: sum(ops[p].values()) for p in PHASES},
        "forward_parts_ms": dict(parts),
        "ops_ms": {p: dict(sorted(ops[p].items(), key=lambda kv: -kv[1])) for p in PHASES},
    }


def _model(cfg: Config) -> tuple[nn.Module, torch.optim.Optimizer]:
    seed_everything(cfg.seed)
    model = nir_gnn(
        features=cfg.features, rank=cfg.rank, k=cfg.k, layers_per_block=cfg.layers_per_block
    ).train()
    return model, torch.optim.Adam(model.parameters(), lr=1e-4)


def _time_backwards(cfg: Config) -> dict[str, dict[str, Any]]:
    # Whole iterations, no profiler; the two backwards alternate so that load hits both.
    # Besides the iteration's summary, the median wall-clock seconds of its phases and of
    # the forward's graph builds.
    model, optimizer = _model(cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    parts = (*PHASES, "knn_graph")
    times: dict[str, dict[str, list[float]]] = {
        kind: {part: [] for part in ("iteration", *parts)} for kind in BACKWARDS
    }
    for i in range(cfg.warmup + cfg.timed_iterations):
        for kind in BACKWARDS:
            builds = {"knn_graph": 0.0}
            build_clock = functools.partial(_clock, builds, "knn_graph")
            with _backward(kind), _around(ImageKNNGraph, "__call__", build_clock):
                seconds = _iteration(model, optimizer, cfg, gen)
            if i >= cfg.warmup:
                seconds.update(iteration=sum(seconds.values()), **builds)
                for part, value in seconds.items():
                    times[kind][part].append(value)
    return {
        kind: {
            **summarize_times(t["iteration"]),
            "wall_s": {part: statistics.median(t[part]) for part in parts},
        }
        for kind, t in times.items()
    }


def run(cfg: Config, out_dir: Path) -> dict[str, Any]:
    """Runs the iteration profile; returns its JSON-ready result."""
    if resolve_device(cfg.device).type != "cpu":
        return {"config": dataclasses.asdict(cfg), "status": "skipped: CPU only"}
    log(
        f"profile: NIR-GNN F={cfg.features} r={cfg.rank}, batches of {cfg.batch_size} "
        f"{cfg.patch_size}x{cfg.patch_size}, {torch.get_num_threads()} thread(s)"
    )
    model, optimizer = _model(cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    with _labelled_parts():
        for _ in range(cfg.warmup):
            _iteration(model, optimizer, cfg, gen)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(cfg.iterations):
                _iteration(model, optimizer, cfg, gen)
    result: dict[str, Any] = {"config": dataclasses.asdict(cfg), "status": "ok"}
    result.update(_breakdown(prof, cfg.iterations))
    result["iteration_by_backward"] = _time_backwards(cfg)
    for kind, entry in result["iteration_by_backward"].items():
        log(f"  {kind}: {fmt_time(entry['time_s'])}/iteration")
    return result


def markdown(result: dict[str, Any]) -> str:
    """The profile as markdown tables."""
    cfg = result["config"]
    lines = [
        "## Profile of a training iteration\n",
        f"NIR-GNN F={cfg['features']}, rank {cfg['rank']}, k={cfg['k']}, batches of "
        f"{cfg['batch_size']} {cfg['patch_size']}x{cfg['patch_size']} patches; self time per "
        f"iteration (`torch.profiler`, {cfg['iterations']} iteration(s) after "
        f"{cfg['warmup']} warm-up). Command: `python -m benchmarks.profile`.\n",
    ]
    if result.get("status") != "ok":
        return "\n".join([*lines, result.get("status", "")])
    phases = result["phases_ms"]
    total = sum(phases.values()) or 1.0
    rows = [[p, f"{ms:.1f} ms", f"{100 * ms / total:.1f} %"] for p, ms in phases.items()]
    rows += [
        [f"forward: {part}", f"{ms:.1f} ms", f"{100 * ms / total:.1f} %"]
        for part, ms in result["forward_parts_ms"].items()
    ]
    lines += [md_table(["phase", "time / iteration", "share"], rows), ""]
    for phase in PHASES:
        top = list(result["ops_ms"][phase].items())[: cfg["top"]]
        op_rows = [[f"`{name}`", f"{ms:.1f} ms", f"{100 * ms / total:.1f} %"] for name, ms in top]
        lines += [
            f"**{phase}** (largest ops)\n",
            md_table(["op", "self time", "share"], op_rows),
            "",
        ]
    timed = result["iteration_by_backward"]
    base = timed["two_pass"]["time_s"]
    rows = [
        [f"`{kind}`", fmt_time(e["time_s"]), f"{e['time_s'] / base:.2f}x"]
        for kind, e in timed.items()
    ]
    wall = timed["one_pass"]["wall_s"]
    iteration = timed["one_pass"]["time_s"]
    wall_rows = [
        [name, fmt_time(wall[part]), f"{100 * wall[part] / iteration:.1f} %"]
        for name, part in (
            ("forward", "forward"),
            ("forward: graph builds (all threads)", "knn_graph"),
            ("backward", "backward"),
            ("step", "step"),
        )
    ]
    lines += [
        "Whole iterations without the profiler, by backward of the CPU kernel (alternating, "
        "median):\n",
        md_table(["backward", "time / iteration", "/ two_pass"], rows),
        "",
        "Wall clock of the `one_pass` iterations by phase (median; the profiler misses the "
        "graph builds' worker threads):\n",
        md_table(["phase", "time / iteration", "share"], wall_rows),
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.profile``: writes ``profile.json`` and ``profile.md``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = Config.quick() if args.quick else Config()
    result = run(cfg, args.out)
    result["metadata"] = collect_metadata(
        quick=args.quick, device=torch.device("cpu"), seed=cfg.seed
    )
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "profile.json", result)
    (args.out / "profile.md").write_text(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
