"""BIDS-App entry point: score the FLAIRs of a BIDS dataset into a BIDS-Derivatives dataset.

    anodode bids BIDS_DIR OUTPUT_DIR participant [--participant-label L ...] [--session S ...]
    anodode bids BIDS_DIR OUTPUT_DIR group       [--participant-label L ...] [--session S ...]

``participant`` scores each selected participant's FLAIRs, ``sub-<L>/[ses-<S>/]anat/*_FLAIR.nii[.gz]`` of
BIDS_DIR (:func:`select`), through ``outputs.score_to_files`` (the one scoring path) and writes, beside
``OUTPUT_DIR/dataset_description.json`` (``DatasetType: derivative``, ``GeneratedBy`` AnoDODE) and
``OUTPUT_DIR/.bidsignore``, in ``OUTPUT_DIR/sub-<L>/[ses-<S>/]anat/``, for the FLAIR ``<source>_FLAIR.nii.gz``
(``<source>`` = ``sub-<L>[_ses-<S>][_acq-...][_ce-...][_rec-...][_run-...]...``, its entities kept in order):

=========================================  ====================================================================
``<source>_desc-anomaly_FLAIR.nii.gz``     the float32 anomaly map, on the FLAIR's grid
``<source>_desc-anomaly_FLAIR.json``       its sidecar: the scan's report (outputs.build_report) with ``Sources``
                                           and ``Description``; written last, it marks the set complete
``<source>_desc-anomaly_mask.nii.gz``      the uint8 0/1 label (map > threshold): a BIDS binary mask
``<source>_desc-anomaly_mask.json``        its sidecar: ``Type`` "Lesion", ``Sources`` (the map), threshold
``<source>_desc-brain_mask.nii.gz``        the uint8 0/1 brain the scan was scored over (given or extracted)
``<source>_desc-anomaly_FLAIR.png``        the figure (not a BIDS file: listed in ``.bidsignore``)
=========================================  ====================================================================

The names follow the BIDS derivative rules for anat data: the source's entities, then ``desc``, then the
suffix (``FLAIR`` for a derived FLAIR map, ``mask`` for a binary mask). Participant runs write no shared
file but ``dataset_description.json`` (the same content each time), so several can run at once, one per
participant, as BIDS-Apps are run on clusters. ``group`` scores nothing: it reads the participants' sidecars
and writes the batch summary across them, ``OUTPUT_DIR/summary.csv`` and ``summary.json`` (summary.py; the
JSON adds ``without_flair``), also listed in ``.bidsignore``.

An invalid dataset or selection (no folder, no ``dataset_description.json``, an unknown participant, no FLAIR
at all) is a :class:`BidsError` (one line, exit 2); a participant without a FLAIR is listed, not fatal.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__, atomic_write, summary
from .outputs import ExtraOutput, OutputSet

logger = logging.getLogger(__name__)

#: The BIDS version whose derivative rules the names follow (checked against its schema in the tests).
BIDS_VERSION = "1.11.2"
#: A BIDS label (the value of an entity).
LABEL = re.compile(r"[0-9a-zA-Z+]+")
#: The ``desc`` entity's value of every AnoDODE derivative.
DESC = "anomaly"
#: Entities a raw FLAIR's name may carry after sub and ses (BIDS anat non-parametric images), in BIDS order;
#: each is allowed, in the same order, in the derivative map and mask names.
SOURCE_ENTITIES = ("task", "acq", "ce", "rec", "run", "echo", "part", "chunk")
FLAIR_ENDINGS = ("_FLAIR.nii.gz", "_FLAIR.nii")
GENERATOR = "AnoDODE"
#: Files of OUTPUT_DIR that are not BIDS files (the validators skip what .bidsignore lists).
BIDSIGNORE = ("*_desc-anomaly_FLAIR.png", "/summary.csv", "/summary.json")
LEVELS = ("participant", "group")


class BidsError(ValueError):
    """An invalid BIDS dataset, selection or output folder; the message is one line, user-facing."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


