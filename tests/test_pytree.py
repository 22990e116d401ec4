"""jacext/pytree.py: the flattening order, structures, and round trips."""
from __future__ import annotations

from collections import OrderedDict, namedtuple

import numpy as np
import pytest

from jacext.pytree import (
    PyTreeDef,
    tree_flatten,
    tree_leaves,
    tree_map,
    tree_structure,
    tree_unflatten,
)

Point = namedtuple("Point", ["y", "x"])


def test_order_is_depth_first_with_sorted_dict_keys():
    tree = {"z": (1, [2, 3]), "a": {"k": 4, "b": 5}, "m": None}
    leaves, treedef = tree_flatten(tree)
    assert leaves == [5, 4, 1, 2, 3]          # a.b, a.k, z[0], z[1][0], z[1][1]
    assert treedef.num_leaves == 5
    assert treedef.paths() == ["['a']['b']", "['a']['k']", "['z'][0]", "['z'][1][0]",
                               "['z'][1][1]"]


@pytest.mark.parametrize("tree", [
    1.0,
    (),
    [],
    {},
    None,
    (1.0,),
    [1.0, (2.0, None), {"b": [3.0], "a": 4.0}],
    Point(y=1.0, x=(2.0, 3.0)),
    {"w": np.ones(3), "b": np.zeros(())},
])
def test_round_trip(tree):
    leaves, treedef = tree_flatten(tree)
    back = tree_unflatten(treedef, leaves)
    assert tree_structure(back) == treedef
    assert type(back) is type(tree) or isinstance(tree, dict)
    for a, b in zip(tree_leaves(back), leaves):
        assert a is b


def test_namedtuple_keeps_its_type_and_field_paths():
    leaves, treedef = tree_flatten(Point(y=1.0, x=2.0))
    assert leaves == [1.0, 2.0]
    back = treedef.unflatten([5.0, 6.0])
    assert isinstance(back, Point) and back.x == 6.0
    assert treedef.paths() == [".y", ".x"]
    assert repr(treedef) == "PyTreeDef(Point(*, *))"


def test_dict_subclass_flattens_as_a_dict():
    leaves, treedef = tree_flatten(OrderedDict([("b", 1.0), ("a", 2.0)]))
    assert leaves == [2.0, 1.0]
    assert treedef == tree_structure({"a": 0, "b": 0})


def test_structures_compare_and_hash():
    a = tree_structure({"w": [1, 2], "b": 3})
    b = tree_structure({"b": 30, "w": [10, 20]})
    c = tree_structure({"w": (1, 2), "b": 3})
    assert a == b and hash(a) == hash(b)
    assert a != c
    assert len({a, b, c}) == 2
    assert isinstance(a, PyTreeDef) and not a.is_leaf and tree_structure(1.0).is_leaf


def test_is_leaf_stops_the_descent():
    leaves, treedef = tree_flatten({"a": [1, 2], "b": [3]}, is_leaf=lambda x: isinstance(x, list))
    assert leaves == [[1, 2], [3]]
    assert treedef.num_leaves == 2


def test_unflatten_wrong_count():
    treedef = tree_structure((1, 2))
    with pytest.raises(ValueError, match="2 leaves"):
        treedef.unflatten([1])


def test_unsortable_keys_are_refused():
    with pytest.raises(TypeError, match="sort"):
        tree_flatten({1: 1.0, "a": 2.0})


def test_tree_map():
    out = tree_map(lambda a, b: a * b, {"x": 2.0, "y": (3.0,)}, {"x": 5.0, "y": (7.0,)})
    assert out == {"x": 10.0, "y": (21.0,)}
    with pytest.raises(ValueError, match="one structure"):
        tree_map(lambda a, b: a, {"x": 1.0}, {"y": 1.0})


def test_matches_jax_order():
    jax = pytest.importorskip("jax")
    tree = {"z": (1, [2, 3]), "a": {"k": 4, "b": 5}, "m": None, "p": Point(y=6, x=7)}
    assert tree_leaves(tree) == jax.tree_util.tree_leaves(tree)
