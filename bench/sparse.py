"""Sparse Jacobians: jacext's sparse=True against CasADi's sparse Jacobian and dense peers.

    python bench/sparse.py [--quick] [--json PATH] [--markdown PATH]

Three sections, each checked before anything is timed (a disagreement stops the run, exit 2):

  broyden scaling   Broyden tridiagonal (problems.broyden_problem) for n = 10^3 .. 10^6 with
                    sparse=True: trace + compile, pattern, colouring and the first call apart,
                    then the steady-state time per Jacobian and per nonzero; CasADi's sparse
                    Jacobian and a hand-written CSR fill beside it.
  broyden n=1000    dense output: jacext auto (compressed sweeps, scattered into zeros) and
                    out=, the hand-written NumPy Jacobian, CasADi, JAX, torch; and jacext's
                    sparse output against them.
  bratu             2-D Bratu problem on a k x k grid, k = 32, 100, 300: discrete Laplacian
                    + lam exp(u), zero Dirichlet boundary. jacext sparse against CasADi's
                    sparse Jacobian (three ways of calling it); dense peers (jacext, JAX,
                    torch, CasADi densified) for k = 32 only, where the dense matrix is 8 MiB.

Every jacext result is first checked against an independent hand-written Jacobian; every peer
is then checked against jacext. Timing reuses bench/run.py (time_peers: autoranged loops,
interleaved repeats, medians). Results: bench/out/sparse.md and bench/out/sparse.json, and the
table on stdout.
"""

import argparse
import gc
import json
import os
import statistics
import sys
import time
import traceback

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# bench.run sets the thread variables before NumPy is imported; keep this import first.
from bench import run as runner  # noqa: E402, I001

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from bench import peers as peer_module  # noqa: E402
from bench import problems as problem_module  # noqa: E402
from bench.problems import Problem  # noqa: E402

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
BROYDEN_SIZES = (10**3, 10**4, 10**5, 10**6)
BRATU_SIZES = (32, 100, 300)
BRATU_LAMBDA = 6.0
DENSE_PEERS = ("jax-jacfwd", "jax-jacrev", "torch-jacfwd", "torch-jacrev")


# ------------------------------------------------------------------------------- problems
def broyden_csr(x):
    """The hand-written Broyden Jacobian, straight into CSR (rows [-1, 3 - 4 x_i, -2])."""
    n = x.size
    data = np.empty((n, 3))
    data[:, 0] = -1.0
    data[:, 1] = 3 - 4 * x
    data[:, 2] = -2.0
    cols = np.arange(n)[:, None] + np.array([-1, 0, 1])
    indptr = np.r_[0, np.cumsum(np.full(n, 3)) - 1]
    indptr[-1] = 3 * n - 2
    return sp.csr_array((data.ravel()[1:-1], cols.ravel()[1:-1], indptr), shape=(n, n))


def bratu_problem(k, lam=BRATU_LAMBDA):
    """F(u) = (discrete Laplacian of u) + lam exp(u) on the k x k interior of a unit square,
    zero Dirichlet boundary, u flattened row by row: k^2 -> k^2, 5-point stencil."""
    h2 = (k + 1.0) ** 2

    def f(u):
        U = u.reshape(k, k)
        zr, zc = np.zeros((1, k)), np.zeros((k, 1))
        up = np.concatenate([zr, U[:-1]], axis=0)
        down = np.concatenate([U[1:], zr], axis=0)
        left = np.concatenate([zc, U[:, :-1]], axis=1)
        right = np.concatenate([U[:, 1:], zc], axis=1)
        return ((up + down + left + right - 4 * U) * h2 + lam * np.exp(U)).reshape(-1)

    def torch_version():
        import torch

        def f_torch(u):
            U = u.reshape(k, k)
            zr, zc = U.new_zeros((1, k)), U.new_zeros((k, 1))
            up = torch.cat([zr, U[:-1]], dim=0)
            down = torch.cat([U[1:], zr], dim=0)
            left = torch.cat([zc, U[:, :-1]], dim=1)
            right = torch.cat([U[:, 1:], zc], dim=1)
            return ((up + down + left + right - 4 * U) * h2 + lam * torch.exp(U)).reshape(-1)

        return f_torch

    def jax_version():
        import jax.numpy as jnp

        def f_jax(u):
            U = u.reshape(k, k)
            zr, zc = jnp.zeros((1, k), u.dtype), jnp.zeros((k, 1), u.dtype)
            up = jnp.concatenate([zr, U[:-1]], axis=0)
            down = jnp.concatenate([U[1:], zr], axis=0)
            left = jnp.concatenate([zc, U[:, :-1]], axis=1)
            right = jnp.concatenate([U[:, 1:], zc], axis=1)
            return ((up + down + left + right - 4 * U) * h2 + lam * jnp.exp(U)).reshape(-1)

        return f_jax

    def casadi_version():
        import casadi as ca

        def f_casadi(u):  # u: SX (k*k)x1
            # CasADi reshapes column-major, so this U is the grid transposed; the stencil
            # is symmetric in the two axes and vec() undoes the transpose: same function.
            U = ca.reshape(u, k, k)
            zr, zc = ca.SX.zeros(1, k), ca.SX.zeros(k, 1)
            up = ca.vertcat(zr, U[: k - 1, :])
            down = ca.vertcat(U[1:, :], zr)
            left = ca.horzcat(zc, U[:, : k - 1])
            right = ca.horzcat(U[:, 1:], zc)
            return ca.vec((up + down + left + right - 4 * U) * h2 + lam * ca.exp(U))

        return f_casadi

    rng = np.random.default_rng(0)
    u = 0.1 * rng.random(k * k)
    return Problem(f"bratu k={k}", f"2-D Bratu, {k}x{k} grid: {k * k} -> {k * k}",
                   f, torch_version, jax_version, casadi_version, None, u)


