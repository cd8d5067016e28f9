"""AnoDODE: unsupervised anomaly detection in brain MRI (3D Slicer scripted module).

The four template parts; the work is in ``AnoDODESlicerLib`` (Qt-free, tested with slicer-core and Slicer 5.10's
own module code): the worker process started with ``launchConsoleProcess`` and ending with Slicer, the MRML
outputs, the first-run installation the PyTorch extension's way, the panel's texts.
"""

import html
import importlib
import logging
import os
import pathlib
import sys
import tempfile
from typing import Annotated, Union

import qt
import slicer
import vtk
from AnoDODESlicerLib import child_process, dependencies, mrml, panel, sample_data
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

logger = logging.getLogger("AnoDODE")
DEVICES = ["auto", "cpu", "cuda"]
PRESETS = ["fast", "standard", "exact"]
MODELS_DIR = child_process.MODULE_DIR / "Resources" / "Models"
CONTRAST_REFERENCE = "AnoDODE.contrast."  # + contrast name: node references on the parameter node


#
# AnoDODE
#


class AnoDODE(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "AnoDODE"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["AnoDODE developers (AnoDODE project)"]
        self.parent.helpText = """
Unsupervised anomaly detection in brain MRI: a model of healthy brain tissue gives every voxel an anomaly
score. Select a FLAIR (Sample Data has one under "AnoDODE") and click <b>Detect anomalies</b>: a heat map is
shown over the scan, the voxels above the threshold form the segment "Anomaly", and every axial slice gets a
score (plot and table; click a point or a row to go to that slice). The threshold slider re-labels the heat
map without running the model again. Research software: not for clinical use.
"""
        self.parent.acknowledgementText = """
Method after Hu &amp; Jin, "Unsupervised anomaly detection with a diffusion ODE likelihood" (arXiv 2310.06420).
Module layout after the 3D Slicer scripted-module template. Sample scan: BraTS 2023 (adult glioma), as hosted
for the SlicerMONAIAuto3DSeg extension's testing data.
"""
        slicer.app.connect("startupCompleted()", self.registerSampleData)
        slicer.app.connect("startupCompleted()", configureTerminology)

    def registerSampleData(self) -> None:
        import SampleData

        icon = os.path.join(os.path.dirname(self.parent.path), "Resources", "Icons", "AnoDODE.png")
        sample_data.register(SampleData.SampleDataLogic, icon)


def configureTerminology() -> None:
    """Load the "Anomaly" segment's terminology context into Slicer's Terminologies module (once), as
    TotalSegmentator loads its own at startup."""
    terminologies = getattr(getattr(slicer, "modules", None), "terminologies", None)
    if terminologies is not None:
        mrml.ensureTerminology(terminologies.logic(), child_process.MODULE_DIR / "Resources")


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
    heatmapOpacity: Annotated[float, WithinRange(0.0, 1.0)] = mrml.OVERLAY_OPACITY
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
        self._run = None  # the run in progress (child_process.WorkerRun) or None
        self._installing = False  # the first-run installation is in progress (blocking, PyTorch Utils' way)
        self._deviceQuery = None  # the worker answering --device-info
        self._deviceInfo = None
        self._modelInfo = None
        self._contrastSelectors = {}  # contrast name -> (label, qMRMLNodeComboBox)
        self._plotViews = []
        self._lastInputID = None
        self._settingThreshold = False
        self._thresholdMovedDuringRun = False
        self._pollTimer = None
        self._rethresholdTimer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/AnoDODE.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = AnoDODELogic()

        # only the module's own heat maps can be chosen as the heat-map output: never the input scan
        self.ui.outputHeatmapSelector.addAttribute("vtkMRMLScalarVolumeNode", mrml.ROLE_ATTRIBUTE, "heatmap")
        self.ui.progressBar.setRange(0, 1000)
        self.ui.progressBar.hide()
        self.showMessages([])
        self.ui.contrastsWidget.hide()
        self.ui.scoreTableView.setSelectionBehavior(qt.QAbstractItemView.SelectRows)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.thresholdSliderWidget.connect("valueChanged(double)", self.onThresholdChanged)
        self.ui.autoThresholdCheckBox.connect("toggled(bool)", self.onAutoThresholdToggled)
        self.ui.heatmapOpacitySliderWidget.connect("valueChanged(double)", self.onOpacityChanged)
        self.ui.showPlotButton.connect("clicked(bool)", self.onShowPlot)
        self.ui.scoreTableView.connect("clicked(QModelIndex)", self.onTableClicked)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelChanged)

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(200)
        self._pollTimer.connect("timeout()", self.onPoll)
        self._rethresholdTimer = qt.QTimer()
        self._rethresholdTimer.setSingleShot(True)
        self._rethresholdTimer.setInterval(150)
        self._rethresholdTimer.connect("timeout()", self.applyThreshold)

        self.initializeParameterNode()
        self.onModelChanged()
        qt.QTimer.singleShot(0, self.requestDeviceInfo)

    def cleanup(self) -> None:
        self.abortWork()
        for view in self._plotViews:
            view.disconnect("dataSelected(vtkStringArray*,vtkCollection*)", self.onPlotDataSelected)
        self.removeObservers()

    def onReload(self) -> None:
        """Developer mode's Reload: the helper package first (Slicer re-reads only this file), then the module."""
        import AnoDODESlicerLib

        self.abortWork()
        for name in AnoDODESlicerLib.reloadSubmodules():
            logger.debug("reloaded %s", name)
        if "AnoDODELib.worker" in sys.modules:  # the protocol helpers used in Slicer's process
            importlib.reload(sys.modules["AnoDODELib.worker"])
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified
            )

    def onSceneStartClose(self, caller, event) -> None:
        self.abortWork()  # a scoring run ends with its scene; a package installation does not (see abortWork)
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if (
                first
                and not first.IsA("vtkMRMLLabelMapVolumeNode")
                and not first.GetAttribute(mrml.ROLE_ATTRIBUTE)
            ):
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified
            )
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            p = self._parameterNode
            self._lastInputID = p.inputVolume.GetID() if p.inputVolume else None
            for name, (_, selector) in self._contrastSelectors.items():
                selector.setCurrentNode(p.parameterNode.GetNodeReference(CONTRAST_REFERENCE + name))
            self._updateThresholdRange()
            self.ui.scoreTableView.setMRMLTableNode(p.outputTable)
            units = p.outputTable.GetAttribute("AnoDODE.map_units") if p.outputTable else None
            self.ui.thresholdInfoLabel.text = panel.thresholdExplanation(self._modelInfo, units)
            self._checkCanApply()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        p = self._parameterNode
        inputID = p.inputVolume.GetID() if p and p.inputVolume else None
        if inputID != self._lastInputID:
            self._lastInputID = inputID
            self.detachStaleResults()
        self._checkCanApply()

    def detachStaleResults(self) -> None:
        """After the input changed: outputs computed from another volume are unlinked (kept in the scene,
        untouched), so they are neither re-labelled onto the new grid nor overwritten by the next run."""
        p = self._parameterNode
        heat = p.outputHeatmap if p else None
        if heat is None or mrml.resultsInput(heat) is None or mrml.resultsMatchInput(heat, p.inputVolume):
            return
        with slicer.util.NodeModify(p.parameterNode):
            p.outputHeatmap = p.outputSegmentation = p.outputTable = None
        self.ui.scoreTableView.setMRMLTableNode(None)
        self.showMessages([])
        self.setStatus(
            f"The input changed: the previous results ('{heat.GetName()}' ...) stay in the scene but are "
            f"detached; the next run creates new outputs."
        )

    def _checkCanApply(self, caller=None, event=None) -> None:
        running, p = self._run is not None, self._parameterNode
        missing = [name for name, node in self.selectedContrastNodes().items() if node is None]
        state = panel.applyButtonState(
            running,
            running and self._run.process.cancelled,
            self._installing,
            bool(p and p.inputVolume),
            missing,
        )
        self.ui.applyButton.text, self.ui.applyButton.enabled, self.ui.applyButton.toolTip = state
        for w in (
            self.ui.inputsCollapsibleButton,
            self.ui.outputHeatmapSelector,
            self.ui.outputSegmentationSelector,
            self.ui.outputTableSelector,
            self.ui.modelPathLineEdit,
            self.ui.deviceComboBox,
            self.ui.presetComboBox,
        ):
            w.enabled = not running and not self._installing

    # --- model, contrasts, device

    def onModelChanged(self, path=None) -> None:
        p = self._parameterNode
        if path is None and p:
            path = p.modelPath
        try:
            self._modelInfo = panel.readModelInfo(path, MODELS_DIR)
            self.ui.modelInfoLabel.text = self._modelInfo.summary()
        except ValueError as exc:
            self._modelInfo = None
            self.ui.modelInfoLabel.text = str(exc)
        self.updateContrastSelectors(self._modelInfo.extraContrasts if self._modelInfo else ())
        calibrated = self.calibratedThreshold()
        if p and p.autoThreshold and calibrated is not None and not self.hasResults():
            self.setThresholdQuietly(calibrated)  # before the first run: the model's calibrated threshold
        self.ui.thresholdInfoLabel.text = panel.thresholdExplanation(self._modelInfo)
        self._updateThresholdRange()
        self._checkCanApply()

    def updateContrastSelectors(self, names) -> None:
        """One volume selector per contrast the model reads besides the input (e.g. "T1CE volume:")."""
        for name in names:
            if name not in self._contrastSelectors:
                selector = slicer.qMRMLNodeComboBox()
                selector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
                selector.showChildNodeTypes = False
                selector.addEnabled = selector.removeEnabled = False
                selector.noneEnabled = True
                selector.toolTip = (
                    f"The {name.upper()} scan of the same patient (resampled onto the input by position)."
                )
                selector.setMRMLScene(slicer.mrmlScene)
                label = qt.QLabel(f"{name.upper()} volume:")
                self.ui.contrastsWidget.layout().addRow(label, selector)
                selector.connect(
                    "currentNodeChanged(vtkMRMLNode*)", lambda node, n=name: self.onContrastSelected(n, node)
                )
                self._contrastSelectors[name] = (label, selector)
                if self._parameterNode:
                    selector.setCurrentNode(
                        self._parameterNode.parameterNode.GetNodeReference(CONTRAST_REFERENCE + name)
                    )
        for name, (label, selector) in self._contrastSelectors.items():
            label.visible = selector.visible = name in names
        self.ui.contrastsWidget.visible = bool(names)

    def onContrastSelected(self, name: str, node) -> None:
        if self._parameterNode:
            self._parameterNode.parameterNode.SetNodeReferenceID(
                CONTRAST_REFERENCE + name, node.GetID() if node else None
            )
        self._checkCanApply()

    def selectedContrastNodes(self) -> dict:
        names = self._modelInfo.extraContrasts if self._modelInfo else ()
        return {
            name: self._contrastSelectors[name][1].currentNode() if name in self._contrastSelectors else None
            for name in names
        }

    def requestDeviceInfo(self) -> None:
        """Ask the worker what torch sees (not imported here); the answer arrives through onPoll."""
        if self._deviceQuery is not None:
            return
        if dependencies.installedVersion(dependencies.TORCH) is None:
            self.ui.deviceInfoLabel.text = "torch not installed yet (installed on the first run)"
            return
        self.ui.deviceInfoLabel.text = "torch: asking the worker..."
        self._deviceQuery = self.logic.startDeviceQuery()
        self._pollTimer.start()

    # --- installing the Python packages (first run)

    def onApplyButton(self) -> None:
        if self._installing:
            return
        if self._run is not None:
            self.cancelRun()
            return
        unmet = self.logic.unmetRequirements()
        if unmet and not self.installRequirements(unmet):
            return
        self.startRun()

    def installRequirements(self, unmet) -> bool:
        """One confirmation (packages, download size, GPU or CPU build), then PyTorch Utils' ``installTorch``
        and ``slicer.util.pip_install``. Blocking like the reference extensions: those keep the GUI refreshed
        while pip prints, and nothing the module does (scene close, reload) can interrupt pip half-way."""

        def installing() -> None:  # after the confirmation: a wait cursor while pip works
            self._installing = True
            slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
            self._checkCanApply()
            self.ui.logTextEdit.clear()
            self.showMessages([])
            self.setStatus(
                "Installing Python packages (progress in Advanced > Log); this can take minutes..."
            )

        self.setStatus("Checking which PyTorch build fits this computer...")
        try:
            result = dependencies.installFirstRun(
                unmet,
                self.logic.pyTorchUtilsLogic,
                self.askInstallChoice,
                slicer.util.pip_install,
                self.appendLog,
                installing,
            )
        finally:
            if self._installing:
                slicer.app.restoreOverrideCursor()
            self._installing = False
            self._checkCanApply()
        self.setStatus(result.status)
        self.showMessages([result.message] if result.message else [], error=True)
        if result.ok:
            self.requestDeviceInfo()
        return result.ok

    @staticmethod
    def askInstallChoice(plan):
        """The confirmation dialog: one button per ``plan.choices()`` (GPU build, CPU-only build) and Cancel;
        returns the chosen ``dependencies.InstallChoice`` or None."""
        box = qt.QMessageBox(slicer.util.mainWindow())
        box.setWindowTitle("AnoDODE: install Python packages")
        box.setIcon(qt.QMessageBox.Question)
        box.setText(plan.text())
        buttons = [(box.addButton(c.label, qt.QMessageBox.AcceptRole), c) for c in plan.choices()]
        box.addButton(qt.QMessageBox.Cancel)
        box.setDefaultButton(buttons[0][0])
        box.exec_()
        return next((c for button, c in buttons if box.clickedButton() == button), None)

    # --- running

    def startRun(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("AnoDODE could not start.", waitCursor=True):
            self.ui.logTextEdit.clear()
            self.showMessages([])
            self._thresholdMovedDuringRun = False
            threshold = None if p.autoThreshold else p.threshold
            self._run = self.logic.startRun(
                p.inputVolume,
                p.brainMask,
                p.modelPath,
                p.device,
                p.preset,
                threshold,
                self.selectedContrastNodes(),
                heatmapNode=p.outputHeatmap,
            )
            self.appendLog("$ " + " ".join(self._run.process.command))
            self.ui.progressBar.setRange(0, 1000)
            self.ui.progressBar.value = 0
            self.ui.progressBar.show()
            self.setStatus("Starting...")
            self._pollTimer.start()
        self._checkCanApply()

    def onPoll(self) -> None:
        if self._deviceQuery is not None:
            self._pollDeviceQuery()
        if self._run is not None:
            self._pollRun()
        if self._run is None and self._deviceQuery is None:
            self._pollTimer.stop()

    def _pollDeviceQuery(self) -> None:
        query = self._deviceQuery
        query.poll()
        if query.returncode is None:
            return
        self._deviceQuery = None
        self._deviceInfo, error = self.logic.deviceInfoFromQuery(query)
        self.ui.deviceInfoLabel.text = panel.describeDevice(self._deviceInfo, error)

    def _pollRun(self) -> None:
        run = self._run
        from AnoDODELib.worker import parse_line

        for kind, line in run.process.poll():
            if kind == "stdout":
                msg = parse_line(line)
                if msg.kind == "progress":
                    self.ui.progressBar.value = int(1000 * msg.fraction)
                    if not run.process.cancelled:
                        self.setStatus(f"{msg.text} ({100 * msg.fraction:.0f}%)")
                    continue
                if msg.kind == "done":
                    run.done = True
                    continue
            self.appendLog(line)
        if run.process.returncode is not None:
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
                slicer.util.errorDisplay(
                    f"AnoDODE failed: {error}", detailedText="\n".join(run.process.logLines)
                )
                return
            with slicer.util.tryWithErrorDisplay("AnoDODE could not load the results.", waitCursor=True):
                outputs = self.logic.loadResults(
                    run, p.outputHeatmap, p.outputSegmentation, p.outputTable, opacity=p.heatmapOpacity
                )
                with slicer.util.NodeModify(p.parameterNode):
                    p.outputHeatmap = outputs["heatmap"]
                    p.outputSegmentation = outputs["segmentation"]
                    p.outputTable = outputs["table"]
                threshold = float(run.report["threshold"])
                mine = self.thresholdAfterRun(threshold)  # a threshold moved during the run is kept
                self._updateThresholdRange(max(threshold, mine))  # first, so the slider does not clamp it
                self.setThresholdQuietly(mine)
                self.ui.scoreTableView.setMRMLTableNode(outputs["table"])
                self.ui.thresholdInfoLabel.text = panel.thresholdExplanation(
                    self._modelInfo, run.report.get("map_units")
                )
                self.showPlot(outputs["plot"])
                top = mrml.mostAnomalousRow(outputs["table"])
                position = None
                if top is not None:  # like the scan figure and the plot's peak: the most anomalous slice
                    self.ui.scoreTableView.selectRow(top)
                    self.jumpToRow(top)
                    position = (
                        outputs["table"].GetTable().GetValueByName(top, mrml.POSITION_COLUMN).ToDouble()
                    )
                spacing = mrml.sliceSpacingMm(run.inputNode, int(run.report.get("slice_axis", 0)))
                warnings = panel.runWarnings(
                    run.process.logLines, run.report, spacing, run.device, self._deviceInfo
                )
                self.showMessages(warnings)
                status = panel.summary(run.report, len(warnings), top, position)
                if mine != threshold:
                    status += " " + self.relabel(mine)
                self.setStatus(status)
        finally:
            run.cleanup()
            self.ui.progressBar.hide()
            self._checkCanApply()

    def cancelRun(self) -> None:
        """Ask the worker to stop and return at once; onPoll finishes the run when the process has ended."""
        if self._run is None or self._run.process.cancelled:
            return
        self.setStatus("Cancelling...")
        self._run.process.requestCancel()
        self._checkCanApply()

    def abortWork(self) -> None:
        """Stop a scoring run now (scene close, module cleanup, reload): a short blocking cancel. A package
        installation is never interrupted: it is a blocking call of PyTorch Utils / pip_install that ends on
        its own, so no torch is left half-installed."""
        if self._run is not None:
            self._run.process.cancel(grace=1.0)
            self.finishRun()
        if self._deviceQuery is not None:
            self._deviceQuery.cancel(grace=1.0)
            self._deviceQuery = None
        if self._pollTimer is not None:
            self._pollTimer.stop()

    # --- threshold, display and slice navigation

    def calibratedThreshold(self):
        return self._modelInfo.threshold if self._modelInfo else None

    def hasResults(self) -> bool:
        p = self._parameterNode
        return bool(p and mrml.resultsMatchInput(p.outputHeatmap, p.inputVolume))

    def setThresholdQuietly(self, value: float) -> None:
        """Set the threshold from code: not a user choice, so "calibrated" stays ticked."""
        self._settingThreshold = True
        try:
            self._parameterNode.threshold = float(value)
        finally:
            self._settingThreshold = False

    def thresholdAfterRun(self, reportThreshold: float) -> float:
        """The threshold to show after a run: the one the slider was moved to during the run (a user choice,
        applied to the new heat map), else the run's."""
        p = self._parameterNode
        if self._thresholdMovedDuringRun and p and not p.autoThreshold:
            return float(p.threshold)
        return float(reportThreshold)

    def onThresholdChanged(self, value) -> None:
        if self._settingThreshold:
            return
        p = self._parameterNode
        calibrated = self.calibratedThreshold()
        tolerance = 0.5 * 10.0**-self.ui.thresholdSliderWidget.decimals + 1e-12  # slider rounding
        if p and p.autoThreshold and (calibrated is None or abs(value - calibrated) > tolerance):
            p.autoThreshold = False  # the user chose a threshold: it is no longer the calibrated one
        if self._run is not None:
            self._thresholdMovedDuringRun = True  # applied to the new results when the run ends
        self._rethresholdTimer.start()

    def onAutoThresholdToggled(self, checked) -> None:
        calibrated = self.calibratedThreshold()
        if checked and calibrated is not None and self._parameterNode:
            self._updateThresholdRange(calibrated)
            self.setThresholdQuietly(calibrated)
            if self._run is not None:
                self._thresholdMovedDuringRun = False
            self._rethresholdTimer.start()

    def applyThreshold(self) -> None:
        p = self._parameterNode
        if not p or self._run is not None or not self.hasResults():
            return
        current = p.outputHeatmap.GetAttribute("AnoDODE.Threshold")
        tolerance = 0.5 * 10.0**-self.ui.thresholdSliderWidget.decimals + 1e-12
        if current is not None and abs(float(current) - p.threshold) <= tolerance:
            return
        self.setStatus(self.relabel(p.threshold))

    def relabel(self, threshold: float) -> str:
        """Re-label the current heat map at ``threshold`` (the model is not run); returns the status text."""
        p = self._parameterNode
        label = self.logic.rethreshold(p.inputVolume, p.outputHeatmap, p.outputSegmentation, threshold)
        self.logic.markThreshold(p.outputHeatmap, self.currentChart(), threshold)
        return panel.thresholdStatus(threshold, float(label.sum()) * mrml.voxelVolumeMl(p.inputVolume))

    def _updateThresholdRange(self, threshold=None) -> None:
        p = self._parameterNode
        if threshold is None:
            calibrated = self.calibratedThreshold()
            threshold = max(p.threshold if p else 1.0, calibrated if calibrated is not None else 0.0)
        mapMax = None
        if self.hasResults():
            mapMax = float(slicer.util.arrayFromVolume(p.outputHeatmap).max())
        top, step = panel.thresholdSliderRange(threshold, mapMax)
        self._settingThreshold = True  # a clamped value is not a user choice
        try:
            self.ui.thresholdSliderWidget.maximum = top
            self.ui.thresholdSliderWidget.singleStep = step
        finally:
            self._settingThreshold = False

    def onOpacityChanged(self, value) -> None:
        p = self._parameterNode
        if p and p.outputHeatmap is not None:
            mrml.setHeatmapOpacity(slicer.mrmlScene, p.outputHeatmap, float(value))

    def currentChart(self):
        p = self._parameterNode
        return p.outputTable.GetNodeReference(mrml.PLOT_REFERENCE) if p and p.outputTable else None

    def onShowPlot(self) -> None:
        chart = self.currentChart()
        self.showPlot(chart) if chart else self.setStatus(
            "No slice scores yet: click 'Detect anomalies' first."
        )

    def onTableClicked(self, index) -> None:
        self.jumpToRow(index.row())

    def onPlotDataSelected(self, seriesIDs, selections) -> None:
        chart = self.currentChart()
        if chart is None or chart.GetNumberOfPlotSeriesNodes() == 0:
            return
        row = mrml.rowFromPlotSelection(seriesIDs, selections, chart.GetNthPlotSeriesNode(0).GetID())
        if row is not None:
            self.ui.scoreTableView.selectRow(row)
            self.jumpToRow(row)

    def jumpToRow(self, row: int) -> None:
        p = self._parameterNode
        if p and p.inputVolume and p.outputTable and self.hasResults():
            self.logic.jumpToSlice(p.inputVolume, p.outputTable, row)

    def showPlot(self, chart) -> None:
        """The slice-score plot in the layout (switching to one with a plot view), clickable for jumps."""
        self.logic.showPlot(chart)
        layoutManager = slicer.app.layoutManager()
        for i in range(layoutManager.plotViewCount if layoutManager else 0):
            view = layoutManager.plotWidget(i).plotView()
            if view not in self._plotViews:
                view.connect("dataSelected(vtkStringArray*,vtkCollection*)", self.onPlotDataSelected)
                self._plotViews.append(view)

    # --- helpers

    def setStatus(self, text: str) -> None:
        self.ui.statusLabel.text = text

    def showMessages(self, messages, error: bool = False) -> None:
        """The visible message area under the status line: run warnings or an installation problem."""
        self.ui.messageLabel.text = (
            panel.warningsHtml(messages) if not error else "<br>".join(html.escape(m) for m in messages)
        )
        self.ui.messageLabel.visible = bool(messages)

    def appendLog(self, line: str) -> None:
        self.ui.logTextEdit.appendPlainText(line)
        logger.info("worker: %s", line)


#
# AnoDODELogic
#


class AnoDODELogic(ScriptedLoadableModuleLogic):
    """Everything a script needs without the GUI: ``runBlocking`` scores a volume node and returns the output
    nodes; ``startRun``/``loadResults`` are its non-blocking halves used by the widget."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return AnoDODEParameterNode(super().getParameterNode())

    # --- dependencies and environment

    @staticmethod
    def unmetRequirements() -> list:
        return dependencies.unmetRequirements()

    @staticmethod
    def pyTorchUtilsLogic():
        """PyTorch Utils' logic (the PyTorch extension, EXTENSION_DEPENDS), or None when it is not installed."""
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            return None
        return PyTorchUtils.PyTorchUtilsLogic()

    @staticmethod
    def launch(command):
        """Start a child process the Slicer way: ``slicer.util.launchConsoleProcess`` in Slicer's startup
        environment (PythonSlicer sets up Slicer's Python itself) with the module folder on PYTHONPATH."""
        startup = slicer.util.startupEnvironment()
        return slicer.util.launchConsoleProcess(
            command,
            useStartupEnvironment=True,
            updateEnvironment=child_process.workerEnvironmentUpdate(startup.get("PYTHONPATH", "")),
        )

    def startDeviceQuery(self) -> child_process.WorkerProcess:
        from AnoDODELib.worker import build_device_info_command

        command = build_device_info_command(child_process.pythonSlicerExecutable())
        return child_process.WorkerProcess(command, launch=self.launch)

    deviceInfoFromQuery = staticmethod(child_process.deviceInfoFromQuery)

    # --- running

    def startRun(
        self,
        inputNode,
        maskNode=None,
        modelPath=None,
        device="auto",
        preset="standard",
        threshold=None,
        otherContrastNodes=None,
        heatmapNode=None,
    ) -> child_process.WorkerRun:
        """Write the input (and mask) to a temporary folder and start the worker; returns at once.

        otherContrastNodes: for a multi-contrast model, its other contrasts as {name: volume node}, e.g.
        {"t1ce": node}; each is written with its own geometry and resampled onto the input by position.
        heatmapNode: the heat-map output the results will go to (refused here if it is the input)."""
        mrml.checkOutputNodes(inputNode, heatmapNode)
        return child_process.startWorkerRun(
            slicer.app.temporaryPath,
            inputNode,
            lambda folder: mrml.writeWorkerInputs(folder, inputNode, maskNode, otherContrastNodes),
            self.launch,
            modelPath=modelPath,
            device=device,
            preset=preset,
            threshold=threshold,
            parentPid=os.getpid(),  # the worker ends with Slicer
        )

    runError = staticmethod(child_process.runError)  # None when a run succeeded, else one readable message

    def loadResults(
        self,
        run: child_process.WorkerRun,
        heatmapNode=None,
        segmentationNode=None,
        tableNode=None,
        opacity=None,
    ) -> dict:
        """Read the worker's outputs into (reused or new) nodes on the input's geometry."""
        import json

        import SimpleITK as sitk

        configureTerminology()
        report = json.loads((run.outputDir / "report.json").read_text(encoding="utf-8"))
        anomaly = sitk.GetArrayFromImage(sitk.ReadImage(str(run.outputDir / "anomaly.nrrd")))
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(run.outputDir / "label.nrrd")))
        run.report = report
        outputs = mrml.applyResults(
            slicer.mrmlScene,
            run.inputNode,
            anomaly,
            label,
            report,
            heatmapNode=heatmapNode,
            segmentationNode=segmentationNode,
            tableNode=tableNode,
        )
        if opacity is not None:
            mrml.setHeatmapOpacity(slicer.mrmlScene, outputs["heatmap"], float(opacity))
        self.markThreshold(outputs["heatmap"], outputs["plot"], float(report["threshold"]))
        return outputs

    def runBlocking(
        self,
        inputNode,
        maskNode=None,
        modelPath=None,
        device="auto",
        preset="standard",
        threshold=None,
        heatmapNode=None,
        segmentationNode=None,
        tableNode=None,
        timeout=None,
        otherContrastNodes=None,
    ) -> dict:
        """Score ``inputNode`` and wait; returns the output nodes plus the report. Raises RuntimeError."""
        run = self.startRun(
            inputNode, maskNode, modelPath, device, preset, threshold, otherContrastNodes, heatmapNode
        )
        try:
            run.process.wait(timeout)
            for kind, line in run.process.poll():
                if kind == "stdout" and line == "DONE":
                    run.done = True
            error = self.runError(run)
            if error:
                raise RuntimeError(f"AnoDODE failed: {error}")
            outputs = self.loadResults(run, heatmapNode, segmentationNode, tableNode)
            outputs["report"] = run.report
            spacing = mrml.sliceSpacingMm(inputNode, int(run.report.get("slice_axis", 0)))
            outputs["warnings"] = panel.runWarnings(run.process.logLines, run.report, spacing)
            return outputs
        finally:
            run.cleanup()

    # --- results

    summary = staticmethod(panel.summary)  # the status line after a run, from its report

    def rethreshold(self, inputNode, heatmapNode, segmentationNode, threshold: float):
        return mrml.rethreshold(slicer.mrmlScene, inputNode, heatmapNode, segmentationNode, threshold)

    @staticmethod
    def markThreshold(heatmapNode, chartNode, threshold: float) -> None:
        colors = getattr(getattr(slicer, "modules", None), "colors", None)
        if colors is not None:
            mrml.markThreshold(slicer.mrmlScene, colors.logic(), heatmapNode, chartNode, threshold)

    def jumpToSlice(self, inputNode, tableNode, row: int) -> None:
        axis = int(tableNode.GetAttribute("AnoDODE.slice_axis") or 0)
        index = int(tableNode.GetTable().GetValueByName(row, mrml.SLICE_COLUMN).ToInt())
        mrml.jumpSlicesTo(slicer.mrmlScene, mrml.sliceCenterRAS(inputNode, axis, index))

    @staticmethod
    def showPlot(chartNode) -> None:
        """Show the slice-score plot, switching to a layout with a plot view if the current one has none."""
        plots = getattr(getattr(slicer, "modules", None), "plots", None)
        if plots is not None:
            mrml.showChart(slicer.mrmlScene, plots.logic(), chartNode)


