"""MRML side of the AnoDODE Slicer module: nodes in, arrays and files out, results back into nodes.

Only ``slicer`` (MRML classes), ``vtk``, ``numpy`` and, lazily, ``SimpleITK`` are used: no qt, no
``slicer.mrmlScene`` global, no ``slicer.app``. Every function takes the scene (or nodes) explicitly, so the
same code runs inside Slicer and under the Qt-free ``slicer-core`` wheel in CI.

Array layout: numpy arrays are (K, J, I) as returned by ``slicer.util.arrayFromVolume``, which is also the
layout of ``SimpleITK.GetArrayFromImage`` for the same grid, so engine outputs map voxel for voxel.
"""

from __future__ import annotations

import math

import numpy as np
import slicer
import slicer.util
import vtk
from vtk.util import numpy_support

ANOMALY_SEGMENT_ID = "Anomaly"
ANOMALY_SEGMENT_NAME = "Anomaly"
EDITED_SEGMENT_NAME = "Anomaly (edited)"
ANOMALY_COLOR = (1.0, 0.2, 0.1)
LABEL_DIGEST_TAG = "AnoDODE.LabelSHA256"  # segment tag: digest of the label the module last wrote into it
HEAT_COLOR_NAME = "AnoDODE Heat"
OVERLAY_OPACITY = 0.5
#: The heat map's window top: this percentile of the voxels above the threshold (so one outlier does not
#: compress the colours), and at least ``WINDOW_MIN_SPAN`` times the threshold (so the ramp has a width).
WINDOW_TOP_PERCENTILE = 99.0
WINDOW_MIN_SPAN = 1.25
ROLE_ATTRIBUTE = "AnoDODE.Role"
INPUT_REFERENCE = "AnoDODE.input"  # node reference from each output to the volume it was computed from
PLOT_REFERENCE = "AnoDODE.plotChart"
MAP_SCORE_COLUMN = "Anomaly score (top 1 cm2)"  # the heat map's mean over the slice's most anomalous 1 cm2
SCORE_COLUMN = "Likelihood (bits/dim)"  # the density map's mean there: the report's slice_scores
SLICE_COLUMN = "Slice"
POSITION_COLUMN = "S (mm)"  # world superior coordinate of the slice centre, as the scan figure's tile titles

#: Standard terminology of the "Anomaly" segment (DICOM SEG, SNOMED CT), as Slicer's terminology entries:
#: category Morphologically Altered Structure, type Lesion, anatomic region Brain. The DICOM master list has
#: no Lesion type, so the module ships a small context with it (``Resources/<TERMINOLOGY_FILE>``) and loads
#: it at startup, the way TotalSegmentator and MONAIAuto3DSeg ship theirs.
TERMINOLOGY_CONTEXT = "Segmentation category and type - AnoDODE"
TERMINOLOGY_FILE = "SegmentationCategoryTypeModifier-AnoDODE.term.json"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
CATEGORY_CODE = ("SCT", "49755003", "Morphologically Altered Structure")
TYPE_CODE = ("SCT", "52988006", "Lesion")
REGION_CODE = ("SCT", "12738006", "Brain")


# ----------------------------------------------------------------------------- geometry


def ijkToRASMatrix(volumeNode) -> vtk.vtkMatrix4x4:
    m = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(m)
    return m


def matrixToArray(m: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def copyGeometry(source, target) -> None:
    """Give ``target`` exactly the voxel-to-RAS geometry and parent transform of ``source``."""
    target.SetIJKToRASMatrix(ijkToRASMatrix(source))
    target.SetAndObserveTransformNodeID(source.GetTransformNodeID())


def worldIJKToRAS(volumeNode) -> np.ndarray:
    """4x4 IJK-to-world-RAS matrix: IJKToRAS with a linear parent transform hardened in (local if non-linear)."""
    m = matrixToArray(ijkToRASMatrix(volumeNode))
    parent = volumeNode.GetParentTransformNode()
    if parent is not None and parent.IsTransformToWorldLinear():
        toWorld = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(toWorld)
        m = matrixToArray(toWorld) @ m
    return m


def sitkImageFromVolume(volumeNode, array: np.ndarray | None = None):
    """A SimpleITK image (LPS) of the node's voxels (or ``array``, same shape) on its world geometry."""
    import SimpleITK as sitk

    data = np.array(slicer.util.arrayFromVolume(volumeNode) if array is None else array, copy=True)
    m = worldIJKToRAS(volumeNode)
    rasToLps = np.diag([-1.0, -1.0, 1.0])
    linear = rasToLps @ m[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    direction = linear / spacing
    image = sitk.GetImageFromArray(data)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(d) for d in direction.ravel()])
    image.SetOrigin([float(o) for o in rasToLps @ m[:3, 3]])
    return image


