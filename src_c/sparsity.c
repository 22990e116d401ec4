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
#include <math.h>
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

/* Appends x's set to acc (acc = acc | x, through tmp). */
static int jx_set_merge(jx_set *acc, const jx_set *x, jx_set *tmp)
{
    jx_set swap;
    int st;
    if (x->n == 0) return JX_OK;
    st = jx_set_union(tmp, acc, x);
    swap = *acc;
    *acc = *tmp;
    *tmp = swap;
    return st;
}

/*
 * The sets of block k's rows: row j depends on the columns of the operands whose weight
 * W[j, c] is not zero (W's structural nonzeros).  A dense block couples every row to every
 * operand: the union of all its operands' sets is made once and copied to each row whose
 * weights are all nonzero, so a dense m x n block costs n merges and m copies, not m x n.
 * (dst's range never meets the operands', so no row overwrites an operand's set.)
 */
static int jx_block_sets(const jx_tape *t, int32_t k, jx_set *sets, jx_set *tmp)
{
    const int64_t *f = t->blocks + (size_t)JX_BLOCK_FIELDS * k;
    const int32_t i = (int32_t)f[0], m = (int32_t)f[1], n = (int32_t)f[2];
    const double *W = t->weights + f[3];
    const int32_t dst = t->dst[i], src = t->a[i];
    jx_set all = {NULL, 0, 0}, acc = {NULL, 0, 0};
    int have_all = 0, st = JX_OK;
    int32_t j, c;
    for (j = 0; j < m && st == JX_OK; j++) {
        const double *w = W + (size_t)j * (size_t)n;
        int dense = 1;
        for (c = 0; c < n; c++) dense &= (w[c] != 0.0);
        acc.n = 0;
        if (dense && have_all) {
            st = jx_set_reserve(&acc, all.n);
            if (st == JX_OK && all.n) memcpy(acc.v, all.v, (size_t)all.n * sizeof(int32_t));
            acc.n = all.n;
        } else {
            for (c = 0; c < n && st == JX_OK; c++)
                if (w[c] != 0.0) st = jx_set_merge(&acc, &sets[src + c], tmp);
            if (dense && st == JX_OK) {   /* keep the union for the other dense rows */
                st = jx_set_reserve(&all, acc.n);
                if (st == JX_OK && acc.n) memcpy(all.v, acc.v, (size_t)acc.n * sizeof(int32_t));
                all.n = acc.n;
                have_all = 1;
            }
        }
        if (st == JX_OK) {
            jx_set swap = sets[dst + j];
            sets[dst + j] = acc;
            acc = swap;
        }
    }
    free(all.v);
    free(acc.v);
    return st;
}

/*
 * The sets of product block k's rows (Y = A B, vm.h): Y[i, j] depends on row i of A and
 * column j of B, every entry of both (a product of variables has no structural zeros:
 * the tracer keeps the scalar form where an operand holds a constant zero).  The m row
 * unions and p column unions are made once: m + p unions of n sets, then m x p merges.
 */
static int jx_product_sets(const jx_tape *t, int32_t k, jx_set *sets, jx_set *tmp)
{
    const int64_t *f = t->blocks + (size_t)JX_BLOCK_FIELDS * k;
    const int32_t i0 = (int32_t)f[0], m = (int32_t)f[1], n = (int32_t)f[2];
    const int32_t p = (int32_t)-f[3];
    const int32_t dst = t->dst[i0], src = t->a[i0], srcb = src + m * n;
    jx_set *part = (jx_set *)calloc((size_t)(m + p), sizeof(jx_set));
    int32_t i, j, c;
    int st = JX_OK;
    if (!part) return JX_ENOMEM;
    for (i = 0; i < m && st == JX_OK; i++)      /* row i of A */
        for (c = 0; c < n && st == JX_OK; c++)
            st = jx_set_merge(&part[i], &sets[src + i * n + c], tmp);
    for (j = 0; j < p && st == JX_OK; j++)      /* column j of B */
        for (c = 0; c < n && st == JX_OK; c++)
            st = jx_set_merge(&part[m + j], &sets[srcb + c * p + j], tmp);
    for (i = 0; i < m && st == JX_OK; i++)
        for (j = 0; j < p && st == JX_OK; j++) {
            jx_set *d = &sets[dst + i * p + j];
            st = jx_set_union(tmp, &part[i], &part[m + j]);
            if (st == JX_OK) {
                jx_set old = *d;
                *d = *tmp;
                *tmp = old;
            }
        }
    for (i = 0; i < m + p; i++) free(part[i].v);
    free(part);
    return st;
}

