"""Networks (:mod:`.architectures`) and model bundles (:mod:`.bundle`).

The names are imported on first use (PEP 562), so that ``particleseg.models.ARCHITECTURES``
costs no NumPy import.
"""

# the TYPE_CHECKING imports re-export the names of __all__ (built from _LAZY, which ruff cannot read)
# ruff: noqa: F401
from __future__ import annotations

from typing import TYPE_CHECKING

from .. import lazy_getattr

_LAZY = {
    **dict.fromkeys(("ARCHITECTURES", "Head", "NetworkConfig", "build_network"), "architectures"),
    **dict.fromkeys(
        (
            "DEFAULT_MODEL",
            "SHIPPED_MODELS",
            "Bundle",
            "bundle_origin",
            "keras_predictor",
            "list_bundles",
            "load_bundle",
            "make_metadata",
            "model_search_path",
            "resolve_bundle",
            "save_bundle",
            "validate_metadata",
            "write_metadata",
            "zip_bundle",
        ),
        "bundle",
    ),
}

__all__ = list(_LAZY)

if TYPE_CHECKING:  # what static tools and IDEs see
    from .architectures import ARCHITECTURES, Head, NetworkConfig, build_network
    from .bundle import (
        DEFAULT_MODEL,
        SHIPPED_MODELS,
        Bundle,
        bundle_origin,
        keras_predictor,
        list_bundles,
        load_bundle,
        make_metadata,
        model_search_path,
        resolve_bundle,
        save_bundle,
        validate_metadata,
        write_metadata,
        zip_bundle,
    )

__getattr__ = lazy_getattr(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
