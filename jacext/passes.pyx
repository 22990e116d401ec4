# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiler passes: from a finished expression graph to a tape, and over tapes.

``lower`` runs the passes that turn the graph's live nodes into the Tape's arrays (dead
code, constant slots, last uses, work slots by liveness); ``tape_groups`` finds the
groups of like instructions of a tape that the Jacobian-tape builder rebuilds in bulk;
``fold_zeros`` rebuilds a tape with an interval per node (jacext/finite.py).
The DAG-level rewrites (common subexpressions, folding, exact identities, immediates)
happen earlier, on insert into the graph (``jacext/_graph.pyx``).  The passes over all
nodes are Cython loops: a trace of 10**6 elements has millions of nodes.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.math cimport fabs, fmax, fmin, isnan
from libc.stdlib cimport qsort

from jacext._graph cimport (C_BLOCK, C_CONST, C_INPUT, JX_A_IMM, JX_B_IMM, JX_N_OPS,
                            JX_OP_MASK, Graph, dbits, jx_op_arity, jx_op_value)

cnp.import_array()

cdef extern from "vm.h":
    int JX_BLOCK, JX_OP_MUL, JX_OP_DIV


cdef int _cmp_int32(const void *x, const void *y) noexcept nogil:
    cdef int32_t a = (<const int32_t *>x)[0], b = (<const int32_t *>y)[0]
    return (a > b) - (a < b)


cdef inline int64_t _release(int32_t *pending, int64_t n_pend, int32_t *free_stack,
                             int64_t n_free) noexcept:
    """Push a group's freed slots onto the free stack so that they pop in increasing
    order (an instruction may free two, from two ranges: sort them apart); the new
    height of the stack."""
    if n_pend > 1:
        qsort(pending, <size_t>n_pend, sizeof(int32_t), _cmp_int32)
    while n_pend > 0:
        n_pend -= 1
        free_stack[n_free] = pending[n_pend]
        n_free += 1
    return n_free