def bratu_csr(u, k, lam=BRATU_LAMBDA):
    """The hand-written Bratu Jacobian: (k+1)^2 (T (x) I + I (x) T) + diag(lam e^u)."""
    T = sp.diags([np.ones(k - 1), -2 * np.ones(k), np.ones(k - 1)], [-1, 0, 1])
    eye = sp.identity(k)
    J = (k + 1.0) ** 2 * (sp.kron(T, eye) + sp.kron(eye, T)) + sp.diags(lam * np.exp(u))
    return sp.csr_array(J)


# ---------------------------------------------------------------------------------- peers
def jacext_sparse(problem):
    import jacext as jx

    F = jx.compile(problem.numpy, problem.x)
    return lambda x: F.jacobian(x, sparse=True)


def _casadi_sparse_function(problem):
    """CasADi's SX Jacobian, transposed: CasADi stores column-major (CSC), and the CSC
    arrays of J^T are the CSR arrays of J, so no conversion is needed to hand back CSR."""
    import casadi as ca

    n = problem.x.size
    x = ca.SX.sym("x", n)
    J = ca.jacobian(problem.casadi()(x), x)
    return ca.Function("jacobian_t", [x], [J.T])


def casadi_dm(problem):
    """The ordinary call, the Jacobian left as CasADi's sparse DM (no SciPy result)."""
    F = _casadi_sparse_function(problem)
    return F


def casadi_scipy(problem):
    """The ordinary call, then DM.sparse() (a SciPy CSC of J^T) wrapped as J's csr_array."""
    F = _casadi_sparse_function(problem)
    m, n = int(np.prod(problem.out_shape)), problem.x.size

    def jac(x):
        s = F(x).sparse()
        return sp.csr_array((s.data, s.indices, s.indptr), shape=(m, n))

    return jac


def casadi_buffer(problem):
    """Function.buffer(): nonzeros written into NumPy memory, wrapped as a fresh csr_array
    with the fixed pattern (what jacext returns); the same peer as run.py's
    casadi-sparse-buffer."""
    from bench import peers

    return peers._casadi_sparse_buffer(problem, None)


def hand_csr(problem):
    return broyden_csr


SPARSE_PEERS = {
    "jacext-sparse": ("jacext", jacext_sparse),
    "casadi-dm": ("casadi", casadi_dm),
    "casadi-scipy": ("casadi", casadi_scipy),
    "casadi-buffer": ("casadi", casadi_buffer),
}


def dense_peer(name):
    """(name-dense, framework, build) for a peer of bench/peers.py (dense results)."""
    peer = next(p for p in peer_module.PEERS if p.name == name)
    return name + "-dense", peer.framework, lambda problem: peer.build(problem, runner.THREADS)


# ------------------------------------------------------------------------------- checking
def as_csr(result, shape):
    """A peer's result as a SciPy CSR (CasADi's DM of J^T through its own sparse())."""
    if hasattr(result, "sparse") and not sp.issparse(result):   # casadi.DM of J^T
        s = result.sparse()
        return sp.csr_array((s.data, s.indices, s.indptr), shape=shape)
    if sp.issparse(result):
        return sp.csr_array(result)
    return sp.csr_array(np.asarray(result).reshape(shape))


