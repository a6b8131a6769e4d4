"""One ImageJ per process: start (or attach to) it, run macros, exchange images.

>>> from particleseg import fiji
>>> ij = fiji.start(ij_jar="/usr/share/java/ij.jar")            # doctest: +SKIP
>>> ij.run_macro('open("a.tif"); run("Segment Particles...", "threshold=0.5 split");')  # doctest: +SKIP
>>> ij.results().shape                                           # doctest: +SKIP
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ParticlesegError
from . import convert
from . import environment as env

# .bridge is imported inside the functions that use it: it imports the commands and with them the whole
# pipeline (SciPy, scikit-image), and `import particleseg.fiji` (this module) stays light

_session: "ImageJSession | None" = None
_lock = threading.Lock()


class MacroError(ParticlesegError):
    """An ImageJ macro stopped with an error; the message is ImageJ's (with the line)."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line


@dataclass
class ImageJSession:
    """The running ImageJ: ``kind`` is ``imagej1`` (plain ij.jar) or ``fiji`` (pyimagej)."""

    kind: str
    mode: str
    source: str
    gateway: Any = None  # the pyimagej ImageJ2 gateway (Fiji only)
    display: str = ""
    started: float = field(default_factory=time.time)

    # -- macros --------------------------------------------------------------------------

    def run_macro(self, code: str, argument: str = "", name: str = "macro", end_batch_mode: bool = True) -> str:
        """Run ImageJ macro code in this thread and return its ``return`` value ("" if none).

        As for a macro run from ImageJ's menus, batch mode ends with the macro and the images
        it left in batch mode are discarded (``end_batch_mode=False`` keeps them for
        inspection; :meth:`close_all` discards them later).

        Raises
        ------
        MacroError
            When the macro stops with an error (the message ImageJ gives, e.g. a command's
            "Segment Particles...: sample.tif: is an RGB image ...").
        """
        from .bridge import CLOSED_DIALOGS, macro_running  # heavy: see the module's imports

        Interpreter = _j("ij.macro.Interpreter")
        interp = Interpreter()
        n_closed = len(CLOSED_DIALOGS)
        result = None
        aborted = False
        try:
            with macro_running():
                result = interp.run(str(code), str(argument or ""))
        except Exception as exc:  # noqa: BLE001 - Java RuntimeException("Macro canceled") and friends
            if "Macro canceled" not in str(exc):
                raise MacroError(f"{name}: {_first_line(exc)}") from None
            aborted = True
        finally:
            _j("ij.Macro").setOptions(None)
            if end_batch_mode:
                self.end_batch_mode()
        if interp.wasError() or (aborted and interp.getErrorMessage() is not None):
            msg = str(interp.getErrorMessage() or "macro error")
            line = _error_line(interp)
            raise MacroError(_clean(msg) + (f" (line {line})" if line else ""), line)
        if aborted:
            closed = CLOSED_DIALOGS[n_closed:]
            if closed:
                title, text = closed[-1]
                if title in ("Macro Error", "ImageJ", "Message") or not text:
                    raise MacroError(f"{name}: {text or title}")
                raise MacroError(
                    f"{name}: stopped at the dialog {title!r}, which needs a user and was closed "
                    f"(headless run; give the values in the macro instead): {text}"
                )
            # exit() without a message: not an error
        return "" if result is None else str(result)

    def run_macro_file(self, path: str | os.PathLike, argument: str = "") -> str:
        """Run the macro in the file ``path`` (see :meth:`run_macro`); a file it cannot read is a MacroError."""
        p = Path(path)
        try:
            code = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise MacroError(f"{p}: cannot read macro ({exc.strerror})") from None
        return self.run_macro(code, argument, name=p.name)

    def run(self, command: str, options: str = "") -> str:
        """``run(command, options)`` as a one-line macro."""
        esc = options.replace("\\", "\\\\").replace('"', '\\"')
        return self.run_macro(f'run("{command}", "{esc}");', name=command)

    def wait_until_closed(self, poll: float = 0.5) -> None:
        """Block until the ImageJ window is closed (GUI mode)."""
        IJ = _j("ij.IJ")
        while True:
            ij = IJ.getInstance()
            if ij is None or bool(ij.quitting()) or not bool(ij.isShowing()):
                return
            time.sleep(poll)

    # -- images and tables ---------------------------------------------------------------

    def to_imageplus(self, array, calibration=None, title: str = "image"):
        """Convert an array to an ImagePlus (:func:`particleseg.fiji.convert.to_imageplus`), not shown."""
        return convert.to_imageplus(array, calibration, title)

    def from_imageplus(self, imp, allow_stack: bool = True):
        """Return the pixels and calibration of an ImagePlus (:func:`particleseg.fiji.convert.from_imageplus`)."""
        return convert.from_imageplus(imp, allow_stack=allow_stack)

    def show(self, array, calibration=None, title: str = "image"):
        """Show an array as an image window (or a batch-mode image) and make it active."""
        imp = self.to_imageplus(array, calibration, title)
        imp.show()
        return imp

    def image(self, title: str | None = None):
        """Return an open ImagePlus by title, or the active one."""
        WM = _j("ij.WindowManager")
        if title is not None:
            return WM.getImage(str(title))
        imp = WM.getCurrentImage()
        if imp is None:  # no window was activated (a display without window manager)
            ids = list(WM.getIDList() or [])
            imp = WM.getImage(int(ids[-1])) if ids else None
        return imp

    def image_titles(self) -> list[str]:
        """Return the titles of the open images."""
        return [str(t) for t in (_j("ij.WindowManager").getImageTitles() or [])]

    def results(self, title: str = "Results") -> pd.DataFrame:
        """Return the Results table (or another ImageJ table by title) as a DataFrame."""
        RT = _j("ij.measure.ResultsTable")
        rt = RT.getResultsTable() if title == "Results" else RT.getResultsTable(title)
        if rt is None:
            return pd.DataFrame()
        return table_to_frame(rt)

    def roi_count(self) -> int:
        """Return the number of ROIs in the ROI Manager (0 without one)."""
        RM = _j("ij.plugin.frame.RoiManager")
        rm = RM.getInstance()
        return 0 if rm is None else int(rm.getCount())

    def end_batch_mode(self) -> None:
        """Discard the images of a finished batch-mode macro and leave batch mode.

        ImageJ keeps batch mode on after a macro called from Java.
        """
        Interpreter = _j("ij.macro.Interpreter")
        if not bool(Interpreter.batchMode):
            return
        WM = _j("ij.WindowManager")
        for i in list(Interpreter.getBatchModeImageIDs() or []):
            imp = WM.getImage(int(i))
            if imp is not None:
                imp.changes = False
                imp.close()
        Interpreter.batchMode = False

    def close_all(self) -> None:
        """Close images, reset the Results table and the ROI Manager (between batch items)."""
        self.end_batch_mode()
        WM = _j("ij.WindowManager")
        for i in list(WM.getIDList() or []):
            imp = WM.getImage(int(i))
            if imp is not None:
                imp.changes = False
                imp.close()
        rt = _j("ij.measure.ResultsTable").getResultsTable()
        if rt is not None:
            rt.reset()
        rm = _j("ij.plugin.frame.RoiManager").getInstance()
        if rm is not None:
            rm.reset()


