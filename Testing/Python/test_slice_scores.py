"""Slice scores: the mean of a map over the slice's most anomalous area of brain (``slice_top_area_scores``)."""

from __future__ import annotations

import numpy as np
import pytest

from AnoDODELib.anomaly_map import slice_top_area_scores


def test_top_area_mean_by_hand():
    """Slice 0: brain values 1..10 (outside the brain 100, ignored); slice 1: no brain; slice 2: two voxels."""
    m = np.zeros((3, 4, 4))
    b = np.zeros((3, 4, 4), bool)
    m[0].flat[:10] = np.arange(1, 11)
    b[0].flat[:10] = True
    m[0, 3, 3] = 100.0
    m[2, 0, :2] = [2.0, 6.0]
    b[2, 0, :2] = True
    # pixel 0.5 x 0.5 mm = 0.25 mm^2; 0.75 mm^2 -> k = 3: (8 + 9 + 10) / 3 = 9; slice 2 has only 2: (2 + 6) / 2
    assert slice_top_area_scores(m, b, 0.25, 0.75) == [9.0, None, 4.0]
    assert slice_top_area_scores(m, b, 0.25, 0.1) == [10.0, None, 6.0]  # below one pixel: the maximum
    assert slice_top_area_scores(m, b, 0.25, 100.0) == [5.5, None, 4.0]  # more than the slice: its mean


def test_the_score_is_the_same_at_any_in_plane_resolution():
    """A fixed physical area: the same pattern sampled at 1 mm and at 0.5 mm (each voxel 2 x 2) scores the
    same, although its 99th percentile moves with the voxel count."""
    rng = np.random.default_rng(0)
    coarse = rng.random((2, 20, 20)).astype(np.float32)
    brain = np.ones(coarse.shape, bool)
    brain[:, :3] = False
    fine, fine_brain = (a.repeat(2, 1).repeat(2, 2) for a in (coarse, brain))
    a = slice_top_area_scores(coarse, brain, 1.0, 12.0)
    b = slice_top_area_scores(fine, fine_brain, 0.25, 12.0)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert a[0] == pytest.approx(float(np.sort(coarse[0][brain[0]])[-12:].mean()), rel=1e-6)


@pytest.mark.parametrize("pixel,area", [(0.0, 100.0), (1.0, 0.0), (1.0, float("nan")), (-1.0, 1.0)])
def test_areas_must_be_positive(pixel, area):
    with pytest.raises(ValueError, match="positive"):
        slice_top_area_scores(np.zeros((1, 2, 2)), np.ones((1, 2, 2), bool), pixel, area)
