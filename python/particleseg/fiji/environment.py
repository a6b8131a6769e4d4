"""Finding Java, ImageJ and a display, and starting the JVM (once per process).

Two ways to get an ImageJ:

* **Fiji** through pyimagej: ``imagej.init(FIJI_DIR or "sc.fiji:fiji", mode=...)`` in
  ``headless``, ``interactive`` or ``gui`` mode. Fiji's ImageJ 1.x layer (imagej-legacy) runs
  macros headless without a display.
* **Plain ImageJ 1.x** (``ij.jar``, e.g. Debian's ``libij-java``) through scyjava/JPype. ImageJ
  1.x builds its command table from AWT menus and cannot do that with
  ``java.awt.headless=true``, so it needs an X display; without one, a private ``Xvfb`` is
  started and lives exactly as long as this process.

Everything here raises :class:`FijiError` with one line that says what is missing and what to
do; nothing downloads a JDK (scyjava is told ``fetch="never"``).
"""

from __future__ import annotations

import atexit
import ctypes
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

from ..errors import ParticlesegError

DEBIAN_IJ_JAR = "/usr/share/java/ij.jar"
MODES = ("headless", "interactive", "gui")


class FijiError(ParticlesegError):
    """ImageJ/Fiji cannot be started or used (Java, display, installation)."""


# ------------------------------------------------------------------------------------------
# Java


def find_java(fiji_dir: str | os.PathLike | None = None) -> Path:
    """JAVA_HOME of the JDK/JRE to use.

    Order: ``$JAVA_HOME``; the Java bundled with Fiji (``Fiji.app/java/...``) when a Fiji
    folder is given; ``java`` on the PATH. A JAVA_HOME that does not hold ``bin/java`` is an
    error, not something to silently work around.
    """
    env = os.environ.get("JAVA_HOME")
    if env:
        home = Path(env)
        if not (home / "bin" / "java").is_file():
            raise FijiError(
                f"{home}: JAVA_HOME does not contain bin/java (point JAVA_HOME at a JDK or JRE, or unset it)"
            )
        return home
    if fiji_dir and Path(fiji_dir).is_dir():
        bundled = sorted(glob.glob(str(Path(fiji_dir) / "java" / "*" / "*" / "bin" / "java")))
        bundled += sorted(glob.glob(str(Path(fiji_dir) / "java" / "*" / "*" / "jre" / "bin" / "java")))
        if bundled:
            return Path(bundled[-1]).parent.parent
    exe = shutil.which("java")
    if exe:
        return Path(os.path.realpath(exe)).parent.parent
    raise FijiError(
        "Java not found: no JAVA_HOME and no java on the PATH "
        "(install a JDK, e.g. apt-get install default-jre-headless, or set JAVA_HOME)"
    )


def java_major_version(java_home: Path) -> int | None:
    """Major version from ``JAVA_HOME/release`` (no JVM needed)."""
    release = Path(java_home) / "release"
    try:
        m = re.search(r'JAVA_VERSION="(\d+)(?:\.(\d+))?', release.read_text(errors="replace"))
    except OSError:
        return None
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2)) if major == 1 and m.group(2) else major


def configure_java(fiji_dir=None, fetch: str = "never") -> Path:
    """Point scyjava at the system Java and forbid downloads. Returns JAVA_HOME."""
    import scyjava  # Java: imported on first use, never by importing particleseg.fiji

    home = find_java(fiji_dir)
    os.environ["JAVA_HOME"] = str(home)
    version = java_major_version(home)
    scyjava.config.set_java_constraints(fetch=fetch, version=str(version) if version else None)
    return home


# ------------------------------------------------------------------------------------------
# display


