"""Transforms as JAX and torch.func users know them: jacfwd, jacrev, grad, value_and_grad.

Each takes a plain NumPy function and returns a callable.  On its first call at a given
input structure and shapes the callable traces the function and compiles it, as
``jax.jit`` does, and keeps the compiled Function for later calls of that structure and
those shapes; later calls run only the compiled tape.  Arguments and results are pytrees
(``jacext/pytree.py``: nested tuples, lists and dicts of arrays), each leaf one argument
or output of the compiled Function.

A trace sees only the shapes of the arguments, never their values, so Python control
flow on argument values cannot be recorded (``jx.TracingError`` says what to write
instead); arrays the function reads from outside its arguments are constants captured
at the first call.

Torch tensors are accepted anywhere a leaf is: the results are then tensors too
(``jacext/torch.py`` converts them).

Leading batch axes: with ``batch_dims=k`` the first k axes of every leaf are a batch of
points, evaluated point by point in C (the trace sees the trailing shapes); results get
the batch axes in front.  A tuple gives each positional argument its own count (0 for
parameters shared by every point); keyword arguments take an int ``batch_dims``, or 0.
"""
from __future__ import annotations

import functools
import numbers
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jacext.compile import compile_function
from jacext.pytree import LEAF, PyTreeDef, tree_flatten
from jacext.trace import Array

ArgNums = int | Sequence[int]

_TRACES_PER_TRANSFORM = 64
_FLOAT64 = np.dtype(np.float64)


# ---------------------------------------------------------------- inputs --

def _is_number(x: object) -> bool:
    return isinstance(x, (numbers.Real, np.bool_)) and not isinstance(x, np.ndarray)


def _torch_tensor_type():
    """torch.Tensor if torch has been imported by someone, else None (never imports it)."""
    torch = sys.modules.get("torch")
    return getattr(torch, "Tensor", None) if torch is not None else None


def input_array(leaf: Any, where: str) -> np.ndarray:
    """A float64 array from a leaf of an argument: an array or a number (or a tensor,
    converted by jacext.torch); anything else is a TypeError naming ``where``."""
    if type(leaf) is np.ndarray:
        arr = leaf
    elif _is_number(leaf):
        arr = np.asarray(leaf, dtype=np.float64)
    elif isinstance(leaf, Array):
        raise TypeError(f"jacext: {where} is a traced value: jacext's transforms do not nest "
                        "(jacfwd(jacrev(f)) and the like); compile the inner derivative "
                        "with jx.compile and differentiate the outer function by hand, or "
                        "use a Hessian once jacext has one")
    else:
        tensor = _torch_tensor_type()
        if tensor is not None and isinstance(leaf, tensor):
            from jacext import torch as _jt
            return _jt.tensor_to_array(leaf)
        if isinstance(leaf, (str, bytes)) or not hasattr(leaf, "__array__"):
            raise TypeError(f"jacext: {where} is a {type(leaf).__name__}; the leaves of a "
                            "pytree argument must be arrays or numbers (in tuples, lists, "
                            "dicts and None)")
        arr = np.asarray(leaf)
    kind = arr.dtype.kind
    if kind not in "biuf":
        what = "complex" if kind == "c" else f"of dtype {arr.dtype}"
        raise TypeError(f"jacext: {where} is {what}; jacext differentiates real float64 "
                        "arrays")
    return arr if arr.dtype == np.float64 else arr.astype(np.float64)


def is_array_like(x: Any) -> bool:
    """Whether an argument of jx.jacobian is one array in NumPy's sense (an array, a
    number, or nested lists/tuples of numbers), rather than a pytree of arrays."""
    t = type(x)
    if t is np.ndarray or _is_number(x):
        return True
    if t is list or t is tuple:
        return all(is_array_like(v) and type(v) is not np.ndarray for v in x)
    return False


