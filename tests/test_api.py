"""The public API (jacext/api.py: jacobian, compile, the compile cache) and the surface
users meet through it: Function's methods, errors, pickling, threads and batches."""
from __future__ import annotations

import io
import math
import os
import pickle
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import jacext as jx
from jacext import _point
from jacext.testing import check_jacobian

ROOT = Path(__file__).resolve().parent.parent
# where the jacext under test lives: the tree (in-place build) or an installed wheel
PKG_PARENT = Path(jx.__file__).resolve().parent.parent


def f_api(x):
    """API.md's first example."""
    return np.sin(x[:2]) * x[1:] ** 2


def J_api(x):
    """Its Jacobian, by hand."""
    return np.array([[np.cos(x[0]) * x[1] ** 2, 2 * np.sin(x[0]) * x[1], 0.0],
                     [0.0, np.cos(x[1]) * x[2] ** 2, 2 * np.sin(x[1]) * x[2]]])


def g_api(x, p):
    return np.sin(x) * p[0] + p[1] * x**2


def g_jac(x, p):
    Jx = np.diag(np.cos(x) * p[0] + 2 * p[1] * x)
    Jp = np.stack([np.sin(x), x**2], axis=1)
    return Jx, Jp


X = np.array([2.0, 3.0, 0.5])
P = np.array([1.5, -0.5])


# ----------------------------------------------------------------- examples --

def test_seed_example():
    J = jx.jacobian(lambda x: x**2 * x, np.array([2.0, 3.0]))
    assert isinstance(J, np.ndarray) and J.dtype == np.float64
    np.testing.assert_array_equal(J, [[12.0, 0.0], [0.0, 27.0]])


def test_api_example_one_shot():
    J = jx.jacobian(f_api, X)
    assert J.shape == (2, 3)
    np.testing.assert_allclose(J, J_api(X), rtol=1e-14, atol=1e-15)
    check_jacobian(f_api, X, expected=J_api(X), expected_rtol=1e-14)


def test_tuple_inputs_nest_as_torch():
    Jx, Jp = jx.jacobian(g_api, (X, P))
    wx, wp = g_jac(X, P)
    assert Jx.shape == (3, 3) and Jp.shape == (3, 2)
    np.testing.assert_allclose(Jx, wx, rtol=1e-14)
    np.testing.assert_allclose(Jp, wp, rtol=1e-14)
    # a 1-tuple still gives a tuple
    (J,) = jx.jacobian(f_api, (X,))
    np.testing.assert_allclose(J, J_api(X), rtol=1e-14, atol=1e-15)


def test_tuple_outputs_nest_as_torch():
    h = lambda x: (np.sin(x), x.sum(), np.outer(x, x))  # noqa: E731
    J0, J1, J2 = jx.jacobian(h, X)
    assert J0.shape == (3, 3) and J1.shape == (3,) and J2.shape == (3, 3, 3)
    np.testing.assert_allclose(J0, np.diag(np.cos(X)), rtol=1e-15)
    np.testing.assert_array_equal(J1, np.ones(3))
    want2 = np.einsum("ik,j->ijk", np.eye(3), X) + np.einsum("i,jk->ijk", X, np.eye(3))
    np.testing.assert_array_equal(J2, want2)
    # tuple outputs x tuple inputs: J[out][in]
    k = lambda x, p: (x * p[0], p.sum())  # noqa: E731
    (Jxx, Jxp), (Jpx, Jpp) = jx.jacobian(k, (X, P))
    np.testing.assert_array_equal(Jxx, P[0] * np.eye(3))
    np.testing.assert_array_equal(Jxp, np.stack([X, np.zeros(3)], axis=1))
    np.testing.assert_array_equal(Jpx, np.zeros(3))
    np.testing.assert_array_equal(Jpp, np.ones(2))
    check_jacobian(k, X, P, argnums=(0, 1))


