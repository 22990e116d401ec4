"""Tracing: run the user's NumPy function on symbolic arrays.

A symbolic :class:`Array` holds a NumPy integer array of node ids into the
expression graph (``jacext._graph.Graph``).  Every NumPy call on it becomes ONE
bulk graph operation over all its elements:

* ufuncs (``np.sin``, ``+``, ``np.maximum``, SciPy's ``erf``) reach
  ``Array.__array_ufunc__`` and become one ``Graph.apply`` over the broadcast
  id arrays;
* array functions (``np.sum``, ``np.stack``, ``np.einsum`` ...) reach
  ``Array.__array_function__`` and are looked up in ``FUNCTIONS``;
* broadcasting, indexing, reshape, transpose, stack and concatenate are NumPy's
  own operations on the id arrays: they create no nodes at all.

The NumPy-name -> op mapping is the one table ``UFUNCS`` below (plus
``FUNCTIONS`` for array functions); the op numbers come from the C op table.
"""
from __future__ import annotations

import math
import os
import sys
import threading

import numpy as np

from jacext._graph import OPS, Graph
from jacext.errors import TracingError

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_NUMPY_DIR = os.path.dirname(os.path.abspath(np.__file__))


# ---------------------------------------------------------------- errors --

def _user_line():
    """'file:line: source' of the innermost frame outside jacext and NumPy."""
    frame = sys._getframe(1)
    while frame is not None:
        fn = os.path.abspath(frame.f_code.co_filename)
        if not (fn.startswith(_PACKAGE_DIR) or fn.startswith(_NUMPY_DIR)
                or fn.startswith("<frozen")):
            import linecache
            src = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
            where = f"{frame.f_code.co_filename}:{frame.f_lineno}"
            return where, src
        frame = frame.f_back
    return "<unknown>", ""


def _fail(cause, fix):
    where, src = _user_line()
    line = f"\n  at {where}" + (f"\n    {src}" if src else "")
    math_hint = ""
    if "math." in src:
        math_hint = ("\n  The math module works on Python floats only: use NumPy's "
                     "function of the same name (np.sin for math.sin, np.exp for math.exp, ...).")
    raise TracingError(f"jacext: {cause}{line}\n  Fix: {fix}{math_hint}")


# ------------------------------------------------------------ the array --

