"""Train an AnoDODE model on the normal tissue of BraTS-family FLAIRs and export a bundle.

    python -m training.train --output AnoDODE/Resources/Models/anodode-flair-brats

Normal data: brain locations outside a dilated tumour mask (``--healthy tissue``, all slices), or only
slices with no tumour (``--healthy slices``). The score network is trained by denoising score matching
on standardised feature vectors given their anatomical context; the label threshold is then calibrated
as a high quantile of voxel anomaly scores in the normal tissue of the training cases.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from tqdm import tqdm

from AnoDODELib import volume_io
from AnoDODELib.bundle import AnoDODEModel, save_model
from AnoDODELib.config import Calibration, ModelConfig, ScoreNetConfig, to_dict
from AnoDODELib.pipeline import PRESETS, PreparedVolume, maps_from_scores, prepare_volume, score_locations
from AnoDODELib.score_model import dsm_loss

from .cases import Case, brats_family_cases

logger = logging.getLogger("training.train")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 3000
    batch_size: int = 4096
    lr: float = 2e-3
    seed: int = 0
    healthy: str = "tissue"              # "tissue" | "slices"
    tumour_margin_mm: float = 6.0
    max_locations_per_case: int = 150_000
    calibration_cases: int = 2
    calibration_quantile: float = 0.995


@dataclass
class LoadedCase:
    case: Case
    prepared: PreparedVolume
    tumour: np.ndarray           # (S, H, W) canonical bool, full resolution
    healthy_grid: torch.Tensor   # (S, h, w) bool normal locations on the model grid
    healthy_full: np.ndarray     # (S, H, W) canonical bool normal voxels, full resolution


def read_case_tumour(case: Case, image: sitk.Image) -> np.ndarray:
    """Whole-tumour mask (seg > 0) in the image's array layout."""
    if case.seg is None:
        return np.zeros(sitk.GetArrayViewFromImage(image).shape, bool)
    seg = sitk.ReadImage(str(case.seg))
    if not volume_io.same_grid(seg, image):
        raise ValueError(f"{case.seg} is not on the grid of {case.flair}")
    return np.rint(sitk.GetArrayFromImage(seg)) > 0


def load_case(case: Case, cfg: ModelConfig, healthy: str = "tissue", margin_mm: float = 6.0) -> LoadedCase:
    image = volume_io.read_image(case.flair)
    mask = volume_io.read_mask(case.brain_mask, image) if case.brain_mask else None
    prepared = prepare_volume(image, cfg, mask, name=case.name)
    tumour = prepared.geometry.to_canonical(read_case_tumour(case, image))
    tumour_grid = prepared.to_grid(tumour.astype(np.float32), order=1) > 0.01
    r = max(1, int(math.ceil(margin_mm / prepared.spacing_mm)))
    dil = F.max_pool3d(tumour_grid.float()[None, None], (3, 2 * r + 1, 2 * r + 1), 1, (1, r, r))[0, 0] > 0
    if healthy == "tissue":
        healthy_grid = prepared.grid_mask & ~dil
    elif healthy == "slices":
        tumour_slices = torch.from_numpy(tumour.reshape(tumour.shape[0], -1).any(1))
        healthy_grid = prepared.grid_mask & ~tumour_slices[:, None, None]
    else:
        raise ValueError(f"unknown healthy selection {healthy!r}; valid: tissue, slices")
    full_dil = prepared.to_input(dil.float())  # dilated tumour back at full resolution, input layout
    healthy_full = prepared.brain & ~(prepared.geometry.to_canonical(full_dil) > 0.5) & ~tumour
    return LoadedCase(case, prepared, tumour, healthy_grid, healthy_full)


