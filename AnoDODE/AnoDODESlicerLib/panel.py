"""The numbers and texts the module panel shows, computed without Qt, torch or a running Slicer.

Model facts come from the bundle's ``model.json`` (read as JSON: the engine is not imported in Slicer's
process); engine warnings from the worker's ``[WARNING] ...`` stderr lines; device facts from the worker's
``--device-info`` answer.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

WARNING_PREFIX = "[WARNING] "
SLIDER_STEPS = 500  # the threshold slider moves in 1/SLIDER_STEPS of its range


@dataclass(frozen=True)
class ModelInfo:
    """What the panel needs to know about a model bundle before running it."""

    folder: Path
    name: str
    description: str
    threshold: float | None  # calibrated label threshold (anomaly-map units), None if not calibrated
    contrasts: tuple[str, ...]  # contrasts[0] is the input volume; the others need their own selector
    quantile: float | None = None  # the calibration's quantile of normal training tissue (e.g. 0.995)

    @property
    def extraContrasts(self) -> tuple[str, ...]:
        return self.contrasts[1:]

    def summary(self) -> str:
        parts = [self.name + (f": {self.description}" if self.description else "")]
        parts.append("reads " + " + ".join(c.upper() for c in self.contrasts))
        if self.threshold is not None:
            parts.append(f"calibrated threshold {self.threshold:.4g}")
        return "; ".join(parts)


def modelFolder(path, modelsDir: Path) -> Path:
    """The bundle folder: ``path`` if given (not empty, not "."), else the first bundle in ``modelsDir``."""
    if path and str(path) not in ("", "."):
        return Path(path)
    found = sorted(Path(modelsDir).glob("*/model.json"))
    if not found:
        raise ValueError(f"no bundled model in {modelsDir}: choose a model folder")
    return found[0].parent


def readModelInfo(path, modelsDir: Path) -> ModelInfo:
    """Read ``model.json`` of the chosen (or bundled) model. Raises ValueError with a readable message."""
    folder = modelFolder(path, modelsDir)
    meta = folder / "model.json"
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
    except OSError:
        raise ValueError(f"no readable model.json in {folder}") from None
    except ValueError as exc:
        raise ValueError(f"{meta} is not valid JSON: {exc}") from None
    if not isinstance(info, dict):
        raise ValueError(f"{meta} does not hold a model description")
    config = info.get("config") if isinstance(info.get("config"), dict) else {}
    calibration = config.get("calibration") or {}
    threshold = calibration.get("threshold") if isinstance(calibration, dict) else None
    quantile = calibration.get("quantile") if isinstance(calibration, dict) else None
    features = config.get("features") or {}
    contrasts = tuple(str(c) for c in (features.get("contrasts") or ("flair",)))
    valid = isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold >= 0
    return ModelInfo(
        folder=folder,
        name=str(info.get("name") or folder.name),
        description=str(info.get("description") or ""),
        threshold=float(threshold) if valid else None,
        contrasts=contrasts,
        quantile=float(quantile) if isinstance(quantile, (int, float)) and 0 < quantile < 1 else None,
    )


def thresholdExplanation(info: ModelInfo | None, mapUnits: str | None = None) -> str:
    """What the threshold means, for the line under the slider: which voxels it selects and where the
    calibrated value comes from, in the map's units when known."""
    text = "Voxels above the threshold form the Anomaly segment; the heat map colours only them."
    if info is not None and info.threshold is not None:
        where = (
            f"the {100 * info.quantile:g}th percentile of the map on normal training tissue"
            if info.quantile is not None
            else "calibrated on normal training tissue"
        )
        text += f" Calibrated value {info.threshold:.4g}: {where}."
    if mapUnits:
        text += f" Units: {mapUnits}."
    return text


