import importlib
import subprocess
import sys

import pytest

import pyg_lecc
from pyg_lecc._moved import MOVED, new_name


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_path_warns_and_is_the_module_at_its_new_path(old):
    with pytest.warns(DeprecationWarning, match=f"'{old}' moved to '{MOVED[old]}'"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED[old])
    assert sys.modules[old] is module


def test_submodules_of_an_old_path_follow_it(monkeypatch):
    monkeypatch.delitem(sys.modules, "pyg_lecc.training.config", raising=False)
    with pytest.warns(DeprecationWarning, match="pyg_lecc.nir.training.config"):
        config = importlib.import_module("pyg_lecc.training.config")
    # The path finder must not have loaded a second copy under the old name.
    assert config is importlib.import_module("pyg_lecc.nir.training.config")
    assert new_name("pyg_lecc.training.config") == "pyg_lecc.nir.training.config"
    assert new_name("pyg_lecc.trainingx") is None
    assert new_name("pyg_lecc.conv") is None


def test_the_nir_names_of_the_top_level_are_imported_on_first_use():
    # A fresh interpreter: importing the operator library does not load the imaging stack.
    code = (
        "import sys, pyg_lecc\n"
        "assert 'pyg_lecc.nir' not in sys.modules and 'skimage' not in sys.modules\n"
        "from pyg_lecc import NIRGNN\n"
        "assert NIRGNN.__module__ == 'pyg_lecc.nir.models'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(AttributeError, match="has no attribute 'colorise'"):
        pyg_lecc.colorise  # noqa: B018
