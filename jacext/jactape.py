"""The Jacobian as a tape of its own: a tape differentiated symbolically.

For batches, evaluating a tape of the Jacobian's entries in one value-only sweep per
block beats the tangent or adjoint sweeps of the original tape (CasADi's generated C is
fast for the same reason):

- structural zeros cost nothing: a node's tangent exists only for the inputs it depends
  on (a robot arm's early joints feed few products), where the sweeps carry every
  direction through every instruction;
- partials become shared nodes (d sin(q)/dq is the cos(q) the function already
  computes), hash-consed with the function's own nodes;
- one sweep over the points reads two operands and writes one value per instruction,
  where the sweeps store two partials per instruction and then read them back for every
  direction.

The Jacobian tape computes exactly what the batched sweeps compute (src_c/batch.c), bit
for bit up to the sign of a zero: each tangent (or adjoint) term is the same product,
summed in the same order, of the same partial, built from ops.def's own D0 and D1
(``jacext.ops.partials``) with the same floating-point operations.  Instructions with
fixed partials (``x + y``, ``x * 2.0``) use the constant, as the sweeps do; a zero one
drops its term; np.where's tangent is the taken branch's (``SELECT``: the sweeps' zero
kills, exactly).  A block whose Jacobian holds an inf or nan is recomputed by the
sweeps (their zero kills then apply where a product here would meet an infinite partial
and a zero tangent).

The graph is rebuilt from the tape (the trace's graph is not kept), so the function's
nodes and the derivative's share one hash-consed DAG (without NumPy's ``x**2 -> x*x``
rewrites: a partial ``pow(a, b - 1.0)`` must stay C's pow, as the sweeps compute it); the
compiler passes then make the tape.

Block instructions (y = W x, vm.h) stay blocks: W times a Jacobian column's tangents,
W^T times an output row's adjoints (``jacext/jactape_blocks.py``, which says how and when
scalar products serve instead).  Their results equal the sweeps' to rounding: BLAS sums in
its own order.

The build goes a group of like instructions at a time (``passes.tape_groups``: one traced
NumPy call is one group), each stage of a group one bulk ``Graph.apply`` over NumPy arrays
of node ids: forward tangents live as CSR blocks per group (``_Tangents``), reverse
adjoint terms wait for the group that defines their value (``_Pending``).  Node by node
(``by_group=False``; forward, also the groups of one) serves scalar code, where the
per-group NumPy calls would cost more.  Both ways make the same tape
(tests/test_jactape.py).  ``jacext.plan`` decides which, and when a tape is worth it.
"""
from __future__ import annotations

import numpy as np

from jacext import jactape_blocks as _blocks
from jacext import ops
from jacext._graph import Graph
from jacext._tape import BLOCK
from jacext.ops import A_IMM, ARITY, B_IMM, OP_MASK, OPS
from jacext.passes import lower, tape_groups


class _Builder:
    """Node-by-node construction over a Graph: ``e("MUL", x, y)``, ``e.c(2.0)``; the
    emitter ``jacext.ops.partials`` builds through."""

    def __init__(self, graph: Graph):
        self.g = graph
        self._apply = graph.apply1

    def __call__(self, name, x, y=-1, c=-1):
        return self._apply(OPS[name], x, y, c)

    def c(self, value):
        return self.g.const(float(value))

    def select(self, cond, x, y):
        """np.where(cond, x, y): SELECT's value is (cond != 0) ? x : y."""
        return self._apply(_SELECT, x, y, cond)


_SELECT = OPS["SELECT"]


class TooLarge(Exception):
    """The Jacobian tape would pass its node budget."""


