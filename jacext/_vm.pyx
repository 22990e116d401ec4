# cython: language_level=3, cdivision=True
"""Function: a compiled tape and the thin layer between NumPy and the C VM.

The tape is checked once, when the Function is made (``jx_tape_check``); the
sweeps then run unchecked with the GIL released for anything but the smallest
tapes.  Arguments are checked and converted here, before C sees a pointer;
C returns status codes and this layer raises.

Function lives in Cython rather than in api.py because its single-point path
(``F.jacobian(x, out=J)``) must cost well under a microsecond: one Python call
into a typed method, no Python frames in between.
"""
import copy as _copy
import math
import os

import numpy as np
cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from jacext import derivative as _derivative
from jacext._graph import tape_groups
from jacext import sparse as _sparse
from jacext.errors import JacextError

cnp.import_array()

cdef extern from "vm.h" nogil:
    int JX_OK, JX_ENOMEM, JX_EBADTAPE, JX_EARG, JX_ETHREAD
    int JX_MAX_LANES, JX_MODE_FORWARD, JX_MODE_REVERSE
    int JX_TASK_VALUE, JX_TASK_JACOBIAN, JX_TASK_JVP, JX_TASK_VJP, JX_TASK_COMPRESSED
    int JX_TASK_SUBGRAPH, JX_MODE_SUBGRAPH
    int JX_OP_MASK, JX_A_IMM, JX_B_IMM, JX_N_OPS
    const char *jx_op_names[]
    const int jx_op_arity[]

    ctypedef struct jx_tape:
        int32_t n_instr, n_slots, n_in, n_out, n_const
        const int32_t *op
        const int32_t *dst
        const int32_t *a
        const int32_t *b
        const double *imm
        const int32_t *out_slot
        const double *const_value
        const unsigned char *fixed
        const int32_t *sincos_pair
        int32_t n_sincos
        const int32_t *runs
        int32_t n_runs
        const double *fixed_d0
        const double *fixed_d1

    ctypedef struct jx_work:
        int32_t lanes
        double *value

    ctypedef struct jx_batch:
        int task, mode
        const int32_t *cols
        int32_t n_cols
        const int32_t *colour
        int32_t n_colours
        const int64_t *cone_ptr
        const int32_t *cone
        const int32_t *row_ptr
        const int32_t *nz_input
        const jx_tape *jac_tape
        Py_ssize_t n_points
        const double *x
        const double *seed
        double *y
        double *out

    int jx_tape_check(const jx_tape *t)
    int32_t jx_tape_fixed_partials(const jx_tape *t, unsigned char *fixed, double *d0, double *d1)
    int32_t jx_tape_sincos_pairs(const jx_tape *t, int32_t *pair)
    int32_t jx_tape_runs(const jx_tape *t, int32_t *runs)
    int JX_RUN_FIELDS
    int jx_work_init(jx_work *w, const jx_tape *t, int32_t lanes)
    void jx_work_free(jx_work *w)
    int jx_point_jacobian(const jx_tape *t, jx_work *w, const double *x, double *y,
                          double *jac, const int32_t *cols, int32_t n_cols, int mode)
    int jx_point_value(const jx_tape *t, jx_work *w, const double *x, double *y)
    int jx_point_jvp(const jx_tape *t, jx_work *w, const double *x, const double *v,
                     double *y, double *ydot)
    int jx_point_vjp(const jx_tape *t, jx_work *w, const double *x, const double *u,
                     double *y, double *xbar)
    int jx_batch_run(const jx_tape *t, const jx_batch *job, int n_threads)
    int jx_point_compressed(const jx_tape *t, jx_work *w, const double *x, double *y,
                            double *comp, const int32_t *cols, int32_t n_cols,
                            const int32_t *colour, int32_t n_colours, int mode)
    int jx_sparsity(const jx_tape *t, const int32_t *col_of_input, int32_t **indptr,
                    int32_t **indices)
    int jx_cones(const jx_tape *t, int64_t max_total, int64_t **cone_ptr, int32_t **cone)
    int jx_point_subgraph(const jx_tape *t, jx_work *w, const double *x, double *y,
                          const int64_t *cone_ptr, const int32_t *cone, const int32_t *row_ptr,
                          const int32_t *nz_input, double *vals)
    int32_t jx_colour_columns(int32_t n_rows, int32_t n_cols, const int32_t *indptr,
                              const int32_t *indices, const int32_t *order, int32_t *colour,
                              int64_t max_work)
    double jx_op_value(int op, double a, double b, double s)
    void jx_op_partials(int op, double a, double b, double s, double *d0, double *d1)


def op_value(int op, double a, double b=0.0, double s=0.0):
    """The C value of one op on scalars (for tests and tools)."""
    if op < 0 or op >= JX_N_OPS:
        raise ValueError(f"no op number {op}")
    return jx_op_value(op, a, b, s)


def op_partials(int op, double a, double b=0.0, double s=0.0):
    """The C local partials (d0, d1) of one op on scalars."""
    cdef double d0, d1
    if op < 0 or op >= JX_N_OPS:
        raise ValueError(f"no op number {op}")
    jx_op_partials(op, a, b, s, &d0, &d1)
    return d0, d1


cdef int _raise_status(int st) except -1:
    if st == JX_OK:
        return 0
    if st == JX_ENOMEM:
        raise MemoryError("jacext: out of memory for the work arrays of this evaluation")
    if st == JX_ETHREAD:
        raise RuntimeError("jacext: could not start worker threads")
    if st == JX_EBADTAPE:
        raise ValueError("jacext: the tape is corrupt (an index out of range, an unknown op, "
                         "or an instruction writing over its own operand)")
    raise ValueError(f"jacext: invalid arguments to the VM (status {st})")


# Below this much work (instructions x lanes) the GIL is kept: releasing and
# taking it back costs more than the sweep itself.
DEF NOGIL_WORK = 4096
# Batches: points per thread below which no thread is started.
DEF MIN_WORK_PER_THREAD = 200000

_MODES = {"forward": 1, "reverse": 2}
_MODE_NAMES = {1: "forward", 2: "reverse"}

# Jacobians switch to a Jacobian tape (jacext/derivative.py) once the sweeps have done
# enough points for the same argnums and mode, this call's included: ski rental, the
# sweeps' work so far (in instruction-lanes: one instruction's value, or one tangent or
# adjoint of it, at one point; about a nanosecond here) at least the build's estimated
# cost (derivative.build_cost), so a one-off call never pays for it and a repeated one
# pays at most about twice.  At most JAC_TAPE_AFTER_POINTS points in any case.
JAC_TAPE_AFTER_POINTS = 2048
# Dense tapes whose sweeps do more than this many instruction-lanes per point get none
# (the tape would hold that many Jacobian entries' terms).
JAC_TAPE_MAX_WORK = 1000000
# Sparse tapes: at most this many instructions in the function's tape where the builder
# goes group by group (the build's peak memory is ~0.4 KB per instruction: 2.2 GB for
# broyden n = 10^6's 6 million), a tenth of it node by node (~8 us per instruction).
JAC_TAPE_MAX_INSTR = 8000000


cdef int _tape_mode(int m) noexcept:
    """The Jacobian tape that mirrors a sparse mode's sweeps: forward for the forward
    colouring, reverse for the reverse colouring and the per-output cones."""
    return JX_MODE_FORWARD if m == JX_MODE_FORWARD else JX_MODE_REVERSE


cdef object _eval_jac_tape(Function jt, cnp.ndarray x, Py_ssize_t n_values):
    """jt's outputs at the point x (float64, C-contiguous, checked), or None when an
    output past the first n_values is not finite (then the sweeps decide)."""
    cdef cnp.ndarray r = np.empty(jt.tape.n_out, dtype=np.float64)
    cdef jx_work *w = jt._take_work(1)
    cdef int st
    try:
        with nogil:
            st = jx_point_value(&jt.tape, w, <const double *>cnp.PyArray_DATA(x),
                                <double *>cnp.PyArray_DATA(r))
    finally:
        jt._give_work(w)
    _raise_status(st)
    if not _all_finite(<const double *>cnp.PyArray_DATA(r) + n_values, jt.tape.n_out - n_values):
        return None
    return r


cdef bint _all_finite(const double *p, Py_ssize_t n) noexcept nogil:
    """Whether p[0..n) are all finite: x - x is 0 for finite x and nan otherwise, summed
    in four independent accumulators (one would be a serial chain of adds)."""
    cdef double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0
    cdef Py_ssize_t k = 0
    while k + 4 <= n:
        a0 += p[k] - p[k]
        a1 += p[k + 1] - p[k + 1]
        a2 += p[k + 2] - p[k + 2]
        a3 += p[k + 3] - p[k + 3]
        k += 4
    while k < n:
        a0 += p[k] - p[k]
        k += 1
    return (a0 + a1) + (a2 + a3) == 0.0


