/*
 * vm.c -- op tables generated from ops.def, the tape check, and the sweeps.
 *
 * The forward sweep is the only code that knows ops: it evaluates each
 * instruction and stores its local partials d0 = dz/da, d1 = dz/db.  The
 * tangent and adjoint sweeps after it are multiply-adds over
 * (dst, a, b, d0, d1) across K lanes and never name an op.
 *
 * Zero kills (kernels.h): terms with a zero partial are skipped (per
 * instruction, a predictable branch); a non-finite partial takes jx_zmul's
 * per-lane select so that a zero tangent still gives zero.
 */
#include <stdlib.h>
#include <string.h>

#include "vm.h"
#include "threads.h"

const char *const jx_op_names[JX_N_OPS] = {
#define OP(NAME, ARITY, COMMUTES, VALUE, D0, D1, FIXED) #NAME,
#include "ops.def"
#undef OP
};

const int jx_op_arity[JX_N_OPS] = {
#define OP(NAME, ARITY, COMMUTES, VALUE, D0, D1, FIXED) ARITY,
#include "ops.def"
#undef OP
};

const int jx_op_commutes[JX_N_OPS] = {
#define OP(NAME, ARITY, COMMUTES, VALUE, D0, D1, FIXED) COMMUTES,
#include "ops.def"
#undef OP
};

const int jx_op_fixed[JX_N_OPS] = {
#define OP(NAME, ARITY, COMMUTES, VALUE, D0, D1, FIXED) FIXED,
#include "ops.def"
#undef OP
};

/* the rows as text: the preprocessor's # turns each argument into the string of its
   tokens, unexpanded, so Python reads exactly what C compiles */
const jx_op_text_row jx_op_text[JX_N_OPS] = {
#define OP(NAME, ARITY, COMMUTES, VALUE, D0, D1, FIXED) {#VALUE, #D0, #D1},
#include "ops.def"
#undef OP
};

const jx_helper_text_row jx_helper_text[] = {
#define HELPER(NAME, P, Q, EXPR) {#NAME, #P, #Q, #EXPR},
#include "ops.def"
#undef HELPER
    {NULL, NULL, NULL, NULL}
};
const int jx_n_helpers = (int)(sizeof(jx_helper_text) / sizeof(jx_helper_text[0])) - 1;

const jx_constant_row jx_op_constants[] = {
#define JX_CONSTANT_ROW(NAME, VALUE) {#NAME, NAME},
    JX_CONSTANTS(JX_CONSTANT_ROW)
#undef JX_CONSTANT_ROW
    {NULL, 0.0}
};
const int jx_n_op_constants = (int)(sizeof(jx_op_constants) / sizeof(jx_op_constants[0])) - 1;

double jx_op_value(int op, double a, double b, double s)
{
    double z = 0.0;
    (void)b;
    (void)s;
    switch (op) {
#define OP(NAME, ARITY, COMMUTES, VALUE, D0, D1, FIXED) \
    case JX_OP_##NAME: z = (VALUE); break;
#include "ops.def"
#undef OP
    default: z = NAN;
    }
    return z;
}

void jx_op_partials(int op, double a, double b, double s, double *d0, double *d1)
{
    double z = jx_op_value(op, a, b, s);
    (void)z;
    switch (op) {
#define OP(NAME, ARITY, COMMUTES, VALUE, D0, D1, FIXED) \
    case JX_OP_##NAME: *d0 = (D0); *d1 = (D1); break;
#include "ops.def"
#undef OP
    default: *d0 = NAN; *d1 = NAN;
    }
}

int jx_tape_check(const jx_tape *t)
{
    int32_t i, first_temp;
    if (t->n_instr < 0 || t->n_in < 0 || t->n_out < 0 || t->n_const < 0 || t->n_slots < 0)
        return JX_EBADTAPE;
    /* a bound is a number >= 0; an exact tape takes the same point to as many outputs and
       holds everywhere itself */
    if (!(t->bound >= 0.0)) return JX_EBADTAPE;
    if (t->exact && (t->bound == 0.0 || t->exact->n_in != t->n_in
                     || t->exact->n_out != t->n_out || t->exact->exact
                     || t->exact->bound != 0.0))
        return JX_EBADTAPE;
    int32_t kb = 0;
    first_temp = t->n_in + t->n_const;
    if (first_temp < 0 || first_temp > t->n_slots) return JX_EBADTAPE;
    if (t->n_blocks < 0 || (t->n_blocks > 0 && (!t->blocks || !t->weights || !t->dgemm
                                                 || !t->dgemv || t->n_weights < 0)))
        return JX_EBADTAPE;
    for (i = 0; i < t->n_instr; i++) {
        int32_t word = t->op[i];
        if (word == JX_BLOCK) {
            /* the next block of the table, its ranges inside the slots and apart, its
               matrix inside the weights */
            const int64_t *f = t->blocks + (size_t)JX_BLOCK_FIELDS * kb;
            int64_t m, n, d, x, rows, reads;
            if (kb >= t->n_blocks || f[0] != i) return JX_EBADTAPE;
            m = f[1];
            n = f[2];
            d = t->dst[i];
            x = t->a[i];
            if (m < 1 || n < 1 || m > INT32_MAX || n > INT32_MAX) return JX_EBADTAPE;
            if (f[3] < 0) {   /* a product: p = -f[3] columns, no weights */
                if (-f[3] > INT32_MAX || m * -f[3] > INT32_MAX || n * (m - f[3]) > INT32_MAX)
                    return JX_EBADTAPE;
            } else if (f[3] > t->n_weights || m * n > t->n_weights - f[3]) {
                return JX_EBADTAPE;
            }
            rows = jx_block_rows(t, kb);
            reads = jx_block_operands(t, kb);
            if (d < first_temp || d + rows > t->n_slots || x < 0 || x + reads > t->n_slots)
                return JX_EBADTAPE;
            if (!(d + rows <= x || x + reads <= d)) return JX_EBADTAPE;
            if (t->b[i] != t->a[i] || t->s[i] != t->a[i]) return JX_EBADTAPE;
            kb++;
            continue;
        }
        int32_t op = word & JX_OP_MASK;
        int32_t flags = word & ~JX_OP_MASK;
        if (op < 0 || op >= JX_N_OPS) return JX_EBADTAPE;
        if (flags & ~(JX_A_IMM | JX_B_IMM)) return JX_EBADTAPE;
        if (flags == (JX_A_IMM | JX_B_IMM)) return JX_EBADTAPE;
        if (flags && jx_op_arity[op] != 2) return JX_EBADTAPE;
        if (t->dst[i] < first_temp || t->dst[i] >= t->n_slots) return JX_EBADTAPE;
        if (t->a[i] < 0 || t->a[i] >= t->n_slots) return JX_EBADTAPE;
        if (t->b[i] < 0 || t->b[i] >= t->n_slots) return JX_EBADTAPE;
        if (t->s[i] < 0 || t->s[i] >= t->n_slots) return JX_EBADTAPE;
        /* the batched sweeps (batch.c) rely on dst never being an operand's
           slot: a tape that breaks this would give wrong batch results */
        if (t->dst[i] == t->a[i] || t->dst[i] == t->b[i]) return JX_EBADTAPE;
        if ((jx_reads(word) & JX_READS_S) && t->dst[i] == t->s[i]) return JX_EBADTAPE;
    }
    if (kb != t->n_blocks) return JX_EBADTAPE;
    for (i = 0; i < t->n_out; i++)
        if (t->out_slot[i] < 0 || t->out_slot[i] >= t->n_slots) return JX_EBADTAPE;
    return JX_OK;
}

int32_t jx_tape_fixed_partials(const jx_tape *t, unsigned char *fixed, double *d0, double *d1)
{
    int32_t i, count = 0;
    for (i = 0; i < t->n_instr; i++) {
        const int32_t word = t->op[i];
        const int op = word & JX_OP_MASK;
        const int k = word == JX_BLOCK ? 0 : jx_op_fixed[op];
        int is_fixed = (k & JX_K) || ((k & JX_K_BI) && (word & JX_B_IMM))
                       || ((k & JX_K_AI) && (word & JX_A_IMM));
        double p0 = 0.0, p1 = 0.0;
        if (is_fixed) {
            /* constants: any operand value gives them; the immediate is its own */
            double a = (word & JX_A_IMM) ? t->imm[i] : 1.0;
            double b = (word & JX_B_IMM) ? t->imm[i] : 1.0;
            jx_op_partials(op, a, b, 1.0, &p0, &p1);
            if (word & JX_A_IMM) p0 = 0.0;
            if (word & JX_B_IMM) p1 = 0.0;
            /* an infinite constant (x / 0) takes the general path */
            is_fixed = isfinite(p0) && isfinite(p1);
        }
        fixed[i] = (unsigned char)is_fixed;
        d0[i] = is_fixed ? p0 : 0.0;
        d1[i] = is_fixed ? p1 : 0.0;
        count += is_fixed;
    }
    return count;
}

int32_t jx_tape_sincos_pairs(const jx_tape *t, int32_t *pair)
{
    /* open[s]: a sin or cos instruction that reads slot s's current value and
       has no partner yet, or -1; a write to s closes it */
    int32_t *open = (int32_t *)malloc((size_t)(t->n_slots > 0 ? t->n_slots : 1) * sizeof(int32_t));
    int32_t i, n = 0, kb = 0;
    if (!open) return JX_ENOMEM;
    for (i = 0; i < t->n_slots; i++) open[i] = -1;
    for (i = 0; i < t->n_instr; i++) {
        const int32_t word = t->op[i];
        pair[i] = -1;
        if (word == JX_OP_SIN || word == JX_OP_COS) {   /* no immediate flags */
            const int32_t s = t->a[i], p = open[s];
            if (p >= 0 && t->op[p] != word) {
                pair[p] = 2 * n;
                pair[i] = 2 * n + 1;
                n++;
                open[s] = -1;
            } else if (p < 0) {
                open[s] = i;
            }
        }
        if (word == JX_BLOCK) {   /* a block writes m slots */
            const int32_t m = (int32_t)jx_block_rows(t, kb++);
            int32_t r;
            for (r = 0; r < m; r++) open[t->dst[i] + r] = -1;
        }
        open[t->dst[i]] = -1;
    }
    free(open);
    return n;
}

/* n doubles on a cache line's boundary (JX_LINE bytes; zeroed if asked): a batched
   sweep's slot of 64 lanes is 8 whole lines, and no vector load of a lane loop or a run
   straddles two lines (malloc gives 16-byte alignment; a large array from mmap sits 16
   bytes past a page).  malloc's pointer sits just before them, for jx_lines_free.  NULL
   for no memory. */