def check(peer, problem_name, got, want, want_name):
    got = as_csr(got, want.shape)
    if got.shape != want.shape:
        raise runner.Disagreement(f"{peer} on {problem_name}: shape {got.shape}, "
                                  f"{want_name} has {want.shape}")
    err = abs(got - want).max() if want.nnz or got.nnz else 0.0
    scale = abs(want).max() if want.nnz else 0.0
    if not err <= runner.ATOL + runner.RTOL * scale:
        raise runner.Disagreement(f"{peer} on {problem_name} disagrees with {want_name}: "
                                  f"max |difference| {err:.3g} (scale {scale:.3g})")


# -------------------------------------------------------------------------------- running
class Section:
    """Build, check and time a set of peers on one problem."""

    def __init__(self, frameworks, settings, rows):
        self.frameworks, self.settings, self.rows = frameworks, settings, rows

    def run(self, section, problem, peers, reference, reference_name, nnz, extra=None):
        """peers: [(name, framework, build)]; reference(x) -> CSR. Returns the rows."""
        alt = problem.x + 0.01 * np.random.default_rng(1).standard_normal(problem.x.shape)
        points = [problem.x, alt]
        want = [reference(p) for p in points]
        built, rows = [], []
        for name, framework, build in peers:
            row = {"section": section, "problem": problem.name, "n": int(problem.x.size),
                   "nnz": int(nnz), "peer": name}
            rows.append(row)
            state = self.frameworks.get(framework, {"status": "missing", "message": ""})
            if state["status"] != "ok":
                row.update(status=state["status"], message=state["message"])
                continue
            try:
                start = time.perf_counter_ns()
                jac = build(problem)
                built_ns = time.perf_counter_ns() - start
                jac(problem.x)
                row["first_call_ns"] = time.perf_counter_ns() - start
                row["build_ns"] = built_ns
                results = [as_csr(jac(p), want[0].shape) for p in points]
            except Exception as e:  # a peer's failure is reported, not fatal
                traceback.print_exc()
                row.update(status="error", message=f"{type(e).__name__}: {e}")
                continue
            for got, w in zip(results, want, strict=True):
                check(name, problem.name, got, w, reference_name)
            if name == "jacext-sparse":
                want, reference_name = results, "jacext"
            row.update(status="ok", checked_against=reference_name)
            built.append((name, jac))
        print(f"  {section} / {problem.name}: {len(built)} peers agree; timing", file=sys.stderr)
        timings = runner.time_peers(built, problem.x, self.settings["target_ns"],
                                    self.settings["repeats"])
        for row in rows:
            if row["peer"] in timings:
                row["median_ns"], row["number"], row["samples_ns"] = timings[row["peer"]]
                row["per_nnz_ns"] = row["median_ns"] / max(nnz, 1)
            if extra and row["peer"] in extra:
                row.update(extra[row["peer"]])
        self.rows += rows
        return rows


def jacext_setup(problem):
    """Trace + compile, pattern, colouring and the first sparse call, each timed apart."""
    import jacext as jx

    t0 = time.perf_counter_ns()
    F = jx.compile(problem.numpy, problem.x)
    t1 = time.perf_counter_ns()
    pattern = F.sparsity()
    t2 = time.perf_counter_ns()
    p, q = F.colours()
    t3 = time.perf_counter_ns()
    F.jacobian(problem.x, sparse=True)
    t4 = time.perf_counter_ns()
    return F, {"first_call_ns": t4 - t0, "compile_ns": t1 - t0, "pattern_ns": t2 - t1,
               "colouring_ns": t3 - t2, "first_sparse_ns": t4 - t3, "colours": [int(p), int(q)],
               "instructions": F.n_instructions, "nnz": int(pattern.nnz)}


def compiled_sparse(F):
    """A peer build that reuses the Function jacext_setup compiled (and timed)."""
    return lambda problem: (lambda x: F.jacobian(x, sparse=True))


