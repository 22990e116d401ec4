/*
 * ops.h -- the op enum, name and arity tables, and the scalar helpers that
 * the value and partial formulas of ops.def call.  Everything op-specific is
 * generated from ops.def.
 */
#ifndef JACEXT_OPS_H
#define JACEXT_OPS_H

#include <math.h>
#include <stdint.h>

/* Named constants of ops.def's formulas, once: C sees them as static doubles, and
   jx_op_constants (vm.c) hands the same doubles to the Python rules (jacext/ops.py). */
#define JX_CONSTANTS(X)                                  \
    X(JX_LN2, 0.693147180559945309417232121458176568)    \
    X(JX_LN10, 2.30258509299404568401799145468436421)    \
    X(JX_2_SQRTPI, 1.12837916709551257389615890312154517)
#define JX_DEFINE_CONSTANT(NAME, VALUE) static const double NAME = VALUE;
JX_CONSTANTS(JX_DEFINE_CONSTANT)
#undef JX_DEFINE_CONSTANT

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

/* The expression graph's own node kinds (jacext/_graph.pyx), numbered past the ops and
   below any op word with a flag: an input, a constant. */
#define JX_KIND_INPUT JX_N_OPS
#define JX_KIND_CONST (JX_N_OPS + 1)
/* ... and row b of block a (a matrix times a vector of nodes: passes.pyx lowers a block's
   rows to one block instruction, vm.h) */
#define JX_KIND_BLOCK (JX_N_OPS + 2)

/* FIXED column of ops.def: when the partials are constants */
#define JX_K 1     /* always */
#define JX_K_BI 2  /* when b is an immediate */
#define JX_K_AI 4  /* when a is an immediate */

extern const char *const jx_op_names[JX_N_OPS];
extern const int jx_op_fixed[JX_N_OPS];
extern const int jx_op_arity[JX_N_OPS];
extern const int jx_op_commutes[JX_N_OPS];

/* ops.def as text, for the Python derivative rules (jacext/ops.py): each row's
   VALUE, D0 and D1 as written there, the helpers, and the named constants. */
typedef struct {
    const char *value, *d0, *d1;
} jx_op_text_row;
typedef struct {
    const char *name, *p, *q, *expr;
} jx_helper_text_row;
typedef struct {
    const char *name;
    double value;
} jx_constant_row;
extern const jx_op_text_row jx_op_text[JX_N_OPS];
extern const jx_helper_text_row jx_helper_text[];
extern const int jx_n_helpers;
extern const jx_constant_row jx_op_constants[];
extern const int jx_n_op_constants;

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

/* ---- the derivative helpers of ops.def ---- */
#define HELPER(NAME, P, Q, EXPR) \
    static inline double NAME(double P, double Q) { return (EXPR); }
#include "ops.def"
#undef HELPER

#endif
