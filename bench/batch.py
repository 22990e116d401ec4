"""Batches against compiled C: jacext's batched Jacobians next to CasADi's generated C.

    python bench/batch.py [--quick] [--json PATH]

The compiled-C reference is the fastest anyone gets today: CasADi's
``Function.generate`` writes C for the Jacobian (``densify(jacobian(y, x))``),
gcc compiles it with ``-O3 -march=native``, and a small C driver loops over
the batch and times the loop in C (no Python in the timed region).  The C is
generated at run time into a temporary folder; none of it is kept.

Problems: ``arm_batch`` (BENCH.md), ``arm_cs_batch`` (the same arm written as
cos(q) * C + sin(q) * S + K, bench/problems.py) and ``ba_batch``, ADBench's bundle
adjustment residual (camera 11 + point 3 + weight 1 -> 2 residuals, each
observation with its own measured feature), N = 10^4 each.  Peers: jacext with
1 and 2 threads, compiled C (1 thread), ``jax.jit(jax.vmap(jax.jacrev))``.
Every peer's Jacobians are checked against jacext's before timing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.problems import _arm_casadi, _arm_cs_casadi, _arm_cs_jax, _arm_jax, arm, arm_cs  # noqa: E402,E501


# ---------------------------------------------------------------------- the BA problem
def ba(v, feat):
    """ADBench's BA residual: v = camera (11) + point (3) + weight (1); feat (2) measured."""
    rot, centre, focal, x0, k = v[:3], v[3:6], v[6], v[7:9], v[9:11]
    point, weight = v[11:14], v[14]
    xc = point - centre
    theta = np.sqrt(np.sum(rot * rot))
    axis = rot / theta
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    # Rodrigues' rotation of xc about axis by theta
    xcam = xc * cos_t + np.cross(axis, xc) * sin_t + axis * (np.dot(axis, xc) * (1.0 - cos_t))
    p = -xcam[:2] / xcam[2]
    rsq = np.sum(p * p)
    distortion = 1.0 + k[0] * rsq + k[1] * rsq * rsq
    return weight * (p * distortion * focal + x0 - feat)


def _ba_casadi():
    import casadi as ca

    def f(v, feat):
        rot, centre, focal, x0, k = v[0:3], v[3:6], v[6], v[7:9], v[9:11]
        point, weight = v[11:14], v[14]
        xc = point - centre
        theta = ca.sqrt(ca.sumsqr(rot))
        axis = rot / theta
        cos_t, sin_t = ca.cos(theta), ca.sin(theta)
        xcam = xc * cos_t + ca.cross(axis, xc) * sin_t + axis * (ca.dot(axis, xc) * (1 - cos_t))
        p = -xcam[0:2] / xcam[2]
        rsq = ca.sumsqr(p)
        distortion = 1 + k[0] * rsq + k[1] * rsq * rsq
        return weight * (p * distortion * focal + x0 - feat)
    return f


def _ba_jax():
    import jax.numpy as jnp

    def f(v, feat):
        rot, centre, focal, x0, k = v[:3], v[3:6], v[6], v[7:9], v[9:11]
        point, weight = v[11:14], v[14]
        xc = point - centre
        theta = jnp.sqrt(jnp.sum(rot * rot))
        axis = rot / theta
        cos_t, sin_t = jnp.cos(theta), jnp.sin(theta)
        xcam = (xc * cos_t + jnp.cross(axis, xc) * sin_t
                + axis * (jnp.dot(axis, xc) * (1.0 - cos_t)))
        p = -xcam[:2] / xcam[2]
        rsq = jnp.sum(p * p)
        distortion = 1.0 + k[0] * rsq + k[1] * rsq * rsq
        return weight * (p * distortion * focal + x0 - feat)
    return f


def ba_data(n_points, seed=0):
    rng = np.random.default_rng(seed)
    V = np.empty((n_points, 15))
    V[:, 0:3] = rng.uniform(-0.3, 0.3, (n_points, 3))          # rotation (Rodrigues)
    V[:, 3:6] = rng.uniform(-1.0, 1.0, (n_points, 3))          # camera centre
    V[:, 6] = rng.uniform(400.0, 900.0, n_points)              # focal length
    V[:, 7:9] = rng.uniform(-5.0, 5.0, (n_points, 2))          # principal point
    V[:, 9:11] = rng.uniform(-1e-3, 1e-3, (n_points, 2))       # radial distortion
    V[:, 11:14] = V[:, 3:6] + np.c_[rng.uniform(-1, 1, (n_points, 2)),
                                    rng.uniform(4.0, 8.0, n_points)]  # a point ahead
    V[:, 14] = rng.uniform(0.5, 1.5, n_points)                  # weight
    feat = rng.uniform(-300.0, 300.0, (n_points, 2))
    return V, feat


