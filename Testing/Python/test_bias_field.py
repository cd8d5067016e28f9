"""bias_field.py: N4 removes a known multiplicative field and keeps everything else.

The phantom is two tissues (white matter 100, grey matter 140) in an ellipsoidal brain with 1 % noise,
multiplied by a known smooth field B = exp(0.25 * ramp): the corrected image divided by the true one must be
flat inside the brain (what N4 is for), its overall level kept, and a flat scan left as it was.
"""

from __future__ import annotations

import numpy as np
import pytest

from AnoDODELib.bias_field import n4_corrected, shrink_factors

SPACING_XYZ = (1.8, 1.8, 4.0)


def tissues(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(true image, brain mask) in sitk layout (z, y, x): 24 slices of 96 x 96."""
    z, y, x = np.indices((24, 96, 96)).astype(float)
    r = ((z - 11.5) / 10.5) ** 2 + ((y - 47.5) / 40) ** 2 + ((x - 47.5) / 36) ** 2
    brain = r < 1.0
    grey = brain & (np.sin(x / 4.0) * np.cos(y / 5.0) > 0.3)
    rng = np.random.default_rng(seed)
    true = np.where(grey, 140.0, 100.0) * (1.0 + 0.01 * rng.standard_normal(brain.shape))
    return np.where(brain, true, 0.0).astype(np.float32), brain


def field() -> np.ndarray:
    z, y, x = np.indices((24, 96, 96)).astype(float)
    return np.exp(0.25 * ((x - 47.5) / 48 + 0.5 * (y - 47.5) / 48 - 0.3 * (z - 11.5) / 12)).astype(np.float32)


def spread(ratio: np.ndarray, mask: np.ndarray) -> float:
    """Robust spread of log(ratio) inside the mask: the 95th minus the 5th percentile."""
    lo, hi = np.percentile(np.log(ratio[mask]), [5, 95])
    return float(hi - lo)


def test_shrink_factors_give_about_4_mm():
    assert shrink_factors((1.0, 1.0, 1.0)) == [4, 4, 4]
    assert shrink_factors((0.9, 0.9, 6.5)) == [4, 4, 1]
    assert shrink_factors((0.47, 0.47, 7.5)) == [9, 9, 1]


def test_removes_a_known_field():
    true, brain = tissues()
    biased = true * field()
    before = spread(biased / np.maximum(true, 1e-3), brain)
    corrected = n4_corrected(biased, brain, SPACING_XYZ)
    after = spread(corrected / np.maximum(true, 1e-3), brain)
    assert before > 0.3  # the field's log spans about 0.33 over the brain's 5th-95th percentiles
    assert after < 0.1 * before, (before, after)
    # the two tissues are told apart again: grey/white ratio 1.4 everywhere
    grey = brain & (true > 120)
    white = brain & (true < 120)
    assert np.median(corrected[grey]) / np.median(corrected[white]) == pytest.approx(1.4, rel=0.03)


def test_keeps_the_level_and_a_flat_scan():
    true, brain = tissues(1)
    corrected = n4_corrected(true, brain, SPACING_XYZ)
    assert corrected.dtype == np.float32 and corrected.shape == true.shape
    assert np.median(corrected[brain] / true[brain]) == pytest.approx(1.0, abs=0.02)
    assert spread(corrected / np.maximum(true, 1e-3), brain) < 0.05


def test_negative_raw_values_are_handled():
    """Raw int16 scanner data can hold values <= 0 (noise, some vendors' offsets): the fit needs positive
    intensities, so the scan is shifted and shifted back; the field is still removed."""
    true, brain = tissues(2)
    biased = (true * field() - 60.0).astype(np.float32)  # brain values now 40..~250, background -60
    biased[brain & (np.indices(brain.shape)[2] == 30)] = -5.0  # a few non-positive voxels inside the brain
    corrected = n4_corrected(biased, brain, SPACING_XYZ)
    assert np.isfinite(corrected).all()
    inside = brain & (biased > 0)
    # the correction is multiplicative about the shifted floor, so the field is not exactly removed here,
    # but most of it is: the spread of (image + 60) / true falls from about 0.33 to under a third of it
    before = spread((biased + 60.0) / np.maximum(true, 1e-3), inside)
    after = spread((corrected + 60.0) / np.maximum(true, 1e-3), inside)
    assert after < before / 3, (before, after)


def test_bad_arguments():
    true, brain = tissues()
    with pytest.raises(ValueError, match="differ in shape"):
        n4_corrected(true, brain[:-1], SPACING_XYZ)
    with pytest.raises(ValueError, match="empty"):
        n4_corrected(true, np.zeros_like(brain), SPACING_XYZ)
