"""One worker process per framework: it builds, checks and times cells for the runner.

The runner (bench/run.py) never imports torch, JAX or CasADi itself. For each framework it
starts a worker (multiprocessing, "spawn": a fresh interpreter that inherits the thread
variables the runner set) that imports the framework once, applies the shared thread
setting, and then answers requests over a pipe:

  build      build the peer on a problem, time construction + first call, check the
             Jacobian at two points against the references sent with the request (and hand
             back its own result in the references' form when asked: jacext's)
  autorange  the loop count whose loop lasts >= a target, and the time per call
  repeat     one timed loop of `number` calls: ns per call
  drop       forget built cells (frees their memory)

The runner waits for each answer with a time limit. A worker that overruns is killed and a
fresh one started on the next request; the cell is recorded as a timeout, never a hang.
Cells that the killed worker had built are rebuilt transparently when next asked for.
"""

from __future__ import annotations

import gc
import os
import sys
import time
import traceback

WARMUP = {
    # Start-up work that belongs to the framework, not to any problem: JAX starts its XLA
    # CPU backend on the first computation. Timed apart and reported as start-up.
    "jax": "import jax, jax.numpy as jnp; jax.jit(lambda v: v * 2)(jnp.ones(2))"
           ".block_until_ready()",
    "torch": "import torch; torch.ones(2, dtype=torch.float64).sin()",
}


# --------------------------------------------------------------------------- timing loops
# Calls before anything is timed, the same for every peer: caches fill on use (JAX's and
# torch's compiled functions, jacext's Jacobian tapes, which a Function builds once 2,048
# points' Jacobians have been asked of it).  Capped in time for the slow peers.
WARMUP_CALLS = 2100
WARMUP_NS = 10_000_000_000


def warm_up(jac, x, calls=WARMUP_CALLS, limit_ns=WARMUP_NS):
    """Call jac(x) ``calls`` times, or for ``limit_ns``, whichever ends first."""
    end = time.perf_counter_ns() + limit_ns
    for _ in range(calls):
        jac(x)
        if time.perf_counter_ns() > end:
            break


def run_loop(jac, x, number):
    start = time.perf_counter_ns()
    for _ in range(number):
        jac(x)
    return time.perf_counter_ns() - start


def autorange(jac, x, target_ns):
    """(number, ns per call): the smallest loop count in 1, 2, 5, 10, 20, ... whose loop
    lasts >= target_ns, and the time per call of that loop."""
    number = 1
    while True:
        for step in (1, 2, 5):
            elapsed = run_loop(jac, x, number * step)
            if elapsed >= target_ns:
                return number * step, elapsed / (number * step)
        number *= 10


def _without_gc(fn, *args):
    enabled = gc.isenabled()
    gc.disable()  # as timeit does: a collection mid-loop is noise, not the peer's cost
    try:
        return fn(*args)
    finally:
        if enabled:
            gc.enable()


# ------------------------------------------------------------------------ the worker side
def _limit_memory(limit_bytes):
    if not limit_bytes:
        return
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    except (ImportError, ValueError, OSError):
        pass


def _redirect_output(log_path):
    """Library chatter (warnings, XLA logs) goes to the worker's log, not over the bar."""
    if not log_path:
        return
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