cdef void _fill_rows(cnp.ndarray dense, cnp.ndarray ptr, cnp.ndarray idx,
                     cnp.ndarray vals, bint zeroed=False) noexcept:
    """A dense (n_rows, n_cols) C-contiguous float64 matrix from CSR nonzeros (int32 ptr
    and idx, checked when the pattern was made), row by row; unless ``zeroed`` (a fresh
    np.zeros, whose pages calloc zeroes), each chunk of rows is zeroed first and filled
    while it is in cache (a caller's out=)."""
    cdef double *d = <double *>cnp.PyArray_DATA(dense)
    cdef const int32_t *p = <const int32_t *>cnp.PyArray_DATA(ptr)
    cdef const int32_t *j = <const int32_t *>cnp.PyArray_DATA(idx)
    cdef const double *v = <const double *>cnp.PyArray_DATA(vals)
    cdef Py_ssize_t n_rows = ptr.shape[0] - 1
    cdef Py_ssize_t n_cols = dense.size // n_rows if n_rows > 0 else 0
    cdef Py_ssize_t i, i1 = 0, i2, k
    cdef Py_ssize_t chunk = (256 * 1024) // (n_cols * 8) if n_cols > 0 else 1
    cdef double *row
    if chunk < 1:
        chunk = 1
    with nogil:
        # rows in chunks of about 256 KB: one memset per chunk (fast string stores
        # that keep it in cache), then its nonzeros while it is there
        while i1 < n_rows:
            i2 = i1 + chunk if i1 + chunk < n_rows else n_rows
            if not zeroed:
                memset(d + i1 * n_cols, 0, (i2 - i1) * n_cols * sizeof(double))
            for i in range(i1, i2):
                row = d + i * n_cols
                for k in range(p[i], p[i + 1]):
                    row[j[k]] = v[k]
            i1 = i2


cdef inline bint _shape_is(cnp.ndarray a, tuple shape):
    cdef int k, nd = cnp.PyArray_NDIM(a)
    cdef cnp.npy_intp *dims = cnp.PyArray_DIMS(a)
    if nd != len(shape):
        return False
    for k in range(nd):
        if dims[k] != <cnp.npy_intp>shape[k]:
            return False
    return True


