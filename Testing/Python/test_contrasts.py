"""Several contrasts as feature channels: config, features, alignment, maps, readers, CLI and training."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import require_data

from AnoDODELib import volume_io
from AnoDODELib.anomaly_map import hyperintense_channels, location_scores
from AnoDODELib.config import FeatureConfig, LocalisationConfig, ModelConfig
from AnoDODELib.features import extract_features
from AnoDODELib.pipeline import prepare_volume
from training import cache
from training.cases import (
    brats_family_cases,
    parse_contrasts,
    read_brats2021,
    read_case_images,
    read_csv,
    read_msd,
)
from training.train import load_case, model_config

FLAIR_T1CE = model_config(("flair", "t1ce"))


def test_feature_config_contrasts():
    cfg = FeatureConfig(contrasts=("flair", "t1ce"), scales_mm=(0.0, 4.0))
    assert cfg.channels == 4 and cfg.channel_contrasts() == ["flair", "flair", "t1ce", "t1ce"]
    for bad in ((), ("flair", "flair"), ("dwi",)):
        with pytest.raises(ValueError, match="contrasts must be distinct"):
            FeatureConfig(contrasts=bad)
    assert FLAIR_T1CE.score_net.channels == 6 and FLAIR_T1CE.features.contrasts == ("flair", "t1ce")


def test_features_are_contrast_major():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 20, 24, generator=g), torch.randn(3, 20, 24, generator=g)
    mask = torch.zeros(3, 20, 24, dtype=torch.bool)
    mask[:, 4:16, 5:20] = True
    pos = torch.arange(3.0) * 5
    one = FeatureConfig()
    two = FeatureConfig(contrasts=("flair", "t2"))
    fa, ca = extract_features(a, mask, pos, 2.0, one)
    fb, _ = extract_features(b, mask, pos, 2.0, one)
    fab, cab = extract_features(torch.stack([a, b], dim=1), mask, pos, 2.0, two)
    assert fab.shape == (3, 6, 20, 24)
    assert torch.equal(fab[:, :3], fa) and torch.equal(fab[:, 3:], fb) and torch.equal(cab, ca)
    with pytest.raises(ValueError, match="1 contrast"):
        extract_features(a, mask, pos, 2.0, two)


def test_location_scores_read_only_hyperintense_contrasts_one_sided():
    loc = LocalisationConfig(method="reconstruction", hyperintense_only=True)
    feats = FeatureConfig(contrasts=("flair", "t1ce"), scales_mm=(0.0,))
    hyper = hyperintense_channels(feats, loc)
    assert hyper.tolist() == [True, False]
    residual = torch.tensor([[-1.0, -2.0], [3.0, 1.0]])
    bpd = torch.tensor([2.0, 0.5])
    # FLAIR counts where brighter only, T1ce both ways: [0 + 4, 9 + 1]
    assert location_scores(bpd, residual, loc, hyper).tolist() == [4.0, 10.0]
    assert location_scores(
        bpd, residual, dataclasses.replace(loc, hyperintense_only=False), hyper
    ).tolist() == [5.0, 10.0]
    # the likelihood is gated by the FLAIR intensity channel, the combined map scaled by it
    lik = dataclasses.replace(loc, method="likelihood")
    assert location_scores(bpd, residual, lik, hyper).tolist() == [0.0, 0.5]
    assert location_scores(bpd, residual, dataclasses.replace(loc, method="combined"), hyper).tolist() == [
        0.0,
        1.5,
    ]
    # a T1-primary model: the gate is the first hyperintense channel (FLAIR, second here)
    t1_first = hyperintense_channels(FeatureConfig(contrasts=("t1", "flair"), scales_mm=(0.0,)), loc)
    assert location_scores(bpd, residual.flip(1), lik, t1_first).tolist() == [0.0, 0.5]
    # no hyperintense contrast: nothing is one-sided, the likelihood is not gated
    none = hyperintense_channels(FeatureConfig(contrasts=("t1",), scales_mm=(0.0, 4.0)), loc)
    assert location_scores(bpd, residual, lik, none).tolist() == [2.0, 0.5]
    assert location_scores(bpd, residual, loc, none).tolist() == [5.0, 10.0]


def _linear_image(size, spacing, origin, direction=None) -> sitk.Image:
    """f(p) = 2 x - y + 0.5 z + 100 at each voxel's physical point p = (x, y, z) mm."""
    img = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in size], indexing="ij"), -1).reshape(-1, 3)
    pts = np.array([img.TransformContinuousIndexToPhysicalPoint([float(v) for v in i]) for i in idx])
    vals = (2 * pts[:, 0] - pts[:, 1] + 0.5 * pts[:, 2] + 100).reshape(size)
    arr = sitk.GetImageFromArray(np.transpose(vals, (2, 1, 0)).astype(np.float32))
    arr.CopyInformation(img)
    return arr


