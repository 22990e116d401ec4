"""The package as built and installed: compiled modules, metadata, the contents of the sdist
and the wheel, and the portability of the C core (C99 that MSVC builds too).

.ci/run sets JACEXT_TEST_INSTALLED=1, JACEXT_SDIST and JACEXT_WHEEL when it runs this suite
against the installed wheel; cibuildwheel sets JACEXT_TEST_INSTALLED=1.  Without them the
tests that need them are skipped.
"""
from __future__ import annotations

import importlib.machinery
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import jacext

ROOT = Path(__file__).resolve().parent.parent
SRC_C = ROOT / "src_c"
INSTALLED = os.environ.get("JACEXT_TEST_INSTALLED") == "1"


def _metadata():
    try:
        return importlib.metadata.distribution("jacext")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("jacext is not installed (an in-place build)")


# ---- the imported package ----

#: the compiled extensions (setup.py)
COMPILED = ("_graph", "passes", "_tape", "_function", "_guards")


@pytest.mark.parametrize("name", COMPILED)
def test_the_engine_is_compiled(name):
    module = __import__(f"jacext.{name}", fromlist=["_"])
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    assert module.__file__.endswith(suffixes), module.__file__


def test_version_matches_the_metadata():
    assert _metadata().version == jacext.__version__


def test_console_script_is_declared():
    scripts = {ep.name: ep.value for ep in _metadata().entry_points
               if ep.group == "console_scripts"}
    assert scripts.get("jacext") == "jacext.__main__:main"


@pytest.mark.skipif(not INSTALLED, reason="only against an installed wheel (.ci/run, cibuildwheel)")
def test_the_installed_package_is_under_test_not_the_source_tree():
    here = Path(jacext.__file__).resolve().parent
    assert ROOT not in here.parents, f"jacext was imported from the source tree: {here}"
    assert here.parent.name in ("site-packages", "dist-packages"), here
    # a plain install, not an editable one pointing back at a checkout
    direct_url = json.loads(_metadata().read_text("direct_url.json") or "{}")
    assert not direct_url.get("dir_info", {}).get("editable"), direct_url


# ---- what the distributions hold ----

def _env_path(name):
    value = os.environ.get(name)
    if not value:
        pytest.skip(f"{name} is not set (.ci/run sets it)")
    return Path(value)


def _source_files(pattern_dir, *patterns):
    if not pattern_dir.is_dir():
        pytest.skip(f"no source tree at {pattern_dir}")
    return sorted({p.relative_to(ROOT).as_posix()
                   for pat in patterns for p in pattern_dir.glob(pat)})


def test_sdist_holds_everything_a_build_and_the_tests_need():
    sdist = _env_path("JACEXT_SDIST")
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    need = {"pyproject.toml", "setup.py", "README.md", "CHANGELOG.md"}
    need |= set(_source_files(SRC_C, "*.c", "*.h", "*.def"))
    need |= set(_source_files(ROOT / "jacext", "*.py", "*.pyx", "*.pxd", "*.pyi", "py.typed"))
    need |= set(_source_files(ROOT / "tests", "*.py"))
    missing = sorted(need - names)
    assert not missing, f"{top}: missing from the sdist: {missing}"
    generated = sorted(n for n in names if re.fullmatch(r"jacext/[^/]+\.(c|so|pyd)", n))
    assert not generated, f"build outputs in the sdist: {generated}"


def test_wheel_holds_the_package_and_nothing_else():
    wheel = _env_path("JACEXT_WHEEL")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    package = {n for n in _source_files(ROOT / "jacext", "*.py", "*.pyi", "py.typed")}
    missing = sorted(package - names)
    assert not missing, f"missing from the wheel: {missing}"
    for module in COMPILED:
        assert any(re.fullmatch(rf"jacext/{module}\..+\.(so|pyd)", n) for n in names), \
            f"no compiled jacext.{module} in the wheel"
    stray = sorted(n for n in names
                   if not (n.startswith("jacext/") or ".dist-info/" in n or ".libs/" in n))
    assert not stray, f"files outside the package in the wheel: {stray}"
    generated_c = sorted(n for n in names if n.endswith((".c", ".h", ".o")))
    assert not generated_c, f"C sources or objects in the wheel: {generated_c}"


