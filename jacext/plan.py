"""Plans: how each kind of request is computed, the cost model, and every threshold.

A Function answers requests -- a Jacobian with respect to ``argnums`` in some ``mode``,
dense or sparse, at one point or over a batch -- from one tape in several ways: dense
tangent or adjoint sweeps; sweeps compressed by a column or row colouring of the exact
sparsity pattern, or one reverse sweep per output over its dependency cone (CppAD's
"subgraph" mode); or, once enough points have asked for it, a Jacobian tape (the
Jacobian's entries as a tape of their own, ``jacext/jactape.py``) run in one value sweep.
The cheapest is picked by the cost model below, once per kind of request: a
:class:`Plan`, made under the Function's lock the first time that kind is asked for and
read-only afterwards.  Only a Plan's Jacobian tapes come later: each
:class:`JacobianTapeSlot` counts the points asked of it and builds its tape once, when
the sweeps' work so far covers the build's estimated cost (ski rental: a one-off call
never pays for the build, a repeated one pays at most about twice).

Costs are counted in instruction-lanes: one instruction's value, or one tangent or
adjoint of it, at one point (about a nanosecond on the project's machine).  Every
threshold the engine uses is named in this module; the measurements behind them are
written next to each.

This module decides; it runs nothing.  The Function (``jacext/_function.pyx``) carries a
Plan out through the Tape's entry points (``jacext/_tape.pyx``).
"""
from __future__ import annotations

import os
import threading

import numpy as np

# plan.py imports nothing of jacext at module level: the compiled modules read its
# thresholds when they load.  The builders it calls are imported where used.

# ---------------------------------------------------------------- thresholds --

