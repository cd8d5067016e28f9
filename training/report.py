"""Markdown results table from an evaluation or cross-validation ``results.json``.

    python -m training.report runs/cv/results.json [--methods reconstruction+hyper flair_zscore ...]

One row per case and method (pooled rows last), with voxel AUPRC, best-possible Dice, Dice at the
calibrated threshold, voxel AUROC and slice AUROC/AUPRC; the FLAIR z-score baseline is always included.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

COLUMNS = [("voxel_auprc", "voxel AUPRC"), ("best_dice", "best Dice"), ("dice_at_threshold", "Dice @ calibrated"),
           ("voxel_auroc", "voxel AUROC"), ("slice_auroc", "slice AUROC"), ("slice_auprc", "slice AUPRC")]
BASELINE = "flair_zscore"


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
    lines = ["| case | data | method | " + " | ".join(h for _, h in COLUMNS) + " |",
             "|---|---|---|" + "---|" * len(COLUMNS)]
    for case in cases:
        for m in methods:
            r = get.get((case, m))
            if r is None:
                continue
            name = f"**{m}**" if m == BASELINE else m
            data = r.get("dataset") or ""
            lines.append(f"| {case} | {data} | {name} | " + " | ".join(_fmt(r.get(k)) for k, _ in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path)
    ap.add_argument("--methods", nargs="+", help="methods to show, in order (default: all)")
    args = ap.parse_args(argv)
    try:
        rows = json.loads(args.results.read_text())["rows"]
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: cannot read results from {args.results}: {exc}", file=sys.stderr)
        return 1
    print(markdown_table(rows, args.methods))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
