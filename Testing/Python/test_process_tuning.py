"""The scoring processes' set-up (process_tuning.py): freed large blocks are reused, and the fast exit keeps
the exit code, everything written to stdout and the log, and skips the interpreter's teardown."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
from conftest import REPO

ENV_PATH = str(REPO / "AnoDODE")

REUSE = r"""
import resource, sys
import numpy as np
from AnoDODELib import process_tuning
if sys.argv[1] == "tuned":
    assert process_tuning.tune_allocator()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
n = (64 << 20) // 8                 # 64 MiB, above glibc's largest default mmap threshold (32 MiB)
a = np.ones(n); del a
before = faults()
for _ in range(5):
    a = np.ones(n); del a
print(faults() - before)
"""


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=120,
        check=False,
        env={"PYTHONPATH": ENV_PATH, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt thresholds are glibc's",
)
def test_tuned_allocator_reuses_freed_large_blocks():
    """Untuned, every 64 MiB array is a fresh mapping the kernel faults in again (at least one fault per
    2 MiB page, more with 4 KiB pages); tuned, the freed block is reused: (almost) no new faults."""
    faults = {}
    for mode in ("default", "tuned"):
        res = run_python(REUSE, mode)
        assert res.returncode == 0, res.stderr
        faults[mode] = int(res.stdout.split()[-1])
    assert faults["default"] >= 5 * 32
    assert faults["tuned"] < faults["default"] / 10


EXIT = r"""
import atexit, logging, sys
from AnoDODELib import process_tuning
logging.basicConfig(filename=sys.argv[1], level=logging.INFO)
logging.getLogger("anodode").info("a logged line")
atexit.register(lambda: sys.stdout.write(" and the teardown ran"))
sys.stdout.write("written, no newline")
sys.stderr.write("an error line")
process_tuning.exit_now(3)
sys.stdout.write(" after exit_now")
"""


def test_exit_now_keeps_code_output_and_log_and_skips_teardown(tmp_path):
    log = tmp_path / "log.txt"
    res = run_python(EXIT, str(log))
    assert res.returncode == 3
    assert res.stdout == "written, no newline"  # flushed from the pipe's buffer; no atexit, no later code
    assert res.stderr == "an error line"
    assert "a logged line" in log.read_text(encoding="utf-8")


def test_exit_now_under_a_tracer_exits_normally():
    """Coverage and tracers write their data at exit: there exit_now is a plain sys.exit (atexit runs)."""
    code = "import sys\nsys.settrace(lambda *a: None)\n" + EXIT.replace(
        "logging.basicConfig(filename=sys.argv[1], level=logging.INFO)\n", ""
    )
    res = run_python(code)
    assert res.returncode == 3
    assert res.stdout == "written, no newline and the teardown ran"
