"""Second order: derivatives that are Functions, Hessians, Hessian-vector products,
sparse Hessians, and Functions called inside traced code.

Everything here is the Jacobian tape (``jacext/jactape.py``) applied once more:

- ``jacobian_function`` builds the tape of the Jacobian's entries (no values) with
  ``jactape.build`` -- the same derivative rules (ops.def's partials) the Jacobian tapes
  use -- and wraps it as a :class:`Function` of the same arguments.  That Function is a
  tape like any other: batched, pickled, disassembled, and differentiated again.
- A Hessian is the Jacobian of the gradient Function (``grad_function``, built in reverse
  mode): forward-over-reverse by default (the gradient Function's own planner picks its
  compressed sweeps, column colouring of its exact pattern, or its Jacobian tape once
  enough points asked).  Only one triangle is read: each entry (i, j), i >= j, is written
  to both (i, j) and (j, i), so the result is symmetric to the last bit.
- The Lagrangian form ``hessian(x, w)`` is the Hessian of the traced scalar
  ``sum(w * F(x))``, with ``w`` an extra input: no per-output Hessian is formed.
- ``hvp`` is one forward (tangent) sweep over the gradient Function's tape: O(tape).
- ``inline`` puts a Function's tape into the graph of a trace that calls it
  (composition): ``jx.compile(lambda x: G(F(x)), x)``.

The derived Functions and index maps are made once per Function, under its planner's
lock, and kept (``Function._second``).
"""
from __future__ import annotations

import math
import sys

import numpy as np
import scipy.sparse as sp

from jacext import _tape, jactape
from jacext import arguments as _args
from jacext import plan as _plan
from jacext.errors import TracingError


def _key(argnums):
    if isinstance(argnums, (int, np.integer)) and not isinstance(argnums, bool):
        return int(argnums)
    if isinstance(argnums, (tuple, list)) and all(
            isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in argnums):
        return tuple(int(k) for k in argnums)
    raise TypeError(f"jacext: argnums must be an int or a tuple of ints; got {argnums!r}")


def _once(F, key, make):
    cache = F._second
    hit = cache.get(key)
    if hit is None:
        with F._planner.lock:
            hit = cache.get(key)
            if hit is None:
                hit = cache[key] = make()
    return hit


def _check_memory(n_values, what):
    _plan.check_dense_memory(n_values, f"{what} ({n_values} float64)",
                             "a sparse one (sparse=True) or Hessian-vector products (hvp)")


# ------------------------------------------------------ derivatives as Functions --

def jacobian_function(F, argnums=0):
    """The Function of F's arguments whose output is d out / d args[argnums]."""
    key = _key(argnums)
    return _once(F, ("jacobian", key), lambda: _make_jacobian_function(F, key))


def _make_jacobian_function(F, argnums):
    from jacext._function import Function
    from jacext._tape import Tape

    planner = F._planner
    t = F.exact_tape    # (its blocks stay blocks: jacext/jactape_blocks.py; the new
    #                      Function folds its own finite-input tape: jacext/finite.py)
    cols = planner.columns(argnums)
    n_cols, n_out = int(cols.shape[0]), t.n_outputs
    _check_memory(n_cols * n_out, "Jacobian")
    mode = _plan.dense_mode(n_cols, n_out)
    by_group = mode == "forward" or _plan.reverse_in_bulk(t.n_instructions, planner.n_groups())
    arrays = jactape.build(t.arrays(), t.fixed_partials(), cols, mode, sys.maxsize,
                           values=False, by_group=by_group)
    multi = not isinstance(argnums, int)
    nums = argnums if multi else (argnums,)
    n_args = len(F.arg_shapes)
    arg_shapes = [F.arg_shapes[k % n_args] for k in nums]
    col_off = _args.offsets(arg_shapes)
    out_off = _args.offsets(F.out_shapes)
    # the entries come row-major over (all outputs) x (the selected columns); the
    # Function's outputs are the blocks (output o, argument j), as F.jacobian nests them
    order, shapes = [], []
    for o, out_shape in enumerate(F.out_shapes):
        rows = np.arange(out_off[o], out_off[o + 1], dtype=np.int64)
        for j, arg_shape in enumerate(arg_shapes):
            cs = np.arange(col_off[j], col_off[j + 1], dtype=np.int64)
            order.append((rows[:, None] * n_cols + cs[None, :]).reshape(-1))
            shapes.append(tuple(out_shape) + tuple(arg_shape))
    arrays = dict(arrays)
    if order:
        arrays["out_slot"] = np.asarray(arrays["out_slot"])[np.concatenate(order)]
    return Function(Tape(arrays, copy=False), F.arg_shapes, tuple(shapes),
                    bool(F.out_is_tuple or multi), f"jacobian({F.name})")


