"""Networks (:mod:`.architectures`) and model bundles (:mod:`.bundle`).

The names are imported on first use (PEP 562), so that ``particleseg.models.ARCHITECTURES``
costs no NumPy import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import lazy_getattr

_LAZY = {
    **dict.fromkeys(("ARCHITECTURES", "Head", "NetworkConfig", "build_network"), "architectures"),
    **dict.fromkeys(("DEFAULT_MODEL", "SHIPPED_MODELS", "Bundle", "bundle_origin", "keras_predictor", "list_bundles",
                     "load_bundle", "make_metadata", "model_search_path", "resolve_bundle", "save_bundle",
                     "validate_metadata", "write_metadata", "zip_bundle"), "bundle"),
}

__all__ = list(_LAZY)

if TYPE_CHECKING:  # what static tools and IDEs see (``X as X``: a re-export)
    from .architectures import (
        ARCHITECTURES as ARCHITECTURES,
        Head as Head,
        NetworkConfig as NetworkConfig,
        build_network as build_network,
    )
    from .bundle import (
        DEFAULT_MODEL as DEFAULT_MODEL,
        SHIPPED_MODELS as SHIPPED_MODELS,
        Bundle as Bundle,
        bundle_origin as bundle_origin,
        keras_predictor as keras_predictor,
        list_bundles as list_bundles,
        load_bundle as load_bundle,
        make_metadata as make_metadata,
        model_search_path as model_search_path,
        resolve_bundle as resolve_bundle,
        save_bundle as save_bundle,
        validate_metadata as validate_metadata,
        write_metadata as write_metadata,
        zip_bundle as zip_bundle,
    )

__getattr__ = lazy_getattr(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
