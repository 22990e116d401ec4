/*
 * vm.h -- the jacext virtual machine: a flat tape and the sweeps over it.
 *
 * Slot layout of the work array:  [inputs | constants | temporaries]
 *   inputs      n_in slots, filled from the caller's point
 *   constants   n_const slots, filled once per work buffer (used only where an
 *               immediate cannot serve: np.where's branches, constant outputs)
 *   temporaries written by instructions; reused by liveness
 *
 * An instruction i computes slot dst[i] from slots a[i], b[i] (and, for
 * SELECT, the condition slot s[i]).  Unary ops and immediate operands point
 * their unused operand index at a valid slot and have a zero partial for it,
 * so derivative sweeps need no case for them; s[i] of an op without a
 * condition is a valid slot too (the lowering repeats a[i]).
 *
 * The C core never touches Python objects.  Functions return 0 or a negative
 * JX_E* status; the Cython layer raises.
 */
#ifndef JACEXT_VM_H
#define JACEXT_VM_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"
#include "ops.h"

#define JX_OK 0
#define JX_ENOMEM (-1)
#define JX_EBADTAPE (-2)
#define JX_EARG (-3)
#define JX_ETHREAD (-4)

/*
 * Block instructions: y = W x for a constant m x n matrix W (row-major, in the tape's
 * weights array) over contiguous slots, x in a .. a+n-1 and y in dst .. dst+m-1 (the two
 * ranges apart).  Such an instruction's op word is JX_BLOCK (no op of ops.def: it has no
 * scalar partials; its partials are W itself) and its b and s repeat a.  The blocks table
 * lists them in tape order, JX_BLOCK_FIELDS int64 per block: the instruction's index, m,
 * n, and W's offset in weights.  Every sweep runs the scalar instructions between two
 * blocks as before and a block as a matrix product over all its lanes at once (block.c):
 * values W X, tangents W T, adjoints A_x += W^T A_y, by the BLAS routines dgemm and dgemv
 * whose pointers the tape carries (the Cython layer takes them from SciPy's
 * scipy.linalg.cython_blas, so that the C core links against no BLAS of its own).
 *
 * A product block is the same instruction with both factors variable: Y = A B, A an
 * m x n and B an n x p matrix of slots, row-major and contiguous (A in a .. a+mn-1, B
 * right after it), Y's m x p in dst .. dst+mp-1.  Its table row holds -p in place of W's
 * offset.  Its partials are its operands' values, which the lowering keeps alive to the
 * end of the tape (passes.lower), so the derivative sweeps read them from the values:
 * tangents dA B + A dB, adjoints A_bar += Y_bar B^T and B_bar += A^T Y_bar.
 */
#define JX_BLOCK 0x400
#define JX_BLOCK_FIELDS 4
/* A block's tangent or adjoint lanes go by their nonzeros, not by BLAS, when at most one in
   JX_BLOCK_SPARSE of them is nonzero (block.c; a nonzero there costs m scattered
   multiply-adds, against m x n x L streamed ones for BLAS: measured with bench/blocks.py) */
#define JX_BLOCK_SPARSE 16

/* Fortran BLAS as scipy.linalg.cython_blas exports it (LP64: int) */
typedef void (*jx_dgemm_fn)(char *transa, char *transb, int *m, int *n, int *k, double *alpha,
                            double *a, int *lda, double *b, int *ldb, double *beta, double *c,
                            int *ldc);
typedef void (*jx_dgemv_fn)(char *trans, int *m, int *n, double *alpha, double *a, int *lda,
                            double *x, int *incx, double *beta, double *y, int *incy);

/* Lanes of one tangent or adjoint sweep: directions done together.  A batch's sweeps
   (points times lanes) take at most JX_MAX_LANES; a single point's take up to
   JX_POINT_LANES where its lane memory (n_slots lanes) fits in JX_POINT_LANE_BYTES: a
   64-wide dense block's tangents are then one GEMM, not four (mlp 64-64-64: 595,000 ->
   503,000 instructions per F.jacobian, callgrind). */
