"""The NumPy rules: what each NumPy ufunc and array function becomes in the graph.

``jacext.trace.Array`` hands NumPy's calls here: ufuncs to ``_dispatch_ufunc``,
array functions to the table ``FUNCTIONS``.  Each rule lowers a call to bulk
graph operations over whole id arrays:

* ``UFUNCS`` maps a NumPy ufunc to an op name of the C op table (one
  ``Graph.apply``, through ``elementwise``) or to a lowering function;
  ``SCIPY_UFUNCS`` does the same for SciPy's, by name;
* reductions are one ``Graph.reduce`` (a balanced tree), cumsum/cumprod one
  ``Graph.scan``; matmul, dot, einsum and kin sum products that skip structural
  zeros (``Graph.mul_nonzero``, ``sparse_sum``);
* structural functions (stack, concatenate, flip, take, diag ...) are NumPy's
  own functions applied to the id arrays: no new nodes.

It also gives Array the ufunc-named methods (``.sin()`` ...) that NumPy's object
loops call, and lists what traces: :func:`supported`.
"""
from __future__ import annotations

import sys

import numpy as np

from jacext.ops import OPS
from jacext.trace import Array, _fail, _graph_of, _ids, elementwise

# ---------------------------------------------------------------- ufuncs --

# lowerings of the ufuncs that are no single op: logical ops on truth values (x != 0),
# the tests on nan and inf, divmod, and the scalings
def _identity(x): return x
def _scaled(factor): return lambda x: elementwise("MUL", x, factor)
def _truth(a): return np.not_equal(a, 0.0)
def _logical_and(a, b): return elementwise("MUL", _truth(a), _truth(b))
def _logical_or(a, b): return elementwise("MAXIMUM", _truth(a), _truth(b))
def _logical_xor(a, b): return elementwise("NOT_EQUAL", _truth(a), _truth(b))
def _logical_not(a): return elementwise("EQUAL", a, 0.0)
def _divmod(a, b): return elementwise("FLOOR_DIVIDE", a, b), elementwise("MOD", a, b)
def _isnan(a): return elementwise("NOT_EQUAL", a, a)
def _isinf(a): return elementwise("EQUAL", elementwise("ABS", a), np.inf)
def _isfinite(a): return elementwise("LESS", elementwise("ABS", a), np.inf)


#: NumPy ufunc -> op name of the C table, or a lowering function.
UFUNCS = {
    np.add: "ADD", np.subtract: "SUB", np.multiply: "MUL", np.true_divide: "DIV",
    np.power: "POW", np.float_power: "POW", np.remainder: "MOD", np.fmod: "FMOD",
    np.floor_divide: "FLOOR_DIVIDE",
    np.arctan2: "ATAN2", np.hypot: "HYPOT", np.maximum: "MAXIMUM", np.minimum: "MINIMUM",
    np.fmax: "FMAX", np.fmin: "FMIN", np.logaddexp: "LOGADDEXP",
    np.less: "LESS", np.less_equal: "LESS_EQUAL", np.greater: "GREATER",
    np.greater_equal: "GREATER_EQUAL", np.equal: "EQUAL", np.not_equal: "NOT_EQUAL",
    np.negative: "NEG", np.absolute: "ABS", np.fabs: "ABS", np.sign: "SIGN",
    np.square: "SQUARE", np.sqrt: "SQRT", np.cbrt: "CBRT", np.reciprocal: "RECIPROCAL",
    np.exp: "EXP", np.exp2: "EXP2", np.expm1: "EXPM1", np.log: "LOG", np.log2: "LOG2",
    np.log10: "LOG10", np.log1p: "LOG1P", np.sin: "SIN", np.cos: "COS", np.tan: "TAN",
    np.arcsin: "ARCSIN", np.arccos: "ARCCOS", np.arctan: "ARCTAN", np.sinh: "SINH",
    np.cosh: "COSH", np.tanh: "TANH", np.arcsinh: "ARCSINH", np.arccosh: "ARCCOSH",
    np.arctanh: "ARCTANH", np.floor: "FLOOR", np.ceil: "CEIL", np.rint: "RINT",
    np.trunc: "TRUNC", np.heaviside: "HEAVISIDE",
    np.positive: _identity, np.conjugate: _identity,
    np.deg2rad: _scaled(np.pi / 180.0), np.radians: _scaled(np.pi / 180.0),
    np.rad2deg: _scaled(180.0 / np.pi), np.degrees: _scaled(180.0 / np.pi),
    np.logical_and: _logical_and, np.logical_or: _logical_or,
    np.logical_xor: _logical_xor, np.logical_not: _logical_not,
    # on what a trace holds as booleans (comparisons, constant masks) the bitwise
    # ufuncs are the logical ones: `mask & (x > 0)` with a NumPy bool mask
    np.bitwise_and: _logical_and, np.bitwise_or: _logical_or,
    np.bitwise_xor: _logical_xor, np.invert: _logical_not,
    np.isnan: _isnan, np.isinf: _isinf, np.isfinite: _isfinite, np.divmod: _divmod,
}

