"""The command-line options the training CLIs share, each declared and validated here once.

train, evaluate, calibrate, crossval, heldout and report build their parsers with :func:`parser` and add
the options they take with the ``add_*`` functions. A bad command line is one line on stderr,
``error: MESSAGE``, and exit status 2 (argparse's usage block is not printed; ``--help`` shows it).
Validated while parsing: ``--device`` (:func:`device_option`, the engine's ``pipeline.resolve_device``),
``--contrast`` (``cases.parse_contrasts``), and ``--preset`` (``pipeline.PRESETS``).
``--data`` sources are checked when the cases are gathered (``train.gather_cases``), with the same one-line
error and exit 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

DEVICE_HELP = (
    "cpu, cuda, cuda:N or auto (CUDA when torch sees a GPU); under torchrun each rank on CUDA "
    "uses cuda:LOCAL_RANK"
)
DATA_HELP = (
    "case sources: a folder (layout detected), kind:path with kind in brats2021, brats2023, msd, "
    "csv, or brats-family / wmh-clinical (../shared/data)"
)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: MESSAGE`` on stderr, exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message}\n")


def parser(doc: str | None) -> Parser:
    """A training CLI's parser, its module docstring as the description (shown as written)."""
    return Parser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def device_option(value: str) -> str:
    """``--device``: ``value`` when ``pipeline.resolve_device`` accepts it here (a known device, and a GPU
    where CUDA is asked for), else an argparse error."""
    from AnoDODELib.pipeline import resolve_device  # here: training.report parses without torch

    try:
        resolve_device(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def contrast_option(value: str) -> tuple[str, ...]:
    """``--contrast``: comma-separated contrast names, primary first (``cases.parse_contrasts``)."""
    from .cases import parse_contrasts

    try:
        return parse_contrasts(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_device(ap: argparse.ArgumentParser, default: str = "cpu") -> None:
    ap.add_argument(
        "--device", type=device_option, default=default, help=f"{DEVICE_HELP} (default: {default})"
    )


def add_data(ap: argparse.ArgumentParser, default: Sequence[str], selection: bool = True) -> None:
    """``--data`` (default ``default``); with ``selection`` also ``--cases``, ``--exclude`` and
    ``--resample-seg``."""
    ap.add_argument(
        "--data",
        nargs="+",
        default=list(default),
        metavar="SRC",
        help=f"{DATA_HELP}; default: {' '.join(default)}",
    )
    if selection:
        ap.add_argument("--cases", nargs="*", default=None, metavar="NAME", help="only these case names")
        ap.add_argument("--exclude", nargs="*", default=[], metavar="NAME", help="case names to leave out")
        ap.add_argument(
            "--resample-seg",
            action="store_true",
            help="resample a seg that is not on its image's grid onto it (nearest neighbour, by "
            "physical coordinates) instead of refusing the case",
        )


def add_contrast(ap: argparse.ArgumentParser, model_given: bool = False) -> None:
    """``--contrast``, parsed to a tuple of names. ``model_given``: the CLI reads a trained model, whose own
    contrasts are the default (None) and the only valid value."""
    if model_given:
        ap.add_argument(
            "--contrast",
            type=contrast_option,
            default=None,
            help="the contrast(s) the model reads, comma-separated (default and only valid "
            "value: the model's own, from its model.json)",
        )
    else:
        ap.add_argument(
            "--contrast",
            type=contrast_option,
            default=("flair",),
            help="the contrast(s) the model reads, comma-separated, primary first: flair "
            "(default), t1, t1ce, t2, e.g. flair,t1ce (several contrasts become feature "
            "channels; only the cases that have all of them take part)",
        )


def add_cache(ap: argparse.ArgumentParser) -> None:
    """``--cache`` (a preprocessing cache folder, default none: preprocess in memory) and ``--workers``."""
    ap.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="preprocessing cache folder (e.g. cache/preprocess); default: preprocess in memory",
    )
    ap.add_argument("--workers", type=int, default=1, help="processes building the cache (default: 1)")


def add_preset(ap: argparse.ArgumentParser) -> None:
    from AnoDODELib.pipeline import PRESETS

    ap.add_argument(
        "--preset", default="standard", choices=list(PRESETS), help="the scoring preset (default: standard)"
    )