#: Below this much work (instructions x lanes) a single-point sweep keeps the GIL:
#: releasing and taking it back costs more than the sweep itself.
NOGIL_WORK = 4096
#: Batches: no thread is started for less than this much work (points x instruction-lanes
#: per point) per thread.
MIN_WORK_PER_THREAD = 200_000
#: The single-point value sweep pays its dispatch per run of like instructions (vm.c) when
#: runs average at least RUNS_MIN_MEAN (numerator, denominator) instructions; below that
#: a run's setup costs more than it saves.
RUNS_MIN_MEAN = (4, 3)
#: Dense Jacobians smaller than this many rows or columns never consider compressed
#: sweeps: a dense sweep is then only a few lanes.
COMPRESS_MIN_SIZE = 33
#: A function with Python control flow keeps at most this many tapes, one per branch
#: outcome (``jacext/guarded.py``); past it the least recently used is dropped (and a
#: warning names the branch that keeps changing), as torch.compile's recompile limit.
GUARDED_TAPES = 8
#: Finite-input tapes (``jacext/finite.py``): a point whose inputs are all within +-this
#: runs the folded tape (x * 0.0 gone where x is proven finite); any other point, an inf
#: or nan included, the exact one.  A product of three such inputs is still finite.
FOLD_INPUT_BOUND = 1e100
#: ... kept only where it saves more than this much work per input (instructions, a block
#: m x n): the check of a point's inputs costs about two vectorised instructions an input
#: (callgrind at 10^5 inputs: exp(x) + x * 0.0, two saved an input, 7.84M machine
#: instructions folded against 7.79M exact; exp(x) + sin(x) * 0.0, three, 7.9M against 15.8M).
FOLD_MIN_SAVED = 2
#: ... and the range analysis counts a value finite while its interval stays within
#: +-this: far enough from overflow that rounding of the bounds cannot matter.
FOLD_RANGE_LIMIT = 1e300
#: Compressed sweeps replace dense ones when they cost at most this fraction.
COMPRESS_MAX_COST = 0.5
#: Greedy colouring costs the sum of the squared row lengths; above this budget (a
#: dense-ish pattern, where colouring buys little) every column or row keeps its colour.
COLOURING_MAX_WORK = 4 * 10**8
#: A cone step (scattered reads and writes, its own clean-up) costs about this many lanes
#: of a colour sweep, whose partials come fused with the values (measured on broyden: 7000
#: cone steps took longer than 3 colours of 6000 instructions).
CONE_STEP_LANES = 4
#: Jacobian tapes: built after at most this many points in any case.
JAC_TAPE_AFTER_POINTS = 2048
#: Dense Jacobian tapes: none for tapes whose sweeps do more than this many
#: instruction-lanes per point (the tape would hold that many Jacobian entries' terms).
#: A block instruction counts m x n (``Tape.work``): its tangents are m x n multiply-adds
#: per lane, and so are the Jacobian tape's blocks per column.  With blocks, the tape wins
#: by its scalar part only (the products are the same, and BLAS runs the sweeps' one
#: product over directions x points wider than the tape's one per column over points):
#: mlp 64-64-64 at 2000-10000 points, one thread, 0.8-0.95x the sweeps' time; 72 wide
#: (776,000 here) 0.62x; 256 wide (34 million: no tape) 1.8x as its jacobian_function.
JAC_TAPE_MAX_WORK = 1_000_000
#: Sparse Jacobian tapes: at most this many instructions in the function's tape where the
#: builder goes group by group (its peak memory is ~0.4 KB per instruction: 2.2 GB for
#: broyden n = 10^6's 6 million), a tenth of it where it goes node by node (~8 us per
#: instruction).
JAC_TAPE_MAX_INSTR = 8_000_000
JAC_TAPE_MAX_INSTR_BY_NODE = JAC_TAPE_MAX_INSTR // 10
#: A Jacobian tape may take this many graph nodes per term of the sweeps it replaces (and
#: JAC_TAPE_NODES_BASE more); past that it is abandoned.  A sparse tape's terms: its
#: function's instructions and JAC_TAPE_TERMS_PER_NONZERO per nonzero.
JAC_TAPE_NODES_PER_TERM = 4
JAC_TAPE_NODES_BASE = 1000
JAC_TAPE_TERMS_PER_NONZERO = 4
#: ... and is kept only if its one value sweep is at most this many times the length of
#: the sweeps' work it replaces (which store two partials per instruction and then read
#: them back per direction); both lengths count a block as m x n.
JAC_TAPE_MAX_LENGTH = 2
#: A single point's sweeps carry their directions as the lanes of one instruction (SIMD):
#: a lane costs about this fraction of an instruction of a Jacobian tape's value sweep
#: (the decoded stream, vm.h jx_code).  Measured (fastest of 15 x 2,000 calls, each way
#: forced): the tape at most as long as n_instr * (1 + 0.45 * directions) was the faster
#: on arm (956 against 261 instructions, 7 lanes: 2.9 against 3.2 us), arm_cs, an 8-wide
#: tanh layer, a 13-species chain and 3 rotations; the longer tapes of a 6-deep 6-wide
#: tanh chain (6.25x, 6 lanes: 6.4 against 3.8 us) and of an 8-term product (6.2x, 8
#: lanes) lost.  A single point takes the dense Jacobian tape only where its work
#: (instructions, a block of m x n as m x n: ``point_tape_limit``) is at most that.
POINT_LANE_COST = 0.45
#: The reverse Jacobian-tape builder goes group by group where groups average at least
#: this many instructions (a traced vectorised call), node by node otherwise (scalar code).
REVERSE_BULK_MIN_GROUP = 8
#: The build's estimated cost, in instruction-lanes, measured on seed, arm, mlp, broyden
#: and bratu: ~0.1 ms whatever the tape (a Graph, its lowering, a Tape); by group ~0.5 us
#: per instruction plus ~50 us of Python per group; node by node ~8 us per instruction.
BUILD_BASE = 100_000
BUILD_PER_INSTR_BY_GROUP = 500
BUILD_PER_GROUP = 50_000
BUILD_PER_INSTR_BY_NODE = 8_000
#: ... and per block instruction and direction (a block of the Jacobian tape, or W's
#: products): ~0.1 ms (mlp 64-64-64: 128 of them took 13 ms of a 20-30 ms build).
BUILD_PER_BLOCK_DIRECTION = 100_000
#: Sparse Hessians: the symmetric (star) colouring runs in Python, about a microsecond per
#: step (a vertex's neighbours' neighbours); it is tried only where it may take fewer
#: colours than the gradient's column colouring (more than 3: a path already needs 3) and
#: its steps stay within this budget.
STAR_COLOURING_MAX_STEPS = 2_000_000
#: Dense results filled from nonzeros go a chunk of rows of about this many bytes at a
#: time: zeroed, then filled while in cache.
FILL_CHUNK_BYTES = 256 * 1024
#: A traced product with a constant matrix becomes block instructions (BLAS, vm.h) where
#: the matrix has at least this many nonzeros and at least this fraction of its entries is
#: nonzero; else the scalar form, which skips its zeros (bench/blocks.py measures both).
BLOCK_MIN_NONZEROS = 64
BLOCK_MIN_DENSITY = 0.25
#: A traced product of two traced matrices, A(x) @ B(x) (m x n times n x p), becomes one
#: product block (vm.h: BLAS for values, tangents and adjoints) where it takes at least
#: this many multiply-adds; smaller ones (kinematics' 4 x 4 and 3 x 3) keep the scalar
#: form, faster than any BLAS call there (bench/varvar.py measures both).
PRODUCT_MIN_WORK = 512
#: In a Jacobian tape, a block y = W x (W m x n) carries a Jacobian column's tangents (a
#: row's adjoints) as scalar products of W's columns (rows) where at most
#: max(1, n // JAC_TAPE_BLOCK_SPARSE) of its operands' are nonzero, else as one block of
#: W (W^T) over them (jacext/jactape_blocks.py).  Products cost two scalar instructions
#: (a multiply, an add) per nonzero and row, a block m x n multiply-adds at BLAS speed (a
#: tenth of an instruction or less) plus n operand copies: the same break-even as the
#: sweeps' sparse lanes (block.c's JX_BLOCK_SPARSE).  One nonzero always goes by products:
#: a unit seed's (the first layer of a network) are W's column itself, as constants.
JAC_TAPE_BLOCK_SPARSE = 16


