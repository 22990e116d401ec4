"""Sparse Jacobians: patterns, colourings, cones, CSR assembly, and the batch type.

The pattern is found in C (``src_c/sparsity.c``) by propagating index sets over the tape;
the colourings (greedy distance-2, largest-first order) and the dependency cones are
computed in C too.  A :class:`Structure` holds them for one choice of columns, each made
on first use and kept; the Plans (``jacext/plan.py``) decide which evaluation uses them.

Results are SciPy sparse arrays: SciPy's CSR is what Newton and ODE solvers take, so
there is no type of our own for a single Jacobian.  SciPy's constructor checks its arrays
on every call (8 us at 3,000 nonzeros); a Structure checks its pattern once, in a
template, and each result is a shallow copy of it with its own arrays.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import scipy.sparse as sp

from jacext import _point, _tape, nonfinite
from jacext import plan as _plan


class SparseJacobians:
    """The sparse Jacobians of a batch: one shared pattern, values per point.

    ``pattern`` is a ``scipy.sparse.csr_array`` of bool (m x n); ``values`` has
    shape ``batch + (nnz,)`` and holds, for each point, the entries in the
    pattern's CSR order (``pattern.indices`` within ``pattern.indptr`` rows).
    ``J[k]`` is point k's Jacobian as a ``csr_array``; ``J.toarray()`` is the
    dense ``batch + (m, n)`` array (for small problems and tests).
    """

    __slots__ = ("pattern", "values")

    def __init__(self, pattern, values):
        self.pattern = pattern
        self.values = values

    @property
    def batch_shape(self):
        return self.values.shape[:-1]

    @property
    def shape(self):
        return self.batch_shape + self.pattern.shape

    @property
    def nnz(self):
        return int(self.pattern.nnz)

    def __len__(self):
        return self.values.shape[0]

    def __getitem__(self, index):
        vals = self.values[index]
        if vals.ndim != 1:
            return SparseJacobians(self.pattern, vals)
        return sp.csr_array((vals.copy(), self.pattern.indices, self.pattern.indptr),
                            shape=self.pattern.shape)

    def toarray(self):
        m, n = self.pattern.shape
        rows = np.repeat(np.arange(m), np.diff(self.pattern.indptr))
        out = np.zeros(self.batch_shape + (m, n))
        out[..., rows, self.pattern.indices] = self.values
        return out

    def __repr__(self):
        return (f"<jacext.SparseJacobians: {self.values.shape[:-1]} batch of "
                f"{self.pattern.shape[0]}x{self.pattern.shape[1]}, {self.nnz} nonzeros each>")


def pattern_array(indptr, indices, shape):
    """The bool csr_array of a pattern (entries sorted within rows)."""
    data = np.ones(indices.shape[0], dtype=bool)
    return sp.csr_array((data, indices, indptr), shape=shape)


def largest_first(indices, n_cols):
    """Columns by decreasing count of nonzeros (ties by index)."""
    degree = np.bincount(indices, minlength=n_cols)
    return np.argsort(-degree, kind="stable").astype(np.int32)


def transpose_pattern(indptr, indices, shape):
    """(indptr, indices) of the transposed pattern, through SciPy's CSR -> CSC."""
    t = pattern_array(indptr, indices, shape).T.tocsr()
    t.sort_indices()
    return t.indptr.astype(np.int32), t.indices.astype(np.int32)


def colour(indptr, indices, n_rows, n_cols, max_work):
    """Greedy distance-2 colouring of the columns, largest first; every column its own
    colour where the greedy work (the sum of the squared row lengths) would pass
    ``max_work``, or where one row holds every column (then no two may share one)."""
    lengths = np.diff(indptr).astype(np.int64)
    result = None
    dense_row = bool(n_rows) and bool((lengths == n_cols).any())
    # a row that holds every column makes them all distinct: no greedy pass needed (a dense
    # block's outputs)
    if not dense_row and int(np.dot(lengths, lengths)) <= max_work:
        result = _point.colour_columns(indptr, indices, n_rows, n_cols,
                                       largest_first(indices, n_cols), max_work)
    if result is None:
        result = np.arange(n_cols, dtype=np.int32)
    result.setflags(write=False)
    return result


