"""Headless batch runs of ImageJ macros (``particleseg fiji run-macro``).

Two ways to run a macro:

* **once** (default): the macro runs one time with ``getArgument()`` = the ARGS given on the
  command line, and does its own loop over a folder (see
  ``fiji-scripts/Plugins/Particle Segmentation/Examples/Segment_Folder.ijm``). Progress is the
  Log output of the macro and of the commands (one line per segmented image).
* **per image** (``--input DIR``): as ImageJ's Process > Batch > Macro, the macro runs once per
  image of the folder with that image open and active (in batch mode, so nothing is shown),
  ``getArgument()`` = ``input=[PATH] output=[DIR] name=[STEM]`` plus the ARGS. A failing image
  is reported and the run goes on; a progress bar counts the images; a summary (and, with
  ``--output``, ``run-macro-summary.csv``) lists every image with its status, particle count
  and time.
"""

from __future__ import annotations

import fnmatch
import os
import sys
import time
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from ..errors import InputError
from ..io import IMAGE_SUFFIXES, check_outputs, list_images, write_csv
from . import commands as cmds
from .session import ImageJSession, MacroError, current


def quote_macro_string(text: str) -> str:
    """Quote a Python string as an ImageJ macro string literal."""
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_arguments(args: list[str]) -> str:
    """Join command-line ARGS into one macro argument.

    ``key=value`` tokens whose value has spaces are bracketed, as ImageJ writes options
    (``Macro.getValue`` reads them back).
    """
    out = []
    for a in args:
        if "=" in a:
            k, v = a.split("=", 1)
            if (" " in v or v == "") and not (v.startswith("[") and v.endswith("]")):
                v = f"[{v}]"
            out.append(f"{k}={v}")
        else:
            out.append(a)
    return " ".join(out)


def run_once(session: ImageJSession, macro: Path, args: list[str], stream=sys.stderr) -> dict:
    """Run ``macro`` once with ``args`` as its ``getArgument()`` and return a summary of the run.

    The summary (also printed as one line to ``stream``) holds the status, the error of a failed
    macro (a :class:`MacroError` is caught, not raised), the macro's return value, the number of
    Particle Segmentation commands it ran, the images segmented, the particles kept and the time.
    """
    code = _read_macro(macro)
    start_records = len(cmds.RECORDS)
    t0 = time.perf_counter()
    error = ""
    result = ""
    try:
        result = session.run_macro(code, format_arguments(args), name=macro.name)
    except MacroError as exc:
        error = str(exc)
    seconds = time.perf_counter() - t0
    records = cmds.RECORDS[start_records:]
    segmented = [
        r for r in records if r.get("images")
    ]  # Segment Particles... (1) and Batch Segment Folder... (its images)
    summary = {
        "macro": str(macro),
        "status": "failed" if error else "ok",
        "error": error,
        "result": result,
        "commands": len(records),
        "images_segmented": int(sum(r["images"] for r in segmented)),
        "particles": int(sum(r.get("kept", 0) for r in segmented)),
        "seconds": round(seconds, 2),
    }
    print(
        f"run-macro: {macro.name}: {summary['status']}"
        f"{' (' + error + ')' if error else ''}; {summary['commands']} Particle Segmentation command(s), "
        f"{summary['images_segmented']} image(s) segmented, {summary['particles']} particle(s) kept, "
        f"{seconds:.1f} s" + (f"; macro returned {result!r}" if result else ""),
        file=stream,
    )
    return summary


