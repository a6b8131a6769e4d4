"""The ratio plots of a SIMS run (``ratios.png``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import write_atomic
from .isotopes import REFERENCE, ratio_columns


def plot_ratios(
    particles: pd.DataFrame,
    path: str | os.PathLike,
    truth: pd.DataFrame | None = None,
    overwrite: bool = False,
    title: str = "",
) -> Path:
    """Draw the ratio plots of a run's particles as a PNG.

    The plots are 235U/238U against 238U net counts (with uncertainties), the distribution of
    235U/238U (counts-weighted and not), and 234U/238U and 236U/238U against 235U/238U. With
    ``truth`` (a simulator's ``truth.csv``) the true values are drawn too.
    """
    import matplotlib  # a plotting framework: loaded only to draw

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5), layout="constrained")
    r5, e5 = ratio_columns("235U")
    t = particles
    ok = t[r5].notna() & (t[f"{REFERENCE}_net"] > 0) if len(t) else np.zeros(0, bool)
    t = t[ok] if len(t) else t
    ax = axes[0, 0]
    if len(t):
        ax.errorbar(
            t[f"{REFERENCE}_net"], t[r5], yerr=t[e5], fmt="o", ms=3, alpha=0.6, elinewidth=0.7, label="particles"
        )
    if truth is not None and len(truth):
        ax.plot(truth[f"{REFERENCE}_expected"], truth[r5], "x", color="k", ms=4, alpha=0.6, label="truth")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("238U net counts")
    ax.set_ylabel("235U/238U")
    _legend(ax)
    ax = axes[0, 1]
    vals = t[r5].to_numpy(float) if len(t) else np.zeros(0)
    vals = vals[vals > 0]
    tv = truth[r5].to_numpy(float) if truth is not None and len(truth) else np.zeros(0)
    allv = np.concatenate([vals, tv[tv > 0]])
    if len(allv):
        bins = np.logspace(np.log10(allv.min()) - 0.1, np.log10(allv.max()) + 0.1, 50)
        ax.hist(vals, bins=bins, alpha=0.6, label=f"recovered ({len(vals)})")
        if len(tv):
            ax.hist(tv[tv > 0], bins=bins, histtype="step", color="k", label=f"truth ({len(tv)})")
        ax.set_xscale("log")
    ax.set_xlabel("235U/238U")
    ax.set_ylabel("particles")
    _legend(ax)
    for ax, iso in zip(axes[1], ("234U", "236U")):
        rc, ec = ratio_columns(iso)
        if len(t) and rc in t and t[rc].notna().any():
            ax.errorbar(
                t[r5], t[rc], xerr=t[e5], yerr=t[ec], fmt="o", ms=3, alpha=0.5, elinewidth=0.5, label="particles"
            )
        if truth is not None and len(truth) and rc in truth:
            ax.plot(truth[r5], truth[rc], "x", color="k", ms=4, alpha=0.6, label="truth")
        ax.set_xscale("log")
        ax.set_xlabel("235U/238U")
        ax.set_ylabel(f"{iso}/238U")
        _legend(ax)
    fig.suptitle(title or f"{len(particles)} particles")
    out = write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"), overwrite)
    plt.close(fig)
    return out


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8)
