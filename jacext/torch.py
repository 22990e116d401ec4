"""PyTorch interop: tensors in and out, and a compiled Function inside torch's autograd.

jacext computes in float64 NumPy arrays on the CPU.  This module, imported only when
asked for (``import jacext.torch``; torch itself is imported when first needed), lets
torch code use it without conversions:

* ``jx.jacobian``, ``jx.jacfwd``, ``jx.jacrev``, ``jx.grad`` and ``jx.value_and_grad``
  take tensors (or pytrees of them) and then return tensors: float32 where every tensor
  argument is float32, else float64, on the device of the first tensor argument.
  Tensors that require grad are read detached; the derivatives returned are plain
  tensors, outside torch's autograd graph.
* :func:`function` wraps a compiled Function as a differentiable torch function (a
  ``torch.autograd.Function`` underneath): its backward is the Function's vjp, its
  forward-mode rule the Function's jvp, and its vmap rule the Function's own batches,
  so it sits inside a torch model, ``loss.backward()`` reaches the tensors before it,
  and ``torch.autograd.gradcheck``, ``torch.func.grad``, ``torch.func.vjp``,
  ``torch.func.jvp`` and ``torch.func.vmap`` work on it.  Leading axes beyond the
  traced shapes are a batch, as for the Function.  Derivatives of the backward itself
  (double backward) are not available.

>>> import numpy as np, torch, jacext as jx, jacext.torch
>>> F = jx.compile(lambda x: np.sin(x) * x, np.zeros(3))
>>> T = jacext.torch.function(F)
>>> x = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
>>> T(x).sum().backward()
>>> torch.allclose(x.grad, torch.sin(x) + x * torch.cos(x))
True
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp

from jacext.pytree import tree_flatten


def _torch():
    try:
        import torch
    except ImportError:    # pragma: no cover - only without torch
        raise ImportError("jacext.torch needs PyTorch: pip install torch") from None
    return torch


# ------------------------------------------------------------ conversions --

def tensor_to_array(t: Any) -> np.ndarray:
    """A float64 NumPy array of a tensor's values (detached, on the CPU)."""
    if t.is_complex():
        raise TypeError(f"jacext: a complex tensor ({t.dtype}); jacext differentiates real "
                        "float64 arrays")
    arr = t.detach()
    if arr.device.type != "cpu":
        arr = arr.cpu()
    if arr.is_conj() or arr.is_neg():
        arr = arr.resolve_conj().resolve_neg()
    arr = arr.numpy()
    return arr if arr.dtype == np.float64 else arr.astype(np.float64)


def result_dtype_device(tensors: tuple) -> tuple:
    """(dtype, device) of results made from these tensor arguments: float32 where every
    one is float32, else float64; the first one's device."""
    torch = _torch()
    dtype = (torch.float32 if tensors and all(t.dtype == torch.float32 for t in tensors)
             else torch.float64)
    return dtype, tensors[0].device


def array_to_tensor(a: Any, dtype: Any, device: Any) -> Any:
    """A tensor of a NumPy result (a scipy.sparse array becomes a sparse CSR tensor)."""
    torch = _torch()
    if sp.issparse(a):
        csr = sp.csr_array(a)
        return torch.sparse_csr_tensor(torch.from_numpy(csr.indptr.astype(np.int64)),
                                       torch.from_numpy(csr.indices.astype(np.int64)),
                                       torch.from_numpy(csr.data).to(dtype), csr.shape,
                                       device=device)
    if isinstance(a, np.ndarray):
        # from_numpy shares a writeable array's memory; a read-only one is copied
        t = torch.from_numpy(a if a.flags.writeable else a.copy())
    else:
        t = torch.as_tensor(np.asarray(a))
    return t.to(dtype=dtype, device=device)


def to_tensors(result: Any, tensors: tuple) -> Any:
    """Every array of a (pytree) result as a tensor, typed and placed after ``tensors``."""
    dtype, device = result_dtype_device(tensors)
    leaves, tree = tree_flatten(result)
    return tree.unflatten([array_to_tensor(a, dtype, device)
                           if isinstance(a, (np.ndarray, np.generic)) or sp.issparse(a)
                           else a for a in leaves])


