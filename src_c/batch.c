/*
 * batch.c -- many points in one call: points are the lanes of the sweeps.
 *
 * A block of B points runs through the tape together: each instruction's
 * value and local partials are computed for all points of the block in one
 * inner loop (lane-major work arrays: slot s of point l lives at
 * value[s * B + l]), and the tangent or adjoint sweeps loop over the block's
 * points innermost.  The op switch is paid once per instruction and block
 * instead of once per instruction and point, and the inner loops are plain
 * array arithmetic the compiler vectorises.  (The compiler passes give every
 * instruction a destination slot distinct from its operands, so these loops
 * see no aliasing.)  B is chosen per tape so that a block's work arrays stay
 * in L2 (jx_block_size, with the measurements behind it).
 *
 * Two kinds of block.  The sweeps' (jx_block_forward with its partials, then
 * jx_block_tangent or jx_block_adjoint) for the first batches of a Function;
 * and once a Jacobian tape exists (jacext/jactape.py: the Jacobian's
 * entries as a tape of their own), one value sweep over it (jx_block_values,
 * block_values.h) per block of JX_VB points.  Plain values (F(X)) take the
 * value sweep too.
 *
 * A last, partial block is padded with copies of its last point; only real
 * points are written out.  Threads take whole blocks, so the results do not
 * depend on the thread count (bit for bit).  Threads are plain POSIX or
 * Windows threads (no OpenMP: wheels must build everywhere).
 */
#include <stdlib.h>
#include <string.h>

#include "vm.h"

#if JX_X86_DISPATCH
#include <immintrin.h>   /* the AVX2 copy of jx_copy_entries */
#endif

/* glibc's sincos (a GNU extension; declared here, as this file asks for no
   _GNU_SOURCE): one call for sin(x) and cos(x), the same values as each. */
#if defined(__GLIBC__) && !defined(JACEXT_NO_SINCOS)
#define JX_HAVE_SINCOS 1
extern void sincos(double x, double *sin_x, double *cos_x);
#else
#define JX_HAVE_SINCOS 0
#endif

#include "threads.h"

/* points per block: a multiple of 8 between these, chosen per tape (jx_block_size) */
#define JX_BLOCK_MIN 8
#define JX_BLOCK_MAX 256
/* what a block's work arrays may take: inside a 1 MiB L2 with room to spare */
#define JX_BLOCK_BUDGET (640 * 1024)
#define B blk

typedef struct {
    int32_t block;   /* points per block */
    int32_t dirs;    /* tangent directions or adjoint rows per sweep */
    double *value;   /* n_slots * B */
    double *d0;      /* n_instr * B */
    double *d1;      /* n_instr * B */
    double *lane;    /* n_slots * dirs * B */
    double *imm;     /* B: an immediate spread over the lanes */
    double *stash;   /* n_sincos * B: the second values of sincos pairs (values only) */
} jx_block_work;

static void jx_block_free(jx_block_work *w)
{
    jx_lines_free(w->value);
    jx_lines_free(w->d0);
    jx_lines_free(w->d1);
    jx_lines_free(w->lane);
    jx_lines_free(w->imm);
    jx_lines_free(w->stash);
    memset(w, 0, sizeof(*w));
}

/* dirs 0: values only (no partials, no lanes) */
static int jx_block_init(jx_block_work *w, const jx_tape *t, int32_t dirs, int32_t blk)
{
    const int values_only = dirs == 0;
    const int32_t slots = values_only && t->bcode ? t->n_bcode_slots : t->n_slots;
    size_t n_slots = (size_t)(slots > 0 ? slots : 1);
    size_t n_instr = (size_t)(t->n_instr > 0 ? t->n_instr : 1);
    int32_t k, l;
    memset(w, 0, sizeof(*w));
    w->block = blk;
    w->dirs = dirs < 1 ? 1 : dirs;
    w->value = n_slots <= SIZE_MAX / (size_t)B ? jx_lines(n_slots * B, 1) : NULL;
    w->imm = jx_lines((size_t)B, 0);
    if (values_only && t->n_sincos > 0)
        w->stash = jx_lines((size_t)t->n_sincos * B, 0);
    if (!values_only) {
        const size_t lanes = n_slots * (size_t)w->dirs;
        w->d0 = n_instr <= SIZE_MAX / (size_t)B ? jx_lines(n_instr * B, 0) : NULL;
        w->d1 = n_instr <= SIZE_MAX / (size_t)B ? jx_lines(n_instr * B, 0) : NULL;
        w->lane = lanes / (size_t)w->dirs == n_slots && lanes <= SIZE_MAX / (size_t)B
                  ? jx_lines(lanes * B, 1) : NULL;
    }
    if (!w->value || !w->imm || (!values_only && (!w->d0 || !w->d1 || !w->lane))
        || (values_only && t->n_sincos > 0 && !w->stash)) {
        jx_block_free(w);
        return JX_ENOMEM;
    }
    for (k = 0; k < t->n_const; k++)
        for (l = 0; l < B; l++) w->value[(size_t)(t->n_in + k) * B + l] = t->const_value[k];
    return JX_OK;
}

/* ---- the forward sweep over a block: values, and partials when asked ---- */

#define JX_LANE_LOOP(VALUE, E0, E1)                                  \
    for (l = 0; l < B; l++) {                                        \
        const double a = pa[l], b = pb[l], s = ps[l];                \
        const double z = (VALUE);                                    \
        (void)a; (void)b; (void)s;                                   \
        pz[l] = z;                                                   \
        q0[l] = (E0);                                                \
        q1[l] = (E1);                                                \
    }

#define JX_LANE_VALUE_LOOP(VALUE)                                    \
    for (l = 0; l < B; l++) {                                        \
        const double a = pa[l], b = pb[l], s = ps[l];                \
        (void)a; (void)b; (void)s;                                   \
        pz[l] = (VALUE);                                             \
    }