def _number_sequence(x: Any) -> bool:
    """is_leaf for jx.jacobian's arguments: a list or tuple of numbers is one array."""
    return (type(x) is list or type(x) is tuple) and len(x) > 0 and is_array_like(x)


# --------------------------------------------------------------- outputs --

def _check_outputs(leaves: list, tree: PyTreeDef, what: str, name: str) -> None:
    for k, leaf in enumerate(leaves):
        if isinstance(leaf, (Array, np.ndarray, np.generic)) or _is_number(leaf):
            continue
        path = tree.paths()[k]
        raise TypeError(f"jacext: {name} returned a {type(leaf).__name__} as {what}{path}; "
                        "outputs must be arrays or numbers, in tuples, lists, dicts and None")


class Traced:
    """f compiled at one input structure and shape: the Function F of its leaves, the
    structures of the arguments and of the outputs (and aux), and A, the Function of the
    aux leaves where they are computed apart."""

    __slots__ = ("F", "A", "arg_trees", "kw_tree", "out_tree", "aux_tree", "plain",
                 "n_out")

    def __init__(self, F, A, arg_trees, kw_tree, out_tree, aux_tree):
        self.F = F
        self.A = A
        self.arg_trees = arg_trees
        self.kw_tree = kw_tree
        self.out_tree = out_tree
        self.aux_tree = aux_tree
        self.n_out = out_tree.num_leaves
        # the engine's own nesting is the result's: one output, or a flat tuple of outputs
        self.plain = out_tree.is_leaf or (out_tree.kind in (2, 3) and all(
            c.is_leaf for c in out_tree.children))


def trace(f: Callable, arg_trees: tuple, kw_tree: PyTreeDef, shapes: tuple,
          has_aux: bool = False, aux: str = "apart",
          compile: Callable = compile_function, point: tuple | None = None) -> Traced:
    """Compile ``f`` for arguments of these structures and leaf shapes.

    ``aux``: "apart" compiles the aux leaves into a Function of their own (a Jacobian
    then costs nothing for them); "joined" puts them after the outputs in F (one sweep
    gives all, as grad's vjp wants).  ``point``: the leaves' values at one point, where
    Python control flow takes its branches (guarded tapes; ``jacext/guarded.py``).
    """
    name = getattr(f, "__name__", type(f).__name__)
    trees: dict = {}

    def flat(which):
        def flat_f(*xs):
            args, pos = [], 0
            for t in arg_trees:
                args.append(t.unflatten(xs[pos:pos + t.num_leaves]))
                pos += t.num_leaves
            result = f(*args, **kw_tree.unflatten(xs[pos:]))
            if has_aux:
                if not isinstance(result, (tuple, list)) or len(result) != 2:
                    raise TypeError(f"jacext: with has_aux=True, {name} must return a pair "
                                    f"(output, aux); it returned a {type(result).__name__}")
                result, aux_value = result
            out_leaves, out_tree = tree_flatten(result)
            _check_outputs(out_leaves, out_tree, "output", name)
            if not out_leaves:
                raise TypeError(f"jacext: {name} returned no arrays ({out_tree!r})")
            trees["out"] = out_tree
            chosen = out_leaves
            if has_aux:
                aux_leaves, aux_tree = tree_flatten(aux_value)
                _check_outputs(aux_leaves, aux_tree, "aux", name)
                trees["aux"] = aux_tree
                if which == "aux":
                    return tuple(aux_leaves)
                if which == "joined":
                    chosen = out_leaves + aux_leaves
            if out_tree.is_leaf and len(chosen) == 1:
                return chosen[0]
            return tuple(chosen)
        flat_f.__name__ = name
        return flat_f

    F = compile(flat("joined" if aux == "joined" else "out"), shapes, name=name, point=point)
    A = None
    aux_tree = trees.get("aux")
    if has_aux and aux == "apart" and aux_tree.num_leaves:
        A = compile(flat("aux"), shapes, name=name + ".aux", point=point)
    return Traced(F, A, arg_trees, kw_tree, trees["out"], aux_tree)