@dataclass(frozen=True)
class FlairScan:
    """One raw FLAIR of the dataset: ``path`` = BIDS_DIR / ``relative`` (POSIX, BIDS-relative)."""

    subject: str
    session: str | None
    path: Path
    relative: str

    @property
    def source(self) -> str:
        """The file name without ``_FLAIR.nii[.gz]``: ``sub-<L>[_ses-<S>]_<entities>``."""
        name = self.path.name
        return next(name[: -len(e)] for e in FLAIR_ENDINGS if name.endswith(e))

    def folder(self, output_dir: Path) -> Path:
        """``output_dir/sub-<L>/[ses-<S>/]anat``."""
        folder = Path(output_dir) / f"sub-{self.subject}"
        return (folder / f"ses-{self.session}" if self.session else folder) / "anat"

    def outputs(self, output_dir: Path) -> OutputSet:
        """The derivative names of the output set (module docstring)."""
        base = f"{self.source}_desc-{DESC}"
        return OutputSet(
            self.folder(output_dir),
            {
                "anomaly": f"{base}_FLAIR.nii.gz",
                "label": f"{base}_mask.nii.gz",
                "brainmask": f"{self.source}_desc-brain_mask.nii.gz",
                "figure": f"{base}_FLAIR.png",
                "report": f"{base}_FLAIR.json",
            },
        )

    def derivative(self, kind: str) -> str:
        """The BIDS-relative path (POSIX) of the output ``kind`` in the derivative dataset."""
        folder = f"sub-{self.subject}/" + (f"ses-{self.session}/" if self.session else "") + "anat"
        return f"{folder}/{self.outputs(Path('.')).names[kind]}"


@dataclass(frozen=True)
class Selection:
    """The FLAIRs to score, and the selected participants without any (``sub-<L>``, sorted)."""

    scans: list[FlairScan] = field(default_factory=list)
    without_flair: list[str] = field(default_factory=list)


def read_description(bids_dir: Path) -> dict[str, Any]:
    """The dataset's ``dataset_description.json``; :class:`BidsError` for a missing folder or file, or one
    that is not a JSON object."""
    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise BidsError(f"{bids_dir}: no such folder (BIDS_DIR must be a BIDS dataset folder)")
    path = bids_dir / "dataset_description.json"
    if not path.is_file():
        raise BidsError(f"{bids_dir}: not a BIDS dataset (no dataset_description.json)")
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BidsError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(description, dict):
        raise BidsError(f"{path}: not a JSON object")
    return description


def _labels(values: Sequence[str] | None, prefix: str, what: str) -> list[str] | None:
    """Labels given with or without their ``prefix`` (``sub-``, ``ses-``); BidsError for a malformed one."""
    if not values:
        return None
    out = []
    for value in values:
        label = value[len(prefix) :] if value.startswith(prefix) else value
        if not LABEL.fullmatch(label):
            raise BidsError(f"{what} {value!r} is not a BIDS label (letters and digits only)")
        out.append(label)
    return out


def parse_flair_name(name: str, subject: str, session: str | None) -> bool:
    """Whether ``name`` is a raw FLAIR of ``sub-<subject>`` [``ses-<session>``]: ``sub-<L>[_ses-<S>]``, then
    entities of ``SOURCE_ENTITIES`` in their order, each once, then ``_FLAIR.nii.gz`` (or ``.nii``)."""
    ending = next((e for e in FLAIR_ENDINGS if name.endswith(e)), None)
    if ending is None:
        return False
    parts = name[: -len(ending)].split("_")
    head = [f"sub-{subject}", *([f"ses-{session}"] if session else [])]
    if parts[: len(head)] != head:
        return False
    order = []
    for part in parts[len(head) :]:
        key, sep, value = part.partition("-")
        if not sep or key not in SOURCE_ENTITIES or not LABEL.fullmatch(value):
            return False
        order.append(SOURCE_ENTITIES.index(key))
    return order == sorted(set(order))


