"""Child processes of the Slicer module (AnoDODESlicerLib/child_process.py) and the worker's --device-info:
started through Slicer's own ``launchConsoleProcess`` (slicer-core's copy of slicer.util) as well as the
plain stand-in, one merged stream sorted into protocol and log lines, undecodable output does not kill the
reader thread, cancel returns at once and escalates to a kill from poll(), the temporary folder is removed
only after the process has exited, a worker behind a launcher stops when the launcher is killed."""

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


def slicer_launch(command):
    """Slicer's own ``slicer.util.launchConsoleProcess`` (slicer-core), as the module calls it but in this
    process's environment (the startup environment needs a running Slicer)."""
    slicer_util = pytest.importorskip("slicer.util", reason="slicer-core is not installed")
    return slicer_util.launchConsoleProcess(
        command, useStartupEnvironment=False, updateEnvironment=C.workerEnvironmentUpdate()
    )


@pytest.mark.parametrize("launch", [None, slicer_launch], ids=["plain", "launchConsoleProcess"])
def test_undecodable_bytes_are_replaced_not_fatal(launch):
    code = (
        "import sys; b = b'ok1\\n\\xff\\xfe\\x80 bad \\xe9t\\xe9\\nok2\\n'; "
        "sys.stdout.buffer.write(b); sys.stdout.flush()"
    )
    process = C.WorkerProcess(python(code), launch=launch)
    lines = drain(process)
    assert process.returncode == 0
    got = [line for _, line in lines]
    assert got[0] == "ok1" and got[2] == "ok2", got
    assert "\ufffd" in got[1] and "bad" in got[1]
    assert process.logLines == got


@pytest.mark.parametrize("launch", [None, slicer_launch], ids=["plain", "launchConsoleProcess"])
def test_merged_stream_is_sorted_into_protocol_and_log_lines(launch):
    """launchConsoleProcess merges stderr into stdout: the protocol's unique prefixes still tell them apart."""
    code = (
        "import sys\n"
        "print('PROGRESS 0.5000 scoring', flush=True)\n"
        "sys.stderr.write('[WARNING] thick slices\\n'); sys.stderr.flush()\n"
        "sys.stderr.write('ERROR: it broke\\n'); sys.stderr.flush()\n"
        'print(\'{"torch": "x"}\', flush=True)\n'
        "print('DONE', flush=True)\n"
    )
    process = C.WorkerProcess(python(code), launch=launch)
    lines = drain(process)
    assert lines == [
        ("stdout", "PROGRESS 0.5000 scoring"),
        ("log", "[WARNING] thick slices"),
        ("log", "ERROR: it broke"),
        ("stdout", '{"torch": "x"}'),
        ("stdout", "DONE"),
    ]
    assert process.logLines == ["[WARNING] thick slices", "ERROR: it broke"]


def test_the_worker_stays_in_its_hosts_process_group():
    """Started like launchConsoleProcess: no session or process group of its own (it ends with Slicer)."""
    if os.name == "nt":
        pytest.skip("POSIX process groups")
    process = C.WorkerProcess(python("import os; print(os.getpgid(0), os.getsid(0), flush=True)"))
    lines = drain(process)
    assert lines == [("log", f"{os.getpgid(0)} {os.getsid(0)}")]


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
    assert process.returncode == -9  # killed by poll() after the grace


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_request_cancel_stops_a_cooperative_process_promptly():
    process = C.WorkerProcess(python("import time; print('ready', flush=True); time.sleep(60)"))
    while not any(line == "ready" for _, line in process.poll()):
        time.sleep(0.02)
    process.requestCancel(grace=60.0)
    drain(process, timeout=10)
    assert process.returncode == -15  # stopped by the SIGTERM, not by the kill after the 5 s grace


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
        encoding="utf-8",
        errors="replace",
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


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_a_worker_killed_by_the_system_gets_the_memory_hint(tmp_path):
    """What the kernel's out-of-memory killer leaves: an [INFO] line and exit -9. The message says why."""
    code = (
        "import os, signal; print('[INFO] loaded model m', flush=True); os.kill(os.getpid(), signal.SIGKILL)"
    )
    process = C.WorkerProcess(python(code))
    drain(process)
    message = C.runError(C.WorkerRun(None, tmp_path, process))
    assert process.returncode == -9
    assert "killed by the system" in message and "ran out of memory" in message and "[INFO]" not in message


def test_start_worker_run_builds_the_slicer_command_and_cleans_up_on_failure(tmp_path):
    seen = []

    def launch(command):
        seen.append(command)
        return C.plainLaunch(python("print('DONE', flush=True)"))

    def inputs(folder):
        (folder / "input.nrrd").write_bytes(b"x")
        return folder / "input.nrrd", None, {}

    run = C.startWorkerRun(tmp_path, None, inputs, launch, device="cpu", threshold=2.5, parentPid=1234)
    drain(run.process)
    (command,) = seen
    assert "--no-figure" in command and command[command.index("--parent-pid") + 1] == "1234"
    assert command[command.index("--threshold") + 1] == "2.5" and "--model" not in command
    assert run.tempDir.parent == tmp_path and run.threshold == 2.5
    run.cleanup()
    assert list(tmp_path.iterdir()) == []

    def broken(folder):
        (folder / "partial.nrrd").write_bytes(b"x")
        raise ValueError("Select an input volume with image data.")

    with pytest.raises(ValueError, match="image data"):
        C.startWorkerRun(tmp_path, None, broken, launch)
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


def test_device_info_survives_the_widgets_polling():
    """The panel's timer polls the query (and drops what it reads) until it ends; the answer is kept."""
    torch = pytest.importorskip("torch")
    query = C.WorkerProcess(build_device_info_command(sys.executable))
    drain(query)
    info, error = C.deviceInfoFromQuery(query)
    assert error is None and info["torch"] == torch.__version__
    failing = C.WorkerProcess(python("import sys; print('ERROR: torch cannot be used: boom'); sys.exit(1)"))
    drain(failing)
    assert C.deviceInfoFromQuery(failing) == (None, "torch cannot be used: boom")
