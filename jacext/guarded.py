"""Guarded Functions: Python control flow, one tape per branch outcome.

A function that branches in Python on traced values (``if x[0] > 0``, ``max(a, b)``,
``float(x)``, ``while err > tol``) is traced at a point (the example arguments of
``jx.compile``, the point of ``jx.jacobian``): each branch takes the outcome at that
point and records a guard (``jacext.trace.Guards``).  The tape is exact for every point
that takes the same outcomes.  A :class:`GuardedFunction` keeps such tapes side by side,
each with its :class:`jacext._guards.GuardCheck`:

* a single point runs the check of the tape used last (one C sweep of the guarded values
  and a comparison), then the others; a point that none holds is traced again there,
  and the new tape joins the others (at most ``plan.GUARDED_TAPES`` of them, least
  recently used out first, with a one-time warning naming the line whose outcome keeps
  changing);
* a batch is split by guard outcome: each group of rows runs on its own tape (the
  Function's batched path, threads included), and the results land in the batch's order;
  a batch whose rows all hold the last tape's guards takes that tape's path as it is.

Each tape is a whole :class:`jacext.Function`, so its sparsity, colourings, Jacobian
tapes and plans are its own.  A function whose trace records no guard compiles to a plain
Function: guards cost nothing where there are none.

At a tie (a point exactly on a branch's boundary, ``x == 0`` for ``if x <= 0``) the
branch is the one the NumPy code takes at that point (the comparison's own value), and
the Jacobian is that branch's, as torch's eager Jacobian gives.
"""
from __future__ import annotations

import math
import pickle
import threading
import warnings

import numpy as np

from jacext import arguments as _args
from jacext import plan as _plan
from jacext._guards import GuardedBase, move_rows, permute_rows
from jacext.errors import TracingError


class _Tape:
    """One traced branch outcome: its Function, guard check and guard lines."""

    __slots__ = ("F", "check", "key", "lines")

    def __init__(self, F, check, key, lines):
        self.F = F
        self.check = check
        self.key = key
        self.lines = lines


