"""Exceptions raised by jacext."""


class JacextError(Exception):
    """Base class of jacext's own errors: ``except jx.JacextError`` catches them all.

    >>> import numpy as np, jacext as jx
    >>> def f(x):
    ...     return x if x[0] > 0 else -x         # Python control flow on a traced value
    >>> try:
    ...     jx.compile(f, np.ones(2), control_flow="error")
    ... except jx.JacextError as e:
    ...     print(type(e).__name__)
    TracingError
    """


class TracingError(JacextError, TypeError):
    """``f`` did something a trace cannot record.

    Python control flow on a traced value (``if x > 0``), ``float(x)``,
    ``math.sin(x)``, writing a traced value into a NumPy array, or a NumPy
    function jacext does not support.  The message names the cause, the line
    and the fix.  It is a TypeError too, as NumPy's own refusals are.

    >>> import math, numpy as np, jacext as jx
    >>> try:
    ...     jx.compile(lambda x: math.sin(x[0]), np.ones(1))
    ... except TypeError as e:
    ...     print(type(e).__name__)
    TracingError
    """
