"""Readers for BraTS 2021 / 2023, MSD Task01 and CSV tables, and the preprocessing cache."""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import require_data

from AnoDODELib.config import ModelConfig, PreprocessConfig
from training import cache
from training.cases import (
    Case,
    detect_layout,
    find_cases,
    read_brats2021,
    read_brats2023,
    read_case_image,
    read_csv,
    read_msd,
    seg_array,
    select,
)
from training.train import load_cached, load_case, load_cases, training_vectors, training_vectors_cached


@pytest.fixture(scope="module")
def vols():
    """Four small 'contrasts' (phantom intensities scaled differently) and a lesion mask."""
    from AnoDODELib.demo import make_phantom

    ph = make_phantom(spacing=(3.0, 3.0, 6.0))
    base = sitk.Cast(ph.image, sitk.sitkFloat32)
    contrasts = {k: base * float(i + 1) for i, k in enumerate(("flair", "t1", "t1ce", "t2"))}
    return contrasts, ph.lesion


def write_brats(root: Path, vols, layout: str, n: int = 2) -> list[str]:
    contrasts, seg = vols
    names = []
    suffix = {
        "2021": {"flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2"},
        "2023": {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"},
    }[layout]
    for i in range(n):
        name = f"BraTS2021_{i:05d}" if layout == "2021" else f"BraTS-GLI-{i:05d}-000"
        sep = "_" if layout == "2021" else "-"
        d = root / name
        d.mkdir(parents=True)
        for k, img in contrasts.items():
            sitk.WriteImage(img, str(d / f"{name}{sep}{suffix[k]}.nii.gz"))
        if i == 0:
            sitk.WriteImage(seg, str(d / f"{name}{sep}seg.nii.gz"))
        names.append(name)
    (root / "README.txt").write_text("not a case", encoding="utf-8")
    return names


def test_brats2021_reader(tmp_path, vols):
    names = write_brats(tmp_path, vols, "2021")
    cases = read_brats2021(tmp_path)
    assert [c.name for c in cases] == names
    assert cases[0].flair.name == f"{names[0]}_flair.nii.gz" and cases[0].seg is not None
    assert cases[1].seg is None
    t2 = read_brats2021(tmp_path, "t2")
    assert t2[0].flair.name.endswith("_t2.nii.gz") and t2[0].contrast == "t2"
    assert detect_layout(tmp_path) == "brats2021"
    assert [c.name for c in find_cases(tmp_path)] == names
    with pytest.raises(ValueError, match="unknown contrast"):
        read_brats2021(tmp_path, "dwi")


def test_brats2023_reader(tmp_path, vols):
    names = write_brats(tmp_path, vols, "2023")
    cases = read_brats2023(tmp_path)
    assert [c.name for c in cases] == names
    assert cases[0].flair.name.endswith("-t2f.nii.gz") and cases[0].seg.name.endswith("-seg.nii.gz")
    assert read_brats2023(tmp_path, "t1ce")[0].flair.name.endswith("-t1c.nii.gz")
    assert detect_layout(tmp_path) == "brats2023"
    assert find_cases(f"brats2023:{tmp_path}")[0].name == names[0]


def test_brats2023_layout_on_real_data():
    root = require_data("brats2023_noGT")
    cases = read_brats2023(root)
    assert [c.name for c in cases] == ["BraTS-GLI-00001-000"]
    c = cases[0]
    assert c.flair.name == "BraTS-GLI-00001-000-t2f.nii.gz" and c.seg is None
    image = read_case_image(c)
    assert image.GetDimension() == 3
    assert read_brats2023(root, "t1")[0].flair.name.endswith("-t1n.nii.gz")


def test_msd_reader_extracts_the_channel(tmp_path, vols):
    contrasts, seg = vols
    arrays = [sitk.GetArrayFromImage(contrasts[k]) for k in ("flair", "t1", "t1ce", "t2")]
    four = sitk.JoinSeries([contrasts[k] for k in ("flair", "t1", "t1ce", "t2")])  # 4-D, channel last
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    sitk.WriteImage(four, str(tmp_path / "imagesTr" / "BRATS_001.nii.gz"))
    sitk.WriteImage(seg, str(tmp_path / "labelsTr" / "BRATS_001.nii.gz"))
    (tmp_path / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"resource fork")
    cases = read_msd(tmp_path)
    assert [(c.name, c.channel) for c in cases] == [("BRATS_001", 0)]
    img = read_case_image(cases[0])
    assert img.GetDimension() == 3
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), arrays[0])
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(read_case_image(read_msd(tmp_path, "t2")[0])), arrays[3]
    )
    lc = load_case(cases[0], ModelConfig())  # the label lies on the extracted channel's grid
    assert lc.tumour.any()
    # dataset.json's modality order wins over the default
    (tmp_path / "dataset.json").write_text(
        '{"modality": {"0": "T2w", "1": "T1w", "2": "t1gd", "3": "FLAIR"}}', encoding="utf-8"
    )
    assert read_msd(tmp_path)[0].channel == 3
    assert detect_layout(tmp_path) == "msd"


