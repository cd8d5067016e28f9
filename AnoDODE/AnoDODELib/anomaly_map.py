"""From per-location scores on the model grid to a voxel anomaly map on the input's grid.

Two localisations are computed per brain location p of the model grid (standardised features y):
    likelihood:      bpd(p) = -log p(y(p) | context(p)) / (C ln 2)      exact per-location NLL, bits/dim
    reconstruction:  e(p)   = sum_c r_c(p)^2,  r = y - y_rec             y_rec: noised to t_start, ODE back
With ``hyperintense_only`` (FLAIR pathology is bright), a location counts only where its intensity
channel is above the reconstruction, r_0(p) > 0.  "combined" multiplies the likelihood by the
positive intensity residual: high where the location is both improbable and brighter than normal.
"""
from __future__ import annotations

import numpy as np
import torch

from .config import LocalisationConfig
from .features import gaussian_blur

LOCALISATIONS = ("likelihood", "reconstruction", "combined")


def location_scores(bpd: torch.Tensor, residual: torch.Tensor, cfg: LocalisationConfig) -> torch.Tensor:
    """Per-location anomaly score (N,) from per-location bpd (N,) and residual y - y_rec (N, C)."""
    if cfg.method not in LOCALISATIONS:
        raise ValueError(f"unknown localisation {cfg.method!r}; valid: {', '.join(LOCALISATIONS)}")
    bright = residual[:, 0].clamp_min(0.0)
    if cfg.method == "likelihood":
        score = bpd.clamp_min(0.0)
        return score * (bright > 0) if cfg.hyperintense_only else score
    if cfg.method == "reconstruction":
        if cfg.hyperintense_only:
            return (residual.clamp_min(0.0) ** 2).sum(dim=1)
        return (residual ** 2).sum(dim=1)
    score = bpd.clamp_min(0.0) * bright if cfg.hyperintense_only else bpd.clamp_min(0.0) * residual.norm(dim=1)
    return score


def scatter_to_grid(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Place per-location values (N,) at the True entries of ``mask`` (S, H, W); 0 elsewhere."""
    grid = torch.zeros(mask.shape, dtype=values.dtype)
    grid[mask] = values.cpu()
    return grid


def smooth_on_grid(grid: torch.Tensor, mask: torch.Tensor, sigma_mm: float, spacing_mm: float) -> torch.Tensor:
    """In-plane Gaussian smoothing (sigma in mm) of an (S, H, W) map, kept inside the mask."""
    if sigma_mm <= 0:
        return grid
    out = gaussian_blur(grid.unsqueeze(1).float(), sigma_mm / spacing_mm).squeeze(1)
    return out * mask


def slice_quantile_scores(voxel_map: np.ndarray, brain: np.ndarray, q: float = 0.99) -> list[float | None]:
    """Per-slice (axis 0) ``q``-quantile of a voxel map over brain voxels; None for slices without brain."""
    return [float(np.quantile(m[b], q)) if b.any() else None for m, b in zip(voxel_map, brain)]
