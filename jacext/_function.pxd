# The Function class's fields and C methods (jacext/_function.pyx), declared here so that
# jacext/_guards.pyx calls a guarded tape's Function on its C fast path directly.
from libc.stdint cimport int64_t

cimport numpy as cnp

from jacext._tape cimport Tape


cdef class Function:
    cdef readonly Tape tape
    cdef readonly tuple arg_shapes
    cdef readonly tuple out_shapes
    cdef readonly bint out_is_tuple
    cdef readonly str name
    cdef readonly object _planner   # (read by jacext.testing)
    cdef tuple _arg_offsets
    cdef tuple _out_offsets
    # the fast paths: one argument, one output
    cdef tuple _single_shape       # the argument's shape, or None
    cdef tuple _single_jac_shape   # out_shape + arg_shape, or None
    cdef cnp.ndarray _cols0
    cdef bint _single_fits         # its dense Jacobian fits in memory
    cdef int _auto0                # auto mode of argnums 0 takes dense sweeps: 1, no: 0, unknown: -1
    cdef tuple _jt0                # (Tape, indptr, indices): the sparse Jacobian tape of a dense
                                   # auto Jacobian once built (one store publishes all three)
    cdef object _sparse0           # the Plan of sparse=True at one point, argnums 0, auto
    cdef dict _plans               # the planner's Plans by (argnums, mode, sparse), at hand
    # dense Jacobian tapes of single points (argnums 0), by C sweep mode: points counted in
    # C until the slot's threshold, then the tape (or None: not worth one) kept here
    cdef int64_t _pt_seen[3]
    cdef int64_t _pt_after[3]      # 0: not looked up yet
    cdef list _pt_tapes
    cdef readonly dict _second     # derived Functions and Hessian maps (jacext/second.py)
    # Shared state and threads: the Tape guards its own work memory with an atomic flag;
    # the planner makes Plans, structures and Jacobian tapes under its lock; _plans is a
    # dict (thread-safe); _sparse0 and _jt0 are set once, under the planner's lock, from
    # None to their value (a reader sees None or the value); _auto0 is a C int whose one
    # value every thread computes alike.

    cdef object _plan(self, argnums, mode, bint is_sparse)
    cdef Tape _pt_tape(self, int m)
    cdef bint _set_auto0(self) except -1
    cdef object _dense_at(self, object x, object mode, object out, cnp.ndarray y=*)
    cdef object _value_at(self, object x)
    cdef object _value_row(self, cnp.ndarray x)
