"""Sparse Jacobians (jacext/sparse.py and the plans that use it): the exact pattern,
colourings, compressed sweeps, SciPy results.

Every expected pattern here is written down analytically (banded, block-diagonal, arrow-head,
random sparse, dense, 5-point stencil, np.where, zero-derivative ops) and also checked
against the support of jacext's dense Jacobian at points that visit every branch, so the
expectation cannot silently agree with a wrong ``F.sparsity()``. Colourings are checked by
jacext.testing's verifiers, which tests/test_testing.py checks in turn.
"""
from __future__ import annotations

import pickle
import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp
from jacext._tape import Tape

import jacext as jx
from jacext.sparse import SparseJacobians
from jacext.testing import (
    colourings,
    column_colouring_is_valid,
    jacobian_tape_slot,
    plan_of,
    row_colouring_is_valid,
)

MODES = ("forward", "reverse", "auto")


def assert_close(actual, desired):
    """Equal to rounding: jacext sums a chain rule's terms in its own order."""
    np.testing.assert_allclose(actual, desired, rtol=4e-16, atol=4e-15)


# ------------------------------------------------------------------ functions and patterns
def _shift(x, k):
    """y[i] = x[i - k], zero outside (x_0 = x_{n+1} = 0), without writing into an array."""
    if k > 0:
        return np.concatenate([np.zeros(k), x[:-k]])
    return np.concatenate([x[-k:], np.zeros(-k)])


def _band(m, n, lower, upper):
    d = np.subtract.outer(np.arange(m), np.arange(n))      # i - j
    return (d <= lower) & (-d <= upper)


def broyden(x):
    return (3 - 2 * x) * x - _shift(x, 1) - 2 * _shift(x, -1) + 1


def broyden_jacobian(x):
    """Hand-written, for values (not only patterns)."""
    n = x.size
    return (np.diag(3 - 4 * x) - np.diag(np.ones(n - 1), -1) - 2 * np.diag(np.ones(n - 1), 1))


def pentadiagonal(x):
    # additive terms only: a zero pad is then a constant, never a factor of x
    return (x**3 + np.sin(_shift(x, 2)) + 2 * _shift(x, 1) + _shift(x, -1) ** 2
            + np.tanh(_shift(x, -2)))


BLOCKS, BLOCK = 8, 5


def block_diagonal(x):
    X = x.reshape(BLOCKS, BLOCK)
    return (np.tanh(X) * (X**2).sum(axis=1, keepdims=True)).reshape(-1)


def arrow_head(x):
    return np.concatenate([np.sum(x**2, keepdims=True), x[1:] ** 2 + x[0] * x[1:]])


def _arrow_pattern(n):
    P = np.eye(n, dtype=bool)
    P[0, :] = P[:, 0] = True
    return P


RNG_DATA = np.random.default_rng(7)
N_RANDOM, M_RANDOM = 40, 45
I_IDX, J_IDX, K_IDX = (RNG_DATA.integers(0, N_RANDOM, M_RANDOM) for _ in range(3))
A_SPARSE = (RNG_DATA.random((35, N_RANDOM)) < 0.08) * RNG_DATA.uniform(0.5, 2.0, (35, N_RANDOM))
A_SPARSE[3] = 0.0                    # an empty row
W_DENSE = RNG_DATA.uniform(0.5, 1.5, (36, N_RANDOM)) * RNG_DATA.choice([-1, 1], (36, N_RANDOM))


def random_indexed(x):
    return np.sin(x[I_IDX]) * np.cos(x[J_IDX]) + x[K_IDX] ** 2


def _indexed_pattern():
    P = np.zeros((M_RANDOM, N_RANDOM), bool)
    rows = np.arange(M_RANDOM)
    for idx in (I_IDX, J_IDX, K_IDX):
        P[rows, idx] = True
    return P


def random_matrix(x):
    # constant zeros of a matrix in @ are skipped structurally (DESIGN.md)
    return np.tanh(A_SPARSE @ np.sin(x))


def dense(x):
    return np.tanh(W_DENSE @ x)


K_GRID = 7


def bratu(u, lam=6.0, k=K_GRID):
    """Discrete Laplacian + lam exp(u) on a k x k grid, zero Dirichlet boundary."""
    U = u.reshape(k, k)
    zr, zc = np.zeros((1, k)), np.zeros((k, 1))
    up = np.concatenate([zr, U[:-1]], axis=0)
    down = np.concatenate([U[1:], zr], axis=0)
    left = np.concatenate([zc, U[:, :-1]], axis=1)
    right = np.concatenate([U[:, 1:], zc], axis=1)
    h2 = (k + 1.0) ** 2
    return ((up + down + left + right - 4 * U) * h2 + lam * np.exp(U)).reshape(-1)


def _stencil_pattern(k):
    r, c = np.divmod(np.arange(k * k), k)
    dr = np.abs(np.subtract.outer(r, r))
    dc = np.abs(np.subtract.outer(c, c))
    return (dr + dc) <= 1


def where_branches(x):
    # the condition reads x reversed; it must add no dependence
    return np.where(x[::-1] > 0, x**2, np.sin(np.roll(x, 1)))


def _where_pattern(n):
    return np.eye(n, dtype=bool) | np.roll(np.eye(n, dtype=bool), 1, axis=0)


def zero_derivative_ops(x):
    # floor, ceil, round, sign and comparisons of other entries: only the diagonal remains
    r = x[::-1]
    return (x**2 * (1.0 + np.floor(r) ** 2) + np.sign(np.roll(x, 1)) + np.ceil(np.roll(x, 2))
            + np.round(np.roll(x, 3)) + (np.roll(x, 4) > 0.5) * x + (r <= 0.0) * 2.0)


def one_sided_fixed(x):
    # np.heaviside(0.0, h0) is h0: an instruction with constant partials 0 for its
    # immediate a and 1 for its variable b, whose b must stay in the pattern (a pattern
    # that tested the wrong partial for b would lose the diagonal)
    return np.heaviside(0.0, x) + x[::-1] ** 2


def with_constant_rows(x):
    return np.concatenate([np.exp(x[:4]) * x[1:5], np.ones(3), x[5:] ** 2])


def _constant_rows_pattern(n):
    P = np.zeros((4 + 3 + n - 5, n), bool)
    for i in range(4):
        P[i, i] = P[i, i + 1] = True
    for j in range(5, n):
        P[7 + j - 5, j] = True
    return P


