"""Jacobian tapes (jacext/jactape.py): the tape differentiated symbolically, run in
one value sweep per block of 64 points (src_c/batch.c, block_values.h).

Once a Function has been asked for batched Jacobians of enough points
(``JAC_TAPE_AFTER_POINTS``, per argnums and mode), ``F.jacobian(X)`` evaluates
its Jacobian tape instead of the tangent or adjoint sweeps; a block whose
Jacobian holds an inf or nan is redone point by point by the sweeps.  The
reference for all of it is the single-point path, which never uses a Jacobian
tape: a batch must equal the loop of single points bit for bit (up to the sign
of a zero, which ``np.testing.assert_array_equal`` ignores; nan equals nan
there).  Independent references: analytic formulas written here, the complex
step (bench/reference.py) and the C library's sin and cos (``math``).

* every op of tests/test_ops.py's table: batch vs single points, both modes,
  interior points and edge values (0, -0, +-inf, nan, huge) scattered over
  blocks; every op has a Jacobian tape (its partials derived from ops.def);
* zero kills through np.where; the robot arm against the complex step;
  thread counts; several arguments, argnums and ``out=``;
* the point threshold, the node budget, the tape's own outputs;
* sin and cos of one value (one sincos call) against the C library;
* plain batched values (the fixed-block value sweep) for every op.
"""
from __future__ import annotations

import importlib
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from jacext._tape import Tape
from test_ops import NAMES, REF, edges

import jacext as jx
from jacext import jactape
from jacext.ops import OP_MASK, OPS
from jacext.plan import JAC_TAPE_AFTER_POINTS, build_cost, reverse_in_bulk
from jacext.testing import jacobian_tape_slot, op_partials

ROOT = Path(__file__).resolve().parent.parent
MODES = ("forward", "reverse")
BLOCK = 64                      # points per block of the value sweep (batch.c's JX_VB)
N_INTERIOR = JAC_TAPE_AFTER_POINTS + 2 * BLOCK + 29   # > the threshold, a partial last block
N_EDGE = 40 * BLOCK + 21


def _cols(F, argnums=0):
    """The int32 input indices of argnums (the arguments' flattened, concatenated entries)."""
    nums = (argnums,) if isinstance(argnums, int) else argnums
    offsets = np.cumsum([0] + [math.prod(s) for s in F.arg_shapes])
    return np.concatenate([np.arange(offsets[k], offsets[k + 1]) for k in nums]).astype(np.int32)


def _probe(F, mode, argnums=0):
    """F's dense Jacobian tape for (argnums, mode) if built (asking adds no points)."""
    return jacobian_tape_slot(F, argnums, mode).current


def _build(F, mode, **how):
    """F's dense Jacobian tape arrays, built here (``how``: jactape.build's choices)."""
    t = F.tape
    return jactape.build(t.arrays(), t.fixed_partials(), _cols(F), mode, 10**6, **how)


def _as_function(F, tape):
    """A Jacobian tape's arrays as a Function of F's arguments (its outputs flat)."""
    return jx.Function(tape, F.arg_shapes, ((len(tape["out_slot"]),),), False, "t")


def _loop_jacobian(F, X, mode):
    """The per-point Jacobians (the sweeps of the single-point path), stacked."""
    return np.stack([F.jacobian(x, mode=mode) for x in X])


def _loop_values(F, X):
    return np.stack([F(x) for x in X])


# ------------------------------------------------------------- one op, three inputs --

def _op_function(name, variant):
    """x of shape (3,) -> (4,): the op elementwise, mixed with + and * (so that forward and
    reverse sum differently).  ``variant``: "vars" (every operand a variable) or "const"
    (binary ops: a constant on the right in one use, on the left in the other)."""
    spec = REF[name]
    fn = spec.fn
    if spec.arity == 1:
        def f(x):
            u, v, w = fn(x[0]), fn(x[1]), fn(x[2])
            return np.stack([u * x[1] + x[2], u + v, v * w, w - x[0]])
    elif spec.arity == 3:      # np.where(c, a, b): x[0] the condition
        def f(x):
            u = fn(x[0], x[1], x[2])
            v = fn(x[0], x[2] * x[1], x[1])
            return np.stack([u * x[2] + x[1], u + v, v * x[0], u * v])
    elif variant == "vars":
        def f(x):
            u, v = fn(x[0], x[1]), fn(x[2], x[1])
            return np.stack([u * x[2] + x[1], u + v, v * x[0], u * v])
    else:
        ca, cb = float(spec.domain[0][0]), float(spec.domain[1][0])

        def f(x):
            u, v = fn(x[0], cb), fn(ca, x[1])
            return np.stack([u * x[2] + x[1], u + v, v * x[0], x[2] - u])
    return f


def _roles(name):
    """Which operand of the op each input plays (its domain is drawn from that operand's)."""
    arity = REF[name].arity
    return {1: (0, 0, 0), 2: (0, 1, 0), 3: (0, 1, 2)}[arity]


