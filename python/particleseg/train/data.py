"""Training data from files: images, masks and how to read the masks."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..autoscale import median_diameter
from ..errors import InputError
from ..io import IMAGE_SUFFIXES, Calibration, list_images, read_array, read_image
from ..pipeline import invert as _invert
from ..postprocess import label_mask
from ..preprocess import normalize_input

MASK_KINDS = ("auto", "binary", "labels", "classes")
MASK_SUFFIXES = ("", "_mask", "_masks", "_m", "_label", "_labels", "_cm", "_keep", "-mask", "-labels")
NORMALIZATION = {"method": "percentile", "low": 1.0, "high": 99.8, "clip": [-0.5, 1.5]}


@dataclass
class TrainingItem:
    """One training image with its annotation, as read and checked by :func:`read_training_data`.

    ``image`` is ``(Y, X, C)`` float32, normalised; ``labels`` the instance labels (0
    background); ``classes`` the class-label image (multi-class masks only); ``keep`` the
    instance labels of the particles an expert kept (classifier training only).
    """

    name: str
    image: np.ndarray
    labels: np.ndarray
    classes: np.ndarray | None = None
    keep: np.ndarray | None = None
    calibration: Any = None


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask or label image (TIFF, PNG) as a 2D array.

    Without the checks of :func:`particleseg.io.read_image` that refuse empty (constant) images.

    Raises
    ------
    InputError
        Missing or unreadable file, or not a 2D single-channel image.
    """
    data = read_array(path, "mask")
    if data.ndim != 2:
        raise InputError(f"{path}: mask has shape {data.shape}; expected a 2D single-channel image")
    if data.dtype.kind not in "uifb":
        raise InputError(f"{path}: unsupported mask data type {data.dtype}")
    return data


