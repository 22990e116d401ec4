# The C declarations of src_c/vm.h that the Cython modules share, and the Tape class
# (jacext/_tape.pyx), whose C fields _function.pyx reads directly on its fast paths.
from libc.stdint cimport int32_t, int64_t

cimport numpy as cnp

cdef extern from "vm.h" nogil:
    int JX_OK, JX_ENOMEM, JX_EBADTAPE, JX_EARG, JX_ETHREAD
    int JX_MAX_LANES, JX_MODE_FORWARD, JX_MODE_REVERSE, JX_MODE_SUBGRAPH
    int32_t jx_point_lanes(int32_t n_slots, int32_t need)
    int JX_TASK_VALUE, JX_TASK_JACOBIAN, JX_TASK_JVP, JX_TASK_VJP, JX_TASK_COMPRESSED
    int JX_TASK_SUBGRAPH
    int JX_OP_MASK, JX_A_IMM, JX_B_IMM, JX_N_OPS, JX_RUN_FIELDS, JX_BLOCK, JX_BLOCK_FIELDS
    ctypedef void (*jx_dgemm_fn)(char *, char *, int *, int *, int *, double *, double *,
                                 int *, double *, int *, double *, double *, int *)
    ctypedef void (*jx_dgemv_fn)(char *, int *, int *, double *, double *, int *, double *,
                                 int *, double *, double *, int *)

    ctypedef struct jx_code:   # (its fields are the C sweep's alone: vm.h)
        pass
    int JX_CODE_MAX_ENTRIES
    int32_t jx_tape_code(const jx_tape *t, jx_code *code)

    ctypedef struct jx_tape:
        int32_t n_instr, n_slots, n_in, n_out, n_const
        const int32_t *op
        const int32_t *dst
        const int32_t *a
        const int32_t *b
        const int32_t *s
        const double *imm
        const int32_t *out_slot
        const double *const_value
        const unsigned char *fixed
        const double *fixed_d0
        const double *fixed_d1
        const int32_t *sincos_pair
        int32_t n_sincos
        const int32_t *runs
        int32_t n_runs
        const jx_code *code
        int32_t n_code
        const int32_t *io_copy
        int32_t n_in_copy, n_out_copy
        int32_t split_span, split_halo
        const int32_t *out_time
        int32_t n_bcode
        int32_t n_blocks
        const int64_t *blocks
        const double *weights
        int64_t n_weights
        const unsigned char *block_finite
        jx_dgemm_fn dgemm
        jx_dgemv_fn dgemv
        const jx_tape *exact
        double bound

    # the checks and derived tables of a Tape (_tape.pyx, Tape._derive)
    int jx_tape_check(const jx_tape *t)
    void jx_tape_block_finite(const jx_tape *t, unsigned char *finite)
    int32_t jx_tape_fixed_partials(const jx_tape *t, unsigned char *fixed, double *d0,
                                   double *d1)
    int32_t jx_tape_sincos_pairs(const jx_tape *t, int32_t *pair)
    int32_t jx_tape_runs(const jx_tape *t, int32_t *runs)
    int jx_tape_io(const jx_tape *t, int32_t *copy, int32_t *n)
    int32_t jx_tape_split(const jx_tape *t, int32_t *out_time, int32_t *span)
    size_t jx_tape_block_code_bytes(const jx_tape *t)
    int32_t jx_tape_block_code(jx_tape *t, void *mem)

    ctypedef struct jx_work:
        int32_t lanes
        double *value

    int jx_work_init(jx_work *w, const jx_tape *t, int32_t lanes)
    void jx_work_free(jx_work *w)
    ctypedef int jx_flag
    bint jx_flag_take(jx_flag *f)
    void jx_flag_give(jx_flag *f)
    void jx_join_rows(Py_ssize_t n, int32_t n_parts, const double *const *part,
                      const int32_t *width, double *out)
    int jx_point_value(const jx_tape *t, jx_work *w, const double *x, double *y)
    enum: JX_MAX_PARTS
    int jx_point_value_parts(const jx_tape *t, jx_work *w, jx_work *helper, int32_t n_parts,
                             const double *const *part, const int32_t *width, double *y)
    int jx_point_outputs(const jx_tape *t, jx_work *w, const double *x, double *y0,
                         int32_t n0, double *y1)
    int jx_point_jacobian(const jx_tape *t, jx_work *w, const double *x, double *y,
                          double *jac, const int32_t *cols, int32_t n_cols, int mode)

cdef extern from "kernels.h" nogil:
    bint jx_all_finite(const double *p, Py_ssize_t n)


cdef int raise_status(int st) except -1


cdef class Cones


