"""Every op of the C table (src_c/ops.def) and jacext/ops.py, which reads it.

``REF`` maps each op name to the NumPy/SciPy function that traces to it, its
arity, an analytic derivative written here in NumPy (independently of
ops.def's formulas), and interior sample points where it is smooth.  A new op
in ops.def fails ``test_every_op_has_a_reference`` until it gets a row here.

For each op:
* values through tracing vs NumPy itself, at interior and edge points
  (0, -0, +-inf, nan, domain boundaries), to a few ulp with nan/inf exact;
* the Jacobian in both modes vs the analytic formula and vs central
  differences (``check_jacobian``);
* binary ops with a constant on either side (immediates);
* ``op_value`` / ``op_partials`` on scalars vs NumPy and the formula;
* jacext/ops.py: its parser of ops.def's C expressions, the vocabulary (``WORDS``) read
  off the VALUE column, and for every op the derived Python rule evaluated on scalars
  against the C partials, bit for bit.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import scipy.special as sp
from jacext._tape import Tape

import jacext as jx
from jacext import ops
from jacext.ops import A_IMM, B_IMM, OP_MASK, OPS
from jacext.testing import check_jacobian, op_partials, op_value

LN2 = np.log(2.0)
LN10 = np.log(10.0)
TWO_OVER_SQRT_PI = 2.0 / np.sqrt(np.pi)


class Op(NamedTuple):
    fn: object          # traces to the op; also the NumPy reference
    arity: int
    deriv: object       # analytic partials, one array per operand
    domain: tuple       # interior points: one array per operand
    ulps: int = 4       # value tolerance vs NumPy/SciPy


def _f(x):
    return np.asarray(x, dtype=np.float64)


def one(*shape_like):
    return np.ones_like(_f(shape_like[0]))


def zero(x):
    return np.zeros_like(_f(x))


# interior sample sets
SMOOTH = (_f([-2.7, -1.3, -0.4, 0.35, 1.1, 2.6]),)
PAIRS = (_f([-2.7, -1.3, -0.4, 0.35, 1.1, 2.6]), _f([1.45, -2.2, 0.9, -0.55, 2.35, -1.6]))
NONZERO_B = (_f([-2.7, -1.3, -0.4, 0.35, 1.1, 2.6]), _f([1.45, -2.2, 0.9, -0.55, 2.35, -1.6]))
MODS = (_f([5.3, -5.3, 7.1, -1.2, 0.4, 3.3]), _f([2.1, 2.1, -3.0, 0.5, -0.7, -1.4]))
POSITIVE = (_f([0.2, 0.45, 0.9, 1.3, 2.2, 3.7]),)
AWAY0 = (_f([-2.7, -1.3, -0.4, 0.35, 1.1, 2.6]),)
UNIT = (_f([-0.9, -0.55, -0.1, 0.2, 0.6, 0.85]),)
FRACTIONAL = (_f([-2.7, -1.35, -0.4, 0.3, 1.2, 2.65]),)


def _select(c, a, b):
    return np.where(c, a, b)


REF = {
    # binary arithmetic
    "ADD": Op(np.add, 2, lambda a, b: (one(a), one(b)), PAIRS),
    "SUB": Op(np.subtract, 2, lambda a, b: (one(a), -one(b)), PAIRS),
    "MUL": Op(np.multiply, 2, lambda a, b: (b, a), PAIRS),
    "DIV": Op(np.divide, 2, lambda a, b: (1.0 / b, -a / b**2), NONZERO_B),
    "POW": Op(np.power, 2, lambda a, b: (b * a ** (b - 1.0), a**b * np.log(a)),
              (_f([0.3, 0.8, 1.2, 1.9, 2.5, 3.1]), _f([-2.5, -0.7, 0.45, 1.3, 2.2, 3.6]))),
    "MOD": Op(np.remainder, 2, lambda a, b: (one(a), -np.floor(a / b)), MODS),
    "FMOD": Op(np.fmod, 2, lambda a, b: (one(a), -np.trunc(a / b)), MODS),
    "FLOOR_DIVIDE": Op(np.floor_divide, 2, lambda a, b: (zero(a), zero(b)), MODS),
    "ATAN2": Op(np.arctan2, 2, lambda a, b: (b / (a**2 + b**2), -a / (a**2 + b**2)), PAIRS),
    "HYPOT": Op(np.hypot, 2, lambda a, b: (a / np.sqrt(a**2 + b**2), b / np.sqrt(a**2 + b**2)),
                PAIRS),
    "MAXIMUM": Op(np.maximum, 2, lambda a, b: (_f(a > b), _f(b > a)), PAIRS),
    "MINIMUM": Op(np.minimum, 2, lambda a, b: (_f(a < b), _f(b < a)), PAIRS),
    "FMAX": Op(np.fmax, 2, lambda a, b: (_f(a > b), _f(b > a)), PAIRS),
    "FMIN": Op(np.fmin, 2, lambda a, b: (_f(a < b), _f(b < a)), PAIRS),
    "LOGADDEXP": Op(np.logaddexp, 2,
                    lambda a, b: (1.0 / (1.0 + np.exp(b - a)), 1.0 / (1.0 + np.exp(a - b))),
                    PAIRS),
    # comparisons: 0/1, zero derivative
    "LESS": Op(np.less, 2, lambda a, b: (zero(a), zero(b)), PAIRS),
    "LESS_EQUAL": Op(np.less_equal, 2, lambda a, b: (zero(a), zero(b)), PAIRS),
    "GREATER": Op(np.greater, 2, lambda a, b: (zero(a), zero(b)), PAIRS),
    "GREATER_EQUAL": Op(np.greater_equal, 2, lambda a, b: (zero(a), zero(b)), PAIRS),
    "EQUAL": Op(np.equal, 2, lambda a, b: (zero(a), zero(b)), PAIRS),
    "NOT_EQUAL": Op(np.not_equal, 2, lambda a, b: (zero(a), zero(b)), PAIRS),
    # np.where(c, a, b): operands in fn order (c, a, b)
    "SELECT": Op(_select, 3, lambda c, a, b: (zero(c), _f(c != 0), _f(c == 0)),
                 (_f([1.0, 0.0, -2.0, 0.0, 0.5, 0.0]), PAIRS[0], PAIRS[1])),
    # unary
    "NEG": Op(np.negative, 1, lambda a: (-one(a),), SMOOTH),
    "ABS": Op(np.abs, 1, lambda a: (np.where(a > 0, 1.0, -1.0),), AWAY0),
    "SIGN": Op(np.sign, 1, lambda a: (zero(a),), AWAY0),
    "SQUARE": Op(np.square, 1, lambda a: (2.0 * a,), SMOOTH),
    "SQRT": Op(np.sqrt, 1, lambda a: (0.5 / np.sqrt(a),), POSITIVE),
    "CBRT": Op(np.cbrt, 1, lambda a: (1.0 / (3.0 * np.abs(a) ** (2.0 / 3.0)),), AWAY0),
    "RECIPROCAL": Op(np.reciprocal, 1, lambda a: (-1.0 / a**2,), AWAY0),
    "EXP": Op(np.exp, 1, lambda a: (np.exp(a),), SMOOTH),
    "EXP2": Op(np.exp2, 1, lambda a: (2.0**a * LN2,), SMOOTH),
    "EXPM1": Op(np.expm1, 1, lambda a: (np.exp(a),), SMOOTH),
    "LOG": Op(np.log, 1, lambda a: (1.0 / a,), POSITIVE),
    "LOG2": Op(np.log2, 1, lambda a: (1.0 / (a * LN2),), POSITIVE),
    "LOG10": Op(np.log10, 1, lambda a: (1.0 / (a * LN10),), POSITIVE),
    "LOG1P": Op(np.log1p, 1, lambda a: (1.0 / (1.0 + a),),
                (_f([-0.7, -0.3, 0.1, 0.8, 1.9, 3.2]),)),
    "SIN": Op(np.sin, 1, lambda a: (np.cos(a),), SMOOTH),
    "COS": Op(np.cos, 1, lambda a: (-np.sin(a),), SMOOTH),
    "TAN": Op(np.tan, 1, lambda a: (1.0 / np.cos(a) ** 2,), UNIT),
    "ARCSIN": Op(np.arcsin, 1, lambda a: (1.0 / np.sqrt(1.0 - a**2),), UNIT),
    "ARCCOS": Op(np.arccos, 1, lambda a: (-1.0 / np.sqrt(1.0 - a**2),), UNIT),
    "ARCTAN": Op(np.arctan, 1, lambda a: (1.0 / (1.0 + a**2),), SMOOTH),
    "SINH": Op(np.sinh, 1, lambda a: (np.cosh(a),), SMOOTH),
    "COSH": Op(np.cosh, 1, lambda a: (np.sinh(a),), SMOOTH),
    "TANH": Op(np.tanh, 1, lambda a: (1.0 / np.cosh(a) ** 2,), SMOOTH),
    "ARCSINH": Op(np.arcsinh, 1, lambda a: (1.0 / np.sqrt(a**2 + 1.0),), SMOOTH),
    "ARCCOSH": Op(np.arccosh, 1, lambda a: (1.0 / np.sqrt(a**2 - 1.0),),
                  (_f([1.2, 1.5, 2.0, 2.9, 4.4, 7.5]),)),
    "ARCTANH": Op(np.arctanh, 1, lambda a: (1.0 / (1.0 - a**2),), UNIT),
    "ERF": Op(sp.erf, 1, lambda a: (TWO_OVER_SQRT_PI * np.exp(-(a**2)),), SMOOTH),
    "ERFC": Op(sp.erfc, 1, lambda a: (-TWO_OVER_SQRT_PI * np.exp(-(a**2)),), SMOOTH),
    "EXPIT": Op(sp.expit, 1, lambda a: (np.exp(-a) / (1.0 + np.exp(-a)) ** 2,), SMOOTH),
    "LOGIT": Op(sp.logit, 1, lambda a: (1.0 / a + 1.0 / (1.0 - a),),
                (_f([0.1, 0.3, 0.45, 0.6, 0.8, 0.9]),)),
    "FLOOR": Op(np.floor, 1, lambda a: (zero(a),), FRACTIONAL),
    "CEIL": Op(np.ceil, 1, lambda a: (zero(a),), FRACTIONAL),
    "RINT": Op(np.rint, 1, lambda a: (zero(a),), FRACTIONAL),
    "TRUNC": Op(np.trunc, 1, lambda a: (zero(a),), FRACTIONAL),
    "HEAVISIDE": Op(np.heaviside, 2, lambda a, b: (zero(a), _f(a == 0)), (AWAY0[0], PAIRS[1])),
}

NAMES = sorted(REF)
BINARY = [n for n in NAMES if REF[n].arity == 2]

INF, NAN = np.inf, np.nan
UNARY_EDGES = _f([0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 0.25, 0.75, 1.5, 3.7, -3.7,
                  np.pi / 2, np.pi, 1e-8, -1e-8, 0.999999, 1.000001, -0.999999, 1e-300,
                  -1e-300, 5e-324, 1e300, -1e300, 40.0, -40.0, 709.0, 710.0, -745.0, -750.0,
                  2.5, -2.5, 1e17, 0.45, 0.5000001, 0.55, INF, -INF, NAN])
_B = [0.0, -0.0, 1.0, -1.0, 0.5, -2.5, 3.0, 7.0, 1e300, -1e-300, INF, -INF, NAN]
BINARY_EDGES = tuple(_f(v) for v in zip(*itertools.product(_B, _B)))
SELECT_EDGES = tuple(_f(v) for v in zip(*itertools.product(
    [0.0, -0.0, 1.0, -2.0, NAN, INF], [0.0, 1.5, -INF, NAN], [-0.0, 2.5, INF, NAN])))


def edges(name):
    arity = REF[name].arity
    if arity == 1:
        return (UNARY_EDGES,)
    if arity == 2:
        return BINARY_EDGES
    return SELECT_EDGES


def numpy_value(fn, *args):
    with np.errstate(all="ignore"):
        return np.asarray(fn(*args), dtype=np.float64)


def assert_ulp_close(actual, desired, ulps=4):
    """Equal within ``ulps`` units in the last place; nan and inf exactly where NumPy has them."""
    actual = np.asarray(actual, dtype=np.float64)
    desired = np.asarray(desired, dtype=np.float64)
    assert actual.shape == desired.shape
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(desired), err_msg="nan positions")
    both = ~np.isnan(desired)
    inf = np.isinf(desired) | np.isinf(actual)
    np.testing.assert_array_equal(actual[both & inf], desired[both & inf], err_msg="infinities")
    fin = both & ~inf
    a, d = actual[fin], desired[fin]
    tol = ulps * np.spacing(np.maximum(np.abs(a), np.abs(d)))
    bad = np.abs(a - d) > tol
    assert not bad.any(), (f"differ by more than {ulps} ulp: got {a[bad]!r}, "
                           f"NumPy {d[bad]!r}")


def tape_ops(F):
    """{op number: flags seen} of a Function's instructions."""
    ops = {}
    for w in F.tape_arrays()["op"]:
        ops.setdefault(int(w) & OP_MASK, set()).add(int(w) & ~OP_MASK)
    return ops


