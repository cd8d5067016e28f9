"""Score to files: one scan in, its output set out (anomaly map, label, figure, report), written as one atomic set.

:func:`score_to_files` is the one engine entry point that reads and validates a scan (and its mask and other
contrasts), scores it, builds the report and writes the set; ``anodode score`` (cli.py) and the Slicer worker
(worker.py) only add their own I/O protocol (argument parsing, progress display, exit codes) around it.

The output set (:class:`OutputSet`), all in one folder:

=========  ===========================================================================================
anomaly    float32 voxel anomaly map on the input's exact grid (size, spacing, origin, direction)
label      uint8 0/1: anomaly > threshold, same grid
brainmask  uint8 0/1: the brain the scan was scored over (given, extracted or the non-background), same grid
figure     PNG: the most anomalous axial slices with the map and label, colour bar, slice curve (figure.py);
           left out of a set that names no figure file (the Slicer worker's ``--no-figure``)
report     JSON (strict: no NaN/Infinity), see :func:`build_report`; written last, it marks the set complete
=========  ===========================================================================================

A caller adds files of its own to the set as :class:`ExtraOutput` writers (e.g. a DICOM input's DICOM SEG,
dicom_seg.py; a BIDS derivative's mask sidecar, bids.py): written after the maps and the figure, before the
report, so they appear with the set or not at all.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import SimpleITK as sitk

from . import __version__, figure, summary, volume_io
from .atomic_write import OutputError, StagedWrite, check_protect
from .brain_mask import BrainMask, check_mode
from .pipeline import PRESETS, ScoreResult, check_contrasts, score_image

logger = logging.getLogger(__name__)
Callback = Callable[[float, str], None]

F = TypeVar("F", bound=Callable[..., Any])
#: The warnings logged by the engine while the current scan is scored (``collecting_warnings``), for its report.
_WARNINGS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("anodode_warnings", default=None)


class _WarningList(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(" ".join(record.getMessage().split()))


def collecting_warnings(function: F) -> F:
    """Decorator: while ``function`` runs, every warning the engine logs (the ``AnoDODELib`` loggers: several
    DICOM series, a scan that does not look skull-stripped, a contrast resampled, ...) is also kept, one line
    each, for :func:`build_report`'s ``warnings``; they are still logged as before."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        lines: list[str] = []
        handler = _WarningList(lines)
        engine = logging.getLogger(__name__.rpartition(".")[0])
        engine.addHandler(handler)
        token = _WARNINGS.set(lines)
        try:
            return function(*args, **kwargs)
        finally:
            _WARNINGS.reset(token)
            engine.removeHandler(handler)

    return wrapper  # type: ignore[return-value]


#: The kinds of file in an output set, in the order they are moved into place (the report last).
OUTPUT_KINDS = ("anomaly", "label", "brainmask", "figure", "report")
#: The order of the report's "outputs" entry (kept as in reports written before this module existed).
_REPORT_ORDER = ("anomaly", "label", "report", "figure", "brainmask")


@dataclass(frozen=True)
class ScanInputs:
    """The files scored together: the model's primary contrast, an optional brain mask on its grid, and a
    multi-contrast model's other contrasts by name (aligned with the primary)."""

    image: Path
    mask: Path | None = None
    contrasts: Mapping[str, Path] = field(default_factory=dict)

    def files(self) -> list[Path]:
        """Every input file, primary first: the scan, the mask when given, then the other contrasts."""
        return [self.image, *([self.mask] if self.mask else []), *self.contrasts.values()]


