"""``particleseg fiji``: the Fiji/ImageJ bridge on the command line.

particleseg fiji install --fiji DIR [--env] [--overwrite]
particleseg fiji run-macro MACRO.ijm [--fiji DIR | --ij-jar JAR] [--input DIR [--output DIR]] [ARGS ...]
particleseg fiji gui [--fiji DIR | --ij-jar JAR]
particleseg fiji check [--fiji DIR | --ij-jar JAR] [--start]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from ..errors import InputError

# The subcommand's machinery (the Fiji bridge, whose package loads NumPy and pandas) is imported in
# the functions that run it, not at the top: registering the options loads no NumPy, so --help stays
# fast (docs/architecture.md, Lazy imports).


def _add_imagej_options(p, suppress: bool = False) -> None:
    d = {"default": argparse.SUPPRESS} if suppress else {}
    g = p.add_mutually_exclusive_group() if not suppress else p
    g.add_argument(
        "--fiji",
        metavar="DIR|ENDPOINT",
        help="a Fiji.app folder, or a Maven endpoint such as sc.fiji:fiji (started through pyimagej)",
        **d,
    )
    g.add_argument(
        "--ij-jar",
        metavar="JAR",
        help="a plain ImageJ 1.x jar (default: $PARTICLESEG_IJ_JAR or /usr/share/java/ij.jar)",
        **d,
    )


def register(sub) -> None:
    """Add the ``fiji`` subcommand (``install``, ``run-macro``, ``gui``, ``check``) and its options to ``sub``."""
    p = sub.add_parser(
        "fiji",
        help="Fiji/ImageJ bridge: install the commands, run macros headless",
        description="Plugins > Particle Segmentation for Fiji and ImageJ: install the scripts into a "
        "Fiji, run ImageJ macros that call the commands headless over folders, open ImageJ "
        "with the commands, check the setup. See docs/fiji.md.",
    )
    fsub = p.add_subparsers(dest="fiji_command", metavar="ACTION")
    fsub.required = True

    q = fsub.add_parser(
        "install",
        help="copy fiji-scripts/ into a Fiji installation",
        description="Copy the SciJava scripts and example macros of fiji-scripts/ into "
        "FIJI/scripts/Plugins/Particle Segmentation/ (the menu Plugins > Particle Segmentation).",
    )
    q.add_argument("--fiji", required=True, metavar="DIR", help="the Fiji.app folder")
    q.add_argument(
        "--env", action="store_true", help="also write environment.yml to FIJI/config/ for Fiji's Python mode"
    )
    q.add_argument("--overwrite", action="store_true", help="replace installed files that differ")
    q.set_defaults(func=run_install)

    q = fsub.add_parser(
        "run-macro",
        help="run an ImageJ macro headless (batch over folders)",
        description="Run an ImageJ macro headless (ImageJ 1.x under a private Xvfb, or Fiji headless through "
        "pyimagej). Without --input the macro runs once with getArgument() = ARGS; with --input it "
        "runs once per image of the folder with the image open, as Process > Batch > Macro, "
        "with a progress bar, going on past failing images, and a summary.",
        epilog="ARGS are key=value words passed to the macro (getArgument(); read them with "
        'call("ij.Macro.getValue", getArgument(), "key", "default")). Options may come before or after MACRO.',
    )
    q.add_argument("macro", metavar="MACRO.ijm", help="the macro file")
    _add_imagej_options(q)
    q.add_argument("--input", metavar="DIR", help="run the macro once per image of this folder")
    q.add_argument(
        "--output", metavar="DIR", help="passed to the macro as output=DIR; run-macro-summary.csv goes there"
    )
    q.add_argument("--pattern", metavar="GLOB", help="with --input: only files whose name matches (e.g. '*.tif')")
    q.add_argument("--overwrite", action="store_true", help="replace an existing run-macro-summary.csv")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="key=value arguments for the macro")
    q.set_defaults(func=run_macro)

    q = fsub.add_parser(
        "gui",
        help="open ImageJ/Fiji with the Particle Segmentation menu",
        description="Start ImageJ 1.x (or Fiji through pyimagej) with its window and "
        "Plugins > Particle Segmentation; returns when ImageJ is closed. Needs a desktop.",
    )
    _add_imagej_options(q)
    q.set_defaults(func=run_gui)

    q = fsub.add_parser(
        "check",
        help="report Java, display, ImageJ and pyimagej; optionally start ImageJ",
        description="Report what the bridge would use; with --start, start ImageJ and run Models...",
    )
    _add_imagej_options(q)
    q.add_argument("--start", action="store_true", help="start ImageJ and run a macro calling Models...")
    q.set_defaults(func=run_check)


# ------------------------------------------------------------------------------------------


def run_install(args) -> int:
    """Run ``particleseg fiji install``: copy the plugin's files into a Fiji installation; return 0."""
    from ..fiji.install import install

    copied, same = install(args.fiji, overwrite=args.overwrite, env=args.env)
    for p in copied:
        print(f"installed {p}")
    print(f"{len(copied)} file(s) installed, {len(same)} already up to date, in {Path(args.fiji)}")
    print(
        "next: in Fiji, Edit > Options > Python... : build the environment from "
        + ("config/environment.yml" if args.env else "particleseg's environment.yml")
        + ", tick 'Launch in Python mode', restart Fiji; then Plugins > Particle Segmentation"
    )
    return 0