def training_vectors(loaded: list[LoadedCase], max_per_case: int, gen: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    feats, ctxs = [], []
    for lc in loaded:
        p = lc.prepared
        f = p.features.permute(0, 2, 3, 1)[lc.healthy_grid]
        c = p.context.permute(0, 2, 3, 1)[lc.healthy_grid]
        if f.shape[0] > max_per_case:
            idx = torch.randperm(f.shape[0], generator=gen)[:max_per_case]
            f, c = f[idx], c[idx]
        feats.append(f)
        ctxs.append(c)
    return torch.cat(feats), torch.cat(ctxs)


def fit(model: AnoDODEModel, feats: torch.Tensor, ctx: torch.Tensor, tc: TrainConfig,
        device: torch.device, progress: bool = True) -> list[float]:
    """Denoising score matching on standardised features; returns the loss curve (per 100 steps)."""
    gen = torch.Generator().manual_seed(tc.seed)
    model.standardiser.fit(feats)
    y = model.standardiser(feats).to(device)
    ctx = ctx.to(device)
    net = model.score_net.to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=tc.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tc.lr, total_steps=tc.steps, pct_start=0.05)
    curve, running = [], 0.0
    bar = tqdm(range(tc.steps), desc="train", disable=not progress, file=sys.stderr)
    t0 = time.perf_counter()
    for step in bar:
        idx = torch.randint(0, y.shape[0], (tc.batch_size,), generator=gen).to(device)
        loss = dsm_loss(net, model.sde, y[idx], ctx[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += float(loss.detach())
        if (step + 1) % 100 == 0:
            curve.append(running / 100)
            rate = (step + 1) * tc.batch_size / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{curve[-1]:.4f}", vectors_per_s=f"{rate:.0f}")
            running = 0.0
    net.eval()
    return curve


def calibrate(model: AnoDODEModel, loaded: list[LoadedCase], quantile: float, device: torch.device
              ) -> Calibration:
    """Threshold = the ``quantile`` of voxel anomaly scores over normal voxels of the given cases."""
    values, slice_bpd = [], []
    for lc in loaded:
        feats, ctx = lc.prepared.locations()
        scores = score_locations(model, feats, ctx, solver=PRESETS["standard"], device=device)
        amap = lc.prepared.geometry.to_canonical(maps_from_scores(lc.prepared, scores, model))
        values.append(amap[lc.healthy_full])
        grid_bpd = torch.zeros(lc.prepared.grid_mask.shape)
        grid_bpd[lc.prepared.grid_mask] = scores.bpd
        normal_slices = lc.healthy_grid.flatten(1).sum(1) == lc.prepared.grid_mask.flatten(1).sum(1)
        counts = lc.prepared.grid_mask.flatten(1).sum(1)
        ok = normal_slices & (counts > 0)
        slice_bpd += (grid_bpd.flatten(1).sum(1)[ok] / counts[ok]).tolist()
    v = np.concatenate(values)
    sb = np.asarray(slice_bpd) if slice_bpd else np.zeros(1)
    return Calibration(threshold=float(np.quantile(v, quantile)), quantile=quantile,
                       slice_score_mean_bpd=float(sb.mean()), slice_score_std_bpd=float(sb.std() + 1e-6))


def train(cases: list[Case], model_cfg: ModelConfig, tc: TrainConfig, device: str = "cpu",
          calibrate_model: bool = True, progress: bool = True) -> AnoDODEModel:
    t0 = time.perf_counter()
    loaded = [load_case(c, model_cfg, tc.healthy, tc.tumour_margin_mm) for c in cases]
    return train_loaded(loaded, model_cfg, tc, device, calibrate_model, progress, t0)


def train_loaded(loaded: list[LoadedCase], model_cfg: ModelConfig, tc: TrainConfig, device: str = "cpu",
                 calibrate_model: bool = True, progress: bool = True, t0: float | None = None) -> AnoDODEModel:
    """Train (and calibrate) on already loaded cases."""
    t0 = time.perf_counter() if t0 is None else t0
    torch.manual_seed(tc.seed)
    dev = torch.device(device)
    cases = [lc.case for lc in loaded]
    feats, ctx = training_vectors(loaded, tc.max_locations_per_case, torch.Generator().manual_seed(tc.seed))
    logger.info("training on %d normal feature vectors from %d cases", feats.shape[0], len(cases))
    model = AnoDODEModel(model_cfg, metadata={"name": "anodode-flair-brats"})
    curve = fit(model, feats, ctx, tc, dev, progress)
    model = model.cpu()
    if calibrate_model:
        cal = calibrate(model, loaded[: tc.calibration_cases], tc.calibration_quantile, torch.device("cpu"))
        model.config = dataclasses.replace(model.config, calibration=cal)
    model.metadata["training"] = {
        "cases": [{"name": c.name, "dataset": c.dataset, "flair": c.flair.name} for c in cases],
        "contrast": "FLAIR",
        "healthy_selection": tc.healthy,
        "normal_vectors": int(feats.shape[0]),
        "train_config": dataclasses.asdict(tc),
        "final_loss": curve[-1] if curve else None,
        "seconds": round(time.perf_counter() - t0, 1),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    return model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", required=True, type=Path, help="bundle folder to write")
    ap.add_argument("--exclude", nargs="*", default=[], help="case names to leave out")
    ap.add_argument("--steps", type=int, default=TrainConfig.steps)
    ap.add_argument("--healthy", choices=["tissue", "slices"], default="tissue")
    ap.add_argument("--hidden", type=int, default=ScoreNetConfig.hidden)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cases = [c for c in brats_family_cases() if c.name not in set(args.exclude)]
    if not cases:
        print("error: no training cases found (is ../shared/data there?)", file=sys.stderr)
        return 2
    base = ModelConfig()
    cfg = dataclasses.replace(base, score_net=dataclasses.replace(
        base.score_net, channels=base.features.channels, cond_channels=base.features.cond_channels,
        hidden=args.hidden))
    tc = TrainConfig(steps=args.steps, healthy=args.healthy, seed=args.seed)
    model = train(cases, cfg, tc, device=args.device)
    save_model(model, args.output)
    print(json.dumps({"output": str(args.output), "calibration": to_dict(model.config.calibration),
                      "seconds": model.metadata["training"]["seconds"]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
