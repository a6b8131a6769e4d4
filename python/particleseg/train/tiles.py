"""Sampling random training tiles into batches (a ``keras.utils.PyDataset``)."""

from __future__ import annotations

import threading

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

    ``processes`` > 0 cuts the batches in that many worker processes instead
    (:class:`SharedMemoryBatches`), for a GPU that trains faster than two threads can cut tiles;
    the batches are the same, since each one depends on its seed alone.
    """
    import keras  # keras: only to train (lazy, docs/architecture.md)

    p = area_weights(images)  # once, not per batch
    cut = augment if shuffle else None
    shared = SharedMemoryBatches(images, targets, tile, batch_size, cut, p, processes) if processes > 0 else None

    class TileSequence(keras.utils.PyDataset):
        def __init__(self):
            # with worker processes, these threads only wait for them and copy the batches out
            super().__init__(workers=2 * processes if shared else WORKERS)
            self.epoch = 0
            self.shared = shared

        @property
        def num_batches(self):
            return None  # endless

        def __getitem__(self, i):
            e, b = divmod(int(i), steps)
            key = (seed, self.epoch + 1 + e if shuffle else 0, b)
            if shared is not None:
                return shared.batch(key)
            return tile_batch(images, targets, tile, batch_size, cut, np.random.default_rng(key), p)

    return TileSequence()


#: what the worker processes of :class:`SharedMemoryBatches` cut batches from, by loader id
#: (inherited when they are forked)
_SOURCES: dict = {}


def _cut_into_slot(loader: int, slot: int, key: tuple) -> None:
    """In a worker process: cut the batch of seed ``key`` into shared-memory ``slot``."""
    src = _SOURCES[loader]
    x, y = tile_batch(src["images"], src["targets"], src["tile"], src["batch_size"], src["augment"],
                      np.random.default_rng(key), src["p"])  # fmt: skip
    _slot_view(src["memory"][slot], x.shape)[...] = x
    _slot_view(src["memory"][src["slots"] + slot], y.shape)[...] = y


def _slot_view(memory, shape) -> np.ndarray:
    """Return a float32 array of ``shape`` on a slot's memory.

    Made for each use: a slot whose views are all gone can be unmapped.
    """
    return np.frombuffer(memory, np.float32, int(np.prod(shape))).reshape(shape)


class SharedMemoryBatches:
    """Training batches cut in worker processes and handed over through shared memory.

    Batch ``key`` is :func:`tile_batch` with the seed ``key`` alone, as in the threads. The
    workers are forked from this process (they inherit the images and targets, which may be
    gigabytes, without a copy) once :meth:`batch` is first called; each batch comes back through
    one of ``2 * processes`` slots of anonymous shared memory mapped before the fork, not through
    a pipe (and not through ``/dev/shm``, which containers often keep at 64 MB). Through the pipes
    of Keras' ``use_multiprocessing`` a batch of 32 tiles of 256x256 with 3 target channels
    (34 MB) took 116 ms on this project's 2 CPU cores, as long as cutting it (107 ms); a lent
    H200 waited 83-97 ms for each such batch (2026-12-04). Here it is a copy out of the slot.
    Slots and workers go when the object is garbage-collected.
    """

    def __init__(self, images, targets, tile, batch_size, augment, p, processes: int):
        self.processes = int(processes)
        self.slots = 2 * self.processes
        self.source = {
            "images": images,
            "targets": targets,
            "tile": tile,
            "batch_size": batch_size,
            "augment": augment,
            "p": p,
        }
        self.x_shape = (batch_size, tile, tile) + tuple(np.shape(images[0])[2:])
        self.y_shape = (batch_size, tile, tile) + tuple(np.shape(targets[0])[2:])
        self._pool = None
        self._lock = threading.Lock()
        self.memory: list = []  # the slots' mappings, once started

    def _start(self):
        import mmap
        import multiprocessing
        import queue
        import weakref
        from concurrent.futures import ProcessPoolExecutor

        n = np.dtype(np.float32).itemsize
        # anonymous MAP_SHARED mappings: shared with the processes forked after them
        memory = [mmap.mmap(-1, n * int(np.prod(s))) for s in (self.x_shape, self.y_shape) for _ in range(self.slots)]
        self.id = id(self)
        _SOURCES[self.id] = {**self.source, "memory": memory, "slots": self.slots}
        # forked: the workers see the images, targets and slots as they are now
        pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("fork"))
        self.free = queue.Queue()
        for slot in range(self.slots):
            self.free.put(slot)
        self.memory = memory
        weakref.finalize(self, _release, pool, memory, self.id)
        self._pool = pool

    def batch(self, key: tuple) -> tuple[np.ndarray, np.ndarray]:
        """Return the images and targets of the batch of seed ``key`` (float32 copies)."""
        with self._lock:
            if self._pool is None:
                self._start()
        slot = self.free.get()
        try:
            self._pool.submit(_cut_into_slot, self.id, slot, key).result()
            x = _slot_view(self.memory[slot], self.x_shape).copy()
            return x, _slot_view(self.memory[self.slots + slot], self.y_shape).copy()
        finally:
            self.free.put(slot)


def _release(pool, memory, loader: int) -> None:
    """Stop the workers and unmap the slots of a :class:`SharedMemoryBatches`."""
    pool.shutdown(wait=True, cancel_futures=True)
    _SOURCES.pop(loader, None)
    for m in memory:
        m.close()
