"""Plans (jacext/plan.py): the cost model, the thresholds' effects, Planner, JacobianTapeSlot.

The expected numbers are worked out here from the rules the docstrings state (runs pay at
a mean run length of RUNS_MIN_MEAN; a thread gets at least MIN_WORK_PER_THREAD; ski
rental capped at JAC_TAPE_AFTER_POINTS; the build's cost per instruction and per group),
written in terms of the module's named thresholds, never by calling the function under
test for its own expectation.  Planner and JacobianTapeSlot: each plan and each tape is
made once, also when several threads ask at the same time.
"""
from __future__ import annotations

import math
import os
import threading
import time
from fractions import Fraction

import numpy as np
import pytest

import jacext as jx
from jacext import arguments
from jacext import plan as P

THREADS = 8


# ---------------------------------------------------------------- runs_pay --

def test_runs_pay_from_a_mean_run_length_of_runs_min_mean():
    num, den = P.RUNS_MIN_MEAN
    least = Fraction(num, den)            # instructions per run, on average, at least
    for n_runs in range(1, 40):
        for n_instr in range(n_runs, 4 * n_runs + 2):
            want = Fraction(n_instr, n_runs) >= least
            assert P.runs_pay(n_runs, n_instr) is want, (n_runs, n_instr)


def test_runs_pay_hand_values():
    # the tape tests' cases (tests/test_tape.py): 4 instructions in 3 runs pay, 4 in 4 and
    # 5 in 4 do not
    assert P.RUNS_MIN_MEAN == (4, 3)
    assert P.runs_pay(3, 4)
    assert not P.runs_pay(4, 4)
    assert not P.runs_pay(4, 5)
    assert P.runs_pay(1, 1000)
    assert P.runs_pay(0, 0)                # no instructions: nothing to lose


# ---------------------------------------------------------------- n_threads --

def test_usable_cores_is_the_affinity_mask():
    cores = P.usable_cores()
    assert isinstance(cores, int) and cores >= 1
    if hasattr(os, "sched_getaffinity"):
        assert cores == len(os.sched_getaffinity(0))


def test_n_threads_none_means_every_usable_core(monkeypatch):
    M = P.MIN_WORK_PER_THREAD
    assert P.n_threads(None, 10**6 * M, 1) == P.usable_cores()
    monkeypatch.setattr(P, "usable_cores", lambda: 6)
    assert P.n_threads(None, 100 * M, 1) == 6
    assert P.n_threads(None, 4 * M, 1) == 4          # fewer where the work is short
    monkeypatch.setattr(P, "usable_cores", lambda: 1)
    assert P.n_threads(None, 100 * M, 1) == 1


@pytest.mark.parametrize("threads, n_points, work, want", [
    (1, 10**9, 10**9, 1),          # one thread asked for: one
    (8, 100, 100 * 10**9, 8),      # plenty of work: all
    (2, 100, 100 * 10**9, 2),
    (8, 5, 10**12, 5),             # never more threads than points
    (8, 0, 10**6, 1),              # an empty batch: one
])
def test_n_threads_hand_values(threads, n_points, work, want):
    got = P.n_threads(threads, n_points, work)
    assert got == want and type(got) is int


