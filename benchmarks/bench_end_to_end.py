"""End-to-end seconds of ``anodode score`` on one real volume, split by stage (issue 11 item 6).

    python benchmarks/bench_end_to_end.py [--presets fast,standard] [--repeats 3] [--volume PATH --mask PATH]
                                          [--checkout DIR ...] [--threads T] [--json out.json]

Each run is a fresh ``anodode score INPUT --mask MASK --preset P --output-dir TMP --quiet`` process (all four
outputs and summary.csv/json written, as a user runs it), timed from outside (wall seconds of the process) and
split inside by wrapping the engine's stage functions with timers: interpreter start and exit, imports (``import
AnoDODELib.cli``), argument checks and model load, reading (the NIfTI integrity check, the image, the mask),
preprocessing, scoring, maps, report, the anomaly and label files, the figure, the summary, and the rest.
The process's CPU seconds (user, system) and page faults are printed beside its wall seconds: on a loaded
machine wall seconds stretch, CPU seconds much less. The target (issue 11): standard <= 10 s, fast <= 5 s
per 240x240x155 volume on this CPU.

``--checkout DIR`` (repeatable) times another copy of the repository's code (e.g. ``git archive main | tar
-x -C /tmp/main``) with the same Python: its ``AnoDODE/`` folder is put first on PYTHONPATH. Runs of the
checkouts and presets are interleaved (checkout A preset 1, checkout B preset 1, ..., repeat), so on a shared
machine each ratio compares runs made under the same load; the load average is printed with every run.
Stages a checkout does not have (e.g. a separate integrity check) read as absent. Nothing is written but
--json; the outputs go to a temporary folder. Real data: ../shared/data (or $ANODODE_DATA).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ANODODE_DATA", REPO.parent / "shared" / "data"))
DEFAULT_CASE = "deepmedic_brats2015/brats_2013_pat0001_1"

#: Runs inside the timed ``anodode score`` process: wraps stage functions with timers, runs the CLI, and
#: writes {stage: seconds} (plus the in-process total) as JSON to argv[1]. Stages are attributed exclusively:
#: a stage called inside another (the integrity check inside reading) is subtracted from the outer one.
CHILD = r"""
import json, sys, time
T0 = time.perf_counter()
out_path, argv = sys.argv[1], sys.argv[2:]
import AnoDODELib
from AnoDODELib import cli
T_IMPORT = time.perf_counter() - T0
from AnoDODELib import outputs, summary, volume_io
seconds = {}
stack = []

def add(name, dt):
    seconds[name] = seconds.get(name, 0.0) + dt

def timed(module, attr, name):
    fn = getattr(module, attr, None)
    if fn is None:
        return
    def wrapper(*a, **k):
        stack.append(0.0)
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            dt = time.perf_counter() - t
            inner = stack.pop()
            add(name, dt - inner)
            if stack:
                stack[-1] += dt
    setattr(module, attr, wrapper)

timed(cli, "load_model", "model load")
timed(volume_io, "check_nifti", "read: NIfTI check")
timed(volume_io, "read_image", "read: image")
timed(volume_io, "read_mask", "read: mask")
timed(outputs, "build_report", "report")
timed(volume_io, "write_image", "write anomaly + label")
timed(outputs, "figure_png", "figure")
timed(summary, "write_summary", "summary")
score_image = outputs.score_image

def score_image_timed(*a, callback=None, **k):
    marks = []
    def cb(fraction, message):
        marks.append((time.perf_counter(), message))
        if callback is not None:
            callback(fraction, message)
    stack.append(0.0)
    t = time.perf_counter()
    try:
        return score_image(*a, callback=cb, **k)
    finally:
        end = time.perf_counter()
        stack.pop()
        if stack:
            stack[-1] += end - t
        phase, since = "preprocessing", t
        for when, message in marks + [(end, "done")]:
            name = {"preprocessing": "preprocessing", "building maps": "maps", "done": None}.get(message, "scoring")
            if name != phase:
                add(phase, when - since)
                phase, since = name, when
            if name is None:
                break

outputs.score_image = score_image_timed
main = cli.main

def main_timed(args=None):
    code = main(args)
    seconds["imports"] = T_IMPORT
    seconds["in-process total"] = time.perf_counter() - T0
    seconds["module"] = AnoDODELib.__file__
    with open(out_path, "w") as f:
        json.dump({"code": code, "seconds": seconds}, f)
    return code

cli.main = main_timed
sys.argv = ["anodode", *argv]
if hasattr(cli, "run"):       # the console script's entry point (process set-up, fast exit)
    cli.run()
else:
    sys.exit(cli.main())
