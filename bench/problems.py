"""The benchmark problems of BENCH.md, each written once per framework.

A problem holds:
  numpy     the plain NumPy function, what a jacext user writes. It uses only NumPy calls that
            reach an array-like through `__array_ufunc__` / `__array_function__` (np.sin, @,
            np.stack, np.concatenate, indexing ...): matrices are built with np.stack, never
            with np.array([[...]]) of symbolic scalars, and nothing is assigned into a
            preallocated array.
  torch, jax, casadi
            factories returning the same function in that framework. They import the
            framework lazily, so this module imports with NumPy alone. The CasADi function
            takes and returns SX column vectors.
  jacobian  a hand-written NumPy Jacobian where one is short, else None.
  x         the point (float64); batch: the points of a batched problem, else None.

All data is seeded with np.random.default_rng(0), one generator per problem, so that adding
a problem never changes another one's data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Problem:
    name: str
    summary: str
    numpy: Callable
    torch: Callable[[], Callable]
    jax: Callable[[], Callable]
    casadi: Callable[[], Callable]
    jacobian: Callable | None
    x: np.ndarray
    batch: np.ndarray | None = None
    jacobian_csr: Callable | None = None  # the hand-written Jacobian as a SciPy CSR
    out_shape: tuple = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "out_shape", np.shape(self.numpy(self.x)))

    @property
    def input(self) -> np.ndarray:
        """What a peer's jac() is called with: the batch if there is one, else x."""
        return self.x if self.batch is None else self.batch

    @property
    def jacobian_shape(self) -> tuple:
        lead = () if self.batch is None else self.batch.shape[:-1]
        return lead + self.out_shape + self.x.shape

    @property
    def size(self) -> int:
        """The size that names this instance: n for broyden, N for a batch, else x.size."""
        return self.x.size if self.batch is None else self.batch.shape[0]


# --------------------------------------------------------------------------------- seed
def seed_problem() -> Problem:
    def f(x):
        return x**2 * x

    def jacobian(x):
        return np.diag(3 * x**2)

    def torch_version():
        return f  # the operators are the same in torch and JAX

    def casadi_version():
        return f

    return Problem("seed", "x**2 * x at [2, 3]: 2 -> 2, pure call overhead",
                   f, torch_version, torch_version, casadi_version, jacobian,
                   np.array([2.0, 3.0]))


# ---------------------------------------------------------------------------------- arm
# Franka Panda, modified DH (Craig): joint i is RotX(alpha_i) @ TransX(a_i) @ RotZ(q_i) @
# TransZ(d_i); a flange TransZ(0.107) follows the last joint.
PANDA_A = [0.0, 0.0, 0.0, 0.0825, -0.0825, 0.0, 0.088]
PANDA_D = [0.333, 0.0, 0.316, 0.0, 0.384, 0.0, 0.0]
PANDA_ALPHA = [0.0, -np.pi / 2, np.pi / 2, np.pi / 2, -np.pi / 2, np.pi / 2, np.pi / 2]
PANDA_FLANGE = 0.107


def _rot_x(alpha):
    c, s = np.cos(alpha), np.sin(alpha)
    return np.array([[1, 0, 0, 0], [0, c, -s, 0], [0, s, c, 0], [0, 0, 0, 1.0]])


def _translation(x=0.0, z=0.0):
    T = np.eye(4)
    T[0, 3], T[2, 3] = x, z
    return T


# The constant factors around each joint rotation, as plain float64 arrays (7, 4, 4).
PANDA_BEFORE = np.stack([_rot_x(alpha) @ _translation(x=a)
                         for alpha, a in zip(PANDA_ALPHA, PANDA_A, strict=True)])
PANDA_AFTER = np.stack([_translation(z=d) for d in PANDA_D])
PANDA_FLANGE_T = _translation(z=PANDA_FLANGE)


def arm(q):
    """Panda forward kinematics: top 3x4 of the flange pose, flattened row by row.

    q has shape (7,) or (..., 7): the same code serves one configuration and a batch.
    """
    T = None
    for i in range(7):
        joint = PANDA_BEFORE[i] @ _rot_z(q[..., i]) @ PANDA_AFTER[i]
        T = joint if T is None else T @ joint
    T = T @ PANDA_FLANGE_T
    return T[..., :3, :].reshape(q.shape[:-1] + (12,))


