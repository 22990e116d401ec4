"""The public entry points: jacobian, hessian and hvp (one-shot, cached) and compile."""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from jacext import transforms as _tf
from jacext._point import same_capture as _same_capture
from jacext.arguments import as_real_array as _as_real_array
from jacext.compile import compile_function
from jacext.pytree import tree_flatten as _tree_flatten
from jacext.transforms import ArgNums

_EMPTY_KW = _tree_flatten({})[1]

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
    if name is None:
        name = getattr(f, "__name__", type(f).__name__)
    return compile_function(_FlatOutputs(f, name), shapes, name=name, point=arrays,
                            control_flow=control_flow)


class _FlatOutputs:
    """f, refusing a nested output structure (a Function's outputs are an array or a flat
    tuple of arrays; a list of scalars is one array, as np.asarray makes it).  A class,
    not a closure, so that a guarded Function, which keeps f to trace it again at another
    branch, pickles whenever f does."""

    def __init__(self, f, name):
        self.f, self.__name__ = f, name

    def __call__(self, *args):
        result = self.f(*args)
        if isinstance(result, dict) or (isinstance(result, (tuple, list)) and any(
                isinstance(r, dict) or (isinstance(r, (tuple, list)) and not all(
                    getattr(v, "shape", ()) == () and not isinstance(v, (tuple, list, dict))
                    for v in r))
                for r in result)):
            raise TypeError(f"jacext.compile: {self.__name__} returned a nested structure "
                            f"({_tree_flatten(result)[1]!r}); a Function returns an array or "
                            "a flat tuple of arrays: return a flat tuple, or use jx.jacobian, "
                            "jx.jacfwd or jx.jacrev, which take pytrees")
        return result


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


_recent: dict = {}
_FunctionType = type(lambda: None)


def _captured(f):
    func = _func_of(f)
    cells = tuple(_cell_value(c) for c in (getattr(func, "__closure__", None) or ()))
    return (getattr(func, "__code__", None), cells, getattr(func, "__defaults__", None),
            getattr(func, "__kwdefaults__", None))


def _func_of(f):
    """The Python function behind f (a bound method's), else f: a type test first, since
    getattr's default costs a raised and caught AttributeError on a plain function."""
    if type(f) is _FunctionType:
        return f
    return getattr(f, "__func__", f)


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
    """Same code, the same objects in the closure cells and defaults as when traced: read
    in place in C where a Python function is behind f (``_point.same_capture``: a function,
    a bound method's), else from ``_captured``."""
    same = _same_capture(f, hit)
    if same is not None:
        return same
    code, cells, defaults, kwdefaults = _captured(f)
    return (code is hit[1] and defaults is hit[3] and kwdefaults is hit[4]
            and len(cells) == len(hit[2]) and all(a is b for a, b in zip(cells, hit[2])))


