"""Batch summary rows and files, and the report's scan statistics (hand-computed values)."""

import csv
import io
import json

import numpy as np
import pytest

from AnoDODELib import summary
from AnoDODELib.summary import COLUMNS, map_statistics, summary_row, to_csv, to_json, write_summary


def test_map_statistics_by_hand():
    amap = np.zeros((4, 5, 5), np.float32)
    brain = np.zeros(amap.shape, bool)
    brain[1:3, :, :] = True  # 50 brain voxels
    amap[brain] = np.arange(50, dtype=np.float32)
    amap[0, 0, 0] = 1000.0  # outside the brain: not in max or p99
    label = amap > 44.5  # 5 brain voxels and the outside one
    stats = map_statistics(
        amap, label, brain, spacing_mm=(2.0, 1.0, 0.5), slice_anomaly_scores=[None, 2, 7, None], slice_mm=2.0
    )
    assert stats["anomalous_volume_ml"] == pytest.approx(6 * 1.0 / 1000)
    assert stats["map_max"] == 49.0
    assert stats["map_p99"] == pytest.approx(48.51)  # linear interpolation: 49 * 0.99 = 48.51
    assert stats["most_anomalous_slices"] == [2, 1]
    with pytest.raises(ValueError, match="shape"):
        map_statistics(amap, label[:1], brain, (1, 1, 1), [None] * 4, 1.0)


def _report(**kw):
    base = {
        "volume_score_bpd": 1.25,
        "anomalous_volume_ml": 3.5,
        "map_max": 9.0,
        "map_p99": 4.5,
        "most_anomalous_slices": [7, 2, 11],
        "seconds": 12.5,
        "device": "cpu",
        "preset": "fast",
        "model": "m",
        "model_version": "0123456789ab",
        "slice_scores": [1, 2],
    }
    return {**base, **kw}


def test_rows_ok_failed_pending():
    ok = summary_row("a.nii.gz", _report())
    assert list(ok) == list(COLUMNS)
    assert ok["status"] == "ok" and ok["map_p99"] == 4.5 and ok["most_anomalous_slices"] == [7, 2, 11]
    assert ok["model_version"] == "0123456789ab" and "slice_scores" not in ok
    bad = summary_row("b.nii.gz", error="b.nii.gz: not a readable image\n(detail)")
    assert bad["status"] == "b.nii.gz: not a readable image (detail)"
    assert all(bad[c] is None for c in COLUMNS if c not in ("input", "status"))
    assert summary_row("c.nrrd")["status"] == "pending"
    with pytest.raises(ValueError):
        summary_row("a", _report(), error="x")


def test_csv_and_json_round_trip():
    rows = [summary_row("dir/a, b.nii.gz", _report()), summary_row("c.nii.gz", error="boom")]
    back = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert [r["input"] for r in back] == ["dir/a, b.nii.gz", "c.nii.gz"]
    assert back[0]["most_anomalous_slices"] == "7;2;11" and float(back[0]["map_max"]) == 9.0
    assert back[1]["status"] == "boom" and back[1]["volume_score_bpd"] == ""
    data = json.loads(to_json(rows))
    assert (data["inputs"], data["ok"], data["failed"], data["pending"]) == (2, 1, 1, 0)
    assert data["rows"][0] == rows[0]
    with pytest.raises(ValueError):  # strict JSON: NaN is refused, not written
        to_json([summary_row("x", _report(map_max=float("nan")))])


def test_write_summary_is_atomic_and_protects_inputs(tmp_path):
    rows = [summary_row("a.nii.gz", _report())]
    csv_path, json_path = write_summary(rows, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.csv", "summary.json"]  # no temp left
    assert json.loads(json_path.read_text(encoding="utf-8"))["rows"][0]["volume_score_bpd"] == 1.25
    assert csv_path.read_text(encoding="utf-8").splitlines()[0] == ",".join(COLUMNS)
    with pytest.raises(ValueError, match="refusing to overwrite"):
        write_summary(rows, tmp_path, protect=[tmp_path / "summary.csv"])


def test_model_version():
    assert summary.model_version("b926302dddb5e187433d7088") == "b926302dddb5"
    assert summary.model_version(None) is None


def test_pending_rows_are_counted_as_pending_not_failed():
    """A batch in progress: one scored, one failed, two not scored yet; summary.json counts 1 / 1 / 2."""
    rows = [
        summary_row("a.nii.gz", _report()),
        summary_row("b.nii.gz", error="b.nii.gz: boom"),
        summary_row("c.nii.gz"),
        summary_row("d.nii.gz"),
    ]
    data = json.loads(to_json(rows))
    assert (data["inputs"], data["ok"], data["failed"], data["pending"]) == (4, 1, 1, 2)
