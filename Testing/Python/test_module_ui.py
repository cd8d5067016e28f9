"""Static consistency of the Slicer module (no Slicer, no Qt needed): .ui <-> parameter node wrapper, the
widgets the code uses, the CMake file lists, and the engine/host split."""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "AnoDODE"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "AnoDODE.ui"
MODULE_FILE = MODULE_DIR / "AnoDODE.py"
CMAKE_FILE = MODULE_DIR / "CMakeLists.txt"

# parameter node field (annotation, unwrapped) -> the widget class the .ui must use for it
WIDGET_FOR_TYPE = {
    "str": "QComboBox",
    "bool": "QCheckBox",
    "float": "ctkSliderWidget",
    "pathlib.Path": "ctkPathLineEdit",
}


@pytest.fixture(scope="module")
def ui():
    return ET.parse(UI_FILE).getroot()


@pytest.fixture(scope="module")
def module_ast():
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"))


def ui_parameter_widgets(root) -> dict[str, ET.Element]:
    out = {}
    for widget in root.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                name = prop.findtext("string")
                assert name not in out, f"parameter {name} bound to two widgets"
                out[name] = widget
    return out


def class_def(tree, name) -> ast.ClassDef:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise AssertionError(f"class {name} not found in AnoDODE.py")


def parameter_fields(tree) -> dict[str, ast.expr]:
    cls = class_def(tree, "AnoDODEParameterNode")
    assert any(isinstance(d, ast.Name) and d.id == "parameterNodeWrapper" for d in cls.decorator_list)
    return {n.target.id: n.annotation for n in cls.body if isinstance(n, ast.AnnAssign)}


def base_type(annotation: ast.expr) -> ast.expr:
    """Annotated[T, ...] -> T."""
    if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) == "Annotated":
        return annotation.slice.elts[0]
    return annotation


def node_types(annotation: ast.expr) -> list[str]:
    t = base_type(annotation)
    if isinstance(t, ast.Subscript) and ast.unparse(t.value) in ("Union", "typing.Union"):
        return sorted(ast.unparse(e) for e in t.slice.elts if ast.unparse(e) != "None")
    name = ast.unparse(t)
    return [name] if name.startswith("vtkMRML") else []


def string_list(widget, prop_name) -> list[str]:
    for prop in widget.findall("property"):
        if prop.get("name") == prop_name:
            return [s.text for s in prop.iter("string")]
    return []


def test_ui_parameters_match_the_wrapper_fields(ui, module_ast):
    in_ui = set(ui_parameter_widgets(ui))
    fields = set(parameter_fields(module_ast))
    assert in_ui - fields == set(), "SlicerParameterName without a wrapper field"
    assert fields - in_ui == set(), "wrapper fields without a widget"


def test_each_parameter_has_a_widget_that_can_represent_it(ui, module_ast):
    widgets = ui_parameter_widgets(ui)
    for name, annotation in parameter_fields(module_ast).items():
        widget = widgets[name]
        types = node_types(annotation)
        if types:
            assert widget.get("class") == "qMRMLNodeComboBox", name
            assert sorted(string_list(widget, "nodeTypes")) == types, name
            continue
        expected = WIDGET_FOR_TYPE[ast.unparse(base_type(annotation))]
        assert widget.get("class") == expected, name
        text = ast.unparse(annotation)
        if expected == "QComboBox":
            assert "Choice(" in text, f"{name}: a QComboBox needs a Choice annotation"
        if expected == "ctkSliderWidget":
            assert "WithinRange(" in text, f"{name}: a ctkSliderWidget needs a bounded float"


