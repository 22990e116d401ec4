"""Dask arrays: a compiled Function's values, Jacobians, jvp and vjp, block by block, lazily.

A dask array's leading axes are the batch (chunked along them as you like); its trailing
axes, the traced shape, are rechunked to one chunk where they are not.  Each result is a
dask array made by ``dask.array.blockwise`` (``map_blocks`` for several arguments): one
task per block of points, each a batch call of the Function, so nothing is computed until
you ask, and the same graph runs on the threaded scheduler or on ``dask.distributed``.

The Function travels in the graph as its pickle (its tape's arrays, never the Python
function: nothing is traced again) under a token; each process unpickles it once and
keeps it, so a worker builds the Function's plans and Jacobian tape once for all blocks
and all later graphs.  Jacobian blocks run on one thread each unless ``threads=`` asks
for more (``None``, the default, means one here): dask's workers are the parallelism.

``F(X)``, ``F.jacobian(X)`` (dense, or ``sparse=True``: a
:class:`~jacext.sparse.SparseJacobians` whose ``values`` are a dask array),
``F.value_and_jacobian(X)``, ``F.jvp`` and ``F.vjp`` hand a dask array here; the functions
below are the same calls by name.  NumPy arrays may stand beside dask arrays (parameters
shared by every point, or batches that dask aligns with the others' chunks).  Dask is an
optional extra: ``pip install jacext[dask]``.

>>> import numpy as np, dask.array as da, jacext as jx
>>> F = jx.compile(lambda x: np.sin(x) * x[::-1], np.zeros(3))
>>> X = da.random.default_rng(0).uniform(size=(1000, 3), chunks=(250, 3))
>>> J = F.jacobian(X)                   # lazy: a dask array, one task per block
>>> J.shape, J.chunks[0]
((1000, 3, 3), (250, 250, 250, 250))
>>> bool(np.array_equal(J.compute(), F.jacobian(X.compute())))
True
"""
from __future__ import annotations

import itertools
import math
import pickle
import threading
import uuid
from collections import OrderedDict
from typing import Any

import numpy as np

_KEEP = 64
_lock = threading.Lock()
_shipped: OrderedDict = OrderedDict()   # id(F) -> (F, _Shipped): what this process sends
_loaded: OrderedDict = OrderedDict()    # token -> Function: what this process holds
_n_loaded = [0]


def _dask_array():
    try:
        import dask.array as da
    except ImportError:    # pragma: no cover - only without dask
        raise ImportError("jacext.dask needs dask: pip install 'jacext[dask]' (or "
                          "pip install 'dask[array]')") from None
    return da


def is_dask(values: tuple) -> bool:
    """Whether any of these values is a dask collection (without importing dask).

    >>> import numpy as np, dask.array as da, jacext.dask
    >>> jacext.dask.is_dask((np.ones(3), da.ones(3))), jacext.dask.is_dask((np.ones(3),))
    (True, False)
    """
    for v in values:
        if type(v) is not np.ndarray:
            if hasattr(type(v), "__dask_graph__"):
                return True
            if isinstance(v, (tuple, list)) and is_dask(tuple(v)):
                return True
    return False


class _Shipped:
    """A Function as a graph carries it: a token and its pickle.  Unpickling one makes no
    Function; :meth:`function` does, once per process and token."""

    __slots__ = ("token", "payload")

    def __init__(self, token: str, payload: bytes):
        self.token = token
        self.payload = payload

    def __reduce__(self):
        return (_Shipped, (self.token, self.payload))

    def function(self):
        F = _loaded.get(self.token)
        if F is None:
            with _lock:
                F = _loaded.get(self.token)
                if F is None:
                    F = pickle.loads(self.payload)
                    _n_loaded[0] += 1
                    _remember(_loaded, self.token, F)
        return F


def _remember(table: OrderedDict, key, value) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > _KEEP:
        table.popitem(last=False)


