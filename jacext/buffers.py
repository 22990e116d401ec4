"""Arrays that a traced function makes itself: NumPy's constructors while tracing.

``xx = np.zeros(n + 2); xx[1:-1] = x`` writes traced values into an array the
function made.  A NumPy array holds numbers only, so while a function is traced
(in the tracing thread only) NumPy's float64 constructors ``np.zeros``,
``np.ones``, ``np.empty``, ``np.full`` and their ``*_like`` of a constant return a
traced array of constants (np.empty's are zeros), into which any assignment
NumPy allows works with NumPy's semantics (slices, integer and boolean masks,
``+=``: ``Array.__setitem__`` is NumPy's own indexing on the id array).
``np.array``/``np.asarray`` of a list that mixes numbers and traced scalars
(``np.asarray([0.0, x[0]])``) is one traced array, not an object array.

Other dtypes, ``like=``, and calls from other threads go to NumPy itself.  The
constructors are wrapped only while some thread traces (a count under a lock),
and the wrappers look at the calling thread's trace, so other threads see
NumPy's results.  Code that bound a constructor before (``from numpy import
zeros``) gets NumPy's arrays; writing a traced value into one is a TracingError
that says so.
"""
from __future__ import annotations

import ast
import contextlib
import functools
import linecache
import sys
import threading

import numpy as np

_local = threading.local()
_lock = threading.Lock()
_users = 0
_originals: dict = {}
_F64 = np.dtype(np.float64)
_NP_FULL = np.full        # NumPy's own, for this module's use while they are wrapped
_NP_ASARRAY = np.asarray


def _graph():
    """The graph this thread traces, for a call that the traced code itself writes
    (``np.zeros(...)`` in its source); jacext's, NumPy's and SciPy's own calls get
    NumPy's arrays, and so does compiled code: a C or Cython function that the traced
    code calls (``rng.normal(size=3)`` calls ``np.empty`` from Cython) would take a traced
    array for an ndarray and crash, so a call counts only where the source at the
    calling frame's current instruction is a call of a constructor."""
    stack = getattr(_local, "stack", None)
    if not stack:
        return None
    frame = sys._getframe(2)
    caller = frame.f_globals.get("__name__", "")
    if caller.startswith(("jacext.", "numpy.", "scipy.")) or caller in ("numpy", "scipy"):
        return None
    if not _calls_a_constructor(frame.f_code, frame.f_lasti, frame.f_lineno):
        return None
    return stack[-1]


_CONSTRUCTORS = frozenset(("zeros", "ones", "empty", "full", "zeros_like", "ones_like",
                           "empty_like", "full_like", "array", "asarray"))


def _called_name(func):
    return func.id if isinstance(func, ast.Name) else (
        func.attr if isinstance(func, ast.Attribute) else None)


