import itertools

import pytest
import torch

import pyg_lecc.ops.reference as reference
from pyg_lecc.ops import edge_aggregate, edge_label_aggregate
from pyg_lecc.ops.checks import check_index_values, check_knn_window, fewest_candidates
from pyg_lecc.typing import WITH_NUMBA

SLOPE, DELTA = 0.2, 10.0


def _forward_entries():
    entries = [("reference", reference.edge_aggregate_forward), ("dispatcher", edge_aggregate)]
    if WITH_NUMBA:
        from pyg_lecc.ops import cpu

        entries.append(("numba", cpu.edge_aggregate_forward))
    return entries


def _backward_entries():
    entries = [("reference", reference.edge_aggregate_backward)]
    if WITH_NUMBA:
        from pyg_lecc.ops import cpu

        entries.append(("numba", cpu.edge_aggregate_backward))
    return entries


def _inputs(num_src=6, num_dst=3, Fin=4, Fh=5, r=2):
    gen = torch.Generator().manual_seed(0)
    shapes = [(num_src, Fin), (num_dst, Fin), (num_src, Fh), (num_dst, Fh), (Fh,)]
    shapes += [(num_src, r, Fh), (num_src, r), (r, Fh), (r,)]
    floats = [torch.randn(s, generator=gen) for s in shapes]
    rowptr, col = torch.tensor([0, 1, 3, 4]), torch.tensor([0, 5, 2, 1])
    return floats, rowptr, col


# (description, what to change, exception, message): each would make a kernel read or write
# outside its arrays (or silently misassign edges) if it were not refused.
BAD = [
    ("source index past the end", dict(col=torch.tensor([0, 5, 9, 1])), IndexError,
     r"'col' must lie in \[0, 5\], found values in \[0, 9\]"),
    ("huge source index", dict(col=torch.tensor([0, 5, 5_000_000, 1])), IndexError, "'col'"),
    ("negative source index", dict(col=torch.tensor([0, -1, 2, 1])), IndexError, "'col'"),
    ("pointers past the edges", dict(rowptr=torch.tensor([0, 1, 3, 40])), ValueError,
     "'rowptr' must rise from 0 to the number of edges"),
    ("decreasing pointers", dict(rowptr=torch.tensor([0, 3, 1, 4])), ValueError, "'rowptr'"),
    ("pointers not from 0", dict(rowptr=torch.tensor([1, 1, 3, 4])), ValueError, "'rowptr'"),
    ("more targets than x_dst rows", dict(rowptr=torch.tensor([0, 1, 3, 4, 4])), ValueError,
     r"'x_dst' must have shape \(4, 4\)"),
    ("int32 indices", dict(col=torch.tensor([0, 5, 2, 1], dtype=torch.int32)), ValueError,
     "1-D int64"),
    ("V with fewer rows", dict(V=torch.randn(5, 2, 5)), ValueError, r"'V' must have shape"),
    ("y_src of another width", dict(y_src=torch.randn(6, 7)), ValueError, "'y_src'"),
    ("empty rowptr", dict(rowptr=torch.tensor([], dtype=torch.long)), ValueError, "rowptr"),
    # Monotone only through int64 wrap-around: every step of rowptr.diff() is positive.
    ("pointers wrapping around", dict(rowptr=torch.tensor([0, 2**63 - 1, -(2**63), -1, 0, 4]),
     x_dst=torch.randn(5, 4), y_dst=torch.randn(5, 5)), ValueError,
     r"'rowptr' must rise from 0 .* values in \[-9223372036854775808, 9223372036854775807\]"),
]  # fmt: skip
NAMES = ("x_src", "x_dst", "y_src", "y_dst", "b0", "V", "c", "w_omega", "b_omega")


def _bad_inputs(change: dict):
    floats, rowptr, col = _inputs()
    floats = [change.get(n, t) for n, t in zip(NAMES, floats, strict=True)]
    return floats, change.get("rowptr", rowptr), change.get("col", col)


@pytest.mark.parametrize("entry", _forward_entries(), ids=lambda e: e[0])
@pytest.mark.parametrize("case", BAD, ids=lambda c: c[0])
def test_forward_entries_refuse_inputs_they_would_read_outside_of(entry, case):
    _, change, error, match = case
    floats, rowptr, col = _bad_inputs(change)
    with pytest.raises(error, match=match):
        entry[1](*floats, rowptr, col, DELTA, SLOPE)


@pytest.mark.parametrize("entry", _backward_entries(), ids=lambda e: e[0])
@pytest.mark.parametrize("case", BAD, ids=lambda c: c[0])
def test_backward_entries_refuse_inputs_they_would_read_outside_of(entry, case):
    _, change, error, match = case
    floats, rowptr, col = _bad_inputs(change)
    num_dst = max(rowptr.numel() - 1, 0)  # output gradients that fit the pointers
    grads = [torch.randn(num_dst, 2, 5), torch.randn(num_dst, 2)]
    with pytest.raises(error, match=match):
        entry[1](*grads, *floats, rowptr, col, DELTA, SLOPE)


@pytest.mark.parametrize("entry", _backward_entries(), ids=lambda e: e[0])
def test_backward_entries_refuse_output_gradients_of_another_shape(entry):
    floats, rowptr, col = _inputs()
    with pytest.raises(ValueError, match=r"'grad_Q' must have shape \(3, 2, 5\)"):
        entry[1](torch.randn(2, 2, 5), torch.randn(3, 2), *floats, rowptr, col, DELTA, SLOPE)
    with pytest.raises(ValueError, match=r"'grad_P' must have shape \(3, 2\)"):
        entry[1](torch.randn(3, 2, 5), torch.randn(9, 2), *floats, rowptr, col, DELTA, SLOPE)


