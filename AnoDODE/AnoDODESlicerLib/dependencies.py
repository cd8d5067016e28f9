"""Which Python packages the engine still needs in Slicer, and installing them without blocking Slicer.

Nothing here imports torch (or any other requirement): versions come from the installed distributions'
metadata, and every installation runs as a child process (``PythonSlicer -m pip ...``) that the widget polls
from a timer, so Slicer stays responsive and torch is never loaded into Slicer's own process (a loaded torch
holds its files, which blocks upgrading it, and may initialise CUDA in the GUI process).

torch: when the PyTorch extension (PyTorchUtils) is installed, torch is installed the way it does it, with
light-the-torch, which picks the torch build (CUDA version or CPU) that matches this computer's NVIDIA
driver; plain pip is the fallback.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .child_process import WorkerProcess


@dataclass(frozen=True)
class Requirement:
    """One engine dependency: the name it is imported by, its pip distribution and minimum version."""

    module: str
    distribution: str
    minimum: str | None = None

    def spec(self) -> str:
        """The pip requirement, e.g. ``torch>=2.2``."""
        return f"{self.distribution}>={self.minimum}" if self.minimum else self.distribution


# the engine's runtime dependencies (pyproject.toml [project].dependencies; a test keeps the two equal)
REQUIREMENTS = (
    Requirement("torch", "torch", "2.2"),
    Requirement("torchdiffeq", "torchdiffeq", "0.2.3"),
    Requirement("numpy", "numpy", "2.0.0"),
    Requirement("SimpleITK", "SimpleITK", "2.2.1"),
    Requirement("skimage", "scikit-image", "0.26.0"),
    Requirement("scipy", "scipy", "1.13.0"),
    Requirement("tqdm", "tqdm", "4.60.0"),
)
LIGHT_THE_TORCH = "light-the-torch>=0.5"
OFFLINE_PATTERNS = (
    "Temporary failure in name resolution",
    "Failed to establish a new connection",
    "NewConnectionError",
    "Network is unreachable",
    "Name or service not known",
    "getaddrinfo failed",
    "No matching distribution found",
    "Could not find a version that satisfies",
    "ConnectTimeoutError",
    "Connection refused",
    "ProxyError",
)


def versionTuple(version: str) -> tuple[int, ...]:
    """The leading numeric release of a version string: ``"2.13.0+cpu"`` -> (2, 13, 0); ``"2.2rc1"`` -> (2, 2)."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    if not match:
        raise ValueError(f"not a version: {version!r}")
    return tuple(int(part) for part in match.group(1).split("."))


def atLeast(version: str, minimum: str) -> bool:
    """``version >= minimum`` comparing release numbers (missing trailing parts count as 0)."""
    a, b = versionTuple(version), versionTuple(minimum)
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)) >= b + (0,) * (width - len(b))


def installedVersion(
    requirement: Requirement, version: Callable[[str], str] = importlib.metadata.version
) -> str | None:
    """The installed version, "" when importable without package metadata (e.g. Slicer's own SimpleITK build),
    or None when not installed. Never imports the package."""
    try:
        return version(requirement.distribution)
    except importlib.metadata.PackageNotFoundError:
        return "" if importlib.util.find_spec(requirement.module) is not None else None


def unmetRequirements(
    requirements: Sequence[Requirement] = REQUIREMENTS,
    version: Callable[[str], str] = importlib.metadata.version,
) -> list[tuple[Requirement, str]]:
    """``(requirement, reason)`` for each requirement that is missing or older than its minimum."""
    out = []
    for requirement in requirements:
        installed = installedVersion(requirement, version)
        if installed is None:
            out.append((requirement, "not installed"))
        elif installed and requirement.minimum and not atLeast(installed, requirement.minimum):
            out.append((requirement, f"{installed} installed, {requirement.minimum} or newer needed"))
    return out


@dataclass(frozen=True)
class InstallStep:
    """One child-process command. ``fallback`` runs when it fails; ``optional`` steps may fail."""

    description: str
    command: tuple[str, ...]
    fallback: tuple[str, ...] | None = None
    optional: bool = False


