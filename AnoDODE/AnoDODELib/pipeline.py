"""Score one volume: preprocessing, per-location likelihood and reconstruction, maps back to the input grid.

    image --canonical slices (S, P, L)--> z-score in brain --resample to model grid--> features, context
          --standardise--> y (N, C) at the N brain locations
          --probability-flow ODE--> bpd (N,)    --noise to t_start, ODE back--> residual (N, C)
          --anomaly_map--> per-location score --smooth, upsample, undo canonical--> voxel map on the input grid

Slice score: the slice's bpd, i.e. the NLL of all its brain feature vectors divided by their dimension
count (the mean of per-location bpd). Volume score: the same over all scored brain locations. A preset may
score every k-th slice only (``Preset.slice_spacing_mm``); the others' maps and scores are interpolated.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import SimpleITK as sitk
import torch

from . import fast_ode, volume_io
from .anomaly_map import (
    finest_channels,
    hyperintense_channels,
    location_scores,
    scatter_to_grid,
    slice_top_area_scores,
    smooth_in_mask,
    smooth_on_grid,
)
from .bias_field import n4_corrected
from .brain_mask import BrainMask, resolve_brain_mask
from .config import LocalisationConfig, ModelConfig, SolverConfig
from .features import extract_features
from .likelihood import log_likelihood, solver_kwargs
from .score_model import score_fn

if TYPE_CHECKING:  # for the annotations only: the pipeline takes a loaded model and never reads bundles
    from .bundle import AnoDODEModel

logger = logging.getLogger(__name__)

Callback = Callable[[float, str], None]


@dataclass(frozen=True)
class Preset:
    """How a scan is scored (``--preset``); the model's weights, features and localisation are the same in each.

    likelihood: the probability-flow ODE solver of the per-location bpd. Fixed-step methods run on the fused
        evaluator of fast_ode.py (exact trace by forward-mode tangents, no autograd); adaptive ones on the
        torchdiffeq path of likelihood.log_likelihood.
    reconstruction: the fixed-step method ("rk4", "midpoint", "euler") of the reconstruction ODE; t_start,
        steps and noise draws are the model's localisation settings.
    slice_spacing_mm: axial slices closer together than this are subsampled: every k-th slice with brain is
        scored, k = max(1, floor(slice_spacing_mm / slice thickness)), plus the last; the map and the slice bpd
        of the slices between are linear interpolations of their scored neighbours (0: every slice).
    """

    likelihood: SolverConfig
    reconstruction: str = "rk4"
    slice_spacing_mm: float = 0.0


# Measured against dopri5 rtol=atol=1e-5 and against scoring every slice (benchmarks/README.md):
#   fast:     midpoint x4 likelihood (8 NFE), midpoint x4 reconstruction (8 NFE a draw), slices >= 4 mm apart
#   standard: midpoint x4 likelihood (8 NFE), midpoint x4 reconstruction (8 NFE a draw), slices >= 2 mm apart
#             (the model grid's in-plane spacing, so BraTS's 1 mm slices are scored every second slice)
#   exact:    dopri5 rtol = atol = 1e-5 likelihood (about 300 NFE), RK4 x4 reconstruction, every slice
PRESETS: dict[str, Preset] = {
    "fast": Preset(SolverConfig(method="midpoint", steps=4, divergence="exact"), "midpoint", 4.0),
    "standard": Preset(SolverConfig(method="midpoint", steps=4, divergence="exact"), "midpoint", 2.0),
    "exact": Preset(SolverConfig(method="dopri5", rtol=1e-5, atol=1e-5, divergence="exact"), "rk4", 0.0),
}
CHUNK = 65536  # locations per batch on the GPU (all reconstruction draws are stacked on top)
CPU_CHUNK = 16384  # on the CPU: bounded memory (~60 MB of activations), cache-friendlier
MIN_CHUNK = 4096  # CUDA out-of-memory retries halve the chunk down to this, then fall back to CPU


@dataclass
class PreparedVolume:
    """A volume on the model grid. Shapes: S slices, (H, W) input in-plane, (h, w) model grid."""

    geometry: volume_io.SliceGeometry
    normalised: np.ndarray  # (S, H, W) canonical z-scored intensity of the primary contrast, full res.
    brain: np.ndarray  # (S, H, W) canonical bool brain mask, full resolution
    features: torch.Tensor  # (S, C, h, w) raw features, C = contrasts x scales
    context: torch.Tensor  # (S, K, h, w)
    grid_mask: torch.Tensor  # (S, h, w) bool brain mask on the model grid
    spacing_mm: float  # model grid pixel size

    def locations(self, where: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature (N, C) and context (N, K) vectors at the N brain locations of the model grid (or at the
        True entries of ``where``, an (S, h, w) subset of them)."""
        m = self.grid_mask if where is None else where
        f = self.features.permute(0, 2, 3, 1)[m]
        c = self.context.permute(0, 2, 3, 1)[m]
        return f, c

    def to_grid(self, canonical: np.ndarray, order: int = 0) -> torch.Tensor:
        """A full-resolution canonical (S, H, W) array resampled onto the model grid."""
        g = self.geometry
        out = volume_io.resample_slices(
            canonical.astype(np.float32), g.spacing_mm[1:], self.spacing_mm, order=order
        )
        return torch.from_numpy(np.ascontiguousarray(out))

    def to_full(self, grid: torch.Tensor) -> np.ndarray:
        """An (S, h, w) model-grid map at the input's full resolution, canonical layout, zero outside the brain."""
        full = volume_io.resample_back(grid.numpy().astype(np.float32), self.normalised.shape[1:], order=1)
        return np.where(self.brain, full, 0.0).astype(np.float32)


