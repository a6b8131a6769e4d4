"""Optimisation steps for the GANs of the from-scratch workflow, on every Keras backend.

A GAN update needs gradients of a loss with respect to *some* of the variables (the critic's,
or the generators'), and WGAN-GP also the gradient of the critic's output with respect to its
*input* inside the loss (a second-order term). Keras 3 has no backend-independent gradient
function, so this module holds the only backend-specific code of the workflow, in three small
branches:

* TensorFlow: ``tf.GradientTape`` (nested for the input gradient), the step compiled with
  ``tf.function`` (XLA optional), the optimiser applied statefully;
* PyTorch: ``torch.autograd.grad`` (``create_graph=True`` for the input gradient), eager;
* JAX: ``jax.value_and_grad`` of a pure function built on ``Model.stateless_call`` and
  ``Optimizer.stateless_apply``, compiled with ``jax.jit``; the values live in a
  :class:`Step`-shared state and are written back to the Keras variables by :func:`sync`.

Loss functions are written once, with ``keras.ops`` only, in terms of an ``apply(name, x)``
function that runs one of the named models (see :class:`Step`) and of
:func:`input_gradient`. Random numbers (latent vectors, interpolation weights, crops) are drawn
with NumPy outside the step and passed in, so a run is reproducible and resumes exactly.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np


def backend() -> str:
    import keras

    return keras.backend.backend()


class LinearDecay:
    """Factory of a Keras learning-rate schedule: constant, then linear decay to 0.

    Returns an instance of a ``keras.optimizers.schedules.LearningRateSchedule`` subclass
    (made on demand so that importing this module does not import Keras).
    """

    def __new__(cls, rate: float, total_steps: int, decay_start: int):
        import keras
        from keras import ops

        class _LinearDecay(keras.optimizers.schedules.LearningRateSchedule):
            def __init__(self, rate, total_steps, decay_start):
                self.rate, self.total_steps, self.decay_start = float(rate), int(total_steps), int(decay_start)

            def __call__(self, step):
                step = ops.cast(step, "float32")
                span = max(1, self.total_steps - self.decay_start)
                frac = ops.clip((step - self.decay_start) / span, 0.0, 1.0)
                return self.rate * (1.0 - frac)

            def get_config(self):
                return {"rate": self.rate, "total_steps": self.total_steps, "decay_start": self.decay_start}

        return _LinearDecay(rate, total_steps, decay_start)


def input_gradient(f: Callable, x):
    """Gradient of ``sum(f(x))`` with respect to the input ``x``.

    Differentiable itself (for the WGAN-GP gradient penalty inside a loss).
    """
    b = backend()
    if b == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)
            y = f(x)
        return tape.gradient(y, x)
    if b == "torch":
        import torch

        x = x.detach().requires_grad_(True) if not x.requires_grad else x
        y = f(x)
        return torch.autograd.grad(y.sum(), x, create_graph=True)[0]
    if b == "jax":
        import jax
        import jax.numpy as jnp

        return jax.grad(lambda v: jnp.sum(f(v)))(x)
    raise NotImplementedError(f"unsupported Keras backend {b!r}")


class SharedState:
    """Variable values of several models and optimisers, for the JAX backend.

    On JAX, steps are pure functions. Other backends keep the values in the Keras variables
    themselves.
    """

    def __init__(self, models: dict):
        self.models = models
        self.trainable = {n: [v.value for v in m.trainable_variables] for n, m in models.items()}
        self.non_trainable = {n: [v.value for v in m.non_trainable_variables] for n, m in models.items()}
        self.optimizers: dict[int, tuple] = {}

    def sync(self) -> None:
        """Write the current values back into the Keras variables."""
        for n, m in self.models.items():
            for v, val in zip(m.trainable_variables, self.trainable[n]):
                v.assign(val)
            for v, val in zip(m.non_trainable_variables, self.non_trainable[n]):
                v.assign(val)
        for opt, values in self.optimizers.values():
            for v, val in zip(opt.variables, values):
                v.assign(val)


class Step:
    """One optimisation step of ``loss_fn`` over the trainable variables of the models ``train``.

    Parameters
    ----------
    models : dict name -> keras.Model
        Every model the loss uses (shared by all steps of a GAN).
    train : list of str
        Names of the models whose trainable variables this step updates.
    optimizer : keras.optimizers.Optimizer
    loss_fn : callable
        ``loss_fn(apply, batch) -> (loss, metrics[, outputs])`` with ``apply(name, x,
        training=True)`` running a model, ``batch`` a dict of tensors, ``metrics`` a dict of
        scalars and ``outputs`` an optional dict of tensors (kept as NumPy arrays in
        :attr:`outputs` after each call, e.g. generated images for an image pool).
    jit : bool
        Compile the step (XLA with TensorFlow, ``jax.jit`` with JAX; ignored with PyTorch).
    state : SharedState, optional
        With JAX: the variable values shared by all steps of a GAN (one is made for a single
        step if not given; call its ``sync()`` to see the values in the Keras variables).
    """

    def __init__(
        self,
        models: dict,
        train: list[str],
        optimizer,
        loss_fn: Callable,
        jit: bool = True,
        state: SharedState | None = None,
    ):
        self.models, self.train, self.optimizer = models, list(train), optimizer
        self.loss_fn = _with_outputs(loss_fn)
        self.outputs: dict[str, np.ndarray] = {}
        self.variables = [v for n in self.train for v in models[n].trainable_variables]
        optimizer.build(self.variables)
        self.backend = backend()
        if self.backend == "tensorflow":
            self._fn = self._tf_step(jit)
        elif self.backend == "torch":
            self._fn = self._torch_step
        elif self.backend == "jax":
            self.state = state if state is not None else SharedState(models)
            self.state.optimizers[id(optimizer)] = (optimizer, [v.value for v in optimizer.variables])
            self._fn = self._jax_step(jit)
        else:
            raise NotImplementedError(f"unsupported Keras backend {self.backend!r}")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        from keras import ops

        metrics, outputs = self._fn({k: ops.convert_to_tensor(np.asarray(v, np.float32)) for k, v in batch.items()})
        self.outputs = {k: ops.convert_to_numpy(v) for k, v in outputs.items()}
        return {k: float(ops.convert_to_numpy(v)) for k, v in metrics.items()}

    # -- TensorFlow ---------------------------------------------------------------------------
    def _tf_step(self, jit):
        import tensorflow as tf

        models, variables, optimizer, loss_fn = self.models, self.variables, self.optimizer, self.loss_fn

        def apply(name, x, training=True):
            return models[name](x, training=training)

        @tf.function(jit_compile=bool(jit), reduce_retracing=True)
        def step(batch):
            with tf.GradientTape() as tape:
                loss, metrics, outputs = loss_fn(apply, batch)
            grads = tape.gradient(loss, variables)
            optimizer.apply(grads, variables)
            return metrics, outputs

        return step

    # -- PyTorch ------------------------------------------------------------------------------
    def _torch_step(self, batch):
        import torch

        models = self.models

        def apply(name, x, training=True):
            return models[name](x, training=training)

        loss, metrics, outputs = self.loss_fn(apply, batch)
        grads = torch.autograd.grad(loss, [v.value for v in self.variables])
        with torch.no_grad():
            self.optimizer.apply(list(grads), self.variables)
        return {k: v.detach() for k, v in metrics.items()}, {k: v.detach() for k, v in outputs.items()}

    # -- JAX ----------------------------------------------------------------------------------
    def _jax_step(self, jit):
        import jax

        models, train, optimizer, loss_fn = self.models, self.train, self.optimizer, self.loss_fn
        sizes = [len(models[n].trainable_variables) for n in train]

        def pure(trainable, non_trainable, opt_values, batch):
            def loss_of(train_values):
                values = dict(trainable)
                values.update(train_values)
                updated = {}

                def apply(name, x, training=True):
                    out, nt = models[name].stateless_call(values[name], non_trainable[name], x, training=training)
                    if training:
                        # every model run in training mode updates its state (batch-norm
                        # statistics), the ones this step does not train too, as on the other
                        # backends (the generator run by the critic's step)
                        updated[name] = nt
                    return out

                loss, metrics, outputs = loss_fn(apply, batch)
                return loss, (metrics, outputs, updated)

            (loss, (metrics, outputs, updated)), grads = jax.value_and_grad(loss_of, has_aux=True)(
                {n: trainable[n] for n in train}
            )
            flat_grads = [g for n in train for g in grads[n]]
            flat_vars = [v for n in train for v in trainable[n]]
            new_vars, new_opt = optimizer.stateless_apply(opt_values, flat_grads, flat_vars)
            new_trainable, i = {}, 0
            for n, k in zip(train, sizes):
                new_trainable[n] = list(new_vars[i : i + k])
                i += k
            return new_trainable, updated, new_opt, metrics, outputs

        fn = jax.jit(pure) if jit else pure
        state = self.state

        def step(batch):
            opt, opt_values = state.optimizers[id(optimizer)]
            new_trainable, updated, new_opt, metrics, outputs = fn(
                state.trainable, state.non_trainable, opt_values, batch
            )
            state.trainable.update(new_trainable)
            state.non_trainable.update(updated)
            state.optimizers[id(optimizer)] = (opt, list(new_opt))
            return metrics, outputs

        return step


def _with_outputs(loss_fn):
    def wrapped(apply, batch):
        out = loss_fn(apply, batch)
        return out if len(out) == 3 else (out[0], out[1], {})

    return wrapped


# --------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(
    path: str | os.PathLike, models: dict, optimizers: dict, extra: dict | None = None, state: SharedState | None = None
) -> None:
    """Save the weights of ``models``, variables of ``optimizers`` and ``extra`` arrays in one ``.npz``.

    Written atomically (temporary file, then rename).
    """
    if state is not None:
        state.sync()
    arrays = {}
    for name, m in models.items():
        for i, v in enumerate(m.weights):
            arrays[f"model/{name}/{i}"] = np.asarray(v.numpy() if hasattr(v, "numpy") else v)
    for name, opt in optimizers.items():
        for i, v in enumerate(opt.variables):
            arrays[f"opt/{name}/{i}"] = np.asarray(v.numpy() if hasattr(v, "numpy") else v)
    for k, v in (extra or {}).items():
        arrays[f"extra/{k}"] = np.asarray(v)
    path = Path(path)
    tmp = path.with_name(".tmp-" + path.name)
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, models: dict, optimizers: dict, state: SharedState | None = None) -> dict:
    """Restore what :func:`save_checkpoint` wrote (optimisers must be built); returns ``extra``."""
    data = np.load(path)
    for name, m in models.items():
        for i, v in enumerate(m.weights):
            v.assign(data[f"model/{name}/{i}"])
    for name, opt in optimizers.items():
        for i, v in enumerate(opt.variables):
            key = f"opt/{name}/{i}"
            if key in data.files and tuple(v.shape) == data[key].shape:
                v.assign(data[key])
    if state is not None:
        fresh = SharedState(models)
        state.trainable, state.non_trainable = fresh.trainable, fresh.non_trainable
        for key, (opt, _) in list(state.optimizers.items()):
            state.optimizers[key] = (opt, [v.value for v in opt.variables])
    return {k[len("extra/") :]: data[k] for k in data.files if k.startswith("extra/")}


# --------------------------------------------------------------------------------------------
# resumable GAN training: checkpoint.npz and log.csv in the stage's work folder

CHECKPOINT, LOG = "checkpoint.npz", "log.csv"


def resume(workdir: Path, models: dict, optimizers: dict, state=None) -> int:
    """Restore the last checkpoint of ``workdir`` and return its step.

    Log rows after the checkpoint are dropped; with no checkpoint, return 0 (and start a fresh
    log).
    """
    ckpt, log_path = workdir / CHECKPOINT, workdir / LOG
    if ckpt.exists():
        start = int(load_checkpoint(ckpt, models, optimizers, state)["step"])
        _truncate_log(log_path, start)
        return start
    if log_path.exists():
        log_path.unlink()
    return 0


def checkpoint(workdir: Path, models: dict, optimizers: dict, step: int, state, rows: list[dict]) -> None:
    """Save the models and optimisers at ``step`` and append the log rows since the last one."""
    save_checkpoint(workdir / CHECKPOINT, models, optimizers, {"step": step}, state)
    _append_log(workdir / LOG, rows)


def save_model(model, path: Path) -> None:
    """Save a Keras model atomically (temporary file, then rename)."""
    tmp = path.with_name(".tmp-" + path.name)
    model.save(tmp)
    os.replace(tmp, path)


def _append_log(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        if new:
            w.writeheader()
        w.writerows(rows)


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows after ``step`` (written after the last checkpoint of an interrupted run)."""
    if not path.exists():
        return
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= step]
    path.unlink()
    _append_log(path, rows)
