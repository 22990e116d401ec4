"""The guard check of a guarded tape (jacext/_guards.pyx): its direct guards (a comparison
of an input with a constant or another input, or an input itself, checked straight from
the point) say exactly what the guard tape's value sweep says.

The reference is the guard tape itself, swept by ``Tape.value`` and compared with each
guard's outcome as the guards' rule says (a truth guard the same truth, an exact guard
the same value, a nan the same as a nan); it is checked at random points, at the ties
(an input exactly on the branch's boundary, two inputs equal), and at nan, inf and
signed zeros, for every comparison in both operand orders, for guards that are not
direct, and for checks that mix the two.  A GuardedFunction called at those points gives
what a function compiled there gives.
"""
from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest
from jacext._guards import GuardCheck
from jacext._tape import Tape

import jacext as jx
from jacext import ops

C = 0.5
SPECIAL = [C, np.nextafter(C, 1.0), np.nextafter(C, 0.0), 0.0, -0.0, 1.0, -1.0, np.nan,
           np.inf, -np.inf]


def _branch(cond):
    def f(x):
        if cond(x):
            return x * x[2]
        return x + x[2] ** 2
    return f


def _exact(x):
    s = float(x[0])
    return x * s


def _input_truth(x):
    if x[0]:
        return x * 2.0
    return x * 3.0


def _mixed(x):
    y = x * 1.0
    if x[0] > C:
        y = y * x[1]
    if x[0] * x[1] > 0.0:
        y = y + x[2]
    if 0.0 >= x[2]:
        y = y - 1.0
    if x[1] + 1.0 < 0.0:
        y = y * 3.0
    return y


def _loop(x):
    y = x * 1.0
    for k in range(3):
        if x[k] > 0.0:
            y = y * x[k]
        elif x[k] == 0.0:
            y = y - 1.0
    return y


def _minmax(x):
    return x * max(x[0], x[1]) + min(x[2], C)


# (name, function, how many of its guards are direct at the point (1, 2, 3))
CASES = [
    ("x<c", _branch(lambda x: x[0] < C), 1),
    ("x<=c", _branch(lambda x: x[0] <= C), 1),
    ("x>c", _branch(lambda x: x[0] > C), 1),
    ("x>=c", _branch(lambda x: x[0] >= C), 1),
    ("x==c", _branch(lambda x: x[0] == C), 1),
    ("x!=c", _branch(lambda x: x[0] != C), 1),
    ("c<x", _branch(lambda x: C < x[0]), 1),
    ("c<=x", _branch(lambda x: C <= x[0]), 1),
    ("c>x", _branch(lambda x: C > x[0]), 1),
    ("c>=x", _branch(lambda x: C >= x[0]), 1),
    ("c==x", _branch(lambda x: C == x[0]), 1),
    ("c!=x", _branch(lambda x: C != x[0]), 1),
    ("x<-0.0", _branch(lambda x: x[1] < -0.0), 1),
    ("x>=inf", _branch(lambda x: x[1] >= np.inf), 1),
    ("x<y", _branch(lambda x: x[0] < x[1]), 1),
    ("x<=y", _branch(lambda x: x[0] <= x[1]), 1),
    ("x>y", _branch(lambda x: x[0] > x[1]), 1),
    ("x>=y", _branch(lambda x: x[0] >= x[1]), 1),
    ("x==y", _branch(lambda x: x[0] == x[1]), 1),
    ("x!=y", _branch(lambda x: x[0] != x[1]), 1),
    ("x*y>0", _branch(lambda x: x[0] * x[1] > 0.0), 0),
    ("x+1<c", _branch(lambda x: x[0] + 1.0 < C), 0),
    ("sin(x)>=0", _branch(lambda x: np.sin(x[0]) >= 0.0), 0),
    ("all(x>0)", _branch(lambda x: np.all(x > 0.0)), 0),
    ("float(x)", _exact, 1),
    ("if x", _input_truth, 1),
    ("mixed", _mixed, 2),
    ("loop", _loop, None),
    ("max/min", _minmax, None),
]
IDS = [c[0] for c in CASES]
START = np.array([1.0, 2.0, 3.0])


