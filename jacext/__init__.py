"""jacext: fast Jacobians of plain NumPy code.

Trace the function once into an expression graph, compile it to a flat tape,
and fill Jacobians in a C virtual machine.

>>> import numpy as np, jacext as jx
>>> jx.jacobian(lambda x: x**2 * x, np.array([2.0, 3.0]))
array([[12.,  0.],
       [ 0., 27.]])

Optional parts, imported when first used: ``jacext.torch`` (PyTorch tensors and
autograd) and ``jacext.dask`` (dask arrays; ``F(X)`` on one hands it the work).
"""
from jacext import pytree
from jacext._function import Function
from jacext._version import __version__
from jacext.api import compile, hessian, hvp, jacobian
from jacext.errors import JacextError, TracingError
from jacext.trace import Array
from jacext.transforms import grad, jacfwd, jacrev, value_and_grad

__all__ = [
    "Array",
    "Function",
    "JacextError",
    "TracingError",
    "__version__",
    "compile",
    "hessian",
    "hvp",
    "grad",
    "jacfwd",
    "jacobian",
    "jacrev",
    "pytree",
    "value_and_grad",
]


def __getattr__(name):
    # jacext.torch and jacext.dask import their frameworks only when used
    if name in ("torch", "dask"):
        import importlib
        return importlib.import_module(f"jacext.{name}")
    raise AttributeError(f"module 'jacext' has no attribute {name!r}")