# ------------------------------------------------------------ the calls --

def _normalize_argnums(argnums: ArgNums, n_args: int, name: str) -> tuple[tuple, bool]:
    multi = not isinstance(argnums, (int, np.integer))
    nums = tuple(argnums) if multi else (argnums,)
    out = []
    for k in nums:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
            raise TypeError(f"jacext.{name}: argnums must be an int or a tuple of ints; got "
                            f"{argnums!r}")
        k = int(k)
        if not -n_args <= k < n_args:
            raise ValueError(f"jacext.{name}: argnums {k} is out of range for {n_args} "
                             "positional argument(s)")
        out.append(k % n_args)
    return tuple(out), multi


def leaf_numbers(traced: Traced, nums: tuple) -> tuple:
    """The Function's argument numbers of the leaves of the positional arguments nums."""
    starts, pos = [], 0
    for t in traced.arg_trees:
        starts.append(pos)
        pos += t.num_leaves
    return tuple(i for k in nums
                 for i in range(starts[k], starts[k] + traced.arg_trees[k].num_leaves))


def nest_row(traced: Traced, row: Sequence, nums: tuple, multi: bool):
    """Derivatives of one output with respect to the selected leaves, as the arguments'
    structures (a tuple over argnums if several)."""
    parts, pos = [], 0
    for k in nums:
        t = traced.arg_trees[k]
        parts.append(t.unflatten(row[pos:pos + t.num_leaves]))
        pos += t.num_leaves
    return tuple(parts) if multi else parts[0]


def nest_jacobian(traced: Traced, jac, nums: tuple, multi: bool, n_leaves: int):
    """The engine's Jacobians (over output leaves, then selected leaves) as pytrees: the
    output's structure outside, a tuple over argnums if several, the argument's inside."""
    rows = jac if traced.F.out_is_tuple else (jac,)
    rows = [r if n_leaves != 1 else (r,) for r in rows[:traced.n_out]]
    return traced.out_tree.unflatten([nest_row(traced, r, nums, multi) for r in rows])


def nest_values(traced: Traced, value):
    """The Function's value (outputs, then any joined aux) as (output tree, aux tree)."""
    parts = value if traced.F.out_is_tuple else (value,)
    out = traced.out_tree.unflatten(list(parts[:traced.n_out]))
    aux = None
    if traced.aux_tree is not None and len(parts) > traced.n_out:
        aux = traced.aux_tree.unflatten(list(parts[traced.n_out:]))
    return out, aux


def aux_values(traced: Traced, leaves: Sequence) -> Any:
    """The aux output of a trace whose aux leaves are apart (A), at these leaves."""
    if traced.A is None:
        return traced.aux_tree.unflatten([])
    value = traced.A(*leaves)
    parts = value if traced.A.out_is_tuple else (value,)
    return traced.aux_tree.unflatten(list(parts))


def copy_out(out: Any, result: Any) -> Any:
    """np.copyto of each leaf of result into the matching leaf of out (one structure)."""
    out_leaves, out_tree = tree_flatten(out)
    res_leaves, res_tree = tree_flatten(result)
    if out_tree != res_tree:
        raise ValueError(f"jacext: out has the structure {out_tree!r}; the result has "
                         f"{res_tree!r}")
    for o, r in zip(out_leaves, res_leaves):
        if not isinstance(o, np.ndarray) or o.shape != np.shape(r):
            raise ValueError(f"jacext: out needs arrays of the result's shapes; the result "
                             f"has a leaf of shape {np.shape(r)}")
        np.copyto(o, r)
    return out


