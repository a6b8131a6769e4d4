"""Training segmentation networks: targets, augmentation, sampling, losses and the loop.

Training data are pairs of images and *instance label images* (0 background, one integer per
particle); binary masks with one-pixel lines between touching particles are labelled with
4-connectivity first (:func:`labels_from_mask`). Targets for each head of the network are made
from the labels (:func:`make_targets`), so one annotation serves every head.

Everything uses ``keras.ops`` and ``keras.utils.PyDataset``, so training runs on the
TensorFlow, JAX and PyTorch backends.

The package has one module per step: :mod:`.targets` (targets from instance labels),
:mod:`.augment` (augmentation), :mod:`.tiles` (random training tiles in batches),
:mod:`.losses`, :mod:`.loop` (the one fit loop: :func:`fit_targets`, and :func:`fit` for a
segmentation network), :mod:`.data` (training data from files), :mod:`.scores` (validation
scores), :mod:`.segmentation` (:func:`train_segmentation`, ``particleseg train``) and
:mod:`.classifier` (the particle classifier). Import from ``particleseg.train``.
"""

from .augment import (
    Augmentation,
)
from .classifier import (
    balanced_accuracy,
    choose_classifier_threshold,
    choose_min_score,
    classifier_particle_scores,
    train_classifier,
)
from .data import (
    MASK_KINDS,
    MASK_SUFFIXES,
    NORMALIZATION,
    TrainingItem,
    interpret_mask,
    label_mask_4,
    match_masks,
    particle_size_px,
    read_mask,
    read_training_data,
    split_validation,
    training_polarity,
)
from .loop import (
    ENCODER_PREFIXES,
    UNFROZEN_COST,
    TrainConfig,
    cosine_decay,
    fit,
    fit_targets,
    learning_rate_schedule,
    plan_epochs,
    plot_loss,
    set_encoder_trainable,
    step_decay,
)
from .losses import (
    make_loss,
)
from .scores import (
    choose_postprocess,
    epoch_score,
    instance_score,
    min_area_choices,
    post_params,
    validation_scores,
)
from .segmentation import (
    train_segmentation,
)
from .targets import (
    boundary_map,
    labels_from_mask,
    make_targets,
    normalized_distance,
    separation_weights,
)
from .tiles import (
    make_tile_sequence,
)

__all__ = [
    "Augmentation",
    "ENCODER_PREFIXES",
    "MASK_KINDS",
    "MASK_SUFFIXES",
    "NORMALIZATION",
    "TrainConfig",
    "TrainingItem",
    "UNFROZEN_COST",
    "balanced_accuracy",
    "boundary_map",
    "choose_classifier_threshold",
    "choose_min_score",
    "choose_postprocess",
    "classifier_particle_scores",
    "cosine_decay",
    "epoch_score",
    "fit",
    "fit_targets",
    "instance_score",
    "post_params",
    "interpret_mask",
    "label_mask_4",
    "labels_from_mask",
    "learning_rate_schedule",
    "make_loss",
    "make_targets",
    "min_area_choices",
    "separation_weights",
    "make_tile_sequence",
    "match_masks",
    "normalized_distance",
    "particle_size_px",
    "plan_epochs",
    "plot_loss",
    "read_mask",
    "read_training_data",
    "set_encoder_trainable",
    "split_validation",
    "step_decay",
    "train_classifier",
    "train_segmentation",
    "training_polarity",
    "validation_scores",
]
