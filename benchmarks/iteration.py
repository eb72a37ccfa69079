"""Training-iteration time of NIR-GNN against the CNN baseline of the same width.

One training iteration is what every run of ``pyg-lecc train`` repeats: the forward pass on a
batch of patches (graph building included), the MSE loss, the backward pass and an Adam
step. Measured here for NIR-GNN at the paper's width (F=99, rank 11) and at the shipped CPU
width (F=24, rank 4), each

- with the device's fused LightweightECC kernel (``kernel``: Numba on CPU, Triton on CUDA);
- with the fused op forced to its plain PyTorch reference (``reference``,
  :func:`pyg_lecc.ops.use_reference`);

against ``cnn_baseline(features=F)``: the same backbone without the non-local path, same
width (fewer parameters; the counts are reported). Batches of random uniform patches (the
time does not depend on the pixel values beyond the kNN graphs' neighbour choice), fixed
seed, ``time.perf_counter`` around each iteration after untimed warm-up iterations; the
median is reported with the ratio to the CNN of the same width measured in the same run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import (
    fmt_count,
    fmt_ratio,
    fmt_time,
    guarded,
    log,
    md_table,
    plot_panels,
    resolve_device,
    seed_everything,
    status_text,
    summarize_times,
    synchronize,
)
from pyg_lecc.nir.hub import cnn_baseline, nir_gnn
from pyg_lecc.nir.models import num_parameters
from pyg_lecc.ops import backend_for, use_reference

VARIANTS: tuple[str, ...] = ("kernel", "reference", "cnn")
"""NIR-GNN with the device's kernel, NIR-GNN with the reference op, the CNN baseline."""


@dataclasses.dataclass
class Config:
    """Settings of the training-iteration benchmark (defaults: full mode)."""

    widths: tuple[tuple[int, int], ...] = ((99, 11), (24, 4))
    layers_per_block: int = 3
    k: int = 8
    batch_size: int = 10
    patch_size: int = 42
    warmup: int = 1
    iterations: int = 3
    variants: tuple[str, ...] = VARIANTS
    seed: int = 0
    device: str = "auto"

    @classmethod
    def quick(cls, **overrides: Any) -> Config:
        """F=12 and F=6 on batches of 2 patches of 16x16, one timed iteration."""
        settings: dict[str, Any] = dict(
            widths=((12, 2), (6, 2)), batch_size=2, patch_size=16, iterations=1
        )
        settings.update(overrides)
        return cls(**settings)


def time_training_iterations(
    model: nn.Module,
    *,
    batch_size: int,
    patch_size: int,
    iterations: int,
    warmup: int = 1,
    device: torch.device | str = "cpu",
    amp: torch.dtype | None = None,
    seed: int = 0,
) -> list[float]:
    """Seconds of each of ``iterations`` timed training iterations of ``model`` (after
    ``warmup`` untimed ones): forward on random ``(batch_size, 1, patch_size, patch_size)``
    NIR patches, MSE against random RGB targets, backward, Adam step. ``amp`` runs the
    forward pass under autocast to that dtype."""
    device = torch.device(device)
    model = model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(seed)
    times = []
    for i in range(warmup + iterations):
        nir = torch.rand(batch_size, 1, patch_size, patch_size, generator=gen).to(device)
        rgb = torch.rand(batch_size, 3, patch_size, patch_size, generator=gen).to(device)
        synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, amp or torch.float32, enabled=amp is not None):
            loss = F.mse_loss(model(nir).float(), rgb)
        loss.backward()
        optimizer.step()
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def _build(variant: str, features: int, rank: int, cfg: Config) -> nn.Module:
    if variant == "cnn":
        return cnn_baseline(features=features, layers_per_block=cfg.layers_per_block)
    return nir_gnn(features=features, rank=rank, k=cfg.k, layers_per_block=cfg.layers_per_block)