def _scalar_output(F, what):
    if F.out_is_tuple or F.n_outputs != 1:
        outs = ", ".join(_args.shape_str(s) for s in F.out_shapes)
        raise ValueError(
            f"jacext: {what} needs a scalar output; {F.name} returns {outs}. For a vector "
            f"output use F.jacobian_function(), or pass a weight w of the output's shape "
            f"(the Hessian of w . F(x), as an NLP solver's Lagrangian)")


def grad_function(F, argnums=0):
    """The Function of F's arguments whose output is the gradient of F's scalar output."""
    _scalar_output(F, "grad_function")
    key = _key(argnums)
    return _once(F, ("grad", key), lambda: _make_grad_function(F, key))


def _make_grad_function(F, argnums):
    from jacext._function import Function

    J = jacobian_function(F, argnums)
    multi = not isinstance(argnums, int)
    n_args = len(F.arg_shapes)
    shapes = tuple(F.arg_shapes[k % n_args] for k in (argnums if multi else (argnums,)))
    return Function(J.tape, F.arg_shapes, shapes, multi, f"grad({F.name})")


def lagrangian(F):
    """The traced scalar sum_k sum(w_k * F(args)_k) of F's arguments and then one weight
    per output, of that output's shape."""
    return _once(F, ("lagrangian",), lambda: _make_lagrangian(F))


def _make_lagrangian(F):
    from jacext.compile import compile_function

    n_args = len(F.arg_shapes)
    is_tuple = F.out_is_tuple

    def lagrangian(*a):
        y = F(*a[:n_args])
        ys = y if is_tuple else (y,)
        total = 0.0
        for yk, wk in zip(ys, a[n_args:]):
            total = total + np.sum(wk * yk)
        return total

    return compile_function(lagrangian, F.arg_shapes + F.out_shapes,
                            name=f"lagrangian({F.name})")


# ---------------------------------------------------------------- Hessians --

