"""Exceptions whose message is meant for the user, as one line naming the file and the problem."""


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
    prints it as one line, ``particleseg: note: ...``.
    """
