/*
 * guards.h -- direct guards: the guards of a guarded tape (jacext/_guards.pyx) that compare
 * an input with a constant or with another input, checked straight from the point.
 *
 * Each guard is a predicate on its operands a = x[ia] and b (the constant cb, or x[ib])
 * that must be true: the tape's comparison, or its negation where the branch taken was
 * the false one.  The comparisons are C's own on the same doubles, as the tape's value
 * sweep makes them ((double)(a < b), ops.def), so nan, inf, signed zeros and ties come
 * out as the sweep's; a negation is written as one (!(a < b) is true on a nan, where
 * a >= b is not).  The guards are grouped by predicate into segments, so that the loop
 * over a segment tests one fixed predicate: a few instructions a guard.
 */
#ifndef JACEXT_GUARDS_H
#define JACEXT_GUARDS_H

#include <stdint.h>

/* the predicates: a OP b, and not (a OP b); a != b is not (a == b) */
enum {
    JX_G_LT, JX_G_NOT_LT, JX_G_LE, JX_G_NOT_LE, JX_G_GT, JX_G_NOT_GT, JX_G_GE, JX_G_NOT_GE,
    JX_G_EQ, JX_G_NE,
    JX_G_KINDS
};
/* a segment's kind: the predicate, plus JX_G_PAIR where b is an input (x[ib]) */
#define JX_G_PAIR 16
#define JX_G_SEG_FIELDS 3   /* kind, first guard, end */

typedef struct {
    const int32_t *ia;      /* per guard: input of operand a */
    const int32_t *ib;      /* per guard: input of operand b (pair segments) */
    const double *cb;       /* per guard: the constant b (other segments) */
    const int32_t *seg;     /* JX_G_SEG_FIELDS per segment */
    int32_t n_seg;
} jx_guards;

#define JX_G_LOOP(B, HOLDS)                                  \
    for (k = lo; k < hi; k++) {                              \
        const double a = x[g->ia[k]], b = (B);               \
        if (!(HOLDS)) return 0;                              \
    }                                                        \
    break;

#define JX_G_CASES(OFFSET, B)                                                  \
    case OFFSET + JX_G_LT: JX_G_LOOP(B, a < b)                                 \
    case OFFSET + JX_G_NOT_LT: JX_G_LOOP(B, !(a < b))                          \
    case OFFSET + JX_G_LE: JX_G_LOOP(B, a <= b)                                \
    case OFFSET + JX_G_NOT_LE: JX_G_LOOP(B, !(a <= b))                         \
    case OFFSET + JX_G_GT: JX_G_LOOP(B, a > b)                                 \
    case OFFSET + JX_G_NOT_GT: JX_G_LOOP(B, !(a > b))                          \
    case OFFSET + JX_G_GE: JX_G_LOOP(B, a >= b)                                \
    case OFFSET + JX_G_NOT_GE: JX_G_LOOP(B, !(a >= b))                         \
    case OFFSET + JX_G_EQ: JX_G_LOOP(B, a == b)                                \
    case OFFSET + JX_G_NE: JX_G_LOOP(B, !(a == b))

/* 1 when the point x holds every guard of g, else 0. */
static inline int jx_guards_hold(const jx_guards *g, const double *x)
{
    int32_t s, k, lo, hi;
    for (s = 0; s < g->n_seg; s++) {
        lo = g->seg[JX_G_SEG_FIELDS * s + 1];
        hi = g->seg[JX_G_SEG_FIELDS * s + 2];
        switch (g->seg[JX_G_SEG_FIELDS * s]) {
            JX_G_CASES(0, g->cb[k])
            JX_G_CASES(JX_G_PAIR, x[g->ib[k]])
        default:
            return 0;
        }
    }
    return 1;
}

#undef JX_G_CASES
#undef JX_G_LOOP

#endif
