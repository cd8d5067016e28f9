"""The BIDS-App (bids.py, ``anodode bids``): a synthetic BIDS tree in gives BIDS derivatives whose every file
name the BIDS schema's derivative rules accept (bidsschematools, BIDS 1.11.2), with dataset_description.json,
sidecars that point back to their sources, and a group summary; invalid datasets get one line and exit 2; a
participant without a FLAIR is listed, not fatal."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
import SimpleITK as sitk
import synthetic
from bidsschematools import rules as schema_rules
from bidsschematools import schema as bids_schema

from AnoDODELib import bids
from AnoDODELib.cli import main
from AnoDODELib.demo import make_phantom

RAW = {
    "sub-01/anat/sub-01_FLAIR.nii.gz": 0.0,
    "sub-02/ses-1/anat/sub-02_ses-1_acq-ax_run-1_FLAIR.nii.gz": 3.0,
    "sub-02/ses-2/anat/sub-02_ses-2_FLAIR.nii.gz": 7.0,
    "sub-03/anat/sub-03_T1w.nii.gz": 0.0,  # no FLAIR: listed, not fatal
}
FLAIRS = [p for p in RAW if p.endswith("_FLAIR.nii.gz")]
DERIVATIVES = [
    "sub-01/anat/sub-01_desc-anomaly_FLAIR.nii.gz",
    "sub-01/anat/sub-01_desc-anomaly_FLAIR.json",
    "sub-01/anat/sub-01_desc-anomaly_FLAIR.png",
    "sub-01/anat/sub-01_desc-anomaly_mask.nii.gz",
    "sub-01/anat/sub-01_desc-anomaly_mask.json",
    "sub-01/anat/sub-01_desc-brain_mask.nii.gz",
    "sub-02/ses-1/anat/sub-02_ses-1_acq-ax_run-1_desc-anomaly_FLAIR.nii.gz",
    "sub-02/ses-1/anat/sub-02_ses-1_acq-ax_run-1_desc-anomaly_FLAIR.json",
    "sub-02/ses-1/anat/sub-02_ses-1_acq-ax_run-1_desc-anomaly_FLAIR.png",
    "sub-02/ses-1/anat/sub-02_ses-1_acq-ax_run-1_desc-anomaly_mask.nii.gz",
    "sub-02/ses-1/anat/sub-02_ses-1_acq-ax_run-1_desc-anomaly_mask.json",
    "sub-02/ses-1/anat/sub-02_ses-1_acq-ax_run-1_desc-brain_mask.nii.gz",
    "sub-02/ses-2/anat/sub-02_ses-2_desc-anomaly_FLAIR.nii.gz",
    "sub-02/ses-2/anat/sub-02_ses-2_desc-anomaly_FLAIR.json",
    "sub-02/ses-2/anat/sub-02_ses-2_desc-anomaly_FLAIR.png",
    "sub-02/ses-2/anat/sub-02_ses-2_desc-anomaly_mask.nii.gz",
    "sub-02/ses-2/anat/sub-02_ses-2_desc-anomaly_mask.json",
    "sub-02/ses-2/anat/sub-02_ses-2_desc-brain_mask.nii.gz",
]


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(spacing=(3.0, 3.0, 6.0)).image


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, phantom):
    root = tmp_path_factory.mktemp("bids") / "raw"
    synthetic.write_bids_dataset(root, RAW, phantom)
    return root


@pytest.fixture(scope="module")
def participant_run(dataset, tiny_model_dir, tmp_path_factory):
    """The participant level over the whole synthetic dataset: (exit code, output folder, stderr)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("derivatives") / "anodode"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(
            ["bids", str(dataset), str(out), "participant", "--model", str(tiny_model_dir)]
            + ["--preset", "fast", "--quiet"]
        )
    return code, out, err.getvalue()


def schema_regexes(group: str) -> list[str]:
    schema = bids_schema.load_schema()
    rules = schema_rules.regexify_filename_rules(schema.rules.files[group], schema, level=2)
    common = schema_rules.regexify_filename_rules(schema.rules.files.common, schema, level=2)
    return [r["regex"] for r in rules + common]


