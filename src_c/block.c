/*
 * block.c -- block instructions (vm.h): y = W x for a constant matrix W over contiguous
 * slots, run as matrix products over all lanes at once.
 *
 * Slot s's L lanes are base[s * L .. s * L + L) (a point's sweeps: L directions; a batch:
 * directions times points), so the block's operand lanes form a row-major n x L matrix X
 * and its result lanes an m x L matrix Y:  values Y = W X, tangents T_y = W T_x, adjoints
 * A_x += W^T A_y.  Each is one BLAS call (dgemv for one lane, dgemm for more), through the
 * pointers the tape carries: SciPy's scipy.linalg.cython_blas, which every jacext install
 * already has (SciPy is a dependency), so the C core needs no BLAS at build or link time
 * and values agree with NumPy's W @ x to rounding.  BLAS is column-major: a row-major
 * m x L matrix is its column-major L x m transpose, hence the swapped operands below.
 *
 * Derivative lanes that are mostly zeros (a Jacobian's unit seeds) go by their nonzeros
 * instead, m multiply-adds each (jx_sparse_lanes).
 *
 * A product block (vm.h) multiplies two matrices of slots, Y = A B; its partials are the
 * operands' values (kept alive by the lowering), read at value + s * VB: a point's sweeps
 * (VB = 1) take BLAS (tangents A dB as one product, dA B one per row of A; adjoints
 * B_bar += A^T Y_bar as one, A_bar += Y_bar B^T one per row), a batch's (VB points, each
 * with its own A and B) plain loops over the points' lanes.
 *
 * Values keep BLAS's (and NumPy's) nan and inf.  Derivatives keep the zero kills
 * (kernels.h): a zero weight or a zero tangent contributes exactly zero.  BLAS's products
 * do that whenever W and the incoming lanes are finite (0 * finite is 0); otherwise the
 * block takes a plain loop with jx_zmul, the scalar instructions' rule term by term.
 */
#include <stdlib.h>
#include <string.h>

#include "vm.h"

static const double *jx_w(const jx_tape *t, int32_t k, int32_t *m, int32_t *n, int32_t *dst,
                          int32_t *src)
{
    const int64_t *f = t->blocks + (size_t)JX_BLOCK_FIELDS * k;
    const int32_t i = (int32_t)f[0];
    *m = (int32_t)f[1];
    *n = (int32_t)f[2];
    *dst = t->dst[i];
    *src = t->a[i];
    return t->weights + f[3];
}

/* Y (m x L) = W X (n x L), beta 0 */
static void jx_gemm_ny(const jx_tape *t, const double *W, int32_t m, int32_t n,
                       const double *X, double *Y, ptrdiff_t L)
{
    int im = m, in = n, iL = (int)L, one = 1;
    double alpha = 1.0, beta = 0.0;
    char tr = 'T', no = 'N';
    if (L == 1)
        t->dgemv(&tr, &in, &im, &alpha, (double *)W, &in, (double *)X, &one, &beta, Y, &one);
    else
        t->dgemm(&no, &no, &iL, &im, &in, &alpha, (double *)X, &iL, (double *)W, &in, &beta,
                 Y, &iL);
}

/* ---- product blocks: Y (m x p) = A (m x n) B (n x p), all slots ---- */

typedef struct {
    int32_t m, n, p, dst, src;
} jx_prod;

/* lanes of a batch's product summed in registers at a time (BLAS's int sizes: a point's
   p x lanes must fit one, else the plain loops serve) */
#define JX_PRODUCT_TILE 8

static jx_prod jx_prod_of(const jx_tape *t, int32_t k)
{
    const int64_t *f = t->blocks + (size_t)JX_BLOCK_FIELDS * k;
    const int32_t i = (int32_t)f[0];
    jx_prod q;
    q.m = (int32_t)f[1];
    q.n = (int32_t)f[2];
    q.p = (int32_t)-f[3];
    q.dst = t->dst[i];
    q.src = t->a[i];
    return q;
}

