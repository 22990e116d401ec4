"""jacext/transforms.py: jx.jacfwd, jx.jacrev, jx.grad and jx.value_and_grad.

The examples are those of JAX's documentation of these functions (grad of tanh, the
Jacobian of a 3 -> 4 function, the logistic regression with W and b and argnums,
has_aux, dict parameters), written here in NumPy.  Every result is checked against an
analytic derivative or central differences, and against JAX itself where it is
installed.
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np
import pytest

import jacext as jx
from jacext.pytree import tree_flatten


@pytest.fixture(scope="module")
def jax():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    return jax


def assert_trees_close(actual, desired, rtol=1e-12, atol=1e-14):
    a_leaves, a_tree = tree_flatten(actual)
    d_leaves, d_tree = tree_flatten(desired)
    assert a_tree == d_tree, (a_tree, d_tree)
    for a, d in zip(a_leaves, d_leaves):
        a, d = np.asarray(a), np.asarray(d)
        assert a.shape == d.shape, (a.shape, d.shape)
        np.testing.assert_allclose(a, d, rtol=rtol, atol=atol)


def central_difference(f, args, argnum, h=1e-5):
    """d f / d args[argnum] by central differences, leaf by leaf, as a pytree of blocks
    nested as jax.jacobian nests them (for an array-valued f)."""
    leaves, tree = tree_flatten(args[argnum])
    y_shape = np.shape(f(*args))

    def at(k, i, step):
        leaf = np.array(leaves[k], dtype=np.float64)
        leaf.reshape(-1)[i] += step
        new = list(leaves)
        new[k] = leaf
        a = list(args)
        a[argnum] = tree.unflatten(new)
        return np.asarray(f(*a), dtype=np.float64)

    blocks = []
    for k, leaf in enumerate(leaves):
        shape = np.shape(leaf)
        cols = [(at(k, i, h) - at(k, i, -h)) / (2 * h) for i in range(int(np.prod(shape)))]
        blocks.append(np.stack(cols, axis=-1).reshape(y_shape + shape) if cols
                      else np.zeros(y_shape + shape))
    return tree.unflatten(blocks)


# ------------------------------------------------- JAX's documented examples --

def test_grad_of_tanh():
    g = jx.grad(np.tanh)(0.2)
    assert isinstance(g, np.ndarray) and g.shape == ()
    np.testing.assert_allclose(g, 1 - np.tanh(0.2) ** 2, rtol=1e-15)
    assert round(float(g), 6) == 0.961043                 # the value the JAX docs print


def test_grad_of_tanh_against_jax(jax):
    np.testing.assert_allclose(jx.grad(np.tanh)(0.2), jax.grad(jax.numpy.tanh)(0.2),
                               rtol=1e-15)


def f_docs(x):
    """jax.jacfwd's and jax.jacrev's docstring example, in NumPy."""
    return np.stack([x[0], 5 * x[2], 4 * x[1] ** 2 - 2 * x[2], x[2] * np.sin(x[0])])


def f_docs_jax(x):
    import jax.numpy as jnp
    return jnp.asarray([x[0], 5 * x[2], 4 * x[1] ** 2 - 2 * x[2], x[2] * jnp.sin(x[0])])


X_DOCS = np.array([1.0, 2.0, 3.0])
J_DOCS = np.array([[1.0, 0.0, 0.0],
                   [0.0, 0.0, 5.0],
                   [0.0, 16.0, -2.0],
                   [3.0 * np.cos(1.0), 0.0, np.sin(1.0)]])


@pytest.mark.parametrize("transform", [jx.jacfwd, jx.jacrev])
def test_jacobian_docs_example(transform):
    J = transform(f_docs)(X_DOCS)
    assert J.shape == (4, 3)
    np.testing.assert_allclose(J, J_DOCS, rtol=1e-15, atol=0)
    # the table the JAX docs print, to its precision
    np.testing.assert_allclose(J[3], [1.6209, 0.0, 0.84147], atol=1e-4)


@pytest.mark.parametrize("name", ["jacfwd", "jacrev"])
def test_jacobian_docs_example_against_jax(jax, name):
    np.testing.assert_allclose(getattr(jx, name)(f_docs)(X_DOCS),
                               getattr(jax, name)(f_docs_jax)(X_DOCS), rtol=1e-15)


# the logistic regression of JAX's autodiff tutorial
INPUTS = np.array([[0.52, 1.12, 0.77],
                   [0.88, -1.08, 0.15],
                   [0.52, 0.06, -1.30],
                   [0.74, -2.49, 1.39]])
TARGETS = np.array([True, True, False, True])
W0 = np.array([0.3, -1.2, 0.8])
B0 = np.array(-0.4)


def sigmoid(x):
    return 0.5 * (np.tanh(x / 2) + 1)


def predict(W, b, inputs):
    return sigmoid(np.dot(inputs, W) + b)


def loss(W, b):
    preds = predict(W, b, INPUTS)
    label_probs = preds * TARGETS + (1 - preds) * (1 - TARGETS)
    return -np.sum(np.log(label_probs))


def loss_dict(params):
    return loss(params["W"], params["b"])


def loss_and_preds(W, b):
    preds = predict(W, b, INPUTS)
    return loss(W, b), {"preds": preds, "mean": preds.mean()}


def loss_grads_by_hand(W, b):
    """d loss / d z = preds - targets for the log-loss of a sigmoid."""
    r = predict(W, b, INPUTS) - TARGETS
    return INPUTS.T @ r, np.array(r.sum())


def jax_versions():
    import jax.numpy as jnp

    def predict_j(W, b, inputs):
        return 0.5 * (jnp.tanh((jnp.dot(inputs, W) + b) / 2) + 1)

    def loss_j(W, b):
        preds = predict_j(W, b, INPUTS)
        label_probs = preds * TARGETS + (1 - preds) * (1 - TARGETS)
        return -jnp.sum(jnp.log(label_probs))

    def loss_and_preds_j(W, b):
        preds = predict_j(W, b, INPUTS)
        return loss_j(W, b), {"preds": preds, "mean": preds.mean()}
    return predict_j, loss_j, loss_and_preds_j


def test_logistic_regression_argnums():
    gW_hand, gb_hand = loss_grads_by_hand(W0, B0)
    gW = jx.grad(loss, argnums=0)(W0, B0)
    gb = jx.grad(loss, 1)(W0, B0)
    gW2, gb2 = jx.grad(loss, (0, 1))(W0, B0)
    np.testing.assert_allclose(gW, gW_hand, rtol=1e-13)
    np.testing.assert_allclose(gb, gb_hand, rtol=1e-13)
    assert gb.shape == () and gW.shape == (3,)
    np.testing.assert_array_equal(gW2, gW)
    np.testing.assert_array_equal(gb2, gb)
    # dict parameters: the gradient is a dict of the same keys
    g = jx.grad(loss_dict)({"W": W0, "b": B0})
    assert set(g) == {"W", "b"}
    np.testing.assert_array_equal(g["W"], gW)
    np.testing.assert_array_equal(g["b"], gb)
    value, (vW, vb) = jx.value_and_grad(loss, (0, 1))(W0, B0)
    np.testing.assert_allclose(value, loss(W0, B0), rtol=1e-14)
    np.testing.assert_array_equal(vW, gW)
    np.testing.assert_array_equal(vb, gb)


def test_logistic_regression_against_jax(jax):
    predict_j, loss_j, loss_and_preds_j = jax_versions()
    for argnums in (0, 1, (0, 1)):
        assert_trees_close(jx.grad(loss, argnums)(W0, B0),
                           jax.grad(loss_j, argnums)(W0, B0), rtol=1e-13)
        assert_trees_close(jx.value_and_grad(loss, argnums)(W0, B0),
                           jax.value_and_grad(loss_j, argnums)(W0, B0), rtol=1e-13)
    params = {"W": W0, "b": B0}
    assert_trees_close(jx.grad(loss_dict)(params),
                       jax.grad(lambda p: loss_j(p["W"], p["b"]))(params), rtol=1e-13)
    # the tutorial's Jacobians of predict, w.r.t. W forward and the inputs reverse
    assert_trees_close(jx.jacfwd(predict, argnums=0)(W0, B0, INPUTS),
                       jax.jacfwd(predict_j, argnums=0)(W0, B0, INPUTS), rtol=1e-13)
    assert_trees_close(jx.jacrev(predict, argnums=2)(W0, B0, INPUTS),
                       jax.jacrev(predict_j, argnums=2)(W0, B0, INPUTS), rtol=1e-13)
    assert_trees_close(jx.jacrev(predict, argnums=(0, 1))(W0, B0, INPUTS),
                       jax.jacrev(predict_j, argnums=(0, 1))(W0, B0, INPUTS), rtol=1e-13)


def test_predict_jacobians_by_finite_differences():
    args = (W0, B0, INPUTS)
    for argnum in (0, 1, 2):
        for transform in (jx.jacfwd, jx.jacrev):
            assert_trees_close(transform(predict, argnums=argnum)(*args),
                               central_difference(predict, args, argnum),
                               rtol=1e-8, atol=1e-9)


def test_has_aux():
    g, aux = jx.grad(loss_and_preds, has_aux=True)(W0, B0)
    np.testing.assert_allclose(g, loss_grads_by_hand(W0, B0)[0], rtol=1e-13)
    preds = predict(W0, B0, INPUTS)
    assert set(aux) == {"preds", "mean"}
    np.testing.assert_allclose(aux["preds"], preds, rtol=1e-15)
    np.testing.assert_allclose(aux["mean"], preds.mean(), rtol=1e-15)
    (value, aux2), g2 = jx.value_and_grad(loss_and_preds, has_aux=True)(W0, B0)
    np.testing.assert_allclose(value, loss(W0, B0), rtol=1e-14)
    np.testing.assert_array_equal(g2, g)
    assert_trees_close(aux2, aux)
    # jacfwd / jacrev return (jacobian, aux)
    for transform in (jx.jacfwd, jx.jacrev):
        J, aux3 = transform(loss_and_preds, argnums=(0, 1), has_aux=True)(W0, B0)
        assert_trees_close(J, loss_grads_by_hand(W0, B0), rtol=1e-13)
        assert_trees_close(aux3, aux)


def test_has_aux_against_jax(jax):
    _, _, loss_and_preds_j = jax_versions()
    for name in ("grad", "value_and_grad", "jacfwd", "jacrev"):
        ours = getattr(jx, name)(loss_and_preds, argnums=(0, 1), has_aux=True)(W0, B0)
        theirs = getattr(jax, name)(loss_and_preds_j, argnums=(0, 1), has_aux=True)(W0, B0)
        assert_trees_close(ours, theirs, rtol=1e-13)


def test_has_aux_needs_a_pair():
    with pytest.raises(TypeError, match="pair"):
        jx.grad(lambda x: np.sum(x), has_aux=True)(np.ones(2))


# --------------------------------------------------------------- pytrees --

def f_tree(p):
    """A dict in, a dict with a nested tuple out."""
    w, b = p["w"], p["b"]
    return {"y": np.tanh(w * b[0]), "pair": (w.sum() * b[1], np.outer(w, b))}


P_TREE = {"w": np.array([0.5, -1.0, 2.0]), "b": np.array([0.3, 0.7])}


def f_tree_jax(p):
    import jax.numpy as jnp
    w, b = p["w"], p["b"]
    return {"y": jnp.tanh(w * b[0]), "pair": (w.sum() * b[1], jnp.outer(w, b))}


@pytest.mark.parametrize("transform", [jx.jacfwd, jx.jacrev])
def test_dict_of_dicts(transform):
    J = transform(f_tree)(P_TREE)
    assert set(J) == {"y", "pair"} and set(J["y"]) == {"w", "b"}
    assert isinstance(J["pair"], tuple) and len(J["pair"]) == 2
    assert J["y"]["w"].shape == (3, 3) and J["y"]["b"].shape == (3, 2)
    assert J["pair"][0]["w"].shape == (3,) and J["pair"][1]["b"].shape == (3, 2, 2)
    # against central differences, output leaf by output leaf
    for path in (lambda r: r["y"], lambda r: r["pair"][0], lambda r: r["pair"][1]):
        def part(p, path=path):
            return path(f_tree(p))
        assert_trees_close(path(J), central_difference(part, (P_TREE,), 0),
                           rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("name", ["jacfwd", "jacrev"])
def test_dict_of_dicts_against_jax(jax, name):
    assert_trees_close(getattr(jx, name)(f_tree)(P_TREE),
                       getattr(jax, name)(f_tree_jax)(P_TREE), rtol=1e-13)


Params = namedtuple("Params", ["scale", "shift"])


def test_lists_namedtuples_none_and_keywords():
    def f(xs, params, extra=None, *, power):
        total = sum(x ** power for x in xs)
        return [params.scale * total + params.shift, None, total.sum()]

    xs = [np.array([1.0, 2.0]), np.array([3.0, 4.0])]
    params = Params(scale=np.array(2.0), shift=np.array([0.5, 0.5]))
    J = jx.jacrev(f, argnums=(0, 1))(xs, params, power=np.array(2.0))
    assert isinstance(J, list) and len(J) == 3 and J[1] is None
    Jxs, Jparams = J[0]
    assert isinstance(Jxs, list) and isinstance(Jparams, Params)
    np.testing.assert_allclose(Jxs[0], np.diag(2.0 * 2 * xs[0]), rtol=1e-15)
    np.testing.assert_allclose(Jparams.scale, xs[0] ** 2 + xs[1] ** 2, rtol=1e-15)
    np.testing.assert_allclose(Jparams.shift, np.eye(2), rtol=1e-15)
    np.testing.assert_allclose(J[2][0][1], 2 * xs[1], rtol=1e-15)


def test_nested_tuple_output_is_not_stacked():
    def f(x):
        return x[0] * x[1], (np.sin(x), x[:2] * 3.0)

    J = jx.jacfwd(f)(X_DOCS)
    assert isinstance(J, tuple) and isinstance(J[1], tuple)
    assert J[0].shape == (3,) and J[1][0].shape == (3, 3) and J[1][1].shape == (2, 3)
    np.testing.assert_allclose(J[1][0], np.diag(np.cos(X_DOCS)), rtol=1e-15)


def test_non_array_leaves_are_refused_with_their_path():
    with pytest.raises(TypeError, match=r"argument 0\['name'\] is a str"):
        jx.grad(lambda p: np.sum(p["w"]))({"w": np.ones(2), "name": "layer"})
    with pytest.raises(TypeError, match=r"argument 1\[0\] is a object"):
        jx.jacfwd(lambda x, y: x)(np.ones(2), [object()])
    with pytest.raises(TypeError, match="complex"):
        jx.jacfwd(lambda x: x)(np.ones(2) + 1j)
    with pytest.raises(TypeError, match=r"output\['label'\]"):
        jx.jacfwd(lambda x: {"y": x, "label": "no"})(np.ones(2))


def test_grad_needs_a_scalar():
    with pytest.raises(TypeError, match=r"scalar.*\(3,\)"):
        jx.grad(np.sin)(np.ones(3))
    with pytest.raises(TypeError, match="scalar"):
        jx.value_and_grad(lambda x: (x.sum(), x.sum()))(np.ones(3))


def test_argnums_errors():
    with pytest.raises(ValueError, match="out of range"):
        jx.jacfwd(lambda x, y: x * y, argnums=2)(1.0, 2.0)
    with pytest.raises(TypeError, match="argnums"):
        jx.jacfwd(lambda x: x, argnums="0")
    assert_trees_close(jx.grad(lambda x, y: x * y, argnums=-1)(2.0, 3.0), np.array(2.0))


def test_transforms_do_not_nest():
    with pytest.raises(TypeError, match="do not nest"):
        jx.jacfwd(jx.jacrev(lambda x: np.sum(x ** 3)))(np.ones(2))


# ----------------------------------------------------------- the callable --

def test_traces_once_per_structure_and_shape():
    calls = []

    def f(x):
        calls.append(1)
        return np.sin(x) * x

    J = jx.jacfwd(f)
    for x in (np.ones(3), np.full(3, 2.0), [0.5, 0.5, 0.5], np.arange(3.0)):
        np.testing.assert_allclose(J(np.asarray(x, dtype=float)),
                                   np.diag(np.sin(x) + np.asarray(x) * np.cos(x)), rtol=1e-14)
    assert len(calls) == 1
    J(np.ones(4))                          # a new shape: a new trace
    J(np.zeros(3))                         # the first shape again: no new trace
    assert len(calls) == 2
    J(2.0)                                 # a number is an array of shape ()
    assert len(calls) == 3
    assert "3 trace(s)" in repr(J) and J.__name__ == "f"


def test_python_float_arguments_are_values_not_constants():
    # solve_ivp calls jac(t, y) with t a Python float: later calls reuse the compiled
    # call, and each sees its own t (derivative by hand: d/dy of [y1, t*(1-y0^2)*y1 - y0])
    calls = []

    def f(t, y):
        calls.append(1)
        return np.stack([y[1], t * (1 - y[0] ** 2) * y[1] - y[0]])

    J = jx.jacfwd(f, argnums=1)
    y = np.array([2.0, 0.5])
    for t in (0.3, 0.7, 0.7, 1.5):
        want = np.array([[0.0, 1.0], [-2 * t * y[0] * y[1] - 1, t * (1 - y[0] ** 2)]])
        np.testing.assert_allclose(J(t, y), want, rtol=1e-14)
    assert len(calls) == 1
    g = jx.grad(lambda t, y: t * np.sum(y ** 2), argnums=(0, 1))
    for t in (2.0, 3.0):
        gt, gy = g(t, y)
        assert float(gt) == np.sum(y ** 2)
        np.testing.assert_allclose(gy, 2 * t * y, rtol=1e-15)


def test_batch_dims():
    X = np.random.default_rng(1).uniform(-1, 1, (5, 3))
    JB = jx.jacfwd(f_docs, batch_dims=1)(X)
    assert JB.shape == (5, 4, 3)
    for k in range(5):
        np.testing.assert_array_equal(JB[k], jx.jacfwd(f_docs)(X[k]))
    # per-example gradients: W shared by every point (0), the inputs batched (1)
    def point_loss(W, x):
        return np.log1p(np.exp(-np.dot(x, W)))
    g = jx.grad(point_loss, batch_dims=(0, 1))(W0, INPUTS)
    assert g.shape == (4, 3)
    for k in range(4):
        np.testing.assert_allclose(g[k], jx.grad(point_loss)(W0, INPUTS[k]), rtol=1e-14)
        np.testing.assert_allclose(g[k], -INPUTS[k] * sigmoid(-INPUTS[k] @ W0), rtol=1e-13)
    with pytest.raises(ValueError, match="batch_dims"):
        jx.jacfwd(f_docs, batch_dims=2)(X_DOCS)


def test_batch_dims_against_jax_vmap(jax):
    import jax.numpy as jnp

    def point_loss_j(W, x):
        return jnp.log1p(jnp.exp(-jnp.dot(x, W)))

    def point_loss(W, x):
        return np.log1p(np.exp(-np.dot(x, W)))
    ours = jx.value_and_grad(point_loss, batch_dims=(0, 1))(W0, INPUTS)
    theirs = jax.vmap(jax.value_and_grad(point_loss_j), in_axes=(None, 0))(W0, INPUTS)
    assert_trees_close(ours, theirs, rtol=1e-13)


def test_sparse_threads_and_out():
    def broyden(x):
        left = np.concatenate([np.zeros(1), x[:-1]])
        right = np.concatenate([x[1:], np.zeros(1)])
        return (3 - 2 * x) * x - left - 2 * right + 1

    x = np.linspace(-1, -0.1, 50)
    dense = jx.jacfwd(broyden)(x)
    for transform in (jx.jacfwd, jx.jacrev):
        Js = transform(broyden, sparse=True)(x)
        assert Js.nnz == 3 * 50 - 2
        np.testing.assert_array_equal(Js.toarray(), dense)
    X = np.stack([x, 2 * x, 3 * x])
    J1 = jx.jacrev(broyden, batch_dims=1, threads=1)(X)
    J2 = jx.jacrev(broyden, batch_dims=1, threads=2)(X)
    np.testing.assert_array_equal(J1, J2)
    out = np.empty((50, 50))
    assert jx.jacfwd(broyden)(x, out=out) is out
    np.testing.assert_array_equal(out, dense)
    gout = np.empty(3)
    assert jx.grad(loss)(W0, B0, out=gout) is gout
    np.testing.assert_allclose(gout, loss_grads_by_hand(W0, B0)[0], rtol=1e-13)
    tree_out = {"w": np.empty((3, 3)), "b": np.empty((3, 2))}
    res = jx.jacfwd(lambda p: f_tree(p)["y"])(P_TREE, out=tree_out)
    assert res is tree_out
    assert_trees_close(tree_out, jx.jacfwd(lambda p: f_tree(p)["y"])(P_TREE))


def test_keyword_arguments_are_traced_not_differentiated():
    f = jx.grad(lambda x, *, scale: scale * np.sum(x ** 2))
    np.testing.assert_allclose(f(np.array([1.0, 2.0]), scale=3.0), [6.0, 12.0])
    np.testing.assert_allclose(f(np.array([1.0, 2.0]), scale=5.0), [10.0, 20.0])


def test_results_are_float64_and_equal_to_compile():
    x32 = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    J = jx.jacrev(f_docs)(x32)
    assert J.dtype == np.float64
    F = jx.compile(f_docs, X_DOCS)
    np.testing.assert_array_equal(J, F.jacobian(X_DOCS, mode="reverse"))