def test_n_threads_caps_by_min_work_per_thread():
    """k threads need k * MIN_WORK_PER_THREAD of work (points x work per point)."""
    M = P.MIN_WORK_PER_THREAD
    # one lane of work per point: n points give n // M threads (at least one)
    assert P.n_threads(8, 3 * M, 1) == 3
    assert P.n_threads(8, 3 * M - 1, 1) == 2
    assert P.n_threads(8, 2 * M, 1) == 2
    assert P.n_threads(8, M, 1) == 1
    assert P.n_threads(8, M - 1, 1) == 1
    assert P.n_threads(8, 100 * M, 1) == 8
    assert P.n_threads(3, 100 * M, 1) == 3
    # the same work split differently between points and work per point
    assert P.n_threads(8, 3, M) == 3
    assert P.n_threads(8, 10, M // 2 + 1) == 5
    # no work per point counts as one lane
    assert P.n_threads(8, 3 * M, 0) == 3
    # a NumPy integer is a thread count too
    assert P.n_threads(np.int64(4), 100 * M, 1) == 4


def test_n_threads_gives_each_thread_enough_work():
    M = P.MIN_WORK_PER_THREAD
    for threads in (2, 3, 8, 64):
        for n_points in (1, 7, 64, 1000, 10**5):
            for work in (1, 17, 1000, 10**4, M, 10 * M):
                t = P.n_threads(threads, n_points, work)
                assert 1 <= t <= min(threads, max(n_points, 1))
                total = n_points * work
                if t > 1:
                    assert total >= t * M, (threads, n_points, work, t)
                # one more thread would be allowed only if it were capped elsewhere
                if t < min(threads, n_points):
                    assert total < (t + 1) * M, (threads, n_points, work, t)


@pytest.mark.parametrize("bad", [0, -1, -8, 1.5, 2.0, "2", True, False, np.float64(2.0), [2]])
def test_n_threads_refuses_bad_values(bad):
    with pytest.raises(ValueError, match="threads"):
        P.n_threads(bad, 1000, 1000)


# ---------------------------------------------------------------- dense_mode --

@pytest.mark.parametrize("n_cols, n_out, want", [
    (3, 5, "forward"), (5, 3, "reverse"), (4, 4, "forward"), (0, 7, "forward"),
    (7, 0, "reverse"), (1, 10**6, "forward"), (10**6, 1, "reverse"),
])
def test_dense_mode_takes_the_fewer_lanes(n_cols, n_out, want):
    assert P.dense_mode(n_cols, n_out) == want


# ---------------------------------------------------------------- tape_after --

def test_tape_after_is_the_ceiling_of_build_over_per_point():
    cap = P.JAC_TAPE_AFTER_POINTS
    assert P.tape_after(1000, 100) == 10
    assert P.tape_after(1001, 100) == 11
    assert P.tape_after(1099, 100) == 11
    assert P.tape_after(99, 100) == 1
    assert P.tape_after(1, 100) == 1
    assert P.tape_after(0, 100) == 1                 # at least one point
    assert P.tape_after(50, 0) == 50                 # no work per point counts as one
    # exact on integers too large for float division to get right
    big = 10**18
    assert P.tape_after(3 * big + 1, big) == 4
    assert P.tape_after(3 * big, big) == 3
    for build, per_point in ((7, 3), (12345, 17), (10**6, 999), (cap * 5, 5)):
        got = P.tape_after(build, per_point)
        assert type(got) is int
        assert got == min(cap, math.ceil(Fraction(build, per_point)))
        assert (got - 1) * per_point < build <= got * per_point or got == cap


def test_tape_after_is_capped():
    cap = P.JAC_TAPE_AFTER_POINTS
    assert P.tape_after(cap * 100, 100) == cap
    assert P.tape_after(cap * 100 - 99, 100) == cap
    assert P.tape_after(cap * 100 - 100, 100) == cap - 1
    assert P.tape_after(cap * 100 + 1, 100) == cap       # would be cap + 1
    assert P.tape_after(10**15, 1) == cap


# ---------------------------------------------------------------- build cost --

def _by_group(n_instr, n_groups):
    """The docstring's estimate where the builder goes group by group."""
    return P.BUILD_BASE + P.BUILD_PER_INSTR_BY_GROUP * n_instr + P.BUILD_PER_GROUP * n_groups


def _by_node(n_instr):
    """... and node by node."""
    return P.BUILD_BASE + P.BUILD_PER_INSTR_BY_NODE * n_instr


def test_reverse_in_bulk_where_groups_are_long():
    R = P.REVERSE_BULK_MIN_GROUP
    assert P.reverse_in_bulk(R * 10, 10)
    assert not P.reverse_in_bulk(R * 10 - 1, 10)
    assert P.reverse_in_bulk(R * 10 + 1, 10)
    assert P.reverse_in_bulk(R, 1)
    assert not P.reverse_in_bulk(R - 1, 1)
    assert P.reverse_in_bulk(R, 0)          # no groups counts as one
    assert not P.reverse_in_bulk(R - 1, 0)
    assert P.reverse_in_bulk(10**6, 3)
    assert not P.reverse_in_bulk(10**6, 10**6)   # scalar code: groups of one


@pytest.mark.parametrize("n_instr, n_groups", [(1, 1), (100, 1), (100, 100), (1000, 10),
                                               (10**6, 50), (10**6, 10**6), (8, 1), (7, 1)])
def test_build_cost_hand_formula(n_instr, n_groups):
    assert P.build_cost("forward", n_instr, n_groups) == _by_group(n_instr, n_groups)
    long_groups = n_instr >= P.REVERSE_BULK_MIN_GROUP * n_groups
    want = _by_group(n_instr, n_groups) if long_groups else _by_node(n_instr)
    assert P.build_cost("reverse", n_instr, n_groups) == want


def test_build_cost_hand_values():
    """With the thresholds of the module (their measured values), written out."""
    assert (P.BUILD_BASE, P.BUILD_PER_INSTR_BY_GROUP, P.BUILD_PER_GROUP,
            P.BUILD_PER_INSTR_BY_NODE, P.REVERSE_BULK_MIN_GROUP) == (100_000, 500, 50_000,
                                                                     8_000, 8)
    assert P.build_cost("forward", 1000, 10) == 100_000 + 500_000 + 500_000
    assert P.build_cost("reverse", 1000, 10) == 1_100_000              # groups of 100
    assert P.build_cost("reverse", 1000, 500) == 100_000 + 8_000_000   # groups of 2
    assert P.build_cost("forward", 1000, 500) == 100_000 + 500_000 + 25_000_000


@pytest.mark.parametrize("n_groups", [1, 3, 50, 1000])
def test_build_cost_is_monotone_in_n_instr(n_groups):
    """More instructions never cost less to build, whichever way the builder goes: forward
    always by group; reverse by node for short groups and by group for long ones (at the
    switch the by-group builder is the cheaper one)."""
    R = P.REVERSE_BULK_MIN_GROUP
    sizes = sorted({1, 2, 5, 10, 100, R * n_groups - 1, R * n_groups, 10**4, 10**6} - {0})
    forward = [P.build_cost("forward", n, n_groups) for n in sizes]
    assert forward == sorted(forward) and len(set(forward)) == len(forward)
    by_node = [P.build_cost("reverse", n, n_groups) for n in sizes if n < R * n_groups]
    by_group = [P.build_cost("reverse", n, n_groups) for n in sizes if n >= R * n_groups]
    for costs in (by_node, by_group):
        assert costs == sorted(costs) and len(set(costs)) == len(costs)
    # with the mean group length fixed, more instructions (and groups) always cost more
    for length in (1, 4, R, 64):
        for mode in ("forward", "reverse"):
            costs = [P.build_cost(mode, length * g, g) for g in (1, 2, 10, 100, 10**4)]
            assert costs == sorted(costs) and len(set(costs)) == len(costs), (mode, length)


def test_by_node_costs_more_than_by_group_for_long_groups():
    R = P.REVERSE_BULK_MIN_GROUP
    for n_groups in (1, 10, 1000):
        for length in (R, 2 * R, 100, 10**4):
            n = length * n_groups
            assert P.reverse_in_bulk(n, n_groups)
            cost = P.build_cost("reverse", n, n_groups)
            assert cost == P.build_cost("forward", n, n_groups)
            assert cost < _by_node(n), (n, n_groups)


# ---------------------------------------------------------------- compress_dense --

class _Best:
    """best_compressed's stand-in: counts its calls."""

    def __init__(self, mode, cost):
        self.answer = (mode, cost)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.answer


def test_compress_dense_skips_small_jacobians_without_asking():
    C = P.COMPRESS_MIN_SIZE
    for n_cols, n_out in ((C - 1, 10**4), (10**4, C - 1), (1, 1), (0, 10**4)):
        best = _Best("forward", 0)      # as cheap as can be: still not asked
        assert P.compress_dense(best, n_cols, n_out, 10**5) is None
        assert best.calls == 0
    best = _Best("forward", 0)
    assert P.compress_dense(best, C, C, 10**5) == "forward"
    assert best.calls == 1


@pytest.mark.parametrize("mode", ["forward", "reverse", "cones"])
def test_compress_dense_chooses_by_compress_max_cost(mode):
    n_cols, n_out, n_instr = 40, 50, 100
    # dense sweeps: min(n_cols, n_out) = 40 lanes of 100 instructions
    limit = Fraction(P.COMPRESS_MAX_COST) * 40 * 100
    assert limit == 2000                          # COMPRESS_MAX_COST == 0.5
    for cost, want in ((0, mode), (1, mode), (1999, mode), (2000, mode), (2001, None),
                       (4000, None), (10**9, None)):
        best = _Best(mode, cost)
        assert P.compress_dense(best, n_cols, n_out, n_instr) == want, cost
        assert best.calls == 1
    # the smaller side counts, whichever it is
    assert P.compress_dense(_Best(mode, 2000), 50, 40, 100) == mode
    assert P.compress_dense(_Best(mode, 2001), 50, 40, 100) is None
    # no instructions count as one
    assert P.compress_dense(_Best(mode, 20), 40, 50, 0) == mode
    assert P.compress_dense(_Best(mode, 21), 40, 50, 0) is None


# ---------------------------------------------------------------- Planner --

def _f(x, y):
    return np.sin(x) * y[0] + x ** 2, np.exp(y) * x[:2]


def _planner(jacobian_tapes=True):
    F = jx.compile(_f, np.zeros(4), np.zeros(2))
    return F, P.Planner(F.tape, arguments.offsets(F.arg_shapes), jacobian_tapes)


def test_planner_makes_each_plan_once():
    _, planner = _planner()
    p = planner.plan(0, "auto", False)
    assert isinstance(p, P.Plan)
    assert planner.plan(0, "auto", False) is p
    assert planner.plan(0, "forward", False) is not p
    assert planner.plan(0, "forward", False) is planner.plan(0, "forward", False)
    assert planner.plan(0, "auto", True) is not p
    assert planner.plan((0, 1), "auto", False) is planner.plan((0, 1), "auto", False)


def test_plan_contents():
    F, planner = _planner()
    # argument 0 has inputs 0..3, argument 1 inputs 4, 5; 6 outputs
    p = planner.plan(0, "auto", False)
    np.testing.assert_array_equal(p.cols, [0, 1, 2, 3])
    assert p.cols.dtype == np.int32 and not p.cols.flags.writeable
    assert p.argnums == 0 and p.mode == "forward"         # 4 columns <= 6 rows
    assert p.compressed is None                          # far below COMPRESS_MIN_SIZE
    assert p.dense_tape is not None and p.sparse_tapes is None
    np.testing.assert_array_equal(planner.plan((0, 1), "auto", False).cols, range(6))
    np.testing.assert_array_equal(planner.plan(1, "auto", False).cols, [4, 5])
    np.testing.assert_array_equal(planner.plan(-1, "auto", False).cols, [4, 5])
    assert planner.plan(1, "reverse", False).mode == "reverse"
    s = planner.plan(0, "auto", True)
    assert s.compressed in ("forward", "reverse", "cones")
    assert s.structure is planner.structure(0)
    assert s.dense_tape is None and len(s.sparse_tapes) == 2
    assert "argnums=0" in repr(p) and "forward sweeps" in repr(p)


def test_plan_is_made_once_when_threads_ask_together():
    _, planner = _planner()
    made = []
    make = planner._make

    def slow_make(*args):
        made.append(args)
        time.sleep(0.05)         # let the other threads arrive while it is being made
        return make(*args)

    planner._make = slow_make
    barrier = threading.Barrier(THREADS)
    got = [None] * THREADS

    def ask(k):
        barrier.wait()
        got[k] = planner.plan((0, 1), "auto", True)

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(g, P.Plan) for g in got)
    assert all(g is got[0] for g in got)
    assert len(made) == 1
    assert planner.plan((0, 1), "auto", True) is got[0]


