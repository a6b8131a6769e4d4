"""How a batch starts its worker processes.

The workers of :func:`particleseg.pipeline.segment_files` with ``jobs`` > 1. A light module (no
NumPy), so that the command line can start the process the workers come from while it imports
the rest.

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
