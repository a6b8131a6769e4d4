"""The segmentation pipeline: image -> probabilities -> particles -> measurements -> outputs.

:func:`segment_image` works on arrays and returns a :class:`Segmentation`;
:func:`segment_file` adds reading, calibration and the output files;
:func:`segment_files` runs a batch that goes on past bad files and reports them.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import pickle
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import __version__, interrupts, strips
from . import postprocess as pp
from .annotations import annotation_mask, fill_annotations
from .autoscale import (
    POLARITY_CHECK_BELOW,
    SUPPORTED_SIZE_PX,
    analysis_crop,
    checked_polarity_score,
    detection_diameter,
    estimate_particle_size,
    estimate_polarity,
    median_diameter,
    particle_solidity,
    polarity_from_score,
    polarity_score,
)
from .errors import InputError, OutputExistsError, ParticlesegError, ParticlesegWarning
from .inference import augmented, bounded_tile, predict_tiled
from .io import (
    Calibration,
    OutputError,
    check_image,
    check_output_folder,
    check_outputs,
    image_pixels,
    list_images,
    read_image,
    remove_stale_temporaries,
    write_atomic,
    write_csv,
    write_rois,
    write_tiff,
)
from .io.write import pid_alive, release_pages
from .measure import measure_particles, summarize, with_units
from .models import Bundle, NetworkConfig, export, load_bundle
from .models.bundle import model_identity
from .models.receptive import exact_halo
from .params import ALIASES, POLARITIES, POSTPROCESS_PARAMETERS, bundle_defaults
from .preprocess import (
    detect_data_bar,
    input_normalizer,
    normalize_input,
    rescale,
    rescale_rows,
    rescaled_shape,
    resize_to,
)
from .report import overview_figure, save_png
from .workers import context

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
    seed_depth : float
        With a distance head, seeds are the peaks of its map that rise this far above their
        saddle (and above ``seed_level``); 0: every region above ``seed_level`` seeds a particle.
    merge_level : float
        After the watershed, touching particles whose shared border has at least this mean
        foreground probability become one (:func:`particleseg.postprocess.merge_touching`):
        the network saw no gap between them. 0: nothing is merged.
    split_level : float
        h-maxima depth in pixels for the distance-transform watershed (lower splits more).
        Formerly ``h``.
    min_size : int
        Particles smaller than this many pixels are removed as noise. Formerly ``min_area``.
    min_confidence : float
        Detections whose mean foreground probability is below this are removed as uncertain
        (faint background structures the network half believes in); 0 keeps all.
    fill_holes : bool
    augment : bool
        Average the network's output over the 8 flips and quarter turns of the image
        (test-time augmentation, :func:`particleseg.inference.augmented`): 8x the network time.
    exclude_border : bool
        Reject particles touching the image border (or the cropped data bar).
    intensity_filter : {"li", "otsu", "mean", "median"} or None
        Reject particles whose mean gray value lies on the background side of this threshold.
    polarity : {"auto", "bright", "dark"}
        Particles brighter than the background (SEM) or darker (TEM bright field); ``"auto"``
        (the default) estimates it per image (:func:`particleseg.autoscale.estimate_polarity`),
        and where the gray values leave it open, from the network's output in both polarities
        (:func:`network_passes`). The network sees the image inverted when this differs from the bundle's
        ``input.polarity``.
    shape : dict
        Column -> (min, max) ranges in calibrated units, see :func:`postprocess.shape_filter`.
    min_score : float or None
        Keep particles whose mean classifier score reaches this (bundles with a classifier).
        Formerly ``classifier_threshold``.
    crop_rows : int, "auto" or None
        Rows at the bottom to ignore (the microscope's data bar); "auto" detects them.
    annotations : bool
        Find burned-in scale bars, their labels, panel letters and label boxes
        (:func:`particleseg.annotations.annotation_mask`), paint them over with the gray values
        around them before the polarity, size and network see the image, and reject particles
        lying mostly on them (reason ``annotation``).
    rescale : float or None
        Resample the image by this factor before inference (results are mapped back);
        ``1`` shows it to the network as it is. Without ``rescale`` or ``particle_size`` the
        particle size is estimated (:func:`choose_scale`).
    particle_size : float or None
        Typical particle diameter in pixels in this image; the image is resampled so that it
        matches the model's training data (overrides ``rescale``).
    tile, overlap, batch_size : int
        Tiled inference settings: the largest tile side, the halo of context around each tile's
        kept part (default: the bundle's, at least the network's receptive field, so tiles give
        the whole-image output), tiles per network call.
    engine : {"auto", "onnx", "keras"}
        What runs the network (:meth:`particleseg.models.Bundle.predictor`): ``auto`` is ONNX
        Runtime when the bundle has an ONNX export and onnxruntime is installed, else Keras.
    strict : bool
        Calibration metadata that cannot be used (zero or infinite size, unknown unit) is an
        error naming the file and the tag, instead of a note and pixels
        (:func:`particleseg.io.read_image`).
    jobs : int
        Images of a batch (:func:`segment_files`) segmented at the same time, each in a worker
        process, while the finished ones are written in order: the outputs are those of one
        after another. ``0``: one per usable CPU core (the command line's default); ``1`` (the
        default here): one after another in this process. A script that asks for workers needs
        the ``if __name__ == "__main__":`` guard, as any use of :mod:`multiprocessing`.
    """

    threshold: float | None = None
    split: bool | None = None
    seed_level: float | None = None
    seed_depth: float | None = None
    merge_level: float | None = None
    split_level: float | None = None
    min_size: int | None = None
    min_confidence: float | None = None
    fill_holes: bool | None = None
    augment: bool | None = None
    exclude_border: bool | None = None
    intensity_filter: str | None = None
    polarity: str | None = None
    shape: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    min_score: float | None = None
    crop_rows: int | str | None = "auto"
    annotations: bool = True
    rescale: float | None = None
    particle_size: float | None = None
    tile: int | None = None
    overlap: int | None = None
    batch_size: int = 4
    engine: str = "auto"
    progress: bool | None = None
    strict: bool = False
    jobs: int = 1

    def resolved(self, bundle: Bundle) -> "SegmentParams":
        """Copy with every ``None`` replaced by the bundle's default.

        The defaults are those of :func:`particleseg.params.bundle_defaults`.
        """
        d = bundle_defaults(bundle)
        return dataclasses.replace(
            self,
            **{name: _first(getattr(self, name), d[name]) for name in (*POSTPROCESS_PARAMETERS, "polarity")},
            min_score=_first(self.min_score, d["min_score"] if bundle.has_classifier else None),
            tile=_first(self.tile, bundle.tile),
            overlap=_first(self.overlap, bundle.overlap),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the parameters as a dict of field name to value (:func:`dataclasses.asdict`)."""
        return dataclasses.asdict(self)


def _accept_former_names(cls):
    """Let ``SegmentParams`` take and give its former field names.

    These are ``seed_threshold``, ``h``, ``min_area``, ``classifier_threshold``; see
    :data:`particleseg.params.ALIASES`.
    """
    init = cls.__init__

    def __init__(self, *args, **kwargs):
        for old, new in ALIASES.items():
            if old in kwargs:  # wins over the new name, as in dataclasses.replace(params, h=2)
                kwargs[new] = kwargs.pop(old)
        init(self, *args, **kwargs)

    __init__.__doc__ = init.__doc__
    cls.__init__ = __init__
    for old, new in ALIASES.items():
        setattr(
            cls,
            old,
            property(
                lambda self, n=new: getattr(self, n),
                lambda self, value, n=new: setattr(self, n, value),
                doc=f"Former name of {new}.",
            ),
        )
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


#: the line the command line and Fiji's Log add when the network output is averaged over the
#: image's orientations (``augment``)
AUGMENT_NOTE = "network output averaged over the 8 flips and quarter turns (augment)"

#: after inference on an image of more pixels than this, ONNX Runtime's memory arena is handed
#: back (:func:`predict_probabilities`)
RELEASE_ABOVE_PIXELS = 1024 * 1024


def predict_probabilities(
    image: np.ndarray,
    bundle: Bundle,
    params: SegmentParams | None = None,
    predictor=None,
    out=None,
    invert: bool = False,
) -> np.ndarray:
    """Normalise ``image`` ((Y, X) or (Y, X, C)) as the bundle says and run tiled inference.

    Returns the network output ``(Y, X, K)`` float32 at the size of ``image`` (written into
    ``out`` when given, see :func:`particleseg.inference.predict_tiled`). With ``invert`` the
    network sees the image's gray values mirrored (:func:`invert`). The normalisation is applied a
    strip of rows at a time (:func:`particleseg.preprocess.input_normalizer`): no whole-image
    float32 copy. With exact tiles, a tile holds at most
    :data:`particleseg.inference.MAX_TILE_PIXELS` pixels (:func:`particleseg.inference.bounded_tile`:
    a 2048x2048 image is two tiles, not one). With
    ``out`` (a large image) or an image of more than
    :data:`RELEASE_ABOVE_PIXELS`, ONNX Runtime's memory arena is handed back afterwards, so the
    steps that follow do not sit on top of it (smaller images keep it for the next image: growing
    it again costs about 0.07 s per megapixel of tile).
    """
    params = (params or SegmentParams()).resolved(bundle)
    img = np.asanyarray(image)  # a memory map stays one (its pages are dropped as it is read)
    if img.ndim == 2:
        img = img[..., None]
    bundle.check_channels(img.shape[-1])
    predict = predictor or bundle.predictor(params.engine)
    if params.augment:
        predict = augmented(predict)
    prepare = input_normalizer(img, bundle.metadata["input"]["normalization"], invert=invert)
    release_pages(img)
    result = predict_tiled(
        predict,
        img,
        # (exact tiles: the layout changes the memory, not the output)
        tile=bounded_tile(img.shape, params.tile, params.overlap, bundle.network.multiple_of)
        if bundle.exact_tiles
        else params.tile,
        overlap=params.overlap,
        batch_size=params.batch_size,
        multiple_of=bundle.network.multiple_of,
        out=out,
        progress=params.progress,
        prepare=prepare,
    )
    release = getattr(predict, "release_memory", None)
    if release is not None and (out is not None or img.shape[0] * img.shape[1] > RELEASE_ABOVE_PIXELS):
        release()
    return result


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
        Replaces the bundle's network (batch -> output); default ``bundle.predictor(params.engine)``.

    Notes
    -----
    An image of more than :data:`particleseg.strips.MIN_PIXELS` pixels (data bar cropped) is
    segmented in strips (:mod:`particleseg.strips`; the same result, memory bounded by strip
    size x image width after the network); its ``probabilities`` and ``labels`` are then
    read-only ``numpy.memmap`` arrays on temporary files in the system's temporary folder
    (``TMPDIR``), removed when the arrays are freed.
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
    # burned-in scale bars and letters, painted over for what follows
    drawn = annotation_mask(work) if params.annotations else None
    seen = fill_annotations(work, drawn) if drawn is not None and drawn.any() else work

    if strips.use_strips(work.shape, bundle.heads, params):  # a large image: in strips of rows
        return _segment_in_strips(work, crop, seen, drawn, bundle, params, cal, name, predictor)

    # 2.-4. polarity and scale, network, particles (more passes at the scale of the particles
    # found, when the first estimate was off; both polarities, when the image leaves it open)
    scale, prob, labels = network_passes(seen, bundle, params, name, predictor)
    polarity = scale.polarity
    if not labels.any():
        warnings.warn(
            f"{name}: no particles found ({scale.describe()}); if there are particles, set "
            "--polarity or --particle-size",
            ParticlesegWarning,
            stacklevel=2,
        )

    # 5. measure and filter (border = image edges and the cropped rows)
    border = np.zeros(work.shape, bool)
    border[[0, -1], :] = True
    border[:, [0, -1]] = True
    table = measure_particles(labels, work, cal, border=border)
    fractions = keep = scores = None
    if len(table):
        if drawn is not None and drawn.any():
            fractions = pp.overlap_fraction(labels, drawn)[table["label"].to_numpy()]
        if params.intensity_filter:
            ids, keep, thr = pp.intensity_filter(labels, work, params.intensity_filter, polarity)
        if params.min_score is not None and bundle.has_classifier:
            score_map = classifier_map(work, labels > 0, bundle, params)
            ids, scores = pp.particle_scores(labels, score_map)
    reject_particles(table, params, polarity, fractions, keep, scores)
    labels, table = kept_first(labels, table)

    # 6. back to the full image size (zeros in the cropped rows)
    if crop:
        labels = np.pad(labels, ((0, crop), (0, 0)))
        prob = np.pad(prob, ((0, crop), (0, 0), (0, 0)))
    return Segmentation(prob.astype(np.float32), labels, table, cal, crop, scale.factor, params, scale)


def reject_particles(
    table: pd.DataFrame,
    params: SegmentParams,
    polarity: str,
    annotation_fraction=None,
    intensity_keep=None,
    classifier_scores=None,
) -> None:
    """Add ``kept`` and ``reject_reason`` to a measurement table, in place.

    ``reject_reason`` is the first of the filters a particle fails (annotation, border,
    intensity, shape, classifier), in that order.

    ``annotation_fraction`` (the fraction of each particle on burned-in annotations),
    ``intensity_keep`` (:func:`particleseg.postprocess.intensity_filter`) and
    ``classifier_scores`` are per row; None skips that filter.
    """
    table["kept"] = True
    table["reject_reason"] = ""

    def reject(mask_rows, reason):
        sel = mask_rows & table["kept"]
        table.loc[sel, "reject_reason"] = reason if isinstance(reason, str) else reason[sel]
        table.loc[sel, "kept"] = False

    if len(table):
        if annotation_fraction is not None:
            reject(annotation_fraction >= 0.5, "annotation")
        if params.exclude_border:
            reject(table["touches_border"].to_numpy(), "border")
        if intensity_keep is not None:
            reject(
                ~intensity_keep,
                f"intensity<{params.intensity_filter}"
                if polarity == "bright"
                else f"intensity>{params.intensity_filter}",
            )
        if params.shape:
            reasons = pp.shape_filter(table, params.shape)
            reject((reasons != "").to_numpy(), reasons)
        if classifier_scores is not None:
            table["classifier_score"] = classifier_scores
            reject(classifier_scores < params.min_score, "classifier")


def _segment_in_strips(
    work: np.ndarray,
    crop: int,
    seen: np.ndarray,
    drawn: np.ndarray | None,
    bundle: Bundle,
    params: SegmentParams,
    cal: Calibration,
    name: str,
    predictor,
) -> Segmentation:
    """Run steps 2-6 of :func:`segment_image` for a large image, strip by strip.

    Strips as in :mod:`particleseg.strips`: the same particles, labels and table; probabilities
    and labels come back memory-mapped.
    """
    h, w = work.shape
    source = None
    if _polarity_open(params, bundle):  # as network_passes decides; a weak score on the image's centre
        score, polarity = _polarity_estimate(seen, bundle)
        source = "estimated"
        if abs(score) < POLARITY_CHECK_BELOW:
            centre = analysis_crop(seen, STRIPS_POLARITY_SIDE)
            polarity = network_passes(centre, bundle, params, name, predictor, score=score)[0].polarity
            source = "compared"
        params = dataclasses.replace(params, polarity=polarity)
    store = strips.RowFile((h + crop, w, strips.output_channels(bundle)), np.float32)
    net_params = strips.network_params(params, bundle)
    prob = _RowsOf(store, h)
    scale, _ = scale_and_network(seen, bundle, net_params, name, predictor, out=prob)
    found = strips.particles_in_strips(prob, bundle.heads, params)

    def rerun(scale):  # into the same stores: only the last pass's particles are kept
        nonlocal found
        found.store.close()
        _network_at_scale(seen, bundle, net_params, scale, predictor, out=prob)
        found = strips.particles_in_strips(prob, bundle.heads, params)
        return found, found.label_counts()

    scale, last = best_scale_pass(scale, found, found.label_counts(), rerun, bundle, keep=False)
    if last is None:  # the best pass was an earlier one: run it again
        rerun(scale)
    if source is not None:
        scale = dataclasses.replace(scale, polarity_source=source)
    polarity = scale.polarity
    if not found.n:
        warnings.warn(
            f"{name}: no particles found ({scale.describe()}); if there are particles, set "
            "--polarity or --particle-size",
            ParticlesegWarning,
            stacklevel=3,
        )
    annotations = drawn is not None and drawn.any()
    table, fractions, means = strips.measure_in_strips(
        found, work, cal, drawn if annotations else None, work if params.intensity_filter else None
    )
    keep = None
    if len(table) and params.intensity_filter:
        thr = pp.threshold_value(work, params.intensity_filter)
        keep = means > thr if polarity == "bright" else means < thr
    reject_particles(
        table, params, polarity, fractions[table["label"].to_numpy()] if annotations and len(table) else None, keep
    )
    lut, table = kept_first(np.arange(found.n + 1, dtype=np.int32), table)
    strips.relabel(found.store, lut)
    labels = strips.RowFile((h + crop, w), np.int32)
    step = strips.strip_rows_for(w)
    for y0 in range(0, h, step):
        labels.write(y0, found.store.read(y0, min(y0 + step, h)))
    found.store.close()
    return Segmentation(store.memmap(), labels.memmap(), table, cal, crop, scale.factor, params, scale)


class _RowsOf:
    """The first ``rows`` rows of a :class:`particleseg.strips.RowFile` as one.

    That is the network's output without the cropped data bar, which stays 0.
    """

    def __init__(self, store, rows: int):
        self.store, self.shape = store, (rows,) + store.shape[1:]
        self.ndim = len(self.shape)

    def read(self, y0: int, y1: int) -> np.ndarray:
        return self.store.read(y0, min(y1, self.shape[0]))

    def __setitem__(self, key, value) -> None:
        rows, cols = key[:2] if isinstance(key, tuple) else (key, slice(None))
        y0, y1, _ = rows.indices(self.shape[0])
        self.store[y0:y1, cols] = value


@dataclass(frozen=True)
class ScaleChoice:
    """How an image was shown to the network (:func:`choose_scale`).

    Attributes
    ----------
    polarity : {"bright", "dark"}
        The image's particles; the image is inverted for the network when this differs from
        the bundle's ``input.polarity``.
    polarity_source : {"given", "estimated", "compared"}
        ``"compared"``: estimated with the network's output in both polarities
        (:func:`network_passes`).
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
        return f"polarity {self.polarity} ({source_words(self.polarity_source)}), particle size {size}, " + (
            f"resampled x{self.factor:.3g}" if self.factor != 1 else "not resampled"
        )


def source_words(polarity_source: str) -> str:
    """Say a ``polarity_source`` in a log line.

    Examples
    --------
    >>> source_words("compared"), source_words("given")
    ('estimated, both polarities compared by the network', 'given')
    """
    return "estimated, both polarities compared by the network" if polarity_source == "compared" else polarity_source


def scale_summary(scale: ScaleChoice | None) -> dict[str, Any]:
    """Return the columns of ``summary.csv`` that say how an image was shown to the network.

    Those of the first slice, for a stack: ``polarity``, ``particle_size_px``, ``size_source``,
    ``scale_factor``.
    """
    if scale is None:
        return {}
    return {
        "polarity": scale.polarity,
        "polarity_source": scale.polarity_source,
        "particle_size_px": round(scale.particle_size, 2) if scale.particle_size else None,
        "size_source": scale.size_source,
        "scale_factor": round(scale.factor, 4),
    }


def _size_factor(size: float, bundle: Bundle) -> float:
    """Resampling factor for particles ``size`` px across.

    1 inside the range of sizes the model was trained on (``scale.particle_size_range_px``),
    else the factor that brings them to its ``particle_size_px``.
    """
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
    auto_size = (
        not params.particle_size
        and not params.rescale
        and bool(target)
        and bool(bundle.metadata["scale"].get("particle_size_range_px"))
    )
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
    # no particle-like structure (noise, an empty field): the image stays as it is, and what
    # the network makes of it does not set a scale either (refine_scale)
    auto_size = auto_size and size is not None
    return ScaleChoice(polarity, polarity_source, factor, size, source, net_polarity, auto_size)


def scale_and_network(
    work: np.ndarray, bundle: Bundle, params: SegmentParams, name: str = "image", predictor=None, out=None
) -> tuple[ScaleChoice, np.ndarray]:
    """:func:`choose_scale`, then the network output at that scale (``params`` resolved).

    When the scale waits for the particle-size estimate (no ``particle_size`` or ``rescale``
    given) and the network runs with ONNX Runtime (which releases the GIL), the network starts
    on the image as it is, at the polarity already known, in a second thread while the size is
    estimated; its output is used when the estimate leaves the image as it is (the usual case),
    else the network runs again at the chosen scale. The result is the same either way: this
    only puts a second core to work on a single image. With ``out`` (a large image, in strips)
    the estimate and the network run one after the other: their memory would add up.
    """
    if (
        predictor is not None
        or params.particle_size
        or params.rescale
        or out is not None
        or bundle.engine(params.engine) != "onnx"
    ):
        scale = choose_scale(work, bundle, params, name)
        return scale, _network_at_scale(work, bundle, params, scale, predictor, out)
    net_polarity = bundle.metadata["input"].get("polarity", "bright")
    if (params.polarity or "auto") == "auto":
        polarity, source = estimate_polarity(work, default=net_polarity), "estimated"
    else:
        polarity, source = params.polarity, "given"
    as_is = ScaleChoice(polarity, source, 1.0, None, "none", net_polarity)
    with ThreadPoolExecutor(1, thread_name_prefix="particleseg-network") as pool:
        early = pool.submit(_network_at_scale, work, bundle, params, as_is, None, out)
        scale = choose_scale(work, bundle, dataclasses.replace(params, polarity=polarity), name)
        scale = dataclasses.replace(scale, polarity_source=source)
        if scale.factor == 1:
            return scale, early.result()
    return scale, _network_at_scale(work, bundle, params, scale, None, out)


#: an image segmented in strips has its polarity checked (:func:`network_passes`) on its centre,
#: at most this many pixels a side (the largest square segmented whole: strips.MIN_PIXELS)
STRIPS_POLARITY_SIDE = 2048


def _polarity_open(params: SegmentParams, bundle: Bundle) -> bool:
    """Whether the polarity is to be estimated and may be checked by the network (it has a foreground head)."""
    return (params.polarity or "auto") == "auto" and "foreground" in bundle.heads


def _polarity_estimate(seen: np.ndarray, bundle: Bundle, score: float | None = None) -> tuple[float, str]:
    """Return the :func:`~particleseg.autoscale.polarity_score` of ``seen`` (or ``score``) and the polarity it says."""
    score = polarity_score(seen) if score is None else score
    return score, polarity_from_score(score, bundle.metadata["input"].get("polarity", "bright"))


def network_passes(
    seen: np.ndarray,
    bundle: Bundle,
    params: SegmentParams,
    name: str = "image",
    predictor=None,
    score: float | None = None,
) -> tuple[ScaleChoice, np.ndarray, np.ndarray]:
    """Run steps 2-4 of :func:`segment_image`: polarity and scale, the network, the particles.

    The scale is refined pass by pass (:func:`best_scale_pass`). The polarity is the one given,
    or that of :func:`particleseg.autoscale.polarity_score`; when that score is weak (under
    :data:`~particleseg.autoscale.POLARITY_CHECK_BELOW` in magnitude), the image goes through
    the network in both polarities and :func:`particleseg.autoscale.checked_polarity_score`
    decides from the particles found in each: in the wrong polarity the network takes the
    background between particles for particles, concave and covering more of the image.
    ``polarity_source`` is then ``"compared"``. Warnings come from the pass kept only.

    On the EMPS development set (366 images) the check ran on 28 % of the images; the polarity
    came out wrong on 12 images instead of 21, foreground IoU rose from 0.748 to 0.760, and the
    whole set took 17 % longer (benchmarks/bench_emps.py).

    ``score``, when given, is the polarity score to go by (that of the whole image, for its
    centre crop in strips); else that of ``seen``.

    Returns
    -------
    scale : ScaleChoice
    probabilities : (Y, X, K) array
    labels : (Y, X) int array
        Every particle found, before the filters of step 5.
    """
    if not _polarity_open(params, bundle):
        return _network_and_particles(seen, bundle, params, name, predictor)
    default = bundle.metadata["input"].get("polarity", "bright")
    score, polarity = _polarity_estimate(seen, bundle, score)

    def run(pol):
        return _network_and_particles(seen, bundle, dataclasses.replace(params, polarity=pol), name, predictor)

    if abs(score) >= POLARITY_CHECK_BELOW:
        passes, source = {polarity: run(polarity)}, "estimated"
    else:
        passes, said = {}, {}
        for pol in POLARITIES:
            # (catch_warnings swaps the process's warning state: a warning another thread gives
            # meanwhile may be lost; segment_files' jobs are processes, not threads)
            with warnings.catch_warnings(record=True) as said[pol]:
                warnings.simplefilter("always")
                passes[pol] = run(pol)
        fg = bundle.heads.index("foreground")
        evidence = {
            pol: (particle_solidity(labels), float(np.mean(prob[..., fg] > 0.5)))
            for pol, (_, prob, labels) in passes.items()
        }
        polarity = polarity_from_score(checked_polarity_score(score, evidence["bright"], evidence["dark"]), default)
        source = "compared"
        for w in said[polarity]:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    scale, prob, labels = passes[polarity]
    return dataclasses.replace(scale, polarity_source=source), prob, labels


def _network_and_particles(
    seen: np.ndarray, bundle: Bundle, params: SegmentParams, name: str, predictor
) -> tuple[ScaleChoice, np.ndarray, np.ndarray]:
    """:func:`network_passes` at the polarity of ``params`` (estimated when ``"auto"``)."""
    scale, prob = scale_and_network(seen, bundle, params, name, predictor)
    labels = particles_from_probabilities(prob, bundle.heads, params)

    def another_pass(scale):
        prob = _network_at_scale(seen, bundle, params, scale, predictor)
        labels = particles_from_probabilities(prob, bundle.heads, params)
        return (prob, labels), np.bincount(labels.ravel())

    scale, (prob, labels) = best_scale_pass(scale, (prob, labels), np.bincount(labels.ravel()), another_pass, bundle)
    return scale, prob, labels


def _warn_size(size: float, name: str) -> None:
    lo, hi = SUPPORTED_SIZE_PX
    if not lo <= size <= hi:
        warnings.warn(
            f"{name}: estimated particle size {size:.0f} px is outside the supported {lo:g}-{hi:g} px; "
            f"using {min(max(size, lo), hi):g} px (set --particle-size PX if that is wrong)",
            ParticlesegWarning,
            stacklevel=3,
        )


def refine_scale(scale: ScaleChoice, labels: np.ndarray, bundle: Bundle) -> ScaleChoice | None:
    """Find a better scale from the particles a first pass found.

    As Cellpose refines its size estimate with the masks [1]_: when their typical diameter
    (:func:`particleseg.autoscale.detection_diameter`, area-weighted) calls for a resampling
    factor more than 25 % away from the one used, the new choice; else None. Only for an
    estimated scale (never when the user gave one).

    References
    ----------
    .. [1] C. Stringer et al., "Cellpose: a generalist algorithm for cellular segmentation",
           Nature Methods 18, 100-106 (2021).
    """
    if not scale.auto_size:
        return None
    return _refined(scale, np.bincount(np.asarray(labels).ravel()), bundle)


def _refined(scale: ScaleChoice, counts: np.ndarray, bundle: Bundle) -> ScaleChoice | None:
    """:func:`refine_scale` from ``counts``, the pixel count of each label (entry 0: background)."""
    if not scale.auto_size:
        return None
    size = detection_diameter(counts[1:])
    if size is None:
        return None
    factor = _size_factor(size, bundle)
    if abs(np.log(factor / scale.factor)) <= np.log(1.25):
        return None
    return dataclasses.replace(scale, factor=factor, particle_size=size, size_source="detections")


#: at most this many network passes of one image while its scale is refined from the particles
#: found (:func:`best_scale_pass`)
MAX_SCALE_PASSES = 4


def scale_consistency(scale: ScaleChoice, counts: np.ndarray, bundle: Bundle) -> float:
    """How far the particles a pass found were, as the network saw them, from its training size.

    The absolute log ratio of their typical diameter (:func:`particleseg.autoscale.detection_diameter`)
    times the resampling factor of the pass to the bundle's ``particle_size_px``: 0 when the
    network saw particles of the size it was trained on; infinite without particles or for a
    bundle that does not record its training size.

    Parameters
    ----------
    scale : ScaleChoice
        How the pass showed the image to the network.
    counts : 1D int array
        The pixel count of each label the pass found (entry 0: background).
    bundle : Bundle

    Examples
    --------
    >>> from particleseg.models import load_bundle
    >>> bundle = load_bundle("default")
    >>> scale = ScaleChoice("bright", "estimated", 0.5, 50.0, "estimated", auto_size=True)
    >>> counts = np.bincount(np.repeat(np.arange(5), 1963))  # 4 particles of 50 px diameter
    >>> round(scale_consistency(scale, counts, bundle), 2)  # typical 44 px, seen at 22, trained on 25
    0.12
    """
    size = detection_diameter(np.asarray(counts)[1:])
    if size is None or not bundle.particle_size_px:
        return float("inf")
    return float(abs(np.log(size * scale.factor / bundle.particle_size_px)))


def best_scale_pass(scale: ScaleChoice, result, counts: np.ndarray, run, bundle: Bundle, keep: bool = True):
    """Refine an estimated scale pass by pass and return the pass whose particles fit the network best.

    After the first pass (``scale``, its ``result`` and label ``counts``), the particles found set
    a new scale (:func:`refine_scale`) and ``run(scale) -> (result, counts)`` runs the network
    and the particle search once more, as Cellpose refines its size estimate with the masks it
    finds [1]_; this repeats until the new scale is within 25 % of one already tried, or after
    :data:`MAX_SCALE_PASSES` passes. When no pass has found anything in the resampled image,
    the image as it is gets a pass (on the EMPS development set, 4 of the 5 images where
    nothing was found had an estimate 6 to 20 times too large; as they are, 3 of them are
    segmented). Of the passes, the one whose particles the network saw closest to its
    training size (:func:`scale_consistency`; the earliest on a tie) is the result. At a wrong scale the
    network finds fragments of large particles, or merges small ones, and their size points
    away from the scale it saw them at; at the right one it is consistent. On the EMPS
    development set (366 images) this raised F1 at IoU 0.5 from 0.642 (one refinement, kept
    whatever it found) to 0.658 (benchmarks/bench_emps.py).

    Parameters
    ----------
    scale : ScaleChoice
        The first pass's; a scale that was not estimated (``auto_size`` false) is not refined.
    result : object
        What the first pass produced (returned when it is the best).
    counts : 1D int array
        Pixel count of each label of the first pass (entry 0: background).
    run : callable
        ``run(scale) -> (result, counts)``: one more pass at ``scale``.
    bundle : Bundle
    keep : bool
        Whether ``result`` objects stay valid after later passes. When false (passes that
        write into one store), the best pass's result is returned only when it is the last
        one, else None: the caller runs it again.

    Returns
    -------
    scale : ScaleChoice
        The best pass's.
    result : object or None
        Its result (None when it must be run again, see ``keep``).

    References
    ----------
    .. [1] C. Stringer et al., "Cellpose: a generalist algorithm for cellular segmentation",
           Nature Methods 18, 100-106 (2021).
    """
    if not scale.auto_size:  # given, or a bundle without a training size: nothing to refine
        return measured_size(scale, counts), result
    best = (scale_consistency(scale, counts, bundle), scale, result, counts)
    tried = [scale.factor]
    while len(tried) < MAX_SCALE_PASSES:
        refined = _refined(scale, counts, bundle)
        if refined is None and not np.isfinite(best[0]) and 1.0 not in tried:
            # no pass found anything in the resampled image: the estimate may be far off (a
            # texture taken for particles several times too large, which the resampling then
            # wipes out), so the image as it is, at the network's own scale, gets a pass
            refined = dataclasses.replace(scale, factor=1.0)
        if refined is None or any(abs(np.log(refined.factor / f)) <= np.log(1.25) for f in tried):
            break
        scale = refined
        tried.append(scale.factor)
        result, counts = run(scale)
        fit = scale_consistency(scale, counts, bundle)
        if fit < best[0]:
            best = (fit, scale, result, counts)
        elif not keep:
            best = (best[0], best[1], None, best[3])
    return measured_size(best[1], best[3]), best[2]


def measured_size(scale: ScaleChoice, counts: np.ndarray) -> ScaleChoice:
    """Report the median diameter of the particles found, in place of the estimate that set the scale.

    The size an image's summary reports (``particle_size_px``, ``size_source``
    ``"detections"``) is the equivalent circular diameter of the median particle area that the
    pass kept by :func:`best_scale_pass` found, as Cellpose reports the median diameter of the
    masks it found as its size estimate [1]_, not the classical estimate that chose the scale. On
    the EMPS development set (366 images) the size reported came within ±25 % of the true median
    diameter on 72 % of the images instead of 67 % (benchmarks/bench_emps.py). The resampling
    ``factor`` stays the one the network saw. The same holds for a bundle that does not resample
    (a specialist trained at its users' scale, without ``scale.particle_size_range_px``): its
    size is measured on the particles found too. A size given (``--particle-size``), a scale
    given (``--rescale``), or a pass without particles is left as it is.

    Parameters
    ----------
    scale : ScaleChoice
        The pass's.
    counts : 1D int array
        Pixel count of each label the pass found (entry 0: background).

    Examples
    --------
    >>> scale = ScaleChoice("bright", "estimated", 1.0, 20.0, "estimated", auto_size=True)
    >>> measured_size(scale, np.bincount(np.repeat(np.arange(5), 491))).describe()  # 4 of 25 px
    'polarity bright (estimated), particle size 25 px (detections), not resampled'
    >>> measured_size(scale, np.array([100])).particle_size  # nothing found: the estimate stays
    20.0

    References
    ----------
    .. [1] C. Stringer et al., "Cellpose: a generalist algorithm for cellular segmentation",
           Nature Methods 18, 100-106 (2021).
    """
    size = median_diameter(np.asarray(counts)[1:])
    if scale.size_source not in ("estimated", "detections") or size is None:
        return scale
    return dataclasses.replace(scale, particle_size=size, size_source="detections")


def _network_at_scale(
    work: np.ndarray, bundle: Bundle, params: SegmentParams, scale: ScaleChoice, predictor=None, out=None
) -> np.ndarray:
    """Run the network on ``work`` shown as ``scale`` says (inverted, resampled).

    The output is at the size of ``work`` (in ``out`` when given: a
    :class:`particleseg.strips.RowFile`).
    """
    flip = scale.polarity != scale.network_polarity
    if scale.factor != 1 and out is not None:
        # a large image: resampled strip by strip into a row file, the network's output at its
        # scale into another, resampled back strip by strip (no whole-image array)
        shape = rescaled_shape(work.shape, scale.factor)
        net_in = strips.RowFile(shape, np.float32)
        at_scale = strips.RowFile(shape + (strips.output_channels(bundle),), np.float32)
        try:
            rescale_rows(work, scale.factor, out=net_in, invert=flip)
            predict_probabilities(net_in.memmap(), bundle, params, predictor, out=at_scale)
            return resize_to(at_scale, work.shape, order=1, out=out)
        finally:
            net_in.close()
            at_scale.close()
    if scale.factor != 1:
        net_in = rescale(invert(work) if flip else work, scale.factor)
        prob = predict_probabilities(net_in, bundle, params, predictor)
        return resize_to(prob, work.shape, order=1)
    # as it is: inverted (if so) and normalised a strip at a time
    return predict_probabilities(work, bundle, params, predictor, out=out, invert=flip)


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


def merge_slices(results: list[Segmentation], stacked: bool = True) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
    """One label stack and table from the segmentations of a stack's slices.

    Labels are unique across the slices, the kept particles numbered ``1..N`` over the whole
    stack (then the rejected ones), with a ``slice`` column (1-based) when ``stacked``.

    Returns
    -------
    labels : (Z, Y, X) int array
        Every particle.
    table : DataFrame
        One row per particle, in label order.
    kept : (Z, Y, X) int32 array
        The kept particles only.
    """
    tables, planes, offset = [], [], 0
    for z, seg in enumerate(results):
        t = seg.table.copy()
        t["label"] = t["label"] + offset
        if stacked:
            t.insert(1, "slice", z + 1)
        tables.append(t)
        planes.append(np.where(seg.labels > 0, seg.labels + offset, 0))
        offset += int(seg.labels.max())
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    labels, table = kept_first(np.stack(planes), table)
    n_kept = int(table["kept"].sum()) if len(table) else 0
    return labels, table, np.where(labels <= n_kept, labels, 0).astype(np.int32)


def kept_first(labels: np.ndarray, table: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """Renumber the particles so the kept ones come first.

    The kept ones become ``1..N`` (the names of their ROIs) and the rejected ones ``N+1..M``;
    the table's ``label`` column follows and its rows are sorted by it.

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
    by the distance transform of the mask without either), merge those the network saw no
    gap between (``params.merge_level``), fill holes, remove small particles
    and those whose mean foreground probability is below ``params.min_confidence``.
    ``params`` must be resolved (see :meth:`SegmentParams.resolved`).
    """
    fg = prob[..., heads.index("foreground")]
    mask = fg > params.threshold
    if params.split:
        labels = pp.split_touching(
            mask, seed_map(prob, heads), params.seed_level, params.split_level, seed_depth=params.seed_depth
        )
        if params.merge_level:
            labels = pp.merge_touching(labels, fg, params.merge_level)
    else:
        labels = pp.label_mask(mask)
    if params.fill_holes:
        labels = pp.fill_holes(labels)
    labels = pp.remove_small(labels, params.min_size)
    if params.min_confidence:
        labels = pp.remove_uncertain(labels, fg, params.min_confidence)
    return pp.relabel_sequential(labels)


def seed_map(prob: np.ndarray, heads: list[str]) -> np.ndarray | None:
    """Return the map whose high regions seed the watershed (:func:`particles_from_probabilities`).

    The ``distance`` head, else ``foreground * (1 - boundary)``, else None (the distance
    transform of the mask).
    """
    if "distance" in heads:
        return prob[..., heads.index("distance")]
    if "boundary" in heads:
        return prob[..., heads.index("foreground")] * (1 - prob[..., heads.index("boundary")])
    return None


def classifier_map(image: np.ndarray, mask: np.ndarray, bundle: Bundle, params: SegmentParams) -> np.ndarray:
    """Per-pixel score of the bundle's particle classifier.

    Its input is the normalised image and the segmentation mask as two channels and its output
    is the probability that a pixel belongs to a particle worth keeping.
    """
    img = normalize_input(np.asarray(image)[..., None], bundle.metadata["input"]["normalization"])
    x = np.concatenate([img, mask.astype(np.float32)[..., None]], -1)
    net = NetworkConfig.from_dict(bundle.metadata["classifier"]["network"])
    out = predict_tiled(
        bundle.classifier_predictor(params.engine),
        x,
        tile=params.tile,
        overlap=max(params.overlap, exact_halo(net) or 0),
        batch_size=params.batch_size,
        multiple_of=net.multiple_of,
        progress=params.progress,
        desc="classifier",
    )
    return out[..., 0]


# --------------------------------------------------------------------------------------------
# files


def output_paths(image_path: str | os.PathLike, out_dir: str | os.PathLike, overview: bool = True) -> dict[str, Path]:
    """Return the output files written for one image, by kind.

    The kinds: labels, mask, prob, rois, particles, overview (without overview when
    ``overview`` is False).
    """
    stem = Path(image_path).stem
    out = Path(out_dir)
    return {s[1:].split(".")[0]: out / f"{stem}{s}" for s in OUTPUT_SUFFIXES if overview or s != "_overview.png"}


#: the folder inside an output folder that holds one completion record per image
RECORD_DIR = ".particleseg"
#: bytes per pixel that the label, mask and probability images need at least (16-bit, 8-bit, 32-bit)
_BYTES_PER_PIXEL = 7


def record_paths(
    image_path: str | os.PathLike, out_dir: str | os.PathLike, stem: str | None = None
) -> tuple[Path, Path]:
    """``(done, writing)``: the paths of an image's completion record and writing marker.

    The completion record of an image's outputs, ``OUT/.particleseg/STEM.done.json``, is
    written last and atomically once every output is in place; the marker
    ``STEM.writing.json`` is present while its outputs are being written (a run killed then
    leaves it, and a rerun redoes the image). ``stem`` (default: the image's) names the records
    of other batch items (a SIMS field, a FIB-SEM slice).
    """
    stem = Path(image_path).stem if stem is None else stem
    folder = Path(out_dir) / RECORD_DIR
    return folder / f"{stem}.done.json", folder / f"{stem}.writing.json"


def _input_files(path) -> list[Path]:
    """Return the files of an input.

    Itself, or those of a folder store (OME-Zarr), in a fixed order; of a list of inputs (a
    SIMS field's per-isotope files, a FIB-SEM stack's channels), theirs.
    """
    if isinstance(path, (list, tuple)):
        return [q for p in path for q in _input_files(Path(p))]
    return sorted(q for q in path.rglob("*") if q.is_file()) if path.is_dir() else [path]


def _size_and_time(path: Path) -> tuple[int, int]:
    stats = [q.stat() for q in _input_files(path)]
    return sum(st.st_size for st in stats), max((st.st_mtime_ns for st in stats), default=0)


def input_fingerprint(path) -> dict[str, Any]:
    """Size, modification time (ns) and SHA-256 of a file's content.

    Of a folder store's files: their total size, latest time, and the hash of their names and
    contents; of a list of inputs: the same over all their files.
    """
    path = [Path(p) for p in path] if isinstance(path, (list, tuple)) else Path(path)
    size, mtime = _size_and_time(path)
    h = hashlib.sha256()
    for q in _input_files(path):
        if isinstance(path, list):
            h.update(f"{q.stat().st_size}:".encode())
        elif path.is_dir():
            h.update(q.relative_to(path).as_posix().encode() + b"\0")
        with open(q, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return {"size": size, "mtime_ns": mtime, "sha256": h.hexdigest()}


def _same_input(recorded: dict, path) -> bool:
    """Whether ``path`` has the content recorded (size and time unchanged, else the SHA-256)."""
    try:
        size, mtime = _size_and_time(path)
        if size != recorded.get("size"):
            return False
        if mtime == recorded.get("mtime_ns"):
            return True
        return input_fingerprint(path)["sha256"] == recorded.get("sha256")
    except OSError:
        return False


def run_settings(
    bundle: Bundle,
    params: SegmentParams | None = None,
    write_overview: bool = True,
    pixel_size: float | None = None,
    unit: str | None = None,
    image_width: float | None = None,
) -> dict[str, Any]:
    """Everything that decides an image's outputs besides the image.

    The model (its bundle and a hash of its metadata), the resolved parameters, the calibration
    options, whether an overview is written. A rerun skips an image only when these are the
    same as recorded.
    """
    resolved = (params or SegmentParams()).resolved(bundle).to_dict()
    for name in (
        "progress",
        "batch_size",
        "engine",
        "strict",
        "jobs",
    ):  # do not change the result (ONNX and Keras agree)
        resolved.pop(name, None)
    settings = {
        **model_identity(bundle),
        **resolved,
        "pixel_size": pixel_size,
        "unit": unit,
        "image_width": image_width,
        "overview": bool(write_overview),
    }
    return json.loads(json.dumps(settings, default=_json_default))  # tuples -> lists, as read back


def _json_default(obj):
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, (Path, pd.Timestamp)):
        return str(obj)
    if obj is pd.NA:
        return None
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _write_json(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=1, default=_json_default)
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite=True)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _settings_diff(old: dict, new: dict, most: int = 3) -> str:
    keys = [k for k in dict.fromkeys([*old, *new]) if old.get(k) != new.get(k)]
    parts = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:most]]
    return ", ".join(parts) + (f" and {len(keys) - most} more" if len(keys) > most else "")