class GuardedFunction(GuardedBase):
    """A compiled function with Python control flow: tapes kept per branch outcome.

    Made by :func:`jacext.compile` (and :func:`jacext.jacobian`) when tracing meets
    Python control flow on traced values; it has a :class:`jacext.Function`'s methods
    and gives, at every point, the values and derivatives of the branch the NumPy code
    takes there.
    """

    def __init__(self, f, first, arg_shapes, name):
        self._f = f
        self.arg_shapes = tuple(arg_shapes)
        self.out_shapes = first.F.out_shapes
        self.out_is_tuple = first.F.out_is_tuple
        self.name = name
        self._lock = threading.RLock()
        self._order = (first,)         # most recently used first; replaced whole
        self._mru = (first.F, first.check)
        self._warned = False
        self._n_traces = 1
        self._n_in = first.F.tape.n_inputs
        self._single_shape = self.arg_shapes[0] if len(self.arg_shapes) == 1 else None
        self._shape1 = self._single_shape

    # ---- the tapes ----

    @property
    def tapes(self):
        """The Functions kept, most recently used first (one per branch outcome)."""
        return tuple(t.F for t in self._order)

    def guards(self):
        """[(line, kind, outcome)] of each kept tape's guards, most recently used first."""
        out = []
        for t in self._order:
            kinds = t.check.truth
            out.append([(line, "truth" if k else "exact", bool(o) if k else float(o))
                        for line, k, o in zip(t.lines, kinds, t.check.outcome)])
        return out

    def _tape_at(self, x):
        """The tape whose guards the point x (n_in float64 values) holds."""
        order = self._order
        for t in order:
            if t.check.holds(x):
                if t is not order[0]:
                    self._use(t)
                return t
        return self._retrace(x)

    def _use(self, t):
        with self._lock:
            self._order = (t,) + tuple(u for u in self._order if u is not t)
            self._mru = (t.F, t.check)

    def _retrace(self, x):
        from jacext.compile import traced_tape
        if self._f is None:
            raise TracingError(
                f"jacext: {self.name} takes another branch at this point, and this Function "
                f"was unpickled without its Python function (it could not be pickled), so "
                f"it cannot trace the branch.\n  Fix: define the function at module level "
                f"(a lambda or a closure does not pickle), or compile it again here")
        with self._lock:
            for t in self._order:       # another thread may have traced it meanwhile
                if t.check.holds(x):
                    return t
            point = _args.split(np.asarray(x, dtype=np.float64), self.arg_shapes, True, ())
            t = traced_tape(self._f, self.arg_shapes, self.name, point)
            if t.check is None:
                raise TracingError(f"jacext: {self.name} traced at another point met no "
                                   "Python branch; it changes with the point in a way "
                                   "the guards did not see (global state?)")
            self._n_traces += 1
            order = (t,) + self._order
            if len(order) > _plan.GUARDED_TAPES:
                dropped = order[-1]
                order = order[:-1]
                if not self._warned:
                    self._warned = True
                    warnings.warn(
                        f"jacext: {self.name} has been traced {self._n_traces} times (more "
                        f"than {_plan.GUARDED_TAPES} branch outcomes); the least recently "
                        f"used tape is dropped and traced again when needed. The branch "
                        f"that keeps changing: {_flipping(t, dropped)}. Fix: np.where("
                        f"condition, a, b) there gives one tape for every point",
                        RuntimeWarning, stacklevel=4)
            self._order = order
            self._mru = (t.F, t.check)
            return t

    def _point(self, args):
        """The flat point of a single-point call, or None (a batch, or other input)."""
        if len(args) == 1 and self._single_shape is not None:
            a = args[0]
            if type(a) is np.ndarray and a.shape == self._single_shape:
                return a if a.dtype == np.float64 and a.flags.c_contiguous else \
                    np.ascontiguousarray(a, dtype=np.float64)
        return None

    def _groups(self, X):
        """[(tape, row indices)] covering the rows of X, each row on a tape it holds."""
        left = None              # the rows not yet placed (None: all of them)
        groups = []
        order = self._order
        k = 0
        while left is None or left.shape[0]:
            rows = X if left is None else _take_rows(X, left)
            if k < len(order):
                t = order[k]
                k += 1
                ok = t.check.holds_rows(rows)
            else:
                t = self._retrace(np.ascontiguousarray(rows[0]))
                ok = t.check.holds_rows(rows)
                ok[0] = True     # traced there: its branch, whatever the sweep says
            # (np.flatnonzero of the flags: a third of the time of indexing by them)
            mine, rest = np.flatnonzero(ok), np.flatnonzero(~ok)
            if left is not None:
                mine, rest = left[mine], left[rest]
            if mine.shape[0]:
                groups.append((t, mine))
            left = rest
        if len(groups) > 1 or groups[0][0] is not order[0]:
            self._use(groups[0][0])
        return groups

    def _call(self, method, args, seeds, seed_shapes, kwargs):
        """F.method(*args, *seeds, **kwargs) on the right tape(s).  seeds: jvp's
        tangents / vjp's cotangents (trailing shapes seed_shapes, batched like args)."""
        x = self._point(args)
        if x is not None and not (seeds and _batched(seeds, seed_shapes)):
            t = self._tape_at(x)
            return getattr(t.F, method)(*args, *_pack(seeds, method, self), **kwargs)
        x, batch = self._order[0].F._rows(tuple(args))
        if seeds:
            batch = tuple(np.broadcast_shapes(batch, _seed_batch(seeds, seed_shapes)))
        if not batch:
            t = self._tape_at(np.ascontiguousarray(x, dtype=np.float64).reshape(-1))
            return getattr(t.F, method)(*args, *_pack(seeds, method, self), **kwargs)
        n = math.prod(batch)
        X = np.ascontiguousarray(np.broadcast_to(x, batch + (self._n_in,)),
                                 dtype=np.float64).reshape(n, self._n_in)
        groups = self._groups(X)
        if len(groups) == 1:
            t = groups[0][0]
            return getattr(t.F, method)(*args, *_pack(seeds, method, self), **kwargs)
        out = kwargs.pop("out", None)
        if kwargs.get("sparse"):
            raise ValueError(f"jacext: sparse=True for a batch whose points take different "
                             f"branches of {self.name} (one pattern per branch): ask per "
                             f"point, or for dense Jacobians")
        if method == "jacobian" and not seeds:
            result = self._grouped_jacobian(groups, X, batch, out, kwargs)
            if result is not None:
                return result
        parts = []
        for t, idx in groups:
            sub = _args.split(_take_rows(X, idx), self.arg_shapes, True, (idx.shape[0],))
            sub_seeds = tuple(_take(s, shape, batch, idx) for s, shape in
                              zip(seeds, seed_shapes))
            parts.append((idx, getattr(t.F, method)(*sub, *_pack(sub_seeds, method, self),
                                                     **kwargs)))
        result = _merge(parts, n, batch)
        if out is not None:
            _args.copy_into(out, result)
            return out
        return result

    def _grouped_jacobian(self, groups, X, batch, out, kwargs):
        """The dense Jacobians of a batch split by branch, each group's written by its
        tape into consecutive rows of the result (out= where given), then moved into the
        points' order in place (permute_rows); None where the result is not one array
        (tuple outputs or argnums) or out= is not a fitting array (the general path then
        says why)."""
        a = kwargs["argnums"]
        if self.out_is_tuple or type(a) is not int or not -len(self.arg_shapes) <= a < \
                len(self.arg_shapes):
            return None
        shape = batch + tuple(self.out_shapes[0]) + tuple(self.arg_shapes[a])
        if out is None:
            out = np.empty(shape)
        elif not (type(out) is np.ndarray and out.shape == shape and
                  out.dtype == np.float64 and out.flags.c_contiguous and
                  out.flags.writeable):
            return None
        n = X.shape[0]
        rows = out.reshape((n,) + shape[len(batch):])
        perm = np.concatenate([idx for _, idx in groups])
        Xp = _take_rows(X, perm)       # the points group after group
        start = 0
        for t, idx in groups:
            end = start + idx.shape[0]
            sub = _args.split(Xp[start:end], self.arg_shapes, True, (end - start,))
            t.F.jacobian(*sub, out=rows[start:end], **kwargs)
            start = end
        permute_rows(rows, perm)
        return out

    # ---- the Function's methods ----

    def value_and_jacobian(self, *args, argnums=0, mode="auto", threads=None):
        return self._call("value_and_jacobian", args, (), (),
                          dict(argnums=argnums, mode=mode, threads=threads))

    def jvp(self, *args):
        """As :meth:`jacext.Function.jvp`."""
        return self._call("jvp", *self._seeds("jvp", args), {})

    def vjp(self, *args):
        """As :meth:`jacext.Function.vjp`."""
        return self._call("vjp", *self._seeds("vjp", args), {})

    def _seeds(self, kind, args):
        return _args.split_seeds(kind, args, self.arg_shapes, self.out_shapes,
                                 self.out_is_tuple, self.name)

    def sparsity(self, argnums=0):
        """The union of the kept tapes' patterns (each branch's own: ``tapes``)."""
        pats = [t.F.sparsity(argnums) for t in self._order]
        total = pats[0]
        for p in pats[1:]:
            total = (total + p).astype(bool)
        return total

    def colours(self, argnums=0):
        """The colours of the tape used last."""
        return self._order[0].F.colours(argnums)

    @property
    def n_instructions(self):
        return self._order[0].F.n_instructions

    @property
    def n_slots(self):
        return self._order[0].F.n_slots

    @property
    def n_inputs(self):
        return self._n_in

    @property
    def n_outputs(self):
        return self._order[0].F.n_outputs

    def tape_arrays(self):
        return self._order[0].F.tape_arrays()

    def __repr__(self):
        return (f"<jacext.GuardedFunction {self.name}: {len(self._order)} tape(s) by branch "
                f"outcome; last used: {self._order[0].F!r}>")

    def disassemble(self, file=None):
        """Each kept tape with its guards."""
        import sys
        file = file if file is not None else sys.stdout
        for k, t in enumerate(self._order):
            print(f"; tape {k}, guards:", file=file)
            for line, truth, o in zip(t.lines, t.check.truth, t.check.outcome):
                what = (f"truth {bool(o)}" if truth else f"value {float(o)!r}")
                print(f";   {what} at {line}", file=file)
            t.F.disassemble(file=file)

    def __reduce__(self):
        try:
            pickle.dumps(self._f)
            f = self._f
        except Exception:
            f = None
        return (_restore, (f, tuple((t.F, t.check, t.key, t.lines) for t in self._order),
                           self.arg_shapes, self.name))


