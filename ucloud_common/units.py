"""Sizes: parse the seed's bare GB numbers and strings with units, format them back.

The seed writes sizes as bare numbers meaning GB (``"ram": 2``); tiny test VMs need
``"256MiB"``. Internally every size is an ``int`` of bytes, so arithmetic (capacity,
allocations) is exact. ``format_size`` picks the form that parses back to the same
number of bytes, preferring the seed's bare-GB form, so records round-trip.
"""

from __future__ import annotations

import math
import re

GB = 10**9

_UNITS: dict[str, int] = {
    "": GB,  # a bare number in a string ("2") means GB, like a bare JSON number
    "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": GB, "gb": GB,
    "t": 10**12, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}

_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")

# Nothing in this cloud is bigger than this; larger values are typos or attacks.
MAX_SIZE = 2**60


class SizeError(ValueError):
    """A size that cannot be parsed: wrong type, negative, unknown unit, absurd."""


def parse_size(value: object) -> int:
    """Return ``value`` in bytes. Numbers are GB (the seed's form); strings may carry a unit.

    >>> parse_size(2), parse_size("256MiB"), parse_size("1.5GB")
    (2000000000, 268435456, 1500000000)
    """
    if isinstance(value, bool):
        raise SizeError("must be a number of GB or a string like '512MiB', not a boolean")
    if isinstance(value, int):
        if value < 0:
            raise SizeError("must not be negative")
        result = value * GB
    elif isinstance(value, float):
        if not math.isfinite(value) or value < 0:
            raise SizeError("must be a finite, non-negative number")
        result = round(value * GB)
    elif isinstance(value, str):
        match = _SIZE_RE.match(value)
        if not match:
            raise SizeError(f"cannot parse size {value!r}: expected e.g. 2, '512MiB' or '1.5GB'")
        number_text, unit = match.groups()
        factor = _UNITS.get(unit.lower())
        if factor is None:
            raise SizeError(f"unknown size unit {unit!r} in {value!r} (use B, MB, GB, TB, KiB, MiB, GiB, TiB)")
        result = int(number_text) * factor if number_text.isdigit() else round(float(number_text) * factor)
    else:
        raise SizeError(f"must be a number of GB or a string like '512MiB', not {type(value).__name__}")
    if result > MAX_SIZE:
        raise SizeError(f"size {value!r} is too large")
    return int(result)


def format_size(size: int) -> int | str:
    """Return the shortest exact form of ``size`` bytes that ``parse_size`` reads back.

    Whole GB are given as bare numbers (the seed's form); otherwise binary units
    when exact, else bytes.
    """
    if size % GB == 0:
        return size // GB
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    if size % 10**6 == 0:
        return f"{size // 10**6}MB"
    return f"{size}B"


def human_size(size: int) -> str:
    """A short, approximate, human-readable size for tables and messages (``1.5GiB``)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
        value /= 1024
    return f"{size}B"
