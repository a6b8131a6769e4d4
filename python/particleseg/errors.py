"""Exceptions whose message is meant for the user, as one line naming the file and the problem."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator


class ParticlesegError(Exception):
    """Base class: an error the command line prints as one line, without a traceback."""


class InputError(ParticlesegError, ValueError):
    """An input file or array cannot be used (unreadable, wrong shape, constant, NaNs, ...)."""


class OutputExistsError(ParticlesegError, FileExistsError):
    """An output file exists and ``overwrite`` was not given."""


class BundleError(ParticlesegError, ValueError):
    """A model bundle is missing, incomplete, or does not match the image."""


class ParticlesegWarning(UserWarning):
    """Something the user should know about a result.

    For example an estimate outside its range, or an image without particles; the command line
    prints it as one line, ``particleseg: note: ...``, and the Fiji commands write that line to
    ImageJ's Log (:func:`notes_to`).
    """


@contextlib.contextmanager
def notes_to(write: Callable[[str], None], others: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hand each :class:`ParticlesegWarning` given inside the block to ``write`` as one line.

    The line is ``particleseg: note: MESSAGE``, every time the warning is given (not once per
    place, as Python's default filter would). Other warnings go to ``others`` as Python formats
    them, one line, or, without ``others``, where they went before. The command line writes the
    notes to stderr, the Fiji commands to ImageJ's Log.

    ``warnings.catch_warnings`` swaps the process's warning state, so a note that another thread
    gives meanwhile may take this block's way (as in
    :func:`particleseg.pipeline.network_passes`); the line is the same whoever writes it.

    Examples
    --------
    >>> lines = []
    >>> with notes_to(lines.append):
    ...     warnings.warn("a.tif: no particles found", ParticlesegWarning)
    ...     warnings.warn("a.tif: no particles found", ParticlesegWarning)
    >>> lines
    ['particleseg: note: a.tif: no particles found', 'particleseg: note: a.tif: no particles found']
    """
    with warnings.catch_warnings():
        warnings.simplefilter("always", ParticlesegWarning)
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None) -> None:
            if issubclass(category, ParticlesegWarning):
                write(f"particleseg: note: {message}")
            elif others is not None:
                others(warnings.formatwarning(message, category, filename, lineno, line).rstrip())
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield
