"""Score one volume: preprocessing, per-location likelihood and reconstruction, maps back to the input grid.

    image --canonical slices (S, P, L)--> z-score in brain --resample to model grid--> features, context
          --standardise--> y (N, C) at the N brain locations
          --probability-flow ODE--> bpd (N,)    --noise to t_start, ODE back--> residual (N, C)
          --anomaly_map--> per-location score --smooth, upsample, undo canonical--> voxel map on the input grid

Slice score: the slice's bpd, i.e. the NLL of all its brain feature vectors divided by their dimension
count (the mean of per-location bpd). Volume score: the same over all brain locations.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import SimpleITK as sitk
import torch

from . import volume_io
from .anomaly_map import location_scores, scatter_to_grid, smooth_on_grid
from .config import LocalisationConfig, ModelConfig, SolverConfig
from .features import extract_features
from .likelihood import log_likelihood, solver_kwargs
from .reconstruction import reconstruct
from .score_model import score_fn

logger = logging.getLogger(__name__)

Callback = Callable[[float, str], None]

PRESETS: dict[str, SolverConfig] = {
    "fast": SolverConfig(method="euler", steps=4, divergence="exact"),
    "standard": SolverConfig(method="rk4", steps=4, divergence="exact"),
    "exact": SolverConfig(method="dopri5", rtol=1e-5, atol=1e-5, divergence="exact"),
}
CHUNK = 65536


@dataclass
class PreparedVolume:
    """A volume on the model grid. Shapes: S slices, (H, W) input in-plane, (h, w) model grid."""

    geometry: volume_io.SliceGeometry
    normalised: np.ndarray          # (S, H, W) canonical z-scored intensity, full resolution
    brain: np.ndarray               # (S, H, W) canonical bool brain mask, full resolution
    features: torch.Tensor          # (S, C, h, w) raw features
    context: torch.Tensor           # (S, K, h, w)
    grid_mask: torch.Tensor         # (S, h, w) bool brain mask on the model grid
    spacing_mm: float               # model grid pixel size

    def locations(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature (N, C) and context (N, K) vectors at the N brain locations of the model grid."""
        f = self.features.permute(0, 2, 3, 1)[self.grid_mask]
        c = self.context.permute(0, 2, 3, 1)[self.grid_mask]
        return f, c

    def to_grid(self, canonical: np.ndarray, order: int = 0) -> torch.Tensor:
        """A full-resolution canonical (S, H, W) array resampled onto the model grid."""
        g = self.geometry
        out = volume_io.resample_slices(canonical.astype(np.float32), g.spacing_mm[1:], self.spacing_mm,
                                        order=order)
        return torch.from_numpy(np.ascontiguousarray(out))

    def to_input(self, grid: torch.Tensor) -> np.ndarray:
        """An (S, h, w) model-grid map back on the input's array layout, zero outside the brain."""
        full = volume_io.resample_back(grid.numpy().astype(np.float32), self.normalised.shape[1:], order=1)
        full = np.where(self.brain, full, 0.0).astype(np.float32)
        return self.geometry.from_canonical(full)


def prepare_volume(image: sitk.Image, cfg: ModelConfig, mask: np.ndarray | None = None,
                   name: str = "input") -> PreparedVolume:
    """Validate, canonicalise, normalise and featurise a 3-D scan (mask in the image's array layout)."""
    array = volume_io.validate_intensities(image, name)
    for warning in volume_io.spacing_warnings(image):
        logger.warning(warning)
    if mask is None:
        mask = volume_io.brain_mask_from_image(array)
        if not volume_io.looks_skull_stripped(array, mask):
            logger.warning("%s does not look skull-stripped: the brain mask is the non-background region; "
                           "pass --mask for a better result", name)
    if not mask.any():
        raise volume_io.InputError(f"{name}: the brain mask is empty")
    geometry = volume_io.slice_geometry(image)
    canon = geometry.to_canonical(array)
    brain = geometry.to_canonical(mask.astype(bool))
    normalised = volume_io.normalise_intensity(canon, brain, clip_z=cfg.preprocess.clip_z)
    sp = cfg.preprocess.in_plane_spacing_mm
    grid_img = volume_io.resample_slices(normalised, geometry.spacing_mm[1:], sp, order=1)
    grid_mask = volume_io.resample_slices(brain.astype(np.float32), geometry.spacing_mm[1:], sp, order=1) > 0.5
    positions = torch.arange(canon.shape[0], dtype=torch.float32) * geometry.spacing_mm[0]
    feats, ctx = extract_features(torch.from_numpy(np.ascontiguousarray(grid_img)),
                                  torch.from_numpy(np.ascontiguousarray(grid_mask)), positions, sp, cfg.features)
    return PreparedVolume(geometry, normalised, brain, feats, ctx, torch.from_numpy(grid_mask), sp)


class LocationScores(NamedTuple):
    bpd: torch.Tensor        # (N,) per-location NLL, bits per dimension
    residual: torch.Tensor   # (N, C) standardised features minus their reconstruction
    nfe: int                 # score-network evaluations per location for the likelihood


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when available; 'cuda' without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; valid: auto, cpu, cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA GPU")
    return torch.device(device)


