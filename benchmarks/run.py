"""Runs the pyg_lecc benchmarks and writes ``results.json``, ``results.md`` and PNG plots.

Usage (from the repository root)::

    python -m benchmarks.run [--quick] [--only operators,graph,iteration,full_image,task]
                             [--out benchmarks/results] [--max-gb 8] [--threads N]
                             [--device auto|cpu|cuda] [--seed 0] [--data-root ../shared/data]

Without ``--out`` the full mode writes to ``benchmarks/results`` and the quick mode to
``benchmarks/results/quick``. The files are rewritten after every module, so an interrupted
run keeps what it measured. Running a subset (``--only``) into a folder that holds results of
the same mode keeps the other modules' results there (each module records when and on which
commit it was measured).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks import common, full_image, graph_builders, iteration, operators, task

MODULES: dict[str, Any] = {
    "operators": operators,
    "graph": graph_builders,
    "iteration": iteration,
    "full_image": full_image,
    "task": task,
}
"""Benchmark modules by ``--only`` name, in run order."""

DEFAULT_OUT = common.REPO_ROOT / "benchmarks" / "results"

_MEMORY_NOTE = """\
**How memory is measured.** *Peak tensor memory* (CPU) is the peak, during one call, of the
bytes of tensor memory allocated by that call and not yet freed (tensors that existed before
the call are not counted), computed from the allocation/free events recorded by
`torch.profiler.profile(profile_memory=True)`: the CPU counterpart of
`torch.cuda.max_memory_allocated()` after `reset_peak_memory_stats()`, which is what is used
on CUDA. It ignores memory that is not a PyTorch tensor (torch_cluster's KD-tree, oneDNN
scratch space, Python objects). *Peak RSS increase* is the growth of the process's resident
set size high-water mark (`VmHWM`, reset through `/proc/self/clear_refs` after `malloc_trim`)
during the call: it sees all memory but also the profiler's buffers and allocator slack, so
read it as an upper bound and a cross-check. MB = 10^6 bytes.

**How time is measured.** Median of `torch.utils.benchmark.Timer(...).blocked_autorange()`
measurements on `torch.get_num_threads()` threads after an untimed warm-up call (several
runs with `reset_parameters()` in between for the operators, pooled); calls of 5 s or more
and calls too long to repeat (full images, training iterations) are timed one by one with
`time.perf_counter`.
Seeds are fixed. On a shared machine, compare numbers of the same run only: the load
averages above say how busy it was.
"""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description="Run the pyg_lecc benchmarks."
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run (minutes)")
    parser.add_argument(
        "--only",
        default=",".join(MODULES),
        help=f"comma-separated subset of {','.join(MODULES)} (default: all)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: benchmarks/results, quick: benchmarks/results/quick)",
    )
    parser.add_argument(
        "--max-gb",
        type=float,
        default=8.0,
        help="skip operator configurations predicted to need more than this many GB of "
        "per-edge tensors (default: 8)",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: unchanged)"
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        default=common.DEFAULT_DATA_ROOT,
        help="folder holding vcip2020/ and epfl_country_fullres/ (default: ../shared/data)",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODULES]
    if unknown or not names:
        parser.error(f"--only: unknown module(s) {unknown}; choose from {', '.join(MODULES)}")
    args.only = [n for n in MODULES if n in names]
    if args.out is None:
        args.out = DEFAULT_OUT / "quick" if args.quick else DEFAULT_OUT
    return args


def build_configs(args: argparse.Namespace) -> dict[str, Any]:
    """The configuration of every module for the parsed arguments."""
    device, seed = args.device, args.seed
    configs: dict[str, Any] = {}
    for name, module in MODULES.items():
        factory = module.Config.quick if args.quick else module.Config
        fields = {f.name for f in dataclasses.fields(module.Config)}
        kwargs: dict[str, Any] = {"device": device, "seed": seed}
        if "max_gb" in fields:
            kwargs["max_gb"] = args.max_gb
        if "data_root" in fields:
            kwargs["data_root"] = args.data_root
        if "data" in fields:
            kwargs["data"] = Path(args.data_root) / "vcip2020"
        configs[name] = factory(**kwargs)
    return configs


def _run_info(metadata: dict[str, Any]) -> dict[str, Any]:
    keys = ("date", "mode", "git_commit", "git_dirty", "device", "torch_num_threads")
    return {k: metadata.get(k) for k in keys}


def _load_previous(path: Path, mode: str) -> dict[str, Any]:
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if previous.get("metadata", {}).get("mode") != mode:
        return {}
    return dict(previous.get("benchmarks", {}))


def render_markdown(results: dict[str, Any]) -> str:
    """``results.md``: metadata, the measurement notes and every module's tables."""
    meta = results["metadata"]
    lines = [
        "# pyg_lecc benchmarks\n",
        f"Mode **{meta['mode']}**, written {meta['date']}. Command: "
        f"`python -m benchmarks.run {' '.join(meta['argv'][1:])}`\n",
        common.md_table(
            ["metadata", "value"],
            [[k, f"`{v}`" if v is not None else "—"] for k, v in meta.items() if k != "argv"],
        ),
        _MEMORY_NOTE,
    ]
    for name in MODULES:
        result = results["benchmarks"].get(name)
        if result is None:
            continue
        info = result.get("run", {})
        lines.append(MODULES[name].markdown(result))
        lines.append(
            f"*{name}: measured {info.get('date')} on commit "
            f"`{(info.get('git_commit') or 'unknown')[:12]}`"
            f"{' (uncommitted changes)' if info.get('git_dirty') else ''}, "
            f"{info.get('torch_num_threads')} thread(s), device {info.get('device')}, "
            f"wall time {common.fmt_time(result.get('wall_time_s'))}.*\n"
        )
    return "\n".join(lines)


def write_outputs(results: dict[str, Any], out: Path) -> None:
    """Writes ``results.json`` and ``results.md`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    common.write_json(out / "results.json", results)
    (out / "results.md").write_text(render_markdown(common.to_jsonable(results)))


def run_benchmarks(
    modules: Sequence[str],
    configs: dict[str, Any],
    out: Path,
    *,
    quick: bool,
    seed: int = 0,
    device: str = "auto",
    argv: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Runs ``modules`` with ``configs`` and writes the results into ``out``.

    Returns:
        The results: ``metadata`` and ``benchmarks`` (module name -> result).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metadata = common.collect_metadata(
        quick=quick, device=common.resolve_device(device), seed=seed, argv=argv
    )
    benchmarks = _load_previous(out / "results.json", metadata["mode"])
    for name in modules:
        benchmarks.pop(name, None)
    results: dict[str, Any] = {"metadata": metadata, "benchmarks": benchmarks}
    for name in modules:
        common.seed_everything(seed)
        start = time.perf_counter()
        result = MODULES[name].run(configs[name], out)
        result["wall_time_s"] = time.perf_counter() - start
        result["run"] = _run_info(metadata)
        benchmarks[name] = result
        common.log(f"{name}: done in {common.fmt_time(result['wall_time_s'])}")
        metadata["load_average_end"] = common.load_average()
        write_outputs(results, out)
    write_outputs(results, out)
    common.log(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks.run``."""
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch_geometric")
    warnings.filterwarnings("ignore", message=".*torch.jit.*", category=DeprecationWarning)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    run_benchmarks(
        args.only,
        build_configs(args),
        args.out,
        quick=args.quick,
        seed=args.seed,
        device=args.device,
        argv=[sys.argv[0], *(sys.argv[1:] if argv is None else argv)],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
