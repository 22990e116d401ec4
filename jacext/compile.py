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
from jacext._tape import Tape
from jacext.passes import lower
from jacext.trace import trace


def compile_function(f, arg_shapes, name=None):
    """Trace ``f`` at these argument shapes and compile it to a Function."""
    arg_shapes = tuple(tuple(int(d) for d in s) for s in arg_shapes)
    graph, inputs, outputs, out_shapes, out_is_tuple = trace(f, arg_shapes)
    ins = np.concatenate([np.ravel(i) for i in inputs]) if inputs else np.zeros(0, np.int64)
    outs = np.concatenate([np.ravel(o) for o in outputs]) if outputs else np.zeros(0, np.int64)
    tape = Tape(lower(graph, ins.astype(np.int64), outs.astype(np.int64)), copy=False)
    del graph, inputs, outputs   # the DAG can be larger than the tape: free it first
    if name is None:
        name = getattr(f, "__name__", type(f).__name__)
    return Function(tape, arg_shapes, out_shapes, out_is_tuple, str(name))
