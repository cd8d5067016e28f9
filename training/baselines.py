"""Baselines scored in the same harness as AnoDODE.

FLAIR z-score: the intensity z-scored within the brain (the engine's own normalisation) is the voxel
anomaly score; FLAIR pathology is hyperintense, so larger is more anomalous. The smoothed variant
averages it in-plane inside the brain (normalised convolution) with a Gaussian as wide as AnoDODE's
map smoothing, so that the smoothing itself is not what separates the two.
"""
from __future__ import annotations

import numpy as np
import torch

from AnoDODELib.features import masked_smooth


def flair_zscore_map(normalised: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Voxel score = z-scored FLAIR inside the brain, -inf outside (canonical or any layout)."""
    return np.where(brain, normalised, -np.inf).astype(np.float32)


def smoothed_zscore_map(normalised: np.ndarray, brain: np.ndarray, sigma_mm: float,
                        spacing_mm: tuple[float, float]) -> np.ndarray:
    """The z-score map smoothed in-plane (axis 0 = slices) by a Gaussian of ``sigma_mm`` inside the brain
    (normalised convolution, sigma in pixels = sigma_mm / mean in-plane spacing); -inf outside."""
    img = torch.from_numpy(np.ascontiguousarray(normalised, dtype=np.float32)).unsqueeze(1)
    m = torch.from_numpy(np.ascontiguousarray(brain, dtype=np.float32)).unsqueeze(1)
    sm = masked_smooth(img, m, sigma_mm / float(np.mean(spacing_mm))).squeeze(1).numpy()
    return flair_zscore_map(sm, brain)


class GaussianBaseline:
    """PaDiM-style feature-space Gaussian, conditioned on position by cells.

    The standardised feature vectors of normal training locations are binned by their brain-relative
    position context (x, y, z in [-1, 1]) into ``cells`` per axis; each cell gets a Gaussian (mean,
    covariance + ``ridge`` I). Cells with fewer than ``min_count`` vectors use the Gaussian of all
    vectors. Score of a location = Mahalanobis distance to its cell's Gaussian. Without position context
    (K = 1) there is one cell.
    """

    def __init__(self, mean: np.ndarray, precision: np.ndarray, cells: int) -> None:
        self.mean, self.precision, self.cells = mean, precision, cells   # (M, C), (M, C, C); M = cells^3

    @staticmethod
    def cell_index(context: np.ndarray, cells: int) -> np.ndarray:
        c = np.asarray(context)
        if c.shape[1] < 4 or cells <= 1:
            return np.zeros(c.shape[0], np.int64)
        b = np.clip(((c[:, 1:4] + 1) / 2 * cells).astype(np.int64), 0, cells - 1)
        return (b[:, 0] * cells + b[:, 1]) * cells + b[:, 2]

    @classmethod
    def fit(cls, y, context, cells: int = 4, ridge: float = 1e-3, min_count: int = 50) -> GaussianBaseline:
        y = np.asarray(y, np.float64)
        ctx = np.asarray(context)
        c = y.shape[1]
        cells = cells if ctx.shape[1] >= 4 else 1
        idx = cls.cell_index(ctx, cells)

        def gauss(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            mu = v.mean(0)
            cov = np.cov(v, rowvar=False).reshape(c, c) + ridge * np.eye(c)
            return mu, np.linalg.inv(cov)

        g_mu, g_prec = gauss(y)
        m = cells ** 3 if cells > 1 else 1
        mean, prec = np.tile(g_mu, (m, 1)), np.tile(g_prec, (m, 1, 1))
        for k in range(m):
            sel = idx == k
            if sel.sum() >= min_count:
                mean[k], prec[k] = gauss(y[sel])
        return cls(mean.astype(np.float32), prec.astype(np.float32), cells)

    def score(self, y, context) -> np.ndarray:
        """Mahalanobis distance (N,) of standardised feature vectors (N, C) with context (N, K)."""
        y = np.asarray(y, np.float32)
        idx = self.cell_index(np.asarray(context), self.cells)
        d = y - self.mean[idx]
        return np.sqrt(np.maximum(np.einsum("nc,ncd,nd->n", d, self.precision[idx], d), 0.0))

    def save(self, path) -> None:
        np.savez(path, mean=self.mean, precision=self.precision, cells=np.array(self.cells))

    @classmethod
    def load(cls, path) -> GaussianBaseline:
        with np.load(path, allow_pickle=False) as z:
            return cls(z["mean"], z["precision"], int(z["cells"]))
