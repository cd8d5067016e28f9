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
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from tqdm import tqdm

from AnoDODELib import atomic_write, volume_io
from AnoDODELib.bundle import AnoDODEModel, save_model
from AnoDODELib.config import Calibration, LocalisationConfig, ModelConfig, ScoreNetConfig, to_dict
from AnoDODELib.pipeline import PreparedVolume, canonical_map, resolve_device, score_prepared

from . import cache, options
from .augment import AugmentConfig, augmented_copy
from .baselines import GaussianBaseline, position_columns
from .cache import prepare_case
from .cases import Case, brats_family_cases, find_cases, parse_contrasts, seg_array, select  # noqa: F401

logger = logging.getLogger("training.train")


MIN_STEPS = 10
DEFAULT_SOURCES = ("brats-family", "wmh-clinical")  # the shipped model's training cases


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch_size: int = 4096
    lr: float = 2e-3
    seed: int = 0
    healthy: str = "tissue"  # "tissue" | "slices"
    tumour_margin_mm: float = 6.0
    max_locations_per_case: int = 150_000
    calibration_cases: int = 0  # the first N training cases calibrate the threshold; 0: all
    calibration_quantile: float = 0.995
    amp: bool = True  # bf16 autocast when training on CUDA (no effect on CPU)
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(copies=2))  # training/augment.py


def train_config_from_dict(data: dict) -> TrainConfig:
    """A ``TrainConfig`` from its ``dataclasses.asdict`` form (as model.json stores it; lists -> tuples)."""
    data = dict(data)
    aug = data.pop("augment", None)
    kwargs = {k: v for k, v in data.items()}
    if aug is not None:
        kwargs["augment"] = AugmentConfig(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in aug.items()}
        )
    return TrainConfig(**kwargs)


@dataclass
class LoadedCase:
    case: Case
    prepared: PreparedVolume
    tumour: np.ndarray  # (S, H, W) canonical bool, full resolution
    healthy_grid: torch.Tensor  # (S, h, w) bool normal locations on the model grid
    healthy_full: np.ndarray  # (S, H, W) canonical bool normal voxels, full resolution
    raw: np.ndarray | None = None  # (S, H, W) canonical raw intensity (None: read from case.flair)


@dataclass
class RunOptions:
    """How a training run is driven (none of it changes the weights)."""

    run_dir: Path | None = None  # checkpoint.pt lives here
    checkpoint_every: int = 0  # steps between checkpoints (0: none)
    resume: bool = False  # continue from run_dir/checkpoint.pt when it exists
    stop_after: int | None = None  # stop (after checkpointing) at this step: simulates an interruption


def read_case_tumour(case: Case, image: sitk.Image) -> np.ndarray:
    """Whole-tumour mask (seg > 0) in the image's array layout."""
    return seg_array(case, image)


def _tumour_dilation(
    grid_mask: torch.Tensor,
    tumour: np.ndarray,
    spacing_in: tuple[float, float, float],
    spacing_mm: float,
    margin_mm: float,
) -> torch.Tensor:
    """(S, h, w) bool: model-grid locations within ``margin_mm`` of the tumour along each axis (a box: +-r
    grid pixels in-plane, r = ceil(margin / grid spacing), and +-ceil(margin / slice spacing) slices, at
    least 1), a grid location counting as tumour when any of it is. ``spacing_in``: the canonical
    (slice, row, column) spacing of ``tumour`` in mm."""
    tumour_grid = (
        torch.from_numpy(
            np.ascontiguousarray(
                volume_io.resample_slices(tumour.astype(np.float32), spacing_in[1:], spacing_mm, order=1)
            )
        )
        > 0.01
    )
    r = max(1, math.ceil(margin_mm / spacing_mm))
    rz = max(1, math.ceil(margin_mm / spacing_in[0] - 1e-6))
    return (
        F.max_pool3d(tumour_grid.float()[None, None], (2 * rz + 1, 2 * r + 1, 2 * r + 1), 1, (rz, r, r))[0, 0]
        > 0
    )