def test_jacobian_keywords_of_F_jacobian():
    # argnums, mode, sparse, threads and out, as F.jacobian has them
    wx, wp = g_jac(X, P)
    np.testing.assert_allclose(jx.jacobian(g_api, (X, P), argnums=1), wp, rtol=1e-14)
    (Jp,) = jx.jacobian(g_api, (X, P), argnums=(1,))
    np.testing.assert_allclose(Jp, wp, rtol=1e-14)
    for mode in ("forward", "reverse"):
        np.testing.assert_allclose(jx.jacobian(f_api, X, mode=mode), J_api(X), rtol=1e-14)
    Js = jx.jacobian(f_api, X, sparse=True)
    assert Js.shape == (2, 3) and Js.nnz == 4
    np.testing.assert_allclose(Js.toarray(), J_api(X), rtol=1e-14, atol=1e-15)
    out = np.empty((2, 3))
    assert jx.jacobian(f_api, X, out=out) is out
    np.testing.assert_allclose(out, J_api(X), rtol=1e-14, atol=1e-15)
    out2 = (np.empty((3, 3)), np.empty((3, 2)))
    assert jx.jacobian(g_api, (X, P), out=out2) is out2
    np.testing.assert_allclose(out2[1], wp, rtol=1e-14)
    np.testing.assert_array_equal(jx.jacobian(f_api, X, threads=1), jx.jacobian(f_api, X))
    with pytest.raises(ValueError, match="out of range"):
        jx.jacobian(f_api, X, argnums=1)


def test_jacobian_of_pytrees_nests_as_jax():
    def f(p):
        return {"y": p["w"] * p["b"], "s": (p["w"].sum(), [p["b"] ** 2])}

    p = {"w": np.array([1.0, 2.0]), "b": np.array(3.0)}
    J = jx.jacobian(f, p)
    np.testing.assert_array_equal(J["y"]["w"], 3.0 * np.eye(2))
    np.testing.assert_array_equal(J["y"]["b"], [1.0, 2.0])
    np.testing.assert_array_equal(J["s"][0]["w"], [1.0, 1.0])
    assert isinstance(J["s"][1], list) and J["s"][1][0]["b"] == 6.0
    # a tuple of arguments, one of them a pytree: a tuple over the arguments inside
    ((Jw, Jq),) = jx.jacobian(lambda q, r: (q[0] * r,), ((X, P), 2.0))
    assert isinstance(Jw, tuple) and Jw[0].shape == (3, 3) and Jw[1].shape == (3, 2)
    np.testing.assert_array_equal(Jq, X)
    # a list of numbers is one array, as np.asarray makes it (torch's jacobian has no lists)
    np.testing.assert_allclose(jx.jacobian(f_api, [2.0, 3.0, 0.5]), J_api(X), rtol=1e-14)


def test_nested_outputs_are_nested_not_stacked():
    def h(x):
        return x[0], (x[1:] * 2.0, [x.sum()])

    J = jx.jacobian(h, X)
    assert isinstance(J, tuple) and isinstance(J[1], tuple) and isinstance(J[1][1], list)
    np.testing.assert_array_equal(J[1][0], 2.0 * np.eye(3)[1:])
    np.testing.assert_array_equal(J[1][1][0], np.ones(3))
    # a Function returns an array or a flat tuple: compile says so instead of stacking
    with pytest.raises(TypeError, match="nested structure"):
        jx.compile(h, X)
    with pytest.raises(TypeError, match="nested structure"):
        jx.compile(lambda x: {"y": x}, X)
    F = jx.compile(lambda x: (x[0], [x[1], x[2] * 2]), X)   # a list of scalars: one array
    assert F.out_shapes == ((), (2,))


def test_pytree_to_a_function_is_a_clear_error():
    F = jx.compile(f_api, X)
    with pytest.raises(TypeError, match="jx.jacrev"):
        F({"x": X})
    with pytest.raises(TypeError, match="jx.jacfwd"):
        jx.compile(f_api, {"x": X})


def test_compile_and_methods():
    F = jx.compile(g_api, X, P)
    x2, p2 = np.array([-1.0, 0.3, 4.0]), np.array([0.2, 2.0])   # not the traced values
    np.testing.assert_allclose(F(x2, p2), np.sin(x2) * p2[0] + p2[1] * x2**2, rtol=1e-15)
    wx, wp = g_jac(x2, p2)
    np.testing.assert_allclose(F.jacobian(x2, p2), wx, rtol=1e-14)
    Jx, Jp = F.jacobian(x2, p2, argnums=(0, 1))
    np.testing.assert_allclose(Jx, wx, rtol=1e-14)
    np.testing.assert_allclose(Jp, wp, rtol=1e-14)
    np.testing.assert_allclose(F.jacobian(x2, p2, argnums=1), wp, rtol=1e-14)
    np.testing.assert_allclose(F.jacobian(x2, p2, argnums=-1), wp, rtol=1e-14)
    (Jp_only,) = F.jacobian(x2, p2, argnums=(1,))
    np.testing.assert_allclose(Jp_only, wp, rtol=1e-14)
    y, J = F.value_and_jacobian(x2, p2)
    np.testing.assert_allclose(y, F(x2, p2), rtol=0)
    np.testing.assert_allclose(J, wx, rtol=1e-14)
    y, (Jx, Jp) = F.value_and_jacobian(x2, p2, argnums=(0, 1))
    np.testing.assert_allclose(Jp, wp, rtol=1e-14)
    check_jacobian(g_api, x2, p2, argnums=(0, 1), expected=(wx, wp), expected_rtol=1e-14)


