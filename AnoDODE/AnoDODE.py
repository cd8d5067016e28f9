"""AnoDODE: unsupervised anomaly detection in brain MRI (3D Slicer scripted module).

The model runs in a separate process (``PythonSlicer -m AnoDODELib.worker``) so Slicer stays responsive and a
run can be cancelled; this file holds the four template parts. MRML handling and the child process are in the
package ``AnoDODESlicerLib`` (Qt-free, tested in CI with slicer-core).
"""
import importlib.util
import json
import logging
import pathlib
import shutil
import sys
import tempfile
from typing import Annotated, Union

import qt
import slicer
import vtk
from slicer import (
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from AnoDODESlicerLib import child_process, mrml

logger = logging.getLogger("AnoDODE")
DEVICES = ["auto", "cpu", "cuda"]
PRESETS = ["fast", "standard", "exact"]
# import name -> pip requirement; torch is installed through the PyTorch extension when it is available
DEPENDENCIES = {"torch": "torch", "torchdiffeq": "torchdiffeq>=0.2.3", "skimage": "scikit-image>=0.21",
                "SimpleITK": "SimpleITK>=2.2", "tqdm": "tqdm"}


#
# AnoDODE
#

class AnoDODE(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "AnoDODE"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["AnoDODE developers"]
        self.parent.helpText = """
Unsupervised anomaly detection in brain MRI. A diffusion-ODE density model of healthy-tissue features gives
every voxel an anomaly score (heat map, shown over the input) and a label (segment "Anomaly"); each axial
slice gets a score in bits per dimension. Select a skull-stripped scan (FLAIR works best), optionally a brain
mask, and click <b>Detect anomalies</b>. The threshold slider re-labels the heat map without re-running the
model. Not for clinical use.
"""
        self.parent.acknowledgementText = """
Method after Hu &amp; Jin, "Unsupervised anomaly detection with a diffusion ODE likelihood" (arXiv 2310.06420).
Module layout after the 3D Slicer scripted-module template.
"""


#
# AnoDODEParameterNode
#

@parameterNodeWrapper
class AnoDODEParameterNode:
    """GUI state, saved with the scene. ``modelPath`` empty (".") means the bundled model."""

    inputVolume: vtkMRMLScalarVolumeNode
    # the None is required: Slicer's wrapper writes None as the default of a node parameter (issue 12.1)
    brainMask: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode, None]  # noqa: UP007 - typing.Union
    modelPath: pathlib.Path
    device: Annotated[str, Choice(DEVICES)] = "auto"
    preset: Annotated[str, Choice(PRESETS)] = "standard"
    autoThreshold: bool = True
    threshold: Annotated[float, WithinRange(0.0, 1.0e6)] = 1.0
    outputHeatmap: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    outputTable: vtkMRMLTableNode


#
# AnoDODEWidget
#

class AnoDODEWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None            # the run in progress (AnoDODERun) or None
        self._pollTimer = None
        self._rethresholdTimer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/AnoDODE.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = AnoDODELogic()

        self.ui.progressBar.setRange(0, 1000)
        self.ui.progressBar.hide()
        self.ui.scoreTableView.setSelectionBehavior(qt.QAbstractItemView.SelectRows)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.thresholdSliderWidget.connect("valueChanged(double)", self.onThresholdChanged)
        self.ui.scoreTableView.connect("clicked(QModelIndex)", self.onTableClicked)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.updateModelInfo)

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(200)
        self._pollTimer.connect("timeout()", self.onPoll)
        self._rethresholdTimer = qt.QTimer()
        self._rethresholdTimer.setSingleShot(True)
        self._rethresholdTimer.setInterval(150)
        self._rethresholdTimer.connect("timeout()", self.applyThreshold)

        self.initializeParameterNode()
        self.updateModelInfo()
        qt.QTimer.singleShot(0, self.updateDeviceInfo)

    def cleanup(self) -> None:
        self.cancelRun()
        self.removeObservers()

    def onReload(self) -> None:
        """Developer mode's Reload: the helper package first (Slicer re-reads only this file), then the module."""
        import AnoDODESlicerLib

        for name in AnoDODESlicerLib.reloadSubmodules():
            logger.debug("reloaded %s", name)
        if "AnoDODELib.worker" in sys.modules:   # the protocol helpers used in Slicer's process
            importlib.reload(sys.modules["AnoDODELib.worker"])
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.cancelRun()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.IsA("vtkMRMLLabelMapVolumeNode") and not first.GetAttribute(
                    mrml.ROLE_ATTRIBUTE):
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._updateThresholdRange()
            self.ui.scoreTableView.setMRMLTableNode(self._parameterNode.outputTable)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        running = self._run is not None
        p = self._parameterNode
        self.ui.applyButton.text = "Cancel" if running else "Detect anomalies"
        self.ui.applyButton.enabled = running or bool(p and p.inputVolume)
        for w in (self.ui.inputsCollapsibleButton, self.ui.outputsCollapsibleButton, self.ui.deviceComboBox,
                  self.ui.presetComboBox):
            w.enabled = not running

    # --- information labels

    def updateModelInfo(self, path=None) -> None:
        if path is None and self._parameterNode:
            path = self._parameterNode.modelPath
        self.ui.modelInfoLabel.text = self.logic.describeModel(path)

    def updateDeviceInfo(self) -> None:
        self.ui.deviceInfoLabel.text = self.logic.describeTorch()

    # --- running

    def onApplyButton(self) -> None:
        if self._run is not None:
            self.cancelRun()
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("AnoDODE could not start.", waitCursor=True):
            if not self.logic.ensureDependencies():
                self.setStatus("Dependencies are missing: nothing was run.")
                return
            self.ui.logTextEdit.clear()
            threshold = None if p.autoThreshold else p.threshold
            self._run = self.logic.startRun(p.inputVolume, p.brainMask, p.modelPath, p.device, p.preset, threshold)
            self.appendLog("$ " + " ".join(self._run.process.command))
            self.ui.progressBar.value = 0
            self.ui.progressBar.show()
            self.setStatus("Starting...")
            self._pollTimer.start()
        self._checkCanApply()

    def onPoll(self) -> None:
        run = self._run
        if run is None:
            self._pollTimer.stop()
            return
        from AnoDODELib.worker import parse_line

        for stream, line in run.process.poll():
            if stream == "stdout":
                msg = parse_line(line)
                if msg.kind == "progress":
                    self.ui.progressBar.value = int(1000 * msg.fraction)
                    self.setStatus(f"{msg.text} ({100 * msg.fraction:.0f}%)")
                    continue
                if msg.kind == "done":
                    run.done = True
                    continue
            self.appendLog(line)
        if run.process.returncode is not None:
            self._pollTimer.stop()
            self.finishRun()

    def finishRun(self) -> None:
        run, self._run = self._run, None
        p = self._parameterNode
        try:
            if run.process.cancelled:
                self.setStatus("Cancelled.")
                return
            error = self.logic.runError(run)
            if error:
                self.setStatus("Failed: " + error)
                slicer.util.errorDisplay(f"AnoDODE failed: {error}", detailedText="\n".join(run.process.stderrLines))
                return
            with slicer.util.tryWithErrorDisplay("AnoDODE could not load the results.", waitCursor=True):
                outputs = self.logic.loadResults(run, p.outputHeatmap, p.outputSegmentation, p.outputTable)
                p.outputHeatmap = outputs["heatmap"]
                p.outputSegmentation = outputs["segmentation"]
                p.outputTable = outputs["table"]
                threshold = float(run.report["threshold"])
                self._updateThresholdRange(threshold)   # before setting it, so the slider does not clamp it
                p.threshold = threshold
                self.ui.scoreTableView.setMRMLTableNode(outputs["table"])
                self.logic.showPlot(outputs["plot"])
                self.setStatus(self.logic.summary(run.report))
        finally:
            run.cleanup()
            self.ui.progressBar.hide()
            self._checkCanApply()

    def cancelRun(self) -> None:
        if self._run is None:
            return
        self.setStatus("Cancelling...")
        self._run.process.cancel()
        self._pollTimer.stop()
        self.finishRun()

    # --- live threshold and slice navigation

    def onThresholdChanged(self, value) -> None:
        self._rethresholdTimer.start()

    def applyThreshold(self) -> None:
        p = self._parameterNode
        if not p or self._run is not None or not p.outputHeatmap or not p.inputVolume:
            return
        current = p.outputHeatmap.GetAttribute("AnoDODE.Threshold")
        tolerance = 0.5 * 10.0 ** -self.ui.thresholdSliderWidget.decimals + 1e-12   # slider rounding
        if current is not None and abs(float(current) - p.threshold) <= tolerance:
            return
        label = self.logic.rethreshold(p.inputVolume, p.outputHeatmap, p.outputSegmentation, p.threshold)
        p.autoThreshold = False
        self.setStatus(f"Threshold {p.threshold:.4g}: {int(label.sum())} anomalous voxels (model not re-run).")

    def _updateThresholdRange(self, threshold=None) -> None:
        p = self._parameterNode
        if threshold is None:
            threshold = p.threshold if p else 1.0
        if p and p.outputHeatmap and p.outputHeatmap.GetImageData():
            _, hi = mrml.heatmapDisplayRange(slicer.util.arrayFromVolume(p.outputHeatmap), threshold)
        else:
            hi = max(1.0, 2.0 * threshold)
        self.ui.thresholdSliderWidget.maximum = hi
        self.ui.thresholdSliderWidget.singleStep = hi / 500.0

    def onTableClicked(self, index) -> None:
        p = self._parameterNode
        if p and p.inputVolume and p.outputTable:
            self.logic.jumpToSlice(p.inputVolume, p.outputTable, index.row())

    # --- helpers

    def setStatus(self, text: str) -> None:
        self.ui.statusLabel.text = text

    def appendLog(self, line: str) -> None:
        self.ui.logTextEdit.appendPlainText(line)
        logger.info("worker: %s", line)


