"""SciPy's solvers driven by jacext's Jacobians: least_squares (dense, and sparse with
tr_solver="lsmr"), solve_ivp(method="BDF") with jac= (dense, and sparse for a large stiff
system), root, and minimize with Hessians (trust-exact dense, trust-constr sparse).  Each
solve is held to an independent answer: a solution known in closed
form or printed by SciPy's documentation, a hand-written Jacobian, or SciPy's own finite
differences on the same problem."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.integrate import solve_ivp
from scipy.optimize import least_squares, minimize, root, rosen, rosen_der, rosen_hess

import jacext as jx

# ------------------------------------------------------------- least squares --

T = np.linspace(0.0, 4.0, 40)
TRUTH = np.array([2.5, 1.3, 0.5])
DATA = TRUTH[0] * np.exp(-TRUTH[1] * T) + TRUTH[2]      # noise free: the fit is exact


def decay_residuals(p):
    return p[0] * np.exp(-p[1] * T) + p[2] - DATA


def test_least_squares_dense_fits_the_truth():
    p0 = np.array([1.0, 0.5, 0.0])
    for jac in (jx.jacfwd(decay_residuals), jx.compile(decay_residuals, p0).jacobian):
        res = least_squares(decay_residuals, p0, jac=jac, xtol=1e-14, ftol=1e-14, gtol=1e-14)
        assert res.success
        np.testing.assert_allclose(res.x, TRUTH, rtol=1e-10)
    fd = least_squares(decay_residuals, p0, xtol=1e-14, ftol=1e-14, gtol=1e-14)
    np.testing.assert_allclose(fd.x, TRUTH, rtol=1e-7)     # SciPy's own differences agree
    # the Jacobian at the start, against the derivative by hand
    e = np.exp(-p0[1] * T)
    hand = np.stack([e, -p0[0] * T * e, np.ones_like(T)], axis=1)
    np.testing.assert_allclose(jx.jacfwd(decay_residuals)(p0), hand, rtol=1e-15)


def broyden(x):
    """SciPy's least_squares documentation example: Broyden tridiagonal, banded Jacobian."""
    left = np.concatenate([np.zeros(1), x[:-1]])
    right = np.concatenate([x[1:], np.zeros(1)])
    return (3 - 2 * x) * x - left - 2 * right + 1


