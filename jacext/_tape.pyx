# cython: language_level=3, cdivision=True
"""Tape: the flat instruction list of a compiled function, and the C VM's entry points.

A Tape holds the arrays the compiler passes make (``jacext/passes.pyx``): per instruction
``op`` (op number plus immediate flags), ``dst``, ``a``, ``b``, ``s`` (SELECT's condition
slot) and ``imm``; ``out_slot`` and ``const_value``; ``n_in`` and ``n_slots``.  It checks
them once (``jx_tape_check``), derives the tables the sweeps use (fixed partials, runs,
streams), pickles as those arrays, disassembles, and wraps every C sweep with typed,
checked arguments; the sweeps then run unchecked with the GIL released for anything but
the smallest work.  C returns status codes and this layer raises.

Also here: the op table as C has it (names, arities, flags, and ops.def's rows as text)
for ``jacext/ops.py``, and the scalar op evaluation the Graph folds constants with.

What to run and when (strategies, thresholds) is decided in ``jacext/plan.py``; the
Function (``jacext/_function.pyx``) calls these entry points, or C directly on its fast
paths through the Tape's ``t`` struct.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset
from cpython.pycapsule cimport PyCapsule_GetName, PyCapsule_GetPointer

from jacext import blas as _blas
from jacext import plan as _plan

cnp.import_array()

cdef extern from "vm.h" nogil:
    int JX_K, JX_K_BI, JX_K_AI

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
        int32_t n_parts
        const double *const *part
        const int32_t *part_width
        const int32_t *part_step
        const double *seed
        double *y
        double *out

    int jx_point_compressed(const jx_tape *t, jx_work *w, const double *x, double *y,
                            double *comp, const int32_t *cols, int32_t n_cols,
                            const int32_t *colour, int32_t n_colours, int mode)
    int jx_point_jvp(const jx_tape *t, jx_work *w, const double *x, const double *v,
                     double *y, double *ydot)
    int jx_point_vjp(const jx_tape *t, jx_work *w, const double *x, const double *u,
                     double *y, double *xbar)
    int jx_point_subgraph(const jx_tape *t, jx_work *w, const double *x, double *y,
                          const int64_t *cone_ptr, const int32_t *cone,
                          const int32_t *row_ptr, const int32_t *nz_input, double *vals)
    int jx_batch_run(const jx_tape *t, const jx_batch *job, int n_threads)
    int jx_sparsity(const jx_tape *t, const int32_t *col_of_input, int32_t **indptr,
                    int32_t **indices)
    int jx_cones(const jx_tape *t, int64_t max_total, int64_t **cone_ptr, int32_t **cone,
                 int64_t *work)


cdef int raise_status(int st) except -1:
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


# ---- the op table as C has it (jacext/ops.py builds on it) ----

#: the op word's parts: op number, and the flags of an immediate a or b
OP_MASK = JX_OP_MASK
A_IMM = JX_A_IMM
B_IMM = JX_B_IMM
#: the FIXED column's flags (ops.def)
FIXED_ALWAYS = JX_K
FIXED_B_IMM = JX_K_BI
FIXED_A_IMM = JX_K_AI
#: sweep modes and batch tasks of the C VM, by name
MODES = {"forward": JX_MODE_FORWARD, "reverse": JX_MODE_REVERSE, "cones": JX_MODE_SUBGRAPH}
TASKS = {"value": JX_TASK_VALUE, "jacobian": JX_TASK_JACOBIAN, "jvp": JX_TASK_JVP,
         "vjp": JX_TASK_VJP, "compressed": JX_TASK_COMPRESSED, "cones": JX_TASK_SUBGRAPH}
RUN_FIELDS = JX_RUN_FIELDS
#: the most arguments a batch passes to the VM unjoined (Tape.run; more are joined first)
MAX_BATCH_PARTS = JX_MAX_PARTS
MAX_LANES = JX_MAX_LANES
#: cores this process may run on, read at import: one core never splits a single point
_CORES = _plan.usable_cores()


# ---- argument checks of the entry points below ----

cdef inline const void *_buf(cnp.ndarray arr, int typenum, Py_ssize_t size,
                             str what) except NULL:
    """A pointer to arr's data after checking its dtype, contiguity and size (entry
    points are the boundary between NumPy and the unchecked C sweeps)."""
    if arr is None:
        raise ValueError(f"jacext: {what} is missing")
    if (cnp.PyArray_TYPE(arr) != typenum or not cnp.PyArray_IS_C_CONTIGUOUS(arr)
            or cnp.PyArray_SIZE(arr) < size):
        raise ValueError(f"jacext: {what} must be a C-contiguous "
                         f"{'float64' if typenum == cnp.NPY_DOUBLE else 'int'} array of at "
                         f"least {size} elements")
    if size == 0:
        return <const void *>&_EMPTY
    return cnp.PyArray_DATA(arr)

cdef double _EMPTY = 0.0   # what an empty array's pointer points at


cdef inline double *_out(cnp.ndarray arr, Py_ssize_t size, str what) except NULL:
    if arr is not None and not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"jacext: {what} is read-only")
    return <double *>_buf(arr, cnp.NPY_DOUBLE, size, what)


cdef inline double *_maybe_out(cnp.ndarray arr, Py_ssize_t size, str what) except? NULL:
    return NULL if arr is None else _out(arr, size, what)


_TAPE_FIELDS = (("op", np.int32), ("dst", np.int32), ("a", np.int32), ("b", np.int32),
                ("s", np.int32), ("imm", np.float64), ("out_slot", np.int32),
                ("const_value", np.float64))
# block instructions (vm.h): optional, a tape without them has none
_BLOCK_FIELDS = (("blocks", np.int64), ("weights", np.float64))
_PER_INSTRUCTION = ("dst", "a", "b", "s", "imm")

#: int64 per block in the tape's ``blocks`` array: instruction, m, n, offset in ``weights``
BLOCK_FIELDS = JX_BLOCK_FIELDS
#: the op word of a block instruction
BLOCK = JX_BLOCK

cdef jx_dgemm_fn _DGEMM = NULL
cdef jx_dgemv_fn _DGEMV = NULL


cdef int _load_blas() except -1:
    """The BLAS routines of block instructions: SciPy's (scipy.linalg.cython_blas exports
    them as C function pointers), so the C core links against no BLAS itself and a block's
    values agree with NumPy's to rounding.  Loaded the first time a tape has a block."""
    global _DGEMM, _DGEMV
    if _DGEMM != NULL:
        return 0
    capi = _blas.cython_blas().__pyx_capi__
    gemv, gemm = capi["dgemv"], capi["dgemm"]
    _DGEMV = <jx_dgemv_fn>PyCapsule_GetPointer(gemv, PyCapsule_GetName(gemv))
    _DGEMM = <jx_dgemm_fn>PyCapsule_GetPointer(gemm, PyCapsule_GetName(gemm))
    return 0