# name -> (f, n, analytic pattern, the colour counts it must reach, or None)
CASES = {
    "tridiagonal": (broyden, 50, _band(50, 50, 1, 1), (3, 3)),
    "pentadiagonal": (pentadiagonal, 50, _band(50, 50, 2, 2), (5, 5)),
    "block_diagonal": (block_diagonal, BLOCKS * BLOCK,
                       np.kron(np.eye(BLOCKS), np.ones((BLOCK, BLOCK))).astype(bool),
                       (BLOCK, BLOCK)),
    "arrow_head": (arrow_head, 40, _arrow_pattern(40), (40, 40)),
    "random_indexed": (random_indexed, N_RANDOM, _indexed_pattern(), None),
    "random_matrix": (random_matrix, N_RANDOM, A_SPARSE != 0, None),
    "dense": (dense, N_RANDOM, np.ones((36, N_RANDOM), bool), (N_RANDOM, 36)),
    "stencil_2d": (bratu, K_GRID**2, _stencil_pattern(K_GRID), None),
    "where": (where_branches, 40, _where_pattern(40), (2, 2)),
    "zero_derivative": (zero_derivative_ops, 40, np.eye(40, dtype=bool), (1, 1)),
    "constant_rows": (with_constant_rows, 12, _constant_rows_pattern(12), (2, 2)),
    "one_sided_fixed": (one_sided_fixed, 40, np.eye(40, dtype=bool)
                        | np.fliplr(np.eye(40, dtype=bool)), (2, 2)),
}


def _points(n, rng):
    """Points that visit both sides of every comparison used above (x > 0, x <= 0, ...)."""
    return [rng.uniform(0.6, 0.95, n), -rng.uniform(0.1, 0.95, n), rng.uniform(-0.95, 0.95, n),
            rng.uniform(0.05, 0.45, n)]


_compiled = {}


def compiled(name):
    """One Function per case for the whole module (compiling is the slow part)."""
    if name not in _compiled:
        f, n = CASES[name][:2]
        _compiled[name] = jx.compile(f, np.zeros(n))
    return _compiled[name]


# ----------------------------------------------------------------------------- patterns
@pytest.mark.parametrize("name", CASES)
def test_expected_pattern_is_the_dense_support(name, rng):
    """The analytic pattern is right: dense Jacobians live inside it and fill it."""
    f, n, P = CASES[name][:3]
    F = compiled(name)
    seen = np.zeros_like(P)
    for x in _points(n, rng):
        J = F.jacobian(x, mode="forward")
        assert J.shape == P.shape
        support = J != 0
        assert not (support & ~P).any(), f"{name}: nonzero outside the analytic pattern"
        seen |= support
    assert np.array_equal(seen, P), f"{name}: analytic pattern entries never attained"


@pytest.mark.parametrize("name", CASES)
def test_sparsity_is_the_exact_pattern(name):
    P = CASES[name][2]
    F = compiled(name)
    S = F.sparsity()
    assert isinstance(S, sp.csr_array)
    assert S.dtype == bool and S.shape == P.shape
    assert S.nnz == P.sum() and S.data.all()           # no explicit False entries
    assert S.has_sorted_indices
    np.testing.assert_array_equal(S.toarray(), P)
    # the same pattern from argnums=0 spelled as a tuple, and a fresh csr each call
    assert np.array_equal(F.sparsity(0).toarray(), P)
    assert F.sparsity() is not S and np.array_equal(F.sparsity().indices, S.indices)


def _pattern(F, argnums=0):
    """(indptr, indices) of F's pattern, as the plans hold it."""
    return plan_of(F, argnums, sparse=True).structure.pattern


def test_pattern_computed_once():
    F = jx.compile(broyden, np.zeros(20))
    ptr, idx = _pattern(F)
    again = _pattern(F)
    assert again[0] is ptr and again[1] is idx
    assert colourings(F) is colourings(F)
    np.testing.assert_array_equal(F.sparsity().indices, idx)


# ---------------------------------------------------------------------------- colourings
@pytest.mark.parametrize("name", CASES)
def test_colourings_are_valid(name):
    P, counts = CASES[name][2], CASES[name][3]
    m, n = P.shape
    F = compiled(name)
    col, p, row, q = colourings(F)
    assert F.colours() == (p, q)
    col, row = np.asarray(col), np.asarray(row)
    assert col.shape == (n,) and row.shape == (m,)
    assert col.dtype == np.int32 and row.dtype == np.int32
    assert column_colouring_is_valid(P, col), f"{name}: invalid column colouring"
    assert row_colouring_is_valid(P, row), f"{name}: invalid row colouring"
    assert p == (col.max() + 1 if n else 0) and q == (row.max() + 1 if m else 0)
    # every colour count is at least the largest row (column) count, at most n (m)
    assert P.sum(axis=1).max(initial=0) <= p <= n
    assert P.sum(axis=0).max(initial=0) <= q <= m
    if counts is not None:
        assert (p, q) == counts
    # the verifiers read the csr pattern as well as the dense one
    assert column_colouring_is_valid(F.sparsity(), col)
    assert row_colouring_is_valid(F.sparsity(), row)


def test_colourings_of_a_bigger_random_pattern(rng):
    """A random pattern with varied row and column degrees, checked by both verifiers."""
    n, m = 300, 260
    deg = rng.integers(0, 7, m)
    cols = [rng.choice(n, d, replace=False) for d in deg]
    rows = np.repeat(np.arange(m), deg)
    flat = np.concatenate(cols).astype(np.int64)
    P = np.zeros((m, n), bool)
    P[rows, flat] = True
    weights = rng.uniform(0.5, 1.5, flat.size)

    def f(x):
        terms = weights * np.sin(x[flat])
        return _segment_sum(terms, deg)

    F = jx.compile(f, np.zeros(n))
    np.testing.assert_array_equal(F.sparsity().toarray(), P)
    col, p, row, q = colourings(F)
    assert column_colouring_is_valid(P, col) and row_colouring_is_valid(P, row)
    assert p < n // 4 and q < m // 4          # the colouring actually compresses
    x = rng.standard_normal(n)
    for mode in MODES:
        np.testing.assert_allclose(F.jacobian(x, sparse=True, mode=mode).toarray(),
                                   F.jacobian(x, mode="reverse"), rtol=1e-14, atol=0)