/*
 * Values only, over a block of exactly JX_VB points: the sweep of Jacobian
 * tapes (and of plain values).  The block size is a compile-time constant and
 * the pointers are restrict (dst is never an operand's slot, jx_tape_check),
 * so each case compiles to a fixed-length vector loop with no alias checks,
 * no remainder and no spreading of immediates: what is left per instruction
 * is the dispatch, which JX_VB points share.
 */
/* ---- the value sweep over a block of JX_VB points (block_values.h) ---- */

/* points per block of the value sweep: 64 points of a slot are 512 bytes, and
   with AVX2 a slot's loop is 16 vector operations (bench/batch.py: 64 ran as
   fast as 248 and faster than 32 or 128 on the arm and BA Jacobian tapes) */
#define JX_VB 64

#define JX_VLOOP(AEXPR, BEXPR, VALUE)                                \
    for (l = 0; l < JX_VB; l++) {                                    \
        const double a = (AEXPR), b = (BEXPR), s = ps[l];            \
        (void)a; (void)b; (void)s;                                   \
        pz[l] = (VALUE);                                             \
    }

#define JX_VALUES_FN jx_block_values_base
#define JX_BCODE_FN jx_block_code_values_base
#define JX_VALUES_ATTR
#include "block_values.h"
#undef JX_VALUES_FN
#undef JX_BCODE_FN
#undef JX_VALUES_ATTR

#if JX_X86_DISPATCH
#define JX_VALUES_FN jx_block_values_avx2
#define JX_BCODE_FN jx_block_code_values_avx2
#define JX_VALUES_ATTR JX_TARGET_AVX2
#include "block_values.h"
#undef JX_VALUES_FN
#undef JX_BCODE_FN
#undef JX_VALUES_ATTR
#endif

/* the block's values, from the tape's stream where it has one (block_code.c); pf: where
   the block's results will be copied (pf_bytes of them), for the sweep to prefetch */
static void jx_block_values(const jx_tape *t, double *V, double *stash, const void *pf,
                            size_t pf_bytes)
{
    const char *pf0 = (const char *)pf, *pf1 = pf0 + pf_bytes;
#if JX_X86_DISPATCH
    if (jx_have_avx2()) {
        if (t->bcode) jx_block_code_values_avx2(t, V, stash, pf0, pf1);
        else jx_block_values_avx2(t, V, stash);
        return;
    }
#endif
    if (t->bcode) jx_block_code_values_base(t, V, stash, pf0, pf1);
    else jx_block_values_base(t, V, stash);
}

/* where the value sweep leaves the outputs' values */
static const int32_t *jx_block_out_slots(const jx_tape *t)
{
    return t->bcode ? t->bcode_out : t->out_slot;
}

/* Values and partials of a block, for the sweeps; returns 1 when every partial
   of the block is finite (see jx_block_tangent). */
static int jx_block_forward(const jx_tape *t, jx_block_work *w)
{
    const int32_t blk = w->block;
    int32_t i, l;
    double *V = w->value;
    int32_t kb = 0;
    for (i = 0; i < t->n_instr; i++) {
        const int32_t word = t->op[i];
        const double *pa, *pb, *ps;
        double *pz = V + (size_t)t->dst[i] * B;
        double *q0 = w->d0 + (size_t)i * B, *q1 = w->d1 + (size_t)i * B;
        if (word == JX_BLOCK) {   /* its partials are W: none per point */
            jx_block_op_value(t, kb++, V, B);
            for (l = 0; l < B; l++) q0[l] = q1[l] = 0.0;
            continue;
        }
        if (word & (JX_A_IMM | JX_B_IMM))
            for (l = 0; l < B; l++) w->imm[l] = t->imm[i];
        pa = (word & JX_A_IMM) ? w->imm : V + (size_t)t->a[i] * B;
        pb = (word & JX_B_IMM) ? w->imm : V + (size_t)t->b[i] * B;
        ps = ((word & JX_OP_MASK) == JX_OP_SELECT) ? V + (size_t)t->s[i] * B : pa;
        /* an instruction with fixed partials stores none per point */
        const int values_only = t->fixed && t->fixed[i];
        switch (word & JX_OP_MASK) {
#define OP(NAME, ARITY, COMMUTES, VALUE, D0, D1, FIXED)                  \
        case JX_OP_##NAME:                                               \
            if (values_only) {                                           \
                JX_LANE_VALUE_LOOP(VALUE)                                \
            } else if (word & JX_A_IMM) {                                \
                JX_LANE_LOOP(VALUE, 0.0, D1)                             \
            } else if (word & JX_B_IMM) {                                \
                JX_LANE_LOOP(VALUE, D0, 0.0)                             \
            } else {                                                     \
                JX_LANE_LOOP(VALUE, D0, D1)                              \
            }                                                            \
            break;
#include "ops.def"
#undef OP
        default:
            break;
        }
    }
    {
        /* whether every partial of the block is finite (kernels.h) */
        double acc[JX_BLOCK_MAX];
        for (l = 0; l < B; l++) acc[l] = 0.0;
        for (i = 0; i < t->n_instr; i++) {
            if (t->fixed && t->fixed[i]) continue;   /* finite by construction */
            jx_nonfinite_acc2(acc, w->d0 + (size_t)i * B, w->d1 + (size_t)i * B, B);
        }
        return jx_acc_finite(acc, B);
    }
}

/*
 * Tangents over `dirs` directions: T[(slot * dirs + d) * B + l].
 *
 * Zero kills (kernels.h): a term with a zero partial or a zero tangent is
 * exactly zero.  When every partial of the block is finite, tangents stay
 * finite and the plain product already gives that (up to the sign of a zero),
 * so jx_zmul with its per-lane selects runs only for blocks that met an
 * infinite or nan partial.
 */
