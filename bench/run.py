"""Benchmark runner: jacext against its peers on the problems of BENCH.md.

    python bench/run.py [--quick] [--problems seed,arm,broyden_scaling]
                        [--peers jacext,torch] [--cell-limit S] [--out DIR]
    python -m jacext bench [the same options]

Sections: the table (every problem of BENCH.md x every peer), broyden_scaling (n = 10 ..
10^5, dense and sparse Jacobians), arm_scaling (a batch of arms, N = 1 .. 10^6) and big_trace.
Each framework runs in its own worker process (bench/worker.py) with a time limit per cell;
a cell that overruns is recorded as a timeout. Every peer's Jacobian is checked against a
reference before anything is timed; a disagreement stops the run with exit status 2.
Steady state is the median over interleaved repeats of a perf_counter_ns loop, after a
warm-up of 2,100 calls (or 10 s) per peer (bench/worker.py: warm_up); first call
(construction + trace/compile + first evaluation) is measured apart. Writes DIR/results.json,
DIR/results.md and the plots DIR/*.png (matplotlib), and prints the tables.
"""

import argparse
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
import traceback

# One thread count for every peer, set before NumPy (and so its BLAS) is imported: all
# usable cores unless OMP_NUM_THREADS says otherwise. The worker processes and the
# first-call subprocesses inherit these variables and start afresh, so every framework's
# BLAS and OpenMP pools see them from the start; torch is also set explicitly in
# peers.load(), CasADi's map and jacext's batches are passed the count.
# OPENBLAS_CORETYPE is deliberately left untouched (printed as it is).


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
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # no probing for accelerators
# OpenBLAS's idle threads spin for about 2**28 cycles (~0.1 s) after every BLAS call before
# they sleep: a matrix product in one peer's set-up or agreement check then burns the second
# core through the next peer's timing, and any two-thread timing in the window runs at one
# thread's speed (measured: jacext's arm batch on 2 threads 4.1 ms alone, 7.8 ms right after
# a 300x300 product). 2**4 cycles makes them sleep at once; BLAS keeps its threads.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
CPU_VARS = THREAD_VARS + ("OPENBLAS_THREAD_TIMEOUT", "XLA_FLAGS", "JAX_PLATFORMS",
                          "OPENBLAS_CORETYPE")

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402  (after the thread variables, on purpose)

from bench import peers as peer_module  # noqa: E402
from bench import problems as problem_module  # noqa: E402
from bench import reference  # noqa: E402
from bench import worker as worker_module  # noqa: E402

RTOL, ATOL = reference.RTOL, reference.ATOL
Disagreement = reference.Disagreement
run_loop = worker_module.run_loop
BIG_TRACE_SIZE = 10**6
RUN_PY = os.path.abspath(__file__)
BENCH_DIR = os.path.dirname(RUN_PY)
TABLE_PROBLEMS = list(problem_module.PROBLEM_FACTORIES)  # BENCH.md's order
SCALING = {  # section -> (problem, full sizes, --quick sizes, what the size is)
    "broyden_scaling": ("broyden", (10, 100, 1000, 10**4, 10**5), (10, 100), "n"),
    # not in --quick: each size is a new function for JAX to compile and torch.func to set up
    # in both modes (most of a quick run's time); the table's arm_batch is a batch already
    "arm_scaling": ("arm_batch", tuple(10**k for k in range(7)), (), "N"),
}
# --quick: the table's sized problems smaller (broyden n = 100, not 1,000; mlp width 16, not
# 64; arm_batch N = 10, not 10^4), where the slowest peers' dense Jacobians and CasADi's
# expression graphs took most of a quick run's time
QUICK_TABLE_SIZES = {"broyden": 100, "mlp": 16, "arm_batch": 10}
REFERENCE_PEERS = ("jacext", "jacext-sparse")  # whose result becomes the reference
NOT_APPLICABLE = {  # why a peer's build returns None
    "torch-autograd": "torch.autograd.functional.jacobian of a batch is the (N, 12, N, 7) "
                      "cross-Jacobian, not N Jacobians: not comparable (torch.func.vmap is)",
    "numpy-hand": "no short hand-written Jacobian for this problem",
    "numpy-hand-csr": "no hand-written sparse Jacobian for this problem",
}
NOT_APPLICABLE["torch-autograd-vec"] = NOT_APPLICABLE["torch-autograd"]


# ----------------------------------------------------------- timing (also for sparse.py)
def autorange(jac, x, target_ns):
    """Smallest inner loop count in 1, 2, 5, 10, 20, ... whose loop lasts >= target_ns."""
    return worker_module.autorange(jac, x, target_ns)[0]


