"""Seeded fuzz of the pointer and index validation of the fused operators
(:func:`~pyg_lecc.ops.edge_aggregate`, :func:`~pyg_lecc.ops.edge_label_aggregate`) on every
CPU backend.

Random small CSR graphs, half of them left valid and half corrupted in one way a kernel
would follow outside its arrays (pointers that wrap around int64, leave ``[0, E]``, decrease,
miss the ends; sources out of range; indices of another dtype). A corrupted case must raise
``ValueError`` or ``IndexError`` naming the argument; a valid one must match a plain
per-edge implementation, forward and backward. The cases of a backend run in a child
process (this file run as a script), which prints each case before running it: a crash of
the interpreter fails the test and names the case.
"""

from __future__ import annotations

import itertools
import subprocess
import sys

import torch

from pyg_lecc.ops.backends import OPS
from pyg_lecc.typing import WITH_NUMBA

SEED, CASES_PER_OP = 24, 30
DELTA, SLOPE = 10.0, 0.2
I64_MIN, I64_MAX = -(2**63), 2**63 - 1


def _leaky(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, x, SLOPE * x)


def _plain(op: str, inputs: list[torch.Tensor | None], rowptr: list[int], col: list[int]):
    # The definition, edge by edge (docs of the two ops), in Python loops over the CSR lists.
    if op == "edge_aggregate":
        x_src, x_dst, y_src, y_dst, b0, V, c, w_omega, b_omega = inputs
    else:
        pre, gamma, V, c, w_omega, b_omega = inputs
    num_dst, (r, Fh) = len(rowptr) - 1, V.shape[1:]
    Q, P = [V.new_zeros(r, Fh)] * num_dst, [V.new_zeros(r)] * num_dst
    for i in range(num_dst):
        for e in range(rowptr[i], rowptr[i + 1]):
            j = col[e]
            if op == "edge_aggregate":
                z = _leaky(y_src[j] - y_dst[i] + b0)
                g = torch.exp(-(x_src[j] - x_dst[i]).pow(2).sum() / DELTA)
            else:
                z, g = _leaky(pre[e]), 1.0 if gamma is None else gamma[e]
            a = g * (w_omega @ z + b_omega) * (V[j] @ z + c[j])
            Q[i], P[i] = Q[i] + torch.outer(a, z), P[i] + a
    return torch.stack(Q), torch.stack(P)


KINDS = ("wrap", "last", "first", "huge", "negative", "decrease", "rowptr_dtype", "col_high")
KINDS += ("col_low", "col_dtype")


def _corrupt(kind: str, rowptr: list[int], col: list[int], num_src: int, gen: torch.Generator):
    # A corruption of the given kind that is invalid whatever the graph: (kind, rowptr, col).
    E, n = len(col), len(rowptr)

    def pick(hi: int) -> int:
        return int(torch.randint(hi, (), generator=gen))

    rowptr, col = list(rowptr), list(col)
    if (kind.startswith("col_") and E == 0) or (kind == "decrease" and n < 3):
        kind = "wrap"  # nothing of that kind to corrupt in this graph
    if kind == "last":
        rowptr[-1] = E + 1 + pick(3) if E == 0 or pick(2) else E - 1
    elif kind == "first":
        rowptr[0] = 1 + pick(E + 2)
    elif kind == "huge":  # a value past E (and near the top of int64)
        rowptr[pick(n)] = [E + 1, 2**40, I64_MAX][pick(3)]
    elif kind == "negative":
        rowptr[pick(n)] = [-1, -(2**40), I64_MIN][pick(3)]
    elif kind == "wrap":  # every step of diff() positive through int64 overflow
        rowptr = [0, I64_MAX, I64_MIN, -1, 0, *rowptr[1:]]
    elif kind == "decrease":
        i = 1 + pick(n - 2)
        rowptr[i] = rowptr[i + 1] + 1 + pick(3)
    elif kind == "col_high":
        col[pick(E)] = [num_src, num_src + 7, 2**62, I64_MAX][pick(4)]
    elif kind == "col_low":
        col[pick(E)] = [-1, -num_src, I64_MIN][pick(3)]
    return kind, rowptr, col