def test_custom_widgets_are_declared(ui):
    declared = {c.findtext("class") for c in ui.iter("customwidget")}
    used = {w.get("class") for w in ui.iter("widget")}
    custom = {c for c in used if c.startswith(("ctk", "qMRML", "qSlicer"))}
    assert custom <= declared, custom - declared
    # every node selector gets the scene from the top-level qMRMLWidget
    receivers = {
        c.findtext("receiver")
        for c in ui.iter("connection")
        if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    mrml_widgets = {
        w.get("name") for w in ui.iter("widget") if w.get("class") in ("qMRMLNodeComboBox", "qMRMLTableView")
    }
    assert mrml_widgets <= receivers, mrml_widgets - receivers


def test_code_uses_only_widgets_that_exist(ui, module_ast):
    names = {w.get("name") for w in ui.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text(encoding="utf-8")))
    assert used, "the widget does not use self.ui"
    assert used <= names, used - names


def test_template_structure(module_ast):
    bases = {
        c.name: [ast.unparse(b) for b in c.bases] for c in module_ast.body if isinstance(c, ast.ClassDef)
    }
    assert bases["AnoDODE"] == ["ScriptedLoadableModule"]
    assert bases["AnoDODEWidget"] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert bases["AnoDODELogic"] == ["ScriptedLoadableModuleLogic"]
    assert bases["AnoDODETest"] == ["ScriptedLoadableModuleTest"]
    test_methods = [
        f.name for f in class_def(module_ast, "AnoDODETest").body if isinstance(f, ast.FunctionDef)
    ]
    assert "runTest" in test_methods and any(m.startswith("test_") for m in test_methods)
    # glue only, the work is in AnoDODESlicerLib (the bound is for ruff-formatted code)
    assert len(MODULE_FILE.read_text(encoding="utf-8").splitlines()) < 1000


def test_choices_match_the_engine(module_ast):
    values = {}
    for node in module_ast.body:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id in ("DEVICES", "PRESETS")
        ):
            values[node.targets[0].id] = ast.literal_eval(node.value)
    from AnoDODELib import worker

    assert tuple(values["DEVICES"]) == worker.DEVICES
    assert tuple(values["PRESETS"]) == worker.PRESET_NAMES
    pipeline = pytest.importorskip("AnoDODELib.pipeline", reason="engine pipeline not importable")
    assert tuple(pipeline.PRESETS) == worker.PRESET_NAMES


# ----------------------------------------------------------------------------- CMake


def cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.DOTALL)
    assert match, f"{variable} not found in {CMAKE_FILE}"
    return [item.replace("${MODULE_NAME}", "AnoDODE") for item in match.group(1).split()]


def shipped_files(folder: Path) -> set[str]:
    return {
        p.relative_to(MODULE_DIR).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".")
    }


def test_cmake_lists_every_script():
    scripts = cmake_list(CMAKE_FILE.read_text(encoding="utf-8"), "MODULE_PYTHON_SCRIPTS")
    assert len(scripts) == len(set(scripts)), "duplicate entries"
    expected = {p.name for p in MODULE_DIR.glob("*.py")} | {
        p.relative_to(MODULE_DIR).as_posix()
        for package in ("AnoDODELib", "AnoDODESlicerLib")
        for p in (MODULE_DIR / package).glob("*.py")
    }
    assert set(scripts) == expected


def test_cmake_lists_every_resource():
    resources = cmake_list(CMAKE_FILE.read_text(encoding="utf-8"), "MODULE_PYTHON_RESOURCES")
    assert len(resources) == len(set(resources)), "duplicate entries"
    expected = shipped_files(MODULE_DIR / "Resources")
    assert {"Resources/UI/AnoDODE.ui", "Resources/Icons/AnoDODE.png"} <= expected
    assert set(resources) == expected, "Resources (UI, icon, model bundle files) and the CMake list differ"


