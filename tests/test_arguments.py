"""Arguments in and results out (jacext/arguments.py): parse, flatten, split, nest, copy_into.

parse: shapes, conversion to float64, the broadcast batch shape and every error it raises
(its message states what was expected and what was given); flatten: the VM's rows for one
and several arguments, broadcast and empty batches; split and nest: results back into the
traced structure; copy_into: ``out=`` and its errors.  Expected layouts are built here
with plain NumPy.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from jacext import arguments as A

# ---------------------------------------------------------------- small ones --

@pytest.mark.parametrize("shape, text", [((), "()"), ((3,), "(3,)"), ((2, 3), "(2, 3)"),
                                         ((0, 4, 1), "(0, 4, 1)"), ((np.int64(5),), "(5,)")])
def test_shape_str(shape, text):
    assert A.shape_str(shape) == text


def test_offsets():
    assert A.offsets([]) == (0,)
    assert A.offsets([(3,), (), (2, 4), (0,)]) == (0, 3, 4, 12, 12)


# ---------------------------------------------------------------- parse --

def test_parse_single_points():
    x, y = np.arange(3.0), np.ones((2, 2))
    arrays, batch = A.parse([x, y], [(3,), (2, 2)], "f")
    assert batch == ()
    assert arrays[0] is x and arrays[1] is y          # float64 arrays are taken as they are
    arrays, batch = A.parse([1.5], [()], "f")
    assert batch == () and arrays[0].shape == () and arrays[0] == 1.5


@pytest.mark.parametrize("value, want", [
    ([1, 2, 3], [1.0, 2.0, 3.0]),
    (np.array([1, 2, 3], np.int32), [1.0, 2.0, 3.0]),
    (np.array([True, False, True]), [1.0, 0.0, 1.0]),
    (np.array([1, 2, 3], np.uint8), [1.0, 2.0, 3.0]),
    (np.array([0.5, 1.5, 2.5], np.float32), [0.5, 1.5, 2.5]),
    ((0.5, 1, True), [0.5, 1.0, 1.0]),
])
def test_parse_converts_real_numbers_to_float64(value, want):
    (arr,), batch = A.parse([value], [(3,)], "f")
    assert arr.dtype == np.float64 and batch == ()
    np.testing.assert_array_equal(arr, want)


@pytest.mark.parametrize("shapes_given, shapes, batch", [
    ([(5, 3)], [(3,)], (5,)),
    ([(4, 5, 3)], [(3,)], (4, 5)),
    ([(7,)], [()], (7,)),
    ([(2, 3), (2,)], [(3,), (2,)], (2,)),            # x batched, y one point
    ([(3,), (6, 2)], [(3,), (2,)], (6,)),            # y batched
    ([(4, 1, 3), (5, 2)], [(3,), (2,)], (4, 5)),     # batches broadcast
    ([(1, 3), (5, 2)], [(3,), (2,)], (5,)),
    ([(0, 3), (2,)], [(3,), (2,)], (0,)),            # an empty batch
    ([(0, 3), (1, 2)], [(3,), (2,)], (0,)),
    ([(2, 1, 3), ()], [(3,), ()], (2, 1)),
])
def test_parse_batch_shapes_broadcast(shapes_given, shapes, batch):
    values = [np.zeros(s) for s in shapes_given]
    arrays, got = A.parse(values, shapes, "f")
    assert got == batch
    for arr, value in zip(arrays, values):
        assert arr.shape == value.shape


@pytest.mark.parametrize("n", [0, 1, 3])
def test_parse_wrong_count_is_a_type_error(n):
    with pytest.raises(TypeError, match=re.escape(f"f was compiled for 2 argument(s); got {n}")):
        A.parse([np.zeros(3)] * n, [(3,), (2,)], "f")
    with pytest.raises(TypeError, match=re.escape(f"was compiled for 2 tangent(s); got {n}")):
        A.parse([np.zeros(3)] * n, [(3,), (2,)], "f", what="tangent")


@pytest.mark.parametrize("given, want, k, argshapes", [
    ((4,), (3,), 0, [(3,)]),
    ((3, 4), (3,), 0, [(3,)]),           # a batch of the wrong trailing shape
    ((), (3,), 0, [(3,)]),               # too few dimensions
    ((3,), (2, 3), 0, [(2, 3)]),
    ((2, 3), (3, 2), 1, [(1,), (3, 2)]),  # the second argument
    ((2,), (), None, None),               # a scalar: any shape is a batch of scalars
])
def test_parse_wrong_trailing_shape_states_both_shapes(given, want, k, argshapes):
    if k is None:
        assert A.parse([np.zeros(given)], [want], "f")[1] == given
        return
    values = [np.zeros(s) for s in argshapes]
    values[k] = np.zeros(given)
    with pytest.raises(ValueError) as info:
        A.parse(values, argshapes, "myfun")
    msg = str(info.value)
    assert f"argument {k} of myfun must have shape {A.shape_str(want)}" in msg
    assert f"got shape {A.shape_str(given)}" in msg
    assert "(..., " + ", ".join(map(str, want)) + ")" in msg     # the batch form


def test_parse_wrong_shape_names_what_it_parses():
    with pytest.raises(ValueError, match=r"cotangent 0 of f must have shape \(2,\)"):
        A.parse([np.zeros(3)], [(2,)], "f", what="cotangent")


@pytest.mark.parametrize("value", [np.zeros(3, complex), [1.0, 2j, 3.0], np.complex64([1, 2, 3])])
def test_parse_complex_is_a_type_error(value):
    with pytest.raises(TypeError, match="complex"):
        A.parse([value], [(3,)], "f")


@pytest.mark.parametrize("value", [np.array(["a", "b", "c"]), ["1", "2", "3"],
                                   np.array([1, None, 3], dtype=object),
                                   np.array(["2020-01-01"] * 3, dtype="datetime64[D]"),
                                   np.zeros(3, dtype=[("a", float)])])
def test_parse_non_numeric_dtype_is_a_type_error(value):
    with pytest.raises(TypeError, match="argument 0 must be real numbers; got dtype"):
        A.parse([value], [(3,)], "f")


def test_parse_ragged_input_is_a_type_error():
    with pytest.raises(TypeError, match="argument 1 is not an array of real numbers"):
        A.parse([np.zeros(3), [[1.0], [1.0, 2.0]]], [(3,), (2,)], "f")


@pytest.mark.parametrize("shapes_given, listed", [
    ([(2, 3), (3, 2)], "(2,), (3,)"),
    ([(4, 5, 3), (4, 2)], "(4, 5), (4,)"),
    ([(2, 3), (3, 2), (1,)], "(2,), (3,), ()"),
])
def test_parse_batches_that_do_not_broadcast(shapes_given, listed):
    shapes = [(3,), (2,), (1,)][:len(shapes_given)]
    with pytest.raises(ValueError, match=re.escape(
            f"the batch shapes of the arguments do not broadcast: {listed}")):
        A.parse([np.zeros(s) for s in shapes_given], shapes, "f")


# ---------------------------------------------------------------- flatten --

def _row(*parts):
    return np.concatenate([np.ravel(p) for p in parts])


def test_flatten_one_point():
    x = np.arange(6.0).reshape(2, 3)
    flat = A.flatten([x], [(2, 3)], ())
    np.testing.assert_array_equal(flat, np.arange(6.0))
    assert flat.shape == (6,) and flat.flags.c_contiguous
    # a non-contiguous argument comes out in its logical order
    flat = A.flatten([x.T], [(3, 2)], ())
    np.testing.assert_array_equal(flat, [0, 3, 1, 4, 2, 5])
    y, s = np.array([7.0, 8.0]), np.array(9.0)
    flat = A.flatten([x, s, y], [(2, 3), (), (2,)], ())
    np.testing.assert_array_equal(flat, [0, 1, 2, 3, 4, 5, 9, 7, 8])


def test_flatten_a_batch_of_one_argument():
    X = np.arange(24.0).reshape(4, 2, 3)
    flat = A.flatten([X], [(2, 3)], (4,))
    assert flat.shape == (4, 6) and flat.flags.c_contiguous and flat.dtype == np.float64
    np.testing.assert_array_equal(flat, X.reshape(4, 6))
    X = np.arange(24.0).reshape(2, 2, 6)[..., ::2]            # strided
    flat = A.flatten([X], [(3,)], (2, 2))
    assert flat.shape == (2, 2, 3) and flat.flags.c_contiguous
    np.testing.assert_array_equal(flat, X)


def test_flatten_broadcasts_the_batch():
    X = np.arange(15.0).reshape(5, 3)
    y = np.array([-1.0, -2.0])
    flat = A.flatten([X, y], [(3,), (2,)], (5,))
    assert flat.shape == (5, 5) and flat.flags.c_contiguous
    for k in range(5):
        np.testing.assert_array_equal(flat[k], _row(X[k], y))
    # batches of (4, 1) and (5,) broadcast to (4, 5)
    X = np.arange(12.0).reshape(4, 1, 3)
    Y = np.arange(10.0).reshape(5, 2) + 100
    flat = A.flatten([X, Y], [(3,), (2,)], (4, 5))
    assert flat.shape == (4, 5, 5)
    for i in range(4):
        for j in range(5):
            np.testing.assert_array_equal(flat[i, j], _row(X[i, 0], Y[j]))
    # one argument of one point, asked for as a batch
    x = np.array([1.0, 2.0])
    flat = A.flatten([x], [(2,)], (3,))
    np.testing.assert_array_equal(flat, [[1.0, 2.0]] * 3)


def test_flatten_empty_batches():
    flat = A.flatten([np.zeros((0, 3))], [(3,)], (0,))
    assert flat.shape == (0, 3)
    flat = A.flatten([np.zeros((0, 3)), np.ones(2)], [(3,), (2,)], (0,))
    assert flat.shape == (0, 5) and flat.dtype == np.float64
    flat = A.flatten([np.zeros((2, 0, 3)), np.ones((1, 2))], [(3,), (2,)], (2, 0))
    assert flat.shape == (2, 0, 5)
    flat = A.flatten([np.zeros((0, 4))], [(2, 2)], (0,))       # width not -1: 0 x 4
    assert flat.shape == (0, 4)


def test_parse_then_flatten():
    values = [np.arange(6.0).reshape(2, 3), [5, 6]]
    shapes = [(3,), (2,)]
    arrays, batch = A.parse(values, shapes, "f")
    flat = A.flatten(arrays, shapes, batch)
    np.testing.assert_array_equal(flat, [[0, 1, 2, 5, 6], [3, 4, 5, 5, 6]])


# ---------------------------------------------------------------- split --

def test_split():
    flat = np.arange(7.0)
    y = A.split(flat, [(7,)], False, ())
    assert y.shape == (7,)
    a, b, c = A.split(flat, [(2, 2), (), (2,)], True, ())
    np.testing.assert_array_equal(a, [[0, 1], [2, 3]])
    assert b.shape == () and b == 4
    np.testing.assert_array_equal(c, [5, 6])
    (only,) = A.split(flat, [(7,)], True, ())
    np.testing.assert_array_equal(only, flat)


def test_split_a_batch():
    flat = np.arange(3 * 2 * 5.0).reshape(3, 2, 5)
    a, b = A.split(flat, [(3,), (2,)], True, (3, 2))
    assert a.shape == (3, 2, 3) and b.shape == (3, 2, 2)
    assert a.flags.c_contiguous and b.flags.c_contiguous
    np.testing.assert_array_equal(a, flat[..., :3])
    np.testing.assert_array_equal(b, flat[..., 3:])
    y = A.split(flat.reshape(6, 5), [(5,)], False, (6,))
    assert y.shape == (6, 5)
    y = A.split(np.zeros((0, 4)), [(2, 2)], False, (0,))
    assert y.shape == (0, 2, 2)


# ---------------------------------------------------------------- nest --

def test_nest_as_torch_nests():
    block = lambda o, j: (o, j)  # noqa: E731
    # one output, one argument asked for: the block
    assert A.nest(block, [(2,)], False, (0,), False) == (0, 0)
    # one output, several arguments: a tuple over them
    assert A.nest(block, [(2,)], False, (0, 2), True) == ((0, 0), (0, 1))
    assert A.nest(block, [(2,)], False, (1,), True) == ((0, 0),)
    # several outputs (a tuple): a tuple over outputs ...
    assert A.nest(block, [(2,), (3,)], True, (0,), False) == ((0, 0), (1, 0))
    # ... of tuples over the arguments
    assert A.nest(block, [(2,), (3,)], True, (0, 1), True) == (((0, 0), (0, 1)),
                                                               ((1, 0), (1, 1)))
    # a 1-tuple output stays a tuple
    assert A.nest(block, [(2,)], True, (0,), False) == ((0, 0),)
    # no arguments asked for
    assert A.nest(block, [(2,), (3,)], True, (), True) == ((), ())


# ---------------------------------------------------------------- copy_into --

def test_copy_into_copies_nested_results():
    out = np.empty((2, 3))
    A.copy_into(out, np.ones((2, 3)))
    np.testing.assert_array_equal(out, 1.0)
    outs = ((np.empty(2), np.empty((2, 2))), (np.empty(3), np.empty((3, 2))))
    results = ((np.full(2, 1.0), np.full((2, 2), 2.0)), (np.full(3, 3.0), np.full((3, 2), 4.0)))
    A.copy_into(outs, results)
    for o_row, r_row in zip(outs, results):
        for o, r in zip(o_row, r_row):
            np.testing.assert_array_equal(o, r)


@pytest.mark.parametrize("out, result, match", [
    (np.empty((3, 2)), np.ones((2, 3)), r"has shape \(3, 2\); the Jacobian has shape \(2, 3\)"),
    (np.empty(6), np.ones((2, 3)), r"has shape \(6,\); the Jacobian has shape \(2, 3\)"),
    ([[0.0] * 3] * 2, np.ones((2, 3)), "must be a NumPy array"),       # not an array
    (np.empty((2, 3), dtype=np.float32), np.ones((2, 3)), "float64"),  # never a silent cast
    (np.broadcast_to(np.empty(3), (2, 3)), np.ones((2, 3)), "read-only"),
    (np.empty((2, 3)), (np.ones((2, 3)),), "tuple of arrays"),          # not a tuple
    ((np.empty(2),), (np.ones(2), np.ones(2)), "tuple of arrays"),     # too short
    ((np.empty(2), np.empty(2), np.empty(2)), (np.ones(2), np.ones(2)), "tuple of arrays"),
    ((np.empty(2), np.empty(3)), (np.ones(2), np.ones(2)), r"has shape \(3,\)"),
    (((np.empty(2),), np.empty(2)), ((np.ones(2), np.ones(2)), np.ones(2)), "tuple of arrays"),
])
def test_copy_into_errors(out, result, match):
    with pytest.raises((ValueError, TypeError), match=match):
        A.copy_into(out, result)


def test_broadcast_rows():
    x = np.arange(3.0)
    rows = A.broadcast_rows(x, (4,))
    assert rows.shape == (4, 3) and rows.flags.c_contiguous
    np.testing.assert_array_equal(rows, [x] * 4)
    X = np.arange(6.0).reshape(2, 1, 3)
    rows = A.broadcast_rows(X, (2, 2))
    np.testing.assert_array_equal(rows, [X[0, 0], X[0, 0], X[1, 0], X[1, 0]])


def test_flatten_joins_several_arguments_as_concatenate_does():
    # flatten's join of a batch's arguments (jacext._point.join_rows, in C): the rows
    # of every part side by side, widths 0 to 9, against NumPy's concatenate
    rng = np.random.default_rng(5)
    shapes = [(3,), (0,), (1,), (2, 2), (9,)]
    arrays = [rng.standard_normal((37,) + s) for s in shapes]
    flat = A.flatten(arrays, shapes, (37,))
    want = np.concatenate([a.reshape(37, -1) for a in arrays], axis=1)
    assert flat.flags.c_contiguous
    np.testing.assert_array_equal(flat, want)


def test_join_rows_refuses_what_it_cannot_read_or_write():
    from jacext._point import join_rows
    a, b = np.ones((4, 2)), np.ones((4, 3))
    with pytest.raises(ValueError, match="C-contiguous float64 \\(n, width\\) parts"):
        join_rows([a, np.ones((4, 6))[:, ::2]], np.empty((4, 5)))
    with pytest.raises(ValueError, match="parts"):
        join_rows([a, np.ones((3, 3))], np.empty((4, 5)))
    with pytest.raises(ValueError, match="total width"):
        join_rows([a, b], np.empty((4, 6)))
    out = np.empty((4, 5))
    out.setflags(write=False)
    with pytest.raises(ValueError, match="total width"):
        join_rows([a, b], out)
