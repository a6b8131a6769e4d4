"""How a batch starts its worker processes.

The workers of :func:`particleseg.pipeline.segment_files` with ``jobs`` > 1, and of
:func:`map_in_processes` (the training targets of a fit with ``loader_processes``, the simulated
sets of ``scripts/train_default_model.py``). A light module (no NumPy), so that the command line
can start the process the workers come from while it imports the rest.

Workers are forked from a ``forkserver`` that has imported :mod:`particleseg.pipeline` once
(``spawn`` where the system has no forkserver); never forked from the batch's own process, whose
threads or Java VM (Fiji) must not be copied.
"""

from __future__ import annotations

import multiprocessing

#: what the forkserver imports once, for all the workers it forks
PRELOAD = ["particleseg.pipeline"]


def context(start: bool = False):
    """Return the :mod:`multiprocessing` context of the workers.

    With ``start``, start its forkserver now (it imports :data:`PRELOAD` while this process
    goes on) if it is not running.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)  # (no effect once the server runs)
    if start:
        from multiprocessing import forkserver  # only where the system has the forkserver start method (POSIX)

        forkserver.ensure_running()
    return ctx


def map_in_processes(fn, items, processes: int):
    """Yield ``fn(x)`` for each of ``items``, in order, from ``processes`` workers when above 1.

    The workers come from :func:`context` (never forked from this process, whose Keras backend
    may hold threads or a GPU); ``fn`` must be picklable (a module-level function or a
    ``functools.partial`` of one). With one process or fewer than two items, in this process.
    """
    items = list(items)
    if processes <= 1 or len(items) < 2:
        yield from map(fn, items)
        return
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(processes, mp_context=context()) as pool:
        yield from pool.map(fn, items, chunksize=max(1, len(items) // (4 * processes)))
