"""Finite-input tapes: ``x * 0.0`` folded where finite inputs prove x finite.

NumPy's ``x * 0.0`` is nan where x is inf or nan, so the trace keeps every such product
(jacext/_graph.pyx): kinematics written as ``np.cos(q) * C + np.sin(q) * S + K`` with
constant matrices full of zeros keeps hundreds of them.  But where every input of a point
is finite -- within +-``plan.FOLD_INPUT_BOUND`` -- a range analysis over the tape proves
most of those x finite: sin, cos, tanh, erf, expit and arctan are bounded; + - * of bounded
values are bounded (the analysis carries an interval per node and gives up where one
passes ``plan.FOLD_RANGE_LIMIT``, far from overflow).  Such a product is then exactly
+-0.0 and folds to 0.0, and what it fed simplifies as the graph simplifies anything
(``x + 0.0 -> x``; a product with the new zero folds in turn).

A Function whose tape folds keeps both tapes (``Tape.exact``): the C core checks each
point's inputs once against the bound (vm.h ``jx_tape_at``) and runs the exact tape where
one is outside it, so a point with an inf or nan anywhere gets the exact tape's results.
Jacobian tapes built from the folded tape hold inside the bound only; outside it they
give nan, which every caller already redoes by the sweeps of the Function's own tape
(whose point functions then run the exact one).  Sparsity patterns come from the exact
tape, so a pattern and its colourings hold at every point.

Values equal the exact tape's up to the sign of a zero (a folded ``x * 0.0`` is +0.0
where x may be negative), as ``x + 0.0 -> x`` already does (README, "Values");
derivatives are the same numbers (a folded product's derivative was an exact zero).
"""
from __future__ import annotations

import numpy as np

from jacext import jactape_blocks as _blocks
from jacext import plan as _plan
from jacext._graph import Graph
from jacext._tape import BLOCK, Tape
from jacext.ops import A_IMM, B_IMM, OP_MASK, OPS
from jacext.passes import RANGE_RULES, fold_zeros, lower

_MUL, _DIV = OPS["MUL"], OPS["DIV"]

#: the range rule of each op (``passes.RANGE_RULES``; an op not named proves nothing:
#: POW, MOD, FMOD, FLOOR_DIVIDE, TAN).  UP / DOWN: non-decreasing / non-increasing over
#: its domain, an interval outside of which it gives nan, so its range over [lo, hi] is
#: [f(lo), f(hi)] where both are numbers (the values from the op table itself).
RULES = {name: "UP" for name in (
    "EXP", "EXP2", "EXPM1", "LOG", "LOG2", "LOG10", "LOG1P", "SQRT", "CBRT", "SINH",
    "ARCSINH", "ARCCOSH", "ARCTANH", "TANH", "ERF", "EXPIT", "LOGIT", "ARCSIN", "ARCTAN",
    "FLOOR", "CEIL", "RINT", "TRUNC")}
RULES.update({"ERFC": "DOWN", "ARCCOS": "DOWN", "ADD": "ADD", "SUB": "SUB", "MUL": "MUL",
              "DIV": "DIV", "NEG": "NEG", "ABS": "ABS", "SQUARE": "SQUARE", "COSH": "COSH",
              "RECIPROCAL": "RECIPROCAL", "MAXIMUM": "MAX", "FMAX": "MAX", "MINIMUM": "MIN",
              "FMIN": "MIN", "SELECT": "SELECT", "HYPOT": "HYPOT",
              "LOGADDEXP": "LOGADDEXP", "HEAVISIDE": "HEAVISIDE"})
#: ops whose value lies in a fixed interval for every finite operand (rule FIXED)
BOUNDED = {"SIN": (-1.0, 1.0), "COS": (-1.0, 1.0), "SIGN": (-1.0, 1.0),
           "ATAN2": (-4.0, 4.0), "LESS": (0.0, 1.0), "LESS_EQUAL": (0.0, 1.0),
           "GREATER": (0.0, 1.0), "GREATER_EQUAL": (0.0, 1.0), "EQUAL": (0.0, 1.0),
           "NOT_EQUAL": (0.0, 1.0)}
RULES.update({name: "FIXED" for name in BOUNDED})


