"""The tracer's mechanics (jacext/trace.py): the traced Array and trace().

Operators, broadcasting and constants, indexing and assignment, the shape
methods, object arrays of traced scalars, outputs, node sharing, and the error
rules (what cannot trace, where and the fix).  What each NumPy function becomes
is tests/test_numpy_rules.py.

Each case checks, through ``jacext.testing.check_jacobian``, that the
compiled value equals NumPy's on plain arrays and that the forward and reverse
Jacobians match each other and central differences.  The remaining tests pin
the structure of a trace (which calls create nodes and which do not) and the
error rules.
"""
from __future__ import annotations

import math

import helpers
import numpy as np
import pytest
import scipy.special as sp
from helpers import b234, m34, n_nodes, rand, trace_graph, x3, x6

import jacext as jx
from jacext.testing import check_jacobian

pytestmark = pytest.mark.usefixtures("seeded_draws")
helpers.restart_draws()


# ------------------------------------------------------------- operators --

@pytest.mark.parametrize("expr", [
    "x + y", "x - y", "x * y", "x / y", "x ** y", "-x", "+x", "abs(x - 1.0)",
    "2.0 * x", "x * 2", "2 - x", "x - 2", "3.0 / x", "x / 4", "x ** 2", "x ** 3", "x ** -2",
    "x ** 0.5", "x ** -0.5", "x ** 1.7", "2.0 ** x", "x ** 1", "x ** 0", "x ** 2.0",
    "x * x", "x * x * x", "(x + y) * (x - y)", "x // 0.3 + x % 0.3",
])
def test_operators(expr):
    f = eval(f"lambda x, y: {expr}")
    x = rand(4, lo=0.35, hi=1.9)
    y = rand(4, lo=0.35, hi=1.9)
    if "//" in expr:
        x = np.array([0.4, 0.75, 1.05, 1.35])
    check_jacobian(f, x, y, argnums=(0, 1), value_rtol=1e-14)


@pytest.mark.parametrize("p", [2, 3, 4, 5, -1, -2, -3])
def test_integer_powers_of_negative_bases_are_exact(p):
    x = np.array([-1.7, -0.6, 0.8, 2.3])
    check_jacobian(lambda x: x ** p, x)
    check_jacobian(lambda x: np.power(x, float(p)), x)


def test_real_power_of_negative_base_is_nan_as_numpy():
    x = np.array([-1.5, 2.0])
    F = jx.compile(lambda x: x ** 1.5, x)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(F(x), x ** 1.5)


def test_python_builtins_round_divmod_abs():
    def f(x):
        q, r = divmod(x, 0.3)
        return round(x[0], 1) * x, q + r, abs(x - 1.0), sum(x), round(x[1]) + x

    check_jacobian(f, np.array([0.4, 0.75, 1.05, 1.35]), step=1e-5)


# ---------------------------------------------------------- broadcasting --

@pytest.mark.parametrize("f,args", [
    (lambda x, y: x + y, (rand(3, 1), rand(1, 4))),
    (lambda x, y: x * y, (rand(3, 1), rand(4))),
    (lambda x, y: x / y, (rand(2, 3, 4), rand(3, 1))),
    (lambda x, y: x - y, (rand(3), np.array(0.7))),
    (lambda x, y: np.arctan2(x, y), (np.array(0.4), rand(2, 3))),
    (lambda x, y: np.maximum(x, y) + np.minimum(x, y) ** 2,
     (np.array([[0.3], [1.1]]), np.array([[0.5, 0.9, 1.4]]))),
], ids=["col+row", "col*vec", "3d/2d", "vec-0d", "0d_atan2", "max_min"])
def test_broadcasting_two_inputs(f, args):
    check_jacobian(f, *args, argnums=tuple(range(len(args))))


def test_constants_mix_in():
    c = rand(3, 4)
    ci = np.arange(4)
    cb = np.array([True, False, True, True])
    cf32 = np.linspace(0.1, 0.4, 4, dtype=np.float32)

    def f(x):   # x (3, 1)
        return (1.5 * x + c - 2 / x + x * ci + x ** np.float64(2.0) - np.float32(0.25) * x
                + x * cb + cf32 * x + 3 + np.int64(2) * x)

    check_jacobian(f, rand(3, 1))