static void jx_block_tangent(const jx_tape *t, jx_block_work *w, int32_t dirs, int finite)
{
    const int32_t blk = w->block;
    int32_t i, d, l, kb = 0;
    for (i = 0; i < t->n_instr; i++) {
        const int reads = jx_reads(t->op[i]);
        if (kb < t->n_blocks && jx_block_instr(t, kb) == i) {
            jx_block_op_tangent(t, kb++, w->value, B, w->lane, (ptrdiff_t)dirs * B);
            continue;
        }
        const int use_a = reads & JX_READS_A, use_b = reads & JX_READS_B;
        const double *q0 = w->d0 + (size_t)i * B, *q1 = w->d1 + (size_t)i * B;
        if (t->fixed && t->fixed[i]) {
            /* constant, finite partials: a zero one drops its term exactly */
            /* the same two numbers for every direction and point: one loop
               over the slot's dirs * B contiguous tangents */
            const double c0 = use_a ? t->fixed_d0[i] : 0.0, c1 = use_b ? t->fixed_d1[i] : 0.0;
            const int32_t n = dirs * B;
            double *td = w->lane + (size_t)t->dst[i] * n;
            const double *ta = w->lane + (size_t)t->a[i] * n;
            const double *tb = w->lane + (size_t)t->b[i] * n;
            if (c0 != 0.0 && c1 != 0.0)
                for (l = 0; l < n; l++) td[l] = c0 * ta[l] + c1 * tb[l];
            else if (c0 != 0.0)
                for (l = 0; l < n; l++) td[l] = c0 * ta[l];
            else if (c1 != 0.0)
                for (l = 0; l < n; l++) td[l] = c1 * tb[l];
            else
                for (l = 0; l < n; l++) td[l] = 0.0;
            continue;
        }
        for (d = 0; d < dirs; d++) {
            double *td = w->lane + ((size_t)t->dst[i] * dirs + d) * B;
            const double *ta = w->lane + ((size_t)t->a[i] * dirs + d) * B;
            const double *tb = w->lane + ((size_t)t->b[i] * dirs + d) * B;
            if (finite) {
                if (use_a && use_b)
                    for (l = 0; l < B; l++) td[l] = q0[l] * ta[l] + q1[l] * tb[l];
                else if (use_a)
                    for (l = 0; l < B; l++) td[l] = q0[l] * ta[l];
                else
                    for (l = 0; l < B; l++) td[l] = q1[l] * tb[l];
            } else {
                if (use_a && use_b)
                    for (l = 0; l < B; l++) td[l] = jx_zmul(q0[l], ta[l]) + jx_zmul(q1[l], tb[l]);
                else if (use_a)
                    for (l = 0; l < B; l++) td[l] = jx_zmul(q0[l], ta[l]);
                else
                    for (l = 0; l < B; l++) td[l] = jx_zmul(q1[l], tb[l]);
            }
        }
    }
}

/* Adjoints over `rows` output rows: A[(slot * rows + r) * B + l], backwards. */
static void jx_block_adjoint(const jx_tape *t, jx_block_work *w, int32_t rows, int finite)
{
    const int32_t blk = w->block;
    int32_t i, r, l, kb = t->n_blocks - 1;
    for (i = t->n_instr - 1; i >= 0; i--) {
        const int reads = jx_reads(t->op[i]);
        if (kb >= 0 && jx_block_instr(t, kb) == i) {
            jx_block_op_adjoint(t, kb--, w->value, B, w->lane, (ptrdiff_t)rows * B);
            continue;
        }
        const int use_a = reads & JX_READS_A, use_b = reads & JX_READS_B;
        const double *q0 = w->d0 + (size_t)i * B, *q1 = w->d1 + (size_t)i * B;
        if (t->fixed && t->fixed[i]) {
            const double c0 = use_a ? t->fixed_d0[i] : 0.0, c1 = use_b ? t->fixed_d1[i] : 0.0;
            const int32_t n = rows * B;
            double *ad = w->lane + (size_t)t->dst[i] * n;
            double *aa = w->lane + (size_t)t->a[i] * n;
            double *ab = w->lane + (size_t)t->b[i] * n;
            if (c0 != 0.0)
                for (l = 0; l < n; l++) aa[l] += c0 * ad[l];
            if (c1 != 0.0)
                for (l = 0; l < n; l++) ab[l] += c1 * ad[l];
            for (l = 0; l < n; l++) ad[l] = 0.0;
            continue;
        }
        for (r = 0; r < rows; r++) {
            double *ad = w->lane + ((size_t)t->dst[i] * rows + r) * B;
            double *aa = w->lane + ((size_t)t->a[i] * rows + r) * B;
            double *ab = w->lane + ((size_t)t->b[i] * rows + r) * B;
            /* a == b is possible (atan2(x, x)): the a term, then the b term,
               per lane, as the point sweep adds them; dst is never a or b (see
               the file comment). */
            if (finite) {
                if (use_a && use_b) {
                    for (l = 0; l < B; l++) {
                        aa[l] += q0[l] * ad[l];
                        ab[l] += q1[l] * ad[l];
                    }
                } else if (use_a) {
                    for (l = 0; l < B; l++) aa[l] += q0[l] * ad[l];
                } else {
                    for (l = 0; l < B; l++) ab[l] += q1[l] * ad[l];
                }
            } else {
                if (use_a)
                    for (l = 0; l < B; l++) aa[l] += jx_zmul(q0[l], ad[l]);
                if (use_b)
                    for (l = 0; l < B; l++) ab[l] += jx_zmul(q1[l], ad[l]);
            }
            for (l = 0; l < B; l++) ad[l] = 0.0;
        }
    }
}

/* ---- one block of a batch ---- */

/* tangent directions or adjoint rows a sweep of this job carries (defined below) */
static int32_t jx_dirs_for(const jx_tape *t, const jx_batch *job);

/* The inputs slot0 .. slot0+width-1 of points p0 .. p0+n-1 into the lanes, from rows of
   `stride` doubles (x: point p0's); pads with the last point.  With AVX2, four points'
   runs of four inputs at a time, transposed in registers (as the copy of the entries out,
   jx_copy_entries_avx2): one store per four lanes. */
