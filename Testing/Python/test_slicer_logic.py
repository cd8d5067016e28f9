"""The Slicer module's MRML logic (AnoDODE/AnoDODESlicerLib/mrml.py) on real MRML nodes from the Qt-free slicer-core wheel.

The input is deliberately awkward: oblique (rotated IJKToRAS), anisotropic (0.9 x 1.2 x 3.0 mm), off-origin,
under a rotating + translating parent transform. Outputs must land on exactly its grid.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")
vtk = pytest.importorskip("vtk")

MODULE_DIR = Path(__file__).resolve().parents[2] / "AnoDODE"
sys.path.insert(0, str(MODULE_DIR))
from AnoDODESlicerLib import mrml as M

SHAPE = (10, 13, 16)  # numpy (K, J, I)
SPACING = (0.9, 1.2, 3.0)  # I, J, K


def rotation(axis, degrees):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = math.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * k @ k


def vtk_matrix(m: np.ndarray) -> vtk.vtkMatrix4x4:
    out = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            out.SetElement(r, c, float(m[r, c]))
    return out


IJK_TO_RAS = np.eye(4)
IJK_TO_RAS[:3, :3] = rotation([1, 2, 3], 27) @ np.diag(SPACING)
IJK_TO_RAS[:3, 3] = [-31.5, 12.25, 7.0]
PARENT = np.eye(4)
PARENT[:3, :3] = rotation([0, 0, 1], -15)
PARENT[:3, 3] = [5.0, -3.0, 11.0]


@pytest.fixture
def scene():
    s = slicer.vtkMRMLScene()
    for name in ("Red", "Yellow", "Green"):  # what Slicer's layout would have
        composite = s.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
        composite.SetLayoutName(name)
    return s


@pytest.fixture
def volume(scene):
    rng = np.random.default_rng(0)
    data = (100 + 20 * rng.standard_normal(SHAPE)).astype(np.float32)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "oblique input")
    slicer.util.updateVolumeFromArray(node, data)
    node.SetIJKToRASMatrix(vtk_matrix(IJK_TO_RAS))
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "parent")
    transform.SetMatrixTransformToParent(vtk_matrix(PARENT))
    node.SetAndObserveTransformNodeID(transform.GetID())
    return node


def known_map(seed=1):
    rng = np.random.default_rng(seed)
    m = np.abs(rng.standard_normal(SHAPE)).astype(np.float32)
    m[:, :3] = 0.0  # "outside the brain"
    return m


def report_for(threshold, scores=None):
    scores = scores if scores is not None else [None, 1.5, 2.0] + [1.0 + 0.1 * i for i in range(SHAPE[0] - 3)]
    return {
        "threshold": threshold,
        "slice_scores": scores,
        "slice_axis": 0,
        "volume_score_bpd": 1.25,
        "model": "test",
        "device": "cpu",
        "preset": "fast",
        "seconds": 0.5,
        "nfe": 4,
    }


def ijk_to_ras(node) -> np.ndarray:
    return M.matrixToArray(M.ijkToRASMatrix(node))


def export_segment(scene, segmentation_node, reference):
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(M.ANOMALY_SEGMENT_ID)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
        segmentation_node, ids, labelmap, reference
    )
    out = slicer.util.arrayFromVolume(labelmap).copy()
    scene.RemoveNode(labelmap)
    return out


def snapshot(node):
    return slicer.util.arrayFromVolume(node).copy(), ijk_to_ras(node), node.GetTransformNodeID()


def assert_unchanged(node, before):
    array, matrix, transform_id = before
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), array)
    np.testing.assert_array_equal(ijk_to_ras(node), matrix)
    assert node.GetTransformNodeID() == transform_id


# ----------------------------------------------------------------------------- outputs on the input grid


def test_heatmap_is_on_the_input_grid(scene, volume):
    before = snapshot(volume)
    anomaly = known_map()
    out = M.applyResults(scene, volume, anomaly, M.labelFromAnomalyMap(anomaly, 1.0), report_for(1.0))
    heat = out["heatmap"]
    assert (
        heat is not volume
        and heat.IsA("vtkMRMLScalarVolumeNode")
        and not heat.IsA("vtkMRMLLabelMapVolumeNode")
    )
    assert heat.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()
    np.testing.assert_allclose(ijk_to_ras(heat), IJK_TO_RAS, atol=1e-9)
    np.testing.assert_array_equal(ijk_to_ras(heat), ijk_to_ras(volume))
    assert heat.GetTransformNodeID() == volume.GetTransformNodeID() is not None
    got = slicer.util.arrayFromVolume(heat)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, anomaly)
    assert_unchanged(volume, before)


def test_segmentation_exports_back_to_the_label(scene, volume):
    anomaly = known_map()
    label = M.labelFromAnomalyMap(anomaly, 1.0)
    assert 0 < label.sum() < label.size
    seg = M.updateSegmentationNode(scene, volume, label)
    segment = seg.GetSegmentation().GetSegment(M.ANOMALY_SEGMENT_ID)
    assert segment is not None and segment.GetName() == "Anomaly"
    assert seg.GetTransformNodeID() == volume.GetTransformNodeID()
    # reference geometry is the input's (Slicer's serialised form of the IJKToRAS + extent)
    reference = seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole())
    assert reference is volume
    np.testing.assert_array_equal(export_segment(scene, seg, volume), label)
    display = seg.GetDisplayNode()  # outline only in the slice views: the heat map fills the segment
    assert display.GetSegmentOpacity2DFill(M.ANOMALY_SEGMENT_ID) == 0.0
    assert display.GetSegmentVisibility2DOutline(M.ANOMALY_SEGMENT_ID)


def test_anomaly_segment_carries_standard_terminology(scene, volume):
    """The segment's terminology entry, read back by Slicer's own Terminologies logic with the context file
    the module ships: SNOMED CT codes for DICOM SEG export, and the recommended colour is the segment's."""
    from slicer_reference import MODULE_DIR

    terminologies = slicer.vtkSlicerTerminologiesModuleLogic()
    M.ensureTerminology(terminologies, MODULE_DIR / "Resources")
    M.ensureTerminology(terminologies, MODULE_DIR / "Resources")  # loaded once
    names = vtk.vtkStringArray()
    terminologies.GetLoadedTerminologyNames(names)
    assert [names.GetValue(i) for i in range(names.GetNumberOfValues())].count(M.TERMINOLOGY_CONTEXT) == 1
    seg = M.updateSegmentationNode(scene, volume, M.labelFromAnomalyMap(known_map(), 1.0))
    segment = seg.GetSegmentation().GetSegment(M.ANOMALY_SEGMENT_ID)
    entry = slicer.vtkSlicerTerminologyEntry()
    assert terminologies.DeserializeTerminologyEntry(segment.GetTerminology(), entry)
    assert entry.GetTerminologyContextName() == M.TERMINOLOGY_CONTEXT
    codes = [
        (o.GetCodingSchemeDesignator(), o.GetCodeValue(), o.GetCodeMeaning())
        for o in (entry.GetCategoryObject(), entry.GetTypeObject(), entry.GetRegionObject())
    ]
    assert codes == [
        ("SCT", "49755003", "Morphologically Altered Structure"),
        ("SCT", "52988006", "Lesion"),
        ("SCT", "12738006", "Brain"),
    ]
    assert entry.GetRegionContextName() == "Anatomic codes - DICOM master list"
    # the type is found in the loaded context (so Slicer's terminology selector shows it, with its colour)
    category, found = slicer.vtkSlicerTerminologyCategory(), slicer.vtkSlicerTerminologyType()
    context = M.TERMINOLOGY_CONTEXT
    assert terminologies.GetNumberOfCategoriesInTerminology(context) == 1
    terminologies.GetNthCategoryInTerminology(context, 0, category)
    assert category.GetCodeValue() == entry.GetCategoryObject().GetCodeValue() and category.GetShowAnatomy()
    assert terminologies.GetNumberOfTypesInTerminologyCategory(context, category) == 1
    terminologies.GetNthTypeInTerminologyCategory(context, category, 0, found)
    assert found.GetCodeValue() == entry.GetTypeObject().GetCodeValue()
    assert found.GetRecommendedDisplayRGBValue() == tuple(round(255 * c) for c in M.ANOMALY_COLOR)


