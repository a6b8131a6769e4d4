"""Phase segmentation of serial-section FIB-SEM stacks.

Several detector channels, neighbouring slices as context, stacks larger than memory.

A FIB-SEM stack is a series of slices milled and imaged one after the other, often with two
detector signals (in-chamber and through-the-lens), with curtaining stripes, a non-uniform
detector response and noise. A network that sees all channels of the current slice and of
``k`` slices before and after it labels every pixel with a phase (a softmax ``classes`` head).

The package has one module per job: :mod:`.stacks` (slice sources and stacks, read slice by
slice), :mod:`.inputs` (the network input of a slice: context window, normalisation),
:mod:`.annotations` (annotated slices), :mod:`.metrics` (per-phase agreement),
:mod:`.predict` (labels of one slice by tiled inference), :mod:`.train` (:func:`train_phases`
and the bundle metadata), :mod:`.outputs` (where a segmentation is written, the assembled
stack), :mod:`.measure` (volume fractions), :mod:`.segment` (:func:`segment_stack`, the
resumable run over a stack) and :mod:`.simulate` (simulated two-detector stacks). Import from
``particleseg.fibsem``; the names below are its interface.

Label convention: phases are ``1..K`` in label images and annotations; ``0`` means *not
annotated* (ignored in training) or *not segmented* (a slice that could not be read).
"""

from .annotations import read_annotations
from .inputs import InputBuilder, context_indices, input_names, stack_normalization
from .measure import plot_volume_fractions, volume_fractions
from .metrics import metrics_table, phase_metrics
from .outputs import assemble_stack, phase_output_paths, slice_path
from .predict import predict_slice, predict_stack_slice
from .segment import run_settings, segment_stack
from .simulate import (
    FibsemSettings,
    FibsemSimulation,
    annotation_slices,
    phase_volume,
    simulate_stack,
    write_simulation,
)
from .stacks import (
    TIFF_SUFFIXES,
    ArraySource,
    EMFileSource,
    FolderSource,
    SliceSource,
    Stack,
    TiffStackSource,
    open_stack,
    stack_files,
)
from .train import PhaseTrainConfig, make_phase_metadata, recalibrate_batchnorm, train_phases

__all__ = [
    "TIFF_SUFFIXES",
    "ArraySource",
    "EMFileSource",
    "FibsemSettings",
    "FibsemSimulation",
    "FolderSource",
    "InputBuilder",
    "PhaseTrainConfig",
    "SliceSource",
    "Stack",
    "TiffStackSource",
    "annotation_slices",
    "assemble_stack",
    "context_indices",
    "input_names",
    "make_phase_metadata",
    "metrics_table",
    "open_stack",
    "phase_metrics",
    "phase_output_paths",
    "phase_volume",
    "plot_volume_fractions",
    "predict_slice",
    "predict_stack_slice",
    "read_annotations",
    "recalibrate_batchnorm",
    "run_settings",
    "segment_stack",
    "simulate_stack",
    "slice_path",
    "stack_files",
    "stack_normalization",
    "train_phases",
    "volume_fractions",
    "write_simulation",
]