def sliceCenterRAS(volumeNode, sliceAxis: int, index: int) -> tuple[float, float, float]:
    """World RAS of the centre of slice ``index`` along numpy axis ``sliceAxis`` of the node's array."""
    dims = volumeNode.GetImageData().GetDimensions()  # (I, J, K); numpy axis a is IJK axis 2 - a
    ijk = [(d - 1) / 2.0 for d in dims]
    ijk[2 - int(sliceAxis)] = float(index)
    ras = ijkToRASMatrix(volumeNode).MultiplyPoint(ijk + [1.0])[:3]
    parent = volumeNode.GetParentTransformNode()
    if parent is not None:
        toWorld = vtk.vtkGeneralTransform()
        parent.GetTransformToWorld(toWorld)
        ras = toWorld.TransformPoint(ras)
    return tuple(float(x) for x in ras)


def jumpSlicesTo(scene, ras) -> None:
    """Centre every slice view on a world RAS point."""
    slicer.vtkMRMLSliceNode.JumpAllSlices(
        scene, float(ras[0]), float(ras[1]), float(ras[2]), slicer.vtkMRMLSliceNode.CenteredJumpSlice
    )


# ----------------------------------------------------------------------------- inputs for the worker


def maskArrayForInput(maskNode, inputNode) -> np.ndarray:
    """A uint8 0/1 brain mask on the input's grid from a label map volume (any grid) or a segmentation
    (union of all its segments)."""
    if maskNode.IsA("vtkMRMLSegmentationNode"):
        scene = maskNode.GetScene()
        ids = vtk.vtkStringArray()
        maskNode.GetSegmentation().GetSegmentIDs(ids)
        if ids.GetNumberOfValues() == 0:
            raise ValueError(f"brain mask segmentation '{maskNode.GetName()}' has no segments")
        colorsBefore = _nodeIDs(scene, "vtkMRMLColorTableNode")
        temp = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__AnoDODE_mask_temp__")
        try:
            if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                maskNode, ids, temp, inputNode
            ):
                raise ValueError(f"could not export segmentation '{maskNode.GetName()}' to the input's grid")
            mask = np.array(slicer.util.arrayFromVolume(temp) > 0, dtype=np.uint8)
        finally:
            removeNodeAndDisplay(scene, temp)
            for nodeID in _nodeIDs(scene, "vtkMRMLColorTableNode") - colorsBefore:  # made by the export
                scene.RemoveNode(scene.GetNodeByID(nodeID))
        return mask
    import SimpleITK as sitk

    reference = sitkImageFromVolume(inputNode)
    source = sitkImageFromVolume(maskNode)
    resampled = sitk.Resample(source, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0)
    return (sitk.GetArrayFromImage(resampled) > 0).astype(np.uint8)


def _nodeIDs(scene, className: str) -> set:
    return {
        scene.GetNthNodeByClass(i, className).GetID() for i in range(scene.GetNumberOfNodesByClass(className))
    }


def removeNodeAndDisplay(scene, node) -> None:
    for i in range(node.GetNumberOfDisplayNodes()):
        display = node.GetNthDisplayNode(i)
        if display is not None:
            scene.RemoveNode(display)
    scene.RemoveNode(node)


# ----------------------------------------------------------------------------- results into the scene


def labelFromAnomalyMap(anomaly: np.ndarray, threshold: float) -> np.ndarray:
    """The engine's labelling rule: anomaly > threshold, as uint8 0/1."""
    return (np.asarray(anomaly) > float(threshold)).astype(np.uint8)


def _checkShape(inputNode, array: np.ndarray, what: str) -> None:
    expected = tuple(reversed(inputNode.GetImageData().GetDimensions()))
    if tuple(array.shape) != expected:
        raise ValueError(f"{what} has shape {tuple(array.shape)}, the input volume {expected}")


