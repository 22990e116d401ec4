# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""GuardCheck: whether a point takes the branches that a tape was traced with.

A guarded tape (``jacext.guarded``) keeps, beside the Function, a small tape whose
outputs are the guarded values (the comparisons that Python branched on, the numbers
that ``float()`` and ``int()`` took) and the outcome of each at the trace point.  A
point holds the guards when every truth guard has the same truth there and every
exact guard the same value (a nan the same as a nan).

Most guards are direct: a comparison of an input with a constant or another input
(``if x[k] > 0.0``, ``if 0.0 < x[k]``, ``if x[2] <= x[0]``), or an input itself
(``float(x[k])``, ``if x[k]:``).  Those are checked straight from the point
(src_c/guards.h), C's own comparison on the same doubles as the tape's (so nan, inf,
signed zeros and ties come out as the sweep's), without a sweep: for ``if x[k] > 0.0``
on each of 10 inputs, 162 instructions against the sweep's 546 (callgrind,
bench/guards_callgrind.py).  Any other guard (``if x[0] * x[1] > 0``) takes one C value
sweep of the tape, after the direct guards have held; a batch all of whose guards are
direct is one pass over its rows, any other one batched sweep and a pass.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int32_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from jacext import plan as _plan
from jacext._function cimport Function
from jacext._tape cimport (JX_A_IMM, JX_B_IMM, JX_BLOCK, JX_OP_MASK, JX_TASK_VALUE, Tape,
                          is_point, jx_point_value, jx_work, raise_status)

cnp.import_array()

cdef extern from "ops.h":
    int JX_OP_LESS, JX_OP_LESS_EQUAL, JX_OP_GREATER, JX_OP_GREATER_EQUAL, JX_OP_EQUAL
    int JX_OP_NOT_EQUAL

cdef extern from "guards.h" nogil:
    int JX_G_LT, JX_G_NOT_LT, JX_G_LE, JX_G_NOT_LE, JX_G_GT, JX_G_NOT_GT, JX_G_GE
    int JX_G_NOT_GE, JX_G_EQ, JX_G_NE, JX_G_PAIR, JX_G_SEG_FIELDS
    ctypedef struct jx_guards:
        const int32_t *ia
        const int32_t *ib
        const double *cb
        const int32_t *seg
        int32_t n_seg
    bint jx_guards_hold(const jx_guards *g, const double *x)

cdef enum:
    STACK_GUARDS = 64


cdef inline bint _same(double y, double o, bint truth) noexcept nogil:
    if truth:
        return (y != 0.0) == (o != 0.0)
    return y == o or (y != y and o != o)


# a comparison op of the tape -> (the predicate that its true outcome asks for, the one
# its false outcome asks for), and the same with the operands swapped (c OP x is x OP' c)
cdef dict _PREDICATES = {
    JX_OP_LESS: ((JX_G_LT, JX_G_NOT_LT), (JX_G_GT, JX_G_NOT_GT)),
    JX_OP_LESS_EQUAL: ((JX_G_LE, JX_G_NOT_LE), (JX_G_GE, JX_G_NOT_GE)),
    JX_OP_GREATER: ((JX_G_GT, JX_G_NOT_GT), (JX_G_LT, JX_G_NOT_LT)),
    JX_OP_GREATER_EQUAL: ((JX_G_GE, JX_G_NOT_GE), (JX_G_LE, JX_G_NOT_LE)),
    JX_OP_EQUAL: ((JX_G_EQ, JX_G_NE), (JX_G_EQ, JX_G_NE)),
    JX_OP_NOT_EQUAL: ((JX_G_NE, JX_G_EQ), (JX_G_NE, JX_G_EQ)),
}


cdef object _operand(int32_t slot, bint imm, double value, int32_t n_in, const_value):
    """(input index or -1, constant) of an instruction's operand, or None where it is a
    temporary (the guard is then not direct)."""
    if imm:
        return (-1, value)
    if slot < n_in:
        return (slot, 0.0)
    if slot < n_in + const_value.shape[0]:
        return (-1, float(const_value[slot - n_in]))
    return None


