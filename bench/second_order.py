"""Second order side by side: dense Hessians, Hessian-vector products, sparse Hessians.

    python bench/second_order.py                 # every problem and peer (a few minutes)
    python bench/second_order.py --quick         # fewer repeats, n = 10^4 for the big ones
    python bench/second_order.py --problems rosen_dense --peers jacext,jax

Problems (each written once per framework, data from np.random.default_rng(0)):

| name | function | what is timed |
|---|---|---|
| rosen_dense | chained Rosenbrock, n = 100 | the dense Hessian (n x n) |
| small_dense | sum(tanh(W x + b)^2) + 0.1 sum(x^2)^2, n = 16, W dense | the dense Hessian |
| rosen_hvp | chained Rosenbrock, n = 10^5 | H v |
| rosen_sparse | chained Rosenbrock, n = 10^5 | the sparse Hessian as a scipy csr_array |

End to end: ``scipy.optimize.minimize`` of the chained Rosenbrock with
``method="trust-exact"`` (n = 100, dense Hessians, from 0.5 (-1)^i) and
``method="trust-constr"`` (n = 10^4, from 1 + 0.1 cos(i),
jacext's sparse Hessians against JAX's Hessian-vector products), time to solution including
construction, driven by jacext and by JAX; and at n = 100, SciPy on its own (peer ``fd``:
``trust-constr`` with a 2-point finite-difference gradient and a BFGS Hessian, since
trust-exact takes no estimated Hessian).

Peers: jacext (``F.hessian``, ``F.hvp``, ``F.hessian(x, sparse=True)``), jax
(``jax.jit(jax.hessian(f))``, ``jax.jit(lambda x, v: jvp(grad(f), (x,), (v,))[1])``, x64),
torch (``torch.func.hessian``, ``torch.func.jvp(torch.func.grad(f))``), casadi (SX
``hessian`` densified / sparse, ``jtimes`` of the ``gradient``, each a ``casadi.Function``
called through ``Function.buffer()`` bound to NumPy memory; the sparse one's CSC arrays
are the symmetric Hessian's CSR arrays).

Steady state: each peer is warmed up (jacext: enough calls for its planner to build the
tapes it would build for a user calling it that often), then timed as the median of
repeats of a loop of at least ``--min-time`` seconds.  First calls (construction plus the
first result, imports excluded) are measured in a fresh subprocess per peer.  Every
result is checked against jax's (or, without jax, jacext's) to 1e-12 relative.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# ------------------------------------------------------------------ problems --

def _rosen_np(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def _small_data():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(16, 16)) / 4.0
    b = rng.normal(size=16) / 4.0
    return W, b


def _small_np(x, lib=np):
    W, b = _small_data()
    if lib is np:
        return np.sum(np.tanh(W @ x + b) ** 2) + 0.1 * np.sum(x * x) ** 2
    return lib.sum(lib.tanh(lib.asarray(W) @ x + lib.asarray(b)) ** 2) + 0.1 * lib.sum(x * x) ** 2


PROBLEMS = {
    "rosen_dense": dict(n=100, kind="dense", f="rosen"),
    "small_dense": dict(n=16, kind="dense", f="small"),
    "rosen_hvp": dict(n=10**5, kind="hvp", f="rosen"),
    "rosen_sparse": dict(n=10**5, kind="sparse", f="rosen"),
}


def point(n):
    rng = np.random.default_rng(0)
    return rng.uniform(-1.0, 1.0, n), rng.uniform(-1.0, 1.0, n)


# ------------------------------------------------------------------ peers --

def make_jacext(f, kind, x):
    import jacext as jx

    fn = _rosen_np if f == "rosen" else _small_np
    F = jx.compile(fn, x)
    if kind == "dense":
        return lambda x, v: F.hessian(x)
    if kind == "hvp":
        return lambda x, v: F.hvp(x, v)
    return lambda x, v: F.hessian(x, sparse=True)


def make_jax(f, kind, x):
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    if f == "rosen":
        def fn(x):
            return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
    else:
        def fn(x):
            return _small_np(x, jnp)
    if kind == "dense":
        h = jax.jit(jax.hessian(fn))
        return lambda x, v: np.asarray(h(x).block_until_ready())
    if kind == "hvp":
        hv = jax.jit(lambda x, v: jax.jvp(jax.grad(fn), (x,), (v,))[1])
        return lambda x, v: np.asarray(hv(x, v).block_until_ready())
    return None   # no sparse Hessian in JAX


def make_torch(f, kind, x):
    import torch

    torch.set_num_threads(1)
    if f == "rosen":
        def fn(t):
            return torch.sum(100.0 * (t[1:] - t[:-1] ** 2) ** 2 + (1.0 - t[:-1]) ** 2)
    else:
        def fn(t):
            return _small_np(t, torch)
        W, b = _small_data()
        Wt, bt = torch.tensor(W), torch.tensor(b)

        def fn(t):   # noqa: F811  (torch needs tensors for the constants)
            return torch.sum(torch.tanh(Wt @ t + bt) ** 2) + 0.1 * torch.sum(t * t) ** 2
    if kind == "dense":
        h = torch.func.hessian(fn)
        return lambda x, v: h(torch.from_numpy(x)).numpy()
    if kind == "hvp":
        g = torch.func.grad(fn)
        return lambda x, v: torch.func.jvp(g, (torch.from_numpy(x),),
                                           (torch.from_numpy(v),))[1].numpy()
    return None


def make_casadi(f, kind, x0):
    import casadi as ca
    import scipy.sparse as sp

    n = x0.size
    x = ca.SX.sym("x", n)
    if f == "rosen":
        y = ca.sum1(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
    else:
        W, b = _small_data()
        y = ca.sum1(ca.tanh(ca.mtimes(ca.DM(W), x) + ca.DM(b)) ** 2) + 0.1 * ca.sumsqr(x) ** 2
    if kind == "hvp":
        v = ca.SX.sym("v", n)
        F = ca.Function("hvp", [x, v], [ca.jtimes(ca.gradient(y, x), x, v)])
        out = np.full(n, np.nan)
        buf, trigger = F.buffer()
        buf.set_res(0, memoryview(out))

        def call(x, v):
            buf.set_arg(0, memoryview(x))
            buf.set_arg(1, memoryview(v))
            trigger()
            return out
        return call
    H = ca.hessian(y, x)[0]
    if kind == "dense":
        F = ca.Function("h", [x], [ca.densify(H)])
        out = np.full((n, n), np.nan)    # column-major of a symmetric matrix: itself
        buf, trigger = F.buffer()
        buf.set_res(0, memoryview(out))

        def call(x, v):
            buf.set_arg(0, memoryview(x))
            trigger()
            return out
        return call
    F = ca.Function("h", [x], [H])
    pattern = F.sparsity_out(0)
    indptr = np.asarray(pattern.colind(), np.int32)   # CSC of a symmetric H = its CSR
    indices = np.asarray(pattern.row(), np.int32)
    values = np.full(F.nnz_out(0), np.nan)
    buf, trigger = F.buffer()
    buf.set_res(0, memoryview(values))

    def call(x, v):
        buf.set_arg(0, memoryview(x))
        trigger()
        return sp.csr_array((values.copy(), indices, indptr), shape=(n, n))
    return call


PEERS = {"jacext": make_jacext, "jax": make_jax, "torch": make_torch, "casadi": make_casadi}


# ------------------------------------------------------------------ timing --

def steady(call, x, v, min_time, repeats):
    """Median seconds per call: repeats of a loop of at least min_time seconds."""
    t0 = time.perf_counter()
    call(x, v)
    one = max(time.perf_counter() - t0, 1e-7)
    loops = max(1, int(min_time / one))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(loops):
            call(x, v)
        samples.append((time.perf_counter() - t0) / loops)
    return statistics.median(samples)


def warm(peer, call, x, v, kind):
    """jacext: as many calls as its planner counts before building its tapes (at most
    JAC_TAPE_AFTER_POINTS, or the HVP's ski rental); others: a few calls."""
    if peer != "jacext":
        for _ in range(3):
            call(x, v)
        return
    from jacext import plan

    t0 = time.perf_counter()
    for _ in range(plan.JAC_TAPE_AFTER_POINTS + 1):
        call(x, v)
        if time.perf_counter() - t0 > 60:
            break


def first_call(problem, peer):
    """Construction plus the first result, in a fresh process (imports excluded)."""
    code = (f"import sys; sys.path.insert(0, {HERE!r}); sys.path.insert(0, {ROOT!r}); "
            f"import second_order as s; s._first({problem!r}, {peer!r})")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=600, cwd=ROOT)
    if r.returncode != 0:
        return None
    return float(r.stdout.strip().splitlines()[-1])


