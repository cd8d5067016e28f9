"""Run ``AnoDODELib.worker`` as a child process without blocking the caller (no Qt, no slicer).

Started the Slicer way: inside Slicer the module passes ``launch`` = ``slicer.util.launchConsoleProcess`` with
Slicer's startup environment (the environment Slicer itself was started with; the PythonSlicer launcher
then sets up Slicer's Python), stdout and stderr merged into one pipe, no console window on Windows.
Outside Slicer (tests, scripts) :func:`plainLaunch` starts it the same way in the current environment.

The worker's protocol prefixes are unique, so the merged stream is sorted line by line: protocol lines
(``PROGRESS ...``, ``DONE``, the ``--device-info`` JSON object) and log lines (the rest: ``ERROR: ...``,
``[WARNING] ...``, ``[INFO] ...``). A reader thread decodes UTF-8 with undecodable bytes replaced; the host
polls ``WorkerProcess.poll()`` (Slicer: from a QTimer).

The worker stays in Slicer's session and process group. It is given Slicer's process id
(``--parent-pid``) and stops itself when Slicer ends, a crash included, or when the process between them
(the PythonSlicer launcher) ends. ``requestCancel()`` sends SIGTERM to the started process (Windows:
``taskkill /T``, the whole tree) and returns at once; ``poll()`` kills it after the grace period.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1]  # the module folder: holds the AnoDODELib package
#: After the started process has ended, how long (s) to wait for the pipe to close: when that process was
#: the PythonSlicer launcher, the worker behind it needs up to its own grace (worker.HOST_GONE_GRACE_S, 10 s)
#: to notice and stop.
ORPHAN_WAIT_S = 15.0

Launch = Callable[[list[str]], subprocess.Popen]


def pythonSlicerExecutable() -> str:
    """Slicer's PythonSlicer launcher when present (it sets up Slicer's Python environment), else the
    current interpreter."""
    exe = Path(sys.executable)
    for name in ("PythonSlicer", "PythonSlicer.exe"):
        candidate = exe.with_name(name)
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("PythonSlicer")
    return found or sys.executable


def workerEnvironmentUpdate(pythonPath: str = "") -> dict[str, str]:
    """The variables a worker needs on top of its environment: the module folder first on PYTHONPATH (then
    ``pythonPath``, the environment's own value), unbuffered UTF-8 output."""
    parts = [str(MODULE_DIR)] + [p for p in pythonPath.split(os.pathsep) if p]
    return {"PYTHONPATH": os.pathsep.join(parts), "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}


def workerEnvironment(base: dict | None = None) -> dict:
    """``base`` (default: this process's environment) with :func:`workerEnvironmentUpdate` applied."""
    env = dict(os.environ if base is None else base)
    env.update(workerEnvironmentUpdate(env.get("PYTHONPATH", "")))
    return env


def plainLaunch(command: list[str]) -> subprocess.Popen:
    """Start ``command`` as ``slicer.util.launchConsoleProcess`` does (stdout and stderr merged into one pipe,
    no console window on Windows), in this process's environment with :func:`workerEnvironmentUpdate`."""
    kwargs = {}
    if os.name == "nt":
        info = subprocess.STARTUPINFO()
        info.dwFlags = subprocess.STARTF_USESHOWWINDOW
        info.wShowWindow = 0
        kwargs["startupinfo"] = info
    return subprocess.Popen(
        command, env=workerEnvironment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs
    )


def isProtocolLine(line: str) -> bool:
    """Whether a worker output line belongs to its stdout protocol (progress, done, device-info JSON)."""
    return line == "DONE" or line.startswith("PROGRESS ") or line.startswith("{")


class WorkerProcess:
    """One worker run. ``poll()`` returns new ``(kind, line)`` pairs, kind "stdout" for protocol lines and
    "log" for the rest; both are also kept (``protocolLines``, ``logLines``). ``returncode`` is None while
    running.

    ``requestCancel()`` returns at once; the host keeps polling and ``poll()`` kills the process once the
    grace period is over."""

    def __init__(self, command: list[str], launch: Launch | None = None) -> None:
        self.command = list(command)
        self.proc = (launch or plainLaunch)(self.command)
        self._lines: queue.Queue = queue.Queue()
        self.logLines: list[str] = []
        self.protocolLines: list[str] = []
        self.cancelled = False
        self._killAt: float | None = None
        self._endedAt: float | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stream = getattr(self.proc.stdout, "buffer", self.proc.stdout)  # bytes, whatever the Popen's mode
        try:
            for raw in iter(stream.readline, b""):
                self._lines.put(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
        finally:
            stream.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        """Exit code once the process has ended and its output is drained, else None. When the started
        process has ended but the pipe stays open (a process it started, the worker behind the launcher,
        still runs), its code is given once ``ORPHAN_WAIT_S`` s have passed."""
        code = self.proc.poll()
        if code is None:
            return None
        if self._reader.is_alive():
            self._endedAt = self._endedAt or time.monotonic()
            if time.monotonic() - self._endedAt < ORPHAN_WAIT_S:
                return None
        return code

    def poll(self) -> list[tuple[str, str]]:
        """New output lines; after ``requestCancel()``, kills the process once the grace period is over."""
        if self._killAt is not None and time.monotonic() >= self._killAt and self.proc.poll() is None:
            self._kill()
        out = []
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return out
            kind = "stdout" if isProtocolLine(line) else "log"
            (self.protocolLines if kind == "stdout" else self.logLines).append(line)
            out.append((kind, line))

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to end (``subprocess.TimeoutExpired`` after ``timeout`` s) and for its output."""
        code = self.proc.wait(timeout)
        self._reader.join(ORPHAN_WAIT_S)
        return code

    def requestCancel(self, grace: float = 3.0) -> None:
        """Ask the process to stop (SIGTERM; on Windows ``taskkill /T`` for its tree) and return at once.

        The worker removes its partial outputs on SIGTERM, or when the launcher it runs under ends; if the
        started process is still running ``grace`` seconds later, the next ``poll()`` kills it."""
        self.cancelled = True
        if self.proc.poll() is not None:
            return
        if os.name == "nt":  # no SIGTERM on Windows: taskkill /T ends the process and its children
            subprocess.Popen(
                ["taskkill", "/F", "/T", "/PID", str(self.proc.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        else:
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                return
        self._killAt = time.monotonic() + grace

    def _kill(self) -> None:
        try:
            self.proc.kill()
        except (ProcessLookupError, PermissionError):
            pass

    def cancel(self, grace: float = 3.0) -> None:
        """Blocking cancel (scripts, scene close): ``requestCancel`` then wait, killing after ``grace`` s."""
        self.requestCancel(grace)
        deadline = time.monotonic() + grace
        while self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.proc.poll() is None:
            self._kill()
        self.proc.wait()

    def waitForExit(self, timeout: float = 10.0) -> bool:
        """Wait (at most ``timeout`` s) until the process has exited and closed its output; True if it has.
        Files it had open, e.g. in its temporary folder, are only deletable on Windows after this."""
        deadline = time.monotonic() + timeout
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        self._reader.join(max(0.0, deadline - time.monotonic()))
        return not self._reader.is_alive()


class WorkerRun:
    """One scoring run: its temporary folder, the worker process, the device and threshold asked for and,
    once read, the report. ``cleanup()`` removes the folder only after the process has exited (on Windows a
    running process keeps its open files undeletable)."""

    def __init__(
        self,
        inputNode,
        tempDir: Path,
        process: WorkerProcess,
        device: str = "auto",
        threshold: float | None = None,
    ) -> None:
        self.inputNode = inputNode
        self.tempDir = Path(tempDir)
        self.outputDir = self.tempDir / "output"
        self.process = process
        self.device = device
        self.threshold = threshold
        self.done = False
        self.report: dict | None = None

    def cleanup(self) -> None:
        if self.process.proc.poll() is None:
            self.process.cancel(grace=1.0)
        self.process.waitForExit(ORPHAN_WAIT_S)
        shutil.rmtree(self.tempDir, ignore_errors=True)


def deviceInfoFromQuery(query: WorkerProcess):
    """(info dict or None, error text or None) from a finished ``--device-info`` worker process."""
    from AnoDODELib.worker import error_from_stderr, parse_device_info

    query.poll()
    info = parse_device_info(query.protocolLines)  # every line so far, whoever polled them
    if info is not None and query.returncode == 0:
        return info, None
    return None, error_from_stderr("\n".join(query.logLines)) or f"the worker exited with {query.returncode}"


def runError(run: WorkerRun) -> str | None:
    """None when the run succeeded (exit 0 after ``DONE``), else one readable message: the worker's
    ``ERROR:`` line, or why it ended without one (``panel.workerExitMessage``: killed, crashed)."""
    from AnoDODELib.worker import error_from_stderr

    from .panel import workerExitMessage

    code = run.process.returncode
    if code == 0 and run.done:
        return None
    return error_from_stderr("\n".join(run.process.logLines)) or workerExitMessage(code, run.process.logLines)


def startWorkerRun(
    tempRoot,
    inputNode,
    writeInputs: Callable[[Path], tuple],
    launch: Launch | None = None,
    *,
    modelPath=None,
    device: str = "auto",
    preset: str = "standard",
    threshold: float | None = None,
    parentPid: int | None = None,
) -> WorkerRun:
    """Make a temporary folder in ``tempRoot``, write the worker's inputs there (``writeInputs(folder)`` ->
    (input path, mask path or None, {contrast: path})) and start the worker on them without a figure
    (``--no-figure``: the host shows the map itself) and watching ``parentPid``; returns at once. The folder
    is removed when anything fails before the worker is running."""
    import tempfile

    from AnoDODELib.worker import build_command

    tempDir = Path(tempfile.mkdtemp(prefix="AnoDODE-", dir=str(tempRoot)))
    try:
        inputPath, maskPath, others = writeInputs(tempDir)
        model = str(modelPath) if modelPath and str(modelPath) not in ("", ".") else None
        command = build_command(
            pythonSlicerExecutable(),
            inputPath,
            tempDir / "output",
            mask=maskPath,
            model=model,
            device=device,
            preset=preset,
            threshold=threshold,
            other_contrasts=others,
            figure=False,
            parent_pid=parentPid,
        )
        process = WorkerProcess(command, launch=launch)
    except BaseException:
        shutil.rmtree(tempDir, ignore_errors=True)
        raise
    return WorkerRun(inputNode, tempDir, process, device, threshold)
