# The single-point C paths of jacext/_point.pyx, for jacext/_function.pyx.
cimport numpy as cnp
from libc.stdint cimport int32_t

from jacext._tape cimport Tape, jx_work

cdef bint _finite(cnp.ndarray a)
cdef int32_t _lanes(Tape tape, int mode, int32_t n_cols) noexcept
cdef int _point_jacobian(Tape tape, jx_work *w, cnp.ndarray x, cnp.ndarray y,
                         cnp.ndarray jac, cnp.ndarray cols, int m) noexcept
cdef cnp.ndarray _check_out(out, tuple shape)
cdef bint _tape_jacobian(Tape jt, cnp.ndarray x, cnp.ndarray y, cnp.ndarray jac) except -1
cdef object _eval_tape(Tape jt, cnp.ndarray x, Py_ssize_t n_values)
cdef void _fill_rows(cnp.ndarray dense, cnp.ndarray ptr, cnp.ndarray idx,
                     cnp.ndarray vals, bint zeroed) noexcept
