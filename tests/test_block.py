"""Block instructions (src_c/block.c, vm.h): a traced product with a constant matrix is one
instruction y = W x over contiguous slots, run by BLAS in every sweep.

Every traced linear-algebra entry point that makes blocks, both operand orders, transposes,
stacks and broadcasting, checked by ``check_jacobian`` against NumPy's values and central
differences and, for linear maps, against the matrix itself (the Jacobian of W @ x is W);
the block against the scalar form of the same function; nan and inf; the pattern; batches;
pickling; the tape's size and its disassembly; corrupt block tables.
"""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from helpers import n_nodes
from jacext._tape import BLOCK, BLOCK_FIELDS, Tape

import jacext as jx
from jacext import plan
from jacext.testing import check_jacobian, jacobian_tape_slot, plan_of, without_jacobian_tapes

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
RNG = np.random.default_rng(1234)
W = RNG.standard_normal((20, 12))          # dense: a block
V = RNG.standard_normal((12, 9))
W3 = RNG.standard_normal((3, 20, 12))      # a stack of matrices


def n_blocks(F):
    return F.tape.n_blocks


def compiled(f, *shapes):
    return jx.compile(f, *[np.zeros(s) for s in shapes])


# ------------------------------------------------------- entry points --

LINEAR = [
    # (name, f, input shape, the Jacobian as NumPy computes it from the constants)
    ("W @ x", lambda x: W @ x, (12,), W),
    ("x @ W.T", lambda x: x @ W.T, (12,), W),
    ("np.dot(W, x)", lambda x: np.dot(W, x), (12,), W),
    ("np.dot(x, V)", lambda x: np.dot(x, V), (12,), V.T),
    ("np.matmul(W, x)", lambda x: np.matmul(W, x), (12,), W),
    ("np.matmul(x, V)", lambda x: np.matmul(x, V), (12,), V.T),
    ("W.T.T @ x", lambda x: W.T.T @ x, (12,), W),
    ("V.T @ x", lambda x: V.T @ x, (12,), V.T),
    ("einsum ij,j->i", lambda x: np.einsum("ij,j->i", W, x), (12,), W),
    ("einsum j,ij->i", lambda x: np.einsum("j,ij->i", x, W), (12,), W),
    ("einsum ji,j->i", lambda x: np.einsum("ji,j->i", V, x), (12,), V.T),
    ("tensordot", lambda x: np.tensordot(W, x, axes=1), (12,), W),
    ("tensordot axes", lambda x: np.tensordot(x, V, axes=([0], [0])), (12,), V.T),
    ("inner", lambda x: np.inner(W, x), (12,), W),
    ("inner x first", lambda x: np.inner(x, W), (12,), W),
    ("vdot", lambda x: np.vdot(W[0].repeat(8), np.tile(x, 8)),
     (12,), np.bincount(np.arange(96) % 12, weights=W[0].repeat(8))[None, :]),
]


@pytest.mark.parametrize("name, f, shape, J", LINEAR, ids=[c[0] for c in LINEAR])
def test_linear_entry_points_are_blocks_whose_jacobian_is_the_matrix(name, f, shape, J):
    F = compiled(f, shape)
    assert n_blocks(F) >= 1, name
    x = RNG.standard_normal(shape)
    got = check_jacobian(f, x, expected=J, F=F)
    np.testing.assert_allclose(np.asarray(got).reshape(J.shape), J, rtol=1e-14, atol=1e-14)


def test_matrix_operands_stacks_and_broadcasting():
    cases = [
        # a matrix of variables: one block per column (constant left) or row (right)
        (lambda X: W @ X, (12, 4)),
        (lambda X: X @ V, (5, 12)),
        (lambda X: X @ W.T, (5, 12)),
        # (..., m, n) @ (..., n): a block per matrix of the stack
        (lambda X: np.matmul(W3, X[..., None])[..., 0], (3, 12)),
        (lambda X: (W3 @ X[:, :, None]).sum(axis=-1), (3, 12)),
        # broadcasting one matrix over a stack of vectors, and a stack over one vector
        (lambda X: np.matmul(W, X[..., None])[..., 0], (2, 3, 12)),
        (lambda x: W3 @ x, (12,)),
        (lambda X: np.einsum("ij,kj->ki", W, X), (4, 12)),
        (lambda X: np.einsum("ij,jk->ik", W, X), (12, 3)),
        (lambda X: np.tensordot(W3, X, axes=([2], [0])), (12, 2)),
    ]
    for f, shape in cases:
        F = compiled(f, shape)
        assert n_blocks(F) >= 1
        check_jacobian(f, RNG.standard_normal(shape), F=F)


