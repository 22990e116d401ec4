"""Every Python example of the README runs, in order, with its assertions."""
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks():
    """The README's Python blocks, each padded with blank lines to its place in the file,
    so that a traceback or a TracingError names the README's own line (and the source
    that jacext reads at a line, for a buffer made inside a traced function, is that
    line's)."""
    text = README.read_text()
    return ["\n" * text.count("\n", 0, m.start(1)) + m.group(1)
            for m in re.finditer(r"```python\n(.*?)```", text, flags=re.S)]


def test_readme_has_examples():
    assert len(_python_blocks()) >= 5


def _needs(block):
    """The optional package a block needs: its first line reads ``# needs: package``."""
    first = block.lstrip("\n").splitlines()[0]
    return first.split(":", 1)[1].strip() if first.startswith("# needs:") else None


def test_readme_examples_run_in_order():
    namespace = {}
    for block in _python_blocks():
        if _needs(block) is None:
            exec(compile(block, str(README), "exec"), namespace)
    assert "F" in namespace and "J" in namespace


@pytest.mark.parametrize("package", ["torch", "dask.array"])
def test_readme_examples_of_optional_packages(package):
    # the blocks that need an optional package run after all the others, where it is
    # installed
    blocks = _python_blocks()
    assert any(_needs(b) == package for b in blocks)
    pytest.importorskip(package)
    namespace = {}
    for block in blocks:
        if _needs(block) in (None, package):
            exec(compile(block, str(README), "exec"), namespace)


def test_readme_first_command_prints_the_seed_jacobian():
    # the README's first command, minus the install step
    out = subprocess.run([sys.executable, "-m", "jacext", "x**2 * x", "--at", "2,3"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[[12, 0], [0, 27]]"
    # the Jacobian of x**3 is diag(3 x**2): derived by hand, not by jacext
    assert np.array_equal(np.diag(3 * np.array([2.0, 3.0]) ** 2), [[12, 0], [0, 27]])