def build(tape, fixed, cols, mode, max_nodes, pattern=None, values=True, by_group=True,
          singletons_in_bulk=False, along=False):
    """The tape arrays of [outputs..., J[0, 0], J[0, 1], ..., J[n_out-1, n_cols-1]]
    (row-major), J the Jacobian of the outputs with respect to the inputs ``cols``, as the
    batched ``mode`` sweep ("forward" or "reverse") computes it; or None when the graph
    would pass ``max_nodes`` nodes.

    ``tape``: a Tape's arrays (``Tape.arrays()``); ``fixed``: its ``fixed_partials()``.
    With ``pattern`` (CSR indptr, indices of the Jacobian's structural nonzeros) the
    entries are those nonzeros only, in CSR order.  With ``values=False`` the function's
    outputs are left out: what the derivative does not need of the function is then dead
    code, and goes.  ``by_group``: build a group of like instructions at a time (else node
    by node throughout); forward, groups of one instruction still go node by node unless
    ``singletons_in_bulk``.  Every choice gives the same tape.

    With ``along`` (forward mode, no pattern) the tape takes a direction v over the inputs
    ``cols`` as further inputs, after the function's, and its entries are the one column
    J v: the directional derivative, the tangent sweep's products with v as its seeds
    (Hessian-vector products: ``jacext/second.py``).
    """
    if along and (mode != "forward" or pattern is not None):
        raise ValueError("jacext: a directional Jacobian tape is a forward one, dense")
    try:
        return _build(tape, fixed, np.asarray(cols, dtype=np.int64), mode, max_nodes, pattern,
                      values, by_group, singletons_in_bulk, along)
    except TooLarge:
        return None


def n_groups(tape):
    """How many groups of like instructions the builders work in."""
    return len(_groups(tape))


def _build(tape, fixed, cols, mode, max_nodes, pattern, values, by_group, singletons_in_bulk,
           along):
    op = np.asarray(tape["op"])
    n_in = int(tape["n_in"])
    # NumPy's x**2 -> x*x rewrites are for traced code; a partial's pow stays C's pow
    g = Graph(numpy_power=False)
    ins = np.asarray(g.inputs(n_in + (len(cols) if along else 0)), dtype=np.int64)
    seeds = ins[n_in:] if along else None
    ins = ins[:n_in] if along else ins
    groups = _groups(tape)
    steps = _values(g, tape, ins, groups)
    out_slot = np.asarray(tape["out_slot"], dtype=np.int64)
    outs = steps.node_after[out_slot]
    n_out = len(out_slot)
    if mode == "forward":
        one_by_one = not by_group or not singletons_in_bulk
        if not by_group:   # every instruction a group of its own
            groups = [(i, i + 1) for i in range(len(op))]
        codes, nodes = _forward(g, tape, fixed, steps, groups, cols, max_nodes, one_by_one,
                                seeds)
    elif by_group:
        codes, nodes = _reverse_bulk(g, tape, fixed, steps, groups, cols, max_nodes)
    else:
        codes, nodes = _reverse(_Builder(g), tape, fixed, steps, cols, n_out, max_nodes)
    # Jacobian entries (row i, column position k) by code i * n_cols + k, sorted
    n_cols = 1 if along else len(cols)
    if pattern is None:
        want = np.arange(n_out * n_cols, dtype=np.int64)
    else:   # the pattern's nonzeros only, in CSR order
        indptr, indices = pattern
        rows = np.repeat(np.arange(n_out, dtype=np.int64), np.diff(np.asarray(indptr)))
        want = rows * n_cols + np.asarray(indices, dtype=np.int64)
    at = np.minimum(np.searchsorted(codes, want), max(len(codes) - 1, 0))
    found = (codes[at] == want) if len(codes) else np.zeros(len(want), dtype=bool)
    jac = np.where(found, nodes[at] if len(codes) else 0, g.const(0.0))
    ids = np.concatenate([outs if values else outs[:0], jac]).astype(np.int64)
    if len(g) > max_nodes:
        raise TooLarge
    if along:
        ins = np.concatenate([ins, seeds])
    return lower(g, np.asarray(ins, dtype=np.int64), ids)


class _Steps:
    """The function's own nodes, instruction by instruction: a, b (operands; an
    immediate's constant), cond (SELECT's condition, else -1), z (the result); and
    node_after, slot -> node once the tape has run."""

    def __init__(self, n_instr):
        self.a, self.b, self.cond, self.z = (np.full(n_instr, -1, dtype=np.int64)
                                             for _ in range(4))
        self.node_after = None
        self.blocks = None     # the tape's block instructions (``jactape_blocks.Blocks``)


