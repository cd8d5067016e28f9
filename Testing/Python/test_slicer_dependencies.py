"""The Slicer module's dependency handling (AnoDODESlicerLib/dependencies.py): what is missing or too old,
judged from package metadata without importing anything; the install plan (light-the-torch when the PyTorch
extension is there, pip otherwise); the non-blocking installer with its fallback, cancel and offline message."""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
import time

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "AnoDODE"))
from AnoDODESlicerLib import dependencies as D


def test_requirements_match_pyproject():
    tomllib = pytest.importorskip("tomllib")
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    parsed = {}
    for spec in declared:
        name, _, minimum = spec.partition(">=")
        parsed[name.strip().lower()] = minimum.strip() or None
    assert {r.distribution.lower(): r.minimum for r in D.REQUIREMENTS} == parsed


@pytest.mark.parametrize(
    ("version", "minimum", "ok"),
    [
        ("2.13.0+cpu", "2.2", True),
        ("2.1.2", "2.2", False),
        ("2.2", "2.2.0", True),
        ("2.2.0", "2.2", True),
        ("0.2.10", "0.2.3", True),
        ("0.2.3", "0.2.10", False),
        ("2.2rc1", "2.2", True),
        ("10.0", "9.9", True),
    ],
)
def test_version_comparison_is_numeric(version, minimum, ok):
    assert D.atLeast(version, minimum) is ok


def test_version_parse():
    assert D.versionTuple("2.13.0+cu121") == (2, 13, 0)
    assert D.versionTuple("v1.24") == (1, 24)
    with pytest.raises(ValueError, match="not a version"):
        D.versionTuple("unknown")


def fake_versions(table):
    def version(distribution):
        if distribution not in table:
            raise importlib.metadata.PackageNotFoundError(distribution)
        return table[distribution]

    return version


def test_unmet_requirements_from_metadata():
    reqs = (
        D.Requirement("torch", "torch", "2.2"),
        D.Requirement("tqdm", "tqdm", "4.60"),
        D.Requirement("not_a_module_xyz", "not-a-dist-xyz", "1.0"),
        D.Requirement("json", "no-metadata-dist", "1.0"),
    )  # importable, no metadata: accepted
    unmet = D.unmetRequirements(reqs, fake_versions({"torch": "2.1.0", "tqdm": "4.66.1"}))
    assert [(r.module, why) for r, why in unmet] == [
        ("torch", "2.1.0 installed, 2.2 or newer needed"),
        ("not_a_module_xyz", "not installed"),
    ]


def test_this_environment_meets_every_requirement():
    assert D.unmetRequirements() == []


def test_checking_requirements_imports_none_of_them():
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from AnoDODESlicerLib import dependencies as D; "
        "D.unmetRequirements(); heavy = {'torch', 'torchdiffeq', 'skimage', 'numpy', 'SimpleITK'} & set(sys.modules); "
        "print(sorted(heavy)); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "AnoDODE")],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_module_file_never_imports_torch():
    """Not even in its self-test: Slicer's process must not load torch (or initialise CUDA)."""
    tree = ast.parse((REPO / "AnoDODE" / "AnoDODE.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert not any(n.split(".")[0] == "torch" for n in names), ast.unparse(node)
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("importlib.import_module", "__import__"):
            assert "torch" not in ast.unparse(node), ast.unparse(node)


def test_install_plan():
    torch, tqdm = D.REQUIREMENTS[0], D.Requirement("tqdm", "tqdm", "4.60")
    plan = D.installPlan("PythonSlicer", [torch, tqdm], lightTheTorch=True)
    assert [s.command for s in plan] == [
        ("PythonSlicer", "-m", "pip", "install", "light-the-torch>=0.5"),
        ("PythonSlicer", "-m", "light_the_torch", "install", "torch>=2.2"),
        ("PythonSlicer", "-m", "pip", "install", "tqdm>=4.60"),
    ]
    assert plan[0].optional and plan[1].fallback == ("PythonSlicer", "-m", "pip", "install", "torch>=2.2")
    plan = D.installPlan("py", [torch], lightTheTorch=False)
    assert [s.command for s in plan] == [("py", "-m", "pip", "install", "torch>=2.2")]
    assert D.installPlan("py", [], lightTheTorch=True) == []


def python_step(code: str, **kw) -> D.InstallStep:
    return D.InstallStep(code[:20], (sys.executable, "-c", code), **kw)


def run_installer(installer: D.Installer, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not installer.finished and time.monotonic() < deadline:
        t0 = time.monotonic()
        installer.poll()
        assert time.monotonic() - t0 < 0.5, "poll() blocked"
        time.sleep(0.02)
    assert installer.finished


def test_installer_runs_steps_in_order_with_optional_and_fallback():
    steps = [
        python_step("print('one')"),
        python_step("import sys; print('optional fails'); sys.exit(3)", optional=True),
        D.InstallStep(
            "with fallback",
            (sys.executable, "-c", "import sys; sys.exit(2)"),
            fallback=(sys.executable, "-c", "print('fallback ran')"),
        ),
        python_step("print('last')"),
    ]
    installer = D.Installer(steps)
    run_installer(installer)
    assert not installer.failed
    out = [line for line in installer.lines if not line.startswith("$ ")]
    assert out == ["one", "optional fails", "fallback ran", "last"]
    assert sum(line.startswith("$ ") for line in installer.lines) == 5


def test_installer_failure_offline_gives_one_clear_message():
    offline = (
        "import sys; print('WARNING: Retrying ... NewConnectionError: Failed to establish a new connection: "
        "[Errno -3] Temporary failure in name resolution'); "
        "print('ERROR: No matching distribution found for torch>=2.2'); sys.exit(1)"
    )
    steps = [
        D.InstallStep("torch", (sys.executable, "-c", offline), fallback=(sys.executable, "-c", offline)),
        python_step("print('never')"),
    ]
    installer = D.Installer(steps)
    run_installer(installer)
    assert installer.failed and installer.exitCode == 1
    assert "never" not in installer.lines
    message = D.failureMessage([D.REQUIREMENTS[0]], installer.lines, installer.exitCode)
    assert "offline" in message and "torch>=2.2" in message and "slicer.util.pip_install(" in message
    assert "\n" not in message
    other = D.failureMessage([D.REQUIREMENTS[0]], ["ERROR: Could not install packages due to an OSError"], 1)
    assert "offline" not in other and "OSError" in other and "exit code 1" in other


def test_installer_cancel_returns_at_once_and_finishes_failed():
    installer = D.Installer(
        [
            python_step("import time; print('started', flush=True); time.sleep(60)"),
            python_step("print('never')"),
        ]
    )
    while "started" not in installer.lines:
        installer.poll()
        time.sleep(0.02)
    t0 = time.monotonic()
    installer.cancel()
    assert time.monotonic() - t0 < 0.5
    run_installer(installer, timeout=15)
    assert installer.failed and "never" not in installer.lines