def test_constant_on_the_left_of_a_numpy_array():
    c = rand(3)

    def f(x):
        return c + x, c * x, c - x, c / x, c ** x, c @ x, np.ones((2, 3)) @ x

    check_jacobian(f, x3)


def test_zero_dim_input_and_scalars():
    def f(t):
        return np.array([1.0, 2.0, 3.0]) * np.sin(t) + t ** 2

    check_jacobian(f, np.array(0.7))
    check_jacobian(lambda t: t * 3.0, np.array(1.3))


# -------------------------------------------------------------- indexing --

@pytest.mark.parametrize("key", [
    "1", "-1", "1:3", "::2", "::-1", "::-2", "-2::-1", "3:0:-1", "[0, 2, 2]",
    "np.array([[0, 1], [2, 0]])", "np.array([True, False, True, False, True, True])",
    "None", "..., None", "np.int64(4)",
])
def test_indexing_1d(key):
    f = eval(f"lambda x: x[{key}] * x[0]")
    check_jacobian(f, x6)


@pytest.mark.parametrize("key", [
    "0", "-1", ":, 0", "1, :", "1, 2", ":, ::-1", "::-1, 1:", "[0, 2], [1, 3]",
    "[2, 0]", ":, [3, 0, 1]", "np.array([[0], [2]]), np.array([1, 3])",
    "m34 > 1.0", "np.array([True, False, True])", ":, np.array([True, False, False, True])",
    "..., 2", "None, :, 1", "1:, None, ::2", "np.array([0, 1]), 1:3",
])
def test_indexing_2d(key):
    f = eval(f"lambda x: x[{key}]")
    check_jacobian(f, m34)


def test_indexing_3d_mixed():
    def f(x):
        return x[1, [0, 2], ::-2], x[:, 1][::-1], x[..., [1, 3]], x[x.shape[0] - 1]

    check_jacobian(f, b234)


def test_indexing_creates_no_nodes():
    assert n_nodes(lambda x: (x[::-1], x[[0, 0, 2]], x[1:], x.T, x.reshape(3, 1)), (3,)) == 0


def test_iteration_and_unpacking():
    def f(x):
        a, b, c = x
        rows = [r.sum() for r in x.reshape(3, 1)]
        return np.stack([a * b, b * c, c * a]) + np.stack(rows), len(x) * a

    check_jacobian(f, x3)


def test_iterating_a_matrix_gives_rows():
    def f(m):
        out = []
        for row in m:
            out.append(row @ row)
        return np.stack(out)

    check_jacobian(f, m34)


def test_assignment_into_zeros_like():
    def f(x):
        z = np.zeros_like(x)
        z[0] = x[1] * x[2]
        z[1:] = x[:-1] ** 2
        z[[0, 2]] += 1.5
        z[-1] = 7.0
        return z

    check_jacobian(f, x3)


