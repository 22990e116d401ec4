"""Declares the compiled extensions; the metadata lives in pyproject.toml.

Build switches (environment variables, POSIX compilers):
  JACEXT_WERROR=1                      warnings are errors (CI sets it)
  JACEXT_SANITIZE=address,undefined    AddressSanitizer + UBSan build (.ci/sanitize)
  JACEXT_DEBUG=1                       keep debug information (-g); release builds use -g0
  JACEXT_QUICK_BUILD=1                 -O1 instead of -O3: the same results, compiled in a
                                       fraction of the time (tools/mutate.py rebuilds often)
"""
import os
import sys

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext as _build_ext

# what the C core's sources include, and what the extensions include besides
C_HEADERS = ["src_c/ops.def", "src_c/ops.h", "src_c/kernels.h", "src_c/vm.h",
             "src_c/block_values.h", "src_c/run_values.h", "src_c/threads.h"]
HEADERS = C_HEADERS + ["src_c/guards.h", "jacext/_graph.pxd", "jacext/_tape.pxd",
                       "jacext/_function.pxd", "jacext/_point.pxd"]
C_SOURCES = ["src_c/vm.c", "src_c/block.c", "src_c/batch.c", "src_c/block_code.c",
             "src_c/sparsity.c"]

if sys.platform == "win32":
    # MSVC: C99 in the form MSVC's C compiler accepts (VS 2015 or newer), no OpenMP
    compile_args = ["/O2"]
    link_args = []
else:
    opt = "-O1" if os.environ.get("JACEXT_QUICK_BUILD") else "-O3"
    compile_args = [opt, "-std=c99", "-Wall", "-Wextra", "-D_POSIX_C_SOURCE=200809L"]
    link_args = ["-lpthread"] if sys.platform != "darwin" else []
    if os.environ.get("JACEXT_WERROR"):
        compile_args.append("-Werror")
    sanitize = os.environ.get("JACEXT_SANITIZE")
    if sanitize:  # e.g. "address,undefined"
        # -fno-wrapv: Python's CFLAGS carry -fwrapv (or -fno-strict-overflow), which makes
        # signed overflow defined and so invisible to UBSan; MSVC promises no wrapping
        # -g1: line tables, all a sanitizer report needs (file:line), built much faster
        # than -g's full debug information of the large Cython-generated files
        compile_args += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-O1", "-g1",
                         "-fno-wrapv"]
        link_args += [f"-fsanitize={sanitize}"]
    elif os.environ.get("JACEXT_DEBUG"):
        compile_args.append("-g")
    else:
        # Python's own CFLAGS carry -g: without this the wheel ships megabytes of DWARF
        compile_args.append("-g0")

common = dict(
    include_dirs=["src_c", np.get_include()],
    # the core's sources too: each extension links the core's static library, and
    # build_ext relinks an extension only when one of its inputs is newer (an edit to
    # vm.c alone left the in-place extensions on the old core)
    depends=HEADERS + C_SOURCES,
    extra_compile_args=compile_args,
    extra_link_args=link_args,
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
)

# The C core is compiled once, as a static library that build_ext links into every
# extension (each gets its own copy, as when each compiled the sources itself): vm.c alone
# takes 12 s at -O3, and CI builds the extensions three times.
core = ("jacext_core", dict(sources=C_SOURCES, include_dirs=["src_c"], cflags=compile_args,
                            obj_deps={"": C_HEADERS}))

extensions = [
    Extension("jacext._graph", ["jacext/_graph.pyx"], **common),
    Extension("jacext.passes", ["jacext/passes.pyx"], **common),
    Extension("jacext._tape", ["jacext/_tape.pyx"], **common),
    Extension("jacext._point", ["jacext/_point.pyx"], **common),
    Extension("jacext._function", ["jacext/_function.pyx"], **common),
    Extension("jacext._guards", ["jacext/_guards.pyx"], **common),
]

# freethreading_compatible: the extensions run without the GIL on free-threaded CPython
# (3.13t, 3.14t): every piece of mutable state they keep is safe without it (the Tape's work
# memory behind an atomic flag, the planner's caches and Jacobian tapes behind its lock;
# see jacext/_function.pyx), and the C core keeps no global mutable state.


class build_ext(_build_ext):
    """build_ext that builds the C core first (``build`` does; ``build_ext --inplace``,
    which the README and .ci/sanitize run, would not), and the extensions on every core
    unless ``-j`` says otherwise (a clean in-place build on this project's 2 cores: 108 ->
    71 s; CI builds three times)."""

    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:
            self.parallel = os.cpu_count() or 1

    def run(self):
        if self.distribution.has_c_libraries():
            self.run_command("build_clib")
        super().run()


setup(libraries=[core], cmdclass={"build_ext": build_ext},
      ext_modules=cythonize(extensions, language_level=3,
                            compiler_directives={"embedsignature": True,
                                                 "freethreading_compatible": True}))