def table_to_frame(rt) -> pd.DataFrame:
    """Convert an ImageJ ResultsTable to a DataFrame.

    Numeric columns become floats and text columns strings; the row labels are a ``Label`` column.
    """
    headings = [str(h) for h in rt.getHeadings()]
    data: dict[str, Any] = {}
    n = int(rt.size())
    for h in headings:
        if h in (" ", ""):
            continue
        if h == "Label":
            data["Label"] = [str(rt.getLabel(i)) for i in range(n)]
            continue
        col = rt.getColumnIndex(h)
        values = [rt.getStringValue(col, i) for i in range(n)]
        nums = pd.to_numeric(pd.Series([str(v) for v in values]), errors="coerce")
        if n and nums.isna().all() and not all(str(v) == "NaN" for v in values):
            data[h] = [str(v) for v in values]
        else:
            data[h] = np.asarray(rt.getColumnAsDoubles(col), float) if n else np.zeros(0)
    return pd.DataFrame(data)


def _error_line(interp) -> int | None:
    """Return the line ImageJ's "Macro Error" dialog names.

    That is the interpreter's ``lineNumber`` field, set when the error happened
    (``getLineNumber()`` has moved on by now).
    """
    try:
        f = interp.getClass().getDeclaredField("lineNumber")
        f.setAccessible(True)
        n = int(f.getInt(interp))
        if n > 0:
            return n
    except Exception:  # noqa: BLE001 - another ImageJ version
        pass
    try:
        return int(interp.getLineNumber()) or None
    except Exception:  # noqa: BLE001
        return None


