"""Guarded tapes (jacext/guarded.py, jacext/_guards.pyx, trace.Guards): Python control flow.

Each construct of the table is plain NumPy code, written the way users write it.  At
points on both sides of every branch the compiled values equal the NumPy code's and the
Jacobians match central differences of the NumPy code (and each other across modes); at
the ties (a point exactly on a branch's boundary) the reference is torch's eager
Jacobian of a port, which runs the same Python branch.  Batches that straddle branches
equal the point-by-point results bit for bit.
"""
from __future__ import annotations

import pickle
import threading
import warnings

import numpy as np
import pytest

import jacext as jx
from jacext import plan
from jacext.guarded import GuardedFunction
from jacext.testing import central_difference

try:
    import torch
except ImportError:     # the sanitizer's venv: the other references still check
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is the reference at ties")


# ---------------------------------------------------------------- the table --

def piecewise(x, lib=np):
    if x[0] <= 0.0:
        return x ** 2
    elif x[0] < 1.0:
        return lib.sin(x) * x[1]
    else:
        return lib.exp(x[1]) * x


def halving(x, lib=np):
    y = x
    while lib.sum(y ** 2) > 1.0:
        y = y / 2
    return y * x[0]


def builtins(x, lib=np):
    m = max(abs(x))
    return x / m + min(x[0], x[1])


def numbers(x, lib=np):
    k = int(x[0])
    s = 0.0
    for j in range(k):
        s = s + x[1] ** j
    return s * x


def _lj(d):
    if d > 1.5:
        return 0.0 * d
    return (1 / d) ** 12 - (1 / d) ** 6


def pairs(x, lib=np):
    p = x.reshape(-1, 2)
    e = 0.0
    for i in range(len(p)):
        for j in range(i + 1, len(p)):
            e = e + _lj(lib.sqrt(lib.sum((p[i] - p[j]) ** 2)))
    return e


def clamp_and_or(x, lib=np):
    if x[0] > 0 and x[1] > 0:
        return x * x[2]
    if x[0] > 0 or not x[2] < 0:
        return x + x[0] * x[1]
    return -x * x[1]


def masks(x, lib=np):
    y = x * 1.0
    y[y < 0] = 0.0                        # relu by a masked assignment
    pos = x[(x > 0) & (x < 2.0)]          # a selection whose length depends on x
    return y * len(pos) + lib.sum(pos ** 2)


def selections(x, lib=np):
    idx = lib.where(x < 0)[0]             # np.where(condition): indices
    k = lib.count_nonzero(x > 0.5)
    s = lib.sum(x[idx] ** 3)
    if lib.any(x > 2.0):
        s = s + x[0] * x[1]
    return x * k + s


#: (function, points on every side of every branch, ties)
TABLE = [
    (piecewise, [[-0.7, 0.3, 2.0], [0.4, 0.3, 2.0], [1.6, 0.3, 2.0]],
     [[0.0, 0.3, 2.0], [1.0, 0.3, 2.0]]),
    (halving, [[0.3, 0.2, 0.1], [3.0, 1.0, 2.0], [10.0, 1.0, 2.0]], [[1.0, 0.0, 0.0]]),
    (builtins, [[0.3, -2.0, 1.0], [3.0, 1.0, 2.0], [0.5, 1.0, -4.0]],
     [[0.5, 0.5, -0.5], [2.0, -2.0, 1.0]]),
    (numbers, [[2.5, 1.5, 0.7], [0.5, 1.5, 0.7], [4.2, 1.1, 0.3]], [[3.0, 1.2, 0.4]]),
    (pairs, [[0.0, 0.0, 1.0, 0.2, 0.3, 1.1, 2.5, 2.5], [0.0, 0.0, 1.0, 0.9, 3.3, 1.1, 2.5, 2.5]],
     [[0.0, 0.0, 1.5, 0.0, 3.3, 1.1, 2.5, 2.5]]),
    (clamp_and_or, [[0.5, 0.5, 1.0], [0.5, -0.5, 1.0], [-0.5, 0.5, 1.0], [-0.5, 0.5, -1.0]],
     [[0.0, 0.5, -1.0], [0.5, 0.0, 1.0]]),
    (masks, [[0.5, -1.0, 2.5], [1.5, 0.3, -0.2], [-0.5, -0.3, -0.1]],
     [[0.0, 1.0, 2.0], [-0.5, 0.0, 0.3]]),
    (selections, [[0.3, -0.4, 0.9], [2.5, 1.0, -1.0], [-1.0, -2.0, 0.7]],
     [[0.5, 0.0, 2.0], [-0.5, 0.5, 1.0]]),
]
IDS = [row[0].__name__ for row in TABLE]


