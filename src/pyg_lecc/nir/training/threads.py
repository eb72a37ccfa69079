"""Thread pools of a training process."""

from __future__ import annotations

import os
import sys

__all__ = ["limit_numba_threads"]


def limit_numba_threads(threads: int) -> None:
    r"""Sizes the thread pool of Numba (the CPU kernels) to ``threads`` for this process.

    Numba starts ``NUMBA_NUM_THREADS`` workers (one per core by default) at its first
    parallel kernel, whatever :func:`numba.set_num_threads` allows later, and with its OpenMP
    layer an idle worker spins at a barrier: with one training thread on two cores it took
    about 90 % of the second core. The variable is read when Numba is imported, and importing
    ``torch_geometric`` imports Numba, so a process that has imported this package lowers the
    value Numba read instead, which works until the pool starts. No effect once it runs.

    Args:
        threads (int): The pool size, at least 1 (at most Numba's own limit is used).

    Example:
        >>> from pyg_lecc.nir.training import limit_numba_threads
        >>> limit_numba_threads(1)  # doctest: +SKIP
    """
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    if parallel is None:
        os.environ["NUMBA_NUM_THREADS"] = str(threads)
        return
    if not parallel._is_initialized:
        numba_config = sys.modules["numba"].config
        threads = min(threads, numba_config.NUMBA_NUM_THREADS)
        numba_config.NUMBA_NUM_THREADS = parallel.NUM_THREADS = threads