#if JX_X86_DISPATCH
/* Four runs of four doubles r0..r3 transposed in registers and stored as four runs at out,
   out + stride, ... (run k holds element k of each r): one store per four doubles; the
   entries' copy out (jx_copy_entries_avx2) and the inputs' load in both go this way. */
JX_TARGET_AVX2 static inline void jx_transpose4_store(__m256d r0, __m256d r1, __m256d r2,
                                                      __m256d r3, double *out, size_t stride)
{
    const __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1);
    const __m256d t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
    _mm256_storeu_pd(out, _mm256_permute2f128_pd(t0, t2, 0x20));
    _mm256_storeu_pd(out + stride, _mm256_permute2f128_pd(t1, t3, 0x20));
    _mm256_storeu_pd(out + 2 * stride, _mm256_permute2f128_pd(t0, t2, 0x31));
    _mm256_storeu_pd(out + 3 * stride, _mm256_permute2f128_pd(t1, t3, 0x31));
}

JX_TARGET_AVX2 static int32_t jx_block_load_avx2(jx_block_work *w, const double *x,
                                                 int32_t stride, int32_t width, int32_t slot0,
                                                 int32_t n)
{
    const int32_t blk = w->block;
    int32_t l0 = 0, j;
    for (; l0 + 4 <= n; l0 += 4) {
        const double *row = x + (size_t)l0 * (size_t)stride;
        for (j = 0; j + 4 <= width; j += 4) {
            jx_transpose4_store(_mm256_loadu_pd(row + j),
                                _mm256_loadu_pd(row + (size_t)stride + j),
                                _mm256_loadu_pd(row + 2 * (size_t)stride + j),
                                _mm256_loadu_pd(row + 3 * (size_t)stride + j),
                                w->value + (size_t)(slot0 + j) * B + l0, (size_t)B);
        }
        for (; j < width; j++) {
            double *v = w->value + (size_t)(slot0 + j) * B + l0;
            v[0] = row[j];
            v[1] = row[(size_t)stride + j];
            v[2] = row[2 * (size_t)stride + j];
            v[3] = row[3 * (size_t)stride + j];
        }
    }
    return l0;   /* the lanes done */
}
#endif

static void jx_block_load_rows(jx_block_work *w, const double *x, int32_t stride,
                               int32_t width, int32_t slot0, int32_t n)
{
    const int32_t blk = w->block;
    int32_t j, l = 0;
#if JX_X86_DISPATCH
    if (jx_have_avx2()) l = jx_block_load_avx2(w, x, stride, width, slot0, n);
#endif
    for (; l < B; l++) {
        const double *row = x + (size_t)(l < n ? l : n - 1) * (size_t)stride;
        for (j = 0; j < width; j++) w->value[(size_t)(slot0 + j) * B + l] = row[j];
    }
}

/* Inputs of points p0 .. p0+n-1 of the job into the lanes (x's rows, or each part's) */
static void jx_block_load(const jx_tape *t, jx_block_work *w, const jx_batch *job,
                          ptrdiff_t p0, int32_t n)
{
    int32_t k, slot0 = 0;
    if (job->x) {
        jx_block_load_rows(w, job->x + (size_t)p0 * (size_t)t->n_in, t->n_in, t->n_in, 0, n);
        return;
    }
    for (k = 0; k < job->n_parts; slot0 += job->part_width[k], k++)
        jx_block_load_rows(w, job->part[k] + (size_t)p0 * (size_t)job->part_step[k],
                           job->part_step[k], job->part_width[k], slot0, n);
}

/* Row p of n_parts arrays side by side into row: part k's width[k] doubles at p * step[k] */
static void jx_gather_row(int32_t n_parts, const double *const *part, const int32_t *width,
                          const int32_t *step, ptrdiff_t p, double *JX_RESTRICT row)
{
    int32_t k, j;
    for (k = 0; k < n_parts; k++) {
        const double *JX_RESTRICT src = part[k] + p * (ptrdiff_t)step[k];
        for (j = 0; j < width[k]; j++) *row++ = src[j];
    }
}

/* Point p's inputs: x's row, or its parts' rows gathered into row (n_in doubles) */
static const double *jx_point_row(const jx_tape *t, const jx_batch *job, ptrdiff_t p,
                                  double *row)
{
    if (job->x) return job->x + (size_t)p * (size_t)t->n_in;
    jx_gather_row(job->n_parts, job->part, job->part_width, job->part_step, p, row);
    return row;
}

/* The values of slots slot[0 .. count) of the first n points into y, point-major. */
static void jx_block_store(const int32_t *slot, int32_t count, const jx_block_work *w,
                           double *y, int32_t n)
{
    const int32_t blk = w->block;
    int32_t i, l;
    if (!y) return;
    for (l = 0; l < n; l++)
        for (i = 0; i < count; i++)
            y[(size_t)l * count + i] = w->value[(size_t)slot[i] * B + l];
}

static void jx_block_store_outputs(const jx_tape *t, const jx_block_work *w, double *y, int32_t n)
{
    jx_block_store(t->out_slot, t->n_out, w, y, n);
}

