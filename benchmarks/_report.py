"""Helpers the benchmark scripts share: the machine's description and their REPORT.md sections.

Each benchmark owns a section of ``benchmarks/REPORT.md`` between two HTML comments and
replaces only that section when it reports (``--report``).
"""

from __future__ import annotations

import os
import re
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


def write_section(section: str, begin: str, end: str, path: Path = REPORT) -> None:
    """Replace the section between the markers ``begin`` and ``end`` of the report (or append it)."""
    text = path.read_text() if path.exists() else "# particleseg benchmark report\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
