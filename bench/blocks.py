"""Dense linear algebra inside the tape (block instructions): jacext against its peers.

    python bench/blocks.py                 # everything (a few minutes on 2 cores)
    python bench/blocks.py --quick         # fewer repeats, smaller batch
    python bench/blocks.py --cases mlp64,gn --peers jacext,numpy

Cases (the issue's bars):
  mlp64      tanh MLP 64-64-64 (bench/problems.py's mlp), the Jacobian at one point
  mlp64b     the same at a batch of 10^4 points
  mlp256     the same at width 256: one point, the first call, the tape's size
  mlp256b    width 256 at a batch of 10^3 points (10^4 would be 5 GB of Jacobians)
  gn         Gauss-Newton: the Jacobian of A @ x - b, A 2000 x 500
  scalar     block instructions against the scalar form of the same products (the
             threshold plan.BLOCK_MIN_NONZEROS / BLOCK_MIN_DENSITY)

Peers, all in this one process, side by side: jacext (``F.jacobian``), jax
(``jax.jit(jax.jacrev)``, ``jax.jit(jax.vmap(jax.jacrev))`` for batches), torch
(``torch.func.jacrev``, under ``vmap`` for batches), casadi (an SX Function of the dense
Jacobian, on mlp64 at one point only: mapped over 10^4 points it takes minutes per call, and
the SX Jacobians of the 256-wide MLP and of the 2000 x 500 product took over 4 GB to build),
casadi_mx (the same Jacobian of CasADi's MX graph, whose matrix products stay matrix
products: every case; batches through ``Function.map(N, "thread", 2)``) and numpy (the
hand-written Jacobian).  Each figure is the
median of the repeats, each repeat at least ~20 ms of calls.  The machine, its load and
the thread settings are printed with the results.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

# OpenBLAS's idle threads spin for a while after each call; on shared cores they take the
# time of the next call (bench/run.py sets the same)
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import problems  # noqa: E402

CPU = {}


def median_time(fn, arg, repeats, min_time=0.02):
    """Median wall seconds per call over ``repeats`` repeats of at least ``min_time`` each;
    the median CPU seconds of the process per call (all its threads: what the call cost
    the shared cores, less sensitive to the other work on them) go to CPU[fn]."""
    fn(arg)
    n, t0 = 1, time.perf_counter()
    fn(arg)
    one = max(time.perf_counter() - t0, 1e-7)
    n = max(1, int(min_time / one))
    samples, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            fn(arg)
        samples.append((time.perf_counter() - t0) / n)
        cpu.append((time.process_time() - c0) / n)
    CPU[fn] = statistics.median(cpu)
    return statistics.median(samples)


def fmt(s):
    if s is None:
        return "-"
    for unit, f in (("s", 1), ("ms", 1e3), ("µs", 1e6), ("ns", 1e9)):
        if s * f >= 1:
            return f"{s * f:.3g} {unit}"
    return f"{s * 1e9:.3g} ns"


# ---------------------------------------------------------------------- the functions --

def mlp(width):
    p = problems.mlp_problem(width)
    rng = np.random.default_rng(0)
    W1 = rng.standard_normal((width, width)) / 8
    b1 = rng.standard_normal(width) / 8
    W2 = rng.standard_normal((width, width)) / 8
    b2 = rng.standard_normal(width) / 8

    def batch_jacobian(X):
        H = np.tanh(X @ W1.T + b1)
        Y = np.tanh(H @ W2.T + b2)
        return (1 - Y**2)[:, :, None] * ((W2[None, :, :] * (1 - H**2)[:, None, :]) @ W1)

    return p, batch_jacobian, (W1, W2)


def gauss_newton():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((2000, 500))
    b = rng.standard_normal(2000)

    def f(x):
        return A @ x - b

    def torch_version():
        import torch
        a, c = torch.from_numpy(A), torch.from_numpy(b)
        return lambda x: a @ x - c

    def jax_version():
        import jax.numpy as jnp
        a, c = jnp.asarray(A), jnp.asarray(b)
        return lambda x: a @ x - c

    def casadi_version():
        import casadi as ca
        a, c = ca.DM(A), ca.DM(b)
        return lambda x: ca.mtimes(a, x) - c

    p = problems.Problem("gn", "A @ x - b, A 2000 x 500", f, torch_version, jax_version,
                         casadi_version, lambda x: A.copy(), rng.standard_normal(500))
    return p, A


# -------------------------------------------------------------------------- the peers --

def jacext_peer(p, X):
    import jacext as jx

    F = jx.compile(p.numpy, p.x)
    return F.jacobian, F


def jax_peer(p, X, batch):
    import jax

    jax.config.update("jax_enable_x64", True)
    g = jax.jacrev(p.jax())
    g = jax.jit(jax.vmap(g) if batch else g)
    return lambda x: np.asarray(g(x).block_until_ready())


def torch_peer(p, X, batch):
    import torch

    g = torch.func.jacrev(p.torch())
    if batch:
        g = torch.func.vmap(g)
    return lambda x: g(torch.from_numpy(x)).numpy()


def casadi_peer(p, X, batch, kind="SX"):
    """CasADi's dense Jacobian Function: SX (scalar expressions, the matrices unrolled) or
    MX (matrix expressions: the products stay products)."""
    import casadi as ca

    x = getattr(ca, kind).sym("x", p.x.size)
    F = ca.Function("J", [x], [ca.densify(ca.jacobian(p.casadi()(x), x))])
    if batch:
        N = X.shape[0]
        Fm = F.map(N, "thread", 2)
        return lambda X: np.asarray(Fm(X.T)).reshape(-1, N, p.x.size).transpose(1, 0, 2)
    return lambda x: np.asarray(F(x))


def first_call(make, x):
    """Seconds from nothing to the first Jacobian: build (trace, compile) + first call."""
    t0 = time.perf_counter()
    jac = make()
    jac(x)
    return time.perf_counter() - t0


# -------------------------------------------------------------------------- the cases --

def run_case(name, peers, repeats, quick):
    rows, notes = [], []
    if name.startswith("mlp"):
        width = 256 if name.startswith("mlp256") else 64
        p, batch_jacobian, weights = mlp(width)
        batch = name.endswith("b")
        N = (1000 if width == 256 else 10_000) // (10 if quick else 1)
        X = np.random.default_rng(1).standard_normal((N, width)) if batch else p.x
        hand = (lambda X: batch_jacobian(X)) if batch else p.jacobian
    elif name == "gn":
        p, A = gauss_newton()
        batch, X, hand = False, p.x, p.jacobian
    else:
        return scalar_case(repeats)
    want = hand(X)
    makers = {
        "jacext": lambda: jacext_peer(p, X)[0],
        "jax": lambda: jax_peer(p, X, batch),
        "torch": lambda: torch_peer(p, X, batch),
        "casadi": lambda: casadi_peer(p, X, batch),
        "casadi_mx": lambda: casadi_peer(p, X, batch, "MX"),
        "numpy": lambda: hand,
    }
    for peer in peers:
        if peer == "casadi" and (batch or name != "mlp64"):
            # an SX Function mapped over 10^4 points: minutes per call on 2 cores; the SX
            # Jacobian of the 256-wide MLP or of the 2000 x 500 product: over 4 GB to build
            rows.append((peer, None, None, "not run: SX (see the module docstring)", None))
            continue
        try:
            t_first = first_call(makers[peer], X)
            jac = makers[peer]()
            got = np.asarray(jac(X)).reshape(want.shape)
            ok = np.allclose(got, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())
            t = median_time(jac, X, 3 if batch else repeats)
            rows.append((peer, t, t_first, "ok" if ok else "WRONG", CPU.pop(jac)))
        except Exception as e:  # a peer that cannot run this case
            rows.append((peer, None, None, f"error: {type(e).__name__}: {e}"[:80], None))
    if name in ("mlp256", "mlp64"):
        _, F = jacext_peer(p, X)
        arrays = F.tape_arrays()
        tape = sum(v.nbytes for v in arrays.values() if isinstance(v, np.ndarray))
        notes.append(f"jacext tape {tape / 1024:.1f} KiB, of which weights "
                     f"{arrays['weights'].nbytes / 1024:.1f} KiB: "
                     f"{(tape - arrays['weights'].nbytes) / 1024:.1f} KiB beyond them; "
                     f"{F.n_instructions} instructions, {F.tape.n_blocks} blocks")
    return rows, notes


def scalar_case(repeats):
    """The same products as blocks and in the scalar form, at sizes around the threshold."""
    import jacext as jx

    rows, notes = [], []
    rng = np.random.default_rng(2)
    for n in (4, 8, 16, 32, 64):
        A = rng.standard_normal((n, n))
        x = rng.standard_normal(n)
        Fb = jx.compile(lambda x, A=A: np.tanh(A @ x), x)
        Fs = jx.compile(lambda x, A=A: np.tanh((A * x).sum(axis=1)), x)
        for label, F in (("block", Fb), ("scalar", Fs)):
            X = rng.standard_normal((1000, n))
            point = F.jacobian
            median_time(point, x, repeats)

            def batch(X, F=F):
                return F.jacobian(X, threads=1)

            for _ in range(3):   # the scalar form's Jacobian tape gets built
                batch(X)
            median_time(batch, X, repeats)
            rows.append((f"n={n} {label} ({F.tape.n_blocks} blocks)", CPU.pop(point),
                         CPU.pop(batch) / 1000, "CPU: point | per batch point"))
    return rows, notes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="mlp64,mlp64b,mlp256,mlp256b,gn,scalar")
    ap.add_argument("--peers", default="jacext,jax,torch,casadi,casadi_mx,numpy")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    repeats = 3 if args.quick else 7
    peers = args.peers.split(",")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
          f"(shared with other work: noisy), load {os.getloadavg()[0]:.1f}; "
          + ", ".join(f"{v}={os.environ.get(v)}" for v in
                      ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_THREAD_TIMEOUT")))
    for case in args.cases.split(","):
        rows, notes = run_case(case, peers, repeats, args.quick)
        print(f"\n## {case}\n", flush=True)
        if case == "scalar":
            print("| form | point Jacobian, CPU | batch (1 thread), CPU per point |\n"
                  "|---|---:|---:|")
            for label, t, tb, _ in rows:
                print(f"| {label} | {fmt(t)} | {fmt(tb)} |")
            continue
        base = {r[0]: r[1] for r in rows}
        cbase = {r[0]: r[4] for r in rows}
        print("| peer | median | first call | vs jax | vs numpy | CPU per call | CPU vs jax "
              "| CPU vs numpy | check |\n|---|---:|---:|---:|---:|---:|---:|---:|---|")

        def ratio(a, b):
            return f"{a / b:.2f}" if a and b else "-"

        for peer, t, t_first, status, c in rows:
            print(f"| {peer} | {fmt(t)} | {fmt(t_first)} | {ratio(t, base.get('jax'))} | "
                  f"{ratio(t, base.get('numpy'))} | {fmt(c)} | {ratio(c, cbase.get('jax'))} | "
                  f"{ratio(c, cbase.get('numpy'))} | {status} |")
        for n in notes:
            print(f"\n{n}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
