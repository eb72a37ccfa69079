"""The colorization task with the non-local operator swapped.

NIR-GNN's backbone (:class:`pyg_lecc.nir.models.NIRGNN`) is kept and the
:class:`~pyg_lecc.LightweightECC` of every :class:`~pyg_lecc.nir.models.LocalNonLocalConv` is
replaced (without touching ``models.py``) by a :class:`NonLocalAdapter` that calls another
PyG operator with ``(x, edge_index)`` on the same image kNN graph:

- ``lecc``: NIR-GNN as shipped (LightweightECC);
- ``gcn``: ``GCNConv(in, out, bias=False)``;
- ``gat``: ``GATConv(in, out // 3, heads=3, bias=False)``, concatenated (one head where 3
  does not divide the width);
- ``edgeconv``: ``EdgeConv(MLP([2 in, out], bias=False), aggr="mean")``;
- ``cnn``: no non-local path at all (the paper's CNN baseline).

The layer bias stays in ``LocalNonLocalConv``. Each variant's width ``F`` (a multiple of 3;
of 9 for GAT, so that the F/3-wide branches split into 3 heads) is chosen so that its
parameter count is closest to that of NIR-GNN at ``features`` (as
:func:`pyg_lecc.nir.models.matched_cnn_features` does for the CNN). All variants train with the
same seed, the same patches and the same short schedule: Adam, MSE, ``lr`` decayed
exponentially to ``lr_end``, random 42x42 patches with flips and rotations from the VCIP 2020
training split; then they are validated on the validation images (whole 256x256 images,
49x49 kNN search window) with :func:`pyg_lecc.nir.metrics.evaluate_pair` /
:func:`~pyg_lecc.nir.metrics.summarize`.

This is a *short* schedule for a CPU (40 iterations in full mode), NOT the paper's: the
metrics compare the operators early in training, not converged models.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import MLP, EdgeConv, GATConv, GCNConv

from benchmarks.common import (
    DEFAULT_DATA_ROOT,
    fmt_count,
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
from pyg_lecc.nir.models import NIRGNN, LocalNonLocalConv, num_parameters

VARIANTS: tuple[str, ...] = ("lecc", "gcn", "gat", "edgeconv", "cnn")
"""Non-local operators compared; ``lecc`` is NIR-GNN itself, ``cnn`` has none."""
_SWAPPED = ("gcn", "gat", "edgeconv")


@dataclasses.dataclass
class Config:
    """Settings of the task benchmark (defaults: full mode)."""

    features: int = 24
    rank: int = 4
    k: int = 8
    layers_per_block: int = 3
    gat_heads: int = 3
    iterations: int = 40
    batch_size: int = 10
    patch_size: int = 42
    lr: float = 1e-3
    lr_end: float = 1e-4
    val_images: int | None = 6
    val_crop: int | None = 128
    val_search_window: int | None = 49
    variants: tuple[str, ...] = VARIANTS
    data: Path = DEFAULT_DATA_ROOT / "vcip2020"
    seed: int = 0
    device: str = "auto"

    @classmethod
    def quick(cls, **overrides: Any) -> Config:
        """3 iterations on batches of 2 patches, validation on 96x96 centre crops of 2
        images."""
        settings: dict[str, Any] = dict(iterations=3, batch_size=2, val_images=2, val_crop=96)
        settings.update(overrides)
        return cls(**settings)


class NonLocalAdapter(nn.Module):
    """Stands in for ``LocalNonLocalConv.ecc``: another PyG operator called with
    ``(x, edge_index)`` on the node features of the feature map.

    Args:
        kind: ``"gcn"``, ``"gat"`` or ``"edgeconv"``.
        in_channels: Input width.
        out_channels: Output width.
        gat_heads: Attention heads of GATConv (one head if they do not divide the width).
    """

    def __init__(self, kind: str, in_channels: int, out_channels: int, gat_heads: int = 3):
        super().__init__()
        self.kind = kind
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.op: nn.Module
        if kind == "gcn":
            self.op = GCNConv(in_channels, out_channels, bias=False)
        elif kind == "gat":
            heads = gat_heads if out_channels % gat_heads == 0 else 1
            self.op = GATConv(in_channels, out_channels // heads, heads=heads, bias=False)
        elif kind == "edgeconv":
            self.op = EdgeConv(MLP([2 * in_channels, out_channels], bias=False), aggr="mean")
        else:
            raise ValueError(f"unknown operator {kind!r}; available: {_SWAPPED}")

    def reset_parameters(self) -> None:
        self.op.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        return self.op(x, edge_index)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.op})"


def build_variant(variant: str, features: int, cfg: Config) -> NIRGNN:
    """NIR-GNN of width ``features`` with the non-local operator of ``variant``."""
    model = NIRGNN(
        features=features,
        rank=cfg.rank,
        k=cfg.k,
        non_local=variant != "cnn",
        layers_per_block=cfg.layers_per_block,
    )
    if variant in _SWAPPED:
        layers = [m for m in model.modules() if isinstance(m, LocalNonLocalConv)]
        for layer in layers:
            if layer.ecc is not None:
                layer.ecc = NonLocalAdapter(
                    variant, layer.in_channels, layer.out_channels, cfg.gat_heads
                )
    elif variant not in ("lecc", "cnn"):
        raise ValueError(f"unknown variant {variant!r}; available: {VARIANTS}")
    return model


def matched_features(variant: str, cfg: Config) -> tuple[int, int, int]:
    """(width, its parameter count, NIR-GNN's count): the width of ``variant`` whose
    parameter count is closest to NIR-GNN's at ``cfg.features``."""
    with torch.device("meta"):
        target = num_parameters(build_variant("lecc", cfg.features, cfg))
        if variant == "lecc":
            return cfg.features, target, target
        step = 9 if variant == "gat" else 3
        counts = {
            f: num_parameters(build_variant(variant, f, cfg))
            for f in range(step, 2 * cfg.features + step, step)
        }
    best = min(counts, key=lambda f: abs(counts[f] - target))
    return best, counts[best], target


def _load_data(cfg: Config) -> tuple[Any, list[tuple[str, Tensor, np.ndarray]]]:
    from pyg_lecc.nir.data import PairedImageDataset

    train = PairedImageDataset(cfg.data, split="train", preload=True)
    val = PairedImageDataset(cfg.data, split="validation", preload=False)
    count = len(val) if cfg.val_images is None else min(cfg.val_images, len(val))
    val_data = []
    for i in range(count):
        nir, rgb, name = val[i]
        H, W = nir.shape[-2:]
        if cfg.val_crop is not None and cfg.val_crop < min(H, W):
            y, x = (H - cfg.val_crop) // 2, (W - cfg.val_crop) // 2
            nir = nir[:, y : y + cfg.val_crop, x : x + cfg.val_crop]
            rgb = rgb[:, y : y + cfg.val_crop, x : x + cfg.val_crop]
        val_data.append((name, nir.contiguous(), rgb.permute(1, 2, 0).numpy()))
    return train, val_data


@torch.no_grad()
def _validate(
    model: NIRGNN, data: list[tuple[str, Tensor, np.ndarray]], cfg: Config, device: torch.device
) -> dict[str, float]:
    from pyg_lecc.nir.metrics import evaluate_pair, summarize

    model.eval()
    window = model.graph.search_window
    model.graph.search_window = cfg.val_search_window
    try:
        per_image = []
        for _, nir, rgb in data:
            pred = model(nir[None].to(device)).clamp(0.0, 1.0)[0]
            per_image.append(evaluate_pair(pred.permute(1, 2, 0).cpu().numpy(), rgb))
    finally:
        model.graph.search_window = window
        model.train()
    return summarize(per_image)


def train_variant(
    variant: str,
    features: int,
    cfg: Config,
    train_data: Any,
    val_data: list[tuple[str, Tensor, np.ndarray]],
    device: torch.device,
) -> dict[str, Any]:
    """Trains one variant with the short schedule and validates it."""
    from pyg_lecc.nir.data import RandomPatchSampler

    seed_everything(cfg.seed)
    model = build_variant(variant, features, cfg).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sampler = RandomPatchSampler(
        train_data,
        patch_size=cfg.patch_size,
        batch_size=cfg.batch_size,
        augment=True,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    times, losses = [], []
    for t in range(cfg.iterations):
        lr = cfg.lr * (cfg.lr_end / cfg.lr) ** (t / cfg.iterations)
        for group in optimizer.param_groups:
            group["lr"] = lr
        start = time.perf_counter()
        nir, rgb = sampler.sample()
        nir, rgb = nir.to(device), rgb.to(device)
        loss = F.mse_loss(model(nir), rgb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(device)
        times.append(time.perf_counter() - start)
        losses.append(loss.detach().item())
    start = time.perf_counter()
    metrics = _validate(model, val_data, cfg, device)
    val_time = time.perf_counter() - start
    timed = times[1:] if len(times) > 1 else times  # the first iteration warms up
    tail = max(1, len(losses) // 10)
    return {
        "status": "ok",
        "train_time_s": sum(times),
        "iteration": summarize_times(timed),
        "train_loss_first": losses[0],
        "train_loss_last": float(np.mean(losses[-tail:])),
        "val_time_s": val_time,
        "val": metrics,
    }


def run(cfg: Config, out_dir: Path) -> dict[str, Any]:
    """Runs the task benchmark (or records why it was skipped)."""
    device = resolve_device(cfg.device)
    result: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "device": str(device),
        "schedule": (
            f"{cfg.iterations} iterations, batches of {cfg.batch_size} patches of "
            f"{cfg.patch_size}x{cfg.patch_size}, Adam lr {cfg.lr:g} -> {cfg.lr_end:g} "
            "(exponential), MSE; a short CPU schedule, NOT the paper's"
        ),
    }
    if not Path(cfg.data).is_dir():
        reason = f"data folder {cfg.data} not found"
        log(f"task: skipped ({reason})")
        return {**result, "status": "skipped", "reason": reason, "variants": {}}
    try:
        train_data, val_data = _load_data(cfg)
    except (OSError, ValueError) as err:  # PairingError and ImageReadError are ValueErrors
        log(f"task: skipped ({err})")
        return {**result, "status": "skipped", "reason": str(err), "variants": {}}
    log(
        f"task: {len(train_data)} training pairs, {len(val_data)} validation images, "
        f"{result['schedule']}, device {device}"
    )
    result.update(
        status="ok",
        train_pairs=len(train_data),
        val_names=[name for name, _, _ in val_data],
        variants={},
    )
    for variant in cfg.variants:
        width, params, target = matched_features(variant, cfg)
        log(f" {variant}: F={width}, {params:,} parameters (NIR-GNN: {target:,})")
        entry: dict[str, Any] = {"features": width, "params": params, "params_target": target}
        trained, failure = guarded(
            lambda v=variant, w=width: train_variant(v, w, cfg, train_data, val_data, device)
        )
        entry.update(failure if failure is not None else trained)
        if failure is None:
            val = entry["val"]
            log(
                f"  {variant}: {fmt_time(entry['iteration']['time_s'])}/iteration, "
                f"val PSNR {val['psnr']:.2f} dB, SSIM {val['ssim']:.3f}"
            )
        result["variants"][variant] = entry
    result["plots"] = [p for p in (_plot(result, out_dir),) if p]
    return result


def _plot(result: dict[str, Any], out_dir: Path) -> str | None:
    ok = {k: v for k, v in result.get("variants", {}).items() if v.get("status") == "ok"}
    if not ok:
        return None

    def values(get: Callable[[dict[str, Any]], float]) -> dict[str, float]:
        return {k: get(v) for k, v in ok.items()}

    panels = [
        {
            "kind": "bar",
            "series": values(lambda v: v["val"]["psnr"]),
            "ylabel": "PSNR (dB)",
            "title": "validation PSNR",
        },
        {
            "kind": "bar",
            "series": values(lambda v: v["val"]["ssim"]),
            "ylabel": "SSIM",
            "title": "validation SSIM",
        },
        {
            "kind": "bar",
            "series": values(lambda v: v["iteration"]["time_s"]),
            "ylabel": "seconds",
            "title": "time per training iteration",
        },
    ]
    return plot_panels(out_dir / "task.png", panels, title="NIR-GNN with swapped operators")


def markdown(result: dict[str, Any]) -> str:
    """The task table (markdown)."""
    lines = ["## Task: NIR-GNN with the non-local operator swapped\n"]
    if result.get("status") != "ok":
        lines.append(f"Skipped: {result.get('reason', '')}\n")
        return "\n".join(lines)
    cfg = result["config"]
    crop = cfg.get("val_crop")
    images = "whole images" if crop is None else f"{crop}x{crop} centre crops"
    lines.append(
        f"Data: {cfg['data']} ({result['train_pairs']} training pairs, "
        f"{len(result['val_names'])} validation images, {images} with a "
        f"{cfg['val_search_window']}x{cfg['val_search_window']} search window). "
        f"Backbone: NIR-GNN, rank {cfg['rank']}, k={cfg['k']}, {cfg['layers_per_block']} "
        f"graph layers per block; widths chosen for parameter parity with NIR-GNN at "
        f"F={cfg['features']}. Schedule: **{result['schedule']}**; the metrics compare the "
        f"operators after {cfg['iterations']} iterations, not converged models. AE deg = mean "
        "per-pixel RGB angle in degrees; AE image = angle between whole images in radians "
        "(the paper's scale).\n"
    )
    rows = []
    for name, e in result["variants"].items():
        text = status_text(e)
        head = [f"`{name}`", e["features"], fmt_count(e["params"])]
        if text is not None:
            rows.append([*head, text, "", "", "", "", "", ""])
            continue
        v = e["val"]
        rows.append(
            [
                *head,
                fmt_time(e["iteration"]["time_s"]),
                f"{e['train_loss_first']:.4f} -> {e['train_loss_last']:.4f}",
                f"{v['psnr']:.2f}",
                f"{v['ssim']:.3f}",
                f"{v['ae_deg']:.2f}",
                f"{v['ae_img_rad']:.3f}",
                fmt_time(e["val_time_s"]),
            ]
        )
    lines.append(
        md_table(
            [
                "operator",
                "F",
                "params",
                "time / iteration",
                "train loss (first -> last 10%)",
                "PSNR (dB)",
                "SSIM",
                "AE (deg)",
                "AE image (rad)",
                "validation time",
            ],
            rows,
        )
    )
    for plot in result.get("plots", []):
        lines.append(f"![task]({plot})\n")
    return "\n".join(lines)