# ------------------------------------------------------------------ the table --

def test_every_op_has_a_reference():
    assert set(OPS) == set(REF), (
        f"ops without a reference row: {sorted(set(OPS) - set(REF))}; "
        f"reference rows without an op: {sorted(set(REF) - set(OPS))}")
    assert len(set(OPS.values())) == len(OPS)
    assert sorted(OPS.values()) == list(range(len(OPS)))
    for name, spec in REF.items():
        assert len(spec.domain) == spec.arity, name


@pytest.mark.parametrize("name", NAMES)
def test_op_traces_to_its_instruction(name):
    spec = REF[name]
    args = [np.zeros(4) for _ in range(spec.arity)]
    F = jx.compile(spec.fn, *args)
    assert OPS[name] in tape_ops(F), f"{spec.fn} did not trace to {name}"
    for word, flags in tape_ops(F).items():
        assert flags <= {0, A_IMM, B_IMM}, (word, flags)


# ---------------------------------------------------------------------- values --

@pytest.mark.parametrize("name", NAMES)
def test_values_match_numpy(name):
    """Interior and edge points, traced and run by the VM, single points and a batch."""
    spec = REF[name]
    for points in (spec.domain, edges(name)):
        F = jx.compile(spec.fn, *[np.zeros_like(p) for p in points])
        want = numpy_value(spec.fn, *points)
        assert_ulp_close(F(*points), want, spec.ulps)
        # the same points as a batch of scalars
        G = jx.compile(spec.fn, *[np.zeros(()) for _ in points])
        assert_ulp_close(G(*points), want, spec.ulps)


