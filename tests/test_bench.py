"""The benchmark harness (bench/): problem definitions, checks, workers and a --quick run.

The problems are written once per framework; these tests hold the definitions to each other
with whichever frameworks are installed (a missing one is skipped, as the benchmark reports
it missing). The harness itself runs end to end with jacext alone so that it cannot rot.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not os.path.exists(os.path.join(ROOT, "bench", "run.py")):
    pytest.skip("bench/ is not part of this tree (an sdist)", allow_module_level=True)
if os.environ.get("JACEXT_TEST_INSTALLED") == "1":
    pytest.skip("the benchmark harness runs against the source checkout",
                allow_module_level=True)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench import problems as P  # noqa: E402
from bench import reference  # noqa: E402

# BENCH.md's problems, plus small sizes of the sized ones (the scaling sections use them)
CASES = [(name, None) for name in P.PROBLEM_FACTORIES] + [("broyden", 10), ("arm_batch", 3)]
IDS = [name if size is None else f"{name}-{size}" for name, size in CASES]


def problem(name, size):
    return P.make_problem(name, size)


def close(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------ NumPy's own definitions
def test_seed_is_the_documented_one():
    p = problem("seed", None)
    np.testing.assert_array_equal(p.jacobian(p.x), [[12, 0], [0, 27]])


@pytest.mark.parametrize("name,size", [c for c in CASES if c[0] in ("seed", "broyden", "mlp")])
def test_hand_written_jacobian_matches_the_complex_step(name, size):
    p = problem(name, size)
    close(p.jacobian(p.x), reference.complex_step_jacobian(p.numpy, p.x))


@pytest.mark.parametrize("n", [2, 3, 10, 1000])
def test_broyden_csr_is_the_dense_hand_written_jacobian(n):
    p = P.broyden_problem(n)
    np.testing.assert_array_equal(p.jacobian_csr(p.x).toarray(), p.jacobian(p.x))


def test_arm_broadcasts_over_a_batch():
    p = problem("arm_batch", 5)
    close(p.numpy(p.batch), np.stack([p.numpy(q) for q in p.batch]))
    assert p.jacobian_shape == (5, 12, 7)


def test_problems_are_deterministic():
    a, b = problem("arm_batch", 7), problem("arm_batch", 7)
    np.testing.assert_array_equal(a.batch, b.batch)
    np.testing.assert_array_equal(problem("mlp", None).x, problem("mlp", None).x)


def test_panda_at_zero_is_the_known_pose():
    # All joints at zero: the flange sits at x = 0.088, z = 0.333 + 0.316 + 0.384 - 0.107.
    T = P.arm(np.zeros(7)).reshape(3, 4)
    close(T[:, 3], [0.088, 0.0, 0.333 + 0.316 + 0.384 - 0.107])
    close(T[:, :3], np.diag([1.0, -1.0, -1.0]))


# ---------------------------------------------------------- the same problems, other frameworks
def evaluate(framework, p, x):
    """f(x) in the framework, as a NumPy array of the NumPy function's shape."""
    if framework == "torch":
        import torch

        return p.torch()(torch.from_numpy(x)).numpy()
    if framework == "jax":
        return np.asarray(p.jax()(x))
    import casadi as ca

    s = ca.SX.sym("x", x.shape[-1])
    F = ca.Function("f", [s], [p.casadi()(s)])
    rows = [np.asarray(F(q)).ravel() for q in np.atleast_2d(x)]
    return np.stack(rows).reshape(p.numpy(x).shape)


def jacobian(framework, p, x):
    if framework == "torch":
        import torch

        return torch.func.jacrev(p.torch())(torch.from_numpy(x)).numpy()
    if framework == "jax":
        import jax

        return np.asarray(jax.jacfwd(p.jax())(x))
    import casadi as ca

    s = ca.SX.sym("x", x.size)
    F = ca.Function("J", [s], [ca.densify(ca.jacobian(p.casadi()(s), s))])
    return np.asarray(F(x)).reshape(p.out_shape + x.shape)


@pytest.fixture(scope="module")
def x64():
    """JAX in float64, as the benchmark runs it; restored afterwards."""
    jax = pytest.importorskip("jax")
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)


@pytest.fixture(params=["torch", "jax", "casadi"])
def framework(request):
    pytest.importorskip(request.param)
    if request.param == "jax":
        request.getfixturevalue("x64")
    return request.param