def _cases():
    for name in NAMES:
        yield pytest.param(name, "vars", id=f"{name}-vars")
        if REF[name].arity == 2:
            yield pytest.param(name, "const", id=f"{name}-const")


CASES = list(_cases())


def _interior(name, n, rng):
    """n points of the op's domain: each input uniform over the hull of its operand's sample
    points (interior for every op of the table), a condition drawn from its sample values
    (zeros included, so that both branches are taken)."""
    spec = REF[name]
    cols = []
    for role in _roles(name):
        pts = np.asarray(spec.domain[role], dtype=np.float64)
        if spec.arity == 3 and role == 0:
            cols.append(rng.choice(pts, n))
        else:
            cols.append(rng.uniform(pts.min(), pts.max(), n))
    return np.stack(cols, axis=1)


def _with_edges(name, n, rng):
    """n interior points with the op's edge values written into rows of a few blocks (the
    first and last point always among them): the other blocks stay finite."""
    X = _interior(name, n, rng)
    E = np.stack(edges(name), axis=1)            # (n_edges, arity)
    arity = REF[name].arity
    # where an edge tuple goes: (input indices) per use
    uses = {1: [(0,), (1,), (2,)], 2: [(0, 1), (2, 1)], 3: [(0, 1, 2)]}[arity]
    n_blocks = (n + BLOCK - 1) // BLOCK
    blocks = sorted({0, 1, 5, 6, 7, 12, 20, 21, 22, 30, n_blocks - 2, n_blocks - 1})
    pool = np.concatenate([np.arange(b * BLOCK, min((b + 1) * BLOCK, n)) for b in blocks])
    full = (2, BLOCK - 1, BLOCK, n - 2)              # rows entirely of edge values, below
    pool = pool[~np.isin(pool, (0, n - 1) + full)]
    count = len(E) * len(uses)
    rows = np.concatenate([[0, n - 1], rng.choice(pool, count - 2, replace=False)])
    k = 0
    for use in uses:
        for e in E:
            X[rows[k], list(use)] = e
            k += 1
    # a few rows entirely of edge values
    flat = E.ravel()
    for r in full:
        X[r] = flat[rng.integers(0, len(flat), 3)]
    return X


@pytest.mark.parametrize("name, variant", CASES)
def test_op_batch_jacobian_equals_single_points(name, variant):
    """Interior points, more than the threshold: the Jacobian tape (where there is one)
    against the single-point sweeps, bit for bit, in both modes."""
    rng = np.random.default_rng(OPS[name])
    f = _op_function(name, variant)
    X = _interior(name, N_INTERIOR, rng)
    F = jx.compile(f, X[0])
    for mode in MODES:
        assert _probe(F, mode) is None
        J = F.jacobian(X, mode=mode)
        assert J.shape == (len(X), 4, 3)
        assert isinstance(_probe(F, mode), Tape), f"{name} {mode}: no Jacobian tape"
        np.testing.assert_array_equal(J, _loop_jacobian(F, X, mode), err_msg=f"{name} {mode}")


@pytest.mark.parametrize("name, variant", CASES)
@pytest.mark.parametrize("mode", MODES)
def test_op_tape_built_by_group_equals_single_points(name, variant, mode):
    """The builders' bulk paths (which long vectorised tapes take; a scalar tape's groups
    of one go node by node) forced onto every op's tape, edge values included: the batch
    against the single-point sweeps, bit for bit; and the same tape as node by node."""
    rng = np.random.default_rng(OPS[name] + 1000)
    f = _op_function(name, variant)
    X = _with_edges(name, N_EDGE, rng)
    F = jx.compile(f, X[0])
    by_node = _build(F, mode, by_group=False)
    by_group = _build(F, mode, by_group=True, singletons_in_bulk=True)
    assert by_node is not None and by_group is not None
    assert len(by_group["op"]) == len(by_node["op"])
    with np.errstate(all="ignore"):
        J = F.jacobian(X, mode=mode)
        assert isinstance(_probe(F, mode), Tape)
        np.testing.assert_array_equal(J, _loop_jacobian(F, X, mode), err_msg=name)
        G = [_as_function(F, t) for t in (by_node, by_group)]
        np.testing.assert_array_equal(G[0](X), G[1](X))


def _vectorised(x):
    """Long traced calls (the builders go group by group): a where over both branches, a
    reversal, a running sum, a broadcast scalar, reductions."""
    y = np.where(x > 0.1, np.sin(x) * x[0], np.exp(-x) + x[::-1])
    z = np.arctan2(x, x[::-1]) + np.hypot(x, 2.0) - np.abs(x - 0.3)
    return np.concatenate([y * y, [np.sum(y), np.max(x), x[1]], np.cumsum(x) * 2.0,
                           x / (1 + x[2] ** 2), np.tanh(z) * np.maximum(x, 0.2)])


