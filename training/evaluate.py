"""Score a set of cases with a trained bundle and compare AnoDODE with baselines in the same harness.

    python -m training.evaluate --model DIR --output DIR [--data SRC ...] [--cases NAME ...]
    torchrun --nproc_per_node N -m training.evaluate --model DIR --output DIR --device cuda ...

Metrics per case and pooled over the brain voxels of all cases: voxel AUROC/AUPRC, best-possible Dice,
Dice at the model's calibrated threshold, and slice AUROC/AUPRC (a slice is positive when it holds
tumour; scored by each map's mean over the slice's most anomalous 1 cm² of brain, the model's slice_area_mm2,
per case and pooled over all slices). Baselines: the
FLAIR z-score, and the feature-space Gaussian (``--gaussian``, written by training into its run folder).
Writes results.json, results.csv, roc.png, pr.png, slice_roc.png and montages of the worst cases.
Under torchrun rank r scores cases r::world and rank 0 merges.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from AnoDODELib.anomaly_map import scatter_to_grid, smooth_on_grid
from AnoDODELib.bundle import AnoDODEModel
from AnoDODELib.config import LocalisationConfig
from AnoDODELib.pipeline import (
    PreparedVolume,
    canonical_map,
    canonical_slice_scores,
    map_slice_scores,
    score_prepared,
)

from . import metrics
from .baselines import GaussianBaseline, flair_zscore_map, smoothed_zscore_map
from .cases import read_case_image
from .train import LoadedCase

logger = logging.getLogger("training.evaluate")


def trained_on(model: AnoDODEModel, cases: list) -> list[str]:
    """Names of ``cases`` that the model was trained on (its model.json lists its training cases), each
    logged as a warning: their metrics are not held-out results."""
    trained = {c.get("name") for c in (model.metadata.get("training") or {}).get("cases", [])}
    seen = [c.name for c in cases if c.name in trained]
    for name in seen:
        logger.warning("%s: the model was trained on this case; its metrics are not a held-out result", name)
    return seen


def localisation_variants(base: LocalisationConfig) -> dict[str, LocalisationConfig]:
    out = {}
    for method in ("likelihood", "reconstruction", "combined"):
        for bright in (True, False):
            name = f"{method}{'+hyper' if bright else ''}"
            out[name] = dataclasses.replace(base, method=method, hyperintense_only=bright)
    return out


def gaussian_map(model: AnoDODEModel, p: PreparedVolume, gaussian: GaussianBaseline) -> np.ndarray:
    """Canonical full-resolution Mahalanobis map, smoothed and upsampled like AnoDODE's maps."""
    feats, ctx = p.locations()
    with torch.no_grad():
        y = model.standardiser(feats.float()).numpy()
    per_loc = torch.from_numpy(gaussian.score(y, ctx.numpy()).astype(np.float32))
    grid = smooth_on_grid(
        scatter_to_grid(per_loc, p.grid_mask), p.grid_mask, model.config.localisation.smooth_mm, p.spacing_mm
    )
    return p.to_full(grid)


def raw_intensity(lc: LoadedCase) -> np.ndarray:
    """The case's primary image as read from its file (no normalisation), canonical layout, float32 (a
    generated case carries it as ``lc.raw``)."""
    if lc.raw is not None:
        return lc.raw.astype(np.float32)
    return lc.prepared.geometry.to_canonical(
        sitk.GetArrayFromImage(read_case_image(lc.case)).astype(np.float32)
    )


def baseline_maps(lc: LoadedCase) -> dict[str, np.ndarray]:
    """The FLAIR z-score and smoothed z-score maps (canonical, full resolution) of a case's raw image."""
    raw, brain = raw_intensity(lc), lc.prepared.brain
    return {
        "flair_zscore": flair_zscore_map(raw, brain),
        "flair_zscore_smoothed": smoothed_zscore_map(raw, brain, lc.prepared.geometry.spacing_mm),
    }


