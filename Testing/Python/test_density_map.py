"""The shipped map and slice scores (pipeline.density_map, weighted_map, maps_from_scores, canonical_slice_scores,
slice_scores, slice_map_scores) on hand-built volumes whose model grid is the input grid, so every brain
voxel is one scored location and each value can be written down:

    D(v) = max(bpd, 0) * max(r_0, 0)                   density map, "combined", smooth_mm = 0
    D(v) = max(bpd, 0) * [r_0 > 0]                     "likelihood"
    A(v) = sqrt(max(D, 0)) * max(I_s, 0) / b  on the brain   weighted map (intensity_product), I_s = I for
           smooth_mm 0, b = max(Q_0.75 {I_s over the brain}, 0.1) (brightness_quantile; b = 1 for None)
    s(slice) = mean of the k largest {D(v) : v brain voxel of the slice},  k = round(area / pixel area)
                                                       canonical slice score, None without brain

No data, no trained network: the maps read only the per-location scores and the model's config.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from AnoDODELib import pipeline
from AnoDODELib.anomaly_map import smooth_in_mask
from AnoDODELib.bundle import AnoDODEModel
from AnoDODELib.config import LocalisationConfig, ModelConfig
from AnoDODELib.volume_io import SliceGeometry

SHIPPED = LocalisationConfig(
    method="combined",
    smooth_mm=2.0,
    intensity_product=True,  # the bundled model's
    brightness_quantile=0.75,
)


def model_with(**loc) -> AnoDODEModel:
    return AnoDODEModel(ModelConfig(localisation=dataclasses.replace(SHIPPED, **loc)))


def prepared_volume(
    brain: np.ndarray,
    normalised: np.ndarray | None = None,
    *,
    spacing=(3.0, 2.0, 2.0),
    axes=(0, 1, 2),
    flips=(False, False, False),
) -> pipeline.PreparedVolume:
    """A volume whose model grid is its full-resolution canonical grid (``brain``, (S, H, W)); the input
    layout is the canonical one permuted by ``axes`` and flipped by ``flips``."""
    shape = [0, 0, 0]
    for i, a in enumerate(axes):
        shape[a] = brain.shape[i]
    geometry = SliceGeometry(tuple(axes), tuple(flips), tuple(spacing), tuple(shape))
    if normalised is None:
        normalised = np.zeros(brain.shape, np.float32)
    s = brain.shape[0]
    return pipeline.PreparedVolume(
        geometry,
        normalised.astype(np.float32),
        brain.astype(bool),
        torch.zeros(s, 3, *brain.shape[1:]),
        torch.zeros(s, 1, *brain.shape[1:]),
        torch.from_numpy(brain.astype(bool)),
        float(spacing[1]),
    )


def brain_mask() -> np.ndarray:
    """(4, 5, 6): slice 0 without brain, then brain regions of 6, 12 and 4 voxels."""
    b = np.zeros((4, 5, 6), bool)
    b[1, 1:3, 1:4] = True
    b[2, 1:4, 1:5] = True
    b[3, 2:4, 2:4] = True
    return b


def hand_scores(n: int) -> pipeline.LocationScores:
    """Per-location bpd from -1 to 3 and a residual whose finest channel takes both signs and 0."""
    k = torch.arange(n, dtype=torch.float32)
    bpd = -1.0 + 4.0 * k / (n - 1)
    residual = torch.stack(
        [
            torch.tensor([0.6, -0.4, 0.0, 1.5])[k.long() % 4] * (1 + k / n),
            torch.full((n,), 0.7),
            -torch.ones(n),
        ],
        dim=1,
    )
    return pipeline.LocationScores(bpd, residual, 1, 1)


def on_brain(brain: np.ndarray, values: torch.Tensor) -> np.ndarray:
    out = np.zeros(brain.shape, np.float32)
    out[brain] = values.numpy()
    return out


# ----------------------------------------------------------------------------- the density map


def test_combined_density_is_the_positive_bpd_times_the_positive_finest_residual() -> None:
    brain = brain_mask()
    p, s = prepared_volume(brain), hand_scores(int(brain.sum()))
    model = model_with(smooth_mm=0.0)
    got = pipeline.density_map(p, s, model)
    want = on_brain(brain, s.bpd.clamp_min(0) * s.residual[:, 0].clamp_min(0))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert got[brain].max() > 0 and np.count_nonzero(got[brain]) < brain.sum()  # both branches occur


def test_hand_computed_voxels() -> None:
    """Four locations written out: bpd (2, 0.5, -1, 3), r_0 (0.5, -0.2, 0.8, 0)."""
    brain = np.zeros((1, 1, 4), bool)
    brain[0, 0, :] = True
    p = prepared_volume(brain, np.array([[[4.0, 1.0, 9.0, -2.0]]]))
    s = pipeline.LocationScores(
        torch.tensor([2.0, 0.5, -1.0, 3.0]),
        torch.tensor([[0.5, 1.0, 1.0], [-0.2, 1.0, 1.0], [0.8, 1.0, 1.0], [0.0, 1.0, 1.0]]),
        1,
        1,
    )
    combined = model_with(smooth_mm=0.0, intensity_product=False)
    np.testing.assert_allclose(pipeline.density_map(p, s, combined)[0, 0], [1.0, 0.0, 0.0, 0.0], atol=1e-7)
    likelihood = model_with(method="likelihood", smooth_mm=0.0, intensity_product=False)
    np.testing.assert_allclose(pipeline.density_map(p, s, likelihood)[0, 0], [2.0, 0.0, 0.0, 0.0], atol=1e-7)
    # the shipped map: sqrt(1) * 4 / b at the first voxel, 0 where the density is 0 (whatever the intensity);
    # b: the 0.75 quantile of the brain's intensities (-2, 1, 4, 9): 4 + 0.25 * (9 - 4) = 5.25
    shipped = model_with(smooth_mm=0.0)
    np.testing.assert_allclose(
        pipeline.maps_from_scores(p, s, shipped)[0, 0], [4.0 / 5.25, 0.0, 0.0, 0.0], atol=1e-6
    )
    unscaled = model_with(smooth_mm=0.0, brightness_quantile=None)
    np.testing.assert_allclose(
        pipeline.maps_from_scores(p, s, unscaled)[0, 0], [4.0, 0.0, 0.0, 0.0], atol=1e-6
    )


def test_likelihood_density_is_the_positive_bpd_where_brighter() -> None:
    brain = brain_mask()
    p, s = prepared_volume(brain), hand_scores(int(brain.sum()))
    got = pipeline.density_map(p, s, model_with(method="likelihood", smooth_mm=0.0))
    want = on_brain(brain, s.bpd.clamp_min(0) * (s.residual[:, 0] > 0))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_the_localisation_argument_overrides_the_models() -> None:
    brain = brain_mask()
    p, s = prepared_volume(brain), hand_scores(int(brain.sum()))
    model = model_with(smooth_mm=0.0)
    as_likelihood = dataclasses.replace(model.config.localisation, method="likelihood")
    np.testing.assert_array_equal(
        pipeline.density_map(p, s, model, as_likelihood),
        pipeline.density_map(p, s, model_with(method="likelihood", smooth_mm=0.0)),
    )
    assert not np.array_equal(
        pipeline.density_map(p, s, model, as_likelihood), pipeline.density_map(p, s, model)
    )


def test_combined_density_is_smoothed_by_smooth_mm_on_the_model_grid() -> None:
    """One hot location (bpd 2, r_0 0.5: D = 1) on a 2.5 mm grid, smooth_mm 5: sigma 2 pixels in-plane."""
    brain = np.zeros((3, 15, 15), bool)
    brain[:, 1:14, 1:14] = True
    p = prepared_volume(brain, spacing=(4.0, 2.5, 2.5))
    n = int(brain.sum())
    bpd, residual = torch.zeros(n), torch.zeros(n, 3)
    index = int(brain.ravel()[: np.ravel_multi_index((1, 7, 7), brain.shape)].sum())  # locations before it
    bpd[index], residual[index, 0] = 2.0, 0.5
    got = pipeline.density_map(p, pipeline.LocationScores(bpd, residual, 1, 1), model_with(smooth_mm=5.0))
    assert np.count_nonzero(got[0]) == 0 and np.count_nonzero(got[2]) == 0
    centre = got[1, 7, 7]
    assert centre == pytest.approx(1.0 / (2 * math.pi * 4.0), rel=0.02)  # unit mass, sigma 2 px
    for dr, dc in ((0, 1), (1, 1), (2, 0)):
        assert got[1, 7 + dr, 7 + dc] / centre == pytest.approx(
            math.exp(-(dr * dr + dc * dc) / 8.0), rel=1e-4
        )


def test_skipped_slices_of_the_combined_density_are_interpolated() -> None:
    """Slices 1 and 3 scored (D = 2 and D = 4 everywhere in the brain), slice 2 skipped: D = 3 there."""
    brain = np.zeros((5, 4, 4), bool)
    brain[1:4, 1:3, 1:3] = True
    p = prepared_volume(brain)
    keep = torch.tensor([False, True, False, True, False])
    bpd = torch.tensor([4.0] * 4 + [8.0] * 4)
    residual = torch.zeros(8, 3)
    residual[:, 0] = 0.5
    got = pipeline.density_map(
        p, pipeline.LocationScores(bpd, residual, 1, 1), model_with(smooth_mm=0.0), scored=keep
    )
    np.testing.assert_allclose(got[1][brain[1]], 2.0)
    np.testing.assert_allclose(got[2][brain[2]], 3.0)
    np.testing.assert_allclose(got[3][brain[3]], 4.0)
    assert np.all(got[~brain] == 0)


# ----------------------------------------------------------------------------- the weighted (shipped) map


def test_weighted_map_is_sqrt_density_times_the_positive_intensity_on_the_brain() -> None:
    brain = brain_mask()
    rng = np.random.default_rng(1)
    intensity = rng.normal(size=brain.shape).astype(np.float32)
    density = rng.normal(0.5, 1.0, size=brain.shape).astype(np.float32)  # negatives and values < 1 too
    p = prepared_volume(brain, intensity)
    loc = dataclasses.replace(SHIPPED, smooth_mm=0.0, brightness_quantile=None)
    got = pipeline.weighted_map(p, density, loc)
    want = np.where(brain, np.sqrt(np.maximum(density, 0)) * np.maximum(intensity, 0), 0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert got.dtype == np.float32
    b = float(np.quantile(intensity[brain], 0.6))
    assert b > 0.1
    scaled = pipeline.weighted_map(p, density, dataclasses.replace(loc, brightness_quantile=0.6))
    np.testing.assert_allclose(scaled, want / b, rtol=1e-5, atol=1e-7)
    assert pipeline.weighted_map(p, density, dataclasses.replace(loc, intensity_product=False)) is density


def test_weighted_map_smooths_the_intensity_in_3d_in_mm() -> None:
    brain = np.zeros((7, 12, 12), bool)
    brain[1:6, 2:10, 2:10] = True
    rng = np.random.default_rng(2)
    intensity = rng.normal(size=brain.shape).astype(np.float32)
    density = np.where(brain, 0.25, 0.0).astype(np.float32)
    p = prepared_volume(brain, intensity, spacing=(3.0, 1.5, 1.0))
    loc = dataclasses.replace(SHIPPED, brightness_quantile=None)
    got = pipeline.weighted_map(p, density, loc)
    bright = smooth_in_mask(intensity, brain, (3.0, 1.5, 1.0), SHIPPED.smooth_mm)
    np.testing.assert_allclose(got, np.where(brain, 0.5 * np.maximum(bright, 0), 0), rtol=1e-5, atol=1e-7)
    assert not np.allclose(got, np.where(brain, 0.5 * np.maximum(intensity, 0), 0), atol=1e-3)


@pytest.mark.parametrize("flips", [(False, False, False), (True, False, True), (False, True, False)])
def test_maps_from_scores_is_the_weighted_density_in_the_input_layout(flips) -> None:
    brain = brain_mask()
    intensity = np.random.default_rng(3).normal(size=brain.shape).astype(np.float32) + 0.5
    p = prepared_volume(brain, intensity, axes=(2, 0, 1), flips=flips)
    s = hand_scores(int(brain.sum()))
    model = model_with(smooth_mm=0.0)
    got = pipeline.maps_from_scores(p, s, model)
    assert got.shape == p.geometry.shape
    d = on_brain(brain, s.bpd.clamp_min(0) * s.residual[:, 0].clamp_min(0))
    b = max(float(np.quantile(intensity[brain], 0.75)), 0.1)
    want = np.where(brain, np.sqrt(d) * np.maximum(intensity, 0) / b, 0)
    np.testing.assert_allclose(p.geometry.to_canonical(got), want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- slice scores


def top_mean(values: np.ndarray, k: int) -> float:
    return float(np.sort(values)[-k:].mean())


@pytest.mark.parametrize("area,k", [(100.0, None), (12.0, 3), (4.0, 1), (9.0, 2)])
def test_canonical_slice_scores_are_the_top_area_mean_of_the_density(area, k) -> None:
    """Pixels of 2 x 2 mm: 12 mm^2 of brain are the k = 3 largest voxels, 4 mm^2 the largest one, 9 mm^2
    rounds to 2; 100 mm^2 (25 voxels) is more than each slice holds (6, 12, 4): the slice's mean."""
    brain = brain_mask()
    intensity = np.full(brain.shape, 9.0, np.float32)  # the intensity weighting must not count
    p, s = prepared_volume(brain, intensity), hand_scores(int(brain.sum()))
    model = model_with(smooth_mm=0.0, slice_area_mm2=area)
    d = on_brain(brain, s.bpd.clamp_min(0) * s.residual[:, 0].clamp_min(0))
    want = [top_mean(d[j][brain[j]], k or int(brain[j].sum())) for j in (1, 2, 3)]
    got = pipeline.canonical_slice_scores(p, s, model)
    assert got[0] is None and got[1:] == pytest.approx(want, rel=1e-6)
    assert pipeline.canonical_slice_scores(p, s, model, density=d) == got
    assert len(set(got[1:])) == 3


