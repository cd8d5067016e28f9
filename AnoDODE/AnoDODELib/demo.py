"""A synthetic FLAIR-like phantom with a hyperintense lesion at a known place.

It is NOT a real scan: an ellipsoidal skull-stripped "brain" with a brighter cortical ribbon, darker
white matter, dark ventricles (CSF is dark on FLAIR), smooth bias and noise, and one spherical
hyperintense lesion with a fainter oedema rim. The project ships no patient data, so the offline demo
scores this phantom, and the lesion mask tells whether the map found it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class Phantom:
    """The phantom scan and its ground truth: the lesion mask on the same grid and the lesion's centre."""

    image: sitk.Image  # FLAIR-like float32 volume, RAS-stored like most NIfTI files
    lesion: sitk.Image  # uint8 mask of the whole lesion (core + oedema rim) on the same grid
    lesion_centre_mm: tuple[float, float, float]  # physical (LPS) centre of the lesion


def make_phantom(seed: int = 0, lesion_radius_mm: float = 12.0, spacing=(1.5, 1.5, 3.0)) -> Phantom:
    """Build the phantom; spacing (x, y, z) in mm; the lesion sits in the right frontal white matter."""
    rng = np.random.default_rng(seed)
    sx, sy, sz = spacing
    nx, ny, nz = int(160 / sx), int(190 / sy), int(150 / sz)
    # physical coordinates (mm) relative to the volume centre, array order (z, y, x)
    z = (np.arange(nz) - nz / 2 + 0.5) * sz
    y = (np.arange(ny) - ny / 2 + 0.5) * sy
    x = (np.arange(nx) - nx / 2 + 0.5) * sx
    Z, Y, X = np.meshgrid(z, y, x, indexing="ij")
    r_brain = np.sqrt((X / 68) ** 2 + (Y / 85) ** 2 + (Z / 62) ** 2)
    brain = r_brain < 1.0
    img = np.where(brain, 1.0, 0.0)  # white matter
    img = np.where(brain & (r_brain > 0.93), 1.12, img)  # cortical ribbon (grey matter, a little brighter)
    vent = np.sqrt(((np.abs(X) - 9) / 7) ** 2 + (Y / 28) ** 2 + ((Z - 8) / 14) ** 2) < 1.0
    img = np.where(vent & brain, 0.35, img)  # ventricles: CSF is dark on FLAIR
    centre = np.array([-30.0, -35.0, 18.0])  # (x, y, z) mm in the array-centred frame
    d = np.sqrt((X - centre[0]) ** 2 + (Y - centre[1]) ** 2 + (Z - centre[2]) ** 2)
    lesion = brain & (d < lesion_radius_mm)
    oedema = brain & (d < lesion_radius_mm * 1.6) & ~lesion
    img = np.where(oedema, img + 0.45, img)
    img = np.where(lesion, 1.9, img)
    bias = 1.0 + 0.08 * (X / 80) - 0.05 * (Z / 70)
    img = np.where(brain, img * bias + rng.normal(0, 0.05, img.shape), 0.0)
    image = sitk.GetImageFromArray((img * 400).astype(np.float32))
    image.SetSpacing((sx, sy, sz))
    image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # RAS storage
    image.SetOrigin((nx / 2 * sx, ny / 2 * sy, -nz / 2 * sz))
    mask = sitk.GetImageFromArray((lesion | oedema).astype(np.uint8))  # whole lesion, as BraTS "whole tumour"
    mask.CopyInformation(image)
    idx = [int(v) for v in np.argwhere(lesion).mean(axis=0)[::-1]]
    return Phantom(image, mask, tuple(image.TransformIndexToPhysicalPoint(idx)))


#: The demo passes when the map's peak lies in the lesion and the best-possible Dice of the map with the
#: lesion mask (the threshold chosen on the truth) is at least this; the bundled model reaches about 0.95.
MIN_BEST_DICE = 0.5


@dataclass(frozen=True)
class LesionFound:
    """How well an anomaly map found the phantom's lesion (``lesion_found``)."""

    peak_inside: bool  # the map's maximum lies within 2 voxels of the lesion mask
    best_dice: float  # the best Dice of (map > t) with the lesion over thresholds t, brain voxels (map > 0)
    label_dice: float  # Dice of the label (map > calibrated threshold) with the lesion

    @property
    def ok(self) -> bool:
        """The demo's pass criterion: the peak lies in the lesion and best_dice >= ``MIN_BEST_DICE``."""
        return self.peak_inside and self.best_dice >= MIN_BEST_DICE


def best_dice(score: np.ndarray, truth: np.ndarray) -> float:
    """max over t of 2 |{s > t} & T| / (|{s > t}| + |T|), thresholds between the sorted scores.

    With the scores sorted in decreasing order, labelling the top k gives Dice 2 tp_k / (k + |T|), tp_k the
    number of lesion voxels among them; ties are labelled together (only the last index of a run of equal
    scores is a valid cut)."""
    s, t = np.asarray(score, np.float64).ravel(), np.asarray(truth, bool).ravel()
    n_true = int(t.sum())
    if n_true == 0 or s.size == 0:
        return 0.0
    order = np.argsort(-s, kind="stable")
    ss, tp = s[order], np.cumsum(t[order])
    k = np.arange(1, s.size + 1)
    valid = np.r_[ss[1:] != ss[:-1], True]
    return float(np.max(np.where(valid, 2.0 * tp / (k + n_true), 0.0)))


def lesion_found(anomaly: np.ndarray, label: np.ndarray, lesion: np.ndarray) -> LesionFound:
    """Whether an anomaly map (and its label) found a known lesion (all three arrays on the same grid)."""
    peak = np.unravel_index(int(np.argmax(anomaly)), anomaly.shape)
    near = bool(np.any(lesion[tuple(slice(max(0, p - 2), p + 3) for p in peak)]))
    scored = anomaly > 0
    inter = float((label & lesion).sum())
    label_dice = 2 * inter / max(float(label.sum() + lesion.sum()), 1.0)
    return LesionFound(near, best_dice(anomaly[scored | lesion], lesion[scored | lesion]), label_dice)