#: SciPy ufuncs, by scipy.special name (looked up lazily: importing SciPy is slow)
SCIPY_UFUNCS = {"erf": "ERF", "erfc": "ERFC", "expit": "EXPIT", "logit": "LOGIT"}

_REDUCE_OPS = {np.add: "ADD", np.multiply: "MUL", np.maximum: "MAXIMUM",
               np.minimum: "MINIMUM", np.fmax: "FMAX", np.fmin: "FMIN"}


def _ufunc_rule(ufunc):
    rule = UFUNCS.get(ufunc)
    if rule is None and ufunc.__name__ in SCIPY_UFUNCS:
        special = sys.modules.get("scipy.special")
        if special is not None and getattr(special, ufunc.__name__, None) is ufunc:
            rule = SCIPY_UFUNCS[ufunc.__name__]
    return rule


def _dispatch_ufunc(ufunc, method, inputs, kwargs):
    if not kwargs and method == "__call__":     # the common case, first
        rule = UFUNCS.get(ufunc)
        if type(rule) is str:
            return elementwise(rule, *inputs)
    out = kwargs.pop("out", None)
    if out is not None:
        outs = out if isinstance(out, tuple) else (out,)
        if len(outs) != 1 or type(outs[0]) is not Array:
            _fail(f"a traced value was written into a NumPy array (np.{ufunc.__name__}"
                  f"(..., out=z), or an in-place operator such as z += x on an array "
                  f"made by np.zeros/np.empty)",
                  "use the returned value, or start from np.zeros_like(x) (a traced "
                  "array) and assign into that")
        result = _dispatch_ufunc(ufunc, method, inputs, kwargs)
        outs[0][...] = result
        return outs[0]
    if kwargs.pop("where", True) is not True:
        _fail(f"np.{ufunc.__name__}(..., where=...) is not supported while tracing",
              "use np.where(condition, np.f(x), other) instead")
    kwargs.pop("dtype", None)
    kwargs.pop("casting", None)
    kwargs.pop("subok", None)
    kwargs.pop("order", None)
    if method == "__call__":
        if kwargs:
            _fail(f"np.{ufunc.__name__} got unsupported keywords {sorted(kwargs)}",
                  "call it with array arguments only")
        rule = _ufunc_rule(ufunc)
        if rule is None:
            _fail(f"the ufunc {ufunc.__name__} is not supported on traced arrays",
                  "express it with supported functions (see jacext.trace.supported())")
        if type(rule) is str:
            return elementwise(rule, *inputs)
        return rule(*inputs)
    if method == "reduce" and ufunc in _REDUCE_OPS:
        axis = kwargs.pop("axis", 0)
        keepdims = kwargs.pop("keepdims", False)
        initial = kwargs.pop("initial", None)
        if not kwargs:
            return reduce_tree(_REDUCE_OPS[ufunc], inputs[0], axis, keepdims, initial)
    if method == "accumulate" and ufunc in (np.add, np.multiply):
        axis = kwargs.pop("axis", 0)
        if not kwargs:
            return _cumulative(_REDUCE_OPS[ufunc], inputs[0], axis, None)
    if method == "outer" and _ufunc_rule(ufunc) is not None:
        a, b = inputs
        g = _graph_of(inputs)
        ia, ib = _ids(g, a), _ids(g, b)
        ia = ia.reshape(ia.shape + (1,) * ib.ndim)
        return _dispatch_ufunc(ufunc, "__call__", (Array(g, ia), Array(g, ib)), {})
    _fail(f"np.{ufunc.__name__}.{method} is not supported on traced arrays",
          "use the plain call or a supported reduction (np.sum, np.prod, np.max, np.cumsum)")


# ------------------------------------------------------------ reductions --

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


