"""Scoring speed and accuracy of the solver presets on a real BraTS-size FLAIR (issue 5).

    python benchmarks/bench_scoring.py [--volume PATH --mask PATH] [--device cpu|cuda] [--model DIR]
                                       [--json out.json] [--slice-stride K] [--threads T] [--no-profile]
    python benchmarks/bench_scoring.py --large [--json out.json]     # 512x512x300 peak-RAM check
    python benchmarks/bench_scoring.py --end-to-end [--presets standard,fast] [--json out.json]

For each preset: seconds per volume and per slice, mean NFE (likelihood ODE + reconstruction, per location),
peak RAM (the process's ``ru_maxrss`` high-water mark, cumulative over the run) and peak GPU memory, and
the slice-score Spearman correlation and mean |delta bpd| (per location) against a tight reference: the same
model, likelihood integrated by torchdiffeq's adaptive dopri5 (RK45) at rtol = atol = 1e-5 with the exact
trace (C autograd VJPs per evaluation) plus the default reconstruction computed draw by draw with
torchdiffeq's RK4, i.e. the code path before the fast evaluator. Speed ratios are reference seconds /
preset seconds measured in the same run (compare ratios, not absolute seconds, on a shared machine).

``--slice-stride K`` scores every K-th axial slice that has brain (for a quick run; per-volume seconds are
then extrapolated by the location count, and said so). A CPU profile of one pass (standard preset) splits
the time into preprocessing/IO, score-network forward, exact-trace tangents, solver overhead and
reconstruction. A preset that scores every k-th slice (``Preset.slice_spacing_mm``) is timed on the same
locations and its seconds scaled by the fraction of the volume's locations it scores; its accuracy on the
slices it skips is what ``--end-to-end`` measures: whole volumes through ``score_image`` against every slice
scored with RK4 (slice-score Spearman, map Pearson, label Dice). Real data are read from ../shared/data
(or $ANODODE_DATA); nothing is written but --json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "AnoDODE"))

import SimpleITK as sitk

from AnoDODELib import fast_ode
from AnoDODELib.bundle import load_model
from AnoDODELib.config import SolverConfig
from AnoDODELib.likelihood import log_likelihood
from AnoDODELib.pipeline import PRESETS, Preset, prepare_volume, score_image, score_locations, scored_slices
from AnoDODELib.reconstruction import reconstruct
from AnoDODELib.score_model import score_fn

DATA = Path(os.environ.get("ANODODE_DATA", REPO.parent / "shared" / "data"))
DEFAULT_CASE = "deepmedic_brats2015/brats_2013_pat0001_1"


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""

    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="mergesort")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=float)
        _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
        sums = np.bincount(inv, weights=r)
        return sums[inv] / counts[inv]

    ra, rb = ranks(np.asarray(a, float)), ranks(np.asarray(b, float))
    return float(np.corrcoef(ra, rb)[0, 1])


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def slice_means(bpd: torch.Tensor, slice_of: torch.Tensor, n_slices: int) -> np.ndarray:
    sums = torch.zeros(n_slices, dtype=torch.float64).index_add_(0, slice_of, bpd.double())
    counts = torch.bincount(slice_of, minlength=n_slices).double()
    keep = counts > 0
    return (sums[keep] / counts[keep]).numpy()


def reference(model, y_std: torch.Tensor, ctx: torch.Tensor, dev: torch.device, seed: int = 0):
    """The tight anchor: torchdiffeq dopri5 1e-5 + exact autograd trace, reconstruction draw by draw."""
    loc = model.config.localisation
    net = model.score_net.to(dev).eval()
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((loc.n_reconstructions, *y_std.shape), generator=gen)
    bpds, nfe = [], 0
    for s in range(0, y_std.shape[0], 65536):
        y, c = y_std[s : s + 65536].to(dev), ctx[s : s + 65536].to(dev)
        fn = score_fn(net, model.sde, c)
        res = log_likelihood(fn, model.sde, y, method="dopri5", rtol=1e-5, atol=1e-5, divergence="exact")
        nfe = max(nfe, res.nfe)
        with torch.no_grad():
            for k in range(loc.n_reconstructions):
                reconstruct(
                    fn,
                    model.sde,
                    y,
                    t_start=loc.t_start,
                    noise=noise[k, s : s + 65536].to(dev),
                    method="rk4",
                    steps=loc.reconstruction_steps,
                )
        bpds.append(res.bpd.detach().cpu())
    model.score_net.to("cpu")
    return torch.cat(bpds), nfe, 4 * loc.reconstruction_steps


def profile(model, y_std, ctx, dev, solver, reconstruction: str = "rk4") -> dict[str, float]:
    """Seconds per stage for one pass of the fixed-step likelihood + reconstruction (fused path)."""
    loc = model.config.localisation
    net = model.score_net.to(dev).eval()
    chunk = 16384 if dev.type == "cpu" else 65536
    t = {"network forward": 0.0, "exact-trace tangents": 0.0, "solver overhead": 0.0, "reconstruction": 0.0}
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for s in range(0, y_std.shape[0], chunk):
            y, c = y_std[s : s + chunk].to(dev), ctx[s : s + chunk].to(dev)
            ev = fast_ode.PointwiseEvaluator(net, c)
            sync(dev)
            t0 = time.perf_counter()
            _, nfe = fast_ode.likelihood_fixed(
                ev, model.sde, y, method=solver.method, steps=solver.steps, t_eps=solver.t_eps
            )
            sync(dev)
            t1 = time.perf_counter()
            for _ in range(nfe):
                ev.eps(y, 0.5)
            sync(dev)
            t2 = time.perf_counter()
            for _ in range(nfe):
                ev.eps_and_trace(y, 0.5)
            sync(dev)
            t3 = time.perf_counter()
            noise = torch.randn((loc.n_reconstructions, *y.shape), generator=gen).to(dev)
            fast_ode.reconstruct_batched(
                fast_ode.PointwiseEvaluator(net, c, repeat=loc.n_reconstructions),
                model.sde,
                y,
                noise,
                t_start=loc.t_start,
                steps=loc.reconstruction_steps,
                t_eps=solver.t_eps,
                method=reconstruction,
            )
            sync(dev)
            t4 = time.perf_counter()
            t["network forward"] += t2 - t1
            t["exact-trace tangents"] += (t3 - t2) - (t2 - t1)
            t["solver overhead"] += (t1 - t0) - (t3 - t2)
            t["reconstruction"] += t4 - t3
    model.score_net.to("cpu")
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--volume", type=Path)
    ap.add_argument("--mask", type=Path)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--model", type=Path, default=None, help="model bundle (default: the bundled model)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--slice-stride", type=int, default=1, help="score every K-th brain slice (quick runs)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--presets", default=",".join(PRESETS), help="comma-separated presets to time")
    ap.add_argument("--no-reference", action="store_true", help="skip the (slow) dopri5 reference")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--large", action="store_true", help="peak RAM of a synthetic 512x512x300 volume")
    ap.add_argument(
        "--end-to-end",
        action="store_true",
        help="score_image on whole volumes (--volume, or the BraTS-family FLAIRs) with each preset and "
        "with every slice scored by RK4 x4 (the dense reference): seconds, and slice-score, "
        "map and label agreement with the dense reference",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.large:
        return large_volume(args)
    if args.end_to_end:
        return end_to_end(args)
    volume = args.volume or DATA / DEFAULT_CASE / "Flair_subtrMeanDivStd.nii.gz"
    mask_path = args.mask or (volume.parent / "brainmask.nii.gz" if args.volume is None else None)
    if not volume.exists():
        print(
            f"real data not found: {volume}\n(place the shared data at ../shared/data beside the repository, "
            "set ANODODE_DATA, or pass --volume/--mask)",
            file=sys.stderr,
        )
        return 2
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: torch sees no CUDA GPU", file=sys.stderr)
        return 2
    out: dict = {
        "machine": machine(dev),
        "volume": str(volume),
        "threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg()[0],
        "presets": {},
    }
    model = load_model(args.model)
    t0 = time.perf_counter()
    image = sitk.ReadImage(str(volume))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path))) > 0 if mask_path else None
    t_io = time.perf_counter() - t0
    t0 = time.perf_counter()
    prepared = prepare_volume(image, model.config, mask)
    t_prep = time.perf_counter() - t0
    feats, ctx = prepared.locations()
    gm = prepared.grid_mask
    slice_of_all = torch.nonzero(gm)[:, 0]
    brain_slices = torch.unique(slice_of_all)
    chosen = brain_slices[:: args.slice_stride]
    sel = torch.isin(slice_of_all, chosen)
    feats, ctx, slice_of = feats[sel], ctx[sel].float(), slice_of_all[sel]
    n_all, n = int(sel.numel()), int(sel.sum())
    scale = n_all / n  # extrapolation factor to the whole volume
    out.update(
        locations_volume=n_all,
        locations_scored=n,
        slices_with_brain=int(brain_slices.numel()),
        slices_scored=int(chosen.numel()),
        slices_total=int(gm.shape[0]),
        io_seconds=t_io,
        preprocessing_seconds=t_prep,
        extrapolated=args.slice_stride > 1,
    )
    print(
        f"{volume.name}: {gm.shape[0]} slices ({brain_slices.numel()} with brain), {n_all} brain locations; "
        f"scoring {n} locations on {chosen.numel()} slices; device {out['machine']}; "
        f"{torch.get_num_threads()} threads; load average {out['load_average_at_start']:.1f}"
    )
    print(f"read {t_io:.2f} s, preprocessing {t_prep:.2f} s (not included in the seconds below)")
    y_std = model.standardiser(feats.float()).detach()
    per_slice = chosen.numel()

    ref = None
    if not args.no_reference:
        sync(dev)
        t0 = time.perf_counter()
        ref_bpd, ref_nfe, ref_rec = reference(model, y_std, ctx, dev)
        sync(dev)
        t_ref = time.perf_counter() - t0
        ref = {
            "seconds_scored": t_ref,
            "seconds_per_volume": t_ref * scale,
            "seconds_per_slice": t_ref / per_slice,
            "nfe_likelihood": ref_nfe,
            "nfe_reconstruction": ref_rec,
            "peak_rss_mib": peak_rss_mib(),
        }
        out["reference"] = ref
        print(f"reference dopri5 1e-5 exact trace: {t_ref * scale:.1f} s/volume, NFE {ref_nfe} + {ref_rec}")

    def scored_fraction(preset: Preset) -> float:
        """A preset scoring every k-th slice costs this fraction of the volume's locations (same cost each)."""
        keep = scored_slices(gm, prepared.geometry.spacing_mm[0], preset.slice_spacing_mm)
        return float((gm & keep[:, None, None]).sum()) / n_all

    rows = []
    for name in args.presets.split(","):
        preset = PRESETS[name]
        solver = dataclasses.replace(preset.likelihood, t_eps=model.config.sde.t_eps)
        frac = scored_fraction(preset)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync(dev)
        t0, c0 = time.perf_counter(), time.process_time()
        sc = score_locations(
            model, feats, ctx, solver=solver, device=dev, reconstruction_method=preset.reconstruction
        )
        sync(dev)
        sec, cpu = time.perf_counter() - t0, time.process_time() - c0
        slices = slice_means(sc.bpd, slice_of, gm.shape[0])
        row = {
            "preset": name,
            "solver": dataclasses.asdict(solver),
            "reconstruction": preset.reconstruction,
            "slice_spacing_mm": preset.slice_spacing_mm,
            "fraction_of_locations_scored": frac,
            "seconds_per_volume": sec * scale * frac,
            "cpu_seconds_per_volume": cpu * scale * frac,
            "seconds_per_slice": sec * frac / per_slice,
            "nfe_likelihood": sc.nfe,
            "nfe_reconstruction": sc.nfe_reconstruction,
            "nfe_total": sc.nfe + model.config.localisation.n_reconstructions * sc.nfe_reconstruction,
            "peak_rss_mib": peak_rss_mib(),
            "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None,
        }
        if ref is not None:
            ref_slices = slice_means(ref_bpd, slice_of, gm.shape[0])
            row.update(
                spearman_slices=spearman(slices, ref_slices),
                mean_abs_dbpd=float((sc.bpd - ref_bpd).abs().mean()),
                mean_abs_dbpd_slice=float(np.abs(slices - ref_slices).mean()),
                speedup_vs_reference=ref["seconds_scored"] / (sec * frac),
            )
        rows.append(row)
        out["presets"][name] = row
    print_table(rows, ref is not None)

    if not args.no_profile:
        std = PRESETS["standard"]
        solver = dataclasses.replace(std.likelihood, t_eps=model.config.sde.t_eps)
        prof = profile(model, y_std, ctx, dev, solver, std.reconstruction)
        prof = {k: v * scale * scored_fraction(std) for k, v in prof.items()}
        prof["preprocessing + I/O"] = t_prep + t_io
        total = sum(prof.values())
        out["profile_standard_seconds_per_volume"] = prof
        print("\nwhere the time goes (standard preset, one volume, seconds):")
        for k, v in prof.items():
            print(f"  {k:24s} {v:8.2f}  {100 * v / total:5.1f} %")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def print_table(rows: list[dict], with_ref: bool) -> None:
    head = f"{'preset':9s} {'s/volume':>9s} {'cpu-s/vol':>9s} {'s/slice':>8s} {'NFE lik+rec':>12s} {'peakRSS MiB':>11s}"
    if with_ref:
        head += f" {'Spearman':>9s} {'mean|dbpd|':>10s} {'x ref':>7s}"
    print(head)
    for r in rows:
        line = (
            f"{r['preset']:9s} {r['seconds_per_volume']:9.2f} {r['cpu_seconds_per_volume']:9.2f} "
            f"{r['seconds_per_slice']:8.3f} {r['nfe_likelihood']:5d}+{4 * r['nfe_reconstruction']:<6d} "
            f"{r['peak_rss_mib']:11.0f}"
        )
        if with_ref:
            line += (
                f" {r['spearman_slices']:9.4f} {r['mean_abs_dbpd']:10.4f} {r['speedup_vs_reference']:7.1f}"
            )
        if r["peak_gpu_mib"] is not None:
            line += f"  peak GPU {r['peak_gpu_mib']:.0f} MiB"
        print(line)


