"""Training a segmentation network from image and mask files (``particleseg train``)."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import InputError
from ..io import check_outputs
from ..models import (
    ARCHITECTURES,
    Head,
    NetworkConfig,
    build_network,
    keras_predictor,
    load_bundle,
    make_metadata,
    save_bundle,
    zip_bundle,
)
from ..models.export import export_bundle
from .augment import Augmentation
from .classifier import MIN_SCORE_RULE, choose_min_score, train_classifier
from .data import (
    NORMALIZATION,
    particle_size_px,
    read_training_data,
    split_validation,
    training_polarity,
)
from .loop import (
    TrainConfig,
    _EtaCallback,
    _progress_callback,
    _workdir_config,
    fit,
)
from .scores import choose_postprocess, epoch_score, min_area_choices


def _choose_base(base_model, given_net: dict, class_names, mask_kind: str):
    """Choose the base model of a training run.

    ``"auto"`` is the shipped default unless the run asks for a new network (network options,
    multi-class masks); ``"none"`` is None.
    """
    if base_model is None or str(base_model).strip().lower() in ("", "none"):
        return None
    if str(base_model) == "auto":
        multi = mask_kind == "classes" or (class_names is not None and len(class_names) > 2)
        return None if given_net or multi else "default"
    if given_net:
        opts = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in given_net.items())
        raise InputError(
            f"{opts}: network options apply to a new network, but --base-model {base_model} fine-tunes "
            "an existing one; leave them out, or train a new network with --base-model none"
        )
    return base_model


#: the post-processing choice after training (:func:`choose_postprocess`: the held-out images
#: predicted as they are and over 8 orientations, every setting scored for each) costs about
#: this many epoch scores (:func:`epoch_score`, one prediction and one segmentation of the same
#: images), which a time budget keeps for it. Measured on the 5 held-out TiO2 images, 2 CPU
#: cores: 86 s against 5.7-7.4 s with the shipped model (13x), 91 s against a median of 4.5 s at
#: the end of a 60-minute fine-tune (20x; 15 had been reserved).
RESERVE_SCORES = 20.0


def _estimate_minutes(network, config: TrainConfig, channels: int, score_pixels: float = 0.0) -> tuple[float, float]:
    """Estimate the cost of one training epoch and of one validation score here, in minutes, roughly.

    An epoch: three forward passes per batch (forward, and a backward pass about twice as
    dear), timed on one batch. A score: one forward pass over ``score_pixels`` (the validation
    images with the overlap of their tiles) at the same cost per pixel; its segmentation is not
    counted (on the TiO2 images the network is most of a score: 4.5 s measured, about 4 s
    estimated).
    """
    import keras  # keras: only to time a network (lazy, docs/architecture.md)

    model = build_network(dataclasses.replace(network, input_channels=channels))
    x = np.zeros((config.batch_size, config.tile, config.tile, channels), np.float32)
    model.predict_on_batch(x)
    t0 = time.time()
    model.predict_on_batch(x)
    per = time.time() - t0
    del model
    keras.backend.clear_session()
    epoch = 3 * per * (config.steps_per_epoch + config.validation_steps / 3) / 60
    return epoch, per * score_pixels / (config.batch_size * config.tile**2) / 60


def train_segmentation(
    images,
    masks,
    out: str | os.PathLike,
    *,
    arch: str | None = None,
    depth: int | None = None,
    base_filters: int | None = None,
    dropout: float | None = None,
    normalization: str | None = None,
    extra_head: str | None = "default",
    mask_kind: str = "auto",
    class_names: Sequence[str] | None = None,
    channel_names: Sequence[str] | None = None,
    crop_rows: int = 0,
    validation_images=None,
    validation_masks=None,
    validation_split: float = 0.2,
    tile: int = 256,
    batch_size: int = 8,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    validation_steps: int | None = None,
    learning_rate: float | None = None,
    lr_step_epochs: int | None = None,
    dice: bool | None = None,
    separation_weight: float | None = None,
    patience: int | None = None,
    select_from: float | None = None,
    ema: float = 0.0,
    schedule: str | None = None,
    freeze_epochs: int | None = None,
    select: str | None = None,
    minutes: float | None = None,
    augmentation: Augmentation | None = None,
    seed: int = 0,
    keep_masks=None,
    classifier_epochs: int | None = None,
    classifier_learning_rate: float | None = None,
    classifier_network=None,
    base_model: str | os.PathLike | None = "auto",
    name: str | None = None,
    description: str = "",
    pixel_size: float | None = None,
    unit: str | None = None,
    polarity: str = "auto",
    export: Sequence[str] = (),
    zip_copy: bool = False,
    workdir: str | os.PathLike | None = None,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool | Callable[[int, int, dict], None] = True,
    jit_compile: bool | None = None,
    loader_processes: int = 0,
):
    """Train a segmentation network on annotated images and write a model bundle.

    Every input is read and checked before training starts. Checkpoints go to ``workdir``
    after every epoch; an interrupted run started again with the same settings continues
    after the last finished epoch.

    Parameters
    ----------
    images, masks : folder, files or arrays
        See :func:`read_training_data`: binary masks with one-pixel lines between touching
        particles, instance label images, or class-label images (``mask_kind="classes"``).
    out : path
        Bundle folder to write (refused if it exists, unless ``overwrite``).
    arch : {"multires-unet", "unet", "fcn"}, optional
    depth, base_filters, dropout, normalization : optional
        Network of a new model (:class:`~particleseg.models.NetworkConfig`; defaults
        ``multires-unet``, 4, 16, 0, ``batch``). Giving any of them trains a new network
        (``base_model="auto"``); they cannot be combined with a named ``base_model``.
    extra_head : {"distance", "boundary", None}
        A second output of a new network that the watershed takes its seeds from
        (``distance``, the default: each particle's normalised distance to its border;
        ``boundary``: particle borders).
    mask_kind : {"auto", "binary", "labels", "classes"}
    class_names : sequence of str
        Names of the classes of a multi-class mask, background first; the network then has a
        ``foreground`` head (any phase) and a softmax ``classes`` head.
    channel_names : sequence of str
        What each input channel is (stored in the bundle).
    crop_rows : int
        Rows at the bottom of each image to ignore (data bar).
    validation_images, validation_masks : optional
        Separate validation data; otherwise ``validation_split`` of the images (at least one)
        is held out, chosen with ``seed``.
    tile, batch_size, epochs, steps_per_epoch, validation_steps
        Random training tiles per batch and batches per epoch; ``None`` steps: about two
        passes over the training pixels per epoch (10 to 200 batches).
    learning_rate, lr_step_epochs
        Adam's (first) learning rate: default 5e-4 when fine-tuning, 1e-3 for a new network;
        with the ``step`` schedule halved every ``lr_step_epochs`` (default ``epochs // 3``).
    dice : bool
        Add the soft Dice loss to the class-balanced cross-entropy of the foreground
        (default: on when fine-tuning).
    separation_weight : float, optional
        Height ``w0`` of the U-Net border weights (:func:`separation_weights`): the background
        between touching particles weighs up to ``1 + w0`` in the loss and small particles up to
        3x (0: every pixel alike). Default: 10 (the U-Net paper's) when fine-tuning, 0 for a
        new network. On the TiO2 fine-tune (docs/training.md) it raised the validation instance
        IoU from 0.634 to 0.698 and foreground IoU from 0.907 to 0.921.
    patience : int, optional
        Early stopping after this many epochs without a better selection metric (0: never).
        Default: 15, and never under a time budget (``minutes``), whose plan ends the run: the
        instance score of a few held-out images wanders from epoch to epoch, and stopping
        early cut the cosine schedule before its learning rate had come down.
    select_from : float, optional
        The best epoch is chosen among the epochs after this fraction of the plan (0: any).
        Default: 0.5 under a time budget, else 0; the first half of a cosine schedule, and
        the warm-up with the encoder frozen, are not chosen however well a noisy score rates
        them.
    ema : float
        Momentum per batch of an exponential moving average of the weights
        (:func:`~particleseg.train.loop.weight_average`), which is validated, chosen as the
        best epoch and written to the bundle in place of the weights being trained (0.99:
        about the last 100 batches; 0, the default: off).
    schedule : {"cosine", "step"}, optional
        Learning-rate schedule (default ``cosine`` when fine-tuning, else ``step``).
    freeze_epochs : int, optional
        Epochs of warm-up with the encoder frozen (default: a tenth of the epochs when
        fine-tuning, none for a new network).
    select : {"val_score", "val_loss"}, optional
        How the best epoch is chosen: the instance score of the validation images
        (:func:`instance_score` at the base model's post-processing; the default when
        fine-tuning a model with a foreground head) or the validation loss.
    minutes : float, optional
        Time budget of the whole run: the epochs are planned from the measured cost of the
        first one, and the plan is shortened when later epochs run slower (other work on the
        machine) and lengthened again when they recover, past the first plan once three full
        epochs have measured the pace (the pace is the median of the last five epochs); a
        fifth of the budget goes to the particle classifier when there are keep masks;
        ``epochs`` is then ignored. Refused before training when two epochs and the
        post-processing choice after them (:data:`RESERVE_SCORES`) do not fit.
    augmentation : Augmentation
    seed : int
        Seeds the split, the weights and every batch: a run is reproducible.
    keep_masks : folder, files or arrays, optional
        Masks of the particles worth keeping: also trains the particle classifier
        (:func:`train_classifier`) and stores it in the bundle.
    classifier_epochs, classifier_learning_rate : optional
        Epochs and learning rate of the classifier (default ``epochs``, and ``learning_rate`` or 1e-3).
    classifier_network : NetworkConfig, optional
        The classifier's network (default: a depth-3 UNet with 8 base filters, two inputs).
    base_model : bundle, "auto" or None
        Start from this bundle's network (fine-tuning); ``"default"`` is the shipped default
        model. ``"auto"`` (the default) fine-tunes the default model unless a network option
        is given, the masks are multi-class or the images have several channels; ``None``
        (or ``"none"``) trains a new network.
    name, description : str
        Bundle name (default: the folder name) and a description of the training data.
    pixel_size, unit : optional
        Pixel size of the training images (default: from the files when they agree).
    polarity : {"auto", "bright", "dark"}
        Whether the particles of the training images are brighter or darker than their
        background; ``auto`` (the default) measures it from the masks (mean gray value inside
        the particles against outside). A base model that expects the other polarity sees the
        images inverted, and the bundle records the polarity its network expects, so
        ``segment`` inverts new images the same way.
    export : sequence of {"onnx", "saved_model"}
        Also export the network in these formats (checked against Keras).
    zip_copy : bool
        Also write ``out.zip``.
    workdir : path
        Checkpoints, ``log.csv`` and ``loss.png`` (default ``<out>.work``).
    resume : bool
        Continue an interrupted run found in ``workdir``.
    overwrite : bool
    progress : bool or callable
        Keras' progress bar, or a function called as ``progress(epochs_done, epochs, logs)``.
    jit_compile : bool, optional
        Compile the training step with XLA (default: Keras decides).
    loader_processes : int
        Worker processes that make the targets and cut the training batches (0: two threads).
        For a GPU, which trains faster than two threads cut tiles; the run is the same.

    Returns
    -------
    Bundle
        The written bundle, loaded.
    """
    import keras  # keras: only to train (lazy, docs/architecture.md)

    t0 = time.time()
    out = Path(out)
    given_net = {
        k: v
        for k, v in dict(
            arch=arch, depth=depth, base_filters=base_filters, dropout=dropout, normalization=normalization
        ).items()
        if v is not None
    }
    if extra_head != "default":
        given_net["extra_head"] = extra_head
    base_model = _choose_base(base_model, given_net, class_names, mask_kind)
    arch, depth, base_filters = (arch or "multires-unet"), (depth or 4), (base_filters or 16)
    dropout, normalization = (dropout or 0.0), (normalization or "batch")
    extra_head = "distance" if extra_head == "default" else extra_head
    arch = arch.replace("_", "-")
    if arch not in ARCHITECTURES:
        raise InputError(f"{arch}: unknown architecture; choose one of {', '.join(ARCHITECTURES)}")
    if extra_head not in (None, "none", "distance", "boundary"):
        raise InputError(f"{extra_head}: unknown extra head; choose distance, boundary or none")
    extra_head = None if extra_head == "none" else extra_head
    for fmt in export:
        if fmt not in ("onnx", "saved_model"):
            raise InputError(f"{fmt}: unknown export format; choose onnx or saved_model")
    check_outputs([out] + ([out.with_suffix(".zip")] if zip_copy else []), overwrite)
    classes = list(class_names) if class_names else None
    if mask_kind == "classes" and not classes:
        raise InputError("multi-class masks need the class names (background first)")
    if classes and len(classes) > 2:
        mask_kind = "classes"

    base = load_bundle(base_model) if base_model else None
    norm = dict(base.metadata["input"]["normalization"]) if base else dict(NORMALIZATION)
    if base:
        base.check_use("sem", str(base_model))
        network = base.network
        if mask_kind == "classes" and "classes" not in [h.kind for h in network.heads]:
            raise InputError(
                f"{base_model}: has no classes head (heads {'+'.join(h.kind for h in network.heads)}), "
                "so it cannot learn multi-class masks; train a new network (--base-model none)"
            )
        if classes and "classes" in [h.kind for h in network.heads]:
            nc = next(h.channels for h in network.heads if h.kind == "classes")
            if nc != len(classes):
                raise InputError(f"{base_model}: has {nc} classes but {len(classes)} class names were given")
    else:
        heads = [Head("foreground")]
        if extra_head:
            heads.append(Head(extra_head))
        if mask_kind == "classes":
            heads.append(Head("classes", len(classes), "softmax"))
        try:
            network = NetworkConfig(arch, 1, tuple(heads), depth, base_filters, dropout, normalization)
        except ValueError as exc:
            raise InputError(f"{out}: {exc}") from None
    if tile % network.multiple_of:
        raise InputError(f"tile {tile} must be a multiple of {network.multiple_of} (2**depth)")

    # 1. every input, before any training
    if polarity not in ("auto", "bright", "dark"):
        raise InputError(f"{polarity}: unknown polarity; choose auto, bright or dark")
    items = read_training_data(images, masks, keep_masks, mask_kind, len(classes) if classes else None, crop_rows, norm)
    if polarity == "auto":
        polarity = training_polarity(items)
    net_polarity = base.metadata["input"].get("polarity", "bright") if base else polarity
    flip = net_polarity != polarity
    if flip:  # the base network expects the other polarity: show it the images inverted
        items = read_training_data(
            images, masks, keep_masks, mask_kind, len(classes) if classes else None, crop_rows, norm, invert=True
        )
    if validation_images is not None:
        if validation_masks is None:
            raise InputError("validation images given without validation masks")
        val_items = read_training_data(
            validation_images,
            validation_masks,
            None,
            mask_kind,
            len(classes) if classes else None,
            crop_rows,
            norm,
            invert=flip,
        )
        train_items = items
    else:
        tr, va = split_validation(len(items), validation_split, seed)
        train_items, val_items = [items[i] for i in tr], [items[i] for i in va]
    n_ch = items[0].image.shape[-1]
    if base:
        if n_ch != base.network.input_channels:
            raise InputError(
                f"{items[0].name}: has {n_ch} channel(s) but the base model {base_model} takes "
                f"{base.network.input_channels}; train a new network (--base-model none)"
            )
    else:
        network = dataclasses.replace(network, input_channels=n_ch)
    if val_items[0].image.shape[-1] != n_ch:
        raise InputError(
            f"{val_items[0].name}: has {val_items[0].image.shape[-1]} channel(s) but the training images have {n_ch}"
        )
    for it in train_items + val_items:
        if min(it.image.shape[:2]) < tile:
            raise InputError(
                f"{it.name}: size {it.image.shape[1]}x{it.image.shape[0]} is smaller than the "
                f"training tile {tile} (use a smaller tile)"
            )
    if all(it.labels.max() == 0 for it in train_items):
        raise InputError(f"{train_items[0].name}: all training masks are empty; nothing to learn")

    train_px = sum(it.image.shape[0] * it.image.shape[1] for it in train_items)
    val_px = sum(it.image.shape[0] * it.image.shape[1] for it in val_items)
    if steps_per_epoch is None:
        steps_per_epoch = int(np.clip(round(2 * train_px / (batch_size * tile * tile)), 10, 200))
    if validation_steps is None:
        validation_steps = int(np.clip(round(val_px / (batch_size * tile * tile)), 2, 50))
    tuning = base is not None
    head_kinds = [h.kind for h in network.heads]
    epochs = epochs or (20 if tuning else 50)
    if select is None:
        select = "val_score" if tuning and head_kinds[0] == "foreground" and mask_kind != "classes" else "val_loss"
    config = TrainConfig(
        network=network,
        tile=tile,
        batch_size=batch_size,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        validation_steps=validation_steps,
        learning_rate=learning_rate or (5e-4 if tuning else 1e-3),
        lr_step_epochs=lr_step_epochs or max(1, epochs // 3),
        lr_step_factor=0.5,
        schedule=schedule or ("cosine" if tuning else "step"),
        freeze_epochs=(-1 if tuning else 0) if freeze_epochs is None else freeze_epochs,
        select=select,
        dice=(tuning if dice is None else dice),
        separation_weight=(10.0 if tuning else 0.0) if separation_weight is None else float(separation_weight),
        class_balance=True,
        patience=(0 if minutes is not None else 15) if patience is None else patience,
        select_from=(0.5 if minutes is not None else 0.0) if select_from is None else float(select_from),
        ema=float(ema),
        seed=seed,
        jit_compile=jit_compile,
        loader_processes=loader_processes,
        augmentation=augmentation or Augmentation(),
    )
    config.check()
    infer_tile = max(512, tile) // network.multiple_of * network.multiple_of
    overlap = min(max(16, 2 * network.multiple_of), infer_tile // 4)
    seg_minutes, reserve_seconds = None, 0.0
    if minutes is not None:
        if not minutes > 0:
            raise InputError(f"--minutes {minutes}: the time budget must be positive")
        # a minute for the bundle; the post-processing choice is reserved by fit (RESERVE_SCORES)
        share = 0.8 if keep_masks is not None else 1.0
        seg_minutes = minutes * share - 1.0
        score_px = val_px * (infer_tile / (infer_tile - 2 * overlap)) ** 2
        need, score_min = _estimate_minutes(network, config, n_ch, score_px)
        # two epochs (with their scores, when the best epoch is chosen by them), and the choice after training
        least = 2 * (need + (score_min if config.select == "val_score" else 0.0)) + RESERVE_SCORES * score_min
        if seg_minutes < least:
            raise InputError(
                f"--minutes {minutes:g} is too short: one epoch of {steps_per_epoch} batches of "
                f"{batch_size} tiles {tile}x{tile} takes about {need:.1f} min here and the choice after "
                f"training about {RESERVE_SCORES * score_min:.1f} min; give at least "
                f"{math.ceil((least + 1) / share)} min, or fewer --steps"
            )
        if config.select != "val_score":
            # no scores during training (the best epoch by the validation loss): the choice is
            # reserved from this estimate
            reserve_seconds = RESERVE_SCORES * score_min * 60

    # 2. train (checkpointed; resumable)
    workdir = Path(workdir) if workdir else out.with_name(out.name + ".work")
    seg_dir = workdir / "segmentation"
    if overwrite and (out / "bundle.json").exists():
        resume = False  # the run in workdir finished (its bundle exists): a new run replaces it
    settings = {
        "config": config.to_dict(),
        "minutes": minutes,
        "images": [it.name for it in train_items],
        "validation": [it.name for it in val_items],
        "base_model": str(base.path) if base else None,
    }
    _workdir_config(seg_dir, settings, resume)
    callbacks = [_progress_callback(progress, epochs, seg_dir / "plan.json")] if callable(progress) else []
    if progress is True:
        callbacks.append(_EtaCallback(seg_dir / "plan.json", "segmentation"))
    size_px = particle_size_px([it.labels for it in train_items])
    min_areas = min_area_choices(size_px)
    min_area = min_areas[0]
    score = None
    if config.select == "val_score":
        start_post = {**(base.postprocess if base else {}), "min_area": min_area}
        score = epoch_score(val_items, network, start_post, infer_tile, overlap)
    model, log = fit(
        [it.image for it in train_items],
        [it.labels for it in train_items],
        [it.image for it in val_items],
        [it.labels for it in val_items],
        config,
        seg_dir,
        resume=resume,
        verbose=1 if progress is True else 0,
        train_classes=[it.classes for it in train_items] if mask_kind == "classes" else None,
        val_classes=[it.classes for it in val_items] if mask_kind == "classes" else None,
        callbacks=callbacks,
        initial_weights=base.model.get_weights() if base else None,
        score=score,
        minutes=seg_minutes,
        reserve_scores=RESERVE_SCORES if score is not None else 0.0,
        reserve_seconds=reserve_seconds,
    )

    # 3. defaults of the post-processing and validation metrics
    post, scores, probs = choose_postprocess(
        keras_predictor(model),
        [it.image for it in val_items],
        [it.labels for it in val_items],
        head_kinds,
        infer_tile,
        overlap,
        network.multiple_of,
        min_area=min_area,
        min_areas=min_areas,
    )
    if mask_kind == "classes":
        k = head_kinds.index("classes")
        off = sum(h.channels for h in network.heads[:k])
        pred_c = [p[..., off : off + len(classes)].argmax(-1) for p in probs]
        scores["class_accuracy"] = round(
            float(np.mean([(pc == it.classes).mean() for pc, it in zip(pred_c, val_items)])), 4
        )
    scores.update(
        {
            "validation_images": len(val_items),
            "final_loss": log[-1].get("loss") if log else None,
            "final_val_loss": log[-1].get("val_loss") if log else None,
            "best_val_loss": min((r["val_loss"] for r in log if "val_loss" in r), default=None),
            "best_val_score": max((r["val_score"] for r in log if "val_score" in r), default=None),
        }
    )

    # 4. the particle classifier
    classifier = classifier_meta = None
    if keep_masks is not None:
        # a fixed fifth of the budget (not what the segmentation left over), so a resumed run
        # plans the classifier as the uninterrupted one would
        left = None if minutes is None else max(1.0, 0.2 * minutes - 0.5)
        classifier, classifier_meta = train_classifier(
            train_items,
            val_items,
            workdir / "classifier",
            network=classifier_network,
            tile=tile,
            batch_size=batch_size,
            epochs=classifier_epochs or epochs,
            steps_per_epoch=steps_per_epoch,
            validation_steps=validation_steps,
            learning_rate=classifier_learning_rate or learning_rate or 1e-3,
            seed=seed,
            resume=resume,
            progress=progress,
            normalization=norm,
            minutes=left,
            jit_compile=jit_compile,
        )
        # the classifier's threshold judged by what it exists for: the sizes of the particles it
        # keeps on the validation images against the expert's keep masks (every threshold of
        # choose_min_score's grid, 0 = every particle kept; the balanced-accuracy threshold is
        # recorded beside it)
        chosen, table = choose_min_score(
            classifier,
            network,
            probs,
            val_items,
            post,
            infer_tile,
            NetworkConfig.from_dict(classifier_meta["network"]).multiple_of,
        )
        classifier_meta.update(
            threshold_balanced_accuracy=classifier_meta["threshold"],
            threshold=chosen,
            threshold_chosen_by=MIN_SCORE_RULE,
            size_distribution=table,
        )

    # 5. the bundle
    cals = {(it.calibration.pixel_size, it.calibration.unit) for it in items if it.calibration is not None}
    if pixel_size is None and len(cals) == 1:
        ps, un = cals.pop()
        if un != "px":
            pixel_size, unit = ps, un
    minutes_run = (time.time() - t0) / 60
    kind_text = {"binary": "binary masks", "labels": "label images", "classes": "class-label images"}.get(
        mask_kind, "masks (binary or labels)"
    )
    data_text = (
        f"{len(train_items)} training and {len(val_items)} validation images "
        f"({train_px / 1e6:.2f} and {val_px / 1e6:.2f} Mpx) with {kind_text}, "
        f"{sum(int(it.labels.max() > 0 and len(np.unique(it.labels)) - 1) for it in train_items)} annotated particles "
        f"in the training images" + (f"; {description}" if description else "")
    )
    meta = make_metadata(
        name or out.name,
        network,
        description=description or f"trained on {len(items)} annotated images",
        channels=list(channel_names) if channel_names else (base.metadata["input"]["channels"] if base else None),
        normalization=norm,
        tile=infer_tile,
        overlap=overlap,
        pixel_size=pixel_size,
        unit=unit or "px",
        particle_size_px=round(size_px, 2) if size_px else None,
        classes=classes,
        polarity=net_polarity,
        postprocess={**(base.postprocess if base else {}), **post},
        training={
            "data": data_text,
            "images": [it.name for it in train_items],
            "validation_images": [it.name for it in val_items],
            "mask_kind": mask_kind,
            "crop_rows": crop_rows,
            "config": config.to_dict(),
            "image_polarity": polarity,
            "inverted": flip,
            "base_model": str(base.path) if base else None,
            "epochs_run": len(log),
            "minutes": round(minutes_run, 1),
            "workdir": str(workdir),
            "budget_minutes": minutes,
            "keras_backend": keras.backend.backend(),
        },
        metrics={"validation": scores},
    )
    if classifier_meta:
        meta["classifier"] = classifier_meta
    extra = {f"training/{f}": seg_dir / f for f in ("log.csv", "loss.png") if (seg_dir / f).exists()}
    bundle = save_bundle(
        out, model, meta, classifier=classifier, overwrite=overwrite, zip_copy=False, extra_files=extra
    )
    if export:
        bundle = export_bundle(bundle, export, overwrite=True)
    if zip_copy:
        zip_bundle(out, out.with_suffix(".zip"), overwrite=overwrite)
    return bundle
