"""``python -m particleseg.cli``: run the ``particleseg`` command line."""

import sys

from . import main

if __name__ == "__main__":  # not when a worker process (multiprocessing spawn) imports the main module
    sys.exit(main())
