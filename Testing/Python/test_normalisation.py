"""Intensity normalisation references (volume_io.intensity_reference / normalise_intensity)."""

import numpy as np
import pytest

from AnoDODELib import volume_io


def test_mean_reference_is_the_robust_z_score():
    rng = np.random.default_rng(0)
    v = rng.normal(50.0, 4.0, 200_000)
    lo, hi = np.percentile(v, [1, 99])
    core = v[(v >= lo) & (v <= hi)]
    assert volume_io.intensity_reference(v, "mean") == pytest.approx((core.mean(), core.std()))


def test_wm_peak_reference_finds_the_mode_and_its_spread():
    """A Gaussian 'white matter' peak (mode 100, sd 5) with a broad darker CSF and a brighter GM shoulder:
    the centre is the peak within one histogram bin, the scale the peak's sd within 15 %."""
    rng = np.random.default_rng(1)
    wm = rng.normal(100.0, 5.0, 300_000)
    gm = rng.normal(115.0, 6.0, 120_000)
    csf = rng.normal(40.0, 15.0, 80_000)
    v = np.concatenate([wm, gm, csf])
    centre, scale = volume_io.intensity_reference(v, "wm_peak")
    lo, hi = np.percentile(v, [1, 99])
    assert abs(centre - 100.0) <= (hi - lo) / 128 + 0.5
    assert 4.0 < scale < 12.0


def test_wm_peak_reference_barely_moves_with_a_bright_lesion_where_the_mean_does():
    rng = np.random.default_rng(2)
    normal = rng.normal(100.0, 5.0, 200_000)
    lesion = rng.normal(160.0, 5.0, 30_000)  # 13 % of the brain, very bright
    c0, s0 = volume_io.intensity_reference(normal, "wm_peak")
    c1, s1 = volume_io.intensity_reference(np.concatenate([normal, lesion]), "wm_peak")
    m0, _ = volume_io.intensity_reference(normal, "mean")
    m1, _ = volume_io.intensity_reference(np.concatenate([normal, lesion]), "mean")
    assert abs(c1 - c0) < 0.2 * s0
    assert abs(m1 - m0) > 1.0 * s0


def test_normalise_with_the_wm_peak_maps_the_peak_to_zero_and_rejects_unknown_references():
    rng = np.random.default_rng(3)
    a = rng.normal(300.0, 10.0, (6, 40, 40))
    brain = np.zeros(a.shape, bool)
    brain[:, 5:35, 5:35] = True
    z = volume_io.normalise_intensity(a, brain, reference="wm_peak")
    assert abs(float(np.median(z[brain]))) < 0.1
    assert np.all(z[~brain] == 0)
    with pytest.raises(ValueError, match="wm_peak"):
        volume_io.normalise_intensity(a, brain, reference="median")
