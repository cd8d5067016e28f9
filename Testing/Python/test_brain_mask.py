"""brain_mask.py and its use: which brain a scan is scored over, the brainmask output and the report entry.

The extraction network is replaced by a stand-in here (its own tests are in test_brain_extraction.py), so
these tests check the decisions: a given mask wins; a skull-stripped scan keeps the non-background region
without running the network; a raw head scan is extracted; the outputs and report say what was used.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import SimpleITK as sitk

from AnoDODELib import brain_extraction, cli, volume_io, worker
from AnoDODELib.brain_mask import EXTRACTION_MODES, BrainMask, resolve_brain_mask
from AnoDODELib.bundle import load_model
from AnoDODELib.demo import make_phantom
from AnoDODELib.outputs import OutputSet, ScanInputs, score_to_files
from AnoDODELib.volume_io import InputError


def raw_head(seed: int = 0) -> tuple[sitk.Image, np.ndarray]:
    """The demo phantom inside a bright 'scalp' shell with noisy background: it does not look skull-stripped.
    Returns the image and the phantom's brain (sitk layout)."""
    ph = make_phantom(seed, spacing=(3.0, 3.0, 6.0))
    brain = sitk.GetArrayFromImage(ph.image) > 0
    z, y, x = np.indices(brain.shape).astype(float)
    c = (np.array(brain.shape) - 1) / 2.0
    r = np.sqrt(
        ((z - c[0]) / (c[0] + 0.5)) ** 2 + ((y - c[1]) / (c[1] + 0.5)) ** 2 + ((x - c[2]) / (c[2] + 0.5)) ** 2
    )
    rng = np.random.default_rng(seed)
    values = sitk.GetArrayFromImage(ph.image) + np.where(~brain & (r < 0.97), 900.0, 0.0)
    values = values + np.abs(rng.normal(0.0, 20.0, brain.shape))
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.CopyInformation(ph.image)
    return image, brain


class FakeExtraction:
    """Stands in for brain_extraction.extract_brain: answers ``mask`` (sitk layout) and counts its calls."""

    def __init__(self, mask: np.ndarray) -> None:
        self.mask, self.calls = mask, 0

    def __call__(self, canonical, geometry, **kwargs):
        self.calls += 1
        return brain_extraction.ExtractedBrain(geometry.to_canonical(self.mask).copy(), "stand-in 1.0", 2.5)


@pytest.fixture
def fake(monkeypatch):
    def install(mask):
        f = FakeExtraction(mask)
        monkeypatch.setattr(brain_extraction, "extract_brain", f)
        return f

    return install


def test_modes_are_the_workers():
    assert worker.BRAIN_EXTRACTION == EXTRACTION_MODES


def test_a_given_mask_wins(fake):
    image, brain = raw_head()
    f = fake(brain)
    given = np.zeros_like(brain)
    given[2:8, 10:20, 10:20] = True
    for mode in ("auto", "never"):
        got = resolve_brain_mask(image, sitk.GetArrayFromImage(image), given, extraction=mode)
        assert got.source == "file" and np.array_equal(got.array, given) and got.tool is None
    assert f.calls == 0
    with pytest.raises(InputError, match="x.nii: the brain mask is empty"):
        resolve_brain_mask(image, sitk.GetArrayFromImage(image), np.zeros_like(brain), name="x.nii")


def test_a_skull_stripped_scan_keeps_its_non_background_region(fake):
    image = make_phantom(spacing=(3.0, 3.0, 6.0)).image
    array = sitk.GetArrayFromImage(image)
    f = fake(np.ones_like(array, bool))
    got = resolve_brain_mask(image, array)
    assert got.source == "background" and f.calls == 0
    assert np.array_equal(
        got.array, volume_io.brain_mask_from_image(array, slice_axis=volume_io.axial_axis(image))
    )
    forced = resolve_brain_mask(image, array, extraction="always")
    assert forced.source == "extracted" and f.calls == 1 and forced.tool == "stand-in 1.0"