@functools.lru_cache(maxsize=4096)
def _calls_a_constructor(code, lasti, lineno):
    """Whether the instruction at ``lasti`` of ``code`` calls one of NumPy's constructors
    by name (``np.zeros(n)``, ``zeros(n)``), read from the source: the call expression's
    span (Python 3.11+ records one per instruction); on 3.10, the line, when every call
    on it is a constructor's.  No source, no span, or anything else: False (NumPy's own
    array, never a crash)."""
    lines = linecache.getlines(code.co_filename)
    if not lines:
        return False
    try:
        if hasattr(code, "co_positions"):
            line, end, col, end_col = list(code.co_positions())[lasti // 2]
            if None in (line, end, col, end_col) or end > len(lines):
                return False
            # the columns count UTF-8 bytes
            text = [b.encode() for b in lines[line - 1:end]]
            text[-1] = text[-1][:end_col]
            text[0] = text[0][col:]
            node = ast.parse("(" + b"".join(text).decode() + ")", mode="eval").body
            return isinstance(node, ast.Call) and _called_name(node.func) in _CONSTRUCTORS
        calls = [n for n in ast.walk(ast.parse(lines[lineno - 1].strip()))
                 if isinstance(n, ast.Call)]
        return bool(calls) and all(_called_name(c.func) in _CONSTRUCTORS for c in calls)
    except (SyntaxError, ValueError, IndexError, UnicodeDecodeError):
        return False


def _is_float(dtype):
    if dtype is None:
        return True
    try:
        return np.dtype(dtype) == _F64
    except TypeError:
        return False


def _constant_array(g, values):
    from jacext.trace import Array
    values = _NP_ASARRAY(values, dtype=np.float64)
    return Array(g, g.consts(values.ravel()).reshape(values.shape))


def _make(name, fill):
    """np.zeros / ones / empty: (shape, dtype=float, order='C', *, like=None)."""
    original = getattr(np, name)

    @functools.wraps(original)
    def wrapper(shape, dtype=float, order="C", **kw):
        g = _graph()
        if g is None or kw or not _is_float(dtype):
            return original(shape, dtype, order, **kw)
        return _constant_array(g, _NP_FULL(shape, fill, dtype=np.float64))
    return original, wrapper


def _make_full():
    original = np.full

    @functools.wraps(original)
    def wrapper(shape, fill_value, dtype=None, order="C", **kw):
        g = _graph()
        if g is None or kw or not _is_float(dtype if dtype is not None else
                                            np.result_type(fill_value, np.float64)):
            return original(shape, fill_value, dtype, order, **kw)
        from jacext.trace import Array, _graph_of, _ids
        if _graph_of([fill_value]) is g or isinstance(fill_value, Array):
            return Array(g, np.broadcast_to(_ids(g, fill_value), shape).copy())
        if dtype is None and _NP_ASARRAY(fill_value).dtype.kind != "f":
            return original(shape, fill_value, dtype, order, **kw)
        return _constant_array(g, _NP_FULL(shape, fill_value, dtype=np.float64))
    return original, wrapper


def _make_like(name, fill):
    """np.zeros_like / ones_like / empty_like of a constant array (of a traced one,
    NumPy dispatches to the tracer itself)."""
    original = getattr(np, name)

    @functools.wraps(original)
    def wrapper(a, dtype=None, *args, **kw):
        from jacext.trace import Array, _graph_of
        g = _graph()
        proto = (_NP_ASARRAY(a) if g is not None and not isinstance(a, Array)
                 and _graph_of([a]) is None else None)
        if (g is None or args or kw or proto is None or proto.dtype == object
                or not _is_float(dtype if dtype is not None else proto.dtype)):
            return original(a, dtype, *args, **kw)
        return _constant_array(g, _NP_FULL(proto.shape, fill, dtype=np.float64))
    return original, wrapper


def _make_array(name):
    """np.array / np.asarray of lists that hold traced values: one traced array."""
    original = getattr(np, name)

    @functools.wraps(original)
    def wrapper(obj, dtype=None, *args, **kw):
        g = _graph()
        if g is not None and _is_float(dtype):
            from jacext.trace import Array, _graph_of, _ids
            if type(obj) is Array and obj.graph is g and not args and not kw:
                return obj if name == "asarray" else obj.copy()
            if isinstance(obj, (list, tuple)) and _graph_of(obj) is g:
                return Array(g, np.asarray(_ids(g, obj), dtype=np.int64))
        return original(obj, dtype, *args, **kw)
    return original, wrapper


def _wrappers():
    made = {name: _make(name, fill) for name, fill in
            (("zeros", 0.0), ("ones", 1.0), ("empty", 0.0))}
    made["full"] = _make_full()
    made.update({name: _make_like(name, fill) for name, fill in
                 (("zeros_like", 0.0), ("ones_like", 1.0), ("empty_like", 0.0))})
    made.update({name: _make_array(name) for name in ("array", "asarray")})
    return made


@contextlib.contextmanager
def tracing(graph):
    """While the block runs, this thread's constructor calls make traced arrays of
    ``graph``."""
    global _users
    with _lock:
        if _users == 0:
            for name, (original, wrapper) in _wrappers().items():
                _originals[name] = original
                setattr(np, name, wrapper)
        _users += 1
    if not hasattr(_local, "stack"):
        _local.stack = []
    _local.stack.append(graph)
    try:
        yield
    finally:
        _local.stack.pop()
        with _lock:
            _users -= 1
            if _users == 0:
                for name, original in _originals.items():
                    setattr(np, name, original)
                _originals.clear()
