"""Jacobian tapes of tapes with block instructions (jacext/jactape_blocks.py): the
derivative of a block y = W x stays a block -- W times a Jacobian column's tangents
(forward), W^T times an output row's adjoints (reverse) -- or, where those have few
nonzeros, W's columns (rows) times them.

The reference is the sweeps (a Function kept on them by ``without_jacobian_tapes``), at
single points and over batches; BLAS sums in its own order, so the two agree to rounding
(1e-12 relative), nan and inf in the same places.  Hessians against central differences
of jacext's own gradient.

* every builder (forward, reverse; by group, node by node) on dense matrices, matrices
  with zero rows and columns, two layers, a block before a nonlinear op and a sum, scalar
  kinematics around a dense layer, two arguments and argnums;
* the tape keeps blocks: its size against the scalar form's (``testing.without_blocks``);
* F.jacobian_function (blocks kept), F.hessian, F.hvp, pickling, inlining;
* nan and inf in x and in W, against the sweeps;
* the planner: a block counts m x n in the work it weighs.
"""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from jacext._tape import Tape

import jacext as jx
from jacext import jactape, plan
from jacext.testing import (
    assert_same_values,
    central_difference,
    jacobian_tape_slot,
    without_blocks,
    without_jacobian_tapes,
)

RNG = np.random.default_rng(2024)
W = RNG.standard_normal((24, 20)) / 4
WZ = W.copy()
WZ[[3, 10]] = 0.0                       # zero rows: constant rows of W x
WZ[:, [0, 7, 19]] = 0.0                 # zero columns: inputs W x does not read
W1, B1 = RNG.standard_normal((40, 20)) / 5, RNG.standard_normal(40) / 5
W2 = RNG.standard_normal((30, 40)) / 6
V = RNG.standard_normal((24, 6)) / 3
LENGTHS = np.array([0.5, 0.4, 0.3])
WL, BL = RNG.standard_normal((24, 12)) / 3, RNG.standard_normal(24)
WO = RNG.standard_normal((4, 24)) / 5
MODES = ("forward", "reverse")
HOWS = [{"by_group": True}, {"by_group": False},
        {"by_group": True, "singletons_in_bulk": True}]


def _dense(x):
    # every operand of the block depends on every input: dense tangents into W
    return np.sin(W @ (np.cos(x) * np.sum(x)))


def _zeros(x):
    return np.tanh(WZ.T @ np.tanh(WZ @ x + 0.2)) * x[1]


def _two_layers(x):
    return np.tanh(W2 @ np.tanh(W1 @ x + B1))


def _block_nonlinear_sum(x):
    y = np.exp(W @ np.tanh(x * x[0]) / 4)
    return np.concatenate([y, [np.sum(y * y)]])


def _kinematics(q):
    """A planar 3-link arm's joint positions, then a dense layer on the features."""
    angles = np.cumsum(q)
    px = np.cumsum(LENGTHS * np.cos(angles))
    py = np.cumsum(LENGTHS * np.sin(angles))
    feats = np.concatenate([px, py, np.sin(q), np.cos(q)])
    return WO @ np.tanh(WL @ feats + BL)


def _two_args(a, b):
    return np.tanh(W2 @ np.tanh(W1 @ a) * b[0]) + np.sum(V @ b) * np.sin(W2[:, :20] @ a)


CASES = {
    "dense": (_dense, [(20,)]),
    "zero rows and columns": (_zeros, [(20,)]),
    "two layers": (_two_layers, [(20,)]),
    "block, nonlinear op, sum": (_block_nonlinear_sum, [(20,)]),
    "kinematics": (_kinematics, [(3,)]),
    "two arguments": (_two_args, [(20,), (6,)]),
}


def _compile(name):
    f, shapes = CASES[name]
    return jx.compile(f, *[np.zeros(s) for s in shapes])


def _points(name, n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1.0, 1.0, (n,) + s) for s in CASES[name][1]]


def _cols(F, argnums):
    nums = (argnums,) if isinstance(argnums, int) else argnums
    off = np.cumsum([0] + [int(np.prod(s)) for s in F.arg_shapes])
    return np.concatenate([np.arange(off[k], off[k + 1]) for k in nums]).astype(np.int32)


def _build(F, mode, argnums=0, values=True, **how):
    t = F.tape
    return jactape.build(t.arrays(), t.fixed_partials(), _cols(F, argnums), mode, 10**8,
                         values=values, **how)