def test_display_settings(scene, volume):
    anomaly = known_map()
    threshold = 1.0
    out = M.applyResults(
        scene, volume, anomaly, M.labelFromAnomalyMap(anomaly, threshold), report_for(threshold)
    )
    display = out["heatmap"].GetDisplayNode()
    color = display.GetColorNode()
    assert color is not None and color.GetName() == M.HEAT_COLOR_NAME and color.GetNumberOfColors() == 256
    assert not display.GetAutoWindowLevel()
    above = anomaly[anomaly > threshold]
    lo, hi = threshold, float(np.percentile(above, M.WINDOW_TOP_PERCENTILE))
    assert display.GetWindowLevelMin() == pytest.approx(lo)
    assert display.GetWindowLevelMax() == pytest.approx(hi, rel=1e-6)
    assert display.GetApplyThreshold() and not display.GetAutoThreshold()
    assert display.GetLowerThreshold() == pytest.approx(lo) and display.GetLowerThreshold() > threshold
    assert display.GetUpperThreshold() >= float(anomaly.max())  # the highest voxels are drawn (saturated)
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        assert composite.GetBackgroundVolumeID() == volume.GetID()
        assert composite.GetForegroundVolumeID() == out["heatmap"].GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.5)
    seg_display = out["segmentation"].GetDisplayNode()
    assert seg_display is not None


