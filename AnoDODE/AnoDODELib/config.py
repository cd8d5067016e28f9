"""Configuration dataclasses, saved beside the weights in ``model.json``.

Every number that changes what a model computes lives here, so a bundle is
reproducible from its ``model.json`` alone.  Units are stated per field.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

#: ODE solver names (torchdiffeq's; probability_flow.METHODS holds the same, checked by a test) and the divergence
#: estimators and localisation maps a config may name (likelihood.DIVERGENCES, anomaly_map.LOCALISATIONS).
SOLVER_METHODS = (
    "euler",
    "midpoint",
    "rk4",
    "explicit_adams",
    "implicit_adams",
    "dopri5",
    "dopri8",
    "bosh3",
    "fehlberg2",
    "adaptive_heun",
)
DIVERGENCES = ("exact", "hutchinson")
LOCALISATIONS = ("likelihood", "reconstruction", "combined")
RESIDUAL_SCALES = ("all", "finest")
INTENSITY_REFERENCES = ("mean", "wm_peak")
BIAS_CORRECTIONS = ("none", "n4")

# Bounds on the numbers a model.json may hold: beyond them a run would not finish or not fit in memory (a
# hand-edited or corrupt bundle fails to load with one line naming the field, instead of scoring for hours).
#: the model grid's in-plane pixel size (mm)
MIN_GRID_SPACING_MM, MAX_GRID_SPACING_MM = 0.25, 10.0
#: Gaussian sigmas and physical scales (mm): a few head widths at most
MAX_SCALE_MM = 200.0
#: feature scales per contrast
MAX_SCALES = 16
#: score-network width, depth and time-embedding width
MAX_HIDDEN, MAX_LAYERS, MAX_TIME_EMBEDDING = 4096, 64, 1024
#: fixed ODE steps (likelihood solver and reconstruction) and reconstruction noise draws
MAX_ODE_STEPS, MAX_RECONSTRUCTIONS = 1000, 64
#: Hutchinson probes per likelihood evaluation
MAX_PROBES = 1000
#: the slice score's area (mm^2): 100 cm^2 is most of an axial slice
MAX_SLICE_AREA_MM2 = 10000.0
#: the VP-SDE's noise schedule: exp(-integral of beta) underflows float32 far below this
MAX_BETA = 1000.0


def _real(
    value: Any,
    name: str,
    *,
    above: float | None = None,
    at_least: float | None = None,
    below: float | None = None,
    at_most: float | None = None,
) -> None:
    """ValueError naming ``name`` unless ``value`` is a finite real number (not a bool) in the given bounds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number (got {value!r})")
    for ok, words, bound in (
        (above is None or value > above, ">", above),
        (at_least is None or value >= at_least, ">=", at_least),
        (below is None or value < below, "<", below),
        (at_most is None or value <= at_most, "<=", at_most),
    ):
        if not ok:
            raise ValueError(f"{name} must be {words} {bound:g} (got {value!r})")


