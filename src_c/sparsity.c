/*
 * sparsity.c -- the exact structural pattern of a tape, and column colouring.
 *
 * Pattern: every slot carries the sorted set of columns it depends on; an
 * instruction's set is the union of its operands' sets, the same loop as the
 * tangent sweep with sets in place of numbers.  An operand whose partial is
 * fixed at zero (comparisons, floor, sign) contributes nothing, and
 * np.where's condition is no operand at all.  Sorted arrays rather than
 * bitsets: memory follows the nonzeros, so a banded function of 10**6
 * inputs costs a few numbers per slot instead of 10**6 bits.
 *
 * Colouring: greedy distance-2 colouring of the columns (columns sharing a
 * row get different colours), visiting columns in a caller-given order
 * (largest first works well).  Row colouring is the same on the transpose.
 */
#include <stdlib.h>
#include <string.h>

#include "vm.h"

typedef struct {
    int32_t *v;
    int32_t n, cap;
} jx_set;

static int jx_set_reserve(jx_set *s, int32_t cap)
{
    int32_t *p;
    if (cap <= s->cap) return JX_OK;
    if (cap < 4) cap = 4;
    if (cap < 2 * s->cap) cap = 2 * s->cap;
    p = (int32_t *)realloc(s->v, (size_t)cap * sizeof(int32_t));
    if (!p) return JX_ENOMEM;
    s->v = p;
    s->cap = cap;
    return JX_OK;
}

/* dst = x | y for sorted sets; dst may not be x or y */
static int jx_set_union(jx_set *dst, const jx_set *x, const jx_set *y)
{
    int32_t i = 0, j = 0, n = 0;
    int st = jx_set_reserve(dst, x->n + y->n);
    if (st != JX_OK) return st;
    while (i < x->n && j < y->n) {
        int32_t a = x->v[i], b = y->v[j];
        if (a < b) { dst->v[n++] = a; i++; }
        else if (b < a) { dst->v[n++] = b; j++; }
        else { dst->v[n++] = a; i++; j++; }
    }
    while (i < x->n) dst->v[n++] = x->v[i++];
    while (j < y->n) dst->v[n++] = y->v[j++];
    dst->n = n;
    return JX_OK;
}

int jx_sparsity(const jx_tape *t, const int32_t *col_of_input, int32_t **indptr_out,
                int32_t **indices_out)
{
    const jx_set empty = {NULL, 0, 0};
    jx_set *sets = (jx_set *)calloc((size_t)(t->n_slots > 0 ? t->n_slots : 1), sizeof(jx_set));
    jx_set tmp = {NULL, 0, 0};
    int32_t *indptr = NULL, *indices = NULL;
    int32_t i, j;
    int64_t nnz = 0;
    int st = JX_OK;
    if (!sets) return JX_ENOMEM;
    for (j = 0; j < t->n_in && st == JX_OK; j++) {
        if (col_of_input[j] < 0) continue;
        st = jx_set_reserve(&sets[j], 1);
        if (st == JX_OK) {
            sets[j].v[0] = col_of_input[j];
            sets[j].n = 1;
        }
    }
    for (i = 0; i < t->n_instr && st == JX_OK; i++) {
        const int32_t word = t->op[i];
        const int op = word & JX_OP_MASK;
        const int fixed = t->fixed && t->fixed[i];
        const int use_a = !(word & JX_A_IMM) && !(fixed && t->fixed_d0[i] == 0.0);
        const int use_b = jx_op_arity[op] >= 2 && !(word & JX_B_IMM)
                          && !(fixed && t->fixed_d1[i] == 0.0);
        jx_set *d;
        st = jx_set_union(&tmp, use_a ? &sets[t->a[i]] : &empty, use_b ? &sets[t->b[i]] : &empty);
        if (st != JX_OK) break;
        /* swap storage: tmp becomes dst's set (dst may alias an operand) */
        d = &sets[t->dst[i]];
        {
            jx_set old = *d;
            *d = tmp;
            tmp = old;
        }
    }
    if (st == JX_OK) {
        indptr = (int32_t *)malloc((size_t)(t->n_out + 1) * sizeof(int32_t));
        if (!indptr) st = JX_ENOMEM;
    }
    if (st == JX_OK) {
        indptr[0] = 0;
        for (i = 0; i < t->n_out; i++) {
            nnz += sets[t->out_slot[i]].n;
            if (nnz > INT32_MAX) {
                st = JX_ENOMEM;
                break;
            }
            indptr[i + 1] = (int32_t)nnz;
        }
    }
    if (st == JX_OK) {
        indices = (int32_t *)malloc((size_t)(nnz > 0 ? nnz : 1) * sizeof(int32_t));
        if (!indices) st = JX_ENOMEM;
    }
    if (st == JX_OK)
        for (i = 0; i < t->n_out; i++) {
            const jx_set *s = &sets[t->out_slot[i]];
            if (s->n) memcpy(indices + indptr[i], s->v, (size_t)s->n * sizeof(int32_t));
        }
    for (i = 0; i < t->n_slots; i++) free(sets[i].v);
    free(sets);
    free(tmp.v);
    if (st != JX_OK) {
        free(indptr);
        free(indices);
        return st;
    }
    *indptr_out = indptr;
    *indices_out = indices;
    return JX_OK;
}

