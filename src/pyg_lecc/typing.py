"""Optional dependencies, probed once for the whole package."""

from __future__ import annotations

import importlib.util

WITH_TORCH_CLUSTER = importlib.util.find_spec("torch_cluster") is not None
WITH_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
WITH_NUMBA = importlib.util.find_spec("numba") is not None
WITH_RDKIT = importlib.util.find_spec("rdkit") is not None
WITH_DATAMOL = importlib.util.find_spec("datamol") is not None


def require(name: str, available: bool, extra: str) -> None:
    """Raises an :class:`ImportError` telling how to install an optional dependency."""
    if not available:
        raise ImportError(
            f"'{name}' is not installed; install it with `pip install pyg-lecc[{extra}]`"
            + (" --no-build-isolation" if extra == "cluster" else "")
        )
