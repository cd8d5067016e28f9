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
    features = config.get("features") or {}
    contrasts = tuple(str(c) for c in (features.get("contrasts") or ("flair",)))
    valid = isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold >= 0
    return ModelInfo(
        folder=folder,
        name=str(info.get("name") or folder.name),
        description=str(info.get("description") or ""),
        threshold=float(threshold) if valid else None,
        contrasts=contrasts,
    )


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
    return f"<b>The engine warned:</b><ul style='margin-left:0px'>{items}</ul>"


def summary(report: dict, warningCount: int = 0) -> str:
    """The status line after a run."""
    text = (
        f"Volume score {report['volume_score_bpd']:.4g} bpd; {report.get('anomalous_voxels', '?')} anomalous "
        f"voxels at threshold {report['threshold']:.4g}; {report['seconds']:.1f} s on {report['device']} "
        f"({report.get('preset', '')}, model {report.get('model', '?')})."
    )
    if warningCount:
        text += f" {warningCount} warning{'s' if warningCount > 1 else ''}: see below."
    return text


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