double *jx_lines(size_t n, int zero)
{
    const size_t extra = JX_LINE + sizeof(void *);
    unsigned char *raw;
    uintptr_t p;
    if (n > (SIZE_MAX - extra) / sizeof(double)) return NULL;
    raw = (unsigned char *)(zero ? calloc(n * sizeof(double) + extra, 1)
                                 : malloc(n * sizeof(double) + extra));
    if (!raw) return NULL;
    p = ((uintptr_t)(raw + sizeof(void *)) + (JX_LINE - 1)) & ~(uintptr_t)(JX_LINE - 1);
    memcpy((void *)(p - sizeof(void *)), &raw, sizeof(void *));
    return (double *)p;
}

void jx_lines_free(double *p)
{
    void *raw;
    if (!p) return;
    memcpy(&raw, (unsigned char *)p - sizeof(void *), sizeof(void *));
    free(raw);
}

/* The rings a work needs for t's tile chains (the most any chain has). */
static int32_t jx_tape_rings(const jx_tape *t)
{
    int32_t r, n = 0;
    if (!t->runs) return 0;
    for (r = 0; r < t->n_runs; r++) {
        const int32_t f = t->runs[(size_t)JX_RUN_FIELDS * r + JX_RUN_RING];
        if (f >= 0 && JX_RING_OF(f) + 1 > n) n = JX_RING_OF(f) + 1;
    }
    return n;
}

int jx_work_init(jx_work *w, const jx_tape *t, int32_t lanes)
{
    const jx_tape *e = t->exact;
    int32_t slots = e && e->n_slots > t->n_slots ? e->n_slots : t->n_slots;
    int32_t instr = e && e->n_instr > t->n_instr ? e->n_instr : t->n_instr;
    size_t n_slots = (size_t)(slots > 0 ? slots : 1);
    size_t n_instr = (size_t)(instr > 0 ? instr : 1);
    int32_t rings;
    if (lanes < 1) lanes = 1;
    w->lanes = lanes;
    w->consts = t;
    w->value = jx_lines(n_slots, 1);
    w->d0 = jx_lines(n_instr, 0);
    w->d1 = jx_lines(n_instr, 0);
    w->lane = n_slots <= SIZE_MAX / (size_t)lanes ? jx_lines(n_slots * (size_t)lanes, 1) : NULL;
    rings = jx_tape_rings(t);
    if (e && jx_tape_rings(e) > rings) rings = jx_tape_rings(e);
    /* no memory for the rings: the chains keep their slots (the same values) */
    w->scratch = rings > 0 ? jx_lines((size_t)rings * JX_RING, 0) : NULL;
    if (!w->value || !w->d0 || !w->d1 || !w->lane) {
        jx_work_free(w);
        return JX_ENOMEM;
    }
    if (t->n_const > 0)
        memcpy(w->value + t->n_in, t->const_value, (size_t)t->n_const * sizeof(double));
    return JX_OK;
}

void jx_work_free(jx_work *w)
{
    jx_lines_free(w->value);
    jx_lines_free(w->d0);
    jx_lines_free(w->d1);
    jx_lines_free(w->lane);
    jx_lines_free(w->scratch);
    w->value = w->d0 = w->d1 = w->lane = w->scratch = NULL;
}

/* Loads an instruction's operands: an immediate where the op word says so. */
#define JX_LOAD_OPERANDS(value, i, word)                                   \
    a = ((word) & JX_A_IMM) ? t->imm[i] : value[t->a[i]];                  \
    b = ((word) & JX_B_IMM) ? t->imm[i] : value[t->b[i]];                  \
    s = (((word) & JX_OP_MASK) == JX_OP_SELECT) ? value[t->s[i]] : 0.0


/* The same double bit for bit (0.0 and -0.0 are two immediates: x * -0.0 is not x * 0.0). */
static int jx_same_bits(double x, double y)
{
    return memcmp(&x, &y, sizeof(double)) == 0;
}

/* Where a run of a tile chain stands: a long run (at least JX_TILE_MIN instructions, dst
   step 1, read steps 0 or 1) does its element k at time lag + k; a short one (under
   JX_RUN_MIN_LEN instructions, any steps) does all of them at time lag.  The value sweep
   runs a chain JX_TILE times at a time, the chain's runs in order within each: an access
   at an earlier time comes first. */
#define JX_CHAIN_NONE 0
#define JX_CHAIN_LONG 1
#define JX_CHAIN_SHORT 2

static int jx_chain_kind(const jx_tape *t, int32_t i, const int32_t *run)
{
    const int reads = jx_reads(t->op[i]);
    int m;
    if (t->op[i] == JX_BLOCK) return JX_CHAIN_NONE;
    if (run[0] < JX_RUN_MIN_LEN) return JX_CHAIN_SHORT;
    if (run[0] < JX_TILE_MIN || run[1] != 1) return JX_CHAIN_NONE;
    for (m = 0; m < 3; m++)
        if ((reads & (1 << m)) && run[2 + m] != 0 && run[2 + m] != 1) return JX_CHAIN_NONE;
    return JX_CHAIN_LONG;
}

/* The slots one operand of a run touches: base + k * step for k < n, at time k (timed) or
   at time 0 (a short run). */
typedef struct {
    int64_t base, step, n;
    int timed;
} jx_access;

#define JX_NO_GAP INT64_MIN

/* Element k of y meeting slot s: the k with the earliest time, or -1. */
static int64_t jx_access_first(jx_access y, int64_t s)
{
    if (y.step == 0) return s == y.base ? 0 : -1;
    if ((s - y.base) % y.step != 0) return -1;
    s = (s - y.base) / y.step;
    return s >= 0 && s < y.n ? s : -1;
}

/* Element k of x meeting slot s: the k with the latest time, or -1. */
static int64_t jx_access_last(jx_access x, int64_t s)
{
    if (x.step == 0) return s == x.base ? x.n - 1 : -1;
    return jx_access_first(x, s);
}

/* The largest time_x(kx) - time_y(ky) over the pairs of elements of x and y that touch one
   slot; JX_NO_GAP when they touch none. */
static int64_t jx_access_gap(jx_access x, jx_access y)
{
    int64_t gap = JX_NO_GAP, k, m;
    if (!x.timed || !y.timed) {          /* one of them short: go through its elements */
        const int x_short = !x.timed && (y.timed || x.n <= y.n);
        const jx_access sh = x_short ? x : y, other = x_short ? y : x;
        for (k = 0; k < sh.n; k++) {
            const int64_t s = sh.base + k * sh.step;
            m = x_short ? jx_access_first(other, s) : jx_access_last(other, s);
            if (m < 0) continue;
            if (x_short) m = k * x.timed - m * y.timed;
            else m = m * x.timed - k * y.timed;
            if (m > gap) gap = m;
        }
        return gap;
    }
    /* both long: steps 0 or 1 */
    if (x.step == 1 && y.step == 1) {
        if (x.base < y.base + y.n && y.base < x.base + x.n) gap = y.base - x.base;
    } else if (x.step == 0 && y.step == 1) {
        if (x.base >= y.base && x.base < y.base + y.n) gap = (x.n - 1) - (x.base - y.base);
    } else if (x.step == 1 && y.step == 0) {
        if (y.base >= x.base && y.base < x.base + x.n) gap = y.base - x.base;
    } else if (x.base == y.base) {
        gap = x.n - 1;
    }
    return gap;
}

/* The operands of the run at instruction i: [0] its dst, then what it reads; the count. */
static int jx_run_accesses(const jx_tape *t, int32_t i, const int32_t *run, int kind,
                           jx_access acc[4])
{
    const int reads = jx_reads(t->op[i]);
    const int32_t base[4] = {t->dst[i], t->a[i], t->b[i], t->s[i]};
    int m, n = 0;
    for (m = 0; m < 4; m++) {
        if (m > 0 && !(reads & (1 << (m - 1)))) continue;
        acc[n].base = base[m];
        acc[n].step = run[1 + m];
        acc[n].n = run[0];
        acc[n].timed = kind == JX_CHAIN_LONG;
        n++;
    }
    return n;
}

/* How much later than run e (its lag) run l may start in a chain: the largest gap over
   the slots one writes and the other reads or writes; JX_NO_GAP when they share none. */
static int64_t jx_chain_gap(const jx_access *e, int ne, const jx_access *l, int nl)
{
    int64_t gap = JX_NO_GAP, g;
    int m;
    for (m = 0; m < nl; m++) {              /* e's writes against l's reads and writes */
        g = jx_access_gap(e[0], l[m]);
        if (g > gap) gap = g;
    }
    for (m = 1; m < ne; m++) {              /* e's reads against l's writes */
        g = jx_access_gap(e[m], l[0]);
        if (g > gap) gap = g;
    }
    return gap;
}

/* Marks the tile chains among n runs: JX_RUN_TILE_NEXT on every run of a chain but its
   last, and each run's lag (JX_RUN_LAG).  A chain starts at a long run; a run joins when
   every slot it shares with the chain so far is touched in order at a lag of at most
   JX_TILE_LAG_MAX (a short run: at any lag within the chain). */
static void jx_tile_chains(const jx_tape *t, int32_t *runs, int32_t n)
{
    jx_access acc[JX_TILE_MAX_CHAIN][4];
    int n_acc[JX_TILE_MAX_CHAIN];
    int64_t lag[JX_TILE_MAX_CHAIN], span = 0;
    int32_t r, i = 0, count = 0;
    int c;
    for (r = 0; r < n; r++) {
        int32_t *run = runs + (size_t)JX_RUN_FIELDS * r;
        const int kind = jx_chain_kind(t, i, run);
        jx_access mine[4];
        const int n_mine = kind ? jx_run_accesses(t, i, run, kind, mine) : 0;
        int joined = 0;
        run[JX_RUN_LAG] = 0;
        if (kind && count > 0 && count < JX_TILE_MAX_CHAIN) {
            int64_t need = 0;
            for (c = 0; c < count; c++) {
                const int64_t g = jx_chain_gap(acc[c], n_acc[c], mine, n_mine);
                if (g != JX_NO_GAP && lag[c] + g > need) need = lag[c] + g;
            }
            if (need <= (kind == JX_CHAIN_LONG ? JX_TILE_LAG_MAX : span)) {
                runs[(size_t)JX_RUN_FIELDS * (r - 1) + 5] |= JX_RUN_TILE_NEXT;
                run[JX_RUN_LAG] = (int32_t)need;
                joined = 1;
            }
        }
        if (!joined) {
            count = 0;
            span = 0;
        }
        if (joined || kind == JX_CHAIN_LONG) {
            memcpy(acc[count], mine, sizeof(mine));
            n_acc[count] = n_mine;
            lag[count] = run[JX_RUN_LAG];
            if (lag[count] + (kind == JX_CHAIN_LONG ? run[0] : 1) > span)
                span = lag[count] + (kind == JX_CHAIN_LONG ? run[0] : 1);
            count++;
        }
        i += run[0];
    }
}

