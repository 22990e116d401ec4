"""Benchmark runner: jacext against its peers on the problems of BENCH.md.

    python bench/run.py [--quick] [--problems seed,arm] [--peers jacext,torch]
                        [--json out.json] [--markdown out.md]

Every peer's Jacobian is checked against a reference before anything is timed; a
disagreement stops the run with exit status 2. Steady state is the median over repeats of a
perf_counter_ns loop; first call (construction + trace/compile + first evaluation) is
measured apart, by default in a fresh subprocess per (problem, peer).
"""

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import traceback

# One thread count for every peer, set before NumPy (and so its BLAS) is imported: all
# usable cores unless OMP_NUM_THREADS says otherwise. Children (first-call and big_trace
# subprocesses) inherit it. torch is set explicitly in peers.load(); CasADi's map and
# jacext's batches are passed it. OPENBLAS_CORETYPE is deliberately left untouched.


def usable_cores():
    """Cores this process may run on (its affinity mask, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


THREADS = int(os.environ.get("OMP_NUM_THREADS") or usable_cores())
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
for _var in THREAD_VARS:
    os.environ[_var] = str(THREADS)
if THREADS == 1:  # XLA's CPU backend ignores OMP_NUM_THREADS; this makes it single-threaded
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_multi_thread_eigen=false"
                               " intra_op_parallelism_threads=1").strip()

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402  (after the thread variables, on purpose)

from bench import peers as peer_module  # noqa: E402
from bench import problems as problem_module  # noqa: E402

RTOL, ATOL = 1e-9, 1e-12
BIG_TRACE_SIZE = 10**6
RUN_PY = os.path.abspath(__file__)


class Disagreement(Exception):
    pass


# ------------------------------------------------------------------------------ checking
def independent_reference(problem, x):
    """The hand-written Jacobian, else the complex step (both exact to rounding)."""
    if problem.jacobian is not None and problem.batch is None:
        return problem.jacobian(x), "hand-written"
    return problem_module.complex_step_jacobian(problem.numpy, x), "complex-step"


def check(peer_name, problem_name, got, want, want_name):
    got = np.asarray(got)
    if got.shape != want.shape:
        raise Disagreement(f"{peer_name} on {problem_name}: Jacobian shape {got.shape}, "
                           f"{want_name} reference has {want.shape}")
    if not np.allclose(got, want, rtol=RTOL, atol=ATOL):
        err = np.abs(got - want)
        where = np.unravel_index(np.nanargmax(np.where(np.isnan(err), np.inf, err)), err.shape)
        raise Disagreement(
            f"{peer_name} on {problem_name} disagrees with the {want_name} reference "
            f"(rtol {RTOL}, atol {ATOL}): at index {tuple(int(i) for i in where)} "
            f"got {got[where]:.17g}, want {want[where]:.17g}")


# -------------------------------------------------------------------------------- timing
def run_loop(jac, x, number):
    start = time.perf_counter_ns()
    for _ in range(number):
        jac(x)
    return time.perf_counter_ns() - start


def autorange(jac, x, target_ns):
    """Smallest inner loop count in 1, 2, 5, 10, 20, ... whose loop lasts >= target_ns."""
    number = 1
    while True:
        for step in (1, 2, 5):
            if run_loop(jac, x, number * step) >= target_ns:
                return number * step
        number *= 10


def time_peers(timed, x, target_ns, repeats):
    """Median ns per call for each (name, jac); repeats are interleaved across peers so a
    noisy stretch of the shared machine hits them all alike, not one peer's whole run."""
    numbers = {name: autorange(jac, x, target_ns) for name, jac in timed}
    samples = {name: [] for name, _ in timed}
    gc_was_enabled = gc.isenabled()
    gc.disable()  # as timeit does: a collection mid-loop is noise, not the peer's cost
    try:
        for _ in range(repeats):
            for name, jac in timed:
                samples[name].append(run_loop(jac, x, numbers[name]) / numbers[name])
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: (statistics.median(samples[name]), numbers[name], samples[name])
            for name, _ in timed}


