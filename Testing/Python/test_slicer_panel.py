"""What the module panel shows and does, without a Slicer GUI: model facts from model.json, the threshold
slider's range, engine warnings (from a real worker run on a real scan), the device line; the widget's own
threshold and input-change methods on Slicer's real parameter node; and the module's self-test
(AnoDODETest, Slicer's ScriptedLoadableModuleTest) run with the bundled model on a real BraTS FLAIR."""

from __future__ import annotations

import hashlib
import json
import sys
import types

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO, require_data
from slicer_reference import loadVolumeWithSimpleITK

sys.path.insert(0, str(REPO / "AnoDODE"))
from AnoDODESlicerLib import panel, sample_data

MODELS = REPO / "AnoDODE" / "Resources" / "Models"


# ----------------------------------------------------------------------------- model facts


def test_bundled_model_info_agrees_with_the_engine():
    from AnoDODELib.bundle import load_model

    info = panel.readModelInfo(None, MODELS)
    model = load_model(None)
    assert (
        info.folder.resolve() == MODELS.joinpath(info.name).resolve()
        or (info.folder / "model.json").is_file()
    )
    assert info.threshold == pytest.approx(model.config.calibration.threshold)
    assert info.contrasts == tuple(model.config.features.contrasts)
    assert info.extraContrasts == info.contrasts[1:]
    assert f"{info.threshold:.4g}" in info.summary()


