"""SciPy's solvers end to end: time to solution with jacext's Jacobians, SciPy's finite
differences and JAX-supplied Jacobians, side by side in one run.

    python bench/scipy_solvers.py              # the full run (about 2 minutes on 2 cores)
    python bench/scipy_solvers.py --quick      # small sizes, 3 repeats
    python bench/scipy_solvers.py --problems bdf_robertson --repeats 15
    python bench/scipy_solvers.py --markdown bench/results/scipy_solvers.md

Problems (each written once, for NumPy and jax.numpy through ``xp``):

* ``ls_gauss``: least_squares fit of 6 Gaussians (18 parameters) to 1000 samples: dense.
* ``ls_broyden``: least_squares on Broyden tridiagonal, n = 2000, ``tr_solver="lsmr"``:
  sparse (jacext ``sparse=True``; SciPy's differences with and without ``jac_sparsity``).
* ``bdf_robertson``: solve_ivp(method="BDF") on Robertson's stiff kinetics: 3 unknowns.
* ``bdf_brusselator``: solve_ivp(method="BDF") on the 1-D Brusselator, 2 x 500 unknowns,
  a large stiff system with a banded Jacobian (jacext ``sparse=True``).

Ways of supplying the Jacobian:

* ``jacext``: ``jx.jacfwd(f)`` (``sparse=True`` for the sparse problems); the first solve
  traces and compiles, so "cold" includes that and "warm" is a second solve.
* ``jacext-fun``: the residual or right-hand side compiled too: ``F = jx.compile(f, ...)``
  is passed as ``fun`` and ``F.jacobian`` as ``jac`` (for small systems the compiled
  function is much cheaper than NumPy's per-call overhead, and the solvers call ``fun``
  far more often than ``jac``).
* ``fd``: SciPy's default finite differences (``jac`` not given).
* ``fd-sparsity``: SciPy's finite differences told the sparsity (``jac_sparsity=``), its
  best for the sparse problems.
* ``jax``: ``jax.jit(jax.jacfwd(f))`` in float64, converted with ``np.asarray`` (dense;
  "cold" includes the JIT compilation).

Each cell: the median of the repeats of a whole solve (warm), the first solve (cold), the
final cost or state, and nfev / njev.  Every way must reach the same solution as jacext
(relative difference printed) or the run fails.
"""
from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import time

import numpy as np
import scipy.sparse as sp
from scipy.integrate import solve_ivp
from scipy.optimize import least_squares

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import jacext as jx  # noqa: E402

# ------------------------------------------------------------------- problems --

GAUSS_K = 6
GAUSS_T = np.linspace(0.0, 10.0, 1000)
_rng = np.random.default_rng(0)
GAUSS_TRUTH = np.concatenate([_rng.uniform(0.5, 2.0, GAUSS_K),          # amplitudes
                              np.linspace(1.0, 9.0, GAUSS_K),            # centres
                              _rng.uniform(0.6, 1.0, GAUSS_K)])          # widths
GAUSS_START = GAUSS_TRUTH * (1 + 0.03 * _rng.standard_normal(3 * GAUSS_K))


def _gauss_model(p, xp):
    a, c, w = p[:GAUSS_K], p[GAUSS_K:2 * GAUSS_K], p[2 * GAUSS_K:]
    z = (GAUSS_T[:, None] - c[None, :]) / w[None, :]
    return xp.exp(-z * z) @ a


GAUSS_DATA = _gauss_model(GAUSS_TRUTH, np)


def gauss(p, xp=np):
    return _gauss_model(p, xp) - GAUSS_DATA


def broyden(x, xp=np):
    left = xp.concatenate([xp.zeros(1), x[:-1]])
    right = xp.concatenate([x[1:], xp.zeros(1)])
    return (3 - 2 * x) * x - left - 2 * right + 1


def robertson(t, y, xp=np):
    return xp.stack([-0.04 * y[0] + 1e4 * y[1] * y[2],
                     0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2,
                     3e7 * y[1] ** 2])


BRUSS_N = 500
BRUSS_ALPHA = 0.02


def brusselator(t, y, xp=np):
    n = y.shape[0] // 2
    u, v = y[:n], y[n:]
    c = BRUSS_ALPHA * (n + 1) ** 2
    u_pad = xp.concatenate([xp.ones(1), u, xp.ones(1)])
    v_pad = xp.concatenate([xp.full(1, 3.0), v, xp.full(1, 3.0)])
    lap_u = u_pad[:-2] - 2 * u + u_pad[2:]
    lap_v = v_pad[:-2] - 2 * v + v_pad[2:]
    return xp.concatenate([1 + u * u * v - 4 * u + c * lap_u, 3 * u - u * u * v + c * lap_v])


def tridiagonal_pattern(n):
    return sp.diags([1.0, 1.0, 1.0], [-1, 0, 1], shape=(n, n), format="csr", dtype=float)


def bruss_pattern(n):
    block = tridiagonal_pattern(n)
    eye = sp.eye(n)
    return sp.bmat([[block, eye], [eye, block]], format="csr")


# ------------------------------------------------------------------ the ways --

def _jax():
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None, None
    jax.config.update("jax_enable_x64", True)
    return jax, jnp


