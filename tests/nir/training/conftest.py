"""Fixtures of the training tests: one intra-op thread, and a tiny data set per test module."""

import sys
from pathlib import Path

import pytest
from training_helpers import _make_data

# test_register builds its data with tests/nir/test_registered_data.py, importable only once
# tests/nir is on sys.path: pytest puts it there when it collects a test of tests/nir itself,
# not when this folder runs alone.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Every training test runs on one intra-op thread (``one_thread`` of tests/conftest.py)."""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return _make_data(tmp_path_factory.mktemp("data"))