# ----------------------------------------------------------------------------- first call
def first_call_child(problem_name, peer_name):
    """In a fresh process: import the framework (not timed), then time build + first call."""
    peer = next(p for p in peer_module.PEERS if p.name == peer_name)
    problem = problem_module.all_problems()[problem_name]
    try:
        peer_module.load(peer.framework, THREADS)
    except ImportError as e:
        print(json.dumps({"status": "missing", "message": str(e)}))
        return 0
    start = time.perf_counter_ns()
    jac = peer.build(problem, THREADS)
    jac(problem.input)
    elapsed = time.perf_counter_ns() - start
    print(json.dumps({"status": "ok", "first_call_ns": elapsed}))
    return 0


def first_call_subprocess(problem_name, peer_name):
    """First-call ns from a fresh process, or None (with a warning) if the child failed."""
    try:
        proc = subprocess.run([sys.executable, RUN_PY, "--child-first-call", problem_name,
                               peer_name], check=True, capture_output=True, text=True,
                              timeout=600)
        return json.loads(proc.stdout.strip().splitlines()[-1]).get("first_call_ns")
    except (subprocess.SubprocessError, ValueError, IndexError) as e:
        stderr = getattr(e, "stderr", None) or ""
        print(f"warning: first-call subprocess for {peer_name} on {problem_name} failed: "
              f"{e}\n{stderr[-2000:]}", file=sys.stderr)
        return None


# ------------------------------------------------------------------------------ big_trace
def big_trace_function(x):
    return np.sin(x) * np.cos(x[::-1]) + x.sum()