def score_locations(model: "AnoDODEModel", features: torch.Tensor, context: torch.Tensor, *,  # noqa: F821
                    solver: SolverConfig | None = None, device: torch.device | str = "cpu",
                    callback: Callback | None = None, seed: int = 0) -> LocationScores:
    """Per-location bpd and reconstruction residual for (N, C) features with (N, K) context, in chunks."""
    device = torch.device(device)
    solver = solver or model.config.solver
    loc_cfg = model.config.localisation
    net = model.score_net.to(device).eval()
    sde = model.sde
    y_all = model.standardiser(features.float())
    gen = torch.Generator(device="cpu").manual_seed(seed)
    bpds, residuals, nfe = [], [], 0
    n = y_all.shape[0]
    for start in range(0, n, CHUNK):
        y = y_all[start:start + CHUNK].to(device)
        c = context[start:start + CHUNK].float().to(device)
        fn = score_fn(net, sde, c)
        res = log_likelihood(fn, sde, y, **solver_kwargs(solver))
        nfe = max(nfe, res.nfe)
        with torch.no_grad():
            rec = torch.zeros_like(y)
            for _ in range(loc_cfg.n_reconstructions):
                noise = torch.randn(y.shape, generator=gen).to(device)
                rec += reconstruct(fn, sde, y, t_start=loc_cfg.t_start, noise=noise,
                                   method="rk4", steps=loc_cfg.reconstruction_steps,
                                   t_eps=solver.t_eps)
            rec /= loc_cfg.n_reconstructions
        bpds.append(res.bpd.detach().cpu())
        residuals.append((y - rec).cpu())
        if callback is not None:
            callback(min(1.0, (start + y.shape[0]) / n), "likelihood")
    return LocationScores(torch.cat(bpds), torch.cat(residuals), nfe)


class ScoreResult(NamedTuple):
    anomaly_map: np.ndarray          # float32, input's array layout
    label: np.ndarray                # uint8 0/1, input's array layout
    volume_score_bpd: float
    slice_axis: int                  # numpy axis of sitk.GetArrayFromImage(input) that is axial
    slice_scores: list[float | None]  # per index along slice_axis; None where no brain
    threshold: float
    nfe: int                         # score-network evaluations per location (likelihood ODE)
    seconds: float
    device: str


def maps_from_scores(prepared: PreparedVolume, scores: LocationScores, model: "AnoDODEModel",  # noqa: F821
                     localisation: LocalisationConfig | None = None) -> np.ndarray:
    """The voxel anomaly map (input array layout) from per-location scores (default: the model's
    localisation settings)."""
    loc = localisation or model.config.localisation
    per_loc = location_scores(scores.bpd, scores.residual, loc)
    grid = scatter_to_grid(per_loc, prepared.grid_mask)
    grid = smooth_on_grid(grid, prepared.grid_mask, loc.smooth_mm, prepared.spacing_mm)
    return prepared.to_input(grid)


def slice_scores(prepared: PreparedVolume, bpd: torch.Tensor) -> list[float | None]:
    """Mean per-location bpd of each canonical slice, re-ordered to the input's index along the axial axis."""
    grid = scatter_to_grid(bpd, prepared.grid_mask)
    counts = prepared.grid_mask.flatten(1).sum(1)
    sums = grid.flatten(1).sum(1)
    canon = [float(s / c) if c > 0 else None for s, c in zip(sums.tolist(), counts.tolist())]
    if prepared.geometry.flips[0]:
        canon = canon[::-1]
    return canon


def score_image(image: sitk.Image, model: "AnoDODEModel", mask: np.ndarray | None = None, *,  # noqa: F821
                threshold: float | None = None, device: str = "auto", preset: str = "standard",
                callback: Callback | None = None, name: str = "input") -> ScoreResult:
    """Score a 3-D scan with a loaded model; see ``ScoreResult`` for the outputs."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    dev = resolve_device(device)
    t0 = time.perf_counter()
    report = callback or (lambda fraction, message: None)
    report(0.0, "preprocessing")
    prepared = prepare_volume(image, model.config, mask, name=name)
    report(0.1, "scoring")
    feats, ctx = prepared.locations()
    solver = dataclasses.replace(PRESETS[preset], t_eps=model.config.solver.t_eps)
    scores = score_locations(model, feats, ctx, solver=solver, device=dev,
                             callback=lambda f, m: report(0.1 + 0.8 * f, m))
    report(0.9, "building maps")
    anomaly = maps_from_scores(prepared, scores, model)
    thr = float(model.config.calibration.threshold if threshold is None else threshold)
    label = (anomaly > thr).astype(np.uint8)
    volume_bpd = float(scores.bpd.mean())
    result = ScoreResult(anomaly, label, volume_bpd, prepared.geometry.axes[0],
                         slice_scores(prepared, scores.bpd), thr, scores.nfe,
                         time.perf_counter() - t0, str(dev))
    report(1.0, "done")
    return result
