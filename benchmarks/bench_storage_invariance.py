"""How much the anomalous volume moves when nothing about the anatomy changes (issue 26, item 4).

    python benchmarks/bench_storage_invariance.py [--case brats2013_pat0001] [--preset standard]

Scores one real FLAIR (../shared/data) with the bundled model three ways: as stored (float), stored as int16
after multiplying by 100 (what many pipelines write), and with its brain mask eroded by one voxel
(6-connected). Prints, per variant, the white-matter-peak centre and spread the intensity normalisation
found (in the float scan's units), the anomalous volume (mL), the map's maximum, and the spread of the mL
over the three: (max - min) / mean. The same scan should give the same volume: the normalisation's centre
is the mode of the brain's intensity histogram, and a histogram of quantised intensities (a scan stored as
integers, or as rounded floats) binned without regard to the quantum moved it by up to 0.17 white-matter
spreads (docs/method.md).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    from AnoDODELib import volume_io
    from AnoDODELib.bundle import load_model
    from AnoDODELib.outputs import OutputSet, ScanInputs, score_to_files
    from training.cases import brats_family_cases, wmh_clinical_cases

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="brats2013_pat0001")
    ap.add_argument("--preset", default="standard")
    args = ap.parse_args(argv)
    case = next(c for c in brats_family_cases() + wmh_clinical_cases() if c.name == args.case)
    model = load_model()
    image = volume_io.read_image(case.flair)
    array = sitk.GetArrayFromImage(image)
    if case.brain_mask is not None:
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(case.brain_mask))) > 0.5
    else:
        mask = volume_io.brain_mask_from_image(
            array.astype(np.float32), slice_axis=volume_io.axial_axis(image)
        )
    eroded = ndimage.binary_erosion(mask, ndimage.generate_binary_structure(3, 1))
    scaled = np.round(array.astype(np.float64) * 100).astype(np.int16)
    reference = model.config.preprocess.intensity_reference
    rows = []
    with tempfile.TemporaryDirectory(prefix="anodode-invariance-") as tmp:
        root = Path(tmp)

        def write(a: np.ndarray, name: str) -> Path:
            out = sitk.GetImageFromArray(a)
            out.CopyInformation(image)
            sitk.WriteImage(out, str(root / name))
            return root / name

        flair = write(array.astype(np.float32), "float.nii.gz")
        as_int = write(scaled, "int16.nii.gz")
        full_mask, thin_mask = (
            write(mask.astype(np.uint8), "mask.nii.gz"),
            write(eroded.astype(np.uint8), "eroded.nii.gz"),
        )
        for label, scan, m, unit, brain in [
            ("float", flair, full_mask, 1.0, mask),
            ("int16 x100", as_int, full_mask, 100.0, mask),
            ("mask eroded 1 voxel", flair, thin_mask, 1.0, eroded),
        ]:
            values = sitk.GetArrayFromImage(sitk.ReadImage(str(scan))).astype(np.float64)[brain]
            centre, spread = volume_io.intensity_reference(values, reference)
            report = score_to_files(
                ScanInputs(scan, m),
                OutputSet.with_stem(root / "out", label.split()[0]),
                model,
                device="cpu",
                preset=args.preset,
            )
            rows.append(
                (label, centre / unit, spread / unit, report["anomalous_volume_ml"], report["map_max"])
            )
            print(
                f"{label:22s} centre {centre / unit:+.4f}  spread {spread / unit:.4f}  "
                f"{report['anomalous_volume_ml']:8.2f} mL  map max {report['map_max']:.2f}",
                flush=True,
            )
    ml = np.array([r[3] for r in rows])
    centres = np.array([r[1] for r in rows])
    print(
        f"{case.name} ({reference}, preset {args.preset}): mL spread (max - min) / mean = "
        f"{(ml.max() - ml.min()) / ml.mean():.3f}; centre range {centres.max() - centres.min():.4f} "
        f"= {(centres.max() - centres.min()) / rows[0][2]:.3f} white-matter spreads"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