class _Hessian:
    """One Hessian request kind: the gradient Function G (of F's arguments, and the
    weights where ``weighted``), the argument differentiated, and the index maps from
    G's Jacobian pattern (m blocks of n x n, m = 1 but for an unweighted vector F) to
    the symmetric result."""

    def __init__(self, F, argnums, weighted):
        n_args = len(F.arg_shapes)
        if not -n_args <= argnums < n_args:
            raise ValueError(f"jacext: argnums {argnums} names argument {argnums}, but "
                             f"{F.name} takes {n_args} argument(s)")
        argnums %= n_args
        scalar = not F.out_is_tuple and F.n_outputs == 1
        if weighted:
            self.G = grad_function(lagrangian(F), argnums)
            self.m = 1
        elif scalar:
            self.G = grad_function(F, argnums)
            self.m = 1
        else:
            if F.out_is_tuple:
                raise ValueError(
                    f"jacext: the Hessian of {F.name}'s tuple output: pass weights w (a "
                    f"tuple, one per output: the Hessian of w . F(x)), or compile one "
                    f"Function per output")
            self.G = jacobian_function(F, argnums)
            self.m = F.n_outputs
        self.argnums = argnums
        self.arg_shape = F.arg_shapes[argnums]
        self.out_shape = () if (weighted or scalar) else F.out_shapes[0]
        n = self.n = math.prod(self.arg_shape)
        ptr, idx = self.G._planner.structure(argnums).pattern
        rows = np.repeat(np.arange(len(ptr) - 1, dtype=np.int64), np.diff(ptr))
        o, i, j = rows // max(n, 1), rows % max(n, 1), np.asarray(idx, dtype=np.int64)
        code = (o * n + i) * n + j          # ascending (CSR order)
        mirror = (o * n + j) * n + i
        at = np.minimum(np.searchsorted(code, mirror), max(len(code) - 1, 0))
        has_mirror = code[at] == mirror if len(code) else np.zeros(0, dtype=bool)
        # one triangle (i >= j), and entries whose mirror is not in the pattern
        keep = (i >= j) | ~has_mirror
        self.src = np.flatnonzero(keep)
        self.dst1 = code[keep]
        self.dst2 = mirror[keep]
        # the symmetric pattern: each entry once, from its kept source
        both = np.concatenate([self.dst1, self.dst2])
        kept2 = np.tile(np.arange(len(self.src)), 2)
        sym, first = np.unique(both, return_index=True)
        self.sym_kept = kept2[first]
        self.sym_src = self.src[self.sym_kept]   # the same entries straight from G's pattern
        sym_rows = sym // n if n else sym
        sym_cols = sym % n if n else sym
        indptr = np.zeros(self.m * n + 1, dtype=np.int64)
        np.cumsum(np.bincount(sym_rows, minlength=self.m * n), out=indptr[1:])
        self.sym_indptr = indptr.astype(np.int32)
        self.sym_indices = sym_cols.astype(np.int32)
        self.pattern = sp.csr_array((np.ones(len(sym), dtype=bool), self.sym_indices,
                                     self.sym_indptr), shape=(self.m * n, n))

    def colours(self):
        star = self.star()
        if star is not None:
            return star[1]
        return self.G._planner.structure(self.argnums).colours[0]

    def star(self):
        """(colour, q, gather) of a star colouring of the symmetric pattern where it takes
        fewer colours than G's column colouring, else None; made once.  ``gather``: for
        each kept entry (i, j) (``dst1``), its place in the compressed (n, q) matrix: row
        a = max(i, j) at colour c(b), b = min(i, j), where b is the only neighbour of a of
        that colour, else row b at colour c(a) (a star colouring makes one of the two
        unique; the same choice for (i, j) and (j, i) keeps the result symmetric)."""
        hit = self.__dict__.get("_star")
        if hit is not None:
            return hit[0]
        with self.G._planner.lock:
            hit = self.__dict__.get("_star")
            if hit is None:
                hit = self._star = (self._make_star(),)
        return hit[0]

    def _make_star(self):
        if self.m != 1 or self.n == 0:
            return None
        p = self.G._planner.structure(self.argnums).colours[0]
        ptr, idx = self.sym_indptr, self.sym_indices
        deg = np.diff(ptr)
        steps = int(np.sum(deg.astype(np.int64) * deg)) + self.n
        if p <= 3 or steps > _plan.STAR_COLOURING_MAX_STEPS:
            return None
        colour = star_colouring(ptr, idx, self.n)
        q = int(colour.max()) + 1 if colour.size else 0
        if q >= p:
            return None
        n = self.n
        rows = np.repeat(np.arange(n, dtype=np.int64), deg)
        count = np.bincount(rows * q + colour[idx], minlength=n * q)
        i, j = self.dst1 // n, self.dst1 % n
        a, b = np.maximum(i, j), np.minimum(i, j)
        at_a = a * q + colour[b]
        gather = np.where(count[at_a] == 1, at_a, b * q + colour[a])
        return colour, q, gather

    def values(self, args, mode, threads):
        """(nonzeros of G's Jacobian, in its pattern's order; batch shape)."""
        G = self.G
        plan = G._planner.plan(self.argnums, mode, True)
        x, batch = G._rows(tuple(args))
        n_points = math.prod(batch) if batch else -1
        if n_points == 1:   # a batch of one: the single point's path (the same numbers)
            n_points = -1
        vals, _ = G._compressed(plan, x.reshape(-1, G.n_inputs) if n_points > 0
                                else x.reshape(G.n_inputs), n_points, threads, False)
        return vals.reshape(batch + (vals.shape[-1],)), batch

    def kept(self, args, mode, threads, symmetric=False):
        """(the kept entries' values, batch shape): from a star colouring's compressed
        sweeps where it takes fewer colours, else from G's sparse Jacobian (its planner
        picks column colouring, cones, or its Jacobian tape).  ``symmetric``: the
        symmetric pattern's values instead (each entry once, CSR order), in one gather
        (np.take: a third faster than fancy indexing at 10^5 entries)."""
        star = self.star() if mode == "auto" else None
        if star is None:
            vals, batch = self.values(args, mode, threads)
            return np.take(vals, self.sym_src if symmetric else self.src, axis=-1), batch
        from jacext._tape import MODES

        colour, q, gather = star
        if symmetric:
            gather = gather[self.sym_kept]
        G = self.G
        x, batch = G._rows(tuple(args))
        cols = G._planner.columns(self.argnums)
        n_points = math.prod(batch) if batch else 1
        if n_points != 1:   # (a batch of one takes the single point's path below)
            comp = np.empty((n_points, G.n_outputs, q), dtype=np.float64)
            G.tape.batch("compressed", x.reshape(n_points, G.n_inputs), None, comp,
                         _plan.n_threads(threads, n_points, G.n_instructions * (1 + q)),
                         mode=MODES["forward"], cols=cols, colour=colour, n_colours=q)
            return np.take(comp.reshape(n_points, -1), gather, axis=1).reshape(batch + (-1,)), batch
        comp = np.empty((G.n_outputs, q), dtype=np.float64)
        G.tape.compressed(x.reshape(G.n_inputs), None, comp, cols, colour, q, MODES["forward"])
        return np.take(comp.reshape(-1), gather).reshape(batch + (-1,)), batch

    def dense(self, args, mode, out, threads):
        shape = self.out_shape + self.arg_shape + self.arg_shape
        v, batch = self.kept(args, mode, threads)
        full = batch + shape
        if out is None:
            H = np.zeros(full, dtype=np.float64)
        else:
            H = _check_out(out, full)
            H[...] = 0.0
        flat = H.reshape(batch + (-1,))
        flat[..., self.dst1] = v
        flat[..., self.dst2] = v
        return H

    def sparse(self, args, mode, threads):
        from jacext.sparse import SparseJacobians

        if self.m != 1:
            raise ValueError(
                "jacext: sparse=True needs a scalar Hessian: a scalar output, or weights w "
                "(the Hessian of w . F(x)); for every output's Hessian use sparse=False")
        data, batch = self.kept(args, mode, threads, symmetric=True)
        if batch:
            return SparseJacobians(self.pattern, data)
        return sp.csr_array((data, self.sym_indices.copy(), self.sym_indptr.copy()),
                            shape=self.pattern.shape)


