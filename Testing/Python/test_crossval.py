"""The evaluation harness on tiny generated cases: no held-out case leaks into its fold's training, and the
baselines' sign, voxel set and pooling are right on cases whose brain mask is not the whole image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from synthetic import loaded_case

from AnoDODELib.bundle import load_model
from training import crossval, evaluate, metrics, train
from training.baselines import GaussianBaseline, position_columns

SMALL = dict(spacing=(2.0, 2.0, 4.0), axes=(30.0, 36.0, 22.0), extent_mm=(72.0, 84.0, 52.0), radius_mm=6.0)
LESIONS = [(-12.0, 8.0, 4.0), (10.0, -12.0, -4.0), (-6.0, -10.0, 6.0), (12.0, 10.0, 0.0)]


@pytest.fixture(scope="module")
def cfg():
    return train.model_config(hidden=8)


@pytest.fixture(scope="module")
def cases(cfg):
    """Four small cases (brain 60 x 72 x 44 mm in a larger field of view), each with its own lesion and
    texture, so that every case's feature vectors differ."""
    return [loaded_case(f"case{k}", cfg, lesion=c, phase=0.7 * k, **SMALL) for k, c in enumerate(LESIONS)]


@pytest.fixture(scope="module")
def cv(cases, cfg):
    tc = train.TrainConfig(steps=10, batch_size=64, calibration_cases=1)
    rows, folds = crossval.cross_validate(cases, cfg, tc, n_folds=2, preset="fast")
    return tc, rows, folds


def test_fold_indices():
    assert crossval.fold_indices(5, 2) == [[0, 2, 4], [1, 3]]
    assert crossval.fold_indices(3) == [[0], [1], [2]]
    for bad in (1, 6):
        with pytest.raises(ValueError, match="folds"):
            crossval.fold_indices(5, bad)


def test_no_held_out_case_reaches_its_fold_training(cv, cases):
    tc, rows, folds = cv
    names = [lc.case.name for lc in cases]
    assert sorted(i for f in folds for i in f.held) == list(range(len(cases)))  # every case held out once
    for f in folds:
        held = {names[i] for i in f.held}
        train_set = [lc for lc in cases if lc.case.name not in held]
        assert held.isdisjoint(f.trained) and set(f.trained) | held == set(names)
        assert [c["name"] for c in f.model.metadata["training"]["cases"]] == [
            lc.case.name for lc in train_set
        ]
        # the standardiser is the mean/std of the normal vectors of the training cases, computed here
        feats, ctx = train.normal_vectors(train_set, f.model.config, tc)
        torch.testing.assert_close(f.model.standardiser.mean, feats.mean(0))
        torch.testing.assert_close(f.model.standardiser.std, feats.std(0).clamp_min(1e-6))
        # the Gaussian baseline is fitted on the same vectors
        with torch.no_grad():
            ref = GaussianBaseline.fit(
                f.model.standardiser(feats).numpy(),
                ctx.numpy(),
                positions=position_columns(f.model.config.features),
            )
        np.testing.assert_allclose(f.gaussian.mean, ref.mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(f.gaussian.precision, ref.precision, rtol=1e-4, atol=1e-4)
        # the threshold is calibrated on the first calibration case(s) of the training cases
        expected = train.calibrate(
            f.model, train_set[: tc.calibration_cases], tc.calibration_quantile, torch.device("cpu")
        )
        assert f.model.config.calibration.threshold == pytest.approx(expected.threshold, rel=1e-6)
        # only the held-out cases are scored in the fold
        assert {r["case"] for r in rows if r["fold"] == f.index} == held


def test_every_case_is_scored_once_per_method_and_pooled(cv, cases):
    _, rows, _ = cv
    per_case = [r for r in rows if r["case"] != "POOLED"]
    methods = {r["method"] for r in per_case}
    assert {"anodode", "flair_zscore", "flair_zscore_smoothed", "gaussian", "slice_bpd"} <= methods
    for m in methods:
        assert sorted(r["case"] for r in per_case if r["method"] == m) == sorted(lc.case.name for lc in cases)
    assert {r["method"] for r in rows if r["case"] == "POOLED"} == methods


def test_zscore_baselines_rank_a_bright_lesion_first(cases, tiny_model_dir):
    """The lesion is the brightest tissue: the FLAIR z-score (larger = more anomalous) separates it
    perfectly over the brain voxels; the smoothed one nearly so."""
    model = load_model(tiny_model_dir)
    lc = cases[0]
    assert (~lc.prepared.brain).sum() > lc.prepared.brain.sum() / 2  # much of the image is not brain
    res, out = evaluate.evaluate_loaded(model, lc, preset="fast")
    assert res["flair_zscore"]["voxel_auroc"] == 1.0 and res["flair_zscore"]["best_dice"] == pytest.approx(
        1.0
    )
    assert res["flair_zscore_smoothed"]["voxel_auroc"] > 0.95
    for name in ("flair_zscore", "flair_zscore_smoothed"):
        m = out["baseline_maps"][name]
        assert np.isneginf(m[~lc.prepared.brain]).all() and np.isfinite(m[lc.prepared.brain]).all()


def test_voxel_metrics_are_over_brain_voxels_only():
    # 1-D "case": brain = first 6 voxels; the lesion (2 voxels) scores highest inside the brain, but two
    # voxels outside the brain score even higher
    score = np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.4, 5.0, 5.0, 0.0, 0.0])
    truth = np.array([0, 0, 0, 1, 1, 0, 0, 0, 0, 0], bool)
    brain = np.arange(10) < 6
    r = evaluate.voxel_metrics(score, truth, brain, threshold=0.5)
    assert r["voxel_auroc"] == 1.0 and r["voxel_auprc"] == 1.0 and r["best_dice"] == 1.0
    assert r["dice_at_threshold"] == 1.0
    # over all voxels the outside pair would rank first: AUROC 1 - 2*2/(2*8) = 0.75
    assert metrics.auroc(score, truth) == pytest.approx(0.75)


