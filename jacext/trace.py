"""Tracing: run the user's NumPy function on symbolic arrays.

A symbolic :class:`Array` holds a NumPy integer array of node ids into the
expression graph (``jacext._graph.Graph``).  Every NumPy call on it becomes ONE
bulk graph operation over all its elements.  This module holds the mechanics:

* the :class:`Array` class: its ndarray-like methods, its operators, and the
  entry points of NumPy's protocols, ``__array_ufunc__`` (ufuncs: ``np.sin``,
  ``+``, SciPy's ``erf``) and ``__array_function__`` (``np.sum``,
  ``np.einsum`` ...);
* indexing, reshape and transpose: NumPy's own operations on the id arrays,
  which create no nodes at all;
* the conversion of operands to id arrays (``_graph_of``, ``_ids``) and
  ``elementwise``, the one bulk ``Graph.apply`` that every op comes down to;
* the error helper ``_fail``: what cannot trace, where (the user's line) and
  the fix;
* :func:`trace`, which runs ``f`` on symbolic arrays of given shapes.

What each NumPy function or ufunc becomes (the op tables, reductions, linear
algebra, the structural functions) is ``jacext.numpy_rules``.

Object arrays of traced scalars (``np.array([[c, -s], [s, c]])``) work too:
NumPy's object loops handle them element by element (Python operators, and
the ufunc-named methods that numpy_rules attaches to Array such as ``.sin()``),
and ``_ids`` turns them back into one id array wherever they meet a traced
array or are returned.  That path is per element, so it suits small literal
matrices, not big arrays.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import threading

import numpy as np

from jacext import buffers
from jacext._graph import KIND_BLOCK, KIND_CONST, KIND_INPUT, Graph
from jacext.errors import TracingError, explain_failure
from jacext.ops import A_IMM as _A_IMM
from jacext.ops import B_IMM as _B_IMM
from jacext.ops import OP_MASK as _OP_MASK
from jacext.ops import OPS
from jacext.passes import evaluate as _evaluate

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_NUMPY_DIR = os.path.dirname(os.path.abspath(np.__file__)) + os.sep


# ---------------------------------------------------------------- errors --

def _library_dirs():
    dirs = [_PACKAGE_DIR, _NUMPY_DIR]
    scipy = sys.modules.get("scipy")
    if scipy is not None and getattr(scipy, "__file__", None):
        dirs.append(os.path.dirname(os.path.abspath(scipy.__file__)) + os.sep)
    return tuple(dirs)


def _user_line():
    """('file:line', source) of the innermost frame outside jacext, NumPy and SciPy."""
    import linecache
    skip = _library_dirs()
    frame = sys._getframe(1)
    while frame is not None:
        fn = os.path.abspath(frame.f_code.co_filename)
        if not (fn.startswith(skip) or frame.f_code.co_filename.startswith("<frozen")):
            src = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
            where = f"{frame.f_code.co_filename}:{frame.f_lineno}"
            return where, src
        frame = frame.f_back
    return "<unknown>", ""


#: math-module functions whose NumPy counterpart has another name
_MATH_TO_NUMPY = {"asin": "arcsin", "acos": "arccos", "atan": "arctan", "atan2": "arctan2",
                  "asinh": "arcsinh", "acosh": "arccosh", "atanh": "arctanh", "pow": "power",
                  "fabs": "abs", "fmod": "fmod", "isclose": "isclose", "fsum": "sum",
                  "dist": "linalg.norm", "radians": "radians", "degrees": "degrees"}


_MATH_CALL = re.compile(r"\bmath\.(\w+)\s*\(")


def _fail(cause, fix):
    where, src = _user_line()
    line = f"\n  at {where}" + (f"\n    {src}" if src else "")
    math_hint = ""
    names = re.findall(r"\bmath\.(\w+)\s*\(", src)
    if names:
        pairs = ", ".join(f"np.{_MATH_TO_NUMPY.get(n, n)} for math.{n}"
                          for n in dict.fromkeys(names))
        math_hint = (f"\n  The math module works on Python floats only: use NumPy's function "
                     f"({pairs}), which traces.")
    raise TracingError(f"jacext: {cause}{line}\n  Fix: {fix}{math_hint}")


# ---------------------------------------------------------------- guards --

_local = threading.local()


def _active(graph):
    """The Guards of the trace in this thread that owns ``graph``, or None (a trace by
    shapes only, or control_flow="error")."""
    for gd in reversed(getattr(_local, "stack", ())):
        if gd.graph is graph:
            return gd
    return None


class Guards:
    """Guarded tracing: the trace point, and what Python learnt from it.

    Where Python needs a concrete answer from a traced value (``if``, ``bool()``,
    ``max``/``min`` built-ins, ``float()``, ``int()``), the tracer takes the value at the
    trace point (the graph's nodes evaluated there by ``jacext.passes.evaluate``, the op
    table's own values) and records a guard: the node, its kind and its outcome.  A
    truth guard holds where ``bool(value) == outcome`` (a comparison's branch); an exact
    guard where the value is ``outcome`` itself (``float(x)``; ``int(x)`` guards
    ``trunc(x)``).  A guard on a constant node always holds and is not recorded.
    ``jacext.guarded`` turns the recorded guards into a tape that checks them.
    """

    def __init__(self, point):
        self.point = np.ascontiguousarray(point, dtype=np.float64).ravel()
        self.graph = None
        self._vals = np.empty(0, dtype=np.float64)
        self._done = 0
        self.nodes = []      # node ids
        self.truth = []      # True: a truth guard; False: an exact one
        self.outcome = []    # the outcome at the trace point (float)
        self.lines = []      # where Python asked: 'file:line: source'
        self._seen = set()

    def value(self, node):
        """The node's value at the trace point."""
        n = len(self.graph)
        if n > self._done:
            if self._vals.shape[0] < n:
                vals = np.empty(max(n, 2 * self._vals.shape[0]), dtype=np.float64)
                vals[:self._done] = self._vals[:self._done]
                self._vals = vals
            _evaluate(self.graph, self.point, self._vals, self._done)
            self._done = n
        return float(self._vals[node])

    def values(self, ids):
        """The nodes' values at the trace point (an array of ids' shape)."""
        if ids.size:
            self.value(int(ids.reshape(-1)[0]))     # evaluates the nodes made since
        return self._vals[ids]

    def record(self, node, truth, outcome):
        self.record_many((int(node),), truth, (outcome,))

    def record_many(self, nodes, truth, outcomes):
        """Guards of one kind on several nodes, all asked for by one line of the user's."""
        line = None
        for node, outcome in zip(nodes, outcomes):
            if (node, truth) in self._seen:
                continue
            self._seen.add((node, truth))
            if line is None:
                where, src = _user_line()
                line = where + (f": {src}" if src else "")
            self.nodes.append(int(node))
            self.truth.append(bool(truth))
            self.outcome.append(float(outcome))
            self.lines.append(line)

    def __enter__(self):
        if not hasattr(_local, "stack"):
            _local.stack = []
        _local.stack.append(self)
        return self

    def __exit__(self, *exc):
        _local.stack.remove(self)
        self._vals = np.empty(0, dtype=np.float64)   # the trace's values: not kept


_CONTROL_FLOW_FIX = ("select with np.where(condition, a, b), which jacext differentiates "
                     "branch by branch; np.maximum/np.minimum/np.clip for max/min/clamping; "
                     "or compile with the default control_flow=\"guard\", which takes the "
                     "branch at each point")


def _storing():
    """Whether the user's line is storing into an item (``buf[k] = x``): NumPy converting
    a traced value to write it into one of its own arrays."""
    skip = _library_dirs()
    frame = sys._getframe(1)
    while frame is not None:
        fn = os.path.abspath(frame.f_code.co_filename)
        if not (fn.startswith(skip) or frame.f_code.co_filename.startswith("<frozen")):
            code = frame.f_code.co_code
            k = frame.f_lasti
            return 0 <= k < len(code) and code[k] == _STORE_SUBSCR
        frame = frame.f_back
    return False


_STORE_SUBSCR = __import__("dis").opmap["STORE_SUBSCR"]


def _fail_store():
    _fail("a traced value was written into a NumPy array of numbers (one made outside "
          "the traced function, by a name such as `from numpy import zeros`, or of a "
          "dtype other than float64)",
          "make the buffer inside the function with np.zeros/np.empty/np.ones/np.full "
          "(float64; they trace), or start from np.zeros_like(x), or build the array with "
          "np.stack/np.concatenate")


# ------------------------------------------------------------ the array --

#: operand types that an operator hands to the graph directly
_PLAIN_OPERANDS = frozenset({float, int, bool, np.float64, np.float32, np.int64, np.int32,
                             np.bool_, np.ndarray, list, tuple})


def _binary_operator(op, ufunc):
    """(x op o, o op x) for a traced x: its operator and its reflected one.

    For comparisons the pair is (x < o, x > o): Python reflects x < o into o > x.
    """
    def forward(self, o):
        if type(o) is Array or type(o) in _PLAIN_OPERANDS:
            return elementwise(op, self, o)
        return ufunc(self, o)

    def reflected(self, o):
        if type(o) in _PLAIN_OPERANDS:
            return elementwise(op, o, self)
        return ufunc(o, self)

    if op in ("LESS", "LESS_EQUAL"):
        flipped = {"LESS": "GREATER", "LESS_EQUAL": "GREATER_EQUAL"}[op]
        flipped_ufunc = {"LESS": np.greater, "LESS_EQUAL": np.greater_equal}[op]
        return forward, _binary_operator(flipped, flipped_ufunc)[0]
    return forward, reflected


class Array:
    """A symbolic float64 array met while tracing: a NumPy array of node ids.

    Supports ``.shape``, ``.ndim``, ``.size``, ``.T``, ``reshape``, ``sum``,
    ``prod``, ``mean``, ``dot``, indexing (basic and integer-array, also
    assignment), the arithmetic operators, and NumPy's functions through
    ``__array_ufunc__`` / ``__array_function__``.  The function being compiled
    sees these in place of its arguments; they record, they hold no values.

    >>> import numpy as np, jacext as jx
    >>> def f(x):
    ...     print(type(x).__name__, x.shape)
    ...     return np.sin(x).sum()
    >>> F = jx.compile(f, np.zeros(3))
    Array (3,)
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

    # -- where Python needs a concrete value: guarded tracing --
    def _node(self, kind, refuse):
        if self.ids.size != 1:
            if _active(self.graph) is None:
                refuse()
            if kind == "bool":
                raise ValueError("The truth value of an array with more than one element is "
                                 "ambiguous. Use a.any() or a.all()")
            raise TypeError("only length-1 arrays can be converted to Python scalars")
        return int(self.ids.reshape(-1)[0])

    def _concrete(self, node, truth, refuse):
        """node's value at the trace point, with its guard; a constant's value as it is."""
        op, _, _, _, imm = self.graph.node(node)
        if op == KIND_CONST:
            return imm
        gd = _active(self.graph)
        if gd is None:
            refuse()
        v = gd.value(node)
        gd.record(node, truth, bool(v) if truth else v)
        return v

    def _truths(self, refuse):
        """Each element's truth (``x != 0``) at the trace point, as a bool array of the
        array's shape, each a truth guard: the values behind a data-dependent selection
        (a mask used as an index, np.nonzero, np.count_nonzero).  refuse() where the
        trace has no point."""
        ids = np.asarray(self.ids, dtype=np.int64)
        g = self.graph
        flat = ids.reshape(-1)
        gd = _active(g)
        nodes = [g.node(i) for i in flat.tolist()]      # (op word, a, b, s, imm) each
        consts = np.array([n[0] == KIND_CONST for n in nodes], dtype=bool)
        if gd is None and not consts.all():
            refuse()
        truth = np.array([n[4] != 0.0 for n in nodes], dtype=bool)   # right for constants
        if not consts.all():
            traced = flat[~consts]
            vals = gd.values(traced) != 0.0
            truth[~consts] = vals
            gd.record_many(traced.tolist(), True, vals.tolist())
        return truth.reshape(ids.shape)

    def _refuse_bool(self):
        _fail("Python control flow on a traced value (if/while/and/or/not, bool(), "
              "comparisons chained in Python): its value is not known while tracing",
              _CONTROL_FLOW_FIX)

    def _refuse_number(self):
        if _storing():
            _fail_store()
        _fail("a traced value was converted to a Python number (float(), int(), math.*, "
              ".item())",
              "keep it an array: NumPy's functions (np.sin, np.exp, ...) work on traced "
              "values; or compile with the default control_flow=\"guard\", which takes "
              "the number at each point (a constant there, as torch's .item())")

    def __bool__(self):
        return bool(self._concrete(self._node("bool", self._refuse_bool), True, self._refuse_bool))

    def __float__(self):
        if _storing():
            _fail_store()
        if _MATH_CALL.search(_user_line()[1]):   # math.sin(x): no derivative would survive
            self._refuse_number()
        node = self._node("float", self._refuse_number)
        return float(self._concrete(node, False, self._refuse_number))

    def __int__(self):
        if _storing():
            _fail_store()
        node = self.graph.apply1(OPS["TRUNC"], self._node("int", self._refuse_number))
        return int(self._concrete(node, False, self._refuse_number))

    def __complex__(self):
        _fail("a traced value was converted to a Python complex number",
              "jacext traces real functions; keep it a float64 array")

    def __index__(self):
        _fail("a traced value was used as an index or size",
              "index with constants (Python ints, NumPy integer arrays); for a "
              "value-dependent choice use np.where; int(x) takes the number at the point")

    def __array__(self, dtype=None, copy=None):
        """NumPy's conversion (np.asarray(x), np.array([c, -s]), z[:] = x).

        A traced array cannot become numbers.  As an object array of traced
        scalars it still traces: element by element through NumPy's object
        loops (Python operators and the ufunc-named methods below), and back to
        one id array wherever it meets a traced array or is returned.  That is
        the path of small literal matrices such as ``np.array([[c, -s], [s, c]])``.
        """
        if dtype is not None and np.dtype(dtype) != np.dtype(object):
            if _storing():
                _fail_store()
            _fail(f"a traced array was converted to a NumPy array of {np.dtype(dtype)} "
                  "(np.asarray(x, dtype=...), z[...] = x into an array made by "
                  "np.zeros/np.empty, or a NumPy function given a list of traced values)",
                  "keep it traced: drop the conversion (a traced array already acts as a "
                  "float64 array), join lists of traced values with np.stack, or start from "
                  "np.zeros_like(x) and assign into that")
        if copy is False:
            raise ValueError("jacext: a traced array has no NumPy buffer to share "
                             "(np.asarray(x, copy=False))")
        ids = self.ids
        out = np.empty(ids.shape, dtype=object)
        g = self.graph
        flat = out.reshape(-1)
        for k, i in enumerate(ids.reshape(-1).tolist()):
            flat[k] = Array(g, np.array(i, dtype=np.int64))
        return out

    def item(self, *args):
        """The element as a Python float: a constant at the trace point, guarded."""
        if args:
            key = args[0] if len(args) == 1 else args
            if isinstance(key, (int, np.integer)) and self.ids.ndim != 1:
                key = np.unravel_index(key, self.ids.shape)
            return float(self[key])
        if self.ids.size != 1:
            raise ValueError("can only convert an array of size 1 to a Python scalar")
        return float(self)

    def tolist(self):
        """Nested lists of Python floats: constants at the trace point, guarded."""
        if self.ids.ndim == 0:
            return float(self)
        return [e.tolist() for e in self]

    def fill(self, value):
        ids = _ids(self.graph, value)
        if np.ndim(ids) != 0:
            raise ValueError("fill takes a scalar")
        self.ids = np.full(self.ids.shape, ids, dtype=np.int64)

    # -- indexing: NumPy's indexing on the id array --
    def __getitem__(self, key):
        return Array(self.graph, self.ids[_check_key(key)])

    def __setitem__(self, key, value):
        key = _check_key(key)
        ids = _ids(self.graph, value)
        if not isinstance(self.ids, np.ndarray) or not self.ids.flags.writeable:
            self.ids = np.array(self.ids, dtype=np.int64)
        self.ids[key] = ids

    # -- NumPy protocols --
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return _rules._dispatch_ufunc(ufunc, method, inputs, kwargs)

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
    def reshape(self, *shape, order="C", **kw):
        if "shape" in kw:
            shape = (kw.pop("shape"),)
        kw.pop("copy", None)
        if kw:
            raise TypeError(f"reshape() got unexpected keywords {sorted(kw)}")
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
        return _rules._sum(self, axis=axis, out=out, keepdims=keepdims, **kw)

    def prod(self, axis=None, dtype=None, out=None, keepdims=False, **kw):
        return _rules._prod(self, axis=axis, out=out, keepdims=keepdims, **kw)

    def mean(self, axis=None, dtype=None, out=None, keepdims=False, **kw):
        return _rules._mean(self, axis=axis, out=out, keepdims=keepdims, **kw)

    def max(self, axis=None, out=None, keepdims=False, **kw):
        return _rules._amax(self, axis=axis, out=out, keepdims=keepdims, **kw)

    def min(self, axis=None, out=None, keepdims=False, **kw):
        return _rules._amin(self, axis=axis, out=out, keepdims=keepdims, **kw)

    def any(self, axis=None, out=None, keepdims=False, **kw):
        return np.any(self, axis=axis, out=out, keepdims=keepdims, **kw)

    def all(self, axis=None, out=None, keepdims=False, **kw):
        return np.all(self, axis=axis, out=out, keepdims=keepdims, **kw)

    def nonzero(self):
        return np.nonzero(self)

    def cumsum(self, axis=None, dtype=None, out=None):
        return _rules._cumulative("ADD", self, axis, out)

    def cumprod(self, axis=None, dtype=None, out=None):
        return _rules._cumulative("MUL", self, axis, out)

    def dot(self, other):
        return _rules._dot(self, other)

    def clip(self, min=None, max=None, **kw):
        return _rules._clip(self, min, max, **kw)

    def round(self, decimals=0, out=None):
        return _rules._round(self, decimals, out)

    def var(self, axis=None, dtype=None, out=None, ddof=0, keepdims=False):
        return _rules._var(self, axis=axis, out=out, ddof=ddof, keepdims=keepdims)

    def std(self, axis=None, dtype=None, out=None, ddof=0, keepdims=False):
        return _rules._std(self, axis=axis, out=out, ddof=ddof, keepdims=keepdims)

    def diagonal(self, offset=0, axis1=0, axis2=1):
        return Array(self.graph, np.diagonal(self.ids, offset, axis1, axis2))

    def trace(self, offset=0, axis1=0, axis2=1, dtype=None, out=None):
        return _rules._trace(self, offset, axis1, axis2, dtype, out)

    # -- operators: straight to the graph for the operand types NumPy would treat
    # as plain arrays (the common case, a few microseconds less per operator);
    # anything else goes through NumPy's ufunc, so its own protocols decide --
    __add__, __radd__ = _binary_operator("ADD", np.add)
    __sub__, __rsub__ = _binary_operator("SUB", np.subtract)
    __mul__, __rmul__ = _binary_operator("MUL", np.multiply)
    __truediv__, __rtruediv__ = _binary_operator("DIV", np.true_divide)
    __floordiv__, __rfloordiv__ = _binary_operator("FLOOR_DIVIDE", np.floor_divide)
    __mod__, __rmod__ = _binary_operator("MOD", np.remainder)
    __pow__, __rpow__ = _binary_operator("POW", np.power)
    __lt__, __gt__ = _binary_operator("LESS", np.less)
    __le__, __ge__ = _binary_operator("LESS_EQUAL", np.less_equal)
    __eq__, _ = _binary_operator("EQUAL", np.equal)
    __ne__, _ = _binary_operator("NOT_EQUAL", np.not_equal)
    def __matmul__(self, o): return np.matmul(self, o)
    def __rmatmul__(self, o): return np.matmul(o, self)
    def __neg__(self): return elementwise("NEG", self)
    def __pos__(self): return self
    def __round__(self, ndigits=None): return _rules._round(self, ndigits or 0)
    def __divmod__(self, o): return np.floor_divide(self, o), np.remainder(self, o)
    def __rdivmod__(self, o): return np.floor_divide(o, self), np.remainder(o, self)
    def __abs__(self): return elementwise("ABS", self)
    def __and__(self, o): return np.logical_and(self, o)
    def __rand__(self, o): return np.logical_and(o, self)
    def __or__(self, o): return np.logical_or(self, o)
    def __ror__(self, o): return np.logical_or(o, self)
    def __xor__(self, o): return np.logical_xor(self, o)
    def __rxor__(self, o): return np.logical_xor(o, self)
    def __invert__(self): return np.logical_not(self)

    __hash__ = None


def _check_key(key):
    """The key as NumPy takes it: a traced mask (a comparison's or a logical op's result)
    becomes its truth values at the trace point, guarded (``x[x > 0]``, ``y[y < 0] = 0``);
    any other traced value in a key is refused."""
    if isinstance(key, Array):
        if not _is_mask(key):
            _refuse_index()
        return key._truths(_refuse_mask)
    if isinstance(key, tuple):
        return tuple(_check_key(p) for p in key)
    if isinstance(key, list) and any(isinstance(q, Array) for q in key):
        _refuse_index()        # a list holding traced values: not a mask NumPy would take
    return key


def _refuse_index():
    _fail("a traced value was used as an index (the selected elements would depend on "
          "values not known while tracing)",
          "index with constant integers or masks, or with a mask made by a comparison of "
          "traced values (x[x > 0]); for a value-dependent choice use np.where(condition, "
          "a, b)")


def _refuse_mask():
    _fail("a traced mask was used as an index (the selected elements depend on values not "
          "known while tracing, and this trace has no point: control_flow=\"error\")",
          "compile with the default control_flow=\"guard\", which takes the mask at each "
          "point, or keep the shape fixed with np.where(mask, a, b)")


#: ops whose result is a truth value (0.0 or 1.0): comparisons; logical and/or of truth
#: values are MUL/MAXIMUM/MINIMUM of them (numpy_rules' logical ops)
_MASK_OPS = frozenset(OPS[n] for n in ("LESS", "LESS_EQUAL", "GREATER", "GREATER_EQUAL",
                                       "EQUAL", "NOT_EQUAL"))
_MASK_JOINS = frozenset(OPS[n] for n in ("MUL", "MAXIMUM", "MINIMUM"))


def _is_mask(a):
    """Whether every element of the traced array a is a truth value by construction: what
    NumPy would hold in a bool array (a mask), never a float that happens to be 0 or 1."""
    g = a.graph
    memo = {}

    def mask(node, imm_flag=False, imm=0.0):
        if imm_flag:
            return imm in (0.0, 1.0)
        if node in memo:
            return memo[node]
        word, x, y, _, value = g.node(node)
        if word == KIND_CONST:
            ok = value in (0.0, 1.0)
        elif word in (KIND_INPUT, KIND_BLOCK):
            ok = False
        else:
            op = word & _OP_MASK
            if op in _MASK_OPS:
                ok = True
            elif op in _MASK_JOINS:
                ok = (mask(x, bool(word & _A_IMM), value)
                      and mask(y, bool(word & _B_IMM), value))
            else:
                ok = False
        memo[node] = ok
        return ok

    return all(mask(int(i)) for i in np.unique(np.asarray(a.ids)).tolist())


# ------------------------------------------------------- id conversion --

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


_SCALARS = (float, int, np.floating, np.integer)


def _ids(graph, v):
    """Node ids (int64 array or NumPy int64 scalar) of an Array, a constant, or a
    (nested) list or object array of traced values and numbers."""
    if type(v) is Array:
        if v.graph is not graph:
            raise TracingError("jacext: a traced array from another trace was used here; "
                               "each jacext.compile traces with its own arrays")
        return v.ids
    if isinstance(v, _SCALARS) and not isinstance(v, (bool, np.bool_)):
        return np.int64(graph.const(v))
    if isinstance(v, (list, tuple)) and _graph_of(v) is not None:
        # as np.asarray would: equal shapes stack, ragged ones are an error
        return np.array([_ids(graph, e) for e in v], dtype=np.int64)
    if isinstance(v, np.ndarray) and v.dtype == object:
        flat = v.ravel()
        out = np.empty(flat.shape[0], dtype=np.int64)
        for k, e in enumerate(flat.tolist()):
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


def elementwise(op, *operands, graph=None):
    """One graph op over the broadcast operands: the heart of bulk tracing.

    op: an op name of the C table.  A scalar operand is broadcast inside
    Graph.apply (no id array is made for it); other shapes by NumPy.

    >>> import numpy as np, jacext as jx
    >>> from jacext.trace import elementwise
    >>> F = jx.compile(lambda x: elementwise("HYPOT", x, 4.0), np.zeros(2))
    >>> F(np.array([3.0, 0.0]))
    array([5., 4.])
    """
    g = graph if graph is not None else _graph_of(operands)
    code = OPS[op]
    if len(operands) == 1:
        a = _ids(g, operands[0])
        return Array(g, g.apply(code, a.ravel()).reshape(a.shape))
    if len(operands) == 2:
        a = _ids(g, operands[0])
        b = _ids(g, operands[1])
        sa, sb = a.shape, b.shape
        if sa == sb or not sb:
            shape = sa
        elif not sa:
            shape = sb
        else:
            a, b = np.broadcast_arrays(a, b)
            shape = a.shape
        return Array(g, g.apply(code, a.ravel(), b.ravel()).reshape(shape))
    # SELECT: condition, if-true, if-false
    ids = np.broadcast_arrays(*[_ids(g, o) for o in operands])
    cond, x, y = (i.ravel() for i in ids)
    return Array(g, g.apply(code, x, y, cond).reshape(ids[0].shape))


# ---------------------------------------------------------------- tracing --

def trace(f, arg_shapes, guards=None):
    """Run f on symbolic arrays of these shapes.

    ``guards``: a :class:`Guards` holding the trace point (the arguments' values,
    flattened and concatenated), which records where Python asked for a concrete
    value; None: such a question is a TracingError.  Arrays made inside ``f`` by
    NumPy's constructors trace either way (``jacext.buffers``).

    Returns (graph, input id arrays, output id arrays, output shapes, out_is_tuple).

    >>> import numpy as np
    >>> from jacext.trace import trace
    >>> g, inputs, outputs, shapes, is_tuple = trace(lambda x: np.sin(x[:2]), [(3,)])
    >>> [i.shape for i in inputs], shapes, is_tuple
    ([(3,)], ((2,),), False)
    """
    g = Graph()
    inputs = []
    args = []
    for shape in arg_shapes:
        size = int(np.prod(shape, dtype=np.int64))
        ids = g.inputs(size)
        inputs.append(ids)
        args.append(Array(g, ids.copy().reshape(shape)))
    if guards is not None:
        guards.graph = g
    with guards if guards is not None else contextlib.nullcontext(), buffers.tracing(g):
        try:
            result = f(*args)
        except (ValueError, TypeError) as exc:
            better = explain_failure(exc)     # the TracingError that says what and where
            if better is None:
                raise
            raise better from (None if isinstance(exc.__cause__ or exc.__context__,
                                                  TracingError) else exc)
    is_tuple = isinstance(result, (tuple, list))
    outs = tuple(result) if is_tuple else (result,)
    out_ids = []
    for k, r in enumerate(outs):
        if r is None or isinstance(r, (str, bytes, dict)):
            raise TypeError(f"jacext: {getattr(f, '__name__', 'f')} returned {type(r).__name__} "
                            f"as output {k}; return arrays, numbers, or a tuple of them")
        out_ids.append(np.asarray(_ids(g, r), dtype=np.int64))
    return g, inputs, out_ids, tuple(o.shape for o in out_ids), is_tuple


# ------------------------------------------------------- the NumPy rules --
# Import cycle: numpy_rules lowers NumPy calls onto Array, _ids and elementwise, so
# it imports them from this module, and Array's methods call its lowerings.  So it
# is imported last, once all it needs exists (jacext/__init__.py imports this
# module first), and the methods look the lowerings up on it when called.
from jacext import numpy_rules as _rules  # noqa: E402

FUNCTIONS = _rules.FUNCTIONS
supported = _rules.supported

__all__ = ["Array", "FUNCTIONS", "elementwise", "supported", "trace"]
