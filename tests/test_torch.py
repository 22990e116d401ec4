"""jacext/torch.py: tensors in and out, and a compiled Function inside torch's autograd.

References are torch's own derivatives of the same functions written in torch
(torch.autograd and torch.func), and gradcheck's finite differences.
"""
from __future__ import annotations

import numpy as np
import pytest

import jacext as jx

torch = pytest.importorskip("torch")
import torch.func as tf  # noqa: E402

import jacext.torch as jt  # noqa: E402


def layer_np(x, w):
    """A batched layer with two outputs, in NumPy."""
    return np.tanh(x @ w), np.sum(np.sin(x) * x)


def layer_torch(x, w):
    return torch.tanh(x @ w), torch.sum(torch.sin(x) * x, dim=-1)


F_LAYER = jx.compile(layer_np, np.zeros(3), np.zeros((3, 2)))


def rand(*shape, dtype=torch.float64, requires_grad=False):
    g = torch.Generator().manual_seed(sum(shape) + 7)
    return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_(requires_grad)


# ------------------------------------------------------------- gradcheck --

def test_gradcheck_through_function():
    T = jt.function(F_LAYER)
    X = rand(5, 3, requires_grad=True)            # a batch of 5 points
    W = rand(3, 2, requires_grad=True)            # shared: its gradient sums the batch
    assert torch.autograd.gradcheck(T, (X, W), check_forward_ad=True)
    # one point, one output
    G = jt.function(jx.compile(lambda x: np.exp(x) * np.cos(x[::-1]), np.zeros(4)))
    assert torch.autograd.gradcheck(G, (rand(4, requires_grad=True),), check_forward_ad=True)


