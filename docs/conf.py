"""Sphinx configuration of the pyg_lecc documentation.

Build (offline, warnings are errors)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
    python -m sphinx -W --keep-going -b doctest docs docs/_build/doctest
"""

from __future__ import annotations

import datetime
import os
import re
from pathlib import Path

import pyg_lecc

ROOT = Path(__file__).resolve().parent.parent

# -- Project ---------------------------------------------------------------------------------

project = "pyg_lecc"
author = "the pyg_lecc authors"
copyright = f"{datetime.date.today().year}, {author}"
release = pyg_lecc.__version__
version = ".".join(release.split(".")[:2])

# -- General ---------------------------------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
]

# Only reStructuredText is a source; README.md is for people browsing the folder.
source_suffix = {".rst": "restructuredtext"}
exclude_patterns = ["_build", "README.md", "Thumbs.db", ".DS_Store"]
root_doc = "index"
language = "en"

# -- autodoc / autosummary / napoleon --------------------------------------------------------

# The real packages are installed: nothing is mocked.
autodoc_mock_imports: list[str] = []
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
# api.rst lists names in tables that link to the full entries; it generates no stub files.
autosummary_generate = False

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_include_init_with_doc = False
napoleon_use_rtype = False
# PyG-style "Shapes:" sections render as a titled block.
napoleon_custom_sections = ["Shapes"]

# -- doctest ---------------------------------------------------------------------------------

# Runs before every group of every document: docstring examples pulled in by autodoc use
# these names without importing them.
doctest_global_setup = """
from pathlib import Path
import numpy as np
import torch
from pyg_lecc import *
from pyg_lecc.functional import gather_contract, scatter_outer
from pyg_lecc.graph import *
from pyg_lecc.nir.models import *
from pyg_lecc.nir.hub import *
from pyg_lecc.nir.data import *
from pyg_lecc.nir.metrics import *
from pyg_lecc.nir.inference import *
from pyg_lecc.nir.training import TrainConfig, lr_at
from pyg_lecc.chem.molecules import random_split, smiles_to_graph
from pyg_lecc.chem.mpnn import MPNN
from pyg_lecc.ops import edge_label_aggregate
from pyg_lecc.nir.registration import *
from pyg_lecc.nir.continuation import selection_score
from scipy import ndimage
torch.manual_seed(0)
np.random.seed(0)
"""
# Run ">>>" blocks found anywhere, including those autodoc inserts from docstrings.
doctest_test_doctest_blocks = "default"

# -- HTML ------------------------------------------------------------------------------------

html_theme = "alabaster"
html_title = f"pyg_lecc {release}"
html_theme_options = {
    "description": "Lightweight Edge-Conditioned Convolution for PyTorch Geometric",
    "fixed_sidebar": True,
    "show_relbars": True,
}
html_static_path: list[str] = []
html_show_sourcelink = False

# -- Optional files included when present ----------------------------------------------------

# Files written by other parts of the project (weights card, benchmark results) may or may
# not exist at build time. A page marks the spot with the line ``.. optional-literal:: KEY``;
# the marker becomes a literalinclude when the file exists and a short note otherwise, so the
# build passes (with no warning) either way.
OPTIONAL_FILES = {
    "model-card": (ROOT / "src" / "pyg_lecc" / "weights" / "MODEL_CARD.md", "markdown"),
    "benchmark-results": (ROOT / "benchmarks" / "results" / "results.md", "markdown"),
}


# Pages holding such markers are re-read on every build, so an incremental build notices
# when one of the files appears.
OPTIONAL_PAGES = ["nir_colorization", "benchmarks"]


def _expand_optional(app, docname: str, source: list[str]) -> None:
    text = source[0]
    for key, (path, language) in OPTIONAL_FILES.items():
        marker = f".. optional-literal:: {key}"
        if marker not in text:
            continue
        rel = path.relative_to(ROOT).as_posix()
        if path.is_file():
            # Relative to the page's folder, docs/.
            block = f".. literalinclude:: ../{rel}\n   :language: {language}\n"
        else:
            block = (
                ".. note::\n\n"
                f"   ``{rel}`` does not exist in this checkout yet; its content appears\n"
                "   here once it is committed.\n"
            )
        text = text.replace(marker, block)
    source[0] = text


# ``.. cli-help:: SUBCOMMAND`` becomes the current ``pyg-lecc SUBCOMMAND --help`` text, so the
# documented flags never drift from the parser.
_CLI_HELP = re.compile(r"^\.\. cli-help:: *(\S+) *$", re.MULTILINE)


def _cli_help(command: str) -> str:
    from pyg_lecc.nir.cli import build_parser

    parser = build_parser()
    subparsers = next(
        a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"
    )
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "92"
    try:
        text = subparsers.choices[command].format_help()
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous
    body = "\n".join(f"   {line}" if line else "" for line in text.rstrip().splitlines())
    return f".. code-block:: text\n\n{body}\n"


def _expand_cli_help(app, docname: str, source: list[str]) -> None:
    source[0] = _CLI_HELP.sub(lambda m: _cli_help(m.group(1)), source[0])


def _always_reread(app, env, added, changed, removed) -> list[str]:
    return [page for page in OPTIONAL_PAGES if page in env.found_docs]


# Docstrings refer to package objects by short or module-qualified names (``:class:`LightweightECC```
# inside pyg_lecc.nir.models, ``:func:`pyg_lecc.nir.models.get_model``` for the re-exported
# ``pyg_lecc.get_model``). Where the standard lookup fails, link to the one documented
# pyg_lecc object with that last name component. ``:obj:`` is left alone: PyG-style docstrings
# use it for literals such as :obj:`None` or :obj:`name`.
_LINKABLE_ROLES = {"func", "class", "meth", "data", "exc", "attr", "mod"}


def _resolve_package_reference(app, env, node, contnode):
    if node.get("refdomain") != "py" or node.get("reftype") not in _LINKABLE_ROLES:
        return None
    name = node["reftarget"].rsplit(".", 1)[-1]
    domain = env.get_domain("py")
    matches = [
        full
        for full, obj in domain.objects.items()
        if full.startswith("pyg_lecc.") and full.rsplit(".", 1)[-1] == name and not obj.aliased
    ]
    if len(matches) != 1:
        return None
    from sphinx.util.nodes import make_refnode

    obj = domain.objects[matches[0]]
    return make_refnode(app.builder, node["refdoc"], obj.docname, obj.node_id, contnode, matches[0])


def setup(app):
    app.connect("missing-reference", _resolve_package_reference)
    app.connect("source-read", _expand_optional)
    app.connect("source-read", _expand_cli_help)
    app.connect("env-get-outdated", _always_reread)
    return {"parallel_read_safe": True}
