"""Leave-cases-out cross-validation on the BraTS-family cases in ../shared/data.

    python -m training.crossval --output runs/cv [--steps 3000] [--folds 8]

Every case is scored by a model trained without it (no case is both trained and scored). Writes
``results.json`` and ``results.csv`` (per case, per method, plus pooled rows) and prints a table with
the FLAIR z-score baseline beside every AnoDODE variant.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from AnoDODELib.bundle import AnoDODEModel
from AnoDODELib.config import LocalisationConfig, ModelConfig

from . import options
from .baselines import GaussianBaseline, position_columns
from .cases import brats_family_cases
from .evaluate import evaluate_loaded, localisation_variants, pooled, print_table, write_table
from .train import LoadedCase, TrainConfig, load_case, model_config, normal_vectors, train_loaded

logger = logging.getLogger("training.crossval")


@dataclass
class Fold:
    """One fold: the held-out cases (indices into the loaded cases) and what was fitted without them."""

    index: int
    held: list[int]
    trained: list[str]  # names of the cases the model, standardiser and calibration saw
    model: AnoDODEModel
    gaussian: GaussianBaseline | None  # fitted on the same normal vectors as the model


def fold_indices(n_cases: int, n_folds: int = 0) -> list[list[int]]:
    """Held-out case indices per fold: case i is held out in fold i mod n_folds (0 folds: leave one out)."""
    n_folds = n_folds or n_cases
    if not 2 <= n_folds <= n_cases:
        raise ValueError(f"cross-validation needs 2 to {n_cases} folds, got {n_folds}")
    return [list(range(i, n_cases, n_folds)) for i in range(n_folds)]


def cross_validate(
    loaded: list[LoadedCase],
    cfg: ModelConfig,
    tc: TrainConfig,
    n_folds: int = 0,
    preset: str = "standard",
    variants: dict[str, LocalisationConfig] | None = None,
    gaussian: bool = True,
    progress: bool = False,
) -> tuple[list[dict], list[Fold]]:
    """Per-case metric rows of every held-out case (then pooled rows over all of them), and the folds.

    In each fold the model (its standardiser, score network and calibration) and the Gaussian baseline
    are fitted on the other cases only; the held-out cases are scored, their tumour masks used for the
    metrics alone."""
    rows, folds = [], []
    maps_per_case: list = [None] * len(loaded)
    bpd_per_case: list = [None] * len(loaded)
    order = []
    for k, held in enumerate(fold_indices(len(loaded), n_folds)):
        train_set = [lc for i, lc in enumerate(loaded) if i not in held]
        model = train_loaded(train_set, cfg, tc, calibrate_model=True, progress=progress)
        baseline = None
        if gaussian:  # the same normal vectors the model was trained on (same seed)
            feats, ctx = normal_vectors(train_set, cfg, tc)
            with torch.no_grad():
                baseline = GaussianBaseline.fit(
                    model.standardiser(feats).numpy(), ctx.numpy(), positions=position_columns(cfg.features)
                )
        folds.append(Fold(k, held, [lc.case.name for lc in train_set], model, baseline))
        for i in held:
            res, out = evaluate_loaded(model, loaded[i], variants, preset=preset, gaussian=baseline)
            maps_per_case[i] = {**out["maps"], **out["baseline_maps"]}
            bpd_per_case[i] = out["slice_bpd"]
            order.append(i)
            for method, r in res.items():
                rows.append(
                    {
                        "case": loaded[i].case.name,
                        "dataset": loaded[i].case.dataset,
                        "expert_mask": loaded[i].case.expert,
                        "fold": k,
                        "method": method,
                        **r,
                    }
                )
            logger.info(
                "fold %d %s: %s",
                k,
                loaded[i].case.name,
                {m: round(r.get("best_dice", float("nan")), 3) for m, r in res.items()},
            )
    pool = pooled(
        [maps_per_case[i] for i in order], [loaded[i] for i in order], [bpd_per_case[i] for i in order]
    )
    for method, r in pool.items():
        rows.append(
            {"case": "POOLED", "dataset": "all", "expert_mask": None, "fold": None, "method": method, **r}
        )
    return rows, folds


def main(argv: list[str] | None = None) -> int:
    ap = options.parser(__doc__)
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=TrainConfig.steps)
    ap.add_argument("--folds", type=int, default=0, help="number of folds (0: leave one case out)")
    ap.add_argument("--healthy", choices=["tissue", "slices"], default="tissue")
    options.add_preset(ap)
    ap.add_argument("--all-variants", action="store_true", help="score every localisation variant")
    ap.add_argument(
        "--scales",
        type=float,
        nargs="+",
        metavar="MM",
        help="feature scales in mm (default: the shipped model's 0 4 8)",
    )
    ap.add_argument(
        "--no-position-context",
        action="store_true",
        help="condition on edge depth only, not on brain-relative position",
    )
    options.add_contrast(ap)
    ap.add_argument(
        "--no-gaussian", action="store_true", help="leave out the feature-space Gaussian baseline"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    contrasts = args.contrast
    cases = brats_family_cases(contrasts=contrasts)
    if len(cases) < 2:
        print(
            f"error: cross-validation needs at least 2 cases with {'+'.join(contrasts)} in ../shared/data",
            file=sys.stderr,
        )
        return 2
    try:
        fold_indices(len(cases), args.folds)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cfg = model_config(
        contrasts,
        scales_mm=tuple(args.scales) if args.scales else None,
        position_context=not args.no_position_context,
    )
    tc = TrainConfig(steps=args.steps, healthy=args.healthy)
    t0 = time.perf_counter()
    loaded = [load_case(c, cfg, tc.healthy, tc.tumour_margin_mm) for c in cases]
    variants = localisation_variants(cfg.localisation) if args.all_variants else None
    rows, folds = cross_validate(
        loaded, cfg, tc, args.folds, args.preset, variants, gaussian=not args.no_gaussian
    )
    n_folds = len(folds)
    summary = {
        "protocol": f"{n_folds}-fold leave-cases-out CV, healthy={tc.healthy}, steps={tc.steps}, "
        f"preset={args.preset}",
        "config": dataclasses.asdict(cfg),
        "train_config": dataclasses.asdict(tc),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_table(rows, args.output, summary)
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