def lower(Graph g, input_ids, output_ids):
    """The tape arrays (``Tape``'s constructor takes them) for these input and output
    node ids of a finished graph: the passes in order.

    1. dead code: only what reaches an output is kept;
    2. constant slots: inputs take slots 0 .. n_in-1, then the constants that cannot be
       immediates (np.where's branches, constant outputs) the next ones;
    3. last uses: each value's last reader (outputs live to the end);
    4. work slots by liveness: a temporary's slot is freed after its last use and reused
       by a later instruction (never by the instruction that reads it last: dst does not
       alias its own operands), a group's freed slots only after the group.

    A block (``Graph.block``: W times a vector of nodes) with any live row becomes one block
    instruction (vm.h) where its first live row stands in the node order: its rows take m
    fresh contiguous slots, and its operands are read from contiguous slots -- their own
    where they already are (inputs, another block's rows, one traced call's results), else
    copied there first by ``x * 1.0`` instructions (exact, nan and signed zeros included).
    The blocks' matrices go to the tape's ``weights`` once each, whatever the number of
    blocks that use them.
    """
    cdef const int64_t[::1] ins = np.ascontiguousarray(input_ids, dtype=np.int64)
    cdef const int64_t[::1] outs = np.ascontiguousarray(output_ids, dtype=np.int64)
    cdef int64_t n = g.n, i, j, k, nd, o
    cdef Py_ssize_t n_in = ins.shape[0], n_out = outs.shape[0]
    cdef cnp.ndarray live_arr = np.zeros(n, dtype=np.uint8)
    cdef unsigned char[::1] live = live_arr
    cdef int32_t opw, base
    cdef int64_t n_instr = 0, n_const = 0
    cdef Py_ssize_t n_blocks = len(g.blocks)
    cdef cnp.ndarray block_live_arr = np.zeros(max(n_blocks, 1), dtype=np.uint8)
    cdef unsigned char[::1] block_live = block_live_arr
    cdef int64_t n_order = 0, n_gather = 0, n_rows = 0

    for i in range(n_out):
        if outs[i] < 0 or outs[i] >= n:
            raise IndexError("jacext: output id out of range")
        live[outs[i]] = 1
    # 1. dead code: ids are topological, so one backward pass
    for i in range(n - 1, -1, -1):
        if not live[i]:
            continue
        opw = g.op[i]
        if opw == C_INPUT or opw == C_CONST:
            continue
        if opw == C_BLOCK:   # a block's row: the block and all its operands live
            if not block_live[g.a[i]]:
                block_live[g.a[i]] = 1
                ids = g.blocks[g.a[i]][1]
                live_arr[ids] = 1
                n_order += 1
                n_gather += ids.shape[0]
                shape = g.blocks[g.a[i]][2]
                n_rows += shape[0] * (shape[2] if len(shape) == 3 else 1)
            continue
        n_instr += 1
        if g.a[i] >= 0:
            live[g.a[i]] = 1
        if g.b[i] >= 0:
            live[g.b[i]] = 1
        if g.s[i] >= 0:
            live[g.s[i]] = 1
    # 2. constant slots: inputs get slots 0..n_in-1, live constants the next ones
    cdef cnp.ndarray slot_arr = np.full(n, -1, dtype=np.int32)
    cdef int32_t[::1] slot = slot_arr
    for i in range(n_in):
        if ins[i] < 0 or ins[i] >= n or g.op[ins[i]] != C_INPUT:
            raise ValueError("jacext: an input id is not an input node")
        slot[ins[i]] = <int32_t>i
    for i in range(n):
        if live[i] and g.op[i] == C_CONST:
            n_const += 1
    cdef cnp.ndarray const_arr = np.empty(n_const, dtype=np.float64)
    cdef double[::1] const_vals = const_arr
    j = 0
    for i in range(n):
        if live[i] and g.op[i] == C_CONST:
            slot[i] = <int32_t>(n_in + j)
            const_vals[j] = g.imm[i]
            j += 1
    for i in range(n):
        if live[i] and g.op[i] == C_INPUT and slot[i] < 0:
            raise ValueError("jacext: the outputs depend on an input that is not an argument")
    # 3. last uses: instructions in id order; the last use of every operand (-1: none,
    # n_order: an output, alive to the end)
    n_order += n_instr
    n_instr += n_order - n_instr + n_gather   # at most: scalars, blocks, operand copies
    cdef cnp.ndarray order_arr = np.empty(n_order, dtype=np.int32)
    cdef int32_t[::1] order = order_arr
    cdef cnp.ndarray last_arr = np.full(n, -1, dtype=np.int32)
    cdef int32_t[::1] last = last_arr
    cdef cnp.ndarray block_seen_arr = np.zeros(max(n_blocks, 1), dtype=np.uint8)
    cdef unsigned char[::1] block_seen = block_seen_arr
    j = 0
    pinned = []
    for i in range(n):
        if live[i] and g.op[i] == C_BLOCK:
            if not block_seen[g.a[i]]:   # the block stands where its first live row does
                block_seen[g.a[i]] = 1
                order[j] = <int32_t>i
                last_arr[g.blocks[g.a[i]][1]] = j
                if g.blocks[g.a[i]][0] < 0:
                    pinned.append(g.blocks[g.a[i]][1])
                j += 1
            continue
        if live[i] and g.op[i] != C_INPUT and g.op[i] != C_CONST:
            order[j] = <int32_t>i
            if g.a[i] >= 0:
                last[g.a[i]] = <int32_t>j
            if g.b[i] >= 0:
                last[g.b[i]] = <int32_t>j
            if g.s[i] >= 0:
                last[g.s[i]] = <int32_t>j
            j += 1
    for i in range(n_out):
        last[outs[i]] = <int32_t>n_order   # outputs live to the end
    for ids in pinned:
        # a product's operands too: their values are its partials, which the derivative
        # sweeps read after the value sweep (vm.h)
        last_arr[ids] = n_order
    # 4. work slots by liveness (a free stack of slots).  Slots freed inside a
    # group -- consecutive instructions of one op word, none reading a value the
    # group made (one traced NumPy call over an array) -- are reused only after
    # it: then a group's dst slots do not meet its operand slots, and the
    # single-point sweep runs it as one contiguous vector loop (vm.c's runs).
    cdef cnp.ndarray free_arr = np.empty(n_instr + n_rows + 3, dtype=np.int32)
    cdef int32_t[::1] free_stack = free_arr
    cdef cnp.ndarray pend_arr = np.empty(n_instr + n_rows + 3, dtype=np.int32)
    cdef int32_t[::1] pending = pend_arr
    cdef cnp.ndarray born_arr = np.full(n, -1, dtype=np.int32)
    cdef int32_t[::1] born = born_arr
    cdef int64_t n_pend = 0, group_start = 0, prev_opw = -1
    cdef bint new_group
    cdef int64_t n_free = 0, next_slot = n_in + n_const
    cdef int64_t fixed = n_in + n_const
    cdef int64_t ops3[3]
    cdef cnp.ndarray t_op = np.empty(n_instr, dtype=np.int32)
    cdef cnp.ndarray t_dst = np.empty(n_instr, dtype=np.int32)
    cdef cnp.ndarray t_a = np.empty(n_instr, dtype=np.int32)
    cdef cnp.ndarray t_b = np.empty(n_instr, dtype=np.int32)
    cdef cnp.ndarray t_s = np.empty(n_instr, dtype=np.int32)
    cdef cnp.ndarray t_imm = np.empty(n_instr, dtype=np.float64)
    cdef int32_t[::1] top = t_op
    cdef int32_t[::1] tdst = t_dst
    cdef int32_t[::1] ta = t_a
    cdef int32_t[::1] tb = t_b
    cdef int32_t[::1] ts = t_s
    cdef double[::1] timm = t_imm
    cdef int64_t sa, sb, t = 0
    blocks_out = []
    weight_at = {}
    weight_parts = []
    cdef int64_t weight_size = 0
    for j in range(n_order):
        nd = order[j]
        opw = g.op[nd]
        if opw == C_BLOCK:
            # a block: a group of its own (the slots freed before it are free for it)
            n_free = _release(&pending[0], n_pend, &free_stack[0], n_free)
            n_pend = 0
            group_start = j
            prev_opw = JX_BLOCK
            w_index, ids, shape = g.blocks[g.a[nd]]
            product = w_index < 0
            if product:   # m x p results of an m x n and an n x p matrix of operands
                m = shape[0] * shape[2]
                nk = ids.shape[0]
            else:
                W = g.weights[w_index]
                m, nk = W.shape
            if next_slot + m + nk >= 2**31 - 1:
                raise MemoryError("jacext: the tape needs more than 2**31 work slots")
            in_slots = slot_arr[ids]
            if (in_slots[0] >= 0 and (nk == 1 or (np.diff(in_slots) == 1).all())):
                src = int(in_slots[0])
                copied = False
            else:   # x * 1.0 into nk fresh contiguous slots
                src = next_slot
                next_slot += nk
                t_op[t:t + nk] = JX_OP_MUL | JX_B_IMM
                t_dst[t:t + nk] = np.arange(src, src + nk, dtype=np.int32)
                t_a[t:t + nk] = in_slots
                t_b[t:t + nk] = in_slots
                t_s[t:t + nk] = in_slots
                t_imm[t:t + nk] = 1.0
                t += nk
                copied = True
            dst0 = next_slot
            next_slot += m
            if product:
                blocks_out.append((t, shape[0], shape[1], -shape[2]))
            else:
                if w_index not in weight_at:
                    weight_at[w_index] = weight_size
                    weight_parts.append(W.ravel())
                    weight_size += m * nk
                blocks_out.append((t, m, nk, weight_at[w_index]))
            top[t] = JX_BLOCK
            tdst[t] = <int32_t>dst0
            ta[t] = tb[t] = ts[t] = <int32_t>src
            timm[t] = 0.0
            t += 1
            first_row = nd - g.b[nd]
            for k in range(m):
                o = first_row + k
                slot[o] = <int32_t>(dst0 + k)
                born[o] = <int32_t>j
                if not live[o]:   # a row nobody reads
                    pending[n_pend] = slot[o]
                    n_pend += 1
            if copied and not product:   # (a product's copies hold its partials)
                for k in range(nk):
                    pending[n_pend] = <int32_t>(src + k)
                    n_pend += 1
            for o in np.unique(ids).tolist():
                if last[o] == j and slot[o] >= fixed:
                    pending[n_pend] = slot[o]
                    n_pend += 1
            continue
        base = opw & JX_OP_MASK
        ops3[0] = g.a[nd]
        ops3[1] = g.b[nd]
        ops3[2] = g.s[nd]
        sa = slot[ops3[0]] if ops3[0] >= 0 else -1
        sb = slot[ops3[1]] if ops3[1] >= 0 else -1
        if sa < 0:
            sa = sb
        if sb < 0:
            sb = sa
        top[t] = opw
        ta[t] = <int32_t>sa
        tb[t] = <int32_t>sb
        # SELECT's condition is its slot s; any other instruction repeats a there
        ts[t] = slot[ops3[2]] if jx_op_arity[base] == 3 else <int32_t>sa
        timm[t] = g.imm[nd]
        new_group = opw != prev_opw
        for k in range(3):
            o = ops3[k]
            if o >= 0 and born[o] >= group_start:
                new_group = True
        if new_group:
            n_free = _release(&pending[0], n_pend, &free_stack[0], n_free)
            n_pend = 0
            group_start = j
        prev_opw = opw
        born[nd] = <int32_t>j
        # take a slot, then free the temporaries that die here (once each):
        # dst never shares a slot with its own operands, so the batched
        # sweeps' lane loops see no aliasing and vectorise
        if n_free > 0:
            n_free -= 1
            slot[nd] = free_stack[n_free]
        else:
            if next_slot >= 2**31 - 1:
                raise MemoryError("jacext: the tape needs more than 2**31 work slots")
            slot[nd] = <int32_t>next_slot
            next_slot += 1
        tdst[t] = slot[nd]
        t += 1
        for k in range(3):
            o = ops3[k]
            if o < 0 or last[o] != j or slot[o] < fixed:
                continue
            if (k >= 1 and o == ops3[0]) or (k == 2 and o == ops3[1]):
                continue
            pending[n_pend] = slot[o]
            n_pend += 1
        if last[nd] < 0:   # a value nobody reads (cannot happen after DCE)
            pending[n_pend] = slot[nd]
            n_pend += 1
    cdef cnp.ndarray t_out = np.empty(n_out, dtype=np.int32)
    cdef int32_t[::1] tout = t_out
    for i in range(n_out):
        tout[i] = slot[outs[i]]
    if t < n_instr:   # fewer operand copies than the most there could be
        t_op, t_dst, t_a, t_b, t_s, t_imm = (arr[:t].copy() for arr in
                                             (t_op, t_dst, t_a, t_b, t_s, t_imm))
    return {
        "op": t_op, "dst": t_dst, "a": t_a, "b": t_b, "s": t_s, "imm": t_imm,
        "out_slot": t_out,
        "const_value": const_arr,
        "n_in": int(n_in), "n_slots": int(next_slot),
        "blocks": np.array(blocks_out, dtype=np.int64).reshape(-1),
        "weights": (np.concatenate(weight_parts) if weight_parts
                    else np.zeros(0, dtype=np.float64)),
    }