def test_assignment_mask_and_slices():
    def f(x):
        y = np.ones_like(x)
        y[x.shape[0] // 2:, 1] = x[:1, 2]
        y[np.array([[True, False, False, True]] * 3)] = 0.5 * np.repeat(x[:, 0], 2)
        y[:, ::-2] *= x[:, 1:3]
        return y

    check_jacobian(f, m34)


def test_assignment_into_the_argument_and_copy():
    def f(x):
        y = x.copy()
        y[0] = np.sin(x[1])
        x[1] = 2.0 * x[2]     # mutating the traced argument: the trace sees it
        return y, x

    check_jacobian(f, x3)


def test_assignment_broadcast_value():
    def f(x):
        z = np.zeros((2, 3)) + 0.0 * x[0]
        z[:] = x
        z[1] = x[0]
        return z

    check_jacobian(f, x3)


# --------------------------------------------------------- shape methods --

def test_shape_facts():
    seen = {}

    def f(x):
        seen.update(shape=x.shape, ndim=x.ndim, size=x.size, len=len(x), T=x.T.shape,
                    npshape=np.shape(x), npndim=np.ndim(x), npsize=np.size(x),
                    dtype=x.dtype)
        return x

    jx.compile(f, m34)
    assert seen == dict(shape=(3, 4), ndim=2, size=12, len=3, T=(4, 3), npshape=(3, 4),
                        npndim=2, npsize=12, dtype=np.dtype(np.float64))


def test_transpose_with_axes():
    check_jacobian(lambda b: b.transpose(2, 0, 1), b234)
    check_jacobian(lambda b: b.transpose((1, 2, 0)), b234)
    check_jacobian(lambda b: np.transpose(b, (0, 2, 1)) * b.mT, b234)


def test_reshape_keywords():
    check_jacobian(lambda m: m.reshape((4, 3), order="F") + m.reshape(4, 3, order="F"), m34)


# --------------------------------------------------------- object arrays --

def test_object_array_of_traced_scalars_then_matmul():
    def rotate(v):
        c, s = np.cos(v[0]), np.sin(v[0])
        R = np.array([[c, -s], [s, c]])
        return R @ v[1:]

    check_jacobian(rotate, x3)


def test_object_array_with_constants_as_output_and_operand():
    def f(x):
        a, b, c = x
        M = np.array([[a, 1.0], [b * c, 0.0]])
        # NumPy's object loops: operators on every element, o.sin() on traced ones
        # (a Python float in the array has no .sin: np.sin(M) needs an all-traced M)
        return M, x[:2] @ M, M @ np.array([1.0, 2.0]), np.sin(M[:, 0]) + M[0], M * 2 - M.T

    check_jacobian(f, x3)


def test_list_of_traced_values_as_operand():
    def f(x):
        a, b, c = x
        return np.stack([a, b]) * [c, 2.0] + x[:2], np.sum([a, b, c])

    check_jacobian(f, x3)


def test_numpy_functions_on_lists_of_traced_values():
    def f(x):
        a, b, c = x
        return (np.sum([x, x * 2], axis=0), np.linalg.norm([a, b]), np.dot([1.0, 2.0, 3.0], x),
                [[1.0, 2.0, 3.0]] @ x, np.stack([[a, b], [c, 1.0]]), np.vstack([[a, b], [c, 2.0]]),
                np.where([True, False, True], x, [0.0, 1.0, 2.0]), x * [1.0, 2.0, 3.0],
                (1.0, 2.0, 3.0) + x, np.full(3, a), np.array([a * 2, b + c]))

    check_jacobian(f, x3)


def test_asarray_of_a_traced_array():
    def f(x):
        x = np.asarray(x)       # common first line of NumPy code
        return np.exp(x) * x

    check_jacobian(f, x3)


# --------------------------------------------------------------- outputs --

def test_outputs_of_any_shape():
    check_jacobian(lambda x: x.sum(), x3)                   # scalar
    check_jacobian(lambda x: x.reshape(1, 3, 1) * 2, x3)    # 3-D
    check_jacobian(lambda x: x, x3)                         # the input itself
    check_jacobian(lambda x: 2.5, x3)                       # a constant
    check_jacobian(lambda x: np.ones((2, 2)), x3)           # a constant array
    check_jacobian(lambda x: (x.sum(), x * 2, np.outer(x, x)), x3)   # tuple
    check_jacobian(lambda x: [x[0], x[1:]], x3)             # list -> tuple
    check_jacobian(lambda x: (x[0], x[0] * 1.0, x[::-1]), x3)        # aliases


def test_empty_output_traces():
    F = jx.compile(lambda x: x[:0] * 2, x3)
    assert F.out_shapes == ((0,),)
    assert F(x3).shape == (0,)
    assert F.jacobian(x3, mode="forward").shape == (0, 3)
    assert F.jacobian(x3, mode="reverse").shape == (0, 3)


def test_empty_output_full_check():
    check_jacobian(lambda x: x[:0] * 2, x3)


def test_scalar_output_shape():
    F = jx.compile(lambda x: np.sum(x ** 2), x3)
    assert F.out_shapes == ((),)
    assert F(x3).shape == ()
    assert F.jacobian(x3).shape == (3,)


def test_several_arguments_and_batches():
    def f(x, p):
        return np.sin(x) * p[0] + p[1] * x ** 2

    x, p = rand(4), rand(2)
    check_jacobian(f, x, p, argnums=(0, 1))
    F = jx.compile(f, x, p)
    X = rand(5, 4)
    np.testing.assert_allclose(F(X, p), np.stack([f(xi, p) for xi in X]), rtol=1e-14)


def test_closure_constants_are_captured():
    A = rand(3, 3)
    F = jx.compile(lambda x: A @ x, x3)
    np.testing.assert_allclose(F.jacobian(x3), A)


# ---------------------------------------------------------- hash-consing --

def test_repeated_expressions_share_nodes():
    def f(x):
        return np.sin(x) + np.sin(x), np.sin(x) * x, x * np.sin(x)

    g, _, outs = trace_graph(f, (3,))
    # 3 sins, 3 adds (or doubled), 3 muls: the second np.sin(x) and x*sin(x) are shared
    np.testing.assert_array_equal(outs[1], outs[2])
    assert len(g) <= 3 + 3 + 3 + 3


# ---------------------------------------------------------------- errors --

def _raises_tracing(f, *args):
    with pytest.raises(jx.TracingError) as info:
        jx.compile(f, *(args or (x3,)), control_flow="error")
    assert isinstance(info.value, TypeError)
    return str(info.value)


def test_if_on_a_traced_value():
    def f(x):
        if x[0] > 0:
            return x
        return -x

    msg = _raises_tracing(f)
    assert "np.where" in msg
    assert "if x[0] > 0:" in msg            # the user's line
    assert "test_trace.py" in msg
    assert "control flow" in msg


@pytest.mark.parametrize("f", [
    lambda x: x if x.sum() else -x,
    lambda x: x[0] and x[1],
    lambda x: x * (not x[0]),
    lambda x: x[0] < x[1] < x[2],
    lambda x: bool(x[0]),
    lambda x: x * max(x[0], 1.0),
], ids=["ternary", "and", "not", "chained", "bool", "builtin_max"])
def test_control_flow_forms(f):
    assert "np.where" in _raises_tracing(f)


def test_while_loop():
    def f(x):
        while x.sum() < 10:
            x = x * 2
        return x

    assert "np.where" in _raises_tracing(f)


def test_float_conversion():
    msg = _raises_tracing(lambda x: x * float(x[0]))
    assert "float(" in msg and "np.sin" in msg
    assert "x * float(x[0])" in msg
    _raises_tracing(lambda x: x * int(x[0]))
    _raises_tracing(lambda x: x[0].item())
    _raises_tracing(lambda x: x.tolist())
    _raises_tracing(lambda x: x.astype(int))


def test_math_module():
    msg = _raises_tracing(lambda x: math.sin(x[0]) * x)
    assert "np.sin" in msg
    assert "math.sin(x[0])" in msg
    msg = _raises_tracing(lambda x: math.exp(x[0]) * x)
    assert "np.exp for math.exp" in msg
    msg = _raises_tracing(lambda x: math.atan2(x[0], x[1]) * x)
    assert "np.arctan2 for math.atan2" in msg


# NumPy's constructors bound before tracing (``from numpy import zeros``) make plain
# arrays of numbers: writing a traced value there is refused (those called as np.zeros
# inside the function trace: tests/test_guarded.py)
_zeros, _ones, _empty, _asarray = np.zeros, np.ones, np.empty, np.asarray


def test_writing_into_a_plain_numpy_array():
    def f(x):
        z = _zeros(3)
        z[0] = x[0]
        return z

    with pytest.raises((jx.TracingError, ValueError)) as info:
        jx.compile(f, x3)
    err = info.value
    if not isinstance(err, jx.TracingError):     # NumPy's own error, ours as its cause
        err = err.__cause__
    assert isinstance(err, jx.TracingError)
    assert "zeros_like" in str(err)

    def g(x):
        z = _zeros(3)
        z[:] = x
        return z

    assert "zeros_like" in _raises_tracing(g)
    assert "np.stack" in _raises_tracing(lambda x: _asarray(x, dtype=float))


def test_writing_a_traced_fill_value_into_a_numpy_array():
    msg = _raises_tracing(lambda x: np.full_like(_ones(3), x[0]))
    assert "np.full_like(x, v)" in msg
    msg = _raises_tracing(lambda x: np.mean([x[0], x[1]]))
    assert "np.stack" in msg


def test_inplace_operator_on_a_plain_array():
    def f(x):
        z = _zeros(3)
        z += x
        return z

    msg = _raises_tracing(f)
    assert "zeros_like" in msg and "z += x" in msg


def test_error_line_skips_library_frames():
    def f(x):
        return sp.logsumexp(x) if x[0] > 0 else x   # fails in the user's line

    msg = _raises_tracing(f)
    assert "sp.logsumexp(x) if x[0] > 0" in msg


@pytest.mark.parametrize("f,name", [
    (lambda x: np.linalg.inv(np.outer(x, x)), "inv"),
    (lambda x: np.sort(x), "sort"),
    (lambda x: np.argmax(x), "argmax"),
    (lambda x: np.linalg.solve(np.eye(3), x), "solve"),
    (lambda x: np.unique(x), "unique"),
    (lambda x: np.fft.fft(x), "fft"),
], ids=["inv", "sort", "argmax", "solve", "unique", "fft"])
def test_unsupported_function(f, name):
    msg = _raises_tracing(f)
    assert name in msg
    assert "not supported" in msg


def test_unsupported_ufunc():
    msg = _raises_tracing(lambda x: np.spacing(x))
    assert "spacing" in msg
    msg = _raises_tracing(lambda x: sp.gamma(x))
    assert "gamma" in msg


@pytest.mark.parametrize("f", [
    lambda x: x[x[0]],
    lambda x: x[[0, x[1]]],
    lambda x: x[1:x[0]],
    lambda x: x[x > 1.0],
    lambda x: np.take(x, x),
    lambda x: np.repeat(x, x),
    lambda x: np.roll(x, x[0]),
    lambda x: np.insert(x, x[0], 1.0),
], ids=["scalar", "list", "slice", "mask", "take", "repeat", "roll", "insert"])
def test_indexing_with_a_traced_value(f):
    msg = _raises_tracing(f)
    assert "index" in msg


def test_ufunc_out_and_where_keywords():
    _raises_tracing(lambda x: np.sin(x, out=_empty(3)))
    _raises_tracing(lambda x: np.sin(x, where=x > 1.0))


def test_complex_constant_is_a_type_error():
    with pytest.raises(TypeError):
        jx.compile(lambda x: x * 1j, x3)


def test_bad_return_value():
    with pytest.raises(TypeError):
        jx.compile(lambda x: None, x3)
    with pytest.raises(TypeError):
        jx.compile(lambda x: "x", x3)


def test_arrays_from_another_trace():
    keep = []
    jx.compile(lambda x: keep.append(x) or x, x3)
    with pytest.raises(jx.TracingError):
        jx.compile(lambda x: x + keep[0], x3)


def test_a_scipy_array_api_function_that_cannot_trace_says_so():
    """scipy.special.logsumexp converts its input with np.asanyarray and picks its code
    by the dtype; the error names it and its NumPy spelling, which does trace."""
    x = np.array([0.5, -1.0, 2.0])
    with pytest.raises(jx.TracingError, match=r"scipy\.special\.logsumexp(.|\n)*np\.max"):
        jx.compile(lambda x: sp.logsumexp(x) * x, x)

    def spelled(x):
        m = np.max(x)
        return m + np.log(np.sum(np.exp(x - m)))

    g = jx.grad(spelled)(x)
    np.testing.assert_allclose(g, sp.softmax(x), rtol=1e-15)
    assert spelled(x) == pytest.approx(sp.logsumexp(x), rel=1e-15)