cdef class Tape:
    cdef jx_tape t
    cdef dict _arrays
    cdef tuple _fixed
    cdef cnp.ndarray _pairs
    cdef cnp.ndarray _runs
    cdef cnp.ndarray _code   # the value sweep's decoded stream (vm.h jx_code), or None
    cdef cnp.ndarray _io     # what the value sweep copies in and out (vm.h io_copy)
    cdef cnp.ndarray _out_time   # when each output is made (vm.h out_time)
    cdef jx_work _helper    # a single point's second thread's work (vm.h split_halo)
    cdef bint _has_helper   # (read and written only by the holder of _busy)
    cdef cnp.ndarray _bcode  # the batched value sweep's stream (block_code.c)
    cdef bint _runs_used
    cdef jx_work _work      # the Tape's own work memory: whoever takes _busy uses it
    cdef jx_flag _busy
    cdef bint _has_work     # (read and written only by the holder of _busy)
    cdef cnp.ndarray _block_finite
    cdef readonly int64_t work   # a sweep's work per lane: instructions, a block m x n
    cdef readonly Tape exact     # the tape this one was folded from (jx_tape.exact), or None

    cdef _derive(self)
    cdef jx_work *take_work(self, int32_t lanes) except NULL
    cdef void give_work(self, jx_work *w) noexcept
    cdef jx_work *helper(self, jx_work *w) noexcept
    cdef bint _nogil(self, Py_ssize_t lanes) noexcept
    cdef int _check_colours(self, cnp.ndarray colour, int32_t n_colours) except -1
    cpdef value(self, cnp.ndarray x, cnp.ndarray y)
    cpdef compressed(self, cnp.ndarray x, cnp.ndarray y, cnp.ndarray comp, cnp.ndarray cols,
                     cnp.ndarray colour, int32_t n_colours, int mode)
    cpdef cones_jacobian(self, cnp.ndarray x, cnp.ndarray y, Cones cones, cnp.ndarray vals)
    cpdef product(self, bint forward, cnp.ndarray x, cnp.ndarray seed, cnp.ndarray y,
                  cnp.ndarray res)
    cpdef run(self, int task, object x, cnp.ndarray y, cnp.ndarray out, int threads,
              int mode, cnp.ndarray seed, cnp.ndarray cols, cnp.ndarray colour,
              int32_t n_colours, Tape jac_tape, Cones cones)


cdef class Cones:
    cdef readonly Tape tape
    cdef readonly cnp.ndarray cone_ptr, cone, row_ptr, nz_input
    cdef readonly int64_t work
    cdef const int64_t *cp
    cdef const int32_t *cn
    cdef const int32_t *rp
    cdef const int32_t *nz


cdef inline bint is_point(object a, tuple shape):
    """Whether a is a float64 C-contiguous ndarray of exactly this shape (the fast
    paths' test, shared by _function.pyx and _guards.pyx)."""
    cdef cnp.ndarray arr
    if not cnp.PyArray_CheckExact(a):
        return False
    arr = <cnp.ndarray>a
    if cnp.PyArray_TYPE(arr) != cnp.NPY_DOUBLE or not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        return False
    return has_shape(arr, shape)


cdef inline bint has_shape(cnp.ndarray arr, tuple shape):
    """Whether arr's shape is this tuple of ints (no tuple made for it)."""
    cdef int k, nd = cnp.PyArray_NDIM(arr)
    cdef cnp.npy_intp *dims = cnp.PyArray_DIMS(arr)
    if nd != len(shape):
        return False
    for k in range(nd):
        if dims[k] != <cnp.npy_intp>shape[k]:
            return False
    return True


cdef inline cnp.ndarray empty_of(tuple shape, bint zero=False):
    """A new float64 C-contiguous array of this shape (at most 32 axes), made through
    NumPy's C API: the fast paths' results, without a Python-level np.empty call."""
    cdef cnp.npy_intp dims[32]
    cdef int k, nd = len(shape)
    for k in range(nd):
        dims[k] = <cnp.npy_intp>shape[k]
    if zero:
        return cnp.PyArray_ZEROS(nd, dims, cnp.NPY_DOUBLE, 0)
    return cnp.PyArray_EMPTY(nd, dims, cnp.NPY_DOUBLE, 0)


cdef inline cnp.ndarray view_as(cnp.ndarray arr, tuple shape):
    """arr (C-contiguous) reshaped to this shape (at most 32 axes) through NumPy's C API:
    a view, no Python-level reshape call."""
    cdef cnp.npy_intp dims[32]
    cdef cnp.PyArray_Dims d
    cdef int k
    d.len = len(shape)
    for k in range(d.len):
        dims[k] = <cnp.npy_intp>shape[k]
    d.ptr = dims
    return <cnp.ndarray>cnp.PyArray_Newshape(arr, &d, cnp.NPY_CORDER)