def test_model_info_of_a_two_contrast_model_and_bad_folders(tmp_path):
    folder = tmp_path / "two"
    folder.mkdir()
    (folder / "model.json").write_text(
        json.dumps(
            {
                "name": "two",
                "config": {"features": {"contrasts": ["flair", "t1ce"]}, "calibration": {"threshold": 2.5}},
            }
        ),
        encoding="utf-8",
    )
    info = panel.readModelInfo(folder, MODELS)
    assert (info.contrasts, info.extraContrasts, info.threshold) == (("flair", "t1ce"), ("t1ce",), 2.5)
    (folder / "model.json").write_text(
        json.dumps({"name": "uncalibrated", "config": {"calibration": {}}}), encoding="utf-8"
    )
    assert panel.readModelInfo(folder, MODELS).threshold is None
    with pytest.raises(ValueError, match="no readable model.json"):
        panel.readModelInfo(tmp_path / "missing", MODELS)
    (folder / "model.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        panel.readModelInfo(folder, MODELS)
    with pytest.raises(ValueError, match="no bundled model"):
        panel.readModelInfo(".", tmp_path / "empty")


@pytest.mark.parametrize(
    ("threshold", "mapMax", "top"),
    [(3.8, None, 7.6), (0.2, None, 1.0), (3.8, 41.2, 41.2), (3.8, 5.0, 7.6), (3.8, float("nan"), 7.6)],
)
def test_threshold_slider_range(threshold, mapMax, top):
    got_top, step = panel.thresholdSliderRange(threshold, mapMax)
    assert got_top == pytest.approx(top) and step == pytest.approx(top / 500)


# ----------------------------------------------------------------------------- warnings and device line


def test_engine_warnings_parse_and_deduplicate():
    lines = [
        "[INFO] reading",
        "[WARNING] thick slices (6.5 mm vs 0.9 mm in-plane): small lesions may be missed",
        "ERROR: x",
        "[WARNING] scan does not look skull-stripped",
        "[WARNING] scan does not look skull-stripped",
    ]
    assert panel.engineWarnings(lines) == [
        "thick slices (6.5 mm vs 0.9 mm in-plane): small lesions may be missed",
        "scan does not look skull-stripped",
    ]
    assert "<li>a &lt;b&gt;</li>" in panel.warningsHtml(["a <b>"]) and panel.warningsHtml([]) == ""


def test_status_line_speaks_the_readers_words():
    """Issue 23.6: no "bpd" in the status line; the anomalous volume, the slice shown, time and device."""
    report = {
        "volume_score_bpd": 1.5,
        "threshold": 7.3719,
        "seconds": 41.6,
        "device": "cpu",
        "preset": "standard",
        "anomalous_volume_ml": 12.345,
    }
    text = panel.summary(report, 2, 30, -12.04)
    assert text == (
        "Done: 12.3 mL anomalous at threshold 7.37. Showing slice 30 (S -12.0 mm), the most anomalous. "
        "42 s on CPU, standard accuracy. 2 warnings: see below."
    )
    assert "bpd" not in text and "bits" not in text
    assert panel.summary({"threshold": 1.0, "seconds": 2.0, "device": "cuda:0"}) == (
        "Done: anomalous volume unknown at threshold 1. 2 s on CUDA:0."
    )
    assert panel.thresholdStatus(4.25, 3.04) == (
        "Threshold 4.25: 3.0 mL anomalous (re-labelled; the model was not re-run)."
    )


def test_threshold_is_explained_in_its_units():
    info = panel.ModelInfo(MODELS, "m", "", 7.3719, ("flair",), quantile=0.995)
    text = panel.thresholdExplanation(info, "bits/dim")
    assert "Calibrated value 7.372: the 99.5th percentile of the map on normal training tissue." in text
    assert text.endswith("Units: bits/dim.") and "Anomaly segment" in text
    bundled = panel.readModelInfo(None, MODELS)
    assert bundled.quantile == pytest.approx(0.995)  # the bundled model.json's calibration
    assert "Calibrated value" not in panel.thresholdExplanation(None)


def test_a_killed_worker_is_reported_with_a_memory_hint():
    """Issue 23.10: exit -9 (or 137 through a launcher) after "[INFO] loaded model" is the system's OOM kill."""
    log = ["[INFO] loaded model anodode-flair-brats", "[INFO] scoring"]
    for code in (-9, 137):
        message = panel.workerExitMessage(code, log)
        assert "ran out of memory" in message and "[INFO]" not in message
    assert "SIGSEGV" in panel.workerExitMessage(-11, log)
    assert panel.workerExitMessage(3, [*log, "Traceback ...", "boom"]) == (
        "the worker ended with exit code 3: Traceback ... | boom"
    )


def test_apply_button_states():
    assert panel.applyButtonState(False, False, False, True) == (
        "Detect anomalies",
        True,
        "Score the input with the model (runs in a separate process; click again to cancel).",
    )
    assert panel.applyButtonState(False, False, False, False)[1] is False  # no input
    assert panel.applyButtonState(True, False, False, True)[:2] == ("Cancel", True)
    assert panel.applyButtonState(True, True, False, True)[:2] == ("Cancelling...", False)
    assert panel.applyButtonState(False, False, True, True)[:2] == ("Installing Python packages...", False)
    text, enabled, tip = panel.applyButtonState(False, False, False, True, ["t1ce"])
    assert not enabled and tip == "Select the t1ce volume first."


def test_gpu_fallback_warning():
    gpu = {"cuda_available": True}
    assert panel.deviceWarnings("auto", {"device": "cpu"}, gpu)
    assert panel.deviceWarnings("cuda", {"device": "cpu"}, None)
    assert not panel.deviceWarnings("auto", {"device": "cuda:0"}, gpu)
    assert not panel.deviceWarnings("auto", {"device": "cpu"}, {"cuda_available": False})
    assert not panel.deviceWarnings("cpu", {"device": "cpu"}, gpu)


def test_describe_device():
    assert "no usable GPU, auto uses the CPU" in panel.describeDevice(
        {"torch": "2.3.0", "cuda_build": None, "cuda_available": False, "gpus": []}
    )
    line = panel.describeDevice(
        {"torch": "2.3.0", "cuda_build": "12.1", "cuda_available": True, "gpus": ["H100"]}
    )
    assert "CUDA 12.1" in line and "H100" in line
    assert panel.describeDevice(None, "ImportError: x").startswith("torch cannot be used")


def test_real_scan_warnings_reach_the_panel(tmp_path, tiny_model_dir):
    """A clinical scan with 6.5 mm slices and its skull: the worker's warnings come out as panel messages; the
    brain is extracted (said in the log), so there is no "not skull-stripped" warning."""
    import subprocess

    from AnoDODESlicerLib.child_process import workerEnvironment

    from AnoDODELib.worker import build_command

    scan = require_data("pyradiomics", "brain1_image.nrrd")
    command = build_command(
        sys.executable, scan, tmp_path / "out", model=tiny_model_dir, device="cpu", preset="fast"
    )
    proc = subprocess.run(
        command,
        check=False,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=600,
        env=workerEnvironment(),
    )
    warnings = panel.engineWarnings(proc.stderr.splitlines())
    assert any("thick slices" in w for w in warnings), proc.stderr
    assert not any("skull-stripped" in w for w in warnings), proc.stderr
    assert "brain extracted with HD-BET" in proc.stderr


# ----------------------------------------------------------------------------- sample data and self-test checks


def test_sample_checksum_matches_a_copy_of_the_same_file():
    local = require_data("brats2023_noGT", "BraTS-GLI-00001-000", sample_data.FLAIR_SAMPLE.fileName)
    assert hashlib.sha256(local.read_bytes()).hexdigest() == sample_data.FLAIR_SAMPLE.sha256
    assert sample_data.FLAIR_SAMPLE.checksum() == "SHA256:" + sample_data.FLAIR_SAMPLE.sha256
    calls = []
    fake = types.SimpleNamespace(registerCustomSampleDataSource=lambda **kw: calls.append(kw))
    sample_data.register(fake, "icon.png")
    assert calls[0]["uris"] == [sample_data.FLAIR_SAMPLE.uri] and calls[0]["checksums"] == [
        sample_data.FLAIR_SAMPLE.checksum()
    ]


def test_peak_and_hyperintense_region():
    a = np.zeros((3, 4, 5))
    a[1, 2, 3] = 7.0
    a[0, 0, 0] = np.nan
    assert panel.peakIndex(a) == (1, 2, 3)
    flair = np.zeros((10, 10, 10))
    flair[2:8, 2:8, 2:8] = 100.0
    flair[4, 4, 4] = 1000.0
    region = panel.hyperintenseRegion(flair)
    assert region[4, 4, 4] and region.sum() == 1
    with pytest.raises(ValueError):
        panel.hyperintenseRegion(np.zeros((2, 2, 2)))


# ----------------------------------------------------------------------------- the widget's methods


class Slider:
    decimals = 4
    maximum = 10.0
    singleStep = 0.01


def bare_widget(module, parameterNode, calibrated=3.8):
    """An AnoDODEWidget without Qt: the real methods, with stand-ins for the .ui widgets they touch."""
    widget = object.__new__(module.AnoDODEWidget)
    widget._parameterNode = parameterNode
    widget._settingThreshold = False
    widget._thresholdMovedDuringRun = False
    widget._installing = False
    widget._run = None
    widget._lastInputID = parameterNode.inputVolume.GetID() if parameterNode.inputVolume else None
    widget._modelInfo = panel.ModelInfo(MODELS, "m", "", calibrated, ("flair",))
    widget._rethresholdTimer = types.SimpleNamespace(start=lambda: None)
    widget.statusTexts = []
    widget.setStatus = widget.statusTexts.append
    widget.showMessages = lambda messages, error=False: None
    widget._checkCanApply = lambda *a: None
    widget.ui = types.SimpleNamespace(
        thresholdSliderWidget=Slider(), scoreTableView=types.SimpleNamespace(setMRMLTableNode=lambda n: None)
    )
    return widget


def test_moving_the_slider_unticks_calibrated_but_code_does_not(anodode_module):
    module, scene, slicer, wrapper = anodode_module
    p = module.AnoDODELogic().getParameterNode()
    widget = bare_widget(module, p)
    widget.setThresholdQuietly(3.8)  # e.g. the model's calibrated threshold before the first run
    widget.onThresholdChanged(3.8)  # the slider echoing a value set from code
    assert p.autoThreshold and p.threshold == pytest.approx(3.8)
    widget.onThresholdChanged(5.0)  # the user drags it
    assert not p.autoThreshold
    p.autoThreshold = True
    widget.onAutoThresholdToggled(True)  # ticking it again goes back to the calibrated value
    assert p.threshold == pytest.approx(3.8) and p.autoThreshold
    widget._updateThresholdRange(3.8)
    assert widget.ui.thresholdSliderWidget.maximum == pytest.approx(7.6)


def test_a_threshold_moved_during_a_run_is_kept(anodode_module):
    """Issue 23.10: the slider moved while the model runs is applied to the new results, not dropped."""
    module, scene, slicer, wrapper = anodode_module
    p = module.AnoDODELogic().getParameterNode()
    widget = bare_widget(module, p)
    widget.setThresholdQuietly(3.8)
    assert widget.thresholdAfterRun(3.8) == pytest.approx(3.8)
    widget._run = object()  # a run in progress
    widget.onThresholdChanged(5.5)
    p.threshold = 5.5
    assert not p.autoThreshold and widget._thresholdMovedDuringRun
    widget.applyThreshold()  # nothing to re-label while running
    assert widget.thresholdAfterRun(3.8) == pytest.approx(5.5)
    p.autoThreshold = True
    widget.onAutoThresholdToggled(True)  # back to calibrated during the run: the run's threshold wins
    assert widget.thresholdAfterRun(3.8) == pytest.approx(3.8)


def test_installing_is_not_interrupted_by_closing_the_scene(anodode_module, tmp_path):
    """Issue 23.3: a scene close (or Reload) during the first-run installation stops a scoring run, never
    pip: the installation is Slicer's blocking pip_install, whose process runs to its end."""
    module, scene, slicer, wrapper = anodode_module
    p = module.AnoDODELogic().getParameterNode()
    widget = bare_widget(module, p)
    widget._pollTimer = None
    widget._deviceQuery = None
    widget.setParameterNode = lambda node: None
    marker = tmp_path / "installed"
    code = (
        "import pathlib, sys, time; print('Collecting torch', flush=True); time.sleep(1); "
        "pathlib.Path(sys.argv[1]).write_text('complete')"
    )

    def pip_install(specs):  # Slicer's pip_install: launchConsoleProcess + logProcessOutput
        proc = slicer.util.launchConsoleProcess(
            [sys.executable, "-c", code, str(marker)], useStartupEnvironment=False
        )
        widget.onSceneStartClose(None, None)  # the user closes the scene meanwhile
        widget.abortWork()  # or reloads the module
        slicer.util.logProcessOutput(proc)

    from AnoDODESlicerLib import dependencies

    result = dependencies.installFirstRun(
        [(dependencies.REQUIREMENTS[1], "not installed")],
        lambda: None,
        lambda plan: plan.choices()[0],
        pip_install,
        recheck=lambda: [],
    )
    assert result.ok and marker.read_text(encoding="utf-8") == "complete"


def test_changing_the_input_detaches_old_results(anodode_module):
    module, scene, slicer, wrapper = anodode_module
    from AnoDODESlicerLib import mrml

    p = module.AnoDODELogic().getParameterNode()
    first = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "first")
    slicer.util.updateVolumeFromArray(first, np.ones((4, 5, 6), np.float32))
    p.inputVolume = first
    anomaly = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    out = mrml.applyResults(
        scene,
        first,
        anomaly,
        mrml.labelFromAnomalyMap(anomaly, 0.5),
        {"threshold": 0.5, "slice_scores": [1.0] * 4, "slice_axis": 0},
    )
    mrml.markResultsInput(first, out["heatmap"], out["segmentation"], out["table"])
    p.outputHeatmap, p.outputSegmentation, p.outputTable = out["heatmap"], out["segmentation"], out["table"]
    widget = bare_widget(module, p)
    assert widget.hasResults()
    widget.onParameterNodeModified()  # nothing changed: results stay attached
    assert p.outputHeatmap is out["heatmap"]
    second = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "second")
    slicer.util.updateVolumeFromArray(second, np.ones((7, 5, 6), np.float32))
    p.inputVolume = second
    widget.onParameterNodeModified()
    assert p.outputHeatmap is None and p.outputSegmentation is None and p.outputTable is None
    assert scene.GetNodeByID(out["heatmap"].GetID()) is out["heatmap"]  # kept in the scene, untouched
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(out["heatmap"]), anomaly)
    assert "detached" in widget.statusTexts[-1] and not widget.hasResults()