/* The slots instruction i reads (base, count) as up to 3 ranges: a block its operands. */
static int jx_read_ranges(const jx_tape *t, int32_t i, int32_t kb, int64_t base[3],
                          int64_t count[3])
{
    const int32_t word = t->op[i];
    int reads, m, n = 0;
    if (word == JX_BLOCK) {
        base[0] = t->a[i];
        count[0] = jx_block_operands(t, kb);
        return 1;
    }
    reads = jx_reads(word);
    for (m = 0; m < 3; m++)
        if (reads & (1 << m)) {
            base[n] = m == 0 ? t->a[i] : m == 1 ? t->b[i] : t->s[i];
            count[n++] = 1;
        }
    return n;
}

/* The reads of one chain's run r that meet a candidate's values (writer[s]: the run of
   the chain that last wrote slot s, or -1): a long run's operand range must have one
   writer p, and r must be contiguous and read it where p's ring still holds it (lag); a
   short run's instructions read one slot each, in order, each within the lag.  Otherwise
   p keeps its slots (bad).  With ring (the rings given out), records each such read's
   ring in r's fields (a short run's: 8 bits an operand, per instruction). */
static void jx_ring_reads(const jx_tape *t, int32_t *runs, const int32_t *first, int32_t r0,
                          int32_t r, int32_t *writer, unsigned char *bad,
                          const int32_t *ring)
{
    int32_t *rr = runs + (size_t)JX_RUN_FIELDS * r;
    const int32_t i0 = first[r];
    const int is_long = rr[0] >= JX_RUN_MIN_LEN;
    const int reads = jx_reads(t->op[i0]);
    const int64_t base[3] = {t->a[i0], t->b[i0], t->s[i0]};
    int m;
    if (!is_long) {   /* a short run: instruction by instruction, each read at the run's time */
        int32_t j;
        for (j = 0; j < rr[0]; j++) {
            const int32_t i = i0 + j;
            const int rd = jx_reads(t->op[i]);
            const int64_t b[3] = {t->a[i], t->b[i], t->s[i]};
            int32_t packed = 0;
            for (m = 0; m < 3; m++) {
                const int32_t p = (rd & (1 << m)) ? writer[b[m]] : -1;
                int64_t gap;
                if (p < 0) continue;
                gap = (int64_t)rr[JX_RUN_LAG] - (b[m] - t->dst[first[p]])
                      - runs[(size_t)JX_RUN_FIELDS * p + JX_RUN_LAG];
                if (gap < 0 || gap + JX_TILE > JX_RING) bad[p - r0] = 1;
                else if (ring && ring[p - r0] >= 0) packed |= (ring[p - r0] + 1) << (8 * m);
            }
            if (ring) rr[JX_RUN_RING + 1 + j] = packed ? packed : -1;
            writer[t->dst[i]] = r;   /* before the next instruction's reads */
        }
        return;
    }
    for (m = 0; m < 3; m++) {
        const int64_t n = is_long && rr[2 + m] ? rr[0] : 1;
        int32_t p = -1, mixed = 0;
        int64_t s, e, gap;
        if (!(reads & (1 << m))) continue;
        for (s = base[m]; s < base[m] + n; s++) {
            if (s == base[m]) p = writer[s];
            else if (writer[s] != p) mixed = 1;
        }
        if (mixed) {
            for (s = base[m]; s < base[m] + n; s++)
                if (writer[s] >= 0) bad[writer[s] - r0] = 1;
            continue;
        }
        if (p < 0) continue;
        {
            const int32_t *rp = runs + (size_t)JX_RUN_FIELDS * p;
            /* element e of p is written at lag_p + e; read at lag_r + (its element in r) */
            e = base[m] - t->dst[first[p]];
            gap = (int64_t)rr[JX_RUN_LAG] - e - rp[JX_RUN_LAG];
            if ((is_long && !((rr[5] & JX_RUN_CONTIGUOUS) && rr[0] >= JX_TILE_MIN))
                || gap < 0 || gap + JX_TILE > JX_RING) {
                bad[p - r0] = 1;
                continue;
            }
            if (ring && ring[p - r0] >= 0) rr[JX_RUN_RING + 1 + m] = ring[p - r0];
        }
    }
}

/* The writes of run r into writer[] (all: -1 again, for the next chain). */
static void jx_ring_writes(const jx_tape *t, const int32_t *runs, const int32_t *first,
                           int32_t r, int32_t *writer, int32_t who)
{
    const int32_t *rr = runs + (size_t)JX_RUN_FIELDS * r;
    int32_t i;
    if (rr[0] >= JX_RUN_MIN_LEN) {
        const int64_t d = t->dst[first[r]];
        int64_t s;
        for (s = d; s < d + rr[0]; s++) writer[s] = who;
    } else {
        for (i = first[r]; i < first[r] + rr[0]; i++) writer[t->dst[i]] = who;
    }
}

/* One chain's rings (runs r0 .. r1), from the liveness after it: its long contiguous runs
   whose every value is read only as jx_ring_reads allows, and none of them live past the
   chain, get rings 0, 1, ... in order.  bad, ring: one entry per run of the chain. */
static void jx_rings_of_chain(const jx_tape *t, int32_t *runs, const int32_t *first,
                              int32_t r0, int32_t r1, const unsigned char *live,
                              int32_t *writer, unsigned char *bad, unsigned char *back,
                              int32_t *ring)
{
    int32_t r, k = 0;
    int64_t s;
    for (r = r0; r <= r1; r++) {
        const int32_t *rr = runs + (size_t)JX_RUN_FIELDS * r;
        bad[r - r0] = !(rr[0] >= JX_TILE_MIN && (rr[5] & JX_RUN_CONTIGUOUS));
        back[r - r0] = 0;
        ring[r - r0] = -1;
    }
    for (r = r0; r <= r1; r++) {   /* who reads what from whom */
        jx_ring_reads(t, runs, first, r0, r, writer, bad, NULL);
        jx_ring_writes(t, runs, first, r, writer, r);
    }
    for (r = r0; r <= r1; r++) {   /* values live past the chain */
        const int32_t *rr = runs + (size_t)JX_RUN_FIELDS * r;
        const int64_t d = t->dst[first[r]], L = rr[0];
        const int64_t tail = L > JX_RING ? L - JX_RING : 0;
        if (bad[r - r0]) continue;
        /* r's last JX_RING values are still in its ring after the chain: copied back to
           their slots (JX_RING_BACK) where r is still every one's writer, those needed
           past the chain may be among them; any other needed value rules the ring out */
        for (s = d; s < d + L && !bad[r - r0]; s++)
            if (live[s] && writer[s] == r) {
                if (s - d < tail) bad[r - r0] = 1;
                else back[r - r0] = 1;
            }
        for (s = d + tail; back[r - r0] && !bad[r - r0] && s < d + L; s++)
            if (writer[s] != r) bad[r - r0] = 1;
    }
    for (r = r0; r <= r1; r++) jx_ring_writes(t, runs, first, r, writer, -1);
    for (r = r0; r <= r1 && k < JX_TILE_MAX_CHAIN; r++)
        if (!bad[r - r0]) {
            ring[r - r0] = k++;
            runs[(size_t)JX_RUN_FIELDS * r + JX_RUN_RING] =
                ring[r - r0] | (back[r - r0] ? JX_RING_BACK : 0);
        }
    if (k == 0) return;
    for (r = r0; r <= r1; r++) {   /* the same reads again, recording the rings */
        jx_ring_reads(t, runs, first, r0, r, writer, bad, ring);
        jx_ring_writes(t, runs, first, r, writer, r);
    }
    for (r = r0; r <= r1; r++) jx_ring_writes(t, runs, first, r, writer, -1);
}

/* The tile chains' rings (JX_RUN_RING in vm.h): a backward pass over the tape keeps each
   slot's liveness, and at each chain's end its rings are given out (jx_rings_of_chain).
   No memory for the pass: no rings. */
static void jx_chain_rings(const jx_tape *t, int32_t *runs, int32_t n_runs)
{
    unsigned char *live, *bad, *back;
    int32_t *first, *writer, *ring;
    int32_t r, e, i, kb = t->n_blocks, m;
    for (r = 0; r < n_runs && !(runs[(size_t)JX_RUN_FIELDS * r + 5] & JX_RUN_TILE_NEXT); r++) {
    }
    if (r == n_runs || t->n_slots < 1) return;   /* no chain: nothing to pass over */
    live = (unsigned char *)calloc((size_t)t->n_slots, 1);
    writer = (int32_t *)malloc((size_t)t->n_slots * sizeof(int32_t));
    first = (int32_t *)malloc(((size_t)n_runs + 1) * sizeof(int32_t));
    bad = (unsigned char *)malloc(JX_TILE_MAX_CHAIN);
    back = (unsigned char *)malloc(JX_TILE_MAX_CHAIN);
    ring = (int32_t *)malloc(JX_TILE_MAX_CHAIN * sizeof(int32_t));
    if (!live || !writer || !first || !bad || !back || !ring) goto done;
    for (i = 0; i < t->n_slots; i++) writer[i] = -1;
    for (r = 0, i = 0; r < n_runs; r++) {
        first[r] = i;
        i += runs[(size_t)JX_RUN_FIELDS * r];
    }
    first[n_runs] = i;
    for (i = 0; i < t->n_out; i++) live[t->out_slot[i]] = 1;
    i = t->n_instr;   /* the pass has gone back to instruction i */
    for (e = n_runs - 1; e >= 0; e--) {
        int32_t r0 = e;   /* runs r0 .. e: a chain, or one run */
        while (r0 > 0 && (runs[(size_t)JX_RUN_FIELDS * (r0 - 1) + 5] & JX_RUN_TILE_NEXT)) r0--;
        while (i > first[e + 1]) {   /* back through the instructions after runs r0 .. e */
            int64_t base[3], count[3];
            int n;
            i--;
            if (t->op[i] == JX_BLOCK) kb--;
            n = jx_read_ranges(t, i, kb, base, count);
            if (t->op[i] == JX_BLOCK)
                memset(live + t->dst[i], 0, (size_t)jx_block_rows(t, kb));
            else
                live[t->dst[i]] = 0;
            for (m = 0; m < n; m++) memset(live + base[m], 1, (size_t)count[m]);
        }
        if (r0 < e && e - r0 < JX_TILE_MAX_CHAIN)
            jx_rings_of_chain(t, runs, first, r0, e, live, writer, bad, back, ring);
        e = r0;   /* the loop's e-- moves to the run before this chain (or run) */
    }
done:
    free(live);
    free(writer);
    free(first);
    free(bad);
    free(back);
    free(ring);
}