def case_maps(
    model: AnoDODEModel,
    lc: LoadedCase,
    variants: dict[str, LocalisationConfig] | None = None,
    preset: str = "standard",
    device: str = "cpu",
) -> dict[str, Any]:
    """Canonical full-resolution maps for each variant, the baseline, and slice scores."""
    p = lc.prepared
    scores, scored = score_prepared(model, p, preset, device=device)
    variants = variants or {"anodode": model.config.localisation}
    maps = {name: canonical_map(p, scores, model, loc, scored) for name, loc in variants.items()}
    bpd_slices = canonical_slice_scores(p, scores, model, scored)
    baselines = baseline_maps(lc)
    return {"maps": maps, "baseline_maps": baselines, "slice_bpd": bpd_slices, "nfe": scores.nfe}


def voxel_metrics(
    score: np.ndarray, truth: np.ndarray, brain: np.ndarray, threshold: float | None = None
) -> dict[str, float]:
    s, t = score[brain], truth[brain]
    out = {
        "voxel_auroc": metrics.auroc(s, t),
        "voxel_auprc": metrics.auprc(s, t),
        "best_dice": metrics.best_dice(s, t)[0],
    }
    if threshold is not None:
        out["dice_at_threshold"] = metrics.dice(s > threshold, t)
    return out


def slice_metrics(slice_score: list[float | None], truth: np.ndarray, brain: np.ndarray) -> dict[str, float]:
    keep = [i for i, v in enumerate(slice_score) if v is not None and brain[i].any()]
    s = np.array([slice_score[i] for i in keep])
    y = np.array([truth[i].any() for i in keep])
    return {"slice_auroc": metrics.auroc(s, y), "slice_auprc": metrics.auprc(s, y)}


