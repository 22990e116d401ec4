"""The NumPy rules of reductions: sum, prod, max/min, mean, var/std, cumsum/cumprod, diff.

Each reduction is one ``Graph.reduce`` (a balanced tree of one op over the last
axis of an id array) or one ``Graph.scan``; ``sparse_sum`` is the sum that skips
the structural zeros (id -1) the matrix products leave.  ``jacext.numpy_rules``
puts these rules in its tables; ``jacext.linalg_rules`` builds on them.
"""
from __future__ import annotations

import numpy as np

from jacext.ops import OPS
from jacext.trace import Array, _fail, _graph_of, _ids, elementwise


def _norm_axis(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (int, np.integer)):
        axis = (int(axis),)
    out = []
    for a in axis:
        a = int(a)
        if not -ndim <= a < ndim:
            raise np.exceptions.AxisError(a, ndim)
        out.append(a % ndim)
    return tuple(out)


def tree(g, op, ids):
    """Balanced-tree reduction of ids along the last axis (one graph call)."""
    lead = ids.shape[:-1]
    return g.reduce(OPS[op], ids.reshape(-1, ids.shape[-1])).reshape(lead)


def sparse_sum(g, ids):
    """Sum along the last axis where id -1 marks a structural zero (skipped);
    a sum of nothing is the constant 0."""
    lead = ids.shape[:-1]
    k = ids.shape[-1]
    if k == 0:
        return np.full(lead, g.consts(np.zeros(1))[0], dtype=np.int64)
    return g.reduce(_ADD, ids.reshape(-1, k), True).reshape(lead)


_EMPTY_VALUE = {"ADD": 0.0, "MUL": 1.0}
_ADD = OPS["ADD"]


def reduce_tree(op, x, axis=None, keepdims=False, initial=None):
    g = _graph_of((x,))
    if g is None:
        raise TypeError("reduce_tree needs a traced array")
    ids = _ids(g, x)
    axes = _norm_axis(axis, ids.ndim)
    rest = [d for d in range(ids.ndim) if d not in axes]
    moved = np.transpose(ids, rest + list(axes))
    lead = moved.shape[:len(rest)]
    flat = moved.reshape(lead + (int(np.prod([ids.shape[d] for d in axes], dtype=np.int64)),))
    if initial is not None:
        flat = np.concatenate([np.broadcast_to(_ids(g, initial), lead + (1,)), flat], axis=-1)
    if flat.shape[-1] == 0:
        if op not in _EMPTY_VALUE:
            raise ValueError("zero-size array to reduction operation which has no identity")
        res = np.broadcast_to(g.consts(np.array([_EMPTY_VALUE[op]]))[0], lead).copy()
    else:
        res = tree(g, op, flat)
    if keepdims:
        shape = [1 if d in axes else n for d, n in enumerate(ids.shape)]
        res = res.reshape(shape)
    return Array(g, np.asarray(res))


def _no_out(out, name):
    if out is not None:
        _fail(f"{name}(..., out=...) writes into an array while tracing",
              "drop out= and use the returned value")


def _sum(a, axis=None, dtype=None, out=None, keepdims=False, initial=None, where=True):
    _no_out(out, "np.sum")
    if where is not True:
        a = np.where(where, a, 0.0)
    return reduce_tree("ADD", a, axis, keepdims, initial)


def _prod(a, axis=None, dtype=None, out=None, keepdims=False, initial=None, where=True):
    _no_out(out, "np.prod")
    if where is not True:
        a = np.where(where, a, 1.0)
    return reduce_tree("MUL", a, axis, keepdims, initial)


def _masked_extreme(op, a, initial, where):
    if where is not True:
        if initial is None:
            raise ValueError(f"reduction operation '{op.lower()}' does not have an identity, "
                             "so to use a where mask one has to specify 'initial'")
        a = np.where(where, a, initial)
    return a


