"""Scanner and protocol variation for training: what a FLAIR from another site looks like.

A model trained on BraTS-preprocessed FLAIRs alone learns BraTS's contrast, bias and 1 mm slices. Each
augmented copy of a training case changes, on the canonical (S, P, L) volume with the lesion masks
carried along (so normal tissue stays normal tissue):

    u  = (x - p1) / (p99 - p1)                       brain intensities to about [0, 1] (x: raw intensity)
    u <- u ** gamma                                  contrast change, log gamma ~ U(log g0, log g1)
    u <- u * exp(b(p))                               smooth multiplicative bias; b a random quadratic polynomial
                                                     of position, |b| <= ``bias``
    u <- u + sum_k a_k exp(-|p - c_k|^2 / 2 s_k^2)   regional brightness shifts: blobs at brain voxels c_k,
                                                     s_k ~ U(15, 40) mm, a_k ~ U(-1, 1) * ``regional`` * std(u)
    slices -> blocks of n slices averaged            thick 2-D slices (n = thickness / slice spacing,
                                                     thickness ~ U(``thick_mm``)), with probability ``thick_p``

The engine then normalises and featurises the copy as it would any scan, so every invariance the model
gets here is one it must also have at scoring time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class AugmentConfig:
    """How augmented copies are drawn (``copies`` = 0: none). Amplitudes are dimensionless (see module doc)."""

    copies: int = 0
    gamma: tuple[float, float] = (0.7, 1.4)
    bias: float = 0.25
    regional: float = 0.5
    blobs: int = 3
    thick_mm: tuple[float, float] = (4.0, 8.0)
    thick_p: float = 0.5

    def __post_init__(self) -> None:
        if self.copies < 0 or self.blobs < 0:
            raise ValueError("copies and blobs must be >= 0")
        if not 0 < self.gamma[0] <= self.gamma[1]:
            raise ValueError(f"gamma range must satisfy 0 < low <= high, got {self.gamma}")
        if self.bias < 0 or self.regional < 0 or not 0 <= self.thick_p <= 1:
            raise ValueError("bias and regional must be >= 0 and thick_p in [0, 1]")
        if not 0 < self.thick_mm[0] <= self.thick_mm[1]:
            raise ValueError(f"thick_mm range must satisfy 0 < low <= high, got {self.thick_mm}")


def _coords(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> list[np.ndarray]:
    """Physical coordinates (mm) of each axis, broadcastable to ``shape``."""
    out = []
    for ax, (n, s) in enumerate(zip(shape, spacing)):
        v = np.arange(n, dtype=np.float32) * s
        out.append(v.reshape([-1 if a == ax else 1 for a in range(3)]))
    return out


def augment_intensity(
    raw: np.ndarray,
    brain: np.ndarray,
    spacing: tuple[float, float, float],
    cfg: AugmentConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    """One random intensity change of a canonical volume (see module doc); float32, 0 outside ``brain``."""
    v = raw[brain].astype(np.float64)
    lo, hi = np.percentile(v, [1, 99])
    u = np.clip((raw.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0.0, None)
    u = u ** np.float32(np.exp(rng.uniform(np.log(cfg.gamma[0]), np.log(cfg.gamma[1]))))
    coords = _coords(raw.shape, spacing)
    idx = np.argwhere(brain)
    centre = idx.mean(0) * np.asarray(spacing)
    half = np.maximum((idx.max(0) - idx.min(0)) * np.asarray(spacing) / 2.0, 1.0)
    rel = [(c - m) / h for c, m, h in zip(coords, centre, half)]
    terms = [
        rel[0],
        rel[1],
        rel[2],
        rel[0] * rel[1],
        rel[0] * rel[2],
        rel[1] * rel[2],
        rel[0] ** 2,
        rel[1] ** 2,
        rel[2] ** 2,
    ]
    field = sum(np.float32(rng.normal()) * t for t in terms)
    peak = float(np.abs(np.broadcast_to(field, raw.shape)[brain]).max()) or 1.0
    u = u * np.exp(np.float32(cfg.bias * rng.uniform(0, 1) / peak) * field)
    spread = float(u[brain].std())
    for _ in range(cfg.blobs):
        c = idx[rng.integers(len(idx))] * np.asarray(spacing)
        s = rng.uniform(15.0, 40.0)
        d2 = sum((x - cc) ** 2 for x, cc in zip(coords, c))
        u = u + np.float32(rng.uniform(-1, 1) * cfg.regional * spread) * np.exp(-d2 / np.float32(2 * s * s))
    return np.where(brain, u, 0.0).astype(np.float32)


def thicken_slices(
    arrays: list[np.ndarray], slice_mm: float, thickness_mm: float
) -> tuple[list[np.ndarray], float]:
    """Average blocks of n = round(thickness / slice_mm) canonical slices (axis 0) of each array, dropping a
    remainder; returns the arrays (float32) and the new slice spacing n * slice_mm. n <= 1: unchanged."""
    n = round(thickness_mm / slice_mm)
    if n <= 1:
        return [a.astype(np.float32) for a in arrays], slice_mm
    out = []
    for a in arrays:
        s = (a.shape[0] // n) * n
        out.append(a[:s].astype(np.float32).reshape(s // n, n, *a.shape[1:]).mean(1))
    return out, n * slice_mm


def augmented_copy(
    raw: np.ndarray,
    brain: np.ndarray,
    lesion: np.ndarray,
    spacing: tuple[float, float, float],
    cfg: AugmentConfig,
    rng: np.random.Generator,
) -> tuple[sitk.Image, np.ndarray, np.ndarray]:
    """One augmented copy of a canonical case: (image, brain mask, lesion mask), the image in canonical
    storage (identity direction, so its array is canonical) and the masks on its grid. A voxel of a thick
    slice is brain where most of its block is, and lesion where any of it is."""
    img = augment_intensity(raw, brain, spacing, cfg, rng)
    spacing_out = spacing
    if rng.uniform() < cfg.thick_p and spacing[0] < cfg.thick_mm[0]:
        (img, b, les), slice_mm = thicken_slices([img, brain, lesion], spacing[0], rng.uniform(*cfg.thick_mm))
        brain_out, lesion_out = b > 0.5, les > 0
        spacing_out = (slice_mm, spacing[1], spacing[2])
        img = np.where(brain_out, img, 0.0).astype(np.float32)
    else:
        brain_out, lesion_out = brain.astype(bool), lesion.astype(bool)
    image = sitk.GetImageFromArray(img)
    image.SetSpacing((spacing_out[2], spacing_out[1], spacing_out[0]))
    return image, brain_out, lesion_out
