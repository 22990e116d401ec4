"""Block instructions in the Jacobian-tape builders (``jacext/jactape.py``): the derivative
of a block is the block.

A block y = W x (vm.h: a constant m x n matrix W over contiguous slots) has W itself for
its partials, so the Jacobian tape keeps it a matrix product:

- values: y's m rows are ``Graph.block(w, operands)``, W registered once per graph;
- forward: y's tangent in Jacobian column k is W t_k, t_k the operands' tangents in that
  column (the constant 0 where one has none): one block of W per column, or, where t_k
  has few nonzeros (``plan.JAC_TAPE_BLOCK_SPARSE``), W's columns times those nonzeros
  summed in operand order, as block.c's sparse lanes sum them (a unit seed -- the first
  layer of a network -- makes them W's column itself, folded into constants);
- reverse: the operands' adjoint terms in output row r are W^T a_r, a_r y's adjoints in
  that row: one block of W^T (registered once, a C-contiguous copy), or W's rows times
  a_r's nonzeros, added to each operand's adjoint in row order, as block.c's sparse lanes
  add them.

A row of the result whose every term meets a zero of W (or an operand without a
tangent) gets no tangent: a structural zero, as the scalar instructions' (a row of W that
is zero leaves its row of y constant).  A block of constants is folded into constants.

Non-finite numbers: a W that holds an inf or nan never becomes a block here; its products
are scalar, term by term, where W is not zero (so W's zeros stay structural zeros, as the
sweeps' zero kills keep them: block.c's plain loop for such a W).  With a finite W, a
block of the Jacobian tape meets an inf or nan only in a column whose tangents hold one at
that point; there BLAS's 0 * inf gives nan where the sweeps' zero kill gives 0, so the
entries that differ hold a nan, and those points are recomputed by the sweeps
(``jacext/nonfinite.py``), as for any Jacobian tape.  BLAS sums in its own order: block
results equal the sweeps' to rounding (as the blocks' values do NumPy's).
"""
from __future__ import annotations

import numpy as np

from jacext import jactape as _jt  # module-level helpers, looked up at call time
from jacext import plan as _plan
from jacext._graph import KIND_CONST
from jacext._tape import BLOCK_FIELDS
from jacext.ops import OPS

_MUL = OPS["MUL"]


class Blocks:
    """A tape's block instructions, by instruction index, and their matrices registered
    in one Graph once each (W for values and tangents, W^T for adjoints); a product
    block's operand nodes once ``values`` has made them (its partials)."""

    def __init__(self, tape, g):
        table = np.asarray(tape.get("blocks", ()), dtype=np.int64).reshape(-1, BLOCK_FIELDS)
        self.weights = np.asarray(tape.get("weights", ()), dtype=np.float64)
        self.at = {i: (m, n, off) for i, m, n, off in table.tolist()}
        self.g = g
        self._index = {}
        self._matrix = {}
        self.operands = {}

    def product(self, i):
        """(m, n, p) of product block i (Y = A B, A m x n), None for a block of W."""
        m, n, off = self.at[i]
        return (m, n, -off) if off < 0 else None

    def shape(self, i):
        """(the slots block i writes, the slots it reads)."""
        m, n, off = self.at[i]
        return (m * -off, n * (m - off)) if off < 0 else (m, n)

    def matrix(self, i):
        """(W, W != 0 as CSR (ptr, columns) of its rows and CSC (ptr, rows) of its
        columns, whether W is finite) of block instruction i."""
        m, n, off = self.at[i]
        key = (off, m, n)
        hit = self._matrix.get(key)
        if hit is None:
            W = self.weights[off:off + m * n].reshape(m, n)
            nz = W != 0.0
            r, c = np.nonzero(nz)
            rows = (_ptr(r, m), c)
            ct, rt = np.nonzero(nz.T)
            cols = (_ptr(ct, n), rt)
            hit = self._matrix[key] = (W, rows, cols, bool(np.isfinite(W).all()))
        return hit

    def index(self, i, transposed=False):
        """Block instruction i's W (or W^T) as a Graph matrix, registered once."""
        m, n, off = self.at[i]
        key = (off, m, n, transposed)
        w = self._index.get(key)
        if w is None:
            W = self.matrix(i)[0]
            w = self._index[key] = self.g.weight(W.T if transposed else W)
        return w