def _slot_count(tape):
    n = max(int(tape["n_in"]) + len(tape["const_value"]), int(tape.get("n_slots", 0)))
    for k in ("dst", "out_slot"):
        if len(tape[k]):
            n = max(n, int(np.max(tape[k])) + 1)
    return n


def _values(g, tape, ins, groups):
    """The function rebuilt in the Graph, one bulk call per group (``_groups``)."""
    op, dst, ta, tb, ts, imm = (np.asarray(tape[k])
                                for k in ("op", "dst", "a", "b", "s", "imm"))
    n_in = int(tape["n_in"])
    node = np.full(_slot_count(tape), -1, dtype=np.int64)
    node[:n_in] = ins
    consts = np.asarray(tape["const_value"], dtype=np.float64)
    node[n_in:n_in + len(consts)] = g.consts(consts)
    steps = _Steps(len(op))
    steps.blocks = _blocks.Blocks(tape, g)
    for i0, i1 in groups:
        word = int(op[i0])
        if word == BLOCK:       # a group of its own (``_groups``)
            _blocks.values(g, steps.blocks, node, i0, int(dst[i0]), int(ta[i0]))
            continue
        rule = word & OP_MASK
        sl = slice(i0, i1)
        a = g.consts(imm[sl]) if word & A_IMM else node[ta[sl]]
        steps.a[sl] = a
        if ARITY[rule] == 1:
            z = g.apply(rule, a)
        else:
            b = g.consts(imm[sl]) if word & B_IMM else node[tb[sl]]
            steps.b[sl] = b
            if rule == _SELECT:
                cond = node[ts[sl]]
                steps.cond[sl] = cond
                z = g.apply(rule, a, b, cond)
            else:
                z = g.apply(rule, a, b)
        steps.z[sl] = z
        node[dst[sl]] = z     # a group reads no slot it writes (``_groups``)
    steps.node_after = node
    return steps


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


def _expand(lo, count):
    """Ranges lo[j] .. lo[j] + count[j] side by side: (j, index) for each of their
    elements, in order."""
    owner = np.repeat(np.arange(len(lo)), count)
    return owner, lo[owner] + (np.arange(len(owner)) - (np.cumsum(count) - count)[owner])


def _groups(tape):
    """(first, end) of the groups of consecutive instructions that may be differentiated
    together (``passes.tape_groups``): one op word (and immediate), and no instruction
    reading a slot that an earlier one of the group writes (a running sum splits into one
    per instruction); a block instruction is a group of its own."""
    first = _blocks.split_groups(tape_groups(tape), tape)
    return list(zip(first.tolist(), np.append(first[1:], len(tape["op"])).tolist()))


class _Tangents:
    """Forward tangents by slot, each group's as a CSR block: row m (the group's m-th
    instruction) holds its (column key, node) pairs, keys ascending.  A slot points at
    the block and row of the instruction that last wrote it (-1: no tangent)."""

    def __init__(self, n_slots):
        self.block = np.full(n_slots, -1, dtype=np.int64)
        self.row = np.zeros(n_slots, dtype=np.int64)
        self.blocks = []

    def put(self, slots, m, members, keys, nodes):
        """Rows for an m-instruction group writing ``slots``; entries sorted by
        (member, key)."""
        ptr = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(np.bincount(members, minlength=m), out=ptr[1:])
        self.blocks.append((ptr, keys, nodes))
        has = ptr[1:] > ptr[:-1]
        self.block[slots] = np.where(has, len(self.blocks) - 1, -1)
        self.row[slots] = np.arange(m)

    def row_of(self, slot):
        """One slot's tangents as {key: node}."""
        b = int(self.block[slot])
        if b < 0:
            return {}
        ptr, keys, nodes = self.blocks[b]
        r = int(self.row[slot])
        lo, hi = int(ptr[r]), int(ptr[r + 1])
        return dict(zip(keys[lo:hi].tolist(), nodes[lo:hi].tolist()))

    def put_one(self, slot, keys, nodes):
        """One instruction's tangents (keys ascending) for ``slot``."""
        if not keys:
            self.block[slot] = -1
            return
        self.blocks.append((np.array([0, len(keys)], dtype=np.int64),
                            np.array(keys, dtype=np.int64), np.array(nodes, dtype=np.int64)))
        self.block[slot] = len(self.blocks) - 1
        self.row[slot] = 0

    def get(self, slots):
        """(member, key, node) of the tangents of ``slots``, sorted by (member, key)."""
        blk = self.block[slots]
        members = np.flatnonzero(blk >= 0)
        if len(members) == 0:
            e = np.zeros(0, dtype=np.int64)
            return e, e, e
        blk_m = blk[members]
        parts = []
        for b in np.unique(blk_m).tolist():
            sel = members[blk_m == b]
            ptr, keys, nodes = self.blocks[b]
            rows = self.row[slots[sel]]
            rep, at = _expand(ptr[rows], ptr[rows + 1] - ptr[rows])
            parts.append((sel[rep], keys[at], nodes[at]))
        if len(parts) == 1:
            return parts[0]
        m, k, v = (np.concatenate(p) for p in zip(*parts))
        order = np.lexsort((k, m))
        return m[order], k[order], v[order]


