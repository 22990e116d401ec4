"""Product blocks (src_c/block.c, vm.h): a traced product of two traced matrices,
A(x) @ B(x), of at least ``plan.PRODUCT_MIN_WORK`` multiply-adds is one block instruction
whose partials are its operands' values.

Every traced entry point that makes one (``@``, matmul, dot, tensordot, einsum, stacks and
broadcasting, transposes, a matrix times a vector) checked by ``check_jacobian`` against
NumPy's values and central differences; the product against the scalar form of the same
function (the same sums written elementwise: a different trace, no product block) in
every mode, batches, sparse Jacobians, Jacobian tapes, second order; the pattern; nan and
inf against the scalar form's zero kills; what stays scalar; the tape, its pickles and
its disassembly; corrupt product tables; the finite-input fold around a product.
"""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from jacext._tape import BLOCK, BLOCK_FIELDS, Tape

import jacext as jx
from jacext import plan
from jacext.testing import (
    check_jacobian,
    exact_function,
    jacobian_tape_slot,
    plan_of,
    without_blocks,
    without_jacobian_tapes,
)

RNG = np.random.default_rng(77)
N = 9      # 9 x 9 x 9 = 729 multiply-adds: a product block


def products(F):
    """The product blocks of F's tape: (m, n, p) each."""
    return [(m, n, p) for _, m, n, p in F.tape.blocks() if not isinstance(p, np.ndarray)]


def mat(x, n=N):
    return x[:n * n].reshape(n, n)


def scalar_product(A, B):
    """A @ B written elementwise (a traced broadcast product and a sum): never a block."""
    return (A[:, :, None] * B[None, :, :]).sum(axis=1)


def compiled(f, x):
    return jx.compile(f, np.asarray(x, dtype=np.float64))


def x0(size=N * N):
    return RNG.standard_normal(size) * 0.4


# ------------------------------------------------------- entry points --

ENTRY = [
    # (name, f, input size, the product's (m, n, p))
    ("A @ B", lambda x: np.sin(mat(x)) @ np.cos(mat(x)), N * N, (N, N, N)),
    ("np.matmul", lambda x: np.matmul(np.exp(mat(x)), mat(x) ** 2), N * N, (N, N, N)),
    ("np.dot", lambda x: np.dot(np.tanh(mat(x)), np.sin(mat(x))), N * N, (N, N, N)),
    ("A.T @ A", lambda x: np.sin(mat(x)).T @ np.sin(mat(x)), N * N, (N, N, N)),
    ("X @ X", lambda x: mat(x) @ mat(x), N * N, (N, N, N)),
    ("rectangular", lambda x: np.sin(x[:96].reshape(8, 12)) @ np.cos(x[:96].reshape(12, 8)),
     96, (8, 12, 8)),
    ("matrix @ vector", lambda x: np.sin(x[:512].reshape(32, 16)) @ np.cos(x[512:528]),
     528, (32, 16, 1)),
    ("vector @ matrix", lambda x: np.cos(x[512:528]) @ np.sin(x[:512].reshape(16, 32)),
     528, (1, 16, 32)),
    ("tensordot", lambda x: np.tensordot(np.sin(mat(x)), np.cos(mat(x)), axes=1), N * N,
     (N, N, N)),
    ("einsum ij,jk->ik", lambda x: np.einsum("ij,jk->ik", np.sin(mat(x)), mat(x)), N * N,
     (N, N, N)),
    ("einsum ij,kj->ik", lambda x: np.einsum("ij,kj->ik", np.sin(mat(x)), np.cos(mat(x))),
     N * N, (N, N, N)),
]


@pytest.mark.parametrize("name, f, size, shape", ENTRY, ids=[e[0] for e in ENTRY])
def test_entry_points_make_a_product_block(name, f, size, shape):
    x = x0(size)
    F = compiled(f, x)
    assert products(F) == [shape]
    check_jacobian(f, x, F=F, value_rtol=1e-12)