def list_inputs(folder: Path, pattern: str | None = None) -> list[Path]:
    """List the images of ``folder`` that ImageJ opens itself (TIFF, PNG, JPEG), matching ``pattern``.

    Raises :class:`InputError` when the folder does not exist or holds no such image.
    """
    if not folder.is_dir():
        raise InputError(f"{folder}: input folder not found")
    # the macro opens each file with ImageJ's open(): only what ImageJ 1.x reads itself
    files = [f for f in list_images([folder]) if f.suffix.lower() in IMAGE_SUFFIXES]
    if pattern:
        files = [f for f in files if fnmatch.fnmatch(f.name, pattern)]
    if not files:
        raise InputError(
            f"{folder}: no image files{' matching ' + pattern if pattern else ''} that ImageJ opens "
            "(TIFF, PNG, JPEG; for DM3/DM4, EMD, MRC and OME-Zarr use Batch Segment Folder... or "
            "particleseg segment)"
        )
    return files


def run_per_image(
    session: ImageJSession,
    macro: Path,
    files: list[Path],
    args: list[str],
    output: Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
    stream=sys.stderr,
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Run ``macro`` once per file, with the file open; returns the summary and the failures."""
    code = _read_macro(macro)
    summary_path = output / "run-macro-summary.csv" if output else None
    if summary_path is not None:
        check_outputs([summary_path], overwrite)
        output.mkdir(parents=True, exist_ok=True)
    extra = format_arguments(args)
    rows, failures = [], []
    bar = tqdm(files, desc=macro.name, unit="image", disable=not progress, file=stream)
    for f in bar:
        start_records = len(cmds.RECORDS)
        argument = f"input=[{f}] " + (f"output=[{output}] " if output else "") + f"name=[{f.stem}] " + extra
        # the prefix shares line 1 with the macro, so ImageJ's line numbers stay the user's
        prefix = f"setBatchMode(true); open({quote_macro_string(str(f))}); "
        t0 = time.perf_counter()
        status, error, result = "ok", "", ""
        try:
            result = session.run_macro(prefix + code, argument.strip(), name=macro.name)
        except MacroError as exc:
            status, error = "failed", str(exc) if f.name in str(exc) else f"{f.name}: {exc}"
            failures.append((str(f), error))
            tqdm.write(f"run-macro: error: {error}", file=stream)
        finally:
            session.close_all()
        records = cmds.RECORDS[start_records:]
        seg = [r for r in records if r.get("images")]
        rows.append(
            {
                "file": f.name,
                "status": status,
                "error": error,
                "result": result,
                "particles": int(sum(r.get("kept", 0) for r in seg)) if seg else None,
                "rejected": int(sum(r.get("rejected", 0) for r in seg)) if seg else None,
                "seconds": round(time.perf_counter() - t0, 3),
            }
        )
        bar.set_postfix(failed=len(failures), refresh=False)
    bar.close()
    summary = pd.DataFrame(rows, columns=["file", "status", "error", "result", "particles", "rejected", "seconds"])
    for col in ("particles", "rejected"):
        summary[col] = summary[col].astype("Int64")
    if summary_path is not None:
        write_csv(summary_path, summary, overwrite)
    ok = int((summary["status"] == "ok").sum())
    total = float(summary["seconds"].sum())
    particles = int(summary["particles"].fillna(0).sum())
    print(
        f"run-macro: {macro.name}: {ok} of {len(files)} image(s) ok, {len(failures)} failed, "
        f"{particles} particle(s) kept, {total:.1f} s ({total / max(len(files), 1):.2f} s per image)"
        + (f"; summary in {summary_path}" if summary_path else ""),
        file=stream,
    )
    for _, msg in failures[:10]:
        print(f"  failed: {msg}", file=stream)
    if len(failures) > 10:
        print(f"  ... and {len(failures) - 10} more", file=stream)
    return summary, failures


def _read_macro(path: Path) -> str:
    if not path.is_file():
        raise InputError(f"{path}: macro file not found")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read macro ({exc})") from None


def environ_summary() -> dict:
    """Return what a run used (for logs): Java home, display, ImageJ source."""
    s = current()
    return {
        "JAVA_HOME": os.environ.get("JAVA_HOME", ""),
        "DISPLAY": os.environ.get("DISPLAY", ""),
        "imagej": s.source if s else "",
        "kind": s.kind if s else "",
    }