def test_align_to_resamples_by_physical_position():
    reference = _linear_image((12, 10, 6), (2.0, 2.0, 4.0), (-10.0, -8.0, -10.0))
    # another grid covering it: finer, shifted, rotated 90 degrees in-plane; linear data is interpolated exactly
    rot = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    other = _linear_image((30, 40, 30), (1.0, 1.0, 1.0), (16.0, -14.0, -14.0), rot)
    assert not volume_io.same_grid(other, reference)
    got = volume_io.align_to(other, reference, "t1ce")
    np.testing.assert_allclose(got, sitk.GetArrayFromImage(reference), rtol=0, atol=1e-3)
    assert volume_io.align_to(reference, reference, "same") is not None
    # one not covering the brain is refused
    far = _linear_image((8, 8, 8), (1.0, 1.0, 1.0), (100.0, 100.0, 100.0))
    with pytest.raises(volume_io.InputError, match="does not cover"):
        volume_io.align_to(far, reference, "t1ce")
    # voxels outside the region of interest may be uncovered
    region = np.zeros(sitk.GetArrayViewFromImage(reference).shape, bool)
    assert volume_io.align_to(far, reference, "t1ce", region=region).shape == region.shape


@pytest.fixture(scope="module")
def phantom():
    from AnoDODELib.demo import make_phantom

    return make_phantom(spacing=(3.0, 3.0, 6.0))


def test_prepare_volume_with_a_second_contrast(phantom):
    img = sitk.Cast(phantom.image, sitk.sitkFloat32)
    bright = img * 3.0 + 7.0  # an affine intensity change: identical after the z-score
    p = prepare_volume(img, FLAIR_T1CE, other_contrasts={"t1ce": bright})
    assert p.features.shape[1] == 6
    torch.testing.assert_close(p.features[:, 3:], p.features[:, :3], rtol=0, atol=1e-4)
    single = prepare_volume(img, model_config(("flair",)))  # the same preprocessing, one contrast
    assert torch.equal(p.features[:, :3], single.features) and torch.equal(p.context, single.context)
    # the same contrast on a finer grid of the same space: resampled onto the primary, nearly identical
    finer = sitk.Resample(
        bright,
        [2 * s for s in bright.GetSize()],
        sitk.Transform(),
        sitk.sitkLinear,
        bright.GetOrigin(),
        [s / 2 for s in bright.GetSpacing()],
        bright.GetDirection(),
        0.0,
    )
    q = prepare_volume(img, FLAIR_T1CE, other_contrasts={"t1ce": finer})
    a, b = q.features[:, 3][q.grid_mask], p.features[:, 3][p.grid_mask]
    assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.95
    with pytest.raises(volume_io.InputError, match="reads flair\\+t1ce; no t1ce image"):
        prepare_volume(img, FLAIR_T1CE)
    with pytest.raises(volume_io.InputError, match="does not use t2"):
        prepare_volume(img, FLAIR_T1CE, other_contrasts={"t1ce": bright, "t2": bright})
    with pytest.raises(volume_io.InputError, match="does not use t1ce"):
        prepare_volume(img, ModelConfig(), other_contrasts={"t1ce": bright})