def _amax(a, axis=None, out=None, keepdims=False, initial=None, where=True):
    _no_out(out, "np.max")
    a = _masked_extreme("MAXIMUM", a, initial, where)
    return reduce_tree("MAXIMUM", a, axis, keepdims, initial)


def _amin(a, axis=None, out=None, keepdims=False, initial=None, where=True):
    _no_out(out, "np.min")
    a = _masked_extreme("MINIMUM", a, initial, where)
    return reduce_tree("MINIMUM", a, axis, keepdims, initial)


def _count(a, axis):
    shape = np.shape(a)
    return int(np.prod([shape[d] for d in _norm_axis(axis, len(shape))], dtype=np.int64))


def _mean(a, axis=None, dtype=None, out=None, keepdims=False, where=True):
    _no_out(out, "np.mean")
    if where is not True:
        if isinstance(where, Array):
            _fail("np.mean(..., where=mask) with a traced mask is not supported",
                  "use np.sum(np.where(mask, x, 0.0)) / np.sum(np.where(mask, 1.0, 0.0))")
        total = _sum(a, axis, keepdims=keepdims, where=where)
        mask = np.asarray(where, dtype=bool)
        count = np.sum(np.broadcast_to(mask, np.broadcast_shapes(mask.shape, np.shape(a))),
                       axis=axis, keepdims=keepdims).astype(np.float64)
        return elementwise("DIV", total, count)
    return elementwise("DIV", _sum(a, axis, keepdims=keepdims), float(_count(a, axis)))


def _var(a, axis=None, dtype=None, out=None, ddof=0, keepdims=False, where=True, mean=None,
         correction=None):
    _no_out(out, "np.var")
    if where is not True:
        _fail("np.var/np.std(..., where=mask) is not supported while tracing",
              "select the elements with a constant index or mask first: np.var(x[mask])")
    if correction is not None:
        ddof = correction
    centred = a - _mean(a, axis, keepdims=True)
    return elementwise("DIV", _sum(np.square(centred), axis, keepdims=keepdims),
                       float(max(_count(a, axis) - ddof, 0)))


def _std(a, axis=None, dtype=None, out=None, ddof=0, keepdims=False, where=True, mean=None,
         correction=None):
    return np.sqrt(_var(a, axis, ddof=ddof, keepdims=keepdims, where=where,
                        correction=correction))


def _cumulative(op, a, axis=None, out=None, dtype=None):
    _no_out(out, "np.cumsum")
    g = _graph_of((a,))
    ids = _ids(g, a)
    if axis is None:
        ids, axis = ids.ravel(), 0
    moved = np.moveaxis(ids, axis, -1)
    if moved.size == 0:
        return Array(g, np.moveaxis(moved.copy(), -1, axis))
    # sequential, as NumPy's own cumsum: the same rounding
    res = g.scan(OPS[op], moved.reshape(-1, moved.shape[-1])).reshape(moved.shape)
    return Array(g, np.moveaxis(res, -1, axis))


def _diff(a, n=1, axis=-1, prepend=None, append=None):
    g = _graph_of((a, prepend, append))
    if prepend is not None or append is not None:
        parts = []
        ids = _ids(g, a)
        shape = list(ids.shape)
        ax = axis % ids.ndim
        for extra in (prepend, append):
            if extra is None:
                parts.append(None)
                continue
            e = _ids(g, extra)
            if e.ndim == 0:
                shape1 = shape.copy()
                shape1[ax] = 1
                e = np.broadcast_to(e, shape1)
            parts.append(e)
        seq = [p for p in (parts[0], ids, parts[1]) if p is not None]
        a = Array(g, np.concatenate(seq, axis=ax))
    for _ in range(n):
        ids = _ids(g, a)
        ax = axis % ids.ndim
        hi = [slice(None)] * ids.ndim
        lo = [slice(None)] * ids.ndim
        hi[ax] = slice(1, None)
        lo[ax] = slice(None, -1)
        a = elementwise("SUB", Array(g, ids[tuple(hi)]), Array(g, ids[tuple(lo)]))
    return a