def _clip(a, a_min=None, a_max=None, out=None, *, min=None, max=None, **kw):
    _no_out(out, "np.clip")
    lo = a_min if a_min is not None else min
    hi = a_max if a_max is not None else max
    if lo is not None:
        a = elementwise("MAXIMUM", a, lo)
    if hi is not None:
        a = elementwise("MINIMUM", a, hi)
    return a


def _round(a, decimals=0, out=None):
    _no_out(out, "np.round")
    if decimals == 0:
        return elementwise("RINT", a)
    # as NumPy: scale, round half to even, scale back
    if decimals > 0:
        f = 10.0 ** decimals
        return elementwise("DIV", elementwise("RINT", elementwise("MUL", a, f)), f)
    f = 10.0 ** -decimals
    return elementwise("MUL", elementwise("RINT", elementwise("DIV", a, f)), f)


def _where(condition, x=None, y=None):
    if x is None or y is None:
        _fail("np.where(condition) with one argument returns indices that depend on values",
              "use the three-argument form np.where(condition, a, b)")
    g = _graph_of((condition, x, y))
    if not isinstance(condition, Array) and _graph_of((condition,)) is None:
        # a constant condition picks ids: no node at all
        c = np.asarray(condition).astype(bool)
        return Array(g, np.where(c, _ids(g, x), _ids(g, y)))
    return elementwise("SELECT", condition, x, y, graph=g)


# ------------------------------------------------------- linear algebra --

def _products(g, ia, ib):
    """Elementwise products of broadcast id arrays, -1 marking a structural zero.

    Zero entries of constant matrices are skipped structurally (DESIGN.md): a
    factor that is the constant 0.0, or an id already -1, gives -1 and no node.
    """
    if ia.shape != ib.shape:
        ia, ib = np.broadcast_arrays(ia, ib)
    shape = ia.shape
    return g.mul_nonzero(ia.ravel(), ib.ravel()).reshape(shape)


def _lin(g, v):
    """An operand of a matrix product: a constant as a float64 array (it may become a
    block's matrix, ``_block_matmul``), anything traced as node ids."""
    if _graph_of((v,)) is None and not isinstance(v, Array):
        arr = np.asarray(v)
        if arr.dtype.kind in "biuf":
            return arr.astype(np.float64, copy=False)
    return _ids(g, v)


def _as_ids(g, v):
    """Node ids of a ``_lin`` operand."""
    if v.dtype.kind == "f":
        return g.consts(v.ravel()).reshape(v.shape)
    return v


def _block_matmul(g, ia, ib):
    """ia @ ib as block instructions where one operand is a constant (float64) matrix
    worth it (plan.use_block); None otherwise.  The constant on the left: each column
    of the other operand is one block W x; on the right: each row x is one block W^T x.
    A block is m row nodes (``Graph.block``), whatever the matrix's size."""
    from jacext import plan

    if (ia.dtype.kind == "f") == (ib.dtype.kind == "f") or ia.ndim == 0 or ib.ndim == 0:
        return None
    a1, b1 = ia.ndim == 1, ib.ndim == 1
    A = ia[None, :] if a1 else ia
    Bm = ib[:, None] if b1 else ib
    if A.shape[-1] != Bm.shape[-2] or A.shape[-1] == 0:
        return None
    left = A.dtype.kind == "f"
    C = A if left else Bm
    if C.shape[-2] == 0 or C.shape[-1] == 0:
        return None
    n_mats = int(np.prod(C.shape[:-2], dtype=np.int64))
    if not plan.use_block(C.shape[-2] * C.shape[-1], np.count_nonzero(C) / max(n_mats, 1)):
        return None
    batch = np.broadcast_shapes(A.shape[:-2], Bm.shape[:-2])
    A = np.broadcast_to(A, batch + A.shape[-2:])
    Bm = np.broadcast_to(Bm, batch + Bm.shape[-2:])
    m, n = A.shape[-2], Bm.shape[-1]
    out = np.empty(batch + (m, n), dtype=np.int64)
    weights = {}
    lead = C.shape[:-2]
    for idx in np.ndindex(*batch):
        # one matrix per distinct constant (a broadcast one is registered once)
        cidx = tuple(0 if d == 1 else i for i, d in zip(idx[len(batch) - len(lead):], lead))
        if cidx not in weights:
            weights[cidx] = g.weight(C[cidx] if left else C[cidx].T)
        w = weights[cidx]
        if left:
            ids = Bm[idx]
            for j in range(n):
                out[idx + (slice(None), j)] = g.block(w, ids[:, j])
        else:
            ids = A[idx]
            for i in range(m):
                out[idx + (i,)] = g.block(w, ids[i])
    if a1:
        out = out[..., 0, :]
    if b1:
        out = out[..., 0]
    return out


