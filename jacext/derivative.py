"""The Jacobian as a tape of its own: a tape differentiated symbolically.

For batches, evaluating a tape of the Jacobian's entries in one value-only
sweep per block beats the tangent or adjoint sweeps of the original tape
(CasADi's generated C is fast for the same reason):

- structural zeros cost nothing: a node's tangent exists only for the inputs
  it depends on (a robot arm's early joints feed few products), where the
  sweeps carry every direction through every instruction;
- partials become shared nodes (d sin(q)/dq is the cos(q) the function already
  computes), hash-consed with the function's own nodes;
- one sweep over the points reads two operands and writes one value per
  instruction, where the sweeps store two partials per instruction and then
  read them back for every direction.

The Jacobian tape computes exactly what the batched sweeps compute
(src_c/batch.c), bit for bit up to the sign of a zero: each tangent (or
adjoint) term is the same product, summed in the same order, of the same
partial, written with the same floating-point operations as ``ops.def``'s D0
and D1 (``PARTIALS`` below; tests/test_ops.py checks every row against the C
partials bit for bit).  Instructions with fixed partials (``x + y``,
``x * 2.0``) use the constant, as the sweeps do; a zero one drops its term.
Two things the sweeps do differently are left to them: a block whose
Jacobian holds an inf or nan is recomputed by the sweeps (their zero kills
then apply, see vm.c), and an op with no row in ``PARTIALS`` means no
Jacobian tape (the sweeps serve).

The graph is rebuilt from the tape (the trace's graph is not kept), so the
function's nodes and the derivative's share one hash-consed DAG; the Graph's
passes (folding, exact identities, DCE, liveness slots) then make the tape.
"""
from __future__ import annotations

import numpy as np

from jacext._graph import A_IMM, ARITY, B_IMM, OP_MASK, OPS, Graph

# The constants of ops.h, parsed as the C compiler parses them (correctly rounded).
LN2 = float("0.693147180559945309417232121458176568")
LN10 = float("2.30258509299404568401799145468436421")
TWO_SQRTPI = float("1.12837916709551257389615890312154517")


class _Builder:
    """Node-by-node construction over a Graph: ``e("MUL", x, y)``, ``e.c(2.0)``."""

    def __init__(self, graph: Graph):
        self.g = graph
        self._apply = graph.apply1

    def __call__(self, name, x, y=-1, c=-1):
        return self._apply(OPS[name], x, y, c)

    def c(self, value):
        return self.g.const(float(value))

    def select(self, cond, x, y):
        """np.where(cond, x, y): SELECT's value is (cond != 0) ? x : y."""
        return self._apply(OPS["SELECT"], x, y, cond)

    def dmax(self, a, b, less=False):
        """ops.h's jx_dmax (jx_dmin with less=True), one comparison per branch."""
        e = self
        win = e("LESS" if less else "GREATER", a, b)
        nan_b, nan_a = e("NOT_EQUAL", b, b), e("NOT_EQUAL", a, a)
        tail = e.select(nan_b, e.c(0.0), e.select(nan_a, e.c(1.0), e.c(0.0)))
        return e.select(win, e.c(1.0), e.select(e("EQUAL", a, b), e.c(0.5), tail))


def _recip(e, x):
    return e("RECIPROCAL", x)