def _ptr(major, size):
    ptr = np.zeros(size + 1, dtype=np.int64)
    np.cumsum(np.bincount(major, minlength=size), out=ptr[1:])
    return ptr


def split_groups(first, tape):
    """Group starts (``passes.tape_groups``) with each block instruction a group of its
    own (consecutive blocks have one op word, which may put them together)."""
    table = np.asarray(tape.get("blocks", ()), dtype=np.int64).reshape(-1, BLOCK_FIELDS)
    if not len(table):
        return first
    at = table[:, 0]
    cuts = np.concatenate([first, at, at + 1])
    return np.unique(cuts[cuts < len(tape["op"])])


def rows_written(tape, blocks):
    """Slots each instruction writes: 1, or a block's rows (m, a product's m x p)."""
    rows = np.ones(len(tape["op"]), dtype=np.int64)
    for i in blocks.at:
        rows[i] = blocks.shape(i)[0]
    return rows


def values(g, blocks, node, i, dst, src):
    """Block instruction i's rows into ``node`` (slot -> node)."""
    m, n = blocks.shape(i)
    prod = blocks.product(i)
    if prod is not None:
        pm, pn, pp = prod
        ids = node[src:src + n].copy()
        blocks.operands[i] = ids
        node[dst:dst + m] = g.product(ids[:pm * pn].reshape(pm, pn),
                                      ids[pm * pn:].reshape(pn, pp)).ravel()
        return
    node[dst:dst + m] = g.block(blocks.index(i), node[src:src + n])


# ---- product blocks, Y = A B: partials are the operands' values ----
#
# A tangent of A[r, c] reaches row r of Y, times row c of B's values; a tangent of
# B[c, j] reaches column j of Y, times column c of A's: each nonzero gives p (or m)
# products, summed per Y entry and Jacobian column in operand order.  Where a column's
# tangents (an output row's adjoints) are dense, they are product blocks instead:
# dA B + A dB (Y_bar B^T and A^T Y_bar), the missing entries the constant 0.

def _split(blocks, i):
    m, n, p = blocks.product(i)
    ids = blocks.operands[i]
    return m, n, p, ids[:m * n].reshape(m, n), ids[m * n:].reshape(n, p)


def _product_terms(g, blocks, i, member, key, node, transposed):
    """Scalar terms of product block i for nonzeros (member, key, node): forward,
    ``member`` indexes the operands and each term goes to a Y entry; reverse
    (``transposed``), ``member`` indexes Y and each term to an operand.  Returns (target,
    key, term, seq), terms that meet a constant zero left out (zero kills)."""
    m, n, p, A, Bv = _split(blocks, i)
    mn = m * n
    if not transposed:
        in_a = member < mn
        r, c = np.divmod(member[in_a], n)          # A[r, c] -> Y[r, :] via B[c, :]
        ta = (r[:, None] * p + np.arange(p)).ravel()
        fa = Bv[c].ravel()
        ea = np.repeat(np.flatnonzero(in_a), p)
        cb, jb = np.divmod(member[~in_a] - mn, p)   # B[c, j] -> Y[:, j] via A[:, c]
        tb = (np.arange(m)[None, :] * p + jb[:, None]).ravel()
        fb = A[:, cb].T.ravel()
        eb = np.repeat(np.flatnonzero(~in_a), m)
        target, other, e = (np.concatenate(v) for v in ((ta, tb), (fa, fb), (ea, eb)))
    else:
        r, j = np.divmod(member, p)                 # Y[r, j] -> A[r, :] and B[:, j]
        ta = (r[:, None] * n + np.arange(n)).ravel()
        fa = Bv[:, j].T.ravel()
        tb = mn + (np.arange(n)[None, :] * p + j[:, None]).ravel()
        fb = A[r].ravel()
        e = np.concatenate([np.repeat(np.arange(len(member)), n)] * 2)
        target, other = np.concatenate((ta, tb)), np.concatenate((fa, fb))
    terms = g.mul_nonzero(node[e], other) if len(e) else e
    keep = terms >= 0
    return target[keep], key[e][keep], terms[keep], member[e][keep]