cdef class Tape:
    """A checked tape and the sweeps over it.

    ``Tape(arrays)`` takes the dict of arrays the lowering makes (``op, dst, a, b, s, imm,
    out_slot, const_value`` and the counts ``n_in, n_slots``); a ValueError names what is
    inconsistent.  It keeps read-only copies (``copy=False``: the arrays themselves, for a
    caller that hands over arrays no one else holds); the Tape is immutable.  An
    ``input_bound`` entry B > 0 says its results hold where every input is within +-B
    (jacext/finite.py); ``exact``, the tape it was folded from, runs at other points.
    """

    def __cinit__(self):
        self._has_work = False
        self._busy = 0

    def __init__(self, dict arrays, bint copy=True, Tape exact=None):
        cdef dict own = {}
        memset(&self.t, 0, sizeof(jx_tape))    # every derived table NULL until _derive
        for key, dtype in _TAPE_FIELDS:
            if key not in arrays:
                raise ValueError(f"jacext: corrupt tape: no '{key}' array")
            # copy=False: the caller hands over arrays it made and drops (the lowering), so
            # no one else can write them; anything else is copied before it is checked
            arr = (np.array(arrays[key], dtype=dtype, order="C", copy=True) if copy
                   else np.ascontiguousarray(arrays[key], dtype=dtype)).reshape(-1)
            arr.setflags(write=False)
            own[key] = arr
        for key, dtype in _BLOCK_FIELDS:
            arr = np.array(arrays.get(key, ()), dtype=dtype, order="C", copy=True).reshape(-1)
            arr.setflags(write=False)
            own[key] = arr
        if own["blocks"].shape[0] % JX_BLOCK_FIELDS:
            raise ValueError(f"jacext: corrupt tape: 'blocks' holds {JX_BLOCK_FIELDS} "
                             f"numbers per block")
        n_instr = own["op"].shape[0]
        for key in _PER_INSTRUCTION:
            if own[key].shape[0] != n_instr:
                raise ValueError(f"jacext: corrupt tape: '{key}' has {own[key].shape[0]} "
                                 f"entries for {n_instr} instructions")
        for key in ("n_in", "n_slots"):
            if key not in arrays or not -2**31 <= int(arrays[key]) < 2**31:
                raise ValueError(f"jacext: corrupt tape: '{key}' missing or out of range")
        if n_instr >= 2**31 or own["out_slot"].shape[0] >= 2**31:
            raise ValueError("jacext: corrupt tape: more than 2**31 instructions or outputs")
        self._arrays = own
        self.t.n_instr = <int32_t>n_instr
        self.t.n_slots = <int32_t>int(arrays["n_slots"])
        self.t.n_in = <int32_t>int(arrays["n_in"])
        self.t.n_out = <int32_t>own["out_slot"].shape[0]
        self.t.n_const = <int32_t>own["const_value"].shape[0]
        self.t.op = <const int32_t *>cnp.PyArray_DATA(own["op"])
        self.t.dst = <const int32_t *>cnp.PyArray_DATA(own["dst"])
        self.t.a = <const int32_t *>cnp.PyArray_DATA(own["a"])
        self.t.b = <const int32_t *>cnp.PyArray_DATA(own["b"])
        self.t.s = <const int32_t *>cnp.PyArray_DATA(own["s"])
        self.t.imm = <const double *>cnp.PyArray_DATA(own["imm"])
        self.t.out_slot = <const int32_t *>cnp.PyArray_DATA(own["out_slot"])
        self.t.const_value = <const double *>cnp.PyArray_DATA(own["const_value"])
        self.t.n_blocks = <int32_t>(own["blocks"].shape[0] // JX_BLOCK_FIELDS)
        self.t.blocks = <const int64_t *>cnp.PyArray_DATA(own["blocks"])
        self.t.weights = <const double *>cnp.PyArray_DATA(own["weights"])
        self.t.n_weights = own["weights"].shape[0]
        self.t.bound = float(arrays.get("input_bound", 0.0))
        if exact is not None:
            self.exact = exact
            self.t.exact = &exact.t
        if self.t.n_blocks > 0:
            _load_blas()
            self.t.dgemm = _DGEMM
            self.t.dgemv = _DGEMV
        raise_status(jx_tape_check(&self.t))
        self._derive()

    cdef _derive(self):
        """The tables the sweeps use, derived from the checked arrays (not pickled)."""
        cdef Py_ssize_t n = self.t.n_instr
        cdef int32_t counts[2]
        finite = np.zeros(max(self.t.n_blocks, 1), dtype=np.uint8)
        jx_tape_block_finite(&self.t, <unsigned char *>cnp.PyArray_DATA(finite))
        self._block_finite = finite
        self.t.block_finite = <const unsigned char *>cnp.PyArray_DATA(finite)
        shapes = self._arrays["blocks"].reshape(-1, JX_BLOCK_FIELDS)
        # a block counts its multiply-adds: m n, or m n p for a product (W's offset -p)
        per = shapes[:, 1] * shapes[:, 2] * np.where(shapes[:, 3] < 0, -shapes[:, 3], 1)
        self.work = n + int(per.sum()) - shapes.shape[0]
        fixed = np.zeros(n, dtype=np.uint8)
        d0 = np.zeros(n, dtype=np.float64)
        d1 = np.zeros(n, dtype=np.float64)
        jx_tape_fixed_partials(&self.t, <unsigned char *>cnp.PyArray_DATA(fixed),
                               <double *>cnp.PyArray_DATA(d0), <double *>cnp.PyArray_DATA(d1))
        for arr in (fixed, d0, d1):
            arr.setflags(write=False)
        self._fixed = (fixed.view(np.bool_), d0, d1)
        self.t.fixed = <const unsigned char *>cnp.PyArray_DATA(fixed)
        self.t.fixed_d0 = <const double *>cnp.PyArray_DATA(d0)
        self.t.fixed_d1 = <const double *>cnp.PyArray_DATA(d1)
        # sin and cos of one value: one sincos call in the batched value sweep
        pairs = np.empty(max(n, 1), dtype=np.int32)
        n_pairs = jx_tape_sincos_pairs(&self.t, <int32_t *>cnp.PyArray_DATA(pairs))
        raise_status(min(n_pairs, 0))
        self._pairs = pairs
        self.t.sincos_pair = <const int32_t *>cnp.PyArray_DATA(pairs)
        self.t.n_sincos = n_pairs
        # the batched value sweep's stream: products fused into sums (block_code.c)
        self._bcode = np.empty(jx_tape_block_code_bytes(&self.t), dtype=np.uint8)
        raise_status(min(jx_tape_block_code(&self.t, cnp.PyArray_DATA(self._bcode)), 0))
        # runs of one op word over evenly stepping slots (the single-point value sweep)
        runs = np.empty(max(1, JX_RUN_FIELDS * n), dtype=np.int32)
        n_runs = jx_tape_runs(&self.t, <int32_t *>cnp.PyArray_DATA(runs))
        self._runs = runs[:JX_RUN_FIELDS * n_runs].copy()
        self._runs_used = _plan.runs_pay(n_runs, n)
        if self._runs_used:
            self.t.runs = <const int32_t *>cnp.PyArray_DATA(self._runs)
            self.t.n_runs = n_runs
        m = jx_tape_code(&self.t, NULL) if n > 0 else 0   # its entries, counted
        if 0 < m <= JX_CODE_MAX_ENTRIES:    # the value sweep's stream, over those runs
            self._code = np.empty((m + 1) * sizeof(jx_code), dtype=np.uint8)
            self.t.n_code = jx_tape_code(&self.t, <jx_code *>cnp.PyArray_DATA(self._code))
            self.t.code = <const jx_code *>cnp.PyArray_DATA(self._code)
        # the inputs and outputs that single points pass through the work (the rest in place)
        self._io = np.empty(self.t.n_in + self.t.n_out + 2, dtype=np.int32)
        raise_status(jx_tape_io(&self.t, <int32_t *>cnp.PyArray_DATA(self._io), counts))
        self.t.n_in_copy, self.t.n_out_copy = counts[0], counts[1]
        self.t.io_copy = <const int32_t *>cnp.PyArray_DATA(self._io)
        # one tile chain: a single point on two threads (vm.h split_halo)
        self._out_time = np.empty(max(1, self.t.n_out), dtype=np.int32)
        self.t.split_halo = jx_tape_split(&self.t, <int32_t *>cnp.PyArray_DATA(self._out_time),
                                          &self.t.split_span)
        self.t.out_time = <const int32_t *>cnp.PyArray_DATA(self._out_time)

    def __dealloc__(self):
        if self._has_work:
            jx_work_free(&self._work)
        if self._has_helper:
            jx_work_free(&self._helper)

    def __reduce__(self):
        return (Tape, (self.arrays(), True, self.exact))

    # ---- facts ----

    @property
    def n_instructions(self):
        return int(self.t.n_instr)

    @property
    def n_slots(self):
        return int(self.t.n_slots)

    @property
    def n_inputs(self):
        return int(self.t.n_in)

    @property
    def n_outputs(self):
        return int(self.t.n_out)

    @property
    def n_constants(self):
        return int(self.t.n_const)

    @property
    def n_blocks(self):
        """Block instructions (y = W x over contiguous slots, vm.h)."""
        return int(self.t.n_blocks)

    def blocks(self):
        """The block instructions as (instruction, m, n, W) tuples, W a read-only view of
        the tape's weights (m x n); a product block's fourth is p (A m x n @ B n x p)."""
        w = self._arrays["weights"]
        return [(int(i), int(m), int(n), -o if o < 0 else w[o:o + m * n].reshape(m, n))
                for i, m, n, o in self._arrays["blocks"].reshape(-1, JX_BLOCK_FIELDS).tolist()]

    def arrays(self):
        """The tape as read-only arrays (op, dst, a, b, s, imm, out_slot, const_value, and
        the block instructions' blocks and weights) and the counts n_in, n_slots: what
        ``Tape(arrays)`` takes back."""
        out = dict(self._arrays)
        out["n_in"] = int(self.t.n_in)
        out["n_slots"] = int(self.t.n_slots)
        if self.t.bound > 0.0:
            out["input_bound"] = float(self.t.bound)
        return out

    def fixed_partials(self):
        """(fixed, d0, d1): which instructions have constant partials (the FIXED column of
        ops.def, where the instruction's immediates make them constant and finite), and
        those constants; read-only arrays."""
        return self._fixed

    @property
    def stream_length(self):
        """Entries of the single-point value sweep's decoded stream (vm.h jx_code); 0 past
        JX_CODE_MAX_ENTRIES entries, where the sweep reads the tape's own arrays."""
        return int(self.t.n_code)

    @property
    def block_stream_length(self):
        """Entries of the batched value sweep's stream (block_code.c); 0: none."""
        return int(self.t.n_bcode)

    def runs(self):
        """The runs of the single-point value sweep as (n_runs, RUN_FIELDS) int32: length,
        the steps of dst, a, b, s, flags, tile-chain lag, rings (vm.h); empty when the tape's
        runs are too short to be used (``plan.runs_pay``)."""
        return (self._runs if self._runs_used else self._runs[:0]).reshape(-1, JX_RUN_FIELDS)

    def io_copy(self):
        """(the inputs that single points copy into the work, the outputs they gather from
        it), int32: the pointer runs read and write the rest in place (vm.h io_copy)."""
        k = self.t.n_in_copy
        return self._io[:k].copy(), self._io[k:k + self.t.n_out_copy].copy()

    @property
    def split(self):
        """(span, halo) of a tape whose single points run on two threads (vm.h
        split_halo), else None."""
        return (self.t.split_span, self.t.split_halo) if self.t.split_halo >= 0 else None

    def disassemble(self):
        """The tape as text lines (``jacext.ops.disassemble``)."""
        from jacext import ops
        return ops.disassemble(self.arrays())

    # ---- work memory ----

    cdef jx_work *take_work(self, int32_t lanes) except NULL:
        """The Tape's own work memory (grown to ``lanes``) for the one caller that takes its
        flag, else a fresh one; give_work puts either back.  The flag is atomic (vm.h), so
        this holds without the GIL too: threads calling one Function at once each get work
        memory of their own."""
        cdef jx_work *w
        cdef int st
        if jx_flag_take(&self._busy):
            if self._has_work and self._work.lanes < lanes:
                jx_work_free(&self._work)
                self._has_work = False
            if not self._has_work:
                st = jx_work_init(&self._work, &self.t, lanes)
                if st != JX_OK:
                    jx_flag_give(&self._busy)
                    raise_status(st)
                self._has_work = True
            return &self._work
        w = <jx_work *>malloc(sizeof(jx_work))
        if w == NULL:
            raise MemoryError("jacext: out of memory")
        st = jx_work_init(w, &self.t, lanes)
        if st != JX_OK:
            free(w)
            raise_status(st)
        return w

    cdef jx_work *helper(self, jx_work *w) noexcept:
        """With the Tape's own work w: the work of a single point's second thread where
        the tape (or its exact tape) splits and the process may run on two cores, made
        once; else (or without memory) NULL."""
        if w != &self._work or _CORES < 2 or not (self.t.split_halo >= 0 or (
                self.exact is not None and self.exact.t.split_halo >= 0)):
            return NULL
        if not self._has_helper:
            self._has_helper = jx_work_init(&self._helper, &self.t, 1) == JX_OK
        return &self._helper if self._has_helper else NULL

    cdef void give_work(self, jx_work *w) noexcept:
        if w == &self._work:
            jx_flag_give(&self._busy)
        else:
            jx_work_free(w)
            free(w)

    cdef bint _nogil(self, Py_ssize_t lanes) noexcept:
        return self.work * lanes > _NOGIL_WORK

    # ---- one point (x: n_in values; y: n_out or None) ----

    cpdef value(self, cnp.ndarray x, cnp.ndarray y):
        """The outputs at the point x into y."""
        cdef const double *px = <const double *>_buf(x, cnp.NPY_DOUBLE, self.t.n_in, "x")
        cdef double *py = _out(y, self.t.n_out, "y")
        cdef jx_work *w = self.take_work(1)
        cdef jx_work *helper = self.helper(w)
        cdef int st
        try:
            if self._nogil(1):
                with nogil:
                    st = jx_point_value_parts(&self.t, w, helper, 1, &px, &self.t.n_in, py)
            else:
                st = jx_point_value_parts(&self.t, w, helper, 1, &px, &self.t.n_in, py)
        finally:
            self.give_work(w)
        return raise_status(st)

    cpdef compressed(self, cnp.ndarray x, cnp.ndarray y, cnp.ndarray comp, cnp.ndarray cols,
                     cnp.ndarray colour, int32_t n_colours, int mode):
        """The Jacobian of the outputs with respect to the inputs ``cols`` (int32), dense
        (colour None: comp is n_out x n_cols) or compressed by a column colouring
        (forward: comp n_out x n_colours) or a row colouring (reverse: n_colours x
        n_cols); mode a C sweep mode (MODES)."""
        cdef Py_ssize_t n_cols = cols.shape[0]
        cdef const double *px = <const double *>_buf(x, cnp.NPY_DOUBLE, self.t.n_in, "x")
        cdef double *py = _maybe_out(y, self.t.n_out, "y")
        cdef const int32_t *pc = <const int32_t *>_buf(cols, cnp.NPY_INT32, n_cols, "cols")
        cdef const int32_t *pk = NULL
        cdef Py_ssize_t size
        cdef jx_work *w
        cdef int st
        if mode != JX_MODE_FORWARD and mode != JX_MODE_REVERSE:
            raise ValueError("jacext: compressed sweeps run forward or reverse")
        if colour is None:
            n_colours = <int32_t>(n_cols if mode == JX_MODE_FORWARD else self.t.n_out)
        else:
            pk = <const int32_t *>_buf(colour, cnp.NPY_INT32,
                                       n_cols if mode == JX_MODE_FORWARD else self.t.n_out,
                                       "colour")
            self._check_colours(colour, n_colours)
        _check_columns(cols, self.t.n_in)
        size = (<Py_ssize_t>self.t.n_out * n_colours if mode == JX_MODE_FORWARD
                else <Py_ssize_t>n_colours * n_cols)
        cdef double *pj = _out(comp, size, "comp")
        w = self.take_work(jx_point_lanes(self.t.n_slots, n_colours))
        try:
            if self._nogil(w.lanes):
                with nogil:
                    st = jx_point_compressed(&self.t, w, px, py, pj, pc, <int32_t>n_cols, pk,
                                             n_colours, mode)
            else:
                st = jx_point_compressed(&self.t, w, px, py, pj, pc, <int32_t>n_cols, pk,
                                         n_colours, mode)
        finally:
            self.give_work(w)
        return raise_status(st)

    cdef int _check_colours(self, cnp.ndarray colour, int32_t n_colours) except -1:
        if not _in_range(<const int32_t *>cnp.PyArray_DATA(colour), colour.shape[0], 0,
                         n_colours):
            raise ValueError("jacext: a colour out of range")
        return 0

    cpdef cones_jacobian(self, cnp.ndarray x, cnp.ndarray y, Cones cones, cnp.ndarray vals):
        """Sparse Jacobian values by one reverse sweep per output over its dependency cone
        (``cones`` from :meth:`cones`), in the pattern's CSR order."""
        cdef const double *px = <const double *>_buf(x, cnp.NPY_DOUBLE, self.t.n_in, "x")
        cdef double *py = _maybe_out(y, self.t.n_out, "y")
        cdef double *pv
        cdef jx_work *w
        cdef int st
        if cones is None or cones.tape is not self:
            raise ValueError("jacext: cones must come from this tape's cones()")
        pv = _out(vals, cones.nz_input.shape[0], "vals")
        w = self.take_work(1)
        try:
            with nogil:
                st = jx_point_subgraph(&self.t, w, px, py, cones.cp, cones.cn, cones.rp,
                                       cones.nz, pv)
        finally:
            self.give_work(w)
        return raise_status(st)

    cpdef product(self, bint forward, cnp.ndarray x, cnp.ndarray seed, cnp.ndarray y,
                  cnp.ndarray res):
        """At the point x: y and, forward, res = J v (seed v over the inputs, res over the
        outputs), else res = u J (seed u over the outputs, res over the inputs)."""
        cdef Py_ssize_t n_seed = self.t.n_in if forward else self.t.n_out
        cdef Py_ssize_t n_res = self.t.n_out if forward else self.t.n_in
        cdef const double *px = <const double *>_buf(x, cnp.NPY_DOUBLE, self.t.n_in, "x")
        cdef const double *ps = <const double *>_buf(seed, cnp.NPY_DOUBLE, n_seed, "seed")
        cdef double *py = _out(y, self.t.n_out, "y")
        cdef double *pr = _out(res, n_res, "res")
        cdef jx_work *w = self.take_work(1)
        cdef int st
        try:
            with nogil:
                if forward:
                    st = jx_point_jvp(&self.t, w, px, ps, py, pr)
                else:
                    st = jx_point_vjp(&self.t, w, px, ps, py, pr)
        finally:
            self.give_work(w)
        return raise_status(st)

    # ---- batches: rows of x, threads splitting them ----

    def batch(self, str task, object x, cnp.ndarray y, cnp.ndarray out,
              int threads=1, int mode=0, cnp.ndarray seed=None, cnp.ndarray cols=None,
              cnp.ndarray colour=None, int32_t n_colours=0, Tape jac_tape=None,
              Cones cones=None):
        """One C call over the rows of x (n_points x n_in, or parts: :meth:`run`): ``task``
        one of TASKS.

        value: y (n_points x n_out).  jacobian: out n_points x n_out x n_cols in ``mode``,
        or from ``jac_tape`` (whose outputs are the n_out values, then the Jacobian
        row-major).  jvp / vjp: ``seed`` rows of tangents (n_in) or cotangents (n_out),
        out rows of n_out / n_in.  compressed: as :meth:`compressed`, per point.  cones:
        as :meth:`cones_jacobian`, per point.  y may be None where out is given.
        """
        if task not in TASKS:
            raise ValueError(f"jacext: no batch task {task!r}")
        return self.run(TASKS[task], x, y, out, threads, mode, seed, cols, colour, n_colours,
                        jac_tape, cones)

    cpdef run(self, int task, object x, cnp.ndarray y, cnp.ndarray out, int threads,
              int mode, cnp.ndarray seed, cnp.ndarray cols, cnp.ndarray colour,
              int32_t n_colours, Tape jac_tape, Cones cones):
        """:meth:`batch` with the task's number and every argument given (a C call); x
        the rows (n_points, n_in), or a tuple of at most JX_MAX_PARTS parts (n_points,
        width) side by side (a batch of several arguments, not joined: jacext/arguments.py), a
        part of one row (1, width) shared by every point."""
        cdef jx_batch job
        cdef const double *part[JX_MAX_PARTS]
        cdef int32_t width[JX_MAX_PARTS]
        cdef int32_t step[JX_MAX_PARTS]
        cdef Py_ssize_t n_points = -1, n_in = self.t.n_in, n_out = self.t.n_out, per, k
        cdef Py_ssize_t total = 0
        cdef int st
        memset(&job, 0, sizeof(job))   # every pointer NULL, every count 0
        job.task = task
        if task < JX_TASK_VALUE or task > JX_TASK_SUBGRAPH:
            raise ValueError(f"jacext: no batch task {task}")
        parts = x if type(x) is tuple and 0 < len(x) <= JX_MAX_PARTS else (x,)
        for k in range(len(parts)):
            n_points = max(n_points, parts[k].shape[0] if parts[k].ndim == 2 else -1)
        for k in range(len(parts)):   # (a part of one row: every point's, step 0)
            if (parts[k].ndim != 2 or parts[k].shape[0] not in (n_points, 1)
                    or (parts is not x and parts[k].shape != (n_points, n_in))):
                raise ValueError("jacext: a batch takes x of shape (n_points, n_in), or "
                                 "parts (n_points or 1, width) whose widths add up to n_in")
            width[k] = <int32_t>parts[k].shape[1]
            step[k] = width[k] if parts[k].shape[0] == n_points else 0
            part[k] = <const double *>_buf(parts[k], cnp.NPY_DOUBLE,
                                           parts[k].shape[0] * width[k], "x")
            total += width[k]
        if total != n_in:
            raise ValueError("jacext: the parts' widths must add up to n_in")
        job.mode = mode
        job.n_points = n_points
        if parts is x:
            job.n_parts, job.part, job.part_width, job.part_step = len(parts), part, width, step
        else:
            job.x = part[0]
        job.y = _maybe_out(y, n_points * n_out, "y")
        if cols is not None:
            job.cols = <const int32_t *>_buf(cols, cnp.NPY_INT32, cols.shape[0], "cols")
            job.n_cols = <int32_t>cols.shape[0]
            _check_columns(cols, n_in)
        if job.task == JX_TASK_VALUE:
            if y is None:
                raise ValueError("jacext: a value batch needs y")
            per = 0
        elif job.task == JX_TASK_JACOBIAN:
            if mode != JX_MODE_FORWARD and mode != JX_MODE_REVERSE:
                raise ValueError("jacext: Jacobians run forward or reverse")
            per = n_out * job.n_cols
            if jac_tape is not None:
                if (jac_tape.t.n_in != n_in or jac_tape.t.n_out != n_out + per):
                    raise ValueError("jacext: the Jacobian tape does not match this request")
                job.jac_tape = &jac_tape.t
        elif job.task == JX_TASK_JVP or job.task == JX_TASK_VJP:
            job.seed = <const double *>_buf(
                seed, cnp.NPY_DOUBLE, n_points * (n_in if job.task == JX_TASK_JVP else n_out),
                "seed")
            per = n_out if job.task == JX_TASK_JVP else n_in
        elif job.task == JX_TASK_COMPRESSED:
            if mode != JX_MODE_FORWARD and mode != JX_MODE_REVERSE:
                raise ValueError("jacext: compressed sweeps run forward or reverse")
            job.colour = <const int32_t *>_buf(
                colour, cnp.NPY_INT32, job.n_cols if mode == JX_MODE_FORWARD else n_out,
                "colour")
            self._check_colours(colour, n_colours)
            job.n_colours = n_colours
            per = n_out * n_colours if mode == JX_MODE_FORWARD else n_colours * job.n_cols
        else:   # cones
            if cones is None or cones.tape is not self:
                raise ValueError("jacext: cones must come from this tape's cones()")
            job.mode = JX_MODE_SUBGRAPH
            job.cone_ptr = cones.cp
            job.cone = cones.cn
            job.row_ptr = cones.rp
            job.nz_input = cones.nz
            per = cones.nz_input.shape[0]
        if job.task != JX_TASK_VALUE:
            job.out = _out(out, n_points * per, "out")
        with nogil:
            st = jx_batch_run(&self.t, &job, threads)
        return raise_status(st)

    # ---- sparsity ----

    def pattern(self, cnp.ndarray cols):
        """(indptr, indices), int32 and read-only: the exact structural pattern of the
        outputs with respect to the inputs ``cols`` (column k is input cols[k])."""
        cdef cnp.ndarray col_of_input = np.full(max(self.t.n_in, 1), -1, dtype=np.int32)
        cdef int32_t *indptr = NULL
        cdef int32_t *indices = NULL
        cdef int st
        _check_columns(cols, self.t.n_in)
        col_of_input[cols] = np.arange(cols.shape[0], dtype=np.int32)
        with nogil:
            st = jx_sparsity(&self.t, <const int32_t *>cnp.PyArray_DATA(col_of_input),
                             &indptr, &indices)
        raise_status(st)
        n_out = self.t.n_out
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
        return ptr, idx

    def cones(self, budget, row_ptr, nz_input):
        """The dependency cone of every output (the instructions its value depends on, last
        first) for :meth:`cones_jacobian`, with the pattern they fill (CSR ``row_ptr`` and
        each nonzero's input index ``nz_input``): a :class:`Cones`, or None when the cones
        pass ``budget`` entries."""
        cdef int64_t *ptr = NULL
        cdef int32_t *cone = NULL
        cdef int64_t limit = max(int(budget), 1), work = 0
        cdef int st
        with nogil:
            st = jx_cones(&self.t, limit, &ptr, &cone, &work)
        if st == JX_EARG:
            return None
        raise_status(st)
        n_out = int(self.t.n_out)
        try:
            p = np.asarray(<int64_t[:n_out + 1]>ptr).copy()
            total = int(p[n_out])
            c = (np.asarray(<int32_t[:total]>cone).copy() if total
                 else np.zeros(1, dtype=np.int32))
        finally:
            free(ptr)
            free(cone)
        return Cones(self, p, c, row_ptr, nz_input, work)


cdef class Cones:
    """Every output's dependency cone on a tape, and the CSR pattern its per-output
    reverse sweeps fill; checked once here, read-only after.  ``work``: the sweeps' work
    (an instruction 1, a block its multiply-adds), as jx_cones counted it."""

    def __init__(self, Tape tape, cone_ptr, cone, row_ptr, nz_input, int64_t work):
        cdef Py_ssize_t n_out = tape.t.n_out
        self.tape, self.work = tape, work
        self.cone_ptr = np.array(cone_ptr, dtype=np.int64, copy=True)
        self.cone = np.array(cone, dtype=np.int32, copy=True)
        self.row_ptr = np.array(row_ptr, dtype=np.int32, copy=True)
        self.nz_input = np.array(nz_input, dtype=np.int32, copy=True)
        for arr in (self.cone_ptr, self.cone, self.row_ptr, self.nz_input):
            arr.setflags(write=False)
        if (self.cone_ptr.shape[0] != n_out + 1 or self.row_ptr.shape[0] != n_out + 1
                or self.cone_ptr[0] != 0 or self.row_ptr[0] != 0
                or (np.diff(self.cone_ptr) < 0).any() or (np.diff(self.row_ptr) < 0).any()
                or self.row_ptr[n_out] != self.nz_input.shape[0]
                or self.cone_ptr[n_out] > self.cone.shape[0]):
            raise ValueError("jacext: inconsistent cones")
        if not (_in_range(<const int32_t *>cnp.PyArray_DATA(self.cone), self.cone_ptr[n_out],
                          0, tape.t.n_instr)
                and _in_range(<const int32_t *>cnp.PyArray_DATA(self.nz_input),
                              self.nz_input.shape[0], 0, tape.t.n_in)):
            raise ValueError("jacext: a cone or nonzero index out of range")
        self.cp = <const int64_t *>cnp.PyArray_DATA(self.cone_ptr)
        self.cn = <const int32_t *>cnp.PyArray_DATA(self.cone)
        self.rp = <const int32_t *>cnp.PyArray_DATA(self.row_ptr)
        self.nz = <const int32_t *>cnp.PyArray_DATA(self.nz_input)

    @property
    def size(self):
        """Entries of all cones together: the instructions the sweeps visit."""
        return int(self.cone_ptr[-1])


cdef bint _in_range(const int32_t *p, Py_ssize_t n, int64_t lo, int64_t hi) noexcept nogil:
    """Whether lo <= p[k] < hi for every k < n."""
    cdef Py_ssize_t k
    cdef bint ok = True
    for k in range(n):
        ok &= (p[k] >= lo) & (p[k] < hi)
    return ok


cdef int _check_columns(cnp.ndarray cols, Py_ssize_t n_in) except -1:
    _buf(cols, cnp.NPY_INT32, 0, "cols")
    if not _in_range(<const int32_t *>cnp.PyArray_DATA(cols), cols.shape[0], 0, n_in):
        raise ValueError("jacext: an input index out of range")
    return 0


cdef int64_t _NOGIL_WORK = _plan.NOGIL_WORK


def all_finite(cnp.ndarray a):
    """Whether every entry of a (float64, C-contiguous) is finite (one C loop)."""
    _buf(a, cnp.NPY_DOUBLE, 0, "a")
    return jx_all_finite(<const double *>cnp.PyArray_DATA(a), cnp.PyArray_SIZE(a))