@dataclass(frozen=True)
class OutputSet:
    """Where a scan's outputs go: ``folder`` and one file name per kind of ``OUTPUT_KINDS``; a set without a
    "figure" name is written without the figure (nothing is rendered)."""

    folder: Path
    names: Mapping[str, str]

    @classmethod
    def with_stem(cls, folder: Path, stem: str, image_suffix: str = ".nii.gz") -> OutputSet:
        """``<stem>_anomaly<suffix>``, ``<stem>_label<suffix>``, ``<stem>_brainmask<suffix>``,
        ``<stem>_figure.png``, ``<stem>_report.json`` (the ``anodode score`` layout, several scans per folder)."""
        return cls(
            Path(folder),
            {
                "anomaly": f"{stem}_anomaly{image_suffix}",
                "label": f"{stem}_label{image_suffix}",
                "brainmask": f"{stem}_brainmask{image_suffix}",
                "figure": f"{stem}_figure.png",
                "report": f"{stem}_report.json",
            },
        )

    @classmethod
    def plain(cls, folder: Path, image_suffix: str = ".nrrd", figure: bool = True) -> OutputSet:
        """``anomaly<suffix>``, ``label<suffix>``, ``brainmask<suffix>``, ``figure.png`` (unless ``figure`` is
        False), ``report.json`` (one scan per folder, the Slicer worker's layout)."""
        names = {
            "anomaly": f"anomaly{image_suffix}",
            "label": f"label{image_suffix}",
            "brainmask": f"brainmask{image_suffix}",
            "figure": "figure.png",
            "report": "report.json",
        }
        if not figure:
            del names["figure"]
        return cls(Path(folder), names)

    def paths(self) -> dict[str, Path]:
        """Final path of each kind the set names, in ``OUTPUT_KINDS`` order."""
        return {k: self.folder / self.names[k] for k in OUTPUT_KINDS if k in self.names}


@dataclass(frozen=True)
class ExtraOutput:
    """One more file of a scan's output set, beside the ``OUTPUT_KINDS``: ``name`` (a bare file name) in the
    set's folder, listed in the report's ``outputs`` as ``kind``. ``write(path, image, result, report)``
    writes it to ``path`` (in the staging folder) from the scan read, its :class:`ScoreResult` and its report;
    an exception fails the whole set. ``reads``: files it reads (protected like the scan's inputs)."""

    kind: str
    name: str
    write: Callable[[Path, sitk.Image, ScoreResult, Mapping[str, Any]], None]
    reads: tuple[Path, ...] = ()


def build_report(
    inputs: ScanInputs,
    image: sitk.Image,
    result: ScoreResult,
    model: Any,
    preset: str,
    outputs: OutputSet,
    extras: Sequence[ExtraOutput] = (),
) -> dict[str, Any]:
    """The report of one scored scan (JSON-ready: floats, ints, strings, lists, None).

    volume_score_bpd: mean per-location negative log-likelihood in bits per dimension; slice_scores: the
    density map's mean over each axial slice's most anomalous 100 mm^2 of brain (bpd units), indexed along ``slice_axis`` (numpy axis of the input array), None without brain;
    slice_anomaly_scores: the anomaly map's mean over each slice's most anomalous 100 mm^2 of brain; threshold: the
    label threshold (anomaly map units, ``map_units``); anomalous_volume_ml, map_max, map_p99,
    most_anomalous_slices: see ``summary.map_statistics``; nfe / nfe_reconstruction: score-network
    evaluations per location; seconds: scoring wall time (s), brain extraction included; model_version:
    ``summary.model_version``; brain_mask: where the brain mask came from (``brain_mask.BrainMask.describe``:
    source "file", "extracted" or "background", the extraction tool and version, its seconds, the volume in mL);
    outputs: the path of each file of the set, the ``extras`` after the ``OUTPUT_KINDS``;
    warnings: the warnings logged while the scan was read and scored (inside ``collecting_warnings``), one
    line each, in order, without repeats.
    """
    paths = outputs.paths()
    primary = model.config.features.contrasts[0]
    directory = getattr(model, "directory", None)
    stats = summary.map_statistics(
        result.canonical_map,
        result.canonical_label,
        result.canonical_brain,
        image.GetSpacing(),
        result.slice_anomaly_scores,
        result.geometry.spacing_mm[0],
    )
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    brain = result.brain_mask or BrainMask(result.brain, "file" if inputs.mask else "background")
    return {
        "input": str(inputs.image),
        "mask": str(inputs.mask) if inputs.mask else None,
        "brain_mask": brain.describe(voxel_ml),
        "contrasts": {primary: str(inputs.image), **{c: str(p) for c, p in inputs.contrasts.items()}},
        "volume_score_bpd": float(result.volume_score_bpd),
        "slice_axis": int(result.slice_axis),
        "slice_scores": [None if s is None else float(s) for s in result.slice_scores],
        "slice_anomaly_scores": [None if s is None else float(s) for s in result.slice_anomaly_scores],
        "threshold": float(result.threshold),
        "map_units": map_units(model),
        "model": getattr(model, "name", "unnamed"),
        "model_dir": None if directory is None else str(directory),
        "model_version": summary.model_version(getattr(model, "weights_sha256", None)),
        "device": str(result.device),
        "preset": preset,
        "seconds": round(float(result.seconds), 3),
        "nfe": int(result.nfe),
        "nfe_reconstruction": int(result.nfe_reconstruction),
        "anomalous_voxels": int(np.count_nonzero(result.canonical_label)),
        **stats,
        "warnings": list(dict.fromkeys(_WARNINGS.get() or [])),
        "anodode_version": __version__,
        "outputs": {
            **{k: str(paths[k]) for k in _REPORT_ORDER if k in paths},
            **{e.kind: str(outputs.folder / e.name) for e in extras},
        },
    }