def _first(problem, peer):
    spec = PROBLEMS[problem]
    x, v = point(spec["n"])
    # imports first, outside the timing
    __import__({"jacext": "jacext", "jax": "jax.numpy", "torch": "torch",
                "casadi": "casadi"}[peer])
    if peer == "torch":
        __import__("torch.func")
    t0 = time.perf_counter()
    call = PEERS[peer](spec["f"], spec["kind"], x)
    if call is None:
        print("nan")
        return
    call(x, v)
    print(time.perf_counter() - t0)


# ------------------------------------------------------------------ end to end --

SOLVES = {"trust-exact": 100, "trust-constr": 10**4}


def solve(peer, method, n):
    """scipy.optimize.minimize of the chained Rosenbrock from x0 = 0.5 (-1)^i (trust-exact)
    or 1 + 0.1 cos(i) (trust-constr, which is slow from far), with
    gradient and Hessian (dense for trust-exact, sparse from jacext / HVPs from JAX for
    trust-constr) from ``peer``; (seconds including construction, iterations, f, |x - 1|)."""
    from scipy.optimize import minimize

    x0 = 0.5 * (-1.0) ** np.arange(n) if method == "trust-exact" else (
        1.0 + 0.1 * np.cos(np.arange(n)))   # trust-constr: from near the solution
    t0 = time.perf_counter()
    if peer == "fd":
        # SciPy on its own: a 2-point finite-difference gradient; trust-exact takes no
        # estimated Hessian, so trust-constr with a BFGS Hessian, as SciPy documents
        from scipy.optimize import BFGS

        method = "trust-constr"
        opts = dict(fun=_rosen_np, jac="2-point", hess=BFGS())
    elif peer == "jacext":
        import jacext as jx

        F = jx.compile(_rosen_np, x0)
        G = F.grad_function()
        opts = dict(fun=lambda x: float(F(x)), jac=G)
        if method == "trust-exact":
            opts["hess"] = F.hessian
        else:
            opts["hess"] = lambda x: F.hessian(x, sparse=True)
    else:
        import jax
        import jax.numpy as jnp

        jax.config.update("jax_enable_x64", True)

        def fn(x):
            return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
        f, g = jax.jit(fn), jax.jit(jax.grad(fn))
        opts = dict(fun=lambda x: float(f(x)), jac=lambda x: np.asarray(g(x)))
        if method == "trust-exact":
            h = jax.jit(jax.hessian(fn))
            opts["hess"] = lambda x: np.asarray(h(x))
        else:
            hv = jax.jit(lambda x, v: jax.jvp(jax.grad(fn), (x,), (v,))[1])
            opts["hessp"] = lambda x, v: np.asarray(hv(x, np.asarray(v, dtype=np.float64)))
    res = minimize(x0=x0, method=method, options={"maxiter": 5000}, **opts)
    sec = time.perf_counter() - t0
    return sec, int(res.nit), float(res.fun), float(np.abs(res.x - 1.0).max())