#define JX_MAX_LANES 16
#define JX_POINT_LANES 64
#define JX_POINT_LANE_BYTES (4 << 20)

/* The lanes of a single point's sweep for `need` directions (at least 1). */
static inline int32_t jx_point_lanes(int32_t n_slots, int32_t need)
{
    int64_t cap = JX_POINT_LANE_BYTES / (8 * (int64_t)(n_slots > 0 ? n_slots : 1));
    if (cap > JX_POINT_LANES) cap = JX_POINT_LANES;
    if (cap < JX_MAX_LANES) cap = JX_MAX_LANES;
    if (need > cap) need = (int32_t)cap;
    return need < 1 ? 1 : need;
}

typedef struct jx_tape {
    int32_t n_instr;
    int32_t n_slots;
    int32_t n_in;
    int32_t n_out;
    int32_t n_const;
    const int32_t *op;      /* n_instr: op number | JX_A_IMM | JX_B_IMM */
    const int32_t *dst;     /* n_instr */
    const int32_t *a;       /* n_instr */
    const int32_t *b;       /* n_instr */
    const int32_t *s;       /* n_instr: SELECT's condition slot (others: any valid slot) */
    const double *imm;      /* n_instr */
    const int32_t *out_slot;    /* n_out */
    const double *const_value;  /* n_const; slot n_in + k */
    /* Derived once from the above by jx_tape_fixed_partials (may be NULL):
       fixed[i] = 1 when instruction i's partials are the constants
       fixed_d0[i], fixed_d1[i] whatever its operands' values. */
    const unsigned char *fixed;
    const double *fixed_d0;
    const double *fixed_d1;
    /* Derived by jx_tape_sincos_pairs (may be NULL): sin and cos instructions
       of one slot value, which the batched value sweep computes with one
       sincos call: 2k for the first of pair k, 2k + 1 for the second, else -1. */
    const int32_t *sincos_pair;
    int32_t n_sincos;
    /* Derived by jx_tape_runs (may be NULL): the tape cut into runs of
       consecutive instructions with one op word (and immediate) whose dst, a,
       b (and SELECT's condition) slots step evenly -- one traced NumPy call
       over an array is one run.  JX_RUN_FIELDS int32 per run: length, the
       steps of dst, a, b, s, JX_RUN_CONTIGUOUS when every step is 1 and no
       instruction reads a slot the run writes, its tile chain's lag, and its
       rings (JX_RUN_RING).  The single-point value sweep pays its dispatch
       once per run. */
    const int32_t *runs;
    int32_t n_runs;
    /* Derived by jx_tape_code (may be NULL): the single-point value sweep's stream. */
    const struct jx_code *code;
    int32_t n_code;
    /* Derived by jx_tape_io (may be NULL: jx_point_value_parts then copies every input
       into the work and gathers every output from it): the input slots that an
       instruction outside the pointer runs reads in the work (n_in_copy of them, in
       increasing order; copied there first), then the output positions that no pointer run
       writes in place (n_out_copy; gathered after).  The pointer runs read the rest where
       the caller's arrays lie. */
    const int32_t *io_copy;
    int32_t n_in_copy;
    int32_t n_out_copy;
    /* Derived by jx_tape_split (split_halo -1: the tape does not split): a tape that is one
       tile chain runs a single point on two threads, each in work memory of its own
       (jx_point_value_parts with a helper work).  The chain's times 0 .. split_span-1 are
       cut at a tile T near the middle: the caller's thread runs the times before T; the
       helper runs from T - split_halo, so that every value it reads at time T or later
       was made by itself (split_halo: the chain's longest path of reads, each reaching
       back at most its longest gap, in whole tiles), and writes the outputs from T on.
       out_time[o]: the time output o's slot was last written (-1: an input or constant),
       which says whose work holds it. */
    int32_t split_span;
    int32_t split_halo;
    const int32_t *out_time;
    /* Derived by jx_tape_block_code (may be NULL: the batched value sweep then runs the
       tape itself): the batched value sweep's stream, with products fused into the sums
       that alone read them, over slots of its own (n_bcode_slots; the outputs' in
       bcode_out). */
    const struct jx_bcode *bcode;
    int32_t n_bcode;
    int32_t n_bcode_slots;
    const int32_t *bcode_out;
    /* Block instructions (see JX_BLOCK above); n_blocks 0 for a tape of scalars only. */
    int32_t n_blocks;
    const int64_t *blocks;      /* JX_BLOCK_FIELDS * n_blocks */
    const double *weights;      /* n_weights */
    int64_t n_weights;
    /* Derived by jx_tape_block_finite (may be NULL: none finite): 1 where a block's W
       holds only finite numbers, so that BLAS's products keep the zero kills. */
    const unsigned char *block_finite;
    jx_dgemm_fn dgemm;
    jx_dgemv_fn dgemv;
    /* Finite-input tapes (jacext/finite.py).  bound > 0: this tape's results hold at the
       points whose every input x has |x| <= bound (a nan fails); it was folded from
       `exact` (the tape as traced, NumPy's values at every point), which each point
       function runs in its place at any other point (jx_tape_at).  Where exact is NULL (a
       Jacobian tape built from a folded tape) such a point gets nan outputs instead, and
       the callers' non-finite checks redo it by the sweeps of the function's own tape.
       bound 0: the tape holds everywhere. */
    const struct jx_tape *exact;
    double bound;
} jx_tape;