def test_compositions_chains_and_reuse():
    # a network: blocks fed by blocks and by elementwise calls (operands in place)
    W1, W2 = RNG.standard_normal((16, 12)) / 4, RNG.standard_normal((7, 16)) / 4
    b1 = RNG.standard_normal(16)

    def mlp(x):
        return np.tanh(W2 @ np.tanh(W1 @ x + b1))

    F = compiled(mlp, (12,))
    assert n_blocks(F) == 2
    check_jacobian(mlp, RNG.standard_normal(12), F=F)

    # operands that must be gathered into contiguous slots: reversed, mixed with a
    # constant (homogeneous coordinates), one value used twice
    W13 = RNG.standard_normal((10, 13))
    gathered = [
        (lambda x: W @ x[::-1], (12,)),
        (lambda x: W13 @ np.concatenate([np.sin(x), [1.0]]), (12,)),
        (lambda x: W @ np.concatenate([x[:6], x[:6] * 2.0]), (12,)),
        (lambda x: W @ np.stack([x[0]] * 12), (12,)),
    ]
    for f, shape in gathered:
        F = compiled(f, shape)
        assert n_blocks(F) == 1
        check_jacobian(f, RNG.standard_normal(shape), F=F)

    # one matrix for many blocks is stored once
    F = compiled(lambda X: X @ W.T, (6, 12))
    assert n_blocks(F) == 6
    assert F.tape_arrays()["weights"].size == W.size

    # only some rows used: the others are dead, and still right
    f = lambda x: np.sin((W @ x)[3:5]) + (W @ x)[-1]  # noqa: E731
    check_jacobian(f, RNG.standard_normal(12))


def test_block_and_scalar_forms_agree():
    """The block and the scalar form (the same sums written elementwise) to rounding."""
    x = RNG.standard_normal(12)

    def block(x):
        return np.sin(W @ np.cos(x))

    def scalar(x):
        return np.sin((W * np.cos(x)).sum(axis=1))

    Fb, Fs = compiled(block, (12,)), compiled(scalar, (12,))
    assert n_blocks(Fb) == 1 and n_blocks(Fs) == 0
    np.testing.assert_allclose(Fb(x), Fs(x), rtol=1e-14, atol=1e-15)
    for mode in ("forward", "reverse"):
        np.testing.assert_allclose(Fb.jacobian(x, mode=mode), Fs.jacobian(x, mode=mode),
                                   rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(Fb.jvp(x, x[::-1])[1], Fs.jvp(x, x[::-1])[1], rtol=1e-13)
    u = RNG.standard_normal(20)
    np.testing.assert_allclose(Fb.vjp(x, u)[1], Fs.vjp(x, u)[1], rtol=1e-13)


def test_small_or_sparse_matrices_stay_scalar():
    R = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert n_blocks(compiled(lambda x: R @ x, (3,))) == 0
    # a large matrix with few nonzeros: the scalar form skips its zeros
    S = np.zeros((40, 40))
    S[np.arange(40), np.arange(40)] = 2.0
    S[np.arange(39), np.arange(1, 40)] = -1.0
    assert not plan.use_block(S.size, np.count_nonzero(S))
    assert n_blocks(compiled(lambda x: S @ x, (40,))) == 0
    assert plan.use_block(W.size, np.count_nonzero(W))


# ----------------------------------------------------------- exactness --

def test_values_are_numpys_to_rounding():
    for shape in ((20, 12), (64, 64), (200, 130)):
        A = RNG.standard_normal(shape)
        F = compiled(lambda x, A=A: A @ x, (shape[1],))
        for _ in range(3):
            x = RNG.standard_normal(shape[1])
            np.testing.assert_allclose(F(x), A @ x, rtol=1e-13, atol=1e-13 * np.abs(A).max())
        X = RNG.standard_normal((37, shape[1]))
        np.testing.assert_allclose(F(X), X @ A.T, rtol=1e-13, atol=1e-13 * np.abs(A).max())


def test_nan_and_inf_values_as_numpy():
    A = RNG.standard_normal((10, 8))
    A[2, 3] = np.inf
    A[5, :] = 0.0
    A[5, 1] = np.nan
    F = compiled(lambda x: A @ x, (8,))
    assert n_blocks(F) == 1
    for x in (RNG.standard_normal(8), np.r_[0.0, np.inf, 1.0, 0.0, -np.inf, np.nan, 1, 2]):
        with np.errstate(all="ignore"):
            want = A @ x
        got = F(x)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)],
                                   rtol=1e-14)
        np.testing.assert_array_equal(got[np.isinf(want)], want[np.isinf(want)])


