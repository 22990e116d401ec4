"""The expression DAG (jacext/_graph.pyx): hash-consing, folding, identities."""
from __future__ import annotations

import math

import numpy as np
import pytest
from jacext._graph import KIND_CONST, KIND_INPUT, Graph

import jacext as jx
from jacext.ops import A_IMM, B_IMM, OP_MASK, OPS
from jacext.testing import op_value

NAME = {v: k for k, v in OPS.items()}


def kind(g, i):
    """'INPUT', 'CONST', or the op name with |A_IMM / |B_IMM."""
    word = g.node(int(i))[0]
    if word == KIND_INPUT:
        return "INPUT"
    if word == KIND_CONST:
        return "CONST"
    name = NAME[word & OP_MASK]
    if word & A_IMM:
        name += "|A_IMM"
    if word & B_IMM:
        name += "|B_IMM"
    return name


def ids(*v):
    return np.array(v, dtype=np.int64)


def one(g, op, x, y=None, c=None):
    """apply over single ids; returns the one result id."""
    args = [ids(x)] + ([ids(y)] if y is not None else []) + ([ids(c)] if c is not None else [])
    return int(g.apply(OPS[op], *args)[0])


def const_value(g, i):
    assert kind(g, i) == "CONST"
    return g.node(int(i))[4]


@pytest.fixture
def g():
    return Graph()


@pytest.fixture
def xy(g):
    x, y = g.inputs(2)
    return int(x), int(y)


# ----------------------------------------------------------- hash-consing --

def test_inputs_are_distinct_nodes(g):
    a = g.inputs(3)
    b = g.inputs(2)
    np.testing.assert_array_equal(a, [0, 1, 2])
    np.testing.assert_array_equal(b, [3, 4])
    assert g.n_inputs == 5 and len(g) == 5
    assert [g.node(i)[:2] for i in range(5)] == [(KIND_INPUT, k) for k in range(5)]


def test_same_op_and_operands_same_node(g, xy):
    x, y = xy
    s1 = one(g, "SIN", x)
    s2 = one(g, "SIN", x)
    assert s1 == s2
    n = len(g)
    assert one(g, "ADD", s1, y) == one(g, "ADD", s2, y)
    assert len(g) == n + 1
    assert one(g, "COS", x) != s1
    assert one(g, "SIN", y) != s1


def test_commutative_operands_are_canonical(g, xy):
    x, y = xy
    for op in ("ADD", "MUL", "MAXIMUM", "MINIMUM", "HYPOT", "EQUAL", "NOT_EQUAL", "FMAX",
               "FMIN", "LOGADDEXP"):
        assert one(g, op, x, y) == one(g, op, y, x), op
        node = g.node(one(g, op, x, y))
        assert node[1] < node[2]        # smaller id first
    for op in ("SUB", "DIV", "POW", "ATAN2", "LESS", "GREATER", "MOD"):
        assert one(g, op, x, y) != one(g, op, y, x), op


def test_bulk_apply_hash_conses_within_one_call(g):
    x = g.inputs(4)
    res = g.apply(OPS["EXP"], ids(x[0], x[1], x[0], x[1], x[2]))
    assert res[0] == res[2] and res[1] == res[3]
    assert len(set(res.tolist())) == 3
    assert len(g) == 4 + 3


def test_constants_are_interned_by_bits(g):
    c = g.consts(np.array([1.5, 1.5, 0.0, -0.0, np.nan, np.nan, np.inf]))
    assert c[0] == c[1]
    assert c[2] != c[3]             # +0.0 and -0.0 differ
    assert c[4] == c[5]             # the same nan
    assert g.const(1.5) == c[0]
    assert math.copysign(1.0, const_value(g, c[3])) == -1.0
    assert all(g.node(int(i))[0] == KIND_CONST for i in c)


def test_node_ids_are_topological(g):
    x = g.inputs(3)
    s = g.apply(OPS["SIN"], x)
    m = g.apply(OPS["MUL"], s, x[::-1].copy())
    t = g.apply(OPS["SELECT"], m, s, g.apply(OPS["GREATER"], x, m))
    for i in range(len(g)):
        op, a, b, sel, _ = g.node(i)
        for operand in (a, b, sel):
            if op not in (KIND_INPUT, KIND_CONST) and operand >= 0:
                assert operand < i
    assert t.shape == (3,)


