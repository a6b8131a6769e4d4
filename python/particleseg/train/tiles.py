"""Sampling random training tiles into batches (a ``keras.utils.PyDataset``)."""

from __future__ import annotations

import numpy as np

#: threads that cut and augment the batches while the network trains. More than one makes Keras
#: feed the batches through its own queue, with tf.data's autotuning off (see
#: :func:`make_tile_sequence`)
WORKERS = 2


def area_weights(images) -> np.ndarray:
    """Return the probability of drawing a tile from each image: its share of the total area."""
    areas = np.array([im.shape[0] * im.shape[1] for im in images], float)
    return areas / areas.sum()


def tile_batch(images, targets, tile, batch_size, augment, rng: np.random.Generator, p=None):
    """Cut ``batch_size`` random tiles from ``images`` and ``targets`` (augmented when given).

    Tiles are drawn from image ``i`` with probability ``p[i]`` (default :func:`area_weights`),
    at uniform positions, all from ``rng``. With the augmentation's ``zoom`` a tile is cut from
    a larger or smaller square (at most the image's shorter side) and resampled to ``tile``
    pixels, image and target alike (linear interpolation, as the elastic deformation does; the
    distance target is relative to each particle's size, so it stays right). Returns the images
    and the targets as float32 arrays.
    """
    p = area_weights(images) if p is None else p
    xs, ys = [], []
    for _ in range(batch_size):
        i = rng.choice(len(images), p=p)
        im, tg = images[i], targets[i]
        side = tile if augment is None else min(augment.cut_side(tile, rng), im.shape[0], im.shape[1])
        y0 = int(rng.integers(0, im.shape[0] - side + 1))
        x0 = int(rng.integers(0, im.shape[1] - side + 1))
        x, y = im[y0 : y0 + side, x0 : x0 + side], tg[y0 : y0 + side, x0 : x0 + side]
        if side != tile:
            x, y = _resized(x, tile), _resized(y, tile)
        if augment is not None:
            x, y = augment(x, y, rng)
        xs.append(x)
        ys.append(y)
    return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32)


def _resized(a: np.ndarray, side: int) -> np.ndarray:
    """Resample the square ``a`` (with or without channels) to ``side`` pixels a side, linearly."""
    from skimage.transform import resize

    shape = (side, side) + a.shape[2:]
    return resize(a, shape, order=1, mode="edge", anti_aliasing=False, preserve_range=True).astype(np.float32)


def make_tile_sequence(images, targets, tile, batch_size, steps, augment, seed, shuffle=True, processes=0):
    """Make an endless ``keras.utils.PyDataset`` of random tiles from large images.

    Give ``model.fit`` its ``steps_per_epoch`` (``validation_steps``) = ``steps``. Batch ``i``
    of the stream is batch ``b = i % steps`` of the epoch numbered ``n = epoch + 1 + i // steps``
    (counted from 1, as Keras prints them), where ``epoch`` is the attribute set before a fit:
    the epochs already done, for a resumed run. Its tiles come from the seed ``(seed, n, b)``
    alone (:func:`tile_batch`): a run is reproducible, a resumed run sees the same batches, and
    the worker threads cannot change them. These are the batches the finite sequence before
    2026-12-03 drew (Keras advanced its epoch counter once before the first epoch). With
    ``shuffle=False`` (validation) the tiles are the same every epoch and not augmented.

    The stream is endless so that Keras keeps one iterator over it for a whole fit. With a
    finite one it makes a new iterator at each epoch's end, and the old one's tf.data threads
    were found to hold up the next epoch's first batch by 30 s now and then (2 CPU cores,
    Keras 3.15, TensorFlow: a 60-minute fine-tune lost half a minute in 12 of its 49 epochs
    that way), and the finite sequence read an epoch counter that Keras moves on only after it
    has made the next iterator. :data:`WORKERS` threads cut the batches through Keras' own
    queue, which turns tf.data's autotuning off.

    ``processes`` > 0 cuts the batches in that many worker processes instead (Keras'
    ``use_multiprocessing``, forked), for a GPU that trains faster than two threads can cut
    tiles; the batches are the same, since each one depends on its seed alone.
    """
    import keras  # keras: only to train (lazy, docs/architecture.md)

    class TileSequence(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=processes or WORKERS, use_multiprocessing=processes > 0)
            self.epoch = 0
            self.p = area_weights(images)  # once, not per batch

        @property
        def num_batches(self):
            return None  # endless

        def __getitem__(self, i):
            e, b = divmod(int(i), steps)
            rng = np.random.default_rng([seed, self.epoch + 1 + e if shuffle else 0, b])
            return tile_batch(images, targets, tile, batch_size, augment if shuffle else None, rng, self.p)

    return TileSequence()