# d z / d a and d z / d b of each op, written with the operations of ops.def's D0 and D1
# in the same order (``1.0 / x`` is RECIPROCAL, whose value is 1.0 / x; ``x * x`` is
# SQUARE).  None: that operand has no partial (unary ops).  Ops whose partials are always
# fixed (comparisons, floor, ...) need no row: the fixed constants serve.  POW has none:
# its partial b * pow(a, b - 1) would meet the Graph's rewrites of pow(a, 2.0) into a * a
# (and of 0.5, -1), which are NumPy's values for x**2 but not always pow's, bit for bit.
PARTIALS = {
    "ADD": lambda e, a, b, z: (e.c(1.0), e.c(1.0)),
    "SUB": lambda e, a, b, z: (e.c(1.0), e.c(-1.0)),
    "MUL": lambda e, a, b, z: (b, a),
    "DIV": lambda e, a, b, z: (_recip(e, b), e("DIV", e("NEG", z), b)),
    "MOD": lambda e, a, b, z: (e.c(1.0), e("NEG", e("FLOOR_DIVIDE", a, b))),
    "FMOD": lambda e, a, b, z: (e.c(1.0), e("NEG", e("TRUNC", e("DIV", a, b)))),
    "ATAN2": lambda e, a, b, z: _atan2(e, a, b),
    "HYPOT": lambda e, a, b, z: (e("DIV", a, z), e("DIV", b, z)),
    "MAXIMUM": lambda e, a, b, z: (e.dmax(a, b), e.dmax(b, a)),
    "MINIMUM": lambda e, a, b, z: (e.dmax(a, b, less=True), e.dmax(b, a, less=True)),
    "LOGADDEXP": lambda e, a, b, z: (e("EXP", e("SUB", a, z)), e("EXP", e("SUB", b, z))),
    "ABS": lambda e, a, b, z: (e("SIGN", a), None),
    "SQUARE": lambda e, a, b, z: (e("MUL", e.c(2.0), a), None),
    "SQRT": lambda e, a, b, z: (e("DIV", e.c(0.5), z), None),
    "CBRT": lambda e, a, b, z: (_recip(e, e("MUL", e("MUL", e.c(3.0), z), z)), None),
    "RECIPROCAL": lambda e, a, b, z: (e("MUL", e("NEG", z), z), None),
    "EXP": lambda e, a, b, z: (z, None),
    "EXP2": lambda e, a, b, z: (e("MUL", z, e.c(LN2)), None),
    "EXPM1": lambda e, a, b, z: (e("ADD", z, e.c(1.0)), None),
    "LOG": lambda e, a, b, z: (_recip(e, a), None),
    "LOG2": lambda e, a, b, z: (_recip(e, e("MUL", a, e.c(LN2))), None),
    "LOG10": lambda e, a, b, z: (_recip(e, e("MUL", a, e.c(LN10))), None),
    "LOG1P": lambda e, a, b, z: (_recip(e, e("ADD", e.c(1.0), a)), None),
    "SIN": lambda e, a, b, z: (e("COS", a), None),
    "COS": lambda e, a, b, z: (e("NEG", e("SIN", a)), None),
    "TAN": lambda e, a, b, z: (e("ADD", e.c(1.0), e("SQUARE", z)), None),
    "ARCSIN": lambda e, a, b, z: (
        _recip(e, e("SQRT", e("SUB", e.c(1.0), e("SQUARE", a)))), None),
    "ARCCOS": lambda e, a, b, z: (
        e("DIV", e.c(-1.0), e("SQRT", e("SUB", e.c(1.0), e("SQUARE", a)))), None),
    "ARCTAN": lambda e, a, b, z: (_recip(e, e("ADD", e.c(1.0), e("SQUARE", a))), None),
    "SINH": lambda e, a, b, z: (e("COSH", a), None),
    "COSH": lambda e, a, b, z: (e("SINH", a), None),
    "TANH": lambda e, a, b, z: (e("SUB", e.c(1.0), e("SQUARE", z)), None),
    "ARCSINH": lambda e, a, b, z: (_recip(e, e("HYPOT", a, e.c(1.0))), None),
    "ARCCOSH": lambda e, a, b, z: (
        _recip(e, e("MUL", e("SQRT", e("SUB", a, e.c(1.0))), e("SQRT", e("ADD", a, e.c(1.0))))),
        None),
    "ARCTANH": lambda e, a, b, z: (_recip(e, e("SUB", e.c(1.0), e("SQUARE", a))), None),
    "ERF": lambda e, a, b, z: (
        e("MUL", e.c(TWO_SQRTPI), e("EXP", e("MUL", e("NEG", a), a))), None),
    "ERFC": lambda e, a, b, z: (
        e("MUL", e.c(-TWO_SQRTPI), e("EXP", e("MUL", e("NEG", a), a))), None),
    "EXPIT": lambda e, a, b, z: (e("MUL", z, e("SUB", e.c(1.0), z)), None),
    "LOGIT": lambda e, a, b, z: (_recip(e, e("MUL", a, e("SUB", e.c(1.0), a))), None),
}


