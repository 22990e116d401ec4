"""The NumPy rules of linear algebra: matmul, dot, einsum, tensordot, cross, trace, norm, det.

Products are sums of products over id arrays that skip structural zeros (a
constant factor 0.0 is no node: ``Graph.mul_nonzero``, summed by
``reduction_rules.sparse_sum``); a product with a constant matrix worth it
becomes block instructions (``_block_matmul``, the cost rule in ``jacext.plan``).
``jacext.numpy_rules`` puts these rules in its tables.
"""
from __future__ import annotations

import numpy as np

from jacext.reduction_rules import _amax, _amin, _no_out, _norm_axis, _sum, reduce_tree, sparse_sum
from jacext.trace import Array, _fail, _graph_of, _ids, elementwise


def _products(g, ia, ib):
    """Elementwise products of broadcast id arrays, -1 marking a structural zero.

    Zero entries of constant matrices are skipped structurally (DESIGN.md): a
    factor that is the constant 0.0, or an id already -1, gives -1 and no node.
    """
    if ia.shape != ib.shape:
        ia, ib = np.broadcast_arrays(ia, ib)
    shape = ia.shape
    return g.mul_nonzero(ia.ravel(), ib.ravel()).reshape(shape)


def _lin(g, v):
    """An operand of a matrix product: a constant as a float64 array (it may become a
    block's matrix, ``_block_matmul``), anything traced as node ids."""
    if _graph_of((v,)) is None and not isinstance(v, Array):
        arr = np.asarray(v)
        if arr.dtype.kind in "biuf":
            return arr.astype(np.float64, copy=False)
    return _ids(g, v)


def _as_ids(g, v):
    """Node ids of a ``_lin`` operand."""
    if v.dtype.kind == "f":
        return g.consts(v.ravel()).reshape(v.shape)
    return v


def _as_matrices(ia, ib):
    """The operands of ia @ ib as matmul takes them, a 1-d one as a row (left) or column
    (right) matrix, and whether each was 1-d (``_as_vectors`` drops those axes again)."""
    a1, b1 = ia.ndim == 1, ib.ndim == 1
    return (ia[None, :] if a1 else ia), (ib[:, None] if b1 else ib), a1, b1


def _as_vectors(res, a1, b1):
    """matmul's result without the axes ``_as_matrices`` added."""
    if a1:
        res = res[..., 0, :]
    if b1:
        res = res[..., 0]
    return res


def _stacked(A, Bm):
    """(the broadcast stack shape, A and Bm broadcast to it) of matrix operands."""
    batch = np.broadcast_shapes(A.shape[:-2], Bm.shape[:-2])
    return (batch, np.broadcast_to(A, batch + A.shape[-2:]),
            np.broadcast_to(Bm, batch + Bm.shape[-2:]))


def _block_matmul(g, ia, ib):
    """ia @ ib as block instructions where one operand is a constant (float64) matrix
    worth it (plan.use_block); None otherwise.  The constant on the left: each column
    of the other operand is one block W x; on the right: each row x is one block W^T x.
    A block is m row nodes (``Graph.block``), whatever the matrix's size."""
    from jacext import plan

    if (ia.dtype.kind == "f") == (ib.dtype.kind == "f") or ia.ndim == 0 or ib.ndim == 0:
        return None
    A, Bm, a1, b1 = _as_matrices(ia, ib)
    if A.shape[-1] != Bm.shape[-2] or A.shape[-1] == 0:
        return None
    left = A.dtype.kind == "f"
    C = A if left else Bm
    if C.shape[-2] == 0 or C.shape[-1] == 0:
        return None
    n_mats = int(np.prod(C.shape[:-2], dtype=np.int64))
    if not plan.use_block(C.shape[-2] * C.shape[-1], np.count_nonzero(C) / max(n_mats, 1)):
        return None
    batch, A, Bm = _stacked(A, Bm)
    m, n = A.shape[-2], Bm.shape[-1]
    out = np.empty(batch + (m, n), dtype=np.int64)
    weights = {}
    lead = C.shape[:-2]
    for idx in np.ndindex(*batch):
        # one matrix per distinct constant (a broadcast one is registered once)
        cidx = tuple(0 if d == 1 else i for i, d in zip(idx[len(batch) - len(lead):], lead))
        if cidx not in weights:
            weights[cidx] = g.weight(C[cidx] if left else C[cidx].T)
        w = weights[cidx]
        if left:
            ids = Bm[idx]
            for j in range(n):
                out[idx + (slice(None), j)] = g.block(w, ids[:, j])
        else:
            ids = A[idx]
            for i in range(m):
                out[idx + (i,)] = g.block(w, ids[i])
    return _as_vectors(out, a1, b1)