def _split_remainder(args) -> None:
    """Options given after MACRO land in ``args.args`` (REMAINDER); take them out."""
    p = argparse.ArgumentParser(add_help=False)
    _add_imagej_options(p, suppress=True)
    p.add_argument("--input", default=argparse.SUPPRESS)
    p.add_argument("--output", default=argparse.SUPPRESS)
    p.add_argument("--pattern", default=argparse.SUPPRESS)
    p.add_argument("--overwrite", action="store_true", default=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS)
    rest = list(args.args or [])
    if rest and rest[0] == "--":
        rest = rest[1:]
    known, leftover = p.parse_known_args(rest)
    for k, v in vars(known).items():
        setattr(args, k, v)
    unknown = [a for a in leftover if a.startswith("--")]
    if unknown:
        raise InputError(f"{unknown[0]}: unknown option of run-macro (macro arguments are key=value words)")
    args.args = leftover
    if getattr(args, "fiji", None) and getattr(args, "ij_jar", None):
        from ..fiji.environment import FijiError

        raise FijiError("give either --fiji or --ij-jar, not both")


def run_macro(args) -> int:
    """Run ``particleseg fiji run-macro``: run an ImageJ macro headless, once or per input image.

    Returns the exit status (1 when the macro failed, for an image or at all), after which the process leaves
    without waiting for ImageJ's threads (:func:`_flush_and_exit`).
    """
    from ..fiji import batch
    from ..fiji.session import start

    _split_remainder(args)
    macro = Path(args.macro)
    if not macro.is_file():
        raise InputError(f"{macro}: macro file not found")
    files = batch.list_inputs(Path(args.input), args.pattern) if args.input else None
    output = Path(args.output) if args.output else None
    t0 = time.perf_counter()
    session = start(fiji=args.fiji, ij_jar=args.ij_jar, mode="headless")
    print(
        f"run-macro: ImageJ ready ({session.kind}, {session.source}) in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    if files is None:
        extra = list(args.args)
        if output is not None:
            extra.append(f"output={output}")
        summary = batch.run_once(session, macro, extra)
        code = 0 if summary["status"] == "ok" else 1
    else:
        _, failures = batch.run_per_image(
            session, macro, files, list(args.args), output=output, progress=not args.quiet, overwrite=args.overwrite
        )
        code = 1 if failures else 0
    _flush_and_exit(code)
    return code


def _flush_and_exit(code: int) -> None:
    """Leave without waiting for ImageJ's AWT threads (windows of a headless run)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if os.environ.get("PARTICLESEG_NO_HARD_EXIT"):
        return
    os._exit(code)


def run_gui(args) -> int:
    """Run ``particleseg fiji gui``: open ImageJ with its user interface; return 0 once it is closed.

    Needs a display; the process then leaves without waiting for ImageJ's threads (:func:`_flush_and_exit`).
    """
    from ..fiji.environment import FijiError
    from ..fiji.session import start

    if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        raise FijiError("no display: 'particleseg fiji gui' needs a desktop (DISPLAY is not set)")
    session = start(fiji=args.fiji, ij_jar=args.ij_jar, mode="gui")
    if session.kind == "imagej1":
        print("ImageJ is open: Plugins > Particle Segmentation; close ImageJ to return", file=sys.stderr)
        session.wait_until_closed()
    _flush_and_exit(0)
    return 0


def run_check(args) -> int:
    """Run ``particleseg fiji check``: print what running ImageJ needs and whether it is there; return the status."""
    from ..fiji import environment as env

    ok = True

    def line(name, value, good=True):
        nonlocal ok
        ok &= good
        print(f"{'ok  ' if good else 'FAIL'} {name:10s} {value}")

    try:
        home = env.find_java(args.fiji if args.fiji and Path(args.fiji).is_dir() else None)
        line("java", f"{home} (Java {env.java_major_version(home) or '?'})")
    except env.FijiError as exc:
        line("java", str(exc), False)
    disp = os.environ.get("DISPLAY")
    if disp:
        line("display", f"DISPLAY={disp}")
    else:
        xvfb = shutil.which("Xvfb")
        line(
            "display",
            "none; Xvfb "
            f"{'at ' + xvfb + ' will be started for ImageJ 1.x' if xvfb else 'not installed (apt-get install xvfb)'}",
            bool(xvfb) or bool(args.fiji),
        )
    if args.fiji:
        if env.is_endpoint(args.fiji):
            line(
                "fiji",
                f"endpoint {args.fiji} (pyimagej resolves it from the SciJava Maven repository; needs the network)",
            )
        else:
            try:
                line("fiji", str(env.check_fiji_dir(args.fiji)))
            except env.FijiError as exc:
                line("fiji", str(exc), False)
    else:
        try:
            jar = env.find_ij_jar(args.ij_jar)
            env.check_ij_jar(jar)
            line("imagej", str(jar))
        except env.FijiError as exc:
            line("imagej", str(exc), False)
    for mod in ("jpype", "scyjava", "imagej"):
        try:
            from importlib import metadata  # slow to import (about 50 ms), needed by this check only

            name = {"jpype": "JPype1", "imagej": "pyimagej"}.get(mod, mod)
            line(name.lower(), metadata.version(name))
        except Exception:  # noqa: BLE001
            line(name.lower(), "not installed (pip install 'particleseg[fiji]')", mod == "imagej" and not args.fiji)
    if args.start and ok:
        from ..fiji.session import start

        t0 = time.perf_counter()
        session = start(fiji=args.fiji, ij_jar=args.ij_jar, mode="headless")
        session.run_macro('run("Models...");')
        line("started", f"{session.kind} from {session.source} in {time.perf_counter() - t0:.1f} s; Models... ran")
        _flush_and_exit(0 if ok else 1)
    return 0 if ok else 1