def _ship(F) -> _Shipped:
    with _lock:
        hit = _shipped.get(id(F))
        if hit is not None and hit[0] is F:
            return hit[1]
        shipped = _Shipped(uuid.uuid4().hex, pickle.dumps(F, protocol=pickle.HIGHEST_PROTOCOL))
        _remember(_shipped, id(F), (F, shipped))
        _remember(_loaded, shipped.token, F)     # this process already holds it
    return shipped


def functions_loaded() -> int:
    """How many Functions this process has unpickled from dask graphs (one per Function:
    later blocks and later graphs reuse it).  Run it on workers with ``client.run``.

    >>> import jacext.dask
    >>> jacext.dask.functions_loaded() >= 0
    True
    """
    return _n_loaded[0]


# ------------------------------------------------------------- the blocks --

class _BlockCall:
    """The task function of one call's graph: a batch call of the Function on one block
    of points, returned as one array (the result's block itself, or its arrays' columns
    side by side).  Picklable: this module's class, the shipped Function, the settings."""

    def __init__(self, shipped: _Shipped, kind: str, n_args: int, opts: dict, layout: str,
                 shapes: tuple):
        self.shipped = shipped
        self.kind = kind
        self.n_args = n_args
        self.opts = opts
        self.layout = layout
        self.shapes = shapes       # the traced shapes of the operands (arguments, seeds)

    def __dask_tokenize__(self):
        return (self.shipped.token, self.kind, self.n_args, sorted(self.opts.items()),
                self.layout, self.shapes)

    def __call__(self, *blocks):
        F = self.shipped.function()
        kind, n = self.kind, self.n_args
        args, rest = blocks[:n], blocks[n:]
        if kind == "value":
            result = F(*args)
        elif kind == "jacobian":
            result = F.jacobian(*args, **self.opts)
            if self.opts.get("sparse"):
                return result.values
        elif kind == "value_and_jacobian":
            result = F.value_and_jacobian(*args, **self.opts)
        elif kind == "jvp":
            result = F.jvp(*args, tuple(rest) if n > 1 else rest[0])
        else:
            result = F.vjp(*args, tuple(rest) if F.out_is_tuple else rest[0])
        if self.layout == "whole":
            return result
        batch = tuple(np.broadcast_shapes(*[b.shape[:b.ndim - len(s)]
                                            for b, s in zip(blocks, self.shapes)]))
        parts = [np.reshape(a, batch + (-1,)) for a in _leaves(result)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)


def _leaves(result) -> list:
    if isinstance(result, tuple):
        return [leaf for r in result for leaf in _leaves(r)]
    return [result]


# ------------------------------------------------------------ the graphs --

def _operands(F, values: tuple, shapes: tuple, what: str):
    """dask operands for blockwise: (array, index) pairs, and the batch shape and chunks."""
    da = _dask_array()
    arrays, batch_ndims = [], []
    for k, (v, want) in enumerate(zip(values, shapes)):
        a = v if hasattr(type(v), "__dask_graph__") else da.asarray(np.asarray(v))
        if a.dtype.kind not in "biuf":
            raise TypeError(f"jacext: {what} {k} of {F.name} must be real numbers; got dtype "
                            f"{a.dtype}")
        nd = len(want)
        if a.ndim < nd or tuple(a.shape[a.ndim - nd:]) != tuple(want):
            raise ValueError(f"jacext: {what} {k} of {F.name} must have shape {tuple(want)} "
                             f"(or (..., {', '.join(map(str, want))}) for a batch); got "
                             f"shape {tuple(a.shape)}")
        if a.dtype != np.float64:
            a = a.astype(np.float64)
        trailing = {ax: -1 for ax in range(a.ndim - nd, a.ndim)
                    if len(a.chunks[ax]) > 1}
        if trailing:
            a = a.rechunk(trailing)
        arrays.append(a)
        batch_ndims.append(a.ndim - nd)
    return arrays, batch_ndims