def test_csv_reader(tmp_path, vols):
    contrasts, seg = vols
    sitk.WriteImage(contrasts["flair"], str(tmp_path / "a_flair.nii.gz"))
    sitk.WriteImage(seg, str(tmp_path / "a_seg.nii.gz"))
    sitk.WriteImage(contrasts["t2"], str(tmp_path / "ixi.nii.gz"))
    mask = sitk.Cast(contrasts["flair"] > 0, sitk.sitkUInt8)
    sitk.WriteImage(mask, str(tmp_path / "ixi_mask.nii.gz"))
    table = tmp_path / "list.csv"
    with open(table, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "FLAIR", "seg", "brain_mask"])
        w.writerow(["caseA", "a_flair.nii.gz", "a_seg.nii.gz", ""])
        w.writerow(["", str(tmp_path / "ixi.nii.gz"), "", "ixi_mask.nii.gz"])
    cases = read_csv(table)
    assert [c.name for c in cases] == ["caseA", "ixi"]
    assert cases[0].seg == tmp_path / "a_seg.nii.gz" and cases[0].brain_mask is None
    assert cases[1].seg is None and cases[1].brain_mask == tmp_path / "ixi_mask.nii.gz"
    assert cases[1].dataset == "list"
    healthy = load_case(cases[1], ModelConfig())
    assert not healthy.tumour.any() and healthy.healthy_grid.equal(healthy.prepared.grid_mask)
    with pytest.raises(ValueError, match="no 't1' column"):
        read_csv(table, "t1")
    assert [c.name for c in find_cases(table)] == ["caseA", "ixi"]
    assert [c.name for c in select(cases, ["ixi"])] == ["ixi"]
    with pytest.raises(ValueError, match="unknown case"):
        select(cases, ["nope"])


def test_seg_on_another_grid_is_refused_or_resampled_by_physical_position(tmp_path):
    """A lesion mask on a coarser, shifted grid (e.g. drawn on a DWI of the same session)."""
    image = sitk.Image(40, 30, 12, sitk.sitkFloat32)
    image.SetSpacing((1.0, 1.0, 5.0))
    image.SetOrigin((-20.0, -15.0, -30.0))
    seg = sitk.Image(20, 16, 30, sitk.sitkUInt8)
    seg.SetSpacing((2.0, 2.0, 2.0))
    seg.SetOrigin((-19.5, -15.5, -29.5))
    # a box of 2 mm voxels [4, 10) x [3, 9) x [5, 20), i.e. x in [-12.5, -0.5), y in [-10.5, 1.5), z in [-20.5, 9.5) mm
    arr = np.zeros((30, 16, 20), np.uint8)
    arr[5:20, 3:9, 4:10] = 2
    seg_img = sitk.GetImageFromArray(arr)
    seg_img.CopyInformation(seg)
    sitk.WriteImage(seg_img, str(tmp_path / "seg.nii.gz"))
    sitk.WriteImage(image, str(tmp_path / "img.nii.gz"))
    case = Case("c", "test", tmp_path / "img.nii.gz", tmp_path / "seg.nii.gz")
    with pytest.raises(ValueError, match="not on the grid.*--resample-seg"):
        seg_array(case, image)
    got = seg_array(dataclasses.replace(case, resample_seg=True), image)
    # expected: image voxel centres (x = -20 + i, y = -15 + j, z = -30 + 5 k) whose nearest seg voxel is in
    # the box, i.e. centres inside the box's physical extent
    x = -20.0 + np.arange(40)
    y = -15.0 + np.arange(30)
    z = -30.0 + 5.0 * np.arange(12)
    want = (
        ((z >= -20.5) & (z < 9.5))[:, None, None]
        & ((y >= -10.5) & (y < 1.5))[None, :, None]
        & ((x >= -12.5) & (x < -0.5))[None, None, :]
    )
    assert got.shape == (12, 30, 40) and want.sum() > 0
    np.testing.assert_array_equal(got, want)
    assert cache.case_key(case, "d") != cache.case_key(dataclasses.replace(case, resample_seg=True), "d")


