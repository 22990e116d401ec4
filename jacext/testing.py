"""Test helpers for jacext users and for jacext's own suite.

* :func:`check_jacobian` compiles ``f`` and checks its Jacobian in forward, reverse and
  auto mode against each other, against an independent reference (an analytic Jacobian
  and/or a 6th-order central difference of ``f`` run by NumPy), its values against
  NumPy's, and jvp/vjp against the Jacobian (J v, u J, and u.(J v) == (u J).v).
  The references never come from jacext: the finite differences call ``f`` itself on
  float64 NumPy arrays.
* :func:`column_colouring_is_valid` / :func:`row_colouring_is_valid`: independent checks
  of a colouring of a sparsity pattern (``F.sparsity()``).
* :func:`plan_of`, :func:`jacobian_tape_slot`, :func:`colourings`: how a Function computes
  a kind of request (its Plan), its Jacobian-tape slots and colourings, for tests that
  must see which path ran; :func:`without_jacobian_tapes` keeps a Function on the sweeps.
* :func:`op_value`, :func:`op_partials`: one op of the table on scalars, computed by C.
* :func:`without_blocks`: a tape's scalar form (its block instructions as multiply-adds).
"""
from __future__ import annotations

import numpy as np

# 6th-order central difference: f'(x) ~ sum_k c_k f(x + k h) / h
_FD_OFFSETS = (-3, -2, -1, 1, 2, 3)
_FD_WEIGHTS = (-1.0 / 60, 9.0 / 60, -45.0 / 60, 45.0 / 60, -9.0 / 60, 1.0 / 60)


def as_outputs(value):
    """f's result as a tuple of float64 arrays (a single output is a 1-tuple)."""
    if isinstance(value, (tuple, list)):
        return tuple(np.asarray(v, dtype=np.float64) for v in value)
    return (np.asarray(value, dtype=np.float64),)


def flat(value):
    """f's result (array or tuple of arrays) as one flat float64 vector."""
    parts = [np.ravel(v) for v in as_outputs(value)]
    return np.concatenate(parts) if parts else np.zeros(0)


def assert_same_values(actual, desired, rtol=1e-13, atol=None):
    """Equal up to rounding, with nan and inf in exactly the same places.

    ``atol`` defaults to ``rtol`` times the largest finite magnitude (sums may
    cancel, and jacext sums in a balanced tree where NumPy/BLAS do not).
    """
    actual = np.asarray(actual, dtype=np.float64)
    desired = np.asarray(desired, dtype=np.float64)
    if atol is None:
        finite = np.abs(desired[np.isfinite(desired)])
        atol = rtol * max(1.0, float(np.max(finite, initial=0.0)))
    assert actual.shape == desired.shape, (actual.shape, desired.shape)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(desired), err_msg="nan positions")
    inf_a = np.where(np.isinf(actual), np.sign(actual), 0.0)
    inf_d = np.where(np.isinf(desired), np.sign(desired), 0.0)
    np.testing.assert_array_equal(inf_a, inf_d, err_msg="inf positions")
    fin = np.isfinite(desired)
    np.testing.assert_allclose(actual[fin], desired[fin], rtol=rtol, atol=atol)


def _to_matrix(J, out_shapes, arg_shapes, out_is_tuple, multi):
    per_out = J if out_is_tuple else (J,)
    assert len(per_out) == len(out_shapes)
    row_blocks = []
    for block, oshape in zip(per_out, out_shapes):
        per_arg = block if multi else (block,)
        assert not multi or isinstance(per_arg, tuple)
        assert len(per_arg) == len(arg_shapes)
        cols = []
        for b, ashape in zip(per_arg, arg_shapes):
            b = np.asarray(b)
            assert b.shape == tuple(oshape) + tuple(ashape), (b.shape, oshape, ashape)
            cols.append(b.reshape(int(np.prod(oshape, dtype=int)), int(np.prod(ashape, dtype=int))))
        row_blocks.append(np.concatenate(cols, axis=1))
    return np.concatenate(row_blocks, axis=0)