def _as_function(F, arrays):
    return jx.Function(Tape(arrays), F.arg_shapes, ((len(arrays["out_slot"]),),), False,
                       "t")


def _flat_jacobian(J, multi, n_out, n_points=1):
    """J (nested as F.jacobian nests it) as rows of n_out x n_cols entries, row-major."""
    parts = J if multi else (J,)
    return np.concatenate([np.asarray(p).reshape(n_points, n_out, -1) for p in parts],
                          axis=2).reshape(n_points, -1)


ARGNUMS = [("dense", 0), ("zero rows and columns", 0), ("two layers", 0),
           ("block, nonlinear op, sum", 0), ("kinematics", 0), ("two arguments", 0),
           ("two arguments", 1), ("two arguments", (0, 1))]


# ------------------------------------------------------------- the builders --

@pytest.mark.parametrize("name, argnums", ARGNUMS, ids=[f"{n}-{a}" for n, a in ARGNUMS])
@pytest.mark.parametrize("mode", MODES)
def test_every_builder_equals_the_sweeps(name, argnums, mode):
    F = _compile(name)
    S = without_jacobian_tapes(_compile(name))
    args = _points(name, 150)
    multi = isinstance(argnums, tuple)
    n_out = F.n_outputs
    ref = _flat_jacobian(S.jacobian(*args, argnums=argnums, mode=mode), multi, n_out, 150)
    got = []
    for how in HOWS:
        arrays = _build(F, mode, argnums, **how)
        G = _as_function(F, arrays)
        out = G(*args)
        assert_same_values(out[:, :n_out], F(*args).reshape(150, -1), rtol=1e-13)
        assert_same_values(out[:, n_out:], ref, rtol=1e-12)
        # single points: the tape's one-lane sweep (dgemv) against the sweeps'
        for k in (0, 77):
            one = S.jacobian(*[a[k] for a in args], argnums=argnums, mode=mode)
            assert_same_values(G(*[a[k] for a in args])[n_out:],
                               _flat_jacobian(one, multi, n_out)[0], rtol=1e-12)
        got.append(out)
    # every builder makes the same tape (up to node order): the same numbers
    for out in got[1:]:
        np.testing.assert_array_equal(out, got[0])


@pytest.mark.parametrize("mode", MODES)
def test_tapes_keep_blocks_instead_of_entries(mode):
    """Blocks in, blocks out: a fraction of the scalar form's instructions, where
    matrices meet dense tangents (adjoints).  (Reverse, "dense"'s block meets one
    nonzero adjoint per output row: W's rows as products, as the scalar form has them.)"""
    names = ["zero rows and columns", "two layers", "kinematics", "two arguments"]
    for name in names + (["dense"] if mode == "forward" else []):
        F = _compile(name)
        T = Tape(_build(F, mode, values=False))
        assert T.n_blocks > F.tape.n_blocks, name
        scalar = Tape(without_blocks(F.tape.arrays()))
        assert scalar.n_blocks == 0
        flat = jactape.build(scalar.arrays(), scalar.fixed_partials(), _cols(F, 0), mode,
                             10**8, values=False)
        assert T.n_instructions * 5 < len(flat["op"]), (name, T.n_instructions,
                                                        len(flat["op"]))
    # the two layers' derivative: forward, W1's columns as products (a unit seed per
    # column), then W2 over dense tangents, one block per column; reverse, W2's rows as
    # products (one nonzero adjoint per output row), then W1^T over dense adjoints, one
    # block per row; and the function's own two blocks, whose values the partials need
    F = _compile("two layers")
    T = Tape(_build(F, mode, values=False))
    shape, dirs = ((30, 40), 20) if mode == "forward" else ((20, 40), 30)
    assert T.n_blocks == dirs + 2
    assert sum(b[1:3] == shape for b in T.blocks()) == dirs + (mode == "forward")
    assert T.n_instructions < 4 * 40 * dirs     # products, partials, operand copies