def test_stacks_and_broadcasting_are_one_product_per_matrix():
    def f(x):
        A = np.sin(x[:3 * 81].reshape(3, 9, 9))
        return A @ np.cos(mat(x[3 * 81:]))      # (3, 9, 9) @ (9, 9): broadcast

    x = x0(4 * 81)
    F = compiled(f, x)
    assert products(F) == [(N, N, N)] * 3
    check_jacobian(f, x, F=F, value_rtol=1e-12)

    def g(x):
        A = np.sin(x[:2 * 81].reshape(2, 9, 9))
        return np.tanh(A @ np.swapaxes(A, -1, -2)).sum(axis=(1, 2))
    x = x0(2 * 81)
    G = compiled(g, x)
    assert products(G) == [(N, N, N)] * 2
    check_jacobian(g, x, F=G, value_rtol=1e-12)

    def h(x):      # a stack of matrices times a stack of vectors, (..., m, n) @ (..., n, 1)
        A = np.sin(x[:3 * 512].reshape(3, 32, 16))
        return (A @ np.cos(x[3 * 512:].reshape(3, 16))[..., None])[..., 0]
    x = x0(3 * 512 + 48)
    H = compiled(h, x)
    assert products(H) == [(32, 16, 1)] * 3
    check_jacobian(h, x, F=H, value_rtol=1e-12)


# ----------------------------------------- product against scalar form --

def pair(n=N):
    def block(x):
        A, B = np.sin(mat(x, n)), np.cos(mat(x, n)).T
        return np.tanh(A @ B).ravel()[::3] * x[0]

    def scalar(x):
        A, B = np.sin(mat(x, n)), np.cos(mat(x, n)).T
        return np.tanh(scalar_product(A, B)).ravel()[::3] * x[0]
    return block, scalar