@pytest.mark.parametrize("name", NAMES)
def test_op_value_matches_numpy(name):
    """The C table itself on scalars (op_value) vs NumPy."""
    spec = REF[name]
    op = OPS[name]
    for points in (spec.domain, edges(name)):
        want = numpy_value(spec.fn, *points)
        got = np.array([_op_value(op, spec.arity, *(p[i] for p in points))
                        for i in range(len(points[0]))])
        assert_ulp_close(got, want, spec.ulps)


def _op_value(op, arity, *args):
    if arity == 3:
        c, a, b = args
        return op_value(op, a, b, c)
    return op_value(op, *args)


def _op_partials(op, arity, *args):
    if arity == 3:
        c, a, b = args
        da, db = op_partials(op, a, b, c)
        return (0.0, da, db)
    d0, d1 = op_partials(op, *args)
    return (d0,) if arity == 1 else (d0, d1)


# ---------------------------------------------------------------- derivatives --

@pytest.mark.parametrize("name", NAMES)
def test_op_partials_match_formula(name):
    spec = REF[name]
    op = OPS[name]
    pts = spec.domain
    with np.errstate(all="ignore"):
        want = [np.asarray(d, dtype=np.float64) * np.ones_like(pts[0]) for d in spec.deriv(*pts)]
    got = np.array([_op_partials(op, spec.arity, *(p[i] for p in pts))
                    for i in range(len(pts[0]))]).T
    for k in range(len(want)):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=0,
                                   err_msg=f"{name}: partial {k}")
    if spec.arity == 1:   # a unary op has no second partial
        got_d1 = [op_partials(op, float(x))[1] for x in pts[0]]
        assert got_d1 == [0.0] * len(pts[0])


