"""The compiler passes (jacext/passes.pyx): lowering a graph to tape arrays, and the
groups of like instructions of a tape."""
from __future__ import annotations

import numpy as np
import pytest
from jacext._graph import Graph
from jacext.passes import lower, tape_groups

import jacext as jx
from jacext.ops import A_IMM, ARITY, B_IMM, OP_MASK, OPS


@pytest.fixture
def g():
    return Graph()


def ids(*values):
    return np.array(values, dtype=np.int64)


# ------------------------------------------------------------------ lower --

def lowered(g, ins, outs):
    return lower(g, np.asarray(ins, np.int64), np.asarray(outs, np.int64))


def test_lower_dead_code_elimination(g):
    x = g.inputs(2)
    keep = g.apply(OPS["SIN"], x[:1].copy())
    g.apply(OPS["COS"], x)                  # dead
    g.apply(OPS["EXP"], keep)               # dead
    g.consts(np.array([7.0]))               # a dead constant
    t = lowered(g, x, keep)
    assert list(t["op"]) == [OPS["SIN"]]
    assert len(t["const_value"]) == 0
    assert t["n_in"] == 2


def test_lower_slots_inputs_constants_then_work(g):
    x = g.inputs(2)
    c = g.const(3.0)
    s = g.apply(OPS["SELECT"], x[:1].copy(), ids(c), g.apply(OPS["LESS"], x[:1].copy(),
                                                             x[1:].copy()))
    t = lowered(g, x, s)
    assert t["n_in"] == 2
    np.testing.assert_array_equal(t["const_value"], [3.0])   # not an immediate: a slot
    assert t["n_slots"] == 2 + 1 + 2
    # LESS into slot 3; SELECT reads x0 (slot 0) and the constant (slot 2), cond slot 3
    assert list(t["op"]) == [OPS["LESS"], OPS["SELECT"]]
    assert t["a"][1] == 0 and t["b"][1] == 2 and t["s"][1] == t["dst"][0]
    assert t["s"][0] == t["a"][0]           # an op without a condition repeats a there


def test_lower_reuses_slots_of_dead_temporaries(g):
    x = g.inputs(1)
    v = x
    for _ in range(100):                    # a chain: sin(sin(...(x)))
        v = g.apply(OPS["SIN"], v)
    t = lowered(g, x, v)
    assert len(t["op"]) == 100
    assert t["n_slots"] <= 1 + 2            # input + two work slots alternating
    # dst never aliases the instruction's own operands (the batched sweeps need it)
    for k in range(100):
        assert t["dst"][k] != t["a"][k]


def test_lower_outputs_stay_alive(g):
    x = g.inputs(1)
    a = g.apply(OPS["SIN"], x)
    b = g.apply(OPS["COS"], a)
    c = g.apply(OPS["EXP"], b)
    t = lowered(g, x, np.concatenate([a, c]))
    out_a, out_c = t["out_slot"]
    # a's slot is never written again after it is computed
    assert list(t["dst"]).count(out_a) == 1
    assert out_a != out_c


def test_lower_outputs_may_be_inputs_or_constants(g):
    x = g.inputs(2)
    c = g.const(5.0)
    t = lowered(g, x, ids(x[1], c, x[1]))
    assert len(t["op"]) == 0
    np.testing.assert_array_equal(t["out_slot"], [1, 2, 1])
    np.testing.assert_array_equal(t["const_value"], [5.0])


def test_lower_checks(g):
    x = g.inputs(2)
    s = g.apply(OPS["ADD"], x[:1].copy(), x[1:].copy())
    with pytest.raises(ValueError):
        lowered(g, x[:1], s)               # depends on an input that is not an argument
    with pytest.raises(ValueError):
        lowered(g, np.concatenate([x, s]), s)   # s is not an input node
    with pytest.raises(IndexError):
        lowered(g, x, ids(99))


def test_lower_of_a_traced_function_runs():
    def f(x):
        return np.sin(x) * np.cos(x[::-1]) + x.sum()

    x = np.linspace(0.1, 1.0, 50)
    F = jx.compile(f, x)
    np.testing.assert_allclose(F(x), f(x), rtol=1e-14)
    # 50 sin + 50 cos + 50 mul + 49 adds (the sum) + 50 adds
    assert F.n_instructions == 50 * 4 + 49


# ------------------------------------------------------- tape_groups (tape utilities) --

def _groups_reference(op, imm, dst, a, b, s=None):
    """tape_groups written out plainly: a new group where the op word (or, for a word with
    an immediate, the immediate's bits) changes, or where an instruction reads (through an
    operand it uses) or writes a slot that an earlier instruction of its group wrote."""
    s = a if s is None else s
    firsts, written = [], set()
    for j in range(len(op)):
        word = int(op[j])
        uses = []
        if not word & A_IMM:
            uses.append(int(a[j]))
        if ARITY[word & OP_MASK] >= 2 and not word & B_IMM:
            uses.append(int(b[j]))
        if ARITY[word & OP_MASK] == 3:
            uses.append(int(s[j]))
        new = j == 0 or word != int(op[j - 1]) or (
            word & (A_IMM | B_IMM) and np.float64(imm[j]).tobytes()
            != np.float64(imm[j - 1]).tobytes())
        if new or int(dst[j]) in written or any(s in written for s in uses):
            firsts.append(j)
            written = set()
        written.add(int(dst[j]))
    return firsts


def _tape(op, imm, dst, a, b, s=None):
    return {"op": op, "imm": imm, "dst": dst, "a": a, "b": b, "s": a if s is None else s}


def test_tape_groups_matches_a_plain_reference_on_random_tapes():
    rng = np.random.default_rng(5)
    words = [OPS["ADD"], OPS["MUL"], OPS["MUL"] | B_IMM, OPS["SUB"] | A_IMM, OPS["SIN"],
             OPS["SELECT"]]
    for trial in range(200):
        n = int(rng.integers(1, 60))
        # long stretches of one word, so that the slot rules decide most cuts
        op = np.repeat(rng.choice(words, size=n // 8 + 1), 8)[:n].astype(np.int32)
        slots = int(rng.integers(2, 40))
        dst, a, b, s = (rng.integers(0, slots, n).astype(np.int32) for _ in range(4))
        imm = rng.choice([2.0, 3.0, 0.0, -0.0], size=n)
        got = tape_groups(_tape(op, imm, dst, a, b, s))
        assert got.dtype == np.int64
        assert got.tolist() == _groups_reference(op, imm, dst, a, b, s), trial


def test_tape_groups_on_a_traced_tape_and_bad_input():
    def f(x):    # a vectorised map (one group per call) and a running sum (one per step)
        return np.concatenate([np.sin(x) * 2.0, [x[0] + x[1] + x[2] + x[3]]])

    t = jx.compile(f, np.zeros(4)).tape_arrays()
    got = tape_groups(t)
    assert got.tolist() == _groups_reference(t["op"], t["imm"], t["dst"], t["a"], t["b"],
                                             t["s"])
    assert len(got) < len(t["op"])      # the map's instructions share their groups
    one = np.zeros(1, dtype=np.int32)
    with pytest.raises(ValueError, match="differ in length"):
        tape_groups(_tape(one, np.zeros(2), one, one, one))
    with pytest.raises(ValueError, match="negative slot"):
        tape_groups(_tape(one, np.zeros(1), one - 1, one, one))
    with pytest.raises(ValueError, match="no op number"):
        tape_groups(_tape(one + 255, np.zeros(1), one, one, one))
    empty = np.zeros(0, dtype=np.int32)
    assert tape_groups(_tape(empty, np.zeros(0), empty, empty, empty)).shape == (0,)
