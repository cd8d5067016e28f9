"""Brain extraction and the raw-scan run: seconds on this machine (issue 20 item 6).

    python benchmarks/bench_extraction.py [--threads T] [--repeats 3] [--device cpu|cuda] [--json out.json]

Measures, each repeat interleaved so the figures of one repeat share the machine's load:
  extraction  ``brain_extraction.extract_brain`` (HD-BET fold 0, network loaded once per process and
              counted in the first repeat) on the raw clinical FLAIR ``raw_clinical_ms/105755`` (256x256x20,
              0.9 x 0.9 x 6.4 mm) and on a 240x240x155 1 mm volume (BraTS pat0001's FLAIR; only its size
              matters here);
  N4          ``bias_field.n4_corrected`` inside the extracted brain of the raw FLAIR;
  score       ``anodode score`` of the raw FLAIR as a fresh process, as a user runs it (brain extracted:
              ``--brain-extraction auto``) and as before extraction existed (``--brain-extraction never``: the
              whole head scored), wall seconds of each process.
Targets: extraction <= 30 s (256x256x20) and <= 60 s (240x240x155) on the 2-core CPU; the raw-scan run no
slower than the whole-head run. The load average is printed with every figure; compare ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "AnoDODE"))
from AnoDODELib import bias_field, brain_extraction, volume_io  # noqa: E402

DATA = Path(os.environ.get("ANODODE_DATA", REPO.parent / "shared" / "data"))
RAW = DATA / "raw_clinical_ms" / "105755" / "flair.nii.gz"
LARGE = DATA / "deepmedic_brats2015" / "brats_2013_pat0001_1" / "Flair_subtrMeanDivStd.nii.gz"


def canonical(path: Path) -> tuple[np.ndarray, volume_io.SliceGeometry]:
    image = volume_io.read_image(path)
    geo = volume_io.slice_geometry(image)
    return np.ascontiguousarray(geo.to_canonical(sitk.GetArrayFromImage(image).astype(np.float32))), geo


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def score_process(mode: str, out: Path, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "AnoDODELib.cli", "score", str(RAW), "--brain-extraction", mode]
    cmd += ["--output-dir", str(out / mode), "--quiet", "--device", "cpu"]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=REPO, capture_output=True)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    volumes = {"256x256x20": canonical(RAW), "240x240x155": canonical(LARGE)}
    rows: dict[str, list[float]] = {}
    for r in range(args.repeats):
        for name, (array, geo) in volumes.items():
            dt, found = timed(lambda: brain_extraction.extract_brain(array, geo, device=args.device))
            rows.setdefault(f"extraction {name}", []).append(dt)
            print(
                f"repeat {r + 1}: extraction {name}: {dt:.1f} s (load {os.getloadavg()[0]:.1f})", flush=True
            )
            if name == "256x256x20":
                raw = sitk.GetArrayFromImage(sitk.ReadImage(str(RAW)))
                mask = geo.from_canonical(found.canonical)
                dt, _ = timed(
                    lambda: bias_field.n4_corrected(raw, mask, sitk.ReadImage(str(RAW)).GetSpacing())
                )
                rows.setdefault("N4 256x256x20", []).append(dt)
                print(f"repeat {r + 1}: N4 256x256x20: {dt:.1f} s", flush=True)
        if args.device == "cpu":
            with tempfile.TemporaryDirectory() as tmp:
                for mode in ("auto", "never"):
                    dt = score_process(mode, Path(tmp), args.threads)
                    rows.setdefault(f"anodode score raw FLAIR, --brain-extraction {mode}", []).append(dt)
                    print(f"repeat {r + 1}: anodode score --brain-extraction {mode}: {dt:.1f} s", flush=True)
    summary = {k: {"median_s": statistics.median(v), "runs_s": v} for k, v in rows.items()}
    print("\nmedian seconds:")
    for k, v in summary.items():
        print(f"  {k}: {v['median_s']:.1f}  ({', '.join(f'{x:.1f}' for x in v['runs_s'])})")
    if args.json:
        args.json.write_text(
            json.dumps({"threads": args.threads, "device": args.device, **summary}, indent=2),
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
