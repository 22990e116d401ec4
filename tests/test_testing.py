"""The test helpers of jacext/testing.py, which the rest of the suite relies on.

The colouring verifiers accept valid colourings and reject invalid ones (dense and SciPy
sparse patterns); check_jacobian fails on a wrong Jacobian or a wrong compiled function;
without_jacobian_tapes keeps a Function on the sweeps (and refuses a used one); plan_of,
jacobian_tape_slot and colourings show what a Function runs; op_value and op_partials
take an op by name or number.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import jacext as jx
from jacext.ops import OPS
from jacext.testing import (
    check_jacobian,
    colourings,
    column_colouring_is_valid,
    jacobian_tape_slot,
    op_partials,
    op_value,
    plan_of,
    row_colouring_is_valid,
    without_jacobian_tapes,
)

# ---------------------------------------------------------------- colouring verifiers --

def test_verifiers_reject_bad_colourings():
    tri = np.abs(np.subtract.outer(np.arange(6), np.arange(6))) <= 1
    assert column_colouring_is_valid(tri, np.arange(6) % 3)
    assert not column_colouring_is_valid(tri, np.arange(6) % 2)   # columns 0 and 2 share row 1
    assert not column_colouring_is_valid(tri, np.zeros(6, int))
    assert not column_colouring_is_valid(tri, np.arange(5))        # wrong length
    assert row_colouring_is_valid(tri, np.arange(6) % 3)
    assert not row_colouring_is_valid(tri, np.arange(6) % 2)
    # a non-square case, where rows and columns cannot be mixed up
    wide = np.zeros((2, 4), bool)
    wide[0, :2] = wide[1, 2:] = True
    assert column_colouring_is_valid(wide, [0, 1, 0, 1])
    assert not column_colouring_is_valid(wide, [0, 0, 1, 1])
    assert row_colouring_is_valid(wide, [0, 0])


@pytest.mark.parametrize("kind", [sp.csr_array, sp.csc_array, sp.coo_array, sp.csr_matrix])
def test_verifiers_take_scipy_sparse_patterns(kind):
    tri = np.abs(np.subtract.outer(np.arange(6), np.arange(6))) <= 1
    pattern = kind(tri)
    assert sp.issparse(pattern)
    assert column_colouring_is_valid(pattern, np.arange(6) % 3)
    assert not column_colouring_is_valid(pattern, np.arange(6) % 2)
    assert not column_colouring_is_valid(pattern, np.zeros(6, int))
    assert not column_colouring_is_valid(pattern, np.arange(7))
    assert row_colouring_is_valid(pattern, np.arange(6) % 3)
    assert not row_colouring_is_valid(pattern, np.arange(6) % 2)
    # non-square, with values that are not booleans (a Jacobian's nonzeros)
    wide = np.zeros((2, 4))
    wide[0, :2] = [2.5, -1.0]
    wide[1, 2:] = [0.5, 3.0]
    pattern = kind(wide)
    assert column_colouring_is_valid(pattern, [0, 1, 0, 1])
    assert not column_colouring_is_valid(pattern, [0, 0, 1, 1])
    assert row_colouring_is_valid(pattern, [0, 0])
    assert not row_colouring_is_valid(pattern, [0, 0, 0, 0])      # wrong length
    # an empty pattern: any colouring of the right length, even one colour
    empty = kind((3, 5))
    assert column_colouring_is_valid(empty, np.zeros(5, int))
    assert row_colouring_is_valid(empty, np.zeros(3, int))


def test_verifiers_refuse_negative_colours():
    eye = np.eye(3, dtype=bool)
    assert column_colouring_is_valid(eye, [0, 0, 0])
    assert not column_colouring_is_valid(eye, [0, -1, 0])
    assert not row_colouring_is_valid(eye, [-1, 0, 0])


def test_colourings_of_a_function_pass_the_verifiers():
    def f(x):    # tridiagonal
        return (3 - 2 * x) * x - np.concatenate([[0.0], x[:-1]]) - 2 * np.concatenate(
            [x[1:], [0.0]])

    F = jx.compile(f, np.zeros(12))
    column, p, row, q = colourings(F)
    pattern = F.sparsity()
    assert column_colouring_is_valid(pattern, column) and row_colouring_is_valid(pattern, row)
    assert column.max() + 1 == p and row.max() + 1 == q
    assert p == 3 and q == 3


# ---------------------------------------------------------------- check_jacobian --

def _g(x):
    return np.stack([np.sin(x[0]) * x[1], x[1] ** 2 - x[2], np.exp(x[2]) * x[0]])


X = np.array([0.3, -1.2, 0.7])


def _jacobian_of_g(x):
    return np.array([[np.cos(x[0]) * x[1], np.sin(x[0]), 0.0],
                     [0.0, 2 * x[1], -1.0],
                     [np.exp(x[2]), 0.0, np.exp(x[2]) * x[0]]])


def test_check_jacobian_passes_the_right_jacobian():
    F = jx.compile(_g, X)
    J = check_jacobian(_g, X, expected=_jacobian_of_g(X), expected_rtol=1e-14, F=F)
    np.testing.assert_allclose(J, _jacobian_of_g(X), rtol=1e-14)


@pytest.mark.parametrize("where", [(0, 0), (1, 2), (2, 1)])
@pytest.mark.parametrize("by", [1e-6, 1.0])
def test_check_jacobian_catches_a_wrong_expected_jacobian(where, by):
    F = jx.compile(_g, X)
    wrong = _jacobian_of_g(X)
    wrong[where] += by
    with pytest.raises(AssertionError):
        check_jacobian(_g, X, expected=wrong, expected_rtol=1e-12, F=F)
    with pytest.raises(AssertionError):       # the comparison itself, not the differences
        check_jacobian(_g, X, expected=wrong, expected_rtol=1e-12, F=F, fd=False)


def test_check_jacobian_catches_a_wrong_compiled_function():
    """A Function compiled from another function fails against f's values and its central
    differences, even without an expected Jacobian."""
    other = lambda x: np.stack([np.sin(x[0]) * x[1], x[1] ** 2 + x[2],  # noqa: E731
                                np.exp(x[2]) * x[0]])
    F = jx.compile(other, X)
    with pytest.raises(AssertionError):
        check_jacobian(_g, X, F=F)
    # the same values at X, another slope there: a kink at x[1] == X[1]
    c = X[1]
    twin = lambda x: np.stack([np.sin(x[0]) * x[1],  # noqa: E731
                               np.where(x[1] < c, x[1] ** 2, x[1] ** 2 + 5.0 * (x[1] - c)) - x[2],
                               np.exp(x[2]) * x[0]])
    np.testing.assert_array_equal(twin(X), _g(X))
    with pytest.raises(AssertionError):
        check_jacobian(_g, X, F=jx.compile(twin, X), value_rtol=1e-15)


# ---------------------------------------------------------------- without_jacobian_tapes --

def _h(v):
    return np.stack([np.sin(v[0]) * v[1], v[2] ** 2 + v[0], np.exp(v[1] - v[2])])


def _batches(seed):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1.0, 1.0, (1000, 3)) for _ in range(5)]      # 5000 points


def test_without_jacobian_tapes_never_builds_a_tape():
    x = np.array([0.3, -0.7, 1.1])
    G = jx.compile(_h, x)                               # the control: builds its tapes
    F = without_jacobian_tapes(jx.compile(_h, x))
    assert isinstance(F, jx.Function)
    for X in _batches(1):
        np.testing.assert_array_equal(F.jacobian(X), G.jacobian(X))
        np.testing.assert_array_equal(F.jacobian(X, sparse=True).toarray(),
                                      G.jacobian(X, sparse=True).toarray())
    # G's dense and sparse Jacobian tapes exist after 5000 points; F has none
    assert plan_of(G).dense_tape.current is not None
    assert plan_of(G, sparse=True).sparse_tapes[0].current is not None
    dense, sparse = plan_of(F), plan_of(F, sparse=True)
    for slot in (dense.dense_tape,) + sparse.sparse_tapes:
        assert slot.current is None and slot.after is None
    for mode in ("forward", "reverse"):
        for is_sparse in (False, True):
            for values in (False, True):
                slot = jacobian_tape_slot(F, 0, mode, is_sparse, values)
                assert slot.current is None and slot.tape(10**6) is None
    # and the results are still right
    X = _batches(2)[0]
    np.testing.assert_array_equal(F.jacobian(X), [F.jacobian(x) for x in X])


def test_without_jacobian_tapes_refuses_a_used_function():
    x = np.array([0.3, -0.7, 1.1])
    # what counts points towards a tape: every Jacobian, single points too
    for use in (lambda F: F.jacobian(x), lambda F: F.jacobian(x, mode="reverse"),
                lambda F: F.value_and_jacobian(x),
                lambda F: F.jacobian(np.ones((4, 3))),
                lambda F: F.jacobian(np.ones((4, 3)), mode="reverse"),
                lambda F: F.value_and_jacobian(np.ones((4, 3))),
                lambda F: F.jacobian(x, sparse=True),
                lambda F: F.jacobian(np.ones((4, 3)), sparse=True, mode="reverse")):
        F = jx.compile(_h, x)
        use(F)
        with pytest.raises(ValueError, match="without_jacobian_tapes"):
            without_jacobian_tapes(F)
    # values, jvp and vjp count nothing: the Function is still fresh
    F = jx.compile(_h, x)
    F(x)
    F.jvp(x, x)
    F.vjp(x, x)
    assert without_jacobian_tapes(F) is F


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_without_jacobian_tapes_keeps_single_points_on_the_sweeps(mode):
    """Single points count towards the dense Jacobian tape like batches: a Function that
    computed one is refused; a fresh one given to without_jacobian_tapes never builds one
    however many single points it is asked for."""
    x = np.array([0.3, -0.7, 1.1])
    used = jx.compile(_h, x)
    J = used.jacobian(x, mode=mode)
    with pytest.raises(ValueError, match="without_jacobian_tapes"):
        without_jacobian_tapes(used)
    F = without_jacobian_tapes(jx.compile(_h, x))
    for _ in range(5000):
        got = F.jacobian(x, mode=mode)
    np.testing.assert_array_equal(got, J)
    assert jacobian_tape_slot(F, 0, mode).current is None


# ---------------------------------------------------------------- what ran, ops --

def test_plan_of_is_the_plan_that_runs():
    F = jx.compile(_h, np.zeros(3))
    F.jacobian(np.ones(3))
    p = plan_of(F)
    assert p is plan_of(F, 0, "auto", False) and p is plan_of(F, (0,)[0])
    assert p.mode == "forward" and p.compressed is None
    assert plan_of(F, mode="reverse").mode == "reverse"
    slot = jacobian_tape_slot(F, 0, p.mode, False, True)
    assert slot is p.dense_tape


def test_op_value_and_op_partials_take_a_name_or_a_number():
    assert op_value("ADD", 1.5, 2.25) == op_value(OPS["ADD"], 1.5, 2.25) == 3.75
    assert op_value("NEG", 2.0) == -2.0
    assert op_value("SELECT", 1.0, 2.0, 0.0) == 2.0 and op_value("SELECT", 1.0, 2.0, 3.0) == 1.0
    assert op_partials("DIV", 1.0, 4.0) == op_partials(OPS["DIV"], 1.0, 4.0) == (0.25, -0.0625)
    assert op_partials("SIN", 0.0) == (1.0, 0.0)
    with pytest.raises(KeyError):
        op_value("NO_SUCH_OP", 1.0)