def test_pooled_metrics_concatenate_the_brain_voxels_of_all_cases(cases):
    """``pooled`` (cross-validation) and ``merge`` (evaluate) on known maps of two cases: their metrics
    are those of the concatenated brain-voxel scores, computed here."""
    a, b = cases[0], cases[1]
    rng = np.random.default_rng(0)
    maps = []
    for lc in (a, b):
        truth = lc.tumour & lc.prepared.brain
        noisy = rng.normal(size=truth.shape).astype(np.float32) + 1.5 * truth
        maps.append(
            {
                "flair_zscore": np.where(lc.prepared.brain, noisy, -np.inf).astype(np.float32),
                "anodode": np.where(lc.prepared.brain, -noisy, 0.0).astype(np.float32),
            }
        )
    pool = evaluate.pooled(maps, [a, b])
    t = np.concatenate([(lc.tumour & lc.prepared.brain)[lc.prepared.brain] for lc in (a, b)])
    for name in ("flair_zscore", "anodode"):
        s = np.concatenate([m[name][lc.prepared.brain] for m, lc in zip(maps, (a, b))])
        assert pool[name]["voxel_auroc"] == pytest.approx(metrics.auroc(s, t), abs=1e-12)
        assert pool[name]["voxel_auprc"] == pytest.approx(metrics.auprc(s, t), abs=1e-12)
    assert pool["flair_zscore"]["voxel_auroc"] > 0.8 > 0.2 > pool["anodode"]["voxel_auroc"]


def test_evaluate_pools_the_saved_brain_voxel_scores(cases, tiny_model_dir, tmp_path):
    """``training.evaluate``'s pooled rows (``score_cases`` then ``merge``) against the z-score baselines
    recomputed here from the cases' normalised intensities."""
    from training.baselines import flair_zscore_map

    model = load_model(tiny_model_dir)
    a, b = cases[0], cases[1]
    evaluate.score_cases(
        model,
        [a, b],
        tmp_path / "voxels",
        tmp_path / "montages",
        None,
        "fast",
        None,
        "cpu",
        0,
        progress=False,
    )
    pooled_vox, pooled_slice, _ = evaluate.merge(tmp_path / "voxels", ["case0", "case1"])
    t = np.concatenate([(lc.tumour & lc.prepared.brain)[lc.prepared.brain] for lc in (a, b)])
    s = np.concatenate(
        [flair_zscore_map(lc.prepared.normalised, lc.prepared.brain)[lc.prepared.brain] for lc in (a, b)]
    )
    assert pooled_vox["flair_zscore"]["voxel_auroc"] == pytest.approx(metrics.auroc(s, t), abs=1e-12) == 1.0
    assert pooled_vox["flair_zscore"]["best_dice"] == pytest.approx(metrics.best_dice(s, t)[0], abs=1e-9)
    assert pooled_slice["flair_zscore"]["slice_auroc"] > 0.9