def interleaved_per_nnz(cases, settings):
    """Median ns per nonzero of jacext sparse=True, repeats alternating between sizes, so
    a noisy stretch of the machine hits every size alike (the linear-growth bar compares
    sizes, which the per-size tables time minutes apart)."""
    jacs = {n: (lambda x, F=F: F.jacobian(x, sparse=True), x, nnz)
            for n, (F, x, nnz) in cases.items()}
    numbers = {n: runner.autorange(jac, x, settings["target_ns"])
               for n, (jac, x, _) in jacs.items()}
    samples = {n: [] for n in jacs}
    gc.disable()
    try:
        for _ in range(settings["repeats"]):
            for n, (jac, x, nnz) in jacs.items():
                samples[n].append(runner.run_loop(jac, x, numbers[n]) / numbers[n] / nnz)
    finally:
        gc.enable()
    return {n: statistics.median(v) for n, v in samples.items()}


def sparse_tape_built(F):
    """Whether F's single-point sparse Jacobians (forward colouring) run its Jacobian tape."""
    from jacext.testing import jacobian_tape_slot
    return jacobian_tape_slot(F, 0, "forward", True, False).current is not None


def broyden_scaling(section, sizes, with_casadi_upto):
    compiled = {}
    for n in sizes:
        problem = problem_module.broyden_problem(n)
        F, setup = jacext_setup(problem)
        compiled[n] = (F, problem.x, setup["nnz"])
        peers = [("jacext-sparse", "jacext", compiled_sparse(F)),
                 ("numpy-hand-csr", "numpy", hand_csr)]
        if n <= with_casadi_upto:
            peers += [(name, fw, build) for name, (fw, build) in SPARSE_PEERS.items()
                      if fw == "casadi"]
        section.run("broyden sparse", problem, peers, broyden_csr, "hand-written CSR",
                    setup["nnz"], extra={"jacext-sparse": {"setup": setup,
                                                "first_call_ns": setup["first_call_ns"]}})
    pair = {n: compiled[n] for n in (10**4, 10**6) if n in compiled}
    if len(pair) == 2:
        print("  broyden sparse: 10^4 and 10^6 interleaved", file=sys.stderr)
        steady = interleaved_per_nnz(pair, section.settings)
        paths = {n: "Jacobian tape" if sparse_tape_built(F) else "sweeps"
                 for n, (F, _, _) in pair.items()}
        # the same with fresh Functions whose Jacobian tape is turned off: the compressed
        # sweeps at both sizes
        import jacext as jx
        from jacext.testing import without_jacobian_tapes
        fresh = {}
        for n in pair:
            problem = problem_module.broyden_problem(n)
            F = without_jacobian_tapes(jx.compile(problem.numpy, problem.x))
            fresh[n] = (F, problem.x, pair[n][2])
        sweeps = interleaved_per_nnz(fresh, section.settings)
        assert not any(sparse_tape_built(F) for F, _, _ in fresh.values())
        steady["paths"] = paths
        return {"steady": steady, "sweeps": sweeps}
    return {}


def broyden_dense(section):
    problem = problem_module.broyden_problem(1000)
    peers = [("jacext-sparse", "jacext", jacext_sparse)]
    peers += [dense_peer(name) for name in ("jacext", "jacext-out", "numpy-hand", "casadi",
                                            "casadi-buffer", "jax-jacfwd", "torch-jacfwd")]
    section.run("broyden n=1000", problem, peers, broyden_csr, "hand-written CSR", 3 * 1000 - 2)


def bratu(section, sizes):
    for k in sizes:
        problem = bratu_problem(k)
        F, setup = jacext_setup(problem)
        peers = [("jacext-sparse", "jacext", compiled_sparse(F))]
        peers += [(name, fw, build) for name, (fw, build) in SPARSE_PEERS.items()
                  if fw == "casadi"]
        if k <= 32:
            peers += [dense_peer(name) for name in ("jacext", "jacext-out") + DENSE_PEERS]
        section.run("bratu", problem, peers, lambda u, k=k: bratu_csr(u, k),
                    "hand-written CSR", setup["nnz"], extra={"jacext-sparse": {"setup": setup,
                                                "first_call_ns": setup["first_call_ns"]}})


