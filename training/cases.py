"""Training and evaluation cases: the BraTS-family scans in ../shared/data, and readers for public layouts.

Whole tumour = seg > 0 in every label scheme. ``expert`` is False for the TCGA pseudo ground truth
(a fusion of 5 BraTS algorithms): fine for choosing healthy tissue, weaker for scoring.

Readers (each given a folder, or a CSV file) return ``Case`` objects for one contrast or several
(``contrast="flair,t1ce"`` or a sequence: the first is the primary image, the others ride along as
co-registered extra contrasts; a case lacking any of them is left out):

    brats2021  BraTS2021_XXXXX/BraTS2021_XXXXX_{flair,t1,t1ce,t2,seg}.nii.gz
    brats2023  BraTS-GLI-XXXXX-XXX/BraTS-GLI-XXXXX-XXX-{t2f,t1n,t1c,t2w,seg}.nii.gz (any BraTS-* prefix)
    msd        Task01_BrainTumour: imagesTr/BRATS_XXX.nii.gz (4-D: FLAIR, T1w, t1gd, T2w), labelsTr/BRATS_XXX.nii.gz
    csv        a table of paths: one column per contrast (e.g. ``flair``), optional ``seg``, ``brain_mask``,
               ``name``, ``dataset``; relative paths are relative to the CSV's folder. No ``seg``: a healthy scan.

Contrast names are ``flair`` (default), ``t1``, ``t1ce``, ``t2``; each reader maps them to its own file
naming. ``find_cases("kind:path")`` picks a reader explicitly, ``find_cases(path)`` detects the layout.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from AnoDODELib.config import CONTRASTS

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """``$ANODODE_DATA`` or ../shared/data beside the repository."""
    return Path(os.environ.get("ANODODE_DATA", REPO.parent / "shared" / "data"))


@dataclass(frozen=True)
class Case:
    """One scan. ``flair`` is the image file of the primary contrast (the name is historical: it holds
    whatever contrast the reader was asked for first, see ``contrast``); ``channel`` selects one volume of
    a 4-D file (MSD), None for a 3-D file. ``extra`` holds the further contrasts of a multi-contrast
    model as (contrast, file, channel), aligned with the primary image."""

    name: str
    dataset: str
    flair: Path
    seg: Path | None
    brain_mask: Path | None = None
    expert: bool = True
    channel: int | None = None
    contrast: str = "flair"
    resample_seg: bool = False  # a seg on another grid is resampled onto the image (nearest, by mm)
    extra: tuple[tuple[str, Path, int | None], ...] = ()

    @property
    def image(self) -> Path:
        return self.flair

    @property
    def contrasts(self) -> tuple[str, ...]:
        return (self.contrast, *(c for c, _, _ in self.extra))

    def input_files(self) -> list[Path]:
        files = [p for p in (self.flair, self.seg, self.brain_mask) if p is not None]
        return files + [p for _, p, _ in self.extra if p not in files]


def read_case_image(case: Case) -> sitk.Image:
    """The case's primary 3-D image (a 4-D file's ``channel`` extracted in memory), validated like any input."""
    return _read_volume(case.flair, case.channel)


def read_case_images(case: Case) -> tuple[sitk.Image, dict[str, sitk.Image]]:
    """The primary image and the extra contrasts by name."""
    return read_case_image(case), {c: _read_volume(p, ch) for c, p, ch in case.extra}


def _read_volume(path: Path, channel: int | None) -> sitk.Image:
    from AnoDODELib import volume_io

    if channel is None:
        return volume_io.read_image(path)
    image = sitk.ReadImage(str(path))
    if image.GetNumberOfComponentsPerPixel() > 1:  # stored as a vector image
        n = image.GetNumberOfComponentsPerPixel()
        if not 0 <= channel < n:
            raise volume_io.InputError(f"{path}: channel {channel} of {n}")
        return sitk.VectorIndexSelectionCast(image, channel)
    if image.GetDimension() != 4:
        raise volume_io.InputError(
            f"{path}: a channel was asked for but the image is {image.GetDimension()}-D"
        )
    size = list(image.GetSize())
    if not 0 <= channel < size[3]:
        raise volume_io.InputError(f"{path}: channel {channel} of {size[3]}")
    return sitk.Extract(image, size[:3] + [0], [0, 0, 0, channel])


def _check_contrast(contrast: str) -> str:
    c = contrast.lower()
    if c not in CONTRASTS:
        raise ValueError(f"unknown contrast {contrast!r}; valid: {', '.join(CONTRASTS)}")
    return c


def parse_contrasts(contrast: str | Sequence[str]) -> tuple[str, ...]:
    """``"flair,t1ce"`` or ``["flair", "t1ce"]`` -> ("flair", "t1ce"), checked (known, distinct, not empty)."""
    items = contrast.split(",") if isinstance(contrast, str) else list(contrast)
    out = tuple(_check_contrast(c.strip()) for c in items if c.strip())
    if not out or len(set(out)) != len(out):
        raise ValueError(f"contrasts must be distinct names from {', '.join(CONTRASTS)}; got {contrast!r}")
    return out


def _case(
    name: str,
    dataset: str,
    files: list[tuple[str, Path, int | None]],
    seg: Path | None,
    brain_mask: Path | None = None,
    expert: bool = True,
) -> Case:
    (c0, p0, ch0), rest = files[0], tuple(files[1:])
    return Case(name, dataset, p0, seg, brain_mask, expert, channel=ch0, contrast=c0, extra=rest)


BRATS2021_SUFFIX = {"flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2"}
BRATS2023_SUFFIX = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}
MSD_CHANNEL = {"flair": 0, "t1": 1, "t1ce": 2, "t2": 3}
MSD_NAMES = {"flair": "flair", "t1": "t1w", "t1ce": "t1gd", "t2": "t2w"}


def _first_existing(*paths: Path) -> Path | None:
    return next((p for p in paths if p.exists()), None)


def _read_folders(
    folder: str | os.PathLike,
    contrast: str | Sequence[str],
    dataset: str,
    prefix: str,
    sep: str,
    suffixes: dict[str, str],
) -> list[Case]:
    contrasts = parse_contrasts(contrast)
    out = []
    for d in sorted(Path(folder).iterdir()):
        if not (d.is_dir() and d.name.startswith(prefix)):
            continue
        files = [
            (
                c,
                _first_existing(
                    d / f"{d.name}{sep}{suffixes[c]}.nii.gz", d / f"{d.name}{sep}{suffixes[c]}.nii"
                ),
                None,
            )
            for c in contrasts
        ]
        if any(p is None for _, p, _ in files):
            continue
        seg = _first_existing(d / f"{d.name}{sep}seg.nii.gz", d / f"{d.name}{sep}seg.nii")
        out.append(_case(d.name, dataset, files, seg))
    return out


def read_brats2021(
    folder: str | os.PathLike, contrast: str | Sequence[str] = "flair", dataset: str = "BraTS2021"
) -> list[Case]:
    """Every ``BraTS2021_*`` case folder under ``folder`` that has the contrast(s) (seg optional)."""
    return _read_folders(folder, contrast, dataset, "BraTS2021_", "_", BRATS2021_SUFFIX)


def read_brats2023(
    folder: str | os.PathLike, contrast: str | Sequence[str] = "flair", dataset: str = "BraTS2023"
) -> list[Case]:
    """Every ``BraTS-*`` case folder (GLI, MEN, MET, PED, SSA ...) under ``folder`` with the contrast(s)."""
    return _read_folders(folder, contrast, dataset, "BraTS-", "-", BRATS2023_SUFFIX)


def read_msd(
    folder: str | os.PathLike,
    contrast: str | Sequence[str] = "flair",
    dataset: str = "MSD Task01_BrainTumour",
) -> list[Case]:
    """Task01_BrainTumour: 4-D ``imagesTr/BRATS_XXX.nii.gz``; the channel comes from ``dataset.json``'s
    ``modality`` when present (else FLAIR, T1w, t1gd, T2w). Labels from ``labelsTr`` when present."""
    contrasts = parse_contrasts(contrast)
    root = Path(folder)
    channels = dict(MSD_CHANNEL)
    meta = root / "dataset.json"
    if meta.exists():
        modality = json.loads(meta.read_text(encoding="utf-8")).get("modality", {})
        named = {v.lower(): int(k) for k, v in modality.items()}
        channels = {c: named.get(MSD_NAMES[c], ch) for c, ch in channels.items()}
    out = []
    for sub in ("imagesTr", "imagesTs"):
        for img in sorted((root / sub).glob("*.nii*")):
            if img.name.startswith("._"):  # macOS resource forks shipped in the MSD tarball
                continue
            name = re.sub(r"\.nii(\.gz)?$", "", img.name)
            seg = _first_existing(root / "labelsTr" / img.name) if sub == "imagesTr" else None
            out.append(_case(name, dataset, [(c, img, channels[c]) for c in contrasts], seg))
    return out


def read_csv(
    path: str | os.PathLike, contrast: str | Sequence[str] = "flair", dataset: str | None = None
) -> list[Case]:
    """Cases from a CSV table of paths; the image columns are the contrasts' names (``flair`` ...). A row
    without a path for one of them is left out."""
    contrasts = parse_contrasts(contrast)
    path = Path(path)
    base = path.parent
    out = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        cols = {k.strip().lower(): k for k in (reader.fieldnames or [])}
        for c in contrasts:
            if c not in cols:
                raise ValueError(f"{path}: no {c!r} column (columns: {', '.join(cols)})")

        def get(row: dict, key: str) -> str:
            return (row.get(cols[key]) or "").strip() if key in cols else ""

        def resolve(value: str) -> Path | None:
            if not value:
                return None
            p = Path(value).expanduser()
            return p if p.is_absolute() else base / p

        for i, row in enumerate(reader):
            files = [(c, resolve(get(row, c)), None) for c in contrasts]
            if any(p is None for _, p, _ in files):
                continue
            img = files[0][1]
            name = get(row, "name") or re.sub(r"\.nii(\.gz)?$|\.[^.]+$", "", img.name) or f"row{i}"
            out.append(
                _case(
                    name,
                    get(row, "dataset") or dataset or path.stem,
                    files,
                    resolve(get(row, "seg")),
                    resolve(get(row, "brain_mask")),
                )
            )
    return out


READERS = {"brats2021": read_brats2021, "brats2023": read_brats2023, "msd": read_msd, "csv": read_csv}


def detect_layout(path: Path) -> str:
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "csv"
        raise ValueError(f"{path}: a file source must be a .csv table")
    if (path / "imagesTr").is_dir():
        return "msd"
    names = [d.name for d in path.iterdir() if d.is_dir()]
    if any(n.startswith("BraTS2021_") for n in names):
        return "brats2021"
    if any(n.startswith("BraTS-") for n in names):
        return "brats2023"
    raise ValueError(
        f"{path}: unrecognised layout (expected BraTS2021_*/, BraTS-*/ folders, imagesTr/, or a "
        "CSV); name it explicitly as kind:path with kind one of " + ", ".join(READERS)
    )


def find_cases(source: str | os.PathLike, contrast: str | Sequence[str] = "flair") -> list[Case]:
    """Cases from ``kind:path`` or a path whose layout is detected; ``brats-family``, ``wmh-clinical`` and
    ``isles22`` are the labelled FLAIRs in the shared data (the last two FLAIR only: asked for other
    contrasts, their cases are left out, with a warning, as any reader leaves out a case lacking one)."""
    s = str(source)
    kind, _, rest = s.partition(":")
    if s == "brats-family":
        return brats_family_cases(contrasts=parse_contrasts(contrast))
    if s in ("wmh-clinical", "isles22"):
        found = wmh_clinical_cases() if s == "wmh-clinical" else isles_cases()
        wanted = parse_contrasts(contrast)
        if wanted != ("flair",):
            if found:
                logger.warning(
                    "%s has FLAIR only: its %d case(s) are left out of a %s model",
                    s,
                    len(found),
                    "+".join(wanted),
                )
            return []
        return found
    if rest and kind in READERS:
        path = Path(rest)
    else:
        kind, path = "", Path(s)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    kind = kind or detect_layout(path)
    return READERS[kind](path, contrast)


# the shared BraTS-family cases: (name, dataset, folder, {contrast: file}, seg, brain mask, expert)
def _brats_family_table(d: Path) -> list[tuple[str, str, Path, dict[str, str], str, str | None, bool]]:
    rows = []
    for i in range(1, 5):
        rows.append(
            (
                f"brats2013_pat000{i}",
                "BraTS2015 (deepmedic)",
                d / "deepmedic_brats2015" / f"brats_2013_pat000{i}_1",
                {"flair": "Flair_subtrMeanDivStd.nii.gz", "t1ce": "T1c_subtrMeanDivStd.nii.gz"},
                "OTMultiClass.nii.gz",
                "brainmask.nii.gz",
                True,
            )
        )
    rows.append(
        (
            "brats_tcia_pat222",
            "BRATS2014 (antsxnet)",
            d / "antsxnet_brats2014" / "brats_tcia_pat222_2",
            {"flair": "Flair.nii.gz", "t1": "T1.nii.gz", "t1ce": "T1c.nii.gz", "t2": "T2.nii.gz"},
            "segmentation.nii.gz",
            "BrainExtractionMask.nii.gz",
            True,
        )
    )
    rows.append(
        (
            "BRATS_HG0015",
            "BRATS2012",
            d / "brats2012" / "BRATS_HG0015",
            {
                c: f"BRATS_HG0015_{s}.mha"
                for c, s in (("flair", "FLAIR"), ("t1", "T1"), ("t1ce", "T1C"), ("t2", "T2"))
            },
            "BRATS_HG0015_truth.mha",
            None,
            True,
        )
    )
    for n in ("TCGA-DU-7294", "OtherEXampleFromTCIA"):
        rows.append(
            (
                n,
                "TCGA (pseudo-GT)",
                d / "brainlesion_tcga_pseudoGT" / n,
                {
                    c: f"{n}_{s}_bet.nii.gz"
                    for c, s in (("flair", "fla"), ("t1", "t1"), ("t1ce", "t1c"), ("t2", "t2"))
                },
                f"{n}_fusion_simple_seg.nii.gz",
                None,
                False,
            )
        )
    return rows


def brats_family_cases(root: Path | None = None, contrasts: Sequence[str] = ("flair",)) -> list[Case]:
    """Every 3-D BraTS-family case with a lesion mask, under ``root``, that has all ``contrasts`` (the
    deepmedic cases have FLAIR and T1ce only)."""
    contrasts = parse_contrasts(contrasts)
    cases: list[Case] = []
    for name, dataset, folder, files, seg, brain, expert in _brats_family_table(root or data_dir()):
        paths = [(c, folder / files[c], None) for c in contrasts if c in files]
        if len(paths) < len(contrasts) or not all(p.exists() for _, p, _ in paths):
            continue
        cases.append(_case(name, dataset, paths, folder / seg, folder / brain if brain else None, expert))
    return cases


WMH_CLINICAL = ("2516038876", "2516041494", "2516044939")


def wmh_clinical_cases(root: Path | None = None) -> list[Case]:
    """The clinical 2-D FLAIRs with white-matter hyperintensities (another site; manual WMH masks)."""
    d = (root or data_dir()) / "wmh_clinical"
    cases = [
        Case(n, "WMH clinical", d / n / "t2flair-stripped.nii.gz", d / n / "gt.nii.gz") for n in WMH_CLINICAL
    ]
    return [c for c in cases if c.flair.exists() and c.seg is not None and c.seg.exists()]


def isles_cases(root: Path | None = None) -> list[Case]:
    """The ISLES 2022 stroke FLAIR; its lesion mask is drawn on the DWI grid and resampled onto the FLAIR."""
    d = (root or data_dir()) / "isles22" / "sub-strokecase0009"
    c = Case(
        "sub-strokecase0009",
        "ISLES 2022",
        d / "sub-strokecase0009_ses-0001_flair.nii.gz",
        d / "sub-strokecase0009_ses-0001_msk.nii.gz",
        resample_seg=True,
    )
    return [c] if c.flair.exists() and c.seg is not None and c.seg.exists() else []


RAW_CLINICAL = ("104252", "105755")


def raw_clinical_cases(root: Path | None = None) -> list[Case]:
    """The raw clinical MS FLAIRs (skull, scalp and bias field present; 2-D, 6.4-6.5 mm slices): the input as
    a clinician has it. No brain mask: a model extracts the brain as a user's run does. The site's own mask
    (``site_mask``) is for evaluation only."""
    d = (root or data_dir()) / "raw_clinical_ms"
    cases = [
        Case(f"raw_ms_{n}", "raw clinical MS", d / n / "flair.nii.gz", d / n / "label.nii.gz")
        for n in RAW_CLINICAL
    ]
    return [c for c in cases if c.flair.exists() and c.seg is not None and c.seg.exists()]


def site_mask(case: Case) -> Path:
    """The site's own mask of a raw clinical case (beside its FLAIR): a white-matter region that leaves out
    the cortex, the posterior fossa and the vertex (804 and 765 mL against HD-BET's 1560 and 1382 mL)."""
    return case.flair.parent / "brainmask.nii.gz"


def unlabelled_cases(root: Path | None = None) -> list[Case]:
    """BraTS-family FLAIRs without a lesion mask (qualitative use only)."""
    d = root or data_dir()
    p = d / "brats2023_noGT" / "BraTS-GLI-00001-000"
    c = Case("BraTS-GLI-00001-000", "BraTS2023", p / "BraTS-GLI-00001-000-t2f.nii.gz", None)
    return [c] if c.flair.exists() else []


def select(cases: list[Case], names: list[str] | None = None, exclude: list[str] | None = None) -> list[Case]:
    """Keep ``names`` (all when None; an unknown name is an error) minus ``exclude``."""
    known = {c.name for c in cases}
    for n in names or []:
        if n not in known:
            raise ValueError(f"unknown case {n!r}")
    keep = set(names) if names else known
    drop = set(exclude or [])
    return [c for c in cases if c.name in keep and c.name not in drop]


def seg_array(case: Case, image: sitk.Image) -> np.ndarray:
    """Whole-tumour mask (seg > 0) in the image's array layout (all False without a seg).

    A seg on another grid is an error unless ``case.resample_seg``: then it is resampled onto the image's
    grid (nearest neighbour at each voxel's physical position, 0 outside the seg), e.g. a lesion mask drawn
    on a DWI of the same session."""
    from AnoDODELib import volume_io

    if case.seg is None:
        return np.zeros(sitk.GetArrayViewFromImage(image).shape, bool)
    seg = sitk.ReadImage(str(case.seg))
    if not volume_io.same_grid(seg, image):
        if not case.resample_seg:
            raise ValueError(
                f"{case.seg} is not on the grid of {case.flair} (--resample-seg resamples it "
                "onto the image by physical coordinates)"
            )
        if seg.GetNumberOfComponentsPerPixel() != 1 or seg.GetDimension() != 3:
            raise ValueError(f"{case.seg}: a seg must be a 3-D scalar image")
        # nearest neighbour at each image voxel's physical position (mm); outside the seg's extent = 0
        seg = sitk.Resample(seg, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, seg.GetPixelID())
    return np.rint(sitk.GetArrayFromImage(seg)) > 0