def test_product_and_scalar_forms_agree_in_every_mode():
    block, scalar = pair()
    x = x0()
    Fb, Fs = compiled(block, x), compiled(scalar, x)
    assert products(Fb) == [(N, N, N)] and Fs.tape.n_blocks == 0
    np.testing.assert_allclose(Fb(x), Fs(x), rtol=1e-13, atol=1e-15)
    Js = Fs.jacobian(x, mode="forward")
    for mode in ("forward", "reverse", "auto"):
        np.testing.assert_allclose(Fb.jacobian(x, mode=mode), Js, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(Fb.jacobian(x, sparse=True).toarray(), Js, rtol=1e-12,
                               atol=1e-14)
    v, u = x0(), RNG.standard_normal(Fb.out_shapes[0])
    np.testing.assert_allclose(Fb.jvp(x, v)[1], Js @ v, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(Fb.vjp(x, u)[1], u @ Js, rtol=1e-12, atol=1e-14)
    y, J = Fb.value_and_jacobian(x)
    np.testing.assert_allclose(J, Js, rtol=1e-12, atol=1e-14)
    out = np.empty_like(Js)
    Fb.jacobian(x, out=out)
    np.testing.assert_allclose(out, Js, rtol=1e-12, atol=1e-14)
    # its scalar form by testing.without_blocks: the same tape, the product expanded
    T = Tape(without_blocks(Fb.tape.arrays()))
    assert T.n_blocks == 0
    S = jx.Function(T, Fb.arg_shapes, Fb.out_shapes, False)
    np.testing.assert_allclose(S(x), Fb(x), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(S.jacobian(x), Js, rtol=1e-12, atol=1e-14)


def test_batches_threads_and_jacobian_tapes_equal_points():
    block, scalar = pair()
    X = RNG.standard_normal((150, N * N)) * 0.4
    Fb, Fs = compiled(block, X[0]), compiled(scalar, X[0])
    Y, J = Fb(X), Fb.jacobian(X)
    np.testing.assert_allclose(Y, Fs(X), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(J, Fs.jacobian(X), rtol=1e-12, atol=1e-14)
    for k in (0, 77, 149):
        np.testing.assert_allclose(J[k], Fb.jacobian(X[k]), rtol=1e-12, atol=1e-14)
    for mode in ("forward", "reverse"):
        Jm = Fb.jacobian(X, mode=mode, threads=1)
        np.testing.assert_allclose(Jm, J, rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(Fb.jacobian(X, mode=mode, threads=2), Jm)
    T = RNG.standard_normal(X.shape)
    np.testing.assert_allclose(Fb.jvp(X, T)[1], np.einsum("kij,kj->ki", J, T), rtol=1e-11,
                               atol=1e-13)
    Js = Fb.jacobian(X[:20], sparse=True)
    np.testing.assert_allclose(np.stack([m.toarray() for m in Js]), J[:20], rtol=1e-12,
                               atol=1e-14)
    # repeated batches build the Jacobian tape; it agrees with the sweeps to rounding
    for _ in range(10):
        Jt = Fb.jacobian(X)
    built = [jacobian_tape_slot(Fb, mode=mode, values=v).current
             for mode in ("forward", "reverse") for v in (False, True)]
    assert any(t is not None for t in built)
    np.testing.assert_allclose(Jt, J, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(without_jacobian_tapes(compiled(block, X[0])).jacobian(X), Jt,
                               rtol=1e-12, atol=1e-14)


def scalar_pair():
    """sum(tanh(sin(X) @ cos(X).T)) written with a product block, and in the scalar form."""
    def f(x):
        A = np.sin(mat(x))
        return np.sum(np.tanh(A @ np.cos(mat(x)).T))

    def fs(x):
        A = np.sin(mat(x))
        return np.sum(np.tanh(scalar_product(A, np.cos(mat(x)).T)))
    return f, fs


def test_derivative_functions_keep_products_and_second_order_agrees():
    f, fs = scalar_pair()
    x = x0()
    F, Fs = compiled(f, x), compiled(fs, x)
    G = F.grad_function()
    # the gradient's tape: the adjoints of a dense output row are products too
    # (Y_bar B^T and A^T Y_bar), not n^3 scalar terms
    assert len(products(G)) >= 2
    assert G.n_instructions < Fs.grad_function().n_instructions / 2
    np.testing.assert_allclose(G(x), Fs.jacobian(x), rtol=1e-12, atol=1e-14)
    H = Fs.hessian(x)
    np.testing.assert_allclose(F.hessian(x), H, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(F.hessian(x), F.hessian(x).T)
    v = x0()
    np.testing.assert_allclose(F.hvp(x, v), H @ v, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(F.jacobian_function()(x), Fs.jacobian(x), rtol=1e-12,
                               atol=1e-14)
    # composition: a Function with a product called inside another trace
    C = compiled(lambda x: F(x) * 2.0 + np.sum(x), x)
    np.testing.assert_allclose(C(x), 2 * f(x) + x.sum(), rtol=1e-13)
    np.testing.assert_allclose(C.jacobian(x), 2 * Fs.jacobian(x) + 1, rtol=1e-12, atol=1e-14)


def test_pattern_equals_the_scalar_forms():
    # A depends on x[:81], B on x[81:162] and, in its first row, on x[162]: Y[i, j]
    # depends on row i of A and column j of B
    def make(product):
        def f(x):
            A = np.sin(x[:81].reshape(9, 9))
            B = np.cos(x[81:162].reshape(9, 9))
            B = np.concatenate([B[:1] * x[162], B[1:]], axis=0)
            return product(A, B).ravel()
        return f

    x = x0(163)
    Fb, Fs = compiled(make(np.matmul), x), compiled(make(scalar_product), x)
    assert products(Fb) == [(N, N, N)]
    Pb, Ps = Fb.sparsity().toarray(), Fs.sparsity().toarray()
    np.testing.assert_array_equal(Pb, Ps)
    assert not Pb[0, 100] and Pb[0, 81] and Pb[0, 162]   # B's column 0 only
    np.testing.assert_allclose(Fb.jacobian(x, sparse=True).toarray(), Fs.jacobian(x),
                               rtol=1e-12, atol=1e-14)


# --------------------------------------------------- what stays scalar --

def test_small_products_and_constant_zeros_keep_the_scalar_form():
    small = int(np.floor((plan.PRODUCT_MIN_WORK - 1) ** (1 / 3)))
    assert not plan.use_product(small, small, small)
    assert plan.use_product(N, N, N)
    x = x0()
    assert products(compiled(lambda x: mat(x, small) @ mat(x, small), x)) == []

    # a matrix built with constant zeros (a rotation, a block-diagonal): its zeros are
    # structural, which a product block would lose; so the scalar form, zeros skipped
    def f(x):
        A = np.sin(mat(x))
        Z = np.stack([np.cos(x[:9]), np.zeros(9)] * 4 + [x[9:18]])
        return (A @ Z.T).ravel()
    F = compiled(f, x)
    assert products(F) == []
    check_jacobian(f, x, F=F)


# -------------------------------------------------------------- nan, inf --

def test_nan_and_inf_as_the_scalar_forms_zero_kills():
    # an inf in B's values meets A's zero tangents: the zero kills give 0 there in both
    # forms; values are NumPy's (inf, nan) in both
    def make(product):
        def f(x):
            A = np.sin(mat(x))
            B = np.exp(mat(x[81:]))
            return product(A, B).ravel()
        return f

    fb, fs = make(np.matmul), make(scalar_product)
    x = x0(162)
    Fb, Fs = compiled(fb, x), without_jacobian_tapes(compiled(fs, x))
    for bad in (np.inf, -np.inf, np.nan, 1e300):
        y = x.copy()
        y[81 + 4] = bad          # B[0, 4] = exp(bad)
        y[3] = 0.0
        with np.errstate(all="ignore"):
            np.testing.assert_allclose(Fb(y), fb(y), rtol=1e-13, atol=0, equal_nan=True)
            for mode in ("forward", "reverse"):
                Jb = Fb.jacobian(y, mode=mode)
                Js = Fs.jacobian(y, mode=mode)
                np.testing.assert_array_equal(np.isnan(Jb), np.isnan(Js))
                np.testing.assert_array_equal(np.isinf(Jb), np.isinf(Js))
                ok = np.isfinite(Js)
                np.testing.assert_allclose(Jb[ok], Js[ok], rtol=1e-12, atol=1e-14)
            X = np.stack([x, y, x])
            Jx = Fb.jacobian(X)
            np.testing.assert_array_equal(np.isnan(Jx[1]), np.isnan(Fs.jacobian(y)))
            np.testing.assert_allclose(Jx[0], Fs.jacobian(x), rtol=1e-12, atol=1e-14)


def test_finite_input_fold_around_a_product():
    def f(x):
        A = np.sin(mat(x))
        Y = A @ np.cos(mat(x))
        return np.tanh(Y) + np.cos(np.sin(x[:81].reshape(9, 9))) * 0.0
    x = x0()
    F = compiled(f, x)
    E = exact_function(F)
    assert products(F) == [(N, N, N)] and F.n_instructions < E.n_instructions
    np.testing.assert_allclose(F(x), E(x), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(F.jacobian(x), E.jacobian(x), rtol=1e-12, atol=1e-14)
    y = x.copy()
    y[5] = np.inf
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(F(y), E(y))


# ----------------------------------------------------------- the tape --

def test_pickling_disassembly_and_tape_size():
    block, _ = pair()
    x = x0()
    F = compiled(block, x)
    G = pickle.loads(pickle.dumps(F))
    assert products(G) == [(N, N, N)]
    np.testing.assert_array_equal(G(x), F(x))
    np.testing.assert_array_equal(G.jacobian(x), F.jacobian(x))
    lines = [ln for ln in F.tape.disassemble() if "PRODUCT" in ln]
    assert len(lines) == 1 and f"[{N}x{N}]" in lines[0]
    # one instruction for n^3 multiply-adds; the scalar form has ~2 n^3
    assert F.n_instructions < 10 * N * N
    block32, _ = pair(32)
    F32 = compiled(block32, x0(32 * 32))
    assert products(F32) == [(32, 32, 32)] and F32.n_instructions < 8 * 32 * 32


def _tape_with_product():
    return compiled(lambda x: np.sin(mat(x)) @ np.cos(mat(x)), x0()).tape_arrays()


@pytest.mark.parametrize("breakage", ["columns", "huge", "overlap", "slots", "rows"])
def test_corrupt_product_tables_are_refused(breakage):
    arrays = {k: (v.copy() if isinstance(v, np.ndarray) else v)
              for k, v in _tape_with_product().items()}
    blocks = arrays["blocks"].reshape(-1, BLOCK_FIELDS)
    i = int(blocks[0, 0])
    assert arrays["op"][i] == BLOCK and blocks[0, 3] == -N
    if breakage == "columns":      # B's columns run past the slots
        blocks[0, 3] = -(arrays["n_slots"])
    elif breakage == "huge":       # m x p past int32
        blocks[0, 3] = -(2**40)
    elif breakage == "overlap":    # the results meet the operands
        arrays["dst"][i] = arrays["a"][i] + 1
        arrays["n_slots"] = int(arrays["n_slots"]) + 200
    elif breakage == "slots":
        arrays["n_slots"] = int(arrays["dst"][i]) + 5
    else:
        blocks[0, 1] = 0
    with pytest.raises(ValueError, match="corrupt"):
        Tape(arrays)


def test_cones_run_through_a_product():
    # outputs x_i * x_0 (a dense column) and one through a product (a dense row): cones
    def make(product):
        def f(x):
            A = np.sin(mat(x))
            return np.concatenate([np.cos(x[1:]) * x[0],
                                   [np.sum(np.tanh(product(A, A.T))) + np.sum(x)]])
        return f

    x = x0(200)
    Fb, Fs = compiled(make(np.matmul), x), compiled(make(scalar_product), x)
    assert products(Fb) == [(N, N, N)]
    assert "cones" in repr(plan_of(Fb, sparse=True))
    np.testing.assert_allclose(Fb.jacobian(x, sparse=True).toarray(), Fs.jacobian(x),
                               rtol=1e-12, atol=1e-14)
    X = RNG.standard_normal((5, 200)) * 0.4
    J = Fb.jacobian(X, sparse=True)
    for k in range(5):
        np.testing.assert_allclose(J[k].toarray(), Fs.jacobian(X[k]), rtol=1e-12, atol=1e-14)


def test_hvp_tape_keeps_dense_tangents_as_products():
    # the HVP's tape is the gradient's directional Jacobian tape: one column, v's entries
    # its seeds, dense, so A's and B's tangents go through product blocks (dA B + A dB)
    f, fs = scalar_pair()
    x, v = x0(), x0()
    F, Fs = compiled(f, x), compiled(fs, x)
    H = Fs.hessian(x)
    first = F.hvp(x, v)                          # the gradient's tangent sweep
    X = x + 0.01 * RNG.standard_normal((2000, N * N))
    batch = F.hvp(X, v)                          # enough points: the tape is built
    D = F._second[("hvp", 0, False)].slot.current
    assert D is not None and len(products(D)) >= 2
    np.testing.assert_allclose(F.hvp(x, v), first, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(first, H @ v, rtol=1e-10, atol=1e-12)
    for k in (0, 999, 1999):
        np.testing.assert_allclose(batch[k], Fs.hessian(X[k]) @ v, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------- users' code --

def test_products_written_the_ways_users_write_them():
    # normal equations of a residual Jacobian built row by row in a loop (np.stack of
    # traced rows), J^T J and J^T r
    def normal_equations(x):
        rows = []
        for k in range(24):
            t = 0.1 * k
            rows.append(np.stack([np.exp(-x[0] * t), np.sin(x[1] * t), x[2] * t ** 2,
                                  np.cos(x[3] + t) * x[4], np.tanh(x[5] * t),
                                  x[6] * x[7] * t, np.sqrt(1.0 + (x[8] * t) ** 2),
                                  np.exp(x[9] * t)]))
        J = np.stack(rows)                              # 24 x 8, every entry traced
        r = J @ x[:8] - np.linspace(0.0, 1.0, 24)
        return np.concatenate([(J.T @ J).ravel(), J.T @ r])

    x = x0(10)
    F = compiled(normal_equations, x)
    assert products(F) == [(8, 24, 8)]     # J^T J; J^T r (192 multiply-adds) stays scalar
    check_jacobian(normal_equations, x, F=F, value_rtol=1e-12)

    # power iteration in a loop: a traced matrix times a traced vector, normalised
    def power(x):
        A = np.tanh(x[:32 * 32].reshape(32, 32))
        v = np.ones(32)
        for _ in range(3):
            v = A @ v
            v = v / np.sqrt(v @ v)
        return v

    x = x0(32 * 32)
    F = compiled(power, x)
    assert len(products(F)) >= 3
    check_jacobian(power, x, F=F, value_rtol=1e-12)

    # an `if` in a helper (guarded tracing) choosing between two products
    def helper(A, B, flip):
        if flip > 0:
            return A @ B
        return B @ A

    def guarded(x):
        A, B = np.sin(mat(x)), np.cos(mat(x))
        return np.tanh(helper(A, B, x[0])).ravel()

    xp = x0()
    xp[0] = 0.3
    G = compiled(guarded, xp)
    xm = xp.copy()
    xm[0] = -0.3
    for point in (xp, xm):
        np.testing.assert_allclose(G(point), guarded(point), rtol=1e-13, atol=1e-15)
        check_jacobian(guarded, point, F=G, value_rtol=1e-12)