def _matmul_ids(g, ia, ib):
    res = _block_matmul(g, ia, ib)
    if res is not None:
        return res
    ia, ib = _as_ids(g, ia), _as_ids(g, ib)
    a1, b1 = ia.ndim == 1, ib.ndim == 1
    if ia.ndim == 0 or ib.ndim == 0:
        raise ValueError("matmul: Input operand does not have enough dimensions")
    if a1:
        ia = ia[None, :]
    if b1:
        ib = ib[:, None]
    if ia.shape[-1] != ib.shape[-2]:
        raise ValueError(f"matmul: mismatch in core dimension: {ia.shape[-1]} (a) vs "
                         f"{ib.shape[-2]} (b)")
    lhs = ia[..., :, None, :]                       # (..., m, 1, k)
    rhs = np.swapaxes(ib, -1, -2)[..., None, :, :]  # (..., 1, n, k)
    res = sparse_sum(g, _products(g, lhs, rhs))
    if a1:
        res = res[..., 0, :]
    if b1:
        res = res[..., 0]
    return res


def _matmul(a, b):
    g = _graph_of((a, b))
    return Array(g, np.asarray(_matmul_ids(g, _lin(g, a), _lin(g, b))))


def _dot(a, b, out=None):
    _no_out(out, "np.dot")
    g = _graph_of((a, b))
    ia, ib = _lin(g, a), _lin(g, b)
    if ia.ndim == 0 or ib.ndim == 0:
        return elementwise("MUL", a, b)
    if ib.ndim <= 2:
        return Array(g, np.asarray(_matmul_ids(g, ia, ib)))
    return _tensordot(a, b, axes=([ia.ndim - 1], [ib.ndim - 2]))


def _vdot(a, b):
    g = _graph_of((a, b))
    return Array(g, np.asarray(_matmul_ids(g, _lin(g, a).ravel(), _lin(g, b).ravel())))


def _inner(a, b):
    g = _graph_of((a, b))
    ia, ib = _lin(g, a), _lin(g, b)
    if ia.ndim == 0 or ib.ndim == 0:
        return elementwise("MUL", a, b)
    return _tensordot(a, b, axes=([ia.ndim - 1], [ib.ndim - 1]))


def _outer(a, b, out=None):
    _no_out(out, "np.outer")
    g = _graph_of((a, b))
    ia, ib = _ids(g, a).ravel(), _ids(g, b).ravel()
    return elementwise("MUL", Array(g, ia[:, None]), Array(g, ib[None, :]))


def _tensordot(a, b, axes=2):
    g = _graph_of((a, b))
    ia, ib = _lin(g, a), _lin(g, b)
    if isinstance(axes, (int, np.integer)):
        ax_a = list(range(ia.ndim - axes, ia.ndim))
        ax_b = list(range(axes))
    else:
        ax_a, ax_b = axes
        ax_a = [ax_a] if isinstance(ax_a, (int, np.integer)) else list(ax_a)
        ax_b = [ax_b] if isinstance(ax_b, (int, np.integer)) else list(ax_b)
    ax_a = [k % ia.ndim for k in ax_a]
    ax_b = [k % ib.ndim for k in ax_b]
    for p, q in zip(ax_a, ax_b):
        if ia.shape[p] != ib.shape[q]:
            raise ValueError("shape-mismatch for sum")
    free_a = [k for k in range(ia.ndim) if k not in ax_a]
    free_b = [k for k in range(ib.ndim) if k not in ax_b]
    k = int(np.prod([ia.shape[p] for p in ax_a], dtype=np.int64))
    ma = np.transpose(ia, free_a + ax_a).reshape(-1, k)
    mb = np.transpose(ib, ax_b + free_b).reshape(k, -1)
    res = _matmul_ids(g, ma, mb)
    return Array(g, res.reshape([ia.shape[p] for p in free_a] + [ib.shape[q] for q in free_b]))