def test_large_graph_grows_and_stays_consistent(g):
    n = 200_000
    x = g.inputs(n)
    a = g.apply(OPS["SIN"], x)
    b = g.apply(OPS["ADD"], a, x)
    assert len(g) == 3 * n
    # every node is found again after the table has grown many times
    np.testing.assert_array_equal(g.apply(OPS["SIN"], x), a)
    np.testing.assert_array_equal(g.apply(OPS["ADD"], x, a), b)
    assert len(g) == 3 * n


# -------------------------------------------------------- constant folding --

FOLD_UNARY = ["NEG", "ABS", "SIGN", "SQUARE", "SQRT", "CBRT", "RECIPROCAL", "EXP", "EXP2",
              "EXPM1", "LOG", "LOG2", "LOG10", "LOG1P", "SIN", "COS", "TAN", "ARCSIN", "ARCCOS",
              "ARCTAN", "SINH", "COSH", "TANH", "ARCSINH", "ARCCOSH", "ARCTANH", "ERF", "ERFC",
              "EXPIT", "LOGIT", "FLOOR", "CEIL", "RINT", "TRUNC"]
FOLD_BINARY = ["ADD", "SUB", "MUL", "DIV", "POW", "MOD", "FMOD", "FLOOR_DIVIDE", "ATAN2",
               "HYPOT", "MAXIMUM", "MINIMUM", "FMAX", "FMIN", "LOGADDEXP", "LESS",
               "LESS_EQUAL", "GREATER", "GREATER_EQUAL", "EQUAL", "NOT_EQUAL"]
VALUES = [0.3, -0.7, 2.5, 0.0, -0.0, 1.0, np.inf, -np.inf, np.nan]


def same_bits(a, b):
    return np.float64(a).tobytes() == np.float64(b).tobytes() or (np.isnan(a) and np.isnan(b))


@pytest.mark.parametrize("op", FOLD_UNARY)
def test_unary_folding_matches_the_c_value(g, op):
    with np.errstate(all="ignore"):
        for v in VALUES:
            r = one(g, op, g.const(v))
            assert same_bits(const_value(g, r), op_value(OPS[op], v)), (op, v)


@pytest.mark.parametrize("op", FOLD_BINARY)
def test_binary_folding_matches_the_c_value(g, op):
    for u in VALUES:
        for v in VALUES:
            r = one(g, op, g.const(u), g.const(v))
            assert same_bits(const_value(g, r), op_value(OPS[op], u, v)), (op, u, v)


def test_select_folding(g, xy):
    x, y = xy
    assert one(g, "SELECT", x, y, g.const(1.0)) == x
    assert one(g, "SELECT", x, y, g.const(0.0)) == y
    assert one(g, "SELECT", x, y, g.const(-0.0)) == y
    assert one(g, "SELECT", x, y, g.const(np.nan)) == x      # nan is true, as in NumPy
    c = one(g, "GREATER", x, y)
    assert one(g, "SELECT", x, x, c) == x                     # both branches the same
    s = one(g, "SELECT", x, y, c)
    assert kind(g, s) == "SELECT" and g.node(s)[1:4] == (x, y, c)


def test_folding_makes_no_op_node(g):
    n0 = len(g)
    a, b = g.const(2.0), g.const(3.0)
    r = one(g, "MUL", a, b)
    assert const_value(g, r) == 6.0
    assert len(g) == n0 + 3


# ------------------------------------------------------------- identities --

def test_exact_identities_fold_to_the_operand(g, xy):
    x, _ = xy
    one_ = g.const(1.0)
    assert one(g, "MUL", x, one_) == x
    assert one(g, "MUL", one_, x) == x
    assert one(g, "DIV", x, one_) == x
    assert one(g, "SUB", x, g.const(0.0)) == x
    assert one(g, "ADD", x, g.const(-0.0)) == x
    assert one(g, "ADD", g.const(-0.0), x) == x
    assert one(g, "POW", x, one_) == x
    assert const_value(g, one(g, "POW", x, g.const(0.0))) == 1.0    # NumPy: nan**0 == 1
    n = one(g, "NEG", x)
    assert one(g, "NEG", n) == x