def _tables():
    rule = np.zeros(len(OPS), dtype=np.int32)
    lo = np.zeros(len(OPS))
    hi = np.zeros(len(OPS))
    for name, r in RULES.items():
        rule[OPS[name]] = RANGE_RULES[r]
    for name, (a, b) in BOUNDED.items():
        lo[OPS[name]], hi[OPS[name]] = a, b
    return rule, lo, hi


_RULE, _FIXED_LO, _FIXED_HI = _tables()


def foldable(arrays):
    """Whether the tape has a product with a zero immediate (or a 0 / x) to fold."""
    op = np.asarray(arrays["op"])
    imm = np.asarray(arrays["imm"])
    scalar = op != BLOCK
    base = op & OP_MASK
    zero = scalar & (imm == 0.0)
    mul = zero & (base == _MUL) & ((op & (A_IMM | B_IMM)) != 0)
    div = zero & (base == _DIV) & ((op & A_IMM) != 0)
    return bool((mul | div).any())


def tape_of(tape, fold=True):
    """The Tape a Function runs for ``tape`` (a Tape or its arrays): its finite-input
    tape where one folds and ``fold`` (False keeps the exact tape alone:
    ``jacext.testing.exact_function`` compares the two), else the tape itself."""
    t = tape if isinstance(tape, Tape) else Tape(tape)
    if t.exact is None and "input_bound" in t.arrays():
        raise ValueError("jacext: a folded tape (input_bound) needs its exact tape: make "
                         "the Function from the exact tape's arrays (Function.exact_tape)")
    return (folded(t) or t) if fold else t


def note(tape):
    """repr's words on a folded tape."""
    if tape.exact is None:
        return ""
    return f"; finite inputs: folded from {tape.exact.n_instructions} instructions"


def folded(tape):
    """The finite-input tape of ``tape`` (a Tape) with ``tape`` as its exact tape, or None
    where nothing folds."""
    arrays = tape.arrays()
    if tape.exact is not None or not foldable(arrays):
        return None
    new = _fold(arrays, _plan.FOLD_INPUT_BOUND)[0]
    if len(new["op"]) >= tape.n_instructions:
        return None
    new["input_bound"] = _plan.FOLD_INPUT_BOUND
    t = Tape(new, copy=False, exact=tape)
    # the check of each point's inputs must cost less than what the folding saves
    return t if tape.work - t.work > _plan.FOLD_MIN_SAVED * tape.n_inputs else None


def ranges(arrays, bound):
    """The interval [lo, hi] of each instruction's result for inputs within +-bound, as
    the folding pass proves it (lo = -inf, hi = inf: not proven finite): two float64
    arrays over the instructions of ``arrays`` (a tape without folding to do keeps its
    instructions; the tests check the intervals against sweeps)."""
    return _fold(arrays, bound, fold=False)[1]


def _fold(arrays, bound, fold=True):
    """(the tape arrays rebuilt with the proven-zero products folded (None without
    ``fold``), each instruction's result interval [lo, hi] as two arrays): a Cython pass
    over the instructions (``passes.fold_zeros``), blocks by ``_block_rows``."""
    g = Graph(numpy_power=False)       # a tape's pow stays pow (as jacext/jactape.py)
    ins = np.asarray(g.inputs(int(arrays["n_in"])), dtype=np.int64)
    blocks = _blocks.Blocks(arrays, g)

    def block_rows(i, node, lo, hi):
        m, n = blocks.shape(i)
        src, dst = int(arrays["a"][i]), int(arrays["dst"][i])
        x = node[src:src + n]
        _blocks.values(g, blocks, node, i, dst, src)
        big = np.maximum(np.abs(lo[x]), np.abs(hi[x]))
        prod = blocks.product(i)
        W = None if prod else blocks.matrix(i)[0]
        if not ((prod or np.isfinite(W).all()) and (big <= _plan.FOLD_RANGE_LIMIT).all()):
            return np.full(m, np.inf)
        with np.errstate(all="ignore"):
            if prod:   # |A B| <= |A| |B| entry by entry
                pm, pn, pp = prod
                return (big[:pm * pn].reshape(pm, pn) @ big[pm * pn:].reshape(pn, pp)).ravel()
            return np.abs(W) @ big

    outs, iv = fold_zeros(g, ins, arrays, _RULE, _FIXED_LO, _FIXED_HI, float(bound),
                          _plan.FOLD_RANGE_LIMIT, fold, block_rows)
    return (lower(g, ins, outs) if fold else None), iv