def _einsum(subscripts, *operands, out=None, optimize=False, **kw):
    _no_out(out, "np.einsum")
    if not isinstance(subscripts, str):
        _fail("np.einsum in the interleaved (operand, sublist) form is not supported",
              "use the subscripts-string form, e.g. np.einsum('ij,j->i', A, x)")
    g = _graph_of(operands)
    spec = subscripts.replace(" ", "")
    if "->" in spec:
        ins, out_spec = spec.split("->")
    else:
        ins = spec
        letters = ins.replace(",", "")
        out_spec = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    in_specs = ins.split(",")
    if len(in_specs) != len(operands):
        raise ValueError("einsum: more operands than subscripts, or fewer")
    if "." in spec:
        _fail("np.einsum with '...' is not supported while tracing",
              "spell the axes out, e.g. 'bij,bj->bi'")
    res = _einsum_as_tensordot(g, in_specs, out_spec, operands)
    if res is not None:
        return res
    sizes = {}
    views = []
    for sp, op in zip(in_specs, operands):
        ids = _ids(g, op)
        if ids.ndim != len(sp):
            raise ValueError(f"einsum: operand has {ids.ndim} dims, subscripts '{sp}'")
        # repeated letters in one operand: take the diagonal (a view, no nodes)
        uniq = "".join(dict.fromkeys(sp))
        if uniq != sp:
            ids = np.einsum(f"{sp}->{uniq}", ids)
        for c, n in zip(uniq, ids.shape):
            if sizes.setdefault(c, n) != n and n != 1 and sizes[c] != 1:
                raise ValueError(f"einsum: size of '{c}' differs between operands")
            sizes[c] = max(sizes[c], n)
        views.append((uniq, ids))
    for c in out_spec:
        if c not in sizes:
            raise ValueError(f"einsum: output subscript '{c}' appears in no operand")
    # Contract left to right, two operands at a time, summing a letter out as soon
    # as no later operand and not the output needs it: 'ij,jk,kl->il' costs two
    # matrix products, not one product over all four letters.
    spec, ids = views[0]
    for k in range(1, len(views)):
        later = set(out_spec).union(*(v[0] for v in views[k + 1:]))
        spec, ids = _contract(g, spec, ids, later, sizes, *views[k])
    spec, ids = _contract(g, spec, ids, set(out_spec), sizes)
    return Array(g, np.asarray(np.transpose(ids, [spec.index(c) for c in out_spec])))


def _einsum_as_tensordot(g, in_specs, out_spec, operands):
    """A two-operand einsum that is a tensordot (every letter in the output or in both
    operands, not both; no repeated letter) with one constant operand: the tensordot, so
    that its constant matrix may become blocks.  None otherwise."""
    if len(operands) != 2:
        return None
    (s1, s2), (x1, x2) = in_specs, operands
    if sum(_graph_of((v,)) is None and not isinstance(v, Array) for v in operands) != 1:
        return None
    if (len(set(s1)) != len(s1) or len(set(s2)) != len(s2) or len(set(out_spec)) !=
            len(out_spec) or np.ndim(x1) != len(s1) or np.ndim(x2) != len(s2)):
        return None
    both = [c for c in s1 if c in s2]
    if any(c in out_spec for c in both):
        return None
    if any(c not in out_spec for c in s1 + s2 if c not in both):
        return None
    res = _tensordot(x1, x2, axes=([s1.index(c) for c in both], [s2.index(c) for c in both]))
    got = [c for c in s1 if c not in both] + [c for c in s2 if c not in both]
    return Array(g, np.transpose(res.ids, [got.index(c) for c in out_spec]))


def _contract(g, s1, a1, keep, sizes, s2="", a2=None):
    """The sum of the product a1 * a2 over the letters of s1 and s2 that ``keep``
    lacks; returns (letters, ids).  Without a2, a sum over a1 alone."""
    letters = "".join(dict.fromkeys(s1 + s2))
    kept = [c for c in letters if c in keep]
    summed = [c for c in letters if c not in keep]
    order = kept + summed
    full = tuple(sizes[c] for c in order)

    def aligned(spec, ids):
        t = np.transpose(ids, [spec.index(c) for c in order if c in spec])
        it = iter(t.shape)
        return t.reshape([next(it) if c in spec else 1 for c in order])

    prod = aligned(s1, a1)
    if a2 is not None:
        prod = _products(g, prod, aligned(s2, a2))
    if not summed:
        return "".join(kept), np.broadcast_to(prod, full)
    prod = np.broadcast_to(prod, full).reshape(full[:len(kept)] + (-1,))
    return "".join(kept), sparse_sum(g, prod)


