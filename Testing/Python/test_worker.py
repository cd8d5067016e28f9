"""The Slicer module's worker process (``python -m AnoDODELib.worker``): line protocol, outputs on the input
grid, cancel by killing the process group, one-line errors. Runs the real engine with a tiny model: on a small
real scan (a downsampled BraTS FLAIR built at test time from ../shared/data) where the anatomy matters, on a
generated phantom slab (conftest ``small_scan``) where it does not, so those run without ../shared."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import REPO, require_data

from AnoDODELib.worker import build_command, error_from_stderr, parse_line

sys.path.insert(0, str(REPO / "AnoDODE"))
from AnoDODESlicerLib import child_process as AnoDODEProcess

FLAIR = ("brats2012", "BRATS_HG0015", "BRATS_HG0015_FLAIR.mha")
OUTPUTS = ("anomaly.nrrd", "label.nrrd", "brainmask.nrrd", "figure.png", "report.json")


def worker_env() -> dict:
    return AnoDODEProcess.workerEnvironment()


def run_worker(args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "AnoDODELib.worker", *map(str, args)],
        check=False,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
        env=worker_env(),
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def small_flair(tmp_path_factory) -> Path:
    """BraTS 2012 FLAIR, shrunk 3x in-plane and 2x through-plane and cropped to a 12-slice slab through the
    tumour (53x72x12), as .nrrd (the format Slicer hands the worker)."""
    source = require_data(*FLAIR)
    image = sitk.ReadImage(str(source), sitk.sitkFloat32)
    image = sitk.Shrink(image, [3, 3, 2])
    size = list(image.GetSize())
    axial = int(np.argmax(np.abs(np.array(image.GetDirection()).reshape(3, 3)[2])))  # index axis nearest S
    start = [0, 0, 0]
    start[axial] = size[axial] // 2 - 6
    size[axial] = 12
    image = sitk.RegionOfInterest(image, size, start)
    path = tmp_path_factory.mktemp("flair") / "flair_small.nrrd"
    sitk.WriteImage(image, str(path))
    return path


def progress_fractions(stdout: str) -> list[float]:
    return [parse_line(line).fraction for line in stdout.splitlines() if line.startswith("PROGRESS ")]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("ERROR")]


# ----------------------------------------------------------------------------- protocol helpers (no engine)


def test_protocol_helpers():
    assert parse_line("PROGRESS 0.2500 scoring slices\n") == ("progress", 0.25, "scoring slices")
    assert parse_line("PROGRESS 1.7 x").fraction == 1.0
    assert parse_line("DONE").kind == "done"
    assert parse_line("PROGRESS nope").kind == "log"
    assert parse_line("hello").text == "hello"
    assert error_from_stderr("[WARNING] x\nERROR: it broke\n") == "it broke"
    assert error_from_stderr("[INFO] fine") is None
    cmd = build_command(
        "py", "in.nrrd", "out", mask="m.nrrd", model="dir", device="cpu", preset="fast", threshold=0.5
    )
    assert cmd[:3] == ["py", "-m", "AnoDODELib.worker"]
    assert cmd[cmd.index("--threshold") + 1] == "0.5" and cmd[cmd.index("--mask") + 1] == "m.nrrd"
    assert "--threshold" not in build_command("py", "a", "b") and "--model" not in build_command(
        "py", "a", "b"
    )


def test_worker_environment_puts_the_module_folder_on_the_path():
    env = AnoDODEProcess.workerEnvironment({"PYTHONPATH": "/x"})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(REPO / "AnoDODE"), "/x"]
    assert Path(AnoDODEProcess.pythonSlicerExecutable()).exists()


# ----------------------------------------------------------------------------- real runs


def test_worker_scores_a_real_scan(small_flair, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    proc = run_worker(
        [
            "--input",
            small_flair,
            "--output-dir",
            out,
            "--model",
            tiny_model_dir,
            "--device",
            "cpu",
            "--preset",
            "fast",
        ]
    )
    assert proc.returncode == 0, proc.stderr
    assert error_lines(proc.stderr) == []
    lines = proc.stdout.splitlines()
    assert lines[-1] == "DONE"
    assert all(line.startswith("PROGRESS ") for line in lines[:-1]), lines
    fractions = progress_fractions(proc.stdout)
    assert len(fractions) >= 4 and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert all(b >= a for a, b in itertools.pairwise(fractions)), fractions

    image = sitk.ReadImage(str(small_flair))
    anomaly = sitk.ReadImage(str(out / "anomaly.nrrd"))
    label = sitk.ReadImage(str(out / "label.nrrd"))
    for result, pixel in ((anomaly, sitk.sitkFloat32), (label, sitk.sitkUInt8)):
        assert result.GetPixelID() == pixel
        assert result.GetSize() == image.GetSize()
        np.testing.assert_allclose(result.GetSpacing(), image.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(result.GetOrigin(), image.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(result.GetDirection(), image.GetDirection(), atol=1e-6)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    for key in (
        "volume_score_bpd",
        "slice_axis",
        "slice_scores",
        "slice_anomaly_scores",
        "threshold",
        "model",
        "device",
        "seconds",
        "nfe",
    ):
        assert key in report, key
    a, lab = sitk.GetArrayFromImage(anomaly), sitk.GetArrayFromImage(label)
    assert set(np.unique(lab)) <= {0, 1}
    np.testing.assert_array_equal(lab, (a > report["threshold"]).astype(np.uint8))
    assert len(report["slice_scores"]) == a.shape[report["slice_axis"]]
    assert report["device"] == "cpu" and report["model"] == "tiny-test-model"
    assert np.isfinite(report["volume_score_bpd"])
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)  # no temporary files left


def test_worker_threshold_and_mask(small_scan, tiny_model_dir, tmp_path):
    image = sitk.ReadImage(str(small_scan))
    mask = sitk.Cast(image > 0, sitk.sitkUInt8)
    mask_path = tmp_path / "mask.nrrd"
    sitk.WriteImage(mask, str(mask_path))
    out = tmp_path / "out"
    proc = run_worker(
        [
            "--input",
            small_scan,
            "--output-dir",
            out,
            "--model",
            tiny_model_dir,
            "--device",
            "cpu",
            "--preset",
            "fast",
            "--threshold",
            "0.123",
            "--mask",
            mask_path,
        ]
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["threshold"] == pytest.approx(0.123)
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "anomaly.nrrd")))
    assert not a[sitk.GetArrayFromImage(mask) == 0].any()  # nothing outside the given brain mask


def test_cancel_stops_the_worker_and_leaves_no_outputs(small_scan, tiny_model_dir, tmp_path):
    """Cancel: SIGTERM to the worker, SIGKILL after the grace period. Either way no output file is in place
    afterwards. Whether the worker finished its cleanup within the grace depends on the machine's load: its
    hidden staging folder, if any, is what SIGKILL may leave, and the next run's ``remove_stale_staging``
    removes it. No timing is asserted."""
    from AnoDODELib.atomic_write import STAGING_PREFIX, remove_stale_staging

    out = tmp_path / "out"
    cmd = build_command(sys.executable, small_scan, out, model=tiny_model_dir, device="cpu", preset="exact")
    worker = AnoDODEProcess.WorkerProcess(cmd)
    deadline = time.monotonic() + 120
    seen = []
    while time.monotonic() < deadline and not any(line.startswith("PROGRESS") for _, line in seen):
        seen += worker.poll()
        time.sleep(0.02)
    assert any(line.startswith("PROGRESS") for _, line in seen), seen
    worker.cancel(grace=30.0)
    assert worker.proc.poll() is not None and worker.proc.returncode != 0
    assert worker.waitForExit(30.0)
    leftovers = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert [n for n in leftovers if not n.startswith(STAGING_PREFIX)] == []  # no output in place
    remove_stale_staging(out)  # what the next run does first: a killed run's staging folder goes
    assert not out.exists() or list(out.iterdir()) == []


def test_cancel_kills_a_worker_that_ignores_sigterm(tmp_path):
    """The SIGKILL half of cancel, made deterministic: a worker that ignores SIGTERM is killed once the grace
    is over, whatever the machine's load."""
    if os.name == "nt":
        pytest.skip("POSIX signals; Windows uses taskkill /T")
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('PROGRESS 0.0000 stubborn', flush=True)\n"
        "time.sleep(600)\n"
    )
    worker = AnoDODEProcess.WorkerProcess([sys.executable, "-c", code])
    seen = []
    while not any(line.startswith("PROGRESS") for _, line in seen):
        assert worker.proc.poll() is None, seen
        seen += worker.poll()
        time.sleep(0.02)
    worker.cancel(grace=0.5)
    assert worker.proc.returncode == -signal.SIGKILL


