"""Baselines scored in the same harness as AnoDODE.

FLAIR z-score: the intensity z-scored within the brain (the engine's own normalisation) is the voxel
anomaly score; FLAIR pathology is hyperintense, so larger is more anomalous.
"""
from __future__ import annotations

import numpy as np


def flair_zscore_map(normalised: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Voxel score = z-scored FLAIR inside the brain, -inf outside (canonical or any layout)."""
    return np.where(brain, normalised, -np.inf).astype(np.float32)


def slice_quantile_scores(voxel_map: np.ndarray, brain: np.ndarray, q: float = 0.99) -> list[float | None]:
    """Per-slice (axis 0) ``q``-quantile of a voxel map over brain voxels; None for slices without brain."""
    out: list[float | None] = []
    for m, b in zip(voxel_map, brain):
        out.append(float(np.quantile(m[b], q)) if b.any() else None)
    return out