def _write_brats2021(root: Path, phantom, contrasts=("flair", "t1", "t1ce", "t2"), n: int = 2) -> list[str]:
    base = sitk.Cast(phantom.image, sitk.sitkFloat32)
    names = []
    for i in range(n):
        d = root / f"BraTS2021_{i:05d}"
        d.mkdir(parents=True)
        for k, c in enumerate(contrasts):
            sitk.WriteImage(base * float(k + 1) + float(i), str(d / f"{d.name}_{c}.nii.gz"))
        sitk.WriteImage(phantom.lesion, str(d / f"{d.name}_seg.nii.gz"))
        names.append(d.name)
    return names


def test_readers_carry_the_extra_contrasts(tmp_path, phantom):
    _write_brats2021(tmp_path / "b", phantom)
    _write_brats2021(tmp_path / "c", phantom, contrasts=("flair", "t1"), n=1)  # no t1ce: left out
    cases = read_brats2021(tmp_path / "b", "flair,t1ce") + read_brats2021(tmp_path / "c", ["flair", "t1ce"])
    assert len(cases) == 2 and cases[0].contrasts == ("flair", "t1ce")
    assert (
        cases[0].extra[0][1].name.endswith("_t1ce.nii.gz") and cases[0].extra[0][1] in cases[0].input_files()
    )
    primary, others = read_case_images(cases[0])
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(others["t1ce"]), 3 * sitk.GetArrayFromImage(primary), rtol=1e-5
    )
    assert parse_contrasts(" FLAIR, t2 ") == ("flair", "t2")
    with pytest.raises(ValueError, match="distinct"):
        parse_contrasts("flair,flair")
    # MSD: both contrasts from the 4-D file's channels
    four = sitk.JoinSeries([sitk.Cast(phantom.image, sitk.sitkFloat32) * float(k + 1) for k in range(4)])
    (tmp_path / "msd" / "imagesTr").mkdir(parents=True)
    sitk.WriteImage(four, str(tmp_path / "msd" / "imagesTr" / "BRATS_001.nii.gz"))
    (m,) = read_msd(tmp_path / "msd", "t2,flair")
    assert (m.contrast, m.channel, m.extra) == ("t2", 3, (("flair", m.flair, 0),))
    primary, others = read_case_images(m)
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(primary), 4 * sitk.GetArrayFromImage(others["flair"]), rtol=1e-5
    )
    # CSV: one column per contrast; a row without one of them is left out
    table = tmp_path / "list.csv"
    d = tmp_path / "b" / "BraTS2021_00000"
    with open(table, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(
            [
                ["name", "flair", "t1ce"],
                ["a", d / f"{d.name}_flair.nii.gz", d / f"{d.name}_t1ce.nii.gz"],
                ["b", d / f"{d.name}_flair.nii.gz", ""],
            ]
        )
    assert [c.name for c in read_csv(table, "flair,t1ce")] == ["a"]
    with pytest.raises(ValueError, match="no 't2' column"):
        read_csv(table, "flair,t2")
    # the cache keys the extra contrast, and a case must carry exactly the model's contrasts
    assert cache.case_key(cases[0], "d") != cache.case_key(dataclasses.replace(cases[0], extra=()), "d")
    with pytest.raises(ValueError, match="has contrasts flair\\+t1ce, the model reads flair"):
        load_case(cases[0], ModelConfig())


def test_flair_only_sources_are_left_out_of_a_multi_contrast_model(caplog):
    """As documented (a case lacking a contrast is left out), the FLAIR-only shared sources give no cases for
    a FLAIR + T1ce model, with a warning, instead of stopping ``training.train --contrast flair,t1ce`` on
    the default data."""
    from training.cases import find_cases
    from training.train import DEFAULT_SOURCES, gather_cases

    wmh = require_data("wmh_clinical")
    assert wmh.is_dir() and find_cases("wmh-clinical", "flair")
    with caplog.at_level("WARNING"):
        assert find_cases("wmh-clinical", "flair,t1ce") == [] and find_cases("isles22", "t1ce") == []
    assert any("has FLAIR only" in r.getMessage() for r in caplog.records)
    both = gather_cases(list(DEFAULT_SOURCES), ("flair", "t1ce"), None, [])
    assert {c.dataset for c in both} == {c.dataset for c in brats_family_cases(contrasts=("flair", "t1ce"))}
    assert len(both) == 8 and all(c.contrasts == ("flair", "t1ce") for c in both)


def test_shared_brats_family_contrasts():
    require_data("deepmedic_brats2015")
    both = brats_family_cases(contrasts=("flair", "t1ce"))
    assert len(both) == 8 and all(c.extra[0][0] == "t1ce" and c.extra[0][1].exists() for c in both)
    assert [c.name for c in both] == [c.name for c in brats_family_cases()]
    # the deepmedic cases have no T2
    assert {c.name for c in brats_family_cases(contrasts=("flair", "t2"))} == {
        "brats_tcia_pat222",
        "BRATS_HG0015",
        "TCGA-DU-7294",
        "OtherEXampleFromTCIA",
    }


def test_train_score_and_evaluate_a_two_contrast_model(tmp_path, phantom):
    from AnoDODELib.bundle import load_model
    from AnoDODELib.cli import main as cli
    from training import evaluate, train

    _write_brats2021(tmp_path / "data", phantom)
    model_dir = tmp_path / "model"
    assert (
        train.main(
            [
                "--output",
                str(model_dir),
                "--data",
                str(tmp_path / "data"),
                "--contrast",
                "flair,t1ce",
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
    model = load_model(model_dir)
    assert model.name == "model"  # named after the run's output folder (every bundle was anodode-flair-brats)
    assert model.config.features.contrasts == ("flair", "t1ce") and model.config.score_net.channels == 6
    assert model.metadata["training"]["contrast"] == "FLAIR+T1CE"
    case = tmp_path / "data" / "BraTS2021_00000"
    flair, t1ce = case / "BraTS2021_00000_flair.nii.gz", case / "BraTS2021_00000_t1ce.nii.gz"
    out = tmp_path / "out"
    common = [
        "--model",
        str(model_dir),
        "--output-dir",
        str(out),
        "--device",
        "cpu",
        "--preset",
        "fast",
        "--quiet",
    ]
    assert cli(["score", str(flair), "--contrast", f"t1ce={t1ce}", *common]) == 0
    report = json.loads((out / "BraTS2021_00000_flair_report.json").read_text(encoding="utf-8"))
    assert report["contrasts"] == {"flair": str(flair), "t1ce": str(t1ce)}
    assert report["volume_score_bpd"] == report["volume_score_bpd"]  # finite, not NaN
    out2 = tmp_path / "out2"
    common2 = [*common[:2], "--output-dir", str(out2), *common[4:]]
    for argv in (
        ["score", str(flair)],  # missing t1ce
        ["score", str(flair), "--contrast", f"t1ce={t1ce}", "--contrast", f"t2={t1ce}"],  # unused
        ["score", str(flair), "--contrast", "t1ce"],  # not NAME=PATH
        ["score", str(flair), str(flair), "--contrast", f"t1ce={t1ce}"],
    ):  # once per input
        assert cli([*argv, *common2]) == 2
    assert not out2.exists()
    ev = tmp_path / "eval"
    assert (
        evaluate.main(
            [
                "--model",
                str(model_dir),
                "--output",
                str(ev),
                "--data",
                str(tmp_path / "data"),
                "--preset",
                "fast",
                "--worst",
                "0",
            ]
        )
        == 0
    )
    rows = json.loads((ev / "results.json").read_text(encoding="utf-8"))["rows"]
    assert {r["case"] for r in rows} >= {"BraTS2021_00000", "BraTS2021_00001", "POOLED"}
    assert (
        evaluate.main(
            [
                "--model",
                str(model_dir),
                "--output",
                str(tmp_path / "ev2"),
                "--data",
                str(tmp_path / "data"),
                "--contrast",
                "flair",
            ]
        )
        == 2
    )
