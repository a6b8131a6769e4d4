#!/usr/bin/env python
"""Peak memory of ``segment_image`` against image size, whole image against strips.

    python benchmarks/bench_memory.py                       # 1024^2 .. 8192^2, both paths
    python benchmarks/bench_memory.py --sizes 1024,2048 --report   # and write REPORT.md's section

Each run is a fresh child process: it builds the image (a simulated 1024x1024 SEM image with
agglomerated particles, repeated to the size), then runs
:func:`particleseg.pipeline.segment_image` with the shipped default model (ONNX Runtime) and
reports its peak resident memory (``VmHWM``, which counts every page the process held, also
those of memory-mapped files it read) before and after, and the seconds. ``whole`` forces the
whole-image path (``strips.MIN_PIXELS`` raised), ``strips`` is the default (strips above
2048x2048 pixels); at and below 2048x2048 both are the same path and run once. Run with
``nice -n 19`` on a shared machine; timings then include what other jobs took.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECTION = "## Memory end to end"


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


class _AnonPeak:
    """Peak of ``RssAnon`` (the process's own memory, without file-backed pages), sampled."""

    def __init__(self, every: float = 0.005):
        import threading

        self.peak, self._stop = _status_mib("RssAnon"), threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            self.peak = max(self.peak, _status_mib("RssAnon"))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _status_mib("RssAnon"))


def _reset_peak() -> bool:
    """Reset this process's ``VmHWM`` to its present RSS (Linux 4.0 and later)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def with_scale_bar(image):
    """Return the image with a burned-in scale bar and its label in the lower right, as micrographs carry.

    White, about an eighth of the width long, with "500 nm" above it (annotations are found,
    painted over and their particles rejected: the annotation path of the pipeline).
    """
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    h, w = image.shape
    pil = Image.fromarray(np.asarray(image, np.uint8))
    draw = ImageDraw.Draw(pil)
    x1, y1 = w - w // 32, h - h // 32
    draw.rectangle([x1 - w // 8, y1 - max(4, h // 200), x1, y1], fill=255)
    try:
        font = ImageFont.load_default(size=max(12, h // 40))
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    draw.text((x1 - w // 10, y1 - h // 200 - h // 30), "500 nm", fill=255, font=font)
    return np.asarray(pil)


def child(size: int, mode: str, tile_file: str, what: str = "image") -> dict:
    """One measurement in this (fresh) process: ``segment_image`` or ``segment_file`` (``what``)."""
    import numpy as np
    import pandas as pd

    from particleseg import pipeline, strips
    from particleseg.io import Calibration, write_tiff
    from particleseg.models import load_bundle

    if mode == "whole":
        strips.MIN_PIXELS = 1 << 62
    tile = np.load(tile_file)
    image = np.tile(tile, (size // tile.shape[0], size // tile.shape[1]))
    call = what
    what, _, extra = what.partition("+")
    if extra == "bar":
        image = with_scale_bar(image)
    bundle = load_bundle(None)
    params = pipeline.SegmentParams(progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        if what == "file":
            path = write_tiff(Path(tmp) / "image.tif", image, Calibration(2.0, "nm"))
            del image
        _reset_peak()
        before = _status_mib("VmHWM")
        anon = _AnonPeak()
        t = time.perf_counter()
        if what == "file":
            pipeline.segment_file(path, Path(tmp) / "out", bundle, params)
            table = pd.read_csv(Path(tmp) / "out" / "image_particles.csv")
            large = None
        else:
            seg = pipeline.segment_image(image, bundle, params)
            table, large = seg.table, isinstance(seg.labels, np.memmap)
        seconds = time.perf_counter() - t
        anon_peak = anon.stop()
    return {
        "size": size,
        "mode": mode,
        "what": call,
        "particles": int(len(table)),
        "kept": int(table["kept"].sum()),
        "strips": large,
        "before_mib": round(before, 1),
        "peak_mib": round(_status_mib("VmHWM"), 1),
        "anon_peak_mib": round(anon_peak, 1),
        "seconds": round(seconds, 1),
    }


def measure(sizes: list[int], modes: list[str], whats: list[str] = ("image",)) -> list[dict]:
    """Run :func:`child` in a fresh process for each call, size and path."""
    import numpy as np

    from particleseg.simulate import simulate_sem_image

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tile_file = os.path.join(tmp, "tile.npy")
        np.save(
            tile_file, simulate_sem_image((1024, 1024), rng=3, particle_size=24, coverage=0.3, empty_fraction=0).image
        )
        for what in whats:
            for size in sizes:
                for mode in modes:
                    if mode == "whole" and size * size <= 2048 * 2048 and "strips" in modes:
                        continue  # the same path
                    cmd = [sys.executable, __file__, "--child", str(size), mode, tile_file, what]
                    out = subprocess.run(cmd, capture_output=True, text=True)
                    if out.returncode:
                        error = (out.stderr.strip().splitlines() or ["?"])[-1]
                        row = {"size": size, "mode": mode, "what": what, "error": error}
                    else:
                        row = json.loads(out.stdout.strip().splitlines()[-1])
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    """Format the rows as a Markdown table."""
    lines = [
        "| call | image | path | particles | peak RSS (MiB) | MiB per Mpx | peak anonymous (MiB) | seconds |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        mpx = r["size"] ** 2 / 1e6
        path = r["mode"] if r["size"] ** 2 > 2048 * 2048 else "whole (below the threshold)"
        name, _, extra = r["what"].partition("+")
        call = f"segment_{name}" + (" (scale bar)" if extra == "bar" else "")
        if "error" in r:
            lines.append(f"| {call} | {r['size']}x{r['size']} | {path} | | failed: {r['error']} | | | |")
            continue
        lines.append(
            f"| {call} | {r['size']}x{r['size']} | {path} | {r['particles']} | {r['peak_mib']:.0f} | "
            f"{r['peak_mib'] / mpx:.0f} | {r['anon_peak_mib']:.0f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def report_text(rows: list[dict]) -> str:
    """Write the report's section: how it was measured, the table, the ratios."""
    import platform

    lines = [
        f"Device: {platform.machine()}, {os.cpu_count()} CPU cores, shared with other jobs (run at `nice -n 19`: "
        "the seconds include what other jobs took). Each row is a fresh Python process "
        "(`python benchmarks/bench_memory.py`): a simulated 1024x1024 SEM image (695 particles, agglomerated) "
        "repeated to the size, the shipped default model through ONNX Runtime, default parameters "
        "(automatic polarity and particle size, annotations, every filter); then `segment_image` (or "
        "`segment_file` on the image written as a TIFF, all outputs). *peak RSS*: `VmHWM` of the process, "
        "reset (`/proc/self/clear_refs`) after the image was built, so it counts the model, the image and "
        "everything the call held at its peak, also pages of memory-mapped files it read; *peak anonymous*: "
        "`RssAnon` sampled every 5 ms, the memory the process itself needs. *whole*: the whole-image path "
        "(`strips.MIN_PIXELS` raised), as before; *strips*: the default, for images above 2048x2048.",
        "",
        table(rows),
        "",
    ]
    by = {(r["what"], r["size"], r["mode"]): r for r in rows if "error" not in r}
    notes = []
    for (what, size, mode), r in sorted(by.items()):
        w = by.get((what, size, "whole"))
        if mode == "strips" and w and size * size > 2048 * 2048:
            notes.append(
                f"{size}x{size} ({what}): {w['peak_mib'] / 1024:.2f} GiB whole, {r['peak_mib'] / 1024:.2f} GiB "
                f"in strips ({w['peak_mib'] / r['peak_mib']:.1f}x less), {w['seconds']:.0f} s against "
                f"{r['seconds']:.0f} s"
            )
    if notes:
        lines += ["Whole image against strips: " + "; ".join(notes) + ".", ""]
    lines.append(
        "Reproduce: `nice -n 19 python benchmarks/bench_memory.py --report` (1.5 hours on the 2 busy cores here)"
    )
    return "\n".join(lines)


