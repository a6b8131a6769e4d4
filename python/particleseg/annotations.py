"""Burned-in annotations: scale bars, their labels, panel letters and label boxes.

Micrographs taken from publications, slides and many microscopes' exports carry annotations
drawn into the pixels: a solid scale bar with its length written next to it, a panel letter
("a", "(c)", "B") in a corner, sometimes on a box of its own colour. A network trained on
particles sees a solid bar or a letter as a particle, and the size and polarity estimates see
them too. :func:`annotation_mask` finds them with classical rules (annotations are drawn at
the extreme gray values of the image, with straight edges and strokes thinner than they are
tall, and sit in corners, next to each other or next to a scale bar), and :func:`fill_annotations`
paints them over with the surrounding gray values before the network runs;
:func:`particleseg.pipeline.segment_image` also rejects particles lying mostly on an
annotation (reject reason ``annotation``). The microscope's data bar at the bottom is found
separately (:func:`particleseg.preprocess.detect_data_bar`) and cropped.

The rules are deliberately conservative: a component is an annotation only when it is drawn
at the extreme gray value *and* has the shape of a bar, a box or a glyph in the place of one,
so that saturated particles, their bright rims (SEM edge contrast) and dark particles (TEM)
are left alone.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: gray values within this fraction of the range from the image's minimum or maximum count as
#: "drawn" (annotations are pure white or black, softened by anti-aliasing and JPEG)
EXTREME_TOLERANCE = 0.04
#: glyph heights as fractions of the image height (smaller: noise; taller: not text)
GLYPH_HEIGHT = (0.015, 0.14)
#: a panel letter or label box lies within this fraction of the shorter side from a corner
CORNER = 0.22
#: a line of text outside a scale bar's label has at least this many glyphs ("(a)", "SiO2"):
#: single letter-shaped pieces are too often gaps between particles or their rims
MIN_LINE_GLYPHS = 3


#: rows of the image analysed at a time (the components are stitched across strips)
STRIP_ROWS = 1024
_EIGHT = np.ones((3, 3), bool)


def _rows(image: np.ndarray, y0: int, y1: int) -> np.ndarray:
    """Rows ``y0:y1`` of ``image`` as float32 (the values the rules compare)."""
    return np.asarray(image[y0:y1], np.float32)


def _extremes(image: np.ndarray, strip_rows: int | None = None) -> list[tuple[bool, float, float, float]]:
    """(bright, threshold, extreme value, gray-value range) of the bright and the dark extreme.

    Drawn pixels are those at or above the bright threshold, or at or below the dark one. The
    finite minimum and maximum are taken a strip of rows at a time (no whole-image copy).
    """
    strip_rows = strip_rows or STRIP_ROWS
    lo, hi = np.inf, -np.inf
    for y0 in range(0, image.shape[0], strip_rows):
        rows = _rows(image, y0, y0 + strip_rows)
        finite = rows[np.isfinite(rows)] if rows.dtype.kind == "f" else rows
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    if not np.isfinite(lo) or hi <= lo:
        return []
    tol = EXTREME_TOLERANCE * (hi - lo)
    return [(True, hi - tol, hi, hi - lo), (False, lo + tol, lo, hi - lo)]


def _drawn(rows: np.ndarray, bright: bool, threshold: float) -> np.ndarray:
    """Return the pixels of float32 ``rows`` at or beyond ``threshold`` (above it when ``bright``)."""
    return rows >= threshold if bright else rows <= threshold


def _components(
    image: np.ndarray, bright: bool, threshold: float, strip_rows: int | None = None, min_count: int = 1
) -> list:
    """Find the 8-connected components of the drawn pixels, a strip of rows at a time.

    Components are labelled within each strip and joined across strip borders (union-find on
    the touching pixels of the two rows either side), so only a strip's labels are held at once
    (a whole-image int32 label array took 1 GiB at 16384x16384). What is kept of them is in NumPy
    arrays, and a component smaller than ``min_count`` pixels that lies inside one strip is
    dropped at once: a simulated SEM image has about ten thousand specks of extreme gray value
    per megapixel, which as Python objects took gigabytes at 16384x16384.

    Returns
    -------
    list of (bounding box, pixel count, one pixel (y, x)) of the components of at least
    ``min_count`` pixels, in raster order of the box's first row, then its first column.
    """
    h, strip_rows = image.shape[0], strip_rows or STRIP_ROWS
    parts = []  # per strip: boxes (y0, y1, x0, x1), counts, seeds (y, x)
    links = []  # pairs of part ids joined across a strip border
    base, above = 0, None  # part ids of the last row of the previous strip (-1: none)
    for y0 in range(0, h, strip_rows):
        mask = _drawn(_rows(image, y0, y0 + strip_rows), bright, threshold)
        lab, n = ndi.label(mask, structure=_EIGHT)
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        edge = np.zeros(n + 1, bool)
        edge[lab[0]] = edge[lab[-1]] = True  # may continue in the next or previous strip
        edge[0] = False
        keep = np.flatnonzero((sizes >= min_count) | edge)
        keep = keep[keep > 0]
        objects = ndi.find_objects(lab, n)
        boxes = np.empty((len(keep), 4), np.int64)
        seeds = np.empty((len(keep), 2), np.int64)
        for j, k in enumerate(keep.tolist()):
            sl = objects[k - 1]
            r = sl[0].start
            boxes[j] = (sl[0].start + y0, sl[0].stop + y0, sl[1].start, sl[1].stop)
            seeds[j] = (r + y0, sl[1].start + int(np.argmax(lab[r, sl[1]] == k)))
        ids = np.full(n + 1, -1, np.int64)
        ids[keep] = base + np.arange(len(keep))
        if above is not None and n:
            first = ids[lab[0]]
            for dx in (-1, 0, 1):  # 8-connected across the border
                a = above[max(0, -dx) : len(above) - max(0, dx)]
                b = first[max(0, dx) : len(first) - max(0, -dx)]
                both = (a >= 0) & (b >= 0)
                links.append(np.stack([a[both], b[both]], 1))
        above = ids[lab[-1]]
        parts.append((boxes, sizes[keep], seeds))
        base += len(keep)
    if not base:
        return []
    boxes = np.concatenate([p[0] for p in parts])
    counts = np.concatenate([p[1] for p in parts]).astype(np.int64)
    seeds = np.concatenate([p[2] for p in parts])
    parent = np.arange(base)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return int(i)

    pairs = np.unique(np.concatenate(links), axis=0) if links and sum(len(x) for x in links) else np.zeros((0, 2), int)
    for i, j in pairs.tolist():
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    roots = np.array([root(i) for i in range(base)]) if len(pairs) else parent
    y0s, x0s = boxes[:, 0].copy(), boxes[:, 2].copy()
    y1s, x1s, total = boxes[:, 1].copy(), boxes[:, 3].copy(), counts.copy()
    joined = roots != np.arange(base)
    if joined.any():  # fold each joined part into its root (the root has the smallest id)
        r, m = roots[joined], np.flatnonzero(joined)
        np.minimum.at(y0s, r, y0s[m])
        np.maximum.at(y1s, r, y1s[m])
        np.minimum.at(x0s, r, x0s[m])
        np.maximum.at(x1s, r, x1s[m])
        np.add.at(total, r, counts[m])
    chosen = np.flatnonzero(~joined & (total >= min_count))
    chosen = chosen[np.lexsort((x0s[chosen], y0s[chosen]))]
    return [
        ((slice(int(y0s[i]), int(y1s[i])), slice(int(x0s[i]), int(x1s[i]))), int(total[i]), tuple(seeds[i].tolist()))
        for i in chosen
    ]


def _component(image: np.ndarray, sl, seed, bright: bool, threshold: float) -> np.ndarray:
    """Return the component through ``seed`` within its bounding box ``sl`` (a bool mask of the box).

    Labelling the box alone gives the whole component: it lies in its box and is connected.
    """
    lab, _ = ndi.label(_drawn(_rows(image, sl[0].start, sl[0].stop)[:, sl[1]], bright, threshold), _EIGHT)
    return lab == lab[seed[0] - sl[0].start, seed[1] - sl[1].start]


def _around(img: np.ndarray, sl, *masks: np.ndarray, pad: int = 3):
    """Return the gray values around the box ``sl``, and the masks placed in them.

    The box is ``sl`` widened by ``pad`` pixels; each mask (given within ``sl``) is placed in
    that box.
    """
    y0, y1 = max(sl[0].start - pad, 0), min(sl[0].stop + pad, img.shape[0])
    x0, x1 = max(sl[1].start - pad, 0), min(sl[1].stop + pad, img.shape[1])
    box = np.asarray(img[y0:y1, x0:x1], np.float32)
    placed = []
    for m in masks:
        b = np.zeros(box.shape, bool)
        b[sl[0].start - y0 : sl[0].stop - y0, sl[1].start - x0 : sl[1].stop - x0] = m
        placed.append(b)
    return box, placed


def _is_drawn(img: np.ndarray, comp: np.ndarray, sl, extreme: float, span: float) -> bool:
    """Tell whether a component is drawn, not imaged.

    Drawn: the component's gray values sit at the extreme (not spread across the tolerance band
    like a particle's texture) and its 2-pixel surround contrasts sharply (text and bars are
    drawn on something else; a dark particle's rim borders its interior).
    """
    box, (inside,) = _around(img, sl, comp)
    ring = ndi.binary_dilation(inside, iterations=2) & ~inside
    if not ring.any():
        return False
    return (
        float(np.median(np.abs(box[inside] - extreme))) <= 0.015 * span
        and float(np.median(np.abs(box[ring] - extreme))) >= 0.25 * span
    )


def _near_corner(sl: tuple[slice, slice], shape: tuple[int, int]) -> bool:
    reach = CORNER * min(shape)
    dy = min(sl[0].start, shape[0] - sl[0].stop)
    dx = min(sl[1].start, shape[1] - sl[1].stop)
    return dy <= reach and dx <= reach


def _is_bar(comp: np.ndarray, h: int, w: int, shape) -> bool:
    """Tell whether a component is a solid, thin, long rectangle (a scale bar), either orientation."""
    short, long_ = min(h, w), max(h, w)
    extent = comp.sum() / float(h * w)
    return extent >= 0.85 and long_ >= 4 * short and long_ >= 0.03 * shape[1] and short <= 0.04 * shape[0]


def _is_glyph(img: np.ndarray, comp: np.ndarray, sl, shape, span: float) -> bool:
    """Tell whether a component is text-like.

    Text-like: a height in :data:`GLYPH_HEIGHT`, strokes much thinner than the glyph, and
    drawn *on* something: what the glyph encloses or half-encloses (the inside of an "o", a
    "c" or an "a") has the gray value of what surrounds it. The bright rim of a particle in
    SEM (edge contrast) is ring-shaped too, but it separates the particle inside from the
    background outside.
    """
    from skimage.morphology import convex_hull_image

    h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
    lo, hi = GLYPH_HEIGHT
    if not (lo * shape[0] <= h <= hi * shape[0] and w <= 0.3 * shape[1] and h >= 5):
        return False
    stroke = 2 * float(ndi.distance_transform_edt(np.pad(comp, 1)).max())
    if not (stroke <= 0.4 * h and comp.sum() / float(h * w) <= 0.75):
        return False
    hull = convex_hull_image(comp)
    # what the glyph encloses, without the anti-aliased fringe of its strokes
    enclosed = hull & ~ndi.binary_dilation(comp)
    if enclosed.sum() < 0.05 * hull.sum():
        return True  # "l", "1", "-": nothing enclosed to compare
    box, (hull_box, enclosed_box) = _around(img, sl, hull, enclosed)
    around = ndi.binary_dilation(hull_box, iterations=3) & ~ndi.binary_dilation(hull_box)
    if not around.any():
        return False
    return abs(float(np.median(box[enclosed_box])) - float(np.median(box[around]))) <= 0.15 * span


def _is_box(comp: np.ndarray, h: int, w: int, shape) -> bool:
    """Tell whether a component is a filled label box with text cut out of it.

    Such a box is rectangular once its holes are filled.
    """
    if not (h <= 0.15 * shape[0] and w <= 0.4 * shape[1] and h >= 8 and w >= 8):
        return False
    filled = ndi.binary_fill_holes(comp)
    holes = filled.sum() - comp.sum()
    return filled.sum() / float(h * w) >= 0.95 and holes >= 0.02 * filled.sum()


def annotation_mask(image: np.ndarray, dilate: int = 2) -> np.ndarray:
    """Pixels of burned-in scale bars, their labels, panel letters and label boxes.

    Parameters
    ----------
    image : (Y, X) array
        The picture (data bar already cropped).
    dilate : int
        Pixels added around each annotation (its anti-aliased edge).

    Returns
    -------
    (Y, X) bool array
        False everywhere for an image without annotations (or a constant image).

    Examples
    --------
    >>> import numpy as np
    >>> img = np.random.default_rng(0).normal(100, 10, (200, 300))
    >>> img[180:186, 200:280] = 255            # a scale bar
    >>> mask = annotation_mask(img)
    >>> bool(mask[183, 240]), bool(mask[100, 100])
    (True, False)
    """
    img = np.asarray(image)  # in its own dtype: the rules read float32 rows and boxes of it
    shape = img.shape
    out = np.zeros(shape, bool)
    pieces = []  # (box, its pixels): what is drawn
    for bright, threshold, extreme, span in _extremes(img):
        bars, glyphs, boxes = [], [], []
        for sl, _count, seed in _components(img, bright, threshold, min_count=12):
            comp = _component(img, sl, seed, bright, threshold)
            h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
            if not _is_drawn(img, comp, sl, extreme, span):
                continue
            if _is_bar(comp, h, w, shape):
                bars.append(sl)
            elif _is_box(comp, h, w, shape) and _near_corner(sl, shape):
                boxes.append(sl)
            elif _is_glyph(img, comp, sl, shape, span):
                glyphs.append((comp, sl))
        pieces += [(sl, True) for sl in bars + boxes]  # a bar's (or box's) bounding box is the bar
        pieces += [(sl, comp) for comp, sl in _text_glyphs(glyphs, bars, shape)]
    d = int(dilate or 0)
    for sl, piece in pieces:  # each dilated in a window around it (dilating a union: the union of dilations)
        y0, y1 = max(0, sl[0].start - d), min(shape[0], sl[0].stop + d)
        x0, x1 = max(0, sl[1].start - d), min(shape[1], sl[1].stop + d)
        window = np.zeros((y1 - y0, x1 - x0), bool)
        window[sl[0].start - y0 : sl[0].stop - y0, sl[1].start - x0 : sl[1].stop - x0] = piece
        out[y0:y1, x0:x1] |= ndi.binary_dilation(window, iterations=d) if d else window
    return out


def _text_glyphs(glyphs, bars, shape):
    """Return the glyphs that sit where text sits.

    That is next to a scale bar (its label), or in a line of at least :data:`MIN_LINE_GLYPHS`
    glyphs of about the same height (the same top or baseline, a letter's gap apart) that lies
    in a corner (a panel label).
    """
    n = len(glyphs)
    parent = list(range(n))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a in range(n):
        sa = glyphs[a][1]
        ha = sa[0].stop - sa[0].start
        for b in range(a + 1, n):
            sb = glyphs[b][1]
            hb = sb[0].stop - sb[0].start
            aligned = min(abs(sa[0].start - sb[0].start), abs(sa[0].stop - sb[0].stop)) <= 0.2 * max(ha, hb)
            gap = max(sb[1].start - sa[1].stop, sa[1].start - sb[1].stop)
            if aligned and 0.5 <= ha / hb <= 2 and gap <= 0.8 * max(ha, hb):
                parent[root(a)] = root(b)
    lines: dict[int, list[int]] = {}
    for i in range(n):
        lines.setdefault(root(i), []).append(i)
    keep = []
    for members in lines.values():
        sls = [glyphs[i][1] for i in members]
        box = (
            slice(min(q[0].start for q in sls), max(q[0].stop for q in sls)),
            slice(min(q[1].start for q in sls), max(q[1].stop for q in sls)),
        )
        h = box[0].stop - box[0].start
        labelled_bar = any(
            max(bar[0].start - box[0].stop, box[0].start - bar[0].stop, 0) <= 3 * h
            and max(bar[1].start - box[1].stop, box[1].start - bar[1].stop, 0) <= bar[1].stop - bar[1].start
            for bar in bars
        )
        if labelled_bar or (len(members) >= MIN_LINE_GLYPHS and _near_corner(box, shape)):
            keep.extend(glyphs[i] for i in members)
    return keep


#: widths (Gaussian sigmas, px) of the normalized convolution that paints annotations over
FILL_SIGMAS = (3, 8, 24, 64, 192)


def fill_annotations(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Paint the pixels of ``mask`` over with the gray values around them.

    The painting is a normalized convolution at growing widths (:data:`FILL_SIGMAS`): a pixel
    takes the Gaussian-weighted mean of the unmasked pixels around it at the first width where
    they weigh enough. The image is returned as float32. Each annotation is painted in a window
    around it (its box and the filter's reach, ``4 sigma``), which gives the values of the
    whole-image convolution: no whole-image temporaries besides the result.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.full((50, 50), 80.0); img[20:26, 10:40] = 255
    >>> out = fill_annotations(img, img == 255)
    >>> round(float(out.max()), 3)
    80.0
    """
    mask = np.asarray(mask, bool)
    out = np.array(image, np.float32)  # the result (a copy, also when nothing is painted)
    if not mask.any():
        return out
    h, w = mask.shape
    left = []  # pixels no width reached: the median of the unmasked pixels
    for sl, _, seed in _components(mask, True, 0.5):
        todo = _component(mask, sl, seed, True, 0.5)
        for sigma in FILL_SIGMAS:
            r = int(4.0 * sigma + 0.5)  # scipy's radius (truncate 4)
            y0, y1 = max(0, sl[0].start - r), min(h, sl[0].stop + r)
            x0, x1 = max(0, sl[1].start - r), min(w, sl[1].stop + r)
            m = mask[y0:y1, x0:x1]
            # the original gray values: ``out`` is painted already where other annotations were
            # (unmasked pixels are never painted, and masked ones weigh 0)
            img = np.asarray(image[y0:y1, x0:x1], np.float32)
            num = ndi.gaussian_filter(np.where(m, 0, img), sigma)
            den = ndi.gaussian_filter((~m).astype(np.float32), sigma)
            inner = (slice(sl[0].start - y0, sl[0].stop - y0), slice(sl[1].start - x0, sl[1].stop - x0))
            num, den = num[inner], den[inner]
            ready = todo & (den > 1e-3)
            box = out[sl]
            box[ready] = num[ready] / den[ready]
            todo &= ~ready
            if not todo.any():
                break
        if todo.any():
            left.append((sl, todo))
    if left:
        unmasked = np.concatenate(
            [np.asarray(image[y : y + 1024], np.float32)[~mask[y : y + 1024]] for y in range(0, h, 1024)]
        )
        fill = float(np.median(unmasked)) if unmasked.size else 0.0
        for sl, todo in left:
            out[sl][todo] = fill
    return out