def test_structures_and_slots_are_made_once_when_threads_ask_together():
    _, planner = _planner()
    barrier = threading.Barrier(THREADS)
    got = [None] * THREADS

    def ask(k):
        barrier.wait()
        got[k] = (planner.structure(0), planner.best(0), planner.columns(0),
                  planner.plan(0, "forward", False).dense_tape)

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for part in range(4):
        assert all(g[part] is got[0][part] for g in got), part


@pytest.mark.parametrize("mode", ["sideways", "Forward", "", None, "fwd"])
def test_planner_refuses_an_invalid_mode(mode):
    _, planner = _planner()
    with pytest.raises(ValueError, match="mode"):
        planner.plan(0, mode, False)
    with pytest.raises(ValueError, match="mode"):
        planner.plan(0, mode, True)


@pytest.mark.parametrize("argnums", [2, -3, 10, (0, 2), (1, -3)])
def test_planner_refuses_argnums_out_of_range(argnums):
    _, planner = _planner()
    with pytest.raises(ValueError, match="argnums") as info:
        planner.plan(argnums, "auto", False)
    assert "2 argument(s)" in str(info.value)


def test_planner_without_jacobian_tapes_never_builds():
    _, planner = _planner(jacobian_tapes=False)
    for key in ((0, "auto", False), (1, "reverse", False), ((0, 1), "auto", True)):
        p = planner.plan(*key)
        for slot in (p.dense_tape,) + tuple(p.sparse_tapes or ()):
            if slot is not None:
                assert slot.after is None and slot.tape(10**9) is None