# BUG (then in jacext/_vm.pyx, Function._colouring): the greedy colouring's work budget,
# 64 * nnz + 10**7, is below its inherent cost (the sum of squared row lengths) as soon as rows
# hold more than ~64 nonzeros, and the fallback is the identity colouring: 20 dense 200 x 200
# blocks get p = q = 4000 colours instead of 200 (20x the sweeps, and a compressed matrix
# as large as the dense one). Greedy itself finishes here in well under a second.
def test_colouring_of_wide_blocks_is_not_abandoned():
    blocks, b = 20, 200

    def f(x):
        X = x.reshape(blocks, b)
        return (np.tanh(X) * (X**2).sum(axis=1, keepdims=True)).reshape(-1)

    F = jx.compile(f, np.zeros(blocks * b))
    assert F.sparsity().nnz == blocks * b * b
    assert F.colours() == (b, b)


def _segment_sum(terms, deg):
    """Row sums of consecutive segments of lengths deg, via a constant 0/1 matrix product
    (zero entries of a constant matrix are skipped structurally)."""
    S = np.zeros((deg.size, terms.shape[0]))
    S[np.repeat(np.arange(deg.size), deg), np.arange(terms.shape[0])] = 1.0
    return S @ terms


# ---------------------------------------------------------------------- sparse == dense
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", CASES)
def test_sparse_equals_dense(name, mode, rng):
    f, n, P = CASES[name][:3]
    F = compiled(name)
    ptr, idx = _pattern(F)
    for x in _points(n, rng)[:2]:
        Js = F.jacobian(x, sparse=True, mode=mode)
        assert isinstance(Js, sp.csr_array)
        assert Js.shape == P.shape and Js.dtype == np.float64
        # the result carries the whole pattern, numerical zeros included
        np.testing.assert_array_equal(Js.indptr, ptr)
        np.testing.assert_array_equal(Js.indices, idx)
        dense_fwd = F.jacobian(x, mode="forward")
        np.testing.assert_allclose(Js.toarray(), dense_fwd, rtol=1e-14, atol=0)
        # the dense auto result (compressed sweeps + scatter when that is cheaper)
        np.testing.assert_allclose(F.jacobian(x), dense_fwd, rtol=1e-14, atol=0)
        np.testing.assert_allclose(F.jacobian(x, mode="reverse"), dense_fwd, rtol=1e-14, atol=0)


def test_sparse_values_against_the_hand_written_jacobian(rng):
    F = compiled("tridiagonal")
    x = rng.standard_normal(50)
    for mode in MODES:
        assert_close(F.jacobian(x, sparse=True, mode=mode).toarray(), broyden_jacobian(x))
    assert_close(F.jacobian(x), broyden_jacobian(x))


def test_dense_auto_uses_the_colouring_only_when_it_pays(rng):
    # tridiagonal 50 x 50: 3 colours instead of 50 sweeps
    assert plan_of(compiled("tridiagonal")).compressed is not None
    # dense 36 x 40 written elementwise (scalar instructions): colouring gains nothing, but
    # every output has its own small dependency cone, so one reverse sweep per cone (mode
    # "cones") costs a ninth of a dense sweep set
    scalar = jx.compile(lambda x: np.tanh((W_DENSE * x).sum(axis=1)), np.zeros(N_RANDOM))
    assert scalar.colours() == (40, 36)
    assert plan_of(scalar).compressed == "cones"
    x = rng.standard_normal(40)
    np.testing.assert_array_equal(scalar.jacobian(x), scalar.jacobian(x, mode="reverse"))
    # the same as a matrix product is one block instruction (its sweeps are matrix
    # products): no cones, dense sweeps
    dense = compiled("dense")
    assert dense.tape.n_blocks == 1 and dense.colours() == (40, 36)
    assert plan_of(dense).compressed is None
    assert_close(dense.jacobian(x), scalar.jacobian(x))
    # small Jacobians (<= 32 a side) never ask for the pattern
    small = jx.compile(broyden, np.zeros(10))
    assert plan_of(small).compressed is None
    x = rng.standard_normal(10)
    assert_close(small.jacobian(x), broyden_jacobian(x))


def test_out_keeps_working_with_compressed_dense(rng):
    F = compiled("tridiagonal")
    x = rng.standard_normal(50)
    out = np.full((50, 50), np.nan)
    assert F.jacobian(x, out=out) is out
    assert_close(out, broyden_jacobian(x))
    y, J = F.value_and_jacobian(x)
    assert_close(y, broyden(x))
    assert_close(J, broyden_jacobian(x))


# ------------------------------------------------------- tuple outputs and argnums tuples
def two_outputs(x):
    return broyden(x), arrow_head(x)[:7]


def two_arguments(x, p):
    # d/dx tridiagonal, d/dp: each output reads one of p's 3 entries
    return broyden(x) + p[np.arange(x.shape[0]) % 3] ** 2 * x


@pytest.mark.parametrize("mode", MODES)
def test_tuple_outputs(mode, rng):
    n = 40
    F = jx.compile(two_outputs, np.zeros(n))
    P1, P2 = _band(n, n, 1, 1), _arrow_pattern(n)[:7]
    np.testing.assert_array_equal(F.sparsity().toarray(), np.vstack([P1, P2]))
    x = rng.standard_normal(n)
    J1, J2 = F.jacobian(x, sparse=True, mode=mode)
    D1, D2 = F.jacobian(x, mode="forward")
    A1, A2 = F.jacobian(x)                    # dense auto: compressed, then scattered
    np.testing.assert_allclose(A1, D1, rtol=1e-14, atol=0)
    np.testing.assert_allclose(A2, D2, rtol=1e-14, atol=0)
    for Js, D, P in ((J1, D1, P1), (J2, D2, P2)):
        assert isinstance(Js, sp.csr_array) and Js.shape == D.shape
        np.testing.assert_array_equal(Js.toarray() != 0, P)
        np.testing.assert_allclose(Js.toarray(), D, rtol=1e-14, atol=0)


