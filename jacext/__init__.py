"""jacext: fast Jacobians of plain NumPy code.

Trace the function once into an expression graph, compile it to a flat tape,
and fill Jacobians in a C virtual machine.

>>> import numpy as np, jacext as jx
>>> jx.jacobian(lambda x: x**2 * x, np.array([2.0, 3.0]))
array([[12.,  0.],
       [ 0., 27.]])
"""
from jacext._function import Function
from jacext._version import __version__
from jacext.api import compile, hessian, hvp, jacobian
from jacext.errors import JacextError, TracingError
from jacext.trace import Array

__all__ = [
    "Array",
    "Function",
    "JacextError",
    "TracingError",
    "__version__",
    "compile",
    "hessian",
    "hvp",
    "jacobian",
]