def bids_files(root: Path) -> list[str]:
    """The dataset's files as a BIDS validator indexes them: dot files skipped, .bidsignore applied."""
    ignore = (
        (root / ".bidsignore").read_text(encoding="utf-8").split() if (root / ".bidsignore").exists() else []
    )
    out = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_dir() or any(part.startswith(".") for part in relative.split("/")):
            continue
        if any(fnmatch.fnmatch("/" + relative, p if p.startswith("/") else "*/" + p) for p in ignore):
            continue
        out.append(relative)
    return out


def test_the_synthetic_raw_dataset_is_valid_bids(dataset):
    regexes = schema_regexes("raw")
    assert [f for f in bids_files(dataset) if not any(re.match(r, f) for r in regexes)] == []


def test_participant_level_writes_bids_derivatives(participant_run):
    code, out, err = participant_run
    assert code == 0, err
    assert err.strip().splitlines() == ["anodode: warning: sub-03: no FLAIR (*_FLAIR.nii.gz) found; skipped"]
    files = bids_files(out)
    assert sorted(files) == sorted(
        ["dataset_description.json", *(f for f in DERIVATIVES if not f.endswith(".png"))]
    )
    assert [f for f in DERIVATIVES if f.endswith(".png") and (out / f).is_file()] == [
        f for f in DERIVATIVES if f.endswith(".png")
    ]  # the figures are there, listed in .bidsignore
    regexes = schema_regexes("deriv")
    assert [f for f in files if not any(re.match(r, f) for r in regexes)] == []
    assert not [p for p in out.rglob(".anodode-staging-*")]


def test_dataset_description_is_a_derivative_one(participant_run, dataset):
    _, out, _ = participant_run
    description = json.loads((out / "dataset_description.json").read_text(encoding="utf-8"))
    schema = bids_schema.load_schema()
    assert description["BIDSVersion"] == schema.bids_version == bids.BIDS_VERSION
    assert description["DatasetType"] == "derivative" and description["Name"]
    (generator,) = description["GeneratedBy"]
    assert generator["Name"] == "AnoDODE" and generator["Version"]
    assert Path(unquote(urlparse(description["DatasetLinks"]["raw"]).path)) == dataset.resolve()


def resolve_uri(uri: str, out: Path, description: dict) -> Path:
    """A BIDS URI (bids:<dataset>:<path>) as a path: ``bids::`` in this dataset, ``bids:raw:`` through
    DatasetLinks."""
    _, name, relative = uri.split(":", 2)
    root = out if name == "" else Path(unquote(urlparse(description["DatasetLinks"][name]).path))
    return root / relative


def test_derivatives_are_on_the_flair_grid_and_point_to_their_sources(participant_run, dataset):
    _, out, _ = participant_run
    description = json.loads((out / "dataset_description.json").read_text(encoding="utf-8"))
    for flair in FLAIRS:
        source = flair[: -len("_FLAIR.nii.gz")]
        folder = Path(flair).parent
        scan = sitk.ReadImage(str(dataset / flair))
        amap = sitk.ReadImage(str(out / folder / f"{Path(source).name}_desc-anomaly_FLAIR.nii.gz"))
        mask = sitk.ReadImage(str(out / folder / f"{Path(source).name}_desc-anomaly_mask.nii.gz"))
        for image in (amap, mask):
            assert image.GetSize() == scan.GetSize() and image.GetSpacing() == scan.GetSpacing()
            assert image.GetOrigin() == scan.GetOrigin() and image.GetDirection() == scan.GetDirection()
        sidecar = json.loads(
            (out / folder / f"{Path(source).name}_desc-anomaly_FLAIR.json").read_text(encoding="utf-8")
        )
        mask_sidecar = json.loads(
            (out / folder / f"{Path(source).name}_desc-anomaly_mask.json").read_text(encoding="utf-8")
        )
        assert resolve_uri(sidecar["Sources"][0], out, description) == (dataset / flair).resolve()
        assert sidecar["input"] == str(dataset / flair) and isinstance(sidecar["volume_score_bpd"], float)
        assert resolve_uri(mask_sidecar["Sources"][0], out, description) == (
            out / folder / f"{Path(source).name}_desc-anomaly_FLAIR.nii.gz"
        )
        assert mask_sidecar["Type"] == "Lesion" and mask_sidecar["Threshold"] == sidecar["threshold"]
        label = sitk.GetArrayFromImage(mask)
        assert np.array_equal(label, (sitk.GetArrayFromImage(amap) > sidecar["threshold"]).astype(np.uint8))