def _run(F, kind: str, args: tuple, extra: tuple = (), extra_shapes: tuple = (),
         opts: dict | None = None):
    """The blockwise graph of one call, and its result as the call's structure."""
    da = _dask_array()
    opts = dict(opts or {})
    if opts.get("threads", 1) is None:
        opts["threads"] = 1      # dask's workers are the parallelism
    if len(args) != len(F.arg_shapes):
        raise TypeError(f"jacext: {F.name} was compiled for {len(F.arg_shapes)} argument(s); "
                        f"got {len(args)}")
    shapes = tuple(F.arg_shapes) + tuple(extra_shapes)
    arrays, batch_ndims = _operands(F, tuple(args) + tuple(extra), shapes, "argument")
    depth = max(batch_ndims)
    if depth == 0:
        raise ValueError("jacext: a dask array's leading axes are the batch, and these "
                         "arguments have none: pass NumPy arrays for a single point")
    batch_idx = tuple(f"b{j}" for j in range(depth))
    pairs: list = []
    for k, (a, b) in enumerate(zip(arrays, batch_ndims)):
        pairs += [a, batch_idx[depth - b:] + tuple(f"a{k}.{j}" for j in range(a.ndim - b))]
    batch_shape = tuple(np.broadcast_shapes(*[a.shape[:b]
                                              for a, b in zip(arrays, batch_ndims)]))
    structure = _structure(F, kind, opts)
    sparse = kind == "jacobian" and opts.get("sparse")
    if sparse:
        pattern = F.sparsity(opts.get("argnums", 0))
        trailing, layout = (int(pattern.nnz),), "whole"
    elif structure is None:
        # one output (and one argument): the block is the result's block itself
        trailing, layout = _single_shape(F, kind, opts), "whole"
    else:
        trailing, layout = (sum(math.prod(s) for s in _flat_shapes(structure)),), "flat"
    out_idx = batch_idx + tuple(f"o{j}" for j in range(len(trailing)))
    func = _BlockCall(_ship(F), kind, len(args), opts, layout, shapes)
    result = da.blockwise(func, out_idx, *pairs,
                          new_axes={f"o{j}": n for j, n in enumerate(trailing)},
                          concatenate=True, dtype=np.float64,
                          meta=np.empty((0,) * len(out_idx)), token=f"jacext-{kind}")
    if sparse:
        from jacext.sparse import SparseJacobians
        return SparseJacobians(pattern, result)
    if layout == "whole":
        return result
    return _split(result, structure, batch_shape)


# ---------------------------------------------------- result structures --
# A structure is a shape (one array) or a tuple of structures, in the order _block lays
# the arrays out.

def _structure(F, kind: str, opts: dict):
    argnums = opts.get("argnums", 0)
    multi = not isinstance(argnums, (int, np.integer))
    nums = tuple(argnums) if multi else (argnums,)
    outs = tuple(F.out_shapes) if F.out_is_tuple else F.out_shapes[0]
    args = tuple(F.arg_shapes) if len(F.arg_shapes) > 1 else F.arg_shapes[0]

    def jac():
        per_out = []
        for o in F.out_shapes:
            per_arg = tuple(o + F.arg_shapes[k] for k in nums)
            per_out.append(per_arg if multi else per_arg[0])
        return tuple(per_out) if F.out_is_tuple else per_out[0]
    if kind == "value":
        s = outs
    elif kind == "jacobian":
        s = jac()
    elif kind == "value_and_jacobian":
        return (outs, jac())
    elif kind == "jvp":
        return (outs, outs)
    else:
        return (outs, args)
    return None if _is_shape(s) else s


def _single_shape(F, kind, opts):
    if kind == "value":
        return tuple(F.out_shapes[0])
    return tuple(F.out_shapes[0]) + tuple(F.arg_shapes[opts.get("argnums", 0)])


def _is_shape(s) -> bool:
    return isinstance(s, tuple) and all(isinstance(d, int) for d in s)


def _flat_shapes(structure) -> list:
    if _is_shape(structure):
        return [structure]
    return [s for part in structure for s in _flat_shapes(part)]