def test_jvp_and_vjp_examples():
    F = jx.compile(f_api, X)
    v = np.array([1.0, -2.0, 0.5])
    w = np.array([0.3, 4.0])
    y, ydot = F.jvp(X, v)
    np.testing.assert_allclose(y, f_api(X), rtol=1e-15)
    np.testing.assert_allclose(ydot, J_api(X) @ v, rtol=1e-14)
    y, xbar = F.vjp(X, w)
    np.testing.assert_allclose(xbar, w @ J_api(X), rtol=1e-14)
    # several arguments: tangents is a tuple, the cotangent gives one array per argument
    G = jx.compile(g_api, X, P)
    dp = np.array([0.1, -0.2])
    _, ydot = G.jvp(X, P, (v, dp))
    wx, wp = g_jac(X, P)
    np.testing.assert_allclose(ydot, wx @ v + wp @ dp, rtol=1e-14)
    _, (gx, gp) = G.vjp(X, P, np.ones(3))
    np.testing.assert_allclose(gx, np.ones(3) @ wx, rtol=1e-14)
    np.testing.assert_allclose(gp, np.ones(3) @ wp, rtol=1e-14)
    with pytest.raises(TypeError):
        G.jvp(X, P, v)              # tangents must be a tuple per argument
    with pytest.raises(TypeError):
        F.jvp(X)                    # no tangents
    with pytest.raises(ValueError):
        F.vjp(X, np.ones(3))        # cotangent of the wrong shape


