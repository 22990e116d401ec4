"""Single points read their inputs where they lie and write their outputs in place
(src_c/vm.c, jx_point_value_parts): a pointer run (contiguous, at least RUN_MIN_LEN
instructions) takes its input operands from the caller's arrays, cut where an argument
ends; a run whose values are outputs in order, read by nothing after it, writes them
straight into the result (run field RUN_OUT); only the inputs that other instructions
read are copied into the work and only the other outputs gathered from it
(``Tape.io_copy``).

References: the rules re-derived here in Python from the tape's arrays and runs, written
apart from vm.c's passes; the batched sweep (which reads joined rows and has no runs) and
the gradient's tangent sweep, bit for bit, nan, inf and signed zeros included; NumPy.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from helpers import NASTY
from test_tape import _hvp_tape, _ring_programs, _rosen, assert_identical

import jacext as jx
from jacext.ops import A_IMM, ARITY, B_IMM, OP_MASK, OPS

RUN_MIN_LEN = 4
RUN_CONTIGUOUS = 1
RUN_RING = 7        # the column of the ring of a run's dst (-1: its slots)
RUN_OUT = 11        # the column of the output position a run writes in place (-1: none)
SELECT = OPS["SELECT"]


def _reads(word, a, b, s):
    """The slots one scalar instruction reads (an immediate operand reads none)."""
    base = word & OP_MASK
    out = []
    if not word & A_IMM:
        out.append(a)
    if ARITY[base] >= 2 and not word & B_IMM:
        out.append(b)
    if base == SELECT:
        out.append(s)
    return out


def _expected(tape, runs):
    """(the RUN_OUT column, the inputs copied in, the outputs gathered) by the rules of
    vm.h: a pointer run whose dst range is out_slot[o .. o+L-1] (each of those slots at
    no other output position), not in a ring, and neither read nor written by any later
    instruction, writes outputs o .. o+L-1; the inputs read by instructions outside the
    pointer runs, and the inputs that are outputs, are copied."""
    assert tape["blocks"].size == 0
    op, dst, a, b, s = (np.asarray(tape[k]) for k in ("op", "dst", "a", "b", "s"))
    n_in, outs = int(tape["n_in"]), [int(o) for o in tape["out_slot"]]
    reads = [_reads(int(op[i]), int(a[i]), int(b[i]), int(s[i])) for i in range(op.size)]
    last = {}
    for i in range(op.size):
        for slot in reads[i] + [int(dst[i])]:
            last[slot] = i
    pos = {}
    for k, slot in enumerate(outs):
        pos[slot] = -2 if slot in pos else k
    out_col, copied, written = [], set(), set()
    i = 0
    for row in (runs if runs.size else np.ones((op.size, 1), np.int64)):
        L = int(row[0])
        pointer = runs.size and L >= RUN_MIN_LEN and row[5] & RUN_CONTIGUOUS
        o = -1
        if pointer and row[RUN_RING] < 0:
            d, p = int(dst[i]), pos.get(int(dst[i]), -1)
            if p >= 0 and all(pos.get(d + k) == p + k and last[d + k] == i + k
                              for k in range(L)):
                o = p
                written.update(range(p, p + L))
        if not pointer:
            copied.update(slot for j in range(i, i + L) for slot in reads[j] if slot < n_in)
        out_col.append(o)
        i += L
    copied.update(slot for slot in outs if slot < n_in)
    return (np.array(out_col, np.int32), np.array(sorted(copied), np.int32),
            np.array([k for k in range(len(outs)) if k not in written], np.int32))


def _check_rules(F):
    runs = F.tape.runs()
    out_col, ins, outs = _expected(F.tape_arrays(), runs)
    if runs.size:
        np.testing.assert_array_equal(runs[:, RUN_OUT], out_col)
    got_in, got_out = F.tape.io_copy()
    np.testing.assert_array_equal(got_in, ins)
    np.testing.assert_array_equal(got_out, outs)
    return runs, got_in, got_out


def test_the_rosenbrock_hvp_tape_reads_its_inputs_in_place(rng):
    """Every input of the directional-derivative tape is read where it lies (no copy),
    and all but the outputs the boundary terms make are written in place; H v bit for bit
    the gradient's tangent sweep, and the batched sweep's."""
    n = 20_000
    F = jx.compile(_rosen, np.zeros(n))
    x, v = rng.uniform(-2.0, 2.0, n), rng.standard_normal(n)
    D = _hvp_tape(F, x, v)
    runs, ins, outs = _check_rules(D)
    assert ins.size == 0, ins
    assert (runs[:, RUN_OUT] >= 0).sum() == 1 and outs.size <= 4, (runs, outs)
    G = F.grad_function()
    X = np.stack([x, rng.standard_normal(n) * 30.0, x])
    V = np.stack([v, rng.uniform(-1.0, 1.0, n), v])
    X[2, :NASTY.size] = NASTY
    V[2, -NASTY.size:] = NASTY
    with np.errstate(all="ignore"):
        batched = D(X, V)
        for k in range(3):
            assert_identical(D(X[k], V[k]), batched[k])
            assert_identical(D(X[k], V[k]), G.jvp(X[k], V[k])[1])
            assert_identical(F.hvp(X[k], V[k]), G.jvp(X[k], V[k])[1])


@pytest.mark.parametrize("f", _ring_programs(), ids=lambda f: f.__name__)
def test_traced_programs_follow_the_rules_and_give_the_batched_values(f, rng):
    """Shifted slices, stencils, broadcast scalars and boundary terms (9,000 elements):
    the run outputs and copies re-derived, and each point equal to the batched sweep."""
    n = 9000
    F = jx.compile(f, np.zeros(n))
    _check_rules(F)
    X = np.stack([rng.uniform(-2.0, 2.0, n), rng.standard_normal(n) * 1e3,
                  rng.standard_normal(n)])
    X[2, :NASTY.size] = NASTY
    X[2, -NASTY.size:] = NASTY[::-1]
    with np.errstate(all="ignore"):
        batched = F(X)
        for k in range(3):
            assert_identical(F(X[k]), batched[k])


def _outputs_read_later(x):
    y = np.sin(x) * 2.0
    return y, y * y            # y is an output that a later run reads: no run writes it in place


def _one_output_twice(x):
    y = x * 3.0 - 1.0
    return np.concatenate([y, y])   # the same slots at two output positions: gathered


def _input_as_output(x):
    return np.concatenate([x[:5], np.exp(x[5:]) + 1.0])   # inputs that are outputs: copied


def _reversed_output(x):
    return (x * x - 2.0)[::-1]   # outputs against the run's order: gathered


@pytest.mark.parametrize("f", [_outputs_read_later, _one_output_twice, _input_as_output,
                               _reversed_output], ids=lambda f: f.__name__)
def test_outputs_go_in_place_only_where_the_rule_allows(f, rng):
    n = 6000
    F = jx.compile(f, np.zeros(n))
    runs, ins, outs = _check_rules(F)
    if f is _input_as_output:
        np.testing.assert_array_equal(ins, np.arange(5))
        assert (runs[:, RUN_OUT] >= 0).any(), runs
    if f in (_one_output_twice, _reversed_output):
        assert (runs[:, RUN_OUT] < 0).all() and outs.size == F.tape.n_outputs, runs
    x = rng.standard_normal(n)
    x[:NASTY.size] = NASTY
    with np.errstate(all="ignore"):
        want = f(x)
        got = F(x)
        batched = F(np.stack([x, x]))
    got, batched, want = ((r,) if not isinstance(r, tuple) else r for r in (got, batched, want))
    for g, b, w in zip(got, batched, want):
        assert_identical(g, b[0])
        np.testing.assert_allclose(g, w, rtol=1e-15)


def test_several_arguments_are_read_in_place_across_their_ends(rng):
    """A run over slots of two arguments (concatenate, then elementwise) is cut where the
    first argument ends; a float argument is one slot; the point equals the batched sweep
    of the same arguments and NumPy."""
    na, nb = 3001, 2999

    def f(a, b, t):
        z = np.concatenate([a, b])
        return np.sin(z) * t + z * z

    F = jx.compile(f, np.zeros(na), np.zeros(nb), 0.0)
    runs, ins, _ = _check_rules(F)
    assert ins.size < 4, ins
    a, b = rng.standard_normal(na), rng.standard_normal(nb)
    b[:NASTY.size] = NASTY
    with np.errstate(all="ignore"):
        got = F(a, b, 0.5)
        assert_identical(got, F(np.stack([a, a]), np.stack([b, b]), 0.5)[1])
        np.testing.assert_allclose(got, f(a, b, 0.5), rtol=1e-15)


def test_an_output_array_over_the_input_is_gathered_not_written_in_place(rng):
    """Tape.value with y the very array x (n outputs of n inputs): the runs then keep
    their slots and the outputs are gathered at the end, so no input is overwritten
    before it is read."""
    n = 5000
    F = jx.compile(lambda x: np.sin(x[::-1]) * 2.0 + x, np.zeros(n))
    runs, _, _ = _check_rules(F)
    assert (runs[:, RUN_OUT] >= 0).any(), runs
    x = rng.standard_normal(n)
    want = F(x)
    F.tape.value(x, x)
    assert_identical(x, want)


def test_points_on_several_threads_each_read_their_own_arrays(rng):
    """Threads calling one Function at once (each in its own work memory) read their own
    inputs in place and write their own results."""
    n = 20_000
    F = jx.compile(_rosen, np.zeros(n))
    xs = [rng.uniform(-2.0, 2.0, n) for _ in range(4)]
    vs = [rng.standard_normal(n) for _ in range(4)]
    D = _hvp_tape(F, xs[0], vs[0])
    want = [D(x, v) for x, v in zip(xs, vs)]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            got = list(pool.map(lambda k: D(xs[k], vs[k]), range(4)))
            for g, w in zip(got, want):
                assert_identical(g, w)


# ---- a single point on two threads (vm.h split_halo) ----

TILE = 1024                # vm.h JX_TILE
SPLIT_MIN_SPAN = 32768     # vm.h JX_SPLIT_MIN_SPAN
HALO_SHARE = 8             # vm.h JX_SPLIT_HALO_SHARE
RUN_LAG = 6
RUN_TILE_NEXT = 2


def _expected_split(tape, runs):
    """(span, halo) by the rule of vm.h, or None: a tape that is one tile chain, every long
    run with unit dst steps and no read of its own values; a long run's element k at time
    lag + k, a short run's instructions at time lag; the halo is the chain's reads' longest
    gap (reader's time - writer's time) times the number of long runs and short
    instructions (the longest path of reads), in whole tiles; a split where the span is at
    least SPLIT_MIN_SPAN and the halo at most 1 / HALO_SHARE of it."""
    if runs.shape[0] < 2 or tape["blocks"].size or not (runs[:-1, 5] & RUN_TILE_NEXT).all():
        return None
    op, dst, a, b, s = (np.asarray(tape[k], np.int64) for k in ("op", "dst", "a", "b", "s"))
    when = np.full(int(tape["n_slots"]), -1, np.int64)
    span = gap = depth = i = 0
    for row in runs:
        L, lag = int(row[0]), int(row[RUN_LAG])
        if L >= RUN_MIN_LEN:
            if row[1] != 1:
                return None
            k = np.arange(L)
            own = np.arange(dst[i], dst[i] + L)
            ops = [(a[i], row[2]), (b[i], row[3]), (s[i], row[4])]
            read = _reads(int(op[i]), 0, 1, 2)
            for m in read:
                at = ops[m][0] + k * ops[m][1]
                if np.isin(at, own).any():
                    return None
                made = when[at] >= 0
                if made.any():
                    gap = max(gap, int((lag + k[made] - when[at][made]).max()))
            when[own] = lag + k
            depth += 1
            span = max(span, lag + L)
        else:
            for j in range(i, i + L):
                for slot in _reads(int(op[j]), int(a[j]), int(b[j]), int(s[j])):
                    if when[slot] >= 0:
                        gap = max(gap, lag - int(when[slot]))
                when[dst[j]] = lag
                depth += 1
            span = max(span, lag + 1)
        i += L
    halo = -(-depth * gap // TILE) * TILE
    if span < SPLIT_MIN_SPAN or halo * HALO_SHARE > span:
        return None
    return span, halo


def test_the_rosenbrock_hvp_at_one_point_runs_on_two_threads(rng):
    """n = 10^5: the HVP tape is one chain of 99,999 times with a halo of one tile (the
    rule re-derived); each point, split over two threads, equals the gradient's tangent
    sweep and the batched sweep bit for bit, nan, inf and signed zeros included, and so
    do points asked for from several threads at once (one of them takes the split)."""
    n = 100_000
    F = jx.compile(_rosen, np.zeros(n))
    x, v = rng.uniform(-2.0, 2.0, n), rng.standard_normal(n)
    D = _hvp_tape(F, x, v)
    assert D.tape.split == _expected_split(D.tape_arrays(), D.tape.runs()) == (99_999, TILE)
    G = F.grad_function()
    X = np.stack([x, rng.standard_normal(n) * 30.0, x])
    V = np.stack([v, rng.uniform(-1.0, 1.0, n), v])
    X[2, :NASTY.size] = NASTY
    X[2, n // 2 - 7:n // 2 - 7 + NASTY.size] = NASTY       # around the cut
    V[2, -NASTY.size:] = NASTY
    with np.errstate(all="ignore"):
        batched = D(X, V)
        want = [G.jvp(X[k], V[k])[1] for k in range(3)]
        for k in range(3):
            assert_identical(D(X[k], V[k]), want[k])
            assert_identical(batched[k], want[k])
        with ThreadPoolExecutor(3) as pool:
            for _ in range(3):
                got = list(pool.map(lambda k: D(X[k], V[k]), range(3)))
                for k in range(3):
                    assert_identical(got[k], want[k])


def _sines(x):
    return np.sin(x) * 2.0 + x


def _neighbours(x):
    u = x[1:] - x[:-1] ** 2
    return np.concatenate([u[:1] * 3.0, u[1:] * u[:-1] + x[1:-1], u[-1:]])


def _broadcast_first(x):
    s = np.sin(x) * 2.0
    return s * s[0] - x     # every element reads s[0], made at time 0: a gap of the whole span


def _broadcast_input(x):
    return np.sin(x) * x[0] - x     # x[0] is an input: no gap


@pytest.mark.parametrize("f", [_sines, _neighbours, _broadcast_first, _broadcast_input]
                         + _ring_programs(),
                         ids=lambda f: f.__name__)
def test_elementwise_programs_split_where_the_rule_says(f, rng):
    """Which of these tapes split is the rule's (re-derived), and every point equals the
    batched sweep bit for bit; an output array over the input (y is x) is gathered from
    each thread's work."""
    n = 50_000
    F = jx.compile(f, np.zeros(n))
    split = _expected_split(F.tape_arrays(), F.tape.runs())
    assert F.tape.split == split
    if f in (_sines, _broadcast_input):
        assert split is not None and split[1] == 0, split
    if f is _broadcast_first:
        assert split is None
    X = np.stack([rng.uniform(-2.0, 2.0, n), rng.standard_normal(n) * 1e3, rng.standard_normal(n)])
    X[2, :NASTY.size] = NASTY
    X[2, n // 2:n // 2 + NASTY.size] = NASTY
    with np.errstate(all="ignore"):
        batched = F(X)
        for k in range(3):
            assert_identical(F(X[k]), batched[k])
        if F.tape.n_outputs == n:
            y = X[1].copy()
            F.tape.value(y, y)
            assert_identical(y, batched[1])


def test_a_split_is_counted(rng):
    """The traced Rosenbrock gradient at n = 10^5 splits; at n = 30,000 (under the span
    that pays for a thread) it does not."""
    for n, splits in ((100_000, True), (30_000, False)):
        G = jx.compile(_rosen, np.zeros(n)).grad_function()
        assert (G.tape.split is not None) == splits
        assert G.tape.split == _expected_split(G.tape_arrays(), G.tape.runs())
        x = rng.uniform(-2.0, 2.0, n)
        assert_identical(G(x), G(np.stack([x, x]))[1])


def _split_in_child(n):
    G = jx.compile(_rosen, np.zeros(n)).grad_function()
    x = np.linspace(-1.5, 1.5, n)
    return G(x), G(np.stack([x, x]))[0]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork: POSIX only")
# (JAX, where an earlier test imported it, warns at every fork that it has threads)
@pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning")
def test_a_forked_child_splits_its_own_points():
    """The helper thread stays for the next point; a child forked after a split point has
    no such thread (pthread_atfork) and starts its own: its points finish and equal the
    batched sweep."""
    n = 100_000
    G = jx.compile(_rosen, np.zeros(n)).grad_function()
    assert G.tape.split is not None
    G(np.linspace(-1.0, 1.0, n))            # the helper thread now exists in this process
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        one, batched = pool.apply_async(_split_in_child, (n,)).get(timeout=120)
    assert_identical(one, batched)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="affinity: Linux only")