@pytest.mark.parametrize("mode", MODES)
def test_argnums_tuple(mode, rng):
    n = 40
    x, p = rng.standard_normal(n), rng.uniform(0.5, 1.5, 3)
    G = jx.compile(two_arguments, x, p)
    Pp = np.zeros((n, 3), bool)
    Pp[np.arange(n), np.arange(n) % 3] = True
    np.testing.assert_array_equal(G.sparsity(argnums=1).toarray(), Pp)
    np.testing.assert_array_equal(G.sparsity(argnums=(0, 1)).toarray(),
                                  np.hstack([_band(n, n, 1, 1), Pp]))
    Jx, Jp = G.jacobian(x, p, argnums=(0, 1), sparse=True, mode=mode)
    Dx, Dp = G.jacobian(x, p, argnums=(0, 1), mode="forward")
    assert isinstance(Jx, sp.csr_array) and isinstance(Jp, sp.csr_array)
    assert Jx.shape == (n, n) and Jp.shape == (n, 3)
    np.testing.assert_allclose(Jx.toarray(), Dx, rtol=1e-14, atol=0)
    np.testing.assert_allclose(Jp.toarray(), Dp, rtol=1e-14, atol=0)
    only_p = G.jacobian(x, p, argnums=1, sparse=True, mode=mode)
    assert isinstance(only_p, sp.csr_array)
    np.testing.assert_allclose(only_p.toarray(), Dp, rtol=1e-14, atol=0)
    # colourings of the joint pattern are valid too
    P = np.hstack([_band(n, n, 1, 1), Pp])
    col, _, row, _ = colourings(G, (0, 1))
    assert column_colouring_is_valid(P, col) and row_colouring_is_valid(P, row)


def test_tuple_outputs_and_argnums_tuple(rng):
    def h(x, p):
        return two_arguments(x, p), (x[:5] * p[0]) ** 2

    n = 40
    x, p = rng.standard_normal(n), rng.uniform(0.5, 1.5, 3)
    H = jx.compile(h, x, p)
    sparse = H.jacobian(x, p, argnums=(0, 1), sparse=True)
    dense_ = H.jacobian(x, p, argnums=(0, 1), mode="forward")
    assert len(sparse) == 2 and all(len(s) == 2 for s in sparse)
    for s_out, d_out in zip(sparse, dense_):
        for s, d in zip(s_out, d_out):
            assert isinstance(s, sp.csr_array)
            np.testing.assert_allclose(s.toarray(), d.reshape(s.shape), rtol=1e-14, atol=0)


# ------------------------------------------------------------------------------ batches
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["tridiagonal", "block_diagonal", "stencil_2d", "where"])
def test_batched_sparse_equals_per_point(name, mode, rng):
    f, n, P = CASES[name][:3]
    F = compiled(name)
    X = np.concatenate([np.stack(_points(n, rng)), rng.standard_normal((3, n))])
    JB = F.jacobian(X, sparse=True, mode=mode, threads=2)
    assert isinstance(JB, SparseJacobians)
    N, nnz = X.shape[0], int(P.sum())
    assert len(JB) == N and JB.nnz == nnz
    assert JB.shape == (N,) + P.shape and JB.values.shape == (N, nnz)
    assert isinstance(JB.pattern, sp.csr_array)
    np.testing.assert_array_equal(JB.pattern.toarray(), P)
    for k in range(N):
        Jk = JB[k]
        assert isinstance(Jk, sp.csr_array) and Jk.shape == P.shape
        one = F.jacobian(X[k], sparse=True, mode=mode)
        np.testing.assert_array_equal(Jk.indptr, one.indptr)
        np.testing.assert_array_equal(Jk.indices, one.indices)
        np.testing.assert_allclose(Jk.data, one.data, rtol=1e-15, atol=0)
    np.testing.assert_allclose(JB.toarray(), F.jacobian(X, mode="forward"), rtol=1e-14, atol=0)


def test_sparse_jacobians_type(rng):
    F = compiled("tridiagonal")
    X = rng.standard_normal((2, 3, 50))
    JB = F.jacobian(X, sparse=True)
    assert JB.batch_shape == (2, 3) and JB.shape == (2, 3, 50, 50)
    assert JB.values.shape == (2, 3, 148)
    row = JB[1]
    assert isinstance(row, SparseJacobians) and row.values.shape == (3, 148)
    assert_close(row[2].toarray(), broyden_jacobian(X[1, 2]))
    assert_close(JB.toarray()[1, 2], broyden_jacobian(X[1, 2]))
    assert "SparseJacobians" in repr(JB)
    # a point's csr_array owns its values: editing it leaves the batch alone
    J0 = JB[0][0]
    J0.data[:] = 0.0
    assert_close(JB[0][0].toarray(), broyden_jacobian(X[0, 0]))


# BUG (then in jacext/_vm.pyx, Function._sparse_jacobian): vals.reshape(batch + (-1,)) cannot infer
# -1 from 0 points ("cannot reshape array of size 0 into shape (0,newaxis)"); the width
# is the pattern's nnz. The dense batch path handles empty batches.
def test_empty_batch_sparse():
    F = compiled("tridiagonal")
    assert F.jacobian(np.zeros((0, 50))).shape == (0, 50, 50)
    empty = F.jacobian(np.zeros((0, 50)), sparse=True)
    assert empty.values.shape == (0, 148) and empty.toarray().shape == (0, 50, 50)


def test_batched_sparse_with_tuple_outputs_is_refused():
    F = jx.compile(two_outputs, np.zeros(40))
    with pytest.raises(ValueError, match="single pattern"):
        F.jacobian(np.zeros((2, 40)), sparse=True)


# ------------------------------------------------------------------------------- errors
def test_sparse_with_out_is_refused():
    F = compiled("tridiagonal")
    with pytest.raises(ValueError, match="sparse=True"):
        F.jacobian(np.zeros(50), sparse=True, out=np.empty((50, 50)))


def test_bad_mode_with_sparse():
    with pytest.raises(ValueError, match="mode"):
        compiled("tridiagonal").jacobian(np.zeros(50), sparse=True, mode="sideways")


def test_pickled_function_gives_the_same_sparse_jacobian(rng):
    F = compiled("stencil_2d")
    x = rng.standard_normal(K_GRID**2)
    F2 = pickle.loads(pickle.dumps(F))
    assert F2.colours() == F.colours()
    np.testing.assert_array_equal(F2.jacobian(x, sparse=True).toarray(),
                                  F.jacobian(x, sparse=True).toarray())


HUGE = 200_000      # a dense Jacobian of 8 * HUGE**2 bytes = 320 GB


@pytest.fixture(scope="module")
def huge():
    return jx.compile(broyden, np.zeros(HUGE))


def _kernel_overcommits():
    try:
        with open("/proc/sys/vm/overcommit_memory") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def _raises_before_allocating(call):
    """call() raises MemoryError while Python-visible allocations (NumPy's included,
    which tracemalloc sees) stay small; returns the message."""
    tracemalloc.start()
    try:
        with pytest.raises(MemoryError) as info:
            call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB allocated before the MemoryError"
    return str(info.value)


