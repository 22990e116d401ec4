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


#: NumPy spellings of the SciPy functions users meet most, for the message below
_NUMPY_SPELLING = {
    "logsumexp": "m = np.max(x); m + np.log(np.sum(np.exp(x - m)))",
    "softmax": "e = np.exp(x - np.max(x)); e / np.sum(e)",
    "log_softmax": "(x - np.max(x)) - np.log(np.sum(np.exp(x - np.max(x))))",
}


def explain_failure(exc):
    """The TracingError to raise for ``exc`` (a ValueError or TypeError that came out of a
    traced function), or None to let it go as it is.

    NumPy wraps what a conversion raised ("setting an array element with a sequence"):
    the TracingError inside says what and where.  A SciPy function written for the array
    API (``scipy.special.logsumexp``) converts its input with ``np.asanyarray`` and
    chooses its code by the dtype; a traced array becomes an object array there, and the
    function fails deep inside SciPy: the message names the function and its NumPy
    spelling, which traces.
    """
    if isinstance(exc, TracingError):
        return None
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, TracingError):
        return cause
    tb, caller = exc.__traceback__, None
    while tb is not None:
        frame = tb.tb_frame
        module = frame.f_globals.get("__name__", "") or ""
        if module.startswith("scipy."):
            public = ".".join(p for p in module.split(".") if not p.startswith("_"))
            name = f"{public}.{frame.f_code.co_name}"
            where = f"\n  at {caller[0]}:{caller[1]}" if caller is not None else ""
            hint = _NUMPY_SPELLING.get(frame.f_code.co_name)
            return TracingError(
                f"jacext: {name} failed on a traced array ({type(exc).__name__}: {exc}): "
                f"SciPy's array-API functions convert their input with np.asanyarray and "
                f"choose their code by its dtype, which a traced array does not have"
                f"{where}\n  Fix: write it with NumPy functions, which trace"
                + (f" ({frame.f_code.co_name}: {hint})" if hint else ""))
        caller = (frame.f_code.co_filename, tb.tb_lineno)
        tb = tb.tb_next
    return None
