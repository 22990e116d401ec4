# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""GuardCheck: whether a point takes the branches that a tape was traced with.

A guarded tape (``jacext.guarded``) keeps, beside the Function, a small tape whose
outputs are the guarded values (the comparisons that Python branched on, the numbers
that ``float()`` and ``int()`` took) and the outcome of each at the trace point.  A
point holds the guards when every truth guard has the same truth there and every
exact guard the same value (a nan the same as a nan).  The single-point check is one
C value sweep of that tape and a loop, under a microsecond for small tapes; a batch
is one batched sweep and one pass over its rows.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int32_t
from libc.stdlib cimport free, malloc

from jacext import plan as _plan
from jacext._function cimport Function
from jacext._tape cimport (JX_TASK_VALUE, Tape, is_point, jx_point_value, jx_work,
                          raise_status)

cnp.import_array()

cdef enum:
    STACK_GUARDS = 64


cdef inline bint _same(double y, double o, bint truth) noexcept nogil:
    if truth:
        return (y != 0.0) == (o != 0.0)
    return y == o or (y != y and o != o)


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
        """1 when the point x (the tape's n_in values) holds every guard, else 0: one C
        value sweep of the guard tape (its values on the stack when few) and a loop."""
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
        cdef Py_ssize_t n = self.n
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
