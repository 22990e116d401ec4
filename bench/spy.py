"""The picture of a sparsity pattern in the README: docs/sparsity.png.

    python bench/spy.py [--k 8] [--out docs/sparsity.png]

Left: ``matplotlib.pyplot.spy`` of the exact pattern jacext finds for the 2-D Bratu problem
on a k x k grid (bench/sparse.py's ``bratu_problem``; a 5-point stencil). Right: the same
nonzeros coloured by their column's colour: columns of one colour share no row, so one
forward sweep per colour recovers all of them.
"""

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import jacext as jx  # noqa: E402
from bench.sparse import bratu_problem  # noqa: E402
from jacext.testing import colourings  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="bench/spy.py", description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=8, help="grid side (default 8: 64 x 64)")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "sparsity.png"))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    problem = bratu_problem(args.k)
    F = jx.compile(problem.numpy, problem.x)
    pattern = F.sparsity()
    colour, p, _, q = colourings(F)
    rows, cols = pattern.nonzero()

    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 4.8), constrained_layout=True)
    left.spy(pattern, markersize=3.2, color="#1f4e79")
    left.set_title(f"F.sparsity(): {pattern.shape[0]}×{pattern.shape[1]}, "
                   f"{pattern.nnz} nonzeros", fontsize=10)
    cmap = plt.get_cmap("tab10", p)
    right.scatter(cols, rows, c=np.asarray(colour)[cols], cmap=cmap, vmin=-0.5, vmax=p - 0.5,
                  s=9, marker="s", linewidths=0)
    right.set_xlim(-0.5, pattern.shape[1] - 0.5)
    right.set_ylim(pattern.shape[0] - 0.5, -0.5)
    right.set_aspect("equal")
    right.xaxis.tick_top()
    right.set_title(f"columns by colour: {p} forward sweeps instead of {pattern.shape[1]}",
                    fontsize=10)
    fig.suptitle(f"2-D Bratu problem, {args.k}×{args.k} grid (5-point stencil); "
                 f"colours (p, q) = ({p}, {q})", fontsize=11)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
