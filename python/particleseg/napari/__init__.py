"""The napari plugin of particleseg (npe2; the optional extra ``particleseg[napari]``).

napari finds it through the ``napari.manifest`` entry point (``napari.yaml`` beside this file):

* **Segment particles** (Plugins > particleseg): a dock widget that segments, splits, filters and
  measures the chosen Image layer with a model bundle (default: the shipped default model), adds
  the kept particles as a Labels layer (the labels of ``particleseg segment``'s
  ``STEM_labels.tif``, the measurements as the layer's ``features``) and shows the measurement
  table in a dock widget. Its fields are generated from :data:`particleseg.params.PARAMETERS`:
  the same names, ranges, help and bundle defaults as the command line's options and the Fiji
  commands' dialogs. It calls :func:`particleseg.pipeline.segment_image`, the pipeline of every
  other route.
* a **reader** for the electron-microscopy formats of :mod:`particleseg.formats` (DM3/DM4, EMD,
  MRC, OME-Zarr), which sets the layer's pixel size and unit from the file's calibration, so the
  measurements are calibrated;
* the shipped **sample image** (File > Open Sample > particleseg).

The Qt-free part (:func:`segment_layer`, :func:`calibration_of`, :func:`labels_layer_kwargs`,
:func:`layer_data`) works on napari layers without a viewer, and on any object with an Image
layer's attributes.
"""

from ._core import LayerResult, calibration_of, image_of, labels_layer_kwargs, layer_units, segment_layer
from ._reader import layer_data, sample_sem

__all__ = [
    "segment_layer",
    "LayerResult",
    "calibration_of",
    "image_of",
    "labels_layer_kwargs",
    "layer_units",
    "layer_data",
    "sample_sem",
    "SegmentWidget",
]


def __getattr__(name):  # the widget imports Qt: only when asked for
    if name == "SegmentWidget":
        from ._widget import SegmentWidget  # Qt and magicgui: loaded only for the widget

        return SegmentWidget
    raise AttributeError(name)