def test_least_squares_sparse_lsmr():
    n = 1000
    x0 = -np.ones(n)
    jac = jx.jacfwd(broyden, sparse=True)
    J0 = jac(x0)
    assert sp.issparse(J0) and J0.nnz == 3 * n - 2
    res = least_squares(broyden, x0, jac=jac, tr_solver="lsmr", xtol=1e-12, ftol=1e-12)
    assert res.success and res.njev < 20
    assert np.max(np.abs(broyden(res.x))) < 1e-8
    # far from the ends the root is the fixed point of the infinite chain: 1 - 2 x**2 = 0
    np.testing.assert_allclose(res.x[n // 2], -np.sqrt(0.5), rtol=1e-9)
    # SciPy's finite differences with the same sparsity find the same root
    pattern = sp.diags([1, 1, 1], [-1, 0, 1], shape=(n, n), dtype=float)
    fd = least_squares(broyden, x0, jac_sparsity=pattern, tr_solver="lsmr", xtol=1e-12,
                       ftol=1e-12)
    np.testing.assert_allclose(res.x, fd.x, rtol=1e-7)


# ---------------------------------------------------------------- solve_ivp --

def robertson(t, y):
    """Robertson's stiff chemical kinetics (three species)."""
    return np.stack([-0.04 * y[0] + 1e4 * y[1] * y[2],
                     0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2,
                     3e7 * y[1] ** 2])


def robertson_jacobian_by_hand(t, y):
    return np.array([[-0.04, 1e4 * y[2], 1e4 * y[1]],
                     [0.04, -1e4 * y[2] - 6e7 * y[1], -1e4 * y[1]],
                     [0.0, 6e7 * y[1], 0.0]])


def test_solve_ivp_bdf_dense():
    y0 = np.array([1.0, 0.0, 0.0])
    opts = dict(method="BDF", rtol=1e-8, atol=1e-12)
    jac = jx.jacfwd(robertson, argnums=1)
    ours = solve_ivp(robertson, (0.0, 40.0), y0, jac=jac, **opts)
    hand = solve_ivp(robertson, (0.0, 40.0), y0, jac=robertson_jacobian_by_hand, **opts)
    fd = solve_ivp(robertson, (0.0, 40.0), y0, **opts)
    assert ours.success and hand.success and fd.success
    # the same Jacobian as by hand (to rounding): the same steps, the same answer
    assert ours.t.size == hand.t.size
    np.testing.assert_allclose(ours.y[:, -1], hand.y[:, -1], rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(ours.y[:, -1], fd.y[:, -1], rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(ours.y[:, -1].sum(), 1.0, rtol=1e-9)   # mass is conserved
    y = ours.y[:, 7]
    np.testing.assert_allclose(jac(ours.t[7], y), robertson_jacobian_by_hand(0.0, y),
                               rtol=1e-14, atol=1e-300)


N_GRID = 200
ALPHA = 0.02


def brusselator(t, y):
    """The 1-D Brusselator (reaction-diffusion; u = 1, v = 3 at both ends): a large stiff
    system of 2 * N_GRID unknowns with a banded Jacobian."""
    u, v = y[:N_GRID], y[N_GRID:]
    c = ALPHA * (N_GRID + 1) ** 2
    u_pad = np.concatenate([np.ones(1), u, np.ones(1)])
    v_pad = np.concatenate([np.full(1, 3.0), v, np.full(1, 3.0)])
    lap_u = u_pad[:-2] - 2 * u + u_pad[2:]
    lap_v = v_pad[:-2] - 2 * v + v_pad[2:]
    return np.concatenate([1 + u * u * v - 4 * u + c * lap_u, 3 * u - u * u * v + c * lap_v])


def test_solve_ivp_bdf_sparse_large_stiff():
    x = np.linspace(0, 1, N_GRID + 2)[1:-1]
    y0 = np.concatenate([1 + np.sin(2 * np.pi * x), np.full(N_GRID, 3.0)])
    jac = jx.jacfwd(brusselator, argnums=1, sparse=True)
    J0 = jac(0.0, y0)
    assert sp.issparse(J0) and J0.shape == (2 * N_GRID, 2 * N_GRID)
    # the pattern: the two tridiagonal diffusion blocks and the diagonal couplings
    assert J0.nnz == 2 * (3 * N_GRID - 2) + 2 * N_GRID
    opts = dict(method="BDF", rtol=1e-6, atol=1e-9)
    ours = solve_ivp(brusselator, (0.0, 2.0), y0, jac=jac, **opts)
    fd = solve_ivp(brusselator, (0.0, 2.0), y0, jac_sparsity=J0 != 0, **opts)
    assert ours.success and fd.success
    np.testing.assert_allclose(ours.y[:, -1], fd.y[:, -1], rtol=1e-4)


# --------------------------------------------------------------------- root --

def powell(x):
    """SciPy's root documentation example."""
    return np.stack([x[0] + 0.5 * (x[0] - x[1]) ** 3 - 1.0,
                     0.5 * (x[1] - x[0]) ** 3 + x[1]])


@pytest.mark.parametrize("method", ["hybr", "lm"])
def test_root(method):
    sol = root(powell, np.array([0.0, 0.0]), jac=jx.jacfwd(powell), method=method, tol=1e-12)
    assert sol.success
    np.testing.assert_allclose(sol.x, [0.8411639, 0.1588361], atol=1e-7)   # SciPy's docs
    np.testing.assert_allclose(powell(sol.x), 0.0, atol=1e-12)


# ------------------------------------------------------------ minimize (hess=) --

def chained_rosenbrock(x):
    """SciPy's scipy.optimize.rosen, written as a user writes it."""
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def test_rosenbrock_derivatives_equal_scipys_hand_written_ones():
    # scipy.optimize.rosen_der / rosen_hess: SciPy's hand-derived gradient and Hessian
    F = jx.compile(chained_rosenbrock, np.zeros(30))
    x = np.random.default_rng(0).uniform(-2.0, 2.0, 30)
    np.testing.assert_allclose(F(x), rosen(x), rtol=1e-14)
    np.testing.assert_allclose(F.grad_function()(x), rosen_der(x), rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(F.hessian(x), rosen_hess(x), rtol=1e-13, atol=1e-12)
    np.testing.assert_array_equal(F.hessian(x, sparse=True).toarray(), F.hessian(x))


def test_minimize_trust_exact_with_dense_hessians():
    n = 50
    x0 = 0.5 * (-1.0) ** np.arange(n)
    F = jx.compile(chained_rosenbrock, x0)
    ours = minimize(F, x0, jac=F.grad_function(), hess=F.hessian, method="trust-exact",
                    options={"gtol": 1e-10})
    scipys = minimize(rosen, x0, jac=rosen_der, hess=rosen_hess, method="trust-exact",
                      options={"gtol": 1e-10})
    assert ours.success and scipys.success
    np.testing.assert_allclose(ours.x, 1.0, atol=1e-8)          # the known minimum
    np.testing.assert_allclose(ours.x, scipys.x, atol=1e-9)
    assert ours.nit == scipys.nit                                # the same path


def test_minimize_trust_constr_with_sparse_hessians():
    n = 2000
    x0 = 1.0 + 0.1 * np.cos(np.arange(n))
    F = jx.compile(chained_rosenbrock, x0)
    hess = lambda x: F.hessian(x, sparse=True)                   # noqa: E731
    assert isinstance(hess(x0), sp.csr_array)
    assert F.hessian_colours() <= 3                              # tridiagonal pattern
    res = minimize(F, x0, jac=F.grad_function(), hess=hess, method="trust-constr",
                   options={"gtol": 1e-10, "xtol": 1e-14, "maxiter": 500})
    assert res.status in (1, 2), res.message
    np.testing.assert_allclose(res.x, 1.0, atol=1e-6)