def _restore(f, tapes, arg_shapes, name):
    made = [_Tape(*t) for t in tapes]
    G = GuardedFunction(f, made[0], arg_shapes, name)
    G._order = tuple(made)
    return G


def _flipping(new, old):
    """The first guard line where two tapes' outcomes differ."""
    for ln, lo, tn, to, on, oo in zip(new.lines, old.lines, new.check.truth, old.check.truth,
                                      new.check.outcome, old.check.outcome):
        if ln != lo or tn != to or not (on == oo or (on != on and oo != oo)):
            return ln
    return new.lines[min(len(new.lines), len(old.lines)) - 1] if new.lines else "?"


def _pack(seeds, method, G):
    """The seeds as the Function's method takes them (after the arguments)."""
    if not seeds:
        return ()
    if method == "jvp":
        return (seeds[0],) if len(G.arg_shapes) == 1 else (tuple(seeds),)
    return (tuple(seeds),) if G.out_is_tuple else (seeds[0],)


def _seed_batch(seeds, shapes):
    batches = []
    for s, shape in zip(seeds, shapes):
        sh = np.shape(s)
        batches.append(tuple(sh[:len(sh) - len(shape)]))
    return tuple(np.broadcast_shapes(*batches))


def _batched(seeds, shapes):
    return any(np.ndim(s) > len(shape) for s, shape in zip(seeds, shapes))