/* Field JX_RUN_OUT of each run (vm.h), from each slot's last instruction (reading or
   writing it) and output position.  No memory for it: none (-1 everywhere). */
static void jx_runs_out(const jx_tape *t, int32_t *runs, int32_t n_runs)
{
    int32_t *last = (int32_t *)malloc((size_t)t->n_slots * sizeof(int32_t));
    int32_t *pos = (int32_t *)malloc((size_t)t->n_slots * sizeof(int32_t));
    int32_t i, r, k, kb = 0;
    if (!last || !pos) goto done;
    for (k = 0; k < t->n_slots; k++) last[k] = pos[k] = -1;
    for (i = 0; i < t->n_instr; i++) {
        int64_t base[3], count[3], s;
        const int n = jx_read_ranges(t, i, kb, base, count);
        int m;
        for (m = 0; m < n; m++)
            for (s = base[m]; s < base[m] + count[m]; s++) last[s] = i;
        if (t->op[i] == JX_BLOCK) {
            for (s = t->dst[i]; s < t->dst[i] + jx_block_rows(t, kb); s++) last[s] = i;
            kb++;
        } else {
            last[t->dst[i]] = i;
        }
    }
    for (k = 0; k < t->n_out; k++)   /* -2: at several positions */
        pos[t->out_slot[k]] = pos[t->out_slot[k]] == -1 ? k : -2;
    for (r = 0, i = 0; r < n_runs; i += runs[(size_t)JX_RUN_FIELDS * r++]) {
        int32_t *run = runs + (size_t)JX_RUN_FIELDS * r;
        const int32_t d = t->dst[i], o = pos[d];
        if (t->op[i] == JX_BLOCK || !JX_RUN_ON_POINTERS(run) || run[JX_RUN_RING] >= 0 || o < 0)
            continue;
        for (k = 0; k < run[0] && pos[d + k] == o + k && last[d + k] == i + k; k++) {
        }
        if (k == run[0]) run[JX_RUN_OUT] = o;
    }
done:
    free(last);
    free(pos);
}

/* The end of the run starting at instruction i (one op word, one immediate, evenly
   stepping dst and read slots) and its steps of dst, a, b, s (0 for a slot not read). */
static int32_t jx_run_end(const jx_tape *t, int32_t i, int32_t step[4])
{
    const int32_t word = t->op[i];
    const int reads = jx_reads(word);
    const int uses_imm = (word & (JX_A_IMM | JX_B_IMM)) != 0;
#define JX_SAME_IMM(j) (!uses_imm || jx_same_bits(t->imm[j], t->imm[i]))
#define JX_STEPS(j, k) \
    ((!(reads & 1) || t->a[j] - t->a[k] == step[1])        \
     && (!(reads & 2) || t->b[j] - t->b[k] == step[2])     \
     && (!(reads & 4) || t->s[j] - t->s[k] == step[3]))
    int32_t j = i + 1;
    step[0] = step[1] = step[2] = step[3] = 0;
    if (word != JX_BLOCK && j < t->n_instr && t->op[j] == word && JX_SAME_IMM(j)) {
        step[0] = t->dst[j] - t->dst[i];
        step[1] = (reads & 1) ? t->a[j] - t->a[i] : 0;
        step[2] = (reads & 2) ? t->b[j] - t->b[i] : 0;
        step[3] = (reads & 4) ? t->s[j] - t->s[i] : 0;
        while (j < t->n_instr && t->op[j] == word && JX_SAME_IMM(j)
               && t->dst[j] - t->dst[j - 1] == step[0] && JX_STEPS(j, j - 1))
            j++;
    }
#undef JX_STEPS
#undef JX_SAME_IMM
    return j;
}

int32_t jx_tape_runs(const jx_tape *t, int32_t *runs)
{
    int32_t i = 0, n = 0;
    while (i < t->n_instr) {
        const int reads = jx_reads(t->op[i]);
        int32_t step[4], next[4], k, flags = 0;
        int32_t j = jx_run_end(t, i, step);
        /* a pair whose second instruction starts a longer run: the first alone (a loop
           over an array whose first element was computed apart) */
        if (j - i == 2 && j < t->n_instr && jx_run_end(t, i + 1, next) > j + 1) {
            j = i + 1;
            step[0] = step[1] = step[2] = step[3] = 0;
        }
        if (j - i > 1 && step[0] == 1 && (!(reads & 1) || step[1] == 1)
            && (!(reads & 2) || step[2] == 1) && (!(reads & 4) || step[3] == 1)) {
            /* contiguous: no operand range may meet the dst range */
            const int32_t d0 = t->dst[i], d1 = t->dst[j - 1];
            int meets = 0;
            for (k = 0; k < 3; k++) {
                int32_t lo;
                if (!(reads & (1 << k))) continue;
                lo = k == 0 ? t->a[i] : k == 1 ? t->b[i] : t->s[i];
                if (lo <= d1 && lo + (j - i - 1) >= d0) meets = 1;
            }
            if (!meets) flags = JX_RUN_CONTIGUOUS;
        }
        runs[JX_RUN_FIELDS * n + 0] = j - i;
        for (k = 0; k < 4; k++) runs[JX_RUN_FIELDS * n + 1 + k] = step[k];
        runs[JX_RUN_FIELDS * n + 5] = flags;
        runs[JX_RUN_FIELDS * n + JX_RUN_LAG] = 0;
        for (k = 0; k < 4; k++) runs[JX_RUN_FIELDS * n + JX_RUN_RING + k] = -1;
        runs[JX_RUN_FIELDS * n + JX_RUN_OUT] = -1;
        n++;
        i = j;
    }
    jx_tile_chains(t, runs, n);
    jx_chain_rings(t, runs, n);
    jx_runs_out(t, runs, n);
    return n;
}

/* Marks the slots below `below` that instruction i (block kb if a block) reads. */
static void jx_mark_reads(const jx_tape *t, int32_t i, int32_t kb, unsigned char *mark,
                          int64_t below)
{
    int64_t base[3], count[3], s;
    const int n = jx_read_ranges(t, i, kb, base, count);
    int m;
    for (m = 0; m < n; m++)
        for (s = base[m]; s < base[m] + count[m] && s < below; s++) mark[s] = 1;
}

int jx_tape_io(const jx_tape *t, int32_t *copy, int32_t n[2])
{
    unsigned char *read = (unsigned char *)calloc((size_t)t->n_in + 1, 1);
    unsigned char *written = (unsigned char *)calloc((size_t)t->n_out + 1, 1);
    int32_t i = 0, r = 0, kb = 0, j, k;
    if (!read || !written) {
        free(read);
        free(written);
        return JX_ENOMEM;
    }
    while (i < t->n_instr) {   /* the runs as the value sweep takes them (jx_forward) */
        const int32_t *run = t->runs ? t->runs + (size_t)JX_RUN_FIELDS * r++ : NULL;
        const int32_t L = run ? run[0] : 1;
        if (run && t->op[i] != JX_BLOCK && JX_RUN_ON_POINTERS(run)) {
            if (run[JX_RUN_OUT] >= 0) memset(written + run[JX_RUN_OUT], 1, (size_t)L);
        } else {
            for (j = i; j < i + L; j++) {
                jx_mark_reads(t, j, kb, read, t->n_in);
                if (t->op[j] == JX_BLOCK) kb++;
            }
        }
        i += L;
    }
    for (k = 0; k < t->n_out; k++)   /* an input that is an output: gathered from the work */
        if (t->out_slot[k] < t->n_in) read[t->out_slot[k]] = 1;
    for (k = 0, n[0] = 0; k < t->n_in; k++)
        if (read[k]) copy[n[0]++] = k;
    for (k = 0, n[1] = 0; k < t->n_out; k++)
        if (!written[k]) copy[n[0] + n[1]++] = k;
    free(read);
    free(written);
    return JX_OK;
}

int32_t jx_tape_split(const jx_tape *t, int32_t *out_time, int32_t *span_out)
{
    int32_t *when;   /* the time each slot was last written in the chain, or -1 */
    int64_t span = 0, gap = 0, depth = 0, halo;
    int32_t r, i = 0, j, k;
    int m;
    *span_out = 0;
    for (k = 0; k < t->n_out; k++) out_time[k] = -1;
    if (!t->runs || t->n_blocks > 0 || t->n_runs < 2) return -1;
    for (r = 0; r + 1 < t->n_runs; r++)   /* one chain, the whole tape */
        if (!(t->runs[(size_t)JX_RUN_FIELDS * r + 5] & JX_RUN_TILE_NEXT)) return -1;
    when = (int32_t *)malloc((size_t)t->n_slots * sizeof(int32_t));
    if (!when) return -1;   /* (no memory: no split) */
    for (k = 0; k < t->n_slots; k++) when[k] = -1;
    for (r = 0; r < t->n_runs; r++) {
        const int32_t *run = t->runs + (size_t)JX_RUN_FIELDS * r;
        const int32_t L = run[0], lag = run[JX_RUN_LAG];
        if (L >= JX_RUN_MIN_LEN) {   /* a long run: element k at time lag + k */
            const int reads = jx_reads(t->op[i]);
            const int64_t d0 = t->dst[i];
            if (run[1] != 1) break;
            depth++;
            for (m = 0; m < 3; m++) {
                const int64_t base = m == 0 ? t->a[i] : m == 1 ? t->b[i] : t->s[i];
                if (!(reads & (1 << m))) continue;
                for (k = 0; k < L; k++) {
                    const int64_t at = base + (int64_t)k * run[2 + m];
                    if (at >= d0 && at < d0 + L) break;   /* reads its own values */
                    if (when[at] >= 0 && lag + k - when[at] > gap) gap = lag + k - when[at];
                }
                if (k < L) break;
            }
            if (m < 3) break;
            for (k = 0; k < L; k++) when[d0 + k] = lag + k;
            if (lag + L > span) span = lag + L;
        } else {                     /* a short run: all at time lag, in order */
            for (j = i; j < i + L; j++) {
                const int reads = jx_reads(t->op[j]);
                const int32_t slot[3] = {t->a[j], t->b[j], t->s[j]};
                depth++;
                for (m = 0; m < 3; m++)
                    if ((reads & (1 << m)) && when[slot[m]] >= 0 && lag - when[slot[m]] > gap)
                        gap = lag - when[slot[m]];
                when[t->dst[j]] = lag;
            }
            if (lag + 1 > span) span = lag + 1;
        }
        i += L;
    }
    for (k = 0; k < t->n_out; k++) out_time[k] = when[t->out_slot[k]];
    free(when);
    if (r < t->n_runs) return -1;   /* a run that reads its own values, or not unit steps */
    halo = (depth * gap + JX_TILE - 1) / JX_TILE * JX_TILE;
    if (span < JX_SPLIT_MIN_SPAN || halo * JX_SPLIT_HALO_SHARE > span) return -1;
    *span_out = (int32_t)span;
    return (int32_t)halo;
}

