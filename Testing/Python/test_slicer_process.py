"""Child processes of the Slicer module (AnoDODESlicerLib/child_process.py) and the worker's --device-info:
undecodable output does not kill a reader thread, cancel returns at once and escalates to a kill from poll(),
the temporary folder is removed only after the process has exited."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import REPO

from AnoDODELib.worker import build_device_info_command, parse_device_info

sys.path.insert(0, str(REPO / "AnoDODE"))
from AnoDODESlicerLib import child_process as C


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def drain(process: C.WorkerProcess, timeout: float = 30.0) -> list[tuple[str, str]]:
    out = []
    deadline = time.monotonic() + timeout
    while process.returncode is None and time.monotonic() < deadline:
        out += process.poll()
        time.sleep(0.02)
    out += process.poll()
    assert process.returncode is not None, "process or reader threads did not finish"
    return out


def test_undecodable_bytes_are_replaced_not_fatal():
    code = (
        "import sys; b = b'ok1\\n\\xff\\xfe\\x80 bad \\xe9t\\xe9\\nok2\\n'; "
        "sys.stdout.buffer.write(b); sys.stdout.flush(); sys.stderr.buffer.write(b); sys.stderr.flush()"
    )
    process = C.WorkerProcess(python(code))
    lines = drain(process)
    assert process.returncode == 0
    for stream in ("stdout", "stderr"):
        got = [line for s, line in lines if s == stream]
        assert got[0] == "ok1" and got[2] == "ok2", got
        assert "\ufffd" in got[1] and "bad" in got[1]
    assert len(process.stderrLines) == 3


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals; Windows uses taskkill /T")
def test_request_cancel_returns_at_once_and_poll_kills_after_the_grace():
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    process = C.WorkerProcess(python(code))
    while not any(line == "ready" for _, line in process.poll()):
        time.sleep(0.02)
    t0 = time.monotonic()
    process.requestCancel(grace=0.5)
    assert time.monotonic() - t0 < 0.2, "requestCancel blocked"
    assert process.proc.poll() is None and process.cancelled  # ignores SIGTERM: still running
    drain(process, timeout=10)
    assert process.returncode == -9 and 0.4 < time.monotonic() - t0 < 8  # killed by poll() after the grace


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_request_cancel_stops_a_cooperative_process_promptly():
    process = C.WorkerProcess(python("import time; print('ready', flush=True); time.sleep(60)"))
    while not any(line == "ready" for _, line in process.poll()):
        time.sleep(0.02)
    t0 = time.monotonic()
    process.requestCancel(grace=5.0)
    drain(process, timeout=10)
    assert process.returncode == -15 and time.monotonic() - t0 < 3


def test_run_cleanup_removes_the_folder_only_after_the_process_exited(tmp_path, monkeypatch):
    folder = tmp_path / "AnoDODE-run"
    folder.mkdir()
    (folder / "input.nrrd").write_bytes(b"x")
    process = C.WorkerProcess(python("import time; print('ready', flush=True); time.sleep(60)"))
    while not any(line == "ready" for _, line in process.poll()):
        time.sleep(0.02)
    seen = []
    real = C.shutil.rmtree
    monkeypatch.setattr(
        C.shutil, "rmtree", lambda path, **kw: (seen.append(process.proc.poll()), real(path, **kw))
    )
    C.WorkerRun(None, folder, process).cleanup()
    assert seen and seen[0] is not None, "the folder was removed while the process was running"
    assert not folder.exists()


def test_device_info_request(tmp_path):
    torch = pytest.importorskip("torch")
    proc = subprocess.run(
        build_device_info_command(sys.executable),
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env=C.workerEnvironment(),
        cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    info = parse_device_info(proc.stdout.splitlines())
    assert info is not None and json.loads(proc.stdout.strip().splitlines()[-1]) == info
    assert info["torch"] == torch.__version__
    assert info["cuda_build"] == torch.version.cuda
    assert info["cuda_available"] is torch.cuda.is_available()
    assert info["auto"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert len(info["gpus"]) == (torch.cuda.device_count() if info["cuda_available"] else 0)
    assert parse_device_info(["PROGRESS 0.5 x", "not json {"]) is None
