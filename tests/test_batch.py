"""Batches (src_c/batch.c): points as lanes, blocks of 32, threads over whole blocks.

Every op of the table, as a batch, against a loop of single points (bit for
bit), at interior and edge points, both modes; batch sizes around the block
size; thread counts; and the memory a batch of 10**6 points takes.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from test_ops import NAMES, REF, edges

import jacext as jx

MODES = ("forward", "reverse")


def _points(name):
    """Interior and edge points of the op, as equal-length arrays per operand."""
    spec = REF[name]
    sets = [spec.domain, edges(name)]
    return tuple(np.concatenate([np.broadcast_to(np.asarray(s[k], dtype=np.float64),
                                                 np.broadcast_shapes(*[np.shape(v) for v in s]))
                                 .ravel() for s in sets])
                 for k in range(spec.arity))


@pytest.mark.parametrize("name", NAMES)
def test_every_op_batched_equals_single_points_bit_for_bit(name):
    spec = REF[name]
    pts = _points(name)
    F = jx.compile(spec.fn, *[np.zeros(()) for _ in pts])
    nums = tuple(range(spec.arity))
    with np.errstate(all="ignore"):
        values = F(*pts)
        single = np.array([F(*[p[i] for p in pts]) for i in range(pts[0].size)])
        np.testing.assert_array_equal(values, single)
        for mode in MODES:
            batch = F.jacobian(*pts, argnums=nums, mode=mode)
            loop = [F.jacobian(*[p[i] for p in pts], argnums=nums, mode=mode)
                    for i in range(pts[0].size)]
            for k in nums:
                np.testing.assert_array_equal(batch[k], [j[k] for j in loop],
                                              err_msg=f"{name} {mode} d/d{k}")


@pytest.mark.parametrize("n_points", [1, 2, 31, 32, 33, 63, 64, 65, 97, 1009])
def test_batch_sizes_around_the_block(n_points):
    rng = np.random.default_rng(n_points)
    X = rng.uniform(-2.0, 2.0, (n_points, 4))

    def f(x):
        return np.stack([np.sin(x[0]) * x[1], np.exp(x[2] - x[3]) + x[0] ** 2,
                         np.hypot(x[1], x[2])])

    F = jx.compile(f, X[0])
    for mode in MODES:
        J = F.jacobian(X, mode=mode)
        assert J.shape == (n_points, 3, 4)
        np.testing.assert_array_equal(J, [F.jacobian(x, mode=mode) for x in X])
        for threads in (1, 2, 3):
            np.testing.assert_array_equal(F.jacobian(X, mode=mode, threads=threads), J)
    np.testing.assert_array_equal(F(X), [F(x) for x in X])


def test_batch_of_a_million_points_runs_in_bounded_memory():
    """Peak memory of a 10**6-point batch: the output array plus a little.

    Run in a fresh process so the peak (VmHWM) is this batch's alone.
    """
    code = textwrap.dedent("""
        import numpy as np, jacext as jx
        def peak():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM"):
                    return int(line.split()[1]) * 1024
        F = jx.compile(lambda x: np.stack([x[0] * x[1], np.sin(x[0])]), np.zeros(2))
        X = np.random.default_rng(0).random((10**6, 2))
        before = peak()
        J = F.jacobian(X, threads=2)
        assert J.shape == (10**6, 2, 2)
        assert np.array_equal(J[12345], F.jacobian(X[12345]))
        print(before, peak(), J.nbytes)
    """)
    try:
        open("/proc/self/status").close()
    except OSError:
        pytest.skip("needs /proc to read peak memory")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    before, after, nbytes = (int(v) for v in out)
    grown = after - before
    print(f"10**6 points: output {nbytes / 2**20:.0f} MiB, peak grew {grown / 2**20:.0f} MiB")
    assert grown <= 1.2 * nbytes + 50 * 2**20