/* Whether every input of the point x is within the tape's bound.  On the bits: with the
   sign cleared, a double's bits order as its magnitude, inf above every finite number and
   a nan above inf, so |x| <= B (a nan fails) is bits(|x|) <= bits(B); B - bits(|x|) then
   has its top bit clear.  Integer operations only, which vectorise in the baseline
   instruction set (the comparisons of doubles with an int accumulator did not: 13
   machine instructions an input, as many as the tape it guards, callgrind). */
static inline int jx_in_bound_n(double bound, const double *x, size_t n)
{
    const uint64_t magnitude = 0x7fffffffffffffffULL;
    uint64_t b, u, bad = 0;
    size_t i;
    memcpy(&b, &bound, sizeof b);
    for (i = 0; i < n; i++) {
        memcpy(&u, x + i, sizeof u);
        bad |= b - (u & magnitude);
    }
    return (bad >> 63) == 0;
}
static inline int jx_in_bound(const jx_tape *t, const double *x)
{
    return jx_in_bound_n(t->bound, x, (size_t)t->n_in);
}

#define JX_RUN_FIELDS 12
#define JX_RUN_CONTIGUOUS 1
/* Flag of a run whose tile chain goes on with the next run.  A chain is consecutive runs
   that the value sweep runs JX_TILE elements at a time, every run of the chain on its
   part of one tile before the next tile, so that the tile's data stays in cache between
   runs.  Each run has a lag (field JX_RUN_LAG): a long run (at least JX_TILE_MIN
   instructions, dst step 1, read steps 0 or 1) does its element k at time lag + k, a
   short one (under JX_RUN_MIN_LEN instructions) all of its elements at time lag; the lags
   are the least that keep every slot's writes and reads in the tape's order (a run that
   reads element k + 1 of what an earlier one wrote starts one element later).  A long run
   joins only at a lag of at most JX_TILE_LAG_MAX. */
#define JX_RUN_TILE_NEXT 2
#define JX_RUN_LAG 6
#define JX_TILE 1024
#define JX_TILE_MIN 4096
#define JX_TILE_MAX_CHAIN 64
#define JX_TILE_LAG_MAX 1024
/* Rings (fields JX_RUN_RING .. +3: the ring of the run's dst, a, b, s, or -1).  A long
   contiguous run of a chain whose values only later runs of the same chain read (long
   contiguous ones over ranges inside it, or short ones), and of which past the chain at
   most its last JX_RING values are needed, writes them into a ring of JX_RING elements of
   the work's scratch instead of its own slots, and those runs read them there: element k at
   k mod JX_RING.  A tile's runs then touch a few rings that stay in cache, where the slots
   of 10^5-element runs go to and from memory (rosen's HVP tape at n = 10^5: 7.2 MB of
   slots).  A reader lagging the ring's writer by g elements needs
   g + JX_TILE <= JX_RING (jx_chain_rings checks it). */
