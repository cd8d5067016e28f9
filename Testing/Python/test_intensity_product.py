"""The intensity-weighted map (LocalisationConfig.intensity_product) against its definition, computed by hand."""

import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from AnoDODELib import pipeline
from AnoDODELib.anomaly_map import smooth_in_mask
from AnoDODELib.bundle import AnoDODEModel
from AnoDODELib.config import ModelConfig


def test_product_is_sqrt_density_times_the_smoothed_bright_intensity(phantom_file):
    cfg = ModelConfig()
    prepared = pipeline.prepare_volume(sitk.ReadImage(str(phantom_file)), cfg)
    n = int(prepared.grid_mask.sum())
    gen = torch.Generator().manual_seed(0)
    scores = pipeline.LocationScores(torch.rand(n, generator=gen), torch.randn(n, 3, generator=gen), 0)
    model = AnoDODEModel(cfg)
    density = pipeline.maps_from_scores(prepared, scores, model)  # input layout
    prod_cfg = dataclasses.replace(cfg.localisation, intensity_product=True, brightness_quantile=None)
    got = pipeline.maps_from_scores(prepared, scores, model, prod_cfg)
    g = prepared.geometry
    bright = smooth_in_mask(prepared.normalised, prepared.brain, g.spacing_mm, cfg.localisation.smooth_mm)
    want = np.sqrt(np.maximum(density, 0)) * np.maximum(g.from_canonical(bright), 0)
    want = np.where(g.from_canonical(prepared.brain), want, 0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.all(got[~g.from_canonical(prepared.brain)] == 0)
    # a location that is not brighter than normal intensity gets 0 whatever the density says
    dark = g.from_canonical(bright) <= 0
    assert np.all(got[dark] == 0)


def test_the_brightness_is_in_units_of_the_scans_own_quantile(phantom_file):
    """With ``brightness_quantile`` q the product is divided by the q-quantile of I_s over the brain."""
    cfg = ModelConfig()
    assert cfg.localisation.brightness_quantile == 0.75
    prepared = pipeline.prepare_volume(sitk.ReadImage(str(phantom_file)), cfg)
    n = int(prepared.grid_mask.sum())
    gen = torch.Generator().manual_seed(1)
    scores = pipeline.LocationScores(torch.rand(n, generator=gen), torch.randn(n, 3, generator=gen), 0)
    model = AnoDODEModel(cfg)
    density = pipeline.density_map(prepared, scores, model)
    plain = dataclasses.replace(cfg.localisation, intensity_product=True, brightness_quantile=None)
    scaled = dataclasses.replace(plain, brightness_quantile=0.75)
    g = prepared.geometry
    bright = smooth_in_mask(prepared.normalised, prepared.brain, g.spacing_mm, cfg.localisation.smooth_mm)
    unit = float(np.quantile(bright[prepared.brain], 0.75))
    assert unit > pipeline.BRIGHTNESS_SCALE_FLOOR
    np.testing.assert_allclose(
        pipeline.weighted_map(prepared, density, scaled),
        pipeline.weighted_map(prepared, density, plain) / unit,
        rtol=1e-5,
        atol=1e-7,
    )


def test_brightness_scale_by_hand():
    bright = np.array([[[-1.0, 0.2, 0.4, 0.6, 0.8, 5.0]]])
    brain = np.array([[[True, True, True, True, True, False]]])
    # brain values -1, 0.2, 0.4, 0.6, 0.8: the 0.75 quantile (linear) is 0.6; outside the brain ignored
    assert pipeline.brightness_scale(bright, brain, 0.75) == np.float64(0.6).item()
    assert pipeline.brightness_scale(bright, brain, None) == 1.0
    assert pipeline.brightness_scale(bright, brain, 0.25) == pytest.approx(0.2)
    assert pipeline.brightness_scale(bright, brain, 0.1) == pipeline.BRIGHTNESS_SCALE_FLOOR  # -0.52 -> floor
    assert pipeline.brightness_scale(bright * 0 - 3, brain, 0.75) == pipeline.BRIGHTNESS_SCALE_FLOOR
    assert pipeline.brightness_scale(bright, np.zeros_like(brain), 0.75) == 1.0


def test_a_site_with_twice_the_contrast_gets_the_same_brightness_factor():
    """max(I_s, 0) / scale does not change when every normalised intensity is multiplied by c > 0 (a site
    whose cortex sits c times further above white matter), and is what the unscaled factor is at c = 1
    divided by the scan's quantile."""
    rng = np.random.default_rng(0)
    bright = rng.normal(0.3, 0.5, (4, 8, 8))
    brain = rng.random((4, 8, 8)) > 0.2
    factor = [
        np.maximum(c * bright, 0) / pipeline.brightness_scale(c * bright, brain, 0.75) for c in (1.0, 2.5)
    ]
    np.testing.assert_allclose(factor[0], factor[1], rtol=1e-12)
