"""The Tape (jacext/_tape.pyx): its checks and its single-point value sweep's runs.

Corrupt tapes and pickles (every field out of range, aliasing, missing or short arrays)
raise ValueError; the runs of like instructions the value sweep goes by (``F.tape.runs()``)
and their tile chains, on traced and hand-made tapes, against a Python re-derivation of
the cut and the tape executed one instruction at a time.  What a Function does with its
Tape (values, Jacobians, batches) is tests/test_function.py.
"""
from __future__ import annotations

import copy
import math
import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from helpers import NASTY
from jacext._tape import BLOCK

import jacext as jx
from jacext import Function
from jacext.ops import A_IMM, ARITY, B_IMM, OP_MASK, OPS

# ------------------------------------------------------------- corrupt tapes --

def _tape_and_args():
    F = jx.compile(lambda x, y: (np.where(x > 0, np.sqrt(x), 0.0) * y[0], np.sin(x) + 2.0),
                   np.zeros(3), np.zeros(2))
    fn, args = F.__reduce__()
    assert fn is Function
    return F, args


def _corrupt(field, edit):
    F, args = _tape_and_args()
    tape = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in args[0].items()}
    for v in tape.values():
        if isinstance(v, np.ndarray):
            v.setflags(write=True)
    if field is not None:
        edit(tape)
    return F, (tape,) + tuple(args[1:])


def _select_index(tape):
    return int(np.nonzero((tape["op"] & 0xFF) == OPS["SELECT"])[0][0])


def _alias(tape, operand):
    i = _select_index(tape)
    tape["dst"][i] = tape[operand][i]


CORRUPTIONS = {
    "dst past the end": lambda t: t["dst"].__setitem__(0, t["n_slots"]),
    "dst negative": lambda t: t["dst"].__setitem__(-1, -1),
    "dst into an input": lambda t: t["dst"].__setitem__(0, 0),
    "a past the end": lambda t: t["a"].__setitem__(1, t["n_slots"] + 5),
    "a negative": lambda t: t["a"].__setitem__(0, -3),
    "b huge": lambda t: t["b"].__setitem__(2, 2**31 - 1),
    "unknown op": lambda t: t["op"].__setitem__(0, 250),
    "negative op": lambda t: t["op"].__setitem__(0, -1),
    "both immediates": lambda t: t["op"].__setitem__(0, int(OPS["MUL"]) | A_IMM | B_IMM),
    "immediate on a unary op": lambda t: t["op"].__setitem__(0, int(OPS["SIN"]) | B_IMM),
    "unknown flag": lambda t: t["op"].__setitem__(0, int(OPS["ADD"]) | 0x4000),
    "select condition past the end": lambda t: t["s"].__setitem__(_select_index(t), 10**6),
    "select condition negative": lambda t: t["s"].__setitem__(_select_index(t), -1),
    "select condition is its dst": lambda t: t["s"].__setitem__(
        _select_index(t), t["dst"][_select_index(t)]),
    "s past the end (not a select)": lambda t: t["s"].__setitem__(0, t["n_slots"]),
    "short s": lambda t: t.__setitem__("s", t["s"][:-1]),
    "no s": lambda t: t.pop("s"),
    # batched sweeps assume an instruction never writes over its operand's slot
    "dst is its operand": lambda t: _alias(t, "a"),
    "dst is its second operand": lambda t: _alias(t, "b"),
    "output past the end": lambda t: t["out_slot"].__setitem__(0, t["n_slots"]),
    "output negative": lambda t: t["out_slot"].__setitem__(1, -1),
    "too few slots": lambda t: t.__setitem__("n_slots", 4),
    "negative slots": lambda t: t.__setitem__("n_slots", -1),
    "n_in too large": lambda t: t.__setitem__("n_in", 6),
    "n_in negative": lambda t: t.__setitem__("n_in", -5),
    "short dst": lambda t: t.__setitem__("dst", t["dst"][:-1]),
    "long imm": lambda t: t.__setitem__("imm", np.append(t["imm"], 0.0)),
    "output count": lambda t: t.__setitem__("out_slot", t["out_slot"][:-1]),
    "too many constants": lambda t: t.__setitem__("const_value", np.zeros(t["n_slots"])),
}


