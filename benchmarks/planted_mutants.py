"""Plant known bugs one at a time and check that the test suite catches each (issue 16's 20 mutants, 28 bugs
of the likelihood/combined localisations, the weighted map, the slice scores and the bpd, and issue 26's ten
bugs a fault probe planted that the suite let through, with the likelihood's change-of-variables sign).

    python benchmarks/planted_mutants.py [--only NAME ...] [--full | --tests FILE ...] [--list]

Each mutant is one textual replacement in one file of a copy of the repository's tracked files (the
working tree is never touched). The copy's engine is put first on PYTHONPATH, so the installed
(editable) package does not shadow it, and the mutant's tests run there; a mutant is KILLED when they
fail. By default only the test files named with each mutant run (about 2-4 min for all 20 on 2 cores);
``--full`` runs the whole suite per mutant instead. Exit status 1 when a mutant survives or no longer
applies (its text is gone: update the list). Complements the mutmut run (benchmarks/README.md), whose
generated mutants are not known bugs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIB = "AnoDODE/AnoDODELib"
T = "Testing/Python"
LOC, DENSITY, SMOOTH = (
    f"{T}/test_location_scores.py",
    f"{T}/test_density_map.py",
    f"{T}/test_masked_smoothing.py",
)


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # file, relative to the repository root
    old: str  # text that must occur exactly once
    new: str
    tests: tuple[str, ...]  # test files (or node ids) that must catch it


MUTANTS = [
    # ---- the anomaly map
    Mutant(
        "residual sign flipped (the map flags dark tissue)",
        f"{LIB}/pipeline.py",
        "(y - rec).float().cpu()",
        "(rec - y).float().cpu()",
        (f"{T}/test_map_behaviour.py",),
    ),
    Mutant(
        "map smoothing removed",
        f"{LIB}/anomaly_map.py",
        "    if sigma_mm <= 0:\n        return grid\n",
        "    return grid\n",
        (f"{T}/test_map_behaviour.py",),
    ),
    Mutant(
        "skipped slices left at 0",
        f"{LIB}/pipeline.py",
        "prepared.to_full(interpolate_slices(grid, keep) * prepared.grid_mask)",
        "prepared.to_full(grid * keep[:, None, None] * prepared.grid_mask)",
        (f"{T}/test_map_behaviour.py",),
    ),
    Mutant(
        "map mirrored left-right on its way back",
        f"{LIB}/pipeline.py",
        "        return self.geometry.from_canonical(self.canonical_map)",
        "        return self.geometry.from_canonical(np.ascontiguousarray(self.canonical_map[:, :, ::-1]))",
        (f"{T}/test_map_behaviour.py",),
    ),
    Mutant(
        "demo exits 0 when the lesion is missed",
        f"{LIB}/cli.py",
        "    if not found.ok:\n",
        "    if False:\n",
        (f"{T}/test_map_behaviour.py",),
    ),
    Mutant(
        "hyperintense gate removed (dark residuals count too)",
        f"{LIB}/anomaly_map.py",
        "r = torch.where(one_sided.to(residual.device), residual.clamp_min(0.0), residual)",
        "r = residual",
        (f"{T}/test_map_behaviour.py",),
    ),
    Mutant(
        "map smoothing sigma taken in pixels, not mm",
        f"{LIB}/anomaly_map.py",
        "gaussian_blur(grid.unsqueeze(1).float(), sigma_mm / spacing_mm)",
        "gaussian_blur(grid.unsqueeze(1).float(), sigma_mm)",
        (f"{T}/test_map_behaviour.py",),
    ),
    # ---- the likelihood and combined localisations, the shipped (weighted) map and the slice scores
    #      (the survivors of the cosmic-ray run in benchmarks/README.md, "Mutation testing")
    Mutant(
        "likelihood and combined branches swapped",
        f"{LIB}/anomaly_map.py",
        'return score * (bright > 0) if cfg.method == "likelihood" else score * bright',
        'return score * bright if cfg.method == "likelihood" else score * (bright > 0)',
        (LOC,),
    ),
    Mutant(
        "likelihood gate counts r_0 = 0 as brighter",
        f"{LIB}/anomaly_map.py",
        "score * (bright > 0) if",
        "score * (bright >= 0) if",
        (LOC,),
    ),
    Mutant(
        "combined: the residual norm instead of the bright gate",
        f"{LIB}/anomaly_map.py",
        "else score * bright\n",
        "else score * r.norm(dim=1)\n",
        (LOC, DENSITY),
    ),
    Mutant(
        "negative bpd not clamped at 0",
        f"{LIB}/anomaly_map.py",
        "score = bpd.clamp_min(0.0)",
        "score = bpd",
        (LOC, DENSITY),
    ),
    Mutant(
        "bright gate on the last hyperintense channel (coarsest scale)",
        f"{LIB}/anomaly_map.py",
        "int(torch.nonzero(one_sided)[0])",
        "int(torch.nonzero(one_sided)[-1])",
        (LOC,),
    ),
    Mutant(
        "hyperintense_only ignored",
        f"{LIB}/anomaly_map.py",
        "    if not cfg.hyperintense_only:\n        one_sided = torch.zeros_like(one_sided)\n",
        "",
        (LOC,),
    ),
    Mutant(
        "finest channels: the coarsest scale of each contrast",
        f"{LIB}/anomaly_map.py",
        "[k % n == 0 for k in range(features.channels)]",
        "[k % n == n - 1 for k in range(features.channels)]",
        (LOC,),
    ),
    Mutant(
        "weighted map: sqrt of the density dropped",
        f"{LIB}/pipeline.py",
        "product = np.sqrt(np.maximum(density, 0.0)) * (np.maximum(bright, 0.0) / np.float32(scale))",
        "product = np.maximum(density, 0.0) * (np.maximum(bright, 0.0) / np.float32(scale))",
        (DENSITY,),
    ),
    Mutant(
        "weighted map: max(I, 0) dropped (dark tissue scores negative)",
        f"{LIB}/pipeline.py",
        "product = np.sqrt(np.maximum(density, 0.0)) * (np.maximum(bright, 0.0) / np.float32(scale))",
        "product = np.sqrt(np.maximum(density, 0.0)) * (bright / np.float32(scale))",
        (DENSITY,),
    ),
    Mutant(
        "weighted map: the scan's brightness unit ignored",
        f"{LIB}/pipeline.py",
        "(np.maximum(bright, 0.0) / np.float32(scale))",
        "np.maximum(bright, 0.0)",
        (DENSITY,),
    ),
    Mutant(
        "weighted map: the brightness unit's quantile fixed at 0.75",
        f"{LIB}/pipeline.py",
        "scale = brightness_scale(bright, prepared.brain, localisation.brightness_quantile)",
        "scale = brightness_scale(bright, prepared.brain, 0.75)",
        (DENSITY,),
    ),
    Mutant(
        "weighted map: intensity smoothed with sigma in voxels",
        f"{LIB}/pipeline.py",
        "prepared.brain, g.spacing_mm, localisation.smooth_mm)",
        "prepared.brain, (1.0, 1.0, 1.0), localisation.smooth_mm)",
        (DENSITY,),
    ),
    Mutant(
        "density map: the model's localisation over the one asked for",
        f"{LIB}/pipeline.py",
        "    loc = localisation or model.config.localisation\n    keep = _all_slices",
        "    loc = model.config.localisation\n    keep = _all_slices",
        (DENSITY,),
    ),
    Mutant(
        "smooth_in_mask: sigma in voxels, not mm",
        f"{LIB}/anomaly_map.py",
        "sigma = [sigma_mm / float(s) for s in spacing_mm]",
        "sigma = [sigma_mm for s in spacing_mm]",
        (SMOOTH,),
    ),
    Mutant(
        "smooth_in_mask: spacing axes reversed",
        f"{LIB}/anomaly_map.py",
        "sigma = [sigma_mm / float(s) for s in spacing_mm]",
        "sigma = [sigma_mm / float(s) for s in spacing_mm[::-1]]",
        (SMOOTH,),
    ),
    Mutant(
        "smooth_in_mask: values outside the mask leak in",
        f"{LIB}/anomaly_map.py",
        "np.where(m, values[box], 0.0).astype(np.float32)",
        "values[box].astype(np.float32)",
        (SMOOTH,),
    ),
    Mutant(
        "smooth_in_mask: not normalised (edges darkened)",
        f"{LIB}/anomaly_map.py",
        "np.where(m, num / np.maximum(den, 1e-12), 0.0)",
        "np.where(m, num, 0.0)",
        (SMOOTH,),
    ),
    Mutant(
        "smooth_in_mask: bounding box one voxel short",
        f"{LIB}/anomaly_map.py",
        "int(i.max()) + 1)",
        "int(i.max()))",
        (SMOOTH,),
    ),
    Mutant(
        "slice score: top area one voxel short",
        f"{LIB}/anomaly_map.py",
        "np.partition(v, v.size - kk)[v.size - kk :]",
        "np.partition(v, v.size - kk)[v.size - kk + 1 :]",
        (DENSITY,),
    ),
    Mutant(
        "slice score: slice_area_mm2 ignored (100 mm^2 always)",
        f"{LIB}/pipeline.py",
        "return map_slice_scores(prepared, density, model.config.localisation.slice_area_mm2)",
        "return map_slice_scores(prepared, density, 100.0)",
        (DENSITY,),
    ),
    Mutant(
        "slice score: pixel area from the slice and row spacings",
        f"{LIB}/pipeline.py",
        "_, dy, dx = prepared.geometry.spacing_mm",
        "dy, dx, _ = prepared.geometry.spacing_mm",
        (DENSITY,),
    ),
    Mutant(
        "slice score of the weighted map, not the density",
        f"{LIB}/pipeline.py",
        "        density = density_map(prepared, scores, model, scored=scored)\n    return map_slice_scores",
        "        density = weighted_map(prepared, density_map(prepared, scores, model, scored=scored),\n"
        "                               model.config.localisation)\n    return map_slice_scores",
        (DENSITY,),
    ),
    Mutant(
        "slice scores not reversed for a flipped axial axis",
        f"{LIB}/pipeline.py",
        "return canonical[::-1] if geometry.flips[0] else list(canonical)",
        "return list(canonical)",
        (DENSITY,),
    ),
    Mutant(
        "slice scores reversed by the wrong axis's flip",
        f"{LIB}/pipeline.py",
        "return canonical[::-1] if geometry.flips[0] else list(canonical)",
        "return canonical[::-1] if geometry.flips[2] else list(canonical)",
        (DENSITY,),
    ),
    Mutant(
        "bpd in nats per dimension, not bits",
        f"{LIB}/likelihood.py",
        "nll / (d * math.log(2.0))",
        "nll / d",
        (f"{T}/test_likelihood.py",),
    ),
    Mutant(
        "bpd divided by the row count of a sample, not its dimension count",
        f"{LIB}/likelihood.py",
        "n, d = x.shape[0], x[0].numel()",
        "n, d = x.shape[0], x.shape[1]",
        (f"{T}/test_likelihood.py",),
    ),
    Mutant(
        "Hutchinson probes summed, not averaged",
        f"{LIB}/likelihood.py",
        "(div / n_probes).detach()",
        "div.detach()",
        (f"{T}/test_likelihood.py",),
    ),
    Mutant(
        "fused likelihood: bpd in nats",
        f"{LIB}/fast_ode.py",
        "return nll / (c * math.log(2.0)), nfe",
        "return nll / c, nfe",
        (f"{T}/test_presets.py",),
    ),
    # ---- calibration and training data
    Mutant(
        "calibration: the median instead of the stated quantile",
        "training/train.py",
        "float(np.quantile(np.concatenate(v), quantile))",
        "float(np.quantile(np.concatenate(v), 0.5))",
        (f"{T}/test_calibration.py",),
    ),
    Mutant(
        "calibration: tumour voxels in the calibration set",
        "training/train.py",
        "scored)[lc.healthy_full])",
        "scored)[lc.prepared.brain])",
        (f"{T}/test_calibration.py",),
    ),
    Mutant(
        "calibration on every training case, not the calibration cases",
        "training/train.py",
        "        loaded[: tc.calibration_cases or None],\n        model_cfg,",
        "        loaded,\n        model_cfg,",
        (f"{T}/test_calibration.py",),
    ),
    Mutant(
        "normal voxels (calibration) keep the tumour",
        "training/train.py",
        "healthy_full = prepared.brain & ~(full_dil > 0.5) & ~tumour",
        "healthy_full = prepared.brain",
        (f"{T}/test_calibration.py",),
    ),
    Mutant(
        "training data: tumour voxels counted as normal tissue",
        "training/train.py",
        "        return grid_mask & ~dil\n",
        "        return grid_mask\n",
        (f"{T}/test_calibration.py",),
    ),
    Mutant(
        "training data: the margin is one slice through-plane whatever the slice thickness",
        "training/train.py",
        "rz = max(1, math.ceil(margin_mm / spacing_in[0] - 1e-6))",
        "rz = 1",
        (f"{T}/test_calibration.py",),
    ),
    Mutant(
        "training data from the cache: tumour counted as normal",
        "training/train.py",
        "sel = _healthy_grid(grid, tumour, dil, healthy)[grid]",
        "sel = grid[grid]",
        (f"{T}/test_training_data.py",),
    ),
    # ---- evaluation
    Mutant(
        "cross-validation trains and calibrates on the held-out cases",
        "training/crossval.py",
        "model = train_loaded(train_set, cfg, tc,",
        "model = train_loaded(loaded, cfg, tc,",
        (f"{T}/test_crossval.py",),
    ),
    Mutant(
        "cross-validation: Gaussian baseline fitted on the held-out cases",
        "training/crossval.py",
        "feats, ctx = normal_vectors(train_set, cfg, tc)",
        "feats, ctx = normal_vectors(loaded, cfg, tc)",
        (f"{T}/test_crossval.py",),
    ),
    Mutant(
        "z-score baseline sign flipped",
        "training/baselines.py",
        "np.where(brain, zscore(raw, brain), -np.inf)",
        "np.where(brain, -zscore(raw, brain), -np.inf)",
        (f"{T}/test_crossval.py",),
    ),
    Mutant(
        "per-case metrics over all voxels instead of the brain",
        "training/evaluate.py",
        "s, t = score[brain], truth[brain]",
        "s, t = score.ravel(), truth.ravel()",
        (f"{T}/test_crossval.py",),
    ),
    Mutant(
        "pooled baseline scores zeroed (cross-validation)",
        "training/evaluate.py",
        "s = np.concatenate([m[name][lc.prepared.brain] for m, lc in zip(per_case_maps, cases)])",
        "s = np.concatenate([m[name][lc.prepared.brain] * (0 if 'zscore' in name else 1) "
        "for m, lc in zip(per_case_maps, cases)])",
        (f"{T}/test_crossval.py",),
    ),
    Mutant(
        "pooled baseline scores zeroed (evaluate)",
        "training/evaluate.py",
        "scores.setdefault(k[7:], []).append(z[k])",
        "scores.setdefault(k[7:], []).append(z[k] * 0 if 'zscore' in k else z[k])",
        (f"{T}/test_crossval.py",),
    ),
    # ---- issue 26: ten bugs a fault probe planted that the whole suite let through, and the likelihood's sign
    Mutant(
        "automatic mask: holes filled along array axis 0, not the axial axis",
        f"{LIB}/volume_io.py",
        "moved = np.moveaxis(mask, slice_axis, 0)",
        "moved = mask",
        (f"{T}/test_volume_io.py",),
    ),
    Mutant(
        "label: map >= threshold instead of >",
        f"{LIB}/pipeline.py",
        "((anomaly > thr) & prepared.brain)",
        "((anomaly >= thr) & prepared.brain)",
        (
            f"{T}/test_bad_inputs.py::test_a_negative_threshold_is_a_usage_error_and_the_label_stays_in_the_brain",
        ),
    ),
    Mutant(
        "summary.json: pending rows counted as failed",
        f"{LIB}/summary.py",
        '"failed": sum(s not in (OK, PENDING) for s in statuses)',
        '"failed": sum(s != OK for s in statuses)',
        (f"{T}/test_summary.py",),
    ),
    Mutant(
        "worker: the cancel exception an ordinary Exception (SIGTERM while loading = bundle error)",
        f"{LIB}/worker.py",
        "class Cancelled(BaseException):",
        "class Cancelled(Exception):",
        (f"{T}/test_worker.py::test_sigterm_while_the_model_loads_is_a_cancel_not_a_bundle_error",),
    ),
    Mutant(
        "figure: R and L letters swapped",
        f"{LIB}/figure.py",
        '((0.02, "R", "left"), (0.98, "L", "right"))',
        '((0.02, "L", "left"), (0.98, "R", "right"))',
        (f"{T}/test_figure.py",),
    ),
    Mutant(
        "best Dice: the threshold read from the ascending list",
        "training/metrics.py",
        "thresholds = np.sort(np.unique(s))[::-1]",
        "thresholds = np.sort(np.unique(s))",
        (f"{T}/test_metrics.py",),
    ),
    Mutant(
        "preprocessing cache key ignores the feature configuration (stale features reused)",
        "training/cache.py",
        '"features": to_dict(cfg.features),',
        "",
        (f"{T}/test_training_data.py::test_cache_reuse_and_invalidation",),
    ),
    Mutant(
        "--mask read as > 0 (a soft mask's fringe becomes brain)",
        f"{LIB}/volume_io.py",
        "out = array > 0.5",
        "out = array > 0",
        (f"{T}/test_volume_io.py",),
    ),
    Mutant(
        "held-out Gaussian ablation: 'brighter' against 0, not its position cell's mean",
        "training/heldout.py",
        "y[:, 0] > gaussian.mean[gaussian.cell_index(ctx.numpy(), gaussian.cells, gaussian.positions), 0]",
        "y[:, 0] > 0",
        (f"{T}/test_heldout.py",),
    ),
    Mutant(
        "worker progress may go backwards",
        f"{LIB}/worker.py",
        "fraction = max(self.last, min(1.0, float(fraction)))",
        "fraction = min(1.0, float(fraction))",
        (f"{T}/test_worker.py::test_progress_never_goes_backwards",),
    ),
    Mutant(
        "likelihood: the divergence integral's sign flipped",
        f"{LIB}/likelihood.py",
        "nll = -(sde.prior_logp(z) + int_div)",
        "nll = -(sde.prior_logp(z) - int_div)",
        (f"{T}/test_likelihood.py",),
    ),
    Mutant(
        "summary: the rows of other runs into the folder dropped",
        f"{LIB}/summary.py",
        "merged = merge_rows(read_rows(paths[1]), rows)",
        "merged = list(rows)",
        (f"{T}/test_cli.py::test_runs_into_one_folder_keep_each_others_rows",),
    ),
]


def copy_tree(dest: Path) -> None:
    files = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for f in filter(None, files):
        src = REPO / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)


def run_mutant(m: Mutant, full: bool, python: str, tests: list[str] | None = None) -> tuple[str, float, str]:
    with tempfile.TemporaryDirectory(prefix="anodode-mutant-") as tmp:
        root = Path(tmp)
        copy_tree(root)
        target = root / m.path
        text = target.read_text(encoding="utf-8")
        if text.count(m.old) != 1:
            return "NOT APPLIED", 0.0, f"{m.path}: the text occurs {text.count(m.old)} times"
        target.write_text(text.replace(m.old, m.new), encoding="utf-8")
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(root / "AnoDODE"), str(root)]),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        }
        cmd = [
            python,
            "-m",
            "pytest",
            "-x",
            "-q",
            "-p",
            "no:cacheprovider",
            *([] if full else tests or m.tests),
        ]
        t0 = time.perf_counter()
        proc = subprocess.run(
            cmd,
            check=False,
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        seconds = time.perf_counter() - t0
        tail = (proc.stdout.strip().splitlines() or [""])[-1]
        if proc.returncode == 0:
            return "SURVIVED", seconds, tail
        if proc.returncode in (1,):
            return "killed", seconds, tail
        return "ERROR", seconds, (proc.stdout + proc.stderr)[-400:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", default=None, help="mutants whose name contains one of these words")
    ap.add_argument("--full", action="store_true", help="run the whole suite for each mutant")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument(
        "--tests",
        nargs="+",
        default=None,
        help="run these test files for every mutant instead of its own (e.g. an older suite's)",
    )
    args = ap.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or any(w in m.name for w in args.only)]
    if args.list:
        for m in chosen:
            print(f"{m.name}  ({m.path}; {', '.join(m.tests)})")
        return 0
    bad = 0
    for k, m in enumerate(chosen, 1):
        status, seconds, detail = run_mutant(m, args.full, sys.executable, args.tests)
        bad += status != "killed"
        print(f"[{k:2d}/{len(chosen)}] {status:11s} {seconds:6.1f} s  {m.name}  -- {detail}", flush=True)
    print(f"{len(chosen) - bad}/{len(chosen)} planted mutants killed")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