def _analytic(spec, pts, nums):
    """The analytic Jacobian (d out / d arg k, k in nums) of an elementwise op."""
    with np.errstate(all="ignore"):
        partials = [np.asarray(d, dtype=np.float64) * np.ones_like(pts[0])
                    for d in spec.deriv(*pts)]
    blocks = tuple(np.diag(partials[k]) for k in nums)
    return blocks if len(nums) > 1 else blocks[0]


@pytest.mark.parametrize("name", NAMES)
def test_jacobian_matches_formula_and_differences(name):
    spec = REF[name]
    pts = spec.domain
    if spec.arity == 1:
        check_jacobian(spec.fn, *pts, expected=_analytic(spec, pts, (0,)), expected_rtol=1e-12)
    elif spec.arity == 2:
        check_jacobian(spec.fn, *pts, argnums=(0, 1), expected=_analytic(spec, pts, (0, 1)),
                       expected_rtol=1e-12)
    else:
        # the condition has derivative 0 (analytic only: differences would cross c == 0)
        check_jacobian(spec.fn, *pts, argnums=(0, 1, 2), fd=False,
                       expected=_analytic(spec, pts, (0, 1, 2)), expected_rtol=1e-12)
        check_jacobian(spec.fn, *pts, argnums=(1, 2), expected=_analytic(spec, pts, (1, 2)),
                       expected_rtol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_jacobian_of_batch_of_scalars(name):
    """The op on a scalar argument, evaluated as a batch: diagonal entries, both modes."""
    spec = REF[name]
    pts = spec.domain
    F = jx.compile(spec.fn, *[np.zeros(()) for _ in pts])
    with np.errstate(all="ignore"):
        want = [np.asarray(d, dtype=np.float64) * np.ones_like(pts[0]) for d in spec.deriv(*pts)]
    nums = tuple(range(spec.arity))
    for mode in ("forward", "reverse"):
        got = F.jacobian(*pts, argnums=nums, mode=mode)
        assert len(got) == spec.arity
        for k in nums:
            assert got[k].shape == pts[0].shape
            np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=0,
                                       err_msg=f"{name} {mode} d/d{k}")


COMPARISONS = ["LESS", "LESS_EQUAL", "GREATER", "GREATER_EQUAL", "EQUAL", "NOT_EQUAL"]
OPERATORS = {"LESS": lambda x, y: x < y, "LESS_EQUAL": lambda x, y: x <= y,
             "GREATER": lambda x, y: x > y, "GREATER_EQUAL": lambda x, y: x >= y,
             "EQUAL": lambda x, y: x == y, "NOT_EQUAL": lambda x, y: x != y}