def test_zero_kills_around_and_through_a_block():
    A = RNG.standard_normal((10, 8))
    A[:, 2] = 0.0             # a zero column: sqrt's infinite slope at 0 meets only zeros
    A[4, 5] = np.inf          # an infinite weight: its derivative entry is inf, others exact

    def f(x):
        return A @ np.where(x > 0, np.sqrt(np.abs(x)), 0.0)

    x = RNG.uniform(0.5, 2.0, 8)
    x[2] = 0.0
    x[6] = -1.0
    F = compiled(f, (8,))
    assert n_blocks(F) == 1
    # d/dx_j = A[:, j] * slope_j, slope 0 where x <= 0 (the where kills the inf slope)
    with np.errstate(divide="ignore"):
        slope = np.where(x > 0, 0.5 / np.sqrt(np.abs(x)), 0.0)
    want = np.where(slope[None, :] == 0.0, 0.0, A * slope[None, :])
    for mode in ("forward", "reverse"):
        np.testing.assert_allclose(F.jacobian(x, mode=mode), want, rtol=1e-15)
    # through sqrt at 0 itself the slope is inf: a zero weight still gives exactly 0
    g = lambda x: A @ np.sqrt(x)  # noqa: E731
    G = compiled(g, (8,))
    x = RNG.uniform(0.5, 2.0, 8)
    x[2] = 0.0
    for mode in ("forward", "reverse"):
        J = G.jacobian(x, mode=mode)
        assert (J[:, 2] == 0.0).all()
        with np.errstate(all="ignore"):
            want = np.delete(A * (0.5 / np.sqrt(x)), 2, axis=1)
        np.testing.assert_allclose(np.delete(J, 2, axis=1), want, rtol=1e-15)
    # the same with the matrix finite: the zero-kill loop and BLAS agree on the rest
    B = A.copy()
    B[4, 5] = 1.0
    H = compiled(lambda x: B @ np.sqrt(x), (8,))
    for mode in ("forward", "reverse"):
        J = H.jacobian(x, mode=mode)
        assert (J[:, 2] == 0.0).all() and np.isfinite(np.delete(J, 2, axis=1)).all()


# ------------------------------------------------------------ pattern --

def test_pattern_is_the_matrix_nonzeros():
    A = RNG.standard_normal((14, 11))
    A[[2, 9], :] = 0.0        # zero rows
    A[:, [0, 7]] = 0.0        # zero columns
    A[5, 4] = 0.0
    F = compiled(lambda x: np.tanh(A @ x), (11,))
    assert n_blocks(F) == 1
    np.testing.assert_array_equal(F.sparsity().toarray(), A != 0)
    x = RNG.standard_normal(11)
    for mode in ("forward", "reverse"):
        S = F.jacobian(x, sparse=True, mode=mode)
        np.testing.assert_array_equal(S.toarray() != 0, A != 0)
        np.testing.assert_allclose(S.toarray(), (1 - np.tanh(A @ x) ** 2)[:, None] * A,
                                   rtol=1e-12)
    # a dense block after elementwise work on a part of the inputs
    G = compiled(lambda x: W @ np.concatenate([np.sin(x[:6]), x[:6]]), (20,))
    want = np.zeros((20, 20), bool)
    want[:, :6] = True
    np.testing.assert_array_equal(G.sparsity().toarray(), want)


# ------------------------------------------------------------ batches --