def test_values_and_gradients_equal_torch():
    T = jt.function(F_LAYER)
    X = rand(6, 3, requires_grad=True)
    W = rand(3, 2, requires_grad=True)
    y, s = T(X, W)
    assert isinstance(y, torch.Tensor) and y.shape == (6, 2) and s.shape == (6,)
    assert y.dtype == torch.float64 and y.requires_grad
    yt, st = layer_torch(X, W)
    torch.testing.assert_close(y, yt, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(s, st, rtol=1e-14, atol=1e-15)
    (y ** 2).sum().backward()
    gX, gW = X.grad.clone(), W.grad.clone()
    X.grad = W.grad = None
    (yt ** 2).sum().backward()
    torch.testing.assert_close(gX, X.grad, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(gW, W.grad, rtol=1e-13, atol=1e-14)


def test_inside_a_torch_model():
    torch.manual_seed(0)
    linear = torch.nn.Linear(4, 3, dtype=torch.float64)
    T = jt.function(F_LAYER)
    W = rand(3, 2, requires_grad=True)
    X = rand(8, 4)

    def model(head):
        h = linear(X)                        # torch before jacext ...
        y, s = head(h, W)
        return (y.sum(dim=1) * s).mean()     # ... and torch after it

    loss = model(T)
    loss.backward()
    grads = [p.grad.clone() for p in (*linear.parameters(), W)]
    linear.zero_grad()
    W.grad = None
    loss_t = model(layer_torch)
    loss_t.backward()
    torch.testing.assert_close(loss, loss_t, rtol=1e-13, atol=1e-14)
    for g, p in zip(grads, (*linear.parameters(), W)):
        torch.testing.assert_close(g, p.grad, rtol=1e-12, atol=1e-13)
    # an optimiser step runs on it
    opt = torch.optim.SGD([W], lr=0.1)
    before = model(T).item()
    for _ in range(5):
        opt.zero_grad()
        model(T).backward()
        opt.step()
    assert model(T).item() < before


# ------------------------------------------------------------- torch.func --

def test_torch_func_transforms():
    T = jt.function(F_LAYER)
    x, w = rand(3), rand(3, 2)
    v = torch.arange(3.0, dtype=torch.float64)
    ours = tf.jvp(lambda x: T(x, w), (x,), (v,))
    theirs = tf.jvp(lambda x: layer_torch(x, w), (x,), (v,))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(tf.grad(lambda x: T(x, w)[1])(x),
                               tf.grad(lambda x: layer_torch(x, w)[1])(x), rtol=1e-13, atol=0)
    _, pull = tf.vjp(lambda w: T(x, w)[0], w)
    _, pull_t = tf.vjp(lambda w: layer_torch(x, w)[0], w)
    u = torch.tensor([1.0, -2.0], dtype=torch.float64)
    torch.testing.assert_close(pull(u)[0], pull_t(u)[0], rtol=1e-13, atol=1e-14)
    X = rand(4, 3)
    torch.testing.assert_close(tf.vmap(lambda x: T(x, w)[0])(X), layer_torch(X, w)[0],
                               rtol=1e-14, atol=1e-15)
    for name in ("jacrev", "jacfwd"):
        torch.testing.assert_close(getattr(tf, name)(lambda w: T(x, w)[0])(w),
                                   getattr(tf, name)(lambda w: layer_torch(x, w)[0])(w),
                                   rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(tf.vmap(tf.jacrev(lambda x: T(x, w)[0]))(X),
                               tf.vmap(tf.jacrev(lambda x: layer_torch(x, w)[0]))(X),
                               rtol=1e-13, atol=1e-14)


def test_forward_ad_dual_numbers():
    import torch.autograd.forward_ad as fwAD
    T = jt.function(F_LAYER)
    x, w, v = rand(5, 3), rand(3, 2), rand(5, 3) * 0.5
    with fwAD.dual_level():
        y, _ = T(fwAD.make_dual(x, v), w)
        ydot = fwAD.unpack_dual(y).tangent
    _, want = tf.jvp(lambda x: layer_torch(x, w)[0], (x,), (v,))
    torch.testing.assert_close(ydot, want, rtol=1e-13, atol=1e-14)


def test_double_backward_is_a_clear_error():
    T = jt.function(jx.compile(lambda x: np.sum(x ** 3), np.zeros(2)))
    x = rand(2, requires_grad=True)
    (g,) = torch.autograd.grad(T(x), x, create_graph=True)
    with pytest.raises(RuntimeError, match="second derivatives"):
        g.sum().backward()


def test_float32_in_float32_out():
    T = jt.function(F_LAYER)
    X = rand(5, 3, dtype=torch.float32, requires_grad=True)
    W = rand(3, 2, dtype=torch.float32, requires_grad=True)
    y, s = T(X, W)
    assert y.dtype == torch.float32 and s.dtype == torch.float32
    (y.sum() + s.sum()).backward()
    assert X.grad.dtype == torch.float32 and W.grad.dtype == torch.float32
    yt, _ = layer_torch(X.detach().double(), W.detach().double())
    torch.testing.assert_close(y.double(), yt, rtol=1e-6, atol=1e-6)


def test_methods_take_and_give_tensors():
    T = jt.function(F_LAYER)
    x, w = rand(3), rand(3, 2)
    Jx, Jw = T.jacobian(x, w, argnums=(0, 1))[0]
    want = tf.jacrev(lambda x, w: layer_torch(x, w)[0], argnums=(0, 1))(x, w)
    torch.testing.assert_close(Jx, want[0], rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(Jw, want[1], rtol=1e-13, atol=1e-14)
    (y, s), (ydot, sdot) = T.jvp(x, w, (torch.ones(3, dtype=torch.float64), torch.zeros(3, 2)))
    assert isinstance(ydot, torch.Tensor)
    torch.testing.assert_close(ydot, Jx.sum(dim=1), rtol=1e-13, atol=1e-14)
    _, (xbar, wbar) = T.vjp(x, w, (torch.ones(2, dtype=torch.float64), torch.tensor(0.0)))
    torch.testing.assert_close(xbar, Jx.sum(dim=0), rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(wbar, Jw.sum(dim=0), rtol=1e-13, atol=1e-14)
    C = jt.compile(lambda x: np.exp(x).sum(), torch.zeros(4))
    xr = torch.zeros(4, requires_grad=True)
    C(xr).backward()
    torch.testing.assert_close(xr.grad, torch.ones(4))
    with pytest.raises(TypeError, match="compiled jacext Function"):
        jt.function(lambda x: x)


# --------------------------------------------- the transforms on tensors --

def test_jacobian_tensors_in_tensors_out():
    x = rand(3, requires_grad=True)           # read detached: no error from torch
    J = jx.jacobian(lambda x: np.sin(x) * x.sum(), x)
    assert isinstance(J, torch.Tensor) and J.dtype == torch.float64 and not J.requires_grad
    want = torch.autograd.functional.jacobian(lambda x: torch.sin(x) * x.sum(), x.detach())
    torch.testing.assert_close(J, want, rtol=1e-14, atol=1e-15)
    J32 = jx.jacobian(lambda x: np.sin(x) * x.sum(), x.detach().float())
    assert J32.dtype == torch.float32
    Jx, Jp = jx.jacobian(lambda x, p: p[0] * np.exp(x), (x, rand(2)))
    assert isinstance(Jx, torch.Tensor) and isinstance(Jp, torch.Tensor)


def test_transforms_on_tensor_pytrees_equal_torch_func():
    params = {"w": rand(3, 2), "b": rand(2)}
    x = rand(4, 3)

    def loss_np(p, x):
        return np.sum(np.tanh(x @ p["w"] + p["b"]) ** 2)

    def loss_t(p, x):
        return torch.sum(torch.tanh(x @ p["w"] + p["b"]) ** 2)

    g = jx.grad(loss_np)(params, x)
    want = tf.grad(loss_t)(params, x)
    assert set(g) == {"w", "b"} and all(isinstance(v, torch.Tensor) for v in g.values())
    for k in g:
        torch.testing.assert_close(g[k], want[k], rtol=1e-13, atol=1e-14)
    value, g2 = jx.value_and_grad(loss_np)(params, x)
    torch.testing.assert_close(value, loss_t(params, x), rtol=1e-14, atol=0)
    for name in ("jacfwd", "jacrev"):
        J = getattr(jx, name)(lambda p, x: np.tanh(x @ p["w"] + p["b"]))(params, x)
        Jt = getattr(tf, name)(lambda p, x: torch.tanh(x @ p["w"] + p["b"]))(params, x)
        for k in ("w", "b"):
            torch.testing.assert_close(J[k], Jt[k], rtol=1e-13, atol=1e-14)


def test_function_refuses_tensors_that_require_grad_with_a_hint():
    with pytest.raises(TypeError, match="jacext.torch.function"):
        F_LAYER(rand(3, requires_grad=True), np.zeros((3, 2)))
