"""outputs.score_to_files, the one score-to-files engine behind ``anodode score`` and the Slicer worker.

The reference in data/scoring_reference/ was written by ``anodode score`` at commit 7ddeb52, before the CLI and
the worker shared this engine, with the tiny bundle stored beside it (model_v1/, untrained random weights):
the synthetic phantom's maps and report, and SHA-256 digests of the report and maps of a real clinical FLAIR
(../shared/data; only digests, nothing that could be read back).
Its ``slice_scores`` and ``slice_anomaly_scores`` were rewritten when the slice score became the density map's 0.99
quantile and again when slice scores became the mean over the slice's most anomalous 100 mm^2 (issue 11);
the maps and every other value are the 7ddeb52 ones.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import require_data

from AnoDODELib import cli, worker
from AnoDODELib.bundle import load_model
from AnoDODELib.demo import make_phantom
from AnoDODELib.outputs import OUTPUT_KINDS, OutputSet, ScanInputs, score_to_files

REFERENCE = Path(__file__).parent / "data" / "scoring_reference"
VOLATILE = ("input", "mask", "contrasts", "model_dir", "seconds", "outputs")
#: Report keys added after the reference was written (issue 15; values tested in test_cli.py; brain_mask: issue
#: 20, tested in test_brain_mask.py).
ADDED = {
    "map_units",
    "model_version",
    "anomalous_volume_ml",
    "map_max",
    "map_p99",
    "most_anomalous_slices",
    "warnings",
    "brain_mask",
}
#: Allowed difference of the phantom's map from the reference where float arithmetic differs (another CPU).
#: On the machine that wrote the reference the maps are bit-identical (asserted by the real-case test).
MAP_ATOL = 1e-5


def reference() -> dict:
    return json.loads((REFERENCE / "reference.json").read_text(encoding="utf-8"))


def array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def stable(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in VOLATILE}


def as_referenced(report: dict) -> dict:
    """The stable keys the reference has (the added ones checked to be exactly ``ADDED``)."""
    assert report.keys() - reference()["phantom"]["report"].keys() - set(VOLATILE) == ADDED
    return {k: v for k, v in stable(report).items() if k not in ADDED}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the reference was written with one torch thread


@pytest.fixture(scope="module")
def reference_model():
    return load_model(REFERENCE / "model_v1")


@pytest.fixture(scope="module")
def phantom_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ref") / "phantom.nii.gz"
    sitk.WriteImage(make_phantom(spacing=(3.0, 3.0, 6.0)).image, str(path))
    return path


def test_phantom_matches_the_reference(reference_model, phantom_path, tmp_path):
    outputs = OutputSet.with_stem(tmp_path, "phantom")
    report = score_to_files(ScanInputs(phantom_path), outputs, reference_model, device="cpu")
    ref = reference()["phantom"]
    amap, ref_map = array(outputs.paths()["anomaly"]), array(REFERENCE / "phantom_anomaly.nii.gz")
    assert amap.dtype == ref_map.dtype and amap.shape == ref_map.shape
    assert np.abs(amap - ref_map).max() <= MAP_ATOL
    label, ref_label = array(outputs.paths()["label"]), array(REFERENCE / "phantom_label.nii.gz")
    near = np.abs(ref_map - ref["report"]["threshold"]) <= MAP_ATOL
    assert np.array_equal(label[~near], ref_label[~near])
    got, want = as_referenced(report), ref["report"]
    assert got.keys() == want.keys()
    for key, value in want.items():
        if key in ("volume_score_bpd", "slice_scores", "slice_anomaly_scores"):
            assert np.allclose(
                np.array(got[key], float), np.array(value, float), rtol=1e-5, atol=MAP_ATOL, equal_nan=True
            ), key
        elif key != "anomalous_voxels":
            assert got[key] == value, key
    assert abs(got["anomalous_voxels"] - want["anomalous_voxels"]) <= int(near.sum())
    assert json.loads(outputs.paths()["report"].read_text(encoding="utf-8")) == report


def test_real_scan_is_bit_identical_to_the_reference(reference_model, tmp_path):
    name = "wmh_clinical/2516038876/t2flair-stripped.nii.gz"
    source = require_data(*name.split("/"))
    ref = reference()[name]
    outputs = OutputSet.with_stem(tmp_path, "scan")
    report = score_to_files(ScanInputs(source), outputs, reference_model, device="cpu")
    # digests only: nothing derived from the patient scan is stored in the repository
    stable_json = json.dumps(as_referenced(report), sort_keys=True).encode()
    assert hashlib.sha256(stable_json).hexdigest() == ref["report_sha256"]
    assert digest(array(outputs.paths()["anomaly"])) == ref["anomaly_sha256"]
    assert digest(array(outputs.paths()["label"])) == ref["label_sha256"]


def test_cli_and_worker_write_the_same_set_and_report(phantom_path, tmp_path, capsys):
    model_dir = str(REFERENCE / "model_v1")
    assert (
        cli.main(
            [
                "score",
                str(phantom_path),
                "--model",
                model_dir,
                "--output-dir",
                str(tmp_path / "c"),
                "--device",
                "cpu",
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        worker.main(
            [
                "--input",
                str(phantom_path),
                "--model",
                model_dir,
                "--output-dir",
                str(tmp_path / "w"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.splitlines()[-1] == "DONE"
    plain = OutputSet.plain(tmp_path / "w")
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == sorted(plain.names.values())
    assert worker.OUTPUT_FILES == dict(plain.names)
    named = OutputSet.with_stem(tmp_path / "c", "phantom").paths()
    for kind in ("anomaly", "label"):
        assert np.array_equal(array(named[kind]), array(plain.paths()[kind]))
    assert named["figure"].read_bytes() == plain.paths()["figure"].read_bytes()
    from_cli, from_worker = (
        json.loads(p.read_text(encoding="utf-8")) for p in (named["report"], plain.paths()["report"])
    )
    assert from_cli.keys() == from_worker.keys()
    assert stable(from_cli) == stable(from_worker)
    assert from_cli["anodode_version"] and from_cli["model_dir"] == from_worker["model_dir"] == model_dir
    assert set(from_worker["outputs"]) == set(OUTPUT_KINDS)
    assert from_worker["outputs"]["figure"] == str(plain.paths()["figure"])


def test_map_units_follow_the_localisation():
    """The bundled map is sqrt(D) x brightness in the scan's own units; the plain density map is D's units."""
    import dataclasses
    from types import SimpleNamespace

    from AnoDODELib.config import LocalisationConfig
    from AnoDODELib.outputs import map_units

    def units(**kw):
        return map_units(SimpleNamespace(config=SimpleNamespace(localisation=LocalisationConfig(**kw))))

    assert units(method="combined") == "bits/dim × residual (z)"
    assert units(method="combined", intensity_product=True) == (
        "√(bits/dim × residual (z)) × brightness / the scan's brain Q0.75"
    )
    assert units(method="likelihood", intensity_product=True, brightness_quantile=None) == (
        "√(bits/dim) × normalised brightness"
    )
    shipped = load_model()
    assert map_units(shipped) == units(**dataclasses.asdict(shipped.config.localisation))
    assert "√" in map_units(shipped)