#
# AnoDODELogic
#

class AnoDODERun:
    """One worker run: its temporary folder, the process and, once read, the report."""

    def __init__(self, inputNode, tempDir: pathlib.Path, process) -> None:
        self.inputNode = inputNode
        self.tempDir = tempDir
        self.outputDir = tempDir / "output"
        self.process = process
        self.done = False
        self.report = None

    def cleanup(self) -> None:
        shutil.rmtree(self.tempDir, ignore_errors=True)


class AnoDODELogic(ScriptedLoadableModuleLogic):
    """Everything a script needs without the GUI: ``runBlocking`` scores a volume node and returns the output
    nodes; ``startRun``/``loadResults`` are its non-blocking halves used by the widget."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return AnoDODEParameterNode(super().getParameterNode())

    # --- dependencies and environment

    @staticmethod
    def missingDependencies() -> list:
        return [name for name in DEPENDENCIES if importlib.util.find_spec(name) is None]

    def ensureDependencies(self, askConfirmation: bool = True) -> bool:
        """Install what is missing after one confirmation; torch through the PyTorch extension if present."""
        missing = self.missingDependencies()
        if not missing:
            return True
        torchUtils = None
        if "torch" in missing:
            try:
                import PyTorchUtils
                torchUtils = PyTorchUtils.PyTorchUtilsLogic()
            except ImportError:
                torchUtils = None
        listing = "\n".join(f"  - {DEPENDENCIES[name]}" + (" (via the PyTorch extension)" if name == "torch"
                                                           and torchUtils else "") for name in missing)
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                f"AnoDODE needs these Python packages, which will be downloaded and installed now "
                f"(this can take several minutes):\n{listing}\n\nContinue?", "AnoDODE: install dependencies"):
            return False
        try:
            if torchUtils is not None:
                if torchUtils.installTorch(askConfirmation=False, torchVersionRequirement=">=2.2") is None:
                    raise RuntimeError("the PyTorch extension could not install torch")
                missing.remove("torch")
            if missing:
                slicer.util.pip_install(" ".join(DEPENDENCIES[name] for name in missing))
        except Exception as exc:  # noqa: BLE001 - any install failure gets the same advice
            slicer.util.errorDisplay(f"Installing AnoDODE's dependencies failed: {exc}\n\nInstall them from the "
                                     f"Python console with slicer.util.pip_install(...) and try again.")
            return False
        importlib.invalidate_caches()
        still = self.missingDependencies()
        if still:
            slicer.util.errorDisplay("These packages are still missing after installation: " + ", ".join(still))
            return False
        return True

    @staticmethod
    def describeTorch() -> str:
        if importlib.util.find_spec("torch") is None:
            return "torch not installed yet (installed on the first run)"
        try:
            import torch
        except Exception as exc:  # noqa: BLE001 - a broken install should not break the module panel
            return f"torch cannot be imported: {exc}"
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
        if torch.cuda.is_available():
            return f"torch {torch.__version__} ({build}); auto uses GPU: {torch.cuda.get_device_name(0)}"
        return f"torch {torch.__version__} ({build}); no GPU found, auto uses the CPU"

    @staticmethod
    def describeModel(path) -> str:
        if path and str(path) not in ("", "."):
            meta = pathlib.Path(path) / "model.json"
        else:
            found = sorted((child_process.MODULE_DIR / "Resources" / "Models").glob("*/model.json"))
            if not found:
                return "Bundled model: not found (choose a model folder)"
            meta = found[0]
        try:
            info = json.loads(meta.read_text())
        except (OSError, ValueError):
            return f"No readable model.json in {meta.parent}"
        return f"{info.get('name', meta.parent.name)}: {info.get('description', '')}".strip().rstrip(":")

    # --- running

    def startRun(self, inputNode, maskNode=None, modelPath=None, device="auto", preset="standard",
                 threshold=None, otherContrastNodes=None) -> AnoDODERun:
        """Write the input (and mask) to a temporary folder and start the worker; returns at once.

        otherContrastNodes: for a multi-contrast model, its other contrasts as {name: volume node}, e.g.
        {"t1ce": node}; each is written with its own geometry and resampled onto the input by position."""
        import SimpleITK as sitk

        from AnoDODELib.worker import build_command

        if inputNode is None or inputNode.GetImageData() is None:
            raise ValueError("Select an input volume with image data.")
        tempDir = pathlib.Path(tempfile.mkdtemp(prefix="AnoDODE-", dir=slicer.app.temporaryPath))
        try:
            inputPath = tempDir / "input.nrrd"
            sitk.WriteImage(mrml.sitkImageFromVolume(inputNode), str(inputPath))
            maskPath = None
            if maskNode is not None:
                mask = mrml.maskArrayForInput(maskNode, inputNode)
                maskPath = tempDir / "mask.nrrd"
                sitk.WriteImage(mrml.sitkImageFromVolume(inputNode, mask), str(maskPath))
            others = {}
            for name, node in (otherContrastNodes or {}).items():
                if node is None or node.GetImageData() is None:
                    raise ValueError(f"Select a {name} volume with image data.")
                others[name] = tempDir / f"contrast_{name}.nrrd"
                sitk.WriteImage(mrml.sitkImageFromVolume(node), str(others[name]))
            model = str(modelPath) if modelPath and str(modelPath) not in ("", ".") else None
            command = build_command(child_process.pythonSlicerExecutable(), inputPath, tempDir / "output",
                                    mask=maskPath, model=model, device=device, preset=preset, threshold=threshold,
                                    other_contrasts=others)
            process = child_process.WorkerProcess(command)
        except BaseException:
            shutil.rmtree(tempDir, ignore_errors=True)
            raise
        return AnoDODERun(inputNode, tempDir, process)

    @staticmethod
    def runError(run: AnoDODERun):
        """None when the run succeeded, else one readable message."""
        from AnoDODELib.worker import error_from_stderr

        code = run.process.returncode
        if code == 0 and run.done:
            return None
        message = error_from_stderr("\n".join(run.process.stderrLines))
        if message:
            return message
        tail = [line for line in run.process.stderrLines if line.strip()][-3:]
        return f"the worker ended with exit code {code}" + (": " + " | ".join(tail) if tail else "")

    def loadResults(self, run: AnoDODERun, heatmapNode=None, segmentationNode=None, tableNode=None) -> dict:
        """Read the worker's outputs into (reused or new) nodes on the input's geometry."""
        import SimpleITK as sitk

        report = json.loads((run.outputDir / "report.json").read_text())
        anomaly = sitk.GetArrayFromImage(sitk.ReadImage(str(run.outputDir / "anomaly.nrrd")))
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(run.outputDir / "label.nrrd")))
        run.report = report
        return mrml.applyResults(slicer.mrmlScene, run.inputNode, anomaly, label, report,
                                        heatmapNode=heatmapNode, segmentationNode=segmentationNode,
                                        tableNode=tableNode)

    def runBlocking(self, inputNode, maskNode=None, modelPath=None, device="auto", preset="standard",
                    threshold=None, heatmapNode=None, segmentationNode=None, tableNode=None,
                    timeout=None, otherContrastNodes=None) -> dict:
        """Score ``inputNode`` and wait; returns the output nodes plus the report. Raises RuntimeError."""
        run = self.startRun(inputNode, maskNode, modelPath, device, preset, threshold, otherContrastNodes)
        try:
            run.process.wait(timeout)
            for stream, line in run.process.poll():
                if stream == "stdout" and line == "DONE":
                    run.done = True
            error = self.runError(run)
            if error:
                raise RuntimeError(f"AnoDODE failed: {error}")
            outputs = self.loadResults(run, heatmapNode, segmentationNode, tableNode)
            outputs["report"] = run.report
            return outputs
        finally:
            if run.process.returncode is None:
                run.process.cancel()
            run.cleanup()

    # --- results

    def rethreshold(self, inputNode, heatmapNode, segmentationNode, threshold: float):
        return mrml.rethreshold(slicer.mrmlScene, inputNode, heatmapNode, segmentationNode, threshold)

    def jumpToSlice(self, inputNode, tableNode, row: int) -> None:
        axis = int(tableNode.GetAttribute("AnoDODE.slice_axis") or 0)
        index = int(tableNode.GetTable().GetValueByName(row, mrml.SLICE_COLUMN).ToInt())
        mrml.jumpSlicesTo(slicer.mrmlScene, mrml.sliceCenterRAS(inputNode, axis, index))

    @staticmethod
    def showPlot(chartNode) -> None:
        """Show the slice-score plot in the layout's plot view, if the layout has one."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None or layoutManager.plotWidget(0) is None:
            return
        layoutManager.plotWidget(0).mrmlPlotViewNode().SetPlotChartNodeID(chartNode.GetID())

    @staticmethod
    def summary(report: dict) -> str:
        return (f"Volume score {report['volume_score_bpd']:.4g} bpd; {report.get('anomalous_voxels', '?')} "
                f"anomalous voxels at threshold {report['threshold']:.4g}; {report['seconds']:.1f} s on "
                f"{report['device']} ({report.get('preset', '')}, model {report.get('model', '?')}).")


