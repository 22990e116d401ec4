"""Shared test setup (no module of its own): tests/ importable (tests/helpers.py, tables of
other test modules) and fixtures that keep tests independent."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)


@pytest.fixture
def rng():
    """A fresh, seeded generator per test."""
    return np.random.default_rng(12345)


@pytest.fixture
def fresh_cache():
    """jx.jacobian's compile cache, emptied before and after the test."""
    import jacext.api as api

    api.clear_cache()
    yield api
    api.clear_cache()


@pytest.fixture
def seeded_draws(request):
    """tests/helpers.py's draws (``helpers.rand``, ``helpers.RNG``) seeded from the test's
    id: the same values whatever ran before it."""
    import helpers

    helpers.reseed(request.node.nodeid)
