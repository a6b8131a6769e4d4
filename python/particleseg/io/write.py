"""Writing outputs: atomically, never over an existing file without ``overwrite``, with one-line errors.

Writers never modify inputs, write a temporary file in the target folder and rename it
atomically, give the file the permissions the umask gives new files, and refuse to replace an
existing file unless ``overwrite=True``. TIFFs are ImageJ-compatible with their calibration.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..errors import OutputExistsError, ParticlesegError
from .calibration import Calibration


def check_outputs(paths: Sequence[str | os.PathLike], overwrite: bool) -> None:
    """Raise :class:`OutputExistsError` if any of ``paths`` exists and ``overwrite`` is False."""
    if overwrite:
        return
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise OutputExistsError(f"{existing[0]}: output exists{more}; use --overwrite to replace it")


def check_output_folder(folder: str | os.PathLike, need_bytes: int = 0) -> Path:
    """Check an output folder before any work, and make it.

    Checks that ``folder`` is a folder or can be made, that files can be created in it, and that
    it has at least ``need_bytes`` free. Makes the folder.

    Raises
    ------
    OutputError
        One line: ``OUT: is a file, not a folder``, ``OUT: cannot create the folder (...)``,
        ``OUT: not writable``, ``OUT: not enough free space (...)``.
    """
    import shutil

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: is a file, not a folder; give a folder for the outputs")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise OutputError(describe_os_error(exc, folder)) from None
        if exc.errno in (errno.ENOTDIR, errno.EEXIST):
            raise OutputError(f"{folder}: cannot create the folder (a file is in its path)") from None
        raise OutputError(f"{folder}: cannot create the folder ({exc.strerror or exc})") from None
    try:  # writable? (permissions alone do not say it: root, read-only mounts, ACLs)
        fd, probe = tempfile.mkstemp(prefix=f".write-test.tmp{os.getpid()}-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(describe_os_error(exc, folder)) from None
    if need_bytes:
        free = shutil.disk_usage(folder).free
        if free < need_bytes:
            raise OutputError(
                f"{folder}: not enough free space ({_mb(free)} free, the outputs need at least {_mb(need_bytes)})"
            )
    return folder


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


def current_umask() -> int:
    """Return the process's file-creation mask (read without changing it where the OS allows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def respect_umask(path: str | os.PathLike) -> None:
    """Give a file or folder the mode a plain ``open``/``mkdir`` would have given it.

    For a file made by :func:`tempfile.mkstemp` (mode 0600) or a folder made by
    :func:`tempfile.mkdtemp` (0700): the mode becomes 0666 (files) or 0777 (folders) less the
    umask.
    """
    path = Path(path)
    if path.exists():
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~current_umask())


class OutputError(ParticlesegError, OSError):
    """An output cannot be written (disk full, folder not writable, not a folder).

    The message is one line naming the output folder and the final file, never a temporary file.
    """


def describe_os_error(exc: OSError, folder: str | os.PathLike, name: str | None = None) -> str:
    """Describe in one line an OS error while writing ``name`` into ``folder``.

    The line is, for example, ``OUT: disk full writing NAME``, ``OUT: not writable``,
    ``OUT: cannot write NAME (cause)``.
    """
    what = f" writing {name}" if name else ""
    text = str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT) or ("requested and" in text and "written" in text):
        return f"{folder}: disk full{what}"  # numpy's tofile says "786432 requested and 102232 written"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{folder}: not writable" + (" (read-only file system)" if exc.errno == errno.EROFS else "")
    if exc.errno == errno.ENOTDIR:
        return f"{folder}: is not a folder"
    cause = exc.strerror or (text.splitlines()[0] if text else type(exc).__name__)
    return f"{folder}: cannot write {name or 'there'} ({cause})"


#: temporary files of :func:`write_atomic`: ``.STEM.tmpPID-XXXXXXXX.SUFFIX`` (the process id
#: lets a later run remove those of a killed run, never those of a running one)
_TEMP_NAME = re.compile(r"^\.(?P<stem>.+)\.tmp(?P<pid>\d+)-[a-z0-9_]{8}(?P<suffix>\.[^.]+)?$")


