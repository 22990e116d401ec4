# cython: language_level=3, cdivision=True
"""Function: a compiled function's entry points (values, Jacobians, jvp, vjp, sparsity).

A Function owns its Tape (``jacext/_tape.pyx``) and a Planner (``jacext/plan.py``) that
decides, once per kind of request, how that kind is computed.  Its methods parse the
arguments (``jacext/arguments.py``), ask for the request's Plan, and carry it out
through the Tape's entry points.

Function lives in Cython because its single-point paths must cost well under a
microsecond: ``F.jacobian(x)`` and ``F.jacobian(x, out=J)`` with one float64 argument of
exactly the traced shape go straight to C (one typed call, no Python frames between),
and so does a dense auto Jacobian from its sparse Jacobian tape once that exists.
Everything else takes the general path, which gives the same numbers.
"""
import math
import sys

import numpy as np
cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t
from libc.string cimport memcpy, memset

from jacext import arguments as _args
from jacext import finite as _folding
from jacext import dask as _lazy          # dask arrays: handed to jacext/dask.py (lazy graphs)
from jacext import jactape as _jactape  # noqa: F401  (loaded with jacext: the planner imports
from jacext import plan as _plan         # it lazily, and a first call must not pay for that)
from jacext import nonfinite as _nonfinite
from jacext import second as _second
from jacext import sparse as _sparse
from jacext._tape cimport (JX_MAX_LANES, JX_MODE_FORWARD, JX_MODE_REVERSE, JX_TASK_JACOBIAN,
                           JX_TASK_VALUE, Tape, empty_of, has_shape, is_point, jx_work, view_as,
                           jx_point_value_parts, JX_MAX_PARTS, raise_status)
from jacext._point cimport (_check_out, _eval_tape, _fill_rows, _finite, _lanes,
                            _point_jacobian, _tape_jacobian)

cnp.import_array()

cdef dict _MODE = {"forward": JX_MODE_FORWARD, "reverse": JX_MODE_REVERSE}