def _healthy_grid(
    grid_mask: torch.Tensor, tumour: np.ndarray, dil: torch.Tensor, healthy: str
) -> torch.Tensor:
    if healthy == "tissue":
        return grid_mask & ~dil
    if healthy == "slices":
        tumour_slices = torch.from_numpy(tumour.reshape(tumour.shape[0], -1).any(1))
        return grid_mask & ~tumour_slices[:, None, None]
    raise ValueError(f"unknown healthy selection {healthy!r}; valid: tissue, slices")


def select_healthy(
    case: Case, prepared: PreparedVolume, tumour: np.ndarray, healthy: str = "tissue", margin_mm: float = 6.0
) -> LoadedCase:
    """Normal locations: outside the tumour dilated by ``margin_mm`` ("tissue") or tumour-free slices."""
    dil = _tumour_dilation(
        prepared.grid_mask, tumour, prepared.geometry.spacing_mm, prepared.spacing_mm, margin_mm
    )
    healthy_grid = _healthy_grid(prepared.grid_mask, tumour, dil, healthy)
    full_dil = prepared.to_full(dil.float())  # dilated tumour back at full resolution
    healthy_full = prepared.brain & ~(full_dil > 0.5) & ~tumour
    return LoadedCase(case, prepared, tumour, healthy_grid, healthy_full)


def load_case(case: Case, cfg: ModelConfig, healthy: str = "tissue", margin_mm: float = 6.0) -> LoadedCase:
    prepared, tumour = prepare_case(case, cfg)
    return select_healthy(case, prepared, tumour, healthy, margin_mm)


def load_cached(case: Case, entry: Path, healthy: str = "tissue", margin_mm: float = 6.0) -> LoadedCase:
    """``load_case`` from a preprocessing-cache entry (identical arrays)."""
    prepared, tumour = cache.load_prepared(entry)
    return select_healthy(case, prepared, tumour, healthy, margin_mm)


def load_cases(
    cases: list[Case],
    cfg: ModelConfig,
    healthy: str = "tissue",
    margin_mm: float = 6.0,
    cache_dir: Path | None = None,
    workers: int = 1,
    progress: bool = True,
) -> list[LoadedCase]:
    """Every case loaded: through the cache when ``cache_dir`` is given (cases failing preprocessing are
    dropped with a warning there), else directly."""
    if cache_dir is None:
        return [load_case(c, cfg, healthy, margin_mm) for c in cases]
    rep = cache.build_cache(cases, cfg, cache_dir, workers, progress)
    return [load_cached(c, rep.entries[c.name], healthy, margin_mm) for c in cases if c.name in rep.entries]


def augmented_cases(
    loaded: list[LoadedCase], cfg: ModelConfig, tc: TrainConfig, rng: np.random.Generator | None = None
) -> list[LoadedCase]:
    """``tc.augment.copies`` augmented copies of each loaded case (training/augment.py), featurised by the
    engine like any scan; the copies' normal tissue follows their own (carried-along) lesion masks. ``rng``
    (default: seeded with ``tc.seed``) is drawn from case by case, in order."""
    from AnoDODELib.pipeline import prepare_volume

    out: list[LoadedCase] = []
    if len(cfg.features.contrasts) > 1 and tc.augment.copies:
        logger.warning(
            "augmentation is implemented for single-contrast models; training %s without it",
            "+".join(cfg.features.contrasts),
        )
        return out
    rng = np.random.default_rng(tc.seed) if rng is None else rng
    for lc in loaded:
        p = lc.prepared
        for k in range(tc.augment.copies):
            image, brain, lesion = augmented_copy(
                p.normalised, p.brain, lc.tumour, p.geometry.spacing_mm, tc.augment, rng
            )
            prepared = prepare_volume(image, cfg, brain, name=f"{lc.case.name} (augmented {k + 1})")
            out.append(select_healthy(lc.case, prepared, lesion, tc.healthy, tc.tumour_margin_mm))
    return out


