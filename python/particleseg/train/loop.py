"""The package's one fit loop: schedules, warm-up, time budget, checkpoints and resumption."""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import functools
import json
import multiprocessing
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import InputError, ParticlesegWarning
from ..io import write_atomic
from ..models.architectures import Head, NetworkConfig, build_network
from ..workers import map_in_processes
from .augment import Augmentation
from .losses import make_loss
from .targets import make_targets, separation_weights
from .tiles import make_tile_sequence

# Keras (to train) and matplotlib (the loss plot) are imported inside the functions that use them,
# so that importing particleseg.train loads neither (lazy imports, docs/architecture.md).


@dataclass
class TrainConfig:
    """Settings of a training run (stored in the bundle's metadata)."""

    network: NetworkConfig = field(default_factory=lambda: NetworkConfig(heads=(Head("foreground"), Head("distance"))))
    tile: int = 256
    batch_size: int = 8
    epochs: int = 50
    steps_per_epoch: int = 100
    validation_steps: int = 20
    learning_rate: float = 1e-3
    lr_step_epochs: int = 20  # step decay: multiply by lr_step_factor every lr_step_epochs
    lr_step_factor: float = 0.5
    schedule: str = "step"  # "step" (lr_step_*) or "cosine" (from learning_rate down to min_lr_factor x it)
    min_lr_factor: float = 0.01
    freeze_epochs: int = 0  # first epochs with the encoder frozen (fine-tuning warm-up)
    select: str = "val_loss"  # best epoch by "val_loss" (lowest) or "val_score" (highest, from a score function)
    dice: bool = False
    separation_weight: float = 0.0  # w0 of the U-Net border weights (separation_weights); 0: off
    class_balance: bool = True
    patience: int = 15  # early stopping on the selection metric; 0 disables
    select_from: float = 0.0  # the best epoch is chosen among the epochs after this fraction of the plan
    # momentum per batch of an exponential moving average of the weights, which is validated,
    # chosen and kept in place of the weights being trained (weight_average); 0: off
    ema: float = 0.0
    seed: int = 0
    jit_compile: bool | None = None  # XLA; None lets Keras decide (off on a CPU; True is slower for the default UNet)
    # worker processes that make the targets and cut the batches (0: two threads); the batches do
    # not depend on it (each is seeded by (seed, epoch, batch)), only the speed: for a GPU
    loader_processes: int = 0
    augmentation: Augmentation = field(default_factory=Augmentation)

    def check(self) -> None:
        """Refuse settings the loop cannot run, with one line naming the option (before any work).

        Raises
        ------
        InputError
            An unknown schedule or selection metric, ``select_from`` outside [0, 1), a
            negative ``separation_weight`` or ``loader_processes``, or worker processes on a
            system that cannot fork them.
        """
        learning_rate_schedule(self)
        if self.select not in ("val_score", "val_loss"):
            raise InputError(f"{self.select}: unknown selection metric; choose val_score or val_loss")
        if not 0 <= self.select_from < 1:
            raise InputError(f"--select-from {self.select_from:g}: must be at least 0 and below 1")
        if not 0 <= self.ema < 1:
            raise InputError(f"--ema {self.ema:g}: the momentum must be at least 0 (off) and below 1")
        if not self.separation_weight >= 0:
            raise InputError(f"--separation-weight {self.separation_weight:g}: must be 0 (off) or positive")
        if self.loader_processes < 0:
            raise InputError(f"--loader-processes {self.loader_processes}: must be 0 (two threads) or positive")
        if self.loader_processes and "fork" not in multiprocessing.get_all_start_methods():
            # the workers inherit the training images by fork (train.tiles.SharedMemoryBatches)
            raise InputError(f"--loader-processes {self.loader_processes}: needs a system that forks (Linux, macOS)")

    def to_dict(self) -> dict:
        """Return the settings as a JSON-ready dict (the network as :meth:`NetworkConfig.to_dict`)."""
        d = dataclasses.asdict(self)
        d["network"] = self.network.to_dict()
        return d


