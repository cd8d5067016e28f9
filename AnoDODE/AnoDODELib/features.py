"""Multi-scale features of normalised axial slices, and the anatomical context they are read in.

Features (the density's dimensions), one vector per location of the model grid:
    f_{j,k}(p) = (G_{s_k} * (I_j m))(p) / (G_{s_k} * m)(p)   for each contrast j, each scale s_k in ``scales_mm``
a masked (normalised) Gaussian smoothing of the z-scored intensity I_j of contrast j inside the brain
mask m, so that the brain edge is not darkened by the zero background (s = 0 means the intensity
itself). Channels are contrast-major: C = n_contrasts * n_scales.
This extractor is fixed (no learnt weights); its per-channel standardisation is fitted on the
normal training data and stored in the bundle.

Context (conditioning, not modelled by the density), one vector per location:
    depth:    distance from the brain edge within the slice, in units of ``edge_scale_mm``, capped at 1;
    position: (x, y, z) relative to the brain's bounding box, each in [-1, 1]
              (x: right->left, y: anterior->posterior, z: inferior->superior; z only with ``slice_position``);
    regional: (G_R * (min(I_0, c) m)) / (G_R * m), the primary contrast clipped at c = ``regional_clip`` and
              smoothed inside the brain at R = ``regional_scale_mm`` (only when R > 0): how bright this scan's
              normal-appearing tissue is around the location.
The context lets the density know that edge, CSF and ventricle intensities are normal where they occur.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import FeatureConfig


def gaussian_kernel1d(sigma_px: float) -> torch.Tensor:
    """Normalised 1-D Gaussian of standard deviation ``sigma_px`` pixels, radius 3 sigma."""
    radius = max(1, int(math.ceil(3.0 * sigma_px)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma_px) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W) images with zero padding; sigma in pixels."""
    if sigma_px <= 0:
        return x
    k = gaussian_kernel1d(sigma_px).to(x)
    r = k.numel() // 2
    x = F.conv2d(F.pad(x, (r, r, 0, 0)), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r)), k.view(1, 1, -1, 1))


def masked_smooth(image: torch.Tensor, mask: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Normalised convolution (G*(I m)) / (G*m) of (B, 1, H, W) images; 0 outside the mask."""
    if sigma_px <= 0:
        return image * mask
    num = gaussian_blur(image * mask, sigma_px)
    den = gaussian_blur(mask, sigma_px)
    return torch.where(mask > 0, num / den.clamp_min(1e-6), torch.zeros_like(num))


def edge_depth(mask: torch.Tensor, max_px: int) -> torch.Tensor:
    """Chessboard distance (pixels) from each in-mask pixel to the mask edge, capped at ``max_px``.

    mask: (B, 1, H, W) in {0, 1}. Computed by repeated 3x3 erosion (min-pooling).
    """
    depth = torch.zeros_like(mask)
    eroded = mask
    for _ in range(max_px):
        eroded = -F.max_pool2d(-eroded, kernel_size=3, stride=1, padding=1)
        depth = depth + eroded
        if not bool(eroded.any()):
            break
    return depth * mask


def brain_box_coordinates(
    mask: torch.Tensor, slice_positions_mm: torch.Tensor, spacing_mm: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Coordinates relative to the 3-D brain bounding box, each in [-1, 1] inside the box.

    mask: (S, H, W) canonical slices (rows toward +P, columns toward +L), slice_positions_mm: (S,)
    physical S-coordinate of each slice (mm). Returns x (columns), y (rows) as (S, H, W) and z (S,).
    """
    S, H, W = mask.shape
    any_rows = mask.any(dim=2).any(dim=0)
    any_cols = mask.any(dim=1).any(dim=0)
    any_slices = mask.flatten(1).any(dim=1)
    if not bool(any_slices.any()):
        raise ValueError("empty brain mask")
    rows = torch.nonzero(any_rows).flatten()
    cols = torch.nonzero(any_cols).flatten()
    zs = slice_positions_mm[any_slices]

    def rel(v: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        centre, half = (lo + hi) / 2.0, max((hi - lo) / 2.0, 1e-3)
        return (v - centre) / half

    y = rel(torch.arange(H, dtype=torch.float32), float(rows[0]), float(rows[-1]))
    x = rel(torch.arange(W, dtype=torch.float32), float(cols[0]), float(cols[-1]))
    z = rel(slice_positions_mm.float(), float(zs.min()), float(zs.max()))
    return x.view(1, 1, W).expand(S, H, W), y.view(1, H, 1).expand(S, H, W), z


def extract_features(
    slices: torch.Tensor,
    mask: torch.Tensor,
    slice_positions_mm: torch.Tensor,
    spacing_mm: float,
    cfg: FeatureConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and context of canonical, normalised slices on the model grid.

    slices: (S, M, H, W) z-scored intensity of the M = len(cfg.contrasts) co-registered contrasts, in
    ``cfg.contrasts`` order ((S, H, W) when M = 1); mask: (S, H, W) bool brain mask of the primary
    contrast; spacing_mm: model grid pixel size.
    Returns features (S, C, H, W) with C = M * len(cfg.scales_mm), contrast-major, and context (S, K, H, W),
    K = cfg.cond_channels (depth first, then x, y (z) when ``position_context``, then the regional level when
    ``regional_scale_mm`` > 0). Zero outside the mask.
    Features are not yet standardised (see ``Standardiser``).
    """
    m = mask.float().unsqueeze(1)
    imgs = slices.float().unsqueeze(1) if slices.dim() == 3 else slices.float()
    if imgs.shape[1] != len(cfg.contrasts):
        raise ValueError(
            f"{imgs.shape[1]} contrast(s) given, the feature config has {len(cfg.contrasts)} "
            f"({', '.join(cfg.contrasts)})"
        )
    feats = [
        masked_smooth(imgs[:, j : j + 1], m, s / spacing_mm)
        for j in range(imgs.shape[1])
        for s in cfg.scales_mm
    ]
    max_px = max(1, int(round(cfg.edge_scale_mm / spacing_mm)))
    depth = edge_depth(m, max_px) / max_px
    context = [depth]
    if cfg.position_context:
        x, y, z = brain_box_coordinates(mask.bool(), slice_positions_mm, spacing_mm)
        context += [x.unsqueeze(1) * m, y.unsqueeze(1) * m]
        if cfg.slice_position:
            context.append(z.view(-1, 1, 1, 1).expand_as(m) * m)
    if cfg.regional_scale_mm > 0:
        level = imgs[:, :1] if cfg.regional_clip is None else imgs[:, :1].clamp(max=cfg.regional_clip)
        context.append(masked_smooth(level, m, cfg.regional_scale_mm / spacing_mm))
    return torch.cat(feats, dim=1), torch.cat(context, dim=1)


class Standardiser(torch.nn.Module):
    """Per-channel affine standardisation y = (f - mean) / std fitted on normal training features.

    Part of the density's change of variables: log p_f(f) = log p_y(y) - sum_c log std_c, so bits per
    dimension are reported in the standardised space (a constant offset per model).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    @torch.no_grad()
    def fit(self, features: torch.Tensor) -> Standardiser:
        """features: (N, C) normal training vectors."""
        self.mean.copy_(features.mean(0))
        self.std.copy_(features.std(0).clamp_min(1e-6))
        return self

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """y = (f - mean) / std per channel: (..., C) features -> (..., C) standardised."""
        return (features - self.mean) / self.std

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """f = y std + mean per channel: (..., C) standardised -> (..., C) features (undoes ``forward``)."""
        return y * self.std + self.mean
