"""Graph operators on the same graphs: LightweightECC (node-level and per-edge
implementations) against PyG's GCNConv, GATConv, NNConv (the original ECC) and EdgeConv.

Every operator maps ``F`` to ``F`` features with mean aggregation where it has a choice:

- ``lecc_node`` / ``lecc_edge``: ``LightweightECC(F, F, rank=r, circulant_stride=F // 3)``
  with ``implementation="node"`` / ``"edge"``; ``lecc_node`` runs the fused edge op with the
  device's kernel (:func:`pyg_lecc.ops.backend_for`: Numba on CPU);
- ``lecc_ref``: the same node-level layer with the fused op forced to its plain PyTorch
  reference (:func:`pyg_lecc.ops.use_reference`), i.e. the fallback without a kernel;
- ``lecc_attr`` / ``lecc_attr_ref``: the same layer in its ``edge_dim`` mode
  (``edge_dim=F``) fed ``edge_attr = x_j - x_i`` (computed inside the measured call, as for
  ``nnconv``), i.e. the same function as ``lecc_node`` through the per-edge hidden layer and
  the fused op :func:`pyg_lecc.ops.edge_label_aggregate`, with the device's kernel / forced
  to the reference;
- ``gcn``: ``GCNConv(F, F)`` (self-loops and symmetric normalisation, PyG defaults);
- ``gat``: ``GATConv(F, F // 3, heads=3)``, concatenated: output width ``F`` and about the
  parameter count of GCNConv;
- ``nnconv``: ``NNConv(F, F, nn=Linear(F, F * F), aggr="mean")`` with the label
  ``x_j - x_i`` as edge attribute (computed inside the measured call, as LightweightECC
  computes it inside its own): one dense ``F x F`` matrix per edge;
- ``edgeconv``: ``EdgeConv(MLP([2F, F]), aggr="mean")``.

Graphs: the non-local image kNN graph of :func:`pyg_lecc.image_knn_graph` over a batch of
42x42 patches of random N(0, 1) features, and a random graph with the same numbers of nodes
and edges (``torch.randint``; no grouping by target, so LightweightECC's node path takes its
general scatter route). For each operator, graph and mode (forward under ``no_grad``;
forward + backward to the parameters and the input) the time, the peak memory and the ratio
to ``lecc_node`` in the same run; then scaling curves over nodes, k and F on the image graph.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.nn import MLP, EdgeConv, GATConv, GCNConv, NNConv

from benchmarks.common import (
    GB,
    fmt_count,
    fmt_mb,
    fmt_ratio,
    fmt_time,
    guarded,
    log,
    md_table,
    measure_peak_memory,
    memory_cap_reason,
    plot_panels,
    resolve_device,
    status_text,
    summarize_times,
    time_function,
)
from pyg_lecc import LightweightECC, image_knn_graph, image_to_nodes
from pyg_lecc.nir.models import num_parameters
from pyg_lecc.ops import backend_for, use_reference

OPERATORS: tuple[str, ...] = (
    "lecc_node",
    "lecc_ref",
    "lecc_attr",
    "lecc_attr_ref",
    "lecc_edge",
    "gcn",
    "gat",
    "nnconv",
    "edgeconv",
)
"""Operator keys, in table order; ``lecc_node`` is the reference of every ratio."""
GRAPHS: tuple[str, ...] = ("image_knn", "random")
MODES: tuple[str, ...] = ("forward", "forward_backward")
REFERENCE = "lecc_node"

_FLOAT_BYTES = 4


@dataclasses.dataclass
class Config:
    """Settings of the operator benchmark (defaults: full mode)."""

    features: int = 99
    rank: int = 11
    num_patches: int = 10
    patch_size: int = 42
    k: int = 8
    gat_heads: int = 3
    operators: tuple[str, ...] = OPERATORS
    graphs: tuple[str, ...] = GRAPHS
    curve_patches: tuple[int, ...] = (1, 4, 10)
    curve_k: tuple[int, ...] = (4, 8, 16)
    curve_features: tuple[int, ...] = (9, 33, 99)
    runs: int = 1
    min_run_time: float = 0.5
    max_gb: float = 8.0
    seed: int = 0
    device: str = "auto"

    @classmethod
    def quick(cls, **overrides: Any) -> Config:
        """F=33, 2 patches, one run, two points per curve."""
        settings: dict[str, Any] = dict(
            features=33,
            num_patches=2,
            curve_patches=(1, 2),
            curve_k=(4, 8),
            curve_features=(9, 33),
            runs=1,
            min_run_time=0.05,
        )
        settings.update(overrides)
        return cls(**settings)


@dataclasses.dataclass
class GraphCase:
    """Node features and edges of one benchmark graph."""

    name: str
    x: Tensor
    edge_index: Tensor
    num_patches: int
    k: int

    @property
    def num_nodes(self) -> int:
        return self.x.size(0)

    @property
    def num_edges(self) -> int:
        return self.edge_index.size(1)

    @property
    def features(self) -> int:
        return self.x.size(1)


def make_graphs(
    features: int,
    num_patches: int,
    patch_size: int,
    k: int,
    seed: int,
    device: torch.device,
    kinds: tuple[str, ...] = GRAPHS,
) -> list[GraphCase]:
    """The image kNN graph of random patches and/or a random graph of the same size."""
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(num_patches, features, patch_size, patch_size, generator=gen)
    x = image_to_nodes(feats).contiguous()
    cases = []
    if "image_knn" in kinds:
        edge_index = image_knn_graph(feats, k=k)
        cases.append(GraphCase("image_knn", x.to(device), edge_index.to(device), num_patches, k))
    if "random" in kinds:
        N, E = x.size(0), x.size(0) * k
        edge_index = torch.randint(0, N, (2, E), generator=gen)
        cases.append(GraphCase("random", x.to(device), edge_index.to(device), num_patches, k))
    return cases


def build_operator(name: str, features: int, rank: int = 11, gat_heads: int = 3) -> nn.Module:
    """One operator mapping ``features`` to ``features`` channels (see the module doc)."""
    F = features
    if name in ("lecc_node", "lecc_ref", "lecc_edge", "lecc_attr", "lecc_attr_ref"):
        implementation = "edge" if name == "lecc_edge" else "node"
        edge_dim = F if name.startswith("lecc_attr") else None
        return LightweightECC(
            F,
            F,
            rank=rank,
            circulant_stride=F // 3,
            implementation=implementation,
            edge_dim=edge_dim,
        )
    if name == "gcn":
        return GCNConv(F, F)
    if name == "gat":
        if F % gat_heads:
            raise ValueError(f"GATConv: {gat_heads} heads must divide F={F}")
        return GATConv(F, F // gat_heads, heads=gat_heads, concat=True)
    if name == "nnconv":
        return NNConv(F, F, nn=nn.Linear(F, F * F), aggr="mean")
    if name == "edgeconv":
        return EdgeConv(MLP([2 * F, F]), aggr="mean")
    raise ValueError(f"unknown operator {name!r}; available: {OPERATORS}")


def predicted_bytes(name: str, num_edges: int, features: int, rank: int, backward: bool) -> int:
    """Rough peak of the per-edge tensors of one call (for the ``--max-gb`` cap).

    NNConv keeps one ``F x F`` matrix per edge, ``E F^2`` floats (plus, when training, its
    gradient: measured peak 1.1x the matrices forward and 2.1x forward+backward at F=33);
    LightweightECC's per-edge path keeps a few ``E x r x F`` tensors (measured 3.5x / 4.2x);
    the others a few ``E x F`` / ``E x 2F`` ones.
    """
    E, F = num_edges, features
    if name == "nnconv":
        return int(E * F * F * _FLOAT_BYTES * (2.2 if backward else 1.1))
    if name == "lecc_edge":
        return E * rank * F * _FLOAT_BYTES * (5 if backward else 4)
    return E * 2 * F * _FLOAT_BYTES * 3


def _call(name: str, op: nn.Module, x: Tensor, edge_index: Tensor) -> Callable[[], Tensor]:
    if name in ("nnconv", "lecc_attr", "lecc_attr_ref"):
        src, dst = edge_index
        return lambda: op(x, edge_index, x.index_select(0, src) - x.index_select(0, dst))
    return lambda: op(x, edge_index)


def _mode_fn(name: str, op: nn.Module, graph: GraphCase, mode: str) -> Callable[[], Any]:
    reference = name.endswith("_ref")
    if mode == "forward":
        call = _call(name, op, graph.x, graph.edge_index)

        def forward() -> None:
            with torch.no_grad(), use_reference(reference):
                call()

        return forward

    x = graph.x.detach().clone().requires_grad_(True)
    call = _call(name, op, x, graph.edge_index)
    params = [p for p in op.parameters() if p.requires_grad]

    def forward_backward() -> None:
        for p in (*params, x):
            p.grad = None
        with use_reference(reference):  # backward included
            call().sum().backward()

    return forward_backward


def measure_operator(
    name: str, graph: GraphCase, cfg: Config, device: torch.device
) -> dict[str, Any]:
    """Time (median over ``cfg.runs`` runs, ``reset_parameters`` between runs) and peak memory
    of one operator on one graph, in both modes."""
    F = graph.features
    torch.manual_seed(cfg.seed)
    op = build_operator(name, F, cfg.rank, cfg.gat_heads).to(device)
    entry: dict[str, Any] = {
        "operator": name,
        "graph": graph.name,
        "num_nodes": graph.num_nodes,
        "num_edges": graph.num_edges,
        "features": F,
        "k": graph.k,
        "num_patches": graph.num_patches,
        "params": num_parameters(op),
    }
    for mode in MODES:
        predicted = predicted_bytes(name, graph.num_edges, F, cfg.rank, mode != "forward")
        result: dict[str, Any] = {"predicted_gb": predicted / GB}
        entry[mode] = result
        reason = memory_cap_reason(predicted, cfg.max_gb)
        if reason is not None:
            result.update(status="skipped", reason=reason)
            log(f"  {name:9s} {graph.name:9s} {mode:16s} skipped: {reason}")
            continue
        fn = _mode_fn(name, op, graph, mode)
        times: list[float] = []
        failure = None
        method = ""
        hint = None
        for run in range(cfg.runs):
            torch.manual_seed(cfg.seed + run)
            op.reset_parameters()
            timing, failure = guarded(
                lambda run=run, hint=hint, fn=fn: time_function(
                    fn,
                    device=device,
                    min_run_time=cfg.min_run_time,
                    warmup=run == 0,
                    hint_s=hint,
                )
            )
            if failure is not None:
                break
            times += timing["times"]
            method = timing["method"]
            hint = timing["time_s"]
        if failure is None:
            memory, failure = guarded(lambda fn=fn: measure_peak_memory(fn, device))
        if failure is not None:
            result.update(failure)
            continue
        timing = summarize_times(times)
        result.update(status="ok", runs=cfg.runs, method=method, **timing, **memory)
        log(
            f"  {name:9s} {graph.name:9s} {mode:16s} {fmt_time(result['time_s']):>9s} "
            f"peak {fmt_mb(result['peak_mb'])}"
        )
    return entry


def _add_ratios(entries: list[dict[str, Any]]) -> None:
    # Ratio of each operator to lecc_node measured on the same graph, in the same run.
    groups: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = {}
    for e in entries:
        key = (e["graph"], e["num_nodes"], e["num_edges"], e["features"])
        groups.setdefault(key, {})[e["operator"]] = e
    for group in groups.values():
        ref = group.get(REFERENCE)
        for e in group.values():
            e["params_ratio"] = e["params"] / ref["params"] if ref else None
            for mode in MODES:
                r, m = (ref or {}).get(mode, {}), e[mode]
                for key in ("time_s", "peak_mb"):
                    ok = m.get("status") == "ok" and r.get("status") == "ok" and r.get(key)
                    m[key.split("_")[0] + "_ratio"] = m[key] / r[key] if ok else None


def run(cfg: Config, out_dir: Path) -> dict[str, Any]:
    """Runs the operator benchmark; returns its JSON-ready result (plots go to ``out_dir``)."""
    device = resolve_device(cfg.device)
    log(
        f"operators: F={cfg.features}, r={cfg.rank}, {cfg.num_patches} patches of "
        f"{cfg.patch_size}x{cfg.patch_size}, k={cfg.k}, device {device}"
    )
    measured: dict[tuple[Any, ...], dict[str, Any]] = {}

    def measure_all(F: int, patches: int, k: int, kinds: tuple[str, ...]) -> list[dict]:
        out = []
        done = [(n, g, F, patches, k) for g in kinds for n in cfg.operators]
        if all(key in measured for key in done):  # same graph as an earlier point
            return [measured[key] for key in done]
        for graph in make_graphs(F, patches, cfg.patch_size, k, cfg.seed, device, kinds):
            log(f" graph {graph.name}: N={graph.num_nodes}, E={graph.num_edges}, F={F}, k={k}")
            for name in cfg.operators:
                key = (name, graph.name, F, patches, k)
                if key not in measured:
                    measured[key] = measure_operator(name, graph, cfg, device)
                out.append(measured[key])
            del graph
        return out

    base = measure_all(cfg.features, cfg.num_patches, cfg.k, cfg.graphs)
    curves: dict[str, list[dict[str, Any]]] = {"nodes": [], "k": [], "features": []}
    for patches in cfg.curve_patches:
        curves["nodes"] += measure_all(cfg.features, patches, cfg.k, ("image_knn",))
    for k in cfg.curve_k:
        curves["k"] += measure_all(cfg.features, cfg.num_patches, k, ("image_knn",))
    for F in cfg.curve_features:
        curves["features"] += measure_all(F, cfg.num_patches, cfg.k, ("image_knn",))
    _add_ratios(list(measured.values()))

    result: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "device": str(device),
        "choices": {
            "lecc": "LightweightECC(F, F, rank=r, circulant_stride=F//3), node and edge paths",
            "lecc_node": f"fused edge op backend: {backend_for(device)}",
            "lecc_ref": "node path, fused edge op forced to the plain PyTorch reference",
            "lecc_attr": "edge_dim=F mode fed edge_attr = x_j - x_i, fused op backend: "
            f"{backend_for(device, 'edge_label_aggregate')}",
            "lecc_attr_ref": "edge_dim=F mode, fused op forced to the plain PyTorch reference",
            "gcn": "GCNConv(F, F), PyG defaults (self-loops, symmetric normalisation)",
            "gat": f"GATConv(F, F//{cfg.gat_heads}, heads={cfg.gat_heads}, concat=True)",
            "nnconv": "NNConv(F, F, nn=Linear(F, F*F), aggr='mean'), edge_attr = x_j - x_i",
            "edgeconv": "EdgeConv(MLP([2F, F]), aggr='mean')",
            "features": "N(0, 1) random, image graph = image_knn_graph(patches, k)",
            "random_graph": "torch.randint(N, (2, N*k)): same N and E",
        },
        "base": base,
        "curves": curves,
    }
    result["plots"] = [p for p in (_plot(result, out_dir),) if p]
    return result


def _curve_series(
    entries: list[dict[str, Any]], x_key: str, mode: str, y_key: str
) -> dict[str, tuple[list[float], list[float | None]]]:
    series: dict[str, tuple[list[float], list[float | None]]] = {}
    for e in entries:
        xs, ys = series.setdefault(e["operator"], ([], []))
        m = e[mode]
        xs.append(e[x_key])
        ys.append(m.get(y_key) if m.get("status") == "ok" else None)
    return series


def _plot(result: dict[str, Any], out_dir: Path) -> str | None:
    curves = result["curves"]
    axes = (("nodes", "num_nodes", "nodes N"), ("k", "k", "k"), ("features", "features", "F"))
    rows = (
        ("forward", "time_s", "forward time (s)"),
        ("forward_backward", "time_s", "forward+backward time (s)"),
        ("forward_backward", "peak_mb", "peak memory, fwd+bwd (MB)"),
    )
    panels = []
    for mode, y_key, ylabel in rows:
        for curve, x_key, xlabel in axes:
            if not curves[curve]:
                continue
            panels.append(
                {
                    "series": _curve_series(curves[curve], x_key, mode, y_key),
                    "xlabel": xlabel,
                    "ylabel": ylabel,
                    "title": f"{ylabel.split(' (')[0]} vs {xlabel}",
                }
            )
    if not panels:
        return None
    ncols = sum(1 for c in ("nodes", "k", "features") if curves[c])
    return plot_panels(
        out_dir / "operators_scaling.png",
        panels,
        title="Operators on the image kNN graph (log-log)",
        ncols=ncols,
    )


def _mode_cells(m: dict[str, Any]) -> list[str]:
    text = status_text(m)
    if text is not None:
        return [text, "", "", ""]
    return [
        fmt_time(m["time_s"]),
        fmt_ratio(m.get("time_ratio")),
        fmt_mb(m["peak_mb"]),
        fmt_ratio(m.get("peak_ratio")),
    ]


def markdown(result: dict[str, Any]) -> str:
    """The operator tables (markdown)."""
    cfg = result["config"]
    lines = [
        "## Operators\n",
        f"F={cfg['features']}, rank {cfg['rank']} (circulant stride F/3), "
        f"{cfg['num_patches']} patches of {cfg['patch_size']}x{cfg['patch_size']}, "
        f"k={cfg['k']}, {cfg['runs']} run(s) per operator with `reset_parameters()` between "
        "runs, time = median of the pooled `blocked_autorange` measurements. Forward runs under "
        "`no_grad`; forward+backward computes the gradients of the parameters and the input "
        "of `out.sum()`. Ratios are against `lecc_node` on the same graph in the same run "
        "(>1: slower / more memory). Peak memory = tensor memory allocated by the call "
        "(see *Memory* above).\n",
        "Operator choices: "
        + "; ".join(f"`{k}`: {v}" for k, v in result["choices"].items())
        + ".\n",
    ]
    for graph in cfg["graphs"]:
        rows = []
        entries = [e for e in result["base"] if e["graph"] == graph]
        if not entries:
            continue
        e0 = entries[0]
        for e in entries:
            rows.append(
                [
                    f"`{e['operator']}`",
                    fmt_count(e["params"]),
                    fmt_ratio(e.get("params_ratio")),
                    *_mode_cells(e["forward"]),
                    *_mode_cells(e["forward_backward"]),
                ]
            )
        lines.append(
            f"### Graph `{graph}`: N={e0['num_nodes']:,}, E={e0['num_edges']:,}, "
            f"F={e0['features']}\n"
        )
        lines.append(
            md_table(
                [
                    "operator",
                    "params",
                    "params / lecc",
                    "fwd time",
                    "fwd / lecc",
                    "fwd peak",
                    "peak / lecc",
                    "fwd+bwd time",
                    "fwd+bwd / lecc",
                    "fwd+bwd peak",
                    "peak / lecc",
                ],
                rows,
            )
        )
    for curve, label in (("nodes", "nodes N"), ("k", "k"), ("features", "F")):
        entries = result["curves"].get(curve, [])
        if not entries:
            continue
        key = {"nodes": "num_nodes", "k": "k", "features": "features"}[curve]
        points = sorted({e[key] for e in entries})
        rows = []
        for name in cfg["operators"]:
            cells = []
            for p in points:
                match = [e for e in entries if e["operator"] == name and e[key] == p]
                m = match[0]["forward_backward"] if match else {}
                text = status_text(m)
                cells.append(text if text is not None else fmt_time(m["time_s"]))
            rows.append([f"`{name}`", *cells])
        lines.append(f"### Scaling with {label} (forward+backward time, image kNN graph)\n")
        lines.append(md_table(["operator", *[f"{label}={p:,}" for p in points]], rows))
    for plot in result.get("plots", []):
        lines.append(f"![operators]({plot})\n")
    return "\n".join(lines)
