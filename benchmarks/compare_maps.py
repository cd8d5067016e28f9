"""Behaviour-preserving refactors: score dev cases with every preset before and after, compare the outputs.

    python benchmarks/compare_maps.py save /tmp/before.npz      # on the old commit
    python benchmarks/compare_maps.py save /tmp/after.npz       # on the new one
    python benchmarks/compare_maps.py compare /tmp/before.npz /tmp/after.npz [--tolerance 1e-3]

Dev cases: the demo phantom (2 x 2 x 4 mm) and, when ../shared/data is there, a 20-slice slab of the
BRATS 2012 HG0015 FLAIR shrunk 2x (the maps are written outside the repository: they derive from patient
data). For each case and preset: the anomaly map, the slice scores and the volume score. ``compare``
prints, per array, whether it is identical and its largest absolute difference, and exits 1 when any
difference exceeds ``--tolerance`` (in the arrays' units: map units, bits per dimension).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEV_FLAIR = REPO.parent / "shared" / "data" / "brats2012" / "BRATS_HG0015" / "BRATS_HG0015_FLAIR.mha"


def dev_cases() -> dict:
    import SimpleITK as sitk

    from AnoDODELib.demo import make_phantom

    cases = {"phantom": make_phantom(spacing=(2.0, 2.0, 4.0)).image}
    if DEV_FLAIR.exists():
        src = sitk.Shrink(sitk.ReadImage(str(DEV_FLAIR), sitk.sitkFloat32), [2, 2, 2])
        axial = int(np.argmax(np.abs(np.array(src.GetDirection()).reshape(3, 3)[2])))
        size, start = list(src.GetSize()), [0, 0, 0]
        start[axial], size[axial] = size[axial] // 2 - 10, 20
        cases["hg0015_slab"] = sitk.RegionOfInterest(src, size, start)
    return cases


def save(path: Path) -> None:
    import torch

    from AnoDODELib.bundle import load_model
    from AnoDODELib.pipeline import PRESETS, score_image

    torch.set_num_threads(1)
    model = load_model(None)
    out = {}
    for name, image in dev_cases().items():
        for preset in PRESETS:
            r = score_image(image, model, device="cpu", preset=preset)
            out[f"{name}_{preset}_map"] = r.anomaly_map
            out[f"{name}_{preset}_slices"] = np.array([np.nan if v is None else v for v in r.slice_scores])
            out[f"{name}_{preset}_volume"] = np.array(r.volume_score_bpd)
            print(f"{name} {preset}: volume {r.volume_score_bpd:.6f} bpd, {r.seconds:.1f} s", flush=True)
    np.savez(path, **out)


def compare(a_path: Path, b_path: Path, tolerance: float) -> int:
    a, b = np.load(a_path), np.load(b_path)
    bad = sorted(set(a.files) ^ set(b.files))
    for k in sorted(set(a.files) & set(b.files)):
        x, y = a[k], b[k]
        same = x.shape == y.shape and np.array_equal(x, y, equal_nan=True)
        diff = float(np.nanmax(np.abs(x - y))) if x.shape == y.shape and x.size else (0.0 if same else np.inf)
        print(f"{k:30s} {'identical' if same else 'differs'}  max |diff| {diff:.3g}")
        if diff > tolerance:
            bad.append(k)
    if bad:
        print(f"beyond tolerance {tolerance} (or missing): {bad}")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("save")
    s.add_argument("output", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    c.add_argument("--tolerance", type=float, default=0.0)
    args = ap.parse_args(argv)
    if args.cmd == "save":
        save(args.output)
        return 0
    return compare(args.before, args.after, args.tolerance)


if __name__ == "__main__":
    sys.exit(main())