def test_cheaper_equivalent_ops(g, xy):
    x, y = xy
    sq = one(g, "POW", x, g.const(2.0))
    assert kind(g, sq) == "SQUARE" and g.node(sq)[1] == x
    assert one(g, "MUL", x, x) == sq
    assert kind(g, one(g, "POW", x, g.const(0.5))) == "SQRT"
    assert kind(g, one(g, "POW", x, g.const(-1.0))) == "RECIPROCAL"
    assert kind(g, one(g, "DIV", g.const(1.0), x)) == "RECIPROCAL"
    assert kind(g, one(g, "MUL", x, g.const(-1.0))) == "NEG"
    assert one(g, "MUL", g.const(-1.0), one(g, "NEG", y)) == y


@pytest.mark.parametrize("op,c", [("MUL", 0.0), ("MUL", -0.0), ("DIV", -1.0), ("POW", 3.0),
                                  ("MUL", 2.0), ("SUB", 1.0)])
def test_not_folded_when_not_exact(g, xy, op, c):
    # x*0 is nan for x = nan or inf
    x, _ = xy
    r = one(g, op, x, g.const(c))
    assert r != x and kind(g, r) == f"{op}|B_IMM"
    assert g.node(r)[1] == x and g.node(r)[4] == c or same_bits(g.node(r)[4], c)


@pytest.mark.parametrize("op,c", [("ADD", 0.0), ("ADD", -0.0), ("SUB", 0.0), ("SUB", -0.0)])
def test_adding_a_zero_is_folded(g, xy, op, c):
    # x +- 0.0 is x but for the sign of a zero x (the module's rule: NumPy's values up to
    # the sign of a zero)
    x, _ = xy
    assert one(g, op, x, g.const(c)) == x
    if op == "ADD":
        assert one(g, op, g.const(c), x) == x


# (a * u) * v -> a * (u * v) where that is exact for every a: u a power of two with |u| >= 1,
# |v| >= 1, u * v finite (jacext/_graph.pyx, _exact_scale); the cases around each condition
_SCALES_FOLDED = [(2.0, 100.0), (-4.0, 2.5), (1024.0, -1.0000000000000002), (2.0, 2.0),
                  (8.0, 1e300)]
_SCALES_KEPT = [(0.5, 100.0),     # |u| < 1: a * 0.5 rounds a subnormal a
                (2.0, 0.01),      # |v| < 1: a * 2 overflows where a * 0.02 does not
                (3.0, 100.0),     # u not a power of two: a * 3 rounds
                (2.0, 1e308),     # u * v overflows
                (2.0, np.inf), (2.0, np.nan)]
_SCALE_POINTS = np.array([0.3, -1.7, 7.0 / 3.0, 1e5, -0.0, 0.0, 5e-324, -2.5e-320, 2.2e-308,
                          1e-300, 1e308, -1.7e308, 8.98846567431158e307, 1e300, np.inf,
                          -np.inf, np.nan, 1.0000000000000002, 0.1])


@pytest.mark.parametrize("u, v", _SCALES_FOLDED + _SCALES_KEPT)
def test_a_product_of_constant_factors_folds_only_where_exact(g, xy, u, v):
    x, _ = xy
    r = one(g, "MUL", one(g, "MUL", x, g.const(u)), g.const(v))
    folded = (u, v) in _SCALES_FOLDED
    assert (g.node(r)[1] == x) == folded
    if folded:
        assert kind(g, r) == "MUL|B_IMM" and g.node(r)[4] == u * v
    # the claim itself, in NumPy: one multiply by u * v gives (a * u) * v bit for bit
    a = _SCALE_POINTS
    with np.errstate(all="ignore"):
        two, once = (a * u) * v, a * (u * v)
    same = (two == once) & (np.signbit(two) == np.signbit(once)) | np.isnan(two) & np.isnan(once)
    assert same.all() or not folded, (u, v, a[~same])
    # and jacext's values are NumPy's (u * v folded or not), signed zeros and nan included
    F = jx.compile(lambda z, u=u, v=v: v * (u * z), a)
    assert F.n_instructions == (1 if folded else 2) * a.size
    with np.errstate(all="ignore"):
        got = F(a)
    real = ~np.isnan(two)
    assert np.array_equal(np.isnan(got), np.isnan(two))
    assert np.array_equal(got[real], two[real])
    assert np.array_equal(np.signbit(got[real]), np.signbit(two[real]))