#define JX_RUN_RING 7
#define JX_RING 2048
/* In a run's dst ring field: copy the ring's last JX_RING elements back to their slots after
   the chain (one of them is needed past it).  The ring is the field's low 16 bits.  A short
   run's fields JX_RUN_RING + 1 + j hold its instruction j's rings, 8 bits an operand (a, b,
   s: ring + 1, 0 for the slots). */
#define JX_RING_BACK (1 << 16)
#define JX_RING_OF(field) ((field) & 0xffff)
/* A pointer run: contiguous, at least JX_RUN_MIN_LEN instructions.  Its value loop runs on
   pointers (in the slots, in rings, in the caller's inputs and outputs), every other
   instruction's on the work's slots. */
#define JX_RUN_ON_POINTERS(run) ((run)[0] >= JX_RUN_MIN_LEN && ((run)[5] & JX_RUN_CONTIGUOUS))
/* Field JX_RUN_OUT: o where a pointer run's values are the outputs o .. o+L-1, in order,
   each at no other output position, and no later instruction reads or writes its slots
   nor a ring holds them; else -1.  With the outputs' memory at hand
   (jx_point_value_parts) the run writes them there instead of its slots. */
#define JX_RUN_OUT 11
/* A single point splits a tape that is one tile chain over two threads (jx_tape_split)
   where the chain spans at least JX_SPLIT_MIN_SPAN times (a thread's start and join cost
   about as much as 10,000 elements of one run here) and its halo, redone by the helper, is
   at most 1 / JX_SPLIT_HALO_SHARE of the span. */
#define JX_SPLIT_MIN_SPAN 32768
#define JX_SPLIT_HALO_SHARE 8
/* A run shorter than this goes instruction by instruction in the value sweep: its
   dispatch (restrict pointers, the op switch, the operand kinds) costs more than the
   instructions themselves (arm: 109 runs of 1 and 77 of 2; callgrind, value sweep). */
#define JX_RUN_MIN_LEN 4

/* The single-point value sweep's instruction stream, decoded once from the tape (and its
   runs): an instruction's operand kinds are part of its code, one switch case per op and
   kind, so the sweep tests no flags per instruction and reads one 32-byte entry (the
   tape's own arrays are six); a run of JX_RUN_MIN_LEN or more, a tile chain or a block is
   one entry.  arm's dense Jacobian tape (956 instructions) at one point: 62,500 -> 12,700
   machine instructions per F.jacobian (docs/engine-notes.md, "The instruction stream"). */
typedef struct jx_code {
    union {
        const void *handler;   /* threaded code (GCC, clang): the handler's address */
        int32_t code;          /* elsewhere: JX_CODE_OF(op, kind), or JX_CODE_RUN .. END */
    } op;
    int32_t dst;
    int32_t a;      /* a's slot; RUN, CHAIN: the first instruction */
    int32_t b;      /* b's slot; CHAIN: its last run */
    int32_t s;      /* SELECT's condition slot; RUN, CHAIN: the first run; BLOCK: its number */
    double imm;
} jx_code;
/* kind 0: a and b slots; 1: b immediate; 2: a immediate */
#define JX_CODE_KINDS 3
#define JX_CODE_OF(op, kind) ((op) * JX_CODE_KINDS + (kind))
#define JX_CODE_RUN (JX_CODE_KINDS * JX_N_OPS)
#define JX_CODE_CHAIN (JX_CODE_RUN + 1)
#define JX_CODE_BLOCK (JX_CODE_RUN + 2)
#define JX_CODE_END (JX_CODE_RUN + 3)
#define JX_N_CODES (JX_CODE_RUN + 4)
/* Tapes whose stream would take more entries than this keep the tape's own arrays in the
   value sweep (an entry takes 32 bytes: 32 MiB here; a run is one entry). */
