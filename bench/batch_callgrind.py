"""Instructions per Jacobian entry of a batch: jacext against CasADi's generated C (callgrind).

    python bench/batch_callgrind.py [--n N] [--problems arm_batch,arm_cs_batch,ba_batch]

The wall clock on a shared machine moves 10-25% between runs; instruction counts do not. For
each of bench/batch.py's cases, one thread: the interpreter runs ``F.jacobian(*args,
threads=1)`` under ``valgrind --tool=callgrind``, counting only inside ``jx_batch_run``
(``--toggle-collect``), once with 1 and once with 3 calls after the same warm-up (enough calls
for the Jacobian tape), and (Ir(3) - Ir(1)) / 2 is one call. CasADi's generated C (gcc -O3
-march=x86-64-v3: AVX2 and FMA, as valgrind runs no AVX-512; bench/batch.py's driver) runs
its loop over the points 1 and 3 times, counted inside ``jacobian_c``. Both counts include
the C library's sin and cos. Reported: instructions per Jacobian entry (N points x outputs x
inputs a call). Needs valgrind and gcc.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from bench.batch import _cases, compiled_c  # noqa: E402

JACEXT_RUN = r"""
import sys
sys.path.insert(0, {root!r})
from bench.batch import _cases
import jacext as jx
f, _, _, X, data, _, _, _ = _cases({n})[{name!r}]
args = (X,) if data is None else (X, data)
F = jx.compile(f, *(a[0] for a in args))
for _ in range(12):
    F.jacobian(*args, threads=1)   # the Jacobian tape is built on the way
for _ in range({calls}):
    F.jacobian(*args, threads=1)
"""


def _totals(path):
    with open(path) as fh:
        for line in fh:
            m = re.match(r"(?:totals|summary):\s+(\d+)", line)
            if m:
                return int(m.group(1))
    raise RuntimeError(f"no totals in {path}")


def _callgrind(cmd, function, out):
    subprocess.run(["valgrind", "--tool=callgrind", "--collect-atstart=no",
                    f"--toggle-collect={function}", f"--callgrind-out-file={out}"] + cmd,
                   check=True, capture_output=True, text=True)
    return _totals(out)


def jacext_per_call(name, n, tmp):
    counts = []
    for calls in (1, 3):
        code = JACEXT_RUN.format(root=ROOT, n=n, name=name, calls=calls)
        counts.append(_callgrind([sys.executable, "-c", code], "jx_batch_run",
                                 os.path.join(tmp, f"jx.{name}.{calls}")))
    return (counts[1] - counts[0]) / 2


def c_per_call(name, n, tmp):
    f, cas, _, X, data, n_x, n_data, m = _cases(n)[name]
    counts = []
    for repeats in (1, 3):
        out = os.path.join(tmp, f"c.{name}.{repeats}")
        prefix = ["valgrind", "--tool=callgrind", "--collect-atstart=no",
                  "--toggle-collect=jacobian_c", f"--callgrind-out-file={out}"]
        compiled_c(cas, n_x, n_data, m, X, data, repeats, prefix=prefix,
                   march="-march=x86-64-v3")
        counts.append(_totals(out))
    return (counts[1] - counts[0]) / 2


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--problems", default="arm_batch,arm_cs_batch,ba_batch")
    a = ap.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("gcc") is None:
        print("needs valgrind and gcc")
        return 1
    print(f"instructions per Jacobian entry, one thread, {a.n} points a call (callgrind)")
    print("| problem | entries a call | jacext | CasADi's C (gcc -O3 x86-64-v3) | jacext / C |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.problems.split(","):
            _, _, _, _, _, n_x, _, m = _cases(a.n)[name]
            entries = a.n * n_x * m
            jx_ir = jacext_per_call(name, a.n, tmp) / entries
            c_ir = c_per_call(name, a.n, tmp) / entries
            print(f"| {name} | {entries:,} | {jx_ir:.1f} | {c_ir:.1f} | {jx_ir / c_ir:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
