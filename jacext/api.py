"""The public entry points: jacobian (one-shot, cached) and compile."""
from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from jacext.arguments import as_real_array as _as_real_array
from jacext.compile import compile_function

_CACHE_SIZE = 256
_cache: OrderedDict = OrderedDict()
_cache_lock = threading.Lock()


def compile(f, *args, name=None, control_flow="guard"):
    """Trace ``f`` at the shapes of ``args`` and compile it: a :class:`Function`.

    Their values are not baked in.  Python control flow on traced values (``if x[0] >
    0``, ``max(a, b)``, ``float(x)``) takes its branch at ``args`` and records a guard;
    a later point that takes another branch is traced again there, and the result (a
    :class:`jacext.guarded.GuardedFunction`) keeps a tape per branch outcome and gives
    every point its own branch's exact derivative.  ``control_flow="error"`` refuses
    such code with a TracingError that names the line and the fix (one tape, whatever
    the point).  The
    arguments reach ``f`` as symbolic arrays (:class:`jacext.Array`), so ``f``
    is plain NumPy code.  Arrays that ``f`` reads from outside its arguments
    (globals, closures, defaults) are constants captured when it is traced, as
    with ``jax.jit``: compile again after changing them.

    >>> import numpy as np, jacext as jx
    >>> F = jx.compile(lambda x: np.sin(x) * x, np.zeros(3))
    >>> F.jacobian(np.array([0.0, 1.0, 2.0])).shape
    (3, 3)
    """
    if not callable(f):
        raise TypeError(f"jacext.compile: f must be callable; got {type(f).__name__}")
    if not args:
        raise TypeError("jacext.compile: pass example arguments after f, e.g. "
                        "jx.compile(f, x) (their shapes are traced)")
    arrays = tuple(_as_real_array(a, k) for k, a in enumerate(args))
    shapes = tuple(a.shape for a in arrays)
    return compile_function(f, shapes, name=name, point=arrays, control_flow=control_flow)


def _closure_key(f):
    """Identity of what f reads besides its arguments (closure cells, defaults)."""
    func = getattr(f, "__func__", f)
    owner = getattr(f, "__self__", None)
    cells = getattr(func, "__closure__", None) or ()
    contents = []
    for c in cells:
        try:
            contents.append(c.cell_contents)
        except ValueError:   # an empty cell
            contents.append(None)
    defaults = tuple(getattr(func, "__defaults__", None) or ())
    kwdefaults = tuple((getattr(func, "__kwdefaults__", None) or {}).values())
    keep = (func, owner, tuple(contents), defaults, kwdefaults)
    key = (id(func), id(owner), getattr(func, "__code__", None),
           tuple(id(c) for c in contents), tuple(id(d) for d in defaults),
           tuple(id(d) for d in kwdefaults))
    return key, keep


def _cached_function(f, shapes, point):
    key, keep = _closure_key(f)
    key = key + (shapes,)
    with _cache_lock:
        entry = _cache.get(key)
        if entry is not None:
            _cache.move_to_end(key)
            return entry[0]
    F = compile_function(f, shapes, point=point)
    with _cache_lock:
        # the entry holds f and what it closes over, so their ids stay unique
        _cache[key] = (F, keep)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return F


_recent: dict = {}


def _captured(f):
    func = getattr(f, "__func__", f)
    cells = tuple(_cell_value(c) for c in (getattr(func, "__closure__", None) or ()))
    return (getattr(func, "__code__", None), cells, getattr(func, "__defaults__", None),
            getattr(func, "__kwdefaults__", None))


def _cell_value(cell):
    try:
        return cell.cell_contents
    except ValueError:
        return None


def _remember(f, shape, F):
    try:
        with _cache_lock:
            if len(_recent) >= _CACHE_SIZE:
                _recent.clear()
            _recent[(f, shape)] = (F,) + _captured(f)
    except TypeError:   # an unhashable callable: the slower cache still serves it
        pass


def _still_valid(f, hit):
    """Same code, the same objects in the closure cells and defaults as when traced."""
    code, cells, defaults, kwdefaults = _captured(f)
    return (code is hit[1] and defaults is hit[3] and kwdefaults is hit[4]
            and len(cells) == len(hit[2]) and all(a is b for a, b in zip(cells, hit[2])))


def jacobian(f, inputs, *, mode="auto", cache=True):
    """The Jacobian of ``f`` at ``inputs``: a drop-in for torch's functional jacobian.

    ``inputs`` is an array (result: an array of shape f(x).shape + x.shape) or
    a tuple of arrays (result: a tuple of Jacobians, one per input).  A tuple
    output gives a tuple over outputs (of tuples over inputs), as torch nests.

    The compiled tape is cached, keyed on the function object, its code, the
    objects its closure cells and defaults hold, and the input shapes; a new
    closure is traced anew.  Arrays that ``f`` reads from outside its
    arguments are constants captured when it is traced (as with ``jax.jit``):
    mutating such an array in place is not seen by the cached tape, so pass
    ``cache=False`` to retrace, or pass the array as an argument.
    """
    if cache and type(inputs) is np.ndarray:
        # the common call, one array: a dict probe and identity checks only
        hit = _recent.get((f, inputs.shape))
        if hit is not None and _still_valid(f, hit):
            return hit[0].jacobian(inputs, mode=mode)
    is_tuple = isinstance(inputs, tuple)
    if isinstance(inputs, list) and any(isinstance(a, np.ndarray) and a.ndim > 0
                                        for a in inputs):
        raise TypeError("jacext.jacobian: inputs is a list of arrays; pass a tuple "
                        "(x, y) for several inputs (as torch's jacobian takes them), or one "
                        "array (np.stack(inputs)) for one input")
    args = inputs if is_tuple else (inputs,)
    arrays = tuple(_as_real_array(a, k) for k, a in enumerate(args))
    shapes = tuple(a.shape for a in arrays)
    if cache:
        F = _cached_function(f, shapes, arrays)
        if not is_tuple:
            _remember(f, shapes[0], F)
    else:
        F = compile_function(f, shapes, point=arrays)
    if is_tuple:
        return F.jacobian(*arrays, argnums=tuple(range(len(arrays))), mode=mode)
    return F.jacobian(arrays[0], mode=mode)


def clear_cache():
    """Forget every cached tape of :func:`jacobian`."""
    with _cache_lock:
        _cache.clear()
        _recent.clear()


__all__ = ["clear_cache", "compile", "jacobian"]
