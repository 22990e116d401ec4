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
from jacext.jactape import _groups
from jacext.ops import A_IMM, ARITY, B_IMM, OP_MASK, OPS, value
from jacext.passes import lower

_MUL, _DIV, _SELECT = OPS["MUL"], OPS["DIV"], OPS["SELECT"]

#: ops whose value is non-decreasing (+1) or non-increasing (-1) over their domain, an
#: interval outside of which they give nan: their range over [lo, hi] is [f(lo), f(hi)]
#: where both are finite (the values from the op table itself, ``ops.value``)
MONOTONE = {name: +1 for name in (
    "EXP", "EXP2", "EXPM1", "LOG", "LOG2", "LOG10", "LOG1P", "SQRT", "CBRT", "SINH",
    "ARCSINH", "ARCCOSH", "ARCTANH", "TANH", "ERF", "EXPIT", "LOGIT", "ARCSIN", "ARCTAN",
    "FLOOR", "CEIL", "RINT", "TRUNC")}
MONOTONE.update({"ERFC": -1, "ARCCOS": -1})
#: ops whose value lies in a fixed interval for every finite operand
BOUNDED = {"SIN": (-1.0, 1.0), "COS": (-1.0, 1.0), "SIGN": (-1.0, 1.0),
           "ATAN2": (-4.0, 4.0), "LESS": (0.0, 1.0), "LESS_EQUAL": (0.0, 1.0),
           "GREATER": (0.0, 1.0), "GREATER_EQUAL": (0.0, 1.0), "EQUAL": (0.0, 1.0),
           "NOT_EQUAL": (0.0, 1.0)}


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
    return Tape(new, copy=False, exact=tape)


def ranges(arrays, bound):
    """The interval [lo, hi] of each instruction's result for inputs within +-bound, as
    the folding pass proves it (lo = -inf, hi = inf: not proven finite): two float64
    arrays over the instructions of ``arrays`` (a tape without folding to do keeps its
    instructions; the tests check the intervals against sweeps)."""
    return _fold(arrays, bound, fold=False)[1]


class _Ranges:
    """Intervals by node id of a growing Graph: inputs +-bound, constants their value, any
    other node unknown until its rule sets it."""

    def __init__(self, g):
        self.g = g
        self.lo = np.full(1024, -np.inf)
        self.hi = np.full(1024, np.inf)
        self.n = 0

    def sync(self):
        """Intervals for the nodes made since the last call: constants exact, others
        unknown (a rule then sets its results')."""
        n = len(self.g)
        if n > self.lo.shape[0]:
            cap = max(n, 2 * self.lo.shape[0])
            self.lo = np.concatenate([self.lo, np.full(cap - self.lo.shape[0], -np.inf)])
            self.hi = np.concatenate([self.hi, np.full(cap - self.hi.shape[0], np.inf)])
        if n > self.n:
            ids = np.arange(self.n, n)
            is_const, v = self.g.constants(ids)
            c = ids[is_const & ~np.isnan(v)]
            self.lo[c] = self.hi[c] = v[is_const & ~np.isnan(v)]
        first = self.n
        self.n = n
        return first

    def finite(self, ids):
        limit = _plan.FOLD_RANGE_LIMIT
        return (self.lo[ids] >= -limit) & (self.hi[ids] <= limit)

    def set(self, ids, lo, hi, first):
        """Results ``ids`` of a rule: those made since node ``first`` take [lo, hi]."""
        new = (ids >= first) & np.isfinite(lo) & np.isfinite(hi)
        is_const = self.g.constants(ids)[0]
        new &= ~is_const
        self.lo[ids[new]] = lo[new]
        self.hi[ids[new]] = hi[new]


def _rule(name, a, b, ok):
    """(lo, hi) of op ``name`` over operand intervals a = (lo, hi), b (unused by unary
    ops), where ``ok`` (every operand proven finite); -inf, inf elsewhere."""
    (alo, ahi), (blo, bhi) = a, b
    n = alo.shape[0]
    lo, hi = np.full(n, -np.inf), np.full(n, np.inf)
    with np.errstate(all="ignore"):
        if name == "ADD":
            r = (alo + blo, ahi + bhi)
        elif name == "SUB":
            r = (alo - bhi, ahi - blo)
        elif name in ("MUL", "DIV"):
            if name == "DIV":
                ok = ok & ((blo > 0.0) | (bhi < 0.0))
                p = np.stack([alo / blo, alo / bhi, ahi / blo, ahi / bhi])
            else:
                p = np.stack([alo * blo, alo * bhi, ahi * blo, ahi * bhi])
            r = (p.min(axis=0), p.max(axis=0))
        elif name == "NEG":
            r = (-ahi, -alo)
        elif name in ("ABS", "SQUARE", "COSH"):
            m = np.maximum(np.abs(alo), np.abs(ahi))
            least = np.where((alo <= 0.0) & (ahi >= 0.0), 0.0,
                             np.minimum(np.abs(alo), np.abs(ahi)))
            if name == "ABS":
                r = (least, m)
            elif name == "SQUARE":
                r = (least * least, m * m)
            else:
                r = (np.ones(n), _each("COSH", m))
        elif name == "RECIPROCAL":
            ok = ok & ((alo > 0.0) | (ahi < 0.0))
            r = (1.0 / ahi, 1.0 / alo)
        elif name in MONOTONE:
            f_lo, f_hi = _each(name, alo), _each(name, ahi)
            r = (f_lo, f_hi) if MONOTONE[name] > 0 else (f_hi, f_lo)
        elif name in BOUNDED:
            r = (np.full(n, BOUNDED[name][0]), np.full(n, BOUNDED[name][1]))
        elif name in ("MAXIMUM", "FMAX"):
            r = (np.maximum(alo, blo), np.maximum(ahi, bhi))
        elif name in ("MINIMUM", "FMIN"):
            r = (np.minimum(alo, blo), np.minimum(ahi, bhi))
        elif name == "SELECT":
            r = (np.minimum(alo, blo), np.maximum(ahi, bhi))
        elif name == "HYPOT":
            m = np.maximum(np.abs(alo), np.abs(ahi)) + np.maximum(np.abs(blo), np.abs(bhi))
            r = (np.zeros(n), m)
        elif name == "LOGADDEXP":     # max(a, b) <= logaddexp(a, b) <= max(a, b) + log 2
            r = (np.maximum(alo, blo), np.maximum(ahi, bhi) + 1.0)
        elif name == "HEAVISIDE":
            r = (np.minimum(blo, 0.0), np.maximum(bhi, 1.0))
        else:                         # POW, MOD, FMOD, FLOOR_DIVIDE, TAN: not bounded
            return lo, hi
        good = ok & ~np.isnan(r[0]) & ~np.isnan(r[1])
    lo[good] = r[0][good]
    hi[good] = r[1][good]
    return lo, hi


