"""Ctrl-C and ``kill`` as one interruption that libraries cannot swallow.

Python raises :class:`KeyboardInterrupt` wherever the signal's handler happens to run, also
inside Python code that a C extension calls back, and some extensions lose it there. NumPy's
``ndarray.tofile`` (2.4), which tifffile writes every image with, asks
``isinstance(file, os.PathLike)``; that runs Python code (``ABCMeta.__instancecheck__``), and
when the interruption is raised in it NumPy takes the failed check for "path-like" and raises
``TypeError: expected str, bytes or os.PathLike object, not BufferedWriter`` in its place.
A ``kill`` that came at that moment ended a batch with a traceback and status 1 instead of
rolling back the image being written and writing the summary.

So while :func:`stop_on_signals` is in force its handler also records the signal, and the
batches ask :func:`check` before they take an error for the image's own: an error that follows a
received signal is the interruption. Signals reach the main thread only: elsewhere (ImageJ's
threads, a worker's) the block runs unchanged.

Examples
--------
>>> from particleseg import interrupts
>>> with interrupts.stop_on_signals():
...     interrupts.requested()
False
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["as_interrupt", "check", "requested", "stop_on_signals"]

_received: list[int] = []  # the signals received in the outermost stop_on_signals block
_depth = 0


def requested() -> bool:
    """Return whether Ctrl-C or ``kill`` came since the outermost :func:`stop_on_signals` began."""
    return bool(_received)


def as_interrupt(exc: BaseException) -> KeyboardInterrupt | None:
    """Return ``exc`` as the interruption it stands for, or None when it is an error of its own.

    A :class:`KeyboardInterrupt` is returned as it is; any other exception raised after a signal
    came (:func:`requested`) is what a library made of the interruption, returned as a
    KeyboardInterrupt whose ``__cause__`` is ``exc``.
    """
    if isinstance(exc, KeyboardInterrupt):
        return exc
    if requested():
        interrupt = KeyboardInterrupt()
        interrupt.__cause__ = exc
        return interrupt
    return None


def check(exc: BaseException | None = None) -> None:
    """Raise :class:`KeyboardInterrupt` if Ctrl-C or ``kill`` came; else return.

    Call it before taking ``exc`` for an item's own error (the interruption may have been turned
    into it), and between items (it may have been swallowed whole).
    """
    if requested():
        raise KeyboardInterrupt from exc


def _record(signum, frame):
    _received.append(signum)
    raise KeyboardInterrupt


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While the block runs, Ctrl-C (SIGINT) and ``kill`` (SIGTERM) interrupt it and are recorded.

    Both raise :class:`KeyboardInterrupt`: the item being written is rolled back and the reports
    are written. An exception other than KeyboardInterrupt that leaves the block after a signal
    came is raised as a KeyboardInterrupt caused by it. The former handlers are restored after the
    block. Outside the main thread (no signals there) the block runs unchanged.
    """
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _depth == 0:
        _received.clear()
    previous = {s: signal.signal(s, _record) for s in (signal.SIGINT, signal.SIGTERM)}
    _depth += 1
    try:
        yield
    except BaseException as exc:
        interrupt = as_interrupt(exc)
        if interrupt is None or interrupt is exc:
            raise
        raise interrupt from exc
    finally:
        _depth -= 1
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        if _depth == 0:
            _received.clear()