def _shape_str(shape):
    return "(" + ", ".join(str(int(d)) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _usable_cores():
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


_MEMORY = None


def _physical_memory():
    """Bytes of RAM (read once)."""
    global _MEMORY
    if _MEMORY is None:
        _MEMORY = _read_physical_memory()
    return _MEMORY


def _read_physical_memory():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


cdef class Function:
    """A traced and compiled function: values, Jacobians, jvp and vjp.

    Made by :func:`jacext.compile`.  The tape is immutable; each call uses its
    own work memory, so one Function may be shared across threads, and it
    pickles as plain arrays.
    """

    cdef jx_tape tape
    cdef dict _arrays
    cdef tuple _derived
    cdef cnp.ndarray _pairs
    cdef cnp.ndarray _runs
    cdef readonly tuple arg_shapes
    cdef readonly tuple out_shapes
    cdef readonly bint out_is_tuple
    cdef readonly str name
    cdef tuple _arg_sizes
    cdef tuple _arg_offsets
    cdef tuple _out_offsets
    cdef dict _cols
    cdef dict _sparse_cache
    cdef int _auto0      # _auto_colours(0), or -1 before it is known
    cdef jx_work _work
    cdef bint _work_busy
    cdef bint _has_work
    cdef tuple _single_shape      # the one argument's shape, or None
    cdef tuple _single_jac_shape   # out_shape + arg_shape when both are single
    cdef cnp.ndarray _cols0
    cdef bint _single_fits
    cdef Function _jt0            # the sparse Jacobian tape of argnums 0 (auto, forward), or None
    cdef cnp.ndarray _jt0_ptr, _jt0_idx

    def __cinit__(self):
        self._has_work = False
        self._work_busy = False

    def __init__(self, dict tape, tuple arg_shapes, tuple out_shapes, bint out_is_tuple,
                 str name="f"):
        cdef dict arrays = {}
        for key, dtype in (("op", np.int32), ("dst", np.int32), ("a", np.int32), ("b", np.int32),
                           ("imm", np.float64), ("out_slot", np.int32),
                           ("const_value", np.float64)):
            arr = np.ascontiguousarray(tape[key], dtype=dtype)
            arr.setflags(write=False)
            arrays[key] = arr
        n_instr = arrays["op"].shape[0]
        for key in ("dst", "a", "b", "imm"):
            if arrays[key].shape[0] != n_instr:
                raise ValueError(f"jacext: corrupt tape: '{key}' has {arrays[key].shape[0]} "
                                 f"entries for {n_instr} instructions")
        self._arrays = arrays
        self.arg_shapes = tuple(tuple(int(d) for d in s) for s in arg_shapes)
        self.out_shapes = tuple(tuple(int(d) for d in s) for s in out_shapes)
        self.out_is_tuple = out_is_tuple
        self.name = name
        sizes = tuple(math.prod(s) for s in self.arg_shapes)
        self._arg_sizes = sizes
        self._arg_offsets = tuple(int(v) for v in np.concatenate([[0], np.cumsum(sizes)]))
        out_sizes = [math.prod(s) for s in self.out_shapes]
        self._out_offsets = tuple(int(v) for v in np.concatenate([[0], np.cumsum(out_sizes)]))
        n_in = int(tape["n_in"])
        if n_in != self._arg_offsets[-1]:
            raise ValueError("jacext: corrupt tape: input count differs from the argument shapes")
        if arrays["out_slot"].shape[0] != self._out_offsets[-1]:
            raise ValueError("jacext: corrupt tape: output count differs from the output shapes")
        if not out_is_tuple and len(self.out_shapes) != 1:
            raise ValueError("jacext: a single output needs exactly one output shape")

        self.tape.n_instr = <int32_t>n_instr
        self.tape.n_slots = <int32_t>int(tape["n_slots"])
        self.tape.n_in = <int32_t>n_in
        self.tape.n_out = <int32_t>arrays["out_slot"].shape[0]
        self.tape.n_const = <int32_t>arrays["const_value"].shape[0]
        self.tape.op = <const int32_t *>cnp.PyArray_DATA(arrays["op"])
        self.tape.dst = <const int32_t *>cnp.PyArray_DATA(arrays["dst"])
        self.tape.a = <const int32_t *>cnp.PyArray_DATA(arrays["a"])
        self.tape.b = <const int32_t *>cnp.PyArray_DATA(arrays["b"])
        self.tape.imm = <const double *>cnp.PyArray_DATA(arrays["imm"])
        self.tape.out_slot = <const int32_t *>cnp.PyArray_DATA(arrays["out_slot"])
        self.tape.const_value = <const double *>cnp.PyArray_DATA(arrays["const_value"])
        self.tape.fixed = NULL
        self.tape.fixed_d0 = NULL
        self.tape.fixed_d1 = NULL
        self.tape.sincos_pair = NULL
        self.tape.n_sincos = 0
        self.tape.runs = NULL
        self.tape.n_runs = 0
        _raise_status(jx_tape_check(&self.tape))
        # derived, not pickled: which instructions have constant partials
        fixed = np.zeros(n_instr, dtype=np.uint8)
        fixed_d0 = np.zeros(n_instr, dtype=np.float64)
        fixed_d1 = np.zeros(n_instr, dtype=np.float64)
        jx_tape_fixed_partials(&self.tape, <unsigned char *>cnp.PyArray_DATA(fixed),
                               <double *>cnp.PyArray_DATA(fixed_d0),
                               <double *>cnp.PyArray_DATA(fixed_d1))
        self._derived = (fixed, fixed_d0, fixed_d1)
        # derived, not pickled: sin and cos of one value, one sincos call in batches
        pairs = np.empty(n_instr, dtype=np.int32)
        n_pairs = jx_tape_sincos_pairs(&self.tape, <int32_t *>cnp.PyArray_DATA(pairs))
        _raise_status(min(n_pairs, 0))
        self._pairs = pairs
        self.tape.sincos_pair = <const int32_t *>cnp.PyArray_DATA(pairs)
        self.tape.n_sincos = n_pairs
        # derived, not pickled: runs of one op word over evenly stepping slots
        runs = np.empty(max(1, JX_RUN_FIELDS * n_instr), dtype=np.int32)
        n_runs = jx_tape_runs(&self.tape, <int32_t *>cnp.PyArray_DATA(runs))
        self._runs = runs[:JX_RUN_FIELDS * n_runs].copy()
        if 4 * n_runs <= 3 * n_instr:   # worth a run's setup only where runs are long
            self.tape.runs = <const int32_t *>cnp.PyArray_DATA(self._runs)
            self.tape.n_runs = n_runs
        self.tape.fixed = <const unsigned char *>cnp.PyArray_DATA(fixed)
        self.tape.fixed_d0 = <const double *>cnp.PyArray_DATA(fixed_d0)
        self.tape.fixed_d1 = <const double *>cnp.PyArray_DATA(fixed_d1)
        self._cols = {}
        self._sparse_cache = {}
        self._auto0 = -1
        self._single_shape = self.arg_shapes[0] if len(self.arg_shapes) == 1 else None
        if self._single_shape is not None and not out_is_tuple:
            self._single_jac_shape = self.out_shapes[0] + self._single_shape
        else:
            self._single_jac_shape = None
        self._cols0 = self._columns(0)
        # a single dense Jacobian beyond RAM takes the slow path, which raises
        self._single_fits = (8 * int(self.tape.n_out) * int(self.tape.n_in)
                             <= _physical_memory())

    def __dealloc__(self):
        if self._has_work:
            jx_work_free(&self._work)

    def __reduce__(self):
        tape = dict(self._arrays)
        tape["n_in"] = int(self.tape.n_in)
        tape["n_slots"] = int(self.tape.n_slots)
        return (Function, (tape, self.arg_shapes, self.out_shapes, self.out_is_tuple, self.name))

    # ---- facts ----

    @property
    def n_instructions(self):
        """Instructions on the tape."""
        return int(self.tape.n_instr)

    @property
    def n_slots(self):
        """Work slots one evaluation needs (inputs, constants, temporaries)."""
        return int(self.tape.n_slots)

    @property
    def n_inputs(self):
        return int(self.tape.n_in)

    @property
    def n_outputs(self):
        return int(self.tape.n_out)

    def _run_table(self):
        """The runs of the single-point value sweep, (n_runs, JX_RUN_FIELDS): length, steps
        of dst, a, b, s, flags; empty when the tape has too few long runs to use them."""
        return self._runs.reshape(-1, JX_RUN_FIELDS) if self.tape.runs != NULL else (
            np.zeros((0, JX_RUN_FIELDS), dtype=np.int32))

    def _fixed_partials(self):
        """(fixed, d0, d1): which instructions have constant partials, and those constants."""
        return self._derived

    def tape_arrays(self):
        """The tape as read-only NumPy arrays (op, dst, a, b, imm, out_slot, const_value)."""
        return dict(self._arrays)

    def __repr__(self):
        ins = ", ".join(_shape_str(s) for s in self.arg_shapes)
        outs = ", ".join(_shape_str(s) for s in self.out_shapes)
        if self.out_is_tuple:
            outs = "(" + outs + ("," if len(self.out_shapes) == 1 else "") + ")"
        return (f"<jacext.Function {self.name}: inputs {ins} -> outputs {outs}; "
                f"{self.tape.n_instr} instructions, {self.tape.n_slots} work slots "
                f"({self.tape.n_in} inputs, {self.tape.n_const} constants)"
                + self._colour_note() + ">")

    def _colour_note(self):
        hit = self._sparse_cache.get(("colouring", 0))
        if hit is None:
            return ""
        col, p, row, q = hit
        return f"; sparse: {p} column colours, {q} row colours"


    def disassemble(self, file=None):
        """Print the tape, one instruction a line (to ``file``, default stdout)."""
        import sys
        lines = [f"; {self!r}"]
        ops = self._arrays["op"]
        dst = self._arrays["dst"]
        a = self._arrays["a"]
        b = self._arrays["b"]
        imm = self._arrays["imm"]
        n_in = self.tape.n_in
        for k, v in enumerate(self._arrays["const_value"]):
            lines.append(f"       s{n_in + k} = {float(v)!r}")
        for i in range(self.tape.n_instr):
            word = int(ops[i])
            op = word & JX_OP_MASK
            name = jx_op_names[op].decode()
            if jx_op_arity[op] == 3:
                args = f"s{int(imm[i])} ? s{a[i]} : s{b[i]}"
            elif jx_op_arity[op] == 1:
                args = f"s{a[i]}"
            elif word & JX_A_IMM:
                args = f"{float(imm[i])!r}, s{b[i]}"
            elif word & JX_B_IMM:
                args = f"s{a[i]}, {float(imm[i])!r}"
            else:
                args = f"s{a[i]}, s{b[i]}"
            lines.append(f"{i:6d} s{dst[i]} = {name} {args}")
        outs = self._arrays["out_slot"]
        lines.append("; outputs: " + " ".join(f"s{int(s)}" for s in outs))
        print("\n".join(lines), file=file if file is not None else sys.stdout)

    # ---- helpers ----

    cdef cnp.ndarray _columns(self, argnums):
        """Input indices (int32) of the selected arguments, cached per argnums."""
        cols = self._cols.get(argnums)
        if cols is not None:
            return cols
        if isinstance(argnums, (int, np.integer)):
            nums = (int(argnums),)
        else:
            nums = tuple(int(k) for k in argnums)
        parts = []
        for k in nums:
            if not -len(self.arg_shapes) <= k < len(self.arg_shapes):
                raise ValueError(f"jacext: argnums {argnums!r} names argument {k}, but "
                                 f"{self.name} takes {len(self.arg_shapes)} argument(s)")
            k %= len(self.arg_shapes)
            parts.append(np.arange(self._arg_offsets[k], self._arg_offsets[k + 1], dtype=np.int32))
        cols = np.ascontiguousarray(np.concatenate(parts) if parts else np.zeros(0, np.int32))
        cols.setflags(write=False)
        self._cols[argnums] = cols
        return cols

    cdef jx_work *_take_work(self, int32_t lanes) except NULL:
        """The Function's own work memory if free, else a fresh one (caller frees)."""
        cdef jx_work *w
        if not self._work_busy and self._has_work and self._work.lanes >= lanes:
            self._work_busy = True
            return &self._work
        if not self._work_busy:
            if self._has_work:
                jx_work_free(&self._work)
                self._has_work = False
            _raise_status(jx_work_init(&self._work, &self.tape, lanes))
            self._has_work = True
            self._work_busy = True
            return &self._work
        w = <jx_work *>malloc(sizeof(jx_work))
        if w == NULL:
            raise MemoryError("jacext: out of memory")
        st = jx_work_init(w, &self.tape, lanes)
        if st != JX_OK:
            free(w)
            _raise_status(st)
        return w

    cdef void _give_work(self, jx_work *w) noexcept:
        if w == &self._work:
            self._work_busy = False
        else:
            jx_work_free(w)
            free(w)

    cdef int32_t _lanes(self, int mode, int32_t n_cols):
        cdef int32_t need = n_cols if mode == JX_MODE_FORWARD else self.tape.n_out
        if need > JX_MAX_LANES:
            need = JX_MAX_LANES
        return need if need > 0 else 1

    cdef int _mode(self, mode, Py_ssize_t n_cols) except -1:
        if mode == "auto":
            # cost of the sweeps: one tangent lane per column or one adjoint lane per row
            return JX_MODE_FORWARD if n_cols <= self.tape.n_out else JX_MODE_REVERSE
        m = _MODES.get(mode)
        if m is None:
            raise ValueError(f"jacext: mode must be 'auto', 'forward' or 'reverse'; got {mode!r}")
        return m

    def _prepare(self, args, int n_args):
        """(x, batch_shape): x float64 C-contiguous, (n_in,) or (N, n_in)."""
        if n_args != len(self.arg_shapes):
            raise TypeError(f"jacext: {self.name} was compiled for {len(self.arg_shapes)} "
                            f"argument(s); got {n_args}")
        arrays = []
        batch_shapes = []
        for k in range(n_args):
            arrays.append(_as_real_array(args[k], k))
            want = self.arg_shapes[k]
            got = arrays[k].shape
            nd = len(want)
            if len(got) < nd or tuple(got[len(got) - nd:]) != want:
                raise ValueError(
                    f"jacext: argument {k} of {self.name} must have shape {_shape_str(want)}"
                    f" (or (..., {', '.join(map(str, want))}) for a batch); got shape "
                    f"{_shape_str(got)}")
            batch_shapes.append(tuple(got[:len(got) - nd]))
        try:
            batch = batch_shapes[0] if n_args == 1 else np.broadcast_shapes(*batch_shapes)
        except ValueError:
            raise ValueError("jacext: the batch shapes of the arguments do not broadcast: "
                             + ", ".join(_shape_str(s) for s in batch_shapes)) from None
        if not batch:
            if n_args == 1:
                return np.ascontiguousarray(arrays[0]).reshape(-1), batch
            return np.concatenate([a.reshape(-1) for a in arrays]), batch
        n_points = math.prod(batch)
        width = (int(self.tape.n_in),)
        if n_args == 1:   # one argument: its own rows, no broadcasting
            return np.ascontiguousarray(arrays[0]).reshape(batch + width), batch
        # explicit widths, not -1: an empty batch (0 points) must reshape too
        cols = [np.broadcast_to(a, batch + a.shape[len(a.shape) - len(s):])
                .reshape(n_points, math.prod(s))
                for a, s in zip(arrays, self.arg_shapes)]
        if len(cols) == 1:
            return np.ascontiguousarray(cols[0]).reshape(batch + width), batch
        return np.ascontiguousarray(np.concatenate(cols, axis=1)).reshape(batch + width), batch

    def _outputs(self, cnp.ndarray y, tuple batch):
        """Split flat outputs (..., n_out) into the traced output structure."""
        if not self.out_is_tuple:
            return y.reshape(batch + self.out_shapes[0])
        parts = []
        for k, s in enumerate(self.out_shapes):
            lo, hi = self._out_offsets[k], self._out_offsets[k + 1]
            parts.append(np.ascontiguousarray(y[..., lo:hi]).reshape(batch + s))
        return tuple(parts)

    def _n_threads(self, threads, Py_ssize_t n_points, Py_ssize_t work_per_point):
        if threads is None:
            threads = _usable_cores()
        elif not isinstance(threads, (int, np.integer)) or threads < 1:
            raise ValueError(f"jacext: threads must be a positive int or None; got {threads!r}")
        threads = int(threads)
        if threads <= 1:
            return 1
        per = max(1, n_points * max(work_per_point, 1) // MIN_WORK_PER_THREAD)
        return int(max(1, min(threads, per, n_points)))

    def _n_groups(self):
        """How many groups of like instructions the Jacobian-tape builders work in."""
        n_groups = self._sparse_cache.get(("n_groups",))
        if n_groups is None:
            a = self._arrays
            n_groups = int(tape_groups(a["op"], a["imm"], a["dst"], a["a"], a["b"]).shape[0])
            self._sparse_cache[("n_groups",)] = n_groups
        return n_groups

    def _jac_tape_after(self, argnums, int m, Py_ssize_t n_cols, bint sparse):
        """How many points' Jacobians (argnums, mode m, sparse or not) the sweeps do before
        the Jacobian tape is built: the build's estimated cost over the sweeps' work per
        point (derivative.build_cost), at most JAC_TAPE_AFTER_POINTS."""
        cdef int64_t n_instr = max(int(self.tape.n_instr), 1)
        build = _derivative.build_cost(_MODE_NAMES[m], n_instr, self._n_groups())
        if sparse:    # values plus the sparse evaluation's sweeps
            per_point = n_instr + int(self._best_sparse(argnums)[1])
        else:
            per_point = n_instr * (1 + (n_cols if m == JX_MODE_FORWARD else self.tape.n_out))
        return int(min(JAC_TAPE_AFTER_POINTS, max(1, -(-build // per_point))))

    def _jac_tape(self, argnums, int m, cnp.ndarray cols, Py_ssize_t n_points, bint sparse=False,
                  bint values=True):
        """The Jacobian tape (jacext/derivative.py) for these columns in mode m, as a
        Function, or None: made once ``n_points`` over the calls that asked for it reach
        ``_jac_tape_after``, then cached.  Dense: the n_out x n_cols Jacobian after the
        values; sparse: the pattern's nonzeros, in CSR order; values=False
        leaves the function's values out (and what only they need)."""
        key = ("jac_tape", argnums, m, sparse, values)
        hit = self._sparse_cache.get(key)
        if hit is not None:
            return hit or None
        n_dirs = cols.shape[0] if m == JX_MODE_FORWARD else self.tape.n_out
        work = int(self.tape.n_instr) * (1 + int(n_dirs))
        max_instr = JAC_TAPE_MAX_INSTR if m == JX_MODE_FORWARD or _derivative.reverse_in_bulk(
            int(self.tape.n_instr), self._n_groups()) else JAC_TAPE_MAX_INSTR // 10
        if (not sparse and work > JAC_TAPE_MAX_WORK) or n_dirs == 0 or (
                sparse and int(self.tape.n_instr) > max_instr):
            self._sparse_cache[key] = False
            return None
        count = ("jac_tape_points",) + key[1:]
        seen = self._sparse_cache.get(count, 0) + n_points
        if seen < self._jac_tape_after(argnums, m, cols.shape[0], sparse):
            self._sparse_cache[count] = seen
            return None
        tape = dict(self._arrays)
        tape["n_in"] = int(self.tape.n_in)
        pattern = self._pattern(argnums) if sparse else None
        size = pattern[1].shape[0] if sparse else int(self.tape.n_out) * int(cols.shape[0])
        # the budget: a few nodes per term of the sweeps it replaces
        budget = 4 * (int(self.tape.n_instr) + 4 * size if sparse else work) + 1000
        jt = _derivative.jacobian_tape(tape, self._derived, cols, _MODE_NAMES[m], budget,
                                       pattern=pattern, values=values)
        result = False
        # worth it unless its one value sweep is longer than the sweeps it replaces, which
        # store two partials per instruction and then read them back per direction
        if jt is not None and jt["op"].shape[0] <= 2 * work:
            n_total = int(self.tape.n_out) * values + size
            result = Function(jt, self.arg_shapes, ((n_total,),), False, self.name + "'")
        self._sparse_cache[key] = result
        if (result and sparse and not values and argnums == 0
                and self._auto_colours(0) != 0 and _tape_mode(self._auto_colours(0)) == m
                and len(self.arg_shapes) == 1 and not self.out_is_tuple):
            # dense auto Jacobians of a single point take it straight (jacobian's fast path)
            self._jt0 = result
            self._jt0_ptr, self._jt0_idx = pattern
        return result or None

    cdef int _batch(self, int task, int mode, cnp.ndarray cols, cnp.ndarray colour,
                    int32_t n_colours, cnp.ndarray x, cnp.ndarray seed, cnp.ndarray y, cnp.ndarray out,
                    int n_threads, Function jac_tape=None) except -1:
        """One C call over the rows of x (C-contiguous arrays; None for what a task lacks)."""
        cdef jx_batch job
        job.task = task
        job.mode = mode
        job.cols = <const int32_t *>cnp.PyArray_DATA(cols) if cols is not None else NULL
        job.n_cols = <int32_t>cols.shape[0] if cols is not None else 0
        job.colour = <const int32_t *>cnp.PyArray_DATA(colour) if colour is not None else NULL
        job.n_colours = n_colours
        job.n_points = x.shape[0]
        job.x = <const double *>cnp.PyArray_DATA(x)
        job.seed = <const double *>cnp.PyArray_DATA(seed) if seed is not None else NULL
        job.y = <double *>cnp.PyArray_DATA(y) if y is not None else NULL
        job.out = <double *>cnp.PyArray_DATA(out) if out is not None else NULL
        job.cone_ptr = NULL
        job.cone = NULL
        job.row_ptr = NULL
        job.nz_input = NULL
        job.jac_tape = &jac_tape.tape if jac_tape is not None else NULL
        return self._run_batch(&job, n_threads)

    cdef int _run_batch(self, jx_batch *job, int n_threads) except -1:
        cdef int st
        with nogil:
            st = jx_batch_run(&self.tape, job, n_threads)
        return _raise_status(st)

    # ---- values ----

    def __call__(self, *args):
        """The function's value; leading axes beyond the traced shapes are a batch."""
        cdef cnp.ndarray x, y
        cdef jx_work *w
        cdef int st
        if (len(args) == 1 and self._single_shape is not None and type(args[0]) is np.ndarray
                and cnp.PyArray_TYPE(<cnp.ndarray>args[0]) == cnp.NPY_DOUBLE
                and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>args[0])
                and _shape_is(<cnp.ndarray>args[0], self._single_shape)):
            x, batch = <cnp.ndarray>args[0], ()   # fast path: one point, nothing to convert
        else:
            x, batch = self._prepare(args, len(args))
        if not batch:
            y = np.empty(self.tape.n_out, dtype=np.float64)
            w = self._take_work(1)
            try:
                if self.tape.n_instr > NOGIL_WORK:
                    with nogil:
                        st = jx_point_value(&self.tape, w, <const double *>cnp.PyArray_DATA(x),
                                            <double *>cnp.PyArray_DATA(y))
                else:
                    st = jx_point_value(&self.tape, w, <const double *>cnp.PyArray_DATA(x),
                                        <double *>cnp.PyArray_DATA(y))
            finally:
                self._give_work(w)
            _raise_status(st)
            return self._outputs(y, batch)
        x = x.reshape(-1, self.tape.n_in)
        y = np.empty((x.shape[0], self.tape.n_out), dtype=np.float64)
        self._batch(JX_TASK_VALUE, 0, None, None, 0, x, None, y, None,
                    self._n_threads(None, x.shape[0], self.tape.n_instr))
        return self._outputs(y, batch)

    # ---- Jacobians ----

    def jacobian(self, *args, argnums=0, mode="auto", out=None, threads=None, sparse=False):
        """The Jacobian d out / d args[argnums], shape out.shape + arg.shape.

        ``argnums`` an int or a tuple (then a tuple of Jacobians); tuple outputs
        give a tuple over outputs (over outputs, then arguments, as torch).
        ``mode``: "auto" (cheapest sweep), "forward" or "reverse".  ``out``: a
        preallocated float64 C-contiguous array of the result's shape.  A batch
        (leading axes) gives batch.shape + out.shape + arg.shape, ``threads``
        splitting it (None: all cores).

        ``sparse=True`` returns a ``scipy.sparse.csr_array`` of shape
        (out.size, arg.size) filled from compressed sweeps (column or row
        colouring of the exact pattern, :meth:`sparsity`), never building the
        dense matrix; for a batch, a :class:`jacext.sparse.SparseJacobians`
        (one pattern, values per point).
        """
        cdef cnp.ndarray x, jac, cols
        if sparse:
            if out is not None:
                raise ValueError("jacext: out= is for dense Jacobians; sparse=True returns "
                                 "a new scipy.sparse.csr_array")
            return self._sparse_jacobian(args, argnums, mode, threads)
        cdef jx_work *w
        cdef int m, st
        cdef int32_t n_cols
        # Fast path, sparse: dense auto from the sparse Jacobian tape once it is made.
        if (self._jt0 is not None and len(args) == 1 and argnums == 0 and mode == "auto"
                and out is None and type(args[0]) is np.ndarray):
            x = <cnp.ndarray>args[0]
            if (cnp.PyArray_TYPE(x) == cnp.NPY_DOUBLE and cnp.PyArray_IS_C_CONTIGUOUS(x)
                    and _shape_is(x, self._single_shape)):
                vals = _eval_jac_tape(self._jt0, x, 0)
                if vals is not None:
                    jac = np.zeros(self._single_jac_shape, dtype=np.float64)
                    _fill_rows(jac, self._jt0_ptr, self._jt0_idx, vals, True)
                    return jac
        # Fast path: one argument of exactly the traced shape, one output.
        if (len(args) == 1 and argnums == 0 and self._single_jac_shape is not None
                and self._single_fits and type(args[0]) is np.ndarray
                and (mode != "auto" or self._auto0 == 0
                     or (self._auto0 < 0 and self._set_auto0() == 0))):
            x = <cnp.ndarray>args[0]
            if (cnp.PyArray_TYPE(x) == cnp.NPY_DOUBLE and cnp.PyArray_IS_C_CONTIGUOUS(x)
                    and _shape_is(x, self._single_shape)):
                cols = self._cols0
                n_cols = <int32_t>cols.shape[0]
                m = self._mode(mode, n_cols)
                if out is None:
                    jac = np.empty(self._single_jac_shape, dtype=np.float64)
                else:
                    jac = self._check_out(out, self._single_jac_shape)
                w = self._take_work(self._lanes(m, n_cols))
                try:
                    if self.tape.n_instr * w.lanes > NOGIL_WORK:
                        with nogil:
                            st = jx_point_jacobian(&self.tape, w,
                                                   <const double *>cnp.PyArray_DATA(x), NULL,
                                                   <double *>cnp.PyArray_DATA(jac),
                                                   <const int32_t *>cnp.PyArray_DATA(cols),
                                                   n_cols, m)
                    else:
                        st = jx_point_jacobian(&self.tape, w, <const double *>cnp.PyArray_DATA(x),
                                               NULL, <double *>cnp.PyArray_DATA(jac),
                                               <const int32_t *>cnp.PyArray_DATA(cols), n_cols, m)
                finally:
                    self._give_work(w)
                _raise_status(st)
                return jac
        return self._jacobian(args, argnums, mode, out, threads, False)[1]

    def value_and_jacobian(self, *args, argnums=0, mode="auto", threads=None):
        """(value, Jacobian) from one forward sweep."""
        return self._jacobian(args, argnums, mode, None, threads, True)

    cdef cnp.ndarray _check_out(self, out, tuple shape):
        if not isinstance(out, np.ndarray):
            raise TypeError(f"jacext: out must be a NumPy array; got {type(out).__name__}")
        arr = <cnp.ndarray>out
        if cnp.PyArray_TYPE(arr) != cnp.NPY_DOUBLE or not cnp.PyArray_IS_C_CONTIGUOUS(arr) \
                or not cnp.PyArray_ISWRITEABLE(arr):
            raise ValueError("jacext: out must be a writeable, C-contiguous float64 array "
                             "(np.empty(shape))")
        if not _shape_is(arr, shape):
            raise ValueError(f"jacext: out has shape {_shape_str((<object>arr).shape)}; the Jacobian "
                             f"has shape {_shape_str(shape)}")
        return arr

    def _jacobian(self, tuple args, argnums, mode, out, threads, bint want_value):
        cdef cnp.ndarray x, cols, mat, y
        cdef Function jt
        cdef jx_work *w
        cdef int m, st
        cdef int32_t n_cols
        multi = not isinstance(argnums, (int, np.integer))
        if multi:
            argnums = tuple(int(k) for k in argnums)
        # The size check comes before _prepare: that copies the batch (a cheap
        # np.broadcast_to view included), which alone may exhaust memory.
        early = _batch_of_shapes(args, self.arg_shapes)
        if early is not None:
            self._check_jacobian_size(early, <int32_t>self._columns(argnums).shape[0])
        x, batch = self._prepare(args, len(args))
        cols = self._columns(argnums)
        n_cols = <int32_t>cols.shape[0]
        m = self._mode(mode, n_cols)
        self._check_jacobian_size(batch, n_cols)
        single_result = not multi and not self.out_is_tuple
        direct = out is not None and single_result
        jt = self._jac_tape(argnums, m, cols, math.prod(batch)) if batch else None
        # (a Jacobian tape skips structural zeros by itself: no colouring on top)
        sparse_mode = self._auto_colours(argnums) if mode == "auto" and jt is None else 0
        if direct:
            arg = argnums % len(self.arg_shapes)
            mat = self._check_out(out, batch + self.out_shapes[0] + self.arg_shapes[arg])
        elif sparse_mode:
            mat = np.zeros(batch + (self.tape.n_out, n_cols), dtype=np.float64)
        else:
            mat = np.empty(batch + (self.tape.n_out, n_cols), dtype=np.float64)
        y = np.empty(batch + (self.tape.n_out,), dtype=np.float64) if want_value else None
        if sparse_mode:
            # compressed sweeps over the colours (or the sparse Jacobian tape), then the
            # nonzeros into the dense result
            vals, yv = self._compressed(x, batch, argnums, sparse_mode, threads, want_value)
            ptr, idx = self._pattern(argnums)
            if (not batch and cnp.PyArray_IS_C_CONTIGUOUS(mat)
                    and cnp.PyArray_IS_C_CONTIGUOUS(vals) and cnp.PyArray_TYPE(vals) == cnp.NPY_DOUBLE):
                _fill_rows(mat, ptr, idx, vals, not direct)   # (the caller's out: zeros too)
            else:
                rows = self._rows(argnums)
                where = self._sparse_cache.get(("scatter", argnums))
                if where is None:   # flat index of each nonzero in the dense result
                    where = rows * n_cols + idx
                    self._sparse_cache[("scatter", argnums)] = where
                flat = mat.reshape(-1, int(self.tape.n_out) * n_cols)
                if direct:
                    flat[...] = 0.0
                if batch:
                    flat[:, where] = vals.reshape(flat.shape[0], where.shape[0])
                else:
                    flat[0, where] = vals
            if want_value:
                y = yv
        elif not batch:
            w = self._take_work(self._lanes(m, n_cols))
            try:
                with nogil:
                    st = jx_point_jacobian(&self.tape, w, <const double *>cnp.PyArray_DATA(x),
                                           <double *>cnp.PyArray_DATA(y) if y is not None else NULL,
                                           <double *>cnp.PyArray_DATA(mat),
                                           <const int32_t *>cnp.PyArray_DATA(cols), n_cols, m)
            finally:
                self._give_work(w)
            _raise_status(st)
        else:
            x = x.reshape(-1, self.tape.n_in)
            work = jt.tape.n_instr if jt is not None else self.tape.n_instr * (1 + n_cols)
            self._batch(JX_TASK_JACOBIAN, m, cols, None, 0, x, None, y, mat,
                        self._n_threads(threads, x.shape[0], work), jt)
        result = self._split_jacobian(mat, batch, argnums, multi)
        if direct:
            result = out      # the caller's array itself, as the fast path returns it
        elif out is not None:
            _copy_into(out, result)
            result = out
        value = self._outputs(y, batch) if want_value else None
        return value, result

    def _check_jacobian_size(self, tuple batch, Py_ssize_t n_cols):
        """MemoryError, before anything is allocated, for a dense Jacobian beyond RAM."""
        n_points = math.prod(batch) if batch else 1
        nbytes = 8 * n_points * int(self.tape.n_out) * int(n_cols)
        mem = _physical_memory()
        if nbytes > mem:
            raise MemoryError(
                f"jacext: the dense Jacobian would take {nbytes / 2**30:.1f} GiB "
                f"({n_points} x {self.tape.n_out} x {n_cols} float64), more than this "
                f"machine's {mem / 2**30:.1f} GiB of memory; ask for a sparse Jacobian "
                f"(sparse=True), Jacobian-vector products (jvp/vjp), or a smaller batch")

    def _split_jacobian(self, cnp.ndarray mat, tuple batch, argnums, bint multi):
        """(..., n_out, n_cols) -> the nested structure of Jacobians."""
        nums = argnums if multi else (argnums,)
        nums = tuple(k % len(self.arg_shapes) for k in nums)
        mat = mat.reshape(batch + (self.tape.n_out, sum(self._arg_sizes[k] for k in nums)))
        col_lo = [0]
        for k in nums:
            col_lo.append(col_lo[-1] + self._arg_sizes[k])
        per_out = []
        for o, oshape in enumerate(self.out_shapes):
            rows = mat[..., self._out_offsets[o]:self._out_offsets[o + 1], :]
            per_arg = []
            for j, k in enumerate(nums):
                block = rows[..., col_lo[j]:col_lo[j + 1]]
                if len(nums) > 1 or self.out_is_tuple:
                    block = np.ascontiguousarray(block)
                per_arg.append(block.reshape(batch + oshape + self.arg_shapes[k]))
            per_out.append(tuple(per_arg) if multi else per_arg[0])
        return tuple(per_out) if self.out_is_tuple else per_out[0]

    # ---- sparsity ----

    def _pattern(self, argnums):
        """(indptr, indices) of the exact pattern, cached per argnums."""
        key = ("pattern", argnums)
        hit = self._sparse_cache.get(key)
        if hit is not None:
            return hit
        cdef cnp.ndarray cols = self._columns(argnums)
        cdef cnp.ndarray col_of_input = np.full(max(self.tape.n_in, 1), -1, dtype=np.int32)
        col_of_input[cols] = np.arange(cols.shape[0], dtype=np.int32)
        cdef int32_t *indptr = NULL
        cdef int32_t *indices = NULL
        cdef int st
        with nogil:
            st = jx_sparsity(&self.tape, <const int32_t *>cnp.PyArray_DATA(col_of_input),
                             &indptr, &indices)
        _raise_status(st)
        n_out = self.tape.n_out
        try:
            ptr = np.asarray(<int32_t[:n_out + 1]>indptr).copy()
            nnz = int(ptr[n_out])
            idx = (np.asarray(<int32_t[:nnz]>indices).copy() if nnz
                   else np.zeros(0, dtype=np.int32))
        finally:
            free(indptr)
            free(indices)
        ptr.setflags(write=False)
        idx.setflags(write=False)
        self._sparse_cache[key] = (ptr, idx)
        return ptr, idx

    def _rows(self, argnums):
        """Row number of every nonzero of the pattern (cached)."""
        rows = self._sparse_cache.get(("rows", argnums))
        if rows is None:
            ptr, idx = self._pattern(argnums)
            rows = np.repeat(np.arange(self.tape.n_out, dtype=np.intp), np.diff(ptr))
            self._sparse_cache[("rows", argnums)] = rows
        return rows

    def sparsity(self, argnums=0):
        """The exact structural pattern of d out / d args[argnums].

        A ``scipy.sparse.csr_array`` of bool, shape (out.size, arg.size) (the
        outputs and the selected arguments flattened and concatenated).  An
        entry is structurally nonzero when the output depends on that input
        through differentiable operations; ``np.where``'s condition, floor,
        sign and comparisons contribute no dependence.  Computed once.
        """
        ptr, idx = self._pattern(argnums)
        return _sparse.pattern_array(ptr, idx, (self.tape.n_out, self._columns(argnums).shape[0]))

    def _colouring(self, argnums):
        """Column and row colourings of the pattern, cached: (col, p, row, q)."""
        key = ("colouring", argnums)
        hit = self._sparse_cache.get(key)
        if hit is not None:
            return hit
        ptr, idx = self._pattern(argnums)
        n_cols = int(self._columns(argnums).shape[0])
        n_out = int(self.tape.n_out)
        # Greedy colouring of columns costs the sum of the squared row lengths
        # (each column looks at every row it is in); of rows, the same over
        # columns.  Above the budget (a dense-ish pattern, where colouring buys
        # little) every column or row keeps its own colour.
        budget = 4 * 10**8
        tptr, tidx = _sparse.transpose_pattern(ptr, idx, (n_out, n_cols))
        col = _colour(ptr, idx, n_out, n_cols, budget)
        row = _colour(tptr, tidx, n_cols, n_out, budget)
        result = (col, int(col.max()) + 1 if col.size else 0,
                  row, int(row.max()) + 1 if row.size else 0)
        self._sparse_cache[key] = result
        return result

    def colours(self, argnums=0):
        """(column colours, row colours): the sweeps a sparse Jacobian costs."""
        col, p, row, q = self._colouring(argnums)
        return p, q

    def _compressed(self, cnp.ndarray x, tuple batch, argnums, int m, threads, bint want_value):
        """Compressed Jacobians of x (one point or rows of a batch): (nonzeros, y)."""
        cdef cnp.ndarray cols = self._columns(argnums)
        hit = (self._batch_sparse_tape(x, batch, argnums, cols, want_value, m, threads)
               if batch else self._point_sparse_tape(x, argnums, cols, want_value, m))
        if hit is not None:
            return hit
        return self._compressed_sweeps(x, batch, argnums, m, threads, want_value)

    def _compressed_sweeps(self, cnp.ndarray x, tuple batch, argnums, int m, threads,
                           bint want_value):
        """``_compressed`` by the sweeps (compressed, or per-output cones)."""
        cdef cnp.ndarray cols = self._columns(argnums)
        cdef cnp.ndarray colour, comp, y
        cdef jx_work *w
        cdef int st
        cdef int32_t n_cols = <int32_t>cols.shape[0], n_colours
        if m == JX_MODE_SUBGRAPH:
            return self._subgraph(x, batch, argnums, threads, want_value)
        col, p, row, q = self._colouring(argnums)
        if m == JX_MODE_FORWARD:
            colour, n_colours = col, p
            shape = (self.tape.n_out, p)
        else:
            colour, n_colours = row, q
            shape = (q, n_cols)
        n_points = math.prod(batch) if batch else 1
        comp = np.empty((n_points,) + shape if batch else shape, dtype=np.float64)
        y = np.empty(batch + (self.tape.n_out,), dtype=np.float64) if want_value else None
        if not batch:
            w = self._take_work(min(max(n_colours, 1), JX_MAX_LANES))
            try:
                with nogil:
                    st = jx_point_compressed(&self.tape, w, <const double *>cnp.PyArray_DATA(x),
                                             <double *>cnp.PyArray_DATA(y) if y is not None else NULL,
                                             <double *>cnp.PyArray_DATA(comp),
                                             <const int32_t *>cnp.PyArray_DATA(cols), n_cols,
                                             <const int32_t *>cnp.PyArray_DATA(colour), n_colours, m)
            finally:
                self._give_work(w)
            _raise_status(st)
        else:
            x = x.reshape(-1, self.tape.n_in)
            self._batch(JX_TASK_COMPRESSED, m, cols, colour, n_colours, x, None, y, comp,
                        self._n_threads(threads, x.shape[0], self.tape.n_instr * (1 + n_colours)))
        ptr, idx = self._pattern(argnums)
        rows = self._rows(argnums)
        # one entry per nonzero: a valid colouring gives each its own place in
        # the compressed matrix; its flat index there is computed once
        gather = self._sparse_cache.get(("gather", argnums, m))
        if gather is None:
            if m == JX_MODE_FORWARD:
                gather = rows * n_colours + col[idx]
            else:
                gather = row[rows].astype(np.intp) * n_cols + idx
            self._sparse_cache[("gather", argnums, m)] = gather
        if batch:
            vals = np.take(comp.reshape(comp.shape[0], math.prod(shape)), gather, axis=1)
        else:
            vals = np.take(comp.reshape(-1), gather)
        return vals, y

    def _batch_sparse_tape(self, cnp.ndarray x, tuple batch, argnums, cnp.ndarray cols,
                           bint want_value, int m, threads):
        """(nonzeros (N, nnz), y) of a batch from the sparse Jacobian tape in one batched
        value sweep, or None (no tape yet).  Points whose nonzeros are not all finite are
        done again by the sweeps, whose zero kills decide there."""
        cdef Py_ssize_t n_points = math.prod(batch)
        cdef Function jt = self._jac_tape(argnums, _tape_mode(m), cols, n_points, True,
                                          want_value)
        if jt is None:
            return None
        cdef Py_ssize_t n_y = self.tape.n_out if want_value else 0
        X = x.reshape(-1, self.tape.n_in)
        r = np.empty((n_points, jt.tape.n_out), dtype=np.float64)
        jt._batch(JX_TASK_VALUE, 0, None, None, 0, X, None, r, None,
                  jt._n_threads(threads, n_points, jt.tape.n_instr))
        vals = np.ascontiguousarray(r[:, n_y:]) if n_y else r
        y = np.ascontiguousarray(r[:, :n_y]) if want_value else None
        bad = np.flatnonzero(~np.isfinite(vals).all(axis=1))
        if bad.shape[0]:
            redo, y_redo = self._compressed_sweeps(np.ascontiguousarray(X[bad]),
                                                   (bad.shape[0],), argnums, m, threads,
                                                   want_value)
            vals[bad] = redo
            if want_value:
                y[bad] = y_redo
        return vals, (y.reshape(batch + (n_y,)) if want_value else None)

    def _point_sparse_tape(self, cnp.ndarray x, argnums, cnp.ndarray cols, bint want_value,
                           int m=JX_MODE_FORWARD):
        """(nonzeros, y) at one point from the sparse Jacobian tape, or None (no tape yet,
        or a value that is not finite: the sweeps, with their zero kills, decide then)."""
        # the forward colouring's sweeps in forward mode; the reverse colouring's and the
        # per-output cones' (the same adjoint sums, term for term) in reverse mode
        cdef Function jt = self._jac_tape(argnums, _tape_mode(m), cols, 1, True, want_value)
        cdef Py_ssize_t n_out = self.tape.n_out if want_value else 0
        if jt is None:
            return None
        r = _eval_jac_tape(jt, x, n_out)
        if r is None:
            return None
        return r[n_out:], (r[:n_out] if want_value else None)

    def _subgraph(self, cnp.ndarray x, tuple batch, argnums, threads, bint want_value):
        """Sparse values by one reverse sweep per output over its cone."""
        cdef cnp.ndarray cols = self._columns(argnums)
        cdef cnp.ndarray ptr, idx, nz_input, cone_ptr, cone, vals, y
        cdef jx_work *w
        cdef jx_batch job
        cdef int st
        ptr, idx = self._pattern(argnums)
        cone_ptr, cone = self._cones(self._best_sparse(argnums)[1])
        nz_input = self._sparse_cache.get(("nz_input", argnums))
        if nz_input is None:
            nz_input = np.ascontiguousarray(cols[idx], dtype=np.int32)
            self._sparse_cache[("nz_input", argnums)] = nz_input
        nnz = int(idx.shape[0])
        n_points = math.prod(batch) if batch else 1
        vals = np.empty((n_points, nnz) if batch else (nnz,), dtype=np.float64)
        y = np.empty(batch + (self.tape.n_out,), dtype=np.float64) if want_value else None
        if not batch:
            w = self._take_work(1)
            try:
                with nogil:
                    st = jx_point_subgraph(&self.tape, w, <const double *>cnp.PyArray_DATA(x),
                                           <double *>cnp.PyArray_DATA(y) if y is not None else NULL,
                                           <const int64_t *>cnp.PyArray_DATA(cone_ptr),
                                           <const int32_t *>cnp.PyArray_DATA(cone),
                                           <const int32_t *>cnp.PyArray_DATA(ptr),
                                           <const int32_t *>cnp.PyArray_DATA(nz_input),
                                           <double *>cnp.PyArray_DATA(vals))
            finally:
                self._give_work(w)
            _raise_status(st)
            return vals, y
        x = x.reshape(-1, self.tape.n_in)
        job.task = JX_TASK_SUBGRAPH
        job.mode = JX_MODE_SUBGRAPH
        job.cols = NULL
        job.n_cols = 0
        job.colour = NULL
        job.n_colours = 0
        job.n_points = x.shape[0]
        job.x = <const double *>cnp.PyArray_DATA(x)
        job.seed = NULL
        job.y = <double *>cnp.PyArray_DATA(y) if y is not None else NULL
        job.out = <double *>cnp.PyArray_DATA(vals)
        job.cone_ptr = <const int64_t *>cnp.PyArray_DATA(cone_ptr)
        job.cone = <const int32_t *>cnp.PyArray_DATA(cone)
        job.row_ptr = <const int32_t *>cnp.PyArray_DATA(ptr)
        job.nz_input = <const int32_t *>cnp.PyArray_DATA(nz_input)
        job.jac_tape = NULL
        self._run_batch(&job, self._n_threads(threads, x.shape[0], 3 * self.tape.n_instr))
        return vals, y

    cdef int _set_auto0(self) except -1:
        self._auto0 = self._auto_colours(0)
        return self._auto0

    def _auto_colours(self, argnums):
        """Sweep mode when compressed sweeps beat dense ones for a dense result, else 0.

        Only asked for Jacobians of more than 32 rows and columns (below that a
        dense sweep is already a few lanes); the pattern is found once.
        """
        key = ("auto", argnums)
        hit = self._sparse_cache.get(key)
        if hit is not None:
            return hit
        n_cols = int(self._columns(argnums).shape[0])
        n_out = int(self.tape.n_out)
        choice = 0
        if min(n_cols, n_out) > 32:
            mode, cost = self._best_sparse(argnums)
            if 2 * cost <= min(n_cols, n_out) * max(int(self.tape.n_instr), 1):
                choice = mode
        self._sparse_cache[key] = choice
        return choice

    def _cones(self, budget):
        """(cone_ptr, cone) of every output, or None when they pass ``budget`` entries."""
        hit = self._sparse_cache.get("cones")
        if hit is not None and (hit[0] is not None or hit[1] >= budget):
            return hit[0]
        cdef int64_t *ptr = NULL
        cdef int32_t *cone = NULL
        cdef int64_t limit = max(int(budget), 1)
        cdef int st
        with nogil:
            st = jx_cones(&self.tape, limit, &ptr, &cone)
        if st == JX_EARG:   # larger than the budget: not worth it
            self._sparse_cache["cones"] = (None, budget)
            return None
        _raise_status(st)
        n_out = int(self.tape.n_out)
        try:
            p = np.asarray(<int64_t[:n_out + 1]>ptr).copy()
            total = int(p[n_out])
            c = (np.asarray(<int32_t[:total]>cone).copy() if total
                 else np.zeros(1, dtype=np.int32))
        finally:
            free(ptr)
            free(cone)
        self._sparse_cache["cones"] = ((p, c), budget)
        return (p, c)

    def _best_sparse(self, argnums):
        """(mode, cost) of the cheapest sparse evaluation, in instruction-sweeps.

        Forward over p column colours costs p sweeps of the tape, reverse over
        q row colours q sweeps; one reverse sweep per output over its own
        dependency cone (CppAD's subgraph mode) costs the sum of the cone
        sizes, which wins when the outputs have small cones that colouring
        cannot separate (an arrow-head, a dense row among sparse ones).
        """
        key = ("best", argnums)
        hit = self._sparse_cache.get(key)
        if hit is not None:
            return hit
        col, p, row, q = self._colouring(argnums)
        T = max(int(self.tape.n_instr), 1)
        mode, cost = (JX_MODE_FORWARD, p * T) if p <= q else (JX_MODE_REVERSE, q * T)
        # A cone step (scattered reads and writes, its own clean-up) costs
        # about four lanes of a colour sweep, whose partials come fused with
        # the values (measured on broyden: 7000 cone steps took longer than
        # 3 colours of 6000 instructions).
        cones = self._cones(cost // 4)
        if cones is not None and 4 * int(cones[0][-1]) < cost:
            mode, cost = JX_MODE_SUBGRAPH, 4 * int(cones[0][-1])
        self._sparse_cache[key] = (mode, cost)
        return mode, cost

    def _sparse_mode(self, mode, argnums):
        if mode == "auto":
            return self._best_sparse(argnums)[0]
        return self._mode(mode, 1)

    def _csr(self, argnums, cnp.ndarray vals, cnp.ndarray ptr, cnp.ndarray idx, tuple shape):
        """A csr_array of these values on the pattern.  SciPy's constructor checks its
        arrays on every call (8 us at 3,000 nonzeros); the pattern is checked once, in a
        template, and each result is a shallow copy of it with its own arrays."""
        key = ("csr", argnums)
        template = self._sparse_cache.get(key)
        if template is None:
            import scipy.sparse as sp
            template = sp.csr_array((np.zeros(idx.shape[0]), idx, ptr), shape=shape)
            self._sparse_cache[key] = template
        mat = _copy.copy(template)
        mat.data = vals
        mat.indices = template.indices.copy()
        mat.indptr = template.indptr.copy()
        return mat

    def _sparse_jacobian(self, tuple args, argnums, mode, threads):
        x, batch = self._prepare(args, len(args))
        multi = not isinstance(argnums, (int, np.integer))
        if multi:
            argnums = tuple(int(k) for k in argnums)
        m = self._sparse_mode(mode, argnums)
        vals, _ = self._compressed(x, batch, argnums, m, threads, False)
        ptr, idx = self._pattern(argnums)
        shape = (self.tape.n_out, int(self._columns(argnums).shape[0]))
        if batch:
            full = _sparse.SparseJacobians(_sparse.pattern_array(ptr, idx, shape),
                                           vals.reshape(batch + (idx.shape[0],)))
            if multi or self.out_is_tuple:
                raise ValueError("jacext: sparse=True for a batch needs one output and one "
                                 "argument (a single pattern); compile a Function per block")
            return full
        mat = self._csr(argnums, vals, ptr, idx, shape)
        nums = argnums if multi else (argnums,)
        nums = tuple(k % len(self.arg_shapes) for k in nums)
        col_lo = [0]
        for k in nums:
            col_lo.append(col_lo[-1] + self._arg_sizes[k])
        per_out = []
        for o in range(len(self.out_shapes)):
            r0, r1 = self._out_offsets[o], self._out_offsets[o + 1]
            rows = mat if not self.out_is_tuple else mat[r0:r1]
            per_arg = [rows if len(nums) == 1 else rows[:, col_lo[j]:col_lo[j + 1]]
                       for j in range(len(nums))]
            per_out.append(tuple(per_arg) if multi else per_arg[0])
        return tuple(per_out) if self.out_is_tuple else per_out[0]

    # ---- products ----

    def jvp(self, *args):
        """``F.jvp(*args, tangents) -> (value, J @ tangents)`` (forward mode).

        ``tangents`` has the shape of the argument for a one-argument Function,
        else it is a tuple with one array per argument.
        """
        cdef cnp.ndarray x, v, y, ydot
        cdef jx_work *w
        cdef int st
        if len(args) != len(self.arg_shapes) + 1:
            raise TypeError(f"jacext: jvp takes the {len(self.arg_shapes)} argument(s) of "
                            f"{self.name} and then the tangents; got {len(args)} values")
        tangents = args[-1]
        if len(self.arg_shapes) == 1:
            tangents = (tangents,)
        elif not isinstance(tangents, (tuple, list)) or len(tangents) != len(self.arg_shapes):
            raise TypeError(f"jacext: tangents must be a tuple of {len(self.arg_shapes)} arrays, "
                            "one per argument")
        x, batch = self._prepare(args[:-1], len(args) - 1)
        v, vbatch = self._prepare(tuple(tangents), len(tangents))
        batch = np.broadcast_shapes(batch, vbatch)
        if not batch:
            y = np.empty(self.tape.n_out, dtype=np.float64)
            ydot = np.empty(self.tape.n_out, dtype=np.float64)
            w = self._take_work(1)
            try:
                with nogil:
                    st = jx_point_jvp(&self.tape, w, <const double *>cnp.PyArray_DATA(x),
                                      <const double *>cnp.PyArray_DATA(v),
                                      <double *>cnp.PyArray_DATA(y), <double *>cnp.PyArray_DATA(ydot))
            finally:
                self._give_work(w)
            _raise_status(st)
            return self._outputs(y, batch), self._outputs(ydot, batch)
        n_points = math.prod(batch)
        x = _broadcast_rows(x, batch, n_points)
        v = _broadcast_rows(v, batch, n_points)
        y = np.empty((n_points, self.tape.n_out), dtype=np.float64)
        ydot = np.empty((n_points, self.tape.n_out), dtype=np.float64)
        self._batch(JX_TASK_JVP, JX_MODE_FORWARD, None, None, 0, x, v, y, ydot,
                    self._n_threads(None, n_points, 2 * self.tape.n_instr))
        return self._outputs(y, batch), self._outputs(ydot, batch)

    def vjp(self, *args):
        """``F.vjp(*args, cotangent) -> (value, cotangent @ J)`` (reverse mode).

        ``cotangent`` has the output's structure; the result has one array per
        argument (a tuple when the Function takes several).
        """
        cdef cnp.ndarray x, u, y, xbar
        cdef jx_work *w
        cdef int st
        if len(args) != len(self.arg_shapes) + 1:
            raise TypeError(f"jacext: vjp takes the {len(self.arg_shapes)} argument(s) of "
                            f"{self.name} and then the output cotangent; got {len(args)} values")
        x, batch = self._prepare(args[:-1], len(args) - 1)
        u, ubatch = self._flat_cotangent(args[-1])
        batch = np.broadcast_shapes(batch, ubatch)
        if not batch:
            y = np.empty(self.tape.n_out, dtype=np.float64)
            xbar = np.empty(self.tape.n_in, dtype=np.float64)
            w = self._take_work(1)
            try:
                with nogil:
                    st = jx_point_vjp(&self.tape, w, <const double *>cnp.PyArray_DATA(x),
                                      <const double *>cnp.PyArray_DATA(u),
                                      <double *>cnp.PyArray_DATA(y), <double *>cnp.PyArray_DATA(xbar))
            finally:
                self._give_work(w)
            _raise_status(st)
        else:
            n_points = math.prod(batch)
            x = _broadcast_rows(x, batch, n_points)
            u = _broadcast_rows(u, batch, n_points)
            y = np.empty((n_points, self.tape.n_out), dtype=np.float64)
            xbar = np.empty((n_points, self.tape.n_in), dtype=np.float64)
            self._batch(JX_TASK_VJP, JX_MODE_REVERSE, None, None, 0, x, u, y, xbar,
                        self._n_threads(None, n_points, 2 * self.tape.n_instr))
        parts = []
        for k, s in enumerate(self.arg_shapes):
            lo, hi = self._arg_offsets[k], self._arg_offsets[k + 1]
            parts.append(np.ascontiguousarray(xbar[..., lo:hi]).reshape(batch + s))
        grads = parts[0] if len(parts) == 1 else tuple(parts)
        return self._outputs(y, batch), grads

    def _flat_cotangent(self, u):
        parts = (u,) if not self.out_is_tuple else tuple(u)
        if len(parts) != len(self.out_shapes):
            raise TypeError(f"jacext: the cotangent must have the output's structure: "
                            f"{len(self.out_shapes)} array(s)")
        arrays, batches = [], []
        for k, (p, s) in enumerate(zip(parts, self.out_shapes)):
            arr = _as_real_array(p, k)
            nd = len(s)
            if arr.ndim < nd or tuple(arr.shape[arr.ndim - nd:]) != s:
                raise ValueError(f"jacext: cotangent {k} must have shape {_shape_str(s)}; "
                                 f"got {_shape_str(arr.shape)}")
            arrays.append(arr)
            batches.append(arr.shape[:arr.ndim - nd])
        batch = np.broadcast_shapes(*batches)
        if not batch:
            return np.ascontiguousarray(np.concatenate([a.reshape(-1) for a in arrays])), batch
        n = math.prod(batch)
        cols = [np.broadcast_to(a, batch + s).reshape(n, math.prod(s))
                for a, s in zip(arrays, self.out_shapes)]
        return (np.ascontiguousarray(np.concatenate(cols, axis=1))
                .reshape(batch + (int(self.tape.n_out),)), batch)


def _batch_of_shapes(args, arg_shapes):
    """The broadcast batch shape of the arguments, from their shapes alone
    (nothing converted or copied); None where _prepare would raise."""
    if len(args) != len(arg_shapes):
        return None
    batches = []
    try:
        for a, want in zip(args, arg_shapes):
            got = tuple(np.shape(a))
            nd = len(want)
            if len(got) < nd or got[len(got) - nd:] != tuple(want):
                return None
            batches.append(got[:len(got) - nd])
        return tuple(np.broadcast_shapes(*batches))
    except Exception:
        return None


def _colour(ptr, idx, int32_t n_rows, int32_t n_cols, budget):
    """Greedy distance-2 colouring, largest-first; identity when it would cost too much."""
    cdef cnp.ndarray order = _sparse.largest_first(idx, n_cols)
    cdef cnp.ndarray colour = np.empty(n_cols, dtype=np.int32)
    cdef cnp.ndarray p = np.ascontiguousarray(ptr, dtype=np.int32)
    cdef cnp.ndarray q = np.ascontiguousarray(idx, dtype=np.int32)
    cdef int32_t n
    cdef int64_t limit = budget
    lengths = np.diff(p).astype(np.int64)
    if int(np.dot(lengths, lengths)) > limit:
        return np.arange(n_cols, dtype=np.int32)
    if q.shape[0] == 0:
        q = np.zeros(1, dtype=np.int32)
    with nogil:
        n = jx_colour_columns(n_rows, n_cols, <const int32_t *>cnp.PyArray_DATA(p),
                              <const int32_t *>cnp.PyArray_DATA(q),
                              <const int32_t *>cnp.PyArray_DATA(order),
                              <int32_t *>cnp.PyArray_DATA(colour), limit)
    if n == JX_ENOMEM:
        raise MemoryError("jacext: out of memory colouring the sparsity pattern")
    if n < 0:   # too much work (dense rows): every column its own colour
        return np.arange(n_cols, dtype=np.int32)
    return colour


def _broadcast_rows(cnp.ndarray x, tuple batch, Py_ssize_t n_points):
    """Flat C-contiguous rows (n_points, width) from rows of shape (..., width)."""
    width = x.shape[x.ndim - 1]
    return np.ascontiguousarray(np.broadcast_to(x, batch + (width,))).reshape(n_points, width)


def _copy_into(out, result):
    if isinstance(result, tuple):
        if not isinstance(out, tuple) or len(out) != len(result):
            raise ValueError("jacext: out must be a tuple of arrays matching the Jacobians' nesting")
        for o, r in zip(out, result):
            _copy_into(o, r)
        return
    if not isinstance(out, np.ndarray) or out.shape != result.shape:
        raise ValueError(f"jacext: out has the wrong shape; the Jacobian has shape "
                         f"{_shape_str(result.shape)}")
    np.copyto(out, result)


def _as_real_array(value, int k):
    """float64 array from what the user passed; complex and non-numbers are refused."""
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except Exception as exc:   # ragged lists and the like
            raise TypeError(f"jacext: argument {k} is not an array of real numbers: {exc}") from None
    kind = arr.dtype.kind
    if kind == "c":
        raise TypeError(f"jacext: argument {k} is complex ({arr.dtype}); jacext computes "
                        "real Jacobians: pass the real and imaginary parts as separate "
                        "real arguments")
    if kind not in "biuf":
        raise TypeError(f"jacext: argument {k} must be real numbers; got dtype {arr.dtype}")
    if kind != "f" or arr.dtype != np.float64:
        arr = arr.astype(np.float64)
    return arr
