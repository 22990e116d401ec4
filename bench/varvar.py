"""A product of two traced matrices, A(x) @ B(x): jacext's scalar form (n^3 multiply-adds as
instructions) against its product block (one block instruction: BLAS values, tangents and
adjoints), to place ``plan.PRODUCT_MIN_WORK`` (the issue "Dense linear algebra at BLAS
speed": decide by measurement between a block op and the scalar form).

    python bench/varvar.py            # n = 2 .. 48
    python bench/varvar.py --sizes 4,16

The function: f(x) = sum(tanh(sin(X) @ cos(X).T)), X = x.reshape(n, n), its gradient at one
point (n^2 inputs, one output: a reverse sweep).  Side by side, in this one process:

- scalar: ``F.jacobian(x)`` with the product traced as scalars (``plan.PRODUCT_MIN_WORK``
  raised for this trace only: the bench's switch, not a user's);
- block: the same with the product block (the threshold lowered to 1);
- each one's instruction count and trace + compile + first gradient;
- blas: the same gradient written by hand with three NumPy matrix products (Y = A B,
  dA = G B^T, dB = A^T G) and elementwise NumPy around them;
- jax: ``jax.jit(jax.grad(f))`` where JAX is installed.

Medians of repeats, OpenBLAS on one thread (set before NumPy loads).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jacext as jx  # noqa: E402
from bench.batch import median_time  # noqa: E402
from jacext import plan  # noqa: E402


def f_of(n, xp=np):
    def f(x):
        X = x.reshape(n, n)
        return xp.sum(xp.tanh(xp.sin(X) @ xp.cos(X.T)))
    return f


def blas_gradient(n):
    def grad(x):
        X = x.reshape(n, n)
        A, B = np.sin(X), np.cos(X.T)
        G = 1.0 - np.tanh(A @ B) ** 2
        dA, dB = G @ B.T, A.T @ G
        return (dA * np.cos(X) - (dB * np.sin(X.T)).T).ravel()
    return grad


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="2,4,8,16,32,48")
    args = ap.parse_args(argv)
    try:
        import jax
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
    except ImportError:
        jax = None
    rng = np.random.default_rng(0)
    print(f"# A(x) @ B(x), gradient at one point ({platform.machine()}, {os.cpu_count()} "
          f"cores, shared; OpenBLAS threads {os.environ['OPENBLAS_NUM_THREADS']})")
    print("| n | scalar instructions | block instructions | scalar first | block first | "
          "scalar | block | blas (hand) | jax | block / scalar | default |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    default = plan.PRODUCT_MIN_WORK
    for n in (int(s) for s in args.sizes.split(",")):
        x = rng.standard_normal(n * n) * 0.3
        f = f_of(n)
        hand = blas_gradient(n)
        row = {}
        for form, threshold in (("scalar", 10**18), ("block", 1)):
            plan.PRODUCT_MIN_WORK = threshold
            try:
                t0 = time.perf_counter()
                F = jx.compile(f, x)
                F.jacobian(x)
                first = time.perf_counter() - t0
            finally:
                plan.PRODUCT_MIN_WORK = default
            np.testing.assert_allclose(F.jacobian(x), hand(x), rtol=1e-10, atol=1e-12)
            row[form] = (F.n_instructions, first,
                         median_time(lambda F=F, x=x: F.jacobian(x), 15))
        t_blas = median_time(lambda hand=hand, x=x: hand(x), 15)
        t_jax = float("nan")
        if jax is not None:
            g = jax.jit(jax.grad(f_of(n, jnp)))
            xj = jnp.asarray(x)
            np.testing.assert_allclose(np.asarray(g(xj)), hand(x), rtol=1e-10, atol=1e-12)
            t_jax = median_time(lambda g=g, xj=xj: g(xj).block_until_ready(), 15)
        (ns, fs, ts), (nb, fb, tb) = row["scalar"], row["block"]
        chosen = "block" if plan.use_product(n, n, n) else "scalar"
        print(f"| {n} | {ns:,} | {nb:,} | {fs * 1e3:.1f} ms | {fb * 1e3:.1f} ms | "
              f"{ts * 1e6:.1f} us | {tb * 1e6:.1f} us | {t_blas * 1e6:.1f} us | "
              f"{t_jax * 1e6:.1f} us | {tb / ts:.2f} | {chosen} |")

if __name__ == "__main__":
    main()