def central_difference(f, args, argnums, step=1e-3):
    """d flat(f) / d (args[argnums] flattened): 6th-order central differences.

    The step for an entry x is ``step * max(1, |x|)``.
    """
    args = [np.array(a, dtype=np.float64) for a in args]
    cols = []
    for k in argnums:
        base = args[k]
        for j in range(base.size):
            x0 = base.flat[j]
            h = step * max(1.0, abs(x0))
            acc = None
            for off, w in zip(_FD_OFFSETS, _FD_WEIGHTS):
                pert = [a.copy() for a in args]
                pert[k].flat[j] = x0 + off * h
                term = w * flat(f(*pert))
                acc = term if acc is None else acc + term
            cols.append(acc / h)
    n_out = flat(f(*args)).size
    if not cols:
        return np.zeros((n_out, 0))
    return np.stack(cols, axis=1)


def check_jacobian(f, *args, argnums=0, expected=None, fd=True, step=1e-3,
                   rtol=1e-7, atol=1e-9, expected_rtol=None, value_rtol=1e-13, F=None,
                   seed=0):
    """Check the compiled Jacobian of ``f`` at ``args``; returns it (F.jacobian's nesting).

    * forward and reverse mode agree to ~1e-12 (relative to the largest entry);
    * they match ``expected`` (an analytic Jacobian in F.jacobian's nesting, or a
      2-D matrix over all outputs x the chosen inputs), if given, and a 6th-order
      central difference of ``f`` run by NumPy (unless ``fd=False``), within
      ``rtol``/``atol`` (atol scaled by the largest entry when it exceeds 1;
      ``expected_rtol`` overrides ``rtol`` for the analytic Jacobian);
    * ``F(*args)`` and ``value_and_jacobian`` equal ``f(*args)`` run by NumPy;
    * jvp and vjp equal J v and u J for random v, u, and u.(J v) == (u J).v.
    """
    arrays = tuple(np.array(a, dtype=np.float64) for a in args)
    if F is None:
        from jacext.api import compile as _compile

        F = _compile(f, *arrays)
    multi = not isinstance(argnums, (int, np.integer))
    nums = tuple(argnums) if multi else (int(argnums),)
    with np.errstate(all="ignore"):
        want_value = f(*[a.copy() for a in arrays])
    out_is_tuple = isinstance(want_value, (tuple, list))
    want_outs = as_outputs(want_value)
    out_shapes = tuple(o.shape for o in want_outs)
    assert F.out_is_tuple == out_is_tuple
    assert F.out_shapes == out_shapes

    # values
    got = F(*arrays)
    got_outs = got if out_is_tuple else (got,)
    assert len(got_outs) == len(want_outs)
    for g, w in zip(got_outs, want_outs):
        assert isinstance(g, np.ndarray) and g.dtype == np.float64
        assert_same_values(g, w, rtol=value_rtol)

    # Jacobians in both modes
    chosen_shapes = tuple(arrays[k].shape for k in nums)
    Jf = F.jacobian(*arrays, argnums=argnums, mode="forward")
    Jr = F.jacobian(*arrays, argnums=argnums, mode="reverse")
    Ja = F.jacobian(*arrays, argnums=argnums)
    Mf = _to_matrix(Jf, out_shapes, chosen_shapes, out_is_tuple, multi)
    Mr = _to_matrix(Jr, out_shapes, chosen_shapes, out_is_tuple, multi)
    Ma = _to_matrix(Ja, out_shapes, chosen_shapes, out_is_tuple, multi)
    scale = max(1.0, float(np.max(np.abs(Mf), initial=0.0)))
    np.testing.assert_allclose(Mf, Mr, rtol=1e-12, atol=1e-12 * scale,
                               err_msg="forward and reverse Jacobians differ")
    # mode='auto' picks the cheapest strategy (possibly compressed sweeps): same numbers
    np.testing.assert_allclose(Ma, Mf, rtol=1e-12, atol=1e-12 * scale,
                               err_msg="mode='auto' differs from the forward sweep")
    val, Jv = F.value_and_jacobian(*arrays, argnums=argnums)
    vals = val if out_is_tuple else (val,)
    for g, w in zip(vals, want_outs):
        assert_same_values(g, w, rtol=value_rtol)
    np.testing.assert_allclose(_to_matrix(Jv, out_shapes, chosen_shapes, out_is_tuple, multi), Ma,
                               rtol=1e-12, atol=1e-12 * scale,
                               err_msg="value_and_jacobian differs from jacobian")

    # independent references
    tol_atol = atol * scale
    if expected is not None:
        E = expected
        if not (isinstance(E, np.ndarray) and E.ndim == 2 and E.shape == Mf.shape):
            E = _to_matrix(E, out_shapes, chosen_shapes, out_is_tuple, multi)
        E = np.asarray(E, dtype=np.float64)
        e_rtol = rtol if expected_rtol is None else expected_rtol
        e_atol = tol_atol if expected_rtol is None else 1e-300
        np.testing.assert_allclose(Mf, E, rtol=e_rtol, atol=e_atol,
                                   err_msg="forward Jacobian vs the analytic one")
        np.testing.assert_allclose(Mr, E, rtol=e_rtol, atol=e_atol,
                                   err_msg="reverse Jacobian vs the analytic one")
    if fd:
        with np.errstate(all="ignore"):
            D = central_difference(f, arrays, nums, step=step)
        assert np.all(np.isfinite(D)), "finite differences met a singular point"
        np.testing.assert_allclose(Mf, D, rtol=rtol, atol=tol_atol,
                                   err_msg="forward Jacobian vs central differences")
        np.testing.assert_allclose(Mr, D, rtol=rtol, atol=tol_atol,
                                   err_msg="reverse Jacobian vs central differences")

    # jvp / vjp against the full Jacobian (all arguments)
    all_nums = tuple(range(len(arrays)))
    Jall = F.jacobian(*arrays, argnums=all_nums, mode="forward")
    M = _to_matrix(Jall, out_shapes, tuple(a.shape for a in arrays), out_is_tuple, True)
    rng = np.random.default_rng(seed)
    tangents = tuple(rng.standard_normal(a.shape) for a in arrays)
    cotangent = tuple(rng.standard_normal(s) for s in out_shapes)
    v = np.concatenate([t.ravel() for t in tangents]) if tangents else np.zeros(0)
    u = np.concatenate([c.ravel() for c in cotangent]) if cotangent else np.zeros(0)
    y1, ydot = F.jvp(*arrays, tangents if len(arrays) > 1 else tangents[0])
    y2, xbar = F.vjp(*arrays, cotangent if out_is_tuple else cotangent[0])
    for y in (y1, y2):
        assert_same_values(flat(y), flat(want_value), rtol=value_rtol)
    ydot_flat = flat(ydot)
    xbar_parts = xbar if len(arrays) > 1 else (xbar,)
    assert isinstance(xbar_parts, tuple) and len(xbar_parts) == len(arrays)
    for part, a in zip(xbar_parts, arrays):
        assert np.shape(part) == a.shape
    xbar_flat = np.concatenate([np.ravel(p) for p in xbar_parts]) if xbar_parts else np.zeros(0)
    mscale = max(1.0, float(np.max(np.abs(M), initial=0.0)))
    np.testing.assert_allclose(ydot_flat, M @ v, rtol=1e-12,
                               atol=1e-12 * mscale * max(1.0, np.abs(v).sum()), err_msg="jvp")
    np.testing.assert_allclose(xbar_flat, u @ M, rtol=1e-12,
                               atol=1e-12 * mscale * max(1.0, np.abs(u).sum()), err_msg="vjp")
    lhs, rhs = float(u @ ydot_flat), float(xbar_flat @ v)
    assert abs(lhs - rhs) <= 1e-12 * mscale * max(1.0, np.abs(u).sum() * np.abs(v).sum()), \
        "dot-product identity u.(J v) == (u J).v"
    return Jf


