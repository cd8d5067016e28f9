"""The ``anodode`` command.

    anodode score INPUT [INPUT ...] [--mask MASK] [--brain-extraction auto|always|never]
                  [--contrast NAME=PATH] [--model DIR] [--output-dir DIR]
                  [--device auto|cpu|cuda] [--threshold T] [--preset fast|standard|exact]
    anodode bids  BIDS_DIR OUTPUT_DIR participant|group [--participant-label L ...] [--session S ...]
                  [--brain-extraction ...] [--model DIR] [--device ...] [--threshold T] [--preset ...]
                                         the BIDS-App (bids.py)
    anodode demo  [--output-dir DIR]     score a synthetic phantom with the bundled model (offline)
    anodode info  [--model DIR]          model, torch build and device

INPUT is an image file, a DICOM series folder, or a folder of NIfTI/NRRD/MetaImage files (every image in
it). Without --mask, a scan that does not look skull-stripped has its brain extracted (HD-BET,
brain_extraction.py; --brain-extraction always/never forces or disables it). For each input ``score`` writes
<stem>_anomaly.nii.gz (float32), <stem>_label.nii.gz (uint8), <stem>_brainmask.nii.gz (uint8, the brain
scored), <stem>_figure.png (figure.py) and <stem>_report.json (inputs with the same file name are told apart by
their folder: <folder>_<stem>), and for a DICOM series folder <stem>_seg.dcm, the label as a DICOM SEG
(dicom_seg.py; needs highdicom, ``pip install "anodode[dicom]"``); after each input, summary.csv and
summary.json list every input of the batch (summary.py: status ``ok``, the one-line error, or ``pending``). A multi-contrast model reads INPUT as
its primary contrast and takes each other contrast as ``--contrast NAME=PATH``, repeated once per input in
input order (as ``--mask``). Exit code 0 when every input was scored; otherwise a one-line error per failure
and 1 (a bad input: unreadable, truncated, NaN/inf voxels, too small to be a head, an implausible brain
extraction), 2 (bad usage, a bad
model bundle, an unusable output folder, --device cuda without a GPU), 130 (SIGINT) or 143 (SIGTERM). Each
input's files appear together or not at all (outputs.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from tqdm import tqdm

from . import __version__, bids, dicom_seg, process_tuning, summary, volume_io
from .atomic_write import OutputError, StagedWrite
from .brain_mask import EXTRACTION_MODES
from .bundle import BundleError, default_model_dir, load_model
from .outputs import OutputSet, ScanInputs, score_to_files
from .pipeline import PRESETS, check_contrasts, resolve_device

logger = logging.getLogger("anodode")
SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".img", ".hdr")
#: Files a folder input stands for (a folder without any is read as a DICOM series).
FOLDER_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def output_stem(path: Path) -> str:
    """File name without its image suffix; a DICOM folder's name."""
    name = path.name
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def anodode_outputs(folder: Path) -> set[Path]:
    """The files in ``folder`` that an earlier AnoDODE run wrote there: every output named in a report
    (``*_report.json`` or ``report.json`` holding ``anodode_version`` and ``outputs``) found in the folder."""
    found: set[Path] = set()
    for report in folder.glob("*report.json"):
        try:
            data = json.loads(report.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        outputs = data.get("outputs") if isinstance(data, dict) and "anodode_version" in data else None
        if isinstance(outputs, dict):
            found.update(folder / Path(str(v)).name for v in outputs.values())
    return found


def expand_inputs(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """The inputs with each folder that holds NIfTI/NRRD/MetaImage files (``FOLDER_IMAGE_SUFFIXES``, hidden
    files skipped, not recursive) replaced by those files sorted by name; a folder without any (a DICOM
    series folder) and every file stay as given. Files an earlier run wrote into the folder (its maps,
    listed in its reports: ``anodode_outputs``) are not scans and are left out, with a warning, so a folder
    scored into itself can be scored again. Returns (inputs, the folders that were expanded)."""
    out: list[Path] = []
    expanded: list[Path] = []
    for path in paths:
        images = (
            sorted(
                p
                for p in path.iterdir()
                if p.is_file()
                and not p.name.startswith(".")
                and p.name.lower().endswith(FOLDER_IMAGE_SUFFIXES)
            )
            if path.is_dir()
            else []
        )
        if images:
            ours = anodode_outputs(path)
            scans = [p for p in images if p not in ours]
            if len(scans) < len(images):
                logger.warning(
                    "%s: left out %d file(s) an earlier AnoDODE run wrote there (listed in its reports)",
                    path,
                    len(images) - len(scans),
                )
            if not scans:
                raise volume_io.InputError(
                    f"{path}: the folder holds only AnoDODE outputs of an earlier run, no scan to score"
                )
            images = scans
        out.extend(images or [path])
        if images:
            expanded.append(path)
    return out, expanded


def output_stems(paths: list[Path]) -> list[str]:
    """Output name stems; inputs whose stems collide (e.g. BraTS folders of identically named files)
    are prefixed with their parent folder's name so no input's outputs overwrite another's."""
    stems = [output_stem(p) for p in paths]
    clash = {s for s in stems if stems.count(s) > 1}
    out = [f"{p.resolve().parent.name}_{s}" if s in clash else s for p, s in zip(paths, stems)]
    if len(set(out)) != len(out):
        raise volume_io.InputError("two inputs would write the same output names; score them separately")
    return out


def parse_contrast_args(values: list[str] | None) -> dict[str, list[Path]]:
    """``["t1ce=a.nii.gz", "t1ce=b.nii.gz"]`` -> {"t1ce": [a.nii.gz, b.nii.gz]}; ValueError for a value
    that is not NAME=PATH or names an unknown contrast."""
    from .config import CONTRASTS

    out: dict[str, list[Path]] = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        name = name.strip().lower()
        if not sep or not name or not path:
            raise ValueError(f"--contrast expects NAME=PATH (e.g. t1ce=scan_t1ce.nii.gz), got {value!r}")
        if name not in CONTRASTS:
            raise ValueError(
                f"--contrast {value!r}: unknown contrast {name!r}; valid: {', '.join(CONTRASTS)}"
            )
        out.setdefault(name, []).append(Path(path))
    return out


def _score_one(
    inputs: ScanInputs,
    model,
    args: argparse.Namespace,
    outputs: OutputSet,
    protect: list[Path],
    stem: str,
    **extra,
) -> dict:
    bar = tqdm(
        total=100,
        desc=stem,
        unit="%",
        file=sys.stderr,
        disable=args.quiet,
        mininterval=0.5,
        bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]",
    )

    def progress(fraction: float, message: str) -> None:
        bar.set_description(f"{stem} ({message})", refresh=False)
        bar.update(max(0, int(round(100 * fraction)) - bar.n))

    try:
        return score_to_files(
            inputs,
            outputs,
            model,
            threshold=args.threshold,
            device=args.device,
            preset=args.preset,
            callback=progress,
            protect=protect,
            brain_extraction=args.brain_extraction,
            **extra,
        )
    finally:
        bar.close()


def _scoring_model(args: argparse.Namespace):
    """The model to score with after checking ``--preset``, ``--threshold`` and ``--device``; or the exit
    code 2 (after one error line) for a bad one of these or a bad model bundle."""
    if args.preset not in PRESETS:
        return _fail(f"unknown preset {args.preset!r}; valid: {', '.join(PRESETS)}", 2)
    if args.threshold is not None and not (math.isfinite(args.threshold) and args.threshold >= 0):
        return _fail(threshold_problem(args.threshold), 2)
    try:
        resolve_device(args.device)
    except ValueError as exc:
        return _fail(str(exc), 2)
    try:
        return load_model(args.model)
    except BundleError as exc:
        return _fail(str(exc), 2)


def cmd_score(args: argparse.Namespace) -> int:
    """``anodode score``: score each input and write its output set and the batch summary.

    Returns the exit code: 0 when every input was scored, 1 when any input failed (the others are still
    scored), 2 for bad usage, a bad model bundle or an unusable output folder (nothing scored)."""
    if not str(args.output_dir).strip():
        return _fail("--output-dir must name a folder (got an empty string)", 2)
    try:
        inputs, folders = expand_inputs([Path(p) for p in args.inputs])
    except volume_io.InputError as exc:
        return _fail(str(exc), 2)
    if folders and (args.mask or args.contrast):
        return _fail(
            f"{folders[0]} is a folder of images: --mask and --contrast need the inputs named one by "
            "one, in the same order",
            2,
        )
    masks = [Path(m) for m in args.mask] if args.mask else []
    if masks and len(masks) != len(inputs):
        return _fail(
            f"--mask was given {len(masks)} time(s) for {len(inputs)} input(s); give one per input", 2
        )
    if masks and args.brain_extraction == "always":
        return _fail("--mask gives the brain: --brain-extraction always contradicts it", 2)
    model = _scoring_model(args)
    if isinstance(model, int):
        return model
    try:
        others = parse_contrast_args(args.contrast)
    except ValueError as exc:
        return _fail(str(exc), 2)
    try:
        check_contrasts(model.config, others, model.name)
    except ValueError as exc:
        missing = set(model.config.features.contrasts[1:]) - others.keys()
        hint = " (pass each other contrast as --contrast NAME=PATH)" if missing else ""
        return _fail(f"{exc}{hint}", 2)
    for name, paths in others.items():
        if len(paths) != len(inputs):
            return _fail(
                f"--contrast {name}=... was given {len(paths)} time(s) for {len(inputs)} input(s); "
                "give one per input, in input order",
                2,
            )
    out_dir = Path(args.output_dir)
    try:
        with StagedWrite(out_dir):  # the folder can be created and written, before anything is scored
            pass
    except OutputError as exc:
        return _fail(str(exc), 2)
    failures = 0
    protect = inputs + masks + [p for paths in others.values() for p in paths]
    try:
        stems = output_stems(inputs)
    except volume_io.InputError as exc:
        return _fail(str(exc), 2)
    rows = [summary.summary_row(p) for p in inputs]
    for i, path in enumerate(inputs):
        try:
            inputs_i = ScanInputs(
                path, masks[i] if masks else None, {c: paths[i] for c, paths in others.items()}
            )
            seg = dicom_seg.seg_output(path, f"{stems[i]}{dicom_seg.SUFFIX}") if path.is_dir() else None
            report = _score_one(
                inputs_i,
                model,
                args,
                OutputSet.with_stem(out_dir, stems[i]),
                protect,
                stems[i],
                extras=[seg] if seg else [],
            )
            rows[i] = summary.summary_row(path, report)
        except (volume_io.InputError, ValueError, RuntimeError, OSError, MemoryError) as exc:
            failures += 1
            message = input_error_message(path, exc)
            rows[i] = summary.summary_row(path, error=message)
            _fail(message, 1)
        else:
            if not args.quiet:  # a closed stdout does not make a scored input fail (_say)
                _say(
                    f"{path}: volume score {report['volume_score_bpd']:.4f} bpd, "
                    f"{report['anomalous_volume_ml']:.2f} mL anomalous -> {out_dir}"
                )
        try:
            summary.write_summary(rows, out_dir, protect=protect)
        except (ValueError, OSError) as exc:
            return _fail(f"could not write the batch summary in {out_dir}: {exc}", 1)
    return 1 if failures else 0


def cmd_bids(args: argparse.Namespace) -> int:
    """``anodode bids BIDS_DIR OUTPUT_DIR participant|group``: the BIDS-App (bids.py).

    ``participant`` scores each selected FLAIR into the derivative dataset; ``group`` writes the batch
    summary across the participants' outputs. Returns the exit code: 0 when every selected FLAIR was scored
    (group: has its outputs), 1 when any was not, 2 for an invalid dataset, selection, output folder, usage
    or model bundle. A participant without a FLAIR gets a warning line, not an error."""
    bids_dir, out_dir = Path(args.bids_dir), Path(args.output_dir)
    try:
        selection = bids.select(bids_dir, args.participant_label, args.session)
        bids.check_output_dir(bids_dir, out_dir)
    except bids.BidsError as exc:
        return _fail(str(exc), 2)
    protect = [s.path for s in selection.scans]

    def list_without_flair() -> None:  # after the fatal checks, so that a fatal error is the only line
        for subject in selection.without_flair:
            print(f"anodode: warning: {subject}: no FLAIR (*_FLAIR.nii.gz) found; skipped", file=sys.stderr)

    if args.analysis_level == "group":
        if not (out_dir / "dataset_description.json").is_file():
            return _fail(f"{out_dir}: no AnoDODE derivatives; run the participant level first", 2)
        list_without_flair()
        rows = bids.group_rows(selection, out_dir)
        try:
            paths = bids.write_group_summary(rows, selection.without_flair, out_dir, protect)
        except (ValueError, OSError) as exc:
            return _fail(f"could not write the group summary in {out_dir}: {exc}", 2)
        failed = [r for r in rows if r["status"] != summary.OK]
        for row in failed:
            _fail(f"{row['input']}: {row['status']}", 1)
        if not args.quiet:
            print(f"{len(rows) - len(failed)} of {len(rows)} FLAIR(s) scored -> {paths[0]}, {paths[1]}")
        return 1 if failed else 0
    model = _scoring_model(args)
    if isinstance(model, int):
        return model
    primary, *others = model.config.features.contrasts
    if primary != "flair" or others:
        return _fail(
            f"model {model.name} reads {'+'.join(model.config.features.contrasts)}; bids scores FLAIR", 2
        )
    try:
        bids.write_dataset_files(out_dir, bids_dir, model)
    except (bids.BidsError, OutputError) as exc:
        return _fail(str(exc), 2)
    list_without_flair()
    failures = 0
    for scan in selection.scans:
        try:
            report = _score_one(
                ScanInputs(scan.path),
                model,
                args,
                scan.outputs(out_dir),
                protect,
                scan.source,
                extras=[bids.mask_sidecar(scan)],
                report_fields=bids.report_fields(scan),
            )
        except (volume_io.InputError, ValueError, RuntimeError, OSError, MemoryError) as exc:
            failures += 1
            _fail(input_error_message(scan.path, exc), 1)
        else:
            if not args.quiet:
                _say(
                    f"{scan.relative}: volume score {report['volume_score_bpd']:.4f} bpd, "
                    f"{report['anomalous_volume_ml']:.2f} mL anomalous -> {scan.folder(out_dir)}"
                )
    return 1 if failures else 0


def threshold_problem(threshold: float) -> str:
    """Why ``threshold`` is not a usable ``--threshold``: it must be finite and >= 0, since every anomaly map
    is >= 0 (0 where nothing is anomalous) and a negative threshold would label the whole brain."""
    if not math.isfinite(threshold):
        return f"--threshold must be a finite number, got {threshold}"
    return (
        f"--threshold must be >= 0, got {threshold:g}: the anomaly map is >= 0 everywhere (0: nothing "
        "anomalous), so a negative threshold would label the whole brain"
    )


def input_error_message(path: Path, exc: BaseException) -> str:
    """The one-line error of an input that failed: the exception's first line, starting with the input's path
    when the message does not name it already (a full disk, a constant brain, an allocation failure)."""
    text = " ".join((str(exc).splitlines() or [""])[0].split())
    if isinstance(exc, MemoryError):
        text = f"out of memory while scoring ({text or 'MemoryError'})"
    elif isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        text = f"{exc.strerror}{where}"
    elif isinstance(exc, RuntimeError) and "itk" in text.lower():  # SimpleITK: the C++ location is noise
        text = volume_io._sitk_reason(exc)
    text = text or type(exc).__name__
    return text if str(path) in text else f"{path}: {text}"


def _say(line: str) -> None:
    """Print ``line`` on stdout; when stdout's reader has gone (``anodode score ... | head -c 0``) stdout is
    pointed at /dev/null and scoring goes on: the files are the results, the line is a courtesy."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def cmd_demo(args: argparse.Namespace) -> int:
    """``anodode demo``: write the synthetic phantom (``demo.make_phantom``), score it as ``score`` does, and
    check that the map finds its lesion (peak inside, best-possible Dice >= ``demo.MIN_BEST_DICE``).

    Returns the exit code: 0 when the lesion is found, 1 when it is missed, 2 for a bad model or output
    folder, otherwise ``score``'s code; the phantom files are removed again when scoring fails."""
    from . import demo
    from .demo import MIN_BEST_DICE, lesion_found

    try:
        load_model(args.model)  # a bad model fails before the phantom is written
    except BundleError as exc:
        return _fail(str(exc), 2)
    if not str(args.output_dir).strip():
        return _fail("--output-dir must name a folder (got an empty string)", 2)
    out_dir = Path(args.output_dir)
    phantom = demo.make_phantom()
    flair, lesion = out_dir / "phantom_flair.nii.gz", out_dir / "phantom_lesion.nii.gz"
    try:
        with StagedWrite(out_dir) as staged:
            volume_io.write_image(phantom.image, staged.path(flair.name))
            volume_io.write_image(phantom.lesion, staged.path(lesion.name))
            staged.commit()
    except OutputError as exc:
        return _fail(str(exc), 2)
    _say(
        f"synthetic FLAIR-like phantom (not a patient) with a lesion centred at "
        f"{_mm(phantom.lesion_centre_mm)} (LPS, mm): {flair}"
    )
    args.inputs, args.mask, args.contrast, args.brain_extraction = [str(flair)], None, None, "auto"
    code = 1
    try:
        code = cmd_score(args)
    finally:
        if code:
            for path in (flair, lesion):  # nothing of a failed or interrupted demo is left behind
                path.unlink(missing_ok=True)
    if code:
        return code
    amap = sitk.GetArrayFromImage(sitk.ReadImage(str(out_dir / "phantom_flair_anomaly.nii.gz")))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(out_dir / "phantom_flair_label.nii.gz"))) > 0
    found = lesion_found(amap, label, sitk.GetArrayFromImage(phantom.lesion) > 0)
    peak = np.unravel_index(int(np.argmax(amap)), amap.shape)
    peak_mm = phantom.image.TransformIndexToPhysicalPoint([int(v) for v in peak[::-1]])
    _say(
        f"peak anomaly at {_mm(peak_mm)} (LPS, mm): "
        f"{'inside' if found.peak_inside else 'OUTSIDE'} the known lesion; best-possible Dice with the lesion "
        f"{found.best_dice:.2f}, label Dice {found.label_dice:.2f}"
    )
    written = OutputSet.with_stem(out_dir, "phantom_flair").paths()
    _say(
        f"map {written['anomaly']}, label {written['label']}, figure {written['figure']}, "
        f"report {written['report']}"
    )
    if not found.ok:
        return _fail(
            f"the map missed the phantom's lesion (peak {'inside' if found.peak_inside else 'outside'} "
            f"it, best-possible Dice {found.best_dice:.2f}, needs >= {MIN_BEST_DICE}): the model or "
            "the engine is broken",
            1,
        )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """``anodode info``: print the model (name, folder, contrasts, calibrated threshold, training summary)
    and the torch build and CUDA device as one JSON object; exit code 0, or 2 for a bad model bundle."""
    try:
        model = load_model(args.model)
    except BundleError as exc:
        return _fail(str(exc), 2)
    print(
        json.dumps(
            {
                "anodode": __version__,
                "model": model.name,
                "model_dir": str(args.model or default_model_dir()),
                "contrasts": list(model.config.features.contrasts),
                "threshold": model.config.calibration.threshold,
                "training": model.metadata.get("training", {}),
                "torch": torch.__version__,
                "cuda_available": torch.cuda.is_available(),
                "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            },
            indent=2,
        )
    )
    return 0


def _mm(point: tuple[float, ...] | list[float]) -> str:
    """A physical point as ``(x, y, z)`` in mm, one decimal."""
    return "(" + ", ".join(f"{float(v):.1f}" for v in point) + ")"


def _fail(message: str, code: int) -> int:
    print(f"anodode: error: {message}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    """The ``anodode`` argument parser: the ``score``, ``bids``, ``demo`` and ``info`` subcommands (module docstring),
    each with its handler as ``func``."""
    ap = argparse.ArgumentParser(
        prog="anodode",
        description="Unsupervised anomaly detection in brain MRI "
        "(diffusion-ODE likelihood over multi-scale features).",
    )
    ap.add_argument("--version", action="version", version=f"anodode {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", default=None, help="model bundle folder (default: the bundled model)")
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        p.add_argument(
            "--threshold",
            type=float,
            default=None,
            help="label threshold, >= 0 (default: the calibrated one)",
        )
        p.add_argument(
            "--preset",
            default="standard",
            help=f"one of {', '.join(PRESETS)}: solvers and slice density (default: %(default)s; "
            "docs/speed.md)",
        )
        p.add_argument("--quiet", action="store_true", help="no progress bar or summary line")

    def brain_extraction_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--brain-extraction",
            default="auto",
            choices=EXTRACTION_MODES,
            help="without a brain mask: auto (extract the brain when the scan does not look skull-stripped; "
            "default), always, never (use the non-background region)",
        )

    s = sub.add_parser(
        "score",
        help="score one or more 3-D scans",
        description="Score each INPUT: a 3-D image file (NIfTI, NRRD, MHA, ...), a DICOM series folder, or a "
        "folder of NIfTI/NRRD/MHA files (every image in it, not its subfolders); raw head scans or "
        "skull-stripped ones. Writes <stem>_anomaly, _label, _brainmask, _figure and _report per input and "
        "summary.csv/.json into --output-dir (README.md, 'Score your own scan').",
    )
    s.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image file, DICOM series folder, or folder of NIfTI/NRRD/MHA files",
    )
    s.add_argument(
        "--mask",
        action="append",
        default=None,
        metavar="MASK",
        help="brain mask on the input's grid (repeat once per input); default: extracted from a raw head "
        "scan, the non-background region of a skull-stripped one",
    )
    brain_extraction_option(s)
    s.add_argument(
        "--contrast",
        action="append",
        default=None,
        metavar="NAME=PATH",
        help="another contrast of the input for a multi-contrast model (e.g. t1ce=scan_t1ce.nii.gz), "
        "aligned with it; repeat once per input",
    )
    s.add_argument(
        "--output-dir",
        default="anodode_output",
        metavar="DIR",
        help="folder for the outputs and the summary, created if needed (default: %(default)s)",
    )
    common(s)
    s.set_defaults(func=cmd_score)
    b = sub.add_parser(
        "bids",
        help="BIDS-App: score a BIDS dataset's FLAIRs into BIDS derivatives (participant), summarise (group)",
    )
    b.add_argument("bids_dir", metavar="BIDS_DIR", help="the BIDS dataset (raw)")
    b.add_argument("output_dir", metavar="OUTPUT_DIR", help="the derivative dataset (created)")
    b.add_argument("analysis_level", choices=bids.LEVELS, help="participant: score; group: the summary")
    b.add_argument(
        "--participant-label",
        "--participant_label",
        nargs="+",
        default=None,
        metavar="L",
        help="participants to analyse (sub-<L> folders; default: all)",
    )
    b.add_argument("--session", nargs="+", default=None, metavar="S", help="sessions (default: all)")
    brain_extraction_option(b)
    common(b)
    b.set_defaults(func=cmd_bids)
    d = sub.add_parser("demo", help="score a synthetic phantom with the bundled model (offline)")
    d.add_argument(
        "--output-dir",
        default="demo_output",
        metavar="DIR",
        help="folder for the phantom and its outputs (default: %(default)s)",
    )
    common(d)
    d.set_defaults(func=cmd_demo)
    i = sub.add_parser("info", help="show the model, torch build and device")
    i.add_argument("--model", default=None)
    i.set_defaults(func=cmd_info)
    return ap


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_level(value: str) -> int:
    """The logging level named by ``$ANODODE_LOG``: one of ``LOG_LEVELS`` (any case) or a number; "" is
    WARNING. ValueError (one line) for anything else."""
    text = value.strip().upper()
    if not text:
        return logging.WARNING
    if text.isdigit():
        return int(text)
    if text in LOG_LEVELS:
        return getattr(logging, text)
    raise ValueError(f"ANODODE_LOG must be one of {', '.join(LOG_LEVELS)} or a number (got {value!r})")


class _ProgressSafeHandler(logging.Handler):
    """Log lines on stderr through ``tqdm.write``: a warning raised while a progress bar is drawn gets a line
    of its own, and the bar is redrawn below it (plain writes would land on the bar's line)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like SIGINT's KeyboardInterrupt so the same cleanup runs."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``anodode`` command: run the subcommand named in ``argv`` (default: ``sys.argv``).

    Returns the exit code; SIGTERM gives 143 and Ctrl-C 130, with one error line and no partial outputs.
    Log level from ``$ANODODE_LOG`` (default WARNING)."""
    args = build_parser().parse_args(argv)
    try:
        level = log_level(os.environ.get("ANODODE_LOG", ""))
    except ValueError as exc:
        return _fail(str(exc), 2)
    handler = _ProgressSafeHandler()
    handler.setFormatter(logging.Formatter("anodode: %(levelname)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return args.func(args)
    except Terminated:
        return _fail("terminated (SIGTERM); nothing of the unfinished scan was written", 128 + signal.SIGTERM)
    except KeyboardInterrupt:
        return _fail("interrupted; nothing of the unfinished scan was written", 130)
    except BrokenPipeError:
        # the reader of stdout went away (``anodode info | head``): stop quietly, as shell tools do; what was
        # written is complete (outputs are atomic) and later writes to stdout go nowhere
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE
    finally:
        signal.signal(signal.SIGTERM, previous)


def run() -> None:
    """The ``anodode`` command's entry point: :func:`main` in a process set up to score and exit
    (process_tuning.py: allocator thresholds, imported objects frozen, no interpreter teardown)."""
    process_tuning.tune_allocator()
    process_tuning.freeze_imported_objects()
    process_tuning.exit_now(main())


if __name__ == "__main__":
    run()