def _forward_one(e, tan, i, word, use_a, use_b, steps, fixed, slots, zero):
    """``_forward``'s arithmetic for a group of one instruction, node by node."""
    sa, sb, d = slots
    t_a = tan.row_of(sa) if use_a else {}
    t_b = tan.row_of(sb) if use_b else {}
    keys = sorted(t_a.keys() | t_b.keys())
    out_keys, out_nodes = [], []
    if keys and word & OP_MASK == _SELECT:
        # (s != 0) * ta + (s == 0) * tb: the taken branch's tangent (zero kills)
        cond = int(steps.cond[i])
        out_keys = keys
        out_nodes = [e.select(cond, t_a.get(k, zero), t_b.get(k, zero)) for k in keys]
    elif keys:
        is_fixed, fd0, fd1 = fixed
        if is_fixed[i]:
            c0 = float(fd0[i]) if use_a else 0.0
            c1 = float(fd1[i]) if use_b else 0.0
            p0 = e.c(c0) if c0 != 0.0 else None
            p1 = e.c(c1) if c1 != 0.0 else None
        else:
            q0, q1 = ops.partials(word, e, int(steps.a[i]), int(steps.b[i]), int(steps.z[i]))
            p0 = q0 if q0 is not None and t_a else None
            p1 = q1 if q1 is not None and t_b else None
        for k in keys:
            x = e("MUL", p0, t_a[k]) if p0 is not None and k in t_a else None
            y = e("MUL", p1, t_b[k]) if p1 is not None and k in t_b else None
            r = e("ADD", x, y) if x is not None and y is not None else (
                x if x is not None else y)
            if r is not None:
                out_keys.append(k)
                out_nodes.append(r)
    tan.put_one(d, out_keys, out_nodes)


def _merge(x, y):
    """The sorted union of two sorted arrays of distinct codes, and where each of x and
    y lands in it.  A stable argsort of the two runs side by side is a merge (timsort
    finds the runs), linear where np.union1d would hash and sort."""
    if len(y) == 0:
        return x, np.arange(len(x)), y
    both = np.concatenate([x, y])
    order = np.argsort(both, kind="stable")
    s = both[order]
    first = np.ones(len(s), dtype=bool)
    first[1:] = s[1:] != s[:-1]
    where = np.empty(len(s), dtype=np.int64)
    where[order] = np.cumsum(first) - 1
    return s[first], where[:len(x)], where[len(x):]