# ---------------------------------------------------------------- colourings --

def column_colouring_is_valid(pattern, colour):
    """No two columns of one colour share a row: per colour, each row has <= 1 nonzero.
    ``pattern``: a dense bool array or a SciPy sparse array."""
    pattern = _dense_bool(pattern)
    colour = np.asarray(colour)
    if colour.shape != (pattern.shape[1],) or (colour.size and colour.min() < 0):
        return False
    for c in np.unique(colour):
        if (pattern[:, colour == c].sum(axis=1) > 1).any():
            return False
    return True


def row_colouring_is_valid(pattern, colour):
    """The row analogue: per colour, each column has <= 1 nonzero among its rows."""
    return column_colouring_is_valid(_dense_bool(pattern).T, colour)


def star_colouring_is_valid(pattern, colour):
    """A symmetric pattern's star colouring: adjacent vertices (off-diagonal nonzeros)
    differ, and no path on four vertices is two-coloured -- there is no edge u - w where
    u has another neighbour of w's colour and w another neighbour of u's colour."""
    adj = _dense_bool(pattern).copy()
    np.fill_diagonal(adj, False)
    colour = np.asarray(colour)
    if colour.shape != (adj.shape[0],) or (colour.size and colour.min() < 0):
        return False
    u, w = np.nonzero(adj)
    if (colour[u] == colour[w]).any():
        return False
    # count[v, c]: neighbours of v with colour c
    count = np.zeros((adj.shape[0], int(colour.max()) + 1 if colour.size else 0), dtype=int)
    np.add.at(count, (u, colour[w]), 1)
    return not ((count[u, colour[w]] >= 2) & (count[w, colour[u]] >= 2)).any()


