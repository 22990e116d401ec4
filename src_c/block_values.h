/*
 * block_values.h -- the value sweep over a block of exactly JX_VB points,
 * included by batch.c once per instruction set (JX_VALUES_FN names it,
 * JX_VALUES_ATTR is its target attribute): the same C, compiled for the
 * baseline and, on x86-64 with GCC or clang, for AVX2, picked at run time.
 * Both copies do the same IEEE operations in the same order (C99 without
 * FP contraction: no FMA), so their results are identical bit for bit.
 *
 * The block size is a compile-time constant and the pointers are restrict
 * (dst is never an operand's slot, jx_tape_check), so each case compiles to
 * a fixed-length vector loop with no alias checks, no remainder and no
 * spreading of immediates: what is left per instruction is the dispatch,
 * which the JX_VB points share.
 *
 * sin and cos of the same slot value (sin(q), and cos(q) for its partial)
 * are one sincos call where the C library has one (glibc: the same
 * results as sin and cos, tests/test_jactape.py checks): the first of the
 * pair computes both and stashes the other for the second.
 */
JX_VALUES_ATTR
static void JX_VALUES_FN(const jx_tape *t, double *V, double *stash)
{
    int32_t i, l, kb = 0;
    for (i = 0; i < t->n_instr; i++) {
        const int32_t word = t->op[i];
        const double c = t->imm[i];
        if (word == JX_BLOCK) {   /* a matrix product over the block's points (block.c) */
            jx_block_op_value(t, kb++, V, JX_VB);
            continue;
        }
        double *JX_RESTRICT pz = V + (size_t)t->dst[i] * JX_VB;
        const double *JX_RESTRICT pa = V + (size_t)t->a[i] * JX_VB;
        const double *JX_RESTRICT pb = V + (size_t)t->b[i] * JX_VB;
        const double *JX_RESTRICT ps =
            ((word & JX_OP_MASK) == JX_OP_SELECT) ? V + (size_t)t->s[i] * JX_VB : pa;
#if JX_HAVE_SINCOS
        if (t->sincos_pair && t->sincos_pair[i] >= 0) {
            const int32_t k = t->sincos_pair[i];
            double *JX_RESTRICT st = stash + (size_t)(k >> 1) * JX_VB;
            if (k & 1) {   /* the second of the pair: its value is stashed */
                for (l = 0; l < JX_VB; l++) pz[l] = st[l];
            } else if ((word & JX_OP_MASK) == JX_OP_SIN) {
                for (l = 0; l < JX_VB; l++) sincos(pa[l], &pz[l], &st[l]);
            } else {
                for (l = 0; l < JX_VB; l++) sincos(pa[l], &st[l], &pz[l]);
            }
            continue;
        }
#else
        (void)stash;
#endif
        switch (word & JX_OP_MASK) {
#define OP(NAME, ARITY, COMMUTES, VALUE, D0, D1, FIXED)                  \
        case JX_OP_##NAME:                                               \
            if (word & JX_A_IMM) {                                       \
                JX_VLOOP(c, pb[l], VALUE)                                \
            } else if (word & JX_B_IMM) {                                \
                JX_VLOOP(pa[l], c, VALUE)                                \
            } else {                                                     \
                JX_VLOOP(pa[l], pb[l], VALUE)                            \
            }                                                            \
            break;
#include "ops.def"
#undef OP
        default:
            break;
        }
    }
}
