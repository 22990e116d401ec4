"""References and the agreement check, shared by the runner and its worker processes.

A Reference is what a peer's Jacobian is compared with, in one of three forms chosen by the
Jacobian's size, so that the same check works from a 2 x 2 seed to a 10^5 x 10^5 Broyden
Jacobian or a batch of 10^6 arms without moving gigabytes between processes:

  dense   the whole Jacobian (up to DENSE_LIMIT elements)
  csr     a 2-D scipy.sparse CSR of the (outputs x inputs) Jacobian, for problems with a
          hand-written sparse Jacobian (broyden): every entry is compared, those outside the
          pattern against zero
  rows    for large batches: the Jacobians of SAMPLE_POINTS evenly spaced points of the batch

The first reference of a problem is independent of every peer (hand-written, else the
complex step); once jacext agrees with it, jacext's own result in the same form replaces
it, and every other peer is checked against jacext's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RTOL, ATOL = 1e-9, 1e-12
DENSE_LIMIT = 4_000_000  # elements (32 MB): above this a reference is csr or rows
SAMPLE_POINTS = 1000


class Disagreement(Exception):
    pass


@dataclass
class Reference:
    kind: str  # "dense" | "csr" | "rows"
    shape: tuple  # the full Jacobian's shape
    data: object  # ndarray (dense, rows) or a 2-D scipy.sparse CSR (csr)
    name: str  # where it came from: "hand-written", "complex-step", "jacext", ...
    rows: np.ndarray | None = None  # the batch indices of a "rows" reference


def points(problem):
    """The two points every peer is checked at: the problem's, and a perturbed one."""
    x = problem.input
    alt = x + 0.01 * np.random.default_rng(1).standard_normal(x.shape)
    return [x, alt]


def choose_kind(problem) -> str:
    if int(np.prod(problem.jacobian_shape)) <= DENSE_LIMIT:
        return "dense"
    if problem.batch is not None:
        return "rows"
    if problem.jacobian_csr is not None:
        return "csr"
    return "dense"


def sample_rows(n_points: int) -> np.ndarray:
    return np.unique(np.linspace(0, n_points - 1, SAMPLE_POINTS).round().astype(np.intp))


def complex_step_jacobian(f, x, h=1e-30):
    """J[..., j] = Im f(x + i h e_j) / h: exact to rounding for real-analytic f."""
    columns = []
    for j in range(x.shape[-1]):
        xc = x.astype(complex)
        xc[..., j] += 1j * h
        columns.append(np.imag(f(xc)) / h)
    return np.stack(columns, axis=-1)


def independent(problem, x, kind) -> Reference:
    """A reference that owes nothing to any peer: hand-written, else the complex step."""
    shape = problem.jacobian_shape
    if kind == "csr":
        return Reference("csr", shape, problem.jacobian_csr(x), "hand-written")
    if kind == "rows":
        rows = sample_rows(x.shape[0])
        return Reference("rows", shape, complex_step_jacobian(problem.numpy, x[rows]),
                         "complex-step", rows)
    if problem.jacobian is not None and problem.batch is None:
        return Reference("dense", shape, problem.jacobian(x), "hand-written")
    return Reference("dense", shape, complex_step_jacobian(problem.numpy, x), "complex-step")


def _as_csr(got, m, n):
    import scipy.sparse as sp

    if sp.issparse(got):
        return sp.csr_array(got)
    return sp.csr_array(np.asarray(got).reshape(m, n))


def extract(got, like: Reference, name: str) -> Reference:
    """The peer's result `got` in the form of `like`: what replaces an independent
    reference once the peer (jacext) has agreed with it."""
    if like.kind == "dense":
        data = got.toarray() if hasattr(got, "toarray") else np.array(got)
        return Reference("dense", like.shape, data.reshape(like.shape), name)
    if like.kind == "csr":
        m = int(np.prod(like.shape[:-1]))
        return Reference("csr", like.shape, _as_csr(got, m, like.shape[-1]), name)
    return Reference("rows", like.shape, np.array(np.asarray(got)[like.rows]), name, like.rows)


def _where(err):
    err = np.where(np.isnan(err), np.inf, err)
    return np.unravel_index(np.argmax(err), err.shape)


def check(got, ref: Reference, label: str):
    """Raise Disagreement unless got equals ref within rtol RTOL, atol ATOL, entry by entry."""
    shape, want_shape = tuple(got.shape), tuple(ref.shape)
    if shape != want_shape:
        raise Disagreement(f"{label}: Jacobian shape {shape}, the {ref.name} reference has "
                           f"{tuple(want_shape)}")
    if ref.kind == "csr":
        m = int(np.prod(want_shape[:-1]))
        G = _as_csr(got, m, want_shape[-1])
        R = ref.data
        excess = abs(G - R) - RTOL * abs(R)  # <= ATOL everywhere, nan included as a failure
        excess = excess.tocoo()
        values = excess.data
        bad = ~(values <= ATOL)
        if bad.any():
            k = np.flatnonzero(bad)[0]
            i, j = int(excess.row[k]), int(excess.col[k])
            g = G[[i], :].toarray()[0, j]
            w = R[[i], :].toarray()[0, j]
            raise Disagreement(f"{label} disagrees with the {ref.name} reference (rtol {RTOL}, "
                               f"atol {ATOL}): at row {i}, column {j} got {g:.17g}, "
                               f"want {w:.17g}")
        return
    if hasattr(got, "toarray"):
        got = got.toarray().reshape(want_shape)
    got = np.asarray(got)
    if ref.kind == "rows":
        got = got[ref.rows]
    want = ref.data
    if not np.allclose(got, want, rtol=RTOL, atol=ATOL):
        where = _where(np.abs(got - want))
        index = tuple(int(i) for i in where)
        if ref.kind == "rows":
            index = (int(ref.rows[index[0]]),) + index[1:]
        raise Disagreement(f"{label} disagrees with the {ref.name} reference (rtol {RTOL}, "
                           f"atol {ATOL}): at index {index} got {got[where]:.17g}, "
                           f"want {want[where]:.17g}")
