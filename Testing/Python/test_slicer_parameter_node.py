"""The module's parameter node with Slicer 5.10's real ``parameterNodeWrapper`` on real MRML nodes (slicer-core).

A fresh parameter node must build (every default must be writable: a node parameter without ``None`` in its
Union cannot be), every node parameter must take each node class it allows and go back to None, and each
parameter's widget in the .ui must get a connector from Slicer's own GUI-connector registry.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from slicer_reference import MODULE_DIR, standInClass

UI_FILE = MODULE_DIR / "Resources" / "UI" / "AnoDODE.ui"


def node_parameters(wrapper, parameterClass) -> dict[str, tuple[str, ...]]:
    """Parameter name -> the MRML class names it accepts, by Slicer's own reading of the annotation."""
    return {
        name: tuple(wrapper.getNodeTypes(info.unalteredType))
        for name, info in parameterClass.allParameters.items()
        if wrapper.isNodeOrUnionOfNodes(info.unalteredType)
    }


def test_fresh_parameter_node_builds_with_defaults(anodode_module):
    module, scene, slicer, wrapper = anodode_module
    logic = module.AnoDODELogic()
    p = logic.getParameterNode()  # Slicer's ScriptedLoadableModuleLogic: a new vtkMRMLScriptedModuleNode
    assert isinstance(p.parameterNode, slicer.vtkMRMLScriptedModuleNode)
    assert p.parameterNode.GetScene() is scene
    nodes = node_parameters(wrapper, type(p))
    assert {"inputVolume", "brainMask", "outputHeatmap", "outputSegmentation", "outputTable"} <= set(nodes)
    for name in nodes:
        assert getattr(p, name) is None, name
    assert (p.device, p.preset, p.autoThreshold) == ("auto", "standard", True)
    # the same MRML node wrapped again (what Slicer does on every module entry) reads the same values
    assert logic.getParameterNode().parameterNode is p.parameterNode


def test_every_node_parameter_takes_each_allowed_class_and_none(anodode_module):
    module, scene, slicer, wrapper = anodode_module
    p = module.AnoDODELogic().getParameterNode()
    nodes = node_parameters(wrapper, type(p))
    assert nodes["brainMask"] == ("vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationNode")
    checked = 0
    for name, classNames in nodes.items():
        assert classNames, name
        for className in classNames:
            node = scene.AddNewNodeByClass(className, f"{name} {className}")
            setattr(p, name, node)
            assert getattr(p, name) is node, (name, className)
            # serialised into the MRML node, not only cached: a second wrapper reads it back
            assert getattr(module.AnoDODEParameterNode(p.parameterNode), name) is node, (name, className)
            setattr(p, name, None)
            assert getattr(p, name) is None, (name, className)
            assert getattr(module.AnoDODEParameterNode(p.parameterNode), name) is None, (name, className)
            checked += 1
    assert checked >= 6


def test_wrong_node_class_is_refused(anodode_module):
    module, scene, slicer, wrapper = anodode_module
    p = module.AnoDODELogic().getParameterNode()
    table = scene.AddNewNodeByClass("vtkMRMLTableNode")
    with pytest.raises(Exception):  # noqa: B017 - Slicer's validators raise TypeError or ValueError
        p.brainMask = table
    assert p.brainMask is None


def ui_parameter_widgets():
    out = {}
    for widget in ET.parse(UI_FILE).getroot().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                out[prop.findtext("string")] = widget
    return out


def test_each_ui_widget_gets_a_connector_from_slicers_registry(anodode_module):
    module, scene, slicer, wrapper = anodode_module
    import ctk
    import qt

    parameterClass = module.AnoDODEParameterNode
    widgets = ui_parameter_widgets()
    assert set(widgets) == set(parameterClass.allParameters)
    for name, element in widgets.items():
        className = element.get("class")
        toolkit = qt if className.startswith("Q") else ctk if className.startswith("ctk") else slicer
        widget = standInClass(toolkit, className)()
        connector = wrapper.createGuiConnector(widget, parameterClass.allParameters[name].unalteredType)
        assert connector.widget() is widget, name
        if className == "qMRMLNodeComboBox":
            declared = [s.text for s in element.find("property[@name='nodeTypes']").iter("string")]
            assert sorted(widget.nodeTypes) == sorted(declared), name
