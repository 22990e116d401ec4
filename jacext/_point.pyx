# cython: language_level=3, cdivision=True
"""The single-point C paths that Function's fast paths share: a dense Jacobian by sweeps
or from a Jacobian tape, the checks of a caller's ``out=``, and the dense fill of a sparse
result (``jacext/_function.pyx`` calls them; declared in ``_point.pxd``); and two C helpers
of the Python layer: the join of a batch's several arguments into the VM's rows
(``jacext/arguments.py``), the greedy colouring of a pattern's columns (``jacext/sparse.py``),
and the identity check of ``jx.jacobian``'s cache of recent Functions (``jacext/api.py``)."""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset
from cpython.object cimport PyObject

from jacext import arguments as _args
from jacext import plan as _plan
from jacext._tape cimport (JX_ENOMEM, JX_MODE_FORWARD, Tape, empty_of, has_shape, jx_point_lanes,
                           jx_all_finite, jx_join_rows, jx_point_jacobian, jx_point_outputs,
                           jx_work, raise_status)

cdef extern from "Python.h":
    bint PyFunction_Check(object o)
    PyObject *PyFunction_GET_CODE(object f)
    PyObject *PyFunction_GET_DEFAULTS(object f)
    PyObject *PyFunction_GET_KW_DEFAULTS(object f)
    PyObject *PyFunction_GET_CLOSURE(object f)
    PyObject *PyCell_GET(PyObject *c)
    Py_ssize_t PyTuple_GET_SIZE(PyObject *t)
    PyObject *PyTuple_GET_ITEM(PyObject *t, Py_ssize_t i)

cdef extern from "vm.h" nogil:
    int32_t jx_colour_columns(int32_t n_rows, int32_t n_cols, const int32_t *indptr,
                              const int32_t *indices, const int32_t *order, int32_t *colour,
                              int64_t max_work)

cnp.import_array()

cdef Py_ssize_t NOGIL_WORK = _plan.NOGIL_WORK
cdef Py_ssize_t FILL_CHUNK_BYTES = _plan.FILL_CHUNK_BYTES


cdef bint _finite(cnp.ndarray a):
    """Whether every entry of a (float64, C-contiguous) is finite."""
    return jx_all_finite(<const double *>cnp.PyArray_DATA(a), cnp.PyArray_SIZE(a))


cdef int32_t _lanes(Tape tape, int mode, int32_t n_cols) noexcept:
    return jx_point_lanes(tape.t.n_slots, n_cols if mode == JX_MODE_FORWARD else tape.t.n_out)


cdef int _point_jacobian(Tape tape, jx_work *w, cnp.ndarray x, cnp.ndarray y,
                         cnp.ndarray jac, cnp.ndarray cols, int m) noexcept:
    """The dense Jacobian at one point (and the values into y, unless None; arguments
    checked by the caller), the GIL released where the sweep is long enough to pay."""
    cdef const double *px = <const double *>cnp.PyArray_DATA(x)
    cdef double *py = <double *>cnp.PyArray_DATA(y) if y is not None else NULL
    cdef double *pj = <double *>cnp.PyArray_DATA(jac)
    cdef const int32_t *pc = <const int32_t *>cnp.PyArray_DATA(cols)
    cdef int32_t n_cols = <int32_t>cols.shape[0]
    cdef int st
    if tape.work * w.lanes > NOGIL_WORK:
        with nogil:
            st = jx_point_jacobian(&tape.t, w, px, py, pj, pc, n_cols, m)
    else:
        st = jx_point_jacobian(&tape.t, w, px, py, pj, pc, n_cols, m)
    return st


cdef cnp.ndarray _check_out(out, tuple shape):
    if not cnp.PyArray_Check(out):
        raise TypeError(f"jacext: out must be a NumPy array; got {type(out).__name__}")
    if (cnp.PyArray_TYPE(<cnp.ndarray>out) != cnp.NPY_DOUBLE
            or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>out)
            or not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>out)):
        raise ValueError("jacext: out must be a writeable, C-contiguous float64 array "
                         "(np.empty(shape))")
    if not has_shape(<cnp.ndarray>out, shape):
        raise ValueError(f"jacext: out has shape {_args.shape_str(out.shape)}; the Jacobian "
                         f"has shape {_args.shape_str(shape)}")
    return <cnp.ndarray>out