def star_colouring(indptr, indices, n):
    """A greedy star colouring of the symmetric pattern (CSR; the diagonal is ignored):
    adjacent vertices differ, and no path on four vertices has two colours (every
    two-coloured subgraph is a forest of stars), so each Hessian entry is read directly
    from a compressed column (Gebremedhin, Manne and Pothen, SIAM Review 47(4), 2005).
    Vertex v takes the least colour not forbidden by: its neighbours' colours; the colour
    of x for each path v - w - x - y already two-coloured (c(y) = c(w)); the colours of w's
    other neighbours where two of v's neighbours share w's colour."""
    ptr = np.asarray(indptr).tolist()
    idx = np.asarray(indices).tolist()
    nbrs = [[u for u in idx[ptr[v]:ptr[v + 1]] if u != v] for v in range(n)]
    colour = [-1] * n
    seen = [dict() for _ in range(n)]   # per vertex: colour -> count of such neighbours
    for v in range(n):
        forbid = set()
        mine = {}
        for w in nbrs[v]:
            c = colour[w]
            if c >= 0:
                forbid.add(c)
                mine[c] = mine.get(c, 0) + 1
        for w in nbrs[v]:
            cw = colour[w]
            if cw < 0:
                continue
            twice = mine[cw] >= 2
            for x in nbrs[w]:
                cx = colour[x]
                if x == v or cx < 0:
                    continue
                if twice or seen[x].get(cw, 0) >= 2:
                    forbid.add(cx)
        c = 0
        while c in forbid:
            c += 1
        colour[v] = c
        for w in nbrs[v]:
            d = seen[w]
            d[c] = d.get(c, 0) + 1
    return np.asarray(colour, dtype=np.int32)


