# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""GuardCheck: whether a point takes the branches that a tape was traced with.

A guarded tape (``jacext.guarded``) keeps, beside the Function, a small tape whose
outputs are the guarded values (the comparisons that Python branched on, the numbers
that ``float()`` and ``int()`` took) and the outcome of each at the trace point.  A
point holds the guards when every truth guard has the same truth there and every
exact guard the same value (a nan the same as a nan).

Most guards are direct: a comparison of an input with a constant or another input
(``if x[k] > 0.0``, ``if 0.0 < x[k]``, ``if x[2] <= x[0]``), or an input itself
(``float(x[k])``).  Those are checked straight from the point, the tape's own C
comparison on the same operands (so nan, inf, signed zeros and ties come out as the
sweep's), without a sweep: for ``if x[k] > 0.0`` on each of 10 inputs, a few dozen
instructions against a sweep's few hundred.  Any other guard (``if x[0] * x[1] > 0``)
takes one C value sweep of the tape, after the direct guards have held; a batch all of
whose guards are direct is one pass over its rows, any other one batched sweep and a
pass.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int32_t
from libc.stdlib cimport free, malloc

from jacext import plan as _plan
from jacext._function cimport Function
from jacext._tape cimport (JX_A_IMM, JX_B_IMM, JX_BLOCK, JX_OP_MASK, JX_TASK_VALUE, Tape,
                          is_point, jx_point_value, jx_work, raise_status)

cnp.import_array()

cdef extern from "ops.h":
    int JX_OP_LESS, JX_OP_LESS_EQUAL, JX_OP_GREATER, JX_OP_GREATER_EQUAL, JX_OP_EQUAL
    int JX_OP_NOT_EQUAL

cdef enum:
    STACK_GUARDS = 64
    # the bits of a direct guard's mask: the comparison a OP b is the OR of these of
    # a < b, a > b, a == b (exactly IEEE's: a <= b is (a < b) | (a == b), a != b is
    # not (a == b), all of them False on a nan but !=)
    M_LT = 1
    M_GT = 2
    M_EQ = 4


cdef inline bint _same(double y, double o, bint truth) noexcept nogil:
    if truth:
        return (y != 0.0) == (o != 0.0)
    return y == o or (y != y and o != o)


cdef struct direct_guard:
    int32_t ia           # operand a: input ia
    int32_t ib           # operand b: input ib, or the constant cb where ib < 0
    double cb
    int mask             # M_LT | M_GT | M_EQ: which of a < b, a > b, a == b make it true
    int want             # the truth it must have (2: never, as an exact guard on a
                         # comparison whose outcome is neither 0 nor 1)


cdef inline bint _direct_holds(const direct_guard *g, Py_ssize_t n,
                               const double *x) noexcept nogil:
    """Whether the point x holds the n direct guards g."""
    cdef Py_ssize_t k
    cdef double a, b
    cdef int r
    for k in range(n):
        a = x[g[k].ia]
        b = x[g[k].ib] if g[k].ib >= 0 else g[k].cb
        r = (((a < b) * M_LT) | ((a > b) * M_GT) | ((a == b) * M_EQ)) & g[k].mask
        if (r != 0) != g[k].want:
            return False
    return True


cdef dict _MASKS = {JX_OP_LESS: (M_LT, 0), JX_OP_LESS_EQUAL: (M_LT | M_EQ, 0),
                    JX_OP_GREATER: (M_GT, 0), JX_OP_GREATER_EQUAL: (M_GT | M_EQ, 0),
                    JX_OP_EQUAL: (M_EQ, 0), JX_OP_NOT_EQUAL: (M_EQ, 1)}


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
    """[(ia, ib, cb, mask, want)] of the guards that compare inputs with constants or each
    other, or are an input itself (all of them Python: each of the tape's comparisons,
    in this form, gives the same doubles the same truth)."""
    cdef int32_t n_in = tape.t.n_in
    arrays = tape.arrays()
    op, imm, const_value = arrays["op"], arrays["imm"], arrays["const_value"]
    last = {}                        # slot -> the instruction that writes it last
    for i, d in enumerate(arrays["dst"].tolist()):
        last[d] = i
    out = []
    for k, slot in enumerate(arrays["out_slot"].tolist()):
        o = float(outcome[k])
        if slot < n_in:              # the input itself, x:
            if truth[k]:             # bool(x) is not (x == 0.0)
                out.append((slot, -1, 0.0, M_EQ, int(o == 0.0)))
            elif o == o:             # x == o
                out.append((slot, -1, o, M_EQ, 1))
            else:                    # x is nan: not (x == x)
                out.append((slot, slot, 0.0, M_EQ, 0))
            continue
        i = last.get(slot)
        if i is None:
            continue
        w = int(op[i])
        if w & JX_BLOCK or (w & JX_OP_MASK) not in _MASKS:
            continue
        a = _operand(arrays["a"][i], w & JX_A_IMM, imm[i], n_in, const_value)
        b = _operand(arrays["b"][i], w & JX_B_IMM, imm[i], n_in, const_value)
        if a is None or b is None or (a[0] < 0 and b[0] < 0):
            continue
        mask, negate = _MASKS[w & JX_OP_MASK]
        if a[0] < 0:                 # c OP x is x OP' c: a < b is b > a, a == b is b == a
            a, b = b, a
            mask = (mask & M_EQ) | (M_GT if mask & M_LT else 0) | (M_LT if mask & M_GT else 0)
        if truth[k]:
            want = int(o != 0.0)
        else:                        # the sweep's value is 0.0 or 1.0: equal to o or not
            want = 1 if o == 1.0 else 0 if o == 0.0 else 2
        if negate and want < 2:
            want = 1 - want
        out.append((a[0], b[0], b[1], mask, want))
    return out


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
    cdef direct_guard *_g           # the direct guards (the module's docstring)
    cdef readonly Py_ssize_t n_direct
    """How many of the guards are checked straight from the point, without the tape."""

    def __cinit__(self):
        self._g = NULL
        self.n_direct = 0

    def __dealloc__(self):
        free(self._g)

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
        direct = _direct_guards(tape, self.truth, self.outcome)
        cdef direct_guard *g = <direct_guard *>malloc(max(len(direct), 1) * sizeof(direct_guard))
        if g == NULL:
            raise MemoryError()
        for j, (ia, ib, cb, mask, want) in enumerate(direct):
            g[j].ia = ia
            g[j].ib = ib
            g[j].cb = cb
            g[j].mask = mask
            g[j].want = want
        free(self._g)
        self._g = g
        self.n_direct = len(direct)

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
        if not _direct_holds(self._g, self.n_direct, x):
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
                    pok[i] = _direct_holds(self._g, n, py + i * n_in)
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
