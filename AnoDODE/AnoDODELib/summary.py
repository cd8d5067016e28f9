"""Per-scan statistics for the report, and the folder's summary: one row per input scored into the output
folder, in summary.csv and summary.json (see ``write_summary``).

A row holds the input's path and its status (``ok`` or the one-line error), and for a scored input the
values of its report: the volume score (bits/dim), the anomalous volume (mL, the label's voxels at the
threshold), the anomaly map's maximum and 99th percentile over the brain (map units), the three most
anomalous slices (index along the input's axial axis, see ``figure.most_anomalous_slices``), the seconds
scoring took, the device, the preset, and the model's name and version (the first 12 hex digits of its
weights' SHA-256, which changes whenever the weights do).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import atomic_write
from .figure import most_anomalous_slices

COLUMNS = (
    "input",
    "status",
    "volume_score_bpd",
    "anomalous_volume_ml",
    "map_max",
    "map_p99",
    "most_anomalous_slices",
    "seconds",
    "device",
    "preset",
    "model",
    "model_version",
)
#: Report keys copied into a row unchanged (the rest: input, status, model_version).
REPORT_KEYS = tuple(c for c in COLUMNS if c not in ("input", "status", "model_version"))
SUMMARY_FILES = ("summary.csv", "summary.json")
PENDING = "pending"
OK = "ok"


def map_statistics(
    anomaly_map: np.ndarray,
    label: np.ndarray,
    brain: np.ndarray,
    spacing_mm: Sequence[float],
    slice_anomaly_scores: Sequence[float | None],
    slice_mm: float,
    n_slices: int = 3,
) -> dict[str, Any]:
    """The report's scan statistics.

    anomalous_volume_ml = (number of label voxels) * prod(spacing_mm) / 1000;
    map_max, map_p99 = the maximum and the 0.99-quantile (numpy's linear interpolation) of the map over
    the ``brain`` voxels (map units; None when the brain is empty);
    most_anomalous_slices = ``most_anomalous_slices(slice_anomaly_scores, n_slices, slice_mm)``.
    ``anomaly_map``, ``label`` and ``brain`` share one array layout; ``slice_mm``: the axial spacing (mm).
    """
    if not (anomaly_map.shape == label.shape == brain.shape):
        raise ValueError(
            f"map {anomaly_map.shape}, label {label.shape} and brain {brain.shape} differ in shape"
        )
    values = np.asarray(anomaly_map, dtype=np.float64)[np.asarray(brain, dtype=bool)]
    voxel_ml = float(np.prod(np.asarray(spacing_mm, dtype=np.float64))) / 1000.0
    return {
        "anomalous_volume_ml": float(np.count_nonzero(label)) * voxel_ml,
        "map_max": float(values.max()) if values.size else None,
        "map_p99": float(np.quantile(values, 0.99)) if values.size else None,
        "most_anomalous_slices": most_anomalous_slices(slice_anomaly_scores, n_slices, slice_mm),
    }


def model_version(weights_sha256: str | None) -> str | None:
    """A model's version as written in reports: the first 12 hex digits of its weights' SHA-256."""
    return weights_sha256[:12] if weights_sha256 else None


def summary_row(
    input_path: str | os.PathLike, report: Mapping[str, Any] | None = None, error: str | None = None
) -> dict[str, Any]:
    """One row: from a scored input's ``report``, or for an input that failed with ``error`` (one line),
    or (neither) for an input not scored yet (status ``pending``)."""
    if report is not None and error is not None:
        raise ValueError("a row has a report or an error, not both")
    row: dict[str, Any] = {c: None for c in COLUMNS}
    row["input"] = str(input_path)
    if error is not None:
        row["status"] = " ".join(str(error).split()) or "error"
    elif report is None:
        row["status"] = PENDING
    else:
        row["status"] = OK
        row.update({k: report.get(k) for k in REPORT_KEYS})
        row["model_version"] = report.get("model_version")
    return row


def to_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """The rows as CSV text with a header of ``COLUMNS``; slices joined by ';', missing values empty."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _csv_value(row.get(c)) for c in COLUMNS})
    return buffer.getvalue()


def to_json(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as strict JSON: ``{"inputs": n, "ok": k, "failed": f, "pending": p, "rows": [...]}``."""
    statuses = [r["status"] for r in rows]
    data = {
        "inputs": len(rows),
        "ok": statuses.count(OK),
        "pending": statuses.count(PENDING),
        "failed": sum(s not in (OK, PENDING) for s in statuses),
        "rows": [{c: r.get(c) for c in COLUMNS} for r in rows],
    }
    return json.dumps(data, indent=2, allow_nan=False) + "\n"


def write_summary(
    rows: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike, protect: Iterable[str | os.PathLike] = ()
) -> tuple[Path, Path]:
    """Write summary.csv and summary.json into ``out_dir`` (created), each atomically (a reader sees the
    previous or the new file, never a part); never over one of ``protect`` (the inputs).

    The summary lists every input scored into the folder, not only this batch: ``rows`` replace the rows of
    the same inputs (the latest run of an input wins, in place) and rows of other inputs, e.g. of another run
    into the same folder, are kept. The read-merge-write is done holding an exclusive lock on the folder
    (``flock``, POSIX), so two runs writing at once never drop each other's rows."""
    out = Path(out_dir)
    protect = list(protect)
    out.mkdir(parents=True, exist_ok=True)
    paths = (out / SUMMARY_FILES[0], out / SUMMARY_FILES[1])
    with _folder_lock(out):
        merged = merge_rows(read_rows(paths[1]), rows)
        atomic_write.write_bytes(paths[0], to_csv(merged).encode(), protect, create_folder=True)
        atomic_write.write_bytes(paths[1], to_json(merged).encode(), protect, create_folder=True)
    return paths


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a summary.json, [] when there is none or it is not one (an unreadable file is replaced)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        return []
    return [dict(r) for r in rows if isinstance(r, dict) and isinstance(r.get("input"), str)]


def merge_rows(
    previous: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """``previous`` with each row of the same input replaced by the one in ``rows`` (in place), then the rows
    of ``rows`` whose input was not there, in their order."""
    new = {str(r["input"]): r for r in rows}
    merged = [new.pop(str(r["input"]), r) for r in previous]
    placed = {str(r["input"]) for r in merged}
    return merged + [r for r in rows if str(r["input"]) not in placed]


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``folder`` (``flock`` on the folder itself, so no lock file is left
    behind); a no-op where the platform has no ``fcntl`` (Windows) or the folder cannot be locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ";".join(str(v) for v in value)
    return value
