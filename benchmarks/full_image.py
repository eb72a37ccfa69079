"""Full-image colorization: time and peak memory of :func:`pyg_lecc.nir.inference.colorize`
(its default tiles: 208 pixels plus 24 of context, so that a 256x256 image runs whole; 49x49
kNN search window) for NIR-GNN and the CNN baseline against image size: centre crops of 128,
256 and 512 pixels of a full-resolution image and whole 1024 x ~680 images of
``epfl_country_fullres`` (quick mode: synthetic 64x64 and 96x96 images).

Models: the weights shipped with the package (``get_model(name, weights="default")``) when
they exist; otherwise a random initialisation of the configuration in the shipped model card
(``pyg_lecc/nir/weights/<name>.json``) if there is one; otherwise ``nir_gnn(features=24,
rank=4)`` and the CNN matched to it in parameters. Random weights time the same as trained
ones (nothing here depends on the values except the kNN graphs' neighbour choice).

One measured call per size (these are long): first an untimed warm-up on a 64x64 image per
model, then per size one call timed with ``time.perf_counter`` that also records the RSS
high-water increase, and one call under the profiler for the tensor peak.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.common import (
    DEFAULT_DATA_ROOT,
    fmt_count,
    fmt_mb,
    fmt_time,
    guarded,
    log,
    md_table,
    measure_peak_memory,
    plot_panels,
    resolve_device,
    status_text,
    time_once_with_rss,
)
from pyg_lecc.nir.hub import cnn_baseline, default_weights_path, get_model, nir_gnn
from pyg_lecc.nir.inference import DEFAULT_CONTEXT, DEFAULT_SEARCH_WINDOW, DEFAULT_TILE
from pyg_lecc.nir.models import NIRGNN
from pyg_lecc.nir.models import num_parameters as count_parameters

MODELS: tuple[str, ...] = ("nir-gnn", "cnn")


@dataclasses.dataclass
class Config:
    """Settings of the full-image benchmark (defaults: full mode)."""

    crops: tuple[int, ...] = (128, 256)
    full_images: int = 1
    synthetic_sizes: tuple[int, ...] = ()
    models: tuple[str, ...] = MODELS
    weights: str = "default"
    fallback_features: int = 24
    fallback_rank: int = 4
    fallback_layers_per_block: int = 3
    tile: int = DEFAULT_TILE
    context: int = DEFAULT_CONTEXT
    search_window: int | None = DEFAULT_SEARCH_WINDOW
    measure_memory: bool = True
    memory_pass_max_s: float = 300.0
    data_root: Path = DEFAULT_DATA_ROOT
    seed: int = 0
    device: str = "auto"

    @classmethod
    def quick(cls, **overrides: Any) -> Config:
        """Synthetic 64x64 and 96x96 images only."""
        settings: dict[str, Any] = dict(crops=(), full_images=0, synthetic_sizes=(64, 96))
        settings.update(overrides)
        return cls(**settings)


def resolve_model(name: str, cfg: Config) -> tuple[nn.Module, str]:
    """The model to time and a sentence saying where it comes from."""
    weights_path = default_weights_path(name)
    if cfg.weights == "default" and weights_path.is_file():
        return get_model(name, weights="default"), f"shipped weights ({weights_path.name})"
    card_path = weights_path.with_suffix(".json")
    why = "no shipped weights or model card" if cfg.weights == "default" else "weights=random"
    if cfg.weights == "default" and card_path.is_file():
        try:
            from pyg_lecc.nir.hub import model_card

            card = model_card(name)
        except (OSError, ValueError) as err:
            card = None
            why = f"model card {card_path.name} unreadable: {err}"
        config = card.get("config") if isinstance(card, dict) else None
        if isinstance(config, dict):
            allowed = set(inspect.signature(NIRGNN).parameters)
            kwargs = {k: v for k, v in config.items() if k in allowed}
            kwargs["non_local"] = name != "cnn"
            torch.manual_seed(cfg.seed)
            return NIRGNN(**kwargs), f"random init, configuration of {card_path.name}"
        if card is not None:
            why = f"model card {card_path.name} has no 'config'"
    torch.manual_seed(cfg.seed)
    common = dict(rank=cfg.fallback_rank, layers_per_block=cfg.fallback_layers_per_block)
    if name == "cnn":
        model = cnn_baseline(match_features=cfg.fallback_features, **common)
        return model, (
            f"random init, cnn_baseline(match_features={cfg.fallback_features}, "
            f"rank={cfg.fallback_rank}) ({why})"
        )
    model = nir_gnn(features=cfg.fallback_features, **common)
    return model, (
        f"random init, nir_gnn(features={cfg.fallback_features}, rank={cfg.fallback_rank}) ({why})"
    )


def _inputs(cfg: Config) -> tuple[list[tuple[str, np.ndarray]], list[str]]:
    """(label, NIR image) pairs, smallest first, and notes on what was missing."""
    from pyg_lecc.nir.data import read_nir

    images: list[tuple[str, np.ndarray]] = []
    notes: list[str] = []
    gen = np.random.default_rng(cfg.seed)
    for s in cfg.synthetic_sizes:
        images.append((f"synthetic {s}x{s}", gen.random((s, s), dtype=np.float32)))
    if cfg.crops or cfg.full_images:
        folder = Path(cfg.data_root) / "epfl_country_fullres"
        files = sorted(folder.glob("*_nir.jpg")) if folder.is_dir() else []
        if not files:
            notes.append(f"no full-resolution images in {folder}: crops and full images skipped")
            return images, notes
        full = []
        for path in files:
            nir = read_nir(path)
            if nir.shape[1] >= nir.shape[0]:  # landscape, ~1024 x 680
                full.append((path.name, nir))
            if len(full) >= max(1, cfg.full_images):
                break
        name, source = full[0]
        H, W = source.shape
        for s in cfg.crops:
            if s > min(H, W):
                notes.append(f"crop {s} larger than {name} ({W}x{H}): skipped")
                continue
            y, x = (H - s) // 2, (W - s) // 2
            crop = np.ascontiguousarray(source[y : y + s, x : x + s])
            images.append((f"crop {s}x{s} of {name}", crop))
        for name, nir in full[: cfg.full_images]:
            images.append((f"full {nir.shape[1]}x{nir.shape[0]} {name}", nir))
    images.sort(key=lambda item: item[1].size)
    return images, notes


def _num_tiles(extent: int, tile: int, context: int) -> int:
    return 1 if extent <= tile + 2 * context else math.ceil(extent / tile)


def _measure_model(
    name: str,
    model: nn.Module,
    images: list[tuple[str, np.ndarray]],
    cfg: Config,
    device: torch.device,
) -> list[dict[str, Any]]:
    from pyg_lecc.nir.inference import colorize

    kwargs: dict[str, Any] = dict(
        tile=cfg.tile, context=cfg.context, search_window=cfg.search_window, device=device
    )
    warm = np.random.default_rng(cfg.seed).random((64, 64), dtype=np.float32)
    colorize(model, warm, **kwargs)
    entries = []
    for label, nir in images:
        H, W = nir.shape
        entry: dict[str, Any] = {
            "model": name,
            "image": label,
            "height": H,
            "width": W,
            "pixels": H * W,
            "tiles": _num_tiles(H, cfg.tile, cfg.context) * _num_tiles(W, cfg.tile, cfg.context),
        }
        entries.append(entry)

        def call(nir: np.ndarray = nir) -> None:
            colorize(model, nir, **kwargs)

        timing, failure = guarded(lambda call=call: time_once_with_rss(call, device))
        if failure is not None:
            entry.update(failure)
            continue
        entry.update(status="ok", runs=1, **timing)
        entry["megapixels_per_s"] = H * W / timing["time_s"] / 1e6
        if cfg.measure_memory and timing["time_s"] <= cfg.memory_pass_max_s:
            memory, failure = guarded(lambda call=call: measure_peak_memory(call, device))
            if failure is None:
                entry["peak_mb"] = memory["peak_mb"]
        elif cfg.measure_memory:
            entry["memory_note"] = (
                f"profiler pass skipped: the call took over {cfg.memory_pass_max_s:g} s "
                "(tiles bound the tensor peak; see the RSS increase)"
            )
        log(
            f"  {name:7s} {label:38s} {fmt_time(entry['time_s']):>9s} "
            f"peak {fmt_mb(entry.get('peak_mb'))} (RSS +{fmt_mb(entry.get('rss_peak_mb'))})"
        )
    return entries


def run(cfg: Config, out_dir: Path) -> dict[str, Any]:
    """Runs the full-image benchmark; returns its JSON-ready result."""
    device = resolve_device(cfg.device)
    images, notes = _inputs(cfg)
    log(f"full image: {len(images)} image(s), models {cfg.models}, device {device}")
    models: dict[str, dict[str, Any]] = {}
    entries: list[dict[str, Any]] = []
    for name in cfg.models:
        model, source = resolve_model(name, cfg)
        model = model.to(device).eval()
        models[name] = {
            "source": source,
            "params": count_parameters(model),
            "config": model.config() if hasattr(model, "config") else None,
        }
        log(f" {name}: {source}, {models[name]['params']:,} parameters")
        entries += _measure_model(name, model, images, cfg, device)
    result: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "device": str(device),
        "models": models,
        "notes": notes,
        "entries": entries,
    }
    result["plots"] = [p for p in (_plot(result, out_dir),) if p]
    return result


def _plot(result: dict[str, Any], out_dir: Path) -> str | None:
    panels = []
    for y_key, ylabel in (("time_s", "time (s)"), ("peak_mb", "peak tensor memory (MB)")):
        series: dict[str, tuple[list[float], list[float | None]]] = {}
        for e in result["entries"]:
            xs, ys = series.setdefault(e["model"], ([], []))
            xs.append(e["pixels"])
            ys.append(e.get(y_key) if e.get("status") == "ok" else None)
        panels.append({"series": series, "xlabel": "pixels", "ylabel": ylabel, "title": ylabel})
    if not result["entries"]:
        return None
    return plot_panels(out_dir / "full_image.png", panels, title="colorize() vs image size")


def markdown(result: dict[str, Any]) -> str:
    """The full-image table (markdown)."""
    cfg = result["config"]
    lines = [
        "## Full-image colorization\n",
        f"`colorize(model, nir, tile={cfg['tile']}, context={cfg['context']}, "
        f"search_window={cfg['search_window']})`, one timed call per size after a warm-up "
        "(`time.perf_counter`, which also gives the RSS increase), then one call under the "
        f"profiler for the tensor peak (skipped for calls over {cfg['memory_pass_max_s']:g} "
        "s: colorize works tile by tile, so the tensor peak no longer grows with the image).\n",
    ]
    for name, info in result["models"].items():
        lines.append(f"- `{name}`: {info['source']}; {fmt_count(info['params'])} parameters")
    lines.append("")
    for note in result.get("notes", []):
        lines.append(f"- note: {note}")
    lines.append("")
    rows = []
    for e in result["entries"]:
        text = status_text(e)
        size = f"{e['width']}x{e['height']}"
        if text is not None:
            rows.append([e["model"], e["image"], size, e["tiles"], text, "", "", ""])
            continue
        rows.append(
            [
                e["model"],
                e["image"],
                size,
                e["tiles"],
                fmt_time(e["time_s"]),
                f"{e['megapixels_per_s']:.3g}",
                fmt_mb(e.get("peak_mb")),
                fmt_mb(e.get("rss_peak_mb")),
            ]
        )
    lines.append(
        md_table(
            [
                "model",
                "image",
                "W x H",
                "tiles",
                "time",
                "Mpixel/s",
                "peak tensor mem",
                "peak RSS increase",
            ],
            rows,
        )
    )
    for plot in result.get("plots", []):
        lines.append(f"![full image]({plot})\n")
    return "\n".join(lines)
