"""DICOM SEG out (dicom_seg.py): a DICOM series in gives a Segmentation that reads back with highdicom on the
source frames, referencing the source series, with the segment, codes, algorithm and threshold; written with
the rest of the output set or not at all; never over an input; without highdicom, NIfTI outputs and one line.

The series are generated (synthetic.write_dicom_series: SimpleITK writes one MR slice per file)."""

from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import synthetic

from AnoDODELib import dicom_seg, volume_io
from AnoDODELib.cli import main

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SERIES_UID = "1.2.826.0.1.3680043.2.1125.2.100"
STUDY_UID = "1.2.826.0.1.3680043.2.1125.1"
FOR_UID = "1.2.826.0.1.3680043.2.1125.3"


def oblique_lps_flipped() -> np.ndarray:
    """Axial storage tilted 12 degrees about x, rows running toward -x (patient's right): positions,
    orientation and slice order all matter."""
    a = np.deg2rad(12.0)
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    return rot @ np.diag([-1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """A generated FLAIR-like head as a DICOM series (3 mm in-plane, 6 mm slices, oblique), its file names in
    reverse slice order, each slice marked by the value of one corner pixel; returns (folder, files in the
    order written, the volume as read)."""
    image = synthetic.scan(
        synthetic.flair_like([((-20.0, 10.0, 12.0), 12.0, 180.0)]),
        oblique_lps_flipped(),
        (3.0, 3.0, 6.0),
    )
    array = sitk.GetArrayFromImage(image) * 5.0
    array[:, 0, 0] = 1000 + np.arange(array.shape[0])  # a mark that tells the slices apart, even empty ones
    marked = sitk.GetImageFromArray(array)
    marked.CopyInformation(image)
    folder = tmp_path_factory.mktemp("dicom") / "series"
    files = synthetic.write_dicom_series(marked, folder, SERIES_UID, STUDY_UID, FOR_UID, shuffle_names=True)
    return folder, files, volume_io.read_image(folder)


def digests(files) -> dict:
    return {Path(f).name: hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files}


def slice_by_content(files, image: sitk.Image) -> dict:
    """{SOP instance UID: the slice of ``image`` (the volume read) whose voxels equal the file's pixels}:
    the correspondence of files and slices found without any geometry (each slice's content differs)."""
    volume = sitk.GetArrayFromImage(image)
    out = {}
    for f in files:
        ds = pydicom.dcmread(f)
        (k,) = [k for k in range(volume.shape[0]) if np.array_equal(volume[k], ds.pixel_array)]
        out[ds.SOPInstanceUID] = k
    assert sorted(out.values()) == list(range(volume.shape[0]))
    return out


def planted_label(shape) -> np.ndarray:
    """A label that differs on every slice and is asymmetric along each axis."""
    k, j, i = np.indices(shape)
    return ((i < 2 + 2 * k) & (j > shape[1] // 3) & (j < shape[1] - k)).astype(np.uint8)


def report_for(threshold: float = 0.75) -> dict:
    return {"threshold": threshold, "model_version": "0123456789ab", "model": "test-model", "preset": "fast"}


def segment_pixels(seg, uid: str) -> np.ndarray:
    return seg.get_pixels_by_source_instance(source_sop_instance_uids=[uid], segment_numbers=[1])[0, ..., 0]


def check_volume_geometry(seg, label: np.ndarray, image: sitk.Image) -> None:
    """highdicom's volume of the SEG equals ``label`` voxel for voxel at the same physical points: each SEG
    voxel's LPS position (its affine) is mapped to the input image's index."""
    volume = seg.get_volume()
    array = volume.array[..., 0] if volume.array.ndim == 4 else volume.array
    assert array.shape == label.shape
    idx = np.indices(array.shape).reshape(3, -1).astype(float)
    points = volume.affine[:3, :3] @ idx + volume.affine[:3, 3:4]
    d = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    ijk = np.linalg.solve(d, points - np.array(image.GetOrigin())[:, None])
    assert np.abs(ijk - np.round(ijk)).max() < 1e-3
    i, j, k = np.round(ijk).astype(int)
    assert np.array_equal(array.reshape(-1), label[k, j, i])


def test_seg_reads_back_on_the_source_frames(series, tmp_path):
    folder, files, image = series
    label = planted_label(sitk.GetArrayFromImage(image).shape)
    output = dicom_seg.seg_output(folder, "x_seg.dcm")
    assert output is not None and output.kind == "dicom_seg"
    assert set(output.reads) == set(files)
    path = tmp_path / "x_seg.dcm"
    output.write(path, image, SimpleNamespace(label=label), report_for(0.75))

    raw = pydicom.dcmread(path)
    assert raw.SOPClassUID == SEG_SOP_CLASS and raw.Modality == "SEG"
    seg = hd.seg.segread(path)
    assert seg.SegmentationType == "BINARY"
    assert (seg.StudyInstanceUID, seg.FrameOfReferenceUID) == (STUDY_UID, FOR_UID)
    assert seg.SeriesInstanceUID != SERIES_UID and seg.PatientID == "ANODODE-TEST"
    assert [s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence] == [SERIES_UID]
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "Anomaly" and segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    (algorithm,) = segment.SegmentationAlgorithmIdentificationSequence
    assert algorithm.AlgorithmName == "AnoDODE" and algorithm.AlgorithmVersion == "0123456789ab"
    assert "threshold=0.75" in algorithm.AlgorithmParameters
    # one frame per source instance, each with the label's slice at that instance's position
    assert seg.number_of_frames == len(files) == label.shape[0]
    for uid, k in slice_by_content(files, image).items():
        assert np.array_equal(segment_pixels(seg, uid), label[k]), f"slice {k}"
    check_volume_geometry(seg, label, image)


def test_an_empty_label_still_gives_every_frame(series, tmp_path):
    folder, files, image = series
    label = np.zeros(sitk.GetArrayFromImage(image).shape, np.uint8)
    path = tmp_path / "empty_seg.dcm"
    dicom_seg.seg_output(folder, path.name).write(path, image, SimpleNamespace(label=label), report_for())
    seg = hd.seg.segread(path)
    assert seg.number_of_frames == len(files)
    check_volume_geometry(seg, label, image)


def test_instances_off_the_volume_are_refused(series):
    folder, files, image = series
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    by_content = slice_by_content(files, image)
    assert dicom_seg.source_slices(sources, image) == [by_content[ds.SOPInstanceUID] for ds in sources]
    shifted = sitk.Image(image)
    spacing = np.array(image.GetSpacing())
    direction = np.array(image.GetDirection()).reshape(3, 3)
    shifted.SetOrigin(tuple(np.array(image.GetOrigin()) + direction[:, 2] * spacing[2] / 2))
    with pytest.raises(volume_io.InputError, match="off the volume's slices"):
        dicom_seg.source_slices(sources, shifted)
    with pytest.raises(volume_io.InputError, match="cover the volume's"):
        dicom_seg.source_slices(sources[:-1], image)


def test_an_unreferenceable_series_gets_one_warning(tmp_path, caplog):
    image = synthetic.scan(synthetic.flair_like(), np.eye(3), (4.0, 4.0, 8.0))
    files = synthetic.write_dicom_series(image, tmp_path / "s")
    for f in files:  # a series without a frame of reference cannot share its geometry with a SEG
        ds = pydicom.dcmread(f)
        del ds.FrameOfReferenceUID
        ds.save_as(f)
    with caplog.at_level(logging.WARNING):
        assert dicom_seg.seg_output(tmp_path / "s", "s_seg.dcm") is None
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 's'}: no DICOM SEG written: instance {SERIES_UID}.1 lacks FrameOfReferenceUID"
    ]
    assert dicom_seg.seg_output(files[0], "x.dcm") is None  # a file, not a series folder


def score(folder: Path, out: Path, model: Path) -> int:
    return main(["score", str(folder), "--output-dir", str(out), "--model", str(model), "--preset", "fast"])


def set_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name not in ("summary.csv", "summary.json"))


def test_score_writes_the_seg_with_the_set(series, tiny_model_dir, tmp_path):
    import json

    folder, files, image = series
    before = digests(files)
    out = tmp_path / "out"
    assert score(folder, out, tiny_model_dir) == 0
    assert set_files(out) == sorted(
        f"series_{k}"
        for k in (
            "anomaly.nii.gz",
            "label.nii.gz",
            "brainmask.nii.gz",
            "figure.png",
            "report.json",
            "seg.dcm",
        )
    )
    report = json.loads((out / "series_report.json").read_text(encoding="utf-8"))
    assert report["outputs"]["dicom_seg"] == str(out / "series_seg.dcm")
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "series_label.nii.gz")))
    seg = hd.seg.segread(out / "series_seg.dcm")
    for uid, k in slice_by_content(files, image).items():
        assert np.array_equal(segment_pixels(seg, uid), label[k])
    check_volume_geometry(seg, label, image)
    assert f"threshold={report['threshold']:.6g}" in (
        seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters
    )
    assert digests(files) == before  # the input series is untouched


