# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The expression DAG: scalar nodes stored as a struct of arrays.

Nodes are hash-consed on insert (common subexpressions become one node),
constant operands are folded or turned into immediates, and exact identities
are simplified.  A rewrite keeps every value NumPy would give, but for the sign of a
zero: ``x * 1 -> x`` yes, ``x * 0 -> 0`` no (nan * 0 must stay nan, inf * 0 too),
``x + 0.0 -> x``, ``x - 0.0 -> x`` and ``0.0 - x -> -x`` yes (for either sign of the
zero: the results differ from NumPy's only in the sign of a zero result; the README's
"Values" says so).  Every insert is a bulk operation over arrays of node ids, so a
NumPy call over 10**6 elements costs one call here.

Node ids are topologically ordered: a node's operands always have smaller ids.

The compiler passes over a finished graph (dead code, slots, the tape) are in
``jacext/passes.pyx``, which reads the node arrays through ``_graph.pxd``.  At the end,
ops.def's table as C compiled it (``op_rows`` and the rest), which ``jacext/ops.py``
derives its Python rules from.

Memory layout (what makes a trace of 10**6 elements fast): a node is 24 bytes
(int32 op, a, b, s and a double immediate); the hash table holds int64 entries
of a node id plus 23 bits of its hash, so a probe reads the node arrays only on
a likely match; bulk inserts compute a block of keys first and prefetch their
table slots, which hides the cache miss of each random probe.
"""
import numpy as np
cimport numpy as cnp
from libc.math cimport fabs, frexp, isfinite, signbit
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memset

cnp.import_array()

# ops.def's table as C compiled it, for jacext/ops.py (its rows as text) and the tests
cdef extern from "vm.h" nogil:
    ctypedef struct jx_op_text_row:
        const char *value
        const char *d0
        const char *d1
    ctypedef struct jx_helper_text_row:
        const char *name
        const char *p
        const char *q
        const char *expr
    ctypedef struct jx_constant_row:
        const char *name
        double value
    const int jx_op_fixed[]
    const jx_op_text_row jx_op_text[]
    const jx_helper_text_row jx_helper_text[]
    const int jx_n_helpers
    const jx_constant_row jx_op_constants[]
    const int jx_n_op_constants
    void jx_op_partials(int op, double a, double b, double s, double *d0, double *d1)


cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define JX_PREFETCH(p) __builtin_prefetch((const void *)(p))
    #else
    #define JX_PREFETCH(p) ((void)0)
    #endif
    """
    void JX_PREFETCH(const void *p) nogil

# Graph-only node kinds, numbered past the tape ops (C_INPUT, C_CONST in _graph.pxd).
KIND_INPUT = C_INPUT
KIND_CONST = C_CONST
KIND_BLOCK = C_BLOCK

#: the most nodes a graph holds (ids are int32 inside, as on the tape)
MAX_NODES = 2**31 - 2
cdef int64_t C_MAX_NODES = 2**31 - 2

# A hash-table entry: node id in the low 40 bits, hash bits 40..62 above it
# (the sign bit stays 0, so no entry is the empty marker -1).
cdef int64_t _ID_MASK = (<int64_t>1 << 40) - 1
cdef uint64_t _TAG_MASK = <uint64_t>0x7FFFFF0000000000
# Keys computed and prefetched ahead of their inserts in bulk apply.
cdef enum:
    BLOCK = 16
# Graph._run's modes
cdef enum:
    RUN_PLAIN = 0
    RUN_SKIP_MISSING = 1
    RUN_ZERO_KILLS = 2


cdef inline uint64_t _mix(uint64_t h, uint64_t v) noexcept nogil:
    # splitmix64 step over the running hash
    h ^= v + <uint64_t>0x9E3779B97F4A7C15 + (h << 6) + (h >> 2)
    h ^= h >> 30
    h *= <uint64_t>0xBF58476D1CE4E5B9
    h ^= h >> 27
    h *= <uint64_t>0x94D049BB133111EB
    h ^= h >> 31
    return h


