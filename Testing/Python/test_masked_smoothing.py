"""The two smoothings of the anomaly map against their definitions.

smooth_in_mask (the intensity factor of the shipped map, 3-D, full resolution), sigma_i = sigma_mm / spacing_i:

    out = (G * (v 1_M)) / (G * 1_M)  on M,  0 elsewhere

so a field constant on M stays that constant on M whatever lies outside, and a point far from the edge
spreads as a sampled Gaussian: neighbour ratio exp(-d^2 / (2 sigma_i^2)) along axis i.

smooth_on_grid (the density map, in-plane, model grid): G * grid (sigma_mm / spacing_mm pixels), times the
mask, not renormalised.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from AnoDODELib.anomaly_map import smooth_in_mask, smooth_on_grid


def ball(
    shape: tuple[int, int, int], centre: tuple[float, float, float], radius: tuple[float, float, float]
) -> np.ndarray:
    idx = np.indices(shape).astype(float)
    return sum(((idx[i] - centre[i]) / radius[i]) ** 2 for i in range(3)) < 1.0


def test_a_constant_field_stays_constant_inside_the_mask_and_zero_outside() -> None:
    mask = ball((12, 20, 18), (5.5, 9.0, 8.0), (4.5, 7.0, 6.0))
    values = np.where(mask, 3.0, 100.0)  # whatever lies outside must not leak in
    out = smooth_in_mask(values, mask, (3.0, 1.0, 1.5), sigma_mm=2.0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[mask], 3.0, rtol=1e-5)
    assert np.all(out[~mask] == 0)


def test_a_point_spreads_as_a_gaussian_of_sigma_mm_along_each_axis() -> None:
    """Anisotropic voxels (3 x 1 x 1.5 mm) and sigma 2 mm: sigma_i = 2/3, 2 and 4/3 voxels. The mask is a box
    wider than the kernel (4 sigma) around the point, so the normaliser is 1 there."""
    spacing, sigma_mm = (3.0, 1.0, 1.5), 2.0
    shape, c = (15, 31, 23), (7, 15, 11)
    mask = np.zeros(shape, bool)
    mask[1:-1, 1:-1, 1:-1] = True
    values = np.zeros(shape)
    values[c] = 1.0
    out = smooth_in_mask(values, mask, spacing, sigma_mm)
    for axis in range(3):
        s = sigma_mm / spacing[axis]
        for d in (1, 2):
            q = list(c)
            q[axis] += d
            assert out[tuple(q)] / out[c] == pytest.approx(math.exp(-d * d / (2 * s * s)), rel=1e-4), (
                axis,
                d,
            )
    # separable unit-mass kernel sampled at the integers: the peak is the product of the 1-D peaks
    peak = np.prod(
        [
            1.0
            / sum(
                math.exp(-k * k / (2 * (sigma_mm / sp) ** 2))
                for k in range(-int(4 * sigma_mm / sp + 0.5), int(4 * sigma_mm / sp + 0.5) + 1)
            )
            for sp in spacing
        ]
    )
    assert out[c] == pytest.approx(peak, rel=1e-4)


def test_equals_the_whole_array_normalised_convolution() -> None:
    """The bounding-box computation is the whole-array one (the kernel reaches no further than the box's
    zero padding would), up to the last row and column of the mask."""
    rng = np.random.default_rng(0)
    shape = (10, 24, 20)
    mask = ball(shape, (4.0, 12.0, 9.5), (3.6, 9.0, 7.2))
    values = rng.normal(size=shape)
    spacing, sigma_mm = (2.5, 1.0, 1.2), 1.8
    sigma = [sigma_mm / s for s in spacing]
    num = ndimage.gaussian_filter(np.where(mask, values, 0.0), sigma, mode="constant")
    den = ndimage.gaussian_filter(mask.astype(float), sigma, mode="constant")
    want = np.where(mask, num / np.where(mask, den, 1.0), 0.0)
    np.testing.assert_allclose(smooth_in_mask(values, mask, spacing, sigma_mm), want, rtol=1e-4, atol=1e-5)


def test_edge_voxels_are_not_darkened_and_an_empty_mask_gives_zeros() -> None:
    mask = np.zeros((3, 9, 9), bool)
    mask[1, 2:7, 2:7] = True
    out = smooth_in_mask(np.ones(mask.shape), mask, (1.0, 1.0, 1.0), 3.0)
    np.testing.assert_allclose(out[mask], 1.0, rtol=1e-5)  # a plain blur would give ~0.2 at corners
    empty = smooth_in_mask(np.ones(mask.shape), np.zeros(mask.shape, bool), (1.0, 1.0, 1.0), 3.0)
    assert empty.shape == mask.shape and not empty.any()


def test_smooth_on_grid_is_an_in_plane_gaussian_in_mm_cut_to_the_mask() -> None:
    """A unit point on a 2.5 mm grid, sigma 5 mm = 2 pixels; the mask is the point's half of the slice."""
    grid = torch.zeros(3, 21, 21)
    grid[1, 10, 10] = 1.0
    mask = torch.zeros(3, 21, 21, dtype=torch.bool)
    mask[:, :, :12] = True
    out = smooth_on_grid(grid, mask, sigma_mm=5.0, spacing_mm=2.5)
    assert torch.all(out[~mask] == 0)
    assert torch.all(out[0] == 0) and torch.all(out[2] == 0)  # no through-plane mixing
    g = out[1]
    for dr, dc in ((1, 0), (0, 1), (2, 0), (1, -1), (0, -3)):
        assert float(g[10 + dr, 10 + dc] / g[10, 10]) == pytest.approx(
            math.exp(-(dr * dr + dc * dc) / 8.0), rel=1e-4
        )
    # not renormalised at the mask's edge: the mass cut off by the mask is lost
    full = smooth_on_grid(grid, torch.ones_like(mask), sigma_mm=5.0, spacing_mm=2.5)
    assert float(full.sum()) == pytest.approx(1.0, abs=1e-4)
    assert float(out.sum()) < 0.9
    assert torch.equal(smooth_on_grid(grid, mask, 0.0, 2.5), grid)