def test_without_highdicom_nifti_outputs_and_one_line(series, tiny_model_dir, tmp_path, monkeypatch, caplog):
    folder, _, _ = series
    monkeypatch.setitem(sys.modules, "highdicom", None)  # import highdicom raises ImportError
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        assert score(folder, out, tiny_model_dir) == 0
    assert set_files(out) == sorted(
        f"series_{k}"
        for k in ("anomaly.nii.gz", "label.nii.gz", "brainmask.nii.gz", "figure.png", "report.json")
    )
    lines = [r.getMessage() for r in caplog.records if "DICOM SEG" in r.getMessage()]
    assert lines == [
        f'{folder}: no DICOM SEG written: highdicom is not installed (pip install "anodode[dicom]" enables it)'
    ]


def test_a_failing_seg_writer_leaves_no_part_of_the_set(series, tiny_model_dir, tmp_path, monkeypatch):
    folder, _, _ = series

    def broken(*args, **kwargs):
        raise RuntimeError("planted SEG writer failure")

    monkeypatch.setattr(dicom_seg, "write_seg", broken)
    out = tmp_path / "out"
    assert score(folder, out, tiny_model_dir) == 1
    assert set_files(out) == []  # no maps, no figure, no report, no staging folder


def test_the_seg_never_replaces_an_input(series, tiny_model_dir, tmp_path):
    import shutil

    folder, _, _ = series
    copy = tmp_path / "series"
    shutil.copytree(folder, copy)
    victim = sorted(copy.iterdir())[3]
    victim = victim.rename(copy / "series_seg.dcm")  # a source instance where the SEG would go
    before = victim.read_bytes()
    assert score(copy, copy, tiny_model_dir) == 1  # the outputs go into the series folder itself
    assert victim.read_bytes() == before
    assert not list(copy.glob("series_*.nii.gz"))