#: The heat ramp's stops (t, r, g, b): red at the threshold, through orange and yellow to pale yellow; no
#: black, so no dark halo is drawn over the scan.
HEAT_STOPS = ((0.0, 0.75, 0.0, 0.0), (0.45, 1.0, 0.45, 0.0), (0.8, 1.0, 0.95, 0.1), (1.0, 1.0, 1.0, 0.75))
HEAT_COLOR_VERSION = "2"  # attribute of the colour node: a scene saved with an older ramp gets the new one


def heatColor(t: float) -> tuple[float, float, float]:
    """The heat colour (r, g, b) at ``t`` in [0, 1], linear between ``HEAT_STOPS``."""
    t = min(1.0, max(0.0, float(t)))
    stops = np.array(HEAT_STOPS)
    return tuple(float(np.interp(t, stops[:, 0], stops[:, k])) for k in (1, 2, 3))


def heatColorNode(scene):
    """The module's heat colour table (red-orange-yellow), created once per scene."""
    existing = scene.GetFirstNodeByName(HEAT_COLOR_NAME)
    if (
        existing is not None
        and existing.IsA("vtkMRMLColorTableNode")
        and existing.GetAttribute("AnoDODE.HeatVersion") == HEAT_COLOR_VERSION
    ):
        return existing
    node = existing if existing is not None and existing.IsA("vtkMRMLColorTableNode") else None
    if node is None:
        node = slicer.vtkMRMLColorTableNode()
        node.SetName(HEAT_COLOR_NAME)
    node.SetTypeToUser()
    node.SetAttribute(ROLE_ATTRIBUTE, "heatColor")
    node.SetAttribute("AnoDODE.HeatVersion", HEAT_COLOR_VERSION)
    n = 256
    node.SetNumberOfColors(n)
    for i in range(n):
        t = i / (n - 1)
        node.SetColor(i, f"heat{i}", *heatColor(t), 1.0)
    if node.GetScene() is None:
        scene.AddNode(node)
    return node


def updateHeatmapNode(scene, inputNode, anomaly: np.ndarray, threshold: float, heatmapNode=None):
    """Put the float anomaly map into ``heatmapNode`` (created if None) on the input's exact grid, with
    heat display settings. Returns the node."""
    if heatmapNode is not None and heatmapNode is inputNode:
        raise ValueError("the heat-map output must not be the input volume")
    anomaly = np.asarray(anomaly, dtype=np.float32)
    _checkShape(inputNode, anomaly, "the anomaly map")
    if heatmapNode is None:
        heatmapNode = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"{inputNode.GetName()} anomaly")
    slicer.util.updateVolumeFromArray(heatmapNode, anomaly)
    copyGeometry(inputNode, heatmapNode)
    heatmapNode.SetAttribute(ROLE_ATTRIBUTE, "heatmap")
    heatmapNode.SetAttribute("AnoDODE.Threshold", repr(float(threshold)))
    setHeatmapDisplay(scene, heatmapNode, threshold)
    return heatmapNode


def setHeatmapDisplay(scene, heatmapNode, threshold: float) -> None:
    """Heat colours from the threshold (voxels at or below it are not drawn: only the anomalous voxels are
    coloured, as in the scan figure) to a robust top (``heatmapDisplayRange``)."""
    if heatmapNode.GetDisplayNode() is None:
        heatmapNode.CreateDefaultDisplayNodes()
    display = heatmapNode.GetDisplayNode()
    lo, hi = heatmapDisplayRange(slicer.util.arrayFromVolume(heatmapNode), threshold)
    with slicer.util.NodeModify(display):
        display.SetAndObserveColorNodeID(heatColorNode(scene).GetID())
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(lo, hi)
        display.SetAutoThreshold(False)
        display.SetApplyThreshold(True)
        display.SetLowerThreshold(lo)
        display.SetUpperThreshold(max(hi, lo) + 1e6)
        display.SetInterpolate(True)


