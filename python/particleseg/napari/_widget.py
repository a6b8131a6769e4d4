"""The napari dock widget **Segment particles**.

Its parameter fields are generated from :data:`particleseg.params.PARAMETERS` (names, kinds,
ranges, help texts, main or advanced) and show the chosen bundle's defaults
(:func:`particleseg.params.bundle_defaults`); nothing here restates a default. A field left at
the default it shows is passed on as "the bundle's default" (None), exactly as an option left out
of ``particleseg segment``; the values go through :func:`particleseg.params.segment_params`, the
command line's and the Fiji commands' conversion.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
    SpinBox,
    Table,
)
from qtpy.QtWidgets import QFileDialog, QVBoxLayout, QWidget

from ..errors import ParticlesegError
from ..io import write_csv
from ..measure import with_units
from ..models import list_bundles, load_bundle
from ..params import PARAMETERS, bundle_defaults, parameter, segment_params
from ._core import LayerResult, calibration_of, labels_layer_kwargs, segment_layer

#: what the model field offers besides the installed bundles: a folder or zip chosen with the file field
OTHER = "(file below)"
#: parameters of batches of files, not of one layer: images at the same time, reading files' metadata
FILE_ONLY = ("jobs", "strict")
_BIG = 1e9


def _label(p, unit: str = "px") -> str:
    text = p.name.replace("_", " ").capitalize()
    suffix = {"px": "px", "length": unit, "area": f"{unit}²"}.get(p.unit, "")
    return f"{text} ({suffix})" if suffix else text


def _field(p):
    """Make a magicgui widget for a parameter (its value is set from the bundle's defaults later)."""
    kw = dict(name=p.name, label=_label(p), tooltip=p.help)
    if p.kind == "bool":
        return CheckBox(**kw)
    if p.kind == "choice":
        return ComboBox(choices=p.choices, **kw)
    if p.kind == "number":
        hi = p.maximum if p.maximum is not None else _BIG
        w = FloatSpinBox(min=p.minimum if p.minimum is not None else -_BIG, max=hi, step=0.05 if hi <= 1 else 0.5, **kw)
        w.native.setDecimals(4)
        return w
    if p.kind == "int":
        return SpinBox(min=int(p.minimum) if p.minimum is not None else -(10**9), max=10**9, **kw)
    return LineEdit(**kw)  # range (MIN-MAX), string (crop_rows)


def _llvm_loaded() -> bool:
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            return "libLLVM" in f.read()
    except OSError:
        return False


def check_keras_safe(bundle, params) -> None:
    """Refuse, in one line, a run that would load TensorFlow into a napari whose OpenGL is loaded.

    With Mesa's OpenGL (and its LLVM) already loaded, TensorFlow's libraries then crash the process (napari and
    the user's layers with it). Bundles with an ONNX export run with ONNX Runtime and never need it.
    """
    if "tensorflow" in sys.modules or not _llvm_loaded():
        return
    keras_net = bundle.engine(params.engine) == "keras"
    entry = (bundle.metadata.get("exports") or {}).get("classifier_onnx") or {}
    keras_classifier = (
        bundle.has_classifier
        and params.min_score is not None
        and (keras_net or not (entry.get("file") and (bundle.path / entry["file"]).is_file()))
    )
    if keras_net or keras_classifier:
        raise ParticlesegError(
            f"{bundle.label}: would run with Keras/TensorFlow, which crashes napari when loaded after its Mesa "
            f"OpenGL; with an ONNX export (particleseg models export {bundle.label} --format onnx) and engine auto "
            "or onnx it runs with ONNX Runtime"
        )


class SegmentWidget(QWidget):
    """Segment, split, filter and measure the particles of an Image layer with a model bundle.

    ``segment()`` runs it in the calling thread and returns the Labels layer; the **Segment**
    button runs it in a worker thread. Results: a Labels layer ``IMAGE particles`` (the kept
    particles, numbered 1..N as in ``particleseg segment``'s ``_labels.tif``; measurements as its
    ``features``) and the **particleseg measurements** table (dock widget).
    """

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._bundle = None
        self._bundle_key = None
        self._shown: dict[str, Any] = {}  # parameter -> the default its field shows
        self.result: LayerResult | None = None
        self.table: Table | None = None
        self._worker = None

        self.layer = ComboBox(
            name="image", label="Image", choices=self._image_layers, tooltip="the Image layer to segment"
        )
        self.model = ComboBox(
            name="model",
            label="Model",
            choices=[*list_bundles(), OTHER],
            value="default" if "default" in list_bundles() else None,
            tooltip="an installed model bundle (particleseg models list), or a bundle folder, "
            "zip or bioimage.io package chosen below",
        )
        self.model_file = FileEdit(
            name="model_file",
            label="Bundle file",
            mode="r",
            filter="*.zip",
            tooltip="a bundle zip or bioimage.io package (.zip)",
        )
        self.parameters = [p for p in PARAMETERS if p.name not in FILE_ONLY]
        self.fields = {p.name: _field(p) for p in self.parameters}
        self.main = Container(
            widgets=[
                self.layer,
                self.model,
                self.model_file,
                *(self.fields[p.name] for p in self.parameters if not p.advanced),
            ]
        )
        self.advanced = Container(widgets=[self.fields[p.name] for p in self.parameters if p.advanced])
        self.run_button = PushButton(text="Segment")
        self.status = Label(value="")
        layout = QVBoxLayout(self)
        layout.addWidget(self.main.native)
        try:
            from superqt import QCollapsible  # optional: see the except clause

            box = QCollapsible("Advanced")
            box.addWidget(self.advanced.native)
            layout.addWidget(box)
        except ImportError:  # superqt comes with napari; without it the fields are shown
            layout.addWidget(self.advanced.native)
        layout.addWidget(self.run_button.native)
        layout.addWidget(self.status.native)
        layout.addStretch(1)

        self.model.changed.connect(self._model_changed)
        self.model_file.changed.connect(self._model_file_changed)
        self.layer.changed.connect(self._update_unit_labels)
        self.run_button.changed.connect(self.start)
        events = self.viewer.layers.events
        for ev in (events.inserted, events.removed, events.reordered):
            ev.connect(self._layers_changed)
        self.viewer.layers.selection.events.active.connect(self._active_changed)
        self._layers_changed()
        self._active_changed()
        self._model_changed()

    # ------------------------------------------------------------------ choices
    def _image_layers(self, _widget=None) -> list:
        from napari.layers import Image  # napari: imported on use, so this module imports without it

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _layers_changed(self, event=None) -> None:
        self.layer.reset_choices()

    def _active_changed(self, event=None) -> None:
        from napari.layers import Image  # napari: imported on use, so this module imports without it

        active = self.viewer.layers.selection.active
        if isinstance(active, Image) and active in self.layer.choices:
            self.layer.value = active

    def _update_unit_labels(self, event=None) -> None:
        unit = calibration_of(self.layer.value).unit if self.layer.value is not None else "px"
        for p in self.parameters:
            if p.unit in ("length", "area"):
                self.fields[p.name].label = _label(p, unit)

    # ------------------------------------------------------------------ model and defaults
    def set_model(self, model: str | Path | None) -> None:
        """Choose a bundle: an installed name, or a folder, zip or bioimage.io package."""
        if model is None or str(model) in list_bundles():
            self.model.value = str(model or "default")
        else:
            self.model_file.value = Path(model)
            self.model.value = OTHER
            self._model_changed()

    def _model_file_changed(self, event=None) -> None:
        if str(self.model_file.value) not in ("", "."):
            if self.model.value != OTHER:
                self.model.value = OTHER  # emits changed -> _model_changed
            else:
                self._model_changed()

    def _model_source(self):
        if self.model.value == OTHER:
            path = str(self.model_file.value)
            return None if path in ("", ".") else path
        return self.model.value

    def bundle(self):
        """Return the chosen bundle (loaded once per choice)."""
        key = self._model_source()
        if key is None:
            raise ParticlesegError("choose a model: an installed bundle, or a bundle file")
        if self._bundle is None or self._bundle_key != key:
            self._bundle, self._bundle_key = load_bundle(key), key
        return self._bundle

    def _model_changed(self, event=None) -> None:
        """Show the chosen bundle's defaults in every field."""
        if self._model_source() is None:
            return
        try:
            bundle = self.bundle()
        except ParticlesegError as exc:
            self.status.value = str(exc)
            return
        self.reset_defaults(bundle)
        self.status.value = f"model {bundle.label}"

    def reset_defaults(self, bundle=None) -> None:
        """Set every field to the default of ``bundle`` (the chosen one)."""
        bundle = bundle or self.bundle()
        defaults = bundle_defaults(bundle)
        for p in self.parameters:
            value = defaults[p.name]
            if value is None and p.name in ("tile", "overlap"):
                value = getattr(bundle, p.name)  # the bundle's tiling, shown as a number
            w = self.fields[p.name]
            if p.kind == "bool":
                w.value = bool(value)
            elif p.kind in ("range", "string"):
                w.value = str(value)
            elif p.kind == "choice":
                w.value = value if value in p.choices else p.choices[0]
            elif value is not None:
                w.value = value
            self._shown[p.name] = w.value  # after the widget's rounding
        self._update_unit_labels()

    def values(self) -> dict[str, Any]:
        """Return the parameter values by name.

        A field at the bundle's default it shows gives None (the bundle's default, unrounded), as an
        option left out of the command line.
        """
        out = {}
        for p in self.parameters:
            value = self.fields[p.name].value
            if p.name in ("tile", "overlap") or p.bundle:
                if value == self._shown.get(p.name):
                    value = None
            if p.kind == "number" and isinstance(value, float) and not math.isfinite(value):
                value = None
            out[p.name] = value
        return out

    def set_values(self, **values) -> None:
        """Set fields by parameter name (former names accepted), as a macro or a command line would."""
        for name, value in values.items():
            p = parameter(name)
            self.fields[p.name].value = str(value) if p.kind in ("range", "string") else value

    # ------------------------------------------------------------------ running
    def _inputs(self):
        layer = self.layer.value
        if layer is None:
            raise ParticlesegError("no Image layer to segment: open an image first")
        params = segment_params(self.values(), where="napari", progress=False)
        bundle = self.bundle()
        check_keras_safe(bundle, params)
        return layer, bundle, params

    def segment(self):
        """Segment the chosen layer now (in this thread); return the Labels layer."""
        layer, bundle, params = self._inputs()
        return self._show(layer, segment_layer(layer, bundle, params))

    def start(self, event=None) -> None:
        """Segment in a worker thread (the Segment button); otherwise as :meth:`segment`."""
        from napari.qt.threading import create_worker  # napari: imported on use, as above

        try:
            layer, bundle, params = self._inputs()
        except ParticlesegError as exc:
            self.status.value = str(exc)
            return
        self.run_button.enabled = False
        self.status.value = f"segmenting {layer.name} ..."
        worker = create_worker(segment_layer, layer, bundle, params)
        worker.returned.connect(lambda result: self._show(layer, result))
        worker.errored.connect(self._failed)
        worker.finished.connect(lambda: setattr(self.run_button, "enabled", True))
        self._worker = worker
        worker.start()

    def _failed(self, exc: BaseException) -> None:
        self.status.value = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not isinstance(exc, ParticlesegError):
            raise exc

    def _show(self, layer, result: LayerResult):
        self.result = result
        kw = labels_layer_kwargs(result, layer)
        name = kw.pop("name")
        if name in self.viewer.layers:  # a rerun replaces the earlier result
            labels = self.viewer.layers[name]
            labels.data = result.labels
            labels.features = kw["features"]
            labels.metadata.update(kw["metadata"])
        else:
            labels = self.viewer.add_labels(result.labels, name=name, **kw)
        self._show_table(result, name)
        self.status.value = f"{layer.name}: {result.summary()}"
        return labels

    def _show_table(self, result: LayerResult, title: str) -> None:
        data = with_units(result.kept, result.calibration.unit)
        if self.table is None:
            self.table = Table(value=data.to_dict("list") if len(data) else {c: [] for c in data.columns})
            self.table.read_only = True
            save = PushButton(text="Save table as CSV...")
            save.changed.connect(self._save_dialog)
            self.table_widget = Container(widgets=[self.table, save], labels=False)
            try:
                self.viewer.window.add_dock_widget(self.table_widget, name="particleseg measurements", area="bottom")
            except AttributeError:  # a viewer without a window (ViewerModel)
                pass
        else:
            self.table.value = data.to_dict("list") if len(data) else {c: [] for c in data.columns}
        self.table_widget.label = title

    def save_table(self, path: str | Path, overwrite: bool = True) -> Path:
        """Write the measurements of every particle (kept and rejected) to a CSV file.

        As ``particleseg segment``'s ``_particles.csv`` (units in the header).
        """
        if self.result is None:
            raise ParticlesegError("nothing segmented yet")
        return write_csv(path, with_units(self.result.table, self.result.calibration.unit), overwrite)

    def _save_dialog(self, event=None) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save measurements", "particles.csv", "CSV (*.csv)")
        if path:
            self.save_table(path)
            self.status.value = f"saved {path}"
