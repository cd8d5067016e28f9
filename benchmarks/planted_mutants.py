"""Plant known bugs one at a time and check that the test suite catches each (issue 16's 20 mutants).

    python benchmarks/planted_mutants.py [--only NAME ...] [--full] [--list]

Each mutant is one textual replacement in one file of a copy of the repository's tracked files (the
working tree is never touched). The copy's engine is put first on PYTHONPATH, so the installed
(editable) package does not shadow it, and the mutant's tests run there; a mutant is KILLED when they
fail. By default only the test files named with each mutant run (about 2-4 min for all 20 on 2 cores);
``--full`` runs the whole suite per mutant instead. Exit status 1 when a mutant survives or no longer
applies (its text is gone: update the list). Complements the mutmut run (benchmarks/README.md), whose
generated mutants are not known bugs.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIB = "AnoDODE/AnoDODELib"
T = "Testing/Python"


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str          # file, relative to the repository root
    old: str           # text that must occur exactly once
    new: str
    tests: tuple[str, ...]   # test files (or node ids) that must catch it


MUTANTS = [
    # ---- the anomaly map
    Mutant("residual sign flipped (the map flags dark tissue)", f"{LIB}/pipeline.py",
           "(y - rec).float().cpu()", "(rec - y).float().cpu()", (f"{T}/test_map_behaviour.py",)),
    Mutant("map smoothing removed", f"{LIB}/anomaly_map.py",
           "    if sigma_mm <= 0:\n        return grid\n", "    return grid\n", (f"{T}/test_map_behaviour.py",)),
    Mutant("skipped slices left at 0", f"{LIB}/pipeline.py",
           "grid = interpolate_slices(grid, keep) * prepared.grid_mask",
           "grid = grid * keep[:, None, None] * prepared.grid_mask", (f"{T}/test_map_behaviour.py",)),
    Mutant("map mirrored left-right on its way back", f"{LIB}/pipeline.py",
           "        return self.geometry.from_canonical(full)",
           "        return self.geometry.from_canonical(np.ascontiguousarray(full[:, :, ::-1]))",
           (f"{T}/test_map_behaviour.py",)),
    Mutant("demo exits 0 when the lesion is missed", f"{LIB}/cli.py",
           "    if not found.ok:\n", "    if False:\n", (f"{T}/test_map_behaviour.py",)),
]


def copy_tree(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = REPO / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)


def run_mutant(m: Mutant, full: bool, python: str) -> tuple[str, float, str]:
    with tempfile.TemporaryDirectory(prefix="anodode-mutant-") as tmp:
        root = Path(tmp)
        copy_tree(root)
        target = root / m.path
        text = target.read_text()
        if text.count(m.old) != 1:
            return "NOT APPLIED", 0.0, f"{m.path}: the text occurs {text.count(m.old)} times"
        target.write_text(text.replace(m.old, m.new))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "AnoDODE"), str(root)]),
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        cmd = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *([] if full else m.tests)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        tail = (proc.stdout.strip().splitlines() or [""])[-1]
        if proc.returncode == 0:
            return "SURVIVED", seconds, tail
        if proc.returncode in (1,):
            return "killed", seconds, tail
        return "ERROR", seconds, (proc.stdout + proc.stderr)[-400:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", default=None, help="mutants whose name contains one of these words")
    ap.add_argument("--full", action="store_true", help="run the whole suite for each mutant")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or any(w in m.name for w in args.only)]
    if args.list:
        for m in chosen:
            print(f"{m.name}  ({m.path}; {', '.join(m.tests)})")
        return 0
    bad = 0
    for k, m in enumerate(chosen, 1):
        status, seconds, detail = run_mutant(m, args.full, sys.executable)
        bad += status != "killed"
        print(f"[{k:2d}/{len(chosen)}] {status:11s} {seconds:6.1f} s  {m.name}  -- {detail}", flush=True)
    print(f"{len(chosen) - bad}/{len(chosen)} planted mutants killed")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
