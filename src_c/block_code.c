/*
 * block_code.c -- the batched value sweep's instruction stream (jx_bcode, vm.h).
 *
 * The value sweep over a block of points (block_values.h) loads each operand's
 * lanes and stores its result's: an instruction of arm's Jacobian tape moves
 * about 1.5 KB through the cache to do 64 multiplies.  Half of a Jacobian
 * tape's instructions are products read once, by a sum (an entry of J is a
 * sum of products of partials), so the stream fuses such a pair into one
 * entry: z = a * b + c (MA), or z = a * b + c * d where both terms are such
 * products (DOT), and the product never goes through memory.  Each entry does
 * the same IEEE operations in the same order as the instructions it replaces
 * (no FMA: the sweep is compiled without contraction), so the values are the
 * same bits.
 *
 * Fusing moves a product's operands' last reads to its sum, past the slots the
 * tape's allocator reused in between, so the stream gets slots of its own:
 * every value is named by its writer, the entries are laid out, and slots are
 * given again by liveness (a free stack; an entry's result never shares a slot
 * with its operands).  Inputs and constants keep theirs; the outputs' new
 * slots are in bcode_out.  Tapes with blocks (matrix products over slot
 * ranges) keep the tape-driven sweep.
 */
#include <stdlib.h>

#include "vm.h"

/* the operands of instruction k as value numbers (slot s < n_fixed: value s; instruction
   j's result: n_fixed + j), -1 for an immediate or none; 0, or -1 when k reads a slot
   that nothing wrote (the stream then gives up) */
static int jx_bc_operands(const jx_tape *t, int32_t k, const int32_t *writer, int32_t *src)
{
    const int32_t slot[3] = {t->a[k], t->b[k], t->s[k]};
    const int reads = jx_reads(t->op[k]);   /* JX_READS_A, _B, _S: bits 0, 1, 2 */
    int j;
    for (j = 0; j < 3; j++) {
        const int used = (reads >> j) & 1;
        src[j] = used ? writer[slot[j]] : -1;
        if (used && src[j] < 0) return -1;
    }
    return 0;
}

/* a product's two factors as (slot-valued, other): a MUL with its immediate first is
   taken as its mirror (multiplication commutes exactly); its immediate flag in *imm */
static void jx_bc_factors(const jx_tape *t, int32_t k, const int32_t *src, int32_t *f, int *imm)
{
    const int32_t word = t->op[k];
    *imm = (word & (JX_A_IMM | JX_B_IMM)) != 0;
    f[0] = (word & JX_A_IMM) ? src[1] : src[0];
    f[1] = *imm ? -1 : src[1];
}

/* The stream entry of instruction k (role[k] not -2): its code and immediate into c, its
   operands' values into ops (-1: none; a fused sum: its products' factors, MA's in a, b
   and the sum's other operand in c, DOT's in a, b and c, e) */
static void jx_bc_entry(const jx_tape *t, int32_t n_fixed, const int32_t *src,
                        const int32_t *role, int32_t k, jx_bcode *c, int32_t *ops)
{
    const int32_t *sk = src + 3 * (size_t)k, word = t->op[k];
    int32_t p;
    c->imm = t->imm[k];
    ops[3] = -1;
    if (role[k] > 0) {   /* a fused sum: its products' factors are its operands */
        int32_t f[2][2] = {{sk[0], -1}, {sk[1], -1}};
        int imm[2] = {0, 0};
        for (p = 0; p < 2; p++)
            if (role[k] >> p & 1) {
                const int32_t m = sk[p] - n_fixed;
                jx_bc_factors(t, m, src + 3 * (size_t)m, f[p], &imm[p]);
                if (imm[p]) c->imm = t->imm[m];
            }
        if (role[k] == 3) {   /* DOT */
            c->code = JX_BC_DOT + (word == JX_OP_SUB) * 3 + (imm[0] ? 1 : imm[1] ? 2 : 0);
            ops[0] = f[0][0];
            ops[1] = f[0][1];
            ops[2] = f[1][0];
            ops[3] = f[1][1];
        } else {   /* MA */
            const int32_t q = role[k] == 2;   /* the product is the sum's b */
            c->code = JX_BC_MA + ((word == JX_OP_SUB) * 2 + q) * 2 + imm[q];
            ops[0] = f[q][0];
            ops[1] = f[q][1];
            ops[2] = sk[1 - q];
        }
    } else {
        c->code = JX_CODE_OF(word & JX_OP_MASK, (word & JX_B_IMM) ? 1
                             : (word & JX_A_IMM) ? 2 : 0);
        ops[0] = sk[0];
        ops[1] = sk[1];
        ops[2] = sk[2];   /* SELECT's condition */
    }
}

size_t jx_tape_block_code_bytes(const jx_tape *t)
{
    if (t->n_blocks > 0 || t->n_instr <= 0 || t->n_instr > JX_CODE_MAX_ENTRIES) return 0;
    return (size_t)(t->n_instr + 1) * sizeof(jx_bcode)
           + (size_t)(t->n_out + 1) * sizeof(int32_t);
}

