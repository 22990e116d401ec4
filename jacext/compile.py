"""Compiler passes: from a traced graph to a Function's tape.

    trace (trace.py)          f on symbolic arrays -> graph + input/output ids
    lower (Graph.lower)       dead-code elimination (only what reaches an output),
                              constant slots for the constants that cannot be
                              immediates, work slots by liveness
    Function (_vm.pyx)        checks the tape once, then evaluates it in C

The DAG-level rewrites (common subexpressions, constant folding, exact
identities, immediates) happen on insert, in ``Graph.apply``.  The passes over
all nodes are Cython loops: a trace of 10**6 elements has millions of nodes.
"""
from __future__ import annotations

import numpy as np

from jacext._vm import Function
from jacext.trace import trace


def lower(graph, input_ids, output_ids):
    """Tape arrays (dict) for the flattened inputs and outputs of a trace."""
    ins = np.concatenate([np.ravel(i) for i in input_ids]) if input_ids else np.zeros(0, np.int64)
    outs = (np.concatenate([np.ravel(o) for o in output_ids]) if output_ids
            else np.zeros(0, np.int64))
    return graph.lower(ins.astype(np.int64), outs.astype(np.int64))


def compile_function(f, arg_shapes, name=None):
    """Trace ``f`` at these argument shapes and compile it to a Function."""
    arg_shapes = tuple(tuple(int(d) for d in s) for s in arg_shapes)
    graph, inputs, outputs, out_shapes, out_is_tuple = trace(f, arg_shapes)
    tape = lower(graph, inputs, outputs)
    del graph, inputs, outputs   # the DAG can be larger than the tape: free it first
    if name is None:
        name = getattr(f, "__name__", type(f).__name__)
    return Function(tape, arg_shapes, out_shapes, out_is_tuple, str(name))