def _cross(a, b, axisa=-1, axisb=-1, axisc=-1, axis=None):
    g = _graph_of((a, b))
    if axis is not None:
        axisa = axisb = axisc = axis
    ia = np.moveaxis(_ids(g, a), axisa, -1)
    ib = np.moveaxis(_ids(g, b), axisb, -1)
    if ia.shape[-1] not in (2, 3) or ib.shape[-1] not in (2, 3):
        raise ValueError("incompatible dimensions for cross product (dimension must be 2 or 3)")
    # a 2-vector's missing z is None: its products are left out, as NumPy does,
    # so no x * 0 node and NumPy's signed zeros
    A = [Array(g, ia[..., k]) for k in range(ia.shape[-1])] + [None]
    B = [Array(g, ib[..., k]) for k in range(ib.shape[-1])] + [None]

    def mul(p, q):
        return None if p is None or q is None else p * q

    def sub(p, q):
        return p if q is None else (-q if p is None else p - q)

    c2 = sub(mul(A[0], B[1]), mul(A[1], B[0]))
    if ia.shape[-1] == 2 and ib.shape[-1] == 2:
        return c2
    c = [sub(mul(A[1], B[2]), mul(A[2], B[1])), sub(mul(A[2], B[0]), mul(A[0], B[2])), c2]
    res = np.stack(np.broadcast_arrays(*[ci.ids for ci in c]), axis=-1)
    return Array(g, np.moveaxis(res, -1, axisc))


def _trace(a, offset=0, axis1=0, axis2=1, dtype=None, out=None):
    _no_out(out, "np.trace")
    g = _graph_of((a,))
    d = np.diagonal(_ids(g, a), offset, axis1, axis2)
    return reduce_tree("ADD", Array(g, d), -1)


def _norm(x, ord=None, axis=None, keepdims=False):
    g = _graph_of((x,))
    ids = _ids(g, x)
    if axis is None and ord is None:
        return np.sqrt(_sum(np.square(x), None, keepdims=keepdims)) if not keepdims else \
            np.sqrt(_sum(np.square(x), tuple(range(ids.ndim)), keepdims=True))
    if axis is None:
        axis = tuple(range(ids.ndim))
    axes = _norm_axis(axis, ids.ndim)
    if len(axes) == 1:
        if ord is None or ord == 2:
            return np.sqrt(_sum(np.square(x), axes, keepdims=keepdims))
        if ord == 1:
            return _sum(np.abs(x), axes, keepdims=keepdims)
        if ord == np.inf:
            return _amax(np.abs(x), axes, keepdims=keepdims)
        if ord == -np.inf:
            return _amin(np.abs(x), axes, keepdims=keepdims)
        if ord == 0:
            return _sum(np.not_equal(x, 0.0), axes, keepdims=keepdims)
        p = float(ord)
        return _sum(np.abs(x) ** p, axes, keepdims=keepdims) ** (1.0 / p)
    if len(axes) == 2:
        r, c = axes
        if ord is None or ord == "fro":
            return np.sqrt(_sum(np.square(x), axes, keepdims=keepdims))
        if ord == 1:
            return _amax(_sum(np.abs(x), r, keepdims=True), axes, keepdims=keepdims)
        if ord == np.inf:
            return _amax(_sum(np.abs(x), c, keepdims=True), axes, keepdims=keepdims)
        if ord == -1:
            return _amin(_sum(np.abs(x), r, keepdims=True), axes, keepdims=keepdims)
        if ord == -np.inf:
            return _amin(_sum(np.abs(x), c, keepdims=True), axes, keepdims=keepdims)
    _fail(f"np.linalg.norm with ord={ord!r} on these axes is not supported while tracing",
          "use ord=None/'fro', 1, 2 (vectors), inf or -inf")


def _det(a):
    g = _graph_of((a,))
    ids = _ids(g, a)
    n = ids.shape[-1]
    if ids.ndim < 2 or ids.shape[-2] != n:
        raise np.linalg.LinAlgError("Last 2 dimensions of the array must be square")
    m = [[Array(g, ids[..., i, j]) for j in range(n)] for i in range(n)]
    if n == 1:
        return m[0][0]
    if n == 2:
        return m[0][0] * m[1][1] - m[0][1] * m[1][0]
    if n == 3:
        return (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
                - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
                + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]))
    _fail("np.linalg.det of matrices larger than 3x3 is not supported while tracing",
          "use a factorisation written in NumPy operations")