def heatmapDisplayRange(anomaly: np.ndarray, threshold: float) -> tuple[float, float]:
    """(floor, top) of the heat map's colour window, in map units.

    floor: the threshold, nudged up to the next float32 so a voxel exactly at it (not anomalous: the label
    is ``> threshold``) is not drawn. top: the ``WINDOW_TOP_PERCENTILE``-th percentile of the voxels above the
    threshold, at least ``WINDOW_MIN_SPAN`` x the threshold (and above the floor), so a single outlier voxel
    does not squeeze every other anomalous voxel into the first colours."""
    values = np.asarray(anomaly, dtype=np.float64)
    threshold = float(threshold)
    lo = float(np.nextafter(np.float32(max(threshold, 0.0)), np.float32(np.inf)))
    above = values[np.isfinite(values) & (values > threshold)]
    top = float(np.percentile(above, WINDOW_TOP_PERCENTILE)) if above.size else 0.0
    hi = max(top, WINDOW_MIN_SPAN * threshold, lo + 1e-6)
    return lo, hi


def showInSliceViews(scene, backgroundNode, heatmapNode, opacity: float = OVERLAY_OPACITY) -> None:
    """Input as background, heat map as foreground at ``opacity`` in every slice view."""
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        with slicer.util.NodeModify(composite):
            composite.SetBackgroundVolumeID(backgroundNode.GetID())
            composite.SetForegroundVolumeID(heatmapNode.GetID())
            composite.SetForegroundOpacity(opacity)


def setHeatmapOpacity(scene, heatmapNode, opacity: float) -> None:
    """The heat map's opacity in every slice view that shows it as the foreground layer."""
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        if heatmapNode is not None and composite.GetForegroundVolumeID() == heatmapNode.GetID():
            composite.SetForegroundOpacity(min(1.0, max(0.0, float(opacity))))


def orientedImageFromArray(label: np.ndarray, referenceNode):
    """A vtkOrientedImageData of a uint8 (K, J, I) array on the reference volume's IJKToRAS."""
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(*reversed(label.shape))
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    view = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    view[:] = np.ascontiguousarray(label, dtype=np.uint8).ravel()
    image.GetPointData().GetScalars().Modified()
    image.SetImageToWorldMatrix(ijkToRASMatrix(referenceNode))
    return image


def labelDigest(label: np.ndarray) -> str:
    """SHA-256 of a 0/1 label's voxels (uint8, C order) and shape: what the module wrote into its segment."""
    import hashlib

    label = np.ascontiguousarray(np.asarray(label) > 0, dtype=np.uint8)
    return hashlib.sha256(repr(label.shape).encode() + label.tobytes()).hexdigest()


def anomalyTerminology() -> str:
    """The "Anomaly" segment's terminology entry (Slicer's serialised form, ``vtkSegment.SetTerminology``)."""
    return slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(
        TERMINOLOGY_CONTEXT,
        CATEGORY_CODE[1],
        CATEGORY_CODE[0],
        CATEGORY_CODE[2],
        TYPE_CODE[1],
        TYPE_CODE[0],
        TYPE_CODE[2],
        "",
        "",
        "",
        ANATOMIC_CONTEXT,
        REGION_CODE[1],
        REGION_CODE[0],
        REGION_CODE[2],
        "",
        "",
        "",
    )


def loadTerminology(terminologiesLogic, path) -> str:
    """Load the module's terminology context file into Slicer's Terminologies logic; returns its name."""
    name = terminologiesLogic.LoadTerminologyFromFile(str(path))
    if name != TERMINOLOGY_CONTEXT:
        raise ValueError(f"{path} holds the terminology {name!r}, not {TERMINOLOGY_CONTEXT!r}")
    return name


def ensureTerminology(terminologiesLogic, resourcesDir) -> None:
    """Load ``resourcesDir/TERMINOLOGY_FILE`` into Slicer's Terminologies logic unless already loaded."""
    names = vtk.vtkStringArray()
    terminologiesLogic.GetLoadedTerminologyNames(names)
    if TERMINOLOGY_CONTEXT not in [names.GetValue(i) for i in range(names.GetNumberOfValues())]:
        from pathlib import Path

        loadTerminology(terminologiesLogic, Path(resourcesDir) / TERMINOLOGY_FILE)