def machine(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(0)
    name = "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


DENSE = Preset(SolverConfig(method="rk4", steps=4, divergence="exact"), "rk4", 0.0)


def end_to_end(args) -> int:
    """Whole volumes through ``score_image`` (preprocessing and maps included, no file output): each preset
    against the dense reference (every slice, RK4 x4 likelihood and reconstruction; its slice bpd has
    Spearman 1.0000 with dopri5 1e-5, see the README)."""
    sys.path.insert(0, str(REPO))
    from training.cases import brats_family_cases, unlabelled_cases

    if args.volume:
        vols = [(args.volume, args.mask)]
    else:
        vols = [(c.flair, c.brain_mask) for c in brats_family_cases() + unlabelled_cases()]
    if not vols:
        print("real data not found (../shared/data or $ANODODE_DATA); pass --volume", file=sys.stderr)
        return 2
    model = load_model(args.model)
    names = args.presets.split(",")
    out: dict = {
        "machine": machine(torch.device(args.device)),
        "threads": torch.get_num_threads(),
        "volumes": [],
    }
    for path, mask_path in vols:
        image = sitk.ReadImage(str(path))
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path))) > 0 if mask_path else None
        res = {}
        for name in ["dense", *names]:
            t0 = time.perf_counter()
            r = score_image(image, model, mask, device=args.device, preset=DENSE if name == "dense" else name)
            res[name] = (r, time.perf_counter() - t0)
        ref, ref_sec = res["dense"]
        brain = ref.anomaly_map != 0
        row = {"volume": str(path), "dense_seconds": ref_sec}
        for name in names:
            r, sec = res[name]
            have = [
                i for i, v in enumerate(ref.slice_scores) if v is not None and r.slice_scores[i] is not None
            ]
            inter = float(((r.label > 0) & (ref.label > 0)).sum())
            dice = 2 * inter / max(float((r.label > 0).sum() + (ref.label > 0).sum()), 1.0)
            row[name] = {
                "seconds": sec,
                "speedup_vs_dense": ref_sec / sec,
                "slice_bpd_spearman": spearman(
                    [r.slice_scores[i] for i in have], [ref.slice_scores[i] for i in have]
                ),
                "slice_anomaly_spearman": spearman(
                    [r.slice_anomaly_scores[i] for i in have], [ref.slice_anomaly_scores[i] for i in have]
                ),
                "map_pearson": float(np.corrcoef(r.anomaly_map[brain], ref.anomaly_map[brain])[0, 1]),
                "label_dice_vs_dense": dice,
            }
        out["volumes"].append(row)
        print(
            f"{Path(path).name}: dense {ref_sec:.1f} s; "
            + "; ".join(
                f"{n} {row[n]['seconds']:.1f} s ({row[n]['speedup_vs_dense']:.1f}x), slice bpd rho "
                f"{row[n]['slice_bpd_spearman']:.4f}, slice p99 rho {row[n]['slice_anomaly_spearman']:.4f}, map r "
                f"{row[n]['map_pearson']:.4f}, label Dice {row[n]['label_dice_vs_dense']:.3f}"
                for n in names
            ),
            flush=True,
        )
    for n in ["dense", *names]:
        key = "dense_seconds" if n == "dense" else None
        secs = [v[key] if key else v[n]["seconds"] for v in out["volumes"]]
        print(f"{n}: mean {np.mean(secs):.1f} s per volume (min {np.min(secs):.1f}, max {np.max(secs):.1f})")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