class VirtualDisplay:
    """A private Xvfb server for this process.

    It is started with ``-displayfd`` (Xvfb picks a free display number and reports it) and
    with the parent-death signal set, so it stops when this process ends, after the JVM: AWT
    must never see its X server go away while it runs.

    Linux sends the parent-death signal when the *thread* that started the child ends, not the
    process. So Xvfb is started by a thread of its own that waits on it for as long as it runs:
    started from a short-lived thread (a worker thread, a GUI callback), it died with that
    thread and left ``DISPLAY`` naming a dead server, on which AWT and napari's canvas fail
    (a napari check in the test suite once failed on such a server; what ended that one is not
    known, so :func:`ensure_display` also replaces a private Xvfb that has ended).
    """

    def __init__(self, width: int = 1600, height: int = 1200):
        exe = shutil.which("Xvfb")
        if not exe:
            raise FijiError(
                "no display: DISPLAY is not set and Xvfb is not installed; ImageJ 1.x needs an X "
                "display to build its menus (apt-get install xvfb, run under xvfb-run, or use Fiji headless "
                "with --fiji DIR)"
            )
        read_fd, write_fd = os.pipe()
        started, outcome = threading.Event(), {}

        def parent() -> None:  # the Xvfb's parent thread, alive while the Xvfb runs
            try:
                outcome["process"] = subprocess.Popen(
                    [exe, "-displayfd", str(write_fd), "-screen", "0", f"{width}x{height}x24", "-nolisten", "tcp"],
                    pass_fds=(write_fd,),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    preexec_fn=_die_with_parent,
                    close_fds=True,
                )
            except BaseException as exc:  # noqa: BLE001 - raised in the starting thread below
                outcome["error"] = exc
            finally:
                started.set()
            if "process" in outcome:
                outcome["process"].wait()

        threading.Thread(target=parent, name="particleseg-xvfb", daemon=True).start()
        started.wait()
        os.close(write_fd)
        if "error" in outcome:
            os.close(read_fd)
            raise outcome["error"]
        self.process = outcome["process"]
        number = b""
        deadline = time.monotonic() + 20
        try:
            os.set_blocking(read_fd, False)
            while not number.endswith(b"\n") and time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break
                try:
                    chunk = os.read(read_fd, 16)
                except BlockingIOError:
                    time.sleep(0.02)
                    continue
                if not chunk:
                    break
                number += chunk
        finally:
            os.close(read_fd)
        if not number.strip().isdigit():
            self.stop()
            raise FijiError("no display: Xvfb did not start (try xvfb-run, or set DISPLAY)")
        self.display = f":{number.decode().strip()}"

    def stop(self) -> None:
        """Stop the Xvfb server (terminate, then kill after 5 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


_display: VirtualDisplay | None = None


def ensure_display() -> str:
    """DISPLAY to use: the one set, or a private Xvfb started now (once per process, again if it ended)."""
    global _display
    ours = _display is not None and os.environ.get("DISPLAY") == _display.display
    if ours and _display.process.poll() is not None:
        os.environ.pop("DISPLAY")  # our Xvfb ended (killed): not a display to hand out
    if os.environ.get("DISPLAY"):
        return os.environ["DISPLAY"]
    if sys.platform == "darwin" or os.name == "nt":
        return ""  # a desktop is always there
    _display = VirtualDisplay()
    os.environ["DISPLAY"] = _display.display
    return _display.display


def virtual_display() -> VirtualDisplay | None:
    """Return the Xvfb started by :func:`ensure_display`, if any."""
    return _display


# ------------------------------------------------------------------------------------------
# ImageJ installations


def find_ij_jar(ij_jar: str | os.PathLike | None = None) -> Path:
    """Find the ImageJ 1.x jar: the one given, ``$PARTICLESEG_IJ_JAR``, or Debian's."""
    candidates = [ij_jar] if ij_jar else [os.environ.get("PARTICLESEG_IJ_JAR"), DEBIAN_IJ_JAR]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    if ij_jar:
        raise FijiError(f"{ij_jar}: ImageJ jar not found")
    raise FijiError(
        "no ImageJ found: give --fiji DIR (a Fiji.app folder), --ij-jar PATH (an ImageJ 1.x ij.jar), "
        f"or install Debian's libij-java for {DEBIAN_IJ_JAR}"
    )


def check_ij_jar(path: Path) -> None:
    """Raise :class:`FijiError` unless ``path`` is a jar holding ``ij/ImageJ.class``."""
    try:
        with zipfile.ZipFile(path) as zf:
            if "ij/ImageJ.class" not in zf.namelist():
                raise FijiError(f"{path}: not an ImageJ 1.x jar (no ij/ImageJ.class inside)")
    except zipfile.BadZipFile:
        raise FijiError(f"{path}: not a jar file") from None