def anomalySegmentID(segmentationNode) -> str | None:
    """The ID of the segment the module writes its label into (the one with ``LABEL_DIGEST_TAG``; before
    any, ``ANOMALY_SEGMENT_ID`` if present), or None."""
    segmentation = segmentationNode.GetSegmentation()
    for i in range(segmentation.GetNumberOfSegments()):
        segmentID = segmentation.GetNthSegmentID(i)
        if segmentation.GetSegment(segmentID).HasTag(LABEL_DIGEST_TAG):
            return segmentID
    return ANOMALY_SEGMENT_ID if segmentation.GetSegment(ANOMALY_SEGMENT_ID) is not None else None


def segmentArray(segmentationNode, segmentID: str, referenceNode) -> np.ndarray:
    """One segment as a uint8 0/1 array on the reference volume's grid (a temporary label map, removed)."""
    scene = segmentationNode.GetScene()
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segmentID)
    colorsBefore = _nodeIDs(scene, "vtkMRMLColorTableNode")
    temp = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__AnoDODE_segment_temp__")
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentationNode, ids, temp, referenceNode
        ):
            raise ValueError(f"could not export segment {segmentID!r} to the input's grid")
        return np.array(slicer.util.arrayFromVolume(temp) > 0, dtype=np.uint8)
    finally:
        removeNodeAndDisplay(scene, temp)
        for nodeID in _nodeIDs(scene, "vtkMRMLColorTableNode") - colorsBefore:
            scene.RemoveNode(scene.GetNodeByID(nodeID))


def segmentEditedByHand(segmentationNode, inputNode) -> bool:
    """Whether the module's segment differs from the label the module last wrote into it (edited in the
    Segment Editor, say). A segment without the digest tag (not written by this version) counts as not edited."""
    segmentID = anomalySegmentID(segmentationNode)
    if segmentID is None:
        return False
    digest = vtk.reference("")
    if not segmentationNode.GetSegmentation().GetSegment(segmentID).GetTag(LABEL_DIGEST_TAG, digest):
        return False
    return labelDigest(segmentArray(segmentationNode, segmentID, inputNode)) != str(digest)


def updateSegmentationNode(scene, inputNode, label: np.ndarray, segmentationNode=None):
    """Put the 0/1 label into the module's segment "Anomaly" of ``segmentationNode`` (created if None), with
    its standard terminology (``anomalyTerminology``); reference geometry and parent transform = the input's;
    outline only in the slice views (the heat map fills it). Other segments are left alone, and so is a hand
    edit: when the module's segment was edited since the module last wrote it, it is kept, renamed
    ``EDITED_SEGMENT_NAME``, and the label goes into a new "Anomaly" segment. Returns the node."""
    label = (np.asarray(label) > 0).astype(np.uint8)
    _checkShape(inputNode, label, "the label")
    if segmentationNode is None:
        segmentationNode = scene.AddNewNodeByClass(
            "vtkMRMLSegmentationNode", f"{inputNode.GetName()} anomalies"
        )
    edited = segmentEditedByHand(segmentationNode, inputNode)
    with slicer.util.NodeModify(segmentationNode):
        if segmentationNode.GetDisplayNode() is None:
            segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(inputNode)
        segmentationNode.SetAndObserveTransformNodeID(inputNode.GetTransformNodeID())
        segmentationNode.SetAttribute(ROLE_ATTRIBUTE, "segmentation")
        segmentation = segmentationNode.GetSegmentation()
        image = orientedImageFromArray(label, inputNode)
        segmentID = anomalySegmentID(segmentationNode)
        if segmentID is not None and edited:
            kept = segmentation.GetSegment(segmentID)
            kept.RemoveTag(LABEL_DIGEST_TAG)
            kept.SetName(EDITED_SEGMENT_NAME)
            segmentID = None
        if segmentID is None:
            segmentID = segmentationNode.AddSegmentFromBinaryLabelmapRepresentation(
                image,
                ANOMALY_SEGMENT_NAME,
                list(ANOMALY_COLOR),
                segmentation.GenerateUniqueSegmentID(ANOMALY_SEGMENT_ID),
            )
        else:
            slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                image,
                segmentationNode,
                segmentID,
                slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE,
                image.GetExtent(),
            )
        segment = segmentation.GetSegment(segmentID)
        segment.SetTag(segment.GetTerminologyEntryTagName(), anomalyTerminology())
        segment.SetTag(LABEL_DIGEST_TAG, labelDigest(label))
        display = segmentationNode.GetDisplayNode()
        display.SetSegmentOpacity2DFill(segmentID, 0.0)  # outline only over the heat map
    return segmentationNode