static void jx_product_value(const jx_tape *t, int32_t k, double *base, ptrdiff_t L)
{
    const jx_prod q = jx_prod_of(t, k);
    const double *A = base + (size_t)q.src * (size_t)L;
    const double *Bm = A + (size_t)q.m * (size_t)q.n * (size_t)L;
    double *Y = base + (size_t)q.dst * (size_t)L;
    int32_t i, j, c;
    ptrdiff_t l;
    if (L == 1) {   /* row-major Y = A B is column-major Y^T = B^T A^T */
        int im = q.m, in = q.n, ip = q.p;
        double alpha = 1.0, beta = 0.0;
        char no = 'N';
        t->dgemm(&no, &no, &ip, &im, &in, &alpha, (double *)Bm, &ip, (double *)A, &in, &beta,
                 Y, &ip);
        return;
    }
    /* a batch: each lane (point) its own product; JX_PRODUCT_TILE lanes of an entry are
       summed in registers over c, then stored once */
    for (i = 0; i < q.m; i++)
        for (j = 0; j < q.p; j++) {
            double *y = Y + ((size_t)i * (size_t)q.p + (size_t)j) * (size_t)L;
            for (l = 0; l < L; l += JX_PRODUCT_TILE) {
                const ptrdiff_t w = L - l < JX_PRODUCT_TILE ? L - l : JX_PRODUCT_TILE;
                double acc[JX_PRODUCT_TILE] = {0.0};
                ptrdiff_t u;
                for (c = 0; c < q.n; c++) {
                    const double *a = A + ((size_t)i * (size_t)q.n + (size_t)c) * (size_t)L + l;
                    const double *b = Bm + ((size_t)c * (size_t)q.p + (size_t)j) * (size_t)L + l;
                    if (w == JX_PRODUCT_TILE)
                        for (u = 0; u < JX_PRODUCT_TILE; u++) acc[u] += a[u] * b[u];
                    else
                        for (u = 0; u < w; u++) acc[u] += a[u] * b[u];
                }
                for (u = 0; u < w; u++) y[l + u] = acc[u];
            }
        }
}

static void jx_product_tangent(const jx_tape *t, int32_t k, const double *value,
                               ptrdiff_t VB, double *base, ptrdiff_t L)
{
    const jx_prod q = jx_prod_of(t, k);
    const size_t mn = (size_t)q.m * (size_t)q.n, np_ = (size_t)q.n * (size_t)q.p;
    const double *vA = value + (size_t)q.src * (size_t)VB, *vB = vA + mn * (size_t)VB;
    const double *tA = base + (size_t)q.src * (size_t)L, *tB = tA + mn * (size_t)L;
    double *tY = base + (size_t)q.dst * (size_t)L;
    const ptrdiff_t D = L / VB;
    int32_t i, j, c;
    ptrdiff_t d, l;
    int finite;
    if (VB == 1 && (int64_t)q.p * D <= INT32_MAX && jx_all_finite(vA, (ptrdiff_t)(mn + np_))
        && jx_all_finite(tA, (ptrdiff_t)(mn + np_) * L)) {
        /* T_Y = A T_B (one product over the p x D lanes of each row), then row i of A's
           tangents times B: T_Y[i] (p x D) += B^T T_A[i] */
        int im = q.m, in = q.n, ipd = (int)(q.p * D), ip = q.p, iD = (int)D;
        double alpha = 1.0, zero = 0.0, one = 1.0;
        char no = 'N', tr = 'T';
        t->dgemm(&no, &no, &ipd, &im, &in, &alpha, (double *)tB, &ipd, (double *)vA, &in,
                 &zero, tY, &ipd);
        for (i = 0; i < q.m; i++)
            t->dgemm(&no, &tr, &iD, &ip, &in, &alpha,
                     (double *)(tA + (size_t)i * (size_t)q.n * (size_t)D), &iD, (double *)vB,
                     &ip, &one, tY + (size_t)i * (size_t)q.p * (size_t)D, &iD);
        return;
    }
    /* finite values and tangents: plain products (0 * finite is 0 already) */
    finite = jx_all_finite(vA, (ptrdiff_t)(mn + np_) * VB)
             && jx_all_finite(tA, (ptrdiff_t)(mn + np_) * L);
    for (i = 0; i < q.m; i++)
        for (j = 0; j < q.p; j++) {
            double *ty = tY + ((size_t)i * (size_t)q.p + (size_t)j) * (size_t)L;
            for (l = 0; l < L; l++) ty[l] = 0.0;
            for (c = 0; c < q.n; c++) {
                const size_t ia = (size_t)i * (size_t)q.n + (size_t)c;
                const size_t ib = (size_t)c * (size_t)q.p + (size_t)j;
                const double *va = vA + ia * (size_t)VB, *vb = vB + ib * (size_t)VB;
                const double *ta = tA + ia * (size_t)L, *tb = tB + ib * (size_t)L;
                for (d = 0; d < D; d++) {
                    double *JX_RESTRICT y = ty + d * VB;
                    const double *JX_RESTRICT xa = ta + d * VB, *JX_RESTRICT xb = tb + d * VB;
                    if (finite)
                        for (l = 0; l < VB; l++) y[l] += vb[l] * xa[l] + va[l] * xb[l];
                    else
                        for (l = 0; l < VB; l++)
                            y[l] += jx_zmul(vb[l], xa[l]) + jx_zmul(va[l], xb[l]);
                }
            }
        }
}

