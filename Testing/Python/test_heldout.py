"""The three-group held-out evaluation (training/heldout.py): no scored case is trained on, metrics and tables
against hand-computed values."""

import json

import numpy as np
import pytest

from training import heldout
from training.cases import Case


def _cases(prefix: str, n: int) -> list[Case]:
    return [Case(f"{prefix}{i}", prefix, None, None) for i in range(n)]  # type: ignore[arg-type]


@pytest.mark.parametrize("train_wmh", [True, False])
def test_plan_never_trains_on_a_scored_case_and_scores_every_case_once(train_wmh):
    brats, wmh, isles = _cases("b", 8), _cases("w", 3), _cases("i", 1)
    runs = heldout.plan(brats, wmh, isles, 4, train_wmh)
    scored = [n for _, targets in runs for _, n in targets]
    assert not any(g == "raw" for _, t in runs for g, _ in t)  # no raw cases given: no raw group
    assert sorted(scored) == sorted(c.name for c in brats + wmh + isles)
    for train, targets in runs:
        assert not set(train) & {n for _, n in targets}
        assert not any(n.startswith("i") for n in train)  # ISLES is never trained on
        assert any(n.startswith("w") for n in train) == train_wmh
    groups = {n: g for _, targets in runs for g, n in targets}
    assert all(groups[c.name] == "brats" for c in brats) and all(groups[c.name] == "wmh" for c in wmh)
    assert len(runs) == (4 + 3 + 1 if train_wmh else 4 + 1)
    assert [n for _, n in runs[1][1]] == ["b1", "b5"]  # fold k scores cases k, k + folds


def test_raw_cases_are_scored_by_the_model_that_saw_no_raw_scan():
    brats, wmh, isles, raw = _cases("b", 8), _cases("w", 3), _cases("i", 1), _cases("r", 2)
    runs = heldout.plan(brats, wmh, isles, 4, True, raw)
    raw_runs = [(train, targets) for train, targets in runs if any(g == "raw" for g, _ in targets)]
    assert len(raw_runs) == 1
    train, targets = raw_runs[0]
    assert sorted(n for g, n in targets if g == "raw") == ["r0", "r1"]
    assert not any(n.startswith("r") for t, _ in runs for n in t)  # no raw case is trained on
    assert sorted(train) == sorted(c.name for c in brats + wmh)  # the model trained on every training case


def _case_scores(name, truth, anodode, z, slices_truth, thr):
    truth = np.asarray(truth, bool)
    vox = {
        "anodode": np.asarray(anodode, float),
        "gaussian": np.asarray(z, float),
        "flair_zscore": np.asarray(z, float),
        "flair_zscore_smoothed": np.asarray(z, float),
    }
    sl = {k: np.array([v.max(), v.min()]) for k, v in vox.items()}
    q99 = {k: np.array([v.min(), v.max()]) for k, v in vox.items()}
    return heldout.CaseScores(
        name, "g", truth, vox, sl, q99, np.asarray(slices_truth, bool), {"anodode": thr}
    )


def test_case_metrics_pool_voxels_and_slices_and_use_each_case_threshold():
    a = _case_scores("a", [1, 1, 0, 0], [0.9, 0.8, 0.1, 0.2], [0.1, 0.9, 0.8, 0.2], [True, False], 0.5)
    b = _case_scores("b", [0, 1], [0.3, 0.7], [0.3, 0.2], [False, True], 0.25)
    m = heldout.case_metrics([a, b])
    # AnoDODE ranks all three lesion voxels above every normal one: AUPRC 1, best Dice 1
    assert m["anodode"]["voxel_auprc"] == pytest.approx(1.0) and m["anodode"]["best_dice"] == pytest.approx(
        1.0
    )
    # calibrated labels: a > 0.5 -> [1, 1, 0, 0]; b > 0.25 -> [1, 1]; TP 3, FP 1, FN 0 -> Dice 6 / 7
    assert m["anodode"]["dice_at_threshold"] == pytest.approx(6 / 7)
    assert "dice_at_threshold" not in m["flair_zscore"]
    # slices pooled over cases: a gives 0.9 (lesion), 0.1 (none); b gives 0.7 (none), 0.3 (lesion).
    # Positive-negative pairs: 0.9 > 0.1, 0.9 > 0.7, 0.3 > 0.1, 0.3 < 0.7 -> AUROC 3 / 4
    assert m["anodode"]["slice_auroc"] == pytest.approx(0.75)
    # the 99th-percentile ranking (here min, max): lesion slices 0.1 and 0.7 against 0.9 and 0.3 -> 1 / 4
    assert m["anodode"]["slice_auroc_q99"] == pytest.approx(0.25)


