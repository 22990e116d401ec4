# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiler passes: from a finished expression graph to a tape, and over tapes.

``lower`` runs the passes that turn the graph's live nodes into the Tape's arrays (dead
code, constant slots, last uses, work slots by liveness); ``tape_groups`` finds the
groups of like instructions of a tape that the Jacobian-tape builder rebuilds in bulk.
The DAG-level rewrites (common subexpressions, folding, exact identities, immediates)
happen earlier, on insert into the graph (``jacext/_graph.pyx``).  The passes over all
nodes are Cython loops: a trace of 10**6 elements has millions of nodes.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.stdlib cimport qsort

from jacext._graph cimport (C_BLOCK, C_CONST, C_INPUT, JX_A_IMM, JX_B_IMM, JX_N_OPS,
                            JX_OP_MASK, Graph, dbits, jx_op_arity, jx_op_value)

cnp.import_array()

cdef extern from "vm.h":
    int JX_BLOCK, JX_OP_MUL


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
                n_rows += g.weights[g.blocks[g.a[i]][0]].shape[0]
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
    for i in range(n):
        if live[i] and g.op[i] == C_BLOCK:
            if not block_seen[g.a[i]]:   # the block stands where its first live row does
                block_seen[g.a[i]] = 1
                order[j] = <int32_t>i
                last_arr[g.blocks[g.a[i]][1]] = j
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
            w_index, ids = g.blocks[g.a[nd]]
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
            if copied:
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
            w, v = g.blocks[g.a[i]]
            vals[i] = float(np.dot(g.weights[w][g.b[i]], np.asarray(vals)[v]))
            continue
        base = word & JX_OP_MASK
        va = g.imm[i] if (word & JX_A_IMM) else (vals[g.a[i]] if g.a[i] >= 0 else 0.0)
        vb = g.imm[i] if (word & JX_B_IMM) else (vals[g.b[i]] if g.b[i] >= 0 else 0.0)
        vs = vals[g.s[i]] if g.s[i] >= 0 else 0.0
        vals[i] = jx_op_value(base, va, vb, vs)