static void jx_product_adjoint(const jx_tape *t, int32_t k, const double *value,
                               ptrdiff_t VB, double *base, ptrdiff_t L)
{
    const jx_prod q = jx_prod_of(t, k);
    const size_t mn = (size_t)q.m * (size_t)q.n, np_ = (size_t)q.n * (size_t)q.p;
    const double *vA = value + (size_t)q.src * (size_t)VB, *vB = vA + mn * (size_t)VB;
    double *aA = base + (size_t)q.src * (size_t)L, *aB = aA + mn * (size_t)L;
    double *aY = base + (size_t)q.dst * (size_t)L;
    const ptrdiff_t R = L / VB;
    int32_t i, j, c;
    ptrdiff_t r, l;
    if (VB == 1 && (int64_t)q.p * R <= INT32_MAX && jx_all_finite(vA, (ptrdiff_t)(mn + np_))
        && jx_all_finite(aY, (ptrdiff_t)q.m * q.p * L)) {
        /* B_bar (n x pR) += A^T Y_bar; A_bar[i] (n x R) += B Y_bar[i] */
        int im = q.m, in = q.n, ipr = (int)(q.p * R), ip = q.p, iR = (int)R;
        double alpha = 1.0, one = 1.0;
        char no = 'N', tr = 'T';
        t->dgemm(&no, &tr, &ipr, &in, &im, &alpha, aY, &ipr, (double *)vA, &in, &one, aB,
                 &ipr);
        for (i = 0; i < q.m; i++)
            t->dgemm(&no, &no, &iR, &in, &ip, &alpha, aY + (size_t)i * (size_t)q.p * (size_t)R,
                     &iR, (double *)vB, &ip, &one, aA + (size_t)i * (size_t)q.n * (size_t)R,
                     &iR);
    } else {
        const int finite = jx_all_finite(vA, (ptrdiff_t)(mn + np_) * VB)
                           && jx_all_finite(aY, (ptrdiff_t)q.m * q.p * L);
        for (i = 0; i < q.m; i++)
            for (j = 0; j < q.p; j++) {
                const double *ay = aY + ((size_t)i * (size_t)q.p + (size_t)j) * (size_t)L;
                for (c = 0; c < q.n; c++) {
                    const size_t ia = (size_t)i * (size_t)q.n + (size_t)c;
                    const size_t ib = (size_t)c * (size_t)q.p + (size_t)j;
                    const double *va = vA + ia * (size_t)VB, *vb = vB + ib * (size_t)VB;
                    double *aa = aA + ia * (size_t)L, *ab = aB + ib * (size_t)L;
                    for (r = 0; r < R; r++) {
                        double *JX_RESTRICT xa = aa + r * VB, *JX_RESTRICT xb = ab + r * VB;
                        const double *JX_RESTRICT y = ay + r * VB;
                        if (finite) {
                            for (l = 0; l < VB; l++) xa[l] += vb[l] * y[l];
                            for (l = 0; l < VB; l++) xb[l] += va[l] * y[l];
                        } else {
                            for (l = 0; l < VB; l++) xa[l] += jx_zmul(vb[l], y[l]);
                            for (l = 0; l < VB; l++) xb[l] += jx_zmul(va[l], y[l]);
                        }
                    }
                }
            }
    }
    memset(aY, 0, (size_t)q.m * (size_t)q.p * (size_t)L * sizeof(double));
}