def jac_for(way, problem, f):
    """The keyword arguments of the solver for this way (made afresh: a cold solve includes
    tracing or JIT compilation); ``fun`` among them replaces the NumPy function."""
    ivp = problem.startswith("bdf")
    if way == "jacext-fun":
        sparse = problem in SPARSE
        x0 = START[problem]()
        if ivp:
            F = jx.compile(f, 0.0, x0)
            return {"fun": F, "jac": lambda t, y: F.jacobian(t, y, argnums=1, sparse=sparse)}
        F = jx.compile(f, x0)
        return {"fun": F, "jac": lambda x: F.jacobian(x, sparse=sparse)}
    if way == "jacext":
        return {"jac": jx.jacfwd(f, argnums=1 if ivp else 0, sparse=problem in SPARSE)}
    if way == "fd":
        return {}
    if way == "fd-sparsity":
        return {"jac_sparsity": PATTERNS[problem]()}
    jax, jnp = _jax()
    g = jax.jit(jax.jacfwd(functools.partial(f, xp=jnp), argnums=1 if ivp else 0))
    if ivp:
        return {"jac": lambda t, y: np.asarray(g(t, y))}
    return {"jac": lambda x: np.asarray(g(x))}


SPARSE = {"ls_broyden", "bdf_brusselator"}
PATTERNS = {"ls_broyden": lambda: tridiagonal_pattern(SIZES["broyden"]),
            "bdf_brusselator": lambda: bruss_pattern(SIZES["bruss"])}
SIZES = {"broyden": 2000, "bruss": BRUSS_N}


def _bruss_start():
    n = SIZES["bruss"]
    x = np.linspace(0, 1, n + 2)[1:-1]
    return np.concatenate([1 + np.sin(2 * np.pi * x), np.full(n, 3.0)])


START = {"ls_gauss": lambda: GAUSS_START, "ls_broyden": lambda: -np.ones(SIZES["broyden"]),
         "bdf_robertson": lambda: np.array([1.0, 0.0, 0.0]), "bdf_brusselator": _bruss_start}


def solve(problem, kw):
    """(answer, nfev, njev) of one solve."""
    kw = dict(kw)
    fun = kw.pop("fun", FUNCS[problem])
    if problem == "ls_gauss":
        r = least_squares(fun, START[problem](), xtol=1e-12, ftol=1e-12, gtol=1e-12, **kw)
        assert r.success, r.message
        return r.x, r.nfev, r.njev
    if problem == "ls_broyden":
        r = least_squares(fun, START[problem](), tr_solver="lsmr", xtol=1e-10,
                          ftol=1e-10, **kw)
        assert r.success, r.message
        return r.x, r.nfev, r.njev
    if problem == "bdf_robertson":
        r = solve_ivp(fun, (0.0, 4e5), START[problem](), method="BDF",
                      rtol=1e-8, atol=1e-12, **kw)
        assert r.success, r.message
        return r.y[:, -1], r.nfev, r.njev
    r = solve_ivp(fun, (0.0, 10.0), START[problem](), method="BDF", rtol=1e-6, atol=1e-9, **kw)
    assert r.success, r.message
    return r.y[:, -1], r.nfev, r.njev


FUNCS = {"ls_gauss": gauss, "ls_broyden": broyden, "bdf_robertson": robertson,
         "bdf_brusselator": brusselator}
TOL = {"ls_gauss": 1e-6, "ls_broyden": 1e-6, "bdf_robertson": 1e-4, "bdf_brusselator": 1e-3}


def ways_for(problem, have_jax, quick):
    ways = ["jacext", "jacext-fun", "fd"]
    if problem in SPARSE:
        ways.append("fd-sparsity")
    if have_jax:
        ways.append("jax")
    return ways


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--markdown", default=None, help="also write the table here")
    ap.add_argument("--problems", default=",".join(FUNCS),
                    help=f"comma-separated, from {', '.join(FUNCS)} (default: all)")
    args = ap.parse_args(argv)
    problems = args.problems.split(",")
    unknown = sorted(set(problems) - set(FUNCS))
    if unknown:
        ap.error(f"unknown problems {unknown}; choose from {', '.join(FUNCS)}")
    repeats = args.repeats or (3 if args.quick else 5)
    if args.quick:
        SIZES.update(broyden=300, bruss=100)
    jax, _ = _jax()
    lines = [f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
             f"{platform.python_version()}, NumPy {np.__version__}, SciPy "
             f"{__import__('scipy').__version__}, jax {getattr(jax, '__version__', '-')}; "
             f"median of {repeats} warm solves",
             "",
             "| problem | way | cold s | warm s (median) | vs jacext | nfev | njev | "
             "max rel. diff to jacext |",
             "|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    failed = False
    for problem in problems:
        ref = None
        rows = []
        for way in ways_for(problem, jax is not None, args.quick):
            t0 = time.perf_counter()
            answer, nfev, njev = solve(problem, jac_for(way, problem, FUNCS[problem]))
            cold = time.perf_counter() - t0
            times = []
            kw = jac_for(way, problem, FUNCS[problem])
            solve(problem, kw)            # compiled (or traced) once, then timed
            for _ in range(repeats):
                t0 = time.perf_counter()
                solve(problem, kw)
                times.append(time.perf_counter() - t0)
            warm = statistics.median(times)
            if ref is None:
                ref, ref_warm = answer, warm
            diff = float(np.max(np.abs(answer - ref) / np.maximum(np.abs(ref), 1e-12)))
            if diff > TOL[problem]:
                failed = True
            rows.append(f"| {problem} | {way} | {cold:.3f} | {warm:.4f} | "
                        f"{warm / ref_warm:.2f}x | {nfev} | {njev} | {diff:.1e} |")
            print(rows[-1], flush=True)
        lines += rows
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    if failed:
        print("a way reached a different solution than jacext", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