def test_no_figure_renders_nothing_and_warns_of_nothing(small_scan, tiny_model_dir, tmp_path):
    """Slicer has no matplotlib: with --no-figure the worker writes no figure and logs no advice about it
    (without the flag the same run warns, so the check can fail)."""
    code = (
        "import sys; sys.modules['matplotlib'] = None; from AnoDODELib.worker import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    base = [str(small_scan), "--model", str(tiny_model_dir), "--device", "cpu", "--preset", "fast"]
    runs = {}
    for name, extra in (("plain", []), ("no_figure", ["--no-figure"])):
        out = tmp_path / name
        runs[name] = subprocess.run(
            [sys.executable, "-c", code, "--input", *base, "--output-dir", str(out), *extra],
            check=False,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=600,
            env=worker_env(),
            cwd=REPO,
        )
        assert runs[name].returncode == 0, runs[name].stderr

    def warnings(proc):
        return [line for line in proc.stderr.splitlines() if line.startswith("[WARNING]")]

    figure_warnings = [w for w in warnings(runs["plain"]) if "matplotlib" in w]
    assert figure_warnings and "pip install" in figure_warnings[0]  # the figure path, without matplotlib
    quiet = runs["no_figure"].stderr
    assert "matplotlib" not in quiet and "pip install" not in quiet, quiet
    assert warnings(runs["no_figure"]) == [w for w in warnings(runs["plain"]) if w not in figure_warnings]
    out = tmp_path / "no_figure"
    assert sorted(p.name for p in out.iterdir()) == sorted(set(OUTPUTS) - {"figure.png"})
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert set(report["outputs"]) == {"anomaly", "label", "brainmask", "report"}
    plain = json.loads((tmp_path / "plain" / "report.json").read_text(encoding="utf-8"))
    assert report["slice_scores"] == plain["slice_scores"]  # the same scores, only the figure left out
    assert build_command("py", "a", "b", figure=False)[-1] == "--no-figure"
    assert "--no-figure" not in build_command("py", "a", "b")


# ----------------------------------------------------------------------------- the worker ends with its host

WATCH_SCRIPT = (
    "import signal, sys, time\n"
    "from AnoDODELib import worker\n"
    "signal.signal(signal.SIGTERM, worker._on_signal)\n"
    "watch = worker.HostWatch(int(sys.argv[1]))\n"
    "watch.start()\n"
    "print('watching', flush=True)\n"
    "try:\n"
    "    time.sleep(60)\n"  # a mutant that never notices ends here, and the test fails
    "except worker.Cancelled:\n"
    "    print('stopped:', watch.reason, flush=True)\n"
    "    sys.exit(worker.EXIT_CANCELLED)\n"
)


def dead_pid() -> int:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    return finished.pid


def test_worker_with_a_gone_host_stops_before_scoring(small_scan, tiny_model_dir, tmp_path):
    pid = dead_pid()
    out = tmp_path / "out"
    proc = run_worker(
        ["--input", small_scan, "--output-dir", out, "--model", tiny_model_dir, "--parent-pid", pid]
    )
    assert proc.returncode == 143, proc.stderr
    assert error_lines(proc.stderr) == [f"ERROR: cancelled (the host process {pid} has ended)"]
    assert not out.exists()
    assert build_command("py", "a", "b", parent_pid=42)[-2:] == ["--parent-pid", "42"]
    live = run_worker(
        ["--input", tmp_path / "missing.nrrd", "--output-dir", out, "--parent-pid", os.getpid()]
    )
    assert "missing.nrrd" in error_lines(live.stderr)[0]  # a live host: the run goes on (to its own error)


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals and parent processes")
def test_worker_stops_when_its_host_ends():
    """A host that dies without a word (a crash): the worker notices and stops within its poll interval."""
    host = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    watcher = subprocess.Popen(
        [sys.executable, "-c", WATCH_SCRIPT, str(host.pid)],
        stdout=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=worker_env(),
    )
    try:
        assert watcher.stdout.readline().strip() == "watching"
        host.kill()
        host.wait()  # reaped, as a crashed Slicer is by its parent
        out, _ = watcher.communicate(timeout=60)
    finally:
        host.kill()
        watcher.kill()
    assert out.strip() == f"stopped: the host process {host.pid} has ended"
    assert watcher.returncode == 143


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals and parent processes")
def test_worker_stops_when_the_launcher_between_is_killed():
    """Slicer -> PythonSlicer launcher -> worker: killing the launcher (as a cancel may) leaves no orphan."""
    launcher_code = "import subprocess, sys; subprocess.run([sys.executable, '-c', sys.argv[1], sys.argv[2]])"
    launcher = subprocess.Popen(
        [sys.executable, "-c", launcher_code, WATCH_SCRIPT, str(os.getpid())],
        stdout=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=worker_env(),
    )
    try:
        assert launcher.stdout.readline().strip() == "watching"
        launcher.kill()
        launcher.wait()
        rest = launcher.stdout.read()  # EOF only once the worker, which shares the pipe, has ended too
    finally:
        launcher.kill()
    assert rest.strip() == f"stopped: its parent process {launcher.pid} has ended"


def test_sigterm_exits_promptly_with_one_error_line(small_scan, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    cmd = build_command(sys.executable, small_scan, out, model=tiny_model_dir, device="cpu", preset="exact")
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=worker_env(),
        cwd=REPO,
    )
    first = proc.stdout.readline()
    assert first.startswith("PROGRESS"), first
    proc.send_signal(signal.SIGTERM)
    try:
        _, stderr = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode != 0
    assert error_lines(stderr) == ["ERROR: cancelled (SIGTERM)"]
    assert not out.exists() or list(out.iterdir()) == []


# ----------------------------------------------------------------------------- error path


def assert_one_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    errors = error_lines(proc.stderr)
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith("ERROR: ") and "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert "DONE" not in proc.stdout
    return errors[0]


def test_missing_input(tmp_path, tiny_model_dir):
    missing = tmp_path / "nope.nrrd"
    proc = run_worker(["--input", missing, "--output-dir", tmp_path / "out", "--model", tiny_model_dir])
    assert_one_error(proc, str(missing))
    assert not (tmp_path / "out").exists()


def test_2d_image(tmp_path, tiny_model_dir):
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(
        sitk.GetImageFromArray(np.random.default_rng(0).random((32, 32)).astype(np.float32)), str(path)
    )
    proc = run_worker(["--input", path, "--output-dir", tmp_path / "out", "--model", tiny_model_dir])
    assert_one_error(proc, "2-D")
    assert not (tmp_path / "out").exists()


def test_bad_model_message_is_verbatim(small_scan, tmp_path):
    empty = tmp_path / "empty_model"
    empty.mkdir()
    proc = run_worker(["--input", small_scan, "--output-dir", tmp_path / "out", "--model", empty])
    line = assert_one_error(proc, "model.json")
    assert not line.startswith("ERROR: BundleError")  # user-facing messages are not prefixed by a type


def test_usage_error_is_one_line(tmp_path):
    proc = run_worker(["--output-dir", tmp_path])
    assert_one_error(proc, "--input")
    proc = run_worker(["--input", "x", "--output-dir", tmp_path, "--preset", "bogus"])
    assert_one_error(proc, "bogus")


# ----------------------------------------------------------------------------- the module's Logic, end to end


@pytest.fixture
def module_with_stubbed_gui(monkeypatch, tmp_path):
    """AnoDODE.py imported under slicer-core, with stand-ins for the Qt-only parts of Slicer's Python (qt, the
    ScriptedLoadableModule bases, parameterNodeWrapper) and a real MRML scene as ``slicer.mrmlScene``."""
    import importlib
    import types
    import unittest

    import slicer_reference

    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleWidget"):
        setattr(slm, name, type(name, (), {"__init__": lambda self, *a, **k: None}))
    slm.ScriptedLoadableModuleTest = unittest.TestCase
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.Choice = pnw.WithinRange = lambda *a, **k: None
    pnw.parameterNodeWrapper = lambda cls: cls
    monkeypatch.setitem(sys.modules, "qt", types.ModuleType("qt"))
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", slm)
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", pnw)
    scene = slicer.vtkMRMLScene()
    temp = tmp_path / "slicer_tmp"
    temp.mkdir()
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(slicer, "app", slicer_reference.stand_in_app(temp), raising=False)
    monkeypatch.delitem(sys.modules, "AnoDODE", raising=False)
    module = importlib.import_module("AnoDODE")
    yield module, scene, temp
    sys.modules.pop("AnoDODE", None)


def volume_node_from_file(scene, path):
    import slicer
    import vtk

    image = sitk.ReadImage(str(path))
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "flair")
    slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(image))
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    m = np.eye(4)
    m[:3, :3] = lps_to_ras @ np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    m[:3, 3] = lps_to_ras @ np.array(image.GetOrigin())
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(m))
    assert isinstance(node.GetImageData(), vtk.vtkImageData)
    return node, image