cdef class Function:
    """A traced and compiled function: values, Jacobians, jvp and vjp.

    Made by :func:`jacext.compile`.  The tape is immutable; each call uses its
    own work memory, so one Function may be shared across threads, and it
    pickles as plain arrays.

    >>> import numpy as np, jacext as jx
    >>> F = jx.compile(lambda x: np.array([x[0] * x[1], np.sin(x[0])]), np.zeros(2))
    >>> x = np.array([0.0, 2.0])
    >>> F(x), F.jacobian(x)
    (array([0., 0.]), array([[2., 0.],
           [1., 0.]]))
    >>> F.jvp(x, np.array([1.0, 0.0]))[1], F.vjp(x, np.array([1.0, 0.0]))[1]
    (array([2., 1.]), array([2., 0.]))
    >>> F.hessian(x, np.array([1.0, 0.0]))          # of 1 * x0 x1 + 0 * sin(x0)
    array([[0., 1.],
           [1., 0.]])
    >>> F.jacobian(np.zeros((5, 2))).shape            # a batch of 5 points
    (5, 2, 2)
    """

    # its fields: jacext/_function.pxd

    def __init__(self, tape, tuple arg_shapes, tuple out_shapes, bint out_is_tuple,
                 str name="f", bint fold=True):
        self.tape = _folding.tape_of(tape, fold)
        self.arg_shapes = tuple(tuple(int(d) for d in s) for s in arg_shapes)
        self.out_shapes = tuple(tuple(int(d) for d in s) for s in out_shapes)
        self.out_is_tuple = out_is_tuple
        self.name = name
        self._arg_offsets = _args.offsets(self.arg_shapes)
        self._out_offsets = _args.offsets(self.out_shapes)
        if self.tape.t.n_in != self._arg_offsets[-1]:
            raise ValueError("jacext: corrupt tape: input count differs from the argument shapes")
        if self.tape.t.n_out != self._out_offsets[-1]:
            raise ValueError("jacext: corrupt tape: output count differs from the output shapes")
        if not out_is_tuple and len(self.out_shapes) != 1:
            raise ValueError("jacext: a single output needs exactly one output shape")
        self._planner = _plan.Planner(self.tape, self._arg_offsets)
        self._single_shape = self.arg_shapes[0] if len(self.arg_shapes) == 1 else None
        self._single_jac_shape = (self.out_shapes[0] + self._single_shape
                                  if self._single_shape is not None and not out_is_tuple
                                  else None)
        self._cols0 = self._planner.columns(0) if self.arg_shapes else None
        # a single dense Jacobian beyond RAM takes the general path, which raises
        self._single_fits = (8 * int(self.tape.t.n_out) * int(self.tape.t.n_in)
                             <= _plan.physical_memory())
        self._auto0 = -1
        self._plans = {}
        self._pt_tapes = [None, None, None]
        for k in range(3):
            self._pt_seen[k] = 0
            self._pt_after[k] = 0
        self._second = {}

    def __reduce__(self):     # the exact tape (the folded one is made again from it)
        return (Function, (self.exact_tape.arrays(), self.arg_shapes, self.out_shapes,
                           self.out_is_tuple, self.name, self.tape.exact is not None))

    @property
    def exact_tape(self):
        """The tape as traced: ``tape``, or the tape it was folded from (jacext/finite.py)."""
        return self.tape.exact if self.tape.exact is not None else self.tape

    # ---- facts ----

    @property
    def n_instructions(self):
        """Instructions on the tape."""
        return self.tape.n_instructions

    @property
    def n_slots(self):
        """Work slots one evaluation needs (inputs, constants, temporaries)."""
        return self.tape.n_slots

    @property
    def n_inputs(self):
        return self.tape.n_inputs

    @property
    def n_outputs(self):
        return self.tape.n_outputs

    def tape_arrays(self):
        """The tape as read-only NumPy arrays (op, dst, a, b, s, imm, out_slot,
        const_value) and its counts n_in, n_slots."""
        return self.tape.arrays()

    def __repr__(self):
        ins = ", ".join(_args.shape_str(s) for s in self.arg_shapes)
        outs = ", ".join(_args.shape_str(s) for s in self.out_shapes)
        if self.out_is_tuple:
            outs = "(" + outs + ("," if len(self.out_shapes) == 1 else "") + ")"
        t = self.tape
        note = ""
        structure = self._planner.known_structure(0)
        if structure is not None and structure.colours_known:
            p, q = structure.colours
            note = f"; sparse: {p} column colours, {q} row colours"
        if self._second:
            note += _second.repr_note(self)
        note += _folding.note(t)
        return (f"<jacext.Function {self.name}: inputs {ins} -> outputs {outs}; "
                f"{t.n_instructions} instructions, {t.n_slots} work slots "
                f"({t.n_inputs} inputs, {t.n_constants} constants){note}>")

    def disassemble(self, file=None):
        """Print the tape, one instruction a line (to ``file``, default stdout)."""
        lines = [f"; {self!r}"] + self.tape.disassemble()
        print("\n".join(lines), file=file if file is not None else sys.stdout)

    # ---- values ----

    def __call__(self, *args):
        """The function's value; leading axes beyond the traced shapes are a batch."""
        cdef cnp.ndarray x, y
        cdef object r
        if len(args) == 1 and (r := self._value_at(args[0])) is not None:
            return r                              # one point, nothing to convert
        if len(args) == 1 and (x := _one_point(self, args[0])) is not None:
            y = empty_of((1, self.tape.t.n_out))  # a batch of one: the point's path
            self.tape.value(x, y)
            return _args.split(y, self.out_shapes, self.out_is_tuple,
                               (1,) * (cnp.PyArray_NDIM(<cnp.ndarray>args[0]) - x.ndim))
        if (r := _value_of_parts(self, args)) is not None:
            return r                              # one point of several arguments
        elif _second.is_traced(args):   # inside a trace: the tape inlined (composition)
            return _second.inline(self, args)
        else:
            if _lazy.is_dask(args):
                return _lazy.call(self, *args)
            r, batch = self._rows(args, -1, True)
        if not batch:
            return self._value_row(r)
        r, n = _args.rows(r, self.tape.t.n_in), math.prod(batch)   # rows, or parts
        y = np.empty((n, self.tape.t.n_out), dtype=np.float64)
        self.tape.run(JX_TASK_VALUE, r, y, None, _plan.n_threads(None, n, self.tape.work), 0,
                      None, None, None, 0, None, None)
        return _args.split(y, self.out_shapes, self.out_is_tuple, batch)

    cdef object _value_at(self, object a):
        """The value at one point a of the one argument, or None where a is no such point
        (also called by a guarded tape's fast path)."""
        if self._single_shape is None or not is_point(a, self._single_shape):
            return None
        return self._value_row(<cnp.ndarray>a)

    cdef object _value_row(self, cnp.ndarray x):
        """The outputs, nested, at the one point x (the VM's row, checked by the caller)."""
        cdef cnp.ndarray y
        if not self.out_is_tuple:
            y = empty_of(self.out_shapes[0])
            self.tape.value(x, y)
            return y
        y = empty_of((self.tape.t.n_out,))
        self.tape.value(x, y)
        return _args.split(y, self.out_shapes, True, ())

    def _rows(self, tuple args, Py_ssize_t n_cols=-1, bint parts=False):
        """(x, batch): the arguments as the VM's rows (parts: or unjoined, _args.flatten).
        With n_cols, the dense Jacobian of that many columns is checked to fit in memory
        once the batch shape is known, before anything is copied."""
        cdef cnp.ndarray a
        cdef tuple shape
        cdef Py_ssize_t nd
        if (len(args) == 1 and self._single_shape is not None and type(args[0]) is np.ndarray
                and cnp.PyArray_TYPE(<cnp.ndarray>args[0]) == cnp.NPY_DOUBLE
                and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>args[0])):
            # one float64 argument: its own rows when its trailing shape fits
            a = <cnp.ndarray>args[0]
            shape = (<object>a).shape
            nd = len(self._single_shape)
            if len(shape) >= nd and shape[len(shape) - nd:] == self._single_shape:
                batch = shape[:len(shape) - nd]
                if n_cols >= 0:
                    _check_size(batch, self.tape.t.n_out, n_cols)
                return a.reshape(batch + (self.tape.t.n_in,)), batch
        x = _gather(args, self.arg_shapes, self._arg_offsets)
        if x is not None:
            return x, ()
        arrays, batch = _args.parse(args, self.arg_shapes, self.name)
        if n_cols >= 0:
            _check_size(batch, self.tape.t.n_out, n_cols)
        return _args.flatten(arrays, self.arg_shapes, batch, parts), batch

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
        if sparse:
            if out is not None:
                raise ValueError("jacext: out= is for dense Jacobians; sparse=True returns "
                                 "a new scipy.sparse.csr_array")
            if (len(args) == 1 and argnums == 0 and mode == "auto"
                    and self._single_jac_shape is not None
                    and is_point(args[0], self._single_shape)):
                plan = self._sparse0
                if plan is None:
                    plan = self._plan(0, "auto", True)
                    with self._planner.lock:     # object fields change once, under the lock
                        if self._sparse0 is None:
                            self._sparse0 = plan
                vals = self._compressed(plan, <cnp.ndarray>args[0], -1, threads, False)[0]
                return plan.structure.csr(vals)
            if _lazy.is_dask(args):
                return _lazy.jacobian(self, *args, argnums=argnums, mode=mode, sparse=True,
                                      threads=threads)
            return self._sparse_jacobian(args, argnums, mode, threads)
        if len(args) == 1 and argnums == 0:
            jac = self._dense_at(args[0], mode, out)
            if jac is None:
                jac = _batch_of_one(self, args[0], mode, out, None)
            if jac is not None:
                return jac
        if _lazy.is_dask(args):
            if out is not None:
                raise ValueError("jacext: out= is for NumPy arrays; a dask array's Jacobian "
                                 "is a dask array")
            return _lazy.jacobian(self, *args, argnums=argnums, mode=mode, threads=threads)
        return self._jacobian(args, argnums, mode, out, threads, False)[1]

    cdef object _dense_at(self, object a, object mode, object out, cnp.ndarray y=None):
        """The dense Jacobian at one point a of the one argument (argnums 0) straight from
        C (and the values into y, unless None), or None where a is no such point (a float64
        C-contiguous array of the traced shape) or the request takes the general path.
        Also called by a guarded tape's fast path (jacext/_guards.pyx)."""
        cdef cnp.ndarray x, jac
        cdef jx_work *w
        cdef int m, st
        cdef int32_t n_cols
        cdef Tape jt
        if not (self._single_jac_shape is not None and self._single_fits
                and is_point(a, self._single_shape)):
            return None
        x = <cnp.ndarray>a
        # a dense auto Jacobian from its sparse Jacobian tape, once made
        jt0 = self._jt0
        if jt0 is not None and mode == "auto":
            vals = _eval_tape(jt0[0], x, 0)
            if vals is not None:
                if out is None:
                    jac = empty_of(self._single_jac_shape, True)
                else:
                    jac = _check_out(out, self._single_jac_shape)
                _fill_rows(jac, jt0[1], jt0[2], vals, out is None)
                if y is not None:
                    self.tape.value(x, y)
                return jac
        # dense sweeps straight from C
        elif mode != "auto" or self._auto0 == 1 or (self._auto0 < 0 and self._set_auto0()):
            n_cols = <int32_t>self._cols0.shape[0]
            if mode == "auto":
                m = JX_MODE_FORWARD if n_cols <= self.tape.t.n_out else JX_MODE_REVERSE
            else:
                m = _MODE.get(mode, 0)
            if m:
                jac = (empty_of(self._single_jac_shape) if out is None
                       else _check_out(out, self._single_jac_shape))
                jt = self._pt_tape(m)
                if jt is not None and _tape_jacobian(jt, x, y, jac):
                    return jac
                w = self.tape.take_work(_lanes(self.tape, m, n_cols))
                try:
                    st = _point_jacobian(self.tape, w, x, y, jac, self._cols0, m)
                finally:
                    self.tape.give_work(w)
                raise_status(st)
                if m == JX_MODE_REVERSE and not _finite(jac):
                    self.tape.compressed(x, None, jac, self._cols0, None, 0,
                                         JX_MODE_FORWARD)
                return jac
        return None

    def value_and_jacobian(self, *args, argnums=0, mode="auto", threads=None):
        """(value, Jacobian) from one forward sweep."""
        cdef cnp.ndarray y
        if (len(args) == 1 and argnums == 0 and not self.out_is_tuple
                and self._single_jac_shape is not None):
            y = empty_of(self.out_shapes[0])
            jac = self._dense_at(args[0], mode, None, y)
            if jac is not None:         # one point straight from C, as F.jacobian(x)
                return y, jac
            jac = _batch_of_one(self, args[0], mode, None, y)
            if jac is not None:
                return view_as(y, (1,) * (cnp.PyArray_NDIM(<cnp.ndarray>args[0])
                                          - len(self._single_shape)) + self.out_shapes[0]), jac
        if _lazy.is_dask(args):
            return _lazy.value_and_jacobian(self, *args, argnums=argnums, mode=mode,
                                            threads=threads)
        return self._jacobian(args, argnums, mode, None, threads, True)

    cdef object _plan(self, argnums, mode, bint is_sparse):
        """The planner's Plan (made once there), kept at hand here."""
        key = (argnums, mode, is_sparse)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._planner.plan(argnums, mode, is_sparse)
        return plan

    cdef Tape _pt_tape(self, int m):
        """The dense Jacobian tape of argnums 0 in sweep mode m for single points, or None
        while the points counted here (a C int: nothing slows the fast path) are below its
        slot's threshold; at the threshold they go to the slot, which builds it once."""
        cdef Tape jt = self._pt_tapes[m]
        if jt is not None:
            return jt
        self._pt_seen[m] += 1
        if self._pt_after[m] == 0:
            slot = self._planner._slot(0, "forward" if m == JX_MODE_FORWARD else "reverse",
                                       False, True)
            self._pt_after[m] = slot.after if slot.after is not None else 2**62
        if self._pt_seen[m] < self._pt_after[m]:
            return None
        slot = self._planner._slot(0, "forward" if m == JX_MODE_FORWARD else "reverse",
                                   False, True)
        jt = slot.point_tape(self._pt_seen[m])
        self._pt_seen[m] = 0
        if slot.built:
            with self._planner.lock:      # set once: from None to the tape
                if self._pt_tapes[m] is None:
                    self._pt_tapes[m] = jt
            if jt is None:
                self._pt_after[m] = 2**62     # decided: no tape worth it
        return jt

    cdef bint _set_auto0(self) except -1:
        """Whether a dense auto Jacobian of argnums 0 takes plain sweeps (its Plan's)."""
        self._auto0 = self._plan(0, "auto", False).compressed is None
        return self._auto0

    def _jacobian(self, tuple args, argnums, mode, out, threads, bint want_value):
        cdef cnp.ndarray mat, y = None   # (x: rows, or parts: _args.flatten)
        cdef Tape jt
        cdef Py_ssize_t n_out = self.tape.t.n_out, n_points
        multi = not isinstance(argnums, (int, np.integer))
        argnums = tuple(int(k) for k in argnums) if multi else int(argnums)
        nums = argnums if multi else (argnums,)
        plan = self._plan(argnums, mode, False)
        n_cols = int(plan.cols.shape[0])
        x, batch = self._rows(args, n_cols, True)
        direct = out is not None and not multi and not self.out_is_tuple
        shape = batch + (n_out, n_cols)
        if direct:
            mat = _check_out(out, batch + self.out_shapes[0] + self.arg_shapes[argnums])
        if batch:
            n_points = math.prod(batch)
            X = _args.rows(x, self.tape.t.n_in)   # (n_points, n_in), or parts
            jt = plan.dense_tape.tape(n_points)
            if jt is None and plan.compressed is not None:
                vals, y = self._compressed(plan, _args.joined(X), n_points, threads, want_value)
                if not direct:
                    mat = np.zeros(shape, dtype=np.float64)
                flat = mat.reshape(n_points, n_out * n_cols)
                if direct:
                    flat[...] = 0.0
                flat[:, plan.structure.scatter()] = vals
            else:
                if not direct:
                    mat = np.empty(shape, dtype=np.float64)
                if want_value:
                    y = np.empty((n_points, n_out), dtype=np.float64)
                self.tape.run(JX_TASK_JACOBIAN, X, y, mat.reshape(n_points, n_out * n_cols),
                              _plan.n_threads(threads, n_points,
                                              jt.work if jt is not None
                                              else self.tape.work * (1 + n_cols)),
                              _MODE[plan.mode], None, plan.cols, None, 0, jt, None)
                # (a Jacobian tape's non-finite blocks go again by the sweeps in C, reverse
                # ones' non-finite rows forward: only tapeless reverse sweeps need this)
                if plan.mode == "reverse" and jt is None and not _finite(mat):
                    _nonfinite.redo_rows(self.tape, _args.joined(X),
                                         mat.reshape(n_points, n_out * n_cols),
                                         plan.cols, threads)
        elif plan.compressed is not None:
            vals, y = self._compressed(plan, x, -1, threads, want_value)
            if not direct:
                mat = np.zeros(shape, dtype=np.float64)
            ptr, idx = plan.structure.pattern
            _fill_rows(mat, ptr, idx, vals, not direct)
        else:
            if not direct:
                mat = np.empty(shape, dtype=np.float64)
            if want_value:
                y = np.empty(n_out, dtype=np.float64)
            jt = plan.dense_tape.point_tape(1)
            if jt is None or not _tape_jacobian(jt, x, y, mat):
                self.tape.compressed(x, y, mat, plan.cols, None, 0, _MODE[plan.mode])
                if plan.mode == "reverse" and not _finite(mat):
                    self.tape.compressed(x, None, mat, plan.cols, None, 0, JX_MODE_FORWARD)
        result = _nest_dense(self, mat, batch, nums, multi)
        if direct:
            result = out      # the caller's array itself, as the fast path returns it
        elif out is not None:
            _args.copy_into(out, result)
            result = out
        value = (_args.split(y.reshape(batch + (n_out,)), self.out_shapes, self.out_is_tuple,
                              batch) if want_value else None)
        return value, result

    # ---- sparse ----

    def sparsity(self, argnums=0):
        """The exact structural pattern of d out / d args[argnums].

        A ``scipy.sparse.csr_array`` of bool, shape (out.size, arg.size) (the
        outputs and the selected arguments flattened and concatenated).  An
        entry is structurally nonzero when the output depends on that input
        through differentiable operations; ``np.where``'s condition, floor,
        sign and comparisons contribute no dependence.  Computed once.
        """
        return self._planner.structure(_key(argnums)).array()

    def colours(self, argnums=0):
        """(column colours, row colours): the sweeps a sparse Jacobian costs."""
        return self._planner.structure(_key(argnums)).colours

    def _sparse_jacobian(self, tuple args, argnums, mode, threads):
        multi = not isinstance(argnums, (int, np.integer))
        argnums = _key(argnums)
        plan = self._plan(argnums, mode, True)
        x, batch = self._rows(args)
        if batch and (multi or self.out_is_tuple):
            raise ValueError("jacext: sparse=True for a batch needs one output and one "
                             "argument (a single pattern); compile a Function per block")
        n_points = math.prod(batch) if batch else -1
        vals, _ = self._compressed(plan, x.reshape(-1, self.tape.t.n_in) if batch else x,
                                   n_points, threads, False)
        structure = plan.structure
        if batch:
            return _sparse.SparseJacobians(structure.array(),
                                           vals.reshape(batch + (structure.nnz,)))
        mat = structure.csr(vals)
        nums = argnums if multi else (argnums,)
        col = _args.offsets([self.arg_shapes[k] for k in nums])

        def block(o, j):
            rows = mat if not self.out_is_tuple else mat[self._out_offsets[o]:
                                                          self._out_offsets[o + 1]]
            return rows if len(nums) == 1 else rows[:, col[j]:col[j + 1]]
        return _args.nest(block, self.out_shapes, self.out_is_tuple, nums, multi)

    def _compressed(self, plan, cnp.ndarray x, Py_ssize_t n_points, threads,
                    bint want_value):
        """(nonzeros, y) of the plan's compressed evaluation at one point (n_points -1: x a
        row) or at the n_points rows of x: from the sparse Jacobian tape where it exists,
        whose points with a non-finite nonzero the sweeps redo (their zero kills decide)."""
        slot = plan.sparse_tapes[want_value]
        done = slot.done
        cdef Tape jt = done[0] if done is not None else slot.tape(
            n_points if n_points >= 0 else 1)
        cdef Py_ssize_t n_y = self.tape.t.n_out if want_value else 0
        if jt is None:
            return _sparse.compressed_sweeps(self.tape, self._planner, plan, x, n_points,
                                             threads, want_value)
        if n_points < 0:
            if (self._jt0 is None and not want_value and self._single_jac_shape is not None
                    and plan is self._plan(0, "auto", False)):
                # dense auto Jacobians take it straight from now on (set once, under the
                # lock: a reader that sees the tuple sees all three)
                with self._planner.lock:
                    if self._jt0 is None:
                        self._jt0 = (jt,) + tuple(plan.structure.pattern)
            r = _eval_tape(jt, x, n_y)
            if r is None:
                return _sparse.compressed_sweeps(self.tape, self._planner, plan, x, -1,
                                                 threads, want_value)
            return r[n_y:], (r[:n_y] if want_value else None)
        r = np.empty((n_points, jt.t.n_out), dtype=np.float64)
        jt.run(JX_TASK_VALUE, x, r, None, _plan.n_threads(threads, n_points, jt.work), 0,
               None, None, None, 0, None, None)
        vals = np.ascontiguousarray(r[:, n_y:]) if n_y else r
        y = np.ascontiguousarray(r[:, :n_y]) if want_value else None
        bad = _nonfinite.bad_rows(vals)
        if bad.shape[0]:
            redo, y_redo = _sparse.compressed_sweeps(self.tape, self._planner, plan,
                                                     np.ascontiguousarray(x[bad]),
                                                     bad.shape[0], threads, want_value)
            vals[bad] = redo
            if want_value:
                y[bad] = y_redo
        return vals, y

    # ---- second order (jacext/second.py) ----

    def jacobian_function(self, argnums=0):
        """A Function of the same arguments whose output is the Jacobian d out /
        d args[argnums] (a tuple of blocks, outputs then arguments, where the output
        or ``argnums`` is a tuple).  It is a tape of the Jacobian's entries: batched,
        pickled, disassembled and differentiated like any Function, so
        ``F.jacobian_function().jacobian(x)`` is the Hessian.  Made once."""
        return _second.jacobian_function(self, argnums)

    def grad_function(self, argnums=0):
        """The gradient of a scalar output as a Function of the same arguments."""
        return _second.grad_function(self, argnums)

    def hessian(self, *args, w=None, argnums=0, mode="auto", out=None, threads=None,
                sparse=False):
        """The Hessian d^2 out / d args[argnums]^2.

        Scalar output: shape arg.shape + arg.shape; vector output: out.shape +
        arg.shape * 2 (as ``jax.hessian``).  ``F.hessian(x, w)`` (the arguments,
        then weights of the output's shape, or ``w=``): the Hessian of w . F(x),
        an NLP solver's Lagrangian, without the per-output Hessians.  Computed as
        the Jacobian of the gradient Function (forward over reverse; ``mode`` is
        that Jacobian's), one triangle read and mirrored: symmetric exactly.
        ``sparse=True``: a ``scipy.sparse.csr_array`` (a ``SparseJacobians`` for
        a batch) from compressed sweeps over :meth:`hessian_sparsity`.  Leading
        axes are a batch (``threads`` split it); ``out=`` as for Jacobians.
        """
        return _second.hessian(self, args, w, argnums, mode, out, threads, sparse)

    def hvp(self, *args, w=None, argnums=0):
        """``F.hvp(*args, v)`` (or ``F.hvp(*args, v, w)``): the Hessian (of w . F)
        times v by one tangent sweep over the gradient Function's tape, never
        forming H; batches over leading axes of the arguments and of v."""
        return _second.hvp(self, args, w, argnums)

    def hessian_sparsity(self, argnums=0):
        """The exact symmetric pattern of the Hessian (for a vector output, of
        w . F for any w): a bool ``scipy.sparse.csr_array`` (n x n).  Only
        nonlinear interactions count: x*y couples x and y, x + y does not."""
        return _second.hessian_sparsity(self, argnums)

    def hessian_colours(self, argnums=0):
        """The colours (gradient sweeps) a sparse Hessian costs."""
        return _second.hessian_colours(self, argnums)

    # ---- products ----

    def jvp(self, *args):
        """``F.jvp(*args, tangents) -> (value, J @ tangents)`` (forward mode).

        ``tangents`` has the shape of the argument for a one-argument Function,
        else it is a tuple with one array per argument.
        """
        if _lazy.is_dask(args):
            return _lazy.jvp(self, *args)
        return self._product("jvp", *_args.split_seeds("jvp", args, self.arg_shapes,
                                                       self.out_shapes, self.out_is_tuple,
                                                       self.name))

    def vjp(self, *args):
        """``F.vjp(*args, cotangent) -> (value, cotangent @ J)`` (reverse mode).

        ``cotangent`` has the output's structure; the result has one array per
        argument (a tuple when the Function takes several).
        """
        if _lazy.is_dask(args):
            return _lazy.vjp(self, *args)
        return self._product("vjp", *_args.split_seeds("vjp", args, self.arg_shapes,
                                                       self.out_shapes, self.out_is_tuple,
                                                       self.name))

    def _product(self, str kind, tuple args, tuple seeds, tuple seed_shapes):
        """jvp or vjp: (value, J v) or (value, u J) at one point or a batch."""
        cdef cnp.ndarray x, v, y, r
        x, batch = self._rows(args)
        arrays, sbatch = _args.parse(seeds, seed_shapes, self.name,
                                       "tangent" if kind == "jvp" else "cotangent")
        v = _args.flatten(arrays, seed_shapes, sbatch)
        batch = tuple(np.broadcast_shapes(batch, sbatch))
        n_in, n_out = self.tape.t.n_in, self.tape.t.n_out
        width = n_out if kind == "jvp" else n_in
        if not batch:
            y = np.empty(n_out, dtype=np.float64)
            r = np.empty(width, dtype=np.float64)
            self.tape.product(kind == "jvp", x, v, y, r)
        else:
            x = _args.broadcast_rows(x, batch)
            v = _args.broadcast_rows(v, batch)
            y = np.empty((x.shape[0], n_out), dtype=np.float64)
            r = np.empty((x.shape[0], width), dtype=np.float64)
            self.tape.batch(kind, x, y, r,
                            _plan.n_threads(None, x.shape[0], 2 * self.tape.work), seed=v)
        if kind == "vjp" and not _finite(r):
            _nonfinite.redo_vjp(self.tape, x, v, r)
        value = _args.split(y, self.out_shapes, self.out_is_tuple, batch)
        if kind == "jvp":
            return value, _args.split(r, self.out_shapes, self.out_is_tuple, batch)
        return value, _args.split(r, self.arg_shapes, len(self.arg_shapes) > 1, batch)