def _dense_bool(pattern):
    if hasattr(pattern, "toarray"):
        pattern = pattern.toarray()
    return np.asarray(pattern, dtype=bool)


# ---------------------------------------------------------------- what ran --

def plan_of(F, argnums=0, mode="auto", sparse=False):
    """The Plan by which ``F.jacobian(..., argnums=, mode=, sparse=)`` is computed
    (``jacext.plan.Plan``: its ``compressed`` mode, ``structure``, Jacobian-tape slots)."""
    return F._planner.plan(_argnums_key(argnums), mode, sparse)


def jacobian_tape_slot(F, argnums=0, mode="forward", sparse=False, values=True):
    """The slot of F's Jacobian tape for (argnums, sweep mode, sparse form, with values):
    ``after`` (the points before it is built), ``seen``, ``current`` (the Tape or None)."""
    return F._planner._slot(_argnums_key(argnums), mode, sparse, values)


def without_jacobian_tapes(F):
    """Make every Jacobian of F come from the sweeps (no Jacobian tape is ever built for
    it): for comparing the two paths.  F must not have counted points towards a Jacobian
    tape yet (no Plan has asked for one: batches, sparse and dense auto Jacobians do;
    a single-point Jacobian in an explicit mode does not).  Returns F."""
    planner = F._planner
    if planner._slots:
        raise ValueError("jacext: without_jacobian_tapes needs a Function that has not "
                         "counted points towards a Jacobian tape yet (compile it afresh)")
    planner.jacobian_tapes = False
    return F


def exact_function(F):
    """F on its exact tape alone (no finite-input tape, jacext/finite.py): the reference
    the folded tape is compared with."""
    from jacext._function import Function
    return Function(F.exact_tape, F.arg_shapes, F.out_shapes, F.out_is_tuple,
                    F.name, fold=False)


