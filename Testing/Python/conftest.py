"""Shared fixtures: real data location (skip when absent), a tiny model bundle, small phantoms.

Tests that need real anatomy call ``require_data``; it skips when ../shared/data is absent, unless
``ANODODE_REQUIRE_DATA=1`` (set by .ci/run), where a missing data file fails the test instead, so that a
data test can never skip silently in CI. Tests that need no real anatomy use the generated phantoms below.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    """``$ANODODE_DATA`` or ../shared/data beside the repository."""
    return Path(os.environ.get("ANODODE_DATA", REPO.parent / "shared" / "data"))


def data_required() -> bool:
    """Whether missing real data fails tests (``ANODODE_REQUIRE_DATA`` set to anything but "", "0")."""
    return os.environ.get("ANODODE_REQUIRE_DATA", "") not in ("", "0")


def require_data(*relative: str) -> Path:
    """Path under the shared data folder; when it is missing, skip the test with the reason, or fail it
    under ``ANODODE_REQUIRE_DATA=1``."""
    path = data_dir().joinpath(*relative)
    if not path.exists():
        reason = f"real data not found: {path} (set ANODODE_DATA or place ../shared/data beside the repo)"
        if data_required():
            pytest.fail(f"{reason}; ANODODE_REQUIRE_DATA is set, so this is a failure, not a skip")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a test module: no OpenMP barrier stalls on a busy machine, and float sums in
    one fixed order (two threads can change the last bit of a reduction)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def anodode_module(monkeypatch, tmp_path):
    """The Slicer module imported against Slicer 5.10's own Python code (``slicer_reference.install``):
    ``(module, scene, slicer, parameterNodeWrapper)``; its imports are forgotten afterwards."""
    import slicer_reference

    yield slicer_reference.install(monkeypatch, tmp_path)
    slicer_reference.forget()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """An untrained, tiny but complete model bundle (fast to score with)."""
    import torch

    from AnoDODELib.bundle import AnoDODEModel, save_model
    from AnoDODELib.config import Calibration, ModelConfig, ScoreNetConfig

    torch.manual_seed(0)
    cfg = ModelConfig(
        score_net=ScoreNetConfig(channels=3, cond_channels=4, hidden=16, layers=2),
        calibration=Calibration(threshold=0.05),
    )
    model = AnoDODEModel(cfg, metadata={"name": "tiny-test-model"})
    with torch.no_grad():
        for p in model.score_net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return save_model(model, tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def phantom_file(tmp_path_factory) -> Path:
    """A small synthetic FLAIR-like phantom (3 mm in-plane, 6 mm slices) written as NIfTI."""
    from AnoDODELib.demo import make_phantom

    ph = make_phantom(spacing=(3.0, 3.0, 6.0))
    path = tmp_path_factory.mktemp("phantom") / "phantom.nii.gz"
    sitk.WriteImage(ph.image, str(path))
    sitk.WriteImage(ph.lesion, str(path.with_name("phantom_lesion.nii.gz")))
    return path


@pytest.fixture(scope="session")
def small_scan(tmp_path_factory) -> Path:
    """A generated FLAIR-like phantom slab as .nrrd (the format Slicer hands the worker): 3 mm in-plane,
    6 mm slices, the 12 axial slices through its lesion, LPS storage. For tests that need a scan to
    score but no real anatomy (worker protocol, cancel, errors)."""
    from AnoDODELib.demo import make_phantom

    image = make_phantom(spacing=(3.0, 3.0, 6.0)).image
    size = list(image.GetSize())
    start = [0, 0, size[2] // 2 - 4]
    image = sitk.RegionOfInterest(image, [size[0], size[1], 12], start)
    image = sitk.Flip(image, [True, True, False], flipAboutOrigin=False)  # RAS -> LPS storage, same anatomy
    path = tmp_path_factory.mktemp("scan") / "phantom_slab.nrrd"
    sitk.WriteImage(image, str(path))
    return path


def replace(cfg, **kw):
    return dataclasses.replace(cfg, **kw)