# ---- the fast paths' pieces ----

cdef _check_size(tuple batch, Py_ssize_t n_out, Py_ssize_t n_cols):
    """MemoryError, before anything is allocated, for a dense Jacobian beyond RAM."""
    n_points = math.prod(batch) if batch else 1
    _plan.check_dense_memory(
        n_points * n_out * n_cols, f"Jacobian ({n_points} x {n_out} x {n_cols} float64)",
        "a sparse Jacobian (sparse=True), Jacobian-vector products (jvp/vjp), or a "
        "smaller batch")


cdef bint _is_parts(tuple args, tuple shapes):
    """Whether args are one point of a Function of several arguments: every argument a
    float64 C-contiguous array of exactly its traced shape, or a float (Python's or
    NumPy's) for a scalar argument (an ODE's f(t, y))."""
    cdef Py_ssize_t k, n = len(args)
    if n < 2 or n != len(shapes):
        return False
    for k in range(n):
        if not ((isinstance(args[k], float) and shapes[k] == ())
                or is_point(args[k], <tuple>shapes[k])):
            return False
    return True


cdef cnp.ndarray _gather(tuple args, tuple shapes, tuple offsets):
    """One point of several arguments (_is_parts) as the VM's row, each at its offset; None
    for anything else (the general path, which gives the same numbers)."""
    cdef cnp.ndarray x
    cdef double *px
    if not _is_parts(args, shapes):
        return None
    x = np.empty(offsets[len(args)], dtype=np.float64)
    px = <double *>cnp.PyArray_DATA(x)
    for k in range(len(args)):
        if isinstance(args[k], float):
            px[<Py_ssize_t>offsets[k]] = <double>args[k]
        else:
            memcpy(px + <Py_ssize_t>offsets[k], cnp.PyArray_DATA(<cnp.ndarray>args[k]),
                   cnp.PyArray_SIZE(<cnp.ndarray>args[k]) * sizeof(double))
    return x


