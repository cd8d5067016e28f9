"""The Gaussian baseline, and train -> evaluate end to end through the command lines on tiny phantoms."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from training.baselines import GaussianBaseline


def test_gaussian_baseline_hand_computed():
    # one cell (no position context); mean (0, 0); sample covariance diag(8/3, 2/3)
    y = np.array([[2.0, 0], [-2, 0], [0, 1], [0, -1]])
    g = GaussianBaseline.fit(y, np.zeros((4, 1)), ridge=0.0, min_count=1)
    # d = (1, 2): d^2 = 1 / (8/3) + 4 / (2/3) = 3/8 + 6
    assert g.score(np.array([[1.0, 2.0]]), np.zeros((1, 1)))[0] == pytest.approx(np.sqrt(6.375), rel=1e-5)


def test_gaussian_baseline_cells_by_position():
    rng = np.random.default_rng(0)
    ctx = np.c_[np.zeros(4000), rng.uniform(-1, 1, (4000, 3))]
    y = rng.normal(size=(4000, 2)) * 0.1 + (ctx[:, 1:2] > 0) * 5.0  # the right half is brighter
    g = GaussianBaseline.fit(y, ctx, cells=2, min_count=10)
    left, right = np.array([[0.0, -0.5, 0, 0]]), np.array([[0.0, 0.5, 0, 0]])
    assert g.score([[5.0, 5.0]], right)[0] < 1.5 < g.score([[5.0, 5.0]], left)[0]


@pytest.fixture(scope="module")
def csv_cases(tmp_path_factory):
    from AnoDODELib.demo import make_phantom

    d = tmp_path_factory.mktemp("evaldata")
    rows = []
    for i in range(2):
        ph = make_phantom(seed=i, spacing=(3.0, 3.0, 6.0))
        sitk.WriteImage(ph.image, str(d / f"p{i}.nii.gz"))
        sitk.WriteImage(ph.lesion, str(d / f"p{i}_seg.nii.gz"))
        rows.append([f"p{i}", f"p{i}.nii.gz", f"p{i}_seg.nii.gz"])
    with open(d / "cases.csv", "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["name", "flair", "seg"], *rows])
    return d / "cases.csv"


def test_train_then_evaluate_cli(tmp_path, csv_cases):
    from training import evaluate, train

    model, run = tmp_path / "model", tmp_path / "run"
    args = [
        "--output",
        str(model),
        "--data",
        f"csv:{csv_cases}",
        "--steps",
        "30",
        "--batch-size",
        "256",
        "--hidden",
        "16",
        "--run-dir",
        str(run),
        "--cache",
        str(tmp_path / "cache"),
        "--checkpoint-every",
        "10",
    ]
    assert train.main(args) == 0
    assert (model / "model.json").is_file() and (run / "gaussian_baseline.npz").is_file()
    cfg = json.loads((run / "run_config.json").read_text(encoding="utf-8"))
    assert cfg["train_config"]["steps"] == 30 and [c["name"] for c in cfg["cases"]] == ["p0", "p1"]
    assert (run / "checkpoint.pt").is_file()
    out = tmp_path / "eval"
    assert (
        evaluate.main(
            [
                "--model",
                str(model),
                "--output",
                str(out),
                "--data",
                str(csv_cases),
                "--gaussian",
                str(run / "gaussian_baseline.npz"),
                "--preset",
                "fast",
                "--cache",
                str(tmp_path / "cache"),
                "--worst",
                "1",
            ]
        )
        == 0
    )
    res = json.loads((out / "results.json").read_text(encoding="utf-8"))
    methods = {(r["case"], r["method"]) for r in res["rows"]}
    for m in ("anodode", "flair_zscore", "gaussian"):
        assert {("p0", m), ("p1", m), ("POOLED", m)} <= methods
    pooled = {r["method"]: r for r in res["rows"] if r["case"] == "POOLED"}
    for key in ("voxel_auroc", "voxel_auprc", "best_dice", "slice_auroc", "slice_auprc"):
        assert 0.0 <= pooled["flair_zscore"][key] <= 1.0
    per_case = next(r for r in res["rows"] if r["case"] == "p0" and r["method"] == "anodode")
    assert "dice_at_threshold" in per_case
    assert (out / "results.csv").is_file()
    assert len(list((out / "montages").glob("worst1_*.png"))) == 1
    pytest.importorskip("matplotlib")
    assert {"roc.png", "pr.png", "slice_roc.png"} <= {p.name for p in out.glob("*.png")}
    assert not (out / "shards").exists() and not (out / "voxels").exists()


def test_evaluate_refuses_a_missing_case_file_with_one_line(tmp_path, capsys):
    from AnoDODELib.bundle import default_model_dir
    from training import evaluate

    table = tmp_path / "cases.csv"
    table.write_text("name,flair,seg\nx,missing.nii.gz,\n", encoding="utf-8")
    out = tmp_path / "eval"
    assert (
        evaluate.main(["--model", str(default_model_dir()), "--output", str(out), "--data", f"csv:{table}"])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "missing.nii.gz" in err[0]
    assert not out.exists()


def _case(brain, tumour, spacing=(1.0, 1.0, 1.0)):
    from types import SimpleNamespace

    return SimpleNamespace(
        tumour=np.asarray(tumour, bool),
        prepared=SimpleNamespace(brain=np.asarray(brain, bool), geometry=SimpleNamespace(spacing_mm=spacing)),
    )


def test_pooled_voxel_and_slice_metrics_hand_computed():
    from training.evaluate import pooled

    a = _case(np.ones((2, 1, 2)), [[[1, 0]], [[0, 0]]])  # tumour in slice 0 of case a only
    b = _case(np.ones((1, 1, 2)), [[[0, 0]]])
    maps = [{"m": np.array([[[0.9, 0.1]], [[0.2, 0.3]]])}, {"m": np.array([[[0.95, 0.4]]])}]
    r = pooled(maps, [a, b], slice_bpd=[[5.0, 1.0], [2.0]])
    # voxels 0.95(-) 0.9(+) 0.4 0.3 0.2 0.1: the positive beats 4 of 5 negatives, AP = 1/2,
    # best Dice at threshold 0.9: 2 * 1 / (2 + 1)
    assert r["m"]["voxel_auroc"] == pytest.approx(0.8)
    assert r["m"]["voxel_auprc"] == pytest.approx(0.5)
    assert r["m"]["best_dice"] == pytest.approx(2 / 3)
    # slice scores (the top 100 mm^2 = both 1 mm^2 voxels: the mean): a0 = 0.5 (+), a1 = 0.25, b0 = 0.675
    assert r["m"]["slice_auroc"] == pytest.approx(0.5)
    assert r["m"]["slice_auprc"] == pytest.approx(0.5)
    assert r["slice_bpd"]["slice_auroc"] == pytest.approx(1.0)


def test_pooled_slices_rank_by_the_reports_top_area_mean():
    """Maps rank slices by their mean over the most anomalous area, as ``slice_anomaly_scores`` do: with
    1 mm^2 the slice maximum (the lesion slice first), with 2 mm^2 the slice mean (the lesion slice last)."""
    from training.evaluate import pooled

    a = _case(np.ones((2, 1, 2)), [[[1, 0]], [[0, 0]]])
    b = _case(np.ones((1, 1, 2)), [[[0, 0]]])
    maps = [{"m": np.array([[[0.9, 0.1]], [[0.6, 0.6]]])}, {"m": np.array([[[0.7, 0.7]]])}]
    assert pooled(maps, [a, b], area_mm2=1.0)["m"]["slice_auroc"] == pytest.approx(1.0)  # 0.9 > 0.6, 0.7
    assert pooled(maps, [a, b], area_mm2=2.0)["m"]["slice_auroc"] == pytest.approx(0.0)  # 0.5 < 0.6, 0.7
    coarse = [_case(np.ones((2, 1, 2)), [[[1, 0]], [[0, 0]]], (1.0, 1.0, 2.0)), b]  # 2 mm^2 voxels
    assert pooled(maps, coarse, area_mm2=2.0)["m"]["slice_auroc"] == pytest.approx(1.0)


def test_calibrated_threshold_is_scored_on_the_models_own_variant(monkeypatch):
    import dataclasses

    from AnoDODELib.config import ModelConfig
    from training import evaluate

    cfg = ModelConfig()
    model = type(
        "M",
        (),
        {"config": dataclasses.replace(cfg, calibration=dataclasses.replace(cfg.calibration, threshold=0.5))},
    )()
    lc = _case(np.ones((1, 1, 4)), [[[1, 1, 0, 0]]])
    m = np.array([[[0.9, 0.8, 0.7, 0.1]]])  # above 0.5: three voxels, two of them tumour -> Dice 0.8
    monkeypatch.setattr(
        evaluate,
        "case_maps",
        lambda *a, **k: {
            "maps": {n: m for n in variants},
            "baseline_maps": {"flair_zscore": m},
            "slice_bpd": [1.0],
        },
    )
    variants = evaluate.localisation_variants(cfg.localisation)
    res, _ = evaluate.evaluate_loaded(model, lc, variants)
    with_thr = [n for n, r in res.items() if "dice_at_threshold" in r]
    own = next(n for n, loc in variants.items() if loc == cfg.localisation)
    assert with_thr == [own] and own == "reconstruction+hyper"
    assert res[own]["dice_at_threshold"] == pytest.approx(0.8)


def test_markdown_report_keeps_the_baseline_beside_the_method(tmp_path):
    from training.report import main, markdown_table

    rows = [
        {
            "case": "c1",
            "dataset": "d",
            "method": "anodode",
            "voxel_auprc": 0.81234,
            "best_dice": float("nan"),
        },
        {"case": "POOLED", "dataset": "all", "method": "flair_zscore", "voxel_auprc": 0.7},
        {"case": "c1", "dataset": "d", "method": "flair_zscore", "voxel_auprc": 0.6},
        {"case": "c1", "dataset": "d", "method": "gaussian", "voxel_auprc": 0.5},
    ]
    lines = markdown_table(rows, ["anodode"]).splitlines()
    assert lines[2].startswith("| c1 | d | anodode | 0.812 | – |")
    assert lines[3].startswith("| c1 | d | **flair_zscore** | 0.600 |")
    assert lines[4].startswith("| POOLED | all | **flair_zscore** | 0.700 |") and len(lines) == 5
    assert main([str(tmp_path / "missing.json")]) == 1


def test_zscore_baseline_is_the_brain_z_score():
    from training.baselines import flair_zscore_map

    rng = np.random.default_rng(0)
    raw = rng.normal(300, 20, (3, 10, 10))
    brain = np.zeros(raw.shape, bool)
    brain[:, 2:8, 2:8] = True
    raw[~brain] = 5000.0  # background must not enter the statistics
    z = flair_zscore_map(raw, brain)
    assert z[brain].mean() == pytest.approx(0.0, abs=1e-5) and z[brain].std() == pytest.approx(1.0, rel=1e-5)
    assert np.isneginf(z[~brain]).all()
    assert np.argmax(np.where(brain, z, -1e9)) == np.argmax(np.where(brain, raw, -1e9))  # brighter = higher


def test_smoothed_zscore_baseline_is_a_3d_normalised_convolution_of_2mm_in_physical_units():
    """Hand-computed with the truncated Gaussian (radius round(4 sigma), sigma = 2 mm / spacing per axis):
    a spike's increment at its centre is the product of the three kernels' centre weights, thick slices get
    almost no smoothing across slices, and a constant brain stays constant up to its edge."""
    from training.baselines import smoothed_zscore_map, zscore

    def g0(sigma: float) -> float:
        r = int(4.0 * sigma + 0.5)
        k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
        return float(k[r] / k.sum())

    brain = np.zeros((9, 31, 31), bool)
    brain[1:8, 3:28, 3:28] = True
    raw = np.where(brain, 10.0, 0.0)
    raw[4, 15, 15] = 20.0  # one bright voxel at the centre
    spacing = (4.0, 1.0, 1.0)  # 4 mm slices, 1 mm in-plane
    out = smoothed_zscore_map(raw, brain, spacing)
    z = zscore(raw, brain)
    base, spike = float(z[brain & (raw == 10.0)][0]), float(z[4, 15, 15])
    want = base + (spike - base) * g0(0.5) * g0(2.0) ** 2
    assert out[4, 15, 15] == pytest.approx(want, rel=1e-5)
    # 4 mm away across slices vs 4 mm away in-plane: both sigma = 2 mm, so the same physical falloff
    assert out[5, 15, 15] - base == pytest.approx(out[4, 15, 19] - base, rel=1e-4)
    assert np.isneginf(out[~brain]).all()
    const = np.where(brain, 3.0, -50.0)
    const[4, 4, 4] = 3.0 + 1e-3  # not constant, so the z-score exists
    sm = smoothed_zscore_map(const, brain, spacing)
    zc = zscore(const, brain)
    far = brain.copy()
    far[:, :13, :] = False  # beyond the kernel radius (8) of the perturbed voxel
    assert np.allclose(sm[far], float(np.median(zc[brain])), atol=1e-5)  # the brain edge is not darkened


def test_train_refuses_too_few_steps(tmp_path, csv_cases, capsys):
    """Fewer than 10 steps leave the one-cycle schedule no warm-up phase: a one-line error, nothing written."""
    from training import train

    out = tmp_path / "model"
    assert (
        train.main(
            [
                "--output",
                str(out),
                "--data",
                f"csv:{csv_cases}",
                "--steps",
                "5",
                "--run-dir",
                str(tmp_path / "run"),
            ]
        )
        == 2
    )
    assert "at least 10" in capsys.readouterr().err and not out.exists() and not (tmp_path / "run").exists()


def test_recalibrate_reproduces_the_training_threshold(tmp_path, csv_cases):
    """training.calibrate recomputes what training stored, from the cases named in model.json; weights untouched."""
    import hashlib

    from training import calibrate, train

    model = tmp_path / "model"
    assert (
        train.main(
            [
                "--output",
                str(model),
                "--data",
                f"csv:{csv_cases}",
                "--steps",
                "20",
                "--batch-size",
                "256",
                "--hidden",
                "16",
                "--run-dir",
                str(tmp_path / "run"),
                "--checkpoint-every",
                "0",
            ]
        )
        == 0
    )
    meta = json.loads((model / "model.json").read_text(encoding="utf-8"))
    trained = meta["config"]["calibration"]["threshold"]
    weights = hashlib.sha256((model / "weights.pt").read_bytes()).hexdigest()
    meta["config"]["calibration"]["threshold"] = 123.0
    (model / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    assert calibrate.main(["--model", str(model), "--data", f"csv:{csv_cases}"]) == 0
    again = json.loads((model / "model.json").read_text(encoding="utf-8"))
    assert again["config"]["calibration"]["threshold"] == pytest.approx(trained, rel=1e-5)
    assert (
        again["weights"]["sha256"]
        == weights
        == hashlib.sha256((model / "weights.pt").read_bytes()).hexdigest()
    )
    assert calibrate.main(["--model", str(model), "--data", str(tmp_path / "nowhere")]) == 2


def test_gaussian_baseline_cells_use_only_the_position_columns():
    """Without the slice's z (2 position columns), a further context column (the regional level) must not
    split the cells: index = x_bin * cells + y_bin."""
    from AnoDODELib.config import FeatureConfig
    from training.baselines import GaussianBaseline, position_columns

    ctx = np.array([[0.5, -0.9, 0.9, 3.0], [0.5, 0.9, -0.9, -3.0]])
    assert GaussianBaseline.cell_index(ctx, 2, positions=2).tolist() == [0 * 2 + 1, 1 * 2 + 0]
    assert GaussianBaseline.cell_index(ctx, 2, positions=0).tolist() == [0, 0]
    assert position_columns(FeatureConfig(slice_position=False, regional_scale_mm=16.0)) == 2
    assert (
        position_columns(FeatureConfig()) == 3
        and position_columns(FeatureConfig(position_context=False)) == 0
    )