def _direct_guards(Tape tape, truth, outcome):
    """([(kind, ia, ib, cb)] of the guards that compare an input with a constant or with
    another input, or are an input itself (src_c/guards.h), and whether one of them can
    never hold: an exact guard on a comparison whose outcome is neither 0 nor 1)."""
    cdef int32_t n_in = tape.t.n_in
    arrays = tape.arrays()
    op, imm, const_value = arrays["op"], arrays["imm"], arrays["const_value"]
    last = {}                        # slot -> the instruction that writes it last
    for i, d in enumerate(arrays["dst"].tolist()):
        last[d] = i
    out = []
    never = False
    for k, slot in enumerate(arrays["out_slot"].tolist()):
        o = float(outcome[k])
        if slot < n_in:              # the input itself, x:
            if truth[k]:             # bool(x) is x != 0.0
                out.append((JX_G_NE if o != 0.0 else JX_G_EQ, slot, -1, 0.0))
            elif o == o:
                out.append((JX_G_EQ, slot, -1, o))
            else:                    # x is nan: not (x == x)
                out.append((JX_G_NE | JX_G_PAIR, slot, slot, 0.0))
            continue
        i = last.get(slot)
        if i is None:
            continue
        w = int(op[i])
        if w & JX_BLOCK or (w & JX_OP_MASK) not in _PREDICATES:
            continue
        a = _operand(arrays["a"][i], w & JX_A_IMM, imm[i], n_in, const_value)
        b = _operand(arrays["b"][i], w & JX_B_IMM, imm[i], n_in, const_value)
        if a is None or b is None or (a[0] < 0 and b[0] < 0):
            continue
        kinds = _PREDICATES[w & JX_OP_MASK][a[0] < 0]
        if a[0] < 0:
            a, b = b, a
        if truth[k]:
            kind = kinds[o == 0.0]
        elif o == 1.0 or o == 0.0:   # the sweep's value is 1.0 or 0.0: equal to o or not
            kind = kinds[o == 0.0]
        else:
            never = True
            continue
        out.append((kind | (JX_G_PAIR if b[0] >= 0 else 0), a[0], b[0], b[1]))
    return out, never


cdef class GuardCheck:
    """The guards of one tape: ``tape`` computes the guarded values (its inputs are the
    Function's), ``truth`` (bool per guard) and ``outcome`` (float64 per guard) say what
    each must be."""

    cdef readonly Tape tape
    cdef readonly cnp.ndarray truth
    cdef readonly cnp.ndarray outcome
    cdef const unsigned char *_t
    cdef const double *_o
    cdef Py_ssize_t n
    cdef jx_guards _g               # the direct guards (the module's docstring)
    cdef tuple _g_arrays            # ... whose arrays _g points into
    cdef bint _never                # an exact guard that no point holds
    cdef readonly Py_ssize_t n_direct
    """How many of the guards are checked straight from the point, without the tape."""

    def __init__(self, Tape tape, truth, outcome):
        self.tape = tape
        self.truth = np.ascontiguousarray(truth, dtype=np.uint8)
        self.outcome = np.ascontiguousarray(outcome, dtype=np.float64)
        self.n = self.outcome.shape[0]
        if self.truth.shape[0] != self.n or tape.t.n_out != self.n:
            raise ValueError("jacext: a guard check needs one truth flag and one outcome "
                             "per output of its tape")
        self.truth.flags.writeable = False
        self.outcome.flags.writeable = False
        self._t = <const unsigned char *>cnp.PyArray_DATA(self.truth)
        self._o = <const double *>cnp.PyArray_DATA(self.outcome)
        direct, self._never = _direct_guards(tape, self.truth, self.outcome)
        direct.sort(key=lambda g: g[0])          # segments of one predicate each
        seg = []                                 # [kind, first, end]
        for j, g in enumerate(direct):
            if j and direct[j - 1][0] == g[0]:
                seg[len(seg) - 1][2] = j + 1
            else:
                seg.append([g[0], j, j + 1])
        ia = np.array([g[1] for g in direct], dtype=np.int32)
        ib = np.array([g[2] for g in direct], dtype=np.int32)
        cb = np.array([g[3] for g in direct], dtype=np.float64)
        sg = np.array(seg, dtype=np.int32).reshape(-1)
        self._g_arrays = (ia, ib, cb, sg)
        self._g.ia = <const int32_t *>cnp.PyArray_DATA(ia)
        self._g.ib = <const int32_t *>cnp.PyArray_DATA(ib)
        self._g.cb = <const double *>cnp.PyArray_DATA(cb)
        self._g.seg = <const int32_t *>cnp.PyArray_DATA(sg)
        self._g.n_seg = len(seg)
        self.n_direct = len(direct) + self._never

    def __reduce__(self):
        return (GuardCheck, (self.tape, self.truth, self.outcome))

    cpdef int holds(self, object x) except -2:
        """1 when the point x (a float64 C-contiguous array of the tape's n_in values)
        holds every guard, 0 when one fails; -1 when x is not such an array."""
        cdef cnp.ndarray a
        if not cnp.PyArray_CheckExact(x):
            return -1
        a = <cnp.ndarray>x
        if (cnp.PyArray_TYPE(a) != cnp.NPY_DOUBLE or not cnp.PyArray_IS_C_CONTIGUOUS(a)
                or cnp.PyArray_SIZE(a) != self.tape.t.n_in):
            return -1
        return self.holds_at(<const double *>cnp.PyArray_DATA(a))

    cdef int holds_at(self, const double *x) except -1:
        """1 when the point x (the tape's n_in values) holds every guard, else 0: the
        direct guards from x, then (where some are not direct) one C value sweep of the
        guard tape (its values on the stack when few) and a loop."""
        if self._never or not jx_guards_hold(&self._g, x):
            return 0
        if self.n_direct == self.n:
            return 1
        return self._sweep_holds(x)

    cdef int _sweep_holds(self, const double *x) except -1:
        """holds_at by the guard tape's value sweep, every guard compared."""
        cdef double stack[STACK_GUARDS]
        cdef double *y = stack
        cdef jx_work *w
        cdef int st
        cdef Py_ssize_t k
        cdef int ok = 1
        if self.n > STACK_GUARDS:
            y = <double *>malloc(self.n * sizeof(double))
            if y == NULL:
                raise MemoryError()
        try:
            w = self.tape.take_work(1)
        except BaseException:
            if y != stack:
                free(y)
            raise
        st = jx_point_value(&self.tape.t, w, x, y)
        self.tape.give_work(w)
        if st == 0:
            for k in range(self.n):
                if not _same(y[k], self._o[k], self._t[k]):
                    ok = 0
                    break
        if y != stack:
            free(y)
        if st:
            raise_status(st)
        return ok

    def holds_rows(self, cnp.ndarray x, threads=None):
        """A bool array: which rows of x (n_points x n_in, float64 C-contiguous) hold
        every guard."""
        cdef Py_ssize_t n_points = x.shape[0], i, k
        cdef cnp.ndarray y = np.empty((n_points, self.n), dtype=np.float64)
        cdef cnp.ndarray ok = np.empty(n_points, dtype=np.bool_)
        cdef const double *py
        cdef unsigned char *pok = <unsigned char *>cnp.PyArray_DATA(ok)
        cdef Py_ssize_t n = self.n, n_in = self.tape.t.n_in
        if (n == self.n_direct and cnp.PyArray_CheckExact(x) and cnp.PyArray_NDIM(x) == 2
                and cnp.PyArray_TYPE(x) == cnp.NPY_DOUBLE and cnp.PyArray_IS_C_CONTIGUOUS(x)
                and x.shape[1] == n_in):
            py = <const double *>cnp.PyArray_DATA(x)      # every guard direct: no sweep
            with nogil:
                for i in range(n_points):
                    pok[i] = not self._never and jx_guards_hold(&self._g, py + i * n_in)
            return ok
        if n_points:
            self.tape.run(JX_TASK_VALUE, x, y, None,
                          _plan.n_threads(threads, n_points, self.tape.t.n_instr), 0, None,
                          None, None, 0, None, None)
        py = <const double *>cnp.PyArray_DATA(y)
        with nogil:
            for i in range(n_points):
                pok[i] = 1
                for k in range(n):
                    if not _same(py[i * n + k], self._o[k], self._t[k]):
                        pok[i] = 0
                        break
        return ok