def arm_data(n_points, seed=0):
    return np.random.default_rng(seed).uniform(-np.pi, np.pi, (n_points, 7))


# ------------------------------------------------------------------- compiled C (CasADi)
DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "jacobian_c.h"

static double now(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}
static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y);
}
int main(int argc, char **argv) {
    /* in_file n_points n_x n_data n_jac out_file repeats */
    long n = atol(argv[2]), nx = atol(argv[3]), nd = atol(argv[4]), nj = atol(argv[5]);
    int repeats = atoi(argv[7]), r;
    long p;
    double *in = malloc(sizeof(double) * n * (nx + nd)), *out = malloc(sizeof(double) * n * nj);
    double *times = malloc(sizeof(double) * repeats);
    FILE *f = fopen(argv[1], "rb");
    casadi_int sz_arg, sz_res, sz_iw, sz_w;
    const casadi_real **arg; casadi_real **res; casadi_int *iw; casadi_real *w;
    if (!f || fread(in, sizeof(double), n * (nx + nd), f) != (size_t)(n * (nx + nd))) return 1;
    fclose(f);
    jacobian_c_work(&sz_arg, &sz_res, &sz_iw, &sz_w);
    arg = malloc(sizeof(*arg) * (sz_arg + 1)); res = malloc(sizeof(*res) * (sz_res + 1));
    iw = malloc(sizeof(*iw) * (sz_iw + 1)); w = malloc(sizeof(*w) * (sz_w + 1));
    for (r = 0; r < repeats; r++) {
        double t0 = now();
        for (p = 0; p < n; p++) {
            arg[0] = in + p * (nx + nd);
            if (nd) arg[1] = in + p * (nx + nd) + nx;
            res[0] = out + p * nj;
            jacobian_c(arg, res, iw, w, 0);
        }
        times[r] = now() - t0;
    }
    qsort(times, repeats, sizeof(double), cmp);
    printf("%.9f\n", times[repeats / 2]);
    f = fopen(argv[6], "wb");
    fwrite(out, sizeof(double), n * nj, f);
    fclose(f);
    return 0;
}
"""


def compiled_c(builder, n_x, n_data, out_size, X, data, repeats, prefix=(),
               march="-march=native"):
    """(median seconds per batch, Jacobians (N, m, n)) of CasADi's generated C; ``prefix``
    runs the driver under a tool, ``march`` for the machine the driver runs on
    (bench/batch_callgrind.py: valgrind, which runs no AVX-512)."""
    import casadi as ca

    if shutil.which("gcc") is None:
        return None, "gcc is not installed"
    with tempfile.TemporaryDirectory() as tmp:
        x = ca.SX.sym("x", n_x)
        args = [x] + ([ca.SX.sym("d", n_data)] if n_data else [])
        y = builder()(*args)
        F = ca.Function("jacobian_c", args, [ca.densify(ca.jacobian(y, x))])
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            F.generate("jacobian_c.c", {"with_header": True})
        finally:
            os.chdir(cwd)
        with open(os.path.join(tmp, "driver.c"), "w") as fh:
            fh.write(DRIVER)
        exe = os.path.join(tmp, "driver")
        subprocess.run(["gcc", "-O3", march, "-o", exe, os.path.join(tmp, "jacobian_c.c"),
                        os.path.join(tmp, "driver.c"), "-lm"], check=True, capture_output=True)
        n = X.shape[0]
        rows = np.hstack([X, data]) if n_data else X
        rows.astype(np.float64).tofile(os.path.join(tmp, "in.bin"))
        out = os.path.join(tmp, "out.bin")
        cmd = [exe, os.path.join(tmp, "in.bin"), str(n), str(n_x), str(n_data),
               str(out_size * n_x), out, str(repeats)]
        res = subprocess.run(list(prefix) + cmd, check=True, capture_output=True, text=True)
        # CasADi writes each (m, n) Jacobian column-major: C-order (n, m)
        J = np.fromfile(out).reshape(n, n_x, out_size).transpose(0, 2, 1)
        return float(res.stdout.strip()), J


# ------------------------------------------------------------------------------- timing
def median_time(fn, repeats, min_seconds=0.02):
    fn()
    number = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        if time.perf_counter() - t0 >= min_seconds or number >= 1 << 20:
            break
        number *= 2
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return float(np.median(times))


def check(name, got, ref):
    if not np.allclose(got, ref, rtol=1e-9, atol=1e-12 * max(1.0, np.abs(ref).max())):
        i = np.unravel_index(np.argmax(np.abs(got - ref)), ref.shape)
        raise SystemExit(f"DISAGREEMENT: {name} differs from jacext at {i}: {got[i]} vs {ref[i]}")


def _cases(n):
    return {
        "arm_batch": (arm, _arm_casadi, _arm_jax, arm_data(n), None, 7, 0, 12),
        "arm_cs_batch": (arm_cs, _arm_cs_casadi, _arm_cs_jax, arm_data(n), None, 7, 0, 12),
        "ba_batch": (ba, _ba_casadi, _ba_jax, *ba_data(n), 15, 2, 2),
    }


def _jax_time(name, n, repeats):
    """Median seconds of jax.jit(jax.vmap(jax.jacrev)) on one case (in this process)."""
    import jax
    jax.config.update("jax_enable_x64", True)
    _, _, jaxf, X, data, _, _, _ = _cases(n)[name]
    g = jax.jit(jax.vmap(jax.jacrev(jaxf())))
    jax_args = tuple(jax.numpy.asarray(a) for a in ((X,) if data is None else (X, data)))
    return median_time(lambda: g(*jax_args).block_until_ready(), repeats), g, jax_args


def jax_one_core(name, n, repeats):
    """JAX's median seconds with its process pinned to one core (XLA sizes its thread pool
    by the cores it may run on), to set beside jacext's one thread; None where the OS
    cannot pin a process."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    core = min(os.sched_getaffinity(0))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # the child pins itself before JAX starts (no preexec_fn: this process has JAX's threads)
    code = (f"import os, sys; os.sched_setaffinity(0, {{{core}}}); sys.path.insert(0, {root!r}); "
            f"from bench.batch import _jax_time; print(_jax_time({name!r}, {n}, {repeats})[0])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=900)
    if res.returncode != 0:
        raise RuntimeError(res.stderr.strip().splitlines()[-1] if res.stderr else "failed")
    return float(res.stdout.strip().splitlines()[-1])


def run(quick=False):
    import jacext as jx

    repeats = 3 if quick else 9
    n = 2_000 if quick else 10_000
    rows = []
    for name, (f, cas, _jaxf, X, data, n_x, n_data, m) in _cases(n).items():
        args = (X,) if data is None else (X, data)
        t0 = time.perf_counter()
        F = jx.compile(f, *(a[0] for a in args))
        J = F.jacobian(*args, threads=1)
        first = time.perf_counter() - t0
        row = {"problem": name, "N": n, "jacext_first_call_s": first,
               "instructions": F.n_instructions}
        for threads in (1, 2):
            check(f"jacext threads={threads}", F.jacobian(*args, threads=threads), J)
            row[f"jacext_{threads}t_s"] = median_time(
                lambda t=threads, F=F, args=args: F.jacobian(*args, threads=t), repeats)
        # into the caller's array, as the C driver writes into its own buffer
        out = np.empty_like(J)
        row["jacext_1t_out_s"] = median_time(
            lambda F=F, args=args, out=out: F.jacobian(*args, threads=1, out=out), repeats)
        try:
            t_c, Jc = compiled_c(cas, n_x, n_data, m, X, data, repeats)
            check("compiled C", Jc, J)
            row["compiled_c_s"] = t_c
        except Exception as exc:  # report, never fake
            row["compiled_c_s"] = None
            row["compiled_c_note"] = f"{type(exc).__name__}: {exc}"
        try:
            row["jax_vmap_jacrev_s"], g, jax_args = _jax_time(name, n, repeats)
            check("jax", np.asarray(g(*jax_args)), J)
            row["jax_one_core_s"] = jax_one_core(name, n, repeats)
        except ImportError:
            row["jax_vmap_jacrev_s"] = row["jax_one_core_s"] = None
            row["jax_note"] = "missing"
        rows.append(row)
    return rows


MILLION = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np, jacext as jx
from bench.batch import arm, arm_data
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
F = jx.compile(arm, np.zeros(7))
F.jacobian(arm_data(4096))        # the Jacobian tape is built here, not in the timed call
X = arm_data(10**6)
before = peak()
t0 = time.perf_counter()
J = F.jacobian(X)
elapsed = time.perf_counter() - t0
print(elapsed, before, peak(), J.nbytes)
"""


def scaling(quick=False):
    """Two threads against one on arm_batch at N = 10^5, and 10^6 arm Jacobians in a fresh
    process: time and how much the peak resident memory grew during the call (VmHWM)."""
    import jacext as jx

    n = 10**4 if quick else 10**5
    F = jx.compile(arm, np.zeros(7))
    X = arm_data(n)
    F.jacobian(X)
    # repeats alternate between the thread counts, so a noisy stretch hits both alike
    times = {1: [], 2: []}
    for _ in range(3 if quick else 9):
        for threads in (1, 2):
            times[threads].append(median_time(lambda t=threads: F.jacobian(X, threads=t), 1))
    one, two = float(np.median(times[1])), float(np.median(times[2]))
    out = {"threads_N": n, "one_thread_s": one, "two_threads_s": two}
    if not quick and os.path.exists("/proc/self/status"):
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        res = subprocess.run([sys.executable, "-c", MILLION, root], capture_output=True,
                             text=True, check=True)
        elapsed, before, after, nbytes = (float(v) for v in res.stdout.split())
        out.update(million_s=elapsed, million_peak_grew=after - before, million_out=nbytes)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    rows = run(args.quick)
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if "model name" in line)
    except (OSError, StopIteration):
        pass
    print(f"machine: {cpu}, {os.cpu_count()} cores; medians of repeats; per batch of N points")
    print("jax: jax.jit(jax.vmap(jax.jacrev)) with its default threads (XLA uses every core); "
          "jax 1 core: its process pinned to one core. jacext 2 threads is its default here "
          "(threads=None: all cores).")
    print("| problem | N | jacext 1 thread | jacext 1t, out= | jacext 2 threads | "
          "compiled C (gcc -O3, 1 thread) | jax | jax 1 core | jacext 1t / C | jacext 2t / C | "
          "jax 1 core / jacext 1t | jax / jacext 2t |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        c, j, j1 = r.get("compiled_c_s"), r.get("jax_vmap_jacrev_s"), r.get("jax_one_core_s")
        one, two, one_out = r["jacext_1t_s"], r["jacext_2t_s"], r["jacext_1t_out_s"]

        def ms(v):
            return f"{v * 1e3:.2f} ms" if v else "missing"

        def ratio(a, b):
            return f"{a / b:.2f}x" if a and b else "n/a"
        print(f"| {r['problem']} | {r['N']} | {ms(one)} | {ms(one_out)} | {ms(two)} | {ms(c)} | "
              f"{ms(j)} | {ms(j1)} | {ratio(one, c)} | {ratio(two, c)} | {ratio(j1, one)} | "
              f"{ratio(j, two)} |")
        for note in ("compiled_c_note", "jax_note"):
            if note in r:
                print(f"  {r['problem']}: {note}: {r[note]}")
    sc = scaling(args.quick)
    print(f"arm_batch N = {sc['threads_N']}: 1 thread {sc['one_thread_s'] * 1e3:.1f} ms, "
          f"2 threads {sc['two_threads_s'] * 1e3:.1f} ms: "
          f"{sc['one_thread_s'] / sc['two_threads_s']:.2f}x (bar 1.8x)")
    if "million_s" in sc:
        mib = 2**20
        print(f"arm, 10^6 Jacobians in one call (fresh process, all cores): "
              f"{sc['million_s']:.2f} s; peak memory grew {sc['million_peak_grew'] / mib:.0f} MiB "
              f"for a {sc['million_out'] / mib:.0f} MiB output (bar 1.2x + 50 MiB = "
              f"{(1.2 * sc['million_out'] + 50 * mib) / mib:.0f} MiB)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"batches": rows, "scaling": sc}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
