"""Bias-field correction: N4 (Tustison et al., IEEE TMI 2010) inside the brain, with SimpleITK.

A raw MR scan is the tissue signal times a smooth multiplicative field B(x) from the receive coils:

    I(x) = B(x) * T(x) + noise,        log I = log B + log T

N4 fits log B as a cubic B-spline over the brain by sharpening the histogram of log T, iterating at a few
control-point resolutions. The field is fitted on a grid shrunk to about ``SHRINK_MM`` per axis (a smooth
field needs no more; it takes about a second) and evaluated at every voxel of the full-resolution image,
which is then divided by it. Intensities must be positive where the field is fitted: a scan with values
<= 0 in the brain (raw int16 scanner data, or a scan already z-scored) is shifted to a minimum of 1 first
and shifted back afterwards, so the correction is multiplicative about that floor.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import SimpleITK as sitk

logger = logging.getLogger(__name__)

#: The fit grid's voxel size (mm, per axis, at least the input's): shrink factor round(SHRINK_MM / spacing).
SHRINK_MM = 4.0
#: N4 iterations at each of its fitting levels (SimpleITK's default: 50 at each of 4 levels).
ITERATIONS = (50, 50, 50, 50)


def shrink_factors(spacing_mm: tuple[float, ...]) -> list[int]:
    """Per-axis integer shrink factors giving voxels of about ``SHRINK_MM`` (1 for an axis already coarser)."""
    return [max(1, int(round(SHRINK_MM / s))) for s in spacing_mm]


def n4_corrected(array: np.ndarray, mask: np.ndarray, spacing_xyz: tuple[float, float, float]) -> np.ndarray:
    """``array`` (sitk layout (z, y, x), any real type) divided by its N4 bias field fitted inside ``mask``
    (bool, same layout); float32, same layout. ``spacing_xyz``: the voxel size in mm in SimpleITK's (x, y, z)
    order. The field is a smooth positive function, scaled so its log has mean 0 in the mask: the brain's
    overall intensity level is kept."""
    if array.shape != mask.shape:
        raise ValueError(f"array {array.shape} and mask {mask.shape} differ in shape")
    mask = mask.astype(bool)
    if not mask.any():
        raise ValueError("the bias-field mask is empty")
    t0 = time.perf_counter()
    values = array.astype(np.float32)
    low = float(values[mask].min())
    shift = 1.0 - low if low < 1.0 else 0.0
    image = sitk.GetImageFromArray(values + np.float32(shift))
    image.SetSpacing(tuple(float(s) for s in spacing_xyz))
    region = sitk.GetImageFromArray(mask.astype(np.uint8))
    region.CopyInformation(image)
    factors = shrink_factors(tuple(float(s) for s in spacing_xyz))
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations(list(ITERATIONS))
    n4.Execute(sitk.Shrink(image, factors), sitk.Shrink(region, factors))
    log_field = sitk.GetArrayFromImage(n4.GetLogBiasFieldAsImage(image)).astype(np.float64)
    log_field -= log_field[mask].mean()  # keep the brain's overall level: only the field's shape is removed
    corrected = (values + np.float32(shift)) * np.exp(-log_field).astype(np.float32) - np.float32(shift)
    logger.info(
        "N4 bias field: %.2f-%.2f inside the brain (%.1f s)",
        float(np.exp(log_field[mask].min())),
        float(np.exp(log_field[mask].max())),
        time.perf_counter() - t0,
    )
    return corrected.astype(np.float32)
