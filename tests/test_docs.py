"""The examples in the docstrings of the public modules run as doctests, and every public
name of ``jacext`` (and of its optional modules) has a docstring."""
from __future__ import annotations

import doctest
import importlib

import pytest

# module -> the optional package its examples need (skipped where it is not installed)
MODULES = {
    "jacext": None,
    "jacext.api": None,
    "jacext.errors": None,
    "jacext.trace": None,
    "jacext.numpy_rules": None,
    "jacext._function": None,
    "jacext.transforms": None,
    "jacext.pytree": None,
    "jacext.testing": None,
    "jacext.sparse": None,
    "jacext.torch": "torch",
    "jacext.dask": "dask.array",
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_doctests(name):
    if MODULES[name] is not None:
        pytest.importorskip(MODULES[name])
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def _public(module):
    return [getattr(module, n) for n in getattr(module, "__all__", [])]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_public_names_have_docstrings(name):
    if MODULES[name] is not None:
        pytest.importorskip(MODULES[name])
    module = importlib.import_module(name)
    assert module.__doc__
    missing = [getattr(obj, "__name__", repr(obj)) for obj in _public(module)
               if not isinstance(obj, str) and not getattr(obj, "__doc__", None)]
    assert missing == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_public_names_have_an_example(name):
    # the examples are what test_doctests runs: every public function and class shows one
    if MODULES[name] is not None:
        pytest.importorskip(MODULES[name])
    module = importlib.import_module(name)
    missing = [getattr(obj, "__name__", repr(obj)) for obj in _public(module)
               if callable(obj) and ">>>" not in (obj.__doc__ or "")]
    assert missing == []