def tape_groups(tape):
    """The first instruction (int64) of each group of consecutive instructions of a tape
    (its arrays, as ``Tape.arrays()``) that one bulk graph call may rebuild together:
    one op word (with its immediate, bit for bit, where the word has one), and no
    instruction reading (a, b or SELECT's s) or writing a slot that an earlier one of its
    group writes.  One pass with the last writer of every slot."""
    cdef const int32_t[::1] op = np.ascontiguousarray(tape["op"], dtype=np.int32)
    cdef const double[::1] imm = np.ascontiguousarray(tape["imm"], dtype=np.float64)
    cdef const int32_t[::1] dst = np.ascontiguousarray(tape["dst"], dtype=np.int32)
    cdef const int32_t[::1] a = np.ascontiguousarray(tape["a"], dtype=np.int32)
    cdef const int32_t[::1] b = np.ascontiguousarray(tape["b"], dtype=np.int32)
    cdef const int32_t[::1] s = np.ascontiguousarray(tape["s"], dtype=np.int32)
    cdef Py_ssize_t n = op.shape[0], j
    if (imm.shape[0] != n or dst.shape[0] != n or a.shape[0] != n or b.shape[0] != n
            or s.shape[0] != n):
        raise ValueError("jacext: tape arrays differ in length")
    cdef int32_t n_slots = 0
    for j in range(n):
        if dst[j] < 0 or a[j] < 0 or b[j] < 0 or s[j] < 0:
            raise ValueError("jacext: negative slot in a tape")
        n_slots = max(n_slots, dst[j] + 1, a[j] + 1, b[j] + 1, s[j] + 1)
    cdef cnp.ndarray last_arr = np.full(n_slots, -1, dtype=np.int64)
    cdef int64_t[::1] last = last_arr
    cdef cnp.ndarray first_arr = np.empty(n, dtype=np.int64)
    cdef int64_t[::1] first = first_arr
    cdef Py_ssize_t n_groups = 0, start = 0
    cdef int32_t word, base
    cdef bint use_a, use_b, use_s, cut
    for j in range(n):
        word = op[j]
        base = word & JX_OP_MASK
        if base < 0 or base >= JX_N_OPS:
            raise ValueError(f"jacext: no op number {base}")
        use_a = not (word & JX_A_IMM)
        use_b = jx_op_arity[base] >= 2 and not (word & JX_B_IMM)
        use_s = jx_op_arity[base] == 3
        cut = j == 0 or word != op[j - 1] or (
            (word & (JX_A_IMM | JX_B_IMM)) and dbits(imm[j]) != dbits(imm[j - 1]))
        if not cut:
            cut = last[dst[j]] >= start or (use_a and last[a[j]] >= start) or (
                use_b and last[b[j]] >= start) or (use_s and last[s[j]] >= start)
        if cut:
            start = j
            first[n_groups] = j
            n_groups += 1
        last[dst[j]] = j
    return first_arr[:n_groups].copy()


