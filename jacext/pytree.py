"""Pytrees: nested tuples, lists and dicts of arrays, flattened to a list of leaves and back.

The transforms (``jx.jacfwd``, ``jx.jacrev``, ``jx.grad``, ``jx.value_and_grad``) and
``jx.jacobian`` take arguments and return results that are pytrees: each leaf becomes
one argument (or output) of the compiled Function, and results are built back into the
same structure.  The order of the leaves is the one JAX documents:

* depth first, left to right through tuples and lists;
* a dict's entries in sorted key order (its keys must be sortable), and a result dict
  has its keys in that order;
* ``None`` is an empty subtree: it has no leaves and comes back as ``None``;
* a namedtuple is a tuple whose type is kept;
* anything else is a leaf (arrays, numbers; other objects are refused where leaves must
  be arrays, with the path of the offending leaf).

The Jacobian of a pytree output with respect to a pytree input nests as
``jax.jacobian`` does: the output's structure outside, the input's inside, and each
leaf of the result is the block ``out_leaf.shape + in_leaf.shape``.

>>> from jacext.pytree import tree_flatten, tree_unflatten
>>> leaves, tree = tree_flatten({"w": [1.0, 2.0], "b": 3.0, "skip": None})
>>> leaves                   # "b" sorts before "w"
[3.0, 1.0, 2.0]
>>> tree
PyTreeDef({'b': *, 'skip': None, 'w': [*, *]})
>>> tree_unflatten(tree, [30.0, 10.0, 20.0])
{'b': 30.0, 'skip': None, 'w': [10.0, 20.0]}
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

_LEAF, _NONE, _TUPLE, _LIST, _DICT, _NAMEDTUPLE = range(6)


class PyTreeDef:
    """The structure of a pytree, without its leaves: what :func:`tree_unflatten` rebuilds.

    Hashable and comparable, so it can key a cache of traces.

    >>> from jacext.pytree import tree_structure
    >>> tree_structure((1.0, {"a": 2.0})) == tree_structure((5.0, {"a": 6.0}))
    True
    >>> tree_structure([1.0, 2.0]).num_leaves
    2
    """

    __slots__ = ("kind", "meta", "children", "num_leaves", "_hash")

    def __init__(self, kind: int, meta: Any = None, children: tuple = ()):
        self.kind = kind
        self.meta = meta
        self.children = children
        self.num_leaves = 1 if kind == _LEAF else sum(c.num_leaves for c in children)
        self._hash = hash((kind, meta, children))

    @property
    def is_leaf(self) -> bool:
        """Whether the whole tree is a single leaf."""
        return self.kind == _LEAF

    def unflatten(self, leaves: Sequence[Any]) -> Any:
        """The tree with these leaves, in flattening order."""
        if len(leaves) != self.num_leaves:
            raise ValueError(f"jacext: {self!r} has {self.num_leaves} leaves; got "
                             f"{len(leaves)}")
        it = iter(leaves)
        return self._build(it)

    def _build(self, it: Iterator) -> Any:
        kind = self.kind
        if kind == _LEAF:
            return next(it)
        if kind == _NONE:
            return None
        values = [c._build(it) for c in self.children]
        if kind == _TUPLE:
            return tuple(values)
        if kind == _LIST:
            return values
        if kind == _DICT:
            return dict(zip(self.meta, values))
        return self.meta(*values)   # a namedtuple

    def paths(self) -> list[str]:
        """Where each leaf sits, in flattening order: ``['w'][0]`` style."""
        out: list[str] = []
        self._paths("", out)
        return out

    def _paths(self, prefix: str, out: list) -> None:
        if self.kind == _LEAF:
            out.append(prefix)
        elif self.kind == _DICT:
            for key, child in zip(self.meta, self.children):
                child._paths(f"{prefix}[{key!r}]", out)
        elif self.kind == _NAMEDTUPLE:
            for name, child in zip(self.meta._fields, self.children):
                child._paths(f"{prefix}.{name}", out)
        else:
            for k, child in enumerate(self.children):
                child._paths(f"{prefix}[{k}]", out)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, PyTreeDef) and self._hash == other._hash
                and self.kind == other.kind and self.meta == other.meta
                and self.children == other.children)

    def __hash__(self) -> int:
        return self._hash

    def _text(self) -> str:
        kind = self.kind
        if kind == _LEAF:
            return "*"
        if kind == _NONE:
            return "None"
        parts = [c._text() for c in self.children]
        if kind == _DICT:
            return "{" + ", ".join(f"{k!r}: {p}" for k, p in zip(self.meta, parts)) + "}"
        if kind == _LIST:
            return "[" + ", ".join(parts) + "]"
        inner = ", ".join(parts) + ("," if len(parts) == 1 else "")
        name = "" if kind == _TUPLE else self.meta.__name__
        return f"{name}({inner})"

    def __repr__(self) -> str:
        return f"PyTreeDef({self._text()})"


LEAF = PyTreeDef(_LEAF)
_NONE_DEF = PyTreeDef(_NONE)


def _is_namedtuple(x: object) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def _sorted_keys(d: dict) -> list:
    try:
        return sorted(d)
    except TypeError:
        raise TypeError("jacext: a dict in a pytree needs keys that sort (all str, or all "
                        f"numbers); got keys {list(d)!r}") from None


def tree_flatten(tree: Any,
                 is_leaf: Callable[[Any], bool] | None = None) -> tuple[list, PyTreeDef]:
    """(leaves, structure) of a pytree, leaves in the documented order.

    ``is_leaf(x)`` true stops the descent at ``x``.

    >>> from jacext.pytree import tree_flatten
    >>> tree_flatten((1.0, [2.0, None], {"z": 3.0, "a": 4.0}))[0]
    [1.0, 2.0, 4.0, 3.0]
    """
    leaves: list = []
    return leaves, _flatten(tree, leaves, is_leaf)


def _flatten(x: Any, leaves: list, is_leaf) -> PyTreeDef:
    if is_leaf is not None and is_leaf(x):
        leaves.append(x)
        return LEAF
    t = type(x)
    if t is tuple:
        return PyTreeDef(_TUPLE, None, tuple(_flatten(v, leaves, is_leaf) for v in x))
    if t is list:
        return PyTreeDef(_LIST, None, tuple(_flatten(v, leaves, is_leaf) for v in x))
    if t is dict:
        keys = _sorted_keys(x)
        return PyTreeDef(_DICT, tuple(keys),
                         tuple(_flatten(x[k], leaves, is_leaf) for k in keys))
    if x is None:
        return _NONE_DEF
    if _is_namedtuple(x):
        return PyTreeDef(_NAMEDTUPLE, t, tuple(_flatten(v, leaves, is_leaf) for v in x))
    if isinstance(x, dict):        # a dict subclass (OrderedDict, defaultdict): as a dict
        keys = _sorted_keys(x)
        return PyTreeDef(_DICT, tuple(keys),
                         tuple(_flatten(x[k], leaves, is_leaf) for k in keys))
    if isinstance(x, (tuple, list)):
        kind = _TUPLE if isinstance(x, tuple) else _LIST
        return PyTreeDef(kind, None, tuple(_flatten(v, leaves, is_leaf) for v in x))
    leaves.append(x)
    return LEAF


def tree_unflatten(treedef: PyTreeDef, leaves: Sequence[Any]) -> Any:
    """The pytree of structure ``treedef`` holding ``leaves`` (in flattening order).

    >>> from jacext.pytree import tree_flatten, tree_unflatten
    >>> leaves, tree = tree_flatten({"a": 1.0, "b": (2.0, 3.0)})
    >>> tree_unflatten(tree, [x * 10 for x in leaves])
    {'a': 10.0, 'b': (20.0, 30.0)}
    """
    return treedef.unflatten(leaves)


def tree_leaves(tree: Any) -> list:
    """The leaves of a pytree, in the documented order.

    >>> from jacext.pytree import tree_leaves
    >>> tree_leaves({"b": [1.0, 2.0], "a": 0.5})
    [0.5, 1.0, 2.0]
    """
    return tree_flatten(tree)[0]


def tree_structure(tree: Any) -> PyTreeDef:
    """The structure of a pytree.

    >>> from jacext.pytree import tree_structure
    >>> tree_structure({"w": 1.0, "b": (2.0, None)})
    PyTreeDef({'b': (*, None), 'w': *})
    """
    return tree_flatten(tree)[1]


def tree_map(f: Callable, tree: Any, *rest: Any) -> Any:
    """``f`` applied leaf by leaf (to the matching leaves of ``rest``, of the same structure).

    >>> from jacext.pytree import tree_map
    >>> tree_map(lambda a, b: a + b, {"x": 1.0, "y": [2.0]}, {"x": 10.0, "y": [20.0]})
    {'x': 11.0, 'y': [22.0]}
    """
    leaves, treedef = tree_flatten(tree)
    others = []
    for r in rest:
        r_leaves, r_def = tree_flatten(r)
        if r_def != treedef:
            raise ValueError(f"jacext: tree_map needs trees of one structure; got {treedef!r} "
                             f"and {r_def!r}")
        others.append(r_leaves)
    return treedef.unflatten([f(*xs) for xs in zip(leaves, *others)])


__all__ = ["PyTreeDef", "tree_flatten", "tree_leaves", "tree_map", "tree_structure",
           "tree_unflatten"]
