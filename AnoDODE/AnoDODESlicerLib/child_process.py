"""Run ``AnoDODELib.worker`` as a child process without blocking the caller (no Qt, no slicer).

The host polls ``WorkerProcess.poll()`` (Slicer: from a QTimer) and gets the parsed progress/log lines read
by two reader threads. ``cancel()`` ends the whole process tree: the worker starts in its own session
(POSIX) or process group (Windows), so any children it spawned go too.
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
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1]  # the module folder: holds the AnoDODELib package


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


def workerEnvironment(base: dict | None = None) -> dict:
    """The environment with the module folder first on PYTHONPATH, so ``import AnoDODELib`` works."""
    env = dict(os.environ if base is None else base)
    parts = [str(MODULE_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class WorkerProcess:
    """One worker run. ``poll()`` returns new ``(stream, line)`` pairs; ``returncode`` is None while running.

    Output is decoded as UTF-8 with undecodable bytes replaced (a stray byte must not end a reader thread
    and leave the host waiting forever). ``requestCancel()`` returns at once; the host keeps polling and
    ``poll()`` kills the process tree once the grace period is over."""

    def __init__(self, command: list[str], env: dict | None = None, cwd: str | None = None) -> None:
        kwargs = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(
                subprocess, "CREATE_NO_WINDOW", 0
            )
        else:
            kwargs["start_new_session"] = True
        self.command = list(command)
        self.proc = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            env=env if env is not None else workerEnvironment(),
            cwd=cwd,
            **kwargs,
        )
        self._lines: queue.Queue = queue.Queue()
        self.stderrLines: list[str] = []
        self.cancelled = False
        self._killAt: float | None = None
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, "stdout"), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, "stderr"), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, name: str) -> None:
        try:
            for line in iter(stream.readline, ""):
                self._lines.put((name, line.rstrip("\r\n")))
        finally:
            stream.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        """Exit code once the process has ended and both streams are drained, else None."""
        code = self.proc.poll()
        if code is None or any(r.is_alive() for r in self._readers):
            return None
        return code

    def poll(self) -> list[tuple[str, str]]:
        """New output lines; after ``requestCancel()``, kills the process tree once the grace period is over."""
        if self._killAt is not None and time.monotonic() >= self._killAt and self.proc.poll() is None:
            self._kill()
        out = []
        while True:
            try:
                stream, line = self._lines.get_nowait()
            except queue.Empty:
                return out
            if stream == "stderr":
                self.stderrLines.append(line)
            out.append((stream, line))

    def wait(self, timeout: float | None = None) -> int:
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(timeout=5)
        return code

    def requestCancel(self, grace: float = 3.0) -> None:
        """Ask the process tree to stop (SIGTERM to its group; on Windows ``taskkill /T``) and return at once.

        The worker removes its partial outputs on SIGTERM; if it is still running ``grace`` seconds later,
        the next ``poll()`` kills the whole group."""
        self.cancelled = True
        if self.proc.poll() is not None:
            return
        if os.name == "nt":  # no SIGTERM for a process tree on Windows: taskkill /T ends it and its children
            subprocess.Popen(
                ["taskkill", "/F", "/T", "/PID", str(self.proc.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self._killAt = time.monotonic() + grace
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        self._killAt = time.monotonic() + grace

    def _kill(self) -> None:
        if os.name == "nt":
            self.proc.kill()
            return
        try:  # whatever is left of the group (the worker's own children included)
            os.killpg(self.proc.pid, signal.SIGKILL)
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
        """Wait (at most ``timeout`` s) until the process has exited; True if it has. Files it had open,
        e.g. in its temporary folder, are only deletable on Windows after this."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True


class WorkerRun:
    """One scoring run: its temporary folder, the worker process, the device asked for and, once read, the
    report. ``cleanup()`` removes the folder only after the process has exited (on Windows a running process
    keeps its open files undeletable)."""

    def __init__(self, inputNode, tempDir: Path, process: WorkerProcess, device: str = "auto") -> None:
        self.inputNode = inputNode
        self.tempDir = Path(tempDir)
        self.outputDir = self.tempDir / "output"
        self.process = process
        self.device = device
        self.done = False
        self.report: dict | None = None

    def cleanup(self) -> None:
        if self.process.proc.poll() is None:
            self.process.cancel(grace=1.0)
        self.process.waitForExit(10.0)
        shutil.rmtree(self.tempDir, ignore_errors=True)