@pytest.mark.parametrize("mode", [
    "auto",
    # The one-point fast path (any explicit mode, and "auto" when colouring does not pay)
    # must check the size too, before np.empty.
    "forward",
    "reverse",
])
def test_huge_dense_jacobian_raises_memory_error_naming_its_size(huge, mode):
    x = np.zeros(HUGE)
    msg = _raises_before_allocating(lambda: huge.jacobian(x, mode=mode))
    assert "sparse=True" in msg
    assert "GiB" in msg and str(HUGE) in msg
    assert "298" in msg            # 8 * 2e5**2 bytes in GiB


def test_huge_sparse_jacobian_works(huge, rng):
    x = rng.standard_normal(HUGE)
    J = huge.jacobian(x, sparse=True)
    assert isinstance(J, sp.csr_array) and J.shape == (HUGE, HUGE)
    assert J.nnz == 3 * HUGE - 2
    assert_close(J.diagonal(), 3 - 4 * x)
    np.testing.assert_array_equal(J.diagonal(1), np.full(HUGE - 1, -2.0))
    np.testing.assert_array_equal(J.diagonal(-1), np.full(HUGE - 1, -1.0))
    assert huge.colours() == (3, 3)
    # the value_and_jacobian path checks the size too
    with pytest.raises(MemoryError, match="sparse=True"):
        huge.value_and_jacobian(x)


# ------------------------------------------------------------------ per-output cones
def _arrow_head_jacobian_csr(x):
    """d arrow_head / dx by hand: row 0 is 2x; row i >= 1 has x_i at column 0 and
    2 x_i + x_0 on the diagonal."""
    n = x.shape[0]
    rows = np.concatenate([np.zeros(n, dtype=int), np.arange(1, n), np.arange(1, n)])
    cols = np.concatenate([np.arange(n), np.zeros(n - 1, dtype=int), np.arange(1, n)])
    vals = np.concatenate([2 * x, x[1:], 2 * x[1:] + x[0]])
    return sp.csr_array((vals, (rows, cols)), shape=(n, n))


def test_arrow_head_at_scale_uses_one_reverse_sweep_per_output(rng):
    """Both colourings fail on an arrow-head (a dense row and a dense column: n colours
    either way), so compressed sweeps would cost n sweeps and an n x n compressed
    matrix; the per-output cones cost O(n) in all."""
    n = 200_000
    F = jx.compile(arrow_head, np.zeros(n))
    x = rng.standard_normal(n)
    J = F.jacobian(x, sparse=True)
    assert F.colours() == (n, n)
    assert plan_of(F, sparse=True).compressed == "cones"     # one reverse sweep per output
    want = _arrow_head_jacobian_csr(x)
    assert J.nnz == 3 * n - 2
    assert abs(J - want).max() <= 1e-12 * abs(want).max()
    # a batch takes the same route, point by point
    X = rng.standard_normal((3, 50))
    G = jx.compile(arrow_head, np.zeros(50))
    JB = G.jacobian(X, sparse=True)
    for k in range(3):
        assert abs(JB[k] - _arrow_head_jacobian_csr(X[k])).max() <= 1e-12 * 50
        np.testing.assert_array_equal(JB[k].toarray(), G.jacobian(X[k], mode="reverse"))


# ------------------------------------------------- the sparse Jacobian tape (one point)
# After JAC_TAPE_AFTER_POINTS single-point forward sparse Jacobians (sparse=True, or dense
# mode="auto" when it colours; value_and_jacobian counts apart), a tape of the pattern's
# nonzeros (jacext/derivative.py) replaces the compressed sweeps; a result with an inf or
# nan goes back to the sweeps (their zero kills).  What it returns must not change: the
# results after the threshold equal those before bit for bit (up to the sign of a zero),
# and the hand-written Jacobians to rounding.

FORWARD = "forward"


def _sparse_tape(F, n, values=False, mode=FORWARD):
    """F's sparse Jacobian tape (argnums 0) of this sweep mode, or None; asking adds no
    point to the count.  (n: F's input count, for the callers' symmetry.)"""
    return jacobian_tape_slot(F, 0, mode, True, values).current


def _run(F, jt, x):
    """A Jacobian tape's outputs at x (or the rows of x)."""
    return jx.Function(jt, F.arg_shapes, ((jt.n_outputs,),), False, "jt")(x)


def _after(F, mode=FORWARD):
    """How many single-point sparse Jacobians F's sweeps do before its sparse Jacobian
    tape of this mode is built (the build's estimated cost over a point's sweeps)."""
    from jacext.plan import JAC_TAPE_AFTER_POINTS
    after = jacobian_tape_slot(F, 0, mode, True).after
    assert 1 <= after <= JAC_TAPE_AFTER_POINTS
    return after


def _pass_threshold(F, x, call, mode=FORWARD):
    for _ in range(_after(F, mode)):
        call(F, x)


def _blocks(x, nb=24, b=5):
    X = x.reshape(nb, b)
    return (np.tanh(X) * (X**2).sum(axis=1, keepdims=True)).reshape(-1)


def _blocks_jacobian(x, nb=24, b=5):
    """y_i = tanh(x_i) S, S the sum of squares over x_i's block: dy_i/dx_j =
    [i == j] (1 - tanh(x_i)**2) S + tanh(x_i) 2 x_j inside a block, 0 outside."""
    J = np.zeros((x.size, x.size))
    for k in range(nb):
        s = slice(k * b, (k + 1) * b)
        xb = x[s]
        t = np.tanh(xb)
        J[s, s] = np.diag((1 - t**2) * np.sum(xb**2)) + np.outer(t, 2 * xb)
    return J


RNG_TAPE = np.random.default_rng(3)
N_RT, M_RT = 120, 130
I_RT, J_RT, K_RT = (RNG_TAPE.integers(0, N_RT, M_RT) for _ in range(3))


def _random_sparse(x):
    return np.sin(x[I_RT]) * np.cos(x[J_RT]) + x[K_RT] ** 2


def _random_sparse_jacobian(x):
    J = np.zeros((M_RT, N_RT))
    rows = np.arange(M_RT)
    np.add.at(J, (rows, I_RT), np.cos(x[I_RT]) * np.cos(x[J_RT]))
    np.add.at(J, (rows, J_RT), -np.sin(x[I_RT]) * np.sin(x[J_RT]))
    np.add.at(J, (rows, K_RT), 2 * x[K_RT])
    return J