def time_peers(timed, x, target_ns, repeats):
    """Median ns per call for each (name, jac) in this process; repeats are interleaved
    across peers so a noisy stretch of the machine hits them all alike (bench/sparse.py)."""
    import gc

    for _, jac in timed:
        worker_module.warm_up(jac, x)
    numbers = {name: autorange(jac, x, target_ns) for name, jac in timed}
    samples = {name: [] for name, _ in timed}
    gc_was_enabled = gc.isenabled()
    gc.disable()
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
    """In a fresh process: import the framework and start its backend (not timed), then
    time construction + trace/compile + first evaluation."""
    peer = peer_module.find(peer_name)
    problem = problem_module.make_problem(problem_name)
    try:
        peer_module.load(peer.framework, THREADS)
        if peer.framework in worker_module.WARMUP:
            exec(worker_module.WARMUP[peer.framework], {})
    except ImportError as e:
        print(json.dumps({"status": "missing", "message": str(e)}))
        return 0
    start = time.perf_counter_ns()
    jac = peer.build(problem, THREADS)
    jac(problem.input)
    elapsed = time.perf_counter_ns() - start
    print(json.dumps({"status": "ok", "first_call_ns": elapsed}))
    return 0


def first_call_subprocess(problem_name, peer_name, timeout):
    """{"status": "ok", "first_call_ns": ...} from a fresh process, or a failure status."""
    try:
        proc = subprocess.run([sys.executable, RUN_PY, "--child-first-call", problem_name,
                               peer_name], check=True, capture_output=True, text=True,
                              timeout=timeout)
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "message": f"fresh-process first call over {timeout:g} s"}
    except (subprocess.SubprocessError, ValueError, IndexError) as e:
        stderr = getattr(e, "stderr", None) or ""
        return {"status": "error", "message": f"{e}: {stderr[-500:]}"}


# ------------------------------------------------------------------------------ big_trace
def big_trace_function(x):
    return np.sin(x) * np.cos(x[::-1]) + x.sum()