def _batch_of(G, args):
    shapes = G.arg_shapes
    batches = []
    for a, s in zip(args, shapes):
        got = np.shape(a)
        batches.append(tuple(got[:max(len(got) - len(s), 0)]))
    try:
        return tuple(np.broadcast_shapes(*batches)) if batches else ()
    except ValueError:
        return ()   # the argument parser says what is wrong


def _check_out(out, shape):
    if not isinstance(out, np.ndarray):
        raise TypeError(f"jacext: out must be a NumPy array; got {type(out).__name__}")
    if (out.dtype != np.float64 or not out.flags.c_contiguous or not out.flags.writeable):
        raise ValueError("jacext: out must be a writeable, C-contiguous float64 array "
                         "(np.empty(shape))")
    if out.shape != shape:
        raise ValueError(f"jacext: out has shape {_args.shape_str(out.shape)}; the Hessian "
                         f"has shape {_args.shape_str(shape)}")
    return out


def _hessian_parts(F, argnums, weighted):
    key = _key(argnums)
    if not isinstance(key, int):
        raise ValueError("jacext: hessian takes one argument at a time (an int argnums); "
                         "for blocks across arguments use "
                         "F.grad_function(argnums).jacobian(..., argnums=argnums)")
    return _once(F, ("hessian", key, weighted), lambda: _Hessian(F, key, weighted))


def _split_weights(F, args, w, what):
    """(the Function's arguments, the weights or None) from a call's positional values:
    the arguments, then optionally w (or w= by keyword)."""
    n_args = len(F.arg_shapes)
    if len(args) == n_args + 1 and w is None:
        args, w = args[:n_args], args[n_args]
    elif len(args) != n_args:
        raise TypeError(f"jacext: {what} takes the {n_args} argument(s) of {F.name}, then "
                        f"optionally the output weights w; got {len(args)} values")
    if w is None:
        return tuple(args), None
    ws = tuple(w) if F.out_is_tuple else (w,)
    if len(ws) != len(F.out_shapes):
        raise ValueError(f"jacext: w must have the output's structure: a tuple of "
                         f"{len(F.out_shapes)} arrays")
    for k, (wk, s) in enumerate(zip(ws, F.out_shapes)):
        got = np.shape(wk)
        if tuple(got[max(len(got) - len(s), 0):]) != tuple(s) or len(got) < len(s):
            raise ValueError(
                f"jacext: the weights w{'[' + str(k) + ']' if F.out_is_tuple else ''} must "
                f"have the shape of {F.name}'s output {_args.shape_str(s)} (or a batch of "
                f"it); got shape {_args.shape_str(got)}")
    return tuple(args), ws


