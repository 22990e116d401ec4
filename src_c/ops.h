/*
 * ops.h -- the op enum, name and arity tables, and the scalar helpers that
 * the value and partial formulas of ops.def call.  Everything op-specific is
 * generated from ops.def.
 */
#ifndef JACEXT_OPS_H
#define JACEXT_OPS_H

#include <math.h>
#include <stdint.h>

#define JX_LN2 0.693147180559945309417232121458176568
#define JX_LN10 2.30258509299404568401799145468436421
#define JX_2_SQRTPI 1.12837916709551257389615890312154517

typedef enum {
#define OP(NAME, ARITY, COMMUTES, VALUE, D0, D1, FIXED) JX_OP_##NAME,
#include "ops.def"
#undef OP
    JX_N_OPS
} jx_op;

/*
 * An instruction's op word is the op number plus flag bits.  A flagged
 * operand is the instruction's immediate constant instead of a slot
 * ("constants are immediates", DESIGN.md); its partial is never formed.
 */
#define JX_OP_MASK 0xff
#define JX_A_IMM 0x100
#define JX_B_IMM 0x200

/* FIXED column of ops.def: when the partials are constants */
#define JX_K 1     /* always */
#define JX_K_BI 2  /* when b is an immediate */
#define JX_K_AI 4  /* when a is an immediate */

extern const char *const jx_op_names[JX_N_OPS];
extern const int jx_op_fixed[JX_N_OPS];
extern const int jx_op_arity[JX_N_OPS];
extern const int jx_op_commutes[JX_N_OPS];

/* Value of one op on scalars: constant folding uses the very code the VM runs. */
double jx_op_value(int op, double a, double b, double s);
/* Local partials of one op on scalars (tests and folding checks). */
void jx_op_partials(int op, double a, double b, double s, double *d0, double *d1);

/* ---- scalar helpers used by ops.def (NumPy's semantics) ---- */

static inline double jx_sign(double a)
{
    /* np.sign: nan -> nan, +-0 -> 0 */
    return (a > 0.0) ? 1.0 : ((a < 0.0) ? -1.0 : (a == 0.0 ? 0.0 : a));
}

static inline double jx_maximum(double a, double b)
{
    /* np.maximum propagates nan from either side */
    return (a >= b || a != a) ? a : b;
}

static inline double jx_minimum(double a, double b)
{
    return (a <= b || a != a) ? a : b;
}

/* d max(a, b) / da: 1 where a wins, 0 where b wins, 1/2 at a tie. */
static inline double jx_dmax(double a, double b)
{
    return (a > b) ? 1.0 : ((a == b) ? 0.5 : (b != b ? 0.0 : (a != a ? 1.0 : 0.0)));
}

static inline double jx_dmin(double a, double b)
{
    return (a < b) ? 1.0 : ((a == b) ? 0.5 : (b != b ? 0.0 : (a != a ? 1.0 : 0.0)));
}

/* fmax ignores a nan operand: the other one wins outright. */
static inline double jx_dfmax(double a, double b)
{
    if (a != a) return 0.0;   /* a nan a never wins (fmax(nan, b) == b) */
    if (b != b) return 1.0;
    return jx_dmax(a, b);
}

static inline double jx_dfmin(double a, double b)
{
    if (a != a) return 0.0;
    if (b != b) return 1.0;
    return jx_dmin(a, b);
}

static inline double jx_dpow_base(double a, double b)
{
    /* b * a**(b-1); b == 0 gives exactly 0 (x**0 is constant 1 everywhere) */
    return (b == 0.0) ? 0.0 : b * pow(a, b - 1.0);
}

static inline double jx_dpow_exp(double a, double z)
{
    /* z * log(a); 0**b (b > 0) is 0 for all b nearby, so its slope is 0 */
    return (z == 0.0) ? 0.0 : z * log(a);
}

static inline double jx_mod(double a, double b)
{
    /* np.remainder (Python's %): the result takes the sign of b */
    double m;
    if (b == 0.0) return fmod(a, b); /* nan, as NumPy */
    m = fmod(a, b);
    if (m != 0.0) {
        if ((b < 0.0) != (m < 0.0)) m += b;
    } else {
        m = copysign(0.0, b);
    }
    return m;
}

static inline double jx_floordiv(double a, double b)
{
    /* np.floor_divide, whose value is the mod's quotient */
    double m, div, fdiv;
    if (b == 0.0) return a / b;
    m = fmod(a, b);
    div = (a - m) / b;
    if (m != 0.0 && ((b < 0.0) != (m < 0.0))) div -= 1.0;
    if (div != 0.0) {
        fdiv = floor(div);
        if (div - fdiv > 0.5) fdiv += 1.0;
    } else {
        fdiv = copysign(0.0, a / b);
    }
    return fdiv;
}

static inline double jx_logaddexp(double a, double b)
{
    /* np.logaddexp, stable for large |a - b| */
    double t;
    if (a == b) return a + JX_LN2; /* also handles a == b == +-inf */
    t = a - b;
    if (t > 0.0) return a + log1p(exp(-t));
    if (t <= 0.0) return b + log1p(exp(t));
    return t; /* nan */
}

static inline double jx_expit(double a)
{
    /* scipy.special.expit, without overflow for large |a| */
    if (a >= 0.0) return 1.0 / (1.0 + exp(-a));
    else {
        double e = exp(a);
        return e / (1.0 + e);
    }
}

static inline double jx_logit(double a)
{
    /* scipy.special.logit: log(a / (1 - a)) cancels near a = 1/2 (a million
       ulp at 0.5000001); there, log1p(2 (a - 1/2) / (1 - a)) is exact-ish */
    if (a > 0.3 && a < 0.65) return log1p(2.0 * (a - 0.5) / (1.0 - a));
    return log(a / (1.0 - a));
}

#endif