def _rot_z(theta):
    c, s = np.cos(theta), np.sin(theta)
    zero, one = np.zeros_like(c), np.ones_like(c)
    return np.stack([np.stack([c, -s, zero, zero], axis=-1),
                     np.stack([s, c, zero, zero], axis=-1),
                     np.stack([zero, zero, one, zero], axis=-1),
                     np.stack([zero, zero, zero, one], axis=-1)], axis=-2)


def _arm_torch():
    import torch

    before, after = torch.from_numpy(PANDA_BEFORE), torch.from_numpy(PANDA_AFTER)
    flange = torch.from_numpy(PANDA_FLANGE_T)

    def rot_z(theta):
        c, s = torch.cos(theta), torch.sin(theta)
        zero, one = torch.zeros_like(c), torch.ones_like(c)
        return torch.stack([torch.stack([c, -s, zero, zero], dim=-1),
                            torch.stack([s, c, zero, zero], dim=-1),
                            torch.stack([zero, zero, one, zero], dim=-1),
                            torch.stack([zero, zero, zero, one], dim=-1)], dim=-2)

    def f(q):
        T = None
        for i in range(7):
            joint = before[i] @ rot_z(q[..., i]) @ after[i]
            T = joint if T is None else T @ joint
        T = T @ flange
        return T[..., :3, :].reshape(q.shape[:-1] + (12,))

    return f


def _arm_jax():
    import jax.numpy as jnp

    before, after = jnp.asarray(PANDA_BEFORE), jnp.asarray(PANDA_AFTER)
    flange = jnp.asarray(PANDA_FLANGE_T)

    def rot_z(theta):
        c, s = jnp.cos(theta), jnp.sin(theta)
        zero, one = jnp.zeros_like(c), jnp.ones_like(c)
        return jnp.stack([jnp.stack([c, -s, zero, zero], axis=-1),
                          jnp.stack([s, c, zero, zero], axis=-1),
                          jnp.stack([zero, zero, one, zero], axis=-1),
                          jnp.stack([zero, zero, zero, one], axis=-1)], axis=-2)

    def f(q):
        T = None
        for i in range(7):
            joint = before[i] @ rot_z(q[..., i]) @ after[i]
            T = joint if T is None else T @ joint
        T = T @ flange
        return T[..., :3, :].reshape(q.shape[:-1] + (12,))

    return f


def _arm_casadi():
    import casadi as ca

    before = [ca.DM(m) for m in PANDA_BEFORE]
    after = [ca.DM(m) for m in PANDA_AFTER]

    def f(q):  # q: SX 7x1
        T = None
        for i in range(7):
            c, s = ca.cos(q[i]), ca.sin(q[i])
            rot_z = ca.vertcat(ca.horzcat(c, -s, 0, 0), ca.horzcat(s, c, 0, 0),
                               ca.horzcat(0, 0, 1, 0), ca.horzcat(0, 0, 0, 1))
            joint = ca.mtimes([before[i], rot_z, after[i]])
            T = joint if T is None else ca.mtimes(T, joint)
        T = ca.mtimes(T, ca.DM(PANDA_FLANGE_T))
        # CasADi is column-major: vec() of the transpose flattens T[:3, :] row by row,
        # matching NumPy's reshape.
        return ca.vec(T[:3, :].T)

    return f


def arm_problem() -> Problem:
    rng = np.random.default_rng(0)
    q = rng.uniform(-np.pi, np.pi, 7)
    return Problem("arm", "Franka Panda forward kinematics: 7 -> 12, trig-heavy, small, dense",
                   arm, _arm_torch, _arm_jax, _arm_casadi, None, q)


def arm_batch_problem(size: int = 10_000) -> Problem:
    rng = np.random.default_rng(0)
    Q = rng.uniform(-np.pi, np.pi, (size, 7))
    return Problem("arm_batch", f"arm at {size} configurations: ({size}, 12, 7)",
                   arm, _arm_torch, _arm_jax, _arm_casadi, None, Q[0], Q)