def check_fiji_dir(path: str | os.PathLike) -> Path:
    """Check a local Fiji (or ImageJ2) installation: a folder with ``jars/imagej-legacy-*.jar``."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FijiError(f"{p}: Fiji folder not found (give the Fiji.app folder, or an endpoint such as sc.fiji:fiji)")
    jars = p / "jars"
    if not jars.is_dir():
        raise FijiError(f"{p}: not a Fiji installation (no jars/ folder); give the Fiji.app folder")
    if not list(jars.glob("imagej-legacy*.jar")):
        raise FijiError(f"{p}: not a Fiji installation with ImageJ 1.x support (no jars/imagej-legacy-*.jar)")
    return p.resolve()


def is_endpoint(fiji: str) -> bool:
    """``sc.fiji:fiji``, ``net.imagej:imagej:2.14.0``: Maven coordinates, not a folder."""
    return ":" in str(fiji) and not re.match(r"^(/|[A-Za-z]:[\\/])", str(fiji)) and not Path(fiji).exists()


# ------------------------------------------------------------------------------------------
# starting the JVM


def jvm_started() -> bool:
    """Return whether a Java virtual machine runs in this process (False without JPype)."""
    try:
        import jpype  # Java: imported on first use, never by importing particleseg.fiji
    except ImportError:
        return False
    return bool(jpype.isJVMStarted())


def _require_jpype() -> None:
    try:
        import jpype  # noqa: F401 - only whether it is installed (Java: never imported at module level)
        import scyjava  # noqa: F401 - only whether it is installed (Java: never imported at module level)
    except ImportError as exc:
        raise FijiError(
            f"the Fiji bridge needs JPype and scyjava ({exc.name} missing): pip install 'particleseg[fiji]'"
        ) from None


def start_imagej1(ij_jar: str | os.PathLike | None = None, max_heap: str | None = None) -> Path:
    """Start a JVM with a plain ImageJ 1.x jar on the class path (under a display)."""
    _require_jpype()
    import jpype  # Java: imported on first use, never by importing particleseg.fiji

    jar = find_ij_jar(ij_jar)
    check_ij_jar(jar)
    if jvm_started():
        raise FijiError(
            "Java is already running in this process (JPype cannot restart it); use the ImageJ session started first"
        )
    home = configure_java()
    ensure_display()
    # JPype directly, not scyjava.start_jvm: that would also resolve the Maven endpoints and
    # run the start-up hooks other imports registered (pyimagej's imglyb needs imglib2 and
    # the network); ImageJ 1.x needs only its jar. scyjava.jimport works on this JVM.
    options = [f"-Xmx{max_heap}"] if max_heap else []
    try:
        jvm = jpype.getDefaultJVMPath()
    except Exception as exc:  # noqa: BLE001 - jpype.JVMNotFoundException
        raise FijiError(
            f"{home}: no Java virtual machine library found in this JAVA_HOME ({_first_line(exc)})"
        ) from None
    try:
        jpype.startJVM(jvm, *options, classpath=[str(jar)], convertStrings=False)
    except Exception as exc:  # noqa: BLE001 - JVM start failures are environment problems
        raise FijiError(f"cannot start Java for ImageJ ({_first_line(exc)})") from None
    check_display_from_java()
    # last in, first out: the windows are disposed, then JPype's reference queue is stopped,
    # then JPype's own exit handler runs
    atexit.register(_stop_reference_queue)
    atexit.register(_dispose_windows)
    # ImageJ leaves AWT threads that are not daemons; do not wait for them at exit (scyjava's
    # start_jvm disposes the windows for the same reason)
    jpype.config.destroy_jvm = False
    return jar


def _dispose_windows() -> None:
    try:
        import jpype  # Java: imported on first use, never by importing particleseg.fiji

        if jpype.isJVMStarted():
            for w in jpype.JClass("java.awt.Window").getWindows():
                w.dispose()
    except Exception:  # noqa: BLE001 - exiting anyway
        pass


def _stop_reference_queue() -> None:
    """At exit, stop the Java thread through which JPype releases Python objects held by Java.

    When Java's garbage collector frees a Java object that holds a Python object (a proxy such
    as the bridge's command listener, a NumPy buffer), JPype's "Python Reference Queue" thread
    enters Python to release it. With ``destroy_jvm = False`` that thread keeps running while
    Python finalizes; once finalization has begun, CPython ends a thread that asks for the
    interpreter lock, inside JPype's native frames, and the process aborts ("FATAL: exception
    not rethrown", exit status -6) after the script has done all its work. Garbage collections
    at exit are frequent (disposing the windows allocates), so this happened in about half of
    the whole-suite runs of docs/fiji.md's Python example, and in every run with a Java thread
    calling ``System.gc()`` through the exit (tests/fiji/test_fiji_cli.py). The Python objects left
    unreleased are freed with the process.
    """
    try:
        import jpype  # Java: imported on first use, never by importing particleseg.fiji

        if jpype.isJVMStarted():
            jpype.JClass("org.jpype.ref.JPypeReferenceQueue").getInstance().stop()
    except Exception:  # noqa: BLE001 - exiting anyway; an older JPype without this class
        pass


def check_display_from_java() -> None:
    """Ask AWT whether it can open the display: one clear error instead of AWT stack traces later."""
    import scyjava  # Java: imported on first use, never by importing particleseg.fiji

    GraphicsEnvironment = scyjava.jimport("java.awt.GraphicsEnvironment")
    try:
        if GraphicsEnvironment.isHeadless():
            raise FijiError(
                "no display: Java runs headless (java.awt.headless=true); ImageJ 1.x needs a display to build its menus"
            )
        GraphicsEnvironment.getLocalGraphicsEnvironment().getScreenDevices()
    except FijiError:
        raise
    except Exception as exc:  # noqa: BLE001 - java.awt.AWTError
        raise FijiError(
            f"no display: Java cannot open the X display {os.environ.get('DISPLAY', '')!r} ({_first_line(exc)}); "
            "unset DISPLAY to let particleseg start Xvfb, or start the X server"
        ) from None


def start_fiji(fiji: str | os.PathLike, mode: str = "headless", on_start=None):
    """Start Fiji through pyimagej and return the ImageJ2 gateway.

    ``fiji`` is a Fiji.app folder or a Maven endpoint (``sc.fiji:fiji``, which pyimagej
    resolves from the SciJava Maven repository). ``gui`` mode blocks until Fiji is closed;
    ``on_start(gateway)`` runs once Fiji is up in every mode.
    """
    _require_jpype()
    if mode not in MODES:
        raise FijiError(f"unknown mode {mode!r} (use {', '.join(MODES)})")
    try:
        import imagej  # Java: imported on first use, never by importing particleseg.fiji
    except ImportError:
        raise FijiError("--fiji needs pyimagej: pip install 'particleseg[fiji]'") from None

    if jvm_started():
        raise FijiError("Java is already running in this process (JPype cannot restart it); start Fiji first")
    target = str(fiji)
    fiji_dir = None
    if not is_endpoint(target):
        fiji_dir = check_fiji_dir(target)
        target = str(fiji_dir)
    # pyimagej 1.8.0 cannot guess the Java version with fetch="never" (UnboundLocalError in
    # imagej._guess_java_version); "auto" with the version of the JDK found here behaves the
    # same (system Java, no download) because that JDK satisfies the constraint.
    configure_java(fiji_dir, fetch="auto")
    if mode != "headless" and not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        raise FijiError(f"no display: Fiji's {mode} mode needs a desktop (DISPLAY is not set); use mode headless")
    if fiji_dir is not None:
        _use_local_imglyb(fiji_dir)
    if on_start is not None:
        imagej.when_imagej_starts(on_start)
    try:
        gateway = imagej.init(target, mode=mode)
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001
        where = "the SciJava Maven repository" if fiji_dir is None else str(fiji_dir)
        detail = _first_line(exc)
        hint = ""
        if any(
            k in detail
            for k in (
                "NameResolution",
                "Max retries",
                "ConnectionError",
                "Connection refused",
                "timed out",
                "Could not resolve",
            )
        ):
            hint = "; pyimagej needed the network to resolve Maven artifacts" + (
                " (a Fiji folder with jars/imglib2-imglyb-*.jar avoids that)" if fiji_dir else ""
            )
        raise FijiError(f"{fiji}: cannot start Fiji through pyimagej from {where} ({detail}){hint}") from None
    if not gateway or not hasattr(gateway, "legacy"):
        raise FijiError(
            f"{fiji}: pyimagej started Java but found no ImageJ2 (net.imagej.ImageJ) in it; is this a complete Fiji?"
        )
    try:
        if not gateway.legacy or not gateway.legacy.isActive():
            raise FijiError(f"{fiji}: Fiji started without its ImageJ 1.x layer (imagej-legacy); the commands need it")
    except FijiError:
        raise
    except Exception:  # noqa: BLE001 - older gateways
        pass
    return gateway


def _use_local_imglyb(fiji_dir: Path) -> None:
    """Use the Fiji's own imglyb jar, when it has one, so that no network is needed.

    pyimagej's imglyb asks scyjava to resolve ``net.imglib2:imglib2-imglyb`` from Maven even for
    a local Fiji.
    """
    import scyjava  # Java: imported on first use, never by importing particleseg.fiji

    if list((fiji_dir / "jars").glob("imglib2-imglyb*.jar")):
        scyjava.config.endpoints[:] = [
            e for e in scyjava.config.endpoints if not str(e).startswith("net.imglib2:imglib2-imglyb")
        ]


def _first_line(exc: BaseException) -> str:
    """First line of an error, without a Java exception class prefix (java.awt.AWTError: ...)."""
    text = str(exc).strip().splitlines()
    if not text:
        return type(exc).__name__
    return re.sub(r"^(?:[a-z_]\w*\.)+[A-Z]\w*(?:Error|Exception): ", "", text[0])
