"""The batched value sweep's stream (src_c/block_code.c): a product that only a sum reads
is fused into that sum (MA: a * b + c; DOT: a * b + c * d), over slots given afresh.

A hand-made tape holds every fused form (the product first or second in an ADD or a SUB,
its other factor a slot or an immediate on either side, two products with no, the first's
or the second's immediate) and the cases that must not fuse (a product read twice, a
product that is an output, two products with immediates in one sum); its batches, which
run the stream, must equal NumPy's formulas and the single points, which run the tape,
bit for bit, with infinities, nans and signed zeros among the inputs.  Traced tapes (the
allocator's slot reuse) are the bench problems' Jacobian tapes, batch against points.
"""
from __future__ import annotations

import numpy as np
import pytest
from helpers import NASTY
from test_jactape import _bench

import jacext as jx
from jacext import Function, testing
from jacext.ops import A_IMM, B_IMM, OPS

MUL, ADD, SUB, SIN, COS = (OPS[k] for k in ("MUL", "ADD", "SUB", "SIN", "COS"))

# (op word, dst, a, b, immediate): inputs x0..x3 in slots 0..3, each result a slot of its own
CODE = [
    (MUL, 4, 0, 1, 0.0), (ADD, 5, 4, 2, 0.0),                   # MA: x0 x1 + x2
    (MUL | B_IMM, 6, 2, 2, 3.0), (SUB, 7, 3, 6, 0.0),           # MA: x3 - x2 3
    (MUL | A_IMM, 8, 0, 0, 2.5), (SUB, 9, 8, 1, 0.0),           # MA: 2.5 x0 - x1
    (MUL, 10, 0, 3, 0.0), (MUL, 11, 1, 2, 0.0), (SUB, 12, 10, 11, 0.0),            # DOT
    (MUL | B_IMM, 13, 0, 0, -1.5), (MUL, 14, 2, 3, 0.0), (ADD, 15, 13, 14, 0.0),   # DOT
    (MUL, 16, 1, 1, 0.0), (MUL | B_IMM, 17, 3, 3, 0.5), (ADD, 18, 16, 17, 0.0),    # DOT
    (MUL | B_IMM, 19, 0, 0, 2.0), (MUL | B_IMM, 20, 1, 1, 4.0),
    (ADD, 21, 19, 20, 0.0),                      # two immediates: the first product only
    (MUL, 22, 0, 2, 0.0), (ADD, 23, 22, 1, 0.0), (SUB, 24, 22, 3, 0.0),  # read twice
    (SIN, 25, 0, 0, 0.0), (COS, 26, 0, 0, 0.0), (MUL, 27, 25, 26, 0.0),
    (ADD, 28, 5, 27, 0.0),                       # MA after a sincos pair
    (MUL, 29, 1, 3, 0.0),                        # an output: kept
]
OUT = [5, 7, 9, 12, 15, 18, 21, 23, 24, 28, 29]
# products fused: 4 (MA) + 6 (three DOTs) + 1 (the two immediates' first) = 11
FUSED = 11


def numpy_outputs(x):
    """NumPy's float64 arithmetic for OUT, one point (x: 4 doubles), in the tape's order."""
    x0, x1, x2, x3 = (np.float64(v) for v in x)
    with np.errstate(all="ignore"):
        r5 = x0 * x1 + x2
        p22 = x0 * x2
        return [r5, x3 - x2 * 3.0, 2.5 * x0 - x1, x0 * x3 - x1 * x2,
                x0 * -1.5 + x2 * x3, x1 * x1 + x3 * 0.5, x0 * 2.0 + x1 * 4.0,
                p22 + x1, p22 - x3, r5 + np.sin(x0) * np.cos(x0), x1 * x3]


def _hand_function():
    op, dst, a, b, imm = (list(col) for col in zip(*CODE))
    tape = {"op": np.array(op, np.int32), "dst": np.array(dst, np.int32),
            "a": np.array(a, np.int32), "b": np.array(b, np.int32),
            "s": np.array(a, np.int32), "imm": np.array(imm, np.float64),
            "out_slot": np.array(OUT, np.int32), "const_value": np.zeros(0),
            "n_in": 4, "n_slots": 30}
    return Function(tape, ((4,),), ((len(OUT),),), False, "fused")


def _bits(a):
    """float64 bits, every nan as one (the payload is not part of the promise)."""
    a = np.array(a, dtype=np.float64)
    a[np.isnan(a)] = np.nan
    return a.view(np.int64)


def _points(n, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 4)) * rng.choice([1e-3, 1.0, 1e3], (n, 4))
    # a nasty value in each point, at input p % 4 (every value at every input from 48 on)
    p = np.arange(n)
    X[p, p % 4] = NASTY[(p // 4) % NASTY.size]
    return X


def test_every_fused_form_is_fused_and_nothing_else():
    F = _hand_function()
    assert F.tape.n_instructions == len(CODE)
    assert F.tape.block_stream_length == len(CODE) - FUSED


@pytest.mark.parametrize("n", [8, 48, 200])
def test_a_batch_on_the_stream_equals_numpy_and_the_points_bit_for_bit(n):
    F = _hand_function()
    X = _points(n, n)
    Y = F(X)
    assert Y.shape == (n, len(OUT))
    want = np.array([numpy_outputs(x) for x in X])
    np.testing.assert_array_equal(_bits(Y), _bits(want))
    np.testing.assert_array_equal(_bits(Y), _bits(np.array([F(x) for x in X])))


def test_a_tape_with_a_slot_read_before_any_write_keeps_its_own_sweep():
    # slot 5 is read before anything writes it: the stream gives up, the tape runs itself
    code = [(ADD, 4, 0, 5, 0.0), (MUL, 5, 0, 1, 0.0), (ADD, 6, 5, 4, 0.0)]
    op, dst, a, b, imm = (list(col) for col in zip(*code))
    tape = {"op": np.array(op, np.int32), "dst": np.array(dst, np.int32),
            "a": np.array(a, np.int32), "b": np.array(b, np.int32),
            "s": np.array(a, np.int32), "imm": np.array(imm, np.float64),
            "out_slot": np.array([6], np.int32), "const_value": np.zeros(0),
            "n_in": 2, "n_slots": 7}
    F = Function(tape, ((2,),), ((1,),), False, "unwritten")
    assert F.tape.block_stream_length == 0
    assert F(np.ones((70, 2))).shape == (70, 1)


@pytest.mark.parametrize("name", ["arm", "arm_cs", "ba"])
def test_bench_jacobian_tapes_fuse_and_their_batches_equal_the_points(name):
    _cases = _bench("batch")._cases
    f, _, _, X, data, _, _, _ = _cases(300)[f"{name}_batch"]
    args = (X,) if data is None else (X, data)
    F = jx.compile(f, *(a[0] for a in args))
    tape = None
    for _ in range(40):   # until the ski-rental rule builds the Jacobian tape
        J = F.jacobian(*args, threads=2)
        slots = [testing.jacobian_tape_slot(F, mode=m) for m in ("forward", "reverse")]
        tape = next((s.current for s in slots if s.current is not None), None)
        if tape is not None:
            J = F.jacobian(*args, threads=2)
            break
    assert tape is not None
    # at least a quarter of a Jacobian tape's instructions are products fused away
    assert 0 < tape.block_stream_length < 0.75 * tape.n_instructions
    for p in range(0, 300, 37):   # the same numbers (README "Values": up to zero's sign)
        Jp = F.jacobian(*(a[p] for a in args))
        np.testing.assert_array_equal(_bits(J[p] + 0.0), _bits(Jp + 0.0))