def test_the_pixel_area_is_the_in_plane_one() -> None:
    """Slices 3 mm apart, pixels 2 x 1 mm: 6 mm^2 are 3 voxels (not 2, with the slice spacing's 3 x 2)."""
    brain = brain_mask()
    p, s = prepared_volume(brain, spacing=(3.0, 2.0, 1.0)), hand_scores(int(brain.sum()))
    d = on_brain(brain, s.bpd.clamp_min(0) * s.residual[:, 0].clamp_min(0))
    got = pipeline.canonical_slice_scores(p, s, model_with(smooth_mm=0.0, slice_area_mm2=6.0))
    assert got[1:] == pytest.approx([top_mean(d[j][brain[j]], 3) for j in (1, 2, 3)], rel=1e-6)
    amap = p.geometry.from_canonical(d)
    assert pipeline.slice_map_scores(p, amap, 6.0) == got


def test_canonical_slice_scores_interpolate_skipped_slices() -> None:
    brain = np.zeros((5, 4, 4), bool)
    brain[1:4, 1:3, 1:3] = True
    p = prepared_volume(brain)
    keep = torch.tensor([False, True, False, True, False])
    residual = torch.zeros(8, 3)
    residual[:, 0] = 0.5
    s = pipeline.LocationScores(torch.tensor([4.0] * 4 + [8.0] * 4), residual, 1, 1)
    got = pipeline.canonical_slice_scores(p, s, model_with(smooth_mm=0.0), scored=keep)
    assert got[0] is None and got[4] is None
    assert got[1:4] == pytest.approx([2.0, 3.0, 4.0])