def hessian(F, args, w=None, argnums=0, mode="auto", out=None, threads=None, sparse=False):
    args, ws = _split_weights(F, args, w, "hessian")
    key = _key(argnums)
    if not sparse and isinstance(key, int) and -len(F.arg_shapes) <= key < len(F.arg_shapes):
        # before anything is built or allocated
        n = math.prod(F.arg_shapes[key])
        m = 1 if ws is not None or F.out_is_tuple else F.n_outputs
        size = math.prod(_batch_of(F, args)) * m * n * n
        _check_memory(size, "Hessian")
    parts = _hessian_parts(F, argnums, ws is not None)
    call_args = args + (ws or ())
    if sparse:
        if out is not None:
            raise ValueError("jacext: out= is for dense Hessians; sparse=True returns a new "
                             "scipy.sparse.csr_array")
        return parts.sparse(call_args, mode, threads)
    return parts.dense(call_args, mode, out, threads)


def hessian_sparsity(F, argnums=0):
    """The symmetric pattern of the Hessian (of w . F for a vector F, any w)."""
    scalar = not F.out_is_tuple and F.n_outputs == 1
    return _hessian_parts(F, argnums, not scalar).pattern.copy()


def hessian_colours(F, argnums=0):
    """Sweeps of the gradient Function a sparse Hessian costs (column colours)."""
    scalar = not F.out_is_tuple and F.n_outputs == 1
    return _hessian_parts(F, argnums, not scalar).colours()


def hvp(F, args, w=None, argnums=0):
    """H @ v, forward over reverse.  ``args``: F's arguments, then v, then optionally w."""
    n_args = len(F.arg_shapes)
    if w is None and argnums == 0 and n_args == 1 and len(args) == 2:
        parts = F._second.get(("hvp", 0, False))   # one point: no parsing of a batch
        if parts is not None:
            r = parts.at_point(args[0], args[1])
            if r is not None:
                return r
    if len(args) not in (n_args + 1, n_args + 2):
        raise TypeError(f"jacext: hvp takes the {n_args} argument(s) of {F.name}, then v, "
                        f"then optionally the output weights w; got {len(args)} values")
    v = args[n_args]
    point, ws = _split_weights(F, args[:n_args] + args[n_args + 1:], w, "hvp")
    key = _key(argnums)
    if not isinstance(key, int):
        raise ValueError("jacext: hvp takes one argument at a time (an int argnums)")
    if ws is None:
        _scalar_output(F, "hvp")
    parts = _once(F, ("hvp", key, ws is not None), lambda: _HVP(F, key, ws is not None))
    return parts(point + (ws or ()), v)


class _HVP:
    """Hessian-vector products of one kind.  At first one tangent sweep over the gradient
    Function G's tape (``G.jvp``); once enough points asked for it to pay for the build
    (ski rental, ``plan.tape_after``), the tape of that directional derivative: the
    directional Jacobian tape of G along v (``jactape.build(along=True)``: the tangent
    sweep's products, seeded with v, as instructions), run in one value sweep -- the same
    products, where the value sweep runs like instructions together."""

    def __init__(self, F, key, weighted):
        n_args = len(F.arg_shapes)
        if not -n_args <= key < n_args:
            raise ValueError(f"jacext: argnums {key} names argument {key}, but {F.name} "
                             f"takes {n_args} argument(s)")
        self.argnums = key % n_args
        self.G = grad_function(lagrangian(F) if weighted else F, self.argnums)
        n_instr = max(self.G.n_instructions, 1)
        build = _plan.BUILD_BASE + 2 * _plan.build_cost("forward", n_instr,
                                                         self.G._planner.n_groups())
        self.slot = _plan.JacobianTapeSlot(self.G._planner.lock,
                                           _plan.tape_after(build, 2 * n_instr), self._build)

    def _build(self):
        from jacext._function import Function
        from jacext._tape import Tape

        G, k = self.G, self.argnums
        t = G.exact_tape
        arrays = jactape.build(t.arrays(), t.fixed_partials(), G._planner.columns(k),
                               "forward", sys.maxsize, values=False, along=True)
        return Function(Tape(arrays, copy=False), G.arg_shapes + (G.arg_shapes[k],),
                        G.out_shapes, G.out_is_tuple, f"hvp({G.name})")

    def at_point(self, x, v):
        """H v at one point of a one-argument Function, x and v arrays of its shape; None
        for anything else (the general path then parses it)."""
        s = self.G.arg_shapes[0]
        if not (type(x) is np.ndarray and type(v) is np.ndarray and x.shape == s
                and v.shape == s):
            return None
        return self._product((x,), v, 1)

    def __call__(self, call, v):
        G = self.G
        vs = np.shape(v)
        s = G.arg_shapes[self.argnums]
        v_batch = tuple(vs[:max(len(vs) - len(s), 0)])
        try:
            batch = np.broadcast_shapes(_batch_of(G, call), v_batch)
        except ValueError:
            batch = ()   # the argument parser says what is wrong
        if (batch and math.prod(batch) == 1 and len(call) == 1
                and np.shape(call[0]) in (batch + s, s) and vs in (batch + s, s)):
            # a batch of one: the single point's path (the same numbers), reshaped
            r = self.at_point(np.reshape(call[0], s), np.reshape(v, s))
            if r is not None:
                return r.reshape(batch + s)
        return self._product(call, v, max(math.prod(batch), 1))

    def _product(self, call, v, n_points):
        """H v from the tape once ``n_points`` more points make it worth building; from
        the tangent sweep before, and where the tape's result is not finite (the sweep's
        zero kills decide)."""
        D = self.slot.tape(n_points)
        if D is not None:
            r = D(*call, v)
            if _tape.all_finite(r):
                return r
        G = self.G
        tangents = [v if j == self.argnums else np.zeros(s)
                    for j, s in enumerate(G.arg_shapes)]
        return G.jvp(*call, tangents[0] if len(tangents) == 1 else tuple(tangents))[1]