def test_cmake_module_and_extension_settings():
    module = CMAKE_FILE.read_text(encoding="utf-8")
    assert "slicerMacroBuildScriptedModule(" in module and "WITH_GENERIC_TESTS" in module
    assert re.search(
        r"if\(BUILD_TESTING\).*slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", module, re.DOTALL
    )
    assert not re.search(r"file\s*\(\s*GLOB", module, re.IGNORECASE), "list files explicitly"
    top = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "project(AnoDODE)" in top
    for variable in (
        "EXTENSION_HOMEPAGE",
        "EXTENSION_CATEGORY",
        "EXTENSION_CONTRIBUTORS",
        "EXTENSION_DESCRIPTION",
        "EXTENSION_ICONURL",
        "EXTENSION_SCREENSHOTURLS",
        "EXTENSION_DEPENDS",
    ):
        assert re.search(rf"set\({variable} ", top), variable
    assert 'set(EXTENSION_CATEGORY "Segmentation")' in top
    order = [
        "find_package(Slicer REQUIRED)",
        "include(${Slicer_USE_FILE})",
        "add_subdirectory(AnoDODE)",
        "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
        "include(${Slicer_EXTENSION_CPACK})",
    ]
    positions = [top.index(s) for s in order]
    assert positions == sorted(positions)


def cmake_value(text: str, variable: str) -> str:
    match = re.search(rf'set\({variable} "([^"]*)"\)', text)
    assert match, variable
    return match.group(1)


def test_extension_catalog_metadata():
    """Extensions Index entry (JSON, schema v1.0.1) consistent with the CMake metadata; the files the catalog
    links to exist at the paths its URLs name."""
    import json

    top = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    entry = json.loads((REPO / "AnoDODE.json").read_text(encoding="utf-8"))
    assert entry["$schema"].endswith("/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert set(entry) == {
        "$schema",
        "build_dependencies",
        "build_subdirectory",
        "category",
        "scm_revision",
        "scm_url",
        "tier",
    }
    assert entry["category"] == cmake_value(top, "EXTENSION_CATEGORY")
    assert entry["build_dependencies"] == cmake_value(top, "EXTENSION_DEPENDS").split(";") == ["PyTorch"]
    assert cmake_value(top, "EXTENSION_HOMEPAGE").startswith(entry["scm_url"])
    assert entry["build_subdirectory"] == "." and entry["tier"] in (1, 3, 5)
    raw = entry["scm_url"].replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    for variable in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        for url in cmake_value(top, variable).split():
            assert url.startswith(raw), url
            assert (REPO / url[len(raw) :]).is_file(), (
                f"{variable}: {url[len(raw) :]} is not in the repository"
            )
    for contributor in cmake_value(top, "EXTENSION_CONTRIBUTORS").split(", "):
        assert re.fullmatch(r"[^()]+ \([^()]+\)", contributor), f"not 'Name (Organisation)': {contributor}"
    license_text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text


# ----------------------------------------------------------------------------- host/engine split


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("path", sorted((MODULE_DIR / "AnoDODELib").glob("*.py")), ids=lambda p: p.name)
def test_engine_never_imports_slicer_or_qt(path):
    assert imported_modules(path) & {"slicer", "qt", "ctk", "vtk", "AnoDODESlicerLib"} == set()


def test_only_the_module_file_is_beside_the_module():
    """Slicer instantiates every .py in a module folder as a module ("Fail to instantiate module" otherwise)."""
    assert sorted(p.name for p in MODULE_DIR.glob("*.py")) == ["AnoDODE.py"]
    assert (MODULE_DIR / "AnoDODESlicerLib" / "__init__.py").is_file()


@pytest.mark.parametrize("path", sorted((MODULE_DIR / "AnoDODESlicerLib").glob("*.py")), ids=lambda p: p.name)
def test_slicer_helpers_are_qt_and_torch_free(path):
    assert imported_modules(path) & {"qt", "ctk", "torch"} == set()


def test_worker_imports_nothing_heavy_at_module_level():
    tree = ast.parse((MODULE_DIR / "AnoDODELib" / "worker.py").read_text(encoding="utf-8"))
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            top.add(node.module.split(".")[0] if node.level == 0 else "." + (node.module or ""))
    assert top & {"torch", "numpy", "SimpleITK", ".pipeline", ".bundle", ".volume_io"} == set()