def check(result, want, kind):
    if hasattr(result, "tocsr") or hasattr(want, "tocsr"):   # sparse: compare entries
        diff = abs(result - want).tocsr()
        scale = max(1.0, float(abs(want).max()))
        return float(diff.max()) / scale if diff.nnz else 0.0
    result, want = np.asarray(result), np.asarray(want)
    scale = max(1.0, float(np.abs(want).max()))
    return float(np.abs(result - want).max()) / scale


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", default=",".join(PROBLEMS))
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--min-time", type=float, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--no-first-calls", action="store_true")
    ap.add_argument("--no-solves", action="store_true", help="skip the scipy solves")
    ap.add_argument("--json", default=os.path.join(HERE, "out", "second_order.json"))
    args = ap.parse_args(argv)
    min_time = args.min_time or (0.05 if args.quick else 0.3)
    repeats = args.repeats or (3 if args.quick else 7)
    rows = []
    for name in args.problems.split(","):
        spec = dict(PROBLEMS[name])
        if args.quick and spec["n"] > 10**4:
            spec["n"] = 10**4
        x, v = point(spec["n"])
        results, reference = {}, None
        for peer in args.peers.split(","):
            if peer not in PEERS:
                continue        # "fd" drives the solves only
            try:
                call = PEERS[peer](spec["f"], spec["kind"], x)
            except ImportError as e:
                results[peer] = dict(status=f"missing ({e})")
                continue
            if call is None:
                results[peer] = dict(status="n/a")
                continue
            if spec["kind"] == "sparse" and peer == "jacext":
                import jacext as jx

                t0 = time.perf_counter()
                F = jx.compile(_rosen_np, x)
                t1 = time.perf_counter()
                F.hessian_sparsity()
                colours = F.hessian_colours()
                t2 = time.perf_counter()
                results["jacext-pattern"] = dict(compile_s=t1 - t0, pattern_colouring_s=t2 - t1,
                                                 colours=colours)
            warm(peer, call, x, v, spec["kind"])
            out = call(x, v)
            out = out.copy() if isinstance(out, np.ndarray) else out
            sec = steady(call, x, v, min_time, repeats)
            cell = dict(status="ok", median_s=sec)
            if peer == "jax" or reference is None or (reference[0] != "jax"
                                                      and peer == "casadi"):
                reference = (peer, out)   # jax's, else casadi's, else the first
            cell["result"] = out
            if not args.no_first_calls:
                cell["first_s"] = first_call(name, peer)
            results[peer] = cell
        for cell in results.values():
            if "result" in cell:
                cell["rel_err_vs_" + reference[0]] = check(cell.pop("result"), reference[1],
                                                          spec["kind"])
        rows.append((name, spec, results))
    print(f"# second order ({os.cpu_count()} cores; medians of {repeats} repeats)\n")
    print("| problem | peer | median | first call | rel. err. | note |")
    print("|---|---|---|---|---|---|")
    for name, spec, results in rows:
        for peer, cell in results.items():
            if peer == "jacext-pattern":
                print(f"| {name} n={spec['n']} | jacext | | | | compile "
                      f"{cell['compile_s'] * 1e3:.0f} ms; pattern + colouring "
                      f"{cell['pattern_colouring_s'] * 1e3:.0f} ms, {cell['colours']} colours |")
                continue
            if cell.get("status") != "ok":
                print(f"| {name} n={spec['n']} | {peer} | {cell.get('status')} | | | |")
                continue
            err = [v for k, v in cell.items() if k.startswith("rel_err")]
            first = cell.get("first_s")
            print(f"| {name} n={spec['n']} | {peer} | {_fmt(cell['median_s'])} | "
                  f"{_fmt(first) if first else ''} | {err[0]:.1e} | |")
    solves = []
    if not args.no_solves:
        print("\n| scipy.optimize.minimize, rosen | n | peer | time to solution | "
              "iterations | f | max abs(x - 1) |")
        print("|---|---|---|---|---|---|---|")
        for method, n in SOLVES.items():
            if args.quick:
                n = min(n, 1000)
            for peer in ("jacext", "jax", "fd"):
                if peer not in args.peers.split(",") or (peer == "fd" and n > 1000):
                    continue        # fd: n function calls per gradient
                try:
                    sec, nit, fval, err = solve(peer, method, n)
                except ImportError:
                    continue
                solves.append(dict(method=method, n=n, peer=peer, seconds=sec, nit=nit,
                                   f=fval, err=err))
                who = ("SciPy alone (trust-constr, 2-point gradient, BFGS)" if peer == "fd"
                       else peer)
                print(f"| {method} | {n} | {who} | {_fmt(sec)} | {nit} | {fval:.1e} | "
                      f"{err:.1e} |")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(dict(cells=[dict(problem=n, spec=s, results=r) for n, s, r in rows],
                       solves=solves), fh, indent=1)
    return 0


def _fmt(sec):
    if sec is None:
        return ""
    if sec < 1e-3:
        return f"{sec * 1e6:.1f} us"
    if sec < 1:
        return f"{sec * 1e3:.2f} ms"
    return f"{sec:.2f} s"


if __name__ == "__main__":
    sys.exit(main())
