"""From per-location scores on the model grid to a voxel anomaly map on the input's grid.

Two localisations are computed per brain location p of the model grid (standardised features y):
    likelihood:      bpd(p) = -log p(y(p) | context(p)) / (C ln 2)      exact per-location NLL, bits/dim
    reconstruction:  e(p)   = sum_c r_c(p)^2,  r = y - y_rec             y_rec: noised to t_start, ODE back
                     (the sum runs over the finest scale of each contrast only with residual_scales="finest")
With ``hyperintense_only`` (FLAIR pathology is bright), the channels of hyperintense contrasts (FLAIR,
T2) count only where they are above the reconstruction, max(r_c, 0), and the likelihood counts only where
the intensity channel is, r_0(p) > 0.  "combined" multiplies the likelihood by the positive intensity
residual: high where the location is both improbable and brighter than normal.
"""

from __future__ import annotations

import numpy as np
import torch

from .config import LOCALISATIONS, RESIDUAL_SCALES, FeatureConfig, LocalisationConfig
from .features import gaussian_blur


def hyperintense_channels(features: FeatureConfig, loc: LocalisationConfig) -> torch.Tensor:
    """(C,) bool: the feature channels whose contrast is one of ``loc.hyperintense_contrasts``."""
    return torch.tensor([c in loc.hyperintense_contrasts for c in features.channel_contrasts()])


def location_scores(
    bpd: torch.Tensor,
    residual: torch.Tensor,
    cfg: LocalisationConfig,
    hyperintense: torch.Tensor | None = None,
    finest: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-location anomaly score (N,) from per-location bpd (N,) and residual y - y_rec (N, C).

    hyperintense: (C,) bool, the channels read one-sided when ``cfg.hyperintense_only`` (default: all;
    see ``hyperintense_channels``). The "bright" gate of the likelihood and combined maps is the first
    such channel, i.e. the finest scale of the first hyperintense contrast.
    finest: (C,) bool, the channels the "reconstruction" map sums when ``cfg.residual_scales`` is "finest"
    (see ``finest_channels``).
    """
    if cfg.method not in LOCALISATIONS:
        raise ValueError(f"unknown localisation {cfg.method!r}; valid: {', '.join(LOCALISATIONS)}")
    if cfg.residual_scales not in RESIDUAL_SCALES:
        raise ValueError(
            f"unknown residual_scales {cfg.residual_scales!r}; valid: {', '.join(RESIDUAL_SCALES)}"
        )
    one_sided = (
        torch.ones(residual.shape[1], dtype=torch.bool) if hyperintense is None else hyperintense.bool()
    )
    if not cfg.hyperintense_only:
        one_sided = torch.zeros_like(one_sided)
    r = torch.where(one_sided.to(residual.device), residual.clamp_min(0.0), residual)
    if cfg.method == "reconstruction":
        if cfg.residual_scales == "finest":
            if finest is None:
                raise ValueError("residual_scales='finest' needs the finest-scale channels")
            r = r[:, finest.to(r.device).bool()]
        return (r**2).sum(dim=1)
    score = bpd.clamp_min(0.0)
    if not bool(one_sided.any()):
        return score if cfg.method == "likelihood" else score * r.norm(dim=1)
    bright = residual[:, int(torch.nonzero(one_sided)[0])].clamp_min(0.0)
    return score * (bright > 0) if cfg.method == "likelihood" else score * bright


def finest_channels(features: FeatureConfig) -> torch.Tensor:
    """(C,) bool: each contrast's first-scale channel (channels are contrast-major)."""
    n = len(features.scales_mm)
    return torch.tensor([k % n == 0 for k in range(features.channels)])


def scatter_to_grid(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Place per-location values (N,) at the True entries of ``mask`` (S, H, W); 0 elsewhere."""
    grid = torch.zeros(mask.shape, dtype=values.dtype)
    grid[mask] = values.cpu()
    return grid


def smooth_on_grid(
    grid: torch.Tensor, mask: torch.Tensor, sigma_mm: float, spacing_mm: float
) -> torch.Tensor:
    """In-plane Gaussian smoothing (sigma in mm) of an (S, H, W) map, kept inside the mask."""
    if sigma_mm <= 0:
        return grid
    out = gaussian_blur(grid.unsqueeze(1).float(), sigma_mm / spacing_mm).squeeze(1)
    return out * mask


def smooth_in_mask(
    values: np.ndarray, mask: np.ndarray, spacing_mm: tuple[float, float, float], sigma_mm: float
) -> np.ndarray:
    """3-D normalised Gaussian convolution inside ``mask`` at full resolution:

        out = (G * (v 1_M)) / (G * 1_M)  on M,  0 elsewhere,

    with sigma = ``sigma_mm`` along each axis in physical units (sigma_i = sigma_mm / spacing_i voxels; scipy's
    kernel, truncated at 4 sigma), so thick slices are barely mixed and the mask's edge is not darkened.
    Computed in float32 on the mask's bounding box (the kernel never reaches past it with zero padding there,
    so the result is the whole-array convolution's); float32."""
    from scipy import ndimage

    out = np.zeros(mask.shape, np.float32)
    if not mask.any():
        return out
    sigma = [sigma_mm / float(s) for s in spacing_mm]
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(mask))
    m = mask[box]
    num = ndimage.gaussian_filter(np.where(m, values[box], 0.0).astype(np.float32), sigma, mode="constant")
    den = ndimage.gaussian_filter(m.astype(np.float32), sigma, mode="constant")
    out[box] = np.where(m, num / np.maximum(den, 1e-12), 0.0)
    return out


def slice_quantile_scores(voxel_map: np.ndarray, brain: np.ndarray, q: float = 0.99) -> list[float | None]:
    """Per-slice (axis 0) ``q``-quantile of a voxel map over brain voxels; None for slices without brain."""
    return [float(np.quantile(m[b], q)) if b.any() else None for m, b in zip(voxel_map, brain)]


def slice_top_area_scores(
    voxel_map: np.ndarray, brain: np.ndarray, pixel_area_mm2: float, area_mm2: float
) -> list[float | None]:
    """Per slice (axis 0): the mean of the map over the slice's most anomalous ``area_mm2`` of brain,

        s(slice) = (1 / k) sum of the k largest { m(v) : v a brain voxel of the slice },
        k = max(1, round(area_mm2 / pixel_area_mm2)), at most the slice's brain voxel count,

    None for slices without brain. A fixed physical area, unlike a quantile of the slice's voxels, does not
    depend on how much brain the slice holds: a 1 cm^2 lesion weighs the same in a slice through the vertex
    as through the ventricles, and at 0.5 mm or 1 mm in-plane. ``pixel_area_mm2``: in-plane voxel area."""
    if not (np.isfinite(area_mm2) and area_mm2 > 0 and np.isfinite(pixel_area_mm2) and pixel_area_mm2 > 0):
        raise ValueError(
            f"areas must be positive and finite, got {area_mm2!r} mm^2 over {pixel_area_mm2!r} mm^2"
        )
    k = max(1, int(round(area_mm2 / pixel_area_mm2)))
    out: list[float | None] = []
    for m, b in zip(voxel_map, brain):
        v = m[b]
        if v.size == 0:
            out.append(None)
            continue
        kk = min(k, v.size)
        out.append(float(np.partition(v, v.size - kk)[v.size - kk :].astype(np.float64).mean()))
    return out