def prepare_volume(
    image: sitk.Image,
    cfg: ModelConfig,
    mask: np.ndarray | None = None,
    name: str = "input",
    other_contrasts: Mapping[str, sitk.Image] | None = None,
    other_names: Mapping[str, str] | None = None,
) -> PreparedVolume:
    """Validate, canonicalise, bias-correct, normalise and featurise a 3-D scan (mask in the image's array
    layout; None: ``brain_mask.resolve_brain_mask`` decides, extracting the brain of a raw head scan).

    ``image`` is the model's primary contrast (``cfg.features.contrasts[0]``); a multi-contrast model
    also needs ``other_contrasts``: every other contrast it reads, by name, aligned with ``image`` (on its
    grid, or resampled onto it by physical position, see ``volume_io.align_to``). Each contrast is
    bias-corrected (``cfg.preprocess.bias_correction``) and normalised within the primary's brain mask.
    ``name`` and ``other_names`` (by contrast; default "<name> (<contrast>)") name the files in messages.
    """
    check_contrasts(cfg, other_contrasts, name)
    volume_io.check_scan_geometry(image, name, cfg.preprocess.in_plane_spacing_mm)  # before any allocation
    array = volume_io.validate_intensities(image, name)
    for warning in volume_io.spacing_warnings(image):
        logger.warning(warning)
    mask = resolve_brain_mask(image, array, mask, name=name).array
    geometry = volume_io.slice_geometry(image)
    brain = geometry.to_canonical(mask.astype(bool))
    sp = cfg.preprocess.in_plane_spacing_mm

    def normalised_on_grid(values: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
        if cfg.preprocess.bias_correction == "n4":
            values = n4_corrected(values, mask, image.GetSpacing())
        z = volume_io.normalise_intensity(
            geometry.to_canonical(values),
            brain,
            clip_z=cfg.preprocess.clip_z,
            reference=cfg.preprocess.intensity_reference,
            name=source,
        )
        return z, volume_io.resample_slices(z, geometry.spacing_mm[1:], sp, order=1)

    normalised, grid_img = normalised_on_grid(array, name)
    grids = [grid_img]
    for contrast in cfg.features.contrasts[1:]:
        source = (other_names or {}).get(contrast, f"{name} ({contrast})")
        other = volume_io.align_to(other_contrasts[contrast], image, source, region=mask)
        grids.append(normalised_on_grid(other, source)[1])
    grid_mask = (
        volume_io.resample_slices(brain.astype(np.float32), geometry.spacing_mm[1:], sp, order=1) > 0.5
    )
    positions = torch.arange(brain.shape[0], dtype=torch.float32) * geometry.spacing_mm[0]
    feats, ctx = extract_features(
        torch.from_numpy(np.ascontiguousarray(np.stack(grids, axis=1))),
        torch.from_numpy(np.ascontiguousarray(grid_mask)),
        positions,
        sp,
        cfg.features,
    )
    return PreparedVolume(geometry, normalised, brain, feats, ctx, torch.from_numpy(grid_mask), sp)


def check_contrasts(
    cfg: ModelConfig, other_contrasts: Mapping[str, object] | None, name: str = "input"
) -> None:
    """InputError unless ``other_contrasts`` names exactly the model's contrasts after the primary."""
    needed, given = list(cfg.features.contrasts[1:]), set(other_contrasts or {})
    reads = "+".join(cfg.features.contrasts)
    missing = [c for c in needed if c not in given]
    if missing:
        raise volume_io.InputError(
            f"{name}: the model reads {reads}; no {', '.join(missing)} image was given"
        )
    unused = sorted(given - set(needed))
    if unused:
        raise volume_io.InputError(f"{name}: the model reads {reads}; it does not use {', '.join(unused)}")


class LocationScores(NamedTuple):
    """Per-location results of ``score_locations`` for the N brain locations, in their order."""

    bpd: torch.Tensor  # (N,) per-location NLL, bits per dimension
    residual: torch.Tensor  # (N, C) standardised features minus their reconstruction
    nfe: int  # score-network evaluations per location for the likelihood
    nfe_reconstruction: int = 0  # score-network evaluations per draw for the reconstruction


def resolve_device(device: str | torch.device) -> torch.device:
    """The torch device of a ``--device`` value: "cpu", "cuda", "cuda:N" (GPU N) or "auto" (CUDA when
    torch sees a GPU, else the CPU). ValueError for any other value and for a GPU that torch does not see."""
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, colon, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (colon and (kind == "cpu" or not index.isdigit())):
        raise ValueError(f"unknown device {device!r}; valid: auto, cpu, cuda")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} was asked for but torch sees no CUDA GPU")
    if colon and int(index) >= torch.cuda.device_count():
        raise ValueError(f"--device {device} was asked for but torch sees {torch.cuda.device_count()} GPU(s)")
    return torch.device(device)


