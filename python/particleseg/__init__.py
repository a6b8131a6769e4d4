"""particleseg: deep-learning segmentation and measurement of particles in microscopy images.

The core (this package without :mod:`particleseg.fiji`) never imports Java. Deep-learning
frameworks are imported only when a network is built, trained or run.

The names below are imported when first used (a module-level ``__getattr__``, PEP 562), so
that ``import particleseg`` and ``particleseg --help`` do not load NumPy, pandas, SciPy or
scikit-image.

>>> from particleseg import load_bundle, read_image, segment_image
>>> image, calibration = read_image("python/particleseg/data/sample_sem.tif")   # doctest: +SKIP
>>> result = segment_image(image, load_bundle(), calibration=calibration)         # doctest: +SKIP
>>> result.table[["MinFeret", "Feret", "kept"]].describe()                     # doctest: +SKIP
"""

# (no ``from __future__ import annotations`` here: it would bind the name ``annotations`` in
# this package, hiding the submodule :mod:`particleseg.annotations` until it is imported)
import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: public name -> the submodule that defines it (imported on first access)
_LAZY = {
    "BundleError": "errors",
    "InputError": "errors",
    "OutputExistsError": "errors",
    "ParticlesegError": "errors",
    "Calibration": "io",
    "read_image": "io",
    "measure_particles": "measure",
    "summarize": "measure",
    "load_bundle": "models",
    "SegmentParams": "pipeline",
    "Segmentation": "pipeline",
    "segment_file": "pipeline",
    "segment_files": "pipeline",
    "segment_image": "pipeline",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # what static tools and IDEs see (re-exported through __all__ and __getattr__)
    from .errors import BundleError, InputError, OutputExistsError, ParticlesegError  # noqa: F401
    from .io import Calibration, read_image  # noqa: F401
    from .measure import measure_particles, summarize  # noqa: F401
    from .models import load_bundle  # noqa: F401
    from .pipeline import Segmentation, SegmentParams, segment_file, segment_files, segment_image  # noqa: F401


def lazy_getattr(package: str, names: dict[str, str], namespace: dict):
    """Return a module-level ``__getattr__`` (PEP 562) for ``package``.

    It imports ``names[name]`` (a submodule, relative to ``package``) on first access of
    ``name`` and keeps the value in the package's ``namespace``.

    """

    def __getattr__(name: str):
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value
        return value

    return __getattr__


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
