"""The layout's size bars (README "Layout"): no module of jacext/ over 800 lines, and the
Function class (jacext/_function.pyx) under 600, so that each stays readable top-down.
Reads the source files; skipped where the tests run against an installed wheel without
its sources."""
from __future__ import annotations

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "jacext")
MAX_MODULE_LINES = 800
MAX_FUNCTION_CLASS_LINES = 600


def _sources():
    if not os.path.isfile(os.path.join(PACKAGE, "_function.pyx")):
        pytest.skip("the package's sources are not beside the tests")
    return sorted(f for f in os.listdir(PACKAGE) if f.endswith((".py", ".pyx", ".pxd")))


def test_no_module_is_over_800_lines():
    sizes = {}
    for name in _sources():
        with open(os.path.join(PACKAGE, name)) as fh:
            sizes[name] = sum(1 for _ in fh)
    assert {k: v for k, v in sizes.items() if v > MAX_MODULE_LINES} == {}


def test_the_function_class_is_under_600_lines():
    _sources()
    with open(os.path.join(PACKAGE, "_function.pyx")) as fh:
        lines = fh.read().split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("cdef class Function"))
    end = next(i for i in range(start + 1, len(lines))
               if lines[i] and not lines[i][0].isspace() and not lines[i].startswith("#"))
    body = lines[start:end]
    while body and not body[-1].strip():
        body.pop()
    assert len(body) < MAX_FUNCTION_CLASS_LINES
    assert re.search(r"def jacobian\(", "\n".join(body))    # the class it measures
