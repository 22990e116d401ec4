"""The pipeline: from a user's function to a compiled Function.

    trace      (trace.py, numpy_rules.py)  f run on symbolic arrays: every NumPy call one
                                           bulk insert into the expression graph
    graph      (_graph.pyx)                hash-consed on insert: common subexpressions,
                                           constant folding, exact identities, immediates
    passes     (passes.pyx)                dead code, constant slots, work slots by
                                           liveness: the tape's arrays
    Tape       (_tape.pyx)                 checked once, derived tables, the C sweeps
    Function   (_function.pyx)             entry points; plans (plan.py) decide per request
"""
from __future__ import annotations

import numpy as np

from jacext._function import Function
from jacext._guards import GuardCheck
from jacext._tape import Tape
from jacext.guarded import GuardedFunction, _Tape
from jacext.passes import lower
from jacext.trace import Guards, trace

#: the policies for Python control flow on traced values (``jx.compile(control_flow=)``)
CONTROL_FLOW = ("guard", "error")


def compile_function(f, arg_shapes, name=None, point=None, control_flow="guard"):
    """Trace ``f`` at these argument shapes and compile it to a Function.

    ``point``: the arguments' values (a tuple of arrays), where Python control flow on
    traced values takes its branches (``control_flow="guard"``; the result is then a
    :class:`jacext.guarded.GuardedFunction` if any branch was met).  Without a point,
    or with ``control_flow="error"``, such control flow is a TracingError.
    """
    if control_flow not in CONTROL_FLOW:
        raise ValueError(f"jacext: control_flow must be one of {CONTROL_FLOW}; got "
                         f"{control_flow!r}")
    arg_shapes = tuple(tuple(int(d) for d in s) for s in arg_shapes)
    if name is None:
        name = getattr(f, "__name__", type(f).__name__)
    t = traced_tape(f, arg_shapes, str(name), point if control_flow == "guard" else None)
    if t.check is None:
        return t.F
    return GuardedFunction(f, t, arg_shapes, str(name))


def traced_tape(f, arg_shapes, name, point):
    """f traced (at ``point``, a tuple of arrays, or by shapes only when None): a
    ``jacext.guarded._Tape`` (its Function, and its GuardCheck, None without guards)."""
    guards = None
    if point is not None:
        guards = Guards(np.concatenate([np.ravel(np.asarray(p, dtype=np.float64))
                                        for p in point]) if len(point) else np.zeros(0))
    graph, inputs, outputs, out_shapes, out_is_tuple = trace(f, arg_shapes, guards)
    ins = np.concatenate([np.ravel(i) for i in inputs]) if inputs else np.zeros(0, np.int64)
    outs = np.concatenate([np.ravel(o) for o in outputs]) if outputs else np.zeros(0, np.int64)
    ins = ins.astype(np.int64)
    tape = Tape(lower(graph, ins, outs.astype(np.int64)), copy=False)
    check = None
    if guards is not None and guards.nodes:
        gtape = Tape(lower(graph, ins, np.asarray(guards.nodes, dtype=np.int64)), copy=False)
        check = GuardCheck(gtape, guards.truth, guards.outcome)
    del graph, inputs, outputs   # the DAG can be larger than the tape: free it first
    F = Function(tape, arg_shapes, out_shapes, out_is_tuple, name)
    key = tuple(zip(guards.lines, guards.truth, guards.outcome)) if check is not None else ()
    return _Tape(F, check, key, tuple(guards.lines) if check is not None else ())