/* Elements off .. off+len-1 of a run, in order (run_values.h): a plain copy and, where
   the CPU has it, an AVX2 copy (kernels.h), chosen once per sweep. */
typedef void (*jx_run_fn)(const jx_tape *, double *, int32_t, const int32_t *, ptrdiff_t,
                          ptrdiff_t);
/* The same loop on pointers (a contiguous run, in the slots or in rings) */
typedef void (*jx_run_ptr_fn)(int32_t, double, double *, const double *, const double *,
                              const double *, ptrdiff_t);

#define JX_RUN_FN jx_forward_run_base
#define JX_RUN_PTR_FN jx_run_ptr_base
#define JX_RUN_ATTR
#include "run_values.h"
#undef JX_RUN_FN
#undef JX_RUN_PTR_FN
#undef JX_RUN_ATTR

#if JX_X86_DISPATCH
#define JX_RUN_FN jx_forward_run_avx2
#define JX_RUN_PTR_FN jx_run_ptr_avx2
#define JX_RUN_ATTR JX_TARGET_AVX2
#include "run_values.h"
#undef JX_RUN_FN
#undef JX_RUN_PTR_FN
#undef JX_RUN_ATTR
#endif

static jx_run_fn jx_run_values(void)
{
#if JX_X86_DISPATCH
    if (jx_have_avx2()) return jx_forward_run_avx2;
#endif
    return jx_forward_run_base;
}

static jx_run_ptr_fn jx_run_ptrs(void)
{
#if JX_X86_DISPATCH
    if (jx_have_avx2()) return jx_run_ptr_avx2;
#endif
    return jx_run_ptr_base;
}

/* A single point's inputs and outputs where the caller holds them (jx_point_value_parts):
   part k holds input slots lo[k] .. lo[k+1]-1; y the outputs (NULL: the runs keep them in
   their slots). */
typedef struct {
    int32_t n_parts;
    int64_t lo[JX_MAX_PARTS + 1];
    const double *part[JX_MAX_PARTS];
    double *y;
} jx_io;

/* Elements lo .. lo+len-1 of a pointer run (JX_RUN_ON_POINTERS): each operand in its ring
   (JX_RUN_RING in vm.h; element k at k mod JX_RING of the ring whose writer's first slot
   is ring_dst[ring]; ring_dst NULL: no rings), in the caller's inputs or outputs (io, or
   NULL), or in the slots, the run cut where a ring wraps or an input part ends.  The same
   loop on the same doubles as the run in the slots. */
static void jx_run_at(const jx_tape *t, double *value, int32_t i, const int32_t *run,
                      ptrdiff_t lo, ptrdiff_t len, double *scratch, const int64_t *ring_dst,
                      const jx_io *io, jx_run_ptr_fn run_ptr)
{
    const int32_t word = t->op[i];
    const int reads = jx_reads(word);
    const int64_t base[4] = {t->dst[i], t->a[i], t->b[i], t->s[i]};
    ptrdiff_t k = lo;
    const ptrdiff_t end = lo + len;
    int m;
    while (k < end) {
        double *pz = value;
        const double *p[4];   /* p[0]: pz */
        ptrdiff_t seg = end - k;
        for (m = 0; m < 4; m++) {
            const int32_t ring = !ring_dst || run[JX_RUN_RING + m] < 0
                                     ? -1 : JX_RING_OF(run[JX_RUN_RING + m]);
            double *slots = ring < 0 ? value + base[m] + k : NULL;
            if (m > 0 && !(reads & (1 << (m - 1)))) {
                slots = value + base[m];          /* not read */
            } else if (ring >= 0) {
                const int64_t at = (base[m] - ring_dst[ring] + k) & (JX_RING - 1);
                if (JX_RING - at < seg) seg = (ptrdiff_t)(JX_RING - at);
                slots = scratch + (size_t)ring * JX_RING + at;
            } else if (io && m == 0 && io->y && run[JX_RUN_OUT] >= 0) {
                slots = io->y + run[JX_RUN_OUT] + k;
            } else if (io && m > 0 && base[m] + k < t->n_in) {
                const int64_t at = base[m] + k;
                int q = 0;
                while (at >= io->lo[q + 1]) q++;
                if (io->lo[q + 1] - at < seg) seg = (ptrdiff_t)(io->lo[q + 1] - at);
                p[m] = io->part[q] + (at - io->lo[q]);
                continue;
            }
            if (m == 0) pz = slots;
            p[m] = slots;
        }
        run_ptr(word, t->imm[i], pz, p[1], p[2], p[3], seg);
        k += seg;
    }
}

/* Value of instruction i, one at a time (the sweep without runs, and short runs). */
static inline void jx_forward_one(const jx_tape *t, double *value, int32_t i)
{
    const int32_t word = t->op[i];
    double a, b, s, z;
    JX_LOAD_OPERANDS(value, i, word);
    switch (word & JX_OP_MASK) {
#define OP(NAME, ARITY, COMMUTES, VALUE, D0, D1, FIXED) \
    case JX_OP_##NAME: z = (VALUE); break;
#include "ops.def"
#undef OP
    default: z = NAN; /* unreachable: the tape was checked */
    }
    (void)s;
    value[t->dst[i]] = z;
}

/* A short run of a chain that reads rings (jx_ring_reads): instruction by instruction,
   each operand from its ring (field JX_RUN_RING + 1 + j, 8 bits an operand: ring + 1) or
   its slot, the op's VALUE on them (jx_op_value: the same doubles as jx_forward_one). */
static void jx_short_rings(const jx_tape *t, double *value, int32_t i0, const int32_t *run,
                           const double *scratch, const int64_t *ring_dst)
{
    int32_t j;
    for (j = 0; j < run[0]; j++) {
        const int32_t i = i0 + j, word = t->op[i], packed = run[JX_RUN_RING + 1 + j];
        const int64_t slot[3] = {t->a[i], t->b[i], t->s[i]};
        double v[3];
        int m;
        if (packed < 0) {
            jx_forward_one(t, value, i);
            continue;
        }
        for (m = 0; m < 3; m++) {
            const int32_t ring = ((packed >> (8 * m)) & 0xff) - 1;
            v[m] = ring < 0 ? value[slot[m]]
                            : scratch[(size_t)ring * JX_RING
                                      + (size_t)((slot[m] - ring_dst[ring]) & (JX_RING - 1))];
        }
        value[t->dst[i]] = jx_op_value(word & JX_OP_MASK,
                                       (word & JX_A_IMM) ? t->imm[i] : v[0],
                                       (word & JX_B_IMM) ? t->imm[i] : v[1], v[2]);
    }
}

/* A tile chain, runs r .. e from instruction i (see jx_tile_chains): JX_TILE times at a
   time, each run on the elements whose time falls there; the instruction after it. */
static int32_t jx_forward_chain(const jx_tape *t, double *value, int32_t i, int32_t r,
                                int32_t e, jx_run_fn run_values, double *scratch,
                                const jx_io *io, ptrdiff_t t_lo, ptrdiff_t t_hi,
                                ptrdiff_t y_from)
{
    ptrdiff_t span = 0, t0;
    jx_io quiet;   /* io without the outputs: the tiles before y_from */
    int32_t q, iq = i;
    int64_t ring_dst[JX_TILE_MAX_CHAIN];   /* each ring's writer's first slot */
    int rings = 0;
    jx_run_ptr_fn run_ptr = io ? jx_run_ptrs() : NULL;
    for (q = r; q <= e; q++) {
        const int32_t *run = t->runs + (size_t)JX_RUN_FIELDS * q;
        const ptrdiff_t end = (ptrdiff_t)run[JX_RUN_LAG] + (run[0] < JX_RUN_MIN_LEN ? 1 : run[0]);
        if (end > span) span = end;
        if (scratch && run[JX_RUN_RING] >= 0) {
            ring_dst[JX_RING_OF(run[JX_RUN_RING])] = t->dst[iq];
            rings = 1;
            run_ptr = jx_run_ptrs();
        }
        iq += run[0];
    }
    if (io) {
        quiet = *io;
        quiet.y = NULL;
    }
    if (t_hi < 0 || t_hi > span) t_hi = span;
    for (t0 = t_lo; t0 < t_hi; t0 += JX_TILE) {
        const jx_io *wio = io && t0 < y_from ? &quiet : io;
        for (q = r, iq = i; q <= e; q++) {
            const int32_t *run = t->runs + (size_t)JX_RUN_FIELDS * q;
            const ptrdiff_t L = run[0], lag = run[JX_RUN_LAG];
            if (L < JX_RUN_MIN_LEN) {           /* a short run: all at its time */
                if (lag >= t0 && lag < t0 + JX_TILE) {
                    int32_t k;
                    if (rings && (run[JX_RUN_RING + 1] >= 0 || run[JX_RUN_RING + 2] >= 0
                                  || run[JX_RUN_RING + 3] >= 0))
                        jx_short_rings(t, value, iq, run, scratch, ring_dst);
                    else
                        for (k = iq; k < iq + L; k++) jx_forward_one(t, value, k);
                }
            } else {
                const ptrdiff_t lo = t0 - lag > 0 ? t0 - lag : 0;
                const ptrdiff_t hi = t0 + JX_TILE - lag < L ? t0 + JX_TILE - lag : L;
                const int32_t *ring = run + JX_RUN_RING;
                if (lo >= hi) {
                } else if ((rings && (ring[0] >= 0 || ring[1] >= 0 || ring[2] >= 0
                                      || ring[3] >= 0))
                           || (io && (run[5] & JX_RUN_CONTIGUOUS))) {
                    jx_run_at(t, value, iq, run, lo, hi - lo, scratch, rings ? ring_dst : NULL,
                              wio, run_ptr);
                } else {
                    run_values(t, value, iq, run, lo, hi - lo);
                }
            }
            iq += (int32_t)L;
        }
    }
    if (rings)   /* rings whose last values are needed past the chain: back to the slots */
        for (q = r, iq = i; q <= e; q++) {
            const int32_t *run = t->runs + (size_t)JX_RUN_FIELDS * q;
            if (run[JX_RUN_RING] >= 0 && (run[JX_RUN_RING] & JX_RING_BACK)) {
                const int32_t k = JX_RING_OF(run[JX_RUN_RING]);
                const ptrdiff_t L = run[0];
                ptrdiff_t el;
                for (el = L > JX_RING ? L - JX_RING : 0; el < L; el++)
                    value[t->dst[iq] + el] = scratch[(size_t)k * JX_RING + (size_t)(el & (JX_RING - 1))];
            }
            iq += run[0];
        }
    return iq;
}