cdef class GuardedBase:
    """The single-point fast paths of ``jacext.guarded.GuardedFunction``: a point that
    holds the guards of the tape used last goes straight to that tape's Function (one C
    guard check between); everything else takes the subclass's general path."""

    cdef public tuple _mru       # (Function, GuardCheck) of the tape used last: one store
    cdef public tuple _shape1    # the argument's shape (one-argument functions), or None

    def __call__(self, *args):
        cdef tuple m = self._mru
        cdef object r
        if (len(args) == 1 and self._shape1 is not None and is_point(args[0], self._shape1)
                and (<GuardCheck>m[1]).holds_at(<const double *>cnp.PyArray_DATA(
                    <cnp.ndarray>args[0]))):
            r = (<Function>m[0])._value_at(args[0])
            return r if r is not None else m[0](args[0])
        return self._call("__call__", args, (), (), {})

    def jacobian(self, *args, argnums=0, mode="auto", out=None, threads=None, sparse=False):
        """As :meth:`jacext.Function.jacobian`, on the branch each point takes."""
        cdef tuple m = self._mru
        cdef object r
        if (len(args) == 1 and self._shape1 is not None and is_point(args[0], self._shape1)
                and (<GuardCheck>m[1]).holds_at(<const double *>cnp.PyArray_DATA(
                    <cnp.ndarray>args[0]))):
            if argnums == 0 and threads is None and not sparse:
                r = (<Function>m[0])._dense_at(args[0], mode, out)
                if r is not None:       # straight from C, as Function.jacobian's fast path
                    return r
            return m[0].jacobian(args[0], argnums=argnums, mode=mode, out=out,
                                 threads=threads, sparse=sparse)
        return self._call("jacobian", args, (), (),
                          dict(argnums=argnums, mode=mode, out=out, threads=threads,
                               sparse=sparse))