def installPlan(python: str, needed: Sequence[Requirement], lightTheTorch: bool) -> list[InstallStep]:
    """The commands that install ``needed`` with the interpreter ``python`` (Slicer's PythonSlicer)."""
    steps = []
    pip = (python, "-m", "pip", "install")
    torch = [r for r in needed if r.module == "torch"]
    others = [r for r in needed if r.module != "torch"]
    if torch:
        pipTorch = (*pip, torch[0].spec())
        if lightTheTorch:
            steps.append(
                InstallStep(
                    "light-the-torch (chooses the torch build for this computer's GPU driver)",
                    (*pip, LIGHT_THE_TORCH),
                    optional=True,
                )
            )
            steps.append(
                InstallStep(
                    f"{torch[0].spec()} with light-the-torch",
                    (python, "-m", "light_the_torch", "install", torch[0].spec()),
                    fallback=pipTorch,
                )
            )
        else:
            steps.append(InstallStep(f"{torch[0].spec()} with pip", pipTorch))
    if others:
        steps.append(InstallStep(", ".join(r.spec() for r in others), (*pip, *(r.spec() for r in others))))
    return steps


def manualInstallHint(needed: Sequence[Requirement]) -> str:
    specs = " ".join(r.spec() for r in needed)
    return (
        f"Install them in Slicer's Python console with slicer.util.pip_install('{specs}') "
        f"(torch is best installed with the PyTorch extension's PyTorch Utils module), then restart Slicer."
    )


def looksOffline(lines: Sequence[str]) -> bool:
    """Whether pip's output says it could not reach the package index."""
    return any(pattern in line for line in lines for pattern in OFFLINE_PATTERNS)


def failureMessage(needed: Sequence[Requirement], lines: Sequence[str], exitCode: int | None) -> str:
    """One message for a failed installation: the offline case gets its own, the rest the last error line."""
    names = ", ".join(r.spec() for r in needed)
    if looksOffline(lines):
        return (
            f"AnoDODE could not download the Python packages it needs ({names}): this computer seems to be "
            f"offline or the package index cannot be reached. Connect to the internet and click "
            f"'Detect anomalies' again. {manualInstallHint(needed)}"
        )
    errors = [line.strip() for line in lines if line.strip().startswith(("ERROR", "error"))]
    last = errors[-1] if errors else next((line.strip() for line in reversed(lines) if line.strip()), "")
    return (
        f"Installing AnoDODE's Python packages ({names}) failed (exit code {exitCode})"
        + (f": {last}" if last else "")
        + f". {manualInstallHint(needed)}"
    )


class Installer:
    """Runs an install plan step by step in child processes; the host calls ``poll()`` from a timer.

    ``poll()`` returns the new output lines and starts the next command when one ends. ``finished`` turns
    True at the end; then ``failed`` says whether a required step (and its fallback) failed."""

    def __init__(
        self, steps: Sequence[InstallStep], start: Callable[[list[str]], WorkerProcess] = WorkerProcess
    ) -> None:
        self.steps = list(steps)
        self._start = start
        self.lines: list[str] = []
        self.finished = False
        self.failed = False
        self.exitCode: int | None = None
        self.index = -1
        self.cancelled = False
        self._usingFallback = False
        self.process: WorkerProcess | None = None
        self._next()

    @property
    def description(self) -> str:
        if self.finished or not self.steps:
            return ""
        step = self.steps[self.index]
        return f"step {self.index + 1}/{len(self.steps)}: {step.description}" + (
            " (pip fallback)" if self._usingFallback else ""
        )

    def _launch(self, command: Sequence[str]) -> None:
        self.lines.append("$ " + " ".join(command))
        self.process = self._start(list(command))

    def _next(self) -> None:
        self.index += 1
        self._usingFallback = False
        if self.index >= len(self.steps):
            self.finished = True
            self.process = None
            return
        self._launch(self.steps[self.index].command)

    def poll(self) -> list[str]:
        if self.finished or self.process is None:
            return []
        new = [line for _, line in self.process.poll()]
        self.lines += new
        code = self.process.returncode
        if code is None:
            return new
        step = self.steps[self.index]
        if self.cancelled:
            self.exitCode, self.failed, self.finished, self.process = code, True, True, None
        elif code == 0 or step.optional:
            self._next()
        elif step.fallback is not None and not self._usingFallback:
            self._usingFallback = True
            self._launch(step.fallback)
        else:
            self.exitCode = code
            self.failed = True
            self.finished = True
            self.process = None
        return new

    def cancel(self) -> None:
        """Ask the running command to stop (returns at once); ``poll()`` then finishes as failed."""
        self.cancelled = True
        if self.process is not None:
            self.process.requestCancel()