def test_group_level_summarises_the_participants(participant_run, dataset, tmp_path, capsys):
    _, out, _ = participant_run
    copy = tmp_path / "anodode"
    shutil.copytree(out, copy)
    assert main(["bids", str(dataset), str(copy), "group", "--quiet"]) == 0
    data = json.loads((copy / "summary.json").read_text(encoding="utf-8"))
    assert (data["inputs"], data["ok"], data["failed"], data["without_flair"]) == (3, 3, 0, ["sub-03"])
    for row, flair in zip(data["rows"], FLAIRS):
        sidecar = out / flair.replace("_FLAIR.nii.gz", "_desc-anomaly_FLAIR.json")
        assert row["input"] == str(dataset / flair)
        assert row["volume_score_bpd"] == json.loads(sidecar.read_text(encoding="utf-8"))["volume_score_bpd"]
    assert (copy / "summary.csv").read_text(encoding="utf-8").count("\n") == 4
    assert bids_files(copy) == bids_files(out)  # the summaries are listed in .bidsignore
    # a participant whose outputs are missing: listed with its status, exit 1
    (copy / FLAIRS[1].replace("_FLAIR.nii.gz", "_desc-anomaly_FLAIR.json")).unlink()
    capsys.readouterr()
    assert main(["bids", str(dataset), str(copy), "group", "--quiet"]) == 1
    data = json.loads((copy / "summary.json").read_text(encoding="utf-8"))
    assert (data["ok"], data["failed"]) == (2, 1)
    assert data["rows"][1]["status"].startswith("no derivatives")
    assert f"{dataset / FLAIRS[1]}: no derivatives" in capsys.readouterr().err


def test_selection_by_participant_and_session(dataset):
    sel = bids.select(dataset, ["sub-02", "01"], None)
    assert [s.relative for s in sel.scans] == FLAIRS[1:] + FLAIRS[:1] and sel.without_flair == []
    sel = bids.select(dataset, None, ["2"])
    assert [s.relative for s in sel.scans] == [FLAIRS[2]] and sel.without_flair == ["sub-01", "sub-03"]
    assert [(s.subject, s.session, s.source) for s in bids.select(dataset, ["02"], ["ses-1"]).scans] == [
        ("02", "1", "sub-02_ses-1_acq-ax_run-1")
    ]


@pytest.mark.parametrize(
    "name, ok",
    [
        ("sub-01_FLAIR.nii.gz", True),
        ("sub-01_FLAIR.nii", True),
        ("sub-01_acq-ax_ce-gad_rec-norm_run-2_echo-1_part-mag_chunk-3_FLAIR.nii.gz", True),
        ("sub-01_run-1_acq-ax_FLAIR.nii.gz", False),  # entities out of BIDS order
        ("sub-01_acq-ax_acq-cor_FLAIR.nii.gz", False),  # repeated
        ("sub-01_desc-x_FLAIR.nii.gz", False),  # not a raw entity
        ("sub-02_FLAIR.nii.gz", False),  # another participant's name
        ("sub-01_ses-1_FLAIR.nii.gz", False),  # a session outside a session folder
        ("sub-01_T1w.nii.gz", False),
    ],
)
def test_raw_flair_names(name, ok):
    assert bids.parse_flair_name(name, "01", None) is ok


