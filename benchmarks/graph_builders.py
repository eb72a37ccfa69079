"""The image kNN graph builder, :func:`pyg_lecc.image_knn_graph`, per backend.

Backends: ``"torch"`` (dense blocked distances, any device, optional search window),
``"numba"`` (the same distances, one strided matrix product per query tile, with the window,
exclusion and top-k selection fused into one Numba pass; CPU only; what ``"auto"`` runs on
CPU) and ``"torch_cluster"`` (``torch_cluster.knn``, a KD-tree on CPU; whole-image search
only, so it has no search-window configurations) when importable. Inputs: random N(0, 1)
features of width 3, 33 and 99 over a batch of ten 42x42 patches (the training batch), 128x128 and
256x256 images, and a 1024x680 image (full-resolution inference size), searched over whole
images or within a 49x49 window (the inference setting), k=8.

Time budget: configurations are visited from small to large images; one whose predicted
time per call (the previous size's time scaled by the number of query-candidate pairs) is
over ``time_budget_s`` is skipped and recorded as such. Whole-image search of a 1024x680
image (~4.8e11 pairs) is therefore skipped, and so may be 256x256 with torch_cluster at
F=99 (a KD-tree in 99 dimensions degrades to near brute force).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    fmt_mb,
    fmt_ratio,
    fmt_time,
    guarded,
    log,
    md_table,
    measure_peak_memory,
    plot_panels,
    resolve_device,
    status_text,
    time_function,
)
from pyg_lecc import image_knn_graph
from pyg_lecc.typing import WITH_NUMBA, WITH_TORCH_CLUSTER

BACKENDS: tuple[str, ...] = ("torch", "numba", "torch_cluster")

Size = tuple[str, int, int, int]
"""(label, batch, height, width)."""


@dataclasses.dataclass
class Config:
    """Settings of the graph-builder benchmark (defaults: full mode)."""

    sizes: tuple[Size, ...] = (
        ("10x42x42", 10, 42, 42),
        ("128x128", 1, 128, 128),
        ("256x256", 1, 256, 256),
        ("1024x680", 1, 680, 1024),
    )
    features: tuple[int, ...] = (3, 33, 99)
    windows: tuple[int | None, ...] = (None, 49)
    backends: tuple[str, ...] = BACKENDS
    k: int = 8
    min_run_time: float = 0.5
    time_budget_s: float = 60.0
    seed: int = 0
    device: str = "auto"

    @classmethod
    def quick(cls, **overrides: Any) -> Config:
        """Two small sizes, F in (3, 33), a 10 s budget."""
        settings: dict[str, Any] = dict(
            sizes=(("2x42x42", 2, 42, 42), ("64x64", 1, 64, 64)),
            features=(3, 33),
            min_run_time=0.05,
            time_budget_s=10.0,
        )
        settings.update(overrides)
        return cls(**settings)


def _pairs(size: Size, window: int | None) -> int:
    # Query-candidate pairs: the work of a whole-image (or windowed) search.
    _, B, H, W = size
    candidates = H * W if window is None else min(window, H) * min(window, W)
    return B * H * W * candidates


def _measure(
    size: Size, F: int, window: int | None, backend: str, cfg: Config, device: torch.device
) -> dict[str, Any]:
    _, B, H, W = size
    gen = torch.Generator().manual_seed(cfg.seed)
    feats = torch.randn(B, F, H, W, generator=gen).to(device)

    def build() -> None:
        image_knn_graph(feats, k=cfg.k, search_window=window, backend=backend)

    timing, failure = guarded(
        lambda: time_function(
            build,
            device=device,
            min_run_time=cfg.min_run_time,
            max_total_s=min(60.0, cfg.time_budget_s),
        )
    )
    if failure is not None:
        return failure
    memory, failure = guarded(lambda: measure_peak_memory(build, device))
    if failure is not None:
        return failure
    timing.pop("times")
    return {"status": "ok", **timing, **memory}


def run(cfg: Config, out_dir: Path) -> dict[str, Any]:
    """Runs the graph-builder benchmark; returns its JSON-ready result."""
    device = resolve_device(cfg.device)
    log(f"graph builders: k={cfg.k}, device {device}, budget {cfg.time_budget_s:g} s per call")
    entries: list[dict[str, Any]] = []
    sizes = sorted(cfg.sizes, key=lambda s: s[1] * s[2] * s[3])
    for backend in cfg.backends:
        for window in cfg.windows:
            for F in cfg.features:
                previous: tuple[int, float] | None = None  # (pairs, seconds)
                over_budget = False
                for size in sizes:
                    label, B, H, W = size
                    entry: dict[str, Any] = {
                        "backend": backend,
                        "size": label,
                        "batch": B,
                        "height": H,
                        "width": W,
                        "pixels": B * H * W,
                        "features": F,
                        "search_window": window,
                        "k": cfg.k,
                    }
                    entries.append(entry)
                    pairs = _pairs(size, window)
                    if backend == "torch_cluster" and window is not None:
                        entry.update(status="n/a", reason="torch_cluster has no search_window")
                        continue
                    if backend == "torch_cluster" and not WITH_TORCH_CLUSTER:
                        entry.update(status="skipped", reason="torch_cluster not installed")
                        continue
                    if backend == "torch_cluster" and device.type != "cpu":
                        entry.update(status="n/a", reason="torch_cluster.knn runs on CPU here")
                        continue
                    if backend == "numba" and not WITH_NUMBA:
                        entry.update(status="skipped", reason="numba not installed")
                        continue
                    if backend == "numba" and device.type != "cpu":
                        entry.update(status="n/a", reason="the Numba kernel runs on CPU")
                        continue
                    if over_budget:
                        entry.update(status="skipped", reason="smaller size already over budget")
                        continue
                    if previous is not None:
                        predicted = previous[1] * pairs / previous[0]
                        entry["predicted_s"] = predicted
                        if predicted > cfg.time_budget_s:
                            entry.update(
                                status="skipped",
                                reason=f"predicted {predicted:.0f} s per call > budget "
                                f"{cfg.time_budget_s:g} s",
                            )
                            over_budget = True
                            log(f"  {backend} {label} F={F} window={window}: {entry['reason']}")
                            continue
                    entry.update(_measure(size, F, window, backend, cfg, device))
                    if entry["status"] == "ok":
                        previous = (pairs, entry["time_s"])
                        log(
                            f"  {backend:13s} {label:9s} F={F:<3d} window={window!s:4s} "
                            f"{fmt_time(entry['time_s']):>9s} peak {fmt_mb(entry['peak_mb'])}"
                        )
                        if entry["time_s"] > cfg.time_budget_s:
                            over_budget = True
                    else:
                        over_budget = True
    result: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "device": str(device),
        "torch_cluster_available": WITH_TORCH_CLUSTER,
        "numba_available": WITH_NUMBA,
        "entries": entries,
    }
    result["plots"] = [p for p in (_plot(result, out_dir),) if p]
    return result


def _plot(result: dict[str, Any], out_dir: Path) -> str | None:
    panels = []
    for y_key, ylabel in (("time_s", "time per graph (s)"), ("peak_mb", "peak memory (MB)")):
        for window in result["config"]["windows"]:
            series: dict[str, tuple[list[float], list[float | None]]] = {}
            for e in result["entries"]:
                if e["search_window"] != window or e.get("status") in ("n/a",):
                    continue
                if e["backend"] == "torch_cluster" and window is not None:
                    continue
                xs, ys = series.setdefault(f"{e['backend']} F={e['features']}", ([], []))
                xs.append(e["pixels"])
                ys.append(e.get(y_key) if e.get("status") == "ok" else None)
            w = "whole image" if window is None else f"{window}x{window} window"
            panels.append(
                {
                    "series": series,
                    "xlabel": "pixels (batch x H x W)",
                    "ylabel": ylabel,
                    "title": f"{ylabel.split(' (')[0]}, {w}",
                }
            )
    if not panels:
        return None
    return plot_panels(
        out_dir / "graph_builders.png",
        panels,
        title="image_knn_graph (k=8), log-log",
        ncols=len(result["config"]["windows"]),
    )


def _speedup(entries: list[dict[str, Any]], entry: dict[str, Any]) -> float | None:
    # The torch backend's time on the same configuration of the same run over this one's.
    for e in entries:
        same = all(e[key] == entry[key] for key in ("size", "features", "search_window"))
        if same and e["backend"] == "torch" and e.get("status") == "ok":
            return e["time_s"] / entry["time_s"]
    return None


def markdown(result: dict[str, Any]) -> str:
    """The graph-builder table (markdown)."""
    cfg = result["config"]
    lines = [
        "## Image graph builders\n",
        f"`image_knn_graph(features, k={cfg['k']}, search_window=..., backend=...)` on random "
        "N(0, 1) features; time = median of `blocked_autorange` measurements; peak = tensor "
        "memory (profiler) and RSS high-water increase (which also sees torch_cluster's "
        "KD-tree). torch_cluster has no search window. Configurations predicted to take more "
        f"than {cfg['time_budget_s']:g} s per call are skipped (time of the previous size "
        "scaled by the number of query-candidate pairs). `numba` is the fused kernel that "
        "`backend='auto'` runs on CPU; `torch / this` is the torch backend's time over this "
        "row's, same configuration, same run.\n",
    ]
    rows = []
    for e in result["entries"]:
        if e.get("status") == "n/a":  # torch_cluster with a window: said above
            continue
        text = status_text(e)
        window = "whole" if e["search_window"] is None else f"{e['search_window']}"
        if text is not None:
            rows.append([e["backend"], e["size"], e["features"], window, text, "", "", "", ""])
            continue
        rows.append(
            [
                e["backend"],
                e["size"],
                e["features"],
                window,
                fmt_time(e["time_s"]),
                fmt_ratio(_speedup(result["entries"], e)),
                f"{e['pixels'] / e['time_s'] / 1e6:.3g}",
                fmt_mb(e["peak_mb"]),
                fmt_mb(e.get("rss_peak_mb")),
            ]
        )
    lines.append(
        md_table(
            [
                "backend",
                "image",
                "F",
                "window",
                "time",
                "torch / this",
                "Mpixel/s",
                "peak tensor mem",
                "peak RSS increase",
            ],
            rows,
        )
    )
    for plot in result.get("plots", []):
        lines.append(f"![graph builders]({plot})\n")
    return "\n".join(lines)