class Transformed:
    """A transformed function: what :func:`jacfwd`, :func:`jacrev`, :func:`grad` and
    :func:`value_and_grad` return.  Call it as the function itself; ``out=`` (a keyword
    this callable keeps for itself) takes arrays to write the derivative into.

    >>> import numpy as np, jacext as jx
    >>> J = jx.jacfwd(lambda x: x ** 3)
    >>> out = np.empty((2, 2))
    >>> J(np.array([1.0, 2.0]), out=out) is out
    True
    >>> out
    array([[ 3.,  0.],
           [ 0., 12.]])
    """

    def __init__(self, f: Callable, kind: str, argnums: ArgNums, has_aux: bool, mode: str,
                 sparse: bool, threads: int | None, batch_dims: int | Sequence[int]):
        if not callable(f):
            raise TypeError(f"jacext.{kind}: f must be callable; got {type(f).__name__}")
        self.f = f
        self.kind = kind
        self.argnums = argnums
        self.has_aux = bool(has_aux)
        self.mode = mode
        self.sparse = bool(sparse)
        self.threads = threads
        self.batch_dims = batch_dims
        self._traces: OrderedDict = OrderedDict()
        self._fast: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        _normalize_argnums(argnums, 1 << 30, kind)   # the types, early
        functools.update_wrapper(self, f, updated=())

    def __repr__(self) -> str:
        name = getattr(self.f, "__name__", type(self.f).__name__)
        return (f"<jacext.{self.kind} of {name}: argnums={self.argnums!r}, "
                f"has_aux={self.has_aux}, {len(self._traces)} trace(s)>")

    # -- arguments --

    def _batch(self, k: int | None) -> int:
        b = self.batch_dims
        if isinstance(b, (int, np.integer)):
            return int(b)
        return 0 if k is None else int(b[k])

    def _leaves(self, args: tuple, kwargs: dict):
        """(leaves as float64 arrays, argument structures, keyword structure, trace shapes,
        whether a tensor came in, the tensors)."""
        if (not kwargs and all(type(a) is np.ndarray and a.dtype == np.float64 for a in args)
                and isinstance(self.batch_dims, (int, np.integer))):
            b = int(self.batch_dims)
            self._check_batch(args, b)
            return (list(args), (LEAF,) * len(args), _EMPTY_KW,
                    tuple(a.shape[b:] for a in args), ())
        if not isinstance(self.batch_dims, (int, np.integer)) and len(self.batch_dims) != len(
                args):
            raise ValueError(f"jacext.{self.kind}: batch_dims has {len(self.batch_dims)} "
                             f"entries for {len(args)} positional argument(s)")
        leaves, trees, shapes, tensors = [], [], [], []
        tensor = _torch_tensor_type()
        groups = [(f"argument {k}", a, self._batch(k)) for k, a in enumerate(args)]
        groups.append(("keyword arguments", kwargs, self._batch(None)))
        for prefix, value, b in groups:
            raw, tree = tree_flatten(value)
            trees.append(tree)
            paths = tree.paths()
            for j, leaf in enumerate(raw):
                if tensor is not None and isinstance(leaf, tensor):
                    tensors.append(leaf)
                arr = input_array(leaf, prefix + paths[j])
                if arr.ndim < b:
                    raise ValueError(f"jacext.{self.kind}: {prefix + paths[j]} has shape "
                                     f"{arr.shape}, fewer than batch_dims={b} axes")
                leaves.append(arr)
                shapes.append(arr.shape[b:])
        return leaves, tuple(trees[:-1]), trees[-1], tuple(shapes), tuple(tensors)

    def _check_batch(self, args: tuple, b: int) -> None:
        for k, a in enumerate(args):
            if a.ndim < b:
                raise ValueError(f"jacext.{self.kind}: argument {k} has shape {a.shape}, "
                                 f"fewer than batch_dims={b} axes")

    def _traced(self, arg_trees: tuple, kw_tree: PyTreeDef, shapes: tuple,
                point: tuple) -> Traced:
        key = (arg_trees, kw_tree, shapes)
        traced = self._traces.get(key)
        if traced is not None:
            return traced
        joined = self.kind in ("grad", "value_and_grad")
        traced = trace(self.f, arg_trees, kw_tree, shapes, self.has_aux,
                       "joined" if joined else "apart", point=point)
        if joined and not (traced.out_tree.is_leaf and traced.F.out_shapes[0] == ()):
            shape = traced.F.out_shapes[0] if traced.out_tree.is_leaf else traced.out_tree
            raise TypeError(f"jacext.{self.kind}: f must return a scalar (shape ()); it "
                            f"returned {shape}: jx.jacrev or jx.jacfwd give the Jacobian "
                            "of other outputs")
        with self._lock:
            self._traces[key] = traced
            while len(self._traces) > _TRACES_PER_TRANSFORM:
                self._traces.popitem(last=False)
        return traced

    # -- the call --

    def __call__(self, *args: Any, out: Any = None, **kwargs: Any) -> Any:
        if not kwargs and out is None:
            # float64 arrays and Python floats seen before: their shapes key a prepared call
            key = []
            for a in args:
                t = type(a)
                if t is np.ndarray and a.dtype is _FLOAT64:
                    key.append(a.shape)
                elif t is float:
                    key.append(None)     # (solve_ivp's t)
                else:
                    break
            else:
                run = self._fast.get(tuple(key))
                if run is not None:
                    return run(args)
        nums, multi = _normalize_argnums(self.argnums, len(args), self.kind)
        leaves, arg_trees, kw_tree, shapes, tensors = self._leaves(args, kwargs)
        # the first point of a batch is where Python control flow takes its branches
        point = tuple(np.asarray(a)[(0,) * (np.ndim(a) - len(s))] for a, s in zip(leaves, shapes))
        traced = self._traced(arg_trees, kw_tree, shapes, point)
        leaf_nums = leaf_numbers(traced, nums)
        if self.kind in ("grad", "value_and_grad"):
            result = self._grad(traced, leaves, leaf_nums, nums, multi, out)
        else:
            result = self._jacobian(traced, leaves, leaf_nums, nums, multi, out)
        if tensors:
            from jacext import torch as _jt
            return _jt.to_tensors(result, tensors)
        if not kwargs and out is None and all(
                (type(a) is np.ndarray and a.dtype is _FLOAT64) or type(a) is float for a in args):
            self._prepare(traced, nums, multi, leaf_nums, args)
        return result

    def _prepare(self, traced, nums, multi, leaf_nums, args):
        """The later calls with float64 arrays of these shapes: straight to the Function,
        then the nesting (nothing to flatten, nothing to look up)."""
        F, n = traced.F, len(leaf_nums)
        if n == 0:
            return
        argnums = leaf_nums[0] if n == 1 else leaf_nums
        simple = traced.out_tree.is_leaf and n == 1 and not self.has_aux
        if self.kind in ("jacfwd", "jacrev"):
            mode, sparse, threads = self.mode, self.sparse, self.threads
            if simple and argnums == 0 and not sparse and threads is None:
                def run(args):
                    return F.jacobian(*args, mode=mode)
            elif simple:
                def run(args):
                    return F.jacobian(*args, argnums=argnums, mode=mode, sparse=sparse,
                                      threads=threads)
            else:
                def run(args):
                    jac = F.jacobian(*args, argnums=argnums, mode=mode, sparse=sparse,
                                     threads=threads)
                    result = nest_jacobian(traced, jac, nums, multi, n)
                    return (result, aux_values(traced, args)) if self.has_aux else result
        elif self.has_aux:
            return
        elif self.kind == "grad":
            threads = self.threads

            def run(args):
                jac = F.jacobian(*args, argnums=argnums, mode="reverse", threads=threads)
                return jac if n == 1 and not multi else nest_row(
                    traced, jac if n != 1 else (jac,), nums, multi)
        else:
            threads = self.threads

            def run(args):
                value, jac = F.value_and_jacobian(*args, argnums=argnums, mode="reverse",
                                                  threads=threads)
                return value, (jac if n == 1 and not multi else nest_row(
                    traced, jac if n != 1 else (jac,), nums, multi))
        key = tuple(None if type(a) is float else a.shape for a in args)
        with self._lock:
            self._fast[key] = run
            while len(self._fast) > _TRACES_PER_TRANSFORM:
                self._fast.popitem(last=False)

    def _jacobian(self, traced, leaves, leaf_nums, nums, multi, out):
        F = traced.F
        n = len(leaf_nums)
        direct = (out is not None and n == 1 and traced.out_tree.is_leaf and not self.sparse
                  and isinstance(out, np.ndarray))
        if n == 0:
            jac = tuple(() for _ in range(traced.n_out)) if F.out_is_tuple else ()
        else:
            jac = F.jacobian(*leaves, argnums=leaf_nums[0] if n == 1 else leaf_nums,
                             mode=self.mode, sparse=self.sparse, threads=self.threads,
                             out=out if direct else None)
        result = nest_jacobian(traced, jac, nums, multi, n)
        if out is not None and not direct:
            result = copy_out(out, result)
        if self.has_aux:
            return result, aux_values(traced, leaves)
        return result

    def _grad(self, traced, leaves, leaf_nums, nums, multi, out):
        F = traced.F
        n = len(leaf_nums)
        want_value = self.kind == "value_and_grad"
        argnums = leaf_nums[0] if n == 1 else leaf_nums
        value = None
        if n == 0:
            row = ()
            if want_value or F.out_is_tuple:
                value = F(*leaves)
        elif F.out_is_tuple:
            # aux outputs joined after the loss: one reverse sweep, the loss seeded with 1
            # and the aux outputs with 0
            seed = (np.ones(()),) + tuple(np.zeros(s) for s in F.out_shapes[1:])
            value, cot = F.vjp(*leaves, seed)
            cot = cot if len(F.arg_shapes) > 1 else (cot,)
            row = tuple(cot[i] for i in leaf_nums)
        elif want_value:
            value, jac = F.value_and_jacobian(*leaves, argnums=argnums, mode="reverse",
                                              threads=self.threads)
            row = jac if n != 1 else (jac,)
        else:
            direct = out is not None and n == 1 and isinstance(out, np.ndarray)
            jac = F.jacobian(*leaves, argnums=argnums, mode="reverse", threads=self.threads,
                             out=out if direct else None)
            row = jac if n != 1 else (jac,)
            if direct:
                out = None    # written in place: jac is the caller's array
        result = nest_row(traced, row, nums, multi)
        if out is not None:
            result = copy_out(out, result)
        if not self.has_aux:
            return (value, result) if want_value else result
        if value is None:      # grad of an f whose aux has no leaves
            aux = traced.aux_tree.unflatten([])
            return result, aux
        loss, aux = nest_values(traced, value)
        if aux is None:
            aux = traced.aux_tree.unflatten([])
        return ((loss, aux), result) if want_value else (result, aux)


