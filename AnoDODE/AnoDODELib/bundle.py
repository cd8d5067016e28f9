"""Model bundles: a folder with ``model.json`` (format version, configs, calibration, training summary)
and ``weights.pt`` (a plain state dict, loaded with ``weights_only=True`` after a SHA-256 check)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from . import atomic_write
from .config import ModelConfig, from_dict, to_dict
from .features import Standardiser
from .score_model import PointwiseScoreNet
from .sde import VPSDE

logger = logging.getLogger(__name__)

FORMAT_VERSION = 3

#: How a model.json of format N becomes format N + 1: a table of steps on dotted paths, applied in order.
#:   ("move", src, dst)       the value at src moves to dst (absent src: nothing to do)
#:   ("drop", path, reason)   the value at path is removed (a field no longer stored)
#:   ("default", path, value) path is set to value where absent: a field added to a config dataclass whose
#:                            default is not what older bundles computed gets its old behaviour here
#: A field added later with a default that reproduces what older bundles did needs no step: from_dict fills
#: in defaults. Bump FORMAT_VERSION and add a row only when old files would otherwise load wrongly.
MIGRATIONS: dict[int, tuple[tuple[str, str, Any], ...]] = {
    1: (
        ("move", "config.solver.t_eps", "config.sde.t_eps"),
        ("drop", "config.solver", "the scoring preset chooses the ODE solvers"),
        ("drop", "config.calibration.slice_score_mean_bpd", "never read"),
        ("drop", "config.calibration.slice_score_std_bpd", "never read"),
    ),
    2: (
        (
            "drop",
            "config.localisation.slice_quantile",
            "slice scores are the mean over the slice's most anomalous slice_area_mm2 (default 100 mm^2), "
            "which ranks slices better than a quantile of the slice's voxels on every held-out group",
        ),
        ("default", "config.localisation.brightness_quantile", None),
    ),
}
DEFAULT_MODEL_NAME = "anodode-flair-brats"


class BundleError(ValueError):
    """A missing, corrupt or incompatible model bundle; the message is one line (at most 300 characters)."""

    def __init__(self, message: str) -> None:
        flat = " ".join(str(message).split())
        super().__init__(flat if len(flat) <= 300 else flat[:297] + "...")


class AnoDODEModel(torch.nn.Module):
    """Everything scoring needs: the config, the feature standardiser, the score network and the SDE."""

    def __init__(self, config: ModelConfig, metadata: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.config = config
        self.metadata = dict(metadata or {})
        self.standardiser = Standardiser(config.features.channels)
        self.score_net = PointwiseScoreNet(config.score_net)
        self.sde = VPSDE.from_config(config.sde)
        self.name = self.metadata.get("name", "unnamed")
        self.directory: Path | None = None  # the bundle folder it was loaded from (load_model)
        self.weights_sha256: str | None = None  # SHA-256 of weights.pt as loaded (load_model)


def default_model_dir() -> Path:
    """The bundled default model: in a source checkout and the Slicer module the folder in the module's
    Resources/Models (its one copy in the repository); in an installed wheel the same files, shipped as
    the package data ``AnoDODELib/models/`` (see pyproject.toml)."""
    here = Path(__file__).resolve().parent
    source = here.parent / "Resources" / "Models" / DEFAULT_MODEL_NAME
    return source if source.is_dir() else here / "models" / DEFAULT_MODEL_NAME


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_model(
    model: AnoDODEModel, directory: str | os.PathLike, training: dict[str, Any] | None = None
) -> Path:
    """Write ``model.json`` and ``weights.pt`` into ``directory`` (created), each atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    weights = buffer.getvalue()
    meta = {
        "format_version": FORMAT_VERSION,
        "name": model.metadata.get("name", directory.name),
        "description": model.metadata.get("description", ""),
        "config": to_dict(model.config),
        "training": training if training is not None else model.metadata.get("training", {}),
        "weights": {"file": "weights.pt", "sha256": _sha256(weights), "bytes": len(weights)},
    }
    atomic_write.write_bytes(directory / "weights.pt", weights)
    atomic_write.write_bytes(directory / "model.json", (json.dumps(meta, indent=2) + "\n").encode())
    return directory


