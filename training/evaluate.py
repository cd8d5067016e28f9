"""Score held-out cases and compare AnoDODE with the FLAIR z-score baseline.

Metrics per case and pooled over the brain voxels of all cases: voxel AUROC/AUPRC, best-possible Dice,
Dice at the model's calibrated threshold, and slice AUROC (a slice is positive when it holds tumour).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from AnoDODELib.bundle import AnoDODEModel
from AnoDODELib.config import LocalisationConfig
from AnoDODELib.pipeline import PRESETS, maps_from_scores, score_locations, slice_scores

from . import metrics
from .baselines import flair_zscore_map, slice_quantile_scores
from .train import LoadedCase


def localisation_variants(base: LocalisationConfig) -> dict[str, LocalisationConfig]:
    out = {}
    for method in ("likelihood", "reconstruction", "combined"):
        for bright in (True, False):
            name = f"{method}{'+hyper' if bright else ''}"
            out[name] = dataclasses.replace(base, method=method, hyperintense_only=bright)
    return out


def case_maps(model: AnoDODEModel, lc: LoadedCase, variants: dict[str, LocalisationConfig] | None = None,
              preset: str = "standard", device: str = "cpu") -> dict[str, Any]:
    """Canonical full-resolution maps for each variant, the baseline, and slice scores."""
    p = lc.prepared
    feats, ctx = p.locations()
    scores = score_locations(model, feats, ctx, solver=PRESETS[preset], device=device)
    variants = variants or {"anodode": model.config.localisation}
    maps = {name: p.geometry.to_canonical(maps_from_scores(p, scores, model, loc)) for name, loc in variants.items()}
    bpd_slices = slice_scores(p, scores.bpd)
    if p.geometry.flips[0]:
        bpd_slices = bpd_slices[::-1]   # back to canonical slice order
    return {"maps": maps, "baseline": flair_zscore_map(p.normalised, p.brain), "slice_bpd": bpd_slices,
            "nfe": scores.nfe}


def voxel_metrics(score: np.ndarray, truth: np.ndarray, brain: np.ndarray, threshold: float | None = None
                  ) -> dict[str, float]:
    s, t = score[brain], truth[brain]
    out = {"voxel_auroc": metrics.auroc(s, t), "voxel_auprc": metrics.auprc(s, t),
           "best_dice": metrics.best_dice(s, t)[0]}
    if threshold is not None:
        out["dice_at_threshold"] = metrics.dice(s > threshold, t)
    return out


def slice_metrics(slice_score: list[float | None], truth: np.ndarray, brain: np.ndarray) -> dict[str, float]:
    keep = [i for i, v in enumerate(slice_score) if v is not None and brain[i].any()]
    s = np.array([slice_score[i] for i in keep])
    y = np.array([truth[i].any() for i in keep])
    return {"slice_auroc": metrics.auroc(s, y), "slice_auprc": metrics.auprc(s, y)}


def evaluate_loaded(model: AnoDODEModel, lc: LoadedCase, variants: dict[str, LocalisationConfig] | None = None,
                    preset: str = "standard") -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Metrics for each AnoDODE variant and the FLAIR baseline on one case, and the raw maps."""
    out = case_maps(model, lc, variants, preset)
    brain, truth = lc.prepared.brain, lc.tumour & lc.prepared.brain
    res: dict[str, dict[str, float]] = {}
    thr = model.config.calibration.threshold
    for name, m in out["maps"].items():
        r = voxel_metrics(m, truth, brain, thr if name in ("anodode", model.config.localisation.method) else None)
        r.update(slice_metrics(slice_quantile_scores(m, brain), truth, brain))
        res[name] = r
    res["slice_bpd"] = slice_metrics(out["slice_bpd"], truth, brain)
    b = voxel_metrics(out["baseline"], truth, brain)
    b.update(slice_metrics(slice_quantile_scores(out["baseline"], brain), truth, brain))
    res["flair_zscore"] = b
    return res, out


def pooled(per_case_maps: list[dict[str, np.ndarray]], cases: list[LoadedCase]) -> dict[str, dict[str, float]]:
    """Voxel metrics over the brain voxels of all cases together, per method name."""
    names = per_case_maps[0].keys()
    res = {}
    truth = np.concatenate([(lc.tumour & lc.prepared.brain)[lc.prepared.brain] for lc in cases])
    for name in names:
        s = np.concatenate([m[name][lc.prepared.brain] for m, lc in zip(per_case_maps, cases)])
        res[name] = {"voxel_auroc": metrics.auroc(s, truth), "voxel_auprc": metrics.auprc(s, truth),
                     "best_dice": metrics.best_dice(s, truth)[0]}
    return res


