"""Markdown results tables from an evaluation or cross-validation ``results.json``.

    python -m training.report runs/cv/results.json [--methods reconstruction+hyper flair_zscore ...]
    python -m training.report runs/cv/results.json --summary [--against flair_zscore_smoothed] [--resamples N]

Default: one row per case and method (pooled rows last), with voxel AUPRC, best-possible Dice, Dice at the
calibrated threshold, voxel AUROC and slice AUROC/AUPRC; the FLAIR z-score baseline is always included.

``--summary``: per method and metric, the mean over the cases with a 95 % bootstrap confidence interval
(cases resampled with replacement), then each method paired with the ``--against`` baseline (default: the
smoothed FLAIR z-score) case by case: the mean difference d = mean_i (m_i - b_i) with its bootstrap
interval, the counts of cases above / below it, and the two-sided p-value of the paired sign-flip
(randomisation) test, exact over all 2^n sign patterns for n <= 16 cases. With 8 cases the intervals are
wide: they say how much the ranking could move with other cases, not more.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np

from . import options

COLUMNS = [
    ("voxel_auprc", "voxel AUPRC"),
    ("best_dice", "best Dice"),
    ("dice_at_threshold", "Dice @ calibrated"),
    ("voxel_auroc", "voxel AUROC"),
    ("slice_auroc", "slice AUROC"),
    ("slice_auprc", "slice AUPRC"),
]
BASELINE = "flair_zscore"
PAIRED_BASELINE = "flair_zscore_smoothed"
SUMMARY_METRICS = [("voxel_auprc", "voxel AUPRC"), ("best_dice", "best Dice"), ("slice_auroc", "slice AUROC")]


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.3f}"


def markdown_table(rows: list[dict], methods: list[str] | None = None) -> str:
    """Rows grouped by case (in first-seen order, POOLED last), methods in the given order."""
    present = list(dict.fromkeys(r["method"] for r in rows))
    methods = [m for m in (methods or present) if m in present]
    if BASELINE in present and BASELINE not in methods:
        methods.append(BASELINE)
    cases = list(dict.fromkeys(r["case"] for r in rows if r["case"] != "POOLED"))
    cases += ["POOLED"] if any(r["case"] == "POOLED" for r in rows) else []
    get = {(r["case"], r["method"]): r for r in rows}
    lines = [
        "| case | data | method | " + " | ".join(h for _, h in COLUMNS) + " |",
        "|---|---|---|" + "---|" * len(COLUMNS),
    ]
    for case in cases:
        for m in methods:
            r = get.get((case, m))
            if r is None:
                continue
            name = f"**{m}**" if m == BASELINE else m
            data = r.get("dataset") or ""
            lines.append(
                f"| {case} | {data} | {name} | " + " | ".join(_fmt(r.get(k)) for k, _ in COLUMNS) + " |"
            )
    return "\n".join(lines)


def bootstrap_mean_ci(
    values, resamples: int = 10_000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``values`` and its percentile bootstrap interval: the (1 - level)/2 and (1 + level)/2
    quantiles of the means of ``resamples`` samples of the values drawn with replacement (seeded)."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(v.mean()), float(lo), float(hi)


def sign_flip_p(differences, max_exact: int = 16, resamples: int = 100_000, seed: int = 0) -> float:
    """Two-sided p-value of the paired randomisation test of mean(d) = 0: the fraction of sign patterns
    s in {-1, 1}^n with |mean(s * d)| >= |mean(d)| (all 2^n for n <= ``max_exact``, else ``resamples``
    random ones, the observed pattern counted once)."""
    d = np.asarray(differences, np.float64)
    if d.size == 0:
        return math.nan
    observed = abs(d.mean()) - 1e-12
    if d.size <= max_exact:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
        return float(np.mean(np.abs(signs @ d) / d.size >= observed))
    rng = np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(resamples, d.size))
    return float((np.sum(np.abs(signs @ d) / d.size >= observed) + 1) / (resamples + 1))


def per_case(rows: list[dict], method: str, metric: str) -> dict[str, float]:
    """{case: value} of one method and metric over the per-case rows (pooled rows and missing values left out)."""
    out = {}
    for r in rows:
        v = r.get(metric)
        if (
            r["case"] != "POOLED"
            and r["method"] == method
            and v is not None
            and not (isinstance(v, float) and math.isnan(v))
        ):
            out[r["case"]] = float(v)
    return out


def summary_tables(
    rows: list[dict],
    methods: list[str] | None = None,
    against: str = PAIRED_BASELINE,
    resamples: int = 10_000,
) -> str:
    """Markdown: means over cases with 95 % bootstrap intervals, then paired differences to ``against``."""
    present = list(dict.fromkeys(r["method"] for r in rows if r["case"] != "POOLED"))
    methods = [m for m in (methods or present) if m in present]
    for extra in (BASELINE, against):
        if extra in present and extra not in methods:
            methods.append(extra)
    n_cases = len({r["case"] for r in rows if r["case"] != "POOLED"})
    lines = [
        f"Mean over the {n_cases} cases [95 % bootstrap interval, {resamples} resamples of the cases]:",
        "",
        "| method | " + " | ".join(h for _, h in SUMMARY_METRICS) + " |",
        "|---|" + "---|" * len(SUMMARY_METRICS),
    ]
    for m in methods:
        cells = []
        for key, _ in SUMMARY_METRICS:
            vals = list(per_case(rows, m, key).values())
            mean, lo, hi = bootstrap_mean_ci(vals, resamples)
            cells.append("–" if not vals else f"{mean:.3f} [{lo:.3f}, {hi:.3f}]")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if against not in present:
        return "\n".join(lines)
    lines += [
        "",
        (
            f"Paired with `{against}` case by case: mean difference [95 % bootstrap interval]; cases "
            "above / below; two-sided sign-flip p:"
        ),
        "",
        "| method | " + " | ".join(h for _, h in SUMMARY_METRICS) + " |",
        "|---|" + "---|" * len(SUMMARY_METRICS),
    ]
    for m in methods:
        if m == against:
            continue
        cells = []
        for key, _ in SUMMARY_METRICS:
            a, b = per_case(rows, m, key), per_case(rows, against, key)
            common = [c for c in a if c in b]
            if not common:
                cells.append("–")
                continue
            d = np.array([a[c] - b[c] for c in common])
            mean, lo, hi = bootstrap_mean_ci(d, resamples)
            cells.append(
                f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]; {int((d > 0).sum())}/{int((d < 0).sum())}; "
                f"p = {sign_flip_p(d):.3f}"
            )
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = options.parser(__doc__)
    ap.add_argument("results", type=Path)
    ap.add_argument("--methods", nargs="+", help="methods to show, in order (default: all)")
    ap.add_argument(
        "--summary",
        action="store_true",
        help="means with bootstrap intervals and paired differences instead of the per-case table",
    )
    ap.add_argument("--against", default=PAIRED_BASELINE, help="the baseline of the paired comparison")
    ap.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples")
    args = ap.parse_args(argv)
    try:
        rows = json.loads(args.results.read_text(encoding="utf-8"))["rows"]
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: cannot read results from {args.results}: {exc}", file=sys.stderr)
        return 1
    if args.summary:
        print(summary_tables(rows, args.methods, args.against, args.resamples))
    else:
        print(markdown_table(rows, args.methods))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
