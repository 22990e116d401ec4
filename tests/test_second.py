"""Second order (jacext/second.py): derivatives as Functions, Hessians (dense, Lagrangian,
sparse, batched), Hessian-vector products, Hessian sparsity, composition.

References: torch.func.hessian where torch is installed (exact comparisons, 1e-12
relative), and always central differences of jacext's own first-order Jacobian (tested
against formulas in tests/test_ops.py) and hand-derived Hessians."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import scipy.special as sps
from test_ops import REF

import jacext as jx
from jacext import testing

NAMES = sorted(REF)


def fd_hessian(F, x, argnums=0, step=1e-5, args=()):
    """Central differences of F's Jacobian (first order) along each coordinate of x."""
    x = np.asarray(x, dtype=np.float64)
    cols = []
    for j in range(x.size):
        e = np.zeros(x.size)
        e[j] = step
        xp, xm = x + e.reshape(x.shape), x - e.reshape(x.shape)
        jp = F.jacobian(*((xp,) + args), argnums=argnums)
        jm = F.jacobian(*((xm,) + args), argnums=argnums)
        cols.append((jp - jm) / (2 * step))
    # cols[j]: out.shape + x.shape, derivative along x_j
    return np.moveaxis(np.array(cols), 0, -1).reshape(np.shape(cols[0]) + x.shape)


def assert_symmetric(H, n):
    flat = H.reshape(-1, n, n)
    assert np.array_equal(flat, np.swapaxes(flat, -1, -2)), "Hessian not exactly symmetric"


def rel_close(a, b, rtol=1e-12):
    scale = max(1.0, float(np.abs(b).max()) if np.size(b) else 1.0)
    np.testing.assert_allclose(a, b, rtol=0, atol=rtol * scale)


# ---------------------------------------------------------------- functions --

def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def _link(q, length):
    # a helper with an `if` on a constant, as users write
    if length > 0:
        return np.stack([length * np.cos(q), length * np.sin(q)])
    return np.stack([np.cos(q), np.sin(q)])


def arm_energy(q):
    """Loop over joints: planar arm tip, its squared distance to a target."""
    lengths = [0.7, 0.5, 0.0, 0.3]
    angle = 0.0
    tip = np.zeros(2)
    for k, length in enumerate(lengths):
        angle = angle + q[k]
        tip = tip + _link(angle, length)
    target = np.array([0.4, 0.9])
    return np.sum((tip - target) ** 2)


W = np.array([[0.5, 0.0, -1.2], [0.0, 0.8, 0.3], [1.1, -0.4, 0.0]])   # zeros in it


def mlp_loss(x):
    h = np.tanh(W @ x + 0.1)
    return np.sum(h * h) + np.log1p(np.exp(x[0] * x[2]))


def kinks(x):
    return np.sum(np.abs(x) * x ** 2) + np.maximum(x[0], x[1]) * x[2] + np.where(
        x[1] > 0, x[1] ** 3, np.sin(x[1]))


def mixed(x):
    return (np.hypot(x[0], x[1]) * np.arctan2(x[2], x[0]) + np.logaddexp(x[1], x[2]) ** 2
            + x[0] ** x[1] + sps.expit(x[2]) * np.sqrt(x[1]))


FUNCS = [(rosen, np.array([0.3, -0.7, 1.2, 0.9, -0.2])),
         (arm_energy, np.array([0.3, -0.4, 1.1, 0.6])),
         (mlp_loss, np.array([0.3, -0.8, 0.55])),
         (kinks, np.array([0.7, -1.3, 0.45])),
         (mixed, np.array([0.8, 1.7, 0.6]))]


def torch_of(name):
    torch = pytest.importorskip("torch")
    table = {
        rosen: lambda t: torch.sum(100.0 * (t[1:] - t[:-1] ** 2) ** 2 + (1.0 - t[:-1]) ** 2),
        mlp_loss: lambda t: torch.sum(torch.tanh(torch.tensor(W) @ t + 0.1) ** 2)
        + torch.log1p(torch.exp(t[0] * t[2])),
        kinks: lambda t: torch.sum(torch.abs(t) * t ** 2) + torch.maximum(t[0], t[1]) * t[2]
        + torch.where(t[1] > 0, t[1] ** 3, torch.sin(t[1])),
        mixed: lambda t: torch.hypot(t[0], t[1]) * torch.atan2(t[2], t[0])
        + torch.logaddexp(t[1], t[2]) ** 2 + t[0] ** t[1] + torch.sigmoid(t[2])
        * torch.sqrt(t[1]),
    }
    return torch, table.get(name)