#define JX_CODE_MAX_ENTRIES (1 << 20)

/* An entry of the batched value sweep's stream (block_code.c): an instruction, code
   JX_CODE_OF(op, kind), its operands in a, b (SELECT's condition in c) and, for SIN and
   COS, its sincos pair in e (-1: none); or a sum with the products it alone reads fused
   in: MA, z = a * b + c (a * imm where the product had an immediate), with the sum's
   op and operand order (code JX_BC_MA + (sub * 2 + product second) * 2 + imm); DOT,
   z = a * b + c * e (code JX_BC_DOT + sub * 3 + 0, or 1 or 2 where the first or the
   second product's other factor is imm). */
typedef struct jx_bcode {
    int32_t code;
    int32_t dst;
    int32_t a;
    int32_t b;
    int32_t c;
    int32_t e;
    double imm;
} jx_bcode;
#define JX_BC_MA (JX_CODE_KINDS * JX_N_OPS)
#define JX_BC_DOT (JX_BC_MA + 8)
#define JX_N_BCODES (JX_BC_DOT + 6)

/* Private memory of one evaluation (one per thread). */
typedef struct {
    int32_t lanes;   /* capacity of the lane arrays */
    const jx_tape *consts;   /* the tape whose constants value[] holds (a tape or its exact) */
    double *value;   /* n_slots */
    double *d0;      /* n_instr */
    double *d1;      /* n_instr */
    double *lane;    /* n_slots * lanes: tangents or adjoints */
    double *scratch; /* the tile chains' rings: JX_RING each (NULL: the chains keep slots) */
} jx_work;

/* Checks every index of the tape once; the sweeps then run unchecked. */
int jx_tape_check(const jx_tape *t);
/* Fills fixed, d0, d1 (n_instr each) for a checked tape; returns how many are fixed. */
int32_t jx_tape_fixed_partials(const jx_tape *t, unsigned char *fixed, double *d0, double *d1);

/* Fills runs (JX_RUN_FIELDS * n_instr at most) as jx_tape.runs; returns the number of runs. */
int32_t jx_tape_runs(const jx_tape *t, int32_t *runs);
/* t's io_copy lists (vm.h jx_tape, over the runs t runs: t->runs), into copy (n_in +
   n_out int32) and their lengths into n[0], n[1]; JX_ENOMEM. */
int jx_tape_io(const jx_tape *t, int32_t *copy, int32_t n[2]);
/* t's split (vm.h jx_tape, over t->runs): returns split_halo (-1: no split), with the span
   in *span and out_time (n_out int32) filled. */
int32_t jx_tape_split(const jx_tape *t, int32_t *out_time, int32_t *span);
/* Fills code (n_instr + 1 entries at most) as jx_tape.code from a checked tape and its
   runs (jx_tape.runs, NULL for none); returns the number of entries before the closing
   JX_CODE_END.  code NULL: only counts them. */
int32_t jx_tape_code(const jx_tape *t, jx_code *code);
/* The bytes jx_tape_block_code asks for (0: the tape keeps its own sweep: it has blocks,
   or more than JX_CODE_MAX_ENTRIES instructions); jx_tape_block_code fills them (after
   jx_tape_sincos_pairs) and sets t's bcode fields; returns its entries, 0, or JX_ENOMEM. */
size_t jx_tape_block_code_bytes(const jx_tape *t);
int32_t jx_tape_block_code(jx_tape *t, void *mem);
/* Fills pair (n_instr) as jx_tape.sincos_pair; returns the number of pairs or JX_ENOMEM. */
int32_t jx_tape_sincos_pairs(const jx_tape *t, int32_t *pair);

/* Fills finite (n_blocks) as jx_tape.block_finite. */
void jx_tape_block_finite(const jx_tape *t, unsigned char *finite);