def _sum_to(g: np.ndarray, shape: tuple) -> np.ndarray:
    """A broadcast gradient summed back to an argument's shape."""
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    g = g.sum(axis=tuple(range(lead))) if lead > 0 else g
    axes = tuple(k for k, (a, b) in enumerate(zip(g.shape, shape)) if b == 1 and a != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


# ------------------------------------------------- the autograd function --

def _aligned(xs: tuple, in_dims: tuple, shapes: tuple, batch_size: int) -> tuple:
    """A vmap rule's operands for F's batches, which are leading axes that broadcast
    right-aligned: each mapped axis moved to the front, with singleton axes that line it
    up above the others' own batch axes.  Returns (operands, the depth of own batch axes
    of the result)."""
    own = [x.dim() - (0 if d is None else 1) - len(s) for x, d, s in zip(xs, in_dims, shapes)]
    depth = max(own) if own else 0
    moved = []
    for x, d, k in zip(xs, in_dims, own):
        if d is not None:
            x = x.movedim(d, 0)
            x = x.reshape((batch_size,) + (1,) * (depth - k) + tuple(x.shape[1:]))
        moved.append(x)
    return tuple(moved), depth


def _no_double_backward(*_):
    raise RuntimeError("jacext: second derivatives through torch (double backward, "
                       "torch.func.hessian) are not available for a jacext function")


@functools.lru_cache(maxsize=1)
def _autograd_functions():
    """The torch.autograd.Function classes (made once, when torch is first needed): the
    value op, whose backward and forward-mode rules are ops of their own (the vjp and the
    jvp), so that each rule runs on plain tensors under torch.func's transforms."""
    torch = _torch()

    def meta(xs):
        return result_dtype_device(tuple(xs))

    class VjpOp(torch.autograd.Function):
        """(F, sum-to shapes, n_args, *xs, *cotangents) -> cotangent @ J, per argument."""

        @staticmethod
        def forward(F, targets, n_args, *operands):
            xs, cot = operands[:n_args], operands[n_args:]
            _, xbar = F.vjp(*[tensor_to_array(x) for x in xs],
                            tuple(tensor_to_array(c) for c in cot) if F.out_is_tuple
                            else tensor_to_array(cot[0]))
            xbar = xbar if len(F.arg_shapes) > 1 else (xbar,)
            return tuple(array_to_tensor(_sum_to(g, t), x.dtype, x.device)
                         for g, t, x in zip(xbar, targets, xs))

        setup_context = staticmethod(lambda ctx, inputs, output: None)
        backward = staticmethod(_no_double_backward)
        jvp = staticmethod(_no_double_backward)

        @staticmethod
        def vmap(info, in_dims, F, targets, n_args, *operands):
            shapes = tuple(F.arg_shapes) + tuple(F.out_shapes)
            moved, depth = _aligned(operands, in_dims[3:], shapes, info.batch_size)
            # each slice sums to its target: the mapped axis in front of it, lined up
            sums = tuple((info.batch_size,) + (1,) * (depth + len(s) - len(t)) + tuple(t)
                         for s, t in zip(F.arg_shapes, targets))
            out = VjpOp.apply(F, sums, n_args, *moved)
            out = tuple(g.reshape((info.batch_size,) + tuple(t)) for g, t in zip(out, targets))
            return out, (0,) * len(out)

    class JvpOp(torch.autograd.Function):
        """(F, n_args, *xs, *tangents) -> J @ tangents, per output."""

        @staticmethod
        def forward(F, n_args, *operands):
            xs, dot = operands[:n_args], operands[n_args:]
            _, ydot = F.jvp(*[tensor_to_array(x) for x in xs],
                            tuple(tensor_to_array(t) for t in dot) if n_args > 1
                            else tensor_to_array(dot[0]))
            dtype, device = meta(xs)
            return tuple(array_to_tensor(y, dtype, device)
                         for y in (ydot if F.out_is_tuple else (ydot,)))

        setup_context = staticmethod(lambda ctx, inputs, output: None)
        backward = staticmethod(_no_double_backward)
        jvp = staticmethod(_no_double_backward)

        @staticmethod
        def vmap(info, in_dims, F, n_args, *operands):
            shapes = tuple(F.arg_shapes) * 2
            moved, _ = _aligned(operands, in_dims[2:], shapes, info.batch_size)
            out = JvpOp.apply(F, n_args, *moved)
            return out, (0,) * len(out)

    class ValueOp(torch.autograd.Function):
        """(F, *xs) -> F(*xs): backward by VjpOp, forward mode by JvpOp."""

        @staticmethod
        def forward(F, *xs):
            y = F(*[tensor_to_array(x) for x in xs])
            dtype, device = meta(xs)
            return tuple(array_to_tensor(v, dtype, device)
                         for v in (y if F.out_is_tuple else (y,)))

        @staticmethod
        def setup_context(ctx, inputs, output):
            F, *xs = inputs
            ctx.F = F
            ctx.save_for_backward(*xs)
            ctx.save_for_forward(*xs)
            ctx.out_shapes = tuple(tuple(y.shape) for y in output)
            ctx.set_materialize_grads(False)

        @staticmethod
        def backward(ctx, *grads):
            F = ctx.F
            xs = ctx.saved_tensors
            dtype, device = meta(xs)
            cot = tuple(torch.zeros(s, dtype=dtype, device=device) if g is None else g
                        for g, s in zip(grads, ctx.out_shapes))
            targets = tuple(tuple(x.shape) for x in xs)
            return (None,) + VjpOp.apply(F, targets, len(xs), *xs, *cot)

        @staticmethod
        def jvp(ctx, _F_tangent, *tangents):
            F = ctx.F
            xs = ctx.saved_tensors
            dot = tuple(torch.zeros_like(x) if t is None else t for t, x in zip(tangents, xs))
            return JvpOp.apply(F, len(xs), *xs, *dot)

        @staticmethod
        def vmap(info, in_dims, F, *xs):
            moved, _ = _aligned(xs, in_dims[1:], F.arg_shapes, info.batch_size)
            out = ValueOp.apply(F, *moved)
            return out, (0,) * len(out)

    return ValueOp


class TorchFunction:
    """A compiled Function taking and returning tensors: what :func:`function` makes.

    Calling it is differentiable in torch (backward by the Function's vjp, forward mode by
    its jvp); :meth:`jacobian`, :meth:`jvp` and :meth:`vjp` return plain tensors.

    >>> import numpy as np, torch, jacext as jx, jacext.torch
    >>> T = jacext.torch.function(jx.compile(lambda x: x ** 2, np.zeros(2)))
    >>> x = torch.tensor([1.0, 3.0], dtype=torch.float64)
    >>> T.jacobian(x)
    tensor([[2., 0.],
            [0., 6.]], dtype=torch.float64)
    >>> T.jvp(x, torch.ones(2, dtype=torch.float64))[1]
    tensor([2., 6.], dtype=torch.float64)
    >>> T.vjp(x, torch.ones(2, dtype=torch.float64))[1]
    tensor([2., 6.], dtype=torch.float64)
    """

    def __init__(self, F: Any):
        from jacext._function import Function
        if not isinstance(F, Function):
            raise TypeError(f"jacext.torch.function: F must be a compiled jacext Function "
                            f"(jx.compile(f, x)); got {type(F).__name__}")
        self.F = F
        self._op = _autograd_functions()

    def __repr__(self) -> str:
        return f"<jacext.torch.function of {self.F!r}>"

    def _tensors(self, args: tuple) -> tuple:
        torch = _torch()
        return tuple(a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))
                     for a in args)

    def __call__(self, *args: Any) -> Any:
        """F's value; differentiable in torch with respect to every tensor argument."""
        out = self._op.apply(self.F, *self._tensors(args))
        return out if self.F.out_is_tuple else out[0]

    def jacobian(self, *args: Any, **kwargs: Any) -> Any:
        """``F.jacobian`` on tensors (same keywords), as tensors."""
        tensors = self._tensors(args)
        return to_tensors(self.F.jacobian(*[tensor_to_array(t) for t in tensors], **kwargs),
                          tensors)

    def jvp(self, *args: Any) -> Any:
        """``F.jvp(*args, tangents) -> (value, J @ tangents)`` on tensors."""
        tensors = self._tensors(args[:-1])
        tangents = args[-1]
        if isinstance(tangents, (tuple, list)):
            tangents = tuple(tensor_to_array(t) for t in self._tensors(tuple(tangents)))
        else:
            tangents = tensor_to_array(self._tensors((tangents,))[0])
        return to_tensors(self.F.jvp(*[tensor_to_array(t) for t in tensors], tangents),
                          tensors)

    def vjp(self, *args: Any) -> Any:
        """``F.vjp(*args, cotangent) -> (value, cotangent @ J)`` on tensors."""
        tensors = self._tensors(args[:-1])
        cot = args[-1]
        if isinstance(cot, (tuple, list)):
            cot = tuple(tensor_to_array(t) for t in self._tensors(tuple(cot)))
        else:
            cot = tensor_to_array(self._tensors((cot,))[0])
        return to_tensors(self.F.vjp(*[tensor_to_array(t) for t in tensors], cot), tensors)


