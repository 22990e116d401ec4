"""jacext/finite.py: finite-input tapes.  Where every input is within +-FOLD_INPUT_BOUND, a
range analysis proves x finite and ``x * 0.0`` folds to 0.0; a point with an input outside
(an inf, a nan, a huge number) runs the exact tape.  The reference throughout is the same
function on its exact tape alone (``jacext.testing.exact_function``): outside the bound
the results are its own bit for bit, inside they equal it up to the sign of a zero."""
from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest
from jacext._tape import Tape
from test_ops import NAMES, REF

import jacext as jx
from jacext import finite, plan
from jacext.testing import exact_function, jacobian_tape_slot, op_value

INF, NAN = np.inf, np.nan
BIG = 10.0 * plan.FOLD_INPUT_BOUND


def same_bits(a, b):
    """Equal arrays, nan where nan and the sign of every zero alike."""
    a, b = np.asarray(a), np.asarray(b)
    return (a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
            and np.array_equal(np.signbit(a), np.signbit(b)))


def equal_up_to_zero_sign(a, b):
    return np.asarray(a).shape == np.asarray(b).shape and np.array_equal(a, b, equal_nan=True)


def points(n, rng):
    """Finite points, then each input in turn at inf, -inf, nan, +-10x the bound, and
    0 / -0 everywhere."""
    base = rng.uniform(-2.0, 2.0, size=n)
    out = [base, rng.uniform(-2.0, 2.0, size=n), np.zeros(n), -np.zeros(n)]
    for k in range(n):
        for v in (INF, -INF, NAN, BIG, -BIG):
            p = base.copy()
            p[k] = v
            out.append(p)
    return np.array(out)


def outside(p):
    return not (np.abs(p) <= plan.FOLD_INPUT_BOUND).all()


def close(a, b):
    """Equal to rounding (the same nans)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and np.allclose(a, b, rtol=1e-13, atol=1e-15, equal_nan=True)


def check_against_exact(F, P, modes=("forward", "reverse", "auto")):
    """Values and Jacobians (every mode, single points and the batch of them all) of the
    folded F against its exact tape alone.
(Outside the bound everything is the exact tape's, up to the sign of a zero entry where
    its own paths -- sweeps, Jacobian tapes -- differ so.  Inside, values are the exact
    tape's up to the sign of a zero, derivatives to rounding: the folded tape's sums of
    products may run in another order, as where a folded 0.0 - x became -x and its sign
    moved into a sum.)"""
    E = exact_function(F)
    assert F.tape.exact is not None and E.tape.exact is None
    alike = equal_up_to_zero_sign
    with np.errstate(all="ignore"):
        for p in P:
            assert (same_bits if outside(p) else alike)(F(p), E(p)), p
            d = alike if outside(p) else close
            for mode in modes:
                assert d(F.jacobian(p, mode=mode), E.jacobian(p, mode=mode)), (p, mode)
            y, J = F.value_and_jacobian(p)
            assert alike(y, E(p)) and d(J, E.jacobian(p)), p
            v = np.linspace(-1.0, 1.0, p.shape[0])
            assert d(F.jvp(p, v)[1], E.jvp(p, v)[1]), p
            u = np.linspace(1.0, 2.0, F.n_outputs).reshape(F.out_shapes[0])
            assert d(F.vjp(p, u)[1], E.vjp(p, u)[1]), p
        for mode in modes:
            got = F.jacobian(P, mode=mode)
            want = np.stack([E.jacobian(p, mode=mode) for p in P])
            for k, p in enumerate(P):
                assert (alike if outside(p) else close)(got[k], want[k]), (mode, p)
        got = F(P)
        assert alike(got, np.stack([E(p) for p in P]))
        for k, p in enumerate(P):
            if outside(p):
                assert same_bits(got[k], E(p)), p


# ------------------------------------------------------------------ every op --

def _op_function(name):
    """Each op on raw inputs and on bounded values (sin, cos), its results times zero
    constants next to terms that stay: what folds depends on the op's range rule."""
    fn, arity = REF[name].fn, REF[name].arity

    def f(x):
        raw = fn(*[x[k] for k in range(arity)])
        bounded = fn(*[np.sin(x[k]) if k % 2 else np.cos(x[k]) for k in range(arity)])
        return np.stack([raw * 0.0 + x[0], bounded * 0.0 + x[1], np.sin(x[2]) * 0.0 + raw,
                         bounded * 0.0 + np.cos(x[3]) * 0.0, bounded + x[2],
                         np.sum(np.sin(x) * 0.0) + x[3]])   # (enough to fold: FOLD_MIN_SAVED)
    return f


