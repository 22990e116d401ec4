# The expression DAG's layout (jacext/_graph.pyx), shared with the compiler passes
# (jacext/passes.pyx), which read the node arrays of a finished graph directly.
from libc.stdint cimport int32_t, int64_t, uint64_t

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
    # graph-only node kinds past the op numbers: an input (a = its index), a constant
    # (imm = its value)
    int C_INPUT "JX_KIND_INPUT"
    int C_CONST "JX_KIND_CONST"
    # ... and row b of block a (Graph.block: a constant matrix times a vector of nodes)
    int C_BLOCK "JX_KIND_BLOCK"

cdef struct Key:
    int32_t op
    int32_t a
    int32_t b
    int32_t s
    double imm
    uint64_t h


cdef class Graph:
    # node i: op word (a tape op with its immediate flags, C_INPUT or C_CONST), operands
    # a, b, s (SELECT's condition; -1 where unused), immediate or constant value imm
    cdef int32_t *op
    cdef int32_t *a
    cdef int32_t *b
    cdef int32_t *s
    cdef double *imm
    cdef int64_t n, cap
    cdef int64_t *table
    cdef int64_t table_cap, n_interned
    cdef public int64_t n_inputs
    # block k: (weights index, int64 operand node ids); weights: C-contiguous float64 (m, n)
    cdef readonly list blocks
    cdef readonly list weights
    cdef readonly bint numpy_power

    cdef int _grow(self, int64_t cap) except -1
    cdef int _reserve(self, int64_t extra) except -1
    cdef int _rehash(self, int64_t min_entries) except -1
    cdef int64_t _append(self, int32_t op, int32_t a, int32_t b, int32_t s,
                         double imm) except -1
    cdef int64_t _intern_key(self, Key *k) except -1
    cdef int64_t _intern(self, int32_t op, int32_t a, int32_t b, int32_t s,
                         double imm) except -1
    cdef int64_t _const(self, double value) except -1
    cdef bint _is_const(self, int64_t i) noexcept
    cdef int64_t _key(self, Key *k, int32_t op, int32_t a, int32_t b, int32_t s,
                      double imm) noexcept
    cdef int64_t _canon(self, int op, int64_t x, int64_t y, int64_t c, Key *k) except -2
    cdef int64_t _apply(self, int op, int64_t x, int64_t y, int64_t c) except -1
    cdef bint _is_zero(self, int64_t i) noexcept
    cdef int _run(self, int op, int mode, const int64_t *x, Py_ssize_t sx,
                  const int64_t *y, Py_ssize_t sy, const int64_t *c, Py_ssize_t sc,
                  int64_t *out, Py_ssize_t so, Py_ssize_t n) except -1
    cdef int _check_ids(self, const int64_t[::1] v, int64_t lo) except -1
    cdef int _room(self, Py_ssize_t n) except -1
    cpdef int64_t apply1(self, int op, int64_t x, int64_t y=*, int64_t c=*) except -1
    cpdef int64_t const(self, double value) except -1


cdef union _Bits:
    double d
    uint64_t u


cdef inline uint64_t dbits(double x) noexcept nogil:
    """A double's bits (constants and immediates are the same only bit for bit: 0.0 and
    -0.0 are two)."""
    cdef _Bits b
    b.d = x
    return b.u
