"""The compile pipeline (jacext/compile.py) end to end: CSE, constant folding (and what
must not fold), DCE, balanced reductions, slot reuse.  Facts are read off the tape
(``F.tape_arrays()``) with op numbers from ``jacext.ops.OPS``."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

import jacext as jx
from jacext.ops import A_IMM, B_IMM, OP_MASK, OPS
from jacext.testing import assert_same_values, check_jacobian

NAMES = {v: k for k, v in OPS.items()}


def op_counts(F):
    """Counter {op name: instructions} of a Function's tape."""
    return Counter(NAMES[int(w) & OP_MASK] for w in F.tape_arrays()["op"])


def depth(F):
    """Longest dependency chain (in instructions) from the inputs to any output."""
    t = F.tape_arrays()
    d = np.zeros(F.n_slots, dtype=np.int64)
    for w, dst, a, b, s in zip(t["op"], t["dst"], t["a"], t["b"], t["s"]):
        op = int(w) & OP_MASK
        deps = []
        if not int(w) & A_IMM:
            deps.append(d[a])
        if not int(w) & B_IMM:
            deps.append(d[b])
        if op == OPS["SELECT"]:
            deps.append(d[s])      # the condition's slot
        d[dst] = 1 + max(deps)
    return int(max((d[s] for s in t["out_slot"]), default=0))


# ------------------------------------------------------------------------ CSE --

def test_common_subexpressions_are_one_instruction():
    x = np.array([0.3, -1.2, 2.5])
    F = jx.compile(lambda v: np.sin(v) + np.sin(v), x)
    c = op_counts(F)
    assert c["SIN"] == 3
    assert F.n_instructions == 6            # 3 SIN + 3 ADD
    check_jacobian(lambda v: np.sin(v) + np.sin(v), x, expected=np.diag(2 * np.cos(x)),
                   expected_rtol=1e-15)


def test_cse_across_commuted_operands_and_repeated_calls():
    x, y = np.array([1.0, 2.0]), np.array([3.0, -4.0])
    f = lambda a, b: a * b + b * a + np.exp(a * b) * (b * a)  # noqa: E731
    F = jx.compile(f, x, y)
    c = op_counts(F)
    assert c["MUL"] == 2 + 2              # a*b once, then exp(ab) * ab
    assert c["EXP"] == 2
    check_jacobian(f, x, y, argnums=(0, 1))
    # the same constant twice is one node (x*2.5 twice: one MUL)
    G = jx.compile(lambda a: (a * 2.5) - np.cos(a * 2.5), x)
    assert op_counts(G)["MUL"] == 2


def test_negation_of_negation_folds():
    x = np.array([0.5, -2.0])
    F = jx.compile(lambda v: np.negative(-v) * 3.0, x)
    assert "NEG" not in op_counts(F)
    np.testing.assert_array_equal(F(x), x * 3.0)


# -------------------------------------------------------------- constant folding --

def test_constant_subexpressions_fold():
    x = np.array([0.5, -2.0, 3.0])

    def f(v):
        c = np.zeros_like(v) + 2.0          # a traced constant
        return v * (np.sin(c) + np.exp(c) * 3.0)

    F = jx.compile(f, x)
    c = op_counts(F)
    assert set(c) == {"MUL"} and c["MUL"] == 3
    imm = F.tape_arrays()["imm"]
    want = np.sin(2.0) + np.exp(2.0) * 3.0
    np.testing.assert_allclose(imm, want, rtol=4e-16)
    check_jacobian(f, x, expected=np.diag(np.full(3, want)), expected_rtol=1e-15)


def test_all_constant_output_has_no_instructions():
    x = np.array([1.0, 2.0])
    F = jx.compile(lambda v: np.ones_like(v) * 3.0 + np.sqrt(np.full_like(v, 4.0)), x)
    assert F.n_instructions == 0
    np.testing.assert_array_equal(F(x), [5.0, 5.0])
    np.testing.assert_array_equal(F.jacobian(x), np.zeros((2, 2)))


@pytest.mark.parametrize("f, gone", [
    (lambda v: v * 1.0, "MUL"),
    (lambda v: 1.0 * v, "MUL"),
    (lambda v: v / 1.0, "DIV"),
    (lambda v: v - 0.0, "SUB"),
    (lambda v: v + -0.0, "ADD"),
    (lambda v: v**1.0, "POW"),
])
def test_exact_identities_fold(f, gone):
    x = np.array([-0.0, 0.0, 1.5, -np.inf, np.nan])
    F = jx.compile(f, x)
    assert F.n_instructions == 0, gone
    assert_same_values(F(x), f(x), rtol=0)
    np.testing.assert_array_equal(np.signbit(F(x)), np.signbit(f(x)))   # -0.0 kept