@pytest.mark.parametrize("name", NAMES)
def test_every_op_gives_the_exact_results_outside_the_bound(name):
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    with np.errstate(all="ignore"):
        F = jx.compile(_op_function(name), np.full(4, 0.5))
    assert F.n_instructions < F.exact_tape.n_instructions
    check_against_exact(F, points(4, rng))


@pytest.mark.parametrize("name", NAMES)
def test_ranges_hold_at_every_instruction(name):
    """Each instruction's value at points within the bound (the bound itself included)
    lies in the interval the analysis gives it (by a scalar walk of the exact tape with
    the op table's own values: ``op_value``)."""
    with np.errstate(all="ignore"):
        F = jx.compile(_op_function(name), np.full(4, 0.5))
    arrays = F.exact_tape.arrays()
    B = plan.FOLD_INPUT_BOUND
    lo, hi = finite.ranges(arrays, B)
    rng = np.random.default_rng(7)
    pts = [rng.uniform(-3, 3, 4) for _ in range(30)] + [np.full(4, B), np.full(4, -B),
                                                       np.array([B, -B, 0.0, -0.0]),
                                                       rng.uniform(-B, B, 4)]
    proven = np.isfinite(lo) & np.isfinite(hi)
    assert proven.any()
    for p in pts:
        vals = _walk(arrays, p)
        assert ((vals >= lo) & (vals <= hi))[proven].all(), (name, p)


def _walk(arrays, x):
    """Each instruction's value, one at a time."""
    from jacext.ops import A_IMM, ARITY, B_IMM, OP_MASK
    slot = np.zeros(int(arrays["n_slots"]))
    n_in = int(arrays["n_in"])
    slot[:n_in] = x
    consts = np.asarray(arrays["const_value"])
    slot[n_in:n_in + consts.shape[0]] = consts
    out = np.empty(len(arrays["op"]))
    with np.errstate(all="ignore"):
        for i, w in enumerate(np.asarray(arrays["op"]).tolist()):
            op = w & OP_MASK
            a = arrays["imm"][i] if w & A_IMM else slot[arrays["a"][i]]
            b = arrays["imm"][i] if w & B_IMM else slot[arrays["b"][i]]
            s = slot[arrays["s"][i]] if ARITY[op] == 3 else 0.0
            slot[arrays["dst"][i]] = out[i] = op_value(op, a, b, s)
    return out


# ------------------------------------------------------------ users' kinematics --

def _rot(axis):
    """(C, S, K): R(q) = cos(q) C + sin(q) S + K for a rotation about a unit axis, as
    constant 4x4 matrices full of zeros (the way arm_cs in bench/problems.py writes them)."""
    k = np.asarray(axis, dtype=float)
    Kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    C, S, K = np.zeros((4, 4)), np.zeros((4, 4)), np.zeros((4, 4))
    C[:3, :3] = np.eye(3) - np.outer(k, k)
    S[:3, :3] = Kx
    K[:3, :3] = np.outer(k, k)
    K[3, 3] = 1.0
    return C, S, K


JOINTS = [(_rot(ax), off) for ax, off in [((0, 0, 1), (0, 0, 0.33)), ((0, 1, 0), (0, 0, 0.3)),
                                          ((0, 0, 1), (0.1, 0, 0.3)), ((1, 0, 0), (0, 0.2, 0))]]


def chain(q):
    T = np.eye(4)
    for k, ((C, S, K), off) in enumerate(JOINTS):
        Ti = np.cos(q[k]) * C + np.sin(q[k]) * S + K
        Ti[:3, 3] = off
        T = T @ Ti
    return np.concatenate([T[:3, 3], T[:3, :3].reshape(-1)])


def chain_by_hand(q):
    """The same pose with the zeros of C, S and K left out by hand."""
    T = np.eye(4)
    for k, ((C, S, K), off) in enumerate(JOINTS):
        Ti = np.zeros((4, 4))      # a buffer made inside the function (it traces)
        Ti[3, 3] = 1.0
        Ti[:3, :3] = np.cos(q[k]) * C[:3, :3] + np.sin(q[k]) * S[:3, :3] + K[:3, :3]
        Ti[:3, 3] = off
        T = T @ Ti
    return np.concatenate([T[:3, 3], T[:3, :3].reshape(-1)])