def test_one_core_never_splits_and_gives_the_same_numbers():
    """A process that may run on one core only (its affinity at import) keeps single
    points on one thread: the same numbers as a process that splits them."""
    n = 100_000
    code = ("import os, sys, numpy as np\n"
            "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
            "sys.path.insert(0, sys.argv[1])\n"
            "import jacext as jx\n"
            "from jacext import _tape\n"
            "assert _tape._CORES == 1\n"
            f"n = {n}\n"
            "f = lambda x: np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)\n"
            "G = jx.compile(f, np.zeros(n)).grad_function()\n"
            "np.save(sys.argv[2], G(np.linspace(-1.5, 1.5, n)))\n")
    import subprocess
    import sys
    import tempfile

    root = os.path.dirname(os.path.dirname(os.path.abspath(jx.__file__)))
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "g.npy")
        subprocess.run([sys.executable, "-c", code, root, out], check=True, timeout=300)
        one_core = np.load(out)
    G = jx.compile(_rosen, np.zeros(n)).grad_function()
    assert G.tape.split is not None
    assert_identical(G(np.linspace(-1.5, 1.5, n)), one_core)


def test_a_batch_of_one_of_several_arguments_takes_the_points_path(rng):
    """F(x[None], v[None]) of a two-argument Function is its point, reshaped (one and two
    leading axes of length one, single and tuple outputs), bit for bit; broadcasts and
    batches of more points keep the batch path with the same numbers."""
    n = 50_000

    def f(a, b):
        return np.sin(a) * b + a * a

    def g(a, b):
        return np.sin(a) * b, a - b

    for fn in (f, g):
        F = jx.compile(fn, np.zeros(n), np.zeros(n))
        a, b = rng.standard_normal(n), rng.standard_normal(n)
        a[:NASTY.size] = NASTY
        with np.errstate(all="ignore"):
            point = F(a, b)
            for lead in ((1,), (1, 1)):
                got = F(a.reshape(lead + (n,)), b.reshape(lead + (n,)))
                batched = F(np.stack([a, a]), np.stack([b, b]))
                for p, q, r in zip(*((x,) if fn is f else x for x in (point, got, batched))):
                    assert q.shape == lead + (n,)
                    assert_identical(q.reshape(n), p)
                    assert_identical(r[1], p)
            mixed = F(a[None], b)          # a broadcast: the batch path
            for p, q in zip(*((x,) if fn is f else x for x in (point, mixed))):
                assert_identical(q[0], p)