def test_module_logic_runs_the_worker_and_loads_results(module_with_stubbed_gui, small_flair, tiny_model_dir):
    import slicer

    module, scene, temp = module_with_stubbed_gui
    node, image = volume_node_from_file(scene, small_flair)
    before = slicer.util.arrayFromVolume(node).copy()
    logic = module.AnoDODELogic()
    assert logic.unmetRequirements() == []
    out = logic.runBlocking(node, modelPath=tiny_model_dir, device="cpu", preset="fast")
    heat, seg, table, report = out["heatmap"], out["segmentation"], out["table"], out["report"]
    assert heat.GetImageData().GetDimensions() == node.GetImageData().GetDimensions()
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(heat).shape, before.shape)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before)
    assert seg.GetSegmentation().GetSegment("Anomaly") is not None
    assert table.GetNumberOfRows() == before.shape[report["slice_axis"]]
    assert "mL anomalous" in logic.summary(report) and "bpd" not in logic.summary(report)
    # the worker read the node's geometry: its grid equals the file's
    assert report["slice_axis"] == int(
        np.argmax(np.abs(np.array(image.GetDirection()).reshape(3, 3)[2])[::-1])
    )
    assert list(temp.iterdir()) == []  # temporary input/output folder removed

    # second run with a segmentation as brain mask, a fixed threshold, outputs reused
    again = logic.runBlocking(
        node,
        maskNode=seg,
        modelPath=tiny_model_dir,
        device="cpu",
        preset="fast",
        threshold=0.2,
        heatmapNode=heat,
        segmentationNode=seg,
        tableNode=table,
    )
    assert again["heatmap"] is heat and again["segmentation"] is seg and again["table"] is table
    assert again["report"]["threshold"] == pytest.approx(0.2)
    logic_label = logic.rethreshold(node, heat, seg, 0.3)
    np.testing.assert_array_equal(logic_label, (slicer.util.arrayFromVolume(heat) > 0.3).astype(np.uint8))
    with pytest.raises(RuntimeError, match="model.json"):
        logic.runBlocking(node, modelPath=temp, device="cpu", preset="fast")
    assert list(temp.iterdir()) == []