def test_zero_rows_of_w_give_structural_zeros():
    """A zero row of W leaves its row of W t without a term: those Jacobian entries are
    the constant 0 on the tape, not a block's row, though W meets dense tangents."""
    def f(x):
        return np.tanh(WZ @ np.tanh(W.T @ np.sin(W @ x)))

    F = jx.compile(f, np.zeros(20))
    S = without_jacobian_tapes(jx.compile(f, np.zeros(20)))
    x = np.random.default_rng(5).uniform(-1, 1, 20)
    J = S.jacobian(x)
    assert not J[[3, 10]].any() and J[:3].all()
    for mode in MODES:
        arrays = _build(F, mode, values=False)
        G = _as_function(F, arrays)
        np.testing.assert_allclose(G(x).reshape(J.shape), J, rtol=1e-12, atol=1e-15)
        assert Tape(arrays).n_blocks > 0
        slots = np.asarray(arrays["out_slot"]).reshape(J.shape)
        n_in, consts = arrays["n_in"], arrays["const_value"]
        zero_rows = slots[[3, 10]]
        assert ((zero_rows >= n_in) & (zero_rows < n_in + len(consts))).all()
        assert (consts[zero_rows - n_in] == 0.0).all()


# ---------------------------------------------------------- through the planner --

def test_batches_build_a_block_tape_and_agree_with_the_sweeps():
    F = _compile("two layers")
    S = without_jacobian_tapes(_compile("two layers"))
    (X,) = _points("two layers", 1000, seed=3)
    for mode in ("auto", "forward", "reverse"):
        for _ in range(3):
            J = F.jacobian(X, mode=mode)
        assert_same_values(J, S.jacobian(X, mode=mode), rtol=1e-12)
        np.testing.assert_array_equal(F.jacobian(X, mode=mode, threads=2), J)
        # (BLAS's products over fewer points may round otherwise)
        np.testing.assert_allclose(F.jacobian(X[:5], mode=mode), J[:5], rtol=1e-13,
                                   atol=1e-15)
    built = [jacobian_tape_slot(F, 0, m, values=v).current for m in MODES for v in (0, 1)]
    assert any(t is not None and t.n_blocks > 1 for t in built)


def test_planner_counts_a_block_as_its_matrix():
    # a sweep's work per lane: instructions, a block m x n as m x n
    F = _compile("two layers")
    assert F.tape.work == F.tape.n_instructions - 2 + 40 * 20 + 30 * 40
    slot = jacobian_tape_slot(F, 0, "forward")
    assert slot.after is not None
    assert slot.point_limit == plan.point_tape_limit(F.tape.work, 20)
    (X,) = _points("two layers", slot.after + 1)
    F.jacobian(X, mode="forward")
    jt = slot.current
    assert jt is not None and jt.n_blocks > 0
    assert jt.work > jt.n_instructions + jt.n_blocks
    # a wide network's dense Jacobian tape would pass JAC_TAPE_MAX_WORK: none is built
    A = RNG.standard_normal((256, 256)) / 16
    G = jx.compile(lambda x: np.tanh(A @ np.tanh(A @ x)), np.zeros(256))
    assert G.tape.work * 257 > plan.JAC_TAPE_MAX_WORK
    assert jacobian_tape_slot(G, 0, "forward").after is None


# ------------------------------------------------------------------ second order --

def _scalar(x):
    return np.sum(np.tanh(W2 @ np.tanh(W1 @ x + B1))) + np.sum(np.sin(WZ @ x) ** 2)


def test_jacobian_function_keeps_blocks_and_gives_the_hessian():
    x = np.random.default_rng(8).uniform(-1, 1, 20)
    F = jx.compile(_scalar, x)
    Gr = F.jacobian_function()
    assert Gr.tape.n_blocks > 0
    # far from the scalar form's derivative (blocks as per-entry multiply-adds)
    assert Gr.n_instructions < 2000
    np.testing.assert_allclose(Gr(x), F.jacobian(x), rtol=1e-12, atol=1e-14)
    H = Gr.jacobian(x)
    ref = central_difference(lambda z: F.jacobian(z), [x], [0])
    np.testing.assert_allclose(H, ref, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(F.hessian(x), H, rtol=1e-12, atol=1e-14)
    v = np.random.default_rng(9).standard_normal(20)
    np.testing.assert_allclose(F.hvp(x, v), H @ v, rtol=1e-12, atol=1e-13)
    # batches of the Jacobian Function, and its pickle
    X = np.random.default_rng(10).uniform(-1, 1, (50, 20))
    np.testing.assert_allclose(Gr(X)[7], Gr(X[7]), rtol=1e-13, atol=1e-15)
    P = pickle.loads(pickle.dumps(Gr))
    assert P.tape.n_blocks == Gr.tape.n_blocks
    np.testing.assert_array_equal(P(X), Gr(X))
    np.testing.assert_array_equal(P.jacobian(x), H)


def test_jacobian_function_of_a_vector_function():
    F = _compile("two arguments")
    a, b = (p[0] for p in _points("two arguments", 1, seed=4))
    S = without_jacobian_tapes(_compile("two arguments"))
    for argnums in (0, 1, (0, 1)):
        JF = F.jacobian_function(argnums)
        assert JF.tape.n_blocks > 0
        got, want = JF(a, b), S.jacobian(a, b, argnums=argnums)
        for g, w in zip(got if isinstance(argnums, tuple) else (got,),
                        want if isinstance(argnums, tuple) else (want,)):
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14)
    # second derivatives: the Jacobian of the Jacobian Function
    JF = F.jacobian_function(1)
    H = JF.jacobian(a, b, argnums=1)
    ref = central_difference(lambda aa, bb: S.jacobian(aa, bb, argnums=1), [a, b], [1])
    np.testing.assert_allclose(H.reshape(ref.shape), ref, rtol=1e-7, atol=1e-9)
    P = pickle.loads(pickle.dumps(JF))
    np.testing.assert_array_equal(P(a, b), JF(a, b))