class Structure:
    """The sparsity of one tape's outputs with respect to the inputs ``cols``: the exact
    pattern and what the sparse evaluations derive from it, each made on first use.

    Each attribute is made once, under ``lock`` (the Planner's), and only read after:
    threads may share a Structure.
    """

    def __init__(self, tape, cols, max_colouring_work, lock):
        self.tape = tape
        self.cols = cols
        self.shape = (tape.n_outputs, int(cols.shape[0]))
        self._max_work = max_colouring_work
        self._lock = lock
        self._pattern = None
        self._colourings = None
        self._cones = None   # (Cones or None, the budget it was asked with)
        self._cache = {}

    @property
    def pattern(self):
        """(indptr, indices), int32, read-only."""
        if self._pattern is None:
            with self._lock:
                if self._pattern is None:
                    # the exact tape's: a pattern that holds at every point, also
                    # where a finite-input tape gives way to it (jacext/finite.py)
                    exact = self.tape.exact
                    self._pattern = (exact if exact is not None else self.tape).pattern(
                        self.cols)
        return self._pattern

    @property
    def nnz(self):
        return int(self.pattern[1].shape[0])

    @property
    def colourings(self):
        """(column colours, p, row colours, q)."""
        if self._colourings is None:
            with self._lock:
                if self._colourings is None:
                    self._colourings = self._colour()
        return self._colourings

    def _colour(self):
        ptr, idx = self.pattern
        n_out, n_cols = self.shape
        tptr, tidx = transpose_pattern(ptr, idx, self.shape)
        col = colour(ptr, idx, n_out, n_cols, self._max_work)
        row = colour(tptr, tidx, n_cols, n_out, self._max_work)
        return (col, int(col.max()) + 1 if col.size else 0,
                row, int(row.max()) + 1 if row.size else 0)

    @property
    def colours_known(self):
        """Whether the colourings have been made (repr shows them then)."""
        return self._colourings is not None

    @property
    def colours(self):
        """(column colours, row colours): the sweeps a compressed Jacobian costs."""
        col, p, row, q = self.colourings
        return p, q

    def cones(self, budget):
        """The tape's per-output dependency cones over this pattern (a ``_tape.Cones``),
        or None when they pass ``budget`` entries; kept once made."""
        hit = self._cones
        if hit is not None and (hit[0] is not None or hit[1] >= budget):
            return hit[0]
        with self._lock:
            hit = self._cones
            if hit is not None and (hit[0] is not None or hit[1] >= budget):
                return hit[0]
            ptr, idx = self.pattern
            cones = self.tape.cones(budget, ptr, self._derived("nz_input"))
            self._cones = (cones, budget)
            return cones

    def _derived(self, what, mode=None):
        key = (what, mode)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        with self._lock:
            hit = self._cache.get(key)
            if hit is None:
                hit = self._cache[key] = self._derive(what, mode)
        return hit

    def _derive(self, what, mode):
        ptr, idx = self.pattern
        rows = np.repeat(np.arange(self.shape[0], dtype=np.intp), np.diff(ptr))
        if what == "rows":
            hit = rows
        elif what == "nz_input":   # the input index of each nonzero
            hit = np.ascontiguousarray(self.cols[idx], dtype=np.int32)
        elif what == "csr":        # the checked template of csr results
            return sp.csr_array((np.zeros(idx.shape[0]), idx, ptr), shape=self.shape)
        elif what == "scatter":    # each nonzero's flat index in the dense result
            hit = rows * self.shape[1] + idx
        elif mode == "forward":    # gather: its flat index in the compressed matrix
            col, p, _, _ = self.colourings
            hit = rows * p + col[idx]
        else:
            _, _, row, _ = self.colourings
            hit = row[rows].astype(np.intp) * self.shape[1] + idx
        hit.setflags(write=False)
        return hit

    def scatter(self):
        """Flat index of each nonzero in the dense (n_out, n_cols) result."""
        return self._derived("scatter")

    def gather(self, mode):
        """Flat index of each nonzero in the compressed matrix of ``mode`` (a valid
        colouring gives each its own place)."""
        return self._derived("gather", mode)

    def compressed_shape(self, mode):
        n_out, n_cols = self.shape
        p, q = self.colours
        return (n_out, p) if mode == "forward" else (q, n_cols)

    def csr(self, vals):
        """A csr_array of these values (CSR order) on the pattern."""
        template = self._derived("csr")
        mat = copy.copy(template)
        mat.data = vals
        mat.indices = template.indices.copy()
        mat.indptr = template.indptr.copy()
        return mat

    def array(self):
        """The pattern as a bool csr_array."""
        ptr, idx = self.pattern
        return pattern_array(ptr, idx, self.shape)


def compressed_sweeps(tape, planner, plan, x, n_points, threads, want_value):
    """(nonzeros, y) of a sparse plan by sweeps over ``tape``: its dependency cones (one
    reverse sweep per output), or its colouring's compressed sweeps, at one point
    (n_points -1: x a row) or at the n_points rows of x.  Entries that met an inf or nan
    in a reverse sweep are redone by forward sweeps (``jacext.nonfinite``)."""
    structure = plan.structure
    n_out, n_cols = structure.shape
    y = (np.empty((n_points, n_out) if n_points >= 0 else n_out, dtype=np.float64)
         if want_value else None)
    if plan.compressed == "cones":
        cones = structure.cones(planner.best(plan.argnums)[1])
        vals = np.empty((n_points, structure.nnz) if n_points >= 0 else structure.nnz,
                        dtype=np.float64)
        if n_points >= 0:
            tape.batch("cones", x, y, vals,
                       _plan.n_threads(threads, n_points, 3 * tape.work), cones=cones)
        else:
            tape.cones_jacobian(x, y, cones, vals)
        if not _tape.all_finite(vals):
            nonfinite.redo_nonzeros(tape, plan, x, n_points, vals, threads)
        return vals, y
    col, p, row, q = structure.colourings
    forward = plan.compressed == "forward"
    colour, n_colours = (col, p) if forward else (row, q)
    shape = structure.compressed_shape(plan.compressed)
    comp = np.empty((n_points,) + shape if n_points >= 0 else shape, dtype=np.float64)
    mode = _tape.MODES[plan.compressed]
    if n_points >= 0:
        tape.batch("compressed", x, y, comp,
                   _plan.n_threads(threads, n_points, tape.work * (1 + n_colours)),
                   mode=mode, cols=plan.cols, colour=colour, n_colours=n_colours)
        vals = np.take(comp.reshape(n_points, math.prod(shape)),
                       structure.gather(plan.compressed), axis=1)
    else:
        tape.compressed(x, y, comp, plan.cols, colour, n_colours, mode)
        vals = np.take(comp.reshape(-1), structure.gather(plan.compressed))
    if not forward and not _tape.all_finite(vals):
        nonfinite.redo_nonzeros(tape, plan, x, n_points, vals, threads)
    return vals, y