def step_decay(config: TrainConfig) -> Callable[[int], float]:
    """Step decay: ``learning_rate``, multiplied by ``lr_step_factor`` every ``lr_step_epochs`` epochs."""
    return lambda epoch: config.learning_rate * config.lr_step_factor ** (epoch // max(1, config.lr_step_epochs))


def cosine_decay(config: TrainConfig) -> Callable[[int], float]:
    """Cosine annealing of the learning rate per epoch [1]_.

    From ``learning_rate`` (first epoch) to ``min_lr_factor * learning_rate`` (last epoch).

    References
    ----------
    .. [1] I. Loshchilov, F. Hutter, "SGDR: stochastic gradient descent with warm restarts",
       ICLR 2017.
    """
    lo = config.learning_rate * config.min_lr_factor

    def lr(epoch: int) -> float:
        t = min(1.0, epoch / max(1, config.epochs - 1))
        return float(lo + 0.5 * (config.learning_rate - lo) * (1 + np.cos(np.pi * t)))

    return lr


def learning_rate_schedule(config: TrainConfig) -> Callable[[int], float]:
    """Return the learning rate of each epoch (a function of the epoch), as ``config.schedule`` says."""
    if config.schedule == "cosine":
        return cosine_decay(config)
    if config.schedule == "step":
        return step_decay(config)
    raise InputError(f"{config.schedule}: unknown learning-rate schedule; choose step or cosine")


#: name prefixes of the encoder layers of the architectures (frozen during a fine-tuning warm-up)
ENCODER_PREFIXES = ("enc", "mres_enc", "respath", "bottom", "mres_bottom")


def set_encoder_trainable(model, trainable: bool) -> int:
    """Freeze (or unfreeze) the encoder's layers; returns how many layers changed.

    Frozen batch normalisation layers run in inference mode (Keras 3), so a warm-up with the
    encoder frozen adapts the decoder and heads to new data without disturbing the features
    and statistics the encoder learnt.
    """
    n = 0
    for layer in model.layers:
        if layer.name.startswith(ENCODER_PREFIXES) and layer.weights and layer.trainable != trainable:
            layer.trainable = trainable
            n += 1
    return n


def jit_setting(requested: bool | None, backend: str | None = None) -> bool | str:
    """Keras' ``jit_compile`` for a requested setting on the Keras backend (the current one by default).

    ``None`` lets Keras decide (``"auto"``). On PyTorch compilation stays off even when asked for
    (with a :class:`~particleseg.errors.ParticlesegWarning` saying so):
    Keras would run the step through ``torch.compile``, whose first step of the default UNet took
    114 s on 2 CPU cores and recompiled layer by layer past torch's limit (Keras 3.15.1, torch
    2.13, 2026-12-04; on a lent GPU the same step was still compiling after 100 s), where the
    eager step takes a few seconds. XLA on TensorFlow and ``jax.jit`` are used as asked.

    Examples
    --------
    >>> jit_setting(None, "tensorflow"), jit_setting(True, "jax"), jit_setting(False, "torch")
    ('auto', True, False)
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as said:
    ...     warnings.simplefilter("always")
    ...     jit_setting(True, "torch")
    False
    >>> str(said[0].message).endswith("the steps run eagerly")
    True
    """
    import keras

    if requested is None:
        return "auto"
    if requested and (backend or keras.backend.backend()) == "torch":
        warnings.warn(
            "compiled training steps are not used on the PyTorch backend (torch.compile took minutes per step); "
            "the steps run eagerly",
            ParticlesegWarning,
            stacklevel=2,
        )
        return False
    return requested


#: a run of at most this many training steps runs them eagerly (see :func:`runs_eagerly`)
EAGER_MAX_STEPS = 16


def runs_eagerly(config: TrainConfig, minutes: float | None = None) -> bool:
    """Whether a run executes its training steps eagerly instead of tracing them into a graph.

    Tracing pays for itself only over many steps: on 2 CPU cores (Keras 3 on TensorFlow,
    2026-12-05) tracing the default UNet's training and validation steps took 7-12 s, and an
    eager step was 0.4 s (256-pixel tiles, batch 8: 5.5 s against 5.1 s) to 0.6 s (64-pixel tiles,
    batch 2) slower than a traced one. So a run of at most :data:`EAGER_MAX_STEPS` training steps
    (``epochs * steps_per_epoch``, no time budget, XLA not asked for) runs eagerly. The choice is
    made from the settings alone, so a resumed run makes the same one (eager and traced steps
    differ in the last bits, and a resumed run must equal the uninterrupted one).

    Examples
    --------
    >>> runs_eagerly(TrainConfig(epochs=2, steps_per_epoch=4)), runs_eagerly(TrainConfig())
    (True, False)
    >>> runs_eagerly(TrainConfig(epochs=2, steps_per_epoch=4), minutes=5.0)
    False
    """
    return (
        minutes is None and config.jit_compile is not True and config.epochs * config.steps_per_epoch <= EAGER_MAX_STEPS
    )


def plan_epochs(seconds: float, epoch_seconds: float, minimum: int = 2) -> int:
    """How many epochs of ``epoch_seconds`` fit into ``seconds`` (at least ``minimum``)."""
    return max(minimum, int(seconds // max(epoch_seconds, 1e-9)))


def short_plan_note(planned: int, wanted: int, epoch_seconds: float) -> str | None:
    """Say when a time budget holds fewer epochs than the run is set for; None when it holds enough.

    A budget is planned from this machine's pace, so the same ``--minutes`` holds many epochs
    on fast cores and few on slow ones (the hour-long TiO2 fine-tunes of docs/training.md held
    30 to 57 epochs on one machine's 2 cores and 7 on another's). Fewer than the run's
    ``epochs`` (20 for fine-tuning, 50 for a new network) risks an undertrained network, which
    the user should hear about when the plan is made, not from the scores at the end.

    Examples
    --------
    >>> short_plan_note(30, 20, 110.0) is None
    True
    >>> note = short_plan_note(7, 20, 492.0)
    >>> note[:65]
    'the time budget holds 7 epochs of 8.2 min here, fewer than the 20'
    >>> note.endswith("may come out undertrained; about 107 more minutes would give it 20")
    True
    """
    if planned >= wanted:
        return None
    more = int(np.ceil((wanted - planned) * epoch_seconds / 60))
    return (
        f"the time budget holds {planned} epochs of {epoch_seconds / 60:.1f} min here, fewer than the "
        f"{wanted} the run is set for: the network may come out undertrained; about {more} more minutes "
        f"would give it {wanted}"
    )


def fit(
    train_images: Sequence[np.ndarray],
    train_labels: Sequence[np.ndarray],
    val_images: Sequence[np.ndarray],
    val_labels: Sequence[np.ndarray],
    config: TrainConfig,
    workdir: str | os.PathLike,
    resume: bool = True,
    verbose: int = 1,
    train_classes: Sequence[np.ndarray] | None = None,
    val_classes: Sequence[np.ndarray] | None = None,
    callbacks: Sequence[Any] = (),
    initial_weights: list[np.ndarray] | None = None,
    score: Callable[[Any], float] | None = None,
    minutes: float | None = None,
    reserve_scores: float = 0.0,
    reserve_seconds: float = 0.0,
):
    """Train a network on normalised images ``(Y, X, C)`` float32 and instance label images.

    ``train_classes``/``val_classes`` are class-label images for a ``classes`` head (phases),
    ``callbacks`` extra Keras callbacks (progress reports), ``initial_weights`` the weights
    a new run starts from (fine-tuning; a resumed run ignores them).

    ``score(model) -> float`` is evaluated after every epoch and logged as ``val_score``
    (higher is better); with ``config.select == "val_score"`` it chooses the best epoch and
    drives early stopping instead of the validation loss (for example the instance IoU of the
    validation images, which the loss follows only loosely). The first ``config.freeze_epochs``
    epochs train with the encoder frozen (:func:`set_encoder_trainable`; ``-1``: a tenth of
    the epochs, at least one). ``minutes`` plans the number of epochs to fit that budget from
    the measured cost of the first epoch (``config.epochs`` is then ignored); the plan is kept
    in ``plan.json`` so a resumed run follows it. Every second of an epoch counts, the
    ``score`` and the checkpoints included, and ``reserve_scores`` times the duration of one
    ``score`` call is kept out of the budget for the caller's work after training (the
    post-processing chosen on the validation images, for example), and ``reserve_seconds``
    besides (the same work estimated beforehand, when no ``score`` measures it).

    With ``config.ema`` above 0 the weights are averaged as they train
    (:func:`weight_average`): the average is what is validated (loss and ``score``), chosen as
    the best epoch and returned; the weights being trained are scored too
    (``val_score_trained``).

    Writes into ``workdir``: ``checkpoint.keras`` (model and optimiser state after the last
    finished epoch), ``best.keras`` (best epoch), ``ema.npz`` (the average, with ``config.ema``),
    ``log.csv`` (one row per epoch), ``plan.json`` and ``loss.png``. With ``resume``, a run
    whose ``checkpoint.keras`` exists continues after the last finished epoch with the same
    batches it would have seen.

    Returns the trained Keras model (best weights) and the epoch log as a list of dicts.
    The loop itself is :func:`fit_targets`, which takes the targets and the loss ready-made.
    """
    _check_pairs(train_images, train_labels, config.tile)
    _check_pairs(val_images, val_labels, config.tile)
    heads = config.network.heads
    w0 = config.separation_weight

    def targets(labels, classes):
        jobs = list(zip(labels, classes or [None] * len(labels)))
        return list(map_in_processes(functools.partial(_targets, heads=heads, w0=w0), jobs, config.loader_processes))

    train_t, val_t = targets(train_labels, train_classes), targets(val_labels, val_classes)
    fg_frac = float(np.mean([(lab > 0).mean() for lab in train_labels])) if config.class_balance else None
    if fg_frac is not None and fg_frac == 0:
        raise InputError("training masks are all empty: nothing to learn")
    return fit_targets(
        train_images,
        train_t,
        val_images,
        val_t,
        make_loss(heads, fg_frac, config.dice, pixel_weights=bool(w0)),
        config,
        workdir,
        resume=resume,
        verbose=verbose,
        callbacks=callbacks,
        initial_weights=initial_weights,
        score=score,
        minutes=minutes,
        reserve_scores=reserve_scores,
        reserve_seconds=reserve_seconds,
    )


def fit_targets(
    train_images: Sequence[np.ndarray],
    train_targets: Sequence[np.ndarray],
    val_images: Sequence[np.ndarray],
    val_targets: Sequence[np.ndarray],
    loss,
    config: TrainConfig,
    workdir: str | os.PathLike,
    resume: bool = True,
    verbose: int = 1,
    callbacks: Sequence[Any] = (),
    initial_weights: list[np.ndarray] | None = None,
    score: Callable[[Any], float] | None = None,
    minutes: float | None = None,
    val_tile: int | None = None,
    reserve_scores: float = 0.0,
    reserve_seconds: float = 0.0,
):
    """Run the fit loop of every network of the package: :func:`fit` with targets and loss given.

    ``train_targets``/``val_targets`` are the network's target arrays ``(Y, X, channels)``
    (:func:`make_targets`, or a caller's own, such as the phase targets of
    :func:`particleseg.fibsem.train_phases` whose unannotated pixels are all zero) and ``loss``
    the Keras loss (:func:`make_loss`); ``val_tile`` the validation tiles' size (default
    ``config.tile``). Everything else is as in :func:`fit`: the network ``config.network``,
    the schedule, the warm-up, the time budget (its reserves included), the checkpoints
    and the resumption.
    """
    import keras

    config.check()  # before any work
    if config.select == "val_score" and score is None:
        raise InputError("selecting the best epoch by val_score needs a score function")
    score_seconds: list[float] = []  # each call's duration: the plan counts them
    if score is not None:
        score = _timed(score, score_seconds)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    keras.utils.set_random_seed(config.seed)
    eager = runs_eagerly(config, minutes)
    ckpt, best, log_path = workdir / "checkpoint.keras", workdir / "best.keras", workdir / "log.csv"
    state_path, plan_path, ema_path = workdir / "state.json", workdir / "plan.json", workdir / "ema.npz"
    if resume and ckpt.exists() and state_path.exists():
        model = keras.saving.load_model(ckpt, compile=False)
    else:
        model = build_network(config.network)
        if initial_weights is not None:
            model.set_weights(initial_weights)
        for p in (log_path, best, ckpt, state_path, plan_path, ema_path):
            p.unlink(missing_ok=True)
    average = weight_average(config.ema, ema_path, score) if config.ema else None
    if plan_path.exists():
        # (a time budget's plan may grow: the Replan callback ends the run)
        plan = json.loads(plan_path.read_text())
        epochs = max(plan_limit(plan), int(plan["epochs"]))  # (a plan that grew past its first)
        config = dataclasses.replace(config, epochs=epochs, freeze_epochs=plan["freeze_epochs"])
    elif minutes is None:
        config = _resolve_freeze(config)
        _write_json(plan_path, {"epochs": config.epochs, "freeze_epochs": config.freeze_epochs, "minutes": None})

    monitor, mode = ("val_score", "max") if config.select == "val_score" else ("val_loss", "min")
    train_seq = make_tile_sequence(
        train_images,
        train_targets,
        config.tile,
        config.batch_size,
        config.steps_per_epoch,
        config.augmentation,
        config.seed,
        processes=config.loader_processes,
    )
    val_seq = make_tile_sequence(
        val_images,
        val_targets,
        val_tile or config.tile,
        config.batch_size,
        config.validation_steps,
        None,
        config.seed + 1,
        shuffle=False,
    )
    frozen_now = None

    def run(until: int, timer=None) -> None:
        """Train from the finished epochs to ``until``, compiling again when the encoder's state changes."""
        nonlocal frozen_now, config
        start = json.loads(state_path.read_text())["epochs_done"] if state_path.exists() else 0
        if start >= until:
            return
        frozen = start < config.freeze_epochs
        until = min(until, config.freeze_epochs) if frozen else until
        if frozen != frozen_now:
            set_encoder_trainable(model, not frozen)
            model.compile(
                optimizer=keras.optimizers.Adam(learning_rate_schedule(config)(start)),
                loss=loss,
                jit_compile=jit_setting(config.jit_compile),  # (Keras turns it off when eager)
                run_eagerly=eager,
            )
            if start and (workdir / "optimizer.npz").exists():
                _restore_optimizer(model, workdir / "optimizer.npz")
            frozen_now = frozen
        log = _read_log(log_path)
        first = _eligible_from(config, plan_path)
        best_value = _best_logged(log[first:], monitor, mode) if best.exists() else None
        # the average (if any) is swapped in for the validation, the score and the best epoch's
        # checkpoint, and out again before the run's own checkpoint
        cbs = [average[0]] if average else []
        cbs += [] if score is None else [_ScoreCallback(score)]
        planned = json.loads(plan_path.read_text()) if plan_path.exists() else {}
        cbs += [
            keras.callbacks.LearningRateScheduler(
                lambda e: learning_rate_schedule(
                    dataclasses.replace(config, epochs=_planned_epochs(plan_path, config.epochs))
                )(e)
            ),
            keras.callbacks.CSVLogger(str(log_path), append=start > 0),
            _BestCheckpoint(best, monitor, mode, best_value, lambda: _eligible_from(config, plan_path)),
            *([average[1]] if average else []),
            _Checkpoint(ckpt, state_path, workdir / "optimizer.npz"),
            # after the score and the checkpoints, so an epoch's time includes them, and before
            # the progress reports, so they show the new plan
            *([_Replan(plan_path, score_seconds, reserve_scores, reserve_seconds)] if planned.get("minutes") else []),
            *callbacks,
        ]
        if timer is not None:
            cbs.insert(0, timer)
        if config.patience:
            cbs.append(_EarlyStopping(monitor, mode, config.patience, log))
        train_seq.epoch = start
        # (the sequences are endless: batch i of this fit is batch i % steps of the epoch numbered
        # start + 1 + i // steps, train.tiles)
        # shuffle=False: the tiles of batch b of epoch e are already random (seeded by (seed, e, b));
        # Keras' shuffling of the batch order would draw on Python's global random state, which a
        # resumed run cannot restore
        model.fit(
            train_seq,
            steps_per_epoch=config.steps_per_epoch,
            validation_data=val_seq,
            validation_steps=config.validation_steps,
            epochs=until,
            initial_epoch=start,
            callbacks=cbs,
            verbose=verbose,
            shuffle=False,
        )
        if model.stop_training:
            raise _Stopped
        # a time budget's plan may have grown past this fit's last epoch (the Replan callback
        # ends the run when the plan is done)
        config = dataclasses.replace(config, epochs=max(config.epochs, _planned_epochs(plan_path, config.epochs)))
        run(config.epochs)

    try:
        if not plan_path.exists():
            # a time budget: one epoch measures the cost, the plan fills the rest
            t0 = time.time()
            timer = _EpochTimer()
            wanted = config.epochs
            config = dataclasses.replace(config, freeze_epochs=1 if config.freeze_epochs else 0, epochs=1)
            run(1, timer)
            first = time.time() - t0
            scored = score_seconds[-1] if score_seconds else 0.0
            per = timer.epoch_seconds()
            # (no batch timed: the first epoch had finished before an interruption; plan from its wall time)
            full = per * (UNFROZEN_COST if config.freeze_epochs else 1.0) + scored if per else first
            reserved = reserve_scores * scored + reserve_seconds
            epochs = 1 + plan_epochs(minutes * 60 - reserved - first, full, minimum=1)
            config = _resolve_freeze(
                dataclasses.replace(config, epochs=epochs, freeze_epochs=-1 if config.freeze_epochs else 0)
            )
            note = short_plan_note(config.epochs, wanted, full)
            if note:
                warnings.warn(f"{workdir}: {note}", ParticlesegWarning, stacklevel=2)
            _write_json(
                plan_path,
                {
                    "epochs": config.epochs,
                    "planned_epochs": config.epochs,
                    "freeze_epochs": config.freeze_epochs,
                    "minutes": minutes,
                    "first_epoch_seconds": round(first, 1),
                    "epoch_seconds": round(full, 1),
                    "reserved_seconds": round(reserved, 1),
                    "seconds_done": round(first, 1),
                },
            )
        run(config.epochs)
    except _Stopped:
        pass
    log = _read_log(log_path)
    plot_loss(log, workdir / "loss.png")
    if best.exists():
        model = keras.saving.load_model(best, compile=False)
    return model, log


def _targets(job, heads, w0):
    """Make the training targets of one ``(labels, classes)`` pair (a picklable worker function)."""
    lab, c = job
    return make_targets(lab, heads, c, separation_weights(lab, w0) if w0 else None)


#: a full epoch costs about this much more than one with the encoder frozen (measured: UNet
#: depth 4, 16 filters, batch 8 of 256x256 tiles on 2 CPU cores)
UNFROZEN_COST = 1.3


class _Stopped(Exception):
    """Early stopping (or the time budget) ended the run."""


def _planned_epochs(plan_path: Path, default: int) -> int:
    return json.loads(plan_path.read_text()).get("epochs", default) if plan_path.exists() else default


#: the pace of a time-budgeted run is the median duration of this many recent epochs
PACE_EPOCHS = 5

#: a time-budgeted plan may grow past its first plan once this many full epochs (encoder not
#: frozen) have measured the pace
GROW_AFTER = 3


def plan_limit(plan: dict) -> int:
    """Return the plan made after the first epoch: the most epochs a plan may have at first.

    A time budget's plan is shortened when epochs run slower and lengthened again, up to this
    limit, when they run faster, until the pace is measured on full epochs alone; then the
    budget alone bounds it (:func:`_Replan`). Plans without a budget are fixed.
    """
    if not plan.get("minutes"):
        return int(plan["epochs"])
    if "planned_epochs" in plan:
        return int(plan["planned_epochs"])
    if not plan.get("first_epoch_seconds"):
        return int(plan["epochs"])
    # (a plan.json written before the limit was recorded: the same rule that made the plan)
    first = plan["first_epoch_seconds"]
    budget = plan["minutes"] * 60 - plan.get("reserved_seconds", 0.0) - first
    return 1 + plan_epochs(budget, plan.get("epoch_seconds") or first, minimum=1)


def _Replan(  # noqa: N802
    plan_path: Path, score_seconds: Sequence[float] = (), reserve_scores: float = 0.0, reserve_seconds: float = 0.0
):
    """Keep a time budget when the machine slows down, and use it when the machine recovers.

    After each epoch, adds its wall time to ``seconds_done`` in ``plan.json``, keeps
    ``reserve_scores`` times the median of the last :data:`PACE_EPOCHS` ``score_seconds`` (the
    durations of the score calls, the first of which also builds the predictor) and
    ``reserve_seconds`` out of the budget as ``reserved_seconds``, and plans the
    epochs left at the pace of the median of the last :data:`PACE_EPOCHS` epochs: shorter when
    they no longer fit, longer again when more fit; stops when the plan is done. The median
    keeps one slow epoch (a recompilation after the warm-up, a passing job) from cutting the
    plan short for good. Until :data:`GROW_AFTER` full epochs (encoder not frozen) are among
    the recent ones, the plan grows no further than the first plan (:func:`plan_limit`: warm-up
    epochs are cheaper than full ones); then the pace is that of the recent full epochs and
    the plan may grow past the first as far as the budget allows, so a first epoch slowed by
    other work does not cap the run. The cosine schedule follows the plan from the next epoch
    on. (A class made on demand, so keras is imported lazily.)
    """
    import keras

    class Replan(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.time()

        def on_epoch_end(self, epoch, logs=None):
            dt = time.time() - self.t
            plan = json.loads(plan_path.read_text())
            plan["seconds_done"] = round(plan.get("seconds_done", 0.0) + dt, 1)
            recent = [*plan.get("recent_epoch_seconds", []), round(dt, 1)][-PACE_EPOCHS:]
            plan["recent_epoch_seconds"] = recent
            scores = reserve_scores * float(np.median(score_seconds[-PACE_EPOCHS:])) if score_seconds else 0.0
            if scores or reserve_seconds:
                plan["reserved_seconds"] = round(scores + reserve_seconds, 1)
            done = epoch + 1
            full = min(len(recent), done - plan.get("freeze_epochs", 0))  # full epochs among the recent
            grow = full >= GROW_AFTER  # their pace alone: the budget bounds the plan, not the first plan
            pace = max(float(np.median(recent[-full:] if grow else recent)), 1e-9)
            left = plan["minutes"] * 60 - plan.get("reserved_seconds", 0.0) - plan["seconds_done"]
            fit_more = int(max(0.0, left) // pace)
            limit = plan_limit(plan)
            plan["planned_epochs"] = limit
            plan["epochs"] = done + fit_more if grow else max(done, min(limit, done + fit_more))
            plan["shortened"] = plan["epochs"] < limit
            plan["grown"] = plan["epochs"] > limit
            _write_json(plan_path, plan)
            if done >= plan["epochs"]:
                self.model.stop_training = True

    return Replan()


def _resolve_freeze(config: TrainConfig) -> TrainConfig:
    if config.freeze_epochs >= 0:
        return config
    return dataclasses.replace(config, freeze_epochs=min(config.epochs - 1, max(1, round(0.1 * config.epochs))))


def _write_json(path: Path, obj) -> None:
    text = json.dumps(obj, indent=1)
    write_atomic(path, lambda tmp: tmp.write_text(text), overwrite=True)


def _best_logged(log: list[dict], monitor: str, mode: str) -> float | None:
    values = [r[monitor] for r in log if monitor in r]
    if not values:
        return None
    return max(values) if mode == "max" else min(values)


def _eligible_from(config: TrainConfig, plan_path: Path) -> int:
    """Return the first epoch (0-based) the best-epoch choice considers: ``select_from`` of the plan."""
    return int(np.ceil(config.select_from * _planned_epochs(plan_path, config.epochs))) if config.select_from else 0


def _BestCheckpoint(path: Path, monitor: str, mode: str, best_value: float | None, first_epoch):  # noqa: N802
    """Save the model atomically after an epoch whose ``monitor`` beats every earlier eligible one.

    ``first_epoch()`` gives the first eligible epoch (0-based), asked after every epoch because
    a time budget's plan may be shortened on the way; earlier epochs are logged but never chosen.
    """
    import keras

    class BestCheckpoint(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best = best_value

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(monitor)
            if value is None or epoch < first_epoch():
                return
            if self.best is None or (value > self.best if mode == "max" else value < self.best):
                self.best = float(value)
                write_atomic(path, self.model.save, overwrite=True)

    return BestCheckpoint()


def weight_average(momentum: float, path: str | os.PathLike, score: Callable[[Any], float] | None = None):
    """Keep an exponential moving average of a network's weights while it trains [1]_.

    After every training batch each weight's average becomes ``momentum * average + (1 -
    momentum) * weight`` (the average starts from the weights the run starts from). The
    average is what the run validates, scores, chooses and returns; the optimiser goes on
    training the weights themselves. A fine-tune's weights wander from batch to batch about
    the way they are heading, and its validation score with them; their average over the last
    ``1 / (1 - momentum)`` batches is steadier and often better [2]_.

    Parameters
    ----------
    momentum : float
        In (0, 1), per batch: 0.99 averages over about the last 100 batches.
    path : path
        File of the average (``.npz``), written atomically after every epoch and read back
        by a resumed run, so that it resumes with the same average.
    score : callable, optional
        ``score(model)`` of the weights being trained, logged as ``val_score_trained`` at the
        end of every epoch beside the average's ``val_score``, to see what the average gains.

    Returns
    -------
    (callback, callback)
        Keras callbacks: the first updates the average after every batch and swaps it into
        the model for the validation and the epoch's end (put it before the callbacks that
        score or save the best epoch); the second swaps the trained weights back and writes
        ``path`` (put it before the checkpoint of the run).

    References
    ----------
    .. [1] B. T. Polyak, A. B. Juditsky, "Acceleration of stochastic approximation by
       averaging", SIAM J. Control Optim. 30(4), 838-855 (1992).
    .. [2] A. Tarvainen, H. Valpola, "Mean teachers are better role models", NeurIPS 2017.

    Examples
    --------
    >>> from particleseg.train.loop import weight_average
    >>> swap_in, swap_out = weight_average(0.99, "/tmp/ema.npz")  # doctest: +SKIP
    >>> model.fit(data, callbacks=[swap_in, ScoreAndSave(), swap_out, Checkpoint()])  # doctest: +SKIP
    """
    import keras

    path = Path(path)
    m = np.float32(momentum)
    state: dict[str, list[np.ndarray] | None] = {"average": None, "trained": None}
    if path.exists():  # a resumed run (fit_targets removes the file of a new one)
        with np.load(path) as saved:
            state["average"] = [saved[f"arr_{i}"] for i in range(len(saved.files))]

    def swap_in(model):
        if state["trained"] is None:
            state["trained"] = model.get_weights()
            model.set_weights(state["average"])

    def swap_out(model):
        if state["trained"] is not None:
            model.set_weights(state["trained"])
            state["trained"] = None

    class Average(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            if state["average"] is None:
                state["average"] = self.model.get_weights()

        def on_train_batch_end(self, batch, logs=None):
            for a, w in zip(state["average"], self.model.get_weights()):
                a *= m
                a += (1 - m) * w

        def on_test_begin(self, logs=None):
            swap_in(self.model)

        def on_epoch_end(self, epoch, logs=None):
            if score is not None and logs is not None:
                swap_out(self.model)  # (swapped in for the validation)
                logs["val_score_trained"] = float(score(self.model))
            swap_in(self.model)

    class SwapBack(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            swap_out(self.model)
            write_atomic(path, save, overwrite=True)

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # (np.savez adds ".npz" to a name that lacks it)
            np.savez(fh, *state["average"])

    return Average(), SwapBack()


def _ScoreCallback(score):  # noqa: N802 - a class made on demand, so keras is imported lazily
    import keras

    class ScoreCallback(keras.callbacks.Callback):
        """Adds ``val_score`` (``score(model)``) to the epoch's logs, before the loggers see them."""

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs["val_score"] = float(score(self.model))

    return ScoreCallback()


def _timed(fn: Callable, seconds: list[float]) -> Callable:
    """``fn``, appending the duration of each call to ``seconds``."""

    def timed(*args):
        t = time.time()
        try:
            return fn(*args)
        finally:
            seconds.append(time.time() - t)

    return timed


def _EarlyStopping(monitor: str, mode: str, patience: int, log: list[dict]):  # noqa: N802
    """Keras' early stopping, aware of the epochs an interrupted run already logged."""
    import keras

    cb = keras.callbacks.EarlyStopping(monitor=monitor, mode=mode, patience=patience)
    values = [r[monitor] for r in log if monitor in r]
    if values:
        best_i = int(np.argmax(values) if mode == "max" else np.argmin(values))
        cb.on_train_begin()
        cb.best, cb.wait = values[best_i], len(values) - 1 - best_i
        cb.on_train_begin = lambda logs=None: None
    return cb


def _EpochTimer():  # noqa: N802
    import keras

    class EpochTimer(keras.callbacks.Callback):
        """The cost of an epoch without the first batch's compilation.

        The median batch time times the batches, plus the validation time.
        """

        def __init__(self):
            super().__init__()
            self.marks, self.val = [], 0.0

        def on_train_batch_end(self, batch, logs=None):
            self.marks.append(time.time())

        def on_epoch_end(self, epoch, logs=None):
            self.val = time.time() - self.marks[-1] if self.marks else 0.0

        def epoch_seconds(self) -> float:
            steps = np.diff(self.marks)
            per = float(np.median(steps)) if len(steps) else 0.0
            return per * len(self.marks) + self.val

    return EpochTimer()


def _checkpoint_class():
    import keras

    class Checkpoint(keras.callbacks.Callback):
        """Saves the model and the number of finished epochs after every epoch, atomically."""

        def __init__(self, path, state_path, opt_path):
            super().__init__()
            self.path, self.state_path, self.opt_path = Path(path), Path(state_path), Path(opt_path)

        def on_epoch_end(self, epoch, logs=None):
            tmp = self.path.with_name(".tmp-" + self.path.name)
            self.model.save(tmp)
            os.replace(tmp, self.path)
            opt = self.model.optimizer
            tmp_opt = self.opt_path.with_name(".tmp-" + self.opt_path.name)
            with open(tmp_opt, "wb") as fh:
                np.savez(fh, *[np.asarray(v) for v in opt.variables])
            os.replace(tmp_opt, self.opt_path)
            tmp_state = self.state_path.with_name(".tmp-" + self.state_path.name)
            tmp_state.write_text(json.dumps({"epochs_done": epoch + 1}))
            os.replace(tmp_state, self.state_path)

    return Checkpoint


def _Checkpoint(*args):  # noqa: N802 - a class made on demand, so keras is imported lazily
    return _checkpoint_class()(*args)


def _restore_optimizer(model, path):
    """Restore Adam's moments and iteration count saved by the checkpoint callback."""
    opt = model.optimizer
    opt.build(model.trainable_variables)
    saved = np.load(path)
    values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    if len(values) == len(opt.variables):
        for var, val in zip(opt.variables, values):
            if tuple(var.shape) == val.shape:
                var.assign(val)


def _check_pairs(images, labels, tile):
    if len(images) != len(labels):
        raise InputError(f"{len(images)} images but {len(labels)} masks")
    if not images:
        raise InputError("no training images")
    for i, (im, lab) in enumerate(zip(images, labels)):
        if im.shape[:2] != lab.shape[:2]:
            raise InputError(f"image {i}: size {im.shape[:2]} differs from its mask {lab.shape[:2]}")
        if min(im.shape[:2]) < tile:
            raise InputError(f"image {i}: size {im.shape[:2]} is smaller than the training tile {tile}")


def _read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]


def plot_loss(log: list[dict], path: str | os.PathLike) -> None:
    """Loss curves (training and validation against epoch) as a PNG."""
    if not log:
        return
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.4), layout="constrained")
    ep = [r["epoch"] + 1 for r in log]
    ax.plot(ep, [r["loss"] for r in log], label="training")
    if "val_loss" in log[0]:
        ax.plot(ep, [r["val_loss"] for r in log], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    lines = ax.get_lines()
    scores = [
        (k, name)
        for k, name in (("val_score", "validation score"), ("val_score_trained", "... of the trained weights"))
        if k in log[0]
    ]
    if scores:
        right = ax.twinx()
        for (k, name), style in zip(scores, ("-", ":")):
            lines += right.plot(ep, [r[k] for r in log], style, color="tab:green", label=name)
        right.set_ylabel("validation instance score")
    fig.legend(lines, [ln.get_label() for ln in lines], loc="outside lower center", ncols=2, frameon=False)
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"), overwrite=True)
    plt.close(fig)


def _EtaCallback(plan_path: Path, what: str):  # noqa: N802 - a class made on demand, so keras is imported lazily
    """After each epoch, one line: epochs done of the plan, the best score, and the expected end."""
    import keras

    class Eta(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.t0 = None

        def on_epoch_begin(self, epoch, logs=None):
            if self.t0 is None:
                self.t0, self.e0 = time.time(), epoch

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            total = json.loads(plan_path.read_text())["epochs"] if plan_path.exists() else None
            done = epoch + 1
            line = f"{what}: epoch {done}" + (f"/{total}" if total else "")
            line += f", loss {logs.get('loss', float('nan')):.4f}"
            if "val_score" in logs:
                line += f", validation instance score {logs['val_score']:.4f}"
            if total and done > self.e0:
                per = (time.time() - self.t0) / (done - self.e0)
                left = per * (total - done)
                end = _dt.datetime.now() + _dt.timedelta(seconds=left)
                line += f", about {left / 60:.0f} min left (ends {end:%H:%M})"
            print(line, flush=True)

    return Eta()


def _progress_callback(progress, epochs: int, plan_path: Path | None = None):
    """Make a Keras callback that reports ``progress(epochs_done, epochs, logs)`` after each epoch.

    ``epochs`` as planned in ``plan_path`` when a time budget planned them.
    """
    import keras

    class Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            total = epochs
            if plan_path is not None and plan_path.exists():
                total = json.loads(plan_path.read_text()).get("epochs", epochs)
            progress(epoch + 1, total, dict(logs or {}))

    return Report()


def _workdir_config(workdir: Path, settings: dict, resume: bool) -> None:
    """Refuse to resume a run made with other settings; record the settings of a new run."""
    path = workdir / "settings.json"
    text = json.dumps(settings, indent=1, sort_keys=True, default=str)
    if resume and path.exists() and (workdir / "checkpoint.keras").exists():
        old = json.loads(path.read_text())
        if old != json.loads(text):
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != json.loads(text).get(k))
            raise InputError(
                f"{workdir}: holds an unfinished run with other settings ({', '.join(diff)}); "
                "resume with the same settings, or start over (--no-resume / resume=False)"
            )
    workdir.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
