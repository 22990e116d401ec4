"""Sparse Jacobians: patterns, colourings, and the batch type.

The pattern is found in C (``src_c/sparsity.c``) by propagating index sets
over the tape; the colourings (greedy, largest-first order) are computed in C
too.  Results are SciPy sparse arrays: SciPy's CSR is what Newton and ODE
solvers take, so there is no type of our own for a single Jacobian.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp


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


def verify_column_colouring(indptr, indices, colour):
    """True when no two columns of one colour share a row (an independent check)."""
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    pairs = np.stack([rows, np.asarray(colour)[indices]], axis=1)
    return len(np.unique(pairs, axis=0)) == len(pairs)