@pytest.fixture(scope="module")
def two_contrast_model_dir(tmp_path_factory) -> Path:
    """An untrained, tiny model reading FLAIR + T1ce (6 feature channels)."""
    import torch

    from AnoDODELib.bundle import AnoDODEModel, save_model
    from AnoDODELib.config import Calibration, FeatureConfig, ModelConfig, ScoreNetConfig

    torch.manual_seed(0)
    cfg = ModelConfig(
        features=FeatureConfig(contrasts=("flair", "t1ce")),
        score_net=ScoreNetConfig(channels=6, cond_channels=4, hidden=16, layers=2),
        calibration=Calibration(threshold=0.05),
    )
    return save_model(
        AnoDODEModel(cfg, metadata={"name": "tiny-flair-t1ce"}), tmp_path_factory.mktemp("models") / "tiny2"
    )


def test_worker_other_contrasts(small_scan, tiny_model_dir, two_contrast_model_dir, tmp_path):
    cmd = build_command("py", "in.nrrd", "out", other_contrasts={"t1ce": "c.nrrd"})
    assert cmd[cmd.index("--contrast") + 1] == "t1ce=c.nrrd"
    base = ["--input", small_scan, "--device", "cpu", "--preset", "fast"]
    proc = run_worker([*base, "--output-dir", tmp_path / "a", "--model", two_contrast_model_dir])
    assert_one_error(proc, "no t1ce image")
    proc = run_worker(
        [*base, "--output-dir", tmp_path / "b", "--model", tiny_model_dir, "--contrast", f"t1ce={small_scan}"]
    )
    assert_one_error(proc, "does not use t1ce")
    proc = run_worker([*base, "--output-dir", tmp_path / "c", "--contrast", "t1ce"])
    assert_one_error(proc, "NAME=PATH")
    assert not any((tmp_path / d).exists() for d in "abc")