/* ---- block instructions (block.c) over L lanes: slot s's lanes at base + s * L ----
   The derivative sweeps' lanes are L = D x VB: slot s's lane (d, l) at base + s * L +
   d * VB + l, its value at value + s * VB + l (a point: VB = 1, D directions; a batch:
   VB points).  A block of W reads no values; a product block reads its operands'. */

/* Y = W X (Y = A B): the values (NumPy's W @ x, A @ B, through BLAS). */
void jx_block_op_value(const jx_tape *t, int32_t k, double *base, ptrdiff_t L);
/* T_y = W T_x (dA B + A dB): tangents, with the zero kills (a zero tangent or weight
   gives exactly 0). */
void jx_block_op_tangent(const jx_tape *t, int32_t k, const double *value, ptrdiff_t VB,
                         double *base, ptrdiff_t L);
/* A_x += W^T A_y (A_bar += Y_bar B^T, B_bar += A^T Y_bar), then A_y = 0: adjoints, with
   the zero kills. */
void jx_block_op_adjoint(const jx_tape *t, int32_t k, const double *value, ptrdiff_t VB,
                         double *base, ptrdiff_t L);
/* Block k's instruction index. */
static inline int32_t jx_block_instr(const jx_tape *t, int32_t k)
{
    return (int32_t)t->blocks[(size_t)JX_BLOCK_FIELDS * k];
}
/* The slots block k writes (m, or m x p for a product) and reads (n, or mn + np). */
static inline int64_t jx_block_rows(const jx_tape *t, int32_t k)
{
    const int64_t *f = t->blocks + (size_t)JX_BLOCK_FIELDS * k;
    return f[3] < 0 ? f[1] * -f[3] : f[1];
}
static inline int64_t jx_block_operands(const jx_tape *t, int32_t k)
{
    const int64_t *f = t->blocks + (size_t)JX_BLOCK_FIELDS * k;
    return f[3] < 0 ? f[2] * (f[1] - f[3]) : f[2];
}
/* Where the scalar instructions before block k end: block k's instruction, or n_instr
   when k is past the last block.  The sweeps go segment by segment with it. */
static inline int32_t jx_segment_end(const jx_tape *t, int32_t k)
{
    return k < t->n_blocks ? jx_block_instr(t, k) : t->n_instr;
}

/* n doubles aligned to a cache line (JX_LINE bytes), zeroed if asked; jx_lines_free
   frees them (vm.c) */
#define JX_LINE 64
double *jx_lines(size_t n, int zero);
void jx_lines_free(double *p);
/* Work for t and, where it has one, its exact tape (the larger of the two sizes). */
int jx_work_init(jx_work *w, const jx_tape *t, int32_t lanes);
/* The tape that runs at the point x (jx_tape.exact): t, or its exact tape (whose constants
   it loads into w); NULL where t holds only within its bound and has no exact tape. */
const jx_tape *jx_tape_at(const jx_tape *t, jx_work *w, const double *x);
void jx_work_free(jx_work *w);

/*
 * A flag threads may race for, as a Tape guards its own work memory with (jacext/_tape.pyx):
 * jx_flag_take returns 1 to the one caller that turns it from 0 to 1 (acquire), jx_flag_give
 * turns it back (release).  Atomic without the GIL (free-threaded CPython): GCC and clang's
 * __atomic builtins, MSVC's interlocked intrinsics.
 */
#ifdef _MSC_VER
#include <intrin.h>
typedef volatile long jx_flag;
static inline int jx_flag_take(jx_flag *f) { return _InterlockedExchange(f, 1) == 0; }
static inline void jx_flag_give(jx_flag *f) { _InterlockedExchange(f, 0); }
#else
typedef int jx_flag;
static inline int jx_flag_take(jx_flag *f) { return __atomic_exchange_n(f, 1, __ATOMIC_ACQUIRE) == 0; }
static inline void jx_flag_give(jx_flag *f) { __atomic_store_n(f, 0, __ATOMIC_RELEASE); }
#endif