# ---- a batch split by branch: its rows gathered per tape, the results put in order ----

cdef Py_ssize_t _row_bytes(cnp.ndarray a, str name) except -1:
    if not cnp.PyArray_IS_C_CONTIGUOUS(a) or cnp.PyArray_NDIM(a) < 1:
        raise ValueError(f"jacext: {name} must be a C-contiguous array of rows")
    if a.shape[0] == 0:
        return 0
    return cnp.PyArray_NBYTES(a) // a.shape[0]


def move_rows(cnp.ndarray dst, cnp.ndarray src, cnp.ndarray idx, bint scatter):
    """dst[idx[k]] = src[k] (scatter) or dst[k] = src[idx[k]] (gather), row by row with
    memcpy: the rows of a batch split by branch (NumPy's fancy indexing goes element by
    element through its index machinery, 3-6x slower on rows of a few doubles).  dst and
    src: C-contiguous, one dtype, rows of one size; idx: intp, every entry a row of the
    indexed array (checked)."""
    cdef Py_ssize_t width = _row_bytes(dst, "dst"), k, r
    cdef Py_ssize_t n_idx = idx.shape[0], n_rows = (dst if scatter else src).shape[0]
    cdef char *pd = <char *>cnp.PyArray_DATA(dst)
    cdef const char *ps = <const char *>cnp.PyArray_DATA(src)
    cdef const cnp.npy_intp *pi
    if _row_bytes(src, "src") != width or dst.dtype != src.dtype:
        raise ValueError("jacext: move_rows needs rows of one size and dtype")
    if (cnp.PyArray_TYPE(idx) != cnp.NPY_INTP or not cnp.PyArray_IS_C_CONTIGUOUS(idx)
            or cnp.PyArray_NDIM(idx) != 1):
        raise ValueError("jacext: move_rows needs a 1-d intp index")
    if (src if scatter else dst).shape[0] != n_idx:
        raise ValueError("jacext: move_rows: one row per index")
    pi = <const cnp.npy_intp *>cnp.PyArray_DATA(idx)
    for k in range(n_idx):
        if pi[k] < 0 or pi[k] >= n_rows:
            raise IndexError(f"jacext: row {pi[k]} of {n_rows}")
    with nogil:
        for k in range(n_idx):
            r = pi[k]
            if scatter:
                memcpy(pd + r * width, ps + k * width, width)
            else:
                memcpy(pd + k * width, ps + r * width, width)


def permute_rows(cnp.ndarray a, cnp.ndarray perm):
    """a[perm[k]] = a[k] for every row k, in place (a: C-contiguous; perm: a 1-d intp
    permutation of its rows, checked before anything moves): the Jacobians of a batch
    split by branch are computed group after group into the result itself, then put in
    the points' order by following the permutation's cycles, one row held aside per
    cycle. No second result-sized buffer: a fresh one costs its page faults, which were
    most of a split batch's overhead."""
    cdef Py_ssize_t width = _row_bytes(a, "a"), n = a.shape[0], k, d
    cdef char *pa = <char *>cnp.PyArray_DATA(a)
    cdef const cnp.npy_intp *pp
    cdef unsigned char *seen
    cdef char *held
    cdef char *swap
    if (cnp.PyArray_TYPE(perm) != cnp.NPY_INTP or not cnp.PyArray_IS_C_CONTIGUOUS(perm)
            or cnp.PyArray_NDIM(perm) != 1 or perm.shape[0] != n):
        raise ValueError("jacext: permute_rows needs a 1-d intp permutation, one entry "
                         "per row")
    if n == 0 or width == 0:
        return
    pp = <const cnp.npy_intp *>cnp.PyArray_DATA(perm)
    seen = <unsigned char *>malloc(n + 2 * width)
    if seen == NULL:
        raise MemoryError()
    held = <char *>seen + n
    swap = held + width
    try:
        memset(seen, 0, n)
        for k in range(n):
            if pp[k] < 0 or pp[k] >= n or seen[pp[k]]:
                raise ValueError(f"jacext: permute_rows: {pp[k]} at {k} is not a "
                                 f"permutation of {n} rows")
            seen[pp[k]] = 1
        memset(seen, 0, n)
        with nogil:
            for k in range(n):
                if seen[k]:
                    continue
                seen[k] = 1
                d = pp[k]
                if d == k:
                    continue
                memcpy(held, pa + k * width, width)       # row k, on its way to d
                while d != k:
                    memcpy(swap, pa + d * width, width)
                    memcpy(pa + d * width, held, width)
                    memcpy(held, swap, width)
                    seen[d] = 1
                    d = pp[d]
                memcpy(pa + k * width, held, width)
    finally:
        free(seen)