def peak_rss_mib():
    """Peak resident memory of this process so far, in MiB.

    Linux's VmHWM belongs to the current address space, so it starts afresh at exec. Not so
    ru_maxrss: exec keeps the maximum of the image it replaced, which for a child spawned by
    this runner (vfork) is the parent's. Hence VmHWM first.
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


def big_trace(timeout):
    try:
        proc = subprocess.run([sys.executable, RUN_PY, "--child-big-trace"], check=False,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "message": f"over {timeout:g} s"}
    if proc.returncode != 0:
        return {"status": "error", "message": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- progress
class _NoBar:
    def update(self, n=1):
        pass

    def set_postfix_str(self, s):
        pass

    def write(self, s, file=None):
        print(s, file=file or sys.stderr)

    def close(self):
        pass


def progress_bar(total, enabled):
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        print("tqdm is not installed: no progress bar (pip install '.[bench]')",
              file=sys.stderr)
        return _NoBar()
    # disable=None: a bar on a terminal, none in a log file (the per-problem lines remain)
    return tqdm(total=total, unit="cell", file=sys.stderr, dynamic_ncols=True,
                mininterval=0.5, desc="bench", disable=None)


# ------------------------------------------------------------- the machine's other load
class CpuMeter:
    """CPU used by other processes on the machine while a problem was being measured.

    Machine-wide busy time (/proc/stat) minus this run's own (the runner, its reaped
    children, its live workers), in cores: on a shared machine this says which numbers were
    taken while something else competed for the cores. None where /proc is missing.
    """

    def __init__(self, pool):
        self.pool = pool
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.cpus = os.cpu_count() or 1

    def snapshot(self):
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:9]]
            ours = 0
            for pid in [p.pid for p, _ in self.pool.workers.values()]:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read().rsplit(")", 1)[1].split()
                ours += int(stat[11]) + int(stat[12])  # utime, stime
        except (OSError, ValueError, IndexError):
            return None
        t = os.times()
        ours += (t.user + t.system + t.children_user + t.children_system) * self.tick
        busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
        return {"total": sum(fields), "busy": busy, "steal": fields[7], "ours": ours}

    def since(self, before):
        after = self.snapshot()
        if before is None or after is None or after["total"] <= before["total"]:
            return None
        elapsed = (after["total"] - before["total"]) / self.cpus  # ticks of one core
        other = (after["busy"] - before["busy"]) - (after["ours"] - before["ours"])
        return {"other_cores": round(max(other, 0) / elapsed, 3),
                "steal_cores": round((after["steal"] - before["steal"]) / elapsed, 3)}


# -------------------------------------------------------------------------------- running
def size_label(section, size):
    if size is None:
        return ""
    what = SCALING[section][3] if section in SCALING else "size"
    exp = math.log10(size) if size > 0 else 0
    return f"{what} = 10^{exp:.0f}" if size >= 1000 and exp == int(exp) else f"{what} = {size}"


class Runner:
    def __init__(self, settings, pool, bar):
        self.settings, self.pool, self.bar = settings, pool, bar
        self.limit = settings["cell_limit_s"]
        self.failed_series = {}  # (section, peer) -> why larger sizes are not attempted
        self.rows = []
        self.meter = CpuMeter(pool)
        self.load = []  # per problem: the other processes' CPU while it was measured

    def log(self, text):
        self.bar.write(text, file=sys.stderr)

    # ---- one problem: build and check every peer, then time the ones that work
    def run_group(self, section, name, size, selected):
        problem = problem_module.make_problem(name, size)
        kind = reference.choose_kind(problem)
        refs = [reference.independent(problem, p, kind) for p in reference.points(problem)]
        where = f"{section} / {name}" + (f" ({size_label(section, size)})" if size else "")
        self.bar.set_postfix_str(where)
        cpu_before = self.meter.snapshot()
        ordered = sorted(selected, key=lambda p: (p.name not in REFERENCE_PEERS,
                                                  REFERENCE_PEERS.index(p.name)
                                                  if p.name in REFERENCE_PEERS else 0))
        rows, built = [], []
        for peer in ordered:
            row = {"section": section, "problem": name, "size": int(problem.size),
                   "peer": peer.name, "framework": peer.framework}
            rows.append(row)
            self.rows.append(row)
            if not self.build_cell(row, problem, peer, refs, size):
                self.bar.update()
                continue
            if row.pop("extracted", None) is not None:
                refs = row["_refs"]
            row.pop("_refs", None)
            built.append(row)
        self.log(f"  {where}: {len(built)} peers agree with the "
                 f"{refs[0].name} reference ({kind}); timing")
        self.time_cells(built)
        cpu = self.meter.since(cpu_before)
        if cpu is not None:
            self.load.append({"section": section, "problem": name, "size": int(problem.size),
                              **cpu})
            for row in rows:
                row["other_cpu_cores"] = cpu["other_cores"]
        if section == "table" and self.settings["first_call"] == "subprocess":
            for row in built:
                if row["status"] == "ok":
                    res = first_call_subprocess(name, row["peer"], self.limit)
                    row["first_call_ns"] = res.get("first_call_ns")
                    if res["status"] != "ok":
                        row["first_call_note"] = f"{res['status']}: {res.get('message', '')}"
        for row in built:
            if row["status"] == "ok" and "first_call_ns" not in row:
                row["first_call_ns"] = row["first_call_worker_ns"]
        self.bar.update(len(built))
        for framework in {r["framework"] for r in built}:
            if framework in self.pool.workers:
                try:
                    self.pool.request(framework, {"op": "drop"}, self.limit)
                except (worker_module.Timeout, worker_module.WorkerDied):
                    pass
        return rows

    def skip_reason(self, row, problem, peer):
        failed = self.failed_series.get((row["section"], peer.name))
        if failed:
            return "skipped", f"{failed}; larger sizes not attempted"
        if peer.name not in peer_module.SPARSE_NAMES:
            nbytes = 8 * int(np.prod(problem.jacobian_shape))
            if nbytes > self.settings["max_dense_bytes"]:
                shape = " x ".join(f"{d:,}" for d in problem.jacobian_shape)
                return "too large", (f"the dense Jacobian ({shape} float64) is "
                                     f"{nbytes / 1e9:,.0f} GB, over the "
                                     f"{self.settings['max_dense_bytes'] / 1e9:.1f} GB cap "
                                     "(a quarter of the worker's memory limit): not attempted")
        return None

    def fail(self, row, status, message):
        row.update(status=status, message=message)
        if row["section"] in SCALING:
            self.failed_series[(row["section"], row["peer"])] = (
                f"{status} at {size_label(row['section'], row['size'])}")

    def build_cell(self, row, problem, peer, refs, size):
        skip = self.skip_reason(row, problem, peer)
        if skip:
            row.update(status=skip[0], message=skip[1])
            return False
        state = self.pool.start(peer.framework)
        if state["status"] != "ok":
            row.update(status=state["status"], message=state.get("message", ""))
            return False
        become_reference = peer.name in REFERENCE_PEERS and refs[0].name not in REFERENCE_PEERS
        key = (row["problem"], size, peer.name)  # the worker rebuilds the problem from it
        row["_key"] = key
        reply = self.request(row, {"op": "build", "key": key, "refs": refs,
                                   "extract_as": peer.name if become_reference else None,
                                   "warmup": (self.settings["warmup_calls"],
                                              self.settings["warmup_ns"])},
                             "construction + first call + check at two points", "")
        if reply is None:
            return False
        status = reply["status"]
        if status == "disagree":
            raise Disagreement(reply["message"])
        if status != "ok":
            if status == "error":
                self.log(f"error: {row['peer']} on {row['problem']}:\n"
                         f"{reply.get('traceback', reply.get('message'))}")
            if status == "n/a":
                row.update(status="n/a", message=NOT_APPLICABLE.get(
                    row["peer"], "does not apply to this problem"))
            else:
                self.fail(row, status, reply.get("message", ""))
            return False
        row.update(status="ok", first_call_worker_ns=reply["first_call_ns"],
                   checked_against=reply["checked_against"])
        if reply.get("n_instructions") is not None:
            row["n_instructions"] = reply["n_instructions"]
        if reply.get("extracted"):
            row["extracted"] = True
            row["_refs"] = reply["extracted"]
        return True

    def time_cells(self, rows):
        """Autorange each cell, then repeats interleaved across cells (and so across
        workers): a noisy stretch of the shared machine hits every peer alike. A cell gets
        as many repeats (up to the setting) as fit in the cell limit."""
        settings = self.settings
        plan = {}
        for row in rows:
            reply = self.timed_request(row, {"op": "autorange", "key": row["_key"],
                                             "target_ns": settings["target_ns"]})
            if reply is None:
                continue
            loop_ns = reply["number"] * reply["per_call_ns"]
            budget_s = settings.get("repeat_budget_s") or self.limit
            repeats = int(min(settings["repeats"], max(1, budget_s * 1e9 // loop_ns)))
            plan[row["peer"]] = (row, reply["number"], repeats, [])
        for r in range(settings["repeats"]):
            for row, number, repeats, samples in plan.values():
                if r >= repeats or row["status"] != "ok":
                    continue
                reply = self.timed_request(row, {"op": "repeat", "key": row["_key"],
                                                 "number": number})
                if reply is not None:
                    samples.append(reply["per_call_ns"])
        for row, number, _, samples in plan.values():
            if row["status"] == "ok":
                row.update(median_ns=statistics.median(samples), number=number,
                           repeats=len(samples), samples_ns=samples)
        for row in rows:
            row.pop("_key", None)
            if row["status"] == "ok" and "median_ns" not in row:  # autorange failed
                row["status"] = "error"

    def request(self, row, msg, what, during):
        """The worker's reply to msg, or None with the row failed: a timeout (``what`` did
        not finish within the cell limit) or a dead worker (``during`` says when)."""
        try:
            return self.pool.request(row["framework"], msg, self.limit)
        except worker_module.Timeout:
            self.fail(row, "timeout", f"{what} did not finish within the {self.limit:g} s "
                      "cell limit")
        except worker_module.WorkerDied as e:
            self.fail(row, "crashed", f"the {row['framework']} worker died{during}: {e}")
        return None

    def timed_request(self, row, msg):
        reply = self.request(row, msg, "a timing loop", " while timing")
        if reply is None:
            return None
        if reply["status"] != "ok":
            self.fail(row, reply["status"], reply.get("message", ""))
            return None
        return reply


# ------------------------------------------------------------------------------ reporting
def cpu_model():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return cpu


def package_versions():
    """Installed versions of the peers' packages, read from their metadata (no import)."""
    from importlib import metadata

    versions = {}
    for dist in ("numpy", "scipy", "torch", "jax", "jaxlib", "casadi", "matplotlib", "tqdm"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "missing"
    return versions


def machine_info(frameworks, worker_info=None):
    """The machine, versions and thread settings. `frameworks`: name -> {"status",
    "version", ...}; `worker_info`: what each worker reported about its own settings."""
    info = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": usable_cores(),
        "python": platform.python_version(), "platform": platform.platform(),
        "versions": {"numpy": np.__version__} | {
            fw: s["version"] for fw, s in frameworks.items() if s.get("status") == "ok"},
        "threads": {var: os.environ.get(var, "(unset)") for var in CPU_VARS},
    }
    for framework_info in (worker_info or {}).values():
        info["threads"].update(framework_info)
    if worker_info is None and frameworks.get("torch", {}).get("status") == "ok" \
            and "torch" in sys.modules:
        info["threads"]["torch.get_num_threads()"] = sys.modules["torch"].get_num_threads()
    info["threads"]["casadi map / jacext batch threads"] = THREADS
    info["packages"] = package_versions()
    try:
        import scipy

        info["versions"]["scipy"] = scipy.__version__
    except ImportError:
        pass
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