cdef inline uint64_t _hash(int32_t op, int32_t a, int32_t b, int32_t s,
                           double imm) noexcept nogil:
    cdef uint64_t h = <uint64_t>(<uint32_t>op) | (<uint64_t>(<uint32_t>a) << 32)
    h = _mix(h, <uint64_t>(<uint32_t>b) | (<uint64_t>(<uint32_t>s) << 32))
    h = _mix(h, dbits(imm))
    return h

cdef inline bint _exact_scale(double u, double v) noexcept:
    """Whether (a * u) * v is a * (u * v) bit for bit for every double a: u is a power of
    two of magnitude at least 1 (a * u is exact, subnormal a included, unless it
    overflows), |v| >= 1 (an overflow of a * u is then one of a * (u * v) too, with the same
    sign) and u * v is finite (so exact: a power of two times a double).  One rounding on
    each side, of the same real number; nan, infinities and signed zeros alike."""
    cdef int e
    if not (fabs(u) >= 1.0 and fabs(v) >= 1.0 and isfinite(u * v)):
        return False
    return fabs(frexp(u, &e)) == 0.5


cdef class Graph:
    """Struct-of-arrays DAG with a hash table for common subexpressions.

    ``numpy_power``: ``x ** c`` for a constant c of 2, 0.5 or -1 becomes ``square``,
    ``sqrt`` or ``reciprocal``, as NumPy's own power loop computes those exponents
    (traced code); without it every power stays C's ``pow`` (the Jacobian-tape builder,
    whose partials must equal the C sweeps' ``pow`` bit for bit).
    """

    def __cinit__(self, bint numpy_power=True):
        self.numpy_power = numpy_power
        self.n = 0
        self.cap = 0
        self.table_cap = 0
        self.n_interned = 0
        self.n_inputs = 0
        self.blocks = []
        self.weights = []
        self.op = NULL
        self.a = NULL
        self.b = NULL
        self.s = NULL
        self.imm = NULL
        self.table = NULL
        self._grow(1024)
        self._rehash(1024)

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
        if cap > C_MAX_NODES:
            cap = C_MAX_NODES
        if cap <= self.n:
            raise MemoryError(f"jacext: the expression graph exceeds {MAX_NODES} nodes")
        p = realloc(self.op, cap * sizeof(int32_t))
        if p == NULL:
            raise MemoryError("jacext: out of memory growing the expression graph")
        self.op = <int32_t *>p
        p = realloc(self.a, cap * sizeof(int32_t))
        if p == NULL:
            raise MemoryError("jacext: out of memory growing the expression graph")
        self.a = <int32_t *>p
        p = realloc(self.b, cap * sizeof(int32_t))
        if p == NULL:
            raise MemoryError("jacext: out of memory growing the expression graph")
        self.b = <int32_t *>p
        p = realloc(self.s, cap * sizeof(int32_t))
        if p == NULL:
            raise MemoryError("jacext: out of memory growing the expression graph")
        self.s = <int32_t *>p
        p = realloc(self.imm, cap * sizeof(double))
        if p == NULL:
            raise MemoryError("jacext: out of memory growing the expression graph")
        self.imm = <double *>p
        self.cap = cap
        return 0

    cdef int _reserve(self, int64_t extra) except -1:
        """Room for ``extra`` more nodes without growing in the middle of a loop."""
        cdef int64_t want = self.n + extra, cap = self.cap
        if want <= cap:
            return 0
        while cap < want:
            cap *= 2
        return self._grow(cap)

    cdef int _rehash(self, int64_t min_entries) except -1:
        """A table for at least ``min_entries`` nodes at load <= 0.7 (power of two)."""
        cdef int64_t new_cap = self.table_cap if self.table_cap > 0 else 1024
        cdef int64_t i, j, mask, ahead
        cdef uint64_t h
        cdef int64_t *t
        while 10 * min_entries > 7 * new_cap:
            new_cap *= 2
        t = <int64_t *>malloc(new_cap * sizeof(int64_t))
        if t == NULL:
            raise MemoryError("jacext: out of memory growing the expression graph")
        memset(t, 0xff, new_cap * sizeof(int64_t))  # all -1: empty
        mask = new_cap - 1
        for i in range(self.n):
            if self.op[i] == C_INPUT or self.op[i] == C_BLOCK:
                continue
            ahead = i + 8
            if ahead < self.n:
                JX_PREFETCH(&t[_hash(self.op[ahead], self.a[ahead], self.b[ahead],
                                     self.s[ahead], self.imm[ahead]) & <uint64_t>mask])
            h = _hash(self.op[i], self.a[i], self.b[i], self.s[i], self.imm[i])
            j = <int64_t>(h & <uint64_t>mask)
            while t[j] != -1:
                j = (j + 1) & mask
            t[j] = <int64_t>(h & _TAG_MASK) | i
        free(self.table)
        self.table = t
        self.table_cap = new_cap
        return 0

    cdef int64_t _append(self, int32_t op, int32_t a, int32_t b, int32_t s,
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

    cdef int64_t _intern_key(self, Key *k) except -1:
        """The node of this key: the existing one, or a new one appended."""
        cdef int64_t mask, j, e, node, tag
        cdef uint64_t ib
        if 10 * (self.n_interned + 1) > 7 * self.table_cap:
            self._rehash(self.n_interned + 1)
        mask = self.table_cap - 1
        tag = <int64_t>(k.h & _TAG_MASK)
        ib = dbits(k.imm)
        j = <int64_t>(k.h & <uint64_t>mask)
        while True:
            e = self.table[j]
            if e == -1:
                break
            if (e & ~_ID_MASK) == tag:
                node = e & _ID_MASK
                if (self.op[node] == k.op and self.a[node] == k.a and self.b[node] == k.b
                        and self.s[node] == k.s and dbits(self.imm[node]) == ib):
                    return node
            j = (j + 1) & mask
        node = self._append(k.op, k.a, k.b, k.s, k.imm)
        self.table[j] = tag | node
        self.n_interned += 1
        return node

    cdef int64_t _intern(self, int32_t op, int32_t a, int32_t b, int32_t s,
                         double imm) except -1:
        cdef Key k
        k.op = op
        k.a = a
        k.b = b
        k.s = s
        k.imm = imm
        k.h = _hash(op, a, b, s, imm)
        return self._intern_key(&k)

    cdef inline int64_t _const(self, double value) except -1:
        return self._intern(C_CONST, -1, -1, -1, value)

    cdef inline bint _is_const(self, int64_t i) noexcept:
        return self.op[i] == C_CONST

    cdef inline int64_t _key(self, Key *k, int32_t op, int32_t a, int32_t b, int32_t s,
                             double imm) noexcept:
        k.op = op
        k.a = a
        k.b = b
        k.s = s
        k.imm = imm
        return -1

    cdef int64_t _canon(self, int op, int64_t x, int64_t y, int64_t c, Key *k) except -2:
        """Simplify op(x, y) (or SELECT(c, x, y)).

        Returns the id of an existing node (a fold or an identity), or -1 with
        ``k`` set to the key of the node to intern.  Constants that folding
        makes are interned here; nothing else is inserted.
        """
        cdef int arity = jx_op_arity[op]
        cdef bint cx, cy, nx, ny
        cdef double v
        cdef int64_t t, u, w
        if arity == 3:
            if self._is_const(c):
                return x if self.imm[c] != 0.0 else y
            if x == y:
                return x
            return self._key(k, op, <int32_t>x, <int32_t>y, <int32_t>c, 0.0)
        if arity == 1:
            if self._is_const(x):
                return self._const(jx_op_value(op, self.imm[x], 0.0, 0.0))
            if op == JX_OP_NEG and self.op[x] == JX_OP_NEG:
                return self.a[x]
            return self._key(k, op, <int32_t>x, -1, -1, 0.0)
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
                    return self._canon(JX_OP_NEG, x, -1, -1, k)
                if self.op[x] == JX_OP_NEG:
                    # (-a) * v -> a * (-v): exact (rounding is symmetric in the sign)
                    return self._canon(JX_OP_MUL, self.a[x], self._const(-v), -1, k)
                if (self.op[x] == (JX_OP_MUL | JX_B_IMM) and _exact_scale(self.imm[x], v)):
                    # (a * u) * v -> a * (u * v): the derivative of c * x**2 is c * (2 * x)
                    return self._canon(JX_OP_MUL, self.a[x], self._const(self.imm[x] * v),
                                       -1, k)
            elif op == JX_OP_DIV:
                if v == 1.0:
                    return x
            elif op == JX_OP_ADD or op == JX_OP_SUB:
                # x + 0.0 and x - 0.0 are x but for the sign of a zero x (the module's
                # docstring); x + (-0.0) and x - 0.0 are x bit for bit
                if v == 0.0:
                    return x
            elif op == JX_OP_POW:
                if v == 1.0:    # pow(x, 1) is x, nan and signed zeros included
                    return x
                if v == 0.0:    # pow(x, 0) is 1 for every x, nan included (so is NumPy's)
                    return self._const(1.0)
                # NumPy's own power loop computes these exponents this way
                if self.numpy_power and v == 2.0:
                    return self._canon(JX_OP_SQUARE, x, -1, -1, k)
                if self.numpy_power and v == 0.5:
                    return self._canon(JX_OP_SQRT, x, -1, -1, k)
                if self.numpy_power and v == -1.0:
                    return self._canon(JX_OP_RECIPROCAL, x, -1, -1, k)
            return self._key(k, op | JX_B_IMM, <int32_t>x, -1, -1, v)
        if cx:
            v = self.imm[x]
            if op == JX_OP_DIV and v == 1.0:
                return self._canon(JX_OP_RECIPROCAL, y, -1, -1, k)
            if op == JX_OP_SUB and v == 0.0:
                # 0.0 - y is -y but for the sign of a zero y (-0.0 - y is -y bit for bit);
                # a folded cos(q) * 0.0 - sin(q) becomes -sin(q), whose sign the products
                # then carry into sums (arm_cs's Jacobian tape: 1,098 -> 956 instructions)
                return self._canon(JX_OP_NEG, y, -1, -1, k)
            return self._key(k, op | JX_A_IMM, -1, <int32_t>y, -1, v)
        # signs move out of products and into sums, where they cost nothing:
        # (-u) * v == -(u * v) and u + (-v) == u - v exactly, signed zeros included
        # (not (-u) - v == -(u + v): -0 - -0 is +0, -(0 + -0) is -0)
        if op == JX_OP_MUL or op == JX_OP_DIV:
            nx = self.op[x] == JX_OP_NEG
            ny = self.op[y] == JX_OP_NEG
            if nx or ny:
                u = self.a[x] if nx else x
                w = self.a[y] if ny else y
                if nx and ny:
                    return self._canon(op, u, w, -1, k)
                t = self._apply(op, u, w, -1)
                return self._canon(JX_OP_NEG, t, -1, -1, k)
        elif op == JX_OP_ADD:
            if self.op[y] == JX_OP_NEG:
                return self._canon(JX_OP_SUB, x, self.a[y], -1, k)
            if self.op[x] == JX_OP_NEG:
                return self._canon(JX_OP_SUB, y, self.a[x], -1, k)
        elif op == JX_OP_SUB:
            if self.op[y] == JX_OP_NEG:
                return self._canon(JX_OP_ADD, x, self.a[y], -1, k)
        if op == JX_OP_MUL and x == y:
            return self._canon(JX_OP_SQUARE, x, -1, -1, k)
        return self._key(k, op, <int32_t>x, <int32_t>y, -1, 0.0)

    cdef int64_t _apply(self, int op, int64_t x, int64_t y, int64_t c) except -1:
        """One scalar node for op(x, y) (or SELECT(c, x, y)), simplified."""
        cdef Key k
        cdef int64_t r = self._canon(op, x, y, c, &k)
        if r >= 0:
            return r
        k.h = _hash(k.op, k.a, k.b, k.s, k.imm)
        return self._intern_key(&k)

    # ---- bulk interface used by the tracer ----

    def inputs(self, int64_t count):
        """``count`` new input nodes; returns their ids."""
        cdef int64_t i, first = self.n
        self._reserve(count)
        for i in range(count):
            self._append(C_INPUT, <int32_t>self.n_inputs, -1, -1, 0.0)
            self.n_inputs += 1
        return np.arange(first, first + count, dtype=np.int64)

    def weight(self, W):
        """Registers a constant matrix for blocks; returns its index (``block``'s first
        argument).  The graph keeps a C-contiguous float64 copy."""
        W = np.array(W, dtype=np.float64, order="C", copy=True)
        if W.ndim != 2 or W.shape[0] < 1 or W.shape[1] < 1:
            raise ValueError("jacext: a block's matrix must be 2-d and not empty")
        W.setflags(write=False)
        self.weights.append(W)
        return len(self.weights) - 1

    def block(self, Py_ssize_t w, ids):
        """The m node ids of ``weights[w] @ ids`` (m x n times n node ids): one block of
        KIND_BLOCK nodes (node j: a = the block's number, b = j), which the lowering turns
        into one block instruction over contiguous slots (``passes.lower``, vm.h).  The
        block's operands are kept with it, not in the nodes' a, b."""
        cdef cnp.ndarray v = np.array(ids, dtype=np.int64, order="C", copy=True).ravel()
        cdef int64_t i, first = self.n
        cdef Py_ssize_t m, k = len(self.blocks)
        if not 0 <= w < len(self.weights):
            raise ValueError("jacext: no such block matrix")
        m, n = self.weights[w].shape
        if v.shape[0] != n:
            raise ValueError(f"jacext: a {m}x{n} block takes {n} operands, not {v.shape[0]}")
        self._check_ids(v, 0)
        if k >= 2**31 - 1 or m >= 2**31 - 1:
            raise ValueError("jacext: too many blocks, or too many rows in one")
        v.setflags(write=False)
        self._reserve(m)
        self.blocks.append((w, v, (m, n)))
        for i in range(m):
            self._append(C_BLOCK, <int32_t>k, <int32_t>i, -1, 0.0)
        return np.arange(first, first + m, dtype=np.int64)

    def product(self, a, b):
        """The m x p node ids of ``a @ b`` for m x n and n x p arrays of node ids: one
        product block (``blocks`` entry ``(-1, operands, (m, n, p))``, its operands a's
        ids then b's, row-major), which the lowering turns into one block instruction whose
        partials are its operands' values (vm.h).  Row j of the result is node j of the
        block, as for ``block``."""
        cdef cnp.ndarray ia = np.asarray(a, dtype=np.int64)
        cdef cnp.ndarray ib = np.asarray(b, dtype=np.int64)
        cdef int64_t i, first = self.n
        cdef Py_ssize_t m, n, p, k = len(self.blocks)
        if ia.ndim != 2 or ib.ndim != 2 or ia.shape[1] != ib.shape[0] or ia.size == 0 \
                or ib.size == 0:
            raise ValueError("jacext: a product block takes an m x n and an n x p array of "
                             "node ids")
        m, n, p = ia.shape[0], ia.shape[1], ib.shape[1]
        cdef cnp.ndarray v = np.concatenate([ia.ravel(), ib.ravel()])
        self._check_ids(v, 0)
        if k >= 2**31 - 1 or m * p >= 2**31 - 1 or v.shape[0] >= 2**31 - 1:
            raise ValueError("jacext: too many blocks, or a product too large")
        v.setflags(write=False)
        self._reserve(m * p)
        self.blocks.append((-1, v, (m, n, p)))
        for i in range(m * p):
            self._append(C_BLOCK, <int32_t>k, <int32_t>i, -1, 0.0)
        return np.arange(first, first + m * p, dtype=np.int64).reshape(m, p)

    def consts(self, values):
        """Node ids of constants (same value bits, same node)."""
        cdef const double[::1] v = np.ascontiguousarray(values, dtype=np.float64).ravel()
        cdef cnp.ndarray out = np.empty(v.shape[0], dtype=np.int64)
        cdef int64_t[::1] o = out
        cdef Py_ssize_t i
        for i in range(v.shape[0]):
            o[i] = self._const(v[i])
        return out

    cdef inline bint _is_zero(self, int64_t i) noexcept:
        return self.op[i] == C_CONST and self.imm[i] == 0.0

    cdef int _run(self, int op, int mode, const int64_t *x, Py_ssize_t sx,
                  const int64_t *y, Py_ssize_t sy, const int64_t *c, Py_ssize_t sc,
                  int64_t *out, Py_ssize_t so, Py_ssize_t n) except -1:
        """out[i*so] = op(x[i*sx], y[i*sy]) (SELECT: c[i*sc] the condition), n times.

        Block by block: simplify and hash BLOCK keys, prefetching their table
        slots, then intern them (the probes then mostly hit the cache).  All
        operands of a block are read before any of its results is written, so
        ``out`` may overlap the operands as a tree level does (out[i] over
        x[2i], y[2i + 1]).  Modes: RUN_PLAIN; RUN_SKIP_MISSING, where an
        operand -1 (a structural zero) makes the other one the result; and
        RUN_ZERO_KILLS, where an operand -1 or a constant zero makes -1 (the
        products of matmul with a constant matrix's zero entries).  The caller
        checks the ids and reserves room for n nodes.
        """
        cdef Key keys[BLOCK]
        cdef int64_t res[BLOCK]
        cdef bint need[BLOCK]
        cdef Py_ssize_t base = 0, t, m, i
        cdef int64_t xi, yi, ci, mask
        while base < n:
            m = n - base if n - base < BLOCK else BLOCK
            mask = self.table_cap - 1
            for t in range(m):
                i = base + t
                xi = x[i * sx]
                yi = y[i * sy]
                ci = c[i * sc]
                need[t] = False
                if mode == RUN_SKIP_MISSING:
                    if xi < 0:
                        res[t] = yi
                        continue
                    if yi < 0:
                        res[t] = xi
                        continue
                elif mode == RUN_ZERO_KILLS:
                    if xi < 0 or yi < 0 or self._is_zero(xi) or self._is_zero(yi):
                        res[t] = -1
                        continue
                res[t] = self._canon(op, xi, yi, ci, &keys[t])
                if res[t] < 0:
                    need[t] = True
                    keys[t].h = _hash(keys[t].op, keys[t].a, keys[t].b, keys[t].s,
                                      keys[t].imm)
                    JX_PREFETCH(&self.table[keys[t].h & <uint64_t>mask])
            for t in range(m):
                out[(base + t) * so] = self._intern_key(&keys[t]) if need[t] else res[t]
            base += m
        return 0

    cdef int _check_ids(self, const int64_t[::1] v, int64_t lo) except -1:
        cdef Py_ssize_t i
        cdef int64_t lim = self.n
        for i in range(v.shape[0]):
            if v[i] < lo or v[i] >= lim:
                raise IndexError("jacext: node id out of range (an array from another trace?)")
        return 0

    cdef int _room(self, Py_ssize_t n) except -1:
        if self.n + n > C_MAX_NODES:
            raise MemoryError(f"jacext: the expression graph would exceed {MAX_NODES} nodes")
        return self._reserve(n)

    def apply(self, int op, x, y=None, c=None):
        """Elementwise op over 1-D int64 id arrays of one length (or 1, broadcast);
        returns the result ids.

        Unary ops take ``x``; binary ops ``x, y``; SELECT takes ``x, y`` (the
        branches) and ``c`` (the condition).
        """
        if op < 0 or op >= JX_N_OPS:
            raise ValueError(f"jacext: no op number {op}")
        cdef int arity = jx_op_arity[op]
        if (y is None) != (arity < 2) or (c is None) != (arity < 3):
            raise ValueError(f"jacext: op {jx_op_names[op].decode()} takes {arity} "
                             f"operand array(s)")
        cdef const int64_t[::1] xv = x
        cdef const int64_t[::1] yv = xv if y is None else y
        cdef const int64_t[::1] cv = xv if c is None else c
        # an operand of length 1 is broadcast (stride 0): x * 2.0 allocates nothing
        cdef Py_ssize_t n = 1, k
        for k in (xv.shape[0], yv.shape[0], cv.shape[0]):
            if k != 1:
                if n != 1 and k != n:
                    raise ValueError("jacext: operand id arrays differ in length")
                n = k
        cdef cnp.ndarray out = np.empty(n, dtype=np.int64)
        if n == 0:
            return out
        self._check_ids(xv, 0)
        if y is not None:
            self._check_ids(yv, 0)
        if c is not None:
            self._check_ids(cv, 0)
        self._room(n)
        self._run(op, RUN_PLAIN, &xv[0], xv.shape[0] != 1, &yv[0], yv.shape[0] != 1,
                  &cv[0], cv.shape[0] != 1, <int64_t *>cnp.PyArray_DATA(out), 1, n)
        return out

    cpdef int64_t apply1(self, int op, int64_t x, int64_t y=-1, int64_t c=-1) except -1:
        """One node op(x, y) (SELECT: the branches x, y and the condition c), simplified
        as ``apply`` does; the scalar form for passes that build node by node."""
        if op < 0 or op >= JX_N_OPS:
            raise ValueError(f"jacext: no op number {op}")
        cdef int arity = jx_op_arity[op]
        if x < 0 or x >= self.n or (arity >= 2 and (y < 0 or y >= self.n)) or (
                arity == 3 and (c < 0 or c >= self.n)):
            raise IndexError("jacext: node id out of range")
        self._room(1)
        return self._apply(op, x, y if arity >= 2 else -1, c if arity == 3 else -1)

    cpdef int64_t const(self, double value) except -1:
        """The node id of one constant."""
        return self._const(value)

    def mul_nonzero(self, x, y):
        """Products x*y of equal-length 1-D id arrays, -1 where a factor is -1 or a
        constant zero (structural zeros of matmul/dot/einsum; no node made)."""
        cdef const int64_t[::1] xv = x
        cdef const int64_t[::1] yv = y
        cdef Py_ssize_t n = xv.shape[0]
        if yv.shape[0] != n:
            raise ValueError("jacext: operand id arrays differ in length")
        cdef cnp.ndarray out = np.empty(n, dtype=np.int64)
        if n == 0:
            return out
        self._check_ids(xv, -1)
        self._check_ids(yv, -1)
        self._room(n)
        self._run(JX_OP_MUL, RUN_ZERO_KILLS, &xv[0], 1, &yv[0], 1, &xv[0], 1,
                  <int64_t *>cnp.PyArray_DATA(out), 1, n)
        return out

    def reduce(self, int op, ids, bint sparse=False):
        """Balanced-tree reduction of each row of a 2-D id array: (rows, k) -> (rows,).

        Level by level, pairs (0, 1), (2, 3), ... with an odd last element
        carried up, so the dependency chain is ceil(log2 k) long.  ``sparse``:
        -1 marks a structural zero, skipped; a row of nothing but -1 sums to
        the constant 0.  ``k`` must be at least 1.
        """
        if op < 0 or op >= JX_N_OPS or jx_op_arity[op] != 2:
            raise ValueError(f"jacext: no binary op number {op}")
        cdef cnp.ndarray buf = np.array(ids, dtype=np.int64, order="C", copy=True)
        if buf.ndim != 2 or buf.shape[1] < 1:
            raise ValueError("jacext: reduce takes a 2-D id array with at least one column")
        cdef Py_ssize_t rows = buf.shape[0], k = buf.shape[1], r, kk, half
        cdef int64_t *base = <int64_t *>cnp.PyArray_DATA(buf)
        cdef int64_t *row
        cdef int64_t zero = -1
        self._check_ids(buf.reshape(-1), -1 if sparse else 0)
        self._room(rows * (k - 1) + 1)
        for r in range(rows):
            row = base + r * k
            kk = k
            while kk > 1:
                half = kk // 2
                self._run(op, RUN_SKIP_MISSING if sparse else RUN_PLAIN,
                          row, 2, row + 1, 2, row, 2, row, 1, half)
                if kk % 2:
                    row[half] = row[kk - 1]
                kk = half + kk % 2
            if row[0] < 0:
                if zero < 0:
                    zero = self._const(0.0)
                row[0] = zero
        return buf[:, 0].copy()

    def scan(self, int op, ids):
        """Running op along each row of a 2-D id array (cumsum, cumprod): sequential,
        as NumPy's own, so the rounding is the same."""
        if op < 0 or op >= JX_N_OPS or jx_op_arity[op] != 2:
            raise ValueError(f"jacext: no binary op number {op}")
        cdef cnp.ndarray buf = np.array(ids, dtype=np.int64, order="C", copy=True)
        if buf.ndim != 2:
            raise ValueError("jacext: scan takes a 2-D id array")
        cdef Py_ssize_t rows = buf.shape[0], k = buf.shape[1], j
        cdef int64_t *base = <int64_t *>cnp.PyArray_DATA(buf)
        if rows == 0 or k == 0:
            return buf
        self._check_ids(buf.reshape(-1), 0)
        self._room(rows * k)
        for j in range(1, k):
            self._run(op, RUN_PLAIN, base + j - 1, k, base + j, k, base + j, k,
                      base + j, k, rows)
        return buf

    def constants(self, ids):
        """(is_const, value) of the nodes ``ids`` (1-D int64): whether each is a constant
        and its value (0.0 where it is not)."""
        cdef const int64_t[::1] v = np.ascontiguousarray(ids, dtype=np.int64)
        cdef Py_ssize_t k, n = v.shape[0]
        self._check_ids(v, 0)
        is_const = np.zeros(n, dtype=np.uint8)
        value = np.zeros(n, dtype=np.float64)
        cdef unsigned char[::1] c = is_const
        cdef double[::1] x = value
        for k in range(n):
            if self.op[v[k]] == C_CONST:
                c[k] = 1
                x[k] = self.imm[v[k]]
        return is_const.view(np.bool_), value

    def node(self, int64_t i):
        """(op word, a, b, s, imm) of node ``i``: a tape op word (op number plus
        A_IMM/B_IMM flags), KIND_INPUT (a = the input's index) or KIND_CONST
        (imm = the value); unused operands are -1."""
        if i < 0 or i >= self.n:
            raise IndexError("jacext: node id out of range")
        return (int(self.op[i]), int(self.a[i]), int(self.b[i]), int(self.s[i]),
                float(self.imm[i]))


def op_rows():
    """ops.def's rows as C compiled them: (name, arity, commutes, fixed, value, d0, d1),
    the expressions as the text of the row."""
    return [(jx_op_names[i].decode(), jx_op_arity[i], jx_op_commutes[i], jx_op_fixed[i],
             jx_op_text[i].value.decode(), jx_op_text[i].d0.decode(),
             jx_op_text[i].d1.decode()) for i in range(JX_N_OPS)]


def op_helpers():
    """ops.def's derivative helpers: (name, first parameter, second parameter, text)."""
    return [(jx_helper_text[i].name.decode(), jx_helper_text[i].p.decode(),
             jx_helper_text[i].q.decode(), jx_helper_text[i].expr.decode())
            for i in range(jx_n_helpers)]


def op_constants():
    """The named constants of ops.def's formulas, as the doubles C uses."""
    return {jx_op_constants[i].name.decode(): jx_op_constants[i].value
            for i in range(jx_n_op_constants)}


def op_value(int op, double a, double b=0.0, double s=0.0):
    """The value of op number ``op`` on scalars, computed by the C table itself."""
    if op < 0 or op >= JX_N_OPS:
        raise ValueError(f"jacext: no op number {op}")
    return jx_op_value(op, a, b, s)


def op_partials(int op, double a, double b=0.0, double s=0.0):
    """The local partials (d0, d1) of op number ``op`` on scalars, from the C table."""
    cdef double d0, d1
    if op < 0 or op >= JX_N_OPS:
        raise ValueError(f"jacext: no op number {op}")
    jx_op_partials(op, a, b, s, &d0, &d1)
    return d0, d1