def test_repeated_runs_reuse_and_replace(scene, volume):
    before = snapshot(volume)
    first = known_map(1)
    out = M.applyResults(scene, volume, first, M.labelFromAnomalyMap(first, 1.0), report_for(1.0))
    seg = out["segmentation"]
    # a user segment added between runs must survive
    brain = np.zeros(SHAPE, np.uint8)
    brain[2:8, 4:10, 5:12] = 1
    user_id = seg.AddSegmentFromBinaryLabelmapRepresentation(
        M.orientedImageFromArray(brain, volume), "Brain", [0.0, 1.0, 0.0]
    )
    counts = {
        c: scene.GetNumberOfNodesByClass(c)
        for c in (
            "vtkMRMLScalarVolumeNode",
            "vtkMRMLSegmentationNode",
            "vtkMRMLTableNode",
            "vtkMRMLPlotChartNode",
            "vtkMRMLPlotSeriesNode",
            "vtkMRMLColorTableNode",
        )
    }

    second = known_map(2) * 3.0
    label2 = M.labelFromAnomalyMap(second, 2.0)
    again = M.applyResults(
        scene,
        volume,
        second,
        label2,
        report_for(2.0, [0.5] * SHAPE[0]),
        heatmapNode=out["heatmap"],
        segmentationNode=seg,
        tableNode=out["table"],
    )
    for key in ("heatmap", "segmentation", "table", "plot"):
        assert again[key] is out[key], key
    assert counts == {c: scene.GetNumberOfNodesByClass(c) for c in counts}
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(again["heatmap"]), second)
    segmentation = seg.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 2
    assert segmentation.GetSegment(user_id).GetName() == "Brain"
    np.testing.assert_array_equal(export_segment(scene, seg, volume), label2)
    assert again["table"].GetTable().GetValueByName(0, M.SCORE_COLUMN).ToDouble() == pytest.approx(0.5)
    assert_unchanged(volume, before)


def test_heatmap_output_must_differ_from_input(scene, volume):
    before = snapshot(volume)
    with pytest.raises(ValueError, match="must not be the input"):
        M.updateHeatmapNode(scene, volume, known_map(), 1.0, heatmapNode=volume)
    with pytest.raises(ValueError, match="shape"):
        M.updateHeatmapNode(scene, volume, np.zeros((3, 4, 5), np.float32), 1.0)
    with pytest.raises(ValueError, match="shape"):
        M.updateSegmentationNode(scene, volume, np.zeros((3, 4, 5), np.uint8))
    assert_unchanged(volume, before)