def _score_chunk(
    model: AnoDODEModel,
    y: torch.Tensor,
    c: torch.Tensor,
    noise: torch.Tensor,
    solver: SolverConfig,
    device: torch.device,
    reconstruction_method: str,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """bpd (n,), residual (n, C), likelihood NFE and reconstruction NFE for one chunk, results on the CPU."""
    loc_cfg = model.config.localisation
    net = model.score_net.to(device).eval()
    y, c, noise = y.to(device), c.to(device), noise.to(device)
    fast = solver.method in fast_ode.FAST_METHODS and solver.divergence == "exact"
    with torch.inference_mode():
        if fast:
            bpd, nfe = fast_ode.likelihood_fixed(
                fast_ode.PointwiseEvaluator(net, c),
                model.sde,
                y,
                method=solver.method,
                steps=solver.steps,
                t_eps=solver.t_eps,
            )
        else:
            gen = torch.Generator(device="cpu").manual_seed(seed)  # Hutchinson probes
            res = log_likelihood(
                score_fn(net, model.sde, c), model.sde, y, generator=gen, **solver_kwargs(solver)
            )
            bpd, nfe = res.bpd, res.nfe
        ev = fast_ode.PointwiseEvaluator(net, c, repeat=noise.shape[0])
        rec, rec_nfe = fast_ode.reconstruct_batched(
            ev,
            model.sde,
            y,
            noise,
            t_start=loc_cfg.t_start,
            steps=loc_cfg.reconstruction_steps,
            t_eps=solver.t_eps,
            method=reconstruction_method,
        )
        return bpd.float().cpu(), (y - rec).float().cpu(), nfe, rec_nfe


def score_locations(
    model: AnoDODEModel,
    features: torch.Tensor,
    context: torch.Tensor,
    *,
    solver: SolverConfig | None = None,
    device: torch.device | str = "cpu",
    callback: Callback | None = None,
    seed: int = 0,
    chunk: int | None = None,
    reconstruction_method: str = "rk4",
) -> LocationScores:
    """Per-location bpd and reconstruction residual for (N, C) features with (N, K) context.

    Locations are scored in chunks of ``chunk`` (default ``CHUNK`` on CUDA, ``CPU_CHUNK`` on the CPU), so
    memory is bounded whatever the volume size. The reconstruction noise is drawn for all locations up front
    from ``seed`` on the CPU, so results do not depend on the chunk size or the device. On CUDA
    out-of-memory the chunk is halved (down to ``MIN_CHUNK``), then the rest is scored on the CPU with a
    warning. ``reconstruction_method``: the fixed-step solver of the reconstruction ODE (the localisation
    config's meaning is RK4; "midpoint"/"euler" are cheaper approximations of the same ODE).
    """
    device = torch.device(device)
    if solver is None:
        solver = dataclasses.replace(PRESETS["standard"].likelihood, t_eps=model.config.sde.t_eps)
    loc_cfg = model.config.localisation
    # standardised where the standardiser's buffers are (a model moved to the GPU has them there), kept on the
    # CPU: each chunk goes to ``device`` in _score_chunk
    y_all = model.standardiser(features.float().to(model.standardiser.mean.device)).detach().cpu()
    context = context.float()
    n = y_all.shape[0]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    noise_all = torch.randn((loc_cfg.n_reconstructions, *y_all.shape), generator=gen)
    size = int(chunk or (CHUNK if device.type == "cuda" else CPU_CHUNK))
    bpds, residuals, nfe, rec_nfe = [], [], 0, 0
    start = 0
    while start < n:
        stop = min(n, start + size)
        try:
            bpd, res, k, kr = _score_chunk(
                model,
                y_all[start:stop],
                context[start:stop],
                noise_all[:, start:stop],
                solver,
                device,
                reconstruction_method,
                seed=seed + start,
            )
        except Exception as exc:  # only out-of-memory is handled, anything else is re-raised
            if device.type == "cpu" or not fast_ode.is_oom(exc):
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if size > MIN_CHUNK:
                size = max(MIN_CHUNK, size // 2)
                logger.info("out of GPU memory; retrying with chunks of %d locations", size)
            else:
                logger.warning(
                    "out of GPU memory even with chunks of %d locations; scoring the rest on the CPU", size
                )
                device, size = torch.device("cpu"), CPU_CHUNK
            continue
        bpds.append(bpd)
        residuals.append(res)
        nfe, rec_nfe = max(nfe, k), max(rec_nfe, kr)
        start = stop
        if callback is not None:
            callback(stop / n, "likelihood")
    model.score_net.to("cpu")
    return LocationScores(torch.cat(bpds), torch.cat(residuals), nfe, rec_nfe)


@dataclass(frozen=True)
class ScoreResult:
    """A scored scan. The engine keeps its arrays canonical (S, P, L, see ``volume_io.SliceGeometry``); the
    input-layout views (``anomaly_map``, ``label``, ``brain``; ``slice_scores`` and ``slice_anomaly_scores``
    indexed along the input's axial axis) are converted from them on each access: at the edge, where files
    are written or a caller works on the input's array."""

    geometry: volume_io.SliceGeometry
    canonical_map: np.ndarray  # float32 (S, P, L) anomaly map, zero outside the brain
    canonical_label: np.ndarray  # uint8 0/1 (S, P, L): canonical_map > threshold
    canonical_brain: np.ndarray  # bool (S, P, L): the brain mask the scores are over
    volume_score_bpd: float
    canonical_slice_scores: list[float | None]  # per canonical slice (canonical_slice_scores); None: no brain
    threshold: float
    nfe: int  # score-network evaluations per location (likelihood ODE)
    seconds: float
    device: str
    nfe_reconstruction: int  # score-network evaluations per location for the reconstruction, all draws
    canonical_slice_anomaly_scores: list[float | None]  # per canonical slice: the anomaly map's mean over
    #                          its most anomalous slice_area_mm2 of brain (slice_map_scores); None without brain
    brain_mask: BrainMask | None = None  # where canonical_brain came from (file, extracted, background)

    @property
    def slice_axis(self) -> int:
        """The numpy axis of ``sitk.GetArrayFromImage(input)`` that is axial."""
        return self.geometry.axes[0]

    @property
    def anomaly_map(self) -> np.ndarray:
        """float32, the input's array layout."""
        return self.geometry.from_canonical(self.canonical_map)

    @property
    def label(self) -> np.ndarray:
        """uint8 0/1, the input's array layout."""
        return self.geometry.from_canonical(self.canonical_label)

    @property
    def brain(self) -> np.ndarray:
        """bool, the input's array layout."""
        return self.geometry.from_canonical(self.canonical_brain)

    @property
    def slice_scores(self) -> list[float | None]:
        """``canonical_slice_scores`` per index along ``slice_axis``."""
        return input_slice_order(self.geometry, self.canonical_slice_scores)

    @property
    def slice_anomaly_scores(self) -> list[float | None]:
        """``canonical_slice_anomaly_scores`` per index along ``slice_axis``."""
        return input_slice_order(self.geometry, self.canonical_slice_anomaly_scores)


def input_slice_order(geometry: volume_io.SliceGeometry, canonical: list) -> list:
    """Per-slice values in canonical order (increasing toward +S) re-ordered to the input's index along
    its axial axis."""
    return canonical[::-1] if geometry.flips[0] else list(canonical)


def scored_slices(grid_mask: torch.Tensor, slice_mm: float, spacing_mm: float) -> torch.Tensor:
    """(S,) bool: the canonical slices scored when slices must be at least ``spacing_mm`` apart (see
    ``Preset``): from the first slice with brain every k-th one, k = max(1, floor(spacing_mm / slice_mm)),
    and the last slice with brain."""
    has = torch.nonzero(grid_mask.flatten(1).any(1)).flatten()
    keep = torch.zeros(grid_mask.shape[0], dtype=torch.bool)
    if has.numel() == 0:
        return keep
    k = max(1, math.floor(spacing_mm / slice_mm + 1e-6)) if spacing_mm > 0 else 1
    keep[int(has[0]) : int(has[-1]) + 1 : k] = True
    keep[int(has[-1])] = True
    return keep


def interpolate_slices(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(S, ...) values given on the ``keep`` slices, linearly interpolated in slice index onto the others
    (before the first kept slice and after the last, their values)."""
    if bool(keep.all()):
        return values
    idx = torch.nonzero(keep).flatten()
    s = torch.arange(values.shape[0])
    lo = idx[(torch.searchsorted(idx, s, right=True) - 1).clamp(min=0)]
    hi = idx[torch.searchsorted(idx, s).clamp(max=idx.numel() - 1)]
    w = torch.where(hi > lo, (s - lo).float() / (hi - lo).clamp(min=1).float(), torch.zeros(s.shape))
    w = w.clamp(0.0, 1.0).view(-1, *([1] * (values.dim() - 1))).to(values.dtype)
    return (1 - w) * values[lo] + w * values[hi]


def score_prepared(
    model: AnoDODEModel,
    prepared: PreparedVolume,
    preset: str | Preset = "standard",
    *,
    device: torch.device | str = "cpu",
    callback: Callback | None = None,
    seed: int = 0,
) -> tuple[LocationScores, torch.Tensor]:
    """Per-location scores at the brain locations of the slices the preset scores, and those slices as an
    (S,) bool mask (pass both on to ``maps_from_scores`` and ``slice_scores``)."""
    p = PRESETS[preset] if isinstance(preset, str) else preset
    keep = scored_slices(prepared.grid_mask, prepared.geometry.spacing_mm[0], p.slice_spacing_mm)
    feats, ctx = prepared.locations(prepared.grid_mask & keep[:, None, None])
    solver = dataclasses.replace(p.likelihood, t_eps=model.config.sde.t_eps)
    scores = score_locations(
        model,
        feats,
        ctx,
        solver=solver,
        device=device,
        callback=callback,
        seed=seed,
        reconstruction_method=p.reconstruction,
    )
    return scores, keep


def _all_slices(prepared: PreparedVolume, scored: torch.Tensor | None) -> torch.Tensor:
    return torch.ones(prepared.grid_mask.shape[0], dtype=torch.bool) if scored is None else scored


def density_map(
    prepared: PreparedVolume,
    scores: LocationScores,
    model: AnoDODEModel,
    localisation: LocalisationConfig | None = None,
    scored: torch.Tensor | None = None,
) -> np.ndarray:
    """The density map (canonical, full resolution): the localisation's per-location scores, smoothed on the
    model grid, the slices not ``scored`` interpolated, brought to the input's in-plane grid; no intensity
    weighting (see ``maps_from_scores``)."""
    loc = localisation or model.config.localisation
    keep = _all_slices(prepared, scored)
    where = prepared.grid_mask & keep[:, None, None]
    per_loc = location_scores(
        scores.bpd,
        scores.residual,
        loc,
        hyperintense_channels(model.config.features, loc),
        finest_channels(model.config.features),
    )
    grid = smooth_on_grid(scatter_to_grid(per_loc, where), where, loc.smooth_mm, prepared.spacing_mm)
    return prepared.to_full(interpolate_slices(grid, keep) * prepared.grid_mask)


#: the least brightness scale (normalised-intensity units, white-matter spreads): a scan whose bright normal
#: tissue is nearer the white-matter peak than this has no usable contrast to scale by
BRIGHTNESS_SCALE_FLOOR = 0.1


def brightness_scale(bright: np.ndarray, brain: np.ndarray, quantile: float | None) -> float:
    """The scan's own brightness unit: the ``quantile`` of the smoothed normalised intensity I_s over its
    brain voxels, at least ``BRIGHTNESS_SCALE_FLOOR``; 1 when ``quantile`` is None or there is no brain.

    Intensities are normalised on the white-matter peak and spread, but how far above white matter normal
    cortex sits differs between sites and scanners (FLAIR contrast, T2 weighting, resolution). The 0.75
    quantile of the brain lies in normal-appearing cortex whatever lesions cover less than about a quarter of
    the brain, so I_s / scale reads "how bright against this scan's normal bright tissue"."""
    if quantile is None or not brain.any():
        return 1.0
    return max(float(np.quantile(bright[brain], quantile)), BRIGHTNESS_SCALE_FLOOR)


def weighted_map(
    prepared: PreparedVolume, density: np.ndarray, localisation: LocalisationConfig
) -> np.ndarray:
    """The anomaly map (canonical) from the canonical density map D: D itself, or with ``intensity_product``

        A = sqrt(D) x max(I_s, 0) / b,

    I_s the normalised intensity smoothed in 3-D by ``smooth_mm`` (mm) inside the brain and b the scan's
    brightness unit (``brightness_scale`` with ``brightness_quantile``; 1 when that is None)."""
    if not localisation.intensity_product:
        return density
    g = prepared.geometry
    bright = smooth_in_mask(prepared.normalised, prepared.brain, g.spacing_mm, localisation.smooth_mm)
    scale = brightness_scale(bright, prepared.brain, localisation.brightness_quantile)
    product = np.sqrt(np.maximum(density, 0.0)) * (np.maximum(bright, 0.0) / np.float32(scale))
    return np.where(prepared.brain, product, 0.0).astype(np.float32)


def canonical_map(
    prepared: PreparedVolume,
    scores: LocationScores,
    model: AnoDODEModel,
    localisation: LocalisationConfig | None = None,
    scored: torch.Tensor | None = None,
) -> np.ndarray:
    """The voxel anomaly map (canonical, full resolution) from per-location scores (default: the model's
    localisation settings): ``weighted_map`` of ``density_map``. ``scored``: the (S,) slices the scores are
    from (default: all); the map of the others is interpolated between them."""
    loc = localisation or model.config.localisation
    return weighted_map(prepared, density_map(prepared, scores, model, loc, scored), loc)


def maps_from_scores(
    prepared: PreparedVolume,
    scores: LocationScores,
    model: AnoDODEModel,
    localisation: LocalisationConfig | None = None,
    scored: torch.Tensor | None = None,
) -> np.ndarray:
    """``canonical_map`` in the input's array layout."""
    return prepared.geometry.from_canonical(canonical_map(prepared, scores, model, localisation, scored))


def canonical_slice_scores(
    prepared: PreparedVolume,
    scores: LocationScores,
    model: AnoDODEModel,
    scored: torch.Tensor | None = None,
    density: np.ndarray | None = None,
) -> list[float | None]:
    """The likelihood-based slice score of each canonical slice with brain (None without): the mean of the
    density map over the slice's most anomalous ``slice_area_mm2`` (100 mm^2) of brain, i.e. the model's
    localisation from the per-location scores alone, without the intensity weighting (``intensity_product``).
    For the "combined" localisation the density map is the per-location bpd where a location is brighter
    than its reconstruction, weighted by how much brighter, smoothed and brought to the input's grid:

        s(slice) = mean of the k largest { D(v) : v a brain voxel of the slice },  k = area / pixel area,
        D = smooth(bpd(p) * max(r_0(p), 0))                                          (combined)

    The slice's mean bpd (the paper's score) averages a lesion away among the slice's edges, CSF and
    ventricles, whose share changes from slice to slice; the bpd of its most anomalous square centimetre
    does not, nor does it depend on how much brain the slice cuts (a quantile of the slice's voxels does).
    Slices a preset skips get the density map's interpolation between the scored slices. ``density``: that
    map (``density_map`` with the model's localisation) when the caller has it already."""
    if density is None:
        density = density_map(prepared, scores, model, scored=scored)
    return map_slice_scores(prepared, density, model.config.localisation.slice_area_mm2)


def pixel_area_mm2(prepared: PreparedVolume) -> float:
    """In-plane voxel area of the input (mm^2)."""
    _, dy, dx = prepared.geometry.spacing_mm
    return float(dy * dx)


def map_slice_scores(
    prepared: PreparedVolume, canonical: np.ndarray, area_mm2: float = LocalisationConfig.slice_area_mm2
) -> list[float | None]:
    """Per canonical slice, a canonical voxel map's mean over the slice's most anomalous ``area_mm2`` of
    brain (``anomaly_map.slice_top_area_scores`` at the input's in-plane voxel area); None without brain.
    The one slice ranking of every map: the density map (``slice_scores``), the anomaly map
    (``slice_anomaly_scores``) and, in training/, the baselines'."""
    return slice_top_area_scores(canonical, prepared.brain, pixel_area_mm2(prepared), area_mm2)


def slice_scores(
    prepared: PreparedVolume,
    scores: LocationScores,
    model: AnoDODEModel,
    scored: torch.Tensor | None = None,
    density: np.ndarray | None = None,
) -> list[float | None]:
    """``canonical_slice_scores`` re-ordered to the input's index along the axial axis."""
    canon = canonical_slice_scores(prepared, scores, model, scored, density)
    return input_slice_order(prepared.geometry, canon)


def slice_map_scores(
    prepared: PreparedVolume, anomaly_map: np.ndarray, area_mm2: float = LocalisationConfig.slice_area_mm2
) -> list[float | None]:
    """The mean of the anomaly map (input array layout) over each axial slice's most anomalous ``area_mm2``
    of brain (``anomaly_map.slice_top_area_scores``), in the input's index order along the axial axis; None
    where a slice has no brain. It ranks slices by their most anomalous region, where the slice bpd
    averages it away (see docs/method.md)."""
    out = map_slice_scores(prepared, prepared.geometry.to_canonical(anomaly_map), area_mm2)
    return input_slice_order(prepared.geometry, out)


def score_image(
    image: sitk.Image,
    model: AnoDODEModel,
    mask: np.ndarray | None = None,
    *,
    threshold: float | None = None,
    device: str = "auto",
    preset: str | Preset = "standard",
    callback: Callback | None = None,
    name: str = "input",
    other_contrasts: Mapping[str, sitk.Image] | None = None,
    other_names: Mapping[str, str] | None = None,
    brain_extraction: str = "auto",
) -> ScoreResult:
    """Score a 3-D scan with a loaded model; see ``ScoreResult`` for the outputs. ``image`` is the model's
    primary contrast; ``other_contrasts`` its other contrasts by name, ``other_names`` their file names for
    messages (see ``prepare_volume``). ``mask``: the brain mask (the image's array layout), else
    ``brain_extraction`` decides (``brain_mask.EXTRACTION_MODES``: "auto" extracts the brain of a scan that is
    not skull-stripped, on ``device``)."""
    if isinstance(preset, str) and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    dev = resolve_device(device)
    t0 = time.perf_counter()
    report = callback or (lambda fraction, message: None)
    report(0.0, "preprocessing")
    check_contrasts(model.config, other_contrasts, name)
    volume_io.check_scan_geometry(image, name, model.config.preprocess.in_plane_spacing_mm)
    brain = resolve_brain_mask(
        image,
        volume_io.validate_intensities(image, name),
        mask,
        extraction=brain_extraction,
        device=dev,
        name=name,
        callback=lambda f, m: report(0.6 * min(1.0, max(0.0, f)), m),
    )
    start = 0.6 if brain.source == "extracted" else 0.0  # the extraction is most of a CPU run

    def stage(f: float, m: str) -> None:
        report(start + (1.0 - start) * f, m)

    stage(0.0, "preprocessing")
    prepared = prepare_volume(
        image, model.config, brain.array, name=name, other_contrasts=other_contrasts, other_names=other_names
    )
    stage(0.1, "scoring")
    scores, scored = score_prepared(
        model, prepared, preset, device=dev, callback=lambda f, m: stage(0.1 + 0.8 * f, m)
    )
    stage(0.9, "building maps")
    density = density_map(prepared, scores, model, scored=scored)  # once: the map's and the slice score's
    anomaly = weighted_map(prepared, density, model.config.localisation)
    thr = float(model.config.calibration.threshold if threshold is None else threshold)
    slices = canonical_slice_scores(prepared, scores, model, scored, density)
    result = ScoreResult(
        prepared.geometry,
        anomaly,
        ((anomaly > thr) & prepared.brain).astype(np.uint8),  # never outside the brain, whatever thr
        prepared.brain,
        float(scores.bpd.mean()),
        slices,
        thr,
        scores.nfe,
        time.perf_counter() - t0,
        str(dev),
        scores.nfe_reconstruction * model.config.localisation.n_reconstructions,
        map_slice_scores(prepared, anomaly, model.config.localisation.slice_area_mm2),
        brain,
    )
    report(1.0, "done")
    return result