def loglog_slope(points):
    """Least-squares slope of log(time) against log(size)."""
    if len(points) < 2:
        return None
    x = np.log10([p[0] for p in points])
    y = np.log10([p[1] for p in points])
    return float(np.polyfit(x, y, 1)[0])


def bars(report):
    """The issue's bars, measured in this run: [(text, met or None)]."""
    out = []
    rows = report["results"]
    table = [r for r in rows if r["section"] == "table"]
    if table:
        unexplained = [r for r in table if r["status"] != "ok"
                       and not r.get("message")]
        out.append((f"every table cell holds a number or an explained status "
                    f"({len(table)} cells, {len(unexplained)} unexplained)", not unexplained))
    for problem in TABLE_PROBLEMS:
        ok = [r for r in table if r["problem"] == problem and r["status"] == "ok"]
        jacext = next((r for r in ok if r["peer"] == "jacext"), None)
        others = [r for r in ok if r["framework"] != "jacext"]
        if not jacext or not others:
            continue
        best = min(others, key=lambda r: r["median_ns"])
        ratio = best["median_ns"] / jacext["median_ns"]
        variant = min((r for r in ok if r["framework"] == "jacext"),
                      key=lambda r: r["median_ns"])
        text = (f"{problem}: jacext {format_ns(jacext['median_ns'])}, fastest peer "
                f"{best['peer']} {format_ns(best['median_ns'])}: the peer takes "
                f"{ratio:.3g}x jacext's time")
        if variant["peer"] != "jacext":
            text += (f" ({variant['peer']} {format_ns(variant['median_ns'])}: "
                     f"{best['median_ns'] / variant['median_ns']:.3g}x)")
        expected = problem != "mlp"
        out.append((text + ("" if expected else " (no bar: mlp is expected to lose)"),
                    ratio > 1 if expected else None))
    for peer, lo, hi in (("jacext-sparse", 1000, 10**5), ("jacext", 1000, 10**4)):
        pts = [(r["size"], r["median_ns"]) for r in rows
               if r["section"] == "broyden_scaling" and r["peer"] == peer
               and r["status"] == "ok" and lo <= r["size"] <= hi]
        slope = loglog_slope(pts)
        if slope is None:
            continue
        steps = ", ".join(f"{format_ns(t)} at n = {n:,}" for n, t in pts)
        if peer == "jacext-sparse":
            out.append((f"broyden scaling, jacext sparse=True: log-log slope {slope:.2f} over "
                        f"n = {lo:,} .. {pts[-1][0]:,} ({steps}); bar: at most linear "
                        "(slope <= 1.1)", slope <= 1.1))
        else:
            out.append((f"broyden scaling, jacext dense (auto): log-log slope {slope:.2f} "
                        f"over n = {lo:,} .. {pts[-1][0]:,} ({steps}); a dense n x n result "
                        "is quadratic in n by its size alone (recorded, no bar)", None))
    return out