def rethreshold(scene, inputNode, heatmapNode, segmentationNode, threshold: float) -> np.ndarray:
    """Re-label the existing heat map at a new threshold (no model run); updates the segment and the
    display floor. Returns the new label."""
    anomaly = slicer.util.arrayFromVolume(heatmapNode)
    label = labelFromAnomalyMap(anomaly, threshold)
    if segmentationNode is not None:
        updateSegmentationNode(scene, inputNode, label, segmentationNode)
    heatmapNode.SetAttribute("AnoDODE.Threshold", repr(float(threshold)))
    setHeatmapDisplay(scene, heatmapNode, threshold)
    return label


def updateScoreTable(scene, inputNode, report: dict, tableNode=None):
    """Slice scores in a table: slice index, the slice centre's superior coordinate in mm (world RAS, as the
    scan figure titles its tiles), the heat map's mean over the slice's most anomalous 100 mm^2
    (``slice_anomaly_scores``: the ranking the module jumps by and plots) and the density's mean there in
    bits per dimension (``slice_scores``); NaN where a slice has no brain or the report has no such score.
    The run summary is in table attributes."""
    if tableNode is None:
        tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{inputNode.GetName()} slice scores")
    scores = report.get("slice_scores") or []
    mapScores = report.get("slice_anomaly_scores") or []
    sliceColumn = vtk.vtkIntArray()
    sliceColumn.SetName(SLICE_COLUMN)
    scoreColumn = vtk.vtkDoubleArray()
    scoreColumn.SetName(SCORE_COLUMN)
    mapColumn = vtk.vtkDoubleArray()
    mapColumn.SetName(MAP_SCORE_COLUMN)
    positionColumn = vtk.vtkDoubleArray()
    positionColumn.SetName(POSITION_COLUMN)
    axis = int(report.get("slice_axis", 0))
    for i, s in enumerate(scores):
        sliceColumn.InsertNextValue(i)
        scoreColumn.InsertNextValue(math.nan if s is None else float(s))
        m = mapScores[i] if i < len(mapScores) else None
        mapColumn.InsertNextValue(math.nan if m is None else float(m))
        positionColumn.InsertNextValue(round(sliceCenterRAS(inputNode, axis, i)[2], 2))
    with slicer.util.NodeModify(tableNode):
        table = tableNode.GetTable()
        table.Initialize()
        table.AddColumn(sliceColumn)
        table.AddColumn(positionColumn)
        table.AddColumn(mapColumn)
        table.AddColumn(scoreColumn)
        tableNode.SetUseColumnTitleAsColumnHeader(True)
        tableNode.SetAttribute(ROLE_ATTRIBUTE, "scores")
        for key in (
            "volume_score_bpd",
            "slice_axis",
            "threshold",
            "model",
            "device",
            "preset",
            "seconds",
            "nfe",
            "nfe_reconstruction",
            "map_units",
            "anomalous_volume_ml",
        ):
            if key in report:
                tableNode.SetAttribute(f"AnoDODE.{key}", str(report[key]))
        tableNode.Modified()
    return tableNode


def plottedColumn(tableNode) -> str:
    """The column the slice plot shows and the module ranks slices by: the heat-map score when the table
    has any value in it, else the likelihood score."""
    column = tableNode.GetTable().GetColumnByName(MAP_SCORE_COLUMN)
    if column is not None and any(
        math.isfinite(column.GetValue(i)) for i in range(column.GetNumberOfTuples())
    ):
        return MAP_SCORE_COLUMN
    return SCORE_COLUMN


def updateScorePlot(scene, tableNode):
    """A line plot of the slice scores the module jumps by (``plottedColumn``), reused through a node
    reference on the table, so the plot's peak is the slice the views open on."""
    chart = tableNode.GetNodeReference(PLOT_REFERENCE)
    if chart is None:
        chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{tableNode.GetName()} plot")
        tableNode.SetNodeReferenceID(PLOT_REFERENCE, chart.GetID())
    series = chart.GetNthPlotSeriesNode(0) if chart.GetNumberOfPlotSeriesNodes() else None
    if series is None:
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{tableNode.GetName()} series")
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    series.SetAndObserveTableNodeID(tableNode.GetID())
    column = plottedColumn(tableNode)
    series.SetXColumnName(SLICE_COLUMN)
    series.SetYColumnName(column)
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
    series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
    series.SetColor(*ANOMALY_COLOR)
    chart.SetTitle("AnoDODE slice scores")
    chart.SetXAxisTitle("slice index")
    chart.SetYAxisTitle("anomaly score (top 1 cm2)" if column == MAP_SCORE_COLUMN else "bits per dimension")
    chart.SetLegendVisibility(False)
    return chart


