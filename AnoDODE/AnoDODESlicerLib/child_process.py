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

MODULE_DIR = Path(__file__).resolve().parents[1]   # the module folder: holds the AnoDODELib package


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
    """One worker run. ``poll()`` returns new ``(stream, line)`` pairs; ``returncode`` is None while running."""

    def __init__(self, command: list[str], env: dict | None = None, cwd: str | None = None) -> None:
        kwargs = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True
        self.command = list(command)
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     bufsize=1, env=env if env is not None else workerEnvironment(), cwd=cwd,
                                     **kwargs)
        self._lines: queue.Queue = queue.Queue()
        self.stderrLines: list[str] = []
        self.cancelled = False
        self._readers = [threading.Thread(target=self._read, args=(self.proc.stdout, "stdout"), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr, "stderr"), daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, name: str) -> None:
        for line in iter(stream.readline, ""):
            self._lines.put((name, line.rstrip("\r\n")))
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

    def cancel(self, grace: float = 3.0) -> None:
        """Terminate the process tree; kill it if it has not ended after ``grace`` seconds."""
        self.cancelled = True
        if self.proc.poll() is not None:
            return
        if os.name == "nt":
            subprocess.call(["taskkill", "/F", "/T", "/PID", str(self.proc.pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        try:   # whatever is left of the group (the worker's own children included)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