def map_units(model: Any) -> str:
    """The units of the model's anomaly map: ``figure.MAP_UNITS`` of its localisation method, or with the
    intensity product (``pipeline.weighted_map``) the square root of those times the brightness, in units of
    the scan's own ``brightness_quantile`` or, without one, of the white-matter spread."""
    loc = model.config.localisation
    units = figure.MAP_UNITS.get(loc.method, loc.method)
    if not loc.intensity_product:
        return units
    brightness = (
        "brightness / the scan's brain Q" + f"{loc.brightness_quantile:g}"
        if loc.brightness_quantile is not None
        else "normalised brightness"
    )
    return f"√({units}) × {brightness}"


def report_bytes(report: Mapping[str, Any]) -> bytes:
    """The report as strict JSON (``ValueError`` for a NaN or infinite number), indented, newline-terminated."""
    return (json.dumps(report, indent=2, allow_nan=False) + "\n").encode()


def figure_png(
    image: sitk.Image, result: ScoreResult, report: Mapping[str, Any], slice_area_mm2: float = 100.0
) -> bytes:
    """The scan's figure (figure.py) as PNG bytes, titled with the input's name and the report's numbers; the
    map in ``figure.READER_UNITS``, the slice curve over the model's ``slice_area_mm2``."""
    title = Path(report["input"]).name
    subtitle = (
        f"volume score {report['volume_score_bpd']:.3f} bpd · anomalous volume "
        f"{report['anomalous_volume_ml']:.2f} mL at threshold {report['threshold']:.3g} · "
        f"preset {report['preset']} · model {report['model']}"
    )
    geo = result.geometry
    data = figure.canonical_figure_input(
        geo,
        geo.to_canonical(sitk.GetArrayViewFromImage(image)),
        result.canonical_map,
        result.canonical_label,
        result.threshold,
        result.canonical_slice_anomaly_scores,
        figure.READER_UNITS,
        title,
        subtitle,
        slice_position_mm=figure.slice_positions_mm(image, geo),
        slice_area_mm2=slice_area_mm2,
    )
    return figure.render_png(data)