def evaluate_loaded(
    model: AnoDODEModel,
    lc: LoadedCase,
    variants: dict[str, LocalisationConfig] | None = None,
    preset: str = "standard",
    gaussian: GaussianBaseline | None = None,
    device: str = "cpu",
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Metrics for each AnoDODE variant and the baselines on one case, and the raw maps
    (``out["maps"]`` AnoDODE's, ``out["baseline_maps"]`` the baselines', the Gaussian one when given)."""
    out = case_maps(model, lc, variants, preset, device)
    brain, truth = lc.prepared.brain, lc.tumour & lc.prepared.brain
    res: dict[str, dict[str, float]] = {}
    thr = model.config.calibration.threshold
    area = model.config.localisation.slice_area_mm2
    own = [
        n
        for n, loc in (variants or {"anodode": model.config.localisation}).items()
        if loc == model.config.localisation
    ]  # the threshold was calibrated on this map only
    for name, m in out["maps"].items():
        r = voxel_metrics(m, truth, brain, thr if name in own else None)
        r.update(slice_metrics(map_slice_scores(lc.prepared, m, area), truth, brain))
        res[name] = r
    res["slice_bpd"] = slice_metrics(out["slice_bpd"], truth, brain)
    if gaussian is not None:
        out["baseline_maps"]["gaussian"] = gaussian_map(model, lc.prepared, gaussian)
    for name, m in out["baseline_maps"].items():
        res[name] = voxel_metrics(m, truth, brain)
        res[name].update(slice_metrics(map_slice_scores(lc.prepared, m, area), truth, brain))
    return res, out


def pooled(
    per_case_maps: list[dict[str, np.ndarray]],
    cases: list[LoadedCase],
    slice_bpd: list[list[float | None]] | None = None,
    area_mm2: float = LocalisationConfig.slice_area_mm2,
) -> dict[str, dict[str, float]]:
    """Voxel metrics over the brain voxels of all cases together, and slice metrics over all their
    brain slices together (a slice's score is its map's mean over the slice's most anomalous ``area_mm2``,
    ``pipeline.map_slice_scores``; ``slice_bpd``, one list per case in canonical order, the report's ``slice_scores``,
    adds the ``slice_bpd`` row), per method name."""
    names = per_case_maps[0].keys()
    res = {}
    truth = np.concatenate([(lc.tumour & lc.prepared.brain)[lc.prepared.brain] for lc in cases])
    truths = [_slice_truth(lc) for lc in cases]
    s_truth = np.concatenate([pos[has] for has, pos in truths])

    def slice_pool(per_case: list[list[float | None]]) -> dict[str, float]:
        s = [
            np.array([np.nan if v is None else v for v in sc], np.float64)[has]
            for sc, (has, _) in zip(per_case, truths)
        ]
        return metrics.pooled_metrics(s, s_truth, "slice")

    for name in names:
        s = np.concatenate([m[name][lc.prepared.brain] for m, lc in zip(per_case_maps, cases)])
        res[name] = {
            **metrics.pooled_metrics(s, truth),
            **slice_pool(
                [map_slice_scores(lc.prepared, m[name], area_mm2) for m, lc in zip(per_case_maps, cases)]
            ),
        }
    if slice_bpd is not None:
        res["slice_bpd"] = slice_pool(slice_bpd)
    return res


def print_table(rows: list[dict], file=None) -> None:
    cols = ["voxel_auprc", "best_dice", "dice_at_threshold", "slice_auroc"]
    out = file or sys.stdout
    print(f"{'case':24s} {'method':26s} " + " ".join(f"{c:>17s}" for c in cols), file=out)
    for r in rows:
        vals = " ".join(
            f"{r.get(c, float('nan')):17.3f}" if r.get(c) is not None else f"{'':17s}" for c in cols
        )
        print(f"{r['case']:24s} {r['method']:26s} {vals}", file=out)


def write_table(rows: list[dict], directory: Path, extra: dict | None = None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(
        json.dumps({**(extra or {}), "rows": rows}, indent=2, default=str), encoding="utf-8"
    )
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("case", "method"), k))
    with open(directory / "results.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def _slice_truth(lc: LoadedCase) -> tuple[np.ndarray, np.ndarray]:
    """Per canonical slice: has brain, holds tumour."""
    brain = lc.prepared.brain
    truth = lc.tumour & brain
    return brain.reshape(brain.shape[0], -1).any(1), truth.reshape(truth.shape[0], -1).any(1)


def score_cases(
    model: AnoDODEModel,
    loaded: list[LoadedCase],
    voxel_dir: Path,
    montage_dir: Path,
    variants: dict[str, LocalisationConfig] | None,
    preset: str,
    gaussian: GaussianBaseline | None,
    device: str,
    worst: int,
    progress: bool = True,
) -> list[dict]:
    """Score each case; per-case metric rows are returned, brain-voxel scores saved for pooling, and
    montages of this process's ``worst`` cases (lowest AnoDODE voxel AUPRC) kept in ``montage_dir``."""
    from tqdm import tqdm

    from AnoDODELib.figure import MAP_UNITS, canonical_figure_input, render_png

    voxel_dir.mkdir(parents=True, exist_ok=True)
    montage_dir.mkdir(parents=True, exist_ok=True)
    rows, ranked = [], []
    thr = model.config.calibration.threshold
    main_name = "anodode" if not variants else next(iter(variants))
    for lc in tqdm(loaded, desc="evaluate", unit="case", disable=not progress, file=sys.stderr):
        t0 = time.perf_counter()
        res, out = evaluate_loaded(model, lc, variants, preset, gaussian, device)
        maps = {**out["maps"], **out["baseline_maps"]}
        brain, truth = lc.prepared.brain, lc.tumour & lc.prepared.brain
        has_brain, slice_pos = _slice_truth(lc)
        slice_sc = {"slice_bpd": [v if v is not None else float("nan") for v in out["slice_bpd"]]}
        for name, m in maps.items():
            slice_sc[name] = [
                v if v is not None else float("nan")
                for v in map_slice_scores(lc.prepared, m, model.config.localisation.slice_area_mm2)
            ]
        np.savez(
            voxel_dir / f"{lc.case.name}.npz",
            truth=np.packbits(truth[brain]),
            n=np.array(int(brain.sum())),
            has_brain=has_brain,
            slice_pos=slice_pos,
            **{f"voxel__{k}": v[brain].astype(np.float32) for k, v in maps.items()},
            **{f"slice__{k}": np.asarray(v, np.float64) for k, v in slice_sc.items()},
        )
        seconds = round(time.perf_counter() - t0, 1)
        for method, r in res.items():
            rows.append(
                {
                    "case": lc.case.name,
                    "dataset": lc.case.dataset,
                    "expert_mask": lc.case.expert,
                    "method": method,
                    "tumour_voxels": int(truth.sum()),
                    "seconds": seconds,
                    **r,
                }
            )
        key = res.get(main_name, {}).get("voxel_auprc", float("nan"))
        if truth.any() and worst > 0 and not math.isnan(key):
            ranked.append((key, lc.case.name))
            ranked.sort()
            if any(n == lc.case.name for _, n in ranked[:worst]):
                m = np.where(brain, maps[main_name], 0.0)
                method = (variants[main_name] if variants else model.config.localisation).method
                png = render_png(
                    canonical_figure_input(
                        lc.prepared.geometry,
                        lc.prepared.normalised,
                        m,
                        m > thr,
                        thr,
                        slice_sc[main_name],
                        MAP_UNITS.get(method, method),
                        title=f"{lc.case.name} ({lc.case.dataset})",
                        subtitle=f"{main_name}: voxel AUPRC {key:.3f}; intensity z-scored in the brain",
                    )
                )
                (montage_dir / f"{lc.case.name}.png").write_bytes(png)
                (montage_dir / f"{lc.case.name}.json").write_text(
                    json.dumps({"voxel_auprc": key}), encoding="utf-8"
                )
            for _, n in ranked[worst:]:
                for ext in (".png", ".json"):
                    (montage_dir / f"{n}{ext}").unlink(missing_ok=True)
    return rows


def merge(
    voxel_dir: Path, names: list[str]
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]], dict[str, dict[str, Any]]]:
    """Pooled voxel and slice metrics over the saved per-case scores, and the pooled curves."""
    truth, scores, s_truth, s_scores = [], {}, [], {}
    for n in names:
        with np.load(voxel_dir / f"{n}.npz", allow_pickle=False) as z:
            truth.append(np.unpackbits(z["truth"], count=int(z["n"])).astype(bool))
            keep = z["has_brain"]
            s_truth.append(z["slice_pos"][keep])
            for k in z.files:
                if k.startswith("voxel__"):
                    scores.setdefault(k[7:], []).append(z[k])
                elif k.startswith("slice__"):
                    s_scores.setdefault(k[7:], []).append(z[k][keep])
    t = np.concatenate(truth) if truth else np.zeros(0, bool)
    st = np.concatenate(s_truth) if s_truth else np.zeros(0, bool)
    pooled_vox, pooled_slice, curves = {}, {}, {}
    for k, v in scores.items():
        s = np.concatenate(v)
        pooled_vox[k] = metrics.pooled_metrics(s, t)
        curves[k] = {
            "roc": metrics.thin_curve(*metrics.roc_curve(s, t)),
            "pr": metrics.thin_curve(*metrics.pr_curve(s, t)),
        }
    for k, v in s_scores.items():
        s = np.concatenate(v)
        ok = np.isfinite(s)
        pooled_slice[k] = metrics.pooled_metrics(s, st, "slice")
        curves.setdefault(k, {})["slice_roc"] = metrics.thin_curve(*metrics.roc_curve(s[ok], st[ok]))
    return pooled_vox, pooled_slice, curves