def _atan2(e, a, b):
    den = e("ADD", e("SQUARE", a), e("SQUARE", b))
    return e("DIV", b, den), e("DIV", e("NEG", a), den)


_NAME = {number: name for name, number in OPS.items()}
_SELECT = OPS["SELECT"]


class TooLarge(Exception):
    """The Jacobian tape would pass its node budget."""


def jacobian_tape(tape, fixed, cols, mode, max_nodes, pattern=None, values=True):
    """The tape of [outputs..., J[0, 0], J[0, 1], ..., J[n_out-1, n_cols-1]] (row-major),
    J the Jacobian of the outputs with respect to the inputs ``cols``, as the batched
    ``mode`` sweep ("forward" or "reverse") computes it; or None when an op of the tape
    has no row in PARTIALS or the graph would pass ``max_nodes`` nodes.  With ``pattern``
    (CSR indptr, indices of the Jacobian's structural nonzeros), the outputs after the
    function's are those nonzeros only, in CSR order.  With
    ``values=False`` the function's outputs are left out: what the derivative does not
    need of the function is then dead code, and goes.

    ``tape``: a Function's tape arrays with n_in; ``fixed``: its (fixed, d0, d1) arrays.
    """
    try:
        return _build(tape, fixed, [int(c) for c in cols], mode, max_nodes, pattern, values)
    except TooLarge:
        return None


def _build(tape, fixed, cols, mode, max_nodes, pattern, values):
    op, dst, ta, tb, imm = (tape[k] for k in ("op", "dst", "a", "b", "imm"))
    n_in, n_instr = int(tape["n_in"]), len(op)
    is_fixed, fd0, fd1 = fixed
    rules = []
    for i in range(n_instr):
        base = int(op[i]) & OP_MASK
        if not is_fixed[i] and base != _SELECT and _NAME[base] not in PARTIALS:
            return None
        rules.append(base)
    g = Graph()
    e = _Builder(g)
    ins = g.inputs(n_in)
    node = {j: int(ins[j]) for j in range(n_in)}          # slot -> node, as the sweep goes
    for k, v in enumerate(tape["const_value"]):
        node[n_in + k] = e.c(v)
    # the function itself, instruction by instruction: (word, a, b, cond, z) in nodes
    steps = []
    for i in range(n_instr):
        word, base = int(op[i]), rules[i]
        a = e.c(imm[i]) if word & A_IMM else node[int(ta[i])]
        b = e.c(imm[i]) if word & B_IMM else node[int(tb[i])]
        cond = node[int(imm[i])] if base == _SELECT else -1
        z = e(_NAME[base], a, b if ARITY[base] >= 2 else -1, cond)
        steps.append((word, a, b, cond, z))
        node[int(dst[i])] = z
    outs = [node[int(s)] for s in tape["out_slot"]]
    n_out = len(outs)
    sweep = _forward if mode == "forward" else _reverse
    rows = sweep(e, tape, fixed, steps, cols, n_out, max_nodes)
    if pattern is None:
        jac = [int(np.ravel(row[k])[0]) for row in rows for k in range(len(cols))]
    else:   # the pattern's nonzeros only, in CSR order
        indptr, indices = pattern
        jac = [int(np.ravel(rows[i][int(k)])[0])
               for i in range(n_out) for k in indices[indptr[i]:indptr[i + 1]]]
    ids = np.asarray((outs if values else []) + jac, dtype=np.int64)
    if len(g) > max_nodes:
        raise TooLarge
    lowered = g.lower(np.asarray(ins, dtype=np.int64), ids)
    lowered["n_in"] = n_in
    return lowered


def _partials(e, word, step):
    """The instruction's (p0, p1) nodes: its op's PARTIALS row at its operand nodes."""
    _, a, b, _, z = step
    return PARTIALS[_NAME[word & OP_MASK]](e, a, b, z)


def _uses(word):
    base = word & OP_MASK
    return not (word & A_IMM), ARITY[base] >= 2 and not (word & B_IMM)