@pytest.mark.parametrize("mode", ["auto", "forward", "reverse"])
def test_mode(mode):
    F = jx.compile(f_api, X)
    np.testing.assert_allclose(F.jacobian(X, mode=mode), J_api(X), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(jx.jacobian(f_api, X, mode=mode), J_api(X), rtol=1e-14,
                               atol=1e-15)


def test_bad_mode():
    F = jx.compile(f_api, X)
    with pytest.raises(ValueError, match="mode"):
        F.jacobian(X, mode="sideways")
    with pytest.raises(ValueError, match="mode"):
        F.jacobian(X[None], mode="sideways")


def test_out_writes_in_place():
    F = jx.compile(f_api, X)
    out = np.full((2, 3), np.nan)
    res = F.jacobian(X, out=out)
    assert res is out
    np.testing.assert_allclose(out, J_api(X), rtol=1e-14, atol=1e-15)
    for mode in ("forward", "reverse"):
        out[...] = np.nan
        assert F.jacobian(X, out=out, mode=mode) is out
        np.testing.assert_allclose(out, J_api(X), rtol=1e-14, atol=1e-15)
    # a batch, several arguments, a tuple of Jacobians
    Xb = np.stack([X, X + 1.0])
    outb = np.empty((2, 2, 3))
    assert F.jacobian(Xb, out=outb) is outb
    np.testing.assert_allclose(outb[1], J_api(X + 1.0), rtol=1e-14, atol=1e-15)
    G = jx.compile(g_api, X, P)
    o1, o2 = np.empty((3, 3)), np.empty((3, 2))
    res = G.jacobian(X, P, argnums=(0, 1), out=(o1, o2))
    wx, wp = g_jac(X, P)
    np.testing.assert_allclose(o1, wx, rtol=1e-14)
    np.testing.assert_allclose(o2, wp, rtol=1e-14)
    assert res[0] is o1 and res[1] is o2
    o3 = np.empty((3, 2))
    assert G.jacobian(X, P, argnums=1, out=o3) is o3
    np.testing.assert_allclose(o3, wp, rtol=1e-14)


@pytest.mark.parametrize("bad", [
    np.empty((3, 2)), np.empty((2, 3, 1)), np.empty(6), np.empty((2, 3), np.float32),
    np.empty((2, 3), np.int64), np.empty((3, 2)).T, np.empty((2, 6))[:, ::2],
])
def test_out_of_wrong_shape_or_dtype(bad):
    F = jx.compile(f_api, X)
    with pytest.raises(ValueError):
        F.jacobian(X, out=bad)
    with pytest.raises(ValueError):
        F.jacobian(X, out=bad, mode="reverse")
    with pytest.raises(ValueError):
        F.jacobian([2.0, 3.0, 0.5], out=bad)      # the general path too


def test_out_read_only_or_not_an_array():
    F = jx.compile(f_api, X)
    ro = np.empty((2, 3))
    ro.setflags(write=False)
    with pytest.raises(ValueError):
        F.jacobian(X, out=ro)
    with pytest.raises((TypeError, ValueError)):
        F.jacobian(X, out=[[0.0] * 3] * 2)


def test_inputs_convert_like_asarray():
    F = jx.compile(f_api, X)
    want = J_api(X)
    for arg in ([2.0, 3.0, 0.5], (2, 3, 0.5), X.astype(np.float32).astype(np.float64),
                np.array([2, 3, 0.5])[::1], np.array([[2.0, 9.0], [3.0, 9.0], [0.5, 9.0]])[:, 0]):
        np.testing.assert_allclose(F.jacobian(arg), want, rtol=1e-14, atol=1e-15)
    np.testing.assert_array_equal(F(np.array([1, 2, 3])), F(np.array([1.0, 2.0, 3.0])))
    np.testing.assert_array_equal(F(np.array([True, False, True])), F(np.array([1.0, 0, 1])))
    assert F(X).dtype == np.float64


# -------------------------------------------------------------------- errors --

@pytest.mark.parametrize("call", [
    lambda F, z: F(z),
    lambda F, z: F.jacobian(z),
    lambda F, z: F.value_and_jacobian(z),
    lambda F, z: F.jvp(z, np.ones(3)),
    lambda F, z: jx.jacobian(f_api, z),
    lambda F, z: jx.compile(f_api, z),
])
def test_complex_input_is_a_type_error(call):
    F = jx.compile(f_api, X)
    with pytest.raises(TypeError, match="complex"):
        call(F, X + 1j)


def test_wrong_trailing_shape_states_both_shapes():
    F = jx.compile(f_api, X)
    for bad in (np.zeros(4), np.zeros((5, 2)), np.zeros(())):
        for call in (F, F.jacobian, F.value_and_jacobian):
            with pytest.raises(ValueError) as info:
                call(bad)
            msg = str(info.value)
            assert "(3,)" in msg, msg
            assert str(bad.shape).replace(" ", "") in msg.replace(" ", ""), msg
    G = jx.compile(g_api, X, P)
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\)"):
        G(X, np.zeros(3))
    with pytest.raises(TypeError):
        G(X)                    # wrong number of arguments


def test_if_on_traced_value():
    def f(x):
        if x[0] > 0:
            return x
        return -x

    with pytest.raises(jx.TracingError) as info:
        jx.compile(f, X, control_flow="error")
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, jx.JacextError)
    assert "np.where" in str(info.value)
    assert "if x[0] > 0" in str(info.value)       # the offending line

    def g(x):
        if x > 0:
            return x
        return -x

    for arg in (np.float64(1.0), X):                # scalar and vector arguments
        with pytest.raises(jx.TracingError, match="np.where") as info:
            jx.compile(g, arg, control_flow="error")
        assert isinstance(info.value, TypeError)
    with pytest.raises(TypeError, match="np.where"):
        jx.compile(lambda x: x if x.sum() else -x, X, control_flow="error")


@pytest.mark.parametrize("f", [
    lambda x: float(x[0]) * x,
    lambda x: math.sin(x[0]) * x,
    lambda x: math.exp(x[1]) + x,
])
def test_python_numbers_from_traced_values(f):
    with pytest.raises(jx.TracingError, match=r"np\.sin") as info:
        jx.compile(f, X, control_flow="error")
    assert isinstance(info.value, TypeError)


def test_math_module_hint():
    with pytest.raises(jx.TracingError, match="math") as info:
        jx.jacobian(lambda x: math.sin(x[0]) * x, X)
    assert "np.sin" in str(info.value)


@pytest.mark.parametrize("f, name", [
    (lambda x: np.linalg.inv(x.reshape(1, 1)), "inv"),
    (lambda x: np.sort(x), "sort"),
    (lambda x: np.linalg.eigvalsh(np.outer(x, x)), "eigvalsh"),
])
def test_unsupported_numpy_function_is_named(f, name):
    with pytest.raises(jx.TracingError, match=name) as info:
        jx.jacobian(f, X[:1] if name == "inv" else X)
    assert isinstance(info.value, TypeError)