def test_uncorrupted_copy_loads():
    F, args = _corrupt(None, None)
    G = Function(*args)
    x, y = np.array([0.0, 1.0, 4.0]), np.array([2.0, 3.0])
    for a, b in zip(F(x, y), G(x, y)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("what", sorted(CORRUPTIONS))
def test_corrupt_tape_raises_value_error(what):
    _, args = _corrupt(what, CORRUPTIONS[what])
    with pytest.raises(ValueError, match="jacext"):
        Function(*args)


@pytest.mark.parametrize("what", ["dst past the end", "unknown op", "output past the end",
                                  "select condition past the end"])
def test_corrupt_pickle_raises_value_error(what):
    F, args = _corrupt(what, CORRUPTIONS[what])
    good = pickle.dumps(F)
    # rebuild the same pickle with the corrupted tape
    bad = pickle.dumps(_Reduced(args))
    assert isinstance(pickle.loads(good), Function)
    with pytest.raises(ValueError):
        pickle.loads(bad)


class _Reduced:
    def __init__(self, args):
        self.args = copy.deepcopy(args)

    def __reduce__(self):
        return (Function, self.args)


# ----------------------------------------------------------------------- runs --
# The single-point value sweep cuts the tape into runs (vm.c's jx_tape_runs): consecutive
# instructions of one op word (and one immediate) whose dst/a/b/condition slots step
# evenly.  A run whose steps are all 1 and whose operand ranges miss its dst range is one
# vector loop (flag 1); any other run is a strided loop that must still execute its
# instructions in order.  F.tape.runs() gives (length, step dst, a, b, s, flags) per run,
# or nothing when the runs are too short to be used (4 * n_runs > 3 * n_instructions).
# References: NumPy on the traced expression, and the tape executed one instruction at a
# time in Python (_interpret); the expected tables are written out by hand, and a Python
# re-derivation of the cut (_expected_runs) is checked against them.

RUN_FIELDS = 7              # the cut's fields; C's table has 5 more: the rings (below),
RING_FIELDS = 4             # then the outputs a run writes in place (test_in_place.py)
RINGS = slice(RUN_FIELDS, RUN_FIELDS + RING_FIELDS)
READ_RINGS = slice(RUN_FIELDS + 1, RUN_FIELDS + RING_FIELDS)
RUN_CONTIGUOUS = 1
RUN_TILE_NEXT = 2            # the next run continues this one's tile chain
RUN_LAG = 6                  # the column of a run's lag in its tile chain
RUN_MIN_LEN = 4              # shorter runs go instruction by instruction
TILE, TILE_MIN, TILE_MAX_CHAIN, TILE_LAG_MAX = 1024, 4096, 64, 1024
SELECT = OPS["SELECT"]


def _ins(name, dst, a, b=None, imm=0.0, flag=0, s=None):
    """One instruction row; a unary op's b (and any op's s but SELECT's condition) is its a
    (any valid slot would do)."""
    return (int(OPS[name]) | flag, dst, a, a if b is None else b, a if s is None else s,
            float(imm))


def _hand_tape(n_in, code, out_slot, const_value=()):
    op, dst, a, b, s, imm = (list(col) for col in zip(*code))
    n_slots = max(max(dst), max(out_slot), n_in + len(const_value) - 1) + 1
    return {"op": np.array(op, np.int32), "dst": np.array(dst, np.int32),
            "a": np.array(a, np.int32), "b": np.array(b, np.int32),
            "s": np.array(s, np.int32), "imm": np.array(imm, np.float64),
            "out_slot": np.array(out_slot, np.int32),
            "const_value": np.array(const_value, np.float64), "n_in": n_in,
            "n_slots": n_slots}


def _hand_function(tape):
    return Function(tape, ((int(tape["n_in"]),),), ((len(tape["out_slot"]),),), False, "t")


def _interpret(tape, x):
    """The tape run one instruction at a time on NumPy float64 scalars (math.sin, the C
    library's sin, for SIN, as the VM calls it)."""
    n_in = int(tape["n_in"])
    v = np.zeros(int(tape["n_slots"]))
    v[:n_in] = x
    v[n_in:n_in + len(tape["const_value"])] = tape["const_value"]
    with np.errstate(all="ignore"):
        for word, d, a, b, s, imm in zip(*(tape[k] for k in ("op", "dst", "a", "b", "s", "imm"))):
            word, base, c = int(word), int(word) & OP_MASK, np.float64(imm)
            p = c if word & A_IMM else v[a]
            q = c if word & B_IMM else v[b]
            if base == OPS["ADD"]:
                z = p + q
            elif base == OPS["SUB"]:
                z = p - q
            elif base == OPS["MUL"]:
                z = p * q
            elif base == OPS["DIV"]:
                z = p / q
            elif base == OPS["SIN"]:
                z = math.sin(p) if math.isfinite(p) else math.nan
            elif base == SELECT:
                z = p if v[s] != 0.0 else q
            else:
                raise AssertionError(f"no reference for op {base}")
            v[d] = z
    return v[np.asarray(tape["out_slot"])].copy()


def _same_immediate(p, q):
    """Equal as the op sees them: == and the same sign (0.0 and -0.0 are different
    divisors); nan never equals itself."""
    return p == q and math.copysign(1.0, p) == math.copysign(1.0, q)


def _expected_runs(tape):
    """jx_tape_runs' cut, re-derived: maximal runs of one op word (one immediate where the
    word has one) over evenly stepping read slots (unread slots do not count)."""
    op, dst, ta, tb, ts, imm = (np.asarray(tape[k]) for k in ("op", "dst", "a", "b", "s", "imm"))
    n = len(op)

    def reads(i):
        word = int(op[i])
        base = word & OP_MASK
        return (not word & A_IMM, ARITY[base] >= 2 and not word & B_IMM, base == SELECT)

    def slots(i):
        return (int(dst[i]), int(ta[i]), int(tb[i]),
                int(ts[i]) if int(op[i]) & OP_MASK == SELECT else 0)

    def same(i, j):
        with_imm = int(op[i]) & (A_IMM | B_IMM)
        return op[j] == op[i] and (not with_imm or _same_immediate(imm[i], imm[j]))

    def run_from(i):
        used = (True,) + reads(i)
        steps = [0, 0, 0, 0]
        j = i + 1
        if j < n and same(i, j):
            steps = [sj - si if u else 0 for sj, si, u in zip(slots(j), slots(i), used)]
            while j < n and same(i, j) and all(
                    not u or sj - sp == st
                    for sj, sp, st, u in zip(slots(j), slots(j - 1), steps, used)):
                j += 1
        return j, steps, used

    rows, i = [], 0
    while i < n:
        j, steps, used = run_from(i)
        if j - i == 2 and j < n and run_from(i + 1)[0] > j + 1:
            j, steps = i + 1, [0, 0, 0, 0]      # the first alone, then the longer run
        length, flags = j - i, 0
        if length > 1 and all(st == 1 for st, u in zip(steps, used) if u):
            d0, d1 = int(dst[i]), int(dst[j - 1])
            meets = any(u and lo <= d1 and lo + length - 1 >= d0
                        for lo, u in zip(slots(i)[1:], used[1:]))
            flags = 0 if meets else RUN_CONTIGUOUS
        rows.append([length] + steps + [flags, 0])
        i = j
    _mark_tile_chains(rows, slots, reads, op)
    if 4 * len(rows) > 3 * n:
        rows = []
    return np.array(rows, dtype=np.int32).reshape(-1, RUN_FIELDS)


def _run_accesses(row, first, slots, reads, timed):
    """[(writes, slots, times)] of a run: its dst, then each slot range it reads; element
    k at time k (a long run) or 0 (a short one), every element listed."""
    k = np.arange(row[0])
    times = k if timed else np.zeros_like(k)
    used = (True,) + reads(first)
    return [(m == 0, base + k * step, times)
            for m, (base, step, u) in enumerate(zip(slots(first), row[1:5], used)) if u]


def _largest_gap(x, y):
    """max over slots touched by both of (latest time x touches it) - (earliest time y
    does), by brute force over every element; None when they share no slot."""
    xs, xi = np.unique(x[1], return_inverse=True)
    ys, yi = np.unique(y[1], return_inverse=True)
    latest = np.full(xs.size, np.iinfo(np.int64).min)
    np.maximum.at(latest, xi, x[2])
    earliest = np.full(ys.size, np.iinfo(np.int64).max)
    np.minimum.at(earliest, yi, y[2])
    _, ix, iy = np.intersect1d(xs, ys, return_indices=True)
    return int((latest[ix] - earliest[iy]).max()) if ix.size else None


def _mark_tile_chains(rows, slots, reads, op):
    """Tile chains, re-derived by brute force: a chain starts at a long run (at least
    TILE_MIN, dst step 1, read steps 0 or 1) and goes on over consecutive long or short
    (under RUN_MIN_LEN) runs, at most TILE_MAX_CHAIN; a run's lag is the least that puts
    each of its accesses to a slot no earlier than any access of an earlier run of the
    chain to that slot where one of the two writes (time: lag + k for element k of a
    long run, lag for a short one); a long run joins at a lag of at most TILE_LAG_MAX, a
    short one within the chain's span."""
    first = np.cumsum([0] + [row[0] for row in rows])[:-1]
    chain, span = [], 0
    for r, row in enumerate(rows):
        i = int(first[r])
        read_steps = [st for st, u in zip(row[2:5], reads(i)) if u]
        if row[0] < RUN_MIN_LEN and int(op[i]) != BLOCK:
            kind = "short"
        elif row[0] >= TILE_MIN and row[1] == 1 and all(st in (0, 1) for st in read_steps):
            kind = "long"
        else:
            kind = None
        mine = _run_accesses(row, i, slots, reads, kind == "long") if kind else []
        joined = False
        if kind and 0 < len(chain) < TILE_MAX_CHAIN:
            need = 0
            for lag, theirs in chain:
                for x in theirs:
                    for y in mine:
                        if x[0] or y[0]:
                            g = _largest_gap(x, y)
                            if g is not None:
                                need = max(need, lag + g)
            if need <= (TILE_LAG_MAX if kind == "long" else span):
                rows[r - 1][5] |= RUN_TILE_NEXT
                row[RUN_LAG] = need
                joined = True
        if not joined:
            chain, span = [], 0
        if joined or kind == "long":
            chain.append((row[RUN_LAG], mine))
            span = max(span, row[RUN_LAG] + (row[0] if kind == "long" else 1))


def _schedule_keeps_order(tape, runs):
    """Whether the value sweep's order (runs in turn; a tile chain TILE times at a time,
    its runs in order within one) keeps, for every slot, each write after the reads and
    writes before it in the tape and before those after it."""
    op, dst, ta, tb, ts = (np.asarray(tape[k]) for k in ("op", "dst", "a", "b", "s"))
    key = [None] * len(op)
    i, r = 0, 0
    while r < len(runs):
        e = r
        while runs[e][5] & RUN_TILE_NEXT:
            e += 1
        for q in range(r, e + 1):
            length, lag = int(runs[q][0]), int(runs[q][RUN_LAG])
            for k in range(length):
                time = lag if length < RUN_MIN_LEN else lag + k
                key[i + k] = (r, time // TILE if e > r else 0, q - r, k)
            i += length
        r = e + 1
    last_write, reads_since = {}, {}
    for j in range(len(op)):
        word = int(op[j])
        base = word & OP_MASK
        used = (not word & A_IMM, ARITY[base] >= 2 and not word & B_IMM, base == SELECT)
        for slot, u in zip((int(ta[j]), int(tb[j]), int(ts[j])), used):
            if u:
                if slot in last_write and not key[last_write[slot]] < key[j]:
                    return False
                reads_since.setdefault(slot, []).append(j)
        slot = int(dst[j])
        earlier = reads_since.pop(slot, []) + ([last_write[slot]] if slot in last_write else [])
        if any(not key[p] < key[j] for p in earlier if p != j):
            return False
        last_write[slot] = j
    return True


def assert_identical(actual, desired):
    """Equal bit for bit, but for a nan's payload: nan in the same places, zeros of the
    same sign."""
    actual, desired = np.asarray(actual), np.asarray(desired)
    np.testing.assert_array_equal(actual, desired)
    keep = ~np.isnan(desired)
    np.testing.assert_array_equal(np.signbit(actual[keep]), np.signbit(desired[keep]),
                                  err_msg="signs of zeros")


def _broyden_expr(x):
    return ((3 - 2 * x) * x - np.concatenate([[0.0], x[:-1]])
            - 2 * np.concatenate([x[1:], [0.0]]) + 1)


def test_traced_elementwise_function_runs_as_contiguous_loops(rng):
    n = 1000
    F = jx.compile(_broyden_expr, np.zeros(n))
    runs = F.tape.runs()[:, :RUN_FIELDS]
    assert runs.dtype == np.int32 and runs.shape[1] == RUN_FIELDS and runs.shape[0] > 0
    assert (runs[:, 0] >= 1).all()
    assert runs[:, 0].sum() == F.n_instructions
    assert 4 * runs.shape[0] <= 3 * F.n_instructions
    in_vector_loops = runs[(runs[:, 5] & RUN_CONTIGUOUS) != 0, 0].sum()
    assert in_vector_loops > 0.9 * F.n_instructions, runs
    np.testing.assert_array_equal(runs, _expected_runs(F.tape_arrays()))
    # values: NumPy's, bit for bit, at ordinary points and with inf, nan and signed zeros
    nasty = rng.standard_normal(n)
    where = rng.choice(n, 4 * NASTY.size, replace=False)
    nasty[where] = np.resize(NASTY, where.size)
    nasty[:2], nasty[-2:] = (np.nan, -0.0), (np.inf, 0.0)
    for x in (rng.standard_normal(n), rng.uniform(-1e3, 1e3, n), nasty, np.zeros(n),
              np.full(n, -0.0)):
        with np.errstate(all="ignore"):
            want = _broyden_expr(x.copy())
        assert_identical(F(x), want)
    # a small batch (fewer points than a block: the point sweep, runs included)
    X = np.stack([nasty, -nasty, nasty[::-1]])
    with np.errstate(all="ignore"):
        assert_identical(F(X), np.stack([_broyden_expr(r.copy()) for r in X]))


def test_traced_function_with_runs_pickles(rng):
    F = jx.compile(_broyden_expr, np.zeros(300))
    G = pickle.loads(pickle.dumps(F))
    assert G.n_instructions == F.n_instructions
    np.testing.assert_array_equal(G.tape.runs(), F.tape.runs())
    assert G.tape.runs().shape[0] > 0
    for x in (rng.standard_normal(300), np.resize(NASTY, 300)):
        with np.errstate(all="ignore"):
            want = _broyden_expr(x.copy())
        assert_identical(G(x), F(x))
        assert_identical(G(x), want)


# name -> (n_in, code, out_slot, the run table it must get); inputs are slots 0 .. n_in-1
HAND_TAPES = {
    # (a) strided, step -1: y[15 - k] = x[k] + x[7 - k], then read back in reverse
    "step -1": (8, [_ins("ADD", 15 - k, k, 7 - k) for k in range(8)]
                + [_ins("SUB", 16 + k, 15 - k, 8 + k) for k in range(8)],
                list(range(8, 24)),
                [[8, -1, 1, -1, 0, 0], [8, 1, -1, 1, 0, 0]]),
    # (b) a broadcast operand (step 0) on either side; a dst of step 0 (the last write wins)
    "broadcast": (8, [_ins("SIN", 8, 0)] + [_ins("MUL", 9 + k, k, 8) for k in range(8)]
                  + [_ins("SUB", 17 + k, 8, k) for k in range(8)]
                  + [_ins("ADD", 25, k, 9 + k) for k in range(4)],
                  list(range(8, 26)),
                  [[1, 0, 0, 0, 0, 0], [8, 1, 1, 0, 0, 0], [8, 1, 0, 1, 0, 0],
                   [4, 0, 1, 1, 0, 0]]),
    # (c) anti-dependences: instruction k reads the slot that instruction k + 1 then
    # overwrites (steps 1, the operand range meeting the dst range; and steps -1)
    "anti-dependence": (8, [_ins("SIN", 8 + k, k) for k in range(8)]
                        + [_ins("SUB", 8 + k, 9 + k, k) for k in range(7)]
                        + [_ins("DIV", 15 - k, 14 - k, k) for k in range(7)],
                        list(range(8, 16)),
                        [[8, 1, 1, 0, 0, 1], [7, 1, 1, 1, 0, 0], [7, -1, -1, 1, 0, 0]]),
    # (d) running chains: each instruction reads the previous one's result (a running sum
    # with steps 1; a running product with steps -2)
    "chain": (8, [_ins("MUL", 8, 0, 1)] + [_ins("ADD", 9 + k, 8 + k, k) for k in range(8)]
              + [_ins("SIN", 34, 7)] + [_ins("MUL", 32 - 2 * k, 34 - 2 * k, k) for k in range(8)],
              list(range(9, 17)) + list(range(18, 33, 2)),
              [[1, 0, 0, 0, 0, 0], [8, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0],
               [8, -2, -2, 1, 0, 0]]),
    # (e) immediates: one immediate per run (2.5 - x, x / 3), a change of immediate cuts
    # the run (x * 2 then x * 5), alternating ones give runs of one, and an operand slot
    # the op does not read may step anyhow
    "immediates": (8, [_ins("SUB", 8 + k, k, imm=2.5, flag=A_IMM) for k in range(8)]
                   + [_ins("DIV", 16 + k, 8 + k, imm=3.0, flag=B_IMM) for k in range(8)]
                   + [_ins("MUL", 24 + k, 16 + k, imm=2.0 if k < 4 else 5.0, flag=B_IMM)
                      for k in range(8)]
                   + [_ins("SUB", 32 + k, 24 + k, imm=1.5 * (-1) ** k, flag=A_IMM)
                      for k in range(4)]
                   + [_ins("ADD", 36 + k, k, (0, 5, 2, 7)[k], imm=1.0, flag=B_IMM)
                      for k in range(4)],
                   list(range(8, 40)),
                   [[8, 1, 0, 1, 0, 1], [8, 1, 1, 0, 0, 1], [4, 1, 1, 0, 0, 1],
                    [4, 1, 1, 0, 0, 1]] + [[1, 0, 0, 0, 0, 0]] * 4 + [[4, 1, 1, 0, 0, 1]]),
    # SELECT: its condition slot steps too; a condition range meeting the dst range (an
    # anti-dependence through the condition alone) makes the run strided
    "select": (8, [_ins("SUB", 8 + k, k, imm=0.5, flag=B_IMM) for k in range(8)]
               + [_ins("SELECT", 16 + k, k, 8 + k, s=8 + k) for k in range(8)]
               + [_ins("SELECT", 8 + k, 16 + k, k, s=9 + k) for k in range(7)],
               list(range(8, 24)),
               [[8, 1, 1, 0, 0, 1], [8, 1, 1, 1, 1, 1], [7, 1, 1, 1, 1, 0]]),
    # constants: a run reading a constant slot (step 0) and one over the constants
    "constants": (4, [_ins("MUL", 7 + k, k, 4) for k in range(4)]
                  + [_ins("ADD", 11 + k, 7 + k, 4 + k % 3) for k in range(3)]
                  + [_ins("DIV", 14 + k, 5, 7 + k) for k in range(4)],
                  list(range(7, 18)),
                  [[4, 1, 1, 0, 0, 0], [3, 1, 1, 1, 0, 1], [4, 1, 0, 1, 0, 0]]),
}
HAND_CONSTANTS = {"constants": (-1.25, 3.0, 0.1)}


def _hand_points(n_in, rng):
    return [rng.standard_normal(n_in), rng.uniform(-4.0, 4.0, n_in), NASTY[:n_in].copy(),
            NASTY[-n_in:].copy(), NASTY[2:2 + n_in][::-1].copy()]


@pytest.mark.parametrize("name", sorted(HAND_TAPES))
def test_hand_made_runs_execute_as_one_instruction_at_a_time(name, rng):
    n_in, code, out_slot, table = HAND_TAPES[name]
    tape = _hand_tape(n_in, code, out_slot, HAND_CONSTANTS.get(name, ()))
    table = np.array([row + [0] for row in table], dtype=np.int32)    # no chain: lag 0
    # the table written by hand is the cut's rule (and is long enough to be used)
    np.testing.assert_array_equal(_expected_runs(tape), table)
    F = _hand_function(tape)
    np.testing.assert_array_equal(F.tape.runs()[:, :RUN_FIELDS], table)
    assert F.tape.runs()[:, 0].sum() == F.n_instructions == len(code)
    points = _hand_points(n_in, rng)
    for x in points + points[:1]:      # again: the work memory of an earlier call
        assert_identical(F(x), _interpret(tape, x))
    # a batch of 70 points: one block of the batched value sweep and a tail
    X = np.concatenate([np.stack(points), rng.standard_normal((65, n_in))])
    assert_identical(F(X), np.stack([_interpret(tape, x) for x in X]))
    # pickles (the runs are derived again) with the same table and values
    G = pickle.loads(pickle.dumps(F))
    np.testing.assert_array_equal(G.tape.runs()[:, :RUN_FIELDS], table)
    for x in points:
        assert_identical(G(x), F(x))


L_TILE = TILE_MIN


def _tile_code(shift):
    """t = x * 2; u = 3 - t[k + shift]; t = x * -2 (over t again); out = u + t: four runs
    of L_TILE.  shift 0: one tile chain, every run in step; shift 1: u reads t one element
    ahead, so u runs one element behind t, and out behind u; shift -1: the third run
    writes over t one element behind u's reads of it; shift 2000: u would run more than
    TILE_LAG_MAX behind t, so it starts a chain of its own (and, reading its own dst
    range, is a strided loop)."""
    L = L_TILE
    T, U, OUT = L, 2 * L + 1, 3 * L + 1
    return ([_ins("MUL", T + k, k, imm=2.0, flag=B_IMM) for k in range(L)]
            + [_ins("SUB", U + k, T + shift + k, T + shift + k, imm=3.0, flag=A_IMM)
               for k in range(L)]
            + [_ins("MUL", T + k, k, imm=-2.0, flag=B_IMM) for k in range(L)]
            + [_ins("ADD", OUT + k, U + k, T + k) for k in range(L)],
            list(range(OUT, OUT + L)))


@pytest.mark.parametrize("shift, flags, lags", [
    (0, [3, 3, 3, 1], [0, 0, 0, 0]),
    (1, [3, 3, 3, 1], [0, 1, 0, 1]),
    (-1, [3, 3, 3, 1], [0, 0, 1, 1]),
    (2000, [1, 2, 3, 1], [0, 0, 0, 0]),
])
def test_tile_chains_run_element_for_element_in_order(shift, flags, lags, rng):
    code, out_slot = _tile_code(shift)
    tape = _hand_tape(L_TILE, code, out_slot)
    L = L_TILE
    table = np.array([[L, 1, 1, 0, 0, flags[0], lags[0]], [L, 1, 0, 1, 0, flags[1], lags[1]],
                      [L, 1, 1, 0, 0, flags[2], lags[2]], [L, 1, 1, 1, 0, flags[3], lags[3]]],
                     dtype=np.int32)
    np.testing.assert_array_equal(_expected_runs(tape), table)
    assert _schedule_keeps_order(tape, table)
    F = _hand_function(tape)
    np.testing.assert_array_equal(F.tape.runs()[:, :RUN_FIELDS], table)
    x = rng.standard_normal(L)
    x[:NASTY.size] = NASTY
    for point in (x, x[::-1].copy(), x):
        with np.errstate(all="ignore"):
            assert_identical(F(point), _interpret(tape, point))


def test_tile_chain_lags_are_needed():
    """The verifier of the sweep's order finds the lags necessary: without them (every
    run of the chain in step) a run would read an element before it is written."""
    code, out_slot = _tile_code(1)
    tape = _hand_tape(L_TILE, code, out_slot)
    runs = _expected_runs(tape)
    assert _schedule_keeps_order(tape, runs)
    runs[:, RUN_LAG] = 0
    assert not _schedule_keeps_order(tape, runs)


def test_tile_chains_of_a_traced_function(rng):
    """An elementwise function over 5,000 entries: its aligned runs share tiles, and the
    values are NumPy's bit for bit (the same operations on each element, in order)."""
    def f(x):
        t = np.sin(x) * 2.0
        return (t + x) * (x - 0.5) - t / (x * (x + 1.0) + 2.0)

    n = 5000
    F = jx.compile(f, np.zeros(n))
    runs = F.tape.runs()[:, :RUN_FIELDS]
    assert (runs[:, 5] & RUN_TILE_NEXT).sum() >= 4, runs
    np.testing.assert_array_equal(runs, _expected_runs(F.tape_arrays()))
    nasty = rng.standard_normal(n)
    nasty[rng.choice(n, NASTY.size, replace=False)] = NASTY
    for x in (rng.standard_normal(n), nasty, np.full(n, -0.0)):
        with np.errstate(all="ignore"):
            assert_identical(F(x), f(x.copy()))


def _rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def test_tile_chains_over_shifted_runs_and_boundary_elements(rng):
    """The tape of a Hessian-vector product of the chained Rosenbrock function (runs that
    read element k + 1 or k - 1 of earlier runs, and the ends computed apart): runs an
    element apart, and the short runs of the ends, join tile chains at lags that keep the
    tape's order (the brute-force re-derivation; the order verifier), and the single-point
    sweep gives the numbers of the batched sweep (which has no runs) bit for bit."""
    n = 5000
    F = jx.compile(_rosen, np.zeros(n))
    G = F.grad_function()
    K = jx.compile(lambda x, v, t: G(x + t * v), np.zeros(n), np.zeros(n), 0.0)
    D = K.jacobian_function(argnums=2)
    runs, tape = D.tape.runs()[:, :RUN_FIELDS], D.tape_arrays()
    np.testing.assert_array_equal(runs, _expected_runs(tape))
    in_chain = (runs[:, 5] & RUN_TILE_NEXT) != 0
    assert in_chain.sum() >= 20, runs
    assert (runs[in_chain, RUN_LAG] > 0).any(), runs
    assert (in_chain & (runs[:, 0] < RUN_MIN_LEN)).any(), runs
    assert _schedule_keeps_order(tape, runs)
    X, V = rng.uniform(-2.0, 2.0, (64, n)), rng.standard_normal((64, n))
    X[1, :NASTY.size] = NASTY
    V[2, -NASTY.size:] = NASTY
    with np.errstate(all="ignore"):
        batched = D(X, V, np.zeros(64))
        for k in (0, 1, 2, 63):
            assert_identical(D(X[k], V[k], 0.0), batched[k])
    np.testing.assert_allclose(batched[0], F.hessian(X[0], sparse=True) @ V[0], rtol=1e-12,
                               atol=1e-9)


@pytest.mark.parametrize("code, used", [
    # 4 instructions in 3 runs: 4 * 3 <= 3 * 4, used
    ([_ins("ADD", 8, 0, 2), _ins("ADD", 9, 1, 3), _ins("MUL", 10, 8, 9), _ins("SUB", 11, 10, 0)],
     True),
    # 4 instructions in 4 runs, and 5 in 4: too short, not used
    ([_ins("ADD", 8, 0, 2), _ins("MUL", 9, 1, 3), _ins("SUB", 10, 8, 9),
      _ins("DIV", 11, 10, 0)], False),
    ([_ins("ADD", 8, 0, 2), _ins("ADD", 9, 1, 3), _ins("MUL", 10, 8, 9), _ins("SUB", 11, 10, 0),
      _ins("DIV", 12, 11, 1)], False),
])
def test_runs_are_used_only_where_long_enough(code, used, rng):
    tape = _hand_tape(4, code, [8, 9, 10, 11] + ([12] if len(code) > 4 else []))
    F = _hand_function(tape)
    runs = F.tape.runs()
    width = RUN_FIELDS + RING_FIELDS + 1
    assert runs.shape == ((3, width) if used else (0, width))
    runs = runs[:, :RUN_FIELDS]
    assert runs.dtype == np.int32
    if used:
        np.testing.assert_array_equal(runs, [[2, 1, 1, 1, 0, 1, 0], [1, 0, 0, 0, 0, 0, 0],
                                             [1, 0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(runs, _expected_runs(tape))
    for x in _hand_points(4, rng):
        assert_identical(F(x), _interpret(tape, x))


SIGNED_ZEROS = np.where(np.arange(8) < 4, 0.0, -0.0)     # 0.0 x 4, then -0.0 x 4


# A bug at 1443d7c (src_c/vm.c, jx_tape_runs; fixed in 696b0a6): immediates were compared with ==,
# for which 0.0 == -0.0, so x / 0.0 and x / -0.0 (or atan2(0.0, x) and atan2(-0.0, x)) joined
# one run and jx_forward_run applied the first instruction's immediate to the whole run:
# x / [0., 0., 0., 0., -0., -0., -0., -0.] at x = 1 gave +inf x 8 (one run [8, 1, 1, 0, 0, 1]).
# Single points and small batches (the point sweep) were wrong; the batched block sweep
# (block_values.h) reads each instruction's own immediate.  Runs now compare the bits.
def test_signed_zero_immediates_are_not_one_run():
    code = ([_ins("DIV", 8 + k, k, imm=SIGNED_ZEROS[k], flag=B_IMM) for k in range(8)]
            + [_ins("SUB", 16 + k, k, imm=SIGNED_ZEROS[k], flag=A_IMM) for k in range(8)])
    tape = _hand_tape(8, code, list(range(8, 24)))
    F = _hand_function(tape)
    for x in (np.ones(8), np.array([1.0, -2.0, 0.5, -0.0, 3.0, -1.0, 0.0, 7.0])):
        want = _interpret(tape, x)
        assert np.isposinf(want[:8]).any() and np.isneginf(want[:8]).any()
        assert_identical(F(x), want)
    np.testing.assert_array_equal(F.tape.runs()[:, :RUN_FIELDS], _expected_runs(tape))
    np.testing.assert_array_equal(F.tape.runs()[:, :RUN_FIELDS], [[4, 1, 1, 0, 0, 1, 0]] * 2
                                  + [[4, 1, 0, 1, 0, 1, 0]] * 2)


def test_traced_signed_zero_constants_keep_their_sign():
    c = np.repeat(SIGNED_ZEROS, 5)
    x = -np.linspace(1.0, 2.0, c.size)
    F = jx.compile(lambda v: np.arctan2(c, v) * v, x)   # atan2(+-0, negative) = +-pi: finite
    G = jx.compile(lambda v: v / c, x)
    with np.errstate(all="ignore"):
        want_f, want_g = np.arctan2(c, x) * x, x / c
    # the batched block sweep (64 points and more) has it right ...
    X = np.broadcast_to(x, (64, x.size)).copy()
    assert_identical(F(X)[0], want_f)
    with np.errstate(all="ignore"):
        assert_identical(G(X)[-1], want_g)
    # ... the single-point sweep must too
    assert_identical(F(x), want_f)
    assert_identical(G(x), want_g)


# ---------------------------------------------------------------- the value stream --

def _every_op_tape():
    """Each op of the table in each operand kind the stream decodes apart: both slots, b
    immediate, a immediate (binary ops: the tape check allows immediates there only), on
    inputs 0..2; every result is an output."""
    code, dst = [], 3
    for name in sorted(OPS):
        arity = ARITY[OPS[name]]
        if arity == 1:
            rows = [_ins(name, dst, dst % 3)]
        elif arity == 3:
            rows = [_ins(name, dst, 1, 2, s=0)]
        else:
            rows = [_ins(name, dst, 1, 2),
                    _ins(name, dst + 1, 2, imm=0.7, flag=B_IMM),
                    _ins(name, dst + 2, imm=-1.3, flag=A_IMM, b=0, a=0)]
        for r in rows:
            code.append(r)
            dst += 1
    return _hand_tape(3, code, list(range(3, dst)))


def test_value_stream_covers_every_op_and_operand_kind(rng):
    """The single-point value sweep (the decoded stream: one case per op and operand kind)
    equals the batched value sweep (src_c/batch.c, its own dispatch), bit for bit, for
    every op in every kind, at ordinary and non-finite points."""
    tape = _every_op_tape()
    F = _hand_function(tape)
    assert F.tape.stream_length == F.n_instructions     # no runs: an entry each
    points = np.concatenate([rng.uniform(-2.0, 2.0, (6, 3)),
                             np.stack([NASTY[k:k + 3] for k in range(len(NASTY) - 2)])])
    with np.errstate(all="ignore"):
        batch = F(points)
    for x, row in zip(points, batch):
        assert_identical(F(x), row)


def test_value_stream_entries_for_runs_chains_and_blocks(rng):
    """A long run, a tile chain and a block are one stream entry each; the values equal
    the batched sweep's."""
    W = rng.standard_normal((40, 40))

    def f(x):
        y = np.sin(x) * 2.0 + x              # runs over 5,000 elements: tile chains
        return np.concatenate([y, np.tanh(W @ x[:40])])

    x = rng.standard_normal(5000)
    F = jx.compile(f, x)
    assert F.tape.n_blocks == 1
    assert F.tape.stream_length < 60 < F.n_instructions
    assert_identical(F(x), F(x[None])[0])
    assert_identical(F(x), F(np.stack([x, x]))[1])


def test_the_stream_bound_counts_entries_not_instructions(rng):
    """The stream's bound, JX_CODE_MAX_ENTRIES (2**20), is on its entries (a run is one):
    1.2 million instructions in four runs get a stream of a few entries; 1.1 million
    multiplies of a permuted operand (no runs) get none, and their single-point values
    come from the tape's own arrays.  Either way equal to the batch's."""
    def f(x):
        return np.cos(x * x + 1.0) - x

    x = rng.standard_normal(300_000)
    F = jx.compile(f, x)
    assert F.n_instructions > 2 ** 20 and 0 < F.tape.stream_length < 100
    assert_identical(F(x), F(np.stack([x, x]))[0])
    perm = rng.permutation(1_100_000)

    def g(x):
        return x[perm] * x

    x = rng.standard_normal(1_100_000)
    G = jx.compile(g, x)
    assert G.n_instructions > 2 ** 20 and G.tape.stream_length == 0
    assert_identical(G(x), G(np.stack([x, x]))[1])
    assert_identical(G(x), g(x))


# ------------------------------------------------------------------- rings of chains --
# A long contiguous run of a tile chain whose values only later runs of the same chain
# read keeps them in a ring of JX_RING (2048) elements of the work's scratch, element k at
# k mod 2048 (vm.h JX_RUN_RING).  Its readers read them there.  Checked against the
# batched sweep, which has no runs (bit for bit), and NumPy.

RING = 2048


def _ring_programs():
    """Elementwise functions over shifted slices as users write them (Rosenbrock-like
    neighbours, a three-point stencil, a broadcast scalar, boundary terms), long enough
    (9,000 elements) that rings wrap several times."""
    def rosen_terms(x):
        u = x[1:] - x[:-1] ** 2
        return 100.0 * u * u + (1.0 - x[:-1]) ** 2

    def stencil(x):
        lap = x[2:] - 2.0 * x[1:-1] + x[:-2]
        return np.tanh(lap) * x[1:-1] + lap * lap

    def chain(x):
        a = np.sin(x) * 2.0
        b = a[1:] * a[:-1] - x[1:]
        c = b[1:] + b[:-1] * 0.5
        return c * c - a[2:] + x[0]

    def ends(x):
        d = x[1:] - x[:-1]
        e = d * d
        return np.concatenate([e[:1] * 3.0, e[1:] - e[:-1], e[-1:] + 1.0])

    return [rosen_terms, stencil, chain, ends]


RING_BACK = 1 << 16


def _expected_rings(tape, runs):
    """The ring fields re-derived in Python from the rule (vm.h JX_RUN_RING), written
    independently of vm.c's passes: per chain, in order, each read's writer (the run that
    last wrote the slot); a long contiguous run of at least TILE_MIN keeps a ring unless a
    read of its values is by another kind of run, a long run over values of several
    writers, or lags it by more than RING - TILE; a value of it needed past the chain (an
    output, or read later) rules it out unless it is among its last RING and none of those
    slots was written since (then it is copied back)."""
    op, dst, a, b, s = (np.asarray(tape[k]) for k in ("op", "dst", "a", "b", "s"))
    n_instr = len(op)
    first = np.concatenate([[0], np.cumsum(runs[:, 0])]).astype(int)
    out = np.full((runs.shape[0], RING_FIELDS), -1, dtype=np.int64)

    def reads(i):
        word = int(op[i])
        if word == BLOCK:
            return []
        base = word & OP_MASK
        used = (not word & A_IMM, ARITY[base] >= 2 and not word & B_IMM, base == SELECT)
        return [(m, int(x)) for m, (u, x) in enumerate(zip(used, (a[i], b[i], s[i]))) if u]

    def live_after(end):          # slots whose value at instruction `end` is read later
        live = set(int(o) for o in tape["out_slot"])
        for i in range(n_instr - 1, end - 1, -1):
            live.discard(int(dst[i]))
            live.update(x for _, x in reads(i))
        return live

    r = 0
    while r < runs.shape[0]:
        e = r
        while runs[e, 5] & RUN_TILE_NEXT:
            e += 1
        chain, r = range(r, e + 1), e + 1
        if len(chain) < 2:
            continue
        writer, bad, who = {}, {}, {}     # who: (reader run, operand or instruction) -> p
        for q in chain:
            bad[q] = not (runs[q, 0] >= TILE_MIN and runs[q, 5] & RUN_CONTIGUOUS)
        for q in chain:
            i0, L, lag = first[q], int(runs[q, 0]), int(runs[q, RUN_LAG])
            if L >= RUN_MIN_LEN:
                for m, base in reads(i0):
                    span = L if runs[q, 2 + m] else 1
                    ws = {writer.get(base + k, -1) for k in range(span)}
                    if len(ws) > 1:
                        bad.update({w: True for w in ws if w >= 0})
                        continue
                    p = ws.pop()
                    if p < 0:
                        continue
                    gap = lag - (base - int(dst[first[p]])) - int(runs[p, RUN_LAG])
                    if not (runs[q, 5] & RUN_CONTIGUOUS and L >= TILE_MIN) or not (
                            0 <= gap <= RING - TILE):
                        bad[p] = True
                    who[(q, m)] = p
                for k in range(L):
                    writer[int(dst[i0]) + k] = q
            else:
                for j in range(L):
                    for m, slot in reads(i0 + j):
                        p = writer.get(slot, -1)
                        if p < 0:
                            continue
                        gap = lag - (slot - int(dst[first[p]])) - int(runs[p, RUN_LAG])
                        if not 0 <= gap <= RING - TILE:
                            bad[p] = True
                        who[(q, j, m)] = p
                    writer[int(dst[i0 + j])] = q
        live, back = live_after(first[e + 1]), {}
        for q in chain:
            if bad[q]:
                continue
            d, L = int(dst[first[q]]), int(runs[q, 0])
            tail = range(d + max(L - RING, 0), d + L)
            needed = [x for x in range(d, d + L) if x in live and writer.get(x) == q]
            if needed and not (all(x in tail for x in needed)
                               and all(writer.get(x) == q for x in tail)):
                bad[q] = True
            back[q] = bool(needed)
        ring = {}
        for q in chain:
            if not bad[q]:
                ring[q] = len(ring)
                out[q, 0] = ring[q] | (RING_BACK if back[q] else 0)
        packed = {}
        for key, p in who.items():
            if p not in ring:
                continue
            if len(key) == 2:
                out[key[0], 1 + key[1]] = ring[p]
            else:
                q, j, m = key
                packed[(q, j)] = packed.get((q, j), 0) | (ring[p] + 1) << (8 * m)
        for (q, j), v in packed.items():
            out[q, 1 + j] = v
    return out


@pytest.mark.parametrize("f", _ring_programs(), ids=lambda f: f.__name__)
def test_chain_rings_give_the_batched_sweeps_values(f, rng):
    n = 9000
    F = jx.compile(f, np.zeros(n))
    runs = F.tape.runs()
    assert (runs[:, RUN_FIELDS] >= 0).any() and (runs[:, READ_RINGS] >= 0).any(), runs
    np.testing.assert_array_equal(runs[:, RINGS], _expected_rings(F.tape_arrays(), runs))
    if f.__name__ == "ends":   # a boundary element read from a ring by a short run
        assert ((runs[:, READ_RINGS] >= 0).any(axis=1) & (runs[:, 0] < RUN_MIN_LEN)).any()
    for x in (rng.uniform(-2.0, 2.0, n), rng.standard_normal(n) * 1e3):
        got = F(x)
        assert_identical(got, F(np.stack([x, -x]))[0])      # the block sweep: no runs
        want = f(x)   # (NumPy's tanh and sin may be its own SIMD ones: an ulp apart)
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-14 * np.abs(want).max())


def _hvp_tape(F, x, v):
    """F.hvp's own tape (a Function of x and v), after the calls that make it be built."""
    for _ in range(5000):
        F.hvp(x, v)
        slot = [p for k, p in F._second.items() if k[0] == "hvp"][0].slot
        if slot.current is not None:
            return slot.current
    raise AssertionError("the HVP tape was never built")


def test_a_rosenbrock_hvp_tape_keeps_most_of_its_runs_in_rings(rng):
    """The directional derivative tape of Rosenbrock's gradient (F.hvp's tape): 14 long
    runs in one chain, with the boundary elements in short runs; the runs whose values
    stay inside the chain take rings (as the Python re-derivation says), and H v equals the
    gradient tape's tangent sweep (which has no runs) bit for bit, on one thread and on
    several at once."""
    n = 20_000
    F = jx.compile(_rosen, np.zeros(n))
    x, v = rng.uniform(-2.0, 2.0, n), rng.standard_normal(n)
    D = _hvp_tape(F, x, v)
    runs = D.tape.runs()
    np.testing.assert_array_equal(runs[:, RINGS], _expected_rings(D.tape_arrays(), runs))
    rings = runs[:, RUN_FIELDS]
    assert (rings >= 0).sum() >= 10, runs
    # a ring copied back after the chain (the output's last element is in it), and a short
    # run of two instructions (the boundary terms) reading rings
    assert ((rings >= 0) & (rings & RING_BACK != 0)).any(), runs
    short = (runs[:, 0] > 1) & (runs[:, 0] < RUN_MIN_LEN)
    assert (short & (runs[:, READ_RINGS] >= 0).any(axis=1)).any(), runs
    assert (runs[:, READ_RINGS] >= 0).sum() >= (rings >= 0).sum(), runs
    G = F.grad_function()
    for p, w in ((x, v), (rng.standard_normal(n) * 30.0, rng.uniform(-1.0, 1.0, n))):
        want = G.jvp(p, w)[1]
        assert_identical(D(p, w), want)
        assert_identical(F.hvp(p, w), want)
        with ThreadPoolExecutor(4) as pool:
            for got in pool.map(lambda _, p=p, w=w: D(p, w), range(8)):
                assert_identical(got, want)