# name -> (f, n, the hand-written dense Jacobian, mode for sparse=True)
TAPE_FAMILIES = {
    "banded": (broyden, 120, broyden_jacobian, "auto"),
    "block_diagonal": (_blocks, 120, _blocks_jacobian, "auto"),
    # both colourings need n colours: auto takes the per-output cones; forward is asked
    "arrow_head": (arrow_head, 60, lambda x: _arrow_head_jacobian_csr(x).toarray(), "forward"),
    "random_sparse": (_random_sparse, N_RT, _random_sparse_jacobian, "forward"),
}


def test_sparse_tape_threshold_counts_single_points():
    n = 80
    F = jx.compile(broyden, np.zeros(n))
    x = np.linspace(-1.0, 1.0, n)
    after = _after(F)
    for _ in range(after - 1):
        F.jacobian(x, sparse=True)
    assert _sparse_tape(F, n) is None
    assert _sparse_tape(F, n) is None             # asking counts nothing
    F.jacobian(x)                                 # dense auto (coloured) counts with them
    jt = _sparse_tape(F, n)
    assert isinstance(jt, Tape)
    assert _sparse_tape(F, n) is jt               # cached
    assert jt.n_outputs == F.sparsity().nnz == 3 * n - 2
    # a float64 point's value_and_jacobian takes that tape and one value sweep (the fast
    # path of F.jacobian(x)); the general path's (here: a list) counts apart, for a tape
    # with the values too
    v, J = F.value_and_jacobian(x)
    np.testing.assert_array_equal(v, F(x))
    np.testing.assert_array_equal(J, F.jacobian(x))
    assert _sparse_tape(F, n, values=True) is None
    for _ in range(after):
        v2, J2 = F.value_and_jacobian(x.tolist())
    np.testing.assert_array_equal(v2, v)
    np.testing.assert_array_equal(J2, J)
    jv = _sparse_tape(F, n, values=True)
    assert isinstance(jv, Tape) and jv is not jt
    assert jv.n_outputs == n + 3 * n - 2