# ------------------------------------------------------------------------------ reporting
def bars(rows, interleaved):
    """The issue's bars, measured in this run: (text, met)."""
    out = []
    fmt = runner.format_ns
    by_n = {r["n"]: r for r in rows if r["section"] == "broyden sparse"
            and r["peer"] == "jacext-sparse" and r.get("status") == "ok"}
    big = by_n.get(10**6)
    if big:
        out.append((f"broyden n=10^6 sparse: {fmt(big['median_ns'])} per Jacobian (bar 0.1 s)",
                    big["median_ns"] <= 1e8))
        s = big["setup"]
        once = s["pattern_ns"] + s["colouring_ns"]
        out.append((f"broyden n=10^6 pattern + colouring: {fmt(once)} "
                    f"({fmt(s['pattern_ns'])} + {fmt(s['colouring_ns'])}; bar 1 s)", once <= 1e9))
    for key in ("steady", "sweeps"):
        if key in interleaved:
            if key == "steady":
                paths = interleaved[key]["paths"]
                label = (f"steady state: 10^4 from its {paths[10**4]}, 10^6 from its "
                         f"{paths[10**6]}")
            else:
                label = "the compressed sweeps at both sizes, Jacobian tape turned off"
            a, b = interleaved[key][10**4], interleaved[key][10**6]
            ratio = max(a, b) / min(a, b)
            out.append((f"broyden time per nonzero, 10^4 and 10^6 timed interleaved ({label}): "
                        f"{a:.3g} ns at 10^4, {b:.3g} ns at 10^6, ratio {ratio:.2f} (bar 2)",
                        ratio <= 2.0))
    hand = next((r for r in rows if r["section"] == "broyden n=1000"
                 and r["peer"] == "numpy-hand-dense" and r.get("status") == "ok"), None)
    if hand:
        for peer, bar, label in (("jacext-dense", 1.0, "dense auto"),
                                 ("jacext-out-dense", 1.0, "dense out=")):
            r = next((r for r in rows if r["section"] == "broyden n=1000" and r["peer"] == peer
                      and r.get("status") == "ok"), None)
            if r:
                ratio = r["median_ns"] / hand["median_ns"]
                out.append((f"broyden n=1000 {label}: {fmt(r['median_ns'])} = {ratio:.2f}x "
                            f"the hand-written {fmt(hand['median_ns'])} (bar 1.0x)", ratio <= bar))
        r = next((r for r in rows if r["section"] == "broyden n=1000"
                  and r["peer"] == "jacext-sparse" and r.get("status") == "ok"), None)
        if r:
            speedup = hand["median_ns"] / r["median_ns"]
            out.append((f"broyden n=1000 sparse: {fmt(r['median_ns'])}, {speedup:.2f}x faster "
                        f"than the hand-written dense (bar 5x)", speedup >= 5.0))
    return out


