"""The intensity-weighted map (LocalisationConfig.intensity_product) against its definition, computed by hand."""
import dataclasses

import numpy as np
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
    density = pipeline.maps_from_scores(prepared, scores, model)                 # input layout
    prod_cfg = dataclasses.replace(cfg.localisation, intensity_product=True)
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
