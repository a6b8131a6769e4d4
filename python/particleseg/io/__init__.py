"""Reading images with their spatial calibration, and writing outputs that ImageJ and Fiji open.

Readers return gray-value arrays, ``(Y, X)`` for an image and ``(Z, Y, X)`` for a stack, in
their original data type (RGB is converted to float32 luminance), together with a
:class:`Calibration`. Calibration is taken, in this order, from ImageJ metadata, OME-XML, the
Zeiss SEM tag (``CZ_SEM``) and the FEI/Thermo Fisher SEM tag.

Writers never modify inputs, write atomically (a temporary file in the target folder, then an
atomic rename) and refuse to replace an existing file unless ``overwrite=True``.

The package has one module per job: :mod:`.calibration` (units, :class:`Calibration`, metadata),
:mod:`.read` (the one reader of images, masks and labels), :mod:`.write` (atomic writers,
output checks, stale temporaries) and :mod:`.rois` (outlines and ImageJ ROI sets). Import from
``particleseg.io``; the names below are its interface.
"""

from .calibration import (
    Calibration,
    calibration_from_width,
    canonical_unit,
    read_calibration,
)
from .read import (
    IMAGE_SUFFIXES,
    check_image,
    image_pixels,
    list_images,
    read_array,
    read_image,
    read_tiff_series,
)
from .rois import label_outlines, roi_region, trace_outline, write_rois
from .write import (
    OutputError,
    check_output_folder,
    check_outputs,
    current_umask,
    describe_os_error,
    remove_stale_temporaries,
    respect_umask,
    stale_temporaries,
    write_atomic,
    write_csv,
    write_tiff,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "Calibration",
    "OutputError",
    "calibration_from_width",
    "canonical_unit",
    "check_image",
    "check_output_folder",
    "check_outputs",
    "current_umask",
    "describe_os_error",
    "image_pixels",
    "label_outlines",
    "list_images",
    "read_array",
    "read_calibration",
    "read_image",
    "read_tiff_series",
    "remove_stale_temporaries",
    "respect_umask",
    "roi_region",
    "stale_temporaries",
    "trace_outline",
    "write_atomic",
    "write_csv",
    "write_rois",
    "write_tiff",
]