def test_batches_equal_points():
    W1, W2 = RNG.standard_normal((16, 12)) / 4, RNG.standard_normal((5, 16)) / 4

    def f(x):
        return np.tanh(W2 @ np.tanh(W1 @ x)) * x[0]

    F = compiled(f, (12,))
    assert n_blocks(F) == 2
    X = RNG.standard_normal((300, 12))
    Y = F(X)
    J = F.jacobian(X)
    for k in (0, 1, 150, 299):
        np.testing.assert_allclose(Y[k], f(X[k]), rtol=1e-13)
        np.testing.assert_allclose(J[k], F.jacobian(X[k]), rtol=1e-13, atol=1e-15)
    for mode in ("forward", "reverse"):
        Jm = F.jacobian(X, mode=mode, threads=1)
        np.testing.assert_allclose(Jm, J, rtol=1e-13, atol=1e-15)
        np.testing.assert_array_equal(F.jacobian(X, mode=mode, threads=2), Jm)
    T = RNG.standard_normal((300, 12))
    np.testing.assert_allclose(F.jvp(X, T)[1], np.einsum("kij,kj->ki", J, T), rtol=1e-12,
                               atol=1e-14)
    U = RNG.standard_normal((300, 5))
    np.testing.assert_allclose(F.vjp(X, U)[1], np.einsum("ki,kij->kj", U, J), rtol=1e-12,
                               atol=1e-14)
    Js = F.jacobian(X[:40], sparse=True)
    np.testing.assert_allclose(Js.toarray() if hasattr(Js, "toarray") else
                               np.stack([m.toarray() for m in Js]), J[:40], rtol=1e-13,
                               atol=1e-15)
    # repeated batches build the Jacobian tape, which keeps the blocks (jactape_blocks.py),
    # and agree with the sweeps to rounding (BLAS sums in its own order)
    for _ in range(10):
        Jt = F.jacobian(X)
    built = [jacobian_tape_slot(F, mode=mode, values=v).current
             for mode in ("forward", "reverse") for v in (False, True)]
    built = [t for t in built if t is not None]
    assert built and all(t.n_blocks > 0 for t in built)
    np.testing.assert_allclose(Jt, J, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(without_jacobian_tapes(compiled(f, (12,))).jacobian(X), Jt,
                               rtol=1e-13, atol=1e-15)


# --------------------------------------------------------- the tape --

def test_pickling_and_disassembly():
    W1 = RNG.standard_normal((16, 12))

    def f(x):
        return np.sin(W1 @ x)

    F = compiled(f, (12,))
    G = pickle.loads(pickle.dumps(F))
    x = RNG.standard_normal(12)
    np.testing.assert_array_equal(G(x), F(x))
    np.testing.assert_array_equal(G.jacobian(x), F.jacobian(x))
    assert n_blocks(G) == 1
    lines = F.tape.disassemble()
    block_lines = [ln for ln in lines if "BLOCK" in ln]
    assert len(block_lines) == 1 and "W[16x12]" in block_lines[0]
    assert "s0..s11" in block_lines[0]
    T = pickle.loads(pickle.dumps(F.tape))
    assert T.n_blocks == 1 and T.blocks()[0][1:3] == (16, 12)
    np.testing.assert_array_equal(T.blocks()[0][3], W1)


def test_trace_cost_and_tape_size_of_a_big_matrix():
    A = RNG.standard_normal((512, 512))
    f = lambda x: A @ x  # noqa: E731
    # O(1) nodes beyond the operands: the rows, not 512 x 512 products
    assert n_nodes(f, (512,)) == 512
    F = compiled(f, (512,))
    arrays = F.tape_arrays()
    size = sum(v.nbytes for v in arrays.values() if isinstance(v, np.ndarray))
    assert size < A.nbytes + 8 * 1024
    x = RNG.standard_normal(512)
    np.testing.assert_allclose(F(x), A @ x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(F.jacobian(x), A, rtol=0, atol=0)


def test_kinematics_with_a_dense_layer():
    """A planar 3-link arm's joint positions, then a dense layer on the features."""
    lengths = np.array([0.5, 0.4, 0.3])
    Wl = RNG.standard_normal((24, 12)) / 3
    bl = RNG.standard_normal(24)
    Wo = RNG.standard_normal((4, 24)) / 5

    def f(q):
        angles = np.cumsum(q)
        px = np.cumsum(lengths * np.cos(angles))
        py = np.cumsum(lengths * np.sin(angles))
        feats = np.concatenate([px, py, np.sin(q), np.cos(q)])
        return Wo @ np.tanh(Wl @ feats + bl)

    F = compiled(f, (3,))
    assert n_blocks(F) == 2
    check_jacobian(f, RNG.uniform(-np.pi, np.pi, 3), F=F)
    Q = RNG.uniform(-np.pi, np.pi, (50, 3))
    J = F.jacobian(Q)
    for k in (0, 49):
        np.testing.assert_allclose(J[k], F.jacobian(Q[k]), rtol=1e-13, atol=1e-15)


def _tape_with_block():
    return compiled(lambda x: np.sin(W @ x), (12,)).tape_arrays()


@pytest.mark.parametrize("breakage", [
    "overlap", "instr", "weights", "count", "rows", "slots"])
def test_corrupt_block_tables_are_refused(breakage):
    arrays = {k: (v.copy() if isinstance(v, np.ndarray) else v)
              for k, v in _tape_with_block().items()}
    blocks = arrays["blocks"].reshape(-1, BLOCK_FIELDS)
    i = int(blocks[0, 0])
    assert arrays["op"][i] == BLOCK
    if breakage == "overlap":      # the result range meets the operand range
        arrays["dst"][i] = arrays["a"][i] + 1
        arrays["n_slots"] = max(arrays["n_slots"], int(arrays["dst"][i]) + 20)
    elif breakage == "instr":      # the table names another instruction
        blocks[0, 0] = i + 1
    elif breakage == "weights":    # the matrix runs past the weights
        arrays["weights"] = arrays["weights"][:-1]
    elif breakage == "count":      # a block instruction the table lacks
        arrays["blocks"] = arrays["blocks"][:0]
    elif breakage == "rows":
        blocks[0, 1] = 0
    else:                          # rows past the last slot
        arrays["n_slots"] = int(arrays["dst"][i]) + 5
    with pytest.raises(ValueError, match="corrupt"):
        Tape(arrays)
    bad = dict(arrays)
    bad["blocks"] = np.zeros(3, dtype=np.int64)
    with pytest.raises(ValueError):
        Tape(bad)


def test_blas_comes_from_scipy_and_scipy_linalg_still_imports():
    import os
    import subprocess
    import sys

    code = (
        "import numpy as np, jacext as jx\n"
        "W = np.arange(120.0).reshape(12, 10) - 40\n"
        "F = jx.compile(lambda x: W @ x, np.zeros(10))\n"
        "assert F.tape.n_blocks == 1\n"
        "x = np.linspace(-1, 1, 10)\n"
        "assert np.allclose(F(x), W @ x)\n"
        "import scipy.linalg\n"
        "from scipy.linalg import cython_blas\n"
        "assert 'dgemm' in cython_blas.__pyx_capi__\n"
        "assert np.allclose(scipy.linalg.solve(np.eye(3) * 2, np.ones(3)), 0.5)\n"
        "assert np.allclose(F(x), W @ x)\n")
    # the jacext this suite imports (an installed wheel, or the tree's in-place build)
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(jx.__file__))}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# ---------------------------------------------------- per-output cones --