@pytest.mark.parametrize("c", [3.0, -0.1, 2.0, 1e300, 5e-324])
def test_a_negation_times_a_constant_is_one_multiply(g, xy, c):
    """(-a) * c -> a * (-c), exact for every a (rounding is symmetric in the sign)."""
    x, _ = xy
    r = one(g, "MUL", one(g, "NEG", x), g.const(c))
    assert kind(g, r) == "MUL|B_IMM" and g.node(r)[1] == x and g.node(r)[4] == -c
    a = _SCALE_POINTS
    F = jx.compile(lambda z, c=c: c * (-z), a)
    assert F.n_instructions == a.size
    with np.errstate(all="ignore"):
        want, got = c * (-a), F(a)
    real = ~np.isnan(want)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(got[real], want[real])
    assert np.array_equal(np.signbit(got[real]), np.signbit(want[real]))


def test_kept_constant_factors_would_change_values():
    """The conditions are needed: for each kept pair some double gives another answer."""
    a = _SCALE_POINTS
    for u, v in _SCALES_KEPT[:4]:
        with np.errstate(all="ignore"):
            two, once = (a * u) * v, a * (u * v)
        differ = ~((two == once) | np.isnan(two) & np.isnan(once))
        assert differ.any(), (u, v)


# the constants the rewrites know (x * 1, x * -1, x / 1, x + -0, x - 0, x ** 0, 0.5, 1, 2, -1,
# 1 / x), and numbers next to them: one ulp either side, and 1e-10 relative away
_EXACT = (1.0, -1.0, 0.0, -0.0, 2.0, 0.5)
_NEAR = sorted({float(v) for c in _EXACT for v in (
    np.nextafter(c, np.inf), np.nextafter(c, -np.inf), c * (1 + 1e-10) if c else 1e-300,
    c * (1 - 1e-10) if c else -1e-300)} - set(_EXACT))
_BINARY_WITH_A_CONSTANT = {
    "x * c": (lambda x, c: x * c, lambda x, c: np.full_like(x, c)),
    "c * x": (lambda x, c: c * x, lambda x, c: np.full_like(x, c)),
    "x / c": (lambda x, c: x / c, lambda x, c: np.full_like(x, 1.0 / c)),
    "c / x": (lambda x, c: c / x, lambda x, c: -c / x**2),
    "x + c": (lambda x, c: x + c, lambda x, c: np.ones_like(x)),
    "c + x": (lambda x, c: c + x, lambda x, c: np.ones_like(x)),
    "x - c": (lambda x, c: x - c, lambda x, c: np.ones_like(x)),
    "c - x": (lambda x, c: c - x, lambda x, c: -np.ones_like(x)),
    "x ** c": (lambda x, c: x**c, lambda x, c: c * x ** (c - 1.0)),
}


def test_zero_minus_x_is_a_negation_whose_sign_moves_into_sums():
    """0.0 - x becomes -x (NumPy's value but for the sign of a zero: +0.0 - +0.0 is +0.0,
    -(+0.0) is -0.0; -0.0 - x is -x bit for bit), and the sign then moves out of products
    into sums: a folded cos(q) * 0.0 - sin(q) times t, added to a, is a - sin(q) * t."""
    x = np.array([1.5, -2.0, 0.0, -0.0, np.inf, np.nan])
    for c in (0.0, -0.0):
        F = jx.compile(lambda v, c=c: c - v, x)
        assert {line.split("=")[1].split()[0] for line in F.tape.disassemble()[:-1]} == {"NEG"}
        got, want = F(x), c - x
        assert np.array_equal(got, want, equal_nan=True)
        assert np.array_equal(np.signbit(got[:2]), np.signbit(want[:2]))
        np.testing.assert_array_equal(np.signbit(got[2:4]), [True, False])
    C = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    S = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])

    def rotations(q):   # cos(q) * 0.0 - sin(q) where C is 0 and S is -1
        T, U = (np.cos(v) * C + np.sin(v) * S for v in q[:2])
        return (T @ U @ T).ravel() * q[2]

    G = jx.compile(rotations, np.ones(3))
    assert "folded" in repr(G)
    lines = G.tape.disassemble()
    assert not [ln for ln in lines if "SUB 0.0," in ln], lines
    q = np.array([0.3, -1.1, 2.0])
    np.testing.assert_allclose(G(q), rotations(q), rtol=1e-15, atol=1e-16)


