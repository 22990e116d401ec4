"""Threads sharing one Function (jacext/_function.pyx, jacext/_tape.pyx, jacext/plan.py).

Many threads hammer one fresh Function at once -- single points in every mode, out=,
value_and_jacobian, values, jvp/vjp, batches dense and sparse, sparse single points --
while its lazy state is built under them: plans, patterns, colourings, cones and the
Jacobian tapes (the batches pass their thresholds during the run).  Every result must
equal the serial one computed beforehand on a Function of its own (bit for bit; zeros of
either sign compare equal, as the Jacobian tape may differ from the sweeps there), and
nothing may crash.  With the GIL the threads interleave wherever it is released (the
sweeps release it); on free-threaded CPython (3.14t, the wheel workflow) they run at once.

JACEXT_THREAD_REPEATS (default 2) fresh Functions per case; the acceptance run of the
free-threading work used 100, also under the sanitizer build:

    JACEXT_THREAD_REPEATS=100 python -m pytest tests/test_threads.py
    JACEXT_THREAD_REPEATS=100 bash .ci/sanitize tests/test_threads.py
"""
from __future__ import annotations

import os
import sys
import threading

import numpy as np
import pytest

import jacext as jx

REPEATS = int(os.environ.get("JACEXT_THREAD_REPEATS", "2"))
N_THREADS = 8
ROUNDS = 6              # each thread's passes over its operations, in its own order


def _arm_like(q):
    """Seven joints' worth of sines and cosines in products (a small dense Jacobian)."""
    c, s = np.cos(q), np.sin(q)
    x = c[0] * (0.3 + 0.2 * c[1]) - s[0] * s[2] * 0.1
    y = s[0] * (0.3 + 0.2 * c[1]) + c[0] * s[3] * 0.1
    z = 0.5 + 0.2 * s[1] + 0.1 * c[4] * c[5] - 0.05 * s[6]
    return np.stack([x, y, z, x * y, np.hypot(y, z), np.arctan2(x, z)])


def _banded(x):
    """Broyden-like, 60 inputs: a sparse Jacobian that dense auto compresses."""
    left = np.concatenate([[0.0], x[:-1]])
    right = np.concatenate([x[1:], [0.0]])
    return (3 - 2 * x) * x - left - 2 * right + 1 + np.where(x > 0, np.sqrt(np.abs(x)), 0.0)


CASES = {"arm_like": (_arm_like, 7), "banded": (_banded, 60)}


def _operations(n, rng):
    """(name, call) pairs; each call takes the Function and gives arrays to compare."""
    x = rng.uniform(-1.0, 1.0, n)
    x0 = x.copy()
    x0[::5] = 0.0                               # where's branch and sqrt's infinite slope
    X = rng.uniform(-1.0, 1.0, (300, n))        # batches pass the Jacobian-tape thresholds
    X[7, :3] = [0.0, np.nan, np.inf]
    v = rng.standard_normal(n)

    def out_call(F, p, mode):
        J = np.empty(F.out_shapes[0] + F.arg_shapes[0])
        assert F.jacobian(p, mode=mode, out=J) is J
        return J

    ops = []
    for p_name, p in (("x", x), ("x0", x0)):
        ops += [(f"value {p_name}", lambda F, p=p: F(p))]
        for mode in ("auto", "forward", "reverse"):
            ops += [(f"J {mode} {p_name}", lambda F, p=p, m=mode: F.jacobian(p, mode=m)),
                    (f"out {mode} {p_name}", lambda F, p=p, m=mode: out_call(F, p, m)),
                    (f"value_and_J {mode} {p_name}",
                     lambda F, p=p, m=mode: np.concatenate(
                         [np.ravel(a) for a in F.value_and_jacobian(p, mode=m)])),
                    (f"sparse {mode} {p_name}",
                     lambda F, p=p, m=mode: F.jacobian(p, sparse=True, mode=m).toarray())]
        ops += [(f"jvp {p_name}", lambda F, p=p: np.concatenate(F.jvp(p, v))),
                (f"vjp {p_name}",
                 lambda F, p=p: np.concatenate(F.vjp(p, np.ones(F.out_shapes[0]))))]
    for mode in ("auto", "forward", "reverse"):
        ops += [(f"batch {mode}", lambda F, m=mode: F.jacobian(X, mode=m, threads=2)),
                (f"batch sparse {mode}",
                 lambda F, m=mode: F.jacobian(X, sparse=True, mode=m).values),
                (f"batch value_and_J {mode}",
                 lambda F, m=mode: np.concatenate(
                     [np.ravel(a) for a in F.value_and_jacobian(X[:70], mode=m)]))]
    ops += [("batch values", lambda F: F(X))]
    return ops


def _hammer(F, ops, reference, seed):
    """N_THREADS threads, started at once, each running every operation ROUNDS times in an
    order of its own; returns the failures (name and what went wrong)."""
    failures = []
    barrier = threading.Barrier(N_THREADS)

    def work(k):
        order = np.random.default_rng(seed + k)
        try:
            barrier.wait()
            for _ in range(ROUNDS):
                for i in order.permutation(len(ops)):
                    name, call = ops[i]
                    with np.errstate(all="ignore"):
                        got = call(F)
                    try:
                        np.testing.assert_array_equal(got, reference[name])
                    except AssertionError as e:
                        failures.append((name, str(e)[:500]))
        except Exception as e:          # anything raised in a thread is a failure too
            failures.append(("thread", repr(e)))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(N_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures


@pytest.mark.parametrize("name", sorted(CASES))
def test_threads_hammering_one_function_get_the_serial_results(name):
    f, n = CASES[name]
    for rep in range(REPEATS):
        rng = np.random.default_rng(1000 * rep + n)
        ops = _operations(n, rng)
        serial = jx.compile(f, np.zeros(n))
        with np.errstate(all="ignore"):
            reference = {op_name: call(serial) for op_name, call in ops}
        F = jx.compile(f, np.zeros(n))          # fresh: its lazy state is built under fire
        failures = _hammer(F, ops, reference, seed=rep)
        assert not failures, f"{name}, repetition {rep}: {failures[:3]}"


def test_many_threads_on_the_single_point_fast_path():
    """The fast paths (one float64 point, out=) from many threads: each call gets work
    memory of its own (the Tape's, or a fresh one when another thread holds it)."""
    F = jx.compile(_arm_like, np.zeros(7))
    points = np.random.default_rng(3).uniform(-1.0, 1.0, (N_THREADS, 7))
    want = [F.jacobian(p, mode="reverse") for p in points]
    failures = []
    barrier = threading.Barrier(N_THREADS)

    def work(k):
        J = np.empty((6, 7))
        barrier.wait()
        for _ in range(3000):
            F.jacobian(points[k], mode="reverse", out=J)
            if not np.array_equal(J, want[k]):
                failures.append(k)
                return

    threads = [threading.Thread(target=work, args=(k,)) for k in range(N_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


@pytest.mark.skipif(not hasattr(sys, "_is_gil_enabled"), reason="CPython 3.13+ only")
def test_free_threaded_python_keeps_the_gil_off():
    """On a free-threaded interpreter, importing jacext (and using it) leaves the GIL
    disabled: every extension declares itself free-threading compatible."""
    if sysconfig_gil_disabled():
        F = jx.compile(_arm_like, np.zeros(7))
        F.jacobian(np.zeros((3, 7)))
        assert not sys._is_gil_enabled()
    else:
        assert sys._is_gil_enabled()


def sysconfig_gil_disabled():
    import sysconfig

    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
