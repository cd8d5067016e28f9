"""Baselines scored in the same harness as AnoDODE.

FLAIR z-score: z(v) = (x(v) - mean_B x) / std_B x, the raw intensity x z-scored over the brain mask B at the
input's full resolution; FLAIR pathology is hyperintense, so larger is more anomalous.
Smoothed FLAIR z-score (the bar AnoDODE must beat): the z-score averaged inside the brain by a normalised
3-D Gaussian convolution, (G * (z 1_B)) / (G * 1_B) on B, with sigma = 2 mm along each axis in physical
units (sigma_i = 2 mm / spacing_i voxels), so thick slices are barely mixed.
"""

from __future__ import annotations

import numpy as np

from AnoDODELib.anomaly_map import smooth_in_mask
from AnoDODELib.config import FeatureConfig

SMOOTH_SIGMA_MM = 2.0


def zscore(raw: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """(x - mean) / std over the brain voxels, float32 (any layout; the mean and std are the brain's)."""
    v = raw[brain].astype(np.float64)
    std = float(v.std())
    if std <= 0:
        raise ValueError("the brain's intensities are constant")
    return ((raw.astype(np.float64) - float(v.mean())) / std).astype(np.float32)


def flair_zscore_map(raw: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Voxel score = the brain z-score of the raw intensity, -inf outside the brain."""
    return np.where(brain, zscore(raw, brain), -np.inf).astype(np.float32)


def smoothed_zscore_map(
    raw: np.ndarray,
    brain: np.ndarray,
    spacing_mm: tuple[float, float, float],
    sigma_mm: float = SMOOTH_SIGMA_MM,
) -> np.ndarray:
    """The z-score smoothed inside the brain by a 3-D normalised Gaussian convolution of ``sigma_mm`` along
    each axis (``spacing_mm``: the array's voxel size per axis, in the same axis order; the engine's
    ``anomaly_map.smooth_in_mask``); -inf outside."""
    sm = smooth_in_mask(zscore(raw, brain), brain, spacing_mm, sigma_mm)
    return np.where(brain, sm, -np.inf).astype(np.float32)


def position_columns(features: FeatureConfig) -> int:
    """How many brain-relative position columns (x, y and maybe z) follow the depth in the context."""
    return (3 if features.slice_position else 2) if features.position_context else 0


class GaussianBaseline:
    """PaDiM-style feature-space Gaussian, conditioned on position by cells.

    The standardised feature vectors of normal training locations are binned by their brain-relative
    position context (x, y, z in [-1, 1]) into ``cells`` per axis; each cell gets a Gaussian (mean,
    covariance + ``ridge`` I). Cells with fewer than ``min_count`` vectors use the Gaussian of all
    vectors. Score of a location = Mahalanobis distance to its cell's Gaussian. Without position context
    (K = 1) there is one cell.
    """

    def __init__(self, mean: np.ndarray, precision: np.ndarray, cells: int, positions: int = 3) -> None:
        self.mean, self.precision, self.cells = (
            mean,
            precision,
            cells,
        )  # (M, C), (M, C, C); M = cells^positions
        self.positions = positions

    @staticmethod
    def cell_index(context: np.ndarray, cells: int, positions: int = 3) -> np.ndarray:
        """The cell of each context row: its ``positions`` position columns (after the depth column, in
        [-1, 1]) binned into ``cells`` each, as one index; 0 for all without position columns."""
        c = np.asarray(context)
        if positions < 1 or c.shape[1] < 1 + positions or cells <= 1:
            return np.zeros(c.shape[0], np.int64)
        b = np.clip(((c[:, 1 : 1 + positions] + 1) / 2 * cells).astype(np.int64), 0, cells - 1)
        idx = np.zeros(c.shape[0], np.int64)
        for k in range(positions):
            idx = idx * cells + b[:, k]
        return idx

    @classmethod
    def fit(
        cls, y, context, cells: int = 4, ridge: float = 1e-3, min_count: int = 50, positions: int = 3
    ) -> GaussianBaseline:
        """``positions``: how many position columns follow the depth in the context (``position_columns``)."""
        y = np.asarray(y, np.float64)
        ctx = np.asarray(context)
        c = y.shape[1]
        cells = cells if positions >= 1 and ctx.shape[1] >= 1 + positions else 1
        idx = cls.cell_index(ctx, cells, positions)

        def gauss(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            mu = v.mean(0)
            cov = np.cov(v, rowvar=False).reshape(c, c) + ridge * np.eye(c)
            return mu, np.linalg.inv(cov)

        g_mu, g_prec = gauss(y)
        m = cells**positions if cells > 1 else 1
        mean, prec = np.tile(g_mu, (m, 1)), np.tile(g_prec, (m, 1, 1))
        for k in range(m):
            sel = idx == k
            if sel.sum() >= min_count:
                mean[k], prec[k] = gauss(y[sel])
        return cls(mean.astype(np.float32), prec.astype(np.float32), cells, positions)

    def score(self, y, context) -> np.ndarray:
        """Mahalanobis distance (N,) of standardised feature vectors (N, C) with context (N, K)."""
        y = np.asarray(y, np.float32)
        idx = self.cell_index(np.asarray(context), self.cells, self.positions)
        d = y - self.mean[idx]
        return np.sqrt(np.maximum(np.einsum("nc,ncd,nd->n", d, self.precision[idx], d), 0.0))

    def save(self, path) -> None:
        np.savez(
            path,
            mean=self.mean,
            precision=self.precision,
            cells=np.array(self.cells),
            positions=np.array(self.positions),
        )

    @classmethod
    def load(cls, path) -> GaussianBaseline:
        with np.load(path, allow_pickle=False) as z:
            return cls(
                z["mean"],
                z["precision"],
                int(z["cells"]),
                int(z["positions"]) if "positions" in z.files else 3,
            )