def _clean(msg: str) -> str:
    return " ".join(part.strip() for part in str(msg).splitlines() if part.strip())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _j(name: str):
    import scyjava  # Java: imported on first use, never by importing particleseg.fiji

    return scyjava.jimport(name)


def current() -> ImageJSession | None:
    """Return the session started in this process, if any."""
    return _session


def start(
    fiji: str | os.PathLike | None = None,
    ij_jar: str | os.PathLike | None = None,
    mode: str = "headless",
    max_heap: str | None = None,
) -> ImageJSession:
    """Start ImageJ once in this process and install the Particle Segmentation commands.

    Later calls return the same session.

    Parameters
    ----------
    fiji : path or endpoint
        A Fiji.app folder, or a Maven endpoint such as ``sc.fiji:fiji``: started through
        pyimagej (``imagej.init(fiji, mode=mode)``).
    ij_jar : path
        A plain ImageJ 1.x jar, started through scyjava/JPype under a display (a private Xvfb
        when DISPLAY is not set).
    mode : {"headless", "interactive", "gui"}
        With Fiji: pyimagej's modes (``gui`` blocks until Fiji is closed). With ImageJ 1.x:
        ``gui`` and ``interactive`` open the ImageJ window; ``headless`` runs without it and
        closes any modal dialog instead of waiting for a click.

    Without ``fiji`` and ``ij_jar``: ``$PARTICLESEG_FIJI`` (a Fiji folder) if set, else
    ``$PARTICLESEG_IJ_JAR`` or Debian's ``/usr/share/java/ij.jar``.
    """
    global _session
    with _lock:
        if _session is not None:
            return _session
        if fiji and ij_jar:
            raise env.FijiError("give either a Fiji (--fiji) or an ImageJ 1.x jar (--ij-jar), not both")
        if mode not in env.MODES:
            raise env.FijiError(f"unknown mode {mode!r} (use {', '.join(env.MODES)})")
        if not fiji and not ij_jar and os.environ.get("PARTICLESEG_FIJI"):
            fiji = os.environ["PARTICLESEG_FIJI"]
        if fiji:
            _session = _start_fiji(str(fiji), mode)
        else:
            _session = _start_imagej1(ij_jar, mode, max_heap)
        return _session


def _start_imagej1(ij_jar, mode: str, max_heap: str | None) -> ImageJSession:
    from . import bridge  # heavy: see the module's imports

    jar = env.start_imagej1(ij_jar, max_heap)
    ImageJ = _j("ij.ImageJ")
    IJ = _j("ij.IJ")
    if mode in ("gui", "interactive"):
        ImageJ()  # the ImageJ window with its menu bar
    else:
        # no ImageJ window: IJ.log prints to stdout. ImageJ builds its command table from its
        # menus on the first IJ.run (this is what needs the display); do it now, harmlessly
        IJ.run("Clear Results")
    bridge.install(menus=True, guard=(mode == "headless"))
    return ImageJSession("imagej1", mode, str(jar), display=os.environ.get("DISPLAY", ""))


def _start_fiji(fiji: str, mode: str) -> ImageJSession:
    from . import bridge  # heavy: see the module's imports

    holder: dict[str, Any] = {}

    def on_start(gateway):
        holder["gateway"] = gateway
        bridge.install(menus=True, guard=(mode == "headless"))

    gateway = env.start_fiji(fiji, mode, on_start=on_start)
    if not bridge.installed():
        on_start(gateway)
    return ImageJSession(
        "fiji", mode, str(fiji), gateway=gateway or holder.get("gateway"), display=os.environ.get("DISPLAY", "")
    )
