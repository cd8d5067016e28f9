"""Preprocessing cache: the engine's ``prepare_volume`` run once per case and stored as ``.npz``.

One file per case, ``<cache>/<case name>-<key>.npz``. The key is a SHA-256 of the preprocessing and
feature configs, the engine's preprocessing source files, the cache format, and every input file's
resolved path, size and mtime: change any of them and the entry is rebuilt under a new name (stale
files are left for ``--cache-prune``). Writes are atomic (temp file + rename), so an interrupted build
resumes: valid entries are skipped. Entries hold only tensors and arrays (no pickle):

    normalised intensity inside the brain (float32), brain and whole-tumour masks (packed bits),
    slice geometry, the model-grid brain mask, and features/context at its locations (float32).

Healthy selection (tissue/slices, margin) is applied on load, so both modes share one entry.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import re
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from AnoDODELib import atomic_write, volume_io
from AnoDODELib.config import ModelConfig, to_dict
from AnoDODELib.pipeline import PreparedVolume

from .cases import Case

logger = logging.getLogger("training.cache")

CACHE_FORMAT = 1
ENGINE_SOURCES = (
    "volume_io.py",
    "features.py",
    "pipeline.py",
    "brain_mask.py",
    "brain_extraction.py",
    "bias_field.py",
)
DEFAULT_CACHE = Path("cache") / "preprocess"


def _engine_digest() -> str:
    import AnoDODELib

    root = Path(AnoDODELib.__file__).parent
    h = hashlib.sha256()
    for name in ENGINE_SOURCES:
        h.update((root / name).read_bytes())
    return h.hexdigest()


def config_digest(cfg: ModelConfig) -> str:
    """What the preprocessing depends on, besides the case's files."""
    blob = json.dumps(
        {
            "format": CACHE_FORMAT,
            "preprocess": to_dict(cfg.preprocess),
            "features": to_dict(cfg.features),
            "engine": _engine_digest(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def case_key(case: Case, cfg_digest: str) -> str:
    files = []
    for p in case.input_files():
        st = Path(p).stat()
        files.append([str(Path(p).resolve()), st.st_size, st.st_mtime_ns])
    extra = {"resample_seg": True} if case.resample_seg else {}  # keeps older keys valid
    if case.extra:
        extra["contrasts"] = [[c, ch] for c, _, ch in case.extra]
    blob = json.dumps(
        {"cfg": cfg_digest, "name": case.name, "channel": case.channel, "files": files, **extra},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def entry_path(cache_dir: Path, case: Case, key: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", case.name)
    return Path(cache_dir) / f"{safe}-{key}.npz"


def _valid(path: Path, key: str) -> bool:
    if not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(str(z["meta"]))["key"] == key
    except Exception:  # noqa: BLE001 - any unreadable entry is rebuilt
        return False


def prepare_case(case: Case, cfg: ModelConfig) -> tuple[PreparedVolume, np.ndarray]:
    """The engine's preprocessing of the case's image(s), and its canonical whole-tumour mask.

    The case must carry exactly the model's contrasts, primary first."""
    from AnoDODELib.pipeline import prepare_volume

    from .cases import read_case_images, seg_array

    if case.contrasts != tuple(cfg.features.contrasts):
        raise ValueError(
            f"{case.name}: has contrasts {'+'.join(case.contrasts)}, the model reads "
            f"{'+'.join(cfg.features.contrasts)}"
        )
    image, others = read_case_images(case)
    mask = volume_io.read_mask(case.brain_mask, image) if case.brain_mask else None
    prepared = prepare_volume(image, cfg, mask, name=case.name, other_contrasts=others)
    tumour = prepared.geometry.to_canonical(seg_array(case, image))
    return prepared, np.ascontiguousarray(tumour)


def _arrays(prepared: PreparedVolume, tumour: np.ndarray, meta: dict) -> dict[str, np.ndarray]:
    g = prepared.geometry
    feats, ctx = prepared.locations()
    return {
        "meta": np.array(json.dumps(meta)),
        "geom_axes": np.array(g.axes, np.int64),
        "geom_flips": np.array(g.flips, bool),
        "geom_spacing": np.array(g.spacing_mm, np.float64),
        "geom_shape": np.array(g.shape, np.int64),
        "spacing_mm": np.array(prepared.spacing_mm, np.float64),
        "full_shape": np.array(prepared.brain.shape, np.int64),
        "brain_bits": np.packbits(prepared.brain.ravel()),
        "normalised_in_brain": prepared.normalised[prepared.brain].astype(np.float32),
        "tumour_bits": np.packbits(tumour.ravel()),
        "grid_shape": np.array(prepared.grid_mask.shape, np.int64),
        "grid_bits": np.packbits(prepared.grid_mask.numpy().ravel()),
        "features_loc": feats.numpy().astype(np.float32),
        "context_loc": ctx.numpy().astype(np.float32),
    }


def build_entry(case: Case, cfg: ModelConfig, path: Path, key: str) -> Path:
    prepared, tumour = prepare_case(case, cfg)
    meta = {
        "key": key,
        "format": CACHE_FORMAT,
        "case": case.name,
        "dataset": case.dataset,
        "image": str(case.flair),
        "channel": case.channel,
        "contrast": case.contrast,
        "contrasts": list(case.contrasts),
    }
    arrays = _arrays(prepared, tumour, meta)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write.write_file(path, write, create_folder=True)


def _worker(case: Case, cfg: ModelConfig, path: Path, key: str) -> tuple[str, str | None]:
    torch.set_num_threads(1)
    try:
        build_entry(case, cfg, path, key)
        return case.name, None
    except Exception as exc:  # noqa: BLE001 - reported per case, the build goes on
        return case.name, f"{type(exc).__name__}: {exc}"


@dataclasses.dataclass
class CacheReport:
    entries: dict[str, Path]  # case name -> entry, for every case now cached
    built: list[str]
    reused: list[str]
    failed: dict[str, str]  # case name -> one-line reason


def build_cache(
    cases: list[Case],
    cfg: ModelConfig,
    cache_dir: str | os.PathLike = DEFAULT_CACHE,
    workers: int = 1,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
) -> CacheReport:
    """Make sure every case has a valid entry; build missing ones (``workers`` processes). With
    ``shard=(rank, world)`` only cases rank::world are built here (the others are expected to appear
    from the other ranks); the report then lists this rank's cases."""
    cache_dir = Path(cache_dir)
    digest = config_digest(cfg)
    rank, world = shard
    mine = cases[rank::world]
    todo, report = [], CacheReport({}, [], [], {})
    for c in mine:
        key = case_key(c, digest)
        path = entry_path(cache_dir, c, key)
        if _valid(path, key):
            report.entries[c.name] = path
            report.reused.append(c.name)
        else:
            todo.append((c, path, key))
    bar = tqdm(
        total=len(todo), desc="preprocess", unit="case", disable=not progress or not todo, file=sys.stderr
    )
    if workers <= 1:
        results = (_worker(c, cfg, p, k) for c, p, k in todo)
        for name, err in results:
            _record(report, name, err, todo)
            bar.update()
    else:
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
            futs = [ex.submit(_worker, c, cfg, p, k) for c, p, k in todo]
            for fut in cf.as_completed(futs):
                _record(report, *fut.result(), todo)
                bar.update()
    bar.close()
    if report.failed:
        logger.warning(
            "%d case(s) failed preprocessing: %s",
            len(report.failed),
            "; ".join(f"{n}: {e}" for n, e in report.failed.items()),
        )
    logger.info(
        "cache %s: %d reused, %d built, %d failed",
        cache_dir,
        len(report.reused),
        len(report.built),
        len(report.failed),
    )
    return report


def _record(report: CacheReport, name: str, err: str | None, todo: list) -> None:
    if err is None:
        report.entries[name] = next(p for c, p, _ in todo if c.name == name)
        report.built.append(name)
    else:
        report.failed[name] = err


def entries_for(cases: list[Case], cfg: ModelConfig, cache_dir: str | os.PathLike) -> dict[str, Path]:
    """The valid entries of ``cases`` (missing or stale ones left out)."""
    digest = config_digest(cfg)
    out = {}
    for c in cases:
        key = case_key(c, digest)
        p = entry_path(Path(cache_dir), c, key)
        if _valid(p, key):
            out[c.name] = p
    return out


def prune(cache_dir: str | os.PathLike, keep: list[Path]) -> int:
    """Delete ``*.npz`` entries in ``cache_dir`` that are not in ``keep``; returns how many."""
    keep_set = {Path(p).resolve() for p in keep}
    n = 0
    for p in Path(cache_dir).glob("*.npz"):
        if p.resolve() not in keep_set:
            p.unlink()
            n += 1
    return n


def _unbits(bits: np.ndarray, shape) -> np.ndarray:
    shape = tuple(int(s) for s in shape)
    return np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(bool)


def load_grid(
    path: Path,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray, tuple[float, float, float], float]:
    """Light load for training vectors: grid mask, features/context at its locations, canonical tumour,
    the input's canonical (slice, row, column) spacing and the grid spacing (mm)."""
    with np.load(path, allow_pickle=False) as z:
        grid = torch.from_numpy(_unbits(z["grid_bits"], z["grid_shape"]))
        tumour = _unbits(z["tumour_bits"], z["full_shape"])
        sp = tuple(float(s) for s in z["geom_spacing"])
        return (
            grid,
            torch.from_numpy(z["features_loc"]),
            torch.from_numpy(z["context_loc"]),
            tumour,
            (sp[0], sp[1], sp[2]),
            float(z["spacing_mm"]),
        )


def load_prepared(path: Path) -> tuple[PreparedVolume, np.ndarray]:
    """The PreparedVolume and canonical tumour mask exactly as ``prepare_case`` returned them."""
    with np.load(path, allow_pickle=False) as z:
        geometry = volume_io.SliceGeometry(
            tuple(int(a) for a in z["geom_axes"]),
            tuple(bool(f) for f in z["geom_flips"]),
            tuple(float(s) for s in z["geom_spacing"]),
            tuple(int(s) for s in z["geom_shape"]),
        )
        brain = _unbits(z["brain_bits"], z["full_shape"])
        normalised = np.zeros(brain.shape, np.float32)
        normalised[brain] = z["normalised_in_brain"]
        grid = torch.from_numpy(_unbits(z["grid_bits"], z["grid_shape"]))
        f_loc, c_loc = torch.from_numpy(z["features_loc"]), torch.from_numpy(z["context_loc"])
        feats = torch.zeros(*grid.shape, f_loc.shape[1])
        ctx = torch.zeros(*grid.shape, c_loc.shape[1])
        feats[grid] = f_loc
        ctx[grid] = c_loc
        prepared = PreparedVolume(
            geometry,
            normalised,
            brain,
            feats.permute(0, 3, 1, 2).contiguous(),
            ctx.permute(0, 3, 1, 2).contiguous(),
            grid,
            float(z["spacing_mm"]),
        )
        return prepared, _unbits(z["tumour_bits"], z["full_shape"])