def write_report(text: str, path: Path) -> None:
    """Replace (or append) the section :data:`SECTION` of the report."""
    report = path.read_text() if path.exists() else ""
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    block = f"{SECTION}\n\n{text.strip()}\n\n"
    report = pattern.sub(lambda m: block, report) if pattern.search(report) else report.rstrip() + "\n\n" + block
    path.write_text(report.rstrip() + "\n")


def main(argv=None) -> None:
    """Run the benchmark from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--sizes", default="1024,2048,4096,8192", help="image sides, comma-separated")
    parser.add_argument("--modes", default="whole,strips", help="whole, strips or both")
    parser.add_argument(
        "--calls",
        default="image",
        help="image (segment_image), file (segment_file), both, or image,file; image+bar, file+bar: "
        "the image with a burned-in scale bar and label",
    )
    parser.add_argument("--report", action="store_true", help=f"write the table into REPORT.md's '{SECTION}'")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--from-json", nargs="+", help="no measuring: the rows of earlier --json files")
    parser.add_argument("--child", nargs=4, metavar=("SIZE", "MODE", "TILE", "CALL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1], args.child[2], args.child[3])))
        return
    if args.from_json:
        rows = [row for f in args.from_json for row in json.loads(Path(f).read_text())]
    else:
        calls = ["image", "file"] if args.calls == "both" else args.calls.split(",")
        if set(calls) - {"image", "file", "image+bar", "file+bar"}:
            parser.error(f"--calls {args.calls}: choose image, file, both or image,file (+bar: with a scale bar)")
        rows = measure([int(s) for s in args.sizes.split(",")], args.modes.split(","), calls)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.report:
        write_report(report_text(rows), HERE / "REPORT.md")


if __name__ == "__main__":
    main()