def interpret_mask(
    mask: np.ndarray, kind: str = "auto", name: str = "mask", n_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Instance labels (and class labels) of an annotation.

    Parameters
    ----------
    mask : (Y, X) array
    kind : {"auto", "binary", "labels", "classes"}
        ``binary``: two values, the larger is particle; touching particles are separated by
        one-pixel background lines and labelled with 4-connectivity (the TiO2 convention).
        ``labels``: one integer per particle, 0 background. ``classes``: a class per pixel,
        0 background, ``1..n_classes-1`` phases. ``auto``: binary with at most two distinct
        values, labels otherwise (multi-class masks must be asked for).
    name : str
        The file, for error messages.
    n_classes : int, optional
        Number of classes including background (``classes`` only; checked).

    Returns
    -------
    labels : (Y, X) int32
    classes : (Y, X) int32 or None
    """
    if kind not in MASK_KINDS:
        raise InputError(f"{name}: unknown mask type {kind!r}; choose one of {', '.join(MASK_KINDS)}")
    mask = np.asarray(mask)
    values = np.unique(mask)
    if mask.dtype.kind == "f" and not np.all(np.mod(values, 1) == 0):
        raise InputError(f"{name}: mask holds fractional values; expected a binary mask or a label image")
    if values.min() < 0:
        raise InputError(f"{name}: mask holds negative values; expected a binary mask or a label image")
    if kind == "auto":
        kind = "binary" if len(values) <= 2 else "labels"
    classes = None
    if kind == "binary":
        if len(values) > 2:
            raise InputError(
                f"{name}: mask has {len(values)} distinct values, not a binary mask "
                "(use mask type 'labels' or 'classes')"
            )
        fg = mask == values.max() if len(values) == 2 else mask > 0
        if len(values) == 2 and values.min() > 0:
            raise InputError(f"{name}: binary mask has no 0 background (values {values[0]:g} and {values[1]:g})")
        labels = label_mask_4(fg)
    elif kind == "labels":
        labels = mask.astype(np.int32)
    else:
        classes = mask.astype(np.int32)
        if n_classes is not None and classes.max() >= n_classes:
            raise InputError(
                f"{name}: class value {classes.max()} but only {n_classes} classes (0..{n_classes - 1}) were given"
            )
        labels = label_mask_4(classes > 0)
    if labels.size and (labels > 0).all():
        raise InputError(f"{name}: mask marks every pixel as particle (inverted mask?)")
    return labels, classes


def label_mask_4(mask: np.ndarray) -> np.ndarray:
    """4-connected labels of a binary mask (int32)."""
    return label_mask(np.asarray(mask, bool)).astype(np.int32)


def match_masks(images: Sequence[Path], mask_dir: Path, role: str = "mask") -> list[Path]:
    """Find the mask file of each image in ``mask_dir``.

    Same stem, or the stem followed by one of :data:`MASK_SUFFIXES` (``a.tif`` -> ``a.tif``,
    ``a_mask.png``, ``a_m.tif``, ...).
    """
    if not mask_dir.is_dir():
        raise InputError(f"{mask_dir}: {role} folder not found")
    by_stem: dict[str, list[Path]] = {}
    for q in sorted(mask_dir.iterdir()):
        if q.suffix.lower() in IMAGE_SUFFIXES:
            by_stem.setdefault(q.stem, []).append(q)
    out = []
    for im in images:
        found = [q for s in MASK_SUFFIXES for q in by_stem.get(im.stem + s, [])]
        if not found:
            raise InputError(
                f"{im}: no {role} for this image in {mask_dir} (expected {im.stem}.tif, {im.stem}_mask.tif, ...)"
            )
        if len(found) > 1 and found[0].stem == found[1].stem:
            raise InputError(f"{im}: several {role}s match it in {mask_dir} ({found[0].name}, {found[1].name})")
        out.append(found[0])
    return out


def _as_list(x, role: str) -> tuple[list, list[str]]:
    """Arrays or paths: a folder, a file, or a sequence of files or arrays -> (items, names)."""
    if isinstance(x, np.ndarray):
        x = [x] if x.ndim == 2 else list(x)
    if isinstance(x, (str, os.PathLike)):
        p = Path(x)
        if not p.exists():
            raise InputError(f"{p}: {role} folder or file not found")
        files = list_images([p])
        if not files:
            raise InputError(f"{p}: no image files (TIFF, PNG, JPEG) found")
        return files, [str(f) for f in files]
    items = list(x)
    names = [str(it) if isinstance(it, (str, os.PathLike)) else f"{role} {i}" for i, it in enumerate(items)]
    return [Path(it) if isinstance(it, (str, os.PathLike)) else np.asarray(it) for it in items], names


def read_training_data(
    images,
    masks,
    keep_masks=None,
    mask_kind: str = "auto",
    n_classes: int | None = None,
    crop_rows: int = 0,
    normalization: dict | None = None,
    invert: bool = False,
) -> list[TrainingItem]:
    """Read, check and normalise training pairs before any training starts.

    Parameters
    ----------
    images : folder, file, sequence of files, or sequence of arrays
        Gray images ``(Y, X)``; multi-channel inputs as ``(C, Y, X)`` files (multi-page TIFF
        or ImageJ hyperstacks) or ``(Y, X, C)`` arrays.
    masks : folder or sequence of files or arrays
        One annotation per image (see :func:`interpret_mask`). A folder is matched to the
        images by file name (:func:`match_masks`).
    keep_masks : folder or sequence, optional
        Masks of the particles an expert kept (particle-classifier training).
    mask_kind, n_classes : see :func:`interpret_mask`.
    crop_rows : int
        Rows at the bottom of every image and mask to drop (a microscope's data bar).
    normalization : dict
        Percentile normalisation settings (as stored in a bundle).
    invert : bool
        Mirror the gray values (:func:`particleseg.pipeline.invert`) before normalising: dark
        particles become bright for a network that expects bright ones.

    Raises
    ------
    InputError
        One line naming the file: a missing mask, sizes that differ, an unreadable file, a
        mask that is not a binary or label image, all masks empty.
    """
    norm = normalization or NORMALIZATION
    img_items, img_names = _as_list(images, "image")
    from_folder = isinstance(masks, (str, os.PathLike)) and Path(masks).is_dir()
    if from_folder and all(isinstance(i, Path) for i in img_items):
        mask_items = match_masks(img_items, Path(masks))
        mask_names = [str(m) for m in mask_items]
    elif isinstance(masks, (str, os.PathLike)) and not Path(masks).exists():
        raise InputError(f"{masks}: mask folder or file not found")
    else:
        mask_items, mask_names = _as_list(masks, "mask")
    if len(mask_items) != len(img_items):
        raise InputError(
            f"{len(img_items)} images but {len(mask_items)} masks "
            f"({img_names[0] if img_names else 'no images'} ...); give one mask per image"
        )
    keep_items: list = [None] * len(img_items)
    keep_names: list = [None] * len(img_items)
    if keep_masks is not None:
        if (
            isinstance(keep_masks, (str, os.PathLike))
            and Path(keep_masks).is_dir()
            and all(isinstance(i, Path) for i in img_items)
        ):
            keep_items = match_masks(img_items, Path(keep_masks), "keep mask")
            keep_names = [str(m) for m in keep_items]
        else:
            keep_items, keep_names = _as_list(keep_masks, "keep mask")
        if len(keep_items) != len(img_items):
            raise InputError(f"{len(img_items)} images but {len(keep_items)} keep masks; give one keep mask per image")
    if not img_items:
        raise InputError("no training images given")

    out: list[TrainingItem] = []
    n_channels = None
    for item, name, m_item, m_name, k_item, k_name in zip(
        img_items, img_names, mask_items, mask_names, keep_items, keep_names
    ):
        if isinstance(item, Path):
            img, cal = read_image(item, channel_axis_ok=True)
            if img.ndim == 4:
                raise InputError(f"{name}: a stack of multi-channel images; give one 2D (multi-channel) image per file")
            img = img[..., None] if img.ndim == 2 else np.moveaxis(img, 0, -1)  # (C, Y, X) pages -> channels
        else:
            img, cal = np.asarray(item), Calibration()
            if img.ndim == 2:
                img = img[..., None]
            if img.ndim != 3:
                raise InputError(f"{name}: expected a (Y, X) or (Y, X, C) array, got shape {img.shape}")
        if n_channels is None:
            n_channels = img.shape[-1]
        elif img.shape[-1] != n_channels:
            raise InputError(f"{name}: has {img.shape[-1]} channel(s) but the first image has {n_channels}")
        mask = read_mask(m_item) if isinstance(m_item, Path) else np.asarray(m_item)
        if mask.ndim != 2:
            raise InputError(f"{m_name}: mask has shape {mask.shape}; expected a 2D image")
        keep = None
        if k_item is not None:
            keep = read_mask(k_item) if isinstance(k_item, Path) else np.asarray(k_item)
        if crop_rows:
            if crop_rows >= img.shape[0] - 16:
                raise InputError(f"{name}: cannot crop {crop_rows} rows from an image {img.shape[0]} rows high")
            img = img[: img.shape[0] - crop_rows]
            mask = mask[: img.shape[0]]
            keep = keep[: img.shape[0]] if keep is not None else None
        if mask.shape != img.shape[:2]:
            raise InputError(
                f"{m_name}: mask size {mask.shape[1]}x{mask.shape[0]} differs from its image "
                f"{name} ({img.shape[1]}x{img.shape[0]})"
            )
        if keep is not None and keep.shape != img.shape[:2]:
            raise InputError(
                f"{k_name}: keep mask size {keep.shape[1]}x{keep.shape[0]} differs from its image "
                f"{name} ({img.shape[1]}x{img.shape[0]})"
            )
        labels, classes = interpret_mask(mask, mask_kind, m_name, n_classes)
        keep_labels = (
            interpret_mask(keep, "auto" if mask_kind != "classes" else "binary", k_name)[0]
            if keep is not None
            else None
        )
        if invert:
            img = _invert(img)
        x = normalize_input(img, norm)
        out.append(TrainingItem(name, x, labels, classes, keep_labels, cal))
    if all(it.labels.max() == 0 for it in out):
        raise InputError(f"{mask_names[0]}: all {len(out)} masks are empty (no particle annotated); nothing to learn")
    return out


def training_polarity(items: Sequence[TrainingItem]) -> str:
    """``"bright"`` when the annotated particles of ``items`` are on the whole brighter, else ``"dark"``.

    Brighter than their background: the mean normalised gray value of the first channel inside
    the particles against outside, over all images.
    """
    inside = outside = 0.0
    n_in = n_out = 0
    for it in items:
        fg = it.labels > 0
        g = it.image[..., 0]
        inside += float(g[fg].sum())
        outside += float(g[~fg].sum())
        n_in += int(fg.sum())
        n_out += int((~fg).sum())
    if not n_in or not n_out:
        return "bright"
    return "bright" if inside / n_in >= outside / n_out else "dark"


def split_validation(n: int, validation_split: float, seed: int) -> tuple[list[int], list[int]]:
    """Choose the indices of training and validation images.

    ``round(n * validation_split)`` (at least one) validation images, chosen with ``seed``.
    """
    if not 0 < validation_split < 1:
        raise InputError(f"validation split must be between 0 and 1, got {validation_split}")
    if n < 2:
        raise InputError(
            f"too few images for a validation split ({n}; need at least 2, or give validation images separately)"
        )
    n_val = min(n - 1, max(1, int(round(n * validation_split))))
    order = np.random.default_rng(seed).permutation(n)
    val = sorted(order[:n_val].tolist())
    return [i for i in range(n) if i not in val], val


def particle_size_px(labels: Sequence[np.ndarray]) -> float | None:
    """Typical diameter (pixels) of the annotated particles (:func:`particleseg.autoscale.median_diameter`)."""
    return median_diameter(
        np.concatenate([np.bincount(lab.ravel())[1:] for lab in labels if lab.max() > 0] or [np.zeros(0)])
    )
