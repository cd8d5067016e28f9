"""Calibration and training data against hand-computed values, on generated cases with a known lesion.

- normal tissue (training vectors and calibration voxels) never includes the lesion or its margin;
- the threshold is the stated quantile of the normal-tissue map values of the calibration cases only;
- ``training.train`` reproduces the shipped bundle's recorded training settings;
- ``training.evaluate`` warns when it scores a case the model was trained on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from synthetic import loaded_case

from AnoDODELib.bundle import default_model_dir, load_model
from AnoDODELib.pipeline import LocationScores
from training import train
from training.cases import Case

LESION = (-20.0, 10.0, 12.0)
LESION_RADIUS = 10.0


def synthetic_case(name: str, spacing: tuple[float, float, float], cfg, lesion=LESION) -> train.LoadedCase:
    return loaded_case(name, cfg, spacing, lesion, LESION_RADIUS)


@pytest.fixture(scope="module")
def cfg(tiny_model_dir):
    return load_model(tiny_model_dir).config


@pytest.fixture(scope="module", params=[(2.0, 2.0, 3.0), (1.0, 1.0, 2.0)], ids=["grid-2mm", "input-1mm"])
def case(request, cfg):
    return synthetic_case("c0", request.param, cfg)


def distance_to_lesion(mask: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Euclidean distance (mm) of every voxel to the nearest lesion voxel (canonical arrays)."""
    return ndimage.distance_transform_edt(~mask, sampling=spacing)


# ----------------------------------------------------------------------------- normal tissue


def test_normal_voxels_exclude_the_lesion_and_its_margin(case):
    p, margin = case.prepared, 6.0
    dist = distance_to_lesion(case.tumour, p.geometry.spacing_mm)
    assert case.tumour.sum() > 100
    assert not (case.healthy_full & (dist <= margin)).any()  # lesion and its 6 mm margin
    assert not (case.healthy_full & ~p.brain).any()
    far = p.brain & (dist > 3 * margin)  # everything far away is kept
    assert case.healthy_full[far].all()


def test_normal_grid_locations_exclude_the_lesion_and_its_margin(case):
    p = case.prepared
    g = p.grid_mask.numpy()
    lesion_grid = case.prepared.to_grid(case.tumour.astype(np.float32), order=1).numpy() > 0.0
    dist = distance_to_lesion(lesion_grid, (p.geometry.spacing_mm[0], p.spacing_mm, p.spacing_mm))
    healthy = case.healthy_grid.numpy()
    assert not (healthy & (dist <= 6.0)).any() and not (healthy & ~g).any()
    assert healthy[g & (dist > 18.0)].all()


def test_training_vectors_hold_no_lesion(case):
    p = case.prepared
    feats, ctx = train.training_vectors([case], 10**9, torch.Generator().manual_seed(0))
    assert feats.shape[0] == int(case.healthy_grid.sum()) == ctx.shape[0]
    intensity = p.features[:, 0].numpy()  # channel 0: the z-scored intensity on the grid
    lesion_grid = p.to_grid(case.tumour.astype(np.float32), order=1).numpy()
    dist = distance_to_lesion(lesion_grid > 0.0, (p.geometry.spacing_mm[0], p.spacing_mm, p.spacing_mm))
    normal_max = float(intensity[p.grid_mask.numpy() & (dist > 6.0)].max())
    assert float(np.median(intensity[lesion_grid > 0.99])) > normal_max + 1.0  # the lesion stands out
    assert float(feats[:, 0].max()) <= normal_max + 1e-6
    sub, _ = train.training_vectors([case], 500, torch.Generator().manual_seed(0))
    assert sub.shape[0] == 500 and float(sub[:, 0].max()) <= normal_max + 1e-6


# ----------------------------------------------------------------------------- calibration


@pytest.fixture()
def known_maps(monkeypatch):
    """Replace the scoring inside ``train.calibrate`` by maps given per case (canonical arrays)."""
    maps: dict[str, np.ndarray] = {}

    def fake_score_prepared(model, prepared, preset, device="cpu"):
        n = int(prepared.grid_mask.sum())
        return LocationScores(torch.zeros(n), torch.zeros(n, 3), 1, 1), torch.ones(
            prepared.grid_mask.shape[0], dtype=torch.bool
        )

    def fake_maps(prepared, scores, model, localisation=None, scored=None):
        return maps[id(prepared)]

    monkeypatch.setattr(train, "score_prepared", fake_score_prepared)
    monkeypatch.setattr(train, "canonical_map", fake_maps)
    return maps