def _each(name, x):
    """The op's value at each x, by the op table (distinct values once)."""
    u, inv = np.unique(x, return_inverse=True)
    return np.array([value(name, float(v)) for v in u.tolist()])[inv.reshape(-1)]


def _fold(arrays, bound, fold=True):
    """(the tape arrays rebuilt with the proven-zero products folded, each instruction's
    result interval [lo, hi] as two arrays)."""
    from jacext.ops import NAMES

    op, dst, ta, tb, ts, imm = (np.asarray(arrays[k])
                                for k in ("op", "dst", "a", "b", "s", "imm"))
    n_in = int(arrays["n_in"])
    g = Graph(numpy_power=False)       # a tape's pow stays pow (as jacext/jactape.py)
    iv = _Ranges(g)
    ins = g.inputs(n_in)
    zero = g.const(0.0)
    iv.sync()
    iv.lo[ins], iv.hi[ins] = -bound, bound
    node = np.full(int(arrays["n_slots"]), -1, dtype=np.int64)
    node[:n_in] = ins
    consts = np.asarray(arrays["const_value"], dtype=np.float64)
    node[n_in:n_in + len(consts)] = g.consts(consts)
    blocks = _blocks.Blocks(arrays, g)
    res_lo, res_hi = np.full(len(op), -np.inf), np.full(len(op), np.inf)
    for i0, i1 in _groups(arrays):
        word = int(op[i0])
        sl = slice(i0, i1)
        if word == BLOCK:
            m, n_x = blocks.shape(i0)
            x = node[ta[i0]:ta[i0] + n_x]
            iv.sync()
            first = iv.n
            _blocks.values(g, blocks, node, i0, int(dst[i0]), int(ta[i0]))
            iv.sync()
            W = blocks.matrix(i0)[0]
            with np.errstate(all="ignore"):
                big = np.maximum(np.abs(iv.lo[x]), np.abs(iv.hi[x]))
                reach = np.abs(W) @ big if iv.finite(x).all() and np.isfinite(W).all() \
                    else np.full(m, np.inf)
            y = node[dst[i0]:dst[i0] + m]
            iv.set(y, -reach, reach, first)
            continue
        rule = word & OP_MASK
        name = NAMES[rule]
        a = g.consts(imm[sl]) if word & A_IMM else node[ta[sl]]
        b = None
        if ARITY[rule] >= 2:
            b = g.consts(imm[sl]) if word & B_IMM else node[tb[sl]]
        cond = node[ts[sl]] if rule == _SELECT else None
        iv.sync()
        ok = iv.finite(a) & (iv.finite(b) if b is not None else True)
        bb = b if b is not None else a
        lo, hi = _rule(name, (iv.lo[a], iv.hi[a]), (iv.lo[bb], iv.hi[bb]), ok)
        first = iv.n
        z = (g.apply(rule, a) if b is None else
             g.apply(rule, a, b) if cond is None else g.apply(rule, a, b, cond))
        if fold and rule in (_MUL, _DIV):
            a_zero = _zeros(g, a)
            if rule == _MUL:
                gone = (a_zero & iv.finite(b)) | (_zeros(g, b) & iv.finite(a))
            else:        # 0 / b: a zero where b is finite and not zero
                gone = a_zero & iv.finite(b) & ((iv.lo[b] > 0.0) | (iv.hi[b] < 0.0))
            z = np.where(gone, zero, z)
        iv.sync()
        iv.set(z, lo, hi, first)
        res_lo[sl], res_hi[sl] = iv.lo[z], iv.hi[z]
        node[dst[sl]] = z     # a group reads no slot it writes (jactape._groups)
    outs = node[np.asarray(arrays["out_slot"], dtype=np.int64)]
    new = lower(g, np.asarray(ins, dtype=np.int64), outs) if fold else None
    return new, (res_lo, res_hi)


def _zeros(g, ids):
    is_const, v = g.constants(ids)
    return is_const & (v == 0.0)