def test_rethreshold_relabels_without_touching_the_map(scene, volume):
    anomaly = known_map()
    out = M.applyResults(scene, volume, anomaly, M.labelFromAnomalyMap(anomaly, 1.0), report_for(1.0))
    for threshold in (0.25, 1.7, 100.0):
        label = M.rethreshold(scene, volume, out["heatmap"], out["segmentation"], threshold)
        expected = (anomaly > threshold).astype(np.uint8)
        np.testing.assert_array_equal(label, expected)
        np.testing.assert_array_equal(export_segment(scene, out["segmentation"], volume), expected)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(out["heatmap"]), anomaly)
        assert out["heatmap"].GetDisplayNode().GetLowerThreshold() == pytest.approx(threshold)
        assert float(out["heatmap"].GetAttribute("AnoDODE.Threshold")) == threshold
    # the engine's rule is strict: a voxel exactly at the threshold is not anomalous
    assert M.labelFromAnomalyMap(np.array([0.5, 1.0, 1.5]), 1.0).tolist() == [0, 0, 1]


def column(table, name) -> list[float]:
    return [table.GetTable().GetValueByName(r, name).ToDouble() for r in range(table.GetNumberOfRows())]


def test_score_table_and_plot(scene, volume):
    report = report_for(1.0)
    report["slice_anomaly_scores"] = [None] + [0.1 * i for i in range(1, SHAPE[0])]
    out = M.applyResults(scene, volume, known_map(), np.zeros(SHAPE, np.uint8), report)
    table = out["table"]
    assert table.GetNumberOfRows() == SHAPE[0]
    names = [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())]
    assert names == [M.SLICE_COLUMN, M.POSITION_COLUMN, M.MAP_SCORE_COLUMN, M.SCORE_COLUMN]
    scores = column(table, M.SCORE_COLUMN)
    assert math.isnan(scores[0])
    np.testing.assert_allclose(scores[1:], report["slice_scores"][1:])
    map_scores = column(table, M.MAP_SCORE_COLUMN)
    assert math.isnan(map_scores[0])
    np.testing.assert_allclose(map_scores[1:], report["slice_anomaly_scores"][1:])
    assert [table.GetTable().GetValue(r, 0).ToInt() for r in range(SHAPE[0])] == list(range(SHAPE[0]))
    centre = [(d - 1) / 2 for d in reversed(SHAPE)]
    positions = column(table, M.POSITION_COLUMN)
    for r in (0, 4, SHAPE[0] - 1):  # slice axis 0 = IJK k: the world S of the slice centre, 0.01 mm
        assert positions[r] == pytest.approx(world_of_ijk([centre[0], centre[1], r])[2], abs=0.006)
    assert float(table.GetAttribute("AnoDODE.volume_score_bpd")) == 1.25
    assert table.GetAttribute("AnoDODE.slice_axis") == "0"
    chart = out["plot"]
    series = chart.GetNthPlotSeriesNode(0)
    assert series.GetTableNode() is table
    assert (series.GetXColumnName(), series.GetYColumnName()) == (M.SLICE_COLUMN, M.MAP_SCORE_COLUMN)


def test_the_plot_peaks_where_the_views_jump(scene, volume):
    """Issue 23.4: the likelihood score peaks at slice 2, the heat map's score at slice 6. The plot shows the
    ranking the module jumps by, so its highest point is the slice the views open on."""
    report = report_for(1.0, [None, 1.5, 9.0] + [1.0] * (SHAPE[0] - 3))
    report["slice_anomaly_scores"] = [None, 0.2, 0.1, 0.3, 0.2, 0.4, 0.9, 0.5] + [0.3] * (SHAPE[0] - 8)
    out = M.applyResults(scene, volume, known_map(), np.zeros(SHAPE, np.uint8), report)
    series = out["plot"].GetNthPlotSeriesNode(0)
    plotted = column(out["table"], series.GetYColumnName())
    assert int(np.nanargmax(plotted)) == M.mostAnomalousRow(out["table"]) == 6
    assert int(np.nanargmax(column(out["table"], M.SCORE_COLUMN))) == 2  # the other ranking disagrees
    # a report without heat-map slice scores: both fall back to the likelihood score, still together
    report["slice_anomaly_scores"] = [None] * SHAPE[0]
    again = M.applyResults(
        scene, volume, known_map(), np.zeros(SHAPE, np.uint8), report, tableNode=out["table"]
    )
    assert again["plot"].GetNthPlotSeriesNode(0).GetYColumnName() == M.SCORE_COLUMN
    assert M.mostAnomalousRow(again["table"]) == 2


