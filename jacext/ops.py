"""The op table as Python sees it, and the derivative rules derived from it.

``src_c/ops.def`` is the one definition of every op: its name, arity, whether it
commutes, its value, its local partials D0 and D1 (as C expressions), and when those
partials are constants.  The C compiler generates the VM from it; the extension also
hands this module every row as the text of its expressions (``_graph.op_rows``), and this
module parses them:

* the vocabulary: an op whose VALUE is ``a + b`` gives ``+`` its meaning, one whose
  VALUE is ``cos(a)`` gives ``cos``, ``(double)(a < b)`` gives ``<``, and
  ``(s != 0.0) ? a : b`` gives ``?:``;
* the rules: each row's D0 and D1, parsed with that vocabulary, ops.def's derivative
  helpers inlined and its named constants read from C, become a function that builds the
  partials as graph nodes (:func:`partials`), with the same floating-point operations in
  the same order as the C sweeps compute them.  The Jacobian-tape builder
  (``jacext/jactape.py``) uses them, so its tapes equal the sweeps bit for bit.

Nothing here restates an op: adding an op is one row of ops.def (plus its test row, and
its NumPy name in ``jacext/numpy_rules.py``).
"""
from __future__ import annotations

import re
from typing import NamedTuple

from jacext import _graph, _tape

OP_MASK = _tape.OP_MASK
A_IMM = _tape.A_IMM
B_IMM = _tape.B_IMM


class Op(NamedTuple):
    """One row of ops.def."""
    number: int
    name: str
    arity: int
    commutes: bool
    fixed: int       # the FIXED column: FIXED_ALWAYS | FIXED_B_IMM | FIXED_A_IMM bits
    value: str       # the expressions, as ops.def writes them
    d0: str
    d1: str


#: every op of the table, by number
TABLE = tuple(Op(k, name, arity, bool(commutes), fixed, value, d0, d1)
              for k, (name, arity, commutes, fixed, value, d0, d1) in enumerate(_graph.op_rows()))
#: {name: number}
OPS = {op.name: op.number for op in TABLE}
#: {number: name}
NAMES = {op.number: op.name for op in TABLE}
#: {number: arity}
ARITY = {op.number: op.arity for op in TABLE}
FIXED_ALWAYS = _tape.FIXED_ALWAYS
FIXED_B_IMM = _tape.FIXED_B_IMM
FIXED_A_IMM = _tape.FIXED_A_IMM
#: ops.def's named constants, as C has them
CONSTANTS = _graph.op_constants()


def value(name, a, b=0.0, s=0.0):
    """The op's value on scalars, computed by the C table itself (constant folding uses
    the same code)."""
    return _graph.op_value(OPS[name], a, b, s)


def uses(word):
    """(reads a, reads b): which of an instruction's operands are slots (the others are
    absent or its immediate); SELECT's condition is never differentiated."""
    base = word & OP_MASK
    return not (word & A_IMM), ARITY[base] >= 2 and not (word & B_IMM)


# ---------------------------------------------------------------- the parser --

_TOKEN = re.compile(r"\s*(?:(\d+\.\d*(?:[eE][-+]?\d+)?|\d+)|([A-Za-z_]\w*)|"
                    r"(<=|>=|==|!=|[-+*/()?:,<>]))")


def _tokens(text):
    pos, out = 0, []
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise SyntaxError(f"ops.def: cannot read {text[pos:]!r} in {text!r}")
        num, name, sym = m.groups()
        out.append(("num", float(num)) if num else ("name", name) if name else ("sym", sym))
        pos = m.end()
    return out


