"""Module paths from before the split into :mod:`pyg_lecc.nir` and :mod:`pyg_lecc.chem`
(release 0.1.0), kept for one release: importing one warns and returns the module at its new
path (the same module object, so classes and pickles keep their identity)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

MOVED = {
    "pyg_lecc.cli": "pyg_lecc.nir.cli",
    "pyg_lecc.continuation": "pyg_lecc.nir.continuation",
    "pyg_lecc.data": "pyg_lecc.nir.data",
    "pyg_lecc.inference": "pyg_lecc.nir.inference",
    "pyg_lecc.metrics": "pyg_lecc.nir.metrics",
    "pyg_lecc.models": "pyg_lecc.nir.models",
    "pyg_lecc.registration": "pyg_lecc.nir.registration",
    "pyg_lecc.training": "pyg_lecc.nir.training",
    "pyg_lecc.weight_files": "pyg_lecc.io.weight_files",
    "pyg_lecc.molecules": "pyg_lecc.chem.molecules",
    "pyg_lecc.mpnn": "pyg_lecc.chem.mpnn",
}
"""Old module path -> new one; submodules follow (``pyg_lecc.training.config`` ->
``pyg_lecc.nir.training.config``)."""


def new_name(fullname: str) -> str | None:
    """The current path of a module imported by its pre-split path, or ``None``."""
    for old, new in MOVED.items():
        if fullname == old or fullname.startswith(old + "."):
            return new + fullname[len(old) :]
    return None


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if new_name(fullname) is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = new_name(spec.name)
        warnings.warn(
            f"'{spec.name}' moved to '{new}'; the old path is removed in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        pass  # the module at the new path is already executed


def install() -> None:
    """Puts the finder of old paths first in :data:`sys.meta_path` (once), before the path
    finder could load a second copy of a submodule under its old name."""
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Alias())