# ---- the C core builds everywhere a wheel is built ----

# Constructs that MSVC's C compiler (or another non-GCC compiler) rejects, and POSIX-only
# APIs: allowed only inside an #if/#ifdef block whose condition names the compiler or the
# platform, where the other branch is the fallback.
_NOT_PORTABLE = {
    r"\b__builtin_\w+": "a GCC builtin",
    r"\b__attribute__\b": "a GCC attribute",
    r"\b(typeof|__typeof__)\b": "typeof",
    r"\b__int128\b": "__int128",
    r"\balloca\b": "alloca",
    r"#\s*pragma\s+omp\b|<omp\.h>": "OpenMP",
    r"\b_Complex\b|<complex\.h>": "C99 complex numbers (MSVC has none)",
    r"\b_Atomic\b|<stdatomic\.h>": "C11 atomics",
    r"\brestrict\b": "the restrict keyword (MSVC's C wants __restrict)",
    r"<(pthread|unistd|sys/\w+)\.h>|\bpthread_\w+\s*\(|\bsysconf\b": "a POSIX-only API",
}
_GUARD = re.compile(r"_WIN32|_WIN64|_MSC_VER|__GNUC__|__clang__|__unix__|__APPLE__|_POSIX")


def _strip_comments(text):
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group().count("\n"), text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def _unguarded_lines(text):
    """(line number, line) of the lines outside any compiler- or platform-guarded #if."""
    stack = []   # one bool per open #if: does its condition name a compiler or platform?
    for number, line in enumerate(_strip_comments(text).splitlines(), 1):
        directive = re.match(r"\s*#\s*(\w+)(.*)", line)
        if directive:
            word, rest = directive.groups()
            if word in ("if", "ifdef", "ifndef"):
                stack.append(bool(_GUARD.search(rest)))
            elif word == "elif" and stack:
                stack[-1] = stack[-1] or bool(_GUARD.search(rest))
            elif word == "endif" and stack:
                stack.pop()
        if not any(stack):
            yield number, line


def test_the_c_core_is_portable_c99():
    sources = _source_files(SRC_C, "*.c", "*.h", "*.def")
    found = []
    for rel in sources:
        for number, line in _unguarded_lines((ROOT / rel).read_text()):
            for pattern, what in _NOT_PORTABLE.items():
                if re.search(pattern, line):
                    found.append(f"{rel}:{number}: {what}: {line.strip()}")
    assert not found, "not portable to MSVC without a guarded fallback:\n" + "\n".join(found)


def test_the_portability_scan_sees_through_guards():
    text = ("#ifdef __GNUC__\n#define LIKELY(x) __builtin_expect(!!(x), 1)\n#else\n"
            "#define LIKELY(x) (x)\n#endif\n/* __builtin_ in a comment */\n"
            "double f(double *restrict p);\n")
    hits = [n for n, line in _unguarded_lines(text)
            if any(re.search(p, line) for p in _NOT_PORTABLE)]
    assert hits == [7]


def _c_compiler():
    for cc in (os.environ.get("CC", ""), "cc", "gcc", "clang"):
        if cc and shutil.which(cc.split()[0]):
            return cc.split()
    return None


@pytest.mark.skipif(sys.platform == "win32", reason="MSVC: the wheel build itself is the check")
def test_the_c_core_compiles_as_strict_c99_without_warnings():
    sources = _source_files(SRC_C, "*.c")
    cc = _c_compiler()
    if cc is None:
        pytest.skip("no C compiler")
    flags = ["-std=c99", "-pedantic", "-Wall", "-Wextra", "-Wvla", "-Werror",
             "-D_POSIX_C_SOURCE=200809L", f"-I{SRC_C}", "-fsyntax-only"]
    for rel in sources:
        proc = subprocess.run([*cc, *flags, str(ROOT / rel)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{' '.join(cc)} {rel}:\n{proc.stderr}"