def _product_matmul(g, ia, ib):
    """ia @ ib of two traced operands as product blocks (``Graph.product``, one per matrix
    of a stack) where the product is large enough (plan.use_product) and neither operand
    holds the constant 0.0 (whose products the scalar form leaves out: a block has no
    structural zeros); None otherwise."""
    from jacext import plan

    if ia.dtype.kind == "f" or ib.dtype.kind == "f" or ia.ndim == 0 or ib.ndim == 0:
        return None
    A, Bm, a1, b1 = _as_matrices(ia, ib)
    m, n, p = A.shape[-2], A.shape[-1], Bm.shape[-1]
    if n != Bm.shape[-2] or not plan.use_product(m, n, p):
        return None
    for ids in (A, Bm):
        is_const, value = g.constants(ids.ravel())
        if (is_const.astype(bool) & (value == 0.0)).any():
            return None
    batch, A, Bm = _stacked(A, Bm)
    out = np.empty(batch + (m, p), dtype=np.int64)
    for idx in np.ndindex(*batch):
        out[idx] = g.product(A[idx], Bm[idx])
    return _as_vectors(out, a1, b1)


def _matmul_ids(g, ia, ib):
    res = _block_matmul(g, ia, ib)
    if res is None:
        res = _product_matmul(g, ia, ib)
    if res is not None:
        return res
    ia, ib = _as_ids(g, ia), _as_ids(g, ib)
    if ia.ndim == 0 or ib.ndim == 0:
        raise ValueError("matmul: Input operand does not have enough dimensions")
    ia, ib, a1, b1 = _as_matrices(ia, ib)
    if ia.shape[-1] != ib.shape[-2]:
        raise ValueError(f"matmul: mismatch in core dimension: {ia.shape[-1]} (a) vs "
                         f"{ib.shape[-2]} (b)")
    lhs = ia[..., :, None, :]                       # (..., m, 1, k)
    rhs = np.swapaxes(ib, -1, -2)[..., None, :, :]  # (..., 1, n, k)
    res = sparse_sum(g, _products(g, lhs, rhs))
    return _as_vectors(res, a1, b1)


def _matmul(a, b):
    g = _graph_of((a, b))
    return Array(g, np.asarray(_matmul_ids(g, _lin(g, a), _lin(g, b))))


def _dot(a, b, out=None):
    _no_out(out, "np.dot")
    g = _graph_of((a, b))
    ia, ib = _lin(g, a), _lin(g, b)
    if ia.ndim == 0 or ib.ndim == 0:
        return elementwise("MUL", a, b)
    if ib.ndim <= 2:
        return Array(g, np.asarray(_matmul_ids(g, ia, ib)))
    return _tensordot(a, b, axes=([ia.ndim - 1], [ib.ndim - 2]))


def _vdot(a, b):
    g = _graph_of((a, b))
    return Array(g, np.asarray(_matmul_ids(g, _lin(g, a).ravel(), _lin(g, b).ravel())))


def _inner(a, b):
    g = _graph_of((a, b))
    ia, ib = _lin(g, a), _lin(g, b)
    if ia.ndim == 0 or ib.ndim == 0:
        return elementwise("MUL", a, b)
    return _tensordot(a, b, axes=([ia.ndim - 1], [ib.ndim - 1]))


def _outer(a, b, out=None):
    _no_out(out, "np.outer")
    g = _graph_of((a, b))
    ia, ib = _ids(g, a).ravel(), _ids(g, b).ravel()
    return elementwise("MUL", Array(g, ia[:, None]), Array(g, ib[None, :]))


def _tensordot(a, b, axes=2):
    g = _graph_of((a, b))
    ia, ib = _lin(g, a), _lin(g, b)
    if isinstance(axes, (int, np.integer)):
        ax_a = list(range(ia.ndim - axes, ia.ndim))
        ax_b = list(range(axes))
    else:
        ax_a, ax_b = axes
        ax_a = [ax_a] if isinstance(ax_a, (int, np.integer)) else list(ax_a)
        ax_b = [ax_b] if isinstance(ax_b, (int, np.integer)) else list(ax_b)
    ax_a = [k % ia.ndim for k in ax_a]
    ax_b = [k % ib.ndim for k in ax_b]
    for p, q in zip(ax_a, ax_b):
        if ia.shape[p] != ib.shape[q]:
            raise ValueError("shape-mismatch for sum")
    free_a = [k for k in range(ia.ndim) if k not in ax_a]
    free_b = [k for k in range(ib.ndim) if k not in ax_b]
    k = int(np.prod([ia.shape[p] for p in ax_a], dtype=np.int64))
    ma = np.transpose(ia, free_a + ax_a).reshape(-1, k)
    mb = np.transpose(ib, ax_b + free_b).reshape(k, -1)
    res = _matmul_ids(g, ma, mb)
    return Array(g, res.reshape([ia.shape[p] for p in free_a] + [ib.shape[q] for q in free_b]))


