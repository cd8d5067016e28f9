"""Settings for a process that scores and exits: the ``anodode`` command and the Slicer worker.

Scoring one 240x240x155 volume allocates and frees full-volume arrays (36 MB as float32) and
chunk-sized tensors (16 MB) many times over. glibc's allocator serves each block above its mmap
threshold (128 KiB, rising at most to 32 MiB) with a fresh ``mmap`` and returns it on free, and trims the
heap's free top, so every such allocation is zero-filled again page by page by the kernel: about 0.6
million page faults and 1.5-2 s of system CPU time per run, measured with ``/usr/bin/time`` (benchmarks/
bench_end_to_end.py, docs/speed.md). :func:`tune_allocator` raises the threshold and the trim threshold so
freed blocks are reused (0.15 million faults, 0.45 s; peak RSS +0.1 GB). The garbage collector then
rescans the 1 700 imported modules' objects (torch's, mostly) at every full collection and again at
interpreter exit; :func:`freeze_imported_objects` moves them out of its reach, and :func:`exit_now` ends the
process without the interpreter's teardown (about 0.6 s of CPU time that frees memory the kernel frees
anyway), after flushing the standard streams and the logging handlers.

None of this changes a computed value. Library use (tests, Slicer's own process, notebooks) is untouched:
only the two entry points call these functions.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import sys

#: glibc ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: Blocks up to this size come from the heap and are reused after a free (bytes).
MMAP_THRESHOLD = 1 << 30
#: The heap's free top is returned to the kernel only beyond this size (bytes).
TRIM_THRESHOLD = 1 << 31


def tune_allocator() -> bool:
    """Set glibc's mmap and trim thresholds (``MMAP_THRESHOLD``, ``TRIM_THRESHOLD``) for this process so freed
    blocks are reused instead of being unmapped and faulted in again. Returns whether they were set (False
    on a C library without ``mallopt``: macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on (no ldconfig lookup)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def freeze_imported_objects() -> None:
    """Move every object alive now (the imported modules') to the garbage collector's permanent generation,
    so later collections do not traverse them (``gc.freeze``); call it once the imports are done."""
    gc.freeze()


def exit_now(code: int) -> None:
    """End the process with ``code`` at once: flush stdout, stderr and the logging handlers, then
    ``os._exit`` (no interpreter teardown). Under a tracer or coverage measurement, which write their data
    at exit, a normal ``sys.exit`` instead."""
    if sys.gettrace() is not None or "coverage" in sys.modules:
        sys.exit(code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    os._exit(code)