def markdown(report):
    info, settings = report["machine"], report["settings"]
    fmt = runner.format_ns
    lines = [
        f"Machine: {info['cpu']}, {info['usable_cores']} usable of {info['cores']} cores; "
        f"Python {info['python']}; " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
        "Threads: " + ", ".join(f"{k}={v}" for k, v in info["threads"].items()),
    ]
    if "load_average_1_5_15" in info:
        load = info["load_average_1_5_15"]
        lines.append("Load average (1, 5, 15 min): "
                     + "; ".join(f"{when} " + ", ".join(f"{v:.2f}" for v in load[when])
                                 for when in ("start", "end"))
                     + " (a shared machine: compare within a run)")
    lines += [
        "Steady state: after a warm-up of 2,100 calls (or 10 s) per peer, "
        f"median of {settings['repeats']} interleaved repeats, each >= "
        f"{settings['target_ns'] / 1e6:g} ms; first call = construction + trace/compile "
        "(+ jacext's pattern and colouring) + first evaluation, in this process.",
    ]
    for section in dict.fromkeys(r["section"] for r in report["results"]):
        rows = [r for r in report["results"] if r["section"] == section]
        lines += ["", f"### {section}", "",
                  "| problem | n | nnz | peer | median | per nonzero | first call "
                  "| × jacext-sparse |",
                  "|---|---:|---:|---|---:|---:|---:|---:|"]
        base = {(r["problem"], r["n"]): r["median_ns"] for r in rows
                if r["peer"] == "jacext-sparse" and r.get("status") == "ok"}
        for r in rows:
            if r.get("status") != "ok":
                lines.append(f"| {r['problem']} | {r['n']:,} | {r['nnz']:,} | {r['peer']} | "
                             f"{r.get('status')} | | | |")
                continue
            b = base.get((r["problem"], r["n"]))
            lines.append(f"| {r['problem']} | {r['n']:,} | {r['nnz']:,} | {r['peer']} | "
                         f"{fmt(r['median_ns'])} | {r['per_nnz_ns']:.3g} ns | "
                         f"{fmt(r.get('first_call_ns'))} | "
                         f"{runner.format_ratio(r['median_ns'] / b) if b else '–'} |")
        setups = [r for r in rows if "setup" in r]
        if setups:
            lines += ["", "jacext, once per Function (its first call above is the sum):", "",
                      "| problem | n | instructions | trace + compile | pattern | "
                      "colouring | colours (p, q) | first sparse call |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|"]
            for r in setups:
                s = r["setup"]
                lines.append(f"| {r['problem']} | {r['n']:,} | {s['instructions']:,} | "
                             f"{fmt(s['compile_ns'])} | {fmt(s['pattern_ns'])} | "
                             f"{fmt(s['colouring_ns'])} | {tuple(s['colours'])} | "
                             f"{fmt(s['first_sparse_ns'])} |")
    notes = [
        "casadi-dm: `F(x)` returning CasADi's sparse DM (no SciPy object; CasADi's own "
        "result type). casadi-scipy: the same call + `DM.sparse()` wrapped as a csr_array "
        "(the Function outputs J^T, whose CSC arrays are J's CSR, so no transpose is paid). "
        "casadi-buffer: `Function.buffer()` writing the nonzeros into NumPy memory, wrapped "
        "as a fresh csr_array (its data copied), i.e. exactly what jacext-sparse returns.",
        "numpy-hand-csr: the Broyden values written by hand straight into CSR order.",
        "`-dense` peers are bench/peers.py's adapters (dense results; `casadi-dense` and "
        "`casadi-buffer-dense` densify CasADi's Jacobian). They run for broyden n=1000 "
        "(jacext auto and out=, hand-written NumPy, CasADi, JAX jacfwd, torch jacfwd) and for "
        "bratu k=32 (jacext, JAX and torch, jacfwd and jacrev) only: at k=100 the dense "
        "Jacobian is 10^4 x 10^4 (800 MB) and at k=300 65 GB, beyond what these peers can "
        "fill in useful time or memory.",
    ]
    lines += ["", "Notes:"] + [f"- {n}" for n in notes]
    lines += ["", "Bars (issue: sparse Jacobians), measured in this run:"]
    lines += [f"- {'met' if ok else 'NOT met'}: {text}" for text, ok in report["bars"]]
    errors = [r for r in report["results"] if r.get("status") == "error"]
    lines += [f"- error, {r['problem']} / {r['peer']}: {r['message'].splitlines()[0][:200]}"
              for r in errors]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="bench/sparse.py", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer, shorter repeats; broyden to 10^5, bratu to k=100")
    parser.add_argument("--json", default=os.path.join(OUT_DIR, "sparse.json"))
    parser.add_argument("--markdown", default=os.path.join(OUT_DIR, "sparse.md"))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    settings = {"repeats": 3 if args.quick else 7, "target_ns": 5e6 if args.quick else 20e6,
                "threads": runner.THREADS, "rtol": runner.RTOL, "atol": runner.ATOL}
    frameworks = {}
    for framework in ("jacext", "numpy", "casadi", "jax", "torch"):
        try:
            version = peer_module.load(framework, runner.THREADS)
            frameworks[framework] = {"status": "ok", "version": version, "message": ""}
        except ImportError as e:
            frameworks[framework] = {"status": "missing", "message": str(e)}
    frameworks.setdefault("numpy", {"status": "ok", "version": np.__version__, "message": ""})

    rows = []
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    section = Section(frameworks, settings, rows)
    try:
        interleaved = broyden_scaling(section,
                                      BROYDEN_SIZES[:3] if args.quick else BROYDEN_SIZES,
                                      with_casadi_upto=10**5 if args.quick else 10**6)
        broyden_dense(section)
        bratu(section, BRATU_SIZES[:2] if args.quick else BRATU_SIZES)
    except runner.Disagreement as e:
        print(f"\nBENCHMARK STOPPED: {e}", file=sys.stderr)
        return 2
    report = {"machine": runner.machine_info(frameworks), "settings": settings,
              "results": rows,
              "interleaved_per_nnz_ns": {k: {str(n): v for n, v in d.items()}
                                         for k, d in interleaved.items()}}
    report["bars"] = bars(rows, interleaved)
    if load_before is not None:
        report["machine"]["load_average_1_5_15"] = {"start": load_before,
                                                    "end": os.getloadavg()}
    table = markdown(report)
    print(table)
    for path, text in ((args.markdown, table), (args.json, json.dumps(report, indent=1))):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
    return 1 if any(r.get("status") == "error" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