def without_blocks(arrays):
    """The same function as a tape of scalar instructions only (``arrays``: a Tape's
    arrays), to compare a tape with blocks against its scalar form: each block y = W x
    (vm.h) becomes, row by row, its operands times W's nonzeros (MUL by an immediate)
    summed left to right (ADD), and each product block Y = A B its entries' sums of
    A[r, c] * B[c, j] (MUL of two slots), through three extra slots (an instruction never writes
    over its own operand).  Values equal the block's to rounding (BLAS sums in its own
    order).  A tape without blocks is returned as it is."""
    from jacext._tape import BLOCK_FIELDS
    from jacext.ops import B_IMM, OPS
    blocks = np.asarray(arrays.get("blocks", ()), dtype=np.int64).reshape(-1, BLOCK_FIELDS)
    if not len(blocks):
        return arrays
    weights = np.asarray(arrays["weights"], dtype=np.float64)
    keys = ("op", "dst", "a", "b", "s", "imm")
    cols = {k: np.asarray(arrays[k]) for k in keys}
    prod, acc1, acc2 = (int(arrays["n_slots"]) + k for k in range(3))
    mul, add = OPS["MUL"] | B_IMM, OPS["ADD"]
    rows = []            # (op, dst, a, b, imm) of the instructions that replace blocks
    pieces = {k: [] for k in keys}
    start = 0

    def emit(op, dst, a, b, imm=0.0):
        rows.append((op, dst, a, b, imm))

    mul2 = OPS["MUL"]
    for i, m, n, off in blocks.tolist():
        for k in keys:
            pieces[k].append(cols[k][start:i])
        start = i + 1
        x0, y0 = int(cols["a"][i]), int(cols["dst"][i])
        rows.clear()
        if off < 0:   # a product Y = A B (m x n times n x p): A[r, c] * B[c, j] summed
            p = -off
            b0 = x0 + m * n
            for r_ in range(m):
                for j in range(p):
                    cur = y0 + r_ * p + j if n == 1 else acc1
                    emit(mul2, cur, x0 + r_ * n, b0 + j)
                    for c in range(1, n):
                        emit(mul2, prod, x0 + r_ * n + c, b0 + c * p + j)
                        nxt = y0 + r_ * p + j if c == n - 1 else (acc2 if cur == acc1 else acc1)
                        emit(add, nxt, cur, prod)
                        cur = nxt
            r = np.array(rows, dtype=np.float64).reshape(-1, 5)
            for k, c in (("op", 0), ("dst", 1), ("a", 2), ("b", 3), ("s", 2), ("imm", 4)):
                pieces[k].append(r[:, c].astype(cols[k].dtype))
            continue
        W = weights[off:off + m * n].reshape(m, n)
        for j in range(m):
            nz = np.flatnonzero(W[j]).tolist() or [0]     # 0 * x: nan where x is not finite
            last = len(nz) - 1
            cur = y0 + j if last == 0 else acc1
            emit(mul, cur, x0 + nz[0], x0 + nz[0], float(W[j, nz[0]]))
            for t, k in enumerate(nz[1:], 1):
                emit(mul, prod, x0 + k, x0 + k, float(W[j, k]))
                nxt = y0 + j if t == last else (acc2 if cur == acc1 else acc1)
                emit(add, nxt, cur, prod)
                cur = nxt
        r = np.array(rows, dtype=np.float64).reshape(-1, 5)
        for k, c in (("op", 0), ("dst", 1), ("a", 2), ("b", 3), ("s", 2), ("imm", 4)):
            pieces[k].append(r[:, c].astype(cols[k].dtype))
    for k in keys:
        pieces[k].append(cols[k][start:])
    out = dict(arrays)
    for k in keys:
        out[k] = np.concatenate(pieces[k])
    out["blocks"] = np.zeros(0, dtype=np.int64)
    out["weights"] = np.zeros(0, dtype=np.float64)
    out["n_slots"] = acc2 + 1
    return out


def colourings(F, argnums=0):
    """(column colours, p, row colours, q) of F's sparsity pattern."""
    return F._planner.structure(_argnums_key(argnums)).colourings


def hessian_colouring(F, argnums=0, weighted=None):
    """(pattern, colours, p) of the compressed sweeps a sparse Hessian of F runs: the
    Hessian's symmetric pattern and its star colouring where that takes fewer colours
    (check with :func:`star_colouring_is_valid`), else the exact pattern (bool csr_array)
    of the gradient Function's Jacobian and its column colouring (check with
    :func:`column_colouring_is_valid`).  ``weighted``: the Hessian of w . F; None: where
    F is not scalar."""
    from jacext import second

    if weighted is None:
        weighted = F.out_is_tuple or F.n_outputs != 1
    parts = second._hessian_parts(F, argnums, weighted)
    star = parts.star()
    if star is not None:
        return parts.pattern.copy(), star[0], star[1]
    structure = parts.G._planner.structure(parts.argnums)
    col, p, _, _ = structure.colourings
    return structure.array(), col, p


def _argnums_key(argnums):
    if isinstance(argnums, (int, np.integer)):
        return int(argnums)
    return tuple(int(k) for k in argnums)


# ---------------------------------------------------------------- ops --

def op_value(op, a, b=0.0, s=0.0):
    """The value of op ``op`` (a name of ops.def, or its number) on scalars, computed by
    the C table."""
    from jacext import _graph

    return _graph.op_value(_op_number(op), a, b, s)


def op_partials(op, a, b=0.0, s=0.0):
    """The local partials (d0, d1) of op ``op`` (name or number) on scalars, computed by
    the C table."""
    from jacext import _graph

    return _graph.op_partials(_op_number(op), a, b, s)


def _op_number(op):
    from jacext import ops

    return ops.OPS[op] if isinstance(op, str) else int(op)