#
# AnoDODETest
#


class AnoDODETest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Developer mode > Reload and Test, or ctest). The bundled model on a real
    skull-stripped FLAIR: ``$ANODODE_SELFTEST_FLAIR`` (with ``$ANODODE_SELFTEST_LESION``, a lesion mask on any
    grid) when set, else the module's Sample Data scan; plus the cancel and error paths. Without the Python
    packages only the parameter-node test runs and the others are reported as skipped (never installed by a
    test). Like the module, the test never imports torch in Slicer's process."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_AnoDODE_parameter_node()
        unmet = AnoDODELogic.unmetRequirements()
        if unmet:  # Slicer's Reload and Test calls runTest directly: a SkipTest would end as an error
            logging.warning(message := panel.selfTestSkipped([r.spec() for r, _ in unmet]))
            self.delayDisplay(message)
            return
        self.setUp()
        self.test_AnoDODE_bundled_model_finds_the_lesion()
        self.setUp()
        self.test_AnoDODE_cancel_and_error()

    def _logic(self):
        logic = AnoDODELogic()
        unmet = logic.unmetRequirements()
        if unmet:  # a test never installs packages (runTest checks first; this guards a direct call)
            self.skipTest(
                "AnoDODE's Python packages are not installed: " + ", ".join(r.spec() for r, _ in unmet)
            )
        return logic

    def _flair(self):
        """(FLAIR volume node, lesion label map node or None)."""
        path = os.environ.get("ANODODE_SELFTEST_FLAIR")
        if path:
            lesion = os.environ.get("ANODODE_SELFTEST_LESION")
            return (
                slicer.util.loadVolume(path),
                slicer.util.loadVolume(lesion, {"labelmap": True}) if lesion else None,
            )
        import SampleData

        registered = getattr(slicer.modules, "sampleDataSources", {}).get(
            sample_data.FLAIR_SAMPLE.category, []
        )
        if not any(getattr(s, "sampleName", None) == sample_data.FLAIR_SAMPLE.name for s in registered):
            sample_data.register(SampleData.SampleDataLogic, self._iconPath())
        return SampleData.downloadSample(sample_data.FLAIR_SAMPLE.name), None

    @staticmethod
    def _iconPath() -> str:
        return str(child_process.MODULE_DIR / "Resources" / "Icons" / "AnoDODE.png")

    def test_AnoDODE_parameter_node(self):
        self.delayDisplay("Parameter node: defaults, every node parameter set and cleared")
        p = AnoDODELogic().getParameterNode()
        self.assertIsNone(p.brainMask)
        for className in ("vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationNode"):
            node = slicer.mrmlScene.AddNewNodeByClass(className)
            p.brainMask = node
            self.assertIs(p.brainMask, node)
            p.brainMask = None
            self.assertIsNone(p.brainMask)

    def test_AnoDODE_bundled_model_finds_the_lesion(self):
        import numpy as np

        logic = self._logic()
        self.delayDisplay("Scoring a skull-stripped FLAIR with the bundled model (fast preset)")
        flair, lesion = self._flair()
        before = slicer.util.arrayFromVolume(flair).copy()
        out = logic.runBlocking(flair, preset="fast")
        heat = slicer.util.arrayFromVolume(out["heatmap"])
        self.assertEqual(heat.shape, before.shape)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(flair), before)
        peak = panel.peakIndex(heat)
        if lesion is not None:
            region, what = mrml.maskArrayForInput(lesion, flair).astype(bool), "the lesion mask"
        else:
            region, what = (
                panel.hyperintenseRegion(before),
                "FLAIR-hyperintense tissue (no lesion mask given)",
            )
        self.assertTrue(region[peak], f"the heat map peaks at {peak}, outside {what}")
        self.delayDisplay(
            f"Heat map peak {peak} lies in {what}; the slice table has {out['table'].GetNumberOfRows()} rows"
        )

    def test_AnoDODE_cancel_and_error(self):
        import time

        logic = self._logic()
        flair, _ = self._flair()
        self.delayDisplay("Cancelling a run returns at once")
        run = logic.startRun(flair, device="cpu", preset="exact")  # the bundled model, slowest preset
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not any(
                s == "stdout" and line.startswith("PROGRESS") for s, line in run.process.poll()
            ):
                time.sleep(0.1)
            t0 = time.monotonic()
            run.process.requestCancel()
            self.assertLess(time.monotonic() - t0, 0.5)
            while run.process.returncode is None and time.monotonic() - t0 < 10:
                run.process.poll()
                time.sleep(0.05)
            self.assertIsNotNone(run.process.returncode)
            self.assertFalse((run.outputDir / "report.json").exists())
        finally:
            run.cleanup()
        self.assertFalse(run.tempDir.exists())

        self.delayDisplay("A broken model folder gives one readable error")
        with self.assertRaises(RuntimeError) as ctx:
            logic.runBlocking(flair, modelPath=tempfile.mkdtemp(prefix="AnoDODEEmpty-"), preset="fast")
        self.assertIn("model.json", str(ctx.exception))
        self.delayDisplay("Test passed")