def scaling_table(rows, section):
    rows = [r for r in rows if r["section"] == section]
    sizes = sorted({r["size"] for r in rows})
    peers = [p for p in dict.fromkeys(r["peer"] for r in rows)
             if any(r["peer"] == p and r["status"] != "n/a" for r in rows)]
    what = SCALING[section][3]
    lines = ["| peer | " + " | ".join(f"{what} = {s:,}" for s in sizes) + " |",
             "|---|" + "---:|" * len(sizes)]
    for peer in peers:
        cells = []
        for s in sizes:
            r = next((r for r in rows if r["peer"] == peer and r["size"] == s), None)
            if r is None:
                cells.append("")
            elif r["status"] == "ok":
                cells.append(format_ns(r["median_ns"]))
            else:
                cells.append(r["status"])
        lines.append(f"| {peer} | " + " | ".join(cells) + " |")
    return lines


def first_call_table(results):
    """First call against tape size: jacext (dense and sparse) and JAX, problem by problem
    (single points only; a batch's tape is the arm's)."""
    scaled = any(r["section"] == "broyden_scaling" for r in results)
    cases = {}
    for r in sorted(results, key=lambda r: r["peer"] != "jacext"):
        if r["peer"] in ("jacext", "jacext-sparse") and r["status"] == "ok" \
                and r.get("n_instructions") and r["problem"] != "arm_batch" \
                and not (scaled and r["problem"] == "broyden" and r["section"] == "table"):
            cases.setdefault((r["section"], r["problem"], r["size"]), r["n_instructions"])
    if not cases:
        return []
    peers = ("jacext", "jacext-sparse", "jax-jacfwd", "jax-jacrev")
    lines = ["", "First call against tape size (in the worker, framework started): "
             "construction + trace/compile + first Jacobian", "",
             "| problem | size | jacext instructions | " +
             " | ".join(f"{p} first call" for p in peers) + " |",
             "|---|---:|---:|" + "---:|" * len(peers)]
    for (section, problem, size), n_instr in sorted(cases.items(), key=lambda kv: kv[1]):
        cells = []
        for peer in peers:
            q = next((q for q in results if (q["section"], q["problem"], q["size"], q["peer"])
                      == (section, problem, size, peer)), None)
            cells.append("" if q is None else format_ns(q.get("first_call_worker_ns"))
                         if q["status"] == "ok" else q["status"])
        lines.append(f"| {problem} | {size:,} | {n_instr:,} | " + " | ".join(cells) + " |")
    return lines


