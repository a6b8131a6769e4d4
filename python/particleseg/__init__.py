"""particleseg: deep-learning segmentation and measurement of particles in microscopy images.

The core (this package without :mod:`particleseg.fiji`) never imports Java. Deep-learning
frameworks are imported only when a network is built, trained or run.

>>> from particleseg import load_bundle, read_image, segment_image
>>> image, calibration = read_image("python/particleseg/data/sample_sem.tif")   # doctest: +SKIP
>>> result = segment_image(image, load_bundle(), calibration=calibration)         # doctest: +SKIP
>>> result.table[["MinFeret", "Feret", "kept"]].describe()                     # doctest: +SKIP
"""

__version__ = "0.1.0"

from .errors import BundleError, InputError, OutputExistsError, ParticlesegError
from .io import Calibration, read_image
from .measure import measure_particles, summarize
from .models import load_bundle
from .pipeline import SegmentParams, Segmentation, segment_file, segment_files, segment_image

__all__ = [
    "__version__", "BundleError", "InputError", "OutputExistsError", "ParticlesegError",
    "Calibration", "read_image", "measure_particles", "summarize", "load_bundle",
    "SegmentParams", "Segmentation", "segment_file", "segment_files", "segment_image",
]