@pytest.mark.parametrize("name", COMPARISONS)
def test_comparisons_through_where(name):
    """x < y (the operator) inside np.where picks a branch; derivatives follow it."""
    cmp = OPERATORS[name]
    f = lambda x, y: np.where(cmp(x, y), np.sin(x) * y, x - 2.0 * y)  # noqa: E731
    F = jx.compile(f, np.zeros_like(BINARY_EDGES[0]), np.zeros_like(BINARY_EDGES[1]))
    assert OPS[name] in tape_ops(F) and OPS["SELECT"] in tape_ops(F)
    assert_ulp_close(F(*BINARY_EDGES), numpy_value(f, *BINARY_EDGES), 4)
    x, y = PAIRS
    x = np.concatenate([x, [1.5, -0.5]])      # ties, for == and <=
    y = np.concatenate([y, [1.5, -0.5]])
    c = cmp(x, y)
    expected = (np.diag(np.where(c, np.cos(x) * y, 1.0)), np.diag(np.where(c, np.sin(x), -2.0)))
    check_jacobian(f, x, y, argnums=(0, 1), expected=expected, expected_rtol=1e-14, fd=False)
    check_jacobian(f, x[:-2], y[:-2], argnums=(0, 1), expected=tuple(e[:-2, :-2] for e in expected),
                   expected_rtol=1e-14)


# ----------------------------------------------------------------- immediates --

def _imm_cases():
    for name in BINARY:
        yield pytest.param(name, "right", id=f"{name}-x_op_c")
        yield pytest.param(name, "left", id=f"{name}-c_op_x")


@pytest.mark.parametrize("name, side", list(_imm_cases()))
def test_binary_op_with_a_constant_operand(name, side):
    spec = REF[name]
    a_pts, b_pts = spec.domain
    if side == "right":       # x op c
        c = float(b_pts[0])
        xs = a_pts
        fn = lambda x: spec.fn(x, c)  # noqa: E731
        deriv = lambda x: spec.deriv(x, np.full_like(x, c))[0]  # noqa: E731
    else:                     # c op x
        c = float(a_pts[0])
        xs = b_pts
        fn = lambda x: spec.fn(c, x)  # noqa: E731
        deriv = lambda x: spec.deriv(np.full_like(x, c), x)[1]  # noqa: E731
    F = jx.compile(fn, np.zeros_like(xs))
    ops = tape_ops(F)
    # the constant is an immediate: no constant slot, the op flagged
    assert OPS[name] in ops
    assert ops[OPS[name]] & {A_IMM, B_IMM}, f"{name}: constant operand is not an immediate"
    assert F.tape_arrays()["const_value"].size == 0
    assert F.n_instructions == xs.size
    # values at the edges
    G = jx.compile(fn, np.zeros_like(UNARY_EDGES))
    assert_ulp_close(G(UNARY_EDGES), numpy_value(fn, UNARY_EDGES), spec.ulps)
    with np.errstate(all="ignore"):
        expected = np.diag(np.asarray(deriv(xs), dtype=np.float64) * np.ones_like(xs))
    check_jacobian(fn, xs, expected=expected, expected_rtol=1e-12, F=F)


@pytest.mark.parametrize("expr, value, slope", [
    (lambda x: x**3.0, -2.0, 12.0),          # integer power at a negative base
    (lambda x: x**3, -1.5, 6.75),
    (lambda x: x**-2, -0.5, 16.0),
    (lambda x: 2.0**x, 0.0, LN2),
    (lambda x: 3.0 / x, -2.0, -0.75),
    (lambda x: x - 4.0, 1.0, 1.0),
    (lambda x: 4.0 - x, 1.0, -1.0),
    (lambda x: x / 4.0, 1.0, 0.25),
    (lambda x: 0.0**x, 2.0, 0.0),            # 0**x == 0 for x > 0: slope 0, not nan
    (lambda x: x**0.0 * 5.0, -3.0, 0.0),     # x**0 == 1
])
def test_immediates_hand_values(expr, value, slope):
    x = np.array([value])
    J = check_jacobian(expr, x, expected=np.array([[slope]]), fd=slope != 0.0 or value != 2.0)
    assert np.all(np.isfinite(J))


def test_integer_powers_are_exact():
    x = np.array([-3.0, -1.5, 0.0, 1.1, 7.0])
    F = jx.compile(lambda v: v**3, x)
    np.testing.assert_array_equal(F(x), x**3)
    J = F.jacobian(x)
    np.testing.assert_array_equal(np.diag(J), 3 * x**2)
    assert np.all(np.isfinite(J))


# ------------------------------------------------------------ special partials --

