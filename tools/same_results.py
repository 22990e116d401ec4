"""Dump every result jacext gives on the bench problems, to compare two checkouts bit for bit.

    cd <checkout A> && python tools/same_results.py dump /tmp/a.npz
    cd <checkout B> && python tools/same_results.py dump /tmp/b.npz
    python tools/same_results.py compare /tmp/a.npz /tmp/b.npz

Uses the public API only, so any two versions of the engine can be compared: tape sizes
(instructions, slots), values, and Jacobians in every mode -- forward, reverse, auto,
out=, value_and_jacobian, sparse, jvp/vjp -- at single points and batches, before the
Jacobian tapes exist and after enough calls have built them.  Points include inf, nan,
signed zeros and out-of-domain values.  Restructuring steps that promise "behaviour
unchanged" run it (the closing note of such a step quotes the compare output).
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.join(os.getcwd(), "bench"))

import jacext as jx  # noqa: E402
from bench import problems  # noqa: E402


def bratu(k, lam=6.0):
    h2 = (k + 1.0) ** 2

    def f(u):
        U = u.reshape(k, k)
        zr, zc = np.zeros((1, k)), np.zeros((k, 1))
        up = np.concatenate([zr, U[:-1]], axis=0)
        down = np.concatenate([U[1:], zr], axis=0)
        left = np.concatenate([zc, U[:, :-1]], axis=1)
        right = np.concatenate([U[:, 1:], zc], axis=1)
        return ((up + down + left + right - 4 * U) * h2 + lam * np.exp(U)).reshape(-1)
    return f


def nasty(x):
    """Ops whose partials meet inf, nan, signed zeros and kinks."""
    a, b = x[:3], x[3:]
    return np.concatenate([
        np.where(a > 0, np.sqrt(np.abs(a)), 0.0) * b, a ** 3.0 + np.abs(b) ** 1.5,
        np.maximum(a, b) + np.fmin(np.log(np.abs(a) + 1.0), b), np.arctan2(a, b),
        np.hypot(a, b) + np.logaddexp(a, b), a % 2.0 - np.floor(b), b ** a])


def cases():
    rng = np.random.default_rng(7)
    out = {}
    for name in ("seed", "arm", "broyden", "mlp"):
        p = problems.make_problem(name)
        out[name] = (p.numpy, p.x)
    out["bratu32"] = (bratu(32), rng.uniform(0, 0.5, 32 * 32))
    out["nasty"] = (nasty, np.array([0.5, -0.0, 2.0, 1.5, 0.0, -3.0]))
    return out


def special_rows(x, rng):
    n = 101 if x.size <= 64 else 14    # dense batches of the large problems stay small
    X = x + 0.1 * rng.standard_normal((n,) + x.shape)
    X[3].flat[0] = np.inf
    X[7].flat[-1] = np.nan
    X[11].flat[0] = 0.0
    X[12].flat[0] = -0.0
    X[13] = -np.abs(X[13])
    return X


def dump(path):
    rng = np.random.default_rng(0)
    res = {}
    for name, (f, x) in cases().items():
        F = jx.compile(f, x)
        res[f"{name}/n_instr"] = np.array([F.n_instructions, F.n_slots])
        X = special_rows(x, rng)
        points = [x, X[3], X[7], X[11], X[12], X[13]]
        for phase in ("fresh", "tapes"):
            for k, p in enumerate(points):
                key = f"{name}/{phase}/p{k}"
                res[key + "/value"] = F(p)
                for mode in ("auto", "forward", "reverse"):
                    res[f"{key}/J_{mode}"] = F.jacobian(p, mode=mode)
                    J = np.empty_like(res[f"{key}/J_{mode}"])
                    F.jacobian(p, mode=mode, out=J)
                    res[f"{key}/Jout_{mode}"] = J
                    y, J = F.value_and_jacobian(p, mode=mode)
                    res[f"{key}/vJ_{mode}"] = np.concatenate([np.ravel(y), np.ravel(J)])
                    S = F.jacobian(p, sparse=True, mode=mode)
                    res[f"{key}/S_{mode}"] = np.concatenate([S.indptr, S.indices]).astype(float)
                    res[f"{key}/Sv_{mode}"] = S.data
                v = rng.standard_normal(x.shape)
                u = rng.standard_normal(np.shape(f(x)))
                res[f"{key}/jvp"] = np.concatenate([np.ravel(a) for a in F.jvp(p, v)])
                res[f"{key}/vjp"] = np.concatenate([np.ravel(a) for a in F.vjp(p, u)])
            key = f"{name}/{phase}/batch"
            res[key + "/value"] = F(X)
            for mode in ("auto", "forward", "reverse"):
                res[f"{key}/J_{mode}"] = F.jacobian(X, mode=mode)
                y, J = F.value_and_jacobian(X, mode=mode)
                res[f"{key}/vJ_{mode}"] = np.concatenate([np.ravel(y), np.ravel(J)])
                res[f"{key}/S_{mode}"] = F.jacobian(X, sparse=True, mode=mode).values
            V = rng.standard_normal(X.shape)
            res[f"{key}/jvp"] = np.concatenate([np.ravel(a) for a in F.jvp(X, V)])
            if phase == "fresh":   # enough points in every mode for every Jacobian tape
                for _ in range(-(-2100 // len(X))):
                    for mode in ("auto", "forward", "reverse"):
                        F.jacobian(X, mode=mode)
                        F.jacobian(X, sparse=True, mode=mode)
                        F.value_and_jacobian(X, mode=mode)
                for _ in range(2100):
                    F.jacobian(x)
                    F.jacobian(x, sparse=True)
    np.savez_compressed(path, **res)
    print(f"{len(res)} results written to {path}")


def compare(a_path, b_path):
    a, b = np.load(a_path), np.load(b_path)
    keys = sorted(set(a.files) | set(b.files))
    bad = []
    for k in keys:
        if k not in a.files or k not in b.files:
            bad.append((k, "missing on one side"))
            continue
        x, y = np.asarray(a[k], dtype=np.float64), np.asarray(b[k], dtype=np.float64)
        if x.shape != y.shape:
            bad.append((k, f"shapes {x.shape} vs {y.shape}"))
        elif not np.array_equal(x.view(np.uint64), y.view(np.uint64)):
            same_nan = np.isnan(x) & np.isnan(y)
            diff = (x.view(np.uint64) != y.view(np.uint64)) & ~same_nan
            if diff.any():
                zeros = bool(((x[diff] == 0) & (y[diff] == 0)).all())
                why = " (all of them zeros of opposite sign)" if zeros else ""
                bad.append((k, f"{int(diff.sum())} of {x.size} differ in their bits{why}"))
    for k, why in bad:
        print(f"DIFFERENT {k}: {why}")
    n_instr = {k.split("/")[0]: (a[k].tolist(), b[k].tolist()) for k in keys
               if k.endswith("/n_instr") and k in a.files and k in b.files}
    for name, (x, y) in n_instr.items():
        print(f"{name:10s} instructions, slots: {x} vs {y}")
    print(f"{len(keys) - len(bad)} of {len(keys)} results equal bit for bit (nan as nan)")
    return 1 if bad else 0


if __name__ == "__main__":
    if sys.argv[1] == "dump":
        dump(sys.argv[2])
    else:
        sys.exit(compare(sys.argv[2], sys.argv[3]))
