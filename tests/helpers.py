"""Helpers shared by several test modules (not a test module itself).

Tracing tests (tests/test_trace.py, tests/test_numpy_rules.py): seeded draws of
well-separated values (:func:`rand` and the sample arrays ``x3`` .. ``b234``), a trace's
graph and its node count.  Tape and Function tests (tests/test_tape.py,
tests/test_function.py): ``NASTY``, awkward float64 values.

Draws: ``RNG`` is the generator :func:`rand` draws from.  A test module that draws while
it is collected (parametrize values) calls :func:`restart_draws` first, so that it gets
the same values whichever modules are collected with it; during a test, the
``seeded_draws`` fixture of tests/conftest.py seeds ``RNG`` from the test's id, so each
test draws the same values whatever ran before it.  Read the generator as ``helpers.RNG``
(not ``from helpers import RNG``, which would keep a stale one).
"""
from __future__ import annotations

import zlib

import numpy as np

from jacext import trace as jtrace

RNG = np.random.default_rng(12345)


def rand(*shape, lo=0.2, hi=1.8):
    """Values in [lo, hi], well separated (no ties for max/min, no kinks)."""
    n = int(np.prod(shape, dtype=int))
    base = np.linspace(lo, hi, n) if n else np.zeros(0)
    return RNG.permutation(base).reshape(shape) + RNG.uniform(-0.01, 0.01, shape)


x3 = rand(3)
x4 = rand(4)
x6 = rand(6)
m34 = rand(3, 4)
m33 = rand(3, 3)
b234 = rand(2, 3, 4)
for _sample in (x3, x4, x6, m34, m33, b234):
    _sample.setflags(write=False)   # shared by several modules: none may change them

_AFTER_SAMPLES = RNG.bit_generator.state


def restart_draws():
    """Restart RNG where the sample arrays above left it (a module's collection-time draws)."""
    global RNG
    RNG = np.random.default_rng()
    RNG.bit_generator.state = _AFTER_SAMPLES


def reseed(key):
    """Seed RNG from ``key`` (a test's node id)."""
    global RNG
    RNG = np.random.default_rng(zlib.crc32(key.encode()))


def trace_graph(f, *shapes):
    """(graph, input ids, output ids) of a trace."""
    g, ins, outs, _, _ = jtrace.trace(f, shapes)
    return g, ins, outs


def n_nodes(f, *shapes):
    """Nodes a trace creates, its inputs not counted."""
    g, ins, _ = trace_graph(f, *shapes)
    return len(g) - sum(i.size for i in ins)


#: Awkward float64 values: signed zeros, tiny and huge, infinities, nan.
NASTY = np.array([0.0, -0.0, 1.0, -1.0, 4.0, 1e-300, 1e300, -2.5, np.inf, -np.inf, np.nan, 0.5])