@pytest.mark.parametrize("name, args, want", [
    ("MAXIMUM", (2.0, 2.0), (0.5, 0.5)),      # a tie splits the derivative
    ("MINIMUM", (-1.0, -1.0), (0.5, 0.5)),
    ("MAXIMUM", (NAN, 1.0), (1.0, 0.0)),      # nan propagates from a, so a "wins"
    ("MAXIMUM", (1.0, NAN), (0.0, 1.0)),
    ("FMAX", (NAN, 1.0), (0.0, 1.0)),         # fmax ignores the nan: b wins
    ("FMIN", (1.0, NAN), (1.0, 0.0)),
    ("POW", (0.0, 2.5), (0.0, 0.0)),          # 0**b is flat in b; b*0**(b-1) == 0
    ("POW", (-2.0, 0.0), (0.0, NAN)),         # x**0: flat in x; d/db needs log(-2)
    ("POW", (0.0, 0.0), (0.0, -INF)),         # x**0 flat in x at 0 too (b*0**-1 is nan)
    ("ABS", (0.0,), (0.0, 0.0)),
    ("ARCSINH", (1e200,), (1.0 / 1e200, 0.0)),    # 1 / sqrt(a^2 + 1), with a^2 past DBL_MAX
    ("ARCSINH", (-1e200,), (1.0 / 1e200, 0.0)),
    ("SQRT", (0.0,), (INF, 0.0)),
    ("LOG", (0.0,), (INF, 0.0)),
])
def test_documented_partials(name, args, want):
    with np.errstate(all="ignore"):
        got = op_partials(OPS[name], *args)
    np.testing.assert_array_equal(got, want)


def test_op_functions_refuse_unknown_ops():
    with pytest.raises(ValueError):
        op_value(len(OPS), 1.0)
    with pytest.raises(ValueError):
        op_partials(-1, 1.0)


# ------------------------------------------------- ops.def's FIXED column claims --

OPS_DEF = Path(__file__).resolve().parent.parent / "src_c" / "ops.def"
FIXED_FLAGS = {"JX_K": 1, "JX_K_BI": 2, "JX_K_AI": 4}