def _forward(g, tape, fixed, steps, groups, cols, max_nodes, one_by_one, seeds=None):
    """The Jacobian entries as jx_block_tangent computes them, a group at a time, each
    stage of a group one bulk call: (codes, nodes), code = output row * n_cols + column
    position k, sorted.  Per instruction: tangent = p0 * t_a + p1 * t_b, a term only where
    both factors exist (a zero fixed partial drops its term).  ``seeds`` (a node per
    column, or None): input cols[k] has tangent seeds[k] in the one column 0 instead."""
    is_fixed, fd0, fd1 = fixed
    op, dst, ta, tb = (np.asarray(tape[k]) for k in ("op", "dst", "a", "b"))
    dst = dst.astype(np.int64)
    bulk = _Bulk(g)
    one, zero = g.const(1.0), g.const(0.0)
    tan = _Tangents(len(steps.node_after))
    # the seeds: input cols[k] has tangent 1 in column k (or seeds[k] in column 0)
    n_in = int(tape["n_in"])
    n_cols = len(cols)
    order = np.lexsort((np.arange(n_cols), cols))
    if seeds is None:
        tan.put(np.arange(n_in), n_in, cols[order], order.astype(np.int64),
                np.full(n_cols, one, dtype=np.int64))
    else:
        tan.put(np.arange(n_in), n_in, cols[order], np.zeros(n_cols, dtype=np.int64),
                np.asarray(seeds, dtype=np.int64)[order])
        n_cols = 1
    empty = np.zeros(0, dtype=np.int64)
    scalar = _Builder(g)
    for i0, i1 in groups:
        word = int(op[i0])
        if word == BLOCK:   # W times the operands' tangents, column by column
            _blocks.forward(g, steps.blocks, tan, i0, int(dst[i0]), int(ta[i0]), n_cols)
            if len(g) > max_nodes:
                raise TooLarge
            continue
        m = i1 - i0
        sl = slice(i0, i1)
        use_a, use_b = ops.uses(word)
        if m == 1 and one_by_one:   # scalar code: NumPy's per-call cost would dominate
            _forward_one(scalar, tan, i0, word, use_a, use_b, steps, fixed,
                         (int(ta[i0]), int(tb[i0]), int(dst[i0])), zero)
            if len(g) > max_nodes:
                raise TooLarge
            continue
        ma, ka, na = tan.get(ta[sl].astype(np.int64)) if use_a else (empty,) * 3
        mb, kb, nb = tan.get(tb[sl].astype(np.int64)) if use_b else (empty,) * 3
        if len(ma) + len(mb) == 0:
            tan.block[dst[sl]] = -1
            continue
        union, ia, ib = _merge(ma * n_cols + ka, mb * n_cols + kb)
        um = union // n_cols
        if word & OP_MASK == _SELECT:
            # (s != 0) * ta + (s == 0) * tb: the taken branch's tangent (zero kills)
            x = np.full(len(union), zero, dtype=np.int64)
            y = x.copy()
            x[ia], y[ib] = na, nb
            res = bulk.select(steps.cond[sl][um], x, y)
        else:
            p0 = np.full(m, -1, dtype=np.int64)
            p1 = np.full(m, -1, dtype=np.int64)
            live = np.zeros(m, dtype=bool)
            live[um] = True
            fix = live & np.asarray(is_fixed[sl], dtype=bool)
            if fix.any():
                c0 = np.asarray(fd0[sl], dtype=np.float64) if use_a else np.zeros(m)
                c1 = np.asarray(fd1[sl], dtype=np.float64) if use_b else np.zeros(m)
                f0, f1 = fix & (c0 != 0.0), fix & (c1 != 0.0)
                p0[f0] = g.consts(c0[f0])
                p1[f1] = g.consts(c1[f1])
            var = np.flatnonzero(live & ~fix)
            if len(var):
                at = var + i0
                q0, q1 = ops.partials(word, bulk, steps.a[at], steps.b[at], steps.z[at])
                has_a = np.zeros(m, dtype=bool)
                has_a[ma] = True
                has_b = np.zeros(m, dtype=bool)
                has_b[mb] = True
                if q0 is not None:
                    p0[var] = np.where(has_a[var], np.broadcast_to(q0, (len(var),)), -1)
                if q1 is not None:
                    p1[var] = np.where(has_b[var], np.broadcast_to(q1, (len(var),)), -1)
            res = np.full(len(union), -1, dtype=np.int64)
            xa = p0[ma] >= 0
            x_at = ia[xa]
            x = bulk("MUL", p0[ma][xa], na[xa]) if xa.any() else empty
            yb = p1[mb] >= 0
            y_at = ib[yb]
            y = bulk("MUL", p1[mb][yb], nb[yb]) if yb.any() else empty
            res[x_at] = x
            # where both terms exist, one ADD; else the one term
            in_x = np.zeros(len(union), dtype=bool)
            in_x[x_at] = True
            both = in_x[y_at]
            if both.any():
                xs = res[y_at[both]]
                res[y_at[both]] = bulk("ADD", xs, y[both])
            res[y_at[~both]] = y[~both]
        keep = res >= 0
        tan.put(dst[sl], m, um[keep], (union % n_cols)[keep], res[keep])
        if len(g) > max_nodes:
            raise TooLarge
    out_slot = np.asarray(tape["out_slot"], dtype=np.int64)
    rows, keys, nodes = tan.get(out_slot)
    return rows * n_cols + keys, nodes