def markdown(report):
    info, settings = report["machine"], report["settings"]
    lines = [
        f"Machine: {info['cpu']}, {info['usable_cores']} usable of {info['cores']} cores; "
        f"Python {info['python']}; " +
        ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
        "Packages: " + ", ".join(f"{k} {v}" for k, v in info.get("packages", {}).items()),
        "Threads and CPU settings (the same for every worker): " +
        ", ".join(f"{k}={v}" for k, v in info["threads"].items()),
    ]
    if report.get("load_average"):
        load = report["load_average"]
        lines.append("Load average (1, 5, 15 min): " + "; ".join(
            f"{when} " + ", ".join(f"{v:.2f}" for v in load[when]) for when in load)
            + " (a shared machine: compare numbers within one run)")
    lines.append(
        f"Steady state: after a warm-up of {settings.get('warmup_calls', 2100):,} calls (or "
        f"{settings.get('warmup_ns', 1e10) / 1e9:g} s) per peer, "
        f"median of {settings['repeats']} repeats interleaved across peers, "
        f"each >= {settings['target_ns'] / 1e6:g} ms (fewer repeats where they would not fit "
        f"in {settings.get('repeat_budget_s') or settings['cell_limit_s']:g} s); time per "
        "Jacobian (per batch "
        "for arm_batch). First call: construction + trace/compile + first evaluation, "
        + ("in a fresh subprocess per (problem, peer), framework import and backend start-up "
           "excluded." if settings["first_call"] == "subprocess" else
           "in the framework's worker (framework imported and started)."))
    other = report.get("other_load") or []
    if other:
        busiest = max(other, key=lambda g: g["other_cores"])
        noisy = [g for g in other if g["other_cores"] > 0.25]
        lines.append(
            f"Other processes on the machine while each problem was built and timed: median "
            f"{statistics.median(g['other_cores'] for g in other):.2f} cores, at most "
            f"{busiest['other_cores']:.2f} ({busiest['section']} / {busiest['problem']}, size "
            f"{busiest['size']:,}); hypervisor steal at most "
            f"{max(g['steal_cores'] for g in other):.2f} cores"
            + ("; over 0.25 cores during: " + ", ".join(
                f"{g['section']} / {g['problem']} {g['size']:,} ({g['other_cores']:.2f})"
                for g in noisy) if noisy else "") + ".")
    startup = report.get("startup") or {}
    if startup:
        lines.append("Framework start-up, once per worker (import + backend start): " +
                     ", ".join(f"{fw} {format_ns(s['import_ns'])} + "
                               f"{format_ns(s['warmup_ns'])}" for fw, s in startup.items()))
    lines = [f"- {line}" for line in lines]  # the run's particulars, one item each
    results = report["results"]
    table = [r for r in results if r["section"] == "table"]
    if table:
        lines += ["", "| problem | peer | median | first call | × jacext |",
                  "|---|---|---:|---:|---:|"]
        baseline = {r["problem"]: r["median_ns"] for r in table
                    if r["peer"] == "jacext" and r["status"] == "ok"}
        for r in table:
            if r["status"] != "ok":
                lines.append(f"| {r['problem']} | {r['peer']} | {r['status']} | | |")
                continue
            base = baseline.get(r["problem"])
            ratio = "–" if not base else format_ratio(r["median_ns"] / base)
            lines.append(f"| {r['problem']} | {r['peer']} | {format_ns(r['median_ns'])} | "
                         f"{format_ns(r.get('first_call_ns'))} | {ratio} |")
    for section in SCALING:
        if any(r["section"] == section for r in results):
            problem, _, _, what = SCALING[section]
            lines += ["", f"{section}: {problem}, median time per Jacobian "
                      f"{'(per batch) ' if what == 'N' else ''}against {what}", ""]
            lines += scaling_table(results, section)
    lines += first_call_table(results)
    explained = [r for r in results if r["status"] not in ("ok", "n/a", "skipped")
                 or (r["status"] == "n/a" and r["section"] == "table")]
    if explained:
        lines += ["", "Cells without a time, and why:"]
        grouped = {}  # one line per (where, status, message): the peers it applies to
        for r in explained:
            text = (r.get("message") or "").splitlines()[0][:300] if r.get("message") else ""
            where = f"{r['section']} / {r['problem']}" + (
                f" ({size_label(r['section'], r['size'])})" if r["section"] in SCALING else "")
            grouped.setdefault((where, r["status"], text), []).append(r["peer"])
        for (where, status, text), names in grouped.items():
            lines.append(f"- {where} / {', '.join(names)}: {status}"
                         + (f": {text}" if text else ""))
        lines.append("- (skipped: a peer that timed out, ran out of memory or was too "
                     "large at one size is not attempted at larger sizes)")
    notes = [r for r in results if r.get("first_call_note")]
    lines += [f"- first call of {r['problem']} / {r['peer']}: {r['first_call_note']}"
              for r in notes]
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
    if report.get("bars"):
        lines += ["", "Bars, measured in this run:"]
        lines += [f"- {'met' if ok else 'NOT met' if ok is not None else 'recorded'}: {text}"
                  for text, ok in report["bars"]]
    if report.get("plots"):
        lines += ["", "Plots: " + ", ".join(os.path.basename(p) for p in report["plots"])]
    lines.append(f"\nWall time of the run: {report.get('wall_s', 0):.0f} s")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ CLI