def _const_array(g, value, shape):
    return Array(g, np.broadcast_to(g.consts(np.array([value], dtype=np.float64))[0],
                                    shape).copy())


def _like(value):
    def make(a, dtype=None, order="K", subok=True, shape=None, **kw):
        g = _graph_of((a,))
        s = np.shape(a) if shape is None else (tuple(shape) if np.ndim(shape) else (int(shape),))
        return _const_array(g, value, s)
    return make


def _full_like(a, fill_value, dtype=None, order="K", subok=True, shape=None, **kw):
    g = _graph_of((a, fill_value))
    s = np.shape(a) if shape is None else tuple(np.atleast_1d(shape))
    if isinstance(fill_value, Array):
        return Array(g, np.broadcast_to(fill_value.ids, s).copy())
    return _const_array(g, float(fill_value), s)


def _copyto(dst, src, casting="same_kind", where=True):
    if type(dst) is not Array:
        _fail("a traced value was written into a NumPy array (np.copyto, or "
              "np.full/np.full_like with a traced fill value and a NumPy array's shape)",
              "make the array from the traced value: np.full_like(x, v) with a traced x, "
              "np.broadcast_to(v, shape), or start from np.zeros_like(x) and assign into that")
    if where is True:
        dst[...] = src
    else:
        dst[...] = np.where(where, src, dst)


def _polyval(p, x):
    g = _graph_of((p, x))
    coeffs = list(p) if not isinstance(p, Array) else [Array(g, i) for i in p.ids]
    y = elementwise("MUL", x, 0.0) if not coeffs else None
    for c in coeffs:
        y = c if y is None else y * x + c
    if not isinstance(y, Array):
        y = _full_like(x, y)
    return y


# ----------------------------------------------- structural array functions --

def _structural(func, arrays="first", zero_fill=False):
    """A NumPy function applied to the id arrays themselves: no new nodes.

    arrays: which arguments hold arrays: "first", "seq" (a sequence first),
    "all" (every positional), "two" (the first two), "insert" (the first and
    the third, np.insert's arr and values).  zero_fill: the function fills new
    places with 0 (np.diag of a vector, np.triu): shift ids so that the fill
    lands on the constant-zero node.  Any other argument (indices, counts,
    shapes) must be a constant.
    """
    name = func.__name__
    positions = {"first": (0,), "two": (0, 1), "insert": (0, 2), "seq": (0,)}.get(arrays)

    def bad_argument():
        _fail(f"a traced value was used as an index, count or shape argument of "
              f"np.{name} (what it selects would depend on values not known while "
              f"tracing)",
              "pass constants there (Python ints, NumPy integer arrays); for a "
              "value-dependent choice use np.where(condition, a, b)")

    def handler(*args, **kwargs):
        g = _graph_of(args)
        if g is None:   # (not `or`: a Graph's truth is its length, an empty one is false)
            g = _graph_of(tuple(kwargs.values()))
        args = list(args)
        idx = range(len(args)) if positions is None else positions
        for k in idx:
            if k < len(args):
                if arrays == "seq":
                    args[k] = [_ids(g, e) for e in args[k]]
                else:
                    args[k] = _ids(g, args[k])
        if arrays in ("two", "insert") and "values" in kwargs:
            kwargs["values"] = _ids(g, kwargs["values"])
        # every other argument is an index, count, axis or shape: a constant
        if positions is not None and len(args) > 1:
            if _graph_of([a for k, a in enumerate(args) if k not in positions]) is not None:
                bad_argument()
        if kwargs and _graph_of([v for k, v in kwargs.items() if k != "values"]) is not None:
            bad_argument()
        if zero_fill:
            z = g.const(0.0)
            args[0] = args[0] - z
            res = func(*args, **kwargs) + z
        else:
            res = func(*args, **kwargs)
        return _wrap_result(g, res)
    handler.__name__ = name
    return handler


def _nested_ids(g, seq):
    return [(_nested_ids(g, e) if isinstance(e, (list, tuple)) else _ids(g, e)) for e in seq]


def _wrap_result(g, res):
    if isinstance(res, np.ndarray):
        return Array(g, res)
    if isinstance(res, (list, tuple)):
        return type(res)(_wrap_result(g, r) for r in res)
    return Array(g, np.asarray(res))