/* A whole run outside a tile chain: on pointers where it may read the caller's inputs or
   write its outputs (io, contiguous), else on the slots. */
static void jx_run_whole(const jx_tape *t, double *value, int32_t i, const int32_t *run,
                         const jx_io *io, jx_run_fn run_values)
{
    if (io && (run[5] & JX_RUN_CONTIGUOUS))
        jx_run_at(t, value, i, run, 0, run[0], NULL, NULL, io, jx_run_ptrs());
    else
        run_values(t, value, i, run, 0, run[0]);
}

/* The value sweep over the decoded stream (jx_tape_code): the same VALUE of ops.def on
   the same operands as jx_forward_one, so the same doubles.  With GCC or clang each entry
   holds its handler's address and each handler jumps to the next entry's (direct threaded
   code: one indirect jump per handler, which the CPU predicts from the handler it is in;
   one shared switch jump mispredicted about every other instruction of a Jacobian tape);
   elsewhere a switch in a loop. */
#if defined(__GNUC__) || defined(__clang__)
#define JX_CODE_THREADED 1
#define JX_CASE(label, code) label:
#define JX_NEXT goto *(++p)->op.handler
#else
#define JX_CODE_THREADED 0
#define JX_CASE(label, code) case code:
#define JX_NEXT break
#endif

#if JX_CODE_THREADED   /* labels as values: a GNU C extension, in this function only */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpedantic"
#endif
/* With t NULL: the handlers' table (threaded code; NULL for the switch), which
   jx_tape_code writes into the entries (direct threading: one load to the next handler). */
static const void *const *jx_forward_code(const jx_tape *t, double *value, double *scratch,
                                          const jx_io *io)
{
    const jx_code *p;
    jx_run_fn run_values = NULL;
#if JX_CODE_THREADED
    static const void *const table[JX_N_CODES] = {
#define OP(NAME, ARITY, COMMUTES, VALUE, D0, D1, FIXED) \
        &&op_##NAME##_0, &&op_##NAME##_1, &&op_##NAME##_2,
#include "ops.def"
#undef OP
        &&code_run, &&code_chain, &&code_block, &&code_end
    };
    if (!t) return table;
    p = t->code;    /* ends with a JX_CODE_END entry */
    goto *p->op.handler;
#else
    if (!t) return NULL;
    p = t->code;
    for (;; p++) switch (p->op.code) {
#endif
/* one handler: op NAME with operands a, b in the operand kind KIND */
#define JX_HANDLER(NAME, KIND, ARITY, VALUE, AEXPR, BEXPR)                          \
    JX_CASE(op_##NAME##_##KIND, JX_CODE_OF(JX_OP_##NAME, KIND)) {                   \
        const double a = (AEXPR), b = (BEXPR);                                      \
        const double s = (ARITY) == 3 ? value[p->s] : 0.0;                          \
        (void)a; (void)b; (void)s;                                                  \
        value[p->dst] = (VALUE);                                                    \
    }                                                                               \
    JX_NEXT;
#define OP(NAME, ARITY, COMMUTES, VALUE, D0, D1, FIXED)                              \
    JX_HANDLER(NAME, 0, ARITY, VALUE, value[p->a], (ARITY) >= 2 ? value[p->b] : 0.0)  \
    JX_HANDLER(NAME, 1, ARITY, VALUE, value[p->a], p->imm)                          \
    JX_HANDLER(NAME, 2, ARITY, VALUE, p->imm, (ARITY) >= 2 ? value[p->b] : 0.0)
#include "ops.def"
#undef OP
#undef JX_HANDLER
    JX_CASE(code_run, JX_CODE_RUN) {
        if (!run_values) run_values = jx_run_values();
        jx_run_whole(t, value, p->a, t->runs + (size_t)JX_RUN_FIELDS * p->s, io, run_values);
    }
    JX_NEXT;
    JX_CASE(code_chain, JX_CODE_CHAIN) {
        if (!run_values) run_values = jx_run_values();
        jx_forward_chain(t, value, p->a, p->s, p->b, run_values, scratch, io, 0, -1, 0);
    }
    JX_NEXT;
    JX_CASE(code_block, JX_CODE_BLOCK) jx_block_op_value(t, p->s, value, 1);
    JX_NEXT;
    JX_CASE(code_end, JX_CODE_END) return NULL;
#if !JX_CODE_THREADED
    default:
        break;
    }
#endif
    return NULL;   /* not reached */
}
#if JX_CODE_THREADED
#pragma GCC diagnostic pop
#endif
#undef JX_CASE
#undef JX_NEXT

static void jx_code_one(const jx_tape *t, int32_t i, jx_code *c)
{
    /* (jx_tape_check allows at most one immediate operand) */
    const int32_t word = t->op[i];
    const int kind = (word & JX_A_IMM) ? 2 : (word & JX_B_IMM) ? 1 : 0;
    c->op.code = JX_CODE_OF(word & JX_OP_MASK, kind);
    c->dst = t->dst[i];
    c->a = t->a[i];
    c->b = t->b[i];
    c->s = t->s[i];
    c->imm = t->imm[i];
}

int32_t jx_tape_code(const jx_tape *t, jx_code *code)
{
    int32_t i = 0, n = 0, kb = 0, r = 0, k;
    jx_code scratch;   /* where entries go when only counted (code NULL) */
    while (i < t->n_instr) {
        jx_code *c = code ? code + n : &scratch;
        n++;
        memset(c, 0, sizeof *c);
        if (t->op[i] == JX_BLOCK) {       /* a block is a run of its own */
            c->op.code = JX_CODE_BLOCK;
            c->s = kb++;
            i++;
            r++;
        } else if (!t->runs) {
            jx_code_one(t, i++, c);
        } else {
            const int32_t *run = t->runs + (size_t)JX_RUN_FIELDS * r;
            if (run[5] & JX_RUN_TILE_NEXT) {   /* a tile chain: runs r .. e */
                int32_t e = r;
                while (t->runs[(size_t)JX_RUN_FIELDS * e + 5] & JX_RUN_TILE_NEXT) e++;
                c->op.code = JX_CODE_CHAIN;
                c->a = i;
                c->s = r;
                c->b = e;
                for (; r <= e; r++) i += t->runs[(size_t)JX_RUN_FIELDS * r];
            } else if (run[0] >= JX_RUN_MIN_LEN) {
                c->op.code = JX_CODE_RUN;
                c->a = i;
                c->s = r++;
                i += run[0];
            } else {
                n--;
                for (k = 0; k < run[0]; k++, n++) jx_code_one(t, i++, code ? code + n : &scratch);
                r++;
            }
        }
    }
    if (!code) return n;
    memset(code + n, 0, sizeof *code);   /* the sentinel the sweep stops at */
    code[n].op.code = JX_CODE_END;
    {
        const void *const *table = jx_forward_code(NULL, NULL, NULL, NULL);
        if (table)
            for (k = 0; k <= n; k++) {
                const int32_t c = code[k].op.code;
                code[k].op.handler = table[c];
            }
    }
    return n;
}

/* The value sweep; io NULL: the inputs in value[], the outputs left there. */
static void jx_forward_io(const jx_tape *t, double *value, double *scratch, const jx_io *io)
{
    int32_t i;
    int32_t kb = 0;
    if (t->code) {
        jx_forward_code(t, value, scratch, io);
        return;
    }
    if (t->runs) {
        const jx_run_fn run_values = jx_run_values();
        int32_t r;
        for (r = 0, i = 0; r < t->n_runs;) {
            const int32_t *run = t->runs + (size_t)JX_RUN_FIELDS * r;
            const int32_t L = run[0];
            if (t->op[i] == JX_BLOCK) {   /* a block is a run of its own */
                jx_block_op_value(t, kb++, value, 1);
                i++;
                r++;
            } else if (run[5] & JX_RUN_TILE_NEXT) {    /* a tile chain: runs r .. e */
                int32_t e = r;
                while (t->runs[(size_t)JX_RUN_FIELDS * e + 5] & JX_RUN_TILE_NEXT) e++;
                i = jx_forward_chain(t, value, i, r, e, run_values, scratch, io, 0, -1, 0);
                r = e + 1;
            } else if (L < JX_RUN_MIN_LEN) {
                const int32_t end = i + L;
                for (; i < end; i++) jx_forward_one(t, value, i);
                r++;
            } else {
                jx_run_whole(t, value, i, run, io, run_values);
                i += L;
                r++;
            }
        }
        return;
    }
    for (i = 0; i < t->n_instr; i++) {
        if (t->op[i] == JX_BLOCK)
            jx_block_op_value(t, kb++, value, 1);
        else
            jx_forward_one(t, value, i);
    }
}

void jx_forward(const jx_tape *t, double *value, double *scratch)
{
    jx_forward_io(t, value, scratch, NULL);
}

/* Value and local partials of instruction i (both forward sweeps inline this). */
static inline double jx_value_partials(const jx_tape *t, const double *value, int32_t i,
                                       double *p0, double *p1)
{
    const int32_t word = t->op[i];
    double a, b, s, z;
    JX_LOAD_OPERANDS(value, i, word);
    /* A partial for an immediate operand is never formed: x**2 at x < 0
       must not meet log(x). */
    switch (word & JX_OP_MASK) {
#define OP(NAME, ARITY, COMMUTES, VALUE, D0, D1, FIXED)  \
    case JX_OP_##NAME:                                  \
        z = (VALUE);                                    \
        *p0 = (word & JX_A_IMM) ? 0.0 : (D0);           \
        *p1 = (word & JX_B_IMM) ? 0.0 : (D1);           \
        break;
#include "ops.def"
#undef OP
    default: z = *p0 = *p1 = NAN;
    }
    (void)s;
    return z;
}

void jx_forward_partials(const jx_tape *t, double *value, double *d0, double *d1)
{
    int32_t i = 0, kb, end;
    for (kb = 0; kb <= t->n_blocks; kb++) {
        for (end = jx_segment_end(t, kb); i < end; i++)
            value[t->dst[i]] = jx_value_partials(t, value, i, &d0[i], &d1[i]);
        if (kb < t->n_blocks) {   /* a block: its partials are W (d0, d1 unused) */
            jx_block_op_value(t, kb, value, 1);
            d0[i] = d1[i] = 0.0;
            i++;
        }
    }
}