def test_heat_display_ignores_an_outlier_and_draws_no_dark_halo():
    """Issue 23.7: the window's top is robust to one extreme voxel, and the ramp never starts at black."""
    rng = np.random.default_rng(3)
    anomaly = np.zeros(20000, np.float32)
    anomaly[:2000] = rng.uniform(1.0, 3.0, 2000)  # the anomalous voxels, threshold 1
    anomaly[2000:8000] = rng.uniform(0.0, 1.0, 6000)  # below the threshold: not drawn
    lo, hi = M.heatmapDisplayRange(anomaly, 1.0)
    anomaly[0] = 1000.0  # one outlier
    lo2, hi2 = M.heatmapDisplayRange(anomaly, 1.0)
    assert lo == lo2 > 1.0 and lo == pytest.approx(1.0)
    assert 2.9 < hi < 3.0 and hi2 == pytest.approx(hi, rel=0.01)  # not 1000
    assert M.heatmapDisplayRange(np.zeros(10), 2.0) == (pytest.approx(2.0), pytest.approx(2.5))  # none above
    ramp = np.array([M.heatColor(t) for t in np.linspace(0.0, 1.0, 101)])
    assert ramp[0, 0] >= 0.7 and ramp.max(axis=1).min() >= 0.7  # the darkest colour is still a bright red
    assert np.all(np.diff(ramp[:, 1]) >= 0)  # from red towards yellow, monotonically


def test_hand_edits_of_the_anomaly_segment_are_kept(scene, volume):
    """Issue 23.10: re-thresholding after the user edited "Anomaly" (Segment Editor) keeps the edit as
    "Anomaly (edited)" and writes the new label into a fresh "Anomaly"; without an edit, it is replaced."""
    anomaly = known_map()
    out = M.applyResults(scene, volume, anomaly, M.labelFromAnomalyMap(anomaly, 1.0), report_for(1.0))
    seg = out["segmentation"]
    segmentation = seg.GetSegmentation()
    M.rethreshold(scene, volume, out["heatmap"], seg, 1.5)  # not edited: replaced in place
    assert segmentation.GetNumberOfSegments() == 1 and not M.segmentEditedByHand(seg, volume)
    edited = M.labelFromAnomalyMap(anomaly, 1.5)
    edited[5, 5:9, 5:9] = 1  # the user paints a few voxels
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        M.orientedImageFromArray(edited, volume),
        seg,
        M.ANOMALY_SEGMENT_ID,
        slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE,
    )
    assert M.segmentEditedByHand(seg, volume)
    label = M.rethreshold(scene, volume, out["heatmap"], seg, 0.8)
    assert segmentation.GetNumberOfSegments() == 2
    kept = segmentation.GetSegment(M.ANOMALY_SEGMENT_ID)
    assert kept.GetName() == M.EDITED_SEGMENT_NAME
    np.testing.assert_array_equal(M.segmentArray(seg, M.ANOMALY_SEGMENT_ID, volume), edited)
    current = M.anomalySegmentID(seg)
    assert current != M.ANOMALY_SEGMENT_ID and segmentation.GetSegment(current).GetName() == "Anomaly"
    np.testing.assert_array_equal(M.segmentArray(seg, current, volume), label)
    assert segmentation.GetSegment(current).GetTerminology() == M.anomalyTerminology()
    M.rethreshold(scene, volume, out["heatmap"], seg, 1.2)  # the slider again: the new segment follows
    assert segmentation.GetNumberOfSegments() == 2
    np.testing.assert_array_equal(M.segmentArray(seg, M.ANOMALY_SEGMENT_ID, volume), edited)
    np.testing.assert_array_equal(M.segmentArray(seg, current, volume), M.labelFromAnomalyMap(anomaly, 1.2))