/* Sweeps.  value[] must hold the inputs (and constants) before a forward sweep; scratch:
   the work's rings for the tile chains (jx_work.scratch; NULL: the chains keep slots). */
void jx_forward(const jx_tape *t, double *value, double *scratch);
void jx_forward_partials(const jx_tape *t, double *value, double *d0, double *d1);
void jx_tangent_sweep(const jx_tape *t, const double *value, const double *d0,
                      const double *d1, double *tangent, int32_t lanes);
void jx_adjoint_sweep(const jx_tape *t, const double *value, const double *d0,
                      const double *d1, double *adjoint, int32_t lanes);

/* ---- one point ---- */

#define JX_MODE_FORWARD 1
#define JX_MODE_REVERSE 2
#define JX_MODE_SUBGRAPH 3   /* sparse only: one reverse sweep per output over its cone */

/*
 * y (n_out, may be NULL) and the Jacobian J (n_out x n_cols, row-major) of the
 * outputs with respect to the inputs cols[0..n_cols).
 */
int jx_point_jacobian(const jx_tape *t, jx_work *w, const double *x, double *y,
                      double *jac, const int32_t *cols, int32_t n_cols, int mode);
/*
 * Compressed Jacobian (sparse colourings, jacext/sparse.py): forward, colour[c] is column
 * c's colour and comp is n_out x n_colours; reverse, colour[i] is output
 * row i's colour and comp is n_colours x n_cols.  colour NULL: the dense
 * Jacobian (every column, or row, its own colour).
 */
int jx_point_compressed(const jx_tape *t, jx_work *w, const double *x, double *y,
                        double *comp, const int32_t *cols, int32_t n_cols,
                        const int32_t *colour, int32_t n_colours, int mode);
int jx_point_value(const jx_tape *t, jx_work *w, const double *x, double *y);
/* The most arguments a single point (jx_point_value_parts) or a batch (jx_batch.part) passes
   unjoined; more are joined into one row first (jacext/arguments.py). */
#define JX_MAX_PARTS 16
/* The same with the point in n_parts arrays (at most JX_MAX_PARTS), part k holding the
   next width[k] inputs: the pointer runs read the inputs there and write the outputs into
   y (jx_tape_io's lists say what goes through the work) where y overlaps none of them.
   helper (or NULL): a second work memory of the tape (jx_work_init), with which a tape
   that splits (split_halo) runs on two threads. */
int jx_point_value_parts(const jx_tape *t, jx_work *w, jx_work *helper, int32_t n_parts,
                         const double *const *part, const int32_t *width, double *y);
/* The outputs split in two: the first n0 into y0 (NULL: not stored), the rest into y1 (a
   Jacobian tape's values, then its Jacobian straight into the caller's array). */
int jx_point_outputs(const jx_tape *t, jx_work *w, const double *x, double *y0, int32_t n0,
                     double *y1);
/* y and ydot = J v, v over all inputs */
int jx_point_jvp(const jx_tape *t, jx_work *w, const double *x, const double *v,
                 double *y, double *ydot);
/* y and xbar = J^T u, u over all outputs */
int jx_point_vjp(const jx_tape *t, jx_work *w, const double *x, const double *u,
                 double *y, double *xbar);

/* ---- batches (batch.c): n_points rows, threads split the rows ---- */

#define JX_TASK_VALUE 0
#define JX_TASK_JACOBIAN 1
#define JX_TASK_JVP 2
#define JX_TASK_VJP 3
#define JX_TASK_COMPRESSED 4
#define JX_TASK_SUBGRAPH 5