def applyResults(
    scene,
    inputNode,
    anomaly: np.ndarray,
    label: np.ndarray,
    report: dict,
    *,
    heatmapNode=None,
    segmentationNode=None,
    tableNode=None,
) -> dict:
    """All outputs of one run into the scene, reusing the given nodes. Never modifies ``inputNode``."""
    threshold = float(report["threshold"])
    heatmapNode = updateHeatmapNode(scene, inputNode, anomaly, threshold, heatmapNode)
    segmentationNode = updateSegmentationNode(scene, inputNode, label, segmentationNode)
    tableNode = updateScoreTable(scene, inputNode, report, tableNode)
    chart = updateScorePlot(scene, tableNode)
    showInSliceViews(scene, inputNode, heatmapNode)
    markResultsInput(inputNode, heatmapNode, segmentationNode, tableNode)
    placeBesideInput(scene, inputNode, heatmapNode, segmentationNode, tableNode, chart)
    return {"heatmap": heatmapNode, "segmentation": segmentationNode, "table": tableNode, "plot": chart}


def checkOutputNodes(inputNode, heatmapNode=None) -> None:
    """Refuse, before anything runs, an output that would overwrite the input volume."""
    if heatmapNode is not None and inputNode is not None and heatmapNode is inputNode:
        raise ValueError(
            f"The heat-map output is the input volume '{inputNode.GetName()}': choose another volume or "
            "'Create new' (the input is never overwritten)."
        )


def placeBesideInput(scene, inputNode, *nodes) -> None:
    """Put the outputs in the input's folder or study of the subject hierarchy (Data module), as
    TotalSegmentator does, so they are found with the scan and export with it (e.g. DICOM SEG)."""
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if shNode is None:
        return
    inputItem = shNode.GetItemByDataNode(inputNode)
    parent = shNode.GetItemParent(inputItem) if inputItem else 0
    if not parent:
        return
    for node in nodes:
        if node is None:
            continue
        item = shNode.GetItemByDataNode(node)
        if not item:  # Slicer's application logic adds an item for every node; a bare MRML scene does not
            shNode.CreateItem(parent, node)
        elif shNode.GetItemParent(item) != parent:
            shNode.SetItemParent(item, parent)


def voxelVolumeMl(volumeNode) -> float:
    """Volume of one voxel in mL (|det| of the IJK-to-RAS matrix, mm^3 / 1000)."""
    return abs(float(np.linalg.det(matrixToArray(ijkToRASMatrix(volumeNode))[:3, :3]))) / 1000.0


# ----------------------------------------------------------------------------- results and their input


def markResultsInput(inputNode, *outputNodes) -> None:
    """Tie each output to the input volume it was computed from with a node reference (``INPUT_REFERENCE``),
    which Slicer keeps right when a saved scene is imported into another and node IDs change."""
    for node in outputNodes:
        if node is not None:
            node.SetNodeReferenceID(INPUT_REFERENCE, inputNode.GetID())


def resultsInput(outputNode):
    """The input volume an output was computed from, or None."""
    return outputNode.GetNodeReference(INPUT_REFERENCE) if outputNode is not None else None


def resultsMatchInput(heatmapNode, inputNode) -> bool:
    """Whether ``heatmapNode`` was computed from ``inputNode`` and is still on its voxel grid."""
    if heatmapNode is None or inputNode is None or heatmapNode.GetImageData() is None:
        return False
    if resultsInput(heatmapNode) is not inputNode or inputNode.GetImageData() is None:
        return False
    return (
        heatmapNode.GetImageData().GetDimensions() == inputNode.GetImageData().GetDimensions()
        and np.allclose(matrixToArray(ijkToRASMatrix(heatmapNode)), matrixToArray(ijkToRASMatrix(inputNode)))
    )


# ----------------------------------------------------------------------------- plot, legend, selection


