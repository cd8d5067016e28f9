"""Leave-cases-out cross-validation on the BraTS-family cases in ../shared/data.

    python -m training.crossval --output runs/cv [--steps 3000] [--folds 8]

Every case is scored by a model trained without it (no case is both trained and scored). Writes
``results.json`` and ``results.csv`` (per case, per method, plus pooled rows) and prints a table with
the FLAIR z-score baseline beside every AnoDODE variant.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

import torch

from .baselines import GaussianBaseline
from .cases import brats_family_cases, parse_contrasts
from .evaluate import evaluate_loaded, localisation_variants, pooled, print_table, write_table
from .train import TrainConfig, load_case, model_config, train_loaded, training_vectors

logger = logging.getLogger("training.crossval")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=TrainConfig.steps)
    ap.add_argument("--folds", type=int, default=0, help="number of folds (0: leave one case out)")
    ap.add_argument("--healthy", choices=["tissue", "slices"], default="tissue")
    ap.add_argument("--preset", default="standard")
    ap.add_argument("--all-variants", action="store_true", help="score every localisation variant")
    ap.add_argument("--scales", type=float, nargs="+", metavar="MM",
                    help="feature scales in mm (default: the shipped model's 0 4 8)")
    ap.add_argument("--no-position-context", action="store_true",
                    help="condition on edge depth only, not on brain-relative position")
    ap.add_argument("--contrast", default="flair",
                    help="contrast(s) the models read, comma-separated, primary first (e.g. flair,t1ce); "
                         "only the cases that have all of them take part")
    ap.add_argument("--no-gaussian", action="store_true", help="leave out the feature-space Gaussian baseline")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        contrasts = parse_contrasts(args.contrast)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cases = brats_family_cases(contrasts=contrasts)
    if len(cases) < 2:
        print(f"error: cross-validation needs at least 2 cases with {'+'.join(contrasts)} in ../shared/data",
              file=sys.stderr)
        return 2
    cfg = model_config(contrasts, scales_mm=tuple(args.scales) if args.scales else None,
                       position_context=not args.no_position_context)
    tc = TrainConfig(steps=args.steps, healthy=args.healthy)
    t0 = time.perf_counter()
    loaded = [load_case(c, cfg, tc.healthy, tc.tumour_margin_mm) for c in cases]
    # the held-out case is evaluated with the tumour mask only for metrics; its healthy set is unused
    n_folds = args.folds or len(loaded)
    folds = [list(range(i, len(loaded), n_folds)) for i in range(n_folds)]
    rows, maps_per_case, bpd_per_case, order = [], [None] * len(loaded), [None] * len(loaded), []
    for k, held in enumerate(folds):
        train_set = [lc for i, lc in enumerate(loaded) if i not in held]
        model = train_loaded(train_set, cfg, tc, calibrate_model=True, progress=False)
        gaussian = None
        if not args.no_gaussian:   # the same normal vectors the model was trained on (same seed)
            feats, ctx = training_vectors(train_set, tc.max_locations_per_case,
                                          torch.Generator().manual_seed(tc.seed))
            with torch.no_grad():
                gaussian = GaussianBaseline.fit(model.standardiser(feats).numpy(), ctx.numpy())
        variants = localisation_variants(cfg.localisation) if args.all_variants else None
        for i in held:
            res, out = evaluate_loaded(model, loaded[i], variants, preset=args.preset, gaussian=gaussian)
            maps_per_case[i] = {**out["maps"], **out["baseline_maps"]}
            bpd_per_case[i] = out["slice_bpd"]
            order.append(i)
            for method, r in res.items():
                rows.append({"case": loaded[i].case.name, "dataset": loaded[i].case.dataset,
                             "expert_mask": loaded[i].case.expert, "fold": k, "method": method, **r})
            logger.info("fold %d %s: %s", k, loaded[i].case.name,
                        {m: round(r.get("best_dice", float("nan")), 3) for m, r in res.items()})
    pool = pooled([maps_per_case[i] for i in order], [loaded[i] for i in order],
                  [bpd_per_case[i] for i in order])
    for method, r in pool.items():
        rows.append({"case": "POOLED", "dataset": "all", "expert_mask": None, "fold": None, "method": method, **r})
    summary = {"protocol": f"{n_folds}-fold leave-cases-out CV, healthy={tc.healthy}, steps={tc.steps}, "
                           f"preset={args.preset}",
               "config": dataclasses.asdict(cfg), "train_config": dataclasses.asdict(tc),
               "seconds": round(time.perf_counter() - t0, 1)}
    write_table(rows, args.output, summary)
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