class _Bulk:
    """The same construction over arrays of node ids, one ``Graph.apply`` per call: the
    nodes of one call get consecutive ids, so a traced NumPy call's derivative stays a run
    of instructions on the tape (the single-point value sweep pays dispatch per run)."""

    def __init__(self, graph: Graph):
        self.g = graph

    def __call__(self, name, x, y=None, c=None):
        op = OPS[name]
        x = np.asarray(x, dtype=np.int64)
        if ARITY[op] == 1:
            return self.g.apply(op, x)
        y = np.asarray(y, dtype=np.int64)
        if ARITY[op] == 2:
            return self.g.apply(op, x, y)
        return self.g.apply(op, x, y, np.asarray(c, dtype=np.int64))

    def c(self, value):
        return np.array([self.g.const(float(value))], dtype=np.int64)

    def select(self, cond, x, y):
        return self("SELECT", x, y, cond)

    dmax = _Builder.dmax


def _same_bits(x, y):
    return np.float64(x).tobytes() == np.float64(y).tobytes()


def _groups(tape):
    """(first, end) of the groups of consecutive instructions that may be differentiated
    together: one op word (and immediate), and no instruction reading a slot that an
    earlier one of the group writes (a running sum splits into one per instruction)."""
    op, imm, dst, ta, tb = (tape[k] for k in ("op", "imm", "dst", "a", "b"))
    n, i = len(op), 0
    while i < n:
        word = int(op[i])
        with_imm = word & (A_IMM | B_IMM)
        use_a, use_b = _uses(word)
        written = {int(dst[i])}
        j = i + 1
        while j < n and int(op[j]) == word and (not with_imm or _same_bits(imm[j], imm[i])):
            if (use_a and int(ta[j]) in written) or (use_b and int(tb[j]) in written):
                break
            written.add(int(dst[j]))
            j += 1
        yield i, j
        i = j


def _forward(e, tape, fixed, steps, cols, n_out, max_nodes):
    """Tangents by slot, {column: node}, as jx_block_tangent computes them, a group of
    instructions at a time (``_groups``), each stage of a group one bulk call."""
    is_fixed, fd0, fd1 = fixed
    dst, ta, tb = tape["dst"], tape["a"], tape["b"]
    bulk = _Bulk(e.g)
    tan = {}
    for k, j in enumerate(cols):
        tan.setdefault(j, {})[k] = e.c(1.0)
    zero = e.c(0.0)
    for i0, i1 in _groups(tape):
        word = steps[i0][0]
        use_a, use_b = _uses(word)
        group = range(i0, i1)
        t_a = [tan.get(int(ta[i]), {}) if use_a else {} for i in group]
        t_b = [tan.get(int(tb[i]), {}) if use_b else {} for i in group]
        keys = [sorted(x.keys() | y.keys()) for x, y in zip(t_a, t_b)]
        out = [{} for _ in group]
        if word & OP_MASK == _SELECT:
            # (s != 0) * ta + (s == 0) * tb: the taken branch's tangent (zero kills)
            for j in range(max(map(len, keys), default=0)):
                ms = [m for m in range(len(keys)) if len(keys[m]) > j]
                r = bulk.select([steps[i0 + m][3] for m in ms],
                                [t_a[m].get(keys[m][j], zero) for m in ms],
                                [t_b[m].get(keys[m][j], zero) for m in ms])
                for m, node in zip(ms, r):
                    out[m][keys[m][j]] = int(node)
        else:
            p0 = [None] * len(keys)
            p1 = [None] * len(keys)
            live = [m for m in range(len(keys)) if keys[m]]
            fix = [m for m in live if is_fixed[i0 + m]]
            for m in fix:
                c0 = float(fd0[i0 + m]) if use_a else 0.0
                c1 = float(fd1[i0 + m]) if use_b else 0.0
                p0[m] = e.c(c0) if c0 != 0.0 else None
                p1[m] = e.c(c1) if c1 != 0.0 else None
            var = [m for m in live if not is_fixed[i0 + m]]
            if var:
                rule = PARTIALS[_NAME[word & OP_MASK]]
                a, b, z = ([steps[i0 + m][f] for m in var] for f in (1, 2, 4))
                q0, q1 = rule(bulk, a, b, z)
                q0 = None if q0 is None else np.broadcast_to(q0, (len(var),))
                q1 = None if q1 is None else np.broadcast_to(q1, (len(var),))
                for r, m in enumerate(var):
                    p0[m] = int(q0[r]) if q0 is not None and t_a[m] else None
                    p1[m] = int(q1[r]) if q1 is not None and t_b[m] else None
            _combine_bulk(bulk, keys, p0, t_a, p1, t_b, out)
        for m, i in enumerate(group):
            tan[int(dst[i])] = out[m]
        if len(e.g) > max_nodes:
            raise TooLarge
    return [_Row(tan.get(int(s), {}), zero) for s in tape["out_slot"]]