W20 = RNG.standard_normal((20, 20))


def _arrowhead(block):
    """Outputs sin(x_i) x_0 (column 0 dense) and one output through a 20 x 20 block (a
    dense row): both colourings need every colour, the per-output cones are small."""
    def f(x):
        inner = W20 @ x[:20] if block else (W20 * x[:20]).sum(axis=1)
        return np.concatenate([np.sin(x[1:]) * x[0], [np.sum(np.tanh(inner)) + np.sum(x)]])
    return f


def test_cones_run_through_blocks():
    x = RNG.standard_normal(120)
    F, Fs = compiled(_arrowhead(True), (120,)), compiled(_arrowhead(False), (120,))
    assert n_blocks(F) == 1 and n_blocks(Fs) == 0
    assert "cones" in repr(plan_of(F, sparse=True))
    want = Fs.jacobian(x)
    np.testing.assert_allclose(F.jacobian(x, sparse=True).toarray(), want, rtol=1e-12,
                               atol=1e-13)
    X = RNG.standard_normal((9, 120))
    J = F.jacobian(X, sparse=True, threads=2)
    for k in range(9):
        np.testing.assert_allclose(J[k].toarray(), Fs.jacobian(X[k]), rtol=1e-12, atol=1e-13)
    # an inf through the block: the cone sweep's zero kills as the sweeps'
    y = x.copy()
    y[3] = np.inf
    with np.errstate(all="ignore"):
        got = F.jacobian(y, sparse=True).toarray()
        ref = without_jacobian_tapes(compiled(_arrowhead(True), (120,))).jacobian(
            y, mode="reverse")
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    ok = np.isfinite(ref)
    np.testing.assert_allclose(got[ok], ref[ok], rtol=1e-12, atol=1e-13)


def test_cones_count_a_blocks_work():
    # every output through one dense 64 x 64 block: a cone per output would repeat the
    # block's 4,096 multiply-adds 64 times, so the plan does not take cones
    W64 = RNG.standard_normal((64, 64))
    F = compiled(lambda x: np.tanh(W64 @ x) * x, (64,))
    assert "cones" not in repr(plan_of(F, sparse=True))
    x = RNG.standard_normal(64)
    np.testing.assert_allclose(F.jacobian(x, sparse=True).toarray(), F.jacobian(x),
                               rtol=1e-12, atol=1e-13)