@pytest.mark.parametrize("name", TAPE_FAMILIES)
def test_sparse_tape_gives_the_results_of_the_sweeps(name, rng):
    f, n, jac, mode = TAPE_FAMILIES[name]
    F = jx.compile(f, np.zeros(n))
    assert plan_of(F, 0, mode, True).compressed == FORWARD
    coloured_dense = plan_of(F).compressed == FORWARD
    points = [rng.uniform(-1.0, 1.0, n) for _ in range(3)] + [rng.standard_normal(n)]
    with np.errstate(all="ignore"):
        before_s = [F.jacobian(x, sparse=True, mode=mode) for x in points]
        before_d = [F.jacobian(x) for x in points]
        before_v = [F.value_and_jacobian(x) for x in points]
    assert _sparse_tape(F, n) is None
    _pass_threshold(F, points[0], lambda G, x: G.jacobian(x, sparse=True, mode=mode))
    jt = _sparse_tape(F, n)
    assert isinstance(jt, Tape)
    if coloured_dense:
        _pass_threshold(F, points[0], lambda G, x: G.value_and_jacobian(x))
        assert isinstance(_sparse_tape(F, n, values=True), Tape)
    ptr, idx = _pattern(F)
    for k, x in enumerate(points):
        Js = F.jacobian(x, sparse=True, mode=mode)
        assert isinstance(Js, sp.csr_array) and Js.shape == (F.n_outputs, n)
        np.testing.assert_array_equal(Js.indptr, ptr)
        np.testing.assert_array_equal(Js.indices, idx)
        np.testing.assert_array_equal(Js.indptr, before_s[k].indptr)
        np.testing.assert_array_equal(Js.indices, before_s[k].indices)
        np.testing.assert_array_equal(Js.data, before_s[k].data)
        np.testing.assert_array_equal(_run(F, jt, x), Js.data)   # the tape gave them
        Jd = F.jacobian(x)
        np.testing.assert_array_equal(Jd, before_d[k])
        y, Jv = F.value_and_jacobian(x)
        np.testing.assert_array_equal(y, before_v[k][0])
        np.testing.assert_array_equal(Jv, before_v[k][1])
        assert_same_bits(y, F(x))
        # NumPy sums in its own order (jacext in a balanced tree): equal to rounding
        np.testing.assert_allclose(y, f(x), rtol=1e-14, atol=1e-14)
        # the independent reference: the hand-written Jacobian
        want = jac(x)
        np.testing.assert_allclose(Js.toarray(), want, rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(Jd, want, rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(Jv, want, rtol=1e-13, atol=1e-14)


def assert_same_bits(actual, desired):
    np.testing.assert_array_equal(actual, desired)
    np.testing.assert_array_equal(np.signbit(actual), np.signbit(desired))


def sqrt_where(x):
    return np.where(x > 0, np.sqrt(x), 0.0) * (2.0 + _shift(x, 1))


def sqrt_of_where(x):
    # at x <= 0 the tape's term is sqrt's infinite partial times a zero tangent (nan);
    # the sweeps' zero kill makes it 0
    return np.sqrt(np.where(x > 0, x, 0.0)) * (2.0 + _shift(x, 1))


def _sqrt_where_jacobian(x):
    """Both functions: y_i = s_i (2 + x_{i-1}), s_i = sqrt(x_i) for x_i > 0 else 0, with
    ds_i/dx_i = 1 / (2 sqrt(x_i)) for x_i > 0 and 0 otherwise."""
    pos = x > 0
    s = np.where(pos, np.sqrt(np.where(pos, x, 1.0)), 0.0)
    ds = np.where(pos, 0.5 / np.sqrt(np.where(pos, x, 1.0)), 0.0)
    J = np.diag(ds * (2.0 + _shift(x, 1)))
    J[np.arange(1, x.size), np.arange(x.size - 1)] = s[1:]
    return J


@pytest.mark.parametrize("f", [sqrt_where, sqrt_of_where])
def test_non_finite_tape_results_go_back_to_the_sweeps(f, rng):
    n = 60
    F = jx.compile(f, np.zeros(n))
    assert plan_of(F, 0, "auto", True).compressed == FORWARD and plan_of(F).compressed == FORWARD
    np.testing.assert_array_equal(F.sparsity().toarray(), _band(n, n, 1, 0))
    x = rng.uniform(0.2, 2.0, n)
    x[::4] = 0.0
    x[1::7] = -0.5
    x[2::9] = -0.0
    before_s = F.jacobian(x, sparse=True)
    before_d = F.jacobian(x)
    before_v = F.value_and_jacobian(x)
    positive = rng.uniform(0.2, 2.0, n)
    _pass_threshold(F, positive, lambda G, p: G.jacobian(p, sparse=True))
    _pass_threshold(F, positive, lambda G, p: G.value_and_jacobian(p))
    jt = _sparse_tape(F, n)
    assert isinstance(jt, Tape)
    assert isinstance(_sparse_tape(F, n, values=True), Tape)
    if f is sqrt_of_where:
        with np.errstate(all="ignore"):
            assert not np.isfinite(_run(F, jt, x)).all()   # the tape alone: nan here
    want = _sqrt_where_jacobian(x)
    Js = F.jacobian(x, sparse=True)
    assert np.isfinite(Js.data).all()
    np.testing.assert_array_equal(Js.data, before_s.data)
    np.testing.assert_array_equal(Js.indices, before_s.indices)
    np.testing.assert_allclose(Js.toarray(), want, rtol=1e-15, atol=0)
    Jd = F.jacobian(x)
    np.testing.assert_array_equal(Jd, before_d)
    np.testing.assert_allclose(Jd, want, rtol=1e-15, atol=0)
    out = np.full((n, n), np.nan)
    assert F.jacobian(x, out=out) is out
    np.testing.assert_array_equal(out, before_d)
    y, Jv = F.value_and_jacobian(x)
    assert_same_bits(y, before_v[0])
    with np.errstate(invalid="ignore"):
        assert_same_bits(y, f(x))
    np.testing.assert_array_equal(Jv, before_v[1])
    np.testing.assert_allclose(Jv, want, rtol=1e-15, atol=0)
    # where every entry is finite the tape serves, with the same numbers
    Jp = F.jacobian(positive, sparse=True)
    np.testing.assert_array_equal(_run(F, jt, positive), Jp.data)
    np.testing.assert_allclose(Jp.toarray(), _sqrt_where_jacobian(positive), rtol=1e-15,
                               atol=0)


def _row_indices_increase(J):
    return all((np.diff(J.indices[J.indptr[i]:J.indptr[i + 1]]) > 0).all()
               for i in range(J.shape[0]))


@pytest.mark.parametrize("phase", ["sweeps", "tape"])
def test_csr_results_are_independent_and_canonical(phase, rng):
    import scipy.sparse.linalg as spla
    n = 100
    F = jx.compile(broyden, np.zeros(n))
    x1, x2 = rng.uniform(-0.5, 0.5, n), rng.uniform(-0.5, 0.5, n)
    if phase == "tape":
        _pass_threshold(F, x1, lambda G, x: G.jacobian(x, sparse=True))
        assert isinstance(_sparse_tape(F, n), Tape)
    else:
        assert _sparse_tape(F, n) is None
    J1 = F.jacobian(x1, sparse=True)
    J2 = F.jacobian(x2, sparse=True)
    ptr, idx = _pattern(F)
    S = F.sparsity()
    for J in (J1, J2):
        assert isinstance(J, sp.csr_array) and J.shape == (n, n) and J.dtype == np.float64
        assert J.data.dtype == np.float64 and J.nnz == 3 * n - 2
        assert J.has_sorted_indices and J.has_canonical_format
        assert _row_indices_increase(J)                      # checked, not only flagged
        for arr in (J.data, J.indices, J.indptr):
            for other in (ptr, idx, S.indices, S.indptr):
                assert not np.shares_memory(arr, other)
    for a in ("data", "indices", "indptr"):
        assert not np.shares_memory(getattr(J1, a), getattr(J2, a)), a
    assert_close(J1.toarray(), broyden_jacobian(x1))
    want2 = broyden_jacobian(x2)
    assert_close(J2.toarray(), want2)
    keep = [J2.data.copy(), J2.indices.copy(), J2.indptr.copy()]
    # the caller owns its arrays: writing into one result changes no other, and no later one
    J1.data[:] = 0.0
    J1.indices[0] = n - 1
    J1.indptr[1] = 0
    J1.indices[::-1].sort()
    for arr, old in zip((J2.data, J2.indices, J2.indptr), keep):
        np.testing.assert_array_equal(arr, old)
    J3 = F.jacobian(x2, sparse=True)
    np.testing.assert_array_equal(J3.indptr, ptr)
    np.testing.assert_array_equal(J3.indices, idx)
    np.testing.assert_array_equal(J3.data, J2.data)
    assert J3.has_sorted_indices and _row_indices_increase(J3)
    assert_close(J3.toarray(), want2)
    np.testing.assert_array_equal(F.sparsity().toarray(), _band(n, n, 1, 1))
    # SciPy's solver takes it: the same solution as a dense solve of the hand Jacobian
    b = rng.standard_normal(n)
    got = spla.spsolve(J3.tocsc(), b)
    np.testing.assert_allclose(got, np.linalg.solve(want2, b), rtol=1e-10, atol=1e-12)
    got = spla.spsolve(J3, b)
    np.testing.assert_allclose(got, np.linalg.solve(want2, b), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("phase", ["sweeps", "tape"])
def test_dense_auto_out_is_overwritten_entirely(phase, rng):
    n = 100
    F = jx.compile(broyden, np.zeros(n))
    assert plan_of(F).compressed == FORWARD
    x = rng.standard_normal(n)
    if phase == "tape":
        _pass_threshold(F, x, lambda G, p: G.jacobian(p))
        assert isinstance(_sparse_tape(F, n), Tape)
    P = _band(n, n, 1, 1)
    for x in (rng.standard_normal(n), rng.uniform(-1.0, 1.0, n)):
        want = broyden_jacobian(x)
        out = np.full((n, n), np.nan)
        assert F.jacobian(x, out=out) is out
        assert not np.isnan(out).any()
        np.testing.assert_array_equal(out[~P], 0.0)          # structural zeros written
        assert_close(out, want)
        np.testing.assert_array_equal(out, F.jacobian(x, mode="forward"))
        # a C-contiguous view into a larger array: its rows only
        big = np.full((n + 5, n), np.nan)
        view = big[2:n + 2]
        assert F.jacobian(x, out=view) is view
        np.testing.assert_array_equal(view, out)
        assert np.isnan(big[:2]).all() and np.isnan(big[n + 2:]).all()
        # not C-contiguous (a transposed view, a strided slice): refused, left untouched,
        # as documented (out is "a preallocated float64 C-contiguous array")
        for bad in (np.full((n, n), np.nan).T, np.full((n, 2 * n), np.nan)[:, ::2]):
            with pytest.raises(ValueError, match="C-contiguous"):
                F.jacobian(x, out=bad)
            assert np.isnan(bad).all()


def test_dense_auto_out_tuple_of_non_contiguous_arrays(rng):
    """Tuple outputs: out is a tuple of arrays, any layout (each copied into)."""
    n = 40
    F = jx.compile(two_outputs, np.zeros(n))
    assert plan_of(F).compressed is not None
    x = rng.standard_normal(n)
    D1, D2 = F.jacobian(x, mode="forward")
    o1 = np.full((n, n), np.nan).T                           # F-contiguous
    o2_base = np.full((7, 3 * n), np.nan)
    o2 = o2_base[:, 1::3]                                    # strided
    res = F.jacobian(x, out=(o1, o2))
    assert isinstance(res, tuple) and res[0] is o1 and res[1] is o2
    np.testing.assert_allclose(o1, D1, rtol=1e-14, atol=0)
    np.testing.assert_allclose(o2, D2, rtol=1e-14, atol=0)
    assert_close(o1, broyden_jacobian(x))
    assert_close(o2, _arrow_head_jacobian_csr(x).toarray()[:7])
    assert np.isnan(o2_base[:, 0::3]).all() and np.isnan(o2_base[:, 2::3]).all()


def test_sparse_tape_keeps_signed_zero_constants_apart(rng):
    """atan2(+-0.0, x) * x for x < 0: +-pi, a finite Jacobian whose sign follows the zero's.
    The tape's instructions for 0.0 and -0.0 are neighbours of one op word (one traced call):
    the single-point sweep must not run them as one immediate (at 1443d7c the tape gave
    +pi where the sweeps gave -pi; fixed in 696b0a6)."""
    n = 40
    c = np.where(np.arange(n) < n // 2, 0.0, -0.0)
    f = lambda v: np.arctan2(c, v) * v
    F = jx.compile(f, np.zeros(n))
    assert plan_of(F, 0, "auto", True).compressed == FORWARD
    points = [-rng.uniform(0.5, 2.0, n) for _ in range(3)]
    before = [F.jacobian(x, sparse=True) for x in points]
    _pass_threshold(F, points[0], lambda G, x: G.jacobian(x, sparse=True))
    assert isinstance(_sparse_tape(F, n), Tape)
    for x, b in zip(points, before):
        want = np.diag(np.arctan2(c, x) + x * (-c / (c**2 + x**2)))
        assert (np.diag(want)[: n // 2] > 3.0).all() and (np.diag(want)[n // 2:] < -3.0).all()
        np.testing.assert_allclose(b.toarray(), want, rtol=1e-15, atol=0)
        J = F.jacobian(x, sparse=True)
        np.testing.assert_array_equal(J.data, b.data)
        np.testing.assert_allclose(J.toarray(), want, rtol=1e-15, atol=0)
        assert_same_bits(F(x), f(x))


# ------------------------------------- the reverse sparse tape (row colouring, cones) --

REVERSE = "reverse"


def _bratu_jacobian(u, k, lam=6.0):
    """``bratu``'s Jacobian by hand: h^2 (the 5-point neighbours - 4 I) + diag(lam exp(u))."""
    h2 = (k + 1.0) ** 2
    near = _stencil_pattern(k) & ~np.eye(k * k, dtype=bool)
    return h2 * (near - 4.0 * np.eye(k * k)) + np.diag(lam * np.exp(u))


def _bratu_12(u):
    return bratu(u, k=12)    # 7 colours either way: auto takes the per-output cones


@pytest.mark.parametrize("f, n, jac, mode", [
    (_bratu_12, 144, lambda u: _bratu_jacobian(u, 12), "auto"),   # per-output cones
    (arrow_head, 60, lambda x: _arrow_head_jacobian_csr(x).toarray(), "auto"),
    (broyden, 90, broyden_jacobian, "reverse"),                   # row colouring
])
def test_reverse_sparse_tape_gives_the_results_of_the_sweeps(f, n, jac, mode, rng):
    F = jx.compile(f, np.zeros(n))
    assert plan_of(F, 0, mode, True).compressed != FORWARD
    points = [rng.uniform(-0.9, 0.9, n) for _ in range(3)]
    before = [F.jacobian(x, sparse=True, mode=mode) for x in points]
    before_d = [F.jacobian(x) for x in points]
    assert _sparse_tape(F, n, mode=REVERSE) is None
    _pass_threshold(F, points[0], lambda G, x: G.jacobian(x, sparse=True, mode=mode), REVERSE)
    jt = _sparse_tape(F, n, mode=REVERSE)
    assert isinstance(jt, Tape)
    for k, x in enumerate(points):
        J = F.jacobian(x, sparse=True, mode=mode)
        np.testing.assert_array_equal(_run(F, jt, x), J.data)     # the tape gave them
        np.testing.assert_array_equal(J.indptr, before[k].indptr)
        np.testing.assert_array_equal(J.indices, before[k].indices)
        np.testing.assert_array_equal(J.data, before[k].data)     # the sweeps' bit for bit
        np.testing.assert_array_equal(F.jacobian(x), before_d[k])
        np.testing.assert_allclose(J.toarray(), jac(x), rtol=1e-13, atol=1e-14)


def _sqrt_sin(x):
    return np.sqrt(x) * np.sin(x)


def test_reverse_sparse_tape_falls_back_where_not_finite():
    # at x = 0 the adjoint reaching sqrt is sin(0) = 0 and sqrt's partial is inf: nan in
    # the tape, 0 by the sweeps' zero kill
    n = 40
    F = jx.compile(_sqrt_sin, np.ones(n))
    x = np.where(np.arange(n) % 3 == 0, 0.0, np.linspace(0.1, 2.0, n))
    want = F.jacobian(x, sparse=True, mode="reverse")
    assert np.isfinite(want.data).all()
    _pass_threshold(F, np.ones(n), lambda G, z: G.jacobian(z, sparse=True, mode="reverse"),
                    REVERSE)
    jt = _sparse_tape(F, n, mode=REVERSE)
    assert isinstance(jt, Tape) and not np.isfinite(_run(F, jt, x)).all()
    got = F.jacobian(x, sparse=True, mode="reverse")
    np.testing.assert_array_equal(got.data, want.data)
    with np.errstate(divide="ignore", invalid="ignore"):
        ref = np.where(x > 0, np.sin(x) / (2 * np.sqrt(x)) + np.sqrt(x) * np.cos(x), 0.0)
    np.testing.assert_allclose(got.toarray(), np.diag(ref), rtol=1e-14, atol=0)
