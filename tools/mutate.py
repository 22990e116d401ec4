"""Mutation testing of jacext: break the engine one small edit at a time, see which test
notices.

    python tools/mutate.py --list                 # the mutations, one a line
    nice -n 19 python tools/mutate.py             # all of them (see "how long" below)
    python tools/mutate.py --only batch-load-pad,graph-mul-one-close
    python tools/mutate.py --sample 5 --seed 1    # five at random (a CI-sized sample)
    python tools/mutate.py --only batch-load-pad --sanitize-caught   # + the sanitizer build

Each mutation is one exact edit of one file (its original snippet must occur exactly once,
checked before anything runs) in one of the places that decide results or memory safety:
the op table (a row's VALUE, D0, D1 or FIXED; the derivative helpers), the zero-kill and
finiteness kernels (kernels.h), the batched sweeps' block and lane bounds and padding
(batch.c), the single-point sweeps (vm.c), the sparsity pattern, colouring and cones
(sparsity.c), the graph's exact rewrites (_graph.pyx) and the Jacobian-tape builder
(jactape.py).

The work happens in a scratch copy of the tree under /tmp (the files git tracks plus the
untracked ones it does not ignore: the working tree and its build are never touched; the
copy, its clean build's snapshot and the logs are removed at the end unless --keep), built
once with ``JACEXT_QUICK_BUILD=1`` (-O1: the same arithmetic, faster to compile; setup.py).
For each mutation the file is edited and only what the edit changes is rebuilt: the C translation
units it reaches (``C_UNITS``), recompiled and relinked with the clean build's own commands,
or setuptools' rebuild for a Cython module; a header's mutation (ops.def, kernels.h) that
survives is rebuilt from scratch by setuptools and run again before it counts.  The suite runs as
``pytest -x -q -p no:cacheprovider``, the modules closest to the edited file first
(``FIRST``), without tests/test_bench.py (the benchmark harness) unless --with-bench; the
first failing test is the one that caught it.  A mutation may name its own tests (``tests``,
pytest arguments: those written against it); they run first, the suite after them if they
pass.  A run over the time limit counts as caught
(by the time-out: the mutation hung something) and says so; a crash names the test the
crash happened in.  Mutations of kind "memory" that the plain suite does not catch then run
under the AddressSanitizer + UBSan suite (.ci/sanitize, from the scratch copy: a build of
its own, 10-15 minutes on 2 busy cores); --sanitize-caught runs the caught ones' own tests
there too.  Afterwards
the file, its timestamp and the build products are put back, so the next mutation starts
from the clean build.

Mutations marked ``equivalent`` change no result and no memory access of any caller (the
reason is in the table); they are run all the same and counted apart.

The table (markdown) is printed and written to --out (default bench/out/mutations.md, not
tracked).  Why a catalogue of its own rather than mutmut or cosmic-ray, how long a run takes
and the last run's table: tools/README.md.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Mutation(NamedTuple):
    name: str
    path: str           # relative to the repository root
    original: str       # occurs exactly once in the file
    replacement: str
    description: str
    kind: str = "result"        # "result" or "memory"
    equivalent: str = ""        # why it cannot change a result (then it may survive)
    tests: tuple = ()           # pytest arguments run first (and by the sanitizer suite)


M = Mutation
OPS_DEF = "src_c/ops.def"
KERNELS = "src_c/kernels.h"
BATCH = "src_c/batch.c"
VM = "src_c/vm.c"
SPARSITY = "src_c/sparsity.c"
GRAPH = "jacext/_graph.pyx"
JACTAPE = "jacext/jactape.py"

MUTATIONS = [
    # ---- the op table: VALUE, D0, D1, FIXED of single rows, and the helpers
    M("ops-add-fixed", OPS_DEF,
      "OP(ADD,        2, 1, a + b,               1.0,                      1.0, JX_K)",
      "OP(ADD,        2, 1, a + b,               1.0,                      1.0, 0)",
      "ADD loses its FIXED flag (constant partials no longer used)",
      tests=("tests/test_ops.py", "-k", "fixed_partials")),
    M("ops-sub-d1", OPS_DEF,
      "a - b,               1.0,                      -1.0, JX_K)",
      "a - b,               1.0,                      1.0, JX_K)",
      "SUB's d1 is +1"),
    M("ops-mul-d0", OPS_DEF,
      "a * b,               b,                        a, JX_K_AI | JX_K_BI)",
      "a * b,               a,                        a, JX_K_AI | JX_K_BI)",
      "MUL's d0 is a instead of b"),
    M("ops-mul-fixed-ai", OPS_DEF,
      "a, JX_K_AI | JX_K_BI)",
      "a, JX_K_BI)",
      "MUL loses JX_K_AI (c * x no longer has fixed partials)"),
    M("ops-div-d1", OPS_DEF,
      "1.0 / b,                  -z / b, JX_K_BI)",
      "1.0 / b,                  z / b, JX_K_BI)",
      "DIV's d1 has the wrong sign"),
    M("ops-div-fixed", OPS_DEF,
      "-z / b, JX_K_BI)",
      "-z / b, 0)",
      "DIV loses its FIXED flag"),
    M("ops-pow-d0-guard", OPS_DEF,
      "OP(POW,        2, 0, pow(a, b),           jx_dpow_base(a, b),",
      "OP(POW,        2, 0, pow(a, b),           b * pow(a, b - 1.0),",
      "POW's d0 without the b == 0 guard (0 * inf at a = 0, b = 0)"),
    M("ops-mod-fixed", OPS_DEF,
      "-jx_floordiv(a, b), JX_K_BI)",
      "-jx_floordiv(a, b), 0)",
      "MOD loses its FIXED flag"),
    M("ops-fmod-d1", OPS_DEF,
      "-trunc(a / b), JX_K_BI)",
      "-floor(a / b), JX_K_BI)",
      "FMOD's d1 floors instead of truncating"),
    M("ops-atan2-d0", OPS_DEF,
      "b / (a * a + b * b),      -a / (a * a + b * b), 0)",
      "a / (a * a + b * b),      -a / (a * a + b * b), 0)",
      "ATAN2's d0 has a for b"),
    M("ops-hypot-d1", OPS_DEF,
      "a / z,                    b / z, 0)",
      "a / z,                    a / z, 0)",
      "HYPOT's d1 is a / z"),
    M("ops-maximum-d0", OPS_DEF,
      "jx_dmax(a, b),            jx_dmax(b, a), 0)",
      "jx_dmax(b, a),            jx_dmax(b, a), 0)",
      "MAXIMUM's d0 swapped"),
    M("ops-logaddexp-d0", OPS_DEF,
      "exp(a - z),               exp(b - z), 0)",
      "exp(b - z),               exp(b - z), 0)",
      "LOGADDEXP's d0 is exp(b - z)"),
    M("ops-less-value", OPS_DEF,
      "(double)(a < b),     0.0,",
      "(double)(a <= b),     0.0,",
      "LESS computes <="),
    M("ops-select-d0", OPS_DEF,
      "(s != 0.0) ? a : b,  (s != 0.0) ? 1.0 : 0.0,",
      "(s != 0.0) ? a : b,  1.0,",
      "SELECT's d0 is 1 on both branches"),
    M("ops-neg-d0", OPS_DEF,
      "OP(NEG,        1, 0, -a,                  -1.0,",
      "OP(NEG,        1, 0, -a,                  1.0,",
      "NEG's d0 is +1"),
    M("ops-abs-d0", OPS_DEF,
      "fabs(a),             jx_sign(a),",
      "fabs(a),             1.0,",
      "ABS's d0 is 1 everywhere"),
    M("ops-sqrt-d0", OPS_DEF,
      "sqrt(a),             0.5 / z,",
      "sqrt(a),             0.5 / a,",
      "SQRT's d0 is 0.5 / a"),
    M("ops-exp2-d0", OPS_DEF,
      "exp2(a),             z * JX_LN2,",
      "exp2(a),             z * JX_LN10,",
      "EXP2's d0 uses ln 10"),
    M("ops-expm1-d0", OPS_DEF,
      "expm1(a),            z + 1.0,",
      "expm1(a),            z,",
      "EXPM1's d0 is expm1(a)"),
    M("ops-log1p-value", OPS_DEF,
      "OP(LOG1P,      1, 0, log1p(a),",
      "OP(LOG1P,      1, 0, log(1.0 + a),",
      "LOG1P's value as log(1 + a) (inexact near 0)"),
    M("ops-tan-d0", OPS_DEF,
      "tan(a),              1.0 + z * z,",
      "tan(a),              1.0 - z * z,",
      "TAN's d0 is 1 - tan^2"),
    M("ops-arccos-d0", OPS_DEF,
      "-1.0 / sqrt(1.0 - a * a), 0.0, 0)",
      "1.0 / sqrt(1.0 - a * a), 0.0, 0)",
      "ARCCOS's d0 has the wrong sign"),
    M("ops-tanh-value", OPS_DEF,
      "OP(TANH,       1, 0, tanh(a),",
      "OP(TANH,       1, 0, sinh(a) / cosh(a),",
      "TANH's value as sinh / cosh (nan for large |a|)"),
    M("ops-arcsinh-d0", OPS_DEF,
      "1.0 / hypot(a, 1.0),",
      "1.0 / sqrt(a * a + 1.0),",
      "ARCSINH's d0 through a * a (0 instead of 1/|a| once a * a overflows)"),
    M("ops-erfc-value", OPS_DEF,
      "OP(ERFC,       1, 0, erfc(a),",
      "OP(ERFC,       1, 0, 1.0 - erf(a),",
      "ERFC's value as 1 - erf (cancels for large a)"),
    M("ops-floor-fixed", OPS_DEF,
      "OP(FLOOR,      1, 0, floor(a),            0.0,                      0.0, JX_K)",
      "OP(FLOOR,      1, 0, floor(a),            0.0,                      0.0, 0)",
      "FLOOR loses its FIXED flag"),
    M("ops-heaviside-d1", OPS_DEF,
      "0.0, (a == 0.0) ? 1.0 : 0.0, JX_K_AI | JX_K_BI)",
      "0.0, 0.0, JX_K_AI | JX_K_BI)",
      "HEAVISIDE's d1 (the h0 slope at a == 0) is 0"),
    M("ops-heaviside-fixed-ai", OPS_DEF,
      "(a == 0.0) ? 1.0 : 0.0, JX_K_AI | JX_K_BI)",
      "(a == 0.0) ? 1.0 : 0.0, JX_K_BI)",
      "HEAVISIDE loses JX_K_AI"),
    M("ops-helper-dmax-tie", OPS_DEF,
      "HELPER(jx_dmax, a, b, (a > b) ? 1.0 : ((a == b) ? 0.5 :",
      "HELPER(jx_dmax, a, b, (a > b) ? 1.0 : ((a == b) ? 1.0 :",
      "maximum's tie gives 1 to each side"),
    M("ops-helper-dfmax-nan", OPS_DEF,
      "HELPER(jx_dfmax, a, b, (a != a) ? 0.0 :",
      "HELPER(jx_dfmax, a, b, (a != a) ? 1.0 :",
      "fmax's nan operand wins the derivative"),
    M("ops-helper-dpow-exp-guard", OPS_DEF,
      "HELPER(jx_dpow_exp, a, z, (z == 0.0) ? 0.0 : z * log(a))",
      "HELPER(jx_dpow_exp, a, z, z * log(a))",
      "d pow / d exponent without the z == 0 guard (0 * -inf at a = 0)"),

    # ---- kernels.h: zero kills, operand reads, finiteness checks
    M("kernels-zmul-no-kill", KERNELS,
      "return (d == 0.0 || t == 0.0) ? 0.0 : d * t;",
      "return d * t;",
      "jx_zmul without zero kills"),
    M("kernels-zmul-one-side", KERNELS,
      "return (d == 0.0 || t == 0.0) ? 0.0 : d * t;",
      "return (d == 0.0) ? 0.0 : d * t;",
      "jx_zmul kills only a zero partial, not a zero tangent"),
    M("kernels-reads-b-imm", KERNELS,
      "| ((arity >= 2 && !(word & JX_B_IMM)) ? JX_READS_B : 0)",
      "| ((arity >= 2) ? JX_READS_B : 0)",
      "jx_reads reports an immediate b as a slot read"),
    M("kernels-reads-s", KERNELS,
      "| (arity == 3 ? JX_READS_S : 0);",
      "| 0;",
      "jx_reads forgets SELECT's condition"),
    M("kernels-acc2-d1", KERNELS,
      "for (l = 0; l < n; l++) acc[l] += (p[l] - p[l]) + (q[l] - q[l]);",
      "for (l = 0; l < n; l++) acc[l] += (p[l] - p[l]);",
      "the block finiteness check ignores d1"),
    M("kernels-copy-acc", KERNELS,
      "        acc[l] += v - v;\n",
      "        (void)acc;\n",
      "the Jacobian-tape copy out no longer checks finiteness"),
    M("kernels-acc-finite-bound", KERNELS,
      "for (l = 0; l < n; l++) finite &= (acc[l] == 0.0);",
      "for (l = 0; l < n - 1; l++) finite &= (acc[l] == 0.0);",
      "jx_acc_finite skips the last lane"),
    M("kernels-all-finite-tail", KERNELS,
      "    for (; k < n; k++) a0 += p[k] - p[k];\n",
      "",
      "jx_all_finite skips the n % 4 tail"),

    # ---- batch.c: block and lane bounds, padding, fixed partials, finiteness
    M("batch-load-pad", BATCH,
      "const double *row = x + (size_t)(l < n ? l : n - 1) * (size_t)t->n_in;",
      "const double *row = x + (size_t)l * (size_t)t->n_in;",
      "a partial last block's padding lanes read the rows past the block (past the input)",
      kind="memory", tests=("tests/test_function.py", "-k", "past_their_arrays")),
    M("batch-seed-pad", BATCH,
      "const double *row = seed + (size_t)(l < n ? l : n - 1) * (size_t)n_seed;",
      "const double *row = seed + (size_t)l * (size_t)n_seed;",
      "jvp / vjp seeds of the padding lanes read past the seeds", kind="memory"),
    M("batch-store-bound", BATCH,
      "    for (l = 0; l < n; l++)\n        for (i = 0; i < count; i++)",
      "    for (l = 0; l < B; l++)\n        for (i = 0; i < count; i++)",
      "values of the padding lanes written out past the last point", kind="memory"),
    M("batch-share-ragged", BATCH,
      "    for (p = sh->lo; p < sh->hi; p += sh->block) {\n"
      "        const int32_t n = (int32_t)((sh->hi - p) < sh->block ? (sh->hi - p) : sh->block);",
      "    for (p = sh->lo; p < sh->hi; p += sh->block) {\n"
      "        const int32_t n = (int32_t)sh->block;",
      "the sweeps' last block treated as full", kind="memory"),
    M("batch-jac-tape-copy-bound", BATCH,
      "V + (size_t)jt->out_slot[n_out + e] * B, n);",
      "V + (size_t)jt->out_slot[n_out + e] * B, n - 1);",
      "the Jacobian tape's block copies out one point too few"),
    M("batch-block-max", BATCH,
      "    if (b > JX_BLOCK_MAX) b = JX_BLOCK_MAX;\n",
      "",
      "no upper bound on the block size (the finiteness accumulators hold JX_BLOCK_MAX)",
      kind="memory"),
    M("batch-const-lanes", BATCH,
      "for (l = 0; l < B; l++) w->value[(size_t)(t->n_in + k) * B + l] = t->const_value[k];",
      "for (l = 0; l < B - 1; l++) w->value[(size_t)(t->n_in + k) * B + l] = t->const_value[k];",
      "constants not spread into a block's last lane"),
    M("batch-finite-always", BATCH,
      "        return jx_acc_finite(acc, B);",
      "        return 1;",
      "every block taken as finite: no zero kills in the batched sweeps"),
    M("batch-fixed-tangent", BATCH,
      "for (l = 0; l < n; l++) td[l] = c0 * ta[l] + c1 * tb[l];",
      "for (l = 0; l < n; l++) td[l] = c0 * ta[l] + c0 * tb[l];",
      "fixed-partial tangent uses c0 for both terms"),
    M("batch-fixed-adjoint-clear", BATCH,
      "            for (l = 0; l < n; l++) ad[l] = 0.0;\n            continue;",
      "            continue;",
      "a fixed-partial instruction keeps its adjoint (slots are reused)"),
    M("batch-forward-copy-bound", BATCH,
      "                    double *dst = jac + (size_t)i * n_cols + k0 + k;\n"
      "                    for (l = 0; l < n; l++) dst[(size_t)l * n_out * n_cols] = src[l];",
      "                    double *dst = jac + (size_t)i * n_cols + k0 + k;\n"
      "                    for (l = 0; l < B; l++) dst[(size_t)l * n_out * n_cols] = src[l];",
      "forward block Jacobians written out for every lane, past the last point",
      kind="memory"),
    M("batch-values-only-fixed", BATCH,
      "        const int values_only = t->fixed && t->fixed[i];",
      "        const int values_only = 0;",
      "fixed partials stored per point as well",
      equivalent="the per-point partials of a fixed instruction are stored but never read "
                 "(the tangent, adjoint and finiteness loops take the fixed branch first): "
                 "slower, the same numbers"),

    # ---- vm.c: the single-point sweeps and the tape's derived tables
    M("vm-fixed-finite", VM,
      "is_fixed = isfinite(p0) && isfinite(p1);",
      "is_fixed = 1;",
      "an infinite constant partial (x / 0) treated as fixed"),
    M("vm-tangent-zero-p1", VM,
      "    } else if (p0 == 0.0) {\n        if (isfinite(p1)) {",
      "    } else if (p0 == 0.0) {\n        if (1) {",
      "single-point tangent: an infinite d1 multiplies without zero kills"),
    M("vm-adjoint-clear", VM,
      "        if (p0 == 0.0 && p1 == 0.0) {\n            for (k = 0; k < lanes; k++) ad[k] = 0.0;",
      "        if (p0 == 0.0 && p1 == 0.0) {\n            (void)ad;",
      "single-point adjoint: a zero-partial instruction keeps its adjoint"),

    # ---- sparsity.c: patterns, colouring, cones
    M("sparsity-fixed-zero-a", SPARSITY,
      "const int use_a = (reads & JX_READS_A) && !(fixed && t->fixed_d0[i] == 0.0);",
      "const int use_a = (reads & JX_READS_A);",
      "a zero fixed d0 (comparisons, floor) adds dependencies"),
    M("sparsity-fixed-zero-b", SPARSITY,
      "const int use_b = (reads & JX_READS_B) && !(fixed && t->fixed_d1[i] == 0.0);",
      "const int use_b = (reads & JX_READS_B) && !(fixed && t->fixed_d0[i] == 0.0);",
      "the b operand's test reads d0"),
    M("sparsity-union-dup", SPARSITY,
      "else { dst->v[n++] = a; i++; j++; }",
      "else { dst->v[n++] = a; i++; }",
      "a column in both operands' sets is listed twice"),
    M("sparsity-colour-pick", SPARSITY,
      "while (stamp[pick] == q) pick++;",
      "if (stamp[pick] == q) pick++;",
      "greedy colouring takes the next colour once, not the first free one"),
    M("sparsity-cone-order", SPARSITY,
      "return (a < b) - (a > b);",
      "return (a > b) - (a < b);",
      "cones sorted forwards: the per-output reverse sweep runs in tape order"),
    M("sparsity-subgraph-clear", SPARSITY,
      "            A[t->a[j]] = 0.0;\n            A[t->b[j]] = 0.0;",
      "            A[t->a[j]] = 0.0;",
      "the per-output sweep leaves b operands' adjoints for the next output"),

    # ---- _graph.pyx: the exact rewrites
    M("graph-mul-one-close", GRAPH,
      "            if op == JX_OP_MUL:\n                if v == 1.0:",
      "            if op == JX_OP_MUL:\n                if abs(v - 1.0) < 1e-9:",
      "x * c folded to x when c is merely close to 1",
      tests=("tests/test_graph.py", "-k", "close_to_an_exact")),
    M("graph-mul-minus-one-close", GRAPH,
      "                if v == -1.0:\n"
      "                    return self._canon(JX_OP_NEG, x, -1, -1, k)",
      "                if abs(v + 1.0) < 1e-9:\n"
      "                    return self._canon(JX_OP_NEG, x, -1, -1, k)",
      "x * c made -x when c is merely close to -1"),
    M("graph-div-minus-one", GRAPH,
      "            elif op == JX_OP_DIV:\n                if v == 1.0:",
      "            elif op == JX_OP_DIV:\n                if v == 1.0 or v == -1.0:",
      "x / -1 folded to x"),
    M("graph-add-zero-close", GRAPH,
      "x + (-0.0) and x - 0.0 are x bit for bit\n                if v == 0.0:",
      "x + (-0.0) and x - 0.0 are x bit for bit\n                if abs(v) < 1e-12:",
      "x + c and x - c folded to x when c is merely close to 0"),
    M("graph-pow-zero-close", GRAPH,
      "if v == 0.0:    # pow(x, 0) is 1 for every x",
      "if abs(v) < 1e-12:    # pow(x, 0) is 1 for every x",
      "x ** c folded to 1 when c is merely close to 0"),
    M("graph-pow-two-close", GRAPH,
      "if self.numpy_power and v == 2.0:",
      "if self.numpy_power and abs(v - 2.0) < 1e-9:",
      "x ** c made square(x) when c is merely close to 2"),
    M("graph-pow-half-close", GRAPH,
      "if self.numpy_power and v == 0.5:",
      "if self.numpy_power and abs(v - 0.5) < 1e-9:",
      "x ** c made sqrt(x) when c is merely close to 0.5"),
    M("graph-select-const", GRAPH,
      "return x if self.imm[c] != 0.0 else y",
      "return y if self.imm[c] != 0.0 else x",
      "np.where with a constant condition takes the wrong branch"),
    M("graph-commute-all", GRAPH,
      "if jx_op_commutes[op] and (cx or (not cy and x > y)):",
      "if (cx or (not cy and x > y)):",
      "operands of non-commuting ops swapped into canonical order"),
    M("graph-neg-neg-product", GRAPH,
      "                if nx and ny:\n                    return self._canon(op, u, w, -1, k)",
      "                if nx and ny:\n"
      "                    return self._canon(JX_OP_NEG, self._apply(op, u, w, -1), -1, -1, k)",
      "(-u) * (-v) made -(u * v)"),
    M("graph-add-neg", GRAPH,
      "            if self.op[y] == JX_OP_NEG:\n"
      "                return self._canon(JX_OP_SUB, x, self.a[y], -1, k)",
      "            if self.op[y] == JX_OP_NEG:\n"
      "                return self._canon(JX_OP_ADD, x, self.a[y], -1, k)",
      "u + (-v) made u + v"),
    M("graph-square-of-sum", GRAPH,
      "if op == JX_OP_MUL and x == y:",
      "if (op == JX_OP_MUL or op == JX_OP_ADD) and x == y:",
      "x + x made square(x)"),

    # ---- jactape.py: the Jacobian-tape builder
    M("jactape-fixed-one-off", JACTAPE,
      "            c0 = float(fd0[i]) if use_a else 0.0\n"
      "            c1 = float(fd1[i]) if use_b else 0.0\n"
      "            p0 = e.c(c0) if c0 != 0.0 else None",
      "            c0 = float(fd0[i]) * (1.0 + 1e-12) if use_a else 0.0\n"
      "            c1 = float(fd1[i]) if use_b else 0.0\n"
      "            p0 = e.c(c0) if c0 != 0.0 else None",
      "node-by-node forward: a fixed partial 1e-12 off",
      tests=("tests/test_jactape.py", "-k", "one_op_is_its_partials")),
    M("jactape-bulk-fixed-one-off", JACTAPE,
      "p0[f0] = g.consts(c0[f0])",
      "p0[f0] = g.consts(c0[f0] * (1.0 + 1e-12))",
      "bulk forward: a fixed partial 1e-12 off"),
    M("jactape-forward-select", JACTAPE,
      "res = bulk.select(steps.cond[sl][um], x, y)",
      "res = bulk.select(steps.cond[sl][um], y, x)",
      "bulk forward: np.where's tangent takes the other branch"),
    M("jactape-forward-sub", JACTAPE,
      'res[y_at[both]] = bulk("ADD", xs, y[both])',
      'res[y_at[both]] = bulk("SUB", xs, y[both])',
      "bulk forward: the two terms of a tangent subtracted"),
    M("jactape-reverse-fixed-b", JACTAPE,
      '                if c1 != 0.0:\n                    add(sb, r, e("MUL", e.c(c1), ad))',
      '                if c1 != 0.0:\n                    add(sb, r, e("MUL", e.c(c0), ad))',
      "node-by-node reverse: b's fixed partial is a's"),
    M("jactape-reverse-select", JACTAPE,
      "add(sa, r, e.select(cond, ad, zero))",
      "add(sa, r, e.select(cond, zero, ad))",
      "node-by-node reverse: np.where's adjoint to the wrong branch"),
    M("jactape-bulk-seq", JACTAPE,
      "sa, sb = 2 * (n - 1 - i), 2 * (n - 1 - i) + 1",
      "sa, sb = 2 * (n - 1 - i) + 1, 2 * (n - 1 - i)",
      "bulk reverse: a reader's b term summed before its a term (rounding)"),
    M("jactape-chain-order", JACTAPE,
      "order = np.lexsort((seq, key))",
      "order = np.lexsort((-seq, key))",
      "bulk reverse: adjoint terms summed in the opposite order (rounding)"),
    M("jactape-partials-skip-var", JACTAPE,
      "            p0 = q0 if q0 is not None and t_a else None",
      "            p0 = q0 if q0 is not None and t_b else None",
      "node-by-node forward: d0 used where b, not a, has a tangent"),
]


# ------------------------------------------------------------------ the scratch tree --

def tree_files(root):
    """The files git tracks plus the untracked ones it does not ignore (as .ci/sanitize)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=root, check=True, capture_output=True).stdout.decode()
    return [f for f in out.split("\0") if f and os.path.isfile(os.path.join(root, f))]


