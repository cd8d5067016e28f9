"""What the anomaly map says, on generated scans (no real anatomy needed).

- a FLAIR model scores a bright blob above a dark one (FLAIR pathology is hyperintense);
- the map is smoothed by a Gaussian of ``smooth_mm`` on the model grid, and the slices a preset skips are
  linear interpolations of their scored neighbours;
- a hot location on the model grid comes back at the right physical place for every storage orientation,
  flip and preset;
- the bundled model finds the demo phantom's lesion, and ``anodode demo`` fails when it does not.
These assert behaviour, not today's numbers: the bundled model may be retrained.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from synthetic import flair_like, orientations, physical_point, scan

from AnoDODELib import cli, demo
from AnoDODELib.bundle import load_model
from AnoDODELib.pipeline import (
    PRESETS,
    LocationScores,
    canonical_map,
    maps_from_scores,
    prepare_volume,
    score_image,
    score_prepared,
    scored_slices,
)

BRIGHT, DARK = (-28.0, -20.0, 10.0), (28.0, -20.0, 10.0)  # mirror-symmetric about the mid-sagittal plane


@pytest.fixture(scope="module")
def bundled():
    return load_model(None)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(tiny_model_dir)


def unit_residual_scores(
    n: int, channels: int, hot: int | torch.Tensor, value: float = 1.0
) -> LocationScores:
    """Scores whose reconstruction map is ``value``**2 at the ``hot`` location(s) and 0 elsewhere (the
    default localisation: sum of squared positive residuals)."""
    residual = torch.zeros(n, channels)
    residual[hot, 0] = value
    return LocationScores(torch.zeros(n), residual, 1, 1)


# ----------------------------------------------------------------------------- bright vs dark


def test_bright_blob_scores_higher_than_a_dark_one(bundled):
    fn = flair_like([(BRIGHT, 9.0, 190.0), (DARK, 9.0, 10.0)])
    image = scan(fn, np.diag([-1.0, -1.0, 1.0]), (2.0, 2.0, 4.0))
    res = score_image(image, bundled, device="cpu", preset="standard")
    amap = sitk.GetImageFromArray(res.anomaly_map)
    amap.CopyInformation(image)

    def mean_in(centre) -> float:
        sphere = scan(
            lambda x, y, z: (
                (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 < 6.0**2
            ).astype(np.float32),
            np.diag([-1.0, -1.0, 1.0]),
            (2.0, 2.0, 4.0),
        )
        return float(res.anomaly_map[sitk.GetArrayFromImage(sphere) > 0].mean())

    bright, dark = mean_in(BRIGHT), mean_in(DARK)
    assert bright > 0 and bright > 5 * dark, (bright, dark)
    peak = np.unravel_index(int(np.argmax(res.anomaly_map)), res.anomaly_map.shape)
    assert np.linalg.norm(physical_point(image, peak) - BRIGHT) < 12.0, physical_point(image, peak)


@pytest.mark.parametrize("method", ["combined", "reconstruction"])
def test_the_density_alone_scores_the_bright_blob_higher(bundled, method):
    """The density map without the intensity weighting (what ``slice_scores`` ranks by; "reconstruction" is
    the paper's localisation) must itself read FLAIR pathology as hyperintense: the bright blob above the dark
    one, so that the shipped map's bright reading does not rest on the intensity factor alone."""
    fn = flair_like([(BRIGHT, 9.0, 190.0), (DARK, 9.0, 10.0)])
    image = scan(fn, np.diag([-1.0, -1.0, 1.0]), (2.0, 2.0, 4.0))
    prepared = prepare_volume(image, bundled.config)
    scores, scored = score_prepared(bundled, prepared, "standard")
    loc = dataclasses.replace(bundled.config.localisation, method=method, intensity_product=False)
    density = maps_from_scores(prepared, scores, bundled, loc, scored)

    def mean_in(centre) -> float:
        sphere = scan(
            lambda x, y, z: (
                (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 < 6.0**2
            ).astype(np.float32),
            np.diag([-1.0, -1.0, 1.0]),
            (2.0, 2.0, 4.0),
        )
        return float(density[sitk.GetArrayFromImage(sphere) > 0].mean())

    bright, dark = mean_in(BRIGHT), mean_in(DARK)
    assert bright > 0 and bright > 5 * dark, (bright, dark)


# ----------------------------------------------------------------------------- smoothing, interpolation


@pytest.fixture(scope="module")
def grid_aligned(tiny):
    """A scan whose in-plane spacing is the model grid's (2 mm): the map needs no in-plane resampling, so
    each model-grid pixel is one input voxel. Axial LPS storage, 2 mm slices."""
    image = scan(flair_like(), np.eye(3), (2.0, 2.0, 2.0))
    prepared = prepare_volume(image, tiny.config)
    assert prepared.grid_mask.shape == prepared.brain.shape
    return prepared


def centre_location(prepared) -> tuple[int, tuple[int, int, int]]:
    """Index among the brain locations of the model-grid location at the brain's centre, and its (s, r, c)."""
    s, r, c = (n // 2 for n in prepared.grid_mask.shape)
    assert bool(prepared.grid_mask[s, r, c])
    order = torch.zeros(prepared.grid_mask.shape, dtype=torch.long)
    order[prepared.grid_mask] = torch.arange(int(prepared.grid_mask.sum()))
    return int(order[s, r, c]), (s, r, c)


@pytest.mark.parametrize("smooth_mm", [0.0, 2.0, 4.0])
def test_map_is_smoothed_by_a_gaussian_of_smooth_mm(grid_aligned, tiny, smooth_mm):
    p = grid_aligned
    n, (s, r, c) = int(p.grid_mask.sum()), centre_location(grid_aligned)[1]
    hot = centre_location(grid_aligned)[0]
    loc = dataclasses.replace(tiny.config.localisation, smooth_mm=smooth_mm)
    canon = canonical_map(p, unit_residual_scores(n, 3, hot), tiny, loc)
    sl = canon[s]
    assert np.count_nonzero(canon[np.arange(canon.shape[0]) != s]) == 0  # in-plane only: no slice mixing
    if smooth_mm == 0:
        assert sl[r, c] == 1.0 and np.count_nonzero(sl) == 1
        return
    sigma_px = smooth_mm / p.spacing_mm
    # a separable Gaussian of sigma_px pixels: neighbour ratios exp(-d^2 / (2 sigma^2)), unit mass
    for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (2, 0)):
        expected = math.exp(-(dr * dr + dc * dc) / (2 * sigma_px**2))
        assert sl[r + dr, c + dc] / sl[r, c] == pytest.approx(expected, rel=1e-4), (dr, dc)
    assert sl.sum() == pytest.approx(1.0, abs=2e-3)
    assert np.argmax(sl) == np.ravel_multi_index((r, c), sl.shape)


def test_skipped_slices_are_linear_interpolations_of_scored_neighbours(tiny):
    image = scan(flair_like(), np.eye(3), (2.0, 2.0, 1.0))  # 1 mm slices: standard scores every second
    p = prepare_volume(image, tiny.config)
    keep = scored_slices(p.grid_mask, p.geometry.spacing_mm[0], PRESETS["standard"].slice_spacing_mm)
    kept = torch.nonzero(keep).flatten()
    assert int(kept[1] - kept[0]) == 2 and not bool(keep.all())
    where = p.grid_mask & keep[:, None, None]
    # the residual of a scored slice s is sqrt(s + 1): the (unsmoothed) map is s + 1 on it
    slice_of = torch.nonzero(where)[:, 0].float()
    scores = LocationScores(torch.zeros(len(slice_of)), torch.zeros(len(slice_of), 3), 1, 1)
    scores.residual[:, 0] = torch.sqrt(slice_of + 1.0)
    loc = dataclasses.replace(tiny.config.localisation, smooth_mm=0.0)
    canon = canonical_map(p, scores, tiny, loc, scored=keep)
    brain = p.brain
    checked = 0
    for s in range(int(kept[0]) + 1, int(kept[-1])):
        if bool(keep[s]):
            continue
        inside = brain[s] & brain[s - 1] & brain[s + 1] & p.grid_mask[s].numpy()
        if not inside.any():
            continue
        # neighbours s-1 and s+1 are scored: the skipped slice holds their mean, (s + (s + 2)) / 2 = s + 1
        np.testing.assert_allclose(canon[s][inside], s + 1.0, rtol=1e-5)
        np.testing.assert_allclose(canon[s - 1][inside], s, rtol=1e-5)
        checked += 1
    assert checked >= 10


# ----------------------------------------------------------------------------- geometry round trip

HOT = (-25.0, 30.0, 12.0)  # left, posterior, superior of the centre: every mirror moves it >= 24 mm


@pytest.fixture(scope="module")
def stored_scans():
    base = flair_like()

    def fn(x, y, z):  # a smooth peak (sigma 2.5 mm, below the z-score clip) at HOT: one brightest location
        d2 = (x - HOT[0]) ** 2 + (y - HOT[1]) ** 2 + (z - HOT[2]) ** 2
        return np.where(base(x, y, z) > 0, base(x, y, z) + 15.0 * np.exp(-d2 / (2 * 2.5**2)), 0.0)

    return {name: scan(fn, d, (1.5, 2.5, 3.0)) for name, d in orientations()}


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("orientation", [name for name, _ in orientations()])
def test_hot_grid_location_comes_back_at_its_physical_place(stored_scans, tiny, orientation, preset):
    image = stored_scans[orientation]
    p = prepare_volume(image, tiny.config)
    keep = scored_slices(p.grid_mask, p.geometry.spacing_mm[0], PRESETS[preset].slice_spacing_mm)
    where = p.grid_mask & keep[:, None, None]
    feats, _ = p.locations(where)
    hot = int(torch.argmax(feats[:, 0]))  # the scored model-grid location of the bright blob
    n = feats.shape[0]
    amap = maps_from_scores(p, unit_residual_scores(n, feats.shape[1], hot), tiny, scored=keep)
    assert amap.shape == sitk.GetArrayFromImage(image).shape
    peak = np.unravel_index(int(np.argmax(amap)), amap.shape)
    error = physical_point(image, peak) - np.array(HOT)
    # along S within the scored-slice step; in-plane within a model-grid pixel (2 mm) plus an input voxel
    step = p.geometry.spacing_mm[0] * max(
        1, math.floor(PRESETS[preset].slice_spacing_mm / p.geometry.spacing_mm[0] + 1e-6)
    )
    assert abs(error[2]) <= step + 1e-3, (orientation, preset, error)
    assert np.hypot(error[0], error[1]) <= 2.0 + max(p.geometry.spacing_mm[1:]), (orientation, preset, error)


# ----------------------------------------------------------------------------- the bundled model, the demo


def test_bundled_model_finds_the_demo_phantom_lesion(bundled):
    ph = demo.make_phantom()
    res = score_image(ph.image, bundled, device="cpu")
    found = demo.lesion_found(res.anomaly_map, res.label.astype(bool), sitk.GetArrayFromImage(ph.lesion) > 0)
    assert found.peak_inside, found
    assert found.best_dice >= demo.MIN_BEST_DICE, found


def test_demo_fails_when_the_map_misses_the_lesion(tmp_path, monkeypatch, capsys):
    real = demo.make_phantom

    def moved_lesion(*args, **kwargs):  # the truth mask mirrored left-right: the map's peak is not in it
        ph = real(*args, **kwargs)
        lesion = sitk.GetImageFromArray(sitk.GetArrayFromImage(ph.lesion)[:, :, ::-1].copy())
        lesion.CopyInformation(ph.lesion)
        return dataclasses.replace(ph, lesion=lesion)

    monkeypatch.setattr(demo, "make_phantom", moved_lesion)
    code = cli.main(["demo", "--output-dir", str(tmp_path / "demo"), "--quiet", "--preset", "fast"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "missed" in err and err.count("anodode: error:") == 1


def test_quiet_demo_says_where_its_files_went_in_one_unit(tmp_path, capsys):
    """``anodode demo --quiet`` prints where the map, label, figure and report went (it did not), and gives
    the lesion's centre and the map's peak both as physical (LPS) positions in mm (the peak was in voxels);
    the peak it prints is the map's maximum, inside the lesion."""
    import re

    out = tmp_path / "demo"
    assert cli.main(["demo", "--output-dir", str(out), "--quiet", "--preset", "fast"]) == 0
    lines = capsys.readouterr().out.splitlines()
    written = {k: out / f"phantom_flair_{k}{s}" for k, s in [("anomaly", ".nii.gz"), ("label", ".nii.gz")]}
    written |= {"figure": out / "phantom_flair_figure.png", "report": out / "phantom_flair_report.json"}
    assert lines[-1] == (
        f"map {written['anomaly']}, label {written['label']}, figure {written['figure']}, "
        f"report {written['report']}"
    )
    assert all(p.is_file() for p in written.values())
    point = r"\((-?\d+\.\d), (-?\d+\.\d), (-?\d+\.\d)\) \(LPS, mm\)"
    centre = [float(v) for v in re.search(f"lesion centred at {point}", lines[0]).groups()]
    peak = [float(v) for v in re.search(f"peak anomaly at {point}: inside", lines[1]).groups()]
    assert np.allclose(centre, demo.make_phantom().lesion_centre_mm, atol=0.051)
    amap = sitk.ReadImage(str(written["anomaly"]))
    index = np.unravel_index(int(np.argmax(sitk.GetArrayFromImage(amap))), amap.GetSize()[::-1])[::-1]
    assert np.allclose(peak, amap.TransformIndexToPhysicalPoint([int(i) for i in index]), atol=0.051)
    assert np.linalg.norm(np.subtract(peak, centre)) < 12.0  # inside the 12 mm lesion