# ----------------------------------------------------------------------------- geometry helpers


def world_of_ijk(ijk):
    return (PARENT @ IJK_TO_RAS @ np.append(np.asarray(ijk, float), 1.0))[:3]


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_center_ras(volume, axis):
    index = 3
    ijk = [(d - 1) / 2 for d in reversed(SHAPE)]
    ijk[2 - axis] = index
    np.testing.assert_allclose(M.sliceCenterRAS(volume, axis, index), world_of_ijk(ijk), atol=1e-9)


def test_jump_slices_moves_views_to_the_point(scene, volume):
    slice_node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    slice_node.SetLayoutName("Red")
    ras = M.sliceCenterRAS(volume, 0, 7)
    M.jumpSlicesTo(scene, ras)
    center = [slice_node.GetSliceToRAS().GetElement(r, 3) for r in range(3)]
    np.testing.assert_allclose(center, ras, atol=1e-6)


def test_sitk_image_keeps_world_geometry(volume):
    sitk = pytest.importorskip("SimpleITK")
    image = M.sitkImageFromVolume(volume)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), slicer.util.arrayFromVolume(volume))
    lps = np.diag([-1.0, -1.0, 1.0])
    for ijk in [(0, 0, 0), (15, 0, 0), (0, 12, 9), (7, 5, 3)]:
        np.testing.assert_allclose(
            image.TransformIndexToPhysicalPoint(ijk), lps @ world_of_ijk(ijk), atol=1e-6
        )
    np.testing.assert_allclose(image.GetSpacing(), SPACING, atol=1e-9)


def test_brain_mask_from_labelmap_and_segmentation(scene, volume):
    brain = np.zeros(SHAPE, np.uint8)
    brain[1:9, 3:11, 2:14] = 1
    # label map on the input's grid: identity
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "mask")
    slicer.util.updateVolumeFromArray(labelmap, brain * 5)
    M.copyGeometry(volume, labelmap)
    np.testing.assert_array_equal(M.maskArrayForInput(labelmap, volume), brain)
    # the same mask on a grid shifted by whole voxels, outside the parent transform (hardened): same result
    shifted = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "shifted mask")
    padded = np.zeros((SHAPE[0] + 2, SHAPE[1] + 2, SHAPE[2] + 2), np.uint8)
    padded[1:-1, 1:-1, 1:-1] = brain
    slicer.util.updateVolumeFromArray(shifted, padded)
    m = PARENT @ IJK_TO_RAS
    m[:3, 3] = world_of_ijk((-1, -1, -1))
    shifted.SetIJKToRASMatrix(vtk_matrix(m))
    np.testing.assert_array_equal(M.maskArrayForInput(shifted, volume), brain)
    # a segmentation (all segments together)
    seg = M.updateSegmentationNode(scene, volume, brain)
    scene.GetSubjectHierarchyNode()  # created on demand by the export; make it exist before counting
    before_nodes = scene.GetNumberOfNodes()
    np.testing.assert_array_equal(M.maskArrayForInput(seg, volume), brain)
    assert scene.GetNumberOfNodes() == before_nodes  # the temporary label map and its colours are gone
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    with pytest.raises(ValueError, match="no segments"):
        M.maskArrayForInput(empty, volume)


# ----------------------------------------------------------------------------- results <-> input, plot, legend


def test_results_remember_their_input(scene, volume):
    anomaly = known_map()
    out = M.applyResults(scene, volume, anomaly, M.labelFromAnomalyMap(anomaly, 1.0), report_for(1.0))
    assert M.resultsMatchInput(out["heatmap"], volume)
    assert all(M.resultsInput(out[k]) is volume for k in ("heatmap", "segmentation", "table"))
    other = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "another scan")
    slicer.util.updateVolumeFromArray(other, np.zeros(SHAPE, np.float32))
    other.SetIJKToRASMatrix(vtk_matrix(IJK_TO_RAS))
    assert not M.resultsMatchInput(out["heatmap"], other)  # same grid, different scan
    assert not M.resultsMatchInput(out["heatmap"], None) and not M.resultsMatchInput(None, volume)
    moved = IJK_TO_RAS.copy()
    moved[0, 3] += 1.0
    volume.SetIJKToRASMatrix(vtk_matrix(moved))  # the input's grid changed after the run
    assert not M.resultsMatchInput(out["heatmap"], volume)