class _Row:
    """One output's tangents as a Jacobian row: row[k] is column k's node (zero if none),
    without listing every column of a sparse row."""

    def __init__(self, tangents, zero):
        self.t, self.zero = tangents, zero

    def __getitem__(self, k):
        return self.t.get(k, self.zero)


def _combine_bulk(bulk, keys, p0, t_a, p1, t_b, out):
    """out[m][k] = p0[m] * t_a[m][k] + p1[m] * t_b[m][k], a term only where both factors
    exist; key position by key position, each stage one bulk call."""
    for j in range(max(map(len, keys), default=0)):
        ms = [m for m in range(len(keys)) if len(keys[m]) > j]
        xs = [m for m in ms if p0[m] is not None and keys[m][j] in t_a[m]]
        ys = [m for m in ms if p1[m] is not None and keys[m][j] in t_b[m]]
        x = dict(zip(xs, bulk("MUL", [p0[m] for m in xs], [t_a[m][keys[m][j]] for m in xs])
                     if xs else ()))
        y = dict(zip(ys, bulk("MUL", [p1[m] for m in ys], [t_b[m][keys[m][j]] for m in ys])
                     if ys else ()))
        both = [m for m in xs if m in y]
        s = dict(zip(both, bulk("ADD", [x[m] for m in both], [y[m] for m in both])
                     if both else ()))
        for m in ms:
            k = keys[m][j]
            node = s.get(m, x.get(m, y.get(m)))
            if node is not None:
                out[m][k] = int(node)


def _reverse(e, tape, fixed, steps, cols, n_out, max_nodes):
    """Adjoints by slot, {output row: node}, backwards as jx_block_adjoint."""
    is_fixed, fd0, fd1 = fixed
    dst, ta, tb = tape["dst"], tape["a"], tape["b"]
    adj = {}
    for r, s in enumerate(tape["out_slot"]):
        adj.setdefault(int(s), {})[r] = e.c(1.0)
    g = e.g

    def add(slot, r, term):
        row = adj.setdefault(slot, {})
        row[r] = term if r not in row else e("ADD", row[r], term)

    for i in range(len(steps) - 1, -1, -1):
        step = steps[i]
        word = step[0]
        d = adj.pop(int(dst[i]), None)    # the sweep clears dst's adjoint here
        if not d:
            continue
        use_a, use_b = _uses(word)
        sa, sb = int(ta[i]), int(tb[i])
        if word & OP_MASK == _SELECT:
            cond, zero = step[3], e.c(0.0)
            for r, ad in d.items():
                if use_a:
                    add(sa, r, e.select(cond, ad, zero))
                if use_b:
                    add(sb, r, e.select(cond, zero, ad))
        elif is_fixed[i]:
            c0 = float(fd0[i]) if use_a else 0.0
            c1 = float(fd1[i]) if use_b else 0.0
            for r, ad in d.items():
                if c0 != 0.0:
                    add(sa, r, e("MUL", e.c(c0), ad))
                if c1 != 0.0:
                    add(sb, r, e("MUL", e.c(c1), ad))
        else:
            p0, p1 = _partials(e, word, step)
            for r, ad in d.items():
                if use_a:
                    add(sa, r, e("MUL", p0, ad))
                if use_b:
                    add(sb, r, e("MUL", p1, ad))
        if len(g) > max_nodes:
            raise TooLarge
    zero = e.c(0.0)
    rows = [{} for _ in range(n_out)]
    for k, j in enumerate(cols):
        for r, node in adj.get(j, {}).items():
            rows[r][k] = node
    return [_Row(row, zero) for row in rows]
