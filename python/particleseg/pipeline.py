"""The segmentation pipeline: image -> probabilities -> particles -> measurements -> outputs.

:func:`segment_image` works on arrays and returns a :class:`Segmentation`;
:func:`segment_file` adds reading, calibration and the output files;
:func:`segment_files` runs a batch that goes on past bad files and reports them.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from . import postprocess as pp
from .autoscale import SUPPORTED_SIZE_PX, estimate_particle_size, estimate_polarity
from .errors import InputError, OutputExistsError, ParticlesegError, ParticlesegWarning
from .inference import predict_tiled
from .io import Calibration, check_image, check_outputs, read_image, write_csv, write_rois, write_tiff
from .measure import measure_particles, summarize, with_units
from .models import Bundle, load_bundle
from .preprocess import detect_data_bar, normalize_input, rescale, resize_to

OUTPUT_SUFFIXES = ("_labels.tif", "_mask.tif", "_prob.tif", "_rois.zip", "_particles.csv", "_overview.png")


@dataclass
class SegmentParams:
    """Settings of one segmentation run. ``None`` means: take the model bundle's default.

    Attributes
    ----------
    threshold : float
        Foreground probability threshold.
    split : bool
        Separate touching particles by watershed.
    seed_level : float
        Seed level on the network's distance output (higher splits more). Formerly
        ``seed_threshold`` (still accepted, also as an attribute).
    split_level : float
        h-maxima depth in pixels for the distance-transform watershed (lower splits more).
        Formerly ``h``.
    min_size : int
        Particles smaller than this many pixels are removed as noise. Formerly ``min_area``.
    min_confidence : float
        Detections whose mean foreground probability is below this are removed as uncertain
        (faint background structures the network half believes in); 0 keeps all.
    fill_holes : bool
    exclude_border : bool
        Reject particles touching the image border (or the cropped data bar).
    intensity_filter : {"li", "otsu", "mean", "median"} or None
        Reject particles whose mean gray value lies on the background side of this threshold.
    polarity : {"auto", "bright", "dark"}
        Particles brighter than the background (SEM) or darker (TEM bright field); ``"auto"``
        (the default) estimates it per image (:func:`particleseg.autoscale.estimate_polarity`).
        The network sees the image inverted when this differs from the bundle's
        ``input.polarity``.
    shape : dict
        Column -> (min, max) ranges in calibrated units, see :func:`postprocess.shape_filter`.
    min_score : float or None
        Keep particles whose mean classifier score reaches this (bundles with a classifier).
        Formerly ``classifier_threshold``.
    crop_rows : int, "auto" or None
        Rows at the bottom to ignore (the microscope's data bar); "auto" detects them.
    rescale : float or None
        Resample the image by this factor before inference (results are mapped back);
        ``1`` shows it to the network as it is. Without ``rescale`` or ``particle_size`` the
        particle size is estimated (:func:`choose_scale`).
    particle_size : float or None
        Typical particle diameter in pixels in this image; the image is resampled so that it
        matches the model's training data (overrides ``rescale``).
    tile, overlap, batch_size : int
        Tiled inference settings.
    """

    threshold: float | None = None
    split: bool | None = None
    seed_level: float | None = None
    split_level: float | None = None
    min_size: int | None = None
    min_confidence: float | None = None
    fill_holes: bool | None = None
    exclude_border: bool | None = None
    intensity_filter: str | None = None
    polarity: str | None = None
    shape: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    min_score: float | None = None
    crop_rows: int | str | None = "auto"
    rescale: float | None = None
    particle_size: float | None = None
    tile: int | None = None
    overlap: int | None = None
    batch_size: int = 4
    progress: bool | None = None

    def resolved(self, bundle: Bundle) -> "SegmentParams":
        """Copy with every ``None`` replaced by the bundle's default
        (:func:`particleseg.params.bundle_defaults`)."""
        from .params import bundle_defaults

        d = bundle_defaults(bundle)
        names = ("threshold", "split", "seed_level", "split_level", "min_size", "min_confidence", "fill_holes",
                 "exclude_border", "polarity")
        return dataclasses.replace(
            self,
            **{name: _first(getattr(self, name), d[name]) for name in names},
            min_score=_first(self.min_score, d["min_score"] if bundle.has_classifier else None),
            tile=_first(self.tile, bundle.tile),
            overlap=_first(self.overlap, bundle.overlap),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _accept_former_names(cls):
    """Let ``SegmentParams`` take and give its former field names (``seed_threshold``, ``h``,
    ``min_area``, ``classifier_threshold``; see :data:`particleseg.params.ALIASES`)."""
    from .params import ALIASES

    init = cls.__init__

    def __init__(self, *args, **kwargs):
        for old, new in ALIASES.items():
            if old in kwargs:  # wins over the new name, as in dataclasses.replace(params, h=2)
                kwargs[new] = kwargs.pop(old)
        init(self, *args, **kwargs)

    __init__.__doc__ = init.__doc__
    cls.__init__ = __init__
    for old, new in ALIASES.items():
        setattr(cls, old, property(lambda self, n=new: getattr(self, n),
                                   lambda self, value, n=new: setattr(self, n, value), doc=f"Former name of {new}."))
    return cls


_accept_former_names(SegmentParams)


def _first(*values):
    return next((v for v in values if v is not None), None)


@dataclass
class Segmentation:
    """Result of :func:`segment_image` for one 2D image, at the input's size.

    ``labels`` holds every particle found: the kept ones numbered ``1..N``, the rejected ones
    after them; ``table`` has one row per particle, in label order, with the measurements
    (:func:`particleseg.measure.measure_particles`), ``kept`` and ``reject_reason``.
    """

    probabilities: np.ndarray  # (Y, X, K) float32 network output, 0 in cropped rows
    labels: np.ndarray  # (Y, X) int32
    table: pd.DataFrame
    calibration: Calibration
    crop_rows: int
    scale_factor: float
    params: SegmentParams
    scale: ScaleChoice | None = None

    @property
    def kept_labels(self) -> np.ndarray:
        """Label image of the kept particles only."""
        keep = self.table.loc[self.table["kept"], "label"].to_numpy()
        return np.where(np.isin(self.labels, keep), self.labels, 0).astype(np.int32)

    @property
    def foreground(self) -> np.ndarray:
        """The foreground probability map (Y, X)."""
        return self.probabilities[..., 0]


def predict_probabilities(
    image: np.ndarray,
    bundle: Bundle,
    params: SegmentParams | None = None,
    predictor=None,
) -> np.ndarray:
    """Normalise ``image`` ((Y, X) or (Y, X, C)) as the bundle says and run tiled inference.

    Returns the network output ``(Y, X, K)`` float32 at the size of ``image``.
    """
    params = (params or SegmentParams()).resolved(bundle)
    img = np.asarray(image, np.float32)
    if img.ndim == 2:
        img = img[..., None]
    bundle.check_channels(img.shape[-1])
    img = normalize_input(img, bundle.metadata["input"]["normalization"])
    return predict_tiled(
        predictor or bundle.predictor(), img, tile=params.tile, overlap=params.overlap,
        batch_size=params.batch_size, multiple_of=bundle.network.multiple_of, progress=params.progress,
    )


def segment_image(
    image: np.ndarray,
    bundle: Bundle | str | os.PathLike | None = None,
    params: SegmentParams | None = None,
    calibration: Calibration | None = None,
    name: str = "image",
    predictor=None,
) -> Segmentation:
    """Segment, split, filter and measure the particles of one 2D gray image.

    Parameters
    ----------
    image : (Y, X) array
        Raw gray values (any numeric type).
    bundle : Bundle, path or name
        Model bundle; the shipped default model when None.
    params : SegmentParams
    calibration : Calibration
        Pixel size for the measurements.
    name : str
        Used in error messages.
    predictor : callable, optional
        Replaces the bundle's network (batch -> output), e.g. an ONNX Runtime session.
    """
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    params = (params or SegmentParams()).resolved(bundle)
    cal = calibration or Calibration()
    image = np.asarray(image)
    if image.ndim != 2:
        raise InputError(f"{name}: expected a 2D image, got shape {image.shape}")
    check_image(image, name)
    bundle.check_use("sem", name)

    # 1. crop the data bar
    if params.crop_rows == "auto":
        crop = detect_data_bar(image)
    else:
        crop = int(params.crop_rows or 0)
        if not 0 <= crop < image.shape[0] - 16:
            raise InputError(f"{name}: cannot crop {crop} rows from an image {image.shape[0]} rows high")
    work = image[: image.shape[0] - crop] if crop else image
    check_image(work, name)

    # 2.-4. polarity and scale, network, particles (a second pass at the scale of the particles
    # found, when the first estimate was off)
    scale = choose_scale(work, bundle, params, name)
    prob = _network_at_scale(work, bundle, params, scale, predictor)
    labels = particles_from_probabilities(prob, bundle.heads, params)
    refined = refine_scale(scale, labels, bundle)
    if refined is not None:
        scale = refined
        prob = _network_at_scale(work, bundle, params, scale, predictor)
        labels = particles_from_probabilities(prob, bundle.heads, params)
    polarity = scale.polarity
    if not labels.any():
        warnings.warn(f"{name}: no particles found ({scale.describe()}); if there are particles, set "
                      "--polarity or --particle-size", ParticlesegWarning, stacklevel=2)

    # 5. measure and filter (border = image edges and the cropped rows)
    border = np.zeros(work.shape, bool)
    border[[0, -1], :] = True
    border[:, [0, -1]] = True
    table = measure_particles(labels, work, cal, border=border)
    table["kept"] = True
    table["reject_reason"] = ""

    def reject(mask_rows, reason):
        sel = mask_rows & table["kept"]
        table.loc[sel, "reject_reason"] = reason if isinstance(reason, str) else reason[sel]
        table.loc[sel, "kept"] = False

    if len(table):
        if params.exclude_border:
            reject(table["touches_border"].to_numpy(), "border")
        if params.intensity_filter:
            ids, keep, thr = pp.intensity_filter(labels, work, params.intensity_filter, polarity)
            reject(~keep, f"intensity<{params.intensity_filter}" if polarity == "bright" else f"intensity>{params.intensity_filter}")
        if params.shape:
            reasons = pp.shape_filter(table, params.shape)
            reject((reasons != "").to_numpy(), reasons)
        if params.min_score is not None and bundle.has_classifier:
            score_map = classifier_map(work, labels > 0, bundle, params)
            ids, scores = pp.particle_scores(labels, score_map)
            table["classifier_score"] = scores
            reject(scores < params.min_score, "classifier")
    labels, table = kept_first(labels, table)

    # 6. back to the full image size (zeros in the cropped rows)
    if crop:
        labels = np.pad(labels, ((0, crop), (0, 0)))
        prob = np.pad(prob, ((0, crop), (0, 0), (0, 0)))
    return Segmentation(prob.astype(np.float32), labels, table, cal, crop, scale.factor, params, scale)


@dataclass(frozen=True)
class ScaleChoice:
    """How an image was shown to the network (:func:`choose_scale`).

    Attributes
    ----------
    polarity : {"bright", "dark"}
        The image's particles; the image is inverted for the network when this differs from
        the bundle's ``input.polarity``.
    polarity_source : {"given", "estimated"}
    factor : float
        Resampling factor of the network input (``> 1`` enlarges).
    particle_size : float or None
        Typical particle diameter in pixels of the image: given, estimated, or measured on the
        particles found.
    size_source : {"given", "rescale", "estimated", "detections", "none"}
    network_polarity : str
        The bundle's ``input.polarity``.
    auto_size : bool
        Whether the factor came from an estimate (and may be refined).
    """

    polarity: str
    polarity_source: str
    factor: float
    particle_size: float | None
    size_source: str
    network_polarity: str = "bright"
    auto_size: bool = False

    def describe(self) -> str:
        """One line for logs: ``polarity dark (estimated), particle size 112 px (detections), resampled x0.22``."""
        size = f"{self.particle_size:.0f} px ({self.size_source})" if self.particle_size else "not estimated"
        return (f"polarity {self.polarity} ({self.polarity_source}), particle size {size}, "
                + (f"resampled x{self.factor:.3g}" if self.factor != 1 else "not resampled"))


def scale_summary(scale: ScaleChoice | None) -> dict[str, Any]:
    """The columns of ``summary.csv`` that say how an image was shown to the network (of the
    first slice, for a stack): ``polarity``, ``particle_size_px``, ``size_source``, ``scale_factor``."""
    if scale is None:
        return {}
    return {"polarity": scale.polarity, "polarity_source": scale.polarity_source,
            "particle_size_px": round(scale.particle_size, 2) if scale.particle_size else None,
            "size_source": scale.size_source, "scale_factor": round(scale.factor, 4)}


def _size_factor(size: float, bundle: Bundle) -> float:
    """Resampling factor for particles ``size`` px across: 1 inside the range of sizes the
    model was trained on (``scale.particle_size_range_px``), else the factor that brings them
    to its ``particle_size_px``."""
    lo, hi = SUPPORTED_SIZE_PX
    size = min(max(size, lo), hi)
    trained = bundle.metadata["scale"]["particle_size_range_px"]
    return 1.0 if trained[0] <= size <= trained[1] else bundle.particle_size_px / size


def choose_scale(work: np.ndarray, bundle: Bundle, params: SegmentParams, name: str = "image") -> ScaleChoice:
    """Polarity and resampling factor of the network input for the picture ``work``.

    The polarity is ``params.polarity``, or estimated when it is ``"auto"``
    (:func:`particleseg.autoscale.estimate_polarity`). The factor comes from
    ``params.particle_size`` (the model's ``particle_size_px`` over it), else from
    ``params.rescale``, else, for a bundle that records the range of particle sizes it was
    trained on (``scale.particle_size_range_px``), from the estimated particle size
    (:func:`particleseg.autoscale.estimate_particle_size`): 1 while that lies in the range.
    An estimate outside :data:`~particleseg.autoscale.SUPPORTED_SIZE_PX` is clipped to it
    with a warning. Bundles without the range are not resampled unless asked.
    """
    net_polarity = bundle.metadata["input"].get("polarity", "bright")
    polarity = params.polarity or "auto"
    target = bundle.particle_size_px
    auto_size = (not params.particle_size and not params.rescale and bool(target)
                 and bool(bundle.metadata["scale"].get("particle_size_range_px")))
    polarity_source = "given"
    if polarity == "auto":
        polarity, polarity_source = estimate_polarity(work, default=net_polarity), "estimated"
    size, source, factor = None, "none", 1.0
    if params.particle_size:
        if not target:
            raise InputError(f"{name}: --particle-size needs a model that records its training particle size")
        size, source, factor = float(params.particle_size), "given", target / params.particle_size
    elif params.rescale:
        source, factor = "rescale", float(params.rescale)
    else:  # estimated (and reported); the factor only for bundles that record their sizes
        size = estimate_particle_size(work, polarity)
        if size is not None:
            source = "estimated"
            if auto_size:
                _warn_size(size, name)
                factor = _size_factor(size, bundle)
    if not 0.02 <= factor <= 20:
        raise InputError(f"{name}: resampling factor {factor:g} is out of range (0.02 to 20)")
    return ScaleChoice(polarity, polarity_source, factor, size, source, net_polarity, auto_size)


def _warn_size(size: float, name: str) -> None:
    lo, hi = SUPPORTED_SIZE_PX
    if not lo <= size <= hi:
        warnings.warn(f"{name}: estimated particle size {size:.0f} px is outside the supported {lo:g}-{hi:g} px; "
                      f"using {min(max(size, lo), hi):g} px (set --particle-size PX if that is wrong)",
                      ParticlesegWarning, stacklevel=3)


def refine_scale(scale: ScaleChoice, labels: np.ndarray, bundle: Bundle) -> ScaleChoice | None:
    """A better scale from the particles a first pass found, as Cellpose refines its size
    estimate with the masks [1]_: when their median equivalent diameter calls for a
    resampling factor more than 25 % away from the one used, the new choice; else None.
    Only for an estimated scale (never when the user gave one).

    References
    ----------
    .. [1] C. Stringer et al., "Cellpose: a generalist algorithm for cellular segmentation",
           Nature Methods 18, 100-106 (2021).
    """
    if not scale.auto_size:
        return None
    areas = np.bincount(np.asarray(labels).ravel())[1:]
    areas = areas[areas > 0]
    if not len(areas):
        return None
    size = float(np.median(2 * np.sqrt(areas / np.pi)))
    factor = _size_factor(size, bundle)
    if abs(np.log(factor / scale.factor)) <= np.log(1.25):
        return None
    return dataclasses.replace(scale, factor=factor, particle_size=size, size_source="detections", auto_size=False)


def _network_at_scale(work: np.ndarray, bundle: Bundle, params: SegmentParams, scale: ScaleChoice, predictor=None) -> np.ndarray:
    """The network output for ``work`` shown as ``scale`` says (inverted, resampled), at the size of ``work``."""
    net_in = work if scale.polarity == scale.network_polarity else invert(work)
    if scale.factor != 1:
        net_in = rescale(net_in, scale.factor)
    prob = predict_probabilities(net_in, bundle, params, predictor)
    return resize_to(prob, work.shape, order=1) if scale.factor != 1 else prob


def invert(image: np.ndarray) -> np.ndarray:
    """Gray values mirrored within their range (dark particles become bright), float32.

    Examples
    --------
    >>> invert(np.array([[0, 10], [250, 255]], np.uint8))
    array([[255., 245.],
           [  5.,   0.]], dtype=float32)
    """
    img = np.asarray(image, np.float32)
    return (img.max() + img.min()) - img


def kept_first(labels: np.ndarray, table: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """Renumber the particles so the kept ones are ``1..N`` (the names of their ROIs) and the
    rejected ones ``N+1..M``; the table's ``label`` column follows and its rows are sorted by it.

    Examples
    --------
    >>> lab = np.array([[1, 0, 2, 0, 3]])
    >>> t = pd.DataFrame({"label": [1, 2, 3], "kept": [False, True, True]})
    >>> lab2, t2 = kept_first(lab, t)
    >>> lab2.tolist(), t2["label"].tolist(), t2["kept"].tolist()
    ([[3, 0, 1, 0, 2]], [1, 2, 3], [True, True, False])
    """
    if not len(table):
        return labels, table
    lut = pp.relabel_kept_first(labels, table.loc[table["kept"].astype(bool), "label"].to_numpy())
    table = table.assign(label=lut[table["label"].to_numpy()]).sort_values("label", kind="stable")
    return lut[labels].astype(np.int32), table.reset_index(drop=True)


def particles_from_probabilities(prob: np.ndarray, heads: list[str], params: SegmentParams) -> np.ndarray:
    """Label image of the particles in a network output ``(Y, X, K)`` whose channels are ``heads``.

    Threshold the ``foreground`` channel, split touching particles by a watershed (seeded by
    the ``distance`` head, or by ``foreground * (1 - boundary)`` with a ``boundary`` head, or
    by the distance transform of the mask without either), fill holes, remove small particles
    and those whose mean foreground probability is below ``params.min_confidence``.
    ``params`` must be resolved (see :meth:`SegmentParams.resolved`).
    """
    fg = prob[..., heads.index("foreground")]
    mask = fg > params.threshold
    if params.split:
        if "distance" in heads:
            seeds = prob[..., heads.index("distance")]
        elif "boundary" in heads:
            seeds = fg * (1 - prob[..., heads.index("boundary")])
        else:
            seeds = None
        labels = pp.split_touching(mask, seeds, params.seed_level, params.split_level)
    else:
        labels = pp.label_mask(mask)
    if params.fill_holes:
        labels = pp.fill_holes(labels)
    labels = pp.remove_small(labels, params.min_size)
    if params.min_confidence:
        labels = pp.remove_uncertain(labels, fg, params.min_confidence)
    return pp.relabel_sequential(labels)


def classifier_map(image: np.ndarray, mask: np.ndarray, bundle: Bundle, params: SegmentParams) -> np.ndarray:
    """Per-pixel score of the bundle's particle classifier, whose input is the normalised
    image and the segmentation mask as two channels and whose output is the probability that
    a pixel belongs to a particle worth keeping."""
    from .models import NetworkConfig, keras_predictor

    img = normalize_input(np.asarray(image)[..., None], bundle.metadata["input"]["normalization"])
    x = np.concatenate([img, mask.astype(np.float32)[..., None]], -1)
    out = predict_tiled(keras_predictor(bundle.classifier), x, tile=params.tile, overlap=params.overlap,
                        batch_size=params.batch_size,
                        multiple_of=NetworkConfig.from_dict(bundle.metadata["classifier"]["network"]).multiple_of,
                        progress=params.progress, desc="classifier")
    return out[..., 0]


# --------------------------------------------------------------------------------------------
# files


def output_paths(image_path: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Path]:
    """The output files written for one image, by kind (labels, mask, prob, rois, particles, overview)."""
    stem = Path(image_path).stem
    out = Path(out_dir)
    return {s[1:].split(".")[0]: out / f"{stem}{s}" for s in OUTPUT_SUFFIXES}


def resolve_calibration(
    file_calibration: Calibration,
    width_px: int,
    pixel_size: float | None = None,
    unit: str | None = None,
    image_width: float | None = None,
) -> Calibration:
    """Calibration from the options, else from the file: ``pixel_size`` (with ``unit``, default
    nm) wins over ``image_width`` (field-of-view width, in ``unit``, default nm) wins over the
    file's metadata."""
    if pixel_size is not None:
        return Calibration(pixel_size, unit or "nm")
    if image_width is not None:
        return Calibration(image_width / width_px, unit or "nm")
    return file_calibration


def segment_file(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    bundle: Bundle,
    params: SegmentParams | None = None,
    pixel_size: float | None = None,
    unit: str | None = None,
    image_width: float | None = None,
    overwrite: bool = False,
    write_overview: bool = True,
) -> dict[str, Any]:
    """Segment one image file (2D or a stack, slice by slice) and write its outputs.

    Writes, for ``name.tif``: ``name_labels.tif`` (kept particles numbered ``1..N``),
    ``name_mask.tif`` (0/255, a one-pixel background line between touching particles, see
    :func:`particleseg.postprocess.labels_to_mask`, so ImageJ's Analyze Particles finds the
    same particles), ``name_prob.tif``, ``name_rois.zip`` (ROIs ``particle-1`` ...
    ``particle-N``), ``name_particles.csv`` (every particle, kept and rejected, with ImageJ's
    column names and the units in the header, see :func:`particleseg.measure.with_units`) and
    ``name_overview.png``. Label numbers run on through the slices of a stack.

    Returns a summary row (see :func:`particleseg.measure.summarize`) with the file name,
    the calibration and the number of rejected particles.
    """
    path = Path(path)
    paths = output_paths(path, out_dir)
    check_outputs(list(paths.values()), overwrite)  # fail before any work
    image, file_cal = read_image(path)
    cal = resolve_calibration(file_cal, image.shape[-1], pixel_size, unit, image_width)
    stack = image if image.ndim == 3 else image[None]
    results = []
    for z, plane in enumerate(stack):
        name = f"{path} (slice {z + 1})" if image.ndim == 3 else str(path)
        results.append(segment_image(plane, bundle, params, cal, name=name))

    # labels unique across the slices of a stack, the kept ones 1..N over the whole stack
    tables, label_planes = [], []
    offset = 0
    for z, seg in enumerate(results):
        t = seg.table.copy()
        t["label"] = t["label"] + offset
        if image.ndim == 3:
            t.insert(1, "slice", z + 1)
        tables.append(t)
        label_planes.append(np.where(seg.labels > 0, seg.labels + offset, 0))
        offset += int(seg.labels.max())
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    labels, table = kept_first(np.stack(label_planes), table)
    squeeze = (lambda a: a[0]) if image.ndim == 2 else (lambda a: a)
    n_kept = int(table["kept"].sum()) if len(table) else 0
    kept = squeeze(np.where(labels <= n_kept, labels, 0))
    prob = squeeze(np.stack([seg.foreground for seg in results]))

    write_tiff(paths["labels"], kept.astype(np.int32), cal, overwrite)
    write_tiff(paths["mask"], pp.labels_to_mask(kept), cal, overwrite)
    write_tiff(paths["prob"], prob, cal, overwrite)
    write_rois(paths["rois"], kept, overwrite=overwrite)
    write_csv(paths["particles"], with_units(table, cal.unit), overwrite)
    if write_overview:
        from .report import overview_figure

        first = table[table["slice"] == 1] if image.ndim == 3 else table
        title = path.name if image.ndim == 2 else f"{path.name} (slice 1 of {len(stack)})"
        overview_figure(stack[0], labels[0], first, cal.unit, title=title,
                        path=paths["overview"], overwrite=overwrite)
    row = {"file": path.name, "status": "ok", "error": "", "slices": len(stack),
           "pixel_size": cal.pixel_size, "crop_rows": results[0].crop_rows,
           "rejected": int((~table["kept"]).sum()) if len(table) else 0,
           **scale_summary(results[0].scale)}
    row.update(summarize(table, cal.unit, cal.nm_per_unit()))
    return row


def segment_files(
    paths: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    bundle: Bundle | str | os.PathLike | None = None,
    params: SegmentParams | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **calibration,
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Segment many files; a bad file is reported and the batch goes on.

    Writes ``summary.csv`` (one row per image, failures included with their error) into
    ``out_dir``; a later batch into the same folder adds its rows to it (see
    :func:`merge_summary`). Returns the summary of this batch and the list of
    ``(file, error)`` failures.
    """
    from tqdm.auto import tqdm

    from .io import list_images

    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    files = list_images(paths)
    if not files:
        raise InputError(f"{', '.join(map(str, paths))}: no image files (TIFF, PNG, JPEG) found")
    bundle.check_use("sem", str(files[0]) if len(files) == 1 else f"{len(files)} images ({files[0]}, ...)")
    out_dir = Path(out_dir)
    summary_path = out_dir / "summary.csv"
    earlier = read_summary(summary_path, overwrite)  # fail before any work if it is not ours
    rows, failures, kept_files = [], [], []
    for f in tqdm(files, desc="segment", unit="image", disable=not progress or len(files) < 2):
        t0 = time.perf_counter()
        try:
            row = segment_file(f, out_dir, bundle, params, overwrite=overwrite, **calibration)
        except (ParticlesegError, OSError, ValueError) as exc:
            if isinstance(exc, OutputExistsError):
                kept_files.append(Path(f).name)
            msg = str(exc) if str(f) in str(exc) else f"{f}: {exc}"
            failures.append((str(f), msg))
            row = {"file": Path(f).name, "status": "failed", "error": msg}
            tqdm.write(f"particleseg: error: {msg}", file=sys.stderr)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        rows.append(row)
    summary = typed_summary(pd.DataFrame(rows))
    write_csv(summary_path, merge_summary(earlier, summary, kept_files), overwrite=True)
    return summary, failures


SUMMARY_INTEGERS = ("slices", "crop_rows", "rejected", "count")


def typed_summary(summary: pd.DataFrame) -> pd.DataFrame:
    for col in SUMMARY_INTEGERS:
        if col in summary:
            summary[col] = summary[col].astype("Int64")  # integers even with failed rows
    return summary


def read_summary(path: str | os.PathLike, overwrite: bool = False) -> pd.DataFrame | None:
    """The ``summary.csv`` of earlier batches into a folder, or None if there is none.

    A file of that name that is not a particleseg summary (unreadable, or no ``file`` and
    ``status`` columns) is refused as an existing output, as any other output is, or with
    ``overwrite`` replaced (None).
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        table = pd.read_csv(path, keep_default_na=False, na_values=[""])
        problem = "" if {"file", "status"} <= set(table.columns) else "no file and status columns"
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if problem:
        if overwrite:
            return None
        raise OutputExistsError(f"{path}: output exists and is not a particleseg summary ({problem}); "
                                "use another output folder or --overwrite to replace it")
    table["error"] = table["error"].astype(object).where(table["error"].notna(), "") if "error" in table else ""
    return table


def merge_summary(earlier: pd.DataFrame | None, summary: pd.DataFrame, keep_earlier: Iterable[str] = ()) -> pd.DataFrame:
    """One summary of everything segmented into a folder: the rows of earlier batches,
    then this batch's rows. A file of this batch replaces its earlier row (segmented again
    with ``--overwrite``, or failed this time), except the files in ``keep_earlier`` (this
    batch refused them because their outputs exist: the earlier row still describes them)."""
    if earlier is None or not len(earlier):
        return summary
    keep_earlier = set(keep_earlier)
    old_files = set(earlier["file"].astype(str))
    new = summary[~(summary["file"].astype(str).isin(keep_earlier & old_files))]
    old = earlier[~earlier["file"].astype(str).isin(set(new["file"].astype(str)))]
    return typed_summary(pd.concat([old, new], ignore_index=True))
