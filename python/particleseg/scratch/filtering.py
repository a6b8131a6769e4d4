"""Stage 4 of the from-scratch workflow: the artifact filter of the fake training pairs.

The CycleGAN does not render every simulated particle: some come out as faint shapes or not at
all. Such particles are removed from the training mask when their mean intensity in the fake
micrograph lies on the background side of a global threshold of that micrograph (Li's minimum
cross entropy by default; Otsu, mean or median as options), so that masks and images agree
(:func:`particleseg.postprocess.intensity_filter`, Rühle et al. 2021).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import read_array, write_atomic, write_csv
from .grids import outline_overlay, save_grid

STAGE = "stage 4, artifact filter"
METHODS = ("li", "otsu", "mean", "median", "none")


def filter_pair(labels: np.ndarray, image: np.ndarray, method: str = "li", polarity: str = "bright"):
    """Drop the particles of ``labels`` whose mean intensity in ``image`` fails the threshold.

    Returns
    -------
    kept : (Y, X) int32 labels (relabelled 1..k), dropped : (Y, X) int32 labels of the
    removed particles, threshold : float (NaN for ``none``)
    """
    from ..postprocess import intensity_filter, relabel_sequential

    labels = np.asarray(labels, np.int32)
    if method == "none" or labels.max() == 0:
        return labels, np.zeros_like(labels), float("nan")
    ids, keep, thr = intensity_filter(labels, image, method, polarity)
    dropped_ids = ids[~keep]
    drop = np.isin(labels, dropped_ids)
    return relabel_sequential(np.where(drop, 0, labels)), np.where(drop, labels, 0), thr


def filter_pairs(
    label_paths: Sequence[Path],
    image_paths: Sequence[Path],
    workdir: str | os.PathLike,
    method: str = "li",
    polarity: str = "bright",
    progress: bool = True,
    min_kept: float = 0.0,
) -> list[Path]:
    """Filter every fake pair into ``workdir/labels/NNNNN.tif`` (resumable).

    Also writes ``summary.csv`` (particles before and after, threshold per pair),
    ``summary.json`` and ``samples.png`` (fake micrographs with kept particles outlined in red,
    dropped in blue).


    Raises InputError when no particle survives, or fewer than the fraction ``min_kept`` of
    all particles: the fake micrographs do not show the simulated particles (a CycleGAN that
    inverted the contrast, or the wrong polarity), and training on them would teach nothing.
    """
    import pandas as pd
    import tifffile
    from tqdm.auto import tqdm

    if method not in METHODS:
        raise InputError(f"{method}: unknown filter method ({STAGE}: choose {', '.join(METHODS)})")
    workdir = Path(workdir)
    out = workdir / "labels"
    out.mkdir(parents=True, exist_ok=True)
    rows, outs, tiles = [], [], []
    for i, (lp, ip) in enumerate(
        tqdm(list(zip(label_paths, image_paths)), desc="stage 4/5 artifact filter", unit="pair", disable=not progress)
    ):
        o = out / lp.name
        labels = read_array(lp).astype(np.int32)
        image = read_array(ip)
        kept, dropped, thr = filter_pair(labels, image, method, polarity)
        if not o.exists():
            write_atomic(
                o, lambda tmp, k=kept: tifffile.imwrite(tmp, k.astype(np.uint16), compression="zlib"), overwrite=True
            )
        rows.append(
            {
                "pair": lp.stem,
                "particles": int(labels.max()),
                "kept": int(kept.max()),
                "threshold": thr,
                "foreground_before": float((labels > 0).mean()),
                "foreground_after": float((kept > 0).mean()),
            }
        )
        outs.append(o)
        if i < 16:
            tiles.append(outline_overlay(image, kept, dropped=dropped))
    table = pd.DataFrame(rows)
    write_csv(workdir / "summary.csv", table, overwrite=True)
    total, kept_total = int(table["particles"].sum()), int(table["kept"].sum())
    summary = {
        "pairs": len(table),
        "method": method,
        "polarity": polarity,
        "particles": total,
        "kept": kept_total,
        "kept_fraction": kept_total / total if total else 0.0,
        "empty_after_filter": int((table["kept"] == 0).sum()),
    }
    write_atomic(workdir / "summary.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2)), overwrite=True)
    save_grid(workdir / "samples.png", tiles, columns=4, gap=4)
    if total and (kept_total == 0 or kept_total < min_kept * total):
        other = "dark" if polarity == "bright" else "bright"
        what = (
            f"removed all {total} particles"
            if kept_total == 0
            else f"kept only {kept_total} of {total} particles ({100 * kept_total / total:.1f} %, "
            f"{summary['empty_after_filter']} pairs empty)"
        )
        raise InputError(
            f"{workdir}: the {method} filter {what} of the {len(table)} fake pairs "
            f"({STAGE}: the fake micrographs do not show the particles {polarity}er than the background, "
            f"see {workdir.parent / '3_cyclegan' / 'samples.png'}; train the CycleGAN longer (--cyclegan-steps, "
            f"--redo cyclegan) with the identity loss, check --polarity (try {other}), "
            f"or lower --min-kept-fraction)"
        )
    return outs
