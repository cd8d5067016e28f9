"""Held-out evaluation on three groups of sites and diseases, AnoDODE beside the FLAIR z-score baselines.

    python -m training.heldout --output runs/heldout [--steps 3000] [--folds 4]

Groups (all in ../shared/data; a case is never in the training set of the model that scores it):
    brats  the 8 labelled BraTS-family FLAIRs (gliomas, BraTS preprocessing, 1 mm), by leave-cases-out CV:
           fold k scores cases k, k + folds, ... with a model trained on every other training case;
    wmh    the 3 clinical 2-D FLAIRs with white-matter hyperintensities (another site, 0.47 mm x 8 mm),
           each scored by a model trained without it;
    isles  the ISLES 2022 stroke FLAIR (5 mm slices; its lesion mask, drawn on the DWI, is resampled onto the
           FLAIR by physical position), scored by a model trained on every training case;
    raw    the 2 raw clinical MS FLAIRs (skull, scalp, bias field; 6.4-6.5 mm slices), scored by the same model
           as a user runs it (``score_image`` with no mask: the brain is extracted) and with the site's own
           mask, every metric over the WHOLE volume (a label on the scalp counts); the baselines are z-scored
           inside the site's mask.
The training recipe is the shipped one (``training.train.model_config`` and ``TrainConfig``): normal tissue
of the BraTS-family cases and, with ``--train-wmh`` (the default), of the WMH cases (their lesions and a
6 mm margin excluded), so ``wmh`` is a leave-one-out over its 3 cases.

Methods, each scored over the brain voxels at the input's full resolution:
    anodode                AnoDODE's map (the model's localisation) and its slice score (``slice_scores``)
    gaussian               the same pipeline with the diffusion model replaced by the per-position Gaussian
                           fitted on the same normal vectors (one-sided, smoothed alike): the ablation
    flair_zscore           the raw FLAIR z-scored inside the brain mask
    flair_zscore_smoothed  the same, 3-D normalised Gaussian convolution inside the mask, sigma = 2 mm per axis
Metrics per case and pooled per group: voxel AUPRC, best-possible Dice, slice AUROC (a slice is positive when
it holds lesion; AnoDODE ranks slices by ``slice_scores``, every other map by its mean over the slice's most
anomalous ``slice_area_mm2`` of brain, as the report's ``slice_anomaly_scores`` rank AnoDODE's map; the earlier
protocol, each map's 99th percentile in the slice, is kept beside it), Dice at the calibrated threshold.
``--groups`` scores only some groups (and trains only the runs they need). Writes results.json and results.md
(the tables the README quotes) in ``--output``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from AnoDODELib.anomaly_map import (
    scatter_to_grid,
    slice_quantile_scores,
    smooth_on_grid,
)
from AnoDODELib.bundle import AnoDODEModel, load_model, save_model
from AnoDODELib.config import BIAS_CORRECTIONS, LocalisationConfig
from AnoDODELib.pipeline import (
    canonical_map,
    canonical_slice_scores,
    density_map,
    map_slice_scores,
    score_prepared,
    weighted_map,
)

from . import metrics, options
from .baselines import GaussianBaseline, position_columns
from .cases import (
    Case,
    brats_family_cases,
    isles_cases,
    raw_clinical_cases,
    read_case_image,
    seg_array,
    site_mask,
    wmh_clinical_cases,
)
from .evaluate import baseline_maps
from .train import (
    LoadedCase,
    TrainConfig,
    calibration_thresholds,
    load_case,
    model_config,
    normal_vectors,
    train_loaded,
)

logger = logging.getLogger("training.heldout")

GROUPS = ("brats", "wmh", "isles", "raw")
#: the raw group's methods: AnoDODE as a user runs it, AnoDODE with the site's mask, the two baselines
RAW_METHODS = ("anodode", "anodode_site_mask", "flair_zscore", "flair_zscore_smoothed")
METHODS = ("anodode", "gaussian", "flair_zscore", "flair_zscore_smoothed")
# other localisations of the same density, scored from the same per-location results (``--variants``)
VARIANTS = {
    "reconstruction_all_scales": {
        "method": "reconstruction",
        "residual_scales": "all",
        "intensity_product": False,
    },
    "reconstruction_x_intensity": {
        "method": "reconstruction",
        "residual_scales": "all",
        "intensity_product": True,
    },
    "likelihood_x_intensity": {"method": "likelihood", "intensity_product": True},
    "combined_x_intensity": {"method": "combined", "intensity_product": True},
    "reconstruction_finest": {
        "method": "reconstruction",
        "residual_scales": "finest",
        "intensity_product": False,
    },
    "combined": {"method": "combined", "intensity_product": False},
    "likelihood": {"method": "likelihood", "intensity_product": False},
    "combined_x_intensity_unscaled": {
        "method": "combined",
        "intensity_product": True,
        "brightness_quantile": None,
    },
}
COLUMNS = (
    ("voxel_auprc", "voxel AUPRC"),
    ("best_dice", "best Dice"),
    ("slice_auroc", "slice AUROC"),
    ("dice_at_threshold", "Dice @ calibrated"),
    ("slice_auroc_map", "slice AUROC, map ranking"),
    ("slice_auroc_q99", "slice AUROC, 99th percentile"),
)
#: columns that exist for AnoDODE only
ANODODE_ONLY = ("dice_at_threshold", "slice_auroc_map")


@dataclasses.dataclass
class CaseScores:
    """What one scored case contributes: brain-voxel scores per method, per-slice scores, the truths."""

    name: str
    group: str
    truth: np.ndarray  # (n,) bool lesion at the brain voxels
    voxels: dict[str, np.ndarray]  # method -> (n,) scores at the brain voxels
    slices: dict[str, np.ndarray]  # method -> (S,) per canonical slice with brain
    slices_q99: dict[str, np.ndarray]  # the same, ranked by the map's 99th percentile in the slice
    slice_truth: np.ndarray  # (S,) bool: the slice holds lesion
    thresholds: dict[str, float]  # method -> its calibrated threshold (AnoDODE maps only)


def gaussian_map(model: AnoDODEModel, lc: LoadedCase, gaussian: GaussianBaseline) -> np.ndarray:
    """The per-position Gaussian in place of the diffusion model: the Mahalanobis distance of each location's
    standardised features to its position cell's normal mean, counted where the finest channel is brighter
    than that mean (as AnoDODE counts hyperintense departures), smoothed and resampled like AnoDODE's map, and
    weighted by the smoothed intensity exactly as AnoDODE's map is (``intensity_product``)."""
    p = lc.prepared
    feats, ctx = p.locations()
    with torch.no_grad():
        y = model.standardiser(feats.float()).numpy()
    d = gaussian.score(y, ctx.numpy())
    brighter = (
        y[:, 0] > gaussian.mean[gaussian.cell_index(ctx.numpy(), gaussian.cells, gaussian.positions), 0]
    )
    per_loc = torch.from_numpy((d * brighter).astype(np.float32))
    loc = model.config.localisation
    grid = smooth_on_grid(scatter_to_grid(per_loc, p.grid_mask), p.grid_mask, loc.smooth_mm, p.spacing_mm)
    return weighted_map(p, p.to_full(grid), loc)