"""

STAGES = [
    "interpreter start + exit",
    "imports",
    "model load",
    "read: NIfTI check",
    "read: image",
    "read: mask",
    "preprocessing",
    "scoring",
    "maps",
    "report",
    "write anomaly + label",
    "figure",
    "summary",
    "other",
]


def run_once(
    python: str, checkout: Path | None, volume: Path, mask: Path | None, preset: str, threads: int
) -> dict:
    """One timed ``anodode score`` process; {stage: seconds, "total": wall seconds, "load": 1-min load}."""
    env = dict(os.environ)
    if checkout is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(checkout / "AnoDODE"), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory(prefix="anodode-e2e-") as tmp:
        out = Path(tmp) / "stages.json"
        argv = [
            "score",
            str(volume),
            *(["--mask", str(mask)] if mask else []),
            "--preset",
            preset,
            "--output-dir",
            str(Path(tmp) / "out"),
            "--quiet",
            "--device",
            "cpu",
        ]
        load = os.getloadavg()[0]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        res = subprocess.run(
            [python, "-c", CHILD, str(out), *argv],
            env=env,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            check=False,
        )
        wall = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if res.returncode or not out.exists():
            raise RuntimeError(f"anodode score failed ({res.returncode}): {res.stderr.strip()[-2000:]}")
        child = json.loads(out.read_text(encoding="utf-8"))["seconds"]
    module = child.pop("module")
    inside = child.pop("in-process total")
    stages = {k: float(v) for k, v in child.items()}
    stages["interpreter start + exit"] = wall - inside
    stages["other"] = inside - sum(v for k, v in stages.items() if k != "interpreter start + exit")
    return {
        "stages": stages,
        "total": wall,
        "load": load,
        "module": module,
        "user_cpu": after.ru_utime - before.ru_utime,
        "system_cpu": after.ru_stime - before.ru_stime,
        "page_faults": after.ru_minflt - before.ru_minflt,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--volume", type=Path, default=None)
    ap.add_argument("--mask", type=Path, default=None)
    ap.add_argument("--presets", default="fast,standard")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--checkout",
        type=Path,
        action="append",
        default=[],
        help="another copy of the repository to time against this one (repeatable)",
    )
    ap.add_argument(
        "--threads", type=int, default=0, help="OMP_NUM_THREADS for the runs (0: torch's default)"
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    volume = args.volume or DATA / DEFAULT_CASE / "Flair_subtrMeanDivStd.nii.gz"
    mask = args.mask or (volume.parent / "brainmask.nii.gz" if args.volume is None else None)
    if not volume.exists():
        print(f"real data not found: {volume} (../shared/data, $ANODODE_DATA or --volume)", file=sys.stderr)
        return 2
    checkouts: list[tuple[str, Path | None]] = [("this", None)] + [
        (str(c), c.resolve()) for c in args.checkout
    ]
    presets = args.presets.split(",")
    runs: dict[tuple[str, str], list[dict]] = {(c, p): [] for c, _ in checkouts for p in presets}
    threads = args.threads or os.environ.get("OMP_NUM_THREADS", "torch's default")
    print(f"{volume}, {os.cpu_count()} CPUs, threads {threads}")
    for rep in range(args.repeats):
        for preset in presets:
            for name, checkout in checkouts:
                r = run_once(sys.executable, checkout, volume, mask, preset, args.threads)
                runs[(name, preset)].append(r)
                print(
                    f"  run {rep + 1} {name:>6s} {preset:9s} {r['total']:6.2f} s wall, CPU {r['user_cpu']:.2f} s user "
                    f"+ {r['system_cpu']:.2f} s system, {r['page_faults'] / 1e3:.0f}k page faults (load average "
                    f"{r['load']:.2f}; {Path(r['module']).parent.parent.parent})",
                    flush=True,
                )
    for preset in presets:
        print(f"\n{preset}: median seconds per stage over {args.repeats} run(s)")
        print(f"  {'stage':24s}" + "".join(f"{name[-14:]:>15s}" for name, _ in checkouts))
        for stage in STAGES + ["total", "user_cpu", "system_cpu"]:
            cells = []
            for name, _ in checkouts:
                vals = [r[stage] if stage in r else r["stages"].get(stage) for r in runs[(name, preset)]]
                vals = [v for v in vals if v is not None]
                cells.append(f"{statistics.median(vals):15.2f}" if vals else f"{'-':>15s}")
            print(f"  {stage:24s}" + "".join(cells))
        for name, _ in checkouts[1:]:
            for what, key in (
                ("wall", lambda r: r["total"]),
                ("CPU", lambda r: r["user_cpu"] + r["system_cpu"]),
            ):
                ratios = [key(a) / key(b) for a, b in zip(runs[("this", preset)], runs[(name, preset)])]
                print(
                    f"  this / {name}, {what} seconds: "
                    + ", ".join(f"{x:.3f}" for x in ratios)
                    + f" (median {statistics.median(ratios):.3f})"
                )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "volume": str(volume),
                    "threads": args.threads,
                    "runs": [{"checkout": c, "preset": p, **r} for (c, p), rs in runs.items() for r in rs],
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