def _product_dense(g, blocks, i, member, node, transposed):
    """One column's tangents (one row's adjoints), given by their nonzeros, as product
    blocks: the nodes of dA B + A dB over Y (forward), or of [Y_bar B^T, A^T Y_bar]
    over the operands (reverse)."""
    m, n, p, A, Bv = _split(blocks, i)
    zero = g.const(0.0)
    if not transposed:
        vec = np.full(m * n + n * p, zero, dtype=np.int64)
        vec[member] = node
        in_a = member < m * n
        # the Y entries reached: rows of A, columns of B with a nonzero tangent
        rows = np.zeros(m, dtype=bool)
        rows[member[in_a] // n] = True
        cols = np.zeros(p, dtype=bool)
        cols[(member[~in_a] - m * n) % p] = True
        out = np.flatnonzero((rows[:, None] | cols[None, :]).ravel())
        parts = []     # dA B where A has tangents, A dB where B has
        if in_a.any():
            parts.append(g.product(vec[:m * n].reshape(m, n), Bv).ravel()[out])
        if not in_a.all():
            parts.append(g.product(A, vec[m * n:].reshape(n, p)).ravel()[out])
        return out, (parts[0] if len(parts) == 1 else g.apply(OPS["ADD"], *parts))
    ybar = np.full(m * p, zero, dtype=np.int64)
    ybar[member] = node
    ybar = ybar.reshape(m, p)
    # the operands reached: rows of A and columns of B that meet a nonzero adjoint
    rows = np.zeros(m, dtype=bool)
    rows[member // p] = True
    cols = np.zeros(p, dtype=bool)
    cols[member % p] = True
    out = np.flatnonzero(np.concatenate([np.repeat(rows, n), np.tile(cols, n)]))
    res = np.concatenate([g.product(ybar, Bv.T).ravel(), g.product(A.T, ybar).ravel()])
    return out, res[out]


def _sparse_limit(n):
    """The most nonzeros of an operand vector of length n that go by scalar products."""
    return max(1, n // _plan.JAC_TAPE_BLOCK_SPARSE)


def _const_values(g, ids):
    """The values of nodes ``ids`` if all are finite constants, else None."""
    vals = []
    for i in ids.tolist():
        op, _, _, _, v = g.node(i)
        if op != KIND_CONST:
            return None
        vals.append(v)
    vals = np.array(vals, dtype=np.float64)
    return vals if np.isfinite(vals).all() else None


def _product(g, blocks, i, ids, transposed):
    """The nodes of W @ ids (W^T @ ids): folded where ids are finite constants, else one
    block."""
    W, _, _, finite = blocks.matrix(i)
    vals = _const_values(g, ids)
    if vals is not None and finite:
        with np.errstate(all="ignore"):
            return g.consts((W.T if transposed else W) @ vals)
    return g.block(blocks.index(i, transposed), ids)


def _linear(g, blocks, i, member, key, node, n_keys, transposed):
    """Block instruction i's map (W, or a product's dA B + A dB; transposed: W^T, or
    Y_bar B^T and A^T Y_bar) applied to ``n_keys`` vectors given by their nonzeros: entry
    ``member`` of vector ``key`` is node ``node``.  A vector with more than
    ``_sparse_limit`` nonzeros (and, for W, a finite W) is one block (or folded constants):
    its (out, key, node) for the entries some nonzero reaches.  The others go by scalar
    products: (out, key, term, member) of each nonzero times a weight (or an operand's
    value) that is not zero, by key, then member (the callers sum them: forward per (out,
    key) in member order, reverse into each operand's adjoint in that order).  Returns
    (products, blocks)."""
    product = blocks.product(i) is not None
    size_in = blocks.shape(i)[0 if transposed else 1]
    order = np.lexsort((member, key))
    member, key, node = member[order], key[order], node[order]
    dense_key = np.bincount(key, minlength=n_keys) > _sparse_limit(size_in)
    if not product:
        dense_key &= blocks.matrix(i)[3]   # a W holding an inf or nan: products only
    is_dense = dense_key[key]
    dense_of, terms_of = (_product_dense, _product_terms) if product else (_w_dense, _w_terms)
    d_out, d_key, d_node = [], [], []
    dense_at = np.flatnonzero(is_dense)
    if len(dense_at):
        for part in np.split(dense_at, np.flatnonzero(np.diff(key[dense_at])) + 1):
            out, res = dense_of(g, blocks, i, member[part], node[part], transposed)
            d_out.append(out)
            d_key.append(np.full(len(out), key[part[0]], dtype=np.int64))
            d_node.append(res)
    dense = tuple(np.concatenate(v) if v else np.zeros(0, dtype=np.int64)
                  for v in (d_out, d_key, d_node))
    sp = ~is_dense
    return terms_of(g, blocks, i, member[sp], key[sp], node[sp], transposed), dense


def _w_dense(g, blocks, i, member, node, transposed):
    """One vector, given by its nonzeros, times W (W^T): (the rows its nonzeros reach
    through W's nonzeros, their nodes) of one block (or folded constants)."""
    W, rows, cols, _ = blocks.matrix(i)
    m, n = W.shape
    ptr, idx = rows if transposed else cols          # x's entry -> y's entries
    vec = np.full(m if transposed else n, g.const(0.0), dtype=np.int64)
    vec[member] = node
    res = _product(g, blocks, i, vec, transposed)
    hit = np.zeros(n if transposed else m, dtype=bool)
    _, at = _jt._expand(ptr[member], np.diff(ptr)[member])
    hit[idx[at]] = True
    out = np.flatnonzero(hit)
    return out, res[out]


def _w_terms(g, blocks, i, member, key, node, transposed):
    """W's columns (rows) times the nonzeros: (out, key, term, member) of each
    W[out, member] * node where W is not zero."""
    W, rows, cols, _ = blocks.matrix(i)
    ptr, idx = rows if transposed else cols
    rep, at = _jt._expand(ptr[member], np.diff(ptr)[member])
    out = idx[at]
    w = W[member[rep], out] if transposed else W[out, member[rep]]
    terms = g.apply(_MUL, g.consts(w), node[rep]) if len(rep) else rep
    return out, key[rep], terms, member[rep]


def forward(g, blocks, tan, i, dst, src, n_cols):
    """Block instruction i in ``_forward``: the tangents of its m rows from its operands'
    (``tan``, a ``jactape._Tangents``)."""
    m, n = blocks.shape(i)
    member, key, node = tan.get(np.arange(src, src + n, dtype=np.int64))
    slots = np.arange(dst, dst + m, dtype=np.int64)
    if len(member) == 0:
        tan.block[slots] = -1
        return
    (out, k, terms, seq), (d_out, d_key, d_node) = _linear(
        g, blocks, i, member, key, node, n_cols, False)
    codes, sums = (_jt._chain_sums(g, out * n_cols + k, terms, seq) if len(out)
                   else (out, terms))
    rows = np.concatenate([codes // n_cols, d_out])
    keys = np.concatenate([codes % n_cols, d_key])
    nodes = np.concatenate([sums, d_node])
    order = np.lexsort((keys, rows))
    tan.put(slots, m, rows[order], keys[order], nodes[order])


def reverse_bulk(g, blocks, pending, i, j, r, adj, defs_of, seq, n_out):
    """Block instruction i in ``_reverse_bulk``: its rows' adjoints (row j of the block,
    output row r, node) become its operands' terms, sent to ``pending`` (``defs_of``:
    the value ids of the operands; ``seq``: the block's place in the sweep)."""
    (c, rr, terms, _), (d_c, d_r, d_node) = _linear(g, blocks, i, j, r, adj, n_out, True)
    # each term on its own, in row order within an operand and output row (the sweep's
    # sparse lanes), then the blocks' sums
    c = np.concatenate([c, d_c])
    pending.send(defs_of[c], np.concatenate([rr, d_r]), np.concatenate([terms, d_node]),
                 np.full(len(c), seq, dtype=np.int64))


def reverse_one(g, blocks, adj, add, i, dst, src):
    """Block instruction i in ``_reverse`` (node by node): ``adj`` slot -> {row: node},
    ``add(slot, row, term)`` accumulating as the sweep does."""
    m, n = blocks.shape(i)
    j, r, node = [], [], []
    for q in range(m):
        d = adj.pop(dst + q, None)    # the sweep clears the rows' adjoints
        if d:
            j.extend([q] * len(d))
            r.extend(d.keys())
            node.extend(d.values())
    if not j:
        return
    j, r, node = (np.array(v, dtype=np.int64) for v in (j, r, node))
    n_rows = int(r.max()) + 1
    (c, rr, terms, _), (d_c, d_r, d_node) = _linear(g, blocks, i, j, r, node, n_rows, True)
    for cc, row, t in zip(np.concatenate([c, d_c]).tolist(),
                          np.concatenate([rr, d_r]).tolist(),
                          np.concatenate([terms, d_node]).tolist()):
        add(src + cc, row, t)
