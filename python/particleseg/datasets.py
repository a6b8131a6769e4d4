"""Locating the real TiO2 SEM data set used for evaluation, and its fixed train/validation split.

The data (Rühle et al. 2021, CC BY-NC-ND 4.0) lives outside the repository, by default in
``../shared/datasets/tio2-sem`` relative to the project root, or where ``$PARTICLESEG_TIO2``
points. It is read, never copied, and no model trained on it is shipped.

The split is fixed once for every experiment of the project: sorted by name, every fourth
image starting with the fourth is a validation image (8 of 32), the rest are training images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import metrics
from .io import read_array
from .models import Bundle, load_bundle
from .pipeline import SegmentParams, segment_image
from .postprocess import label_mask

TIO2_CROP_ROWS = 712  # rows 712-767 hold the microscope's data bar


def tio2_root() -> Path:
    """Folder of the TiO2 data set (it may not exist)."""
    env = os.environ.get("PARTICLESEG_TIO2")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "tio2-sem"


@dataclass(frozen=True)
class Tio2Item:
    """One image of the TiO2 data set: its name, the image, its manual mask and its keep mask (or None)."""

    stem: str
    image: Path
    mask: Path
    keep_mask: Path | None


def tio2_items(root: str | os.PathLike | None = None, split: str = "all") -> list[Tio2Item]:
    """Images with their manual and keep masks; ``split`` is ``all``, ``train`` or ``validation``."""
    if split not in ("all", "train", "validation"):
        raise ValueError(f"split {split!r}: choose all, train or validation")
    root = Path(root) if root else tio2_root()
    images = sorted((root / "images").glob("*.tif"))
    if not images:
        raise FileNotFoundError(f"{root}: TiO2 data set not found (expected images/*.tif)")
    items = []
    for i, img in enumerate(images):
        is_val = i % 4 == 3
        if split == "train" and is_val or split == "validation" and not is_val:
            continue
        keep = root / "keep_masks" / f"{img.stem}_cm.tif"
        items.append(Tio2Item(img.stem, img, root / "masks" / f"{img.stem}_m.tif", keep if keep.exists() else None))
    return items


def tio2_outlines(root: str | os.PathLike | None = None) -> list[Path]:
    """List the 40 hand-drawn single-particle outlines (input of the from-scratch workflow)."""
    root = Path(root) if root else tio2_root()
    return sorted((root / "outlines").glob("*.tif"))


def score_labels(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Score a label image ``pred`` against the label image ``truth`` as :func:`evaluate_tio2` does.

    The per-image scores are foreground IoU, instance IoU averaged over ground-truth and over
    segmented particles, F1 at IoU 0.5 and both particle counts.
    """
    match = metrics.match_instances(truth, pred, 0.5)
    return {
        "foreground_iou": metrics.foreground_iou(pred > 0, truth > 0),
        "instance_iou": metrics.instance_iou(pred, truth, average="truth"),
        "instance_iou_pred": metrics.instance_iou(pred, truth, average="pred"),
        "f1_iou50": match["f1"],
        "n_truth": int(truth.max()),
        "n_pred": int(len(np.unique(pred)) - 1),
    }


def evaluate_tio2(bundle=None, split: str = "all", params=None, root=None, progress: bool = True):
    """Segment the TiO2 images (cropped to 1024x712) and score them against the manual masks.

    Scores per image: foreground IoU, instance IoU averaged over ground-truth particles
    (4-connected labels of the manual mask; best IoU with any segmented particle, 0 if none:
    the floor check of the shipped model) and over segmented particles (the publication's
    convention), F1 at IoU 0.5, and the particle counts. Particles are scored as segmented,
    before the border and measurement filters, which are measurement choices.

    Returns a pandas DataFrame, one row per image.
    """
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    # the images are cropped already; the caller's params stay as they are
    params = replace(params or SegmentParams(), crop_rows=0, progress=False)
    rows = []
    for item in tqdm(tio2_items(root, split), desc=f"TiO2 {split}", disable=not progress):
        image = read_array(item.image)[:TIO2_CROP_ROWS]
        truth = label_mask(read_array(item.mask)[:TIO2_CROP_ROWS] > 0)
        seg = segment_image(image, bundle, params, name=str(item.image))
        rows.append({"image": item.stem, **score_labels(seg.labels, truth)})
    return pd.DataFrame(rows)