static int jx_is_product(const jx_tape *t, int32_t k)
{
    return t->blocks[(size_t)JX_BLOCK_FIELDS * k + 3] < 0;
}

void jx_block_op_value(const jx_tape *t, int32_t k, double *base, ptrdiff_t L)
{
    int32_t m, n, dst, src;
    if (jx_is_product(t, k)) {
        jx_product_value(t, k, base, L);
        return;
    }
    const double *W = jx_w(t, k, &m, &n, &dst, &src);
    jx_gemm_ny(t, W, m, n, base + (size_t)src * (size_t)L, base + (size_t)dst * (size_t)L, L);
}

/* A block's derivative lanes that are mostly zeros: X (rows x L) with at most
   rows * L / JX_BLOCK_SPARSE nonzeros, listed row by row (row[q], lane[q], val[q]).
   A sweep then goes by the nonzeros (m multiply-adds each) instead of the product
   (m x rows x L).  Unit seeds are the common case -- a Jacobian's first block, whose
   operands are inputs -- and there each lane of the result is a column of W, exactly.
   Returns the count, or -1 (too many, or no memory: the product serves). */
typedef struct {
    ptrdiff_t n;
    ptrdiff_t *row, *lane;
    double *val;
} jx_nonzeros;

#define JX_COUNT_CHUNK 256

static int jx_sparse_lanes(const double *X, int32_t rows, ptrdiff_t L, jx_nonzeros *nz)
{
    const ptrdiff_t size = (ptrdiff_t)rows * L, limit = size / JX_BLOCK_SPARSE;
    ptrdiff_t q, count = 0;
    nz->n = 0;
    nz->row = nz->lane = NULL;
    nz->val = NULL;
    if (limit < 1) return 0;
    /* counted a chunk at a time: a branch-free inner loop, the limit checked between
       chunks (a dense X stops within the first chunk) */
    for (q = 0; q < size;) {
        const ptrdiff_t end = size - q < JX_COUNT_CHUNK ? size : q + JX_COUNT_CHUNK;
        ptrdiff_t c = 0;
        for (; q < end; q++) c += (X[q] != 0.0);
        count += c;
        if (count > limit) return 0;
    }
    nz->row = (ptrdiff_t *)malloc((size_t)(count > 0 ? count : 1) * sizeof(ptrdiff_t));
    nz->lane = (ptrdiff_t *)malloc((size_t)(count > 0 ? count : 1) * sizeof(ptrdiff_t));
    nz->val = (double *)malloc((size_t)(count > 0 ? count : 1) * sizeof(double));
    if (!nz->row || !nz->lane || !nz->val) {
        free(nz->row);
        free(nz->lane);
        free(nz->val);
        return 0;
    }
    for (q = 0; q < size; q++)
        if (X[q] != 0.0) {
            nz->row[nz->n] = q / L;
            nz->lane[nz->n] = q % L;
            nz->val[nz->n++] = X[q];
        }
    return 1;
}

static void jx_nonzeros_free(jx_nonzeros *nz)
{
    free(nz->row);
    free(nz->lane);
    free(nz->val);
}