# ---------------------------------------------------------------- machine --

def usable_cores():
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _read_physical_memory():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


_MEMORY = _read_physical_memory()   # read once, at import: nothing to race for later


def physical_memory():
    """Bytes of RAM."""
    return _MEMORY


def check_dense_memory(n_values, what, instead):
    """MemoryError, before anything is allocated, where a dense result of n_values
    float64 (``what``, e.g. "Jacobian (10 x 3 float64)") would not fit in RAM;
    ``instead`` names what to ask for."""
    nbytes = 8 * int(n_values)
    if nbytes > _MEMORY:
        raise MemoryError(
            f"jacext: the dense {what} would take {nbytes / 2**30:.1f} GiB, more than this "
            f"machine's {_MEMORY / 2**30:.1f} GiB of memory; ask for {instead}")


# ---------------------------------------------------------------- cost model --

def runs_pay(n_runs, n_instr):
    """Whether the single-point value sweep should go by runs (RUNS_MIN_MEAN)."""
    num, den = RUNS_MIN_MEAN
    return num * n_runs <= den * n_instr


def use_block(size, nonzeros):
    """Whether a constant matrix of ``size`` entries, ``nonzeros`` of them not zero,
    becomes block instructions (BLOCK_MIN_NONZEROS, BLOCK_MIN_DENSITY)."""
    return nonzeros >= BLOCK_MIN_NONZEROS and nonzeros >= BLOCK_MIN_DENSITY * size


def use_product(m, n, p):
    """Whether a traced m x n by n x p matrix product becomes a product block
    (PRODUCT_MIN_WORK)."""
    return m * n * p >= PRODUCT_MIN_WORK


