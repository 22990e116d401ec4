"""jacext/dask.py: a Function's calls on dask arrays, lazy, equal bit for bit to the
in-process batch, on the threaded scheduler and on a LocalCluster of processes."""
from __future__ import annotations

import numpy as np
import pytest

import jacext as jx

da = pytest.importorskip("dask.array")
import dask  # noqa: E402

import jacext.dask as jd  # noqa: E402


def arm_like(q):
    """A small kinematic chain: 4 angles -> a 2x3 block of trig products (dense)."""
    c, s = np.cos(q), np.sin(q)
    x = np.cumsum(c * np.array([1.0, 0.8, 0.6, 0.4]))
    y = np.cumsum(s * np.array([1.0, 0.8, 0.6, 0.4]))
    return np.stack([x[1:], y[1:]])


def two_args(x, p):
    return np.sin(x) * p[0] + p[1] * x ** 2, np.sum(np.exp(-x)) * p[1]


def broyden(x):
    left = np.concatenate([np.zeros(1), x[:-1]])
    right = np.concatenate([x[1:], np.zeros(1)])
    return (3 - 2 * x) * x - left - 2 * right + 1


RNG = np.random.default_rng(2024)
QN = RNG.uniform(-np.pi, np.pi, (103, 4))
XN = RNG.uniform(-1, 1, (57, 3))
PN = np.array([1.5, -0.5])
A = jx.compile(arm_like, np.zeros(4))
G = jx.compile(two_args, np.zeros(3), np.zeros(2))
B = jx.compile(broyden, np.zeros(6))


@pytest.fixture(autouse=True)
def threaded():
    with dask.config.set(scheduler="threads"):
        yield


def test_values_and_jacobians_are_lazy_and_equal_in_process():
    Q = da.from_array(QN, chunks=(20, 4))
    J = A.jacobian(Q)
    assert isinstance(J, da.Array) and J.shape == (103, 2, 3, 4)
    assert J.chunks[0] == Q.chunks[0] and J.numblocks == (6, 1, 1, 1)
    np.testing.assert_array_equal(J.compute(), A.jacobian(QN))
    Y = A(Q)
    assert isinstance(Y, da.Array)
    np.testing.assert_array_equal(Y.compute(), A(QN))
    for mode in ("forward", "reverse"):
        np.testing.assert_array_equal(A.jacobian(Q, mode=mode).compute(),
                                      A.jacobian(QN, mode=mode))
    y, J2 = A.value_and_jacobian(Q)
    y_ref, J_ref = A.value_and_jacobian(QN)
    np.testing.assert_array_equal(y.compute(), y_ref)
    np.testing.assert_array_equal(J2.compute(), J_ref)


def test_tuple_outputs_several_arguments_and_shared_parameters():
    X = da.from_array(XN, chunks=(10, 3))
    (y0, y1) = G(X, PN)                       # PN: one value shared by every point
    r0, r1 = G(XN, PN)
    np.testing.assert_array_equal(y0.compute(), r0)
    np.testing.assert_array_equal(y1.compute(), r1)
    J = G.jacobian(X, PN, argnums=(0, 1))
    J_ref = G.jacobian(XN, PN, argnums=(0, 1))
    for row, row_ref in zip(J, J_ref):
        for a, b in zip(row, row_ref):
            assert isinstance(a, da.Array)
            np.testing.assert_array_equal(a.compute(), b)
    # a batch of parameters too, chunked differently: dask aligns the chunks
    P = da.from_array(np.stack([PN * (1 + k / 57) for k in range(57)]), chunks=(19, 2))
    np.testing.assert_array_equal(G.jacobian(X, P, argnums=1)[0].compute(),
                                  G.jacobian(XN, P.compute(), argnums=1)[0])


def test_jvp_and_vjp():
    X = da.from_array(XN, chunks=(10, 3))
    V = da.from_array(np.cos(XN), chunks=(10, 3))
    (y, ydot) = G.jvp(X, PN, (V, np.array([1.0, 0.0])))
    (y_ref, ydot_ref) = G.jvp(XN, PN, (np.cos(XN), np.array([1.0, 0.0])))
    for a, b in zip(y + ydot, y_ref + ydot_ref):
        np.testing.assert_array_equal(a.compute(), b)
    cot = (np.ones(3), np.ones(()))
    (y, (xbar, pbar)) = G.vjp(X, PN, cot)
    (_, (xbar_ref, pbar_ref)) = G.vjp(XN, PN, cot)
    np.testing.assert_array_equal(xbar.compute(), xbar_ref)
    np.testing.assert_array_equal(pbar.compute(), pbar_ref)
    assert pbar.shape == (57, 2)


def test_sparse_jacobians():
    XB = RNG.uniform(-1, -0.1, (40, 6))
    X = da.from_array(XB, chunks=(16, 6))
    JS = B.jacobian(X, sparse=True)
    ref = B.jacobian(XB, sparse=True)
    assert isinstance(JS.values, da.Array) and JS.values.shape == (40, 16)
    assert (JS.pattern != ref.pattern).nnz == 0
    np.testing.assert_array_equal(JS.values.compute(), ref.values)


def test_batch_axes_and_trailing_chunks():
    Q = da.from_array(QN[:100].reshape(4, 25, 4), chunks=(2, 10, 2))   # trailing axis split
    J = A.jacobian(Q)
    assert J.shape == (4, 25, 2, 3, 4)
    np.testing.assert_array_equal(J.compute(), A.jacobian(QN[:100].reshape(4, 25, 4)))
    Q32 = da.from_array(QN.astype(np.float32), chunks=(50, 4))
    np.testing.assert_array_equal(A(Q32).compute(), A(QN.astype(np.float32)))


def test_errors():
    with pytest.raises(ValueError, match="batch"):
        A.jacobian(da.zeros(4, chunks=2))
    with pytest.raises(ValueError, match=r"\(4,\)"):
        A(da.zeros((10, 5), chunks=5))
    with pytest.raises(ValueError, match="out="):
        A.jacobian(da.zeros((10, 4), chunks=5), out=np.empty((10, 2, 3, 4)))


def test_the_function_is_shipped_not_retraced():
    # in this process the graph's Function is F itself: nothing unpickled, nothing traced
    before = jd.functions_loaded()
    Q = da.from_array(QN, chunks=(20, 4))
    for _ in range(2):
        A.jacobian(Q).compute()
    assert jd.functions_loaded() == before
    assert jd.is_dask((np.ones(2), Q)) and not jd.is_dask((np.ones(2), [1.0]))


def test_local_cluster_of_processes():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        Q = da.from_array(QN, chunks=(13, 4))
        J = A.jacobian(Q)
        JS = B.jacobian(da.from_array(QN[:, [0, 1, 2, 3, 0, 1]] - 4.0, chunks=(20, 6)),
                        sparse=True)
        J1, vals = dask.compute(J, JS.values)         # on the cluster's workers
        np.testing.assert_array_equal(J1, A.jacobian(QN))
        np.testing.assert_array_equal(vals, B.jacobian(QN[:, [0, 1, 2, 3, 0, 1]] - 4.0,
                                                       sparse=True).values)
        J2 = A.jacobian(Q).compute()                  # a second graph: the same Functions
        np.testing.assert_array_equal(J2, J1)
        loaded = client.run(jd.functions_loaded)
        assert len(loaded) == 2
        # each worker unpickled each Function it ran at most once, over both graphs
        assert all(0 < n <= 2 for n in loaded.values()), loaded
        assert sum(loaded.values()) <= 4
