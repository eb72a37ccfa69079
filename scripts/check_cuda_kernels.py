r"""Checks and times the Triton kernels of :mod:`pyg_lecc.ops.cuda` on a CUDA machine.

Usage: ``PYTHONPATH=src python scripts/check_cuda_kernels.py [--quick] [--ops OPS]
[--interpret]``

Both fused ops are checked (``--ops edge_aggregate,edge_label_aggregate``, the default):

* ``edge_aggregate`` (the default mode of ``LightweightECC``): the fused forward and every
  gradient of the backward against a plain autograd reference that materialises the
  per-edge tensors (evaluated in float64), at the paper's size (F_in = F_h = 99, r = 11,
  N = 17,640, degree 8) and on a random graph with varying (and zero) in-degree, plus small
  bipartite / narrow / empty cases; then kernel forward+backward timed against the float32
  reference (CUDA events, median of 20 after warm-up). Results: ``checks`` and ``timings``.
* ``edge_label_aggregate`` (the ``edge_dim`` mode; its kernels are opt-in in the package,
  ``PYG_LECC_CUDA_EDGE_LABEL_KERNELS=1``, until this check has passed on a GPU): the same,
  with and without attention, float32 and bfloat16, at the paper's size (E = 141,120,
  F_h = 99, r = 11) and on small / odd graphs (bipartite, zero in-degree, no edges, no
  targets); timed against the plain float32 reference and against the package's own
  reference (what CUDA runs while the kernels are off). Results under
  ``edge_label_aggregate`` (``checks``, ``timings``, ``ok``).

Every case is guarded; the last line printed is always a JSON summary, whose ``ok`` covers
everything checked and ``edge_aggregate_ok`` / ``edge_label_aggregate.ok`` each op (the
runbook gates each op's kernels on its own). Exit code 1 if any check fails.

``--interpret`` rehearses every code path on the CPU in Triton's interpreter (small cases
only, timings on a tiny graph with a wall clock; needs Triton installed).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

INTERPRET = "--interpret" in sys.argv
if INTERPRET:  # Triton picks the interpreter when the kernels are decorated, at import
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

try:
    from pyg_lecc.ops import cuda as K
    from pyg_lecc.ops import reference as package_reference
except Exception:  # the package __init__ may need extras absent here: load the file itself
    import importlib.util

    _path = Path(__file__).resolve().parents[1] / "src" / "pyg_lecc" / "ops" / "cuda.py"
    _spec = importlib.util.spec_from_file_location("pyg_lecc_ops_cuda", _path)
    K = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(K)
    package_reference = None

DELTA, SLOPE = 10.0, 0.2
GRAD_NAMES = ("x_src", "x_dst", "y_src", "y_dst", "b0", "V", "c", "w_omega", "b_omega")
# Max |error| / max |reference| per output. float32: every output is a short sum (degree 8,
# F_h <= 128 terms) or a parameter reduction over E edges, both far below 1e-4 relative in
# float32 (about 1e-6 expected). bf16: inputs are the same bf16 values for both sides, the
# kernel rounds its outputs to bf16 (2^-8 relative), so 2e-2 leaves room for cancellation.
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}


def regular_graph(n_dst: int, n_src: int, degree: int, gen: torch.Generator, device):
    rowptr = torch.arange(n_dst + 1, dtype=torch.long) * degree
    col = torch.randint(0, n_src, (n_dst * degree,), generator=gen)
    return rowptr.to(device), col.to(device)


def random_graph(n_dst: int, n_src: int, num_edges: int, gen: torch.Generator, device):
    # Random targets give a Poisson-like in-degree, zero included; a block of isolated targets
    # at the end makes sure zero-degree rows exist.
    dst = torch.randint(0, max(1, n_dst - 7), (num_edges,), generator=gen).sort().values
    counts = torch.bincount(dst, minlength=n_dst)
    rowptr = torch.zeros(n_dst + 1, dtype=torch.long)
    rowptr[1:] = counts.cumsum(0)
    col = torch.randint(0, n_src, (num_edges,), generator=gen)
    return rowptr.to(device), col.to(device)


def make_inputs(n_src, n_dst, fin, fh, r, gen, device, dtype):
    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)

    # Scales keep gamma = exp(-||d||^2 / delta) away from 0 and 1 at F_in = 99.
    xs = 0.6 / fin**0.5
    return [
        rnd(n_src, fin, scale=xs * 2),
        rnd(n_dst, fin, scale=xs * 2),
        rnd(n_src, fh, scale=0.5),
        rnd(n_dst, fh, scale=0.5),
        rnd(fh, scale=0.1),
        rnd(n_src, r, fh, scale=fh**-0.5),
        rnd(n_src, r, scale=0.3),
        rnd(r, fh, scale=fh**-0.5),
        rnd(r, scale=0.3),
    ]


def reference(x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega, rowptr, col):
    # Plain per-edge autograd implementation: materialises E x r x F_h tensors.
    n_dst, r, fh = x_dst.size(0), V.size(1), V.size(2)
    rows = torch.repeat_interleave(
        torch.arange(n_dst, device=col.device), rowptr.diff(), output_size=col.numel()
    )
    d = x_src[col] - x_dst[rows]
    gamma = torch.exp(-(d * d).sum(-1) / DELTA)
    z = torch.nn.functional.leaky_relu(y_src[col] - y_dst[rows] + b0, SLOPE)
    omega = z @ w_omega.t() + b_omega
    u = (V[col] * z.unsqueeze(1)).sum(-1) + c[col]
    a = gamma.unsqueeze(-1) * omega * u
    Q = torch.zeros(n_dst, r, fh, device=z.device, dtype=z.dtype)
    Q = Q.index_add(0, rows, a.unsqueeze(-1) * z.unsqueeze(1))
    P = torch.zeros(n_dst, r, device=z.device, dtype=z.dtype).index_add(0, rows, a)
    return Q, P


def reference_grads(inputs, rowptr, col, gQ, gP):
    leaves = [t.detach().requires_grad_(True) for t in inputs]
    Q, P = reference(*leaves, rowptr, col)
    grads = torch.autograd.grad((Q * gQ).sum() + (P * gP).sum(), leaves, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads, strict=True)]
    return Q.detach(), P.detach(), grads


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    if ref.numel() == 0:
        return 0.0 if out.shape == ref.shape else float("inf")
    if out.shape != ref.shape:
        return float("inf")
    scale = ref.abs().max().item()
    return (out.double() - ref.double()).abs().max().item() / max(scale, 1e-30)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _report(name, errors, dtypes_ok, dtype, num_edges):
    tol = TOL[dtype]
    ok = dtypes_ok and all(e <= tol for e in errors.values())
    worst = max(errors.values()) if errors else 0.0
    print(f"[{'ok' if ok else 'FAIL'}] {name}: E={num_edges} max rel err {worst:.2e} "
          f"(tol {tol:.0e}) dtypes_ok={dtypes_ok}")  # fmt: skip
    for key, val in errors.items():
        if val > tol:
            print(f"    {key}: {val:.3e}")
    return {"ok": ok, "num_edges": num_edges, "tol": tol, "max_rel_err": worst,
            "errors": errors, "dtypes_ok": dtypes_ok}  # fmt: skip


def check_case(name, n_src, n_dst, fin, fh, r, graph, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rowptr, col = graph(n_dst, n_src, gen, device)
    inputs = make_inputs(n_src, n_dst, fin, fh, r, gen, device, dtype)
    gQ = torch.randn(n_dst, r, fh, generator=gen).to(device=device, dtype=dtype)
    gP = torch.randn(n_dst, r, generator=gen).to(device=device, dtype=dtype)

    Q, P = K.edge_aggregate_forward(*inputs, rowptr, col, DELTA, SLOPE)
    grads = K.edge_aggregate_backward(gQ, gP, *inputs, rowptr, col, DELTA, SLOPE)
    sync(device)
    # The reference sees the very same (possibly half-precision) values, in float64.
    ref_Q, ref_P, ref_grads = reference_grads(
        [t.double() for t in inputs], rowptr, col, gQ.double(), gP.double()
    )
    errors = {"Q": rel_err(Q, ref_Q), "P": rel_err(P, ref_P)}
    dtypes_ok = Q.dtype == dtype and P.dtype == dtype
    for gname, g, ref in zip(GRAD_NAMES, grads, ref_grads, strict=True):
        errors["grad_" + gname] = rel_err(g, ref)
        dtypes_ok = dtypes_ok and g.dtype == dtype
    return _report(name, errors, dtypes_ok, dtype, col.numel())


# --------------------------------------------------------------------------------------------
# edge_label_aggregate
# --------------------------------------------------------------------------------------------

LABEL_NAMES = ("pre", "gamma", "V", "c", "w_omega", "b_omega")


def make_label_inputs(n_src, num_edges, fh, r, attention, gen, device, dtype):
    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)

    # gamma in (0, 1], as exp(-||d||^2 / delta) is.
    gamma = torch.exp(-torch.rand(num_edges, generator=gen)).to(device=device, dtype=dtype)
    return [
        rnd(num_edges, fh, scale=0.5),
        gamma if attention else None,
        rnd(n_src, r, fh, scale=fh**-0.5),
        rnd(n_src, r, scale=0.3),
        rnd(r, fh, scale=fh**-0.5),
        rnd(r, scale=0.3),
    ]


def label_reference(pre, gamma, V, c, w_omega, b_omega, rowptr, col):
    # Plain per-edge autograd implementation: materialises E x r x F_h tensors.
    n_dst, r, fh = rowptr.numel() - 1, V.size(1), V.size(2)
    rows = torch.repeat_interleave(
        torch.arange(n_dst, device=col.device), rowptr.diff(), output_size=col.numel()
    )
    z = torch.nn.functional.leaky_relu(pre, SLOPE)
    a = (z @ w_omega.t() + b_omega) * ((V[col] * z.unsqueeze(1)).sum(-1) + c[col])
    if gamma is not None:
        a = gamma.unsqueeze(-1) * a
    Q = torch.zeros(n_dst, r, fh, device=z.device, dtype=z.dtype)
    Q = Q.index_add(0, rows, a.unsqueeze(-1) * z.unsqueeze(1))
    P = torch.zeros(n_dst, r, device=z.device, dtype=z.dtype).index_add(0, rows, a)
    return Q, P


def label_reference_grads(inputs, rowptr, col, gQ, gP):
    """Q, P and the gradients of ``(pre, gamma, V, c, w_omega, b_omega)`` (that of a missing
    gamma empty, as the kernels return it)."""
    leaves = [None if t is None else t.detach().requires_grad_(True) for t in inputs]
    Q, P = label_reference(*leaves, rowptr, col)
    used = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad((Q * gQ).sum() + (P * gP).sum(), used, allow_unused=True))
    out = []
    for t in leaves:
        if t is None:
            out.append(inputs[0].new_empty(0))
            continue
        g = next(grads)
        out.append(torch.zeros_like(t) if g is None else g)
    return Q.detach(), P.detach(), out


def check_label_case(name, n_src, n_dst, fh, r, graph, dtype, attention, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rowptr, col = graph(n_dst, n_src, gen, device)
    inputs = make_label_inputs(n_src, col.numel(), fh, r, attention, gen, device, dtype)
    gQ = torch.randn(n_dst, r, fh, generator=gen).to(device=device, dtype=dtype)
    gP = torch.randn(n_dst, r, generator=gen).to(device=device, dtype=dtype)

    Q, P = K.edge_label_aggregate_forward(*inputs, rowptr, col, SLOPE)
    grads = K.edge_label_aggregate_backward(gQ, gP, *inputs, rowptr, col, SLOPE)
    sync(device)
    ref_Q, ref_P, ref_grads = label_reference_grads(
        [None if t is None else t.double() for t in inputs], rowptr, col, gQ.double(),
        gP.double(),
    )  # fmt: skip
    errors = {"Q": rel_err(Q, ref_Q), "P": rel_err(P, ref_P)}
    dtypes_ok = Q.dtype == dtype and P.dtype == dtype
    for gname, inp, g, ref in zip(LABEL_NAMES, inputs, grads, ref_grads, strict=True):
        if inp is None:  # no attention: an empty gradient
            errors["grad_" + gname] = 0.0 if g.numel() == 0 else float("inf")
            continue
        errors["grad_" + gname] = rel_err(g, ref)
        dtypes_ok = dtypes_ok and g.dtype == dtype
    result = _report(name, errors, dtypes_ok, dtype, col.numel())
    result["attention"] = attention
    return result


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def median_ms(fn, device, warmup: int = 3, reps: int = 20) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    if torch.device(device).type != "cuda":  # the interpreter's rehearsal: a wall clock
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def peak_extra_mb(fn, device) -> float | None:
    if torch.device(device).type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _print_timing(name, result):
    print(f"[time] {name}: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in result.items()))  # fmt: skip


def time_case(name, n, fin, fh, r, graph, device, dtype=torch.float32, reps=20):
    gen = torch.Generator().manual_seed(1)
    rowptr, col = graph(n, n, gen, device)
    inputs = make_inputs(n, n, fin, fh, r, gen, device, dtype)
    gQ = torch.randn(n, r, fh, generator=gen).to(device=device, dtype=dtype)
    gP = torch.randn(n, r, generator=gen).to(device=device, dtype=dtype)

    def kernel_fwd():
        return K.edge_aggregate_forward(*inputs, rowptr, col, DELTA, SLOPE)

    def kernel_bwd():
        return K.edge_aggregate_backward(gQ, gP, *inputs, rowptr, col, DELTA, SLOPE)

    def kernel_both():
        kernel_fwd()
        kernel_bwd()

    def ref_both():
        reference_grads(inputs, rowptr, col, gQ, gP)

    result = {"num_edges": col.numel(), "dtype": str(dtype).replace("torch.", "")}
    result["kernel_fwd_ms"] = median_ms(kernel_fwd, device, reps=reps)
    result["kernel_bwd_ms"] = median_ms(kernel_bwd, device, reps=reps)
    result["kernel_fwd_bwd_ms"] = median_ms(kernel_both, device, reps=reps)
    result["kernel_peak_extra_mb"] = peak_extra_mb(kernel_both, device)
    try:
        result["reference_fwd_bwd_ms"] = median_ms(ref_both, device, reps=reps)
        result["reference_peak_extra_mb"] = peak_extra_mb(ref_both, device)
        result["speedup"] = result["reference_fwd_bwd_ms"] / result["kernel_fwd_bwd_ms"]
    except torch.OutOfMemoryError:
        result["reference_fwd_bwd_ms"] = None
    _print_timing(name, result)
    return result


def time_label_case(name, n, fh, r, graph, device, dtype=torch.float32, attention=True, reps=20):
    gen = torch.Generator().manual_seed(1)
    rowptr, col = graph(n, n, gen, device)
    inputs = make_label_inputs(n, col.numel(), fh, r, attention, gen, device, dtype)
    gQ = torch.randn(n, r, fh, generator=gen).to(device=device, dtype=dtype)
    gP = torch.randn(n, r, generator=gen).to(device=device, dtype=dtype)

    def kernel_fwd():
        return K.edge_label_aggregate_forward(*inputs, rowptr, col, SLOPE)

    def kernel_bwd():
        return K.edge_label_aggregate_backward(gQ, gP, *inputs, rowptr, col, SLOPE)

    def kernel_both():
        kernel_fwd()
        kernel_bwd()

    def ref_both():
        label_reference_grads(inputs, rowptr, col, gQ, gP)

    def package_ref_both():  # what CUDA runs while the kernels are off
        package_reference.edge_label_aggregate_forward(*inputs, rowptr, col, SLOPE)
        package_reference.edge_label_aggregate_backward(gQ, gP, *inputs, rowptr, col, SLOPE)

    result = {"num_edges": col.numel(), "dtype": str(dtype).replace("torch.", ""),
              "attention": attention}  # fmt: skip
    result["kernel_fwd_ms"] = median_ms(kernel_fwd, device, reps=reps)
    result["kernel_bwd_ms"] = median_ms(kernel_bwd, device, reps=reps)
    result["kernel_fwd_bwd_ms"] = median_ms(kernel_both, device, reps=reps)
    result["kernel_peak_extra_mb"] = peak_extra_mb(kernel_both, device)
    try:
        result["reference_fwd_bwd_ms"] = median_ms(ref_both, device, reps=reps)
        result["reference_peak_extra_mb"] = peak_extra_mb(ref_both, device)
        result["speedup"] = result["reference_fwd_bwd_ms"] / result["kernel_fwd_bwd_ms"]
    except torch.OutOfMemoryError:
        result["reference_fwd_bwd_ms"] = None
    if package_reference is not None:
        ms = median_ms(package_ref_both, device, reps=reps)
        result["package_reference_fwd_bwd_ms"] = ms
        result["package_reference_peak_extra_mb"] = peak_extra_mb(package_ref_both, device)
        result["speedup_vs_package_reference"] = ms / result["kernel_fwd_bwd_ms"]
    _print_timing(name, result)
    return result


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------

OPS = ("edge_aggregate", "edge_label_aggregate")


def _run_guarded(fn, name, results, errors, is_check=True) -> bool:
    """Runs one case; False if it failed (a timing's exception is recorded, not a failure)."""
    try:
        res = fn()
        results[name] = res
        return res.get("ok", True)
    except Exception:
        errors[name if is_check else "time_" + name] = traceback.format_exc(limit=3)[-600:]
        print(f"[{'FAIL' if is_check else 'time'}] {name}: exception")
        traceback.print_exc()
        return not is_check
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the first cases only")
    parser.add_argument("--ops", default=",".join(OPS), help="ops to check, comma-separated")
    parser.add_argument(
        "--interpret", action="store_true", help="CPU rehearsal in Triton's interpreter"
    )
    args = parser.parse_args(argv)
    ops = [op for op in args.ops.split(",") if op]
    unknown = set(ops) - set(OPS)
    if unknown:
        parser.error(f"unknown ops {sorted(unknown)}; available: {OPS}")
    quick, interpret = args.quick, args.interpret or INTERPRET
    summary: dict = {"checks": {}, "timings": {}, "errors": {}, "ops": ops}
    ok_by_op = {op: True for op in ops}
    try:
        summary["env"] = {
            "torch": torch.__version__,
            "triton_available": K.AVAILABLE,
            "cuda": torch.cuda.is_available(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "interpret": interpret,
        }
        try:
            import triton

            summary["env"]["triton"] = triton.__version__
        except Exception as exc:  # reported, not fatal: AVAILABLE says the rest
            summary["env"]["triton"] = repr(exc)
        if interpret and os.environ.get("TRITON_INTERPRET") != "1":
            summary["errors"]["setup"] = "--interpret must be given on the command line"
        elif not K.AVAILABLE or not (interpret or torch.cuda.is_available()):
            summary["errors"]["setup"] = "needs CUDA and Triton (or --interpret and Triton)"
        if "setup" in summary["errors"]:
            summary["ok"] = False
            print(json.dumps(summary))
            return 1
        dev = torch.device("cpu" if interpret else "cuda")
        N, F, R, DEG = 17640, 99, 11, 8
        E = N * DEG

        def regular(k):
            return lambda nd, ns, g, d: regular_graph(nd, ns, k, g, d)

        def rand(e):
            return lambda nd, ns, g, d: random_graph(nd, ns, e, g, d)

        f32, bf16, f16 = torch.float32, torch.bfloat16, torch.float16
        if "edge_aggregate" in ops:
            cases = [
                ("tiny_r4_bipartite_fin24_fh33", 37, 29, 24, 33, 4, rand(150), f32),
                ("small_r11_fin66_fh99", 300, 300, 66, 99, 11, rand(2400), f32),
                ("empty_graph", 50, 40, 24, 24, 4, rand(0), f32),
                ("no_targets", 50, 0, 24, 24, 4, regular(8), f32),
                ("small_bf16", 300, 250, 33, 33, 11, rand(2000), bf16),
                ("small_fp16", 300, 250, 33, 33, 11, rand(2000), f16),
                ("paper_knn8_fp32", N, N, F, F, R, regular(DEG), f32),
                ("paper_random_fp32", N, N, F, F, R, rand(E), f32),
                ("paper_knn8_bf16", N, N, F, F, R, regular(DEG), bf16),
                ("paper_bipartite_r4_fp32", N, N // 2, F, 33, 4, rand(E), f32),
            ]
            if interpret:  # the interpreter runs programs one by one in NumPy: small only
                cases = [c for c in cases if c[1] <= 50 or c[0] == "small_bf16"]
            elif quick:
                cases = cases[:7]
            for name, ns, nd, fin, fh, r, graph, dtype in cases:
                ok_by_op["edge_aggregate"] &= _run_guarded(
                    lambda a=(name, ns, nd, fin, fh, r, graph, dtype): check_case(*a, dev),
                    name, summary["checks"], summary["errors"],
                )  # fmt: skip
            timing_cases = [
                ("paper_knn8_fp32", N, F, F, R, regular(DEG), f32),
                ("paper_random_fp32", N, F, F, R, rand(E), f32),
                ("paper_knn8_bf16", N, F, F, R, regular(DEG), bf16),
            ]
            if interpret:
                timing_cases = [("tiny_knn8_fp32", 40, 9, 9, 3, regular(DEG), f32)]
            for name, n, fin, fh, r, graph, dtype in timing_cases[: 1 if quick else None]:
                _run_guarded(
                    lambda a=(name, n, fin, fh, r, graph, dev, dtype): time_case(
                        *a, reps=2 if interpret else 20
                    ),
                    name, summary["timings"], summary["errors"], is_check=False,
                )  # fmt: skip
        if "edge_label_aggregate" in ops:
            label = summary["edge_label_aggregate"] = {"checks": {}, "timings": {}, "errors": {}}
            errors = label["errors"]
            # (name, n_src, n_dst, F_h, r, graph, dtype, attention)
            cases = [
                ("tiny_r4_bipartite_fh33", 37, 29, 33, 4, rand(150), f32, True),
                ("tiny_r4_bipartite_fh33_no_attention", 37, 29, 33, 4, rand(150), f32, False),
                ("small_r11_fh99_varying_degree", 300, 300, 99, 11, rand(2400), f32, True),
                ("empty_graph", 50, 40, 24, 4, rand(0), f32, True),
                ("empty_graph_no_attention", 50, 40, 24, 4, rand(0), f32, False),
                ("no_targets", 50, 0, 24, 4, regular(8), f32, True),
                ("small_bf16", 300, 250, 33, 11, rand(2000), bf16, True),
                ("small_bf16_no_attention", 300, 250, 33, 11, rand(2000), bf16, False),
                ("small_fp16", 300, 250, 33, 11, rand(2000), f16, True),
                ("paper_knn8_fp32", N, N, F, R, regular(DEG), f32, True),
                ("paper_knn8_fp32_no_attention", N, N, F, R, regular(DEG), f32, False),
                ("paper_random_fp32", N, N, F, R, rand(E), f32, True),
                ("paper_knn8_bf16", N, N, F, R, regular(DEG), bf16, True),
                ("paper_random_bf16_no_attention", N, N, F, R, rand(E), bf16, False),
            ]
            if interpret:
                cases = [c for c in cases if c[1] <= 50 or c[0] == "small_bf16_no_attention"]
            elif quick:
                cases = cases[:10]
            for name, ns, nd, fh, r, graph, dtype, att in cases:
                ok_by_op["edge_label_aggregate"] &= _run_guarded(
                    lambda a=(name, ns, nd, fh, r, graph, dtype, att): check_label_case(*a, dev),
                    name, label["checks"], errors,
                )  # fmt: skip
            timing_cases = [
                ("paper_knn8_fp32", N, F, R, regular(DEG), f32, True),
                ("paper_knn8_bf16", N, F, R, regular(DEG), bf16, True),
                ("paper_knn8_fp32_no_attention", N, F, R, regular(DEG), f32, False),
            ]
            if interpret:
                timing_cases = [("tiny_knn8_fp32", 40, 9, 3, regular(DEG), f32, True)]
            for name, n, fh, r, graph, dtype, att in timing_cases[: 1 if quick else None]:
                _run_guarded(
                    lambda a=(name, n, fh, r, graph, dev, dtype, att): time_label_case(
                        *a, reps=2 if interpret else 20
                    ),
                    name, label["timings"], errors, is_check=False,
                )  # fmt: skip
            label["ok"] = ok_by_op["edge_label_aggregate"]
    except Exception as exc:
        ok_by_op = {op: False for op in ops}
        summary["errors"]["main"] = repr(exc)
        traceback.print_exc()
    if "edge_aggregate" in ops:
        summary["edge_aggregate_ok"] = ok_by_op["edge_aggregate"]
    if "edge_label_aggregate" in ops:
        summary.setdefault("edge_label_aggregate", {})["ok"] = ok_by_op["edge_label_aggregate"]
    summary["ok"] = all(ok_by_op.values())
    summary["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    print(json.dumps(summary, default=str))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