/* One instruction's tangent lanes from its partials (zero kills, see above). */
static inline void jx_tangent_step(double p0, double p1, double *td, const double *ta,
                                   const double *tb, int32_t lanes)
{
    int32_t k;
    if (p1 == 0.0) {
        if (p0 == 0.0) {
            for (k = 0; k < lanes; k++) td[k] = 0.0;
        } else if (isfinite(p0)) {
            for (k = 0; k < lanes; k++) td[k] = p0 * ta[k];
        } else {
            for (k = 0; k < lanes; k++) td[k] = jx_zmul(p0, ta[k]);
        }
    } else if (p0 == 0.0) {
        if (isfinite(p1)) {
            for (k = 0; k < lanes; k++) td[k] = p1 * tb[k];
        } else {
            for (k = 0; k < lanes; k++) td[k] = jx_zmul(p1, tb[k]);
        }
    } else if (isfinite(p0) && isfinite(p1)) {
        for (k = 0; k < lanes; k++) td[k] = p0 * ta[k] + p1 * tb[k];
    } else {
        for (k = 0; k < lanes; k++)
            td[k] = jx_zmul(p0, ta[k]) + jx_zmul(p1, tb[k]);
    }
}

void jx_tangent_sweep(const jx_tape *t, const double *value, const double *d0,
                      const double *d1, double *tangent, int32_t lanes)
{
    int32_t i = 0, kb, end;
    const size_t K = (size_t)lanes;
    for (kb = 0; kb <= t->n_blocks; kb++) {
        for (end = jx_segment_end(t, kb); i < end; i++)
            jx_tangent_step(d0[i], d1[i], tangent + (size_t)t->dst[i] * K,
                            tangent + (size_t)t->a[i] * K, tangent + (size_t)t->b[i] * K,
                            lanes);
        if (kb < t->n_blocks) {
            jx_block_op_tangent(t, kb, value, 1, tangent, lanes);
            i++;
        }
    }
}

/*
 * Values, partials and tangents in one pass: when one tangent sweep covers
 * every direction, the partials are used where they are made and never
 * stored.  Same arithmetic as jx_forward_partials + jx_tangent_sweep.
 */
static void jx_forward_tangent(const jx_tape *t, double *value, double *tangent, int32_t lanes)
{
    int32_t i = 0, kb, end;
    const size_t K = (size_t)lanes;
    for (kb = 0; kb <= t->n_blocks; kb++) {
        for (end = jx_segment_end(t, kb); i < end; i++) {
            double p0, p1;
            value[t->dst[i]] = jx_value_partials(t, value, i, &p0, &p1);
            jx_tangent_step(p0, p1, tangent + (size_t)t->dst[i] * K,
                            tangent + (size_t)t->a[i] * K, tangent + (size_t)t->b[i] * K,
                            lanes);
        }
        if (kb < t->n_blocks) {
            jx_block_op_value(t, kb, value, 1);
            jx_block_op_tangent(t, kb, value, 1, tangent, lanes);
            i++;
        }
    }
}

static void jx_adjoint_range(const jx_tape *t, const double *d0, const double *d1,
                             double *adjoint, int32_t lanes, int32_t lo, int32_t hi);

void jx_adjoint_sweep(const jx_tape *t, const double *value, const double *d0,
                      const double *d1, double *adjoint, int32_t lanes)
{
    int32_t kb;
    /* segments last to first: the scalar instructions after block kb, then the block */
    for (kb = t->n_blocks - 1; kb >= 0; kb--) {
        const int32_t ib = jx_block_instr(t, kb);
        jx_adjoint_range(t, d0, d1, adjoint, lanes, ib + 1, jx_segment_end(t, kb + 1));
        jx_block_op_adjoint(t, kb, value, 1, adjoint, lanes);
    }
    jx_adjoint_range(t, d0, d1, adjoint, lanes, 0, jx_segment_end(t, 0));
}

/* The adjoint sweep over scalar instructions lo .. hi-1 (no block among them). */
static void jx_adjoint_range(const jx_tape *t, const double *d0, const double *d1,
                             double *adjoint, int32_t lanes, int32_t lo, int32_t hi)
{
    int32_t i, k;
    const size_t K = (size_t)lanes;
    /* Going backwards, instruction i is where slot dst[i]'s value is born:
       every use has already added into its adjoint.  Pass it on, then clear
       it for the value that held the slot before (slots are reused).  Each
       lane is read before it is written, so dst may alias a or b. */
    for (i = hi - 1; i >= lo; i--) {
        const double p0 = d0[i], p1 = d1[i];
        double *ad = adjoint + (size_t)t->dst[i] * K;
        double *aa = adjoint + (size_t)t->a[i] * K;
        double *ab = adjoint + (size_t)t->b[i] * K;
        if (p0 == 0.0 && p1 == 0.0) {
            for (k = 0; k < lanes; k++) ad[k] = 0.0;
        } else if (p1 == 0.0) {
            if (isfinite(p0)) {
                for (k = 0; k < lanes; k++) {
                    double g = ad[k];
                    ad[k] = 0.0;
                    aa[k] += p0 * g;
                }
            } else {
                for (k = 0; k < lanes; k++) {
                    double g = ad[k];
                    ad[k] = 0.0;
                    aa[k] += jx_zmul(p0, g);
                }
            }
        } else if (p0 == 0.0) {
            if (isfinite(p1)) {
                for (k = 0; k < lanes; k++) {
                    double g = ad[k];
                    ad[k] = 0.0;
                    ab[k] += p1 * g;
                }
            } else {
                for (k = 0; k < lanes; k++) {
                    double g = ad[k];
                    ad[k] = 0.0;
                    ab[k] += jx_zmul(p1, g);
                }
            }
        } else {
            for (k = 0; k < lanes; k++) {
                double g = ad[k];
                ad[k] = 0.0;
                aa[k] += jx_zmul(p0, g);
                ab[k] += jx_zmul(p1, g);
            }
        }
    }
}

/* The tape that runs at the point x (see jx_tape.exact in vm.h): t, or its exact tape
   with that tape's constants loaded into w; NULL where t holds only within its bound and
   has no exact tape (the caller gives nan outputs). */
static void jx_load_consts(const jx_tape *t, jx_work *w)
{
    if (w->consts != t) {
        if (t->n_const > 0)
            memcpy(w->value + t->n_in, t->const_value, (size_t)t->n_const * sizeof(double));
        w->consts = t;
    }
}

const jx_tape *jx_tape_at(const jx_tape *t, jx_work *w, const double *x)
{
    if (t->bound > 0.0 && !jx_in_bound(t, x)) t = t->exact;
    if (t) jx_load_consts(t, w);
    return t;
}

static void jx_fill_nan(double *p, size_t n)
{
    size_t k;
    if (p)
        for (k = 0; k < n; k++) p[k] = NAN;
}

static void jx_load_point(const jx_tape *t, jx_work *w, const double *x)
{
    if (t->n_in > 0) memcpy(w->value, x, (size_t)t->n_in * sizeof(double));
}

static void jx_store_outputs(const jx_tape *t, const jx_work *w, double *y)
{
    int32_t i;
    if (!y) return;
    for (i = 0; i < t->n_out; i++) y[i] = w->value[t->out_slot[i]];
}

int jx_point_value(const jx_tape *t, jx_work *w, const double *x, double *y)
{
    return jx_point_value_parts(t, w, NULL, 1, &x, &t->n_in, y);
}

/* The inputs that t's value sweep reads in the work (io_copy), into value. */
static void jx_copy_inputs(const jx_tape *t, const jx_io *io, double *value)
{
    int32_t k, q;
    if (!t->io_copy || t->n_in_copy == t->n_in) {
        for (k = 0; k < io->n_parts; k++)
            if (io->lo[k + 1] > io->lo[k])
                memcpy(value + io->lo[k], io->part[k],
                       (size_t)(io->lo[k + 1] - io->lo[k]) * sizeof(double));
        return;
    }
    for (k = 0, q = 0; k < t->n_in_copy; k++) {   /* (in increasing order) */
        const int32_t s = t->io_copy[k];
        while (s >= io->lo[q + 1]) q++;
        value[s] = io->part[q][s - io->lo[q]];
    }
}

/* The outputs into y that the sweep left in the work: those no run wrote in place (all of
   them where y took none: io->y NULL, or no io lists), each from w, or from `late` where
   its time is T or later (a split point's helper; NULL: none). */
static void jx_gather_outputs(const jx_tape *t, const jx_io *io, double *y, const jx_work *w,
                              const jx_work *late, ptrdiff_t T)
{
    const int listed = t->io_copy && io->y;
    const int32_t n = listed ? t->n_out_copy : t->n_out;
    int32_t k;
    for (k = 0; k < n; k++) {
        const int32_t o = listed ? t->io_copy[t->n_in_copy + k] : k;
        y[o] = (late && t->out_time[o] >= T ? late : w)->value[t->out_slot[o]];
    }
}

/* One thread's share of a split single point (jx_tape_split): the chain's tiles lo .. hi,
   the outputs written in place from y_from on. */
typedef struct {
    const jx_tape *t;
    jx_work *w;
    const jx_io *io;
    ptrdiff_t lo, hi, y_from;
} jx_half;

static void jx_half_run(void *arg)
{
    const jx_half *h = (const jx_half *)arg;
    jx_forward_chain(h->t, h->w->value, 0, 0, h->t->n_runs - 1, jx_run_values(),
                     h->w->scratch, h->io, h->lo, h->hi, h->y_from);
}

/* A single point of a tape that splits, on two threads: the times before T in w, from
   T - split_halo on in the helper; each output gathered from the work whose thread made
   it (out_time). */
static void jx_split_point(const jx_tape *t, jx_work *w, jx_work *helper, const jx_io *io,
                           double *y)
{
    const ptrdiff_t T = ((ptrdiff_t)t->split_span + t->split_halo) / 2 / JX_TILE * JX_TILE;
    jx_half mine, other;
    jx_thread th;
    mine.t = other.t = t;
    mine.io = other.io = io;
    mine.w = w;
    mine.lo = 0;
    mine.hi = T;
    mine.y_from = 0;
    other.w = helper;
    other.lo = T - t->split_halo;
    other.hi = t->split_span;
    other.y_from = T;
    jx_load_consts(t, helper);
    jx_copy_inputs(t, io, helper->value);
#ifndef _WIN32
    if (jx_helper_post(jx_half_run, &other)) {
        jx_half_run(&mine);
        jx_helper_wait();
    } else {
        jx_half_run(&mine);
        jx_half_run(&other);
    }
    (void)th;
#else
    jx_thread_start(&th, jx_half_run, &other);
    jx_half_run(&mine);
    jx_thread_join(&th);
#endif
    if (y) jx_gather_outputs(t, io, y, w, helper, T);
}