def evaluate(Graph g, x, double[::1] vals, int64_t start):
    """The values of nodes ``start .. len(g) - 1`` at the point ``x`` (the graph's inputs,
    float64), written into ``vals`` (at least ``len(g)`` long; earlier nodes' values are
    read from there): guarded tracing's view of the trace point.  Each node by the op
    table's own value (``jx_op_value``), in id order, which is topological."""
    cdef const double[::1] xv = np.ascontiguousarray(x, dtype=np.float64).ravel()
    cdef int64_t i, n = g.n
    cdef int32_t word, base
    cdef double va, vb, vs
    if vals.shape[0] < n:
        raise ValueError("jacext: evaluate needs a value buffer as long as the graph")
    for i in range(start, n):
        word = g.op[i]
        if word == C_INPUT:
            if g.a[i] < 0 or g.a[i] >= xv.shape[0]:
                raise IndexError("jacext: the trace point has fewer values than inputs")
            vals[i] = xv[g.a[i]]
            continue
        if word == C_CONST:
            vals[i] = g.imm[i]
            continue
        if word == C_BLOCK:     # row b of block a: W[b] @ its operands' values
            w, v, shape = g.blocks[g.a[i]]
            if w < 0:   # a product: row i, column j of A @ B
                m, nk, p = shape
                r, c = divmod(g.b[i], p)
                av = np.asarray(vals)[v]
                vals[i] = float(np.dot(av[r * nk:(r + 1) * nk], av[m * nk + c::p]))
            else:
                vals[i] = float(np.dot(g.weights[w][g.b[i]], np.asarray(vals)[v]))
            continue
        base = word & JX_OP_MASK
        va = g.imm[i] if (word & JX_A_IMM) else (vals[g.a[i]] if g.a[i] >= 0 else 0.0)
        vb = g.imm[i] if (word & JX_B_IMM) else (vals[g.b[i]] if g.b[i] >= 0 else 0.0)
        vs = vals[g.s[i]] if g.s[i] >= 0 else 0.0
        vals[i] = jx_op_value(base, va, vb, vs)