@pytest.mark.parametrize("flip", [False, True])
def test_slice_scores_follow_the_input_order_of_the_axial_axis(flip) -> None:
    brain = brain_mask()
    p = prepared_volume(brain, axes=(1, 2, 0), flips=(flip, False, True))
    s = hand_scores(int(brain.sum()))
    model = model_with(smooth_mm=0.0)
    canon = pipeline.canonical_slice_scores(p, s, model)
    got = pipeline.slice_scores(p, s, model)
    assert got == (canon[::-1] if flip else canon)
    # the map's slice score: a map that is k + 1 on canonical slice k, any area
    amap = np.where(brain, np.arange(1.0, 5.0)[:, None, None], 0.0).astype(np.float32)
    rank = [None, 2.0, 3.0, 4.0]
    for area in (4.0, 100.0):
        assert pipeline.slice_map_scores(p, p.geometry.from_canonical(amap), area) == (
            rank[::-1] if flip else rank
        )


def test_slice_map_scores_take_the_top_area_mean_over_the_brain() -> None:
    brain = brain_mask()
    rng = np.random.default_rng(4)
    amap = rng.gamma(2.0, size=brain.shape).astype(np.float32)
    p = prepared_volume(brain, axes=(0, 2, 1), flips=(True, True, False))
    got = pipeline.slice_map_scores(p, p.geometry.from_canonical(amap), 8.0)  # 2 voxels
    assert got[-1] is None and got[:-1] == pytest.approx(
        [top_mean(amap[j][brain[j]], 2) for j in (3, 2, 1)], rel=1e-6
    )
    default = pipeline.slice_map_scores(p, p.geometry.from_canonical(amap))  # 100 mm^2: all
    assert default[:-1] == pytest.approx([float(amap[j][brain[j]].mean()) for j in (3, 2, 1)], rel=1e-6)