class _Cells:
    def __init__(self, framework, threads):
        from bench import peers, problems

        self.peers, self.problems = peers, problems
        self.framework, self.threads = framework, threads
        self.built = {}  # key (name, size, peer) -> (jac, x)
        self.warmup = {}  # key -> (calls, ns) of its warm-up, for a rebuild after a restart
        self.problem_cache = {}

    def problem(self, name, size):
        key = (name, size)
        if key not in self.problem_cache:
            self.problem_cache[key] = self.problems.make_problem(name, size)
        return self.problem_cache[key]

    def build(self, key, refs=None, extract_as=None, warmup=(WARMUP_CALLS, WARMUP_NS)):
        from bench import reference

        name, size, peer_name = key
        problem = self.problem(name, size)
        peer = self.peers.find(peer_name)
        self.built.pop(key, None)
        gc.collect()
        start = time.perf_counter_ns()
        jac = peer.build(problem, self.threads)
        if jac is None:
            return {"status": "n/a"}
        got = jac(problem.input)
        first_call_ns = time.perf_counter_ns() - start
        reply = {"status": "ok", "first_call_ns": first_call_ns,
                 "n_instructions": getattr(jac, "n_instructions", None)}
        if refs is not None:
            label = f"{peer_name} on {name}" + ("" if size is None else f" (size {size})")
            extracted = []
            for i, (point, ref) in enumerate(zip(reference.points(problem), refs,
                                                 strict=True)):
                if i:
                    got = jac(point)
                reference.check(got, ref, label + ("" if i == 0 else ", perturbed point"))
                if extract_as:
                    # before the next call: -out variants reuse their result's memory
                    extracted.append(reference.extract(got, ref, extract_as))
                del got
            reply["extracted"] = extracted or None
            reply["checked_against"] = refs[0].name
        warm_up(jac, problem.input, *warmup)
        self.built[key] = (jac, problem.input)
        self.warmup[key] = warmup
        return reply

    def get(self, key):
        if key not in self.built:  # rebuilt after a restart: already checked, warm it up
            self.build(key, warmup=self.warmup.get(key, (WARMUP_CALLS, WARMUP_NS)))
        return self.built[key]

    def drop(self, keys=None):
        for key in list(self.built) if keys is None else keys:
            self.built.pop(key, None)
        if keys is None:
            self.problem_cache.clear()
        gc.collect()


def worker_main(conn, framework, threads, log_path=None, memory_limit=None):
    """The worker process: import the framework, then serve requests until told to quit."""
    _redirect_output(log_path)
    _limit_memory(memory_limit)
    from bench import peers
    from bench.reference import Disagreement

    start = time.perf_counter_ns()
    try:
        version = peers.load(framework, threads)
        imported = time.perf_counter_ns()
        if framework in WARMUP:
            exec(WARMUP[framework], {})
    except ImportError as e:
        conn.send({"status": "missing", "message": f"{type(e).__name__}: {e}"})
        return
    except Exception as e:  # e.g. a half-built jacext in the tree
        conn.send({"status": "error", "message": f"{type(e).__name__}: {e}",
                   "traceback": traceback.format_exc()})
        return
    done = time.perf_counter_ns()
    info = {}
    if framework == "torch":
        import torch

        info["torch.get_num_threads()"] = torch.get_num_threads()
        info["torch.get_num_interop_threads()"] = torch.get_num_interop_threads()
    if framework == "jax":
        import jax

        info["jax devices"] = ", ".join(str(d) for d in jax.devices())
        info["jax_enable_x64"] = bool(jax.config.jax_enable_x64)
    conn.send({"status": "ok", "version": version, "import_ns": imported - start,
               "warmup_ns": done - imported, "info": info, "pid": os.getpid()})

    cells = _Cells(framework, threads)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        op = msg["op"]
        if op == "quit":
            return
        try:
            if op == "build":
                reply = cells.build(msg["key"], msg.get("refs"), msg.get("extract_as"),
                                    tuple(msg.get("warmup", (WARMUP_CALLS, WARMUP_NS))))
            elif op == "autorange":
                jac, x = cells.get(msg["key"])
                number, per_call = _without_gc(autorange, jac, x, msg["target_ns"])
                reply = {"status": "ok", "number": number, "per_call_ns": per_call}
            elif op == "repeat":
                jac, x = cells.get(msg["key"])
                ns = _without_gc(run_loop, jac, x, msg["number"])
                reply = {"status": "ok", "per_call_ns": ns / msg["number"]}
            elif op == "drop":
                cells.drop(msg.get("keys"))
                reply = {"status": "ok"}
            elif op == "sleep":  # for the harness's own tests: a cell that never ends
                time.sleep(msg["seconds"])
                reply = {"status": "ok"}
            else:
                reply = {"status": "error", "message": f"unknown request {op!r}"}
        except Disagreement as e:
            reply = {"status": "disagree", "message": str(e)}
        except MemoryError as e:
            cells.drop()
            reply = {"status": "out of memory", "message": f"MemoryError: {e}"}
        except Exception as e:  # a peer's failure is reported, never fatal
            text = f"{type(e).__name__}: {e}"
            status = "out of memory" if _looks_like_oom(text) else "error"
            if status == "out of memory":
                cells.drop()
            reply = {"status": status, "message": text, "traceback": traceback.format_exc()}
        try:
            conn.send(reply)
        except (EOFError, OSError, BrokenPipeError):
            return