@pytest.mark.parametrize("f,x", FUNCS, ids=[f.__name__ for f, _ in FUNCS])
def test_hessian_against_differences_and_symmetric(f, x):
    F = jx.compile(f, x)
    H = F.hessian(x)
    assert H.shape == (x.size, x.size)
    assert_symmetric(H, x.size)
    np.testing.assert_allclose(H, fd_hessian(F, x), rtol=1e-6, atol=1e-6)
    # the same as the Jacobian of the gradient Function, and of the Jacobian Function
    np.testing.assert_allclose(H, F.grad_function().jacobian(x), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(H, F.jacobian_function().jacobian(x), rtol=1e-13,
                               atol=1e-13)


@pytest.mark.parametrize("f,x", FUNCS[:1] + FUNCS[2:], ids=[f.__name__ for f, _ in
                                                          FUNCS[:1] + FUNCS[2:]])
def test_hessian_against_torch(f, x):
    torch, tf = torch_of(f)
    want = torch.func.hessian(tf)(torch.tensor(x, dtype=torch.float64)).numpy()
    F = jx.compile(f, x)
    rel_close(F.hessian(x), want)
    v = np.linspace(-1.0, 1.0, x.size)
    rel_close(F.hvp(x, v), want @ v)


@pytest.mark.parametrize("name", NAMES)
def test_every_op(name):
    """Each op of the table on a vector of its operands: the Hessian over them at the
    interior points, as one batch and point by point; symmetric; hvp = H v; central
    differences of the (formula-checked) first derivative; torch where it has the op."""
    spec = REF[name]
    k = spec.arity
    U = np.stack(spec.domain, axis=-1)               # (points, arity)

    def f(u):
        return spec.fn(*[u[i] for i in range(k)])

    F = jx.compile(f, np.ones(k))
    with np.errstate(all="ignore"):
        H = F.hessian(U)
    assert H.shape == (U.shape[0], k, k)
    assert_symmetric(H, k)
    V = np.linspace(-1.0, 1.5, U.size).reshape(U.shape)
    for i in range(U.shape[0]):
        with np.errstate(all="ignore"):
            assert np.array_equal(H[i], F.hessian(U[i]))
            rel_close(F.hvp(U[i], V[i]), H[i] @ V[i])
        if name == "SELECT":   # differences would cross the condition's zero
            continue
        fd = fd_hessian(F, U[i], step=1e-6)
        np.testing.assert_allclose(H[i], fd, rtol=2e-5, atol=2e-5, err_msg=name)
    with np.errstate(all="ignore"):
        rel_close(F.hvp(U, V), np.einsum("pij,pj->pi", H, V))


TORCH_OPS = {
    "ADD": "add", "SUB": "sub", "MUL": "mul", "DIV": "div", "POW": "pow", "ATAN2": "atan2",
    "HYPOT": "hypot", "MAXIMUM": "maximum", "MINIMUM": "minimum", "FMAX": "fmax",
    "FMIN": "fmin", "LOGADDEXP": "logaddexp", "NEG": "neg", "ABS": "abs",
    "SQUARE": "square", "SQRT": "sqrt", "RECIPROCAL": "reciprocal", "EXP": "exp",
    "EXP2": "exp2", "EXPM1": "expm1", "LOG": "log", "LOG2": "log2", "LOG10": "log10",
    "LOG1P": "log1p", "SIN": "sin", "COS": "cos", "TAN": "tan", "ARCSIN": "asin",
    "ARCCOS": "acos", "ARCTAN": "atan", "SINH": "sinh", "COSH": "cosh", "TANH": "tanh",
    "ARCSINH": "asinh", "ARCCOSH": "acosh", "ARCTANH": "atanh", "ERF": "erf",
    "ERFC": "erfc", "EXPIT": "sigmoid", "LOGIT": "logit",
}


@pytest.mark.parametrize("name", sorted(TORCH_OPS))
def test_every_op_against_torch(name):
    torch = pytest.importorskip("torch")
    spec = REF[name]
    k = spec.arity
    U = np.stack(spec.domain, axis=-1)
    fn = getattr(torch, TORCH_OPS[name])
    F = jx.compile(lambda u: spec.fn(*[u[i] for i in range(k)]), np.ones(k))
    H = F.hessian(U)
    for i in range(U.shape[0]):
        want = torch.func.hessian(lambda t: fn(*[t[j] for j in range(k)]))(
            torch.tensor(U[i], dtype=torch.float64)).numpy()
        rel_close(H[i], want)


# ---------------------------------------------------------------- vector and Lagrangian --

def vec(x):
    return np.stack([x[0] * x[1], np.sin(x[2]) * x[0] ** 2, x[0] + 2.0 * x[1],
                     np.exp(x[1] * x[2])])


def test_vector_hessian_and_lagrangian():
    x = np.array([0.4, -0.9, 1.3])
    F = jx.compile(vec, x)
    H = F.hessian(x)
    assert H.shape == (4, 3, 3)
    assert_symmetric(H, 3)
    np.testing.assert_allclose(H, fd_hessian(F, x), rtol=1e-6, atol=1e-6)
    assert np.array_equal(H[2], np.zeros((3, 3)))   # linear output
    w = np.array([0.3, -2.0, 5.0, 0.7])
    HL = F.hessian(x, w)
    assert HL.shape == (3, 3)
    assert_symmetric(HL, 3)
    rel_close(HL, np.einsum("i,ijk->jk", w, H))
    rel_close(F.hessian(x, w=w), HL)
    v = np.array([1.0, -0.5, 2.0])
    rel_close(F.hvp(x, v, w), HL @ v)
    rel_close(F.hvp(x, v, w=w), HL @ v)
    # batches of points and weights broadcast
    X = x + np.linspace(0, 0.3, 6).reshape(2, 3, 1)
    HB = F.hessian(X, w, threads=2)
    assert HB.shape == (2, 3, 3, 3)
    for i in range(2):
        for j in range(3):
            assert np.array_equal(HB[i, j], F.hessian(X[i, j], w))
    torch = pytest.importorskip("torch")
    want = torch.func.hessian(lambda t: torch.stack(
        [t[0] * t[1], torch.sin(t[2]) * t[0] ** 2, t[0] + 2.0 * t[1],
         torch.exp(t[1] * t[2])]))(torch.tensor(x)).numpy()
    rel_close(H, want)


def test_tuple_output_needs_weights():
    F = jx.compile(lambda x: (x[0] * x[1], np.sin(x)), np.ones(2))
    x = np.array([0.3, 0.8])
    with pytest.raises(ValueError, match="tuple output: pass weights w"):
        F.hessian(x)
    HL = F.hessian(x, (2.0, np.array([1.0, -1.0])))
    want = np.array([[-np.sin(0.3), 2.0], [2.0, np.sin(0.8)]])
    rel_close(HL, want)


# ---------------------------------------------------------------- batches and out --

def test_batched_equals_per_point_and_out():
    x = np.array([0.3, -0.7, 1.2, 0.9, -0.2])
    F = jx.compile(rosen, x)
    X = x + np.linspace(-0.5, 0.5, 7)[:, None]
    HB = F.hessian(X, threads=2)
    assert HB.shape == (7, 5, 5)
    for i in range(7):
        assert np.array_equal(HB[i], F.hessian(X[i]))
    out = np.full((7, 5, 5), np.nan)
    assert F.hessian(X, out=out) is out
    assert np.array_equal(out, HB)
    with pytest.raises(ValueError, match="out has shape"):
        F.hessian(x, out=np.empty((5, 4)))
    with pytest.raises(ValueError, match="out= is for dense"):
        F.hessian(x, out=np.empty((5, 5)), sparse=True)
    # hvp over several v at one point, and over points
    V = np.eye(5)
    np.testing.assert_allclose(F.hvp(x, V), F.hessian(x) @ V.T, rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(F.hvp(X, V[:1]), np.einsum("pij,j->pi", HB, V[0]),
                               rtol=1e-13, atol=1e-12)


def test_hvp_tape_after_enough_points():
    """Once enough points asked, the HVP comes from the directional derivative's tape:
    the same numbers as before."""
    x = np.linspace(-1.0, 1.0, 40)
    F = jx.compile(rosen, x)
    v = np.cos(np.arange(40.0))
    first = F.hvp(x, v)
    H = F.hessian(x)
    rel_close(first, H @ v)
    X = x + np.linspace(0, 0.1, 3000)[:, None]
    batch = F.hvp(X, v)   # enough points: the tape is built here
    assert F._second[("hvp", 0, False)].slot.current is not None
    np.testing.assert_allclose(F.hvp(x, v), first, rtol=1e-14, atol=1e-12)
    np.testing.assert_allclose(batch[0], F.hvp(X[0], v), rtol=1e-14, atol=1e-12)
    # a single point's own path (arrays of the argument's shape) against the general one
    # (lists, parsed) and the sweeps (an inf in v: the tape's result is not finite)
    assert np.array_equal(F.hvp(x, v), F.hvp(list(x), list(v)))
    w = v.copy()
    w[3] = np.inf
    with np.errstate(all="ignore"):
        assert np.array_equal(F.hvp(x, w), F.hvp(list(x), list(w)), equal_nan=True)
        G = F.grad_function()
        assert np.array_equal(F.hvp(x, w), G.jvp(x, w)[1], equal_nan=True)


# ---------------------------------------------------------------- sparsity --

def test_sparsity_is_nonlinear_interactions_only():
    F = jx.compile(lambda x: x[0] * x[1] + x[2] + x[3] + np.sin(x[3]) + 3.0 * x[4] ** 2,
                   np.ones(5))
    P = F.hessian_sparsity()
    want = np.zeros((5, 5), dtype=bool)
    want[0, 1] = want[1, 0] = True      # x*y couples
    want[3, 3] = want[4, 4] = True      # x + y does not; sin and square on the diagonal
    assert P.dtype == bool and P.shape == (5, 5)
    assert np.array_equal(P.toarray(), want)


@pytest.mark.parametrize("f,x", FUNCS, ids=[f.__name__ for f, _ in FUNCS])
def test_sparsity_matches_dense_and_colouring_verified(f, x):
    F = jx.compile(f, x)
    P = F.hessian_sparsity().toarray()
    assert np.array_equal(P, P.T)
    H = F.hessian(x)
    assert not ((H != 0) & ~P).any()
    if f is kinks:   # the pattern holds both branches of maximum and where
        seen = (H != 0) | (F.hessian(np.array([-1.3, 0.7, 0.45])) != 0)
        assert np.array_equal(P, seen), (P, seen)
    else:            # at generic points the structural nonzeros are the nonzeros
        assert np.array_equal(P, H != 0), (P, H)
    Hs = F.hessian(x, sparse=True)
    assert np.array_equal(Hs.toarray(), H)
    assert np.array_equal(Hs.toarray(), H)
    # the stored entries are the pattern's, exactly
    assert np.array_equal(Hs.astype(bool).toarray() | (Hs.toarray() != 0), P) or (
        Hs.nnz == P.sum())
    assert Hs.nnz == P.sum()
    pattern, colour, p = testing.hessian_colouring(F)
    assert testing.column_colouring_is_valid(pattern, colour)
    assert p == F.hessian_colours() == int(colour.max()) + 1


def test_sparse_rosen_three_colours_and_batches():
    n = 2000
    x = np.cos(np.arange(n) * 0.37)
    F = jx.compile(rosen, x)
    Hs = F.hessian(x, sparse=True)
    assert F.hessian_colours() <= 3
    pattern, colour, p = testing.hessian_colouring(F)
    assert testing.column_colouring_is_valid(pattern, colour)
    # tridiagonal, hand-derived entries
    xi, xn = x[:-1], x[1:]
    diag = np.zeros(n)
    diag[:-1] += 1200.0 * xi ** 2 - 400.0 * xn + 2.0
    diag[1:] += 200.0
    off = -400.0 * xi
    want = np.diag(diag) + np.diag(off, 1) + np.diag(off, -1)
    rel_close(Hs.toarray(), want)
    assert "Hessian: 3 colours" in repr(F)
    X = np.stack([x, x[::-1]])
    HB = F.hessian(X, sparse=True)
    assert HB.shape == (2, n, n)
    assert np.array_equal(HB[1].toarray(), F.hessian(x[::-1], sparse=True).toarray())


def test_lagrangian_sparsity_and_sparse():
    x = np.array([0.4, -0.9, 1.3])
    F = jx.compile(vec, x)
    P = F.hessian_sparsity().toarray()
    # the union of the outputs' Hessians' nonzeros (x0 x1; sin(x2) x0^2; exp(x1 x2))
    assert np.array_equal(P, (F.hessian(x) != 0).any(axis=0))
    assert P.all()
    F2 = jx.compile(lambda x: np.stack([x[0] * x[1], x[2] ** 3 + x[0]]), x)
    want = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=bool)
    assert np.array_equal(F2.hessian_sparsity().toarray(), want)
    w = np.array([0.3, -2.0, 5.0, 0.7])
    assert np.array_equal(F.hessian(x, w, sparse=True).toarray(), F.hessian(x, w))
    with pytest.raises(ValueError, match="sparse=True needs a scalar Hessian"):
        F.hessian(x, sparse=True)


# ---------------------------------------------------------------- derivatives as Functions --

def test_jacobian_function_is_a_function():
    x = np.array([0.4, -0.9, 1.3])
    F = jx.compile(vec, x)
    J = F.jacobian_function()
    assert isinstance(J, jx.Function)
    assert J.out_shapes == ((4, 3),)
    np.testing.assert_array_equal(J(x), F.jacobian(x, mode="forward"))
    X = x + np.linspace(0, 1, 5)[:, None]
    np.testing.assert_allclose(J(X), F.jacobian(X), rtol=1e-15, atol=0)
    J2 = pickle.loads(pickle.dumps(J))
    assert np.array_equal(J2(x), J(x))
    lines = []
    J.disassemble(file=type("W", (), {"write": lambda self, s: lines.append(s)})())
    assert "jacobian(vec)" in "".join(lines)
    np.testing.assert_allclose(J.jacobian(x), F.hessian(x), rtol=1e-14, atol=1e-14)
    assert F.jacobian_function() is J   # made once


def test_jacobian_function_nesting_and_grad():
    def g(x, p):
        return (np.sum(x * p) ** 2, np.sin(x) * p[0])

    x, p = np.array([0.3, 0.9]), np.array([1.5, -0.4])
    F = jx.compile(g, x, p)
    J = F.jacobian_function(argnums=(0, 1))
    got = J(x, p)
    want = F.jacobian(x, p, argnums=(0, 1))
    flat = [b for per_out in want for b in per_out]
    assert len(got) == len(flat)
    for a, b in zip(got, flat):
        np.testing.assert_allclose(a, b, rtol=1e-15, atol=0)
    S = jx.compile(lambda x, p: np.sum(x * p) ** 2, x, p)
    G = S.grad_function(argnums=1)
    assert G.out_shapes == ((2,),)
    np.testing.assert_allclose(G(x, p), 2 * np.sum(x * p) * x, rtol=1e-15)
    with pytest.raises(ValueError, match="needs a scalar output"):
        F.grad_function()


# ---------------------------------------------------------------- composition --

def test_composition_inlines_the_tape():
    x = np.array([0.4, -0.9, 1.3])
    F = jx.compile(vec, x)
    S = jx.compile(lambda y: np.sum(y ** 2), np.ones(4))
    C = jx.compile(lambda x: S(F(x)) + F(x)[0], x)
    want = np.sum(vec(x) ** 2) + vec(x)[0]
    np.testing.assert_allclose(C(x), want, rtol=1e-15)
    # chain rule, independently: 2 y^T J + J[0]
    JF = F.jacobian(x)
    np.testing.assert_allclose(C.jacobian(x), 2 * vec(x) @ JF + JF[0], rtol=1e-13)
    # a derivative Function inside a trace
    G = jx.compile(lambda x: np.sum(F.jacobian_function()(x)), x)
    np.testing.assert_allclose(G(x), F.jacobian(x).sum(), rtol=1e-14)
    # traced scalars gathered into an object array (np.array([c, -s])) and into a list
    R = jx.compile(lambda q: np.sum(F(np.array([np.cos(q[0]), q[1], -np.sin(q[0])]))) + np.sum(
        F([q[1], q[0], q[1]])), np.ones(2))
    q = np.array([0.3, 0.8])
    want = np.sum(vec(np.array([np.cos(0.3), 0.8, -np.sin(0.3)]))) + np.sum(
        vec(np.array([0.8, 0.3, 0.8])))
    np.testing.assert_allclose(R(q), want, rtol=1e-14)
    with pytest.raises(jx.TracingError, match="inside a trace it got shape"):
        jx.compile(lambda z: F(z), np.ones(5))


# ---------------------------------------------------------------- free functions --

def test_free_functions(fresh_cache):
    x = np.array([0.3, -0.7, 1.2])
    H = jx.hessian(rosen, x)
    np.testing.assert_array_equal(H, jx.compile(rosen, x).hessian(x))
    assert jx.hessian(rosen, x) is not H   # a new array, from the cached Function
    v = np.array([1.0, 2.0, -1.0])
    rel_close(jx.hvp(rosen, x, v), H @ v)

    def two(x, p):
        return np.sum(np.sin(x) * p[0] * x[::-1]) + p[1] ** 3 * x[0]

    p = np.array([0.7, -1.1])
    blocks = jx.hessian(two, (x, p))
    assert [[b.shape for b in row] for row in blocks] == [[(3, 3), (3, 2)], [(2, 3), (2, 2)]]
    assert np.array_equal(blocks[0][1], blocks[1][0].T)
    assert_symmetric(blocks[0][0], 3)
    torch = pytest.importorskip("torch")
    want = torch.autograd.functional.hessian(
        lambda x, p: torch.sum(torch.sin(x) * p[0] * x.flip(0)) + p[1] ** 3 * x[0],
        (torch.tensor(x), torch.tensor(p)))
    for i in range(2):
        for j in range(2):
            rel_close(blocks[i][j], want[i][j].numpy())


# ---------------------------------------------------------------- errors --

def test_errors():
    x = np.array([0.4, -0.9, 1.3])
    F = jx.compile(vec, x)
    with pytest.raises(ValueError, match="hvp needs a scalar output.*weight w"):
        F.hvp(x, x)
    with pytest.raises(ValueError, match=r"weights w must have the shape of vec's output "
                                         r"\(4,\)"):
        F.hessian(x, np.ones(3))
    with pytest.raises(TypeError, match="hessian takes the 1 argument"):
        F.hessian(x, np.ones(4), np.ones(4))
    with pytest.raises(ValueError, match="one argument at a time"):
        F.hessian(x, argnums=(0,))
    big = jx.compile(lambda x: np.sum(x * x), np.ones(400_000))
    with pytest.raises(MemoryError, match="sparse=True"):
        big.hessian(np.ones(400_000))
    assert big._second == {}   # nothing was built


def test_argnums_modes_scalars_and_pickle():
    G = jx.compile(lambda x, p: np.sum(x ** 2 * p) + p[0] ** 3 * x[1], np.ones(2), np.ones(2))
    x, p = np.array([1.0, 2.0]), np.array([3.0, 4.0])
    # hand-derived: d2/dp2 = [[6 p0 x1, 0], [0, 0]]; d2/dx2 = diag(2 p)
    want_p = np.array([[6 * 3.0 * 2.0, 0.0], [0.0, 0.0]])
    assert np.array_equal(G.hessian(x, p, argnums=1), want_p)
    assert np.array_equal(G.hvp(x, p, np.array([1.0, 0.0]), argnums=1), want_p[:, 0])
    for mode in ("auto", "forward", "reverse"):
        assert np.array_equal(G.hessian(x, p, mode=mode), np.diag(2 * p))
    with pytest.raises(ValueError, match="mode must be"):
        G.hessian(x, p, mode="sideways")
    with pytest.raises(ValueError, match="names argument 2"):
        G.hessian(x, p, argnums=2)
    S = jx.compile(lambda t: t ** 3, 0.0)      # a 0-d argument
    assert S.hessian(2.0) == 12.0 and S.hvp(2.0, 1.0) == 12.0
    assert np.array_equal(S.hessian(np.array([1.0, 2.0])), [6.0, 12.0])
    G2 = pickle.loads(pickle.dumps(G))
    assert np.array_equal(G2.hessian(x, p), G.hessian(x, p))


def test_star_colouring_for_an_arrow_head():
    """One coupled variable: the gradient's column colouring needs n colours, a star
    colouring 2; entries read directly, symmetric, equal to the hand-derived Hessian."""
    n = 60
    x = np.linspace(-1.0, 1.0, n)
    F = jx.compile(lambda x: x[0] * np.sum(x[1:]) + np.sum(x ** 4), x)
    want = np.diag(12.0 * x ** 2)
    want[0, 1:] += 1.0
    want[1:, 0] += 1.0
    H = F.hessian(x)
    assert np.array_equal(H, H.T)
    rel_close(H, want)
    assert F.hessian_colours() == 2
    assert "Hessian: 2 colours (star)" in repr(F)
    pattern, colour, p = testing.hessian_colouring(F)
    assert p == 2 and testing.star_colouring_is_valid(pattern, colour)
    assert not testing.column_colouring_is_valid(pattern, colour)   # not distance-2
    Hs = F.hessian(x, sparse=True)
    assert np.array_equal(Hs.toarray(), H)
    X = np.stack([x, -x, 0.5 * x])
    HB = F.hessian(X, threads=2)
    for k in range(3):
        assert np.array_equal(HB[k], F.hessian(X[k]))
    assert np.array_equal(F.hessian(X, sparse=True)[1].toarray(), HB[1])
    # explicit modes take the gradient's own colouring: the same numbers
    rel_close(F.hessian(x, mode="forward"), H)


def test_star_colouring_verifier_rejects_two_coloured_paths():
    path = np.zeros((4, 4), dtype=bool)
    for i in range(3):
        path[i, i + 1] = path[i + 1, i] = True
    assert not testing.star_colouring_is_valid(path, [0, 1, 0, 1])   # a two-coloured P4
    assert testing.star_colouring_is_valid(path, [0, 1, 0, 2])
    assert not testing.star_colouring_is_valid(path, [0, 0, 1, 2])   # adjacent alike
    from jacext.second import star_colouring

    rng = np.random.default_rng(7)
    for _ in range(20):
        a = rng.random((30, 30)) < 0.1
        a = a | a.T
        import scipy.sparse as sp

        csr = sp.csr_array(a)
        colour = star_colouring(csr.indptr, csr.indices, 30)
        assert testing.star_colouring_is_valid(a, colour)


# ---------------------------------------------------------------- random programs --

UNARY = {"sin": (np.sin, "sin"), "cos": (np.cos, "cos"), "tanh": (np.tanh, "tanh"),
         "square": (np.square, "square"), "exp": (lambda a: np.exp(0.3 * a), None),
         "atan": (np.arctan, "atan"), "cosh": (lambda a: np.cosh(0.5 * a), None)}
BINARY_OPS = {"add": (np.add, "add"), "sub": (np.subtract, "sub"), "mul": (np.multiply, "mul"),
              "hypot": (np.hypot, "hypot"), "div": (lambda a, b: a / (1.5 + b * b), None),
              "logaddexp": (np.logaddexp, "logaddexp")}


def random_program(rng, n, steps):
    """A list of (op, operands) over a pool that starts with x[perm] slices; the output is
    the sum of the last values times fixed weights."""
    prog = []
    pool = 1
    for _ in range(steps):
        if rng.random() < 0.5:
            name = rng.choice(sorted(UNARY))
            prog.append(("u", name, int(rng.integers(pool)), rng.permutation(n)))
        else:
            name = rng.choice(sorted(BINARY_OPS))
            prog.append(("b", name, (int(rng.integers(pool)), int(rng.integers(pool))),
                         rng.permutation(n)))
        pool += 1
    return prog


def run_program(prog, x, lib):
    """The program on x: NumPy (traced or not) when lib is None, else torch."""
    vals = [x]
    for kind, name, ops_, perm in prog:
        if kind == "u":
            fn, tname = UNARY[name]
            a = vals[ops_][perm]
            if lib is None:
                vals.append(fn(a))
            else:
                vals.append({"exp": lambda a: lib.exp(0.3 * a),
                             "cosh": lambda a: lib.cosh(0.5 * a)}.get(
                                 name, getattr(lib, tname or name, None))(a))
        else:
            fn, tname = BINARY_OPS[name]
            a, b = vals[ops_[0]][perm], vals[ops_[1]]
            if lib is None:
                vals.append(fn(a, b))
            elif name == "div":
                vals.append(a / (1.5 + b * b))
            else:
                vals.append(getattr(lib, tname)(a, b))
    weights = np.linspace(0.5, 1.5, x.shape[0])
    w = weights if lib is None else lib.tensor(weights)
    total = (vals[-1] * w).sum()
    return total + (vals[len(vals) // 2] * vals[-2]).sum()


@pytest.mark.parametrize("seed", range(6))
def test_random_programs(seed):
    rng = np.random.default_rng(seed)
    n = 5
    prog = random_program(rng, n, 10)
    x = rng.uniform(-1.0, 1.0, n)
    F = jx.compile(lambda x: run_program(prog, x, None), x)
    H = F.hessian(x)
    assert_symmetric(H, n)
    np.testing.assert_allclose(H, fd_hessian(F, x), rtol=1e-5, atol=1e-5)
    v = rng.normal(size=n)
    rel_close(F.hvp(x, v), H @ v)
    P = F.hessian_sparsity().toarray()
    assert not ((H != 0) & ~P).any()
    Hs = F.hessian(x, sparse=True)
    assert np.array_equal(Hs.toarray(), H)
    torch = pytest.importorskip("torch")
    want = torch.func.hessian(lambda t: run_program(prog, t, torch))(
        torch.tensor(x, dtype=torch.float64)).numpy()
    rel_close(H, want)


def test_threads_share_one_function():
    import concurrent.futures as cf

    x = np.linspace(-1.0, 1.0, 40)
    F = jx.compile(rosen, x)
    X = x + np.linspace(0, 0.2, 8)[:, None]
    with cf.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda k: (F.hessian(X[k]), F.hvp(X[k], x),
                                       F.hessian(X[k], sparse=True).toarray()), range(8)))
    for k, (h, hv, hs) in enumerate(got):
        assert np.array_equal(h, F.hessian(X[k]))
        assert np.array_equal(hs, h)
        rel_close(hv, h @ x)


def test_second_order_of_a_function_with_a_block_instruction():
    """A constant-matrix product is one block instruction on F's tape; the derivative
    tapes and the inlined tape take it as its rows' sums of products.  Against central
    differences of the gradient derived by hand."""
    rng = np.random.default_rng(3)
    W = rng.normal(size=(16, 16)) / 4

    def f(x):
        return np.sum(np.tanh(W @ x) ** 2) + 0.1 * np.sum(x * x) ** 2

    def grad(x):
        t = np.tanh(W @ x)
        return W.T @ (2 * t * (1 - t * t)) + 0.4 * np.dot(x, x) * x

    x = rng.normal(size=16)
    F = jx.compile(f, x)
    assert F.tape.n_blocks == 1
    np.testing.assert_allclose(F.grad_function()(x), grad(x), rtol=1e-12, atol=1e-14)
    h = 1e-5
    fd = np.stack([(grad(x + h * e) - grad(x - h * e)) / (2 * h) for e in np.eye(16)], axis=1)
    H = F.hessian(x)
    assert np.array_equal(H, H.T)
    np.testing.assert_allclose(H, fd, rtol=1e-6, atol=1e-8)
    v = rng.normal(size=16)
    np.testing.assert_allclose(F.hvp(x, v), H @ v, rtol=1e-12, atol=1e-12)
    G = jx.compile(lambda y: 2.0 * F(y), x)          # composition: F's tape inlined
    np.testing.assert_allclose(G(x), 2 * f(x), rtol=1e-14)
    np.testing.assert_allclose(G.jacobian(x), 2 * grad(x), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("coupled", [False, True], ids=["colouring", "star"])
def test_a_batch_of_one_hessian_is_the_points(coupled):
    """A batch of one (x[None]) takes the single point's path: the same numbers bit for bit,
    with the batch's shapes, dense and sparse, through G's colouring (rosen) and through a
    star colouring (an arrow-head)."""
    n = 60
    x = np.linspace(-1.0, 1.0, n)
    f = (lambda x: x[0] * np.sum(x[1:]) + np.sum(x ** 4)) if coupled else rosen
    F = jx.compile(f, x)
    assert (F.hessian_colours() == 2 and "(star)" in repr(F)) if coupled else True
    H, H1 = F.hessian(x), F.hessian(x[None])
    assert H1.shape == (1, n, n) and np.array_equal(H1[0], H)
    S, S1 = F.hessian(x, sparse=True), F.hessian(x[None], sparse=True)
    assert len(S1) == 1 and np.array_equal(S1[0].toarray(), S.toarray())
    assert np.array_equal(S.toarray(), H)


def test_a_batch_of_one_hvp_is_the_points():
    """F.hvp of x[None] (and v[None], or v) takes the single point's path, before and after
    the HVP tape is built: the point's numbers bit for bit, in the batch's shape."""
    n = 5000
    rng = np.random.default_rng(8)
    x, v = rng.uniform(-1.0, 1.0, n), rng.standard_normal(n)
    F = jx.compile(rosen, x)
    for _ in range(3):
        for _ in range(400):
            want = F.hvp(x, v)
        for got in (F.hvp(x[None], v[None]), F.hvp(x[None], v), F.hvp(x, v[None])):
            assert got.shape == (1, n) and np.array_equal(got[0], want)