@pytest.mark.parametrize("name,size", CASES, ids=IDS)
def test_values_agree_across_frameworks(framework, name, size):
    p = problem(name, size)
    x = p.input if p.batch is None else p.batch[:5]
    close(evaluate(framework, p, x), p.numpy(x))


@pytest.mark.parametrize("name,size", [c for c in CASES if c[0] != "arm_batch"],
                         ids=[i for c, i in zip(CASES, IDS, strict=True) if c[0] != "arm_batch"])
def test_jacobians_agree_across_frameworks(framework, name, size):
    p = problem(name, size)
    want = reference.complex_step_jacobian(p.numpy, p.x)
    np.testing.assert_allclose(jacobian(framework, p, p.x), want, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------ the checks
def test_check_accepts_agreement_and_names_a_disagreement():
    p = P.broyden_problem(50)
    J = p.jacobian(p.x)
    for kind in ("dense", "csr"):
        ref = reference.independent(p, p.x, kind)
        reference.check(J, ref, "same")
        reference.check(p.jacobian_csr(p.x), ref, "sparse result")
        bad = J.copy()
        bad[3, 40] = 1e-6  # outside the band: must not pass as "zero"
        with pytest.raises(reference.Disagreement, match="row 3, column 40|index \\(3, 40\\)"):
            reference.check(bad, ref, "bad")
        bad = J.copy()
        bad[7, 7] *= 1 + 1e-7
        with pytest.raises(reference.Disagreement):
            reference.check(bad, ref, "bad")
    with pytest.raises(reference.Disagreement, match="shape"):
        reference.check(J[:, :-1], reference.independent(p, p.x, "dense"), "shape")


def test_check_of_a_sampled_batch():
    p = problem("arm_batch", 3000)
    ref = reference.independent(p, p.batch, "rows")
    J = reference.complex_step_jacobian(p.numpy, p.batch)
    reference.check(J, ref, "full")
    J[int(ref.rows[10]), 2, 3] += 1e-3
    with pytest.raises(reference.Disagreement, match=f"index \\({int(ref.rows[10])}, 2, 3\\)"):
        reference.check(J, ref, "bad")
    J[int(ref.rows[10]), 2, 3] = np.nan
    with pytest.raises(reference.Disagreement):
        reference.check(J, ref, "nan")


# ------------------------------------------------------------------------------ the workers
def test_a_cell_that_overruns_is_killed_and_the_worker_restarts(tmp_path):
    from bench import worker

    pool = worker.Pool(1, log_dir=str(tmp_path))
    try:
        assert pool.start("numpy")["status"] == "ok"
        first = pool.workers["numpy"][0]
        with pytest.raises(worker.Timeout):
            pool.request("numpy", {"op": "sleep", "seconds": 60}, timeout=1.0)
        assert not first.is_alive()
        reply = pool.request("numpy", {"op": "build", "key": ("seed", None, "numpy-hand")}, 60)
        assert reply["status"] == "ok"
        reply = pool.request("numpy", {"op": "repeat", "key": ("seed", None, "numpy-hand"),
                                       "number": 3}, 60)
        assert reply["per_call_ns"] > 0
        assert pool.restarts == {"numpy": 1}
    finally:
        pool.close()


def test_an_unknown_framework_is_an_error_not_a_hang(tmp_path):
    from bench import worker

    pool = worker.Pool(1, log_dir=str(tmp_path))
    try:
        assert pool.start("fortran")["status"] == "error"
    finally:
        pool.close()


# ------------------------------------------------------------------ the command, end to end
def run_bench(args, tmp_path, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "jacext", "bench", *args,
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_quick_run_with_jacext_alone(tmp_path):
    """The quick run's output, end to end.  Not its speed (bench/README.md quotes measured
    runs): the cells get minutes instead of --quick's 10 s, so that a machine loaded by other
    work cannot turn a slow cell (arm_batch's first call, say) into a failure here."""
    proc = run_bench(["--quick", "--peers", "jacext", "--cell-limit", "300"], tmp_path,
                     timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    rows = report["results"]
    assert {r["framework"] for r in rows} == {"jacext"}
    table = {(r["problem"], r["peer"]): r for r in rows if r["section"] == "table"}
    for name in P.PROBLEM_FACTORIES:
        row = table[(name, "jacext")]
        assert row["status"] == "ok" and row["median_ns"] > 0, row
        assert row["checked_against"] in ("hand-written", "complex-step")
        assert table[(name, "jacext-out")]["checked_against"] == "jacext"
    sections = {r["section"] for r in rows}
    assert sections == {"table", "broyden_scaling"}      # --quick leaves arm_scaling out
    sparse = [r for r in rows if r["peer"] == "jacext-sparse"]
    assert sparse and all(r["status"] == "ok" for r in sparse)
    assert "| seed | jacext |" in proc.stdout
    assert "OMP_NUM_THREADS=" in proc.stdout
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    for name in ("time_per_jacobian.png", "scaling.png", "first_call.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_a_missing_framework_is_reported_missing(tmp_path):
    fake = tmp_path / "fake"
    (fake / "casadi").mkdir(parents=True)
    (fake / "casadi" / "__init__.py").write_text("raise ImportError('simulated: no casadi')\n")
    proc = run_bench(["--quick", "--problems", "seed", "--peers", "jacext,casadi",
                      "--no-plots"], tmp_path / "out",
                     env={"PYTHONPATH": str(fake) + os.pathsep + ROOT})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    casadi = [r for r in rows if r["framework"] == "casadi"]
    assert {r["peer"] for r in casadi} == {"casadi", "casadi-buffer"}
    assert all(r["status"] == "missing" and "simulated" in r["message"] for r in casadi)
    assert "| seed | casadi | missing |" in proc.stdout


def test_bad_options_exit_2(tmp_path):
    assert run_bench(["--problems", "nope"], tmp_path).returncode == 2
    assert run_bench(["--peers", "nope"], tmp_path).returncode == 2


def test_second_order_quick_run_with_jacext_alone(tmp_path, capsys):
    """bench/second_order.py end to end with jacext only: every cell ok, and the same
    Hessian as the hand-derived one of the chained Rosenbrock."""
    from bench import second_order as S

    out = tmp_path / "so.json"
    assert S.main(["--quick", "--peers", "jacext", "--no-first-calls", "--no-solves",
                   "--problems", "rosen_dense,small_dense", "--repeats", "1",
                   "--min-time", "0.001", "--json", str(out)]) == 0
    cells = json.loads(out.read_text())["cells"]
    assert [c["problem"] for c in cells] == ["rosen_dense", "small_dense"]
    for c in cells:
        assert c["results"]["jacext"]["status"] == "ok"
        assert c["results"]["jacext"]["median_s"] > 0
    x, v = S.point(100)
    H = S.make_jacext("rosen", "dense", x)(x, v)
    want = np.diag(np.r_[1200 * x[:-1] ** 2 - 400 * x[1:] + 2, 0.0] + np.r_[0.0, [200.0] * 99])
    want += np.diag(-400 * x[:-1], 1) + np.diag(-400 * x[:-1], -1)
    np.testing.assert_allclose(H, want, rtol=1e-12, atol=1e-9)
    assert "rosen_dense n=100 | jacext" in capsys.readouterr().out


# ---- bench/scipy_solvers.py: its problems, held to finite differences and to JAX ----

def test_scipy_solver_problems():
    from bench import scipy_solvers as S

    S.SIZES.update(broyden=30, bruss=10)
    try:
        jax, jnp = S._jax()
        for name, f in S.FUNCS.items():
            x = S.START[name]() + 0.01
            ivp = name.startswith("bdf")
            args = (0.5, x) if ivp else (x,)
            J = S.jac_for("jacext", name, f)["jac"](*args)
            J = J.toarray() if hasattr(J, "toarray") else J
            h = 1e-6 * np.maximum(np.abs(x), 1.0)        # central differences, column by column
            fd = np.stack([(f(*args[:-1], x + h[k] * e) - f(*args[:-1], x - h[k] * e))
                           / (2 * h[k]) for k, e in enumerate(np.eye(x.size))], axis=1)
            np.testing.assert_allclose(J, fd, rtol=1e-5, atol=1e-6 * np.abs(fd).max())
            if name in S.SPARSE:      # the pattern given to SciPy's differences covers J
                assert np.all(S.PATTERNS[name]().toarray()[J != 0] != 0)
            if jax is not None:
                np.testing.assert_allclose(f(*args, xp=jnp), f(*args), rtol=1e-13)
    finally:
        S.SIZES.update(broyden=2000, bruss=S.BRUSS_N)