@collecting_warnings
def score_to_files(
    inputs: ScanInputs,
    outputs: OutputSet,
    model: Any,
    *,
    threshold: float | None = None,
    device: str = "auto",
    preset: str = "standard",
    callback: Callback | None = None,
    protect: Iterable[Path] = (),
    extras: Sequence[ExtraOutput] = (),
    report_fields: Mapping[str, Any] | None = None,
    brain_extraction: str = "auto",
) -> dict[str, Any]:
    """Read, validate and score one scan with a loaded model, and write its output set; returns the report.

    Order: the outputs are checked not to replace any input (``inputs`` and the extra ``protect`` paths, e.g.
    the other scans of a batch); the inputs are read and validated; the output folder is created and a
    staging folder made in it (so an unwritable folder fails before scoring); the scan is scored; the set is
    written into the staging folder and moved into place, the report last. On any error or interrupt nothing
    of this set is left behind. Raises ``volume_io.InputError`` (a bad input: unreadable, corrupt, too small to
    be a head, see ``volume_io.read_image`` and ``check_head_size``), ``atomic_write.OutputError`` (an
    unusable output folder), ``ValueError`` (a bad preset, a non-finite threshold, an unavailable device),
    each with a one-line message. A mask covering a lesion-sized part of the scan is scored with a warning.
    Without a mask, ``brain_extraction`` ("auto", "always", "never"; see brain_mask.py) decides the brain;
    an implausible extraction is an ``InputError``.

    ``extras``: more files of the set (:class:`ExtraOutput`), written before the report. ``report_fields``:
    keys added to the report (e.g. a BIDS sidecar's ``Sources``); ``ValueError`` for one the report has.

    ``callback(fraction, message)``: progress in [0, 1], non-decreasing.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    if threshold is not None and not (math.isfinite(threshold) and threshold >= 0):
        raise ValueError(
            f"the threshold must be a finite number >= 0 (the anomaly map is >= 0), got {threshold}"
        )
    check_mode(brain_extraction)
    if inputs.mask is not None and brain_extraction == "always":
        raise ValueError("a brain mask was given: brain extraction 'always' contradicts it")
    report_progress = callback or (lambda fraction, message: None)
    protected = [*inputs.files(), *protect, *(p for e in extras for p in e.reads)]
    kinds = [*OUTPUT_KINDS, *(e.kind for e in extras)]
    files = [*outputs.names.values(), *(e.name for e in extras)]
    if len(set(kinds)) != len(kinds) or len(set(files)) != len(files):
        raise ValueError(f"an output kind or file name repeats in the set: {kinds}, {files}")
    for path in [*outputs.paths().values(), *(outputs.folder / e.name for e in extras)]:
        check_protect(path, protected)
        if path.is_dir():
            raise OutputError(f"{path}: a folder is in the way of this output")
    check_contrasts(model.config, inputs.contrasts, str(inputs.image))
    report_progress(0.0, "reading input")
    image = volume_io.read_image(inputs.image)
    volume_io.check_head_size(image, str(inputs.image))
    volume_io.check_scan_geometry(image, str(inputs.image), model.config.preprocess.in_plane_spacing_mm)
    mask = volume_io.read_mask(inputs.mask, image) if inputs.mask else None
    if mask is not None:
        warning = volume_io.mask_coverage_warning(sitk.GetArrayViewFromImage(image), mask, str(inputs.mask))
        if warning:
            logger.warning(warning)
    others = {c: volume_io.read_image(p) for c, p in inputs.contrasts.items()}
    with StagedWrite(outputs.folder, protected) as staged:
        result = score_image(
            image,
            model,
            mask,
            threshold=threshold,
            device=device,
            preset=preset,
            callback=lambda f, m: report_progress(0.05 + 0.9 * min(1.0, max(0.0, f)), m),
            name=str(inputs.image),
            other_contrasts=others,
            other_names={c: str(p) for c, p in inputs.contrasts.items()},
            brain_extraction=brain_extraction,
        )
        report_progress(0.96, "writing results")
        report = build_report(inputs, image, result, model, preset, outputs, extras)
        clash = sorted(set(report_fields or {}) & report.keys())
        if clash:
            raise ValueError(f"report_fields {clash} would replace the report's own keys")
        report.update(report_fields or {})
        names = outputs.names
        volume_io.write_image(
            volume_io.image_like(result.anomaly_map.astype(np.float32), image, sitk.sitkFloat32),
            staged.path(names["anomaly"]),
        )
        volume_io.write_image(
            volume_io.image_like(result.label.astype(np.uint8), image, sitk.sitkUInt8),
            staged.path(names["label"]),
        )
        if "brainmask" in names:
            volume_io.write_image(
                volume_io.image_like(result.brain.astype(np.uint8), image, sitk.sitkUInt8),
                staged.path(names["brainmask"]),
            )
        if "figure" in names:
            staged.path(names["figure"]).write_bytes(
                figure_png(image, result, report, model.config.localisation.slice_area_mm2)
            )
        for extra in extras:
            extra.write(staged.path(extra.name), image, result, report)
        staged.path(names["report"]).write_bytes(report_bytes(report))
        staged.commit()
    report_progress(1.0, "done")
    return report
