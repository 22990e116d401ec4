"""Dask scaling: arm Jacobians (BENCH.md's arm, 7 -> 12) for N seeded configurations on a
``dask.distributed`` LocalCluster of 1 and 2 worker processes (1 thread each), against the
same blocks computed in this process on one thread.

    python bench/dask_scaling.py                 # N = 10^7 (a few minutes on 2 cores)
    python bench/dask_scaling.py --n 1000000 --repeats 3

The configurations are a dask array of ``--chunk`` points per block, persisted on the
workers before timing (making them is not timed).  Each block's Jacobians (chunk x 12 x 7)
are reduced on the worker to their sum over the block, so that only 12 x 7 numbers per
block travel back: what is timed is the Jacobians, not the transfer of 6.7 GB of results.
The in-process reference runs ``F.jacobian(block, threads=1)`` and the same reduction on
every block; the cluster's per-block sums must equal it bit for bit, and so must the full
Jacobians of the first and last blocks.  Scaling efficiency = t(1 worker) / (2 t(2 workers)).
Medians of the repeats; the machine (cores, load) is printed with the results.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# bench/ itself off the path: its sparse.py would shadow the package of that name
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.join(ROOT, "bench")]
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import jacext as jx  # noqa: E402
from bench.problems import arm  # noqa: E402


def block_sums(F, block):
    """One block's Jacobians, summed over its points (the reduction done on the workers)."""
    return F.jacobian(block, threads=1).sum(axis=0)[None]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--chunk", type=int, default=250_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--markdown", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    import dask
    import dask.array as da
    import distributed

    F = jx.compile(arm, np.zeros(7))
    n, chunk = args.n, args.chunk
    q = da.random.default_rng(0).uniform(-np.pi, np.pi, size=(n, 7), chunks=(chunk, 7))
    q_np = q.compute(scheduler="sync")
    blocks = [q_np[i:i + chunk] for i in range(0, n, chunk)]

    # in process, one thread: the same blocks and the same reduction
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ref = np.concatenate([block_sums(F, b) for b in blocks])
        times.append(time.perf_counter() - t0)
    t_local = statistics.median(times)
    ref_first, ref_last = F.jacobian(blocks[0]), F.jacobian(blocks[-1])

    results = {}
    for workers in (1, 2):
        with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                      dashboard_address=None) as cluster, \
                distributed.Client(cluster) as client:
            qd = client.persist(q)
            distributed.wait(qd)
            J = F.jacobian(qd)                                   # lazy, blockwise
            sums = J.map_blocks(lambda b: b.sum(axis=0)[None], dtype=np.float64,
                                chunks=((1,) * J.numblocks[0],) + J.chunks[1:])
            got = sums.compute()                                 # warm-up: ships F once
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                got = sums.compute()
                times.append(time.perf_counter() - t0)
            results[workers] = statistics.median(times)
            assert np.array_equal(got, ref), "the cluster's Jacobians differ from in-process"
            first, last = dask.compute(J.blocks[0], J.blocks[-1])
            assert np.array_equal(first, ref_first) and np.array_equal(last, ref_last)
            loaded = client.run(__import__("jacext.dask").dask.functions_loaded)
            assert all(v == 1 for v in loaded.values()), loaded
    eff = results[1] / (2 * results[2])
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("-",)
    lines = [f"machine: {platform.machine()}, {os.cpu_count()} cores, load average "
             f"{load[0]:.1f} at the end; N = {n:,} arm Jacobians in blocks of {chunk:,}; "
             f"median of {args.repeats}; results equal to in-process bit for bit",
             "",
             "| run | seconds | Jacobians per second | vs 1 worker |",
             "|---|---|---|---|",
             f"| in process, 1 thread | {t_local:.2f} | {n / t_local:.3g} | "
             f"{results[1] / t_local:.2f}x |",
             f"| LocalCluster, 1 worker process | {results[1]:.2f} | {n / results[1]:.3g} | "
             "1.00x |",
             f"| LocalCluster, 2 worker processes | {results[2]:.2f} | {n / results[2]:.3g} | "
             f"{results[1] / results[2]:.2f}x |",
             "",
             f"scaling efficiency (1 -> 2 workers): {eff:.2f}"]
    print("\n".join(lines))
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