def _case(op: str, gen: torch.Generator, kind: str):
    num_src, num_dst, Fin, Fh, r = (1 + torch.randint(7, (5,), generator=gen)).tolist()
    degrees = torch.randint(4, (num_dst,), generator=gen)
    rowptr = [0, *torch.cumsum(degrees, 0).tolist()]
    col = torch.randint(num_src, (rowptr[-1],), generator=gen).tolist()
    if kind != "valid":
        kind, rowptr, col = _corrupt(kind, rowptr, col, num_src, gen)
    num_dst, E = len(rowptr) - 1, len(col)  # a wrap-around corruption adds targets

    def rand(*shape: int) -> torch.Tensor:
        return (0.5 * torch.randn(shape, generator=gen, dtype=torch.float64)).requires_grad_()

    if op == "edge_aggregate":
        inputs = [rand(num_src, Fin), rand(num_dst, Fin), rand(num_src, Fh), rand(num_dst, Fh)]
        inputs += [rand(Fh)]
    else:
        inputs = [rand(E, Fh), rand(E) if int(torch.randint(2, (), generator=gen)) else None]
    inputs += [rand(num_src, r, Fh), rand(num_src, r), rand(r, Fh), rand(r)]
    rowptr_t = torch.tensor(rowptr, dtype=torch.int32 if kind == "rowptr_dtype" else torch.long)
    col_t = torch.tensor(col, dtype=torch.int32 if kind == "col_dtype" else torch.long)
    return kind, inputs, rowptr_t, col_t


def _run_case(op: str, kind: str, inputs, rowptr: torch.Tensor, col: torch.Tensor) -> None:
    from pyg_lecc.ops import edge_aggregate, edge_label_aggregate

    fn, scalars = (
        (edge_aggregate, (DELTA, SLOPE))
        if op == "edge_aggregate"
        else (edge_label_aggregate, (SLOPE,))
    )
    if kind != "valid":
        argument = "col" if kind.startswith("col") else "rowptr"
        try:
            fn(*inputs, rowptr, col, *scalars)
        except (ValueError, IndexError) as err:
            assert f"'{argument}'" in str(err), f"{kind}: the error does not name it: {err}"
            return
        raise AssertionError(f"{kind}: rowptr={rowptr.tolist()} col={col.tolist()} was accepted")
    Q, P = fn(*inputs, rowptr, col, *scalars)
    Q_ref, P_ref = _plain(op, inputs, rowptr.tolist(), col.tolist())
    torch.testing.assert_close((Q, P), (Q_ref, P_ref), rtol=1e-10, atol=1e-10)
    # Backward: the gradients of one random weighting of (Q, P); the zero term puts every
    # input in both graphs, also when there are no edges.
    leaves = [t for t in inputs if t is not None]
    wQ, wP = torch.randn(Q.shape, dtype=Q.dtype), torch.randn(P.shape, dtype=P.dtype)
    anchor = 0 * sum(map(torch.sum, leaves))
    grads, grads_ref = (
        torch.autograd.grad((wQ * q).sum() + (wP * p).sum() + anchor, leaves, retain_graph=True)
        for q, p in ((Q, P), (Q_ref, P_ref))
    )
    torch.testing.assert_close(grads, grads_ref, rtol=1e-10, atol=1e-10)


BACKENDS = ("reference", "numba") if WITH_NUMBA else ("reference",)


def _main() -> None:
    from pyg_lecc.ops import backend_for, use_reference

    for backend, op in itertools.product(BACKENDS, OPS):
        with use_reference(backend == "reference"):
            assert backend_for("cpu", op) == backend, (op, backend_for("cpu", op))
            gen = torch.Generator().manual_seed(SEED)
            for i in range(CASES_PER_OP):  # every other case valid, the others of each kind
                kind = "valid" if i % 2 == 0 else KINDS[i // 2 % len(KINDS)]
                kind, inputs, rowptr, col = _case(op, gen, kind)
                print(f"{backend} {op} case {i} ({kind}): rowptr={rowptr.tolist()}", end=" ")
                print(f"col={col.tolist()}", flush=True)  # before the case: a crash names it
                _run_case(op, kind, inputs, rowptr, col)
    print("done")


def test_fuzz_pointer_and_index_validation():
    # One child for all cases: its start (importing torch) is most of the test's time.
    result = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=600)
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and lines[-1:] == ["done"], (
        f"exit code {result.returncode} after {lines[-1:] or 'no case'}\n{result.stderr[-3000:]}"
    )
    assert len(lines) == len(BACKENDS) * len(OPS) * CASES_PER_OP + 1


if __name__ == "__main__":
    _main()