cdef bint _tape_jacobian(Tape jt, cnp.ndarray x, cnp.ndarray y, cnp.ndarray jac) except -1:
    """A dense Jacobian tape (outputs: the n_out values, then the Jacobian row-major) at the
    point x: the values into y (None: not stored), the Jacobian straight into jac (both
    C-contiguous float64 of their sizes, checked by the caller).  False where the
    Jacobian is not all finite: then the sweeps, whose zero kills decide there, redo it."""
    cdef Py_ssize_t n_jac = cnp.PyArray_SIZE(jac)
    cdef int32_t n_y = jt.t.n_out - <int32_t>n_jac
    cdef double *pj = <double *>cnp.PyArray_DATA(jac)
    cdef double *py = <double *>cnp.PyArray_DATA(y) if y is not None else NULL
    cdef const double *px = <const double *>cnp.PyArray_DATA(x)
    cdef jx_work *w = jt.take_work(1)
    cdef int st
    try:
        if jt.t.n_instr > NOGIL_WORK:
            with nogil:
                st = jx_point_outputs(&jt.t, w, px, py, n_y, pj)
        else:
            st = jx_point_outputs(&jt.t, w, px, py, n_y, pj)
    finally:
        jt.give_work(w)
    raise_status(st)
    return jx_all_finite(pj, n_jac)


cdef object _eval_tape(Tape jt, cnp.ndarray x, Py_ssize_t n_values):
    """jt's outputs at the point x (float64, C-contiguous, checked), or None when an
    output past the first n_values is not finite (then the sweeps decide).  Tape.value
    takes the work memory and releases the GIL by the Tape's own rule."""
    cdef cnp.ndarray r = empty_of((jt.t.n_out,))
    jt.value(x, r)
    if not jx_all_finite(<const double *>cnp.PyArray_DATA(r) + n_values,
                         jt.t.n_out - n_values):
        return None
    return r


cdef void _fill_rows(cnp.ndarray dense, cnp.ndarray ptr, cnp.ndarray idx,
                     cnp.ndarray vals, bint zeroed) noexcept:
    """A dense (n_rows, n_cols) C-contiguous float64 matrix from CSR nonzeros (int32 ptr
    and idx, checked when the pattern was made) a chunk of rows (FILL_CHUNK_BYTES) at a
    time: unless ``zeroed`` (a fresh np.zeros, whose pages calloc zeroes) the chunk is
    zeroed first (one memset, fast string stores that keep it in cache), then its
    nonzeros are written while it is there (a caller's out=)."""
    cdef double *d = <double *>cnp.PyArray_DATA(dense)
    cdef const int32_t *p = <const int32_t *>cnp.PyArray_DATA(ptr)
    cdef const int32_t *j = <const int32_t *>cnp.PyArray_DATA(idx)
    cdef const double *v = <const double *>cnp.PyArray_DATA(vals)
    cdef Py_ssize_t n_rows = ptr.shape[0] - 1
    cdef Py_ssize_t n_cols = dense.size // n_rows if n_rows > 0 else 0
    cdef Py_ssize_t i, i1 = 0, i2, k
    cdef Py_ssize_t chunk = FILL_CHUNK_BYTES // (n_cols * 8) if n_cols > 0 else 1
    cdef double *row
    if chunk < 1:
        chunk = 1
    with nogil:
        while i1 < n_rows:
            i2 = i1 + chunk if i1 + chunk < n_rows else n_rows
            if not zeroed:
                memset(d + i1 * n_cols, 0, (i2 - i1) * n_cols * sizeof(double))
            for i in range(i1, i2):
                row = d + i * n_cols
                for k in range(p[i], p[i + 1]):
                    row[j[k]] = v[k]
            i1 = i2


