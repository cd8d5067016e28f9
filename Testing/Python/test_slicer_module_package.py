"""The module folder as Slicer sees it: only AnoDODE.py beside the package folders, the helper package imports
under slicer-core, and Developer mode's Reload re-reads the helpers before the module."""

from __future__ import annotations

import sys
import types

import pytest
from slicer_reference import MODULE_DIR


def test_helper_package_imports_under_slicer_core(monkeypatch):
    pytest.importorskip("slicer", reason="slicer-core is not installed")
    monkeypatch.syspath_prepend(str(MODULE_DIR))
    import AnoDODESlicerLib

    for name in AnoDODESlicerLib.SUBMODULES:
        module = __import__(f"AnoDODESlicerLib.{name}", fromlist=[name])
        assert module.__file__.startswith(str(MODULE_DIR / "AnoDODESlicerLib")), name
    listed = {p.stem for p in (MODULE_DIR / "AnoDODESlicerLib").glob("*.py")} - {"__init__"}
    assert set(AnoDODESlicerLib.SUBMODULES) == listed, "every submodule is reloaded"


def test_reload_rereads_the_helpers_before_the_module(anodode_module, monkeypatch):
    module, scene, slicer, wrapper = anodode_module
    mrml = sys.modules["AnoDODESlicerLib.mrml"]
    child = sys.modules["AnoDODESlicerLib.child_process"]
    monkeypatch.setattr(mrml, "ANOMALY_SEGMENT_ID", "stale")  # as if the file had changed since loading
    monkeypatch.setattr(child, "MODULE_DIR", None)
    seen = []

    def reloadScriptedModule(name):  # Slicer's reload of the module file itself
        seen.append(
            (
                name,
                sys.modules["AnoDODESlicerLib.mrml"].ANOMALY_SEGMENT_ID,
                sys.modules["AnoDODESlicerLib.child_process"].MODULE_DIR,
            )
        )

    monkeypatch.setattr(slicer.util, "reloadScriptedModule", reloadScriptedModule, raising=False)
    widget = types.SimpleNamespace(
        moduleName="AnoDODE", abortWork=lambda: seen.append("running work stopped")
    )
    module.AnoDODEWidget.onReload(widget)  # Slicer's ScriptedLoadableModuleWidget.onReload at the end
    assert seen == ["running work stopped", ("AnoDODE", "Anomaly", MODULE_DIR)]
    assert sys.modules["AnoDODESlicerLib.mrml"] is mrml  # reloaded in place, as Slicer's own reload does