int32_t jx_colour_columns(int32_t n_rows, int32_t n_cols, const int32_t *indptr,
                          const int32_t *indices, const int32_t *order, int32_t *colour,
                          int64_t max_work)
{
    /* the transpose (columns -> rows) by counting */
    int32_t *cptr = (int32_t *)calloc((size_t)n_cols + 1, sizeof(int32_t));
    int32_t *crow = (int32_t *)malloc((size_t)(indptr[n_rows] > 0 ? indptr[n_rows] : 1) * sizeof(int32_t));
    int32_t *fill = (int32_t *)malloc(((size_t)n_cols + 1) * sizeof(int32_t));
    int32_t *stamp = (int32_t *)malloc(((size_t)n_cols + 1) * sizeof(int32_t));
    int32_t r, c, k, q, n_colours = 0;
    int64_t work = 0;
    if (!cptr || !crow || !fill || !stamp) {
        free(cptr); free(crow); free(fill); free(stamp);
        return JX_ENOMEM;
    }
    for (k = 0; k < indptr[n_rows]; k++) cptr[indices[k] + 1]++;
    for (c = 0; c < n_cols; c++) cptr[c + 1] += cptr[c];
    memcpy(fill, cptr, (size_t)n_cols * sizeof(int32_t));
    for (r = 0; r < n_rows; r++)
        for (k = indptr[r]; k < indptr[r + 1]; k++) crow[fill[indices[k]]++] = r;
    for (c = 0; c < n_cols; c++) colour[c] = -1;
    for (c = 0; c <= n_cols; c++) stamp[c] = -1;
    for (q = 0; q < n_cols; q++) {
        const int32_t col = order[q];
        int32_t pick = 0;
        /* colours of every column sharing a row with this one are taken */
        for (k = cptr[col]; k < cptr[col + 1]; k++) {
            const int32_t row = crow[k];
            int32_t m;
            work += indptr[row + 1] - indptr[row];
            for (m = indptr[row]; m < indptr[row + 1]; m++) {
                const int32_t other = colour[indices[m]];
                if (other >= 0) stamp[other] = q;
            }
        }
        if (work > max_work) {
            n_colours = JX_EARG;
            break;
        }
        while (stamp[pick] == q) pick++;
        colour[col] = pick;
        if (pick + 1 > n_colours) n_colours = pick + 1;
    }
    free(cptr);
    free(crow);
    free(fill);
    free(stamp);
    return n_colours;
}