def test_kinematics_with_constant_matrices_fold_to_the_hand_written_tape():
    q = np.array([0.3, -0.7, 1.1, 0.4])
    F = jx.compile(chain, q)
    H = jx.compile(chain_by_hand, q)
    assert F.exact_tape.n_instructions > 1.5 * H.n_instructions
    assert F.n_instructions <= 1.1 * H.n_instructions
    np.testing.assert_allclose(F(q), chain(q), rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(F.jacobian(q), H.jacobian(q), rtol=1e-14, atol=1e-15)
    assert "finite inputs: folded from" in repr(F)
    check_against_exact(F, points(4, np.random.default_rng(3)))


def test_jacobian_tapes_and_batches_take_the_exact_tape_outside_the_bound():
    """Past the Jacobian tapes' thresholds (single points and batches): points outside the
    bound still get the exact tape's results, in a batch whose other points do not."""
    q = np.array([0.3, -0.7, 1.1, 0.4])
    F = jx.compile(chain, q)
    E = exact_function(F)
    rng = np.random.default_rng(5)
    X = rng.uniform(-2, 2, size=(3000, 4))
    X[[7, 900, 2999], [0, 2, 3]] = [INF, NAN, -BIG]
    for _ in range(3):
        J = F.jacobian(X)
    assert jacobian_tape_slot(F, mode="forward").current is not None
    for k in range(0, 3000, 97):
        assert equal_up_to_zero_sign(J[k], E.jacobian(X[k])), k
    with np.errstate(all="ignore"):
        for k in (7, 900, 2999):
            assert equal_up_to_zero_sign(J[k], E.jacobian(X[k])), k
            assert np.isnan(J[k]).any() == (k != 2999), k      # -BIG: finite, exact tape
        for _ in range(300):
            F.jacobian(X[0])
        for k in (0, 7, 900, 2999):
            assert equal_up_to_zero_sign(F.jacobian(X[k]), E.jacobian(X[k])), k
            out = np.empty((12, 4))
            assert F.jacobian(X[k], out=out) is out
            assert equal_up_to_zero_sign(out, E.jacobian(X[k]))
            assert same_bits(F(X[k]), E(X[k])) or not outside(X[k])
    assert equal_up_to_zero_sign(F.jacobian(X, threads=2), J)


def test_sparse_pattern_is_the_exact_tapes():
    """A pattern (and its colourings) that holds at every point: the exact tape's."""
    def f(x):
        return np.concatenate([np.sin(x[:-1]) * 0.0 + x[1:] ** 2, [np.cos(x[0]) * x[-1]]])

    x = np.linspace(0.1, 1.0, 40)
    F = jx.compile(f, x)
    E = exact_function(F)
    assert F.n_instructions < E.n_instructions
    assert (F.sparsity() != E.sparsity()).nnz == 0
    for p in (x, np.where(np.arange(40) == 5, INF, x), np.where(np.arange(40) == 9, NAN, x)):
        for mode in ("auto", "forward", "reverse"):
            got = F.jacobian(p, sparse=True, mode=mode).toarray()
            want = E.jacobian(p, sparse=True, mode=mode).toarray()
            assert equal_up_to_zero_sign(got, want), mode
    P = np.stack([x, np.where(np.arange(40) == 5, INF, x)] * 20)
    got = F.jacobian(P, sparse=True).toarray()
    assert equal_up_to_zero_sign(got, np.stack([E.jacobian(p) for p in P]))


def test_second_order_and_composition_build_on_the_exact_tape():
    q = np.array([0.3, -0.7, 1.1, 0.4])
    F = jx.compile(chain, q)
    E = exact_function(F)
    w = np.linspace(1.0, 2.0, 12)
    alike = equal_up_to_zero_sign
    for p in (q, np.array([0.3, INF, 1.1, 0.4]), np.array([NAN, -0.7, 1.1, 0.4])):
        with np.errstate(all="ignore"):
            assert alike(F.jacobian_function()(p), E.jacobian_function()(p))
            assert alike(F.hessian(p, w), E.hessian(p, w))
            v = np.array([1.0, -1.0, 0.5, 2.0])
            assert alike(F.hvp(p, v, w), E.hvp(p, v, w))
    # the derived Functions fold their own tapes
    assert F.jacobian_function().tape.exact is not None
    # composition inlines the exact tape, and the caller's tape folds it
    G = jx.compile(lambda x: F(x) * 2.0, q)
    assert G.tape.exact is not None
    assert equal_up_to_zero_sign(G.jacobian(q), 2.0 * F.jacobian(q))
    bad = np.array([0.3, INF, 1.1, 0.4])
    with np.errstate(all="ignore"):
        assert same_bits(G(bad), 2.0 * E(bad))


def test_pickles_keep_both_tapes_and_threads_share_them():
    q = np.array([0.3, -0.7, 1.1, 0.4])
    F = jx.compile(chain, q)
    F2 = pickle.loads(pickle.dumps(F))
    assert F2.n_instructions == F.n_instructions
    assert F2.exact_tape.n_instructions == F.exact_tape.n_instructions
    t2 = pickle.loads(pickle.dumps(F.tape))
    assert t2.exact is not None and t2.n_instructions == F.n_instructions
    E = exact_function(F)
    pts = points(4, np.random.default_rng(11))
    want = [E.jacobian(p) for p in pts]
    bad = []

    def work():
        for _ in range(20):
            for p, w in zip(pts, want):
                if not equal_up_to_zero_sign(F2.jacobian(p), w):
                    bad.append(p)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad


def test_guarded_branches_fold_too():
    def f(q):
        if q[0] > 0:
            return chain(q)
        return chain(-q)

    q = np.array([0.3, -0.7, 1.1, 0.4])
    G = jx.compile(f, q)
    G(-q)
    assert len(G.tapes) == 2
    for T in G.tapes:
        assert T.tape.exact is not None
    for p in (q, -q, np.array([0.3, NAN, 1.1, 0.4])):
        with np.errstate(all="ignore"):
            want = jx.jacobian(chain, p if p[0] > 0 else -p) * (1 if p[0] > 0 else -1)
            assert equal_up_to_zero_sign(G.jacobian(p), want)


def test_nothing_to_fold_keeps_one_tape():
    F = jx.compile(lambda x: np.sin(x) * x, np.ones(3))
    assert F.tape.exact is None and F.exact_tape is F.tape
    assert "finite inputs" not in repr(F)
    H = jx.compile(lambda x: np.exp(x * x * x * x) * 0.0 + x, np.ones(3))   # may overflow
    assert H.tape.exact is None
    # folding that saves less than the check of the inputs costs (plan.FOLD_MIN_SAVED)
    small = jx.compile(lambda x: np.exp(x) + x * 0.0, np.ones(100))
    assert small.tape.exact is None and small.n_instructions == 300
    assert finite.folded(small.tape) is None


def test_the_bound_is_inclusive_and_a_nan_fails_it():
    """The sign of x * 0.0's zero shows which tape ran: the folded one gives +0.0, the
    exact one NumPy's -0.0 for a negative x."""
    F = jx.compile(lambda x: np.concatenate([x * 0.0, np.sin(x) * 0.0, np.cos(x) * 0.0]),
                   np.ones(2))
    assert F.tape.exact is not None
    B = plan.FOLD_INPUT_BOUND
    assert np.signbit(F(np.array([-B, -1.0]))[:2]).tolist() == [False, False]
    assert np.signbit(F(np.array([np.nextafter(-B, -INF), -1.0]))[:2]).tolist() == [True, True]
    with np.errstate(all="ignore"):
        assert np.isnan(F(np.array([INF, -1.0]))[:2]).tolist() == [True, False]
        assert np.signbit(F(np.array([NAN, -1.0]))[1])
        assert np.signbit(F(np.array([[-1.0, NAN], [-1.0, -1.0]]))[:, :2]).tolist() == [
            [True, False], [False, False]]


def test_malformed_folded_tapes_are_refused():
    q = np.array([0.3, -0.7, 1.1, 0.4])
    F = jx.compile(chain, q)
    arrays = F.tape.arrays()
    with pytest.raises(ValueError, match="exact tape"):
        jx.Function(arrays, F.arg_shapes, F.out_shapes, False, "f")
    for bad in (-1.0, NAN):
        with pytest.raises(ValueError):
            Tape(dict(arrays, input_bound=bad))
    other = jx.compile(lambda x: x * 1.5, np.ones(3)).tape
    with pytest.raises(ValueError):
        Tape(arrays, exact=other)            # another input count
    with pytest.raises(ValueError):
        Tape({k: v for k, v in arrays.items() if k != "input_bound"}, exact=F.exact_tape)
