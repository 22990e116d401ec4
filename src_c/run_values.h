/*
 * run_values.h -- the value loop of one run (vm.c's single-point value sweep),
 * included once per instruction set: JX_RUN_FN names the copy, JX_RUN_ATTR its
 * target attribute.  The loop macros are defined on first inclusion.
 */
/*
 * Values of a run of instructions i .. i+L-1 with one op word: the same
 * arithmetic as one instruction at a time, in the same order, with the op
 * switch paid once.  Contiguous runs (no operand meets the dst range) go
 * through restrict pointers and vectorise.
 */

#ifndef JX_RUN_LOOP
#define JX_RUN_LOOP(AEXPR, BEXPR, SEXPR, VALUE)                              \
    for (k = 0; k < L; k++) {                                                \
        const double a = (AEXPR), b = (BEXPR), s = (SEXPR);                  \
        (void)a; (void)b; (void)s;                                           \
        value[d0 + k * sd] = (VALUE);                                        \
    }
#define JX_RUN_CLOOP(AEXPR, BEXPR, SEXPR, VALUE)                             \
    for (k = 0; k < len; k++) {                                              \
        const double a = (AEXPR), b = (BEXPR), s = (SEXPR);                  \
        (void)a; (void)b; (void)s;                                           \
        pz[k] = (VALUE);                                                     \
    }
#endif

/* len elements of a contiguous run (every step 1, no operand meeting the destination)
   at these pointers: into the slots, or a tile chain's rings (jx_forward_chain). */
JX_RUN_ATTR static void JX_RUN_PTR_FN(int32_t word, double c, double *JX_RESTRICT pz,
                                      const double *JX_RESTRICT pa,
                                      const double *JX_RESTRICT pb,
                                      const double *JX_RESTRICT ps, ptrdiff_t len)
{
    ptrdiff_t k;
    switch (word & JX_OP_MASK) {
#define OP(NAME, ARITY, COMMUTES, VALUE, D0, D1, FIXED)                      \
    case JX_OP_##NAME:                                                       \
        if (word & JX_A_IMM) {                                               \
            JX_RUN_CLOOP(c, ARITY >= 2 ? pb[k] : 0.0, 0.0, VALUE)            \
        } else if (word & JX_B_IMM) {                                        \
            JX_RUN_CLOOP(pa[k], c, 0.0, VALUE)                               \
        } else {                                                             \
            JX_RUN_CLOOP(pa[k], ARITY >= 2 ? pb[k] : 0.0,                    \
                         ARITY == 3 ? ps[k] : 0.0, VALUE)                    \
        }                                                                    \
        break;
#include "ops.def"
#undef OP
    default:
        break;
    }
}

/* Elements off .. off+len-1 of the run, in order. */
JX_RUN_ATTR static void JX_RUN_FN(const jx_tape *t, double *value, int32_t i,
                                  const int32_t *run, ptrdiff_t off, ptrdiff_t len)
{
    const int32_t word = t->op[i];
    const ptrdiff_t L = len;
    const ptrdiff_t sd = run[1], sa = run[2], sb = run[3], ss = run[4];
    const ptrdiff_t d0 = t->dst[i] + off * sd, a0 = t->a[i] + off * sa;
    const ptrdiff_t b0 = t->b[i] + off * sb, s0 = t->s[i] + off * ss;
    const double c = t->imm[i];
    ptrdiff_t k;
    if (run[5] & JX_RUN_CONTIGUOUS) {
        JX_RUN_PTR_FN(word, c, value + d0, value + a0, value + b0, value + s0, len);
        return;
    }
    switch (word & JX_OP_MASK) {
#define OP(NAME, ARITY, COMMUTES, VALUE, D0, D1, FIXED)                      \
    case JX_OP_##NAME:                                                       \
        if (word & JX_A_IMM) {                                               \
            JX_RUN_LOOP(c, value[b0 + k * sb], 0.0, VALUE)                   \
        } else if (word & JX_B_IMM) {                                        \
            JX_RUN_LOOP(value[a0 + k * sa], c, 0.0, VALUE)                   \
        } else {                                                             \
            JX_RUN_LOOP(value[a0 + k * sa], value[b0 + k * sb],              \
                        ARITY == 3 ? value[s0 + k * ss] : 0.0, VALUE)        \
        }                                                                    \
        break;
#include "ops.def"
#undef OP
    default:
        break;
    }
}