def test_threshold_is_the_quantile_of_normal_tissue_of_the_calibration_cases(cfg, known_maps, tiny_model_dir):
    a = synthetic_case("a", (2.0, 2.0, 3.0), cfg)
    b = synthetic_case("b", (2.0, 2.0, 3.0), cfg, lesion=(25.0, -20.0, -5.0))
    # map values: 1, 2, ..., n over the normal voxels of a then b (in C order), 1000 on all other voxels
    na, nb = int(a.healthy_full.sum()), int(b.healthy_full.sum())
    for lc, values in ((a, np.arange(1, na + 1)), (b, np.arange(na + 1, na + nb + 1))):
        m = np.full(lc.prepared.brain.shape, 1000.0, np.float32)
        m[lc.healthy_full] = values
        known_maps[id(lc.prepared)] = m
    model = load_model(tiny_model_dir)
    for q in (0.995, 0.9, 0.5):
        cal = train.calibrate(model, [a, b], q, torch.device("cpu"))
        # np.quantile's linear rule on 1..n: 1 + q (n - 1)
        assert cal.threshold == pytest.approx(1 + q * (na + nb - 1), rel=1e-6), q
        assert cal.quantile == q
    only_a = train.calibrate(model, [a], 0.995, torch.device("cpu"))
    assert only_a.threshold == pytest.approx(1 + 0.995 * (na - 1), rel=1e-6)


def test_training_calibrates_on_its_first_calibration_cases(cfg, monkeypatch):
    cases = [synthetic_case(n, (2.0, 2.0, 3.0), cfg) for n in ("a", "b", "c")]
    seen = []

    def fake_calibrate(model, loaded, quantile, device):
        seen.append(([lc.case.name for lc in loaded], quantile))
        return model.config.calibration

    monkeypatch.setattr(train, "calibrate", fake_calibrate)
    tc = train.TrainConfig(steps=10, batch_size=64, calibration_cases=2, calibration_quantile=0.99)
    model = train.train_loaded(cases, cfg, tc, progress=False)  # the config the cases were prepared with
    assert seen == [(["a", "b"], 0.99)]
    assert [c["name"] for c in model.metadata["training"]["cases"]] == ["a", "b", "c"]
    assert model.metadata["training"]["train_config"]["calibration_cases"] == 2


# ----------------------------------------------------------------------------- the shipped bundle


def test_training_defaults_reproduce_the_shipped_bundle():
    """``python -m training.train`` with its defaults records the settings the shipped bundle was trained with
    (so the README's training command rebuilds it)."""
    meta = json.loads((default_model_dir() / "model.json").read_text(encoding="utf-8"))["training"]
    recorded = meta["train_config"]
    defaults = json.loads(json.dumps(dataclasses.asdict(train.TrainConfig())))  # as model.json stores it
    for key, value in recorded.items():
        assert defaults.get(key) == value, (key, value, defaults.get(key))
    from AnoDODELib.bundle import migrate
    from AnoDODELib.config import ModelConfig, from_dict

    stored = migrate(
        json.loads((default_model_dir() / "model.json").read_text(encoding="utf-8"))
    )  # any bundle format
    cfg = from_dict(ModelConfig, stored["config"], "config")
    rebuilt = train.model_config(tuple(cfg.features.contrasts))
    for section in ("preprocess", "features", "sde", "score_net", "localisation"):
        assert getattr(rebuilt, section) == getattr(cfg, section), section


def test_evaluate_warns_on_a_case_the_model_was_trained_on(cfg, tiny_model_dir, caplog):
    from training import evaluate

    model = load_model(tiny_model_dir)
    model.metadata["training"] = {"cases": [{"name": "a"}, {"name": "b"}]}
    cases = [Case(n, "synthetic", Path(f"{n}.nii.gz"), None) for n in ("a", "x")]
    with caplog.at_level(logging.WARNING, logger="training.evaluate"):
        seen = evaluate.trained_on(model, cases)
    assert seen == ["a"]
    assert any("a" in r.getMessage() and "trained on" in r.getMessage() for r in caplog.records)
    model.metadata.pop("training")
    assert evaluate.trained_on(model, cases) == []