def test_module_logic_scores_a_two_contrast_model(
    module_with_stubbed_gui, small_flair, two_contrast_model_dir
):
    import slicer

    module, scene, temp = module_with_stubbed_gui
    node, image = volume_node_from_file(scene, small_flair)
    # the T1ce stand-in: the FLAIR on a 2x coarser grid of the same field of view (its first voxel covers the
    # FLAIR's first 2x2x2 voxels, so its centre sits half a FLAIR voxel in), as another node
    origin = image.TransformContinuousIndexToPhysicalPoint([0.5, 0.5, 0.5])
    coarse = sitk.Resample(
        image,
        [(s + 1) // 2 for s in image.GetSize()],
        sitk.Transform(),
        sitk.sitkLinear,
        origin,
        [2 * s for s in image.GetSpacing()],
        image.GetDirection(),
        0.0,
    )
    coarse_path = temp.parent / "t1ce.nrrd"
    sitk.WriteImage(coarse, str(coarse_path))
    other, _ = volume_node_from_file(scene, coarse_path)
    logic = module.AnoDODELogic()
    with pytest.raises(RuntimeError, match="no t1ce image"):
        logic.runBlocking(node, modelPath=two_contrast_model_dir, device="cpu", preset="fast")
    out = logic.runBlocking(
        node,
        modelPath=two_contrast_model_dir,
        device="cpu",
        preset="fast",
        otherContrastNodes={"t1ce": other},
    )
    assert set(out["report"]["contrasts"]) == {"flair", "t1ce"}
    assert slicer.util.arrayFromVolume(out["heatmap"]).shape == slicer.util.arrayFromVolume(node).shape
    assert list(temp.iterdir()) == []


def test_progress_never_goes_backwards():
    """The protocol promises a non-decreasing fraction: a stage reporting less than before repeats the last."""
    import io

    from AnoDODELib.worker import _Progress

    out = io.StringIO()
    progress = _Progress(out)
    for fraction in (0.1, 0.5, 0.3, 0.0, 0.7, 2.0):
        progress(fraction, "x")
    stage = progress.stage(0.0, 0.5)
    stage(0.9, "late stage")  # maps to 0.45, below the 1.0 already sent
    fractions = [float(line.split()[1]) for line in out.getvalue().splitlines()]
    assert fractions == [0.1, 0.5, 0.5, 0.5, 0.7, 1.0, 1.0]


def test_sigterm_while_the_model_loads_is_a_cancel_not_a_bundle_error(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    """SIGTERM arriving inside load_model (whose ``except Exception`` turns any failure into a BundleError) still
    cancels: exit 143 and "cancelled", because Cancelled is not an Exception."""
    from AnoDODELib import worker as w

    real_load = torch.load

    def load_then_terminated(*args, **kwargs):
        state = real_load(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # the handler raises Cancelled here, inside load_model's try
        return state

    monkeypatch.setattr(torch, "load", load_then_terminated)
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        code = w.main(
            ["--input", str(tmp_path / "x.nii.gz"), "--output-dir", str(tmp_path / "o")]
            + ["--model", str(tiny_model_dir), "--device", "cpu"]
        )
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
    err = capsys.readouterr().err
    assert code == w.EXIT_CANCELLED, err
    assert [ln for ln in err.splitlines() if ln.startswith("ERROR: ")] == ["ERROR: cancelled (SIGTERM)"]