def thresholdSliderRange(threshold: float, mapMaximum: float | None = None) -> tuple[float, float]:
    """(maximum, single step) of the threshold slider (its minimum is 0): up to twice the threshold and at
    least the heat map's maximum when there is one, so both the calibrated value and every map value are
    reachable; never below 1."""
    top = max(1.0, 2.0 * float(threshold))
    if mapMaximum is not None and math.isfinite(mapMaximum):
        top = max(top, float(mapMaximum))
    return top, top / SLIDER_STEPS


def engineWarnings(stderrLines: Sequence[str]) -> list[str]:
    """The worker's warning messages (``[WARNING] text`` lines), in order, without repeats."""
    out: list[str] = []
    for line in stderrLines:
        if line.startswith(WARNING_PREFIX):
            text = line[len(WARNING_PREFIX) :].strip()
            if text and text not in out:
                out.append(text)
    return out


def deviceWarnings(requested: str, report: dict, deviceInfo: dict | None) -> list[str]:
    """A warning when a GPU was asked for (or 'auto' with a usable GPU) but the run used the CPU."""
    used = str(report.get("device", ""))
    gpuUsable = bool(deviceInfo and deviceInfo.get("cuda_available"))
    if used.startswith("cpu") and (requested == "cuda" or (requested == "auto" and gpuUsable)):
        return [
            f"the run used the CPU although a GPU was {'asked for' if requested == 'cuda' else 'available'}: "
            "it fell back to the CPU (see the log), so it was slower than usual"
        ]
    return []


def describeDevice(info: dict | None, error: str | None = None) -> str:
    """One line about torch and the GPU, from the worker's ``--device-info`` answer."""
    if error:
        return f"torch cannot be used: {error}"
    if not info:
        return "torch: not checked yet"
    build = f"CUDA {info.get('cuda_build')} build" if info.get("cuda_build") else "CPU-only build"
    text = f"torch {info.get('torch', '?')} ({build}); "
    if info.get("cuda_available"):
        gpus = info.get("gpus") or ["a GPU"]
        return text + f"auto uses the GPU: {gpus[0]}"
    return text + "no usable GPU, auto uses the CPU"


def warningsHtml(warnings: Sequence[str]) -> str:
    """The message area's rich text: one bullet per warning."""
    if not warnings:
        return ""
    items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    return f"<b>Warnings:</b><ul style='margin-left:0px'>{items}</ul>"


def summary(report: dict, warningCount: int = 0, topSlice: int | None = None, topPositionMm=None) -> str:
    """The status line after a run, in a reader's words: the anomalous volume at the threshold, the most
    anomalous slice (the one the views show), the time and device; the warnings' count."""
    volume = report.get("anomalous_volume_ml")
    found = (
        f"{volume:.1f} mL anomalous" if isinstance(volume, (int, float)) else "anomalous volume unknown"
    ) + f" at threshold {report['threshold']:.3g}"
    text = f"Done: {found}."
    if topSlice is not None:
        where = f" (S {topPositionMm:+.1f} mm)" if topPositionMm is not None else ""
        text += f" Showing slice {topSlice}{where}, the most anomalous."
    preset = f", {report['preset']} accuracy" if report.get("preset") else ""
    text += f" {report['seconds']:.0f} s on {str(report['device']).upper()}{preset}."
    if warningCount:
        text += f" {warningCount} warning{'s' if warningCount > 1 else ''}: see below."
    return text


def thresholdStatus(threshold: float, anomalousMl: float) -> str:
    """The status line after moving the threshold slider."""
    return (
        f"Threshold {threshold:.3g}: {anomalousMl:.1f} mL anomalous (re-labelled; the model was not re-run)."
    )


