"""Recalibrate a bundle's label threshold without retraining it.

    python -m training.calibrate --model AnoDODE/Resources/Models/anodode-flair-brats [--data SRC ...]

The threshold is what ``training.train`` computes after fitting (``train.calibrate``): the stored quantile of
voxel anomaly scores over the normal tissue of the model's calibration cases (its first
``calibration_cases`` training cases, by name from ``model.json``), as the ``standard`` preset scores them.
Run it when the scoring preset changes; the weights are not touched (``weights.pt`` and its checksum stay),
and ``model.json`` is rewritten atomically with the new calibration.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path

from AnoDODELib.bundle import BundleError, load_model, save_model
from AnoDODELib.config import to_dict
from AnoDODELib.pipeline import resolve_device

from . import options
from .train import DEFAULT_SOURCES, calibrate, gather_cases, load_case, train_config_from_dict

logger = logging.getLogger("training.calibrate")


def main(argv: list[str] | None = None) -> int:
    ap = options.parser(__doc__)
    ap.add_argument("--model", required=True, type=Path, help="bundle folder (rewritten in place)")
    options.add_data(ap, DEFAULT_SOURCES, selection=False)
    options.add_device(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        model = load_model(args.model)
        training = model.metadata.get("training") or {}
        tc = train_config_from_dict(training.get("train_config", {}))
        names = [c["name"] for c in training.get("cases", [])][: tc.calibration_cases or None]
        if not names:
            raise ValueError(f"{args.model}/model.json lists no training cases to calibrate on")
        cases = gather_cases(args.data, tuple(model.config.features.contrasts), names, [])
        loaded = [load_case(c, model.config, tc.healthy, tc.tumour_margin_mm) for c in cases]
    except (BundleError, ValueError, TypeError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    before = model.config.calibration
    cal = calibrate(model, loaded, tc.calibration_quantile, resolve_device(args.device))
    model.config = dataclasses.replace(model.config, calibration=cal)
    save_model(model, args.model)
    print(
        json.dumps(
            {"model": str(args.model), "cases": names, "before": to_dict(before), "after": to_dict(cal)},
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