@pytest.mark.parametrize("expr", list(_BINARY_WITH_A_CONSTANT))
def test_no_rewrite_for_a_constant_merely_close_to_an_exact_one(expr):
    """x * c, c / x, x ** c ... with c next to 1, -1, 0, 2 or 0.5 (one ulp away, or 1e-10):
    the values are NumPy's own, bit for bit (sign of zero included), the Jacobian is the
    derivative at that c (an x * 1.0000000001 simplified like x * 1 is off by 1e-10), and
    the tape keeps the op with its immediate.  The exact constants themselves, which the
    graph does rewrite, give NumPy's bits too."""
    f, slope = _BINARY_WITH_A_CONSTANT[expr]
    x = np.array([0.3, 1.7, 3.7, 12.5, 1e5, 7.0 / 3.0, -2.2, -0.0, 0.0])
    for c in _NEAR + list(_EXACT):
        g = lambda v, c=c: f(v, c)  # noqa: E731
        with np.errstate(all="ignore"):
            want = g(x)
            F = jx.compile(g, x)
            got = F(x)
        real = ~np.isnan(want)
        # the documented differences, in the sign of a zero result only (README "Values"):
        # x + 0.0 and x - 0.0 fold to x, 0.0 - x to -x; at finite inputs x * 0.0 to +0.0
        signed = real & ~((c == 0.0) & (x == 0.0) & (expr in ("x + c", "c + x", "x - c")))
        signed &= ~((c == 0.0) & ~np.signbit(c) & (x == 0.0) & (expr == "c - x"))
        if c == 0.0 and expr in ("x * c", "c * x"):
            signed = np.zeros_like(signed)
        if expr == "x ** c" and c not in _EXACT:
            # pow is the C library's: within 4 ulp of NumPy's, which may use its own SIMD
            # pow (AVX-512 machines: one ulp apart at 1.7 ** -0.9999999999; README "Values")
            ulps = np.abs(got[real] - want[real]) / np.spacing(np.abs(want[real]))
            assert np.all((got[real] == want[real]) | (ulps <= 4)), (expr, c, got, want)
        else:
            assert np.array_equal(got[real], want[real]), (expr, c, got, want)
        assert np.array_equal(np.signbit(got[signed]), np.signbit(want[signed])), (expr, c)
        assert np.array_equal(np.isnan(got), np.isnan(want)), (expr, c)
        if c in _EXACT:
            continue
        words = [int(w) & OP_MASK for w in F.tape_arrays()["op"]]
        assert len(words) == x.size and len(set(words)) == 1, (expr, c, F.tape.disassemble())
        assert F.tape_arrays()["imm"][0] == c
        inner = np.abs(x) > 0.1                     # away from 0, where c / x and x ** c blow up
        J = np.diag(F.jacobian(x))[inner]
        with np.errstate(all="ignore"):
            d = slope(x, c)[inner]
        fin = np.isfinite(d)
        # (atol: a few subnormal steps, where c / x of c = 5e-324 rounds)
        np.testing.assert_allclose(J[fin], d[fin], rtol=4e-16, atol=1e-321, err_msg=f"{expr} {c}")


def test_constant_operands_become_immediates(g, xy):
    x, _ = xy
    r = one(g, "MUL", g.const(3.0), x)          # commuted: x * 3
    assert kind(g, r) == "MUL|B_IMM" and g.node(r)[1] == x and g.node(r)[4] == 3.0
    r = one(g, "SUB", g.const(3.0), x)          # 3 - x keeps its order
    assert kind(g, r) == "SUB|A_IMM" and g.node(r)[2] == x and g.node(r)[4] == 3.0
    r = one(g, "DIV", g.const(2.0), x)
    assert kind(g, r) == "DIV|A_IMM"
    r = one(g, "POW", g.const(2.0), x)
    assert kind(g, r) == "POW|A_IMM"


