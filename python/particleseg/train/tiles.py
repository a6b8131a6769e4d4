"""Sampling random training tiles into batches (a ``keras.utils.PyDataset``)."""

from __future__ import annotations

import numpy as np


def make_tile_sequence(images, targets, tile, batch_size, steps, augment, seed, shuffle=True):
    """Make a ``keras.utils.PyDataset`` of random tiles from large images.

    Tiles are drawn from image ``i`` with probability proportional to its area, at uniform
    positions; each epoch ``e`` and batch ``b`` use the seed ``(seed, e, b)``, so a run is
    reproducible and a resumed run sees the same batches. With ``shuffle=False`` (validation)
    the tiles are the same every epoch and not augmented.
    """
    import keras  # keras: only to train (lazy, docs/architecture.md)

    class TileSequence(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = 0
            areas = np.array([im.shape[0] * im.shape[1] for im in images], float)
            self.p = areas / areas.sum()

        def __len__(self):
            return steps

        def on_epoch_end(self):
            if shuffle:
                self.epoch += 1

        def __getitem__(self, b):
            rng = np.random.default_rng([seed, self.epoch if shuffle else 0, b])
            xs, ys = [], []
            for _ in range(batch_size):
                i = rng.choice(len(images), p=self.p)
                im, tg = images[i], targets[i]
                y0 = int(rng.integers(0, im.shape[0] - tile + 1))
                x0 = int(rng.integers(0, im.shape[1] - tile + 1))
                x, y = im[y0 : y0 + tile, x0 : x0 + tile], tg[y0 : y0 + tile, x0 : x0 + tile]
                if shuffle and augment is not None:
                    x, y = augment(x, y, rng)
                xs.append(x)
                ys.append(y)
            return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32)

    return TileSequence()