static void jx_block_jacobian(const jx_tape *t, jx_block_work *w, const jx_batch *job,
                              ptrdiff_t p0, int32_t n)
{
    const int32_t blk = w->block;
    const int32_t n_cols = job->n_cols, n_out = t->n_out;
    const size_t fixed = (size_t)(t->n_in + t->n_const);
    double *jac = job->out + (size_t)p0 * (size_t)n_out * (size_t)n_cols;
    int finite;
    int32_t k0, k, l, i, c;
    jx_block_load(t, w, job, p0, n);
    finite = jx_block_forward(t, w);
    jx_block_store_outputs(t, w, job->y ? job->y + (size_t)p0 * n_out : NULL, n);
    if (n_cols == 0 || n_out == 0) return;
    if (job->mode == JX_MODE_FORWARD) {
        const int32_t K = n_cols < w->dirs ? n_cols : w->dirs;
        for (k0 = 0; k0 < n_cols; k0 += K) {
            const int32_t kk = (n_cols - k0 < K) ? n_cols - k0 : K;
            memset(w->lane, 0, fixed * (size_t)K * B * sizeof(double));
            for (k = 0; k < kk; k++) {
                double *seed = w->lane + ((size_t)job->cols[k0 + k] * K + k) * B;
                for (l = 0; l < B; l++) seed[l] = 1.0;
            }
            jx_block_tangent(t, w, K, finite);
            for (i = 0; i < n_out; i++)
                for (k = 0; k < kk; k++) {
                    const double *src = w->lane + ((size_t)t->out_slot[i] * K + k) * B;
                    double *dst = jac + (size_t)i * n_cols + k0 + k;
                    for (l = 0; l < n; l++) dst[(size_t)l * n_out * n_cols] = src[l];
                }
        }
    } else {
        const int32_t K = n_out < w->dirs ? n_out : w->dirs;
        /* the sweep clears every temporary's adjoint where its value is
           born; inputs and constants are cleared here */
        memset(w->lane, 0, (size_t)t->n_slots * (size_t)K * B * sizeof(double));
        for (k0 = 0; k0 < n_out; k0 += K) {
            const int32_t kk = (n_out - k0 < K) ? n_out - k0 : K;
            if (k0 > 0) memset(w->lane, 0, fixed * (size_t)K * B * sizeof(double));
            for (k = 0; k < kk; k++) {
                double *seed = w->lane + ((size_t)t->out_slot[k0 + k] * K + k) * B;
                for (l = 0; l < B; l++) seed[l] += 1.0;
            }
            jx_block_adjoint(t, w, K, finite);
            for (k = 0; k < kk; k++)
                for (c = 0; c < n_cols; c++) {
                    const double *src = w->lane + ((size_t)job->cols[c] * K + k) * B;
                    double *dst = jac + (size_t)(k0 + k) * n_cols + c;
                    for (l = 0; l < n; l++) dst[(size_t)l * n_out * n_cols] = src[l];
                }
            /* an output that is an input or constant slot keeps its seed
               there: the prefix memset above clears it */
        }
    }
}

/*
 * A block's Jacobian entries out to the caller's point-major array (entry e of point l at
 * jac[l * n_jac + e], from slot[e]'s lanes), JX_COPY_TILE points at a time, checking on
 * the way that they are finite (kernels.h); returns whether all were.  A tile's rows of
 * jac (JX_COPY_TILE x n_jac doubles) stay in L1 while every entry is copied into them,
 * where the whole block's rows (64 x 84 for arm: 43 KB) do not; the finiteness sums run in
 * JX_COPY_TILE independent accumulators.  arm's batch of 10^4: the copy was 19% of the
 * call (perf) going an entry at a time across the block; this way it runs 13% fewer
 * instructions (cachegrind), with as many write misses, which are the output's own first
 * touch (6.7 MB a call).  On x86-64 with AVX2 (jx_copy_block_entries picks) a 4 x 4
 * transpose in registers does it with one store per four doubles (bench/RESULTS.md,
 * "2026-12-07, morning").
 */
#define JX_COPY_TILE 8
static int jx_copy_entries(double *JX_RESTRICT jac, int32_t n_jac, const double *V,
                           const int32_t *slot, int32_t blk, int32_t n)
{
    double acc[JX_COPY_TILE] = {0.0};
    int32_t l0, e, k, m;
    for (l0 = 0; l0 < n; l0 += JX_COPY_TILE) {
        double *JX_RESTRICT row = jac + (size_t)l0 * (size_t)n_jac;
        m = n - l0 < JX_COPY_TILE ? n - l0 : JX_COPY_TILE;
        for (e = 0; e < n_jac; e++) {
            const double *JX_RESTRICT src = V + (size_t)slot[e] * B + l0;
            for (k = 0; k < m; k++) {
                const double v = src[k];
                row[(size_t)k * (size_t)n_jac + (size_t)e] = v;
                acc[k] += v - v;
            }
        }
    }
    return jx_acc_finite(acc, JX_COPY_TILE);
}

#if JX_X86_DISPATCH
/* The same copy with AVX2, four points and four entries at a time: four lanes of four
   entries loaded, transposed in registers, stored as four rows' runs of four entries (one
   store per four doubles instead of one per double).  Same doubles, same finiteness. */
JX_TARGET_AVX2 static int jx_copy_entries_avx2(double *JX_RESTRICT jac, int32_t n_jac,
                                               const double *V, const int32_t *slot,
                                               int32_t blk, int32_t n)
{
    __m256d acc = _mm256_setzero_pd();
    double rest[4] = {0.0, 0.0, 0.0, 0.0};
    int32_t l0 = 0, e, k;
    for (; l0 + 4 <= n; l0 += 4) {
        double *JX_RESTRICT row = jac + (size_t)l0 * (size_t)n_jac;
        for (e = 0; e + 4 <= n_jac; e += 4) {
            const __m256d r0 = _mm256_loadu_pd(V + (size_t)slot[e] * B + l0);
            const __m256d r1 = _mm256_loadu_pd(V + (size_t)slot[e + 1] * B + l0);
            const __m256d r2 = _mm256_loadu_pd(V + (size_t)slot[e + 2] * B + l0);
            const __m256d r3 = _mm256_loadu_pd(V + (size_t)slot[e + 3] * B + l0);
            const __m256d z01 = _mm256_add_pd(_mm256_sub_pd(r0, r0), _mm256_sub_pd(r1, r1));
            const __m256d z23 = _mm256_add_pd(_mm256_sub_pd(r2, r2), _mm256_sub_pd(r3, r3));
            acc = _mm256_add_pd(acc, _mm256_add_pd(z01, z23));
            jx_transpose4_store(r0, r1, r2, r3, row + e, (size_t)n_jac);
        }
        for (; e < n_jac; e++)
            for (k = 0; k < 4; k++) {
                const double v = V[(size_t)slot[e] * B + l0 + k];
                row[(size_t)k * (size_t)n_jac + e] = v;
                rest[k] += v - v;
            }
    }
    for (; l0 < n; l0++)
        for (e = 0; e < n_jac; e++) {
            const double v = V[(size_t)slot[e] * B + l0];
            jac[(size_t)l0 * (size_t)n_jac + e] = v;
            rest[0] += v - v;
        }
    acc = _mm256_add_pd(acc, _mm256_loadu_pd(rest));
    _mm256_storeu_pd(rest, acc);
    return jx_acc_finite(rest, 4);
}
#endif

