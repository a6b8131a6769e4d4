"""The Fiji / ImageJ bridge: the only part of particleseg that touches Java.

* :func:`start` starts ImageJ once per process: Fiji through pyimagej (headless,
  interactive or GUI mode) or a plain ImageJ 1.x jar through scyjava/JPype (under a private
  Xvfb when there is no display), and installs the commands of Plugins > Particle
  Segmentation (Segment Particles..., Split Touching Particles..., Filter Particles...,
  Measure Particles..., Evaluate Segmentation..., Batch Segment Folder..., Train Model...,
  Models...), which menus, macros and the recorder use like built-in commands.
* :func:`to_imageplus` / :func:`from_imageplus` convert NumPy arrays and ImagePlus (8/16/32-bit,
  stacks) with their calibration.
* :mod:`.batch` runs ImageJ macros headless over folders (``particleseg fiji run-macro``);
  :mod:`.install` copies ``fiji-scripts/`` into a Fiji (``particleseg fiji install``).

See ``docs/fiji.md``. Importing this package does not start Java.
"""

from . import convert as _convert
from .environment import FijiError, find_java
from .options import COMMAND_NAMES, SPECS, parse_macro_options
from .session import ImageJSession, MacroError, current, start


def to_imageplus(array, calibration=None, title: str = "image"):
    """Convert a NumPy image ``(Y, X)`` or stack ``(Z, Y, X)`` to an ImagePlus with its calibration.

    Needs a started JVM (see :func:`start`).
    """
    return _convert.to_imageplus(array, calibration, title)


def from_imageplus(imp, allow_stack: bool = True):
    """Pixels (uint8/uint16/float32) and :class:`~particleseg.io.Calibration` of an ImagePlus."""
    return _convert.from_imageplus(imp, allow_stack=allow_stack)


__all__ = [
    "FijiError",
    "MacroError",
    "ImageJSession",
    "COMMAND_NAMES",
    "SPECS",
    "start",
    "current",
    "to_imageplus",
    "from_imageplus",
    "parse_macro_options",
    "find_java",
]