def _split(flat, structure, batch_shape):
    """The flat result's columns as the structure's dask arrays (slices: still lazy)."""
    starts = itertools.accumulate([0] + [math.prod(s) for s in _flat_shapes(structure)])
    cuts = list(starts)
    position = [0]

    def build(s):
        if _is_shape(s):
            k = position[0]
            position[0] += 1
            return flat[..., cuts[k]:cuts[k + 1]].reshape(batch_shape + s)
        return tuple(build(part) for part in s)
    return build(structure)


# ----------------------------------------------------------- the calls --

def call(F, *args) -> Any:
    """``F(*args)`` with dask arrays: a dask array (or a tuple of them), lazy.

    >>> import numpy as np, dask.array as da, jacext as jx, jacext.dask
    >>> F = jx.compile(lambda x: x ** 2, np.zeros(2))
    >>> jacext.dask.call(F, da.ones((4, 2), chunks=2)).compute()
    array([[1., 1.],
           [1., 1.],
           [1., 1.],
           [1., 1.]])
    """
    return _run(F, "value", args)


def jacobian(F, *args, argnums=0, mode: str = "auto", sparse: bool = False,
             threads: int | None = None) -> Any:
    """``F.jacobian(*args, ...)`` with dask arrays: lazy dask arrays of the same nesting;
    with ``sparse=True`` a SparseJacobians whose ``values`` are a dask array.

    >>> import numpy as np, dask.array as da, jacext as jx, jacext.dask
    >>> F = jx.compile(lambda x: x ** 2, np.zeros(2))
    >>> JS = jacext.dask.jacobian(F, da.ones((4, 2), chunks=2), sparse=True)
    >>> JS.values.compute()[0]                 # the diagonal 2 x at the first point
    array([2., 2.])
    """
    opts = {"argnums": argnums, "mode": mode, "threads": threads}
    if sparse:
        opts["sparse"] = True
    return _run(F, "jacobian", args, opts=opts)


def value_and_jacobian(F, *args, argnums=0, mode: str = "auto",
                       threads: int | None = None) -> Any:
    """``F.value_and_jacobian(*args, ...)`` with dask arrays, lazy.

    >>> import numpy as np, dask.array as da, jacext as jx, jacext.dask
    >>> F = jx.compile(lambda x: np.sum(x ** 2), np.zeros(2))
    >>> y, J = jacext.dask.value_and_jacobian(F, da.ones((3, 2), chunks=1))
    >>> y.compute(), J.compute()[0]
    (array([2., 2., 2.]), array([2., 2.]))
    """
    return _run(F, "value_and_jacobian", args,
                opts={"argnums": argnums, "mode": mode, "threads": threads})


def jvp(F, *args) -> Any:
    """``F.jvp(*args, tangents)`` with dask arrays: (value, J @ tangents), lazy.

    >>> import numpy as np, dask.array as da, jacext as jx, jacext.dask
    >>> F = jx.compile(lambda x: x ** 2, np.zeros(2))
    >>> y, ydot = jacext.dask.jvp(F, da.ones((3, 2), chunks=1), np.array([1.0, 0.0]))
    >>> ydot.compute()[0]
    array([2., 0.])
    """
    tangents = args[-1]
    tangents = tuple(tangents) if len(F.arg_shapes) > 1 else (tangents,)
    return _run(F, "jvp", args[:-1], tangents, tuple(F.arg_shapes))


def vjp(F, *args) -> Any:
    """``F.vjp(*args, cotangent)`` with dask arrays: (value, cotangent @ J), lazy.

    >>> import numpy as np, dask.array as da, jacext as jx, jacext.dask
    >>> F = jx.compile(lambda x: x ** 2, np.zeros(2))
    >>> y, xbar = jacext.dask.vjp(F, da.full((3, 2), 3.0, chunks=1), np.array([1.0, 1.0]))
    >>> xbar.compute()[0]
    array([6., 6.])
    """
    cot = args[-1]
    cot = tuple(cot) if F.out_is_tuple else (cot,)
    return _run(F, "vjp", args[:-1], cot, tuple(F.out_shapes))


__all__ = ["call", "functions_loaded", "is_dask", "jacobian", "jvp", "value_and_jacobian",
           "vjp"]
