"""Out-of-process scoring for the Slicer module (and anything else that wants a line protocol).

    python -m AnoDODELib.worker --input IN --output-dir DIR [--mask M] [--model DIR] [--contrast NAME=PATH ...]
                                [--device auto|cpu|cuda] [--preset fast|standard|exact] [--threshold T]

Protocol, one line each:
    stdout  ``PROGRESS <fraction 0..1> <message>``   non-decreasing fraction, flushed at once
    stdout  ``DONE``                                 last line, after every output is in place
    stderr  ``ERROR: <message>``                     exactly one such line, then exit code 1
Other stderr lines are log messages (``[WARNING] ...``) meant for a log panel.

    python -m AnoDODELib.worker --device-info
prints one JSON line, what torch sees in this interpreter ({"torch": "2.3.0", "cuda_build": "12.1" | null,
"cuda_available": true, "gpus": ["NVIDIA ..."], "auto": "cuda" | "cpu"}), and exits 0; the Slicer module
asks this instead of importing torch (and initialising CUDA) in Slicer's own process.

Outputs, all or none: DIR/anomaly.nrrd (float32), DIR/label.nrrd (uint8, both on the input's grid) and
DIR/report.json. SIGTERM/SIGINT stop the worker promptly; outputs already written by this run are removed.

This module imports nothing heavy at import time (no torch), so a host such as Slicer can import the
protocol helpers (``build_command``, ``parse_line``) before the dependencies are installed.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

OUTPUT_FILES = {"anomaly": "anomaly.nrrd", "label": "label.nrrd", "report": "report.json"}
DEVICES = ("auto", "cpu", "cuda")
PRESET_NAMES = ("fast", "standard", "exact")   # mirrors pipeline.PRESETS; checked against it at run time
EXIT_ERROR = 1
EXIT_CANCELLED = 128 + signal.SIGTERM


# ----------------------------------------------------------------------------- protocol helpers (host side)

class Message(NamedTuple):
    """A parsed worker stdout line: kind is 'progress', 'done' or 'log'."""

    kind: str
    fraction: float = 0.0
    text: str = ""


def build_command(python: str, input_path: str | os.PathLike, output_dir: str | os.PathLike, *,
                  mask: str | os.PathLike | None = None, model: str | os.PathLike | None = None,
                  device: str = "auto", preset: str = "standard", threshold: float | None = None,
                  other_contrasts: dict[str, str | os.PathLike] | None = None) -> list[str]:
    """The argv that runs this worker with ``python`` (e.g. Slicer's PythonSlicer); ``other_contrasts``:
    a multi-contrast model's other contrasts by name (files aligned with the input)."""
    cmd = [str(python), "-m", "AnoDODELib.worker", "--input", str(input_path), "--output-dir", str(output_dir),
           "--device", device, "--preset", preset]
    if mask:
        cmd += ["--mask", str(mask)]
    if model:
        cmd += ["--model", str(model)]
    if threshold is not None:
        cmd += ["--threshold", repr(float(threshold))]
    for name, path in (other_contrasts or {}).items():
        cmd += ["--contrast", f"{name}={path}"]
    return cmd


def parse_line(line: str) -> Message:
    """Classify one stdout line of the worker."""
    line = line.rstrip("\r\n")
    if line == "DONE":
        return Message("done", 1.0)
    if line.startswith("PROGRESS "):
        parts = line.split(" ", 2)
        try:
            fraction = min(1.0, max(0.0, float(parts[1])))
        except (IndexError, ValueError):
            return Message("log", text=line)
        return Message("progress", fraction, parts[2] if len(parts) > 2 else "")
    return Message("log", text=line)


def error_from_stderr(stderr_text: str) -> str | None:
    """The message of the worker's ``ERROR:`` line, if any."""
    for line in stderr_text.splitlines():
        if line.startswith("ERROR: "):
            return line[len("ERROR: "):].strip()
    return None


DEVICE_INFO_FLAG = "--device-info"


def build_device_info_command(python: str) -> list[str]:
    """The argv that asks the worker what torch sees (``python -m AnoDODELib.worker --device-info``)."""
    return [str(python), "-m", "AnoDODELib.worker", DEVICE_INFO_FLAG]


def parse_device_info(stdout_lines: Sequence[str]) -> dict | None:
    """The JSON object printed by ``--device-info``, or None if there is none."""
    for line in reversed(stdout_lines):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def device_info() -> dict:
    """What torch sees here: version, CUDA build, whether a GPU is usable and which one ``--device auto`` uses."""
    import torch

    available = bool(torch.cuda.is_available())
    return {"torch": torch.__version__, "cuda_build": torch.version.cuda, "cuda_available": available,
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if available else [],
            "auto": "cuda" if available else "cpu"}


# ----------------------------------------------------------------------------- worker side

class Cancelled(BaseException):
    """Raised from the SIGTERM/SIGINT handler so cleanup runs and the worker exits promptly."""


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:   # one ERROR line and exit 1 instead of argparse's usage + exit 2
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m AnoDODELib.worker", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help="3-D scan (any SimpleITK format)")
    p.add_argument("--output-dir", required=True, help="folder for anomaly.nrrd, label.nrrd, report.json")
    p.add_argument("--mask", help="brain mask on the input's grid (non-zero = brain)")
    p.add_argument("--model", help="model bundle folder (default: the bundled model)")
    p.add_argument("--contrast", action="append", default=None, metavar="NAME=PATH",
                   help="another contrast for a multi-contrast model, aligned with the input (once per contrast)")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--preset", default="standard", choices=PRESET_NAMES)
    p.add_argument("--threshold", type=float, help="label threshold (default: the model's calibrated one)")
    return p


class _Progress:
    """Prints monotone PROGRESS lines; the scoring stage is mapped into [start, end] of the whole run."""

    def __init__(self, out=None) -> None:
        self.out = out or sys.stdout
        self.last = 0.0

    def __call__(self, fraction: float, message: str) -> None:
        fraction = max(self.last, min(1.0, float(fraction)))
        self.last = fraction
        text = " ".join(str(message).split())   # one line, whatever the engine sends
        self.out.write(f"PROGRESS {fraction:.4f} {text}\n")
        self.out.flush()

    def stage(self, start: float, end: float):
        return lambda f, m: self(start + (end - start) * min(1.0, max(0.0, float(f))), m)


def _write_json_atomic(data: dict, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _run(args: argparse.Namespace, progress: _Progress, written: list[Path]) -> None:
    import numpy as np
    import SimpleITK as sitk

    from . import volume_io
    from .bundle import default_model_dir, load_model
    from .cli import parse_contrast_args
    from .pipeline import PRESETS, check_contrasts, score_image

    if args.preset not in PRESETS:
        raise UsageError(f"unknown preset {args.preset!r}; valid: {', '.join(PRESETS)}")
    try:
        other_paths = parse_contrast_args(args.contrast)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    repeated = [c for c, paths in other_paths.items() if len(paths) > 1]
    if repeated:
        raise UsageError(f"--contrast {repeated[0]}=... was given more than once")
    progress(0.0, "loading model")
    model = load_model(args.model)
    check_contrasts(model.config, other_paths, model.name)
    progress(0.01, "reading input")
    image = volume_io.read_image(Path(args.input))
    mask = volume_io.read_mask(Path(args.mask), image) if args.mask else None
    others = {c: volume_io.read_image(paths[0]) for c, paths in other_paths.items()}
    result = score_image(image, model, mask, threshold=args.threshold, device=args.device, preset=args.preset,
                         callback=progress.stage(0.05, 0.95), other_contrasts=others)
    progress(0.96, "writing results")
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: out_dir / name for k, name in OUTPUT_FILES.items()}
    protect = [Path(args.input)] + ([Path(args.mask)] if args.mask else []) + [p[0] for p in other_paths.values()]
    report = {
        "input": str(args.input), "mask": args.mask,
        "contrasts": {model.config.features.contrasts[0]: str(args.input),
                      **{c: str(p[0]) for c, p in other_paths.items()}},
        "volume_score_bpd": float(result.volume_score_bpd), "slice_axis": int(result.slice_axis),
        "slice_scores": [None if s is None else float(s) for s in result.slice_scores],
        "slice_anomaly_scores": [None if s is None else float(s) for s in result.slice_anomaly_scores],
        "threshold": float(result.threshold), "model": getattr(model, "name", "unnamed"),
        "model_dir": str(args.model or default_model_dir()), "device": str(result.device),
        "preset": args.preset, "seconds": round(float(result.seconds), 3), "nfe": int(result.nfe),
        "nfe_reconstruction": int(result.nfe_reconstruction),
        "anomalous_voxels": int(np.count_nonzero(result.label)),
        "outputs": {k: str(v) for k, v in paths.items()},
    }
    volume_io.write_image_atomic(np.asarray(result.anomaly_map, dtype=np.float32), image, paths["anomaly"],
                                 sitk.sitkFloat32, protect=protect)
    written.append(paths["anomaly"])
    volume_io.write_image_atomic(np.asarray(result.label, dtype=np.uint8), image, paths["label"], sitk.sitkUInt8,
                                 protect=protect)
    written.append(paths["label"])
    _write_json_atomic(report, paths["report"])
    written.append(paths["report"])
    progress(1.0, "done")


def _on_signal(signum, frame) -> None:
    raise Cancelled(signal.Signals(signum).name)


def _error(message: str) -> None:
    sys.stderr.write("ERROR: " + " ".join(str(message).split()) + "\n")
    sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="[%(levelname)s] %(message)s")
    written: list[Path] = []
    if list(sys.argv[1:] if argv is None else argv) == [DEVICE_INFO_FLAG]:
        try:
            sys.stdout.write(json.dumps(device_info()) + "\n")
        except Exception as exc:  # noqa: BLE001 - e.g. a broken torch install: one ERROR line
            _error(f"torch cannot be used: {_describe(exc)}")
            return EXIT_ERROR
        return 0
    try:
        args = _parser().parse_args(argv)
        _run(args, _Progress(), written)
    except Cancelled as exc:
        _cleanup(written)
        _error(f"cancelled ({exc})")
        return EXIT_CANCELLED
    except UsageError as exc:
        _error(f"usage: {exc}")
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - the protocol reports every failure as one line
        _cleanup(written)
        _error(_describe(exc))
        return EXIT_ERROR
    sys.stdout.write("DONE\n")
    sys.stdout.flush()
    return 0


def _cleanup(written: list[Path]) -> None:
    for path in written:
        try:
            path.unlink()
        except OSError:
            pass


def _describe(exc: BaseException) -> str:
    """InputError/BundleError messages verbatim (they are written for users), others with their type."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"InputError", "BundleError"}:
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


if __name__ == "__main__":
    sys.exit(main())