def score_case(
    model: AnoDODEModel,
    gaussian: GaussianBaseline,
    lc: LoadedCase,
    group: str,
    thresholds: dict[str, float],
    preset: str = "standard",
) -> CaseScores:
    """Every method's maps and slice scores on one held-out case (canonical, full resolution)."""
    p = lc.prepared
    scores, scored = score_prepared(model, p, preset)
    locs = variant_localisations(model, list(thresholds))
    maps = {k: canonical_map(p, scores, model, loc, scored) for k, loc in locs.items()}
    maps.update({"gaussian": gaussian_map(model, lc, gaussian), **baseline_maps(lc)})
    brain = p.brain
    has = brain.reshape(brain.shape[0], -1).any(1)
    truth = lc.tumour & brain
    area = model.config.localisation.slice_area_mm2

    def per_slice(values: list[float | None]) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in values])[has]

    # every map ranks slices alike: its mean over the slice's most anomalous ``area`` mm^2 (the report's
    # slice_anomaly_scores for AnoDODE's map), and, the earlier protocol, its 99th percentile in the slice
    slices = {k: per_slice(map_slice_scores(p, m, area)) for k, m in maps.items()}
    q99 = {k: per_slice(slice_quantile_scores(m, brain)) for k, m in maps.items()}
    slices["anodode_map"] = slices["anodode"]  # the map's own ranking (the report's slice_anomaly_scores)
    density = density_map(p, scores, model, scored=scored)
    slices["anodode"] = per_slice(canonical_slice_scores(p, scores, model, scored, density))  # slice_scores
    q99["anodode"] = per_slice(slice_quantile_scores(density, brain))
    return CaseScores(
        lc.case.name,
        group,
        truth[brain],
        {k: m[brain] for k, m in maps.items()},
        slices,
        q99,
        truth.reshape(truth.shape[0], -1).any(1)[has],
        thresholds,
    )