# ---- the finite-input pass (jacext/finite.py): intervals, and x * 0.0 folded ----

cdef enum:
    R_UNKNOWN = 0
    R_UP, R_DOWN, R_FIXED, R_ADD, R_SUB, R_MUL, R_DIV, R_NEG, R_ABS, R_SQUARE, R_COSH
    R_RECIPROCAL, R_MAX, R_MIN, R_SELECT, R_HYPOT, R_LOGADDEXP, R_HEAVISIDE

#: the range rules an op may have (jacext/finite.py gives each op one): UP / DOWN, monotone
#: over its domain (an interval, nan outside); FIXED, a fixed interval for finite operands;
#: the others, the op's own interval arithmetic
RANGE_RULES = {"UNKNOWN": R_UNKNOWN, "UP": R_UP, "DOWN": R_DOWN, "FIXED": R_FIXED,
               "ADD": R_ADD, "SUB": R_SUB, "MUL": R_MUL, "DIV": R_DIV, "NEG": R_NEG,
               "ABS": R_ABS, "SQUARE": R_SQUARE, "COSH": R_COSH, "RECIPROCAL": R_RECIPROCAL,
               "MAX": R_MAX, "MIN": R_MIN, "SELECT": R_SELECT, "HYPOT": R_HYPOT,
               "LOGADDEXP": R_LOGADDEXP, "HEAVISIDE": R_HEAVISIDE}


