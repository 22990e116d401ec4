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

void jx_block_op_value(const jx_tape *t, int32_t k, double *base, ptrdiff_t L)
{
    int32_t m, n, dst, src;
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

void jx_block_op_tangent(const jx_tape *t, int32_t k, double *base, ptrdiff_t L)
{
    int32_t m, n, dst, src, j, c;
    ptrdiff_t l, q;
    jx_nonzeros nz;
    const double *W = jx_w(t, k, &m, &n, &dst, &src);
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

void jx_block_op_adjoint(const jx_tape *t, int32_t k, double *base, ptrdiff_t L)
{
    int32_t m, n, dst, src, j, c;
    ptrdiff_t l;
    const double *W = jx_w(t, k, &m, &n, &dst, &src);
    double *AX = base + (size_t)src * (size_t)L;
    double *AY = base + (size_t)dst * (size_t)L;
    jx_nonzeros nz;
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
        finite[k] = (unsigned char)jx_all_finite(t->weights + f[3], (ptrdiff_t)(f[1] * f[2]));
    }
}