def score_raw_case(
    model: AnoDODEModel, case: Case, group: str, threshold: float, preset: str = "standard"
) -> CaseScores:
    """A raw head scan scored as a user runs it (no mask: ``score_image`` extracts the brain) and with the
    site's own mask, and the z-score baselines inside the site's mask; every voxel of the scan counts (maps
    are 0, baselines their minimum, outside their masks), slices ranked by each map's mean over the slice's
    most anomalous ``slice_area_mm2``."""
    from AnoDODELib import volume_io
    from AnoDODELib.anomaly_map import slice_top_area_scores
    from AnoDODELib.pipeline import score_image

    from .baselines import flair_zscore_map, smoothed_zscore_map

    image = read_case_image(case)
    geo = volume_io.slice_geometry(image)
    truth = geo.to_canonical(seg_array(case, image))
    site = volume_io.read_mask(site_mask(case), image)
    user = score_image(image, model, None, device="cpu", preset=preset, name=case.name)
    with_site = score_image(image, model, site, device="cpu", preset=preset, name=case.name)
    raw = geo.to_canonical(sitk.GetArrayFromImage(image).astype(np.float32))
    site_c = geo.to_canonical(site)

    def floored(m: np.ndarray) -> np.ndarray:  # -inf outside the mask -> the map's minimum (finite)
        return np.where(np.isfinite(m), m, float(m[np.isfinite(m)].min())).astype(np.float32)

    maps = {
        "anodode": user.canonical_map,
        "anodode_site_mask": with_site.canonical_map,
        "flair_zscore": floored(flair_zscore_map(raw, site_c)),
        "flair_zscore_smoothed": floored(smoothed_zscore_map(raw, site_c, geo.spacing_mm)),
    }
    everything = np.ones(truth.shape, bool)
    pixel_mm2 = float(geo.spacing_mm[1] * geo.spacing_mm[2])
    area = model.config.localisation.slice_area_mm2

    def per_slice(m: np.ndarray) -> np.ndarray:
        return np.array(
            [np.nan if v is None else v for v in slice_top_area_scores(m, everything, pixel_mm2, area)]
        )

    logger.info(
        "%s: brain %s by %s in %.1f s (%.0f mL); %d label voxels, %d of them outside the site's mask",
        case.name,
        user.brain_mask.source,
        user.brain_mask.tool,
        user.brain_mask.seconds,
        float(user.canonical_brain.sum()) * float(np.prod(geo.spacing_mm)) / 1000.0,
        int(user.canonical_label.sum()),
        int((user.canonical_label.astype(bool) & ~site_c).sum()),
    )
    return CaseScores(
        case.name,
        group,
        truth.ravel(),
        {k: m.ravel() for k, m in maps.items()},
        {k: per_slice(m) for k, m in maps.items()},
        {},
        truth.reshape(truth.shape[0], -1).any(1),
        {"anodode": threshold, "anodode_site_mask": threshold},
    )


def variant_localisations(model: AnoDODEModel, names: list[str]) -> dict[str, LocalisationConfig]:
    """``anodode`` (the model's own localisation) and the named ``VARIANTS`` of it."""
    own = model.config.localisation
    return {n: own if n == "anodode" else dataclasses.replace(own, **VARIANTS[n]) for n in names}


def case_metrics(cases: list[CaseScores]) -> dict[str, dict[str, float]]:
    """Per method: voxel AUPRC and best Dice over all the cases' brain voxels together, slice AUROC over
    all their slices together, and (AnoDODE) the Dice of its calibrated label."""
    truth = np.concatenate([c.truth for c in cases])
    s_truth = np.concatenate([c.slice_truth for c in cases])
    out: dict[str, dict[str, float]] = {}
    for m in cases[0].voxels:
        vox = metrics.pooled_metrics([c.voxels[m] for c in cases], truth)
        sl = metrics.pooled_metrics([c.slices[m] for c in cases], s_truth, "slice")
        r = {
            "voxel_auprc": vox["voxel_auprc"],
            "best_dice": vox["best_dice"],
            "slice_auroc": sl["slice_auroc"],
        }
        if m in cases[0].slices_q99:
            r["slice_auroc_q99"] = metrics.pooled_metrics([c.slices_q99[m] for c in cases], s_truth, "slice")[
                "slice_auroc"
            ]
        if m in cases[0].thresholds:
            label = np.concatenate([c.voxels[m] > c.thresholds[m] for c in cases])
            r["dice_at_threshold"] = metrics.dice(label, truth)
        if m == "anodode" and "anodode_map" in cases[0].slices:
            r["slice_auroc_map"] = metrics.pooled_metrics(
                [c.slices["anodode_map"] for c in cases], s_truth, "slice"
            )["slice_auroc"]
        out[m] = r
    return out