# ---------------------------------------------------------------- JacobianTapeSlot --

class _Build:
    """A Jacobian-tape build: counts its calls, returns a token (or raises)."""

    def __init__(self, result=None, fail=False):
        self.result = object() if result is None else result
        self.fail = fail
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if self.fail:
            raise AssertionError("the build must not run")
        return self.result


def test_slot_counts_points_and_builds_once():
    build = _Build()
    slot = P.JacobianTapeSlot(threading.RLock(), 100, build)
    assert not slot.built and slot.seen == 0 and slot.current is None
    assert slot.tape(30) is None and slot.seen == 30
    assert slot.tape(69) is None and slot.seen == 99
    assert build.calls == 0 and slot.current is None
    assert slot.tape(1) is build.result              # 100 points: built
    assert build.calls == 1 and slot.built and slot.seen == 100
    assert slot.current is build.result
    for n in (1, 1000, 10**6):
        assert slot.tape(n) is build.result
    assert build.calls == 1 and slot.seen == 100     # no counting once built


def test_slot_builds_when_one_call_passes_after():
    build = _Build()
    slot = P.JacobianTapeSlot(threading.RLock(), 100, build)
    assert slot.tape(5000) is build.result and build.calls == 1 and slot.seen == 5000


def test_slot_after_none_never_builds():
    build = _Build(fail=True)
    slot = P.JacobianTapeSlot(threading.RLock(), None, build)
    assert slot.built and slot.after is None
    for n in (1, 10**3, 10**9):
        assert slot.tape(n) is None
    assert build.calls == 0 and slot.current is None and slot.seen == 0