def _points():
    rng = np.random.default_rng(11)
    grid = np.array(list(itertools.product(SPECIAL, repeat=3)))
    return np.concatenate([grid, rng.uniform(-2.0, 2.0, (300, 3)),
                           rng.choice([C, 0.0, -0.0, 1.0], (100, 3))])


POINTS = _points()


def _reference(check, x):
    """Whether x holds the check's guards, by the guard tape's value sweep."""
    y = np.empty(check.tape.n_outputs)
    check.tape.value(np.ascontiguousarray(x, dtype=np.float64), y)
    o = check.outcome
    same = np.where(check.truth.astype(bool), (y != 0.0) == (o != 0.0),
                    (y == o) | (np.isnan(y) & np.isnan(o)))
    return bool(same.all())


def _compiled(f):
    """f compiled at START and then called at points that take other branches, so that
    it keeps tapes with other outcomes (each with its own check)."""
    G = jx.compile(f, START)
    for p in (-START, np.array([C, C, C]), np.array([0.0, -1.0, 0.0]),
              np.array([np.nan, 1.0, -1.0])):
        G(p)
    return G


@pytest.mark.parametrize("name, f, n_direct", CASES, ids=IDS)
def test_direct_check_is_the_tape_check(name, f, n_direct):
    G = _compiled(f)
    checks = [t.check for t in G._order]
    if n_direct is not None:
        assert checks[-1].n_direct == n_direct       # the check made at START
    for check in checks:
        ref = [_reference(check, p) for p in POINTS]
        assert [check.holds(np.ascontiguousarray(p)) for p in POINTS] == ref
        assert check.holds_rows(np.ascontiguousarray(POINTS)).tolist() == ref
        back = pickle.loads(pickle.dumps(check))
        assert back.n_direct == check.n_direct
        assert back.holds_rows(np.ascontiguousarray(POINTS)).tolist() == ref


@pytest.mark.filterwarnings("ignore:jacext.*traced .* times:RuntimeWarning")
@pytest.mark.parametrize("name, f, n_direct", CASES, ids=IDS)
def test_guarded_function_takes_the_branch_of_the_point(name, f, n_direct):
    """At ties and non-finite points, a GuardedFunction (tapes traced elsewhere, found by
    their checks) gives the values and Jacobian of f compiled at that very point."""
    G = _compiled(f)
    rng = np.random.default_rng(3)
    pts = POINTS[rng.choice(len(POINTS), 40, replace=False)]
    pts = np.concatenate([pts, [[C, C, C], [C, -1.0, 2.0], [-0.0, 0.0, C], [np.nan] * 3,
                                [np.inf, np.inf, -0.0]]])
    for p in pts:
        F = jx.compile(f, p)
        np.testing.assert_array_equal(G(p), F(p))
        np.testing.assert_array_equal(G.jacobian(p), F.jacobian(p))
    np.testing.assert_array_equal(G(pts), np.stack([jx.compile(f, p)(p) for p in pts]))


def test_ten_branches_are_all_direct():
    """The arm of bench/guards.py: ten ``if q[k] > 0.0``, every one checked without the
    tape; the check follows each sign, zero and nan."""
    def arm(q):
        angle = 0.0 * q[0]
        x = 0.0 * q[0]
        for k in range(10):
            angle = angle + (q[k] if q[k] > 0.0 else -0.5 * q[k])
            x = x + np.cos(angle)
        return x
    q = np.linspace(-1.0, 1.0, 10) + 0.05
    G = jx.compile(arm, q)
    check = G._order[0].check
    assert check.n_direct == 10
    assert check.holds(q) == 1
    for k in range(10):
        for v in (0.0, -0.0, 1e-300, -1e-300, np.nan, np.inf, -np.inf):
            p = q.copy()
            p[k] = v
            assert check.holds(p) == _reference(check, p), (k, v)
            assert check.holds(p) == ((q[k] > 0.0) == (v > 0.0))