def repr_note(F):
    """repr(F)'s words on a Hessian whose colouring is made."""
    for key, parts in list(F._second.items()):
        if key[0] == "hessian":
            star = parts.__dict__.get("_star")
            if star is not None and star[0] is not None:
                return f"; Hessian: {star[0][1]} colours (star)"
            s = parts.G._planner.known_structure(parts.argnums)
            if star is not None and s is not None and s.colours_known:
                return f"; Hessian: {s.colours[0]} colours"
    return ""


# ---------------------------------------------------------------- composition --

def is_traced(args):
    """Whether a call's arguments hold traced values (arrays, or lists and object arrays
    of traced scalars)."""
    from jacext.trace import _graph_of

    return _graph_of(args) is not None


def inline(F, args):
    """F's outputs as traced arrays: its tape rebuilt in the graph of the trace that
    calls it, on the traced (or constant) arguments."""
    from jacext.trace import Array, _graph_of, _ids

    g = _graph_of(args)
    n_args = len(F.arg_shapes)
    if len(args) != n_args:
        raise TypeError(f"jacext: {F.name} was compiled for {n_args} argument(s); got "
                        f"{len(args)}")
    ins = []
    for k, (a, s) in enumerate(zip(args, F.arg_shapes)):
        ids = np.asarray(_ids(g, a), dtype=np.int64)
        if ids.shape != tuple(s):
            try:
                ids = np.broadcast_to(ids, s)
            except ValueError:
                raise TracingError(
                    f"jacext: {F.name} was compiled for argument {k} of shape "
                    f"{_args.shape_str(s)}; inside a trace it got shape "
                    f"{_args.shape_str(ids.shape)} (batches are not traced: call it per "
                    f"point, or compile {F.name} at the traced shape)") from None
        ins.append(ids.reshape(-1))
    arrays = F.exact_tape.arrays()   # (its blocks stay blocks in the trace's graph)
    x = np.concatenate(ins) if ins else np.zeros(0, dtype=np.int64)
    steps = jactape._values(g, arrays, x, jactape._groups(arrays))
    outs = steps.node_after[np.asarray(arrays["out_slot"], dtype=np.int64)]
    lo = _args.offsets(F.out_shapes)
    res = tuple(Array(g, outs[lo[k]:lo[k + 1]].reshape(s))
                for k, s in enumerate(F.out_shapes))
    return res if F.out_is_tuple else res[0]
