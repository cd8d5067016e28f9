"""Which voxels are brain: a mask the user gives, HD-BET's extraction of a raw head scan, or the non-background
region of a scan that is already skull-stripped.

    mask given                          -> "file"       (--mask; it wins)
    extraction "never"                  -> "background" (the non-background region; warns on a raw scan)
    extraction "always"                 -> "extracted"  (brain_extraction.extract_brain)
    extraction "auto" (the default)     -> "background" when the scan looks skull-stripped
                                           (``volume_io.looks_skull_stripped``), else "extracted"

A scan that is already skull-stripped is therefore scored exactly as before brain extraction existed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from . import volume_io

logger = logging.getLogger(__name__)

Callback = Callable[[float, str], None]

#: ``--brain-extraction`` values.
EXTRACTION_MODES = ("auto", "always", "never")
#: Where a brain mask came from (the report's ``brain_mask.source``).
SOURCES = ("file", "extracted", "background")


@dataclass(frozen=True)
class BrainMask:
    """The brain a scan is scored over.

    array: bool, the input's array layout (``sitk.GetArrayFromImage`` order).
    source: one of ``SOURCES``.
    tool: the extraction tool and its version for "extracted" (else None).
    seconds: wall time of the extraction (0 for the other sources).
    """

    array: np.ndarray
    source: str
    tool: str | None = None
    seconds: float = 0.0

    def describe(self, voxel_ml: float) -> dict[str, Any]:
        """The report's ``brain_mask`` entry: source, tool, seconds and volume (mL, ``voxel_ml`` per voxel)."""
        return {
            "source": self.source,
            "tool": self.tool,
            "seconds": round(float(self.seconds), 3),
            "volume_ml": round(float(np.count_nonzero(self.array)) * voxel_ml, 3),
        }


def check_mode(extraction: str) -> None:
    """ValueError unless ``extraction`` is one of ``EXTRACTION_MODES``."""
    if extraction not in EXTRACTION_MODES:
        raise ValueError(f"unknown brain extraction {extraction!r}; valid: {', '.join(EXTRACTION_MODES)}")


def resolve_brain_mask(
    image: sitk.Image,
    array: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    extraction: str = "auto",
    device: Any = "cpu",
    name: str = "input",
    callback: Callback | None = None,
) -> BrainMask:
    """The brain mask of ``image`` (its voxels as ``array``, sitk layout) by the rules of the module docstring.

    ``mask``: a brain mask already on the image's grid (bool, same layout), e.g. read from ``--mask``.
    ``device``: where the extraction network runs. Raises ``volume_io.InputError`` for an empty mask or an
    implausible extraction, ``brain_extraction.ExtractionUnavailable`` when extraction is needed but its
    package is not installed."""
    check_mode(extraction)
    if mask is not None:
        if not mask.any():
            raise volume_io.InputError(f"{name}: the brain mask is empty")
        return BrainMask(mask.astype(bool), "file")
    axial = volume_io.axial_axis(image)
    if extraction != "always":
        background = volume_io.brain_mask_from_image(array, slice_axis=axial)
        stripped = volume_io.looks_skull_stripped(array, background, slice_axis=axial)
        if extraction == "never" or stripped:
            if not stripped:
                logger.warning(
                    "%s does not look skull-stripped: the brain mask is the non-background region "
                    "(--brain-extraction never); extraction or --mask gives a better result",
                    name,
                )
            if not background.any():
                raise volume_io.InputError(f"{name}: the brain mask is empty")
            return BrainMask(background, "background")
        logger.info("%s does not look skull-stripped: extracting the brain", name)
    from .brain_extraction import extract_brain

    geometry = volume_io.slice_geometry(image)
    found = extract_brain(geometry.to_canonical(array), geometry, device=device, name=name, callback=callback)
    return BrainMask(geometry.from_canonical(found.canonical), "extracted", found.tool, found.seconds)