cdef tuple _lead_of_one(tuple args, tuple shapes):
    """(1,) * k where every argument is a float64 C-contiguous array of (1,) * k + its
    traced shape (a batch of one, k >= 1), else None."""
    if len(args) < 2 or len(args) != len(shapes) or not isinstance(args[0], np.ndarray):
        return None
    lead = (1,) * (np.ndim(args[0]) - len(shapes[0]))
    return lead if lead and all(is_point(a, lead + s) for a, s in zip(args, shapes)) else None


cdef object _value_of_parts(Function F, tuple args):
    """F's value at one point of several arguments (_is_parts), read where they lie: the
    sweep's pointer runs read them there and the rest is copied into the work
    (jx_point_value_parts), with no joined row, whose fresh pages cost more than the copy
    for large arguments (1.6 MB: 100 us of faults).  None for anything else."""
    cdef Tape tape = F.tape
    cdef cnp.ndarray y
    cdef jx_work *w
    cdef jx_work *helper
    cdef double *py
    cdef int st
    cdef Py_ssize_t k, n = len(args)
    cdef const double *part[JX_MAX_PARTS]
    cdef int32_t width[JX_MAX_PARTS]
    cdef double scalar[JX_MAX_PARTS]
    if n > JX_MAX_PARTS:
        return None
    if not _is_parts(args, F.arg_shapes):   # a batch of one: the point's path, reshaped
        if (lead := _lead_of_one(args, F.arg_shapes)) is None:
            return None
        r = _value_of_parts(F, tuple(a.reshape(s) for a, s in zip(args, F.arg_shapes)))
        return (tuple(o.reshape(lead + o.shape) for o in r) if F.out_is_tuple
                else r.reshape(lead + r.shape))
    for k in range(n):
        if isinstance(args[k], float):
            scalar[k] = <double>args[k]
            part[k] = &scalar[k]
            width[k] = 1
        else:
            part[k] = <const double *>cnp.PyArray_DATA(<cnp.ndarray>args[k])
            width[k] = <int32_t>cnp.PyArray_SIZE(<cnp.ndarray>args[k])
    y = empty_of(F.out_shapes[0] if not F.out_is_tuple else (tape.t.n_out,))
    py = <double *>cnp.PyArray_DATA(y)
    w = tape.take_work(1)
    helper = tape.helper(w)
    try:
        if tape._nogil(1):
            with nogil:
                st = jx_point_value_parts(&tape.t, w, helper, <int32_t>n, part, width, py)
        else:
            st = jx_point_value_parts(&tape.t, w, helper, <int32_t>n, part, width, py)
    finally:
        tape.give_work(w)
    raise_status(st)
    return _args.split(y, F.out_shapes, True, ()) if F.out_is_tuple else y