def _einsum(subscripts, *operands, out=None, optimize=False, **kw):
    _no_out(out, "np.einsum")
    if not isinstance(subscripts, str):
        _fail("np.einsum in the interleaved (operand, sublist) form is not supported",
              "use the subscripts-string form, e.g. np.einsum('ij,j->i', A, x)")
    g = _graph_of(operands)
    spec = subscripts.replace(" ", "")
    if "->" in spec:
        ins, out_spec = spec.split("->")
    else:
        ins = spec
        letters = ins.replace(",", "")
        out_spec = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    in_specs = ins.split(",")
    if len(in_specs) != len(operands):
        raise ValueError("einsum: more operands than subscripts, or fewer")
    if "." in spec:
        _fail("np.einsum with '...' is not supported while tracing",
              "spell the axes out, e.g. 'bij,bj->bi'")
    res = _einsum_as_tensordot(g, in_specs, out_spec, operands)
    if res is not None:
        return res
    sizes = {}
    views = []
    for sp, op in zip(in_specs, operands):
        ids = _ids(g, op)
        if ids.ndim != len(sp):
            raise ValueError(f"einsum: operand has {ids.ndim} dims, subscripts '{sp}'")
        # repeated letters in one operand: take the diagonal (a view, no nodes)
        uniq = "".join(dict.fromkeys(sp))
        if uniq != sp:
            ids = np.einsum(f"{sp}->{uniq}", ids)
        for c, n in zip(uniq, ids.shape):
            if sizes.setdefault(c, n) != n and n != 1 and sizes[c] != 1:
                raise ValueError(f"einsum: size of '{c}' differs between operands")
            sizes[c] = max(sizes[c], n)
        views.append((uniq, ids))
    for c in out_spec:
        if c not in sizes:
            raise ValueError(f"einsum: output subscript '{c}' appears in no operand")
    # Contract left to right, two operands at a time, summing a letter out as soon
    # as no later operand and not the output needs it: 'ij,jk,kl->il' costs two
    # matrix products, not one product over all four letters.
    spec, ids = views[0]
    for k in range(1, len(views)):
        later = set(out_spec).union(*(v[0] for v in views[k + 1:]))
        spec, ids = _contract(g, spec, ids, later, sizes, *views[k])
    spec, ids = _contract(g, spec, ids, set(out_spec), sizes)
    return Array(g, np.asarray(np.transpose(ids, [spec.index(c) for c in out_spec])))


def _einsum_as_tensordot(g, in_specs, out_spec, operands):
    """A two-operand einsum that is a tensordot (every letter in the output or in both
    operands, not both; no repeated letter): the tensordot, so that a constant matrix may
    become blocks and a product of two traced ones a product block.  None otherwise."""
    if len(operands) != 2:
        return None
    (s1, s2), (x1, x2) = in_specs, operands
    if not any(isinstance(v, Array) for v in operands):
        return None
    if (len(set(s1)) != len(s1) or len(set(s2)) != len(s2) or len(set(out_spec)) !=
            len(out_spec) or np.ndim(x1) != len(s1) or np.ndim(x2) != len(s2)):
        return None
    both = [c for c in s1 if c in s2]
    if any(c in out_spec for c in both):
        return None
    if any(np.shape(x1)[s1.index(c)] != np.shape(x2)[s2.index(c)] for c in both):
        return None     # a broadcast letter: einsum's own contraction
    if any(c not in out_spec for c in s1 + s2 if c not in both):
        return None
    res = _tensordot(x1, x2, axes=([s1.index(c) for c in both], [s2.index(c) for c in both]))
    got = [c for c in s1 if c not in both] + [c for c in s2 if c not in both]
    return Array(g, np.transpose(res.ids, [got.index(c) for c in out_spec]))


def _contract(g, s1, a1, keep, sizes, s2="", a2=None):
    """The sum of the product a1 * a2 over the letters of s1 and s2 that ``keep``
    lacks; returns (letters, ids).  Without a2, a sum over a1 alone."""
    letters = "".join(dict.fromkeys(s1 + s2))
    kept = [c for c in letters if c in keep]
    summed = [c for c in letters if c not in keep]
    order = kept + summed
    full = tuple(sizes[c] for c in order)

    def aligned(spec, ids):
        t = np.transpose(ids, [spec.index(c) for c in order if c in spec])
        it = iter(t.shape)
        return t.reshape([next(it) if c in spec else 1 for c in order])

    prod = aligned(s1, a1)
    if a2 is not None:
        prod = _products(g, prod, aligned(s2, a2))
    if not summed:
        return "".join(kept), np.broadcast_to(prod, full)
    prod = np.broadcast_to(prod, full).reshape(full[:len(kept)] + (-1,))
    return "".join(kept), sparse_sum(g, prod)