class _Parser:
    """C expressions of ops.def into trees, by C's precedence: ?: below == != below
    < <= > >= below + - below * / below unary - and the (double) cast."""

    def __init__(self, text):
        self.text = text
        self.toks = _tokens(text)
        self.k = 0

    def parse(self):
        tree = self.cond()
        if self.k != len(self.toks):
            raise SyntaxError(f"ops.def: unexpected {self.toks[self.k][1]!r} in {self.text!r}")
        return tree

    def peek(self):
        return self.toks[self.k] if self.k < len(self.toks) else (None, None)

    def take(self, sym=None):
        tok = self.peek()
        if sym is not None and tok != ("sym", sym):
            raise SyntaxError(f"ops.def: expected {sym!r} in {self.text!r}")
        self.k += 1
        return tok

    def cond(self):
        c = self.binary(0)
        if self.peek() == ("sym", "?"):
            self.take("?")
            x = self.cond()
            self.take(":")
            return ("cond", c, x, self.cond())
        return c

    _LEVELS = (("==", "!="), ("<", "<=", ">", ">="), ("+", "-"), ("*", "/"))

    def binary(self, level):
        if level == len(self._LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while self.peek()[0] == "sym" and self.peek()[1] in self._LEVELS[level]:
            op = self.take()[1]
            left = ("bin", op, left, self.binary(level + 1))
        return left

    def unary(self):
        tok = self.peek()
        if tok == ("sym", "-"):
            self.take()
            return ("neg", self.unary())
        if tok == ("sym", "(") and self.toks[self.k + 1:self.k + 3] == [("name", "double"),
                                                                         ("sym", ")")]:
            self.k += 3
            return ("cast", self.unary())
        return self.primary()

    def primary(self):
        kind, v = self.take()
        if kind == "num":
            return ("num", v)
        if kind == "name":
            if self.peek() == ("sym", "("):
                self.take("(")
                args = [self.cond()]
                while self.peek() == ("sym", ","):
                    self.take(",")
                    args.append(self.cond())
                self.take(")")
                return ("call", v, tuple(args))
            return ("var", v)
        if (kind, v) == ("sym", "("):
            tree = self.cond()
            self.take(")")
            return tree
        raise SyntaxError(f"ops.def: unexpected {v!r} in {self.text!r}")


def parse(text):
    """The tree of one C expression of ops.def."""
    return _Parser(text).parse()


# ---------------------------------------------------------------- the vocabulary --

def _vocabulary():
    """What each C function and operator means, read off the VALUE column: {word: op
    name}, words being function names, binary operators (``+``), comparisons (``<``),
    ``neg`` and ``?:``."""
    words = {}
    a, b = ("var", "a"), ("var", "b")
    for op in TABLE:
        tree = parse(op.value)
        word = None
        if tree[0] == "call" and tree[2] in ((a,), (a, b)) and len(tree[2]) == op.arity:
            word = tree[1]
        elif tree[0] == "bin" and tree[2:] == (a, b):
            word = tree[1]
        elif tree[0] == "cast" and tree[1][0] == "bin" and tree[1][2:] == (a, b):
            word = tree[1][1]
        elif tree == ("neg", a):
            word = "neg"
        elif tree == ("cond", ("bin", "!=", ("var", "s"), ("num", 0.0)), a, b):
            word = "?:"
        if word is not None:
            if word in words:
                raise ValueError(f"ops.def: {word!r} is the value of both {words[word]} and "
                                 f"{op.name}")
            words[word] = op.name
    return words


WORDS = _vocabulary()
_HELPERS = {name: (p, q, parse(expr)) for name, p, q, expr in _graph.op_helpers()}


def _emit(e, tree, env):
    """The nodes of ``tree`` built through the emitter ``e`` (``e(name, x, y, c)`` one op
    of the table, ``e.c(v)`` a constant), names bound by ``env``."""
    kind = tree[0]
    if kind == "num":
        return e.c(tree[1])
    if kind == "var":
        name = tree[1]
        if name in env:
            return env[name]
        if name in CONSTANTS:
            return e.c(CONSTANTS[name])
        raise ValueError(f"ops.def: unknown name {name!r}")
    if kind == "cast":
        return _emit(e, tree[1], env)
    if kind == "neg":
        return e(WORDS["neg"], _emit(e, tree[1], env))
    if kind == "bin":
        return e(WORDS[tree[1]], _emit(e, tree[2], env), _emit(e, tree[3], env))
    if kind == "cond":
        c, x, y = (_emit(e, t, env) for t in tree[1:])
        return e(WORDS["?:"], x, y, c)
    # a call: an op of the table, or a derivative helper inlined
    name, args = tree[1], [_emit(e, t, env) for t in tree[2]]
    if name in _HELPERS:
        p, q, body = _HELPERS[name]
        return _emit(e, body, {p: args[0], q: args[1]})
    if name in WORDS:
        return e(WORDS[name], *args)
    raise ValueError(f"ops.def: {name}() is neither an op's value nor a helper")


def _rule(op):
    d0 = parse(op.d0)
    d1 = parse(op.d1) if op.arity >= 2 else None

    def rule(e, a, b, z, s=None):
        env = {"a": a, "b": b, "z": z, "s": s}
        return _emit(e, d0, env), (_emit(e, d1, env) if d1 is not None else None)

    rule.__name__ = f"partials_{op.name.lower()}"
    rule.__doc__ = f"{op.name}: d0 = {op.d0}, d1 = {op.d1} (ops.def)"
    return rule


_RULES = {op.number: _rule(op) for op in TABLE}


def partials(word, e, a, b, z, s=None):
    """(p0, p1): the partials of an instruction with op word ``word`` at operand nodes
    a, b (s: SELECT's condition) and result z, built through the emitter ``e``; p1 is
    None for unary ops."""
    return _RULES[word & OP_MASK](e, a, b, z, s)


def disassemble(arrays):
    """A tape's arrays (``Tape.arrays()``) as text lines: constants, then one
    instruction a line (a block instruction with its matrix's shape), then the
    output slots."""
    a = arrays
    n_in = a["n_in"]
    lines = [f"       s{n_in + k} = {float(v)!r}" for k, v in enumerate(a["const_value"])]
    shapes = {i: (m, n, o) for i, m, n, o in
              a["blocks"].reshape(-1, _tape.BLOCK_FIELDS).tolist()}
    for i, (word, d, x, y, c, imm) in enumerate(zip(
            a["op"].tolist(), a["dst"].tolist(), a["a"].tolist(), a["b"].tolist(),
            a["s"].tolist(), a["imm"].tolist())):
        if word == _tape.BLOCK and shapes[i][2] < 0:   # a product: o is -p
            m, n, p = shapes[i][0], shapes[i][1], -shapes[i][2]
            b = x + m * n
            lines.append(f"{i:6d} s{d}..s{d + m * p - 1} = PRODUCT [{m}x{n}] s{x}..s{b - 1} "
                         f"@ [{n}x{p}] s{b}..s{b + n * p - 1}")
            continue
        if word == _tape.BLOCK:
            m, n, o = shapes[i]
            lines.append(f"{i:6d} s{d}..s{d + m - 1} = BLOCK W[{m}x{n}]@{o} "
                         f"s{x}..s{x + n - 1}")
            continue
        op = word & OP_MASK
        if ARITY[op] == 3:
            args = f"s{c} ? s{x} : s{y}"
        elif ARITY[op] == 1:
            args = f"s{x}"
        elif word & A_IMM:
            args = f"{imm!r}, s{y}"
        elif word & B_IMM:
            args = f"s{x}, {imm!r}"
        else:
            args = f"s{x}, s{y}"
        lines.append(f"{i:6d} s{d} = {NAMES[op]} {args}")
    lines.append("; outputs: " + " ".join(f"s{s}" for s in a["out_slot"].tolist()))
    return lines