def _torch_jacobian(f, p):
    """torch's eager Jacobian of the port (f with lib=torch), or None without torch."""
    if torch is None:
        return None
    J = torch.autograd.functional.jacobian(lambda t: f(t, lib=torch),
                                           torch.tensor(p, dtype=torch.float64))
    return J.numpy()


@pytest.mark.parametrize("f, points, ties", TABLE, ids=IDS)
def test_each_branch_at_single_points(f, points, ties):
    pts = [np.array(p) for p in points]
    F = jx.compile(f, pts[0])
    assert isinstance(F, GuardedFunction)
    for p in pts:
        np.testing.assert_array_equal(F(p), f(p))
        Jf = F.jacobian(p, mode="forward")
        Jr = F.jacobian(p, mode="reverse")
        np.testing.assert_allclose(Jf, Jr, rtol=1e-13, atol=1e-13)
        D = central_difference(f, (p,), (0,))
        np.testing.assert_allclose(Jf.reshape(D.shape), D, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(F.jacobian(p), Jf, rtol=1e-13, atol=1e-13)
        # torch's eager Jacobian of the same code runs the same Python branch
        T = _torch_jacobian(f, p)
        if T is not None:
            np.testing.assert_allclose(Jf, T.reshape(Jf.shape), rtol=1e-12, atol=1e-12)
    assert len(F.tapes) >= 2          # the points took more than one branch


@needs_torch
@pytest.mark.parametrize("f, points, ties", TABLE, ids=IDS)
def test_ties_take_the_branch_numpy_takes(f, points, ties):
    F = jx.compile(f, np.array(points[0]))
    for p in map(np.array, ties):
        np.testing.assert_array_equal(F(p), f(p))
        J = F.jacobian(p)
        np.testing.assert_allclose(J, _torch_jacobian(f, p).reshape(J.shape), rtol=1e-12,
                                   atol=1e-12)
        # traced at the tie itself: the same tape's answer
        np.testing.assert_array_equal(jx.compile(f, p).jacobian(p), J)


def test_tie_derivative_by_hand():
    """x[0] == 0 in piecewise: `x[0] <= 0.0` holds, the branch x**2, J = diag(2x)."""
    p = np.array([0.0, 0.3, 2.0])
    J = jx.jacobian(piecewise, p)
    np.testing.assert_array_equal(J, np.diag(2 * p))
    p = np.array([1.0, 0.3, 2.0])    # x[0] < 1.0 fails: exp(x[1]) * x
    want = np.exp(p[1]) * np.eye(3)
    want[:, 1] += np.exp(p[1]) * p
    np.testing.assert_allclose(jx.jacobian(piecewise, p), want, rtol=1e-15)


@pytest.mark.parametrize("f, points, ties", TABLE, ids=IDS)
def test_batches_straddling_branches_equal_points(f, points, ties):
    X = np.array(points + ties + points[::-1])
    F = jx.compile(f, X[0])
    for mode in ("auto", "forward", "reverse"):
        J = F.jacobian(X, mode=mode)
        np.testing.assert_array_equal(J, np.stack([F.jacobian(p, mode=mode) for p in X]))
    np.testing.assert_array_equal(F(X), np.stack([F(p) for p in X]))
    v, J = F.value_and_jacobian(X)
    np.testing.assert_array_equal(v, np.stack([F(p) for p in X]))
    np.testing.assert_array_equal(J, np.stack([F.jacobian(p) for p in X]))
    rng = np.random.default_rng(1)
    T = rng.standard_normal(X.shape)
    y, jv = F.jvp(X, T)
    for k, p in enumerate(X):
        yk, jvk = F.jvp(p, T[k])
        np.testing.assert_array_equal(y[k], yk)
        np.testing.assert_array_equal(jv[k], jvk)
    U = rng.standard_normal((X.shape[0],) + F.out_shapes[0])
    y, uj = F.vjp(X, U)
    for k, p in enumerate(X):
        np.testing.assert_array_equal(uj[k], F.vjp(p, U[k])[1])
    # a batch of shape (2, m, n) and out=
    X2 = np.stack([X, X[::-1]])
    out = np.empty((2, X.shape[0]) + F.out_shapes[0] + F.arg_shapes[0])
    assert F.jacobian(X2, out=out) is out
    np.testing.assert_array_equal(out[1], F.jacobian(X[::-1]))


def test_two_arguments_and_tuple_outputs():
    def f(a, b):
        if a[0] > b[0]:
            return a * b, np.sum(a)
        return a - b, np.sum(b ** 2)

    a = np.array([[1.0, 2.0], [0.0, 3.0], [-1.0, 1.0]])
    b = np.array([[0.0, 1.0], [1.0, 1.0], [-1.5, 2.0]])
    F = jx.compile(f, a[0], b[0])
    J = F.jacobian(a, b, argnums=(0, 1))
    for k in range(3):
        Jk = F.jacobian(a[k], b[k], argnums=(0, 1))
        for o in range(2):
            for i in range(2):
                np.testing.assert_array_equal(J[o][i][k], Jk[o][i])
        with np.errstate(all="ignore"):
            D = central_difference(lambda u, v: np.concatenate([np.ravel(r) for r in f(u, v)]),
                                   (a[k], b[k]), (0, 1))
        M = np.concatenate([np.concatenate([Jk[o][i].reshape(-1, 2) for i in range(2)],
                                           axis=1) for o in range(2)])
        np.testing.assert_allclose(M, D, rtol=1e-7, atol=1e-9)
    y, jv = F.jvp(a, b, (np.ones(2), np.zeros(2)))
    assert y[0].shape == (3, 2) and jv[1].shape == (3,)


def test_split_batch_jacobians_by_argument_and_into_out():
    """A batch whose points take three branches: the Jacobians by either argument, into
    out= or not, equal the points' own; a wrong out= is refused as for one branch."""
    def f(a, b):
        if a[0] > 0.5:
            return np.sin(a) * b[0]
        elif a[0] > -0.5:
            return a ** 2 - b[1] * a
        return np.exp(a) + b[0] * b[1]

    rng = np.random.default_rng(5)
    A = rng.uniform(-1.5, 1.5, (4, 25, 3))
    B = rng.standard_normal((4, 25, 2))
    F = jx.compile(f, A[0, 0], B[0, 0])
    for argnums, width in ((0, (3,)), (1, (2,))):
        J = F.jacobian(A, B, argnums=argnums)
        assert J.shape == (4, 25, 3) + width
        want = np.stack([np.stack([F.jacobian(A[i, k], B[i, k], argnums=argnums)
                                   for k in range(25)]) for i in range(4)])
        np.testing.assert_array_equal(J, want)
        out = np.full(J.shape, np.nan)
        assert F.jacobian(A, B, argnums=argnums, out=out) is out
        np.testing.assert_array_equal(out, want)
        for bad in (np.empty(J.shape[1:]), np.empty(J.shape, dtype=np.float32)):
            with pytest.raises((ValueError, TypeError)):
                F.jacobian(A, B, argnums=argnums, out=bad)
    assert len(F.tapes) == 3


# ---------------------------------------------------------------- numbers --

def test_float_is_a_constant_with_a_guard():
    """float(x) takes the number (zero derivative, as torch's .item()); another value of
    it is another tape."""
    F = jx.compile(lambda x: x * float(x[0]), np.array([2.0, 3.0]))
    np.testing.assert_array_equal(F.jacobian(np.array([2.0, 3.0])), np.diag([2.0, 2.0]))
    np.testing.assert_array_equal(F.jacobian(np.array([5.0, 3.0])), np.diag([5.0, 5.0]))
    assert len(F.tapes) == 2
    G = jx.compile(lambda x: x * x[0].item() + sum(x.tolist()), np.array([2.0, 3.0]))
    np.testing.assert_array_equal(G(np.array([2.0, 3.0])), [9.0, 11.0])
    np.testing.assert_array_equal(G.jacobian(np.array([2.0, 3.0])), np.diag([2.0, 2.0]))


def test_int_guards_its_truncation_only():
    """int(x) guards trunc(x): points with the same integer part share the tape."""
    F = jx.compile(numbers, np.array([2.5, 1.5, 0.7]))
    for p in ([2.1, 1.5, 0.7], [2.9, -1.0, 3.0]):
        p = np.array(p)
        np.testing.assert_array_equal(F(p), numbers(p))
    assert len(F.tapes) == 1
    F(np.array([-2.5, 1.0, 1.0]))     # int() truncates toward zero: -2, no loop
    assert len(F.tapes) == 2
    np.testing.assert_array_equal(F(np.array([-2.5, 1.0, 1.0])), 0.0)


def test_no_control_flow_gives_a_plain_function():
    def f(x):
        z = np.zeros(3)
        if z[0] > 1.0:             # a constant comparison: no guard
            return x
        return np.sin(x) * float(z[1] + 2.0)

    F = jx.compile(f, np.ones(3))
    assert type(F) is jx.Function
    np.testing.assert_allclose(F.jacobian(np.ones(3)), np.diag(2 * np.cos(np.ones(3))))


# ---------------------------------------------------------------- policy --

def test_control_flow_error_keeps_the_tracing_error():
    with pytest.raises(jx.TracingError) as info:
        jx.compile(piecewise, np.ones(3), control_flow="error")
    msg = str(info.value)
    assert "if x[0] <= 0.0:" in msg and "test_guarded.py" in msg
    assert "np.where" in msg and 'control_flow="guard"' in msg
    with pytest.raises(ValueError, match="control_flow"):
        jx.compile(piecewise, np.ones(3), control_flow="retrace")


@needs_torch
def test_jacobian_is_a_drop_in_for_torch_on_control_flow():
    jx.api.clear_cache()
    rng = np.random.default_rng(3)
    for _ in range(10):
        p = rng.uniform(-2.0, 2.0, 3)
        np.testing.assert_allclose(jx.jacobian(piecewise, p), _torch_jacobian(piecewise, p),
                                   rtol=1e-12, atol=1e-12)


def test_math_module_refused_under_either_policy():
    import math
    with pytest.raises(jx.TracingError, match="np.sin for math.sin"):
        jx.compile(lambda x: math.sin(x[0]) * x, np.ones(3))


# ---------------------------------------------------------------- tapes --

def _steps(x):
    k = int(x[0])               # a new tape per integer part
    return x * k + np.sin(x)


def test_retrace_bound_drops_the_least_recently_used_and_warns_once():
    F = jx.compile(_steps, np.array([0.5, 1.0]))
    n = plan.GUARDED_TAPES
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for k in range(n + 4):
            p = np.array([k + 0.5, 1.0])
            np.testing.assert_allclose(F.jacobian(p), np.diag([k, k]) + np.diag(np.cos(p)),
                                       rtol=1e-15)
    mine = [w for w in seen if "traced" in str(w.message)]
    assert len(mine) == 1
    assert "x * k" not in str(mine[0].message)
    assert "k = int(x[0])" in str(mine[0].message) and "np.where" in str(mine[0].message)
    assert len(F.tapes) == n
    np.testing.assert_allclose(F(np.array([0.5, 1.0])), _steps(np.array([0.5, 1.0])))


def test_pickled_guarded_function_keeps_its_tapes_and_retraces():
    F = jx.compile(piecewise, np.array([-0.7, 0.3, 2.0]))
    F(np.array([0.5, 0.3, 2.0]))
    G = pickle.loads(pickle.dumps(F))
    assert isinstance(G, GuardedFunction) and len(G.tapes) == 2
    p = np.array([1.5, 0.3, 2.0])          # a third branch: traced again after loading
    np.testing.assert_array_equal(G.jacobian(p), F.jacobian(p))
    np.testing.assert_array_equal(G(p), piecewise(p))


def test_pickled_without_its_function_says_so():
    F = jx.compile(lambda x: x if x[0] > 0 else -x, np.ones(2))
    G = pickle.loads(pickle.dumps(F))
    np.testing.assert_array_equal(G.jacobian(np.ones(2)), np.eye(2))
    with pytest.raises(jx.TracingError, match="module level"):
        G.jacobian(-np.ones(2))


def test_threads_share_a_guarded_function():
    rng = np.random.default_rng(5)
    P = rng.uniform(-1.0, 2.0, (64, 3))
    want = [piecewise_jac(p) for p in P]
    F = jx.compile(piecewise, P[0])
    # a batch equals its points bit for bit (the hand Jacobian's np.exp may be NumPy's own
    # SIMD exp, an ulp from the C library's: rtol below)
    points = np.stack([F.jacobian(p) for p in P])
    errors = []

    def work(seed):
        r = np.random.default_rng(seed)
        try:
            for _ in range(4):
                for k in r.permutation(len(P)):
                    np.testing.assert_allclose(F.jacobian(P[k]), want[k], rtol=1e-14)
                np.testing.assert_array_equal(F.jacobian(P), points)
        except Exception as exc:     # reported below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    np.testing.assert_allclose(points, np.stack(want), rtol=1e-14)
    assert len(F.tapes) == 3


def piecewise_jac(p):
    """piecewise's Jacobian by hand."""
    if p[0] <= 0.0:
        return np.diag(2 * p)
    if p[0] < 1.0:
        J = np.diag(np.cos(p) * p[1])
        J[:, 1] += np.sin(p)
        return J
    J = np.exp(p[1]) * np.eye(3)
    J[:, 1] += np.exp(p[1]) * p
    return J


def test_sparsity_is_the_union_of_the_branches():
    def f(x):
        if x[0] > 0:
            return x * x[1]
        return x * x[2]

    F = jx.compile(f, np.ones(3))
    F(-np.ones(3))
    S = F.sparsity().toarray()
    np.testing.assert_array_equal(S, np.eye(3, dtype=bool) | np.array([[0, 1, 1]] * 3,
                                                                       dtype=bool))
    with pytest.raises(ValueError, match="branches"):
        F.jacobian(np.array([[1.0, 1, 1], [-1.0, 1, 1]]), sparse=True)
    sj = F.jacobian(np.array([[1.0, 2, 3], [2.0, 1, 1]]), sparse=True)   # one branch
    np.testing.assert_array_equal(sj.toarray()[0], F.jacobian(np.array([1.0, 2, 3])))


# ---------------------------------------------------------------- messages --

def test_messages_for_lists_of_arrays_and_tangent_shapes():
    # jx.jacobian takes a list of arrays as one pytree argument (as jax.jacobian does):
    # the Jacobian of the identity is a list of lists of blocks, eye on the diagonal
    J = jx.jacobian(lambda x: x, [np.ones(2), np.ones(2)])
    assert type(J) is list and [type(r) for r in J] == [list, list]
    for i in range(2):
        for j in range(2):
            np.testing.assert_array_equal(J[i][j], np.eye(2) if i == j else np.zeros((2, 2)))
    F = jx.compile(lambda a, b: a * b, np.ones(2), np.ones(2))
    with pytest.raises(TypeError, match="one by one"):
        F([np.ones(2), np.ones(2)])
    G = jx.compile(lambda x: x * x[0], np.ones(2))
    with pytest.raises(ValueError, match="tangent 0 .* must have shape \\(2,\\)"):
        G.jvp(np.ones(2), np.ones(3))
    with pytest.raises(ValueError, match="tangent 1 .* must have shape \\(2,\\)"):
        F.jvp(np.ones(2), np.ones(2), (np.ones(2), np.ones(3)))


@pytest.mark.parametrize("f, points, ties", TABLE, ids=IDS)
def test_single_point_check_equals_the_batched_sweep(f, points, ties):
    """A single point's guard check (GuardCheck.holds, the fast paths' C check) says
    what the batched sweep of the guard tape says, at random points, the ties, and
    non-finite values."""
    F = jx.compile(f, np.array(points[0]))
    rng = np.random.default_rng(7)
    n = len(points[0])
    X = np.concatenate([np.array(points + ties), rng.uniform(-3, 3, (200, n)),
                        rng.choice([0.0, -0.0, 1.0, np.inf, -np.inf, np.nan], (100, n))])
    for p in X[: len(points) + len(ties)]:
        F(p)          # tapes for several branches
    for t in F._order:
        rows = t.check.holds_rows(np.ascontiguousarray(X))
        assert [t.check.holds(np.ascontiguousarray(p)) for p in X] == rows.tolist()