@pytest.mark.parametrize("f", [
    lambda v: v * 0.0,
    lambda v: 0.0 * v,
    lambda v: v * -0.0,
    lambda v: v**0.0 * v,         # x**0 == 1 even for nan: that fold is exact
    lambda v: v - v,              # inf - inf is nan
    lambda v: v / v,
    lambda v: v * 0.0 + 1.0,
])
def test_inexact_identities_do_not_fold(f):
    """x*0 is not 0 (inf*0 and nan*0 are nan): what changes a value stays."""
    x = np.array([-0.0, 0.0, 2.0, -3.0, np.inf, -np.inf, np.nan])
    F = jx.compile(f, x)
    with np.errstate(all="ignore"):
        want = f(x.copy())
    got = F(x)
    assert_same_values(got, want, rtol=0)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


@pytest.mark.parametrize("f", [lambda v: v + 0.0, lambda v: 0.0 + v, lambda v: v - -0.0,
                               lambda v: v + -0.0, lambda v: v - 0.0])
def test_adding_a_zero_folds_up_to_the_sign_of_a_zero(f):
    """x + 0.0 and x - 0.0 are x (no instruction): NumPy's values at every point, but for
    -0.0 + 0.0, which NumPy makes +0.0 and jacext leaves -0.0 (README, "Values")."""
    x = np.array([-0.0, 0.0, 2.0, -3.0, np.inf, -np.inf, np.nan, 5e-324])
    F = jx.compile(f, x)
    assert F.n_instructions == 0
    want = f(x.copy())
    got = F(x)
    assert_same_values(got, want, rtol=0)
    differs = np.signbit(got) != np.signbit(want)
    np.testing.assert_array_equal(differs & ~np.isnan(want), (x == 0) & np.signbit(x)
                                  & ~np.signbit(want))
    np.testing.assert_array_equal(np.signbit(got[~np.isnan(x)]), np.signbit(x[~np.isnan(x)]))


def test_times_zero_at_infinity_is_nan_as_numpy():
    """The exact tape keeps x * 0.0 (a finite-input tape that folds it runs only where
    every input is finite: tests/test_finite.py)."""
    F = jx.compile(lambda v: v * 0.0, np.zeros(2))
    exact = Counter(NAMES[int(w) & OP_MASK] for w in F.exact_tape.arrays()["op"])
    assert exact["MUL"] == 2
    got = F(np.array([np.inf, 3.0]))
    assert np.isnan(got[0]) and got[1] == 0.0


def test_power_special_cases_are_cheaper_ops():
    x = np.array([-2.0, 0.5, 3.0])
    cases = {2.0: "SQUARE", 0.5: "SQRT", -1.0: "RECIPROCAL"}
    for p, name in cases.items():
        F = jx.compile(lambda v, p=p: v**p, x)
        assert op_counts(F) == Counter({name: 3})
        with np.errstate(invalid="ignore"):
            assert_same_values(F(x), x**p, rtol=0)
    F = jx.compile(lambda v: v**0.0, x)
    assert F.n_instructions == 0
    np.testing.assert_array_equal(F(np.array([np.nan, 0.0, 5.0])), [1.0, 1.0, 1.0])
    G = jx.compile(lambda v: v * v, x)
    assert op_counts(G) == Counter({"SQUARE": 3})


def test_constant_condition_where_selects_without_instructions():
    x = np.array([1.0, 2.0, 3.0])
    F = jx.compile(lambda v: np.where(np.array([True, False, True]), np.sin(v), v), x)
    assert op_counts(F) == Counter({"SIN": 2})
    np.testing.assert_array_equal(F(x), [np.sin(1.0), 2.0, np.sin(3.0)])


# ----------------------------------------------------------------------- DCE --

def test_unused_branches_vanish():
    x = np.array([0.5, 1.5, 2.5])

    def f(v):
        unused = np.cos(v) * np.exp(v)        # never reaches the output
        also_unused = np.log(v).sum()
        del unused, also_unused
        return np.sin(v)

    F = jx.compile(f, x)
    assert op_counts(F) == Counter({"SIN": 3})
    G = jx.compile(lambda v: (np.exp(v), np.log(v))[0], x)
    assert op_counts(G) == Counter({"EXP": 3})
    # only the element that is returned survives
    H = jx.compile(lambda v: np.tanh(v)[1], x)
    assert op_counts(H) == Counter({"TANH": 1})
    check_jacobian(lambda v: np.tanh(v)[1], x, expected=np.array([[0, 1 / np.cosh(1.5) ** 2, 0]]),
                   expected_rtol=1e-15)


def test_where_with_both_branches_equal_is_no_select():
    x = np.array([1.0, -2.0])
    F = jx.compile(lambda v: np.where(v > 0, np.sin(v), np.sin(v)), x)
    assert op_counts(F) == Counter({"SIN": 2})


