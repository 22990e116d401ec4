/*
 * block_values.h -- the value sweep over a block of exactly JX_VB points,
 * included by batch.c once per instruction set (JX_VALUES_FN names it,
 * JX_VALUES_ATTR is its target attribute): the same C, compiled for the
 * baseline and, on x86-64 with GCC or clang, for AVX2, picked at run time.
 * Both copies do the same IEEE operations in the same order (C99 without
 * FP contraction: no FMA), so their results are identical bit for bit.
 *
 * The block size is a compile-time constant and the pointers are restrict
 * (dst is never an operand's slot, jx_tape_check), so each handler compiles
 * to a fixed-length vector loop with no alias checks, no remainder and no
 * spreading of immediates: what is left per instruction is the dispatch,
 * which the JX_VB points share.  One handler per op word (op and which
 * operand is an immediate), so no branch inside a handler; with GCC or clang
 * each handler jumps to the next instruction's itself (threaded code, as
 * vm.c's jx_forward_code): a shared switch jump, mispredicted about every
 * other instruction of a Jacobian tape, cost about a third of the sweep.
 *
 * sin and cos of the same slot value (sin(q), and cos(q) for its partial)
 * are one sincos call where the C library has one (glibc: the same
 * results as sin and cos, tests/test_jactape.py checks): the first of the
 * pair computes both and stashes the other for the second.
 */
#ifndef JX_BV_ONCE
#define JX_BV_ONCE
#if defined(__GNUC__) || defined(__clang__)
#define JX_BV_THREADED 1
#define JX_BV_CASE(label, word) label:
#define JX_BV_NEXT                                                   \
    if (++i == n_instr) return;                                      \
    goto *table[t->op[i]]
#else
#define JX_BV_THREADED 0
#define JX_BV_CASE(label, word) case word:
#define JX_BV_NEXT break
#endif
/* the second of a sin/cos pair copies the value its first stashed */
#if JX_HAVE_SINCOS
#define JX_BV_SINCOS(IS_SIN, PAIR, PF)                                        \
    {                                                                         \
        const int32_t k = (PAIR);                                             \
        double *JX_RESTRICT st = stash + (size_t)(k >> 1) * JX_VB;            \
        if (k & 1) {                                                          \
            for (l = 0; l < JX_VB; l++) pz[l] = st[l];                        \
        } else if (IS_SIN) {                                                  \
            for (l = 0; l < JX_VB; l++) { sincos(pa[l], &pz[l], &st[l]); PF; } \
        } else {                                                              \
            for (l = 0; l < JX_VB; l++) { sincos(pa[l], &st[l], &pz[l]); PF; } \
        }                                                                     \
    }
#else
#define JX_BV_SINCOS(IS_SIN, PAIR, PF)
#endif
/* the words a checked tape holds (jx_tape_check): an op, at most one immediate, or a block */
#define JX_BV_WORDS (JX_BLOCK + 1)
/* each op's value as a function, for the fused entries of the stream (block_code.c) */
#define OP(NAME, ARITY, COMMUTES, VALUE, D0, D1, FIXED)                                   \
    static inline double jx_bv_##NAME(double a, double b, double s)                       \
    {                                                                                     \
        (void)a; (void)b; (void)s;                                                        \
        return (VALUE);                                                                   \
    }
#include "ops.def"
#undef OP
/* While the C library computes a block's sines and cosines (some 13 ns a call here), the
   stream sweep prefetches the lines that the copy of the block's results will write
   (pf .. pf_end: four lines a call, into L2 for writing), so that their misses overlap the
   calls instead of stalling the copy after the sweep (arm's batch: 5% less time). */
#if defined(__GNUC__) || defined(__clang__)
#define JX_BC_PF                                                                          \
    if (pf < pf_end) {                                                                    \
        __builtin_prefetch(pf, 1, 2);                                                     \
        __builtin_prefetch(pf + 64, 1, 2);                                                \
        __builtin_prefetch(pf + 128, 1, 2);                                               \
        __builtin_prefetch(pf + 192, 1, 2);                                               \
        pf += 256;                                                                        \
    }
#else
#define JX_BC_PF (void)0
#endif
#if JX_BV_THREADED
#define JX_BC_CASE(label, code) label:
#define JX_BC_NEXT                                                   \
    if (++e == end) return;                                          \
    goto *table[e->code]
#else
#define JX_BC_CASE(label, code) case code:
#define JX_BC_NEXT break
#endif
#endif

