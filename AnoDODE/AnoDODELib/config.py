"""Configuration dataclasses, saved beside the weights in ``model.json``.

Every number that changes what a model computes lives here, so a bundle is
reproducible from its ``model.json`` alone.  Units are stated per field.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class PreprocessConfig:
    """How a volume becomes model-grid slices.

    in_plane_spacing_mm: physical pixel size (mm) of the grid every axial slice is resampled to.
    clip_z: normalised intensities (z-scores within the brain) are clipped to [-clip_z, clip_z].
    """

    in_plane_spacing_mm: float = 2.0
    clip_z: float = 6.0


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
    position_context: whether the score network sees brain-relative position (x, y, z).
    """

    contrasts: tuple[str, ...] = ("flair",)
    scales_mm: tuple[float, ...] = (0.0, 4.0, 8.0)
    edge_scale_mm: float = 20.0
    position_context: bool = True

    def __post_init__(self) -> None:
        unknown = [c for c in self.contrasts if c not in CONTRASTS]
        if not self.contrasts or unknown or len(set(self.contrasts)) != len(self.contrasts):
            raise ValueError(f"contrasts must be distinct names from {', '.join(CONTRASTS)}; got "
                             f"{list(self.contrasts)}")

    @property
    def channels(self) -> int:
        return len(self.contrasts) * len(self.scales_mm)

    def channel_contrasts(self) -> list[str]:
        """The contrast each feature channel is taken from, in channel order."""
        return [c for c in self.contrasts for _ in self.scales_mm]

    @property
    def cond_channels(self) -> int:
        return 1 + (3 if self.position_context else 0)


@dataclass(frozen=True)
class SDEConfig:
    """Variance-preserving SDE  dx = -1/2 beta(t) x dt + sqrt(beta(t)) dW,  beta linear in t in [0, 1]."""

    beta_min: float = 0.1
    beta_max: float = 20.0


@dataclass(frozen=True)
class ScoreNetConfig:
    """Pointwise epsilon-prediction network (an MLP applied at every feature location)."""

    channels: int = 3
    cond_channels: int = 4
    hidden: int = 64
    layers: int = 3
    time_embedding: int = 16


@dataclass(frozen=True)
class SolverConfig:
    """Probability-flow ODE integration settings.

    method: a ``torchdiffeq.odeint`` method name; fixed-step methods use ``steps`` uniform steps.
    divergence: "exact" (trace by one VJP per channel) or "hutchinson".
    n_probes: Hutchinson probes averaged (ignored for "exact").
    t_eps: the ODE is integrated over [t_eps, 1] to avoid the singular score at t = 0.
    """

    method: str = "rk4"
    steps: int = 8
    rtol: float = 1e-5
    atol: float = 1e-5
    divergence: str = "exact"
    n_probes: int = 1
    t_eps: float = 1e-3


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
    reconstruction_steps: fixed RK4 steps of the ODE from t_start back to t_eps.
    smooth_mm: Gaussian sigma (mm) applied to the map on the model grid.
    """

    method: str = "reconstruction"
    hyperintense_only: bool = True
    hyperintense_contrasts: tuple[str, ...] = ("flair", "t2")
    t_start: float = 0.5
    n_reconstructions: int = 4
    reconstruction_steps: int = 4
    smooth_mm: float = 2.0


@dataclass(frozen=True)
class Calibration:
    """Label threshold chosen on normal training tissue: the ``quantile`` of healthy voxel scores."""

    threshold: float = 1.0
    quantile: float = 0.995
    slice_score_mean_bpd: float = 0.0
    slice_score_std_bpd: float = 1.0


@dataclass(frozen=True)
class ModelConfig:
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    sde: SDEConfig = field(default_factory=SDEConfig)
    score_net: ScoreNetConfig = field(default_factory=ScoreNetConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    localisation: LocalisationConfig = field(default_factory=LocalisationConfig)
    calibration: Calibration = field(default_factory=Calibration)


def to_dict(obj: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass; tuples become lists."""
    return dataclasses.asdict(obj)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a (nested) config dataclass from ``to_dict`` output.

    Unknown keys raise ``ValueError`` so a typo in a hand-edited model.json is not ignored.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        sub = _DATACLASS_FIELDS.get((cls.__name__, name))
        if sub is not None:
            kwargs[name] = from_dict(sub, value)
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


_DATACLASS_FIELDS: dict[tuple[str, str], type] = {
    ("ModelConfig", "preprocess"): PreprocessConfig,
    ("ModelConfig", "features"): FeatureConfig,
    ("ModelConfig", "sde"): SDEConfig,
    ("ModelConfig", "score_net"): ScoreNetConfig,
    ("ModelConfig", "solver"): SolverConfig,
    ("ModelConfig", "localisation"): LocalisationConfig,
    ("ModelConfig", "calibration"): Calibration,
}