def test_two_dimensional_argument():
    """Direct guards index the flat point: x[1, 0] is input 2."""
    def f(x):
        if x[1, 0] >= x[0, 1]:
            return x * 2.0
        return x * x
    X = np.array([[1.0, 2.0], [3.0, 4.0]])
    G = jx.compile(f, X)
    check = G._order[0].check
    assert check.n_direct == 1
    for p in (X, X[::-1].copy(), np.array([[0.0, 1.0], [1.0, 0.0]]),
              np.array([[0.0, np.nan], [1.0, 0.0]])):
        assert check.holds(p.reshape(-1)) == _reference(check, p.reshape(-1))
        np.testing.assert_array_equal(G.jacobian(p), jx.compile(f, p).jacobian(p))


def _hand_made(words, a, b, imm, const_value, outs, n_in=2):
    """A guard tape of one comparison per instruction (op words ``words``, operand slots
    a, b, immediates imm), constants in slots n_in.., outputs ``outs`` (slots)."""
    n = len(words)
    first = n_in + len(const_value)
    return Tape({"op": words, "dst": [first + i for i in range(n)], "a": a, "b": b,
                 "s": [0] * n, "imm": imm, "out_slot": outs, "const_value": const_value,
                 "n_in": n_in, "n_slots": first + n})


COMPARISONS = ["LESS", "LESS_EQUAL", "GREATER", "GREATER_EQUAL", "EQUAL", "NOT_EQUAL"]


@pytest.mark.parametrize("name", COMPARISONS)
def test_hand_made_guard_tapes(name):
    """Forms the tracer does not write but a tape may hold: the immediate first (c OP x),
    a constant slot as operand, exact guards on a comparison (outcomes 0, 1, and neither),
    exact and truth guards on an input itself; each against the tape's sweep."""
    op = ops.OPS[name]
    c = 0.5
    tapes = [
        _hand_made([op | ops.A_IMM], [0], [0], [c], [], [2]),           # c OP x0
        _hand_made([op | ops.B_IMM], [1], [1], [c], [], [2]),           # x1 OP c
        _hand_made([op], [2], [0], [0.0], [c], [3]),                     # const OP x0
        _hand_made([op], [1], [2], [0.0], [-0.0], [3]),                  # x1 OP const
        _hand_made([op], [0], [1], [0.0], [], [2]),                      # x0 OP x1
        _hand_made([op, op], [0, 0], [1, 1], [0.0, 0.0], [], [2, 1]),    # and x1 itself
    ]
    values = [c, -c, 0.0, -0.0, 1.0, np.nan, np.inf, -np.inf]
    grid = np.ascontiguousarray(list(itertools.product(values, repeat=2)), dtype=np.float64)
    for tape in tapes:
        n_out = tape.n_outputs
        for truth in itertools.product([0, 1], repeat=n_out):
            for outcome in itertools.product([0.0, 1.0, 0.5, -0.0, c, np.nan], repeat=n_out):
                check = GuardCheck(tape, np.array(truth), np.array(outcome))
                assert check.n_direct == n_out
                ref = [_reference(check, p) for p in grid]
                assert [check.holds(np.ascontiguousarray(p)) for p in grid] == ref
                assert check.holds_rows(grid).tolist() == ref


def test_check_mixing_direct_and_swept_guards():
    """A direct guard that fails answers before the sweep; one that holds leaves the
    others to the sweep, whose answer then decides (each against the tape's sweep)."""
    mul, gt = ops.OPS["MUL"], ops.OPS["GREATER"]
    tape = Tape({"op": [gt | ops.B_IMM, mul, gt | ops.B_IMM], "dst": [2, 3, 4],
                 "a": [0, 0, 3], "b": [0, 1, 3], "s": [0, 0, 0], "imm": [0.0, 0.0, 0.0],
                 "out_slot": [2, 4], "const_value": [], "n_in": 2, "n_slots": 5})
    values = [1.0, -1.0, 0.0, -0.0, np.nan, np.inf]
    grid = np.ascontiguousarray(list(itertools.product(values, repeat=2)), dtype=np.float64)
    for outcome in itertools.product([0.0, 1.0], repeat=2):
        check = GuardCheck(tape, np.array([1, 1]), np.array(outcome))
        assert check.n_direct == 1
        ref = [_reference(check, p) for p in grid]
        assert [check.holds(np.ascontiguousarray(p)) for p in grid] == ref
        assert check.holds_rows(grid).tolist() == ref