def test_vectorised_tape_by_group_in_both_modes():
    X = np.random.default_rng(12).uniform(-1.0, 1.0, (300, 40))
    X[5, :3] = [0.1, 0.0, -0.0]          # where's condition on its edge, abs at zero
    F = jx.compile(_vectorised, X[0])
    assert reverse_in_bulk(F.n_instructions, jactape.n_groups(F.tape.arrays()))
    for mode in MODES:
        after = jacobian_tape_slot(F, 0, mode).after
        assert after < 300
        J = F.jacobian(X, mode=mode)
        assert isinstance(_probe(F, mode), Tape)
        np.testing.assert_array_equal(J, _loop_jacobian(F, X, mode), err_msg=mode)
        np.testing.assert_array_equal(F.jacobian(X, mode=mode), J)


@pytest.mark.parametrize("by_group", [True, False])
def test_directional_tape_is_the_jacobian_times_v(by_group):
    """``build(along=True)``: one column J v with v further inputs (Hessian-vector
    products), equal to the tangent sweep's jvp at random points and at edge values; with
    block instructions too."""
    W = np.random.default_rng(3).normal(size=(40, 40))

    def with_block(x):
        return np.tanh(W @ np.sin(x)) * x + _vectorised(x)[:40]

    rng = np.random.default_rng(4)
    X = rng.uniform(-1.0, 1.0, (30, 40))
    X[3, :3] = [0.1, 0.0, -0.0]
    V = rng.normal(size=(30, 40))
    V[7, 5] = 0.0
    for f in (_vectorised, with_block):
        F = jx.compile(f, X[0])
        t = F.exact_tape
        arrays = jactape.build(t.arrays(), t.fixed_partials(), _cols(F), "forward", 10**6,
                               values=False, along=True, by_group=by_group)
        D = jx.Function(arrays, F.arg_shapes + F.arg_shapes, F.out_shapes, False, "jv")
        for x, v in zip(X, V):
            np.testing.assert_allclose(D(x, v), F.jvp(x, v)[1], rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(D(X, V), np.stack([F.jvp(x, v)[1] for x, v in zip(X, V)]),
                                   rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match="directional"):
        jactape.build(t.arrays(), t.fixed_partials(), _cols(F), "reverse", 10**6, along=True)


def test_pow_fmax_fmin_get_jacobian_tapes():
    """Their partials come from ops.def like every op's: a variable exponent, a constant
    one that NumPy's power loop would not rewrite (2.5), fmax and fmin, nan included."""
    def f(x):   # enough other work that the tape pays (plan.JAC_TAPE_MAX_LENGTH)
        s = np.sin(x) * np.cos(x[::-1]) + np.exp(x) * x + np.tanh(x * x[0])
        return np.concatenate([s, np.stack([x[0] ** x[1] * s[0], x[2] ** 2.5 + s[1],
                                            np.fmax(x[0], x[2]) * s[2],
                                            np.fmin(x[1], np.log(x[0])) * s[0]])])
    rng = np.random.default_rng(1)
    X = rng.uniform(0.5, 2.0, (JAC_TAPE_AFTER_POINTS + 77, 3))
    X[5, 2] = np.nan
    X[6, :2] = 1.0                       # fmax and fmin ties
    X[7, 0] = X[7, 2]
    F = jx.compile(f, np.ones(3))
    assert OPS["POW"] in {int(w) & OP_MASK for w in F.tape_arrays()["op"]}
    for mode in MODES:
        with np.errstate(all="ignore"):
            J = F.jacobian(X, mode=mode)
            assert isinstance(_probe(F, mode), Tape)
            np.testing.assert_array_equal(J, _loop_jacobian(F, X, mode))
            np.testing.assert_array_equal(F.jacobian(X, mode=mode), J)


def test_immediates_mixed():
    """x * 2.5, 3.0 / x, x - 1.5 and friends: fixed partials (constants) and immediates."""
    def f(x):
        return np.stack([x[0] * 2.5, 3.0 / x[1], x[2] - 1.5 + x[0] * x[1], 2.0 - x[0] / 4.0,
                         np.sin(x[1]) * 0.5 + x[2] * x[2]])
    rng = np.random.default_rng(7)
    X = rng.uniform(0.5, 3.0, (N_INTERIOR, 3)) * rng.choice([-1.0, 1.0], (N_INTERIOR, 3))
    F = jx.compile(f, X[0])
    x0, x1, x2 = X.T
    zero = np.zeros_like(x0)
    want = np.stack([np.stack([2.5 + zero, zero, zero], -1),
                     np.stack([zero, -3.0 / x1**2, zero], -1),
                     np.stack([x1, x0, 1.0 + zero], -1),
                     np.stack([-0.25 + zero, zero, zero], -1),
                     np.stack([zero, 0.5 * np.cos(x1), 2.0 * x2], -1)], axis=1)
    for mode in MODES:
        J = F.jacobian(X, mode=mode)
        assert isinstance(_probe(F, mode), Tape)
        np.testing.assert_array_equal(J, _loop_jacobian(F, X, mode))
        np.testing.assert_allclose(J, want, rtol=1e-14, atol=0)


@pytest.mark.parametrize("name, variant", CASES)
def test_op_batch_jacobian_at_edge_values(name, variant):
    """Edge values in some blocks (their Jacobian holds inf or nan: redone by the sweeps,
    zero kills), finite blocks from the Jacobian tape; both equal the single points."""
    rng = np.random.default_rng(1000 + OPS[name])
    f = _op_function(name, variant)
    X = _with_edges(name, N_EDGE, rng)
    # f alone (a comparison's Jacobian stays finite: its blocks stay on the Jacobian tape),
    # and with x0 * x1 * x2 beside it, whose Jacobian is inf or nan wherever an input is:
    # those blocks go to the sweeps whatever the op
    g = lambda x: np.concatenate([f(x), np.stack([x[0] * x[1] * x[2]])])  # noqa: E731
    for h, n_out in ((f, 4), (g, 5)):
        F = jx.compile(h, np.zeros(3))
        for mode in MODES:
            J = F.jacobian(X, mode=mode)
            assert J.shape == (len(X), n_out, 3)
            assert isinstance(_probe(F, mode), Tape)
            single = _loop_jacobian(F, X, mode)
            np.testing.assert_array_equal(J, single, err_msg=f"{name} {mode}")
            np.testing.assert_array_equal(F.jacobian(X, mode=mode, threads=2), J)
            if h is g:      # non-finite blocks met, else the fallback went untested
                assert not np.isfinite(J[:, 4]).all()


@pytest.mark.parametrize("name, variant", CASES)
def test_op_batch_values_equal_single_points(name, variant):
    """F(X), the fixed-block value sweep, against single points, interior and edge values."""
    rng = np.random.default_rng(2000 + OPS[name])
    f = _op_function(name, variant)
    F = jx.compile(f, np.zeros(3))
    for X in (_interior(name, 700, rng), _with_edges(name, N_EDGE, rng)):
        np.testing.assert_array_equal(F(X), _loop_values(F, X), err_msg=name)
        np.testing.assert_array_equal(F(X[:37]), _loop_values(F, X[:37]))   # a partial block


# ------------------------------------------------------------------- zero kills --

def test_zero_kill_through_where():
    """d/dx where(x > 0, sqrt(x), 0) at x = 0: the sqrt branch's partial is inf, but the
    branch is not taken: 0, finite, as the sweeps give it."""
    f = lambda x: np.where(x > 0, np.sqrt(x), 0.0)
    rng = np.random.default_rng(3)
    X = rng.uniform(-2.0, 4.0, (4096, 3))
    X[rng.choice(4096, 300, replace=False), rng.integers(0, 3, 300)] = 0.0
    X[[0, 63, 64, 4095]] = [[0.0, -0.0, 1.0], [0.0, 0.0, 0.0], [-1.0, 0.0, 2.0], [0.0, 5.0, -0.0]]
    X[100:164] = 0.0                    # one whole block of zeros
    F = jx.compile(f, np.zeros(3))
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(X > 0, 0.5 / np.sqrt(X), 0.0)
    want = d[:, :, None] * np.eye(3)
    for mode in MODES:
        J = F.jacobian(X, mode=mode)
        assert isinstance(_probe(F, mode), Tape)
        assert np.isfinite(J).all()
        assert (J[X <= 0] == 0.0).all()
        np.testing.assert_array_equal(J, _loop_jacobian(F, X, mode))
        np.testing.assert_allclose(J, want, rtol=1e-15, atol=0)


# ---------------------------------------------------------------- the robot arm --

def _bench(module):
    if not (ROOT / "bench" / "run.py").exists():
        pytest.skip("bench/ is not part of this tree (an sdist)")
    if os.environ.get("JACEXT_TEST_INSTALLED") == "1":
        pytest.skip("the benchmark problems run against the source checkout")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(f"bench.{module}")


def test_arm_against_complex_step_and_single_points():
    arm = _bench("problems").arm
    reference = _bench("reference")
    Q = np.random.default_rng(4).uniform(-np.pi, np.pi, (3000, 7))
    F = jx.compile(arm, Q[0])
    want = reference.complex_step_jacobian(arm, Q)
    assert want.shape == (3000, 12, 7)
    for mode in MODES:
        J = F.jacobian(Q, mode=mode)
        assert isinstance(_probe(F, mode), Tape)
        np.testing.assert_allclose(J, want, rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(J, _loop_jacobian(F, Q, mode))
        for threads in (1, 2, 3):
            np.testing.assert_array_equal(F.jacobian(Q, mode=mode, threads=threads), J)
        # a batch of several axes is the same points
        np.testing.assert_array_equal(F.jacobian(Q.reshape(30, 100, 7), mode=mode),
                                      J.reshape(30, 100, 12, 7))
    np.testing.assert_array_equal(F.jacobian(Q), F.jacobian(Q, mode="forward"))   # auto: 7 < 12


def test_node_budget():
    arm = _bench("problems").arm
    F = jx.compile(arm, np.zeros(7))
    t = F.tape
    cols = np.arange(7, dtype=np.int32)
    for mode in MODES:
        assert jactape.build(t.arrays(), t.fixed_partials(), cols, mode, max_nodes=10) is None
        jt = jactape.build(t.arrays(), t.fixed_partials(), cols, mode, max_nodes=10**6)
        assert jt is not None
        assert len(jt["out_slot"]) == 12 * (1 + 7)
        assert jt["n_in"] == 7


def test_jacobian_tape_outputs_are_values_then_rows():
    """The tape's own outputs at single points: [f(x), J row-major], J as the sweeps give it."""
    def f(x):
        return np.stack([np.sin(x[0]) * x[1], np.exp(x[1] - x[2]), np.hypot(x[0], x[2]),
                         np.tanh(x[0] * x[1] * x[2])])
    rng = np.random.default_rng(5)
    X = rng.uniform(-2.0, 2.0, (JAC_TAPE_AFTER_POINTS, 3))
    F = jx.compile(f, X[0])
    for mode in MODES:
        F.jacobian(X, mode=mode)
        jt = _probe(F, mode)
        assert isinstance(jt, Tape)
        assert jt.n_outputs == 4 + 4 * 3
        G = _as_function(F, jt.arrays())
        for x in X[:50]:
            out = G(x)
            np.testing.assert_array_equal(out[:4], F(x))
            np.testing.assert_array_equal(out[4:].reshape(4, 3), F.jacobian(x, mode=mode))


# ---------------------------------------------------- arguments, argnums, out= --

def _two_args(a, b):
    return np.concatenate([np.tanh(a @ b), a[1] * np.exp(b) - a[0] * b[2],
                           np.stack([np.hypot(a[0, 0], b[1])])])


@pytest.fixture(scope="module")
def two_args():
    rng = np.random.default_rng(6)
    A = rng.uniform(-1.5, 1.5, (2500, 2, 3))
    B = rng.uniform(-1.5, 1.5, (2500, 3))
    return A, B


@pytest.mark.parametrize("argnums", [0, 1, (0, 1)], ids=["a", "b", "ab"])
def test_several_arguments_and_argnums(two_args, argnums):
    A, B = two_args
    F = jx.compile(_two_args, A[0], B[0])
    multi = isinstance(argnums, tuple)
    nums = argnums if multi else (argnums,)
    shapes = [(len(A), 6) + (A, B)[k].shape[1:] for k in nums]
    for mode in MODES:
        J = F.jacobian(A, B, argnums=argnums, mode=mode)
        assert isinstance(_probe(F, mode, argnums), Tape)
        parts = J if multi else (J,)
        loop = [F.jacobian(a, b, argnums=argnums, mode=mode) for a, b in zip(A, B)]
        for j, part in enumerate(parts):
            assert part.shape == shapes[j]
            want = np.stack([p[j] if multi else p for p in loop])
            np.testing.assert_array_equal(part, want, err_msg=f"{argnums} {mode}")
        # into the caller's arrays, which come back
        if multi:
            out = tuple(np.full(s, np.nan) for s in shapes)
        else:
            out = np.full(shapes[0], np.nan)
        got = F.jacobian(A, B, argnums=argnums, mode=mode, out=out)
        assert got is out
        for o, part in zip(out if multi else (out,), parts):
            np.testing.assert_array_equal(o, part)
    # a broadcast argument: b the same for every point
    J = F.jacobian(A, B[0], argnums=argnums, mode="reverse")
    loop = [F.jacobian(a, B[0], argnums=argnums, mode="reverse") for a in A]
    for j, part in enumerate(J if multi else (J,)):
        np.testing.assert_array_equal(part, np.stack([p[j] if multi else p for p in loop]))


def test_value_and_jacobian_of_a_batch(two_args):
    A, B = two_args
    F = jx.compile(_two_args, A[0], B[0])
    for mode in MODES:
        y, J = F.value_and_jacobian(A, B, argnums=(0, 1), mode=mode)
        assert isinstance(_probe(F, mode, (0, 1)), Tape)
        np.testing.assert_array_equal(J[0], F.jacobian(A, B, argnums=0, mode=mode))
        np.testing.assert_array_equal(y, F(A, B))
        np.testing.assert_array_equal(y, np.stack([F(a, b) for a, b in zip(A, B)]))


# ------------------------------------------------------------------ the threshold --

def test_threshold_counts_points_per_argnums_and_mode():
    def f(x):
        return np.stack([np.sin(x[0]) * x[1], x[1] * x[2] + np.exp(x[0]), np.sqrt(x[2] * x[2])])
    assert 2 * 1000 < JAC_TAPE_AFTER_POINTS <= 3 * 1000
    X = np.random.default_rng(8).uniform(-2.0, 2.0, (1000, 3))
    F = jx.compile(f, X[0])
    # a small tape's build (Python per group) outweighs its sweeps: the cap applies
    assert jacobian_tape_slot(F, 0, "forward").after == jacobian_tape_slot(
        F, 0, "reverse").after == JAC_TAPE_AFTER_POINTS
    single = _loop_jacobian(F, X, "forward")
    results = []
    for k in range(3):
        assert _probe(F, "forward") is None, f"built after {k * 1000} points"
        results.append(F.jacobian(X, mode="forward"))
    jt = _probe(F, "forward")
    assert isinstance(jt, Tape)
    assert _probe(F, "forward") is jt                             # kept
    assert _probe(F, "reverse") is None                           # reverse counts apart
    results.append(F.jacobian(X, mode="forward"))                 # the tape's own run
    for r in results:
        np.testing.assert_array_equal(r, single)
    # reverse: two points short of the threshold, then a batch of two (a batch of one
    # takes the single-point path, which counts for the single-point tapes)
    F.jacobian(np.zeros((JAC_TAPE_AFTER_POINTS - 2, 3)) + X[:1], mode="reverse")
    assert _probe(F, "reverse") is None
    F.jacobian(X[:1], mode="reverse")
    assert _probe(F, "reverse") is None
    J2 = F.jacobian(X[:2], mode="reverse")
    assert isinstance(_probe(F, "reverse"), Tape)
    np.testing.assert_array_equal(J2[0], F.jacobian(X[0], mode="reverse"))
    np.testing.assert_array_equal(J2[1], F.jacobian(X[1:2], mode="reverse")[0])
    # an empty batch, with a tape at hand
    assert F.jacobian(np.zeros((0, 3)), mode="forward").shape == (0, 3, 3)
    # single points never count
    G = jx.compile(f, X[0])
    for x in X[:50]:
        G.jacobian(x, mode="forward")
    G.jacobian(X[: JAC_TAPE_AFTER_POINTS - 1000], mode="forward")
    assert _probe(G, "forward") is None


def test_threshold_of_a_long_tape_is_its_build_cost_over_its_sweeps():
    """Ski rental: a tape whose sweeps per point cost about as much as its build gets
    its Jacobian tape after few points (here 2: n = 400 Broyden, 2,398 instructions,
    401 forward lanes), and the results stay the single points' bit for bit."""
    n = 400

    def broyden(x):
        left = np.concatenate([np.zeros(1), x[:-1]])
        right = np.concatenate([x[1:], np.zeros(1)])
        return (3 - 2 * x) * x - left - 2 * right + 1

    X = np.random.default_rng(9).uniform(-1.0, 1.0, (3, n))
    F = jx.compile(broyden, X[0])
    after = jacobian_tape_slot(F, 0, "forward").after
    T = F.n_instructions
    assert after == 2
    # the model: the sweeps of `after` points cover the build, those of one fewer do not
    build = build_cost("forward", T, 6)     # 6 groups: one per traced NumPy call
    assert (after - 1) * T * (1 + n) < build <= after * T * (1 + n)
    J0 = F.jacobian(X[:1], mode="forward")
    assert _probe(F, "forward") is None
    J12 = F.jacobian(X[1:], mode="forward")
    assert isinstance(_probe(F, "forward"), Tape)
    J = np.concatenate([J0, J12, F.jacobian(X, mode="forward")])
    np.testing.assert_array_equal(J, np.concatenate([_loop_jacobian(F, X, "forward")] * 2))


# --------------------------------------------------------------------- sin and cos --

def _libm(fn, values):
    """The C library's sin or cos (math calls it), nan where it raises (inf)."""
    out = np.empty_like(values)
    for i, v in enumerate(values.ravel()):
        out.flat[i] = fn(v) if math.isfinite(v) else math.nan
    return out


def test_sin_and_cos_of_one_value():
    """sin(x) and cos(x) of the same slot: one sincos call in the block value sweep (glibc),
    which must give sin's and cos's own results."""
    special = np.array([1e5, 1e22, -1e22, -3.7, 0.0, -0.0, np.inf, -np.inf, np.nan, 1e300,
                        -1e300, 5e-324, np.pi, 2.0**1023 * 1.5, 7.0e17, 1e-300, 3.0e9])
    rng = np.random.default_rng(9)
    n = JAC_TAPE_AFTER_POINTS + 77
    X = np.concatenate([rng.uniform(-10.0, 10.0, (n // 2, 4)),
                        rng.uniform(-1e6, 1e6, (n - n // 2, 4))])
    rows = rng.choice(n, 400, replace=False)
    X[rows, rng.integers(0, 4, 400)] = rng.choice(special, 400)
    X[0] = special[:4]
    X[-1] = special[4:8]
    X[BLOCK:BLOCK + len(special)] = special[:, None]

    def f(x):
        return np.concatenate([np.sin(x), np.cos(x) * x[0]])

    def g(x):
        return np.concatenate([np.sin(x), np.cos(x)])

    G = jx.compile(g, np.zeros(4))
    values = G(X)
    np.testing.assert_array_equal(values, _loop_values(G, X))
    s, c = _libm(math.sin, X), _libm(math.cos, X)
    np.testing.assert_array_equal(values, np.concatenate([s, c], axis=1))
    # NumPy's float64 sin and cos call the C library on this build (not a SIMD
    # approximation); where they do not, only the C library is the reference
    with np.errstate(invalid="ignore"):
        np_s, np_c = np.sin(X), np.cos(X)
    if np.array_equal(np_s, s, equal_nan=True) and np.array_equal(np_c, c, equal_nan=True):
        np.testing.assert_array_equal(values, np.concatenate([np_s, np_c], axis=1))
    # the Jacobian tape pairs them too (d sin = cos, d cos = -sin)
    for mode in MODES:
        J = G.jacobian(X, mode=mode)
        assert isinstance(_probe(G, mode), Tape)
        np.testing.assert_array_equal(J, _loop_jacobian(G, X, mode))
        eye = np.eye(4, dtype=bool)
        want = np.concatenate([np.where(eye, c[:, :, None], 0.0),
                               np.where(eye, -s[:, :, None], 0.0)], axis=1)
        np.testing.assert_array_equal(J, want)
    F = jx.compile(f, np.zeros(4))
    np.testing.assert_array_equal(F(X), _loop_values(F, X))
    for mode in MODES:
        np.testing.assert_array_equal(F.jacobian(X, mode=mode), _loop_jacobian(F, X, mode))


# ------------------------------------------------- one slot as both operands --

SAME_OPERAND = ["ATAN2", "HYPOT", "MAXIMUM", "MINIMUM", "LOGADDEXP", "DIV", "MOD", "FMOD",
                "POW", "FMAX", "FMIN"]


@pytest.mark.parametrize("mode", ["forward", "reverse"])
@pytest.mark.parametrize("name", SAME_OPERAND)
def test_one_slot_as_both_operands(name, mode):
    """op(x, x): one slot read twice by one instruction; batch equals single points."""
    fn = REF[name].fn

    def f(x):
        u = fn(x[0], x[0])
        w = np.sin(x[0]) * x[1]
        return np.stack([u * w + w * 1.7, u + np.exp(x[0]) * 0.3])
    X = np.random.default_rng(10).uniform(0.3, 2.5, (2500, 2))
    F = jx.compile(f, X[0])
    assert OPS[name] in {int(w) & OP_MASK for w in F.tape_arrays()["op"]}
    np.testing.assert_array_equal(F.jacobian(X, mode=mode), _loop_jacobian(F, X, mode))


# ------------------------------------------------------- single points from the tape --

def _single_point_function(x):
    """A small dense Jacobian with an np.where guard: at x[0] = 0 the sqrt's slope is
    infinite on the branch not taken (the tape gives nan there, the sweeps' zero kills 0)."""
    return np.stack([np.sin(x[0]) * x[1], np.where(x[0] > 0, np.sqrt(np.abs(x[0])), 0.0) + x[2],
                     x[1] ** 3.0 - np.exp(x[2] * x[0]), np.hypot(x[1], x[2])])


@pytest.mark.parametrize("mode", ["auto", "forward", "reverse"])
def test_single_points_run_the_dense_jacobian_tape(mode):
    """Once its threshold is passed by single points alone, every single-point Jacobian --
    the fast path, out=, value_and_jacobian, argnums -- comes from the dense Jacobian tape,
    and equals the sweeps' (a Function kept on the sweeps) bit for bit, zeros of either
    sign alike; a point whose Jacobian is not finite on the tape is redone by the sweeps."""
    from jacext.testing import without_jacobian_tapes
    rng = np.random.default_rng(21)
    points = rng.uniform(-1.5, 1.5, (40, 3))
    points[3, 0] = 0.0                       # the guarded branch at its edge
    F = jx.compile(_single_point_function, np.zeros(3))
    S = without_jacobian_tapes(jx.compile(_single_point_function, np.zeros(3)))
    sweep_mode = "forward" if mode == "auto" else mode    # 3 inputs, 4 outputs: forward
    slot = jacobian_tape_slot(F, 0, sweep_mode)
    for k in range(JAC_TAPE_AFTER_POINTS + 1):
        F.jacobian(points[k % 40], mode=mode)
        if slot.current is not None:
            break
    assert isinstance(slot.current, Tape), "no tape after the threshold"
    assert k + 1 <= slot.after
    out = np.empty((4, 3))
    for p in points:
        want = S.jacobian(p, mode=mode)
        np.testing.assert_array_equal(F.jacobian(p, mode=mode), want)
        assert F.jacobian(p, mode=mode, out=out) is out
        np.testing.assert_array_equal(out, want)
        y, J = F.value_and_jacobian(p, mode=mode)
        y_s, J_s = S.value_and_jacobian(p, mode=mode)
        np.testing.assert_array_equal(J, J_s)
        np.testing.assert_array_equal(y, y_s)
    assert np.isfinite(F.jacobian(points[3], mode=mode)).all()    # the sweeps redid it


def test_single_points_with_argnums_run_the_tape():
    def g(a, b):
        return np.concatenate([np.tanh(a * b[0]), np.stack([np.sum(a * a) * b[1]])])
    rng = np.random.default_rng(4)
    A, B = rng.uniform(-1, 1, (50, 3)), rng.uniform(-1, 1, (50, 2))
    F = jx.compile(g, A[0], B[0])
    from jacext.testing import without_jacobian_tapes
    S = without_jacobian_tapes(jx.compile(g, A[0], B[0]))
    for k in range(JAC_TAPE_AFTER_POINTS):
        F.jacobian(A[k % 50], B[k % 50], argnums=1)
    assert jacobian_tape_slot(F, 1, "forward").current is not None
    for a, b in zip(A, B):
        np.testing.assert_array_equal(F.jacobian(a, b, argnums=1), S.jacobian(a, b, argnums=1))


# ------------------------------------------- the Jacobian tape alone, op by op --
# The tests above meet the Jacobian tape through F.jacobian's batches (its blocks, its
# fallback to the sweeps); here each tape the builders make is run by itself, as the
# plain function of the inputs it is, and held to the sweeps point by point.

@pytest.mark.parametrize("name, variant", CASES)
def test_jacobian_tape_of_one_op_is_its_partials(name, variant):
    """One instruction z = op(x0, x1) (or op(x0, c), op(c, x1): the fixed partials), its
    Jacobian tape from every builder (forward and reverse, node by node and by group) run
    alone: its entries are the C partials of that op (op_partials), bit for bit, and equal
    the single-point sweeps, wherever they are finite."""
    spec = REF[name]
    fn, op = spec.fn, OPS[name]
    rng = np.random.default_rng(OPS[name] + 3000)
    cols = [np.asarray(p, dtype=np.float64) for p in spec.domain]
    if spec.arity == 3:                # np.where(c, a, b): x = (c, a, b)
        f = lambda x: fn(x[0], x[1], x[2])[None]  # noqa: E731
        c_val = None
    elif variant == "const" and spec.arity == 2:
        c_val = float(cols[1][0])
        f = lambda x: np.stack([fn(x[0], c_val), fn(float(cols[0][0]), x[1])])  # noqa: E731
    else:
        c_val = None
        f = (lambda x: fn(x[0], x[1])[None]) if spec.arity == 2 else (  # noqa: E731
            lambda x: fn(x[0])[None])
    n_in = max(spec.arity, 2) if spec.arity != 1 else 1
    interior = np.stack([rng.uniform(c.min(), c.max(), 200) for c in cols], axis=1)
    if spec.arity == 3:
        interior[:, 0] = rng.choice(cols[0], 200)
    edge = np.stack(np.broadcast_arrays(*edges(name)), axis=1)
    X = np.concatenate([interior, edge])[:, :n_in]
    F = jx.compile(f, X[0])
    assert op in {int(w) & OP_MASK for w in F.tape_arrays()["op"]}
    for mode in MODES:
        for how in ({"by_group": False}, {"by_group": True, "singletons_in_bulk": True}):
            tape = _build(F, mode, **how)
            assert tape is not None
            G = _as_function(F, tape)
            n_out = F.tape.n_outputs
            with np.errstate(all="ignore"):
                got = G(X)[:, n_out:].reshape(len(X), n_out, n_in)
                sweeps = np.stack([F.jacobian(x, mode=mode) for x in X]).reshape(got.shape)
                if spec.arity == 3:
                    want = np.array([[(0.0,) + op_partials(op, x[1], x[2], x[0])] for x in X])
                elif c_val is not None:      # rows: d op(x0, c)/dx0, d op(c0, x1)/dx1
                    c0 = float(cols[0][0])
                    want = np.array([[[op_partials(op, x[0], c_val)[0], 0.0],
                                      [0.0, op_partials(op, c0, x[1])[1]]] for x in X])
                else:
                    want = np.array([[op_partials(op, *x)[:n_in]] for x in X])
            fin = np.isfinite(got).all(axis=(1, 2))
            assert fin[:len(interior)].all(), (name, mode, how)
            np.testing.assert_array_equal(got[fin], want[fin], err_msg=f"{name} {mode} {how}")
            np.testing.assert_array_equal(got[fin], sweeps[fin], err_msg=f"{name} {mode} {how}")


@pytest.mark.parametrize("how", [{"by_group": False},
                                 {"by_group": True, "singletons_in_bulk": True}],
                         ids=["by-node", "by-group"])
@pytest.mark.parametrize("name", SAME_OPERAND)
def test_one_slot_as_both_operands_in_every_builder(name, how):
    """op(x, x) with x read by other instructions too, the reverse Jacobian tape of each
    builder run alone: its adjoint terms are summed in the single-point sweep's order (a
    later reader's first, then this one's a term, then its b term), so the Jacobians equal
    the sweeps' bit for bit; summed in another order they differ in the last bits."""
    fn = REF[name].fn

    def f(x):
        u = fn(x[0], x[0])
        w = np.sin(x[0]) * x[1]
        return np.stack([u * w + w * 1.7, u + np.exp(x[0]) * 0.3])
    X = np.random.default_rng(11).uniform(0.3, 2.5, (400, 2))
    F = jx.compile(f, X[0])
    tape = _build(F, "reverse", **how)
    assert tape is not None
    n_out = F.tape.n_outputs
    got = _as_function(F, tape)(X)[:, n_out:].reshape(len(X), n_out, 2)
    np.testing.assert_array_equal(got, _loop_jacobian(F, X, "reverse"))
