"""Uranium species of SIMS fields: their names, the ratio reference and the ratio columns."""

from __future__ import annotations

import re

ISOTOPES = ("234U", "235U", "236U", "238U", "238U1H")
REQUIRED_ISOTOPES = ("235U", "238U")
REFERENCE = "238U"
RATIO_ISOTOPES = ("234U", "235U", "236U", "238U1H")  # ratios to 238U


URANIUM = ("234U", "235U", "236U", "238U")  # atomic uranium ions (238U1H is a molecular ion of 238U)


def canonical_isotope(name: str) -> str | None:
    """Give the canonical name of a uranium species, or None if ``name`` is not one.

    The canonical names are ``234U``, ``235U``, ``236U``, ``238U`` and ``238U1H``. Accepts the
    spellings met in instrument exports: ``235U+``, ``U235``, ``U-235``, ``235 U``, ``238UH+``,
    ``238U1H``, ``238U-1H``, ``U238H``, case-insensitively.
    """
    s = re.sub(r"[\s+_\-]", "", str(name)).upper()
    m = re.fullmatch(r"(?:(\d{3})U|U(\d{3}))(1?H)?", s)
    if not m:
        return None
    mass = m.group(1) or m.group(2)
    iso = f"{mass}U" + ("1H" if m.group(3) else "")
    return iso if iso in ISOTOPES else None


def ratio_columns(isotope: str) -> tuple[str, str]:
    """Column names of the ratio ``isotope/238U`` and its uncertainty."""
    return f"ratio_{isotope}_238U", f"ratio_{isotope}_238U_err"