def train_fold(
    training: list[LoadedCase], cfg, tc: TrainConfig, variants: list[str], saved: Path | None = None
) -> tuple[AnoDODEModel, GaussianBaseline, dict[str, float]]:
    """The shipped recipe on ``training`` only: its standardiser, calibration (of the model's localisation
    and of each variant) and Gaussian see nothing else. ``saved``: a folder where this very fold's model and
    Gaussian were saved by an earlier run (``--save-models``): they are loaded instead of retrained (training
    is deterministic), and calibrated again for ``cfg``'s localisation."""
    if saved is not None:
        model = load_model(saved)
        model.config = dataclasses.replace(model.config, localisation=cfg.localisation)
        gaussian = GaussianBaseline.load(saved / "gaussian_baseline.npz")
    else:
        model = train_loaded(training, cfg, tc, calibrate_model=False, progress=False)
    calibration = training[: tc.calibration_cases or None]
    thresholds = calibration_thresholds(
        model, calibration, tc.calibration_quantile, variant_localisations(model, ["anodode", *variants])
    )
    model.config = dataclasses.replace(
        model.config,
        calibration=dataclasses.replace(
            model.config.calibration, threshold=thresholds["anodode"], quantile=tc.calibration_quantile
        ),
    )
    if saved is None:
        feats, ctx = normal_vectors(training, cfg, tc)
        with torch.no_grad():
            gaussian = GaussianBaseline.fit(
                model.standardiser(feats).numpy(), ctx.numpy(), positions=position_columns(cfg.features)
            )
    return model, gaussian, thresholds


def plan(
    brats: list[Case],
    wmh: list[Case],
    isles: list[Case],
    folds: int,
    train_wmh: bool,
    raw: list[Case] = (),
) -> list[tuple[list[str], list[tuple[str, str]]]]:
    """The training runs: (names trained on, [(group, name scored), ...]); no scored name is trained on."""
    everyone = [c.name for c in brats] + ([c.name for c in wmh] if train_wmh else [])
    runs = []
    for k in range(folds):
        held = [c.name for c in brats[k::folds]]
        runs.append(([n for n in everyone if n not in held], [("brats", n) for n in held]))
    unseen = [("isles", c.name) for c in isles] + [("raw", c.name) for c in raw]
    if train_wmh:
        for c in wmh:
            runs.append(([n for n in everyone if n != c.name], [("wmh", c.name)]))
        runs.append((everyone, unseen))
    else:
        runs.append((everyone, [("wmh", c.name) for c in wmh] + unseen))
    return runs


def _finite(obj):
    """``obj`` with NaN/inf floats as None (strict JSON)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _fmt(v: float | None) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:.3f}"


def paired(
    results: dict,
    group: str,
    metric: str,
    method: str = "anodode",
    against: str = "flair_zscore_smoothed",
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Per-case paired comparison of ``method`` with ``against`` on ``metric`` within a group: the mean
    per-case difference, its 95 % bootstrap interval over cases (``n_boot`` resamples of the cases with
    replacement, percentile method) and how many cases ``method`` wins."""
    cases = results["groups"][group]["cases"].values()
    d = np.array(
        [
            c[method][metric] - c[against][metric]
            for c in cases
            if c[method].get(metric) is not None and c[against].get(metric) is not None
        ],
        float,
    )
    d = d[np.isfinite(d)]
    if d.size == 0:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "wins": 0, "n": 0}
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(1)
    low, high = np.percentile(boots, [2.5, 97.5])
    return {
        "mean": float(d.mean()),
        "low": float(low),
        "high": float(high),
        "wins": int((d > 0).sum()),
        "n": int(d.size),
    }