def n_threads(threads, n_points, work_per_point):
    """Threads for a batch: ``threads`` (None: every usable core), fewer where a thread
    would get less than MIN_WORK_PER_THREAD."""
    if threads is None:
        threads = usable_cores()
    elif not isinstance(threads, (int, np.integer)) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"jacext: threads must be a positive int or None; got {threads!r}")
    threads = int(threads)
    if threads <= 1:
        return 1
    per = max(1, n_points * max(work_per_point, 1) // MIN_WORK_PER_THREAD)
    return int(max(1, min(threads, per, n_points)))


def dense_mode(n_cols, n_out):
    """The cheaper dense sweep: one tangent lane per column or one adjoint lane per row."""
    return "forward" if n_cols <= n_out else "reverse"


def best_compressed(structure, n_instr):
    """(mode, cost) of the cheapest sparse evaluation, in instruction-sweeps: forward over
    p column colours costs p sweeps, reverse over q row colours q sweeps, one reverse
    sweep per output over its cone (mode "cones") the sum of the cone sizes times
    CONE_STEP_LANES, which wins where the outputs have small cones that colouring cannot
    separate (an arrow-head, a dense row among sparse ones)."""
    T = max(n_instr, 1)
    p, q = structure.colours
    mode, cost = ("forward", p * T) if p <= q else ("reverse", q * T)
    cones = structure.cones(cost // CONE_STEP_LANES)
    cone_cost = None if cones is None else CONE_STEP_LANES * cones.work
    if cone_cost is not None and cone_cost < cost:
        mode, cost = "cones", cone_cost
    return mode, cost


def compress_dense(best, n_cols, n_out, n_instr):
    """The compressed mode a dense auto Jacobian should take, or None (dense sweeps);
    ``best`` a callable giving best_compressed's (mode, cost), asked only where the
    Jacobian is large enough to consider it."""
    if min(n_cols, n_out) < COMPRESS_MIN_SIZE:
        return None
    mode, cost = best()
    if cost <= COMPRESS_MAX_COST * min(n_cols, n_out) * max(n_instr, 1):
        return mode
    return None


def reverse_in_bulk(n_instr, n_groups):
    """Whether the reverse Jacobian-tape builder goes group by group."""
    return n_instr >= REVERSE_BULK_MIN_GROUP * max(n_groups, 1)


def build_cost(mode, n_instr, n_groups, block_dirs=0):
    """The estimated cost of building a Jacobian tape, in instruction-lanes;
    ``block_dirs``: block instructions times directions (each a block or products)."""
    extra = BUILD_PER_BLOCK_DIRECTION * block_dirs
    if mode == "forward" or reverse_in_bulk(n_instr, n_groups):
        return (BUILD_BASE + BUILD_PER_INSTR_BY_GROUP * n_instr + BUILD_PER_GROUP * n_groups
                + extra)
    return BUILD_BASE + BUILD_PER_INSTR_BY_NODE * n_instr + extra


def point_tape_limit(work, n_dirs):
    """The most work (``Tape.work``) of a dense Jacobian tape that beats a single point's
    sweeps (``work`` per lane, n_dirs lanes)."""
    return int(work * (1 + POINT_LANE_COST * n_dirs))


def tape_after(build, per_point):
    """Points whose sweeps cover a build of cost ``build`` at ``per_point`` each (ski
    rental), at most JAC_TAPE_AFTER_POINTS."""
    return int(min(JAC_TAPE_AFTER_POINTS, max(1, -(-build // max(per_point, 1)))))


# ---------------------------------------------------------------- plans --

class JacobianTapeSlot:
    """One Jacobian tape of a Function: for ``cols`` in ``mode``, dense or in the sparse
    form of ``structure``'s pattern, with or without the function's values first.

    ``tape(n_points)`` counts the points asked for and returns the built Tape, or None
    while the count is below ``after`` (and always, where no tape can be built: ``after``
    None).  The build runs once, under the Function's lock; a call that finds the lock
    taken goes on with the sweeps.  ``done`` is None until then, and then ``(tape,)``
    (tape None where it was not worth it): one store publishes the outcome, so a reader
    that sees it sees the tape.
    """

    __slots__ = ("_lock", "_build", "after", "seen", "done", "point_limit")

    def __init__(self, lock, after, build, point_limit=0):
        self._lock = lock
        self._build = build
        self.after = after
        self.seen = 0
        self.done = (None,) if after is None else None
        self.point_limit = point_limit

    def tape(self, n_points):
        done = self.done
        if done is not None:
            return done[0]
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if self.done is None:
                self.seen += n_points
                if self.seen >= self.after:
                    self.done = (self._build(),)
        finally:
            self._lock.release()
        done = self.done
        return done[0] if done is not None else None

    def point_tape(self, n_points=1):
        """:meth:`tape` for single points: the tape only where its work (instructions,
        a block of m x n as m x n) is at most ``point_limit`` (``point_tape_limit``), else
        None."""
        t = self.tape(n_points)
        return t if t is not None and t.work <= self.point_limit else None

    @property
    def current(self):
        """The tape if built (None otherwise), without counting."""
        done = self.done
        return done[0] if done is not None else None

    @property
    def built(self):
        """Whether the slot has decided (built its tape, or found none worth it)."""
        return self.done is not None


class Plan:
    """How requests of one kind are computed; read-only once made (see the module).

    ``cols``: the input indices (int32) of the selected arguments.  ``mode``: the dense
    sweep's ("forward" or "reverse").  ``compressed``: None, or the sparse evaluation's
    mode ("forward", "reverse" colourings, or "cones"), with ``structure`` the pattern,
    colourings and cones it uses.  ``dense_tape``: the dense Jacobian tape's slot (batches
    of dense Jacobians; None for sparse requests); ``sparse_tapes``: the sparse form's
    slots, (without values, with values), where ``compressed``.  The slots are asked of
    the Planner when first used (a single point's dense sweeps never need one).
    """

    __slots__ = ("argnums", "cols", "mode", "compressed", "structure", "is_sparse",
                 "_planner", "_dense_tape", "_sparse_tapes")

    def __init__(self, planner, argnums, cols, mode, compressed, structure, is_sparse):
        self._planner = planner
        self.argnums = argnums
        self.cols = cols
        self.mode = mode
        self.compressed = compressed
        self.structure = structure
        self.is_sparse = is_sparse
        self._dense_tape = self._sparse_tapes = None

    @property
    def dense_tape(self):
        slot = self._dense_tape
        if slot is None and not self.is_sparse:
            # the Planner makes each slot once: racing threads store the same object
            slot = self._dense_tape = self._planner._slot(self.argnums, self.mode, False,
                                                          True)
        return slot

    @property
    def sparse_tapes(self):
        slots = self._sparse_tapes
        if slots is None and self.compressed is not None:
            tape_mode = "forward" if self.compressed == "forward" else "reverse"
            slots = self._sparse_tapes = tuple(
                self._planner._slot(self.argnums, tape_mode, True, values)
                for values in (False, True))
        return slots

    def __repr__(self):
        how = f"compressed ({self.compressed})" if self.compressed else f"{self.mode} sweeps"
        return f"<jacext Plan argnums={self.argnums!r}: {how}>"


class Planner:
    """A Function's plans, sparse structures and Jacobian-tape slots, each made once under
    one lock.  ``tape``: the Function's Tape; ``arg_offsets``: where each argument's inputs
    start (and the end).  ``jacobian_tapes``: False makes every Jacobian come from the
    sweeps (``jacext.testing.without_jacobian_tapes``: comparisons of the two)."""

    def __init__(self, tape, arg_offsets, jacobian_tapes=True):
        self.tape = tape
        self.arg_offsets = arg_offsets
        self.jacobian_tapes = jacobian_tapes
        self.lock = threading.RLock()
        self._columns = {}
        self._structures = {}
        self._slots = {}
        self._plans = {}
        self._best = {}
        self._n_groups = None

    # ---- per argnums ----

    def columns(self, argnums):
        """Input indices (int32, read-only) of the selected arguments."""
        cols = self._columns.get(argnums)
        if cols is not None:
            return cols
        nums = (argnums,) if isinstance(argnums, (int, np.integer)) else tuple(argnums)
        n_args = len(self.arg_offsets) - 1
        parts = []
        for k in nums:
            k = int(k)
            if not -n_args <= k < n_args:
                raise ValueError(f"jacext: argnums {argnums!r} names argument {k}, but the "
                                 f"function takes {n_args} argument(s)")
            k %= n_args
            parts.append(np.arange(self.arg_offsets[k], self.arg_offsets[k + 1],
                                   dtype=np.int32))
        cols = np.ascontiguousarray(np.concatenate(parts) if parts else np.zeros(0, np.int32))
        cols.setflags(write=False)
        with self.lock:
            return self._columns.setdefault(argnums, cols)

    def _once(self, cache, key, make):
        """cache[key], made by make() under the lock the first time (double-checked: the
        common hit takes no lock)."""
        hit = cache.get(key)
        if hit is None:
            with self.lock:
                hit = cache.get(key)
                if hit is None:
                    hit = cache[key] = make()
        return hit

    def structure(self, argnums):
        """The sparse structure (pattern, colourings, cones) of ``argnums``, made once."""
        from jacext.sparse import Structure

        return self._once(self._structures, argnums, lambda: Structure(
            self.tape, self.columns(argnums), COLOURING_MAX_WORK, self.lock))

    def known_structure(self, argnums):
        """The sparse structure of ``argnums`` if some request made it, else None."""
        return self._structures.get(argnums)

    def best(self, argnums):
        """best_compressed's (mode, cost) for ``argnums``, made once."""
        return self._once(self._best, argnums, lambda: best_compressed(
            self.structure(argnums), self.tape.work))

    def n_groups(self):
        """Groups of like instructions the Jacobian-tape builders work in."""
        if self._n_groups is None:
            from jacext import jactape

            self._n_groups = jactape.n_groups(self.tape.arrays())
        return self._n_groups

    # ---- plans ----

    def plan(self, argnums, mode, is_sparse):
        """The Plan of F.jacobian(argnums=..., mode=..., sparse=...)."""
        return self._once(self._plans, (argnums, mode, is_sparse),
                          lambda: self._make(argnums, mode, is_sparse))

    def _make(self, argnums, mode, is_sparse):
        if mode not in ("auto", "forward", "reverse"):
            raise ValueError(f"jacext: mode must be 'auto', 'forward' or 'reverse'; got "
                             f"{mode!r}")
        cols = self.columns(argnums)
        n_cols, n_out = int(cols.shape[0]), self.tape.n_outputs
        dense = dense_mode(n_cols, n_out) if mode == "auto" else mode
        n_instr = self.tape.n_instructions
        structure = self.structure(argnums) if is_sparse or mode == "auto" else None
        if is_sparse:
            compressed = self.best(argnums)[0] if mode == "auto" else mode
        elif mode == "auto":
            compressed = compress_dense(lambda: self.best(argnums), n_cols, n_out, n_instr)
        else:
            compressed = None
        return Plan(self, argnums, cols, dense, compressed, structure, is_sparse)

    def _slot(self, argnums, mode, is_sparse, values):
        """The Jacobian tape slot (argnums, mode, dense or sparse form, with values or not),
        shared by every Plan that runs those sweeps (the sparse form mirrors forward
        colourings in forward mode, row colourings and cones in reverse mode)."""
        return self._once(self._slots, (argnums, mode, is_sparse, values),
                          lambda: self._make_slot(argnums, mode, is_sparse, values))

    def _make_slot(self, argnums, mode, is_sparse, values):
        cols = self.columns(argnums)
        t = self.tape
        n_instr, n_out, n_cols = t.n_instructions, t.n_outputs, int(cols.shape[0])
        n_dirs = n_cols if mode == "forward" else n_out
        # a sweep's work per lane: its instructions, a block of m x n as m x n
        work = t.work * (1 + n_dirs)
        if is_sparse:
            by_group = mode == "forward" or reverse_in_bulk(n_instr, self.n_groups())
            possible = n_dirs > 0 and n_instr <= (JAC_TAPE_MAX_INSTR if by_group
                                                  else JAC_TAPE_MAX_INSTR_BY_NODE)
        else:
            possible = n_dirs > 0 and work <= JAC_TAPE_MAX_WORK
        possible = possible and self.jacobian_tapes
        if not possible:
            slot = JacobianTapeSlot(self.lock, None, None)
        else:
            if is_sparse:   # values plus the sparse evaluation's sweeps
                per_point = max(t.work, 1) + int(self.best(argnums)[1])
            else:
                per_point = max(t.work, 1) * (1 + n_dirs)
            build = build_cost(mode, max(n_instr, 1), self.n_groups(),
                               t.n_blocks * n_dirs)
            slot = JacobianTapeSlot(self.lock, tape_after(build, per_point),
                                    lambda: self._build(argnums, mode, is_sparse, values, work),
                                    point_tape_limit(t.work, n_dirs))
        return slot

    def _build(self, argnums, mode, is_sparse, values, work):
        """The Jacobian tape of a slot, or None where it cannot be built or does not pay."""
        from jacext import jactape
        from jacext._tape import Tape

        t = self.tape
        cols = self.columns(argnums)
        pattern = self.structure(argnums).pattern if is_sparse else None
        size = pattern[1].shape[0] if is_sparse else t.n_outputs * int(cols.shape[0])
        terms = (t.n_instructions + JAC_TAPE_TERMS_PER_NONZERO * size if is_sparse
                 else work)
        arrays = jactape.build(t.arrays(), t.fixed_partials(), cols, mode,
                               JAC_TAPE_NODES_PER_TERM * terms + JAC_TAPE_NODES_BASE,
                               pattern=pattern, values=values,
                               by_group=mode == "forward" or reverse_in_bulk(
                                   t.n_instructions, self.n_groups()))
        if arrays is None:
            return None
        if t.exact is not None:   # it holds where the folded tape holds (vm.h jx_tape.exact)
            arrays["input_bound"] = FOLD_INPUT_BOUND
        jt = Tape(arrays, copy=False)
        return jt if jt.work <= JAC_TAPE_MAX_LENGTH * work else None