cdef cnp.ndarray _one_point(Function F, object a):
    """The point of a batch of one (a float64 C-contiguous array of F's one argument with
    leading axes of length 1) as an array of the traced shape (a view), else None."""
    cdef cnp.ndarray arr
    cdef cnp.npy_intp *dims
    cdef Py_ssize_t k, j, nd
    if F._single_shape is None or not cnp.PyArray_CheckExact(a) or F.tape.t.n_in == 0:
        return None
    arr = <cnp.ndarray>a
    nd = len(F._single_shape)
    k = cnp.PyArray_NDIM(arr) - nd
    if (k <= 0 or cnp.PyArray_SIZE(arr) != F.tape.t.n_in
            or cnp.PyArray_TYPE(arr) != cnp.NPY_DOUBLE
            or not cnp.PyArray_IS_C_CONTIGUOUS(arr)):
        return None
    dims = cnp.PyArray_DIMS(arr)
    for j in range(nd):
        if dims[k + j] != <cnp.npy_intp>F._single_shape[j]:
            return None
    return view_as(arr, F._single_shape)


cdef object _batch_of_one(Function F, object a, object mode, object out, cnp.ndarray y):
    """F.jacobian(a) for a batch of one point (``_one_point``) by the single-point fast
    path, the values into y (F's output shape) unless None; None where that path does not
    apply.  So a batch of one costs and gives what the point does."""
    cdef cnp.ndarray x, o = None
    if F._single_jac_shape is None or (x := _one_point(F, a)) is None:
        return None
    batch = (1,) * (cnp.PyArray_NDIM(<cnp.ndarray>a) - x.ndim)
    if out is not None:
        if not (cnp.PyArray_Check(out) and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>out)
                and has_shape(<cnp.ndarray>out, batch + F._single_jac_shape)):
            return None                 # the general path says what is wrong
        o = view_as(<cnp.ndarray>out, F._single_jac_shape)
    jac = F._dense_at(x, mode, o, y)
    if jac is None:
        return None
    return out if out is not None else view_as(<cnp.ndarray>jac, batch + F._single_jac_shape)


def _nest_dense(Function F, cnp.ndarray mat, tuple batch, tuple nums, bint multi):
    """(..., n_out, n_cols) -> the nested structure of F's Jacobians."""
    if not multi and not F.out_is_tuple:
        return mat.reshape(batch + F.out_shapes[0] + F.arg_shapes[nums[0]])
    col = _args.offsets([F.arg_shapes[k] for k in nums])
    mat = mat.reshape(batch + (F.tape.t.n_out, col[-1]))
    split = multi or F.out_is_tuple

    def block(o, j):
        b = mat[..., F._out_offsets[o]:F._out_offsets[o + 1], col[j]:col[j + 1]]
        if split:
            b = np.ascontiguousarray(b)
        return b.reshape(batch + F.out_shapes[o] + F.arg_shapes[nums[j]])
    return _args.nest(block, F.out_shapes, F.out_is_tuple, nums, multi)


def _key(argnums):
    """argnums as the plans' key: an int, or a tuple of ints."""
    if isinstance(argnums, (int, np.integer)):
        return int(argnums)
    return tuple(int(k) for k in argnums)
