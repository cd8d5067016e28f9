"""How much a map changes when the scan covers only part of the brain (2-D clinical FLAIRs often do).

    python benchmarks/coverage.py [--model DIR] [--json out.json] [SCAN ...]

Each scan (default: the held-out ISLES 2022 FLAIR and the unlabelled BraTS 2023 FLAIR in ../shared/data) is
scored whole, then cropped to the superior half and to the inferior half of its brain slices (a new image of
only those slices, same geometry) and scored again. Per crop it prints, over the crop's brain voxels, the
Pearson correlation of the cropped scan's map with the whole scan's map and the Dice of their labels at the
model's threshold: 1.0 / 1.0 means the map does not depend on how much of the brain the scan covers. A model
whose context holds the slice's place in the brain's bounding box (``FeatureConfig.slice_position``) reads
a half-covered brain as a whole one squeezed; one without it does not. Nothing is written but --json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from AnoDODELib import volume_io
from AnoDODELib.bundle import load_model
from AnoDODELib.pipeline import score_image

DATA = Path(os.environ.get("ANODODE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
DEFAULT_SCANS = [
    DATA / "isles22" / "sub-strokecase0009" / "sub-strokecase0009_ses-0001_flair.nii.gz",
    DATA / "brats2023_noGT" / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-t2f.nii.gz",
]


def crop_axial(image: sitk.Image, keep: slice) -> sitk.Image:
    """The image restricted to the axial index range ``keep`` (axis of the sitk array), geometry kept."""
    axis = volume_io.axial_axis(image)  # numpy axis of GetArrayFromImage
    index_axis = 2 - axis  # sitk index axis
    size = list(image.GetSize())
    start = [0, 0, 0]
    start[index_axis] = keep.start
    size[index_axis] = keep.stop - keep.start
    return sitk.RegionOfInterest(image, size, start)


def compare(image: sitk.Image, model) -> list[dict]:
    whole = score_image(image, model, device="cpu")
    axis = volume_io.axial_axis(image)
    arr = sitk.GetArrayFromImage(image)
    mask = volume_io.brain_mask_from_image(arr, slice_axis=axis)
    has = np.nonzero(np.moveaxis(mask, axis, 0).reshape(arr.shape[axis], -1).any(1))[0]
    mid = int(has[len(has) // 2])
    rows = []
    for name, keep in (
        ("superior half", slice(mid, int(has[-1]) + 1)),
        ("inferior half", slice(int(has[0]), mid)),
    ):
        part = score_image(crop_axial(image, keep), model, device="cpu")
        ref_map = np.take(whole.anomaly_map, range(keep.start, keep.stop), axis=axis)
        ref_lab = np.take(whole.label, range(keep.start, keep.stop), axis=axis).astype(bool)
        brain = np.take(mask, range(keep.start, keep.stop), axis=axis)
        a, b = ref_map[brain], part.anomaly_map[brain]
        lab = part.label.astype(bool)[brain]
        inter, total = float((lab & ref_lab[brain]).sum()), float(lab.sum() + ref_lab[brain].sum())
        rows.append(
            {
                "crop": name,
                "slices": keep.stop - keep.start,
                "map_pearson": float(np.corrcoef(a, b)[0, 1]),
                "label_dice": 2 * inter / total if total else 1.0,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scans", nargs="*", type=Path)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    model = load_model(args.model)
    out = {}
    for scan in args.scans or DEFAULT_SCANS:
        if not scan.exists():
            print(f"skip {scan}: not found", file=sys.stderr)
            continue
        rows = compare(volume_io.read_image(scan), model)
        out[scan.name] = rows
        for r in rows:
            print(
                f"{scan.name:45s} {r['crop']:14s} slices {r['slices']:3d}  map r {r['map_pearson']:.3f}  "
                f"label Dice {r['label_dice']:.3f}"
            )
    if args.json:
        args.json.write_text(
            json.dumps({"model": str(args.model or "bundled"), "scans": out}, indent=2), encoding="utf-8"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