def _measure(variant: str, model: nn.Module, cfg: Config, device: torch.device) -> dict:
    seed_everything(cfg.seed)
    forced = use_reference() if variant == "reference" else contextlib.nullcontext()
    with forced:
        backend = backend_for(device)
        times = time_training_iterations(
            model,
            batch_size=cfg.batch_size,
            patch_size=cfg.patch_size,
            iterations=cfg.iterations,
            warmup=cfg.warmup,
            device=device,
            seed=cfg.seed,
        )
    entry: dict[str, Any] = {"status": "ok", **summarize_times(times), "times": times}
    if variant != "cnn":
        entry["backend"] = backend
    return entry


def run(cfg: Config, out_dir: Path) -> dict[str, Any]:
    """Runs the training-iteration benchmark; returns its JSON-ready result."""
    device = resolve_device(cfg.device)
    log(
        f"iteration: widths {[f for f, _ in cfg.widths]}, batches of {cfg.batch_size} "
        f"{cfg.patch_size}x{cfg.patch_size} patches, {cfg.iterations} timed iteration(s) "
        f"after {cfg.warmup} warm-up, device {device}"
    )
    entries: list[dict[str, Any]] = []
    for features, rank in cfg.widths:
        measured: dict[str, dict[str, Any]] = {}
        for variant in cfg.variants:
            model = _build(variant, features, rank, cfg)
            entry: dict[str, Any] = {
                "features": features,
                "rank": None if variant == "cnn" else rank,
                "variant": variant,
                "params": num_parameters(model),
            }
            timing, failure = guarded(lambda v=variant, m=model: _measure(v, m, cfg, device))
            entry.update(failure if failure is not None else timing)
            measured[variant] = entry
            entries.append(entry)
        cnn = measured.get("cnn", {})
        for entry in measured.values():
            if entry.get("status") == "ok" and cnn.get("status") == "ok":
                entry["cnn_ratio"] = entry["time_s"] / cnn["time_s"]
            if entry.get("status") == "ok":
                log(
                    f"  F={features:3d} {entry['variant']:9s} {fmt_time(entry['time_s']):>9s}"
                    f"/iteration ({fmt_ratio(entry.get('cnn_ratio'))} CNN)"
                )
    result: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "device": str(device),
        "entries": entries,
    }
    result["plots"] = [p for p in (_plot(result, out_dir),) if p]
    return result


def _plot(result: dict[str, Any], out_dir: Path) -> str | None:
    ok = [e for e in result["entries"] if e.get("status") == "ok"]
    if not ok:
        return None
    panels = [
        {
            "kind": "bar",
            "series": {f"{e['variant']} F={e['features']}": e["time_s"] for e in ok},
            "ylabel": "seconds",
            "title": "time per training iteration",
        }
    ]
    return plot_panels(out_dir / "iteration.png", panels, title="NIR-GNN vs CNN: one iteration")


def markdown(result: dict[str, Any]) -> str:
    """The training-iteration table (markdown)."""
    cfg = result["config"]
    lines = [
        "## Training iteration: NIR-GNN against the CNN of the same width\n",
        f"One iteration = forward (kNN graphs included), MSE, backward, Adam step on a batch "
        f"of {cfg['batch_size']} random {cfg['patch_size']}x{cfg['patch_size']} patches; "
        f"k={cfg['k']}, {cfg['layers_per_block']} graph layers per block. Median of "
        f"{cfg['iterations']} timed iteration(s) after {cfg['warmup']} warm-up "
        "(`time.perf_counter`). `kernel`: the device's fused LightweightECC kernel; "
        "`reference`: the fused op forced to its plain PyTorch reference; `cnn`: "
        "`cnn_baseline(features=F)`. Ratios against the CNN of the same width, same run.\n",
    ]
    rows = []
    for e in result["entries"]:
        head = [e["features"], e["rank"] or "—", f"`{e['variant']}`", e.get("backend", "—")]
        text = status_text(e)
        if text is not None:
            rows.append([*head, fmt_count(e["params"]), text, ""])
            continue
        rows.append(
            [
                *head,
                fmt_count(e["params"]),
                fmt_time(e["time_s"]),
                fmt_ratio(e.get("cnn_ratio")),
            ]
        )
    lines.append(
        md_table(
            ["F", "rank", "variant", "op backend", "params", "time / iteration", "/ CNN"], rows
        )
    )
    for plot in result.get("plots", []):
        lines.append(f"![iteration]({plot})\n")
    return "\n".join(lines)