def plot_curves(
    curves: dict[str, dict[str, Any]], pooled_vox: dict, pooled_slice: dict, directory: Path
) -> list[Path]:
    """roc.png, pr.png (pooled voxels) and slice_roc.png; skipped with a warning without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn(
            "matplotlib is not installed (pip install 'anodode[train]'): no plots written", stacklevel=2
        )
        return []
    written = []
    specs = [
        (
            "roc",
            "roc.png",
            "false positive rate",
            "true positive rate",
            "voxel ROC (pooled)",
            "voxel_auroc",
            pooled_vox,
        ),
        ("pr", "pr.png", "recall", "precision", "voxel precision-recall (pooled)", "voxel_auprc", pooled_vox),
        (
            "slice_roc",
            "slice_roc.png",
            "false positive rate",
            "true positive rate",
            "slice ROC (pooled)",
            "slice_auroc",
            pooled_slice,
        ),
    ]
    for key, fname, xl, yl, title, metric, table in specs:
        fig, ax = plt.subplots(figsize=(5.5, 5))
        for name, c in curves.items():
            if key not in c:
                continue
            x, y = c[key]
            val = table.get(name, {}).get(metric, float("nan"))
            ax.plot(x, y, lw=1.5, label=f"{name} ({metric.split('_')[1].upper()} {val:.3f})")
        if key != "pr":
            ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(xlabel=xl, ylabel=yl, title=title, xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(fontsize=7, loc="lower right" if key != "pr" else "upper right")
        fig.tight_layout()
        fig.savefig(directory / fname, dpi=120)
        plt.close(fig)
        written.append(directory / fname)
    return written


def main(argv: list[str] | None = None) -> int:
    from AnoDODELib.bundle import BundleError, load_model

    from . import options
    from .train import barrier, gather_cases, init_distributed, load_cases

    ap = options.parser(__doc__)
    ap.add_argument("--model", required=True, type=Path, help="bundle folder")
    ap.add_argument("--output", required=True, type=Path, help="folder for results and plots")
    options.add_data(ap, ["brats-family"])
    options.add_contrast(ap, model_given=True)
    ap.add_argument(
        "--gaussian",
        type=Path,
        default=None,
        help="gaussian_baseline.npz from the training run folder (adds the Gaussian baseline)",
    )
    options.add_preset(ap)
    ap.add_argument("--all-variants", action="store_true", help="score every localisation variant")
    options.add_cache(ap)
    options.add_device(ap)
    ap.add_argument("--worst", type=int, default=3, help="montages of this many worst cases")
    ap.add_argument("--keep-voxels", action="store_true", help="keep the per-case voxel scores (voxels/)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rank, world, dev = init_distributed(args.device)
    try:
        model = load_model(args.model)
        contrasts = tuple(model.config.features.contrasts)
        if args.contrast is not None and args.contrast != contrasts:
            raise ValueError(f"the model reads {','.join(contrasts)}, not {','.join(args.contrast)}")
        cases = gather_cases(args.data, contrasts, args.cases, args.exclude, args.resample_seg)
        gaussian = GaussianBaseline.load(args.gaussian) if args.gaussian else None
    except (BundleError, ValueError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not cases:
        print("error: no cases to evaluate", file=sys.stderr)
        return 2
    if rank == 0:
        trained_on(model, cases)
    t0 = time.perf_counter()
    mine = cases[rank::world]
    try:
        if args.cache is not None:  # each rank caches its own cases
            loaded = load_cases(
                mine, model.config, cache_dir=args.cache, workers=args.workers, progress=rank == 0
            )
        else:
            loaded = load_cases(mine, model.config)
    except (ValueError, OSError) as exc:  # volume_io.InputError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    variants = localisation_variants(model.config.localisation) if args.all_variants else None
    out = args.output
    shard_dir = out / "shards"
    rows = score_cases(
        model,
        loaded,
        out / "voxels",
        shard_dir / f"montages{rank}",
        variants,
        args.preset,
        gaussian,
        str(dev),
        args.worst,
        progress=rank == 0,
    )
    (shard_dir / f"rank{rank}.json").write_text(json.dumps(rows, default=str), encoding="utf-8")
    barrier()
    if rank == 0:
        rows = []
        for r in range(world):
            rows += json.loads((shard_dir / f"rank{r}.json").read_text(encoding="utf-8"))
        scored = list(dict.fromkeys(r["case"] for r in rows))
        pooled_vox, pooled_slice, curves = merge(out / "voxels", scored)
        for method in pooled_vox.keys() | pooled_slice.keys():
            rows.append(
                {
                    "case": "POOLED",
                    "dataset": "all",
                    "expert_mask": None,
                    "method": method,
                    **pooled_vox.get(method, {}),
                    **pooled_slice.get(method, {}),
                }
            )
        # the worst cases over all ranks get their montages
        cands = []
        for jf in shard_dir.glob("montages*/*.json"):
            cands.append((json.loads(jf.read_text(encoding="utf-8"))["voxel_auprc"], jf))
        (out / "montages").mkdir(parents=True, exist_ok=True)
        for k, (_, jf) in enumerate(sorted(cands)[: args.worst]):
            shutil.copyfile(jf.with_suffix(".png"), out / "montages" / f"worst{k + 1}_{jf.stem}.png")
        plots = plot_curves(curves, pooled_vox, pooled_slice, out)
        write_table(
            rows,
            out,
            {
                "model": str(args.model),
                "model_name": model.name,
                "calibration": dataclasses.asdict(model.config.calibration),
                "preset": args.preset,
                "world_size": world,
                "cases": scored,
                "seconds": round(time.perf_counter() - t0, 1),
                "plots": [p.name for p in plots],
            },
        )
        shutil.rmtree(shard_dir, ignore_errors=True)
        if not args.keep_voxels:
            shutil.rmtree(out / "voxels", ignore_errors=True)
        print_table(rows)
    barrier()
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