@dataclass
class ItemPlan:
    """What a batch does with one input (:func:`plan_item`).

    ``new`` (no outputs), ``done`` (complete outputs of the same input and settings: skipped,
    ``row`` is its summary row), ``redo`` (its outputs are incomplete: an interrupted run, or
    ``--overwrite``) or ``conflict`` (outputs exist that this run may not replace; ``message``
    says why).
    """

    path: Path
    action: str
    message: str = ""
    row: dict | None = None


def plan_item(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    settings: dict,
    overwrite: bool = False,
    outputs: dict[str, Path] | None = None,
    name: str | None = None,
    stem: str | None = None,
    inputs=None,
) -> ItemPlan:
    """Decide, before any work, what a batch does with the image ``path`` (see :class:`ItemPlan`).

    An item found complete whose ``writing`` marker is still there (a run killed after its
    completion record was written, before the marker was removed) loses the marker here, for
    every batch command alike.

    The other batches plan their items the same way: ``outputs`` (default: the image's
    :func:`output_paths`), ``name`` (the input's name in the record; default the file name),
    ``stem`` (of the record, :func:`record_paths`) and ``inputs`` (the files fingerprinted;
    default ``path``) describe a SIMS field or a FIB-SEM slice.
    """
    path, out_dir = Path(path), Path(out_dir)
    if overwrite:
        return ItemPlan(path, "redo")
    outputs = output_paths(path, out_dir, settings.get("overview", True)) if outputs is None else outputs
    name = path.name if name is None else name
    stem = path.stem if stem is None else stem
    done_path, writing_path = record_paths(path, out_dir, stem)
    done = _read_json(done_path) if done_path.exists() else None
    writing = _read_json(writing_path) if writing_path.exists() else None
    record = done or writing
    if record is not None:
        recorded = record.get("input", {})
        if recorded.get("name") != name:
            return ItemPlan(
                path,
                "conflict",
                f"{path}: {out_dir} holds the outputs of {recorded.get('name')} "
                f"(the same name stem {stem!r}); use another --out, or --overwrite to replace them",
            )
        if done is not None:
            if not _same_input(recorded, path if inputs is None else inputs):
                return ItemPlan(
                    path,
                    "conflict",
                    f"{path}: changed since its outputs in {out_dir} were made; use --overwrite to replace them",
                )
            if done.get("settings") != settings:
                return ItemPlan(
                    path,
                    "conflict",
                    f"{path}: its outputs in {out_dir} were made with other settings "
                    f"({_settings_diff(done.get('settings') or {}, settings)}); use --overwrite to replace them",
                )
            sizes = done.get("outputs") or {}
            complete = set(sizes) == {_output_name(p, out_dir) for p in outputs.values()} and all(
                (out_dir / name).is_file() and (out_dir / name).stat().st_size == size for name, size in sizes.items()
            )
            if complete:
                if writing is not None:  # killed after the record was written, before the marker went
                    try:
                        writing_path.unlink(missing_ok=True)
                    except OSError:
                        pass  # (a read-only folder: the complete record decides, as now)
                return ItemPlan(path, "done", row=done.get("row"))
        return ItemPlan(path, "redo")  # our own outputs, incomplete (a run was interrupted)
    existing = [p for p in outputs.values() if p.exists()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        return ItemPlan(
            path,
            "conflict",
            f"{existing[0]}: output exists{more} and particleseg has no record of "
            "making it; use --overwrite to replace it",
        )
    return ItemPlan(path, "new")


def _output_name(path: Path, out_dir: Path) -> str:
    """Return an output's name in a completion record: its path inside the output folder.

    For example ``labels/a_labels.tif``; for the outputs of ``segment``, the file name.
    """
    try:
        return Path(path).relative_to(out_dir).as_posix()
    except ValueError:
        return Path(path).name


def check_stems(files: Iterable[str | os.PathLike]) -> None:
    """Refuse inputs whose outputs would have the same names, before any work.

    For example ``a.tif`` and ``a.png``, or two folders' ``a.tif``.
    """
    seen: dict[str, Path] = {}
    for f in map(Path, files):
        other = seen.setdefault(f.stem, f)
        if other != f:
            raise InputError(
                f"{other} and {f}: the same name stem {f.stem!r}, so their outputs would have the "
                f"same names ({f.stem}_labels.tif, ...); rename one, or segment them into different "
                "--out folders"
            )


def resolve_calibration(
    file_calibration: Calibration,
    width_px: int,
    pixel_size: float | None = None,
    unit: str | None = None,
    image_width: float | None = None,
) -> Calibration:
    """Calibration from the options, else from the file.

    ``pixel_size`` (with ``unit``, default nm) wins over ``image_width`` (field-of-view width,
    in ``unit``, default nm) wins over the file's metadata.
    """
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

    The outputs are written after all the computing (:func:`prepare_file`, then
    :func:`write_prepared`); then, last and atomically, the completion record
    ``.particleseg/name.done.json`` (input fingerprint, settings, output sizes, the summary row;
    see :func:`record_paths`), from which a rerun of a batch knows the image is done. When
    writing fails (disk full, ...) or is interrupted, the image's outputs are removed: nothing
    partial stays under a final name.

    Returns a summary row (see :func:`particleseg.measure.summarize`) with the file name,
    the calibration and the number of rejected particles.
    """
    return write_prepared(
        prepare_file(path, out_dir, bundle, params, pixel_size, unit, image_width, overwrite, write_overview)
    )


@dataclass
class PreparedFile:
    """One image file segmented and measured, its outputs not yet written.

    Made by :func:`prepare_file`; :func:`write_prepared` writes them. Picklable: a batch's
    worker processes send it to the process that writes.
    """

    path: Path
    out_dir: Path
    paths: dict[str, Path]
    fingerprint: dict[str, Any]
    settings: dict[str, Any]
    row: dict[str, Any]
    calibration: Calibration
    labels: np.ndarray  # kept particles 1..N, (Y, X) or (Z, Y, X)
    mask: np.ndarray
    probabilities: np.ndarray  # foreground
    table: pd.DataFrame
    overview: bytes | None  # the PNG, rendered
    seconds: float = 0.0  # computing time, when a worker process prepared it


def prepare_file(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    bundle: Bundle,
    params: SegmentParams | None = None,
    pixel_size: float | None = None,
    unit: str | None = None,
    image_width: float | None = None,
    overwrite: bool = False,
    write_overview: bool = True,
) -> PreparedFile:
    """Compute everything :func:`segment_file` computes for one image file, writing nothing.

    The overview figure is rendered (see :class:`PreparedFile`). Fails before any work when
    outputs exist and ``overwrite`` is False.
    """
    path = Path(path)
    paths = output_paths(path, out_dir, write_overview)
    check_outputs(list(paths.values()), overwrite)  # fail before any work
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    settings = run_settings(bundle, params, write_overview, pixel_size, unit, image_width)
    image, file_cal = read_image(
        path,
        allow_nonsquare=pixel_size is not None or image_width is not None,
        strict=bool(params is not None and params.strict),
    )
    try:
        fingerprint = input_fingerprint(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read image ({exc.strerror or exc})") from None
    cal = resolve_calibration(file_cal, image.shape[-1], pixel_size, unit, image_width)
    stack = image if image.ndim == 3 else image[None]
    results = []
    for z, plane in enumerate(stack):
        name = f"{path} (slice {z + 1})" if image.ndim == 3 else str(path)
        results.append(segment_image(plane, bundle, params, cal, name=name))

    large = image.ndim == 2 and isinstance(results[0].labels, np.memmap)  # segmented in strips
    mask = None
    if large:  # merge_slices of one image changes nothing; kept particles and mask strip by strip
        seg = results[0]
        n = int(seg.table["label"].max()) if len(seg.table) else 0
        _, table = kept_first(np.arange(n + 1, dtype=np.int32), pd.concat([seg.table.copy()], ignore_index=True))
        kept, mask = strips.kept_and_mask(seg.labels, int(table["kept"].sum()) if len(table) else 0)
        labels, prob = seg.labels[None], seg.foreground
    else:
        labels, table, kept = merge_slices(results, stacked=image.ndim == 3)
        squeeze = (lambda a: a[0]) if image.ndim == 2 else (lambda a: a)
        kept = squeeze(kept)
        prob = squeeze(np.stack([seg.foreground for seg in results]))
    row = {
        "file": path.name,
        "status": "ok",
        "error": "",
        "slices": len(stack),
        "pixel_size": cal.pixel_size,
        "crop_rows": results[0].crop_rows,
        "rejected": int((~table["kept"]).sum()) if len(table) else 0,
        **scale_summary(results[0].scale),
    }
    row.update(summarize(table, cal.unit, cal.nm_per_unit()))
    overview = None
    if write_overview:
        first = table[table["slice"] == 1] if image.ndim == 3 else table
        title = path.name if image.ndim == 2 else f"{path.name} (slice 1 of {len(stack)})"
        if large:  # sampled every k pixels (the figure shows about 500 pixels of it)
            k = strips.overview_step(stack[0].shape)
            sampled = np.ascontiguousarray(labels[0][::k, ::k])
            release_pages(labels[0])
            overview = overview_png(np.ascontiguousarray(stack[0][::k, ::k]), sampled, first, cal.unit, title)
        else:
            overview = overview_png(stack[0], labels[0], first, cal.unit, title)
    return PreparedFile(
        path,
        Path(out_dir),
        paths,
        {"name": path.name, **fingerprint},
        settings,
        row,
        cal,
        kept,
        pp.labels_to_mask(kept) if mask is None else mask,
        prob,
        table,
        overview,
    )


def overview_png(image: np.ndarray, labels: np.ndarray, table: pd.DataFrame, unit: str, title: str) -> bytes:
    """Render the overview figure (:func:`particleseg.report.overview_figure`) as PNG bytes."""
    buffer = BytesIO()
    save_png(overview_figure(image, labels, table, unit, title=title), buffer)
    return buffer.getvalue()


def write_prepared(item: PreparedFile) -> dict[str, Any]:
    """Write the outputs of a :class:`PreparedFile` and its completion record.

    Written by :func:`_write_item`; returns its summary row.
    """
    cal = item.calibration
    writers = {
        "labels": lambda p: write_tiff(p, item.labels, cal, True),
        "mask": lambda p: write_tiff(p, item.mask, cal, True),
        "prob": lambda p: write_tiff(p, item.probabilities, cal, True),
        "rois": lambda p: write_rois(p, item.labels, overwrite=True),
        "particles": lambda p: write_csv(p, with_units(item.table, cal.unit), True),
        "overview": lambda p: write_atomic(p, lambda tmp: tmp.write_bytes(item.overview), overwrite=True),
    }
    _write_item(item.path, item.out_dir, item.paths, writers, item.fingerprint, item.settings, item.row)
    return item.row


def _write_item(
    path: Path,
    out_dir: Path,
    paths: dict[str, Path],
    writers: dict,
    fingerprint: dict,
    settings: dict,
    row: dict,
    stem: str | None = None,
) -> None:
    """Write one image's outputs between its ``writing`` marker and its ``done`` record.

    On any failure or interruption remove them all (and the marker), so no partial set stays.
    (Also one SIMS field's or FIB-SEM slice's, named by ``stem``.)
    """
    done, writing = record_paths(path, out_dir, stem)
    record = {"format": 1, "input": fingerprint, "settings": settings, "particleseg": __version__}
    committed = False
    try:
        _write_json(writing, {**record, "state": "writing"})
        done.unlink(missing_ok=True)
        for kind, p in paths.items():
            writers[kind](p)
        _write_json(
            done,
            {
                **record,
                "state": "done",
                "outputs": {_output_name(p, out_dir): p.stat().st_size for p in paths.values()},
                "row": row,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
        committed = True  # from here on the image is done, whatever happens
        writing.unlink(missing_ok=True)
    except BaseException as exc:
        if committed:  # only the marker's removal was left
            if interrupts.as_interrupt(exc) is not None:
                raise
            return  # the marker could not be removed: a rerun finds the complete record first
        try:
            for p in paths.values():
                p.unlink(missing_ok=True)
            done.unlink(missing_ok=True)
            writing.unlink(missing_ok=True)
            _remove_own_temporaries([*paths.values(), done, writing])
        except OSError:
            pass  # the marker stays if it cannot go: a rerun redoes the image
        raise


def _remove_own_temporaries(paths: Iterable[Path]) -> None:
    """Remove this process's temporary files of ``paths``.

    :func:`particleseg.io.write_atomic` names them ``.STEM.tmpPID-XXXXXXXX.SUFFIX``: one that
    an interruption left, when it came while the temporary file was being made, before the
    writer knew its name.
    """
    for p in paths:
        for tmp in p.parent.glob(f".{glob.escape(p.stem)}.tmp{os.getpid()}-*"):
            tmp.unlink(missing_ok=True)


def segment_files(
    paths: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    bundle: Bundle | str | os.PathLike | None = None,
    params: SegmentParams | None = None,
    overwrite: bool = False,
    progress: bool = True,
    write_overview: bool = True,
    on_item=None,
    stop=None,
    **calibration,
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Segment many files, resumably; a bad file is reported and the batch goes on.

    Before any computing: inputs whose outputs would have the same names are refused
    (:func:`check_stems`); the output folder must be a folder that can be made and written, with
    free space for at least the label, mask and probability images; each image is planned
    (:func:`plan_item`): an image whose complete outputs were made from the same input with the
    same settings is not segmented again ("done earlier"), one whose outputs are incomplete (an
    interrupted run) is redone, one with outputs this run may not replace fails with one line
    (``--overwrite`` redoes everything). Temporary files a killed run left are removed.

    A disk-full or not-writable error stops the batch (the images not started are counted, not
    listed). Ctrl-C (KeyboardInterrupt) rolls back the image being written, writes the summary
    and is raised again; ``stop()``, when given, is asked before each image (Fiji's Esc).

    Writes ``summary.csv`` (one row per image, failures included with their error) into
    ``out_dir``; a later batch into the same folder adds its rows to it (see
    :func:`merge_summary`). Returns the summary of this batch (``summary.attrs`` holds the
    counts ``done_earlier``, ``segmented``, ``failed``, ``not_started``, why it ``stopped`` early,
    and the names of the ``done_files``) and the
    list of ``(file, error)`` failures.

    ``on_item(index, total, path, row, state)``, when given, is called before each image
    (``state`` ``"start"``, ``row`` None) and after it (``"segmented"``, ``"done earlier"``,
    ``"failed"``); without it, errors are printed to stderr.

    With ``params.jobs`` other than 1 (0: one per usable core) and more than one image to
    segment, worker processes prepare the next images (:func:`prepare_file`) while this process
    writes the finished ones in order (:class:`_Workers`); outputs, summary, records, callbacks
    and the handling of errors and interruptions are those of one image after another. Images
    of more than :data:`particleseg.strips.MIN_PIXELS` pixels (segmented in strips, results on
    temporary files) are prepared in this process, in their turn.
    """
    files = list(dict.fromkeys(list_images(paths)))  # the same file named twice is segmented once
    if not files:
        raise InputError(f"{', '.join(map(str, paths))}: no image files (TIFF, PNG, JPEG) found")
    check_stems(files)
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    bundle.check_use("sem", str(files[0]) if len(files) == 1 else f"{len(files)} images ({files[0]}, ...)")
    out_dir = Path(out_dir)
    check_output_folder(out_dir)
    summary_path = out_dir / "summary.csv"
    earlier = read_summary(summary_path, overwrite)  # fail before any work if it is not ours
    names = [summary_path.name] + [p.name for f in files for p in output_paths(f, out_dir).values()]
    remove_stale_temporaries(out_dir, names)
    remove_stale_temporaries(out_dir / RECORD_DIR)
    settings = run_settings(bundle, params, write_overview, **calibration)
    plans = [plan_item(f, out_dir, settings, overwrite) for f in files]
    pixels = {i: image_pixels(pl.path) for i, pl in enumerate(plans) if pl.action in ("new", "redo")}
    check_output_folder(out_dir, _BYTES_PER_PIXEL * sum(pixels.values()))

    def report(i: int, f: Path, row: dict | None, state: str) -> None:
        if on_item is not None:
            on_item(i, len(files), f, row, state)
        elif state == "failed":
            tqdm.write(f"particleseg: error: {row['error']}", file=sys.stderr)

    rows: list[dict | None] = [None] * len(files)
    failures, kept_files = [], []
    counts = {"done_earlier": 0, "segmented": 0, "failed": 0, "not_started": 0, "stopped": ""}
    done_files: list[str] = []

    def failed(i: int, f: Path, msg: str, seconds: float | None = None) -> None:
        failures.append((str(f), msg))
        rows[i] = {"file": f.name, "status": "failed", "error": msg, "seconds": seconds}
        counts["failed"] += 1
        report(i, f, rows[i], "failed")

    for i, pl in enumerate(plans):  # before any computing: what is done, what cannot be done
        if pl.action == "conflict":
            kept_files.append(pl.path.name)
            failed(i, pl.path, pl.message)
        elif pl.action == "done":
            rows[i] = dict(pl.row or {"file": pl.path.name, "status": "ok", "error": ""})
            counts["done_earlier"] += 1
            done_files.append(pl.path.name)
            report(i, pl.path, rows[i], "done earlier")

    interrupted = None
    pending = [i for i, pl in enumerate(plans) if pl.action in ("new", "redo")]
    n, i = 0, None
    jobs = batch_jobs(params.jobs if params is not None else 1, len(pending))
    workers = _Workers(jobs, bundle, params, out_dir, write_overview, calibration) if jobs > 1 else None
    # images segmented in strips are prepared here, not in a worker: their results are memory
    # maps of temporary files, which a worker would send over whole (gigabytes at 8192x8192)
    large = {k for k in pending if workers is not None and pixels[k] > strips.MIN_PIXELS}

    def prepare(k: int) -> PreparedFile:
        return prepare_file(
            plans[k].path,
            out_dir,
            bundle,
            params,
            overwrite=plans[k].action == "redo" or overwrite,
            write_overview=write_overview,
            **calibration,
        )

    try:
        for n, i in enumerate(tqdm(pending, desc="segment", unit="image", disable=not progress or len(pending) < 2)):
            f = plans[i].path
            interrupts.check()  # one a library swallowed whole
            if stop is not None and stop():
                counts["not_started"] = len(pending) - n
                counts["stopped"] = "canceled"
                break
            if workers is not None:  # the next images are prepared while this one is written
                for k in pending[n : n + jobs + 1]:
                    if k not in large:
                        workers.submit(k, plans[k].path, plans[k].action == "redo" or overwrite)
            report(i, f, None, "start")
            t0 = time.perf_counter()
            try:
                if workers is not None and i not in large:  # its seconds: the worker's, then the writing's
                    item = workers.result(i)
                    t0 = time.perf_counter() - item.seconds
                else:
                    item = prepare(i)
                row = write_prepared(item)
            except (ParticlesegError, OSError, ValueError) as exc:
                interrupts.check(exc)  # Ctrl-C or kill that a library turned into this error
                if isinstance(exc, OutputExistsError):
                    kept_files.append(f.name)
                msg = str(exc) if str(f) in str(exc) or _is_folder_error(exc) else f"{f}: {exc}"
                failed(i, f, msg, round(time.perf_counter() - t0, 3))
                if _is_folder_error(exc):  # every later image would fail the same way
                    counts["not_started"] = len(pending) - n - 1
                    counts["stopped"] = msg
                    if counts["not_started"] and on_item is None:
                        tqdm.write(
                            f"particleseg: error: stopped; {counts['not_started']} image(s) not started",
                            file=sys.stderr,
                        )
                    break
                continue
            row["seconds"] = round(time.perf_counter() - t0, 3)
            rows[i] = row
            counts["segmented"] += 1
            report(i, f, row, "segmented")
    except BaseException as exc:  # Ctrl-C, or SIGTERM in the CLI: whatever the moment, keep what is complete
        interrupted = interrupts.as_interrupt(exc)  # (also one a library turned into another error)
        if interrupted is None:
            raise
        counts["stopped"] = "interrupted"
        counts["not_started"] = len(pending) - n - (1 if i is not None and rows[i] is not None else 0)
        if i is not None and rows[i] is None:
            now = plan_item(plans[i].path, out_dir, settings)
            if now.action == "done":  # interrupted after its completion record was written
                rows[i] = dict(now.row or {})
                counts["segmented"] += 1
                counts["not_started"] -= 1
    finally:
        if workers is not None:  # the images prepared ahead and not written are dropped
            workers.close()
    summary = typed_summary(pd.DataFrame([r for r in rows if r is not None]))
    for attempt in (1, 2):  # a second Ctrl-C while the summary is written: write it again, then stop
        try:
            write_csv(summary_path, merge_summary(earlier, summary, kept_files), overwrite=True)
            break
        except OutputError as exc:
            failures.append((str(summary_path), str(exc)))
            if on_item is None:
                tqdm.write(f"particleseg: error: {exc}", file=sys.stderr)
            break
        except KeyboardInterrupt as exc:
            interrupted = interrupted or exc
            if attempt == 2:
                raise
    summary.attrs.update(counts, done_files=done_files)
    if interrupted is not None:
        raise interrupted
    return summary, failures


def usable_cpus() -> int:
    """Count the CPU cores this process may run on (its affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def batch_jobs(jobs: int | None, n_images: int) -> int:
    """Worker processes for a batch of ``n_images``.

    ``jobs`` (0 or None: one per usable core, :func:`usable_cpus`), at most one per image; 1
    means no workers (one image after another in this process).
    """
    if jobs is not None and int(jobs) < 0:
        raise InputError(f"jobs: must be 0 (one per CPU core) or more, got {jobs}")
    jobs = int(jobs) if jobs else usable_cpus()
    return max(1, min(jobs, n_images))


class _Workers:
    """The worker processes of a batch (:func:`segment_files` with ``jobs`` > 1).

    Each prepares whole images (:func:`prepare_file`: reading, network, particles,
    measurements, the overview figure), which the batch writes in their order, so the network
    of one image runs beside the post-processing, measurement and writing of others, on every
    core.

    The workers write no outputs: an interrupted batch rolls back only the image being written
    (in this process), and the workers are ended. Each hands its prepared image over in a file of
    its own, in a private temporary folder of the batch (the system's, not the output folder,
    whose free space is the outputs'; removed once read, the folder when the batch ends), not
    through the pool's result pipe: a worker ended while it wrote a large result into that pipe
    left a partial message there, on which the pool's manager thread then waited for ever, and
    with it the process's exit. They ignore Ctrl-C (the batch stops them), end
    when this process dies (``kill -9``), run ONNX Runtime with their share of the cores, and
    send their warnings back, to be shown with their image. They are started by
    :func:`particleseg.workers.context` (a forkserver), never forked from this process.
    """

    def __init__(
        self,
        jobs: int,
        bundle: Bundle,
        params: SegmentParams | None,
        out_dir: Path,
        write_overview: bool,
        calibration: dict,
    ):
        threads = max(1, usable_cpus() // jobs)
        state = (bundle.path, bundle.metadata, bundle.source)  # a fresh Bundle: no loaded network to send
        self.params = dataclasses.replace(params or SegmentParams(), progress=False)
        self.options = {"write_overview": write_overview, **calibration}
        self.out_dir = out_dir
        self.pool = ProcessPoolExecutor(
            jobs, mp_context=context(), initializer=_worker_start, initargs=(state, threads, os.getpid())
        )
        self.futures: dict[int, Any] = {}
        self.hand_overs: dict[int, Path] = {}  # the file each image's worker writes its result to
        remove_stale_batch_folders()
        self.hand_over_dir = Path(tempfile.mkdtemp(prefix=f"{BATCH_FOLDER_PREFIX}{os.getpid()}-"))  # (mode 700)

    def submit(self, key: int, path: Path, overwrite: bool) -> None:
        """Start preparing ``path`` (once per ``key``)."""
        if key not in self.futures:
            hand_over = self.hand_over_dir / f"{key}.pickle"
            self.hand_overs[key] = hand_over
            self.futures[key] = self.pool.submit(
                _worker_prepare, path, self.out_dir, self.params, overwrite, self.options, hand_over
            )

    def result(self, key: int) -> PreparedFile:
        """Return the prepared image of ``key`` (its warnings shown now); raise its error."""
        try:
            # popped once done: interrupted while waiting, the image is still being prepared,
            # and close() must see it to end its worker (else the process waits for it at exit)
            result = self.futures[key].result()
            del self.futures[key]
        except BrokenProcessPool:
            raise ParticlesegError(
                "a worker process of the batch ended unexpectedly (out of memory?); "
                "run again, with --jobs 1 to segment one image at a time"
            ) from None
        hand_over = self.hand_overs[key]
        try:
            if result is None:
                try:
                    with open(hand_over, "rb") as fh:
                        result = pickle.load(fh)
                except FileNotFoundError:
                    raise ParticlesegError(
                        f"its prepared result, {hand_over}, was removed from the temporary folder while the "
                        "batch ran (a temporary-file cleaner?); run the batch again to segment it"
                    ) from None
        finally:
            hand_over.unlink(missing_ok=True)
            del self.hand_overs[key]
        item, error, notes = result
        for message, category, filename, lineno in notes:
            warnings.warn_explicit(message, category, filename, lineno)
        if error is not None:
            raise error
        return item

    def close(self) -> None:
        """Drop what is queued and end the workers (those still computing too)."""
        processes = list((getattr(self.pool, "_processes", None) or {}).values())  # (shutdown forgets them)
        busy = any(not f.done() for f in self.futures.values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes if busy else ():
            proc.terminate()
        for proc in processes:
            proc.join(10)
        self.futures.clear()
        shutil.rmtree(self.hand_over_dir, ignore_errors=True)  # results not read, or partly written
        self.hand_overs.clear()


#: the name of a batch's temporary folder begins with this and the batch's process id
BATCH_FOLDER_PREFIX = "particleseg-batch-"


def remove_stale_batch_folders(folder: str | os.PathLike | None = None) -> list[Path]:
    """Remove the temporary folders of batches whose process is gone (a ``kill -9``).

    A batch with workers (:class:`_Workers`) removes its folder in the system's temporary
    directory (``folder``, default :func:`tempfile.gettempdir`) when it ends; a batch killed
    outright leaves it, holding up to ``jobs + 1`` prepared images. The folder's name holds
    the batch's process id: this user's folders whose process no longer exists are removed
    (a folder whose process id was taken by another process is left for later). Returns the
    folders removed.
    """
    removed: list[Path] = []
    if os.name != "posix":  # (batches with workers need a forkserver: POSIX only)
        return removed
    for path in Path(folder or tempfile.gettempdir()).glob(BATCH_FOLDER_PREFIX + "*-*"):
        pid = path.name[len(BATCH_FOLDER_PREFIX) :].split("-", 1)[0]
        try:
            if not pid.isdigit() or path.lstat().st_uid != os.getuid() or not path.is_dir():
                continue
        except OSError:  # the folder gone meanwhile
            continue
        if not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


_WORKER: dict[str, Any] = {}


def _worker_start(bundle_state: tuple, threads: int, parent: int) -> None:
    """Initialize a batch's worker process (:class:`_Workers`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the batch decides
    export.INTRA_OP_THREADS = threads
    _WORKER["bundle"] = Bundle(*bundle_state)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True, name="particleseg-parent-watch").start()


def _exit_with(parent: int) -> None:
    """End this worker once the batch's process is gone.

    That is, once the batch's process is killed (nobody would end it), or the process it was
    started from (the forkserver, which ends with the batch's process).
    """
    started_from = os.getppid()
    while True:
        time.sleep(0.5)
        if os.getppid() != started_from:
            os._exit(1)
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            os._exit(1)
        except OSError:
            pass


def _worker_prepare(
    path: Path, out_dir: Path, params: SegmentParams, overwrite: bool, options: dict, hand_over: Path
) -> tuple | None:
    """Run :func:`prepare_file` in a worker; write its result to the file ``hand_over``.

    The result, pickled, is ``(item, None, notes)`` or ``(None, error, notes)``, the notes being
    the warnings it gave (:class:`_Workers` says why a file). Returns None, or the result itself
    when the file cannot be written (a full disk).
    """
    t0 = time.perf_counter()
    item = error = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            item = prepare_file(path, out_dir, _WORKER["bundle"], params, overwrite=overwrite, **options)
            item.seconds = time.perf_counter() - t0
        except (ParticlesegError, OSError, ValueError) as exc:
            error = exc
    notes = [(str(w.message), w.category, w.filename, w.lineno) for w in caught]
    try:
        with open(hand_over, "wb") as fh:
            pickle.dump((item, error, notes), fh, protocol=pickle.HIGHEST_PROTOCOL)
    except OSError:  # a full disk, or the batch ended meanwhile: through the pipe
        hand_over.unlink(missing_ok=True)
        return item, error, notes
    return None


def _is_folder_error(exc: BaseException) -> bool:
    """Tell whether ``exc`` is a disk-full or not-writable error in the output folder.

    Such an error is the folder's problem, not one image's.
    """
    text = str(exc)
    return isinstance(exc, OutputError) and (": disk full" in text or ": not writable" in text)


def batch_report(summary: pd.DataFrame) -> str:
    """Say what a batch did, as ``2 done earlier, 1 segmented, 0 failed``.

    With ``, 3 not started`` when some were not started; ``summary`` is one returned by
    :func:`segment_files` (its ``attrs`` hold the counts).
    """
    a = summary.attrs
    text = f"{a.get('done_earlier', 0)} done earlier, {a.get('segmented', 0)} segmented, {a.get('failed', 0)} failed"
    return text + (f", {a['not_started']} not started" if a.get("not_started") else "")


SUMMARY_INTEGERS = ("slices", "crop_rows", "rejected", "count")


def typed_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """Give a summary's integer columns (:data:`SUMMARY_INTEGERS`) the nullable ``Int64`` type.

    In place, for those of the columns it has: their values stay integers even with failed rows,
    whose cells are empty. Returns the same table.
    """
    for col in SUMMARY_INTEGERS:
        if col in summary:
            summary[col] = summary[col].astype("Int64")  # integers even with failed rows
    return summary


def read_summary(path: str | os.PathLike, overwrite: bool = False) -> pd.DataFrame | None:
    """Read the ``summary.csv`` of earlier batches into a folder, or None if there is none.

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
        raise OutputExistsError(
            f"{path}: output exists and is not a particleseg summary ({problem}); "
            "use another output folder or --overwrite to replace it"
        )
    table["error"] = table["error"].astype(object).where(table["error"].notna(), "") if "error" in table else ""
    return table


def merge_summary(
    earlier: pd.DataFrame | None, summary: pd.DataFrame, keep_earlier: Iterable[str] = ()
) -> pd.DataFrame:
    """One summary of everything segmented into a folder.

    The rows of earlier batches, then this batch's rows. A file of this batch replaces its
    earlier row (segmented again with ``--overwrite``, or failed this time), except the files in
    ``keep_earlier`` (this batch refused them because their outputs exist: the earlier row
    still describes them).
    """
    if earlier is None or not len(earlier):
        return summary
    keep_earlier = set(keep_earlier)
    old_files = set(earlier["file"].astype(str))
    new = summary[~(summary["file"].astype(str).isin(keep_earlier & old_files))]
    old = earlier[~earlier["file"].astype(str).isin(set(new["file"].astype(str)))]
    return typed_summary(pd.concat([old, new], ignore_index=True))