static int jx_copy_block_entries(double *jac, int32_t n_jac, const double *V,
                                 const int32_t *slot, int32_t blk, int32_t n)
{
#if JX_X86_DISPATCH
    if (jx_have_avx2()) return jx_copy_entries_avx2(jac, n_jac, V, slot, blk, n);
#endif
    return jx_copy_entries(jac, n_jac, V, slot, blk, n);
}

static int jx_run_points(const jx_tape *t, jx_work *pw, const jx_batch *job, ptrdiff_t lo,
                         ptrdiff_t hi);

/* Whether every point of a block is within t's bound (jx_tape.bound in vm.h). */
static int jx_block_in_bound(const jx_tape *t, const jx_batch *job, ptrdiff_t p0, int32_t n)
{
    /* the block's points are one run of n * n_in doubles (or one a part, or a shared row):
       one vector loop */
    int32_t k;
    if (t->bound <= 0.0) return 1;
    if (job->x)
        return jx_in_bound_n(t->bound, job->x + (size_t)p0 * (size_t)t->n_in,
                             (size_t)n * (size_t)t->n_in);
    for (k = 0; k < job->n_parts; k++)
        if (!jx_in_bound_n(t->bound, job->part[k] + (size_t)p0 * (size_t)job->part_step[k],
                           (size_t)(job->part_step[k] ? n : 1) * (size_t)job->part_width[k]))
            return 0;
    return 1;
}

/* Points p0 .. p0+n-1 by the sweeps of t, where a Jacobian tape's block held an inf or
   nan; a reverse sweep's row that holds one too goes again by the forward sweeps, which
   decide (as F.jacobian does at one point), so such a batch needs no pass after it. */
static int jx_redo_points(const jx_tape *t, jx_work *pw, const jx_batch *job, ptrdiff_t p0,
                          int32_t n)
{
    const size_t size = (size_t)t->n_out * (size_t)job->n_cols;
    double *x = NULL;   /* a point's inputs gathered from the job's parts */
    int32_t l;
    int st = jx_run_points(t, pw, job, p0, p0 + n);
    for (l = 0; l < n && st == JX_OK && job->mode == JX_MODE_REVERSE; l++) {
        double *row = job->out + (size_t)(p0 + l) * size;
        if (jx_all_finite(row, (ptrdiff_t)size)) continue;
        if (!job->x && !x && !(x = (double *)malloc(sizeof(double) * ((size_t)t->n_in + 1))))
            st = JX_ENOMEM;
        else
            st = jx_point_jacobian(t, pw, jx_point_row(t, job, p0 + l, x), NULL, row,
                                   job->cols, job->n_cols, JX_MODE_FORWARD);
    }
    free(x);
    return st;
}

/*
 * The Jacobian from its own tape (job->jac_tape): one value sweep, then the
 * values and the Jacobian copied out.  A block whose Jacobian entries hold an
 * inf or nan goes again point by point through the sweeps of t (*pw made on
 * first need): there the zero kills decide, which a product in the Jacobian
 * tape does not know (an infinite partial times a tangent that is zero only
 * at this point).  Elsewhere the two agree (jacext/jactape.py).
 */
static int jx_block_jac_tape(const jx_tape *t, jx_block_work *w, jx_work *pw,
                             const jx_batch *job, ptrdiff_t p0, int32_t n)
{
    const jx_tape *jt = job->jac_tape;
    const int32_t blk = w->block;
    const int32_t n_out = t->n_out, n_jac = jt->n_out - n_out;
    const double *V = w->value;
    double *jac = job->out + (size_t)p0 * (size_t)n_jac;
    /* a folded Jacobian tape holds within its bound only: a block with a point beyond it
       goes point by point (there t runs its exact tape) */
    if (jx_block_in_bound(jt, job, p0, n)) {
        jx_block_load(jt, w, job, p0, n);
        jx_block_values(jt, w->value, w->stash, jac, (size_t)n * (size_t)n_jac * 8);
        /* the values: the Jacobian tape's first n_out outputs */
        const int32_t *out = jx_block_out_slots(jt);
        jx_block_store(out, n_out, w, job->y ? job->y + (size_t)p0 * n_out : NULL, n);
        if (jx_copy_block_entries(jac, n_jac, V, out + n_out, blk, n)) return JX_OK;
    }
    if (!pw->value) {
        int st = jx_work_init(pw, t, jx_dirs_for(t, job));
        if (st != JX_OK) return st;
    }
    return jx_redo_points(t, pw, job, p0, n);
}

/*
 * One directional derivative per point, its seed given per point: forward, J v (seed v
 * over the inputs, result over the outputs); reverse, u J (seed u over the outputs,
 * result over the inputs).  Input k is slot k; an output's slot is out_slot.
 */