def workerExitMessage(returncode: int | None, logLines: Sequence[str]) -> str:
    """Why a worker that wrote no ``ERROR:`` line ended: a kill by the system (most often for lack of
    memory) gets its own message; otherwise the exit code and the last lines that are not ``[INFO]``."""
    import signal

    killedBy = None
    if returncode is not None and returncode < 0:
        killedBy = -returncode
    elif returncode in (128 + 9, 128 + 6, 128 + 11):  # a launcher reports its child's signal as 128 + n
        killedBy = returncode - 128
    if killedBy == signal.SIGKILL:
        return (
            "the worker process was killed by the system before it finished (SIGKILL). This most often means "
            "the computer ran out of memory: close other programs, choose the fast accuracy or the GPU, or "
            "crop the scan to the head, and try again."
        )
    if killedBy is not None:
        try:
            name = signal.Signals(killedBy).name
        except ValueError:
            name = f"signal {killedBy}"
        return f"the worker process crashed ({name}); see the log for its last messages."
    tail = [line for line in logLines if line.strip() and not line.startswith("[INFO]")][-3:]
    return f"the worker ended with exit code {returncode}" + (": " + " | ".join(tail) if tail else "")


def peakIndex(anomaly) -> tuple[int, ...]:
    """Array index of the heat map's maximum (NaN ignored)."""
    import numpy as np

    values = np.nan_to_num(np.asarray(anomaly, dtype=np.float64), nan=-np.inf)
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(values)), values.shape))


def hyperintenseRegion(flair, zMin: float = 2.0):
    """Voxels brighter than the brain's mean + ``zMin`` standard deviations (brain = non-zero voxels of a
    skull-stripped scan): the self-test's stand-in for a lesion mask when none is given."""
    import numpy as np

    flair = np.asarray(flair, dtype=np.float64)
    brain = flair > 0
    if not brain.any():
        raise ValueError("the scan has no non-zero voxels")
    mean, std = flair[brain].mean(), flair[brain].std()
    return brain & (flair > mean + zMin * std)


# A whole adult brain spans roughly 120-170 mm head to foot; a scan whose scored brain slices span less than
# this covers only part of it (a slab), so "no anomaly" says nothing about the rest.
PARTIAL_COVERAGE_MM = 80.0


def coverageWarnings(report: dict, sliceSpacingMm: float) -> list[str]:
    """A warning when the slices with brain span less than ``PARTIAL_COVERAGE_MM`` along the slice axis."""
    scored = [i for i, s in enumerate(report.get("slice_scores") or []) if s is not None]
    if not scored or not sliceSpacingMm > 0:
        return []
    extent = (scored[-1] - scored[0] + 1) * float(sliceSpacingMm)
    if extent >= PARTIAL_COVERAGE_MM:
        return []
    return [
        f"partial brain coverage: the slices with brain span {extent:.0f} mm (a whole brain is about "
        f"120-170 mm), so regions outside the scan were not assessed"
    ]


def runWarnings(
    logLines: Sequence[str],
    report: dict,
    sliceSpacingMm: float,
    requestedDevice: str | None = None,
    deviceInfo: dict | None = None,
) -> list[str]:
    """Every warning about a finished run: the worker's own, a GPU fallback (when the device asked for is
    given) and partial brain coverage."""
    device = deviceWarnings(requestedDevice, report, deviceInfo) if requestedDevice else []
    return engineWarnings(logLines) + device + coverageWarnings(report, sliceSpacingMm)


def applyButtonState(
    running: bool, cancelling: bool, installing: bool, hasInput: bool, missingContrasts: Sequence[str] = ()
) -> tuple[str, bool, str]:
    """(text, enabled, tool tip) of the Detect anomalies / Cancel button."""
    text = (
        "Installing Python packages..."
        if installing
        else "Cancelling..."
        if cancelling
        else "Cancel"
        if running
        else "Detect anomalies"
    )
    enabled = (running and not cancelling) or (
        not installing and not running and hasInput and not missingContrasts
    )
    tip = (
        f"Select the {', '.join(missingContrasts)} volume first."
        if missingContrasts and not running
        else "Score the input with the model (runs in a separate process; click again to cancel)."
    )
    return text, enabled, tip


def selfTestSkipped(missing: Sequence[str]) -> str:
    """The self-test's message when the Python packages are missing (it never installs them)."""
    return (
        f"Scoring tests skipped: AnoDODE's Python packages are not installed ({', '.join(missing)}). "
        "Click 'Detect anomalies' once to install them."
    )