def parse_args(argv):
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer, shorter repeats, small scaling sizes, 10 s cells, first "
                        "calls in the workers, no big_trace: well under a minute")
    parser.add_argument("--problems", help="comma-separated: " + ", ".join(
        TABLE_PROBLEMS + list(SCALING) + ["big_trace"]) + " (default: all)")
    parser.add_argument("--peers", help="comma-separated peer names or frameworks "
                        "(jacext, torch, jax, casadi, numpy); default: all")
    parser.add_argument("--cell-limit", type=float, metavar="S",
                        help="time limit per cell in seconds (default 60; --quick 10)")
    parser.add_argument("--broyden-sizes", help="comma-separated n for broyden_scaling")
    parser.add_argument("--arm-sizes", help="comma-separated N for arm_scaling")
    parser.add_argument("--memory-limit", type=float, metavar="GB",
                        help="address-space limit of each worker (default: 60%% of RAM)")
    parser.add_argument("--out", metavar="DIR", default=os.path.join(BENCH_DIR, "out"),
                        help="where results.json, results.md and the plots go "
                        "(default bench/out)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    parser.add_argument("--markdown", metavar="PATH", help="also write the tables here")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--publish", action="store_true",
                        help="also copy results.md, results.json and the plots to "
                        "bench/results/ (what bench/RESULTS.md shows)")
    parser.add_argument("--render", metavar="RESULTS_JSON",
                        help="run nothing: redraw the tables, bars and plots of a saved run")
    parser.add_argument("--first-call", choices=("subprocess", "worker"),
                        help="where the table's first calls are measured (default: "
                        "subprocess, a fresh process per cell; --quick: worker)")
    parser.add_argument("--child-first-call", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--child-big-trace", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def total_memory():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16e9


def sizes_option(text, default):
    if not text:
        return default
    return tuple(int(float(s)) for s in text.split(",") if s.strip())


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.child_first_call:
        return first_call_child(*args.child_first_call)
    if args.child_big_trace:
        return big_trace_child()
    if args.render:
        with open(args.render) as f:
            report = json.load(f)
        for row in report["results"]:  # the reasons are static: refresh their wording
            if row["status"] == "n/a" and row["peer"] in NOT_APPLICABLE:
                row["message"] = NOT_APPLICABLE[row["peer"]]
        report["bars"] = bars(report)
        report["machine"].setdefault("packages", package_versions())
        return finish(report, args, os.path.dirname(os.path.abspath(args.render)))
    started = time.monotonic()

    known = TABLE_PROBLEMS + list(SCALING) + ["big_trace"]
    wanted = args.problems.split(",") if args.problems else known
    unknown = [name for name in wanted if name not in known]
    if unknown:
        print(f"unknown problem(s) {unknown}; choose from {known}", file=sys.stderr)
        return 2
    table_peers, sparse_peers = peer_module.PEERS, peer_module.SPARSE_PEERS
    if args.peers:
        tokens = args.peers.split(",")

        def keep(peers):
            return [p for p in peers if p.name in tokens or p.framework in tokens]
        table_peers, sparse_peers = keep(table_peers), keep(sparse_peers)
        if not table_peers and not sparse_peers:
            print(f"no peer matches {tokens}; peers: "
                  f"{[p.name for p in peer_module.ALL_PEERS]}", file=sys.stderr)
            return 2
    memory_limit = int((args.memory_limit * 1e9) if args.memory_limit
                       else 0.6 * total_memory())
    settings = {"repeats": 3 if args.quick else 7,
                "target_ns": 2e6 if args.quick else 20e6,
                # --quick: the same 2,100 calls (jacext's Jacobian tapes come after 2,048
                # points) but at most 0.1 s of them, not 10 s
                "warmup_calls": worker_module.WARMUP_CALLS,
                "warmup_ns": 1e8 if args.quick else worker_module.WARMUP_NS,
                "repeat_budget_s": 0.5 if args.quick else None,
                "cell_limit_s": args.cell_limit or (10.0 if args.quick else 60.0),
                "first_call": args.first_call or ("worker" if args.quick else "subprocess"),
                "threads": THREADS, "rtol": RTOL, "atol": ATOL,
                "memory_limit_bytes": memory_limit, "max_dense_bytes": memory_limit // 4,
                "quick": args.quick}
    groups = [("table", name, QUICK_TABLE_SIZES.get(name) if args.quick else None, table_peers)
              for name in TABLE_PROBLEMS if name in wanted and table_peers]
    for section, (problem, full, quick, _) in SCALING.items():
        if section in wanted:
            option = args.broyden_sizes if problem == "broyden" else args.arm_sizes
            sizes = sizes_option(option, quick if args.quick else full)
            if not sizes:
                print(f"{section}: not in --quick (give its sizes, --arm-sizes 1,10, to run "
                      "it)")
                continue
            settings[f"{section}_sizes"] = list(sizes)
            peers = table_peers + (sparse_peers if problem == "broyden" else [])
            groups += [(section, problem, n, peers) for n in sizes if peers]

    os.makedirs(args.out, exist_ok=True)
    log_dir = os.path.join(args.out, "logs")
    os.makedirs(log_dir, exist_ok=True)
    pool = worker_module.Pool(THREADS, log_dir=log_dir, memory_limit=memory_limit)
    bar = progress_bar(sum(len(g[3]) for g in groups), not args.no_progress)
    runner = Runner(settings, pool, bar)
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    bar.write(file=sys.stderr, s=f"threads: {THREADS} for every peer; " +
              ", ".join(f"{v}={os.environ.get(v, '(unset)')}" for v in CPU_VARS) +
              f"; cell limit {settings['cell_limit_s']:g} s; worker memory limit "
              f"{memory_limit / 1e9:.1f} GB; worker logs in {log_dir}")
    report = {"settings": settings, "results": runner.rows, "other_load": runner.load}
    try:
        for section, name, size, peers in groups:
            runner.run_group(section, name, size, peers)
    except Disagreement as e:
        bar.close()
        pool.close()
        print(f"\nBENCHMARK STOPPED: a peer disagrees with the reference.\n{e}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        bar.close()
        pool.close()
        raise
    bar.close()
    frameworks = dict(pool.state)
    pool.close()
    for row in runner.rows:
        row.pop("_key", None)
        row.pop("_refs", None)
    if "big_trace" in wanted and not args.quick and any(
            p.name == "jacext" for p in table_peers):
        print("  big_trace: running in a subprocess", file=sys.stderr)
        report["big_trace"] = big_trace(max(600.0, settings["cell_limit_s"]))

    worker_info = {fw: s.get("info", {}) for fw, s in frameworks.items()
                   if s.get("status") == "ok"}
    report["machine"] = machine_info(frameworks, worker_info)
    report["frameworks"] = {fw: {k: v for k, v in s.items() if k != "traceback"}
                            for fw, s in frameworks.items()}
    report["startup"] = {fw: {"import_ns": s["import_ns"], "warmup_ns": s["warmup_ns"]}
                         for fw, s in frameworks.items() if s.get("status") == "ok"}
    report["restarts"] = pool.restarts
    if load_start is not None:
        report["load_average"] = {"start": list(load_start), "end": list(os.getloadavg())}
    report["date"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    report["bars"] = bars(report)
    report["wall_s"] = time.monotonic() - started
    return finish(report, args, args.out)


def finish(report, args, out_dir):
    """Plots, tables and files of a run; the exit status (1 if a peer raised an error)."""
    if not args.no_plots:
        try:
            from bench import plots

            report["plots"] = [os.path.basename(p) for p in plots.make_plots(report, out_dir)]
        except ImportError as e:
            print(f"no plots: {e} (pip install '.[bench]')", file=sys.stderr)
        except Exception:  # a plotting bug must not lose the run's numbers
            traceback.print_exc()
    table = markdown(report)
    print(table)
    text = json.dumps(report, indent=1, default=str)
    outputs = {os.path.join(out_dir, "results.md"): table,
               os.path.join(out_dir, "results.json"): text}
    if args.markdown:
        outputs[args.markdown] = table
    if args.json:
        outputs[args.json] = text
    if args.publish:
        published = os.path.join(BENCH_DIR, "results")
        os.makedirs(published, exist_ok=True)
        outputs[os.path.join(published, "results.md")] = table
        outputs[os.path.join(published, "results.json")] = text
        for name in report.get("plots", []):
            shutil.copyfile(os.path.join(out_dir, name), os.path.join(published, name))
    for path, content in outputs.items():
        with open(path, "w") as f:
            f.write(content)
    failed = [r for r in report["results"] if r["status"] == "error"
              or (r["status"] == "crashed" and r["section"] == "table")]
    if (report.get("big_trace") or {}).get("status") not in (None, "ok", "missing"):
        failed.append(report["big_trace"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