def function(F: Any) -> TorchFunction:
    """A compiled Function as a differentiable torch function: tensors in, tensors out.

    Backward is ``F.vjp``, forward mode (``torch.func.jvp``) is ``F.jvp``, and leading
    axes beyond the traced shapes are a batch, so it can sit inside a torch model:

    >>> import numpy as np, torch, jacext as jx, jacext.torch
    >>> F = jx.compile(lambda x, w: np.tanh(x @ w), np.zeros(3), np.zeros((3, 2)))
    >>> layer = jacext.torch.function(F)
    >>> X = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)  # a batch of 5
    >>> W = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    >>> layer(X, W).shape
    torch.Size([5, 2])
    >>> torch.autograd.gradcheck(layer, (X, W))
    True
    """
    return TorchFunction(F)


def compile(f: Callable, *args: Any, name: str | None = None) -> TorchFunction:
    """``jx.compile`` at the shapes of tensors, wrapped by :func:`function`.

    ``f`` is NumPy code (it is traced, as for ``jx.compile``); the result takes tensors.

    >>> import numpy as np, torch, jacext.torch
    >>> T = jacext.torch.compile(lambda x: np.exp(x).sum(), torch.zeros(4))
    >>> x = torch.zeros(4, requires_grad=True)
    >>> T(x).backward()
    >>> x.grad
    tensor([1., 1., 1., 1.])
    """
    from jacext.api import compile as _compile
    torch = _torch()
    arrays = [tensor_to_array(a) if isinstance(a, torch.Tensor) else a for a in args]
    return TorchFunction(_compile(f, *arrays, name=name))


__all__ = ["TorchFunction", "compile", "function"]