def _split_top_level(text):
    """Split 'a, f(b, c), d' at the commas outside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
            continue
        depth += (ch == "(") - (ch == ")")
        cur += ch
    parts.append(cur.strip())
    return parts


def ops_def_rows():
    """{name: [fields]} of the OP(...) rows of src_c/ops.def."""
    rows = {}
    for line in OPS_DEF.read_text().splitlines():
        line = line.strip()
        if line.startswith("OP(") and line.endswith(")"):
            fields = _split_top_level(line[3:-1])
            rows[fields[0]] = fields
    return rows


def fixed_claims():
    """{name: flag bits} from the FIXED column (empty if ops.def has no such column)."""
    claims = {}
    for name, fields in ops_def_rows().items():
        if len(fields) < 7 or fields[6] == "0":
            continue
        bits = 0
        for flag in fields[6].split("|"):
            bits |= FIXED_FLAGS[flag.strip()]
        claims[name] = bits
    return claims


def test_ops_def_rows_are_the_op_table():
    rows = ops_def_rows()
    assert list(rows) == sorted(OPS, key=OPS.get)       # same names, same order
    for name, fields in rows.items():
        assert int(fields[1]) == REF[name].arity, name


@pytest.mark.parametrize("name", NAMES)
def test_fixed_partials_claims(name):
    """An op whose partials ops.def declares constant has them constant at every point
    (random points and edge points, nan and inf included)."""
    bits = fixed_claims().get(name, 0)
    if not bits:
        assert name not in fixed_claims()
        return
    op = OPS[name]
    rng = np.random.default_rng(OPS[name])
    pts = np.concatenate([rng.standard_normal(40) * 10.0, UNARY_EDGES])
    others = np.concatenate([rng.standard_normal(8) * 10.0, _f([1.0, -2.5, 0.5])])
    with np.errstate(all="ignore"):
        if bits & FIXED_FLAGS["JX_K"]:
            ref = op_partials(op, 1.0, 1.0)
            for a in pts:
                for b in (others if REF[name].arity == 2 else [0.0]):
                    assert op_partials(op, a, b) == ref, (name, a, b)
                    if REF[name].arity == 2:
                        assert op_partials(op, b, a) == ref, (name, b, a)
        if bits & FIXED_FLAGS["JX_K_BI"]:      # b an immediate c: d0 depends on c alone
            for c in others:
                ref = op_partials(op, 1.0, c)[0]
                for a in pts:
                    assert op_partials(op, a, c)[0] == ref, (name, a, c)
        if bits & FIXED_FLAGS["JX_K_AI"]:      # a an immediate c: d1 depends on c alone
            for c in others:
                ref = op_partials(op, c, 1.0)[1]
                for b in pts:
                    assert op_partials(op, c, b)[1] == ref, (name, c, b)


IMMEDIATES = (1.45, -2.2, 0.5, 3.0, 0.0, -0.0)


def _observed_partials(name, flags, c):
    """The set of (d0, d1) the C partials give an instruction of op ``name`` (``flags``:
    its immediate operand, whose value is ``c``; the partial of an immediate is never
    formed, 0) over random and edge points (nan, inf, signed zeros): independent of ops.def's
    FIXED column."""
    op, arity = OPS[name], REF[name].arity
    rng = np.random.default_rng(OPS[name] + 77)
    pts = np.concatenate([rng.standard_normal(40) * 10.0, UNARY_EDGES])
    others = np.concatenate([rng.standard_normal(8) * 10.0, _f([0.0, 1.0, -2.5, NAN, INF])])
    with np.errstate(all="ignore"):
        if arity == 1:
            return {(op_partials(op, a)[0], 0.0) for a in pts}
        if arity == 3:
            return {op_partials(op, a, b, s) for a in pts[:12] for b in others
                    for s in (0.0, 1.0, -2.0, NAN)}
        if flags & B_IMM:
            return {(op_partials(op, a, c)[0], 0.0) for a in pts}
        if flags & A_IMM:
            return {(0.0, op_partials(op, c, b)[1]) for b in pts}
        return ({op_partials(op, a, b) for a in pts for b in others}
                | {op_partials(op, b, a) for a in pts for b in others})


def _one_instruction_tape(word, c):
    """A hand-made tape of one instruction: op word ``word`` over input slots 0, 1
    (SELECT's condition: slot 2), its immediate ``c``."""
    return Tape({"op": [word], "dst": [3], "a": [0], "b": [1], "s": [2], "imm": [c],
                 "out_slot": [3], "const_value": [], "n_in": 3, "n_slots": 4})


@pytest.mark.parametrize("name", NAMES)
def test_fixed_partials_are_used_wherever_they_are_constant(name):
    """The tape marks an instruction fixed (its batched sweeps then use one number instead
    of a partial per point: ``Tape.fixed_partials()``) exactly where its kind of
    instruction (the op, and which operand is an immediate) has partials observed to be one
    constant whatever the operands, for every immediate; those constants when finite.  A
    FIXED claim that ops.def loses is caught here, as a false one is above."""
    op = OPS[name]
    kinds = [0] + ([A_IMM, B_IMM] if REF[name].arity == 2 else [])
    for flags in kinds:
        imms = IMMEDIATES if flags else (0.0,)
        seen = {c: _observed_partials(name, flags, c) for c in imms}
        constant = all(len(v) == 1 for v in seen.values())
        for c, partials in seen.items():
            d0, d1 = next(iter(partials))
            want = constant and math.isfinite(d0) and math.isfinite(d1)
            fixed, f0, f1 = _one_instruction_tape(op | flags, c).fixed_partials()
            assert bool(fixed[0]) == want, (
                f"{name} (flags {flags:#x}, immediate {c}): partials "
                f"{'one finite constant' if want else 'not a finite constant'}, the "
                f"tape's fixed flag says {bool(fixed[0])}")
            if want:
                assert (f0[0], f1[0]) == (d0, d1), (name, flags, c)


def test_traced_tapes_use_the_fixed_partials():
    """On traced tapes too (the immediates the graph makes): x + y, x * 2.5, x / 4.0,
    x % 3.0, floor, comparisons and np.heaviside's h0 slope are fixed; x * y, sin, x ** 2.5
    are not."""
    def f(x, y):
        return (x + y, x * 2.5, x / 4.0, np.remainder(x, 3.0), np.floor(x), (x < y) * 1.0,
                np.heaviside(2.0, y), x * y, np.sin(x), x ** 2.5)
    want = [True, True, True, True, True, True, True, False, False, False]
    F = jx.compile(f, np.ones(1), np.ones(1))
    fixed = F.tape.fixed_partials()[0]
    arrays = F.tape_arrays()
    by_slot = dict(zip(arrays["dst"].tolist(), fixed.tolist()))
    got = [by_slot[s] for s in arrays["out_slot"].tolist() if s in by_slot]
    assert len(got) == len(want), F.tape.disassemble()
    assert got == want, F.tape.disassemble()


# ---------------------------------------------- jacext/ops.py: the parser and derived rules --

A_, B_, C_ = ("var", "a"), ("var", "b"), ("var", "c")


@pytest.mark.parametrize("text, tree", [
    ("a", A_),
    ("2.5", ("num", 2.5)),
    ("1.5e-3", ("num", 0.0015)),
    ("2", ("num", 2.0)),
    ("a - b * c", ("bin", "-", A_, ("bin", "*", B_, C_))),
    ("(a - b) * c", ("bin", "*", ("bin", "-", A_, B_), C_)),
    ("a - b - c", ("bin", "-", ("bin", "-", A_, B_), C_)),          # left to right
    ("a / b * c", ("bin", "*", ("bin", "/", A_, B_), C_)),
    ("-a * a", ("bin", "*", ("neg", A_), A_)),                      # unary minus binds tighter
    ("-(a * a)", ("neg", ("bin", "*", A_, A_))),
    ("a * -b", ("bin", "*", A_, ("neg", B_))),
    ("(a > b) ? 1.0 : 0.0", ("cond", ("bin", ">", A_, B_), ("num", 1.0), ("num", 0.0))),
    ("a < b ? a : b", ("cond", ("bin", "<", A_, B_), A_, B_)),
    ("a ? b : c ? a : b", ("cond", A_, B_, ("cond", C_, A_, B_))),  # ?: to the right
    ("a == b ? 0.5 : a", ("cond", ("bin", "==", A_, B_), ("num", 0.5), A_)),
    ("a < b == b < c", ("bin", "==", ("bin", "<", A_, B_), ("bin", "<", B_, C_))),
    ("a + b < c", ("bin", "<", ("bin", "+", A_, B_), C_)),
    ("(double)(a < b)", ("cast", ("bin", "<", A_, B_))),
    ("(double)a * b", ("bin", "*", ("cast", A_), B_)),
    ("pow(a, b - 1.0)", ("call", "pow", (A_, ("bin", "-", B_, ("num", 1.0))))),
    ("cos(a)", ("call", "cos", (A_,))),
    ("1.0 / sqrt(1.0 - a * a)",
     ("bin", "/", ("num", 1.0), ("call", "sqrt", (("bin", "-", ("num", 1.0),
                                                    ("bin", "*", A_, A_)),)))),
    ("JX_2_SQRTPI * exp(-a * a)",
     ("bin", "*", ("var", "JX_2_SQRTPI"), ("call", "exp", (("bin", "*", ("neg", A_), A_),)))),
])
def test_parse_c_expressions(text, tree):
    assert ops.parse(text) == tree


@pytest.mark.parametrize("text", ["", "a +", "a $ b", "(a", "a)", "a b", "f(a,", "? a : b",
                                  "a ? b", "a ? b c", "pow(a b)", "a = b", "a @ b", "1.0.0"])
def test_parse_refuses_bad_text(text):
    with pytest.raises(SyntaxError):
        ops.parse(text)


def test_words_name_the_ops():
    words = ops.WORDS
    assert words["+"] == "ADD" and words["-"] == "SUB" and words["*"] == "MUL"
    assert words["/"] == "DIV"
    assert words["cos"] == "COS" and words["pow"] == "POW" and words["exp"] == "EXP"
    assert words["<"] == "LESS" and words["<="] == "LESS_EQUAL" and words["!="] == "NOT_EQUAL"
    assert words["?:"] == "SELECT"
    assert words["neg"] == "NEG"
    assert set(words.values()) <= set(OPS)
    assert len(set(words.values())) == len(words)        # one op per word


class _ScalarEmitter:
    """Builds a rule's partials on scalars: every op through the C table (op_value)."""

    def __call__(self, name, x, y=0.0, c=0.0):
        assert name in OPS, name
        return op_value(name, x, y, c)       # SELECT: (x, y, cond), op_value's s = cond

    def c(self, v):
        return v


def _same(x, y):
    """Equal bit for bit, nan as nan (whatever its payload)."""
    x, y = float(x), float(y)
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    return x == y and math.copysign(1.0, x) == math.copysign(1.0, y)


def _rule_points(name):
    """(a, b, s) of the op's interior and edge points (SELECT: REF's (c, a, b) order)."""
    spec = REF[name]
    for pts in (spec.domain, edges(name)):
        cols = np.broadcast_arrays(*[np.asarray(p, dtype=np.float64) for p in pts])
        for i in range(cols[0].size):
            v = [float(col.flat[i]) for col in cols]
            if spec.arity == 3:
                yield v[1], v[2], v[0]
            elif spec.arity == 2:
                yield v[0], v[1], 0.0
            else:
                yield v[0], 0.0, 0.0


@pytest.mark.parametrize("op", ops.TABLE, ids=[op.name for op in ops.TABLE])
def test_derived_rule_equals_the_c_partials(op):
    """The Python rule parsed from ops.def, evaluated on scalars through the C table, gives
    exactly the C partials: the Jacobian-tape builder's rules are the sweeps'."""
    e = _ScalarEmitter()
    n = 0
    with np.errstate(all="ignore"):
        for a, b, s in _rule_points(op.name):
            z = op_value(op.name, a, b, s)
            p0, p1 = ops.partials(op.number, e, a, b, z, s if op.arity == 3 else None)
            d0, d1 = op_partials(op.name, a, b, s)
            assert _same(p0, d0), (op.name, (a, b, s), "d0", p0, d0)
            if op.arity == 1:
                assert p1 is None and d1 == 0.0
            else:
                assert _same(p1, d1), (op.name, (a, b, s), "d1", p1, d1)
            n += 1
    assert n >= 40
    # the op word's immediate flags do not change the rule
    for flag in (A_IMM, B_IMM):
        a, b, s = next(iter(_rule_points(op.name)))
        z = op_value(op.name, a, b, s)
        sel = s if op.arity == 3 else None
        assert ops.partials(op.number | flag, e, a, b, z, sel) == ops.partials(
            op.number, e, a, b, z, sel)