int jx_sparsity(const jx_tape *t, const int32_t *col_of_input, int32_t **indptr_out,
                int32_t **indices_out)
{
    const jx_set empty = {NULL, 0, 0};
    jx_set *sets = (jx_set *)calloc((size_t)(t->n_slots > 0 ? t->n_slots : 1), sizeof(jx_set));
    jx_set tmp = {NULL, 0, 0};
    int32_t *indptr = NULL, *indices = NULL;
    int32_t i, j, kb = 0;
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
        if (t->op[i] == JX_BLOCK) {
            st = t->blocks[(size_t)JX_BLOCK_FIELDS * kb + 3] < 0
                     ? jx_product_sets(t, kb, sets, &tmp) : jx_block_sets(t, kb, sets, &tmp);
            kb++;
            continue;
        }
        {
        const int reads = jx_reads(t->op[i]);
        const int fixed = t->fixed && t->fixed[i];
        const int use_a = (reads & JX_READS_A) && !(fixed && t->fixed_d0[i] == 0.0);
        const int use_b = (reads & JX_READS_B) && !(fixed && t->fixed_d1[i] == 0.0);
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

/* ---- dependency cones and per-output reverse sweeps ---- */

static int jx_cmp_desc(const void *x, const void *y)
{
    const int32_t a = *(const int32_t *)x, b = *(const int32_t *)y;
    return (a < b) - (a > b);
}

/* The work of instruction i in a sweep: 1, or block k's multiply-adds. */
static int64_t jx_instr_work(const jx_tape *t, int32_t k)
{
    const int64_t *f = t->blocks + (size_t)JX_BLOCK_FIELDS * k;
    return f[3] < 0 ? f[1] * f[2] * -f[3] : f[1] * f[2];
}

/* The block whose instruction is i (the table is in tape order), or -1. */
static int32_t jx_block_of(const jx_tape *t, int32_t i)
{
    int32_t lo = 0, hi = t->n_blocks;
    while (lo < hi) {
        const int32_t mid = lo + (hi - lo) / 2;
        const int32_t at = jx_block_instr(t, mid);
        if (at == i) return mid;
        if (at < i) lo = mid + 1;
        else hi = mid;
    }
    return -1;
}

int jx_cones(const jx_tape *t, int64_t max_total, int64_t **cone_ptr_out, int32_t **cone_out,
             int64_t *work_out)
{
    /* dep[dep_ptr[i] ..]: the instructions whose values instruction i reads (a block:
       the writers of all its operand slots, each once), found by tracking each slot's
       last writer through the tape; inputs and constants have none */
    const size_t n_i = (size_t)(t->n_instr > 0 ? t->n_instr : 1);
    int64_t n_dep = 3 * (int64_t)t->n_instr;
    int32_t *last = (int32_t *)malloc((size_t)(t->n_slots > 0 ? t->n_slots : 1) * sizeof(int32_t));
    int64_t *dep_ptr = (int64_t *)malloc((n_i + 1) * sizeof(int64_t));
    int32_t *dep = NULL;
    int32_t *stamp = (int32_t *)malloc(n_i * sizeof(int32_t));
    int32_t *stack = (int32_t *)malloc(n_i * sizeof(int32_t));
    int64_t *ptr = (int64_t *)malloc(((size_t)t->n_out + 1) * sizeof(int64_t));
    int32_t *cone = NULL;
    int64_t total = 0, cap = 0, work = 0, q;
    int32_t i, o, kb;
    int st = JX_OK;
    for (kb = 0; kb < t->n_blocks; kb++) n_dep += jx_block_operands(t, kb);
    dep = (int32_t *)malloc((size_t)(n_dep > 0 ? n_dep : 1) * sizeof(int32_t));
    if (!last || !dep_ptr || !dep || !stamp || !stack || !ptr) {
        st = JX_ENOMEM;
        goto done;
    }
    for (i = 0; i < t->n_slots; i++) last[i] = -1;
    for (i = 0; i < t->n_instr; i++) stamp[i] = -1;
    dep_ptr[0] = 0;
    kb = 0;
    for (i = 0; i < t->n_instr; i++) {
        int64_t n = dep_ptr[i];
        if (t->op[i] == JX_BLOCK) {
            const int64_t reads = jx_block_operands(t, kb), rows = jx_block_rows(t, kb);
            kb++;
            for (q = 0; q < reads; q++) {
                const int32_t d = last[t->a[i] + q];
                if (d >= 0 && stamp[d] != i) {   /* each writer once */
                    stamp[d] = i;
                    dep[n++] = d;
                }
            }
            for (q = 0; q < rows; q++) last[t->dst[i] + q] = i;
        } else {
            const int reads = jx_reads(t->op[i]);
            if ((reads & JX_READS_A) && last[t->a[i]] >= 0) dep[n++] = last[t->a[i]];
            if ((reads & JX_READS_B) && last[t->b[i]] >= 0) dep[n++] = last[t->b[i]];
            if ((reads & JX_READS_S) && last[t->s[i]] >= 0) dep[n++] = last[t->s[i]];
            last[t->dst[i]] = i;
        }
        dep_ptr[i + 1] = n;
    }
    for (i = 0; i < t->n_instr; i++) stamp[i] = -1;
    ptr[0] = 0;
    for (o = 0; o < t->n_out; o++) {
        int32_t top = 0, start = -1;
        const int32_t slot = t->out_slot[o];
        if (slot >= t->n_in + t->n_const) start = last[slot];
        if (start >= 0) {
            stack[top++] = start;
            stamp[start] = o;
        }
        while (top > 0) {
            const int32_t j = stack[--top];
            /* the budget counts work: a block its multiply-adds */
            work += t->op[j] == JX_BLOCK ? jx_instr_work(t, jx_block_of(t, j)) : 1;
            if (work > max_total) {
                st = JX_EARG;   /* the cones are too large to pay */
                goto done;
            }
            if (total == cap) {
                int64_t ncap = cap ? 2 * cap : 1024;
                int32_t *p;
                if (ncap > max_total) ncap = max_total;
                if (ncap <= total) ncap = total + 1;
                p = (int32_t *)realloc(cone, (size_t)ncap * sizeof(int32_t));
                if (!p) {
                    st = JX_ENOMEM;
                    goto done;
                }
                cone = p;
                cap = ncap;
            }
            cone[total++] = j;
            for (q = dep_ptr[j]; q < dep_ptr[j + 1]; q++) {
                const int32_t d = dep[q];
                if (stamp[d] != o) {
                    stamp[d] = o;
                    stack[top++] = d;
                }
            }
        }
        /* reverse order of the tape within each cone (an empty one: nothing to sort,
           and cone may still be NULL, which qsort must not be given) */
        if (total > ptr[o])
            qsort(cone + ptr[o], (size_t)(total - ptr[o]), sizeof(int32_t), jx_cmp_desc);
        ptr[o + 1] = total;
    }
done:
    free(last);
    free(dep_ptr);
    free(dep);
    free(stamp);
    free(stack);
    if (st != JX_OK) {
        free(ptr);
        free(cone);
        return st;
    }
    if (!cone) cone = (int32_t *)malloc(sizeof(int32_t));
    if (!cone) {
        free(ptr);
        return JX_ENOMEM;
    }
    *cone_ptr_out = ptr;
    *cone_out = cone;
    *work_out = work;
    return JX_OK;
}

int jx_point_subgraph(const jx_tape *t, jx_work *w, const double *x, double *y,
                      const int64_t *cone_ptr, const int32_t *cone, const int32_t *row_ptr,
                      const int32_t *nz_input, double *vals)
{
    double *A = w->lane;   /* one lane */
    int32_t o, k;
    int64_t c;
    const jx_tape *at = jx_tape_at(t, w, x);
    if (at != t) {
        /* the cones are t's instructions: outside t's bound the values come from the tape
           that runs there (jx_point_value dispatches as this does) and the nonzeros are
           nan, which the caller redoes by forward sweeps (jacext/nonfinite.py) */
        if (y) jx_point_value(t, w, x, y);
        for (k = 0; k < row_ptr[t->n_out]; k++) vals[k] = NAN;
        return JX_OK;
    }
    if (t->n_in > 0) memcpy(w->value, x, (size_t)t->n_in * sizeof(double));
    jx_forward_partials(t, w->value, w->d0, w->d1);
    if (y)
        for (o = 0; o < t->n_out; o++) y[o] = w->value[t->out_slot[o]];
    memset(A, 0, (size_t)t->n_slots * sizeof(double));
    for (o = 0; o < t->n_out; o++) {
        A[t->out_slot[o]] = 1.0;
        /* only the cone: every other instruction's adjoint is zero for this
           output, and the cone's own temporaries are cleared as they go */
        for (c = cone_ptr[o]; c < cone_ptr[o + 1]; c++) {
            const int32_t j = cone[c];
            if (t->op[j] == JX_BLOCK) {   /* a block: all its rows at once (block.c) */
                jx_block_op_adjoint(t, jx_block_of(t, j), w->value, 1, A, 1);
            } else {
                const double g = A[t->dst[j]];
                A[t->dst[j]] = 0.0;
                A[t->a[j]] += jx_zmul(w->d0[j], g);
                A[t->b[j]] += jx_zmul(w->d1[j], g);
            }
        }
        for (k = row_ptr[o]; k < row_ptr[o + 1]; k++) vals[k] = A[nz_input[k]];
        /* inputs and constants keep what they gathered: clear every slot the
           cone read, and the seed */
        A[t->out_slot[o]] = 0.0;
        for (c = cone_ptr[o]; c < cone_ptr[o + 1]; c++) {
            const int32_t j = cone[c];
            if (t->op[j] == JX_BLOCK) {
                const int32_t kb = jx_block_of(t, j);
                memset(A + t->a[j], 0, (size_t)jx_block_operands(t, kb) * sizeof(double));
            } else {
                A[t->a[j]] = 0.0;
                A[t->b[j]] = 0.0;
            }
        }
    }
    return JX_OK;
}
