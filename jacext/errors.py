"""Exceptions raised by jacext."""


class JacextError(Exception):
    """Base class of jacext's own errors."""


class TracingError(JacextError, TypeError):
    """``f`` did something a trace cannot record.

    Python control flow on a traced value (``if x > 0``), ``float(x)``,
    ``math.sin(x)``, writing a traced value into a NumPy array, or a NumPy
    function jacext does not support.  The message names the cause, the line
    and the fix.
    """