def select(
    bids_dir: Path, participant_labels: Sequence[str] | None = None, sessions: Sequence[str] | None = None
) -> Selection:
    """The FLAIRs of the selected participants (all ``sub-*`` folders by default) and sessions (all, and
    session-less data, by default): ``sub-<L>/anat/`` and ``sub-<L>/ses-<S>/anat/`` files named as
    :func:`parse_flair_name` accepts (others are skipped with a warning), sorted by path.

    :class:`BidsError` for an invalid dataset (:func:`read_description`, no ``sub-*`` folder), a malformed or
    unknown participant label, or no FLAIR at all in the selection.
    """
    bids_dir = Path(bids_dir)
    read_description(bids_dir)
    wanted = _labels(participant_labels, "sub-", "participant label")
    wanted_sessions = _labels(sessions, "ses-", "session")
    present = sorted(
        p.name[4:]
        for p in bids_dir.iterdir()
        if p.is_dir() and p.name.startswith("sub-") and LABEL.fullmatch(p.name[4:])
    )
    if not present:
        raise BidsError(f"{bids_dir}: not a BIDS dataset with participants (no sub-<label> folder)")
    unknown = [label for label in wanted or [] if label not in present]
    if unknown:
        raise BidsError(
            f"participant(s) {', '.join(unknown)} not in {bids_dir} (it has {', '.join(present)})"
        )
    selection = Selection()
    for subject in dict.fromkeys(wanted or present):
        root = bids_dir / f"sub-{subject}"
        folders: list[tuple[str | None, Path]] = []
        if wanted_sessions is None:
            folders.append((None, root / "anat"))
        for ses in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("ses-")):
            label = ses.name[4:]
            if LABEL.fullmatch(label) and (wanted_sessions is None or label in wanted_sessions):
                folders.append((label, ses / "anat"))
        found = 0
        for session, anat in folders:
            if not anat.is_dir():
                continue
            for path in sorted(anat.iterdir()):
                if path.name.startswith(".") or not path.name.endswith(FLAIR_ENDINGS) or not path.is_file():
                    continue
                if not parse_flair_name(path.name, subject, session):
                    logger.warning("%s: not a BIDS FLAIR name for its folder; skipped", path)
                    continue
                selection.scans.append(
                    FlairScan(subject, session, path, path.relative_to(bids_dir).as_posix())
                )
                found += 1
        if not found:
            selection.without_flair.append(f"sub-{subject}")
    if not selection.scans:
        sessions_text = f" in session(s) {', '.join(wanted_sessions)}" if wanted_sessions else ""
        raise BidsError(f"{bids_dir}: no FLAIR (*_FLAIR.nii.gz) for the selected participants{sessions_text}")
    return selection


def dataset_description(bids_dir: Path, model: Any) -> dict[str, Any]:
    """The derivative dataset's ``dataset_description.json``: Name, BIDSVersion, ``DatasetType:
    derivative``, GeneratedBy (AnoDODE, its version, the model), SourceDatasets and DatasetLinks (``raw``:
    BIDS_DIR, which the sidecars' ``bids:raw:`` Sources refer to)."""
    raw = Path(bids_dir).resolve().as_uri()
    version = summary.model_version(getattr(model, "weights_sha256", None))
    return {
        "Name": "AnoDODE anomaly maps",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": GENERATOR,
                "Version": __version__,
                "Description": f"unsupervised anomaly detection in brain MRI; model {getattr(model, 'name', 'unnamed')}"
                + (f" (version {version})" if version else ""),
            }
        ],
        "SourceDatasets": [{"URL": raw}],
        "DatasetLinks": {"raw": raw},
    }


def check_output_dir(bids_dir: Path, output_dir: Path) -> None:
    """:class:`BidsError` when OUTPUT_DIR is BIDS_DIR itself (derivatives go beside or under it, e.g.
    BIDS_DIR/derivatives/anodode) or is a file, or holds a ``dataset_description.json`` that AnoDODE did not
    write (another dataset, never written over)."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise BidsError(f"{output_dir}: OUTPUT_DIR is a file")
    if output_dir.resolve() == Path(bids_dir).resolve():
        raise BidsError(
            "OUTPUT_DIR is BIDS_DIR; write the derivatives elsewhere (e.g. BIDS_DIR/derivatives/anodode)"
        )
    path = output_dir / "dataset_description.json"
    if path.exists():
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            existing = None
        generators = existing.get("GeneratedBy") if isinstance(existing, dict) else None
        ours = isinstance(generators, list) and any(
            isinstance(g, dict) and g.get("Name") == GENERATOR for g in generators
        )
        if not (ours and existing.get("DatasetType") == "derivative"):
            raise BidsError(
                f"{output_dir} holds another dataset (its dataset_description.json is not AnoDODE's); "
                "choose an empty folder or an AnoDODE output folder"
            )


def write_dataset_files(output_dir: Path, bids_dir: Path, model: Any) -> None:
    """Write ``dataset_description.json`` and ``.bidsignore`` into ``output_dir`` (created), each atomically,
    after :func:`check_output_dir`; the inputs' dataset files are protected."""
    check_output_dir(bids_dir, output_dir)
    protect = [Path(bids_dir) / "dataset_description.json", Path(bids_dir) / ".bidsignore"]
    description = json.dumps(dataset_description(bids_dir, model), indent=2) + "\n"
    atomic_write.write_bytes(
        Path(output_dir) / "dataset_description.json", description.encode(), protect, create_folder=True
    )
    atomic_write.write_bytes(
        Path(output_dir) / ".bidsignore", ("\n".join(BIDSIGNORE) + "\n").encode(), protect, create_folder=True
    )