def test_results_find_their_input_after_a_scene_import(tmp_path):
    """Issue 23.5: a saved scene imported into a scene whose node IDs clash. Slicer renames the imported
    nodes and rewrites their node references; an ID kept in an attribute would point at a stranger."""
    saved = slicer.vtkMRMLScene()
    scan = saved.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "saved scan")
    slicer.util.updateVolumeFromArray(scan, np.ones(SHAPE, np.float32))
    anomaly = known_map()
    out = M.applyResults(saved, scan, anomaly, M.labelFromAnomalyMap(anomaly, 1.0), report_for(1.0))
    path = tmp_path / "saved.mrml"
    saved.SetURL(str(path))
    assert saved.Commit()

    scene = slicer.vtkMRMLScene()
    stranger = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "stranger")  # takes the saved scan's ID
    assert stranger.GetID() == scan.GetID()
    scene.SetURL(str(path))
    scene.Import()
    imported = {n.GetName(): n for n in scene.GetNodesByClass("vtkMRMLScalarVolumeNode")}
    heat = imported[out["heatmap"].GetName()]
    assert imported["saved scan"].GetID() != scan.GetID()  # renamed on import
    assert M.resultsInput(heat) is imported["saved scan"]
    assert M.resultsInput(heat) is not stranger


def test_outputs_go_beside_the_input_in_the_data_tree(scene, volume):
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = shNode.CreateFolderItem(shNode.GetSceneItemID(), "study")
    shNode.CreateItem(study, volume)  # what Slicer's application logic does for every node added
    anomaly = known_map()
    out = M.applyResults(scene, volume, anomaly, M.labelFromAnomalyMap(anomaly, 1.0), report_for(1.0))
    for key in ("heatmap", "segmentation", "table", "plot"):
        assert shNode.GetItemParent(shNode.GetItemByDataNode(out[key])) == study, key


