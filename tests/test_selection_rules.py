"""Selections by value (jacext/selection_rules.py, trace.Array's masked indexing).

np.nonzero and kin, np.count_nonzero, np.where(condition), np.extract and a traced mask
used as an index take each element's truth at the trace point, guarded: the compiled
function gives NumPy's own result at every point, its Jacobian matches central
differences of the NumPy code, and a point whose truths differ is traced again.
np.any / np.all stay traced.
"""
from __future__ import annotations

import numpy as np
import pytest

import jacext as jx
from jacext.errors import TracingError
from jacext.guarded import GuardedFunction
from jacext.testing import central_difference


def _sel_nonzero(x):
    i, j = np.nonzero(x.reshape(2, 3) > 0)
    return x.reshape(2, 3)[i, j] ** 2


def _sel_flat(x):
    return x[np.flatnonzero(x < 0.5)] * x[0]


def _sel_argwhere(x):
    w = np.argwhere(x.reshape(2, 3) > 0)
    return np.sin(x) * w.shape[0] + w.sum()


def _sel_count(x):
    m = x.reshape(2, 3) > 0
    return (np.count_nonzero(m) * x + np.count_nonzero(m, axis=0).sum() * x[1]
            + np.count_nonzero(m, axis=1, keepdims=True).shape[1])


def _sel_where1(x):
    (idx,) = np.where(x > 0.0)
    return np.exp(x[idx]) if len(idx) else x[:0]


def _sel_extract(x):
    return np.extract(x > 0, x * x[1])


def _sel_method(x):
    return x[x.nonzero()] * 2.0


def _sel_setitem(x):
    y = np.zeros_like(x)
    y[x > 0] = x[x > 0] ** 3
    y[~(x > 0)] = -x[~(x > 0)]
    return y


FUNCS = [_sel_nonzero, _sel_flat, _sel_argwhere, _sel_count, _sel_where1, _sel_extract,
         _sel_method, _sel_setitem]
POINTS = [[0.3, -1.2, 0.7, 2.0, -0.1, 0.4], [-0.3, 1.2, -0.7, 0.1, 0.2, -0.4],
          [0.0, 0.5, -2.0, 0.0, 1.0, 3.0]]


@pytest.mark.parametrize("f", FUNCS, ids=[f.__name__ for f in FUNCS])
def test_selections_equal_numpy_and_differentiate(f):
    pts = [np.array(p) for p in POINTS]
    F = jx.compile(f, pts[0])
    assert isinstance(F, GuardedFunction)
    for p in pts:
        np.testing.assert_array_equal(F(p), f(p))
        J = F.jacobian(p)
        assert J.shape == np.shape(f(p)) + p.shape
        if 0.0 not in p:          # central differences away from the branch points
            D = central_difference(f, (p,), (0,))
            np.testing.assert_allclose(J.reshape(D.shape), D, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(F.jacobian(p, mode="reverse"), J, rtol=1e-14, atol=0)
    assert len(F.tapes) >= 2


def test_any_and_all_stay_traced_and_guard_one_node():
    def f(x):
        y = np.where(np.any(x > 1.0), x, -x) * np.all(x > 0, axis=0, keepdims=True).sum()
        if np.all(x > -1.0) and x.any():
            return y * 2
        return y

    x = np.array([[0.5, 2.0], [0.1, 0.3]])
    F = jx.compile(f, x)
    np.testing.assert_array_equal(F(x), f(x))
    assert len(F.guards()[0]) == 2                # one guard per bool(), not per element
    for p in (x, -x, x * 0.1, np.array([[-2.0, 0.5], [1.0, 1.0]])):
        np.testing.assert_array_equal(F(p), f(p))
    G = jx.compile(lambda x: np.any(x[:0] > 0) + np.all(x[:0] > 0) * x, x)
    np.testing.assert_array_equal(G(x), np.any(x[:0] > 0) + np.all(x[:0] > 0) * x)


def test_a_traced_mask_as_an_index_guards_every_element():
    x = np.array([0.5, -1.0, 2.0])
    F = jx.compile(lambda x: x[x > 0] ** 2, x)
    (guards,) = F.guards()
    assert len(guards) == 3 and {kind for _, kind, _ in guards} == {"truth"}
    assert F(np.array([1.0, 1.0, 1.0])).shape == (3,)       # another point: traced again
    assert len(F.tapes) == 2


def test_masks_made_of_constants_and_traced_truths():
    def f(x):
        m = np.concatenate([x > 0, np.array([True, False])])
        return np.concatenate([x, x[:2]])[m] * 3.0

    x = np.array([1.0, -2.0, 0.5])
    np.testing.assert_array_equal(jx.compile(f, x)(x), f(x))


def test_non_masks_as_indices_are_refused():
    x = np.array([0.5, 1.0, 2.0])
    for f in (lambda x: x[x], lambda x: x[x * 1.0 > 0.5][np.floor(x[:1])],
              lambda x: x[(x > 0) * 2.0]):
        with pytest.raises(TracingError, match="used as an index"):
            jx.compile(f, x)


@pytest.mark.parametrize("f, name", [
    (lambda x: x[x > 0], "traced mask"),
    (lambda x: np.nonzero(x > 0)[0] * 1.0 + x[:1], "np.nonzero"),
    (lambda x: np.count_nonzero(x) * x, "np.count_nonzero"),
    (lambda x: np.where(x > 0)[0] * 1.0 + x[:1], r"np.where\(condition\)"),
])
def test_without_a_trace_point_the_error_names_the_policy(f, name):
    x = np.array([0.5, -1.0, 2.0])
    with pytest.raises(TracingError, match=name) as e:
        jx.compile(f, x, control_flow="error")
    assert 'control_flow="guard"' in str(e.value)


def test_batches_of_one_branch_and_of_many_shapes():
    """A batch whose points all keep the trace's truths runs as one tape; where the
    selection's length changes from point to point, the batch's results cannot stack,
    and the error says so."""
    f = _sel_setitem
    X = np.array([POINTS[0], [0.2, -1.0, 0.1, 1.0, -0.5, 0.9]])
    F = jx.compile(f, X[0])
    np.testing.assert_array_equal(F.jacobian(X), np.stack([F.jacobian(p) for p in X]))
    G = jx.compile(lambda x: x[x > 0], X[0])
    G(X[0])
    with pytest.raises(ValueError, match="different shapes"):
        G(np.array(POINTS[:2]))