def test_slot_whose_build_gives_nothing_is_not_built_again():
    calls = []
    slot = P.JacobianTapeSlot(threading.RLock(), 10, lambda: calls.append(1))
    assert slot.tape(10) is None and calls == [1] and slot.built
    assert slot.tape(10**6) is None and calls == [1]


def test_slot_goes_on_with_the_sweeps_while_the_lock_is_taken():
    lock = threading.RLock()
    build = _Build()
    slot = P.JacobianTapeSlot(lock, 10, build)
    taken, release = threading.Event(), threading.Event()

    def hold():
        with lock:
            taken.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert taken.wait(10)
        assert slot.tape(10**6) is None              # neither counts nor waits nor builds
        assert slot.seen == 0 and build.calls == 0
    finally:
        release.set()
        holder.join()
    assert slot.tape(10) is build.result and build.calls == 1


def test_slot_builds_once_when_threads_ask_together():
    build = _Build()
    slot = P.JacobianTapeSlot(threading.RLock(), 1000, build)
    barrier = threading.Barrier(THREADS)
    got = [[] for _ in range(THREADS)]

    def ask(k):
        barrier.wait()
        for _ in range(500):
            got[k].append(slot.tape(3))
        while not slot.built:           # a call that found the lock taken did not count
            got[k].append(slot.tape(3))
        got[k].append(slot.tape(3))

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert build.calls == 1
    assert slot.current is build.result
    assert 1000 <= slot.seen < 1003
    for results in got:
        assert set(map(id, results)) <= {id(None), id(build.result)}
        assert results[-1] is build.result
        # once a thread saw the tape, it keeps seeing it
        first = next(i for i, r in enumerate(results) if r is not None)
        assert all(r is build.result for r in results[first:])


def _chain(q):
    # a 7 -> 12 chain of rotations (the arm's shape): long Jacobian tape, cheap lanes
    c, s = np.cos(np.cumsum(q)), np.sin(np.cumsum(q))
    x = np.cumsum(c * (1.0 + q ** 2))
    y = np.cumsum(s * (1.0 + q ** 2))
    return np.concatenate([x[:6] * y[1:], x[1:] - y[:6]])


def _kinetics(y):
    return np.stack([-0.04 * y[0] + 1e4 * y[1] * y[2],
                     0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2, 3e7 * y[1] ** 2])


@pytest.mark.parametrize("f, n", [(_chain, 7), (_kinetics, 3)])
def test_single_points_take_the_jacobian_tape_only_where_it_beats_the_lanes(f, n):
    """A single point's sweeps run all directions as lanes of one instruction, so the
    dense Jacobian tape serves single points only where it is at most
    plan.point_tape_limit instructions long (batches take it whenever it is built);
    either way the Jacobians equal the sweeps'."""
    from jacext.testing import jacobian_tape_slot, without_jacobian_tapes
    x = np.linspace(0.3, 0.9, n)
    F = jx.compile(f, x)
    S = without_jacobian_tapes(jx.compile(f, x))
    for _ in range(P.JAC_TAPE_AFTER_POINTS + 1):
        F.jacobian(x)
    slot = jacobian_tape_slot(F, 0, "forward")
    tape = slot.current
    assert tape is not None
    limit = P.point_tape_limit(F.n_instructions, n)
    assert slot.point_limit == limit
    assert (slot.point_tape(0) is tape) == (tape.n_instructions <= limit)
    np.testing.assert_array_equal(F.jacobian(x), S.jacobian(x))
    np.testing.assert_array_equal(F.jacobian(x[None]), S.jacobian(x[None]))
