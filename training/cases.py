"""The 3-D BraTS-family FLAIR cases in ../shared/data (read in place, never copied).

Whole tumour = seg > 0 in every label scheme. ``expert`` is False for the TCGA pseudo ground truth
(a fusion of 5 BraTS algorithms): fine for choosing healthy tissue, weaker for scoring.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """``$ANODODE_DATA`` or ../shared/data beside the repository."""
    return Path(os.environ.get("ANODODE_DATA", REPO.parent / "shared" / "data"))


@dataclass(frozen=True)
class Case:
    name: str
    dataset: str
    flair: Path
    seg: Path | None
    brain_mask: Path | None = None
    expert: bool = True


def brats_family_cases(root: Path | None = None) -> list[Case]:
    """Every 3-D BraTS-family case with a lesion mask that exists under ``root``."""
    d = root or data_dir()
    cases: list[Case] = []
    for i in range(1, 5):
        p = d / "deepmedic_brats2015" / f"brats_2013_pat000{i}_1"
        cases.append(Case(f"brats2013_pat000{i}", "BraTS2015 (deepmedic)", p / "Flair_subtrMeanDivStd.nii.gz",
                          p / "OTMultiClass.nii.gz", p / "brainmask.nii.gz"))
    p = d / "antsxnet_brats2014" / "brats_tcia_pat222_2"
    cases.append(Case("brats_tcia_pat222", "BRATS2014 (antsxnet)", p / "Flair.nii.gz", p / "segmentation.nii.gz",
                      p / "BrainExtractionMask.nii.gz"))
    p = d / "brats2012" / "BRATS_HG0015"
    cases.append(Case("BRATS_HG0015", "BRATS2012", p / "BRATS_HG0015_FLAIR.mha", p / "BRATS_HG0015_truth.mha"))
    for n in ("TCGA-DU-7294", "OtherEXampleFromTCIA"):
        p = d / "brainlesion_tcga_pseudoGT" / n
        cases.append(Case(n, "TCGA (pseudo-GT)", p / f"{n}_fla_bet.nii.gz", p / f"{n}_fusion_simple_seg.nii.gz",
                          expert=False))
    return [c for c in cases if c.flair.exists()]


def unlabelled_cases(root: Path | None = None) -> list[Case]:
    """BraTS-family FLAIRs without a lesion mask (qualitative use only)."""
    d = root or data_dir()
    p = d / "brats2023_noGT" / "BraTS-GLI-00001-000"
    c = Case("BraTS-GLI-00001-000", "BraTS2023", p / "BraTS-GLI-00001-000-t2f.nii.gz", None)
    return [c] if c.flair.exists() else []