def test_jacobian_too_large_raises_memory_error_before_allocating():
    F = jx.compile(lambda t: np.sin(t) * 2.0, np.float64(0.0))   # one input -> one output
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    n = int(4 * ram // 8) + 1                                     # 4x RAM of float64
    huge = np.broadcast_to(np.float64(0.5), (n,))                 # a view: no memory
    with pytest.raises(MemoryError) as info:
        F.jacobian(huge)
    msg = str(info.value)
    assert "GiB" in msg and str(n) in msg
    assert "sparse=True" in msg
    with pytest.raises(MemoryError):
        F.value_and_jacobian(huge, mode="reverse")
    # tuples of arguments broadcast to a huge batch too
    G = jx.compile(lambda a, b: a * b, np.float64(0.0), np.float64(0.0))
    with pytest.raises(MemoryError, match="GiB"):
        G.jacobian(np.broadcast_to(0.5, (n // 2 + 1, 2)), np.float64(1.0), argnums=(0, 1))
    # and a moderate batch of the same Function still works
    np.testing.assert_allclose(F.jacobian(np.broadcast_to(0.5, (3,))), 2 * np.cos([0.5] * 3))


def test_compile_argument_errors():
    with pytest.raises(TypeError):
        jx.compile(3.0, X)
    with pytest.raises(TypeError):
        jx.compile(f_api)
    with pytest.raises(TypeError):
        jx.compile(lambda x: None, X)
    F = jx.compile(f_api, X)
    with pytest.raises(ValueError):
        F.jacobian(X, argnums=3)
    for bad in (0, -2, 1.5):
        with pytest.raises(ValueError, match="threads"):
            F.jacobian(np.stack([X, X]), threads=bad)


# ---------------------------------------------------------------- the cache --

def test_cache_reuses_the_tape(fresh_cache, monkeypatch):
    traces = []
    real = fresh_cache.compile_function

    def counting(f, shapes, name=None, **kw):
        traces.append(shapes)
        return real(f, shapes, name=name, **kw)

    monkeypatch.setattr(fresh_cache, "compile_function", counting)

    def f(x):
        return np.exp(x) * x

    for x in (X, X + 1.0, X * 2.0):
        np.testing.assert_allclose(jx.jacobian(f, x), np.diag(np.exp(x) * (1 + x)), rtol=1e-14)
    assert len(traces) == 1
    jx.jacobian(f, np.ones(5))            # a new shape: a new trace
    assert len(traces) == 2
    jx.jacobian(f, X, cache=False)        # no cache: traced every time
    jx.jacobian(f, X, cache=False)
    assert len(traces) == 4
    jx.jacobian(f, X)                     # still cached
    assert len(traces) == 4
    fresh_cache.clear_cache()
    jx.jacobian(f, X)
    assert len(traces) == 5


def test_new_closure_is_retraced(fresh_cache):
    def make(W):
        return lambda x: W @ np.tanh(x)

    rng = np.random.default_rng(3)
    for _ in range(4):
        W = rng.standard_normal((2, 3))
        J = jx.jacobian(make(W), X)
        np.testing.assert_allclose(J, W * (1 - np.tanh(X) ** 2), rtol=1e-14)


def test_cache_sees_rebound_cells_defaults_and_other_instances(fresh_cache):
    """The fast cache probe (a dict hit, then identity checks read in place) retraces
    when a closure cell is rebound, the defaults are replaced, or a bound method belongs
    to another instance; a bound method of the same instance hits."""
    scale = 2.0

    def f(x):
        return scale * x

    np.testing.assert_array_equal(jx.jacobian(f, X), 2.0 * np.eye(3))
    scale = 5.0                                          # noqa: F841 (read by f)
    np.testing.assert_array_equal(jx.jacobian(f, X), 5.0 * np.eye(3))

    def g(x, c=3.0):
        return c * x

    np.testing.assert_array_equal(jx.jacobian(g, X), 3.0 * np.eye(3))
    g.__defaults__ = (7.0,)
    np.testing.assert_array_equal(jx.jacobian(g, X), 7.0 * np.eye(3))

    class Model:
        def __init__(self, k):
            self.k = k

        def residual(self, x):
            return self.k * x

    a, b = Model(1.5), Model(-4.0)
    np.testing.assert_array_equal(jx.jacobian(a.residual, X), 1.5 * np.eye(3))
    np.testing.assert_array_equal(jx.jacobian(b.residual, X), -4.0 * np.eye(3))
    np.testing.assert_array_equal(jx.jacobian(a.residual, X), 1.5 * np.eye(3))


def test_cache_sees_replaced_code_keyword_defaults_and_none_cells(fresh_cache):
    """The probe's identity checks (jacext._point.same_capture, in C) on every field it
    reads: a replaced ``__code__`` or ``__kwdefaults__`` and a cell rebound from None
    retrace; the unchanged function hits (its Function is reused)."""
    def h(x, *, c=2.0):
        return c * x

    np.testing.assert_array_equal(jx.jacobian(h, X), 2.0 * np.eye(3))
    h.__kwdefaults__ = {"c": 6.0}
    np.testing.assert_array_equal(jx.jacobian(h, X), 6.0 * np.eye(3))

    def u(x):
        return 3.0 * x

    def w(x):
        return -1.0 * x

    np.testing.assert_array_equal(jx.jacobian(u, X), 3.0 * np.eye(3))
    u.__code__ = w.__code__
    np.testing.assert_array_equal(jx.jacobian(u, X), -1.0 * np.eye(3))
    offset = None

    def v(x):
        return x * 2.0 if offset is None else x * offset

    np.testing.assert_array_equal(jx.jacobian(v, X), 2.0 * np.eye(3))
    first = jx.jacobian(v, X)
    np.testing.assert_array_equal(first, jx.jacobian(v, X))
    offset = 9.0
    np.testing.assert_array_equal(jx.jacobian(v, X), 9.0 * np.eye(3))
    assert _point.same_capture(len, (None, None, (), None, None)) is None


def test_cached_tape_keeps_captured_constants(fresh_cache):
    W = np.array([1.0, 2.0, 3.0])
    f = lambda x: W * x  # noqa: E731
    np.testing.assert_array_equal(jx.jacobian(f, X), np.diag(W))
    W *= 10.0          # mutated in place: the cached tape keeps the traced constant
    np.testing.assert_array_equal(jx.jacobian(f, X), np.diag([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(jx.jacobian(f, X, cache=False), np.diag([10.0, 20.0, 30.0]))


# ------------------------------------------------------------------ pickling --

def test_pickle_in_process():
    W = np.array([[1.0, -2.0, 0.5], [0.3, 0.0, 4.0]])
    F = jx.compile(lambda x: W @ np.sin(x) + x[0], X)
    G = pickle.loads(pickle.dumps(F))
    assert repr(G) == repr(F)
    assert G.arg_shapes == F.arg_shapes and G.out_shapes == F.out_shapes
    np.testing.assert_array_equal(G(X), F(X))
    np.testing.assert_array_equal(G.jacobian(X), F.jacobian(X))
    for k, v in F.tape_arrays().items():
        np.testing.assert_array_equal(G.tape_arrays()[k], v)


def test_pickle_loads_in_a_fresh_process(tmp_path):
    scale = np.array([2.0, -1.0, 0.5])

    def local(x, p):          # a local closure: not picklable itself
        return (np.tanh(x * scale) * p[0], np.where(x > 1, np.sqrt(x), x) + p[1] ** 3)

    F = jx.compile(local, X, P)
    xs = np.array([[0.5, 2.0, -1.0], [3.0, 0.0, 1.5]])
    (tmp_path / "F.pkl").write_bytes(pickle.dumps(F))
    np.save(tmp_path / "xs.npy", xs)
    script = textwrap.dedent(f"""
        import pickle, numpy as np
        F = pickle.loads(open({str(tmp_path / 'F.pkl')!r}, 'rb').read())
        xs = np.load({str(tmp_path / 'xs.npy')!r})
        p = np.array([1.5, -0.5])
        y0, y1 = F(xs, p)
        (a, b), (c, d) = F.jacobian(xs, p, argnums=(0, 1))
        np.savez({str(tmp_path / 'res.npz')!r}, y0=y0, y1=y1, a=a, b=b, c=c, d=d, r=repr(F))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path),
                          env={**os.environ, "PYTHONPATH": str(PKG_PARENT)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    res = np.load(tmp_path / "res.npz")
    y0, y1 = F(xs, P)
    (a, b), (c, d) = F.jacobian(xs, P, argnums=(0, 1))
    for name, want in (("y0", y0), ("y1", y1), ("a", a), ("b", b), ("c", c), ("d", d)):
        np.testing.assert_array_equal(res[name], want, err_msg=name)
    assert str(res["r"]) == repr(F)
    # and the values are right, by hand
    np.testing.assert_allclose(res["y0"], np.tanh(xs * scale) * P[0], rtol=1e-15)


# -------------------------------------------------------------------- threads --

def test_one_function_from_four_threads():
    rng = np.random.default_rng(11)
    A, B = rng.standard_normal((10, 20)), rng.standard_normal((20, 20)) / 4
    F = jx.compile(lambda x: A @ np.tanh(B @ x), np.zeros(20))
    assert F.tape.work > 400     # large enough that the sweeps release the GIL
    points = rng.standard_normal((4, 25, 20))

    def want_jac(x):
        return A @ (np.diag(1 - np.tanh(B @ x) ** 2) @ B)

    def work(k):
        errs = 0
        for x in points[k]:
            y = F(x)
            errs += not np.allclose(y, A @ np.tanh(B @ x), rtol=1e-13, atol=1e-13)
            for mode in ("auto", "forward", "reverse"):
                errs += not np.allclose(F.jacobian(x, mode=mode), want_jac(x),
                                        rtol=1e-12, atol=1e-13)
            v = np.ones(20)
            errs += not np.allclose(F.jvp(x, v)[1], want_jac(x) @ v, rtol=1e-12, atol=1e-12)
            errs += not np.allclose(F.vjp(x, np.ones(10))[1], np.ones(10) @ want_jac(x),
                                    rtol=1e-12, atol=1e-12)
            out = np.empty((10, 20))
            F.jacobian(x, out=out)
            errs += not np.allclose(out, want_jac(x), rtol=1e-12, atol=1e-13)
        return errs

    with ThreadPoolExecutor(4) as pool:
        errors = list(pool.map(work, range(4)))
    assert errors == [0, 0, 0, 0]


# -------------------------------------------------------------------- batches --

def _deep(x):
    """A small network: a few hundred instructions, 5 inputs, 4 outputs."""
    W = np.linspace(-1, 1, 25).reshape(5, 5) / 3
    y = x
    for k in range(6):
        y = np.tanh(W @ y + 0.1 * k) + 0.5 * y
    return y[:4] * np.exp(-x[4])


def test_batch_equals_loop_of_points():
    F = jx.compile(_deep, np.zeros(5))
    rng = np.random.default_rng(5)
    Xs = rng.uniform(-1, 1, (3, 37, 5))          # two batch axes; 111 points
    V = rng.standard_normal((3, 37, 5))
    U = rng.standard_normal((3, 37, 4))
    flat = Xs.reshape(-1, 5)
    Y = F(Xs)
    assert Y.shape == (3, 37, 4)
    np.testing.assert_array_equal(Y.reshape(-1, 4), np.stack([F(x) for x in flat]))
    for mode in ("forward", "reverse"):
        J = F.jacobian(Xs, mode=mode)
        assert J.shape == (3, 37, 4, 5)
        np.testing.assert_array_equal(J.reshape(-1, 4, 5),
                                      np.stack([F.jacobian(x, mode=mode) for x in flat]))
        y, J2 = F.value_and_jacobian(Xs, mode=mode)
        np.testing.assert_array_equal(y, Y)
        np.testing.assert_array_equal(J2, J)
    y, ydot = F.jvp(Xs, V)
    np.testing.assert_array_equal(y, Y)
    loop = [F.jvp(x, v)[1] for x, v in zip(flat, V.reshape(-1, 5))]
    np.testing.assert_array_equal(ydot.reshape(-1, 4), np.stack(loop))
    y, xbar = F.vjp(Xs, U)
    np.testing.assert_array_equal(y, Y)
    loop = [F.vjp(x, u)[1] for x, u in zip(flat, U.reshape(-1, 4))]
    np.testing.assert_array_equal(xbar.reshape(-1, 5), np.stack(loop))
    # and the points themselves are right (independently of jacext)
    check_jacobian(_deep, flat[0])
    # empty batches
    assert F(np.zeros((0, 5))).shape == (0, 4)
    assert F.jacobian(np.zeros((0, 5))).shape == (0, 4, 5)


def test_threads_are_bit_identical():
    F = jx.compile(_deep, np.zeros(5))
    rng = np.random.default_rng(6)
    Xs = rng.uniform(-1, 1, (1001, 5))            # enough work for 3 threads; a ragged tail
    for mode in ("forward", "reverse"):
        ref = F.jacobian(Xs, mode=mode, threads=1)
        np.testing.assert_array_equal(ref[::97], np.stack([F.jacobian(x, mode=mode)
                                                           for x in Xs[::97]]))
        for threads in (2, 3, None):
            np.testing.assert_array_equal(F.jacobian(Xs, mode=mode, threads=threads), ref)
        y1, J1 = F.value_and_jacobian(Xs, mode=mode, threads=1)
        y3, J3 = F.value_and_jacobian(Xs, mode=mode, threads=3)
        np.testing.assert_array_equal(y1, y3)
        np.testing.assert_array_equal(J1, J3)
        np.testing.assert_array_equal(J1, ref)


def test_batch_broadcasting_between_arguments():
    G = jx.compile(g_api, X, P)
    rng = np.random.default_rng(8)
    Xb = rng.uniform(-2, 2, (6, 3))
    # a batched x with an unbatched p
    Y = G(Xb, P)
    np.testing.assert_array_equal(Y, np.stack([G(x, P) for x in Xb]))
    Jx, Jp = G.jacobian(Xb, P, argnums=(0, 1))
    assert Jx.shape == (6, 3, 3) and Jp.shape == (6, 3, 2)
    for i, x in enumerate(Xb):
        wx, wp = g_jac(x, P)
        np.testing.assert_allclose(Jx[i], wx, rtol=1e-14)
        np.testing.assert_allclose(Jp[i], wp, rtol=1e-14)
    # (2, 1) x (4,) batch axes broadcast to (2, 4)
    Xc = rng.uniform(-2, 2, (2, 1, 3))
    Pc = rng.uniform(-2, 2, (4, 2))
    Y = G(Xc, Pc)
    assert Y.shape == (2, 4, 3)
    J = G.jacobian(Xc, Pc, argnums=1, mode="reverse")
    assert J.shape == (2, 4, 3, 2)
    for i in range(2):
        for j in range(4):
            np.testing.assert_array_equal(Y[i, j], G(Xc[i, 0], Pc[j]))
            np.testing.assert_allclose(J[i, j], g_jac(Xc[i, 0], Pc[j])[1], rtol=1e-14)
    # jvp and vjp broadcast their seeds as well
    _, ydot = G.jvp(Xb, P, (np.ones(3), np.zeros(2)))
    np.testing.assert_allclose(ydot, np.stack([g_jac(x, P)[0] @ np.ones(3) for x in Xb]),
                               rtol=1e-14)
    _, (gx, gp) = G.vjp(X, P, rng.standard_normal((5, 3)))
    assert gx.shape == (5, 3) and gp.shape == (5, 2)
    with pytest.raises(ValueError, match="broadcast"):
        G(np.zeros((3, 3)), np.zeros((4, 2)))


# ------------------------------------------------------------------ printing --

def test_repr_shows_the_facts():
    F = jx.compile(g_api, X, P)
    r = repr(F)
    assert "g_api" in r
    assert "(3,), (2,)" in r                       # inputs
    assert "-> outputs (3,)" in r
    assert f"{F.n_instructions} instructions" in r
    assert f"{F.n_slots} work slots" in r
    assert F.n_inputs == 5 and F.n_outputs == 3
    H = jx.compile(lambda x: (x.sum(), np.outer(x, x)), X)
    assert "outputs ((), (3, 3))" in repr(H)
    print(F)   # API.md: print(F) works


def test_disassemble_one_line_per_instruction(capsys):
    F = jx.compile(lambda x: np.where(x > 0, np.sqrt(x), 0.0) + 2.0 * x[::-1], X)
    F.disassemble()
    text = capsys.readouterr().out
    lines = text.strip().splitlines()
    import re
    instr = [ln for ln in lines if re.match(r"^\s*\d+ s\d+ = [A-Z_]+ ", ln)]
    assert len(instr) == F.n_instructions
    assert [int(ln.split()[0]) for ln in instr] == list(range(F.n_instructions))
    for name in ("SQRT", "SELECT", "GREATER", "MUL", "ADD"):
        assert any(f" {name} " in ln for ln in instr), name
    assert lines[0].startswith(";") and repr(F) in lines[0]
    assert lines[-1].startswith("; outputs:") and len(lines[-1].split()) == 2 + 3
    buf = io.StringIO()
    F.disassemble(file=buf)
    assert buf.getvalue() == text
