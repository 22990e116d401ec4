"""Guarded tapes under callgrind: instructions per call, deterministic.

    python bench/guards_callgrind.py [--n N] [--json PATH] [--annotate DIR]

The wall clock on a shared machine swings 2x from run to run; instruction counts do
not.  For each call of bench/guards.py's ten_branches section (the 10-link arm with an
``if`` per joint: the GuardedFunction's Jacobian and value, its tape's Function called
directly, and the guard check alone) the script runs the interpreter under
``valgrind --tool=callgrind`` twice, calling it N and 2N times after 3000 warm-up calls,
counting from a marker call (``os.getppid``, ``--zero-before``) on, and reports
(Ir(2N) - Ir(N)) / N: the instructions of one call, the loop's own start and end
cancelled.
``--annotate DIR`` keeps the 2N profiles there (``callgrind_annotate --inclusive=yes``
reads them).  Needs valgrind; runs the interpreter itself (``sys.executable``), not a
shim.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: the calls measured: name -> the statement, with G, inner, check and q made
CALLS = {
    "guarded_jacobian": "G.jacobian(q)",
    "function_jacobian": "inner.jacobian(q)",
    "check_holds": "check.holds(q)",
    "guarded_value": "G(q)",
    "function_value": "inner(q)",
}

CHILD = """
import sys
sys.path.insert(0, {root!r})
import numpy as np
import jacext as jx
from bench.guards import arm10
q = np.random.default_rng(0).uniform(-1.0, 1.0, 10)
G = jx.compile(arm10, q)
inner = G.tapes[0]
check = G._order[0].check
for _ in range(3000):    # plans, Jacobian tapes (after <= 2048 points): made before counting
    {stmt}
import os


def loop(n, G, inner, check, q):
    for _ in range(n):
        {stmt}


os.getppid()        # callgrind zeroes its counts here (--zero-before=os_getppid)
loop({n}, G, inner, check, q)
os._exit(0)
"""


def count(stmt, n, keep=None):
    """Instructions (Ir) of a whole interpreter run calling stmt n times."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        script = os.path.join(tmp, "child.py")
        with open(script, "w") as fh:
            fh.write(CHILD.format(root=ROOT, stmt=stmt, n=n))
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                        "--zero-before=os_getppid", "--separate-threads=yes", sys.executable,
                        script], check=True, capture_output=True,
                       env=dict(os.environ, PYTHONHASHSEED="0", OPENBLAS_NUM_THREADS="1",
                                OMP_NUM_THREADS="1"))
        main = out + "-01"      # the main thread's profile
        with open(main) as fh:
            text = fh.read()
        if keep:
            shutil.copyfile(main, keep)
    return int(re.search(r"^totals:\s+(\d+)", text, re.M).group(1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--json")
    parser.add_argument("--jobs", type=int, default=2, help="valgrind runs at once")
    parser.add_argument("--annotate", help="keep the 2N profiles in this folder")
    args = parser.parse_args(argv)
    if args.annotate:
        os.makedirs(args.annotate, exist_ok=True)
    jobs = {}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for name, stmt in CALLS.items():
            keep = os.path.join(args.annotate, f"callgrind.{name}") if args.annotate else None
            jobs[name] = (pool.submit(count, stmt, args.n),
                          pool.submit(count, stmt, 2 * args.n, keep))
    rows = {name: (ir2.result() - ir1.result()) / args.n for name, (ir1, ir2) in jobs.items()}
    rows["check_share_of_jacobian"] = rows["check_holds"] / rows["guarded_jacobian"]
    rows["overhead_share_of_jacobian"] = ((rows["guarded_jacobian"]
                                           - rows["function_jacobian"])
                                          / rows["guarded_jacobian"])
    rows["overhead_share_of_value"] = ((rows["guarded_value"] - rows["function_value"])
                                       / rows["guarded_value"])
    print(f"# ten_branches under callgrind: instructions per call ((Ir(2N) - Ir(N)) / N, "
          f"N = {args.n})")
    print(json.dumps({k: round(v, 4) if k.endswith("of_jacobian") or k.endswith("of_value")
                      else round(v, 1) for k, v in rows.items()}))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"n": args.n, "instructions_per_call": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