# --------------------------------------------------------- balanced reductions --

@pytest.mark.parametrize("reduce, op", [
    (np.sum, "ADD"), (np.prod, "MUL"), (np.max, "MAXIMUM"), (np.min, "MINIMUM"),
    (lambda v: v.sum(), "ADD"), (np.mean, "ADD"),
])
def test_reductions_are_balanced_trees(reduce, op):
    n = 1024
    x = np.linspace(0.5, 1.5, n)
    F = jx.compile(reduce, x)
    c = op_counts(F)
    assert c[op] == n - 1
    d = depth(F)
    assert math.log2(n) <= d <= math.log2(n) + 1, d      # 10 (11 for mean's DIV), not 1023
    with np.errstate(over="ignore"):
        np.testing.assert_allclose(F(x), reduce(x), rtol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 17, 100, 1000, 1025])
def test_sum_depth_for_any_length(n):
    x = np.arange(1.0, n + 1.0)
    F = jx.compile(np.sum, x)
    assert F.n_instructions == n - 1
    assert depth(F) == math.ceil(math.log2(n))
    assert F(x) == n * (n + 1) / 2            # exact integers
    np.testing.assert_array_equal(F.jacobian(x), np.ones(n))


def test_dot_and_axis_reductions_are_balanced():
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal(512), rng.standard_normal(512)
    F = jx.compile(lambda v: np.dot(w, v * v), x)
    assert depth(F) <= 1 + 1 + 9 + 1          # square, scale, tree of 512
    np.testing.assert_allclose(F(x), w @ (x * x), rtol=1e-12)
    G = jx.compile(lambda m: m.sum(axis=1), np.zeros((4, 256)))
    assert depth(G) == 8
    M = rng.standard_normal((4, 256))
    np.testing.assert_allclose(G(M), M.sum(axis=1), rtol=1e-12)
    np.testing.assert_array_equal(G.jacobian(M).reshape(4, 4, 256).sum(axis=2), 256 * np.eye(4))


# ---------------------------------------------------------------- slot reuse --

def test_long_elementwise_chain_reuses_slots():
    n, steps = 64, 60
    x = np.linspace(-1.0, 1.0, n)

    def f(v):
        for k in range(steps):
            v = np.sin(v) * 0.9 + 0.05 * k
        return v

    F = jx.compile(f, x)
    assert F.n_instructions == (3 * steps - 1) * n     # + 0.05 * 0 is + 0.0: folded
    temporaries = F.n_slots - F.n_inputs - F.tape_arrays()["const_value"].size
    assert temporaries <= 3 * n, temporaries      # a few live vectors, not one per instruction
    assert F.n_slots < F.n_instructions // 20
    # the reused slots give the right answer (reference: the chain rule by hand)
    y, dy = x.copy(), np.ones(n)
    for k in range(steps):
        dy = np.cos(y) * 0.9 * dy
        y = np.sin(y) * 0.9 + 0.05 * k
    np.testing.assert_allclose(F(x), y, rtol=1e-14)
    check_jacobian(f, x[:8], expected=None, step=1e-3)
    for mode in ("forward", "reverse"):
        np.testing.assert_allclose(F.jacobian(x, mode=mode), np.diag(dy), rtol=1e-13, atol=0)


def test_slots_never_overlap_live_values():
    """Every operand a tape reads holds the value it was written with (simulated in Python)."""
    rng = np.random.default_rng(4)
    A = rng.standard_normal((6, 6))

    def f(v):
        h = np.tanh(A @ v)
        g = np.where(h > 0, h * v, np.exp(v) - h)
        return np.concatenate([g * h, np.cumsum(g)[-2:], [np.prod(v[:3])]])

    x = rng.standard_normal(6)
    F = jx.compile(f, x)
    t = F.tape_arrays()
    n_in, consts = F.n_inputs, t["const_value"]
    # replay the tape with one NumPy evaluation per instruction
    from jacext.testing import op_value
    slots = np.full(F.n_slots, np.nan)
    slots[:n_in] = x
    slots[n_in:n_in + consts.size] = consts
    for w, dst, a, b, sel, imm in zip(t["op"], t["dst"], t["a"], t["b"], t["s"], t["imm"]):
        w = int(w)
        op = w & OP_MASK
        va = imm if w & A_IMM else slots[a]
        vb = imm if w & B_IMM else slots[b]
        vs = slots[sel] if op == OPS["SELECT"] else 0.0
        slots[dst] = op_value(op, va, vb, vs)
    np.testing.assert_allclose(slots[t["out_slot"]], f(x), rtol=1e-13, atol=1e-14)
    check_jacobian(f, x)
