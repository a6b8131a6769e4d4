"""Volume fractions of the phases, per slice and for the stack, as a table and a plot."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..io import write_atomic


def volume_fractions(counts: dict[int, np.ndarray], classes: Sequence[str]) -> pd.DataFrame:
    """Fraction of each phase per slice and over the stack (last row, ``slice == "stack"``).

    Computed from per-slice pixel counts (index 0: unsegmented pixels, left out).
    """
    rows = []
    total = np.zeros(len(classes) + 1, np.int64)
    for z in sorted(counts):
        c = np.asarray(counts[z], np.int64)
        total += c
        n = c[1:].sum()
        rows.append(
            {"slice": z, "pixels": int(n), **{name: (c[i + 1] / n if n else np.nan) for i, name in enumerate(classes)}}
        )
    n = total[1:].sum()
    rows.append(
        {
            "slice": "stack",
            "pixels": int(n),
            **{name: (total[i + 1] / n if n else np.nan) for i, name in enumerate(classes)},
        }
    )
    return pd.DataFrame(rows, columns=["slice", "pixels", *classes])


def plot_volume_fractions(fractions: pd.DataFrame, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Plot the phase fractions against slice number, with the stack's fractions as dashed lines.

    The plot is written as a PNG to ``path`` (atomically); returns its path.
    """
    import matplotlib  # heavy framework: imported when a plot is drawn

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    classes = [c for c in fractions.columns if c not in ("slice", "pixels")]
    per = fractions[fractions["slice"] != "stack"]
    stack_row = fractions[fractions["slice"] == "stack"]
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    for c in classes:
        (line,) = ax.plot(per["slice"].astype(int), per[c], "o-", ms=3, label=c)
        if len(stack_row) and np.isfinite(stack_row[c].iloc[0]):
            ax.axhline(stack_row[c].iloc[0], color=line.get_color(), ls="--", lw=0.8)
    ax.set_xlabel("slice")
    ax.set_ylabel("volume fraction")
    ax.set_ylim(0, 1)
    ax.legend(loc="best", fontsize=8)
    ax.set_title("phase fractions per slice (dashed: whole stack)")
    out = write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"), overwrite)
    plt.close(fig)
    return out