_OLD_TEMP_NAME = re.compile(r"^\.(?P<stem>.+)\.[a-z0-9_]{8}(?P<suffix>\.[^.]+)?$")


def _temp_prefix(path: Path) -> str:
    return f".{path.stem}.tmp{os.getpid()}-"


def pid_alive(pid: int) -> bool:
    """Tell whether process ``pid`` exists (this one, or another user's, counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def stale_temporaries(folder: str | os.PathLike, names: Iterable[str] = ()) -> list[Path]:
    """Return the temporary files :func:`write_atomic` left in ``folder`` when its process was killed.

    These are the temporary files whose process no longer runs (killed by ``kill -9``, a power
    cut); and, for the final file names in ``names``, those of earlier versions
    (``.STEM.XXXXXXXX.SUFFIX``, no process id).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    names = set(names)
    found = []
    for entry in folder.iterdir():
        if not entry.name.startswith(".") or not entry.is_file():
            continue
        m = _TEMP_NAME.match(entry.name)
        old = _OLD_TEMP_NAME.match(entry.name)
        if (m and not pid_alive(int(m["pid"]))) or (old and old["stem"] + (old["suffix"] or "") in names):
            found.append(entry)
    return sorted(found)


def remove_stale_temporaries(folder: str | os.PathLike, names: Iterable[str] = ()) -> list[Path]:
    """Remove :func:`stale_temporaries` of ``folder``; returns what was removed."""
    removed = []
    for p in stale_temporaries(folder, names):
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` in one atomic rename.

    A reader never sees a half-written file, and an interrupted run leaves no partial output
    (a run killed with ``kill -9`` leaves its temporary file, which
    :func:`remove_stale_temporaries` recognises). The file gets the permissions the umask gives
    new files (not the 0600 of a temporary file).

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is False.
    OutputError
        An OS error (disk full, not writable, ...), as one line naming the folder and
        ``path``'s name, never the temporary file.
    """
    path = Path(path)
    check_outputs([path], overwrite)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # the name before the file: whenever the file exists, the clean-up below knows it
        # (tempfile.mkstemp returns the name after making the file, so a Ctrl-C, or SIGTERM,
        # which the command line turns into one, arriving in between left the file behind)
        while True:
            tmp = _temporary_name(path)
            try:
                os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
                break
            except FileExistsError:
                tmp = None
        write(tmp)
        respect_umask(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if isinstance(exc, (OutputError, OutputExistsError)):
            raise
        raise OutputError(describe_os_error(exc, path.parent, path.name)) from None
    finally:
        if tmp is not None:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
    return path


def _temporary_name(path: Path) -> Path:
    """Return a new temporary file name beside ``path`` (matching :data:`_TEMP_NAME`)."""
    return path.parent / f"{_temp_prefix(path)}{secrets.token_hex(4)}{path.suffix}"


def _imagej_unit(unit: str) -> str:
    # ImageJ's TIFF reader understands "micron" and turns it into µm; the description is ASCII.
    return {"µm": "micron", "Å": "angstrom", "px": "pixel"}.get(unit, unit)


def release_pages(array, y0: int | None = None, y1: int | None = None) -> None:
    """Let this process's resident set drop the pages of a read-only memory map (rows ``y0:y1``).

    A large image's labels and probabilities come as read-only ``numpy.memmap`` arrays on
    temporary files; every page a reader touches stays in the process's resident set (RSS) until
    the map is closed, although the kernel could read it again from the file. After a strip has
    been read, ``madvise(MADV_DONTNEED)`` drops its pages, so reading a whole map in strips
    takes memory for a strip, not for the map. Anything but a read-only memory map (mode
    ``"r"``: nothing of it can be lost) is left alone, as are platforms without ``madvise``.
    """
    import mmap

    mm = getattr(array, "_mmap", None)
    if mm is None or getattr(array, "mode", None) != "r" or not hasattr(mm, "madvise"):
        return
    if y0 is None:
        start, stop = 0, len(mm)
    else:
        base = np.frombuffer(mm, np.uint8).__array_interface__["data"][0]
        here = array.__array_interface__["data"][0] - base
        y1 = array.shape[0] if y1 is None else y1
        start = max(0, here + y0 * array.strides[0])
        stop = min(len(mm), here + y1 * array.strides[0])
        start -= start % mmap.PAGESIZE
    if stop > start:
        mm.madvise(mmap.MADV_DONTNEED, start, stop - start)


#: 2D images with more pixels than this are converted and written a strip of rows at a time
#: (a large image's labels come as a memory map; converting them whole took one more
#: whole-image array, and writing them at once read every page of the map)
WRITE_STRIPS_ABOVE = 2048 * 2048
#: rows per strip of such a file
WRITE_STRIP_ROWS = 256


def _tiff_dtype(data: np.ndarray) -> np.dtype:
    """Return the type (one ImageJ reads) that :func:`write_tiff` writes ``data`` as."""
    if data.dtype == bool:
        return np.dtype(np.uint8)
    if data.dtype.kind in "iu" and data.dtype not in (np.uint8, np.uint16):
        if data.size == 0:
            return np.dtype(np.uint16)
        lo = hi = 0
        for y0 in range(0, data.shape[0], WRITE_STRIP_ROWS):
            block = data[y0 : y0 + WRITE_STRIP_ROWS]
            lo, hi = min(lo, int(block.min())), max(hi, int(block.max()))
            release_pages(data, y0, y0 + WRITE_STRIP_ROWS)
        return np.dtype(np.uint16 if lo >= 0 and hi < 65536 else np.float32)
    if data.dtype.kind == "f" and data.dtype != np.float32:
        return np.dtype(np.float32)
    return data.dtype


def _as_tiff(block: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``block`` in the written type (booleans as 0/255)."""
    if block.dtype == bool:
        return block.astype(np.uint8) * 255
    return np.asarray(block, dtype)


def write_tiff(
    path: str | os.PathLike,
    data: np.ndarray,
    calibration: Calibration | None = None,
    overwrite: bool = False,
    z_spacing: float | None = None,
) -> Path:
    """Write an ImageJ-compatible TIFF (2D image or ``(Z, Y, X)`` stack) with its calibration.

    ImageJ reads 8-bit, 16-bit and 32-bit float images; other types are converted: integers
    that fit in uint16 become uint16, wider integers become float32, booleans become 0/255 uint8.
    A 2D image of more than :data:`WRITE_STRIPS_ABOVE` pixels (a ``numpy.memmap`` of a large
    image's results, say) is converted and written :data:`WRITE_STRIP_ROWS` rows at a time, in
    strips of that many rows: the same pixels, in memory bounded by the strip.
    """
    import tifffile

    data = np.asarray(data) if not isinstance(data, np.memmap) else data
    dtype = _tiff_dtype(data)
    calibration = calibration or Calibration()
    metadata = {"unit": _imagej_unit(calibration.unit)}
    if data.ndim == 3:
        metadata["axes"] = "ZYX"
        if z_spacing:
            metadata["spacing"] = z_spacing
    resolution = (1.0 / calibration.pixel_size, 1.0 / calibration.pixel_size)
    options = {"imagej": True, "resolution": resolution, "metadata": metadata}

    if data.ndim == 2 and data.size > WRITE_STRIPS_ABOVE:
        rows = WRITE_STRIP_ROWS

        def strips():
            for y0 in range(0, data.shape[0], rows):
                yield _as_tiff(data[y0 : y0 + rows], dtype).tobytes()
                release_pages(data, y0, y0 + rows)

        def write(tmp: Path) -> None:
            tifffile.imwrite(tmp, data=strips(), shape=data.shape, dtype=dtype, rowsperstrip=rows, **options)

    else:
        whole = _as_tiff(data, dtype)

        def write(tmp: Path) -> None:
            tifffile.imwrite(tmp, whole, **options)

    return write_atomic(path, write, overwrite)


def write_csv(path: str | os.PathLike, table, overwrite: bool = False) -> Path:
    """Write a pandas DataFrame as CSV (UTF-8, no index), atomically."""
    return write_atomic(path, lambda tmp: table.to_csv(tmp, index=False), overwrite)