def _parent(meta: dict[str, Any], path: str, create: bool) -> tuple[dict[str, Any] | None, str]:
    *sections, key = path.split(".")
    node: Any = meta
    for section in sections:
        if not isinstance(node, dict):
            return None, key
        if section not in node and create:
            node[section] = {}
        node = node.get(section)
    return (node if isinstance(node, dict) else None), key


def migrate(meta: dict[str, Any]) -> dict[str, Any]:
    """A model.json dict of any known format version brought to ``FORMAT_VERSION`` through ``MIGRATIONS``
    (a new dict; ``meta`` is not changed). ``BundleError`` for an unknown version."""
    out = json.loads(json.dumps(meta))
    version = out.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise BundleError(f"format version {version!r}; this AnoDODE reads versions 1 to {FORMAT_VERSION}")
    while version < FORMAT_VERSION:
        for op, path, arg in MIGRATIONS[version]:
            parent, key = _parent(out, path, create=op == "default")
            if op == "move":
                if parent is not None and key in parent:
                    target, target_key = _parent(out, arg, create=True)
                    if target is None:
                        raise BundleError(
                            f"cannot migrate {path} to {arg}: {arg.rsplit('.', 1)[0]} is not an object"
                        )
                    target.setdefault(target_key, parent.pop(key))
            elif op == "drop":
                if parent is not None:
                    parent.pop(key, None)
            elif op == "default":
                if parent is not None:
                    parent.setdefault(key, arg)
            else:
                raise ValueError(f"unknown migration step {op!r}")
        version += 1
        out["format_version"] = version
    return out


def load_model(
    path: str | os.PathLike | None = None, map_location: str | torch.device = "cpu"
) -> AnoDODEModel:
    """Load a bundle folder (default: the bundled model). Raises ``BundleError`` with a one-line reason."""
    directory = Path(path) if path is not None else default_model_dir()
    meta_path = directory / "model.json"
    if not directory.is_dir():
        raise BundleError(f"model bundle {directory} is not a folder")
    if not meta_path.is_file():
        raise BundleError(f"model bundle {directory} has no model.json")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{meta_path} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{meta_path} must hold a JSON object (got {type(meta).__name__})")
    try:
        meta = migrate(meta)
    except BundleError as exc:
        raise BundleError(f"model bundle {directory} has {exc}") from None
    if "config" not in meta:
        raise BundleError(f"{meta_path} has no config")
    try:
        config = from_dict(ModelConfig, meta["config"], "config")
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{meta_path}: {exc}") from None
    weights_info = meta.get("weights")
    if (
        not isinstance(weights_info, dict)
        or not isinstance(weights_info.get("file"), str)
        or not isinstance(weights_info.get("sha256"), str)
    ):
        raise BundleError(f"{meta_path}: weights must be an object with a file name and its sha256")
    for key in ("name", "description"):
        if not isinstance(meta.get(key, ""), str):
            raise BundleError(f"{meta_path}: {key} must be a string")
    if not isinstance(meta.get("training", {}), dict):
        raise BundleError(f"{meta_path}: training must be an object")
    weights_path = directory / weights_info["file"]
    if not weights_path.resolve().is_relative_to(directory.resolve()):
        raise BundleError(
            f"{meta_path}: weights.file {weights_info['file']!r} lies outside the bundle folder"
        )
    if not weights_path.is_file():
        raise BundleError(f"model bundle {directory} is missing {weights_info['file']}")
    try:
        data = weights_path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{weights_path} cannot be read ({exc.strerror or exc})") from None
    if _sha256(data) != weights_info["sha256"]:
        raise BundleError(f"{weights_path} does not match the checksum in model.json (corrupt or replaced)")
    try:
        model = AnoDODEModel(config, metadata={k: meta.get(k) for k in ("name", "description", "training")})
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - any failure here is an incompatible bundle
        raise BundleError(f"{weights_path} does not fit the architecture in model.json ({exc})") from None
    model.eval()
    model.directory = directory
    model.weights_sha256 = _sha256(data)
    logger.info("loaded model %s from %s", model.name, directory)
    return model
