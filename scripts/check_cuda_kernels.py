r"""Checks and times the Triton edge kernels of :mod:`pyg_lecc.ops.cuda` on a CUDA machine.

Usage: ``PYTHONPATH=src python scripts/check_cuda_kernels.py [--quick]``

Compares the fused forward and every gradient of the backward with a plain autograd
reference that materialises the per-edge tensors (evaluated in float64), at the paper's size
(F_in = F_h = 99, r = 11, N = 17,640, degree 8) and on a random graph with varying (and zero)
in-degree, plus small bipartite / narrow / empty cases; then times kernel forward+backward
against the float32 reference (CUDA events, median of 20 after warm-up). Every case is
guarded; the last line printed is always a JSON summary. Exit code 1 if any check fails.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

import torch

try:
    from pyg_lecc.ops import cuda as K
except Exception:  # the package __init__ may need extras absent here: load the file itself
    import importlib.util

    _path = Path(__file__).resolve().parents[1] / "src" / "pyg_lecc" / "ops" / "cuda.py"
    _spec = importlib.util.spec_from_file_location("pyg_lecc_ops_cuda", _path)
    K = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(K)

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


def check_case(name, n_src, n_dst, fin, fh, r, graph, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rowptr, col = graph(n_dst, n_src, gen, device)
    inputs = make_inputs(n_src, n_dst, fin, fh, r, gen, device, dtype)
    gQ = torch.randn(n_dst, r, fh, generator=gen).to(device=device, dtype=dtype)
    gP = torch.randn(n_dst, r, generator=gen).to(device=device, dtype=dtype)

    Q, P = K.edge_aggregate_forward(*inputs, rowptr, col, DELTA, SLOPE)
    grads = K.edge_aggregate_backward(gQ, gP, *inputs, rowptr, col, DELTA, SLOPE)
    torch.cuda.synchronize()
    # The reference sees the very same (possibly half-precision) values, in float64.
    ref_Q, ref_P, ref_grads = reference_grads(
        [t.double() for t in inputs], rowptr, col, gQ.double(), gP.double()
    )
    errors = {"Q": rel_err(Q, ref_Q), "P": rel_err(P, ref_P)}
    dtypes_ok = Q.dtype == dtype and P.dtype == dtype
    for gname, g, ref in zip(GRAD_NAMES, grads, ref_grads, strict=True):
        errors["grad_" + gname] = rel_err(g, ref)
        dtypes_ok = dtypes_ok and g.dtype == dtype
    tol = TOL[dtype]
    ok = dtypes_ok and all(e <= tol for e in errors.values())
    worst = max(errors.values()) if errors else 0.0
    print(f"[{'ok' if ok else 'FAIL'}] {name}: E={col.numel()} max rel err {worst:.2e} "
          f"(tol {tol:.0e}) dtypes_ok={dtypes_ok}")  # fmt: skip
    for key, val in errors.items():
        if val > tol:
            print(f"    {key}: {val:.3e}")
    return {"ok": ok, "num_edges": col.numel(), "tol": tol, "max_rel_err": worst,
            "errors": errors, "dtypes_ok": dtypes_ok}  # fmt: skip


def median_ms(fn, warmup: int = 3, reps: int = 20) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
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


def time_case(name, n, fin, fh, r, graph, device, dtype=torch.float32):
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
    result["kernel_fwd_ms"] = median_ms(kernel_fwd)
    result["kernel_bwd_ms"] = median_ms(kernel_bwd)
    result["kernel_fwd_bwd_ms"] = median_ms(kernel_both)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    kernel_both()
    torch.cuda.synchronize()
    result["kernel_peak_extra_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    try:
        result["reference_fwd_bwd_ms"] = median_ms(ref_both)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        ref_both()
        torch.cuda.synchronize()
        result["reference_peak_extra_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        result["speedup"] = result["reference_fwd_bwd_ms"] / result["kernel_fwd_bwd_ms"]
    except torch.OutOfMemoryError:
        result["reference_fwd_bwd_ms"] = None
    print(f"[time] {name}: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in result.items()))  # fmt: skip
    return result


def main() -> int:
    quick = "--quick" in sys.argv
    summary: dict = {"checks": {}, "timings": {}, "errors": {}}
    failed = False
    try:
        summary["env"] = {
            "torch": torch.__version__,
            "triton_available": K.AVAILABLE,
            "cuda": torch.cuda.is_available(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        }
        try:
            import triton

            summary["env"]["triton"] = triton.__version__
        except Exception as exc:  # reported, not fatal: AVAILABLE says the rest
            summary["env"]["triton"] = repr(exc)
        if not torch.cuda.is_available() or not K.AVAILABLE:
            summary["errors"]["setup"] = "needs CUDA and Triton"
            print(json.dumps(summary))
            return 1
        dev = torch.device("cuda")
        N, F, R, DEG = 17640, 99, 11, 8
        E = N * DEG

        def regular(k):
            return lambda nd, ns, g, d: regular_graph(nd, ns, k, g, d)

        def rand(e):
            return lambda nd, ns, g, d: random_graph(nd, ns, e, g, d)

        cases = [
            ("tiny_r4_bipartite_fin24_fh33", 37, 29, 24, 33, 4, rand(150), torch.float32),
            ("small_r11_fin66_fh99", 300, 300, 66, 99, 11, rand(2400), torch.float32),
            ("empty_graph", 50, 40, 24, 24, 4, rand(0), torch.float32),
            ("no_targets", 50, 0, 24, 24, 4, regular(8), torch.float32),
            ("small_bf16", 300, 250, 33, 33, 11, rand(2000), torch.bfloat16),
            ("small_fp16", 300, 250, 33, 33, 11, rand(2000), torch.float16),
            ("paper_knn8_fp32", N, N, F, F, R, regular(DEG), torch.float32),
            ("paper_random_fp32", N, N, F, F, R, rand(E), torch.float32),
            ("paper_knn8_bf16", N, N, F, F, R, regular(DEG), torch.bfloat16),
            ("paper_bipartite_r4_fp32", N, N // 2, F, 33, 4, rand(E), torch.float32),
        ]
        if quick:
            cases = cases[:7]
        for name, ns, nd, fin, fh, r, graph, dtype in cases:
            try:
                res = check_case(name, ns, nd, fin, fh, r, graph, dtype, dev)
                summary["checks"][name] = res
                failed = failed or not res["ok"]
            except Exception as exc:
                failed = True
                summary["errors"][name] = repr(exc)
                print(f"[FAIL] {name}: exception")
                traceback.print_exc()
            torch.cuda.empty_cache()

        timing_cases = [
            ("paper_knn8_fp32", N, F, F, R, regular(DEG), torch.float32),
            ("paper_random_fp32", N, F, F, R, rand(E), torch.float32),
            ("paper_knn8_bf16", N, F, F, R, regular(DEG), torch.bfloat16),
        ]
        for name, n, fin, fh, r, graph, dtype in timing_cases[: 1 if quick else None]:
            try:
                summary["timings"][name] = time_case(name, n, fin, fh, r, graph, dev, dtype)
            except Exception as exc:  # timings never decide the exit code
                summary["errors"]["time_" + name] = repr(exc)
                print(f"[time] {name}: exception")
                traceback.print_exc()
            torch.cuda.empty_cache()
    except Exception as exc:
        failed = True
        summary["errors"]["main"] = repr(exc)
        traceback.print_exc()
    summary["ok"] = not failed
    summary["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    print(json.dumps(summary, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