cdef inline double _min4(double p, double q, double r, double s) noexcept:
    return fmin(fmin(p, q), fmin(r, s))


cdef inline double _max4(double p, double q, double r, double s) noexcept:
    return fmax(fmax(p, q), fmax(r, s))


cdef bint _range(int kind, int op, double al, double ah, double bl, double bh,
                 double fl, double fh, double *lo, double *hi) noexcept:
    """[lo, hi] of op over operand intervals [al, ah], [bl, bh] (both proven finite);
    False where the rule proves nothing."""
    cdef double m, least
    if kind == R_ADD:
        lo[0], hi[0] = al + bl, ah + bh
    elif kind == R_SUB:
        lo[0], hi[0] = al - bh, ah - bl
    elif kind == R_MUL:
        lo[0] = _min4(al * bl, al * bh, ah * bl, ah * bh)
        hi[0] = _max4(al * bl, al * bh, ah * bl, ah * bh)
    elif kind == R_DIV:
        if not (bl > 0.0 or bh < 0.0):
            return False
        lo[0] = _min4(al / bl, al / bh, ah / bl, ah / bh)
        hi[0] = _max4(al / bl, al / bh, ah / bl, ah / bh)
    elif kind == R_NEG:
        lo[0], hi[0] = -ah, -al
    elif kind == R_ABS or kind == R_SQUARE or kind == R_COSH:
        m = fmax(fabs(al), fabs(ah))
        least = 0.0 if al <= 0.0 <= ah else fmin(fabs(al), fabs(ah))
        if kind == R_ABS:
            lo[0], hi[0] = least, m
        elif kind == R_SQUARE:
            lo[0], hi[0] = least * least, m * m
        else:
            lo[0], hi[0] = 1.0, jx_op_value(op, m, 0.0, 0.0)
    elif kind == R_RECIPROCAL:
        if not (al > 0.0 or ah < 0.0):
            return False
        lo[0], hi[0] = 1.0 / ah, 1.0 / al
    elif kind == R_UP or kind == R_DOWN:
        lo[0] = jx_op_value(op, al, 0.0, 0.0)
        hi[0] = jx_op_value(op, ah, 0.0, 0.0)
        if kind == R_DOWN:
            lo[0], hi[0] = hi[0], lo[0]
    elif kind == R_FIXED:
        lo[0], hi[0] = fl, fh
    elif kind == R_MAX:
        lo[0], hi[0] = fmax(al, bl), fmax(ah, bh)
    elif kind == R_MIN or kind == R_SELECT:
        lo[0] = fmin(al, bl)
        hi[0] = fmin(ah, bh) if kind == R_MIN else fmax(ah, bh)
    elif kind == R_HYPOT:
        lo[0], hi[0] = 0.0, fmax(fabs(al), fabs(ah)) + fmax(fabs(bl), fabs(bh))
    elif kind == R_LOGADDEXP:     # max(a, b) <= logaddexp(a, b) <= max(a, b) + log 2
        lo[0], hi[0] = fmax(al, bl), fmax(ah, bh) + 1.0
    elif kind == R_HEAVISIDE:
        lo[0], hi[0] = fmin(bl, 0.0), fmax(bh, 1.0)
    else:
        return False
    return not (isnan(lo[0]) or isnan(hi[0]))