def _integer(value: Any, name: str, at_least: int, at_most: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < at_least:
        raise ValueError(f"{name} must be an integer >= {at_least} (got {value!r})")
    if at_most is not None and value > at_most:
        raise ValueError(f"{name} must be an integer <= {at_most} (got {value!r})")


def _flag(value: Any, name: str) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false (got {value!r})")


def _choice(value: Any, name: str, valid: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in valid:
        raise ValueError(f"{name} must be one of {', '.join(valid)} (got {value!r})")


def _names(value: Any, name: str, valid: tuple[str, ...], allow_empty: bool = False) -> None:
    if (
        not isinstance(value, tuple)
        or (not value and not allow_empty)
        or len(set(value)) != len(value)
        or any(not isinstance(v, str) or v not in valid for v in value)
    ):
        raise ValueError(
            f"{name} must be distinct names from {', '.join(valid)}, as a list (got {_show(value)})"
        )


def _show(value: Any) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


@dataclass(frozen=True)
class PreprocessConfig:
    """How a volume becomes model-grid slices.

    in_plane_spacing_mm: physical pixel size (mm) of the grid every axial slice is resampled to, in
        [``MIN_GRID_SPACING_MM``, ``MAX_GRID_SPACING_MM``] (a finer grid multiplies the work by the square of
        the ratio: 0.001 mm would ask for terabytes).
    clip_z: normalised intensities (z-scores within the brain) are clipped to [-clip_z, clip_z] (at most 100).
    intensity_reference: what a normalised intensity of 0 and 1 mean (see ``volume_io.normalise_intensity``):
        "mean": the robust mean and standard deviation of the brain (the historical z-score);
        "wm_peak": the mode of the brain's intensity histogram (normal-appearing white matter on FLAIR) and
        the median absolute deviation about it, which a lesion or a large dark CSF space moves far less.
    bias_correction: "n4": each contrast is divided by its N4 bias field fitted inside the brain before it is
        normalised (``bias_field.n4_corrected``), at training and at scoring alike; "none": used as read.
    """

    in_plane_spacing_mm: float = 2.0
    clip_z: float = 6.0
    intensity_reference: str = "mean"
    bias_correction: str = "none"

    def __post_init__(self) -> None:
        _real(
            self.in_plane_spacing_mm,
            "in_plane_spacing_mm",
            at_least=MIN_GRID_SPACING_MM,
            at_most=MAX_GRID_SPACING_MM,
        )
        _real(self.clip_z, "clip_z", above=0.0, at_most=100.0)
        _choice(self.intensity_reference, "intensity_reference", INTENSITY_REFERENCES)
        _choice(self.bias_correction, "bias_correction", BIAS_CORRECTIONS)


CONTRASTS = ("flair", "t1", "t1ce", "t2")


@dataclass(frozen=True)
class FeatureConfig:
    """Multi-scale features of normalised, co-registered slices (see ``features.py``).

    contrasts: the MR contrasts the features are taken from, each one of ``CONTRASTS``. The first is
        the primary scan: the brain mask, the model grid and the output maps are its. Channels are
        contrast-major: (contrast 0 at every scale, contrast 1 at every scale, ...).
    scales_mm: Gaussian sigmas (mm) of the masked smoothing at each scale; 0 means the
        intensity at the model grid itself.
    edge_scale_mm: distance (mm) over which the depth-from-brain-edge context saturates.
    position_context: whether the score network sees brain-relative position (x, y in the slice's
        plane relative to the brain's bounding box).
    slice_position: with ``position_context``, whether it also sees z, the slice's place between the
        brain's first and last slice; this assumes the scan covers the whole brain.
    regional_scale_mm: when > 0, a further context channel: the primary contrast smoothed inside the brain
        at this Gaussian sigma (mm), i.e. how bright the region around a location is on this scan. The
        density then reads a location's features relative to its region, so a region that is brighter
        everywhere on one scanner is not anomalous by itself.
    regional_clip: unless None, intensities are clipped at this normalised level before the regional
        average, so a bright lesion raises its own region's level by at most that much.
    """

    contrasts: tuple[str, ...] = ("flair",)
    scales_mm: tuple[float, ...] = (0.0, 4.0, 8.0)
    edge_scale_mm: float = 20.0
    position_context: bool = True
    slice_position: bool = True
    regional_scale_mm: float = 0.0
    regional_clip: float | None = None

    def __post_init__(self) -> None:
        _names(self.contrasts, "contrasts", CONTRASTS)
        if not isinstance(self.scales_mm, tuple) or not 1 <= len(self.scales_mm) <= MAX_SCALES:
            raise ValueError(
                f"scales_mm must be a list of 1 to {MAX_SCALES} numbers (got {_show(self.scales_mm)})"
            )
        for sigma in self.scales_mm:
            _real(sigma, "scales_mm", at_least=0.0, at_most=MAX_SCALE_MM)
        _real(self.edge_scale_mm, "edge_scale_mm", above=0.0, at_most=MAX_SCALE_MM)
        _flag(self.position_context, "position_context")
        _flag(self.slice_position, "slice_position")
        _real(self.regional_scale_mm, "regional_scale_mm", at_least=0.0, at_most=MAX_SCALE_MM)
        if self.regional_clip is not None:
            _real(self.regional_clip, "regional_clip")

    @property
    def channels(self) -> int:
        """Feature width C: one channel per (contrast, scale) pair, contrast-major."""
        return len(self.contrasts) * len(self.scales_mm)

    def channel_contrasts(self) -> list[str]:
        """The contrast each feature channel is taken from, in channel order."""
        return [c for c in self.contrasts for _ in self.scales_mm]

    @property
    def cond_channels(self) -> int:
        """Context width K: depth, then x, y (and z) with ``position_context``, then the regional level."""
        position = (3 if self.slice_position else 2) if self.position_context else 0
        return 1 + position + (1 if self.regional_scale_mm > 0 else 0)


@dataclass(frozen=True)
class SDEConfig:
    """Variance-preserving SDE  dx = -1/2 beta(t) x dt + sqrt(beta(t)) dW,  beta linear in t in [0, 1].

    t_eps: the smallest diffusion time used: every ODE (likelihood and reconstruction) is integrated
        over [t_eps, 1] (or [t_eps, t_start]), as the score is singular at t = 0.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_eps: float = 1e-3

    def __post_init__(self) -> None:
        _real(self.beta_min, "beta_min", above=0.0, at_most=MAX_BETA)
        _real(self.beta_max, "beta_max", above=self.beta_min, at_most=MAX_BETA)
        _real(self.t_eps, "t_eps", above=0.0, below=1.0)


@dataclass(frozen=True)
class ScoreNetConfig:
    """Pointwise epsilon-prediction network (an MLP applied at every feature location).

    channels, cond_channels: the widths of its feature and context inputs. Inside a :class:`ModelConfig`
        they are set from ``features`` (``FeatureConfig.channels`` / ``cond_channels``); a stand-alone network
        needs them given.
    hidden, layers: MLP width and number of hidden layers. time_embedding: width of the Fourier time embedding.
    """

    channels: int | None = None
    cond_channels: int | None = None
    hidden: int = 64
    layers: int = 3
    time_embedding: int = 16

    def __post_init__(self) -> None:
        if self.channels is not None:
            _integer(self.channels, "channels", 1)
        if self.cond_channels is not None:
            _integer(self.cond_channels, "cond_channels", 0)
        _integer(self.hidden, "hidden", 1, MAX_HIDDEN)
        _integer(self.layers, "layers", 1, MAX_LAYERS)
        _integer(self.time_embedding, "time_embedding", 2, MAX_TIME_EMBEDDING)


@dataclass(frozen=True)
class SolverConfig:
    """Probability-flow ODE integration settings.

    method: a ``torchdiffeq.odeint`` method name; fixed-step methods use ``steps`` uniform steps.
    divergence: "exact" (trace by one VJP per channel) or "hutchinson".
    n_probes: Hutchinson probes averaged (ignored for "exact").
    t_eps: the ODE is integrated over [t_eps, 1] to avoid the singular score at t = 0 (a model's own value
        is ``SDEConfig.t_eps``; the scoring presets of pipeline.py copy it in).
    """

    method: str = "rk4"
    steps: int = 8
    rtol: float = 1e-5
    atol: float = 1e-5
    divergence: str = "exact"
    n_probes: int = 1
    t_eps: float = 1e-3

    def __post_init__(self) -> None:
        _choice(self.method, "method", SOLVER_METHODS)
        _integer(self.steps, "steps", 1, MAX_ODE_STEPS)
        _real(self.rtol, "rtol", above=0.0, at_most=1.0)
        _real(self.atol, "atol", above=0.0, at_most=1.0)
        _choice(self.divergence, "divergence", DIVERGENCES)
        _integer(self.n_probes, "n_probes", 1, MAX_PROBES)
        _real(self.t_eps, "t_eps", above=0.0, below=1.0)


@dataclass(frozen=True)
class LocalisationConfig:
    """How the voxel anomaly map is built (see ``anomaly_map.py``).

    method: "likelihood" (per-location bpd), "reconstruction" (noise part-way, ODE back,
        error) or "combined".
    hyperintense_only: count a channel of a ``hyperintense_contrasts`` contrast only where it is
        brighter than the model's reconstruction (FLAIR and T2 pathology is hyperintense); channels of
        other contrasts (T1, T1ce: lesions may be darker or brighter) count both ways.
    hyperintense_contrasts: the contrasts read as hyperintense by ``hyperintense_only``.
    t_start: diffusion time the features are noised to for the reconstruction.
    n_reconstructions: noise draws averaged for the reconstruction error.
    reconstruction_steps: fixed steps of the ODE from t_start back to t_eps; the solver is the scoring
        preset's (``pipeline.Preset.reconstruction``: midpoint in "fast" and "standard", RK4 in "exact").
    smooth_mm: Gaussian sigma (mm) applied to the map on the model grid.
    residual_scales: which scales' residuals the "reconstruction" map sums: "all", or "finest" (each
        contrast's first scale only; coarser scales still shape the reconstruction through the density).
    slice_area_mm2: the slice scores are the mean of a map over the slice's most anomalous this many mm^2
        of brain (``anomaly_map.slice_top_area_scores``): of the density map for ``slice_scores``, of the
        anomaly map for ``slice_anomaly_scores``.
    intensity_product: the map is sqrt(density map) x max(I_s, 0), where I_s is the normalised intensity
        smoothed inside the brain at full resolution by a 3-D Gaussian of ``smooth_mm`` (physical units): the
        density says whether a location's multi-scale appearance is unusual for normal tissue at its place,
        the intensity how bright it is, at the input's own resolution.
    brightness_quantile: with ``intensity_product``, max(I_s, 0) is divided by this quantile of I_s over the
        scan's brain (at least ``BRIGHTNESS_SCALE_FLOOR``): brightness in units of the scan's own bright
        normal tissue (mostly cortex), whose distance from the white-matter peak differs between sites and
        scanners; None: not divided (bundles before format 3).
    """

    method: str = "reconstruction"
    hyperintense_only: bool = True
    hyperintense_contrasts: tuple[str, ...] = ("flair", "t2")
    t_start: float = 0.5
    n_reconstructions: int = 4
    reconstruction_steps: int = 4
    smooth_mm: float = 2.0
    residual_scales: str = "all"
    slice_area_mm2: float = 100.0
    intensity_product: bool = False
    brightness_quantile: float | None = 0.75

    def __post_init__(self) -> None:
        _choice(self.method, "method", LOCALISATIONS)
        _flag(self.hyperintense_only, "hyperintense_only")
        _names(self.hyperintense_contrasts, "hyperintense_contrasts", CONTRASTS, allow_empty=True)
        _real(self.t_start, "t_start", above=0.0, at_most=1.0)
        _integer(self.n_reconstructions, "n_reconstructions", 1, MAX_RECONSTRUCTIONS)
        _integer(self.reconstruction_steps, "reconstruction_steps", 1, MAX_ODE_STEPS)
        _real(self.smooth_mm, "smooth_mm", at_least=0.0, at_most=MAX_SCALE_MM)
        _choice(self.residual_scales, "residual_scales", RESIDUAL_SCALES)
        _real(self.slice_area_mm2, "slice_area_mm2", above=0.0, at_most=MAX_SLICE_AREA_MM2)
        _flag(self.intensity_product, "intensity_product")
        if self.brightness_quantile is not None:
            _real(self.brightness_quantile, "brightness_quantile", above=0.0, below=1.0)


@dataclass(frozen=True)
class Calibration:
    """Label threshold chosen on normal training tissue: the ``quantile`` of healthy voxel scores.

    threshold: in anomaly-map units (voxels above it are labelled). quantile: in (0, 1).
    """

    threshold: float = 1.0
    quantile: float = 0.995

    def __post_init__(self) -> None:
        _real(self.threshold, "threshold")
        _real(self.quantile, "quantile", above=0.0, below=1.0)


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines what a model computes, saved as ``config`` in model.json.

    The ODE solvers are not part of it: the scoring preset (pipeline.PRESETS) chooses them. The score network's
    input widths are always derived from ``features`` (whatever ``score_net`` holds is replaced, so
    ``dataclasses.replace(cfg, features=...)`` keeps them in step); model.json does not store them.
    """

    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    sde: SDEConfig = field(default_factory=SDEConfig)
    score_net: ScoreNetConfig = field(default_factory=ScoreNetConfig)
    localisation: LocalisationConfig = field(default_factory=LocalisationConfig)
    calibration: Calibration = field(default_factory=Calibration)

    def __post_init__(self) -> None:
        for name, cls in _DATACLASS_FIELDS.items():
            if not isinstance(getattr(self, name[1]), cls):
                raise ValueError(
                    f"{name[1]} must be a {cls.__name__} (got {type(getattr(self, name[1])).__name__})"
                )
        derived = {"channels": self.features.channels, "cond_channels": self.features.cond_channels}
        object.__setattr__(self, "score_net", dataclasses.replace(self.score_net, **derived))


#: ScoreNetConfig fields a ModelConfig derives from its features: not written to model.json.
DERIVED_FIELDS = (("score_net", "channels"), ("score_net", "cond_channels"))


def to_dict(obj: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass; tuples become lists. A ModelConfig's derived fields
    (``DERIVED_FIELDS``) are left out."""
    out = dataclasses.asdict(obj)
    if isinstance(obj, ModelConfig):
        for section, name in DERIVED_FIELDS:
            out[section].pop(name, None)
    return out


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Rebuild a (nested) config dataclass from ``to_dict`` output, validating every field.

    Raises ``ValueError`` with one line naming the field by its path (``where`` + field, e.g.
    ``config.localisation.n_reconstructions must be an integer >= 1 (got 0)``) for a value out of range or of
    the wrong type, a section that is not an object, or an unknown key (so a typo in a hand-edited model.json
    is not ignored).
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    prefix = f"{where}." if where else ""
    if not isinstance(data, dict):
        raise ValueError(
            f"{where or cls.__name__} must be an object of {cls.__name__} fields (got {data!r:.40})"
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys{' in ' + where if where else ''}: {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        sub = _DATACLASS_FIELDS.get((cls.__name__, name))
        if sub is not None:
            kwargs[name] = from_dict(sub, value, f"{prefix}{name}")
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # nested sections were built above: this level's fields only
        raise ValueError(f"{prefix}{exc}") from None


_DATACLASS_FIELDS: dict[tuple[str, str], type] = {
    ("ModelConfig", "preprocess"): PreprocessConfig,
    ("ModelConfig", "features"): FeatureConfig,
    ("ModelConfig", "sde"): SDEConfig,
    ("ModelConfig", "score_net"): ScoreNetConfig,
    ("ModelConfig", "localisation"): LocalisationConfig,
    ("ModelConfig", "calibration"): Calibration,
}
