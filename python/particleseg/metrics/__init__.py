"""Segmentation metrics: the ISBI 2012 challenge, instance metrics and size distributions.

The challenge metrics follow the definitions of Arganda-Carreras et al. (2015) as Fiji's
Trainable Weka Segmentation (TWS, package ``trainableSegmentation.metrics``) computes them, so
numbers can be set side by side with publications that used Fiji, e.g. Table 1 of Rühle et al.
(2021). Instance metrics follow the conventions of instance-segmentation tools (StarDist, the
Data Science Bowl 2018). See ``docs/metrics.md`` for the definitions with worked examples.

Conventions used throughout
---------------------------
* ``truth`` is the ground truth: a binary mask (particles nonzero; touching particles separated
  by a one-pixel background line, so 4-connected labelling gives the particles) or a label image
  (0 background, each positive value one particle).
* ``pred`` is the proposal: a probability map (float in [0, 1]; the threshold sweep applies,
  a pixel is foreground when its value is *greater than* the threshold, as in TWS), a binary
  mask, or a label image.
* Binary masks are labelled with 4-connectivity (:func:`particleseg.postprocess.label_mask`),
  as TWS does. A label image is turned into a binary mask by drawing a one-pixel background
  line between touching particles (:func:`particleseg.postprocess.labels_to_mask`, the rule of
  the ``_mask.tif`` outputs), so masks and label images of the same segmentation score the same.
* A ``(Z, Y, X)`` stack is scored slice by slice, as TWS does: counts (pixels, pixel pairs,
  particles, mismatches) are summed over the slices before ratios are formed; the
  information-theoretic score is averaged over the slices that have ground-truth foreground.
* Scores over a threshold sweep: each metric takes its best value over the thresholds
  (maximum of scores, minimum of errors; the first threshold wins ties), as in the publication.
* Degenerate cases: ratios whose denominator is zero follow TWS (precision is 1 without false
  positives, recall is 1 without false negatives), so identical inputs, empty ones included,
  score perfectly. The foreground-restricted Rand and information scores are undefined (NaN)
  without ground-truth foreground, since they ignore everything else.

Modules
-------
* :mod:`~particleseg.metrics.inputs`: classifying a proposal (probability map, mask, label
  image), relabelling, the threshold sweep;
* :mod:`~particleseg.metrics.contingency`: overlap counts of two label images;
* :mod:`~particleseg.metrics.pixel`: foreground IoU, Youden's index, pixel error;
* :mod:`~particleseg.metrics.instance`: IoU matrix, instance IoU, matching, F1, average precision;
* :mod:`~particleseg.metrics.isbi`: Rand and information-theoretic errors, with border thinning;
* :mod:`~particleseg.metrics.topology`: simple points, warping, warping error;
* :mod:`~particleseg.metrics.sizes`: size-distribution agreement;
* :mod:`~particleseg.metrics.evaluate`: all metrics of a pair, pairing files, ``particleseg
  evaluate``'s outputs.

Every public name is importable from ``particleseg.metrics`` itself.

References
----------
.. [1] I. Arganda-Carreras et al., "Crowdsourcing the creation of image segmentation algorithms
       for connectomics", Front. Neuroanat. 9:142 (2015), doi:10.3389/fnana.2015.00142.
.. [2] V. Jain et al., "Boundary learning by optimization with topological constraints",
       CVPR 2010, 2488-2495, doi:10.1109/CVPR.2010.5539950.
.. [3] R. Unnikrishnan, C. Pantofaru, M. Hebert, "Toward objective evaluation of image
       segmentation algorithms", IEEE TPAMI 29, 929-944 (2007). W. M. Rand, "Objective criteria
       for the evaluation of clustering methods", J. Am. Stat. Assoc. 66, 846-850 (1971).
.. [4] M. Meila, "Comparing clusterings - an information based distance", J. Multivariate
       Anal. 98, 873-895 (2007).
.. [5] W. J. Youden, "Index for rating diagnostic tests", Cancer 3, 32-35 (1950).
.. [6] J. C. Caicedo et al., "Nucleus segmentation across imaging experiments: the 2018 Data
       Science Bowl", Nat. Methods 16, 1247-1253 (2019); U. Schmidt, M. Weigert et al.,
       "Cell detection with star-convex polygons", MICCAI 2018 (StarDist).
.. [7] B. Ruehle, J. F. Krumrey, V.-D. Hodoroaba, "Workflow towards automated segmentation of
       agglomerated, non-spherical particles from electron microscopy images using artificial
       neural networks", Sci. Rep. 11, 4942 (2021).
.. [8] G. Bertrand, G. Malandain, "A new characterization of three-dimensional simple points",
       Pattern Recognit. Lett. 15, 169-175 (1994).
"""

from __future__ import annotations

from .contingency import Contingency, contingency
from .evaluate import (
    OUTPUT_NAMES,
    PRED_SUFFIXES,
    TABLE1_COLUMNS,
    TRUTH_SUFFIXES,
    evaluate_files,
    evaluate_pair,
    markdown_table,
    pair_files,
    read_array,
)
from .inputs import DEFAULT_THRESHOLDS, classify_input, relabel_sequential
from .instance import AP_THRESHOLDS, average_precision, instance_iou, iou_matrix, match_instances
from .isbi import (
    adapted_rand,
    information_scores,
    rand_error,
    rand_error_thinned,
    thin_borders,
    vi_error_thinned,
)
from .pixel import foreground_iou, pixel_counts, pixel_error, youden_index
from .sizes import SIZE_COLUMNS, size_distribution_agreement
from .topology import (
    HOLE_ADDITION,
    HOLE_DELETION,
    MERGE,
    MISMATCH_NAMES,
    OBJECT_ADDITION,
    OBJECT_DELETION,
    SPLIT,
    WARPING_RADIUS,
    classify_mismatches,
    simple_point_table,
    simple_points,
    warp_mask,
    warping_error,
)

__all__ = [
    # inputs
    "DEFAULT_THRESHOLDS",
    "classify_input",
    "relabel_sequential",
    # contingency
    "Contingency",
    "contingency",
    # pixel
    "foreground_iou",
    "pixel_counts",
    "pixel_error",
    "youden_index",
    # instance
    "AP_THRESHOLDS",
    "average_precision",
    "instance_iou",
    "iou_matrix",
    "match_instances",
    # isbi
    "adapted_rand",
    "information_scores",
    "rand_error",
    "rand_error_thinned",
    "thin_borders",
    "vi_error_thinned",
    # topology
    "HOLE_ADDITION",
    "HOLE_DELETION",
    "MERGE",
    "MISMATCH_NAMES",
    "OBJECT_ADDITION",
    "OBJECT_DELETION",
    "SPLIT",
    "WARPING_RADIUS",
    "classify_mismatches",
    "simple_point_table",
    "simple_points",
    "warp_mask",
    "warping_error",
    # sizes
    "SIZE_COLUMNS",
    "size_distribution_agreement",
    # evaluate
    "OUTPUT_NAMES",
    "PRED_SUFFIXES",
    "TABLE1_COLUMNS",
    "TRUTH_SUFFIXES",
    "evaluate_files",
    "evaluate_pair",
    "markdown_table",
    "pair_files",
    "read_array",
]