def test_a_slab_through_a_stripped_scan_is_not_extracted(fake):
    """A partial-coverage (or cropped) stripped scan has brain on its first and last slices: only the in-plane
    border tells it from a raw head scan."""
    image = make_phantom(spacing=(3.0, 3.0, 6.0)).image
    size = list(image.GetSize())
    slab = sitk.RegionOfInterest(image, [size[0], size[1], 8], [0, 0, size[2] // 2 - 4])
    array = sitk.GetArrayFromImage(slab)
    f = fake(np.ones_like(array, bool))
    assert resolve_brain_mask(slab, array).source == "background" and f.calls == 0
    assert not volume_io.looks_skull_stripped(array, array != 0)  # all six faces: the old test, fooled


def test_a_raw_head_is_extracted_unless_told_not_to(fake, caplog):
    image, brain = raw_head()
    array = sitk.GetArrayFromImage(image)
    f = fake(brain)
    got = resolve_brain_mask(image, array, device="cpu", name="raw.nii.gz")
    assert got.source == "extracted" and f.calls == 1 and np.array_equal(got.array, brain)
    assert got.seconds == 2.5
    with caplog.at_level(logging.WARNING):
        kept = resolve_brain_mask(image, array, extraction="never", name="raw.nii.gz")
    assert kept.source == "background" and f.calls == 1
    assert kept.array.sum() > 1.5 * brain.sum()  # the scalp is in it
    assert any("raw.nii.gz does not look skull-stripped" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="valid: auto, always, never"):
        resolve_brain_mask(image, array, extraction="sometimes")


def test_report_entry_volume():
    mask = np.zeros((4, 5, 6), bool)
    mask[1:3, 1:4, 2:5] = True  # 18 voxels
    entry = BrainMask(mask, "extracted", "tool 2.0", 1.23456).describe(voxel_ml=0.0054)
    assert entry == {"source": "extracted", "tool": "tool 2.0", "seconds": 1.235, "volume_ml": 0.097}


def test_raw_scan_scored_over_the_extracted_brain_only(fake, tmp_path, tiny_model_dir):
    image, brain = raw_head()
    path = tmp_path / "raw.nii.gz"
    sitk.WriteImage(image, str(path))
    fake(brain)
    outputs = OutputSet.with_stem(tmp_path / "out", "raw")
    report = score_to_files(
        ScanInputs(path), outputs, load_model(tiny_model_dir), device="cpu", threshold=0.0
    )
    files = outputs.paths()
    written = sitk.ReadImage(str(files["brainmask"]))
    assert written.GetPixelID() == sitk.sitkUInt8 and volume_io.same_grid(written, image)
    assert np.array_equal(sitk.GetArrayFromImage(written) > 0, brain)
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(files["label"]))) > 0
    assert label.any() and not (label & ~brain).any()  # every brain voxel labelled, nothing outside
    entry = report["brain_mask"]
    assert entry["source"] == "extracted" and entry["tool"] == "stand-in 1.0"
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    assert entry["volume_ml"] == pytest.approx(brain.sum() * voxel_ml, abs=1e-3)
    assert json.loads(files["report"].read_text(encoding="utf-8"))["brain_mask"] == entry
    assert report["outputs"]["brainmask"] == str(files["brainmask"])


def test_implausible_extraction_writes_nothing(monkeypatch, tmp_path, tiny_model_dir):
    import torch

    image, _ = raw_head()
    path = tmp_path / "raw.nii.gz"
    sitk.WriteImage(image, str(path))

    def finds_nothing(grid: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.ones_like(grid), torch.zeros_like(grid)], dim=1)

    real = brain_extraction.extract_brain
    monkeypatch.setattr(
        brain_extraction,
        "extract_brain",
        lambda c, g, **kw: real(c, g, **{**kw, "networks": [finds_nothing]}),
    )
    out = tmp_path / "out"
    with pytest.raises(InputError, match="raw.nii.gz: brain extraction failed: no brain found"):
        score_to_files(
            ScanInputs(path), OutputSet.with_stem(out, "raw"), load_model(tiny_model_dir), device="cpu"
        )
    assert not out.exists() or not any(out.iterdir())


def test_cli_usage_errors(tmp_path, phantom_file, capsys):
    mask = tmp_path / "m.nii.gz"
    ref = sitk.ReadImage(str(phantom_file))
    sitk.WriteImage(
        volume_io.image_like(np.ones(sitk.GetArrayFromImage(ref).shape, np.uint8), ref, sitk.sitkUInt8),
        str(mask),
    )
    code = cli.main(
        [
            "score",
            str(phantom_file),
            "--mask",
            str(mask),
            "--brain-extraction",
            "always",
            "--output-dir",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [
        "anodode: error: --mask gives the brain: --brain-extraction always contradicts it"
    ]
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as exit_:
        cli.main(["score", str(phantom_file), "--brain-extraction", "maybe"])
    assert exit_.value.code == 2


def test_worker_command_passes_the_mode():
    cmd = worker.build_command("py", "in.nrrd", "out", brain_extraction="never")
    assert cmd[-2:] == ["--brain-extraction", "never"]
    assert "--brain-extraction" not in worker.build_command("py", "in.nrrd", "out")
    with_mask = worker.build_command("py", "in.nrrd", "out", mask="m.nrrd", brain_extraction="never")
    assert "--brain-extraction" not in with_mask  # a mask gives the brain