def test_inlined_function_keeps_its_blocks():
    F = _compile("two layers")
    G = jx.compile(lambda x: F(x) * 2.0, np.zeros(20))
    assert G.tape.n_blocks == 2
    (X,) = _points("two layers", 20)
    np.testing.assert_array_equal(G(X), F(X) * 2.0)


# --------------------------------------------------------------------- inf, nan --

def _nonfinite_points(n, width, seed):
    X = np.random.default_rng(seed).uniform(-1, 1, (n, width))
    X[5, 3] = np.nan
    X[17, 0] = np.inf
    X[100, 4] = np.nan
    X[200, 7] = -np.inf
    X[300] = 0.0
    return X


@pytest.mark.parametrize("mode", ["auto", "forward", "reverse"])
@pytest.mark.parametrize("name", ["dense", "two layers", "block, nonlinear op, sum"])
def test_nan_and_inf_in_x_as_the_sweeps(name, mode):
    f = CASES[name][0]
    F, S = _compile(name), without_jacobian_tapes(_compile(name))
    X = _nonfinite_points(600, 20, 11)
    with np.errstate(all="ignore"):
        for _ in range(3):
            J = F.jacobian(X, mode=mode)
        assert_same_values(J, S.jacobian(X, mode=mode), rtol=1e-12)
        for k in (5, 17, 100, 200, 300):
            assert_same_values(F.jacobian(X[k], mode=mode), S.jacobian(X[k], mode=mode),
                               rtol=1e-12)
    assert any(jacobian_tape_slot(F, 0, m, values=v).current is not None
               for m in MODES for v in (0, 1))
    del f


WINF = W.copy()
WINF[5, 3] = np.inf
WINF[7, 1] = np.nan
WINF[2] = 0.0

NONFINITE_W = {
    "layers": lambda x: np.tanh(V.T @ np.sin(WINF @ (np.cos(x) * np.sum(x)))),
    "linear": lambda x: (WINF @ x) * x[0],
    "after": lambda x: WINF @ np.tanh(W.T @ np.sin(W @ x)),
}


@pytest.mark.parametrize("mode", ["auto", "forward", "reverse"])
@pytest.mark.parametrize("name", list(NONFINITE_W))
def test_inf_and_nan_in_w_as_the_sweeps(name, mode):
    f = NONFINITE_W[name]
    F = jx.compile(f, np.zeros(20))
    S = without_jacobian_tapes(jx.compile(f, np.zeros(20)))
    X = _nonfinite_points(400, 20, 12)
    with np.errstate(all="ignore"):
        for _ in range(3):
            J = F.jacobian(X, mode=mode)
        assert_same_values(J, S.jacobian(X, mode=mode), rtol=1e-12)
        for k in (0, 5, 300):
            assert_same_values(F.jacobian(X[k], mode=mode), S.jacobian(X[k], mode=mode),
                               rtol=1e-12)
        # a W with inf or nan never becomes a block of the Jacobian tape: its products
        # are scalar, W's zeros structural zeros (as the sweeps' zero kills)
        for m in MODES:
            G = _as_function(F, _build(F, m, values=False))
            for k in (0, 300):
                want = S.jacobian(X[k], mode="forward").reshape(-1)
                got = G(X[k])
                fin = np.isfinite(got)
                np.testing.assert_allclose(got[fin], want[fin], rtol=1e-12, atol=1e-14)