def make_scratch(root):
    """A work folder under /tmp: tree/ (the copy that is edited and built), snapshot/ (the
    clean build's products), logs/."""
    work = tempfile.mkdtemp(prefix="jacext-mutate.")
    scratch = os.path.join(work, "tree")
    for rel in tree_files(root):
        dst = os.path.join(scratch, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(os.path.join(root, rel), dst)
    return work, scratch


def check_mutations(root, mutations):
    """Every original snippet occurs exactly once; names are unique."""
    names = [m.name for m in mutations]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise SystemExit(f"mutate: duplicate names {sorted(dup)}")
    for m in mutations:
        if m.kind not in ("result", "memory"):
            raise SystemExit(f"mutate: {m.name}: kind {m.kind!r}")
        with open(os.path.join(root, m.path)) as f:
            text = f.read()
        count = text.count(m.original)
        if count != 1:
            raise SystemExit(f"mutate: {m.name}: the original snippet occurs {count} times "
                             f"in {m.path} (must be once)")
        if m.original == m.replacement:
            raise SystemExit(f"mutate: {m.name}: the replacement changes nothing")


# Which C translation units an edit of each file changes.  Every Cython module includes
# ops.def (through vm.h and ops.h) for the op enum and the derivative helpers' inline
# definitions, which none of them calls: an edit of a row's VALUE, D0, D1 or FIXED, or of a
# helper, changes the object code of vm.c and batch.c alone.  kernels.h's inline functions
# are called by the C sweeps and, of the Cython modules, by _function (jx_all_finite).
# Anything else (a .pyx, setup.py, a new file) takes setuptools' own rebuild; and every
# header's survivor is rebuilt from scratch by setuptools and run again before it counts.
C_UNITS = {
    "src_c/ops.def": ("src_c/vm.c", "src_c/batch.c"),
    "src_c/kernels.h": ("src_c/vm.c", "src_c/batch.c", "src_c/sparsity.c",
                        "jacext/_function.c"),
    "src_c/batch.c": ("src_c/batch.c",),
    "src_c/vm.c": ("src_c/vm.c",),
    "src_c/sparsity.c": ("src_c/sparsity.c",),
}
COMPILE = re.compile(r"^\S*(?:gcc|cc|clang)\s.*\s-c\s+(\S+)\s+-o\s+(\S+)")
LINK = re.compile(r"^\S*(?:gcc|cc|clang)\s+-shared\s.*\s-o\s+(\S+)")


class Build:
    """The scratch tree's build: setuptools once (its compiler and linker commands kept),
    then per edit only the translation units it changes, recompiled and relinked with those
    same commands; the clean build's products are put back after each mutation."""

    def __init__(self, scratch):
        self.scratch = scratch
        self.compile = {}     # source -> (command, object)
        self.link = []        # (command, output, objects)
        self.saved = os.path.join(os.path.dirname(scratch), "snapshot")

    def env(self):
        env = dict(os.environ, JACEXT_QUICK_BUILD="1")
        env.pop("JACEXT_WERROR", None)     # a mutation may leave a variable unused
        return env

    def setuptools(self, log, timeout, force=False):
        with open(log, "w") as f:
            proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"]
                                  + (["--force"] if force else []), cwd=self.scratch,
                                  env=self.env(), stdout=f, stderr=subprocess.STDOUT,
                                  timeout=timeout)
        return proc.returncode == 0

    def baseline(self, log, timeout):
        """The clean build (forced, so that every command is seen), and its snapshot."""
        if not self.setuptools(log, timeout, force=True):
            return False
        with open(log) as f:
            for line in f:
                m = COMPILE.match(line)
                if m:
                    self.compile[m.group(1)] = (line.strip(), m.group(2))
                    continue
                m = LINK.match(line)
                if m:
                    objs = [w for w in line.split() if w.endswith(".o")]
                    self.link.append((line.strip(), m.group(1), objs))
        shutil.rmtree(self.saved, ignore_errors=True)
        os.makedirs(self.saved)
        for rel in self.products():
            dst = os.path.join(self.saved, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(os.path.join(self.scratch, rel), dst)
        return bool(self.compile) and bool(self.link)

    def products(self):
        """Build outputs: the in-place extensions, the C Cython wrote, build/ (objects)."""
        out = []
        for name in os.listdir(os.path.join(self.scratch, "jacext")):
            if name.endswith((".so", ".pyd", ".c")):
                out.append(f"jacext/{name}")
        for root, _, files in os.walk(os.path.join(self.scratch, "build")):
            out += [os.path.relpath(os.path.join(root, f), self.scratch) for f in files]
        return out

    def restore(self):
        for root, _, files in os.walk(self.saved):
            for f in files:
                src = os.path.join(root, f)
                shutil.copy2(src, os.path.join(self.scratch, os.path.relpath(src, self.saved)))

    def rebuild(self, edited, log, timeout):
        """Rebuild after an edit of ``edited``: only its translation units where known."""
        units = C_UNITS.get(edited)
        if not units or any(u not in self.compile for u in units):
            return self.setuptools(log, timeout)
        deadline = time.monotonic() + timeout
        objects = set()
        with open(log, "w") as f:
            def run(cmd):
                """One logged build command; whether it succeeded."""
                f.write(cmd + "\n")
                f.flush()
                return subprocess.run(cmd, shell=True, cwd=self.scratch, stdout=f,
                                      stderr=subprocess.STDOUT,
                                      timeout=max(1.0, deadline - time.monotonic())
                                      ).returncode == 0

            for unit in units:
                cmd, obj = self.compile[unit]
                objects.add(obj)
                if not run(cmd):
                    return False
            for cmd, output, objs in self.link:
                if not objects & set(objs):
                    continue
                if not run(cmd):
                    return False
                shutil.copy2(os.path.join(self.scratch, output),
                             os.path.join(self.scratch, "jacext", os.path.basename(output)))
        return True


# the modules that test the edited file most directly run first (the caught-by column then
# names the test closest to the bug, and a caught mutation stops sooner)
FIRST = {
    "src_c/ops.def": ("tests/test_ops.py",),
    "src_c/kernels.h": ("tests/test_function.py", "tests/test_jactape.py"),
    "src_c/batch.c": ("tests/test_function.py", "tests/test_jactape.py"),
    "src_c/vm.c": ("tests/test_function.py", "tests/test_tape.py"),
    "src_c/sparsity.c": ("tests/test_sparse.py",),
    "jacext/_graph.pyx": ("tests/test_graph.py",),
    "jacext/jactape.py": ("tests/test_jactape.py",),
}


def test_order(scratch, with_bench, edited=None):
    """The suite's modules: those of FIRST[edited], then the rest in name order;
    tests/test_bench.py (the benchmark harness: slow, timed against 10 s cells, which a
    nice-19 run on a busy machine can overrun, and it checks jacext only to rtol 1e-9) last,
    and only when asked for."""
    names = sorted(f"tests/{n}" for n in os.listdir(os.path.join(scratch, "tests"))
                   if n.startswith("test_") and n.endswith(".py")
                   and (with_bench or n != "test_bench.py"))
    first = [n for n in FIRST.get(edited, ()) if n in names]
    rest = [n for n in names if n not in first]
    rest.sort(key=lambda n: n == "tests/test_bench.py")
    return first + rest


def run_suite(scratch, log, timeout, with_bench=False, edited=None, selection=()):
    """(outcome, detail, seconds): outcome "pass", "fail", "crash" or "timeout".  A
    mutation's own ``selection`` (pytest arguments: the tests written against it) runs
    first, then, if it passes, the suite."""
    if selection:
        outcome, detail, first_s = run_pytest(scratch, list(selection), log + ".selection",
                                              timeout)
        if outcome != "pass":
            return outcome, detail, first_s
    else:
        first_s = 0.0
    outcome, detail, rest_s = run_pytest(scratch, test_order(scratch, with_bench, edited),
                                         log, max(1.0, timeout - first_s))
    return outcome, detail, first_s + rest_s


def run_pytest(scratch, tests, log, timeout):
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-rfE",
           *tests]
    # no bytecode caches: two edits of one module must never share a stale .pyc
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    start = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=scratch, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "timeout", f"over {timeout:g} s", time.monotonic() - start
        finally:
            if proc.poll() is None:      # stopped from outside: the suite goes too
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    elapsed = time.monotonic() - start
    with open(log, errors="replace") as f:
        text = f.read()
    if rc == 0:
        return "pass", "", elapsed
    # (a test id's parameters may hold spaces: "test_x[x * c]")
    first = re.search(r"^(?:FAILED|ERROR) (\S+?(?:\[[^\]\n]*\])?)(?: - |$)", text, re.M)
    if first:
        return "fail", first.group(1), elapsed
    # a crash: faulthandler's traceback names the test file's frame it happened in
    frames = re.findall(r'File "[^"]*/(tests/test_\w+\.py)", line \d+ in (\w+)', text)
    where = f"{frames[0][0]}::{frames[0][1]}" if frames else "the suite"
    return "crash", f"{where} (pytest exit {rc})", elapsed