def test_markdown_and_json_are_strict(tmp_path):
    a = _case_scores("a", [1, 0], [0.9, 0.1], [0.2, 0.8], [True, False], 0.5)
    res = {
        "groups": {"brats": {"cases": {"a": heldout.case_metrics([a])}, "pooled": heldout.case_metrics([a])}}
    }
    md = heldout.markdown(res)
    assert "| a | 1.000 / 0.500 / 0.500 |" in md
    assert "| brats | gaussian |" in md
    s = json.dumps(heldout._finite({"x": float("nan"), "y": [1.0, float("inf")]}), allow_nan=False)
    assert json.loads(s) == {"x": None, "y": [1.0, None]}


def test_paired_comparison_by_hand():
    """Differences +0.1, -0.05, +0.2 on three cases: mean 0.0833, 2 wins of 3, interval inside [min, max]."""
    cases = {
        n: {"anodode": {"voxel_auprc": a}, "flair_zscore_smoothed": {"voxel_auprc": z}}
        for n, a, z in (("a", 0.6, 0.5), ("b", 0.45, 0.5), ("c", 0.9, 0.7))
    }
    r = heldout.paired({"groups": {"wmh": {"cases": cases}}}, "wmh", "voxel_auprc")
    assert r["mean"] == pytest.approx(0.25 / 3) and r["wins"] == 2 and r["n"] == 3
    assert -0.05 - 1e-12 <= r["low"] <= r["mean"] <= r["high"] <= 0.2 + 1e-12


def test_the_gaussian_ablation_counts_locations_brighter_than_their_cells_mean():
    """The per-position Gaussian counts a location where its finest channel is brighter than its position
    cell's normal mean, as AnoDODE counts brighter-than-reconstructed: with every cell's mean above every
    location the map is 0; with the means below, it equals the map counting every location. Compared with 0
    instead, most locations would count in both."""
    import torch
    from synthetic import loaded_case

    from AnoDODELib.anomaly_map import scatter_to_grid, smooth_on_grid
    from AnoDODELib.bundle import AnoDODEModel
    from AnoDODELib.pipeline import weighted_map
    from training import train
    from training.baselines import GaussianBaseline
    from training.heldout import gaussian_map

    cfg = train.model_config(hidden=8)
    lc = loaded_case("c", cfg, spacing=(2.0, 2.0, 4.0), axes=(30.0, 36.0, 22.0), extent_mm=(72.0, 84.0, 52.0))
    model = AnoDODEModel(cfg)
    feats, _ = lc.prepared.locations()
    with torch.no_grad():
        y0 = model.standardiser(feats.float())[:, 0].numpy()
    assert (y0 > 0).mean() > 0.2  # locations brighter than 0: the test can tell the two readings apart
    c = cfg.features.channels
    precision = np.tile(np.eye(c, dtype=np.float32), (8, 1, 1))

    def with_mean(first: float) -> GaussianBaseline:
        mean = np.zeros((8, c), np.float32)
        mean[:, 0] = first
        return GaussianBaseline(mean, precision, cells=2, positions=3)

    above = gaussian_map(model, lc, with_mean(float(y0.max()) + 1.0))
    assert not above.any()
    low = with_mean(float(y0.min()) - 1.0)
    below = gaussian_map(model, lc, low)
    p, loc = (
        lc.prepared,
        cfg.localisation,
    )  # every location counted: the Mahalanobis distance, smoothed, weighted
    with torch.no_grad():
        y = model.standardiser(feats.float()).numpy()
    d = torch.from_numpy(low.score(y, lc.prepared.locations()[1].numpy()).astype(np.float32))
    grid = smooth_on_grid(scatter_to_grid(d, p.grid_mask), p.grid_mask, loc.smooth_mm, p.spacing_mm)
    np.testing.assert_allclose(below, weighted_map(p, p.to_full(grid), loc), rtol=1e-5, atol=1e-6)
    assert below.any()
