"""Import the Slicer module (AnoDODE.py) with 3D Slicer 5.10's own Python code instead of no-op stand-ins.

slicer-core (pip) gives real MRML nodes and ``slicer.util``; Slicer's ``parameterNodeWrapper`` and
``ScriptedLoadableModule`` come from a copy of Slicer's sources (``../shared/slicer_reference/5.10`` beside
the repository, or ``$ANODODE_SLICER_REFERENCE``), exposed as ``slicer.parameterNodeWrapper`` and
``slicer.ScriptedLoadableModule``. Only the GUI toolkits are stand-ins: ``qt``, ``ctk``, ``slicer.i18n`` and
the ``qMRML*``/``qSlicer*`` widget classes, each a distinct do-nothing class per name (Slicer's GUI
connectors pick a connector by ``type(widget)``, so a stand-in ``ctkSliderWidget`` gets the slider connector).
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path

import pytest
from conftest import data_required

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "AnoDODE"
QT_PREFIXED_SLICER_NAMES = (
    "qMRMLNodeComboBox",
    "qMRMLSliderWidget",
    "qMRMLSpinBox",
    "qMRMLRangeWidget",
    "qMRMLTableView",
    "qMRMLWidget",
    "qSlicerWidget",
    "qMRMLSegmentSelectorWidget",
)


def reference_dir() -> Path:
    """Slicer 5.10's Python sources (the folder holding ``slicer/parameterNodeWrapper``)."""
    return Path(
        os.environ.get("ANODODE_SLICER_REFERENCE", REPO.parent / "shared" / "slicer_reference" / "5.10")
    )


class StandIn:
    """A do-nothing widget/toolkit object: unknown attributes are further stand-ins, calls return one."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return StandIn()

    def __call__(self, *args, **kwargs):
        return StandIn()


class StandInModule(types.ModuleType):
    """A module whose every public attribute is a distinct ``StandIn`` subclass, created on first use."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        cls = type(name, (StandIn,), {})
        setattr(self, name, cls)
        return cls


def standInClass(module: types.ModuleType, name: str) -> type:
    cls = getattr(module, name, None)
    if cls is None:
        cls = type(name, (StandIn,), {})
    return cls


def install(monkeypatch, tmp_path: Path):
    """Make ``import AnoDODE`` use Slicer's real wrapper and module base classes on a fresh MRML scene.

    Returns ``(module, scene, slicerPackage, wrapperPackage)``; skips when slicer-core or the reference
    sources are absent."""
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")
    reference = reference_dir()
    if not (reference / "slicer" / "parameterNodeWrapper" / "__init__.py").is_file():
        reason = f"Slicer 5.10 reference sources not found: {reference} (set ANODODE_SLICER_REFERENCE)"
        if (
            data_required()
        ):  # CI (ANODODE_REQUIRE_DATA=1): a test against Slicer's code must not skip silently
            pytest.fail(reason + "; ANODODE_REQUIRE_DATA is set, so this is a failure, not a skip")
        pytest.skip(reason)
    importlib.import_module("slicer.util")  # sets slicer.util (the name ``slicer`` is bound above)

    for name in ("qt", "ctk"):
        monkeypatch.setitem(sys.modules, name, StandInModule(name))
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    monkeypatch.setitem(sys.modules, "slicer.i18n", i18n)
    for name in QT_PREFIXED_SLICER_NAMES:
        monkeypatch.setattr(slicer, name, type(name, (StandIn,), {}), raising=False)
    # Slicer's sources after slicer-core's: slicer.parameterNodeWrapper and slicer.ScriptedLoadableModule
    monkeypatch.setattr(slicer, "__path__", [*slicer.__path__, str(reference / "slicer")])
    scene = slicer.vtkMRMLScene()
    temp = tmp_path / "slicer_tmp"
    temp.mkdir(exist_ok=True)
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(slicer, "app", stand_in_app(temp), raising=False)
    monkeypatch.syspath_prepend(str(MODULE_DIR))
    forget()
    wrapper = importlib.import_module("slicer.parameterNodeWrapper")
    assert Path(wrapper.__file__).resolve().is_relative_to(reference.resolve())
    module = importlib.import_module("AnoDODE")
    return module, scene, slicer, wrapper


class StartupEnvironment:
    """What ``slicer.app.startupEnvironment()`` returns (a QProcessEnvironment): ``keys()`` and ``value()``,
    here of this process's environment, so ``slicer.util.startupEnvironment`` and ``launchConsoleProcess``
    run their real code."""

    def __init__(self, env: dict | None = None) -> None:
        self.env = dict(os.environ if env is None else env)

    def keys(self) -> list[str]:
        return list(self.env)

    def value(self, name: str) -> str:
        return self.env.get(name, "")


def stand_in_app(temporaryPath) -> types.SimpleNamespace:
    """The parts of ``slicer.app`` the module's logic and ``slicer.util`` use: the temporary folder, the startup
    environment and ``processEvents`` (a no-op: there is no GUI to refresh)."""
    return types.SimpleNamespace(
        temporaryPath=str(temporaryPath), startupEnvironment=StartupEnvironment, processEvents=lambda: None
    )


def forget() -> None:
    """Drop modules imported against stand-ins, so the next import starts clean."""
    for name in list(sys.modules):
        if (
            name in ("AnoDODE", "slicer.ScriptedLoadableModule")
            or name.startswith("slicer.parameterNodeWrapper")
            or name.startswith("AnoDODESlicerLib")
            or name in ("AnoDODEMRML", "AnoDODEProcess")
        ):
            del sys.modules[name]
    slicer = sys.modules.get("slicer")
    for name in ("parameterNodeWrapper", "ScriptedLoadableModule"):  # not in slicer-core: set by the import
        if slicer is not None and name in vars(slicer):
            delattr(slicer, name)


def loadVolumeWithSimpleITK(path, properties=None):
    """A stand-in for ``slicer.util.loadVolume`` (not in slicer-core): the file as a volume node of
    ``slicer.mrmlScene`` on its world geometry (a label map with ``{"labelmap": True}``)."""
    import numpy as np
    import SimpleITK as sitk
    import slicer

    image = sitk.ReadImage(str(path))
    className = (
        "vtkMRMLLabelMapVolumeNode" if (properties or {}).get("labelmap") else "vtkMRMLScalarVolumeNode"
    )
    node = slicer.mrmlScene.AddNewNodeByClass(className, Path(path).name.split(".")[0])
    slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(image))
    lpsToRas = np.diag([-1.0, -1.0, 1.0])
    m = np.eye(4)
    m[:3, :3] = lpsToRas @ np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    m[:3, 3] = lpsToRas @ np.array(image.GetOrigin())
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(m))
    return node