def test_outputs_never_overwrite_the_input_and_opacity_follows_the_slider(scene, volume):
    with pytest.raises(ValueError, match="is the input volume"):
        M.checkOutputNodes(volume, volume)
    M.checkOutputNodes(volume, None)
    anomaly = known_map()
    out = M.applyResults(scene, volume, anomaly, M.labelFromAnomalyMap(anomaly, 1.0), report_for(1.0))
    M.setHeatmapOpacity(scene, out["heatmap"], 0.8)
    composites = [scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode") for i in range(3)]
    assert [c.GetForegroundOpacity() for c in composites] == [pytest.approx(0.8)] * 3
    composites[0].SetForegroundVolumeID(None)  # a view showing something else keeps its opacity
    M.setHeatmapOpacity(scene, out["heatmap"], 0.3)
    assert [c.GetForegroundOpacity() for c in composites] == [pytest.approx(v) for v in (0.8, 0.3, 0.3)]


def test_show_chart_switches_to_a_layout_with_a_plot_view(scene, volume):
    layout = scene.AddNewNodeByClass("vtkMRMLLayoutNode")
    layout.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)  # Slicer's default: no plot
    view = scene.AddNewNodeByClass("vtkMRMLPlotViewNode")
    plots = slicer.vtkSlicerPlotsLogic()
    plots.SetMRMLScene(scene)
    table = M.updateScoreTable(scene, volume, report_for(1.0))
    chart = M.updateScorePlot(scene, table)
    M.showChart(scene, plots, chart)  # Slicer's own vtkSlicerPlotsLogic.ShowChartInLayout
    arrangement = layout.GetViewArrangement()
    assert arrangement != slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView
    assert arrangement == plots.GetLayoutWithPlot(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
    assert view.GetPlotChartNodeID() == chart.GetID()
    assert view.GetInteractionMode() == slicer.vtkMRMLPlotViewNode.InteractionModeSelectPoints


def test_row_from_plot_selection():
    ids = vtk.vtkStringArray()
    selections = vtk.vtkCollection()
    for series, rows in (("vtkMRMLPlotSeriesNode7", [2]), ("vtkMRMLPlotSeriesNode1", [5, 6])):
        ids.InsertNextValue(series)
        points = vtk.vtkIdTypeArray()
        for r in rows:
            points.InsertNextValue(r)
        selections.AddItem(points)
    assert M.rowFromPlotSelection(ids, selections, "vtkMRMLPlotSeriesNode1") == 5
    assert M.rowFromPlotSelection(ids, selections, "vtkMRMLPlotSeriesNode7") == 2
    assert M.rowFromPlotSelection(ids, selections, "vtkMRMLPlotSeriesNode3") is None
    assert M.rowFromPlotSelection(vtk.vtkStringArray(), vtk.vtkCollection(), "x") is None


def test_threshold_is_shown_on_the_legend_and_chart(scene, volume):
    anomaly = known_map()
    out = M.applyResults(scene, volume, anomaly, M.labelFromAnomalyMap(anomaly, 1.25), report_for(1.25))
    colors = slicer.vtkSlicerColorLogic()
    colors.SetMRMLScene(scene)
    M.markThreshold(scene, colors, out["heatmap"], out["plot"], 1.25)
    legend = colors.GetColorLegendDisplayNode(out["heatmap"])
    assert legend is not None and "1.25" in legend.GetTitleText()
    assert "1.25" in out["plot"].GetTitle()
    M.markThreshold(scene, colors, out["heatmap"], out["plot"], 2.5)  # re-threshold: same legend, new title
    assert colors.GetNumberOfColorLegendDisplayNodes(out["heatmap"]) == 1
    assert (
        "2.5" in colors.GetColorLegendDisplayNode(out["heatmap"]).GetTitleText()
        and "2.5" in out["plot"].GetTitle()
    )


def test_worker_inputs_are_written_on_the_world_geometry(scene, volume, tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    brain = np.zeros(SHAPE, np.uint8)
    brain[2:8, 3:10, 4:12] = 1
    seg = M.updateSegmentationNode(scene, volume, brain)
    inputPath, maskPath, others = M.writeWorkerInputs(tmp_path, volume, seg, {"t1ce": volume})
    image, mask = sitk.ReadImage(str(inputPath)), sitk.ReadImage(str(maskPath))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), slicer.util.arrayFromVolume(volume))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), brain)
    lps = np.diag([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(
        mask.TransformIndexToPhysicalPoint((3, 4, 5)), lps @ world_of_ijk((3, 4, 5)), atol=1e-5
    )
    assert others == {"t1ce": tmp_path / "contrast_t1ce.nrrd"} and others["t1ce"].is_file()
    with pytest.raises(ValueError, match="t1ce"):
        M.writeWorkerInputs(tmp_path, volume, None, {"t1ce": None})


def test_most_anomalous_row(scene, volume):
    report = report_for(1.0, [None, 1.5, 2.0] + [1.0] * (SHAPE[0] - 3))
    report["slice_anomaly_scores"] = [None, 0.2, 0.1, 0.9] + [0.3] * (SHAPE[0] - 4)
    table = M.updateScoreTable(scene, volume, report)
    assert M.mostAnomalousRow(table) == 3  # by the heat map's p99, as the scan figure ranks slices
    report["slice_anomaly_scores"] = [None] * SHAPE[0]
    assert M.mostAnomalousRow(M.updateScoreTable(scene, volume, report, table)) == 2  # else by bpd
    report["slice_scores"] = [None] * SHAPE[0]
    assert M.mostAnomalousRow(M.updateScoreTable(scene, volume, report, table)) is None


def test_slice_spacing(volume):
    for axis, spacing in ((0, SPACING[2]), (1, SPACING[1]), (2, SPACING[0])):  # numpy (K, J, I)
        assert M.sliceSpacingMm(volume, axis) == pytest.approx(spacing)