def showChart(scene, plotsLogic, chartNode) -> None:
    """Show the chart in the view layout (Slicer's Plots logic switches to a layout with a plot view when the
    current one has none) and let a left click select a point in every plot view (for jump-to-slice)."""
    plotsLogic.ShowChartInLayout(chartNode)
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLPlotViewNode")):
        viewNode = scene.GetNthNodeByClass(i, "vtkMRMLPlotViewNode")
        viewNode.SetPlotChartNodeID(chartNode.GetID())
        viewNode.SetInteractionMode(slicer.vtkMRMLPlotViewNode.InteractionModeSelectPoints)


def rowFromPlotSelection(seriesIDs, selections, seriesNodeID: str) -> int | None:
    """The table row of the first point selected in the series ``seriesNodeID``.

    ``seriesIDs`` (vtkStringArray) and ``selections`` (vtkCollection of vtkIdTypeArray) are the arguments of
    qMRMLPlotView's ``dataSelected`` signal; a series' point ids are its table's row indices."""
    for i in range(seriesIDs.GetNumberOfValues()):
        if seriesIDs.GetValue(i) != seriesNodeID or i >= selections.GetNumberOfItems():
            continue
        ids = selections.GetItemAsObject(i)
        if ids is not None and ids.GetNumberOfTuples() > 0:
            return int(ids.GetValue(0))
    return None


def markThreshold(scene, colorLogic, heatmapNode, chartNode, threshold: float) -> None:
    """Show the label threshold where the user looks: the heat map's colour legend in the slice views is
    titled with it, and so is the slice-score chart."""
    legend = colorLogic.GetColorLegendDisplayNode(heatmapNode) or colorLogic.AddDefaultColorLegendDisplayNode(
        heatmapNode
    )
    if legend is not None:
        legend.SetTitleText(f"Anomaly (label > {threshold:.3g})")
        legend.SetLabelFormat("%.3g")
    if chartNode is not None:
        chartNode.SetTitle(f"AnoDODE slice scores (label threshold {threshold:.3g})")


def writeWorkerInputs(folder, inputNode, maskNode=None, otherContrastNodes=None) -> tuple:
    """Write the input (``input.nrrd``), the brain mask on its grid (``mask.nrrd``) and each other contrast
    (``contrast_<name>.nrrd``, own geometry) for the worker. Returns (input path, mask path or None,
    {name: path})."""
    from pathlib import Path

    import SimpleITK as sitk

    folder = Path(folder)
    if inputNode is None or inputNode.GetImageData() is None:
        raise ValueError("Select an input volume with image data.")
    inputPath = folder / "input.nrrd"
    sitk.WriteImage(sitkImageFromVolume(inputNode), str(inputPath))
    maskPath = None
    if maskNode is not None:
        maskPath = folder / "mask.nrrd"
        sitk.WriteImage(sitkImageFromVolume(inputNode, maskArrayForInput(maskNode, inputNode)), str(maskPath))
    others = {}
    for name, node in (otherContrastNodes or {}).items():
        if node is None or node.GetImageData() is None:
            raise ValueError(f"Select a {name} volume with image data.")
        others[name] = folder / f"contrast_{name}.nrrd"
        sitk.WriteImage(sitkImageFromVolume(node), str(others[name]))
    return inputPath, maskPath, others


def mostAnomalousRow(tableNode) -> int | None:
    """The table row of the most anomalous slice: the largest value of the plotted column (``plottedColumn``:
    ``slice_anomaly_scores``, the ranking the scan figure uses), or None if every value is NaN."""
    column = tableNode.GetTable().GetColumnByName(plottedColumn(tableNode))
    if column is None or column.GetNumberOfTuples() == 0:
        return None
    values = np.array([column.GetValue(i) for i in range(column.GetNumberOfTuples())], dtype=float)
    if np.all(np.isnan(values)):
        return None
    return int(np.nanargmax(values))


def sliceSpacingMm(volumeNode, sliceAxis: int) -> float:
    """Distance in mm between neighbouring slices along numpy axis ``sliceAxis`` (IJK axis 2 - sliceAxis)."""
    m = matrixToArray(ijkToRASMatrix(volumeNode))
    return float(np.linalg.norm(m[:3, 2 - int(sliceAxis)]))
