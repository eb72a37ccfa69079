"""Fixtures of the training tests: one intra-op thread, and a tiny data set per test module."""

from pathlib import Path

import pytest
from training_helpers import _make_data


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Every training test runs on one intra-op thread (``one_thread`` of tests/conftest.py)."""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return _make_data(tmp_path_factory.mktemp("data"))