def report_fields(scan: FlairScan) -> dict[str, Any]:
    """The BIDS keys the map's sidecar (the scan's report) adds: ``Sources`` (the raw FLAIR as a BIDS URI
    into DatasetLinks ``raw``) and ``Description``."""
    return {
        "Sources": [f"bids:raw:{scan.relative}"],
        "Description": "AnoDODE voxel anomaly map of the FLAIR (units: map_units); the keys other than "
        "Sources and Description are AnoDODE's report",
    }


def mask_sidecar(scan: FlairScan) -> ExtraOutput:
    """The mask's JSON sidecar as an extra file of the scan's output set: ``Type`` "Lesion" (the BIDS mask
    type for lesion candidates), ``Sources`` (the map it thresholds, a BIDS URI in this dataset), the
    ``Threshold`` and its units."""
    name = scan.outputs(Path(".")).names["label"].replace(".nii.gz", ".json")

    def write(path: Path, image: Any, result: Any, report: Mapping[str, Any]) -> None:
        sidecar = {
            "Type": "Lesion",
            "Description": "AnoDODE anomaly label: the anomaly map above the threshold",
            "Sources": [f"bids::{scan.derivative('anomaly')}"],
            "Threshold": report["threshold"],
            "ThresholdUnits": report["map_units"],
        }
        path.write_text(
            json.dumps(sidecar, indent=2, ensure_ascii=False, allow_nan=False) + "\n",
            encoding="utf-8",
        )

    return ExtraOutput("mask_sidecar", name, write)


def group_rows(selection: Selection, output_dir: Path) -> list[dict[str, Any]]:
    """One ``summary.summary_row`` per selected FLAIR: from its sidecar in ``output_dir`` (the set's marker:
    present only when the set is complete), or status "no derivatives (participant level not run, or it
    failed)" / "unreadable sidecar ..." when there is none or it cannot be read."""
    rows = []
    for scan in selection.scans:
        sidecar = Path(output_dir) / scan.derivative("report")
        if not sidecar.is_file():
            rows.append(
                summary.summary_row(
                    scan.path, error="no derivatives (participant level not run, or it failed)"
                )
            )
            continue
        try:
            report = json.loads(sidecar.read_text(encoding="utf-8"))
            if not isinstance(report, dict):
                raise ValueError("not a JSON object")
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            rows.append(summary.summary_row(scan.path, error=f"unreadable sidecar {sidecar} ({exc})"))
            continue
        rows.append(summary.summary_row(scan.path, report))
    return rows


def write_group_summary(
    rows: Sequence[Mapping[str, Any]], without_flair: Sequence[str], output_dir: Path, protect: Sequence[Path]
) -> tuple[Path, Path]:
    """Write ``summary.csv`` and ``summary.json`` (summary.py's, the JSON with ``without_flair`` added) into
    ``output_dir``, each atomically; returns their paths."""
    data = json.loads(summary.to_json(rows))
    data["without_flair"] = list(without_flair)
    csv_path, json_path = (Path(output_dir) / name for name in summary.SUMMARY_FILES)
    atomic_write.write_bytes(csv_path, summary.to_csv(rows).encode(), protect)
    atomic_write.write_bytes(
        json_path, (json.dumps(data, indent=2, allow_nan=False) + "\n").encode(), protect
    )
    return csv_path, json_path
