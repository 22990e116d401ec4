"""Selections by value: the NumPy functions whose result's shape depends on values.

``np.nonzero``, ``np.flatnonzero``, ``np.argwhere``, ``np.where(condition)``,
``np.count_nonzero`` and ``np.extract`` of a traced array give indices or counts, not
numbers with derivatives.  Guarded tracing (``jacext.guarded``) takes each element's
truth (``x != 0``, as NumPy tests it) at the trace point, each a truth guard, and runs
NumPy's own function on those truths: the tape is exact wherever every element keeps
its truth, and a point that changes one is traced again.  ``x[x > 0]`` (a traced mask
as an index) is ``Array.__getitem__``'s part of the same rule (``jacext.trace``).

``np.any`` and ``np.all`` stay traced (a max or min of the truths, one node): ``if
np.any(x < 0):`` then guards that one node, not every element.
"""
from __future__ import annotations

import numpy as np

from jacext.reduction_rules import _no_out, reduce_tree
from jacext.trace import Array, _fail, _graph_of, _ids, elementwise


def _refuse(name):
    def refuse():
        _fail(f"{name} of a traced array gives indices or counts that depend on values not "
              f"known while tracing, and this trace has no point (control_flow=\"error\")",
              "compile with the default control_flow=\"guard\", which takes them at each "
              "point (guarded), or keep the shape fixed with np.where(mask, a, b)")
    return refuse


def truths(a, name):
    """a's truth values (a bool ndarray): a traced array's at the trace point, guarded."""
    g = _graph_of((a,))
    if g is None:
        return np.asarray(a) != 0
    t = a if isinstance(a, Array) else Array(g, np.asarray(_ids(g, a)))
    return t._truths(_refuse(name))


def _nonzero(a):
    return np.nonzero(truths(a, "np.nonzero"))


def _flatnonzero(a):
    return np.flatnonzero(truths(a, "np.flatnonzero"))


def _argwhere(a):
    return np.argwhere(truths(a, "np.argwhere"))


def _count_nonzero(a, axis=None, *, keepdims=False):
    return np.count_nonzero(truths(a, "np.count_nonzero"), axis=axis, keepdims=keepdims)


def _extract(condition, arr):
    keep = truths(condition, "np.extract").reshape(-1)
    g = _graph_of((arr,))
    if g is None:
        return np.ravel(arr)[keep]
    return Array(g, np.ravel(_ids(g, arr))[keep])


def _truth(a):
    return elementwise("NOT_EQUAL", a, 0.0)


def _any(a, axis=None, out=None, keepdims=False, *, where=True):
    _no_out(out, "np.any")
    return _reduce_truths("MAXIMUM", 0.0, a, axis, keepdims, where)


def _all(a, axis=None, out=None, keepdims=False, *, where=True):
    _no_out(out, "np.all")
    return _reduce_truths("MINIMUM", 1.0, a, axis, keepdims, where)


def _reduce_truths(op, identity, a, axis, keepdims, where):
    """np.any / np.all: the max / min of the truths; the identity where nothing is
    reduced (np.any of nothing is False), as NumPy."""
    if where is not True:
        a = np.where(where, a, identity)
    shape = np.shape(a)
    axes = range(len(shape)) if axis is None else np.atleast_1d(axis).tolist()
    empty = any(shape[d] == 0 for d in axes)
    return reduce_tree(op, _truth(a), axis, keepdims, identity if empty else None)


def where_indices(condition):
    """np.where(condition) with one argument: np.nonzero's indices."""
    return np.nonzero(truths(condition, "np.where(condition)"))


FUNCTIONS = {
    np.nonzero: _nonzero, np.flatnonzero: _flatnonzero, np.argwhere: _argwhere,
    np.count_nonzero: _count_nonzero, np.extract: _extract, np.any: _any, np.all: _all,
}
