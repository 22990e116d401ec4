"""Function's entry points (jacext/_function.pyx), over the C sweeps of its Tape.

Values, Jacobians (both modes), jvp and vjp of compiled functions: zero kills through
np.where, NumPy's nan and inf, slot reuse, outputs that are inputs, constants or
duplicates, unused inputs, scalars in and out, the shapes a Function is built with;
batched sweeps against single points (bit for bit, at awkward values), zero-size
arguments and empty batches.  Batches (src_c/batch.c: points as lanes, blocks of 8 to 256
points sized per tape to stay in L2, 64 for the value sweep; threads over whole blocks):
every op of the table as a batch against a loop of single points (bit for bit) at
interior and edge points, both modes; batch sizes around the block size; thread counts;
and the memory a batch of 10**6 points takes.  The Tape itself (hand-made and corrupt
tapes, runs) is tests/test_tape.py.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from helpers import NASTY
from jacext._tape import Tape
from test_ops import NAMES, REF, edges
from test_sparse import (
    FORWARD,
    REVERSE,
    _after,
    _bratu_12,
    _run,
    _sparse_tape,
    assert_same_bits,
    broyden,
    sqrt_of_where,
)

import jacext as jx
from jacext import Function
from jacext.pytree import tree_leaves
from jacext.testing import assert_same_values, check_jacobian, jacobian_tape_slot, plan_of

MODES = ("forward", "reverse")


def both_modes(F, *args, **kw):
    return [F.jacobian(*args, mode=m, **kw) for m in MODES]


# ------------------------------------------------------------------ zero kills --

def test_where_sqrt_has_finite_derivative_at_zero():
    f = lambda x: np.where(x > 0, np.sqrt(x), 0.0)  # noqa: E731
    x = np.array([0.0, 1.0, 4.0, -1.0, 0.25])
    F = jx.compile(f, x)
    want = np.diag([0.0, 0.5, 0.25, 0.0, 1.0])   # d sqrt(x) = 1 / (2 sqrt(x))
    for J in both_modes(F, x):
        np.testing.assert_array_equal(J, want)
    # jvp / vjp with every direction at once
    _, ydot = F.jvp(x, np.ones(5))
    np.testing.assert_array_equal(ydot, np.diag(want))
    _, xbar = F.vjp(x, np.ones(5))
    np.testing.assert_array_equal(xbar, np.diag(want))
    # a batch of scalar points (the batched sweeps)
    G = jx.compile(f, np.zeros(()))
    xs = np.array([0.0, 0.0, 1.0, 4.0] * 20)
    for mode in MODES:
        np.testing.assert_array_equal(G.jacobian(xs, mode=mode),
                                      np.where(xs > 0, 0.5 / np.sqrt(np.maximum(xs, 1e-300)), 0))
    _, d = G.jvp(xs, np.ones_like(xs))
    assert np.all(np.isfinite(d))
    _, d = G.vjp(xs, np.ones_like(xs))
    assert np.all(np.isfinite(d))


def test_single_point_sparse_tape_hands_any_non_finite_entry_to_the_sweeps():
    """Dense auto Jacobians of single points come from the sparse Jacobian tape once it is
    made.  floor(x) * sqrt(x) at x = 0 is 0 * inf there (nan), 0 in the sweeps (zero
    kills): the point goes to the sweeps, wherever the entry is among the tape's outputs;
    here the last of 598, past the last multiple of 4 (the finiteness check's stride)."""
    def f(x):
        t = (3.0 - 2.0 * x) * x
        t = t - np.concatenate([[0.0], x[:-1]]) - 2.0 * np.concatenate([x[1:], [0.0]]) + 1.0
        return t + np.floor(x) * np.sqrt(x)
    n = 200
    y = np.full(n, 1.5)
    F = jx.compile(f, y)
    for _ in range(3000):
        F.jacobian(y)
    assert any(jacobian_tape_slot(F, 0, m, sparse=True, values=False).current is not None
               for m in MODES)
    x = y.copy()
    x[-1] = 0.0
    # by hand: 3 - 4 x + floor(x) / (2 sqrt(x)) on the diagonal (3 at x = 0, where floor
    # is 0), -1 below, -2 above
    want = (np.diag(np.r_[np.full(n - 1, -3.0 + 0.5 / np.sqrt(1.5)), 3.0])
            - np.eye(n, k=-1) - 2.0 * np.eye(n, k=1))
    J = F.jacobian(x)
    assert np.isfinite(J).all()
    assert J[-1, -1] == 3.0
    np.testing.assert_allclose(J, want, rtol=1e-14, atol=0)


@pytest.mark.parametrize("f, x, want", [
    # log's partial 1/x is inf at 0; the other branch is taken
    (lambda x: np.where(x > 0, np.log(x), x), 0.0, 1.0),
    (lambda x: np.where(x > 0, x * np.log(x), 0.0), 0.0, 0.0),
    # the condition selects the left branch; the right one has an inf partial
    (lambda x: np.where(x <= 0, 2.0 * x, np.sqrt(x)), 0.0, 2.0),
    (lambda x: np.where(x != 0, np.sin(x) / x, 1.0), 0.0, 0.0),
    (lambda x: np.where(x > 1, np.arccosh(x), 0.0), 1.0, 0.0),
    (lambda x: np.where(np.abs(x) < 1, np.arcsin(x), 0.0), 1.0, 0.0),
])
def test_zero_kills_through_where(f, x, want):
    F = jx.compile(f, np.zeros(1))
    for J in both_modes(F, np.array([x])):
        assert J[0, 0] == want, J
    _, ydot = F.jvp(np.array([x]), np.array([1.0]))
    _, xbar = F.vjp(np.array([x]), np.array([1.0]))
    assert ydot[0] == want and xbar[0] == want


def test_zero_tangent_through_infinite_partial():
    """d/dy of sqrt(x) + y at x = 0 is 1, whatever sqrt's infinite partial does."""
    F = jx.compile(lambda x, y: np.sqrt(x) + y, np.zeros(3), np.zeros(3))
    x, y = np.zeros(3), np.array([1.0, 2.0, 3.0])
    for mode in MODES:
        Jx, Jy = F.jacobian(x, y, argnums=(0, 1), mode=mode)
        np.testing.assert_array_equal(Jy, np.eye(3))
        np.testing.assert_array_equal(np.diag(Jx), [np.inf] * 3)
        assert not np.isnan(Jx).any()
        np.testing.assert_array_equal(Jx[~np.eye(3, dtype=bool)], 0.0)
        # d/dy alone
        np.testing.assert_array_equal(F.jacobian(x, y, argnums=1, mode=mode), np.eye(3))
    _, ydot = F.jvp(x, y, (np.zeros(3), np.ones(3)))
    np.testing.assert_array_equal(ydot, np.ones(3))


def test_zero_kills_in_many_lanes():
    """More columns than one sweep's lanes (64 at a single point of a small tape): every
    chunk kills zeros."""
    n = 150
    x = np.zeros(n)
    x[::3] = np.arange(1.0, 51.0)
    F = jx.compile(lambda v: np.where(v > 0, np.sqrt(v), 0.0) * 2.0 + v.sum(), x)
    want = np.ones((n, n)) + np.diag(np.where(x > 0, 1.0 / np.sqrt(np.where(x > 0, x, 1)), 0.0))
    for J in both_modes(F, x):
        np.testing.assert_allclose(J, want, rtol=1e-15, atol=0)


@pytest.mark.parametrize("f, slope", [
    (lambda x: x**2, lambda x: 2 * x),
    (lambda x: x**3.0, lambda x: 3 * x**2),
    (lambda x: x**4, lambda x: 4 * x**3),
    (lambda x: x**-3.0, lambda x: -3 * x**-4.0),
    (lambda x: np.power(x, 2.0) * x, lambda x: 3 * x**2),
    (lambda x: np.square(x), lambda x: 2 * x),
])
def test_integer_power_of_negative_base_has_no_nan(f, slope):
    x = np.array([-3.0, -1.5, -0.25, -0.3, 2.0])
    J = check_jacobian(f, x, expected=np.diag(slope(x)), expected_rtol=1e-14)
    assert not np.isnan(J).any()


# ------------------------------------------------------- nan and inf as NumPy --

@pytest.mark.parametrize("f", [
    np.log, np.log2, np.sqrt, np.arcsin, np.arccosh, np.arctanh,
    lambda x: x / x,                                 # 0/0
    lambda x: 1.0 / x,                               # 1/0
    lambda x: np.log(x) - np.log(x),                 # inf - inf
    lambda x: x * 0.0,                               # inf * 0
    lambda x: np.exp(x) * np.exp(-x),
    lambda x: x ** 0.5,
    lambda x: np.maximum(x, np.nan),
    lambda x: np.fmax(x, np.log(x)),
    lambda x: np.where(x > 0, x, np.nan),
])
def test_values_keep_numpys_nan_and_inf(f):
    x = np.array([-1.0, -0.0, 0.0, 1.0, 2.0, 800.0, -800.0, np.inf, -np.inf, np.nan])
    F = jx.compile(f, x)
    with np.errstate(all="ignore"):
        want = f(x.copy())
    got = F(x)
    assert_same_values(got, want, rtol=4e-16)
    # the Jacobian evaluates at these points without trouble (nan where it must)
    for J in both_modes(F, x):
        assert J.shape == (10, 10)
        off = J[~np.eye(10, dtype=bool)]
        np.testing.assert_array_equal(off, 0.0)   # elementwise: no cross terms, not even nan


def test_derivative_values_at_out_of_domain_points():
    x = np.array([-1.0, 0.0])
    F = jx.compile(np.log, x)
    for J in both_modes(F, x):
        np.testing.assert_array_equal(np.diag(J), [-1.0, np.inf])   # d log = 1/x
    G = jx.compile(lambda a, b: a / b, np.zeros(1), np.zeros(1))
    for mode in MODES:
        Ja, Jb = G.jacobian(np.zeros(1), np.zeros(1), argnums=(0, 1), mode=mode)
        assert Ja[0, 0] == np.inf and np.isnan(Jb[0, 0])   # 1/b, -a/b**2 at 0/0


# ----------------------------------------------------------------- slot reuse --

def _chain(y, z, steps):
    for k in range(steps):
        y, z = np.sin(y) + 0.5 * z, np.cos(z) - 0.3 * y + 0.01 * k
    return y * z


def _chain_jacobian(y, z, steps):
    """Forward-mode recurrence written out by hand: d(y, z)/dx0 where y0 = z0 = x0."""
    n = y.size
    Jy, Jz = np.eye(n), np.eye(n)
    for k in range(steps):
        Jy, Jz = (np.cos(y)[:, None] * Jy + 0.5 * Jz,
                  -np.sin(z)[:, None] * Jz - 0.3 * Jy)
        y, z = np.sin(y) + 0.5 * z, np.cos(z) - 0.3 * y + 0.01 * k
    return z[:, None] * Jy + y[:, None] * Jz


def test_long_chain_with_slot_reuse():
    steps, n = 150, 5
    x = np.linspace(-1.0, 1.2, n)
    f = lambda v: _chain(v, v, steps)  # noqa: E731
    F = jx.compile(f, x)
    assert F.n_instructions > 8 * steps * n // 2
    assert F.n_slots < F.n_instructions // 10      # slots are reused
    check_jacobian(f, x, expected=_chain_jacobian(x, x, steps), expected_rtol=1e-10, F=F)


def test_operand_equal_to_destination_candidates():
    """x + x (one operand slot twice), chains that reuse a dying operand's slot."""
    x = np.array([0.3, -1.2, 2.0])
    check_jacobian(lambda v: v + v, x, expected=2 * np.eye(3), expected_rtol=0)
    check_jacobian(lambda v: (v + v) + (v + v), x, expected=4 * np.eye(3), expected_rtol=0)
    check_jacobian(lambda v: np.sin(v) * np.sin(v) - np.sin(v), x,
                   expected=np.diag(2 * np.sin(x) * np.cos(x) - np.cos(x)), expected_rtol=1e-14)
    check_jacobian(lambda v: np.where(v > 0, v, -v) * np.where(v > 0, v, -v), x,
                   expected=np.diag(2 * x), expected_rtol=1e-15)


def test_many_outputs_and_many_inputs_in_chunks():
    """More rows/columns than a sweep's lanes (vm.h: 64 at a single point of a small tape,
    16 in batches): the sweeps go chunk by chunk."""
    rng = np.random.default_rng(7)
    A = rng.standard_normal((70, 150))
    x = rng.uniform(-1, 1, 150)
    f = lambda v: A @ np.sin(v) + v[:70] ** 2  # noqa: E731
    want = A * np.cos(x)[None, :]
    want[np.arange(70), np.arange(70)] += 2 * x[:70]
    check_jacobian(f, x, expected=want, expected_rtol=1e-12)
    g = lambda v: np.outer(np.tanh(v[:5]), v[5:12]).ravel()  # noqa: E731  (35 outputs, 12 inputs)
    check_jacobian(g, rng.uniform(-1, 1, 12))


# ------------------------------------------------------------- odd outputs --

def test_output_is_the_input():
    x = np.array([1.0, -2.0, 3.5])
    F = jx.compile(lambda v: v, x)
    assert F.n_instructions == 0
    for J in both_modes(F, x):
        np.testing.assert_array_equal(J, np.eye(3))
    check_jacobian(lambda v: v, x, expected=np.eye(3), expected_rtol=0)
    check_jacobian(lambda v: v[::-1], x, expected=np.eye(3)[::-1], expected_rtol=0)
    check_jacobian(lambda v: (v, np.sin(v)), x,
                   expected=np.vstack([np.eye(3), np.diag(np.cos(x))]), expected_rtol=1e-15)
    J = check_jacobian(lambda a, b: (b, a), x, x[:2], argnums=(0, 1))
    np.testing.assert_array_equal(J[0][1], np.eye(2))
    np.testing.assert_array_equal(J[1][0], np.eye(3))
    np.testing.assert_array_equal(J[0][0], np.zeros((2, 3)))
    # batches of an identity
    X = np.arange(12.0).reshape(4, 3)
    np.testing.assert_array_equal(F(X), X)
    for mode in MODES:
        np.testing.assert_array_equal(F.jacobian(X, mode=mode), np.broadcast_to(np.eye(3),
                                                                                (4, 3, 3)))


def test_constant_outputs():
    x = np.array([1.0, 2.0, 3.0])
    f = lambda v: (v * 2, np.ones(3))  # noqa: E731
    J = check_jacobian(f, x, expected=np.vstack([2 * np.eye(3), np.zeros((3, 3))]),
                       expected_rtol=0)
    np.testing.assert_array_equal(J[1], np.zeros((3, 3)))
    F = jx.compile(f, x)
    y0, y1 = F(x)
    np.testing.assert_array_equal(y1, np.ones(3))
    _, xbar = F.vjp(x, (np.zeros(3), np.full(3, 7.0)))
    np.testing.assert_array_equal(xbar, np.zeros(3))
    # entirely constant functions
    for g, shape in ((lambda v: np.ones(4), (4,)), (lambda v: 5.0, ()),
                     (lambda v: np.zeros_like(v) + 2.0, (3,))):
        G = jx.compile(g, x)
        assert G.n_instructions == 0
        assert G.out_shapes == (shape,)
        for J in both_modes(G, x):
            np.testing.assert_array_equal(J, np.zeros(shape + (3,)))
        np.testing.assert_array_equal(G(x), g(x))
        np.testing.assert_array_equal(G(np.ones((2, 3))), np.broadcast_to(g(x), (2,) + shape))


def test_duplicated_outputs():
    x = np.array([0.7, -1.1, 2.0])
    check_jacobian(lambda v: (v[0] * v[1], v[0] * v[1]), x,
                   expected=np.array([[x[1], x[0], 0], [x[1], x[0], 0]]), expected_rtol=0)
    check_jacobian(lambda v: np.stack([np.sin(v), np.sin(v)]), x,
                   expected=np.vstack([np.diag(np.cos(x))] * 2), expected_rtol=1e-15)
    check_jacobian(lambda v: np.exp(v)[[0, 0, 2, 0]], x,
                   expected=np.diag(np.exp(x))[[0, 0, 2, 0]], expected_rtol=1e-15)
    # 40 copies of one output: duplicates across reverse-mode chunks
    F = jx.compile(lambda v: np.broadcast_to(np.sum(v * v), (40,)), x)
    for J in both_modes(F, x):
        np.testing.assert_allclose(J, np.broadcast_to(2 * x, (40, 3)), rtol=1e-15)
    _, xbar = F.vjp(x, np.ones(40))
    np.testing.assert_allclose(xbar, 80 * x, rtol=1e-14)


def test_unused_inputs():
    x, y = np.array([0.3, 1.4]), np.array([2.0, -1.0, 0.5])
    J = check_jacobian(lambda a, b: np.sin(a), x, y, argnums=(0, 1))
    np.testing.assert_array_equal(J[1], np.zeros((2, 3)))
    J = check_jacobian(lambda a, b: np.sin(a[0]) * b[2], x, y, argnums=(0, 1))
    np.testing.assert_allclose(J[0], [np.cos(x[0]) * y[2], 0.0], rtol=1e-15)
    np.testing.assert_allclose(J[1], [0.0, 0.0, np.sin(x[0])], rtol=1e-15)
    F = jx.compile(lambda a, b: np.sin(a), x, y)
    _, (ga, gb) = F.vjp(x, y, np.ones(2))
    np.testing.assert_array_equal(gb, np.zeros(3))


def test_scalar_input_and_output():
    F = jx.compile(lambda t: np.sin(t) * t, np.float64(0.0))
    assert F.arg_shapes == ((),) and F.out_shapes == ((),)
    t = 1.3
    for J in both_modes(F, t):
        assert J.shape == ()
        assert abs(float(J) - (np.cos(t) * t + np.sin(t))) < 1e-15
    check_jacobian(lambda t: np.sin(t) * t, np.float64(t),
                   expected=np.array([[np.cos(t) * t + np.sin(t)]]), expected_rtol=1e-15)


# ------------------------------------------------------- the shapes it is built with --

def test_shapes_that_do_not_fit_the_tape_raise_value_error():
    F = jx.compile(lambda x, y: (np.where(x > 0, np.sqrt(x), 0.0) * y[0], np.sin(x) + 2.0),
                   np.zeros(3), np.zeros(2))
    fn, (tape, arg_shapes, out_shapes, out_is_tuple, name, _) = F.__reduce__()
    assert fn is Function
    with pytest.raises(ValueError):
        Function(tape, ((4,), (2,)), out_shapes, out_is_tuple, name)
    with pytest.raises(ValueError):
        Function(tape, arg_shapes, ((3,), (4,)), out_is_tuple, name)
    with pytest.raises(ValueError):
        Function(tape, arg_shapes, out_shapes, False, name)


# ------------------------------------------- batched sweeps == single-point sweeps --

@pytest.mark.parametrize("f", [
    lambda x, y: np.where(x > 0, np.sqrt(x), 0.0) * y,
    lambda x, y: np.sqrt(x) + y,
    lambda x, y: x / 0.0 + y * 2.0,                   # an infinite constant partial
    lambda x, y: np.where(x > 0, x / 0.0, y),
    lambda x, y: x * y - np.log(x) * 0.0,
    lambda x, y: (x - 3.0) * (y + 1.0) / 7.0 - x % 2.0 + np.floor(y),
    lambda x, y: np.maximum(x, y) + np.fmin(np.log(x), y) + x**3.0,
    lambda x, y: np.where(y != 0, np.sin(x) / y, x),
])
def test_batched_sweeps_match_single_points_at_nasty_points(f):
    """Every (x, y) pair of awkward values, as one batch of 144 points (whole blocks and a
    partial last one) against a loop of single points: values, Jacobians both modes, jvp,
    vjp."""
    xs, ys = (v.ravel() for v in np.meshgrid(NASTY, NASTY))
    F = jx.compile(f, np.zeros(()), np.zeros(()))
    with np.errstate(all="ignore"):
        want = f(xs, ys)
    assert_same_values(F(xs, ys), want, rtol=4e-16)
    for mode in MODES:
        Jx, Jy = F.jacobian(xs, ys, argnums=(0, 1), mode=mode)
        loop = [F.jacobian(a, b, argnums=(0, 1), mode=mode) for a, b in zip(xs, ys)]
        np.testing.assert_array_equal(Jx, [j[0] for j in loop])
        np.testing.assert_array_equal(Jy, [j[1] for j in loop])
        for threads in (2, 3):
            Jx2, Jy2 = F.jacobian(xs, ys, argnums=(0, 1), mode=mode, threads=threads)
            np.testing.assert_array_equal(Jx2, Jx)
            np.testing.assert_array_equal(Jy2, Jy)
    v1, v2 = np.linspace(-1, 1, xs.size), np.linspace(2, -2, xs.size)
    _, ydot = F.jvp(xs, ys, (v1, v2))
    np.testing.assert_array_equal(ydot, [F.jvp(a, b, (p, q))[1]
                                         for a, b, p, q in zip(xs, ys, v1, v2)])
    _, (gx, gy) = F.vjp(xs, ys, v1)
    loop = [F.vjp(a, b, u)[1] for a, b, u in zip(xs, ys, v1)]
    np.testing.assert_array_equal(gx, [g[0] for g in loop])
    np.testing.assert_array_equal(gy, [g[1] for g in loop])
    # the zero tangent of y never meets x's infinite or nan partials, and vice versa
    _, ydot = F.jvp(xs, ys, (np.zeros_like(xs), np.ones_like(ys)))
    np.testing.assert_array_equal(ydot, Jy)
    _, ydot = F.jvp(xs, ys, (np.ones_like(xs), np.zeros_like(ys)))
    np.testing.assert_array_equal(ydot, Jx)


# ------------------------------------------------------------------ zero sizes --

def test_zero_size_arguments_and_reductions():
    """Empty inputs: sums are 0, products 1, Jacobians have a zero-length axis."""
    F = jx.compile(lambda x, y: (x.sum() * y, np.prod(x) + y, 3.0), np.zeros(0), np.zeros(2))
    y = np.array([1.5, -2.0])
    s, p, c = F(np.zeros(0), y)
    np.testing.assert_array_equal(s, [0.0, 0.0])
    np.testing.assert_array_equal(p, 1.0 + y)
    assert c == 3.0
    for mode in MODES:
        (a, b), (cc, d), (e, g) = F.jacobian(np.zeros(0), y, argnums=(0, 1), mode=mode)
        assert a.shape == (2, 0) and cc.shape == (2, 0) and e.shape == (0,)
        np.testing.assert_array_equal(b, np.zeros((2, 2)))
        np.testing.assert_array_equal(d, np.eye(2))
        np.testing.assert_array_equal(g, np.zeros(2))
    _, (gx, gy) = F.vjp(np.zeros(0), y, (np.ones(2), np.ones(2), 1.0))
    assert gx.shape == (0,)
    np.testing.assert_array_equal(gy, [1.0, 1.0])
    # reductions over an empty axis, with the other axis non-empty
    G = jx.compile(lambda m: m.sum(axis=0) + m.prod(axis=0), np.zeros((0, 3)))
    np.testing.assert_array_equal(G(np.zeros((0, 3))), np.ones(3))
    assert G.jacobian(np.zeros((0, 3))).shape == (3, 0, 3)
    H = jx.compile(lambda m: m.sum(axis=1), np.zeros((0, 3)))
    assert H(np.zeros((0, 3))).shape == (0,)


def test_empty_batches():
    F = jx.compile(lambda x: (np.sin(x), x.sum()), np.zeros(2))
    E = np.zeros((0, 2))
    a, b = F(E)
    assert a.shape == (0, 2) and b.shape == (0,)
    for mode in MODES:
        Ja, Jb = F.jacobian(E, mode=mode)
        assert Ja.shape == (0, 2, 2) and Jb.shape == (0, 2)
    (a, b), (Ja, Jb) = F.value_and_jacobian(E)
    assert a.shape == (0, 2) and Ja.shape == (0, 2, 2)
    _, (da, db) = F.jvp(E, np.ones(2))
    assert da.shape == (0, 2) and db.shape == (0,)
    _, g = F.vjp(E, (np.ones(2), 1.0))
    assert g.shape == (0, 2)
    out = np.empty((0, 2, 2))
    G = jx.compile(np.sin, np.zeros(2))
    assert G.jacobian(E, out=out) is out


# --------------------------------------------------------------------- batches --

def _points(name):
    """Interior and edge points of the op, as equal-length arrays per operand."""
    spec = REF[name]
    sets = [spec.domain, edges(name)]
    return tuple(np.concatenate([np.broadcast_to(np.asarray(s[k], dtype=np.float64),
                                                 np.broadcast_shapes(*[np.shape(v) for v in s]))
                                 .ravel() for s in sets])
                 for k in range(spec.arity))


@pytest.mark.parametrize("name", NAMES)
def test_every_op_batched_equals_single_points_bit_for_bit(name):
    spec = REF[name]
    pts = _points(name)
    F = jx.compile(spec.fn, *[np.zeros(()) for _ in pts])
    nums = tuple(range(spec.arity))
    with np.errstate(all="ignore"):
        values = F(*pts)
        single = np.array([F(*[p[i] for p in pts]) for i in range(pts[0].size)])
        np.testing.assert_array_equal(values, single)
        for mode in MODES:
            batch = F.jacobian(*pts, argnums=nums, mode=mode)
            loop = [F.jacobian(*[p[i] for p in pts], argnums=nums, mode=mode)
                    for i in range(pts[0].size)]
            for k in nums:
                np.testing.assert_array_equal(batch[k], [j[k] for j in loop],
                                              err_msg=f"{name} {mode} d/d{k}")


@pytest.mark.parametrize("n_points", [1, 2, 31, 32, 33, 63, 64, 65, 97, 1009])
def test_batch_sizes_around_the_block(n_points):
    rng = np.random.default_rng(n_points)
    X = rng.uniform(-2.0, 2.0, (n_points, 4))

    def f(x):
        return np.stack([np.sin(x[0]) * x[1], np.exp(x[2] - x[3]) + x[0] ** 2,
                         np.hypot(x[1], x[2])])

    F = jx.compile(f, X[0])
    for mode in MODES:
        J = F.jacobian(X, mode=mode)
        assert J.shape == (n_points, 3, 4)
        np.testing.assert_array_equal(J, [F.jacobian(x, mode=mode) for x in X])
        for threads in (1, 2, 3):
            np.testing.assert_array_equal(F.jacobian(X, mode=mode, threads=threads), J)
    np.testing.assert_array_equal(F(X), [F(x) for x in X])


def test_batch_of_a_million_points_runs_in_bounded_memory():
    """Peak memory of a 10**6-point batch: the output array plus a little.

    Run in a fresh process so the peak (VmHWM) is this batch's alone.
    """
    code = textwrap.dedent("""
        import numpy as np, jacext as jx
        def peak():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM"):
                    return int(line.split()[1]) * 1024
        F = jx.compile(lambda x: np.stack([x[0] * x[1], np.sin(x[0])]), np.zeros(2))
        X = np.random.default_rng(0).random((10**6, 2))
        before = peak()
        J = F.jacobian(X, threads=2)
        assert J.shape == (10**6, 2, 2)
        assert np.array_equal(J[12345], F.jacobian(X[12345]))
        print(before, peak(), J.nbytes)
    """)
    try:
        open("/proc/self/status").close()
    except OSError:
        pytest.skip("needs /proc to read peak memory")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    before, after, nbytes = (int(v) for v in out)
    grown = after - before
    print(f"10**6 points: output {nbytes / 2**20:.0f} MiB, peak grew {grown / 2**20:.0f} MiB")
    assert grown <= 1.2 * nbytes + 50 * 2**20


# ------------------------------------------- batches at the end of an allocation --
# A partial last block is padded with copies of its last point (batch.c); a read of the
# rows past the block, or a write of the padding lanes' results, goes past the end of the
# caller's array there.  The results would not show it (padding lanes are never copied
# out), so the arrays are placed against a page that may not be touched (PROT_NONE): a
# stray access is a crash of the child process.  The same child then runs the batches on
# exact-size NumPy arrays, which the sanitizer build (.ci/sanitize) watches byte by byte.

_GUARDED_BATCHES = textwrap.dedent("""
    import ctypes, mmap, sys
    import numpy as np
    import jacext as jx
    from jacext.testing import jacobian_tape_slot

    PAGE = mmap.PAGESIZE
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    keep = []

    def guarded(shape):
        # a float64 array whose last byte is the last before a PROT_NONE page
        nbytes = 8 * int(np.prod(shape))
        pages = (nbytes + PAGE - 1) // PAGE
        m = mmap.mmap(-1, (pages + 1) * PAGE)
        base = ctypes.addressof(ctypes.c_char.from_buffer(m))
        if libc.mprotect(base + pages * PAGE, PAGE, 0) != 0:
            sys.exit("mprotect failed")
        keep.append(m)
        return np.frombuffer(m, dtype=np.float64, count=nbytes // 8,
                             offset=pages * PAGE - nbytes).reshape(shape)

    def exact(shape):
        return np.empty(shape)          # malloc'd to the byte: the sanitizer's case

    def f(x):
        return np.stack([np.sin(x[0]) * x[1], np.where(x[2] > 0, np.sqrt(x[2]), 0.0),
                         x[3] / 2.0 + x[0] * x[2], np.exp(x[1] - x[3])])

    rng = np.random.default_rng(5)
    F = jx.compile(f, np.zeros(4))
    sizes = [5, 13, 69, 300, 1003]          # none a multiple of a block: ragged last blocks
    ref = {}
    for n in sizes:
        X = rng.uniform(-2.0, 2.0, (n, 4))
        V, U = rng.standard_normal((n, 4)), rng.standard_normal((n, 4))
        ref[n] = (X, V, U, F(X), [F.jacobian(X, mode=m) for m in ("forward", "reverse")],
                  F.jvp(X, V)[1], F.vjp(X, U)[1])

    def run(alloc, stage):
        for n in sizes:
            X0, V0, U0, y0, J0, jv0, vj0 = ref[n]
            X, V, U = alloc(X0.shape), alloc(V0.shape), alloc(U0.shape)
            X[...], V[...], U[...] = X0, V0, U0
            for threads in (1, 2):
                assert np.array_equal(F(X), y0), (stage, n)
                for m, want in zip(("forward", "reverse"), J0):
                    out = alloc(want.shape)
                    F.jacobian(X, mode=m, out=out, threads=threads)
                    assert np.array_equal(out, want), (stage, n, m)
                    assert np.array_equal(F.jacobian(X, mode=m, threads=threads), want)
                assert np.array_equal(F.jvp(X, V)[1], jv0), (stage, n)
                assert np.array_equal(F.vjp(X, U)[1], vj0), (stage, n)
                sp = F.jacobian(X, sparse=True, threads=threads)
                assert np.array_equal(sp.toarray(), J0[0]), (stage, n, "sparse")

    run(guarded, "sweeps")
    run(exact, "sweeps")
    # enough points that the Jacobian tapes exist: batches then run them
    Xbig = rng.uniform(-2.0, 2.0, (3000, 4))
    for m in ("forward", "reverse"):
        F.jacobian(Xbig, mode=m)
        assert jacobian_tape_slot(F, 0, m).current is not None, m
    run(guarded, "jacobian tape")
    run(exact, "jacobian tape")
    print("ok")
""")


def test_batches_touch_nothing_past_their_arrays():
    """Batches whose arrays end against an inaccessible page, every batched task (values,
    Jacobians in both modes through the sweeps and through the Jacobian tapes, into
    ``out=``, jvp, vjp, sparse), batch sizes with a ragged last block, 1 and 2 threads."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the guard page uses Linux's mmap and mprotect")
    proc = subprocess.run([sys.executable, "-c", _GUARDED_BATCHES], capture_output=True,
                          text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", (
        f"exit {proc.returncode} (a negative exit is the signal: -11, SIGSEGV, is an access "
        f"past the end of a batch's array)\n{proc.stdout}\n{proc.stderr[-3000:]}")


def _two_args(a, b):
    """Rotations as constant matrices full of zeros (a folded finite-input tape), a kink."""
    C = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    S = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    T = np.cos(a[0]) * C + np.sin(a[0]) * S
    U = np.cos(b[0]) * C + np.sin(b[0]) * S
    return np.concatenate([(T @ U @ T).ravel(),
                           [a[1] * b[1], np.where(a[2] > 0, np.sqrt(a[2]), 0.0) + b[1]]])


@pytest.mark.parametrize("n", [3, 8, 70, 301])
def test_a_batch_of_several_arguments_reads_them_unjoined(n):
    """F(A, B) over a batch hands A's and B's rows to C side by side, unjoined (Tape.run's
    parts): values and Jacobians (both modes, through the sweeps and then the Jacobian
    tapes; nan, inf and points beyond the finite-input bound, which the point paths redo
    from a row gathered from the parts), 1 and 2 threads, equal bit for bit to the same
    batch joined first (B broadcast against A[None]), and to the points."""
    rng = np.random.default_rng(n)
    A, B = rng.uniform(-2.0, 2.0, (n, 3)), rng.uniform(-2.0, 2.0, (n, 2))
    A[::7, 0] = np.nan
    B[3::11, 1] = np.inf
    B[5::13, 0] = -0.0
    A[6::17, 2] = 1e300
    F = jx.compile(_two_args, A[0], B[0])
    assert "folded" in repr(F)
    for _ in range(12):   # the sweeps first; the Jacobian tapes once enough points ran
        for threads in (1, 2):
            np.testing.assert_array_equal(F(A, B), F(A[None], B)[0])
            for mode in ("forward", "reverse"):
                Ja, Jb = F.jacobian(A, B, argnums=(0, 1), mode=mode, threads=threads)
                Wa, Wb = F.jacobian(A[None], B, argnums=(0, 1), mode=mode, threads=threads)
                np.testing.assert_array_equal(Ja, Wa[0])
                np.testing.assert_array_equal(Jb, Wb[0])
    if n >= 70:
        assert all(jacobian_tape_slot(F, (0, 1), m).current is not None
                   for m in ("forward", "reverse"))
    Y = F(A, B)
    Ja, Jb = F.jacobian(A, B, argnums=(0, 1))
    for p in range(n):   # (Jacobians: README "Values", up to the sign of a zero)
        np.testing.assert_array_equal(Y[p], F(A[p], B[p]))
        pa, pb = F.jacobian(A[p], B[p], argnums=(0, 1))
        np.testing.assert_array_equal(Ja[p] + 0.0, pa + 0.0)
        np.testing.assert_array_equal(Jb[p] + 0.0, pb + 0.0)


@pytest.mark.parametrize("n", [5, 70, 301])
def test_a_parameter_shared_by_a_batch_is_not_copied_per_point(n):
    """F(A, b) with b without batch axes (a parameter every point shares) goes to C as one
    row read by every point: the same bits as b's rows spelled out (np.repeat), and as the
    points; a parameter whose shape happens to be the batch's is still one point's."""
    rng = np.random.default_rng(n + 1)
    A, b = rng.uniform(-2.0, 2.0, (n, 3)), rng.uniform(-2.0, 2.0, 2)
    A[::9, 1] = np.nan
    Bn = np.repeat(b[None], n, axis=0)
    F = jx.compile(_two_args, A[0], b)
    for _ in range(12):   # the sweeps, then the Jacobian tapes
        for threads in (1, 2):
            np.testing.assert_array_equal(F(A, b), F(A, Bn))
            for mode in ("forward", "reverse"):
                Ja, Jb = F.jacobian(A, b, argnums=(0, 1), mode=mode, threads=threads)
                Wa, Wb = F.jacobian(A, Bn, argnums=(0, 1), mode=mode, threads=threads)
                np.testing.assert_array_equal(Ja, Wa)
                np.testing.assert_array_equal(Jb, Wb)
    for p in range(0, n, 3):
        np.testing.assert_array_equal(F(A, b)[p], F(A[p], b))
    G = jx.compile(lambda a, c: a * c.sum() + c, np.zeros(3), np.zeros(3))
    A3, c = A[:3], np.array([1.0, -2.0, 0.5])   # c: (3,), the batch of A3: (3,)
    np.testing.assert_array_equal(G(A3, c), np.array([G(A3[p], c) for p in range(3)]))


def test_tape_batches_take_parts_whose_widths_add_up():
    F = jx.compile(_two_args, np.zeros(3), np.zeros(2))
    A, B = np.ones((4, 3)), np.ones((4, 2))
    y = np.empty((4, 11))
    F.tape.batch("value", (A, B), y, None)
    np.testing.assert_array_equal(y, F(A, B))
    for bad in ((A, np.ones((4, 3))), (A, np.ones((5, 2))), (A, np.ones(8))):
        with pytest.raises(ValueError, match="add up to n_in"):
            F.tape.batch("value", bad, y, None)


# --------------------------------------- batches with sparse=True: the tape too --
# (Function._compressed with the values, the path of value_and_jacobian's dense auto
# batches before their dense tape exists, is this module's own to call)



@pytest.mark.parametrize("f, n, mode, tape_mode", [
    (broyden, 80, "auto", FORWARD),                   # column colouring
    (_bratu_12, 144, "auto", REVERSE),                # per-output cones
    (broyden, 90, "reverse", REVERSE),                # row colouring
    (sqrt_of_where, 60, "auto", FORWARD),             # nan in the tape: the sweeps redo
])
def test_batched_sparse_tape_gives_the_results_of_the_sweeps(f, n, mode, tape_mode, rng):
    """A batch with sparse=True runs the sparse Jacobian tape (once its threshold is met)
    in one batched value sweep; points whose nonzeros are not all finite go back to the
    sweeps.  Every point equals its single-point result from before the tape, bit for bit,
    values too; a leading batch shape of two axes keeps its shape."""
    F = jx.compile(f, np.zeros(n))
    X = rng.uniform(-0.9, 0.9, (6, 7, n))
    X[1, 2, ::4] = 0.0                                # sqrt_of_where: a nan in the tape
    X[4, 0, 1::3] = -0.0
    points = X.reshape(-1, n)
    with np.errstate(all="ignore"):
        single = [F.jacobian(x, sparse=True, mode=mode) for x in points]
        single_y = [F(x) for x in points]
    assert _sparse_tape(F, n, mode=tape_mode) is None
    after = _after(F, tape_mode)
    Z = np.repeat(X[:1, :1], after, axis=1)[0]         # `after` copies of one point
    F.jacobian(Z, sparse=True, mode=mode)
    jt = _sparse_tape(F, n, mode=tape_mode)
    assert isinstance(jt, Tape)
    # with the values too (the path of value_and_jacobian's dense auto batches): a tape
    # of its own, built after as many points
    plan = plan_of(F, 0, mode, True)
    F._compressed(plan, np.ascontiguousarray(Z), after, None, True)
    assert isinstance(_sparse_tape(F, n, values=True, mode=tape_mode), Tape)
    with np.errstate(all="ignore"):
        JB = F.jacobian(X, sparse=True, mode=mode)
        VB, yB = F._compressed(plan, np.ascontiguousarray(points), points.shape[0], None, True)
        jt_vals = _run(F, jt, points)
    assert JB.values.shape == (6, 7, single[0].nnz)
    flat = JB.values.reshape(-1, single[0].nnz)
    for k, (J, y) in enumerate(zip(single, single_y)):
        np.testing.assert_array_equal(flat[k], J.data, err_msg=str(k))
        np.testing.assert_array_equal(VB[k], J.data)
        assert_same_bits(yB[k], y)
    finite = np.isfinite(jt_vals).all(axis=1)
    np.testing.assert_array_equal(flat[finite], jt_vals[finite])     # the tape gave these
    if f is sqrt_of_where:
        assert not finite.all()                       # ... and the sweeps the others
    else:
        assert finite.all()


def _rhs(t, y, k):
    return np.stack([-k[0] * y[0] + t * y[1] * y[2], k[1] * y[0] ** 2 - np.sin(t) * y[1],
                     y[2] * np.exp(-t)])


def test_several_arguments_at_one_point_equal_the_general_path():
    """f(t, y, k) with a float t and exact-shape float64 arrays takes the gathered fast
    path; lists and 0-d arrays take the general one: the same numbers bit for bit, in
    every entry point."""
    y, k = np.array([1.0, 0.5, -2.0]), np.array([0.3, 1.7])
    F = jx.compile(_rhs, 0.0, y, k)
    for t in (0.25, np.float64(0.25)):
        fast = (F(t, y, k), F.jacobian(t, y, k, argnums=1),
                F.jacobian(t, y, k, argnums=(0, 2)), F.value_and_jacobian(t, y, k),
                F.jvp(t, y, k, (1.0, y, k)), F.vjp(t, y, k, np.ones(3)))
        T, Y = np.array(t), y.tolist()
        slow = (F(T, Y, k), F.jacobian(T, Y, k, argnums=1), F.jacobian(T, Y, k, argnums=(0, 2)),
                F.value_and_jacobian(T, Y, k), F.jvp(T, Y, k, (1.0, y, k)),
                F.vjp(T, Y, k, np.ones(3)))
        for a, b in zip(tree_leaves(fast), tree_leaves(slow), strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(F(t, y, k), _rhs(t, y, k), rtol=1e-15)
    with pytest.raises(ValueError, match="argument 1 of _rhs must have shape"):
        F(0.25, np.ones(4), k)
    with pytest.raises(TypeError, match="compiled for 3"):
        F(0.25, y)


def _arm3(q):
    a = np.cumsum(q)
    return np.stack([np.sum(np.cos(a)), np.sum(np.sin(a)), a[-1]])


def _mlp(x):
    W = np.random.default_rng(0).standard_normal((3, 8, 8)) / 3
    h = x
    for k in range(3):
        h = np.tanh(W[k] @ h + 0.1 * k)
    return h


SINGLE_POINT_CASES = {
    "seed": (lambda x: x ** 2 * x, np.array([2.0, 3.0])),
    "arm": (_arm3, np.linspace(0.1, 0.7, 7)),
    "broyden": (broyden, np.linspace(-1.0, 1.0, 40)),
    "mlp": (_mlp, np.linspace(-1.0, 1.0, 8)),
}


@pytest.mark.parametrize("name", SINGLE_POINT_CASES)
def test_every_single_point_path_gives_the_same_numbers(name):
    """value_and_jacobian, out=, argnums=0, each mode, a batch of one and the general path
    (a list) give what F(x) and F.jacobian(x) give, bit for bit, before and after the
    single-point tapes are built, also at a point with non-finite values."""
    f, x0 = SINGLE_POINT_CASES[name]
    F = jx.compile(f, x0)
    bad = x0.copy()
    bad[0] = np.inf
    for rounds in (1, 2100):      # before, then after, the planner's tapes are made
        for _ in range(rounds):
            F.jacobian(x0)
            F.value_and_jacobian(x0)
        for x in (x0, bad):
            with np.errstate(all="ignore"):
                v, J = F(x), F.jacobian(x)
                for mode in ("auto", "forward", "reverse"):
                    vm, Jm = F.value_and_jacobian(x, mode=mode)
                    np.testing.assert_array_equal(vm, v)
                    np.testing.assert_array_equal(Jm, F.jacobian(x, mode=mode))
                    vl, Jl = F.value_and_jacobian(x.tolist(), mode=mode)
                    np.testing.assert_array_equal(vl, v)
                    np.testing.assert_array_equal(Jl, Jm)
                out = np.empty_like(J)
                assert F.jacobian(x, out=out, argnums=0) is out
                np.testing.assert_array_equal(out, J)
                np.testing.assert_array_equal(F.jacobian(x[None])[0], J)
                np.testing.assert_array_equal(F.value_and_jacobian(x[None])[1][0], J)


def test_a_batch_of_one_is_the_single_point():
    """Leading axes of length 1 take the single-point path: the same numbers (signed
    zeros included), shapes with the batch axes, out= of the batch's shape, and the
    general path's errors for a wrong out."""
    F = jx.compile(lambda x: np.stack([x[0] * x[1], np.sin(x[1]) * 0.0 - x[0] * 0.0]),
                   np.zeros(2))
    x = np.array([-0.5, 2.0])
    J = F.jacobian(x)
    for lead in ((1,), (1, 1)):
        X = x.reshape(lead + (2,))
        JB = F.jacobian(X)
        assert JB.shape == lead + (2, 2)
        np.testing.assert_array_equal(np.signbit(JB.reshape(2, 2)), np.signbit(J))
        np.testing.assert_array_equal(JB.reshape(2, 2), J)
        out = np.full(lead + (2, 2), np.nan)
        assert F.jacobian(X, out=out) is out
        np.testing.assert_array_equal(out.reshape(2, 2), J)
        v, JV = F.value_and_jacobian(X)
        assert v.shape == lead + (2,) and JV.shape == lead + (2, 2)
        np.testing.assert_array_equal(v.reshape(2), F(x))
        assert F(X).shape == lead + (2,)
        np.testing.assert_array_equal(np.signbit(F(X).reshape(2)), np.signbit(F(x)))
        np.testing.assert_array_equal(F(X).reshape(2), F(x))
    with pytest.raises(ValueError, match="out has shape"):
        F.jacobian(x[None], out=np.empty((2, 2)))


def test_one_point_of_several_large_arguments_goes_straight_into_the_work_memory():
    """F(x, v, c) at one point of two large arrays and a float: each argument is copied into
    the tape's work memory where the sweep reads it (no joined row).  The values are
    NumPy's, on the folded tape at finite points and on the exact one where an inf fails
    the bound; threads calling at once each get their own work memory."""
    n = 50_000

    def f(x, v, c):
        return np.sin(x) * 0.0 + v * c + np.cos(v) * 0.0

    rng = np.random.default_rng(4)
    x, v = rng.uniform(-2.0, 2.0, n), rng.uniform(-2.0, 2.0, n)
    F = jx.compile(f, x, v, 2.0)
    assert "folded" in repr(F)
    np.testing.assert_array_equal(F(x, v, 1.5), f(x, v, 1.5))
    np.testing.assert_array_equal(F(x, v, np.float64(-3.0)), f(x, v, -3.0))
    x_inf = x.copy()
    x_inf[17] = np.inf
    with np.errstate(invalid="ignore"):
        want = f(x_inf, v, 1.5)
    got = F(x_inf, v, 1.5)
    assert np.isnan(got[17]) and np.isnan(want[17])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(F(x, v, 1.5), f(x, v, 1.5))   # the folded tape again
    points = [(rng.uniform(-2.0, 2.0, n), rng.uniform(-2.0, 2.0, n), float(k)) for k in range(8)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: F(*p), points * 3))
    for p, r in zip(points * 3, results):
        np.testing.assert_array_equal(r, f(*p))