def join_rows(list parts, cnp.ndarray out):
    """out[p] = the parts' rows p side by side: each part a C-contiguous float64 (n, width),
    out a new C-contiguous float64 (n, sum of widths).  One pass in C: NumPy's concatenate
    along axis 1 copies each row's pieces apart (ba's batch of 10^4: 108 us against 73 us)."""
    cdef Py_ssize_t n = out.shape[0], k, n_parts = len(parts), total = 0
    cdef const double **ptr = <const double **>malloc(n_parts * sizeof(double *) + 1)
    cdef int32_t *width = <int32_t *>malloc(n_parts * sizeof(int32_t) + 1)
    try:
        if ptr == NULL or width == NULL:
            raise MemoryError("jacext: out of memory joining a batch's rows")
        for k in range(n_parts):
            p = <cnp.ndarray>parts[k]
            if (p.dtype != np.float64 or not p.flags.c_contiguous or p.ndim != 2
                    or p.shape[0] != n):
                raise ValueError("jacext: join_rows takes C-contiguous float64 (n, width) parts")
            width[k] = <int32_t>p.shape[1]
            ptr[k] = <const double *>cnp.PyArray_DATA(p)
            total += width[k]
        if (out.dtype != np.float64 or not out.flags.c_contiguous or out.ndim != 2
                or out.shape[1] != total or not out.flags.writeable):
            raise ValueError("jacext: join_rows writes a C-contiguous float64 (n, total width)")
        with nogil:
            jx_join_rows(n, <int32_t>n_parts, ptr, width, <double *>cnp.PyArray_DATA(out))
    finally:
        free(ptr)
        free(width)


def colour_columns(ptr, idx, int32_t n_rows, int32_t n_cols, order, max_work):
    """Greedy distance-2 colouring of the columns of a CSR pattern (columns sharing a row
    get different colours), visiting columns in ``order``: int32 colours, or None when
    the work would pass ``max_work``."""
    cdef cnp.ndarray p = np.ascontiguousarray(ptr, dtype=np.int32)
    cdef cnp.ndarray q = np.ascontiguousarray(idx, dtype=np.int32)
    cdef cnp.ndarray o = np.ascontiguousarray(order, dtype=np.int32)
    cdef cnp.ndarray colour = np.empty(n_cols, dtype=np.int32)
    cdef int32_t n
    cdef int64_t limit = max_work
    if p.shape[0] != n_rows + 1 or o.shape[0] != n_cols or (n_rows and p[n_rows] != q.shape[0]):
        raise ValueError("jacext: the pattern and its sizes do not match")
    if q.shape[0] and (q.min() < 0 or q.max() >= n_cols):
        raise ValueError("jacext: a column index out of range")
    if n_cols and (np.sort(o) != np.arange(n_cols)).any():
        raise ValueError("jacext: order must be a permutation of the columns")
    if q.shape[0] == 0:
        q = np.zeros(1, dtype=np.int32)
    with nogil:
        n = jx_colour_columns(n_rows, n_cols, <const int32_t *>cnp.PyArray_DATA(p),
                              <const int32_t *>cnp.PyArray_DATA(q),
                              <const int32_t *>cnp.PyArray_DATA(o),
                              <int32_t *>cnp.PyArray_DATA(colour), limit)
    if n == JX_ENOMEM:
        raise MemoryError("jacext: out of memory colouring the sparsity pattern")
    if n < 0:
        return None
    return colour


cdef inline bint _same(PyObject *field, object recorded) noexcept:
    """A function's field (NULL where Python shows None) is the recorded object itself."""
    return field == <PyObject *>recorded if field != NULL else recorded is None


def same_capture(f, tuple hit):
    """Whether the Python function f (a bound method: its function) still has the code, the
    defaults and the closure cells' objects hit[1:5] it had when traced (jacext/api.py's
    cache of recent Functions), by identity, read in place; None where f is no function
    (the caller's own check serves).  In C: the same test in Python took 0.3 us, plus 0.1
    us a closure cell (arm_cs has six)."""
    cdef object func = f
    cdef PyObject *clo
    cdef PyObject *v
    cdef tuple cells = hit[2]
    cdef Py_ssize_t k, n
    if not PyFunction_Check(func):
        func = getattr(f, "__func__", None)
        if func is None or not PyFunction_Check(func):
            return None
    if not (_same(PyFunction_GET_CODE(func), hit[1])
            and _same(PyFunction_GET_DEFAULTS(func), hit[3])
            and _same(PyFunction_GET_KW_DEFAULTS(func), hit[4])):
        return False
    clo = PyFunction_GET_CLOSURE(func)
    n = PyTuple_GET_SIZE(clo) if clo != NULL else 0
    if n != len(cells):
        return False
    for k in range(n):
        v = PyCell_GET(PyTuple_GET_ITEM(clo, k))
        if not _same(v, cells[k]):
            return False
    return True
