"""The NumPy rules: what each NumPy ufunc and array function becomes in the graph.

``jacext.trace.Array`` hands NumPy's calls here: ufuncs to ``_dispatch_ufunc``,
array functions to the table ``FUNCTIONS``.  Each rule lowers a call to bulk
graph operations over whole id arrays:

* ``UFUNCS`` maps a NumPy ufunc to an op name of the C op table (one
  ``Graph.apply``, through ``elementwise``) or to a lowering function;
  ``SCIPY_UFUNCS`` does the same for SciPy's, by name;
* reductions are one ``Graph.reduce`` (a balanced tree), cumsum/cumprod one
  ``Graph.scan`` (their rules: ``jacext.reduction_rules``); matmul, dot, einsum
  and kin sum products that skip structural zeros, or become block instructions
  (their rules: ``jacext.linalg_rules``);
* structural functions (stack, concatenate, flip, take, diag ...) are NumPy's
  own functions applied to the id arrays: no new nodes.

It also gives Array the ufunc-named methods (``.sin()`` ...) that NumPy's object
loops call, and lists what traces: :func:`supported`.
"""
from __future__ import annotations

import sys

import numpy as np

from jacext.linalg_rules import (
    _cross,
    _det,
    _dot,
    _einsum,
    _inner,
    _matmul,
    _norm,
    _outer,
    _tensordot,
    _trace,
    _vdot,
)
from jacext.reduction_rules import (
    _amax,
    _amin,
    _cumulative,
    _diff,
    _mean,
    _no_out,
    _prod,
    _std,
    _sum,
    _var,
    reduce_tree,
)
from jacext.selection_rules import FUNCTIONS as _SELECTIONS
from jacext.selection_rules import where_indices
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
    if x is None and y is None:
        return where_indices(condition)
    if x is None or y is None:
        raise ValueError("either both or neither of x and y should be given")
    g = _graph_of((condition, x, y))
    if not isinstance(condition, Array) and _graph_of((condition,)) is None:
        # a constant condition picks ids: no node at all
        c = np.asarray(condition).astype(bool)
        return Array(g, np.where(c, _ids(g, x), _ids(g, y)))
    return elementwise("SELECT", condition, x, y, graph=g)


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
FUNCTIONS.update(_SELECTIONS)
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
    """Names of the NumPy (and SciPy) functions that trace.

    >>> from jacext.trace import supported
    >>> {"sin", "einsum", "stack", "erf"} <= set(supported())
    True
    """
    names = {f.__name__ for f in UFUNCS} | set(SCIPY_UFUNCS)
    names |= {getattr(f, "__name__", str(f)) for f in FUNCTIONS}
    return sorted(names)