typedef struct {
    int task;
    int mode;                 /* for JX_TASK_JACOBIAN */
    const int32_t *cols;      /* for JX_TASK_JACOBIAN and _COMPRESSED */
    int32_t n_cols;
    const int32_t *colour;    /* for JX_TASK_COMPRESSED */
    int32_t n_colours;
    const int64_t *cone_ptr;  /* for JX_TASK_SUBGRAPH: jx_cones' lists */
    const int32_t *cone;
    const int32_t *row_ptr;   /* for JX_TASK_SUBGRAPH: the pattern's rows, and */
    const int32_t *nz_input;  /* the input index of each nonzero */
    /* for JX_TASK_JACOBIAN, or NULL: the Jacobian's own tape (jacext/jactape.py),
       whose outputs are the function's n_out values, then the n_out x n_cols
       Jacobian row-major; blocks run it in one value sweep.  A block whose Jacobian
       holds an inf or nan is redone point by point by the sweeps of the tape. */
    const jx_tape *jac_tape;
    ptrdiff_t n_points;
    const double *x;          /* n_points x n_in; or NULL, and the rows in parts: */
    int32_t n_parts;          /* the arguments of a batch, not joined: part k is */
    const double *const *part;      /* n_points rows of part_width[k] doubles (the next */
    const int32_t *part_width;      /* part_width[k] inputs), part_step[k] apart: the */
    const int32_t *part_step;       /* width, or 0 for one row that every point shares */
    const double *seed;       /* JVP: n_points x n_in, VJP: n_points x n_out */
    double *y;                /* n_points x n_out, or NULL */
    double *out;              /* jacobian: n_points x n_out x n_cols; jvp: x n_out; vjp: x n_in;
                                 compressed: n_points x (n_out x n_colours | n_colours x n_cols) */
} jx_batch;

/* The rows of n_parts arrays side by side (a batch of several arguments as the VM's input
   rows): row p of out is row p of part 0 (width[0] doubles), then of part 1, ... */
void jx_join_rows(ptrdiff_t n, int32_t n_parts, const double *const *part,
                  const int32_t *width, double *out);

/* ---- sparsity (sparsity.c) ---- */

/*
 * The exact structural pattern of d outputs / d inputs[cols], found by
 * propagating sorted sets of column numbers over the tape.  col_of_input[j]
 * is input j's column, or -1.  On success *indptr (n_out + 1) and *indices
 * are malloc'ed CSR arrays the caller frees.
 */
int jx_sparsity(const jx_tape *t, const int32_t *col_of_input, int32_t **indptr,
                int32_t **indices);

/*
 * Greedy distance-2 colouring of the columns of an n_rows x n_cols CSR
 * pattern, visiting columns in `order`: two columns that share a row never
 * share a colour.  Returns the number of colours (>= 0) or a JX_E* status;
 * gives up with JX_EARG when the work would pass max_work.
 */
/*
 * The dependency cone of every output: the instructions its value depends
 * on, in decreasing order, as lists cone[cone_ptr[i] .. cone_ptr[i+1]) (a block
 * instruction is one entry, its sweep all its rows).  Returns JX_EARG (nothing
 * allocated) once the lists' work would pass max_total (an instruction counts 1,
 * a block its multiply-adds); else *cone_ptr and *cone are malloc'ed for the
 * caller to free, and *work is that work (the planner's price of the cones).
 */
int jx_cones(const jx_tape *t, int64_t max_total, int64_t **cone_ptr, int32_t **cone,
             int64_t *work);

/*
 * Sparse Jacobian values by one reverse sweep per output over its cone only
 * (CppAD's "subgraph" mode): cost the sum of the cone sizes.  vals receives
 * the nonzeros in the pattern's CSR order (row_ptr, nz_input = the input
 * index of each nonzero).  The work needs 1 lane.
 */
int jx_point_subgraph(const jx_tape *t, jx_work *w, const double *x, double *y,
                      const int64_t *cone_ptr, const int32_t *cone, const int32_t *row_ptr,
                      const int32_t *nz_input, double *vals);

int32_t jx_colour_columns(int32_t n_rows, int32_t n_cols, const int32_t *indptr,
                          const int32_t *indices, const int32_t *order, int32_t *colour,
                          int64_t max_work);

int jx_batch_run(const jx_tape *t, const jx_batch *job, int n_threads);

#endif