int jx_point_value_parts(const jx_tape *t, jx_work *w, jx_work *helper, int32_t n_parts,
                         const double *const *part, const int32_t *width, double *y)
{
    jx_io io;
    int32_t k;
    const int32_t n_out = t->n_out;
    if (n_parts < 1 || n_parts > JX_MAX_PARTS) return JX_EARG;
    io.n_parts = n_parts;
    io.lo[0] = 0;
    for (k = 0; k < n_parts; k++) {
        if (width[k] < 0) return JX_EARG;
        io.part[k] = part[k];
        io.lo[k + 1] = io.lo[k] + width[k];
    }
    if (io.lo[n_parts] != t->n_in) return JX_EARG;
    for (k = 0; k < n_parts && t->bound > 0.0; k++)
        if (!jx_in_bound_n(t->bound, part[k], (size_t)width[k])) {
            t = t->exact;
            break;
        }
    if (!t) {
        jx_fill_nan(y, (size_t)n_out);
        return JX_OK;
    }
    jx_load_consts(t, w);
    /* the outputs in place only where they do not overlap an input */
    io.y = y;
    for (k = 0; k < n_parts && y; k++)
        if (width[k] > 0 && (uintptr_t)y < (uintptr_t)(part[k] + width[k])
            && (uintptr_t)part[k] < (uintptr_t)(y + n_out))
            io.y = NULL;
    jx_copy_inputs(t, &io, w->value);
    if (helper && t->io_copy && t->split_halo >= 0 && t->out_time) {
        jx_split_point(t, w, helper, &io, y);
        return JX_OK;
    }
    jx_forward_io(t, w->value, w->scratch, t->io_copy ? &io : NULL);
    if (y) jx_gather_outputs(t, &io, y, w, NULL, 0);
    return JX_OK;
}

int jx_point_outputs(const jx_tape *t, jx_work *w, const double *x, double *y0, int32_t n0,
                     double *y1)
{
    int32_t i;
    const jx_tape *at;
    if (n0 < 0 || n0 > t->n_out) return JX_EARG;
    at = jx_tape_at(t, w, x);
    if (!at) {
        jx_fill_nan(y0, (size_t)n0);
        jx_fill_nan(y1, (size_t)(t->n_out - n0));
        return JX_OK;
    }
    t = at;
    jx_load_point(t, w, x);
    jx_forward(t, w->value, w->scratch);
    if (y0)
        for (i = 0; i < n0; i++) y0[i] = w->value[t->out_slot[i]];
    for (i = n0; i < t->n_out; i++) y1[i - n0] = w->value[t->out_slot[i]];
    return JX_OK;
}

/*
 * Forward: lane k of a sweep seeds every column whose colour is k (a dense
 * Jacobian is the colouring colour[c] = c), so comp[i, k] is the sum of the
 * row-i entries over the columns of colour k; with a valid column colouring
 * that sum has one term.
 */
static void jx_jacobian_forward(const jx_tape *t, jx_work *w, double *comp,
                                const int32_t *cols, int32_t n_cols,
                                const int32_t *colour, int32_t n_colours)
{
    const int32_t K = n_colours < w->lanes ? n_colours : w->lanes;
    const size_t fixed = (size_t)(t->n_in + t->n_const) * (size_t)K;
    int32_t k0, k, i, c;
    for (k0 = 0; k0 < n_colours; k0 += K) {
        const int32_t kk = (n_colours - k0 < K) ? n_colours - k0 : K;
        /* inputs and constants: zero tangents but for this chunk's seeds */
        memset(w->lane, 0, fixed * sizeof(double));
        for (c = 0; c < n_cols; c++) {
            const int32_t col = colour ? colour[c] : c;
            if (col >= k0 && col < k0 + kk) w->lane[(size_t)cols[c] * K + (col - k0)] = 1.0;
        }
        jx_tangent_sweep(t, w->value, w->d0, w->d1, w->lane, K);
        for (i = 0; i < t->n_out; i++) {
            const double *src = w->lane + (size_t)t->out_slot[i] * K;
            double *row = comp + (size_t)i * n_colours + k0;
            for (k = 0; k < kk; k++) row[k] = src[k];
        }
    }
}

/* Reverse: lane k seeds every output row of colour k; comp is n_colours x n_cols. */
static void jx_jacobian_reverse(const jx_tape *t, jx_work *w, double *comp,
                                const int32_t *cols, int32_t n_cols,
                                const int32_t *colour, int32_t n_colours)
{
    const int32_t K = n_colours < w->lanes ? n_colours : w->lanes;
    int32_t k0, k, c, i;
    if (K == 0) return;
    /* After a sweep every temporary's adjoint is zero again (the sweep clears
       each slot where its value is born); only inputs and constants keep
       what they gathered, and the prefix memset clears them. */
    memset(w->lane, 0, (size_t)t->n_slots * (size_t)K * sizeof(double));
    for (k0 = 0; k0 < n_colours; k0 += K) {
        const int32_t kk = (n_colours - k0 < K) ? n_colours - k0 : K;
        if (k0 > 0)
            memset(w->lane, 0, (size_t)(t->n_in + t->n_const) * (size_t)K * sizeof(double));
        for (i = 0; i < t->n_out; i++) {
            const int32_t row = colour ? colour[i] : i;
            if (row >= k0 && row < k0 + kk) w->lane[(size_t)t->out_slot[i] * K + (row - k0)] += 1.0;
        }
        jx_adjoint_sweep(t, w->value, w->d0, w->d1, w->lane, K);
        for (k = 0; k < kk; k++) {
            double *dst = comp + (size_t)(k0 + k) * n_cols;
            for (c = 0; c < n_cols; c++) dst[c] = w->lane[(size_t)cols[c] * K + k];
        }
    }
}

int jx_point_compressed(const jx_tape *t, jx_work *w, const double *x, double *y,
                        double *comp, const int32_t *cols, int32_t n_cols,
                        const int32_t *colour, int32_t n_colours, int mode)
{
    const jx_tape *at = jx_tape_at(t, w, x);
    if (!at) {
        jx_fill_nan(y, (size_t)t->n_out);
        jx_fill_nan(comp, mode == JX_MODE_FORWARD ? (size_t)t->n_out * (size_t)n_colours
                                                  : (size_t)n_colours * (size_t)n_cols);
        return JX_OK;
    }
    t = at;
    jx_load_point(t, w, x);
    if (mode == JX_MODE_FORWARD && n_colours > 0 && n_colours <= w->lanes && n_cols > 0
        && t->n_out > 0) {
        /* every colour in one sweep: fuse it with the forward sweep */
        const int32_t K = n_colours;
        int32_t c, i, k;
        memset(w->lane, 0, (size_t)(t->n_in + t->n_const) * (size_t)K * sizeof(double));
        for (c = 0; c < n_cols; c++)
            w->lane[(size_t)cols[c] * K + (colour ? colour[c] : c)] = 1.0;
        jx_forward_tangent(t, w->value, w->lane, K);
        jx_store_outputs(t, w, y);
        for (i = 0; i < t->n_out; i++) {
            const double *src = w->lane + (size_t)t->out_slot[i] * K;
            double *row = comp + (size_t)i * n_colours;
            for (k = 0; k < K; k++) row[k] = src[k];
        }
        return JX_OK;
    }
    jx_forward_partials(t, w->value, w->d0, w->d1);
    jx_store_outputs(t, w, y);
    if (n_cols == 0 || t->n_out == 0 || n_colours == 0) return JX_OK;
    if (mode == JX_MODE_FORWARD)
        jx_jacobian_forward(t, w, comp, cols, n_cols, colour, n_colours);
    else if (mode == JX_MODE_REVERSE)
        jx_jacobian_reverse(t, w, comp, cols, n_cols, colour, n_colours);
    else
        return JX_EARG;
    return JX_OK;
}

int jx_point_jacobian(const jx_tape *t, jx_work *w, const double *x, double *y,
                      double *jac, const int32_t *cols, int32_t n_cols, int mode)
{
    /* the dense Jacobian: every column (forward) or row (reverse) its own colour */
    return jx_point_compressed(t, w, x, y, jac, cols, n_cols, NULL,
                               mode == JX_MODE_FORWARD ? n_cols : t->n_out, mode);
}

int jx_point_jvp(const jx_tape *t, jx_work *w, const double *x, const double *v,
                 double *y, double *ydot)
{
    int32_t i;
    const jx_tape *at = jx_tape_at(t, w, x);
    if (!at) {
        jx_fill_nan(y, (size_t)t->n_out);
        jx_fill_nan(ydot, (size_t)t->n_out);
        return JX_OK;
    }
    t = at;
    jx_load_point(t, w, x);
    jx_forward_partials(t, w->value, w->d0, w->d1);
    jx_store_outputs(t, w, y);
    /* one lane: the first n_slots entries of the lane array */
    if (t->n_in > 0) memcpy(w->lane, v, (size_t)t->n_in * sizeof(double));
    for (i = 0; i < t->n_const; i++) w->lane[t->n_in + i] = 0.0;
    jx_tangent_sweep(t, w->value, w->d0, w->d1, w->lane, 1);
    for (i = 0; i < t->n_out; i++) ydot[i] = w->lane[t->out_slot[i]];
    return JX_OK;
}

int jx_point_vjp(const jx_tape *t, jx_work *w, const double *x, const double *u,
                 double *y, double *xbar)
{
    int32_t i;
    const jx_tape *at = jx_tape_at(t, w, x);
    if (!at) {
        jx_fill_nan(y, (size_t)t->n_out);
        jx_fill_nan(xbar, (size_t)t->n_in);
        return JX_OK;
    }
    t = at;
    jx_load_point(t, w, x);
    jx_forward_partials(t, w->value, w->d0, w->d1);
    jx_store_outputs(t, w, y);
    memset(w->lane, 0, (size_t)t->n_slots * sizeof(double));
    for (i = 0; i < t->n_out; i++) w->lane[t->out_slot[i]] += u[i];
    jx_adjoint_sweep(t, w->value, w->d0, w->d1, w->lane, 1);
    if (t->n_in > 0) memcpy(xbar, w->lane, (size_t)t->n_in * sizeof(double));
    return JX_OK;
}
