"""Shared fixtures: real data location (skip when absent), a tiny model bundle, a small phantom."""
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


def require_data(*relative: str) -> Path:
    """Path under the shared data folder, or skip the test with the reason."""
    path = data_dir().joinpath(*relative)
    if not path.exists():
        pytest.skip(f"real data not found: {path} (set ANODODE_DATA or place ../shared/data beside the repo)")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """An untrained, tiny but complete model bundle (fast to score with)."""
    import torch

    from AnoDODELib.bundle import AnoDODEModel, save_model
    from AnoDODELib.config import Calibration, ModelConfig, ScoreNetConfig

    torch.manual_seed(0)
    cfg = ModelConfig(score_net=ScoreNetConfig(channels=3, cond_channels=4, hidden=16, layers=2),
                      calibration=Calibration(threshold=0.05))
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


def replace(cfg, **kw):
    return dataclasses.replace(cfg, **kw)