def test_a_slot_written_twice_is_its_last_value():
    """An output slot that two instructions write holds the later one's value: direct
    when that is a comparison of inputs, swept when it is not."""
    mul, lt = ops.OPS["MUL"], ops.OPS["LESS"]
    values = [1.0, -1.0, 0.0, np.nan]
    grid = np.ascontiguousarray(list(itertools.product(values, repeat=2)), dtype=np.float64)
    for words, a, b, n_direct in (([mul, lt | ops.B_IMM], [0, 1], [1, 1], 1),
                                  ([lt | ops.B_IMM, mul], [1, 0], [1, 1], 0)):
        tape = Tape({"op": words, "dst": [2, 2], "a": a, "b": b, "s": [0, 0],
                     "imm": [0.0, 0.0], "out_slot": [2], "const_value": [], "n_in": 2,
                     "n_slots": 3})
        for outcome in (0.0, 1.0):
            check = GuardCheck(tape, np.array([1]), np.array([outcome]))
            assert check.n_direct == n_direct
            ref = [_reference(check, p) for p in grid]
            assert [check.holds(np.ascontiguousarray(p)) for p in grid] == ref
            assert check.holds_rows(grid).tolist() == ref


def test_move_rows_checks_its_arguments():
    """The row gather/scatter of a batch split by branch (jacext._guards.move_rows): equal
    to NumPy's fancy indexing, and a bad index or shape is an exception, never a write out
    of bounds."""
    from jacext._guards import move_rows

    rng = np.random.default_rng(3)
    src = rng.standard_normal((7, 2, 3))
    idx = np.array([6, 0, 3], dtype=np.intp)
    got = np.empty((3, 2, 3))
    move_rows(got, src, idx, False)
    np.testing.assert_array_equal(got, src[idx])
    out = np.zeros((7, 2, 3))
    move_rows(out, got, idx, True)
    want = np.zeros((7, 2, 3))
    want[idx] = got
    np.testing.assert_array_equal(out, want)
    with pytest.raises(IndexError):
        move_rows(got, src, np.array([0, 7, 1], dtype=np.intp), False)
    with pytest.raises(IndexError):
        move_rows(out, got, np.array([-1, 0, 1], dtype=np.intp), True)
    with pytest.raises(ValueError):
        move_rows(got, src, idx.astype(np.int32), False)
    with pytest.raises(ValueError):
        move_rows(got, src[:, :, :2].copy(), idx, False)
    with pytest.raises(ValueError):
        move_rows(np.empty((2, 2, 3)), src, idx, False)


def test_permute_rows_puts_each_row_where_its_index_says():
    """jacext._guards.permute_rows(a, perm): a[perm[k]] = old a[k], in place, on random
    permutations (long cycles, fixed points, one row) and against NumPy's own scatter; a
    non-permutation raises before any row moves."""
    from jacext._guards import permute_rows

    rng = np.random.default_rng(4)
    for n in (1, 2, 7, 1000):
        for perm in (rng.permutation(n), np.arange(n), np.roll(np.arange(n), 1)):
            perm = perm.astype(np.intp)
            a = rng.standard_normal((n, 3, 2))
            want = np.empty_like(a)
            want[perm] = a
            permute_rows(a, perm)
            np.testing.assert_array_equal(a, want)
    a = rng.standard_normal((4, 3))
    keep = a.copy()
    for bad in ([0, 1, 1, 2], [0, 1, 2, 4], [-1, 0, 1, 2], [0, 1, 2]):
        with pytest.raises(ValueError):
            permute_rows(a, np.array(bad, dtype=np.intp))
        np.testing.assert_array_equal(a, keep)
    with pytest.raises(ValueError):
        permute_rows(a, np.array([1, 0, 3, 2], dtype=np.int32))
    with pytest.raises(ValueError):
        permute_rows(a[:, :2], np.array([1, 0, 3, 2], dtype=np.intp))