_EMPTY_KW = tree_flatten({})[1]


# ------------------------------------------------------------ the names --

def jacfwd(f: Callable, argnums: ArgNums = 0, has_aux: bool = False, *,
           sparse: bool = False, threads: int | None = None,
           batch_dims: int | Sequence[int] = 0) -> Transformed:
    """The Jacobian of ``f`` by forward mode, as ``jax.jacfwd`` / ``torch.func.jacfwd``.

    Returns a callable taking ``f``'s arguments and returning the Jacobian with respect
    to the arguments ``argnums`` (an int, or a tuple for a tuple of Jacobians): each leaf
    has shape ``out_leaf.shape + in_leaf.shape``, nested as the output's structure, then
    the tuple over argnums, then the argument's structure.  With ``has_aux=True``, ``f``
    returns ``(output, aux)`` and the call returns ``(jacobian, aux)``.

    ``sparse=True`` gives ``scipy.sparse.csr_array`` blocks of shape (out.size, in.size);
    ``threads`` splits batches (None: all cores); ``batch_dims`` makes leading axes a
    batch (see the module's notes); ``out=`` at the call writes into given arrays.

    >>> import numpy as np, jacext as jx
    >>> def f(x):
    ...     return np.stack([x[0], 5 * x[2], 4 * x[1] ** 2 - 2 * x[2], x[2] * np.sin(x[0])])
    >>> jx.jacfwd(f)(np.array([1.0, 2.0, 3.0])).round(4)
    array([[ 1.    ,  0.    ,  0.    ],
           [ 0.    ,  0.    ,  5.    ],
           [ 0.    , 16.    , -2.    ],
           [ 1.6209,  0.    ,  0.8415]])
    """
    return Transformed(f, "jacfwd", argnums, has_aux, "forward", sparse, threads, batch_dims)


