"""The ``particleseg`` command line.

Each workflow registers its subcommand in a module of this package (a ``register(subparsers)``
function that adds a parser whose ``func`` returns the exit status). Errors meant for the user
(:class:`~particleseg.errors.ParticlesegError`) are printed as one line without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import __version__, params
from ..errors import ParticlesegError, notes_to

# subcommand modules, in the order ``particleseg --help`` lists them
SUBCOMMANDS = ("segment", "models", "evaluate", "fiji", "train", "train_from_scratch", "sims", "fibsem")


def build_parser() -> argparse.ArgumentParser:
    """Build the ``particleseg`` argument parser, each subcommand of :data:`SUBCOMMANDS` registered."""
    parser = argparse.ArgumentParser(
        prog="particleseg",
        description="Deep-learning segmentation and measurement of particles in microscopy images.",
    )
    parser.add_argument("--version", action="version", version=f"particleseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``particleseg`` command line on ``argv`` (default: ``sys.argv[1:]``); return the exit status.

    A :class:`~particleseg.errors.ParticlesegError` is one ``particleseg: error:`` line on stderr (status 1), Ctrl-C
    ``particleseg: interrupted`` (status 130); particleseg's warnings are printed as one-line notes.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off the terminal
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with notes_to(_to_stderr, others=_to_stderr):
            return int(args.func(args) or 0)
    except ParticlesegError as exc:
        print(f"particleseg: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("particleseg: interrupted", file=sys.stderr)
        return 130


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def parse_range(text: str) -> tuple[float | None, float | None]:
    """``"MIN:MAX"`` with either side optional (``"10:"``, ``":0.9"``) -> (min, max)."""
    if ":" not in text:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX (either may be empty), got {text!r}")
    lo, hi = text.split(":", 1)
    try:
        return (float(lo) if lo.strip() else None, float(hi) if hi.strip() else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers in MIN:MAX, got {text!r}") from None


def parse_crop_rows(text: str, auto: bool = True) -> int | str:
    """``--crop-rows``: a number of rows at the bottom, or (with ``auto``) ``auto``.

    ``auto`` detects the data bar (:func:`particleseg.params.parse_crop_rows`).
    """
    if not auto and str(text).strip().lower() in ("auto", ""):
        raise argparse.ArgumentTypeError(f"expected a number of rows, got {text!r}")
    try:
        return params.parse_crop_rows(text)
    except ParticlesegError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("crop_rows: ", "--crop-rows: ", 1)) from None