def _reverse(e, tape, fixed, steps, cols, n_out, max_nodes):
    """Adjoints by slot, {output row: node}, backwards as jx_block_adjoint; returns the
    Jacobian entries as ``_forward`` does, (codes, nodes) sorted by code."""
    is_fixed, fd0, fd1 = fixed
    op, dst, ta, tb = (np.asarray(tape[k]).tolist() for k in ("op", "dst", "a", "b"))
    s_a, s_b, s_cond, s_z = (x.tolist() for x in (steps.a, steps.b, steps.cond, steps.z))
    adj = {}
    for r, s in enumerate(tape["out_slot"]):
        adj.setdefault(int(s), {})[r] = e.c(1.0)
    g = e.g

    def add(slot, r, term):
        row = adj.setdefault(slot, {})
        row[r] = term if r not in row else e("ADD", row[r], term)

    for i in range(len(op) - 1, -1, -1):
        word = op[i]
        if word == BLOCK:    # W^T times the rows' adjoints, output row by row
            _blocks.reverse_one(g, steps.blocks, adj, add, i, dst[i], ta[i])
            if len(g) > max_nodes:
                raise TooLarge
            continue
        d = adj.pop(dst[i], None)    # the sweep clears dst's adjoint here
        if not d:
            continue
        use_a, use_b = ops.uses(word)
        sa, sb = ta[i], tb[i]
        if word & OP_MASK == _SELECT:
            cond, zero = s_cond[i], e.c(0.0)
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
            p0, p1 = ops.partials(word, e, s_a[i], s_b[i], s_z[i])
            for r, ad in d.items():
                if use_a:
                    add(sa, r, e("MUL", p0, ad))
                if use_b:
                    add(sb, r, e("MUL", p1, ad))
        if len(g) > max_nodes:
            raise TooLarge
    n_cols = len(cols)
    entries = sorted((r * n_cols + k, node) for k, j in enumerate(cols.tolist())
                     for r, node in adj.get(j, {}).items())
    codes = np.array([c for c, _ in entries], dtype=np.int64)
    nodes = np.array([v for _, v in entries], dtype=np.int64)
    return codes, nodes


def _writes(tape, rows):
    """The tape's writes as sorted codes slot * (n + 1) + i, for ``_writers``: dst[i],
    and a block's m rows from there (``rows``: the slots each instruction writes)."""
    dst = np.asarray(tape["dst"], dtype=np.int64)
    n = len(dst)
    instr = np.repeat(np.arange(n, dtype=np.int64), rows)
    slot = dst[instr] + (np.arange(len(instr)) - (np.cumsum(rows) - rows)[instr])
    return np.sort(slot * (n + 1) + instr)


