"""SciPy's BLAS for the block instructions, found without importing scipy.linalg.

``jacext._tape`` takes dgemv and dgemm from ``scipy.linalg.cython_blas`` as C function
pointers (the C core links against no BLAS of its own, and a block's values are the
BLAS's, as NumPy's are) the first time a tape has a block.
"""
from __future__ import annotations


def cython_blas():
    """scipy.linalg.cython_blas: loaded from its file where it is found, without running
    scipy.linalg's __init__ (most of a first compile's time: it parses docstrings); a later
    ``import scipy.linalg`` gets this same module (Cython keeps one per process).  The usual
    import where the file is not where SciPy's wheels put it."""
    import importlib.machinery
    import importlib.util
    import os
    import sys

    name = "scipy.linalg.cython_blas"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("scipy")
    if spec is not None and spec.origin:
        folder = os.path.join(os.path.dirname(spec.origin), "linalg")
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(folder, "cython_blas" + suffix)
            if os.path.isfile(path):
                loader = importlib.machinery.ExtensionFileLoader(name, path)
                module = importlib.util.module_from_spec(
                    importlib.util.spec_from_file_location(name, path, loader=loader))
                loader.exec_module(module)
                return module
    from scipy.linalg import cython_blas
    return cython_blas
