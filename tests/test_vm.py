"""The C VM: zero kills, NumPy's nan/inf, slot reuse, odd outputs, corrupt tapes, runs."""
from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest

import jacext as jx
from jacext import Function
from jacext.ops import A_IMM, B_IMM, OP_MASK, OPS
from jacext.testing import assert_same_values, check_jacobian

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
    """More columns than one sweep's lanes (16): every chunk kills zeros."""
    n = 40
    x = np.zeros(n)
    x[::3] = np.arange(1.0, 15.0)
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
    """More rows/columns than JX_MAX_LANES: the sweeps go chunk by chunk."""
    rng = np.random.default_rng(7)
    A = rng.standard_normal((23, 37))
    x = rng.uniform(-1, 1, 37)
    f = lambda v: A @ np.sin(v) + v[:23] ** 2  # noqa: E731
    want = A * np.cos(x)[None, :]
    want[np.arange(23), np.arange(23)] += 2 * x[:23]
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


# ------------------------------------------------------------- corrupt tapes --

def _tape_and_args():
    F = jx.compile(lambda x, y: (np.where(x > 0, np.sqrt(x), 0.0) * y[0], np.sin(x) + 2.0),
                   np.zeros(3), np.zeros(2))
    fn, args = F.__reduce__()
    assert fn is Function
    return F, args


def _corrupt(field, edit):
    F, args = _tape_and_args()
    tape = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in args[0].items()}
    for v in tape.values():
        if isinstance(v, np.ndarray):
            v.setflags(write=True)
    if field is not None:
        edit(tape)
    return F, (tape,) + tuple(args[1:])


def _select_index(tape):
    return int(np.nonzero((tape["op"] & 0xFF) == OPS["SELECT"])[0][0])


def _alias(tape, operand):
    i = _select_index(tape)
    tape["dst"][i] = tape[operand][i]


CORRUPTIONS = {
    "dst past the end": lambda t: t["dst"].__setitem__(0, t["n_slots"]),
    "dst negative": lambda t: t["dst"].__setitem__(-1, -1),
    "dst into an input": lambda t: t["dst"].__setitem__(0, 0),
    "a past the end": lambda t: t["a"].__setitem__(1, t["n_slots"] + 5),
    "a negative": lambda t: t["a"].__setitem__(0, -3),
    "b huge": lambda t: t["b"].__setitem__(2, 2**31 - 1),
    "unknown op": lambda t: t["op"].__setitem__(0, 250),
    "negative op": lambda t: t["op"].__setitem__(0, -1),
    "both immediates": lambda t: t["op"].__setitem__(0, int(OPS["MUL"]) | A_IMM | B_IMM),
    "immediate on a unary op": lambda t: t["op"].__setitem__(0, int(OPS["SIN"]) | B_IMM),
    "unknown flag": lambda t: t["op"].__setitem__(0, int(OPS["ADD"]) | 0x4000),
    "select condition past the end": lambda t: t["s"].__setitem__(_select_index(t), 10**6),
    "select condition negative": lambda t: t["s"].__setitem__(_select_index(t), -1),
    "select condition is its dst": lambda t: t["s"].__setitem__(
        _select_index(t), t["dst"][_select_index(t)]),
    "s past the end (not a select)": lambda t: t["s"].__setitem__(0, t["n_slots"]),
    "short s": lambda t: t.__setitem__("s", t["s"][:-1]),
    "no s": lambda t: t.pop("s"),
    # batched sweeps assume an instruction never writes over its operand's slot
    "dst is its operand": lambda t: _alias(t, "a"),
    "dst is its second operand": lambda t: _alias(t, "b"),
    "output past the end": lambda t: t["out_slot"].__setitem__(0, t["n_slots"]),
    "output negative": lambda t: t["out_slot"].__setitem__(1, -1),
    "too few slots": lambda t: t.__setitem__("n_slots", 4),
    "negative slots": lambda t: t.__setitem__("n_slots", -1),
    "n_in too large": lambda t: t.__setitem__("n_in", 6),
    "n_in negative": lambda t: t.__setitem__("n_in", -5),
    "short dst": lambda t: t.__setitem__("dst", t["dst"][:-1]),
    "long imm": lambda t: t.__setitem__("imm", np.append(t["imm"], 0.0)),
    "output count": lambda t: t.__setitem__("out_slot", t["out_slot"][:-1]),
    "too many constants": lambda t: t.__setitem__("const_value", np.zeros(t["n_slots"])),
}