def run_sanitizer(scratch, log, timeout, selection=()):
    """The sanitizer suite (.ci/sanitize, from the scratch copy; its own build, in a copy of
    the scratch tree, of the mutated sources), or only a mutation's ``selection`` of it:
    (caught, detail, seconds)."""
    start = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen(["bash", ".ci/sanitize", "-x", "-rfE", *selection],
                                cwd=scratch,
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True, f"sanitizer suite timed out (over {timeout:g} s)", \
                time.monotonic() - start
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    elapsed = time.monotonic() - start
    if rc == 0:
        return False, "", elapsed
    with open(log, errors="replace") as f:
        text = f.read()
    kind = re.search(r"(AddressSanitizer: [\w-]+|runtime error: [^\n]{0,80})", text)
    frames = re.findall(r"(tests/test_\w+\.py::\S+)", text)
    test = frames[0] if frames else ""
    return True, " ".join(x for x in ("sanitizer:", kind.group(1) if kind else
                                      f"exit {rc}", test) if x), elapsed


# ------------------------------------------------------------------------- the run --

def apply(scratch, m):
    path = os.path.join(scratch, m.path)
    st = os.stat(path)
    with open(path) as f:
        text = f.read()
    assert text.count(m.original) == 1, m.name
    with open(path, "w") as f:
        f.write(text.replace(m.original, m.replacement))
    return path, text, st


def undo(path, text, st):
    with open(path, "w") as f:
        f.write(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def run_one(scratch, build, m, args, logs):
    path, text, st = apply(scratch, m)
    log = os.path.join(logs, m.name)
    start = time.monotonic()
    try:
        if not build.rebuild(m.path, log + ".build.log", args.build_timeout):
            return {"status": "build failed", "by": f"see {log}.build.log"}
        res = suite_verdict(scratch, log + ".test.log", args, m)
        if res["status"] == "survived" and m.path not in C_UNITS.get(m.path, (m.path,)):
            # a header's edit rebuilt the units C_UNITS names for it: no trust in that list
            # for a survivor, everything again, from scratch
            if not build.setuptools(log + ".full-build.log", args.build_timeout, force=True):
                return {"status": "build failed", "by": f"see {log}.full-build.log"}
            res = suite_verdict(scratch, log + ".full.test.log", args, m)
        if m.kind == "memory" and not args.no_sanitize and (
                res["status"] == "survived" or args.sanitize_caught):
            # the survivor: the whole sanitizer suite; with --sanitize-caught, a caught one
            # too (its selection), to show that the sanitizer sees it without the guard page
            caught, detail, _ = run_sanitizer(
                scratch, log + ".sanitize.log", args.sanitize_timeout,
                m.tests if res["status"] == "caught" else ())
            if res["status"] == "survived":
                if caught:
                    res = {"status": "caught", "by": detail}
            else:
                res["by"] += "; " + (detail if caught else "sanitizer: nothing reported")
        return res
    finally:
        run_one.last_seconds = time.monotonic() - start
        undo(path, text, st)
        build.restore()


def suite_verdict(scratch, log, args, m):
    outcome, detail, _ = run_suite(scratch, log, args.timeout, args.with_bench, m.path,
                                   m.tests)
    if outcome == "fail":
        return {"status": "caught", "by": detail}
    if outcome == "crash":
        return {"status": "caught", "by": f"crash in {detail}"}
    if outcome == "timeout":
        return {"status": "caught", "by": f"time-out ({detail}; counted as caught)"}
    return {"status": "survived", "by": ""}


def markdown(rows, started, finished, command, baseline_s):
    n = len(rows)
    caught = [r for r in rows if r["status"] == "caught"]
    survived = [r for r in rows if r["status"] == "survived"]
    equivalent = [r for r in survived if r["m"].equivalent]
    real = [r for r in survived if not r["m"].equivalent]
    counted = [r for r in rows if not r["m"].equivalent and r["status"] in ("caught",
                                                                             "survived")]
    n_counted_caught = len([r for r in counted if r["status"] == "caught"])
    broken = [r for r in rows if r["status"] == "build failed"]
    wall = finished - started
    lines = [
        "# Mutation testing (tools/mutate.py)",
        "",
        f"- command: `{command}`",
        f"- started {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}, wall time "
        f"{wall / 60:.1f} min for {n} mutations ({wall / max(n, 1):.0f} s each on average); "
        f"the unmutated suite took {baseline_s:.0f} s",
        f"- caught {len(caught)} of {n}; survived {len(survived)} "
        f"({len(equivalent)} of them equivalent: they change no result); build failures "
        f"{len(broken)}",
        f"- of the {len(counted)} that change a result or memory safety: "
        f"{n_counted_caught} caught ({100.0 * n_counted_caught / max(len(counted), 1):.1f} %)",
        "",
        "| mutation | file | kind | what it breaks | caught by | s |",
        "|---|---|---|---|---|---:|",
    ]
    for r in rows:
        m = r["m"]
        by = r["by"] if r["status"] == "caught" else r["status"].upper() + (
            f" (equivalent: {m.equivalent})" if m.equivalent and r["status"] == "survived"
            else "") + (f": {r['by']}" if r["by"] else "")
        lines.append(f"| {m.name} | {m.path} | {m.kind} | {m.description} | {by} | "
                     f"{r['seconds']:.0f} |")
    if real:
        lines += ["", "Survivors that change a result or memory safety:"]
        lines += [f"- {r['m'].name}: {r['m'].description}" for r in real]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--only", help="comma-separated mutation names (or name prefixes)")
    parser.add_argument("--sample", type=int, metavar="N", help="N mutations at random")
    parser.add_argument("--seed", type=int, default=0, help="for --sample (default 0)")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="time limit of one suite run, s (default 900)")
    parser.add_argument("--build-timeout", type=float, default=1200.0)
    parser.add_argument("--sanitize-timeout", type=float, default=2400.0)
    parser.add_argument("--no-sanitize", action="store_true",
                        help="memory mutations: the plain suite only")
    parser.add_argument("--sanitize-caught", action="store_true",
                        help="memory mutations the plain suite catches: their own tests "
                             "under the sanitizer build as well")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "out", "mutations.md"),
                        help="where the markdown table goes")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy")
    parser.add_argument("--in-order", action="store_true",
                        help="the catalogue's order (default: one mutation of each file in "
                             "turn)")
    parser.add_argument("--with-bench", action="store_true",
                        help="run tests/test_bench.py too (last)")
    args = parser.parse_args(argv)
    # a SIGTERM unwinds like an error: the edit is undone, a running suite is stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    check_mutations(ROOT, MUTATIONS)
    chosen = MUTATIONS
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        chosen = [m for m in MUTATIONS if any(m.name == w or m.name.startswith(w)
                                              for w in wanted)]
        if not chosen:
            print(f"mutate: no mutation matches {wanted}", file=sys.stderr)
            return 2
    if args.sample:
        chosen = random.Random(args.seed).sample(chosen, min(args.sample, len(chosen)))
    elif not args.in_order:
        # one from each file in turn: a run stopped early has covered every place
        by_file = {}
        for m in chosen:
            by_file.setdefault(m.path, []).append(m)
        queues = list(by_file.values())
        chosen = [q[k] for k in range(max(map(len, queues))) for q in queues if k < len(q)]
    if args.list:
        for m in chosen:
            print(f"{m.name:30s} {m.kind:6s} {m.path:20s} {m.description}"
                  + (" [equivalent]" if m.equivalent else ""))
        print(f"{len(chosen)} mutations")
        return 0

    command = "python tools/mutate.py " + " ".join(argv if argv is not None else sys.argv[1:])
    started = time.time()
    work, scratch = make_scratch(ROOT)
    logs = os.path.join(work, "logs")
    os.makedirs(logs)
    print(f"mutate: scratch copy {scratch}; building it (JACEXT_QUICK_BUILD=1)", flush=True)
    build = Build(scratch)
    try:
        if not build.baseline(os.path.join(logs, "baseline.build.log"), args.build_timeout):
            print("mutate: the unmutated tree does not build", file=sys.stderr)
            return 1
        outcome, detail, baseline_s = run_suite(scratch, os.path.join(logs, "baseline.log"),
                                                args.timeout, args.with_bench)
        if outcome != "pass":
            print(f"mutate: the unmutated suite does not pass ({outcome}: {detail}); see "
                  f"{logs}/baseline.log", file=sys.stderr)
            return 1
        print(f"mutate: the unmutated suite passes in {baseline_s:.0f} s; "
              f"{len(chosen)} mutations", flush=True)
        rows = []
        for k, m in enumerate(chosen, 1):
            res = run_one(scratch, build, m, args, logs)
            res.update(m=m, seconds=run_one.last_seconds)
            rows.append(res)
            print(f"[{k}/{len(chosen)}] {m.name}: {res['status']}"
                  + (f" by {res['by']}" if res["by"] else "")
                  + f" ({res['seconds']:.0f} s)", flush=True)
            # the table so far, after every mutation: a long run stopped early keeps it
            table = markdown(rows, started, time.time(), command, baseline_s)
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w") as f:
                f.write(table)
        print(table)
        print(f"mutate: table written to {args.out}")
        return 0
    finally:
        if args.keep:
            print(f"mutate: scratch copy and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
