"""Helpers the benchmark scripts share: the machine's description and their REPORT.md sections.

Each benchmark owns a section of ``benchmarks/REPORT.md`` between two HTML comments and
replaces only that section when it reports (``--report``).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

REPORT = Path(__file__).resolve().parent / "REPORT.md"


def cpu_info() -> str:
    """Describe the CPU and the cores this process may use."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = re.search(r"model name\s*:\s*(.*)", text)[1].strip()
    except (OSError, TypeError):
        model = "CPU"
    return f"{model}, {len(os.sched_getaffinity(0))} usable cores, {os.cpu_count()} in all"


def run_record() -> dict:
    """Start a benchmark's result: the date, the machine and the load before it runs."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": cpu_info(),
        "load_before": round(os.getloadavg()[0], 2),
    }


def reproduce_command(script: str, parser, args, options) -> str:
    """Return the command that reruns a benchmark as it ran.

    ``--report``, every option of ``options`` (argument names) not at its default in ``parser``,
    and ``--only`` when given.
    """
    given = "".join(
        f" --{name.replace('_', '-')} {getattr(args, name)}"
        for name in options
        if getattr(args, name) != parser.get_default(name)
    )
    only = f" --only {args.only}" if getattr(args, "only", None) else ""
    return f"python benchmarks/{script} --report{given}{only}"


def write_section(section: str, begin: str, end: str, path: Path = REPORT) -> None:
    """Replace the section between the markers ``begin`` and ``end`` of the report (or append it)."""
    text = path.read_text() if path.exists() else "# particleseg benchmark report\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