class Array:
    """A symbolic float64 array met while tracing: a NumPy array of node ids.

    Supports ``.shape``, ``.ndim``, ``.size``, ``.T``, ``reshape``, ``sum``,
    ``prod``, ``mean``, ``dot``, indexing (basic and integer-array, also
    assignment), the arithmetic operators, and NumPy's functions through
    ``__array_ufunc__`` / ``__array_function__``.
    """

    __slots__ = ("graph", "ids")
    __array_priority__ = 1000.0

    def __init__(self, graph, ids):
        self.graph = graph
        self.ids = ids

    # -- facts --
    shape = property(lambda self: self.ids.shape)
    ndim = property(lambda self: self.ids.ndim)
    size = property(lambda self: self.ids.size)
    dtype = property(lambda self: np.dtype(np.float64))
    T = property(lambda self: Array(self.graph, self.ids.T))
    mT = property(lambda self: Array(self.graph, np.swapaxes(self.ids, -1, -2)))
    real = property(lambda self: self)

    def __repr__(self):
        return f"jacext.Array(shape={self.shape}, traced)"

    def __len__(self):
        if self.ids.ndim == 0:
            raise TypeError("len() of a 0-d traced array")
        return self.ids.shape[0]

    def __iter__(self):
        if self.ids.ndim == 0:
            raise TypeError("iteration over a 0-d traced array")
        for k in range(self.ids.shape[0]):
            yield Array(self.graph, self.ids[k])

    # -- what a trace cannot do --
    def __bool__(self):
        _fail("Python control flow on a traced value (if/while/and/or/not, bool(), "
              "comparisons chained in Python): its value is not known while tracing",
              "select with np.where(condition, a, b), which jacext differentiates "
              "branch by branch; np.maximum/np.minimum/np.clip for max/min/clamping")

    def __float__(self):
        _fail("a traced value was converted to a Python number (float(), math.*, "
              "or writing it into a NumPy array created with np.zeros/np.empty)",
              "keep it an array: NumPy's functions (np.sin, np.exp, ...) work on traced "
              "values; to fill an array, build it with np.stack/np.concatenate or start "
              "from np.zeros_like(x) and assign into that")

    __int__ = __float__
    __complex__ = __float__

    def __index__(self):
        _fail("a traced value was used as an index or size",
              "index with constants (Python ints, NumPy integer arrays); for a "
              "value-dependent choice use np.where")

    def item(self, *args):
        self.__float__()

    def tolist(self):
        self.__float__()

    # -- indexing: NumPy's indexing on the id array --
    def __getitem__(self, key):
        _check_key(key)
        return Array(self.graph, self.ids[key])

    def __setitem__(self, key, value):
        _check_key(key)
        ids = _ids(self.graph, value)
        if not self.ids.flags.writeable:
            self.ids = self.ids.copy()
        self.ids[key] = ids

    # -- NumPy protocols --
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return _dispatch_ufunc(ufunc, method, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        handler = FUNCTIONS.get(func)
        if handler is None:
            name = getattr(func, "__module__", "numpy") + "." + getattr(func, "__name__", str(func))
            name = name.replace("numpy._core.fromnumeric", "numpy").replace("numpy._core", "numpy")
            _fail(f"{name} is not supported on traced arrays",
                  f"express it with supported NumPy functions (see jacext.trace.supported()), "
                  f"or ask for {name} in an issue")
        return handler(*args, **kwargs)

    # -- methods that mirror ndarray's --
    def reshape(self, *shape, order="C"):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return Array(self.graph, self.ids.reshape(shape, order=order))

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return Array(self.graph, self.ids.transpose(*axes))

    def ravel(self, order="C"):
        return Array(self.graph, self.ids.ravel(order=order))

    def flatten(self, order="C"):
        return Array(self.graph, self.ids.flatten(order=order))

    def squeeze(self, axis=None):
        return Array(self.graph, self.ids.squeeze(axis=axis))

    def swapaxes(self, a, b):
        return Array(self.graph, self.ids.swapaxes(a, b))

    def copy(self, order="C"):
        return Array(self.graph, self.ids.copy(order=order))

    def astype(self, dtype, *args, **kwargs):
        kind = np.dtype(dtype).kind
        if kind == "c":
            raise TypeError("jacext: traced arrays are real; complex dtypes are not supported")
        if kind != "f":
            _fail(f"a traced value was cast to {np.dtype(dtype)}",
                  "keep traced values float64; use np.floor/np.rint/np.trunc for rounding")
        return self

    def conj(self):
        return self

    conjugate = conj

    def sum(self, axis=None, dtype=None, out=None, keepdims=False, **kw):
        return _sum(self, axis=axis, out=out, keepdims=keepdims, **kw)

    def prod(self, axis=None, dtype=None, out=None, keepdims=False, **kw):
        return _prod(self, axis=axis, out=out, keepdims=keepdims, **kw)

    def mean(self, axis=None, dtype=None, out=None, keepdims=False, **kw):
        return _mean(self, axis=axis, out=out, keepdims=keepdims, **kw)

    def max(self, axis=None, out=None, keepdims=False, **kw):
        return _amax(self, axis=axis, out=out, keepdims=keepdims, **kw)

    def min(self, axis=None, out=None, keepdims=False, **kw):
        return _amin(self, axis=axis, out=out, keepdims=keepdims, **kw)

    def cumsum(self, axis=None, dtype=None, out=None):
        return _cumulative("ADD", self, axis, out)

    def cumprod(self, axis=None, dtype=None, out=None):
        return _cumulative("MUL", self, axis, out)

    def dot(self, other):
        return _dot(self, other)

    def clip(self, min=None, max=None, **kw):
        return _clip(self, min, max, **kw)

    def round(self, decimals=0, out=None):
        return _round(self, decimals, out)

    def var(self, axis=None, dtype=None, out=None, ddof=0, keepdims=False):
        return _var(self, axis=axis, out=out, ddof=ddof, keepdims=keepdims)

    def std(self, axis=None, dtype=None, out=None, ddof=0, keepdims=False):
        return _std(self, axis=axis, out=out, ddof=ddof, keepdims=keepdims)

    def diagonal(self, offset=0, axis1=0, axis2=1):
        return Array(self.graph, np.diagonal(self.ids, offset, axis1, axis2))

    def trace(self, offset=0, axis1=0, axis2=1, dtype=None, out=None):
        return _trace(self, offset, axis1, axis2, dtype, out)

    # -- operators: through NumPy's ufuncs, so that one path handles all --
    def __add__(self, o): return np.add(self, o)
    def __radd__(self, o): return np.add(o, self)
    def __sub__(self, o): return np.subtract(self, o)
    def __rsub__(self, o): return np.subtract(o, self)
    def __mul__(self, o): return np.multiply(self, o)
    def __rmul__(self, o): return np.multiply(o, self)
    def __truediv__(self, o): return np.true_divide(self, o)
    def __rtruediv__(self, o): return np.true_divide(o, self)
    def __floordiv__(self, o): return np.floor_divide(self, o)
    def __rfloordiv__(self, o): return np.floor_divide(o, self)
    def __mod__(self, o): return np.remainder(self, o)
    def __rmod__(self, o): return np.remainder(o, self)
    def __pow__(self, o): return np.power(self, o)
    def __rpow__(self, o): return np.power(o, self)
    def __matmul__(self, o): return np.matmul(self, o)
    def __rmatmul__(self, o): return np.matmul(o, self)
    def __neg__(self): return np.negative(self)
    def __pos__(self): return self
    def __abs__(self): return np.absolute(self)
    def __lt__(self, o): return np.less(self, o)
    def __le__(self, o): return np.less_equal(self, o)
    def __gt__(self, o): return np.greater(self, o)
    def __ge__(self, o): return np.greater_equal(self, o)
    def __eq__(self, o): return np.equal(self, o)
    def __ne__(self, o): return np.not_equal(self, o)
    def __and__(self, o): return np.logical_and(self, o)
    def __rand__(self, o): return np.logical_and(o, self)
    def __or__(self, o): return np.logical_or(self, o)
    def __ror__(self, o): return np.logical_or(o, self)
    def __xor__(self, o): return np.logical_xor(self, o)
    def __rxor__(self, o): return np.logical_xor(o, self)
    def __invert__(self): return np.logical_not(self)

    __hash__ = None


def _check_key(key):
    parts = key if isinstance(key, tuple) else (key,)
    for p in parts:
        if isinstance(p, Array):
            _fail("a traced value was used as an index (the selected elements would depend "
                  "on values not known while tracing)",
                  "index with constant integers or masks; for a value-dependent choice "
                  "use np.where(condition, a, b)")
        if isinstance(p, (list, tuple)) and any(isinstance(q, Array) for q in p):
            _check_key(tuple(p))


# ------------------------------------------------------- id conversion --

_local = threading.local()


def _graph_of(values):
    for v in values:
        if isinstance(v, Array):
            return v.graph
        if isinstance(v, (list, tuple)):
            g = _graph_of(v)
            if g is not None:
                return g
        if isinstance(v, np.ndarray) and v.dtype == object:
            g = _graph_of(v.ravel().tolist())
            if g is not None:
                return g
    return None


def _ids(graph, v):
    """Node ids (int64 array) of an Array, a constant, or an object array of both."""
    if type(v) is Array:
        if v.graph is not graph:
            raise TracingError("jacext: a traced array from another trace was used here; "
                               "each jacext.compile traces with its own arrays")
        return v.ids
    if isinstance(v, (float, int)) and not isinstance(v, bool):
        return np.asarray(graph.consts(np.array([v], dtype=np.float64))[0])
    if isinstance(v, (list, tuple)) and _graph_of(v) is not None:
        v = _object_array(v)
    if isinstance(v, np.ndarray) and v.dtype == object:
        flat = v.ravel()
        out = np.empty(flat.shape[0], dtype=np.int64)
        for k, e in enumerate(flat):
            e_ids = _ids(graph, e)
            if np.ndim(e_ids) != 0:
                raise TracingError("jacext: an object array of traced arrays must hold "
                                   "scalars (0-d arrays); use np.stack to join arrays")
            out[k] = e_ids
        return out.reshape(v.shape)
    arr = np.asarray(v)
    if arr.dtype.kind == "c":
        raise TypeError("jacext: complex constants are not supported; jacext traces real "
                        "functions")
    if arr.dtype.kind not in "biuf":
        raise TracingError(f"jacext: cannot use a value of type {type(v).__name__} "
                           f"(dtype {arr.dtype}) in a traced computation")
    return graph.consts(arr.astype(np.float64).ravel()).reshape(arr.shape)


def _object_array(seq):
    """A nested list of traced scalars and numbers as an object array."""
    out = np.empty(len(seq), dtype=object)
    for k, e in enumerate(seq):
        out[k] = e
    if all(isinstance(e, (list, tuple)) for e in seq):
        rows = [_object_array(e) for e in seq]
        return np.stack(rows)
    return out


def wrap(graph, ids):
    return Array(graph, ids)


def elementwise(op, *operands, graph=None):
    """One graph op over the broadcast operands: the heart of bulk tracing."""
    g = graph if graph is not None else _graph_of(operands)
    ids = [_ids(g, o) for o in operands]
    if len(ids) > 1:
        ids = np.broadcast_arrays(*ids)
    shape = ids[0].shape
    flat = [np.ascontiguousarray(i, dtype=np.int64).reshape(-1) for i in ids]
    code = OPS[op]
    if op == "SELECT":   # operands: condition, if-true, if-false
        res = g.apply(code, flat[1], flat[2], flat[0])
    else:
        res = g.apply(code, *flat)
    return Array(g, res.reshape(shape))


def _const_array(g, value, shape):
    return Array(g, np.broadcast_to(g.consts(np.array([value], dtype=np.float64))[0],
                                    shape).copy())


# ---------------------------------------------------------------- ufuncs --

def _identity(x):
    return x


def _scaled(factor):
    def apply(x):
        return elementwise("MUL", x, factor)
    return apply


def _logical_and(a, b):
    return elementwise("MUL", np.not_equal(a, 0.0), np.not_equal(b, 0.0))


def _logical_or(a, b):
    return elementwise("MAXIMUM", np.not_equal(a, 0.0), np.not_equal(b, 0.0))


def _logical_xor(a, b):
    return elementwise("NOT_EQUAL", np.not_equal(a, 0.0), np.not_equal(b, 0.0))


def _logical_not(a):
    return elementwise("EQUAL", a, 0.0)


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
    np.trunc: "TRUNC",
    np.positive: _identity, np.conjugate: _identity,
    np.deg2rad: _scaled(np.pi / 180.0), np.radians: _scaled(np.pi / 180.0),
    np.rad2deg: _scaled(180.0 / np.pi), np.degrees: _scaled(180.0 / np.pi),
    np.logical_and: _logical_and, np.logical_or: _logical_or,
    np.logical_xor: _logical_xor, np.logical_not: _logical_not,
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
    out = kwargs.pop("out", None)
    if out is not None:
        _fail(f"np.{ufunc.__name__}(..., out=...) writes into an array while tracing",
              "drop out= and use the returned value")
    if kwargs.pop("where", True) is not True:
        _fail(f"np.{ufunc.__name__}(..., where=...) is not supported while tracing",
              "use np.where(condition, np.f(x), other) instead")
    kwargs.pop("dtype", None)
    kwargs.pop("casting", None)
    kwargs.pop("subok", None)
    if method == "__call__":
        if kwargs:
            _fail(f"np.{ufunc.__name__} got unsupported keywords {sorted(kwargs)}",
                  "call it with array arguments only")
        rule = _ufunc_rule(ufunc)
        if rule is None:
            _fail(f"the ufunc {ufunc.__name__} is not supported on traced arrays",
                  "express it with supported functions (see jacext.trace.supported())")
        if isinstance(rule, str):
            return elementwise(rule, *inputs)
        return rule(*inputs)
    if method == "reduce" and ufunc in _REDUCE_OPS:
        axis = kwargs.pop("axis", 0)
        keepdims = kwargs.pop("keepdims", False)
        return reduce_tree(_REDUCE_OPS[ufunc], inputs[0], axis, keepdims)
    if method == "accumulate" and ufunc in (np.add, np.multiply):
        return _cumulative(_REDUCE_OPS[ufunc], inputs[0], kwargs.pop("axis", 0), None)
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
    """Balanced-tree reduction of ids along the last axis (one apply per level)."""
    code = OPS[op]
    while ids.shape[-1] > 1:
        k = ids.shape[-1]
        half = k // 2
        left = np.ascontiguousarray(ids[..., 0:2 * half:2])
        right = np.ascontiguousarray(ids[..., 1:2 * half:2])
        merged = g.apply(code, left.reshape(-1), right.reshape(-1)).reshape(left.shape)
        if k % 2:
            merged = np.concatenate([merged, ids[..., k - 1:]], axis=-1)
        ids = merged
    return ids[..., 0]


def sparse_sum(g, ids):
    """Sum along the last axis where id -1 marks a structural zero (skipped)."""
    code = OPS["ADD"]
    while ids.shape[-1] > 1:
        k = ids.shape[-1]
        half = k // 2
        left = ids[..., 0:2 * half:2]
        right = ids[..., 1:2 * half:2]
        merged = np.where(left >= 0, left, right)
        both = (left >= 0) & (right >= 0)
        if both.any():
            merged[both] = g.apply(code, np.ascontiguousarray(left[both]),
                                   np.ascontiguousarray(right[both]))
        if k % 2:
            merged = np.concatenate([merged, ids[..., k - 1:]], axis=-1)
        ids = merged
    out = ids[..., 0] if ids.shape[-1] else np.full(ids.shape[:-1], -1, np.int64)
    missing = out < 0
    if missing.any():
        out = np.where(missing, g.consts(np.zeros(1))[0], out)
    return out


_EMPTY_VALUE = {"ADD": 0.0, "MUL": 1.0}


def reduce_tree(op, x, axis=None, keepdims=False, initial=None):
    g = _graph_of((x,))
    if g is None:
        raise TypeError("reduce_tree needs a traced array")
    ids = _ids(g, x)
    axes = _norm_axis(axis, ids.ndim)
    rest = [d for d in range(ids.ndim) if d not in axes]
    moved = np.transpose(ids, rest + list(axes))
    lead = moved.shape[:len(rest)]
    flat = moved.reshape(lead + (-1,))
    if initial is not None:
        flat = np.concatenate([np.broadcast_to(_ids(g, initial), lead + (1,)), flat], axis=-1)
    if flat.shape[-1] == 0:
        if op not in _EMPTY_VALUE:
            raise ValueError("zero-size array to reduction operation which has no identity")
        res = np.broadcast_to(g.consts(np.array([_EMPTY_VALUE[op]])), lead).copy()
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


def _amax(a, axis=None, out=None, keepdims=False, initial=None, where=True):
    _no_out(out, "np.max")
    return reduce_tree("MAXIMUM", a, axis, keepdims, initial)


def _amin(a, axis=None, out=None, keepdims=False, initial=None, where=True):
    _no_out(out, "np.min")
    return reduce_tree("MINIMUM", a, axis, keepdims, initial)


def _count(a, axis):
    shape = np.shape(a)
    return int(np.prod([shape[d] for d in _norm_axis(axis, len(shape))], dtype=np.int64))


def _mean(a, axis=None, dtype=None, out=None, keepdims=False, where=True):
    _no_out(out, "np.mean")
    return elementwise("DIV", _sum(a, axis, keepdims=keepdims), float(_count(a, axis)))


def _var(a, axis=None, dtype=None, out=None, ddof=0, keepdims=False, where=True, mean=None,
         correction=None):
    _no_out(out, "np.var")
    if correction is not None:
        ddof = correction
    centred = a - _mean(a, axis, keepdims=True)
    return elementwise("DIV", _sum(np.square(centred), axis, keepdims=keepdims),
                       float(max(_count(a, axis) - ddof, 0)))


def _std(a, axis=None, dtype=None, out=None, ddof=0, keepdims=False, where=True, mean=None,
         correction=None):
    return np.sqrt(_var(a, axis, ddof=ddof, keepdims=keepdims, correction=correction))


def _cumulative(op, a, axis=None, out=None, dtype=None):
    _no_out(out, "np.cumsum")
    g = _graph_of((a,))
    ids = _ids(g, a)
    if axis is None:
        ids, axis = ids.ravel(), 0
    ids = np.moveaxis(ids, axis, -1).copy()
    code = OPS[op]
    # sequential, as NumPy's own cumsum: the same rounding
    for k in range(1, ids.shape[-1]):
        ids[..., k] = g.apply(code, np.ascontiguousarray(ids[..., k - 1]).reshape(-1),
                              np.ascontiguousarray(ids[..., k]).reshape(-1)).reshape(ids.shape[:-1])
    return Array(g, np.moveaxis(ids, -1, axis))


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
    cond = _ids(g, condition) if isinstance(condition, Array) else None
    if cond is None:
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
    ia, ib = np.broadcast_arrays(ia, ib)
    shape = ia.shape
    ia = np.ascontiguousarray(ia).reshape(-1)
    ib = np.ascontiguousarray(ib).reshape(-1)
    keep = (ia >= 0) & (ib >= 0)
    for side in (ia, ib):
        where = np.flatnonzero(keep)
        vals = side[where]
        zero = g.const_mask(vals) & (g.const_values(vals) == 0.0)
        keep[where[zero]] = False
    out = np.full(ia.shape[0], -1, dtype=np.int64)
    out[keep] = g.apply(OPS["MUL"], np.ascontiguousarray(ia[keep]), np.ascontiguousarray(ib[keep]))
    return out.reshape(shape)


def _matmul_ids(g, ia, ib):
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
    return Array(g, np.asarray(_matmul_ids(g, _ids(g, a), _ids(g, b))))


def _dot(a, b, out=None):
    _no_out(out, "np.dot")
    g = _graph_of((a, b))
    ia, ib = _ids(g, a), _ids(g, b)
    if ia.ndim == 0 or ib.ndim == 0:
        return elementwise("MUL", a, b)
    if ib.ndim <= 2:
        return Array(g, np.asarray(_matmul_ids(g, ia, ib)))
    return _tensordot(a, b, axes=([ia.ndim - 1], [ib.ndim - 2]))


def _vdot(a, b):
    g = _graph_of((a, b))
    return Array(g, np.asarray(_matmul_ids(g, _ids(g, a).ravel(), _ids(g, b).ravel())))


def _inner(a, b):
    g = _graph_of((a, b))
    ia, ib = _ids(g, a), _ids(g, b)
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
    ia, ib = _ids(g, a), _ids(g, b)
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
    summed = [c for c in sizes if c not in out_spec]
    order = list(out_spec) + summed
    full = tuple(sizes[c] for c in order)
    prod = None
    for uniq, ids in views:
        t = np.transpose(ids, [uniq.index(c) for c in order if c in uniq])
        it = iter(t.shape)
        t = t.reshape([next(it) if c in uniq else 1 for c in order])
        prod = np.broadcast_to(t, full) if prod is None else _products(g, prod, t)
    prod = np.broadcast_to(prod, full).reshape(full[:len(out_spec)] + (-1,))
    return Array(g, np.asarray(sparse_sum(g, prod)))


def _cross(a, b, axisa=-1, axisb=-1, axisc=-1, axis=None):
    g = _graph_of((a, b))
    if axis is not None:
        axisa = axisb = axisc = axis
    ia = np.moveaxis(_ids(g, a), axisa, -1)
    ib = np.moveaxis(_ids(g, b), axisb, -1)
    A = [Array(g, ia[..., k]) for k in range(ia.shape[-1])]
    B = [Array(g, ib[..., k]) for k in range(ib.shape[-1])]
    if len(A) == 2:
        A.append(0.0)
    if len(B) == 2:
        B.append(0.0)
    if len(A) != 3 or len(B) != 3:
        raise ValueError("incompatible dimensions for cross product (dimension must be 2 or 3)")
    if ia.shape[-1] == 2 and ib.shape[-1] == 2:
        return A[0] * B[1] - A[1] * B[0]
    c = [A[1] * B[2] - A[2] * B[1], A[2] * B[0] - A[0] * B[2], A[0] * B[1] - A[1] * B[0]]
    c = [ci if isinstance(ci, Array) else _const_array(g, ci, np.shape(c[0])) for ci in c]
    res = np.stack([_ids(g, ci) for ci in c], axis=-1)
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
    "all" (every positional), "two" (the first two).  zero_fill: the function
    fills new places with 0 (np.diag of a vector, np.triu): shift ids so that
    the fill lands on the constant-zero node.
    """
    def handler(*args, **kwargs):
        g = _graph_of(args) or _graph_of(tuple(kwargs.values()))
        args = list(args)
        if arrays == "first":
            idx = [0]
        elif arrays == "two":
            idx = [0, 1]
        elif arrays == "all":
            idx = list(range(len(args)))
        else:
            idx = []
            args[0] = [_ids(g, e) if not isinstance(e, (list, tuple)) or _graph_of(e) is None
                       else _nested_ids(g, e) for e in args[0]]
        for k in idx:
            if k < len(args):
                args[k] = _ids(g, args[k])
        if arrays == "two" and "values" in kwargs:
            kwargs["values"] = _ids(g, kwargs["values"])
        if zero_fill:
            z = g.consts(np.zeros(1))[0]
            args[0] = args[0] - z
            res = func(*args, **kwargs) + z
        else:
            res = func(*args, **kwargs)
        return _wrap_result(g, res)
    handler.__name__ = func.__name__
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
    np.full_like: _full_like, np.block: _block,
    np.shape: _shape, np.ndim: lambda a: len(_shape(a)),
    np.size: lambda a, axis=None: (int(np.prod(_shape(a))) if axis is None
                                   else _shape(a)[axis]),
    np.iscomplexobj: lambda x: False, np.isrealobj: lambda x: True,
    np.result_type: lambda *a: np.dtype(np.float64),
}
for _f in (np.reshape, np.transpose, np.swapaxes, np.moveaxis, np.rollaxis, np.squeeze,
           np.expand_dims, np.ravel, np.broadcast_to, np.flip, np.fliplr, np.flipud, np.roll,
           np.rot90, np.take, np.take_along_axis, np.repeat, np.tile, np.split, np.array_split,
           np.hsplit, np.vsplit, np.dsplit, np.diagonal, np.copy, np.delete, np.atleast_1d,
           np.atleast_2d, np.atleast_3d, np.asarray, np.asanyarray, np.ascontiguousarray,
           np.array):
    FUNCTIONS[_f] = _structural(_f)
for _f in (np.atleast_1d, np.atleast_2d, np.atleast_3d, np.broadcast_arrays, np.meshgrid):
    FUNCTIONS[_f] = _structural(_f, "all")
for _f in (np.stack, np.concatenate, np.hstack, np.vstack, np.dstack, np.column_stack):
    FUNCTIONS[_f] = _structural(_f, "seq")
for _f in (np.append, np.insert):
    FUNCTIONS[_f] = _structural(_f, "two")
for _f in (np.diag, np.diagflat, np.triu, np.tril):
    FUNCTIONS[_f] = _structural(_f, zero_fill=True)
UFUNCS[np.matmul] = _matmul   # a ufunc since NumPy 2: `ndarray @ Array` arrives here
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


# ---------------------------------------------------------------- tracing --

def trace(f, arg_shapes):
    """Run f on symbolic arrays of these shapes.

    Returns (graph, input id arrays, output id arrays, output shapes, out_is_tuple).
    """
    g = Graph()
    inputs = []
    args = []
    for shape in arg_shapes:
        size = int(np.prod(shape, dtype=np.int64))
        ids = g.inputs(size)
        inputs.append(ids)
        args.append(Array(g, ids.copy().reshape(shape)))
    result = f(*args)
    is_tuple = isinstance(result, (tuple, list))
    outs = tuple(result) if is_tuple else (result,)
    out_ids = []
    for k, r in enumerate(outs):
        if r is None or isinstance(r, (str, bytes, dict)):
            raise TypeError(f"jacext: {getattr(f, '__name__', 'f')} returned {type(r).__name__} "
                            f"as output {k}; return arrays, numbers, or a tuple of them")
        out_ids.append(np.asarray(_ids(g, r), dtype=np.int64))
    return g, inputs, out_ids, tuple(o.shape for o in out_ids), is_tuple


__all__ = ["Array", "FUNCTIONS", "UFUNCS", "elementwise", "supported", "trace", "math"]