void jx_block_op_tangent(const jx_tape *t, int32_t k, const double *value, ptrdiff_t VB,
                         double *base, ptrdiff_t L)
{
    int32_t m, n, dst, src, j, c;
    ptrdiff_t l, q;
    jx_nonzeros nz;
    const double *W;
    if (jx_is_product(t, k)) {
        jx_product_tangent(t, k, value, VB, base, L);
        return;
    }
    W = jx_w(t, k, &m, &n, &dst, &src);
    const double *X = base + (size_t)src * (size_t)L;
    double *Y = base + (size_t)dst * (size_t)L;
    if (jx_sparse_lanes(X, n, L, &nz)) {   /* by X's nonzeros, W row by row */
        for (j = 0; j < m; j++) {
            const double *w = W + (size_t)j * (size_t)n;
            double *y = Y + (size_t)j * (size_t)L;
            for (l = 0; l < L; l++) y[l] = 0.0;
            for (q = 0; q < nz.n; q++)
                y[nz.lane[q]] += jx_zmul(w[nz.row[q]], nz.val[q]);
        }
        jx_nonzeros_free(&nz);
        return;
    }
    if (t->block_finite && t->block_finite[k] && jx_all_finite(X, (ptrdiff_t)n * L)) {
        jx_gemm_ny(t, W, m, n, X, Y, L);
        return;
    }
    for (j = 0; j < m; j++) {
        double *y = Y + (size_t)j * (size_t)L;
        for (l = 0; l < L; l++) y[l] = 0.0;
        for (c = 0; c < n; c++) {
            const double w = W[(size_t)j * (size_t)n + (size_t)c];
            const double *x = X + (size_t)c * (size_t)L;
            if (w == 0.0) continue;
            for (l = 0; l < L; l++) y[l] += jx_zmul(w, x[l]);
        }
    }
}

void jx_block_op_adjoint(const jx_tape *t, int32_t k, const double *value, ptrdiff_t VB,
                         double *base, ptrdiff_t L)
{
    int32_t m, n, dst, src, j, c;
    ptrdiff_t l;
    const double *W;
    double *AX, *AY;
    jx_nonzeros nz;
    if (jx_is_product(t, k)) {
        jx_product_adjoint(t, k, value, VB, base, L);
        return;
    }
    W = jx_w(t, k, &m, &n, &dst, &src);
    AX = base + (size_t)src * (size_t)L;
    AY = base + (size_t)dst * (size_t)L;
    if (jx_sparse_lanes(AY, m, L, &nz)) {   /* by A_y's nonzeros: lane l += W[j, :] a[j, l] */
        ptrdiff_t q;
        for (q = 0; q < nz.n; q++) {
            const double *w = W + (size_t)nz.row[q] * (size_t)n;
            const double v = nz.val[q];
            double *ax = AX + nz.lane[q];
            for (c = 0; c < n; c++) ax[(size_t)c * (size_t)L] += jx_zmul(w[c], v);
        }
        jx_nonzeros_free(&nz);
    } else if (t->block_finite && t->block_finite[k] && jx_all_finite(AY, (ptrdiff_t)m * L)) {
        int im = m, in = n, iL = (int)L, one = 1;
        double alpha = 1.0, beta = 1.0;
        char tr = 'T', no = 'N';
        if (L == 1)
            t->dgemv(&no, &in, &im, &alpha, (double *)W, &in, AY, &one, &beta, AX, &one);
        else
            t->dgemm(&no, &tr, &iL, &in, &im, &alpha, AY, &iL, (double *)W, &in, &beta, AX,
                     &iL);
    } else {
        for (j = 0; j < m; j++) {
            const double *ay = AY + (size_t)j * (size_t)L;
            for (c = 0; c < n; c++) {
                const double w = W[(size_t)j * (size_t)n + (size_t)c];
                double *ax = AX + (size_t)c * (size_t)L;
                if (w == 0.0) continue;
                for (l = 0; l < L; l++) ax[l] += jx_zmul(w, ay[l]);
            }
        }
    }
    memset(AY, 0, (size_t)m * (size_t)L * sizeof(double));
}

void jx_tape_block_finite(const jx_tape *t, unsigned char *finite)
{
    int32_t k;
    for (k = 0; k < t->n_blocks; k++) {
        const int64_t *f = t->blocks + (size_t)JX_BLOCK_FIELDS * k;
        /* a product has no W: its sweeps check its operands' values as they run */
        finite[k] = f[3] < 0 ? 0
                    : (unsigned char)jx_all_finite(t->weights + f[3], (ptrdiff_t)(f[1] * f[2]));
    }
}
