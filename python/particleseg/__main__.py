"""``python -m particleseg``: the ``particleseg`` command line (:func:`particleseg.cli.main`)."""

import sys

from .cli import main

if __name__ == "__main__":  # not when a worker process (multiprocessing spawn) imports the main module
    sys.exit(main())