def _block(arrays):
    g = _graph_of((arrays,))
    return Array(g, np.block(_nested_ids(g, arrays) if isinstance(arrays, (list, tuple))
                             else _ids(g, arrays)))


def _shape(a):
    return a.shape if isinstance(a, Array) else np.shape(np.asarray(a))


FUNCTIONS = {
    np.sum: _sum, np.prod: _prod, np.mean: _mean, np.var: _var, np.std: _std,
    np.max: _amax, np.amax: _amax, np.min: _amin, np.amin: _amin,
    np.cumsum: lambda a, axis=None, dtype=None, out=None: _cumulative("ADD", a, axis, out),
    np.cumprod: lambda a, axis=None, dtype=None, out=None: _cumulative("MUL", a, axis, out),
    np.diff: _diff, np.clip: _clip, np.round: _round, np.around: _round, np.where: _where,
    np.dot: _dot, np.vdot: _vdot, np.inner: _inner, np.matmul: _matmul, np.outer: _outer,
    np.tensordot: _tensordot, np.einsum: _einsum, np.cross: _cross, np.trace: _trace,
    np.linalg.norm: _norm, np.linalg.det: _det, np.polyval: _polyval,
    np.zeros_like: _like(0.0), np.ones_like: _like(1.0), np.empty_like: _like(0.0),
    np.full_like: _full_like, np.block: _block, np.copyto: _copyto,
    np.shape: _shape, np.ndim: lambda a: len(_shape(a)),
    np.size: lambda a, axis=None: (int(np.prod(_shape(a))) if axis is None
                                   else _shape(a)[axis]),
    np.iscomplexobj: lambda x: False, np.isrealobj: lambda x: True,
    np.result_type: lambda *a: np.dtype(np.float64),
}
for _f in (np.reshape, np.transpose, np.swapaxes, np.moveaxis, np.rollaxis, np.squeeze,
           np.expand_dims, np.ravel, np.broadcast_to, np.flip, np.fliplr, np.flipud, np.roll,
           np.rot90, np.take, np.take_along_axis, np.repeat, np.tile, np.split, np.array_split,
           np.hsplit, np.vsplit, np.dsplit, np.diagonal, np.copy, np.delete, np.asarray,
           np.asanyarray, np.ascontiguousarray, np.array):
    FUNCTIONS[_f] = _structural(_f)
for _f in (np.atleast_1d, np.atleast_2d, np.atleast_3d, np.broadcast_arrays, np.meshgrid):
    FUNCTIONS[_f] = _structural(_f, "all")
for _f in (np.stack, np.concatenate, np.hstack, np.vstack, np.dstack, np.column_stack):
    FUNCTIONS[_f] = _structural(_f, "seq")
FUNCTIONS[np.append] = _structural(np.append, "two")
FUNCTIONS[np.insert] = _structural(np.insert, "insert")
for _f in (np.diag, np.diagflat, np.triu, np.tril):
    FUNCTIONS[_f] = _structural(_f, zero_fill=True)
UFUNCS[np.matmul] = _matmul   # a ufunc since NumPy 2: `ndarray @ Array` arrives here


def _ufunc_method(ufunc):
    def method(self, *others):
        return ufunc(self, *others)
    method.__name__ = ufunc.__name__
    method.__doc__ = f"np.{ufunc.__name__}(self, ...): what NumPy's object loops call."
    return method


# NumPy's object-dtype loops call np.sin(o) as o.sin(): an object array of traced
# scalars (np.array([[c, -s], [s, c]])) then traces element by element.
for _u in list(UFUNCS):
    if not hasattr(Array, _u.__name__):
        setattr(Array, _u.__name__, _ufunc_method(_u))
if hasattr(np, "concat"):
    FUNCTIONS[np.concat] = _structural(np.concat, "seq")
if hasattr(np, "permute_dims"):
    FUNCTIONS[np.permute_dims] = _structural(np.permute_dims)
if hasattr(np, "matrix_transpose"):
    FUNCTIONS[np.matrix_transpose] = _structural(np.matrix_transpose)


def supported():
    """Names of the NumPy (and SciPy) functions that trace."""
    names = {f.__name__ for f in UFUNCS} | set(SCIPY_UFUNCS)
    names |= {getattr(f, "__name__", str(f)) for f in FUNCTIONS}
    return sorted(names)