def test_ieee_semantics_survive_compilation():
    # what the graph keeps is what NumPy computes at nan, inf and signed zeros
    v = np.array([np.nan, np.inf, -0.0, 0.0, -2.0])
    # (x + 0.0 and x - (-0.0) differ at -0.0 only: tests/test_compile.py)
    fs = [lambda x: x * 0.0, lambda x: 0.0 * x,
          lambda x: x * 1.0, lambda x: x + (-0.0), lambda x: x ** 1, lambda x: x / 1.0,
          lambda x: x - 0.0, lambda x: x ** 0, lambda x: np.negative(-x), lambda x: x ** 2,
          lambda x: x ** 0.5, lambda x: x ** -1, lambda x: 1.0 / x, lambda x: x * -1.0]
    with np.errstate(all="ignore"):
        for f in fs:
            F = jx.compile(f, v)
            got, want = F(v), f(v)
            real = ~np.isnan(want)        # (IEEE leaves the sign of a nan unspecified)
            assert np.array_equal(np.signbit(got[real]), np.signbit(want[real])), f
            np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------ apply's checks --

def test_apply_rejects_bad_ids_and_ops(g):
    x = g.inputs(2)
    with pytest.raises(IndexError):
        g.apply(OPS["SIN"], ids(5))
    with pytest.raises(IndexError):
        g.apply(OPS["SIN"], ids(-1))
    with pytest.raises(ValueError):
        g.apply(999, x)
    with pytest.raises(ValueError):
        g.apply(OPS["ADD"], x, ids(0, 1, 0))       # lengths differ
    with pytest.raises(ValueError):
        g.apply(OPS["ADD"], x)                     # a binary op needs two arrays
    with pytest.raises(ValueError):
        g.apply(OPS["SIN"], x, x)


def test_apply_broadcasts_length_one(g):
    x = g.inputs(3)
    c = g.consts(np.array([2.0]))
    r = g.apply(OPS["MUL"], x, c)
    np.testing.assert_array_equal(r, g.apply(OPS["MUL"], x, np.repeat(c, 3)))
    assert g.apply(OPS["MUL"], x[:0].copy(), c).shape == (0,)


def test_reduce_is_a_balanced_tree(g):
    x = g.inputs(7)
    r = g.reduce(OPS["ADD"], x.reshape(1, 7))
    assert r.shape == (1,)

    def depth(i):
        op, a, b, _, _ = g.node(int(i))
        if op == KIND_INPUT:
            return 0
        return 1 + max(depth(a), depth(b))

    assert depth(r[0]) == 3
    assert len(g) == 7 + 6
    # the same sums again: all shared
    np.testing.assert_array_equal(g.reduce(OPS["ADD"], x.reshape(1, 7)), r)
    assert len(g) == 13


def test_reduce_sparse_skips_structural_zeros(g):
    x = g.inputs(3)
    rows = np.array([[x[0], -1, x[1], -1], [-1, -1, -1, -1], [-1, x[2], -1, -1]])
    r = g.reduce(OPS["ADD"], rows, True)
    assert kind(g, r[0]) == "ADD"
    assert const_value(g, r[1]) == 0.0
    assert r[2] == x[2]


def test_mul_nonzero_skips_zero_constants(g):
    x = g.inputs(2)
    z, mz, two = g.const(0.0), g.const(-0.0), g.const(2.0)
    r = g.mul_nonzero(ids(x[0], x[0], z, x[1], -1), ids(x[1], mz, x[0], two, x[0]))
    assert r[1] == r[2] == r[4] == -1
    assert kind(g, r[0]) == "MUL" and kind(g, r[3]) == "MUL|B_IMM"


def test_scan_is_sequential(g):
    x = g.inputs(4)
    r = g.scan(OPS["ADD"], x.reshape(1, 4))[0]
    assert r[0] == x[0]
    for k in range(1, 4):
        assert g.node(int(r[k]))[0] == OPS["ADD"]
        assert sorted(g.node(int(r[k]))[1:3]) == sorted([int(r[k - 1]), int(x[k])])
