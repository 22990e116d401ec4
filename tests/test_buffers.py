"""Arrays a traced function makes itself (jacext/buffers.py): NumPy's constructors while
tracing, assignment into them with NumPy's semantics, and lists that mix numbers and
traced scalars.  Values are compared with the NumPy code's, Jacobians with central
differences of it (jacext.testing.check_jacobian)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import jacext as jx
from jacext.testing import check_jacobian

X3 = np.array([0.7, -1.3, 2.1])
_np_zeros = np.zeros                     # bound before any trace: NumPy's own


def padded_laplacian(x):
    xx = np.zeros(x.size + 2)
    xx[1:-1] = x
    xx[0] = x[-1]
    return xx[2:] - 2 * xx[1:-1] + xx[:-2]


def rows_of_empty(z):
    rho = np.empty((3, z.size))
    rho[0] = z
    rho[1] = z ** 2
    rho[2] = 1.5
    return rho * z[0]


def element_by_element(z):
    a = np.zeros(3)
    a[0] = z[0]
    a[2] = z[1] * z[2]
    return a


def masks_and_increments(x):
    out = np.ones((2, 3))
    out[0][np.array([True, False, True])] = x[:2] * x[2]
    out[1, [2, 0]] = np.sin(x[:2])
    out[1, 1] += x[1]
    out[:, 1:] *= x[0]
    out[0] -= np.full(3, x[2])
    return out


def full_and_like(x):
    c = np.full((2, 3), 0.5)
    c[1] = x
    d = np.zeros_like(np.eye(3)) + np.ones_like(X3)
    d[np.arange(3), np.arange(3)] = x ** 2
    e = np.empty_like(X3)
    e[:] = np.exp(x)
    return c.sum(axis=0) + d @ x + e


def mixed_lists(x):
    a = np.asarray([0.0, x[0]] + list(x[1::2]))
    b = np.array([x[1], 2.0, x[2]])
    c = np.stack([1.0, x[0], x[1] * x[2]])
    return a * b * c


def integer_buffers_stay_numpy(x):
    idx = np.zeros(2, dtype=int)
    idx[1] = 2
    w = np.ones(3, dtype=np.float32)
    return x[idx] * float(w[0])


@pytest.mark.parametrize("f", [padded_laplacian, rows_of_empty, element_by_element,
                               masks_and_increments, full_and_like, mixed_lists,
                               integer_buffers_stay_numpy])
def test_buffers_trace_with_numpy_semantics(f):
    F = jx.compile(f, X3)
    assert type(F) is jx.Function       # no control flow: one plain tape
    check_jacobian(f, X3, F=F)
    y = X3[::-1] * 1.7
    np.testing.assert_array_equal(F(y), f(y))


def test_traced_fill_value():
    F = jx.compile(lambda x: np.full(3, x[0]) * x, X3)
    np.testing.assert_allclose(F.jacobian(X3), np.diag(np.full(3, X3[0])) +
                               np.outer(X3, [1.0, 0, 0]), rtol=1e-15)


def test_constructors_are_numpy_outside_traces_and_in_other_threads():
    originals = (np.zeros, np.ones, np.empty, np.full, np.asarray, np.array)
    seen = []
    started, go = threading.Event(), threading.Event()

    def other():
        started.set()
        go.wait(5)
        seen.append(type(np.zeros(3)))

    t = threading.Thread(target=other)
    t.start()

    def f(x):
        started.wait(5)
        go.set()
        t.join(5)
        return np.zeros(3) + x

    jx.compile(f, X3)
    assert seen == [np.ndarray]
    assert (np.zeros, np.ones, np.empty, np.full, np.asarray, np.array) == originals


def test_writing_into_a_plain_array_is_a_tracing_error():
    def f(x):
        a = _np_zeros(3)          # NumPy's own: an array of numbers
        a[0] = x[0]
        return a

    with pytest.raises(jx.TracingError) as info:
        jx.compile(f, X3)
    msg = str(info.value)
    assert "a[0] = x[0]" in msg and "np.zeros" in msg and "float64" in msg

    def g(x):
        a = np.zeros(3, dtype=np.float32)   # not float64: NumPy's array
        a[:] = x
        return a

    with pytest.raises(jx.TracingError, match="a\\[:\\] = x"):
        jx.compile(g, X3)


def test_empty_traced_arrays_concatenate_and_stack():
    """An empty piece of a traced array in np.concatenate / np.stack (the graph of an
    otherwise empty trace is falsy: it must still be found)."""
    F = jx.compile(lambda x: np.concatenate([x[:0], x]), X3)
    np.testing.assert_array_equal(F.jacobian(X3), np.eye(3))
    G = jx.compile(lambda x: np.stack([x[:0], x[:0]]), X3)
    assert G(X3).shape == (2, 0)
    H = jx.compile(lambda x: np.concatenate([np.zeros(0), x[:0]]), X3)
    assert H(X3).shape == (0,)


_COMPILED_CALLERS = '''
import numpy as np, jacext as jx

def f(x):
    # NumPy's random generator is Cython: it calls np.empty itself and writes into the
    # result as an ndarray; it must get NumPy's array, not a traced one
    W = np.random.default_rng(0).normal(size=(3, 3))
    z = np.zeros(len(np.random.default_rng(1).normal(size=2)))
    buf = np.zeros(3)                  # the function's own buffer: traced
    buf[:] = x
    return W @ buf + z.sum()

x = np.array([0.5, -1.0, 2.0])
W = np.random.default_rng(0).normal(size=(3, 3))
assert np.array_equal(jx.compile(f, x).jacobian(x), W)
print("ok")
'''


def test_constructors_called_by_compiled_code_give_numpy_arrays(tmp_path):
    """Only a constructor call written in the traced source makes a traced array: one
    made by compiled code the function calls (numpy.random's Cython) stays NumPy's (it
    crashed the interpreter when it was traced).  In a subprocess, so a crash is a
    failure here, not the end of the test run."""
    import os
    import subprocess
    import sys
    script = tmp_path / "compiled_callers.py"
    script.write_text(_COMPILED_CALLERS)
    # the jacext this suite imports (an installed wheel, or the tree's in-place build)
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(jx.__file__))}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