cdef class _Intervals:
    """[lo, hi] by node id of a growing Graph: inputs +-bound, constants their value,
    every other node unknown (-inf, inf) until a rule sets it."""
    cdef Graph g
    cdef cnp.ndarray lo_arr, hi_arr
    cdef double *lo
    cdef double *hi
    cdef int64_t known
    cdef double bound, limit

    def __init__(self, Graph g, double bound, double limit):
        self.g = g
        self.bound, self.limit = bound, limit
        self.lo_arr = np.full(max(1024, 2 * g.n), -np.inf)
        self.hi_arr = np.full(max(1024, 2 * g.n), np.inf)
        self.known = 0
        self.sync()

    cdef sync(self):
        cdef int64_t i, n = self.g.n, cap = self.lo_arr.shape[0]
        if n > cap:
            cap = max(n, 2 * cap)
            self.lo_arr = np.concatenate([self.lo_arr, np.full(cap - self.lo_arr.shape[0],
                                                               -np.inf)])
            self.hi_arr = np.concatenate([self.hi_arr, np.full(cap - self.hi_arr.shape[0],
                                                               np.inf)])
        self.lo = <double *>cnp.PyArray_DATA(self.lo_arr)
        self.hi = <double *>cnp.PyArray_DATA(self.hi_arr)
        for i in range(self.known, n):
            if self.g.op[i] == C_CONST and not isnan(self.g.imm[i]):
                self.lo[i] = self.hi[i] = self.g.imm[i]
            elif self.g.op[i] == C_INPUT:
                self.lo[i], self.hi[i] = -self.bound, self.bound
        self.known = n

    cdef inline bint finite(self, int64_t i) noexcept:
        return self.lo[i] >= -self.limit and self.hi[i] <= self.limit

    cdef inline bint zero(self, int64_t i) noexcept:
        return self.g.op[i] == C_CONST and self.g.imm[i] == 0.0