def jacobian(f: Callable, inputs: Any, *, argnums: ArgNums | None = None,
             mode: str = "auto", sparse: bool = False, threads: int | None = None,
             out: Any = None, cache: bool = True) -> Any:
    """The Jacobian of ``f`` at ``inputs``: a drop-in for torch's functional jacobian.

    ``inputs`` is an array (result: an array of shape f(x).shape + x.shape) or
    a tuple of arguments (result: a tuple of Jacobians, one per argument).  A tuple
    output gives a tuple over outputs (of tuples over arguments), as torch nests.

    An argument may be a pytree (``jacext/pytree.py``): a dict, or tuples and lists that
    hold arrays (a list or tuple of plain numbers is one array, as ``np.asarray`` makes
    it), and ``f`` may return one; the Jacobian then nests as ``jax.jacobian``'s: the
    output's structure outside, the argument's inside.  Torch tensors in give tensors
    out.  ``argnums`` (an int or a tuple) picks arguments of a tuple of ``inputs``;
    ``mode``, ``sparse``, ``threads`` and ``out`` are those of :meth:`Function.jacobian`.

    The compiled tape is cached, keyed on the function object, its code, the
    objects its closure cells and defaults hold, and the input shapes; a new
    closure is traced anew.  Arrays that ``f`` reads from outside its
    arguments are constants captured when it is traced (as with ``jax.jit``):
    mutating such an array in place is not seen by the cached tape, so pass
    ``cache=False`` to retrace, or pass the array as an argument.

    >>> import numpy as np, jacext as jx
    >>> jx.jacobian(lambda x: x ** 2, np.array([1.0, 2.0]))
    array([[2., 0.],
           [0., 4.]])
    >>> Jx, Jp = jx.jacobian(lambda x, p: p[0] * np.sin(x), (np.zeros(2), np.ones(1)))
    >>> Jx.shape, Jp.shape
    ((2, 2), (2, 1))
    >>> jx.jacobian(lambda d: d["a"] * d["b"], {"a": 2.0, "b": 3.0})
    {'a': array(3.), 'b': array(2.)}
    """
    if cache and type(inputs) is np.ndarray and (argnums is None or argnums == 0):
        # the common call, one array: a dict probe and identity checks only
        hit = _recent.get((f, inputs.shape))
        if hit is not None and (_same_capture(f, hit) if type(f) is _FunctionType
                                else _still_valid(f, hit)):
            if mode == "auto" and not sparse and threads is None:
                # no keywords where there is nothing to say: the Function's cheapest call
                return hit[0].jacobian(inputs) if out is None else hit[0].jacobian(
                    inputs, out=out)
            return hit[0].jacobian(inputs, mode=mode, sparse=sparse, threads=threads, out=out)
    is_tuple = type(inputs) is tuple
    args = inputs if is_tuple else (inputs,)
    if argnums is None:
        argnums = tuple(range(len(args))) if is_tuple else 0
    nums, multi = _tf._normalize_argnums(argnums, len(args), "jacobian")
    leaves, trees, tensors = [], [], []
    tensor_type = _tf._torch_tensor_type()
    for k, a in enumerate(args):
        raw, tree = _tree_flatten(a, is_leaf=_tf._number_sequence)
        trees.append(tree)
        paths = tree.paths()
        for j, leaf in enumerate(raw):
            if tensor_type is not None and isinstance(leaf, tensor_type):
                tensors.append(leaf)
            if type(leaf) is list or type(leaf) is tuple:
                leaf = _as_real_array(leaf, k)
            leaves.append(_tf.input_array(leaf, f"argument {k}{paths[j]}"))
    arg_trees = tuple(trees)
    shapes = tuple(a.shape for a in leaves)
    if cache:
        traced = _cached_trace(f, arg_trees, shapes, tuple(leaves))
        if type(inputs) is np.ndarray and traced.plain:
            _remember(f, shapes[0], traced.F)
    else:
        traced = _tf.trace(f, arg_trees, _EMPTY_KW, shapes, compile=compile_function,
                           point=tuple(leaves))
    leaf_nums = _tf.leaf_numbers(traced, nums)
    n = len(leaf_nums)
    plain = traced.plain and all(t.is_leaf for t in arg_trees)
    if plain and n:
        # the engine's own nesting: tuples over outputs, then over arguments
        result = traced.F.jacobian(*leaves, argnums=leaf_nums if multi else leaf_nums[0],
                                   mode=mode, sparse=sparse, threads=threads, out=out)
    else:
        jac = (traced.F.jacobian(*leaves, argnums=leaf_nums[0] if n == 1 else leaf_nums,
                                 mode=mode, sparse=sparse, threads=threads) if n else
               (tuple(() for _ in range(traced.n_out)) if traced.F.out_is_tuple else ()))
        result = _tf.nest_jacobian(traced, jac, nums, multi, n)
        if out is not None:
            result = _tf.copy_out(out, result)
    if tensors:
        from jacext import torch as _jt
        return _jt.to_tensors(result, tuple(tensors))
    return result