def _take(s, shape, batch, idx):
    a = np.broadcast_to(np.asarray(s, dtype=np.float64), batch + tuple(shape))
    return np.ascontiguousarray(a.reshape((-1,) + tuple(shape))[idx])


def _merge(parts, n, batch):
    """One result of n rows (then shaped batch + ...) from the groups' results."""
    first = parts[0][1]
    if isinstance(first, tuple):
        return tuple(_merge([(idx, r[k]) for idx, r in parts], n, batch)
                     for k in range(len(first)))
    if not isinstance(first, np.ndarray):
        raise TypeError(f"jacext: cannot join results of type {type(first).__name__} "
                        "over branches")
    for _, r in parts:
        if r.shape[1:] != first.shape[1:]:
            raise ValueError(
                f"jacext: the points of this batch take branches whose results have "
                f"different shapes ({first.shape[1:]} and {r.shape[1:]} per point: a "
                f"selection such as x[x > 0] keeps a different number of elements); "
                f"call it per point, or keep the shape fixed with np.where(mask, a, b)")
    out = np.empty((n,) + first.shape[1:], dtype=first.dtype)
    for idx, r in parts:
        if r.dtype == out.dtype:
            move_rows(out, np.ascontiguousarray(r), idx, True)
        else:
            out[idx] = r
    return out.reshape(batch + first.shape[1:])


def _take_rows(X, idx):
    """X's rows idx, C-contiguous (X: a C-contiguous batch of rows)."""
    out = np.empty((idx.shape[0],) + X.shape[1:], dtype=X.dtype)
    move_rows(out, X, idx, False)
    return out
