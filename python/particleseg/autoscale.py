"""Which way round and how large: the polarity and typical particle size of an image.

A network sees particles as it was trained to see them: bright on dark (SEM secondary
electrons) and about ``bundle.particle_size_px`` pixels across. Micrographs come in both
polarities (TEM bright field shows dark particles on a bright film) and at any magnification,
so :func:`segment_image <particleseg.pipeline.segment_image>` estimates both before inference,
inverts and resamples the image to the model's conventions, and maps the results back.

Both estimates are classical image analysis, with no trained weights, so they behave the same
for every model:

* **Polarity** (:func:`polarity_score`): after a global Otsu threshold, the background is the
  class that fills most of the image frame, is the more uniform of the two, lies on the
  long side of the gray-value distribution's tail, is connected around the particles, and
  is the less solid (convex) of the two. The five cues vote with weights. Where the vote is
  weak (:data:`POLARITY_CHECK_BELOW`), :func:`particleseg.pipeline.network_passes` runs the
  network in both polarities and :func:`checked_polarity_score` adds what it found: there,
  and there only, the polarity depends on the model.
* **Size** (:func:`estimate_particle_size`): the granulometry [1]_ of the particle mask
  (Otsu, with the estimated polarity): the radius of the disk whose morphological opening
  removes half of the particle area, as a diameter. For touching, agglomerated particles it
  measures the particles, not the agglomerates, because an opening removes the necks between
  particles long before it removes the particles.

References
----------
.. [1] G. Matheron, "Random Sets and Integral Geometry", Wiley (1975); P. Soille,
       "Morphological Image Analysis", 2nd ed., Springer (2003), ch. 8 (granulometries).
.. [2] C. Stringer et al., "Cellpose: a generalist algorithm for cellular segmentation",
       Nature Methods 18, 100-106 (2021): estimate the object size, resample, segment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .distance import distance_transform
from .params import POLARITIES  # noqa: F401 - the two polarities, named once

#: typical particle diameters (px) the estimate covers; outside, the user is asked for
#: ``--particle-size``
SUPPORTED_SIZE_PX = (5.0, 500.0)
#: images are analysed at most this many pixels on their longer side (larger ones are
#: downsampled for the estimate, and a full-resolution crop is used for small particles)
ANALYSIS_SIDE = 1024
#: images larger than this on a side are analysed in their centre crop of this size (both
#: estimates are global figures, which 16 Mpx of an image give as well as the whole; the crop
#: bounds their memory, which otherwise grew with the image: 1.3 GiB at 8192x8192)
ANALYSIS_CROP = 4096
#: estimates under this many pixels are checked against noise (:func:`_structured`): white
#: noise, smoothed and opened as the size estimate does, gives "particles" of about 5 px
NOISE_CHECK_BELOW_PX = 12.0
#: how much larger than the shuffled image's granulometric diameter structure must be.
#: Measured: white Gaussian, uniform and Poisson noise (8 seeds, both polarities) 0.89-1.15 of
#: it, mostly 0.98-1.02; disks of 6 px at a contrast-to-noise ratio of 2 to 20 1.21-1.30, of
#: 8 px 1.68-1.84, simulated SEM particles of 6-8 px 2.6-3.4. (Strongly skewed noise taken
#: dark on bright, whose "particles" fill most of the image, varies from 0.4 to 2.7: not caught.)
NOISE_MARGIN = 1.1
#: weight of the connectivity cue of :func:`polarity_score` against the three others (the
#: logistic fit on the calibration half of the EMPS development set gives 1.8; polarity right
#: on 90 % of the check half, 86 % without the cue; benchmarks/bench_emps.py)
CONNECTED_WEIGHT = 1.8
#: weight of the solidity cue of :func:`polarity_score` (the logistic fit of the score with and
#: without it on the calibration half of the EMPS development set gives 2.3; polarity right on
#: 93.7 % of the check half, 92.0 % without the cue; benchmarks/bench_emps.py)
SOLIDITY_WEIGHT = 2.3
#: components smaller than this (px) do not count in the solidity cue
SOLIDITY_MIN_AREA = 20
#: the granulometric median diameter of a polydisperse particle set is an area-weighted
#: figure and exceeds the number median of the particles' equivalent circular diameters;
#: this factor maps one to the other (median ratio measured on the EMPS development set,
#: see benchmarks/bench_emps.py)
GRANULOMETRY_TO_ECD = 1.14


@dataclass(frozen=True)
class ImageEstimate:
    """What :func:`estimate_image` found out about an image.

    Attributes
    ----------
    polarity : {"bright", "dark"}
        Particles brighter or darker than the background.
    polarity_score : float
        Positive for bright particles; its magnitude is the confidence (about 0 to 2).
    particle_size : float or None
        Typical particle diameter in pixels (number median of the equivalent circular
        diameters), None when the image shows no particle-like structure.
    in_range : bool
        Whether ``particle_size`` lies in :data:`SUPPORTED_SIZE_PX`.
    """

    polarity: str
    polarity_score: float
    particle_size: float | None
    in_range: bool = True


def analysis_crop(image: np.ndarray, side: int = ANALYSIS_CROP) -> np.ndarray:
    """Return the centre of ``image``, at most ``side`` pixels on each side (a view; the image itself if smaller).

    Examples
    --------
    >>> import numpy as np
    >>> analysis_crop(np.zeros((10000, 3000)), 4096).shape
    (4096, 3000)
    """
    image = np.asarray(image)
    h, w = image.shape[:2]
    y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return image[y0 : y0 + side, x0 : x0 + side] if h > side or w > side else image


def _smooth(image: np.ndarray) -> np.ndarray:
    return ndi.gaussian_filter(np.asarray(image, np.float32), 1.0)


def _otsu(values: np.ndarray) -> float | None:
    from skimage.filters import threshold_otsu

    v = values[np.isfinite(values)]
    if v.size == 0 or v.min() == v.max():
        return None
    return float(threshold_otsu(v))


def polarity_score(image: np.ndarray) -> float:
    """Score the polarity: positive when particles are brighter than the background.

    Five cues of the two classes of a global Otsu threshold, each in about [-1, 1]:
    the fraction of the image frame (outer 3 %) the bright class covers (background fills
    the frame), whether it is more varied than the dark class (particles carry texture,
    edges and shading; backgrounds are flatter), the skewness of the gray values (a few
    bright particles on a large dark background give a long bright tail), which class
    is *connected*: the background is one region around the particles (most of it in its
    largest component), the particles are many separate pieces — which still holds for
    dense packings that fill the frame, where the first and third cues fail — and which class
    is *solid*: particles are convex or nearly so, the background between them is not (the
    area-weighted solidity of each class's components, one minus the other).

    Parameters
    ----------
    image : (Y, X) array
        Larger than :data:`ANALYSIS_CROP` on a side: its centre crop of that size is scored.

    Returns
    -------
    float
        0 for a constant image.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((64, 64)); img[20:40, 20:40] = 1.0
    >>> polarity_score(img) > 0, polarity_score(1 - img) < 0
    (True, True)
    """
    sm = _smooth(analysis_crop(image))
    t = _otsu(sm)
    if t is None:
        return 0.0
    hi = sm > t
    if hi.all() or not hi.any():
        return 0.0
    bw = max(2, int(0.03 * min(sm.shape)))
    frame = np.zeros(sm.shape, bool)
    frame[:bw] = frame[-bw:] = True
    frame[:, :bw] = frame[:, -bw:] = True
    frame_cue = 2 * (0.5 - hi[frame].mean())
    s_hi, s_lo = _std(sm, hi), _std(sm, ~hi)
    var_cue = float(np.tanh(np.log((s_hi + 1e-6) / (s_lo + 1e-6))))
    skew_cue = float(np.tanh(_skewness(sm)))
    connected_cue = _largest_share(~hi) - _largest_share(hi)
    step = max(1, int(np.ceil(max(sm.shape) / ANALYSIS_SIDE)))  # a global cue: a sample will do
    solid_cue = _solidity(ndi.binary_opening(hi[::step, ::step])) - _solidity(ndi.binary_opening(~hi[::step, ::step]))
    return float(
        0.5 * frame_cue + var_cue + 0.5 * skew_cue + CONNECTED_WEIGHT * connected_cue + SOLIDITY_WEIGHT * solid_cue
    )


def _row_chunks(values: np.ndarray, chunk: int = 1 << 20):
    """Slices of about ``chunk`` pixels of whole rows of a 2D array."""
    step = max(1, chunk // max(1, values.shape[1]))
    return [slice(y, y + step) for y in range(0, values.shape[0], step)]


def _std(values: np.ndarray, mask: np.ndarray) -> float:
    """Return the standard deviation of ``values[mask]`` (2D) in float64, by chunks of rows (0 if empty).

    No copy of the selected pixels: at 8192x8192 that and NumPy's deviations took 0.5 GiB.
    """
    n = int(np.count_nonzero(mask))
    if n == 0:
        return 0.0
    parts = _row_chunks(values)
    mean = sum(float(values[s][mask[s]].sum(dtype=np.float64)) for s in parts) / n
    m2 = sum(float(np.square(values[s][mask[s]].astype(np.float64) - mean).sum()) for s in parts)
    return float(np.sqrt(m2 / n))


def _skewness(values: np.ndarray) -> float:
    """Skewness (third standardised moment) of 2D ``values``, in float64, a chunk of rows at a time.

    No whole-image temporary: at 8192x8192 the z-scores and their cubes took 0.5 GiB.

    Examples
    --------
    >>> import numpy as np
    >>> round(_skewness(np.array([[0.0, 0.0, 0.0, 1.0]])), 4)
    1.1547
    """
    parts = _row_chunks(values)
    n = values.size
    mean = sum(float(values[s].sum(dtype=np.float64)) for s in parts) / n
    m2 = m3 = 0.0
    for s in parts:
        d = values[s].astype(np.float64) - mean
        d2 = d * d
        m2 += float(d2.sum())
        m3 += float((d2 * d).sum())
    return float(m3 / n / (np.sqrt(m2 / n) + 1e-12) ** 3)


def _solidity(mask: np.ndarray) -> float:
    """Area-weighted mean solidity of the 4-connected components of ``mask`` (0 without any).

    Solidity is a component's area over that of its convex hull: near 1 for a particle, low
    for a background web around particles. Components under :data:`SOLIDITY_MIN_AREA` pixels
    are left out.
    """
    from skimage.measure import regionprops  # skimage: one use, as _otsu

    lab, _ = ndi.label(mask)
    props = [p for p in regionprops(lab) if p.area >= SOLIDITY_MIN_AREA]
    if not props:
        return 0.0
    areas = np.array([p.area for p in props], float)
    return float(np.dot(areas, [p.solidity for p in props]) / areas.sum())


def _largest_share(mask: np.ndarray) -> float:
    """Fraction of ``mask`` in its largest 4-connected component (0 for an empty mask)."""
    lab, n = ndi.label(mask)
    if n == 0:
        return 0.0
    return float(np.bincount(lab.ravel())[1:].max() / mask.sum())


def estimate_polarity(image: np.ndarray, default: str = "bright") -> str:
    """Estimate whether the particles are ``"bright"`` or ``"dark"``, by :func:`polarity_score`.

    ``default`` is returned for a constant image.
    """
    return polarity_from_score(polarity_score(image), default)


def polarity_of_particles(labels: np.ndarray, image: np.ndarray, default: str = "bright") -> str:
    """Return whether the labelled particles are brighter or darker than the rest of ``image``.

    For particles already found (the Fiji command Filter Particles... with an intensity filter
    and ``polarity=auto``): their mean gray value against the background's tells the polarity
    more surely than the gray values alone (:func:`estimate_polarity`), which is the answer
    when the labels hold no particle or cover the whole image.

    Examples
    --------
    >>> import numpy as np
    >>> image = np.full((8, 8), 200.0); image[2:5, 2:5] = 50.0
    >>> labels = np.zeros((8, 8), int); labels[2:5, 2:5] = 1
    >>> polarity_of_particles(labels, image)
    'dark'
    """
    inside = np.asarray(labels) > 0
    if inside.all() or not inside.any():
        return estimate_polarity(image, default)
    image = np.asarray(image, np.float64)
    difference = image[inside].mean() - image[~inside].mean()
    return default if difference == 0 else ("bright" if difference > 0 else "dark")


def polarity_from_score(score: float, default: str) -> str:
    """Return ``"bright"`` for a positive score, ``"dark"`` for a negative one, ``default`` for 0."""
    return default if score == 0 else ("bright" if score > 0 else "dark")


#: a :func:`polarity_score` of smaller magnitude than this is checked by the network
#: (:func:`particleseg.pipeline.segment_image` runs both polarities and
#: :func:`checked_polarity_score` decides). On the EMPS development set (366 images), 28 % of
#: the images fall under it, and 18 of the 23 whose score alone has the wrong sign
POLARITY_CHECK_BELOW = 1.5
#: weights of the network's evidence in :func:`checked_polarity_score`: the difference in the
#: particles' mean solidity and in the fraction of the image the network calls foreground,
#: bright minus dark. A logistic fit (no intercept) on the calibration half of the EMPS
#: development set gave 28 and 6 beside the score's 1, rounded down; with 25 and 5 the polarity
#: is wrong on 5 of its 192 calibration images (11 with the score alone) and on 6 of its 174
#: check images (12), and the same within 1 image for weights 20-28 and 5-6
CHECK_SOLIDITY_WEIGHT = 25.0
CHECK_FOREGROUND_WEIGHT = 5.0


def particle_solidity(labels: np.ndarray) -> float:
    """Area-weighted mean solidity of the labelled particles (0 without any).

    Solidity is a particle's area over that of its convex hull: near 1 for compact particles;
    a network shown the image in the wrong polarity segments the background between particles,
    whose pieces are concave.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((20, 20), int); lab[2:8, 2:8] = 1   # a square of 36 px: solidity 1
    >>> lab[10:18, 10:12] = 2; lab[10:12, 12:18] = 2       # an L of 28 px, its hull 43 px
    >>> round(particle_solidity(lab), 3)                   # (36 * 1 + 28 * 28 / 43) / 64
    0.847
    """
    from skimage.measure import regionprops_table

    labels = np.asarray(labels)
    if not labels.any():
        return 0.0
    t = regionprops_table(labels, properties=("area", "solidity"))
    area = np.asarray(t["area"], float)
    return float(np.dot(area, t["solidity"]) / area.sum())


def checked_polarity_score(score: float, bright: tuple[float, float], dark: tuple[float, float]) -> float:
    """Combine :func:`polarity_score` with what the network made of the image in each polarity.

    Parameters
    ----------
    score : float
        :func:`polarity_score` of the image.
    bright, dark : (float, float)
        For the image shown to the network with bright and with dark particles: the particles'
        :func:`particle_solidity` and the fraction of the image whose foreground probability is
        above one half.

    Returns
    -------
    float
        Positive for bright particles. In the right polarity the network finds compact
        particles on a background; in the wrong one it takes the background between them for
        particles: concave, and more of the image. When one polarity finds no particle, solidity
        does not count (an image-filling region of the wrong polarity can be convex); the
        foreground fraction and the score decide.

    Examples
    --------
    A score that leans to bright (0.4), but the particles found as dark ones are compact
    and cover less of the image:

    >>> checked_polarity_score(0.4, bright=(0.70, 0.55), dark=(0.93, 0.30)) < 0
    True

    Nothing found as bright particles, one convex region filling the image as dark ones:

    >>> checked_polarity_score(-0.3, bright=(0.0, 0.0), dark=(0.98, 0.9)) > 0
    True
    """
    solidity = bright[0] - dark[0] if bright[0] and dark[0] else 0.0
    return float(score + CHECK_SOLIDITY_WEIGHT * solidity - CHECK_FOREGROUND_WEIGHT * (bright[1] - dark[1]))


def _opened_fraction(mask: np.ndarray, dt: np.ndarray, r: float, total: float) -> float:
    """Fraction of ``mask`` (area ``total``, distance transform ``dt``) left by an opening of radius ``r``."""
    core = dt >= r
    if not core.any():
        return 0.0
    return float(((distance_transform(~core) <= r) & mask).sum() / total)


def opening_spectrum(mask: np.ndarray, radii: np.ndarray, stop_below: float | None = None) -> np.ndarray:
    """Fraction of the area of ``mask`` that survives an opening by a disk of each radius.

    The opening by a disk of radius r is computed exactly with two Euclidean distance
    transforms: the pixels within r of a pixel that is at least r from the background.

    Parameters
    ----------
    mask : (Y, X) bool array
    radii : increasing 1D array of radii in pixels
    stop_below : float, optional
        Stop at the first radius whose surviving fraction is below this (the larger radii
        are left 0).

    Returns
    -------
    1D float array, non-increasing, one value per radius (1 for a radius that removes nothing).
    """
    mask = np.asarray(mask, bool)
    total = mask.sum()
    out = np.zeros(len(radii))
    if total == 0:
        return out
    dt = distance_transform(mask)
    for i, r in enumerate(radii):
        out[i] = _opened_fraction(mask, dt, r, total)
        if out[i] == 0 or (stop_below is not None and out[: i + 1].min() < stop_below):
            break
    return np.minimum.accumulate(out)


def granulometric_diameter(mask: np.ndarray) -> float | None:
    """Return the diameter of the disk whose opening removes half of the particle area of ``mask``.

    Interpolated on a logarithmic grid of radii (steps of 10 %). None for an empty mask or a
    mask that an opening of radius 1 already removes.

    The radius where the surviving area crosses one half is found by bisection on the grid:
    about 8 openings instead of one per radius up to the crossing (28 for particles of 30 px,
    0.55 s of a ``segment`` run on a 1024x768 image). An opening by a larger disk leaves at
    most what a smaller one leaves (openings by disks form a granulometry [1]_), so the
    crossing is the one a scan of :func:`opening_spectrum` finds, except where digital disks
    break that order near the crossing: on the particle masks of the 366 EMPS and 32 TiO2
    images, both polarities (796 masks), 793 diameters came out the same as the scan's and 3
    within 1 % (the scan took 220 s for all, the bisection 33 s).

    References
    ----------
    .. [1] G. Matheron, *Random Sets and Integral Geometry*, Wiley 1975; P. Soille,
       *Morphological Image Analysis*, Springer 2003, ch. 9 (granulometries).

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[:200, :200]
    >>> disks = ((yy - 50) ** 2 + (xx - 50) ** 2 < 20**2) | ((yy - 140) ** 2 + (xx - 130) ** 2 < 20**2)
    >>> round(granulometric_diameter(disks))
    40
    """
    mask = np.asarray(mask, bool)
    total = mask.sum()
    if not total:
        return None
    radii = 1.0 * 1.1 ** np.arange(80)
    radii = radii[radii < max(mask.shape) / 2]
    dt = distance_transform(mask)
    known: dict[int, float] = {}

    def fraction(i: int) -> float:
        if i not in known:
            known[i] = _opened_fraction(mask, dt, radii[i], total)
        return known[i]

    if fraction(0) < 0.5:  # removed by the smallest opening: noise, not particles
        return None
    hi = len(radii) - 1
    if fraction(hi) >= 0.5:  # particles as large as the image
        return float(2 * radii[-1])
    lo = 0  # invariant: fraction(lo) >= 0.5 > fraction(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fraction(mid) >= 0.5:
            lo = mid
        else:
            hi = mid
    a0, a1 = fraction(lo), fraction(hi)
    t = (a0 - 0.5) / max(a0 - a1, 1e-12)
    return float(2 * np.exp(np.log(radii[lo]) + t * (np.log(radii[hi]) - np.log(radii[lo]))))


def particle_mask(image: np.ndarray, polarity: str) -> np.ndarray:
    """Return the particles of a global Otsu threshold with the given polarity.

    Holes are filled and one-pixel noise is opened away (what the size estimate measures).
    """
    sm = _smooth(image)
    t = _otsu(sm)
    if t is None:
        return np.zeros(sm.shape, bool)
    mask = sm > t if polarity == "bright" else sm < t
    return ndi.binary_fill_holes(ndi.binary_opening(mask))


def _structured(image: np.ndarray, polarity: str, diameter: float) -> bool:
    """Whether ``image`` holds particle-like structure of the granulometric ``diameter``.

    Particle-like: ``diameter`` is larger by :data:`NOISE_MARGIN` than that of the same gray
    values shuffled over the pixels (a permutation null, fixed seed), which keeps the histogram
    and destroys every spatial structure. Pure noise fails: its "particles" are no larger than
    its shuffled copy's.
    """
    shuffled = np.random.default_rng(0).permutation(np.asarray(image).ravel()).reshape(np.shape(image))
    null = granulometric_diameter(particle_mask(shuffled, polarity))
    return null is None or diameter > NOISE_MARGIN * null


def detection_diameter(areas: np.ndarray) -> float | None:
    """Typical particle diameter of segmented particles, from their areas in pixels.

    The area-weighted median of the equivalent circular diameters, mapped to a number median
    with the factor the granulometry uses (:data:`GRANULOMETRY_TO_ECD`). Weighting by area makes
    the figure follow the particles that make up the image, not the fragments and specks a
    network finds when it sees an image at the wrong scale (a large particle split into many
    pieces by its texture would otherwise set a scale several times too small).

    Parameters
    ----------
    areas : array_like
        Particle areas in pixels (zeros are ignored).

    Returns
    -------
    float or None
        The diameter in pixels; None without particles.

    Examples
    --------
    One particle of 1000 px and ten specks of 10 px: the particle decides.

    >>> round(detection_diameter([1000] + [10] * 10), 1)
    31.3
    >>> detection_diameter([]) is None
    True
    """
    areas = np.asarray(areas, dtype=float).ravel()
    areas = areas[areas > 0]
    if not len(areas):
        return None
    diameters = 2 * np.sqrt(areas / np.pi)
    order = np.argsort(diameters)
    cumulative = np.cumsum(areas[order]) / areas.sum()
    return float(diameters[order][np.searchsorted(cumulative, 0.5)]) / GRANULOMETRY_TO_ECD


def estimate_particle_size(image: np.ndarray, polarity: str) -> float | None:
    """Typical particle diameter of ``image`` in pixels, or None without particle-like structure.

    The diameter comes from the granulometry of the image's particle mask (see the module
    notes).

    Images larger than :data:`ANALYSIS_CROP` on a side are analysed in their centre crop of that
    size; images larger than :data:`ANALYSIS_SIDE` are analysed downsampled, and when the
    particles then come out under 8 pixels, a full-resolution crop of the centre is analysed
    instead.
    """
    image = np.asarray(analysis_crop(image), np.float32)
    k = max(image.shape) / ANALYSIS_SIDE
    if k > 1:
        from .preprocess import rescale

        small = rescale(image, 1 / k)
        d = granulometric_diameter(particle_mask(small, polarity))
        if d is not None and d >= 8:
            return d * k * GRANULOMETRY_TO_ECD
        cy, cx = image.shape[0] // 2, image.shape[1] // 2
        h = ANALYSIS_SIDE // 2
        image = image[max(0, cy - h) : cy + h, max(0, cx - h) : cx + h]
    d = granulometric_diameter(particle_mask(image, polarity))
    if d is None or (d * GRANULOMETRY_TO_ECD < NOISE_CHECK_BELOW_PX and not _structured(image, polarity, d)):
        return None
    return d * GRANULOMETRY_TO_ECD


def estimate_image(image: np.ndarray, polarity: str | None = None, default_polarity: str = "bright") -> ImageEstimate:
    """Polarity (unless given) and typical particle size of one 2D image.

    Parameters
    ----------
    image : (Y, X) array
        The picture only (data bar cropped).
    polarity : {"bright", "dark"} or None
        Known polarity; estimated when None.
    default_polarity : str
        For an image without contrast.

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[:256, :256]
    >>> img = np.full((256, 256), 200.0)
    >>> for cy, cx in [(60, 60), (60, 190), (190, 70), (180, 180)]:
    ...     img[(yy - cy) ** 2 + (xx - cx) ** 2 < 25**2] = 40.0
    >>> est = estimate_image(img)
    >>> est.polarity, 40 < est.particle_size < 65
    ('dark', True)
    """
    score = polarity_score(image)
    if polarity is None:
        polarity = polarity_from_score(score, default_polarity)
    size = estimate_particle_size(image, polarity)
    in_range = size is not None and SUPPORTED_SIZE_PX[0] <= size <= SUPPORTED_SIZE_PX[1]
    return ImageEstimate(polarity, score, size, in_range)


def median_diameter(areas) -> float | None:
    """Typical particle diameter: the equivalent circular diameter of the median particle area.

    The size every part of the package reports for a set of particles, in pixels: what the
    pipeline reports for the particles it found (:func:`particleseg.pipeline.measured_size`),
    the training size a bundle records (:func:`particleseg.train.particle_size_px`) and the
    truth of the EMPS benchmark. For an odd number of particles it is also the median of their
    diameters.

    Parameters
    ----------
    areas : array_like
        Particle areas in pixels (zeros are ignored).

    Returns
    -------
    float or None
        The diameter in pixels; None without particles.

    Examples
    --------
    >>> round(median_diameter([100, 491, 491, 2000]), 2)
    25.0
    >>> median_diameter([0, 0]) is None
    True
    """
    areas = np.asarray(areas, dtype=float).ravel()
    areas = areas[areas > 0]
    return float(2 * np.sqrt(np.median(areas) / np.pi)) if len(areas) else None
