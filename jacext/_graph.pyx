# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The expression DAG: scalar nodes stored as a struct of arrays.

Nodes are hash-consed on insert (common subexpressions become one node),
constant operands are folded or turned into immediates, and exact identities
are simplified.  Only IEEE-exact rewrites are made: ``x * 1 -> x`` yes,
``x * 0 -> 0`` no (nan * 0 must stay nan).  Every insert is a bulk operation
over arrays of node ids, so a NumPy call over 10**6 elements costs one call
here.

Node ids are topologically ordered: a node's operands always have smaller ids.
"""
import numpy as np
cimport numpy as cnp
from libc.math cimport signbit
from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memset

cnp.import_array()

cdef extern from "ops.h":
    int JX_N_OPS
    int JX_OP_MASK
    int JX_A_IMM
    int JX_B_IMM
    const char *jx_op_names[]
    const int jx_op_arity[]
    const int jx_op_commutes[]
    double jx_op_value(int op, double a, double b, double s) nogil
    int JX_OP_ADD, JX_OP_SUB, JX_OP_MUL, JX_OP_DIV, JX_OP_POW, JX_OP_NEG
    int JX_OP_SQUARE, JX_OP_SQRT, JX_OP_RECIPROCAL, JX_OP_SELECT

#: {op name: op number}, read from the C op table (ops.def)
OPS = {jx_op_names[i].decode(): i for i in range(JX_N_OPS)}
#: {op number: arity}
ARITY = {i: jx_op_arity[i] for i in range(JX_N_OPS)}
OP_MASK = JX_OP_MASK
A_IMM = JX_A_IMM
B_IMM = JX_B_IMM
# Graph-only node kinds, numbered past the tape ops.
KIND_INPUT = JX_N_OPS
KIND_CONST = JX_N_OPS + 1
cdef int C_INPUT = JX_N_OPS
cdef int C_CONST = JX_N_OPS + 1


cdef inline uint64_t _mix(uint64_t h, uint64_t v) noexcept nogil:
    # splitmix64 step over the running hash
    h ^= v + <uint64_t>0x9E3779B97F4A7C15 + (h << 6) + (h >> 2)
    h ^= h >> 30
    h *= <uint64_t>0xBF58476D1CE4E5B9
    h ^= h >> 27
    h *= <uint64_t>0x94D049BB133111EB
    h ^= h >> 31
    return h


cdef union _Bits:
    double d
    uint64_t u


cdef inline uint64_t _dbits(double x) noexcept nogil:
    cdef _Bits b
    b.d = x
    return b.u


cdef class Graph:
    """Struct-of-arrays DAG with a hash table for common subexpressions."""

    cdef int32_t *op
    cdef int64_t *a
    cdef int64_t *b
    cdef int64_t *s
    cdef double *imm
    cdef int64_t n, cap
    cdef int64_t *table
    cdef int64_t table_cap
    cdef public int64_t n_inputs

    def __cinit__(self):
        self.n = 0
        self.cap = 0
        self.table_cap = 0
        self.n_inputs = 0
        self.op = NULL
        self.a = NULL
        self.b = NULL
        self.s = NULL
        self.imm = NULL
        self.table = NULL
        self._grow(1024)
        self._rehash(4096)

    def __dealloc__(self):
        free(self.op)
        free(self.a)
        free(self.b)
        free(self.s)
        free(self.imm)
        free(self.table)

    def __len__(self):
        return self.n

    cdef int _grow(self, int64_t cap) except -1:
        cdef void *p
        p = realloc(self.op, cap * sizeof(int32_t))
        if p == NULL:
            raise MemoryError("jacext: out of memory growing the expression graph")
        self.op = <int32_t *>p
        p = realloc(self.a, cap * sizeof(int64_t))
        if p == NULL:
            raise MemoryError("jacext: out of memory growing the expression graph")
        self.a = <int64_t *>p
        p = realloc(self.b, cap * sizeof(int64_t))
        if p == NULL:
            raise MemoryError("jacext: out of memory growing the expression graph")
        self.b = <int64_t *>p
        p = realloc(self.s, cap * sizeof(int64_t))
        if p == NULL:
            raise MemoryError("jacext: out of memory growing the expression graph")
        self.s = <int64_t *>p
        p = realloc(self.imm, cap * sizeof(double))
        if p == NULL:
            raise MemoryError("jacext: out of memory growing the expression graph")
        self.imm = <double *>p
        self.cap = cap
        return 0

    cdef inline uint64_t _hash(self, int32_t op, int64_t a, int64_t b, int64_t s,
                               double imm) noexcept nogil:
        cdef uint64_t h = <uint64_t>op
        h = _mix(h, <uint64_t>a)
        h = _mix(h, <uint64_t>b)
        h = _mix(h, <uint64_t>s)
        h = _mix(h, _dbits(imm))
        return h

    cdef int _rehash(self, int64_t new_cap) except -1:
        cdef int64_t *t = <int64_t *>malloc(new_cap * sizeof(int64_t))
        cdef int64_t i, j, mask = new_cap - 1
        if t == NULL:
            raise MemoryError("jacext: out of memory growing the expression graph")
        memset(t, 0xff, new_cap * sizeof(int64_t))  # all -1: empty
        for i in range(self.n):
            if self.op[i] == C_INPUT:
                continue
            j = <int64_t>(self._hash(self.op[i], self.a[i], self.b[i], self.s[i],
                                     self.imm[i]) & <uint64_t>mask)
            while t[j] != -1:
                j = (j + 1) & mask
            t[j] = i
        free(self.table)
        self.table = t
        self.table_cap = new_cap
        return 0

    cdef int64_t _append(self, int32_t op, int64_t a, int64_t b, int64_t s,
                         double imm) except -1:
        if self.n == self.cap:
            self._grow(self.cap * 2)
        cdef int64_t i = self.n
        self.op[i] = op
        self.a[i] = a
        self.b[i] = b
        self.s[i] = s
        self.imm[i] = imm
        self.n += 1
        return i

    cdef int64_t _intern(self, int32_t op, int64_t a, int64_t b, int64_t s,
                         double imm) except -1:
        cdef int64_t mask, j, k
        cdef uint64_t ib = _dbits(imm)
        if 2 * (self.n + 1) > self.table_cap:
            self._rehash(self.table_cap * 2)
        mask = self.table_cap - 1
        j = <int64_t>(self._hash(op, a, b, s, imm) & <uint64_t>mask)
        while True:
            k = self.table[j]
            if k == -1:
                break
            if (self.op[k] == op and self.a[k] == a and self.b[k] == b
                    and self.s[k] == s and _dbits(self.imm[k]) == ib):
                return k
            j = (j + 1) & mask
        k = self._append(op, a, b, s, imm)
        self.table[j] = k
        return k

    cdef inline int64_t _const(self, double value) except -1:
        return self._intern(C_CONST, -1, -1, -1, value)

    cdef inline bint _is_const(self, int64_t i) noexcept:
        return self.op[i] == C_CONST

    cdef int64_t _apply(self, int op, int64_t x, int64_t y, int64_t c) except -1:
        """One scalar node for op(x, y) (or SELECT(c, x, y)), simplified."""
        cdef int arity = jx_op_arity[op]
        cdef bint cx, cy
        cdef double v
        cdef int64_t t
        if arity == 3:
            if self._is_const(c):
                return x if self.imm[c] != 0.0 else y
            if x == y:
                return x
            return self._intern(op, x, y, c, 0.0)
        if arity == 1:
            if self._is_const(x):
                return self._const(jx_op_value(op, self.imm[x], 0.0, 0.0))
            if op == JX_OP_NEG and self.op[x] == JX_OP_NEG:
                return self.a[x]
            return self._intern(op, x, -1, -1, 0.0)
        cx = self._is_const(x)
        cy = self._is_const(y)
        if cx and cy:
            return self._const(jx_op_value(op, self.imm[x], self.imm[y], 0.0))
        if jx_op_commutes[op] and (cx or (not cy and x > y)):
            t = x; x = y; y = t
            cx, cy = cy, cx
        if cy:
            v = self.imm[y]
            if op == JX_OP_MUL:
                if v == 1.0:
                    return x
                if v == -1.0:
                    return self._apply(JX_OP_NEG, x, -1, -1)
            elif op == JX_OP_DIV:
                if v == 1.0:
                    return x
            elif op == JX_OP_ADD:
                if v == 0.0 and signbit(v):   # x + (-0.0) == x, bit for bit
                    return x
            elif op == JX_OP_SUB:
                if v == 0.0 and not signbit(v):   # x - (+0.0) == x, bit for bit
                    return x
            elif op == JX_OP_POW:
                if v == 1.0:
                    return x
                if v == 0.0:    # NumPy: x**0 == 1 for every x, nan included
                    return self._const(1.0)
                if v == 2.0:
                    return self._apply(JX_OP_SQUARE, x, -1, -1)
                if v == 0.5:
                    return self._apply(JX_OP_SQRT, x, -1, -1)
                if v == -1.0:
                    return self._apply(JX_OP_RECIPROCAL, x, -1, -1)
            return self._intern(op | JX_B_IMM, x, -1, -1, v)
        if cx:
            v = self.imm[x]
            if op == JX_OP_DIV and v == 1.0:
                return self._apply(JX_OP_RECIPROCAL, y, -1, -1)
            return self._intern(op | JX_A_IMM, -1, y, -1, v)
        if op == JX_OP_MUL and x == y:
            return self._apply(JX_OP_SQUARE, x, -1, -1)
        return self._intern(op, x, y, -1, 0.0)

    # ---- bulk interface used by the tracer ----

    def inputs(self, int64_t count):
        """``count`` new input nodes; returns their ids."""
        cdef int64_t i, first = self.n
        for i in range(count):
            self._append(C_INPUT, self.n_inputs, -1, -1, 0.0)
            self.n_inputs += 1
        return np.arange(first, first + count, dtype=np.int64)

    def consts(self, values):
        """Node ids of constants (same value bits, same node)."""
        cdef const double[::1] v = np.ascontiguousarray(values, dtype=np.float64).ravel()
        cdef cnp.ndarray out = np.empty(v.shape[0], dtype=np.int64)
        cdef int64_t[::1] o = out
        cdef Py_ssize_t i
        for i in range(v.shape[0]):
            o[i] = self._const(v[i])
        return out

    def apply(self, int op, x, y=None, c=None):
        """Elementwise op over equal-length 1-D id arrays; returns the result ids."""
        cdef const int64_t[::1] xv = x
        cdef const int64_t[::1] yv = xv if y is None else y
        cdef const int64_t[::1] cv = xv if c is None else c
        cdef Py_ssize_t i, n = xv.shape[0]
        if op < 0 or op >= JX_N_OPS:
            raise ValueError(f"jacext: no op number {op}")
        if yv.shape[0] != n or cv.shape[0] != n:
            raise ValueError("jacext: operand id arrays differ in length")
        cdef cnp.ndarray out = np.empty(n, dtype=np.int64)
        cdef int64_t[::1] o = out
        cdef int64_t lim = self.n
        for i in range(n):
            if xv[i] < 0 or xv[i] >= lim or yv[i] < 0 or yv[i] >= lim or cv[i] < 0 or cv[i] >= lim:
                raise IndexError("jacext: node id out of range (an array from another trace?)")
            o[i] = self._apply(op, xv[i], yv[i], cv[i])
        return out

    def const_mask(self, ids):
        """Boolean array: which ids are constants."""
        cdef const int64_t[::1] v = np.ascontiguousarray(ids, dtype=np.int64).ravel()
        cdef cnp.ndarray out = np.empty(v.shape[0], dtype=np.bool_)
        cdef cnp.npy_bool[::1] o = out
        cdef Py_ssize_t i
        for i in range(v.shape[0]):
            if v[i] < 0 or v[i] >= self.n:
                raise IndexError("jacext: node id out of range")
            o[i] = self.op[v[i]] == C_CONST
        return out.reshape(np.shape(ids))

    def const_values(self, ids):
        """Values of constant ids (nan where an id is not a constant)."""
        cdef const int64_t[::1] v = np.ascontiguousarray(ids, dtype=np.int64).ravel()
        cdef cnp.ndarray out = np.empty(v.shape[0], dtype=np.float64)
        cdef double[::1] o = out
        cdef Py_ssize_t i
        for i in range(v.shape[0]):
            if v[i] < 0 or v[i] >= self.n:
                raise IndexError("jacext: node id out of range")
            o[i] = self.imm[v[i]] if self.op[v[i]] == C_CONST else float("nan")
        return out.reshape(np.shape(ids))

    def lower(self, input_ids, output_ids):
        """The tape arrays for these inputs and outputs (the compile passes).

        Dead-code elimination (only what reaches an output), constant slots for
        the constants that cannot be immediates, then work slots by liveness: a
        temporary's slot is freed after its last use and reused, and an
        instruction may write over an operand that dies there.
        """
        cdef const int64_t[::1] ins = np.ascontiguousarray(input_ids, dtype=np.int64)
        cdef const int64_t[::1] outs = np.ascontiguousarray(output_ids, dtype=np.int64)
        cdef int64_t n = self.n, i, j, k, nd, o
        cdef Py_ssize_t n_in = ins.shape[0], n_out = outs.shape[0]
        cdef cnp.ndarray live_arr = np.zeros(n, dtype=np.uint8)
        cdef unsigned char[::1] live = live_arr
        cdef cnp.ndarray slot_arr = np.full(n, -1, dtype=np.int64)
        cdef int64_t[::1] slot = slot_arr
        cdef cnp.ndarray last_arr = np.full(n, -1, dtype=np.int64)
        cdef int64_t[::1] last = last_arr
        cdef int32_t opw, base
        cdef int64_t n_instr = 0, n_const = 0

        for i in range(n_out):
            if outs[i] < 0 or outs[i] >= n:
                raise IndexError("jacext: output id out of range")
            live[outs[i]] = 1
        # 1. dead-code elimination: ids are topological, so one backward pass
        for i in range(n - 1, -1, -1):
            if not live[i]:
                continue
            opw = self.op[i]
            if opw == C_INPUT or opw == C_CONST:
                continue
            n_instr += 1
            if self.a[i] >= 0:
                live[self.a[i]] = 1
            if self.b[i] >= 0:
                live[self.b[i]] = 1
            if self.s[i] >= 0:
                live[self.s[i]] = 1
        # 2. inputs get slots 0..n_in-1, live constants the next ones
        for i in range(n_in):
            if ins[i] < 0 or ins[i] >= n or self.op[ins[i]] != C_INPUT:
                raise ValueError("jacext: an input id is not an input node")
            slot[ins[i]] = i
        const_vals = []
        for i in range(n):
            if live[i] and self.op[i] == C_CONST:
                slot[i] = n_in + n_const
                n_const += 1
                const_vals.append(self.imm[i])
        # 3. instructions in id order; last use of every operand
        cdef cnp.ndarray order_arr = np.empty(n_instr, dtype=np.int64)
        cdef int64_t[::1] order = order_arr
        j = 0
        for i in range(n):
            if live[i] and self.op[i] != C_INPUT and self.op[i] != C_CONST:
                order[j] = i
                if self.a[i] >= 0:
                    last[self.a[i]] = j
                if self.b[i] >= 0:
                    last[self.b[i]] = j
                if self.s[i] >= 0:
                    last[self.s[i]] = j
                j += 1
        for i in range(n_out):
            last[outs[i]] = n_instr   # outputs live to the end
        for i in range(n):
            if live[i] and self.op[i] == C_INPUT and slot[i] < 0:
                raise ValueError("jacext: the outputs depend on an input that is not an argument")
        # 4. work slots by liveness (a free stack of slots)
        cdef cnp.ndarray free_arr = np.empty(n_instr + 3, dtype=np.int64)
        cdef int64_t[::1] free_stack = free_arr
        cdef int64_t n_free = 0, next_slot = n_in + n_const
        cdef int64_t ops3[3]
        cdef cnp.ndarray t_op = np.empty(n_instr, dtype=np.int32)
        cdef cnp.ndarray t_dst = np.empty(n_instr, dtype=np.int32)
        cdef cnp.ndarray t_a = np.empty(n_instr, dtype=np.int32)
        cdef cnp.ndarray t_b = np.empty(n_instr, dtype=np.int32)
        cdef cnp.ndarray t_imm = np.empty(n_instr, dtype=np.float64)
        cdef int32_t[::1] top = t_op
        cdef int32_t[::1] tdst = t_dst
        cdef int32_t[::1] ta = t_a
        cdef int32_t[::1] tb = t_b
        cdef double[::1] timm = t_imm
        cdef int64_t sa, sb
        for j in range(n_instr):
            nd = order[j]
            opw = self.op[nd]
            base = opw & JX_OP_MASK
            ops3[0] = self.a[nd]
            ops3[1] = self.b[nd]
            ops3[2] = self.s[nd]
            sa = slot[ops3[0]] if ops3[0] >= 0 else -1
            sb = slot[ops3[1]] if ops3[1] >= 0 else -1
            if sa < 0:
                sa = sb
            if sb < 0:
                sb = sa
            top[j] = opw
            ta[j] = <int32_t>sa
            tb[j] = <int32_t>sb
            if jx_op_arity[base] == 3:
                timm[j] = <double>slot[ops3[2]]
            else:
                timm[j] = self.imm[nd]
            # take a slot, then free the temporaries that die here (once each):
            # dst never shares a slot with its own operands, so the batched
            # sweeps' lane loops see no aliasing and vectorise
            if n_free > 0:
                n_free -= 1
                slot[nd] = free_stack[n_free]
            else:
                slot[nd] = next_slot
                next_slot += 1
            tdst[j] = <int32_t>slot[nd]
            for k in range(3):
                o = ops3[k]
                if o < 0 or last[o] != j or slot[o] < n_in + n_const:
                    continue
                if (k >= 1 and o == ops3[0]) or (k == 2 and o == ops3[1]):
                    continue
                free_stack[n_free] = slot[o]
                n_free += 1
            if last[nd] < 0:   # a value nobody reads (cannot happen after DCE)
                free_stack[n_free] = slot[nd]
                n_free += 1
        if next_slot >= 2**31 - 1:
            raise MemoryError("jacext: the tape needs more than 2**31 work slots")
        cdef cnp.ndarray t_out = np.empty(n_out, dtype=np.int32)
        cdef int32_t[::1] tout = t_out
        for i in range(n_out):
            tout[i] = <int32_t>slot[outs[i]]
        return {
            "op": t_op, "dst": t_dst, "a": t_a, "b": t_b, "imm": t_imm,
            "out_slot": t_out,
            "const_value": np.array(const_vals, dtype=np.float64),
            "n_in": int(n_in), "n_slots": int(next_slot),
        }