def _cross(a, b, axisa=-1, axisb=-1, axisc=-1, axis=None):
    g = _graph_of((a, b))
    if axis is not None:
        axisa = axisb = axisc = axis
    ia = np.moveaxis(_ids(g, a), axisa, -1)
    ib = np.moveaxis(_ids(g, b), axisb, -1)
    if ia.shape[-1] not in (2, 3) or ib.shape[-1] not in (2, 3):
        raise ValueError("incompatible dimensions for cross product (dimension must be 2 or 3)")
    # a 2-vector's missing z is None: its products are left out, as NumPy does,
    # so no x * 0 node and NumPy's signed zeros
    A = [Array(g, ia[..., k]) for k in range(ia.shape[-1])] + [None]
    B = [Array(g, ib[..., k]) for k in range(ib.shape[-1])] + [None]

    def mul(p, q):
        return None if p is None or q is None else p * q

    def sub(p, q):
        return p if q is None else (-q if p is None else p - q)

    c2 = sub(mul(A[0], B[1]), mul(A[1], B[0]))
    if ia.shape[-1] == 2 and ib.shape[-1] == 2:
        return c2
    c = [sub(mul(A[1], B[2]), mul(A[2], B[1])), sub(mul(A[2], B[0]), mul(A[0], B[2])), c2]
    res = np.stack(np.broadcast_arrays(*[ci.ids for ci in c]), axis=-1)
    return Array(g, np.moveaxis(res, -1, axisc))


def _trace(a, offset=0, axis1=0, axis2=1, dtype=None, out=None):
    _no_out(out, "np.trace")
    g = _graph_of((a,))
    d = np.diagonal(_ids(g, a), offset, axis1, axis2)
    return reduce_tree("ADD", Array(g, d), -1)


def _norm(x, ord=None, axis=None, keepdims=False):
    g = _graph_of((x,))
    ids = _ids(g, x)
    if axis is None and ord is None:
        return np.sqrt(_sum(np.square(x), None, keepdims=keepdims)) if not keepdims else \
            np.sqrt(_sum(np.square(x), tuple(range(ids.ndim)), keepdims=True))
    if axis is None:
        axis = tuple(range(ids.ndim))
    axes = _norm_axis(axis, ids.ndim)
    if len(axes) == 1:
        if ord is None or ord == 2:
            return np.sqrt(_sum(np.square(x), axes, keepdims=keepdims))
        if ord == 1:
            return _sum(np.abs(x), axes, keepdims=keepdims)
        if ord == np.inf:
            return _amax(np.abs(x), axes, keepdims=keepdims)
        if ord == -np.inf:
            return _amin(np.abs(x), axes, keepdims=keepdims)
        if ord == 0:
            return _sum(np.not_equal(x, 0.0), axes, keepdims=keepdims)
        p = float(ord)
        return _sum(np.abs(x) ** p, axes, keepdims=keepdims) ** (1.0 / p)
    if len(axes) == 2:
        r, c = axes
        if ord is None or ord == "fro":
            return np.sqrt(_sum(np.square(x), axes, keepdims=keepdims))
        if ord == 1:
            return _amax(_sum(np.abs(x), r, keepdims=True), axes, keepdims=keepdims)
        if ord == np.inf:
            return _amax(_sum(np.abs(x), c, keepdims=True), axes, keepdims=keepdims)
        if ord == -1:
            return _amin(_sum(np.abs(x), r, keepdims=True), axes, keepdims=keepdims)
        if ord == -np.inf:
            return _amin(_sum(np.abs(x), c, keepdims=True), axes, keepdims=keepdims)
    _fail(f"np.linalg.norm with ord={ord!r} on these axes is not supported while tracing",
          "use ord=None/'fro', 1, 2 (vectors), inf or -inf")


def _det(a):
    g = _graph_of((a,))
    ids = _ids(g, a)
    n = ids.shape[-1]
    if ids.ndim < 2 or ids.shape[-2] != n:
        raise np.linalg.LinAlgError("Last 2 dimensions of the array must be square")
    m = [[Array(g, ids[..., i, j]) for j in range(n)] for i in range(n)]
    if n == 1:
        return m[0][0]
    if n == 2:
        return m[0][0] * m[1][1] - m[0][1] * m[1][0]
    if n == 3:
        return (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
                - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
                + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]))
    _fail("np.linalg.det of matrices larger than 3x3 is not supported while tracing",
          "use a factorisation written in NumPy operations")