def test_derivative_names_follow_the_schema_for_every_source_entity(tmp_path):
    regexes = schema_regexes("deriv")
    path = (
        tmp_path
        / "sub-01/ses-a/anat/sub-01_ses-a_task-rest_acq-ax_ce-gad_rec-n_run-2_echo-1_part-mag_chunk-3_FLAIR.nii.gz"
    )
    scan = bids.FlairScan("01", "a", path, path.relative_to(tmp_path).as_posix())
    names = [scan.derivative(k) for k in ("anomaly", "label", "report")]
    names.append(names[1].replace(".nii.gz", ".json"))
    assert names[1].endswith("_chunk-3_desc-anomaly_mask.nii.gz")
    assert [n for n in names if not any(re.match(r, n) for r in regexes)] == []


def error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def invalid_dataset(root: Path, kind: str) -> Path:
    """A folder that is not a usable BIDS dataset, of the given ``kind``."""
    folder = root / kind
    if kind == "missing":
        return folder
    folder.mkdir()
    if kind == "bad_json":
        (folder / "dataset_description.json").write_text("{", encoding="utf-8")
    elif kind == "no_participants":
        (folder / "dataset_description.json").write_text("{}", encoding="utf-8")
        (folder / "derivatives").mkdir()
    return folder


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "no such folder"),
        ("empty", "no dataset_description.json"),
        ("bad_json", "not valid JSON"),
        ("no_participants", "no sub-<label> folder"),
    ],
)
def test_an_invalid_dataset_gets_one_line_and_exit_2(tmp_path, capsys, kind, message):
    bids_dir = invalid_dataset(tmp_path, kind)
    for level in ("participant", "group"):
        assert main(["bids", str(bids_dir), str(tmp_path / "out"), level]) == 2
        line = error_line(capsys)
        assert line.startswith(f"anodode: error: {bids_dir}") and message in line
    assert not (tmp_path / "out").exists()


def test_bad_selections_and_output_folders_get_exit_2(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["bids", str(dataset), str(out), "participant", "--participant-label", "09"]) == 2
    assert "participant(s) 09 not in" in error_line(capsys)
    assert main(["bids", str(dataset), str(out), "participant", "--participant_label", "sub-0_1"]) == 2
    assert "is not a BIDS label" in error_line(capsys)
    assert main(["bids", str(dataset), str(out), "participant", "--participant-label", "03"]) == 2
    assert "no FLAIR" in capsys.readouterr().err.strip().splitlines()[-1]
    assert main(["bids", str(dataset), str(dataset), "participant"]) == 2
    assert "OUTPUT_DIR is BIDS_DIR" in error_line(capsys)
    other = tmp_path / "other"
    other.mkdir()
    foreign = '{"Name": "fmriprep", "DatasetType": "derivative", "GeneratedBy": [{"Name": "fMRIPrep"}]}'
    (other / "dataset_description.json").write_text(foreign, encoding="utf-8")
    assert main(["bids", str(dataset), str(other), "participant"]) == 2
    assert "holds another dataset" in error_line(capsys)
    assert (other / "dataset_description.json").read_text(encoding="utf-8") == foreign
    assert main(["bids", str(dataset), str(tmp_path / "none"), "group"]) == 2
    assert "run the participant level first" in error_line(capsys)
    assert not out.exists()


def test_score_to_files_refuses_extras_and_fields_that_clash(phantom_file, tiny_model_dir, tmp_path):
    from AnoDODELib.bundle import load_model
    from AnoDODELib.outputs import ExtraOutput, OutputSet, ScanInputs, score_to_files

    model = load_model(tiny_model_dir)
    outputs = OutputSet.with_stem(tmp_path / "out", "phantom")
    again = ExtraOutput("label", "other.json", lambda *a: None)
    same_name = ExtraOutput("sidecar", "phantom_report.json", lambda *a: None)
    for extra in (again, same_name):
        with pytest.raises(ValueError, match="repeats in the set"):
            score_to_files(ScanInputs(phantom_file), outputs, model, device="cpu", extras=[extra])
    with pytest.raises(ValueError, match="would replace the report's own keys"):
        score_to_files(
            ScanInputs(phantom_file),
            outputs,
            model,
            device="cpu",
            preset="fast",
            report_fields={"threshold": 1},
        )
    assert not (tmp_path / "out").exists() or [p.name for p in (tmp_path / "out").iterdir()] == []