def markdown(results: dict) -> str:
    """Per group: a per-case table (AnoDODE / z-score / smoothed z-score in each cell) and the pooled
    ablation rows (every method)."""
    lines = []
    for g in GROUPS:
        if g not in results["groups"]:
            continue
        grp = results["groups"][g]
        head = (
            "AnoDODE as a user runs it (brain extracted) / AnoDODE with the site's mask / FLAIR z-score / smoothed "
            "z-score (both in the site's mask), over the whole volume"
            if g == "raw"
            else "AnoDODE / FLAIR z-score / smoothed z-score (the last two columns: AnoDODE's)"
        )
        lines += [
            f"**{g}** ({len(grp['cases'])} case(s)): {head}",
            "",
            "| case | " + " | ".join(h for _, h in COLUMNS) + " |",
            "|---|" + "---|" * len(COLUMNS),
        ]
        shown = RAW_METHODS if g == "raw" else ("anodode", "flair_zscore", "flair_zscore_smoothed")
        for name, r in list(grp["cases"].items()) + [("**pooled**", grp["pooled"])]:
            cells = []
            for key, _ in COLUMNS:
                if key in ANODODE_ONLY and g != "raw":
                    cells.append(_fmt(r["anodode"].get(key)))
                else:
                    cells.append(" / ".join(_fmt(r[m].get(key)) for m in shown))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        (
            "Pooled, every method (ablation: `gaussian` is the same pipeline with the per-position Gaussian "
            "in place of the diffusion model):"
        ),
        "",
        "| group | method | " + " | ".join(h for _, h in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for g in GROUPS:
        if g in results["groups"]:
            for m in results["groups"][g]["pooled"]:
                r = results["groups"][g]["pooled"][m]
                lines.append(f"| {g} | {m} | " + " | ".join(_fmt(r.get(k)) for k, _ in COLUMNS) + " |")
    lines += [
        "",
        (
            "Paired per case, AnoDODE minus the smoothed z-score: mean difference [95 % bootstrap interval "
            "over cases] (cases AnoDODE wins / cases):"
        ),
        "",
        "| group | " + " | ".join(h for _, h in COLUMNS[:3]) + " |",
        "|---|---|---|---|",
    ]
    for g in GROUPS:
        if g in results["groups"]:
            cells = []
            for key, _ in COLUMNS[:3]:
                r = paired(results, g, key)
                cells.append(
                    f"{r['mean']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}] ({r['wins']}/{r['n']})"
                    if r["n"]
                    else "–"
                )
            lines.append(f"| {g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run(
    output: Path,
    steps: int,
    folds: int,
    train_wmh: bool,
    preset: str = "standard",
    variants: list[str] | None = None,
    slice_position: bool = True,
    features: dict | None = None,
    save_models: bool = False,
    from_models: Path | None = None,
    groups: tuple[str, ...] = GROUPS,
    bias_correction: str | None = None,
) -> dict:
    cfg = model_config()
    if bias_correction is not None:
        cfg = dataclasses.replace(
            cfg, preprocess=dataclasses.replace(cfg.preprocess, bias_correction=bias_correction)
        )
    changes = {**(features or {}), **({} if slice_position else {"slice_position": False})}
    if changes:
        feats = dataclasses.replace(cfg.features, **changes)
        cfg = dataclasses.replace(
            cfg,
            features=feats,
            score_net=dataclasses.replace(cfg.score_net, cond_channels=feats.cond_channels),
        )
    tc = dataclasses.replace(TrainConfig(), steps=steps)
    variants = list(variants or [])
    brats, wmh, isles = brats_family_cases(), wmh_clinical_cases(), isles_cases()
    raw = raw_clinical_cases()
    if len(brats) < folds or not wmh or not isles or ("raw" in groups and not raw):
        raise FileNotFoundError(
            "the groups need ../shared/data (8 BraTS-family, wmh_clinical, isles22, raw_clinical_ms)"
        )
    t0 = time.perf_counter()
    # run k keeps its number (OUTPUT/models/runK) whichever groups are scored
    runs = [
        (k, train, [(g, n) for g, n in targets if g in groups])
        for k, (train, targets) in enumerate(plan(brats, wmh, isles, folds, train_wmh, raw), start=1)
    ]
    runs = [r for r in runs if r[2]]
    cases = {c.name: c for c in brats + wmh + isles}
    needed = {n for _, train, targets in runs for n in train + [n for g, n in targets if g != "raw"]}
    loaded = {n: load_case(c, cfg, tc.healthy, tc.tumour_margin_mm) for n, c in cases.items() if n in needed}
    raw_cases = {c.name: c for c in raw}
    scored: list[CaseScores] = []
    for number, train_names, targets in runs:
        logger.info(
            "run %d: training on %d cases, scoring %s", number, len(train_names), [n for _, n in targets]
        )
        saved = from_models / f"run{number}" if from_models is not None else None
        model, gaussian, thresholds = train_fold([loaded[n] for n in train_names], cfg, tc, variants, saved)
        if save_models and saved is None:
            save_model(model, output / "models" / f"run{number}")
            gaussian.save(output / "models" / f"run{number}" / "gaussian_baseline.npz")
        scored += [
            score_raw_case(model, raw_cases[n], g, thresholds["anodode"], preset)
            if g == "raw"
            else score_case(model, gaussian, loaded[n], g, thresholds, preset)
            for g, n in targets
        ]
    results: dict = {
        "protocol": {
            "folds": folds,
            "train_wmh": train_wmh,
            "steps": steps,
            "preset": preset,
            "groups": list(groups),
            "runs": [{"run": k, "train": t, "scored": [n for _, n in s]} for k, t, s in runs],
        },
        "config": dataclasses.asdict(cfg),
        "train_config": dataclasses.asdict(tc),
        "groups": {},
    }
    for g in GROUPS:
        mine = [c for c in scored if c.group == g]
        if not mine:
            continue
        results["groups"][g] = {
            "cases": {c.name: case_metrics([c]) for c in mine},
            "pooled": case_metrics(mine),
        }
    results["seconds"] = round(time.perf_counter() - t0, 1)
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.json").write_text(
        json.dumps(_finite(results), indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )
    (output / "results.md").write_text(markdown(results), encoding="utf-8")
    return results


def main(argv: list[str] | None = None) -> int:
    ap = options.parser(__doc__)
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=TrainConfig.steps)
    ap.add_argument("--folds", type=int, default=4, help="cross-validation folds of the BraTS group")
    ap.add_argument(
        "--no-train-wmh",
        dest="train_wmh",
        action="store_false",
        help="train on the BraTS-family cases only (the WMH group is then fully held out)",
    )
    options.add_preset(ap)
    ap.add_argument(
        "--no-slice-position",
        dest="slice_position",
        action="store_false",
        help="ablation: condition on in-plane position only, not on the slice's brain-box z",
    )
    ap.add_argument(
        "--regional-mm",
        type=float,
        default=None,
        help="ablation: the regional-level context's scale in mm (0: no regional context)",
    )
    ap.add_argument(
        "--regional-clip",
        type=float,
        default=None,
        help="ablation: clip intensities at this level before the regional average",
    )
    ap.add_argument(
        "--groups",
        nargs="+",
        default=list(GROUPS),
        choices=GROUPS,
        help="score only these groups (only the training runs they need are made)",
    )
    ap.add_argument(
        "--bias-correction",
        choices=BIAS_CORRECTIONS,
        default=None,
        help="the preprocessing's bias-field correction (default: the shipped recipe's)",
    )
    ap.add_argument("--save-models", action="store_true", help="keep each run's model in OUTPUT/models/runK")
    ap.add_argument(
        "--from-models",
        type=Path,
        default=None,
        help="load each run's model from DIR/runK (saved by --save-models with the same recipe) "
        "instead of training it; only the localisation and calibration are redone",
    )
    ap.add_argument(
        "--variants",
        nargs="*",
        default=[],
        choices=sorted(VARIANTS),
        help="also score these localisations of the same density (each calibrated alike)",
    )
    ap.add_argument(
        "--tables-from",
        type=Path,
        default=None,
        metavar="RESULTS_JSON",
        help="only rewrite results.md (in --output) from an earlier run's results.json",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.tables_from is not None:
        try:
            results = json.loads(args.tables_from.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            print(f"error: cannot read {args.tables_from}: {exc}", file=sys.stderr)
            return 2
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "results.md").write_text(markdown(results), encoding="utf-8")
        print(markdown(results))
        return 0
    try:
        results = run(
            args.output,
            args.steps,
            args.folds,
            args.train_wmh,
            args.preset,
            args.variants,
            args.slice_position,
            {
                k: v
                for k, v in (("regional_scale_mm", args.regional_mm), ("regional_clip", args.regional_clip))
                if v is not None
            },
            args.save_models,
            args.from_models,
            tuple(args.groups),
            args.bias_correction,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