#
# AnoDODETest
#

class AnoDODETest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Developer mode > Reload and Test, or ctest): the whole module on SampleData
    MRBrainTumor1 with a small untrained model, fast preset, CPU."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_AnoDODE_run_rethreshold_reuse()
        self.setUp()
        self.test_AnoDODE_cancel_and_error()

    def _tinyModel(self, folder: pathlib.Path) -> str:
        import torch

        from AnoDODELib.bundle import AnoDODEModel, save_model
        from AnoDODELib.config import Calibration, ModelConfig, ScoreNetConfig

        torch.manual_seed(0)
        cfg = ModelConfig(score_net=ScoreNetConfig(channels=3, cond_channels=4, hidden=16, layers=2),
                          calibration=Calibration(threshold=0.05))
        return str(save_model(AnoDODEModel(cfg, metadata={"name": "self-test"}), folder / "tiny"))

    def _setUpInput(self):
        logic = AnoDODELogic()
        missing = logic.missingDependencies()
        if missing:   # a test should not install packages: run the module once to install them
            self.skipTest("AnoDODE dependencies are not installed: " + ", ".join(missing))
        import SampleData

        inputVolume = SampleData.downloadSample("MRBrainTumor1")
        self.modelDir = self._tinyModel(pathlib.Path(tempfile.mkdtemp(prefix="AnoDODETest-")))
        return logic, inputVolume

    def test_AnoDODE_run_rethreshold_reuse(self):
        import numpy as np

        self.delayDisplay("Scoring MRBrainTumor1 with a tiny model")
        logic, inputVolume = self._setUpInput()
        before = slicer.util.arrayFromVolume(inputVolume).copy()
        beforeMatrix = mrml.matrixToArray(mrml.ijkToRASMatrix(inputVolume))
        out = logic.runBlocking(inputVolume, modelPath=self.modelDir, device="cpu", preset="fast")
        heat, seg, table = out["heatmap"], out["segmentation"], out["table"]
        self.assertEqual(heat.GetImageData().GetDimensions(), inputVolume.GetImageData().GetDimensions())
        np.testing.assert_allclose(mrml.matrixToArray(mrml.ijkToRASMatrix(heat)), beforeMatrix)
        self.assertIsNotNone(seg.GetSegmentation().GetSegment(mrml.ANOMALY_SEGMENT_ID))
        axis = out["report"]["slice_axis"]
        self.assertEqual(table.GetNumberOfRows(), before.shape[axis])

        self.delayDisplay("Re-thresholding and jumping to a slice")
        anomaly = slicer.util.arrayFromVolume(heat)
        thr = float(np.percentile(anomaly[anomaly > 0], 90)) if (anomaly > 0).any() else 0.5
        label = logic.rethreshold(inputVolume, heat, seg, thr)
        self.assertEqual(int(label.sum()), int((anomaly > thr).sum()))
        logic.jumpToSlice(inputVolume, table, before.shape[axis] // 2)

        self.delayDisplay("Second run reuses the outputs")
        again = logic.runBlocking(inputVolume, modelPath=self.modelDir, device="cpu", preset="fast",
                                  heatmapNode=heat, segmentationNode=seg, tableNode=table)
        self.assertIs(again["heatmap"], heat)
        self.assertIs(again["segmentation"], seg)
        self.assertIs(again["table"], table)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(inputVolume), before)
        self.delayDisplay("Test passed")

    def test_AnoDODE_cancel_and_error(self):
        import time

        logic, inputVolume = self._setUpInput()
        self.delayDisplay("Cancelling a run")
        run = logic.startRun(inputVolume, modelPath=self.modelDir, device="cpu", preset="exact")
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not any(
                    s == "stdout" and line.startswith("PROGRESS") for s, line in run.process.poll()):
                time.sleep(0.1)
            run.process.cancel()
            self.assertIsNotNone(run.process.proc.poll())
            self.assertFalse((run.outputDir / "report.json").exists())
        finally:
            run.cleanup()

        self.delayDisplay("A broken model folder gives one readable error")
        with self.assertRaises(RuntimeError) as ctx:
            logic.runBlocking(inputVolume, modelPath=tempfile.mkdtemp(prefix="AnoDODEEmpty-"), preset="fast")
        self.assertIn("model.json", str(ctx.exception))
        self.delayDisplay("Test passed")
