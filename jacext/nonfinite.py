"""Entries that met an inf or nan, again by forward sweeps, whose zero kills decide.

Where a reverse sweep, a colouring's reverse sweeps or a Jacobian tape meets a
non-finite partial, a product with a zero (a structurally zero seed, a zero partial)
can give nan where the forward sweeps' zero-kill multiply gives 0 (README, "Where
np.where is differentiable").  So that every mode gives the same entries, the points
(or rows) that hold an inf or nan are computed again by forward sweeps; finite
results are never touched.  ``jacext._function`` and ``jacext.sparse`` call these
after a sweep whose result is not all finite.
"""
from __future__ import annotations

import math

import numpy as np

from jacext import _tape
from jacext import plan as _plan

_FORWARD = _tape.MODES["forward"]


def bad_rows(a):
    """Indices of the rows of a (n_points x k) that hold an inf or nan."""
    return np.flatnonzero(~np.isfinite(a).all(axis=1))


def redo_rows(tape, X, flat, cols, threads):
    """The rows of a batch's dense Jacobian (flat: n_points x n_out * n_cols, for the
    points X and input columns ``cols``) that hold an inf or nan, by forward sweeps."""
    bad = bad_rows(flat)
    if not bad.shape[0]:
        return
    redo = np.empty((bad.shape[0], flat.shape[1]), dtype=np.float64)
    tape.batch("jacobian", np.ascontiguousarray(X[bad]), None, redo,
               _plan.n_threads(threads, bad.shape[0],
                               tape.n_instructions * (1 + cols.shape[0])),
               mode=_FORWARD, cols=cols)
    flat[bad] = redo


def redo_nonzeros(tape, plan, x, n_points, vals, threads):
    """The nonzeros of a sparse plan (vals: nnz at one point, n_points -1, or one row per
    point) that hold an inf or nan, by the forward sweeps of its column colouring."""
    structure = plan.structure
    col, p = structure.colourings[:2]
    shape = structure.compressed_shape("forward")
    if n_points < 0:
        comp = np.empty(shape, dtype=np.float64)
        tape.compressed(x, None, comp, plan.cols, col, p, _FORWARD)
        vals[...] = np.take(comp.reshape(-1), structure.gather("forward"))
        return
    bad = bad_rows(vals)
    comp = np.empty((bad.shape[0],) + shape, dtype=np.float64)
    tape.batch("compressed", np.ascontiguousarray(x[bad]), None, comp,
               _plan.n_threads(threads, bad.shape[0], tape.n_instructions * (1 + p)),
               mode=_FORWARD, cols=plan.cols, colour=col, n_colours=p)
    vals[bad] = np.take(comp.reshape(bad.shape[0], math.prod(shape)),
                        structure.gather("forward"), axis=1)


def redo_vjp(tape, x, u, r):
    """u J again for the points whose adjoint sweep gave an inf or nan in r: J by
    forward sweeps, the products with zero kills (a zero cotangent or entry adds 0)."""
    n_in, n_out = tape.n_inputs, tape.n_outputs
    X = x.reshape(-1, n_in)
    U = u.reshape(-1, n_out)
    R = r.reshape(-1, n_in)
    cols = np.arange(n_in, dtype=np.int32)
    for k in bad_rows(R):
        J = np.empty((n_out, n_in), dtype=np.float64)
        tape.compressed(np.ascontiguousarray(X[k]), None, J, cols, None, 0, _FORWARD)
        uk = U[k][:, None]
        with np.errstate(invalid="ignore", over="ignore"):
            R[k] = np.where((uk == 0.0) | (J == 0.0), 0.0, uk * J).sum(axis=0)
