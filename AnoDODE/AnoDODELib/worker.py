"""Out-of-process scoring for the Slicer module (and anything else that wants a line protocol).

    python -m AnoDODELib.worker --input IN --output-dir DIR [--mask M] [--brain-extraction auto|always|never]
                                [--model DIR] [--contrast NAME=PATH ...]
                                [--device auto|cpu|cuda] [--preset fast|standard|exact] [--threshold T]
                                [--no-figure] [--parent-pid PID]

Protocol, one line each:
    stdout  ``PROGRESS <fraction 0..1> <message>``   non-decreasing fraction, flushed at once
    stdout  ``DONE``                                 last line, after every output is in place
    stderr  ``ERROR: <message>``                     exactly one such line, then exit code 1
Other stderr lines are log messages (``[WARNING] ...``) meant for a log panel. Each prefix is unique, so a host
may also read both streams merged into one (Slicer's ``launchConsoleProcess`` does that).

``--no-figure``: the output set has no figure.png and nothing is rendered (the Slicer module shows the map in
its own views; without matplotlib the figure would only cost time and a warning). ``--parent-pid PID``: the
host's process id; when that process ends (a crash included) or this worker loses its own parent (e.g. a
launcher between host and worker is killed), the worker stops as on SIGTERM, removing its partial outputs,
so it never outlives its host holding the GPU.

    python -m AnoDODELib.worker --device-info
prints one JSON line, what torch sees in this interpreter ({"torch": "2.3.0", "cuda_build": "12.1" | null,
"cuda_available": true, "gpus": ["NVIDIA ..."], "auto": "cuda" | "cpu"}), and exits 0; the Slicer module
asks this instead of importing torch (and initialising CUDA) in Slicer's own process.

Outputs, all or none (outputs.score_to_files, the same engine as ``anodode score``): DIR/anomaly.nrrd
(float32), DIR/label.nrrd and DIR/brainmask.nrrd (uint8, all on the input's grid), DIR/figure.png (figure.py; not
with ``--no-figure``)
and DIR/report.json (written last). SIGTERM/SIGINT stop the worker promptly; nothing of this run's output set is left behind.

This module imports nothing heavy at import time (no torch), so a host such as Slicer can import the
protocol helpers (``build_command``, ``parse_line``) before the dependencies are installed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

OUTPUT_FILES = {
    "anomaly": "anomaly.nrrd",
    "label": "label.nrrd",
    "brainmask": "brainmask.nrrd",
    "figure": "figure.png",
    "report": "report.json",
}
DEVICES = ("auto", "cpu", "cuda")
BRAIN_EXTRACTION = ("auto", "always", "never")  # mirrors brain_mask.EXTRACTION_MODES (checked by a test)
PRESET_NAMES = ("fast", "standard", "exact")  # mirrors pipeline.PRESETS; checked against it at run time
EXIT_ERROR = 1
EXIT_CANCELLED = 128 + signal.SIGTERM


# ----------------------------------------------------------------------------- protocol helpers (host side)


class Message(NamedTuple):
    """A parsed worker stdout line: kind is 'progress', 'done' or 'log'."""

    kind: str
    fraction: float = 0.0
    text: str = ""


def build_command(
    python: str,
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    mask: str | os.PathLike | None = None,
    model: str | os.PathLike | None = None,
    device: str = "auto",
    preset: str = "standard",
    threshold: float | None = None,
    other_contrasts: dict[str, str | os.PathLike] | None = None,
    figure: bool = True,
    parent_pid: int | None = None,
    brain_extraction: str = "auto",
) -> list[str]:
    """The argv that runs this worker with ``python`` (e.g. Slicer's PythonSlicer); ``other_contrasts``:
    a multi-contrast model's other contrasts by name (files aligned with the input); ``figure`` False adds
    ``--no-figure``; ``parent_pid`` (the host's process id) adds ``--parent-pid``."""
    cmd = [
        str(python),
        "-m",
        "AnoDODELib.worker",
        "--input",
        str(input_path),
        "--output-dir",
        str(output_dir),
        "--device",
        device,
        "--preset",
        preset,
    ]
    if mask:
        cmd += ["--mask", str(mask)]
    elif brain_extraction != "auto":
        cmd += ["--brain-extraction", brain_extraction]
    if model:
        cmd += ["--model", str(model)]
    if threshold is not None:
        cmd += ["--threshold", repr(float(threshold))]
    for name, path in (other_contrasts or {}).items():
        cmd += ["--contrast", f"{name}={path}"]
    if not figure:
        cmd.append("--no-figure")
    if parent_pid is not None:
        cmd += ["--parent-pid", str(int(parent_pid))]
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
            return line[len("ERROR: ") :].strip()
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
    return {
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": available,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if available
        else [],
        "auto": "cuda" if available else "cpu",
    }


# ----------------------------------------------------------------------------- worker side


class Cancelled(BaseException):
    """Raised from the SIGTERM/SIGINT handler so cleanup runs and the worker exits promptly."""


#: How often the host watch looks at the host (s), and how long it then waits for a clean stop before
#: ending the process outright (s): a long native call (one big tensor operation) delays the clean stop.
HOST_POLL_S = 0.5
HOST_GONE_GRACE_S = 10.0


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` is running: POSIX ``kill(pid, 0)``, a zombie (Linux ``/proc``) counting as ended;
    Windows ``OpenProcess`` + ``WaitForSingleObject``."""
    if os.name == "nt":
        import ctypes

        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(0x00100000, False, int(pid))  # SYNCHRONIZE
        if not handle:
            return False
        try:
            return kernel32.WaitForSingleObject(handle, 0) != 0  # 0 = WAIT_OBJECT_0: it has ended
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{int(pid)}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(pid, 0) is the answer


class HostWatch:
    """Stops this process when its host ends: a daemon thread checks every ``HOST_POLL_S`` s that process
    ``host_pid`` is alive and (POSIX) that this process still has the parent it started with. When either
    fails it records why, delivers SIGTERM to this process (Windows: ``_thread.interrupt_main``), so the
    SIGTERM handler raises ``Cancelled`` and the partial outputs are removed, and after ``HOST_GONE_GRACE_S``
    ends the process with ``os._exit`` if it is still there."""

    def __init__(self, host_pid: int) -> None:
        self.host_pid = int(host_pid)
        self.parent = os.getppid()
        self.reason: str | None = None

    def check(self) -> str | None:
        """Why this worker should stop now, or None while its host is alive."""
        if not process_alive(self.host_pid):
            return f"the host process {self.host_pid} has ended"
        if os.name != "nt" and os.getppid() != self.parent:
            return f"its parent process {self.parent} has ended"
        return None

    def start(self) -> None:
        """Start watching (a daemon thread)."""
        threading.Thread(target=self._watch, name="anodode-host-watch", daemon=True).start()

    def _watch(self) -> None:
        while self.reason is None:
            time.sleep(HOST_POLL_S)
            self.reason = self.check()
        if os.name == "nt":
            import _thread

            _thread.interrupt_main(signal.SIGTERM)
        else:
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(HOST_GONE_GRACE_S)
        _error(f"cancelled ({self.reason}); the worker did not stop within {HOST_GONE_GRACE_S:g} s")
        os._exit(EXIT_CANCELLED)


class UsageError(Exception):
    """A bad command line (unknown preset, non-finite threshold, bad --contrast): one ERROR line, exit 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one ERROR line and exit 1 instead of argparse's usage + exit 2
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m AnoDODELib.worker", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help="3-D scan (any SimpleITK format)")
    p.add_argument(
        "--output-dir",
        required=True,
        help="folder for anomaly.nrrd, label.nrrd, brainmask.nrrd, figure.png (not with --no-figure), report.json",
    )
    p.add_argument("--mask", help="brain mask on the input's grid (non-zero = brain)")
    p.add_argument(
        "--brain-extraction",
        default="auto",
        choices=BRAIN_EXTRACTION,
        help="without --mask: auto (extract the brain of a scan that is not skull-stripped), always, never",
    )
    p.add_argument("--model", help="model bundle folder (default: the bundled model)")
    p.add_argument(
        "--contrast",
        action="append",
        default=None,
        metavar="NAME=PATH",
        help="another contrast for a multi-contrast model, aligned with the input (once per contrast)",
    )
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--preset", default="standard", choices=PRESET_NAMES)
    p.add_argument("--threshold", type=float, help="label threshold (default: the model's calibrated one)")
    p.add_argument(
        "--no-figure", dest="figure", action="store_false", help="write no figure.png (nothing is rendered)"
    )
    p.add_argument(
        "--parent-pid",
        type=int,
        help="the host's process id: stop when that process (or this one's parent) ends",
    )
    return p


class _Progress:
    """Prints monotone PROGRESS lines; the scoring stage is mapped into [start, end] of the whole run."""

    def __init__(self, out=None) -> None:
        self.out = out or sys.stdout
        self.last = 0.0

    def __call__(self, fraction: float, message: str) -> None:
        fraction = max(self.last, min(1.0, float(fraction)))
        self.last = fraction
        text = " ".join(str(message).split())  # one line, whatever the engine sends
        self.out.write(f"PROGRESS {fraction:.4f} {text}\n")
        self.out.flush()

    def stage(self, start: float, end: float):
        return lambda f, m: self(start + (end - start) * min(1.0, max(0.0, float(f))), m)


def _run(args: argparse.Namespace, progress: _Progress) -> None:
    from .bundle import load_model
    from .cli import parse_contrast_args
    from .outputs import OutputSet, ScanInputs, score_to_files
    from .pipeline import PRESETS, check_contrasts, resolve_device

    if args.preset not in PRESETS:
        raise UsageError(f"unknown preset {args.preset!r}; valid: {', '.join(PRESETS)}")
    if args.threshold is not None and not (math.isfinite(args.threshold) and args.threshold >= 0):
        from .cli import threshold_problem

        raise UsageError(threshold_problem(args.threshold))
    try:
        resolve_device(args.device)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
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
    inputs = ScanInputs(
        Path(args.input),
        Path(args.mask) if args.mask else None,
        {c: paths[0] for c, paths in other_paths.items()},
    )
    score_to_files(
        inputs,
        OutputSet.plain(Path(args.output_dir), figure=args.figure),
        model,
        threshold=args.threshold,
        device=args.device,
        preset=args.preset,
        callback=progress.stage(0.01, 1.0),
        brain_extraction=args.brain_extraction,
    )


def _on_signal(signum, frame) -> None:
    raise Cancelled(signal.Signals(signum).name)


def _error(message: str) -> None:
    sys.stderr.write("ERROR: " + " ".join(str(message).split()) + "\n")
    sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the worker on ``argv`` (default: ``sys.argv``) with the line protocol of the module docstring.

    Returns the exit code: 0 after ``DONE`` (or the ``--device-info`` line), 1 after one ``ERROR:`` line,
    143 when cancelled by SIGTERM/SIGINT."""
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="[%(levelname)s] %(message)s")
    if list(sys.argv[1:] if argv is None else argv) == [DEVICE_INFO_FLAG]:
        try:
            sys.stdout.write(json.dumps(device_info()) + "\n")
        except Exception as exc:  # noqa: BLE001 - e.g. a broken torch install: one ERROR line
            _error(f"torch cannot be used: {_describe(exc)}")
            return EXIT_ERROR
        return 0
    watch = None
    try:
        args = _parser().parse_args(argv)
        if args.parent_pid is not None:
            watch = HostWatch(args.parent_pid)
            watch.reason = watch.check()
            if watch.reason is not None:
                raise Cancelled(watch.reason)
            watch.start()
        _run(args, _Progress())
    except Cancelled as exc:
        _error(f"cancelled ({watch.reason if watch is not None and watch.reason else exc})")
        return EXIT_CANCELLED
    except UsageError as exc:
        _error(f"usage: {exc}")
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - the protocol reports every failure as one line
        _error(_describe(exc))
        return EXIT_ERROR
    sys.stdout.write("DONE\n")
    sys.stdout.flush()
    return 0


def _describe(exc: BaseException) -> str:
    """InputError/BundleError messages verbatim (they are written for users), others with their type."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"InputError", "BundleError", "OutputError"}:
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


if __name__ == "__main__":
    from . import process_tuning  # allocator thresholds and no interpreter teardown (see that module)

    process_tuning.tune_allocator()
    process_tuning.exit_now(main())