def _looks_like_oom(text):
    text = text.lower()
    return any(s in text for s in ("can't allocate memory", "out of memory",
                                   "resource_exhausted", "std::bad_alloc", "unable to allocate"))


# ------------------------------------------------------------------------ the runner side
class Timeout(Exception):
    pass


class WorkerDied(Exception):
    pass


class Pool:
    """The runner's handle on its workers, one per framework, started on first use."""

    def __init__(self, threads, log_dir=None, memory_limit=None, start_timeout=300):
        import multiprocessing

        self.ctx = multiprocessing.get_context("spawn")
        self.threads, self.log_dir = threads, log_dir
        self.memory_limit, self.start_timeout = memory_limit, start_timeout
        self.workers = {}  # framework -> (process, connection)
        self.state = {}  # framework -> the worker's hello (status, version, start-up times)
        self.restarts = {}

    def log_path(self, framework):
        return None if not self.log_dir else os.path.join(self.log_dir,
                                                          f"worker-{framework}.log")

    def start(self, framework):
        """Start the framework's worker if needed; return its state (status "ok",
        "missing" or "error")."""
        if framework in self.workers:
            return self.state[framework]
        if self.state.get(framework, {}).get("status") in ("missing", "error"):
            return self.state[framework]
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=worker_main, name=f"bench-{framework}", daemon=True,
                                args=(child, framework, self.threads,
                                      self.log_path(framework), self.memory_limit))
        proc.start()
        child.close()
        try:
            hello = self._receive(proc, parent, self.start_timeout)
        except (Timeout, WorkerDied) as e:
            self._stop(proc, parent)
            hello = {"status": "error", "message": f"the {framework} worker did not start: {e}"}
        if hello["status"] == "ok":
            self.workers[framework] = (proc, parent)
            if framework in self.state:  # a restart: keep the first start-up's numbers
                self.restarts[framework] = self.restarts.get(framework, 0) + 1
                return self.state[framework]
        else:
            self._stop(proc, parent)
        self.state[framework] = hello
        return hello

    def request(self, framework, msg, timeout):
        """Send one request; its answer, or Timeout (the worker is killed) / WorkerDied."""
        state = self.start(framework)
        if state["status"] != "ok":
            raise WorkerDied(state.get("message", state["status"]))
        proc, conn = self.workers[framework]
        try:
            conn.send(msg)
            return self._receive(proc, conn, timeout)
        except (Timeout, WorkerDied, BrokenPipeError, OSError):
            self.kill(framework)
            raise

    @staticmethod
    def _receive(proc, conn, timeout):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(f"no answer within {timeout:g} s")
            if conn.poll(min(left, 0.5)):
                try:
                    return conn.recv()
                except (EOFError, OSError) as e:
                    proc.join(5)
                    raise WorkerDied(f"the worker exited (exit code {proc.exitcode})") from e
            if not proc.is_alive():
                raise WorkerDied(f"the worker exited (exit code {proc.exitcode})")

    def kill(self, framework):
        proc, conn = self.workers.pop(framework, (None, None))
        if proc is not None:
            self._stop(proc, conn, polite=False)

    @staticmethod
    def _stop(proc, conn, polite=True):
        if polite and proc.is_alive():
            try:
                conn.send({"op": "quit"})
            except (OSError, BrokenPipeError):
                pass
            proc.join(5)
        if proc.is_alive():
            proc.kill()  # this worker only: its own pid
            proc.join(10)
        conn.close()

    def close(self):
        for framework in list(self.workers):
            proc, conn = self.workers.pop(framework)
            self._stop(proc, conn)