def normal_vectors(
    loaded: list[LoadedCase], cfg: ModelConfig, tc: TrainConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """The normal feature and context vectors a model is trained on: those of the loaded cases and of their
    ``tc.augment.copies`` augmented copies, at most ``tc.max_locations_per_case`` per (copy of a) case,
    drawn with the seed ``tc.seed`` (so the Gaussian baseline can be fitted on the very same vectors)."""
    extra = augmented_cases(loaded, cfg, tc) if tc.augment.copies else []
    return training_vectors(loaded + extra, tc.max_locations_per_case, torch.Generator().manual_seed(tc.seed))


def training_vectors(
    loaded: list[LoadedCase], max_per_case: int, gen: torch.Generator
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


def training_vectors_cached(
    entries: list[Path], healthy: str, margin_mm: float, max_per_case: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``training_vectors`` straight from cache entries, one case in memory at a time (same vectors)."""
    feats, ctxs = [], []
    for e in entries:
        grid, f_loc, c_loc, tumour, spacing_in, spacing_mm = cache.load_grid(e)
        dil = _tumour_dilation(grid, tumour, spacing_in, spacing_mm, margin_mm)
        sel = _healthy_grid(grid, tumour, dil, healthy)[grid]  # healthy among the grid's locations
        f, c = f_loc[sel], c_loc[sel]
        if f.shape[0] > max_per_case:
            idx = torch.randperm(f.shape[0], generator=gen)[:max_per_case]
            f, c = f[idx], c[idx]
        feats.append(f)
        ctxs.append(c)
    return torch.cat(feats), torch.cat(ctxs)


def dist_info() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def one_cycle(opt: torch.optim.Optimizer, tc: TrainConfig) -> torch.optim.lr_scheduler.OneCycleLR:
    """The learning-rate schedule: one cycle up to ``tc.lr`` and down over ``tc.steps`` steps, warming up over
    5 % of them (at least 2 steps, so that short runs keep a non-empty warm-up phase)."""
    return torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=tc.lr, total_steps=tc.steps, pct_start=max(0.05, 2.0 / tc.steps)
    )


def fit(
    model: AnoDODEModel,
    feats: torch.Tensor,
    ctx: torch.Tensor,
    tc: TrainConfig,
    device: torch.device,
    progress: bool = True,
    run: RunOptions | None = None,
) -> list[float]:
    """Denoising score matching on standardised features; returns the loss curve (per 100 steps).

    Each step draws ``batch_size`` indices, diffusion times and noises for the whole global batch from
    the seeded generators; under DistributedDataParallel rank r trains on entries r::world of it, so N
    processes give the single-process result (the gradient all-reduce averages equal shards). With
    ``run.checkpoint_every`` rank 0 saves model, optimizer, scheduler, step and RNG states; ``run.resume``
    continues from them bit for bit.
    """
    run = run or RunOptions()
    rank, world = dist_info()
    if tc.steps < MIN_STEPS:
        raise ValueError(f"training needs at least {MIN_STEPS} steps, got {tc.steps}")
    if tc.batch_size % world:
        raise ValueError(f"batch size {tc.batch_size} is not divisible by the world size {world}")
    gen = torch.Generator().manual_seed(tc.seed)
    model.standardiser.fit(feats)
    y = model.standardiser(feats).to(device)
    ctx = ctx.to(device)
    net = model.score_net.to(device).train()
    train_net: torch.nn.Module = net
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_net = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.Adam(net.parameters(), lr=tc.lr)
    sched = one_cycle(opt, tc)
    use_amp = tc.amp and device.type == "cuda"
    curve, running, start = [], 0.0, 0
    ckpt_path = run.run_dir / "checkpoint.pt" if run.run_dir is not None else None
    if run.resume and ckpt_path is not None and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if ck["train_config"] != dataclasses.asdict(tc):
            raise ValueError(
                f"{ckpt_path} was written with a different training config; "
                "start a new run (no --resume) or restore the config"
            )
        net.load_state_dict(ck["net"])
        model.standardiser.load_state_dict(ck["standardiser"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        gen.set_state(ck["gen"])
        torch.set_rng_state(ck["rng_cpu"])
        if device.type == "cuda" and ck.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(ck["rng_cuda"], device)
        start, curve, running = int(ck["step"]), list(ck["curve"]), float(ck["running"])
        logger.info("resumed from %s at step %d", ckpt_path, start)

    def save_checkpoint(step: int) -> None:
        if rank != 0 or ckpt_path is None:
            return
        state = {
            "step": step,
            "net": net.state_dict(),
            "standardiser": model.standardiser.state_dict(),
            "opt": opt.state_dict(),
            "sched": sched.state_dict(),
            "gen": gen.get_state(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "curve": curve,
            "running": running,
            "train_config": dataclasses.asdict(tc),
        }
        atomic_write.write_file(ckpt_path, lambda tmp: torch.save(state, tmp), create_folder=True)

    sde, t_eps = model.sde, 1e-3
    bar = tqdm(
        range(start, tc.steps),
        desc="train",
        disable=not progress or rank != 0,
        file=sys.stderr,
        initial=start,
        total=tc.steps,
    )
    t0 = time.perf_counter()
    for step in bar:
        idx = torch.randint(0, y.shape[0], (tc.batch_size,), generator=gen).to(device)
        # the engine's dsm_loss, with t and noise drawn for the global batch and then sharded
        t = t_eps + (1.0 - t_eps) * torch.rand(tc.batch_size, dtype=y.dtype).to(device)
        eps = torch.randn((tc.batch_size, y.shape[1]), dtype=y.dtype).to(device)
        if world > 1:
            idx, t, eps = idx[rank::world], t[rank::world], eps[rank::world]
        x0, cond = y[idx], ctx[idx]
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            mean, std = sde.marginal_prob(x0, t)
            loss = (train_net(mean + std * eps, t, cond).float() - eps).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += float(loss.detach())
        if (step + 1) % 100 == 0:
            curve.append(running / 100)
            rate = (step + 1 - start) * tc.batch_size / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{curve[-1]:.4f}", vectors_per_s=f"{rate:.0f}")
            running = 0.0
        done = step + 1
        if (run.checkpoint_every and done % run.checkpoint_every == 0) or done == run.stop_after:
            save_checkpoint(done)
        if run.stop_after is not None and done >= run.stop_after:
            break
    net.eval()
    return curve


def calibration_thresholds(
    model: AnoDODEModel,
    loaded: list[LoadedCase],
    quantile: float,
    localisations: dict[str, LocalisationConfig],
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Per named localisation: the ``quantile`` of its voxel anomaly scores over the normal voxels (lesion and
    its margin excluded: ``healthy_full``) of the given cases, as the ``standard`` preset scores them (the
    preset ``anodode score`` uses by default). Each case is scored once for all localisations."""
    values: dict[str, list[np.ndarray]] = {k: [] for k in localisations}
    for lc in loaded:
        scores, scored = score_prepared(model, lc.prepared, "standard", device=device)
        for name, loc in localisations.items():
            values[name].append(canonical_map(lc.prepared, scores, model, loc, scored)[lc.healthy_full])
    return {k: float(np.quantile(np.concatenate(v), quantile)) for k, v in values.items()}


def calibrate(
    model: AnoDODEModel, loaded: list[LoadedCase], quantile: float, device: torch.device
) -> Calibration:
    """The model's label threshold: ``calibration_thresholds`` of its own localisation."""
    thr = calibration_thresholds(model, loaded, quantile, {"own": model.config.localisation}, device)["own"]
    return Calibration(threshold=thr, quantile=quantile)


def train(
    cases: list[Case],
    model_cfg: ModelConfig,
    tc: TrainConfig,
    device: str = "cpu",
    calibrate_model: bool = True,
    progress: bool = True,
) -> AnoDODEModel:
    t0 = time.perf_counter()
    loaded = [load_case(c, model_cfg, tc.healthy, tc.tumour_margin_mm) for c in cases]
    return train_loaded(loaded, model_cfg, tc, device, calibrate_model, progress, t0)


def train_loaded(
    loaded: list[LoadedCase],
    model_cfg: ModelConfig,
    tc: TrainConfig,
    device: str = "cpu",
    calibrate_model: bool = True,
    progress: bool = True,
    t0: float | None = None,
    run: RunOptions | None = None,
) -> AnoDODEModel:
    """Train (and calibrate) on already loaded cases."""
    t0 = time.perf_counter() if t0 is None else t0
    torch.manual_seed(tc.seed)
    feats, ctx = normal_vectors(loaded, model_cfg, tc)
    return train_vectors(
        feats,
        ctx,
        [lc.case for lc in loaded],
        loaded[: tc.calibration_cases or None],
        model_cfg,
        tc,
        device,
        calibrate_model,
        progress,
        t0,
        run,
    )


def train_vectors(
    feats: torch.Tensor,
    ctx: torch.Tensor,
    cases: list[Case],
    calibration: list[LoadedCase],
    model_cfg: ModelConfig,
    tc: TrainConfig,
    device: str | torch.device = "cpu",
    calibrate_model: bool = True,
    progress: bool = True,
    t0: float | None = None,
    run: RunOptions | None = None,
) -> AnoDODEModel:
    """Fit the model on normal vectors (call ``torch.manual_seed(tc.seed)`` before drawing them, as
    ``train_loaded`` does) and calibrate on ``calibration`` (rank 0 only under torchrun)."""
    t0 = time.perf_counter() if t0 is None else t0
    dev = torch.device(device)
    logger.info("training on %d normal feature vectors from %d cases", feats.shape[0], len(cases))
    model = AnoDODEModel(
        model_cfg, metadata={"name": f"anodode-{'-'.join(model_cfg.features.contrasts)}-brats"}
    )
    curve = fit(model, feats, ctx, tc, dev, progress, run)
    model = model.cpu()
    rank, world = dist_info()
    if (
        calibrate_model
        and rank == 0
        and not (run and run.stop_after is not None and run.stop_after < tc.steps)
    ):
        cal_dev = dev if dev.type == "cuda" else torch.device("cpu")
        cal = calibrate(model.to(cal_dev), calibration, tc.calibration_quantile, cal_dev)
        model = model.cpu()
        model.config = dataclasses.replace(model.config, calibration=cal)
    model.metadata["training"] = {
        "cases": [{"name": c.name, "dataset": c.dataset, "flair": c.flair.name} for c in cases],
        "contrast": "+".join(model_cfg.features.contrasts).upper(),
        "healthy_selection": tc.healthy,
        "normal_vectors": int(feats.shape[0]),
        "train_config": dataclasses.asdict(tc),
        "final_loss": curve[-1] if curve else None,
        "seconds": round(time.perf_counter() - t0, 1),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    if world > 1:
        model.metadata["training"]["world_size"] = world
    return model


def init_distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world, this rank's device) for a ``--device`` value: under torchrun (``WORLD_SIZE`` > 1) join
    the process group (nccl on CUDA, gloo on CPU), each rank on CUDA using cuda:LOCAL_RANK; else (0, 1,
    ``pipeline.resolve_device(device)``, "auto" being CUDA when torch sees a GPU)."""
    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, dev
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.set_device(local)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return torch.distributed.get_rank(), world, torch.device(f"cuda:{local}" if cuda else "cpu")


def barrier() -> None:
    if dist_info()[1] > 1:
        torch.distributed.barrier()


def git_commit() -> str | None:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                check=False,
                cwd=Path(__file__).resolve().parents[1],
                capture_output=True,
                text=True,
                encoding="utf-8",
                errors="replace",
                timeout=10,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None


def model_config(
    contrasts: tuple[str, ...] = ("flair",),
    hidden: int | None = None,
    scales_mm: tuple[float, ...] | None = None,
    position_context: bool = True,
) -> ModelConfig:
    """The shipped model's config for the given contrasts (primary first); ``scales_mm`` and
    ``position_context`` change the feature extractor for ablations. The score network's input and
    context widths follow the features.

    Against the engine's historical defaults (which older bundles load with), the shipped recipe reads
    intensities relative to the white-matter peak (``intensity_reference="wm_peak"``), measured on scans from
    other sites, and maps with the "combined" density (per-location bpd x how much brighter than its
    reconstruction a location is) weighted by the smoothed intensity (``intensity_product``): chosen on the
    three-group held-out evaluation (docs/results.md), the intensity in units of the scan's own bright normal
    tissue (``brightness_quantile``, the default). A regional-level context (``regional_scale_mm``) is an
    ablation: it lets a large tumour explain itself away."""
    base = ModelConfig()
    pre = dataclasses.replace(base.preprocess, intensity_reference="wm_peak")
    feats = dataclasses.replace(
        base.features,
        contrasts=tuple(contrasts),
        scales_mm=tuple(scales_mm or base.features.scales_mm),
        position_context=position_context,
    )
    net = dataclasses.replace(
        base.score_net,
        channels=feats.channels,
        cond_channels=feats.cond_channels,
        hidden=hidden or base.score_net.hidden,
    )
    loc = dataclasses.replace(base.localisation, method="combined", intensity_product=True)
    return dataclasses.replace(base, preprocess=pre, features=feats, score_net=net, localisation=loc)


def gather_cases(
    sources: list[str],
    contrast: str | tuple[str, ...],
    names: list[str] | None,
    exclude: list[str],
    resample_seg: bool = False,
) -> list[Case]:
    cases: list[Case] = []
    for s in sources:
        cases += find_cases(s, contrast)
    if resample_seg:
        cases = [dataclasses.replace(c, resample_seg=True) for c in cases]
    return select(cases, names, exclude)


def main(argv: list[str] | None = None) -> int:
    ap = options.parser(__doc__)
    ap.add_argument("--output", required=True, type=Path, help="bundle folder to write")
    options.add_data(ap, DEFAULT_SOURCES)
    options.add_contrast(ap)
    ap.add_argument("--steps", type=int, default=TrainConfig.steps)
    ap.add_argument("--batch-size", type=int, default=TrainConfig.batch_size, help="global batch (all ranks)")
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    ap.add_argument("--max-locations-per-case", type=int, default=TrainConfig.max_locations_per_case)
    ap.add_argument("--healthy", choices=["tissue", "slices"], default="tissue")
    ap.add_argument("--hidden", type=int, default=ScoreNetConfig.hidden)
    ap.add_argument("--seed", type=int, default=0)
    options.add_device(ap)
    ap.add_argument("--no-amp", action="store_true", help="train in float32 on CUDA too")
    options.add_cache(ap)
    ap.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="run folder for run_config.json, checkpoint.pt, gaussian_baseline.npz "
        "(default runs/train/<output name>)",
    )
    ap.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (0: none)")
    ap.add_argument("--resume", action="store_true", help="continue from <run-dir>/checkpoint.pt")
    ap.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rank, world, dev = init_distributed(args.device)
    if args.steps < MIN_STEPS:
        print(f"error: --steps must be at least {MIN_STEPS}", file=sys.stderr)
        return 2
    contrasts = args.contrast
    try:
        cases = gather_cases(args.data, contrasts, args.cases, args.exclude, args.resample_seg)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not cases:
        print(
            f"error: no training cases with {'+'.join(contrasts)} found (is ../shared/data there?)",
            file=sys.stderr,
        )
        return 2
    cfg = model_config(contrasts, hidden=args.hidden)
    tc = TrainConfig(
        steps=args.steps,
        healthy=args.healthy,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        max_locations_per_case=args.max_locations_per_case,
        amp=not args.no_amp,
    )
    run_dir = args.run_dir or Path("runs") / "train" / args.output.name
    run = RunOptions(run_dir, args.checkpoint_every, args.resume, args.stop_after)
    t0 = time.perf_counter()
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "run_config.json").write_text(
            json.dumps(
                {
                    "argv": sys.argv if argv is None else ["training.train", *argv],
                    "output": str(args.output),
                    "data": args.data,
                    "contrasts": list(contrasts),
                    "cases": [
                        {
                            "name": c.name,
                            "dataset": c.dataset,
                            "image": str(c.flair),
                            "channel": c.channel,
                            "extra": [[n, str(p), ch] for n, p, ch in c.extra],
                            "seg": str(c.seg) if c.seg else None,
                        }
                        for c in cases
                    ],
                    "train_config": dataclasses.asdict(tc),
                    "model_config": to_dict(cfg),
                    "world_size": world,
                    "device": str(dev),
                    "cache": str(args.cache) if args.cache else None,
                    "torch": torch.__version__,
                    "python": platform.python_version(),
                    "git_commit": git_commit(),
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
    gen = torch.Generator().manual_seed(tc.seed)
    if args.cache is None:
        try:
            loaded = [load_case(c, cfg, tc.healthy, tc.tumour_margin_mm) for c in cases]
        except (ValueError, OSError) as exc:  # volume_io.InputError is a ValueError
            print(f"error: {exc}", file=sys.stderr)
            return 2
        torch.manual_seed(tc.seed)
        feats, ctx = normal_vectors(loaded, cfg, tc)
        calib = loaded[: tc.calibration_cases or None]
    else:  # every rank builds its share of the cache, then all read it
        cache.build_cache(cases, cfg, args.cache, args.workers, progress=rank == 0, shard=(rank, world))
        barrier()
        entries = cache.entries_for(cases, cfg, args.cache)
        missing = [c.name for c in cases if c.name not in entries]
        if missing:
            logger.warning("leaving out %d case(s) that failed preprocessing: %s", len(missing), missing)
        cases = [c for c in cases if c.name in entries]
        torch.manual_seed(tc.seed)
        feats, ctx = training_vectors_cached(
            [entries[c.name] for c in cases], tc.healthy, tc.tumour_margin_mm, tc.max_locations_per_case, gen
        )
        if tc.augment.copies:  # one case in memory at a time; the same vectors as the in-memory path
            rng, more = np.random.default_rng(tc.seed), [(feats, ctx)]
            for c in cases:
                copies = augmented_cases(
                    [load_cached(c, entries[c.name], tc.healthy, tc.tumour_margin_mm)], cfg, tc, rng
                )
                more.append(training_vectors(copies, tc.max_locations_per_case, gen))
            feats, ctx = torch.cat([f for f, _ in more]), torch.cat([c for _, c in more])
        calib = (
            [
                load_cached(c, entries[c.name], tc.healthy, tc.tumour_margin_mm)
                for c in cases[: tc.calibration_cases or None]
            ]
            if rank == 0
            else []
        )
    model = train_vectors(feats, ctx, cases, calib, cfg, tc, dev, progress=True, t0=t0, run=run)
    interrupted = run.stop_after is not None and run.stop_after < tc.steps
    if rank == 0 and not interrupted:
        model.metadata["name"] = args.output.name  # the bundle is named after its folder, e.g. "brats21"
        model.name = args.output.name
        save_model(model, args.output)
        GaussianBaseline.fit(
            model.standardiser(feats).detach().numpy(), ctx.numpy(), positions=position_columns(cfg.features)
        ).save(run_dir / "gaussian_baseline.npz")
        print(
            json.dumps(
                {
                    "output": str(args.output),
                    "run_dir": str(run_dir),
                    "calibration": to_dict(model.config.calibration),
                    "seconds": model.metadata["training"]["seconds"],
                },
                indent=2,
            )
        )
    barrier()
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
