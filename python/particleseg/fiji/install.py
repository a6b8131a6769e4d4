"""``particleseg fiji install``: copy ``fiji-scripts/`` into a Fiji installation.

``fiji-scripts/`` is laid out as ``Fiji.app/scripts/``: its ``Plugins/Particle Segmentation/``
folder becomes the Plugins > Particle Segmentation menu (SciJava scripts for Fiji's Python mode,
and example macros under Examples). With ``--env`` the Python environment description
(``environment.yml``) is also written to ``Fiji.app/config/environment.yml``, which Fiji's
Edit > Options > Python... reads to build the environment of its Python mode.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError, OutputExistsError
from ..io import write_atomic


def source_root() -> Path:
    """Return the particleseg source tree (where ``fiji-scripts/`` and ``environment.yml`` live)."""
    return Path(__file__).resolve().parents[3]


def scripts_source() -> Path:
    """Return the ``fiji-scripts/`` folder to install (``$PARTICLESEG_FIJI_SCRIPTS`` or the source tree's)."""
    src = Path(os.environ.get("PARTICLESEG_FIJI_SCRIPTS", source_root() / "fiji-scripts"))
    if not (src / "Plugins").is_dir():
        raise InputError(f"{src}: fiji-scripts not found (install particleseg from its source tree: pip install -e .)")
    return src


def check_fiji(fiji: str | os.PathLike) -> Path:
    """Return the Fiji folder; :class:`InputError` unless it has a ``jars/`` or ``scripts/`` folder."""
    p = Path(fiji).expanduser()
    if not p.is_dir():
        raise InputError(f"{p}: Fiji folder not found")
    if not (p / "jars").is_dir() and not (p / "scripts").is_dir():
        raise InputError(f"{p}: not a Fiji installation (no jars/ or scripts/ folder); give the Fiji.app folder")
    return p


def environment_text() -> str:
    """environment.yml with this checkout's absolute location instead of ``.`` (for Fiji)."""
    yml = source_root() / "environment.yml"
    if not yml.is_file():
        raise InputError(f"{yml}: environment.yml not found")
    text = yml.read_text(encoding="utf-8")
    return text.replace("- -e .[tf,fiji]", f"- particleseg[tf,fiji] @ {source_root().as_uri()}")


def plan(fiji: str | os.PathLike, env: bool = False) -> list[tuple[bytes, Path]]:
    """(content, target) of every file to install."""
    root = check_fiji(fiji)
    src = scripts_source()
    pairs = [
        (f.read_bytes(), root / "scripts" / f.relative_to(src))
        for f in sorted(src.rglob("*"))
        if f.is_file() and "__pycache__" not in f.parts
    ]
    if env:
        pairs.append((environment_text().encode("utf-8"), root / "config" / "environment.yml"))
    return pairs


def install(fiji: str | os.PathLike, overwrite: bool = False, env: bool = False) -> tuple[list[Path], list[Path]]:
    """Copy the scripts (and with ``env`` the environment file). Returns (copied, unchanged).

    Existing files that differ are not replaced without ``overwrite``; all conflicts are
    found before anything is copied.
    """
    pairs = plan(fiji, env)
    conflicts = [t for data, t in pairs if t.exists() and t.read_bytes() != data]
    if conflicts and not overwrite:
        more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
        raise OutputExistsError(f"{conflicts[0]}: exists and differs{more}; use --overwrite to replace it")
    copied, same = [], []
    for data, t in pairs:
        if t.exists() and t.read_bytes() == data:
            same.append(t)
            continue
        t.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(t, lambda tmp, data=data: tmp.write_bytes(data), overwrite=True)
        copied.append(t)
    return copied, same