def fold_zeros(Graph g, ins, tape, const int32_t[::1] rule, const double[::1] fixed_lo,
               const double[::1] fixed_hi, double bound, double limit, bint fold,
               block_rows):
    """The tape (``Tape.arrays()``) rebuilt in the empty graph ``g`` (its inputs ``ins``
    made), instruction by instruction, each node with the interval its op's range
    ``rule`` gives it (inputs within +-bound; a value counts finite while within
    +-limit); with ``fold``, ``x * 0.0`` (and ``0.0 / x``) of a finite x is the constant
    0.0, so that the graph's own simplification removes what it fed.  ``block_rows(i,
    node, lo, hi)`` rebuilds block instruction i in g and returns its rows' bound.
    Returns (the output node ids, each instruction's interval as two arrays)."""
    cdef const int32_t[::1] op = np.ascontiguousarray(tape["op"], dtype=np.int32)
    cdef const int32_t[::1] dst = np.ascontiguousarray(tape["dst"], dtype=np.int32)
    cdef const int32_t[::1] ta = np.ascontiguousarray(tape["a"], dtype=np.int32)
    cdef const int32_t[::1] tb = np.ascontiguousarray(tape["b"], dtype=np.int32)
    cdef const int32_t[::1] ts = np.ascontiguousarray(tape["s"], dtype=np.int32)
    cdef const double[::1] imm = np.ascontiguousarray(tape["imm"], dtype=np.float64)
    cdef Py_ssize_t n = op.shape[0], i, k
    cdef int32_t n_in = int(tape["n_in"])
    cdef cnp.ndarray node_arr = np.full(int(tape["n_slots"]), -1, dtype=np.int64)
    cdef int64_t[::1] node = node_arr
    consts = np.asarray(tape["const_value"], dtype=np.float64)
    node_arr[:n_in] = ins
    node_arr[n_in:n_in + consts.shape[0]] = g.consts(consts)
    cdef int64_t zero = g.const(0.0), x, y, c, z, before
    cdef _Intervals iv = _Intervals(g, bound, limit)
    cdef cnp.ndarray res_lo = np.full(n, -np.inf), res_hi = np.full(n, np.inf)
    cdef int32_t w, base, arity
    cdef double zl = 0.0, zh = 0.0
    cdef bint known, gone
    for i in range(n):
        w = op[i]
        if w == JX_BLOCK:
            before = g.n
            reach = block_rows(i, node_arr, iv.lo_arr, iv.hi_arr)
            iv.sync()
            for k in range(reach.shape[0]):
                z = node[dst[i] + k]
                if z >= before and g.op[z] != C_CONST and reach[k] <= limit:
                    iv.lo[z], iv.hi[z] = -reach[k], reach[k]
            continue
        base = w & JX_OP_MASK
        arity = jx_op_arity[base]
        x = g.const(imm[i]) if w & JX_A_IMM else node[ta[i]]
        y = (g.const(imm[i]) if w & JX_B_IMM else node[tb[i]]) if arity >= 2 else -1
        c = node[ts[i]] if arity == 3 else -1
        iv.sync()
        known = iv.finite(x) and (arity < 2 or iv.finite(y)) and _range(
            rule[base], base, iv.lo[x], iv.hi[x], iv.lo[y if y >= 0 else x],
            iv.hi[y if y >= 0 else x], fixed_lo[base], fixed_hi[base], &zl, &zh)
        gone = False
        if fold and base == JX_OP_MUL:
            gone = (iv.zero(x) and iv.finite(y)) or (iv.zero(y) and iv.finite(x))
        elif fold and base == JX_OP_DIV:   # 0 / y: y finite and not zero
            gone = iv.zero(x) and iv.finite(y) and (iv.lo[y] > 0.0 or iv.hi[y] < 0.0)
        before = g.n
        z = zero if gone else g.apply1(base, x, y, c)
        iv.sync()
        if known and z >= before and g.op[z] != C_CONST:
            iv.lo[z], iv.hi[z] = zl, zh
        res_lo[i], res_hi[i] = iv.lo[z], iv.hi[z]
        node[dst[i]] = z
    outs = node_arr[np.asarray(tape["out_slot"], dtype=np.int64)]
    return outs, (res_lo, res_hi)
