"""Code shared by the benchmarks: run metadata, timing, peak memory, memory caps and the
JSON / markdown / plot writers.

Timing follows the usual PyTorch rules (as in kornia's benchmark guidelines): the median of
:meth:`torch.utils.benchmark.Timer.blocked_autorange` measurements, with the Timer running on
``torch.get_num_threads()`` threads, fixed seeds and the run metadata stored with the numbers.

Peak memory (see :func:`measure_peak_memory`): on CPU, the peak of the bytes of tensor memory
allocated by the measured call above what was allocated before it, computed from the
allocation and free events of :func:`torch.profiler.profile` with ``profile_memory=True``
(the CPU analogue of ``torch.cuda.max_memory_allocated``); as a cross-check, the increase of
the process's resident set size high-water mark (``VmHWM``, reset through
``/proc/self/clear_refs`` after ``malloc_trim``), which also sees memory that is not a tensor
(e.g. torch_cluster's KD-tree). On CUDA, ``torch.cuda.max_memory_allocated`` after
``torch.cuda.reset_peak_memory_stats``, minus the memory allocated before the call.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import gc
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.benchmark import Timer

REPO_ROOT = Path(__file__).resolve().parent.parent
"""Root of the repository checkout (the parent of ``benchmarks/``)."""
DEFAULT_DATA_ROOT = REPO_ROOT.parent / "shared" / "data"
"""Where the data sets live by default (``../shared/data`` from the repository root)."""

MB = 1e6
"""Bytes per megabyte (decimal units throughout: 1 MB = 10^6 B, 1 GB = 10^9 B)."""
GB = 1e9
"""Bytes per gigabyte."""

_PROFILER_NOISE = ("USDT:", "STAGE:")
_PROFILER_WARNINGS = ("allocated before the profiling started",)


# --------------------------------------------------------------------------------------------
# Logging, seeds, devices
# --------------------------------------------------------------------------------------------


def log(message: str) -> None:
    """Print a progress line with a time stamp (flushed at once)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` means CUDA when available, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _total_memory_gb() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) * 1024 / GB, 1)
    return None


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=20, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def _version(module: str) -> str | None:
    try:
        return str(__import__(module).__version__)
    except Exception:  # not installed, or broken: only metadata
        return None


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (how busy the machine was), if available."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def collect_metadata(
    *, quick: bool, device: torch.device, seed: int, argv: Sequence[str] | None = None
) -> dict[str, Any]:
    """Everything needed to interpret and reproduce a run: versions, machine, settings."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    try:
        cpus_available = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus_available = os.cpu_count()
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full",
        "argv": list(sys.argv if argv is None else argv),
        "seed": seed,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_available": cpus_available,
        "memory_total_gb": _total_memory_gb(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_num_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torch_geometric": _version("torch_geometric"),
        "torch_cluster": _version("torch_cluster"),
        "pyg_lecc": _version("pyg_lecc"),
        "numpy": np.__version__,
        "load_average_start": load_average(),
    }


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def summarize_times(times: Sequence[float]) -> dict[str, float | int]:
    """Median, interquartile range, minimum and count of per-call times in seconds."""
    ordered = sorted(times)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {
        "time_s": statistics.median(ordered),
        "time_iqr_s": q3 - q1,
        "time_min_s": ordered[0],
        "measurements": len(ordered),
    }


def _timed_call(fn: Callable[[], Any], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def time_function(
    fn: Callable[[], Any],
    *,
    device: torch.device | None = None,
    min_run_time: float = 1.0,
    min_measurements: int = 3,
    max_total_s: float = 30.0,
    long_call_s: float = 5.0,
    warmup: bool = True,
    hint_s: float | None = None,
) -> dict[str, Any]:
    """Times ``fn()``: the median of
    :meth:`torch.utils.benchmark.Timer.blocked_autorange` measurements (the Timer runs on
    ``torch.get_num_threads()`` threads and synchronizes CUDA).

    One untimed warm-up call first (unless ``warmup`` is false; then ``hint_s``, a previous
    time per call, if any, plays its part). Its duration raises the Timer's ``min_run_time``
    to cover ``min_measurements`` calls (fewer if they would exceed ``max_total_s``), so that
    slow calls (one call per block) still give several measurements; fast calls run in blocks
    of many calls, topped up to ``min_measurements`` blocks. Calls of ``long_call_s`` or more
    are timed one by one with :func:`time.perf_counter` instead (the Timer would spend one
    more call estimating its block size), as many as fit in ``max_total_s`` (at least one,
    at most ``min_measurements``).

    Returns:
        ``times`` (seconds per call, one per measurement), ``method`` and the summary of
        :func:`summarize_times`.
    """
    device = device or torch.device("cpu")
    if warmup:
        hint_s = _timed_call(fn, device)
    wanted = min_measurements
    if hint_s is not None and hint_s * min_measurements > max_total_s:
        wanted = max(1, int(max_total_s // hint_s))
    if hint_s is not None and hint_s >= long_call_s:
        times = [_timed_call(fn, device) for _ in range(wanted)]
        method = f"time.perf_counter, {wanted} call(s) of >= {long_call_s:g} s"
        return {"times": times, "method": method, **summarize_times(times)}

    run_time = min_run_time
    if hint_s is not None and hint_s > 0:
        run_time = max(min_run_time, (wanted - 0.5) * hint_s)
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    measurement = timer.blocked_autorange(min_run_time=run_time)
    times = list(measurement.times)
    number = measurement.number_per_run
    # Fast calls: a block holds many calls; top up to the wanted number of blocks.
    while len(times) < min_measurements and sum(times) * number < max_total_s and number > 1:
        times += timer.timeit(number).times
    method = (
        f"blocked_autorange(min_run_time={run_time:.3g}), {number} call(s) per block, "
        f"{len(times)} block(s)"
    )
    return {"times": times, "method": method, **summarize_times(times)}


# --------------------------------------------------------------------------------------------
# Peak memory
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_profiler_stderr() -> Iterator[None]:
    # Kineto prints start/stop lines on file descriptor 2 for every profiling session: capture
    # the descriptor and re-emit everything else.
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines(keepends=True):
                noise = line.startswith(_PROFILER_NOISE) or any(
                    w in line for w in _PROFILER_WARNINGS
                )
                if not noise:
                    sys.stderr.write(line)
            sys.stderr.flush()


def _malloc_trim() -> None:
    # Hand freed heap memory back to the OS so that the RSS starts from the live memory.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _status_kb(key: str) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def _reset_rss_peak() -> bool:
    # Linux >= 4.0: writing 5 resets VmHWM to the current RSS.
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _tensor_peak_bytes(prof: torch.profiler.profile) -> int:
    """Peak of the running sum of the CPU allocation (+) and free (-) events of a profile."""
    records: list[tuple[int, int]] = []
    kineto = getattr(prof.profiler, "kineto_results", None)
    if kineto is not None:
        for event in kineto.events():
            if event.name() == "[memory]" and "CPU" in str(event.device_type()):
                records.append((event.start_ns(), event.nbytes()))
    else:  # older profiler API: FunctionEvents
        for event in prof.events():
            if event.name == "[memory]":
                records.append((int(event.time_range.start * 1000), event.cpu_memory_usage))
    current = peak = 0
    for _, nbytes in sorted(records, key=lambda r: r[0]):
        current += nbytes
        peak = max(peak, current)
    return peak


def measure_peak_memory(fn: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """Peak memory of one call of ``fn()`` above what was allocated before it.

    Returns:
        ``peak_mb``: tensor memory (CPU: profiler allocation events; CUDA:
        ``max_memory_allocated``); ``rss_peak_mb`` (CPU only, else :obj:`None`): increase of
        the process's RSS high-water mark during the call, which also counts non-tensor
        memory and the profiler's own buffers; ``memory_method``.
    """
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        return {"peak_mb": peak / MB, "rss_peak_mb": None, "memory_method": "cuda"}

    _malloc_trim()
    rss_ok = _reset_rss_peak()
    rss_before = _status_kb("VmRSS")
    activities = [torch.profiler.ProfilerActivity.CPU]
    with (
        _quiet_profiler_stderr(),
        torch.profiler.profile(activities=activities, profile_memory=True) as prof,
    ):
        fn()
    hwm = _status_kb("VmHWM")
    rss_peak = None
    if rss_ok and hwm is not None and rss_before is not None:
        rss_peak = max(0, hwm - rss_before) * 1024 / MB
    peak = _tensor_peak_bytes(prof)
    return {"peak_mb": peak / MB, "rss_peak_mb": rss_peak, "memory_method": "profiler"}


def time_once_with_rss(fn: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """One call of ``fn()`` timed with :func:`time.perf_counter` (for calls too long to
    repeat), with the increase of the RSS high-water mark during it (CPU; :obj:`None` when
    ``/proc/self/clear_refs`` is not writable)."""
    gc.collect()
    _malloc_trim()
    rss_ok = _reset_rss_peak()
    rss_before = _status_kb("VmRSS")
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    elapsed = time.perf_counter() - start
    hwm = _status_kb("VmHWM")
    rss_peak = None
    if rss_ok and hwm is not None and rss_before is not None and device.type == "cpu":
        rss_peak = max(0, hwm - rss_before) * 1024 / MB
    return {"time_s": elapsed, "rss_peak_mb": rss_peak}


# --------------------------------------------------------------------------------------------
# Memory caps and failures
# --------------------------------------------------------------------------------------------


def memory_cap_reason(predicted_bytes: float, max_gb: float) -> str | None:
    """A skip reason if ``predicted_bytes`` exceeds the ``max_gb`` cap, else :obj:`None`."""
    if predicted_bytes > max_gb * GB:
        return f"OOM (predicted {predicted_bytes / GB:.3g} GB > --max-gb {max_gb:g})"
    return None


_OOM_MARKERS = ("out of memory", "can't allocate", "cannot allocate", "not enough memory")


def guarded(fn: Callable[[], Any]) -> tuple[Any, dict[str, str] | None]:
    """Runs ``fn()``; a :class:`MemoryError` or :class:`RuntimeError` becomes a failure record
    (``status`` ``"oom"`` or ``"error"``) instead of ending the benchmark."""
    try:
        return fn(), None
    except (MemoryError, RuntimeError) as err:
        message = str(err).strip().splitlines()[0][:300] if str(err).strip() else repr(err)
        oom = isinstance(err, MemoryError) or any(m in message.lower() for m in _OOM_MARKERS)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        log(f"  {'OOM' if oom else 'error'}: {message}")
        return None, {"status": "oom" if oom else "error", "reason": message}


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------


def to_jsonable(obj: Any) -> Any:
    """Converts results to strict JSON: non-finite floats become strings, paths strings,
    tuples lists, NumPy and 0-d tensor scalars Python numbers."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        obj = obj.item()
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: Path, data: Any) -> None:
    """Writes ``data`` as indented, strict JSON."""
    path.write_text(json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n")


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def fmt_time(seconds: float | None) -> str:
    """Human-readable duration."""
    if seconds is None or not isinstance(seconds, int | float) or not math.isfinite(seconds):
        return "—"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_mb(mb: float | None) -> str:
    """Human-readable memory size given in MB."""
    if mb is None or not isinstance(mb, int | float) or not math.isfinite(mb):
        return "—"
    if mb >= 1000:
        return f"{mb / 1000:.2f} GB"
    if mb >= 10:
        return f"{mb:.0f} MB"
    return f"{mb:.2f} MB"


def fmt_ratio(ratio: float | None) -> str:
    """A ratio such as ``2.31x``."""
    if ratio is None or not isinstance(ratio, int | float) or not math.isfinite(ratio):
        return "—"
    return f"{ratio:.2f}x"


def fmt_count(n: int | None) -> str:
    """An integer with thousands separators."""
    return "—" if n is None else f"{n:,}"


def status_text(entry: Mapping[str, Any] | None) -> str | None:
    """For a failed or skipped measurement, a short text for a table cell; else None."""
    if not entry:
        return "—"
    if entry.get("status", "ok") == "ok":
        return None
    return f"{entry['status']}: {entry.get('reason', '')}".strip()


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def plot_panels(
    path: Path,
    panels: Sequence[Mapping[str, Any]],
    *,
    title: str,
    ncols: int | None = None,
) -> str | None:
    """Writes a PNG with one line chart per panel.

    Each panel: ``series`` (label -> (xs, ys); points with a :obj:`None` y are dropped),
    ``xlabel``, ``ylabel``, optional ``title``, ``logx``, ``logy`` (default true), ``kind``
    (``"line"`` or ``"bar"``).

    Returns:
        The file name, or :obj:`None` if matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("  matplotlib is not installed: no plot")
        return None

    ncols = ncols or len(panels)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        if panel.get("kind", "line") == "bar":
            labels = list(panel["series"])
            values = [panel["series"][k] for k in labels]
            shown = [(lab, v) for lab, v in zip(labels, values, strict=True) if v is not None]
            ax.bar([s[0] for s in shown], [s[1] for s in shown], color="tab:blue")
            ax.tick_params(axis="x", labelrotation=30)
        else:
            for label, (xs, ys) in panel["series"].items():
                pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
            from matplotlib.ticker import NullFormatter

            if panel.get("logx", True):
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
            if panel.get("logy", True):
                ax.set_yscale("log")
                ax.yaxis.set_minor_formatter(NullFormatter())
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        ax.set_xlabel(panel.get("xlabel", ""))
        ax.set_ylabel(panel.get("ylabel", ""))
        ax.set_title(panel.get("title", ""), fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name