@pytest.fixture()
def two_cases(tmp_path, vols):
    write_brats(tmp_path / "data", vols, "2021")
    return read_brats2021(tmp_path / "data")


def test_cache_reuse_and_invalidation(tmp_path, two_cases):
    cfg = ModelConfig()
    d = tmp_path / "cache"
    first = cache.build_cache(two_cases, cfg, d, workers=2, progress=False)
    assert sorted(first.built) == sorted(c.name for c in two_cases) and not first.reused
    files = {p: p.stat().st_mtime_ns for p in d.glob("*.npz")}
    second = cache.build_cache(two_cases, cfg, d, progress=False)
    assert sorted(second.reused) == sorted(c.name for c in two_cases) and not second.built
    assert {p: p.stat().st_mtime_ns for p in d.glob("*.npz")} == files  # untouched
    other = dataclasses.replace(cfg, preprocess=PreprocessConfig(clip_z=5.0))  # config change
    third = cache.build_cache(two_cases, other, d, progress=False)
    assert sorted(third.built) == sorted(c.name for c in two_cases)
    coarser = dataclasses.replace(cfg, features=dataclasses.replace(cfg.features, scales_mm=(0.0, 6.0, 12.0)))
    changed = cache.build_cache(two_cases, coarser, d, progress=False)  # the features too: never stale ones
    assert sorted(changed.built) == sorted(c.name for c in two_cases) and not changed.reused
    # an input file changed (mtime) invalidates that case only
    st = two_cases[0].flair.stat()
    os.utime(two_cases[0].flair, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    fourth = cache.build_cache(two_cases, cfg, d, progress=False)
    assert fourth.built == [two_cases[0].name] and fourth.reused == [two_cases[1].name]
    assert cache.prune(d, list(fourth.entries.values())) == 5
    assert len(list(d.glob("*.npz"))) == 2


def test_cache_round_trip_is_exact(tmp_path, two_cases):
    cfg = ModelConfig()
    rep = cache.build_cache(two_cases, cfg, tmp_path / "c", progress=False)
    for healthy in ("tissue", "slices"):
        direct = [load_case(c, cfg, healthy) for c in two_cases]
        cached = [load_cached(c, rep.entries[c.name], healthy) for c in two_cases]
        for a, b in zip(direct, cached):
            pa, pb = a.prepared, b.prepared
            assert pa.geometry == pb.geometry and pa.spacing_mm == pb.spacing_mm
            assert np.array_equal(pa.normalised, pb.normalised) and np.array_equal(pa.brain, pb.brain)
            assert torch.equal(pa.features, pb.features) and torch.equal(pa.context, pb.context)
            assert torch.equal(a.healthy_grid, b.healthy_grid) and np.array_equal(
                a.healthy_full, b.healthy_full
            )
            assert np.array_equal(a.tumour, b.tumour)
        fa, ca = training_vectors(direct, 500, torch.Generator().manual_seed(0))
        fb, cb = training_vectors_cached(
            [rep.entries[c.name] for c in two_cases], healthy, 6.0, 500, torch.Generator().manual_seed(0)
        )
        assert torch.equal(fa, fb) and torch.equal(ca, cb)
    assert len(load_cases(two_cases, cfg, cache_dir=tmp_path / "c", progress=False)) == 2


def test_cache_skips_a_failing_case(tmp_path, two_cases):
    bad = tmp_path / "bad.nii.gz"
    sitk.WriteImage(sitk.Image([8, 8, 8], sitk.sitkFloat32), str(bad))  # constant: rejected
    cases = [*two_cases, Case("bad", "x", bad, None)]
    rep = cache.build_cache(cases, ModelConfig(), tmp_path / "c", progress=False)
    assert set(rep.entries) == {c.name for c in two_cases} and "constant" in rep.failed["bad"]
