"""Networks (:mod:`.architectures`) and model bundles (:mod:`.bundle`)."""

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

__all__ = [
    "ARCHITECTURES", "Head", "NetworkConfig", "build_network", "DEFAULT_MODEL", "SHIPPED_MODELS", "Bundle", "bundle_origin",
    "keras_predictor", "list_bundles", "load_bundle", "make_metadata", "model_search_path",
    "resolve_bundle", "save_bundle", "validate_metadata", "write_metadata", "zip_bundle",
]
