"""Guarded tapes (Python control flow): what the guards cost.

    python bench/guards.py [--quick] [--json PATH]

Three measurements, each side by side in one run (alternating), medians of repeats.  The
clock is the process's CPU time by default (``--clock wall`` for wall time): on a shared,
loaded machine the wall clock mostly measures the other processes.

1. the bench problems (BENCH.md) have no Python control flow: jx.compile gives them a
   plain Function (no guard, no wrapper), so a call costs what it cost before; the
   script checks the type and times ``jx.jacobian(f, x)`` and ``F.jacobian(x)``;
2. a function with 10 branches (an ``if`` per joint of a 10-link planar arm): a
   Jacobian through the GuardedFunction against the same tape's Function called
   directly (the overhead's share of the guarded call from the two medians, and from
   the median of the paired ratios), and the guard check alone (``GuardCheck.holds``,
   less the Python call it pays from here: ``check_share_of_call``).  Instructions per
   call, without the clock's noise: ``bench/guards_callgrind.py``;
3. a batch of 10^4 points of a function whose branch flips at every other point,
   against the same batch with no flip (both tapes made before timing).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

# The default clock is the process's CPU time, which counts every thread: OpenBLAS's idle
# workers spin for a while after a GEMM (the mlp problem's blocks), and their spinning
# made single-point timings 3x too high in phases. One BLAS thread: no spinning workers.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jacext as jx  # noqa: E402
from bench.problems import make_problem  # noqa: E402
from jacext.guarded import GuardedFunction  # noqa: E402

CLOCK = {"cpu": time.process_time, "wall": time.perf_counter}
clock = time.process_time


def median_time(fn, repeats, number):
    """Median seconds per call over `repeats` timings of `number` calls."""
    fn()
    times = []
    for _ in range(repeats):
        t = clock()
        for _ in range(number):
            fn()
        times.append((clock() - t) / number)
    return float(np.median(times))


def paired(fa, fb, repeats, number):
    """(median seconds of fa, of fb, median of the ratios fa/fb): timed in alternation."""
    fa()
    fb()
    ta, tb = [], []
    for _ in range(repeats):
        for fn, times in ((fa, ta), (fb, tb)):
            t = clock()
            for _ in range(number):
                fn()
            times.append((clock() - t) / number)
    ratios = [a / b for a, b in zip(ta, tb)]
    return float(np.median(ta)), float(np.median(tb)), float(np.median(ratios))


def arm10(q):
    """A 10-link planar arm whose links bend one way or the other by the sign of q_k."""
    x = 0.0 * q[0]
    y = 0.0 * q[0]
    angle = 0.0 * q[0]
    for k in range(10):
        if q[k] > 0.0:
            angle = angle + q[k]
        else:
            angle = angle - 0.5 * q[k]
        x = x + np.cos(angle)
        y = y + np.sin(angle)
    return np.stack([x, y])


def kink(x):
    """One branch on x[0]: a different formula on each side."""
    if x[0] > 0.0:
        return np.sin(x) * x[1] + x[2] ** 2
    return np.cos(x) * x[2] - x[1] ** 3


def flip_batch(name, f, X, reps):
    """One function's flip_batch row: its batch X against X with the first input's sign
    flipped at every other point (both tapes made before timing)."""
    flip = X.copy()
    flip[1::2, 0] *= -1.0
    K = jx.compile(f, X[0])
    K.jacobian(flip)
    assert len(K.tapes) == 2
    t_flip, t_same, r_flip = paired(lambda: K.jacobian(flip), lambda: K.jacobian(X), reps, 3)
    t_vflip, t_vsame, r_vflip = paired(lambda: K(flip), lambda: K(X), reps, 3)
    return dict(section="flip_batch", function=name, n=X.shape[0],
                same_branch_ms=t_same * 1e3, flip_every_other_ms=t_flip * 1e3,
                flip_ratio=r_flip, value_same_ms=t_vsame * 1e3,
                value_flip_ms=t_vflip * 1e3, value_flip_ratio=r_vflip)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json")
    parser.add_argument("--clock", choices=sorted(CLOCK), default="cpu")
    args = parser.parse_args(argv)
    global clock
    clock = CLOCK[args.clock]
    repeats, number = (5, 200) if args.quick else (15, 2000)
    rows = []

    # 1. the bench problems: no guards, a plain Function
    for name in ("seed", "arm", "broyden", "mlp"):
        p = make_problem(name)
        F = jx.compile(p.numpy, p.x)
        assert type(F) is jx.Function, (name, type(F))
        n = max(1, number // (100 if name in ("broyden", "mlp") else 1))
        t_api = median_time(lambda p=p: jx.jacobian(p.numpy, p.x), repeats, n)
        t_fun = median_time(lambda F=F, p=p: F.jacobian(p.x), repeats, n)
        rows.append(dict(section="no_guards", problem=name, type=type(F).__name__,
                         jx_jacobian_ns=t_api * 1e9, function_jacobian_ns=t_fun * 1e9))

    # 2. ten branches: the GuardedFunction against its tape's own Function
    rng = np.random.default_rng(0)
    q = rng.uniform(-1.0, 1.0, 10)
    G = jx.compile(arm10, q)
    assert isinstance(G, GuardedFunction) and len(G.guards()[0]) == 10
    inner = G.tapes[0]
    check = G._order[0].check
    t_g, t_f, r_j = paired(lambda: G.jacobian(q), lambda: inner.jacobian(q), repeats, number)
    t_gv, t_fv, r_v = paired(lambda: G(q), lambda: inner(q), repeats, number)
    # the check from Python pays a Python call (the lambda's, the method's) that the
    # guarded call does not: check.holds(None) is that call alone (it returns -1 at its
    # first test), so the difference is the check itself
    t_c, t_floor, _ = paired(lambda: check.holds(q), lambda: check.holds(None), repeats,
                             number)
    rows.append(dict(section="ten_branches", guarded_jacobian_ns=t_g * 1e9,
                     function_jacobian_ns=t_f * 1e9, jacobian_ratio=r_j,
                     check_from_python_ns=t_c * 1e9, python_call_ns=t_floor * 1e9,
                     check_share_of_call=(t_c - t_floor) / t_g,
                     overhead_share_of_call=(t_g - t_f) / t_g,
                     overhead_share_by_ratio=1.0 - 1.0 / r_j,
                     guarded_value_ns=t_gv * 1e9, function_value_ns=t_fv * 1e9,
                     value_ratio=r_v))

    # 3. a 10^4 batch flipping at every other point (the sign of its first input),
    # against one with no flip: a kink (3 -> 3), and the 10-branch arm (10 -> 2)
    reps = max(5, repeats // 2)
    for name, f, width in (("kink (3 -> 3)", kink, 3), ("arm10 (10 -> 2)", arm10, 10)):
        rows.append(flip_batch(name, f, rng.uniform(0.1, 1.0, (10_000, width)), reps))

    machine = f"{platform.machine()}, {os.cpu_count()} cores, shared and noisy"
    print(f"# guarded tapes ({machine}); {args.clock} clock, medians of {repeats} repeats")
    for r in rows:
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                          for k, v in r.items()}))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine, "clock": args.clock, "results": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