def _cached_trace(f, arg_trees, shapes, point):
    key, keep = _closure_key(f)
    key = key + ("trace", arg_trees, shapes)
    with _cache_lock:
        entry = _cache.get(key)
        if entry is not None:
            _cache.move_to_end(key)
            return entry[0]
    traced = _tf.trace(f, arg_trees, _EMPTY_KW, shapes, compile=compile_function, point=point)
    with _cache_lock:
        # the entry holds f and what it closes over, so their ids stay unique
        _cache[key] = (traced, keep)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return traced


def _cached_function(f, shapes):
    """The compiled Function of f at these argument shapes, cached as jx.jacobian's traces
    are (by f and what it closes over); jx.hessian and jx.hvp use it."""
    key, keep = _closure_key(f)
    key = key + ("function", shapes)
    with _cache_lock:
        entry = _cache.get(key)
        if entry is not None:
            _cache.move_to_end(key)
            return entry[0]
    F = compile_function(f, shapes)
    with _cache_lock:
        # the entry holds f and what it closes over, so their ids stay unique
        _cache[key] = (F, keep)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return F


def _compiled(f, arrays, cache):
    shapes = tuple(a.shape for a in arrays)
    return _cached_function(f, shapes) if cache else compile_function(f, shapes)


def hessian(f, inputs, *, cache=True):
    """The Hessian of ``f`` at ``inputs``: a drop-in for torch's functional hessian.

    ``inputs`` an array: shape x.shape + x.shape for a scalar ``f`` (out.shape +
    x.shape + x.shape for a vector ``f``, as ``jax.hessian``).  A tuple of arrays
    (scalar ``f``): a tuple of tuples of blocks, ``H[i][j]`` of shape
    inputs[i].shape + inputs[j].shape, as torch nests them.  Cached as :func:`jacobian`.

    >>> import numpy as np, jacext as jx
    >>> jx.hessian(lambda x: x[0] ** 2 * x[1], np.array([1.0, 2.0]))
    array([[4., 2.],
           [2., 0.]])
    """
    is_tuple = isinstance(inputs, tuple)
    args = inputs if is_tuple else (inputs,)
    arrays = tuple(_as_real_array(a, k) for k, a in enumerate(args))
    F = _compiled(f, arrays, cache)
    if not is_tuple:
        return F.hessian(arrays[0])
    nums = tuple(range(len(arrays)))
    blocks = F.grad_function(nums).jacobian(*arrays, argnums=nums)
    # symmetric to the last bit: the blocks on and below the diagonal, mirrored
    out = []
    for i in nums:
        row = []
        for j in nums:
            if j > i:
                b = blocks[j][i]
                row.append(np.ascontiguousarray(
                    b.reshape(arrays[j].size, arrays[i].size).T).reshape(
                        arrays[i].shape + arrays[j].shape))
            elif j == i:
                b = blocks[i][i].reshape(arrays[i].size, arrays[i].size)
                low = np.tril(b)
                row.append((low + np.tril(b, -1).T).reshape(arrays[i].shape * 2))
            else:
                row.append(blocks[i][j])
        out.append(tuple(row))
    return tuple(out)


def hvp(f, inputs, v, *, cache=True):
    """The Hessian of a scalar ``f`` at ``inputs`` (an array) times ``v``, never forming
    the Hessian (``Function.hvp``).  Cached as :func:`jacobian`.

    >>> import numpy as np, jacext as jx
    >>> jx.hvp(lambda x: x[0] ** 2 * x[1], np.array([1.0, 2.0]), np.array([1.0, 0.0]))
    array([4., 2.])
    """
    x = _as_real_array(inputs, 0)
    return _compiled(f, (x,), cache).hvp(x, v)


def clear_cache():
    """Forget every cached tape of :func:`jacobian`.

    >>> import numpy as np, jacext as jx, jacext.api
    >>> jacext.api.clear_cache()         # the next jx.jacobian traces again
    >>> jx.jacobian(lambda x: 2 * x, np.ones(1))
    array([[2.]])
    """
    with _cache_lock:
        _cache.clear()
        _recent.clear()


__all__ = ["clear_cache", "compile", "hessian", "hvp", "jacobian"]
