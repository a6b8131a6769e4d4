"""SIMS particle screening: uranium-bearing particles in many fields of view.

Secondary ion mass spectrometry pre-screening records, for each of up to thousands of fields
of view, one ion image per mass (``234U+``, ``235U+``, ``236U+``, ``238U+``, ``238U1H+``; at least
``235U+`` and ``238U+``). Particles are found on the *sum of the uranium channels* by a fully
convolutional network followed by a watershed, which leaves two parameters: the probability
(softmax) threshold and the watershed level. Each particle's counts are summed per isotope, the
local background is subtracted, and the isotope ratios to ``238U`` are given with their Poisson
counting uncertainties.

The package has one module per job:

* :mod:`.isotopes` - the uranium species, their spellings (:func:`canonical_isotope`) and the
  ratio columns;
* :mod:`.fields` - fields of view as multi-channel TIFF stacks or one file per isotope
  (:func:`find_fields`, :func:`read_field`);
* :mod:`.params` - the settings of a run (:class:`SimsParams`) and the bundle defaults;
* :mod:`.detect` - the variance-stabilised network input (:func:`detection_input`), many fields
  as one network batch (:func:`predict_fields`), threshold and watershed
  (:func:`detect_particles`), a bundle applied to fields (:class:`FieldDetector`);
* :mod:`.counts` - counts, background, ratios and uncertainties of each particle
  (:func:`measure_particle_isotopes`) and the significance cut (:func:`significant`);
* :mod:`.records` - what makes a run resumable (settings, particle tables in records);
* :mod:`.run` - all of it for a folder of fields with progress, CSVs and plots
  (:func:`run_fields`);
* :mod:`.plot` - the ratio plots (:func:`plot_ratios`);
* :mod:`.score` - comparison with a simulator's truth (:func:`match_particles`,
  :func:`score_detection`), used to choose the two parameters;
* :mod:`.simulate` - simulated fields with known compositions (:func:`simulate_fields`).

Import from ``particleseg.sims``; the names below are its interface.
"""

from .counts import concat_particles, measure_particle_isotopes, particle_columns, significant
from .detect import (
    DEFAULT_INPUT,
    FieldDetector,
    detect_particles,
    detection_input,
    predict_fields,
    probability_channel,
)
from .fields import (
    DEFAULT_PATTERN,
    TIFF_SUFFIXES,
    Field,
    FieldSource,
    find_fields,
    parse_channels,
    read_field,
)
from .isotopes import (
    ISOTOPES,
    RATIO_ISOTOPES,
    REFERENCE,
    REQUIRED_ISOTOPES,
    URANIUM,
    canonical_isotope,
    ratio_columns,
)
from .params import DEFAULT_SIMS_POSTPROCESS, SimsParams
from .plot import plot_ratios
from .records import field_stem, run_settings, table_from_record, table_to_record
from .run import FIELD_COLUMNS, measure_chunk, run_fields, run_output_paths, write_tiff_labels
from .score import match_particles, score_detection
from .simulate import (
    BACKGROUND_FACTORS,
    DEFAULT_MIXTURE,
    HYDRIDE,
    REFERENCE_MATERIALS,
    Material,
    SimsField,
    SimsSettings,
    field_paths,
    parse_mixture,
    simulate_field,
    simulate_fields,
    truth_columns,
    write_field,
)

__all__ = [
    "BACKGROUND_FACTORS",
    "DEFAULT_INPUT",
    "DEFAULT_MIXTURE",
    "DEFAULT_PATTERN",
    "DEFAULT_SIMS_POSTPROCESS",
    "FIELD_COLUMNS",
    "HYDRIDE",
    "ISOTOPES",
    "RATIO_ISOTOPES",
    "REFERENCE",
    "REFERENCE_MATERIALS",
    "REQUIRED_ISOTOPES",
    "TIFF_SUFFIXES",
    "URANIUM",
    "Field",
    "FieldDetector",
    "FieldSource",
    "Material",
    "SimsField",
    "SimsParams",
    "SimsSettings",
    "canonical_isotope",
    "concat_particles",
    "detect_particles",
    "detection_input",
    "field_paths",
    "field_stem",
    "find_fields",
    "match_particles",
    "measure_chunk",
    "measure_particle_isotopes",
    "parse_channels",
    "parse_mixture",
    "particle_columns",
    "plot_ratios",
    "predict_fields",
    "probability_channel",
    "ratio_columns",
    "read_field",
    "run_fields",
    "run_output_paths",
    "run_settings",
    "score_detection",
    "significant",
    "simulate_field",
    "simulate_fields",
    "table_from_record",
    "table_to_record",
    "truth_columns",
    "write_field",
    "write_tiff_labels",
]