def large_volume(args) -> int:
    """Upsample the default FLAIR to 512x512x300 in a temp dir and score it in a child process (fast)."""
    src = DATA / DEFAULT_CASE
    if not src.exists():
        print(f"real data not found: {src}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        for name, interp in (
            ("Flair_subtrMeanDivStd", sitk.sitkLinear),
            ("brainmask", sitk.sitkNearestNeighbor),
        ):
            img = sitk.ReadImage(str(src / f"{name}.nii.gz"))
            size = (512, 512, 300)
            spacing = [sz * sp / n for sz, sp, n in zip(img.GetSize(), img.GetSpacing(), size)]
            out = sitk.Resample(
                img, size, sitk.Transform(), interp, img.GetOrigin(), spacing, img.GetDirection()
            )
            sitk.WriteImage(out, f"{tmp}/{name}.nii.gz")
            del img, out
        code = (
            "import resource,sys,time,torch,SimpleITK as sitk;"
            f"sys.path.insert(0,{str(REPO / 'AnoDODE')!r});"
            "from AnoDODELib.bundle import load_model;from AnoDODELib.pipeline import PRESETS,Preset,score_image;"
            "import dataclasses;every=dataclasses.replace(PRESETS['fast'],slice_spacing_mm=0.0);"
            f"img=sitk.ReadImage('{tmp}/Flair_subtrMeanDivStd.nii.gz');"
            f"m=sitk.GetArrayFromImage(sitk.ReadImage('{tmp}/brainmask.nii.gz'))>0;"
            f"mdl=load_model({str(args.model) if args.model else None!r});t=time.perf_counter();"
            "r=score_image(img,mdl,m,device='cpu',preset=every);"
            "print(time.perf_counter()-t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024)"
        )
        res = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            check=False,
        )
        if res.returncode:
            print(res.stderr, file=sys.stderr)
            return 1
        sec, rss = map(float, res.stdout.split()[-2:])
    print(
        f"512x512x300 synthetic volume (fast solvers, every slice scored, CPU): {sec:.1f} s, peak RSS {rss:.0f} MiB "
        f"({rss / 1024:.2f} GiB; limit 4 GiB)"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"large_volume": {"shape": [512, 512, 300], "seconds": sec, "peak_rss_mib": rss}}, indent=2
            )
            + "\n",
            encoding="utf-8",
        )
    return 0 if rss < 4096 else 1


if __name__ == "__main__":
    sys.exit(main())
