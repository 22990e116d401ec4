"""Property-based tests (Hypothesis) of the whole engine on random programs.

Random compositions of the op table's NumPy functions (tests/test_ops.py's ``REF``), over
one to three arguments of random shapes that broadcast against each other, are traced and
compiled (jacext/trace.py, jacext/numpy_rules.py, jacext/_graph.pyx, jacext/passes.pyx),
run by the single-point and batched sweeps (jacext/_tape.pyx, src_c/vm.c, src_c/batch.c) and
held to properties that need no hand-written expected value:

* values equal NumPy's own evaluation of the same function;
* forward, reverse and auto Jacobians agree (mode agreement), jvp and vjp agree with them;
* smooth programs: the Jacobian matches 6th-order central differences run by NumPy;
* a batch of points equals the loop of single points, bit for bit, in both modes.

Inputs stay inside every op's domain through small NumPy adapters (a logarithm's argument
is 0.5 + u**2, an arcsine's 0.9 tanh(u), an exponent's 3 tanh(u) ...), which are part of
the traced program.

The examples are derandomized (the same ones every run) and few, to keep the default suite
quick; ``JACEXT_PROPERTY_EXAMPLES=500 JACEXT_PROPERTY_SEED=random python -m pytest
tests/test_properties.py`` runs more of them with a fresh random seed, which Hypothesis
prints with a failure (``@seed(...)``), together with the failing program (its
``describe``) and a ``@reproduce_failure`` blob to replay it.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from test_ops import REF

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

import jacext as jx  # noqa: E402
from jacext.testing import assert_same_values, check_jacobian  # noqa: E402

_EXAMPLES = int(os.environ.get("JACEXT_PROPERTY_EXAMPLES", "20"))
_RANDOM = os.environ.get("JACEXT_PROPERTY_SEED") == "random"
PROPERTY = settings(max_examples=_EXAMPLES, deadline=None, derandomize=not _RANDOM,
                    print_blob=True, suppress_health_check=[HealthCheck.too_slow,
                                                            HealthCheck.data_too_large])

# ---------------------------------------------------------------- domains --
# the argument an op gets from a sub-expression u: kept inside its smooth domain


def _positive(u):
    return np.square(u) + 0.5


def _unit(u):
    return 0.9 * np.tanh(u)


def _bounded(u):
    return 3.0 * np.tanh(u)


ADAPT = {
    "SQRT": _positive, "LOG": _positive, "LOG2": _positive, "LOG10": _positive,
    "CBRT": _positive, "RECIPROCAL": _positive,
    "LOG1P": lambda u: np.square(u) - 0.5,
    "ARCSIN": _unit, "ARCCOS": _unit, "ARCTANH": _unit,
    "ARCCOSH": lambda u: np.square(u) + 1.5,
    "LOGIT": lambda u: 0.05 + 0.9 * np.exp(-np.square(u)),
    "EXP": _bounded, "EXP2": _bounded, "EXPM1": _bounded, "SINH": _bounded,
    "COSH": _bounded, "TAN": lambda u: 1.2 * np.tanh(u),
}
# binary ops: (adapter of a, adapter of b)
ADAPT2 = {
    "DIV": (None, _positive),
    "POW": (_positive, lambda v: 2.0 * np.tanh(v)),
    "MOD": (None, _positive), "FMOD": (None, _positive), "FLOOR_DIVIDE": (None, _positive),
    "LOGADDEXP": (_bounded, _bounded),
}

SMOOTH_UNARY = ["NEG", "SQUARE", "SQRT", "CBRT", "RECIPROCAL", "EXP", "EXP2", "EXPM1", "LOG",
                "LOG2", "LOG10", "LOG1P", "SIN", "COS", "TAN", "ARCSIN", "ARCCOS", "ARCTAN",
                "SINH", "COSH", "TANH", "ARCSINH", "ARCCOSH", "ARCTANH", "ERF", "ERFC",
                "EXPIT", "LOGIT"]
SMOOTH_BINARY = ["ADD", "SUB", "MUL", "DIV", "POW", "HYPOT", "ATAN2", "LOGADDEXP"]
KINKED_UNARY = ["ABS", "SIGN", "FLOOR", "CEIL", "RINT", "TRUNC"]
KINKED_BINARY = ["MAXIMUM", "MINIMUM", "FMAX", "FMIN", "MOD", "FMOD", "FLOOR_DIVIDE", "LESS",
                 "LESS_EQUAL", "GREATER", "GREATER_EQUAL", "EQUAL", "NOT_EQUAL", "HEAVISIDE"]
assert set(SMOOTH_UNARY + SMOOTH_BINARY + KINKED_UNARY + KINKED_BINARY + ["SELECT"]) == set(REF)
COMPARISONS = {"LESS", "LESS_EQUAL", "GREATER", "GREATER_EQUAL", "EQUAL", "NOT_EQUAL"}


# ---------------------------------------------------------------- programs --
# a program is a tree of tuples: ("arg", k), ("const", c), ("op", name, children...),
# ("sum", child, axis): evaluated by NumPy and traced by jacext alike


def evaluate(node, args):
    kind = node[0]
    if kind == "arg":
        return args[node[1]]
    if kind == "const":
        return node[1]
    if kind == "sum":
        value = evaluate(node[1], args)
        return np.sum(value, axis=-1, keepdims=True) if np.ndim(value) else value
    name, children = node[1], [evaluate(c, args) for c in node[2:]]
    fn = REF[name].fn
    if name == "SELECT":          # np.where(u > v, a, b)
        cond = np.greater(children[0], children[1])
        return fn(cond, children[2], children[3])
    if len(children) == 1:
        adapt = ADAPT.get(name)
        return fn(adapt(children[0]) if adapt else children[0])
    fa, fb = ADAPT2.get(name, (None, None))
    a, b = children
    out = fn(fa(a) if fa else a, fb(b) if fb else b)
    # a comparison's mask made a number before arithmetic, as users write it: NumPy's bool
    # arithmetic (exp of a bool array is float16, -mask an error) is not jacext's float64
    return out * 1.0 if name in COMPARISONS else out


def describe(node):
    kind = node[0]
    if kind == "arg":
        return f"x{node[1]}"
    if kind == "const":
        return repr(node[1])
    if kind == "sum":
        return f"sum({describe(node[1])}, axis=-1)"
    return f"{node[1].lower()}({', '.join(describe(c) for c in node[2:])})"


@st.composite
def programs(draw, n_args, unary, binary, where=False, max_leaves=6):
    leaf = st.one_of(st.integers(0, n_args - 1).map(lambda k: ("arg", k)),
                     st.sampled_from([0.5, -1.5, 2.0, 3.25]).map(lambda c: ("const", c)))

    def extend(children):
        options = [st.tuples(st.just("op"), st.sampled_from(unary), children),
                   st.tuples(st.just("op"), st.sampled_from(binary), children, children),
                   st.tuples(st.just("sum"), children)]
        if where:
            options.append(st.tuples(st.just("op"), st.just("SELECT"), children, children,
                                     children, children))
        return st.one_of(*options)
    tree = draw(st.recursive(leaf, extend, max_leaves=max_leaves))
    if tree[0] in ("arg", "const"):
        tree = ("op", draw(st.sampled_from(unary)), tree)
    # every argument takes part (an unused one is fine for jacext, but tests nothing)
    for k in range(n_args):
        if f"x{k}" not in describe(tree):
            tree = ("op", draw(st.sampled_from(binary)), tree, ("arg", k))
    return tree


@st.composite
def problems(draw, unary, binary, where=False):
    """(program, argument arrays): 1 to 3 arguments whose shapes broadcast together."""
    n_args = draw(st.integers(1, 3))
    shapes = draw(hnp.mutually_broadcastable_shapes(num_shapes=n_args, min_dims=0,
                                                    max_dims=2, max_side=3))
    prog = draw(programs(n_args, unary, binary, where))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    args = [rng.uniform(-2.0, 2.0, s) for s in shapes.input_shapes]
    return prog, args


def _call(prog):
    def f(*args):
        return evaluate(prog, args) * 1.0      # a constant output is still an array op
    return f


def _is_finite_program(f, args):
    with np.errstate(all="ignore"):
        value = np.asarray(f(*args), dtype=np.float64)
    return value.size > 0 and np.isfinite(value).all() and np.abs(value).max() < 1e6


# ------------------------------------------------------------- properties --

@PROPERTY
@given(problems(SMOOTH_UNARY, SMOOTH_BINARY))
def test_smooth_programs_against_numpy_modes_and_differences(problem):
    """Values as NumPy's; forward, reverse and auto Jacobians, jvp and vjp agreeing; all of
    them against central differences (check_jacobian)."""
    prog, args = problem
    f = _call(prog)
    hypothesis.assume(_is_finite_program(f, args))
    note = f"program {describe(prog)}, shapes {[a.shape for a in args]}"
    hypothesis.note(note)
    check_jacobian(f, *args, argnums=tuple(range(len(args))), rtol=1e-5, atol=1e-7,
                   value_rtol=1e-12)


@PROPERTY
@given(problems(SMOOTH_UNARY + KINKED_UNARY, SMOOTH_BINARY + KINKED_BINARY, where=True),
       st.integers(2, 40))
def test_any_program_batched_equals_single_points(problem, n_points):
    """Every op of the table (kinks, comparisons, np.where included): values as NumPy's,
    forward and reverse Jacobians agreeing, and a batch of points equal to the loop of single
    points bit for bit in both modes."""
    prog, args = problem
    f = _call(prog)
    hypothesis.assume(_is_finite_program(f, args))
    hypothesis.note(f"program {describe(prog)}, shapes {[a.shape for a in args]}")
    F = jx.compile(f, *args)
    with np.errstate(all="ignore"):
        assert_same_values(F(*args), f(*args), rtol=1e-12)
        nums = tuple(range(len(args)))
        Jf = F.jacobian(*args, argnums=nums, mode="forward")
        Jr = F.jacobian(*args, argnums=nums, mode="reverse")
        for a, b in zip(Jf, Jr):
            scale = max(1.0, float(np.max(np.abs(a), initial=0.0)))
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * scale)
        # a batch: every argument given n_points points
        rng = np.random.default_rng(n_points)
        batch = [a + rng.uniform(-0.5, 0.5, (n_points,) + a.shape) for a in args]
        for mode in ("forward", "reverse"):
            JB = F.jacobian(*batch, argnums=nums, mode=mode)
            for p in range(n_points):
                Jp = F.jacobian(*[b[p] for b in batch], argnums=nums, mode=mode)
                for k in nums:
                    np.testing.assert_array_equal(JB[k][p], Jp[k], err_msg=f"{mode} {p}")
        YB = F(*batch)
        for p in range(n_points):
            np.testing.assert_array_equal(YB[p], F(*[b[p] for b in batch]))


@PROPERTY
@given(problems(SMOOTH_UNARY + KINKED_UNARY, SMOOTH_BINARY + KINKED_BINARY, where=True),
       st.sampled_from([np.inf, -np.inf, np.nan, 1e101]))
def test_finite_input_tapes_on_random_programs(problem, bad):
    """A random program v with products of zeros on top (cos(v) * 0.0 + ...: they fold
    where the analysis proves v finite, jacext/finite.py): within the bound, values and
    Jacobians equal those of the exact tape alone up to the sign of a zero; with an inf, a
    nan or a number past the bound in any argument, bit for bit (values) and equal
    (Jacobians); and every instruction's value at the points lies in the interval the
    analysis proves for it."""
    from test_finite import _walk

    from jacext import finite, plan
    from jacext.testing import exact_function

    prog, args = problem
    hypothesis.note(f"program {describe(prog)}, shapes {[a.shape for a in args]}")

    def f(*a):
        v = evaluate(prog, a) * 1.0
        return np.cos(v) * 0.0 + np.sin(v) * 0.0 + np.tanh(v) * 0.0 + v

    with np.errstate(all="ignore"):
        F = jx.compile(f, *args)
        E = exact_function(F)
        hypothesis.event("folded" if F.tape.exact is not None else "not folded")
        nums = tuple(range(len(args)))
        points = [args]
        for k in range(len(args)):
            worse = [b.copy() for b in args]
            worse[k].reshape(-1)[0] = bad
            points.append(worse)
        for p in points:
            inside = all((np.abs(a) <= plan.FOLD_INPUT_BOUND).all() for a in p)
            y, ye = F(*p), E(*p)
            assert np.array_equal(y, ye, equal_nan=True)
            if not inside:
                assert np.array_equal(np.signbit(y), np.signbit(ye))
            for mode in ("forward", "reverse"):
                for a, b in zip(F.jacobian(*p, argnums=nums, mode=mode),
                                E.jacobian(*p, argnums=nums, mode=mode)):
                    assert np.array_equal(a, b, equal_nan=True), mode
        arrays = F.exact_tape.arrays()
        lo, hi = finite.ranges(arrays, plan.FOLD_INPUT_BOUND)
        proven = np.isfinite(lo) & np.isfinite(hi)
        for p in points[:1]:
            vals = _walk(arrays, np.concatenate([np.ravel(a) for a in p]))
            assert ((vals >= lo) & (vals <= hi))[proven].all()


_FACTORS = [np.sin, np.cos, np.tanh, np.exp, np.square, lambda z: z]


@PROPERTY
@given(st.integers(1, 13), st.integers(1, 13), st.integers(1, 13),
       st.sampled_from(range(len(_FACTORS))), st.sampled_from(range(len(_FACTORS))),
       st.sampled_from(["sum", "rows", "all"]),
       st.sampled_from([None, np.inf, -np.inf, np.nan, 0.0]), st.integers(0, 10**6))
def test_product_blocks_equal_the_scalar_form(m, n, p, fa, fb, out, bad, seed):
    """A random product A(x) @ B(x) (src_c/block.c's product block, at least
    plan.PRODUCT_MIN_WORK multiply-adds) against the same sums written elementwise (the
    scalar form): values and Jacobians in both modes, sparse, and batches, with an inf, a
    nan or a zero in any input: the same nan positions and the same numbers to rounding."""
    from jacext import plan

    n = max(n, -(-plan.PRODUCT_MIN_WORK // (m * p)))
    size = m * n + n * p + 3
    ua, ub = _FACTORS[fa], _FACTORS[fb]

    def make(product):
        def f(x):
            A = ua(x[:m * n].reshape(m, n)) * x[-1]
            B = ub(x[m * n:m * n + n * p].reshape(n, p)) + x[-2]
            Y = product(A, B)
            if out == "sum":
                return np.sum(np.tanh(Y)) * x[-3]
            if out == "rows":
                return np.tanh(Y).ravel()[::max(1, (m * p) // 7)]
            return (Y * Y).ravel()
        return f

    rng = np.random.default_rng(seed)
    x = rng.standard_normal(size) * 0.5
    y = x.copy()
    if bad is not None:
        y[rng.integers(0, size)] = bad
    Fb = jx.compile(make(np.matmul), x)
    Fs = jx.compile(make(lambda A, B: (A[:, :, None] * B[None, :, :]).sum(axis=1)), x)
    assert any(not isinstance(b[3], np.ndarray) for b in Fb.tape.blocks())

    def same(got, want):
        got, want = np.ravel(got), np.ravel(want)
        assert np.array_equal(np.isnan(got), np.isnan(want))
        ok = np.isfinite(got) & np.isfinite(want)
        np.testing.assert_allclose(got[ok], want[ok], rtol=1e-9, atol=1e-11)

    with np.errstate(all="ignore"):
        for point in (x, y):
            same(Fb(point), Fs(point))
            for mode in ("forward", "reverse"):
                same(Fb.jacobian(point, mode=mode), Fs.jacobian(point, mode=mode))
            same(Fb.jacobian(point, sparse=True).toarray(), Fs.jacobian(point))
        X = np.stack([x, y, 0.9 * x])
        J = Fb.jacobian(X)
        for k in range(len(X)):
            same(J[k], Fs.jacobian(X[k]))