#if JX_BV_THREADED
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpedantic"
#endif
JX_VALUES_ATTR
static void JX_VALUES_FN(const jx_tape *t, double *V, double *stash)
{
    const int32_t n_instr = t->n_instr;
    int32_t i = 0, l, kb = 0;
#if JX_BV_THREADED
    static const void *const table[JX_BV_WORDS] = {
#define OP(NAME, ARITY, COMMUTES, VALUE, D0, D1, FIXED)                                   \
        [JX_OP_##NAME] = &&op_##NAME##_0, [JX_OP_##NAME | JX_B_IMM] = &&op_##NAME##_1,    \
        [JX_OP_##NAME | JX_A_IMM] = &&op_##NAME##_2,
#include "ops.def"
#undef OP
        [JX_BLOCK] = &&code_block
    };
    if (n_instr == 0) return;
    goto *table[t->op[0]];
#else
    for (; i < n_instr; i++) switch (t->op[i]) {
#endif
/* one handler: op NAME with its operands in kind KIND (0: slots, 1: b immediate, 2: a
   immediate) */
#define JX_BV_HANDLER(NAME, KIND, WORD, ARITY, VALUE, AEXPR, BEXPR)                     \
    JX_BV_CASE(op_##NAME##_##KIND, WORD) {                                              \
        double *JX_RESTRICT pz = V + (size_t)t->dst[i] * JX_VB;                         \
        const double *JX_RESTRICT pa = V + (size_t)t->a[i] * JX_VB;                     \
        const double *JX_RESTRICT pb = V + (size_t)t->b[i] * JX_VB;                     \
        const double *JX_RESTRICT ps = V + (size_t)t->s[i] * JX_VB;                     \
        const double c = t->imm[i];                                                     \
        (void)pa; (void)pb; (void)ps; (void)c;                                          \
        if (JX_HAVE_SINCOS && KIND == 0                                                 \
            && (JX_OP_##NAME == JX_OP_SIN || JX_OP_##NAME == JX_OP_COS)                 \
            && t->sincos_pair && t->sincos_pair[i] >= 0) {                              \
            JX_BV_SINCOS(JX_OP_##NAME == JX_OP_SIN, t->sincos_pair[i], (void)0)                    \
        } else {                                                                        \
            for (l = 0; l < JX_VB; l++) {                                               \
                const double a = (AEXPR), b = (BEXPR), s = ps[l];                       \
                (void)a; (void)b; (void)s;                                              \
                pz[l] = (VALUE);                                                        \
            }                                                                           \
        }                                                                               \
    }                                                                                   \
    JX_BV_NEXT;
#define OP(NAME, ARITY, COMMUTES, VALUE, D0, D1, FIXED)                                  \
    JX_BV_HANDLER(NAME, 0, JX_OP_##NAME, ARITY, VALUE, pa[l], pb[l])                     \
    JX_BV_HANDLER(NAME, 1, JX_OP_##NAME | JX_B_IMM, ARITY, VALUE, pa[l], c)              \
    JX_BV_HANDLER(NAME, 2, JX_OP_##NAME | JX_A_IMM, ARITY, VALUE, c, pb[l])
#include "ops.def"
#undef OP
#undef JX_BV_HANDLER
    JX_BV_CASE(code_block, JX_BLOCK)   /* a matrix product over the block's points (block.c) */
        jx_block_op_value(t, kb++, V, JX_VB);
    JX_BV_NEXT;
#if !JX_BV_THREADED
    default:
        break;
    }
#endif
    (void)stash;
}
#if JX_BV_THREADED
#pragma GCC diagnostic pop
#endif

/*
 * The same sweep over the tape's stream (t->bcode, block_code.c): the entries
 * of one instruction as above, and the fused ones -- MA, a product folded
 * into the sum that alone reads it, and DOT, two -- each one lane loop whose
 * products stay in registers.  pf .. pf_end: where the block's results go
 * (JX_BC_PF; NULL, NULL: nowhere).
 */
#if JX_BV_THREADED
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpedantic"
#endif
JX_VALUES_ATTR
static void JX_BCODE_FN(const jx_tape *t, double *V, double *stash, const char *pf,
                        const char *pf_end)
{
    const jx_bcode *e = t->bcode, *const end = t->bcode + t->n_bcode;
    int32_t l;
#if JX_BV_THREADED
    static const void *const table[JX_N_BCODES] = {
#define OP(NAME, ARITY, COMMUTES, VALUE, D0, D1, FIXED)                                   \
        [JX_CODE_OF(JX_OP_##NAME, 0)] = &&bc_##NAME##_0,                                \
        [JX_CODE_OF(JX_OP_##NAME, 1)] = &&bc_##NAME##_1,                                \
        [JX_CODE_OF(JX_OP_##NAME, 2)] = &&bc_##NAME##_2,
#include "ops.def"
#undef OP
        [JX_BC_MA + 0] = &&ma_0, [JX_BC_MA + 1] = &&ma_1, [JX_BC_MA + 2] = &&ma_2,
        [JX_BC_MA + 3] = &&ma_3, [JX_BC_MA + 4] = &&ma_4, [JX_BC_MA + 5] = &&ma_5,
        [JX_BC_MA + 6] = &&ma_6, [JX_BC_MA + 7] = &&ma_7,
        [JX_BC_DOT + 0] = &&dot_0, [JX_BC_DOT + 1] = &&dot_1, [JX_BC_DOT + 2] = &&dot_2,
        [JX_BC_DOT + 3] = &&dot_3, [JX_BC_DOT + 4] = &&dot_4, [JX_BC_DOT + 5] = &&dot_5,
    };
    if (e == end) return;
    goto *table[e->code];
#else
    for (; e < end; e++) switch (e->code) {
#endif
/* one entry's lane loop: z from the lanes of a, b, c, e (and imm) */
#define JX_BC_LOOP(ZEXPR)                                                               \
    {                                                                                   \
        double *JX_RESTRICT pz = V + (size_t)e->dst * JX_VB;                            \
        const double *JX_RESTRICT pa = V + (size_t)e->a * JX_VB;                        \
        const double *JX_RESTRICT pb = V + (size_t)e->b * JX_VB;                        \
        const double *JX_RESTRICT pc = V + (size_t)e->c * JX_VB;                        \
        const double *JX_RESTRICT pe = V + (size_t)e->e * JX_VB;                        \
        const double c = e->imm;                                                        \
        (void)pa; (void)pb; (void)pc; (void)pe; (void)c;                                \
        for (l = 0; l < JX_VB; l++) pz[l] = (ZEXPR);                                    \
    }
#define JX_BC_OP(NAME, KIND, AEXPR, BEXPR)                                              \
    JX_BC_CASE(bc_##NAME##_##KIND, JX_CODE_OF(JX_OP_##NAME, KIND))                      \
    if (JX_HAVE_SINCOS && KIND == 0                                                     \
        && (JX_OP_##NAME == JX_OP_SIN || JX_OP_##NAME == JX_OP_COS) && e->e >= 0) {     \
        double *JX_RESTRICT pz = V + (size_t)e->dst * JX_VB;                            \
        const double *JX_RESTRICT pa = V + (size_t)e->a * JX_VB;                        \
        (void)pz; (void)pa;                                                             \
        JX_BV_SINCOS(JX_OP_##NAME == JX_OP_SIN, e->e, JX_BC_PF)                         \
    } else JX_BC_LOOP(jx_bv_##NAME(AEXPR, BEXPR, pc[l]))                                \
    JX_BC_NEXT;
#define OP(NAME, ARITY, COMMUTES, VALUE, D0, D1, FIXED)                                  \
    JX_BC_OP(NAME, 0, pa[l], pb[l])                                                     \
    JX_BC_OP(NAME, 1, pa[l], c)                                                         \
    JX_BC_OP(NAME, 2, c, pb[l])
#include "ops.def"
#undef OP
/* MA: the product (b or imm its second factor) first or second in the sum */
#define JX_BC_MA_CASE(K, SUM, SECOND, FACTOR)                                           \
    JX_BC_CASE(ma_##K, JX_BC_MA + K)                                                    \
    JX_BC_LOOP(SECOND ? jx_bv_##SUM(pc[l], jx_bv_MUL(pa[l], FACTOR, 0.0), 0.0)          \
                      : jx_bv_##SUM(jx_bv_MUL(pa[l], FACTOR, 0.0), pc[l], 0.0))         \
    JX_BC_NEXT;
    JX_BC_MA_CASE(0, ADD, 0, pb[l])
    JX_BC_MA_CASE(1, ADD, 0, c)
    JX_BC_MA_CASE(2, ADD, 1, pb[l])
    JX_BC_MA_CASE(3, ADD, 1, c)
    JX_BC_MA_CASE(4, SUB, 0, pb[l])
    JX_BC_MA_CASE(5, SUB, 0, c)
    JX_BC_MA_CASE(6, SUB, 1, pb[l])
    JX_BC_MA_CASE(7, SUB, 1, c)
/* DOT: two products, at most one with an immediate factor */
#define JX_BC_DOT_CASE(K, SUM, F1, F2)                                                  \
    JX_BC_CASE(dot_##K, JX_BC_DOT + K)                                                  \
    JX_BC_LOOP(jx_bv_##SUM(jx_bv_MUL(pa[l], F1, 0.0), jx_bv_MUL(pc[l], F2, 0.0), 0.0))  \
    JX_BC_NEXT;
    JX_BC_DOT_CASE(0, ADD, pb[l], pe[l])
    JX_BC_DOT_CASE(1, ADD, c, pe[l])
    JX_BC_DOT_CASE(2, ADD, pb[l], c)
    JX_BC_DOT_CASE(3, SUB, pb[l], pe[l])
    JX_BC_DOT_CASE(4, SUB, c, pe[l])
    JX_BC_DOT_CASE(5, SUB, pb[l], c)
#undef JX_BC_DOT_CASE
#undef JX_BC_MA_CASE
#undef JX_BC_OP
#undef JX_BC_LOOP
#if !JX_BV_THREADED
    default:
        break;
    }
#endif
    (void)stash;
    (void)pf;
    (void)pf_end;
}
#if JX_BV_THREADED
#pragma GCC diagnostic pop
#endif