def test_uncorrupted_copy_loads():
    F, args = _corrupt(None, None)
    G = Function(*args)
    x, y = np.array([0.0, 1.0, 4.0]), np.array([2.0, 3.0])
    for a, b in zip(F(x, y), G(x, y)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("what", sorted(CORRUPTIONS))
def test_corrupt_tape_raises_value_error(what):
    _, args = _corrupt(what, CORRUPTIONS[what])
    with pytest.raises(ValueError, match="jacext"):
        Function(*args)


@pytest.mark.parametrize("what", ["dst past the end", "unknown op", "output past the end",
                                  "select condition past the end"])
def test_corrupt_pickle_raises_value_error(what):
    F, args = _corrupt(what, CORRUPTIONS[what])
    good = pickle.dumps(F)
    # rebuild the same pickle with the corrupted tape
    bad = pickle.dumps(_Reduced(args))
    assert isinstance(pickle.loads(good), Function)
    with pytest.raises(ValueError):
        pickle.loads(bad)


class _Reduced:
    def __init__(self, args):
        self.args = copy.deepcopy(args)

    def __reduce__(self):
        return (Function, self.args)


def test_corrupt_shapes_raise_value_error():
    _, args = _tape_and_args()
    tape, arg_shapes, out_shapes, out_is_tuple, name = args
    with pytest.raises(ValueError):
        Function(tape, ((4,), (2,)), out_shapes, out_is_tuple, name)
    with pytest.raises(ValueError):
        Function(tape, arg_shapes, ((3,), (4,)), out_is_tuple, name)
    with pytest.raises(ValueError):
        Function(tape, arg_shapes, out_shapes, False, name)


# ------------------------------------------- batched sweeps == single-point sweeps --

NASTY = np.array([0.0, -0.0, 1.0, -1.0, 4.0, 1e-300, 1e300, -2.5, np.inf, -np.inf, np.nan, 0.5])


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
    """Every (x, y) pair of awkward values, as one batch of 144 points (4 blocks of 32 and a
    tail) against a loop of single points: values, Jacobians both modes, jvp, vjp."""
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


# ----------------------------------------------------------------------- runs --
# The single-point value sweep cuts the tape into runs (vm.c's jx_tape_runs): consecutive
# instructions of one op word (and one immediate) whose dst/a/b/condition slots step
# evenly.  A run whose steps are all 1 and whose operand ranges miss its dst range is one
# vector loop (flag 1); any other run is a strided loop that must still execute its
# instructions in order.  F.tape.runs() gives (length, step dst, a, b, s, flags) per run,
# or nothing when the runs are too short to be used (4 * n_runs > 3 * n_instructions).
# References: NumPy on the traced expression, and the tape executed one instruction at a
# time in Python (_interpret); the expected tables are written out by hand, and a Python
# re-derivation of the cut (_expected_runs) is checked against them.

RUN_FIELDS = 6
RUN_CONTIGUOUS = 1
RUN_TILE_NEXT = 2            # the next run continues this one's tile chain
TILE_MIN, TILE_MAX_CHAIN = 4096, 32
SELECT = OPS["SELECT"]
ARITY = {OPS[name]: arity for name, arity in (
    ("ADD", 2), ("SUB", 2), ("MUL", 2), ("DIV", 2), ("SIN", 1), ("SELECT", 3))}


def _ins(name, dst, a, b=None, imm=0.0, flag=0, s=None):
    """One instruction row; a unary op's b (and any op's s but SELECT's condition) is its a
    (any valid slot would do)."""
    return (int(OPS[name]) | flag, dst, a, a if b is None else b, a if s is None else s,
            float(imm))


def _hand_tape(n_in, code, out_slot, const_value=()):
    op, dst, a, b, s, imm = (list(col) for col in zip(*code))
    n_slots = max(max(dst), max(out_slot), n_in + len(const_value) - 1) + 1
    return {"op": np.array(op, np.int32), "dst": np.array(dst, np.int32),
            "a": np.array(a, np.int32), "b": np.array(b, np.int32),
            "s": np.array(s, np.int32), "imm": np.array(imm, np.float64),
            "out_slot": np.array(out_slot, np.int32),
            "const_value": np.array(const_value, np.float64), "n_in": n_in,
            "n_slots": n_slots}


def _hand_function(tape):
    return Function(tape, ((int(tape["n_in"]),),), ((len(tape["out_slot"]),),), False, "t")


def _interpret(tape, x):
    """The tape run one instruction at a time on NumPy float64 scalars (math.sin, the C
    library's sin, for SIN, as the VM calls it)."""
    n_in = int(tape["n_in"])
    v = np.zeros(int(tape["n_slots"]))
    v[:n_in] = x
    v[n_in:n_in + len(tape["const_value"])] = tape["const_value"]
    with np.errstate(all="ignore"):
        for word, d, a, b, s, imm in zip(*(tape[k] for k in ("op", "dst", "a", "b", "s", "imm"))):
            word, base, c = int(word), int(word) & OP_MASK, np.float64(imm)
            p = c if word & A_IMM else v[a]
            q = c if word & B_IMM else v[b]
            if base == OPS["ADD"]:
                z = p + q
            elif base == OPS["SUB"]:
                z = p - q
            elif base == OPS["MUL"]:
                z = p * q
            elif base == OPS["DIV"]:
                z = p / q
            elif base == OPS["SIN"]:
                z = math.sin(p) if math.isfinite(p) else math.nan
            elif base == SELECT:
                z = p if v[s] != 0.0 else q
            else:
                raise AssertionError(f"no reference for op {base}")
            v[d] = z
    return v[np.asarray(tape["out_slot"])].copy()


def _same_immediate(p, q):
    """Equal as the op sees them: == and the same sign (0.0 and -0.0 are different
    divisors); nan never equals itself."""
    return p == q and math.copysign(1.0, p) == math.copysign(1.0, q)


def _expected_runs(tape):
    """jx_tape_runs' cut, re-derived: maximal runs of one op word (one immediate where the
    word has one) over evenly stepping read slots (unread slots do not count)."""
    op, dst, ta, tb, ts, imm = (np.asarray(tape[k]) for k in ("op", "dst", "a", "b", "s", "imm"))
    n = len(op)

    def reads(i):
        word = int(op[i])
        base = word & OP_MASK
        return (not word & A_IMM, ARITY[base] >= 2 and not word & B_IMM, base == SELECT)

    def slots(i):
        return (int(dst[i]), int(ta[i]), int(tb[i]),
                int(ts[i]) if int(op[i]) & OP_MASK == SELECT else 0)

    def same(i, j):
        with_imm = int(op[i]) & (A_IMM | B_IMM)
        return op[j] == op[i] and (not with_imm or _same_immediate(imm[i], imm[j]))

    rows, i = [], 0
    while i < n:
        used = (True,) + reads(i)
        steps = [0, 0, 0, 0]
        j = i + 1
        if j < n and same(i, j):
            steps = [sj - si if u else 0 for sj, si, u in zip(slots(j), slots(i), used)]
            while j < n and same(i, j) and all(
                    not u or sj - sp == st
                    for sj, sp, st, u in zip(slots(j), slots(j - 1), steps, used)):
                j += 1
        length, flags = j - i, 0
        if length > 1 and all(st == 1 for st, u in zip(steps, used) if u):
            d0, d1 = int(dst[i]), int(dst[j - 1])
            meets = any(u and lo <= d1 and lo + length - 1 >= d0
                        for lo, u in zip(slots(i)[1:], used[1:]))
            flags = 0 if meets else RUN_CONTIGUOUS
        rows.append([length] + steps + [flags])
        i = j
    _mark_tile_chains(rows, slots, reads)
    if 4 * len(rows) > 3 * n:
        rows = []
    return np.array(rows, dtype=np.int32).reshape(-1, RUN_FIELDS)


def _mark_tile_chains(rows, slots, reads):
    """Tile chains, re-derived: consecutive contiguous runs of one length >= TILE_MIN (at
    most TILE_MAX_CHAIN) where every range a run writes or reads and every range an
    earlier run of the chain writes (and what the run writes against what they read) are
    either apart or the very same range; all runs of a chain but the last get the flag."""
    first = np.cumsum([0] + [row[0] for row in rows])[:-1]
    chain = []
    for r, row in enumerate(rows):
        length = row[0]

        def apart_or_same(x, y, length=length):
            return x == y or x + length <= y or y + length <= x

        def ranges(k):
            dst, *read_slots = slots(int(first[k]))
            return dst, [s for s, u in zip(read_slots, reads(int(first[k]))) if u]

        long_contiguous = row[5] & RUN_CONTIGUOUS and length >= TILE_MIN
        if long_contiguous and 0 < len(chain) < TILE_MAX_CHAIN and rows[chain[0]][0] == length:
            dst, read_slots = ranges(r)
            joins = all(apart_or_same(s, c_dst) for c_dst, _ in map(ranges, chain)
                        for s in [dst] + read_slots) and all(
                apart_or_same(dst, s) for _, c_reads in map(ranges, chain) for s in c_reads)
        else:
            joins = False
        if joins:
            rows[r - 1][5] |= RUN_TILE_NEXT
            chain.append(r)
        else:
            chain = [r] if long_contiguous else []


def assert_identical(actual, desired):
    """Equal bit for bit, but for a nan's payload: nan in the same places, zeros of the
    same sign."""
    actual, desired = np.asarray(actual), np.asarray(desired)
    np.testing.assert_array_equal(actual, desired)
    keep = ~np.isnan(desired)
    np.testing.assert_array_equal(np.signbit(actual[keep]), np.signbit(desired[keep]),
                                  err_msg="signs of zeros")


def _broyden_expr(x):
    return ((3 - 2 * x) * x - np.concatenate([[0.0], x[:-1]])
            - 2 * np.concatenate([x[1:], [0.0]]) + 1)


def test_traced_elementwise_function_runs_as_contiguous_loops(rng):
    n = 1000
    F = jx.compile(_broyden_expr, np.zeros(n))
    runs = F.tape.runs()
    assert runs.dtype == np.int32 and runs.shape[1] == RUN_FIELDS and runs.shape[0] > 0
    assert (runs[:, 0] >= 1).all()
    assert runs[:, 0].sum() == F.n_instructions
    assert 4 * runs.shape[0] <= 3 * F.n_instructions
    in_vector_loops = runs[(runs[:, 5] & RUN_CONTIGUOUS) != 0, 0].sum()
    assert in_vector_loops > 0.9 * F.n_instructions, runs
    np.testing.assert_array_equal(runs, _expected_runs(F.tape_arrays()))
    # values: NumPy's, bit for bit, at ordinary points and with inf, nan and signed zeros
    nasty = rng.standard_normal(n)
    where = rng.choice(n, 4 * NASTY.size, replace=False)
    nasty[where] = np.resize(NASTY, where.size)
    nasty[:2], nasty[-2:] = (np.nan, -0.0), (np.inf, 0.0)
    for x in (rng.standard_normal(n), rng.uniform(-1e3, 1e3, n), nasty, np.zeros(n),
              np.full(n, -0.0)):
        with np.errstate(all="ignore"):
            want = _broyden_expr(x.copy())
        assert_identical(F(x), want)
    # a small batch (fewer points than a block: the point sweep, runs included)
    X = np.stack([nasty, -nasty, nasty[::-1]])
    with np.errstate(all="ignore"):
        assert_identical(F(X), np.stack([_broyden_expr(r.copy()) for r in X]))


def test_traced_function_with_runs_pickles(rng):
    F = jx.compile(_broyden_expr, np.zeros(300))
    G = pickle.loads(pickle.dumps(F))
    assert G.n_instructions == F.n_instructions
    np.testing.assert_array_equal(G.tape.runs(), F.tape.runs())
    assert G.tape.runs().shape[0] > 0
    for x in (rng.standard_normal(300), np.resize(NASTY, 300)):
        with np.errstate(all="ignore"):
            want = _broyden_expr(x.copy())
        assert_identical(G(x), F(x))
        assert_identical(G(x), want)


# name -> (n_in, code, out_slot, the run table it must get); inputs are slots 0 .. n_in-1
HAND_TAPES = {
    # (a) strided, step -1: y[15 - k] = x[k] + x[7 - k], then read back in reverse
    "step -1": (8, [_ins("ADD", 15 - k, k, 7 - k) for k in range(8)]
                + [_ins("SUB", 16 + k, 15 - k, 8 + k) for k in range(8)],
                list(range(8, 24)),
                [[8, -1, 1, -1, 0, 0], [8, 1, -1, 1, 0, 0]]),
    # (b) a broadcast operand (step 0) on either side; a dst of step 0 (the last write wins)
    "broadcast": (8, [_ins("SIN", 8, 0)] + [_ins("MUL", 9 + k, k, 8) for k in range(8)]
                  + [_ins("SUB", 17 + k, 8, k) for k in range(8)]
                  + [_ins("ADD", 25, k, 9 + k) for k in range(4)],
                  list(range(8, 26)),
                  [[1, 0, 0, 0, 0, 0], [8, 1, 1, 0, 0, 0], [8, 1, 0, 1, 0, 0],
                   [4, 0, 1, 1, 0, 0]]),
    # (c) anti-dependences: instruction k reads the slot that instruction k + 1 then
    # overwrites (steps 1, the operand range meeting the dst range; and steps -1)
    "anti-dependence": (8, [_ins("SIN", 8 + k, k) for k in range(8)]
                        + [_ins("SUB", 8 + k, 9 + k, k) for k in range(7)]
                        + [_ins("DIV", 15 - k, 14 - k, k) for k in range(7)],
                        list(range(8, 16)),
                        [[8, 1, 1, 0, 0, 1], [7, 1, 1, 1, 0, 0], [7, -1, -1, 1, 0, 0]]),
    # (d) running chains: each instruction reads the previous one's result (a running sum
    # with steps 1; a running product with steps -2)
    "chain": (8, [_ins("MUL", 8, 0, 1)] + [_ins("ADD", 9 + k, 8 + k, k) for k in range(8)]
              + [_ins("SIN", 34, 7)] + [_ins("MUL", 32 - 2 * k, 34 - 2 * k, k) for k in range(8)],
              list(range(9, 17)) + list(range(18, 33, 2)),
              [[1, 0, 0, 0, 0, 0], [8, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0],
               [8, -2, -2, 1, 0, 0]]),
    # (e) immediates: one immediate per run (2.5 - x, x / 3), a change of immediate cuts
    # the run (x * 2 then x * 5), alternating ones give runs of one, and an operand slot
    # the op does not read may step anyhow
    "immediates": (8, [_ins("SUB", 8 + k, k, imm=2.5, flag=A_IMM) for k in range(8)]
                   + [_ins("DIV", 16 + k, 8 + k, imm=3.0, flag=B_IMM) for k in range(8)]
                   + [_ins("MUL", 24 + k, 16 + k, imm=2.0 if k < 4 else 5.0, flag=B_IMM)
                      for k in range(8)]
                   + [_ins("SUB", 32 + k, 24 + k, imm=1.5 * (-1) ** k, flag=A_IMM)
                      for k in range(4)]
                   + [_ins("ADD", 36 + k, k, (0, 5, 2, 7)[k], imm=1.0, flag=B_IMM)
                      for k in range(4)],
                   list(range(8, 40)),
                   [[8, 1, 0, 1, 0, 1], [8, 1, 1, 0, 0, 1], [4, 1, 1, 0, 0, 1],
                    [4, 1, 1, 0, 0, 1]] + [[1, 0, 0, 0, 0, 0]] * 4 + [[4, 1, 1, 0, 0, 1]]),
    # SELECT: its condition slot steps too; a condition range meeting the dst range (an
    # anti-dependence through the condition alone) makes the run strided
    "select": (8, [_ins("SUB", 8 + k, k, imm=0.5, flag=B_IMM) for k in range(8)]
               + [_ins("SELECT", 16 + k, k, 8 + k, s=8 + k) for k in range(8)]
               + [_ins("SELECT", 8 + k, 16 + k, k, s=9 + k) for k in range(7)],
               list(range(8, 24)),
               [[8, 1, 1, 0, 0, 1], [8, 1, 1, 1, 1, 1], [7, 1, 1, 1, 1, 0]]),
    # constants: a run reading a constant slot (step 0) and one over the constants
    "constants": (4, [_ins("MUL", 7 + k, k, 4) for k in range(4)]
                  + [_ins("ADD", 11 + k, 7 + k, 4 + k % 3) for k in range(3)]
                  + [_ins("DIV", 14 + k, 5, 7 + k) for k in range(4)],
                  list(range(7, 18)),
                  [[4, 1, 1, 0, 0, 0], [3, 1, 1, 1, 0, 1], [4, 1, 0, 1, 0, 0]]),
}
HAND_CONSTANTS = {"constants": (-1.25, 3.0, 0.1)}


def _hand_points(n_in, rng):
    return [rng.standard_normal(n_in), rng.uniform(-4.0, 4.0, n_in), NASTY[:n_in].copy(),
            NASTY[-n_in:].copy(), NASTY[2:2 + n_in][::-1].copy()]


@pytest.mark.parametrize("name", sorted(HAND_TAPES))
def test_hand_made_runs_execute_as_one_instruction_at_a_time(name, rng):
    n_in, code, out_slot, table = HAND_TAPES[name]
    tape = _hand_tape(n_in, code, out_slot, HAND_CONSTANTS.get(name, ()))
    table = np.array(table, dtype=np.int32)
    # the table written by hand is the cut's rule (and is long enough to be used)
    np.testing.assert_array_equal(_expected_runs(tape), table)
    F = _hand_function(tape)
    np.testing.assert_array_equal(F.tape.runs(), table)
    assert F.tape.runs()[:, 0].sum() == F.n_instructions == len(code)
    points = _hand_points(n_in, rng)
    for x in points + points[:1]:      # again: the work memory of an earlier call
        assert_identical(F(x), _interpret(tape, x))
    # a batch of 70 points: one block of the batched value sweep and a tail
    X = np.concatenate([np.stack(points), rng.standard_normal((65, n_in))])
    assert_identical(F(X), np.stack([_interpret(tape, x) for x in X]))
    # pickles (the runs are derived again) with the same table and values
    G = pickle.loads(pickle.dumps(F))
    np.testing.assert_array_equal(G.tape.runs(), table)
    for x in points:
        assert_identical(G(x), F(x))


L_TILE = TILE_MIN


def _tile_code(shift):
    """t = x * 2; u = 3 - t[k + shift]; t = x * -2 (over t again); out = u + t: four runs
    of L_TILE.  shift 0: one tile chain; shift 1: u reads t one element off, which breaks
    the chain before u and, as the third run writes over what u read, before it again."""
    L = L_TILE
    T, U, OUT = L, 2 * L + 1, 3 * L + 1
    return ([_ins("MUL", T + k, k, imm=2.0, flag=B_IMM) for k in range(L)]
            + [_ins("SUB", U + k, T + shift + k, T + shift + k, imm=3.0, flag=A_IMM)
               for k in range(L)]
            + [_ins("MUL", T + k, k, imm=-2.0, flag=B_IMM) for k in range(L)]
            + [_ins("ADD", OUT + k, U + k, T + k) for k in range(L)],
            list(range(OUT, OUT + L)))


@pytest.mark.parametrize("shift, flags", [(0, [3, 3, 3, 1]), (1, [1, 1, 3, 1])])
def test_tile_chains_run_element_for_element_in_order(shift, flags, rng):
    code, out_slot = _tile_code(shift)
    tape = _hand_tape(L_TILE, code, out_slot)
    L = L_TILE
    table = np.array([[L, 1, 1, 0, 0, flags[0]], [L, 1, 0, 1, 0, flags[1]],
                      [L, 1, 1, 0, 0, flags[2]], [L, 1, 1, 1, 0, flags[3]]], dtype=np.int32)
    np.testing.assert_array_equal(_expected_runs(tape), table)
    F = _hand_function(tape)
    np.testing.assert_array_equal(F.tape.runs(), table)
    x = rng.standard_normal(L)
    x[:NASTY.size] = NASTY
    for point in (x, x[::-1].copy(), x):
        with np.errstate(all="ignore"):
            assert_identical(F(point), _interpret(tape, point))


def test_tile_chains_of_a_traced_function(rng):
    """An elementwise function over 5,000 entries: its aligned runs share tiles, and the
    values are NumPy's bit for bit (the same operations on each element, in order)."""
    def f(x):
        t = np.sin(x) * 2.0
        return (t + x) * (x - 0.5) - t / (x * (x + 1.0) + 2.0)

    n = 5000
    F = jx.compile(f, np.zeros(n))
    runs = F.tape.runs()
    assert (runs[:, 5] & RUN_TILE_NEXT).sum() >= 4, runs
    np.testing.assert_array_equal(runs, _expected_runs(F.tape_arrays()))
    nasty = rng.standard_normal(n)
    nasty[rng.choice(n, NASTY.size, replace=False)] = NASTY
    for x in (rng.standard_normal(n), nasty, np.full(n, -0.0)):
        with np.errstate(all="ignore"):
            assert_identical(F(x), f(x.copy()))


@pytest.mark.parametrize("code, used", [
    # 4 instructions in 3 runs: 4 * 3 <= 3 * 4, used
    ([_ins("ADD", 8, 0, 2), _ins("ADD", 9, 1, 3), _ins("MUL", 10, 8, 9), _ins("SUB", 11, 10, 0)],
     True),
    # 4 instructions in 4 runs, and 5 in 4: too short, not used
    ([_ins("ADD", 8, 0, 2), _ins("MUL", 9, 1, 3), _ins("SUB", 10, 8, 9),
      _ins("DIV", 11, 10, 0)], False),
    ([_ins("ADD", 8, 0, 2), _ins("ADD", 9, 1, 3), _ins("MUL", 10, 8, 9), _ins("SUB", 11, 10, 0),
      _ins("DIV", 12, 11, 1)], False),
])
def test_runs_are_used_only_where_long_enough(code, used, rng):
    tape = _hand_tape(4, code, [8, 9, 10, 11] + ([12] if len(code) > 4 else []))
    F = _hand_function(tape)
    runs = F.tape.runs()
    assert runs.shape == ((3, RUN_FIELDS) if used else (0, RUN_FIELDS))
    assert runs.dtype == np.int32
    if used:
        np.testing.assert_array_equal(runs, [[2, 1, 1, 1, 0, 1], [1, 0, 0, 0, 0, 0],
                                             [1, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(runs, _expected_runs(tape))
    for x in _hand_points(4, rng):
        assert_identical(F(x), _interpret(tape, x))


SIGNED_ZEROS = np.where(np.arange(8) < 4, 0.0, -0.0)     # 0.0 x 4, then -0.0 x 4


# A bug at 1443d7c (src_c/vm.c, jx_tape_runs; fixed in 696b0a6): immediates were compared with ==,
# for which 0.0 == -0.0, so x / 0.0 and x / -0.0 (or atan2(0.0, x) and atan2(-0.0, x)) joined
# one run and jx_forward_run applied the first instruction's immediate to the whole run:
# x / [0., 0., 0., 0., -0., -0., -0., -0.] at x = 1 gave +inf x 8 (one run [8, 1, 1, 0, 0, 1]).
# Single points and small batches (the point sweep) were wrong; the batched block sweep
# (block_values.h) reads each instruction's own immediate.  Runs now compare the bits.
def test_signed_zero_immediates_are_not_one_run():
    code = ([_ins("DIV", 8 + k, k, imm=SIGNED_ZEROS[k], flag=B_IMM) for k in range(8)]
            + [_ins("SUB", 16 + k, k, imm=SIGNED_ZEROS[k], flag=A_IMM) for k in range(8)])
    tape = _hand_tape(8, code, list(range(8, 24)))
    F = _hand_function(tape)
    for x in (np.ones(8), np.array([1.0, -2.0, 0.5, -0.0, 3.0, -1.0, 0.0, 7.0])):
        want = _interpret(tape, x)
        assert np.isposinf(want[:8]).any() and np.isneginf(want[:8]).any()
        assert_identical(F(x), want)
    np.testing.assert_array_equal(F.tape.runs(), _expected_runs(tape))
    np.testing.assert_array_equal(F.tape.runs(), [[4, 1, 1, 0, 0, 1]] * 2
                                  + [[4, 1, 0, 1, 0, 1]] * 2)


def test_traced_signed_zero_constants_keep_their_sign():
    c = np.repeat(SIGNED_ZEROS, 5)
    x = -np.linspace(1.0, 2.0, c.size)
    F = jx.compile(lambda v: np.arctan2(c, v) * v, x)   # atan2(+-0, negative) = +-pi: finite
    G = jx.compile(lambda v: v / c, x)
    with np.errstate(all="ignore"):
        want_f, want_g = np.arctan2(c, x) * x, x / c
    # the batched block sweep (64 points and more) has it right ...
    X = np.broadcast_to(x, (64, x.size)).copy()
    assert_identical(F(X)[0], want_f)
    with np.errstate(all="ignore"):
        assert_identical(G(X)[-1], want_g)
    # ... the single-point sweep must too
    assert_identical(F(x), want_f)
    assert_identical(G(x), want_g)
