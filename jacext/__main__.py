"""Command line: ``python -m jacext EXPR --at X`` prints the Jacobian of EXPR at X.

    python -m jacext "x**2 * x" --at 2,3
    python -m jacext "np.sin(x) * x[::-1]" --at 1,2,3 --timeit
    python -m jacext bench --quick          (the benchmark suite, from a source checkout)
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import timeit

import numpy as np


def _format_number(v):
    v = float(v)
    if math.isfinite(v) and v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def format_array(a):
    """Nested-list text of an array with integers shown as integers: [[12, 0], [0, 27]]."""
    a = np.asarray(a)
    if a.ndim == 0:
        return _format_number(a)
    return "[" + ", ".join(format_array(r) for r in a) + "]"


def _namespace(x, module):
    ns = {"np": module, "numpy": module, "x": x, "pi": math.pi, "e": math.e}
    for name in ("sin", "cos", "tan", "exp", "log", "sqrt", "tanh", "sinh", "cosh", "abs",
                 "arctan2", "hypot", "maximum", "minimum", "where", "sum", "prod"):
        if hasattr(module, name):
            ns[name] = getattr(module, name)
    return ns


def _median_time(fn, min_time=0.2, repeat=7):
    number = 1
    while True:
        t = timeit.timeit(fn, number=number)
        if t >= min_time / repeat or number >= 10**7:
            break
        number *= 10
    times = sorted(timeit.repeat(fn, number=number, repeat=repeat))
    return times[len(times) // 2] / number


def _torch_time(expr, x):
    try:
        import torch
    except ImportError:
        return None, "torch is not installed (pip install torch==2.13.0)"
    xt = torch.tensor(x, dtype=torch.float64)

    def f(t):
        return eval(expr, _namespace(t, torch))

    try:
        torch.autograd.functional.jacobian(f, xt)
    except Exception as exc:  # an expression only NumPy understands
        return None, f"torch could not evaluate this expression ({type(exc).__name__})"
    return _median_time(lambda: torch.autograd.functional.jacobian(f, xt)), None


def _run_bench(argv):
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for root in (os.getcwd(), here):
        if os.path.exists(os.path.join(root, "bench", "run.py")):
            sys.path.insert(0, root)
            from bench.run import main as bench_main
            return bench_main(argv)
    print("jacext bench: the benchmarks live in bench/ of a source checkout; run this from "
          "the repository root", file=sys.stderr)
    return 2


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return _run_bench(argv[1:])
    import jacext as jx

    parser = argparse.ArgumentParser(
        prog="python -m jacext",
        description="Print the Jacobian of a NumPy expression in x (or: python -m jacext bench).")
    parser.add_argument("expr", help='a NumPy expression in x, e.g. "np.sin(x) * x**2"')
    parser.add_argument("--at", required=True,
                        help="the point: comma-separated numbers, e.g. 2,3")
    parser.add_argument("--mode", default="auto", choices=["auto", "forward", "reverse"])
    parser.add_argument("--timeit", action="store_true",
                        help="also time one Jacobian, next to torch.autograd.functional.jacobian")
    args = parser.parse_args(argv)
    try:
        x = np.array([float(v) for v in args.at.split(",") if v.strip()], dtype=np.float64)
    except ValueError:
        parser.error(f"--at must be comma-separated numbers; got {args.at!r}")
    expr = args.expr

    def f(x):
        return eval(expr, _namespace(x, np))

    try:
        F = jx.compile(f, x, name=expr)
        J = F.jacobian(x, mode=args.mode)
    except (jx.TracingError, ValueError, TypeError, NameError, SyntaxError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_array(J))
    if args.timeit:
        t = _median_time(lambda: F.jacobian(x))
        out = np.empty_like(J)
        t_out = _median_time(lambda: F.jacobian(x, out=out))
        print(f"jacext:  {t * 1e6:9.3f} us per Jacobian ({t_out * 1e6:.3f} us with out=)")
        tt, why = _torch_time(expr, x)
        if tt is None:
            print(f"torch:   {why}")
        else:
            print(f"torch:   {tt * 1e6:9.3f} us per Jacobian "
                  f"(torch.autograd.functional.jacobian; {tt / t:.0f}x jacext's time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