def peak_rss_mib():
    """Peak resident memory of this process so far, in MiB.

    Linux's VmHWM belongs to the current address space, so it starts afresh at exec. Not so
    ru_maxrss: exec keeps the maximum of the image it replaced, which for a child spawned by
    this runner (vfork) is the parent's, torch and JAX included. Hence VmHWM first.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)  # bytes / KiB


def big_trace_child():
    """jacext only: trace + compile a 10^6-element function, evaluate it; wall time, memory."""
    try:
        import jacext as jx
    except ImportError as e:
        print(json.dumps({"status": "missing", "message": str(e)}))
        return 0
    x = np.random.default_rng(0).standard_normal(BIG_TRACE_SIZE)
    rss_before = peak_rss_mib()
    start = time.perf_counter_ns()
    F = jx.compile(big_trace_function, x)
    compiled = time.perf_counter_ns()
    y = F(x)
    done = time.perf_counter_ns()
    rss_peak = peak_rss_mib()
    want = big_trace_function(x)
    correct = bool(np.allclose(y, want, rtol=RTOL, atol=RTOL * abs(x.sum())))
    print(json.dumps({"status": "ok" if correct else "wrong value",
                      "compile_ns": compiled - start, "evaluate_ns": done - compiled,
                      "rss_before_mib": rss_before, "rss_peak_mib": rss_peak}))
    return 0


def big_trace():
    proc = subprocess.run([sys.executable, RUN_PY, "--child-big-trace"], check=False,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        return {"status": "error", "message": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -------------------------------------------------------------------------------- running
def run_problem(problem, selected, frameworks, settings):
    """Build and check every selected peer on one problem, then time those that work."""
    alt = problem.input + 0.01 * np.random.default_rng(1).standard_normal(problem.input.shape)
    points = [problem.input, alt]
    references, names = zip(*(independent_reference(problem, p) for p in points), strict=True)
    reference_name = names[0]
    rows, built = [], []
    # jacext first: once it agrees with the independent reference it becomes the reference.
    for peer in sorted(selected, key=lambda p: p.framework != "jacext"):
        row = {"problem": problem.name, "peer": peer.name}
        rows.append(row)
        state = frameworks[peer.framework]
        if state["status"] != "ok":
            row.update(status=state["status"], message=state["message"])
            continue
        try:
            start = time.perf_counter_ns()
            jac = peer.build(problem, THREADS)
            if jac is None:
                row["status"] = "n/a"
                continue
            jac(problem.input)
            row["first_call_inprocess_ns"] = time.perf_counter_ns() - start
            results = [np.array(jac(p)) for p in points]  # copy: -out variants reuse memory
        except Exception as e:  # any failure of a peer is reported, not fatal
            traceback.print_exc()
            row.update(status="error", message=f"{type(e).__name__}: {e}")
            continue
        for got, want in zip(results, references, strict=True):
            check(peer.name, problem.name, got, want, reference_name)
        if peer.name == "jacext":
            references, reference_name = results, "jacext"
        row.update(status="ok", checked_against=reference_name)
        built.append((peer.name, jac))
    print(f"  {problem.name}: {len(built)} peers agree; timing", file=sys.stderr)

    timings = time_peers(built, problem.input, settings["target_ns"], settings["repeats"])
    for row in rows:
        if row["peer"] in timings:
            row["median_ns"], row["number"], row["samples_ns"] = timings[row["peer"]]
            if settings["first_call"] == "subprocess":
                row["first_call_ns"] = first_call_subprocess(problem.name, row["peer"])
            else:
                row["first_call_ns"] = row["first_call_inprocess_ns"]
    return rows


def machine_info(frameworks):
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable_cores(),
        "python": platform.python_version(), "platform": platform.platform(),
        "versions": {"numpy": np.__version__} | {
            fw: s["version"] for fw, s in frameworks.items() if s["status"] == "ok"},
        "threads": {var: os.environ[var] for var in THREAD_VARS},
    }
    info["threads"]["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "")
    if frameworks.get("torch", {}).get("status") == "ok":
        import torch

        info["threads"]["torch.get_num_threads()"] = torch.get_num_threads()
    info["threads"]["casadi map / jacext batch threads"] = THREADS
    return info


def format_ns(ns):
    if ns is None:
        return "–"
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def format_ratio(ratio):
    return f"{ratio:,.0f}" if ratio >= 100 else f"{ratio:.3g}"


def markdown(report):
    info, settings = report["machine"], report["settings"]
    lines = [
        f"Machine: {info['cpu']}, {info['usable_cores']} usable of {info['cores']} cores; "
        f"Python {info['python']}; " +
        ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
        "Threads: " + ", ".join(f"{k}={v}" for k, v in info["threads"].items()),
        f"Steady state: median of {settings['repeats']} repeats, each >= "
        f"{settings['target_ns'] / 1e6:g} ms; time per Jacobian (per batch for arm_batch). "
        f"First call: construction + trace/compile + first evaluation, "
        + ("in a fresh subprocess per (problem, peer), framework import excluded "
           "(JAX's includes its backend start-up)."
           if settings["first_call"] == "subprocess" else
           "measured in this process (not fresh: a framework's one-time start-up cost "
           "lands on its first problem)."),
    ]
    if report["results"]:
        lines += ["", "| problem | peer | median | first call | × jacext |",
                  "|---|---|---:|---:|---:|"]
    baseline = {r["problem"]: r["median_ns"] for r in report["results"]
                if r["peer"] == "jacext" and r["status"] == "ok"}
    for r in report["results"]:
        if r["status"] != "ok":
            lines.append(f"| {r['problem']} | {r['peer']} | {r['status']} | | |")
            continue
        base = baseline.get(r["problem"])
        ratio = "–" if not base else format_ratio(r["median_ns"] / base)
        lines.append(f"| {r['problem']} | {r['peer']} | {format_ns(r['median_ns'])} | "
                     f"{format_ns(r.get('first_call_ns'))} | {ratio} |")
    errors = [r for r in report["results"] if r["status"] == "error"]
    if errors:
        lines += [""] + [f"- error, {r['problem']} / {r['peer']}: "
                         f"{r['message'].splitlines()[0][:200]}" for r in errors]
    big = report.get("big_trace")
    if big is not None:
        lines += ["", (f"big_trace (jacext, {BIG_TRACE_SIZE:,} elements, "
                       "`np.sin(x) * np.cos(x[::-1]) + x.sum()`, own subprocess): ")]
        if big["status"] in ("ok", "wrong value"):
            lines[-1] += (f"trace+compile {format_ns(big['compile_ns'])}, evaluate "
                          f"{format_ns(big['evaluate_ns'])}, peak RSS "
                          f"{big['rss_peak_mib']:.0f} MiB ({big['rss_before_mib']:.0f} MiB "
                          f"before tracing); value {big['status']}")
        else:
            lines[-1] += f"{big['status']} ({big.get('message', '').strip()})"
    return "\n".join(lines) + "\n"


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer, shorter repeats; first call in-process; no big_trace")
    parser.add_argument("--problems", help="comma-separated problem names (default: all)")
    parser.add_argument("--peers", help="comma-separated peer names or frameworks "
                        "(jacext, torch, jax, casadi, numpy); default: all")
    parser.add_argument("--json", metavar="PATH", help="write the full results as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="write the table as Markdown")
    parser.add_argument("--first-call", choices=("subprocess", "inprocess"),
                        help="where first calls are measured (default: subprocess; "
                        "--quick: inprocess)")
    parser.add_argument("--child-first-call", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--child-big-trace", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.child_first_call:
        return first_call_child(*args.child_first_call)
    if args.child_big_trace:
        return big_trace_child()

    catalog = problem_module.all_problems()
    known = list(catalog) + ["big_trace"]
    wanted = args.problems.split(",") if args.problems else known
    unknown = [name for name in wanted if name not in known]
    if unknown:
        print(f"unknown problem(s) {unknown}; choose from {known}", file=sys.stderr)
        return 2
    selected = peer_module.PEERS
    if args.peers:
        tokens = args.peers.split(",")
        selected = [p for p in selected if p.name in tokens or p.framework in tokens]
        if not selected:
            print(f"no peer matches {tokens}; peers: "
                  f"{[p.name for p in peer_module.PEERS]}", file=sys.stderr)
            return 2
    settings = {"repeats": 3 if args.quick else 7,
                "target_ns": 5e6 if args.quick else 20e6,
                "first_call": args.first_call or ("inprocess" if args.quick else "subprocess"),
                "threads": THREADS, "rtol": RTOL, "atol": ATOL}

    frameworks = {}
    for framework in dict.fromkeys(p.framework for p in selected):
        try:
            version = peer_module.load(framework, THREADS)
            frameworks[framework] = {"status": "ok", "version": version, "message": ""}
        except ImportError as e:
            frameworks[framework] = {"status": "missing", "message": str(e)}
        except Exception as e:  # e.g. a half-built jacext in the tree
            traceback.print_exc()
            frameworks[framework] = {"status": "error", "message": f"{type(e).__name__}: {e}"}
        if frameworks[framework]["status"] != "ok":
            print(f"{framework}: {frameworks[framework]['status']} "
                  f"({frameworks[framework]['message']})", file=sys.stderr)

    report = {"machine": machine_info(frameworks), "settings": settings, "results": []}
    try:
        for name in wanted:
            if name != "big_trace":
                report["results"] += run_problem(catalog[name], selected, frameworks, settings)
    except Disagreement as e:
        print(f"\nBENCHMARK STOPPED: {e}", file=sys.stderr)
        return 2
    if "big_trace" in wanted and not args.quick and any(p.name == "jacext" for p in selected):
        print("  big_trace: running in a subprocess", file=sys.stderr)
        report["big_trace"] = big_trace()

    table = markdown(report)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    failed = [r for r in report["results"] if r["status"] == "error"]
    if report.get("big_trace", {}).get("status") not in (None, "ok", "missing"):
        failed.append(report["big_trace"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
