/*
 * kernels.h -- the small pieces every sweep shares, each defined once:
 *
 *   jx_reads        which operand slots an instruction reads (a, b, s)
 *   jx_zmul         the zero-kill multiply of the derivative sweeps
 *   jx_nonfinite_*  finiteness checks that vectorise
 *   jx_have_avx2    whether the AVX2 copies of the value loops may run
 *
 * Zero kills: a zero partial, tangent or adjoint contributes exactly zero,
 * even against an infinite or nan factor, so that
 * np.where(x > 0, np.sqrt(x), 0.0) has a finite derivative at 0 in every mode.
 * Values keep NumPy's nan/inf unchanged; only derivative products use jx_zmul.
 */
#ifndef JACEXT_KERNELS_H
#define JACEXT_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "ops.h"

/* C99's restrict (MSVC spells it __restrict): what the sweeps' inner loops need to
   vectorise without alias checks */
#ifdef _MSC_VER
#define JX_RESTRICT __restrict
#else
#define JX_RESTRICT restrict
#endif

/* AVX2 copies of the value sweeps' loops (the batched block sweep, the single-point
   runs), picked at run time: GCC and clang on x86-64 Linux (wheels must run on any
   x86-64, so nothing is built for AVX2 alone).  Only AVX2: no FMA, so every product and
   sum is rounded as in the plain copy. */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && defined(__linux__) \
    && !defined(JACEXT_NO_DISPATCH)
#define JX_X86_DISPATCH 1
#define JX_TARGET_AVX2 __attribute__((target("avx2")))
static inline int jx_have_avx2(void)
{
    /* (no __builtin_cpu_init: it writes a global, and is needed only before constructors) */
    return __builtin_cpu_supports("avx2");
}
#else
#define JX_X86_DISPATCH 0
#endif

/* Operand-read mask of an op word: which of the instruction's slots a, b, s it reads.
   An immediate operand is no slot; s is SELECT's condition (the op of arity 3). */
#define JX_READS_A 1
#define JX_READS_B 2
#define JX_READS_S 4

static inline int jx_reads(int32_t word)
{
    const int op = word & JX_OP_MASK;
    const int arity = jx_op_arity[op];
    return (!(word & JX_A_IMM) ? JX_READS_A : 0)
           | ((arity >= 2 && !(word & JX_B_IMM)) ? JX_READS_B : 0)
           | (arity == 3 ? JX_READS_S : 0);
}

/* d * t where a zero factor on either side gives exactly zero (zero kills). */
static inline double jx_zmul(double d, double t)
{
    return (d == 0.0 || t == 0.0) ? 0.0 : d * t;
}

/*
 * Finiteness without a branch per element: x - x is 0 for finite x and nan
 * for inf and nan, so a sum of them is 0 exactly when every term was finite.
 * jx_nonfinite_acc adds p[l] - p[l] into acc[l] (one accumulator per lane: a
 * block's points, no serial chain; jx_nonfinite_acc2 two arrays at once; batch.c's
 * jx_copy_entries while copying); jx_acc_finite then says whether all of
 * acc[0 .. n) stayed 0.  jx_all_finite checks one contiguous array with four
 * accumulators.
 */
static inline void jx_nonfinite_acc(double *JX_RESTRICT acc, const double *JX_RESTRICT p,
                                    ptrdiff_t n)
{
    ptrdiff_t l;
    for (l = 0; l < n; l++) acc[l] += p[l] - p[l];
}

/* The same over two arrays at once (the partials d0 and d1 of one instruction). */
static inline void jx_nonfinite_acc2(double *JX_RESTRICT acc, const double *JX_RESTRICT p,
                                     const double *JX_RESTRICT q, ptrdiff_t n)
{
    ptrdiff_t l;
    for (l = 0; l < n; l++) acc[l] += (p[l] - p[l]) + (q[l] - q[l]);
}

static inline int jx_acc_finite(const double *acc, ptrdiff_t n)
{
    ptrdiff_t l;
    int finite = 1;
    for (l = 0; l < n; l++) finite &= (acc[l] == 0.0);
    return finite;
}

static inline int jx_all_finite(const double *p, ptrdiff_t n)
{
    double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
    ptrdiff_t k = 0;
    for (; k + 4 <= n; k += 4) {
        a0 += p[k] - p[k];
        a1 += p[k + 1] - p[k + 1];
        a2 += p[k + 2] - p[k + 2];
        a3 += p[k + 3] - p[k + 3];
    }
    for (; k < n; k++) a0 += p[k] - p[k];
    return (a0 + a1) + (a2 + a3) == 0.0;
}

#endif
