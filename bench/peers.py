"""Peer adapters: each builds `jac(x) -> ndarray` for a problem.

A peer is (name, framework, build). `load(framework, threads)` imports the framework and
applies the shared thread setting; it raises ImportError when the framework is not
installed, and the runner then reports the peer as "missing". `build(problem, threads)`
does everything a user does once (construction, tracing, compilation) and returns the
callable, or None when the peer does not apply to the problem (e.g. no hand-written
Jacobian). The callable is invoked with `problem.input`: x, or the batch X for batched
problems, and returns the dense Jacobian as a NumPy array of `problem.jacobian_shape`.

The "-out" / "-buffer" variants write into one preallocated array and return it each call,
so a caller that keeps results must copy them.

PEERS are BENCH.md's peers (dense results). SPARSE_PEERS return a scipy.sparse.csr_array
(jacext's sparse=True, CasADi's sparse Jacobian through its buffer, the hand-written CSR);
the runner times them beside the dense peers in the broyden scaling only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np


@dataclass(frozen=True)
class Peer:
    name: str
    framework: str
    build: Callable  # (problem, threads) -> jac or None


def load(framework: str, threads: int) -> str:
    """Import a framework, apply the thread setting, return its version string."""
    if framework == "numpy":
        return np.__version__
    if framework == "jacext":
        import jacext

        return getattr(jacext, "__version__", "dev")
    if framework == "torch":
        import torch

        # torch keeps its own intra-op pool (it ignores OMP_NUM_THREADS once imported):
        # set it explicitly so it matches every other peer. Inter-op threads can only be set
        # before any parallel work and play no part here, so they are left alone.
        torch.set_num_threads(threads)
        return torch.__version__
    if framework == "jax":
        import jax

        # JAX computes in float32 unless x64 is enabled; everything here is float64.
        jax.config.update("jax_enable_x64", True)
        return jax.__version__
    if framework == "casadi":
        import casadi

        return casadi.__version__
    raise ValueError(f"unknown framework {framework!r}")


# -------------------------------------------------------------------------------- jacext
def _jacext(problem, threads, out=False):
    import jacext as jx

    F = jx.compile(problem.numpy, problem.x)  # traced at one point's shape
    kwargs = {} if problem.batch is None else {"threads": threads}
    if not out:
        jac = partial(F.jacobian, **kwargs)
    else:
        # F.jacobian(x, out=J) returns J itself.  The keywords are written at the call
        # (a partial holding out=, or **kwargs, passes a dict: 0.1-0.4 us more per call)
        J = np.empty(problem.jacobian_shape)
        if problem.batch is None:
            def jac(x):
                return F.jacobian(x, out=J)
        else:
            def jac(x):
                return F.jacobian(x, out=J, threads=threads)

    jac.n_instructions = F.n_instructions  # the tape size, for the first-call plot
    return jac


def _jacext_sparse(problem, threads):
    """F.jacobian(x, sparse=True): a scipy.sparse.csr_array from the compressed sweeps."""
    if problem.batch is not None:
        return None
    import jacext as jx

    F = jx.compile(problem.numpy, problem.x)
    jac = partial(F.jacobian, sparse=True)
    jac.n_instructions = F.n_instructions
    return jac


# --------------------------------------------------------------------------------- torch
def _torch_autograd(problem, threads, vectorize):
    if problem.batch is not None:
        return None  # it would build the (N, 12, N, 7) cross-Jacobian: not comparable
    import torch

    f = problem.torch()

    def jac(x):
        # from_numpy and .numpy() share memory: the conversion is free.
        J = torch.autograd.functional.jacobian(f, torch.from_numpy(x), vectorize=vectorize)
        return J.numpy()

    return jac


def _torch_func(problem, threads, mode):
    import torch

    g = {"rev": torch.func.jacrev, "fwd": torch.func.jacfwd}[mode](problem.torch())
    if problem.batch is not None:
        g = torch.func.vmap(g)

    def jac(x):
        return g(torch.from_numpy(x)).numpy()

    return jac


# ----------------------------------------------------------------------------------- JAX
def _jax(problem, threads, mode):
    import jax

    g = {"rev": jax.jacrev, "fwd": jax.jacfwd}[mode](problem.jax())
    if problem.batch is not None:
        g = jax.vmap(g)
    g = jax.jit(g)
    # Nothing is compiled yet: jit traces and compiles with XLA on the first call, which is
    # why JAX's first call is far slower than its steady state (the first call in a process
    # also initialises the XLA CPU backend).

    def jac(x):
        # Dispatch is asynchronous: wait for the result so the timing covers the work.
        return np.asarray(g(x).block_until_ready())

    return jac


# -------------------------------------------------------------------------------- CasADi
def _casadi_function(problem, threads):
    """The SX Jacobian as a casadi.Function; mapped over the batch for batched problems."""
    import casadi as ca

    n = problem.x.size
    x = ca.SX.sym("x", n)
    y = problem.casadi()(x)
    # jacobian() returns a sparse SX matrix; densify so the output holds all m*n entries
    # (the buffer path below writes exactly the output's nonzeros).
    F = ca.Function("jacobian", [x], [ca.densify(ca.jacobian(y, x))])
    if problem.batch is not None:
        # Mapped inputs and outputs are concatenated horizontally: (n, N) in, (m, N*n) out.
        F = F.map(problem.batch.shape[0], "thread", threads)
    return F


def _casadi(problem, threads):
    F = _casadi_function(problem, threads)
    m, n = int(np.prod(problem.out_shape)), problem.x.size
    if problem.batch is None:
        return lambda x: F(x).full()
    N = problem.batch.shape[0]

    def jac(X):
        # X.T is (n, N). The (m, N*n) result holds J_k in columns k*n .. k*n+n-1, so a
        # row-major reshape to (m, N, n) indexes [i, k, j]; move k to the front.
        return F(X.T).full().reshape(m, N, n).transpose(1, 0, 2)

    return jac


def _casadi_buffer(problem, threads):
    """Function.buffer(): CasADi's zero-copy call path, bound to NumPy memory.

    CasADi reads inputs and writes outputs as the nonzeros of each matrix in column-major
    order. The dense (m, n) Jacobian in column-major order is the C-order layout of an
    (n, m) array, so we bind that array and hand back its transpose, a view.
    For a batch, the (m, N*n) output in column-major order is C-order (N, n, m), and the
    (n, N) input is the C-order (N, n) batch itself.
    """
    F = _casadi_function(problem, threads)
    buffer, trigger = F.buffer()
    if problem.batch is None:
        m, n = int(np.prod(problem.out_shape)), problem.x.size
        storage = np.full((n, m), np.nan)
        J = storage.T
    else:
        N, n = problem.batch.shape
        m = int(np.prod(problem.out_shape))
        storage = np.full((N, n, m), np.nan)
        J = storage.transpose(0, 2, 1)
    buffer.set_res(0, memoryview(storage))

    def jac(x):
        # set_arg binds the pointer: x must be C-contiguous float64 (it is) and stay alive
        # until trigger() returns. Rebinding each call lets x be any array.
        buffer.set_arg(0, memoryview(x))
        trigger()
        return J

    # A failed call leaves the nan fill in place, which the runner's check reports.
    return jac


def _casadi_sparse_buffer(problem, threads):
    """CasADi's sparse SX Jacobian through Function.buffer(), returned as a csr_array.

    The Function outputs J^T: its column-major (CSC) arrays are J's CSR arrays, so the
    nonzeros land in CSR order with no transpose. Each call wraps a copy of them in a fresh
    csr_array, exactly what jacext's sparse=True returns (as bench/sparse.py's
    casadi-buffer).
    """
    if problem.batch is not None:
        return None
    import casadi as ca
    import scipy.sparse as sp

    n = problem.x.size
    m = int(np.prod(problem.out_shape))
    x = ca.SX.sym("x", n)
    F = ca.Function("jacobian_t", [x], [ca.jacobian(problem.casadi()(x), x).T])
    pattern = F.sparsity_out(0)
    indptr = np.asarray(pattern.colind(), np.int32)
    indices = np.asarray(pattern.row(), np.int32)
    values = np.full(F.nnz_out(0), np.nan)
    buffer, trigger = F.buffer()
    buffer.set_res(0, memoryview(values))

    def jac(x):
        buffer.set_arg(0, memoryview(x))
        trigger()
        return sp.csr_array((values.copy(), indices, indptr), shape=(m, n))

    return jac


# ----------------------------------------------------------------------- hand-written NumPy
def _numpy_hand(problem, threads):
    return problem.jacobian  # None when the problem has no short hand-written Jacobian


def _numpy_hand_csr(problem, threads):
    return problem.jacobian_csr  # the hand-written Jacobian straight into CSR, or None


PEERS = [
    Peer("jacext", "jacext", _jacext),
    Peer("jacext-out", "jacext", partial(_jacext, out=True)),
    Peer("torch-autograd", "torch", partial(_torch_autograd, vectorize=False)),
    Peer("torch-autograd-vec", "torch", partial(_torch_autograd, vectorize=True)),
    Peer("torch-jacrev", "torch", partial(_torch_func, mode="rev")),
    Peer("torch-jacfwd", "torch", partial(_torch_func, mode="fwd")),
    Peer("jax-jacfwd", "jax", partial(_jax, mode="fwd")),
    Peer("jax-jacrev", "jax", partial(_jax, mode="rev")),
    Peer("casadi", "casadi", _casadi),
    Peer("casadi-buffer", "casadi", _casadi_buffer),
    Peer("numpy-hand", "numpy", _numpy_hand),
]

# Sparse results (scipy.sparse.csr_array): beside the dense peers in the broyden scaling,
# where at n = 10^5 a dense Jacobian (80 GB) is out of reach for everyone.
SPARSE_PEERS = [
    Peer("jacext-sparse", "jacext", _jacext_sparse),
    Peer("casadi-sparse-buffer", "casadi", _casadi_sparse_buffer),
    Peer("numpy-hand-csr", "numpy", _numpy_hand_csr),
]
SPARSE_NAMES = {p.name for p in SPARSE_PEERS}
ALL_PEERS = PEERS + SPARSE_PEERS


def find(name: str) -> Peer:
    return next(p for p in ALL_PEERS if p.name == name)

