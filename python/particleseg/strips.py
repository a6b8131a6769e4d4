"""Segmentation of large images in strips of rows, with memory bounded by strip size x width.

:func:`particleseg.pipeline.segment_image` takes this path by itself for an image of more than
:data:`MIN_PIXELS` pixels (after cropping the data bar) whose bundle splits particles with a
predicted map (a ``distance`` or ``boundary`` head) or does not split them; smaller images,
and the rest, go the whole-image way, unchanged.

On this path the network's output goes to a file on disk (:class:`RowFile`, a temporary file
that is removed at once and freed when closed) tile row by tile row, with tiles of at most
:data:`TILE` pixels a side (tiled inference is exact, so the tile size does not change the
output); the particles are found strip by strip (:func:`particles_in_strips`) and measured
strip by strip (:func:`measure_in_strips`); labels and probabilities come back as read-only
``numpy.memmap`` arrays on such files, so only the pages a caller reads take memory.

**Exact stitching.** Every step from the probabilities to the particles (threshold, seeds, the
watershed within the mask, hole filling, the size and confidence filters) acts on one
8-connected region of the foreground mask at a time: a region's particles depend on that region
alone. A strip's window reaches one row above its core and grows downwards (by
:data:`STRIP_ROWS` rows at a time, up to the whole image) until every mask region whose top row
lies in the core ends inside the window; the particles of those regions are kept from that
window. So each region is processed whole, once, as in the whole-image run, whatever its size:
there is no halo that a large particle could exceed (a region as tall as the image makes one
window of the whole image). Particles are numbered as the whole-image run numbers them: seeded
ones by the raster position of their seed region's first pixel, then the unseeded parts by
their first pixel, then ``1..N`` in that order. The tests compare both paths on images whose
particles cross strip borders (``tests/test_strips.py``): same labels, same table.

One tie-break of scikit-image's watershed is outside this argument: marker pixels of equal
value enter its priority queue with equal age, and the queue's layout (which depends on the
whole image) decides which of two such pixels floods a pixel both touch. With the continuous
values of a predicted seed map such exact ties between two seed regions are rare; with the
distance transform of the mask they are common, so bundles that split by the distance
transform (no ``distance`` or ``boundary`` head) stay on the whole-image path.

**Before and around the network** the steps work by strips or windows as well, with the same
values as on the whole image: the annotation search labels the extreme gray values strip by
strip and paints each annotation over in a window around it
(:mod:`particleseg.annotations`); the polarity and particle-size estimates look at the centre
4096 x 4096 pixels (:func:`particleseg.autoscale.analysis_crop`); the network's input is
normalised (and inverted) a strip of rows at a time inside the tiling
(:func:`particleseg.preprocess.input_normalizer`), resampled strip by strip into a row file when
the particles call for another scale (:func:`particleseg.preprocess.rescale_rows`); ONNX
Runtime's memory arena is handed back after inference; the TIFFs and ROI set of
:func:`particleseg.pipeline.segment_file` are written strip by strip, dropping the pages of the
memory maps they read (:func:`particleseg.io.write.release_pages`). What still grows with the
image's area: the image itself as read (1 byte per pixel for 8-bit images), the annotation mask
(1 byte per pixel), and, only when annotations were painted over, one float32 copy of the
image. Images wider than 8192 pixels get strips of fewer rows (:func:`strip_rows_for`).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from . import postprocess as pp
from .io.write import release_pages
from .measure import measure_particles

#: Images with more pixels than this (after cropping the data bar) are segmented in strips:
#: larger than the default model's largest tile (2048 x 2048), which it predicts whole.
MIN_PIXELS = 2048 * 2048
#: Rows of a strip's core (and of each step by which a window grows), at most.
STRIP_ROWS = 512
#: Pixels of a strip's core: images wider than ``STRIP_PIXELS / STRIP_ROWS`` (8192) get strips
#: of fewer rows (at least 64), so a window's memory does not grow with the width either.
STRIP_PIXELS = 512 * 8192


def strip_rows_for(width: int) -> int:
    """Rows of a strip's core for an image ``width`` pixels wide (:data:`STRIP_ROWS`, fewer when wide).

    Examples
    --------
    >>> strip_rows_for(4096), strip_rows_for(16384)
    (512, 256)
    """
    return int(min(STRIP_ROWS, max(64, STRIP_PIXELS // max(1, int(width)))))


#: Largest network tile side on the strip path (ONNX Runtime needs about 0.5 GiB per Mpx of tile).
TILE = 1024

_EIGHT = np.ones((3, 3), bool)


class RowFile:
    """A ``(Y, X)`` or ``(Y, X, K)`` array in a temporary file, read and written by rows.

    The file is removed as soon as it is made (freed when the last handle to it closes), so a
    killed process leaves nothing behind. Writing takes ``store[y0:y1, x0:x1] = block`` (what
    :func:`particleseg.inference.predict_tiled` does with its ``out``); :meth:`read` gives rows;
    :meth:`memmap` a read-only array of the whole.
    """

    def __init__(self, shape: tuple[int, ...], dtype, folder: str | os.PathLike | None = None):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        fd, path = tempfile.mkstemp(prefix="particleseg-strip-", suffix=".raw", dir=folder)
        self._file = os.fdopen(fd, "r+b", buffering=0)
        try:
            os.unlink(path)
        except OSError:  # pragma: no cover - (Windows) removed on close instead
            self._path = path
        else:
            self._path = None
        self._row = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._file.truncate(self._row * self.shape[0])  # sparse: zeros until written

    @property
    def ndim(self) -> int:
        """Number of axes."""
        return len(self.shape)

    def read(self, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1`` as a new array."""
        y0, y1 = max(0, y0), min(self.shape[0], y1)
        self._file.seek(y0 * self._row)
        out = np.fromfile(self._file, self.dtype, (y1 - y0) * (self._row // self.dtype.itemsize))
        return out.reshape((y1 - y0,) + self.shape[1:])

    def write(self, y0: int, block: np.ndarray) -> None:
        """Whole rows from ``y0`` on."""
        block = np.ascontiguousarray(block, self.dtype)
        assert block.shape[1:] == self.shape[1:]
        self._file.seek(y0 * self._row)
        self._file.write(block.tobytes())

    def __setitem__(self, key, value) -> None:
        """Write ``store[y0:y1, x0:x1] = value`` (slices only)."""
        rows, cols = (key, slice(None)) if not isinstance(key, tuple) else key[:2]
        y0, y1, _ = rows.indices(self.shape[0])
        x0, x1, _ = cols.indices(self.shape[1])
        value = np.broadcast_to(np.asarray(value, self.dtype), (y1 - y0, x1 - x0) + self.shape[2:])
        if x0 == 0 and x1 == self.shape[1]:
            self.write(y0, value)
            return
        item = self._row // self.shape[1]
        for i, y in enumerate(range(y0, y1)):
            self._file.seek(y * self._row + x0 * item)
            self._file.write(np.ascontiguousarray(value[i]).tobytes())

    def memmap(self) -> np.memmap:
        """Map the whole array, read-only (pages are read when used)."""
        self._file.flush()
        return np.memmap(self._file, self.dtype, "r", shape=self.shape)

    def close(self) -> None:
        """Close the file (it is freed when no memory map holds it)."""
        self._file.close()
        if self._path:  # pragma: no cover
            os.unlink(self._path)


def use_strips(shape: tuple[int, int], heads: list[str], params) -> bool:
    """Tell whether an image of ``shape`` (data bar cropped) is segmented in strips.

    It is when it has more than :data:`MIN_PIXELS` pixels, its particles are split by a
    predicted map or not split, and no particle classifier is used (``params.min_score``
    None; its network runs on the whole image).
    """
    return (
        shape[0] * shape[1] > MIN_PIXELS
        and (not params.split or "distance" in heads or "boundary" in heads)
        and "foreground" in heads
        and getattr(params, "min_score", None) is None
    )


def network_params(params, bundle):
    """Return ``params`` with the tile at most :data:`TILE`, for the strip path.

    Only when the bundle's tiles are exact (then the tile size does not change the output).
    """
    import dataclasses

    if not bundle.exact_tiles:
        return params
    return dataclasses.replace(params, tile=min(params.tile or TILE, TILE))


def output_channels(bundle) -> int:
    """Channels of the bundle's network output."""
    return int(sum(h.channels for h in bundle.network.heads))


class StripParticles:
    """The particles of :func:`particles_in_strips`.

    Their labels ``1..n`` in a :class:`RowFile` (int32, the shape of the image), pixel counts
    and rows.

    Attributes
    ----------
    store : RowFile
    n : int
    areas : (n,) int64 array
        Pixels of particle ``k + 1``.
    top, bottom : (n,) int64 arrays
        First row and one past the last row of each particle.
    """

    def __init__(self, store: RowFile, areas: np.ndarray, top: np.ndarray, bottom: np.ndarray):
        self.store, self.areas, self.top, self.bottom = store, areas, top, bottom
        self.n = len(areas)

    def label_counts(self) -> np.ndarray:
        """``np.bincount`` of the label image: entry 0 unused (0 here), then the areas."""
        return np.concatenate([[0], self.areas])


def _first_pixels(lab: np.ndarray, n: int) -> np.ndarray:
    """Return the flat index (in ``lab``) of the first pixel, in raster order, of labels ``1..n``.

    Entry 0 and absent labels: -1.
    """
    out = np.full(n + 1, -1, np.int64)
    if n == 0:
        return out
    for k, sl in enumerate(ndi.find_objects(lab, n), start=1):
        if sl is None:
            continue
        r = sl[0].start
        out[k] = r * lab.shape[1] + sl[1].start + int(np.argmax(lab[r, sl[1]] == k))
    return out


def _window_particles(prob: np.ndarray, heads: list[str], params):
    """Find the particles of one window, as the whole-image run finds them.

    What :func:`particleseg.pipeline.particles_from_probabilities` does, without the final
    renumbering; also each label's sort key within the window (group 0: grown
    from a seed region, keyed by the seed region's first pixel; group 1: the unseeded parts, by
    their first pixel) and the 8-connected mask regions.
    """
    from .pipeline import seed_map

    fg = prob[..., heads.index("foreground")]
    mask = fg > params.threshold
    if params.split:
        labels, markers = pp.split_touching(
            mask,
            seed_map(prob, heads),
            params.seed_level,
            params.split_level,
            return_markers=True,
            seed_depth=params.seed_depth,
        )
        n_seeded = int(markers.max(initial=0))
    else:
        labels, markers, n_seeded = pp.label_mask(mask), None, 0
    n = int(labels.max(initial=0))
    first = _first_pixels(labels, n)
    if n_seeded:
        first[1 : n_seeded + 1] = _first_pixels(markers, n_seeded)[1:]
    group = (np.arange(n + 1) > n_seeded).astype(np.int64)
    # the mask region of each label, found at its first pixel (a mask pixel: seeds and the
    # unseeded parts lie in the mask, filled holes come later)
    regions, _ = ndi.label(mask, structure=_EIGHT)
    region_of = np.zeros(n + 1, np.int64)
    region_of[1:] = regions.ravel()[first[1:]]
    if params.split and params.merge_level:  # within one mask region; a merged particle keeps its first part's key
        labels = pp.merge_touching(labels, fg, params.merge_level)
    if params.fill_holes:
        labels = pp.fill_holes(labels)
    labels = pp.remove_small(labels, params.min_size)
    if params.min_confidence:
        labels = pp.remove_uncertain(labels, fg, params.min_confidence)
    return labels, first, group, regions, region_of


def particles_in_strips(
    prob: RowFile, heads: list[str], params, strip_rows: int | None = None, folder=None
) -> StripParticles:
    """Find the particles of a network output on disk, strip by strip.

    The labels of :func:`particleseg.pipeline.particles_from_probabilities` on the whole output
    (``params`` resolved), in a :class:`RowFile`.

    Parameters
    ----------
    prob : RowFile
        ``(Y, X, K)`` float32 network output, channels ``heads``.
    heads : list of str
    params : SegmentParams
        Resolved.
    strip_rows : int, optional
        Rows of a strip's core; :func:`strip_rows_for` the width by default.
    folder : path, optional
        Where the temporary file goes (default: the system's temporary folder).
    """
    h, w = prob.shape[:2]
    step = int(strip_rows or strip_rows_for(w))
    store = RowFile((h, w), np.int32, folder)
    keys, areas, tops, bottoms = [], [], [], []
    count = 0
    for c0 in range(0, h, step):
        c1 = min(c0 + step, h)
        y0 = max(c0 - 1, 0)  # one row above the core: regions that reach it started earlier
        y1 = min(c1 + step, h)
        while True:
            labels, first, group, regions, region_of = _window_particles(prob.read(y0, y1), heads, params)
            objects = ndi.find_objects(regions)
            top = np.array([-1] + [sl[0].start + y0 for sl in objects], np.int64)
            owned = (top >= c0) & (top < c1)
            owned[0] = False
            cut_top = np.unique(regions[0]) if y0 > 0 else np.zeros(0, np.int64)
            cut_bottom = np.unique(regions[-1]) if y1 < h else np.zeros(0, np.int64)
            owned[cut_top] = False  # (never true: such a region reaches above the core)
            if y1 < h and owned[cut_bottom[cut_bottom > 0]].any():
                y1 = min(y1 + step, h)  # a region of this core goes on below: grow the window
                continue
            break
        # the particles of the owned regions that survived the filters
        n = len(first) - 1
        present = np.zeros(n + 1, bool)
        present[np.unique(labels)] = True
        present[0] = False
        mine = present & owned[region_of]
        ids = np.flatnonzero(mine)
        if not len(ids):
            continue
        temp = np.zeros(n + 1, np.int32)
        temp[ids] = count + 1 + np.arange(len(ids), dtype=np.int32)
        count += len(ids)
        rows, cols = np.divmod(first[ids], w)
        keys.append(group[ids] * (h * w) + (rows + y0) * w + cols)
        areas.append(np.bincount(labels.ravel(), minlength=n + 1)[ids])
        objs = ndi.find_objects(np.where(mine[labels], labels, 0))
        tops.append(np.array([objs[i - 1][0].start + y0 for i in ids], np.int64))
        bottoms.append(np.array([objs[i - 1][0].stop + y0 for i in ids], np.int64))
        # write them (their rows may reach into later cores: read, add, write back)
        r0, r1 = int(tops[-1].min()), int(bottoms[-1].max())
        sub = temp[labels[r0 - y0 : r1 - y0]]
        store.write(r0, np.where(sub > 0, sub, store.read(r0, r1)))
    if not count:
        return StripParticles(store, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    keys = np.concatenate(keys)
    order = np.argsort(keys, kind="stable")
    final = np.zeros(count + 1, np.int32)
    final[order + 1] = np.arange(1, count + 1, dtype=np.int32)
    relabel(store, final, step)
    areas, tops, bottoms = (np.concatenate(a)[order] for a in (areas, tops, bottoms))
    return StripParticles(store, areas, tops, bottoms)


def relabel(store: RowFile, lut: np.ndarray, strip_rows: int | None = None) -> None:
    """Apply ``lut`` (``lut[old] = new``) to the labels in ``store``, strip by strip."""
    step = int(strip_rows or strip_rows_for(store.shape[1]))
    for y0 in range(0, store.shape[0], step):
        y1 = min(y0 + step, store.shape[0])
        store.write(y0, lut[store.read(y0, y1)])


def measure_in_strips(
    particles: StripParticles,
    image: np.ndarray,
    calibration,
    drawn: np.ndarray | None = None,
    intensity: np.ndarray | None = None,
    strip_rows: int | None = None,
):
    """Measure the particles strip by strip, as the whole image would be.

    The table of :func:`particleseg.measure.measure_particles` of the labels of ``particles``
    (border: the image's edges): each particle is measured in a
    window that holds it whole, so every value is that of the whole-image call.

    Also, per particle, the fraction of its pixels in ``drawn`` (as
    :func:`particleseg.postprocess.overlap_fraction`) and its mean gray value in ``intensity``
    (as the means of :func:`particleseg.postprocess.intensity_filter`), when given.

    Returns
    -------
    table : DataFrame
    fractions : (n,) float array or None
    means : (n,) float array or None
    """
    store, n = particles.store, particles.n
    h, w = store.shape
    step = int(strip_rows or strip_rows_for(w))
    tables = []
    inside = np.zeros(n + 1, np.int64) if drawn is not None else None
    means = np.zeros(n, float) if intensity is not None else None
    for c0 in range(0, h, step):
        c1 = min(c0 + step, h)
        ids = np.flatnonzero((particles.top >= c0) & (particles.top < c1)) + 1
        if not len(ids):
            continue
        y1 = int(particles.bottom[ids - 1].max())
        labels = store.read(c0, y1)
        border = np.zeros(labels.shape, bool)
        border[:, [0, -1]] = True
        if c0 == 0:
            border[0] = True
        if y1 == h:
            border[-1] = True
        gray = None if image is None else image[c0:y1]
        t = measure_particles(labels, gray, calibration, border=border, origin=(c0, 0), only=ids)
        if len(t):
            tables.append(t)
        if drawn is not None or intensity is not None:
            sel = np.isin(labels, ids)
            lab = np.where(sel, labels, 0)
            if drawn is not None:
                inside += np.bincount(lab[np.asarray(drawn[c0:y1], bool)], minlength=n + 1)
            if intensity is not None:
                # the means as ndimage.mean takes them: sums in raster order of each particle
                means[ids - 1] = np.asarray(ndi.mean(np.asarray(intensity[c0:y1], float), lab, ids))
    if tables:
        table = pd.concat(tables, ignore_index=True).sort_values("label", kind="stable").reset_index(drop=True)
    else:
        table = measure_particles(np.zeros((1, 1), np.int32))
    fractions = None
    if drawn is not None:
        area = particles.label_counts().astype(float)
        inside[0] = 0
        out = np.divide(inside.astype(float), area, out=np.zeros(n + 1), where=area > 0)
        out[0] = 0.0
        fractions = out
    return table, fractions, means


def _extents(store: RowFile, n: int, step: int):
    """Return pixel counts, first rows and ends of labels ``1..n`` in ``store``.

    Entry 0 of the counts: background; one past the last row as the end; rows -1 for absent
    labels. Strip by strip.
    """
    counts = np.zeros(n + 1, np.int64)
    top = np.full(n + 1, -1, np.int64)
    bottom = np.full(n + 1, -1, np.int64)
    for y0 in range(0, store.shape[0], step):
        lab = store.read(y0, y0 + step)
        counts += np.bincount(lab.ravel(), minlength=n + 1)[: n + 1]
        for k, sl in enumerate(ndi.find_objects(lab, n), start=1):
            if sl is not None:
                if top[k] < 0:
                    top[k] = sl[0].start + y0
                bottom[k] = sl[0].stop + y0
    return counts, top, bottom


def kept_and_mask(labels: np.ndarray, n_kept: int, strip_rows: int | None = None, folder=None):
    """Return the kept particles and their mask, strip by strip, as read-only memory maps.

    The kept particles are labels ``1..n_kept`` of ``labels`` (the others 0), the mask that of
    :func:`particleseg.postprocess.labels_to_mask`: what :func:`particleseg.pipeline.prepare_file`
    writes, for a large image.

    Each particle's mask is computed in a window that holds it whole, with one row more above
    and below, and the sizes of the whole particles: the result is that of the whole image.
    """
    h, w = labels.shape
    step = int(strip_rows or strip_rows_for(w))
    kept = RowFile((h, w), np.int32, folder)
    for y0 in range(0, h, step):
        lab = np.asarray(labels[y0 : y0 + step])
        kept.write(y0, np.where(lab <= n_kept, lab, 0))
        release_pages(labels, y0, y0 + step)
    counts, top, bottom = _extents(kept, n_kept, step)
    mask = RowFile((h, w), bool, folder)
    for c0 in range(0, h, step):
        ids = np.flatnonzero((top[1:] >= c0) & (top[1:] < c0 + step)) + 1
        if not len(ids):
            continue
        y0, y1 = max(c0 - 1, 0), min(int(bottom[ids].max()) + 1, h)
        lab = kept.read(y0, y1)
        own = pp.labels_to_mask(lab, sizes=counts) & np.isin(lab, ids)
        r1 = int(bottom[ids].max())
        mask.write(c0, mask.read(c0, r1) | own[c0 - y0 : r1 - y0])
    return kept.memmap(), mask.memmap()


def overview_step(shape: tuple[int, int], side: int = 2048) -> int:
    """Return every how many pixels the overview figure of a large image samples it.

    Its longer side then has at most ``side`` pixels (the figure shows each panel about 500
    pixels wide).
    """
    return max(1, -(-max(shape) // side))