static void jx_block_product(const jx_tape *t, jx_block_work *w, const jx_batch *job,
                             ptrdiff_t p0, int32_t n, int forward)
{
    const int32_t blk = w->block;
    const int32_t n_seed = forward ? t->n_in : t->n_out, n_res = forward ? t->n_out : t->n_in;
    const int32_t *seed_slot = forward ? NULL : t->out_slot;
    const int32_t *res_slot = forward ? t->out_slot : NULL;
    const double *seed = job->seed + (size_t)p0 * (size_t)n_seed;
    double *res = job->out + (size_t)p0 * (size_t)n_res;
    int32_t k, l, finite;
    jx_block_load(t, w, job, p0, n);
    finite = jx_block_forward(t, w);
    jx_block_store_outputs(t, w, job->y ? job->y + (size_t)p0 * t->n_out : NULL, n);
    /* tangents: inputs and constants cleared; adjoints: every slot (see jx_block_jacobian) */
    memset(w->lane, 0, (size_t)(forward ? t->n_in + t->n_const : t->n_slots) * B * sizeof(double));
    for (l = 0; l < B; l++) {
        const double *row = seed + (size_t)(l < n ? l : n - 1) * (size_t)n_seed;
        for (k = 0; k < n_seed; k++) {
            double *lane = w->lane + (size_t)(seed_slot ? seed_slot[k] : k) * B + l;
            if (forward)
                *lane = row[k];
            else
                *lane += row[k];   /* an output listed twice seeds twice */
        }
    }
    if (forward)
        jx_block_tangent(t, w, 1, finite);
    else
        jx_block_adjoint(t, w, 1, finite);
    for (l = 0; l < n; l++)
        for (k = 0; k < n_res; k++)
            res[(size_t)l * n_res + k] = w->lane[(size_t)(res_slot ? res_slot[k] : k) * B + l];
}

/*
 * Points per block: as many as keep one block's work arrays (values,
 * per-point partials of the instructions whose partials are not fixed, and
 * the tangent or adjoint lanes) within JX_BLOCK_BUDGET.  Measured on this
 * project's machine (bench/batch.py, AMD EPYC, 1 MiB L2 per core): the arm
 * tape (4.6 KB a point) ran 15% faster at 128 points than at 32; the 64x64
 * MLP tape (~170 KB a point) ran twice as fast at 32 as at 128, and faster
 * still at 8 (54 ms against 81 ms for 256 points).
 */

static int32_t jx_block_size(const jx_tape *t, const jx_batch *job)
{
    size_t n_var = 0, per_point, b;
    int32_t i;
    for (i = 0; i < t->n_instr; i++) n_var += !(t->fixed && t->fixed[i]);
    if (job->task == JX_TASK_JACOBIAN && job->jac_tape)
        per_point = 8 * (size_t)job->jac_tape->n_slots;   /* its values only */
    else if (job->task == JX_TASK_VALUE)
        per_point = 8 * (size_t)t->n_slots;   /* values only: no partials, no lanes */
    else
        per_point = 8 * ((size_t)t->n_slots * (1 + (size_t)jx_dirs_for(t, job)) + 2 * n_var);
    b = JX_BLOCK_BUDGET / (per_point > 0 ? per_point : 1);
    b = b / 8 * 8;
    if (b < JX_BLOCK_MIN) b = JX_BLOCK_MIN;
    if (b > JX_BLOCK_MAX) b = JX_BLOCK_MAX;
    return (int32_t)b;
}

void jx_join_rows(ptrdiff_t n, int32_t n_parts, const double *const *part,
                  const int32_t *width, double *out)
{
    ptrdiff_t p, total = 0;
    int32_t k;
    for (k = 0; k < n_parts; k++) total += width[k];
    for (p = 0; p < n; p++)   /* each part's rows contiguous: its step is its width */
        jx_gather_row(n_parts, part, width, width, p, out + p * total);
}

/* ---- threads ---- */

typedef struct {
    const jx_tape *tape;
    const jx_batch *job;
    ptrdiff_t lo, hi;   /* points */
    int32_t block;
    int status;
} jx_share;

static int32_t jx_dirs_for(const jx_tape *t, const jx_batch *job)
{
    int32_t need = 1;
    if (job->task == JX_TASK_JACOBIAN)
        need = (job->mode == JX_MODE_FORWARD) ? job->n_cols : t->n_out;
    if (job->task == JX_TASK_COMPRESSED) need = job->n_colours;
    if (need > JX_MAX_LANES) need = JX_MAX_LANES;
    return need < 1 ? 1 : need;
}

/* Points lo .. hi-1 one at a time, with the work pw (made for t). */
static int jx_run_points(const jx_tape *t, jx_work *pw, const jx_batch *job, ptrdiff_t lo,
                         ptrdiff_t hi)
{
    const size_t n_in = (size_t)t->n_in, n_out = (size_t)t->n_out;
    const size_t size = job->task != JX_TASK_COMPRESSED ? n_out * (size_t)job->n_cols
                        : job->mode == JX_MODE_FORWARD ? n_out * (size_t)job->n_colours
                                                        : (size_t)job->n_colours * (size_t)job->n_cols;
    ptrdiff_t p;
    int st = JX_OK;
    double *row = job->x ? NULL : (double *)malloc(sizeof(double) * (n_in + 1));
    if (!job->x && !row) return JX_ENOMEM;
    for (p = lo; p < hi && st == JX_OK; p++) {
        const double *x = jx_point_row(t, job, p, row);
        double *y = job->y ? job->y + (size_t)p * n_out : NULL;
        switch (job->task) {
        case JX_TASK_VALUE:
            st = jx_point_value(t, pw, x, y);
            break;
        case JX_TASK_JACOBIAN:
            st = jx_point_jacobian(t, pw, x, y, job->out + (size_t)p * size, job->cols,
                                   job->n_cols, job->mode);
            break;
        case JX_TASK_JVP:
            st = jx_point_jvp(t, pw, x, job->seed + (size_t)p * n_in, y,
                              job->out + (size_t)p * n_out);
            break;
        case JX_TASK_VJP:
            st = jx_point_vjp(t, pw, x, job->seed + (size_t)p * n_out, y,
                              job->out + (size_t)p * n_in);
            break;
        case JX_TASK_SUBGRAPH:
            st = jx_point_subgraph(t, pw, x, y, job->cone_ptr, job->cone, job->row_ptr,
                                   job->nz_input,
                                   job->out + (size_t)p * (size_t)job->row_ptr[t->n_out]);
            break;
        default:
            st = jx_point_compressed(t, pw, x, y, job->out + (size_t)p * size, job->cols,
                                     job->n_cols, job->colour, job->n_colours, job->mode);
        }
    }
    free(row);
    return st;
}