# ------------------------------------------------------------------------------- arm_cs
# The same kinematics written the other common way: each joint's transform as
# cos(q_i) * C_i + sin(q_i) * S_i + K_i with constant 4x4 matrices (mostly zeros), then
# chained with @.  BEFORE_i @ RotZ(q) @ AFTER_i is linear in (cos q, sin q, 1), which gives
# the three matrices (RotZ's parts: the cos entries, the sin entries and the constant ones).
_ROT_COS = np.diag([1.0, 1.0, 0.0, 0.0])
_ROT_SIN = np.array([[0, -1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
_ROT_ONE = np.diag([0.0, 0.0, 1.0, 1.0])
PANDA_C = np.stack([b @ _ROT_COS @ a for b, a in zip(PANDA_BEFORE, PANDA_AFTER, strict=True)])
PANDA_S = np.stack([b @ _ROT_SIN @ a for b, a in zip(PANDA_BEFORE, PANDA_AFTER, strict=True)])
PANDA_K = np.stack([b @ _ROT_ONE @ a for b, a in zip(PANDA_BEFORE, PANDA_AFTER, strict=True)])


def _arm_cs_with(cos, sin, C, S, K, flange):
    """arm_cs for one array library: q (7,) or (..., 7) -> (12,) or (..., 12)."""
    def f(q):
        T = None
        for i in range(7):
            c, s = cos(q[..., i])[..., None, None], sin(q[..., i])[..., None, None]
            joint = c * C[i] + s * S[i] + K[i]
            T = joint if T is None else T @ joint
        T = T @ flange
        return T[..., :3, :].reshape(q.shape[:-1] + (12,))
    return f


arm_cs = _arm_cs_with(np.cos, np.sin, PANDA_C, PANDA_S, PANDA_K, PANDA_FLANGE_T)


def _arm_cs_torch():
    import torch

    C, S, K, flange = (torch.from_numpy(a) for a in (PANDA_C, PANDA_S, PANDA_K, PANDA_FLANGE_T))
    return _arm_cs_with(torch.cos, torch.sin, C, S, K, flange)


def _arm_cs_jax():
    import jax.numpy as jnp

    C, S, K, flange = (jnp.asarray(a) for a in (PANDA_C, PANDA_S, PANDA_K, PANDA_FLANGE_T))
    return _arm_cs_with(jnp.cos, jnp.sin, C, S, K, flange)


def _arm_cs_casadi():
    import casadi as ca

    C, S, K = ([ca.DM(m) for m in a] for a in (PANDA_C, PANDA_S, PANDA_K))

    def f(q):  # q: SX 7x1
        T = None
        for i in range(7):
            joint = ca.cos(q[i]) * C[i] + ca.sin(q[i]) * S[i] + K[i]
            T = joint if T is None else ca.mtimes(T, joint)
        T = ca.mtimes(T, ca.DM(PANDA_FLANGE_T))
        return ca.vec(T[:3, :].T)  # row by row, as NumPy's reshape (CasADi is column-major)

    return f


def arm_cs_problem() -> Problem:
    rng = np.random.default_rng(0)
    q = rng.uniform(-np.pi, np.pi, 7)
    return Problem("arm_cs", "arm written as cos(q)*C + sin(q)*S + K with constant 4x4 "
                   "matrices: 7 -> 12", arm_cs, _arm_cs_torch, _arm_cs_jax, _arm_cs_casadi,
                   None, q)


# ------------------------------------------------------------------------------ broyden
def broyden_problem(n: int = 1000) -> Problem:
    def f(x):
        # x_0 = x_{n+1} = 0: shift with a constant zero instead of writing into an array.
        left = np.concatenate([np.zeros(1), x[:-1]])
        right = np.concatenate([x[1:], np.zeros(1)])
        return (3 - 2 * x) * x - left - 2 * right + 1

    def jacobian(x):
        J = np.zeros((x.size, x.size))
        i = np.arange(x.size)
        J[i, i] = 3 - 4 * x
        J[i[1:], i[:-1]] = -1.0
        J[i[:-1], i[1:]] = -2.0
        return J

    def torch_version():
        import torch

        def f_torch(x):
            zero = x.new_zeros(1)
            left = torch.cat([zero, x[:-1]])
            right = torch.cat([x[1:], zero])
            return (3 - 2 * x) * x - left - 2 * right + 1

        return f_torch

    def jax_version():
        import jax.numpy as jnp

        def f_jax(x):
            zero = jnp.zeros(1, dtype=x.dtype)
            left = jnp.concatenate([zero, x[:-1]])
            right = jnp.concatenate([x[1:], zero])
            return (3 - 2 * x) * x - left - 2 * right + 1

        return f_jax

    def casadi_version():
        import casadi as ca

        def f_casadi(x):  # x: SX nx1
            left = ca.vertcat(0, x[: n - 1])
            right = ca.vertcat(x[1:], 0)
            return (3 - 2 * x) * x - left - 2 * right + 1  # SX * is elementwise

        return f_casadi

    rng = np.random.default_rng(0)
    return Problem("broyden", f"Broyden tridiagonal: {n} -> {n}, banded and sparse",
                   f, torch_version, jax_version, casadi_version, jacobian,
                   rng.uniform(-1.0, 1.0, n), jacobian_csr=broyden_jacobian_csr)


def broyden_jacobian_csr(x):
    """The hand-written Broyden Jacobian straight into CSR: row i holds -1, 3 - 4 x_i, -2.

    Written as a NumPy user would for speed (as bench/sparse.py's broyden_csr): all rows
    as (n, 3) blocks, the two entries that fall outside the matrix sliced off the ends.
    """
    import scipy.sparse as sp

    n = x.size
    data = np.empty((n, 3))
    data[:, 0] = -1.0
    data[:, 1] = 3 - 4 * x
    data[:, 2] = -2.0
    cols = (np.arange(n, dtype=np.int32)[:, None] + np.array([-1, 0, 1], np.int32)).ravel()
    indptr = 3 * np.arange(n + 1, dtype=np.int32) - 1  # row 0 and row n-1 hold 2 entries
    indptr[0], indptr[n] = 0, 3 * n - 2
    return sp.csr_array((data.ravel()[1:-1], cols[1:-1], indptr), shape=(n, n))


# ---------------------------------------------------------------------------------- mlp
def mlp_problem(width: int = 64) -> Problem:
    rng = np.random.default_rng(0)
    W1 = rng.standard_normal((width, width)) / 8
    b1 = rng.standard_normal(width) / 8
    W2 = rng.standard_normal((width, width)) / 8
    b2 = rng.standard_normal(width) / 8
    x = rng.standard_normal(width)

    def f(x):
        return np.tanh(W2 @ np.tanh(W1 @ x + b1) + b2)

    def jacobian(x):
        # chain rule: diag(1 - y^2) @ W2 @ diag(1 - h^2) @ W1
        h = np.tanh(W1 @ x + b1)
        y = np.tanh(W2 @ h + b2)
        return (1 - y**2)[:, None] * ((W2 * (1 - h**2)) @ W1)

    def torch_version():
        import torch

        w1, c1, w2, c2 = map(torch.from_numpy, (W1, b1, W2, b2))

        def f_torch(x):
            return torch.tanh(w2 @ torch.tanh(w1 @ x + c1) + c2)

        return f_torch

    def jax_version():
        import jax.numpy as jnp

        w1, c1, w2, c2 = map(jnp.asarray, (W1, b1, W2, b2))

        def f_jax(x):
            return jnp.tanh(w2 @ jnp.tanh(w1 @ x + c1) + c2)

        return f_jax

    def casadi_version():
        import casadi as ca

        w1, c1, w2, c2 = map(ca.DM, (W1, b1, W2, b2))

        def f_casadi(x):
            return ca.tanh(ca.mtimes(w2, ca.tanh(ca.mtimes(w1, x) + c1)) + c2)

        return f_casadi

    return Problem("mlp", f"tanh MLP {width}-{width}-{width}: {width} -> {width}, dense",
                   f, torch_version, jax_version, casadi_version, jacobian, x)


# ------------------------------------------------------------------------------ catalog
def all_problems() -> dict[str, Problem]:
    """Every timed problem, in BENCH.md's order (big_trace lives in run.py)."""
    return {name: make_problem(name) for name in PROBLEM_FACTORIES}


PROBLEM_FACTORIES = {"seed": seed_problem, "arm": arm_problem, "arm_cs": arm_cs_problem,
                     "broyden": broyden_problem, "mlp": mlp_problem,
                     "arm_batch": arm_batch_problem}
SIZED = {"broyden", "arm_batch", "mlp"}  # factories that take a size (n, N, width)


def make_problem(name: str, size: int | None = None) -> Problem:
    """A problem by name, at BENCH.md's size or at `size` (broyden's n, arm_batch's N).

    Deterministic: every process that asks for (name, size) gets the same data, which is how
    the benchmark's worker processes rebuild the parent's problems from a name and a size.
    """
    factory = PROBLEM_FACTORIES[name]
    if size is None:
        return factory()
    if name not in SIZED:
        raise ValueError(f"problem {name!r} has no size parameter")
    return factory(size)
