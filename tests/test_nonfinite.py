"""jacext/nonfinite.py: entries that met an inf or nan in a reverse sweep, a colouring's
reverse sweeps or a Jacobian tape are redone by forward sweeps, whose zero kills decide, so
that every mode gives the same Jacobian (README, next to "zero kills")."""
from __future__ import annotations

import numpy as np

import jacext as jx
from jacext.testing import jacobian_tape_slot


def test_cancellation_meets_an_infinite_partial_alike_in_every_mode():
    """np.sqrt(a*b - b*a) is exactly 0, where sqrt's partial is infinite. The rule (README,
    next to zero kills): the forward sweeps' zero kills decide, in every mode -- reverse
    sweeps, auto, sparse, batches, Jacobian tapes and vjp redo a non-finite result by
    forward sweeps.  Here the derivative of the cancelled term is 0: J = I by hand."""
    n = 40

    def f(x):
        r = np.roll(x, 1)
        return np.sqrt(x * r - r * x) + x

    x = np.linspace(0.5, 2.0, n)
    F = jx.compile(f, x)
    eye = np.eye(n)
    for mode in ("forward", "reverse", "auto"):
        np.testing.assert_array_equal(F.jacobian(x, mode=mode), eye)
        np.testing.assert_array_equal(F.jacobian(np.stack([x, 2 * x]), mode=mode),
                                      np.stack([eye, eye]))
        np.testing.assert_array_equal(F.jacobian(x, mode=mode, sparse=True).toarray(), eye)
    out = np.empty((n, n))
    F.jacobian(x, mode="reverse", out=out)
    np.testing.assert_array_equal(out, eye)
    sj = F.jacobian(np.stack([x, 2 * x]), sparse=True)
    np.testing.assert_array_equal(sj.toarray()[1], eye)
    for _ in range(40):                    # past the Jacobian tapes' thresholds
        np.testing.assert_array_equal(F.jacobian(x), eye)
        np.testing.assert_array_equal(F.jacobian(np.stack([x] * 8))[3], eye)
    u = np.linspace(-1.0, 1.0, n)
    u[3] = 0.0
    np.testing.assert_array_equal(F.vjp(x, u)[1], u)
    np.testing.assert_array_equal(F.vjp(np.stack([x, x]), u)[1], np.stack([u, u]))
    np.testing.assert_array_equal(F.jvp(x, u)[1], u)
    # a derivative that is truly infinite stays so in both modes
    G = jx.compile(np.sqrt, np.zeros(2))
    for mode in ("forward", "reverse"):
        assert np.isinf(G.jacobian(np.zeros(2), mode=mode)[0, 0])


def test_a_reverse_jacobian_tapes_batch_redoes_its_non_finite_rows_forward():
    """A scalar of 40 inputs runs reverse.  In a batch past its Jacobian tape's threshold,
    each block's entries hold a nan (the tape multiplies sqrt's infinite partial by the
    cancelled difference's zero), so the block goes point by point through the reverse
    sweeps, which give nan too; those rows go again by forward sweeps in C, whose zero
    kills give the gradient of the x term alone: ones, as at one point."""
    n = 40

    def f(x):
        r = np.roll(x, 1)
        return np.sum(np.sqrt(x * r - r * x) + x)

    X = np.random.default_rng(3).uniform(0.5, 2.0, (130, n))
    F = jx.compile(f, X[0])
    ones = np.ones((130, n))
    slot = jacobian_tape_slot(F, mode="reverse")
    for _ in range(100):                   # the sweeps, until the ski rental builds the tape
        np.testing.assert_array_equal(F.jacobian(X), ones)
        if slot.current is not None:
            break
    assert slot.current is not None
    for threads in (1, 2):
        np.testing.assert_array_equal(F.jacobian(X, threads=threads), ones)
        out = np.full((130, n), 7.0)
        F.jacobian(X, threads=threads, out=out)
        np.testing.assert_array_equal(out, ones)
        value, J = F.value_and_jacobian(X, threads=threads)
        np.testing.assert_array_equal(J, ones)
        np.testing.assert_allclose(value, X.sum(axis=1), rtol=1e-14)
    np.testing.assert_array_equal(F.jacobian(X[7]), np.ones(n))