def jacrev(f: Callable, argnums: ArgNums = 0, has_aux: bool = False, *,
           sparse: bool = False, threads: int | None = None,
           batch_dims: int | Sequence[int] = 0) -> Transformed:
    """The Jacobian of ``f`` by reverse mode, as ``jax.jacrev`` / ``torch.func.jacrev``.

    Arguments and results as :func:`jacfwd`; the sweeps run backwards (one per output
    element or row colour), the cheaper way when outputs are fewer than inputs.

    >>> import numpy as np, jacext as jx
    >>> def f(p):
    ...     return {"scaled": 2.0 * p["w"], "total": p["w"].sum() + p["b"]}
    >>> J = jx.jacrev(f)({"w": np.ones(2), "b": np.array(0.5)})
    >>> J["scaled"]["w"]
    array([[2., 0.],
           [0., 2.]])
    >>> J["total"]["b"], J["total"]["w"]
    (array(1.), array([1., 1.]))
    """
    return Transformed(f, "jacrev", argnums, has_aux, "reverse", sparse, threads, batch_dims)


def grad(f: Callable, argnums: ArgNums = 0, has_aux: bool = False, *,
         threads: int | None = None,
         batch_dims: int | Sequence[int] = 0) -> Transformed:
    """The gradient of a scalar-valued ``f``, as ``jax.grad`` / ``torch.func.grad``.

    The gradient has the structure of the argument (a tuple over ``argnums`` if several);
    ``f`` must return a scalar (shape ()).  With ``has_aux=True``, ``f`` returns
    ``(loss, aux)`` and the call returns ``(gradient, aux)``.

    >>> import numpy as np, jacext as jx
    >>> round(float(jx.grad(np.tanh)(0.2)), 6)
    0.961043
    >>> jx.grad(lambda w, b: np.sum(w ** 2) * b, argnums=(0, 1))(np.array([1.0, 2.0]), 3.0)
    (array([ 6., 12.]), array(5.))
    """
    return Transformed(f, "grad", argnums, has_aux, "reverse", False, threads, batch_dims)


def value_and_grad(f: Callable, argnums: ArgNums = 0, has_aux: bool = False, *,
                   threads: int | None = None,
                   batch_dims: int | Sequence[int] = 0) -> Transformed:
    """``(f(x), grad(f)(x))`` from one sweep, as ``jax.value_and_grad``.

    With ``has_aux=True`` the call returns ``((loss, aux), gradient)``.

    >>> import numpy as np, jacext as jx
    >>> loss, g = jx.value_and_grad(lambda x: np.sum(x ** 3))(np.array([1.0, 2.0]))
    >>> float(loss), g
    (9.0, array([ 3., 12.]))
    """
    return Transformed(f, "value_and_grad", argnums, has_aux, "reverse", False, threads,
                       batch_dims)


__all__ = ["Transformed", "grad", "jacfwd", "jacrev", "value_and_grad"]