int32_t jx_tape_block_code(jx_tape *t, void *mem)
{
    const int32_t n = t->n_instr, n_fixed = t->n_in + t->n_const;
    const int32_t n_val = n_fixed + n;
    jx_bcode *code = (jx_bcode *)mem;
    int32_t *out = (int32_t *)(code + n + 1);
    /* per instruction: src (3), its role (-1 an entry of its own, -2 fused into a sum,
       else the sum's fused operands: bit 0 a, bit 1 b); per value: reads, last reader,
       slot; per slot: writer; a free stack */
    int32_t *buf, *src, *role, *reads, *last, *slot, *writer, *free_stack;
    int32_t k, j, e, n_code = 0, n_free = 0, next_slot = n_fixed, st = 0;
    if (!jx_tape_block_code_bytes(t)) return 0;
    buf = (int32_t *)malloc(sizeof(int32_t) * ((size_t)4 * n + 4 * (size_t)n_val
                                               + (size_t)t->n_slots + 1));
    if (!buf) return JX_ENOMEM;
    src = buf;
    role = src + 3 * (size_t)n;
    reads = role + n;
    last = reads + n_val;
    slot = last + n_val;
    free_stack = slot + n_val;
    writer = free_stack + n_val;
    for (j = 0; j < t->n_slots; j++) writer[j] = j < n_fixed ? j : -1;
    for (j = 0; j < n_val; j++) {
        reads[j] = 0;
        last[j] = -1;
        slot[j] = j < n_fixed ? j : -1;
    }
    for (k = 0; k < n && st == 0; k++) {
        st = jx_bc_operands(t, k, writer, src + 3 * (size_t)k);
        if (st != 0) break;
        for (j = 0; j < 3; j++)
            if (src[3 * (size_t)k + j] >= 0) reads[src[3 * (size_t)k + j]]++;
        writer[t->dst[k]] = n_fixed + k;
        role[k] = -1;
    }
    for (j = 0; j < t->n_out && st == 0; j++) {
        out[j] = writer[t->out_slot[j]];
        if (out[j] < 0) st = -1;
        else reads[out[j]] += 2;   /* an output is never absorbed */
    }
    if (st != 0) {   /* a slot read before any write: keep the tape-driven sweep */
        free(buf);
        return 0;
    }
    /* a sum (ADD or SUB of two slots) absorbs the products it alone reads: both of them
       when at most one has an immediate (the entry has one), else its first */
    for (k = 0; k < n; k++) {
        const int32_t *sk = src + 3 * (size_t)k;
        int32_t p, taken = 0, imms = 0;
        if (t->op[k] != JX_OP_ADD && t->op[k] != JX_OP_SUB) continue;
        for (p = 0; p < 2; p++) {
            const int32_t v = sk[p], m = v - n_fixed;
            if (m < 0 || (t->op[m] & JX_OP_MASK) != JX_OP_MUL
                || reads[v] != 1)
                continue;
            if ((t->op[m] & (JX_A_IMM | JX_B_IMM)) && imms) continue;
            imms += (t->op[m] & (JX_A_IMM | JX_B_IMM)) != 0;
            role[m] = -2;
            taken |= 1 << p;
        }
        if (taken) role[k] = taken;
    }
    /* each value's last reader, an entry (an output: the end) */
    for (k = 0, e = 0; k < n; k++) {
        jx_bcode scratch;
        int32_t ops[4], p;
        if (role[k] == -2) continue;
        jx_bc_entry(t, n_fixed, src, role, k, &scratch, ops);
        for (p = 0; p < 4; p++)
            if (ops[p] >= 0) last[ops[p]] = e;
        e++;
    }
    for (j = 0; j < t->n_out; j++) last[out[j]] = INT32_MAX;
    /* the entries, their slots given by liveness */
    for (k = 0; k < n; k++) {
        const int32_t v = n_fixed + k;
        jx_bcode *c = code + n_code;
        int32_t ops[4], p;
        if (role[k] == -2) continue;
        jx_bc_entry(t, n_fixed, src, role, k, c, ops);
        /* the result's slot first, so that it is none of the operands' */
        slot[v] = n_free > 0 ? free_stack[--n_free] : next_slot++;
        c->dst = slot[v];
        c->a = ops[0] >= 0 ? slot[ops[0]] : c->dst;
        c->b = ops[1] >= 0 ? slot[ops[1]] : c->dst;
        c->c = ops[2] >= 0 ? slot[ops[2]] : c->dst;
        c->e = ops[3] >= 0 ? slot[ops[3]] : c->dst;
        if (role[k] < 0) c->e = t->sincos_pair ? t->sincos_pair[k] : -1;   /* SIN, COS */
        for (p = 0; p < 4; p++) {
            const int32_t u = ops[p];
            if (u >= n_fixed && last[u] == n_code) {
                free_stack[n_free++] = slot[u];
                last[u] = -1;   /* freed once, if read twice */
            }
        }
        if (last[v] < 0 && reads[v] == 0) free_stack[n_free++] = slot[v];   /* never read */
        n_code++;
    }
    for (j = 0; j < t->n_out; j++) out[j] = slot[out[j]];
    t->bcode = code;
    t->n_bcode = n_code;
    t->bcode_out = out;
    t->n_bcode_slots = next_slot > t->n_slots ? next_slot : t->n_slots;
    free(buf);
    return n_code;
}