# ----------------------------------------------------------------------------- the module's self-test


def test_module_self_test_runs_the_bundled_model_on_a_real_flair(anodode_module, monkeypatch):
    """AnoDODETest.runTest() as Slicer runs it, with the bundled model on BRATS_HG0015 and its expert lesion."""
    module, scene, slicer, wrapper = anodode_module
    flair = require_data("brats2012", "BRATS_HG0015", "BRATS_HG0015_FLAIR.mha")
    lesion = require_data("brats2012", "BRATS_HG0015", "BRATS_HG0015_truth.mha")
    monkeypatch.setenv("ANODODE_SELFTEST_FLAIR", str(flair))
    monkeypatch.setenv("ANODODE_SELFTEST_LESION", str(lesion))
    monkeypatch.setattr(slicer.util, "loadVolume", loadVolumeWithSimpleITK, raising=False)
    messages = []
    monkeypatch.setattr(
        slicer.util, "delayDisplay", lambda message, msec=None: messages.append(message), raising=False
    )
    module.AnoDODETest().runTest()
    assert any("lies in the lesion mask" in m for m in messages), messages
    assert messages[-1] == "Test passed"
    image = sitk.ReadImage(str(flair))
    assert image.GetSize()  # the scan really was read


def test_self_test_without_the_packages_reports_a_skip_instead_of_failing(anodode_module, monkeypatch):
    """Issue 23.8: Reload and Test calls runTest() directly, where a SkipTest is an error: without the
    packages the parameter-node test runs and the scoring tests are reported as skipped."""
    module, scene, slicer, wrapper = anodode_module
    from AnoDODESlicerLib import dependencies

    monkeypatch.setattr(
        module.AnoDODELogic,
        "unmetRequirements",
        staticmethod(lambda: [(dependencies.TORCH, "not installed")]),
    )
    monkeypatch.setattr(
        module.AnoDODELogic, "runBlocking", lambda *a, **k: pytest.fail("scored without torch")
    )
    messages = []
    monkeypatch.setattr(
        slicer.util, "delayDisplay", lambda message, msec=None: messages.append(message), raising=False
    )
    import unittest

    try:
        module.AnoDODETest().runTest()  # returns: no SkipTest raised through Slicer's runTest
    except unittest.SkipTest as exc:  # pytest would count it as a skip of this test, not a failure
        pytest.fail(f"runTest raised SkipTest: {exc}")
    assert messages[0].startswith("Parameter node")
    assert messages[-1].startswith("Scoring tests skipped") and "torch>=2.2" in messages[-1]


def test_partial_coverage_warning():
    report = {"slice_scores": [None] * 10 + [1.0] * 20 + [None] * 5}
    assert panel.coverageWarnings(report, 5.0) == []  # 20 slices x 5 mm = 100 mm: enough
    warning = panel.coverageWarnings(report, 3.0)  # 60 mm: a slab
    assert len(warning) == 1 and "60 mm" in warning[0] and "partial brain coverage" in warning[0]
    assert panel.coverageWarnings({"slice_scores": [None, None]}, 1.0) == []
    assert panel.coverageWarnings({"slice_scores": [1.0, None, 1.0]}, 0.0) == []
    assert "3 mm" in panel.coverageWarnings({"slice_scores": [1.0, None, 1.0]}, 1.0)[0]  # first to last slice