static void jx_run_share(jx_share *sh)
{
    const jx_tape *t = sh->tape;
    const jx_batch *job = sh->job;
    jx_block_work w;
    jx_work pw;
    ptrdiff_t p;
    int st;
    if (job->task == JX_TASK_COMPRESSED || job->task == JX_TASK_SUBGRAPH || sh->block == 0) {
        /* point by point (sparse Jacobians of a batch, and batches smaller
           than a block), each thread its own work; the same arithmetic as the
           block path */
        st = jx_work_init(&pw, t, jx_dirs_for(t, job));
        if (st == JX_OK) st = jx_run_points(t, &pw, job, sh->lo, sh->hi);
        if (pw.value) jx_work_free(&pw);
        sh->status = st;
        return;
    }
    if (job->task == JX_TASK_JACOBIAN && job->jac_tape) {
        memset(&pw, 0, sizeof(pw));
        st = jx_block_init(&w, job->jac_tape, 0, sh->block);
        for (p = sh->lo; p < sh->hi && st == JX_OK; p += sh->block) {
            const int32_t n = (int32_t)((sh->hi - p) < sh->block ? (sh->hi - p) : sh->block);
            st = jx_block_jac_tape(t, &w, &pw, job, p, n);
        }
        jx_block_free(&w);
        if (pw.value) jx_work_free(&pw);
        sh->status = st;
        return;
    }
    st = jx_block_init(&w, t, job->task == JX_TASK_VALUE ? 0 : jx_dirs_for(t, job), sh->block);
    if (st != JX_OK) {
        sh->status = st;
        return;
    }
    memset(&pw, 0, sizeof(pw));
    for (p = sh->lo; p < sh->hi; p += sh->block) {
        const int32_t n = (int32_t)((sh->hi - p) < sh->block ? (sh->hi - p) : sh->block);
        if (!jx_block_in_bound(t, job, p, n)) {
            /* a point beyond a folded tape's bound: this block point by point, each
               point on the tape that holds there (jx_tape_at) */
            if (!pw.value) st = jx_work_init(&pw, t, jx_dirs_for(t, job));
            if (st == JX_OK) st = jx_run_points(t, &pw, job, p, p + n);
            if (st != JX_OK) break;
            continue;
        }
        switch (job->task) {
        case JX_TASK_VALUE:
            jx_block_load(t, &w, job, p, n);
            jx_block_values(t, w.value, w.stash, NULL, 0);
            jx_block_store(jx_block_out_slots(t), t->n_out, &w, job->y + (size_t)p * t->n_out, n);
            break;
        case JX_TASK_JACOBIAN:
            jx_block_jacobian(t, &w, job, p, n);
            break;
        case JX_TASK_JVP:
        case JX_TASK_VJP:
            jx_block_product(t, &w, job, p, n, job->task == JX_TASK_JVP);
            break;
        default:
            st = JX_EARG;
        }
        if (st != JX_OK) break;
    }
    jx_block_free(&w);
    if (pw.value) jx_work_free(&pw);
    sh->status = st;
}

static void jx_thread_main(void *arg)
{
    jx_run_share((jx_share *)arg);
}

#define JX_MAX_THREADS 256

int jx_batch_run(const jx_tape *t, const jx_batch *job, int n_threads)
{
    jx_share shares[JX_MAX_THREADS];
    jx_thread threads[JX_MAX_THREADS];
    int i, status = JX_OK;
    const ptrdiff_t n = job->n_points;
    /* a small batch takes a block no larger than itself (rounded up to 8);
       below 8 points, points go one by one (block 0 in the shares) */
    const int32_t fit = jx_block_size(t, job);
    const int32_t blk = (job->task == JX_TASK_VALUE || (job->task == JX_TASK_JACOBIAN && job->jac_tape)) ? JX_VB
                        : (n < fit) ? (int32_t)((n + 7) / 8 * 8 > 0 ? (n + 7) / 8 * 8 : 8) : fit;
    const ptrdiff_t n_blocks = (n + B - 1) / B;
    const int point_by_point = n < JX_BLOCK_MIN;
    if (n < 0) return JX_EARG;
    if (n_threads < 1) n_threads = 1;
    if (n_threads > JX_MAX_THREADS) n_threads = JX_MAX_THREADS;
    if ((ptrdiff_t)n_threads > n_blocks) n_threads = (int)(n_blocks > 0 ? n_blocks : 1);
    for (i = 0; i < n_threads; i++) {
        /* whole blocks per thread: the same blocks whatever the thread count */
        ptrdiff_t lo = (n_blocks * i / n_threads) * B, hi = (n_blocks * (i + 1) / n_threads) * B;
        shares[i].tape = t;
        shares[i].job = job;
        shares[i].lo = lo < n ? lo : n;
        shares[i].hi = hi < n ? hi : n;
        shares[i].block = point_by_point ? 0 : blk;
        shares[i].status = JX_OK;
    }
    for (i = 1; i < n_threads; i++) jx_thread_start(&threads[i], jx_thread_main, &shares[i]);
    jx_run_share(&shares[0]);
    /* (a share whose thread could not be started runs here) */
    for (i = 1; i < n_threads; i++) jx_thread_join(&threads[i]);
    for (i = 0; i < n_threads; i++)
        if (shares[i].status != JX_OK) status = shares[i].status;
    return status;
}
