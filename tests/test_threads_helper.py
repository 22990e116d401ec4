"""The single point's helper thread (src_c/threads.h) under ThreadSanitizer: a C program
(tests/c/helper_thread.c) posts jobs from one caller, then from two at once, and checks
every output; built with gcc -fsanitize=thread where gcc and its TSan runtime are here
(Linux), skipped elsewhere.  Any report fails the test."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SRC_C = os.path.join(os.path.dirname(HERE), "src_c")


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("gcc") is None
                    or not os.path.isdir(SRC_C), reason="gcc on Linux, with the C sources")
def test_the_helper_thread_has_no_data_race(tmp_path):
    exe = tmp_path / "helper_thread"
    build = subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-O1", "-g",
                            "-fsanitize=thread", f"-I{SRC_C}",
                            os.path.join(HERE, "c", "helper_thread.c"), "-o", str(exe),
                            "-pthread"], capture_output=True, text=True)
    if build.returncode != 0 and "tsan" in (build.stderr + build.stdout).lower():
        pytest.skip("no ThreadSanitizer runtime: " + build.stderr[-300:])
    assert build.returncode == 0, build.stderr
    # (not the AddressSanitizer runtime that .ci/sanitize preloads into Python: TSan's own)
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS")}
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600,
                         env=dict(env, TSAN_OPTIONS="halt_on_error=1"))
    assert "ThreadSanitizer" not in run.stderr, run.stderr[-3000:]
    assert run.returncode == 0 and "wrong outputs: 0" in run.stdout, (run.stdout, run.stderr)