@pytest.mark.parametrize("entry", _forward_entries(), ids=lambda e: e[0])
def test_valid_inputs_pass_every_entry(entry):
    floats, rowptr, col = _inputs()
    Q, P = entry[1](*floats, rowptr, col, DELTA, SLOPE)
    assert Q.shape == (3, 2, 5) and P.shape == (3, 2)


@pytest.mark.parametrize(
    "case", [c for c in BAD if c[2] is IndexError or "rowptr'" in c[3]], ids=lambda c: c[0]
)
def test_device_side_check_without_host_sync(case):
    # The path CUDA inputs take: one asynchronous assertion (raised at once on CPU tensors).
    _, change, _, _ = case
    floats, rowptr, col = _bad_inputs(change)
    with pytest.raises(RuntimeError, match="do not index the node tensors"):
        check_index_values(rowptr, col, floats[0].size(0), on_host=False)
    good_floats, good_rowptr, good_col = _inputs()
    check_index_values(good_rowptr, good_col, good_floats[0].size(0), on_host=False)


@pytest.mark.parametrize("window", [(1, 1), (3, 4), (5, 5), (2, 9)])
@pytest.mark.parametrize("radius", [0, 1, 2])
def test_fewest_candidates_counts_every_position(window, radius):
    Sh, Sw = window
    # Brute force: every pixel of a window-sized image (each one's window is the image).
    counts = [
        sum(max(abs(y - qy), abs(x - qx)) > radius for y in range(Sh) for x in range(Sw))
        for qy, qx in itertools.product(range(Sh), range(Sw))
    ]
    assert fewest_candidates(window, radius) == min(counts)


@pytest.mark.skipif(not WITH_NUMBA, reason="numba is not installed")
@pytest.mark.parametrize(
    "k,radius,window,match",
    [
        (4, 1, (9, 6), "must lie inside the 8x6 image"),
        (4, 1, (0, 6), "must lie inside"),
        (4, 1, (6, 7), "must lie inside"),
        (20, 1, (4, 4), "cannot choose k=20 neighbours"),
        (0, 1, (4, 4), "'k' must be a positive integer"),
        (2, -1, (4, 4), "'radius' must be an integer >= 0"),
    ],
)
def test_knn_kernel_entry_refuses_windows_outside_the_image(k, radius, window, match):
    from pyg_lecc.ops.knn import knn_in_windows

    with pytest.raises(ValueError, match=match):
        knn_in_windows(torch.randn(1, 3, 8, 6), k, radius, window)


def _label_entries():
    entries = [
        ("reference", reference.edge_label_aggregate_forward),
        ("dispatcher", edge_label_aggregate),
    ]
    if WITH_NUMBA:
        from pyg_lecc.ops import cpu

        entries.append(("numba", cpu.edge_label_aggregate_forward))
    return entries


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.complex64])
@pytest.mark.parametrize(
    "entry",
    [(f"{name} forward", fn, False) for name, fn in _forward_entries()]
    + [(f"{name} backward", fn, True) for name, fn in _backward_entries()],
    ids=lambda e: e[0],
)
def test_edge_aggregate_refuses_data_that_is_not_floating_point(entry, dtype):
    _, fn, backward = entry
    floats, rowptr, col = _inputs()
    floats = [(10 * t).to(dtype) for t in floats]
    grads = [torch.ones(3, 2, 5, dtype=dtype), torch.ones(3, 2, dtype=dtype)] if backward else []
    with pytest.raises(ValueError, match=rf"'x_src' must be a floating-point .*{dtype}"):
        fn(*grads, *floats, rowptr, col, DELTA, SLOPE)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("entry", _label_entries(), ids=lambda e: e[0])
def test_edge_label_aggregate_refuses_data_that_is_not_floating_point(entry, dtype):
    (_, _, _, _, _, V, c, w_omega, b_omega), rowptr, col = _inputs()
    pre, gamma = torch.randn(col.numel(), 5), torch.rand(col.numel())
    floats = [(10 * t).to(dtype) for t in (pre, gamma, V, c, w_omega, b_omega)]
    with pytest.raises(ValueError, match=rf"'pre' must be a floating-point .*{dtype}"):
        entry[1](*floats, rowptr, col, SLOPE)


@pytest.mark.parametrize("tile", [-1, 0, 2.5, True, "16"])
def test_knn_window_check_refuses_tiles_that_are_not_positive_integers(tile):
    with pytest.raises(ValueError, match=rf"'tile' must be a positive integer, got {tile!r}"):
        check_knn_window((1, 3, 8, 6), 4, 1, (4, 4), tile)
    check_knn_window((1, 3, 8, 6), 4, 1, (4, 4), 1)
    check_knn_window((1, 3, 8, 6), 4, 1, (4, 4), 1000)  # larger than the image: one tile


@pytest.mark.skipif(not WITH_NUMBA, reason="numba is not installed")
@pytest.mark.parametrize("tile", [-1, 0])
def test_knn_kernel_entry_refuses_tiles_below_one(tile):
    from pyg_lecc.ops.knn import knn_in_windows

    with pytest.raises(ValueError, match=rf"'tile' must be a positive integer, got {tile}"):
        knn_in_windows(torch.randn(1, 3, 10, 10), 4, 1, (5, 5), tile=tile)