def _writers(writes, slots, at, n):
    """The instruction that last wrote slots[k] before instruction at[k], or -1 - slot
    where none did (the slot's initial value: an input or a constant); ``writes`` from
    ``_writes`` of a tape of n instructions."""
    size = n + 1
    slots = np.asarray(slots, dtype=np.int64)
    query = slots * size + np.asarray(at, dtype=np.int64)
    k = np.searchsorted(writes, query) - 1
    hit = writes[np.maximum(k, 0)]
    ok = (k >= 0) & (hit // size == slots)
    return np.where(ok, hit % size, -1 - slots)


def _chain_sums(g, key, terms, seq):
    """Per key, its terms summed left to right in ``seq`` order (((t0 + t1) + t2) ...), as
    the sweep accumulates an adjoint; returns (keys ascending, sums)."""
    order = np.lexsort((seq, key))
    key, terms = key[order], terms[order]
    first = np.ones(len(key), dtype=bool)
    first[1:] = key[1:] != key[:-1]
    starts = np.flatnonzero(first)
    rank = np.arange(len(key)) - np.repeat(starts, np.diff(np.append(starts, len(key))))
    owner = np.cumsum(first) - 1          # the key's position among the unique keys
    acc = terms[starts].copy()
    depth = 1
    while True:
        sel = np.flatnonzero(rank == depth)
        if len(sel) == 0:
            break
        if len(sel) < 8:                  # a long chain of a few keys: node by node
            for j in np.flatnonzero(rank >= depth).tolist():
                o = int(owner[j])
                acc[o] = g.apply1(OPS["ADD"], int(acc[o]), int(terms[j]))
            break
        acc[owner[sel]] = g.apply(OPS["ADD"], acc[owner[sel]], terms[sel])
        depth += 1
    return key[starts], acc


class _Pending:
    """Adjoint terms waiting for the group whose instruction defines the value they
    belong to (all its readers come later on the tape, so the terms are complete when the
    backward pass reaches that group); values no instruction writes (inputs, constants)
    wait under -1, keyed by slot."""

    def __init__(self, group_of):
        self.group_of = group_of
        self.chunks = {}

    def send(self, defs, rows, terms, seq):
        init = defs < 0
        if init.any():
            self.chunks.setdefault(-1, []).append(
                (-1 - defs[init], rows[init], terms[init], seq[init]))
            keep = ~init
            defs, rows, terms, seq = defs[keep], rows[keep], terms[keep], seq[keep]
        if len(defs) == 0:
            return
        target = self.group_of[defs]
        order = np.argsort(target, kind="stable")
        target = target[order]
        cut = np.flatnonzero(np.concatenate(([True], target[1:] != target[:-1], [True])))
        for lo, hi in zip(cut[:-1].tolist(), cut[1:].tolist()):
            at = order[lo:hi]
            self.chunks.setdefault(int(target[lo]), []).append(
                (defs[at], rows[at], terms[at], seq[at]))

    def take(self, gid):
        parts = self.chunks.pop(gid, None)
        if not parts:
            return None
        return tuple(np.concatenate(p) for p in zip(*parts))


def _reverse_bulk(g, tape, fixed, steps, groups, cols, max_nodes):
    """``_reverse`` a group at a time, each stage one bulk call.  The adjoint of a value
    (by id: instruction i's, a block's rows) is, as the sweep sums it: the seed (an
    output's row), then the terms of the instructions reading it, the last reader first
    and, within one reader, its a-operand's term before its b-operand's (``seq``; a
    block's terms in row order), summed left to right."""
    is_fixed = np.asarray(fixed[0], dtype=bool)
    fd0, fd1 = (np.asarray(d, dtype=np.float64) for d in fixed[1:])
    op = np.asarray(tape["op"])
    n = len(op)
    ta, tb, dst = (np.asarray(tape[k], dtype=np.int64) for k in ("a", "b", "dst"))
    idx = np.arange(n, dtype=np.int64)
    # values by id: instruction i's first at first_value[i] (a block writes m of them)
    n_vals = _blocks.rows_written(tape, steps.blocks)
    first_value = np.cumsum(n_vals) - n_vals
    instr_of = np.repeat(idx, n_vals)
    writes = _writes(tape, n_vals)

    def defs_of(slots, at):
        """The value id that slots[k] holds before instruction at[k] (-1 - slot: none)."""
        w = _writers(writes, slots, at, n)
        i = np.maximum(w, 0)
        return np.where(w >= 0, first_value[i] + slots - dst[i], w)

    def_a, def_b = defs_of(ta, idx), defs_of(tb, idx)
    sizes = np.array([i1 - i0 for i0, i1 in groups], dtype=np.int64)
    pending = _Pending(np.repeat(np.arange(len(groups), dtype=np.int64), sizes)[instr_of])
    out_slot = np.asarray(tape["out_slot"], dtype=np.int64)
    n_out = len(out_slot)
    one, zero = g.const(1.0), g.const(0.0)
    pending.send(defs_of(out_slot, np.full(n_out, n)), np.arange(n_out),
                 np.full(n_out, one, dtype=np.int64), np.full(n_out, -1, dtype=np.int64))
    bulk = _Bulk(g)
    for gid in range(len(groups) - 1, -1, -1):
        got = pending.take(gid)
        if got is None:
            continue
        defs, rows, terms, seq = got
        keys, adj = _chain_sums(g, defs * n_out + rows, terms, seq)
        v = keys // n_out                 # the value of each (value, row) adjoint
        i = instr_of[v]
        r = keys % n_out
        word = int(op[int(i[0])])
        if word == BLOCK:    # W^T times the rows' adjoints: the operands' terms
            b = int(i[0])
            k = np.arange(steps.blocks.shape(b)[1], dtype=np.int64)
            _blocks.reverse_bulk(g, steps.blocks, pending, b, v - first_value[b], r, adj,
                                 defs_of(ta[b] + k, np.full(len(k), b)), 2 * (n - 1 - b),
                                 n_out)
            if len(g) > max_nodes:
                raise TooLarge
            continue
        use_a, use_b = ops.uses(word)
        sa, sb = 2 * (n - 1 - i), 2 * (n - 1 - i) + 1
        if word & OP_MASK == _SELECT:
            cond = steps.cond[i]
            if use_a:
                pending.send(def_a[i], r, bulk.select(cond, adj, [zero]), sa)
            if use_b:
                pending.send(def_b[i], r, bulk.select(cond, [zero], adj), sb)
        else:
            fix = is_fixed[i]
            if fix.any():
                c0 = fd0[i] if use_a else np.zeros(len(i))
                c1 = fd1[i] if use_b else np.zeros(len(i))
                for c, defs_x, s in ((c0, def_a, sa), (c1, def_b, sb)):
                    f = fix & (c != 0.0)
                    if f.any():
                        pending.send(defs_x[i[f]], r[f],
                                     bulk("MUL", g.consts(c[f]), adj[f]), s[f])
            var = np.flatnonzero(~fix)
            if len(var):
                # the partials once per instruction, as the sweep computes them per point
                inst, back = np.unique(i[var], return_inverse=True)
                q0, q1 = ops.partials(word, bulk, steps.a[inst], steps.b[inst], steps.z[inst])
                iv, rv, av = i[var], r[var], adj[var]
                if use_a:
                    p0 = np.broadcast_to(q0, (len(inst),))[back]
                    pending.send(def_a[iv], rv, bulk("MUL", p0, av), sa[var])
                if use_b:
                    p1 = np.broadcast_to(q1, (len(inst),))[back]
                    pending.send(def_b[iv], rv, bulk("MUL", p1, av), sb[var])
        if len(g) > max_nodes:
            raise TooLarge
    # the inputs' adjoints: row r of the Jacobian at column k, cols[k] the input's slot
    got = pending.take(-1)
    n_cols = len(cols)
    if got is None:
        e = np.zeros(0, dtype=np.int64)
        return e, e
    slots, rows, terms, seq = got
    keys, adj = _chain_sums(g, slots * n_out + rows, terms, seq)
    slot, r = keys // n_out, keys % n_out
    order = np.argsort(cols, kind="stable")
    lo = np.searchsorted(cols[order], slot, side="left")
    hi = np.searchsorted(cols[order], slot, side="right")
    rep, at = _expand(lo, hi - lo)
    codes = r[rep] * n_cols + order[at]
    sort = np.argsort(codes)
    return codes[sort], adj[rep][sort]
