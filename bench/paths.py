"""Every way a user can ask for one point's Jacobian, side by side.

    python bench/paths.py [--problems seed,arm] [--rounds 5] [--json PATH]

The README calls ``F.jacobian(x)`` and ``F.jacobian(x, out=J)`` the fastest paths; a user
may as well write ``value_and_jacobian``, ``argnums=0``, a mode, a batch of one point
(``x[None]``), the cached ``jx.jacobian(f, x)``, or ask for the value alone.  Each is timed
in the same process, interleaved round by round (each round: the best of 3 loops of
``--number`` calls), after enough calls for the planner to have built what it builds; the
table gives the median over the rounds and the ratio to ``F.jacobian(x)``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import timeit

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jacext as jx  # noqa: E402
from bench.problems import make_problem  # noqa: E402


def paths_of(p):
    """{path name: zero-argument call} for problem p."""
    F = jx.compile(p.numpy, p.x)
    x = p.x
    J = F.jacobian(x)
    out = np.empty_like(J)
    xb = np.ascontiguousarray(x[None])
    outb = np.empty((1,) + J.shape)
    return F, {
        "F.jacobian(x)": lambda: F.jacobian(x),
        "out=J": lambda: F.jacobian(x, out=out),
        "argnums=0": lambda: F.jacobian(x, argnums=0),
        'mode="forward"': lambda: F.jacobian(x, mode="forward"),
        'mode="reverse"': lambda: F.jacobian(x, mode="reverse"),
        "value_and_jacobian(x)": lambda: F.value_and_jacobian(x),
        "batch of one x[None]": lambda: F.jacobian(xb),
        "batch of one, out=": lambda: F.jacobian(xb, out=outb),
        "jx.jacobian(f, x)": lambda: jx.jacobian(p.numpy, x),
        "F(x) (value only)": lambda: F(x),
        "F(x[None]) (value, batch of one)": lambda: F(xb),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", default="seed,arm,broyden")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--number", type=int, default=0, help="calls per loop (0: by problem)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, shared"
    print(f"# one point's Jacobian by every path ({machine}); median of {args.rounds} rounds")
    rows = []
    for name in args.problems.split(","):
        p = make_problem(name)
        F, paths = paths_of(p)
        for _ in range(3000 if name != "broyden" else 300):    # the planner's tapes
            for call in paths.values():
                call()
        number = args.number or (2000 if name in ("seed", "arm") else 50)
        times = {k: [] for k in paths}
        for _ in range(args.rounds):
            for k, call in paths.items():
                times[k].append(min(timeit.repeat(call, number=number, repeat=3)) / number)
        base = float(np.median(times["F.jacobian(x)"]))
        print(f"\n{name}: {F!r}\n| path | median | / F.jacobian(x) |\n|---|---:|---:|")
        for k, ts in times.items():
            t = float(np.median(ts))
            rows.append(dict(problem=name, path=k, seconds=t, ratio=t / base))
            print(f"| {k} | {t * 1e9:,.0f} ns | {t / base:.2f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
